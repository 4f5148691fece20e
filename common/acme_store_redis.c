/*
 * The Redis store backend, the store opener, change notification and migration between stores.
 *
 * Redis layout under the prefix P (default "acme:"; store keys never contain ':', so the names below cannot
 * collide with them):
 *   P<store key>            the value (a string), e.g. "acme:certs/example.org/fullchain.pem". With a storage
 *                           key, secret values are sealed with AES-256-GCM and the others carry a MAC
 *                           line first ("acme-mac-v1:KID:TAG\n", acme_aead.h), both bound to the store key;
 *                           a value that does not authenticate is refused, whoever wrote it
 *   P"dir:"<dir>            SET of the names directly below <dir> ("acme:dir:" for the top level,
 *                           "acme:dir:certs" for the certificate names): list() is one SMEMBERS
 *   P"info:secrets"         SET of the store keys written as secret (kept 0600 by the filesystem backend)
 *   P"info:generation"      counter, INCR'd by every commit that changes certs/<name>/fullchain.pem or
 *                           privkey.pem
 *   P"lock:"<name>          a lock: "<host>:<pid>:<random>", SET NX PX <lease>
 *   P"acks:"<type>/<key>    how many nodes took the last announcement of a challenge (expires)
 * and the pub/sub channel P"events" carries the certificate name of each such change, P"challenges" the
 * challenge announcements ("a TYPE KEY IDTYPE ID KEYAUTHZ" / "d TYPE KEY", then " MAC" with a storage key).
 *
 * Every change is one MULTI/EXEC: the values, their index entries, the secret set, the generation and the
 * announcements become visible together. Directories left empty by deletes are pruned afterwards by a Lua
 * script (atomic, so a concurrent put is never lost from the index).
 *
 * Transport: hiredis (0.14 in Debian 12) formats commands and parses replies; the socket, TLS (OpenSSL) and
 * the timeouts are ours: connect 2 s, each command 5 s. A failed connection is dropped and the next
 * operation connects again (after a connect failure, operations fail at once for 1 s). An idempotent
 * operation that fails on a connection that had been idle is retried once on a new connection.
 * The password and key material never appear in messages.
 */
#include "acme_store.h"
#include "acme_aead.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <hiredis/hiredis.h>
#include <hiredis/sds.h>

#define RD_DEFAULT_PREFIX    "acme:"
#define RD_DEFAULT_PORT      "6379"
#define RD_CONNECT_MS        2000
#define RD_COMMAND_MS        5000
#define RD_LEASE_MS          30000
#define RD_FAILFAST_MS       1000
#define RD_VALUE_MAX         (1024 * 1024)
#define RD_RAW_MAX           (2 * RD_VALUE_MAX)     /* a sealed value is base64: 4/3 and a header */
#define RD_COMMIT_MAX        1000
#define RD_PREFIX_MAX        100
#define RD_SECRET_FILE_MAX   4096
#define RD_WALK_DEPTH        8
#define RD_FORGED_SEEN       64     /* forged records remembered, so each is reported once */

#define RD_SCRIPT_REFRESH \
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
#define RD_SCRIPT_UNLOCK \
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
/* KEYS: dir set, value key of node 1, dir set, value key of node 2, ..., the last parent's dir set;
 * ARGV: the name of node i in its parent. Removes the entries of nodes that became empty, bottom up. */
#define RD_SCRIPT_PRUNE \
    "for i = 1, #ARGV do " \
    "  if redis.call('SCARD', KEYS[2*i-1]) > 0 or redis.call('EXISTS', KEYS[2*i]) == 1 then return i - 1 end " \
    "  redis.call('SREM', KEYS[2*i+1], ARGV[i]) " \
    "end return #ARGV"

typedef struct {
    int           fd;
    SSL          *ssl;
    redisReader  *reader;
    pid_t         pid;
    long long     failed_at;      /* monotonic ms of the last connect failure, 0: none */
    acme_err_t    failed;         /* and its message */
} rconn_t;

typedef struct rd_s {
    pthread_mutex_t   mu;
    int               refs;

    /* configuration */
    int               tls;
    char             *host;
    char             *port;
    char             *user;
    char             *password;
    size_t            password_len;
    int               db;
    char             *prefix;
    char             *tls_ca;
    char             *tls_cert;
    char             *tls_key;
    char             *tls_servername;
    long              connect_ms;
    long              command_ms;
    long              lease_ms;
    char             *display;        /* the URL without the password, for messages */
    SSL_CTX          *ssl_ctx;
    acme_aead_key_t  *key;
    int               unauthenticated_ok;    /* upgrade: accept values without a MAC or seal */
    acme_store_forged_fn  forged_fn;
    void             *forged_arg;
    unsigned char     forged_seen[RD_FORGED_SEEN][16];
    unsigned          forged_n;

    rconn_t           c;
    acme_lock_t      *locks;          /* held, for the refresh piggybacked on other operations */
} rd_t;

struct acme_lock_s {
    rd_t         *rd;
    char         *rkey;           /* P"lock:"<name> */
    char          token[160];
    long long     refreshed;      /* monotonic ms of the last successful SET or refresh */
    int           lost;
    acme_lock_t  *next;
};

struct acme_store_watch_s {
    rd_t     *rd;
    rconn_t   c;
    int       messages;     /* also return challenge announcements */
    char     *chal_chan;    /* P"challenges" */
};

static const acme_store_ops_t rd_ops;

/* ---- small helpers ---- */

static long long
rd_now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
rd_oom(acme_err_t *err)
{
    acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
}

/* Free a string that may hold a secret. */
static void
rd_free_str(char *s)
{
    if (s != NULL) {
        acme_free_secret(s, strlen(s));
    }
}

static void
rd_reply_free(redisReply *r, int wipe)
{
    size_t  i;

    if (r == NULL) {
        return;
    }
    if (wipe) {
        if (r->str != NULL) {
            OPENSSL_cleanse(r->str, r->len);
        }
        for (i = 0; i < r->elements; i++) {
            if (r->element[i] != NULL && r->element[i]->str != NULL) {
                OPENSSL_cleanse(r->element[i]->str, r->element[i]->len);
            }
        }
    }
    freeReplyObject(r);
}

/* Scrub what the reader has consumed (values may be secrets). */
static void
rd_reader_wipe(redisReader *r)
{
    if (r != NULL && r->buf != NULL && r->pos == r->len) {
        memset(r->buf, 0, sdsalloc(r->buf));
        sdsclear(r->buf);
        r->pos = 0;
        r->len = 0;
    }
}

/* Message-safe copy of a Redis error reply (no control characters, bounded). */
static const char *
rd_errstr(const redisReply *r, char *buf, size_t size)
{
    size_t  i;

    if (r == NULL || r->str == NULL) {
        snprintf(buf, size, "unexpected reply");
        return buf;
    }
    for (i = 0; i < r->len && i + 1 < size && i < 200; i++) {
        buf[i] = ((unsigned char) r->str[i] < 0x20 || (unsigned char) r->str[i] >= 0x7f) ? '?' : r->str[i];
    }
    buf[i] = '\0';
    return buf;
}

/* ---- blocking SIGPIPE around OpenSSL writes ---- */

typedef struct {
    sigset_t  old;
    int       was_pending;
} rd_nosig_t;

static void
rd_nosig_enter(rd_nosig_t *s)
{
    sigset_t  set, pend;

    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    sigemptyset(&pend);
    sigpending(&pend);
    s->was_pending = sigismember(&pend, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, &s->old);
}

static void
rd_nosig_leave(rd_nosig_t *s)
{
    sigset_t         set, pend;
    struct timespec  ts = { 0, 0 };

    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    if (!s->was_pending) {
        sigemptyset(&pend);
        sigpending(&pend);
        if (sigismember(&pend, SIGPIPE)) {
            while (sigtimedwait(&set, NULL, &ts) < 0 && errno == EINTR) {
                /* consume the SIGPIPE our write raised */
            }
        }
    }
    pthread_sigmask(SIG_SETMASK, &s->old, NULL);
}

/* ---- URL parsing ---- */

static int
rd_hex(int c)
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

/* Percent-decodes n bytes of s (malloc'd, NUL-terminated); NULL on a bad escape or a NUL byte. */
static char *
rd_unescape(const char *s, size_t n, size_t *outlen)
{
    char    *o = malloc(n + 1);
    size_t   i, j = 0;
    int      hi, lo;

    if (o == NULL) {
        return NULL;
    }
    for (i = 0; i < n; i++) {
        if (s[i] == '%') {
            if (i + 2 >= n) {
                acme_free_secret(o, n + 1);
                return NULL;
            }
            hi = rd_hex(s[i + 1]);
            lo = rd_hex(s[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                acme_free_secret(o, n + 1);
                return NULL;
            }
            o[j++] = (char) (hi << 4 | lo);
            i += 2;
        } else {
            o[j++] = s[i];
        }
    }
    o[j] = '\0';
    if (outlen != NULL) {
        *outlen = j;
    }
    return o;
}

/* "30", "30s", "500ms" -> milliseconds; -1 when bad. */
static long
rd_parse_ms(const char *v, int default_seconds)
{
    char  *end;
    long   n;

    errno = 0;
    n = strtol(v, &end, 10);
    if (errno != 0 || end == v || n < 0 || n > 86400000L) {
        return -1;
    }
    if (strcmp(end, "ms") == 0) {
        return n;
    }
    if (strcmp(end, "s") == 0 || (*end == '\0' && default_seconds)) {
        return n > 86400 ? -1 : n * 1000;
    }
    if (*end == '\0') {
        return n;
    }
    return -1;
}

static int
rd_read_secret_file(const char *path, char **out, size_t *outlen, acme_err_t *err)
{
    char     buf[RD_SECRET_FILE_MAX + 1];
    size_t   have = 0;
    ssize_t  n;
    int      fd;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "password file %s: %s", path, strerror(errno));
        return -1;
    }
    for ( ;; ) {
        n = read(fd, buf + have, sizeof(buf) - have);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            acme_err_set(err, ACME_ERR_CONFIG, "password file %s: %s", path, strerror(errno));
            close(fd);
            OPENSSL_cleanse(buf, sizeof(buf));
            return -1;
        }
        have += (size_t) n;
        if (n == 0 || have == sizeof(buf)) {
            break;
        }
    }
    close(fd);
    if (have > RD_SECRET_FILE_MAX) {
        acme_err_set(err, ACME_ERR_CONFIG, "password file %s: larger than %d bytes", path, RD_SECRET_FILE_MAX);
        OPENSSL_cleanse(buf, sizeof(buf));
        return -1;
    }
    while (have > 0 && (buf[have - 1] == '\n' || buf[have - 1] == '\r')) {
        have--;
    }
    if (have == 0 || memchr(buf, '\0', have) != NULL || memchr(buf, '\n', have) != NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "password file %s: %s", path,
                     have == 0 ? "empty" : "the password must be one line");
        OPENSSL_cleanse(buf, sizeof(buf));
        return -1;
    }
    *out = acme_strndup(buf, have);
    OPENSSL_cleanse(buf, sizeof(buf));
    if (*out == NULL) {
        rd_oom(err);
        return -1;
    }
    *outlen = have;
    return 0;
}

static int
rd_is_redis_url(const char *s)
{
    return strncmp(s, "redis://", 8) == 0 || strncmp(s, "rediss://", 9) == 0;
}

char *
acme_store_url_redact(const char *s)
{
    const char  *p, *end, *at, *colon;
    acme_buf_t   b = { NULL, 0, 0 };

    if (s == NULL) {
        return NULL;
    }
    p = strstr(s, "://");
    if (p == NULL) {
        return acme_strdup(s);
    }
    p += 3;
    end = p + strcspn(p, "/?#");
    at = memrchr(p, '@', (size_t) (end - p));
    if (at == NULL) {
        return acme_strdup(s);
    }
    colon = memchr(p, ':', (size_t) (at - p));
    if (colon == NULL) {
        return acme_strdup(s);      /* a user name alone */
    }
    if (acme_buf_append(&b, s, (size_t) (colon - s)) != 0 || acme_buf_append(&b, ":***", 4) != 0
        || acme_buf_append(&b, at, strlen(at)) != 0)
    {
        acme_buf_free(&b);
        return NULL;
    }
    return acme_buf_steal(&b);
}

static int
rd_set_opt(char **slot, const char *v, const char *name, acme_err_t *err)
{
    if (*slot != NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "\"%s\" given twice", name);
        return -1;
    }
    *slot = acme_strdup(v);
    if (*slot == NULL) {
        rd_oom(err);
        return -1;
    }
    return 0;
}

