/* Certificate chains: PEM parsing, facts, acme_chain_check, wildcards, ARI identifiers, self-signed. */
#include "unit.h"
#include "acme_x509.h"
#include "acme_key.h"
#include "acme_b64.h"

#include <time.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

/* RFC 9773 Appendix A: the example certificate whose identifier section 4.1 derives. */
static const char  rfc9773_cert[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBQzCB66ADAgECAgUAh2VDITAKBggqhkjOPQQDAjAVMRMwEQYDVQQDEwpFeGFt\n"
    "cGxlIENBMCIYDzAwMDEwMTAxMDAwMDAwWhgPMDAwMTAxMDEwMDAwMDBaMBYxFDAS\n"
    "BgNVBAMTC2V4YW1wbGUuY29tMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEeBZu\n"
    "7cbpAYNXZLbbh8rNIzuOoqOOtmxA1v7cRm//AwyMwWxyHz4zfwmBhcSrf47NUAFf\n"
    "qzLQ2PPQxdTXREYEnKMjMCEwHwYDVR0jBBgwFoAUaYhba4dGQEHhs3uEe6CuLN4B\n"
    "yNQwCgYIKoZIzj0EAwIDRwAwRAIge09+S5TZAlw5tgtiVvuERV6cT4mfutXIlwTb\n"
    "+FYN/8oCIClDsqBklhB9KAelFiYt9+6FDj3z4KGVelYM5MdsO3pK\n"
    "-----END CERTIFICATE-----\n";

#define LEAF_SAN  "DNS:example.org,DNS:*.example.org,IP:192.0.2.1,IP:2001:db8::1,URI:https://example.org/"

typedef struct {
    time_t     now;
    EVP_PKEY  *root_key, *inter_key, *leaf_key, *other_key;
    X509      *root, *inter, *leaf;
    char      *root_pem, *inter_pem, *leaf_pem;
} fixture_t;

static EVP_PKEY *
new_key(void)
{
    acme_keyspec_t  ks = ACME_KEYSPEC_DEFAULT;
    acme_err_t      err;
    EVP_PKEY       *k = acme_key_generate(&ks, &err);

    assert_non_null(k);
    return k;
}

static void
add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION  *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);

    assert_non_null(ext);
    assert_int_equal(X509_add_ext(x, ext, -1), 1);
    X509_EXTENSION_free(ext);
}

/*
 * A certificate for key, issued by issuer (NULL: self-signed) and signed with signer (NULL: the issuer's
 * key, given as issuer_key). san may be NULL. with_aki adds an AKI keyid taken from the issuer's SKI.
 */
static X509 *
make_cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *signer, int ca, const char *san,
    time_t nb, time_t na, const unsigned char *serial, size_t serial_len, int with_aki)
{
    X509        *x = X509_new();
    X509_NAME   *nm = X509_NAME_new();
    X509V3_CTX   ctx;
    BIGNUM      *bn;

    assert_non_null(x);
    assert_int_equal(X509_set_version(x, X509_VERSION_3), 1);
    bn = BN_bin2bn(serial, (int) serial_len, NULL);
    assert_non_null(BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)));
    BN_free(bn);

    assert_int_equal(X509_NAME_add_entry_by_NID(nm, NID_commonName, MBSTRING_UTF8, (const unsigned char *) cn,
                                                -1, -1, 0), 1);
    assert_int_equal(X509_set_subject_name(x, nm), 1);
    assert_int_equal(X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : nm), 1);
    X509_NAME_free(nm);
    assert_non_null(ASN1_TIME_set(X509_getm_notBefore(x), nb));
    assert_non_null(ASN1_TIME_set(X509_getm_notAfter(x), na));
    assert_int_equal(X509_set_pubkey(x, key), 1);

    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    if (ca) {
        add_ext(x, &ctx, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
        add_ext(x, &ctx, NID_subject_key_identifier, "hash");
    } else {
        add_ext(x, &ctx, NID_basic_constraints, "critical,CA:FALSE");
    }
    if (with_aki) {
        add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always");
    }
    if (san != NULL) {
        add_ext(x, &ctx, NID_subject_alt_name, san);
    }

    assert_true(X509_sign(x, signer ? signer : key, EVP_sha256()) > 0);
    return x;
}

