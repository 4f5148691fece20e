/*
 * The Redis transport: hiredis (0.14 in Debian 12) formats commands and parses replies; the socket, TLS
 * (OpenSSL) and the timeouts are ours: connect 2 s, each command 5 s. A failed connection is dropped and the
 * next operation connects again. After a connect or a command that failed slowly (a timeout: a host that
 * drops packets, a server that hangs), operations fail at once for 1 s, so that a caller's loop does not wait
 * out each timeout; a failure at once (refused, reset, closed) is not held against the next operation, which
 * may find the server back (an HTTP-01 look-up the CA makes right after a Redis restart must not fail on this
 * process's earlier refusals). An idempotent operation that fails at once on a connection that had been idle
 * is retried once on a new connection.
 * The password never appears in messages.
 */
#include "acme_redis.h"
#include "acme_store.h"

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
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <hiredis/sds.h>

#define RD_DEFAULT_PREFIX    "acme:"
#define RD_DEFAULT_PORT      "6379"
#define RD_CONNECT_MS        2000
#define RD_COMMAND_MS        5000
#define RD_LEASE_MS          30000
#define RD_FAILFAST_MS       1000
#define RD_SLOW_FAIL_MS      100        /* a failure this long (or longer) starts the fail-fast */
#define RD_PREFIX_MAX        100
#define RD_SECRET_FILE_MAX   4096

/* ---- small helpers ---- */

long long
acme_redis_now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
acme_redis_oom(acme_err_t *err)
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

void
acme_redis_reply_free(redisReply *r, int wipe)
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
const char *
acme_redis_errstr(const redisReply *r, char *buf, size_t size)
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
            hi = acme_hexval(s[i + 1]);
            lo = acme_hexval(s[i + 2]);
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
        acme_redis_oom(err);
        return -1;
    }
    *outlen = have;
    return 0;
}

int
acme_redis_url_is(const char *s)
{
    return strncmp(s, "redis://", 8) == 0 || strncmp(s, "rediss://", 9) == 0;
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
        acme_redis_oom(err);
        return -1;
    }
    return 0;
}

static int
rd_parse_query(acme_redis_t *rd, const char *q, char **password_file, acme_err_t *err)
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
int
acme_redis_parse_url(acme_redis_t *rd, const char *url, acme_err_t *err)
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
        acme_redis_oom(err);
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
        acme_redis_oom(err);
        goto done;
    }
    rc = 0;
done:
    free(password_file);
    return rc;
}

char *
acme_redis_display_make(const acme_redis_t *rd)
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

int
acme_redis_tls_init(acme_redis_t *rd, acme_err_t *err)
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

void
acme_redis_conn_init(acme_redis_conn_t *c)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

void
acme_redis_conn_close(acme_redis_conn_t *c)
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
rc_wait(acme_redis_conn_t *c, short ev, long long deadline, const char *what, acme_err_t *err)
{
    struct pollfd  pfd;
    long long      left;
    int            n;

    for ( ;; ) {
        left = deadline - acme_redis_now();
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
rc_tls_fail(acme_redis_conn_t *c, int rc, const char *what, acme_err_t *err)
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
rc_write(acme_redis_conn_t *c, const char *p, size_t len, long long deadline, acme_err_t *err)
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
int
acme_redis_conn_read(acme_redis_conn_t *c, short *want, acme_err_t *err)
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
rc_reply(acme_redis_conn_t *c, redisReply **out, long long deadline, acme_err_t *err)
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
        r = acme_redis_conn_read(c, &want, err);
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
rc_alive(acme_redis_conn_t *c)
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
        if (acme_redis_conn_read(c, &want, &e) != 0) {
            return 0;
        }
        return c->reader->pos == c->reader->len;
    }
    n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

int
acme_redis_conn_command(acme_redis_conn_t *c, long command_ms, const char *cmd, size_t len, int ncmd,
    redisReply **rep, acme_err_t *err)
{
    long long  deadline = acme_redis_now() + command_ms;
    int        i, j;

    if (rc_write(c, cmd, len, deadline, err) != 0) {
        return -1;
    }
    for (i = 0; i < ncmd; i++) {
        if (rc_reply(c, &rep[i], deadline, err) != 0) {
            for (j = 0; j < i; j++) {
                acme_redis_reply_free(rep[j], 1);
                rep[j] = NULL;
            }
            return -1;
        }
    }
    rd_reader_wipe(c->reader);
    return 0;
}

/* Appends one command (binary-safe arguments) to b. */
int
acme_redis_cmd_argv(acme_buf_t *b, int argc, const char **argv, const size_t *lens)
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
int
acme_redis_cmd_str(acme_buf_t *b, int argc, ...)
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
    return acme_redis_cmd_argv(b, argc, argv, lens);
}