static int
rd_parse_query(rd_t *rd, const char *q, char **password_file, acme_err_t *err)
{
    const char  *s = q, *e, *eq;
    char        *name = NULL, *val = NULL;
    long         ms;
    int          rc = -1;

    while (*s != '\0') {
        e = s + strcspn(s, "&");
        eq = memchr(s, '=', (size_t) (e - s));
        if (eq == NULL || eq == s) {
            acme_err_set(err, ACME_ERR_CONFIG, "bad query parameter \"%.*s\" (NAME=VALUE expected)",
                         (int) (e - s > 60 ? 60 : e - s), s);
            return -1;
        }
        name = acme_strndup(s, (size_t) (eq - s));
        val = rd_unescape(eq + 1, (size_t) (e - eq - 1), NULL);
        if (name == NULL || val == NULL) {
            acme_err_set(err, ACME_ERR_CONFIG, "bad value for \"%.*s\"", (int) (eq - s > 60 ? 60 : eq - s), s);
            goto done;
        }
        if (strcmp(name, "prefix") == 0) {
            if (rd_set_opt(&rd->prefix, val, name, err) != 0) {
                goto done;
            }
        } else if (strcmp(name, "password_file") == 0) {
            if (rd_set_opt(password_file, val, name, err) != 0) {
                goto done;
            }
        } else if (strcmp(name, "tls_ca") == 0 || strcmp(name, "ca") == 0) {
            if (rd_set_opt(&rd->tls_ca, val, name, err) != 0) {
                goto done;
            }
        } else if (strcmp(name, "tls_cert") == 0) {
            if (rd_set_opt(&rd->tls_cert, val, name, err) != 0) {
                goto done;
            }
        } else if (strcmp(name, "tls_key") == 0) {
            if (rd_set_opt(&rd->tls_key, val, name, err) != 0) {
                goto done;
            }
        } else if (strcmp(name, "tls_servername") == 0) {
            if (rd_set_opt(&rd->tls_servername, val, name, err) != 0) {
                goto done;
            }
        } else if (strcmp(name, "connect_timeout") == 0 || strcmp(name, "timeout") == 0
                   || strcmp(name, "lock_lease") == 0)
        {
            ms = rd_parse_ms(val, strcmp(name, "lock_lease") == 0);
            if (ms <= 0) {
                acme_err_set(err, ACME_ERR_CONFIG, "bad %s \"%s\" (milliseconds, or seconds with \"s\")", name,
                             val);
                goto done;
            }
            if (strcmp(name, "connect_timeout") == 0) {
                rd->connect_ms = ms;
            } else if (strcmp(name, "timeout") == 0) {
                rd->command_ms = ms;
            } else {
                if (ms < 100) {
                    acme_err_set(err, ACME_ERR_CONFIG, "lock_lease %s is too short (at least 100ms)", val);
                    goto done;
                }
                rd->lease_ms = ms;
            }
        } else {
            acme_err_set(err, ACME_ERR_CONFIG, "unknown parameter \"%s\" (known: prefix, password_file, tls_ca, "
                         "tls_cert, tls_key, tls_servername, connect_timeout, timeout, lock_lease)", name);
            goto done;
        }
        free(name);
        rd_free_str(val);
        name = val = NULL;
        s = *e ? e + 1 : e;
    }
    rc = 0;
done:
    free(name);
    rd_free_str(val);
    return rc;
}

/* Fills rd's configuration from url. err's message does not include the URL (the caller adds it). */
static int
rd_parse_url(rd_t *rd, const char *url, acme_err_t *err)
{
    const char  *p, *auth_end, *hp_end, *at, *colon, *host_s, *host_e, *port_s = NULL, *q = NULL;
    char        *password_file = NULL, *end;
    long         db;
    size_t       i;
    int          rc = -1;

    if (strncmp(url, "rediss://", 9) == 0) {
        rd->tls = 1;
        p = url + 9;
    } else {
        p = url + 8;
    }
    auth_end = p + strcspn(p, "/?#");
    if (*auth_end == '#') {
        acme_err_set(err, ACME_ERR_CONFIG, "a fragment ('#') is not allowed");
        return -1;
    }
    at = memrchr(p, '@', (size_t) (auth_end - p));
    if (at != NULL) {
        colon = memchr(p, ':', (size_t) (at - p));
        if (colon == NULL) {
            rd->user = rd_unescape(p, (size_t) (at - p), NULL);
        } else {
            if (colon > p) {
                rd->user = rd_unescape(p, (size_t) (colon - p), NULL);
                if (rd->user == NULL) {
                    acme_err_set(err, ACME_ERR_CONFIG, "bad user name (percent-encoding)");
                    return -1;
                }
            }
            rd->password = rd_unescape(colon + 1, (size_t) (at - colon - 1), &rd->password_len);
            if (rd->password == NULL) {
                acme_err_set(err, ACME_ERR_CONFIG, "bad password (percent-encoding)");
                return -1;
            }
            if (rd->password_len == 0) {
                rd_free_str(rd->password);
                rd->password = NULL;
            }
        }
        if (colon == NULL && rd->user == NULL) {
            acme_err_set(err, ACME_ERR_CONFIG, "bad user name (percent-encoding)");
            return -1;
        }
        if (rd->user != NULL && rd->user[0] == '\0') {
            free(rd->user);
            rd->user = NULL;
        }
        p = at + 1;
    }
    hp_end = auth_end;
    /* host[:port] or [v6][:port] */
    if (*p == '[') {
        host_s = p + 1;
        host_e = memchr(host_s, ']', (size_t) (hp_end - host_s));
        if (host_e == NULL) {
            acme_err_set(err, ACME_ERR_CONFIG, "unterminated '[' in the host");
            return -1;
        }
        if (host_e + 1 < hp_end) {
            if (host_e[1] != ':') {
                acme_err_set(err, ACME_ERR_CONFIG, "bad host");
                return -1;
            }
            port_s = host_e + 2;
        }
    } else {
        host_s = p;
        host_e = memchr(p, ':', (size_t) (hp_end - p));
        if (host_e != NULL) {
            port_s = host_e + 1;
        } else {
            host_e = hp_end;
        }
    }
    if (host_e == host_s) {
        acme_err_set(err, ACME_ERR_CONFIG, "no host");
        return -1;
    }
    for (i = 0; host_s + i < host_e; i++) {
        char c = host_s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-'
              || c == ':' || c == '_' || c == '%'))
        {
            acme_err_set(err, ACME_ERR_CONFIG, "bad character in the host");
            return -1;
        }
    }
    rd->host = acme_strndup(host_s, (size_t) (host_e - host_s));
    if (port_s != NULL) {
        if (port_s == hp_end || (size_t) (hp_end - port_s) > 5) {
            acme_err_set(err, ACME_ERR_CONFIG, "bad port");
            return -1;
        }
        for (i = 0; port_s + i < hp_end; i++) {
            if (port_s[i] < '0' || port_s[i] > '9') {
                acme_err_set(err, ACME_ERR_CONFIG, "bad port");
                return -1;
            }
        }
        rd->port = acme_strndup(port_s, (size_t) (hp_end - port_s));
        if (rd->port != NULL && (atoi(rd->port) <= 0 || atoi(rd->port) > 65535)) {
            acme_err_set(err, ACME_ERR_CONFIG, "bad port");
            return -1;
        }
    } else {
        rd->port = acme_strdup(RD_DEFAULT_PORT);
    }
    if (rd->host == NULL || rd->port == NULL) {
        rd_oom(err);
        return -1;
    }
    p = hp_end;
    if (*p == '/') {
        p++;
        q = p + strcspn(p, "?");
        if (q > p) {
            errno = 0;
            db = strtol(p, &end, 10);
            if (end != q || errno != 0 || db < 0 || db > 100000 || *p == '-' || *p == '+') {
                acme_err_set(err, ACME_ERR_CONFIG, "bad database number \"%.*s\"", (int) (q - p > 20 ? 20 : q - p),
                             p);
                return -1;
            }
            rd->db = (int) db;
        }
        p = q;
    }
    if (*p == '?') {
        if (rd_parse_query(rd, p + 1, &password_file, err) != 0) {
            goto done;
        }
    }
    if (password_file != NULL) {
        if (rd->password != NULL) {
            acme_err_set(err, ACME_ERR_CONFIG, "a password in the URL and a password_file: give one");
            goto done;
        }
        if (rd_read_secret_file(password_file, &rd->password, &rd->password_len, err) != 0) {
            goto done;
        }
    }
    if (rd->user != NULL && rd->password == NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "user \"%s\" without a password (add :PASSWORD@ or password_file=)",
                     rd->user);
        goto done;
    }
    if (!rd->tls && (rd->tls_ca || rd->tls_cert || rd->tls_key || rd->tls_servername)) {
        acme_err_set(err, ACME_ERR_CONFIG, "tls_* parameters need a rediss:// URL");
        goto done;
    }
    if ((rd->tls_cert == NULL) != (rd->tls_key == NULL)) {
        acme_err_set(err, ACME_ERR_CONFIG, "tls_cert and tls_key go together");
        goto done;
    }
    /* the prefix: printable, no spaces; ':' appended when missing */
    if (rd->prefix == NULL) {
        rd->prefix = acme_strdup(RD_DEFAULT_PREFIX);
    } else {
        size_t n = strlen(rd->prefix);

        if (n == 0 || n > RD_PREFIX_MAX) {
            acme_err_set(err, ACME_ERR_CONFIG, "prefix must be 1..%d bytes", RD_PREFIX_MAX);
            goto done;
        }
        for (i = 0; i < n; i++) {
            if ((unsigned char) rd->prefix[i] <= 0x20 || (unsigned char) rd->prefix[i] >= 0x7f) {
                acme_err_set(err, ACME_ERR_CONFIG, "prefix must be printable ASCII without spaces");
                goto done;
            }
        }
        if (rd->prefix[n - 1] != ':') {
            char *np = acme_sprintf("%s:", rd->prefix);
            free(rd->prefix);
            rd->prefix = np;
        }
    }
    if (rd->prefix == NULL) {
        rd_oom(err);
        goto done;
    }
    rc = 0;
done:
    free(password_file);
    return rc;
}

static char *
rd_make_display(const rd_t *rd)
{
    int   v6 = strchr(rd->host, ':') != NULL;
    char  dbs[24] = "";

    if (rd->db != 0) {
        snprintf(dbs, sizeof(dbs), "/%d", rd->db);
    }
    return acme_sprintf("%s://%s%s%s%s%s:%s%s%s%s", rd->tls ? "rediss" : "redis",
                        rd->user ? rd->user : "", rd->user ? "@" : "",
                        v6 ? "[" : "", rd->host, v6 ? "]" : "", rd->port, dbs,
                        strcmp(rd->prefix, RD_DEFAULT_PREFIX) != 0 ? "?prefix=" : "",
                        strcmp(rd->prefix, RD_DEFAULT_PREFIX) != 0 ? rd->prefix : "");
}

/* ---- TLS context ---- */

static int
rd_tls_init(rd_t *rd, acme_err_t *err)
{
    SSL_CTX  *ctx;

    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        acme_err_ssl(err, "cannot create a TLS context");
        return -1;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (rd->tls_ca != NULL) {
        if (SSL_CTX_load_verify_locations(ctx, rd->tls_ca, NULL) != 1) {
            acme_err_ssl(err, "tls_ca %s: cannot load", rd->tls_ca);
            if (err != NULL) {
                err->kind = ACME_ERR_CONFIG;
            }
            SSL_CTX_free(ctx);
            return -1;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        acme_err_ssl(err, "cannot load the system trust store");
        SSL_CTX_free(ctx);
        return -1;
    }
    if (rd->tls_cert != NULL) {
        if (SSL_CTX_use_certificate_chain_file(ctx, rd->tls_cert) != 1) {
            acme_err_ssl(err, "tls_cert %s: cannot load", rd->tls_cert);
            if (err != NULL) {
                err->kind = ACME_ERR_CONFIG;
            }
            SSL_CTX_free(ctx);
            return -1;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, rd->tls_key, SSL_FILETYPE_PEM) != 1
            || SSL_CTX_check_private_key(ctx) != 1)
        {
            acme_err_ssl(err, "tls_key %s: cannot load, or it does not match tls_cert", rd->tls_key);
            if (err != NULL) {
                err->kind = ACME_ERR_CONFIG;
            }
            SSL_CTX_free(ctx);
            return -1;
        }
    }
    rd->ssl_ctx = ctx;
    return 0;
}

/* ---- the connection ---- */

static void
rc_init(rconn_t *c)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

static void
rc_close(rconn_t *c)
{
    if (c->ssl != NULL) {
        if (c->pid == getpid()) {
            rd_nosig_t s;

            rd_nosig_enter(&s);
            SSL_shutdown(c->ssl);   /* best effort close_notify; the socket is non-blocking */
            rd_nosig_leave(&s);
        }
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    if (c->reader != NULL) {
        rd_reader_wipe(c->reader);
        redisReaderFree(c->reader);
        c->reader = NULL;
    }
    ERR_clear_error();
}

/* Waits for ev on the connection until deadline. 0 ready, -1 timeout or poll failure (err set). */
static int
rc_wait(rconn_t *c, short ev, long long deadline, const char *what, acme_err_t *err)
{
    struct pollfd  pfd;
    long long      left;
    int            n;

    for ( ;; ) {
        left = deadline - rd_now();
        if (left <= 0) {
            acme_err_set(err, ACME_ERR_STORE, "timed out %s", what);
            return -1;
        }
        pfd.fd = c->fd;
        pfd.events = ev;
        pfd.revents = 0;
        n = poll(&pfd, 1, (int) (left > INT_MAX ? INT_MAX : left));
        if (n > 0) {
            return 0;
        }
        if (n < 0 && errno != EINTR) {
            acme_err_set(err, ACME_ERR_STORE, "poll: %s", strerror(errno));
            return -1;
        }
    }
}

static int
rc_tls_fail(rconn_t *c, int rc, const char *what, acme_err_t *err)
{
    unsigned long  e = ERR_peek_error();
    long           vr;
    char           buf[256];
    int            se = SSL_get_error(c->ssl, rc);

    if (se == SSL_ERROR_SSL && c->ssl != NULL && (vr = SSL_get_verify_result(c->ssl)) != X509_V_OK) {
        acme_err_set(err, ACME_ERR_STORE, "%s: certificate verification failed: %s", what,
                     X509_verify_cert_error_string(vr));
    } else if (se == SSL_ERROR_SSL && e != 0) {
        ERR_error_string_n(e, buf, sizeof(buf));
        acme_err_set(err, ACME_ERR_STORE, "%s: %s", what, buf);
    } else if (se == SSL_ERROR_ZERO_RETURN || (se == SSL_ERROR_SYSCALL && errno == 0)) {
        acme_err_set(err, ACME_ERR_STORE, "%s: connection closed by the server", what);
    } else {
        acme_err_set(err, ACME_ERR_STORE, "%s: %s", what, errno ? strerror(errno) : "TLS failure");
    }
    ERR_clear_error();
    return -1;
}

static int
rc_write(rconn_t *c, const char *p, size_t len, long long deadline, acme_err_t *err)
{
    ssize_t     n;
    int         r, se;
    rd_nosig_t  s;

    while (len > 0) {
        if (c->ssl != NULL) {
            rd_nosig_enter(&s);
            errno = 0;
            r = SSL_write(c->ssl, p, (int) (len > INT_MAX ? INT_MAX : len));
            rd_nosig_leave(&s);
            if (r > 0) {
                p += r;
                len -= (size_t) r;
                continue;
            }
            se = SSL_get_error(c->ssl, r);
            if (se == SSL_ERROR_WANT_WRITE || se == SSL_ERROR_WANT_READ) {
                if (rc_wait(c, se == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN, deadline, "sending", err) != 0) {
                    return -1;
                }
                continue;
            }
            return rc_tls_fail(c, r, "sending", err);
        }
        n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t) n;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (rc_wait(c, POLLOUT, deadline, "sending", err) != 0) {
                return -1;
            }
            continue;
        }
        acme_err_set(err, ACME_ERR_STORE, "sending: %s", n < 0 ? strerror(errno) : "nothing written");
        return -1;
    }
    return 0;
}

