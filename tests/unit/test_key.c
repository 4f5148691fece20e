/* Key specs, generation, PEM, JWK and RFC 7638 thumbprints. */
#include "unit.h"
#include "acme_key.h"
#include "acme_b64.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/encoder.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>

/* RFC 7638 section 3.1 example key */
static const char  rfc7638_n[] =
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjB"
    "ZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8K"
    "JZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xB"
    "niIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
static const char  rfc7638_e[] = "AQAB";
static const char  rfc7638_thumbprint[] = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

static EVP_PKEY *
rsa_public_from_b64(const char *n64, const char *e64)
{
    unsigned char   *n, *e;
    size_t           nlen, elen;
    BIGNUM          *bn_n, *bn_e;
    OSSL_PARAM_BLD  *bld;
    OSSL_PARAM      *params;
    EVP_PKEY_CTX    *ctx;
    EVP_PKEY        *pkey = NULL;

    assert_int_equal(acme_b64url_decode(n64, strlen(n64), &n, &nlen), 0);
    assert_int_equal(acme_b64url_decode(e64, strlen(e64), &e, &elen), 0);
    bn_n = BN_bin2bn(n, (int) nlen, NULL);
    bn_e = BN_bin2bn(e, (int) elen, NULL);
    assert_non_null(bn_n);
    assert_non_null(bn_e);

    bld = OSSL_PARAM_BLD_new();
    assert_non_null(bld);
    assert_int_equal(OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n), 1);
    assert_int_equal(OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e), 1);
    params = OSSL_PARAM_BLD_to_param(bld);
    assert_non_null(params);

    ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    assert_non_null(ctx);
    assert_int_equal(EVP_PKEY_fromdata_init(ctx), 1);
    assert_int_equal(EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params), 1);
    assert_non_null(pkey);

    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn_n);
    BN_free(bn_e);
    free(n);
    free(e);
    return pkey;
}

static void
check_spec(const char *s, acme_key_alg_t alg, int bits)
{
    acme_keyspec_t  ks = { 0, 0 };
    acme_err_t      err;

    acme_err_clear(&err);
    assert_int_equal(acme_keyspec_parse(s, &ks, &err), 0);
    assert_int_equal(ks.alg, alg);
    assert_int_equal(ks.bits, bits);
}

static void
check_bad_spec(const char *s)
{
    acme_keyspec_t  ks = { 0, 0 };
    acme_err_t      err;

    acme_err_clear(&err);
    assert_int_equal(acme_keyspec_parse(s, &ks, &err), -1);
    assert_int_equal(err.kind, ACME_ERR_CONFIG);
    assert_true(strlen(err.msg) > 0);
}

static void
test_keyspec_parse(void **state)
{
    char            buf[32];
    acme_keyspec_t  ks;

    check_spec("ecdsa:256", ACME_KEY_EC, 256);
    check_spec("ecdsa:384", ACME_KEY_EC, 384);
    check_spec("ec:256", ACME_KEY_EC, 256);
    check_spec("ec:384", ACME_KEY_EC, 384);
    check_spec("p256", ACME_KEY_EC, 256);
    check_spec("p384", ACME_KEY_EC, 384);
    check_spec("P-384", ACME_KEY_EC, 384);
    check_spec("ECDSA:384", ACME_KEY_EC, 384);
    check_spec("ecdsa:521", ACME_KEY_EC, 521);
    check_spec("p521", ACME_KEY_EC, 521);
    check_spec("P-521", ACME_KEY_EC, 521);
    check_spec("ecdsa", ACME_KEY_EC, 256);
    check_spec("rsa", ACME_KEY_RSA, 2048);
    check_spec("rsa:2048", ACME_KEY_RSA, 2048);
    check_spec("rsa:3072", ACME_KEY_RSA, 3072);
    check_spec("RSA:4096", ACME_KEY_RSA, 4096);

    check_bad_spec("");
    check_bad_spec("dsa");
    check_bad_spec("ed25519");
    check_bad_spec("ecdsa:512");
    check_bad_spec("ecdsa:2048");
    check_bad_spec("ecdsa:");
    check_bad_spec("ecdsa:256x");
    check_bad_spec("rsa:1024");
    check_bad_spec("rsa:256");
    check_bad_spec("rsa:04096");
    check_bad_spec("rsa:2048:1");
    check_bad_spec("rsaa:2048");
    check_bad_spec("p512");
    check_bad_spec(NULL);

    ks = (acme_keyspec_t) { ACME_KEY_EC, 384 };
    assert_string_equal(acme_keyspec_str(&ks, buf, sizeof(buf)), "ecdsa:384");
    ks = (acme_keyspec_t) { ACME_KEY_EC, 521 };
    assert_string_equal(acme_keyspec_str(&ks, buf, sizeof(buf)), "ecdsa:521");
    ks = (acme_keyspec_t) { ACME_KEY_RSA, 3072 };
    assert_string_equal(acme_keyspec_str(&ks, buf, sizeof(buf)), "rsa:3072");
    ks = ACME_KEYSPEC_DEFAULT;
    assert_string_equal(acme_keyspec_str(&ks, buf, sizeof(buf)), "ecdsa:256");
}

