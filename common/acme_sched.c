/* The renewal scheduler. */
#include "acme_sched.h"

#include <stdint.h>
#include <openssl/rand.h>

#define SCHED_SHORT_LIFETIME   (10 * 86400)     /* at most: renew at half of the lifetime */
#define SCHED_NET_FIRST        5L
#define SCHED_NET_MAX          600L
#define SCHED_CA_FIRST         300L
#define SCHED_CA_MAX           86400L
#define SCHED_RATELIMIT_MIN    3600L
#define SCHED_RATELIMIT_SLOW   86400L   /* from the 3rd refusal in a row with no Retry-After */
#define SCHED_RETRY_AFTER_MAX  (30L * 86400)    /* a CA's Retry-After beyond this is not believed */
#define SCHED_ARI_MIN          3600L
#define SCHED_ARI_MAX          86400L
#define SCHED_ARI_DEFAULT      21600L
#define SCHED_ARI_SPREAD_MAX   300L     /* re-checks asked at once: spread over at most 5 min */
#define SCHED_LEFT_DIVISOR     10               /* a back-off step takes at most 1/10 of the time left */

const char *
acme_renew_reason_name(acme_renew_reason_t r)
{
    switch (r) {
    case ACME_RENEW_NONE:     return "none";
    case ACME_RENEW_MISSING:  return "missing";
    case ACME_RENEW_NAMES:    return "names";
    case ACME_RENEW_ARI:      return "ari";
    case ACME_RENEW_LIFETIME: return "lifetime";
    case ACME_RENEW_EXPIRED:  return "expired";
    case ACME_RENEW_FORCED:   return "forced";
    case ACME_RENEW_RETRY:    return "retry";
    }
    return "unknown";
}

/* rnd forced into [0,1) (NaN and out-of-range values included). */
static double
sched_unit(double rnd)
{
    if (!(rnd >= 0.0)) {
        return 0.0;
    }
    if (rnd >= 1.0) {
        return 0.999999;
    }
    return rnd;
}

/* d scaled by a factor in [0.8, 1.2) chosen by rnd. */
static long
sched_jitter(long d, double rnd)
{
    return (long) ((double) d * (0.8 + 0.4 * sched_unit(rnd)));
}

/* The latest sensible renewal instant: a tenth of the lifetime (an hour if unknown) before notAfter. */
static time_t
sched_latest(const acme_certmeta_t *m)
{
    time_t guard;

    if (m->not_after == 0) {
        return 0;
    }
    guard = m->not_before != 0 && m->not_after > m->not_before
            ? (m->not_after - m->not_before) / SCHED_LEFT_DIVISOR : 3600;
    return m->not_after - guard;
}

time_t
acme_sched_renew_time(const acme_certmeta_t *m, double rnd, time_t now, acme_renew_reason_t *reason)
{
    acme_renew_reason_t  r;
    time_t               t, life, start, end, latest;

    if (m != NULL && m->ari_start != 0 && m->ari_end > m->ari_start) {
        r = ACME_RENEW_ARI;
        start = m->ari_start;
        end = m->ari_end;
        latest = sched_latest(m);
        /* a window reaching past notAfter (a CA's mistake or a clock problem): renew before expiry */
        if (latest != 0 && end > latest) {
            end = latest;
            if (start > end) {
                start = end;
            }
        }
        if (end <= now) {
            t = now;
        } else {
            t = start + (time_t) (sched_unit(rnd) * (double) (end - start));
            if (t < now) {
                t = now;
            }
        }

    } else if (m != NULL && m->not_after > m->not_before && m->not_before != 0) {
        r = ACME_RENEW_LIFETIME;
        life = m->not_after - m->not_before;
        t = m->not_before + (life <= SCHED_SHORT_LIFETIME ? life / 2 : life / 3 * 2 + (life % 3) * 2 / 3);

    } else {
        r = ACME_RENEW_MISSING;
        t = now;
    }
    if (reason != NULL) {
        *reason = r;
    }
    return t;
}

long
acme_sched_backoff(acme_err_kind_t kind, int failures, long retry_after, double rnd)
{
    long  d, first, max;
    int   i;

    if (retry_after < 0) {
        retry_after = 0;
    }
    if (retry_after > SCHED_RETRY_AFTER_MAX) {
        retry_after = SCHED_RETRY_AFTER_MAX;
    }
    if (failures < 1) {
        failures = 1;
    }

    if (kind == ACME_ERR_RATELIMIT) {
        /* at least an hour and at least what the CA said, plus up to 20% so clients spread out */
        d = retry_after > SCHED_RATELIMIT_MIN ? retry_after : SCHED_RATELIMIT_MIN;
        if (retry_after == 0 && failures >= 3) {
            /* no end given, hourly tries did not help (Let's Encrypt's paused account, which only
             * the operator can lift): daily */
            d = SCHED_RATELIMIT_SLOW;
        }
        return d + (long) ((double) d * 0.2 * sched_unit(rnd));
    }

    if (kind == ACME_ERR_NETWORK || kind == ACME_ERR_BUSY) {
        first = SCHED_NET_FIRST;
        max = SCHED_NET_MAX;
    } else {
        first = SCHED_CA_FIRST;
        max = SCHED_CA_MAX;
    }
    d = first;
    for (i = 1; i < failures && d < max; i++) {
        d *= 2;
    }
    if (d > max) {
        d = max;
    }
    d = sched_jitter(d, rnd);
    if (d > max) {
        d = max;
    }
    if (d < retry_after) {
        d = retry_after;
    }
    return d > 0 ? d : 1;
}

