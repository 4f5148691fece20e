/* The renewal scheduler. */
#include "unit.h"
#include "acme_sched.h"

#include <math.h>

#define DAY   86400L
#define NOW   ((time_t) 1750000000)

static void
meta_init(acme_certmeta_t *m, time_t nb, long life)
{
    memset(m, 0, sizeof(*m));
    m->not_before = nb;
    m->not_after = nb + life;
}

static void
test_reason_names(void **state)
{
    assert_string_equal(acme_renew_reason_name(ACME_RENEW_NONE), "none");
    assert_string_equal(acme_renew_reason_name(ACME_RENEW_MISSING), "missing");
    assert_string_equal(acme_renew_reason_name(ACME_RENEW_NAMES), "names");
    assert_string_equal(acme_renew_reason_name(ACME_RENEW_ARI), "ari");
    assert_string_equal(acme_renew_reason_name(ACME_RENEW_LIFETIME), "lifetime");
    assert_string_equal(acme_renew_reason_name(ACME_RENEW_EXPIRED), "expired");
    assert_string_equal(acme_renew_reason_name(ACME_RENEW_FORCED), "forced");
    assert_string_equal(acme_renew_reason_name(ACME_RENEW_RETRY), "retry");
}

static void
test_lifetime(void **state)
{
    acme_certmeta_t      m;
    acme_renew_reason_t  r = ACME_RENEW_NONE;

    /* 90 days: at 60 days */
    meta_init(&m, NOW, 90 * DAY);
    assert_int_equal(acme_sched_renew_time(&m, 0.3, NOW, &r), NOW + 60 * DAY);
    assert_int_equal(r, ACME_RENEW_LIFETIME);
    /* rnd does not matter without ARI */
    assert_int_equal(acme_sched_renew_time(&m, 0.9, NOW, &r), NOW + 60 * DAY);

    /* 45 days: at 30 */
    meta_init(&m, NOW, 45 * DAY);
    assert_int_equal(acme_sched_renew_time(&m, 0.5, NOW, &r), NOW + 30 * DAY);

    /* 6-day certificates (160 hours): at half */
    meta_init(&m, NOW, 160 * 3600L);
    assert_int_equal(acme_sched_renew_time(&m, 0.5, NOW, &r), NOW + 80 * 3600L);
    assert_int_equal(r, ACME_RENEW_LIFETIME);
    meta_init(&m, NOW, 6 * DAY);
    assert_int_equal(acme_sched_renew_time(&m, 0.5, NOW, &r), NOW + 3 * DAY);
    /* exactly 10 days: still half; just over: two thirds */
    meta_init(&m, NOW, 10 * DAY);
    assert_int_equal(acme_sched_renew_time(&m, 0.5, NOW, &r), NOW + 5 * DAY);
    meta_init(&m, NOW, 10 * DAY + 3);
    assert_int_equal(acme_sched_renew_time(&m, 0.5, NOW, &r), NOW + (10 * DAY + 3) * 2 / 3);

    /* no certificate: now */
    memset(&m, 0, sizeof(m));
    assert_int_equal(acme_sched_renew_time(&m, 0.5, NOW, &r), NOW);
    assert_int_equal(r, ACME_RENEW_MISSING);
}

