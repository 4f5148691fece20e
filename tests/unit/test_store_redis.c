/*
 * The Redis store backend, sealing, leases, change notification and migration, against a redis-server the
 * test starts on a free loopback port (skipped when redis-server is not installed).
 */
#include "unit.h"
#include "acme_store.h"
#include "acme_aead.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <hiredis/hiredis.h>

#define REDIS_SERVER  "/usr/bin/redis-server"
#define PASSWORD      "s3cret-Pa55word"

typedef struct {
    pid_t  pid;
    int    port;
    int    auth;
} server_t;

static server_t  srv;          /* plain */
static server_t  asrv;         /* with --requirepass */
static char      tmpdir[64];
static int       have_redis;
static int       prefix_no;

/* ---- helpers ---- */

static int
free_port(void)
{
    struct sockaddr_in  a;
    socklen_t           l = sizeof(a);
    int                 fd, port;

    fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *) &a, sizeof(a)) != 0
        || getsockname(fd, (struct sockaddr *) &a, &l) != 0)
    {
        fail_msg("free port: %s", strerror(errno));
    }
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static long long
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static redisContext *
raw_connect(server_t *s)
{
    struct timeval  tv = { 2, 0 };
    redisContext   *c = redisConnectWithTimeout("127.0.0.1", s->port, tv);
    redisReply     *r;

    if (c == NULL || c->err) {
        if (c) {
            redisFree(c);
        }
        return NULL;
    }
    if (s->auth) {
        r = redisCommand(c, "AUTH %s", PASSWORD);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            if (r) {
                freeReplyObject(r);
            }
            redisFree(c);
            return NULL;
        }
        freeReplyObject(r);
    }
    return c;
}

static void
server_start(server_t *s, int port, int auth)
{
    char   portbuf[16], logf[128];
    long long t0;
    redisContext *c;

    s->port = port ? port : free_port();
    s->auth = auth;
    snprintf(portbuf, sizeof(portbuf), "%d", s->port);
    snprintf(logf, sizeof(logf), "%s/redis-%d.log", tmpdir, s->port);
    s->pid = fork();
    if (s->pid == 0) {
        int fd = open(logf, O_WRONLY | O_CREAT | O_APPEND, 0600);

        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        if (auth) {
            execl(REDIS_SERVER, "redis-server", "--port", portbuf, "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--requirepass", PASSWORD, (char *) NULL);
        } else {
            execl(REDIS_SERVER, "redis-server", "--port", portbuf, "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", (char *) NULL);
        }
        _exit(127);
    }
    t0 = now_ms();
    for ( ;; ) {
        c = raw_connect(s);
        if (c != NULL) {
            redisFree(c);
            return;
        }
        if (now_ms() - t0 > 10000) {
            fail_msg("redis-server on port %d did not start (log %s)", s->port, logf);
        }
        sleep_ms(20);
    }
}

static void
server_stop(server_t *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
    }
}

static redisReply *
raw(server_t *s, const char *fmt, ...)
{
    redisContext  *c = raw_connect(s);
    redisReply    *r;
    va_list        ap;

    assert_non_null(c);
    va_start(ap, fmt);
    r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    assert_non_null(r);
    return r;
}

static char *
url_for(server_t *s, const char *extra)
{
    static char  buf[4][512];
    static int   i;

    i = (i + 1) % 4;
    snprintf(buf[i], sizeof(buf[i]), "redis://127.0.0.1:%d%s", s->port, extra ? extra : "");
    return buf[i];
}

/* A store with a fresh prefix: tests do not see each other's keys. */
static acme_store_t *
open_fresh(const char *params, const char *key_file, char *prefix_out)
{
    char          u[512], prefix[32];
    acme_store_t *st;
    acme_err_t    err;

    snprintf(prefix, sizeof(prefix), "t%d:", ++prefix_no);
    snprintf(u, sizeof(u), "redis://127.0.0.1:%d?prefix=%s%s%s", srv.port, prefix, params ? "&" : "",
             params ? params : "");
    st = acme_store_open(u, key_file, 0, &err);
    if (st == NULL) {
        fail_msg("open %s: %s", u, err.msg);
    }
    if (prefix_out != NULL) {
        strcpy(prefix_out, prefix);
    }
    return st;
}

static acme_store_t *
reopen(const char *prefix, const char *params, const char *key_file, acme_err_t *err)
{
    char u[512];

    snprintf(u, sizeof(u), "redis://127.0.0.1:%d?prefix=%s%s%s", srv.port, prefix, params ? "&" : "",
             params ? params : "");
    return acme_store_open(u, key_file, 0, err);
}

static void
check_value(acme_store_t *st, const char *key, const char *want)
{
    char       *d = NULL;
    size_t      len = 0;
    acme_err_t  err;
    int         rc;

    rc = acme_store_get(st, key, &d, &len, &err);
    if (want == NULL) {
        if (rc != 1) {
            fail_msg("%s: expected absent, got rc %d (%s)", key, rc, rc == 0 ? d : err.msg);
        }
        assert_null(d);
        return;
    }
    if (rc != 0) {
        fail_msg("%s: rc %d: %s", key, rc, rc < 0 ? err.msg : "absent");
    }
    assert_int_equal(len, strlen(want));
    assert_string_equal(d, want);
    free(d);
}

static void
check_list(acme_store_t *st, const char *prefix, const char *want)
{
    char       **names = NULL, got[1024] = "";
    size_t       n = 0, i;
    acme_err_t   err;

    if (st->ops->list(st, prefix, &names, &n, &err) != 0) {
        fail_msg("list %s: %s", prefix, err.msg);
    }
    for (i = 0; i < n; i++) {
        snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%s", i ? "," : "", names[i]);
    }
    acme_store_list_free(names, n);
    if (strcmp(got, want) != 0) {
        fail_msg("list \"%s\": got \"%s\", want \"%s\"", prefix ? prefix : "", got, want);
    }
}

static void
write_file(const char *path, const void *data, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t) len);
    close(fd);
    chmod(path, mode);
}

static char *
tmp_path(const char *name)
{
    static char  buf[4][256];
    static int   i;

    i = (i + 1) % 4;
    snprintf(buf[i], sizeof(buf[i]), "%s/%s", tmpdir, name);
    return buf[i];
}

static void
fill_meta(acme_certmeta_t *m, const char *name)
{
    acme_err_t err;

    memset(m, 0, sizeof(*m));
    m->name = (char *) name;
    m->ids = calloc(1, sizeof(acme_ident_t));
    assert_non_null(m->ids);
    assert_int_equal(acme_ident_parse(name, &m->ids[0], &err), 0);
    m->nids = 1;
    m->keyspec = ACME_KEYSPEC_DEFAULT;
    m->not_before = 1700000000;
    m->not_after = 1700000000 + 90 * 86400;
}

static void
free_meta(acme_certmeta_t *m)
{
    m->name = NULL;
    acme_certmeta_free(m);
}

static unsigned long long
generation(acme_store_t *st)
{
    unsigned long long  g = 0;
    acme_err_t          err;

    if (acme_store_generation(st, &g, &err) != 0) {
        fail_msg("generation: %s", err.msg);
    }
    return g;
}

#define NEED_REDIS() do { if (!have_redis) { skip(); } } while (0)

/* ---- tests ---- */