/* Reads what is there: 1 data fed to the reader, 0 would block (*want: POLLIN/POLLOUT), -1 closed/error. */
static int
rc_read_some(rconn_t *c, short *want, acme_err_t *err)
{
    char        buf[16384];
    ssize_t     n;
    int         r, se;
    rd_nosig_t  s;

    *want = POLLIN;
    if (c->ssl != NULL) {
        rd_nosig_enter(&s);
        errno = 0;
        r = SSL_read(c->ssl, buf, sizeof(buf));
        rd_nosig_leave(&s);
        if (r <= 0) {
            se = SSL_get_error(c->ssl, r);
            if (se == SSL_ERROR_WANT_READ || se == SSL_ERROR_WANT_WRITE) {
                *want = se == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN;
                return 0;
            }
            return rc_tls_fail(c, r, "receiving", err);
        }
        n = r;
    } else {
        n = recv(c->fd, buf, sizeof(buf), 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            return 0;
        }
        if (n < 0) {
            acme_err_set(err, ACME_ERR_STORE, "receiving: %s", strerror(errno));
            return -1;
        }
        if (n == 0) {
            acme_err_set(err, ACME_ERR_STORE, "connection closed by the server");
            return -1;
        }
    }
    r = redisReaderFeed(c->reader, buf, (size_t) n);
    OPENSSL_cleanse(buf, (size_t) n);
    if (r != REDIS_OK) {
        acme_err_set(err, ACME_ERR_STORE, "protocol error: %s", c->reader->errstr);
        return -1;
    }
    return 1;
}

/* Takes the next complete reply, reading until deadline. */
static int
rc_reply(rconn_t *c, redisReply **out, long long deadline, acme_err_t *err)
{
    void   *rep = NULL;
    short   want;
    int     r;

    *out = NULL;
    for ( ;; ) {
        if (redisReaderGetReply(c->reader, &rep) != REDIS_OK) {
            acme_err_set(err, ACME_ERR_STORE, "protocol error: %s", c->reader->errstr);
            return -1;
        }
        if (rep != NULL) {
            *out = rep;
            return 0;
        }
        r = rc_read_some(c, &want, err);
        if (r < 0) {
            return -1;
        }
        if (r == 0 && rc_wait(c, want, deadline, "waiting for the reply", err) != 0) {
            return -1;
        }
    }
}

/* Is an idle connection still usable? (The server sends nothing unasked: readable means closed.) */
static int
rc_alive(rconn_t *c)
{
    struct pollfd  pfd;
    char           b;
    ssize_t        n;
    short          want;
    acme_err_t     e;

    pfd.fd = c->fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    if (poll(&pfd, 1, 0) <= 0) {
        return 1;
    }
    if (pfd.revents & (POLLERR | POLLHUP | POLLNVAL)) {
        return 0;
    }
    if (c->ssl != NULL) {
        /* TLS 1.3 session tickets arrive after the handshake: consume them */
        if (rc_read_some(c, &want, &e) != 0) {
            return 0;
        }
        return c->reader->pos == c->reader->len;
    }
    n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

static int
rc_command_raw(rconn_t *c, long command_ms, const char *cmd, size_t len, int ncmd, redisReply **rep,
    acme_err_t *err)
{
    long long  deadline = rd_now() + command_ms;
    int        i, j;

    if (rc_write(c, cmd, len, deadline, err) != 0) {
        return -1;
    }
    for (i = 0; i < ncmd; i++) {
        if (rc_reply(c, &rep[i], deadline, err) != 0) {
            for (j = 0; j < i; j++) {
                rd_reply_free(rep[j], 1);
                rep[j] = NULL;
            }
            return -1;
        }
    }
    rd_reader_wipe(c->reader);
    return 0;
}

/* Appends one command (binary-safe arguments) to b. */
static int
cmd_argv(acme_buf_t *b, int argc, const char **argv, const size_t *lens)
{
    char  *out = NULL;
    int    n, rc;

    n = redisFormatCommandArgv(&out, argc, argv, lens);
    if (n < 0 || out == NULL) {
        return -1;
    }
    rc = acme_buf_append(b, out, (size_t) n);
    OPENSSL_cleanse(out, (size_t) n);
    redisFreeCommand(out);
    return rc;
}

/* Appends one command of NUL-terminated arguments (argc of them). */
static int
cmd_str(acme_buf_t *b, int argc, ...)
{
    const char  *argv[16];
    size_t       lens[16];
    va_list      ap;
    int          i;

    if (argc > 16) {
        return -1;
    }
    va_start(ap, argc);
    for (i = 0; i < argc; i++) {
        argv[i] = va_arg(ap, const char *);
        if (argv[i] == NULL) {
            va_end(ap);
            return -1;
        }
        lens[i] = strlen(argv[i]);
    }
    va_end(ap);
    return cmd_argv(b, argc, argv, lens);
}

static void
cmd_free(acme_buf_t *b)
{
    if (b->data != NULL) {
        OPENSSL_cleanse(b->data, b->cap);
    }
    acme_buf_free(b);
}

static int
rc_open(rd_t *rd, rconn_t *c, acme_err_t *err)
{
    struct addrinfo   hints, *res = NULL, *ai;
    long long         deadline = rd_now() + rd->connect_ms;
    int               fd = -1, gai, r, se, one = 1, soerr;
    socklen_t         sl;
    char              why[300] = "no address";
    const char       *sni;
    unsigned char     ipbuf[sizeof(struct in6_addr)];
    redisReply       *rep[2] = { NULL, NULL };
    acme_buf_t        b = { NULL, 0, 0 };
    int               ncmd = 0, i;
    rd_nosig_t        s;

    rc_close(c);
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    gai = getaddrinfo(rd->host, rd->port, &hints, &res);
    if (gai != 0) {
        acme_err_set(err, ACME_ERR_STORE, "cannot resolve %s: %s", rd->host, gai_strerror(gai));
        return -1;
    }
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            snprintf(why, sizeof(why), "socket: %s", strerror(errno));
            continue;
        }
        r = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (r != 0 && errno == EINPROGRESS) {
            c->fd = fd;
            if (rc_wait(c, POLLOUT, deadline, "connecting", err) == 0) {
                sl = sizeof(soerr);
                soerr = 0;
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0) {
                    r = 0;
                } else {
                    errno = soerr;
                }
            } else {
                errno = ETIMEDOUT;
            }
            c->fd = -1;
        }
        if (r == 0) {
            break;
        }
        snprintf(why, sizeof(why), "%s", errno == ETIMEDOUT ? "connection timed out" : strerror(errno));
        close(fd);
        fd = -1;
        if (rd_now() >= deadline) {
            break;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        acme_err_set(err, ACME_ERR_STORE, "cannot connect: %s", why);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
#ifdef TCP_KEEPIDLE
    {
        int idle = 30, intvl = 10, cnt = 3;
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    }
#endif
    c->fd = fd;
    c->pid = getpid();
    c->reader = redisReaderCreate();
    if (c->reader == NULL) {
        rc_close(c);
        rd_oom(err);
        return -1;
    }

    if (rd->tls) {
        c->ssl = SSL_new(rd->ssl_ctx);
        if (c->ssl == NULL || SSL_set_fd(c->ssl, fd) != 1) {
            acme_err_ssl(err, "cannot set up TLS");
            rc_close(c);
            return -1;
        }
        sni = rd->tls_servername ? rd->tls_servername : rd->host;
        if (inet_pton(AF_INET, sni, ipbuf) == 1 || inet_pton(AF_INET6, sni, ipbuf) == 1) {
            r = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), sni);
        } else {
            r = SSL_set_tlsext_host_name(c->ssl, sni) == 1 && SSL_set1_host(c->ssl, sni) == 1;
        }
        if (r != 1) {
            acme_err_ssl(err, "cannot set the TLS server name");
            rc_close(c);
            return -1;
        }
        for ( ;; ) {
            rd_nosig_enter(&s);
            errno = 0;
            r = SSL_connect(c->ssl);
            rd_nosig_leave(&s);
            if (r == 1) {
                break;
            }
            se = SSL_get_error(c->ssl, r);
            if (se == SSL_ERROR_WANT_READ || se == SSL_ERROR_WANT_WRITE) {
                if (rc_wait(c, se == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline, "in the TLS handshake",
                            err) != 0)
                {
                    rc_close(c);
                    return -1;
                }
                continue;
            }
            rc_tls_fail(c, r, "TLS handshake", err);
            rc_close(c);
            return -1;
        }
    }

    /* AUTH and SELECT, pipelined */
    if (rd->password != NULL) {
        const char  *argv[3];
        size_t       lens[3];
        int          argc = 0;

        argv[argc] = "AUTH";
        lens[argc++] = 4;
        if (rd->user != NULL) {
            argv[argc] = rd->user;
            lens[argc++] = strlen(rd->user);
        }
        argv[argc] = rd->password;
        lens[argc++] = rd->password_len;
        if (cmd_argv(&b, argc, argv, lens) != 0) {
            goto nomem;
        }
        ncmd++;
    }
    if (rd->db != 0) {
        char dbs[16];

        snprintf(dbs, sizeof(dbs), "%d", rd->db);
        if (cmd_str(&b, 2, "SELECT", dbs) != 0) {
            goto nomem;
        }
        ncmd++;
    }
    if (ncmd > 0) {
        if (rc_command_raw(c, rd->command_ms, b.data, b.len, ncmd, rep, err) != 0) {
            cmd_free(&b);
            rc_close(c);
            return -1;
        }
        cmd_free(&b);
        for (i = 0; i < ncmd; i++) {
            if (rep[i]->type == REDIS_REPLY_ERROR) {
                char eb[220];

                acme_err_set(err, ACME_ERR_STORE, "%s refused: %s",
                             i == 0 && rd->password != NULL ? "authentication" : "SELECT",
                             rd_errstr(rep[i], eb, sizeof(eb)));
                for (i = 0; i < ncmd; i++) {
                    rd_reply_free(rep[i], 0);
                }
                rc_close(c);
                return -1;
            }
        }
        for (i = 0; i < ncmd; i++) {
            rd_reply_free(rep[i], 0);
        }
    }
    return 0;

nomem:
    cmd_free(&b);
    rc_close(c);
    rd_oom(err);
    return -1;
}

/* ---- running commands ---- */

static void
rd_err_context(rd_t *rd, acme_err_t *err, const char *op, const char *key)
{
    if (key != NULL && key[0] != '\0') {
        acme_err_prefix(err, "redis store %s: %s %s", rd->display, op, key);
    } else {
        acme_err_prefix(err, "redis store %s: %s", rd->display, op);
    }
    if (err != NULL && err->kind != ACME_ERR_INTERNAL && err->kind != ACME_ERR_INPUT) {
        err->kind = ACME_ERR_STORE;
    }
}

/* Makes sure c is connected. *fresh: it is a new connection. */
static int
rd_ensure(rd_t *rd, rconn_t *c, int *fresh, acme_err_t *err)
{
    long long  now;

    *fresh = 0;
    if (c->fd >= 0 && c->pid != getpid()) {
        /* inherited through fork: the parent owns that connection; drop it without a close_notify */
        if (c->ssl != NULL) {
            SSL_free(c->ssl);
            c->ssl = NULL;
        }
        close(c->fd);
        c->fd = -1;
        if (c->reader != NULL) {
            redisReaderFree(c->reader);
            c->reader = NULL;
        }
    }
    if (c->fd >= 0 && rc_alive(c)) {
        return 0;
    }
    now = rd_now();
    if (c->failed_at != 0 && now - c->failed_at < RD_FAILFAST_MS && now >= c->failed_at) {
        if (err != NULL) {
            *err = c->failed;
        }
        return -1;
    }
    if (rc_open(rd, c, err) != 0) {
        c->failed_at = rd_now();
        if (err != NULL) {
            c->failed = *err;
        } else {
            acme_err_set(&c->failed, ACME_ERR_STORE, "cannot connect");
        }
        return -1;
    }
    c->failed_at = 0;
    *fresh = 1;
    return 0;
}

