/*
 * The driver: one background thread per child process, of which exactly one at a time runs the ACME
 * manager. Each thread tries the store's non-blocking cross-process lock "apache_driver" every couple of
 * seconds; the holder runs the core's blocking loop (acme_loop_run) until its process stops. The lock is
 * an flock(2) in the state directory, so a killed process releases it. When its process stops (graceful
 * restart, stop, idle child reaped) the driver lets an issuance in flight finish for a bounded time
 * (driver_drain), then stops; the next driver (a new generation's child) takes the lock and resumes any
 * order left in the store instead of placing a new one.
 *
 * Between the driver and the other processes (shared memory, mod_acme_shm.c): the driver bumps a
 * certificate's generation once its local files changed (the core stored it in the fs store; or, with a
 * shared store, the driver copied it from Redis into the local cache: handshakes read only local files),
 * publishes its status JSON, and takes renew and ARI check requests queued by the acme-status handler of
 * any child. The first driver since the parent started asks every certificate's renewal information again.
 */
#include "mod_acme.h"

#include <ap_mpm.h>
#include <apr_thread_proc.h>
#include <apr_hash.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <unistd.h>

#include <jansson.h>

#include "acme_directory.h"
#include "acme_err.h"
#include "acme_http.h"
#include "acme_loop.h"
#include "acme_manager.h"
#include "acme_store.h"

#define LOCK_RETRY_MS   1000
#define TICK_MS         250
/* When the process stops, an issuance in flight may finish for this long (see driver_drain). */
#define DRAIN_MS        15000
/* Shared store: the generation counter is compared this often, whatever the announcements said (a
 * subscription misses what is published while it is down); a lost subscription is retried this often. */
#define GEN_CHECK_MS    5000
#define WATCH_RETRY_MS  2000

typedef struct {
    apr_pool_t           *pool;
    server_rec           *s;
    apr_thread_t         *thread;
    volatile int          stop;     /* leave now */
    volatile int          draining; /* leave when no issuance runs, or at drain_until */
    apr_time_t            drain_until;
    apr_thread_mutex_t   *mx;       /* guards loop for acme_loop_wakeup from other threads */
    acme_loop_t          *loop;
} driver_t;

static driver_t *drv;

/* ---- logging ---- */

void
mod_acme_core_log(void *data, int level, const char *msg)
{
    server_rec  *s = data;
    int          lvl;

    switch (level) {
    case ACME_LOG_ERR:    lvl = APLOG_ERR; break;
    case ACME_LOG_WARN:   lvl = APLOG_WARNING; break;
    case ACME_LOG_NOTICE: lvl = APLOG_NOTICE; break;
    case ACME_LOG_INFO:   lvl = APLOG_INFO; break;
    default:              lvl = APLOG_DEBUG; break;
    }
    ap_log_error(APLOG_MARK, lvl, 0, s, ACMELOGNO(0090) "%s", msg);
}

int
mod_acme_core_log_level(server_rec *s)
{
    int l = APLOG_MODULE_INDEX >= 0 ? ap_get_server_module_loglevel(s, APLOG_MODULE_INDEX) : s->log.level;

    if (l >= APLOG_DEBUG) {
        return ACME_LOG_DEBUG;
    }
    if (l >= APLOG_INFO) {
        return ACME_LOG_INFO;
    }
    if (l >= APLOG_NOTICE) {
        return ACME_LOG_NOTICE;
    }
    if (l >= APLOG_WARNING) {
        return ACME_LOG_WARN;
    }
    return ACME_LOG_ERR;
}

/* ---- the manager's configuration from httpd's ---- */