void
acme_redis_cmd_free(acme_buf_t *b)
{
    if (b->data != NULL) {
        OPENSSL_cleanse(b->data, b->cap);
    }
    acme_buf_free(b);
}

/*
 * The Redis host's addresses as the server's resolver gave them (nginx's "resolver"), used instead of
 * getaddrinfo() on the name. One host: one acme_storage per server. Set and read by the thread that runs
 * the core.
 */
static char  *rd_host_name;
static char  *rd_host_addrs;
static char  *rd_host_error;

int
acme_store_redis_host_addresses(const char *host, const char *addrs, const char *error)
{
    free(rd_host_name);
    free(rd_host_addrs);
    free(rd_host_error);
    rd_host_name = NULL;
    rd_host_addrs = NULL;
    rd_host_error = NULL;
    if (host == NULL) {
        return 0;
    }
    rd_host_name = acme_strdup(host);
    rd_host_addrs = addrs ? acme_strdup(addrs) : NULL;
    rd_host_error = acme_strdup(error ? error : "no address");
    if (rd_host_name == NULL || (addrs != NULL && rd_host_addrs == NULL) || rd_host_error == NULL) {
        return -1;
    }
    return 0;
}

char *
acme_store_redis_host(const char *url)
{
    acme_redis_t     rd;
    acme_err_t       err;
    char            *host = NULL;
    unsigned char    ip[sizeof(struct in6_addr)];

    if (url == NULL || !acme_redis_url_is(url)) {
        return NULL;
    }
    acme_redis_init(&rd);
    if (acme_redis_parse_url(&rd, url, &err) == 0 && rd.host != NULL && rd.host[0] != '\0'
        && inet_pton(AF_INET, rd.host, ip) != 1 && inet_pton(AF_INET6, rd.host, ip) != 1)
    {
        host = acme_strdup(rd.host);
    }
    acme_redis_free(&rd);
    return host;
}

/* getaddrinfo() of the host, or of the addresses given for it (numeric: no DNS); *nres heads in res[]. */
static int
rc_addrinfo(acme_redis_t *rd, struct addrinfo **res, size_t max, size_t *nres, acme_err_t *err)
{
    struct addrinfo   hints, *tail;
    char             *list, *a, *save = NULL;
    int               gai;

    *nres = 0;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;

    if (rd_host_name == NULL || strcasecmp(rd_host_name, rd->host) != 0) {
        gai = getaddrinfo(rd->host, rd->port, &hints, &res[0]);
        if (gai != 0) {
            acme_err_set(err, ACME_ERR_STORE, "cannot resolve %s: %s", rd->host, gai_strerror(gai));
            return -1;
        }
        *nres = 1;
        return 0;
    }
    if (rd_host_addrs == NULL) {
        acme_err_set(err, ACME_ERR_STORE, "%s", rd_host_error);
        return -1;
    }
    list = acme_strdup(rd_host_addrs);
    if (list == NULL) {
        acme_redis_oom(err);
        return -1;
    }
    hints.ai_flags = AI_NUMERICHOST;
    for (a = strtok_r(list, ",", &save); a != NULL && *nres < max; a = strtok_r(NULL, ",", &save)) {
        if (a[0] == '[' && a[strlen(a) - 1] == ']') {
            a[strlen(a) - 1] = '\0';
            a++;
        }
        if (getaddrinfo(a, rd->port, &hints, &res[*nres]) != 0) {
            continue;
        }
        if (*nres > 0) {
            /* one chain for the connect loop; cut again before freeaddrinfo() */
            for (tail = res[*nres - 1]; tail->ai_next != NULL; tail = tail->ai_next) {
            }
            tail->ai_next = res[*nres];
        }
        (*nres)++;
    }
    free(list);
    if (*nres == 0) {
        acme_err_set(err, ACME_ERR_STORE, "cannot resolve %s: no usable address in \"%s\"", rd->host,
                     rd_host_addrs);
        return -1;
    }
    return 0;
}

