/* Key specs, generation, PEM and JWK. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE     /* memmem, timegm */
#endif
#include "acme_key.h"
#include "acme_b64.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/objects.h>
#include <openssl/pem.h>

#define ACME_KEY_PEM_MAX  (64 * 1024)

int
acme_keyspec_parse(const char *s, acme_keyspec_t *ks, acme_err_t *err)
{
    const char     *p;
    acme_key_alg_t  alg;
    int             bits;

    if (s == NULL || ks == NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "missing key type");
        return -1;
    }

    if (strcasecmp(s, "p256") == 0 || strcasecmp(s, "p-256") == 0) {
        ks->alg = ACME_KEY_EC;
        ks->bits = 256;
        return 0;
    }
    if (strcasecmp(s, "p384") == 0 || strcasecmp(s, "p-384") == 0) {
        ks->alg = ACME_KEY_EC;
        ks->bits = 384;
        return 0;
    }
    if (strcasecmp(s, "p521") == 0 || strcasecmp(s, "p-521") == 0) {
        ks->alg = ACME_KEY_EC;
        ks->bits = 521;
        return 0;
    }

    p = strchr(s, ':');

    if ((p == NULL && (strcasecmp(s, "ecdsa") == 0 || strcasecmp(s, "ec") == 0))
        || (p != NULL && ((p - s == 5 && strncasecmp(s, "ecdsa", 5) == 0)
                          || (p - s == 2 && strncasecmp(s, "ec", 2) == 0))))
    {
        alg = ACME_KEY_EC;
        bits = 256;

    } else if ((p == NULL && strcasecmp(s, "rsa") == 0)
               || (p != NULL && p - s == 3 && strncasecmp(s, "rsa", 3) == 0))
    {
        alg = ACME_KEY_RSA;
        bits = 2048;

    } else {
        acme_err_set(err, ACME_ERR_CONFIG,
                     "unknown key type \"%.64s\" (expected ecdsa:256, ecdsa:384, ecdsa:521, rsa:2048, rsa:3072 "
                     "or rsa:4096)", s);
        return -1;
    }

    if (p != NULL) {
        p++;
        if (strcmp(p, "256") == 0) {
            bits = 256;
        } else if (strcmp(p, "384") == 0) {
            bits = 384;
        } else if (strcmp(p, "521") == 0) {
            bits = 521;
        } else if (strcmp(p, "2048") == 0) {
            bits = 2048;
        } else if (strcmp(p, "3072") == 0) {
            bits = 3072;
        } else if (strcmp(p, "4096") == 0) {
            bits = 4096;
        } else {
            bits = 0;
        }

        if (alg == ACME_KEY_EC && bits != 256 && bits != 384 && bits != 521) {
            acme_err_set(err, ACME_ERR_CONFIG,
                         "unsupported curve \"%.64s\" for ECDSA (expected 256, 384 or 521)", p);
            return -1;
        }
        if (alg == ACME_KEY_RSA && bits != 2048 && bits != 3072 && bits != 4096) {
            acme_err_set(err, ACME_ERR_CONFIG,
                         "unsupported key size \"%.64s\" for RSA (expected 2048, 3072 or 4096)", p);
            return -1;
        }
    }

    ks->alg = alg;
    ks->bits = bits;
    return 0;
}

const char *
acme_keyspec_str(const acme_keyspec_t *ks, char *buf, size_t size)
{
    if (buf == NULL || size == 0) {
        return "";
    }
    if (ks == NULL) {
        snprintf(buf, size, "none");
    } else if (ks->alg == ACME_KEY_EC) {
        snprintf(buf, size, "ecdsa:%d", ks->bits);
    } else if (ks->alg == ACME_KEY_RSA) {
        snprintf(buf, size, "rsa:%d", ks->bits);
    } else {
        snprintf(buf, size, "unknown");
    }
    return buf;
}

/* NID of an EC key's named curve, NID_undef when it has none we know. */
static int
key_ec_curve_nid(EVP_PKEY *key)
{
    char  name[64];
    int   nid;

    if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, name, sizeof(name), NULL) != 1) {
        ERR_clear_error();
        return NID_undef;
    }
    nid = OBJ_sn2nid(name);
    if (nid == NID_undef) {
        nid = OBJ_ln2nid(name);
    }
    if (nid == NID_undef) {
        nid = EC_curve_nist2nid(name);
    }
    return nid;
}