static void
cert_updated(void *data, const char *name)
{
    server_rec  *s = data;
    apr_pool_t  *tp;
    const char  *msg = NULL;
    int          idx;

    if (!mod_acme_cert_index(name, &idx)) {
        mod_acme_od_cert_updated(name);
        return;
    }
    if (mod_acme_g.storage != NULL) {
        /* the children read the local cache, not Redis: it first */
        mod_acme_cert_t *c = APR_ARRAY_IDX(mod_acme_g.certs, idx, mod_acme_cert_t *);

        apr_pool_create(&tp, NULL);
        if (mod_acme_cache_update(tp, mod_acme_g.store, c, NULL, &msg) != 0) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, ACMELOGNO(0085)
                         "%s: cannot refresh the local cache: %s", name, msg ? msg : "nothing stored");
            apr_pool_destroy(tp);
            return;     /* the next look at the store (follow_step) tries again */
        }
        apr_pool_destroy(tp);
    }
    mod_acme_shm_bump(mod_acme_g.shm, idx);
    ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, ACMELOGNO(0070)
                 "%s: new certificate stored; every process serves it from its next handshake", name);
}

static const char *
issuer_key(apr_pool_t *p, mod_acme_srv_conf_t *sc, const mod_acme_ca_t *ca)
{
    const char *contacts = sc->contacts ? apr_array_pstrcat(p, sc->contacts, ',') : "";
    const char *chal = sc->challenges ? apr_array_pstrcat(p, sc->challenges, ',') : "";
    const char *dns = "";

    if (mod_acme_dns01(sc)) {
        /* the key's file and name, never its secret */
        dns = apr_psprintf(p, "%d,%s,%s,%s,%s,%ld,%s,%ld,%s,%s", (int) sc->dns.method,
                           sc->dns_tsig_file ? sc->dns_tsig_file : "",
                           sc->dns.tsig.name ? sc->dns.tsig.name : "", sc->dns.server ? sc->dns.server : "",
                           sc->dns.resolver ? sc->dns.resolver : "", sc->dns.propagation_timeout,
                           sc->dns.hook ? sc->dns.hook : "", sc->dns.hook_timeout,
                           sc->dns_acmedns_file ? sc->dns_acmedns_file : "",
                           sc->dns.acmedns_url ? sc->dns.acmedns_url : "");
    }
    return apr_pstrcat(p, ca->url, "|", contacts, "|", sc->accept_tos == 1 ? "1" : "0", "|",
                       sc->trusted_cert ? sc->trusted_cert : "", "|", chal, "|",
                       sc->profile ? sc->profile : "", "|", sc->eab_kid ? sc->eab_kid : "", "|",
                       sc->preferred_chain ? sc->preferred_chain : "", "|", dns, NULL);
}

static int
add_issuer(apr_pool_t *p, acme_manager_t *m, mod_acme_srv_conf_t *sc, const mod_acme_ca_t *ca,
           server_rec *s)
{
    acme_issuer_conf_t  ic;
    acme_err_t          err;
    int                 idx;

    memset(&ic, 0, sizeof(ic));
    ic.name = ca->name;
    ic.client.directory_url = ca->url;
    ic.client.ca_file = sc->trusted_cert;
    ic.client.verify = 1;
    if (sc->contacts) {
        ic.client.contact = (const char *const *) sc->contacts->elts;
        ic.client.ncontact = (size_t) sc->contacts->nelts;
    }
    ic.client.agree_tos = sc->accept_tos == 1;
    if (sc->eab_kid != NULL && *sc->eab_kid != '\0') {
        ic.client.eab_kid = sc->eab_kid;
        ic.client.eab_hmac_key = sc->eab_hmac;
    }
    ic.client.account_keyspec = ACME_KEYSPEC_DEFAULT;
    if (sc->challenges) {
        ic.challenge_types = (const char *const *) sc->challenges->elts;
        ic.nchallenge_types = (size_t) sc->challenges->nelts;
    }
    if (mod_acme_dns01(sc)) {
        /* sc lives in pconf, as long as this generation's manager; DNS tasks copy it */
        ic.dns = &sc->dns;
    }
    ic.profile = sc->profile;
    ic.preferred_chain = sc->preferred_chain;
    (void) p;
    idx = acme_manager_add_issuer(m, &ic, &err);
    if (idx < 0) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, s, ACMELOGNO(0071)
                     "ACMECertificateAuthority %s: %s", ca->name, err.msg);
    }
    return idx;
}

