
/*
 * acme_storage: the runner follows the shared store. It copies certificates
 * into the local cache (the state_path the workers read), bumps their
 * generation in the zone so that workers reload them, listens to the
 * store's announcements without blocking and, as a safety net, compares
 * the store's generation every few seconds.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_acme_runner.h"


#define NGX_HTTP_ACME_STORE_CHECK    2
#define NGX_HTTP_ACME_STORE_BACKOFF  60
#define NGX_HTTP_ACME_STORE_WATCHED  10
#define NGX_HTTP_ACME_STORE_REFUSED  1     /* s: the next check after a
                                              failure at once */
#define NGX_HTTP_ACME_STORE_SLOW     100   /* ms: a slower failure is a
                                              timeout */


/*
 * Tells the workers whether the leader misses announcements: then a worker
 * holds an HTTP-01 request for a token it does not know yet, and asks for
 * a check of the store (ngx_http_acme_challenge.c).
 */

static void
ngx_http_acme_watch_state(ngx_http_acme_runner_t *rn)
{
    rn->zone->sh->unsubscribed = (rn->cache != NULL && rn->watch == NULL);
}


static ngx_msec_t
ngx_http_acme_follow_msec(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (ngx_msec_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


/* a record in Redis that does not authenticate: the store says so once */

void
ngx_http_acme_forged(void *data, const char *msg)
{
    ngx_http_acme_runner_t  *rn = data;

    ngx_log_error(NGX_LOG_ERR, rn->log, 0, "acme: %s", msg);
}


/*
 * acme_storage: workers never talk to Redis. The leader copies each
 * certificate it learns about from the shared store into the state_path
 * (the local cache the workers read, and what a restart serves while Redis
 * is down). 1 copied (changed), 0 same or absent, -1 error.
 */

static ngx_int_t
ngx_http_acme_cache_sync(ngx_http_acme_runner_t *rn, ngx_uint_t g,
    const char *name)
{
    int              rc;
    char            *fc, *key, *old;
    size_t           fclen, keylen, oldlen;
    ngx_int_t        ret;
    acme_err_t       err;
    acme_certmeta_t  meta;

    fc = NULL;
    key = NULL;
    old = NULL;
    ngx_memzero(&meta, sizeof(acme_certmeta_t));

    rc = acme_store_cert_load(rn->stores[g], name, &fc, &fclen, &key, &keylen,
                              &meta, &err);
    if (rc != 0) {
        if (rc == -1) {
            ngx_log_error(NGX_LOG_ERR, rn->log, 0,
                          "acme: cannot read certificate \"%s\" from the "
                          "storage: %s", name, err.msg);
        }

        ret = rc == 1 ? 0 : -1;
        goto done;
    }

    rc = acme_store_cert_load(rn->cache[g], name, &old, &oldlen, NULL, NULL,
                              NULL, &err);
    if (rc == 0 && oldlen == fclen && ngx_memcmp(old, fc, fclen) == 0) {
        ret = 0;
        goto done;
    }

    if (acme_store_cert_save(rn->cache[g], name, fc, fclen, key, keylen,
                             &meta, &err)
        != 0)
    {
        ngx_log_error(NGX_LOG_ERR, rn->log, 0,
                      "acme: cannot write certificate \"%s\" into the local "
                      "cache: %s", name, err.msg);
        ret = -1;
        goto done;
    }

    ret = 1;

done:

    free(fc);
    free(old);

    if (key) {
        OPENSSL_cleanse(key, keylen);
        free(key);
    }

    acme_certmeta_free(&meta);

    return ret;
}


static void
ngx_http_acme_cert_announce(ngx_http_acme_runner_t *rn, const char *name)
{
    if (ngx_http_acme_zone_cert_bump(rn->zone, (u_char *) name,
                                     ngx_strlen(name))
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, rn->log, 0,
                      "acme: the shared zone is full, certificate \"%s\" is "
                      "not announced to the workers", name);
        return;
    }

    ngx_log_error(NGX_LOG_NOTICE, rn->log, 0,
                  "acme: certificate \"%s\" updated", name);

    ngx_http_acme_snapshot_touch(&rn->status);
}


/* one certificate from the store into the local cache, announced if new */

ngx_int_t
ngx_http_acme_cache_refresh(ngx_http_acme_runner_t *rn, ngx_uint_t g,
    const char *name)
{
    switch (ngx_http_acme_cache_sync(rn, g, name)) {
    case 1:
        ngx_http_acme_cert_announce(rn, name);
        return NGX_OK;
    case -1:
        return NGX_ERROR;
    default:
        return NGX_OK;
    }
}


static ngx_int_t
ngx_http_acme_cert_refresh(ngx_http_acme_runner_t *rn, const char *name)
{
    ngx_uint_t               i;
    ngx_http_acme_cert_t   **certs;

    certs = rn->amcf->certs.elts;

    for (i = 0; i < rn->amcf->certs.nelts; i++) {
        if (name != NULL && ngx_strcmp(certs[i]->name, name) != 0) {
            continue;
        }

        if (ngx_http_acme_cache_refresh(rn, certs[i]->store, certs[i]->name)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    /* on-demand names: issued or renewed by another node too */
    return ngx_http_acme_od_refresh(rn, name);
}


void
ngx_http_acme_watch_close(ngx_http_acme_runner_t *rn)
{
    ngx_connection_t  *c;

    c = rn->watch_conn;

    if (c) {
        /* a failed watch has closed its socket already (and epoll let go) */
        if (c->read->active && rn->watch
            && acme_store_watch_fd(rn->watch) == c->fd)
        {
            (void) ngx_del_event(c->read, NGX_READ_EVENT, 0);
        }

        if (c->read->posted) {
            ngx_delete_posted_event(c->read);
        }

        /* the socket is the watch's: it closes it */
        ngx_free_connection(c);
        c->fd = (ngx_socket_t) -1;
        rn->watch_conn = NULL;
    }

    if (rn->watch) {
        acme_store_watch_close(rn->watch);
        rn->watch = NULL;
    }

    ngx_http_acme_watch_state(rn);
}


/* announcements from any node (or acmectl): read without blocking */

static void
ngx_http_acme_watch_handler(ngx_event_t *ev)
{
    ngx_connection_t        *c = ev->data;
    ngx_http_acme_runner_t  *rn = c->data;

    int          rc;
    char        *name;
    acme_err_t   err;

    for ( ;; ) {
        rc = acme_store_watch_next(rn->watch, &name, &err);

        if (rc == 0) {
            break;
        }

        if (rc == -1) {
            ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                          "acme: storage announcements lost, polling "
                          "until they are back: %s", err.msg);
            ngx_http_acme_watch_close(rn);

            /*
             * changes may have been missed: compare at the next tick, which
             * also tells at once whether Redis refuses (checked again every
             * second) or does not answer (backed off)
             */
            rn->store_gen_known = 0;
            rn->store_check_at = 0;
            return;
        }

        if (rc == 2) {
            ngx_http_acme_challenge_message(rn, name);

        } else if (ngx_http_acme_cert_refresh(rn, name) != NGX_OK) {
            rn->store_gen_known = 0;
        }

        free(name);
    }

    if (ngx_handle_read_event(ev, 0) != NGX_OK) {
        ngx_http_acme_watch_close(rn);
        rn->store_gen_known = 0;
    }
}


void
ngx_http_acme_watch_open(ngx_http_acme_runner_t *rn)
{
    ngx_connection_t  *c;
    acme_err_t         err;

    rn->watch = acme_store_watch_open_challenges(rn->stores[0], &err);
    if (rn->watch == NULL) {
        ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                      "acme: cannot subscribe to storage announcements, "
                      "polling: %s", err.msg);
        return;
    }

    ngx_log_error(NGX_LOG_INFO, rn->log, 0,
                  "acme: subscribed to storage announcements");

    /* the challenges are copied below: a held request finds its token */

    c = ngx_get_connection(acme_store_watch_fd(rn->watch), rn->log);
    if (c == NULL) {
        acme_store_watch_close(rn->watch);
        rn->watch = NULL;
        return;
    }

    c->data = rn;
    c->read->handler = ngx_http_acme_watch_handler;
    c->read->log = rn->log;
    c->write->log = rn->log;
    rn->watch_conn = c;

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_http_acme_watch_close(rn);
        return;
    }

    ngx_http_acme_challenge_resync(rn);
    ngx_http_acme_watch_state(rn);

    /* messages may already wait in the reader */
    ngx_post_event(c->read, &ngx_posted_events);
}