/*
 * Sends the ncmd commands in cmd and reads their replies. retry: the commands may run twice (an operation
 * that fails on a connection that had been idle runs again on a new one). Errors name op and key.
 */
static int
rd_run(rd_t *rd, const acme_buf_t *cmd, int ncmd, redisReply **rep, int retry, const char *op, const char *key,
    acme_err_t *err)
{
    int  fresh, attempt;

    for (attempt = 0; ; attempt++) {
        if (rd_ensure(rd, &rd->c, &fresh, err) != 0) {
            rd_err_context(rd, err, op, key);
            return -1;
        }
        if (rc_command_raw(&rd->c, rd->command_ms, cmd->data, cmd->len, ncmd, rep, err) == 0) {
            return 0;
        }
        rc_close(&rd->c);
        if (fresh || !retry || attempt > 0) {
            rd_err_context(rd, err, op, key);
            return -1;
        }
    }
}

/* One command; *out gets the reply (an error reply fails, with its text). */
static int
rd_simple(rd_t *rd, redisReply **out, int retry, const char *op, const char *key, acme_err_t *err, int argc,
    const char **argv, const size_t *lens)
{
    acme_buf_t   b = { NULL, 0, 0 };
    redisReply  *rep = NULL;
    char         eb[220];

    *out = NULL;
    if (cmd_argv(&b, argc, argv, lens) != 0) {
        cmd_free(&b);
        rd_oom(err);
        return -1;
    }
    if (rd_run(rd, &b, 1, &rep, retry, op, key, err) != 0) {
        cmd_free(&b);
        return -1;
    }
    cmd_free(&b);
    if (rep->type == REDIS_REPLY_ERROR) {
        acme_err_set(err, ACME_ERR_STORE, "%s", rd_errstr(rep, eb, sizeof(eb)));
        rd_err_context(rd, err, op, key);
        rd_reply_free(rep, 0);
        return -1;
    }
    *out = rep;
    return 0;
}

/* rd_simple with NUL-terminated arguments (at most 4). */
static int
rd_simple_str(rd_t *rd, redisReply **out, int retry, const char *op, acme_err_t *err, int argc, ...)
{
    const char  *argv[4];
    size_t       lens[4];
    va_list      ap;
    int          i;

    va_start(ap, argc);
    for (i = 0; i < argc && i < 4; i++) {
        argv[i] = va_arg(ap, const char *);
        lens[i] = strlen(argv[i]);
    }
    va_end(ap);
    return rd_simple(rd, out, retry, op, NULL, err, argc < 4 ? argc : 4, argv, lens);
}

static char *
rd_key(rd_t *rd, const char *kind, const char *key)
{
    return acme_sprintf("%s%s%s", rd->prefix, kind ? kind : "", key ? key : "");
}

/* ---- locks: lease refresh ---- */

static int
rd_lock_refresh_locked(acme_lock_t *lk, acme_err_t *err)
{
    rd_t        *rd = lk->rd;
    char         lease[32];
    const char  *argv[6];
    size_t       lens[6];
    redisReply  *rep = NULL;
    int          i, held;

    if (lk->lost) {
        acme_err_set(err, ACME_ERR_BUSY, "the lock %s was lost (its lease expired)", lk->rkey);
        return 0;
    }
    snprintf(lease, sizeof(lease), "%ld", rd->lease_ms);
    argv[0] = "EVAL";
    argv[1] = RD_SCRIPT_REFRESH;
    argv[2] = "1";
    argv[3] = lk->rkey;
    argv[4] = lk->token;
    argv[5] = lease;
    for (i = 0; i < 6; i++) {
        lens[i] = strlen(argv[i]);
    }
    if (rd_simple(rd, &rep, 0, "refresh lock", lk->rkey + strlen(rd->prefix), err, 6, argv, lens) != 0) {
        if (rd_now() - lk->refreshed >= rd->lease_ms) {
            lk->lost = 1;
            acme_err_prefix(err, "the lease is over, the lock counts as lost");
            return 0;
        }
        return -1;
    }
    held = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
    rd_reply_free(rep, 0);
    if (!held) {
        lk->lost = 1;
        acme_err_set(err, ACME_ERR_BUSY, "redis store %s: the lock %s was lost (its lease expired and another "
                     "holder may have taken it)", rd->display, lk->rkey + strlen(rd->prefix));
        return 0;
    }
    lk->refreshed = rd_now();
    return 1;
}

/* Piggyback: refresh the held locks whose lease is a third gone (at the start of any operation). */
static void
rd_refresh_due(rd_t *rd)
{
    acme_lock_t  *lk;
    long long     now = rd_now();

    for (lk = rd->locks; lk != NULL; lk = lk->next) {
        if (!lk->lost && now - lk->refreshed >= rd->lease_ms / 3) {
            rd_lock_refresh_locked(lk, NULL);
        }
    }
}

static void
rd_enter(rd_t *rd)
{
    pthread_mutex_lock(&rd->mu);
    if (rd->locks != NULL) {
        rd_refresh_due(rd);
    }
}

static void
rd_leave(rd_t *rd)
{
    pthread_mutex_unlock(&rd->mu);
}

/* ---- authentication of values (with a storage key) ---- */

static int rd_is(const acme_store_t *st);

static void
rd_err_append(acme_err_t *err, const char *text)
{
    size_t  n;

    if (err != NULL) {
        n = strlen(err->msg);
        snprintf(err->msg + n, sizeof(err->msg) - n, "%s", text);
    }
}

/* The layout's secret keys: with a storage key they must be sealed, whatever info:secrets says. */
static int
rd_secret_name(const char *key)
{
    const char  *base = strrchr(key, '/');

    base = base ? base + 1 : key;
    return strcmp(base, "privkey.pem") == 0 || strcmp(base, "account.key") == 0
           || strcmp(base, "order.key") == 0;
}

/* Reports a refused record through the host's callback, once per distinct name and content. rd->mu held. */
static void
rd_forged(rd_t *rd, const char *name, const void *data, size_t len, const char *why)
{
    unsigned char  md[EVP_MAX_MD_SIZE];
    unsigned int   mdlen = 0;
    EVP_MD_CTX    *c;
    unsigned       i, n;
    char           q[140], *msg;
    int            ok;

    if (rd->forged_fn == NULL) {
        return;
    }
    c = EVP_MD_CTX_new();
    ok = c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1
         && EVP_DigestUpdate(c, name, strlen(name) + 1) == 1
         && (len == 0 || EVP_DigestUpdate(c, data, len) == 1)
         && EVP_DigestFinal_ex(c, md, &mdlen) == 1;
    EVP_MD_CTX_free(c);
    if (!ok) {
        return;
    }
    n = rd->forged_n < RD_FORGED_SEEN ? rd->forged_n : RD_FORGED_SEEN;
    for (i = 0; i < n; i++) {
        if (memcmp(rd->forged_seen[i], md, 16) == 0) {
            return;
        }
    }
    memcpy(rd->forged_seen[rd->forged_n % RD_FORGED_SEEN], md, 16);
    rd->forged_n++;
    msg = acme_sprintf("redis store %s: refused %s: %s", rd->display, acme_quote(name, q, sizeof(q), 120),
                       why);
    if (msg != NULL) {
        rd->forged_fn(rd->forged_arg, msg);
        free(msg);
    }
}

/*
 * The plaintext of a value read under key: opens a sealed value, checks and strips a MAC, and with a storage
 * key refuses anything else. *pt malloc'd (acme_free_secret). rd->mu held.
 */
static int
rd_value_open(rd_t *rd, const char *key, const char *v, size_t vlen, char **pt, size_t *ptlen, acme_err_t *err)
{
    const char  *nl, *why = NULL;
    char         kid[9];
    acme_err_t   e;

    *pt = NULL;
    *ptlen = 0;
    if (acme_aead_is_sealed(v, vlen)) {
        if (acme_aead_open(rd->key, key, v, vlen, pt, ptlen, &e) == 0) {
            return 0;
        }
        acme_aead_sealed_kid(v, vlen, kid);
        if (rd->key != NULL && strcmp(kid, acme_aead_key_id(rd->key)) == 0) {
            rd_forged(rd, key, v, vlen, e.msg);
        }
        if (err != NULL) {
            *err = e;
        }
        if (rd->key == NULL) {
            rd_err_append(err, " (give the storage key file)");
        }
        return -1;
    }
    if (vlen >= ACME_AEAD_MAC_MAGIC_LEN && memcmp(v, ACME_AEAD_MAC_MAGIC, ACME_AEAD_MAC_MAGIC_LEN) == 0) {
        nl = memchr(v, '\n', vlen < ACME_AEAD_MAC_MAX ? vlen : ACME_AEAD_MAC_MAX);
        if (nl == NULL) {
            why = "the MAC line is damaged";
            acme_err_set(err, ACME_ERR_STORE, "%s", why);
        } else if (rd->key == NULL) {
            /* no key: nothing can be checked, Redis is trusted as it was before MACs (public values) */
            vlen -= (size_t) (nl + 1 - v);
            v = nl + 1;
            goto copy;
        } else if (acme_aead_mac_check(rd->key, "store", key, nl + 1, vlen - (size_t) (nl + 1 - v), v,
                                       (size_t) (nl - v), &e) != 0)
        {
            /* another key's MAC is a configuration error, said in err; the rest is a forgery */
            if (vlen > ACME_AEAD_MAC_MAGIC_LEN + 8
                && memcmp(v + ACME_AEAD_MAC_MAGIC_LEN, acme_aead_key_id(rd->key), 8) == 0)
            {
                rd_forged(rd, key, v, vlen, e.msg);
            }
            if (err != NULL) {
                *err = e;
            }
            return -1;
        } else if (rd_secret_name(key)) {
            why = "a secret that is not sealed";
            acme_err_set(err, ACME_ERR_STORE, "%s", why);
        } else {
            vlen -= (size_t) (nl + 1 - v);
            v = nl + 1;
            goto copy;
        }
        rd_forged(rd, key, v, vlen, why);
        return -1;
    }
    if (rd->key != NULL && !rd->unauthenticated_ok) {
        why = rd_secret_name(key)
              ? "an unsealed secret, though a storage key is configured (forged, or stored before the key was "
                "configured: \"acmectl --storage URL --storage-key FILE upgrade-storage\" seals what Redis "
                "holds now)"
              : "a value without a MAC, though a storage key is configured (forged, or stored before this "
                "version: \"acmectl --storage URL --storage-key FILE upgrade-storage\" signs what Redis holds "
                "now)";
        acme_err_set(err, ACME_ERR_STORE, "%s", why);
        rd_forged(rd, key, v, vlen, why);
        return -1;
    }

copy:
    if (vlen > RD_VALUE_MAX) {
        acme_err_set(err, ACME_ERR_STORE, "%zu bytes is too large", vlen);
        return -1;
    }
    *pt = malloc(vlen + 1);
    if (*pt == NULL) {
        rd_oom(err);
        return -1;
    }
    memcpy(*pt, v, vlen);
    (*pt)[vlen] = '\0';
    *ptlen = vlen;
    return 0;
}

void
acme_store_on_forged(acme_store_t *st, acme_store_forged_fn fn, void *arg)
{
    rd_t  *rd;

    if (!rd_is(st)) {
        return;
    }
    rd = st->data;
    pthread_mutex_lock(&rd->mu);
    rd->forged_fn = fn;
    rd->forged_arg = arg;
    pthread_mutex_unlock(&rd->mu);
}

/* ---- ops ---- */

static int
rd_get(acme_store_t *st, const char *key, char **data, size_t *len, acme_err_t *err)
{
    rd_t        *rd = st->data;
    char        *k, *pt = NULL;
    const char  *argv[2];
    size_t       lens[2], ptlen = 0;
    redisReply  *rep = NULL;
    int          rc = -1;

    if (data == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "store get: no output");
        return -1;
    }
    *data = NULL;
    if (len != NULL) {
        *len = 0;
    }
    if (acme_store_key_check(key, err) != 0) {
        return -1;
    }
    k = rd_key(rd, NULL, key);
    if (k == NULL) {
        rd_oom(err);
        return -1;
    }
    argv[0] = "GET";
    argv[1] = k;
    lens[0] = 3;
    lens[1] = strlen(k);
    rd_enter(rd);
    if (rd_simple(rd, &rep, 1, "get", key, err, 2, argv, lens) != 0) {
        goto done;
    }
    if (rep->type == REDIS_REPLY_NIL) {
        rc = 1;
        goto done;
    }
    if (rep->type != REDIS_REPLY_STRING) {
        acme_err_set(err, ACME_ERR_STORE, "redis store %s: get %s: not a string value", rd->display, key);
        goto done;
    }
    if (rep->len > RD_RAW_MAX) {
        acme_err_set(err, ACME_ERR_STORE, "redis store %s: get %s: %zu bytes is too large", rd->display, key,
                     rep->len);
        goto done;
    }
    if (rd_value_open(rd, key, rep->str, rep->len, &pt, &ptlen, err) != 0) {
        acme_err_prefix(err, "redis store %s: get %s", rd->display, key);
        goto done;
    }
    *data = pt;
    if (len != NULL) {
        *len = ptlen;
    }
    rc = 0;
done:
    rd_leave(rd);
    rd_reply_free(rep, 1);
    free(k);
    return rc;
}

/* "certs/<name>/fullchain.pem" or privkey.pem: the name (malloc'd), else NULL. */
static char *
rd_cert_of(const char *key)
{
    const char  *n, *s;

    if (strncmp(key, "certs/", 6) != 0) {
        return NULL;
    }
    n = key + 6;
    s = strchr(n, '/');
    if (s == NULL || s == n || (strcmp(s + 1, "fullchain.pem") != 0 && strcmp(s + 1, "privkey.pem") != 0)) {
        return NULL;
    }
    return acme_strndup(n, (size_t) (s - n));
}

