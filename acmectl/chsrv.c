/*
 * acmectl's challenge servers: a minimal HTTP-01 responder and a TLS-ALPN-01 (RFC 8737) responder,
 * both on non-blocking sockets driven by one poll() loop in one background thread.
 */
#include "chsrv.h"
#include "acme_b64.h"
#include "acme_tlsalpn.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#ifndef CHSRV_TIMEOUT_MS
#define CHSRV_TIMEOUT_MS        10000   /* the whole life of a connection */
#endif
#ifndef CHSRV_LINGER_MS
#define CHSRV_LINGER_MS         2000    /* draining the peer after we answered */
#endif
#define CHSRV_HEAD_MAX          8192
#define CHSRV_MAX_CONNS         256
#define CHSRV_ACCEPT_BURST      32
#define CHSRV_ACCEPT_PAUSE_MS   100     /* out of descriptors: stop accepting for a while */
#define CHSRV_TOKEN_MAX         256
#define CHSRV_KEYAUTHZ_MAX      4096
#define CHSRV_SNI_MAX           256
#define CHSRV_WELL_KNOWN        "/.well-known/acme-challenge/"

typedef struct chsrv_http_s  chsrv_http_t;
typedef struct chsrv_tls_s   chsrv_tls_t;

struct chsrv_http_s {
    chsrv_http_t  *next;
    char          *token;
    acme_ident_t   id;          /* answered for this Host only */
    char          *key_authz;
};

struct chsrv_tls_s {
    chsrv_tls_t   *next;
    char          *sni;         /* lowercase */
    X509          *cert;
    EVP_PKEY      *key;
};

typedef enum {
    CHSRV_HTTP_READ = 0,
    CHSRV_HTTP_WRITE,
    CHSRV_TLS_HANDSHAKE,
    CHSRV_LINGER                /* answered, write side shut: read until EOF so no RST eats the answer */
} chsrv_state_t;

typedef struct {
    int             fd;
    chsrv_state_t   state;
    short           events;
    int64_t         deadline;
    SSL            *ssl;
    acme_buf_t      out;
    size_t          sent;
    size_t          scanned;
    size_t          inlen;
    char            in[CHSRV_HEAD_MAX + 1];
} chsrv_conn_t;

typedef struct {
    int             fd;
    int             port;
    int             tls;
} chsrv_listener_t;

struct acmectl_chsrv_s {
    pthread_mutex_t   lock;         /* guards http and tls */
    int               lock_inited;
    chsrv_http_t     *http;
    chsrv_tls_t      *tls;

    pthread_t         thread;
    int               running;
    int               wake[2];
    chsrv_listener_t  lst[2];       /* 0: HTTP-01, 1: TLS-ALPN-01 */
    SSL_CTX          *ctx;

    /* owned by the thread */
    chsrv_conn_t     *conns[CHSRV_MAX_CONNS];
    size_t            nconns;
    int64_t           accept_pause;
    struct pollfd     pfd[3 + CHSRV_MAX_CONNS];
};

static int64_t
chsrv_now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
chsrv_lower(char *p)
{
    for ( /* void */ ; *p; p++) {
        if (*p >= 'A' && *p <= 'Z') {
            *p = (char) (*p - 'A' + 'a');
        }
    }
}

/* ---- listening ---- */

