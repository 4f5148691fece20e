/*
 * The status page: one table row per certificate of the status document. Every string from the document
 * (names, issuer, errors: a CA's problem detail is attacker-influenced text) goes through html_text();
 * names in the renew form's URL are percent-encoded first. The bar is a <meter>, so the page needs no
 * style attribute and no script, and the Content-Security-Policy can allow just the one stylesheet.
 */
#include "acme_status_html.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "acme_err.h"
#include "acme_resource.h"

#define DAY 86400

static const char style[] =
    "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}"
    "h1{font-size:1.4em}"
    "table{border-collapse:collapse;width:100%}"
    "th,td{text-align:left;vertical-align:top;padding:.4em .6em;border-bottom:1px solid #ddd}"
    "th{background:#f4f4f4}"
    ".ids{margin:0;padding-left:1.2em;color:#555}"
    ".url,.why{color:#666;font-size:.9em}"
    "meter{width:8em;height:1em}"
    ".when{white-space:nowrap}"
    ".state{font-weight:bold}"
    "tr.failing .state,tr.expired .state{color:#b00}"
    "tr.pending .state,tr.renewing .state{color:#a60}"
    "tr.valid .state{color:#070}"
    ".error{color:#b00;margin:.3em 0 0;white-space:pre-wrap;word-break:break-word}"
    ".warning{color:#850;margin:.3em 0 0;white-space:pre-wrap;word-break:break-word}"
    "button{font:inherit;padding:.2em .8em}";

/* &<>"' as entities; the rest of the (UTF-8, from jansson) text as is */
static int
html_text(acme_buf_t *b, const char *s)
{
    const char  *run = s;
    const char  *ent;
    int          rc = 0;

    for (; *s != '\0'; s++) {
        switch (*s) {
        case '&':  ent = "&amp;";  break;
        case '<':  ent = "&lt;";   break;
        case '>':  ent = "&gt;";   break;
        case '"':  ent = "&quot;"; break;
        case '\'': ent = "&#39;";  break;
        default:   continue;
        }
        rc |= acme_buf_append(b, run, (size_t) (s - run));
        rc |= acme_buf_append(b, ent, strlen(ent));
        run = s + 1;
    }
    rc |= acme_buf_append(b, run, (size_t) (s - run));
    return rc;
}

/* a query value: unreserved characters as they are, everything else %XX (and so nothing to escape) */
static int
url_value(acme_buf_t *b, const char *s)
{
    static const char  hex[] = "0123456789ABCDEF";
    unsigned char      c;
    char               e[3];
    int                rc = 0;

    for (; *s != '\0'; s++) {
        c = (unsigned char) *s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
            || c == '-' || c == '.' || c == '_' || c == '~')
        {
            rc |= acme_buf_append(b, s, 1);
            continue;
        }
        e[0] = '%';
        e[1] = hex[c >> 4];
        e[2] = hex[c & 15];
        rc |= acme_buf_append(b, e, 3);
    }
    return rc;
}

