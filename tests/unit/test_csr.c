/* CSRs: parse back the DER and check the subject, the SANs (DNS, IPv4, IPv6) and the signature. */
#include "unit.h"
#include "acme_csr.h"
#include "acme_key.h"
#include "acme_b64.h"

#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

static X509_REQ *
decode_csr(const char *b64)
{
    unsigned char        *der;
    const unsigned char  *p;
    size_t                len;
    X509_REQ             *req;

    assert_non_null(b64);
    assert_int_equal(acme_b64url_decode(b64, strlen(b64), &der, &len), 0);
    p = der;
    req = d2i_X509_REQ(NULL, &p, (long) len);
    assert_non_null(req);
    assert_ptr_equal(p, der + len);
    free(der);
    return req;
}

/* The subject CN, or NULL. Returned pointer is static. */
static const char *
subject_cn(X509_REQ *req)
{
    static char  buf[256];
    X509_NAME   *nm = X509_REQ_get_subject_name(req);

    if (X509_NAME_get_text_by_NID(nm, NID_commonName, buf, sizeof(buf)) < 0) {
        return NULL;
    }
    return buf;
}

static GENERAL_NAMES *
csr_sans(X509_REQ *req)
{
    STACK_OF(X509_EXTENSION)  *exts;
    GENERAL_NAMES             *gens;
    int                        idx;

    exts = X509_REQ_get_extensions(req);
    assert_non_null(exts);
    idx = X509v3_get_ext_by_NID(exts, NID_subject_alt_name, -1);
    assert_true(idx >= 0);
    assert_int_equal(X509v3_get_ext_by_NID(exts, NID_subject_alt_name, idx), -1);
    gens = X509V3_EXT_d2i(X509v3_get_ext(exts, idx));
    assert_non_null(gens);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    return gens;
}

static void
check_dns(GENERAL_NAMES *gens, int i, const char *name)
{
    GENERAL_NAME  *gn = sk_GENERAL_NAME_value(gens, i);

    assert_int_equal(gn->type, GEN_DNS);
    assert_int_equal(ASN1_STRING_length(gn->d.dNSName), (int) strlen(name));
    assert_memory_equal(ASN1_STRING_get0_data(gn->d.dNSName), name, strlen(name));
}

static void
check_ip(GENERAL_NAMES *gens, int i, const unsigned char *ip, int len)
{
    GENERAL_NAME  *gn = sk_GENERAL_NAME_value(gens, i);

    assert_int_equal(gn->type, GEN_IPADD);
    assert_int_equal(ASN1_STRING_length(gn->d.iPAddress), len);
    assert_memory_equal(ASN1_STRING_get0_data(gn->d.iPAddress), ip, (size_t) len);
}

static void
check_signature(X509_REQ *req, EVP_PKEY *key, int sig_nid)
{
    EVP_PKEY  *pub = X509_REQ_get0_pubkey(req);

    assert_non_null(pub);
    assert_int_equal(EVP_PKEY_eq(pub, key), 1);
    assert_int_equal(X509_REQ_verify(req, pub), 1);
    assert_int_equal(X509_REQ_get_signature_nid(req), sig_nid);
    assert_int_equal(X509_REQ_get_version(req), X509_REQ_VERSION_1);
}

static void
run_mixed(acme_key_alg_t alg, int bits, int sig_nid)
{
    static const unsigned char  v4[] = { 192, 0, 2, 1 };
    static const unsigned char  v6[] = { 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 };
    acme_ident_t                ids[] = {
        { ACME_IDENT_DNS, "example.org" },
        { ACME_IDENT_IP, "192.0.2.1" },
        { ACME_IDENT_DNS, "*.example.org" },
        { ACME_IDENT_IP, "2001:db8::1" },
    };
    acme_keyspec_t              ks = { alg, bits };
    acme_err_t                  err;
    EVP_PKEY                   *key;
    X509_REQ                   *req;
    GENERAL_NAMES              *gens;
    char                       *csr;

    key = acme_key_generate(&ks, &err);
    assert_non_null(key);
    csr = acme_csr_create(key, ids, 4, 0, &err);
    assert_non_null(csr);
    assert_int_equal(acme_b64url_is_token(csr, strlen(csr), 100000), 1);

    req = decode_csr(csr);
    check_signature(req, key, sig_nid);
    assert_string_equal(subject_cn(req), "example.org");

    gens = csr_sans(req);
    assert_int_equal(sk_GENERAL_NAME_num(gens), 4);
    check_dns(gens, 0, "example.org");
    check_ip(gens, 1, v4, 4);
    check_dns(gens, 2, "*.example.org");
    check_ip(gens, 3, v6, 16);

    GENERAL_NAMES_free(gens);
    X509_REQ_free(req);
    free(csr);
    EVP_PKEY_free(key);
}

static void
test_mixed_ec(void **state)
{
    run_mixed(ACME_KEY_EC, 256, NID_ecdsa_with_SHA256);
}

static void
test_mixed_ec384(void **state)
{
    run_mixed(ACME_KEY_EC, 384, NID_ecdsa_with_SHA256);
}

static void
test_mixed_rsa(void **state)
{
    run_mixed(ACME_KEY_RSA, 2048, NID_sha256WithRSAEncryption);
}

