/*
 * hsbench: full TLS handshakes per second against one address, each on a new TCP connection.
 *
 *   hsbench -p PORT [-a 127.0.0.1] [-s SNI] [-c THREADS] [-t SECONDS] [-n MAX] [-u PATH] [-r RATE] [-q] [-2]
 *
 * Every iteration: connect, TLS handshake with SNI (no session resumption: no tickets, no client cache),
 * then (unless -q) "GET PATH HTTP/1.1" (default /) with Connection: close, read the answer to EOF and check for a 200,
 * close. Printed as one JSON line: handshakes (completed iterations), errors, seconds, rate, latency
 * percentiles (ms) and the SHA-256 of the first leaf certificate seen (so the caller can check which
 * certificate was served). -2 caps the protocol at TLS 1.2. The certificate is not verified: the cost
 * measured is the server's handshake, not the client's chain building.
 *
 * -r RATE paces the iterations at RATE per second in all (open loop, a schedule per thread): a latency is
 * then counted from the iteration's scheduled start, so a server that stalls is charged for every
 * request that should have started during the stall, not only the one that met it. SIGINT or SIGTERM
 * ends the run early (the results are printed as usual).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

static const char     *addr = "127.0.0.1";
static int             port;
static const char     *sni;
static int             threads = 1;
static double          seconds = 5.0;
static long            max_n;
static int             handshake_only;
static int             tls12;
static const char     *path = "/";
static SSL_CTX        *ctx;
static double          deadline;
static double          rate;
static double          start_t;
static volatile sig_atomic_t stop_now;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static long            done_n, err_n, started_n;
static char            first_fp[65];
static char            first_err[256];

typedef struct {
    double  *lat;
    size_t   n, cap;
    int      idx;
} tstate_t;

static double
now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
note_error(const char *what)
{
    unsigned long e = ERR_peek_last_error();
    char buf[160];

    pthread_mutex_lock(&mu);
    err_n++;
    if (first_err[0] == '\0') {
        ERR_error_string_n(e, buf, sizeof(buf));
        snprintf(first_err, sizeof(first_err), "%s: %s%s%s", what, e ? buf : "", e ? " " : "",
                 errno ? strerror(errno) : "");
    }
    pthread_mutex_unlock(&mu);
    ERR_clear_error();
}

static int
one(void)
{
    struct sockaddr_in  sa;
    int                 fd, one_ = 1, ok = 0, n, total = 0;
    SSL                *ssl = NULL;
    char                req[512], buf[4096], head[16];

    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        note_error("socket");
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one_, sizeof(one_));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    inet_pton(AF_INET, addr, &sa.sin_addr);
    errno = 0;
    if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) != 0) {
        note_error("connect");
        close(fd);
        return -1;
    }
    ssl = SSL_new(ctx);
    if (sni) {
        SSL_set_tlsext_host_name(ssl, sni);
    }
    SSL_set_fd(ssl, fd);
    errno = 0;
    if (SSL_connect(ssl) != 1) {
        note_error("handshake");
        goto out;
    }
    if (first_fp[0] == '\0') {
        X509          *x = SSL_get1_peer_certificate(ssl);
        unsigned char  md[32];
        unsigned int   mdlen = 0, i;

        if (x && X509_digest(x, EVP_sha256(), md, &mdlen)) {
            pthread_mutex_lock(&mu);
            if (first_fp[0] == '\0') {
                for (i = 0; i < mdlen; i++) {
                    sprintf(first_fp + 2 * i, "%02x", md[i]);
                }
            }
            pthread_mutex_unlock(&mu);
        }
        X509_free(x);
    }
    if (handshake_only) {
        ok = 1;
        goto out;
    }
    n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
                 path, sni ? sni : "localhost");
    if (SSL_write(ssl, req, n) != n) {
        note_error("write");
        goto out;
    }
    memset(head, 0, sizeof(head));
    for (;;) {
        n = SSL_read(ssl, buf, sizeof(buf));
        if (n <= 0) {
            break;
        }
        if (total < (int) sizeof(head) - 1) {
            int c = n < (int) sizeof(head) - 1 - total ? n : (int) sizeof(head) - 1 - total;
            memcpy(head + total, buf, c);
        }
        total += n;
    }
    if (strncmp(head, "HTTP/1.1 200", 12) != 0 && strncmp(head, "HTTP/1.0 200", 12) != 0) {
        errno = 0;
        note_error("response not 200");
        goto out;
    }
    ok = 1;
out:
    if (ssl) {
        if (ok) {
            SSL_shutdown(ssl);
        }
        SSL_free(ssl);
    }
    close(fd);
    ERR_clear_error();
    return ok ? 0 : -1;
}

/* how many of the n sorted latencies exceed limit */
static size_t
over(const double *all, size_t n, double limit)
{
    size_t c = 0;

    while (c < n && all[n - 1 - c] > limit) {
        c++;
    }
    return c;
}

