/*
 * On-demand TLS: a certificate for a new name of a vhost with "ACMEOnDemand on" at its first handshake.
 *
 * The handshake thread (mod_ssl's certificate callback, cert_cb) matches the SNI against the vhost's
 * ServerName/ServerAlias itself, then finds the name in a table in shared memory (one per configuration
 * generation): a new name gets a "queued" slot, created under the table's lock by the first connection
 * only, so concurrent first handshakes wait on one slot and one order. Waiting is a 50 ms nap in the
 * handshake thread, at most ACMEOnDemandLimits wait=, and at most waiting= threads at once across the
 * children (a shared counter), so on-demand cannot take every worker thread.
 *
 * The driver (mod_acme_drive.c) decides each queued name on its own loop with the core's policy
 * (acme_ondemand: a DNS name, max, rate, the ask endpoint; never asked from a handshake thread), adds an
 * allowed name to the manager (which orders it like any certificate), and marks the slot ready when it is
 * stored; a refusal is kept in the slot for refuse_time (the negative cache). The names are listed in the
 * store ("ondemand/names.json"), so a restart adds them back and serves them with no order; each with its
 * vhost's first ACMECA and key type, so a name several vhosts allow goes back to the one that had it.
 */
#include "mod_acme.h"
#include "acme_ondemand_cluster.h"

#include <apr_shm.h>
#include <apr_atomic.h>
#include <apr_hash.h>
#include <apr_lib.h>

#include <openssl/err.h>

#include <errno.h>
#include <signal.h>
#include <sched.h>
#include <time.h>

#include <jansson.h>

#include "acme_err.h"
#include "acme_loop.h"
#include "acme_manager.h"
#include "acme_ondemand.h"
#include "acme_store.h"

#define OD_FREE      0u
#define OD_QUEUED    1u     /* a handshake asks; the driver has not taken it */
#define OD_BUSY      2u     /* the driver decides (ask) or orders */
#define OD_READY     3u     /* stored: served */
#define OD_REFUSED   4u     /* until .until */

#define OD_INDEX     "ondemand/names.json"
#define OD_NAP_MS    50
#define OD_LOG_EVERY 60     /* one log line per cause per this many seconds, across the children */
#define OD_SHORT_REFUSE 60  /* rate and ask failures: refused this long at most */

typedef struct {
    volatile apr_uint32_t  state;
    apr_uint32_t           vhost;       /* index in mod_acme_g.od_servers */
    apr_uint32_t           until;       /* OD_REFUSED: until when */
    volatile apr_uint32_t  gen;         /* moves when the certificate's local files changed */
    volatile apr_uint32_t  seen;        /* last handshake served (seconds) */
    volatile apr_uint32_t  forced_at;   /* last renewal forced through acme-status */
    char                   name[MOD_ACME_NAME_MAX];
} od_slot_t;

/* Each process's share of the waiting count: the driver gives a dead process's share back, so a child
 * that crashed while holding handshakes cannot leave the cap reached. */
#define OD_WAITERS   256

typedef struct {
    volatile apr_uint32_t  pid;
    volatile apr_uint32_t  n;
} od_waiter_t;

typedef struct {
    volatile apr_uint32_t  lock;        /* pid of the holder */
    od_waiter_t            waiter[OD_WAITERS];
    volatile apr_uint32_t  waiting, waited, allowed, refused_cache, certs, ordering;
    volatile apr_uint32_t  refused[ACME_OD_NVERDICTS];
    volatile apr_uint32_t  logged_at[ACME_OD_NVERDICTS];
    od_slot_t              slot[MOD_ACME_OD_SLOTS];
} od_shm_t;

static od_shm_t *od_shm;

/* per process: the on-demand certificates parsed from local files */
typedef struct {
    mod_acme_served_t  sv;
    apr_uint32_t       gen;
    apr_uint32_t       failed_gen;      /* a load of this generation failed: logged once, */
    apr_time_t         retry_at;        /* tried again from then (a second later) */
} od_loaded_t;

static apr_pool_t  *od_pool;           /* under mod_acme_g.reload_lock */
static apr_hash_t  *od_loaded;         /* name -> od_loaded_t; read under mod_acme_g.lock */

/* ---- shared memory ---- */

static void
od_lock(void)
{
    apr_uint32_t me = (apr_uint32_t) getpid(), holder;
    int          n = 0;

    while ((holder = apr_atomic_cas32(&od_shm->lock, me, 0)) != 0) {
        /* critical sections are a few loads and stores: a holder that stays is a dead one */
        if (++n % 1000 == 0 && kill((pid_t) holder, 0) != 0 && errno == ESRCH) {
            apr_atomic_cas32(&od_shm->lock, 0, holder);
        }
        sched_yield();
    }
}

static void
od_unlock(void)
{
    apr_atomic_set32(&od_shm->lock, 0);
}

static apr_status_t
od_shm_cleanup(void *data)
{
    (void) data;
    od_shm = NULL;
    od_loaded = NULL;
    if (od_pool != NULL) {
        apr_pool_destroy(od_pool);
        od_pool = NULL;
    }
    return APR_SUCCESS;
}

apr_status_t
mod_acme_od_shm_create(apr_pool_t *p, server_rec *s)
{
    apr_shm_t     *shm;
    apr_status_t   rv;

    rv = apr_shm_create(&shm, sizeof(od_shm_t), NULL, p);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, rv, s, ACMELOGNO(0170)
                     "cannot create the shared memory of on-demand names");
        return rv;
    }
    od_shm = apr_shm_baseaddr_get(shm);
    memset(od_shm, 0, sizeof(*od_shm));
    apr_pool_cleanup_register(p, NULL, od_shm_cleanup, apr_pool_cleanup_null);
    return APR_SUCCESS;
}