static char *
pem_of(X509 *x)
{
    BIO   *bio = BIO_new(BIO_s_mem());
    char  *data, *s;
    long   n;

    assert_int_equal(PEM_write_bio_X509(bio, x), 1);
    n = BIO_get_mem_data(bio, &data);
    s = strndup(data, (size_t) n);
    BIO_free(bio);
    return s;
}

static const unsigned char  serial_root[] = { 0x01 };
static const unsigned char  serial_inter[] = { 0x02 };
static const unsigned char  serial_leaf[] = { 0x00, 0xab, 0xcd, 0xef, 0x01, 0x23 };

static int
setup(void **state)
{
    fixture_t  *f = calloc(1, sizeof(*f));

    f->now = time(NULL);
    f->root_key = new_key();
    f->inter_key = new_key();
    f->leaf_key = new_key();
    f->other_key = new_key();
    f->root = make_cert("Test Root X1", f->root_key, NULL, NULL, 1, NULL, f->now - 86400 * 365,
                        f->now + 86400 * 3650, serial_root, sizeof(serial_root), 0);
    f->inter = make_cert("Test Intermediate R1", f->inter_key, f->root, f->root_key, 1, NULL,
                         f->now - 86400 * 30, f->now + 86400 * 365, serial_inter, sizeof(serial_inter), 1);
    f->leaf = make_cert("example.org", f->leaf_key, f->inter, f->inter_key, 0, LEAF_SAN, f->now - 3600,
                        f->now + 86400 * 90, serial_leaf, sizeof(serial_leaf), 1);
    f->root_pem = pem_of(f->root);
    f->inter_pem = pem_of(f->inter);
    f->leaf_pem = pem_of(f->leaf);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    fixture_t  *f = *state;

    X509_free(f->root);
    X509_free(f->inter);
    X509_free(f->leaf);
    EVP_PKEY_free(f->root_key);
    EVP_PKEY_free(f->inter_key);
    EVP_PKEY_free(f->leaf_key);
    EVP_PKEY_free(f->other_key);
    free(f->root_pem);
    free(f->inter_pem);
    free(f->leaf_pem);
    free(f);
    return 0;
}

/* The happy chain: leaf, intermediate (and root when with_root). */
static STACK_OF(X509) *
chain_of(fixture_t *f, int with_root)
{
    STACK_OF(X509)  *sk;
    acme_err_t       err;
    char            *pem;

    pem = acme_sprintf("%s%s%s", f->leaf_pem, f->inter_pem, with_root ? f->root_pem : "");
    acme_err_clear(&err);
    assert_int_equal(acme_pem_chain_parse(pem, strlen(pem), &sk, &err), 0);
    free(pem);
    return sk;
}

