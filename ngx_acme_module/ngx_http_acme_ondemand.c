
/*
 * On-demand TLS in the workers: a first handshake waits before TLS.
 *
 * Stock nginx cannot suspend a handshake inside OpenSSL's certificate
 * callback, so the wait happens before OpenSSL sees a byte. Each worker
 * replaces the handler of the http listening sockets that speak TLS (when
 * a server has "acme_certificate ... on_demand"): after nginx's own
 * ngx_http_init_connection() has set the connection up, its read handler
 * (nginx's TLS handshake, which starts with a MSG_PEEK of its own) is
 * wrapped. The wrapper peeks at the ClientHello (at most one TLS record,
 * acme_clienthello_sni), finds the server the name selects as nginx will
 * (exact, wildcard and regex server_name), and:
 *
 *   - not an on-demand server, a known certificate, no name, not TLS, a
 *     TLS-ALPN-01 validation (ALPN acme-tls/1): hands the connection to
 *     nginx at once;
 *   - a name the server does not list, an IP address, an invalid name, a
 *     name refused a moment ago (the zone's negative cache): hands it over
 *     at once (the fallback certificate), or closes it (fail=close);
 *   - otherwise queues the name in the shared zone for the cache manager
 *     (one request per name, however many connections) and holds the
 *     connection: a timer looks at the name's state in the zone every
 *     50 ms, never blocking the worker, until it is ready or refused or
 *     wait= passes; then nginx's handshake runs and the certificate
 *     callback serves the new certificate (ngx_http_acme_od_cert).
 *
 * While held, c->data is our context (nginx's ngx_http_connection_t is
 * kept in it and put back before nginx's handler runs).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_acme_module.h"
#include "ngx_http_acme_zone.h"

#include "acme_clienthello.h"
#include "acme_ondemand.h"


#define NGX_HTTP_ACME_OD_POLL       50      /* ms */
#define NGX_HTTP_ACME_OD_LOG_EVERY  60      /* s: one line per cause */


typedef struct {
    ngx_connection_t           *c;
    void                       *hc;              /* nginx's c->data */
    ngx_event_t                 poll;
    ngx_msec_t                  deadline;
    ngx_http_acme_srv_conf_t   *ascf;
    u_char                      name[NGX_HTTP_ACME_OD_NAME_LEN];
    size_t                      len;
    unsigned                    waiting:1;
    unsigned                    done:1;
} ngx_http_acme_od_ctx_t;


static void ngx_http_acme_od_init_connection(ngx_connection_t *c);
static void ngx_http_acme_od_read(ngx_event_t *rev);
static void ngx_http_acme_od_held(ngx_event_t *rev);
static void ngx_http_acme_od_poll(ngx_event_t *ev);


static ngx_event_handler_pt   ngx_http_acme_od_ssl_handler;
static ngx_http_acme_zone_t  *ngx_http_acme_od_zone;
static ngx_atomic_t          *ngx_http_acme_od_mine;   /* our slot's held */
static u_char                 ngx_http_acme_od_buf[ACME_CLIENTHELLO_MAX];


ngx_int_t
ngx_http_acme_od_init_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                  i;
    ngx_listening_t            *ls;
    ngx_http_acme_main_conf_t  *amcf;

    amcf = ngx_http_acme_get_main_conf();

    if (amcf == NULL || amcf->od_certs.nelts == 0 || amcf->shm_zone == NULL)
    {
        return NGX_OK;
    }

    ngx_http_acme_od_zone = amcf->shm_zone->data;
    ngx_http_acme_od_mine = &ngx_http_acme_zone_od_slot(ngx_http_acme_od_zone,
                                                        ngx_pid)->held;

    ls = cycle->listening.elts;

    for (i = 0; i < cycle->listening.nelts; i++) {
        if (ls[i].handler == ngx_http_init_connection) {
            ls[i].handler = ngx_http_acme_od_init_connection;
        }
    }

    return NGX_OK;
}


