/* On-demand TLS: the ClientHello's server name read ahead, which names may have a certificate, the limits. */
#include "unit.h"
#include <openssl/ssl.h>
#include "acme_clienthello.h"
#include "acme_ondemand.h"
#include "acme_ondemand_cluster.h"
#include <stdio.h>
#include <sys/stat.h>

/* A real ClientHello from OpenSSL, with sni (NULL: none) and ALPN protocols (wire format, NULL: none). */
static size_t
client_hello_alpn(const char *sni, const char *alpn, size_t alpn_len, unsigned char *out, size_t size)
{
    SSL_CTX  *ctx;
    SSL      *ssl;
    BIO      *rb, *wb;
    int       n;

    ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    ssl = SSL_new(ctx);
    rb = BIO_new(BIO_s_mem());
    wb = BIO_new(BIO_s_mem());
    SSL_set_bio(ssl, rb, wb);
    if (sni != NULL) {
        SSL_set_tlsext_host_name(ssl, sni);
    }
    if (alpn != NULL) {
        assert_int_equal(SSL_set_alpn_protos(ssl, (const unsigned char *) alpn, (unsigned) alpn_len), 0);
    }
    SSL_set_connect_state(ssl);
    assert_int_equal(SSL_do_handshake(ssl), -1);
    n = BIO_read(wb, out, (int) size);
    assert_true(n > 0);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    return (size_t) n;
}

static size_t
client_hello(const char *sni, unsigned char *out, size_t size)
{
    return client_hello_alpn(sni, NULL, 0, out, size);
}

static void
test_acme_alpn(void **state)
{
    unsigned char  buf[ACME_CLIENTHELLO_MAX];
    size_t         n;

    (void) state;
    n = client_hello_alpn("a.example.com", "\x0a" "acme-tls/1", 11, buf, sizeof(buf));
    assert_int_equal(acme_clienthello_acme_alpn(buf, n), 1);
    n = client_hello_alpn("a.example.com", "\x02" "h2" "\x08" "http/1.1", 12, buf, sizeof(buf));
    assert_int_equal(acme_clienthello_acme_alpn(buf, n), 0);
    n = client_hello("a.example.com", buf, sizeof(buf));
    assert_int_equal(acme_clienthello_acme_alpn(buf, n), 0);
    assert_int_equal(acme_clienthello_acme_alpn(buf, n - 1), 0);
}

static void
test_sni_found(void **state)
{
    unsigned char  buf[ACME_CLIENTHELLO_MAX];
    size_t         n, i, sl;
    const char    *s;

    (void) state;
    n = client_hello("shop.example.com", buf, sizeof(buf));
    assert_int_equal(acme_clienthello_sni(buf, n, &s, &sl), ACME_CH_SNI);
    assert_int_equal(sl, strlen("shop.example.com"));
    assert_memory_equal(s, "shop.example.com", sl);

    /* every prefix asks for more, never reads past what it has */
    for (i = 0; i < n; i++) {
        unsigned char *cut = malloc(i ? i : 1);

        memcpy(cut, buf, i);
        assert_int_equal(acme_clienthello_sni(cut, i, &s, &sl), ACME_CH_MORE);
        free(cut);
    }
}

static void
test_sni_none(void **state)
{
    unsigned char  buf[ACME_CLIENTHELLO_MAX];
    size_t         n, sl;
    const char    *s;

    (void) state;
    n = client_hello(NULL, buf, sizeof(buf));
    assert_int_equal(acme_clienthello_sni(buf, n, &s, &sl), ACME_CH_NONE);
    assert_null(s);
}

