/* JWS: every alg signed and verified (by acme_jws_verify and independently), EAB, tampering. */
#include "unit.h"
#include "acme_jws.h"
#include "acme_key.h"
#include "acme_b64.h"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/rsa.h>

typedef struct {
    json_t         *jws;        /* the parsed flattened JWS */
    json_t         *hdr;        /* the decoded protected header */
    char           *hdr_text;
    unsigned char  *payload;
    size_t          payload_len;
    unsigned char  *sig;
    size_t          sig_len;
} parsed_jws_t;

static const char  *url = "https://ca.example/acme/new-order";
static const char  *kid = "https://ca.example/acme/acct/17";
static const char  *nonce = "oFvnlFP1wIhRlYS2jTaXbA";

static void
parse_jws(const char *text, parsed_jws_t *p)
{
    json_error_t  jerr;
    const char   *s;
    size_t        len;

    memset(p, 0, sizeof(*p));
    p->jws = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    assert_non_null(p->jws);
    assert_true(json_is_object(p->jws));
    assert_int_equal(json_object_size(p->jws), 3);

    s = json_string_value(json_object_get(p->jws, "protected"));
    assert_non_null(s);
    assert_int_equal(acme_b64url_decode(s, strlen(s), (unsigned char **) &p->hdr_text, &len), 0);
    p->hdr = json_loads(p->hdr_text, JSON_REJECT_DUPLICATES, &jerr);
    assert_non_null(p->hdr);

    s = json_string_value(json_object_get(p->jws, "payload"));
    assert_non_null(s);
    assert_int_equal(acme_b64url_decode(s, strlen(s), &p->payload, &p->payload_len), 0);

    s = json_string_value(json_object_get(p->jws, "signature"));
    assert_non_null(s);
    assert_int_equal(acme_b64url_decode(s, strlen(s), &p->sig, &p->sig_len), 0);
}

static void
free_jws(parsed_jws_t *p)
{
    json_decref(p->jws);
    json_decref(p->hdr);
    free(p->hdr_text);
    free(p->payload);
    free(p->sig);
}

/* The signing input of a parsed JWS, malloc'd. */
static char *
signing_input(parsed_jws_t *p)
{
    return acme_sprintf("%s.%s", json_string_value(json_object_get(p->jws, "protected")),
                        json_string_value(json_object_get(p->jws, "payload")));
}

/* Verify the signature with plain OpenSSL calls, converting R||S to DER here. */
static int
independent_verify(parsed_jws_t *p, EVP_PKEY *key, const char *alg)
{
    EVP_MD_CTX     *ctx;
    EVP_PKEY_CTX   *pctx = NULL;
    ECDSA_SIG      *es;
    unsigned char  *der = NULL;
    char           *in;
    size_t          half = 0;
    int             derlen = 0, rc;
    const EVP_MD   *md = EVP_sha256();

    if (strcmp(alg, "ES256") == 0) {
        half = 32;
    } else if (strcmp(alg, "ES384") == 0) {
        half = 48;
        md = EVP_sha384();
    } else if (strcmp(alg, "ES512") == 0) {
        half = 66;
        md = EVP_sha512();
    }

    if (half) {
        assert_int_equal(p->sig_len, 2 * half);
        es = ECDSA_SIG_new();
        assert_int_equal(ECDSA_SIG_set0(es, BN_bin2bn(p->sig, (int) half, NULL),
                                        BN_bin2bn(p->sig + half, (int) half, NULL)), 1);
        derlen = i2d_ECDSA_SIG(es, &der);
        assert_true(derlen > 0);
        ECDSA_SIG_free(es);
    } else {
        assert_int_equal(p->sig_len, (size_t) EVP_PKEY_get_size(key));
    }

    in = signing_input(p);
    ctx = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestVerifyInit(ctx, &pctx, md, NULL, key), 1);
    if (!half) {
        assert_true(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) > 0);
    }
    rc = EVP_DigestVerify(ctx, half ? der : p->sig, half ? (size_t) derlen : p->sig_len,
                          (const unsigned char *) in, strlen(in));
    EVP_MD_CTX_free(ctx);
    OPENSSL_free(der);
    free(in);
    ERR_clear_error();
    return rc;
}