static void
ngx_http_acme_od_count(ngx_uint_t what, ngx_log_t *log, const char *name,
    const char *why)
{
    time_t               now;
    ngx_atomic_uint_t    last;
    ngx_http_acme_sh_t  *sh;

    sh = ngx_http_acme_od_zone->sh;

    (void) ngx_atomic_fetch_add(&sh->od_count[what], 1);

    if (why == NULL) {
        return;
    }

    /* one line per cause and minute among all workers */

    now = ngx_time();
    last = sh->od_logged[what];

    if (last && now - (time_t) last < NGX_HTTP_ACME_OD_LOG_EVERY) {
        return;
    }

    if (!ngx_atomic_cmp_set(&sh->od_logged[what], last, now)) {
        return;
    }

    ngx_log_error(NGX_LOG_WARN, log, 0,
                  "acme: on-demand certificate for \"%s\" refused: %s "
                  "(logged once a minute per cause, counted in the status)",
                  name, why);
}


static void
ngx_http_acme_od_init_connection(ngx_connection_t *c)
{
    ngx_uint_t               ready;
    ngx_event_t             *rev;
    ngx_http_connection_t   *hc;

    rev = c->read;

    /* a deferred accept: nginx would run its handshake from inside */
    ready = rev->ready;
    rev->ready = 0;

    ngx_http_init_connection(c);

    if (c->destroyed || c->data == NULL) {
        return;
    }

    hc = c->data;

    if (!hc->ssl || hc->proxy_protocol
        || hc->addr_conf->default_server == NULL)
    {
        if (ready) {
            rev->ready = 1;
            rev->handler(rev);
        }

        return;
    }

    ngx_http_acme_od_ssl_handler = rev->handler;
    rev->handler = ngx_http_acme_od_read;

    if (ready) {
        rev->ready = 1;
        ngx_http_acme_od_read(rev);
    }
}


static void
ngx_http_acme_od_unhold(void)
{
    (void) ngx_atomic_fetch_add(ngx_http_acme_od_mine, -1);
    (void) ngx_atomic_fetch_add(&ngx_http_acme_od_zone->sh->od_waiting, -1);
}


/* nginx's handshake from here on */

static void
ngx_http_acme_od_resume(ngx_connection_t *c, ngx_http_acme_od_ctx_t *ctx,
    ngx_uint_t close)
{
    if (ctx) {
        if (ctx->poll.timer_set) {
            ngx_del_timer(&ctx->poll);
        }

        if (ctx->waiting) {
            ngx_http_acme_od_unhold();
            ctx->waiting = 0;
        }

        ctx->done = 1;
        c->data = ctx->hc;
    }

    if (close) {
        ngx_http_close_connection(c);
        return;
    }

    c->read->handler = ngx_http_acme_od_ssl_handler;
    c->read->ready = 1;
    c->read->handler(c->read);
}


static void
ngx_http_acme_od_cleanup(void *data)
{
    ngx_http_acme_od_ctx_t  *ctx = data;

    if (ctx->done) {
        return;
    }

    if (ctx->poll.timer_set) {
        ngx_del_timer(&ctx->poll);
    }

    if (ctx->waiting) {
        ngx_http_acme_od_unhold();
        ctx->waiting = 0;
    }

    ctx->done = 1;
}


/*
 * one of the server's names: exact, "*.suffix", ".suffix", "prefix.*",
 * regex; from the copy made at configuration (server_names itself lives in
 * the configuration's temporary pool)
 */

