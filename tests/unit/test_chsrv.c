/* acmectl's challenge servers: HTTP-01 and TLS-ALPN-01 over real sockets on 127.0.0.1. */
#define CHSRV_TIMEOUT_MS  1500      /* short, so the timeout test stays quick */
#define CHSRV_LINGER_MS   500

#include "unit.h"
#include "../../acmectl/chsrv.c"

#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>

#define TOKEN   "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
#define KA      TOKEN ".NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
#define KA2     TOKEN ".AAAAsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
#define WK      "/.well-known/acme-challenge/"

static acme_ident_t  ID = { ACME_IDENT_DNS, "example.org" };

/* ---- helpers ---- */

static int
tcp_connect(int port)
{
    struct sockaddr_in  sin;
    struct timeval      tv = { 5, 0 };
    int                 fd;

    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)), 0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons((uint16_t) port);
    assert_int_equal(connect(fd, (struct sockaddr *) &sin, sizeof(sin)), 0);
    return fd;
}

static void
send_all(int fd, const char *p, size_t len)
{
    ssize_t  n;

    while (len > 0) {
        n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0) {
            return;     /* the server may answer and stop reading early */
        }
        p += n;
        len -= (size_t) n;
    }
}

/* Everything until EOF (the server always closes). */
static char *
read_all(int fd)
{
    acme_buf_t  b = { NULL, 0, 0 };
    char        buf[4096];
    ssize_t     n;

    assert_int_equal(acme_buf_append(&b, "", 0), 0);
    for ( ;; ) {
        n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == ECONNRESET) {
            break;
        }
        assert_true(n >= 0);    /* not a 5 s timeout */
        if (n == 0) {
            break;
        }
        assert_int_equal(acme_buf_append(&b, buf, (size_t) n), 0);
    }
    return acme_buf_steal(&b);
}

static char *
http_raw(int port, const char *req, size_t len, int *status)
{
    char  *resp;
    int    fd;

    fd = tcp_connect(port);
    send_all(fd, req, len);
    resp = read_all(fd);
    close(fd);
    *status = -1;
    if (strncmp(resp, "HTTP/1.1 ", 9) == 0) {
        *status = atoi(resp + 9);
    }
    /* every answer closes the connection */
    if (*status > 0) {
        assert_non_null(strstr(resp, "\r\nConnection: close\r\n"));
    }
    return resp;
}

static int
http_status(int port, const char *req)
{
    char  *resp;
    int    status;

    resp = http_raw(port, req, strlen(req), &status);
    free(resp);
    return status;
}

static int
http_get_status(int port, const char *target)
{
    char  req[2048];

    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: example.org\r\n\r\n", target);
    return http_status(port, req);
}

static const char *
http_body(const char *resp)
{
    const char  *p = strstr(resp, "\r\n\r\n");

    assert_non_null(p);
    return p + 4;
}

static acmectl_chsrv_t *
start_local(void)
{
    acmectl_chsrv_t  *s;
    acme_err_t        err;

    s = acmectl_chsrv_start("127.0.0.1:0", "127.0.0.1:0", &err);
    if (s == NULL) {
        fail_msg("%s", err.msg);
    }
    assert_true(acmectl_chsrv_http_port(s) > 0);
    assert_true(acmectl_chsrv_tls_port(s) > 0);
    assert_int_not_equal(acmectl_chsrv_http_port(s), acmectl_chsrv_tls_port(s));
    return s;
}

static int
setup(void **state)
{
    acmectl_chsrv_t  *s;
    acme_err_t        err;

    s = start_local();
    assert_int_equal(acmectl_chsrv_add_http(s, &ID, TOKEN, KA, &err), 0);
    *state = s;
    return 0;
}

static int
teardown(void **state)
{
    acmectl_chsrv_stop(*state);
    return 0;
}

/* ---- HTTP-01 ---- */

static void
test_http_get(void **state)
{
    acmectl_chsrv_t  *s = *state;
    char             *resp, want[64];
    int               status;
    const char        req[] = "GET " WK TOKEN " HTTP/1.1\r\nHost: example.org\r\nUser-Agent: test\r\n\r\n";

    resp = http_raw(acmectl_chsrv_http_port(s), req, sizeof(req) - 1, &status);
    assert_int_equal(status, 200);
    assert_string_equal(http_body(resp), KA);
    snprintf(want, sizeof(want), "\r\nContent-Length: %zu\r\n", strlen(KA));
    assert_non_null(strstr(resp, want));
    assert_non_null(strstr(resp, "\r\nContent-Type: application/octet-stream\r\n"));
    free(resp);

    /* HTTP/1.0, bare LF line ends, leading empty line */
    resp = http_raw(acmectl_chsrv_http_port(s), "\r\nGET " WK TOKEN " HTTP/1.0\nHost: example.org\n\n",
                    strlen("\r\nGET " WK TOKEN " HTTP/1.0\nHost: example.org\n\n"), &status);
    assert_int_equal(status, 200);
    assert_string_equal(http_body(resp), KA);
    free(resp);

    /* absolute-form */
    assert_int_equal(http_get_status(acmectl_chsrv_http_port(s), "http://example.org" WK TOKEN), 200);
    assert_int_equal(http_get_status(acmectl_chsrv_http_port(s), "HTTP://example.org:80" WK TOKEN), 200);
}