static void
check_alg(acme_key_alg_t kalg, int bits, const char *alg)
{
    acme_keyspec_t  ks = { kalg, bits }, other = { kalg, bits };
    acme_err_t      err;
    EVP_PKEY       *key, *wrong;
    char           *jws;
    json_t         *jwk;
    parsed_jws_t    p;
    const char     *payload = "{\"identifiers\":[{\"type\":\"dns\",\"value\":\"example.org\"}]}";

    key = acme_key_generate(&ks, &err);
    assert_non_null(key);
    wrong = acme_key_generate(&other, &err);
    assert_non_null(wrong);

    /* kid + nonce + payload */
    acme_err_clear(&err);
    jws = acme_jws_sign(key, kid, nonce, url, payload, &err);
    assert_non_null(jws);
    assert_int_equal(acme_jws_verify(jws, key, &err), 0);
    assert_int_equal(acme_jws_verify(jws, wrong, &err), -1);

    parse_jws(jws, &p);
    assert_int_equal(json_object_size(p.hdr), 4);
    assert_string_equal(json_string_value(json_object_get(p.hdr, "alg")), alg);
    assert_string_equal(json_string_value(json_object_get(p.hdr, "kid")), kid);
    assert_string_equal(json_string_value(json_object_get(p.hdr, "nonce")), nonce);
    assert_string_equal(json_string_value(json_object_get(p.hdr, "url")), url);
    assert_null(json_object_get(p.hdr, "jwk"));
    assert_true(strncmp(p.hdr_text, "{\"alg\":", 7) == 0);
    assert_null(strchr(p.hdr_text, ' '));
    assert_int_equal(p.payload_len, strlen(payload));
    assert_memory_equal(p.payload, payload, p.payload_len);
    assert_int_equal(independent_verify(&p, key, alg), 1);
    assert_int_equal(independent_verify(&p, wrong, alg), 0);
    free_jws(&p);
    free(jws);

    /* jwk, no nonce, POST-as-GET */
    jws = acme_jws_sign(key, NULL, NULL, url, NULL, &err);
    assert_non_null(jws);
    assert_int_equal(acme_jws_verify(jws, key, &err), 0);
    parse_jws(jws, &p);
    assert_int_equal(json_object_size(p.hdr), 3);
    assert_string_equal(json_string_value(json_object_get(p.hdr, "alg")), alg);
    assert_null(json_object_get(p.hdr, "kid"));
    assert_null(json_object_get(p.hdr, "nonce"));
    assert_string_equal(json_string_value(json_object_get(p.hdr, "url")), url);
    jwk = acme_jwk(key, &err);
    assert_true(json_equal(json_object_get(p.hdr, "jwk"), jwk));
    json_decref(jwk);
    assert_string_equal(json_string_value(json_object_get(p.jws, "payload")), "");
    assert_int_equal(p.payload_len, 0);
    assert_int_equal(independent_verify(&p, key, alg), 1);
    free_jws(&p);
    free(jws);

    EVP_PKEY_free(wrong);
    EVP_PKEY_free(key);
}

static void
test_es256(void **state)
{
    check_alg(ACME_KEY_EC, 256, "ES256");
}

static void
test_es384(void **state)
{
    check_alg(ACME_KEY_EC, 384, "ES384");
}

static void
test_es512(void **state)
{
    check_alg(ACME_KEY_EC, 521, "ES512");
}

static void
test_rs256(void **state)
{
    check_alg(ACME_KEY_RSA, 2048, "RS256");
}

/* R or S with a leading zero byte must still give a 64-byte signature that verifies. */
static void
test_ecdsa_short_r_s(void **state)
{
    acme_keyspec_t  ks = { ACME_KEY_EC, 256 };
    acme_err_t      err;
    EVP_PKEY       *key;
    char           *jws;
    parsed_jws_t    p;
    int             i, short_r = 0, short_s = 0;

    key = acme_key_generate(&ks, &err);
    for (i = 0; i < 20000 && !(short_r && short_s); i++) {
        jws = acme_jws_sign(key, kid, NULL, url, "{}", &err);
        assert_non_null(jws);
        parse_jws(jws, &p);
        assert_int_equal(p.sig_len, 64);
        if ((p.sig[0] == 0 && !short_r) || (p.sig[32] == 0 && !short_s)) {
            short_r |= p.sig[0] == 0;
            short_s |= p.sig[32] == 0;
            assert_int_equal(acme_jws_verify(jws, key, &err), 0);
            assert_int_equal(independent_verify(&p, key, "ES256"), 1);
        }
        free_jws(&p);
        free(jws);
    }
    assert_true(short_r);
    assert_true(short_s);
    EVP_PKEY_free(key);
}

