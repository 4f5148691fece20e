/* DNS validation: TSIG key files, the dns-01 name and value, DNS work off the event loop. */
#include "unit.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "acme_dns.h"

#define SECRET  "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

static void
test_tsig_bind_format(void **state)
{
    acme_tsig_key_t  k;
    acme_err_t       err;

    /* what tsig-keygen writes, with comments around */
    assert_int_equal(acme_tsig_key_parse("# made by tsig-keygen\nkey \"acme-key.\" {\n\talgorithm hmac-sha512;"
                                         "\n\tsecret \"" SECRET "\";\n};\n// end\n", "f", &k, &err), 0);
    assert_string_equal(k.name, "acme-key.");
    assert_string_equal(k.algorithm, "hmac-sha512");
    assert_string_equal(k.secret, SECRET);
    acme_tsig_key_free(&k);

    /* knotc's form: unquoted name, upper-case algorithm */
    assert_int_equal(acme_tsig_key_parse("key acme { algorithm HMAC-SHA256; secret \"" SECRET "\"; };",
                                         "f", &k, &err), 0);
    assert_string_equal(k.name, "acme");
    assert_string_equal(k.algorithm, "hmac-sha256");
    acme_tsig_key_free(&k);
}

static void
test_tsig_line_format(void **state)
{
    acme_tsig_key_t  k;
    acme_err_t       err;

    assert_int_equal(acme_tsig_key_parse("hmac-sha384:acme:" SECRET "\n", "f", &k, &err), 0);
    assert_string_equal(k.name, "acme");
    assert_string_equal(k.algorithm, "hmac-sha384");
    assert_string_equal(k.secret, SECRET);
    acme_tsig_key_free(&k);

    /* NAME:SECRET: hmac-sha256 */
    assert_int_equal(acme_tsig_key_parse("acme:" SECRET, "f", &k, &err), 0);
    assert_string_equal(k.algorithm, "hmac-sha256");
    acme_tsig_key_free(&k);
}

static void
test_tsig_refused_without_secret_in_message(void **state)
{
    acme_tsig_key_t  k;
    acme_err_t       err;

    assert_int_equal(acme_tsig_key_parse("key \"k\" { algorithm hmac-md5; secret \"" SECRET "\"; };", "FILE",
                                         &k, &err), -1);
    assert_non_null(strstr(err.msg, "FILE: TSIG algorithm \"hmac-md5\" is not supported"));
    assert_null(strstr(err.msg, "AAECAwQF"));

    assert_int_equal(acme_tsig_key_parse("key \"k\" { algorithm hmac-sha256; secret \"not!base64\"; };",
                                         "FILE", &k, &err), -1);
    assert_non_null(strstr(err.msg, "the secret of key \"k\" is not base64"));
    assert_null(strstr(err.msg, "not!base64"));

    /* too short a key */
    assert_int_equal(acme_tsig_key_parse("k:AAECAw==", "FILE", &k, &err), -1);
    assert_null(strstr(err.msg, "AAECAw"));

    assert_int_equal(acme_tsig_key_parse("key \"k\" { algorithm hmac-sha256; };", "FILE", &k, &err), -1);
    assert_non_null(strstr(err.msg, "key \"k\" has no secret"));

    assert_int_equal(acme_tsig_key_parse("options { };", "FILE", &k, &err), -1);
    assert_int_equal(acme_tsig_key_load("/nonexistent/tsig.key", &k, &err), -1);
    assert_non_null(strstr(err.msg, "TSIG key file \"/nonexistent/tsig.key\""));
}

/* Every algorithm taken from a key file can sign an RFC 2136 update (hmac-sha384 too: libknot signs) */
static void
test_rfc2136_key_signs(void **state)
{
    static const char  *algs[] = { "hmac-sha256", "hmac-sha384", "hmac-sha512" };
    acme_dns_config_t   cfg;
    acme_err_t          err;
    char                line[200];
    size_t              i;

    for (i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
        memset(&cfg, 0, sizeof(cfg));
        cfg.method = ACME_DNS_RFC2136;
        snprintf(line, sizeof(line), "%s:acme-key:%s", algs[i], SECRET);
        assert_int_equal(acme_tsig_key_parse(line, "f", &cfg.tsig, &err), 0);
        memset(&err, 0, sizeof(err));
        if (acme_dns_config_check(&cfg, &err) != 0) {
            fail_msg("%s: %s", algs[i], err.msg);
        }
        acme_tsig_key_free(&cfg.tsig);
    }
}