static void
test_http_head(void **state)
{
    acmectl_chsrv_t  *s = *state;
    char             *resp, want[64];
    int               status;
    const char        req[] = "HEAD " WK TOKEN " HTTP/1.1\r\nHost: example.org\r\n\r\n";

    resp = http_raw(acmectl_chsrv_http_port(s), req, sizeof(req) - 1, &status);
    assert_int_equal(status, 200);
    assert_string_equal(http_body(resp), "");
    snprintf(want, sizeof(want), "\r\nContent-Length: %zu\r\n", strlen(KA));
    assert_non_null(strstr(resp, want));
    free(resp);

    resp = http_raw(acmectl_chsrv_http_port(s), "HEAD " WK "nope HTTP/1.1\r\n\r\n",
                    strlen("HEAD " WK "nope HTTP/1.1\r\n\r\n"), &status);
    assert_int_equal(status, 404);
    assert_string_equal(http_body(resp), "");
    free(resp);
}

/* The request arrives in pieces, split inside the final CRLF CRLF too. */
static void
test_http_split(void **state)
{
    acmectl_chsrv_t  *s = *state;
    const char        req[] = "GET " WK TOKEN " HTTP/1.1\r\nHost: example.org\r\n\r\n";
    size_t            cuts[] = { 0, 3, 20, sizeof(req) - 4, sizeof(req) - 2, sizeof(req) - 1 };
    char             *resp;
    size_t            i;
    int               fd;

    fd = tcp_connect(acmectl_chsrv_http_port(s));
    for (i = 0; i + 1 < sizeof(cuts) / sizeof(cuts[0]); i++) {
        send_all(fd, req + cuts[i], cuts[i + 1] - cuts[i]);
        usleep(30000);
    }
    resp = read_all(fd);
    close(fd);
    assert_true(strncmp(resp, "HTTP/1.1 200 ", 13) == 0);
    assert_string_equal(http_body(resp), KA);
    free(resp);
}

static void
test_http_not_found(void **state)
{
    acmectl_chsrv_t  *s = *state;
    int               port = acmectl_chsrv_http_port(s);
    char              target[512];

    assert_int_equal(http_get_status(port, WK "unknownToken123"), 404);
    assert_int_equal(http_get_status(port, WK "../x"), 404);
    assert_int_equal(http_get_status(port, WK ".."), 404);
    assert_int_equal(http_get_status(port, WK "../../etc/passwd"), 404);
    assert_int_equal(http_get_status(port, "/.well-known/acme-challenge/../acme-challenge/" TOKEN), 404);
    assert_int_equal(http_get_status(port, "/.well-known/x/../acme-challenge/" TOKEN), 404);
    assert_int_equal(http_get_status(port, WK "%65vaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"), 404);
    assert_int_equal(http_get_status(port, "/.well-known/acme%2Dchallenge/" TOKEN), 404);
    assert_int_equal(http_get_status(port, WK TOKEN "?x=1"), 404);
    assert_int_equal(http_get_status(port, WK TOKEN "#frag"), 404);
    assert_int_equal(http_get_status(port, WK TOKEN "/"), 404);
    assert_int_equal(http_get_status(port, WK TOKEN "x"), 404);
    assert_int_equal(http_get_status(port, "/.well-known/acme-challenge//" TOKEN), 404);
    assert_int_equal(http_get_status(port, "/.Well-Known/acme-challenge/" TOKEN), 404);
    assert_int_equal(http_get_status(port, WK), 404);
    assert_int_equal(http_get_status(port, "/"), 404);
    assert_int_equal(http_get_status(port, "*"), 404);
    assert_int_equal(http_get_status(port, "http://example.org"), 404);
    assert_int_equal(http_get_status(port, "example.org:80"), 404);

    /* 256 bytes is the longest token; 257 is never one */
    memset(target, 'a', sizeof(target));
    memcpy(target, WK, strlen(WK));
    target[strlen(WK) + 257] = '\0';
    assert_int_equal(http_get_status(port, target), 404);
}

