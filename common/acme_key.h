/* Key types, key generation, PEM and JWK (RFC 7517/7638) for account and certificate keys. */
#ifndef ACME_KEY_H
#define ACME_KEY_H

#include <openssl/evp.h>
#include <jansson.h>
#include "acme_err.h"

typedef enum { ACME_KEY_EC = 1, ACME_KEY_RSA = 2 } acme_key_alg_t;

typedef struct {
    acme_key_alg_t alg;
    int            bits;     /* EC: 256, 384 or 521; RSA: 2048, 3072 or 4096 */
} acme_keyspec_t;

#define ACME_KEYSPEC_DEFAULT  ((acme_keyspec_t) { ACME_KEY_EC, 256 })

/* "ecdsa:256", "ecdsa:384", "ecdsa:521", "ec:256", "p256", "p384", "p521", "rsa", "rsa:2048", "rsa:3072",
 * "rsa:4096". */
int  acme_keyspec_parse(const char *s, acme_keyspec_t *ks, acme_err_t *err);
/* Canonical name ("ecdsa:256", "rsa:2048") into buf (>= 16 bytes). */
const char *acme_keyspec_str(const acme_keyspec_t *ks, char *buf, size_t size);
/* Describe an existing key; -1 for unsupported key types. */
int  acme_keyspec_of(EVP_PKEY *key, acme_keyspec_t *ks, acme_err_t *err);

EVP_PKEY *acme_key_generate(const acme_keyspec_t *ks, acme_err_t *err);
/* Unencrypted PKCS#8 PEM, malloc'd. The caller wipes it (acme_free_secret). */
char *acme_key_to_pem(EVP_PKEY *key, size_t *len, acme_err_t *err);
/* Accepts PKCS#8, traditional RSA and SEC1 EC PEM. Refuses encrypted keys. */
EVP_PKEY *acme_key_from_pem(const char *pem, size_t len, acme_err_t *err);

/* Public JWK with exactly the required members (RFC 7638 ordering is applied by the thumbprint). */
json_t *acme_jwk(EVP_PKEY *key, acme_err_t *err);
/* base64url(SHA-256(canonical JWK)), malloc'd. */
char *acme_jwk_thumbprint(EVP_PKEY *key, acme_err_t *err);
/* JWS "alg" for this key: "ES256", "ES384", "ES512" or "RS256"; NULL when unsupported. */
const char *acme_jws_alg(EVP_PKEY *key);

/* 1 when the public halves are equal. */
int acme_key_matches(EVP_PKEY *a, EVP_PKEY *b);

#endif
