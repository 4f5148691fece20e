
/*
 * The ACME core in nginx's cache manager process.
 *
 * Nothing that can block (Redis, fsync, RSA key generation, DNS) runs in a
 * traffic-serving worker: the module registers a path with a manager
 * callback, so the master spawns the cache manager (no listening sockets,
 * the worker user, an nginx event loop, respawned when it dies), and the
 * core runs there: acme_loop in hosted mode on nginx timers and connections
 * (one ngx_connection_t per libcurl socket, level-triggered), one
 * acme_manager per state_path. With master_process off the one process runs
 * it. Workers only serve challenges and certificates from the shared zone.
 *
 * The lock in the zone (the runner's pid, with a heartbeat) keeps two
 * processes from running the core at once: on reload the new cache manager
 * starts before the old one exits, and takes over once the old one has let
 * go (at exit) or is gone.
 *
 * The runner also publishes challenges into the zone, bumps generation
 * numbers when a certificate changes, has the status snapshot rebuilt
 * (ngx_http_acme_status_snapshot.c) and picks up renew requests.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_acme_module.h"
#include "ngx_http_acme_zone.h"
#include "ngx_http_acme_status_snapshot.h"

#include "acme_loop.h"
#include "acme_manager.h"
#include "acme_store.h"


#define NGX_HTTP_ACME_TICK_LEADER    250
#define NGX_HTTP_ACME_TICK_FOLLOWER  1000
#define NGX_HTTP_ACME_STALE          20
#define NGX_HTTP_ACME_RETRY_START    30
#define NGX_HTTP_ACME_MANAGER_IDLE   (60 * 60 * 1000)
#define NGX_HTTP_ACME_STORE_CHECK    2
#define NGX_HTTP_ACME_STORE_BACKOFF  60
#define NGX_HTTP_ACME_STORE_WATCHED  10


typedef struct {
    ngx_cycle_t                 *cycle;
    ngx_log_t                   *log;
    ngx_http_acme_main_conf_t   *amcf;
    ngx_http_acme_zone_t        *zone;

    acme_loop_t                 *loop;
    acme_store_t               **stores;
    acme_store_t               **cache;          /* acme_storage: state_path */
    acme_lock_t                **held;           /* for acmectl: we manage
                                                    each state_path */
    ngx_uint_t                   held_logged;
    acme_manager_t             **managers;

    acme_store_watch_t          *watch;          /* certificate announcements */
    ngx_connection_t            *watch_conn;

    unsigned long long           store_gen;
    ngx_uint_t                   store_gen_known;
    ngx_uint_t                   store_down;
    time_t                       store_check_at;
    time_t                       store_backoff;
    ngx_uint_t                   nmanagers;

    ngx_event_t                  timer;

    ngx_connection_t           **conns;
    ngx_uint_t                   nconns;
    ngx_uint_t                   aconns;

    ngx_http_acme_snapshot_t     status;
    unsigned long                ca_wait_version;
    ngx_uint_t                   ca_wait_known;
    ngx_uint_t                   stopping;
} ngx_http_acme_runner_t;


static void ngx_http_acme_tick(ngx_event_t *ev);
static ngx_int_t ngx_http_acme_runner_start(ngx_cycle_t *cycle);
static void ngx_http_acme_runner_stop(ngx_uint_t release);
static void ngx_http_acme_runner_hold(ngx_http_acme_runner_t *rn);
static ngx_msec_t ngx_http_acme_runner_manager(void *data);
static void ngx_http_acme_runner_atexit(void);
static void ngx_http_acme_watch_open(ngx_http_acme_runner_t *rn);


static ngx_event_t              ngx_http_acme_tick_ev;
static ngx_http_acme_runner_t  *ngx_http_acme_runner;
static ngx_http_acme_zone_t    *ngx_http_acme_zone;
static time_t                   ngx_http_acme_start_retry;


/* acme_host_t */

static void
ngx_http_acme_host_log(void *data, int level, const char *msg)
{
    ngx_http_acme_runner_t  *rn = data;

    ngx_uint_t  l;

    switch (level) {
    case ACME_LOG_ERR:
        l = NGX_LOG_ERR;
        break;
    case ACME_LOG_WARN:
        l = NGX_LOG_WARN;
        break;
    case ACME_LOG_NOTICE:
        l = NGX_LOG_NOTICE;
        break;
    case ACME_LOG_INFO:
        l = NGX_LOG_INFO;
        break;
    default:
        l = NGX_LOG_DEBUG;
        break;
    }

    ngx_log_error(l, rn->log, 0, "%s", msg);
}


/* a record in Redis that does not authenticate: the store says so once */

static void
ngx_http_acme_forged(void *data, const char *msg)
{
    ngx_http_acme_runner_t  *rn = data;

    ngx_log_error(NGX_LOG_ERR, rn->log, 0, "acme: %s", msg);
}


static void
ngx_http_acme_host_timer_handler(ngx_event_t *ev)
{
    ngx_http_acme_runner_t  *rn = ev->data;

    if (rn->loop) {
        acme_loop_on_timer(rn->loop);
    }
}