static void
test_dns01_name_and_value(void **state)
{
    char *v, *n;

    /* base64url(SHA-256("token.thumbprint")), computed independently:
     * printf %s token.thumbprint | openssl dgst -sha256 -binary | basenc --base64url | tr -d = */
    v = acme_dns01_value("token.thumbprint");
    assert_string_equal(v, "61rBZ_4knHblO0MNoxFsXZ_eTFUHum0B6IVRbhvUn5I");
    free(v);
    n = acme_dns01_name("*.example.org");
    assert_string_equal(n, "_acme-challenge.example.org");
    free(n);
    n = acme_dns01_name("www.example.org");
    assert_string_equal(n, "_acme-challenge.www.example.org");
    free(n);
}

/* ---- off the loop ---- */

typedef struct {
    int         calls;
    int         failed;
    acme_err_t  err;
} result_t;

static void
done(void *arg, const acme_err_t *err, const acme_dns_result_t *res)
{
    result_t *r = arg;

    (void) res;
    r->calls++;
    r->failed = err != NULL;
    if (err != NULL) {
        r->err = *err;
    }
}

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

/* A DNS server that never answers: a bound UDP socket nobody reads. */
static int
silent_server(char *hostport, size_t len)
{
    struct sockaddr_in  sa;
    socklen_t           sl = sizeof(sa);
    int                 fd = socket(AF_INET, SOCK_DGRAM, 0);

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *) &sa, &sl), 0);
    snprintf(hostport, len, "127.0.0.1:%d", ntohs(sa.sin_port));
    return fd;
}

static void
test_task_does_not_block_the_loop(void **state)
{
    acme_host_t        host = { .set_timer = host_set_timer, .watch = host_watch };
    acme_dns_config_t  cfg;
    acme_dns_record_t  rec = { .name = "_acme-challenge.example.test", .value = "value" };
    acme_dns_task_t   *t;
    acme_loop_t       *loop;
    acme_err_t         err;
    result_t           r;
    char               hp[64];
    long               t0;
    int                fd, turns = 0;

    fd = silent_server(hp, sizeof(hp));
    memset(&cfg, 0, sizeof(cfg));
    cfg.method = ACME_DNS_RFC2136;
    cfg.resolver = hp;
    memset(&r, 0, sizeof(r));
    loop = acme_loop_new(&host, ACME_LOG_ERR, &err);
    assert_non_null(loop);

    t0 = now_ms();
    t = acme_dns_task_start(loop, &cfg, 1, &rec, 1, done, &r, &err);
    assert_non_null(t);
    assert_true(now_ms() - t0 < 100);
    /* the loop turns while the thread waits for the silent server (seconds) */
    while (r.calls == 0 && now_ms() - t0 < 30000) {
        assert_true(host_timer_ms >= 0 && host_timer_ms <= 100);
        usleep((useconds_t) host_timer_ms * 1000);
        acme_loop_on_timer(loop);
        turns++;
    }
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.failed, 1);
    assert_non_null(strstr(r.err.msg, "DNS query _acme-challenge.example.test."));
    assert_true(turns > 10);
    acme_loop_free(loop);
    close(fd);
}

static void
test_task_cancel_does_not_wait(void **state)
{
    acme_host_t        host = { .set_timer = host_set_timer, .watch = host_watch };
    acme_dns_config_t  cfg;
    acme_dns_record_t  rec = { .name = "_acme-challenge.example.test", .value = "value" };
    acme_dns_task_t   *t;
    acme_loop_t       *loop;
    acme_err_t         err;
    result_t           r;
    char               hp[64];
    long               t0;
    int                fd;

    fd = silent_server(hp, sizeof(hp));
    memset(&cfg, 0, sizeof(cfg));
    cfg.method = ACME_DNS_RFC2136;
    cfg.resolver = hp;
    memset(&r, 0, sizeof(r));
    loop = acme_loop_new(&host, ACME_LOG_ERR, &err);

    t = acme_dns_task_start(loop, &cfg, 1, &rec, 1, done, &r, &err);
    assert_non_null(t);
    usleep(20000);
    t0 = now_ms();
    acme_dns_task_cancel(t);
    /* the thread is in a query with a 2 s timeout: cancel does not wait for it */
    assert_true(now_ms() - t0 < 200);
    assert_int_equal(acme_loop_pending(loop), 0);
    /* the caller's configuration may go at once (the task has its own copy) */
    memset(&cfg, 0, sizeof(cfg));
    acme_loop_on_timer(loop);
    assert_int_equal(r.calls, 0);
    acme_loop_free(loop);
    /* the abandoned thread frees the task after its query (LeakSanitizer would see it otherwise) */
    sleep(5);
    close(fd);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tsig_bind_format),
        cmocka_unit_test(test_tsig_line_format),
        cmocka_unit_test(test_tsig_refused_without_secret_in_message),
        cmocka_unit_test(test_rfc2136_key_signs),
        cmocka_unit_test(test_dns01_name_and_value),
        cmocka_unit_test(test_task_does_not_block_the_loop),
        cmocka_unit_test(test_task_cancel_does_not_wait),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
