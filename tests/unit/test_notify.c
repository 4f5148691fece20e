/* Notifications: runs in order, one at a time, their output and result in the log, a hanging program
 * killed at its limit and at free, all while the loop keeps running. */
#include "unit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "acme_notify.h"

static char logbuf[16384];

static void
log_cb(void *data, int level, const char *msg)
{
    (void) data;
    (void) level;
    if (strlen(logbuf) + strlen(msg) + 2 < sizeof(logbuf)) {
        strcat(logbuf, msg);
        strcat(logbuf, "\n");
    }
}

static char *
script(const char *body)
{
    char   path[] = "/tmp/acme-notify-XXXXXX";
    int    fd = mkstemp(path);
    FILE  *f;

    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    fprintf(f, "#!/bin/sh\n%s\n", body);
    fclose(f);
    chmod(path, 0700);
    return strdup(path);
}

static acme_loop_t *
loop_new(void)
{
    acme_host_t  host;
    acme_err_t   err;

    memset(&host, 0, sizeof(host));
    host.log = log_cb;
    logbuf[0] = '\0';
    return acme_loop_new(&host, ACME_LOG_DEBUG, &err);
}

static void
run_until_idle(acme_loop_t *loop, acme_notify_t *n, int max_s)
{
    time_t end = time(NULL) + max_s;

    while (acme_notify_busy(n) && time(NULL) < end) {
        acme_loop_run(loop, NULL, 100);
    }
}

static void
test_notify_order_and_log(void **state)
{
    acme_loop_t          *loop = loop_new();
    char                 *prog = script("echo \"$1 $2 $ACME_DOMAINS $ACME_FULLCHAIN ${ACME_ERROR:-}\"; "
                                        "[ \"$1\" != failed ]");
    acme_notify_conf_t    conf = { .program = prog, .store_dir = "/state" };
    acme_notify_event_t   ev = { .event = "issued", .name = "a.example", .domains = "a.example www.a.example",
                                 .not_after = 1767225600 };
    acme_err_t            err;
    acme_notify_t        *n;
    const char           *p1, *p2;

    (void) state;
    n = acme_notify_new(loop, &conf, &err);
    assert_non_null(n);
    assert_int_equal(acme_notify_expiring(n), ACME_NOTIFY_EXPIRING_DEFAULT);
    acme_notify_event(n, &ev);
    ev.event = "failed";
    ev.error = "the CA said no";
    acme_notify_event(n, &ev);
    assert_true(acme_notify_busy(n));
    run_until_idle(loop, n, 10);
    assert_false(acme_notify_busy(n));
    p1 = strstr(logbuf, "acme: notify issued \"a.example\": issued a.example a.example www.a.example "
                        "/state/certs/a.example/fullchain.pem \n");
    p2 = strstr(logbuf, "acme: notify failed \"a.example\": failed a.example a.example www.a.example "
                        "/state/certs/a.example/fullchain.pem the CA said no\n");
    assert_non_null(p1);
    assert_non_null(p2);
    assert_true(p1 < p2);   /* in order */
    assert_non_null(strstr(logbuf, "acme: notify issued \"a.example\" (/tmp/acme-notify-"));
    assert_non_null(strstr(logbuf, "): done\n"));
    assert_non_null(strstr(logbuf, "): exited with status 1: failed a.example"));
    acme_notify_free(n);
    acme_loop_free(loop);
    unlink(prog);
    free(prog);
}

static void
test_notify_hanging_killed(void **state)
{
    acme_loop_t          *loop = loop_new();
    char                 *prog = script("sleep 60");
    acme_notify_conf_t    conf = { .program = prog, .timeout = 1 };
    acme_notify_event_t   ev = { .event = "renewed", .name = "b.example", .domains = "b.example" };
    acme_err_t            err;
    acme_notify_t        *n;
    time_t                t0 = time(NULL);

    (void) state;
    n = acme_notify_new(loop, &conf, &err);
    assert_non_null(n);
    acme_notify_event(n, &ev);
    run_until_idle(loop, n, 10);
    assert_true(time(NULL) - t0 <= 4);
    assert_non_null(strstr(logbuf, "acme: notify renewed \"b.example\" ("));
    assert_non_null(strstr(logbuf, "): did not finish within 1 s: killed"));

    /* freed while one runs: killed at once, not waited for to the end */
    conf.timeout = 60;
    acme_notify_free(n);
    n = acme_notify_new(loop, &conf, &err);
    acme_notify_event(n, &ev);
    acme_loop_run(loop, NULL, 300);
    t0 = time(NULL);
    acme_notify_free(n);
    assert_true(time(NULL) - t0 <= 3);
    acme_loop_free(loop);
    unlink(prog);
    free(prog);
}

static void
test_notify_program_checked(void **state)
{
    acme_loop_t         *loop = loop_new();
    acme_notify_conf_t   conf = { .program = "relative/prog" };
    acme_err_t           err;

    (void) state;
    assert_null(acme_notify_new(loop, &conf, &err));
    assert_string_equal(err.msg, "the notification program \"relative/prog\" is not an absolute path");
    conf.program = "/nonexistent/prog";
    assert_null(acme_notify_new(loop, &conf, &err));
    assert_string_equal(err.msg, "the notification program \"/nonexistent/prog\": No such file or directory");
    acme_loop_free(loop);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_notify_order_and_log),
        cmocka_unit_test(test_notify_hanging_killed),
        cmocka_unit_test(test_notify_program_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
