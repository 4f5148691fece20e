/* Host names resolved by the host (acme_host_t.resolve): which names, the cache, waiters, cancels, errors. */
#include "unit.h"

#include <time.h>
#include "acme_loop.h"
#include "acme_http.h"
#include "acme_resolve.h"

typedef struct {
    int           calls;
    char          name[64];
    void         *token;
    int           cancels;
    void         *cancelled;
    int           answer_now;     /* answer from within resolve() */
    acme_loop_t  *loop;
} fake_t;

static fake_t  fake;

static void
fake_set_timer(void *data, long ms)
{
    (void) data;
    (void) ms;
}

static int
fake_watch(void *data, int fd, int events)
{
    (void) data;
    (void) fd;
    (void) events;
    return 0;
}

static void *
fake_resolve(void *data, const char *name, void *token)
{
    (void) data;
    fake.calls++;
    snprintf(fake.name, sizeof(fake.name), "%s", name);
    fake.token = token;
    if (fake.answer_now) {
        acme_loop_resolved(fake.loop, token, "192.0.2.7", 60, NULL);
        return NULL;
    }
    return &fake;
}

static void
fake_resolve_cancel(void *data, void *handle)
{
    (void) data;
    fake.cancels++;
    fake.cancelled = handle;
}

typedef struct {
    int   called;
    char  addrs[64];
    char  error[256];
} got_t;

static void
got_cb(void *arg, const char *addrs, const char *error)
{
    got_t *g = arg;

    g->called++;
    snprintf(g->addrs, sizeof(g->addrs), "%s", addrs ? addrs : "");
    snprintf(g->error, sizeof(g->error), "%s", error ? error : "");
}

static acme_loop_t *
fake_loop(void)
{
    acme_host_t   host = { .set_timer = fake_set_timer, .watch = fake_watch, .resolve = fake_resolve,
                           .resolve_cancel = fake_resolve_cancel };
    acme_err_t    err;

    memset(&fake, 0, sizeof(fake));
    fake.loop = acme_loop_new(&host, ACME_LOG_ERR, &err);
    assert_non_null(fake.loop);
    return fake.loop;
}

static void
test_wanted(void **state)
{
    acme_host_t   plain = { .set_timer = fake_set_timer, .watch = fake_watch };
    acme_loop_t  *loop = fake_loop(), *sys;
    acme_err_t    err;

    (void) state;
    assert_true(acme_resolve_enabled(loop));
    assert_true(acme_resolve_wanted(loop, "acme.internal"));
    assert_true(acme_resolve_wanted(loop, "localhost.example"));
    assert_false(acme_resolve_wanted(loop, "127.0.0.1"));
    assert_false(acme_resolve_wanted(loop, "[::1]"));
    assert_false(acme_resolve_wanted(loop, "localhost"));
    assert_false(acme_resolve_wanted(loop, "LocalHost."));
    assert_false(acme_resolve_wanted(loop, "ca.localhost"));
    acme_loop_free(loop);

    /* no resolve callback (Apache, acmectl): libcurl resolves */
    sys = acme_loop_new(&plain, ACME_LOG_ERR, &err);
    assert_non_null(sys);
    assert_false(acme_resolve_enabled(sys));
    assert_false(acme_resolve_wanted(sys, "acme.internal"));
    acme_loop_free(sys);
}

static void
test_waiters_share_one_query_and_the_answer_is_cached(void **state)
{
    acme_loop_t          *loop = fake_loop();
    acme_resolve_wait_t  *w1, *w2;
    acme_err_t            err;
    got_t                 g1 = { 0 }, g2 = { 0 };
    char                 *addrs;

    (void) state;
    assert_int_equal(acme_resolve_name(loop, "acme.internal", got_cb, &g1, &addrs, &w1, &err), 0);
    assert_int_equal(acme_resolve_name(loop, "ACME.internal", got_cb, &g2, &addrs, &w2, &err), 0);
    assert_int_equal(fake.calls, 1);
    assert_string_equal(fake.name, "acme.internal");
    assert_int_equal(acme_loop_pending(loop), 2);

    /* the answer reaches the waiters from the loop, never from within the host's call */
    acme_loop_resolved(loop, fake.token, "127.0.0.1,[::1]", 60, NULL);
    assert_int_equal(g1.called + g2.called, 0);
    acme_loop_on_timer(loop);
    assert_int_equal(g1.called, 1);
    assert_int_equal(g2.called, 1);
    assert_string_equal(g1.addrs, "127.0.0.1,[::1]");
    assert_string_equal(g2.error, "");
    assert_int_equal(acme_loop_pending(loop), 0);

    /* a late or repeated report is ignored */
    acme_loop_resolved(loop, fake.token, "192.0.2.1", 60, NULL);

    assert_int_equal(acme_resolve_name(loop, "acme.internal", got_cb, &g1, &addrs, &w1, &err), 1);
    assert_string_equal(addrs, "127.0.0.1,[::1]");
    free(addrs);
    assert_int_equal(fake.calls, 1);
    acme_loop_free(loop);
}