/*
 * The safety net for changes made by other nodes (or acmectl): compare the
 * store's generation every few seconds. When Redis refuses at once, check
 * again every second (it costs nothing); when it does not answer (a
 * timeout), back off so that the leader does not block on a timeout every
 * tick. A worker holding an HTTP-01 request for an unknown token while we
 * are not subscribed asks for a check at once: granted unless a check
 * timed out in this outage (that one waits for the back-off).
 */

void
ngx_http_acme_store_check(ngx_http_acme_runner_t *rn, time_t now)
{
    ngx_msec_t               started;
    acme_err_t               err;
    ngx_uint_t               asked;
    unsigned long long       gen;

    if (rn->cache == NULL) {
        return;
    }

    asked = rn->zone->sh->resync;

    if (now < rn->store_check_at
        && !(asked && rn->watch == NULL && !rn->store_slow))
    {
        ngx_http_acme_watch_state(rn);
        return;
    }

    if (asked) {
        rn->zone->sh->resync = 0;
    }

    started = ngx_http_acme_follow_msec();

    if (acme_store_generation(rn->stores[0], &gen, &err) != 0) {
        if (!rn->store_down) {
            ngx_log_error(NGX_LOG_ERR, rn->log, 0,
                          "acme: storage unreachable, serving from the local "
                          "cache: %s", err.msg);
            rn->store_down = 1;
            rn->store_slow = 0;
            rn->store_backoff = NGX_HTTP_ACME_STORE_CHECK;
        }

        /*
         * slow, or the store's repeat of an earlier timeout (it fails at
         * once for a second after one): a timeout again soon
         */
        if (ngx_http_acme_follow_msec() - started
            >= NGX_HTTP_ACME_STORE_SLOW
            || ngx_strstr(err.msg, "timed out") != NULL)
        {
            rn->store_slow = 1;
        }

        if (rn->store_slow) {
            rn->store_backoff = ngx_min(rn->store_backoff * 2,
                                        NGX_HTTP_ACME_STORE_BACKOFF);
            rn->store_check_at = now + rn->store_backoff;

        } else {
            rn->store_check_at = now + NGX_HTTP_ACME_STORE_REFUSED;
        }

        ngx_http_acme_watch_state(rn);
        return;
    }

    if (rn->store_down) {
        ngx_log_error(NGX_LOG_NOTICE, rn->log, 0,
                      "acme: storage reachable again");
        rn->store_down = 0;
        rn->store_slow = 0;
        rn->store_gen_known = 0;
    }

    rn->store_check_at = now + (rn->watch ? NGX_HTTP_ACME_STORE_WATCHED
                                          : NGX_HTTP_ACME_STORE_CHECK);

    if (rn->watch == NULL) {
        /* subscribe before comparing: nothing falls in between */
        ngx_http_acme_watch_open(rn);
    }

    ngx_http_acme_watch_state(rn);

    if (rn->store_gen_known && gen == rn->store_gen) {
        return;
    }

    if (ngx_http_acme_cert_refresh(rn, NULL) != NGX_OK) {
        /* try again at the next check */
        return;
    }

    rn->store_gen = gen;
    rn->store_gen_known = 1;
}


void
ngx_http_acme_cert_updated(void *data, const char *name)
{
    ngx_http_acme_runner_t  *rn = data;

    ngx_uint_t  g;

    if (rn->cache) {
        for (g = 0; g < rn->nmanagers; g++) {
            (void) ngx_http_acme_cache_sync(rn, g, name);
        }
    }

    ngx_http_acme_cert_announce(rn, name);
}