static void
rc_freeaddrinfo(struct addrinfo **res, size_t nres)
{
    size_t            i;
    struct addrinfo  *ai;

    for (i = 0; i + 1 < nres; i++) {
        for (ai = res[i]; ai->ai_next != res[i + 1]; ai = ai->ai_next) {
        }
        ai->ai_next = NULL;
    }
    for (i = 0; i < nres; i++) {
        freeaddrinfo(res[i]);
    }
}

static int
rc_open(acme_redis_t *rd, acme_redis_conn_t *c, acme_err_t *err)
{
    struct addrinfo  *res[16], *ai;
    size_t            nres;
    long long         deadline = acme_redis_now() + rd->connect_ms;
    int               fd = -1, r, se, one = 1, soerr;
    socklen_t         sl;
    char              why[300] = "no address";
    const char       *sni;
    unsigned char     ipbuf[sizeof(struct in6_addr)];
    redisReply       *rep[2] = { NULL, NULL };
    acme_buf_t        b = { NULL, 0, 0 };
    int               ncmd = 0, i;
    rd_nosig_t        s;

    acme_redis_conn_close(c);
    if (rc_addrinfo(rd, res, sizeof(res) / sizeof(res[0]), &nres, err) != 0) {
        return -1;
    }
    for (ai = res[0]; ai != NULL; ai = ai->ai_next) {
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
        if (acme_redis_now() >= deadline) {
            break;
        }
    }
    rc_freeaddrinfo(res, nres);
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
        acme_redis_conn_close(c);
        acme_redis_oom(err);
        return -1;
    }

    if (rd->tls) {
        c->ssl = SSL_new(rd->ssl_ctx);
        if (c->ssl == NULL || SSL_set_fd(c->ssl, fd) != 1) {
            acme_err_ssl(err, "cannot set up TLS");
            acme_redis_conn_close(c);
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
            acme_redis_conn_close(c);
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
                    acme_redis_conn_close(c);
                    return -1;
                }
                continue;
            }
            rc_tls_fail(c, r, "TLS handshake", err);
            acme_redis_conn_close(c);
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
        if (acme_redis_cmd_argv(&b, argc, argv, lens) != 0) {
            goto nomem;
        }
        ncmd++;
    }
    if (rd->db != 0) {
        char dbs[16];

        snprintf(dbs, sizeof(dbs), "%d", rd->db);
        if (acme_redis_cmd_str(&b, 2, "SELECT", dbs) != 0) {
            goto nomem;
        }
        ncmd++;
    }
    if (ncmd > 0) {
        if (acme_redis_conn_command(c, rd->command_ms, b.data, b.len, ncmd, rep, err) != 0) {
            acme_redis_cmd_free(&b);
            acme_redis_conn_close(c);
            return -1;
        }
        acme_redis_cmd_free(&b);
        for (i = 0; i < ncmd; i++) {
            if (rep[i]->type == REDIS_REPLY_ERROR) {
                char eb[220];

                acme_err_set(err, ACME_ERR_STORE, "%s refused: %s",
                             i == 0 && rd->password != NULL ? "authentication" : "SELECT",
                             acme_redis_errstr(rep[i], eb, sizeof(eb)));
                for (i = 0; i < ncmd; i++) {
                    acme_redis_reply_free(rep[i], 0);
                }
                acme_redis_conn_close(c);
                return -1;
            }
        }
        for (i = 0; i < ncmd; i++) {
            acme_redis_reply_free(rep[i], 0);
        }
    }
    return 0;

nomem:
    acme_redis_cmd_free(&b);
    acme_redis_conn_close(c);
    acme_redis_oom(err);
    return -1;
}

/* ---- running commands ---- */

void
acme_redis_err_context(acme_redis_t *rd, acme_err_t *err, const char *op, const char *key)
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