/* A token is answered only for the identifier it was published for. */
static void
test_http_host_bound(void **state)
{
    acmectl_chsrv_t  *s = *state;
    acme_err_t        err;
    acme_ident_t      v6 = { ACME_IDENT_IP, "::1" };
    int               port = acmectl_chsrv_http_port(s);
    size_t            i;
    const char       *ok[] = {
        "GET " WK TOKEN " HTTP/1.1\r\nHost: example.org\r\n\r\n",
        "GET " WK TOKEN " HTTP/1.1\r\nhost:EXAMPLE.org.:80 \r\n\r\n",
        "GET http://example.org:5002" WK TOKEN " HTTP/1.1\r\nHost: other.org\r\n\r\n",
        "GET " WK "six-6666666666666666666666 HTTP/1.1\r\nHost: [::1]:5002\r\n\r\n",
        "GET " WK "six-6666666666666666666666 HTTP/1.1\r\nHost: [0:0::1]\r\n\r\n",
    };
    const char       *no[] = {
        "GET " WK TOKEN " HTTP/1.1\r\nHost: other.org\r\n\r\n",
        "GET " WK TOKEN " HTTP/1.1\r\nHost: www.example.org\r\n\r\n",
        "GET " WK TOKEN " HTTP/1.1\r\nHost: [::1]\r\n\r\n",
        "GET " WK TOKEN " HTTP/1.1\r\nHost:\r\n\r\n",
        "GET " WK TOKEN " HTTP/1.0\r\n\r\n",
        "GET http://other.org" WK TOKEN " HTTP/1.1\r\nHost: example.org\r\n\r\n",
        "GET " WK "six-6666666666666666666666 HTTP/1.1\r\nHost: example.org\r\n\r\n",
        "GET " WK "six-6666666666666666666666 HTTP/1.1\r\nHost: [::2]\r\n\r\n",
        "GET " WK "six-6666666666666666666666 HTTP/1.1\r\nHost: [::1]x\r\n\r\n",
    };

    assert_int_equal(acmectl_chsrv_add_http(s, &v6, "six-6666666666666666666666", "six.x", &err), 0);
    for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        if (http_status(port, ok[i]) != 200) {
            fail_msg("request %zu: not answered", i);
        }
    }
    for (i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        if (http_status(port, no[i]) != 404) {
            fail_msg("request %zu: not a 404", i);
        }
    }
    /* two Host fields are a bad request */
    assert_int_equal(http_status(port, "GET " WK TOKEN " HTTP/1.1\r\nHost: example.org\r\nHost: x\r\n\r\n"),
                     400);
    assert_int_equal(acmectl_chsrv_add_http(s, NULL, "abcabcabcabc", "abc.x", &err), -1);
}

static void
test_http_long_token(void **state)
{
    acmectl_chsrv_t  *s = *state;
    acme_err_t        err;
    char              tok[258], target[300];

    memset(tok, 'Z', 256);
    tok[256] = '\0';
    assert_int_equal(acmectl_chsrv_add_http(s, &ID, tok, "Z.long", &err), 0);
    snprintf(target, sizeof(target), WK "%s", tok);
    assert_int_equal(http_get_status(acmectl_chsrv_http_port(s), target), 200);

    tok[256] = 'Z';
    tok[257] = '\0';
    assert_int_equal(acmectl_chsrv_add_http(s, &ID, tok, "Z.long", &err), -1);
    assert_int_equal(err.kind, ACME_ERR_INPUT);
}

static void
test_http_method(void **state)
{
    acmectl_chsrv_t  *s = *state;
    int               port = acmectl_chsrv_http_port(s), status;
    char             *resp;
    const char        post[] = "POST " WK TOKEN " HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";

    resp = http_raw(port, post, sizeof(post) - 1, &status);
    assert_int_equal(status, 405);
    assert_non_null(strstr(resp, "\r\nAllow: GET, HEAD\r\n"));
    assert_null(strstr(resp, KA));
    free(resp);

    assert_int_equal(http_status(port, "PUT " WK TOKEN " HTTP/1.1\r\n\r\n"), 405);
    assert_int_equal(http_status(port, "DELETE " WK TOKEN " HTTP/1.1\r\n\r\n"), 405);
    assert_int_equal(http_status(port, "OPTIONS * HTTP/1.1\r\n\r\n"), 405);
    assert_int_equal(http_status(port, "get " WK TOKEN " HTTP/1.1\r\n\r\n"), 405);
    assert_int_equal(http_status(port, "GETT " WK TOKEN " HTTP/1.1\r\n\r\n"), 405);
}

static void
test_http_bad_request(void **state)
{
    acmectl_chsrv_t  *s = *state;
    int               port = acmectl_chsrv_http_port(s), status;
    char             *resp;
    static const char nul[] = "GET " WK TOKEN " HTTP/1.1\r\nX: a\0b\r\n\r\n";
    static const char *bad[] = {
        "\x01\x02\x03 garbage\r\n\r\n",
        "hello\r\n\r\n",
        "GET\r\n\r\n",
        "GET " WK TOKEN "\r\n\r\n",                        /* HTTP/0.9 */
        "GET  " WK TOKEN " HTTP/1.1\r\n\r\n",              /* two spaces */
        "GET " WK TOKEN "  HTTP/1.1\r\n\r\n",
        "GET " WK TOKEN " HTTP/1.1 \r\n\r\n",
        "GET " WK TOKEN " HTTP/2.0\r\n\r\n",
        "GET " WK TOKEN " HTTP/1.10\r\n\r\n",
        "GET " WK TOKEN " http/1.1\r\n\r\n",
        "GET " WK TOKEN " FTP/1.1\r\n\r\n",
        "GET\t" WK TOKEN " HTTP/1.1\r\n\r\n",
        "GET " WK TOKEN "\x7f HTTP/1.1\r\n\r\n",
        "GET " WK TOKEN "\xc3\xa9 HTTP/1.1\r\n\r\n",
        "GET " WK TOKEN "\r HTTP/1.1\r\n\r\n",
        " GET " WK TOKEN " HTTP/1.1\r\n\r\n",
        "GET " WK TOKEN " HTTP/1.1\r\nHost x\r\n\r\n",     /* no colon */
        "GET " WK TOKEN " HTTP/1.1\r\nHost : x\r\n\r\n",   /* space before the colon */
        "GET " WK TOKEN " HTTP/1.1\r\n: x\r\n\r\n",        /* no name */
        "GET " WK TOKEN " HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        "GET " WK TOKEN " HTTP/1.1\r\nX: a\x01" "b\r\n\r\n",
        "GET " WK TOKEN " HTTP/1.1\r\nX: a\rb\r\n\r\n",
        "POST\x01 / HTTP/1.1\r\n\r\n",
        NULL
    };
    size_t            i;

    for (i = 0; bad[i] != NULL; i++) {
        status = http_status(port, bad[i]);
        if (status != 400) {
            fail_msg("request %zu: status %d, want 400", i, status);
        }
    }
    resp = http_raw(port, nul, sizeof(nul) - 1, &status);
    assert_int_equal(status, 400);
    free(resp);

    /* tabs and UTF-8 in field values are fine */
    assert_int_equal(http_status(port, "GET " WK TOKEN " HTTP/1.1\r\nX:\ta\xc3\xa9\t\r\nHost: example.org\r\n\r\n"), 200);
}

