/*
 * The acme-status handler. A request sees only the certificates of the virtual host it came to
 * (r->server: those it manages or serves); the main server (no <VirtualHost> matched) sees all.
 *   GET                JSON per certificate (names, issuer, key type, validity, next renewal and why, state,
 *                      last error) as the driver last published it; before the driver runs, what the store
 *                      says. Never keys or EAB secrets (the manager's status has neither).
 *   POST ?renew=NAME   queue a renewal of the certificate with that store name or identifier: 202; 403 unless
 *                      "ACMEStatusRenew on" applies to the location; 429 with Retry-After while the CA asked
 *                      to wait (rateLimited) or when the certificate was forced less than the interval ago;
 *                      404 for names this virtual host does not have.
 *   POST ?ari-check=NAME|*  ask the CA's renewal information of that certificate (*: every one this request
 *                      may see) again, without forcing a renewal: 202; same permission and interval per
 *                      certificate as renewals (429 when none of them may be checked yet).
 *   anything else      405.
 * "ACMEStatusFormat prometheus" (or ?format=prometheus, which overrides ACMEStatusFormat either way) renders the
 * same document as Prometheus text with the core's renderer, the one nginx's acme_status uses.
 * A JSON GET whose Accept prefers text/html (and no ?format=) gets the same document as a page for people
 * (acme_status_html.c), with renew buttons where ACMEStatusRenew is on. A POST carrying a browser's cross-site signals
 * (Sec-Fetch-Site, Origin) is refused with 403.
 */
#include "mod_acme.h"

#include <http_protocol.h>
#include <http_request.h>
#include <http_core.h>
#include <time.h>

#include <jansson.h>

#include "acme_metrics.h"
#include "acme_status_html.h"
#include "acme_store.h"