static const char *
str(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static time_t
when(json_t *o, const char *key)
{
    const char  *s = str(o, key);
    time_t       t;

    return s != NULL && acme_time_parse(s, &t) == 0 ? t : 0;
}

static const char *
state_words(const char *state)
{
    static const struct { const char *state, *words; } words[] = {
        { "valid",    "Valid" },
        { "pending",  "Not yet issued" },
        { "failing",  "Failing" },
        { "renewing", "Being issued now" },
        { "expired",  "Expired" },
    };
    size_t  i;

    for (i = 0; state != NULL && i < sizeof(words) / sizeof(words[0]); i++) {
        if (strcmp(state, words[i].state) == 0) {
            return words[i].words;
        }
    }
    return state != NULL ? state : "Unknown";
}

/* the scheduler's reason (acme_renew_reason_name()) in words */
static const char *
reason_words(const char *reason)
{
    static const struct { const char *reason, *words; } words[] = {
        { "missing",  "to issue the first certificate" },
        { "names",    "the names changed" },
        { "ari",      "in the CA's renewal window (ARI)" },
        { "lifetime", "by the certificate's lifetime" },
        { "expired",  "the certificate has expired" },
        { "forced",   "renewal was requested" },
        { "retry",    "retry after a failure" },
    };
    size_t  i;

    for (i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        if (strcmp(reason, words[i].reason) == 0) {
            return words[i].words;
        }
    }
    return reason;
}

static int
cell_names(acme_buf_t *b, json_t *c)
{
    json_t  *ids = json_object_get(c, "identifiers");
    size_t   i;
    int      rc = 0;

    rc |= acme_buf_printf(b, "<td><span class=\"name\">");
    rc |= html_text(b, str(c, "name") ? str(c, "name") : "?");
    rc |= acme_buf_printf(b, "</span><ul class=\"ids\">");
    for (i = 0; i < json_array_size(ids); i++) {
        const char *id = json_string_value(json_array_get(ids, i));

        if (id != NULL) {
            rc |= acme_buf_printf(b, "<li>");
            rc |= html_text(b, id);
            rc |= acme_buf_printf(b, "</li>");
        }
    }
    return rc | acme_buf_printf(b, "</ul></td>");
}

static int
cell_issuer(acme_buf_t *b, json_t *c)
{
    const char  *name = str(c, "issuer_name"), *url = str(c, "issuer");
    int          rc = 0;

    rc |= acme_buf_printf(b, "<td class=\"issuer\">");
    if (name != NULL) {
        rc |= html_text(b, name);
        rc |= acme_buf_printf(b, "<br>");
    }
    if (url != NULL) {
        rc |= acme_buf_printf(b, "<span class=\"url\">");
        rc |= html_text(b, url);
        rc |= acme_buf_printf(b, "</span>");
    }
    return rc | acme_buf_printf(b, "</td>");
}

/* days left of the certificate's lifetime: a <meter> (red under a tenth, amber under a third) and words */
static int
cell_days(acme_buf_t *b, json_t *c, time_t now)
{
    time_t  nb = when(c, "not_before"), na = when(c, "not_after");
    long    life, left;

    if (na == 0) {
        return acme_buf_printf(b, "<td class=\"days\">no certificate yet</td>");
    }
    life = nb != 0 && na > nb ? (long) ((na - nb + DAY - 1) / DAY) : 90;
    left = na > now ? (long) ((na - now) / DAY) : -(long) ((now - na + DAY - 1) / DAY);
    if (left < 0) {
        return acme_buf_printf(b, "<td class=\"days\"><meter min=\"0\" max=\"%ld\" value=\"0\"></meter> "
                               "expired %ld day%s ago</td>", life, -left, left == -1 ? "" : "s");
    }
    return acme_buf_printf(b, "<td class=\"days\"><meter min=\"0\" max=\"%ld\" low=\"%ld\" high=\"%ld\" "
                           "optimum=\"%ld\" value=\"%ld\"></meter> %ld day%s left</td>",
                           life, life / 10, life / 3, life, left < life ? left : life, left,
                           left == 1 ? "" : "s");
}

static int
cell_renewal(acme_buf_t *b, json_t *c)
{
    const char  *next = str(c, "next_renewal"), *why = str(c, "renewal_reason");
    const char  *wait = str(c, "ca_retry_after");
    int          rc = 0;

    rc |= acme_buf_printf(b, "<td class=\"renewal\"><span class=\"when\">");
    rc |= html_text(b, next != NULL ? next : "not scheduled");
    rc |= acme_buf_printf(b, "</span>");
    if (why != NULL && strcmp(why, "none") != 0) {
        rc |= acme_buf_printf(b, "<br><span class=\"why\">");
        rc |= html_text(b, reason_words(why));
        rc |= acme_buf_printf(b, "</span>");
    }
    if (wait != NULL) {
        rc |= acme_buf_printf(b, "<br><span class=\"why\">the CA asked to wait until ");
        rc |= html_text(b, wait);
        rc |= acme_buf_printf(b, "</span>");
    }
    return rc | acme_buf_printf(b, "</td>");
}

static int
cell_state(acme_buf_t *b, json_t *c)
{
    json_t      *errs = json_object_get(c, "identifier_errors");
    json_t      *warns = json_object_get(c, "identifier_warnings");
    const char  *err = str(c, "last_error"), *progress = str(c, "progress");
    json_int_t   failures = json_integer_value(json_object_get(c, "failures"));
    size_t       i;
    int          rc = 0;

    rc |= acme_buf_printf(b, "<td><span class=\"state\">");
    rc |= html_text(b, state_words(str(c, "state")));
    rc |= acme_buf_printf(b, "</span>");
    if (progress != NULL) {
        rc |= acme_buf_printf(b, " <span class=\"why\">(");
        rc |= html_text(b, progress);
        rc |= acme_buf_printf(b, ")</span>");
    }
    if (failures > 0) {
        rc |= acme_buf_printf(b, "<br>%lld failed attempt%s", (long long) failures, failures == 1 ? "" : "s");
    }
    if (err != NULL) {
        rc |= acme_buf_printf(b, "<p class=\"error\">Last error: ");
        rc |= html_text(b, err);
        rc |= acme_buf_printf(b, "</p>");
    }
    for (i = 0; i < json_array_size(errs); i++) {
        json_t      *e = json_array_get(errs, i);
        const char  *id = str(e, "identifier"), *text = str(e, "error");

        if (id != NULL && text != NULL) {
            rc |= acme_buf_printf(b, "<p class=\"error\">");
            rc |= html_text(b, id);
            rc |= acme_buf_printf(b, ": ");
            rc |= html_text(b, text);
            rc |= acme_buf_printf(b, "</p>");
        }
    }
    /* dns-persist-01 records that pass before the next renewal: the text names the identifier */
    for (i = 0; i < json_array_size(warns); i++) {
        const char *text = str(json_array_get(warns, i), "dns_persist_warning");

        if (text != NULL) {
            rc |= acme_buf_printf(b, "<p class=\"warning\">Warning: ");
            rc |= html_text(b, text);
            rc |= acme_buf_printf(b, "</p>");
        }
    }
    return rc | acme_buf_printf(b, "</td>");
}

/* a POST of the existing ?renew=NAME request to this same URL; the server's POST rules apply */
static int
cell_renew(acme_buf_t *b, json_t *c)
{
    const char  *name = str(c, "name");
    int          rc = 0;

    if (name == NULL) {
        return acme_buf_printf(b, "<td></td>");
    }
    rc |= acme_buf_printf(b, "<td><form method=\"post\" action=\"?renew=");
    rc |= url_value(b, name);
    rc |= acme_buf_printf(b, "\"><button type=\"submit\" title=\"Renew ");
    rc |= html_text(b, name);
    return rc | acme_buf_printf(b, " now\">Renew</button></form></td>");
}

char *
acme_status_html(const char *json, size_t json_len, int renew, time_t now, size_t *len)
{
    acme_buf_t   b = { NULL, 0, 0 };
    json_t      *doc, *certs, *c;
    size_t       i, n[3] = { 0, 0, 0 };
    const char  *state;
    char         tb[32];
    int          rc = 0;

    doc = json_loadb(json, json_len, 0, NULL);
    certs = json_object_get(doc, "certificates");
    for (i = 0; i < json_array_size(certs); i++) {
        state = str(json_array_get(certs, i), "state");
        n[state == NULL ? 2 : strcmp(state, "valid") == 0 ? 0
          : strcmp(state, "pending") == 0 || strcmp(state, "renewing") == 0 ? 1 : 2]++;
    }

    rc |= acme_buf_printf(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                          "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                          "<meta name=\"referrer\" content=\"no-referrer\">"
                          "<title>ACME certificates</title><style>%s</style></head>\n<body>"
                          "<h1>ACME certificates</h1>\n<p class=\"summary\">%zu certificate%s: %zu valid, "
                          "%zu being issued or waiting, %zu failing or expired. As of %s.</p>\n",
                          style, json_array_size(certs), json_array_size(certs) == 1 ? "" : "s",
                          n[0], n[1], n[2], acme_time_format(now, tb, sizeof(tb)));
    if (doc == NULL) {
        rc |= acme_buf_printf(&b, "<p class=\"error\">The status document could not be read.</p>\n");
    }
    rc |= acme_buf_printf(&b, "<table><thead><tr><th>Certificate</th><th>Issuer</th><th>Key</th>"
                          "<th>Days left</th><th>Next renewal</th><th>Status</th>%s</tr></thead>\n<tbody>\n",
                          renew ? "<th></th>" : "");
    for (i = 0; i < json_array_size(certs); i++) {
        c = json_array_get(certs, i);
        state = str(c, "state");
        rc |= acme_buf_printf(&b, "<tr class=\"cert ");
        rc |= html_text(&b, state != NULL ? state : "unknown");
        rc |= acme_buf_printf(&b, "\">");
        rc |= cell_names(&b, c);
        rc |= cell_issuer(&b, c);
        rc |= acme_buf_printf(&b, "<td class=\"key\">");
        rc |= html_text(&b, str(c, "key_type") ? str(c, "key_type") : "");
        rc |= acme_buf_printf(&b, "</td>");
        rc |= cell_days(&b, c, now);
        rc |= cell_renewal(&b, c);
        rc |= cell_state(&b, c);
        if (renew) {
            rc |= cell_renew(&b, c);
        }
        rc |= acme_buf_printf(&b, "</tr>\n");
    }
    rc |= acme_buf_printf(&b, "</tbody></table>\n</body></html>\n");
    json_decref(doc);

    if (rc != 0 || b.data == NULL) {
        acme_buf_free(&b);
        return NULL;
    }
    *len = b.len;
    return acme_buf_steal(&b);
}

static char            csp[256];
static pthread_once_t  csp_once = PTHREAD_ONCE_INIT;

static void
csp_init(void)
{
    unsigned char  md[EVP_MAX_MD_SIZE];
    unsigned char  b64[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
    unsigned int   mdlen = 0;

    /* the stylesheet's hash: the browser applies it and no other style */
    if (EVP_Digest(style, sizeof(style) - 1, md, &mdlen, EVP_sha256(), NULL) != 1) {
        mdlen = 0;
    }
    EVP_EncodeBlock(b64, md, (int) mdlen);
    snprintf(csp, sizeof(csp), "default-src 'none'; style-src 'sha256-%s'; img-src 'none'; "
             "form-action 'self'; base-uri 'none'; frame-ancestors 'none'", mdlen ? (char *) b64 : "none");
}

const char *
acme_status_html_csp(void)
{
    pthread_once(&csp_once, csp_init);
    return csp;
}