static int
chsrv_bind(int family, const struct sockaddr *sa, socklen_t salen, int dual)
{
    int  fd, on = 1, off = 0, e;

    fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0
        || (dual && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off)) != 0)
        || bind(fd, sa, salen) != 0
        || listen(fd, SOMAXCONN) != 0)
    {
        e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* "ADDR:PORT", "[V6ADDR]:PORT", ":PORT", "*:PORT" or "PORT"; returns the listening socket. */
static int
chsrv_listen(const char *spec, int *port, acme_err_t *err)
{
    struct addrinfo          hints, *res;
    struct sockaddr_in       sin;
    struct sockaddr_in6      sin6;
    struct sockaddr_storage  ss;
    socklen_t                sslen;
    const char              *host, *p, *close_br, *colon;
    char                     hbuf[INET6_ADDRSTRLEN + 64];
    size_t                   hlen;
    unsigned long            num;
    int                      fd, rc, v6;

    if (spec == NULL || spec[0] == '\0') {
        acme_err_set(err, ACME_ERR_CONFIG, "empty listen address");
        return -1;
    }

    v6 = 0;
    if (spec[0] == '[') {
        close_br = strchr(spec, ']');
        if (close_br == NULL || close_br[1] != ':' || close_br == spec + 1) {
            goto bad;
        }
        host = spec + 1;
        hlen = (size_t) (close_br - host);
        p = close_br + 2;
        v6 = 1;

    } else {
        colon = strrchr(spec, ':');
        if (colon == NULL) {
            host = spec;
            hlen = 0;
            p = spec;
        } else {
            host = spec;
            hlen = (size_t) (colon - spec);
            p = colon + 1;
            if (memchr(host, ':', hlen) != NULL) {
                acme_err_set(err, ACME_ERR_CONFIG,
                             "bad listen address \"%.200s\": put IPv6 addresses in brackets, "
                             "as in [::1]:80", spec);
                return -1;
            }
        }
        if (hlen == 1 && host[0] == '*') {
            hlen = 0;
        }
    }

    if (p[0] == '\0' || strspn(p, "0123456789") != strlen(p) || strlen(p) > 5) {
        goto bad;
    }
    num = strtoul(p, NULL, 10);
    if (num > 65535) {
        goto bad;
    }

    if (hlen == 0) {
        /* all addresses: one dual-stack socket, or IPv4 alone where IPv6 is missing */
        memset(&sin6, 0, sizeof(sin6));
        sin6.sin6_family = AF_INET6;
        sin6.sin6_addr = in6addr_any;
        sin6.sin6_port = htons((uint16_t) num);
        fd = chsrv_bind(AF_INET6, (struct sockaddr *) &sin6, sizeof(sin6), 1);
        if (fd < 0 && (errno == EAFNOSUPPORT || errno == EADDRNOTAVAIL || errno == EPROTONOSUPPORT)) {
            memset(&sin, 0, sizeof(sin));
            sin.sin_family = AF_INET;
            sin.sin_addr.s_addr = htonl(INADDR_ANY);
            sin.sin_port = htons((uint16_t) num);
            fd = chsrv_bind(AF_INET, (struct sockaddr *) &sin, sizeof(sin), 0);
        }

    } else {
        if (hlen >= sizeof(hbuf)) {
            goto bad;
        }
        memcpy(hbuf, host, hlen);
        hbuf[hlen] = '\0';
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = v6 ? AF_INET6 : AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_NUMERICHOST | AI_PASSIVE;
        res = NULL;
        rc = getaddrinfo(hbuf, NULL, &hints, &res);
        if (rc != 0 || res == NULL || res->ai_addrlen > sizeof(ss)) {
            if (res != NULL) {
                freeaddrinfo(res);
            }
            acme_err_set(err, ACME_ERR_CONFIG, "bad listen address \"%.200s\": \"%s\" is not an %s address",
                         spec, hbuf, v6 ? "IPv6" : "IPv4");
            return -1;
        }
        memset(&ss, 0, sizeof(ss));
        memcpy(&ss, res->ai_addr, res->ai_addrlen);
        sslen = (socklen_t) res->ai_addrlen;
        freeaddrinfo(res);
        if (ss.ss_family == AF_INET6) {
            ((struct sockaddr_in6 *) &ss)->sin6_port = htons((uint16_t) num);
        } else {
            ((struct sockaddr_in *) &ss)->sin_port = htons((uint16_t) num);
        }
        fd = chsrv_bind(ss.ss_family, (struct sockaddr *) &ss, sslen, 0);
    }

    if (fd < 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "cannot listen on %.200s: %s", spec, strerror(errno));
        return -1;
    }

    sslen = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *) &ss, &sslen) != 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "cannot listen on %.200s: getsockname: %s", spec,
                     strerror(errno));
        close(fd);
        return -1;
    }
    *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *) &ss)->sin6_port
                                           : ((struct sockaddr_in *) &ss)->sin_port);
    return fd;

bad:
    acme_err_set(err, ACME_ERR_CONFIG, "bad listen address \"%.200s\": use ADDR:PORT, [IPV6]:PORT or :PORT",
                 spec);
    return -1;
}

/* ---- connections ---- */

static void
chsrv_conn_close(acmectl_chsrv_t *s, size_t i)
{
    chsrv_conn_t  *c = s->conns[i];

    if (c->ssl != NULL) {
        SSL_free(c->ssl);
        ERR_clear_error();
    }
    close(c->fd);
    acme_buf_free(&c->out);
    free(c);
    s->conns[i] = s->conns[--s->nconns];
}

static int
chsrv_linger_start(chsrv_conn_t *c, int64_t now)
{
    shutdown(c->fd, SHUT_WR);
    c->state = CHSRV_LINGER;
    c->events = POLLIN;
    if (c->deadline > now + CHSRV_LINGER_MS) {
        c->deadline = now + CHSRV_LINGER_MS;
    }
    return 0;
}

static int
chsrv_linger(chsrv_conn_t *c)
{
    char     buf[4096];
    ssize_t  n;
    int      i;

    for (i = 0; i < 16; i++) {
        n = recv(c->fd, buf, sizeof(buf), 0);
        if (n > 0) {
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        }
        return -1;
    }
    return 0;
}

