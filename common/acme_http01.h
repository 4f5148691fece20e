/* HTTP-01 (RFC 8555 8.3): recognising challenge requests, shared by every server adapter. */
#ifndef ACME_HTTP01_H
#define ACME_HTTP01_H

#include <stddef.h>

#define ACME_HTTP01_PREFIX      "/.well-known/acme-challenge/"
#define ACME_HTTP01_PREFIX_LEN  (sizeof(ACME_HTTP01_PREFIX) - 1)
#define ACME_HTTP01_TOKEN_MIN   22      /* 128 bits of entropy, RFC 8555 8.1 */
#define ACME_HTTP01_TOKEN_MAX   256

typedef enum {
    ACME_HTTP01_NOT_CHALLENGE = 0,  /* some other path: not ours to answer */
    ACME_HTTP01_TOKEN = 1,          /* a well-formed token: look it up */
    ACME_HTTP01_MALFORMED = -1      /* under the challenge prefix but not a token: answer 404 */
} acme_http01_path_t;

/*
 * Classify a request path as the client sent it (raw, before any decoding; a query string is part of it).
 * A token is ACME_HTTP01_TOKEN_MIN..ACME_HTTP01_TOKEN_MAX base64url characters and nothing else: no '%', '/', '.', '?', NUL.
 * On ACME_HTTP01_TOKEN, *token / *token_len point into path.
 */
acme_http01_path_t acme_http01_parse_path(const char *path, size_t len, const char **token,
    size_t *token_len);

#endif
