/* The event loop's timers and blocking driver, and HTTP response helpers. */
#include "unit.h"

#include <time.h>
#include "acme_loop.h"
#include "acme_http.h"
#include "acme_client.h"

typedef struct {
    int  order[8];
    int  n;
} trace_t;

static trace_t  trace;

static void
mark(void *arg)
{
    trace.order[trace.n++] = (int) (long) arg;
}

static void
test_timers_fire_in_order(void **state)
{
    acme_loop_t   *loop;
    acme_err_t     err;

    memset(&trace, 0, sizeof(trace));
    loop = acme_loop_new(NULL, ACME_LOG_ERR, &err);
    assert_non_null(loop);
    assert_non_null(acme_timer_add(loop, 60, mark, (void *) 3L));
    assert_non_null(acme_timer_add(loop, 20, mark, (void *) 2L));
    assert_non_null(acme_timer_add(loop, 0, mark, (void *) 1L));
    assert_int_equal(acme_loop_pending(loop), 3);
    acme_loop_run(loop, NULL, 5000);
    assert_int_equal(trace.n, 3);
    assert_int_equal(trace.order[0], 1);
    assert_int_equal(trace.order[1], 2);
    assert_int_equal(trace.order[2], 3);
    assert_int_equal(acme_loop_pending(loop), 0);
    acme_loop_free(loop);
}

static void
test_timer_cancel(void **state)
{
    acme_loop_t   *loop;
    acme_timer_t  *t;
    acme_err_t     err;

    memset(&trace, 0, sizeof(trace));
    loop = acme_loop_new(NULL, ACME_LOG_ERR, &err);
    t = acme_timer_add(loop, 10, mark, (void *) 9L);
    acme_timer_add(loop, 20, mark, (void *) 4L);
    acme_timer_cancel(loop, t);
    acme_loop_run(loop, NULL, 5000);
    assert_int_equal(trace.n, 1);
    assert_int_equal(trace.order[0], 4);
    acme_loop_free(loop);
}

static volatile int  stop_flag;

static void
set_stop(void *arg)
{
    (void) arg;
    stop_flag = 1;
}

static void
test_run_stops_on_flag_and_timeout(void **state)
{
    acme_loop_t     *loop;
    acme_err_t       err;
    struct timespec  a, b;
    long             ms;

    loop = acme_loop_new(NULL, ACME_LOG_ERR, &err);
    stop_flag = 0;
    acme_timer_add(loop, 10, set_stop, NULL);
    acme_timer_add(loop, 100000, mark, NULL);
    acme_loop_run(loop, &stop_flag, -1);
    assert_int_equal(stop_flag, 1);
    assert_int_equal(acme_loop_pending(loop), 1);

    clock_gettime(CLOCK_MONOTONIC, &a);
    acme_loop_run(loop, NULL, 50);
    clock_gettime(CLOCK_MONOTONIC, &b);
    ms = (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
    assert_true(ms >= 40 && ms < 5000);
    acme_loop_free(loop);
}

/* Hosted mode: the loop asks the host for one timer and fires through acme_loop_on_timer. */
static long  host_timer_ms = -2;

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

static void
test_hosted_timer(void **state)
{
    acme_host_t   host = { .set_timer = host_set_timer, .watch = host_watch };
    acme_loop_t  *loop;
    acme_err_t    err;

    memset(&trace, 0, sizeof(trace));
    loop = acme_loop_new(&host, ACME_LOG_ERR, &err);
    assert_non_null(loop);
    acme_timer_add(loop, 5000, mark, (void *) 7L);
    assert_true(host_timer_ms > 4000 && host_timer_ms <= 5000);
    acme_timer_add(loop, 0, mark, (void *) 8L);
    assert_int_equal(host_timer_ms, 0);
    acme_loop_on_timer(loop);
    assert_int_equal(trace.n, 1);
    assert_int_equal(trace.order[0], 8);
    assert_true(host_timer_ms > 4000);
    acme_loop_free(loop);
    assert_int_equal(host_timer_ms, -1);
}

static void
test_retry_after(void **state)
{
    long now = 1700000000;

    assert_int_equal(acme_http_parse_retry_after("120", now), 120);
    assert_int_equal(acme_http_parse_retry_after(" 7 ", now), 7);
    assert_int_equal(acme_http_parse_retry_after("-5", now), 0);
    assert_int_equal(acme_http_parse_retry_after("12abc", now), 0);
    assert_int_equal(acme_http_parse_retry_after("999999999", now), 86400 * 7);
    /* Tue, 14 Nov 2023 22:13:20 GMT is 1700000000 */
    assert_int_equal(acme_http_parse_retry_after("Tue, 14 Nov 2023 22:15:00 GMT", now), 100);
    assert_int_equal(acme_http_parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now), 0);
    assert_int_equal(acme_http_parse_retry_after("garbage", now), 0);
}