/* Replace a member of a JWS text and return the new text. */
static char *
jws_with(const char *jws, const char *member, const char *value)
{
    json_t  *o = json_loads(jws, 0, NULL);
    char    *s;

    assert_non_null(o);
    json_object_set_new(o, member, json_string(value));
    s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

static void
test_verify_rejects(void **state)
{
    acme_keyspec_t  ks = { ACME_KEY_EC, 256 };
    acme_err_t      err;
    EVP_PKEY       *key, *other;
    char           *jws, *bad, *p64, *hdr64;
    json_t         *o;
    parsed_jws_t    p;
    unsigned char   flipped[64];

    key = acme_key_generate(&ks, &err);
    jws = acme_jws_sign(key, kid, nonce, url, "{\"a\":1}", &err);
    assert_non_null(jws);

    /* another payload */
    p64 = acme_b64url_encode((const unsigned char *) "{\"a\":2}", 7);
    bad = jws_with(jws, "payload", p64);
    acme_err_clear(&err);
    assert_int_equal(acme_jws_verify(bad, key, &err), -1);
    assert_true(strlen(err.msg) > 0);
    free(bad);
    free(p64);

    /* another protected header (url changed) */
    hdr64 = acme_b64url_encode((const unsigned char *)
                               "{\"alg\":\"ES256\",\"kid\":\"k\",\"url\":\"https://evil.example/\"}", 53);
    bad = jws_with(jws, "protected", hdr64);
    assert_int_equal(acme_jws_verify(bad, key, &err), -1);
    free(bad);
    free(hdr64);

    /* a flipped signature bit */
    parse_jws(jws, &p);
    memcpy(flipped, p.sig, 64);
    flipped[10] ^= 1;
    p64 = acme_b64url_encode(flipped, 64);
    bad = jws_with(jws, "signature", p64);
    assert_int_equal(acme_jws_verify(bad, key, &err), -1);
    free(bad);
    free(p64);

    /* a truncated signature */
    p64 = acme_b64url_encode(p.sig, 63);
    bad = jws_with(jws, "signature", p64);
    assert_int_equal(acme_jws_verify(bad, key, &err), -1);
    free(bad);
    free(p64);
    free_jws(&p);

    /* alg "none" */
    hdr64 = acme_b64url_encode((const unsigned char *) "{\"alg\":\"none\",\"kid\":\"k\",\"url\":\"u\"}", 34);
    bad = jws_with(jws, "protected", hdr64);
    assert_int_equal(acme_jws_verify(bad, key, &err), -1);
    assert_non_null(strstr(err.msg, "alg"));
    free(bad);
    free(hdr64);

    /* padding or bad base64url, extra members, not JSON */
    bad = jws_with(jws, "signature", "AAAA=");
    assert_int_equal(acme_jws_verify(bad, key, &err), -1);
    free(bad);
    o = json_loads(jws, 0, NULL);
    json_object_set_new(o, "header", json_object());
    bad = json_dumps(o, 0);
    json_decref(o);
    assert_int_equal(acme_jws_verify(bad, key, &err), -1);
    free(bad);
    assert_int_equal(acme_jws_verify("not json", key, &err), -1);
    assert_int_equal(acme_jws_verify("[]", key, &err), -1);
    assert_int_equal(acme_jws_verify("{}", key, &err), -1);
    assert_int_equal(acme_jws_verify(NULL, key, &err), -1);
    assert_int_equal(acme_jws_verify(jws, NULL, &err), -1);

    /* a key of another alg */
    ks = (acme_keyspec_t) { ACME_KEY_EC, 384 };
    other = acme_key_generate(&ks, &err);
    acme_err_clear(&err);
    assert_int_equal(acme_jws_verify(jws, other, &err), -1);
    assert_non_null(strstr(err.msg, "alg"));
    EVP_PKEY_free(other);

    assert_int_equal(acme_jws_verify(jws, key, &err), 0);
    free(jws);
    EVP_PKEY_free(key);
}

static void
test_sign_errors(void **state)
{
    acme_keyspec_t  ks = ACME_KEYSPEC_DEFAULT;
    acme_err_t      err;
    EVP_PKEY       *key, *ed;

    key = acme_key_generate(&ks, &err);
    acme_err_clear(&err);
    assert_null(acme_jws_sign(key, kid, nonce, NULL, "{}", &err));
    assert_true(strlen(err.msg) > 0);
    assert_null(acme_jws_sign(NULL, kid, nonce, url, "{}", &err));
    assert_null(acme_jws_sign(key, "\xff\xfe", nonce, url, "{}", &err));

    ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    acme_err_clear(&err);
    assert_null(acme_jws_sign(ed, kid, nonce, url, "{}", &err));
    assert_non_null(strstr(err.msg, "unsupported"));
    EVP_PKEY_free(ed);
    EVP_PKEY_free(key);
}

/* Key rollover nests a JWS object in another JWS's payload. */
static void
test_sign_json_nested(void **state)
{
    acme_keyspec_t  ks = ACME_KEYSPEC_DEFAULT;
    acme_err_t      err;
    EVP_PKEY       *oldk, *newk;
    json_t         *inner;
    char           *inner_text, *outer;

    oldk = acme_key_generate(&ks, &err);
    newk = acme_key_generate(&ks, &err);
    inner = acme_jws_sign_json(newk, NULL, NULL, "https://ca.example/acme/key-change",
                               "{\"account\":\"https://ca.example/acme/acct/17\"}", &err);
    assert_non_null(inner);
    assert_int_equal(json_object_size(inner), 3);
    inner_text = json_dumps(inner, JSON_COMPACT);
    assert_int_equal(acme_jws_verify(inner_text, newk, &err), 0);
    assert_int_equal(acme_jws_verify(inner_text, oldk, &err), -1);

    outer = acme_jws_sign(oldk, kid, nonce, "https://ca.example/acme/key-change", inner_text, &err);
    assert_non_null(outer);
    assert_int_equal(acme_jws_verify(outer, oldk, &err), 0);

    free(outer);
    free(inner_text);
    json_decref(inner);
    EVP_PKEY_free(oldk);
    EVP_PKEY_free(newk);
}

static void
test_eab(void **state)
{
    static const unsigned char  hkey[] = "a 32 byte secret for the HMAC!!";
    acme_keyspec_t              ks = { ACME_KEY_EC, 384 };
    acme_err_t                  err;
    EVP_PKEY                   *acct;
    json_t                     *eab, *jwk, *pl;
    char                       *text, *in, *want;
    parsed_jws_t                p;
    unsigned char               mac[32];
    unsigned int                maclen = 0;
    const char                 *newacct = "https://ca.example/acme/new-account";

    acct = acme_key_generate(&ks, &err);
    eab = acme_jws_eab("eab-kid-1", hkey, sizeof(hkey) - 1, acct, newacct, &err);
    assert_non_null(eab);
    text = json_dumps(eab, JSON_COMPACT);
    parse_jws(text, &p);

    /* protected header: exactly alg, kid, url */
    assert_int_equal(json_object_size(p.hdr), 3);
    assert_string_equal(json_string_value(json_object_get(p.hdr, "alg")), "HS256");
    assert_string_equal(json_string_value(json_object_get(p.hdr, "kid")), "eab-kid-1");
    assert_string_equal(json_string_value(json_object_get(p.hdr, "url")), newacct);
    assert_null(json_object_get(p.hdr, "nonce"));

    /* payload: the account's public JWK */
    pl = json_loadb((const char *) p.payload, p.payload_len, 0, NULL);
    assert_non_null(pl);
    jwk = acme_jwk(acct, &err);
    assert_true(json_equal(pl, jwk));
    assert_null(json_object_get(pl, "d"));
    json_decref(pl);
    json_decref(jwk);

    /* signature: HMAC-SHA256 over the signing input, recomputed here */
    in = signing_input(&p);
    assert_non_null(HMAC(EVP_sha256(), hkey, (int) sizeof(hkey) - 1, (const unsigned char *) in, strlen(in),
                         mac, &maclen));
    assert_int_equal(maclen, 32);
    assert_int_equal(p.sig_len, 32);
    assert_memory_equal(p.sig, mac, 32);
    want = acme_b64url_encode(mac, 32);
    assert_string_equal(json_string_value(json_object_get(p.jws, "signature")), want);
    free(want);
    free(in);
    free_jws(&p);
    free(text);
    json_decref(eab);

    /* errors */
    acme_err_clear(&err);
    assert_null(acme_jws_eab("kid", hkey, 0, acct, newacct, &err));
    assert_true(strlen(err.msg) > 0);
    assert_null(acme_jws_eab(NULL, hkey, 8, acct, newacct, &err));
    assert_null(acme_jws_eab("kid", hkey, 8, NULL, newacct, &err));
    assert_null(acme_jws_eab("kid", hkey, 8, acct, NULL, &err));
    EVP_PKEY_free(acct);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_es256),
        cmocka_unit_test(test_es384),
        cmocka_unit_test(test_es512),
        cmocka_unit_test(test_rs256),
        cmocka_unit_test(test_ecdsa_short_r_s),
        cmocka_unit_test(test_verify_rejects),
        cmocka_unit_test(test_sign_errors),
        cmocka_unit_test(test_sign_json_nested),
        cmocka_unit_test(test_eab),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
