/* The renewal scheduler: pure functions deciding when to act on a certificate. */
#ifndef ACME_SCHED_H
#define ACME_SCHED_H

#include <time.h>
#include "acme_err.h"
#include "acme_store.h"

typedef enum {
    ACME_RENEW_NONE = 0,
    ACME_RENEW_MISSING,        /* no certificate yet */
    ACME_RENEW_NAMES,          /* configured identifiers or key type differ from the stored certificate */
    ACME_RENEW_ARI,            /* inside the CA's suggested window */
    ACME_RENEW_LIFETIME,       /* 2/3 of the lifetime (1/2 for lifetimes of 10 days or less) */
    ACME_RENEW_EXPIRED,
    ACME_RENEW_FORCED,
    ACME_RENEW_RETRY           /* a failed attempt's back-off ended */
} acme_renew_reason_t;

const char *acme_renew_reason_name(acme_renew_reason_t r);

/*
 * The renewal time for a stored certificate: with an ARI window, start + rnd * (end - start) (rnd in
 * [0,1), chosen once and kept in meta->renew_at by the caller); an ARI window already past: now; the
 * part of a window later than a tenth of the lifetime before notAfter is cut off (renew before expiry).
 * Without: not_before + 2/3 lifetime, or 1/2 when the lifetime is 10 days or less.
 * *reason is ARI or LIFETIME.
 */
time_t acme_sched_renew_time(const acme_certmeta_t *m, double rnd, time_t now, acme_renew_reason_t *reason);

/*
 * Back-off after the failures-th consecutive failure (1 = first) in seconds, with +-20% jitter from
 * rnd in [0,1): network errors 5 s doubling to at most 10 min; rate limits max(retry_after, 1 h), a day
 * from the 3rd failure in a row when the CA gave no Retry-After;
 * other refusals 5 min doubling to at most 24 h; retry_after from the CA is a floor in every case.
 */
long acme_sched_backoff(acme_err_kind_t kind, int failures, long retry_after, double rnd);

/*
 * When to try again after that failure at now, for a certificate expiring at not_after (0: none yet):
 * the back-off capped at a tenth of the time left before not_after, so that one step cannot outlast a
 * short-lived certificate; never below the first step of its kind (5 s network, 5 min otherwise) nor
 * below the CA's Retry-After.
 */
time_t acme_sched_next_try(acme_err_kind_t kind, int failures, long retry_after, double rnd, time_t now,
    time_t not_after);

/*
 * Until when the CA asked not to be asked again, after a failure at now whose back-off ends at next_try:
 * its Retry-After when it sent one, else next_try after rateLimited/429; 0 when it asked nothing.
 * Forced renewals wait for it (acmectl renew --force aside).
 */
time_t acme_sched_ca_wait(acme_err_kind_t kind, long retry_after, time_t now, time_t next_try);

/*
 * When to act next and why: a failing certificate waits for next_try; a missing one is due now; else
 * the earlier of renew_at and ari_next_check (reason NONE when only an ARI re-check is due).
 */
time_t acme_sched_next(const acme_certmeta_t *m, time_t now, acme_renew_reason_t *reason);

/* For status pages: when the certificate will be renewed and why, leaving ARI re-checks aside. */
time_t acme_sched_renewal(const acme_certmeta_t *m, time_t now, acme_renew_reason_t *reason);

/* Next ARI poll: the CA's Retry-After clamped to [1 h, 24 h] (default 6 h), with jitter. */
time_t acme_sched_ari_next_check(time_t now, long retry_after, double rnd);

/*
 * The ARI re-checks of n certificates asked at once (a server's start, an admin's request) are spread over
 * this many seconds: one a second on average, at most 5 minutes; 0 for a single certificate.
 */
long acme_sched_ari_spread(size_t n);

/* Uniform double in [0,1) from the OpenSSL RNG. */
double acme_random(void);

#endif
