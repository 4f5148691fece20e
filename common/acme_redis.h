/*
 * The Redis transport (internal to the Redis store's files): the redis:// and rediss:// URL, the socket,
 * TLS and the timeouts around hiredis, which only formats commands and parses replies.
 */
#ifndef ACME_REDIS_H
#define ACME_REDIS_H

#include <stddef.h>
#include <sys/types.h>
#include <openssl/ssl.h>
#include <hiredis/hiredis.h>
#include "acme_err.h"

/* One connection: a command connection, or a subscription of a watch. */
typedef struct {
    int           fd;
    SSL          *ssl;
    redisReader  *reader;
    pid_t         pid;
    long long     failed_at;      /* monotonic ms of the last slow failure, 0: none */
    acme_err_t    failed;         /* and its message */
} acme_redis_conn_t;

/* What the URL says, and the command connection. */
typedef struct {
    int                 tls;
    char               *host;
    char               *port;
    char               *user;
    char               *password;
    size_t              password_len;
    int                 db;
    char               *prefix;
    char               *tls_ca;
    char               *tls_cert;
    char               *tls_key;
    char               *tls_servername;
    long                connect_ms;
    long                command_ms;
    long                lease_ms;
    char               *display;        /* the URL without the password, for messages */
    SSL_CTX            *ssl_ctx;
    acme_redis_conn_t   c;
} acme_redis_t;

/* The defaults, an unconnected c. */
void acme_redis_init(acme_redis_t *rd);
/* Closes c and frees (wiping the password) what the URL filled in; not rd itself. */
void acme_redis_free(acme_redis_t *rd);

int   acme_redis_url_is(const char *s);
/* Fills rd from url. err's message does not include the URL (the caller adds it). */
int   acme_redis_parse_url(acme_redis_t *rd, const char *url, acme_err_t *err);
/* The URL without the password (malloc'd). */
char *acme_redis_display_make(const acme_redis_t *rd);
int   acme_redis_tls_init(acme_redis_t *rd, acme_err_t *err);
/* "<prefix><kind><key>" (malloc'd); kind and key may be NULL. */
char *acme_redis_key(acme_redis_t *rd, const char *kind, const char *key);

void  acme_redis_conn_init(acme_redis_conn_t *c);
void  acme_redis_conn_close(acme_redis_conn_t *c);
/* Makes sure c is connected. *fresh: it is a new connection. */
int   acme_redis_ensure(acme_redis_t *rd, acme_redis_conn_t *c, int *fresh, acme_err_t *err);
/* Reads what is there: 1 data fed to the reader, 0 would block (*want: POLLIN/POLLOUT), -1 closed/error. */
int   acme_redis_conn_read(acme_redis_conn_t *c, short *want, acme_err_t *err);
/* Sends len bytes holding ncmd commands, reads their ncmd replies into rep[]. */
int   acme_redis_conn_command(acme_redis_conn_t *c, long command_ms, const char *cmd, size_t len, int ncmd,
          redisReply **rep, acme_err_t *err);

/* Appends one command in the Redis protocol to b. */
int   acme_redis_cmd_argv(acme_buf_t *b, int argc, const char **argv, const size_t *lens);
int   acme_redis_cmd_str(acme_buf_t *b, int argc, ...);
void  acme_redis_cmd_free(acme_buf_t *b);

/* Names the store, op and key in err (and makes it a store error). */
void  acme_redis_err_context(acme_redis_t *rd, acme_err_t *err, const char *op, const char *key);
/*
 * Sends the ncmd commands in cmd on rd->c and reads their replies. retry: the commands may run twice (an
 * operation that fails on a connection that had been idle runs again on a new one). Errors name op and key.
 */
int   acme_redis_run(acme_redis_t *rd, const acme_buf_t *cmd, int ncmd, redisReply **rep, int retry,
          const char *op, const char *key, acme_err_t *err);
/* One command; *out gets the reply (an error reply fails, with its text). */
int   acme_redis_simple(acme_redis_t *rd, redisReply **out, int retry, const char *op, const char *key,
          acme_err_t *err, int argc, const char **argv, const size_t *lens);
/* acme_redis_simple with NUL-terminated arguments (at most 4). */
int   acme_redis_simple_str(acme_redis_t *rd, redisReply **out, int retry, const char *op, acme_err_t *err,
          int argc, ...);

long long    acme_redis_now(void);
void         acme_redis_oom(acme_err_t *err);
/* Frees r; wipe: scrub its strings first (values may be secrets). */
void         acme_redis_reply_free(redisReply *r, int wipe);
/* Message-safe copy of a Redis error reply (no control characters, bounded). */
const char  *acme_redis_errstr(const redisReply *r, char *buf, size_t size);

#endif
