/* JSON Web Signature in flattened JSON serialization, as ACME requests use it (RFC 8555 6.2). */
#ifndef ACME_JWS_H
#define ACME_JWS_H

#include <openssl/evp.h>
#include <jansson.h>
#include "acme_err.h"

/*
 * Sign payload with key. Protected header: alg, then "kid" when kid != NULL else "jwk",
 * "nonce" when nonce != NULL, "url". payload NULL means POST-as-GET (empty payload "").
 * Returns the flattened JWS as a malloc'd JSON string.
 */
char *acme_jws_sign(EVP_PKEY *key, const char *kid, const char *nonce, const char *url,
    const char *payload, acme_err_t *err);

/* Same, returning the JSON object (used to nest a JWS in another payload, as key rollover does). */
json_t *acme_jws_sign_json(EVP_PKEY *key, const char *kid, const char *nonce, const char *url,
    const char *payload, acme_err_t *err);

/*
 * External Account Binding (RFC 8555 7.3.4): a JWS with alg HS256, kid = eab_kid, url = newAccount URL,
 * payload = the account's public JWK, MAC'd with the decoded HMAC key.
 */
json_t *acme_jws_eab(const char *eab_kid, const unsigned char *hmac_key, size_t hmac_key_len,
    EVP_PKEY *account_key, const char *url, acme_err_t *err);

/* Verify a flattened JWS made by acme_jws_sign against key (tests, and self-checks). 0 valid. */
int acme_jws_verify(const char *jws, EVP_PKEY *key, acme_err_t *err);

#endif