ngx_uint_t
ngx_http_acme_od_listed(ngx_http_core_srv_conf_t *cscf, u_char *name,
    size_t len)
{
    ngx_http_acme_srv_conf_t  *ascf;

    size_t                   n;
    u_char                  *p;
    ngx_uint_t               k;
    ngx_http_server_name_t  *sn;
#if (NGX_PCRE)
    ngx_str_t                host;

    host.data = name;
    host.len = len;
#endif

    ascf = cscf->ctx->srv_conf[ngx_http_acme_module.ctx_index];

    if (ascf->od_names == NULL) {
        return 0;
    }

    sn = ascf->od_names->elts;

    for (k = 0; k < ascf->od_names->nelts; k++) {
#if (NGX_PCRE)
        if (sn[k].regex) {
            if (ngx_regex_exec(sn[k].regex->regex, &host, NULL, 0) >= 0) {
                return 1;
            }

            continue;
        }
#endif
        p = sn[k].name.data;
        n = sn[k].name.len;

        if (n == len && ngx_strncasecmp(p, name, len) == 0) {
            return 1;
        }

        if (n > 2 && p[0] == '*' && p[1] == '.' && len > n - 1
            && ngx_strncasecmp(p + 1, name + len - (n - 1), n - 1) == 0)
        {
            return 1;
        }

        if (n > 1 && p[0] == '.'
            && ((len == n - 1 && ngx_strncasecmp(p + 1, name, len) == 0)
                || (len > n && ngx_strncasecmp(p, name + len - n, n) == 0)))
        {
            return 1;
        }

        if (n > 2 && p[n - 1] == '*' && p[n - 2] == '.' && len > n - 1
            && ngx_strncasecmp(p, name, n - 1) == 0)
        {
            return 1;
        }
    }

    return 0;
}


/* the server the name selects, as nginx's SNI callback finds it */

static ngx_http_core_srv_conf_t *
ngx_http_acme_od_server(ngx_http_connection_t *hc, u_char *name, size_t len,
    ngx_uint_t *listed)
{
    ngx_http_core_srv_conf_t  *cscf;
    ngx_http_virtual_names_t  *vn;
#if (NGX_PCRE)
    ngx_int_t                  n;
    ngx_str_t                  host;
    ngx_uint_t                 i;
#endif

    *listed = 0;
    vn = hc->addr_conf->virtual_names;

    if (vn) {
        cscf = ngx_hash_find_combined(&vn->names, ngx_hash_key(name, len),
                                      name, len);
        if (cscf) {
            *listed = 1;
            return cscf;
        }

#if (NGX_PCRE)
        host.data = name;
        host.len = len;

        for (i = 0; i < vn->nregex; i++) {
            n = ngx_regex_exec(vn->regex[i].regex->regex, &host, NULL, 0);

            if (n == NGX_REGEX_NO_MATCHED) {
                continue;
            }

            if (n >= 0) {
                *listed = 1;
                return vn->regex[i].server;
            }

            return NULL;
        }
#endif
    }

    /*
     * the default server; alone on its address it has no virtual names
     * (nginx never compares names then), so its own are matched here
     */

    cscf = hc->addr_conf->default_server;
    *listed = ngx_http_acme_od_listed(cscf, name, len);

    return cscf;
}