/* Appends the prune of the directories above a deleted key (see RD_SCRIPT_PRUNE). 1 appended, 0 none. */
static int
rd_prune_cmd(rd_t *rd, acme_buf_t *b, const char *key)
{
    enum { MAXN = 8 };
    const char  *argv[3 + 3 * MAXN + 1];
    size_t       lens[3 + 3 * MAXN + 1];
    char        *keys[2 * MAXN + 1], *names[MAXN], *d, *slash, nk[16];
    int          nkeys = 0, nn = 0, argc = 0, i, rc = -1;

    d = acme_strdup(key);
    if (d == NULL) {
        return -1;
    }
    slash = strrchr(d, '/');
    if (slash == NULL) {
        free(d);
        return 0;       /* a top-level key: no directory above it */
    }
    *slash = '\0';
    /* d: the deepest directory; walk up, one node at a time */
    for ( ;; ) {
        slash = strrchr(d, '/');
        keys[nkeys++] = rd_key(rd, "dir:", d);
        keys[nkeys++] = rd_key(rd, NULL, d);
        names[nn++] = acme_strdup(slash ? slash + 1 : d);
        if (slash == NULL) {
            d[0] = '\0';
        } else {
            *slash = '\0';
        }
        if (d[0] == '\0' || nn == MAXN) {
            break;
        }
    }
    keys[nkeys++] = rd_key(rd, "dir:", d);      /* the last node's parent ("" = the top level) */
    for (i = 0; i < nkeys; i++) {
        if (keys[i] == NULL) {
            goto done;
        }
    }
    for (i = 0; i < nn; i++) {
        if (names[i] == NULL) {
            goto done;
        }
    }
    snprintf(nk, sizeof(nk), "%d", nkeys);
    argv[argc++] = "EVAL";
    argv[argc++] = RD_SCRIPT_PRUNE;
    argv[argc++] = nk;
    for (i = 0; i < nkeys; i++) {
        argv[argc++] = keys[i];
    }
    for (i = 0; i < nn; i++) {
        argv[argc++] = names[i];
    }
    for (i = 0; i < argc; i++) {
        lens[i] = strlen(argv[i]);
    }
    rc = cmd_argv(b, argc, argv, lens) == 0 ? 1 : -1;
done:
    for (i = 0; i < nkeys; i++) {
        free(keys[i]);
    }
    for (i = 0; i < nn; i++) {
        free(names[i]);
    }
    free(d);
    return rc;
}

static int
rd_commit(acme_store_t *st, const acme_store_item_t *items, size_t n, acme_err_t *err)
{
    rd_t          *rd = st->data;
    acme_buf_t     b = { NULL, 0, 0 }, pb = { NULL, 0, 0 };
    redisReply   **rep = NULL, *exec, *prep;
    char         **certs = NULL, *k = NULL, *sealed = NULL, *dk = NULL, *name, *p, eb[220];
    size_t         ncerts = 0, i, j, vlen, sealed_len = 0;
    const char    *val, *op = n == 1 ? (items[0].data ? "put" : "del") : "commit";
    const char    *what = n == 1 ? items[0].key : NULL;
    char          *secrets = NULL, *gen = NULL, *chan = NULL, mac[ACME_AEAD_MAC_MAX];
    int            ncmd = 0, nprune = 0, rc = -1, dup, r, secret;

    if (n == 0) {
        return 0;
    }
    if (items == NULL || n > RD_COMMIT_MAX) {
        acme_err_set(err, ACME_ERR_INPUT, "store commit: %zu items", n);
        return -1;
    }
    for (i = 0; i < n; i++) {
        if (acme_store_key_check(items[i].key, err) != 0) {
            return -1;
        }
        if (items[i].len > RD_VALUE_MAX) {
            acme_err_set(err, ACME_ERR_INPUT, "store %s %s: %zu bytes is too large", op, items[i].key,
                         items[i].len);
            return -1;
        }
        for (j = 0; j < i; j++) {
            if (strcmp(items[i].key, items[j].key) == 0) {
                acme_err_set(err, ACME_ERR_INPUT, "store commit: key %s given twice", items[i].key);
                return -1;
            }
        }
    }
    secrets = rd_key(rd, "info:", "secrets");
    gen = rd_key(rd, "info:", "generation");
    chan = rd_key(rd, NULL, "events");
    certs = calloc(n, sizeof(char *));
    if (secrets == NULL || gen == NULL || chan == NULL || certs == NULL || cmd_str(&b, 1, "MULTI") != 0) {
        goto nomem;
    }
    ncmd++;
    for (i = 0; i < n; i++) {
        const char *key = items[i].key;

        k = rd_key(rd, NULL, key);
        if (k == NULL) {
            goto nomem;
        }
        if (items[i].data != NULL) {
            const char  *argv[3];
            size_t       lens[3];

            val = items[i].data;
            vlen = items[i].len;
            secret = items[i].secret || (rd->key != NULL && rd_secret_name(key));
            if (secret && rd->key != NULL) {
                if (acme_aead_seal(rd->key, key, val, vlen, &sealed, &sealed_len, err) != 0) {
                    acme_err_prefix(err, "redis store %s: %s %s", rd->display, op, key);
                    goto done;
                }
                val = sealed;
                vlen = sealed_len;
            } else if (rd->key != NULL) {
                /* the MAC line, then the value */
                if (acme_aead_mac(rd->key, "store", key, val, vlen, mac) != 0) {
                    acme_err_set(err, ACME_ERR_INTERNAL, "redis store %s: %s %s: HMAC-SHA256 failed",
                                 rd->display, op, key);
                    goto done;
                }
                sealed_len = strlen(mac) + 1 + vlen;
                sealed = malloc(sealed_len);
                if (sealed == NULL) {
                    goto nomem;
                }
                memcpy(sealed, mac, sealed_len - 1 - vlen);
                sealed[sealed_len - 1 - vlen] = '\n';
                if (vlen > 0) {
                    memcpy(sealed + sealed_len - vlen, val, vlen);
                }
                val = sealed;
                vlen = sealed_len;
            }
            argv[0] = "SET";
            argv[1] = k;
            argv[2] = val;
            lens[0] = 3;
            lens[1] = strlen(k);
            lens[2] = vlen;
            if (cmd_argv(&b, 3, argv, lens) != 0) {
                goto nomem;
            }
            ncmd++;
            free(sealed);
            sealed = NULL;
            /* every directory level above it */
            p = (char *) key;
            for ( ;; ) {
                const char *s = strchr(p, '/');
                char *parent = acme_strndup(key, p == key ? 0 : (size_t) (p - key - 1));
                char *child = s ? acme_strndup(p, (size_t) (s - p)) : acme_strdup(p);

                dk = parent ? rd_key(rd, "dir:", parent) : NULL;
                if (dk == NULL || child == NULL || cmd_str(&b, 3, "SADD", dk, child) != 0) {
                    free(parent);
                    free(child);
                    goto nomem;
                }
                ncmd++;
                free(parent);
                free(child);
                free(dk);
                dk = NULL;
                if (s == NULL) {
                    break;
                }
                p = (char *) s + 1;
            }
            if (cmd_str(&b, 3, secret ? "SADD" : "SREM", secrets, key) != 0) {
                goto nomem;
            }
            ncmd++;
        } else {
            const char *s = strrchr(key, '/');
            char *parent = acme_strndup(key, s ? (size_t) (s - key) : 0);

            dk = parent ? rd_key(rd, "dir:", parent) : NULL;
            free(parent);
            if (dk == NULL || cmd_str(&b, 2, "DEL", k) != 0 || cmd_str(&b, 3, "SREM", dk, s ? s + 1 : key) != 0
                || cmd_str(&b, 3, "SREM", secrets, key) != 0)
            {
                goto nomem;
            }
            ncmd += 3;
            free(dk);
            dk = NULL;
            r = rd_prune_cmd(rd, &pb, key);
            if (r < 0) {
                goto nomem;
            }
            nprune += r;
        }
        free(k);
        k = NULL;
        name = rd_cert_of(key);
        if (name != NULL) {
            for (dup = 0, j = 0; j < ncerts; j++) {
                dup |= strcmp(certs[j], name) == 0;
            }
            if (dup) {
                free(name);
            } else {
                certs[ncerts++] = name;
            }
        }
    }
    if (ncerts > 0) {
        if (cmd_str(&b, 2, "INCR", gen) != 0) {
            goto nomem;
        }
        ncmd++;
        for (j = 0; j < ncerts; j++) {
            if (cmd_str(&b, 3, "PUBLISH", chan, certs[j]) != 0) {
                goto nomem;
            }
            ncmd++;
        }
    }
    if (cmd_str(&b, 1, "EXEC") != 0) {
        goto nomem;
    }
    ncmd++;
    rep = calloc((size_t) ncmd, sizeof(*rep));
    if (rep == NULL) {
        goto nomem;
    }

    rd_enter(rd);
    if (rd_run(rd, &b, ncmd, rep, 1, op, what, err) != 0) {
        rd_leave(rd);
        free(rep);
        rep = NULL;
        goto done;
    }
    exec = rep[ncmd - 1];
    for (i = 0; i < (size_t) ncmd - 1; i++) {
        if (rep[i]->type == REDIS_REPLY_ERROR) {
            acme_err_set(err, ACME_ERR_STORE, "%s", rd_errstr(rep[i], eb, sizeof(eb)));
            rd_err_context(rd, err, op, what);
            rd_leave(rd);
            goto done;
        }
    }
    if (exec->type != REDIS_REPLY_ARRAY) {
        acme_err_set(err, ACME_ERR_STORE, "the transaction failed: %s",
                     exec->type == REDIS_REPLY_ERROR ? rd_errstr(exec, eb, sizeof(eb)) : "aborted");
        rd_err_context(rd, err, op, what);
        rd_leave(rd);
        goto done;
    }
    for (i = 0; i < exec->elements; i++) {
        if (exec->element[i]->type == REDIS_REPLY_ERROR) {
            acme_err_set(err, ACME_ERR_STORE, "%s", rd_errstr(exec->element[i], eb, sizeof(eb)));
            rd_err_context(rd, err, op, what);
            rd_leave(rd);
            goto done;
        }
    }
    rc = 0;
    /* best effort: directories left empty disappear from their parents' index */
    if (nprune > 0) {
        redisReply **pr = calloc((size_t) nprune, sizeof(*pr));
        acme_err_t   e;

        if (pr != NULL && rd_run(rd, &pb, nprune, pr, 1, "prune", NULL, &e) == 0) {
            for (i = 0; i < (size_t) nprune; i++) {
                prep = pr[i];
                rd_reply_free(prep, 0);
            }
        }
        free(pr);
    }
    rd_leave(rd);
    goto done;

nomem:
    rd_oom(err);
done:
    if (rep != NULL) {
        for (i = 0; i < (size_t) ncmd; i++) {
            rd_reply_free(rep[i], 0);
        }
        free(rep);
    }
    for (j = 0; j < ncerts; j++) {
        free(certs[j]);
    }
    free(certs);
    free(k);
    free(dk);
    free(sealed);
    free(secrets);
    free(gen);
    free(chan);
    cmd_free(&b);
    cmd_free(&pb);
    return rc;
}

static int
rd_put(acme_store_t *st, const char *key, const void *data, size_t len, int secret, acme_err_t *err)
{
    acme_store_item_t  it;

    if (data == NULL && len > 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "store put %s: no data", key ? key : "?");
        return -1;
    }
    it.key = key;
    it.data = data ? data : "";
    it.len = len;
    it.secret = secret;
    return rd_commit(st, &it, 1, err);
}

static int
rd_del(acme_store_t *st, const char *key, acme_err_t *err)
{
    acme_store_item_t  it;

    it.key = key;
    it.data = NULL;
    it.len = 0;
    it.secret = 0;
    return rd_commit(st, &it, 1, err);
}

static int
rd_name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *) a, *(char *const *) b);
}

static int
rd_list(acme_store_t *st, const char *prefix, char ***names, size_t *n, acme_err_t *err)
{
    rd_t        *rd = st->data;
    int          root = prefix == NULL || prefix[0] == '\0';
    char        *dk, **v = NULL;
    const char  *argv[2];
    size_t       lens[2], i, cnt = 0;
    redisReply  *rep = NULL;
    acme_err_t   e;

    if (names == NULL || n == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "store list: no output");
        return -1;
    }
    *names = NULL;
    *n = 0;
    if (!root && acme_store_key_check(prefix, err) != 0) {
        return -1;
    }
    dk = rd_key(rd, "dir:", root ? "" : prefix);
    if (dk == NULL) {
        rd_oom(err);
        return -1;
    }
    argv[0] = "SMEMBERS";
    argv[1] = dk;
    lens[0] = 8;
    lens[1] = strlen(dk);
    rd_enter(rd);
    if (rd_simple(rd, &rep, 1, "list", root ? "(top level)" : prefix, err, 2, argv, lens) != 0) {
        rd_leave(rd);
        free(dk);
        return -1;
    }
    rd_leave(rd);
    free(dk);
    if (rep->type != REDIS_REPLY_ARRAY) {
        acme_err_set(err, ACME_ERR_STORE, "redis store %s: list %s: not a set", rd->display,
                     root ? "(top level)" : prefix);
        rd_reply_free(rep, 0);
        return -1;
    }
    if (rep->elements > 0) {
        v = calloc(rep->elements, sizeof(char *));
        if (v == NULL) {
            rd_reply_free(rep, 0);
            rd_oom(err);
            return -1;
        }
    }
    for (i = 0; i < rep->elements; i++) {
        redisReply *el = rep->element[i];

        if (el->type != REDIS_REPLY_STRING || strlen(el->str) != el->len
            || acme_store_name_check(el->str, "name", &e) != 0)
        {
            continue;
        }
        v[cnt] = acme_strdup(el->str);
        if (v[cnt] == NULL) {
            acme_store_list_free(v, cnt);
            rd_reply_free(rep, 0);
            rd_oom(err);
            return -1;
        }
        cnt++;
    }
    rd_reply_free(rep, 0);
    if (cnt > 1) {
        qsort(v, cnt, sizeof(char *), rd_name_cmp);
    }
    if (cnt == 0) {
        free(v);
        v = NULL;
    }
    *names = v;
    *n = cnt;
    return 0;
}

