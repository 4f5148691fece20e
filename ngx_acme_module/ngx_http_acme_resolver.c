
/*
 * acme_host_t.resolve: the CA's host names resolved by the http block's
 * "resolver" (as nginx-acme does) on the cache manager's event loop; the
 * core hands the addresses to libcurl, which still checks the CA's
 * certificate against the name.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_acme_runner.h"


typedef struct {
    ngx_http_acme_runner_t  *rn;
    ngx_resolver_ctx_t      *ctx;
    void                    *token;
    ngx_str_t                name;
} ngx_http_acme_resolve_t;


static void ngx_http_acme_resolve_handler(ngx_resolver_ctx_t *ctx);
static u_char *ngx_http_acme_resolver_name(ngx_resolver_t *r, u_char *p,
    u_char *last);


void *
ngx_http_acme_host_resolve(void *data, const char *name, void *token)
{
    ngx_http_acme_runner_t  *rn = data;

    u_char                    msg[NGX_MAX_ERROR_STR], *p, *last;
    size_t                    len;
    ngx_resolver_t           *r;
    ngx_resolver_ctx_t       *ctx;
    ngx_http_acme_resolve_t  *rq;

    r = rn->amcf->resolver;
    len = ngx_strlen(name);

    rq = ngx_calloc(sizeof(ngx_http_acme_resolve_t) + len, rn->log);
    if (rq == NULL) {
        goto failed;
    }

    rq->rn = rn;
    rq->token = token;
    rq->name.len = len;
    rq->name.data = (u_char *) (rq + 1);
    ngx_memcpy(rq->name.data, name, len);

    ctx = ngx_resolve_start(r, NULL);
    if (ctx == NULL || ctx == NGX_NO_RESOLVER) {
        ngx_free(rq);
        goto failed;
    }

    ctx->name = rq->name;
    ctx->handler = ngx_http_acme_resolve_handler;
    ctx->data = rq;
    ctx->timeout = rn->amcf->resolver_timeout;

    rq->ctx = ctx;

    /* the handler may run from within the call (nginx's cache) */

    if (ngx_resolve_name(ctx) != NGX_OK) {
        /* nginx freed ctx */
        ngx_free(rq);
        goto failed;
    }

    return rq;

failed:

    last = msg + sizeof(msg) - 1;
    p = ngx_slprintf(msg, last, "%s could not be resolved (cannot start "
                     "a query) by resolver ", name);
    p = ngx_http_acme_resolver_name(r, p, last);
    *p = '\0';

    acme_loop_resolved(rn->loop, token, NULL, 0, (char *) msg);

    return NULL;
}


void
ngx_http_acme_host_resolve_cancel(void *data, void *handle)
{
    ngx_http_acme_resolve_t  *rq = handle;

    ngx_resolve_name_done(rq->ctx);
    ngx_free(rq);
}


static void
ngx_http_acme_resolve_handler(ngx_resolver_ctx_t *ctx)
{
    ngx_http_acme_resolve_t  *rq = ctx->data;

    u_char                   msg[NGX_MAX_ERROR_STR], *p, *last;
    long                     ttl;
    void                    *token;
    ngx_uint_t               i;
    ngx_resolver_t          *r;
    ngx_http_acme_runner_t  *rn;

    rn = rq->rn;
    token = rq->token;
    r = ctx->resolver;

    last = msg + sizeof(msg) - 1;

    if (ctx->state) {
        p = ngx_slprintf(msg, last, "%V could not be resolved (%i: %s) by "
                         "resolver ", &ctx->name, ctx->state,
                         ngx_resolver_strerror(ctx->state));
        p = ngx_http_acme_resolver_name(r, p, last);
        *p = '\0';

        ngx_resolve_name_done(ctx);
        ngx_free(rq);

        if (rn->loop) {
            acme_loop_resolved(rn->loop, token, NULL, 0, (char *) msg);
        }

        return;
    }

    /* "127.0.0.1,[::1]": CURLOPT_RESOLVE's list */

    p = msg;

    for (i = 0; i < ctx->naddrs && p < last - NGX_SOCKADDR_STRLEN - 4; i++) {
        if (i) {
            *p++ = ',';
        }

        if (ctx->addrs[i].sockaddr->sa_family == AF_INET6) {
            *p++ = '[';
        }

        p += ngx_sock_ntop(ctx->addrs[i].sockaddr, ctx->addrs[i].socklen,
                           p, last - p, 0);

        if (ctx->addrs[i].sockaddr->sa_family == AF_INET6) {
            *p++ = ']';
        }
    }

    *p = '\0';

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, rn->log, 0,
                   "acme: resolver: %V is %s, valid %T",
                   &ctx->name, msg, ctx->valid);

    /* nginx's own cache keeps the answer for its TTL (or "valid=") */

    ttl = ctx->valid > ngx_time() ? (long) (ctx->valid - ngx_time()) : 30;

    ngx_resolve_name_done(ctx);
    ngx_free(rq);

    if (rn->loop) {
        acme_loop_resolved(rn->loop, token, (char *) msg, ttl, NULL);
    }
}