/* under od_lock */
static od_slot_t *
slot_find(const char *name)
{
    int i;

    for (i = 0; i < MOD_ACME_OD_SLOTS; i++) {
        if (od_shm->slot[i].state != OD_FREE && strcmp(od_shm->slot[i].name, name) == 0) {
            return &od_shm->slot[i];
        }
    }
    return NULL;
}

/* under od_lock: a free slot, or the refusal that expired longest ago */
static od_slot_t *
slot_new(const char *name, apr_uint32_t vhost, apr_uint32_t now)
{
    od_slot_t  *sl = NULL;
    int         i;

    for (i = 0; i < MOD_ACME_OD_SLOTS && sl == NULL; i++) {
        if (od_shm->slot[i].state == OD_FREE) {
            sl = &od_shm->slot[i];
        }
    }
    for (i = 0; i < MOD_ACME_OD_SLOTS && sl == NULL; i++) {
        if (od_shm->slot[i].state == OD_REFUSED && od_shm->slot[i].until <= now) {
            sl = &od_shm->slot[i];
        }
    }
    if (sl == NULL) {
        return NULL;
    }
    apr_cpystrn(sl->name, name, sizeof(sl->name));
    sl->vhost = vhost;
    sl->until = 0;
    sl->seen = now;
    sl->state = OD_QUEUED;
    return sl;
}

/* One line per cause per OD_LOG_EVERY seconds across the processes; the counters have the rest. */
static void
od_refused(server_rec *s, acme_od_verdict_t v, const char *name, const char *detail, apr_uint32_t refuse)
{
    apr_uint32_t now = (apr_uint32_t) time(NULL), last;

    apr_atomic_inc32(&od_shm->refused[v]);
    last = apr_atomic_read32(&od_shm->logged_at[v]);
    if (now - last < OD_LOG_EVERY && last != 0) {
        return;
    }
    if (apr_atomic_cas32(&od_shm->logged_at[v], now, last) != last) {
        return;
    }
    if (refuse > 0) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, ACMELOGNO(0171)
                     "on-demand certificate for \"%s\" refused (%s): %s; refused again for %u s",
                     name, acme_od_verdict_name(v), detail, refuse);
    } else {
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, ACMELOGNO(0171)
                     "on-demand certificate for \"%s\" refused (%s): %s", name, acme_od_verdict_name(v),
                     detail);
    }
}

void
mod_acme_od_limits(mod_acme_srv_conf_t *sc, int *refuse, int *wait, int *waiting)
{
    *refuse = sc->od_refuse > 0 ? sc->od_refuse : MOD_ACME_OD_REFUSE;
    *wait = sc->od_wait > 0 ? sc->od_wait : MOD_ACME_OD_WAIT;
    *waiting = sc->od_waiting > 0 ? sc->od_waiting : MOD_ACME_OD_WAITING;
}

/* ---- the handshake ---- */

/* The vhost's own names, as mod_ssl's SNI selection reads them (wildcards in ServerAlias). */
static int
server_matches(server_rec *s, const char *name)
{
    int i;

    if (s->server_hostname != NULL && strcasecmp(s->server_hostname, name) == 0) {
        return 1;
    }
    for (i = 0; s->names != NULL && i < s->names->nelts; i++) {
        if (strcasecmp(APR_ARRAY_IDX(s->names, i, const char *), name) == 0) {
            return 1;
        }
    }
    for (i = 0; s->wild_names != NULL && i < s->wild_names->nelts; i++) {
        if (ap_strcasecmp_match(name, APR_ARRAY_IDX(s->wild_names, i, const char *)) == 0) {
            return 1;
        }
    }
    return 0;
}

static int
od_vhost_index(server_rec *s)
{
    int i;

    for (i = 0; mod_acme_g.od_servers != NULL && i < mod_acme_g.od_servers->nelts; i++) {
        if (APR_ARRAY_IDX(mod_acme_g.od_servers, i, server_rec *) == s) {
            return i;
        }
    }
    return -1;
}

static char *
store_name(server_rec *s, const char *name)
{
    mod_acme_srv_conf_t  *sc = mod_acme_srv_conf(s);
    acme_keyspec_t        ks = ACME_KEYSPEC_DEFAULT;
    acme_ident_t          id;

    if (sc->keytypes != NULL && sc->keytypes->nelts > 0) {
        ks = APR_ARRAY_IDX(sc->keytypes, 0, acme_keyspec_t);
    }
    id.type = ACME_IDENT_DNS;
    id.value = (char *) name;
    return acme_cert_name(&id, 1, &ks);
}