static acme_manager_t *
manager_build(apr_pool_t *p, acme_loop_t *loop, acme_store_t *st, server_rec *base,
              apr_array_header_t **od_issuers)
{
    acme_manager_host_t  host;
    acme_manager_t      *m;
    acme_err_t           err;
    apr_hash_t          *issuers = apr_hash_make(p);
    mod_acme_ca_t        defca;
    int                  i, j;
    char                *defurl;

    memset(&host, 0, sizeof(host));
    host.data = base;
    host.cert_updated = cert_updated;
    /* the core publishes challenges into the store itself; nothing more to do per challenge */
    m = acme_manager_new(loop, st, &host, &err);
    if (m == NULL) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, base, ACMELOGNO(0072) "cannot start the manager: %s", err.msg);
        return NULL;
    }
    {
        mod_acme_srv_conf_t  *bc = ap_get_module_config(base->module_config, &acme_module);
        acme_notify_conf_t    nc;

        if (bc->notify_cmd != NULL) {
            memset(&nc, 0, sizeof(nc));
            nc.program = bc->notify_cmd;
            nc.timeout = bc->notify_timeout;
            nc.expiring = bc->notify_expiring;
            nc.store_dir = mod_acme_g.storage ? NULL : mod_acme_g.state_dir;
            if (acme_manager_set_notify(m, &nc, &err) != 0) {
                /* the rest still works: certificates matter more than their notifications */
                ap_log_error(APLOG_MARK, APLOG_ERR, 0, base, ACMELOGNO(0114) "ACMENotifyCmd: %s", err.msg);
            }
        }
    }
    defurl = acme_ca_resolve(MOD_ACME_DEFAULT_CA, &err);
    defca.name = MOD_ACME_DEFAULT_CA;
    defca.url = defurl ? apr_pstrdup(p, defurl) : "";
    free(defurl);

    for (i = 0; i < mod_acme_g.certs->nelts; i++) {
        mod_acme_cert_t      *c = APR_ARRAY_IDX(mod_acme_g.certs, i, mod_acme_cert_t *);
        mod_acme_srv_conf_t  *sc = c->sc;
        apr_array_header_t   *idx = apr_array_make(p, 2, sizeof(int));
        int                   ncas = sc->cas ? sc->cas->nelts : 1;
        const char           *name;

        for (j = 0; j < ncas; j++) {
            const mod_acme_ca_t  *ca = sc->cas ? &APR_ARRAY_IDX(sc->cas, j, mod_acme_ca_t) : &defca;
            const char           *key = issuer_key(p, sc, ca);
            int                  *known = apr_hash_get(issuers, key, APR_HASH_KEY_STRING);

            if (known == NULL) {
                known = apr_palloc(p, sizeof(int));
                *known = add_issuer(p, m, sc, ca, c->s);
                apr_hash_set(issuers, key, APR_HASH_KEY_STRING, known);
            }
            if (*known >= 0) {
                APR_ARRAY_PUSH(idx, int) = *known;
            }
        }
        if (idx->nelts == 0) {
            continue;
        }
        name = acme_manager_add_cert(m, c->ids, c->nids, &c->ks, (const int *) idx->elts,
                                     (size_t) idx->nelts, &err);
        if (name == NULL) {
            ap_log_error(APLOG_MARK, APLOG_ERR, 0, c->s, ACMELOGNO(0073) "%s: %s", c->name, err.msg);
        } else if (strcmp(name, c->name) != 0) {
            ap_log_error(APLOG_MARK, APLOG_ERR, 0, c->s, ACMELOGNO(0074)
                         "%s: the core names this certificate %s", c->name, name);
        }
    }
    /* on-demand vhosts: their issuers, for the names allowed at run time */
    *od_issuers = apr_array_make(p, 2, sizeof(apr_array_header_t *));
    for (i = 0; mod_acme_g.od_servers != NULL && i < mod_acme_g.od_servers->nelts; i++) {
        server_rec           *os = APR_ARRAY_IDX(mod_acme_g.od_servers, i, server_rec *);
        mod_acme_srv_conf_t  *sc = mod_acme_srv_conf(os);
        apr_array_header_t   *idx = apr_array_make(p, 2, sizeof(int));
        int                   ncas = sc->cas ? sc->cas->nelts : 1;

        for (j = 0; j < ncas; j++) {
            const mod_acme_ca_t  *ca = sc->cas ? &APR_ARRAY_IDX(sc->cas, j, mod_acme_ca_t) : &defca;
            const char           *key = issuer_key(p, sc, ca);
            int                  *known = apr_hash_get(issuers, key, APR_HASH_KEY_STRING);

            if (known == NULL) {
                known = apr_palloc(p, sizeof(int));
                *known = add_issuer(p, m, sc, ca, os);
                apr_hash_set(issuers, key, APR_HASH_KEY_STRING, known);
            }
            if (*known >= 0) {
                APR_ARRAY_PUSH(idx, int) = *known;
            }
        }
        APR_ARRAY_PUSH(*od_issuers, apr_array_header_t *) = idx;
    }
    if (acme_manager_start(m, &err) != 0) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, base, ACMELOGNO(0075) "cannot start the manager: %s", err.msg);
        acme_manager_free(m);
        return NULL;
    }
    return m;
}