static void
check_generate(acme_key_alg_t alg, int bits, const char *jws_alg)
{
    acme_keyspec_t  ks = { alg, bits }, got;
    acme_err_t      err;
    EVP_PKEY       *key;
    BIGNUM         *e = NULL;

    key = acme_key_generate(&ks, &err);
    assert_non_null(key);
    assert_int_equal(acme_keyspec_of(key, &got, &err), 0);
    assert_int_equal(got.alg, alg);
    assert_int_equal(got.bits, bits);
    assert_string_equal(acme_jws_alg(key), jws_alg);
    if (alg == ACME_KEY_RSA) {
        assert_int_equal(EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_E, &e), 1);
        assert_true(BN_is_word(e, 65537));
        BN_free(e);
    }
    EVP_PKEY_free(key);
}

static void
test_generate(void **state)
{
    acme_keyspec_t  bad = { ACME_KEY_RSA, 1024 };
    acme_err_t      err;

    check_generate(ACME_KEY_EC, 256, "ES256");
    check_generate(ACME_KEY_EC, 384, "ES384");
    check_generate(ACME_KEY_EC, 521, "ES512");
    check_generate(ACME_KEY_RSA, 2048, "RS256");

    acme_err_clear(&err);
    assert_null(acme_key_generate(&bad, &err));
    assert_true(strlen(err.msg) > 0);
    bad = (acme_keyspec_t) { ACME_KEY_EC, 512 };
    assert_null(acme_key_generate(&bad, &err));
    assert_null(acme_key_generate(NULL, &err));
}

/* PEM of key in a given OpenSSL encoder structure ("PrivateKeyInfo" or "type-specific"). */
static char *
pem_with_structure(EVP_PKEY *key, const char *structure)
{
    OSSL_ENCODER_CTX  *ectx;
    unsigned char     *data = NULL;
    size_t             len = 0;
    char              *s;

    ectx = OSSL_ENCODER_CTX_new_for_pkey(key, OSSL_KEYMGMT_SELECT_KEYPAIR
                                         | OSSL_KEYMGMT_SELECT_DOMAIN_PARAMETERS,
                                         "PEM", structure, NULL);
    assert_non_null(ectx);
    assert_int_equal(OSSL_ENCODER_to_data(ectx, &data, &len), 1);
    OSSL_ENCODER_CTX_free(ectx);
    s = strndup((const char *) data, len);
    OPENSSL_free(data);
    return s;
}

static void
check_pem_roundtrip(EVP_PKEY *key, const char *begin_traditional)
{
    acme_err_t  err;
    char       *pem;
    size_t      len = 0;
    EVP_PKEY   *back;

    pem = acme_key_to_pem(key, &len, &err);
    assert_non_null(pem);
    assert_int_equal(len, strlen(pem));
    assert_non_null(strstr(pem, "-----BEGIN PRIVATE KEY-----"));
    back = acme_key_from_pem(pem, len, &err);
    assert_non_null(back);
    assert_int_equal(acme_key_matches(key, back), 1);
    assert_int_equal(EVP_PKEY_get_bits(back), EVP_PKEY_get_bits(key));
    EVP_PKEY_free(back);
    acme_free_secret(pem, len);

    /* traditional (PKCS#1 / SEC1) encoding */
    pem = pem_with_structure(key, "type-specific");
    assert_non_null(strstr(pem, begin_traditional));
    back = acme_key_from_pem(pem, strlen(pem), &err);
    assert_non_null(back);
    assert_int_equal(acme_key_matches(key, back), 1);
    EVP_PKEY_free(back);
    free(pem);
}