/* Serves the stored certificate of a ready name: 1, or 0 (nothing usable: the fallback). */
static int
od_serve(SSL *ssl, server_rec *s, const char *name, apr_uint32_t gen)
{
    od_loaded_t      *l;
    char             *sn;
    int               ok = 0;

    apr_thread_rwlock_rdlock(mod_acme_g.lock);
    l = od_loaded ? apr_hash_get(od_loaded, name, APR_HASH_KEY_STRING) : NULL;
    if ((l == NULL || l->gen != gen) && !(l != NULL && l->failed_gen == gen && apr_time_now() < l->retry_at)) {
        apr_thread_rwlock_unlock(mod_acme_g.lock);
        apr_thread_mutex_lock(mod_acme_g.reload_lock);
        if (od_pool == NULL) {
            apr_pool_create(&od_pool, NULL);
        }
        l = od_loaded ? apr_hash_get(od_loaded, name, APR_HASH_KEY_STRING) : NULL;
        if (l == NULL || l->gen != gen) {
            mod_acme_cert_t    c;
            mod_acme_served_t  fresh, old;
            const char        *msg = NULL;
            apr_pool_t        *tp;

            memset(&c, 0, sizeof(c));
            sn = store_name(s, name);
            c.name = sn;
            apr_pool_create(&tp, NULL);
            apr_thread_rwlock_wrlock(mod_acme_g.lock);
            if (od_loaded == NULL) {
                od_loaded = apr_hash_make(od_pool);
            }
            if (l == NULL) {
                l = apr_pcalloc(od_pool, sizeof(*l));
                apr_hash_set(od_loaded, apr_pstrdup(od_pool, name), APR_HASH_KEY_STRING, l);
            }
            apr_thread_rwlock_unlock(mod_acme_g.lock);
            if (sn != NULL && mod_acme_cert_load(tp, mod_acme_g.state_dir, &c, &fresh, &msg) == 0) {
                memset(&old, 0, sizeof(old));
                apr_thread_rwlock_wrlock(mod_acme_g.lock);
                old = l->sv;
                l->sv = fresh;
                l->gen = gen;
                apr_thread_rwlock_unlock(mod_acme_g.lock);
                mod_acme_served_free(&old);
            } else {
                if (l->failed_gen != gen) {
                    ap_log_error(APLOG_MARK, APLOG_ERR, 0, s, ACMELOGNO(0172)
                                 "on-demand certificate %s: cannot load it: %s", sn ? sn : name,
                                 msg ? msg : "nothing stored");
                }
                l->failed_gen = gen;
                l->retry_at = apr_time_now() + apr_time_from_sec(1);
            }
            apr_pool_destroy(tp);
            free(sn);
        }
        apr_thread_mutex_unlock(mod_acme_g.reload_lock);
        apr_thread_rwlock_rdlock(mod_acme_g.lock);
        l = od_loaded ? apr_hash_get(od_loaded, name, APR_HASH_KEY_STRING) : NULL;
    }
    if (l != NULL && l->sv.leaf != NULL) {
        SSL_certs_clear(ssl);
        if (SSL_use_cert_and_key(ssl, l->sv.leaf, l->sv.key, l->sv.chain, 1) == 1) {
            ok = 1;
        } else {
            ERR_clear_error();
        }
    }
    apr_thread_rwlock_unlock(mod_acme_g.lock);
    return ok;
}

/* This process's waiter entry (claimed on first use), NULL when all are taken (counted globally only). */
static od_waiter_t *
od_waiter(void)
{
    apr_uint32_t  me = (apr_uint32_t) getpid();
    int           i;

    for (i = 0; i < OD_WAITERS; i++) {
        if (apr_atomic_read32(&od_shm->waiter[i].pid) == me) {
            return &od_shm->waiter[i];
        }
    }
    for (i = 0; i < OD_WAITERS; i++) {
        if (apr_atomic_cas32(&od_shm->waiter[i].pid, me, 0) == 0) {
            return &od_shm->waiter[i];
        }
    }
    return NULL;
}

/* The driver: the waiting share of processes that died. */
static void
od_waiters_reclaim(void)
{
    apr_uint32_t  pid, n;
    int           i;

    for (i = 0; i < OD_WAITERS; i++) {
        pid = apr_atomic_read32(&od_shm->waiter[i].pid);
        if (pid == 0 || kill((pid_t) pid, 0) == 0 || errno != ESRCH) {
            continue;
        }
        n = apr_atomic_xchg32(&od_shm->waiter[i].n, 0);
        while (n-- > 0) {
            apr_atomic_dec32(&od_shm->waiting);
        }
        apr_atomic_set32(&od_shm->waiter[i].pid, 0);
    }
}