/* ---- ARI checks: every certificate's when the parent started, one's an admin asked for ---- */

static void
ari_at_start(acme_manager_t *m, server_rec *s)
{
    int n;

    /* the first driver since the parent started (a graceful restart's drivers do not) */
    if (!mod_acme_shm_take_ari_start(mod_acme_g.shm)) {
        return;
    }
    n = acme_manager_ari_check(m, NULL);
    if (n > 0) {
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, ACMELOGNO(0120)
                     "Apache started: asking the CA's renewal information of %d certificate%s again", n,
                     n == 1 ? "" : "s");
    }
}

static void
ari_requests(acme_manager_t *m, server_rec *s)
{
    int i;

    for (i = 0; i < mod_acme_g.certs->nelts; i++) {
        mod_acme_cert_t *c = APR_ARRAY_IDX(mod_acme_g.certs, i, mod_acme_cert_t *);

        if (mod_acme_shm_ari_take(mod_acme_g.shm, i)) {
            ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, ACMELOGNO(0121)
                         "%s: ARI check requested through acme-status%s", c->name,
                         acme_manager_ari_check(m, c->name) > 0 ? "" : "; nothing stored to ask about yet");
        }
    }
}

/* ---- following a shared store (Redis): other nodes' certificates, outages ---- */

typedef struct {
    acme_store_t        *st;
    server_rec          *s;
    acme_store_watch_t  *watch;
    apr_time_t           next_watch;
    apr_time_t           next_gen;
    unsigned long long   gen;
    int                  have_gen;
    int                  down;          /* the outage was logged */
} follow_t;

/* The local cache follows the store; the processes reload what changed in it (shm generations). */
static void
follow_changed(follow_t *f)
{
    apr_pool_t  *tp;
    int          i;

    apr_pool_create(&tp, NULL);
    for (i = 0; i < mod_acme_g.certs->nelts; i++) {
        mod_acme_cert_t  *c = APR_ARRAY_IDX(mod_acme_g.certs, i, mod_acme_cert_t *);
        const char       *msg = NULL;
        int               changed = 0;

        if (mod_acme_cache_update(tp, f->st, c, &changed, &msg) < 0) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, f->s, ACMELOGNO(0085)
                         "%s: cannot refresh the local cache: %s", c->name, msg);
        }
        if (changed) {
            mod_acme_shm_bump(mod_acme_g.shm, i);
        }
        apr_pool_clear(tp);
    }
    apr_pool_destroy(tp);
}

/*
 * One step, every loop turn. Returns 1 when Redis came back after an outage (the caller resyncs its
 * manager), 0 otherwise.
 */
