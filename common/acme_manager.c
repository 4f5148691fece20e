/* The manager: scheduling, issuing with issuer fallback, ARI checks, and status for a set of certificates. */
#include "acme_manager.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "acme_notify.h"
#include "acme_revocation.h"
#include "acme_sched.h"
#include "acme_x509.h"

#define MAX_RUNNING      8
#define BUSY_RETRY_MS    15000
/* the store could not be read or locked: nothing was ordered, so retry soon (doubling), not on the CA's
 * back-off, and keep a forced renewal pending */
#define STORE_RETRY_MIN_MS  5000L
#define STORE_RETRY_MAX_MS  300000L
#define QUEUE_RETRY_MS   2000
#define ARI_RETRY_SOON   600L       /* s: an ARI check that found the CA unreachable */
#define REVOKE_POLL_MS   60000L     /* how often ACME_REVOCATIONS_KEY is read */
#define REVOKE_BUSY_MS   5000L      /* a revocation whose certificate's lock another process holds */

typedef struct {
    char                *name;
    char                *directory_url;
    char                *ca_file;
    char               **contact;
    size_t               ncontact;
    char                *eab_kid;
    char                *eab_hmac_key;
    char                *account_key_file;
    char               **types;
    size_t               ntypes;
    const acme_dns_config_t *dns;
    char                *profile;
    int                  profile_required;
    char                *preferred_chain;
    int                  csr_no_cn;
    acme_client_conf_t   conf;
    acme_client_t       *client;
    unsigned long        orders;        /* issuance attempts started here */
    unsigned long        errors[ACME_ERR_BUSY + 1];     /* failed attempts by kind (metrics) */
} issuer_t;

typedef struct mcert_s mcert_t;

struct mcert_s {
    acme_manager_t      *m;
    char                *name;
    acme_ident_t        *ids;
    size_t               nids;
    acme_keyspec_t       ks;
    int                 *issuers;
    size_t               nissuers;
    size_t               issuer_i;
    acme_certmeta_t      meta;
    acme_timer_t        *timer;
    acme_issue_t        *job;
    unsigned long        job_seen;      /* the job's state changes the version counted */
    int                  ari_busy;
    int                  forced;
    int                  queued;        /* due, waiting for a free issuance slot */
    char                *profile;       /* per certificate, overrides the issuer's; NULL: the issuer's */
    acme_renew_reason_t  reason;
    time_t               next_at;
    int                  store_unread;  /* the last reload failed on the store, not "not found" */
    long                 store_retry_ms;
};

struct acme_manager_s {
    acme_loop_t          *loop;
    acme_store_t         *store;
    acme_manager_host_t   host;
    issuer_t            **issuers;
    size_t                nissuers;
    mcert_t             **certs;
    size_t                ncerts;
    size_t                running;
    unsigned long         version;      /* bumped by every change the status shows */
    long                  poll_timeout;
    int                   started;
    acme_notify_t        *notify;       /* NULL: no notifications */
    unsigned long         requests_seen;    /* the clients' counters the version counted */
    acme_timer_t         *revoke_timer;
    long                  revoke_poll_ms;
    char                 *revocations_seen; /* ACME_REVOCATIONS_KEY's text at the last poll */
};

static void cert_schedule(mcert_t *c);
static void cert_due(void *arg);
static void cert_reload(mcert_t *c, int notify);
static time_t cert_renewal(mcert_t *c, time_t now, acme_renew_reason_t *reason);

static char **
strv_dup(const char *const *v, size_t n)
{
    char    **r;
    size_t    i;

    r = calloc(n ? n : 1, sizeof(char *));
    for (i = 0; r != NULL && i < n; i++) {
        r[i] = acme_strdup(v[i]);
    }
    return r;
}

static void
strv_free(char **v, size_t n)
{
    size_t i;

    for (i = 0; v != NULL && i < n; i++) {
        free(v[i]);
    }
    free(v);
}