static void
test_ari(void **state)
{
    acme_certmeta_t      m;
    acme_renew_reason_t  r = ACME_RENEW_NONE;

    meta_init(&m, NOW - 50 * DAY, 90 * DAY);
    m.ari_start = NOW + 5 * DAY;
    m.ari_end = NOW + 7 * DAY;
    assert_int_equal(acme_sched_renew_time(&m, 0.0, NOW, &r), NOW + 5 * DAY);
    assert_int_equal(r, ACME_RENEW_ARI);
    assert_int_equal(acme_sched_renew_time(&m, 0.5, NOW, &r), NOW + 6 * DAY);
    assert_int_equal(acme_sched_renew_time(&m, 0.25, NOW, &r), NOW + 5 * DAY + DAY / 2);
    assert_true(acme_sched_renew_time(&m, 0.999999, NOW, &r) < m.ari_end);
    /* out-of-range rnd stays inside the window */
    assert_true(acme_sched_renew_time(&m, 7.0, NOW, &r) < m.ari_end);
    assert_int_equal(acme_sched_renew_time(&m, -1.0, NOW, &r), m.ari_start);
    assert_int_equal(acme_sched_renew_time(&m, NAN, NOW, &r), m.ari_start);

    /* a window already over: now */
    m.ari_start = NOW - 3 * DAY;
    m.ari_end = NOW - DAY;
    assert_int_equal(acme_sched_renew_time(&m, 0.5, NOW, &r), NOW);
    assert_int_equal(r, ACME_RENEW_ARI);
    /* a window we are in: never before now */
    m.ari_start = NOW - DAY;
    m.ari_end = NOW + DAY;
    assert_int_equal(acme_sched_renew_time(&m, 0.0, NOW, &r), NOW);
    assert_int_equal(acme_sched_renew_time(&m, 0.75, NOW, &r), NOW + DAY / 2);
    /* a nonsense window (end before start) is ignored */
    m.ari_start = NOW + 7 * DAY;
    m.ari_end = NOW + 5 * DAY;
    assert_int_equal(acme_sched_renew_time(&m, 0.5, NOW, &r), NOW - 50 * DAY + 60 * DAY);
    assert_int_equal(r, ACME_RENEW_LIFETIME);
}

static void
test_backoff_network(void **state)
{
    /* rnd 0.5 is the middle of the jitter: the base value */
    assert_int_equal(acme_sched_backoff(ACME_ERR_NETWORK, 1, 0, 0.5), 5);
    assert_int_equal(acme_sched_backoff(ACME_ERR_NETWORK, 2, 0, 0.5), 10);
    assert_int_equal(acme_sched_backoff(ACME_ERR_NETWORK, 3, 0, 0.5), 20);
    assert_int_equal(acme_sched_backoff(ACME_ERR_NETWORK, 7, 0, 0.5), 320);
    assert_int_equal(acme_sched_backoff(ACME_ERR_NETWORK, 8, 0, 0.5), 600);
    assert_int_equal(acme_sched_backoff(ACME_ERR_NETWORK, 100, 0, 0.5), 600);
    assert_int_equal(acme_sched_backoff(ACME_ERR_NETWORK, 1000000, 0, 0.99), 600);
    assert_int_equal(acme_sched_backoff(ACME_ERR_NETWORK, 0, 0, 0.5), 5);
    assert_int_equal(acme_sched_backoff(ACME_ERR_NETWORK, -5, 0, 0.5), 5);
    /* jitter: +-20% */
    assert_int_equal(acme_sched_backoff(ACME_ERR_NETWORK, 3, 0, 0.0), 16);
    assert_int_equal(acme_sched_backoff(ACME_ERR_NETWORK, 3, 0, 0.999999), 23);
    assert_int_equal(acme_sched_backoff(ACME_ERR_NETWORK, 8, 0, 0.0), 480);
    /* retry_after is a floor */
    assert_int_equal(acme_sched_backoff(ACME_ERR_NETWORK, 1, 120, 0.5), 120);
    assert_int_equal(acme_sched_backoff(ACME_ERR_NETWORK, 1, 3000, 0.5), 3000);
}

/* What a forced renewal must wait for: the CA's own Retry-After, else our back-off after a rate limit. */
static void
test_ca_wait(void **state)
{
    (void) state;
    assert_int_equal(acme_sched_ca_wait(ACME_ERR_RATELIMIT, 120, 1000, 5000), 1120);
    assert_int_equal(acme_sched_ca_wait(ACME_ERR_RATELIMIT, 0, 1000, 5000), 5000);
    assert_int_equal(acme_sched_ca_wait(ACME_ERR_CA, 300, 1000, 1500), 1300);
    assert_int_equal(acme_sched_ca_wait(ACME_ERR_NETWORK, 0, 1000, 1005), 0);
    assert_int_equal(acme_sched_ca_wait(ACME_ERR_CA, -5, 1000, 1300), 0);
    /* a Retry-After beyond 30 days is not believed */
    assert_int_equal(acme_sched_ca_wait(ACME_ERR_RATELIMIT, 100L * 86400, 1000, 5000), 1000 + 30L * 86400);
}