static void
test_http_too_large(void **state)
{
    acmectl_chsrv_t  *s = *state;
    acme_buf_t        b = { NULL, 0, 0 };
    char             *resp;
    int               status, i;

    assert_int_equal(acme_buf_printf(&b, "GET " WK TOKEN " HTTP/1.1\r\n"), 0);
    for (i = 0; i < 200; i++) {
        assert_int_equal(acme_buf_printf(&b, "X-Filler-%03d: %s\r\n", i, "0123456789012345678901234567890123"),
                         0);
    }
    assert_int_equal(acme_buf_printf(&b, "\r\n"), 0);
    assert_true(b.len > CHSRV_HEAD_MAX);
    resp = http_raw(acmectl_chsrv_http_port(s), b.data, b.len, &status);
    assert_int_equal(status, 431);
    free(resp);

    /* a head just under the limit still works */
    b.len = 0;
    assert_int_equal(acme_buf_printf(&b, "GET " WK TOKEN " HTTP/1.1\r\nHost: example.org\r\nX: "), 0);
    while (b.len < CHSRV_HEAD_MAX - 4) {
        assert_int_equal(acme_buf_append(&b, "y", 1), 0);
    }
    assert_int_equal(acme_buf_printf(&b, "\r\n\r\n"), 0);
    assert_int_equal(b.len, CHSRV_HEAD_MAX);
    resp = http_raw(acmectl_chsrv_http_port(s), b.data, b.len, &status);
    assert_int_equal(status, 200);
    assert_string_equal(http_body(resp), KA);
    free(resp);
    acme_buf_free(&b);
}

static void
test_http_remove_replace(void **state)
{
    acmectl_chsrv_t  *s = *state;
    acme_err_t        err;
    char             *resp;
    int               port = acmectl_chsrv_http_port(s), status;
    const char        req[] = "GET " WK TOKEN " HTTP/1.1\r\nHost: example.org\r\n\r\n";

    assert_int_equal(acmectl_chsrv_add_http(s, &ID, "other", "other.x", &err), 0);
    assert_int_equal(acmectl_chsrv_add_http(s, &ID, TOKEN, KA2, &err), 0);
    resp = http_raw(port, req, sizeof(req) - 1, &status);
    assert_int_equal(status, 200);
    assert_string_equal(http_body(resp), KA2);
    free(resp);

    acmectl_chsrv_remove_http(s, TOKEN);
    assert_int_equal(http_get_status(port, WK TOKEN), 404);
    assert_int_equal(http_get_status(port, WK "other"), 200);
    acmectl_chsrv_remove_http(s, TOKEN);        /* twice is harmless */
    acmectl_chsrv_remove_http(s, "never");
    acmectl_chsrv_remove_http(s, NULL);
    acmectl_chsrv_remove_http(s, "other");
    assert_int_equal(http_get_status(port, WK "other"), 404);
}

static void
test_http_add_errors(void **state)
{
    acmectl_chsrv_t  *s = *state;
    acme_err_t        err;

    assert_int_equal(acmectl_chsrv_add_http(s, &ID, "", KA, &err), -1);
    assert_int_equal(acmectl_chsrv_add_http(s, &ID, NULL, KA, &err), -1);
    assert_int_equal(acmectl_chsrv_add_http(s, &ID, "a/b", KA, &err), -1);
    assert_int_equal(acmectl_chsrv_add_http(s, &ID, "..", KA, &err), -1);
    assert_int_equal(acmectl_chsrv_add_http(s, &ID, "a=", KA, &err), -1);
    assert_int_equal(acmectl_chsrv_add_http(s, &ID, "abc", "", &err), -1);
    assert_int_equal(acmectl_chsrv_add_http(s, &ID, "abc", NULL, &err), -1);
    assert_int_equal(err.kind, ACME_ERR_INPUT);
    assert_int_equal(acmectl_chsrv_add_http(NULL, &ID, "abc", "abc.x", &err), -1);
    assert_int_equal(acmectl_chsrv_add_http(s, &ID, "abc", "abc.x", NULL), 0);
}

