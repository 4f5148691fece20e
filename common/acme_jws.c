/* JWS (RFC 7515) flattened JSON serialization for ACME requests, and External Account Binding. */
#include "acme_jws.h"
#include "acme_b64.h"
#include "acme_key.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

#define ACME_JWS_MAX  (1024 * 1024)

/* Hash and raw signature half-size for a JWS alg; 0 for RSA. */
static const EVP_MD *
jws_alg_md(const char *alg, size_t *ec_half)
{
    if (strcmp(alg, "ES256") == 0) {
        *ec_half = 32;
        return EVP_sha256();
    }
    if (strcmp(alg, "ES384") == 0) {
        *ec_half = 48;
        return EVP_sha384();
    }
    if (strcmp(alg, "ES512") == 0) {
        *ec_half = 66;
        return EVP_sha512();
    }
    if (strcmp(alg, "RS256") == 0) {
        *ec_half = 0;
        return EVP_sha256();
    }
    return NULL;
}

/* ECDSA DER signature -> R || S, each left-padded to half bytes. */
static int
jws_ecdsa_der_to_raw(const unsigned char *der, size_t derlen, size_t half, unsigned char *raw,
    acme_err_t *err)
{
    const unsigned char  *p = der;
    const BIGNUM         *r, *s;
    ECDSA_SIG            *sig;

    if (derlen > LONG_MAX) {
        acme_err_set(err, ACME_ERR_INTERNAL, "ECDSA signature too long");
        return -1;
    }
    sig = d2i_ECDSA_SIG(NULL, &p, (long) derlen);
    if (sig == NULL) {
        acme_err_ssl(err, "cannot decode the ECDSA signature");
        return -1;
    }
    ECDSA_SIG_get0(sig, &r, &s);
    if (BN_bn2binpad(r, raw, (int) half) != (int) half
        || BN_bn2binpad(s, raw + half, (int) half) != (int) half)
    {
        acme_err_set(err, ACME_ERR_INTERNAL, "ECDSA signature does not fit the curve size");
        ECDSA_SIG_free(sig);
        return -1;
    }
    ECDSA_SIG_free(sig);
    return 0;
}

/* R || S -> DER, malloc'd in *der. */
static int
jws_ecdsa_raw_to_der(const unsigned char *raw, size_t half, unsigned char **der, size_t *derlen,
    acme_err_t *err)
{
    ECDSA_SIG  *sig;
    BIGNUM     *r, *s;
    int         n;

    *der = NULL;
    sig = ECDSA_SIG_new();
    r = BN_bin2bn(raw, (int) half, NULL);
    s = BN_bin2bn(raw + half, (int) half, NULL);
    if (sig == NULL || r == NULL || s == NULL || ECDSA_SIG_set0(sig, r, s) != 1) {
        acme_err_ssl(err, "cannot build the ECDSA signature");
        ECDSA_SIG_free(sig);
        BN_free(r);
        BN_free(s);
        return -1;
    }

    n = i2d_ECDSA_SIG(sig, der);
    ECDSA_SIG_free(sig);
    if (n <= 0) {
        acme_err_ssl(err, "cannot encode the ECDSA signature");
        *der = NULL;
        return -1;
    }
    *derlen = (size_t) n;
    return 0;
}