static u_char *
ngx_http_acme_resolver_name(ngx_resolver_t *r, u_char *p, u_char *last)
{
    ngx_uint_t                  i;
    ngx_resolver_connection_t  *rec;

    rec = r->connections.elts;

    for (i = 0; i < r->connections.nelts; i++) {
        p = ngx_slprintf(p, last, "%s%V", i ? ", " : "", &rec[i].server);
    }

    return p;
}


/*
 * acme_storage's Redis host name, through the same resolver: the core
 * connects to these addresses (acme_store_redis_host_addresses) instead
 * of calling getaddrinfo(); asked again when the answer's TTL ends. The
 * runner starts once the first answer (or failure) is in.
 */

typedef struct {
    ngx_http_acme_main_conf_t  *amcf;         /* the configuration */
    char                       *host;         /* NULL: nothing to ask */
    ngx_resolver_ctx_t         *ctx;          /* in flight */
    time_t                      expires;
    ngx_uint_t                  answered;
    ngx_uint_t                  have_addrs;
} ngx_http_acme_storage_dns_t;


static ngx_http_acme_storage_dns_t  ngx_http_acme_storage_dns;


static void
ngx_http_acme_storage_resolve_handler(ngx_resolver_ctx_t *ctx)
{
    ngx_http_acme_storage_dns_t  *sd = ctx->data;

    u_char      msg[NGX_MAX_ERROR_STR], *p, *last, *name;
    time_t      ttl;
    ngx_uint_t  i;

    name = ctx->name.data;

    if (ctx != sd->ctx) {
        /* asked for an earlier configuration (master_process off) */
        ngx_resolve_name_done(ctx);
        ngx_free(name);
        return;
    }

    sd->ctx = NULL;
    sd->answered = 1;

    last = msg + sizeof(msg) - 1;

    if (ctx->state) {
        p = ngx_slprintf(msg, last, "acme_storage: %V could not be "
                         "resolved (%i: %s) by resolver ", &ctx->name,
                         ctx->state, ngx_resolver_strerror(ctx->state));
        p = ngx_http_acme_resolver_name(ctx->resolver, p, last);
        *p = '\0';

        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "acme: %s%s", msg,
                      sd->have_addrs ? " (the last addresses are kept)" : "");

        ngx_resolve_name_done(ctx);
        ngx_free(name);

        if (!sd->have_addrs) {
            (void) acme_store_redis_host_addresses(sd->host, NULL,
                                                   (char *) msg);
        }

        sd->expires = ngx_time() + 5;
        return;
    }

    p = msg;

    for (i = 0; i < ctx->naddrs && p < last - NGX_SOCKADDR_STRLEN - 4; i++) {
        if (i) {
            *p++ = ',';
        }

        p += ngx_sock_ntop(ctx->addrs[i].sockaddr, ctx->addrs[i].socklen,
                           p, last - p, 0);
    }

    *p = '\0';

    ttl = ctx->valid > ngx_time() ? ctx->valid - ngx_time() : 30;

    ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                  "acme: acme_storage: %V is %s (resolver)", &ctx->name, msg);

    ngx_resolve_name_done(ctx);
    ngx_free(name);

    if (acme_store_redis_host_addresses(sd->host, (char *) msg, NULL) == 0) {
        sd->have_addrs = 1;
    }

    sd->expires = ngx_time() + ttl;
}


ngx_int_t
ngx_http_acme_storage_resolve(ngx_http_acme_main_conf_t *amcf)
{
    ngx_http_acme_storage_dns_t  *sd = &ngx_http_acme_storage_dns;

    u_char              *name;
    size_t               len;
    ngx_resolver_ctx_t  *ctx;

    if (sd->amcf != amcf) {
        /*
         * a query in flight for another configuration is left to its
         * resolver: the handler ignores its answer
         */
        free(sd->host);
        ngx_memzero(sd, sizeof(ngx_http_acme_storage_dns_t));
        sd->amcf = amcf;

        if (amcf->resolver && amcf->storage) {
            sd->host = acme_store_redis_host(amcf->storage);
        }

        (void) acme_store_redis_host_addresses(NULL, NULL, NULL);
    }

    if (sd->host == NULL) {
        return NGX_OK;
    }

    if (sd->ctx || ngx_time() < sd->expires) {
        return sd->answered ? NGX_OK : NGX_AGAIN;
    }

    len = ngx_strlen(sd->host);

    name = ngx_alloc(len, ngx_cycle->log);
    if (name == NULL) {
        return sd->answered ? NGX_OK : NGX_AGAIN;
    }

    ngx_memcpy(name, sd->host, len);

    ctx = ngx_resolve_start(amcf->resolver, NULL);
    if (ctx == NULL || ctx == NGX_NO_RESOLVER) {
        ngx_free(name);
        return sd->answered ? NGX_OK : NGX_AGAIN;
    }

    ctx->name.data = name;
    ctx->name.len = len;
    ctx->handler = ngx_http_acme_storage_resolve_handler;
    ctx->data = sd;
    ctx->timeout = amcf->resolver_timeout;

    sd->ctx = ctx;

    if (ngx_resolve_name(ctx) != NGX_OK) {
        /* nginx freed ctx */
        ngx_free(name);
        sd->ctx = NULL;
        sd->expires = ngx_time() + 5;
    }

    return sd->answered ? NGX_OK : NGX_AGAIN;
}
