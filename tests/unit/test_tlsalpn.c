/* TLS-ALPN-01 certificates (RFC 8737): one SAN, the critical acmeIdentifier extension, byte by byte. */
#include "unit.h"
#include "acme_tlsalpn.h"
#include "acme_key.h"

#include <time.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>

static const char  key_authz[] =
    "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

static time_t
asn1_time(const ASN1_TIME *t)
{
    struct tm  tm;

    assert_int_equal(ASN1_TIME_to_tm(t, &tm), 1);
    return timegm(&tm);
}

/* Checks shared by every identifier type; returns the single SAN entry (caller frees the stack). */
static GENERAL_NAMES *
check_common(X509 *cert, EVP_PKEY *key, const char *authz)
{
    ASN1_OBJECT              *oid;
    X509_EXTENSION           *ext;
    const ASN1_OCTET_STRING  *val;
    const unsigned char      *d;
    unsigned char             md[32];
    unsigned int              mdlen;
    GENERAL_NAMES            *gens;
    acme_keyspec_t            ks;
    acme_err_t                err;
    time_t                    now = time(NULL);
    int                       idx, crit;
    BIGNUM                   *serial;

    /* fresh P-256 key, self-signed v3 certificate */
    assert_int_equal(acme_keyspec_of(key, &ks, &err), 0);
    assert_int_equal(ks.alg, ACME_KEY_EC);
    assert_int_equal(ks.bits, 256);
    assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(cert), key), 1);
    assert_int_equal(X509_verify(cert, key), 1);
    assert_int_equal(X509_get_version(cert), X509_VERSION_3);
    assert_int_equal(X509_NAME_cmp(X509_get_subject_name(cert), X509_get_issuer_name(cert)), 0);
    assert_int_equal(X509_get_signature_nid(cert), NID_ecdsa_with_SHA256);

    serial = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
    assert_false(BN_is_zero(serial));
    assert_false(BN_is_negative(serial));
    assert_true(BN_num_bits(serial) > 64);
    BN_free(serial);

    /* now - 1 day .. now + 7 days (allow a minute of slack) */
    assert_true(llabs((long long) (asn1_time(X509_get0_notBefore(cert)) - (now - 86400))) < 60);
    assert_true(llabs((long long) (asn1_time(X509_get0_notAfter(cert)) - (now + 7 * 86400))) < 60);

    /* exactly one acmeIdentifier extension, critical, value 04 20 || SHA-256(key authorization) */
    oid = OBJ_txt2obj(ACME_TLSALPN_OID, 1);
    assert_non_null(oid);
    idx = X509_get_ext_by_OBJ(cert, oid, -1);
    assert_true(idx >= 0);
    assert_int_equal(X509_get_ext_by_OBJ(cert, oid, idx), -1);
    ASN1_OBJECT_free(oid);
    ext = X509_get_ext(cert, idx);
    assert_int_equal(X509_EXTENSION_get_critical(ext), 1);
    val = X509_EXTENSION_get_data(ext);
    assert_int_equal(ASN1_STRING_length(val), 34);
    d = ASN1_STRING_get0_data(val);
    assert_int_equal(d[0], 0x04);
    assert_int_equal(d[1], 0x20);
    assert_int_equal(EVP_Digest(authz, strlen(authz), md, &mdlen, EVP_sha256(), NULL), 1);
    assert_int_equal(mdlen, 32);
    assert_memory_equal(d + 2, md, 32);

    /* exactly one subjectAltName extension with exactly one entry */
    assert_true(X509_get_ext_by_NID(cert, NID_subject_alt_name, -1) >= 0);
    gens = X509_get_ext_d2i(cert, NID_subject_alt_name, &crit, NULL);
    assert_non_null(gens);
    assert_int_equal(sk_GENERAL_NAME_num(gens), 1);
    return gens;
}