static void
ngx_http_acme_host_set_timer(void *data, long ms)
{
    ngx_http_acme_runner_t  *rn = data;

    if (ms < 0) {
        if (rn->timer.timer_set) {
            ngx_del_timer(&rn->timer);
        }

        return;
    }

    ngx_add_timer(&rn->timer, (ngx_msec_t) ms);
}


static void
ngx_http_acme_host_read_handler(ngx_event_t *ev)
{
    ngx_connection_t        *c = ev->data;
    ngx_http_acme_runner_t  *rn = c->data;

    if (rn->loop) {
        acme_loop_on_socket(rn->loop, c->fd, ACME_EV_IN);
    }
}


static void
ngx_http_acme_host_write_handler(ngx_event_t *ev)
{
    ngx_connection_t        *c = ev->data;
    ngx_http_acme_runner_t  *rn = c->data;

    if (rn->loop) {
        acme_loop_on_socket(rn->loop, c->fd, ACME_EV_OUT);
    }
}


static void
ngx_http_acme_conn_forget(ngx_http_acme_runner_t *rn, ngx_uint_t i)
{
    ngx_connection_t  *c;

    c = rn->conns[i];

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    /* the socket is libcurl's: it closes it */

    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;

    rn->conns[i] = rn->conns[--rn->nconns];
}


static int
ngx_http_acme_host_watch(void *data, int fd, int events)
{
    ngx_http_acme_runner_t  *rn = data;

    ngx_uint_t          i;
    ngx_connection_t   *c, **conns;

    c = NULL;

    for (i = 0; i < rn->nconns; i++) {
        if (rn->conns[i]->fd == fd) {
            c = rn->conns[i];
            break;
        }
    }

    if (events == 0) {
        if (c) {
            ngx_http_acme_conn_forget(rn, i);
        }

        return 0;
    }

    if (c == NULL) {
        if (rn->nconns == rn->aconns) {
            conns = realloc(rn->conns,
                            (rn->aconns + 8) * sizeof(ngx_connection_t *));
            if (conns == NULL) {
                return -1;
            }

            rn->conns = conns;
            rn->aconns += 8;
        }

        c = ngx_get_connection(fd, rn->log);
        if (c == NULL) {
            return -1;
        }

        c->data = rn;
        c->read->handler = ngx_http_acme_host_read_handler;
        c->write->handler = ngx_http_acme_host_write_handler;
        c->read->log = rn->log;
        c->write->log = rn->log;

        rn->conns[rn->nconns++] = c;
    }

    if ((events & ACME_EV_IN) && !c->read->active) {
        if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return -1;
        }

    } else if (!(events & ACME_EV_IN) && c->read->active) {
        if (ngx_del_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
            return -1;
        }
    }

    if ((events & ACME_EV_OUT) && !c->write->active) {
        if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return -1;
        }

    } else if (!(events & ACME_EV_OUT) && c->write->active) {
        if (ngx_del_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
            return -1;
        }
    }

    return 0;
}


/*
 * acme_challenge_host_t: challenges go into the shared zone, where any
 * worker answers them. http-01: token -> "<identifier> <key authz>" (the
 * identifier is the only Host it is answered for); tls-alpn-01: SNI ->
 * "<dns|ip> <identifier> <key authz>".
 *
 * With acme_storage the core announces every challenge it publishes (the
 * issuing node may be nginx, Apache or acmectl); each leader, this one
 * too, copies it into its zone and acknowledges it, and the core asks the
 * CA to validate once every node did.
 */

static ngx_int_t
ngx_http_acme_challenge_put(ngx_http_acme_runner_t *rn, const char *type,
    const char *key, const char *itype, const char *ivalue, const char *ka)
{
    u_char     *v, *p, kind;
    size_t      len;
    ngx_int_t   rc;

    if (ngx_strcmp(type, "http-01") == 0) {
        kind = NGX_HTTP_ACME_KV_HTTP01;
        len = ngx_strlen(ivalue) + 1 + ngx_strlen(ka);

    } else {
        kind = NGX_HTTP_ACME_KV_TLSALPN;
        len = ngx_strlen(itype) + 1 + ngx_strlen(ivalue) + 1 + ngx_strlen(ka);
    }

    v = ngx_alloc(len, rn->log);
    if (v == NULL) {
        return NGX_ERROR;
    }

    p = v;

    if (kind == NGX_HTTP_ACME_KV_TLSALPN) {
        p = ngx_cpymem(p, itype, ngx_strlen(itype));
        *p++ = ' ';
    }

    p = ngx_cpymem(p, ivalue, ngx_strlen(ivalue));
    *p++ = ' ';
    ngx_memcpy(p, ka, ngx_strlen(ka));

    rc = ngx_http_acme_zone_put(rn->zone, kind, (u_char *) key,
                                ngx_strlen(key), v, len);
    ngx_free(v);

    return rc;
}