static int
cmpd(const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;

    return x < y ? -1 : x > y;
}

static void
on_signal(int sig)
{
    (void) sig;
    stop_now = 1;
}

static void *
worker(void *arg)
{
    tstate_t *ts = arg;
    double    t0, due = 0;
    long      k = 0;

    for (;;) {
        if (stop_now || now_s() >= deadline) {
            break;
        }
        if (rate > 0) {
            /* this thread's k-th slot of the common schedule */
            due = start_t + (k * threads + ts->idx) / rate;
            k++;
            while (!stop_now && now_s() < due) {
                struct timespec d;
                double          w = due - now_s();

                if (w <= 0) {
                    break;
                }
                d.tv_sec = (time_t) w;
                d.tv_nsec = (long) ((w - d.tv_sec) * 1e9);
                nanosleep(&d, NULL);
            }
            if (stop_now || due >= deadline) {
                break;
            }
        }
        if (max_n) {
            pthread_mutex_lock(&mu);
            if (started_n >= max_n) {
                pthread_mutex_unlock(&mu);
                break;
            }
            started_n++;
            pthread_mutex_unlock(&mu);
        }
        t0 = rate > 0 ? due : now_s();
        if (one() == 0) {
            if (ts->n == ts->cap) {
                ts->cap = ts->cap ? ts->cap * 2 : 4096;
                ts->lat = realloc(ts->lat, ts->cap * sizeof(double));
            }
            ts->lat[ts->n++] = now_s() - t0;
            pthread_mutex_lock(&mu);
            done_n++;
            pthread_mutex_unlock(&mu);
        }
    }
    return NULL;
}

static void
usage(void)
{
    fprintf(stderr, "usage: hsbench -p PORT [-a ADDR] [-s SNI] [-c THREADS] [-t SECONDS] [-n MAX] [-u PATH] [-r RATE] [-q] [-2]\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    int         o, i;
    pthread_t  *tid;
    tstate_t   *ts;
    double      t0, el, *all;
    size_t      n = 0, k;

    while ((o = getopt(argc, argv, "a:p:s:c:t:n:u:r:q2")) != -1) {
        switch (o) {
        case 'a': addr = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 's': sni = optarg; break;
        case 'c': threads = atoi(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'n': max_n = atol(optarg); break;
        case 'u': path = optarg; break;
        case 'r': rate = atof(optarg); break;
        case 'q': handshake_only = 1; break;
        case '2': tls12 = 1; break;
        default: usage();
        }
    }
    if (port <= 0 || threads <= 0) {
        usage();
    }
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    if (tls12) {
        SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    tid = calloc(threads, sizeof(*tid));
    ts = calloc(threads, sizeof(*ts));
    t0 = now_s();
    start_t = t0;
    deadline = t0 + seconds;
    for (i = 0; i < threads; i++) {
        ts[i].idx = i;
        pthread_create(&tid[i], NULL, worker, &ts[i]);
    }
    for (i = 0; i < threads; i++) {
        pthread_join(tid[i], NULL);
        n += ts[i].n;
    }
    el = now_s() - t0;
    all = malloc((n ? n : 1) * sizeof(double));
    for (i = 0, k = 0; i < threads; i++) {
        memcpy(all + k, ts[i].lat, ts[i].n * sizeof(double));
        k += ts[i].n;
    }
    qsort(all, n, sizeof(double), cmpd);
#define PCT(p) (n ? all[(size_t) ((n - 1) * (p))] * 1000.0 : 0.0)
    printf("{\"handshakes\": %ld, \"errors\": %ld, \"seconds\": %.4f, \"rate\": %.2f, "
           "\"lat_p50_ms\": %.3f, \"lat_p99_ms\": %.3f, \"lat_p999_ms\": %.3f, "
           "\"lat_max_ms\": %.3f, \"n_over_50ms\": %zu, \"n_over_1s\": %zu, "
           "\"leaf_sha256\": \"%s\", \"first_error\": \"",
           done_n, err_n, el, el > 0 ? done_n / el : 0.0, PCT(0.5), PCT(0.99), PCT(0.999), PCT(1.0),
           over(all, n, 0.05), over(all, n, 1.0), first_fp);
    for (const char *p = first_err; *p; p++) {
        if (*p == '"' || *p == '\\') {
            putchar('\\');
        }
        putchar((unsigned char) *p >= 0x20 ? *p : ' ');
    }
    printf("\"}\n");
    return 0;
}