static void
test_backoff_ca(void **state)
{
    assert_int_equal(acme_sched_backoff(ACME_ERR_CA, 1, 0, 0.5), 300);
    assert_int_equal(acme_sched_backoff(ACME_ERR_CA, 2, 0, 0.5), 600);
    assert_int_equal(acme_sched_backoff(ACME_ERR_CA, 5, 0, 0.5), 4800);
    assert_int_equal(acme_sched_backoff(ACME_ERR_CA, 9, 0, 0.5), 76800);
    assert_int_equal(acme_sched_backoff(ACME_ERR_CA, 10, 0, 0.5), 86400);
    assert_int_equal(acme_sched_backoff(ACME_ERR_CA, 50, 0, 0.999), 86400);
    assert_int_equal(acme_sched_backoff(ACME_ERR_CA, 1, 0, 0.0), 240);
    assert_int_equal(acme_sched_backoff(ACME_ERR_CA, 1, 100000, 0.5), 100000);
    assert_int_equal(acme_sched_backoff(ACME_ERR_BADRESPONSE, 1, 0, 0.5), 300);
    assert_int_equal(acme_sched_backoff(ACME_ERR_CONFIG, 2, 0, 0.5), 600);
    /* another process holding the lock: soon */
    assert_int_equal(acme_sched_backoff(ACME_ERR_BUSY, 1, 0, 0.5), 5);
}

static void
test_backoff_ratelimit(void **state)
{
    long d;

    assert_int_equal(acme_sched_backoff(ACME_ERR_RATELIMIT, 1, 0, 0.0), 3600);
    assert_int_equal(acme_sched_backoff(ACME_ERR_RATELIMIT, 1, 60, 0.0), 3600);
    assert_int_equal(acme_sched_backoff(ACME_ERR_RATELIMIT, 5, 60, 0.0), 3600);
    assert_int_equal(acme_sched_backoff(ACME_ERR_RATELIMIT, 1, 7200, 0.0), 7200);
    d = acme_sched_backoff(ACME_ERR_RATELIMIT, 1, 7200, 0.5);
    assert_true(d >= 7200 && d <= 7200 * 12 / 10);
    d = acme_sched_backoff(ACME_ERR_RATELIMIT, 1, 0, 0.999);
    assert_true(d >= 3600 && d <= 4320);
    /* an absurd Retry-After is capped at 30 days */
    d = acme_sched_backoff(ACME_ERR_RATELIMIT, 1, 100000000L, 0.0);
    assert_int_equal(d, 30 * DAY);
    assert_int_equal(acme_sched_backoff(ACME_ERR_CA, 1, -5, 0.5), 300);
    /* refused again and again with no end given (a paused account): daily from the 3rd time */
    assert_int_equal(acme_sched_backoff(ACME_ERR_RATELIMIT, 2, 0, 0.0), 3600);
    assert_int_equal(acme_sched_backoff(ACME_ERR_RATELIMIT, 3, 0, 0.0), DAY);
    assert_int_equal(acme_sched_backoff(ACME_ERR_RATELIMIT, 30, 0, 0.0), DAY);
    assert_int_equal(acme_sched_backoff(ACME_ERR_RATELIMIT, 3, 60, 0.0), 3600);
}