static int
ngx_http_acme_publish(void *data, const char *type, const acme_ident_t *id,
    const char *token, const char *key_authz, acme_err_t *err)
{
    ngx_http_acme_runner_t  *rn = data;

    char       *key;
    ngx_int_t   rc;

    if (ngx_strcmp(type, "http-01") == 0) {
        key = strdup(token);

    } else if (ngx_strcmp(type, "tls-alpn-01") == 0) {
        key = acme_ident_sni(id);

    } else {
        acme_err_set(err, ACME_ERR_CONFIG,
                     "challenge type \"%s\" is not supported by nginx", type);
        return -1;
    }

    if (key == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }

    rc = ngx_http_acme_challenge_put(rn, type, key,
                                     acme_ident_type_name(id->type),
                                     id->value, key_authz);
    free(key);

    if (rc != NGX_OK) {
        acme_err_set(err, ACME_ERR_INTERNAL,
                     "the acme shared zone is full; increase its size with "
                     "acme_shared_zone");
        return -1;
    }

    ngx_log_error(NGX_LOG_INFO, rn->log, 0,
                  "acme: %s challenge for \"%s\" published", type, id->value);

    return 0;
}


static void
ngx_http_acme_withdraw(void *data, const char *type, const acme_ident_t *id,
    const char *token)
{
    ngx_http_acme_runner_t  *rn = data;

    char  *sni;

    if (rn->stopping) {
        /*
         * this worker hands over (reload, exit): the order stays in the
         * store and the next leader resumes it, while the CA may be
         * validating right now; the zone outlives us, so the answer stays
         */
        return;
    }

    if (ngx_strcmp(type, "http-01") == 0) {
        ngx_http_acme_zone_delete(rn->zone, NGX_HTTP_ACME_KV_HTTP01,
                                  (u_char *) token, ngx_strlen(token));

    } else if (ngx_strcmp(type, "tls-alpn-01") == 0) {
        sni = acme_ident_sni(id);
        if (sni == NULL) {
            return;
        }

        ngx_http_acme_zone_delete(rn->zone, NGX_HTTP_ACME_KV_TLSALPN,
                                  (u_char *) sni, ngx_strlen(sni));
        free(sni);
    }
}


static void
ngx_http_acme_challenge_message(ngx_http_acme_runner_t *rn, char *msg)
{
    u_char                kind;
    acme_err_t            err;
    acme_challenge_msg_t  m;

    if (acme_store_challenge_msg_parse(msg, &m, &err) != 0) {
        ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                      "acme: storage: %s", err.msg);
        return;
    }

    kind = ngx_strcmp(m.type, "http-01") == 0 ? NGX_HTTP_ACME_KV_HTTP01
                                              : NGX_HTTP_ACME_KV_TLSALPN;

    if (!m.add) {
        ngx_http_acme_zone_delete(rn->zone, kind, (u_char *) m.key,
                                  ngx_strlen(m.key));
        acme_store_challenge_msg_free(&m);
        return;
    }

    if (ngx_http_acme_challenge_put(rn, m.type, m.key,
                                    acme_ident_type_name(m.id.type),
                                    m.id.value, m.key_authz)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, rn->log, 0,
                      "acme: the shared zone is full, the %s challenge for "
                      "\"%s\" is not answered here; increase its size with "
                      "acme_shared_zone", m.type, m.id.value);
        acme_store_challenge_msg_free(&m);
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, rn->log, 0,
                   "acme: announced %s challenge for \"%s\" taken",
                   m.type, m.id.value);

    if (acme_store_challenge_ack(rn->stores[0], m.type, m.key, &err) != 0) {
        ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                      "acme: cannot acknowledge the %s challenge for \"%s\": "
                      "%s", m.type, m.id.value, err.msg);
    }

    acme_store_challenge_msg_free(&m);
}


typedef struct {
    char                      **names;
    size_t                      n;
} ngx_http_acme_names_t;


static ngx_int_t
ngx_http_acme_challenge_pending(void *ctx, u_char *key, size_t klen)
{
    ngx_http_acme_names_t  *pending = ctx;

    size_t  i;

    for (i = 0; i < pending->n; i++) {
        if (ngx_strlen(pending->names[i]) == klen
            && ngx_memcmp(pending->names[i], key, klen) == 0)
        {
            return 1;
        }
    }

    return 0;
}


/*
 * A leader that subscribes (at start, after an outage) may have missed
 * announcements: challenges pending in the store are copied into the zone
 * unless it has them, and entries the store no longer has (a withdrawal
 * it missed) are removed. The store's record names the identifier, so an
 * entry read back this way is bound to it as an announced one is.
 *
 * Every challenge is in the store before it is in a zone, so an entry put
 * before the listing and missing from it was withdrawn.
 */