static void
test_dns(void **state)
{
    acme_ident_t    id = { ACME_IDENT_DNS, "www.example.org" };
    acme_err_t      err;
    X509           *cert = NULL, *cert2 = NULL;
    EVP_PKEY       *key = NULL, *key2 = NULL;
    GENERAL_NAMES  *gens;
    GENERAL_NAME   *gn;
    char            cn[256];

    acme_err_clear(&err);
    assert_int_equal(acme_tlsalpn_cert(&id, key_authz, &cert, &key, &err), 0);
    assert_non_null(cert);
    assert_non_null(key);

    gens = check_common(cert, key, key_authz);
    gn = sk_GENERAL_NAME_value(gens, 0);
    assert_int_equal(gn->type, GEN_DNS);
    assert_int_equal(ASN1_STRING_length(gn->d.dNSName), (int) strlen(id.value));
    assert_memory_equal(ASN1_STRING_get0_data(gn->d.dNSName), id.value, strlen(id.value));
    GENERAL_NAMES_free(gens);

    assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn)) > 0);
    assert_string_equal(cn, "www.example.org");

    /* a fresh key and serial every time */
    assert_int_equal(acme_tlsalpn_cert(&id, key_authz, &cert2, &key2, &err), 0);
    assert_int_equal(EVP_PKEY_eq(key, key2), 0);
    assert_int_not_equal(ASN1_INTEGER_cmp(X509_get0_serialNumber(cert), X509_get0_serialNumber(cert2)), 0);

    X509_free(cert);
    X509_free(cert2);
    EVP_PKEY_free(key);
    EVP_PKEY_free(key2);
}

static void
check_ip(const char *text, const unsigned char *bin, int len)
{
    acme_ident_t    id = { ACME_IDENT_IP, (char *) text };
    acme_err_t      err;
    X509           *cert = NULL;
    EVP_PKEY       *key = NULL;
    GENERAL_NAMES  *gens;
    GENERAL_NAME   *gn;
    const char     *authz = "token-for-ip.thumbprint";

    assert_int_equal(acme_tlsalpn_cert(&id, authz, &cert, &key, &err), 0);
    gens = check_common(cert, key, authz);
    gn = sk_GENERAL_NAME_value(gens, 0);
    assert_int_equal(gn->type, GEN_IPADD);
    assert_int_equal(ASN1_STRING_length(gn->d.iPAddress), len);
    assert_memory_equal(ASN1_STRING_get0_data(gn->d.iPAddress), bin, (size_t) len);
    GENERAL_NAMES_free(gens);
    X509_free(cert);
    EVP_PKEY_free(key);
}

static void
test_ip(void **state)
{
    static const unsigned char  v4[] = { 203, 0, 113, 7 };
    static const unsigned char  v6[] = { 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42 };

    check_ip("203.0.113.7", v4, 4);
    check_ip("2001:db8::42", v6, 16);
}

static void
test_errors(void **state)
{
    acme_ident_t  wild = { ACME_IDENT_DNS, "*.example.org" };
    acme_ident_t  good = { ACME_IDENT_DNS, "example.org" };
    acme_ident_t  badip = { ACME_IDENT_IP, "example.org" };
    acme_ident_t  nullv = { ACME_IDENT_DNS, NULL };
    acme_ident_t  badtype = { (acme_ident_type_t) 0, "example.org" };
    acme_err_t    err;
    X509         *cert = (X509 *) 1;
    EVP_PKEY     *key = (EVP_PKEY *) 1;

    acme_err_clear(&err);
    assert_int_equal(acme_tlsalpn_cert(&wild, key_authz, &cert, &key, &err), -1);
    assert_non_null(strstr(err.msg, "wildcard"));
    assert_null(cert);
    assert_null(key);

    acme_err_clear(&err);
    assert_int_equal(acme_tlsalpn_cert(&good, "", &cert, &key, &err), -1);
    assert_true(strlen(err.msg) > 0);
    assert_int_equal(acme_tlsalpn_cert(&good, NULL, &cert, &key, &err), -1);
    assert_int_equal(acme_tlsalpn_cert(NULL, key_authz, &cert, &key, &err), -1);
    assert_int_equal(acme_tlsalpn_cert(&badip, key_authz, &cert, &key, &err), -1);
    assert_null(cert);
    assert_null(key);
    assert_int_equal(acme_tlsalpn_cert(&nullv, key_authz, &cert, &key, &err), -1);
    assert_int_equal(acme_tlsalpn_cert(&badtype, key_authz, &cert, &key, &err), -1);
    assert_int_equal(acme_tlsalpn_cert(&good, key_authz, NULL, &key, &err), -1);
    assert_int_equal(ERR_peek_error(), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dns),
        cmocka_unit_test(test_ip),
        cmocka_unit_test(test_errors),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