/* ---- HTTP-01 ---- */

static int
chsrv_tchar(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')) {
        return 1;
    }
    return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static const char *
chsrv_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 431: return "Request Header Fields Too Large";
    }
    return "Internal Server Error";
}

static int
chsrv_http_write(chsrv_conn_t *c, int64_t now)
{
    ssize_t  n;

    while (c->sent < c->out.len) {
        n = send(c->fd, c->out.data + c->sent, c->out.len - c->sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (size_t) n;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c->events = POLLOUT;
            return 0;
        }
        return -1;
    }
    return chsrv_linger_start(c, now);
}

/* body NULL: a short text naming the status. */
static int
chsrv_http_respond(chsrv_conn_t *c, int status, const char *body, int head_only, int64_t now)
{
    const char  *reason = chsrv_reason(status);
    char         text[64];
    size_t       blen;
    int          rc;

    if (body == NULL) {
        snprintf(text, sizeof(text), "%s\n", reason);
        body = text;
    }
    blen = strlen(body);

    rc = acme_buf_printf(&c->out,
                         "HTTP/1.1 %d %s\r\n"
                         "Server: acmectl\r\n"
                         "Content-Type: %s\r\n"
                         "Content-Length: %zu\r\n"
                         "%s"
                         "Cache-Control: no-store\r\n"
                         "Connection: close\r\n"
                         "\r\n",
                         status, reason,
                         status == 200 ? "application/octet-stream" : "text/plain; charset=utf-8",
                         blen,
                         status == 405 ? "Allow: GET, HEAD\r\n" : "");
    if (rc != 0 || (!head_only && acme_buf_append(&c->out, body, blen) != 0)) {
        return -1;
    }
    c->sent = 0;
    c->state = CHSRV_HTTP_WRITE;
    c->events = POLLOUT;
    return chsrv_http_write(c, now);
}

/* The length of the head including its blank line, 0 while incomplete. Leading empty lines are skipped. */
static size_t
chsrv_head_len(chsrv_conn_t *c)
{
    const char  *p = c->in;
    size_t       i, len = c->inlen;

    i = c->scanned > 2 ? c->scanned - 2 : 0;
    if (i == 0) {
        while (i < len && (p[i] == '\r' || p[i] == '\n')) {
            i++;
        }
        if (i == len) {
            return 0;       /* only empty lines so far: scan them again next time */
        }
    }
    for ( /* void */ ; i < len; i++) {
        if (p[i] != '\n') {
            continue;
        }
        if (i + 1 < len && p[i + 1] == '\n') {
            return i + 2;
        }
        if (i + 2 < len && p[i + 1] == '\r' && p[i + 2] == '\n') {
            return i + 3;
        }
    }
    c->scanned = len;
    return 0;
}

/* The end of the line starting at p (at its CR when it ends in CRLF); *next: the following line. */
static const char *
chsrv_line(const char *p, const char *end, const char **next)
{
    const char  *eol;

    eol = memchr(p, '\n', (size_t) (end - p));
    if (eol == NULL) {
        *next = end;
        return end;
    }
    *next = eol + 1;
    if (eol > p && eol[-1] == '\r') {
        eol--;
    }
    return eol;
}

/* The identifier a Host (header or absolute-form authority) names: the port cut off, then read as
 * identifiers are stored (case, trailing dot, IPv6 brackets). 0, or -1 when there is none. */
static int
chsrv_host_ident(const char *host, size_t len, acme_ident_t *id)
{
    char         buf[CHSRV_SNI_MAX + 8];
    const char  *colon;

    id->value = NULL;
    if (host == NULL || len == 0 || len >= sizeof(buf)) {
        return -1;
    }
    if (host[0] == '[') {
        colon = memchr(host, ']', len);
        if (colon == NULL || (colon + 1 < host + len && colon[1] != ':')) {
            return -1;
        }
        len = (size_t) (colon + 1 - host);
    } else if ((colon = memchr(host, ':', len)) != NULL) {
        len = (size_t) (colon - host);
    }
    memcpy(buf, host, len);
    buf[len] = '\0';
    return acme_ident_parse(buf, id, NULL);
}