static void
ngx_http_acme_challenge_resync(ngx_http_acme_runner_t *rn)
{
    static const char      *types[] = { "http-01", "tls-alpn-01" };

    int                     rc;
    char                  **names, *dir, *key, *ka;
    size_t                  n, i, t, len, copied, removed;
    time_t                  listed;
    u_char                  kind;
    ngx_str_t               v;
    ngx_pool_t             *pool;
    acme_err_t              err;
    acme_ident_t            id;
    acme_store_t           *st;
    ngx_http_acme_names_t   pending;

    st = rn->stores[0];

    pool = ngx_create_pool(1024, rn->log);
    if (pool == NULL) {
        return;
    }

    copied = 0;
    removed = 0;

    for (t = 0; t < 2; t++) {
        kind = t == 0 ? NGX_HTTP_ACME_KV_HTTP01 : NGX_HTTP_ACME_KV_TLSALPN;
        dir = t == 0 ? "challenges/http-01" : "challenges/tls-alpn-01";

        listed = ngx_time();

        if (st->ops->list(st, dir, &names, &n, &err) != 0) {
            ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                          "acme: cannot list the pending challenges in the "
                          "storage: %s", err.msg);
            break;
        }

        pending.names = names;
        pending.n = n;

        removed += ngx_http_acme_zone_sweep(rn->zone, kind, listed,
                                            ngx_http_acme_challenge_pending,
                                            &pending);

        for (i = 0; i < n; i++) {
            if (ngx_http_acme_zone_get(rn->zone, kind, (u_char *) names[i],
                                       ngx_strlen(names[i]), pool, &v)
                != NGX_DECLINED)
            {
                continue;
            }

            key = names[i];

            rc = acme_store_challenge_get(st, types[t], key, &id, &ka, &err);

            if (rc != 0) {
                if (rc < 0) {
                    ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                                  "acme: pending %s challenge not copied "
                                  "from the storage: %s", types[t], err.msg);
                }

                free(ka);
                continue;
            }

            rc = ngx_http_acme_challenge_put(rn, types[t], key,
                                             acme_ident_type_name(id.type),
                                             id.value, ka);
            acme_ident_free(&id);

            len = ngx_strlen(ka);
            ngx_explicit_memzero(ka, len);
            free(ka);

            if (rc == NGX_OK) {
                copied++;
            }
        }

        acme_store_list_free(names, n);
    }

    ngx_destroy_pool(pool);

    if (copied) {
        ngx_log_error(NGX_LOG_INFO, rn->log, 0,
                      "acme: %uz pending challenge(s) copied from the storage",
                      copied);
    }

    if (removed) {
        ngx_log_error(NGX_LOG_INFO, rn->log, 0,
                      "acme: %uz challenge(s) withdrawn while not subscribed "
                      "removed", removed);
    }
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

        switch (ngx_http_acme_cache_sync(rn, certs[i]->store,
                                         certs[i]->name))
        {
        case 1:
            ngx_http_acme_cert_announce(rn, certs[i]->name);
            break;
        case -1:
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
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

            /* changes may have been missed: compare at the next check */
            rn->store_gen_known = 0;
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


static void
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

    /* messages may already wait in the reader */
    ngx_post_event(c->read, &ngx_posted_events);
}


/*
 * The safety net for changes made by other nodes (or acmectl): compare the
 * store's generation every few seconds; when Redis does not answer, back
 * off so that the leader does not block on a timeout every tick.
 */

static void
ngx_http_acme_store_check(ngx_http_acme_runner_t *rn, time_t now)
{
    acme_err_t               err;
    unsigned long long       gen;

    if (rn->cache == NULL || now < rn->store_check_at) {
        return;
    }

    if (acme_store_generation(rn->stores[0], &gen, &err) != 0) {
        if (!rn->store_down) {
            ngx_log_error(NGX_LOG_ERR, rn->log, 0,
                          "acme: storage unreachable, serving from the local "
                          "cache: %s", err.msg);
            rn->store_down = 1;
            rn->store_backoff = NGX_HTTP_ACME_STORE_CHECK;
        }

        rn->store_backoff = ngx_min(rn->store_backoff * 2,
                                    NGX_HTTP_ACME_STORE_BACKOFF);
        rn->store_check_at = now + rn->store_backoff;
        return;
    }

    if (rn->store_down) {
        ngx_log_error(NGX_LOG_NOTICE, rn->log, 0,
                      "acme: storage reachable again");
        rn->store_down = 0;
        rn->store_gen_known = 0;
    }

    rn->store_check_at = now + (rn->watch ? NGX_HTTP_ACME_STORE_WATCHED
                                          : NGX_HTTP_ACME_STORE_CHECK);

    if (rn->watch == NULL) {
        /* subscribe before comparing: nothing falls in between */
        ngx_http_acme_watch_open(rn);
    }

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


static void
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


/*
 * For the status handlers: refuse forced renewals while the CA waits. Only
 * when a manager changed: a failure that sets the wait changes its version.
 */

static void
ngx_http_acme_ca_wait_publish(ngx_http_acme_runner_t *rn)
{
    time_t                  until;
    ngx_uint_t              m;
    unsigned long           version;
    ngx_http_acme_cert_t  **cc;

    version = 0;

    for (m = 0; m < rn->nmanagers; m++) {
        version += acme_manager_version(rn->managers[m]);
    }

    if (rn->ca_wait_known && version == rn->ca_wait_version) {
        return;
    }

    rn->ca_wait_version = version;
    rn->ca_wait_known = 1;

    cc = rn->amcf->certs.elts;

    for (m = 0; m < rn->amcf->certs.nelts; m++) {
        until = acme_manager_ca_wait(rn->managers[cc[m]->store],
                                     cc[m]->name);

        if (ngx_http_acme_zone_set_ca_wait(rn->zone, (u_char *) cc[m]->name,
                                           ngx_strlen(cc[m]->name),
                                           until > 0 ? until : 0)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                          "acme: the shared zone is full, the CA's wait "
                          "for \"%s\" not published", cc[m]->name);
        }
    }
}