int
mod_acme_od_handshake(SSL *ssl, server_rec *s, mod_acme_srv_conf_t *sc)
{
    const char    *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    char           name[MOD_ACME_NAME_MAX];
    int            refuse, wait, waiting, vh, held = 0, rc = 0;
    apr_uint32_t   now, gen, st, until;
    apr_time_t     deadline;
    od_slot_t     *sl;
    od_waiter_t   *w = NULL;
    int            fail = sc->od_close ? -1 : 0;

    if (od_shm == NULL || sni == NULL) {
        return 0;
    }
    mod_acme_od_limits(sc, &refuse, &wait, &waiting);
    if (acme_ondemand_name(sni, strlen(sni), name, sizeof(name)) == 0) {
        /* the client's bytes: only LDH characters reach the log, at most 64 */
        size_t i;
        for (i = 0; sni[i] != '\0' && i < 64; i++) {
            name[i] = apr_isalnum(sni[i]) || sni[i] == '.' || sni[i] == '-' ? sni[i] : '?';
        }
        name[i] = '\0';
        od_refused(s, ACME_OD_INVALID_NAME, name, "not a DNS name the CA could validate", 0);
        return fail;
    }
    if (!server_matches(s, name)) {
        od_refused(s, ACME_OD_NOT_SERVER_NAME, name, "not a ServerName or ServerAlias of the virtual host", 0);
        return fail;
    }
    vh = od_vhost_index(s);
    if (vh < 0) {
        return 0;
    }
    deadline = apr_time_now() + apr_time_from_sec(wait);
    for ( ;; ) {
        now = (apr_uint32_t) time(NULL);
        od_lock();
        sl = slot_find(name);
        if (sl != NULL && sl->state == OD_REFUSED && sl->until <= now) {
            sl->state = OD_FREE;        /* the refusal expired: decided again */
            sl = NULL;
        }
        if (sl == NULL) {
            sl = slot_new(name, (apr_uint32_t) vh, now);
        }
        if (sl == NULL) {
            od_unlock();
            od_refused(s, ACME_OD_WAITING_CAP, name, "the table of on-demand names is full", 0);
            rc = fail;
            break;
        }
        st = sl->state;
        gen = sl->gen;
        until = sl->until;
        if (st == OD_READY && now - sl->seen >= 60) {
            sl->seen = now;
        }
        od_unlock();
        if (st == OD_READY) {
            rc = od_serve(ssl, s, name, gen);
            break;
        }
        if (st == OD_REFUSED) {
            if (!held) {
                apr_atomic_inc32(&od_shm->refused_cache);
            }
            (void) until;
            rc = fail;
            break;
        }
        if (!held) {
            if ((int) apr_atomic_inc32(&od_shm->waiting) >= waiting) {
                apr_atomic_dec32(&od_shm->waiting);
                char msg[64];
                apr_snprintf(msg, sizeof(msg), "%d connections are waiting already (waiting=)", waiting);
                od_refused(s, ACME_OD_WAITING_CAP, name, msg, 0);
                rc = fail;
                break;
            }
            held = 1;
            w = od_waiter();
            if (w != NULL) {
                apr_atomic_inc32(&w->n);
            }
            apr_atomic_inc32(&od_shm->waited);
        }
        if (apr_time_now() >= deadline) {
            od_refused(s, ACME_OD_TIMEOUT, name, "no certificate within wait=", 0);
            rc = fail;
            break;
        }
        apr_sleep(apr_time_from_msec(OD_NAP_MS));
    }
    if (held) {
        if (w != NULL) {
            apr_atomic_dec32(&w->n);
        }
        apr_atomic_dec32(&od_shm->waiting);
    }
    return rc;
}

int
mod_acme_od_renew_claim(const char *what, apr_uint32_t now, apr_uint32_t interval, apr_uint32_t *until)
{
    char        name[MOD_ACME_NAME_MAX];
    od_slot_t  *sl;
    int         rc = -1;

    if (od_shm == NULL || acme_ondemand_name(what, strlen(what), name, sizeof(name)) == 0) {
        return -1;
    }
    od_lock();
    sl = slot_find(name);
    if (sl != NULL && sl->state == OD_READY) {
        if (sl->forced_at != 0 && now - sl->forced_at < interval) {
            *until = sl->forced_at + interval;
            rc = 2;
        } else {
            sl->forced_at = now;
            rc = 0;
        }
    }
    od_unlock();
    return rc;
}

int
mod_acme_od_known(const char *host)
{
    char  name[MOD_ACME_NAME_MAX];
    int   i, found = 0;

    if (od_shm == NULL || host == NULL || acme_ondemand_name(host, strlen(host), name, sizeof(name)) == 0) {
        return 0;
    }
    od_lock();
    for (i = 0; i < MOD_ACME_OD_SLOTS && !found; i++) {
        od_slot_t *sl = &od_shm->slot[i];
        found = (sl->state == OD_BUSY || sl->state == OD_READY) && strcmp(sl->name, name) == 0;
    }
    od_unlock();
    /* ACMEStorage: another node may be ordering a name this one has not seen, and the CA may ask here */
    for (i = 0; !found && mod_acme_g.storage != NULL && mod_acme_g.od_servers != NULL
                && i < mod_acme_g.od_servers->nelts; i++) {
        found = server_matches(APR_ARRAY_IDX(mod_acme_g.od_servers, i, server_rec *), name);
    }
    return found;
}

/* ---- the driver ---- */

typedef struct od_drv_s od_drv_t;

typedef struct {
    od_drv_t    *d;
    const char  *name;
    const char  *store;         /* NULL until added to the manager */
    int          vhost;
    int          ready;
    int          asking;        /* a re-ask is under way */
    int          recheck;       /* asked again at the next step (restored after a restart) */
    int          dropped;       /* no longer managed (a late ask answer finds this) */
    time_t       seen;          /* last handshake, as kept in the store */
    time_t       asked_at;      /* last re-ask answered */
} od_name_t;

struct od_drv_s {
    apr_pool_t          *p;
    acme_manager_t      *m;
    acme_store_t        *st;
    server_rec          *s;
    apr_array_header_t  *issuers;   /* per od vhost: apr_array_header_t * of int */
    acme_ondemand_t     *od;
    apr_hash_t          *names;     /* name -> od_name_t, added to the manager */
    int                  nadded;
    int                  refuse;
    long                 unseen;
    int                  dirty;     /* names.json to write */
    time_t               saved_at;
    apr_hash_t          *dropped;   /* ACMEStorage: names dropped here since the last save */
};

static od_drv_t *od_drv;

/*
 * ACMEStorage: the index is the cluster's, each node writes it; names other nodes keep (not unseen, not
 * dropped here) stay in it, so that a restart of any node takes them all up.
 */
static void
od_merge(od_drv_t *d, json_t *arr)
{
    char        *data = NULL;
    size_t       len = 0, i;
    acme_err_t   err;
    json_t      *doc, *v;

    if (acme_store_get(d->st, OD_INDEX, &data, &len, &err) != 0) {
        return;
    }
    doc = json_loadb(data, len, 0, NULL);
    free(data);
    json_array_foreach(json_object_get(doc, "names"), i, v) {
        const char  *name = json_string_value(json_object_get(v, "name"));
        time_t       seen = (time_t) json_integer_value(json_object_get(v, "seen"));

        if (name == NULL || apr_hash_get(d->names, name, APR_HASH_KEY_STRING) != NULL
            || apr_hash_get(d->dropped, name, APR_HASH_KEY_STRING) != NULL || time(NULL) - seen > d->unseen) {
            continue;
        }
        json_array_append(arr, v);      /* as written: its issuer stays the other node's */
    }
    json_decref(doc);
}

