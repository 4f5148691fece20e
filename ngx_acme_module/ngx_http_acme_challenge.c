
/*
 * HTTP-01: GET /.well-known/acme-challenge/<token> answered early in the
 * request pipeline (post-read phase) of every server block, from the
 * shared zone, so whichever worker gets the validator's request answers.
 *
 * Every request whose path (raw or normalised) starts with the challenge
 * prefix is ours: it is answered with the key authorization when the raw
 * path is exactly the prefix and a token we published for the requested
 * host, and with 404 otherwise (malformed tokens, encoded characters, dot
 * segments, queries, unknown tokens, tokens of other names). Other methods
 * than GET and HEAD get 405. Nothing is ever read from disk.
 *
 * A connection that negotiated acme-tls/1 (a TLS-ALPN-01 validation) is not
 * served HTTP at all: it is closed.
 *
 * acme_storage: the leader copies the challenges other nodes publish into
 * the zone while it is subscribed to the store's announcements. When it is
 * not (Redis was down, or just came back), a request for an unknown token
 * is held: it looks at the zone every 100 ms, on a timer of its own (never
 * blocking the worker), for at most 3 s, and each time asks the leader for
 * a check of the store at once (which subscribes again and copies the
 * pending challenges); then 404 as for any unknown token.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_acme_module.h"
#include "ngx_http_acme_zone.h"
#include "acme_http01.h"
#include "acme_ident.h"


#define NGX_HTTP_ACME_HOLD_POLL  100     /* ms */
#define NGX_HTTP_ACME_HOLD_MAX   3000    /* ms */


typedef struct {
    ngx_str_t                   token;
    ngx_msec_t                  deadline;
} ngx_http_acme_hold_t;


static ngx_int_t ngx_http_acme_challenge_answer(ngx_http_request_t *r,
    ngx_http_acme_zone_t *zone, ngx_str_t *tok, ngx_uint_t hold);
static void ngx_http_acme_challenge_held(ngx_http_request_t *r);


/*
 * The Host as nginx normalised it (lowercase, no port, no trailing dot),
 * read the way identifiers are stored (IPv6 without brackets, in its
 * canonical form), must be the identifier the token was published for.
 */

static ngx_uint_t
ngx_http_acme_host_matches(ngx_http_request_t *r, u_char *id, size_t len)
{
    u_char        *host;
    ngx_uint_t     match;
    acme_ident_t   ident;

    if (r->headers_in.server.len == 0) {
        return 0;
    }

    host = ngx_pnalloc(r->pool, r->headers_in.server.len + 1);
    if (host == NULL) {
        return 0;
    }

    ngx_cpystrn(host, r->headers_in.server.data,
                r->headers_in.server.len + 1);

    if (acme_ident_parse((char *) host, &ident, NULL) != 0) {
        return 0;
    }

    match = ngx_strlen(ident.value) == len
            && ngx_strncmp(ident.value, id, len) == 0;

    acme_ident_free(&ident);

    return match;
}


ngx_int_t
ngx_http_acme_challenge_handler(ngx_http_request_t *r)
{
    size_t                      plen, tlen;
    const char                 *tp;
    ngx_int_t                   rc;
    ngx_str_t                   tok;
    ngx_http_acme_zone_t       *zone;
    ngx_http_acme_main_conf_t  *amcf;

    if (r != r->main) {
        return NGX_DECLINED;
    }

    if (r->connection->ssl
        && ngx_http_acme_is_challenge_connection(r->connection))
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "acme: request on an acme-tls/1 connection refused");
        return NGX_HTTP_CLOSE;
    }

    plen = sizeof(NGX_HTTP_ACME_CHALLENGE_PREFIX) - 1;

    if ((r->uri.len < plen
         || ngx_strncmp(r->uri.data, NGX_HTTP_ACME_CHALLENGE_PREFIX, plen)
            != 0)
        && (r->unparsed_uri.len < plen
            || ngx_strncmp(r->unparsed_uri.data,
                           NGX_HTTP_ACME_CHALLENGE_PREFIX, plen)
               != 0))
    {
        return NGX_DECLINED;
    }

    amcf = ngx_http_get_module_main_conf(r, ngx_http_acme_module);

    if (amcf->shm_zone == NULL) {
        return NGX_DECLINED;
    }

    zone = amcf->shm_zone->data;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    /* the raw path must be exactly the prefix and a base64url token */

    if (acme_http01_parse_path((const char *) r->unparsed_uri.data,
                               r->unparsed_uri.len, &tp, &tlen)
        != ACME_HTTP01_TOKEN)
    {
        goto not_found;
    }

    tok.data = (u_char *) tp;
    tok.len = tlen;

    /* and the normalised path the same */

    if (r->uri.len != r->unparsed_uri.len
        || ngx_strncmp(r->uri.data, r->unparsed_uri.data, r->uri.len) != 0)
    {
        goto not_found;
    }

    return ngx_http_acme_challenge_answer(r, zone, &tok, 1);