static int
follow_step(follow_t *f)
{
    apr_time_t     now = apr_time_now();
    acme_err_t     err;
    struct pollfd  pfd;
    char          *name;
    int            rc, changed = 0, check = 0, back = 0;
    unsigned long long gen;

    if (f->watch == NULL && now >= f->next_watch) {
        f->watch = acme_store_watch_open(f->st, &err);
        if (f->watch == NULL) {
            f->next_watch = now + apr_time_from_msec(WATCH_RETRY_MS);
        }
        check = 1;      /* anything published while we were not listening */
    }
    if (f->watch != NULL) {
        pfd.fd = acme_store_watch_fd(f->watch);
        pfd.events = POLLIN;
        pfd.revents = 0;
        if (poll(&pfd, 1, 0) > 0) {
            while ((rc = acme_store_watch_next(f->watch, &name, &err)) == 1) {
                ap_log_error(APLOG_MARK, APLOG_DEBUG, 0, f->s, ACMELOGNO(0086)
                             "%s: changed in the shared store", name);
                mod_acme_od_announced(name);
                free(name);
                changed = 1;
            }
            if (rc < 0) {
                acme_store_watch_close(f->watch);
                f->watch = NULL;
                f->next_watch = now + apr_time_from_msec(WATCH_RETRY_MS);
                check = 1;
            }
        }
    }
    if (check || changed || now >= f->next_gen) {
        f->next_gen = now + apr_time_from_msec(GEN_CHECK_MS);
        if (acme_store_generation(f->st, &gen, &err) != 0) {
            if (!f->down) {
                f->down = 1;
                ap_log_error(APLOG_MARK, APLOG_ERR, 0, f->s, ACMELOGNO(0087)
                             "ACMEStorage %s is out of reach (%s): serving the certificates this host has, "
                             "renewals wait for it", mod_acme_g.storage_shown, err.msg);
            }
            return 0;
        }
        if (f->down) {
            f->down = 0;
            back = 1;
            changed = 1;
            ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, f->s, ACMELOGNO(0088)
                         "ACMEStorage %s answers again: resynchronising", mod_acme_g.storage_shown);
        }
        if (!f->have_gen || gen != f->gen) {
            changed = 1;
        }
        f->gen = gen;
        f->have_gen = 1;
    }
    if (changed) {
        follow_changed(f);
    }
    return back;
}

/* ---- the thread ---- */

static int
mpm_stopping(void)
{
    int state = AP_MPMQ_RUNNING;

    if (ap_mpm_query(AP_MPMQ_MPM_STATE, &state) == APR_SUCCESS && state == AP_MPMQ_STOPPING) {
        return 1;
    }
    return 0;
}

/* Returns early when the process stops: a child waiting for the driver lock must not hold up its exit. */
static void
nap(driver_t *d, long ms)
{
    while (ms > 0 && !d->stop && !d->draining) {
        apr_sleep(apr_time_from_msec(ms > 100 ? 100 : ms));
        ms -= 100;
    }
}

/* Publishes the status; returns 1 when an issuance is in flight. */
static int
publish_status(acme_manager_t *m)
{
    json_t  *st = acme_manager_status(m);
    char    *text;
    int      busy = acme_manager_busy(m), i;

    if (st == NULL) {
        return busy;
    }
    for (i = 0; i < mod_acme_g.certs->nelts; i++) {
        time_t until = acme_manager_ca_wait(m, APR_ARRAY_IDX(mod_acme_g.certs, i, mod_acme_cert_t *)->name);
        mod_acme_shm_set_ca_wait(mod_acme_g.shm, i, until > 0 ? (apr_uint32_t) until : 0);
    }
    {
        json_t *od = mod_acme_od_status();
        if (od != NULL) {
            json_object_set_new(st, "on_demand", od);
        }
    }
    json_object_set_new(st, "driver_pid", json_integer((json_int_t) getpid()));
    json_object_set_new(st, "generation", json_integer((json_int_t) mod_acme_shm_generation(mod_acme_g.shm)));
    text = json_dumps(st, JSON_COMPACT);
    json_decref(st);
    if (text != NULL) {
        mod_acme_shm_status_put(mod_acme_g.shm, text, strlen(text));
        free(text);
    }
    return busy;
}

/*
 * The process is stopping (graceful restart, idle child reaped, stop). A cancelled issuance keeps its
 * stored order and published challenges for the next driver, but a request already on the wire (a new
 * order whose answer is never read) would be lost. So the running issuance may finish, for at most
 * DRAIN_MS: the challenges stay answerable by every other process from the store meanwhile, and the next
 * driver takes the lock as soon as this one lets go.
 */
static void
driver_drain(driver_t *d)
{
    if (d != NULL && !d->draining) {
        d->drain_until = apr_time_now() + apr_time_from_msec(DRAIN_MS);
        d->draining = 1;
    }
}