/* Idle and half-sent connections are dropped after the timeout while others are served. */
static void
test_http_timeout(void **state)
{
    acmectl_chsrv_t  *s = *state;
    int               port = acmectl_chsrv_http_port(s), idle, half;
    int64_t           t0, dt;
    char              c;
    ssize_t           n;

    t0 = chsrv_now();
    idle = tcp_connect(port);
    half = tcp_connect(port);
    send_all(half, "GET " WK, strlen("GET " WK));
    assert_int_equal(http_get_status(port, WK TOKEN), 200);

    n = recv(idle, &c, 1, 0);
    dt = chsrv_now() - t0;
    assert_int_equal(n, 0);
    assert_true(dt >= CHSRV_TIMEOUT_MS - 100 && dt < CHSRV_TIMEOUT_MS + 1500);
    n = recv(half, &c, 1, 0);
    assert_int_equal(n, 0);
    close(idle);
    close(half);

    /* a peer that goes away mid-request is no trouble */
    half = tcp_connect(port);
    send_all(half, "GET /", 5);
    close(half);
    assert_int_equal(http_get_status(port, WK TOKEN), 200);
}

/* More connections than the server keeps: the oldest make room, new requests are still served. */
static void
test_http_many(void **state)
{
    acmectl_chsrv_t  *s = *state;
    int               port = acmectl_chsrv_http_port(s), fds[CHSRV_MAX_CONNS + 20];
    size_t            i;

    for (i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
        fds[i] = tcp_connect(port);
    }
    assert_int_equal(http_get_status(port, WK TOKEN), 200);
    for (i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
        close(fds[i]);
    }
    assert_int_equal(http_get_status(port, WK TOKEN), 200);
}

/* ---- TLS-ALPN-01 ---- */

static int  last_alert;

static void
info_cb(const SSL *ssl, int where, int ret)
{
    (void) ssl;
    if (where & SSL_CB_READ_ALERT) {
        last_alert = ret & 0xff;
    }
}

typedef struct {
    int     ok;
    int     alert;
    int     version;
    char    alpn[32];
    X509   *peer;
} tls_res_t;

/* alpn: wire format (length-prefixed), NULL to offer none; sni NULL to send none. */
static void
tls_try(int port, const char *sni, const unsigned char *alpn, size_t alpn_len, tls_res_t *r)
{
    SSL_CTX              *ctx;
    SSL                  *ssl;
    const unsigned char  *sel;
    unsigned int          sel_len;
    int                   fd;

    memset(r, 0, sizeof(*r));
    last_alert = -1;
    ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_info_callback(ctx, info_cb);
    if (alpn != NULL) {
        assert_int_equal(SSL_CTX_set_alpn_protos(ctx, alpn, (unsigned int) alpn_len), 0);
    }
    ssl = SSL_new(ctx);
    assert_non_null(ssl);
    if (sni != NULL) {
        assert_int_equal(SSL_set_tlsext_host_name(ssl, sni), 1);
    }
    fd = tcp_connect(port);
    assert_int_equal(SSL_set_fd(ssl, fd), 1);

    r->ok = SSL_connect(ssl) == 1;
    r->alert = last_alert;
    if (r->ok) {
        r->version = SSL_version(ssl);
        SSL_get0_alpn_selected(ssl, &sel, &sel_len);
        if (sel_len < sizeof(r->alpn)) {
            memcpy(r->alpn, sel, sel_len);
            r->alpn[sel_len] = '\0';
        }
        r->peer = SSL_get1_peer_certificate(ssl);
        assert_non_null(r->peer);
    }
    ERR_clear_error();
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
}

static const unsigned char  alpn_acme[] = "\x0a" "acme-tls/1";
static const unsigned char  alpn_h2[] = "\x02" "h2";
static const unsigned char  alpn_both[] = "\x02" "h2" "\x08" "http/1.1" "\x0a" "acme-tls/1";

