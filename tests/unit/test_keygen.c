/* Key generation off the loop: RSA in a thread under a hosted loop, in-process otherwise. */
#include "unit.h"

#include <time.h>
#include <unistd.h>
#include <openssl/rsa.h>
#include "acme_keygen.h"

typedef struct {
    int        calls;
    EVP_PKEY  *key;
    int        failed;
} result_t;

static void
done(void *arg, EVP_PKEY *key, const acme_err_t *err)
{
    result_t *r = arg;

    r->calls++;
    r->key = key;
    r->failed = err != NULL;
}

/* A host whose "event loop" is this test: it only records the timer the loop asks for. */
static long  host_timer_ms = -1;

static void
host_set_timer(void *data, long ms)
{
    (void) data;
    host_timer_ms = ms;
}

static int
host_watch(void *data, int fd, int events)
{
    (void) data;
    (void) fd;
    (void) events;
    return 0;
}

static long
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void
test_rsa_hosted_does_not_block(void **state)
{
    acme_host_t      host = { .set_timer = host_set_timer, .watch = host_watch };
    acme_keyspec_t   ks = { ACME_KEY_RSA, 4096 };
    acme_loop_t     *loop;
    acme_keygen_t   *kg;
    acme_err_t       err;
    result_t         r;
    long             t0, start_ms;
    int              turns = 0;

    memset(&r, 0, sizeof(r));
    loop = acme_loop_new(&host, ACME_LOG_ERR, &err);
    assert_non_null(loop);

    t0 = now_ms();
    kg = acme_keygen_start(loop, &ks, done, &r, &err);
    start_ms = now_ms() - t0;
    assert_non_null(kg);
    assert_int_equal(acme_keygen_last_threaded(), 1);
    /* an RSA-4096 key takes hundreds of ms or more; starting it must not */
    assert_true(start_ms < 100);
    assert_int_equal(r.calls, 0);

    /* the host keeps turning its loop while the thread works */
    while (r.calls == 0 && now_ms() - t0 < 60000) {
        assert_true(host_timer_ms >= 0);
        usleep((useconds_t) host_timer_ms * 1000);
        acme_loop_on_timer(loop);
        turns++;
    }
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.failed, 0);
    assert_non_null(r.key);
    assert_int_equal(EVP_PKEY_get_base_id(r.key), EVP_PKEY_RSA);
    assert_int_equal(EVP_PKEY_get_bits(r.key), 4096);
    assert_true(turns >= 1);
    EVP_PKEY_free(r.key);
    acme_loop_free(loop);
}

static void
test_cancel_stops_thread(void **state)
{
    acme_host_t      host = { .set_timer = host_set_timer, .watch = host_watch };
    acme_keyspec_t   ks = { ACME_KEY_RSA, 4096 };
    acme_loop_t     *loop;
    acme_keygen_t   *kg;
    acme_err_t       err;
    result_t         r;
    long             t0;

    memset(&r, 0, sizeof(r));
    loop = acme_loop_new(&host, ACME_LOG_ERR, &err);

    kg = acme_keygen_start(loop, &ks, done, &r, &err);
    assert_non_null(kg);
    assert_int_equal(acme_keygen_last_threaded(), 1);
    usleep(20000);
    /* the thread stops at OpenSSL's next progress callback: the loop waits for it only briefly */
    t0 = now_ms();
    acme_keygen_cancel(kg);
    assert_true(now_ms() - t0 < 200);
    assert_int_equal(acme_loop_pending(loop), 0);
    usleep(50000);
    acme_loop_on_timer(loop);
    assert_int_equal(r.calls, 0);
    acme_loop_free(loop);
}

static void
test_ec_and_blocking_in_process(void **state)
{
    acme_keyspec_t   ec = ACME_KEYSPEC_DEFAULT, rsa = { ACME_KEY_RSA, 2048 };
    acme_host_t      host = { .set_timer = host_set_timer, .watch = host_watch };
    acme_loop_t     *loop;
    acme_err_t       err;
    result_t         r;

    /* hosted, ECDSA: made in-process, still delivered from the loop */
    memset(&r, 0, sizeof(r));
    loop = acme_loop_new(&host, ACME_LOG_ERR, &err);
    assert_non_null(acme_keygen_start(loop, &ec, done, &r, &err));
    assert_int_equal(acme_keygen_last_threaded(), 0);
    assert_int_equal(r.calls, 0);
    acme_loop_on_timer(loop);
    assert_int_equal(r.calls, 1);
    assert_non_null(r.key);
    assert_int_equal(EVP_PKEY_get_base_id(r.key), EVP_PKEY_EC);
    EVP_PKEY_free(r.key);
    acme_loop_free(loop);

    /* blocking mode (Apache's thread, acmectl): RSA in-process too */
    memset(&r, 0, sizeof(r));
    loop = acme_loop_new(NULL, ACME_LOG_ERR, &err);
    assert_non_null(acme_keygen_start(loop, &rsa, done, &r, &err));
    assert_int_equal(acme_keygen_last_threaded(), 0);
    acme_loop_run(loop, NULL, 5000);
    assert_int_equal(r.calls, 1);
    assert_int_equal(EVP_PKEY_get_bits(r.key), 2048);
    EVP_PKEY_free(r.key);
    acme_loop_free(loop);
}

static void
test_bad_spec_reports_error(void **state)
{
    acme_keyspec_t   bad = { ACME_KEY_EC, 512 };
    acme_loop_t     *loop;
    acme_err_t       err;
    result_t         r;

    memset(&r, 0, sizeof(r));
    loop = acme_loop_new(NULL, ACME_LOG_ERR, &err);
    assert_non_null(acme_keygen_start(loop, &bad, done, &r, &err));
    acme_loop_run(loop, NULL, 5000);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.failed, 1);
    assert_null(r.key);
    acme_loop_free(loop);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rsa_hosted_does_not_block),
        cmocka_unit_test(test_cancel_stops_thread),
        cmocka_unit_test(test_ec_and_blocking_in_process),
        cmocka_unit_test(test_bad_spec_reports_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