/* What a name's entry says of its vhost: its first ACMECA (as written) and key type. */
static void
od_vhost_id(int vhost, const char **issuer, const char **key, char *buf, size_t size)
{
    server_rec           *s = APR_ARRAY_IDX(mod_acme_g.od_servers, vhost, server_rec *);
    mod_acme_srv_conf_t  *sc = mod_acme_srv_conf(s);
    acme_keyspec_t        ks = ACME_KEYSPEC_DEFAULT;

    if (sc->keytypes != NULL && sc->keytypes->nelts > 0) {
        ks = APR_ARRAY_IDX(sc->keytypes, 0, acme_keyspec_t);
    }
    *issuer = sc->cas != NULL && sc->cas->nelts > 0 ? APR_ARRAY_IDX(sc->cas, 0, mod_acme_ca_t).name
                                                     : MOD_ACME_DEFAULT_CA;
    *key = acme_keyspec_str(&ks, buf, size);
}

/* The vhost an entry is for: one that allows the name, with the entry's ACMECA and key type if any does. */
static int
od_vhost_of(json_t *v, const char *name)
{
    const char  *issuer = json_string_value(json_object_get(v, "issuer"));
    const char  *key = json_string_value(json_object_get(v, "key"));
    const char  *vi, *vk;
    char         buf[32];
    int          j, pass, first = -1;

    for (pass = 0; pass < 2; pass++) {
        for (j = 0; j < mod_acme_g.od_servers->nelts; j++) {
            if (!server_matches(APR_ARRAY_IDX(mod_acme_g.od_servers, j, server_rec *), name)) {
                continue;
            }
            if (first < 0) {
                first = j;
            }
            od_vhost_id(j, &vi, &vk, buf, sizeof(buf));
            if (issuer != NULL && strcmp(issuer, vi) == 0
                && (pass == 1 || (key != NULL && strcmp(key, vk) == 0))) {
                return j;
            }
        }
    }
    return first;       /* an entry of an older version, or its CA is gone: the first vhost that allows it */
}

static void
od_save(od_drv_t *d)
{
    json_t             *doc = json_object(), *arr = json_array();
    apr_hash_index_t   *hi;
    acme_err_t          err;
    char               *text;

    if (mod_acme_g.storage != NULL) {
        od_merge(d, arr);
    }
    apr_hash_clear(d->dropped);
    /* the format nginx's module keeps: {"names": [{"name", "seen", "issuer", "key"}]} */
    for (hi = apr_hash_first(NULL, d->names); hi != NULL; hi = apr_hash_next(hi)) {
        od_name_t   *n = apr_hash_this_val(hi);
        const char  *issuer, *key;
        char         buf[32];

        if (n->store != NULL) {
            od_vhost_id(n->vhost, &issuer, &key, buf, sizeof(buf));
            json_array_append_new(arr, json_pack("{s:s, s:I, s:s, s:s}", "name", n->name, "seen",
                                                 (json_int_t) n->seen, "issuer", issuer, "key", key));
        }
    }
    json_object_set_new(doc, "names", arr);
    text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    d->dirty = 0;
    d->saved_at = time(NULL);
    if (text == NULL || acme_store_put(d->st, OD_INDEX, text, strlen(text), 0, &err) != 0) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, d->s, ACMELOGNO(0173)
                     "cannot store the list of on-demand names (%s): %s", OD_INDEX,
                     text ? err.msg : "out of memory");
    }
    free(text);
}

static void
od_slot_set(const char *name, apr_uint32_t state, apr_uint32_t until, int bump)
{
    od_slot_t *sl;

    od_lock();
    sl = slot_find(name);
    if (sl != NULL) {
        sl->until = until;
        if (bump) {
            sl->gen++;
        }
        sl->state = state;
    }
    od_unlock();
}

static void
od_refuse(od_drv_t *d, od_name_t *n, acme_od_verdict_t v, const char *detail)
{
    apr_uint32_t  r = (apr_uint32_t) d->refuse;

    if (v == ACME_OD_RATE_LIMITED || v == ACME_OD_ASK_FAILED || v == ACME_OD_ORDER_FAILED) {
        r = r < OD_SHORT_REFUSE ? r : OD_SHORT_REFUSE;
    }
    od_refused(d->s, v, n->name, detail, r);
    od_slot_set(n->name, OD_REFUSED, (apr_uint32_t) time(NULL) + r, 0);
}

static void
od_add(od_drv_t *d, od_name_t *n)
{
    server_rec           *s = APR_ARRAY_IDX(mod_acme_g.od_servers, n->vhost, server_rec *);
    mod_acme_srv_conf_t  *sc = mod_acme_srv_conf(s);
    apr_array_header_t   *iss = APR_ARRAY_IDX(d->issuers, n->vhost, apr_array_header_t *);
    acme_keyspec_t        ks = ACME_KEYSPEC_DEFAULT;
    acme_ident_t          id;
    acme_err_t            err;
    const char           *sn;

    if (sc->keytypes != NULL && sc->keytypes->nelts > 0) {
        ks = APR_ARRAY_IDX(sc->keytypes, 0, acme_keyspec_t);
    }
    id.type = ACME_IDENT_DNS;
    id.value = (char *) n->name;
    sn = iss->nelts > 0 ? acme_manager_add_cert(d->m, &id, 1, &ks, (const int *) iss->elts,
                                                (size_t) iss->nelts, &err) : NULL;
    if (sn == NULL) {
        od_refuse(d, n, ACME_OD_ORDER_FAILED, iss->nelts > 0 ? err.msg : "no usable ACME issuer");
        return;
    }
    n->store = apr_pstrdup(d->p, sn);
    n->ready = 0;
    apr_hash_set(d->names, n->name, APR_HASH_KEY_STRING, n);
    d->nadded++;
    od_slot_set(n->name, OD_BUSY, 0, 0);
}