/* The certificate names exactly the identifier and carries SHA-256(key authorization). */
static void
check_cert(X509 *cert, int type, const char *value, const char *ka)
{
    GENERAL_NAMES            *gens;
    GENERAL_NAME             *gn;
    ASN1_OBJECT              *oid;
    X509_EXTENSION           *ext;
    const ASN1_OCTET_STRING  *v;
    unsigned char             md[32], ip[16];
    unsigned int              mdlen;
    int                       idx;

    gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    assert_non_null(gens);
    assert_int_equal(sk_GENERAL_NAME_num(gens), 1);
    gn = sk_GENERAL_NAME_value(gens, 0);
    if (type == ACME_IDENT_DNS) {
        assert_int_equal(gn->type, GEN_DNS);
        assert_int_equal(ASN1_STRING_length(gn->d.dNSName), (int) strlen(value));
        assert_memory_equal(ASN1_STRING_get0_data(gn->d.dNSName), value, strlen(value));
    } else {
        assert_int_equal(gn->type, GEN_IPADD);
        assert_int_equal(inet_pton(AF_INET, value, ip), 1);
        assert_int_equal(ASN1_STRING_length(gn->d.iPAddress), 4);
        assert_memory_equal(ASN1_STRING_get0_data(gn->d.iPAddress), ip, 4);
    }
    GENERAL_NAMES_free(gens);

    oid = OBJ_txt2obj(ACME_TLSALPN_OID, 1);
    assert_non_null(oid);
    idx = X509_get_ext_by_OBJ(cert, oid, -1);
    ASN1_OBJECT_free(oid);
    assert_true(idx >= 0);
    ext = X509_get_ext(cert, idx);
    assert_int_equal(X509_EXTENSION_get_critical(ext), 1);
    v = X509_EXTENSION_get_data(ext);
    assert_int_equal(EVP_Digest(ka, strlen(ka), md, &mdlen, EVP_sha256(), NULL), 1);
    assert_int_equal(ASN1_STRING_length(v), 34);
    assert_int_equal(ASN1_STRING_get0_data(v)[0], 0x04);
    assert_int_equal(ASN1_STRING_get0_data(v)[1], 0x20);
    assert_memory_equal(ASN1_STRING_get0_data(v) + 2, md, 32);
}

static void
add_ident(acmectl_chsrv_t *s, const char *name, const char *ka, acme_ident_t *id)
{
    acme_err_t  err;

    if (acme_ident_parse(name, id, &err) != 0) {
        fail_msg("%s", err.msg);
    }
    if (acmectl_chsrv_add_tlsalpn(s, id, ka, &err) != 0) {
        fail_msg("%s", err.msg);
    }
}

static void
test_tls_ok(void **state)
{
    acmectl_chsrv_t  *s = *state;
    acme_ident_t      a, b;
    tls_res_t         r;
    int               port = acmectl_chsrv_tls_port(s);

    add_ident(s, "a.example.org", KA, &a);
    add_ident(s, "b.example.org", KA2, &b);

    tls_try(port, "a.example.org", alpn_acme, sizeof(alpn_acme) - 1, &r);
    assert_true(r.ok);
    assert_string_equal(r.alpn, "acme-tls/1");
    assert_true(r.version >= TLS1_2_VERSION);
    check_cert(r.peer, ACME_IDENT_DNS, "a.example.org", KA);
    X509_free(r.peer);

    /* SNI compares without case; other protocols offered alongside are fine */
    tls_try(port, "B.Example.ORG", alpn_both, sizeof(alpn_both) - 1, &r);
    assert_true(r.ok);
    assert_string_equal(r.alpn, "acme-tls/1");
    check_cert(r.peer, ACME_IDENT_DNS, "b.example.org", KA2);
    X509_free(r.peer);

    /* an absolute name (trailing dot) is the same name */
    tls_try(port, "a.example.org.", alpn_acme, sizeof(alpn_acme) - 1, &r);
    assert_true(r.ok);
    check_cert(r.peer, ACME_IDENT_DNS, "a.example.org", KA);
    X509_free(r.peer);

    /* replacing the challenge replaces the certificate */
    acme_ident_free(&a);
    add_ident(s, "a.example.org", KA2, &a);
    tls_try(port, "a.example.org", alpn_acme, sizeof(alpn_acme) - 1, &r);
    assert_true(r.ok);
    check_cert(r.peer, ACME_IDENT_DNS, "a.example.org", KA2);
    X509_free(r.peer);

    acme_ident_free(&a);
    acme_ident_free(&b);
}

static void
test_tls_tls12(void **state)
{
    acmectl_chsrv_t  *s = *state;
    acme_ident_t      a;
    SSL_CTX          *ctx;
    SSL              *ssl;
    const unsigned char *sel;
    unsigned int      sel_len;
    int               fd;

    add_ident(s, "a.example.org", KA, &a);
    ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION), 1);
    assert_int_equal(SSL_CTX_set_alpn_protos(ctx, alpn_acme, sizeof(alpn_acme) - 1), 0);
    ssl = SSL_new(ctx);
    assert_int_equal(SSL_set_tlsext_host_name(ssl, "a.example.org"), 1);
    fd = tcp_connect(acmectl_chsrv_tls_port(s));
    SSL_set_fd(ssl, fd);
    assert_int_equal(SSL_connect(ssl), 1);
    assert_int_equal(SSL_version(ssl), TLS1_2_VERSION);
    SSL_get0_alpn_selected(ssl, &sel, &sel_len);
    assert_int_equal(sel_len, 10);
    assert_memory_equal(sel, "acme-tls/1", 10);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    acme_ident_free(&a);
}