static void
test_backoff_bounds(void **state)
{
    acme_err_kind_t  kinds[] = { ACME_ERR_NETWORK, ACME_ERR_CA, ACME_ERR_RATELIMIT, ACME_ERR_STORE };
    size_t           k;
    int              f;
    double           rnd;
    long             d, base;

    for (k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        for (f = 1; f < 40; f++) {
            base = acme_sched_backoff(kinds[k], f, 0, 0.5);
            for (rnd = 0.0; rnd < 1.0; rnd += 0.01) {
                d = acme_sched_backoff(kinds[k], f, 0, rnd);
                assert_true(d >= 1);
                if (kinds[k] == ACME_ERR_RATELIMIT) {
                    assert_true(f >= 3 ? d >= DAY && d <= DAY * 12 / 10 : d >= 3600 && d <= 4320);
                } else {
                    assert_true(d >= base * 8 / 10 - 1);
                    assert_true(d <= base * 12 / 10 + 1);
                    assert_true(d <= (kinds[k] == ACME_ERR_NETWORK ? 600 : 86400));
                }
            }
        }
    }
}

static void
test_next(void **state)
{
    acme_certmeta_t      m;
    acme_renew_reason_t  r = ACME_RENEW_FORCED;

    /* nothing yet */
    assert_int_equal(acme_sched_next(NULL, NOW, &r), NOW);
    assert_int_equal(r, ACME_RENEW_MISSING);
    memset(&m, 0, sizeof(m));
    assert_int_equal(acme_sched_next(&m, NOW, &r), NOW);
    assert_int_equal(r, ACME_RENEW_MISSING);

    /* a failing one waits for its back-off, even without a certificate */
    m.failures = 2;
    m.next_try = NOW + 600;
    assert_int_equal(acme_sched_next(&m, NOW, &r), NOW + 600);
    assert_int_equal(r, ACME_RENEW_RETRY);

    /* a good one: its renewal time */
    meta_init(&m, NOW - 10 * DAY, 90 * DAY);
    m.renew_at = NOW + 50 * DAY;
    assert_int_equal(acme_sched_next(&m, NOW, &r), NOW + 50 * DAY);
    assert_int_equal(r, ACME_RENEW_LIFETIME);
    /* unless the ARI check comes first */
    m.ari_next_check = NOW + 6 * 3600;
    assert_int_equal(acme_sched_next(&m, NOW, &r), NOW + 6 * 3600);
    assert_int_equal(r, ACME_RENEW_NONE);
    /* with an ARI window */
    m.ari_start = NOW + DAY;
    m.ari_end = NOW + 2 * DAY;
    m.renew_at = NOW + DAY + 100;
    m.ari_next_check = NOW + 3 * DAY;
    assert_int_equal(acme_sched_next(&m, NOW, &r), NOW + DAY + 100);
    assert_int_equal(r, ACME_RENEW_ARI);
    /* renew_at not chosen yet: computed */
    m.renew_at = 0;
    assert_int_equal(acme_sched_next(&m, NOW, &r), NOW + DAY + DAY / 2);
    assert_int_equal(r, ACME_RENEW_ARI);

    /* expired */
    meta_init(&m, NOW - 100 * DAY, 90 * DAY);
    m.renew_at = NOW - 40 * DAY;
    assert_int_equal(acme_sched_next(&m, NOW, &r), NOW);
    assert_int_equal(r, ACME_RENEW_EXPIRED);

    /* a renewal time past the end is held to a tenth of the lifetime before the end */
    meta_init(&m, NOW - 10 * DAY, 20 * DAY);
    m.renew_at = NOW + 30 * DAY;
    assert_int_equal(acme_sched_next(&m, NOW, &r), NOW + 8 * DAY);
    /* and to now once that point has passed */
    assert_int_equal(acme_sched_next(&m, NOW + 9 * DAY, &r), NOW + 9 * DAY);
}