static void
test_parse(void **state)
{
    fixture_t       *f = *state;
    STACK_OF(X509)  *sk;
    acme_err_t       err;
    char            *pem, *out, *crlf, *p, *q;
    size_t           len = 0;

    sk = chain_of(f, 1);
    assert_int_equal(sk_X509_num(sk), 3);
    assert_int_equal(X509_cmp(sk_X509_value(sk, 0), f->leaf), 0);
    assert_int_equal(X509_cmp(sk_X509_value(sk, 1), f->inter), 0);
    assert_int_equal(X509_cmp(sk_X509_value(sk, 2), f->root), 0);

    /* back to PEM: the same text */
    out = acme_pem_chain_string(sk, &len, &err);
    assert_non_null(out);
    pem = acme_sprintf("%s%s%s", f->leaf_pem, f->inter_pem, f->root_pem);
    assert_string_equal(out, pem);
    assert_int_equal(len, strlen(pem));
    free(out);

    /* one certificate: its own block, nothing of the rest of the chain */
    out = acme_x509_to_pem(sk_X509_value(sk, 1), &len, &err);
    assert_non_null(out);
    assert_string_equal(out, f->inter_pem);
    assert_int_equal(len, strlen(f->inter_pem));
    free(out);
    assert_null(acme_x509_to_pem(NULL, &len, &err));
    acme_chain_free(sk);

    /* CRLF line ends and surrounding whitespace are fine; the length bounds the input */
    crlf = malloc(2 * strlen(pem) + 16);
    q = crlf;
    *q++ = '\n';
    for (p = pem; *p; p++) {
        if (*p == '\n') {
            *q++ = '\r';
        }
        *q++ = *p;
    }
    strcpy(q, " \r\n\t\nGARBAGE");
    assert_int_equal(acme_pem_chain_parse(crlf, strlen(crlf) - 7, &sk, &err), 0);
    assert_int_equal(sk_X509_num(sk), 3);
    acme_chain_free(sk);
    acme_err_clear(&err);
    assert_int_equal(acme_pem_chain_parse(crlf, strlen(crlf), &sk, &err), -1);
    assert_null(sk);
    free(crlf);
    free(pem);
}

static void
check_refused(const char *pem, const char *msg_part)
{
    STACK_OF(X509)  *sk = (STACK_OF(X509) *) 1;
    acme_err_t       err;

    acme_err_clear(&err);
    assert_int_equal(acme_pem_chain_parse(pem, strlen(pem), &sk, &err), -1);
    assert_null(sk);
    assert_true(strlen(err.msg) > 0);
    if (msg_part != NULL && strstr(err.msg, msg_part) == NULL) {
        fail_msg("\"%s\" not in \"%s\"", msg_part, err.msg);
    }
}

static void
test_parse_garbage(void **state)
{
    fixture_t   *f = *state;
    char        *s, *body, *der_pem, *b64;
    const char  *p;
    unsigned char  *der = NULL, *der2;
    int          i, dlen;
    size_t       off;
    BIO         *bio;
    long         n;

    check_refused("", "empty");
    check_refused(" \n\t\r\n", "no certificate");

    s = acme_sprintf("garbage\n%s", f->leaf_pem);
    check_refused(s, "unexpected data");
    free(s);
    s = acme_sprintf("%sgarbage\n%s", f->leaf_pem, f->inter_pem);
    check_refused(s, "unexpected data");
    free(s);
    s = acme_sprintf("%s%s.", f->leaf_pem, f->inter_pem);
    check_refused(s, "unexpected data");
    free(s);

    /* a non-certificate block */
    s = acme_sprintf("%s-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", f->leaf_pem);
    check_refused(s, "PRIVATE KEY");
    free(s);
    s = acme_sprintf("%s", f->leaf_pem);
    memcpy(s, "-----BEGIN X509 CRL-----", 24);
    check_refused(s, "X509 CRL");
    free(s);
    body = strstr(f->inter_pem, "\n") + 1;
    s = acme_sprintf("-----BEGIN TRUSTED CERTIFICATE-----\n%.*s-----END TRUSTED CERTIFICATE-----\n",
                     (int) (strstr(body, "-----END") - body), body);
    check_refused(s, "TRUSTED CERTIFICATE");
    free(s);

    /* truncated: no END, or a new BEGIN before the END */
    s = acme_sprintf("%s%.*s", f->leaf_pem, (int) (strlen(f->inter_pem) - 30), f->inter_pem);
    check_refused(s, "truncated");
    free(s);
    s = acme_sprintf("%.*s%s", (int) (strstr(f->leaf_pem, "-----END") - f->leaf_pem), f->leaf_pem,
                     f->inter_pem);
    check_refused(s, "truncated");
    free(s);

    /* broken base64 in the body */
    s = acme_sprintf("%s", f->leaf_pem);
    s[40] = '!';
    check_refused(s, "certificate 0");
    free(s);

    /* PEM headers inside the block */
    s = acme_sprintf("-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\n\n%s",
                     strchr(f->leaf_pem, '\n') + 1);
    check_refused(s, NULL);
    free(s);

    /* valid base64 of a DER certificate followed by an extra byte */
    dlen = i2d_X509(f->leaf, &der);
    der2 = malloc((size_t) dlen + 1);
    memcpy(der2, der, (size_t) dlen);
    der2[dlen] = 0;
    OPENSSL_free(der);
    bio = BIO_new(BIO_s_mem());
    assert_true(PEM_write_bio(bio, "CERTIFICATE", "", der2, dlen + 1) > 0);
    n = BIO_get_mem_data(bio, &b64);
    der_pem = strndup(b64, (size_t) n);
    BIO_free(bio);
    free(der2);
    check_refused(der_pem, "not a valid certificate");
    free(der_pem);

    /* at most 10 certificates */
    s = calloc(11, strlen(f->inter_pem) + 1);
    off = 0;
    for (i = 0; i < 10; i++) {
        p = f->inter_pem;
        memcpy(s + off, p, strlen(p));
        off += strlen(p);
    }
    {
        STACK_OF(X509)  *sk;
        acme_err_t       err;

        assert_int_equal(acme_pem_chain_parse(s, off, &sk, &err), 0);
        assert_int_equal(sk_X509_num(sk), 10);
        acme_chain_free(sk);
    }
    memcpy(s + off, f->inter_pem, strlen(f->inter_pem));
    check_refused(s, "more than 10");
    free(s);

    assert_int_equal(ERR_peek_error(), 0);
}