int
acme_keyspec_of(EVP_PKEY *key, acme_keyspec_t *ks, acme_err_t *err)
{
    int  nid, bits;

    if (key == NULL || ks == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "no key");
        return -1;
    }

    switch (EVP_PKEY_get_base_id(key)) {

    case EVP_PKEY_EC:
        nid = key_ec_curve_nid(key);
        if (nid == NID_X9_62_prime256v1) {
            bits = 256;
        } else if (nid == NID_secp384r1) {
            bits = 384;
        } else if (nid == NID_secp521r1) {
            bits = 521;
        } else {
            acme_err_set(err, ACME_ERR_INPUT,
                         "unsupported EC curve (only P-256, P-384 and P-521 are supported)");
            return -1;
        }
        ks->alg = ACME_KEY_EC;
        ks->bits = bits;
        return 0;

    case EVP_PKEY_RSA:
        bits = EVP_PKEY_get_bits(key);
        if (bits < 2048 || bits > 16384) {
            acme_err_set(err, ACME_ERR_INPUT, "unsupported RSA key size %d (at least 2048 bits required)",
                         bits);
            return -1;
        }
        ks->alg = ACME_KEY_RSA;
        ks->bits = bits;
        return 0;

    default:
        acme_err_set(err, ACME_ERR_INPUT, "unsupported key type %s (only ECDSA and RSA are supported)",
                     OBJ_nid2sn(EVP_PKEY_get_base_id(key)));
        return -1;
    }
}

EVP_PKEY *
acme_key_generate(const acme_keyspec_t *ks, acme_err_t *err)
{
    EVP_PKEY  *key;
    char       buf[32];

    if (ks == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "no key type");
        return NULL;
    }

    if (ks->alg == ACME_KEY_EC && ks->bits == 256) {
        key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");

    } else if (ks->alg == ACME_KEY_EC && ks->bits == 384) {
        key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");

    } else if (ks->alg == ACME_KEY_EC && ks->bits == 521) {
        key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-521");

    } else if (ks->alg == ACME_KEY_RSA && (ks->bits == 2048 || ks->bits == 3072 || ks->bits == 4096)) {
        /* OpenSSL's default public exponent is 65537 */
        key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t) ks->bits);

    } else {
        acme_err_set(err, ACME_ERR_CONFIG, "cannot generate a key of type %s",
                     acme_keyspec_str(ks, buf, sizeof(buf)));
        return NULL;
    }

    if (key == NULL) {
        acme_err_ssl(err, "key generation (%s) failed", acme_keyspec_str(ks, buf, sizeof(buf)));
        return NULL;
    }
    return key;
}

char *
acme_key_to_pem(EVP_PKEY *key, size_t *len, acme_err_t *err)
{
    BIO   *bio;
    char  *data, *out;
    long   n;

    if (key == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "no key");
        return NULL;
    }

    /* secure-heap BIO: the PEM text is wiped when freed */
    bio = BIO_new(BIO_s_secmem());
    if (bio == NULL) {
        acme_err_ssl(err, "cannot allocate a BIO");
        return NULL;
    }

    if (PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) != 1) {
        acme_err_ssl(err, "cannot encode the private key");
        BIO_free(bio);
        return NULL;
    }

    n = BIO_get_mem_data(bio, &data);
    if (n <= 0) {
        acme_err_ssl(err, "cannot encode the private key");
        BIO_free(bio);
        return NULL;
    }

    out = malloc((size_t) n + 1);
    if (out == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        BIO_free(bio);
        return NULL;
    }
    memcpy(out, data, (size_t) n);
    out[n] = '\0';
    BIO_free(bio);

    if (len != NULL) {
        *len = (size_t) n;
    }
    return out;
}

static int
pem_no_password(char *buf, int size, int rwflag, void *u)
{
    (void) buf;
    (void) size;
    (void) rwflag;
    (void) u;
    return -1;
}

/* memmem for a NUL-terminated needle. */
static int
mem_contains(const char *hay, size_t len, const char *needle)
{
    return memmem(hay, len, needle, strlen(needle)) != NULL;
}