/* An ARI window reaching past notAfter: the renewal falls before expiry, not at it. */
static void
test_ari_past_not_after(void **state)
{
    acme_certmeta_t      m;
    acme_renew_reason_t  r = ACME_RENEW_NONE;
    time_t               t;
    double               rnd;

    /* 90 days, 30 left; the window runs from 29 to 31 days ahead */
    meta_init(&m, NOW - 60 * DAY, 90 * DAY);
    m.ari_start = NOW + 29 * DAY;
    m.ari_end = NOW + 31 * DAY;
    for (rnd = 0.0; rnd < 1.0; rnd += 0.05) {
        t = acme_sched_renew_time(&m, rnd, NOW, &r);
        assert_int_equal(r, ACME_RENEW_ARI);
        assert_true(t <= m.not_after - 9 * DAY);
        assert_true(t >= NOW);
    }
    /* a window that opens after notAfter: 9 days before it */
    m.ari_start = NOW + 40 * DAY;
    m.ari_end = NOW + 41 * DAY;
    assert_int_equal(acme_sched_renew_time(&m, 0.5, NOW, &r), NOW + 21 * DAY);
    /* partly cut: [20, 21) days ahead of now */
    m.ari_start = NOW + 20 * DAY;
    m.ari_end = NOW + 25 * DAY;
    assert_int_equal(acme_sched_renew_time(&m, 0.5, NOW, &r), NOW + 20 * DAY + DAY / 2);
    /* a window entirely before the cut is untouched */
    m.ari_start = NOW + 5 * DAY;
    m.ari_end = NOW + 7 * DAY;
    assert_int_equal(acme_sched_renew_time(&m, 0.5, NOW, &r), NOW + 6 * DAY);
    /* 24-hour certificate, 3 hours left, window past expiry: now */
    meta_init(&m, NOW - 21 * 3600L, DAY);
    m.ari_start = NOW + 4 * 3600L;
    m.ari_end = NOW + 5 * 3600L;
    assert_int_equal(acme_sched_renew_time(&m, 0.5, NOW, &r), NOW + 3 * 3600L - DAY / 10);
    m.ari_start = NOW + 3600L;
    assert_int_equal(acme_sched_renew_time(&m, 0.5, NOW + 3 * 3600L, &r), NOW + 3 * 3600L);
}

/* The back-off step never outlasts the certificate: a tenth of the time left, the CA's word aside. */
static void
test_next_try_lifetime_cap(void **state)
{
    time_t  na;
    double  rnd;

    /* no certificate: the plain back-off */
    assert_int_equal(acme_sched_next_try(ACME_ERR_CA, 10, 0, 0.5, NOW, 0), NOW + DAY);
    assert_int_equal(acme_sched_next_try(ACME_ERR_RATELIMIT, 1, 0, 0.0, NOW, 0), NOW + 3600);
    /* 90-day certificate with 30 days left: a day-long step is fine */
    assert_int_equal(acme_sched_next_try(ACME_ERR_CA, 10, 0, 0.5, NOW, NOW + 30 * DAY), NOW + DAY);
    /* 6-day certificate with 2 days left: at most 4.8 hours */
    na = NOW + 2 * DAY;
    for (rnd = 0.0; rnd < 1.0; rnd += 0.05) {
        assert_true(acme_sched_next_try(ACME_ERR_CA, 10, 0, rnd, NOW, na) <= NOW + 2 * DAY / 10);
        assert_true(acme_sched_next_try(ACME_ERR_RATELIMIT, 1, 0, rnd, NOW, na) <= NOW + 3600 * 6 / 5);
    }
    assert_int_equal(acme_sched_next_try(ACME_ERR_CA, 10, 0, 0.5, NOW, na), NOW + 2 * DAY / 10);
    /* 3 hours left: a rate limit without Retry-After waits 18 minutes, not an hour */
    na = NOW + 3 * 3600;
    assert_int_equal(acme_sched_next_try(ACME_ERR_RATELIMIT, 1, 0, 0.5, NOW, na), NOW + 1080);
    /* ... but never less than the CA's Retry-After */
    assert_int_equal(acme_sched_next_try(ACME_ERR_RATELIMIT, 1, 2400, 0.0, NOW, na), NOW + 2400);
    assert_int_equal(acme_sched_next_try(ACME_ERR_CA, 5, 5000, 0.5, NOW, na), NOW + 5000);
    /* nor below the first step of its kind, even when expired */
    assert_int_equal(acme_sched_next_try(ACME_ERR_CA, 9, 0, 0.5, NOW, NOW - DAY), NOW + 300);
    assert_int_equal(acme_sched_next_try(ACME_ERR_NETWORK, 9, 0, 0.5, NOW, NOW + 10), NOW + 5);
    assert_int_equal(acme_sched_next_try(ACME_ERR_NETWORK, 1, 0, 0.5, NOW, NOW + 10), NOW + 5);
    /* short steps are not stretched */
    assert_int_equal(acme_sched_next_try(ACME_ERR_CA, 1, 0, 0.5, NOW, NOW + DAY), NOW + 300);
}