static void
test_cert_info(void **state)
{
    fixture_t         *f = *state;
    acme_cert_info_t   info;
    acme_err_t         err;
    STACK_OF(X509)    *sk;

    assert_int_equal(acme_cert_info(f->leaf, &info, &err), 0);
    assert_int_equal(info.not_before, f->now - 3600);
    assert_int_equal(info.not_after, f->now + 86400 * 90);
    assert_string_equal(info.issuer_cn, "Test Intermediate R1");
    assert_string_equal(info.serial_hex, "abcdef0123");
    assert_int_equal(info.nnames, 4);   /* the URI is not a name */
    assert_string_equal(info.names[0], "example.org");
    assert_string_equal(info.names[1], "*.example.org");
    assert_string_equal(info.names[2], "192.0.2.1");
    assert_string_equal(info.names[3], "2001:db8::1");
    acme_cert_info_free(&info);
    assert_null(info.names);

    assert_int_equal(acme_cert_info(f->root, &info, &err), 0);
    assert_string_equal(info.issuer_cn, "Test Root X1");
    assert_string_equal(info.serial_hex, "01");
    assert_int_equal(info.nnames, 0);
    acme_cert_info_free(&info);

    /* the RFC 9773 example: year-1 dates, serial 0x87654321 */
    assert_int_equal(acme_pem_chain_parse(rfc9773_cert, strlen(rfc9773_cert), &sk, &err), 0);
    assert_int_equal(acme_cert_info(sk_X509_value(sk, 0), &info, &err), 0);
    assert_string_equal(info.issuer_cn, "Example CA");
    assert_string_equal(info.serial_hex, "87654321");
    assert_true(info.not_before < 0);
    acme_cert_info_free(&info);
    acme_chain_free(sk);

    assert_int_equal(acme_cert_info(NULL, &info, &err), -1);
}