static void
ngx_http_acme_renew_requests(ngx_http_acme_runner_t *rn)
{
    int         rc;
    char        tb[32];
    u_char      req[NGX_HTTP_ACME_RENEW_MAX][NGX_HTTP_ACME_RENEW_LEN];
    time_t      until;
    ngx_uint_t  n, i, m;

    n = ngx_http_acme_zone_renew_take(rn->zone, req);

    for (i = 0; i < n; i++) {
        rc = -1;
        until = 0;

        for (m = 0; m < rn->nmanagers; m++) {
            rc = acme_manager_renew(rn->managers[m], (char *) req[i], &until);
            if (rc >= 0) {
                break;
            }
        }

        if (rc == -1) {
            ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                          "acme: renew request for unknown certificate "
                          "\"%s\"", req[i]);
            continue;
        }

        if (rc == 1) {
            /* the CA's answer came after the handler looked */
            ngx_log_error(NGX_LOG_NOTICE, rn->log, 0,
                          "acme: renewal of \"%s\" not forced: the CA "
                          "asked to wait until %s", req[i],
                          acme_time_format(until, tb, sizeof(tb)));
            continue;
        }

        ngx_log_error(NGX_LOG_NOTICE, rn->log, 0,
                      "acme: renewal of \"%s\" requested", req[i]);

        ngx_http_acme_snapshot_touch(&rn->status);
    }
}


/* the leader lock */

static ngx_uint_t
ngx_http_acme_leader_gone(ngx_http_acme_sh_t *sh, ngx_pid_t pid, time_t now)
{
    if (pid == 0) {
        return 1;
    }

    if (kill(pid, 0) == -1 && ngx_errno == NGX_ESRCH) {
        return 1;
    }

    return (now - (time_t) sh->heartbeat > NGX_HTTP_ACME_STALE);
}


static void
ngx_http_acme_tick(ngx_event_t *ev)
{
    time_t               now;
    ngx_pid_t            pid;
    ngx_http_acme_sh_t  *sh;

    sh = ngx_http_acme_zone->sh;
    now = ngx_time();
    pid = (ngx_pid_t) sh->leader;

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        ngx_http_acme_runner_stop(1);
        return;
    }

    if (pid == ngx_pid) {
        sh->heartbeat = now;

        if (ngx_http_acme_runner == NULL
            && now >= ngx_http_acme_start_retry)
        {
            if (ngx_http_acme_runner_start((ngx_cycle_t *) ngx_cycle)
                != NGX_OK)
            {
                ngx_http_acme_start_retry = now + NGX_HTTP_ACME_RETRY_START;
            }
        }

        if (ngx_http_acme_runner) {
            ngx_http_acme_runner_hold(ngx_http_acme_runner);
            ngx_http_acme_store_check(ngx_http_acme_runner, now);
            ngx_http_acme_renew_requests(ngx_http_acme_runner);
            ngx_http_acme_ca_wait_publish(ngx_http_acme_runner);

            ngx_http_acme_snapshot_update(&ngx_http_acme_runner->status,
                                          ngx_http_acme_runner->managers,
                                          ngx_http_acme_runner->nmanagers,
                                          ngx_http_acme_runner->log);
        }

        ngx_add_timer(ev, NGX_HTTP_ACME_TICK_LEADER);
        return;
    }

    if (ngx_http_acme_runner) {
        /* the lock was taken from us (we looked dead): let go */
        ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                      "acme: process %P took over, stopping here", pid);
        ngx_http_acme_runner_stop(0);
    }

    if (ngx_http_acme_leader_gone(sh, pid, now)
        && ngx_atomic_cmp_set(&sh->leader, pid, ngx_pid))
    {
        sh->heartbeat = now;

        ngx_log_error(NGX_LOG_NOTICE, ev->log, 0,
                      "acme: the ACME client runs in this %s%s",
                      ngx_process == NGX_PROCESS_HELPER
                      ? "cache manager process" : "process",
                      pid ? " (took over)" : "");

        ngx_http_acme_start_retry = 0;

        if (ngx_http_acme_runner_start((ngx_cycle_t *) ngx_cycle) != NGX_OK) {
            ngx_http_acme_start_retry = now + NGX_HTTP_ACME_RETRY_START;
        }

        ngx_add_timer(ev, NGX_HTTP_ACME_TICK_LEADER);
        return;
    }

    ngx_add_timer(ev, NGX_HTTP_ACME_TICK_FOLLOWER);
}


/*
 * a state_path, opened in this worker (as the worker user: journal recovery
 * and cleanup happen here, never in the master); twice, because a journal
 * that failed to apply (a link in the store, say) is dropped by the first
 */