static void
rd_token(char *buf, size_t size)
{
    unsigned char  r[16];
    char           host[64], hex[33];
    size_t         i;

    if (gethostname(host, sizeof(host)) != 0) {
        strcpy(host, "host");
    }
    host[sizeof(host) - 1] = '\0';
    for (i = 0; host[i] != '\0'; i++) {
        if ((unsigned char) host[i] <= 0x20 || (unsigned char) host[i] >= 0x7f) {
            host[i] = '_';
        }
    }
    if (RAND_bytes(r, sizeof(r)) != 1) {
        /* no randomness: still unique enough per process and time, but say so in the token */
        long long t = rd_now();
        memset(r, 0, sizeof(r));
        memcpy(r, &t, sizeof(t));
    }
    for (i = 0; i < sizeof(r); i++) {
        snprintf(hex + 2 * i, 3, "%02x", r[i]);
    }
    snprintf(buf, size, "%s:%ld:%s", host, (long) getpid(), hex);
}

static void
rd_unref(rd_t *rd)
{
    int  last;

    pthread_mutex_lock(&rd->mu);
    last = --rd->refs == 0;
    pthread_mutex_unlock(&rd->mu);
    if (!last) {
        return;
    }
    rc_close(&rd->c);
    free(rd->host);
    free(rd->port);
    free(rd->user);
    if (rd->password != NULL) {
        acme_free_secret(rd->password, rd->password_len);
    }
    free(rd->prefix);
    free(rd->tls_ca);
    free(rd->tls_cert);
    free(rd->tls_key);
    free(rd->tls_servername);
    free(rd->display);
    SSL_CTX_free(rd->ssl_ctx);
    acme_aead_key_free(rd->key);
    pthread_mutex_destroy(&rd->mu);
    free(rd);
}

static int
rd_lock(acme_store_t *st, const char *name, acme_lock_t **lkp, acme_err_t *err)
{
    rd_t         *rd = st->data;
    acme_lock_t  *lk;
    char          lease[32];
    const char   *argv[6];
    size_t        lens[6];
    redisReply   *rep = NULL;
    int           i, taken;
    long long     t0;

    if (lkp == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "store lock: no output");
        return -1;
    }
    *lkp = NULL;
    if (acme_store_name_check(name, "lock name", err) != 0) {
        return -1;
    }
    lk = calloc(1, sizeof(*lk));
    if (lk == NULL) {
        rd_oom(err);
        return -1;
    }
    lk->rkey = rd_key(rd, "lock:", name);
    if (lk->rkey == NULL) {
        free(lk);
        rd_oom(err);
        return -1;
    }
    rd_token(lk->token, sizeof(lk->token));
    snprintf(lease, sizeof(lease), "%ld", rd->lease_ms);
    argv[0] = "SET";
    argv[1] = lk->rkey;
    argv[2] = lk->token;
    argv[3] = "NX";
    argv[4] = "PX";
    argv[5] = lease;
    for (i = 0; i < 6; i++) {
        lens[i] = strlen(argv[i]);
    }
    rd_enter(rd);
    t0 = rd_now();
    if (rd_simple(rd, &rep, 0, "lock", name, err, 6, argv, lens) != 0) {
        rd_leave(rd);
        free(lk->rkey);
        free(lk);
        return -1;
    }
    taken = rep->type == REDIS_REPLY_STATUS;
    rd_reply_free(rep, 0);
    if (!taken) {
        rd_leave(rd);
        free(lk->rkey);
        free(lk);
        return 0;
    }
    lk->rd = rd;
    lk->refreshed = t0;
    lk->next = rd->locks;
    rd->locks = lk;
    rd->refs++;
    rd_leave(rd);
    *lkp = lk;
    return 1;
}

static void
rd_unlock(acme_lock_t *lk)
{
    rd_t         *rd;
    acme_lock_t **pp;
    const char   *argv[5];
    size_t        lens[5];
    redisReply   *rep = NULL;
    acme_err_t    e;
    int           i;

    if (lk == NULL) {
        return;
    }
    rd = lk->rd;
    pthread_mutex_lock(&rd->mu);
    for (pp = &rd->locks; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == lk) {
            *pp = lk->next;
            break;
        }
    }
    if (!lk->lost) {
        argv[0] = "EVAL";
        argv[1] = RD_SCRIPT_UNLOCK;
        argv[2] = "1";
        argv[3] = lk->rkey;
        argv[4] = lk->token;
        for (i = 0; i < 5; i++) {
            lens[i] = strlen(argv[i]);
        }
        /* a failure leaves the lock to its lease */
        if (rd_simple(rd, &rep, 0, "unlock", lk->rkey + strlen(rd->prefix), &e, 5, argv, lens) == 0) {
            rd_reply_free(rep, 0);
        }
    }
    pthread_mutex_unlock(&rd->mu);
    free(lk->rkey);
    OPENSSL_cleanse(lk->token, sizeof(lk->token));
    free(lk);
    rd_unref(rd);
}

static void
rd_destroy(acme_store_t *st)
{
    if (st == NULL) {
        return;
    }
    if (st->data != NULL) {
        rd_unref(st->data);
    }
    free(st);
}

static const acme_store_ops_t rd_ops = {
    rd_get, rd_put, rd_del, rd_list, rd_commit, rd_lock, rd_unlock, rd_destroy
};

/* ---- opening ---- */

static acme_store_t *
rd_open(const char *url, const char *key_file, int flags, acme_err_t *err)
{
    acme_store_t  *st = NULL;
    rd_t          *rd;
    char          *shown;
    redisReply    *rep = NULL;
    const char    *argv[1] = { "PING" };
    size_t         lens[1] = { 4 };

    rd = calloc(1, sizeof(*rd));
    st = calloc(1, sizeof(*st));
    if (rd == NULL || st == NULL) {
        free(rd);
        free(st);
        rd_oom(err);
        return NULL;
    }
    pthread_mutex_init(&rd->mu, NULL);
    rd->refs = 1;
    rd->connect_ms = RD_CONNECT_MS;
    rd->command_ms = RD_COMMAND_MS;
    rd->lease_ms = RD_LEASE_MS;
    rc_init(&rd->c);
    st->ops = &rd_ops;
    st->data = rd;

    if (rd_parse_url(rd, url, err) != 0) {
        shown = acme_store_url_redact(url);
        acme_err_prefix(err, "storage %s", shown ? shown : "(redis URL)");
        if (err != NULL) {
            err->kind = err->kind == ACME_ERR_INTERNAL ? ACME_ERR_INTERNAL : ACME_ERR_CONFIG;
        }
        free(shown);
        rd_destroy(st);
        return NULL;
    }
    rd->display = rd_make_display(rd);
    if (rd->display == NULL) {
        rd_oom(err);
        rd_destroy(st);
        return NULL;
    }
    if (rd->tls && rd_tls_init(rd, err) != 0) {
        acme_err_prefix(err, "storage %s", rd->display);
        rd_destroy(st);
        return NULL;
    }
    if (key_file != NULL && key_file[0] != '\0') {
        rd->key = acme_aead_key_load(key_file, err);
        if (rd->key == NULL) {
            acme_err_prefix(err, "storage %s", rd->display);
            rd_destroy(st);
            return NULL;
        }
    }
    if (!(flags & ACME_STORE_LAZY)) {
        pthread_mutex_lock(&rd->mu);
        if (rd_simple(rd, &rep, 1, "connect", NULL, err, 1, argv, lens) != 0) {
            pthread_mutex_unlock(&rd->mu);
            rd_destroy(st);
            return NULL;
        }
        pthread_mutex_unlock(&rd->mu);
        rd_reply_free(rep, 0);
    }
    return st;
}

static int
rd_is(const acme_store_t *st)
{
    return st != NULL && st->ops == &rd_ops;
}

acme_store_t *
acme_store_open(const char *url_or_dir, const char *key_file, int flags, acme_err_t *err)
{
    const char  *sch;

    if (url_or_dir == NULL || url_or_dir[0] == '\0') {
        acme_err_set(err, ACME_ERR_CONFIG, "no storage given");
        return NULL;
    }
    if (rd_is_redis_url(url_or_dir)) {
        return rd_open(url_or_dir, key_file, flags, err);
    }
    sch = strstr(url_or_dir, "://");
    if (sch != NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "storage \"%.*s://...\": unknown scheme (a directory, redis:// or "
                     "rediss://)", (int) (sch - url_or_dir > 20 ? 20 : sch - url_or_dir), url_or_dir);
        return NULL;
    }
    if (key_file != NULL && key_file[0] != '\0') {
        acme_err_set(err, ACME_ERR_CONFIG, "storage %s: a storage key applies to redis:// storage only (the "
                     "filesystem store keeps secrets in files only its owner can read)", url_or_dir);
        return NULL;
    }
    return acme_store_fs_open(url_or_dir, flags & ACME_STORE_CREATE, err);
}

const char *
acme_store_backend(const acme_store_t *st)
{
    return rd_is(st) ? "redis" : "filesystem";
}

/* ---- locks ---- */

int
acme_store_lock_refresh(acme_store_t *st, acme_lock_t *lk, acme_err_t *err)
{
    rd_t  *rd;
    int    rc;

    if (st == NULL || lk == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "lock refresh: no store or lock");
        return -1;
    }
    if (!rd_is(st)) {
        return 1;       /* filesystem locks last until unlock or exit */
    }
    rd = st->data;
    if (lk->rd != rd) {
        acme_err_set(err, ACME_ERR_INTERNAL, "lock refresh: the lock belongs to another store");
        return -1;
    }
    pthread_mutex_lock(&rd->mu);
    rc = rd_lock_refresh_locked(lk, err);
    pthread_mutex_unlock(&rd->mu);
    return rc;
}

long
acme_store_lock_lease_ms(const acme_store_t *st)
{
    return rd_is(st) ? ((rd_t *) st->data)->lease_ms : 0;
}

/* ---- health ---- */

int
acme_store_ping(acme_store_t *st, acme_err_t *err)
{
    rd_t         *rd;
    redisReply   *rep = NULL;
    const char   *argv[1] = { "PING" };
    size_t        lens[1] = { 4 };
    int           rc;

    if (!rd_is(st)) {
        return st != NULL ? 0 : -1;
    }
    rd = st->data;
    rd_enter(rd);
    rc = rd_simple(rd, &rep, 1, "ping", NULL, err, 1, argv, lens);
    rd_leave(rd);
    rd_reply_free(rep, 0);
    return rc;
}

/* ---- generation ---- */

/* Any backend but Redis: a fingerprint of every certificate's name and chain. */
static int
store_fingerprint(acme_store_t *st, unsigned long long *gen, acme_err_t *err)
{
    char          **names = NULL, *data = NULL, *key;
    size_t          n = 0, i, len = 0;
    unsigned char   md[EVP_MAX_MD_SIZE];
    unsigned int    mdlen = 0;
    EVP_MD_CTX     *ctx;
    int             rc = -1, r;

    if (st->ops->list(st, "certs", &names, &n, err) != 0) {
        return -1;
    }
    ctx = EVP_MD_CTX_new();
    if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        acme_err_ssl(err, "generation: SHA-256");
        goto done;
    }
    for (i = 0; i < n; i++) {
        key = acme_sprintf("certs/%s/fullchain.pem", names[i]);
        if (key == NULL) {
            rd_oom(err);
            goto done;
        }
        r = st->ops->get(st, key, &data, &len, err);
        free(key);
        if (r < 0) {
            goto done;
        }
        EVP_DigestUpdate(ctx, names[i], strlen(names[i]) + 1);
        if (r == 0) {
            char lb[32];

            snprintf(lb, sizeof(lb), "%zu:", len);
            EVP_DigestUpdate(ctx, lb, strlen(lb));
            EVP_DigestUpdate(ctx, data, len);
        } else {
            EVP_DigestUpdate(ctx, "-", 1);
        }
        free(data);
        data = NULL;
    }
    if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen < 8) {
        acme_err_ssl(err, "generation: SHA-256");
        goto done;
    }
    *gen = 0;
    for (i = 0; i < 8; i++) {
        *gen = (*gen << 8) | md[i];
    }
    rc = 0;
done:
    EVP_MD_CTX_free(ctx);
    acme_store_list_free(names, n);
    return rc;
}

