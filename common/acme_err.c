/* Errors and buffers. */
#include "acme_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/crypto.h>

/*
 * Copy src into msg; when it is too long, cut the middle, not the end: a CA's problem detail ends with
 * what the operator needs most (Let's Encrypt's paused-account message ends with the unpause URL).
 */
static void
err_fit(char *msg, size_t size, const char *src)
{
    size_t       len = strlen(src), head, tail;
    const char  *t, *u;

    if (len < size) {
        memcpy(msg, src, len + 1);
        return;
    }
    /* the tail: from the last URL when it fits in half the message, else the last quarter */
    t = NULL;
    for (u = strstr(src, "https://"); u != NULL; u = strstr(u + 1, "https://")) {
        t = u;
    }
    tail = t != NULL && (size_t) (src + len - t) <= size / 2 ? (size_t) (src + len - t) : size / 4;
    while (tail > 0 && ((unsigned char) src[len - tail] & 0xc0) == 0x80) {
        tail--;
    }
    head = size - 1 - tail - 5;
    while (head > 0 && ((unsigned char) src[head] & 0xc0) == 0x80) {
        head--;
    }
    memcpy(msg, src, head);
    memcpy(msg + head, " ... ", 5);
    memcpy(msg + head + 5, src + len - tail, tail);
    msg[head + 5 + tail] = '\0';
}

static void
err_vformat(acme_err_t *err, const char *fmt, va_list ap)
{
    char  buf[4 * ACME_ERR_MSG_MAX];

    vsnprintf(buf, sizeof(buf), fmt, ap);
    err_fit(err->msg, sizeof(err->msg), buf);
}

void
acme_err_set(acme_err_t *err, acme_err_kind_t kind, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL) {
        return;
    }
    err->kind = kind;
    err->retry_after = 0;
    err->http_status = 0;
    va_start(ap, fmt);
    err_vformat(err, fmt, ap);
    va_end(ap);
}

void
acme_err_ssl(acme_err_t *err, const char *fmt, ...)
{
    va_list        ap;
    size_t         n;
    unsigned long  e;
    char           buf[256];

    if (err == NULL) {
        ERR_clear_error();
        return;
    }
    err->kind = ACME_ERR_INTERNAL;
    err->retry_after = 0;
    err->http_status = 0;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);

    while ((e = ERR_get_error()) != 0) {
        n = strlen(err->msg);
        if (n + 3 >= sizeof(err->msg)) {
            continue;
        }
        ERR_error_string_n(e, buf, sizeof(buf));
        snprintf(err->msg + n, sizeof(err->msg) - n, " (%s)", buf);
    }
}

void
acme_err_prefix(acme_err_t *err, const char *fmt, ...)
{
    va_list  ap;
    char     buf[2 * ACME_ERR_MSG_MAX];
    size_t   n;

    if (err == NULL) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(buf, ACME_ERR_MSG_MAX, fmt, ap);
    va_end(ap);
    n = strlen(buf);
    snprintf(buf + n, sizeof(buf) - n, ": %s", err->msg);
    err_fit(err->msg, sizeof(err->msg), buf);
}

void
acme_err_clear(acme_err_t *err)
{
    if (err != NULL) {
        err->kind = ACME_ERR_NONE;
        err->retry_after = 0;
        err->http_status = 0;
        err->msg[0] = '\0';
    }
}

const char *
acme_err_kind_name(acme_err_kind_t kind)
{
    switch (kind) {
    case ACME_ERR_NONE:        return "none";
    case ACME_ERR_INTERNAL:    return "internal";
    case ACME_ERR_NETWORK:     return "network";
    case ACME_ERR_CA:          return "ca";
    case ACME_ERR_RATELIMIT:   return "ratelimit";
    case ACME_ERR_BADRESPONSE: return "badresponse";
    case ACME_ERR_CONFIG:      return "config";
    case ACME_ERR_STORE:       return "store";
    case ACME_ERR_INPUT:       return "input";
    case ACME_ERR_BUSY:        return "busy";
    }
    return "unknown";
}

int
acme_buf_append(acme_buf_t *b, const void *p, size_t n)
{
    size_t  cap;
    char   *d;

    if (b->len + n + 1 > b->cap) {
        cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) {
            if (cap > ((size_t) -1) / 2) {
                return -1;
            }
            cap *= 2;
        }
        d = realloc(b->data, cap);
        if (d == NULL) {
            return -1;
        }
        b->data = d;
        b->cap = cap;
    }
    if (n) {
        memcpy(b->data + b->len, p, n);
    }
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int
acme_buf_printf(acme_buf_t *b, const char *fmt, ...)
{
    va_list  ap;
    int      n;
    char    *s;

    va_start(ap, fmt);
    n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return -1;
    }
    n = acme_buf_append(b, s, (size_t) n);
    free(s);
    return n;
}

void
acme_buf_free(acme_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

char *
acme_buf_steal(acme_buf_t *b)
{
    char *d = b->data;

    if (d == NULL) {
        d = calloc(1, 1);
    }
    b->data = NULL;
    b->len = b->cap = 0;
    return d;
}

const char *
acme_quote(const char *s, char *buf, size_t size, size_t max)
{
    size_t  i;

    for (i = 0; s[i] != '\0' && i + 4 < size && i < max; i++) {
        buf[i] = ((unsigned char) s[i] < 0x20 || (unsigned char) s[i] >= 0x7f) ? '?' : s[i];
    }
    if (s[i] != '\0' && i + 4 <= size) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

void
acme_free_secret(void *p, size_t n)
{
    if (p != NULL) {
        OPENSSL_cleanse(p, n);
        free(p);
    }
}

char *
acme_strdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

int
acme_hexval(int c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

char *
acme_strndup(const char *s, size_t n)
{
    return s ? strndup(s, n) : NULL;
}

char *
acme_sprintf(const char *fmt, ...)
{
    va_list  ap;
    char    *s;
    int      n;

    va_start(ap, fmt);
    n = vasprintf(&s, fmt, ap);
    va_end(ap);
    return n < 0 ? NULL : s;
}