/* No longer managed: no renewal; its files stay. state: what handshakes get from now on. */
static void
od_drop(od_drv_t *d, od_name_t *n, apr_uint32_t state, apr_uint32_t until)
{
    acme_manager_remove_cert(d->m, n->store);
    apr_hash_set(d->names, n->name, APR_HASH_KEY_STRING, NULL);
    apr_hash_set(d->dropped, n->name, APR_HASH_KEY_STRING, n);
    n->dropped = 1;
    d->nadded--;
    d->dirty = 1;
    if (state == OD_FREE) {
        od_lock();
        if (slot_find(n->name) != NULL) {
            slot_find(n->name)->state = OD_FREE;
        }
        od_unlock();
    } else {
        od_slot_set(n->name, state, until, 0);
    }
    od_save(d);
}

static void
od_reasked(void *arg, const char *name, acme_od_verdict_t v, const char *detail)
{
    od_name_t  *n = arg;
    od_drv_t   *d = n->d;

    (void) name;
    n->asking = 0;
    if (n->dropped || od_drv != d) {
        return;
    }
    if (v == ACME_OD_ASK_REFUSED) {
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, d->s, ACMELOGNO(0179)
                     "on-demand certificate for \"%s\": the ask endpoint now refuses it (%s); no longer "
                     "renewed or served", n->name, detail ? detail : "refused");
        apr_atomic_inc32(&od_shm->refused[ACME_OD_ASK_REFUSED]);
        od_drop(d, n, OD_REFUSED, (apr_uint32_t) (time(NULL) + d->refuse));
        return;
    }
    /* allowed; or not answered: asked again in an hour, the certificate kept meanwhile */
    n->asked_at = v == ACME_OD_ALLOWED ? time(NULL) : time(NULL) - 86400 + 3600;
    if (v != ACME_OD_ALLOWED) {
        od_refused(d->s, v, n->name, detail ? detail : "the ask endpoint did not answer", 0);
    }
}

static void
od_decided(void *arg, const char *name, acme_od_verdict_t v, const char *detail)
{
    od_name_t  *n = arg;
    od_drv_t   *d = n->d;

    (void) name;
    if (v == ACME_OD_ALLOWED) {
        apr_atomic_inc32(&od_shm->allowed);
        od_add(d, n);
        od_save(d);
    } else {
        od_refuse(d, n, v, detail ? detail : acme_od_verdict_name(v));
    }
}

/* With ACMEStorage the children read the local cache, not Redis: it first (also for a certificate another
 * node issued). */
static void
od_cache_refresh(od_drv_t *d, od_name_t *n)
{
    mod_acme_cert_t   c;
    apr_pool_t       *tp;
    const char       *msg = NULL;

    if (mod_acme_g.storage == NULL) {
        return;
    }
    memset(&c, 0, sizeof(c));
    c.name = n->store;
    apr_pool_create(&tp, NULL);
    if (mod_acme_cache_update(tp, mod_acme_g.store, &c, NULL, &msg) != 0) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, d->s, ACMELOGNO(0085)
                     "%s: cannot refresh the local cache: %s", n->store, msg ? msg : "nothing stored");
    }
    apr_pool_destroy(tp);
}

/*
 * ACMEStorage: max and rate for the whole cluster, counted in the store (this driver thread serves no
 * connection: a few ms of waiting for another node's update are fine). 0 decided (*v), -1 this node's own
 * limits decide (the store did not answer, or stayed locked).
 */
static int
od_cluster(od_drv_t *d, const char *name, acme_od_verdict_t *v)
{
    acme_err_t  err;
    int         rc, try;

    for (try = 0; try < 20; try++) {
        rc = acme_ondemand_cluster_admit(d->st, acme_ondemand_conf(d->od), name, time(NULL), v, &err);
        if (rc == 0) {
            return 0;
        }
        if (rc < 0) {
            break;
        }
        apr_sleep(apr_time_from_msec(5));
    }
    ap_log_error(APLOG_MARK, APLOG_WARNING, 0, d->s, ACMELOGNO(0180)
                 "on-demand \"%s\": the cluster's limits not checked, this node's apply: %s", name,
                 rc < 0 ? err.msg : "another node kept them locked");
    return -1;
}

static od_name_t *
od_name_new(od_drv_t *d, const char *name, int vhost)
{
    od_name_t *n = apr_pcalloc(d->p, sizeof(*n));

    n->d = d;
    n->name = apr_pstrdup(d->p, name);
    n->vhost = vhost;
    n->seen = time(NULL);
    n->asked_at = n->seen;
    return n;
}