acme_manager_t *
acme_manager_new(acme_loop_t *loop, acme_store_t *store, const acme_manager_host_t *host, acme_err_t *err)
{
    acme_manager_t *m;

    m = calloc(1, sizeof(*m));
    if (m == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    m->loop = loop;
    m->store = store;
    if (host != NULL) {
        m->host = *host;
    }
    return m;
}

static void
issuer_free(issuer_t *is)
{
    acme_client_free(is->client);
    free(is->name);
    free(is->directory_url);
    free(is->ca_file);
    strv_free(is->contact, is->ncontact);
    free(is->eab_kid);
    acme_free_secret(is->eab_hmac_key, is->eab_hmac_key ? strlen(is->eab_hmac_key) : 0);
    free(is->account_key_file);
    strv_free(is->types, is->ntypes);
    free(is->profile);
    free(is->preferred_chain);
    free(is);
}

static void
cert_free(mcert_t *c)
{
    size_t i;

    acme_timer_cancel(c->m->loop, c->timer);
    acme_issue_cancel(c->job);
    for (i = 0; c->ari_busy && i < c->nissuers; i++) {
        /* an ARI check waits on a client (for its directory, or the answer): it must not call back */
        acme_client_forget(c->m->issuers[c->issuers[i]]->client, c);
    }
    free(c->name);
    for (i = 0; i < c->nids; i++) {
        acme_ident_free(&c->ids[i]);
    }
    free(c->ids);
    free(c->issuers);
    free(c->profile);
    acme_certmeta_free(&c->meta);
    free(c);
}

void
acme_manager_free(acme_manager_t *m)
{
    size_t i;

    if (m == NULL) {
        return;
    }
    for (i = 0; i < m->ncerts; i++) {
        cert_free(m->certs[i]);
    }
    free(m->certs);
    for (i = 0; i < m->nissuers; i++) {
        issuer_free(m->issuers[i]);
    }
    free(m->issuers);
    acme_notify_free(m->notify);
    acme_timer_cancel(m->loop, m->revoke_timer);
    free(m->revocations_seen);
    free(m);
}

int
acme_manager_set_notify(acme_manager_t *m, const acme_notify_conf_t *conf, acme_err_t *err)
{
    acme_notify_t *n = acme_notify_new(m->loop, conf, err);

    if (n == NULL) {
        return -1;
    }
    acme_notify_free(m->notify);
    m->notify = n;
    return 0;
}

int
acme_manager_notify_busy(acme_manager_t *m)
{
    return acme_notify_busy(m->notify);
}

/* One event of c for the notification program, if there is one. */
static void
cert_notify_by(mcert_t *c, size_t issuer_i, const char *event, const char *error, time_t ari_start,
    time_t ari_end, const char *warning)
{
    acme_notify_event_t  ev;
    char                *domains;
    size_t               i, len = 1;

    if (c->m->notify == NULL) {
        return;
    }
    for (i = 0; i < c->nids; i++) {
        len += strlen(c->ids[i].value) + 1;
    }
    domains = calloc(1, len);
    for (i = 0; domains != NULL && i < c->nids; i++) {
        if (i > 0) {
            strcat(domains, " ");
        }
        strcat(domains, c->ids[i].value);
    }
    memset(&ev, 0, sizeof(ev));
    ev.event = event;
    ev.name = c->name;
    ev.domains = domains;
    ev.issuer = c->m->issuers[c->issuers[issuer_i]]->name;
    ev.not_after = c->meta.not_after;
    ev.error = error;
    ev.ari_start = ari_start;
    ev.ari_end = ari_end;
    ev.warning = warning;
    acme_notify_event(c->m->notify, &ev);
    free(domains);
}

static void
cert_notify(mcert_t *c, const char *event, const char *error, time_t ari_start, time_t ari_end)
{
    cert_notify_by(c, c->issuer_i, event, error, ari_start, ari_end, NULL);
}

/*
 * Inside issue_done: the dns-persist-01 records the job of issuer issuer_i checked. A warning of this job's
 * (logged by it) runs "persist-expiring" naming that issuer; replace: the certificate's notes become the
 * job's (after a success: it stored them with the certificate, and cert_reload read them).
 */
static void
cert_persist_notes(mcert_t *c, size_t issuer_i, int replace)
{
    acme_persist_note_t  *notes;
    size_t                n, fresh, i;

    if (!acme_issue_take_persist_notes(&notes, &n, &fresh)) {
        return;
    }
    for (i = n - fresh; i < n; i++) {
        cert_notify_by(c, issuer_i, "persist-expiring", NULL, 0, 0, notes[i].warning);
    }
    if (!replace) {
        acme_persist_notes_free(notes, n);
        return;
    }
    acme_persist_notes_free(c->meta.persist_notes, c->meta.npersist_notes);
    c->meta.persist_notes = notes;
    c->meta.npersist_notes = n;
}

/*
 * "expiring": once per certificate, when it is within the threshold of its end; recorded in its meta
 * (restarts and reloads do not repeat it; a new certificate's meta starts without it).
 */
static void
cert_check_expiring(mcert_t *c, time_t now)
{
    if (c->m->notify == NULL || c->meta.not_after == 0 || c->meta.expiring_notified != 0
        || now < c->meta.not_after - acme_notify_expiring(c->m->notify))
    {
        return;
    }
    c->meta.expiring_notified = now;
    acme_store_meta_save(c->m->store, &c->meta, NULL);
    cert_notify(c, "expiring", NULL, 0, 0);
}

/*
 * acmectl revoked the stored certificate: once per revocation (recorded in the meta, under the
 * certificate's store lock, so another process or node that holds it, or looks later, does not repeat it),
 * run "revoked" and renew now. 1: the lock is held elsewhere (another node handling it, or renewing): look
 * again soon, without renewing meanwhile (acmectl made it due: that would race the node that handles it).
 */
static int
cert_check_revoked(mcert_t *c, time_t now)
{
    acme_manager_t  *m = c->m;
    acme_lock_t     *lk = NULL;
    acme_err_t       err;
    char             lockname[256], *serial = NULL, tb[32];
    int              rc;

    if (c->meta.revoked_serial == NULL || c->meta.revoked_handled != 0) {
        return 0;
    }
    snprintf(lockname, sizeof(lockname), "cert-%s", c->name);
    rc = m->store->ops->lock(m->store, lockname, &lk, &err);
    if (rc != 1) {
        return rc == 0;
    }
    cert_reload(c, 1);
    if (c->meta.revoked_serial == NULL || c->meta.revoked_handled != 0) {
        m->store->ops->unlock(lk);
        return 0;
    }
    rc = acme_revocation_stored_serial(m->store, c->name, &serial, &err);
    if (rc < 0) {
        m->store->ops->unlock(lk);
        acme_log(m->loop, ACME_LOG_WARN, "acme: \"%s\": cannot check the revocation acmectl recorded: %s",
                 c->name, err.msg);
        return 0;
    }
    if (rc == 1 || strcasecmp(serial, c->meta.revoked_serial) != 0) {
        /* a revocation of a certificate no longer stored: nothing to do */
        free(c->meta.revoked_serial);
        c->meta.revoked_serial = NULL;
        c->meta.revoked_at = 0;
        acme_store_meta_save(m->store, &c->meta, NULL);
        m->store->ops->unlock(lk);
        free(serial);
        return 0;
    }
    free(serial);
    c->meta.revoked_handled = now;
    rc = acme_store_meta_save(m->store, &c->meta, &err);
    m->store->ops->unlock(lk);
    if (rc != 0) {
        acme_log(m->loop, ACME_LOG_WARN, "acme: \"%s\": cannot record that its revocation was seen: %s",
                 c->name, err.msg);
        c->meta.revoked_handled = 0;
        return 0;
    }
    acme_log(m->loop, ACME_LOG_NOTICE, "acme: \"%s\": certificate %s was revoked at %s (acmectl revoke): "
             "renewing it now", c->name, c->meta.revoked_serial,
             acme_time_format(c->meta.revoked_at, tb, sizeof(tb)));
    cert_notify(c, "revoked", NULL, 0, 0);
    if (c->meta.ca_wait_until <= now) {
        c->forced = 1;
        c->meta.next_try = 0;
    }
    return 0;
}

void
acme_manager_set_poll_timeout(acme_manager_t *m, long seconds)
{
    m->poll_timeout = seconds;
}

int
acme_manager_add_issuer(acme_manager_t *m, const acme_issuer_conf_t *conf, acme_err_t *err)
{
    issuer_t  *is, **arr;

    is = calloc(1, sizeof(*is));
    arr = realloc(m->issuers, (m->nissuers + 1) * sizeof(*arr));
    if (is == NULL || arr == NULL) {
        free(is);
        if (arr != NULL) {
            m->issuers = arr;
        }
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    m->issuers = arr;
    is->name = acme_strdup(conf->name ? conf->name : conf->client.directory_url);
    is->directory_url = acme_strdup(conf->client.directory_url);
    is->ca_file = acme_strdup(conf->client.ca_file);
    is->contact = strv_dup(conf->client.contact, conf->client.ncontact);
    is->ncontact = conf->client.ncontact;
    is->eab_kid = acme_strdup(conf->client.eab_kid);
    is->eab_hmac_key = acme_strdup(conf->client.eab_hmac_key);
    is->account_key_file = acme_strdup(conf->client.account_key_file);
    is->dns = conf->dns;
    if (conf->challenge_types != NULL) {
        is->types = strv_dup(conf->challenge_types, conf->nchallenge_types);
        is->ntypes = conf->nchallenge_types;
    }
    is->profile = acme_strdup(conf->profile);
    is->profile_required = conf->profile_required;
    is->preferred_chain = acme_strdup(conf->preferred_chain);
    is->csr_no_cn = conf->csr_no_cn;

    is->conf = conf->client;
    is->conf.directory_url = is->directory_url;
    is->conf.ca_file = is->ca_file;
    is->conf.contact = (const char *const *) is->contact;
    is->conf.eab_kid = is->eab_kid;
    is->conf.eab_hmac_key = is->eab_hmac_key;
    is->conf.account_key_file = is->account_key_file;

    is->client = acme_client_new(m->loop, m->store, &is->conf, err);
    if (is->client == NULL) {
        acme_err_prefix(err, "issuer \"%s\"", is->name);
        issuer_free(is);
        return -1;
    }
    m->issuers[m->nissuers] = is;
    return (int) m->nissuers++;
}

static int
ids_equal(const acme_ident_t *a, size_t na, const acme_ident_t *b, size_t nb)
{
    size_t i, j;

    if (na != nb) {
        return 0;
    }
    for (i = 0; i < na; i++) {
        for (j = 0; j < nb; j++) {
            if (a[i].type == b[j].type && strcasecmp(a[i].value, b[j].value) == 0) {
                break;
            }
        }
        if (j == nb) {
            return 0;
        }
    }
    return 1;
}

const char *
acme_manager_add_cert(acme_manager_t *m, const acme_ident_t *ids, size_t nids, const acme_keyspec_t *ks,
    const int *issuers, size_t nissuers, acme_err_t *err)
{
    mcert_t   *c, **arr;
    size_t     i;
    char      *name;

    if (nids == 0 || nissuers == 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "a certificate needs identifiers and an issuer");
        return NULL;
    }
    for (i = 0; i < nissuers; i++) {
        if (issuers[i] < 0 || (size_t) issuers[i] >= m->nissuers) {
            acme_err_set(err, ACME_ERR_CONFIG, "unknown issuer index %d", issuers[i]);
            return NULL;
        }
    }
    name = acme_cert_name(ids, nids, ks);
    if (name == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    for (i = 0; i < m->ncerts; i++) {
        if (strcmp(m->certs[i]->name, name) == 0) {
            if (!ids_equal(ids, nids, m->certs[i]->ids, m->certs[i]->nids)) {
                acme_err_set(err, ACME_ERR_CONFIG, "certificate \"%s\" is configured twice with different "
                             "names", name);
                free(name);
                return NULL;
            }
            free(name);
            return m->certs[i]->name;
        }
    }
    c = calloc(1, sizeof(*c));
    arr = realloc(m->certs, (m->ncerts + 1) * sizeof(*arr));
    if (arr != NULL) {
        m->certs = arr;
    }
    if (c == NULL || arr == NULL) {
        free(c);
        free(name);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    c->m = m;
    c->name = name;
    c->ks = *ks;
    c->ids = calloc(nids, sizeof(acme_ident_t));
    c->issuers = calloc(nissuers, sizeof(int));
    if (c->ids == NULL || c->issuers == NULL) {
        free(c->ids);
        free(c->issuers);
        free(c->name);
        free(c);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    for (i = 0; i < nids; i++) {
        c->ids[i].type = ids[i].type;
        c->ids[i].value = acme_strdup(ids[i].value);
    }
    c->nids = nids;
    memcpy(c->issuers, issuers, nissuers * sizeof(int));
    c->nissuers = nissuers;
    m->certs[m->ncerts++] = c;
    if (m->started) {
        /* added while running (on-demand): scheduled now, from what the store has */
        cert_reload(c, 0);
        cert_schedule(c);
    }
    return c->name;
}

int
acme_manager_set_cert_profile(acme_manager_t *m, const char *name, const char *profile, acme_err_t *err)
{
    size_t i;

    for (i = 0; i < m->ncerts; i++) {
        mcert_t *c = m->certs[i];

        if (strcmp(c->name, name) != 0) {
            continue;
        }
        if (c->profile != NULL && (profile == NULL || strcmp(c->profile, profile) != 0)) {
            acme_err_set(err, ACME_ERR_CONFIG, "certificate \"%s\" is configured twice with different "
                         "profiles (\"%s\" and \"%s\")", name, c->profile, profile ? profile : "");
            return -1;
        }
        if (profile != NULL && c->profile == NULL) {
            c->profile = acme_strdup(profile);
            if (c->profile == NULL) {
                acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
                return -1;
            }
        }
        return 0;
    }
    acme_err_set(err, ACME_ERR_CONFIG, "unknown certificate \"%s\"", name);
    return -1;
}

/* ---- per certificate ---- */

/* A store error because the store is out of reach (Redis down), not because of what it holds. */
static int
store_down(acme_manager_t *m, const acme_err_t *err)
{
    acme_err_t  perr;

    return err->kind == ACME_ERR_STORE && acme_store_ping(m->store, &perr) != 0;
}

/* Read the store's view; a different issued_at than ours means a new certificate: tell the host. */
static void
cert_reload(mcert_t *c, int notify)
{
    acme_certmeta_t  fresh;
    acme_err_t       err;
    time_t           old = c->meta.issued_at;
    int              rc;

    memset(&fresh, 0, sizeof(fresh));
    err.kind = ACME_ERR_NONE;
    rc = acme_store_meta_load(c->m->store, c->name, &fresh, &err);
    c->store_unread = rc < 0 && store_down(c->m, &err);
    if (rc != 0) {
        return;
    }
    acme_certmeta_free(&c->meta);
    c->meta = fresh;
    if (notify && fresh.not_after != 0 && fresh.issued_at != old && c->m->host.cert_updated != NULL) {
        c->m->host.cert_updated(c->m->host.data, c->name);
    }
}

static int
cert_matches_config(mcert_t *c)
{
    return c->meta.not_after != 0
           && ids_equal(c->ids, c->nids, c->meta.ids, c->meta.nids)
           && c->meta.keyspec.alg == c->ks.alg && c->meta.keyspec.bits == c->ks.bits;
}

static time_t
cert_next(mcert_t *c, time_t now, acme_renew_reason_t *reason)
{
    if (c->forced) {
        *reason = ACME_RENEW_FORCED;
        return now;
    }
    if (c->meta.not_after != 0 && !cert_matches_config(c)) {
        if (c->meta.failures && c->meta.next_try > now) {
            *reason = ACME_RENEW_RETRY;
            return c->meta.next_try;
        }
        *reason = ACME_RENEW_NAMES;
        return now;
    }
    return acme_sched_next(&c->meta, now, reason);
}

static void
cert_schedule(mcert_t *c)
{
    time_t  now = time(NULL), when;
    long    ms;
    int     revoke_busy;

    acme_timer_cancel(c->m->loop, c->timer);
    c->timer = NULL;
    c->m->version++;
    if (c->job != NULL || c->ari_busy) {
        return;
    }
    cert_check_expiring(c, now);
    revoke_busy = cert_check_revoked(c, now);
    when = cert_next(c, now, &c->reason);
    if (revoke_busy && when < now + REVOKE_BUSY_MS / 1000) {
        when = now + REVOKE_BUSY_MS / 1000;
    }
    c->next_at = when;
    ms = when <= now ? 0 : (when - now > 86400 ? 86400L * 1000 : (long) (when - now) * 1000);
    c->timer = acme_timer_add(c->m->loop, ms, cert_due, c);
}

static void
cert_later(mcert_t *c, long ms)
{
    c->m->version++;
    acme_timer_cancel(c->m->loop, c->timer);
    c->next_at = time(NULL) + ms / 1000;
    c->timer = acme_timer_add(c->m->loop, ms, cert_due, c);
}

/* Nothing was asked of the CA: the store could not be read or the lock not taken. */
static void
cert_store_retry(mcert_t *c, const char *msg)
{
    c->store_retry_ms = c->store_retry_ms == 0 ? STORE_RETRY_MIN_MS
                        : (c->store_retry_ms * 2 > STORE_RETRY_MAX_MS ? STORE_RETRY_MAX_MS
                                                                      : c->store_retry_ms * 2);
    acme_log(c->m->loop, ACME_LOG_ERR, "acme: \"%s\": storage unreachable, nothing ordered: %s; trying again "
             "in %ld s", c->name, msg, c->store_retry_ms / 1000);
    /* the status shows it; the store cannot keep it */
    free(c->meta.last_error);
    c->meta.last_error = acme_sprintf("storage unreachable: %s", msg);
    c->meta.last_error_at = time(NULL);
    cert_later(c, c->store_retry_ms);
}

static void
cert_record_failure(mcert_t *c, const acme_err_t *err)
{
    time_t      now = time(NULL);
    acme_err_t  serr;

    c->m->version++;
    if (c->meta.name == NULL) {
        /* no certificate yet: a meta record of its own, so status and back-off survive restarts */
        size_t i;
        c->meta.name = acme_strdup(c->name);
        c->meta.ids = calloc(c->nids, sizeof(acme_ident_t));
        for (i = 0; c->meta.ids != NULL && i < c->nids; i++) {
            c->meta.ids[i].type = c->ids[i].type;
            c->meta.ids[i].value = acme_strdup(c->ids[i].value);
        }
        c->meta.nids = c->meta.ids ? c->nids : 0;
        c->meta.keyspec = c->ks;
    }
    /* a forced renewal is one attempt: a failure waits for the back-off like any other */
    c->forced = 0;
    c->meta.failures++;
    c->meta.next_try = acme_sched_next_try(err->kind, c->meta.failures, err->retry_after, acme_random(),
                                           now, c->meta.not_after);
    c->meta.ca_wait_until = acme_sched_ca_wait(err->kind, err->retry_after, now, c->meta.next_try);
    free(c->meta.last_error);
    c->meta.last_error = acme_strdup(err->msg);
    c->meta.last_error_at = now;
    if (acme_store_meta_save(c->m->store, &c->meta, &serr) != 0) {
        acme_log(c->m->loop, ACME_LOG_ERR, "acme: \"%s\": cannot record the failure in the store: %s", c->name,
                 serr.msg);
    }
    {
        char tb[32];
        acme_log(c->m->loop, ACME_LOG_ERR, "acme: \"%s\": %s; next try at %s", c->name, err->msg,
                 acme_time_format(c->meta.next_try, tb, sizeof(tb)));
    }
    cert_notify(c, "failed", err->msg, 0, 0);
}

static void cert_issue(mcert_t *c);

static void
issuer_count_error(issuer_t *is, const acme_err_t *err)
{
    if ((size_t) err->kind < sizeof(is->errors) / sizeof(is->errors[0])) {
        is->errors[err->kind]++;
    }
}

/* A slot is free: the first certificate waiting for one goes next (in configuration order). */
static void
queue_wake(acme_manager_t *m)
{
    size_t i;

    for (i = 0; i < m->ncerts; i++) {
        mcert_t *q = m->certs[i];
        if (q->queued && q->job == NULL && !q->ari_busy) {
            q->queued = 0;
            cert_later(q, 0);
            return;
        }
    }
}

static void
issue_done(void *arg, const char *name, const acme_err_t *err)
{
    mcert_t         *c = arg;
    acme_manager_t  *m = c->m;
    time_t           now = time(NULL);
    acme_renew_reason_t r;
    acme_err_t       serr;

    (void) name;
    c->job = NULL;
    m->running--;
    m->version++;
    queue_wake(m);
    if (err == NULL) {
        time_t  before = c->meta.not_after;
        size_t  issued_by = c->issuer_i;

        c->forced = 0;
        c->issuer_i = 0;
        cert_reload(c, 0);
        c->meta.failures = 0;
        c->meta.next_try = 0;
        c->meta.ca_wait_until = 0;
        free(c->meta.last_error);
        c->meta.last_error = NULL;
        acme_ident_errors_free(c->meta.ident_errors, c->meta.nident_errors);
        c->meta.ident_errors = NULL;
        c->meta.nident_errors = 0;
        c->meta.renew_at = acme_sched_renew_time(&c->meta, acme_random(), now, &r);
        c->meta.ari_next_check = now;
        c->meta.expiring_notified = 0;      /* a new certificate */
        if (acme_store_meta_save(m->store, &c->meta, &serr) != 0) {
            acme_log(m->loop, ACME_LOG_WARN, "acme: \"%s\": cannot store the renewal schedule: %s", c->name,
                     serr.msg);
        }
        if (m->host.cert_updated != NULL) {
            m->host.cert_updated(m->host.data, c->name);
        }
        cert_notify_by(c, issued_by, before != 0 ? "renewed" : "issued", NULL, 0, 0, NULL);
        cert_persist_notes(c, issued_by, 0);
        cert_schedule(c);
        return;
    }
    if (err->kind == ACME_ERR_BUSY) {
        cert_later(c, BUSY_RETRY_MS);
        return;
    }
    issuer_count_error(m->issuers[c->issuers[c->issuer_i]], err);
    {
        acme_ident_error_t *ie;
        size_t              n = acme_issue_take_ident_errors(&ie);

        if (n > 0) {
            acme_ident_errors_free(c->meta.ident_errors, c->meta.nident_errors);
            c->meta.ident_errors = ie;
            c->meta.nident_errors = n;
        }
    }
    /* a fallback issuer's failed check leaves the warnings of the certificate in service as they are */
    cert_persist_notes(c, c->issuer_i,
                       acme_persist_notes_concern(&c->meta, m->issuers[c->issuers[c->issuer_i]]->directory_url));
    if (c->issuer_i + 1 < c->nissuers && err->kind != ACME_ERR_STORE) {
        acme_log(m->loop, ACME_LOG_WARN, "acme: \"%s\": issuer \"%s\" failed, trying \"%s\": %s", c->name,
                 m->issuers[c->issuers[c->issuer_i]]->name, m->issuers[c->issuers[c->issuer_i + 1]]->name,
                 err->msg);
        c->issuer_i++;
        cert_issue(c);
        return;
    }
    c->issuer_i = 0;
    cert_record_failure(c, err);
    cert_schedule(c);
}

static void
cert_issue(mcert_t *c)
{
    acme_manager_t        *m = c->m;
    issuer_t              *is = m->issuers[c->issuers[c->issuer_i]];
    acme_issue_req_t       req;
    acme_err_t             err;

    memset(&req, 0, sizeof(req));
    req.name = c->name;
    req.ids = c->ids;
    req.nids = c->nids;
    req.keyspec = c->ks;
    req.challenge_types = (const char *const *) is->types;
    req.nchallenge_types = is->ntypes;
    req.dns = is->dns;
    req.profile = c->profile ? c->profile : is->profile;
    req.profile_required = c->profile ? 0 : is->profile_required;
    req.preferred_chain = is->preferred_chain;
    req.csr_no_cn = is->csr_no_cn;
    req.poll_timeout = m->poll_timeout;
    if (c->meta.not_after != 0 && c->meta.ca != NULL && strcmp(c->meta.ca, is->directory_url) == 0) {
        req.replaces = c->meta.ari_cert_id;
    }
    req.check_seen = !c->forced;
    req.seen_issued_at = c->meta.issued_at;

    acme_log(m->loop, ACME_LOG_NOTICE, "acme: \"%s\": %s from \"%s\"", c->name,
             acme_renew_reason_name(c->reason), is->name);
    c->job = acme_issue_start(is->client, &req, &m->host.challenges, issue_done, c, &err);
    if (c->job == NULL) {
        if (err.kind == ACME_ERR_BUSY) {
            acme_log(m->loop, ACME_LOG_INFO, "acme: %s; checking again later", err.msg);
            cert_later(c, BUSY_RETRY_MS);
            return;
        }
        if (store_down(m, &err)) {
            cert_store_retry(c, err.msg);
            return;
        }
        is->orders++;
        issuer_count_error(is, &err);
        cert_record_failure(c, &err);
        cert_schedule(c);
        return;
    }
    is->orders++;
    c->store_retry_ms = 0;
    c->job_seen = acme_issue_state_changes(c->job);
    m->running++;
    m->version++;
}

static void
ari_done(void *arg, const acme_renewal_info_t *ri, long retry_after, const acme_err_t *err)
{
    mcert_t  *c = arg;
    time_t    now = time(NULL);
    acme_renew_reason_t r;

    c->ari_busy = 0;
    c->m->version++;
    if (ri != NULL) {
        if (c->meta.ari_start != ri->start || c->meta.ari_end != ri->end) {
            char    b1[32], b2[32];
            time_t  known = c->meta.ari_start;

            c->meta.ari_start = ri->start;
            c->meta.ari_end = ri->end;
            c->meta.renew_at = acme_sched_renew_time(&c->meta, acme_random(), now, &r);
            /* a CA moving a window for an incident says why at explanationURL: the admin wants it */
            acme_log(c->m->loop, ri->explanation_url ? ACME_LOG_NOTICE : ACME_LOG_INFO,
                     "acme: \"%s\": ARI window updated: %s to %s%s%s", c->name,
                     acme_time_format(ri->start, b1, sizeof(b1)), acme_time_format(ri->end, b2, sizeof(b2)),
                     ri->explanation_url ? "; the CA explains: " : "",
                     ri->explanation_url ? ri->explanation_url : "");
            if (known != 0) {
                /* the first window learned is no news; a window moved is */
                cert_notify(c, "ari-moved", NULL, ri->start, ri->end);
            }
        }
        free(c->meta.ari_explanation_url);
        c->meta.ari_explanation_url = acme_strdup(ri->explanation_url);
    } else if (err != NULL) {
        acme_log(c->m->loop, ACME_LOG_WARN, "acme: \"%s\": renewalInfo: %s", c->name, err->msg);
    }
    c->meta.ari_next_check = acme_sched_ari_next_check(now, retry_after, acme_random());
    acme_store_meta_save(c->m->store, &c->meta, NULL);
    cert_schedule(c);
}

/* The issuer that issued the stored certificate (renewalInfo is asked there), else the first. */
static issuer_t *
cert_issuer(mcert_t *c)
{
    size_t i;

    for (i = 0; i < c->nissuers; i++) {
        if (c->meta.ca && strcmp(c->m->issuers[c->issuers[i]]->directory_url, c->meta.ca) == 0) {
            return c->m->issuers[c->issuers[i]];
        }
    }
    return c->m->issuers[c->issuers[0]];
}

/* 0 when the directory of the certificate's issuer is known and has no renewalInfo: the daily look at the
 * directory for it is no ARI check worth showing */
static int
cert_issuer_has_ari(mcert_t *c)
{
    const acme_directory_t *dir = acme_client_directory(cert_issuer(c)->client);

    return dir == NULL || dir->renewal_info != NULL;
}

static void
ari_ready(void *arg, const acme_err_t *err)
{
    mcert_t                 *c = arg;
    issuer_t                *is = cert_issuer(c);
    const acme_directory_t  *dir;
    char                    *pem = NULL;
    size_t                   len = 0;
    STACK_OF(X509)          *chain = NULL;
    acme_err_t               e;

    dir = err ? NULL : acme_client_directory(is->client);
    if (dir == NULL || dir->renewal_info == NULL
        || acme_store_cert_load(c->m->store, c->name, &pem, &len, NULL, NULL, NULL, &e) != 0
        || acme_pem_chain_parse(pem, len, &chain, &e) != 0
        || acme_client_renewal_info(is->client, sk_X509_value(chain, 0), ari_done, c, &e) != 0)
    {
        /* no ARI at this CA: look again in a day; the CA unreachable now: soon */
        c->ari_busy = 0;
        c->meta.ari_next_check = time(NULL) + (dir == NULL ? ARI_RETRY_SOON : 86400);
        if (dir == NULL) {
            acme_log(c->m->loop, ACME_LOG_WARN, "acme: \"%s\": renewalInfo not asked: %s; again in %ld s",
                     c->name, err ? err->msg : "no directory", ARI_RETRY_SOON);
        }
        acme_store_meta_save(c->m->store, &c->meta, NULL);
        free(pem);
        acme_chain_free(chain);
        cert_schedule(c);
        return;
    }
    free(pem);
    acme_chain_free(chain);
}

static void
cert_due(void *arg)
{
    mcert_t             *c = arg;
    acme_manager_t      *m = c->m;
    time_t               now = time(NULL);
    acme_renew_reason_t  reason;
    issuer_t            *is;
    acme_err_t           err;

    c->timer = NULL;
    if (c->job != NULL || c->ari_busy) {
        return;
    }
    cert_reload(c, 1);
    if (c->store_unread && c->meta.not_after == 0 && c->meta.name == NULL) {
        /* nothing known of it yet: "missing" would be a guess */
        cert_store_retry(c, "cannot read its state");
        return;
    }
    if (cert_next(c, now, &reason) > now) {
        cert_schedule(c);
        return;
    }
    c->reason = reason;
    if (reason == ACME_RENEW_NONE) {
        /* only an ARI re-check is due */
        is = cert_issuer(c);
        c->ari_busy = 1;
        if (acme_client_ready(is->client, ari_ready, c, &err) != 0) {
            c->ari_busy = 0;
            c->meta.ari_next_check = now + ARI_RETRY_SOON;
            cert_schedule(c);
        }
        return;
    }
    if (m->running >= MAX_RUNNING) {
        /* woken when a slot frees up; the timer is only the safety net */
        c->queued = 1;
        cert_later(c, QUEUE_RETRY_MS);
        return;
    }
    c->queued = 0;
    cert_issue(c);
}

/*
 * acmectl revoke lists its revocations in one key: when its text changed, the certificates it names are
 * read again (cert_schedule then acts on a revocation). One store read per poll, whatever the count.
 */
static void
revocations_poll(void *arg)
{
    acme_manager_t  *m = arg;
    char            *text = NULL, **names;
    size_t           len = 0, n, i, j;
    acme_err_t       err;
    mcert_t         *c;

    m->revoke_timer = acme_timer_add(m->loop, m->revoke_poll_ms, revocations_poll, m);
    if (acme_store_get(m->store, ACME_REVOCATIONS_KEY, &text, &len, &err) != 0) {
        /* none yet, or the store out of reach (the certificates' own timers say so): the next poll */
        free(text);
        return;
    }
    if (m->revocations_seen != NULL && strcmp(m->revocations_seen, text) == 0) {
        free(text);
        return;
    }
    free(m->revocations_seen);
    m->revocations_seen = text;
    if (acme_revocation_names(text, len, &names, &n) != 0) {
        return;
    }
    for (i = 0; i < n; i++) {
        for (j = 0; j < m->ncerts; j++) {
            c = m->certs[j];
            if (strcmp(c->name, names[i]) == 0 && c->job == NULL && !c->ari_busy) {
                cert_reload(c, 1);
                cert_schedule(c);
            }
        }
    }
    acme_store_list_free(names, n);
}

int
acme_manager_start(acme_manager_t *m, acme_err_t *err)
{
    size_t       i;
    const char  *v;

    (void) err;
    for (i = 0; i < m->ncerts; i++) {
        cert_reload(m->certs[i], 0);
        cert_schedule(m->certs[i]);
    }
    m->started = 1;
    /* tests only: a shorter poll */
    v = getenv("ACME_TEST_REVOCATION_POLL_MS");
    m->revoke_poll_ms = v != NULL && atol(v) >= 100 ? atol(v) : REVOKE_POLL_MS;
    m->revoke_timer = acme_timer_add(m->loop, m->revoke_poll_ms, revocations_poll, m);
    return 0;
}

static mcert_t *
find_cert(acme_manager_t *m, const char *what)
{
    size_t i, j;

    for (i = 0; i < m->ncerts; i++) {
        if (strcmp(m->certs[i]->name, what) == 0) {
            return m->certs[i];
        }
    }
    for (i = 0; i < m->ncerts; i++) {
        for (j = 0; j < m->certs[i]->nids; j++) {
            if (strcasecmp(m->certs[i]->ids[j].value, what) == 0) {
                return m->certs[i];
            }
        }
    }
    return NULL;
}

int
acme_manager_renew(acme_manager_t *m, const char *what, time_t *until)
{
    mcert_t  *c = find_cert(m, what);

    if (c == NULL) {
        return -1;
    }
    if (c->meta.ca_wait_until > time(NULL)) {
        if (until != NULL) {
            *until = c->meta.ca_wait_until;
        }
        return 1;
    }
    if (c->job == NULL) {
        c->forced = 1;
        c->meta.next_try = 0;
        cert_later(c, 0);
    }
    return 0;
}

int
acme_manager_ari_check(acme_manager_t *m, const char *what)
{
    mcert_t     *c, *one = NULL;
    size_t       i, n = 0;
    long         spread;
    time_t       now = time(NULL), at;
    acme_err_t   serr;

    if (what != NULL && (one = find_cert(m, what)) == NULL) {
        return -1;
    }
    for (i = 0; i < m->ncerts; i++) {
        c = m->certs[i];
        if (one == NULL || c == one) {
            cert_reload(c, 1);
            n += c->meta.not_after != 0;
        }
    }
    spread = acme_sched_ari_spread(n);
    n = 0;
    for (i = 0; i < m->ncerts; i++) {
        c = m->certs[i];
        /* nothing stored to ask about; a check in flight; an issuance ends with a check anyway */
        if ((one != NULL && c != one) || c->meta.not_after == 0 || c->ari_busy || c->job != NULL) {
            continue;
        }
        at = now + (time_t) (acme_random() * (double) spread);
        if (c->meta.ari_next_check == 0 || at < c->meta.ari_next_check) {
            /* stored: a timer that fires reloads the store's view first */
            c->meta.ari_next_check = at;
            if (acme_store_meta_save(m->store, &c->meta, &serr) != 0) {
                acme_log(m->loop, ACME_LOG_WARN, "acme: \"%s\": cannot store the ARI re-check: %s", c->name,
                         serr.msg);
            }
        }
        n++;
        if (m->started) {
            cert_schedule(c);
        }
    }
    return (int) n;
}

int
acme_manager_cert_info(acme_manager_t *m, const char *name, acme_manager_cert_info_t *info)
{
    mcert_t              *c = find_cert(m, name);
    acme_renew_reason_t   reason;

    if (c == NULL) {
        return -1;
    }
    info->not_after = c->meta.not_after;
    info->failures = c->meta.failures;
    info->issuing = c->job != NULL;
    info->last_error = c->meta.last_error;
    info->renew_at = cert_renewal(c, time(NULL), &reason);
    return 0;
}

int
acme_manager_reload_cert(acme_manager_t *m, const char *what)
{
    mcert_t  *c = find_cert(m, what);

    if (c == NULL) {
        return -1;
    }
    if (!m->started || c->job != NULL || c->ari_busy) {
        return 0;
    }
    cert_reload(c, 1);
    cert_schedule(c);
    return 0;
}

int
acme_manager_remove_cert(acme_manager_t *m, const char *name)
{
    size_t i;

    for (i = 0; i < m->ncerts; i++) {
        if (strcmp(m->certs[i]->name, name) == 0) {
            mcert_t *c = m->certs[i];

            if (c->job != NULL) {
                m->running--;
            }
            memmove(&m->certs[i], &m->certs[i + 1], (m->ncerts - i - 1) * sizeof(mcert_t *));
            m->ncerts--;
            m->version++;
            cert_free(c);
            queue_wake(m);
            return 0;
        }
    }
    return -1;
}

time_t
acme_manager_ca_wait(acme_manager_t *m, const char *what)
{
    mcert_t  *c = find_cert(m, what);

    if (c == NULL) {
        return -1;
    }
    return c->meta.ca_wait_until > time(NULL) ? c->meta.ca_wait_until : 0;
}

/* When the certificate will be renewed and why, leaving ARI re-checks aside (for status). */
static time_t
cert_renewal(mcert_t *c, time_t now, acme_renew_reason_t *reason)
{
    time_t when = cert_next(c, now, reason);

    if (*reason == ACME_RENEW_NONE) {
        when = acme_sched_renewal(&c->meta, now, reason);
    }
    return when;
}

/* Per issuer, what the metrics count: orders, failed attempts by kind, the client's own counters. */
static json_t *
issuers_status(acme_manager_t *m)
{
    json_t                     *arr, *o, *errs;
    size_t                      i;
    int                         k;
    issuer_t                   *is;
    const acme_client_stats_t  *st;

    arr = json_array();
    for (i = 0; arr != NULL && i < m->nissuers; i++) {
        is = m->issuers[i];
        st = acme_client_stats(is->client);
        errs = json_object();
        for (k = ACME_ERR_INTERNAL; k < ACME_ERR_BUSY; k++) {
            json_object_set_new(errs, acme_err_kind_name((acme_err_kind_t) k), json_integer(is->errors[k]));
        }
        o = json_pack("{s:s, s:I, s:o, s:I, s:I, s:I}", "name", is->name, "orders", (json_int_t) is->orders,
                      "errors", errs, "requests", (json_int_t) st->requests,
                      "bad_nonce_retries", (json_int_t) st->bad_nonce_retries,
                      "rate_limited", (json_int_t) st->rate_limited);
        json_array_append_new(arr, o);
    }
    return arr;
}

json_t *
acme_manager_status(acme_manager_t *m)
{
    json_t       *arr, *o, *ids;
    size_t        i, j;
    mcert_t      *c;
    char          b[32], ks[16];
    time_t        now = time(NULL), renew_at;
    const char   *state;
    acme_renew_reason_t reason;

    arr = json_array();
    for (i = 0; i < m->ncerts; i++) {
        c = m->certs[i];
        ids = json_array();
        for (j = 0; j < c->nids; j++) {
            json_array_append_new(ids, json_string(c->ids[j].value));
        }
        if (c->job != NULL) {
            state = "renewing";
        } else if (c->meta.not_after == 0) {
            state = c->meta.failures ? "failing" : "pending";
        } else if (c->meta.not_after <= now) {
            state = "expired";
        } else {
            state = c->meta.failures ? "failing" : "valid";
        }
        o = json_pack("{s:s, s:o, s:s, s:s}", "name", c->name, "identifiers", ids,
                      "issuer", c->meta.ca ? c->meta.ca : m->issuers[c->issuers[0]]->directory_url,
                      "key_type", acme_keyspec_str(&c->ks, ks, sizeof(ks)));
        json_object_set_new(o, "issuer_name", json_string(m->issuers[c->issuers[c->issuer_i]]->name));
        json_object_set_new(o, "not_before", c->meta.not_before
                            ? json_string(acme_time_format(c->meta.not_before, b, sizeof(b))) : json_null());
        json_object_set_new(o, "not_after", c->meta.not_after
                            ? json_string(acme_time_format(c->meta.not_after, b, sizeof(b))) : json_null());
        renew_at = cert_renewal(c, now, &reason);
        json_object_set_new(o, "next_renewal", json_string(acme_time_format(renew_at, b, sizeof(b))));
        json_object_set_new(o, "renewal_reason", json_string(acme_renew_reason_name(reason)));
        if (c->meta.ari_next_check != 0 && cert_issuer_has_ari(c)) {
            json_object_set_new(o, "next_ari_check",
                                json_string(acme_time_format(c->meta.ari_next_check, b, sizeof(b))));
        }
        if (c->meta.ari_start != 0) {
            json_t *w = json_object();
            json_object_set_new(w, "start", json_string(acme_time_format(c->meta.ari_start, b, sizeof(b))));
            json_object_set_new(w, "end", json_string(acme_time_format(c->meta.ari_end, b, sizeof(b))));
            json_object_set_new(o, "ari_window", w);
            if (c->meta.ari_explanation_url != NULL) {
                json_object_set_new(o, "ari_explanation_url", json_string(c->meta.ari_explanation_url));
            }
        }
        json_object_set_new(o, "state", json_string(state));
        if (c->job != NULL) {
            json_object_set_new(o, "progress", json_string(acme_issue_state(c->job)));
        }
        json_object_set_new(o, "failures", json_integer(c->meta.failures));
        json_object_set_new(o, "last_success", c->meta.issued_at
                            ? json_string(acme_time_format(c->meta.issued_at, b, sizeof(b))) : json_null());
        json_object_set_new(o, "last_failure", c->meta.last_error_at
                            ? json_string(acme_time_format(c->meta.last_error_at, b, sizeof(b))) : json_null());
        json_object_set_new(o, "last_error", c->meta.last_error ? json_string(c->meta.last_error)
                                                                : json_null());
        json_object_set_new(o, "identifier_errors", acme_certmeta_ident_errors_json(&c->meta));
        json_object_set_new(o, "identifier_warnings", acme_certmeta_ident_warnings_json(&c->meta));
        if (c->meta.ca_wait_until > now) {
            json_object_set_new(o, "ca_retry_after",
                                json_string(acme_time_format(c->meta.ca_wait_until, b, sizeof(b))));
        }
        json_array_append_new(arr, o);
    }
    return json_pack("{s:o, s:o}", "certificates", arr, "issuers", issuers_status(m));
}

unsigned long
acme_manager_version(acme_manager_t *m)
{
    size_t         i;
    unsigned long  n;

    /* the clients' counters (metrics) too: a renewal's requests show without waiting for its end */
    n = 0;
    for (i = 0; i < m->nissuers; i++) {
        const acme_client_stats_t *st = acme_client_stats(m->issuers[i]->client);

        n += st->requests + st->bad_nonce_retries + st->rate_limited;
    }
    if (n != m->requests_seen) {
        m->requests_seen = n;
        m->version++;
    }
    /* a running issuance's progress text counts as a change, so hosts need not poll while busy */
    for (i = 0; m->running > 0 && i < m->ncerts; i++) {
        if (m->certs[i]->job != NULL) {
            n = acme_issue_state_changes(m->certs[i]->job);
            if (n != m->certs[i]->job_seen) {
                m->certs[i]->job_seen = n;
                m->version++;
            }
        }
    }
    return m->version;
}

int
acme_manager_busy(acme_manager_t *m)
{
    return m->running > 0;
}