static void
test_cn_choice(void **state)
{
    static const unsigned char  v6[] = { 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd };
    static const char           long_name[] =
        "a-rather-long-label-that-makes-the-name-exceed-sixty-four.example.org";
    acme_ident_t                ip_first[] = {
        { ACME_IDENT_IP, "fe80::abcd" },
        { ACME_IDENT_DNS, "second.example.org" },
    };
    acme_ident_t                ip_only[] = { { ACME_IDENT_IP, "fe80::abcd" } };
    acme_ident_t                long_first[] = {
        { ACME_IDENT_DNS, (char *) long_name },
        { ACME_IDENT_DNS, "short.example.org" },
    };
    acme_keyspec_t              ks = ACME_KEYSPEC_DEFAULT;
    acme_err_t                  err;
    EVP_PKEY                   *key;
    X509_REQ                   *req;
    GENERAL_NAMES              *gens;
    char                       *csr;

    assert_true(strlen(long_name) > 64);
    key = acme_key_generate(&ks, &err);

    /* CN is the first DNS identifier even when an IP comes first */
    csr = acme_csr_create(key, ip_first, 2, 0, &err);
    req = decode_csr(csr);
    assert_string_equal(subject_cn(req), "second.example.org");
    gens = csr_sans(req);
    assert_int_equal(sk_GENERAL_NAME_num(gens), 2);
    check_ip(gens, 0, v6, 16);
    check_dns(gens, 1, "second.example.org");
    GENERAL_NAMES_free(gens);
    X509_REQ_free(req);
    free(csr);

    /* IP only: no CN */
    csr = acme_csr_create(key, ip_only, 1, 0, &err);
    req = decode_csr(csr);
    check_signature(req, key, NID_ecdsa_with_SHA256);
    assert_null(subject_cn(req));
    gens = csr_sans(req);
    assert_int_equal(sk_GENERAL_NAME_num(gens), 1);
    GENERAL_NAMES_free(gens);
    X509_REQ_free(req);
    free(csr);

    /* the first DNS name does not fit in a CN: no CN, but every name in the SAN */
    csr = acme_csr_create(key, long_first, 2, 0, &err);
    req = decode_csr(csr);
    assert_null(subject_cn(req));
    gens = csr_sans(req);
    assert_int_equal(sk_GENERAL_NAME_num(gens), 2);
    check_dns(gens, 0, long_name);
    check_dns(gens, 1, "short.example.org");
    GENERAL_NAMES_free(gens);
    X509_REQ_free(req);
    free(csr);

    /* ACME_CSR_NO_CN: an empty subject, the names all in the SAN, still signed */
    csr = acme_csr_create(key, ip_first, 2, ACME_CSR_NO_CN, &err);
    assert_non_null(csr);
    req = decode_csr(csr);
    check_signature(req, key, NID_ecdsa_with_SHA256);
    assert_null(subject_cn(req));
    assert_int_equal(X509_NAME_entry_count(X509_REQ_get_subject_name(req)), 0);
    gens = csr_sans(req);
    assert_int_equal(sk_GENERAL_NAME_num(gens), 2);
    check_ip(gens, 0, v6, 16);
    check_dns(gens, 1, "second.example.org");
    GENERAL_NAMES_free(gens);
    X509_REQ_free(req);
    free(csr);

    EVP_PKEY_free(key);
}

static void
test_errors(void **state)
{
    acme_ident_t    good[] = { { ACME_IDENT_DNS, "example.org" } };
    acme_ident_t    bad_ip[] = { { ACME_IDENT_DNS, "example.org" }, { ACME_IDENT_IP, "300.1.2.3" } };
    acme_ident_t    bad_ip6[] = { { ACME_IDENT_IP, "2001:db8:::1" } };
    acme_ident_t    bad_dns[] = { { ACME_IDENT_DNS, "exa mple.org" } };
    acme_ident_t    null_value[] = { { ACME_IDENT_DNS, NULL } };
    acme_ident_t    bad_type[] = { { (acme_ident_type_t) 7, "example.org" } };
    acme_ident_t    empty[] = { { ACME_IDENT_DNS, "" } };
    acme_keyspec_t  ks = ACME_KEYSPEC_DEFAULT;
    acme_err_t      err;
    EVP_PKEY       *key;

    key = acme_key_generate(&ks, &err);

    acme_err_clear(&err);
    assert_null(acme_csr_create(key, good, 0, 0, &err));
    assert_true(strlen(err.msg) > 0);
    assert_null(acme_csr_create(key, NULL, 1, 0, &err));
    assert_null(acme_csr_create(NULL, good, 1, 0, &err));

    acme_err_clear(&err);
    assert_null(acme_csr_create(key, bad_ip, 2, 0, &err));
    assert_non_null(strstr(err.msg, "300.1.2.3"));
    assert_int_equal(err.kind, ACME_ERR_INPUT);
    assert_null(acme_csr_create(key, bad_ip6, 1, 0, &err));
    assert_null(acme_csr_create(key, bad_dns, 1, 0, &err));
    assert_null(acme_csr_create(key, null_value, 1, 0, &err));
    assert_null(acme_csr_create(key, bad_type, 1, 0, &err));
    assert_null(acme_csr_create(key, empty, 1, 0, &err));
    assert_int_equal(ERR_peek_error(), 0);

    EVP_PKEY_free(key);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixed_ec),
        cmocka_unit_test(test_mixed_ec384),
        cmocka_unit_test(test_mixed_rsa),
        cmocka_unit_test(test_cn_choice),
        cmocka_unit_test(test_errors),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
