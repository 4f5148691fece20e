/*
 * Shared memory between the parent and every child of one configuration generation (anonymous apr_shm
 * created in post_config, inherited by the children through fork):
 *   - a generation number per certificate (a table sized in post_config, indexed like mod_acme_g.certs):
 *     the driver bumps one when that certificate changed on this host (the fs store, or the local cache it
 *     keeps of Redis); a handshake compares the generations of the certificates its vhost serves (an
 *     atomic read each) and re-parses only the one that moved, from local files; a global generation
 *     moves with any of them (the status shows it);
 *   - the driver's latest status JSON, under a sequence lock, so any child can answer acme-status;
 *   - a small queue of renew requests from any child to the driver (see renew_recover for dead holders);
 *   - per certificate: when a renewal was last forced and until when the CA asked to wait, so any child
 *     refuses a forced renewal at once (429); when an ARI check was last requested, and whether one waits
 *     for the driver;
 *   - whether the first driver of this generation asks every certificate's renewal information again
 *     (set when the parent starts, not on a graceful restart);
 *   - the pid of the process running the driver.
 */
#include "mod_acme.h"

#include <apr_shm.h>
#include <apr_atomic.h>

#include <errno.h>
#include <signal.h>

/*
 * A process can die anywhere (a crash, SIGKILL, the OOM killer), also between the two steps of a write.
 * What it leaves is repaired: a status sequence left odd by a dead driver is made even by the next one
 * (the driver lock makes it the only writer), and readers stop waiting for a writer that is gone; a renew
 * slot names the pid holding it, so a slot whose holder died is freed (or queued again, when the dead
 * process was the driver taking it).
 */
#define SLOT_FREE       0u
#define SLOT_QUEUED     2u
#define SLOT_WRITING    1u              /* | pid << 2: a child fills the slot */
#define SLOT_READING    3u              /* | pid << 2: the driver takes it */
#define SLOT_HELD(st, pid)  (((apr_uint32_t) (pid) << 2) | (st))

/* readers wait this long (in 1 ms naps) for a writer that is alive, then do without */
#define STATUS_READ_TRIES  50

typedef struct {
    volatile apr_uint32_t  state;       /* SLOT_* */
    char                   name[MOD_ACME_NAME_MAX];
} renew_slot_t;

/* Per certificate (index in mod_acme_g.certs); times in seconds since the epoch. */
typedef struct {
    volatile apr_uint32_t  forced_at;   /* last forced renewal accepted */
    volatile apr_uint32_t  ca_wait;     /* the CA asked to wait until (the driver writes it) */
    volatile apr_uint32_t  gen;         /* moves when its local files changed */
    volatile apr_uint32_t  ari_at;      /* last ARI check accepted */
    volatile apr_uint32_t  ari_want;    /* 1: an ARI check waits for the driver */
} per_cert_t;

/* test_driver_killed_mid_write_is_repaired (tests/e2e) finds the segment by driver_pid and writes
 * status_seq: keep these two at offsets 4 and 8 */
struct mod_acme_shm_s {
    volatile apr_uint32_t  generation;  /* moves with any certificate's */
    volatile apr_uint32_t  driver_pid;
    volatile apr_uint32_t  status_seq;  /* odd while the driver writes */
    volatile apr_uint32_t  status_len;
    volatile apr_uint32_t  status_writer;   /* pid of the last writer */
    renew_slot_t           renew[MOD_ACME_RENEW_SLOTS];
    char                   status[MOD_ACME_STATUS_MAX];
    volatile apr_uint32_t  ari_start;   /* 1: the parent started (no graceful restart): ask ARI again */
    apr_uint32_t           ncerts;      /* entries in cert, fixed at creation */
    per_cert_t             cert[];
};

/* 1 unless the process is known to be gone (another user's process answers EPERM: alive) */
static int
pid_alive(apr_uint32_t pid)
{
    return pid != 0 && (kill((pid_t) pid, 0) == 0 || errno != ESRCH);
}

apr_status_t
mod_acme_shm_create(apr_pool_t *p, server_rec *s, mod_acme_shm_t **out)
{
    apr_shm_t     *shm;
    apr_status_t   rv;
    apr_size_t     n = mod_acme_g.certs ? (apr_size_t) mod_acme_g.certs->nelts : 0, size;

    size = sizeof(mod_acme_shm_t) + n * sizeof(per_cert_t);
    rv = apr_shm_create(&shm, size, NULL, p);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, rv, s, ACMELOGNO(0020)
                     "cannot create the shared memory for certificate hot swap");
        return rv;
    }
    *out = apr_shm_baseaddr_get(shm);
    memset(*out, 0, size);
    (*out)->ncerts = (apr_uint32_t) n;
    return APR_SUCCESS;
}

