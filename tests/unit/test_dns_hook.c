/* DNS publishers: the hook's exit status and output reach us although the host reaps every child (as
 * nginx's SIGCHLD handler does with waitpid(-1)); acme-dns account files. */
#include "unit.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "acme_dns_int.h"

static volatile sig_atomic_t  reaped;

/* nginx's ngx_process_get_status(): every child, whoever started it */
static void
reap_all(int signo)
{
    int  st;

    (void) signo;
    while (waitpid(-1, &st, WNOHANG) > 0) {
        reaped++;
    }
}

static char *
script(const char *body)
{
    char   path[] = "/tmp/acme-hook-XXXXXX";
    int    fd = mkstemp(path);
    FILE  *f;

    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    fprintf(f, "#!/bin/sh\n%s\n", body);
    fclose(f);
    chmod(path, 0700);
    return strdup(path);
}

static int
run(const char *body, long timeout, char **out, acme_err_t *err)
{
    acme_dns_config_t   cfg;
    acme_dns_record_t   rec = { .name = "_acme-challenge.x.example", .value = "VALUE", .cert = "x" };
    acme_dns_target_t   t = { .fqdn = "_acme-challenge.x.example.", .zone = "example.", .mname = "ns." };
    int                 rc;

    memset(&cfg, 0, sizeof(cfg));
    cfg.method = ACME_DNS_HOOK;
    cfg.hook = script(body);
    cfg.hook_timeout = timeout;
    assert_int_equal(acme_dns_config_check(&cfg, err), 0);
    rc = acme_dns_hook_run(&cfg, &rec, &t, 1, NULL, out, err);
    unlink(cfg.hook);
    free(cfg.hook);
    return rc;
}

static void
test_hook_status_with_a_reaping_host(void **state)
{
    struct sigaction  sa, old;
    acme_err_t        err;
    char             *out = NULL;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = reap_all;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGCHLD, &sa, &old);
    reaped = 0;

    assert_int_equal(run("echo \"args: $1 $2 $3 $ACME_IDENTIFIER\"; sleep 0.2; exit 0", 10, &out, &err), 0);
    assert_non_null(out);
    assert_non_null(strstr(out, "hook add _acme-challenge.x.example.: args: add _acme-challenge.x.example. "
                                "VALUE x.example\n"));
    free(out);
    out = NULL;

    assert_int_equal(run("echo first; echo 'no such zone' >&2; sleep 0.2; exit 3", 10, &out, &err), -1);
    assert_string_equal(err.msg + strlen(err.msg) - strlen("exited with status 3: no such zone"),
                        "exited with status 3: no such zone");
    free(out);
    out = NULL;

    /* the hook is not this process's child, so the host's waitpid(-1) can never take its status */
    {
        char  *p;
        long  ppid;

        assert_int_equal(run("echo ppid=$PPID; exit 0", 10, &out, &err), 0);
        p = strstr(out, "ppid=");
        assert_non_null(p);
        ppid = strtol(p + 5, NULL, 10);
        assert_true(ppid > 1 && ppid != (long) getpid());
        free(out);
    }
    sigaction(SIGCHLD, &old, NULL);
}

static void
test_hook_killed_at_its_limit(void **state)
{
    acme_err_t   err;
    char        *out = NULL;
    time_t       t0 = time(NULL);

    assert_int_equal(run("echo waiting; exec sleep 60", 1, &out, &err), -1);
    assert_true(time(NULL) - t0 <= 4);
    assert_non_null(strstr(err.msg, "did not finish within 1 s: killed; it printed last: waiting"));
    free(out);
}

static void
test_acmedns_accounts(void **state)
{
    acme_dns_config_t                cfg;
    const acme_acmedns_account_t    *a;
    acme_err_t                       err;
    const char *one = "{\"username\":\"u1\",\"password\":\"pw-secret-1\",\"subdomain\":\"s1\","
                      "\"fulldomain\":\"s1.auth.example\",\"allowfrom\":[]}";
    const char *many = "{\"a.example\":{\"username\":\"ua\",\"password\":\"p\",\"subdomain\":\"sa\","
                       "\"fulldomain\":\"sa.auth.example\"},\"*.b.example\":{\"username\":\"ub\","
                       "\"password\":\"p\",\"subdomain\":\"sb\",\"fulldomain\":\"sb.auth.example\"}}";
    const char *bad = "{\"a.example\":{\"username\":\"ua\",\"password\":\"pw-secret-2\",\"subdomain\":\"sa\"}}";

    memset(&cfg, 0, sizeof(cfg));
    assert_int_equal(acme_acmedns_parse(one, strlen(one), "F", &cfg, &err), 0);
    a = acme_acmedns_account(&cfg, "*.anything.example");
    assert_non_null(a);
    assert_string_equal(a->subdomain, "s1");
    acme_dns_config_free(&cfg);

    assert_int_equal(acme_acmedns_parse(many, strlen(many), "F", &cfg, &err), 0);
    assert_string_equal(acme_acmedns_account(&cfg, "A.example")->username, "ua");
    assert_string_equal(acme_acmedns_account(&cfg, "*.b.example")->username, "ub");
    assert_string_equal(acme_acmedns_account(&cfg, "b.example")->username, "ub");
    assert_null(acme_acmedns_account(&cfg, "c.example"));
    acme_dns_config_free(&cfg);

    assert_int_equal(acme_acmedns_parse(bad, strlen(bad), "F", &cfg, &err), -1);
    assert_string_equal(err.msg, "F: the account for a.example has no \"fulldomain\"");
    assert_int_equal(acme_acmedns_parse("{\"x\":", 5, "F", &cfg, &err), -1);
    assert_null(strstr(err.msg, "pw-secret"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hook_status_with_a_reaping_host),
        cmocka_unit_test(test_hook_killed_at_its_limit),
        cmocka_unit_test(test_acmedns_accounts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