int
acme_store_generation(acme_store_t *st, unsigned long long *gen, acme_err_t *err)
{
    rd_t         *rd;
    redisReply   *rep = NULL;
    const char   *argv[2];
    size_t        lens[2];
    char         *k, *end;
    int           rc = -1;

    if (st == NULL || gen == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "generation: no store or output");
        return -1;
    }
    *gen = 0;
    if (!rd_is(st)) {
        return store_fingerprint(st, gen, err);
    }
    rd = st->data;
    k = rd_key(rd, "info:", "generation");
    if (k == NULL) {
        rd_oom(err);
        return -1;
    }
    argv[0] = "GET";
    argv[1] = k;
    lens[0] = 3;
    lens[1] = strlen(k);
    rd_enter(rd);
    if (rd_simple(rd, &rep, 1, "generation", NULL, err, 2, argv, lens) == 0) {
        if (rep->type == REDIS_REPLY_NIL) {
            rc = 0;
        } else if (rep->type == REDIS_REPLY_STRING) {
            errno = 0;
            *gen = strtoull(rep->str, &end, 10);
            if (errno == 0 && end != rep->str && *end == '\0') {
                rc = 0;
            } else {
                acme_err_set(err, ACME_ERR_STORE, "redis store %s: generation: not a number", rd->display);
            }
        } else {
            acme_err_set(err, ACME_ERR_STORE, "redis store %s: generation: not a number", rd->display);
        }
    }
    rd_leave(rd);
    rd_reply_free(rep, 0);
    free(k);
    return rc;
}

/* ---- change notification ---- */

/* ---- challenge announcements ---- */

#define RD_ACK_TTL  "600"

static int
ka_valid(const char *s)
{
    size_t  i;

    for (i = 0; s[i] != '\0'; i++) {
        if (!(isalnum((unsigned char) s[i]) || s[i] == '-' || s[i] == '_' || s[i] == '.') || i >= 4096) {
            return 0;
        }
    }
    return i > 0;
}

/* 0 when type and key name a challenge as the store keys it (an SNI already lowercased: other nodes use
 * the key as it comes). */
static int
chal_check(const char *type, const char *key, acme_err_t *err)
{
    char  *k, q[140];
    int    same;

    k = acme_store_challenge_key(type, key, err);
    if (k == NULL) {
        return -1;
    }
    same = strcmp(k + strlen("challenges/") + strlen(type) + 1, key) == 0;
    free(k);
    if (!same) {
        acme_err_set(err, ACME_ERR_INPUT, "challenge: %s key \"%s\" is not in its normal form", type,
                     acme_quote(key, q, sizeof(q), 120));
        return -1;
    }
    return 0;
}

/* The acknowledgement counter of a challenge: 1 with *k set (malloc'd), 0 not Redis (nobody to count), -1. */
static int
ack_key(acme_store_t *st, const char *type, const char *key, char **k, acme_err_t *err)
{
    rd_t  *rd;

    *k = NULL;
    if (st == NULL || chal_check(type, key, err) != 0) {
        return -1;
    }
    if (!rd_is(st)) {
        return 0;
    }
    rd = st->data;
    *k = acme_sprintf("%sacks:%s/%s", rd->prefix, type, key);
    if (*k == NULL) {
        rd_oom(err);
        return -1;
    }
    return 1;
}

int
acme_store_challenge_announce(acme_store_t *st, int add, const char *type, const char *key,
    const acme_ident_t *id, const char *key_authz, acme_err_t *err)
{
    rd_t        *rd;
    redisReply  *rep = NULL;
    char        *chan = NULL, *m = NULL, *ack = NULL;
    int          rc = -1;

    if (add && (id == NULL || id->value == NULL || key_authz == NULL || !ka_valid(key_authz))) {
        acme_err_set(err, ACME_ERR_INPUT, "challenge %s %s: no identifier or an invalid key authorization",
                     type ? type : "", key ? key : "");
        return -1;
    }
    rc = ack_key(st, type, key, &ack, err);
    if (rc <= 0) {
        return rc;          /* a directory: every process reads it itself */
    }
    rc = -1;
    rd = st->data;
    chan = rd_key(rd, NULL, "challenges");
    m = add ? acme_sprintf("a %s %s %s %s %s", type, key, acme_ident_type_name(id->type), id->value, key_authz)
            : acme_sprintf("d %s %s", type, key);
    if (chan == NULL || ack == NULL || m == NULL) {
        rd_oom(err);
        goto done;
    }
    if (rd->key != NULL) {
        char  mac[ACME_AEAD_MAC_MAX], *signed_m;

        if (acme_aead_mac(rd->key, "announce", "challenges", m, strlen(m), mac) != 0) {
            acme_err_set(err, ACME_ERR_INTERNAL, "redis store %s: announce: HMAC-SHA256 failed", rd->display);
            goto done;
        }
        signed_m = acme_sprintf("%s %s", m, mac);
        if (signed_m == NULL) {
            rd_oom(err);
            goto done;
        }
        free(m);
        m = signed_m;
    }
    rd_enter(rd);
    if (rd_simple_str(rd, &rep, 1, "announce", err, 2, "DEL", ack) == 0) {
        rd_reply_free(rep, 0);
        rep = NULL;
        if (rd_simple_str(rd, &rep, 1, "announce", err, 3, "PUBLISH", chan, m) == 0) {
            if (rep->type == REDIS_REPLY_INTEGER) {
                rc = rep->integer > INT_MAX ? INT_MAX : (int) rep->integer;
            } else {
                acme_err_set(err, ACME_ERR_STORE, "redis store %s: announce: unexpected reply", rd->display);
            }
        }
    }
    rd_leave(rd);
    rd_reply_free(rep, 0);
done:
    free(chan);
    free(ack);
    free(m);
    return rc;
}

int
acme_store_challenge_ack(acme_store_t *st, const char *type, const char *key, acme_err_t *err)
{
    rd_t        *rd;
    redisReply  *rep = NULL;
    char        *ack;
    int          rc;

    rc = ack_key(st, type, key, &ack, err);
    if (rc <= 0) {
        return rc;
    }
    rc = -1;
    rd = st->data;
    rd_enter(rd);
    if (rd_simple_str(rd, &rep, 0, "acknowledge", err, 2, "INCR", ack) == 0) {
        rd_reply_free(rep, 0);
        rep = NULL;
        if (rd_simple_str(rd, &rep, 1, "acknowledge", err, 3, "EXPIRE", ack, RD_ACK_TTL) == 0) {
            rc = 0;
        }
    }
    rd_leave(rd);
    rd_reply_free(rep, 0);
    free(ack);
    return rc;
}

int
acme_store_challenge_acks(acme_store_t *st, const char *type, const char *key, long *n, acme_err_t *err)
{
    rd_t        *rd;
    redisReply  *rep = NULL;
    char        *ack, *end;
    int          rc;

    if (n == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "acknowledgements: no output");
        return -1;
    }
    *n = 0;
    rc = ack_key(st, type, key, &ack, err);
    if (rc <= 0) {
        return rc;
    }
    rc = -1;
    rd = st->data;
    rd_enter(rd);
    if (rd_simple_str(rd, &rep, 1, "acknowledgements", err, 2, "GET", ack) == 0) {
        if (rep->type == REDIS_REPLY_NIL) {
            rc = 0;
        } else if (rep->type == REDIS_REPLY_STRING) {
            *n = strtol(rep->str, &end, 10);
            rc = (end != rep->str && *end == '\0') ? 0 : -1;
        }
        if (rc != 0) {
            acme_err_set(err, ACME_ERR_STORE, "redis store %s: acknowledgements: not a number", rd->display);
        }
    }
    rd_leave(rd);
    rd_reply_free(rep, 0);
    free(ack);
    return rc;
}

int
acme_store_challenge_msg_parse(const char *msg, acme_challenge_msg_t *m, acme_err_t *err)
{
    char        *f[6], *save = NULL, *t;
    size_t       nf = 0;
    acme_err_t   e;

    memset(m, 0, sizeof(*m));
    if (msg == NULL || strlen(msg) > 8192 || (m->buf = acme_strdup(msg)) == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "challenge announcement: missing or too long");
        return -1;
    }
    for (t = strtok_r(m->buf, " ", &save); t != NULL; t = strtok_r(NULL, " ", &save)) {
        if (nf == 6) {
            goto bad;
        }
        f[nf++] = t;
    }
    if (nf < 3 || strlen(f[0]) != 1 || (f[0][0] == 'a' && nf != 6) || (f[0][0] == 'd' && nf != 3)
        || (f[0][0] != 'a' && f[0][0] != 'd'))
    {
        goto bad;
    }
    m->add = f[0][0] == 'a';
    m->type = f[1];
    m->key = f[2];
    if (chal_check(m->type, m->key, err) != 0) {
        acme_err_prefix(err, "challenge announcement");
        acme_store_challenge_msg_free(m);
        return -1;
    }
    if (m->add) {
        acme_ident_type_t  it;
        char              *sni;

        if (acme_ident_type_from_name(f[3], &it) != 0 || acme_ident_parse(f[4], &m->id, &e) != 0
            || m->id.type != it || m->id.value[0] == '*' || !ka_valid(f[5]))
        {
            goto bad;
        }
        if (strcmp(m->type, "tls-alpn-01") == 0) {
            sni = acme_ident_sni(&m->id);
            if (sni == NULL || strcmp(sni, m->key) != 0) {
                free(sni);
                goto bad;
            }
            free(sni);
        }
        m->key_authz = f[5];
    }
    return 0;
bad:
    acme_err_set(err, ACME_ERR_INPUT, "challenge announcement: malformed");
    acme_store_challenge_msg_free(m);
    return -1;
}

void
acme_store_challenge_msg_free(acme_challenge_msg_t *m)
{
    if (m != NULL) {
        acme_ident_free(&m->id);
        free(m->buf);
        memset(m, 0, sizeof(*m));
    }
}

static acme_store_watch_t *watch_open(acme_store_t *st, int challenges, acme_err_t *err);

acme_store_watch_t *
acme_store_watch_open(acme_store_t *st, acme_err_t *err)
{
    return watch_open(st, 0, err);
}

acme_store_watch_t *
acme_store_watch_open_challenges(acme_store_t *st, acme_err_t *err)
{
    return watch_open(st, 1, err);
}

static acme_store_watch_t *
watch_open(acme_store_t *st, int challenges, acme_err_t *err)
{
    acme_store_watch_t  *w;
    rd_t                *rd;
    acme_buf_t           b = { NULL, 0, 0 };
    redisReply          *rep[2] = { NULL, NULL };
    char                *chan, *cchan, eb[220];
    int                  fresh, i, n = challenges ? 2 : 1, ok = 1;

    if (!rd_is(st)) {
        acme_err_set(err, ACME_ERR_CONFIG, "the %s store has no change notification: poll "
                     "acme_store_generation()", st ? acme_store_backend(st) : "(no)");
        return NULL;
    }
    rd = st->data;
    w = calloc(1, sizeof(*w));
    chan = rd_key(rd, NULL, "events");
    cchan = rd_key(rd, NULL, "challenges");
    if (w == NULL || chan == NULL || cchan == NULL
        || (challenges ? cmd_str(&b, 3, "SUBSCRIBE", chan, cchan) : cmd_str(&b, 2, "SUBSCRIBE", chan)) != 0)
    {
        free(w);
        free(chan);
        free(cchan);
        cmd_free(&b);
        rd_oom(err);
        return NULL;
    }
    rc_init(&w->c);
    w->rd = rd;
    w->messages = challenges;
    w->chal_chan = cchan;
    if (rd_ensure(rd, &w->c, &fresh, err) != 0
        || rc_command_raw(&w->c, rd->command_ms, b.data, b.len, n, rep, err) != 0)
    {
        rd_err_context(rd, err, "subscribe", chan + strlen(rd->prefix));
        rc_close(&w->c);
        free(w);
        free(chan);
        free(cchan);
        cmd_free(&b);
        return NULL;
    }
    cmd_free(&b);
    for (i = 0; i < n; i++) {
        if (ok && (rep[i]->type != REDIS_REPLY_ARRAY || rep[i]->elements < 1
                   || rep[i]->element[0]->type != REDIS_REPLY_STRING
                   || strcmp(rep[i]->element[0]->str, "subscribe") != 0))
        {
            acme_err_set(err, ACME_ERR_STORE, "redis store %s: subscribe %s: %s", rd->display, chan,
                         rep[i]->type == REDIS_REPLY_ERROR ? rd_errstr(rep[i], eb, sizeof(eb))
                                                           : "unexpected reply");
            ok = 0;
        }
        rd_reply_free(rep[i], 0);
    }
    free(chan);
    if (!ok) {
        rc_close(&w->c);
        free(cchan);
        free(w);
        return NULL;
    }
    pthread_mutex_lock(&rd->mu);
    rd->refs++;
    pthread_mutex_unlock(&rd->mu);
    return w;
}

int
acme_store_watch_fd(const acme_store_watch_t *w)
{
    return w ? w->c.fd : -1;
}

/*
 * With a storage key, an announcement must end in " MAC" over the rest: 0 with the MAC cut off msg, -1
 * (reported once) when it does not authenticate. Without a key, 0 (msg as it came).
 */
static int
watch_msg_check(rd_t *rd, char *msg)
{
    char        *sp;
    const char  *why = NULL;
    acme_err_t   e;

    pthread_mutex_lock(&rd->mu);
    if (rd->key == NULL) {
        /* no key: nothing can be checked; a MAC a keyed node added is cut off */
        sp = strrchr(msg, ' ');
        if (sp != NULL && strncmp(sp + 1, ACME_AEAD_MAC_MAGIC, ACME_AEAD_MAC_MAGIC_LEN) == 0) {
            *sp = '\0';
        }
    } else {
        sp = strrchr(msg, ' ');
        if (sp == NULL || strncmp(sp + 1, ACME_AEAD_MAC_MAGIC, ACME_AEAD_MAC_MAGIC_LEN) != 0) {
            why = "an announcement without a MAC, though a storage key is configured";
        } else if (acme_aead_mac_check(rd->key, "announce", "challenges", msg, (size_t) (sp - msg), sp + 1,
                                       strlen(sp + 1), &e) != 0)
        {
            why = e.msg;
        } else {
            *sp = '\0';
        }
        if (why != NULL) {
            rd_forged(rd, "challenge announcement", msg, strlen(msg), why);
        }
    }
    pthread_mutex_unlock(&rd->mu);
    return why == NULL ? 0 : -1;
}