static acme_store_t *
ngx_http_acme_runner_open(ngx_cycle_t *cycle, char *path)
{
    ngx_uint_t     n;
    acme_err_t     err;
    acme_store_t  *st;

    for (n = 0; n < 2; n++) {
        st = acme_store_fs_open(path, 1, &err);
        if (st != NULL) {
            return st;
        }

        ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                      "acme: cannot open state_path \"%s\": %s",
                      path, err.msg);
    }

    return NULL;
}


/*
 * hold ACME_SERVER_LOCK_NGINX in every state_path while the core runs there:
 * acmectl refuses to renew under it; tried again each tick when another
 * process held it for a moment
 */

static void
ngx_http_acme_runner_hold(ngx_http_acme_runner_t *rn)
{
    ngx_uint_t     g;
    acme_err_t     err;
    acme_store_t  *st;

    for (g = 0; rn->held && g < rn->nmanagers; g++) {
        st = rn->cache ? rn->cache[g] : rn->stores[g];

        if (rn->held[g] || st == NULL) {
            continue;
        }

        if (st->ops->lock(st, ACME_SERVER_LOCK_NGINX, &rn->held[g], &err)
            < 0 && !rn->held_logged)
        {
            /* once: it is tried again every tick */
            rn->held_logged = 1;
            ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                          "acme: state_path lock for acmectl: %s", err.msg);
        }
    }
}


/* start and stop the core in this worker */

static ngx_int_t
ngx_http_acme_runner_start(ngx_cycle_t *cycle)
{
    int                          *idx, *map;
    char                        **paths, **contacts, *types[1];
    ngx_uint_t                    i, j, g;
    acme_err_t                    err;
    acme_host_t                   host;
    const char                   *name;
    acme_issuer_conf_t            ic;
    acme_manager_host_t           mhost;
    ngx_http_acme_cert_t        **certs, *cert;
    ngx_http_acme_issuer_t       *iss;
    ngx_http_acme_runner_t       *rn;
    ngx_http_acme_main_conf_t    *amcf;

    amcf = ngx_http_acme_get_main_conf();

    rn = ngx_calloc(sizeof(ngx_http_acme_runner_t), cycle->log);
    if (rn == NULL) {
        return NGX_ERROR;
    }

    rn->cycle = cycle;
    rn->log = cycle->log;
    rn->amcf = amcf;
    rn->zone = ngx_http_acme_zone;

    ngx_http_acme_snapshot_init(&rn->status, amcf->status_zone);

    rn->timer.handler = ngx_http_acme_host_timer_handler;
    rn->timer.data = rn;
    rn->timer.log = cycle->log;
    rn->timer.cancelable = 1;

    ngx_http_acme_runner = rn;

    idx = NULL;
    map = NULL;

    ngx_memzero(&host, sizeof(acme_host_t));
    host.data = rn;
    host.set_timer = ngx_http_acme_host_set_timer;
    host.watch = ngx_http_acme_host_watch;
    host.log = ngx_http_acme_host_log;

    rn->loop = acme_loop_new(&host, ACME_LOG_DEBUG, &err);
    if (rn->loop == NULL) {
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                      "acme: cannot start the event loop: %s", err.msg);
        goto failed;
    }

    rn->nmanagers = amcf->stores.nelts;
    rn->stores = ngx_calloc((rn->nmanagers + 1) * sizeof(acme_store_t *),
                            cycle->log);
    rn->managers = ngx_calloc((rn->nmanagers + 1) * sizeof(acme_manager_t *),
                              cycle->log);
    rn->held = ngx_calloc((rn->nmanagers + 1) * sizeof(acme_lock_t *),
                          cycle->log);
    idx = ngx_calloc((amcf->issuers.nelts + 1) * sizeof(int), cycle->log);
    map = ngx_calloc((amcf->issuers.nelts + 1) * sizeof(int), cycle->log);

    if (amcf->storage) {
        rn->cache = ngx_calloc((rn->nmanagers + 1) * sizeof(acme_store_t *),
                               cycle->log);
        if (rn->cache == NULL) {
            goto failed;
        }
    }

    if (rn->stores == NULL || rn->managers == NULL || rn->held == NULL
        || idx == NULL || map == NULL)
    {
        goto failed;
    }

    ngx_memzero(&mhost, sizeof(acme_manager_host_t));
    mhost.data = rn;
    mhost.challenges.data = rn;
    mhost.challenges.publish = ngx_http_acme_publish;
    mhost.challenges.withdraw = ngx_http_acme_withdraw;
    mhost.cert_updated = ngx_http_acme_cert_updated;

    paths = amcf->stores.elts;
    iss = amcf->issuers.elts;
    certs = amcf->certs.elts;

    for (g = 0; g < rn->nmanagers; g++) {

        if (amcf->storage) {
            rn->cache[g] = ngx_http_acme_runner_open(cycle, paths[g]);
            if (rn->cache[g] == NULL) {
                goto failed;
            }

            /* lazy: a node starts (from its cache) while Redis is down */
            rn->stores[g] = acme_store_open(amcf->storage, amcf->storage_key,
                                            ACME_STORE_LAZY, &err);
            acme_store_on_forged(rn->stores[g], ngx_http_acme_forged, rn);

        } else {
            rn->stores[g] = ngx_http_acme_runner_open(cycle, paths[g]);
            if (rn->stores[g] == NULL) {
                goto failed;
            }
        }

        if (rn->stores[g] == NULL) {
            /* only acme_storage (and its key) gets here */
            ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                          "acme: acme_storage: %s", err.msg);
            goto failed;
        }

        rn->managers[g] = acme_manager_new(rn->loop, rn->stores[g], &mhost,
                                           &err);
        if (rn->managers[g] == NULL) {
            ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                          "acme: %s", err.msg);
            goto failed;
        }

        for (i = 0; i < amcf->issuers.nelts; i++) {
            map[i] = -1;
        }

        for (i = 0; i < amcf->certs.nelts; i++) {
            cert = certs[i];

            if (cert->store != g) {
                continue;
            }

            for (j = 0; j < cert->nissuers; j++) {

                if (map[cert->issuers[j]] == -1) {
                    ngx_http_acme_issuer_t  *is = &iss[cert->issuers[j]];

                    ngx_memzero(&ic, sizeof(acme_issuer_conf_t));

                    ic.name = (char *) is->name.data;
                    ic.client.directory_url = is->directory_url;
                    ic.client.ca_file = is->ca_file;
                    ic.client.verify = is->verify ? 1 : 0;
                    contacts = is->contacts.elts;
                    ic.client.contact = (const char *const *) contacts;
                    ic.client.ncontact = is->contacts.nelts;
                    ic.client.agree_tos = is->accept_tos ? 1 : 0;
                    ic.client.eab_kid = is->eab_kid;
                    ic.client.eab_hmac_key = is->eab_key;
                    ic.client.account_keyspec = is->account_keyspec;
                    ic.client.account_key_file = is->account_key_file;

                    if (is->challenge) {
                        types[0] = is->challenge;
                        ic.challenge_types = (const char *const *) types;
                        ic.nchallenge_types = 1;
                    }

                    ic.profile = is->profile;
                    ic.profile_required = is->profile_required ? 1 : 0;
                    ic.preferred_chain = is->preferred_chain;

                    map[cert->issuers[j]] =
                        acme_manager_add_issuer(rn->managers[g], &ic, &err);

                    if (map[cert->issuers[j]] < 0) {
                        ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                                      "acme: %s", err.msg);
                        goto failed;
                    }
                }

                idx[j] = map[cert->issuers[j]];
            }

            name = acme_manager_add_cert(rn->managers[g], cert->ids,
                                         cert->nids, &cert->keyspec, idx,
                                         cert->nissuers, &err);
            if (name == NULL) {
                ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                              "acme: certificate \"%s\": %s", cert->name,
                              err.msg);
                goto failed;
            }
        }

        if (g == 0 && rn->cache) {
            /* before the first order: our own announcements echo back */
            ngx_http_acme_watch_open(rn);
        }

        if (acme_manager_start(rn->managers[g], &err) != 0) {
            ngx_log_error(NGX_LOG_ERR, cycle->log, 0, "acme: %s", err.msg);
            goto failed;
        }
    }

    ngx_free(idx);
    ngx_free(map);

    ngx_http_acme_runner_hold(rn);

    ngx_http_acme_snapshot_update(&rn->status, rn->managers, rn->nmanagers,
                                  rn->log);

    return NGX_OK;

