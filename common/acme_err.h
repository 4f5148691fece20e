/* Errors and growable buffers shared by every part of the ACME core. */
#ifndef ACME_ERR_H
#define ACME_ERR_H

#include <stddef.h>
#include <stdarg.h>

/* What kind of failure: drives the scheduler's back-off. */
typedef enum {
    ACME_ERR_NONE = 0,
    ACME_ERR_INTERNAL,      /* out of memory, OpenSSL failure, bug */
    ACME_ERR_NETWORK,       /* could not reach the CA: retry in seconds */
    ACME_ERR_CA,            /* the CA refused (problem document): back off */
    ACME_ERR_RATELIMIT,     /* rateLimited / 429: honour retry_after */
    ACME_ERR_BADRESPONSE,   /* the CA answered something we refuse */
    ACME_ERR_CONFIG,        /* bad configuration value */
    ACME_ERR_STORE,         /* the state directory failed us */
    ACME_ERR_INPUT,         /* bad input from a caller or a client */
    ACME_ERR_BUSY           /* another process holds the certificate's lock */
} acme_err_kind_t;

#define ACME_ERR_MSG_MAX 1536    /* with its log line prefix, within nginx's 2048-byte log lines */

typedef struct {
    acme_err_kind_t kind;
    long            retry_after;    /* seconds the CA asked us to wait, 0: none */
    int             http_status;    /* the CA's HTTP status when it answered with an error, else 0 */
    char            msg[ACME_ERR_MSG_MAX];
} acme_err_t;

/* Every function that can fail returns -1 (or NULL) and fills *err when err is not NULL. */
void acme_err_set(acme_err_t *err, acme_err_kind_t kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Like acme_err_set, appending the queued OpenSSL error strings (and clearing the queue). */
void acme_err_ssl(acme_err_t *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prefix an existing message: "what: <old message>". */
void acme_err_prefix(acme_err_t *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void acme_err_clear(acme_err_t *err);
const char *acme_err_kind_name(acme_err_kind_t kind);

/* A growable byte buffer, always NUL-terminated when data != NULL. */
typedef struct {
    char   *data;
    size_t  len;
    size_t  cap;
} acme_buf_t;

int  acme_buf_append(acme_buf_t *b, const void *p, size_t n);
int  acme_buf_printf(acme_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void acme_buf_free(acme_buf_t *b);
/* Hands the data to the caller (free() it); the buffer is empty afterwards. */
char *acme_buf_steal(acme_buf_t *b);

/* A printable excerpt of untrusted text for messages: at most max bytes (and what fits in buf with
 * "..."), control and non-ASCII bytes as '?'. Returns buf. */
const char *acme_quote(const char *s, char *buf, size_t size, size_t max);

/* free() for secrets: wipes before freeing. */
void acme_free_secret(void *p, size_t n);

/* The value of a hexadecimal digit, -1 for another character. */
int   acme_hexval(int c);

char *acme_strdup(const char *s);
char *acme_strndup(const char *s, size_t n);
char *acme_sprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