int
acme_store_watch_next(acme_store_watch_t *w, char **name, acme_err_t *err)
{
    void        *rp = NULL;
    redisReply  *rep;
    short        want;
    int          r;
    acme_err_t   e;

    if (name != NULL) {
        *name = NULL;
    }
    if (w == NULL || name == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "watch: no watch or output");
        return -1;
    }
    if (w->c.fd < 0) {
        acme_err_set(err, ACME_ERR_STORE, "redis store %s: events: the connection is closed", w->rd->display);
        return -1;
    }
    for ( ;; ) {
        if (redisReaderGetReply(w->c.reader, &rp) != REDIS_OK) {
            acme_err_set(err, ACME_ERR_STORE, "redis store %s: events: protocol error: %s", w->rd->display,
                         w->c.reader->errstr);
            rc_close(&w->c);
            return -1;
        }
        if (rp != NULL) {
            rep = rp;
            if (w->messages && rep->type == REDIS_REPLY_ARRAY && rep->elements == 3
                && rep->element[0]->type == REDIS_REPLY_STRING && strcmp(rep->element[0]->str, "message") == 0
                && rep->element[1]->type == REDIS_REPLY_STRING && strcmp(rep->element[1]->str, w->chal_chan) == 0
                && rep->element[2]->type == REDIS_REPLY_STRING && rep->element[2]->len > 0
                && strlen(rep->element[2]->str) == rep->element[2]->len)
            {
                if (watch_msg_check(w->rd, rep->element[2]->str) != 0) {
                    freeReplyObject(rep);
                    continue;
                }
                *name = acme_strdup(rep->element[2]->str);
                freeReplyObject(rep);
                if (*name == NULL) {
                    rd_oom(err);
                    return -1;
                }
                return 2;
            }
            if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 3
                && rep->element[0]->type == REDIS_REPLY_STRING && strcmp(rep->element[0]->str, "message") == 0
                && rep->element[2]->type == REDIS_REPLY_STRING
                && strlen(rep->element[2]->str) == rep->element[2]->len
                && acme_store_name_check(rep->element[2]->str, "name", &e) == 0)
            {
                *name = acme_strdup(rep->element[2]->str);
                freeReplyObject(rep);
                if (*name == NULL) {
                    rd_oom(err);
                    return -1;
                }
                return 1;
            }
            freeReplyObject(rep);
            continue;
        }
        if (w->c.pid != getpid()) {
            acme_err_set(err, ACME_ERR_STORE, "redis store %s: events: the watch belongs to the parent process",
                         w->rd->display);
            return -1;
        }
        r = rc_read_some(&w->c, &want, err);
        if (r < 0) {
            acme_err_prefix(err, "redis store %s: events", w->rd->display);
            if (err != NULL) {
                err->kind = ACME_ERR_STORE;
            }
            rc_close(&w->c);
            return -1;
        }
        if (r == 0) {
            return 0;
        }
    }
}

void
acme_store_watch_close(acme_store_watch_t *w)
{
    if (w == NULL) {
        return;
    }
    if (w->c.fd >= 0 && w->c.pid != getpid()) {
        if (w->c.ssl != NULL) {
            SSL_free(w->c.ssl);
            w->c.ssl = NULL;
        }
    }
    rc_close(&w->c);
    rd_unref(w->rd);
    free(w->chal_chan);
    free(w);
}

/* ---- migration ---- */

/* Is key secret in st? dir: the filesystem root when st is a directory store (then the file mode tells). */
static int
mig_secret(acme_store_t *st, const char *dir, const char *key, int *secret, acme_err_t *err)
{
    struct stat  sb;
    char        *path, *k;
    const char  *base;
    redisReply  *rep = NULL;
    const char  *argv[3];
    size_t       lens[3];
    rd_t        *rd;

    *secret = 0;
    if (dir != NULL) {
        path = acme_sprintf("%s/%s", dir, key);
        if (path == NULL) {
            rd_oom(err);
            return -1;
        }
        if (lstat(path, &sb) != 0) {
            acme_err_set(err, ACME_ERR_STORE, "cannot stat %s: %s", path, strerror(errno));
            free(path);
            return -1;
        }
        free(path);
        *secret = (sb.st_mode & 077) == 0;
        return 0;
    }
    if (rd_is(st)) {
        rd = st->data;
        k = rd_key(rd, "info:", "secrets");
        if (k == NULL) {
            rd_oom(err);
            return -1;
        }
        argv[0] = "SISMEMBER";
        argv[1] = k;
        argv[2] = key;
        lens[0] = 9;
        lens[1] = strlen(k);
        lens[2] = strlen(key);
        rd_enter(rd);
        if (rd_simple(rd, &rep, 1, "secret?", key, err, 3, argv, lens) != 0) {
            rd_leave(rd);
            free(k);
            return -1;
        }
        rd_leave(rd);
        free(k);
        /* the layout's secret names count whatever the set says (Redis may have been written to) */
        *secret = (rep->type == REDIS_REPLY_INTEGER && rep->integer == 1) || rd_secret_name(key);
        rd_reply_free(rep, 0);
        return 0;
    }
    /* unknown backend: the layout's secret files */
    base = strrchr(key, '/');
    base = base ? base + 1 : key;
    *secret = strcmp(base, "privkey.pem") == 0 || strcmp(base, "account.key") == 0
              || strcmp(base, "order.key") == 0;
    return 0;
}

typedef struct {
    acme_store_t                 *src;
    const char                   *src_dir;
    acme_store_t                 *dst;
    acme_store_migrate_stats_t   *stats;
    int                           skip_challenges;
} mig_t;

static void
mig_items_free(acme_store_item_t *items, size_t n)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        free((char *) items[i].key);
        if (items[i].data != NULL) {
            acme_free_secret((void *) items[i].data, items[i].len);
        }
    }
}

static void
mig_count(acme_store_migrate_stats_t *s, const char *key, int secret)
{
    const char  *base = strrchr(key, '/');

    base = base ? base + 1 : key;
    s->keys++;
    s->secrets += secret != 0;
    if (strncmp(key, "accounts/", 9) == 0 && strcmp(base, "account.key") == 0) {
        s->accounts++;
    } else if (strncmp(key, "certs/", 6) == 0 && strcmp(base, "fullchain.pem") == 0) {
        s->certs++;
    } else if (strncmp(key, "certs/", 6) == 0 && strcmp(base, "order.json") == 0) {
        s->orders++;
    } else if (strncmp(key, "challenges/", 11) == 0) {
        s->challenges++;
    }
}

static int
mig_walk(mig_t *m, const char *prefix, int depth, acme_err_t *err)
{
    char                **names = NULL, **sub = NULL, *k, *data = NULL, *path;
    size_t                n = 0, nsub = 0, i, nitems = 0, len = 0;
    acme_store_item_t    *items = NULL;
    struct stat           sb;
    int                   rc = -1, r, is_dir, is_file, secret;

    if (depth > RD_WALK_DEPTH) {
        acme_err_set(err, ACME_ERR_STORE, "%s: nested too deeply", prefix);
        return -1;
    }
    if (m->src->ops->list(m->src, prefix, &names, &n, err) != 0) {
        return -1;
    }
    if (n > 0) {
        items = calloc(n, sizeof(*items));
        if (items == NULL) {
            rd_oom(err);
            goto done;
        }
    }
    for (i = 0; i < n; i++) {
        if (m->skip_challenges && prefix[0] == '\0' && strcmp(names[i], "challenges") == 0) {
            continue;
        }
        k = prefix[0] ? acme_sprintf("%s/%s", prefix, names[i]) : acme_strdup(names[i]);
        if (k == NULL) {
            rd_oom(err);
            goto done;
        }
        if (m->src_dir != NULL) {
            path = acme_sprintf("%s/%s", m->src_dir, k);
            if (path == NULL || lstat(path, &sb) != 0) {
                acme_err_set(err, ACME_ERR_STORE, "cannot stat %s: %s", path ? path : k, strerror(errno));
                free(path);
                free(k);
                goto done;
            }
            free(path);
            is_dir = S_ISDIR(sb.st_mode);
            is_file = S_ISREG(sb.st_mode);
        } else {
            is_dir = 1;
            is_file = 1;
        }
        if (is_dir) {
            if (m->src_dir == NULL) {
                if (m->src->ops->list(m->src, k, &sub, &nsub, err) != 0) {
                    free(k);
                    goto done;
                }
                acme_store_list_free(sub, nsub);
                sub = NULL;
                if (nsub == 0) {
                    is_dir = 0;
                }
            }
            if (is_dir && mig_walk(m, k, depth + 1, err) != 0) {
                free(k);
                goto done;
            }
        }
        if (is_file) {
            r = m->src->ops->get(m->src, k, &data, &len, err);
            if (r < 0) {
                free(k);
                goto done;
            }
            if (r == 1) {
                free(k);
                continue;
            }
            if (mig_secret(m->src, m->src_dir, k, &secret, err) != 0) {
                acme_free_secret(data, len);
                free(k);
                goto done;
            }
            items[nitems].key = k;
            items[nitems].data = data;
            items[nitems].len = len;
            items[nitems].secret = secret;
            nitems++;
            data = NULL;
            continue;
        }
        free(k);
    }
    /* a directory's files together: a certificate, its key and its metadata arrive at once */
    for (i = 0; i < nitems; i += RD_COMMIT_MAX) {
        size_t cnt = nitems - i > RD_COMMIT_MAX ? RD_COMMIT_MAX : nitems - i;

        if (m->dst->ops->commit(m->dst, items + i, cnt, err) != 0) {
            goto done;
        }
    }
    for (i = 0; i < nitems; i++) {
        mig_count(m->stats, items[i].key, items[i].secret);
    }
    rc = 0;
done:
    mig_items_free(items, nitems);
    free(items);
    acme_store_list_free(names, n);
    return rc;
}

int
acme_store_migrate(const char *from, const char *from_key, const char *to, const char *to_key,
    acme_store_migrate_stats_t *stats, acme_err_t *err)
{
    acme_store_migrate_stats_t   s;
    acme_store_t                *src = NULL, *dst = NULL;
    mig_t                        m;
    char                        *sf = NULL;
    size_t                       fl, tl;
    int                          rc = -1;

    memset(&s, 0, sizeof(s));
    if (stats != NULL) {
        memset(stats, 0, sizeof(*stats));
    }
    if (from == NULL || to == NULL || from[0] == '\0' || to[0] == '\0') {
        acme_err_set(err, ACME_ERR_CONFIG, "migrate: give a source and a destination");
        return -1;
    }
    fl = strlen(from);
    tl = strlen(to);
    while (fl > 1 && from[fl - 1] == '/') {
        fl--;
    }
    while (tl > 1 && to[tl - 1] == '/') {
        tl--;
    }
    if (fl == tl && memcmp(from, to, fl) == 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "migrate: the source and the destination are the same");
        return -1;
    }
    src = acme_store_open(from, rd_is_redis_url(from) ? from_key : NULL, 0, err);
    if (src == NULL) {
        acme_err_prefix(err, "migrate: source");
        return -1;
    }
    dst = acme_store_open(to, rd_is_redis_url(to) ? to_key : NULL, ACME_STORE_CREATE, err);
    if (dst == NULL) {
        acme_err_prefix(err, "migrate: destination");
        goto done;
    }
    if (!rd_is(src)) {
        sf = acme_strndup(from, fl);
        if (sf == NULL) {
            rd_oom(err);
            goto done;
        }
    }
    m.src = src;
    m.src_dir = sf;
    m.dst = dst;
    m.stats = &s;
    m.skip_challenges = 0;
    rc = mig_walk(&m, "", 0, err);
    if (rc != 0) {
        acme_err_prefix(err, "migrate");
    }
done:
    if (stats != NULL) {
        *stats = s;
    }
    free(sf);
    acme_store_close(src);
    acme_store_close(dst);
    return rc;
}

int
acme_store_upgrade(const char *url, const char *key_file, acme_store_migrate_stats_t *stats, acme_err_t *err)
{
    acme_store_migrate_stats_t   s;
    acme_store_t                *src = NULL, *dst = NULL;
    mig_t                        m;
    int                          rc = -1;

    memset(&s, 0, sizeof(s));
    if (stats != NULL) {
        memset(stats, 0, sizeof(*stats));
    }
    if (url == NULL || !rd_is_redis_url(url) || key_file == NULL || key_file[0] == '\0') {
        acme_err_set(err, ACME_ERR_CONFIG, "upgrade: a redis:// storage and its storage key are needed");
        return -1;
    }
    /* two connections to the same store: one reads as it is, one writes sealed and signed */
    src = acme_store_open(url, key_file, 0, err);
    if (src == NULL) {
        acme_err_prefix(err, "upgrade");
        return -1;
    }
    ((rd_t *) src->data)->unauthenticated_ok = 1;
    dst = acme_store_open(url, key_file, 0, err);
    if (dst == NULL) {
        acme_err_prefix(err, "upgrade");
        goto done;
    }
    m.src = src;
    m.src_dir = NULL;
    m.dst = dst;
    m.stats = &s;
    m.skip_challenges = 1;
    rc = mig_walk(&m, "", 0, err);
    if (rc != 0) {
        acme_err_prefix(err, "upgrade");
    }
done:
    if (stats != NULL) {
        *stats = s;
    }
    acme_store_close(src);
    acme_store_close(dst);
    return rc;
}