static const char *
iso_time(apr_pool_t *p, time_t t)
{
    struct tm   tm;
    char        buf[32];

    gmtime_r(&t, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return apr_pstrdup(p, buf);
}

static int cert_visible(request_rec *r, const mod_acme_cert_t *c);

/* Before the driver published anything: the configured certificates and what the store knows of them. */
static const char *
status_from_store(request_rec *r)
{
    json_t      *root = json_object(), *arr = json_array();
    const char  *out;
    char        *text;
    int          i;

    for (i = 0; mod_acme_g.active && i < mod_acme_g.certs->nelts; i++) {
        mod_acme_cert_t  *c = APR_ARRAY_IDX(mod_acme_g.certs, i, mod_acme_cert_t *);
        acme_certmeta_t   meta;
        json_t           *o, *ids;
        char              ks[16];
        size_t            j;
        int               have;

        if (!cert_visible(r, c)) {
            continue;
        }
        o = json_object();
        ids = json_array();

        for (j = 0; j < c->nids; j++) {
            json_array_append_new(ids, json_string(c->ids[j].value));
        }
        memset(&meta, 0, sizeof(meta));
        have = acme_store_meta_load(mod_acme_g.store, c->name, &meta, NULL) == 0;
        json_object_set_new(o, "name", json_string(c->name));
        json_object_set_new(o, "identifiers", ids);
        json_object_set_new(o, "issuer", have && meta.ca ? json_string(meta.ca) : json_null());
        json_object_set_new(o, "key_type", json_string(acme_keyspec_str(&c->ks, ks, sizeof(ks))));
        json_object_set_new(o, "not_before", have && meta.not_before
                            ? json_string(iso_time(r->pool, meta.not_before)) : json_null());
        json_object_set_new(o, "not_after", have && meta.not_after
                            ? json_string(iso_time(r->pool, meta.not_after)) : json_null());
        json_object_set_new(o, "next_renewal", have && meta.renew_at
                            ? json_string(iso_time(r->pool, meta.renew_at)) : json_null());
        json_object_set_new(o, "renewal_reason", json_null());
        json_object_set_new(o, "state", json_string(have && meta.not_after ? "valid" : "pending"));
        json_object_set_new(o, "failures", json_integer(have ? meta.failures : 0));
        json_object_set_new(o, "last_error", have && meta.last_error ? json_string(meta.last_error)
                                                                     : json_null());
        json_object_set_new(o, "identifier_errors", have ? acme_certmeta_ident_errors_json(&meta)
                                                         : json_array());
        json_object_set_new(o, "identifier_warnings", have ? acme_certmeta_ident_warnings_json(&meta)
                                                           : json_array());
        if (have) {
            acme_certmeta_free(&meta);
        }
        json_array_append_new(arr, o);
    }
    json_object_set_new(root, "certificates", arr);
    json_object_set_new(root, "driver_pid", json_null());
    text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    out = apr_pstrdup(r->pool, text ? text : "{}");
    free(text);
    return out;
}

/* The certificates a request may see: its virtual host's, all of them on the main server. */
static int
cert_visible(request_rec *r, const mod_acme_cert_t *c)
{
    mod_acme_srv_conf_t  *sc;
    int                   i;

    if (r->server == mod_acme_g.base) {
        return 1;
    }
    sc = mod_acme_srv_conf(r->server);
    for (i = 0; sc->served != NULL && i < sc->served->nelts; i++) {
        if (APR_ARRAY_IDX(sc->served, i, mod_acme_cert_t *) == c) {
            return 1;
        }
    }
    return 0;
}

/* Index in mod_acme_g.certs of the visible certificate with that store name or identifier, -1: none. */
static int
find_cert(request_rec *r, const char *what)
{
    int     i;
    size_t  j;

    for (i = 0; mod_acme_g.active && i < mod_acme_g.certs->nelts; i++) {
        mod_acme_cert_t *c = APR_ARRAY_IDX(mod_acme_g.certs, i, mod_acme_cert_t *);
        int              hit = strcmp(c->name, what) == 0;

        for (j = 0; !hit && j < c->nids; j++) {
            hit = strcasecmp(c->ids[j].value, what) == 0;
        }
        if (hit && cert_visible(r, c)) {
            return i;
        }
    }
    return -1;
}

/* The issuers of the certificates kept (their counters are shared with other virtual hosts' certificates). */
static json_t *
issuers_filter(json_t *issuers, json_t *certs)
{
    json_t      *keep = json_array();
    size_t       k, j;
    const char  *name, *used;

    for (k = 0; k < json_array_size(issuers); k++) {
        name = json_string_value(json_object_get(json_array_get(issuers, k), "name"));
        for (j = 0; name != NULL && j < json_array_size(certs); j++) {
            used = json_string_value(json_object_get(json_array_get(certs, j), "issuer_name"));
            if (used != NULL && strcmp(used, name) == 0) {
                json_array_append(keep, json_array_get(issuers, k));
                break;
            }
        }
    }
    return keep;
}

/* The driver's document with only the certificates this request may see. */
static const char *
status_filter(request_rec *r, const char *json)
{
    json_t      *root, *arr, *keep;
    const char  *out;
    char        *text;
    size_t       k;

    if (r->server == mod_acme_g.base) {
        return json;
    }
    root = json_loads(json, 0, NULL);
    arr = root ? json_object_get(root, "certificates") : NULL;
    if (!json_is_array(arr)) {
        json_decref(root);
        return "{\"certificates\": []}";
    }
    keep = json_array();
    for (k = 0; k < json_array_size(arr); k++) {
        json_t      *o = json_array_get(arr, k);
        const char  *name = json_string_value(json_object_get(o, "name"));
        int          i = name ? find_cert(r, name) : -1;

        if (i >= 0 && strcmp(APR_ARRAY_IDX(mod_acme_g.certs, i, mod_acme_cert_t *)->name, name) == 0) {
            json_array_append(keep, o);
        }
    }
    json_object_set_new(root, "certificates", keep);
    json_object_set_new(root, "issuers", issuers_filter(json_object_get(root, "issuers"), keep));
    text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    out = apr_pstrdup(r->pool, text ? text : "{}");
    free(text);
    return out;
}

static const char *
arg_value(request_rec *r, const char *name)
{
    char        *args, *tok, *save = NULL;
    apr_size_t   n = strlen(name);

    if (r->args == NULL) {
        return NULL;
    }
    args = apr_pstrdup(r->pool, r->args);
    for (tok = apr_strtok(args, "&", &save); tok; tok = apr_strtok(NULL, "&", &save)) {
        if (strncmp(tok, name, n) == 0 && tok[n] == '=') {
            char *v = tok + n + 1;
            if (ap_unescape_urlencoded(v) != OK) {
                return "";
            }
            return v;
        }
    }
    return NULL;
}

/* The document as Prometheus text (see docs/monitoring.md). */
static int
send_metrics(request_rec *r, const char *json)
{
    json_t  *doc = json_loads(json, 0, NULL);
    char    *text;

    text = doc ? acme_metrics_prometheus(doc) : NULL;
    json_decref(doc);
    if (text == NULL) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, ACMELOGNO(0160)
                      "acme-status: cannot render the status as Prometheus text");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    r->status = HTTP_OK;
    ap_set_content_type(r, ACME_METRICS_CONTENT_TYPE);
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    if (!r->header_only) {
        ap_rputs(text, r);
    }
    free(text);
    return OK;
}