static void
test_not_tls(void **state)
{
    unsigned char  buf[ACME_CLIENTHELLO_MAX];
    size_t         n, i, sl;
    const char    *s;

    (void) state;
    assert_int_equal(acme_clienthello_sni((const unsigned char *) "GET / HTTP/1.1\r\n", 16, &s, &sl),
                     ACME_CH_NOT_TLS);
    n = client_hello("a.example.com", buf, sizeof(buf));
    /* a record length beyond 16 KiB */
    buf[3] = 0x50;
    assert_int_equal(acme_clienthello_sni(buf, n, &s, &sl), ACME_CH_NOT_TLS);
    /* every single-byte corruption: an answer, never a read out of bounds (ASan watches) */
    n = client_hello("a.example.com", buf, sizeof(buf));
    for (i = 5; i < n; i++) {
        unsigned char *copy = malloc(n);

        memcpy(copy, buf, n);
        copy[i] ^= 0xff;
        (void) acme_clienthello_sni(copy, n, &s, &sl);
        (void) acme_clienthello_acme_alpn(copy, n);
        if (s != NULL) {
            assert_true((const unsigned char *) s >= copy && (const unsigned char *) s + sl <= copy + n);
        }
        free(copy);
    }
}

static void
test_names(void **state)
{
    char buf[256];

    (void) state;
    assert_int_equal(acme_ondemand_name("Shop.Example.COM.", 17, buf, sizeof(buf)), 16);
    assert_string_equal(buf, "shop.example.com");
    assert_int_equal(acme_ondemand_name("192.0.2.1", 9, buf, sizeof(buf)), 0);
    assert_int_equal(acme_ondemand_name("1.2.3", 5, buf, sizeof(buf)), 0);
    assert_int_equal(acme_ondemand_name("::1", 3, buf, sizeof(buf)), 0);
    assert_int_equal(acme_ondemand_name("localhost", 9, buf, sizeof(buf)), 0);
    assert_int_equal(acme_ondemand_name("*.example.com", 13, buf, sizeof(buf)), 0);
    assert_int_equal(acme_ondemand_name("a..example.com", 14, buf, sizeof(buf)), 0);
    assert_int_equal(acme_ondemand_name("-a.example.com", 14, buf, sizeof(buf)), 0);
    assert_int_equal(acme_ondemand_name("a_b.example.com", 15, buf, sizeof(buf)), 0);
    assert_int_equal(acme_ondemand_name("a\0b.example.com", 15, buf, sizeof(buf)), 0);
}

static void
test_limits(void **state)
{
    int                   i;
    acme_err_t            err;
    acme_ondemand_t      *od;
    acme_od_verdict_t     v;
    acme_ondemand_conf_t  conf;

    (void) state;
    memset(&conf, 0, sizeof(conf));
    conf.max_certs = 5;
    conf.rate_per_min = 3;
    od = acme_ondemand_new(NULL, &conf, &err);
    assert_non_null(od);

    assert_int_equal(acme_ondemand_decide(od, "1.2.3.4", 0, NULL, NULL, &v), 0);
    assert_int_equal(v, ACME_OD_INVALID_NAME);
    assert_int_equal(acme_ondemand_decide(od, "a.example.com", 5, NULL, NULL, &v), 0);
    assert_int_equal(v, ACME_OD_MAX_COUNT);
    /* refusals take nothing from the rate */
    for (i = 0; i < 3; i++) {
        assert_int_equal(acme_ondemand_decide(od, "a.example.com", 0, NULL, NULL, &v), 0);
        assert_int_equal(v, ACME_OD_ALLOWED);
    }
    assert_int_equal(acme_ondemand_decide(od, "d.example.com", 0, NULL, NULL, &v), 0);
    assert_int_equal(v, ACME_OD_RATE_LIMITED);
    assert_string_equal(acme_od_verdict_name(v), "rate_limited");
    acme_ondemand_free(od);
}