apr_uint32_t
mod_acme_shm_generation(mod_acme_shm_t *shm)
{
    return shm ? apr_atomic_read32(&shm->generation) : 0;
}

apr_uint32_t
mod_acme_shm_cert_generation(mod_acme_shm_t *shm, int idx)
{
    if (shm == NULL || idx < 0 || (apr_uint32_t) idx >= shm->ncerts) {
        return 0;
    }
    return apr_atomic_read32(&shm->cert[idx].gen);
}

void
mod_acme_shm_bump(mod_acme_shm_t *shm, int idx)
{
    apr_uint32_t i;

    if (shm == NULL || idx >= (int) shm->ncerts) {
        return;
    }
    /* the certificate's first: whoever sees the global move sees it */
    if (idx >= 0) {
        apr_atomic_inc32(&shm->cert[idx].gen);
    } else {
        for (i = 0; i < shm->ncerts; i++) {
            apr_atomic_inc32(&shm->cert[i].gen);
        }
    }
    apr_atomic_inc32(&shm->generation);
}

void
mod_acme_shm_status_put(mod_acme_shm_t *shm, const char *json, apr_size_t len)
{
    if (shm == NULL) {
        return;
    }
    if (len >= MOD_ACME_STATUS_MAX) {
        json = "{\"error\": \"status too large for the shared memory\"}";
        len = strlen(json);
    }
    if (apr_atomic_read32(&shm->status_seq) & 1) {
        apr_atomic_inc32(&shm->status_seq);     /* a writer died mid-write; we are the only one now */
    }
    apr_atomic_set32(&shm->status_writer, (apr_uint32_t) getpid());
    apr_atomic_inc32(&shm->status_seq);         /* odd: writing */
    __sync_synchronize();
    memcpy(shm->status, json, len);
    apr_atomic_set32(&shm->status_len, (apr_uint32_t) len);
    __sync_synchronize();
    apr_atomic_inc32(&shm->status_seq);         /* even: done */
}

const char *
mod_acme_shm_status_get(mod_acme_shm_t *shm, apr_pool_t *p)
{
    apr_uint32_t  s1, s2, len;
    char         *buf;
    int           tries;

    if (shm == NULL) {
        return NULL;
    }
    buf = apr_palloc(p, MOD_ACME_STATUS_MAX + 1);
    for (tries = 0; tries < STATUS_READ_TRIES; tries++) {
        s1 = apr_atomic_read32(&shm->status_seq);
        if (s1 == 0) {
            return NULL;                        /* nothing written yet */
        }
        if (s1 & 1) {
            if (!pid_alive(apr_atomic_read32(&shm->status_writer))) {
                return NULL;                    /* died mid-write: the next driver repairs it */
            }
            apr_sleep(1000);
            continue;
        }
        __sync_synchronize();
        len = apr_atomic_read32(&shm->status_len);
        if (len >= MOD_ACME_STATUS_MAX) {
            continue;
        }
        memcpy(buf, shm->status, len);
        __sync_synchronize();
        s2 = apr_atomic_read32(&shm->status_seq);
        if (s1 == s2) {
            buf[len] = '\0';
            return buf;
        }
    }
    return NULL;
}

int
mod_acme_shm_renew_push(mod_acme_shm_t *shm, const char *name)
{
    apr_uint32_t  held = SLOT_HELD(SLOT_WRITING, getpid());
    int           i;

    if (shm == NULL || strlen(name) >= MOD_ACME_NAME_MAX) {
        return -1;
    }
    for (i = 0; i < MOD_ACME_RENEW_SLOTS; i++) {
        renew_slot_t *sl = &shm->renew[i];
        if (apr_atomic_cas32(&sl->state, held, SLOT_FREE) == SLOT_FREE) {
            apr_cpystrn(sl->name, name, sizeof(sl->name));
            __sync_synchronize();
            apr_atomic_set32(&sl->state, SLOT_QUEUED);
            return 0;
        }
    }
    return -1;
}

/* Frees the slot of a process that died filling it, queues again the one a dead driver was taking. */
static int
renew_recover(renew_slot_t *sl)
{
    apr_uint32_t  st = apr_atomic_read32(&sl->state);

    if (st == SLOT_FREE || st == SLOT_QUEUED || pid_alive(st >> 2)) {
        return 0;
    }
    return apr_atomic_cas32(&sl->state, (st & 3) == SLOT_READING ? SLOT_QUEUED : SLOT_FREE, st) == st;
}