static void
test_url_parsing(void **state)
{
    acme_err_t     err;
    acme_store_t  *st;
    char          *r;

    (void) state;
    /* unknown scheme, bad port, unknown parameter, key file with a directory */
    assert_null(acme_store_open("http://x", NULL, 0, &err));
    assert_int_equal(err.kind, ACME_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "unknown scheme"));
    assert_null(acme_store_open("redis://:hunter2pw@127.0.0.1:99999", NULL, ACME_STORE_LAZY, &err));
    assert_int_equal(err.kind, ACME_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "bad port"));
    assert_null(strstr(err.msg, "hunter2pw"));
    assert_non_null(strstr(err.msg, "***"));
    assert_null(acme_store_open("redis://127.0.0.1?colour=blue", NULL, ACME_STORE_LAZY, &err));
    assert_non_null(strstr(err.msg, "unknown parameter \"colour\""));
    assert_null(acme_store_open("redis://127.0.0.1/x", NULL, ACME_STORE_LAZY, &err));
    assert_non_null(strstr(err.msg, "database"));
    assert_null(acme_store_open("redis://127.0.0.1?tls_ca=/x", NULL, ACME_STORE_LAZY, &err));
    assert_non_null(strstr(err.msg, "rediss://"));
    assert_null(acme_store_open("redis://127.0.0.1?password_file=/nonexistent/pw", NULL, ACME_STORE_LAZY, &err));
    assert_non_null(strstr(err.msg, "/nonexistent/pw"));
    assert_null(acme_store_open(tmpdir, "/some/key", 0, &err));
    assert_int_equal(err.kind, ACME_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "redis://"));
    assert_null(acme_store_open("redis://127.0.0.1", "/nonexistent/key", ACME_STORE_LAZY, &err));
    assert_non_null(strstr(err.msg, "/nonexistent/key"));

    /* lazy: no connection needed; IPv6 literal, user, db, prefix */
    st = acme_store_open("redis://[::1]:1/3?prefix=x&lock_lease=2s&timeout=100ms", NULL, ACME_STORE_LAZY, &err);
    if (st == NULL) {
        fail_msg("lazy open: %s", err.msg);
    }
    assert_string_equal(acme_store_backend(st), "redis");
    assert_int_equal(acme_store_lock_lease_ms(st), 2000);
    acme_store_close(st);

    /* a directory is the filesystem */
    st = acme_store_open(tmp_path("fsstore"), NULL, ACME_STORE_CREATE, &err);
    assert_non_null(st);
    assert_string_equal(acme_store_backend(st), "filesystem");
    assert_int_equal(acme_store_lock_lease_ms(st), 0);
    assert_null(acme_store_watch_open(st, &err));
    assert_int_equal(err.kind, ACME_ERR_CONFIG);
    acme_store_close(st);

    r = acme_store_url_redact("rediss://user:p%40ss@host:1/2?prefix=a");
    assert_string_equal(r, "rediss://user:***@host:1/2?prefix=a");
    free(r);
    r = acme_store_url_redact("redis://:pw@h");
    assert_string_equal(r, "redis://:***@h");
    free(r);
    r = acme_store_url_redact("/var/lib/acme");
    assert_string_equal(r, "/var/lib/acme");
    free(r);
}

static void
test_put_get_list(void **state)
{
    acme_store_t  *st;
    acme_err_t     err;
    char           prefix[32], *d;
    size_t         len;
    redisReply    *r;

    (void) state;
    NEED_REDIS();
    st = open_fresh(NULL, NULL, prefix);
    check_value(st, "certs/example.org/fullchain.pem", NULL);
    check_list(st, "certs", "");
    check_list(st, "", "");

    assert_int_equal(acme_store_put(st, "certs/example.org/fullchain.pem", "CHAIN", 5, 0, &err), 0);
    assert_int_equal(acme_store_put(st, "certs/example.org/privkey.pem", "KEY", 3, 1, &err), 0);
    assert_int_equal(acme_store_put(st, "certs/b.example/meta.json", "{}", 2, 0, &err), 0);
    assert_int_equal(acme_store_put(st, "accounts/ca/account.key", "AK", 2, 1, &err), 0);
    assert_int_equal(acme_store_put(st, "empty", "", 0, 0, &err), 0);
    assert_int_equal(acme_store_put(st, "bin", "a\0b", 3, 0, &err), 0);
    check_value(st, "certs/example.org/fullchain.pem", "CHAIN");
    check_value(st, "certs/example.org/privkey.pem", "KEY");
    check_value(st, "empty", "");
    assert_int_equal(acme_store_get(st, "bin", &d, &len, &err), 0);
    assert_int_equal(len, 3);
    assert_memory_equal(d, "a\0b", 4);
    free(d);

    check_list(st, "", "accounts,bin,certs,empty");
    check_list(st, "certs", "b.example,example.org");
    check_list(st, "certs/example.org", "fullchain.pem,privkey.pem");
    check_list(st, "certs/none", "");

    /* 1:1 keys under the prefix; the secret set */
    r = raw(&srv, "GET %scerts/example.org/fullchain.pem", prefix);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "CHAIN");
    freeReplyObject(r);
    r = raw(&srv, "SISMEMBER %sinfo:secrets certs/example.org/privkey.pem", prefix);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    r = raw(&srv, "SISMEMBER %sinfo:secrets certs/example.org/fullchain.pem", prefix);
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);

    /* delete: gone from the index; an emptied directory leaves its parent's list */
    assert_int_equal(acme_store_del(st, "certs/b.example/meta.json", &err), 0);
    assert_int_equal(acme_store_del(st, "certs/b.example/meta.json", &err), 0);
    check_value(st, "certs/b.example/meta.json", NULL);
    check_list(st, "certs", "example.org");
    assert_int_equal(acme_store_del(st, "accounts/ca/account.key", &err), 0);
    check_list(st, "", "bin,certs,empty");
    r = raw(&srv, "SISMEMBER %sinfo:secrets accounts/ca/account.key", prefix);
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);

    /* bad keys are refused as by the filesystem */
    assert_int_equal(acme_store_put(st, "locks/x", "1", 1, 0, &err), -1);
    assert_int_equal(err.kind, ACME_ERR_INPUT);
    assert_int_equal(acme_store_put(st, "a//b", "1", 1, 0, &err), -1);
    assert_int_equal(acme_store_get(st, "../x", &d, &len, &err), -1);
    {
        char   **names;
        size_t   n;

        assert_int_equal(st->ops->list(st, "a:b", &names, &n, &err), -1);
        assert_int_equal(err.kind, ACME_ERR_INPUT);
    }
    acme_store_close(st);
}