/* The JWS signature over in (raw R||S for ECDSA), malloc'd. */
static unsigned char *
jws_sign_bytes(EVP_PKEY *key, const char *alg, const char *in, size_t inlen, size_t *siglen,
    acme_err_t *err)
{
    EVP_MD_CTX     *ctx;
    EVP_PKEY_CTX   *pctx = NULL;
    const EVP_MD   *md;
    unsigned char  *der = NULL, *raw;
    size_t          derlen = 0, half;

    md = jws_alg_md(alg, &half);
    if (md == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "unsupported JWS algorithm %s", alg);
        return NULL;
    }

    ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        acme_err_ssl(err, "cannot allocate a digest context");
        return NULL;
    }

    if (EVP_DigestSignInit(ctx, &pctx, md, NULL, key) != 1
        || (half == 0 && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0)
        || EVP_DigestSign(ctx, NULL, &derlen, (const unsigned char *) in, inlen) != 1)
    {
        acme_err_ssl(err, "%s signing failed", alg);
        EVP_MD_CTX_free(ctx);
        return NULL;
    }

    der = malloc(derlen ? derlen : 1);
    if (der == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        EVP_MD_CTX_free(ctx);
        return NULL;
    }
    if (EVP_DigestSign(ctx, der, &derlen, (const unsigned char *) in, inlen) != 1) {
        acme_err_ssl(err, "%s signing failed", alg);
        free(der);
        EVP_MD_CTX_free(ctx);
        return NULL;
    }
    EVP_MD_CTX_free(ctx);

    if (half == 0) {
        *siglen = derlen;
        return der;
    }

    raw = malloc(2 * half);
    if (raw == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        free(der);
        return NULL;
    }
    if (jws_ecdsa_der_to_raw(der, derlen, half, raw, err) != 0) {
        free(der);
        free(raw);
        return NULL;
    }
    free(der);
    *siglen = 2 * half;
    return raw;
}

/* base64url(protected) "." base64url(payload) and the JWS object around its signature. */
static json_t *
jws_assemble(json_t *protected, const char *payload, size_t payload_len, EVP_PKEY *key,
    const char *alg, const unsigned char *hmac_key, size_t hmac_key_len, acme_err_t *err)
{
    char           *hdr = NULL, *phdr = NULL, *ppay = NULL, *input = NULL, *psig = NULL;
    unsigned char  *sig = NULL;
    unsigned char   mac[EVP_MAX_MD_SIZE];
    size_t          siglen = 0;
    json_t         *jws = NULL;

    hdr = json_dumps(protected, JSON_COMPACT);
    if (hdr == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "cannot serialise the JWS header");
        goto done;
    }
    phdr = acme_b64url_encode((const unsigned char *) hdr, strlen(hdr));
    ppay = acme_b64url_encode((const unsigned char *) payload, payload_len);
    if (phdr == NULL || ppay == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }
    input = acme_sprintf("%s.%s", phdr, ppay);
    if (input == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }

    if (key != NULL) {
        sig = jws_sign_bytes(key, alg, input, strlen(input), &siglen, err);
        if (sig == NULL) {
            goto done;
        }
        psig = acme_b64url_encode(sig, siglen);

    } else {
        if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, hmac_key, hmac_key_len,
                      (const unsigned char *) input, strlen(input), mac, sizeof(mac), &siglen) == NULL)
        {
            acme_err_ssl(err, "HMAC-SHA256 failed");
            goto done;
        }
        psig = acme_b64url_encode(mac, siglen);
        OPENSSL_cleanse(mac, sizeof(mac));
    }
    if (psig == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }

    jws = json_pack("{s:s, s:s, s:s}", "protected", phdr, "payload", ppay, "signature", psig);
    if (jws == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    }

done:
    free(hdr);
    free(phdr);
    free(ppay);
    free(input);
    free(sig);
    free(psig);
    return jws;
}

json_t *
acme_jws_sign_json(EVP_PKEY *key, const char *kid, const char *nonce, const char *url,
    const char *payload, acme_err_t *err)
{
    const char  *alg;
    json_t      *protected, *jwk, *jws;

    if (key == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "JWS: no key");
        return NULL;
    }
    if (url == NULL || url[0] == '\0') {
        acme_err_set(err, ACME_ERR_INPUT, "JWS: no URL");
        return NULL;
    }
    alg = acme_jws_alg(key);
    if (alg == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "JWS: unsupported key type (ECDSA P-256/P-384/P-521 or RSA required)");
        return NULL;
    }

    protected = json_object();
    if (protected == NULL || json_object_set_new(protected, "alg", json_string(alg)) != 0) {
        goto nomem;
    }

    if (kid != NULL) {
        if (json_object_set_new(protected, "kid", json_string(kid)) != 0) {
            acme_err_set(err, ACME_ERR_INPUT, "JWS: kid is not valid UTF-8");
            json_decref(protected);
            return NULL;
        }

    } else {
        jwk = acme_jwk(key, err);
        if (jwk == NULL) {
            acme_err_prefix(err, "JWS");
            json_decref(protected);
            return NULL;
        }
        if (json_object_set_new(protected, "jwk", jwk) != 0) {
            goto nomem;
        }
    }

    if (nonce != NULL && json_object_set_new(protected, "nonce", json_string(nonce)) != 0) {
        acme_err_set(err, ACME_ERR_INPUT, "JWS: nonce is not valid UTF-8");
        json_decref(protected);
        return NULL;
    }
    if (json_object_set_new(protected, "url", json_string(url)) != 0) {
        acme_err_set(err, ACME_ERR_INPUT, "JWS: URL is not valid UTF-8");
        json_decref(protected);
        return NULL;
    }

    if (payload == NULL) {
        payload = "";
    }
    jws = jws_assemble(protected, payload, strlen(payload), key, alg, NULL, 0, err);
    json_decref(protected);
    return jws;