not_found:

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    return NGX_HTTP_NOT_FOUND;
}


/*
 * The answer for a valid token: NGX_DONE (sent, or held: hold is 1 the
 * first time), or a status to finalize the request with.
 */

static ngx_int_t
ngx_http_acme_challenge_answer(ngx_http_request_t *r,
    ngx_http_acme_zone_t *zone, ngx_str_t *tok, ngx_uint_t hold)
{
    u_char                *sp;
    ngx_int_t              rc;
    ngx_buf_t             *b;
    ngx_str_t              value;
    ngx_chain_t            out;
    ngx_http_acme_hold_t  *h;

    rc = ngx_http_acme_zone_get(zone, NGX_HTTP_ACME_KV_HTTP01, tok->data,
                                tok->len, r->pool, &value);
    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED && hold && zone->sh->unsubscribed) {

        /* the leader may not have copied it yet: wait for it */

        h = ngx_palloc(r->pool, sizeof(ngx_http_acme_hold_t));
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->token = *tok;
        h->deadline = ngx_current_msec + NGX_HTTP_ACME_HOLD_MAX;
        ngx_http_set_ctx(r, h, ngx_http_acme_module);

        zone->sh->resync = 1;

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "acme: http-01 token \"%V\" unknown while the "
                      "storage announcements are not followed, waiting "
                      "for them", tok);

        r->read_event_handler = ngx_http_test_reading;
        r->write_event_handler = ngx_http_acme_challenge_held;

        r->connection->write->delayed = 1;
        ngx_add_timer(r->connection->write, NGX_HTTP_ACME_HOLD_POLL);

        return NGX_DONE;
    }

    if (rc == NGX_DECLINED) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "acme: unknown http-01 token \"%V\"", tok);
        goto not_found;
    }

    /* value: "<identifier> <key authorization>" */

    sp = ngx_strlchr(value.data, value.data + value.len, ' ');
    if (sp == NULL) {
        goto not_found;
    }

    if (!ngx_http_acme_host_matches(r, value.data, sp - value.data)) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "acme: http-01 token \"%V\" requested for host "
                      "\"%V\", which it is not for", tok,
                      &r->headers_in.server);
        goto not_found;
    }

    value.len -= sp + 1 - value.data;
    value.data = sp + 1;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "acme: answering http-01 challenge \"%V\"", tok);

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = value.len;
    ngx_str_set(&r->headers_out.content_type, "text/plain");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        ngx_http_finalize_request(r, rc);
        return NGX_DONE;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = value.data;
    b->last = value.data + value.len;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    ngx_http_finalize_request(r, ngx_http_output_filter(r, &out));

    return NGX_DONE;

not_found:

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    return NGX_HTTP_NOT_FOUND;
}


/* a held request: the write event's timer, every NGX_HTTP_ACME_HOLD_POLL */

static void
ngx_http_acme_challenge_held(ngx_http_request_t *r)
{
    ngx_int_t                   rc;
    ngx_str_t                   value;
    ngx_event_t                *wev;
    ngx_http_acme_hold_t       *h;
    ngx_http_acme_zone_t       *zone;
    ngx_http_acme_main_conf_t  *amcf;

    wev = r->connection->write;

    if (wev->delayed) {

        /* woken before the timer: keep waiting */

        if (ngx_handle_write_event(wev, 0) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        }

        return;
    }

    h = ngx_http_get_module_ctx(r, ngx_http_acme_module);
    amcf = ngx_http_get_module_main_conf(r, ngx_http_acme_module);
    zone = amcf->shm_zone->data;

    rc = ngx_http_acme_zone_get(zone, NGX_HTTP_ACME_KV_HTTP01, h->token.data,
                                h->token.len, r->pool, &value);

    if (rc == NGX_DECLINED && zone->sh->unsubscribed
        && (ngx_msec_int_t) (h->deadline - ngx_current_msec) > 0)
    {
        /* asked again: Redis may be back since the leader's last check */
        zone->sh->resync = 1;

        wev->delayed = 1;
        ngx_add_timer(wev, NGX_HTTP_ACME_HOLD_POLL);
        return;
    }

    if (ngx_handle_read_event(r->connection->read, 0) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_request_empty_handler;

    rc = ngx_http_acme_challenge_answer(r, zone, &h->token, 0);

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }
}