/* max and rate counted for every node of a shared store (here a directory store, which locks the same way) */
static void
test_cluster_limits(void **state)
{
    char                  dir[] = "/tmp/acme-test-odcl-XXXXXX";
    char                  root[64];
    const char           *index = "{\"names\":[{\"name\":\"old.example.com\",\"seen\":1}]}";
    acme_store_t         *st, *other;
    acme_err_t            err;
    acme_od_verdict_t     v;
    acme_ondemand_conf_t  conf;
    acme_lock_t          *lk;
    time_t                now = 1000000;

    (void) state;
    assert_non_null(mkdtemp(dir));
    snprintf(root, sizeof(root), "%s/state", dir);
    st = acme_store_fs_open(root, 1, &err);
    other = acme_store_fs_open(root, 0, &err);     /* a second node */
    assert_non_null(st);
    assert_non_null(other);
    memset(&conf, 0, sizeof(conf));
    conf.max_certs = 4;
    conf.rate_per_min = 2;
    assert_int_equal(acme_store_put(st, ACME_OD_NAMES_KEY, index, strlen(index), 0, &err), 0);

    assert_int_equal(acme_ondemand_cluster_admit(st, &conf, "a.example.com", now, &v, &err), 0);
    assert_int_equal(v, ACME_OD_ALLOWED);
    /* the other node sees the first one's allowance: its rate is the cluster's */
    assert_int_equal(acme_ondemand_cluster_admit(other, &conf, "b.example.com", now + 1, &v, &err), 0);
    assert_int_equal(v, ACME_OD_ALLOWED);
    assert_int_equal(acme_ondemand_cluster_admit(st, &conf, "c.example.com", now + 2, &v, &err), 0);
    assert_int_equal(v, ACME_OD_RATE_LIMITED);
    /* a name allowed already (being ordered elsewhere) or in the index costs nothing */
    assert_int_equal(acme_ondemand_cluster_admit(st, &conf, "b.example.com", now + 2, &v, &err), 0);
    assert_int_equal(v, ACME_OD_ALLOWED);
    assert_int_equal(acme_ondemand_cluster_admit(other, &conf, "old.example.com", now + 2, &v, &err), 0);
    assert_int_equal(v, ACME_OD_ALLOWED);
    /* a minute later the rate allows again; max counts the index and the recent allowances */
    assert_int_equal(acme_ondemand_cluster_admit(st, &conf, "c.example.com", now + 61, &v, &err), 0);
    assert_int_equal(v, ACME_OD_ALLOWED);
    assert_int_equal(acme_ondemand_cluster_admit(st, &conf, "d.example.com", now + 62, &v, &err), 0);
    assert_int_equal(v, ACME_OD_ALLOWED);
    assert_int_equal(acme_ondemand_cluster_admit(st, &conf, "e.example.com", now + 63, &v, &err), 0);
    assert_int_equal(v, ACME_OD_RATE_LIMITED);
    conf.rate_per_min = 100;
    assert_int_equal(acme_ondemand_cluster_admit(st, &conf, "e.example.com", now + 63, &v, &err), 0);
    assert_int_equal(v, ACME_OD_ALLOWED);       /* old, c, d, e */
    assert_int_equal(acme_ondemand_cluster_admit(st, &conf, "f.example.com", now + 64, &v, &err), 0);
    assert_int_equal(v, ACME_OD_MAX_COUNT);
    /* another node in the middle of its update: try again */
    assert_int_equal(other->ops->lock(other, "ondemand-limits", &lk, &err), 1);
    assert_int_equal(acme_ondemand_cluster_admit(st, &conf, "f.example.com", now + 64, &v, &err), 1);
    other->ops->unlock(lk);
    /* a damaged record counts as empty */
    assert_int_equal(acme_store_put(st, ACME_OD_ALLOWED_KEY, "[1,", 3, 0, &err), 0);
    assert_int_equal(acme_ondemand_cluster_admit(st, &conf, "g.example.com", now + 200, &v, &err), 0);
    assert_int_equal(v, ACME_OD_ALLOWED);

    acme_store_close(st);
    acme_store_close(other);
    unit_rmtree(dir);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sni_found),
        cmocka_unit_test(test_sni_none),
        cmocka_unit_test(test_acme_alpn),
        cmocka_unit_test(test_not_tls),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_cluster_limits),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