static acme_http_resp_t *
resp(long status, const char *ctype, const char *body)
{
    static acme_http_resp_t r;

    memset(&r, 0, sizeof(r));
    r.ok = 1;
    r.status = status;
    r.content_type = (char *) ctype;
    r.body.data = (char *) body;
    r.body.len = strlen(body);
    return &r;
}

static void
test_resp_error_problem(void **state)
{
    acme_err_t         err;
    acme_http_resp_t  *r;

    r = resp(403, "application/problem+json",
             "{\"type\":\"urn:ietf:params:acme:error:rejectedIdentifier\",\"detail\":\"no\","
             "\"subproblems\":[{\"type\":\"urn:ietf:params:acme:error:caa\",\"detail\":\"CAA forbids\","
             "\"identifier\":{\"type\":\"dns\",\"value\":\"bad.example\"}}]}");
    acme_client_resp_error(r, "newOrder", &err);
    assert_int_equal(err.kind, ACME_ERR_CA);
    assert_non_null(strstr(err.msg, "newOrder"));
    assert_non_null(strstr(err.msg, "rejectedIdentifier"));
    assert_non_null(strstr(err.msg, "bad.example"));
    assert_non_null(strstr(err.msg, "CAA forbids"));

    r = resp(429, "application/problem+json",
             "{\"type\":\"urn:ietf:params:acme:error:rateLimited\",\"detail\":\"slow down\"}");
    r->retry_after = 3600;
    acme_client_resp_error(r, "newOrder", &err);
    assert_int_equal(err.kind, ACME_ERR_RATELIMIT);
    assert_int_equal(err.retry_after, 3600);

    r = resp(503, "text/html", "<html>down</html>");
    acme_client_resp_error(r, "finalize", &err);
    assert_int_equal(err.kind, ACME_ERR_NETWORK);
    assert_non_null(strstr(err.msg, "HTTP 503"));

    r = resp(500, "application/problem+json",
             "{\"type\":\"urn:ietf:params:acme:error:serverInternal\",\"detail\":\"oops\"}");
    acme_client_resp_error(r, "finalize", &err);
    assert_int_equal(err.kind, ACME_ERR_NETWORK);
    assert_non_null(strstr(err.msg, "serverInternal"));

    /* garbage body with a problem content type: still a clear message, no crash */
    r = resp(400, "application/problem+json", "{\"type\": 12, \"detail\": [");
    acme_client_resp_error(r, "newAccount", &err);
    assert_int_equal(err.kind, ACME_ERR_CA);
    assert_non_null(strstr(err.msg, "HTTP 400"));

    memset(r, 0, sizeof(*r));
    r->ok = 0;
    snprintf(r->errmsg, sizeof(r->errmsg), "Connection refused");
    acme_client_resp_error(r, "cannot reach the CA", &err);
    assert_int_equal(err.kind, ACME_ERR_NETWORK);
    assert_non_null(strstr(err.msg, "Connection refused"));

    r->status = -1;
    snprintf(r->errmsg, sizeof(r->errmsg), "response body larger than 1048576 bytes");
    acme_client_resp_error(r, "directory", &err);
    assert_int_equal(err.kind, ACME_ERR_BADRESPONSE);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timers_fire_in_order),
        cmocka_unit_test(test_timer_cancel),
        cmocka_unit_test(test_run_stops_on_flag_and_timeout),
        cmocka_unit_test(test_hosted_timer),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_resp_error_problem),
    };

    return cmocka_run_group_tests_name("loop", tests, NULL, NULL);
}