static void
ngx_http_acme_od_read(ngx_event_t *rev)
{
    char                         name[NGX_HTTP_ACME_OD_NAME_LEN];
    size_t                       len, sl;
    ssize_t                      n;
    ngx_err_t                    err;
    ngx_uint_t                   listed;
    const char                  *sni;
    ngx_connection_t            *c;
    ngx_pool_cleanup_t          *cln;
    ngx_http_connection_t       *hc;
    ngx_http_acme_od_ctx_t      *ctx;
    ngx_http_acme_od_entry_t     e;
    ngx_http_core_srv_conf_t    *cscf;
    ngx_http_acme_srv_conf_t    *ascf;
    ngx_http_acme_main_conf_t   *amcf;

    c = rev->data;

    if (rev->timedout || c->close) {
        ngx_http_acme_od_resume(c, NULL, 0);
        return;
    }

    n = recv(c->fd, (char *) ngx_http_acme_od_buf, ACME_CLIENTHELLO_MAX,
             MSG_PEEK);
    err = ngx_socket_errno;

    if (n == -1 && err == NGX_EAGAIN) {
        rev->ready = 0;

        if (ngx_handle_read_event(rev, 0) != NGX_OK) {
            ngx_http_close_connection(c);
        }

        return;
    }

    if (n <= 0) {
        /* nginx's handler says what happened */
        ngx_http_acme_od_resume(c, NULL, 0);
        return;
    }

    switch (acme_clienthello_sni(ngx_http_acme_od_buf, n, &sni, &sl)) {

    case ACME_CH_MORE:
        if ((size_t) n < ACME_CLIENTHELLO_MAX) {
            rev->ready = 0;

            if (ngx_handle_read_event(rev, 0) != NGX_OK) {
                ngx_http_close_connection(c);
            }

            return;
        }

        /* fall through */

    case ACME_CH_NONE:
    case ACME_CH_NOT_TLS:
        ngx_http_acme_od_resume(c, NULL, 0);
        return;

    default: /* ACME_CH_SNI */
        break;
    }

    if (acme_clienthello_acme_alpn(ngx_http_acme_od_buf, n)) {
        /* a TLS-ALPN-01 validation: answered in nginx's handshake */
        ngx_http_acme_od_resume(c, NULL, 0);
        return;
    }

    hc = c->data;
    amcf = ngx_http_acme_get_main_conf();

    len = acme_sni_normalize(sni, sl, name, sizeof(name));
    if (len == 0) {
        /* bytes no host name has: nginx falls back to the default server */
        ascf = hc->addr_conf->default_server->ctx
                                  ->srv_conf[ngx_http_acme_module.ctx_index];

        if (ascf && ascf->od) {
            ngx_http_acme_od_count(NGX_HTTP_ACME_OD_W_INVALID_NAME, c->log,
                                   "(not a host name)",
                                   "an IP address or not a DNS name");
            ngx_http_acme_od_resume(c, NULL, amcf->od.fail_close);
            return;
        }

        ngx_http_acme_od_resume(c, NULL, 0);
        return;
    }

    cscf = ngx_http_acme_od_server(hc, (u_char *) name, len, &listed);
    if (cscf == NULL) {
        ngx_http_acme_od_resume(c, NULL, 0);
        return;
    }

    ascf = cscf->ctx->srv_conf[ngx_http_acme_module.ctx_index];

    if (ascf == NULL || ascf->od == NULL) {
        ngx_http_acme_od_resume(c, NULL, 0);
        return;
    }

    if (!listed) {
        ngx_http_acme_od_count(NGX_HTTP_ACME_OD_W_NOT_SERVER_NAME, c->log,
                               name, "not one of the server's server_name "
                               "entries");
        ngx_http_acme_od_resume(c, NULL, amcf->od.fail_close);
        return;
    }

    if (acme_ondemand_name(name, len, name, sizeof(name)) == 0) {
        ngx_http_acme_od_count(NGX_HTTP_ACME_OD_W_INVALID_NAME, c->log,
                               name, "an IP address or not a DNS name");
        ngx_http_acme_od_resume(c, NULL, amcf->od.fail_close);
        return;
    }

    switch (ngx_http_acme_zone_od_request(ngx_http_acme_od_zone,
                                          (u_char *) name, len,
                                          ascf->od->index, ngx_time(), &e))
    {
    case NGX_OK:
        break;

    case NGX_BUSY:
        ngx_http_acme_od_count(NGX_HTTP_ACME_OD_W_WAITING_CAP, c->log, name,
                               "too many names waiting for the ACME client "
                               "(the request queue or the zone is full)");
        ngx_http_acme_od_resume(c, NULL, amcf->od.fail_close);
        return;

    default:
        ngx_http_acme_od_resume(c, NULL, amcf->od.fail_close);
        return;
    }

    if (e.state == NGX_HTTP_ACME_OD_READY) {
        ngx_http_acme_zone_od_seen(ngx_http_acme_od_zone, (u_char *) name,
                                   len, ngx_time());
        ngx_http_acme_od_resume(c, NULL, 0);
        return;
    }

    if (e.state == NGX_HTTP_ACME_OD_REFUSED) {
        ngx_http_acme_od_count(NGX_HTTP_ACME_OD_W_CACHED_REFUSAL, c->log,
                               name, NULL);
        ngx_http_acme_od_resume(c, NULL, amcf->od.fail_close);
        return;
    }

    /* hold the connection */

    if (ngx_atomic_fetch_add(&ngx_http_acme_od_zone->sh->od_waiting, 1)
        >= (ngx_atomic_uint_t) amcf->od.waiting)
    {
        (void) ngx_atomic_fetch_add(&ngx_http_acme_od_zone->sh->od_waiting,
                                    -1);
        ngx_http_acme_od_count(NGX_HTTP_ACME_OD_W_WAITING_CAP, c->log, name,
                               "as many connections wait for on-demand "
                               "certificates as waiting= allows");
        ngx_http_acme_od_resume(c, NULL, amcf->od.fail_close);
        return;
    }

    ctx = ngx_pcalloc(c->pool, sizeof(ngx_http_acme_od_ctx_t));
    cln = ngx_pool_cleanup_add(c->pool, 0);

    (void) ngx_atomic_fetch_add(ngx_http_acme_od_mine, 1);

    if (ctx == NULL || cln == NULL) {
        ngx_http_acme_od_unhold();
        ngx_http_close_connection(c);
        return;
    }

    ctx->waiting = 1;
    ctx->c = c;
    ctx->hc = hc;
    ctx->ascf = ascf;
    ctx->len = len;
    ngx_memcpy(ctx->name, name, len + 1);
    ctx->deadline = ngx_current_msec + amcf->od.wait;

    cln->handler = ngx_http_acme_od_cleanup;
    cln->data = ctx;

    ctx->poll.handler = ngx_http_acme_od_poll;
    ctx->poll.data = ctx;
    ctx->poll.log = c->log;
    ctx->poll.cancelable = 1;

    c->data = ctx;
    rev->handler = ngx_http_acme_od_held;

    ngx_http_acme_od_count(NGX_HTTP_ACME_OD_W_WAITED, c->log, name, NULL);

    ngx_log_error(NGX_LOG_INFO, c->log, 0,
                  "acme: on-demand: handshake for \"%s\" waits for its "
                  "certificate", name);

    ngx_add_timer(&ctx->poll, NGX_HTTP_ACME_OD_POLL);
}


