
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
 * This file: the path and its manager callback, the lock and the takeover,
 * starting and stopping the core, the tick (the status snapshot is rebuilt
 * by ngx_http_acme_status_snapshot.c), renew requests and ARI checks (every
 * certificate's when nginx starts, not on reloads; an admin's request). The
 * acme_host_t adapter is in ngx_http_acme_host.c, challenges go into the
 * zone in ngx_http_acme_publish.c, the shared store (acme_storage) is
 * followed in ngx_http_acme_follow.c.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_acme_runner.h"

#include "acme_http.h"


#define NGX_HTTP_ACME_TICK_LEADER    250
#define NGX_HTTP_ACME_TICK_FOLLOWER  1000
#define NGX_HTTP_ACME_STALE          20
#define NGX_HTTP_ACME_RETRY_START    30
#define NGX_HTTP_ACME_MANAGER_IDLE   (60 * 60 * 1000)
#define NGX_HTTP_ACME_NICE           10


static void ngx_http_acme_tick(ngx_event_t *ev);
static ngx_int_t ngx_http_acme_runner_start(ngx_cycle_t *cycle);
static void ngx_http_acme_runner_stop(ngx_uint_t release);
static void ngx_http_acme_runner_hold(ngx_http_acme_runner_t *rn);
static ngx_msec_t ngx_http_acme_runner_manager(void *data);
static void ngx_http_acme_runner_atexit(void);


static ngx_event_t              ngx_http_acme_tick_ev;
static ngx_http_acme_runner_t  *ngx_http_acme_runner;
static ngx_http_acme_zone_t    *ngx_http_acme_zone;
static time_t                   ngx_http_acme_start_retry;


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


static void
ngx_http_acme_ari_requests(ngx_http_acme_runner_t *rn)
{
    int         rc;
    u_char      req[NGX_HTTP_ACME_RENEW_MAX][NGX_HTTP_ACME_RENEW_LEN];
    ngx_uint_t  n, i, m, all;

    n = ngx_http_acme_zone_ari_take(rn->zone, req);

    for (i = 0; i < n; i++) {
        all = (ngx_strcmp(req[i], "*") == 0);
        rc = -1;

        for (m = 0; m < rn->nmanagers; m++) {
            rc = acme_manager_ari_check(rn->managers[m],
                                        all ? NULL : (char *) req[i]);
            if (rc >= 0 && !all) {
                break;
            }
        }

        if (rc == -1) {
            ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                          "acme: ARI check request for unknown certificate "
                          "\"%s\"", req[i]);
            continue;
        }

        ngx_log_error(NGX_LOG_NOTICE, rn->log, 0,
                      "acme: ARI check of %s requested",
                      all ? "every certificate" : (char *) req[i]);

        ngx_http_acme_snapshot_touch(&rn->status);
    }
}


/*
 * The zone outlives reloads, not a restart: the first runner since nginx
 * started asks the CA's renewal information of every certificate again, so
 * that a window the CA opened while its Retry-After kept us from asking
 * (6 hours at Let's Encrypt) is seen when the admin restarts nginx.
 */