static int
chsrv_http_request(acmectl_chsrv_t *s, chsrv_conn_t *c, size_t headlen, int64_t now)
{
    const char    *p, *end, *eol, *next, *method, *target, *token, *name, *value, *host;
    size_t         mlen, tlen, plen, hlen;
    chsrv_http_t  *h;
    acme_ident_t   hid;
    int            head_only, rc;

    p = c->in;
    end = c->in + headlen;
    if (memchr(p, '\0', headlen) != NULL) {
        return chsrv_http_respond(c, 400, NULL, 0, now);
    }
    while (p < end && (*p == '\r' || *p == '\n')) {
        p++;
    }

    /* request-line = method SP request-target SP HTTP-version */
    eol = chsrv_line(p, end, &next);
    method = p;
    while (p < eol && chsrv_tchar((unsigned char) *p)) {
        p++;
    }
    mlen = (size_t) (p - method);
    if (mlen == 0 || p == eol || *p != ' ') {
        return chsrv_http_respond(c, 400, NULL, 0, now);
    }
    target = ++p;
    while (p < eol && (unsigned char) *p > 0x20 && (unsigned char) *p < 0x7f) {
        p++;
    }
    tlen = (size_t) (p - target);
    if (tlen == 0 || p == eol || *p != ' ') {
        return chsrv_http_respond(c, 400, NULL, 0, now);
    }
    p++;
    if (eol - p != 8 || memcmp(p, "HTTP/1.", 7) != 0 || p[7] < '0' || p[7] > '9') {
        return chsrv_http_respond(c, 400, NULL, 0, now);
    }

    /* header fields: name ":" value, no folding, no control characters; one Host */
    host = NULL;
    hlen = 0;
    for (p = next; p < end; p = next) {
        eol = chsrv_line(p, end, &next);
        if (eol == p) {
            break;
        }
        name = p;
        while (p < eol && chsrv_tchar((unsigned char) *p)) {
            p++;
        }
        if (p == name || p == eol || *p != ':') {
            /* no name (or a folded line), whitespace before the colon, no colon */
            return chsrv_http_respond(c, 400, NULL, 0, now);
        }
        for (value = p + 1; value < eol && (*value == ' ' || *value == '\t'); value++) {
            /* leading whitespace */
        }
        for (p++; p < eol; p++) {
            if (((unsigned char) *p < 0x20 && *p != '\t') || *p == 0x7f) {
                return chsrv_http_respond(c, 400, NULL, 0, now);
            }
        }
        if (value - name > 4 && strncasecmp(name, "host:", 5) == 0) {
            if (host != NULL) {
                return chsrv_http_respond(c, 400, NULL, 0, now);
            }
            host = value;
            for (hlen = (size_t) (eol - value); hlen > 0 && (host[hlen - 1] == ' ' || host[hlen - 1] == '\t');
                 hlen--)
            {
                /* trailing whitespace */
            }
        }
    }

    if (mlen == 3 && memcmp(method, "GET", 3) == 0) {
        head_only = 0;
    } else if (mlen == 4 && memcmp(method, "HEAD", 4) == 0) {
        head_only = 1;
    } else {
        return chsrv_http_respond(c, 405, NULL, 0, now);
    }

    /* absolute-form: skip scheme and authority (which then is the host, RFC 7230 5.4) */
    if (tlen > 7 && strncasecmp(target, "http://", 7) == 0) {
        p = memchr(target + 7, '/', tlen - 7);
        if (p == NULL) {
            return chsrv_http_respond(c, 404, NULL, head_only, now);
        }
        host = target + 7;
        hlen = (size_t) (p - host);
        tlen -= (size_t) (p - target);
        target = p;
    }

    plen = sizeof(CHSRV_WELL_KNOWN) - 1;
    if (tlen <= plen || memcmp(target, CHSRV_WELL_KNOWN, plen) != 0) {
        return chsrv_http_respond(c, 404, NULL, head_only, now);
    }
    token = target + plen;
    tlen -= plen;
    if (!acme_b64url_is_token(token, tlen, CHSRV_TOKEN_MAX)) {
        return chsrv_http_respond(c, 404, NULL, head_only, now);
    }

    if (chsrv_host_ident(host, hlen, &hid) != 0) {
        return chsrv_http_respond(c, 404, NULL, head_only, now);
    }
    pthread_mutex_lock(&s->lock);
    for (h = s->http; h != NULL; h = h->next) {
        if (strlen(h->token) == tlen && memcmp(h->token, token, tlen) == 0) {
            break;
        }
    }
    /* a token is answered only for the identifier it was published for */
    rc = h != NULL && h->id.type == hid.type && strcmp(h->id.value, hid.value) == 0
         ? chsrv_http_respond(c, 200, h->key_authz, head_only, now)
         : chsrv_http_respond(c, 404, NULL, head_only, now);
    pthread_mutex_unlock(&s->lock);
    acme_ident_free(&hid);
    return rc;
}