static void
test_failure_not_cached_ttl_expires(void **state)
{
    acme_loop_t          *loop = fake_loop();
    acme_resolve_wait_t  *w;
    acme_err_t            err;
    got_t                 g = { 0 };
    char                 *addrs;
    struct timespec       ts = { 1, 100000000 };

    (void) state;
    assert_int_equal(acme_resolve_name(loop, "bad.internal", got_cb, &g, &addrs, &w, &err), 0);
    acme_loop_resolved(loop, fake.token, NULL, 0,
                       "bad.internal could not be resolved (3: Host not found) by resolver 127.0.0.1:5353");
    acme_loop_on_timer(loop);
    assert_int_equal(g.called, 1);
    assert_string_equal(g.addrs, "");
    assert_string_equal(g.error,
                        "bad.internal could not be resolved (3: Host not found) by resolver 127.0.0.1:5353");

    /* asked again */
    assert_int_equal(acme_resolve_name(loop, "bad.internal", got_cb, &g, &addrs, &w, &err), 0);
    assert_int_equal(fake.calls, 2);
    acme_loop_resolved(loop, fake.token, "192.0.2.1", 1, NULL);
    acme_loop_on_timer(loop);
    assert_int_equal(g.called, 2);
    assert_int_equal(acme_resolve_name(loop, "bad.internal", got_cb, &g, &addrs, &w, &err), 1);
    free(addrs);

    /* after the TTL (1 s): asked again */
    nanosleep(&ts, NULL);
    assert_int_equal(acme_resolve_name(loop, "bad.internal", got_cb, &g, &addrs, &w, &err), 0);
    assert_int_equal(fake.calls, 3);
    acme_resolve_cancel(loop, w);
    acme_loop_free(loop);
}

static void
test_answer_from_within_the_call(void **state)
{
    acme_loop_t          *loop = fake_loop();
    acme_resolve_wait_t  *w;
    acme_err_t            err;
    got_t                 g = { 0 };
    char                 *addrs;

    (void) state;
    fake.answer_now = 1;
    assert_int_equal(acme_resolve_name(loop, "acme.internal", got_cb, &g, &addrs, &w, &err), 0);
    assert_int_equal(g.called, 0);
    acme_loop_on_timer(loop);
    assert_int_equal(g.called, 1);
    assert_string_equal(g.addrs, "192.0.2.7");
    acme_loop_free(loop);
    assert_int_equal(fake.cancels, 0);
}

static void
test_cancel_and_free(void **state)
{
    acme_loop_t          *loop = fake_loop();
    acme_resolve_wait_t  *w, *w2;
    acme_err_t            err;
    got_t                 g = { 0 };
    char                 *addrs;

    (void) state;
    /* cancelled before the answer: never called */
    assert_int_equal(acme_resolve_name(loop, "acme.internal", got_cb, &g, &addrs, &w, &err), 0);
    acme_resolve_cancel(loop, w);
    assert_int_equal(acme_loop_pending(loop), 0);
    acme_loop_resolved(loop, fake.token, "127.0.0.1", 60, NULL);
    acme_loop_on_timer(loop);
    assert_int_equal(g.called, 0);

    /* cancelled after the answer, before the loop delivered it */
    assert_int_equal(acme_resolve_name(loop, "b.internal", got_cb, &g, &addrs, &w, &err), 0);
    acme_loop_resolved(loop, fake.token, "127.0.0.2", 60, NULL);
    acme_resolve_cancel(loop, w);
    acme_loop_on_timer(loop);
    assert_int_equal(g.called, 0);

    /* the loop freed while a query is out: the host is told to drop it */
    assert_int_equal(acme_resolve_name(loop, "c.internal", got_cb, &g, &addrs, &w, &err), 0);
    assert_int_equal(acme_resolve_name(loop, "d.internal", got_cb, &g, &addrs, &w2, &err), 0);
    acme_loop_resolved(loop, fake.token, "127.0.0.4", 60, NULL);
    acme_loop_free(loop);
    assert_int_equal(fake.cancels, 1);
    assert_ptr_equal(fake.cancelled, &fake);
    assert_int_equal(g.called, 0);
}

static void
http_done(const acme_http_resp_t *resp, void *arg)
{
    got_t *g = arg;

    g->called++;
    snprintf(g->error, sizeof(g->error), "%s", resp->ok ? "" : resp->errmsg);
}

static void
test_http_request_waits_for_the_host(void **state)
{
    acme_loop_t       *loop = fake_loop();
    acme_http_conf_t   conf;
    acme_http_req_t   *req;
    acme_err_t         err;
    got_t              g = { 0 };

    (void) state;
    memset(&conf, 0, sizeof(conf));
    conf.verify = 1;
    req = acme_http_send(loop, &conf, "GET", "https://acme.internal:14000/dir", NULL, NULL, http_done, &g,
                         &err);
    assert_non_null(req);
    assert_int_equal(fake.calls, 1);
    assert_string_equal(fake.name, "acme.internal");
    acme_loop_resolved(loop, fake.token, NULL, 0,
                       "acme.internal could not be resolved (110: Operation timed out) by resolver 127.0.0.1:9");
    acme_loop_on_timer(loop);
    assert_int_equal(g.called, 1);
    assert_string_equal(g.error,
                        "acme.internal could not be resolved (110: Operation timed out) by resolver 127.0.0.1:9");

    /* an address in the URL is not asked of the host; a request cancelled while it waits is freed */
    req = acme_http_send(loop, &conf, "GET", "https://127.0.0.1:9/dir", NULL, NULL, http_done, &g, &err);
    assert_non_null(req);
    assert_int_equal(fake.calls, 1);
    acme_http_cancel(req);
    req = acme_http_send(loop, &conf, "GET", "https://other.internal/dir", NULL, NULL, http_done, &g, &err);
    assert_non_null(req);
    assert_int_equal(fake.calls, 2);
    acme_http_cancel(req);
    assert_int_equal(acme_loop_pending(loop), 0);
    acme_loop_free(loop);
    assert_int_equal(g.called, 1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wanted),
        cmocka_unit_test(test_waiters_share_one_query_and_the_answer_is_cached),
        cmocka_unit_test(test_failure_not_cached_ttl_expires),
        cmocka_unit_test(test_answer_from_within_the_call),
        cmocka_unit_test(test_cancel_and_free),
        cmocka_unit_test(test_http_request_waits_for_the_host),
    };

    return cmocka_run_group_tests_name("resolve", tests, NULL, NULL);
}