/* held: the timer decides, not the socket; nginx's timeout and close do */

static void
ngx_http_acme_od_held(ngx_event_t *rev)
{
    ngx_connection_t  *c;

    c = rev->data;

    if (rev->timedout || c->close) {
        ngx_http_acme_od_resume(c, c->data, 0);
    }
}


static void
ngx_http_acme_od_poll(ngx_event_t *ev)
{
    ngx_http_acme_od_ctx_t  *ctx = ev->data;

    ngx_int_t                   rc;
    ngx_connection_t           *c;
    ngx_http_acme_od_entry_t    e;
    ngx_http_acme_main_conf_t  *amcf;

    c = ctx->c;
    amcf = ngx_http_acme_get_main_conf();

    rc = ngx_http_acme_zone_od_get(ngx_http_acme_od_zone, ctx->name, ctx->len,
                                   &e);

    if (rc == NGX_OK && e.state == NGX_HTTP_ACME_OD_READY) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "acme: on-demand: certificate for \"%s\" ready, "
                      "handshake resumed", ctx->name);
        ngx_http_acme_od_resume(c, ctx, 0);
        return;
    }

    if (rc != NGX_OK || e.state == NGX_HTTP_ACME_OD_REFUSED) {
        /* the cache manager logged why, once */
        ngx_http_acme_od_resume(c, ctx, amcf->od.fail_close);
        return;
    }

    if ((ngx_msec_int_t) (ngx_current_msec - ctx->deadline) >= 0) {
        ngx_http_acme_od_count(NGX_HTTP_ACME_OD_W_TIMEOUT, c->log,
                               (char *) ctx->name,
                               "no certificate within wait=");
        ngx_http_acme_od_resume(c, ctx, amcf->od.fail_close);
        return;
    }

    ngx_add_timer(&ctx->poll, NGX_HTTP_ACME_OD_POLL);
}