nomem:
    acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    json_decref(protected);
    return NULL;
}

char *
acme_jws_sign(EVP_PKEY *key, const char *kid, const char *nonce, const char *url,
    const char *payload, acme_err_t *err)
{
    json_t  *jws;
    char    *s;

    jws = acme_jws_sign_json(key, kid, nonce, url, payload, err);
    if (jws == NULL) {
        return NULL;
    }
    s = json_dumps(jws, JSON_COMPACT);
    json_decref(jws);
    if (s == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "cannot serialise the JWS");
    }
    return s;
}

json_t *
acme_jws_eab(const char *eab_kid, const unsigned char *hmac_key, size_t hmac_key_len,
    EVP_PKEY *account_key, const char *url, acme_err_t *err)
{
    json_t  *protected, *jwk, *jws;
    char    *payload;

    if (eab_kid == NULL || eab_kid[0] == '\0') {
        acme_err_set(err, ACME_ERR_CONFIG, "external account binding: no key identifier");
        return NULL;
    }
    if (hmac_key == NULL || hmac_key_len == 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "external account binding: empty HMAC key");
        return NULL;
    }
    if (url == NULL || url[0] == '\0') {
        acme_err_set(err, ACME_ERR_INPUT, "external account binding: no newAccount URL");
        return NULL;
    }

    jwk = acme_jwk(account_key, err);
    if (jwk == NULL) {
        acme_err_prefix(err, "external account binding");
        return NULL;
    }
    payload = json_dumps(jwk, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(jwk);
    if (payload == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }

    protected = json_pack("{s:s, s:s, s:s}", "alg", "HS256", "kid", eab_kid, "url", url);
    if (protected == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "external account binding: key identifier or URL is not valid UTF-8");
        free(payload);
        return NULL;
    }

    jws = jws_assemble(protected, payload, strlen(payload), NULL, "HS256", hmac_key, hmac_key_len, err);
    json_decref(protected);
    free(payload);
    if (jws == NULL) {
        acme_err_prefix(err, "external account binding");
    }
    return jws;
}

/* The string member name of obj, or NULL. */
static const char *
jws_member(json_t *obj, const char *name)
{
    return json_string_value(json_object_get(obj, name));
}