static void
test_commit_and_records(void **state)
{
    acme_store_t        *st;
    acme_err_t           err;
    acme_certmeta_t      m, back;
    acme_store_item_t    items[3];
    char                 prefix[32], *chain, *key;
    size_t               clen, klen;
    unsigned long long   g0, g1, g2;
    acme_ident_t         chid = { ACME_IDENT_DNS, "records.example" };

    (void) state;
    NEED_REDIS();
    st = open_fresh(NULL, NULL, prefix);
    fill_meta(&m, "records.example");
    g0 = generation(st);
    assert_int_equal(acme_store_put(st, "certs/records.example/order.json", "{}", 2, 0, &err), 0);
    assert_int_equal(acme_store_put(st, "certs/records.example/order.key", "OK", 2, 1, &err), 0);
    assert_int_equal(generation(st), g0);       /* orders are no certificate change */
    if (acme_store_cert_save(st, "records.example", "CHAIN PEM", 9, "KEY PEM", 7, &m, &err) != 0) {
        fail_msg("save: %s", err.msg);
    }
    g1 = generation(st);
    assert_true(g1 == g0 + 1);
    check_value(st, "certs/records.example/order.json", NULL);
    check_value(st, "certs/records.example/order.key", NULL);
    check_list(st, "certs/records.example", "fullchain.pem,meta.json,privkey.pem");
    assert_int_equal(acme_store_cert_load(st, "records.example", &chain, &clen, &key, &klen, &back, &err), 0);
    assert_string_equal(chain, "CHAIN PEM");
    assert_string_equal(key, "KEY PEM");
    assert_string_equal(back.name, "records.example");
    assert_true(back.not_after == m.not_after);
    free(chain);
    acme_free_secret(key, klen);
    acme_certmeta_free(&back);
    /* metadata alone is no certificate change */
    assert_int_equal(acme_store_meta_save(st, &m, &err), 0);
    assert_int_equal(generation(st), g1);

    /* accounts and challenges through the typed records */
    assert_int_equal(acme_store_account_save(st, "ca-1", "ACCOUNT KEY", 11, "{\"url\":\"u\"}", &err), 0);
    assert_int_equal(acme_store_account_load(st, "ca-1", &key, &klen, &chain, &err), 0);
    assert_string_equal(key, "ACCOUNT KEY");
    assert_string_equal(chain, "{\"url\":\"u\"}");
    acme_free_secret(key, klen);
    free(chain);
    assert_int_equal(acme_store_challenge_put(st, "http-01", "tok_en-1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", &chid, "tok_en-1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.thumb", &err), 0);
    assert_int_equal(acme_store_challenge_get(st, "http-01", "tok_en-1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", NULL, &key, &err), 0);
    assert_string_equal(key, "tok_en-1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.thumb");
    free(key);
    assert_int_equal(acme_store_challenge_del(st, "http-01", "tok_en-1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", &err), 0);
    assert_int_equal(acme_store_challenge_get(st, "http-01", "tok_en-1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", NULL, &key, &err), 1);
    check_list(st, "", "accounts,certs");

    /* a commit: all of it; a key twice is refused and nothing is written */
    items[0] = (acme_store_item_t) { "certs/c.example/fullchain.pem", "C2", 2, 0 };
    items[1] = (acme_store_item_t) { "certs/c.example/privkey.pem", "K2", 2, 1 };
    items[2] = (acme_store_item_t) { "certs/c.example/fullchain.pem", "C3", 2, 0 };
    assert_int_equal(st->ops->commit(st, items, 3, &err), -1);
    assert_int_equal(err.kind, ACME_ERR_INPUT);
    check_value(st, "certs/c.example/privkey.pem", NULL);
    assert_int_equal(st->ops->commit(st, items, 2, &err), 0);
    g2 = generation(st);
    assert_true(g2 == g1 + 1);      /* one change per commit, whatever it touched */
    check_value(st, "certs/c.example/fullchain.pem", "C2");
    free_meta(&m);
    acme_store_close(st);
}

static void
test_sealing(void **state)
{
    acme_store_t  *st, *nokey, *other;
    acme_err_t     err;
    char           prefix[32], *d, hex[65];
    size_t         len;
    redisReply    *r;
    unsigned char  kb[32];
    int            i;

    (void) state;
    NEED_REDIS();
    for (i = 0; i < 32; i++) {
        kb[i] = (unsigned char) (i * 7 + 1);
        snprintf(hex + 2 * i, 3, "%02x", kb[i]);
    }
    write_file(tmp_path("key.raw"), kb, 32, 0600);
    write_file(tmp_path("key.hex"), hex, 64, 0600);
    write_file(tmp_path("key.other"), "a passphrase that is long enough to derive a key from\n", 54, 0600);
    write_file(tmp_path("key.short"), "short", 5, 0600);
    write_file(tmp_path("key.open"), kb, 32, 0644);

    assert_null(acme_store_open(url_for(&srv, NULL), tmp_path("key.short"), 0, &err));
    assert_non_null(strstr(err.msg, "too short"));
    assert_null(acme_store_open(url_for(&srv, NULL), tmp_path("key.open"), 0, &err));
    assert_non_null(strstr(err.msg, "chmod 600"));

    st = open_fresh(NULL, tmp_path("key.raw"), prefix);
    assert_int_equal(acme_store_put(st, "certs/s.example/privkey.pem",
                                    "-----BEGIN PRIVATE KEY-----\nMIG\n-----END PRIVATE KEY-----\n", 58, 1, &err), 0);
    assert_int_equal(acme_store_put(st, "certs/s.example/fullchain.pem", "-----BEGIN CERTIFICATE-----\n", 28, 0,
                                    &err), 0);
    check_value(st, "certs/s.example/privkey.pem", "-----BEGIN PRIVATE KEY-----\nMIG\n-----END PRIVATE KEY-----\n");

    /* what Redis holds: no PEM for the secret, the public chain after its MAC line */
    r = raw(&srv, "GET %scerts/s.example/privkey.pem", prefix);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_null(strstr(r->str, "PRIVATE KEY"));
    assert_memory_equal(r->str, ACME_AEAD_MAGIC, ACME_AEAD_MAGIC_LEN);
    freeReplyObject(r);
    r = raw(&srv, "GET %scerts/s.example/fullchain.pem", prefix);
    assert_memory_equal(r->str, ACME_AEAD_MAC_MAGIC, ACME_AEAD_MAC_MAGIC_LEN);
    assert_non_null(strchr(r->str, '\n'));
    assert_string_equal(strchr(r->str, '\n') + 1, "-----BEGIN CERTIFICATE-----\n");
    freeReplyObject(r);

    /* the same key as hex reads it */
    acme_store_close(st);
    st = reopen(prefix, NULL, tmp_path("key.hex"), &err);
    assert_non_null(st);
    check_value(st, "certs/s.example/privkey.pem", "-----BEGIN PRIVATE KEY-----\nMIG\n-----END PRIVATE KEY-----\n");

    /* no key, another key: clear failures */
    nokey = reopen(prefix, NULL, NULL, &err);
    assert_non_null(nokey);
    assert_int_equal(acme_store_get(nokey, "certs/s.example/privkey.pem", &d, &len, &err), -1);
    assert_int_equal(err.kind, ACME_ERR_STORE);
    assert_non_null(strstr(err.msg, "encrypted"));
    assert_non_null(strstr(err.msg, "no storage key"));
    assert_non_null(strstr(err.msg, "certs/s.example/privkey.pem"));
    /* a signed public value reads without the key (nothing to check it with: Redis is trusted then) */
    check_value(nokey, "certs/s.example/fullchain.pem", "-----BEGIN CERTIFICATE-----\n");
    other = reopen(prefix, NULL, tmp_path("key.other"), &err);
    assert_non_null(other);
    assert_int_equal(acme_store_get(other, "certs/s.example/privkey.pem", &d, &len, &err), -1);
    assert_non_null(strstr(err.msg, "another storage key"));

    /* a sealed value moved to another key does not authenticate */
    r = raw(&srv, "COPY %scerts/s.example/privkey.pem %scerts/moved/privkey.pem", prefix, prefix);
    freeReplyObject(r);
    assert_int_equal(acme_store_get(st, "certs/moved/privkey.pem", &d, &len, &err), -1);
    assert_non_null(strstr(err.msg, "does not authenticate"));
    /* nor does a damaged one */
    r = raw(&srv, "APPEND %scerts/s.example/privkey.pem AAAA", prefix);
    freeReplyObject(r);
    assert_int_equal(acme_store_get(st, "certs/s.example/privkey.pem", &d, &len, &err), -1);
    assert_int_equal(err.kind, ACME_ERR_STORE);

    acme_store_close(st);
    acme_store_close(nokey);
    acme_store_close(other);
}


/* ---- forged records (a storage key makes every value authenticated) ---- */

static char *next_announcement(acme_store_watch_t *w);

typedef struct {
    int   n;
    char  last[1024];
} forged_t;

static void
on_forged(void *arg, const char *msg)
{
    forged_t  *f = arg;

    f->n++;
    snprintf(f->last, sizeof(f->last), "%s", msg);
}