failed:

    ngx_free(idx);
    ngx_free(map);

    ngx_http_acme_runner_stop(0);

    /* keep the lock: the retry happens here, not in a storm of takeovers */

    return NGX_ERROR;
}


static void
ngx_http_acme_runner_stop(ngx_uint_t release)
{
    ngx_uint_t               i;
    acme_store_t            *st;
    ngx_http_acme_runner_t  *rn;

    rn = ngx_http_acme_runner;

    if (rn == NULL) {
        if (release && ngx_http_acme_zone
            && (ngx_pid_t) ngx_http_acme_zone->sh->leader == ngx_pid)
        {
            (void) ngx_atomic_cmp_set(&ngx_http_acme_zone->sh->leader,
                                      ngx_pid, 0);
        }

        return;
    }

    if (rn->stopping) {
        return;
    }

    rn->stopping = 1;

    for (i = 0; rn->managers && i < rn->nmanagers; i++) {
        if (rn->managers[i]) {
            acme_manager_free(rn->managers[i]);
        }
    }

    if (rn->loop) {
        acme_loop_free(rn->loop);
        rn->loop = NULL;
    }

    /* before the store it belongs to */
    ngx_http_acme_watch_close(rn);

    for (i = 0; rn->held && i < rn->nmanagers; i++) {
        if (rn->held[i]) {
            st = rn->cache ? rn->cache[i] : rn->stores[i];
            st->ops->unlock(rn->held[i]);
        }
    }

    for (i = 0; rn->stores && i < rn->nmanagers; i++) {
        if (rn->stores[i]) {
            acme_store_close(rn->stores[i]);
        }
    }

    for (i = 0; rn->cache && i < rn->nmanagers; i++) {
        if (rn->cache[i]) {
            acme_store_close(rn->cache[i]);
        }
    }

    while (rn->nconns) {
        ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                      "acme: socket %d left behind by libcurl",
                      (int) rn->conns[0]->fd);
        ngx_http_acme_conn_forget(rn, 0);
    }

    if (rn->timer.timer_set) {
        ngx_del_timer(&rn->timer);
    }

    free(rn->conns);
    ngx_http_acme_snapshot_free(&rn->status);
    ngx_free(rn->stores);
    ngx_free(rn->cache);
    ngx_free(rn->held);
    ngx_free(rn->managers);
    ngx_free(rn);

    ngx_http_acme_runner = NULL;

    if (release && (ngx_pid_t) ngx_http_acme_zone->sh->leader == ngx_pid) {
        (void) ngx_atomic_cmp_set(&ngx_http_acme_zone->sh->leader, ngx_pid,
                                  0);
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "acme: ACME client stopped in this process");
    }
}