/* The names of an earlier run: added back (the manager orders none that has a valid certificate). */
static void
od_restore(od_drv_t *d)
{
    char        *data = NULL;
    size_t       len = 0;
    acme_err_t   err;
    json_t      *doc, *arr, *v;
    size_t       i;
    int          j;
    od_name_t   *n;

    if (acme_store_get(d->st, OD_INDEX, &data, &len, &err) != 0) {
        return;
    }
    doc = json_loadb(data, len, 0, NULL);
    free(data);
    arr = json_object_get(doc, "names");
    json_array_foreach(arr, i, v) {
        const char  *name = json_string_value(json_object_get(v, "name"));
        time_t       seen = (time_t) json_integer_value(json_object_get(v, "seen"));

        if (name == NULL || apr_hash_get(d->names, name, APR_HASH_KEY_STRING) != NULL) {
            continue;
        }
        if (time(NULL) - seen > d->unseen) {
            ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, d->s, ACMELOGNO(0178)
                         "on-demand certificate for \"%s\": not seen for %ld s, no longer renewed", name,
                         (long) (time(NULL) - seen));
            d->dirty = 1;
            continue;
        }
        /* only while a vhost still allows it */
        j = od_vhost_of(v, name);
        if (j < 0) {
            continue;
        }
        n = od_name_new(d, name, j);
        n->seen = seen;
        n->recheck = 1;     /* the ask endpoint may have changed its mind meanwhile */
        od_lock();
        if (slot_find(name) == NULL) {
            slot_new(name, (apr_uint32_t) j, (apr_uint32_t) time(NULL));
        }
        od_unlock();
        od_add(d, n);
    }
    json_decref(doc);
}

void *
mod_acme_od_driver_new(apr_pool_t *p, acme_loop_t *loop, acme_manager_t *m, acme_store_t *st, server_rec *s,
                       apr_array_header_t *issuers)
{
    mod_acme_srv_conf_t   *sc = mod_acme_srv_conf(mod_acme_g.base);
    acme_ondemand_conf_t   conf;
    acme_err_t             err;
    od_drv_t              *d;
    int                    wait, waiting;

    if (od_shm == NULL || mod_acme_g.od_servers == NULL || mod_acme_g.od_servers->nelts == 0) {
        return NULL;
    }
    d = apr_pcalloc(p, sizeof(*d));
    d->p = p;
    d->m = m;
    d->st = st;
    d->s = s;
    d->issuers = issuers;
    d->names = apr_hash_make(p);
    d->dropped = apr_hash_make(p);
    mod_acme_od_limits(sc, &d->refuse, &wait, &waiting);
    d->unseen = sc->od_unseen > 0 ? sc->od_unseen : MOD_ACME_OD_UNSEEN;
    memset(&conf, 0, sizeof(conf));
    conf.ask_url = sc->od_ask;
    conf.ask_timeout_ms = sc->od_ask_timeout * 1000L;
    conf.ask_ca_file = sc->trusted_cert;
    conf.max_certs = (size_t) sc->od_max;
    conf.rate_per_min = (unsigned) sc->od_rate;
    d->od = acme_ondemand_new(loop, &conf, &err);
    if (d->od == NULL) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, s, ACMELOGNO(0174) "on-demand TLS: %s", err.msg);
        return NULL;
    }
    od_drv = d;
    od_restore(d);
    return d;
}

void
mod_acme_od_driver_step(void *arg)
{
    od_drv_t                  *d = arg;
    acme_manager_cert_info_t   info;
    acme_od_verdict_t          v;
    apr_uint32_t               certs = 0, ordering = 0;
    apr_hash_index_t          *hi;
    int                        i;

    if (d == NULL) {
        return;
    }
    od_waiters_reclaim();
    for (i = 0; i < MOD_ACME_OD_SLOTS; i++) {
        od_slot_t  *sl = &od_shm->slot[i];
        od_name_t  *n;
        char        name[MOD_ACME_NAME_MAX];
        int         vh;

        if (sl->state != OD_QUEUED) {
            continue;
        }
        od_lock();
        if (sl->state != OD_QUEUED) {
            od_unlock();
            continue;
        }
        sl->state = OD_BUSY;
        apr_cpystrn(name, sl->name, sizeof(name));
        vh = (int) sl->vhost;
        od_unlock();
        if (apr_hash_get(d->names, name, APR_HASH_KEY_STRING) != NULL) {
            continue;       /* added already: ready below */
        }
        n = od_name_new(d, name, vh);
        if (mod_acme_g.storage != NULL && od_cluster(d, name, &v) == 0 && v != ACME_OD_ALLOWED) {
            od_decided(n, name, v, v == ACME_OD_MAX_COUNT
                       ? "as many on-demand certificates in the cluster as max= allows"
                       : "as many new orders in the cluster in the last minute as rate= allows");
            continue;
        }
        if (acme_ondemand_decide(d->od, name, (size_t) d->nadded, od_decided, n, &v) == 0) {
            od_decided(n, name, v, NULL);
        }
    }
    for (hi = apr_hash_first(NULL, d->names); hi != NULL; hi = apr_hash_next(hi)) {
        od_name_t   *n = apr_hash_this_val(hi);
        od_slot_t   *sl;
        time_t       now = time(NULL);

        od_lock();
        sl = slot_find(n->name);
        if (sl != NULL && (time_t) sl->seen > n->seen) {
            n->seen = (time_t) sl->seen;
            d->dirty = 1;
        }
        od_unlock();
        if (now - n->seen > d->unseen) {
            ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, d->s, ACMELOGNO(0178)
                         "on-demand certificate for \"%s\": not seen for %ld s, no longer renewed", n->name,
                         (long) (now - n->seen));
            od_drop(d, n, OD_FREE, 0);
            break;      /* the hash changed under the iteration */
        }
        if (acme_manager_cert_info(d->m, n->store, &info) != 0) {
            continue;
        }
        /* the ask endpoint again after a restart and a day before each renewal: permission may be gone */
        if (!n->asking && (n->recheck || (info.renew_at > 0 && info.renew_at - now < 86400
                                          && now - n->asked_at > 86400))
            && acme_ondemand_ask(d->od, n->name, od_reasked, n) == 0)
        {
            n->asking = 1;
        }
        n->recheck = 0;
        if (info.not_after > now) {
            certs++;
            if (!n->ready) {
                od_cache_refresh(d, n);
                n->ready = 1;
                od_slot_set(n->name, OD_READY, 0, 1);
            }
        } else if (info.failures > 0 && !info.issuing) {
            /* given up: not ordered again until a handshake asks after refuse_time */
            od_refuse(d, n, ACME_OD_ORDER_FAILED, info.last_error ? info.last_error : "the order failed");
            od_drop(d, n, OD_REFUSED, (apr_uint32_t) now + OD_SHORT_REFUSE);
            break;      /* the hash changed under the iteration */
        } else {
            ordering++;
        }
    }
    if (d->dirty && time(NULL) - d->saved_at >= 60) {
        od_save(d);
    }
    apr_atomic_set32(&od_shm->certs, certs);
    apr_atomic_set32(&od_shm->ordering, ordering);
}

