
/*
 * acme_status: the leader's status snapshot as JSON (GET, HEAD), and, with
 * "acme_status renew=on", renewal requests (POST ?renew=NAME, NAME a
 * certificate's store name or any of its identifiers): 202 when queued for
 * the leader; 403 where renew=on is not set; 429 with Retry-After while the
 * CA asked to wait (rateLimited) or when the certificate was forced less
 * than renew_interval ago; 404 for names we do not manage, 400 without one,
 * 405 for other methods. POST ?ari-check=NAME (or "*": all) asks the CA's
 * renewal information again without forcing a renewal, under the same
 * permission and interval. Private keys and EAB secrets are never part of
 * the snapshot. "format=prometheus" (or ?format=prometheus, which
 * overrides the directive's format= either way) renders the same snapshot
 * as Prometheus text with the core's renderer, the one Apache uses too.
 * A JSON GET whose Accept prefers text/html (a browser's, no ?format=)
 * gets the snapshot as a page (acme_status_html.c); a POST carrying a
 * browser's cross-site signals (Sec-Fetch-Site, Origin) is refused, 403.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_acme_module.h"
#include "ngx_http_acme_zone.h"
#include "ngx_http_acme_status_snapshot.h"

#include <jansson.h>

#include "acme_metrics.h"
#include "acme_status_html.h"


static ngx_int_t
ngx_http_acme_status_send_type(ngx_http_request_t *r, ngx_uint_t status,
    char *type, u_char *data, size_t len)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    r->headers_out.status = status;
    r->headers_out.content_length_n = len;
    r->headers_out.content_type.data = (u_char *) type;
    r->headers_out.content_type.len = ngx_strlen(type);
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    if (len == 0) {
        r->header_only = 1;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = data;
    b->last = data + len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static ngx_int_t
ngx_http_acme_status_send(ngx_http_request_t *r, ngx_uint_t status,
    u_char *data, size_t len)
{
    return ngx_http_acme_status_send_type(r, status, "application/json",
                                          data, len);
}


/* a request header's value, NUL-terminated as nginx keeps them; NULL: none */

static u_char *
ngx_http_acme_status_header(ngx_http_request_t *r, char *name, size_t len)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
        {
            return h[i].value.data;
        }
    }
}


/* 1: a browser asks for the page (HTML preferred, no ?format=) */

static ngx_uint_t
ngx_http_acme_status_wants_html(ngx_http_request_t *r)
{
    u_char     *accept;
    ngx_str_t   arg;

    if (ngx_http_arg(r, (u_char *) "format", 6, &arg) == NGX_OK) {
        return 0;
    }

    accept = ngx_http_acme_status_header(r, "Accept", 6);

    return accept != NULL
           && acme_status_accepts_html((char *) accept, ngx_strlen(accept));
}


/* the status document as the page for people, with its security headers */

static ngx_int_t
ngx_http_acme_status_page(ngx_http_request_t *r, u_char *json, size_t len)
{
    char                      *html;
    size_t                     hlen;
    u_char                    *p;
    ngx_uint_t                 i;
    ngx_table_elt_t           *h;
    ngx_http_acme_loc_conf_t  *alcf;

    static char  *headers[][2] = {
        { "Content-Security-Policy", NULL },
        { "X-Content-Type-Options", "nosniff" },
        { "Referrer-Policy", "no-referrer" },
        { "Cache-Control", "no-store" },
    };

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_acme_module);

    html = acme_status_html((char *) json, len, alcf->renew, ngx_time(),
                            &hlen);
    if (html == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_pnalloc(r->pool, hlen);
    if (p == NULL) {
        free(html);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(p, html, hlen);
    free(html);

    headers[0][1] = (char *) acme_status_html_csp();

    for (i = 0; i < sizeof(headers) / sizeof(headers[0]); i++) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        h->key.data = (u_char *) headers[i][0];
        h->key.len = ngx_strlen(headers[i][0]);
        h->value.data = (u_char *) headers[i][1];
        h->value.len = ngx_strlen(headers[i][1]);
    }

    return ngx_http_acme_status_send_type(r, NGX_HTTP_OK,
                                          "text/html; charset=utf-8", p, hlen);
}