int
acme_jws_verify(const char *jws, EVP_PKEY *key, acme_err_t *err)
{
    json_t          *root = NULL, *hdr = NULL, *jwk, *ourjwk;
    const char      *phdr, *ppay, *psig, *alg, *want;
    unsigned char   *hbytes = NULL, *pbytes = NULL, *sig = NULL, *der = NULL;
    size_t           hlen, plen, siglen, derlen = 0, half = 0;
    char            *input = NULL;
    const EVP_MD    *md;
    EVP_MD_CTX      *ctx = NULL;
    EVP_PKEY_CTX    *pctx = NULL;
    json_error_t     jerr;
    int              rc = -1, v;

    if (jws == NULL || key == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "JWS verify: no JWS or no key");
        return -1;
    }
    if (strlen(jws) > ACME_JWS_MAX) {
        acme_err_set(err, ACME_ERR_INPUT, "JWS verify: too large");
        return -1;
    }
    want = acme_jws_alg(key);
    if (want == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "JWS verify: unsupported key type");
        return -1;
    }

    root = json_loads(jws, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL || !json_is_object(root)) {
        acme_err_set(err, ACME_ERR_INPUT, "JWS verify: not a JSON object");
        goto done;
    }
    phdr = jws_member(root, "protected");
    ppay = jws_member(root, "payload");
    psig = jws_member(root, "signature");
    if (phdr == NULL || ppay == NULL || psig == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "JWS verify: \"protected\", \"payload\" and \"signature\" are required");
        goto done;
    }
    if (json_object_size(root) != 3) {
        acme_err_set(err, ACME_ERR_INPUT, "JWS verify: unexpected members in the JWS");
        goto done;
    }

    if (acme_b64url_decode(phdr, strlen(phdr), &hbytes, &hlen) != 0
        || acme_b64url_decode(ppay, strlen(ppay), &pbytes, &plen) != 0
        || acme_b64url_decode(psig, strlen(psig), &sig, &siglen) != 0)
    {
        acme_err_set(err, ACME_ERR_INPUT, "JWS verify: invalid base64url");
        goto done;
    }

    hdr = json_loadb((const char *) hbytes, hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (hdr == NULL || !json_is_object(hdr)) {
        acme_err_set(err, ACME_ERR_INPUT, "JWS verify: the protected header is not a JSON object");
        goto done;
    }

    alg = jws_member(hdr, "alg");
    if (alg == NULL || strcmp(alg, want) != 0) {
        acme_err_set(err, ACME_ERR_INPUT, "JWS verify: alg %.16s does not match the key (%s)",
                     alg ? alg : "(none)", want);
        goto done;
    }
    if (jws_member(hdr, "url") == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "JWS verify: no url in the protected header");
        goto done;
    }

    jwk = json_object_get(hdr, "jwk");
    if ((jwk == NULL) == (json_object_get(hdr, "kid") == NULL)) {
        acme_err_set(err, ACME_ERR_INPUT, "JWS verify: exactly one of jwk and kid is required");
        goto done;
    }
    if (jwk == NULL && jws_member(hdr, "kid") == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "JWS verify: kid is not a string");
        goto done;
    }
    if (jwk != NULL) {
        ourjwk = acme_jwk(key, err);
        if (ourjwk == NULL) {
            goto done;
        }
        v = json_equal(jwk, ourjwk);
        json_decref(ourjwk);
        if (!v) {
            acme_err_set(err, ACME_ERR_INPUT, "JWS verify: the jwk is not the key's");
            goto done;
        }
    }

    md = jws_alg_md(alg, &half);
    if (half != 0) {
        if (siglen != 2 * half) {
            acme_err_set(err, ACME_ERR_INPUT, "JWS verify: %s signature must be %zu bytes, not %zu",
                         alg, 2 * half, siglen);
            goto done;
        }
        if (jws_ecdsa_raw_to_der(sig, half, &der, &derlen, err) != 0) {
            goto done;
        }
    }

    input = acme_sprintf("%s.%s", phdr, ppay);
    ctx = EVP_MD_CTX_new();
    if (input == NULL || ctx == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }
    if (EVP_DigestVerifyInit(ctx, &pctx, md, NULL, key) != 1
        || (half == 0 && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0))
    {
        acme_err_ssl(err, "JWS verify: cannot set up %s verification", alg);
        goto done;
    }

    v = EVP_DigestVerify(ctx, half ? der : sig, half ? derlen : siglen,
                         (const unsigned char *) input, strlen(input));
    ERR_clear_error();
    if (v != 1) {
        acme_err_set(err, ACME_ERR_INPUT, "JWS verify: bad %s signature", alg);
        goto done;
    }
    rc = 0;

done:
    json_decref(root);
    json_decref(hdr);
    free(hbytes);
    free(pbytes);
    free(sig);
    OPENSSL_free(der);
    free(input);
    EVP_MD_CTX_free(ctx);
    return rc;
}