static void
test_check_ok(void **state)
{
    fixture_t       *f = *state;
    STACK_OF(X509)  *sk;
    acme_err_t       err;
    acme_ident_t     ids[] = {
        { ACME_IDENT_DNS, "example.org" },
        { ACME_IDENT_DNS, "www.example.org" },
        { ACME_IDENT_DNS, "*.example.org" },
        { ACME_IDENT_IP, "192.0.2.1" },
        { ACME_IDENT_IP, "2001:db8:0:0::1" },
    };

    sk = chain_of(f, 0);
    acme_err_clear(&err);
    assert_int_equal(acme_chain_check(sk, f->leaf_key, ids, 5, f->now, &err), 0);
    assert_string_equal(err.msg, "");
    acme_chain_free(sk);

    sk = chain_of(f, 1);
    assert_int_equal(acme_chain_check(sk, f->leaf_key, ids, 5, f->now, &err), 0);
    acme_chain_free(sk);
}

static void
check_fails(STACK_OF(X509) *sk, EVP_PKEY *key, const acme_ident_t *ids, size_t n, time_t now,
    const char *msg_part)
{
    acme_err_t  err;

    acme_err_clear(&err);
    assert_int_equal(acme_chain_check(sk, key, ids, n, now, &err), -1);
    if (strstr(err.msg, msg_part) == NULL) {
        fail_msg("\"%s\" not in \"%s\"", msg_part, err.msg);
    }
}

static void
test_check_failures(void **state)
{
    fixture_t       *f = *state;
    STACK_OF(X509)  *sk;
    X509            *other_inter, *impostor, *other_root;
    acme_ident_t     one[] = { { ACME_IDENT_DNS, "example.org" } };
    acme_ident_t     missing[] = { { ACME_IDENT_DNS, "example.org" }, { ACME_IDENT_DNS, "example.net" } };
    acme_ident_t     missing_ip[] = { { ACME_IDENT_IP, "192.0.2.2" } };
    acme_ident_t     missing_ip6[] = { { ACME_IDENT_IP, "2001:db8::2" } };

    sk = chain_of(f, 0);

    /* wrong key */
    check_fails(sk, f->other_key, one, 1, f->now, "public key");
    /* missing names */
    check_fails(sk, f->leaf_key, missing, 2, f->now, "dns:example.net");
    check_fails(sk, f->leaf_key, missing_ip, 1, f->now, "ip:192.0.2.2");
    check_fails(sk, f->leaf_key, missing_ip6, 1, f->now, "ip:2001:db8::2");
    /* expired, not yet valid */
    check_fails(sk, f->leaf_key, one, 1, f->now + 86400 * 91, "expired");
    check_fails(sk, f->leaf_key, one, 1, f->now - 7200, "not valid yet");
    /* the edges are inside */
    assert_int_equal(acme_chain_check(sk, f->leaf_key, one, 1, f->now + 86400 * 90, NULL), 0);
    assert_int_equal(acme_chain_check(sk, f->leaf_key, one, 1, f->now - 3600, NULL), 0);
    acme_chain_free(sk);

    /* broken chain: the leaf followed by an unrelated intermediate (other name, other key) */
    other_inter = make_cert("Other Intermediate", f->other_key, f->root, f->root_key, 1, NULL, f->now - 86400,
                            f->now + 86400, serial_inter, sizeof(serial_inter), 1);
    sk = sk_X509_new_null();
    X509_up_ref(f->leaf);
    sk_X509_push(sk, f->leaf);
    sk_X509_push(sk, other_inter);
    check_fails(sk, f->leaf_key, one, 1, f->now, "certificate 0");
    acme_chain_free(sk);

    /* the right names but a signature by another key (no AKI, so only the signature tells) */
    impostor = make_cert("example.org", f->leaf_key, f->inter, f->other_key, 0, "DNS:example.org",
                         f->now - 60, f->now + 86400, serial_leaf, sizeof(serial_leaf), 0);
    sk = sk_X509_new_null();
    sk_X509_push(sk, impostor);
    X509_up_ref(f->inter);
    sk_X509_push(sk, f->inter);
    check_fails(sk, f->leaf_key, one, 1, f->now, "signature of certificate 0");
    acme_chain_free(sk);

    /* position 1: leaf, intermediate, a root that did not issue the intermediate */
    other_root = make_cert("Another Root", f->other_key, NULL, NULL, 1, NULL, f->now - 86400, f->now + 86400,
                           serial_root, sizeof(serial_root), 0);
    sk = chain_of(f, 0);
    sk_X509_push(sk, other_root);
    check_fails(sk, f->leaf_key, one, 1, f->now, "certificate 1");
    acme_chain_free(sk);

    /* the order matters: intermediate first */
    sk = sk_X509_new_null();
    X509_up_ref(f->inter);
    sk_X509_push(sk, f->inter);
    X509_up_ref(f->leaf);
    sk_X509_push(sk, f->leaf);
    check_fails(sk, f->inter_key, NULL, 0, f->now, "certificate 0");
    acme_chain_free(sk);

    /* empty chain */
    sk = sk_X509_new_null();
    check_fails(sk, f->leaf_key, one, 1, f->now, "empty");
    sk_X509_free(sk);
    check_fails(NULL, f->leaf_key, one, 1, f->now, "empty");
    assert_int_equal(ERR_peek_error(), 0);
}