time_t
acme_sched_next_try(acme_err_kind_t kind, int failures, long retry_after, double rnd, time_t now,
    time_t not_after)
{
    long  d, cap, floor;

    d = acme_sched_backoff(kind, failures, retry_after, rnd);
    if (not_after == 0) {
        return now + d;
    }
    floor = (kind == ACME_ERR_NETWORK || kind == ACME_ERR_BUSY) ? SCHED_NET_FIRST : SCHED_CA_FIRST;
    cap = not_after > now ? (long) ((not_after - now) / SCHED_LEFT_DIVISOR) : 0;
    if (cap < floor) {
        cap = floor;
    }
    if (retry_after > SCHED_RETRY_AFTER_MAX) {
        retry_after = SCHED_RETRY_AFTER_MAX;
    }
    if (cap < retry_after) {
        cap = retry_after;
    }
    return now + (d < cap ? d : cap);
}

time_t
acme_sched_ca_wait(acme_err_kind_t kind, long retry_after, time_t now, time_t next_try)
{
    if (retry_after > 0) {
        return now + (retry_after > SCHED_RETRY_AFTER_MAX ? SCHED_RETRY_AFTER_MAX : retry_after);
    }
    return kind == ACME_ERR_RATELIMIT ? next_try : 0;
}

time_t
acme_sched_next(const acme_certmeta_t *m, time_t now, acme_renew_reason_t *reason)
{
    acme_renew_reason_t  r;
    time_t               t;

    if (m == NULL) {
        r = ACME_RENEW_MISSING;
        t = now;

    } else if (m->failures > 0 && m->next_try != 0) {
        r = ACME_RENEW_RETRY;
        t = m->next_try;

    } else if (m->not_after == 0) {
        r = ACME_RENEW_MISSING;
        t = now;

    } else if (m->not_after <= now) {
        r = ACME_RENEW_EXPIRED;
        t = now;

    } else {
        if (m->renew_at != 0) {
            t = m->renew_at;
            r = (m->ari_start != 0 && m->ari_end > m->ari_start) ? ACME_RENEW_ARI : ACME_RENEW_LIFETIME;
        } else {
            t = acme_sched_renew_time(m, 0.5, now, &r);
        }
        if (t > sched_latest(m)) {
            t = sched_latest(m) > now ? sched_latest(m) : now;
        }
        if (m->ari_next_check != 0 && m->ari_next_check < t) {
            t = m->ari_next_check;
            r = ACME_RENEW_NONE;
        }
    }
    if (reason != NULL) {
        *reason = r;
    }
    return t;
}

time_t
acme_sched_ari_next_check(time_t now, long retry_after, double rnd)
{
    long  d;

    if (retry_after <= 0) {
        d = SCHED_ARI_DEFAULT;
    } else if (retry_after < SCHED_ARI_MIN) {
        d = SCHED_ARI_MIN;
    } else if (retry_after > SCHED_ARI_MAX) {
        d = SCHED_ARI_MAX;
    } else {
        d = retry_after;
    }
    d = sched_jitter(d, rnd);
    if (d < SCHED_ARI_MIN) {
        d = SCHED_ARI_MIN;
    }
    if (d > SCHED_ARI_MAX) {
        d = SCHED_ARI_MAX;
    }
    return now + d;
}

long
acme_sched_ari_spread(size_t n)
{
    if (n <= 1) {
        return 0;
    }
    return n > SCHED_ARI_SPREAD_MAX ? SCHED_ARI_SPREAD_MAX : (long) n;
}

double
acme_random(void)
{
    unsigned char  b[8];
    uint64_t       v = 0;
    int            i;

    if (RAND_bytes(b, sizeof(b)) != 1) {
        return 0.5;
    }
    for (i = 0; i < 8; i++) {
        v = (v << 8) | b[i];
    }
    return (double) (v >> 11) * (1.0 / 9007199254740992.0);
}

time_t
acme_sched_renewal(const acme_certmeta_t *m, time_t now, acme_renew_reason_t *reason)
{
    time_t when = acme_sched_next(m, now, reason);

    if (*reason == ACME_RENEW_NONE) {
        *reason = m->ari_start ? ACME_RENEW_ARI : ACME_RENEW_LIFETIME;
        if (m->renew_at != 0) {
            when = m->renew_at;
        }
    }
    return when;
}