static void
ngx_http_acme_ari_at_start(ngx_http_acme_runner_t *rn)
{
    int         n, total;
    ngx_uint_t  m;

    if (!ngx_atomic_cmp_set(&rn->zone->sh->started, 0, 1)) {
        return;
    }

    total = 0;

    for (m = 0; m < rn->nmanagers; m++) {
        n = acme_manager_ari_check(rn->managers[m], NULL);
        total += n > 0 ? n : 0;
    }

    if (total > 0) {
        ngx_log_error(NGX_LOG_NOTICE, rn->log, 0,
                      "acme: nginx started: asking the CA's renewal "
                      "information of %d certificate%s again", total,
                      total == 1 ? "" : "s");
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

        /* acme_storage's host: its first answer before the core starts */

        if (ngx_http_acme_storage_resolve(ngx_http_acme_get_main_conf())
               == NGX_OK
            && ngx_http_acme_runner == NULL
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
            ngx_http_acme_ari_requests(ngx_http_acme_runner);
            ngx_http_acme_od_tick(ngx_http_acme_runner);
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

        if (ngx_http_acme_storage_resolve(ngx_http_acme_get_main_conf())
               == NGX_OK
            && ngx_http_acme_runner_start((ngx_cycle_t *) ngx_cycle)
               != NGX_OK)
        {
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

/* the manager's index of each issuer of cert, added on first use */

static ngx_int_t
ngx_http_acme_runner_issuers(ngx_http_acme_runner_t *rn, ngx_uint_t g,
    ngx_http_acme_cert_t *cert, int *map, int *idx)
{
    char                    **contacts;
    ngx_uint_t                j;
    acme_err_t                err;
    acme_issuer_conf_t        ic;
    ngx_http_acme_issuer_t   *is;

    for (j = 0; j < cert->nissuers; j++) {

        if (map[cert->issuers[j]] == -1) {
            is = &((ngx_http_acme_issuer_t *) rn->amcf->issuers.elts)
                                                         [cert->issuers[j]];

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

            if (is->nchallenges) {
                ic.challenge_types = (const char *const *) is->challenges;
                ic.nchallenge_types = is->nchallenges;
            }

            if (is->dns.method != ACME_DNS_NONE || is->dns.resolver != NULL) {
                ic.dns = &is->dns;
            }

            ic.profile = is->profile;
            ic.profile_required = is->profile_required ? 1 : 0;
            ic.preferred_chain = is->preferred_chain;
            ic.csr_no_cn = is->common_name_in_csr ? 0 : 1;

            map[cert->issuers[j]] = acme_manager_add_issuer(rn->managers[g],
                                                            &ic, &err);

            if (map[cert->issuers[j]] < 0) {
                ngx_log_error(NGX_LOG_ERR, rn->log, 0, "acme: %s", err.msg);
                return NGX_ERROR;
            }
        }

        idx[j] = map[cert->issuers[j]];
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_acme_runner_start(ngx_cycle_t *cycle)
{
    int                          *idx, *map;
    char                        **paths;
    ngx_uint_t                    i, g;
    acme_err_t                    err;
    acme_host_t                   host;
    const char                   *name;
    acme_manager_host_t           mhost;
    acme_notify_conf_t            nc;
    ngx_http_acme_cert_t        **certs, *cert;
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

    if (amcf->resolver) {
        host.resolve = ngx_http_acme_host_resolve;
        host.resolve_cancel = ngx_http_acme_host_resolve_cancel;
    }

    acme_http_set_server("nginx/" NGINX_VERSION);
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

    rn->od_idx = ngx_calloc((amcf->od_certs.nelts + 1) * sizeof(int *),
                            cycle->log);
    if (rn->od_idx == NULL) {
        goto failed;
    }

    for (i = 0; i < amcf->od_certs.nelts; i++) {
        rn->od_idx[i] = ngx_calloc((amcf->issuers.nelts + 1) * sizeof(int),
                                   cycle->log);
        if (rn->od_idx[i] == NULL) {
            goto failed;
        }
    }

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

        if (amcf->notify) {
            ngx_memzero(&nc, sizeof(acme_notify_conf_t));
            nc.program = amcf->notify;
            nc.timeout = (long) amcf->notify_timeout;
            nc.expiring = (long) amcf->notify_expiring;
            nc.store_dir = amcf->storage ? NULL : paths[g];

            if (acme_manager_set_notify(rn->managers[g], &nc, &err) != 0) {
                ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                              "acme: acme_notify: %s", err.msg);
                goto failed;
            }
        }

        for (i = 0; i < amcf->issuers.nelts; i++) {
            map[i] = -1;
        }

        for (i = 0; i < amcf->certs.nelts; i++) {
            cert = certs[i];

            if (cert->store != g) {
                continue;
            }

            if (ngx_http_acme_runner_issuers(rn, g, cert, map, idx)
                != NGX_OK)
            {
                goto failed;
            }

            name = acme_manager_add_cert(rn->managers[g], cert->ids,
                                         cert->nids, &cert->keyspec, idx,
                                         cert->nissuers, &err);
            if (name == NULL
                || (cert->profile != NULL
                    && acme_manager_set_cert_profile(rn->managers[g], name,
                                                     cert->profile, &err)
                       != 0))
            {
                ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                              "acme: certificate \"%s\": %s", cert->name,
                              err.msg);
                goto failed;
            }
        }

        certs = amcf->od_certs.elts;

        for (i = 0; i < amcf->od_certs.nelts; i++) {
            cert = certs[i];

            if (cert->store != g) {
                continue;
            }

            if (ngx_http_acme_runner_issuers(rn, g, cert, map,
                                             rn->od_idx[i])
                != NGX_OK)
            {
                goto failed;
            }
        }

        certs = amcf->certs.elts;

        if (g == 0 && rn->cache) {
            /* before the first order: our own announcements echo back */
            ngx_http_acme_watch_open(rn);
        }

        /* before the first order: what nginx-acme left needs none */
        if (ngx_http_acme_import(rn, g) != NGX_OK) {
            goto failed;
        }

        if (acme_manager_start(rn->managers[g], &err) != 0) {
            ngx_log_error(NGX_LOG_ERR, cycle->log, 0, "acme: %s", err.msg);
            goto failed;
        }
    }

    ngx_free(idx);
    ngx_free(map);

    if (amcf->od_certs.nelts && ngx_http_acme_od_start(rn) != NGX_OK) {
        ngx_http_acme_runner_stop(0);
        return NGX_ERROR;
    }

    ngx_http_acme_runner_hold(rn);

    ngx_http_acme_ari_at_start(rn);

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

    /* its asks run on the loop, its names are the managers' */
    ngx_http_acme_od_stop(rn);

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

    for (i = 0; rn->od_idx && i < rn->amcf->od_certs.nelts; i++) {
        ngx_free(rn->od_idx[i]);
    }

    ngx_free(rn->od_idx);
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

    if (amcf->shm_zone == NULL
        || (amcf->certs.nelts == 0 && amcf->od_certs.nelts == 0))
    {
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
    int                         prio;
    ngx_http_acme_main_conf_t  *amcf;

    amcf = ngx_http_acme_get_main_conf();

    if (amcf->shm_zone == NULL
        || (amcf->certs.nelts == 0 && amcf->od_certs.nelts == 0))
    {
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

        /*
         * ACME work is background work: on a CPU it shares with workers
         * (key generation, signing, TLS to the CA, 50 issuances at once)
         * the traffic-serving workers go first
         */

        errno = 0;
        prio = getpriority(PRIO_PROCESS, 0);

        if (errno == 0
            && setpriority(PRIO_PROCESS, 0,
                           ngx_min(prio + NGX_HTTP_ACME_NICE, 19)) == -1)
        {
            ngx_log_error(NGX_LOG_WARN, cycle->log, ngx_errno,
                          "acme: setpriority() failed, the cache manager "
                          "keeps the workers' priority");
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