static void
test_ari_next_check(void **state)
{
    time_t  t;
    double  rnd;

    assert_int_equal(acme_sched_ari_next_check(NOW, 0, 0.5), NOW + 6 * 3600);
    assert_int_equal(acme_sched_ari_next_check(NOW, -1, 0.5), NOW + 6 * 3600);
    assert_int_equal(acme_sched_ari_next_check(NOW, 60, 0.5), NOW + 3600);
    assert_int_equal(acme_sched_ari_next_check(NOW, 7200, 0.5), NOW + 7200);
    assert_int_equal(acme_sched_ari_next_check(NOW, 10 * DAY, 0.5), NOW + DAY);
    for (rnd = 0.0; rnd < 1.0; rnd += 0.01) {
        t = acme_sched_ari_next_check(NOW, 0, rnd);
        assert_true(t >= NOW + 6 * 3600 * 8 / 10 && t <= NOW + 6 * 3600 * 12 / 10);
        t = acme_sched_ari_next_check(NOW, 60, rnd);
        assert_true(t >= NOW + 3600 && t <= NOW + 3600 * 12 / 10);
        t = acme_sched_ari_next_check(NOW, 10 * DAY, rnd);
        assert_true(t >= NOW + DAY * 8 / 10 && t <= NOW + DAY);
    }
}

static void
test_ari_spread(void **state)
{
    (void) state;
    /* a few promptly, many at about one a second, never more than 5 minutes */
    assert_int_equal(acme_sched_ari_spread(0), 0);
    assert_int_equal(acme_sched_ari_spread(1), 0);
    assert_int_equal(acme_sched_ari_spread(3), 3);
    assert_int_equal(acme_sched_ari_spread(120), 120);
    assert_int_equal(acme_sched_ari_spread(300), 300);
    assert_int_equal(acme_sched_ari_spread(100000), 300);
}

static void
test_random(void **state)
{
    int     i;
    double  v, sum = 0, lo = 1, hi = 0;

    for (i = 0; i < 2000; i++) {
        v = acme_random();
        assert_true(v >= 0.0 && v < 1.0);
        sum += v;
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    assert_true(sum / 2000 > 0.4 && sum / 2000 < 0.6);
    assert_true(lo < 0.05 && hi > 0.95);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reason_names),
        cmocka_unit_test(test_lifetime),
        cmocka_unit_test(test_ari),
        cmocka_unit_test(test_backoff_network),
        cmocka_unit_test(test_backoff_ca),
        cmocka_unit_test(test_ca_wait),
        cmocka_unit_test(test_backoff_ratelimit),
        cmocka_unit_test(test_backoff_bounds),
        cmocka_unit_test(test_next),
        cmocka_unit_test(test_ari_past_not_after),
        cmocka_unit_test(test_next_try_lifetime_cap),
        cmocka_unit_test(test_ari_next_check),
        cmocka_unit_test(test_ari_spread),
        cmocka_unit_test(test_random),
    };

    return cmocka_run_group_tests_name("sched", tests, NULL, NULL);
}