static void
test_forged_records(void **state)
{
    acme_store_t     *st, *plain;
    acme_certmeta_t   m;
    acme_err_t        err;
    forged_t          f;
    redisReply       *r;
    char              prefix[32], pprefix[32], *d, *ka, *fc = NULL, *pk = NULL;
    size_t            len, fl, pl;
    unsigned char     kb[32];
    int               i;
    const char       *tok = "tok_EN-abcdefghijklmnopqrstuvwxyz";
    acme_ident_t      fid = { ACME_IDENT_DNS, "f.example" }, aid = { ACME_IDENT_DNS, "a.example" };

    (void) state;
    NEED_REDIS();
    for (i = 0; i < 32; i++) {
        kb[i] = (unsigned char) (i * 7 + 1);
    }
    write_file(tmp_path("fkey"), kb, 32, 0600);
    memset(&f, 0, sizeof(f));
    st = open_fresh(NULL, tmp_path("fkey"), prefix);
    acme_store_on_forged(st, on_forged, &f);

    /* what the key holder writes reads back */
    fill_meta(&m, "f.example");
    assert_int_equal(acme_store_cert_save(st, "f.example", "CHAIN-F", 7, "PRIVATE-F", 9, &m, &err), 0);
    assert_int_equal(acme_store_challenge_put(st, "http-01", tok, &fid, "tok.thumb", &err), 0);
    assert_int_equal(acme_store_challenge_put(st, "tls-alpn-01", "a.example", &aid, "A.thumb", &err), 0);
    assert_int_equal(acme_store_challenge_get(st, "http-01", tok, NULL, &ka, &err), 0);
    assert_string_equal(ka, "tok.thumb");
    free(ka);
    assert_int_equal(acme_store_cert_load(st, "f.example", &fc, &fl, &pk, &pl, NULL, &err), 0);
    assert_string_equal(fc, "CHAIN-F");
    free(fc);
    acme_free_secret(pk, pl);

    /* a forged challenge record: refused, reported once however often it is read */
    r = raw(&srv, "SET %schallenges/http-01/%s forged.thumb", prefix, tok);
    freeReplyObject(r);
    for (i = 0; i < 3; i++) {
        ka = NULL;
        assert_int_equal(acme_store_challenge_get(st, "http-01", tok, NULL, &ka, &err), -1);
        assert_null(ka);
        assert_int_equal(err.kind, ACME_ERR_STORE);
        assert_non_null(strstr(err.msg, "without a MAC"));
    }
    assert_int_equal(f.n, 1);
    assert_non_null(strstr(f.last, "challenges/http-01/"));
    assert_null(strstr(f.last, "forged.thumb"));

    /* a valid record moved to another name (a.example's answer for b.example) */
    r = raw(&srv, "COPY %schallenges/tls-alpn-01/a.example %schallenges/tls-alpn-01/b.example", prefix, prefix);
    freeReplyObject(r);
    assert_int_equal(acme_store_challenge_get(st, "tls-alpn-01", "b.example", NULL, &ka, &err), -1);
    assert_non_null(strstr(err.msg, "does not authenticate"));
    free(ka);
    assert_int_equal(f.n, 2);

    /* a tampered certificate: the MAC line kept, the chain replaced */
    r = raw(&srv, "GET %scerts/f.example/fullchain.pem", prefix);
    assert_non_null(strchr(r->str, '\n'));
    *strchr(r->str, '\n') = '\0';
    d = acme_sprintf("%s\nEVIL-CHAIN", r->str);
    freeReplyObject(r);
    r = raw(&srv, "SET %scerts/f.example/fullchain.pem %s", prefix, d);
    freeReplyObject(r);
    free(d);
    fc = NULL;
    assert_int_equal(acme_store_cert_load(st, "f.example", &fc, &fl, NULL, NULL, NULL, &err), -1);
    assert_null(fc);
    assert_non_null(strstr(err.msg, "does not authenticate"));
    /* or no MAC at all */
    r = raw(&srv, "SET %scerts/f.example/fullchain.pem EVIL-CHAIN", prefix);
    freeReplyObject(r);
    assert_int_equal(acme_store_get(st, "certs/f.example/fullchain.pem", &d, &len, &err), -1);
    assert_non_null(strstr(err.msg, "without a MAC"));
    /* meta.json too */
    r = raw(&srv, "SET %scerts/f.example/meta.json {}", prefix);
    freeReplyObject(r);
    assert_int_equal(acme_store_get(st, "certs/f.example/meta.json", &d, &len, &err), -1);
    assert_non_null(strstr(err.msg, "without a MAC"));

    /* an unsealed private key (a PEM put in place of the sealed one) */
    r = raw(&srv, "SET %scerts/f.example/privkey.pem %s", prefix,
            "-----BEGIN PRIVATE KEY-----\nEVIL\n-----END PRIVATE KEY-----\n");
    freeReplyObject(r);
    pk = NULL;
    assert_int_equal(acme_store_get(st, "certs/f.example/privkey.pem", &pk, &pl, &err), -1);
    assert_null(pk);
    assert_non_null(strstr(err.msg, "unsealed secret"));
    assert_null(strstr(err.msg, "EVIL"));
    assert_null(strstr(f.last, "EVIL"));
    assert_int_equal(f.n, 6);

    /* without a storage key nothing is checked (the documented trust: Redis write access) */
    plain = open_fresh(NULL, NULL, pprefix);
    r = raw(&srv, "SET %schallenges/http-01/%s %s", pprefix, tok, "dns f.example plain.thumb");
    freeReplyObject(r);
    assert_int_equal(acme_store_challenge_get(plain, "http-01", tok, NULL, &ka, &err), 0);
    assert_string_equal(ka, "plain.thumb");
    free(ka);
    acme_store_close(plain);

    free_meta(&m);
    acme_store_close(st);
}

/* A secret sealed by the version before MACs (same key, fixed vector) still opens. */
static void
test_sealed_before_macs(void **state)
{
    acme_store_t   *st;
    redisReply     *r;
    char            prefix[32];
    unsigned char   kb[32];
    int             i;

    (void) state;
    NEED_REDIS();
    for (i = 0; i < 32; i++) {
        kb[i] = (unsigned char) (i * 7 + 1);
    }
    write_file(tmp_path("okey"), kb, 32, 0600);
    st = open_fresh(NULL, tmp_path("okey"), prefix);
    r = raw(&srv, "SET %scerts/old.example/privkey.pem %s", prefix,
            "acme-aead-v1:a042392d:JOoO6XpKB_oZJDdWmadmFDhPizrbGog6mwlJtNIIjNw-B_oIeZ0");
    freeReplyObject(r);
    check_value(st, "certs/old.example/privkey.pem", "OLD-SECRET");
    acme_store_close(st);
}

/* A store written without a key (or before MACs): refused with the key, until upgrade-storage. */
static void
test_upgrade(void **state)
{
    acme_store_t                *st, *old;
    acme_store_migrate_stats_t   ms;
    acme_certmeta_t              m;
    acme_err_t                   err;
    acme_ident_t                 uid = { ACME_IDENT_DNS, "u.example" };
    redisReply                  *r;
    char                         prefix[32], u[256], *d;
    size_t                       len;

    (void) state;
    NEED_REDIS();
    write_file(tmp_path("ukey"), "0123456789abcdef0123456789abcdef", 32, 0600);
    old = open_fresh(NULL, NULL, prefix);
    fill_meta(&m, "u.example");
    assert_int_equal(acme_store_cert_save(old, "u.example", "CHAIN-U", 7, "PRIVATE-U", 9, &m, &err), 0);
    assert_int_equal(acme_store_challenge_put(old, "http-01", "tok_EN-abcdefghijklmnopqrstuvwxyz", &uid, "t.x", &err), 0);
    acme_store_close(old);

    st = reopen(prefix, NULL, tmp_path("ukey"), &err);
    assert_non_null(st);
    assert_int_equal(acme_store_get(st, "certs/u.example/fullchain.pem", &d, &len, &err), -1);
    assert_non_null(strstr(err.msg, "upgrade-storage"));
    assert_int_equal(acme_store_get(st, "certs/u.example/privkey.pem", &d, &len, &err), -1);
    assert_non_null(strstr(err.msg, "unsealed secret"));

    snprintf(u, sizeof(u), "redis://127.0.0.1:%d?prefix=%s", srv.port, prefix);
    assert_int_equal(acme_store_upgrade(u, NULL, &ms, &err), -1);
    if (acme_store_upgrade(u, tmp_path("ukey"), &ms, &err) != 0) {
        fail_msg("upgrade: %s", err.msg);
    }
    assert_int_equal(ms.certs, 1);
    assert_int_equal(ms.challenges, 0);
    check_value(st, "certs/u.example/fullchain.pem", "CHAIN-U");
    check_value(st, "certs/u.example/privkey.pem", "PRIVATE-U");
    r = raw(&srv, "GET %scerts/u.example/privkey.pem", prefix);
    assert_memory_equal(r->str, ACME_AEAD_MAGIC, ACME_AEAD_MAGIC_LEN);
    freeReplyObject(r);
    /* challenges are not carried over */
    assert_int_equal(acme_store_get(st, "challenges/http-01/tok_EN-abcdefghijklmnopqrstuvwxyz", &d, &len, &err),
                     -1);
    /* again: nothing changes */
    assert_int_equal(acme_store_upgrade(u, tmp_path("ukey"), &ms, &err), 0);
    check_value(st, "certs/u.example/fullchain.pem", "CHAIN-U");

    free_meta(&m);
    acme_store_close(st);
}

