/* base64url without padding (RFC 4648 section 5). */
#include "acme_b64.h"

#include <stdint.h>
#include <stdlib.h>

static const char  b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* 0..63 for alphabet bytes, -1 for everything else. */
static int
b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '-') {
        return 62;
    }
    if (c == '_') {
        return 63;
    }
    return -1;
}

char *
acme_b64url_encode(const unsigned char *in, size_t len)
{
    size_t    i, o, olen;
    uint32_t  v;
    char     *out;

    if (len > (SIZE_MAX - 4) / 4 * 3) {
        return NULL;
    }
    olen = len / 3 * 4 + (len % 3 ? len % 3 + 1 : 0);
    out = malloc(olen + 1);
    if (out == NULL) {
        return NULL;
    }

    o = 0;
    for (i = 0; i + 3 <= len; i += 3) {
        v = ((uint32_t) in[i] << 16) | ((uint32_t) in[i + 1] << 8) | in[i + 2];
        out[o++] = b64url_alphabet[(v >> 18) & 0x3f];
        out[o++] = b64url_alphabet[(v >> 12) & 0x3f];
        out[o++] = b64url_alphabet[(v >> 6) & 0x3f];
        out[o++] = b64url_alphabet[v & 0x3f];
    }

    if (len - i == 1) {
        v = (uint32_t) in[i] << 16;
        out[o++] = b64url_alphabet[(v >> 18) & 0x3f];
        out[o++] = b64url_alphabet[(v >> 12) & 0x3f];

    } else if (len - i == 2) {
        v = ((uint32_t) in[i] << 16) | ((uint32_t) in[i + 1] << 8);
        out[o++] = b64url_alphabet[(v >> 18) & 0x3f];
        out[o++] = b64url_alphabet[(v >> 12) & 0x3f];
        out[o++] = b64url_alphabet[(v >> 6) & 0x3f];
    }

    out[o] = '\0';
    return out;
}

/*
 * Strict decoding: only the 64 alphabet bytes, no padding, no whitespace, a length that some byte string
 * encodes to (len % 4 != 1), and zero bits in the unused low bits of the last character (so that every
 * byte string has exactly one accepted encoding).
 */
int
acme_b64url_decode(const char *in, size_t len, unsigned char **out, size_t *outlen)
{
    size_t          i, o, olen, rem;
    int             c[4], k;
    uint32_t        v;
    unsigned char  *buf;

    if (out == NULL || outlen == NULL || (in == NULL && len > 0)) {
        return -1;
    }
    *out = NULL;
    *outlen = 0;

    rem = len % 4;
    if (rem == 1) {
        return -1;
    }
    olen = len / 4 * 3 + (rem ? rem - 1 : 0);

    buf = malloc(olen + 1);
    if (buf == NULL) {
        return -1;
    }

    o = 0;
    for (i = 0; i < len; i += 4) {
        for (k = 0; k < 4; k++) {
            if (i + k < len) {
                c[k] = b64url_value((unsigned char) in[i + k]);
                if (c[k] < 0) {
                    free(buf);
                    return -1;
                }
            } else {
                c[k] = 0;
            }
        }
        v = ((uint32_t) c[0] << 18) | ((uint32_t) c[1] << 12) | ((uint32_t) c[2] << 6) | (uint32_t) c[3];

        if (len - i >= 4) {
            buf[o++] = (unsigned char) (v >> 16);
            buf[o++] = (unsigned char) (v >> 8);
            buf[o++] = (unsigned char) v;

        } else if (len - i == 3) {
            if (v & 0xff) {
                free(buf);
                return -1;
            }
            buf[o++] = (unsigned char) (v >> 16);
            buf[o++] = (unsigned char) (v >> 8);

        } else {
            if (v & 0xffff) {
                free(buf);
                return -1;
            }
            buf[o++] = (unsigned char) (v >> 16);
        }
    }

    buf[o] = '\0';
    *out = buf;
    *outlen = o;
    return 0;
}

int
acme_b64url_is_token(const char *s, size_t len, size_t max)
{
    size_t i;

    if (s == NULL || len < 1 || len > max) {
        return 0;
    }
    for (i = 0; i < len; i++) {
        if (b64url_value((unsigned char) s[i]) < 0) {
            return 0;
        }
    }
    return 1;
}