static void
test_tls_ip(void **state)
{
    acmectl_chsrv_t  *s = *state;
    acme_ident_t      ip;
    tls_res_t         r;
    int               port = acmectl_chsrv_tls_port(s);

    add_ident(s, "127.0.0.1", KA, &ip);
    tls_try(port, "1.0.0.127.in-addr.arpa", alpn_acme, sizeof(alpn_acme) - 1, &r);
    assert_true(r.ok);
    assert_string_equal(r.alpn, "acme-tls/1");
    check_cert(r.peer, ACME_IDENT_IP, "127.0.0.1", KA);
    X509_free(r.peer);

    acmectl_chsrv_remove_tlsalpn(s, &ip);
    tls_try(port, "1.0.0.127.in-addr.arpa", alpn_acme, sizeof(alpn_acme) - 1, &r);
    assert_false(r.ok);
    acme_ident_free(&ip);
}

static void
test_tls_refused(void **state)
{
    acmectl_chsrv_t  *s = *state;
    acme_ident_t      a;
    tls_res_t         r;
    int               port = acmectl_chsrv_tls_port(s);

    add_ident(s, "a.example.org", KA, &a);

    /* unknown or missing SNI: unrecognized_name */
    tls_try(port, "c.example.org", alpn_acme, sizeof(alpn_acme) - 1, &r);
    assert_false(r.ok);
    assert_int_equal(r.alert, SSL_AD_UNRECOGNIZED_NAME);
    tls_try(port, "example.org", alpn_acme, sizeof(alpn_acme) - 1, &r);
    assert_false(r.ok);
    assert_int_equal(r.alert, SSL_AD_UNRECOGNIZED_NAME);
    tls_try(port, "x.a.example.org", alpn_acme, sizeof(alpn_acme) - 1, &r);
    assert_false(r.ok);
    assert_int_equal(r.alert, SSL_AD_UNRECOGNIZED_NAME);
    tls_try(port, NULL, alpn_acme, sizeof(alpn_acme) - 1, &r);
    assert_false(r.ok);
    assert_int_equal(r.alert, SSL_AD_UNRECOGNIZED_NAME);

    /* acme-tls/1 not offered: no_application_protocol */
    tls_try(port, "a.example.org", NULL, 0, &r);
    assert_false(r.ok);
    assert_int_equal(r.alert, SSL_AD_NO_APPLICATION_PROTOCOL);
    tls_try(port, "a.example.org", alpn_h2, sizeof(alpn_h2) - 1, &r);
    assert_false(r.ok);
    assert_int_equal(r.alert, SSL_AD_NO_APPLICATION_PROTOCOL);

    /* removal */
    tls_try(port, "a.example.org", alpn_acme, sizeof(alpn_acme) - 1, &r);
    assert_true(r.ok);
    X509_free(r.peer);
    acmectl_chsrv_remove_tlsalpn(s, &a);
    acmectl_chsrv_remove_tlsalpn(s, &a);
    acmectl_chsrv_remove_tlsalpn(s, NULL);
    tls_try(port, "a.example.org", alpn_acme, sizeof(alpn_acme) - 1, &r);
    assert_false(r.ok);
    assert_int_equal(r.alert, SSL_AD_UNRECOGNIZED_NAME);
    acme_ident_free(&a);
}

/* Not TLS at all, or an early hang-up: dropped, and the server keeps serving. */
static void
test_tls_garbage(void **state)
{
    acmectl_chsrv_t  *s = *state;
    acme_ident_t      a;
    tls_res_t         r;
    char             *resp;
    int               port = acmectl_chsrv_tls_port(s), fd;

    add_ident(s, "a.example.org", KA, &a);
    fd = tcp_connect(port);
    send_all(fd, "GET / HTTP/1.1\r\n\r\n", 18);
    resp = read_all(fd);
    close(fd);
    free(resp);

    fd = tcp_connect(port);
    send_all(fd, "\x16\x03\x01\x02\x00\x01", 6);
    close(fd);

    tls_try(port, "a.example.org", alpn_acme, sizeof(alpn_acme) - 1, &r);
    assert_true(r.ok);
    X509_free(r.peer);
    acme_ident_free(&a);
}

static void
test_tls_add_errors(void **state)
{
    acmectl_chsrv_t  *s = *state;
    acme_ident_t      id;
    acme_err_t        err;

    assert_int_equal(acmectl_chsrv_add_tlsalpn(s, NULL, KA, &err), -1);
    assert_int_equal(acme_ident_parse("a.example.org", &id, &err), 0);
    assert_int_equal(acmectl_chsrv_add_tlsalpn(s, &id, "", &err), -1);
    assert_int_equal(acmectl_chsrv_add_tlsalpn(s, &id, NULL, &err), -1);
    assert_int_equal(acmectl_chsrv_add_tlsalpn(NULL, &id, KA, &err), -1);
    acme_ident_free(&id);
    assert_int_equal(acme_ident_parse("*.example.org", &id, &err), 0);
    assert_int_equal(acmectl_chsrv_add_tlsalpn(s, &id, KA, &err), -1);
    acme_ident_free(&id);
}

/* ---- listening and life cycle ---- */

