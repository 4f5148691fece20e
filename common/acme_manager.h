/*
 * The manager: the set of certificates a server keeps, each with its issuers in fallback order. It loads
 * what the store has, decides with the scheduler when each certificate needs work (issue, renew, ARI
 * re-check, retry after back-off), runs the issuance, and tells the host when a certificate changed.
 * nginx runs it in one worker's event loop, Apache in one background thread.
 */
#ifndef ACME_MANAGER_H
#define ACME_MANAGER_H

#include <jansson.h>
#include "acme_client.h"
#include "acme_issue.h"
#include "acme_store.h"
#include "acme_notify.h"

typedef struct {
    const char          *name;              /* the admin's name for it ("letsencrypt") */
    acme_client_conf_t   client;
    const char *const   *challenge_types;   /* preference order, NULL: http-01, tls-alpn-01 */
    size_t               nchallenge_types;
    const acme_dns_config_t *dns;           /* DNS challenges' records (the caller's, alive as long as the
                                               manager); NULL: none */
    const char          *profile;
    int                  profile_required;
    const char          *preferred_chain;
    int                  csr_no_cn;         /* no subject CN in the CSRs */
} acme_issuer_conf_t;

typedef struct {
    void                   *data;
    acme_challenge_host_t   challenges;
    /* A certificate in the store changed (new issuance): reload and serve it. */
    void                  (*cert_updated)(void *data, const char *name);
} acme_manager_host_t;

typedef struct acme_manager_s acme_manager_t;

acme_manager_t *acme_manager_new(acme_loop_t *loop, acme_store_t *store, const acme_manager_host_t *host,
    acme_err_t *err);
void acme_manager_free(acme_manager_t *m);

/* Returns the issuer's index, -1 with err. Strings are copied. */
int acme_manager_add_issuer(acme_manager_t *m, const acme_issuer_conf_t *conf, acme_err_t *err);

/* A certificate for ids with key type ks, from issuers[0], falling back to issuers[1..]. Returns its store
 * name (owned by the manager), NULL with err. The same ids and key type twice share one entry. Added after
 * acme_manager_start (on-demand), it is scheduled at once. */
const char *acme_manager_add_cert(acme_manager_t *m, const acme_ident_t *ids, size_t nids,
    const acme_keyspec_t *ks, const int *issuers, size_t nissuers, acme_err_t *err);

/*
 * A profile for this certificate (a name acme_manager_add_cert returned), instead of its issuers'
 * profile: DNS and IP certificates at one CA can differ. Not required: a CA without it means its default.
 * The same certificate configured twice with different profiles is refused.
 */
int acme_manager_set_cert_profile(acme_manager_t *m, const char *name, const char *profile, acme_err_t *err);

/*
 * Notifications (acme_notify.h): the program run on each certificate's events (issued, renewed, failed,
 * expiring, ari-moved, revoked). Before acme_manager_start. -1 with err: the program is not an executable file.
 */
int acme_manager_set_notify(acme_manager_t *m, const acme_notify_conf_t *conf, acme_err_t *err);
/* 1 while a notification is queued or running. */
int acme_manager_notify_busy(acme_manager_t *m);
/* Schedule everything (loads the store's state). */
int acme_manager_start(acme_manager_t *m, acme_err_t *err);

/*
 * Renew now: what is a certificate's store name or any of its identifiers. 0 started, -1 unknown, 1 refused:
 * the CA asked to wait until *until (its Retry-After after rateLimited/429; only acmectl renew --force,
 * which does not go through the manager, overrides it). A forced renewal is one attempt: a failure waits
 * for the back-off.
 */
int acme_manager_renew(acme_manager_t *m, const char *what, time_t *until);
/*
 * Ask the CA's renewal information again, without forcing a renewal: what is a certificate's store name or
 * identifier, NULL every certificate that has one stored. The checks of several are spread at random over
 * acme_sched_ari_spread(n) seconds; a window that says "renew now" then starts the renewal as usual. Hosts
 * call it with NULL once when the server starts (not on reloads): a window the CA opened while the CA's
 * Retry-After kept us from asking is seen at once. Returns how many were scheduled, -1: unknown.
 */
int acme_manager_ari_check(acme_manager_t *m, const char *what);
/* Until when the CA asked to wait (0: it did not, -1: unknown certificate): adapters publish it so their
 * status handlers can refuse a forced renewal at once. */
time_t acme_manager_ca_wait(acme_manager_t *m, const char *what);

/* What the host needs of one certificate (on-demand waits): the pointers stay valid until the next call
 * into the manager. 0, -1 unknown. */
typedef struct {
    time_t       not_after;             /* 0: none issued */
    unsigned     failures;              /* since the last success */
    int          issuing;
    time_t       renew_at;              /* the next renewal (ARI re-checks aside) */
    const char  *last_error;
} acme_manager_cert_info_t;
int acme_manager_cert_info(acme_manager_t *m, const char *name, acme_manager_cert_info_t *info);

/* Another process changed a certificate in the shared store (its announcement): read the store's record
 * again now, not at the next timer (a manager that found the certificate's lock taken looks again only
 * after a while); cert_updated is called when it is a new certificate. Nothing while an issuance or an ARI
 * check runs for it. 0, -1 unknown. */
int acme_manager_reload_cert(acme_manager_t *m, const char *what);

/* Stops managing a certificate (its store records stay): an on-demand name no longer used or allowed. A
 * running issuance is cancelled. 0, -1 unknown. */
int acme_manager_remove_cert(acme_manager_t *m, const char *name);

/* Changes whenever something acme_manager_status() reports changes, the progress text of a running issuance
 * included (checked when called): hosts rebuild their status snapshot only then. */
unsigned long acme_manager_version(acme_manager_t *m);
/* 1 while an issuance runs (hosts wait for it before handing over on reload). */
int acme_manager_busy(acme_manager_t *m);

/* {"certificates": [{name, identifiers, issuer, key_type, not_before, not_after, next_renewal,
 * renewal_reason, state, failures, last_success, last_failure, last_error, ...}],
 *  "issuers": [{name, orders, errors: {kind: n}, requests, bad_nonce_retries, rate_limited}]}: the counters
 * count since the manager was made (acme_metrics.h renders the document for Prometheus). */
json_t *acme_manager_status(acme_manager_t *m);

/* Tests and benchmarks: seconds for the first retry after a network error (default from the scheduler). */
void acme_manager_set_poll_timeout(acme_manager_t *m, long seconds);

#endif