static int
chsrv_http_read(acmectl_chsrv_t *s, chsrv_conn_t *c, int64_t now)
{
    ssize_t  n;
    size_t   headlen;

    for ( ;; ) {
        if (c->inlen == CHSRV_HEAD_MAX) {
            return chsrv_http_respond(c, 431, NULL, 0, now);
        }
        n = recv(c->fd, c->in + c->inlen, CHSRV_HEAD_MAX - c->inlen, 0);
        if (n > 0) {
            c->inlen += (size_t) n;
            c->in[c->inlen] = '\0';
            headlen = chsrv_head_len(c);
            if (headlen > 0) {
                return chsrv_http_request(s, c, headlen, now);
            }
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        }
        return -1;      /* EOF before a whole head, or an error */
    }
}

/* ---- TLS-ALPN-01 ---- */

/* The host_name of the client's server_name extension, as acme_sni_normalize writes it. */
static int
chsrv_sni(SSL *ssl, char *name, size_t size)
{
    const unsigned char  *p;
    size_t                len, n;

    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &len) != 1 || len < 2) {
        return -1;
    }
    if ((((size_t) p[0] << 8) | p[1]) != len - 2) {
        return -1;
    }
    p += 2;
    len -= 2;
    while (len >= 3) {
        n = ((size_t) p[1] << 8) | p[2];
        if (n > len - 3) {
            return -1;
        }
        if (p[0] == TLSEXT_NAMETYPE_host_name) {
            return acme_sni_normalize((const char *) p + 3, n, name, size) > 0 ? 0 : -1;
        }
        p += 3 + n;
        len -= 3 + n;
    }
    return -1;
}

/* Picks the challenge certificate for the SNI name before anything else happens. */
static int
chsrv_client_hello(SSL *ssl, int *al, void *arg)
{
    acmectl_chsrv_t      *s = arg;
    chsrv_tls_t          *t;
    const unsigned char  *p;
    size_t                len;
    char                  name[CHSRV_SNI_MAX];
    int                   ok;

    if (chsrv_sni(ssl, name, sizeof(name)) != 0) {
        *al = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_CLIENT_HELLO_ERROR;
    }
    /* without the extension the ALPN callback would not run at all */
    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &p, &len) != 1) {
        *al = SSL_AD_NO_APPLICATION_PROTOCOL;
        return SSL_CLIENT_HELLO_ERROR;
    }

    ok = -1;
    pthread_mutex_lock(&s->lock);
    for (t = s->tls; t != NULL; t = t->next) {
        if (strcmp(t->sni, name) == 0) {
            /* both take their own references */
            ok = (SSL_use_certificate(ssl, t->cert) == 1 && SSL_use_PrivateKey(ssl, t->key) == 1) ? 1 : 0;
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);

    if (ok < 0) {
        *al = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_CLIENT_HELLO_ERROR;
    }
    if (ok == 0) {
        *al = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }
    return SSL_CLIENT_HELLO_SUCCESS;
}

static int
chsrv_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
    unsigned int inlen, void *arg)
{
    unsigned int  i, n;

    (void) ssl;
    (void) arg;
    for (i = 0; i < inlen; i += 1 + n) {
        n = in[i];
        if (n == 0 || n > inlen - i - 1) {
            break;
        }
        if (n == ACME_TLSALPN_PROTO_LEN && memcmp(in + i + 1, ACME_TLSALPN_PROTO, n) == 0) {
            *out = in + i + 1;
            *outlen = (unsigned char) n;
            return SSL_TLSEXT_ERR_OK;
        }
    }
    /* OpenSSL answers with the no_application_protocol alert */
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static SSL_CTX *
chsrv_ssl_ctx(acmectl_chsrv_t *s, acme_err_t *err)
{
    SSL_CTX  *ctx;

    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        acme_err_ssl(err, "tls-alpn-01 server: SSL_CTX_new failed");
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        acme_err_ssl(err, "tls-alpn-01 server: cannot require TLS 1.2");
        SSL_CTX_free(ctx);
        return NULL;
    }
    /* no resumption: every handshake must present the challenge certificate */
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_client_hello_cb(ctx, chsrv_client_hello, s);
    SSL_CTX_set_alpn_select_cb(ctx, chsrv_alpn_select, NULL);
    return ctx;
}

static int
chsrv_tls_step(chsrv_conn_t *c, int64_t now)
{
    int  rc;

    ERR_clear_error();
    rc = SSL_do_handshake(c->ssl);
    if (rc == 1) {
        /* the validator has seen the certificate; that is all it needs */
        (void) SSL_shutdown(c->ssl);
        ERR_clear_error();
        return chsrv_linger_start(c, now);
    }
    switch (SSL_get_error(c->ssl, rc)) {
    case SSL_ERROR_WANT_READ:
        c->events = POLLIN;
        return 0;
    case SSL_ERROR_WANT_WRITE:
        c->events = POLLOUT;
        return 0;
    case SSL_ERROR_SSL:
        /* we refused (the alert is on its way) or the peer spoke nonsense */
        ERR_clear_error();
        return chsrv_linger_start(c, now);
    default:
        ERR_clear_error();
        return -1;
    }
}