static void
test_forged_announcements(void **state)
{
    acme_store_t          *st, *nokey;
    acme_store_watch_t    *w, *wn;
    acme_challenge_msg_t   m;
    acme_ident_t           dns = { ACME_IDENT_DNS, "a.example" };
    acme_err_t             err;
    forged_t               f;
    redisReply            *r;
    char                   prefix[32], *msg;
    const char            *tok = "tok_EN-abcdefghijklmnopqrstuvwxyz";
    int                    i;

    (void) state;
    NEED_REDIS();
    write_file(tmp_path("akey"), "0123456789abcdef0123456789abcdef", 32, 0600);
    memset(&f, 0, sizeof(f));
    st = open_fresh(NULL, tmp_path("akey"), prefix);
    acme_store_on_forged(st, on_forged, &f);
    w = acme_store_watch_open_challenges(st, &err);
    assert_non_null(w);
    nokey = reopen(prefix, NULL, NULL, &err);
    assert_non_null(nokey);
    wn = acme_store_watch_open_challenges(nokey, &err);
    assert_non_null(wn);

    /* the key holder's announcement arrives, its MAC cut off (a node without the key cannot check it) */
    assert_int_equal(acme_store_challenge_announce(st, 1, "http-01", tok, &dns, "tok.thumb", &err), 2);
    msg = next_announcement(w);
    assert_non_null(msg);
    assert_int_equal(acme_store_challenge_msg_parse(msg, &m, &err), 0);
    assert_string_equal(m.key_authz, "tok.thumb");
    acme_store_challenge_msg_free(&m);
    free(msg);
    msg = next_announcement(wn);
    assert_non_null(msg);
    assert_int_equal(acme_store_challenge_msg_parse(msg, &m, &err), 0);
    acme_store_challenge_msg_free(&m);
    free(msg);
    acme_store_watch_close(wn);
    acme_store_close(nokey);

    /* forged ones (none, a wrong MAC, a valid MAC of another message) are dropped and reported once */
    for (i = 0; i < 3; i++) {
        r = raw(&srv, "PUBLISH %schallenges %s", prefix, "a http-01 tok_EN-forged dns b.example forged.thumb");
        freeReplyObject(r);
    }
    r = raw(&srv, "PUBLISH %schallenges %s", prefix,
            "a http-01 tok_EN-forged dns b.example forged.thumb acme-mac-v1:00000000:AAAA");
    freeReplyObject(r);
    assert_int_equal(acme_store_challenge_announce(st, 0, "http-01", tok, NULL, NULL, &err), 1);
    msg = next_announcement(w);
    assert_non_null(msg);
    assert_int_equal(acme_store_challenge_msg_parse(msg, &m, &err), 0);
    assert_false(m.add);
    assert_string_equal(m.key, tok);
    acme_store_challenge_msg_free(&m);
    free(msg);
    assert_int_equal(f.n, 2);
    assert_non_null(strstr(f.last, "another storage key"));

    acme_store_watch_close(w);
    acme_store_close(st);
}

static void
test_aead_unit(void **state)
{
    acme_aead_key_t  *k;
    acme_err_t        err;
    char             *s1, *s2, *pt;
    size_t            l1, l2, pl;

    (void) state;
    k = acme_aead_key_from_bytes("0123456789abcdef0123456789abcdef", 32, &err);
    assert_non_null(k);
    assert_int_equal(strlen(acme_aead_key_id(k)), 8);
    assert_int_equal(acme_aead_seal(k, "a/b", "hello", 5, &s1, &l1, &err), 0);
    assert_int_equal(acme_aead_seal(k, "a/b", "hello", 5, &s2, &l2, &err), 0);
    assert_string_not_equal(s1, s2);        /* a fresh nonce each time */
    assert_true(acme_aead_is_sealed(s1, l1));
    assert_int_equal(acme_aead_open(k, "a/b", s1, l1, &pt, &pl, &err), 0);
    assert_int_equal(pl, 5);
    assert_string_equal(pt, "hello");
    acme_free_secret(pt, pl);
    assert_int_equal(acme_aead_open(k, "a/c", s1, l1, &pt, &pl, &err), -1);
    assert_int_equal(acme_aead_open(NULL, "a/b", s1, l1, &pt, &pl, &err), -1);
    assert_non_null(strstr(err.msg, acme_aead_key_id(k)));
    /* empty plaintext */
    free(s1);
    assert_int_equal(acme_aead_seal(k, "e", "", 0, &s1, &l1, &err), 0);
    assert_int_equal(acme_aead_open(k, "e", s1, l1, &pt, &pl, &err), 0);
    assert_int_equal(pl, 0);
    acme_free_secret(pt, 1);
    free(s1);
    free(s2);
    acme_aead_key_free(k);
}

static void
test_locks(void **state)
{
    acme_store_t  *a, *b;
    acme_lock_t   *la = NULL, *lb = NULL, *lc = NULL;
    acme_err_t     err;
    char           prefix[32];
    redisReply    *r;
    long long      t0;

    (void) state;
    NEED_REDIS();
    a = open_fresh("lock_lease=400ms", NULL, prefix);
    b = reopen(prefix, "lock_lease=400ms", NULL, &err);
    assert_non_null(b);

    /* the second locker gets 0; after unlock it gets the lock */
    assert_int_equal(a->ops->lock(a, "example.org", &la, &err), 1);
    assert_int_equal(b->ops->lock(b, "example.org", &lb, &err), 0);
    assert_null(lb);
    assert_int_equal(b->ops->lock(b, "other.org", &lc, &err), 1);
    b->ops->unlock(lc);
    lc = NULL;
    r = raw(&srv, "PTTL %slock:example.org", prefix);
    assert_true(r->integer > 0 && r->integer <= 400);
    freeReplyObject(r);
    a->ops->unlock(la);
    la = NULL;
    assert_int_equal(b->ops->lock(b, "example.org", &lb, &err), 1);
    b->ops->unlock(lb);
    lb = NULL;

    /* the holder that refreshes keeps it past its lease */
    assert_int_equal(a->ops->lock(a, "renewing", &la, &err), 1);
    t0 = now_ms();
    while (now_ms() - t0 < 1000) {
        sleep_ms(100);
        assert_int_equal(acme_store_lock_refresh(a, la, &err), 1);
        assert_int_equal(b->ops->lock(b, "renewing", &lb, &err), 0);
    }
    a->ops->unlock(la);
    la = NULL;

    /* a holder that stops refreshing (died) loses it when the lease runs out */
    assert_int_equal(a->ops->lock(a, "dying", &la, &err), 1);
    sleep_ms(600);
    assert_int_equal(b->ops->lock(b, "dying", &lb, &err), 1);
    /* the old holder learns it lost the lock... */
    assert_int_equal(acme_store_lock_refresh(a, la, &err), 0);
    assert_non_null(strstr(err.msg, "lost"));
    /* ...and its unlock (compare-and-delete) does not remove the new holder's lock */
    a->ops->unlock(la);
    la = NULL;
    r = raw(&srv, "EXISTS %slock:dying", prefix);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    assert_int_equal(a->ops->lock(a, "dying", &la, &err), 0);
    /* also when the token was overwritten behind the holder's back */
    r = raw(&srv, "SET %slock:dying someone-else PX 10000", prefix);
    freeReplyObject(r);
    b->ops->unlock(lb);
    lb = NULL;
    r = raw(&srv, "GET %slock:dying", prefix);
    assert_string_equal(r->str, "someone-else");
    freeReplyObject(r);

    /* a lock outlives the store handle it came from until it is released */
    assert_int_equal(a->ops->lock(a, "late", &la, &err), 1);
    acme_store_close(a);
    b->ops->unlock(la);         /* every lock's unlock is the same backend's */
    assert_int_equal(b->ops->lock(b, "late", &lb, &err), 1);
    b->ops->unlock(lb);

    /* lock names follow the key rules */
    assert_int_equal(b->ops->lock(b, "../x", &lb, &err), -1);
    assert_int_equal(err.kind, ACME_ERR_INPUT);
    acme_store_close(b);
}