int
mod_acme_shm_renew_pop(mod_acme_shm_t *shm, char *buf, apr_size_t size)
{
    apr_uint32_t  held = SLOT_HELD(SLOT_READING, getpid());
    int           i;

    if (shm == NULL) {
        return 0;
    }
    for (i = 0; i < MOD_ACME_RENEW_SLOTS; i++) {
        renew_slot_t *sl = &shm->renew[i];
        renew_recover(sl);
        if (apr_atomic_cas32(&sl->state, held, SLOT_QUEUED) == SLOT_QUEUED) {
            __sync_synchronize();
            apr_cpystrn(buf, sl->name, size);
            apr_atomic_set32(&sl->state, SLOT_FREE);
            return 1;
        }
    }
    return 0;
}

int
mod_acme_shm_recover(mod_acme_shm_t *shm)
{
    apr_uint32_t  seq;
    int           i, n = 0;

    if (shm == NULL) {
        return 0;
    }
    seq = apr_atomic_read32(&shm->status_seq);
    if ((seq & 1) && apr_atomic_cas32(&shm->status_seq, seq + 1, seq) == seq) {
        n++;
    }
    for (i = 0; i < MOD_ACME_RENEW_SLOTS; i++) {
        n += renew_recover(&shm->renew[i]);
    }
    return n;
}

void
mod_acme_shm_set_driver(mod_acme_shm_t *shm, pid_t pid)
{
    if (shm) {
        apr_atomic_set32(&shm->driver_pid, (apr_uint32_t) pid);
    }
}

pid_t
mod_acme_shm_driver(mod_acme_shm_t *shm)
{
    return shm ? (pid_t) apr_atomic_read32(&shm->driver_pid) : 0;
}

int
mod_acme_shm_renew_claim(mod_acme_shm_t *shm, int i, apr_uint32_t now, apr_uint32_t interval,
                         apr_uint32_t *until, apr_uint32_t *prev)
{
    per_cert_t     *l;
    apr_uint32_t    old, wait;

    if (shm == NULL || i < 0 || (apr_uint32_t) i >= shm->ncerts) {
        return -1;
    }
    l = &shm->cert[i];
    for ( ;; ) {
        wait = apr_atomic_read32(&l->ca_wait);
        if (wait > now) {
            *until = wait;
            return 1;
        }
        old = apr_atomic_read32(&l->forced_at);
        if (old != 0 && now - old < interval) {
            *until = old + interval;
            return 2;
        }
        /* of two requests at once, only the one whose swap lands passes */
        if (apr_atomic_cas32(&l->forced_at, now, old) == old) {
            *prev = old;
            return 0;
        }
    }
}

void
mod_acme_shm_renew_unclaim(mod_acme_shm_t *shm, int i, apr_uint32_t now, apr_uint32_t prev)
{
    if (shm != NULL && i >= 0 && (apr_uint32_t) i < shm->ncerts) {
        apr_atomic_cas32(&shm->cert[i].forced_at, prev, now);
    }
}

void
mod_acme_shm_set_ca_wait(mod_acme_shm_t *shm, int i, apr_uint32_t until)
{
    if (shm != NULL && i >= 0 && (apr_uint32_t) i < shm->ncerts) {
        apr_atomic_set32(&shm->cert[i].ca_wait, until);
    }
}

void
mod_acme_shm_set_ari_start(mod_acme_shm_t *shm)
{
    if (shm != NULL) {
        apr_atomic_set32(&shm->ari_start, 1);
    }
}

int
mod_acme_shm_take_ari_start(mod_acme_shm_t *shm)
{
    return shm != NULL && apr_atomic_cas32(&shm->ari_start, 0, 1) == 1;
}

int
mod_acme_shm_ari_claim(mod_acme_shm_t *shm, int i, apr_uint32_t now, apr_uint32_t interval,
                       apr_uint32_t *until)
{
    per_cert_t    *l;
    apr_uint32_t   old;

    if (shm == NULL || i < 0 || (apr_uint32_t) i >= shm->ncerts) {
        return -1;
    }
    l = &shm->cert[i];
    for ( ;; ) {
        old = apr_atomic_read32(&l->ari_at);
        if (old != 0 && now - old < interval) {
            *until = old + interval;
            return 2;
        }
        if (apr_atomic_cas32(&l->ari_at, now, old) == old) {
            apr_atomic_set32(&l->ari_want, 1);
            return 0;
        }
    }
}

int
mod_acme_shm_ari_take(mod_acme_shm_t *shm, int i)
{
    if (shm == NULL || i < 0 || (apr_uint32_t) i >= shm->ncerts) {
        return 0;
    }
    return apr_atomic_cas32(&shm->cert[i].ari_want, 0, 1) == 1;
}