/* ---- the loop ---- */

static void
chsrv_accept(acmectl_chsrv_t *s, chsrv_listener_t *l, int64_t now)
{
    chsrv_conn_t  *c;
    size_t         i, old;
    int            fd, n;

    for (n = 0; n < CHSRV_ACCEPT_BURST; n++) {
        fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                s->accept_pause = now + CHSRV_ACCEPT_PAUSE_MS;
            }
            return;
        }

        if (s->nconns == CHSRV_MAX_CONNS) {
            /* full: the oldest connection makes room */
            old = 0;
            for (i = 1; i < s->nconns; i++) {
                if (s->conns[i]->deadline < s->conns[old]->deadline) {
                    old = i;
                }
            }
            chsrv_conn_close(s, old);
        }

        c = calloc(1, sizeof(*c));
        if (c == NULL) {
            close(fd);
            s->accept_pause = now + CHSRV_ACCEPT_PAUSE_MS;
            return;
        }
        c->fd = fd;
        c->deadline = now + CHSRV_TIMEOUT_MS;
        c->events = POLLIN;
        if (l->tls) {
            c->ssl = SSL_new(s->ctx);
            if (c->ssl == NULL || SSL_set_fd(c->ssl, fd) != 1) {
                SSL_free(c->ssl);
                ERR_clear_error();
                close(fd);
                free(c);
                continue;
            }
            SSL_set_accept_state(c->ssl);
            c->state = CHSRV_TLS_HANDSHAKE;
        } else {
            c->state = CHSRV_HTTP_READ;
        }
        s->conns[s->nconns++] = c;
    }
}

static int
chsrv_conn_io(acmectl_chsrv_t *s, chsrv_conn_t *c, int64_t now)
{
    switch (c->state) {
    case CHSRV_HTTP_READ:
        return chsrv_http_read(s, c, now);
    case CHSRV_HTTP_WRITE:
        return chsrv_http_write(c, now);
    case CHSRV_TLS_HANDSHAKE:
        return chsrv_tls_step(c, now);
    case CHSRV_LINGER:
        return chsrv_linger(c);
    }
    return -1;
}

static int
chsrv_poll_timeout(acmectl_chsrv_t *s, int64_t now)
{
    int64_t  next = -1;
    size_t   i;

    for (i = 0; i < s->nconns; i++) {
        if (next < 0 || s->conns[i]->deadline < next) {
            next = s->conns[i]->deadline;
        }
    }
    if (s->accept_pause > now && (next < 0 || s->accept_pause < next)) {
        next = s->accept_pause;
    }
    if (next < 0) {
        return -1;
    }
    return next <= now ? 0 : (int) (next - now + 1);
}