static void
test_lock_refresh_piggyback(void **state)
{
    acme_store_t  *a, *b;
    acme_lock_t   *la = NULL, *lb = NULL;
    acme_err_t     err;
    char           prefix[32];
    long long      t0;

    (void) state;
    NEED_REDIS();
    a = open_fresh("lock_lease=300ms", NULL, prefix);
    b = reopen(prefix, "lock_lease=300ms", NULL, &err);
    assert_non_null(b);
    assert_int_equal(a->ops->lock(a, "busy", &la, &err), 1);
    /* any operation on the holder's store refreshes a lease that is a third gone */
    t0 = now_ms();
    while (now_ms() - t0 < 900) {
        sleep_ms(50);
        check_value(a, "nothing", NULL);
        assert_int_equal(b->ops->lock(b, "busy", &lb, &err), 0);
    }
    a->ops->unlock(la);
    acme_store_close(a);
    acme_store_close(b);
}

static void
test_watch(void **state)
{
    acme_store_t         *st;
    acme_store_watch_t   *w;
    acme_err_t            err;
    acme_certmeta_t       m;
    struct pollfd         pfd;
    char                  prefix[32], *name = NULL;
    int                   got = 0, rc;
    long long             t0;

    (void) state;
    NEED_REDIS();
    st = open_fresh(NULL, NULL, prefix);
    w = acme_store_watch_open(st, &err);
    if (w == NULL) {
        fail_msg("watch: %s", err.msg);
    }
    assert_true(acme_store_watch_fd(w) >= 0);
    assert_int_equal(acme_store_watch_next(w, &name, &err), 0);
    fill_meta(&m, "watched.example");
    assert_int_equal(acme_store_cert_save(st, "watched.example", "C", 1, "K", 1, &m, &err), 0);
    assert_int_equal(acme_store_del(st, "certs/watched.example/fullchain.pem", &err), 0);
    t0 = now_ms();
    while (got < 2 && now_ms() - t0 < 5000) {
        pfd.fd = acme_store_watch_fd(w);
        pfd.events = POLLIN;
        if (poll(&pfd, 1, 5000) <= 0) {
            break;
        }
        while ((rc = acme_store_watch_next(w, &name, &err)) == 1) {
            assert_string_equal(name, "watched.example");
            free(name);
            got++;
        }
        assert_int_equal(rc, 0);
    }
    assert_int_equal(got, 2);
    free_meta(&m);
    acme_store_watch_close(w);
    acme_store_close(st);
}

/* Reads from w until a challenge announcement arrives (5 s at most); malloc'd message or NULL. */
static char *
next_announcement(acme_store_watch_t *w)
{
    struct pollfd   pfd;
    acme_err_t      err;
    char           *msg = NULL;
    long long       t0 = now_ms();
    int             rc;

    while (now_ms() - t0 < 5000) {
        while ((rc = acme_store_watch_next(w, &msg, &err)) == 1) {
            free(msg);      /* a certificate change */
        }
        if (rc == 2) {
            return msg;
        }
        assert_int_equal(rc, 0);
        pfd.fd = acme_store_watch_fd(w);
        pfd.events = POLLIN;
        if (poll(&pfd, 1, 5000) <= 0) {
            break;
        }
    }
    return NULL;
}