static void
expect_start_error(const char *http, const char *tls, const char *want)
{
    acmectl_chsrv_t  *s;
    acme_err_t        err;

    memset(&err, 0, sizeof(err));
    s = acmectl_chsrv_start(http, tls, &err);
    if (s != NULL) {
        acmectl_chsrv_stop(s);
        fail_msg("\"%s\" / \"%s\" started", http ? http : "-", tls ? tls : "-");
    }
    if (strstr(err.msg, want) == NULL) {
        fail_msg("\"%s\": want \"%s\" in \"%s\"", http ? http : tls, want, err.msg);
    }
}

static void
test_listen(void **state)
{
    acmectl_chsrv_t  *s, *s2;
    acme_err_t        err;
    char              spec[64], want[128];

    (void) state;
    expect_start_error("", NULL, "empty listen address");
    expect_start_error("127.0.0.1", NULL, "bad listen address \"127.0.0.1\"");
    expect_start_error("127.0.0.1:", NULL, "bad listen address");
    expect_start_error("127.0.0.1:65536", NULL, "bad listen address");
    expect_start_error("127.0.0.1:123456", NULL, "bad listen address");
    expect_start_error("127.0.0.1:-1", NULL, "bad listen address");
    expect_start_error("127.0.0.1:8x", NULL, "bad listen address");
    expect_start_error("::1:80", NULL, "brackets");
    expect_start_error("[::1]", NULL, "bad listen address");
    expect_start_error("[::1]80", NULL, "bad listen address");
    expect_start_error("[]:80", NULL, "bad listen address");
    expect_start_error("[127.0.0.1]:80", NULL, "not an IPv6 address");
    expect_start_error("localhost:80", NULL, "not an IPv4 address");
    expect_start_error("999.0.0.1:80", NULL, "not an IPv4 address");
    expect_start_error(NULL, "nonsense", "tls-alpn-01 server: bad listen address \"nonsense\"");

    /* a port in use: the message names the address */
    s = acmectl_chsrv_start("127.0.0.1:0", NULL, &err);
    assert_non_null(s);
    assert_int_equal(acmectl_chsrv_tls_port(s), -1);
    snprintf(spec, sizeof(spec), "127.0.0.1:%d", acmectl_chsrv_http_port(s));
    snprintf(want, sizeof(want), "cannot listen on %s: %s", spec, strerror(EADDRINUSE));
    expect_start_error(spec, NULL, want);
    expect_start_error("127.0.0.1:0", spec, want);
    acmectl_chsrv_stop(s);

    /* all addresses, reachable over 127.0.0.1; "*:", and a bare port */
    s = acmectl_chsrv_start(":0", "*:0", &err);
    assert_non_null(s);
    assert_int_equal(acmectl_chsrv_add_http(s, &ID, TOKEN, KA, &err), 0);
    assert_int_equal(http_get_status(acmectl_chsrv_http_port(s), WK TOKEN), 200);
    acmectl_chsrv_stop(s);
    s = acmectl_chsrv_start("0", NULL, &err);
    assert_non_null(s);
    acmectl_chsrv_stop(s);

    /* IPv6 loopback, where the host has it */
    s = acmectl_chsrv_start("[::1]:0", NULL, &err);
    if (s == NULL) {
        assert_non_null(strstr(err.msg, "cannot listen on [::1]:0"));
    } else {
        assert_true(acmectl_chsrv_http_port(s) > 0);
        acmectl_chsrv_stop(s);
    }

    /* nothing at all is allowed, and stop(NULL) too */
    s = acmectl_chsrv_start(NULL, NULL, &err);
    assert_non_null(s);
    assert_int_equal(acmectl_chsrv_http_port(s), -1);
    assert_int_equal(acmectl_chsrv_tls_port(s), -1);
    acmectl_chsrv_stop(s);
    acmectl_chsrv_stop(NULL);
    assert_int_equal(acmectl_chsrv_http_port(NULL), -1);

    /* two servers at once */
    s = start_local();
    s2 = start_local();
    acmectl_chsrv_stop(s2);
    acmectl_chsrv_stop(s);
}

/* Stopping with connections open everywhere frees them all (ASan watches). */
static void
test_stop_busy(void **state)
{
    acmectl_chsrv_t  *s;
    acme_ident_t      a;
    int               fds[4];
    size_t            i;

    (void) state;
    s = start_local();
    add_ident(s, "a.example.org", KA, &a);
    assert_int_equal(acmectl_chsrv_add_http(s, &ID, TOKEN, KA, NULL), 0);
    fds[0] = tcp_connect(acmectl_chsrv_http_port(s));
    fds[1] = tcp_connect(acmectl_chsrv_http_port(s));
    send_all(fds[1], "GET /", 5);
    fds[2] = tcp_connect(acmectl_chsrv_tls_port(s));
    fds[3] = tcp_connect(acmectl_chsrv_tls_port(s));
    send_all(fds[3], "\x16\x03\x01", 3);
    usleep(100000);
    acmectl_chsrv_stop(s);
    for (i = 0; i < 4; i++) {
        close(fds[i]);
    }
    acme_ident_free(&a);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_http_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_split, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_host_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_long_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_method, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_bad_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_remove_replace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_add_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_many, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_tls12, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_ip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_add_errors, setup, teardown),
        cmocka_unit_test(test_listen),
        cmocka_unit_test(test_stop_busy),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