/* A failure that took since started: when slow, c's operations fail at once for a while (err's message). */
static void
rc_failed(acme_redis_conn_t *c, long long started, const acme_err_t *err)
{
    /* only a slow failure is worth not repeating: a refusal costs nothing, and the next try may succeed */
    if (acme_redis_now() - started < RD_SLOW_FAIL_MS) {
        return;
    }
    c->failed_at = acme_redis_now();
    if (err != NULL) {
        c->failed = *err;
    } else {
        acme_err_set(&c->failed, ACME_ERR_STORE, "failed a moment ago");
    }
}

/* Makes sure c is connected. *fresh: it is a new connection. */
int
acme_redis_ensure(acme_redis_t *rd, acme_redis_conn_t *c, int *fresh, acme_err_t *err)
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
    now = acme_redis_now();
    if (c->failed_at != 0 && now - c->failed_at < RD_FAILFAST_MS && now >= c->failed_at) {
        if (err != NULL) {
            *err = c->failed;
        }
        return -1;
    }
    c->failed_at = 0;
    if (rc_open(rd, c, err) != 0) {
        rc_failed(c, now, err);
        return -1;
    }
    *fresh = 1;
    return 0;
}

/*
 * Sends the ncmd commands in cmd and reads their replies. retry: the commands may run twice (an operation
 * that fails on a connection that had been idle runs again on a new one). Errors name op and key.
 */
int
acme_redis_run(acme_redis_t *rd, const acme_buf_t *cmd, int ncmd, redisReply **rep, int retry, const char *op,
    const char *key, acme_err_t *err)
{
    int        fresh, attempt;
    long long  started;

    for (attempt = 0; ; attempt++) {
        if (acme_redis_ensure(rd, &rd->c, &fresh, err) != 0) {
            acme_redis_err_context(rd, err, op, key);
            return -1;
        }
        started = acme_redis_now();
        if (acme_redis_conn_command(&rd->c, rd->command_ms, cmd->data, cmd->len, ncmd, rep, err) == 0) {
            return 0;
        }
        acme_redis_conn_close(&rd->c);
        rc_failed(&rd->c, started, err);
        if (fresh || !retry || attempt > 0) {
            acme_redis_err_context(rd, err, op, key);
            return -1;
        }
    }
}

/* One command; *out gets the reply (an error reply fails, with its text). */
int
acme_redis_simple(acme_redis_t *rd, redisReply **out, int retry, const char *op, const char *key, acme_err_t *err,
    int argc, const char **argv, const size_t *lens)
{
    acme_buf_t   b = { NULL, 0, 0 };
    redisReply  *rep = NULL;
    char         eb[220];

    *out = NULL;
    if (acme_redis_cmd_argv(&b, argc, argv, lens) != 0) {
        acme_redis_cmd_free(&b);
        acme_redis_oom(err);
        return -1;
    }
    if (acme_redis_run(rd, &b, 1, &rep, retry, op, key, err) != 0) {
        acme_redis_cmd_free(&b);
        return -1;
    }
    acme_redis_cmd_free(&b);
    if (rep->type == REDIS_REPLY_ERROR) {
        acme_err_set(err, ACME_ERR_STORE, "%s", acme_redis_errstr(rep, eb, sizeof(eb)));
        acme_redis_err_context(rd, err, op, key);
        acme_redis_reply_free(rep, 0);
        return -1;
    }
    *out = rep;
    return 0;
}

/* acme_redis_simple with NUL-terminated arguments (at most 4). */
int
acme_redis_simple_str(acme_redis_t *rd, redisReply **out, int retry, const char *op, acme_err_t *err, int argc, ...)
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
    return acme_redis_simple(rd, out, retry, op, NULL, err, argc < 4 ? argc : 4, argv, lens);
}

char *
acme_redis_key(acme_redis_t *rd, const char *kind, const char *key)
{
    return acme_sprintf("%s%s%s", rd->prefix, kind ? kind : "", key ? key : "");
}

/* ---- the settings ---- */

void
acme_redis_init(acme_redis_t *rd)
{
    memset(rd, 0, sizeof(*rd));
    rd->connect_ms = RD_CONNECT_MS;
    rd->command_ms = RD_COMMAND_MS;
    rd->lease_ms = RD_LEASE_MS;
    acme_redis_conn_init(&rd->c);
}

void
acme_redis_free(acme_redis_t *rd)
{
    acme_redis_conn_close(&rd->c);
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
}