static void
test_wildcard(void **state)
{
    fixture_t       *f = *state;
    STACK_OF(X509)  *sk;
    X509            *leaf;
    size_t           i;
    static const struct {
        const char  *name;
        int          ok;
    } cases[] = {
        { "www.example.com", 1 },
        { "WWW.Example.COM", 1 },
        { "x.example.com", 1 },
        { "*.example.com", 1 },             /* a wildcard identifier needs the same wildcard SAN */
        { "*.EXAMPLE.com", 1 },
        { "exact.test", 1 },
        { "EXACT.TEST", 1 },
        { "example.com", 0 },               /* the wildcard does not cover the base name */
        { "a.b.example.com", 0 },           /* nor two labels */
        { "wwwexample.com", 0 },
        { ".example.com", 0 },
        { "www.example.co", 0 },
        { "www.example.comm", 0 },
        { "*.www.example.com", 0 },
        { "sub.exact.test", 0 },
        { "xact.test", 0 },
    };
    acme_ident_t     id;
    acme_err_t       err;

    leaf = make_cert("wild", f->leaf_key, f->inter, f->inter_key, 0, "DNS:*.example.com,DNS:exact.test",
                     f->now - 60, f->now + 86400, serial_leaf, sizeof(serial_leaf), 1);
    sk = sk_X509_new_null();
    sk_X509_push(sk, leaf);
    X509_up_ref(f->inter);
    sk_X509_push(sk, f->inter);

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        id.type = ACME_IDENT_DNS;
        id.value = (char *) cases[i].name;
        acme_err_clear(&err);
        if (acme_chain_check(sk, f->leaf_key, &id, 1, f->now, &err) != (cases[i].ok ? 0 : -1)) {
            fail_msg("%s: expected %s (%s)", cases[i].name, cases[i].ok ? "covered" : "not covered", err.msg);
        }
        if (!cases[i].ok) {
            assert_non_null(strstr(err.msg, cases[i].name));
        }
    }
    acme_chain_free(sk);
}