static void
test_pem(void **state)
{
    acme_keyspec_t  ec = { ACME_KEY_EC, 384 }, rsa = { ACME_KEY_RSA, 2048 };
    acme_err_t      err;
    EVP_PKEY       *k1, *k2, *ed;
    BIO            *bio;
    char           *data, *enc, *pubpem;
    long            n;
    static const char  garbage[] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

    k1 = acme_key_generate(&ec, &err);
    k2 = acme_key_generate(&rsa, &err);
    assert_non_null(k1);
    assert_non_null(k2);
    check_pem_roundtrip(k1, "-----BEGIN EC PRIVATE KEY-----");
    check_pem_roundtrip(k2, "-----BEGIN RSA PRIVATE KEY-----");

    /* an encrypted key is refused with a message that says so */
    bio = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PKCS8PrivateKey(bio, k1, EVP_aes_256_cbc(), "secret", 6, NULL, NULL), 1);
    n = BIO_get_mem_data(bio, &data);
    enc = strndup(data, (size_t) n);
    BIO_free(bio);
    acme_err_clear(&err);
    assert_null(acme_key_from_pem(enc, strlen(enc), &err));
    assert_non_null(strstr(err.msg, "encrypted"));
    free(enc);

    /* a public key, garbage, empty input */
    bio = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PUBKEY(bio, k1), 1);
    n = BIO_get_mem_data(bio, &data);
    pubpem = strndup(data, (size_t) n);
    BIO_free(bio);
    acme_err_clear(&err);
    assert_null(acme_key_from_pem(pubpem, strlen(pubpem), &err));
    assert_true(strlen(err.msg) > 0);
    free(pubpem);

    acme_err_clear(&err);
    assert_null(acme_key_from_pem(garbage, strlen(garbage), &err));
    assert_true(strlen(err.msg) > 0);
    assert_null(acme_key_from_pem("hello", 5, &err));
    assert_null(acme_key_from_pem("", 0, &err));
    assert_null(acme_key_from_pem(NULL, 10, &err));
    assert_int_equal(ERR_peek_error(), 0);

    /* an unsupported key type (Ed25519) is refused */
    ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(ed);
    enc = pem_with_structure(ed, "PrivateKeyInfo");
    acme_err_clear(&err);
    assert_null(acme_key_from_pem(enc, strlen(enc), &err));
    assert_non_null(strstr(err.msg, "unsupported"));
    assert_null(acme_jws_alg(ed));
    assert_null(acme_jwk(ed, &err));
    free(enc);
    EVP_PKEY_free(ed);

    EVP_PKEY_free(k1);
    EVP_PKEY_free(k2);
}

static void
test_rfc7638_thumbprint(void **state)
{
    EVP_PKEY    *key;
    json_t      *jwk;
    char        *tp;
    acme_err_t   err;

    key = rsa_public_from_b64(rfc7638_n, rfc7638_e);

    jwk = acme_jwk(key, &err);
    assert_non_null(jwk);
    assert_int_equal(json_object_size(jwk), 3);
    assert_string_equal(json_string_value(json_object_get(jwk, "kty")), "RSA");
    assert_string_equal(json_string_value(json_object_get(jwk, "e")), rfc7638_e);
    assert_string_equal(json_string_value(json_object_get(jwk, "n")), rfc7638_n);
    json_decref(jwk);

    tp = acme_jwk_thumbprint(key, &err);
    assert_non_null(tp);
    assert_string_equal(tp, rfc7638_thumbprint);
    free(tp);

    assert_string_equal(acme_jws_alg(key), "RS256");
    EVP_PKEY_free(key);
}

/* The uncompressed point 04 || X || Y of an EC key. */
static size_t
ec_point(EVP_PKEY *key, unsigned char *buf, size_t size)
{
    size_t len = 0;

    assert_int_equal(EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, buf, size,
                                                     &len), 1);
    assert_int_equal(buf[0], 0x04);
    return len;
}