/* The location's ACMEStatusFormat, or ?format= in the request; -1: neither json nor prometheus. */
static int
status_format(request_rec *r)
{
    mod_acme_dir_conf_t  *dc = ap_get_module_config(r->per_dir_config, &acme_module);
    const char           *v = arg_value(r, "format");

    if (v == NULL) {
        return dc != NULL && dc->format != ACME_UNSET ? dc->format : MOD_ACME_FORMAT_JSON;
    }
    if (strcmp(v, "json") == 0) {
        return MOD_ACME_FORMAT_JSON;
    }
    if (strcmp(v, "prometheus") == 0) {
        return MOD_ACME_FORMAT_PROMETHEUS;
    }
    return -1;
}

static int
send_json(request_rec *r, int status, const char *json)
{
    r->status = status;
    ap_set_content_type(r, "application/json");
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    if (!r->header_only) {
        ap_rputs(json, r);
        ap_rputs("\n", r);
    }
    return OK;
}

/* The document as the page for people, with its security headers. */
static int
send_page(request_rec *r, const char *json)
{
    mod_acme_dir_conf_t  *dc = ap_get_module_config(r->per_dir_config, &acme_module);
    char                 *html;
    size_t                len;

    html = acme_status_html(json, strlen(json), dc != NULL && dc->renew_allowed == 1, time(NULL), &len);
    if (html == NULL) {
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    r->status = HTTP_OK;
    ap_set_content_type(r, "text/html; charset=utf-8");
    apr_table_setn(r->headers_out, "Content-Security-Policy", acme_status_html_csp());
    apr_table_setn(r->headers_out, "X-Content-Type-Options", "nosniff");
    apr_table_setn(r->headers_out, "Referrer-Policy", "no-referrer");
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    ap_set_content_length(r, (apr_off_t) len);
    if (!r->header_only) {
        ap_rwrite(html, (int) len, r);
    }
    free(html);
    return OK;
}

/* 429: Retry-After, and the time and the reason in the body. */
static int
too_soon(request_rec *r, apr_uint32_t until, const char *why)
{
    time_t   now = time(NULL);
    json_t  *o;
    char    *text;
    int      rc;

    apr_table_setn(r->headers_out, "Retry-After",
                   apr_psprintf(r->pool, "%ld", (long) ((time_t) until > now ? (time_t) until - now : 1)));
    o = json_pack("{s:s, s:s}", "error", why, "retry_after", iso_time(r->pool, (time_t) until));
    text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    rc = send_json(r, HTTP_TOO_MANY_REQUESTS, text ? apr_pstrdup(r->pool, text) : "{}");
    free(text);
    return rc;
}

/* POST ?ari-check=NAME|*: flags for the driver, each certificate at most once per interval */
static int
ari_request(request_rec *r, const char *what, int interval)
{
    apr_uint32_t  now = (apr_uint32_t) time(NULL), until, soonest = 0;
    json_t       *o;
    char         *text;
    const char   *json;
    int           i, n = 0, seen = 0, all = strcmp(what, "*") == 0;

    for (i = 0; mod_acme_g.active && i < mod_acme_g.certs->nelts; i++) {
        mod_acme_cert_t *c = APR_ARRAY_IDX(mod_acme_g.certs, i, mod_acme_cert_t *);

        if (all ? !cert_visible(r, c) : i != find_cert(r, what)) {
            continue;
        }
        seen++;
        until = 0;
        if (mod_acme_shm_ari_claim(mod_acme_g.shm, i, now, (apr_uint32_t) interval, &until) == 0) {
            n++;
        } else if (until != 0 && (soonest == 0 || until < soonest)) {
            soonest = until;
        }
    }
    if (seen == 0) {
        return HTTP_NOT_FOUND;
    }
    if (n == 0) {
        if (soonest == 0) {
            apr_table_setn(r->err_headers_out, "Retry-After", "5");
            return HTTP_SERVICE_UNAVAILABLE;
        }
        ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, r, ACMELOGNO(0122)
                      "acme-status: ARI check of %s refused: one was requested less than %d s ago", what,
                      interval);
        return too_soon(r, soonest, "an ARI check was requested recently");
    }
    ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, r, ACMELOGNO(0123)
                  "acme-status: ARI check of %s requested (%d certificate%s)", what, n, n == 1 ? "" : "s");
    o = json_pack("{s:s, s:s, s:i}", "ari_check", what, "status", "queued", "certificates", n);
    text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    json = apr_pstrdup(r->pool, text ? text : "{}");
    free(text);
    return send_json(r, HTTP_ACCEPTED, json);
}