/* the location's format=, or ?format= in the request; NGX_ERROR: bad */

static ngx_int_t
ngx_http_acme_status_format(ngx_http_request_t *r,
    ngx_http_acme_loc_conf_t *alcf)
{
    ngx_str_t  arg;

    if (ngx_http_arg(r, (u_char *) "format", 6, &arg) != NGX_OK) {
        return alcf->format;
    }

    if (arg.len == 4 && ngx_strncmp(arg.data, "json", 4) == 0) {
        return NGX_HTTP_ACME_STATUS_JSON;
    }

    if (arg.len == 10 && ngx_strncmp(arg.data, "prometheus", 10) == 0) {
        return NGX_HTTP_ACME_STATUS_PROMETHEUS;
    }

    return NGX_ERROR;
}


/* the snapshot as Prometheus text: CPU only, the document is in memory */

static ngx_int_t
ngx_http_acme_status_metrics(ngx_http_request_t *r, u_char *data, size_t len)
{
    char     *text;
    size_t    n;
    u_char   *p;
    json_t   *doc;

    doc = json_loadb((char *) data, len, 0, NULL);
    if (doc == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "acme: the status snapshot is not JSON");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    text = acme_metrics_prometheus(doc);
    json_decref(doc);

    if (text == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    n = ngx_strlen(text);

    p = ngx_pnalloc(r->pool, n);
    if (p == NULL) {
        free(text);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(p, text, n);
    free(text);

    return ngx_http_acme_status_send_type(r, NGX_HTTP_OK,
                                          ACME_METRICS_CONTENT_TYPE, p, n);
}


static ngx_http_acme_cert_t *
ngx_http_acme_status_find(ngx_http_acme_main_conf_t *amcf, ngx_str_t *what)
{
    ngx_uint_t              i, j;
    ngx_http_acme_cert_t  **certs;

    certs = amcf->certs.elts;

    for (i = 0; i < amcf->certs.nelts; i++) {
        if (ngx_strlen(certs[i]->name) == what->len
            && ngx_strncmp(certs[i]->name, what->data, what->len) == 0)
        {
            return certs[i];
        }

        for (j = 0; j < certs[i]->nids; j++) {
            if (ngx_strlen(certs[i]->ids[j].value) == what->len
                && ngx_strncasecmp((u_char *) certs[i]->ids[j].value,
                                   what->data, what->len) == 0)
            {
                return certs[i];
            }
        }
    }

    return NULL;
}


/* 429 with Retry-After, and the time and the reason in the body */

static ngx_int_t
ngx_http_acme_status_too_soon(ngx_http_request_t *r, time_t until,
    const char *why)
{
    u_char           *p, *last;
    time_t            now, delta;
    ngx_tm_t          tm;
    ngx_table_elt_t  *h;

    now = ngx_time();
    delta = until > now ? until - now : 1;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->value.data = ngx_pnalloc(r->pool, NGX_TIME_T_LEN);
    if (h->value.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Retry-After");
    h->value.len = ngx_sprintf(h->value.data, "%T", delta) - h->value.data;

    p = ngx_pnalloc(r->pool, 256);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_gmtime(until, &tm);

    last = ngx_snprintf(p, 256,
                        "{\"error\": \"%s\", "
                        "\"retry_after\": \"%4d-%02d-%02dT%02d:%02d:%02dZ\"}\n",
                        why, tm.ngx_tm_year, tm.ngx_tm_mon, tm.ngx_tm_mday,
                        tm.ngx_tm_hour, tm.ngx_tm_min, tm.ngx_tm_sec);

    return ngx_http_acme_status_send(r, NGX_HTTP_TOO_MANY_REQUESTS, p,
                                     last - p);
}


/*
 * POST ?ari-check=NAME|*: the leader asks the CA's renewal information of
 * that certificate (every one) again; no renewal is forced, a window that
 * says "renew now" is acted on as usual. Same permission (renew=on) and
 * limit (renew_interval per name, "*" counting as one) as renewals; the
 * CA's wait after rateLimited concerns orders, not this.
 */

static ngx_int_t
ngx_http_acme_status_ari(ngx_http_request_t *r,
    ngx_http_acme_main_conf_t *amcf, ngx_http_acme_zone_t *zone,
    ngx_http_acme_loc_conf_t *alcf, ngx_str_t *what)
{
    time_t                 until;
    ngx_int_t              rc;
    ngx_str_t              name;
    ngx_http_acme_cert_t  *cert;

    static u_char  accepted[] = "{\"ari_check\": \"accepted\"}\n";
    static u_char  unknown[] = "{\"error\": \"unknown certificate\"}\n";

    if (what->len == 1 && what->data[0] == '*') {
        name = *what;

    } else {
        cert = ngx_http_acme_status_find(amcf, what);

        if (cert == NULL) {
            return ngx_http_acme_status_send(r, NGX_HTTP_NOT_FOUND, unknown,
                                             sizeof(unknown) - 1);
        }

        name.data = (u_char *) cert->name;
        name.len = ngx_strlen(cert->name);
    }

    rc = ngx_http_acme_zone_ari_request(zone, &name, alcf->renew_interval,
                                        &until);

    if (rc == NGX_AGAIN) {
        ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                      "acme: ARI check of \"%V\" refused: one was requested "
                      "less than %T s ago", what, alcf->renew_interval);
        return ngx_http_acme_status_too_soon(r, until,
                                             "an ARI check was requested "
                                             "recently");
    }

    if (rc == NGX_BUSY) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                  "acme: ARI check of \"%V\" requested", what);

    return ngx_http_acme_status_send(r, NGX_HTTP_ACCEPTED, accepted,
                                     sizeof(accepted) - 1);
}


ngx_int_t
ngx_http_acme_status_handler(ngx_http_request_t *r)
{
    u_char                     *p, *dst;
    size_t                      i;
    ngx_int_t                   rc, format;
    time_t                      until;
    ngx_str_t                   json, arg, what, name;
    ngx_uint_t                  ari;
    ngx_http_acme_cert_t       *cert;
    ngx_http_acme_zone_t       *zone;
    ngx_http_acme_loc_conf_t   *alcf;
    ngx_http_acme_main_conf_t  *amcf;

    static u_char  empty[] = "{\"certificates\":[]}";
    static u_char  forbidden[] = "{\"error\": \"renewal and ARI check "
                                 "requests are not allowed here "
                                 "(acme_status renew=on)\"}\n";
    static u_char  cross_site[] = "{\"error\": \"renewal and ARI check "
                                  "requests from other sites' pages are "
                                  "not allowed\"}\n";

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_POST))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    amcf = ngx_http_get_module_main_conf(r, ngx_http_acme_module);
    alcf = ngx_http_get_module_loc_conf(r, ngx_http_acme_module);

    format = NGX_HTTP_ACME_STATUS_JSON;

    if (r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD)) {
        format = ngx_http_acme_status_format(r, alcf);

        if (format == NGX_ERROR) {
            return NGX_HTTP_BAD_REQUEST;
        }
    }

    json.data = empty;
    json.len = sizeof(empty) - 1;

    if (!amcf->enabled || amcf->shm_zone == NULL) {
        goto send;
    }

    zone = amcf->shm_zone->data;

    if (r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD)) {

        rc = ngx_http_acme_status_zone_get(amcf->status_zone, r->pool,
                                           &json);

        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (rc == NGX_DECLINED) {
            json.data = empty;
            json.len = sizeof(empty) - 1;
        }

        goto send;
    }

    /* POST ?renew=NAME, POST ?ari-check=NAME|* */

    if (!alcf->renew) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "acme: renewal or ARI check request refused: "
                      "\"acme_status\" has no renew=on in this location");
        return ngx_http_acme_status_send(r, NGX_HTTP_FORBIDDEN,
                                 (u_char *) forbidden, sizeof(forbidden) - 1);
    }

    if (!acme_status_post_allowed(
            (char *) ngx_http_acme_status_header(r, "Sec-Fetch-Site", 14),
            (char *) ngx_http_acme_status_header(r, "Origin", 6),
            r->headers_in.host ? (char *) r->headers_in.host->value.data
                               : NULL))
    {
        ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                      "acme: renewal or ARI check request refused: "
                      "it came from another site's page (Origin, "
                      "Sec-Fetch-Site)");
        return ngx_http_acme_status_send(r, NGX_HTTP_FORBIDDEN,
                                 (u_char *) cross_site,
                                 sizeof(cross_site) - 1);
    }

    ari = 0;

    if (ngx_http_arg(r, (u_char *) "renew", 5, &arg) != NGX_OK) {
        if (ngx_http_arg(r, (u_char *) "ari-check", 9, &arg) != NGX_OK) {
            return NGX_HTTP_BAD_REQUEST;
        }

        ari = 1;
    }

    if (arg.len == 0 || arg.len >= NGX_HTTP_ACME_RENEW_LEN) {
        return NGX_HTTP_BAD_REQUEST;
    }

    dst = ngx_pnalloc(r->pool, arg.len);
    if (dst == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = dst;
    ngx_unescape_uri(&p, &arg.data, arg.len, 0);

    what.data = dst;
    what.len = p - dst;

    for (i = 0; i < what.len; i++) {
        u_char ch = what.data[i];

        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')
              || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_'
              || ch == '.' || ch == ':' || ch == '*'))
        {
            return NGX_HTTP_BAD_REQUEST;
        }
    }

    if (what.len == 0) {
        return NGX_HTTP_BAD_REQUEST;
    }

    if (ari) {
        return ngx_http_acme_status_ari(r, amcf, zone, alcf, &what);
    }

    cert = ngx_http_acme_status_find(amcf, &what);

    if (cert == NULL) {
        return ngx_http_acme_status_send(r, NGX_HTTP_NOT_FOUND,
                                 (u_char *) "{\"error\": \"unknown "
                                            "certificate\"}\n",
                                 sizeof("{\"error\": \"unknown "
                                        "certificate\"}\n") - 1);
    }

    name.data = (u_char *) cert->name;
    name.len = ngx_strlen(cert->name);

    rc = ngx_http_acme_zone_renew_request(zone, &name, alcf->renew_interval,
                                          &until);

    if (rc == NGX_DECLINED) {
        ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                      "acme: renewal of \"%V\" refused: the CA asked to "
                      "wait (rate limited)", &what);
        return ngx_http_acme_status_too_soon(r, until,
                                             "the CA asked to wait "
                                             "(rate limited)");
    }

    if (rc == NGX_AGAIN) {
        ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                      "acme: renewal of \"%V\" refused: it was forced less "
                      "than %T s ago", &what, alcf->renew_interval);
        return ngx_http_acme_status_too_soon(r, until,
                                             "this certificate was forced "
                                             "recently");
    }

    if (rc == NGX_BUSY) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                  "acme: renewal of \"%V\" requested", &what);

    return ngx_http_acme_status_send(r, NGX_HTTP_ACCEPTED,
                                     (u_char *) "{\"renew\": \"accepted\"}\n",
                                     sizeof("{\"renew\": \"accepted\"}\n")
                                     - 1);

send:

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        /* renewal requests without a configured zone: nothing to renew */
        return ngx_http_acme_status_send(r, NGX_HTTP_OK, json.data, json.len);
    }

    if (format == NGX_HTTP_ACME_STATUS_PROMETHEUS) {
        return ngx_http_acme_status_metrics(r, json.data, json.len);
    }

    if (ngx_http_acme_status_wants_html(r)) {
        return ngx_http_acme_status_page(r, json.data, json.len);
    }

    return ngx_http_acme_status_send(r, NGX_HTTP_OK, json.data, json.len);
}