static void
check_ec_jwk(EVP_PKEY *key, size_t half, const char *crv)
{
    acme_err_t      err;
    json_t         *jwk;
    unsigned char   pt[1 + 2 * 66], *x, *y, md[32];
    size_t          ptlen, xlen, ylen;
    char            canon[512], *tp, *want;
    unsigned int    mdlen;

    ptlen = ec_point(key, pt, sizeof(pt));
    assert_int_equal(ptlen, 1 + 2 * half);

    jwk = acme_jwk(key, &err);
    assert_non_null(jwk);
    assert_int_equal(json_object_size(jwk), 4);
    assert_string_equal(json_string_value(json_object_get(jwk, "kty")), "EC");
    assert_string_equal(json_string_value(json_object_get(jwk, "crv")), crv);
    assert_int_equal(acme_b64url_decode(json_string_value(json_object_get(jwk, "x")),
                                        strlen(json_string_value(json_object_get(jwk, "x"))), &x, &xlen), 0);
    assert_int_equal(acme_b64url_decode(json_string_value(json_object_get(jwk, "y")),
                                        strlen(json_string_value(json_object_get(jwk, "y"))), &y, &ylen), 0);
    assert_int_equal(xlen, half);
    assert_int_equal(ylen, half);
    assert_memory_equal(x, pt + 1, half);
    assert_memory_equal(y, pt + 1 + half, half);

    /* RFC 7638: the thumbprint input is exactly this string */
    snprintf(canon, sizeof(canon), "{\"crv\":\"%s\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}", crv,
             json_string_value(json_object_get(jwk, "x")), json_string_value(json_object_get(jwk, "y")));
    assert_int_equal(EVP_Digest(canon, strlen(canon), md, &mdlen, EVP_sha256(), NULL), 1);
    want = acme_b64url_encode(md, mdlen);
    tp = acme_jwk_thumbprint(key, &err);
    assert_non_null(tp);
    assert_string_equal(tp, want);

    free(want);
    free(tp);
    free(x);
    free(y);
    json_decref(jwk);
}

static void
test_ec_jwk(void **state)
{
    acme_keyspec_t  p256 = { ACME_KEY_EC, 256 }, p384 = { ACME_KEY_EC, 384 };
    acme_keyspec_t  p521 = { ACME_KEY_EC, 521 };
    acme_err_t      err;
    EVP_PKEY       *key;
    unsigned char   pt[1 + 2 * 48];
    int             i, found_x = 0, found_y = 0;

    key = acme_key_generate(&p384, &err);
    check_ec_jwk(key, 48, "P-384");
    EVP_PKEY_free(key);

    /* P-521: 66-byte coordinates (521 bits rounded up), never 65 */
    key = acme_key_generate(&p521, &err);
    assert_non_null(key);
    check_ec_jwk(key, 66, "P-521");
    EVP_PKEY_free(key);

    /* keep generating until both a leading-zero x and a leading-zero y were seen: left-padding matters */
    for (i = 0; i < 20000 && !(found_x && found_y); i++) {
        key = acme_key_generate(&p256, &err);
        assert_non_null(key);
        ec_point(key, pt, sizeof(pt));
        if ((pt[1] == 0 && !found_x) || (pt[33] == 0 && !found_y)) {
            check_ec_jwk(key, 32, "P-256");
            found_x |= pt[1] == 0;
            found_y |= pt[33] == 0;
        }
        EVP_PKEY_free(key);
    }
    assert_true(found_x);
    assert_true(found_y);
}

static void
test_matches(void **state)
{
    acme_keyspec_t  ks = ACME_KEYSPEC_DEFAULT;
    acme_err_t      err;
    EVP_PKEY       *a, *b, *a_pub;
    BIO            *bio;

    a = acme_key_generate(&ks, &err);
    b = acme_key_generate(&ks, &err);
    assert_int_equal(acme_key_matches(a, a), 1);
    assert_int_equal(acme_key_matches(a, b), 0);
    assert_int_equal(acme_key_matches(a, NULL), 0);
    assert_int_equal(acme_key_matches(NULL, NULL), 0);

    /* the public half alone matches */
    bio = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PUBKEY(bio, a), 1);
    a_pub = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    BIO_free(bio);
    assert_non_null(a_pub);
    assert_int_equal(acme_key_matches(a, a_pub), 1);
    assert_int_equal(acme_key_matches(b, a_pub), 0);

    EVP_PKEY_free(a_pub);
    EVP_PKEY_free(a);
    EVP_PKEY_free(b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keyspec_parse),
        cmocka_unit_test(test_generate),
        cmocka_unit_test(test_pem),
        cmocka_unit_test(test_rfc7638_thumbprint),
        cmocka_unit_test(test_ec_jwk),
        cmocka_unit_test(test_matches),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