/*
 * The master spawns the cache manager when a path has a manager callback.
 * Ours is added after ngx_create_paths() ran (init_module comes later in
 * ngx_init_cycle): root never creates, chowns or chmods a directory for it;
 * the name is only a label.
 */

ngx_int_t
ngx_http_acme_runner_add_path(ngx_cycle_t *cycle,
    ngx_http_acme_main_conf_t *amcf)
{
    ngx_path_t  *path, **p;

    if (amcf->shm_zone == NULL || amcf->certs.nelts == 0) {
        return NGX_OK;
    }

    path = ngx_pcalloc(cycle->pool, sizeof(ngx_path_t));
    if (path == NULL) {
        return NGX_ERROR;
    }

    ngx_str_set(&path->name, "acme");
    path->manager = ngx_http_acme_runner_manager;

    p = ngx_array_push(&cycle->paths);
    if (p == NULL) {
        return NGX_ERROR;
    }

    *p = path;

    return NGX_OK;
}


/*
 * Called in the cache manager only (the cache loader, also a helper
 * process, calls loaders, never managers): the first call starts the
 * tick; the core then runs on its own timers and connections.
 */

static ngx_msec_t
ngx_http_acme_runner_manager(void *data)
{
    if (ngx_process == NGX_PROCESS_HELPER && ngx_http_acme_zone
        && !ngx_http_acme_tick_ev.timer_set && ngx_http_acme_runner == NULL)
    {
        ngx_add_timer(&ngx_http_acme_tick_ev, 1);
    }

    return NGX_HTTP_ACME_MANAGER_IDLE;
}


/*
 * The cache manager leaves with exit(0) on reload and shutdown, without
 * exit_process: stop the core here (the key generation thread joins, the
 * lock is released for the next cache manager). An issuance in flight is
 * resumed by the next runner from the store's journal and order intents.
 */

static void
ngx_http_acme_runner_atexit(void)
{
    if (ngx_process != NGX_PROCESS_HELPER || ngx_http_acme_zone == NULL) {
        return;
    }

    if (ngx_http_acme_tick_ev.timer_set) {
        ngx_del_timer(&ngx_http_acme_tick_ev);
    }

    ngx_http_acme_runner_stop(1);
}


ngx_int_t
ngx_http_acme_runner_init_process(ngx_cycle_t *cycle)
{
    ngx_http_acme_main_conf_t  *amcf;

    amcf = ngx_http_acme_get_main_conf();

    if (amcf->shm_zone == NULL || amcf->certs.nelts == 0) {
        return NGX_OK;
    }

    /* with a master process, workers never run the core */

    if (ngx_process != NGX_PROCESS_SINGLE
        && ngx_process != NGX_PROCESS_HELPER)
    {
        return NGX_OK;
    }

    ngx_http_acme_zone = amcf->shm_zone->data;
    ngx_http_acme_runner = NULL;
    ngx_http_acme_start_retry = 0;

    ngx_memzero(&ngx_http_acme_tick_ev, sizeof(ngx_event_t));
    ngx_http_acme_tick_ev.handler = ngx_http_acme_tick;
    ngx_http_acme_tick_ev.log = cycle->log;
    ngx_http_acme_tick_ev.data = cycle;
    ngx_http_acme_tick_ev.cancelable = 1;

    if (ngx_process == NGX_PROCESS_HELPER) {
        if (atexit(ngx_http_acme_runner_atexit) != 0) {
            ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                          "acme: atexit() failed");
            return NGX_ERROR;
        }

        /* the manager callback arms the tick */
        return NGX_OK;
    }

    ngx_add_timer(&ngx_http_acme_tick_ev, 10);

    return NGX_OK;
}


void
ngx_http_acme_runner_exit_process(ngx_cycle_t *cycle)
{
    if (ngx_http_acme_zone == NULL) {
        return;
    }

    if (ngx_http_acme_tick_ev.timer_set) {
        ngx_del_timer(&ngx_http_acme_tick_ev);
    }

    ngx_http_acme_runner_stop(1);
}