EVP_PKEY *
acme_key_from_pem(const char *pem, size_t len, acme_err_t *err)
{
    BIO            *bio;
    EVP_PKEY       *key;
    acme_keyspec_t  ks;

    if (pem == NULL || len == 0) {
        acme_err_set(err, ACME_ERR_INPUT, "empty private key");
        return NULL;
    }
    if (len > ACME_KEY_PEM_MAX) {
        acme_err_set(err, ACME_ERR_INPUT, "private key file too large (%zu bytes)", len);
        return NULL;
    }
    if (mem_contains(pem, len, "-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || mem_contains(pem, len, "Proc-Type: 4,ENCRYPTED"))
    {
        acme_err_set(err, ACME_ERR_INPUT, "the private key is encrypted (only unencrypted keys are supported)");
        return NULL;
    }

    bio = BIO_new_mem_buf(pem, (int) len);
    if (bio == NULL) {
        acme_err_ssl(err, "cannot allocate a BIO");
        return NULL;
    }

    key = PEM_read_bio_PrivateKey(bio, NULL, pem_no_password, NULL);
    BIO_free(bio);

    if (key == NULL) {
        /* the OpenSSL messages name no key material, only what went wrong in decoding */
        acme_err_ssl(err, "no usable private key in PEM data");
        return NULL;
    }
    ERR_clear_error();

    if (acme_keyspec_of(key, &ks, err) != 0) {
        EVP_PKEY_free(key);
        return NULL;
    }
    return key;
}

/* base64url of a big-endian integer parameter; pad > 0 left-pads to pad bytes, 0 gives minimal bytes. */
static char *
key_bn_param_b64(EVP_PKEY *key, const char *param, size_t pad, acme_err_t *err)
{
    BIGNUM         *bn = NULL;
    unsigned char  *buf;
    char           *out;
    int             n;

    if (EVP_PKEY_get_bn_param(key, param, &bn) != 1 || bn == NULL) {
        acme_err_ssl(err, "cannot read the key's public parameter %s", param);
        return NULL;
    }

    n = BN_num_bytes(bn);
    if (pad > 0) {
        if ((size_t) n > pad) {
            acme_err_set(err, ACME_ERR_INTERNAL, "public parameter %s is too large", param);
            BN_free(bn);
            return NULL;
        }
        n = (int) pad;
    }
    if (n <= 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "public parameter %s is zero", param);
        BN_free(bn);
        return NULL;
    }

    buf = malloc((size_t) n);
    if (buf == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        BN_free(bn);
        return NULL;
    }

    if (BN_bn2binpad(bn, buf, n) != n) {
        acme_err_ssl(err, "cannot encode public parameter %s", param);
        free(buf);
        BN_free(bn);
        return NULL;
    }
    BN_free(bn);

    out = acme_b64url_encode(buf, (size_t) n);
    free(buf);
    if (out == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    }
    return out;
}

json_t *
acme_jwk(EVP_PKEY *key, acme_err_t *err)
{
    acme_keyspec_t   ks;
    char            *a = NULL, *b = NULL;
    json_t          *jwk = NULL;

    if (acme_keyspec_of(key, &ks, err) != 0) {
        return NULL;
    }

    if (ks.alg == ACME_KEY_EC) {
        /* coordinates are whole bytes: 66 for P-521 (RFC 7518 section 6.2.1.2) */
        a = key_bn_param_b64(key, OSSL_PKEY_PARAM_EC_PUB_X, ((size_t) ks.bits + 7) / 8, err);
        if (a == NULL) {
            goto done;
        }
        b = key_bn_param_b64(key, OSSL_PKEY_PARAM_EC_PUB_Y, ((size_t) ks.bits + 7) / 8, err);
        if (b == NULL) {
            goto done;
        }
        jwk = json_pack("{s:s, s:s, s:s, s:s}", "crv",
                        ks.bits == 256 ? "P-256" : ks.bits == 384 ? "P-384" : "P-521",
                        "kty", "EC", "x", a, "y", b);

    } else {
        a = key_bn_param_b64(key, OSSL_PKEY_PARAM_RSA_E, 0, err);
        if (a == NULL) {
            goto done;
        }
        b = key_bn_param_b64(key, OSSL_PKEY_PARAM_RSA_N, 0, err);
        if (b == NULL) {
            goto done;
        }
        jwk = json_pack("{s:s, s:s, s:s}", "e", a, "kty", "RSA", "n", b);
    }

    if (jwk == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    }

done:
    free(a);
    free(b);
    return jwk;
}

char *
acme_jwk_thumbprint(EVP_PKEY *key, acme_err_t *err)
{
    json_t         *jwk;
    char           *canon, *out;
    unsigned char   md[EVP_MAX_MD_SIZE];
    unsigned int    mdlen;

    jwk = acme_jwk(key, err);
    if (jwk == NULL) {
        return NULL;
    }

    /*
     * RFC 7638 section 3.2: members in lexicographic order, no whitespace. Every member of our JWKs
     * is a plain ASCII string that JSON does not escape, so jansson's compact, sorted output is it.
     */
    canon = json_dumps(jwk, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(jwk);
    if (canon == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }

    if (EVP_Digest(canon, strlen(canon), md, &mdlen, EVP_sha256(), NULL) != 1) {
        acme_err_ssl(err, "SHA-256 failed");
        free(canon);
        return NULL;
    }
    free(canon);

    out = acme_b64url_encode(md, mdlen);
    if (out == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    }
    return out;
}

const char *
acme_jws_alg(EVP_PKEY *key)
{
    acme_keyspec_t  ks;

    if (acme_keyspec_of(key, &ks, NULL) != 0) {
        return NULL;
    }
    if (ks.alg == ACME_KEY_EC) {
        return ks.bits == 256 ? "ES256" : ks.bits == 384 ? "ES384" : "ES512";
    }
    return "RS256";
}

int
acme_key_matches(EVP_PKEY *a, EVP_PKEY *b)
{
    int  rc;

    if (a == NULL || b == NULL) {
        return 0;
    }
    rc = EVP_PKEY_eq(a, b);
    ERR_clear_error();
    return rc == 1;
}