static void *APR_THREAD_FUNC
driver_main(apr_thread_t *t, void *arg)
{
    driver_t        *d = arg;
    server_rec      *s = d->s;
    acme_host_t      host;
    acme_loop_t     *loop;
    acme_store_t    *st, *lst = NULL;
    acme_lock_t     *lk = NULL;
    follow_t         fl;
    acme_manager_t  *m = NULL;
    acme_err_t       err;
    apr_pool_t      *p = NULL;
    int              rc, logged = 0, resync = 0;
    char             name[MOD_ACME_NAME_MAX];
    apr_array_header_t *od_issuers = NULL;
    void            *od = NULL;

    memset(&host, 0, sizeof(host));
    host.data = s;
    host.log = mod_acme_core_log;
    acme_http_set_server("Apache/" AP_SERVER_BASEREVISION);
    loop = acme_loop_new(&host, mod_acme_core_log_level(s), &err);
    if (loop == NULL) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, s, ACMELOGNO(0076) "cannot create the ACME loop: %s", err.msg);
        return NULL;
    }
    apr_thread_mutex_lock(d->mx);
    d->loop = loop;
    apr_thread_mutex_unlock(d->mx);

    memset(&fl, 0, sizeof(fl));
    /* the driver lock is per host (the state directory); one issuance per certificate across the cluster
     * is the shared store's certificate lock */
    st = lst = acme_store_fs_open(mod_acme_g.state_dir, 1, &err);
    if (lst == NULL) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, s, ACMELOGNO(0077) "ACMEStateDir %s: %s",
                     mod_acme_g.state_dir, err.msg);
        goto done;
    }
    if (mod_acme_g.storage != NULL) {
        /* this process's handle, inherited unconnected from the parent (opened there as root, which can
         * read ACMEStorageKey): the first use connects, so no connection is shared between processes */
        st = mod_acme_g.store;
        fl.st = st;
        fl.s = s;
    }
    while (!d->stop && !d->draining && !mpm_stopping()) {
        rc = lst->ops->lock(lst, MOD_ACME_DRIVER_LOCK, &lk, &err);
        if (rc == 1) {
            break;
        }
        if (rc < 0 && !logged) {
            logged = 1;
            ap_log_error(APLOG_MARK, APLOG_ERR, 0, s, ACMELOGNO(0078) "driver lock: %s", err.msg);
        }
        nap(d, LOCK_RETRY_MS);
    }
    if (lk == NULL) {
        goto done;
    }
    ap_log_error(APLOG_MARK, APLOG_INFO, 0, s, ACMELOGNO(0079)
                 "this process (pid %ld) runs the ACME driver for %d certificate(s)", (long) getpid(),
                 mod_acme_g.certs->nelts);
    mod_acme_shm_set_driver(mod_acme_g.shm, getpid());
    rc = mod_acme_shm_recover(mod_acme_g.shm);
    if (rc > 0) {
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, ACMELOGNO(0021)
                     "repaired %d shared memory item(s) a process that died mid-write left behind", rc);
    }

    if (fl.st != NULL) {
        follow_step(&fl);   /* the cache and every process catch up first; an outage is logged */
    }
    apr_pool_create(&p, NULL);      /* not a child of pchild: this thread is not the pool's owner */
    m = manager_build(p, loop, st, s, &od_issuers);
    if (m == NULL) {
        goto done;
    }
    od = mod_acme_od_driver_new(p, loop, m, st, s, od_issuers);
    /* a certificate another generation stored meanwhile: every process looks again, at local files, each
     * certificate at its next handshake */
    mod_acme_shm_bump(mod_acme_g.shm, -1);
    ari_at_start(m, s);
    while (!d->stop) {
        int busy;

        if (fl.st != NULL && follow_step(&fl)) {
            resync = 1;
        }
        if (resync && !acme_manager_busy(m)) {
            /* back from an outage: the manager re-reads the store (what it read meanwhile failed) */
            acme_manager_t *fresh;
            resync = 0;
            mod_acme_od_driver_free(od);
            od = NULL;
            acme_manager_free(m);
            fresh = manager_build(p, loop, st, s, &od_issuers);
            if (fresh == NULL) {
                m = NULL;
                goto done;
            }
            m = fresh;
            od = mod_acme_od_driver_new(p, loop, m, st, s, od_issuers);
        }
        while (!d->draining && mod_acme_shm_renew_pop(mod_acme_g.shm, name, sizeof(name))) {
            time_t until = 0;
            int    rc = acme_manager_renew(m, name, &until);

            if (rc == 0) {
                ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, ACMELOGNO(0080)
                             "%s: renewal requested through acme-status", name);
            } else if (rc == 1) {
                char tb[32];
                ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, ACMELOGNO(0110)
                             "%s: renewal through acme-status not forced: the CA asked to wait until %s",
                             name, acme_time_format(until, tb, sizeof(tb)));
            }
        }
        if (!d->draining) {
            ari_requests(m, s);
            mod_acme_od_driver_step(od);
        }
        busy = publish_status(m);
        if (d->draining) {
            if (!busy) {
                break;
            }
            if (apr_time_now() > d->drain_until) {
                ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, ACMELOGNO(0084)
                             "the process stops with an issuance still running; the next driver resumes it");
                break;
            }
        }
        acme_loop_run(loop, &d->stop, TICK_MS);
        if (mpm_stopping()) {
            driver_drain(d);
        }
    }
    ap_log_error(APLOG_MARK, APLOG_INFO, 0, s, ACMELOGNO(0081)
                 "the ACME driver stops (pid %ld)", (long) getpid());