static int
status_handler(request_rec *r)
{
    mod_acme_dir_conf_t  *dc;
    mod_acme_cert_t      *c;
    const char           *json, *name, *accept;
    json_t               *o;
    char                 *text;
    apr_uint32_t          now, until = 0, prev = 0;
    int                   i, rc, interval, ari, format;

    if (r->handler == NULL || strcmp(r->handler, MOD_ACME_HANDLER) != 0) {
        return DECLINED;
    }
    if (r->method_number == M_GET) {
        format = status_format(r);
        if (format < 0) {
            return HTTP_BAD_REQUEST;
        }
        json = mod_acme_shm_status_get(mod_acme_g.active ? mod_acme_g.shm : NULL, r->pool);
        json = json != NULL ? status_filter(r, json) : status_from_store(r);
        accept = apr_table_get(r->headers_in, "Accept");
        if (format == MOD_ACME_FORMAT_PROMETHEUS) {
            return send_metrics(r, json);
        }
        if (arg_value(r, "format") == NULL && accept != NULL && acme_status_accepts_html(accept, strlen(accept))) {
            return send_page(r, json);
        }
        return send_json(r, HTTP_OK, json);
    }
    if (r->method_number != M_POST) {
        r->allowed = (AP_METHOD_BIT << M_GET) | (AP_METHOD_BIT << M_POST);
        return HTTP_METHOD_NOT_ALLOWED;
    }
    dc = ap_get_module_config(r->per_dir_config, &acme_module);
    name = arg_value(r, "renew");
    ari = name == NULL && (name = arg_value(r, "ari-check")) != NULL;
    if (name == NULL || *name == '\0' || strlen(name) >= MOD_ACME_NAME_MAX) {
        return HTTP_BAD_REQUEST;
    }
    if (dc == NULL || dc->renew_allowed != 1) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, ACMELOGNO(0100)
                      "acme-status: %s refused: ACMEStatusRenew is not on for this location",
                      ari ? "ARI check" : "renew");
        return send_json(r, HTTP_FORBIDDEN, "{\"error\":\"renewal and ARI check requests are not allowed "
                                            "here (ACMEStatusRenew on)\"}");
    }
    if (!acme_status_post_allowed(apr_table_get(r->headers_in, "Sec-Fetch-Site"),
                                  apr_table_get(r->headers_in, "Origin"), apr_table_get(r->headers_in, "Host"))) {
        ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, r, ACMELOGNO(0124)
                      "acme-status: %s refused: it came from another site's page (Origin, Sec-Fetch-Site)",
                      ari ? "ARI check" : "renew");
        return send_json(r, HTTP_FORBIDDEN, "{\"error\":\"renewal and ARI check requests from other sites' "
                                            "pages are not allowed\"}");
    }
    interval = dc->renew_interval != ACME_UNSET ? dc->renew_interval : MOD_ACME_RENEW_INTERVAL;
    if (ari) {
        return ari_request(r, name, interval);
    }
    i = find_cert(r, name);
    now = (apr_uint32_t) time(NULL);
    if (i < 0 && r->server == mod_acme_g.base) {
        /* an issued on-demand name (the main server sees them all) */
        rc = mod_acme_od_renew_claim(name, now, (apr_uint32_t) interval, &until);
        if (rc == 2) {
            ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, r, ACMELOGNO(0112)
                          "acme-status: renewal of %s refused: it was forced less than %d s ago", name, interval);
            return too_soon(r, until, "this certificate was forced recently");
        }
        if (rc == 0) {
            if (mod_acme_shm_renew_push(mod_acme_g.shm, name) != 0) {
                apr_table_setn(r->err_headers_out, "Retry-After", "5");
                return HTTP_SERVICE_UNAVAILABLE;
            }
            ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, r, ACMELOGNO(0101)
                          "acme-status: renewal of %s requested", name);
            o = json_pack("{s:s, s:s}", "renew", name, "status", "queued");
            text = o ? json_dumps(o, JSON_COMPACT) : NULL;
            json_decref(o);
            json = apr_pstrdup(r->pool, text ? text : "{}");
            free(text);
            return send_json(r, HTTP_ACCEPTED, json);
        }
    }
    if (i < 0) {
        return HTTP_NOT_FOUND;
    }
    c = APR_ARRAY_IDX(mod_acme_g.certs, i, mod_acme_cert_t *);
    rc = mod_acme_shm_renew_claim(mod_acme_g.shm, i, now, (apr_uint32_t) interval, &until, &prev);
    if (rc == 1) {
        ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, r, ACMELOGNO(0111)
                      "acme-status: renewal of %s refused: the CA asked to wait (rate limited)", c->name);
        return too_soon(r, until, "the CA asked to wait (rate limited)");
    }
    if (rc == 2) {
        ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, r, ACMELOGNO(0112)
                      "acme-status: renewal of %s refused: it was forced less than %d s ago", c->name, interval);
        return too_soon(r, until, "this certificate was forced recently");
    }
    if (rc != 0 || mod_acme_shm_renew_push(mod_acme_g.shm, c->name) != 0) {
        if (rc == 0) {
            mod_acme_shm_renew_unclaim(mod_acme_g.shm, i, now, prev);
        }
        apr_table_setn(r->err_headers_out, "Retry-After", "5");
        return HTTP_SERVICE_UNAVAILABLE;
    }
    ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, r, ACMELOGNO(0101)
                  "acme-status: renewal of %s requested", c->name);
    o = json_pack("{s:s, s:s}", "renew", c->name, "status", "queued");
    text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    json = apr_pstrdup(r->pool, text ? text : "{}");
    free(text);
    return send_json(r, HTTP_ACCEPTED, json);
}

void
mod_acme_status_register_hooks(apr_pool_t *p)
{
    (void) p;
    ap_hook_handler(status_handler, NULL, NULL, APR_HOOK_MIDDLE);
}