static void
test_issuer_matches(void **state)
{
    fixture_t       *f = *state;
    STACK_OF(X509)  *sk;

    sk = chain_of(f, 0);
    assert_int_equal(acme_chain_issuer_matches(sk, "Test Root X1"), 1);
    /* the leaf's issuer is not the top certificate's: alternates share it, it must not decide */
    assert_int_equal(acme_chain_issuer_matches(sk, "Test Intermediate R1"), 0);
    assert_int_equal(acme_chain_issuer_matches(sk, "Test Root"), 0);
    assert_int_equal(acme_chain_issuer_matches(sk, "test root x1"), 0);
    assert_int_equal(acme_chain_issuer_matches(sk, "example.org"), 0);
    assert_int_equal(acme_chain_issuer_matches(sk, ""), 0);
    assert_int_equal(acme_chain_issuer_matches(sk, NULL), 0);
    assert_int_equal(acme_chain_issuer_matches(NULL, "Test Root X1"), 0);
    acme_chain_free(sk);

    /* with the self-signed root on top, its own CN is the top issuer */
    sk = chain_of(f, 1);
    assert_int_equal(acme_chain_issuer_matches(sk, "Test Root X1"), 1);
    assert_int_equal(acme_chain_issuer_matches(sk, "Test Intermediate R1"), 0);
    acme_chain_free(sk);
}

static void
test_ari_rfc9773(void **state)
{
    STACK_OF(X509)  *sk;
    acme_err_t       err;
    char            *id;

    assert_int_equal(acme_pem_chain_parse(rfc9773_cert, strlen(rfc9773_cert), &sk, &err), 0);
    id = acme_ari_cert_id(sk_X509_value(sk, 0), &err);
    assert_non_null(id);
    assert_string_equal(id, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
    free(id);
    acme_chain_free(sk);
}

static void
test_ari_constructed(void **state)
{
    fixture_t                *f = *state;
    static const unsigned char  high[] = { 0x80, 0x01, 0x02 };
    static const unsigned char  low[] = { 0x7f };
    const ASN1_OCTET_STRING  *ski;
    X509                     *leaf;
    acme_err_t                err;
    char                     *id, *ski64, *want;

    ski = X509_get0_subject_key_id(f->inter);
    assert_non_null(ski);
    ski64 = acme_b64url_encode(ASN1_STRING_get0_data(ski), (size_t) ASN1_STRING_length(ski));

    /* high bit set: the DER content keeps a 0x00 sign byte */
    leaf = make_cert("a", f->leaf_key, f->inter, f->inter_key, 0, "DNS:a.example", f->now, f->now + 60,
                     high, sizeof(high), 1);
    id = acme_ari_cert_id(leaf, &err);
    want = acme_sprintf("%s.AIABAg", ski64);
    assert_string_equal(id, want);
    free(id);
    free(want);
    X509_free(leaf);

    leaf = make_cert("a", f->leaf_key, f->inter, f->inter_key, 0, "DNS:a.example", f->now, f->now + 60,
                     low, sizeof(low), 1);
    id = acme_ari_cert_id(leaf, &err);
    want = acme_sprintf("%s.fw", ski64);
    assert_string_equal(id, want);
    free(id);
    free(want);
    X509_free(leaf);

    /* the fixture leaf: serial 0xabcdef0123 */
    id = acme_ari_cert_id(f->leaf, &err);
    want = acme_sprintf("%s.AKvN7wEj", ski64);
    assert_string_equal(id, want);
    free(id);
    free(want);
    free(ski64);

    /* no AKI: no identifier */
    acme_err_clear(&err);
    assert_null(acme_ari_cert_id(f->root, &err));
    assert_non_null(strstr(err.msg, "Authority Key Identifier"));
    assert_null(acme_ari_cert_id(NULL, &err));
}

static void
check_selfsigned(const acme_keyspec_t *ks, int want_alg, int want_bits)
{
    const char *const   names[] = { "fallback.example.org", "192.0.2.9", "2001:db8::9", "*.example.org" };
    acme_ident_t        ids[] = {
        { ACME_IDENT_DNS, "fallback.example.org" },
        { ACME_IDENT_IP, "192.0.2.9" },
        { ACME_IDENT_IP, "2001:db8::9" },
        { ACME_IDENT_DNS, "x.example.org" },
    };
    acme_cert_info_t    info;
    acme_keyspec_t      got;
    acme_err_t          err;
    X509               *cert = NULL;
    EVP_PKEY           *key = NULL;
    STACK_OF(X509)     *sk;
    char                cn[256];
    time_t              now = time(NULL);

    acme_err_clear(&err);
    assert_int_equal(acme_selfsigned(names, 4, ks, &cert, &key, &err), 0);
    assert_int_equal(acme_keyspec_of(key, &got, &err), 0);
    assert_int_equal(got.alg, want_alg);
    assert_int_equal(got.bits, want_bits);
    assert_int_equal(X509_verify(cert, key), 1);
    assert_int_equal(X509_check_issued(cert, cert), X509_V_OK);
    assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn)) > 0);
    assert_string_equal(cn, "fallback.example.org");

    assert_int_equal(acme_cert_info(cert, &info, &err), 0);
    assert_int_equal(info.nnames, 4);
    assert_string_equal(info.names[0], "fallback.example.org");
    assert_string_equal(info.names[1], "192.0.2.9");
    assert_string_equal(info.names[2], "2001:db8::9");
    assert_string_equal(info.names[3], "*.example.org");
    assert_true(llabs((long long) (info.not_before - (now - 3600))) < 60);
    assert_true(info.not_after - now > 364 * 86400);
    assert_true(info.not_after - now < 367 * 86400);
    acme_cert_info_free(&info);

    sk = sk_X509_new_null();
    sk_X509_push(sk, cert);
    assert_int_equal(acme_chain_check(sk, key, ids, 4, now, &err), 0);
    acme_chain_free(sk);
    EVP_PKEY_free(key);
}