done:
    mod_acme_od_driver_free(od);
    if (m != NULL) {
        acme_manager_free(m);
    }
    if (fl.watch != NULL) {
        acme_store_watch_close(fl.watch);
    }
    if (lk != NULL) {
        mod_acme_shm_set_driver(mod_acme_g.shm, 0);
        lst->ops->unlock(lk);
    }
    if (lst != NULL) {
        acme_store_close(lst);
    }
    if (p != NULL) {
        apr_pool_destroy(p);
    }
    apr_thread_mutex_lock(d->mx);
    d->loop = NULL;
    apr_thread_mutex_unlock(d->mx);
    acme_loop_free(loop);
    (void) t;
    return NULL;
}

static apr_status_t
driver_cleanup(void *data)
{
    driver_t      *d = data;
    apr_status_t   trv;

    driver_drain(d);
    apr_thread_mutex_lock(d->mx);
    if (d->loop != NULL) {
        acme_loop_wakeup(d->loop);
    }
    apr_thread_mutex_unlock(d->mx);
    if (d->thread != NULL) {
        apr_thread_join(&trv, d->thread);
        d->thread = NULL;
    }
    drv = NULL;
    return APR_SUCCESS;
}

void
mod_acme_drive_child_init(apr_pool_t *pchild, server_rec *s)
{
    driver_t      *d;
    apr_status_t   rv;
    sigset_t       all, old;

    if (!mod_acme_g.active) {
        return;
    }
    d = apr_pcalloc(pchild, sizeof(*d));
    d->pool = pchild;
    d->s = s;
    rv = apr_thread_mutex_create(&d->mx, APR_THREAD_MUTEX_DEFAULT, pchild);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_ERR, rv, s, ACMELOGNO(0082) "cannot create the driver's mutex");
        return;
    }
    /* the MPM's signals belong to its own threads: the driver thread blocks them all */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    rv = apr_thread_create(&d->thread, NULL, driver_main, d, pchild);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_ERR, rv, s, ACMELOGNO(0083) "cannot start the driver thread");
        return;
    }
    drv = d;
    /* a pre-cleanup: the thread must be gone before pchild's subpools (its own among them) are */
    apr_pool_pre_cleanup_register(pchild, d, driver_cleanup);
}

void
mod_acme_drive_child_stopping(apr_pool_t *pchild, int graceful)
{
    (void) pchild;
    (void) graceful;
    driver_drain(drv);
    if (drv != NULL) {
        apr_thread_mutex_lock(drv->mx);
        if (drv->loop != NULL) {
            acme_loop_wakeup(drv->loop);
        }
        apr_thread_mutex_unlock(drv->mx);
    }
}
