/* base64url without padding (RFC 4648 section 5), as JOSE and ACME use it. */
#ifndef ACME_B64_H
#define ACME_B64_H

#include <stddef.h>

/* Returns a malloc'd NUL-terminated string, NULL on allocation failure. */
char *acme_b64url_encode(const unsigned char *in, size_t len);
/* Strict: rejects '=', '+', '/', whitespace and impossible lengths. 0 ok, -1 bad input. */
int acme_b64url_decode(const char *in, size_t len, unsigned char **out, size_t *outlen);
/* 1 when every byte is in the base64url alphabet and 1 <= len <= max. */
int acme_b64url_is_token(const char *s, size_t len, size_t max);

#endif
