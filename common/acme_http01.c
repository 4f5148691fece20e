/* HTTP-01 challenge paths. */
#include "acme_http01.h"

#include <string.h>
#include "acme_b64.h"

acme_http01_path_t
acme_http01_parse_path(const char *path, size_t len, const char **token, size_t *token_len)
{
    const char *t;
    size_t      n;

    if (len < ACME_HTTP01_PREFIX_LEN || memcmp(path, ACME_HTTP01_PREFIX, ACME_HTTP01_PREFIX_LEN) != 0) {
        /* "/.well-known/acme-challenge" itself or an encoded variant is not a token request either */
        return ACME_HTTP01_NOT_CHALLENGE;
    }
    t = path + ACME_HTTP01_PREFIX_LEN;
    n = len - ACME_HTTP01_PREFIX_LEN;
    if (n < ACME_HTTP01_TOKEN_MIN || !acme_b64url_is_token(t, n, ACME_HTTP01_TOKEN_MAX)) {
        return ACME_HTTP01_MALFORMED;
    }
    *token = t;
    *token_len = n;
    return ACME_HTTP01_TOKEN;
}