static void *
chsrv_main(void *arg)
{
    acmectl_chsrv_t  *s = arg;
    int64_t           now;
    size_t            i, n;
    int               timeout, rc;

    for ( ;; ) {
        now = chsrv_now();
        timeout = chsrv_poll_timeout(s, now);

        s->pfd[0].fd = s->wake[0];
        s->pfd[0].events = POLLIN;
        for (i = 0; i < 2; i++) {
            s->pfd[1 + i].fd = (s->lst[i].fd >= 0 && now >= s->accept_pause) ? s->lst[i].fd : -1;
            s->pfd[1 + i].events = POLLIN;
        }
        n = s->nconns;
        for (i = 0; i < n; i++) {
            s->pfd[3 + i].fd = s->conns[i]->fd;
            s->pfd[3 + i].events = s->conns[i]->events;
        }

        rc = poll(s->pfd, 3 + n, timeout);
        if (rc < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        if (s->pfd[0].revents != 0) {
            break;      /* acmectl_chsrv_stop() */
        }
        now = chsrv_now();

        /* downwards: closing conns[i] moves the last (already handled) one into its place */
        for (i = n; i-- > 0; ) {
            if (s->pfd[3 + i].revents != 0 && chsrv_conn_io(s, s->conns[i], now) != 0) {
                chsrv_conn_close(s, i);
            }
        }
        for (i = 0; i < 2; i++) {
            if (s->pfd[1 + i].fd >= 0 && s->pfd[1 + i].revents != 0) {
                chsrv_accept(s, &s->lst[i], now);
            }
        }
        for (i = s->nconns; i-- > 0; ) {
            if (s->conns[i]->deadline <= now) {
                chsrv_conn_close(s, i);
            }
        }
    }

    while (s->nconns > 0) {
        chsrv_conn_close(s, s->nconns - 1);
    }
    OPENSSL_thread_stop();
    return NULL;
}

/* ---- the API ---- */

static void
chsrv_free(acmectl_chsrv_t *s)
{
    chsrv_http_t  *h;
    chsrv_tls_t   *t;
    size_t         i;

    while (s->nconns > 0) {
        chsrv_conn_close(s, s->nconns - 1);
    }
    for (i = 0; i < 2; i++) {
        if (s->lst[i].fd >= 0) {
            close(s->lst[i].fd);
        }
    }
    for (i = 0; i < 2; i++) {
        if (s->wake[i] >= 0) {
            close(s->wake[i]);
        }
    }
    SSL_CTX_free(s->ctx);
    while ((h = s->http) != NULL) {
        s->http = h->next;
        free(h->token);
        acme_ident_free(&h->id);
        acme_free_secret(h->key_authz, strlen(h->key_authz));
        free(h);
    }
    while ((t = s->tls) != NULL) {
        s->tls = t->next;
        free(t->sni);
        X509_free(t->cert);
        EVP_PKEY_free(t->key);
        free(t);
    }
    if (s->lock_inited) {
        pthread_mutex_destroy(&s->lock);
    }
    free(s);
}

acmectl_chsrv_t *
acmectl_chsrv_start(const char *http_listen, const char *tls_listen, acme_err_t *err)
{
    acmectl_chsrv_t  *s;
    sigset_t          all, old;
    int               rc;

    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "challenge server: out of memory");
        return NULL;
    }
    s->wake[0] = s->wake[1] = -1;
    s->lst[0].fd = s->lst[1].fd = -1;
    s->lst[0].port = s->lst[1].port = -1;
    s->lst[1].tls = 1;

    rc = pthread_mutex_init(&s->lock, NULL);
    if (rc != 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "challenge server: pthread_mutex_init: %s", strerror(rc));
        goto failed;
    }
    s->lock_inited = 1;

    if (pipe2(s->wake, O_NONBLOCK | O_CLOEXEC) != 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "challenge server: pipe: %s", strerror(errno));
        s->wake[0] = s->wake[1] = -1;
        goto failed;
    }

    if (http_listen != NULL) {
        s->lst[0].fd = chsrv_listen(http_listen, &s->lst[0].port, err);
        if (s->lst[0].fd < 0) {
            acme_err_prefix(err, "http-01 server");
            goto failed;
        }
    }
    if (tls_listen != NULL) {
        s->ctx = chsrv_ssl_ctx(s, err);
        if (s->ctx == NULL) {
            goto failed;
        }
        s->lst[1].fd = chsrv_listen(tls_listen, &s->lst[1].port, err);
        if (s->lst[1].fd < 0) {
            acme_err_prefix(err, "tls-alpn-01 server");
            goto failed;
        }
    }

    /* the caller's thread handles the signals (and SIGPIPE never reaches ours) */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&s->thread, NULL, chsrv_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "challenge server: pthread_create: %s", strerror(rc));
        goto failed;
    }
    s->running = 1;
    return s;

failed:
    chsrv_free(s);
    return NULL;
}

int
acmectl_chsrv_http_port(const acmectl_chsrv_t *s)
{
    return s != NULL ? s->lst[0].port : -1;
}

int
acmectl_chsrv_tls_port(const acmectl_chsrv_t *s)
{
    return s != NULL ? s->lst[1].port : -1;
}

int
acmectl_chsrv_add_http(acmectl_chsrv_t *s, const acme_ident_t *id, const char *token, const char *key_authz,
    acme_err_t *err)
{
    chsrv_http_t  *h, *n;
    size_t         klen;
    char          *old;

    if (s == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "http-01: no challenge server");
        return -1;
    }
    if (token == NULL || !acme_b64url_is_token(token, strlen(token), CHSRV_TOKEN_MAX)) {
        acme_err_set(err, ACME_ERR_INPUT, "http-01: bad token \"%.64s\"", token ? token : "(null)");
        return -1;
    }
    klen = key_authz != NULL ? strlen(key_authz) : 0;
    if (klen == 0 || klen > CHSRV_KEYAUTHZ_MAX) {
        acme_err_set(err, ACME_ERR_INPUT, "http-01: bad key authorization for token \"%s\"", token);
        return -1;
    }
    if (id == NULL || id->value == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "http-01: no identifier for token \"%s\"", token);
        return -1;
    }

    n = calloc(1, sizeof(*n));
    if (n == NULL || (n->token = acme_strdup(token)) == NULL
        || (n->key_authz = acme_strdup(key_authz)) == NULL || (n->id.value = acme_strdup(id->value)) == NULL)
    {
        if (n != NULL) {
            free(n->token);
            if (n->key_authz != NULL) {
                acme_free_secret(n->key_authz, strlen(n->key_authz));
            }
            free(n);
        }
        acme_err_set(err, ACME_ERR_INTERNAL, "http-01: out of memory");
        return -1;
    }

    old = NULL;
    pthread_mutex_lock(&s->lock);
    for (h = s->http; h != NULL; h = h->next) {
        if (strcmp(h->token, token) == 0) {
            break;
        }
    }
    n->id.type = id->type;
    if (h != NULL) {
        old = h->key_authz;
        h->key_authz = n->key_authz;
        n->key_authz = NULL;
        acme_ident_free(&h->id);
        h->id = n->id;
        n->id.value = NULL;
    } else {
        n->next = s->http;
        s->http = n;
        n = NULL;
    }
    pthread_mutex_unlock(&s->lock);

    if (old != NULL) {
        acme_free_secret(old, strlen(old));
    }
    if (n != NULL) {
        free(n->token);
        acme_ident_free(&n->id);
        free(n);
    }
    return 0;
}