void
mod_acme_od_driver_free(void *arg)
{
    od_drv_t *d = arg;

    if (d != NULL) {
        acme_ondemand_free(d->od);
        if (od_drv == d) {
            od_drv = NULL;
        }
    }
}

/* The driver's on-demand name whose certificate is the store's `store`, or NULL. */
static od_name_t *
od_by_store(const char *store)
{
    apr_hash_index_t  *hi;
    od_name_t         *n;

    if (od_drv == NULL) {
        return NULL;
    }
    for (hi = apr_hash_first(NULL, od_drv->names); hi != NULL; hi = apr_hash_next(hi)) {
        n = apr_hash_this_val(hi);
        if (n->store != NULL && strcmp(n->store, store) == 0) {
            return n;
        }
    }
    return NULL;
}

void
mod_acme_od_cert_updated(const char *store)
{
    od_name_t  *n = od_by_store(store);

    if (n == NULL) {
        return;
    }
    od_cache_refresh(od_drv, n);
    n->ready = 1;
    od_slot_set(n->name, OD_READY, 0, 1);
    ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, od_drv->s, ACMELOGNO(0175)
                 "%s: on-demand certificate stored for %s", store, n->name);
}

/*
 * Another node issued or renewed an on-demand name: the manager reads the store again now (cert_updated
 * follows for a new certificate), instead of when it looks by itself (15 s after it found the certificate's
 * lock taken, or at the renewal time).
 */
void
mod_acme_od_announced(const char *store)
{
    od_name_t  *n = od_by_store(store);

    if (n != NULL) {
        (void) acme_manager_reload_cert(od_drv->m, n->store);
    }
}

void *
mod_acme_od_status(void)
{
    mod_acme_srv_conf_t  *sc = mod_acme_srv_conf(mod_acme_g.base);
    json_t               *o, *lim, *ref;
    int                   refuse, wait, waiting, v;

    if (od_shm == NULL || mod_acme_g.od_servers == NULL || mod_acme_g.od_servers->nelts == 0) {
        return NULL;
    }
    mod_acme_od_limits(sc, &refuse, &wait, &waiting);
    o = json_object();
    lim = json_object();
    json_object_set_new(lim, "ask", json_boolean(sc->od_ask != NULL));
    json_object_set_new(lim, "ask_timeout_ms", json_integer(sc->od_ask_timeout > 0 ? sc->od_ask_timeout * 1000L
                                                                                   : ACME_OD_ASK_TIMEOUT));
    json_object_set_new(lim, "max", json_integer(sc->od_max > 0 ? sc->od_max : ACME_OD_MAX_CERTS));
    json_object_set_new(lim, "rate_per_minute", json_integer(sc->od_rate > 0 ? sc->od_rate : ACME_OD_RATE));
    json_object_set_new(lim, "refuse_time", json_integer(refuse));
    json_object_set_new(lim, "wait_ms", json_integer(wait * 1000L));
    json_object_set_new(lim, "waiting", json_integer(waiting));
    json_object_set_new(lim, "unseen", json_integer(sc->od_unseen > 0 ? sc->od_unseen : MOD_ACME_OD_UNSEEN));
    json_object_set_new(lim, "fail", json_string(sc->od_close ? "close" : "fallback"));
    json_object_set_new(o, "limits", lim);
    json_object_set_new(o, "certificates", json_integer(apr_atomic_read32(&od_shm->certs)));
    json_object_set_new(o, "ordering", json_integer(apr_atomic_read32(&od_shm->ordering)));
    json_object_set_new(o, "asking", json_integer(od_drv ? (json_int_t) acme_ondemand_asking(od_drv->od) : 0));
    json_object_set_new(o, "waiting", json_integer(apr_atomic_read32(&od_shm->waiting)));
    json_object_set_new(o, "waited", json_integer(apr_atomic_read32(&od_shm->waited)));
    json_object_set_new(o, "allowed", json_integer(apr_atomic_read32(&od_shm->allowed)));
    json_object_set_new(o, "refused_from_cache", json_integer(apr_atomic_read32(&od_shm->refused_cache)));
    ref = json_object();
    for (v = 1; v < ACME_OD_NVERDICTS; v++) {
        json_object_set_new(ref, acme_od_verdict_name((acme_od_verdict_t) v),
                            json_integer(apr_atomic_read32(&od_shm->refused[v])));
    }
    json_object_set_new(o, "refused", ref);
    return o;
}