static void
test_challenge_announcements(void **state)
{
    acme_store_t          *st, *fs;
    acme_store_watch_t    *w, *plain;
    acme_challenge_msg_t   m;
    acme_ident_t           id = { ACME_IDENT_IP, "192.0.2.7" }, dns = { ACME_IDENT_DNS, "a.example" };
    acme_err_t             err;
    char                   prefix[32], *msg, *name = NULL;
    long                   n;
    const char            *tok = "tok_EN-abcdefghijklmnopqrstuvwxyz";

    (void) state;
    NEED_REDIS();
    st = open_fresh(NULL, NULL, prefix);
    w = acme_store_watch_open_challenges(st, &err);
    if (w == NULL) {
        fail_msg("watch: %s", err.msg);
    }
    plain = acme_store_watch_open(st, &err);
    assert_non_null(plain);

    /* only the challenge watch counts: the announcement reached one node */
    assert_int_equal(acme_store_challenge_announce(st, 1, "http-01", tok, &dns, "tok_EN-abcdefghijklmnopqrstuvwxyz.thumb", &err), 1);
    msg = next_announcement(w);
    assert_non_null(msg);
    assert_int_equal(acme_store_challenge_msg_parse(msg, &m, &err), 0);
    assert_true(m.add);
    assert_string_equal(m.type, "http-01");
    assert_string_equal(m.key, tok);
    assert_int_equal(m.id.type, ACME_IDENT_DNS);
    assert_string_equal(m.id.value, "a.example");
    assert_string_equal(m.key_authz, "tok_EN-abcdefghijklmnopqrstuvwxyz.thumb");
    acme_store_challenge_msg_free(&m);
    free(msg);
    /* the plain watch never returns it */
    sleep_ms(50);
    assert_int_equal(acme_store_watch_next(plain, &name, &err), 0);

    /* acknowledgements count from the last announcement */
    assert_int_equal(acme_store_challenge_acks(st, "http-01", tok, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(acme_store_challenge_ack(st, "http-01", tok, &err), 0);
    assert_int_equal(acme_store_challenge_ack(st, "http-01", tok, &err), 0);
    assert_int_equal(acme_store_challenge_acks(st, "http-01", tok, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(acme_store_challenge_announce(st, 1, "http-01", tok, &dns, "tok_EN-abcdefghijklmnopqrstuvwxyz.thumb", &err), 1);
    assert_int_equal(acme_store_challenge_acks(st, "http-01", tok, &n, &err), 0);
    assert_int_equal(n, 0);
    free(next_announcement(w));

    /* TLS-ALPN-01 for an IP address, and a withdrawal */
    assert_int_equal(acme_store_challenge_announce(st, 1, "tls-alpn-01", "7.2.0.192.in-addr.arpa", &id,
                                                   "T.x", &err), 1);
    msg = next_announcement(w);
    assert_int_equal(acme_store_challenge_msg_parse(msg, &m, &err), 0);
    assert_int_equal(m.id.type, ACME_IDENT_IP);
    assert_string_equal(m.id.value, "192.0.2.7");
    acme_store_challenge_msg_free(&m);
    free(msg);
    assert_int_equal(acme_store_challenge_announce(st, 0, "tls-alpn-01", "7.2.0.192.in-addr.arpa", NULL, NULL,
                                                   &err), 1);
    msg = next_announcement(w);
    assert_int_equal(acme_store_challenge_msg_parse(msg, &m, &err), 0);
    assert_false(m.add);
    assert_string_equal(m.key, "7.2.0.192.in-addr.arpa");
    assert_null(m.key_authz);
    acme_store_challenge_msg_free(&m);
    free(msg);

    /* refused before anything is sent */
    assert_int_equal(acme_store_challenge_announce(st, 1, "http-01", "bad token", &dns, "x.y", &err), -1);
    assert_int_equal(err.kind, ACME_ERR_INPUT);
    assert_int_equal(acme_store_challenge_announce(st, 1, "dns-01", tok, &dns, "x.y", &err), -1);
    assert_int_equal(acme_store_challenge_announce(st, 1, "http-01", tok, &dns, "x y", &err), -1);
    assert_int_equal(acme_store_challenge_announce(st, 1, "http-01", tok, NULL, "x.y", &err), -1);

    /* a filesystem store has nobody to tell */
    fs = acme_store_fs_open(tmp_path("announce-fs"), 1, &err);
    assert_non_null(fs);
    assert_int_equal(acme_store_challenge_announce(fs, 1, "http-01", tok, &dns, "x.y", &err), 0);
    assert_int_equal(acme_store_challenge_ack(fs, "http-01", tok, &err), 0);
    assert_int_equal(acme_store_challenge_acks(fs, "http-01", tok, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_null(acme_store_watch_open_challenges(fs, &err));
    acme_store_close(fs);

    acme_store_watch_close(plain);
    acme_store_watch_close(w);
    acme_store_close(st);
}

#define TOK "tok_EN-abcdefghijklmnopqrstuvwxyz"

static void
test_challenge_msg_hostile(void **state)
{
    static const char  *bad[] = {
        "", "a", "x http-01 " TOK, "a http-01 " TOK " dns a.example", "a http-01 " TOK " dns a.example k.a extra",
        "a http-01 ../x dns a.example k.a", "a http-01 " TOK " dns *.example k.a", "a http-01 " TOK " dns a..b k.a",
        "a http-01 " TOK " foo a.example k.a", "a http-01 " TOK " ip a.example k.a", "a http-01 " TOK " dns a.example k/a",
        "a tls-alpn-01 b.example dns a.example k.a", "a tls-alpn-01 4.3.2.1.in-addr.arpa ip 1.2.3.5 k.a",
        "d http-01", "d http-01 " TOK " extra", "d dns-01 " TOK, "aa http-01 " TOK " dns a.example k.a", NULL
    };
    acme_challenge_msg_t  m;
    acme_err_t            err;
    int                   i;

    (void) state;
    for (i = 0; bad[i] != NULL; i++) {
        if (acme_store_challenge_msg_parse(bad[i], &m, &err) == 0) {
            fail_msg("accepted \"%s\"", bad[i]);
        }
        assert_int_equal(err.kind, ACME_ERR_INPUT);
        assert_null(m.buf);
    }
    assert_int_equal(acme_store_challenge_msg_parse(NULL, &m, &err), -1);
    assert_int_equal(acme_store_challenge_msg_parse("a tls-alpn-01 4.3.2.1.in-addr.arpa ip 1.2.3.4 k.a", &m,
                                                    &err), 0);
    acme_store_challenge_msg_free(&m);
    assert_int_equal(acme_store_challenge_msg_parse("d http-01 " TOK, &m, &err), 0);
    acme_store_challenge_msg_free(&m);
}

static void
test_password_file(void **state)
{
    acme_store_t  *st;
    acme_err_t     err;
    char           u[512];

    (void) state;
    NEED_REDIS();
    write_file(tmp_path("pw"), PASSWORD "\n", strlen(PASSWORD) + 1, 0600);
    write_file(tmp_path("pw.bad"), "wrong-password\n", 15, 0600);

    snprintf(u, sizeof(u), "redis://127.0.0.1:%d?password_file=%s", asrv.port, tmp_path("pw"));
    st = acme_store_open(u, NULL, 0, &err);
    if (st == NULL) {
        fail_msg("open with password_file: %s", err.msg);
    }
    assert_int_equal(acme_store_put(st, "k", "v", 1, 0, &err), 0);
    check_value(st, "k", "v");
    assert_int_equal(acme_store_ping(st, &err), 0);
    acme_store_close(st);

    /* user "default" with the password in the URL (percent-encoded) */
    snprintf(u, sizeof(u), "redis://default:%s@127.0.0.1:%d", "s3cret%2DPa55word", asrv.port);
    st = acme_store_open(u, NULL, 0, &err);
    if (st == NULL) {
        fail_msg("open with user:password: %s", err.msg);
    }
    check_value(st, "k", "v");
    acme_store_close(st);

    /* refused: the message says so, and never shows the password */
    snprintf(u, sizeof(u), "redis://127.0.0.1:%d?password_file=%s", asrv.port, tmp_path("pw.bad"));
    assert_null(acme_store_open(u, NULL, 0, &err));
    assert_int_equal(err.kind, ACME_ERR_STORE);
    assert_non_null(strstr(err.msg, "authentication refused"));
    assert_null(strstr(err.msg, "wrong-password"));
    snprintf(u, sizeof(u), "redis://:wrong-password@127.0.0.1:%d", asrv.port);
    assert_null(acme_store_open(u, NULL, 0, &err));
    assert_null(strstr(err.msg, "wrong-password"));
    assert_non_null(strstr(err.msg, "127.0.0.1"));
    /* no password at all */
    assert_null(acme_store_open(url_for(&asrv, NULL), NULL, 0, &err));
    assert_non_null(strstr(err.msg, "NOAUTH"));
    /* both */
    snprintf(u, sizeof(u), "redis://:x@127.0.0.1:%d?password_file=%s", asrv.port, tmp_path("pw"));
    assert_null(acme_store_open(u, NULL, 0, &err));
    assert_int_equal(err.kind, ACME_ERR_CONFIG);
}

static void
test_reconnect_and_timeouts(void **state)
{
    server_t       s2;
    acme_store_t  *st, *lazy;
    acme_err_t     err;
    char           u[256], *d;
    size_t         len;
    long long      t0;
    int            lfd, port, i;
    struct sockaddr_in a;

    (void) state;
    NEED_REDIS();
    server_start(&s2, 0, 0);
    snprintf(u, sizeof(u), "redis://127.0.0.1:%d", s2.port);
    st = acme_store_open(u, NULL, 0, &err);
    assert_non_null(st);
    assert_int_equal(acme_store_put(st, "certs/r.example/meta.json", "{}", 2, 0, &err), 0);
    /* a store opened lazily while the server is up is fine too */
    lazy = acme_store_open(u, NULL, ACME_STORE_LAZY, &err);
    assert_non_null(lazy);

    /* Redis goes away: operations fail with the operation, the key and the server named */
    server_stop(&s2);
    assert_int_equal(acme_store_get(st, "certs/r.example/meta.json", &d, &len, &err), -1);
    assert_int_equal(err.kind, ACME_ERR_STORE);
    assert_non_null(strstr(err.msg, "get certs/r.example/meta.json"));
    assert_non_null(strstr(err.msg, u));
    assert_int_equal(acme_store_put(st, "x", "1", 1, 0, &err), -1);
    assert_non_null(strstr(err.msg, "put x"));

    /* it comes back (empty, no persistence): the next operation reconnects, at once (a refused connect
     * is not held against it: an HTTP-01 look-up right after a Redis restart must find the token) */
    assert_int_equal(acme_store_get(lazy, "x", &d, &len, &err), -1);
    assert_non_null(strstr(err.msg, "cannot connect"));
    server_start(&s2, s2.port, 0);
    check_value(lazy, "x", NULL);
    check_value(st, "certs/r.example/meta.json", NULL);
    assert_int_equal(acme_store_put(st, "x", "1", 1, 0, &err), 0);
    check_value(lazy, "x", "1");
    /* a restart between two operations is not even noticed (the idle connection is replaced) */
    server_stop(&s2);
    server_start(&s2, s2.port, 0);
    assert_int_equal(acme_store_put(st, "y", "2", 1, 0, &err), 0);
    check_value(st, "y", "2");
    acme_store_close(st);
    acme_store_close(lazy);
    server_stop(&s2);

    /* a server that accepts but never answers: the command timeout */
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    port = free_port();
    a.sin_port = htons((unsigned short) port);
    assert_int_equal(bind(lfd, (struct sockaddr *) &a, sizeof(a)), 0);
    assert_int_equal(listen(lfd, 8), 0);
    snprintf(u, sizeof(u), "redis://127.0.0.1:%d?timeout=300ms", port);
    t0 = now_ms();
    assert_null(acme_store_open(u, NULL, 0, &err));
    assert_true(now_ms() - t0 < 2000);
    assert_non_null(strstr(err.msg, "timed out"));
    /* a connect (AUTH unanswered) or a command that failed slowly is not waited out again within the
     * second */
    for (i = 0; i < 2; i++) {
        snprintf(u, sizeof(u), "redis://%s127.0.0.1:%d?timeout=300ms", i == 0 ? ":pw@" : "", port);
        lazy = acme_store_open(u, NULL, ACME_STORE_LAZY, &err);
        assert_non_null(lazy);
        t0 = now_ms();
        assert_int_equal(acme_store_get(lazy, "x", &d, &len, &err), -1);
        assert_true(now_ms() - t0 >= 250);
        assert_non_null(strstr(err.msg, "timed out"));
        t0 = now_ms();
        assert_int_equal(acme_store_get(lazy, "x", &d, &len, &err), -1);
        assert_true(now_ms() - t0 < 100);
        assert_non_null(strstr(err.msg, "timed out"));
        assert_non_null(strstr(err.msg, "get x"));
        acme_store_close(lazy);
    }
    close(lfd);

    /* nothing listens: refused at once */
    snprintf(u, sizeof(u), "redis://127.0.0.1:%d", port);
    assert_null(acme_store_open(u, NULL, 0, &err));
    assert_non_null(strstr(err.msg, "cannot connect"));
}

static void
test_generation_fs(void **state)
{
    acme_store_t        *st;
    acme_err_t           err;
    acme_certmeta_t      m;
    unsigned long long   g0, g1, g2;

    (void) state;
    st = acme_store_open(tmp_path("fsgen"), NULL, ACME_STORE_CREATE, &err);
    assert_non_null(st);
    g0 = generation(st);
    assert_int_equal(generation(st), g0);
    fill_meta(&m, "gen.example");
    assert_int_equal(acme_store_cert_save(st, "gen.example", "C1", 2, "K", 1, &m, &err), 0);
    g1 = generation(st);
    assert_true(g1 != g0);
    assert_int_equal(acme_store_meta_save(st, &m, &err), 0);
    assert_true(generation(st) == g1);
    assert_int_equal(acme_store_cert_save(st, "gen.example", "C2", 2, "K", 1, &m, &err), 0);
    g2 = generation(st);
    assert_true(g2 != g1);
    free_meta(&m);
    assert_int_equal(acme_store_ping(st, &err), 0);
    acme_store_close(st);
}

static void
test_migrate(void **state)
{
    acme_store_t                *fs;
    acme_store_migrate_stats_t   ms;
    acme_err_t                   err;
    acme_certmeta_t              m;
    char                         u[256], prefix[32];
    struct stat                  sb;

    (void) state;
    NEED_REDIS();
    fs = acme_store_open(tmp_path("mig-src"), NULL, ACME_STORE_CREATE, &err);
    assert_non_null(fs);
    fill_meta(&m, "mig.example");
    assert_int_equal(acme_store_cert_save(fs, "mig.example", "CHAIN", 5, "PRIVATE", 7, &m, &err), 0);
    assert_int_equal(acme_store_account_save(fs, "ca", "AKEY", 4, "{}", &err), 0);
    assert_int_equal(acme_store_put(fs, "certs/pending.example/order.json", "{}", 2, 0, &err), 0);
    assert_int_equal(acme_store_put(fs, "certs/pending.example/order.key", "OK", 2, 1, &err), 0);
    acme_store_close(fs);
    free_meta(&m);
    write_file(tmp_path("mkey"), "0123456789abcdef0123456789abcdef", 32, 0600);

    snprintf(prefix, sizeof(prefix), "t%d:", ++prefix_no);
    snprintf(u, sizeof(u), "redis://127.0.0.1:%d?prefix=%s", srv.port, prefix);
    assert_int_equal(acme_store_migrate(tmp_path("mig-src"), NULL, tmp_path("mig-src"), NULL, &ms, &err), -1);
    if (acme_store_migrate(tmp_path("mig-src"), NULL, u, tmp_path("mkey"), &ms, &err) != 0) {
        fail_msg("migrate to redis: %s", err.msg);
    }
    assert_int_equal(ms.keys, 7);
    assert_int_equal(ms.secrets, 3);
    assert_int_equal(ms.accounts, 1);
    assert_int_equal(ms.certs, 1);
    assert_int_equal(ms.orders, 1);
    /* again: the same */
    assert_int_equal(acme_store_migrate(tmp_path("mig-src"), NULL, u, tmp_path("mkey"), &ms, &err), 0);
    assert_int_equal(ms.keys, 7);
    /* back, without the key: refused clearly; with it: the same files and modes */
    assert_int_equal(acme_store_migrate(u, NULL, tmp_path("mig-back"), NULL, &ms, &err), -1);
    assert_non_null(strstr(err.msg, "encrypted"));
    unit_rmtree(tmp_path("mig-back"));
    if (acme_store_migrate(u, tmp_path("mkey"), tmp_path("mig-back"), NULL, &ms, &err) != 0) {
        fail_msg("migrate back: %s", err.msg);
    }
    assert_int_equal(ms.keys, 7);
    assert_int_equal(ms.secrets, 3);
    assert_int_equal(stat(tmp_path("mig-back/certs/mig.example/privkey.pem"), &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    assert_int_equal(stat(tmp_path("mig-back/certs/pending.example/order.key"), &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    assert_int_equal(stat(tmp_path("mig-back/certs/mig.example/fullchain.pem"), &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0644);
    fs = acme_store_open(tmp_path("mig-back"), NULL, 0, &err);
    assert_non_null(fs);
    check_value(fs, "certs/mig.example/privkey.pem", "PRIVATE");
    check_value(fs, "accounts/ca/account.key", "AKEY");
    acme_store_close(fs);
}

/* ---- setup ---- */

static int
group_setup(void **state)
{
    (void) state;
    signal(SIGPIPE, SIG_IGN);
    strcpy(tmpdir, "/tmp/acme-test-redis-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        return -1;
    }
    have_redis = access(REDIS_SERVER, X_OK) == 0;
    if (have_redis) {
        server_start(&srv, 0, 0);
        server_start(&asrv, 0, 1);
    } else {
        fprintf(stderr, "%s not found: the Redis tests are skipped\n", REDIS_SERVER);
    }
    return 0;
}

static int
group_teardown(void **state)
{
    (void) state;
    server_stop(&srv);
    server_stop(&asrv);
    unit_rmtree(tmpdir);
    return 0;
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_parsing),
        cmocka_unit_test(test_aead_unit),
        cmocka_unit_test(test_put_get_list),
        cmocka_unit_test(test_commit_and_records),
        cmocka_unit_test(test_sealing),
        cmocka_unit_test(test_locks),
        cmocka_unit_test(test_lock_refresh_piggyback),
        cmocka_unit_test(test_watch),
        cmocka_unit_test(test_challenge_announcements),
        cmocka_unit_test(test_challenge_msg_hostile),
        cmocka_unit_test(test_password_file),
        cmocka_unit_test(test_reconnect_and_timeouts),
        cmocka_unit_test(test_generation_fs),
        cmocka_unit_test(test_migrate),
        cmocka_unit_test(test_forged_records),
        cmocka_unit_test(test_sealed_before_macs),
        cmocka_unit_test(test_upgrade),
        cmocka_unit_test(test_forged_announcements),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