void
acmectl_chsrv_remove_http(acmectl_chsrv_t *s, const char *token)
{
    chsrv_http_t  **pp, *h;

    if (s == NULL || token == NULL) {
        return;
    }
    h = NULL;
    pthread_mutex_lock(&s->lock);
    for (pp = &s->http; *pp != NULL; pp = &(*pp)->next) {
        if (strcmp((*pp)->token, token) == 0) {
            h = *pp;
            *pp = h->next;
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);

    if (h != NULL) {
        free(h->token);
        acme_ident_free(&h->id);
        acme_free_secret(h->key_authz, strlen(h->key_authz));
        free(h);
    }
}

static void
chsrv_tls_free(chsrv_tls_t *t)
{
    if (t != NULL) {
        free(t->sni);
        X509_free(t->cert);
        EVP_PKEY_free(t->key);
        free(t);
    }
}

int
acmectl_chsrv_add_tlsalpn(acmectl_chsrv_t *s, const acme_ident_t *id, const char *key_authz,
    acme_err_t *err)
{
    chsrv_tls_t  *t, *n, **pp;

    if (s == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "tls-alpn-01: no challenge server");
        return -1;
    }
    n = calloc(1, sizeof(*n));
    if (n == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "tls-alpn-01: out of memory");
        return -1;
    }
    n->sni = acme_ident_sni(id);
    if (n->sni == NULL || n->sni[0] == '\0' || strlen(n->sni) >= CHSRV_SNI_MAX) {
        acme_err_set(err, ACME_ERR_INPUT, "tls-alpn-01: no TLS server name for the identifier \"%.253s\"",
                     id != NULL && id->value != NULL ? id->value : "(null)");
        chsrv_tls_free(n);
        return -1;
    }
    chsrv_lower(n->sni);
    if (acme_tlsalpn_cert(id, key_authz, &n->cert, &n->key, err) != 0) {
        chsrv_tls_free(n);
        return -1;
    }

    t = NULL;
    pthread_mutex_lock(&s->lock);
    for (pp = &s->tls; *pp != NULL; pp = &(*pp)->next) {
        if (strcmp((*pp)->sni, n->sni) == 0) {
            t = *pp;
            n->next = t->next;
            *pp = n;
            break;
        }
    }
    if (t == NULL) {
        n->next = s->tls;
        s->tls = n;
    }
    pthread_mutex_unlock(&s->lock);

    chsrv_tls_free(t);
    return 0;
}

void
acmectl_chsrv_remove_tlsalpn(acmectl_chsrv_t *s, const acme_ident_t *id)
{
    chsrv_tls_t  **pp, *t;
    char          *sni;

    if (s == NULL) {
        return;
    }
    sni = acme_ident_sni(id);
    if (sni == NULL) {
        return;
    }
    chsrv_lower(sni);

    t = NULL;
    pthread_mutex_lock(&s->lock);
    for (pp = &s->tls; *pp != NULL; pp = &(*pp)->next) {
        if (strcmp((*pp)->sni, sni) == 0) {
            t = *pp;
            *pp = t->next;
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);

    chsrv_tls_free(t);
    free(sni);
}

void
acmectl_chsrv_stop(acmectl_chsrv_t *s)
{
    ssize_t  n;

    if (s == NULL) {
        return;
    }
    if (s->running) {
        do {
            n = write(s->wake[1], "x", 1);
        } while (n < 0 && errno == EINTR);
        pthread_join(s->thread, NULL);
        s->running = 0;
    }
    chsrv_free(s);
}