static void
test_selfsigned(void **state)
{
    acme_keyspec_t      p384 = { ACME_KEY_EC, 384 }, rsa = { ACME_KEY_RSA, 2048 };
    const char *const   bad[] = { "ok.example", "not a name" };
    const char *const   empty[] = { "" };
    acme_err_t          err;
    X509               *cert = (X509 *) 1;
    EVP_PKEY           *key = (EVP_PKEY *) 1;

    check_selfsigned(NULL, ACME_KEY_EC, 256);
    check_selfsigned(&p384, ACME_KEY_EC, 384);
    check_selfsigned(&rsa, ACME_KEY_RSA, 2048);

    acme_err_clear(&err);
    assert_int_equal(acme_selfsigned(bad, 2, NULL, &cert, &key, &err), -1);
    assert_non_null(strstr(err.msg, "not a name"));
    assert_null(cert);
    assert_null(key);
    assert_int_equal(acme_selfsigned(bad, 0, NULL, &cert, &key, &err), -1);
    assert_int_equal(acme_selfsigned(NULL, 1, NULL, &cert, &key, &err), -1);
    assert_int_equal(acme_selfsigned(empty, 1, NULL, &cert, &key, &err), -1);
    assert_int_equal(ERR_peek_error(), 0);
}

static void
test_helpers(void **state)
{
    unsigned char  ip[16];
    static const unsigned char  v6[] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 };

    assert_int_equal(acme_ip_from_text("10.1.2.3", ip), 4);
    assert_memory_equal(ip, "\x0a\x01\x02\x03", 4);
    assert_int_equal(acme_ip_from_text("::1", ip), 16);
    assert_memory_equal(ip, v6, 16);
    assert_int_equal(acme_ip_from_text("10.1.2", ip), 0);
    assert_int_equal(acme_ip_from_text("[::1]", ip), 0);
    assert_int_equal(acme_ip_from_text("example.org", ip), 0);
    assert_int_equal(acme_ip_from_text(NULL, ip), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_parse_garbage),
        cmocka_unit_test(test_cert_info),
        cmocka_unit_test(test_check_ok),
        cmocka_unit_test(test_check_failures),
        cmocka_unit_test(test_wildcard),
        cmocka_unit_test(test_issuer_matches),
        cmocka_unit_test(test_ari_rfc9773),
        cmocka_unit_test(test_ari_constructed),
        cmocka_unit_test(test_selfsigned),
        cmocka_unit_test(test_helpers),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
