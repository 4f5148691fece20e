/* The event loop: curl multi in socket mode (host) or poll mode (blocking), plus timers. */
#include "acme_loop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <curl/curl.h>

#include "acme_resolve.h"

struct acme_timer_s {
    acme_timer_t   *next;
    long long       when;       /* ms, monotonic */
    acme_timer_pt   cb;
    void           *arg;
};

struct acme_loop_s {
    CURLM          *multi;
    acme_host_t     host;
    int             hosted;
    int             log_level;
    acme_timer_t   *timers;     /* sorted by when */
    long long       curl_deadline;  /* -1: none */
    size_t          transfers;
    int             in_dispatch;
    void           *resolve_cache;  /* acme_resolve.c */
};

static long long
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void loop_rearm(acme_loop_t *loop);

static int
curl_socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    acme_loop_t  *loop = userp;
    int           ev = 0;

    (void) easy;
    (void) socketp;

    switch (what) {
    case CURL_POLL_IN:    ev = ACME_EV_IN; break;
    case CURL_POLL_OUT:   ev = ACME_EV_OUT; break;
    case CURL_POLL_INOUT: ev = ACME_EV_IN | ACME_EV_OUT; break;
    default:              ev = 0; break;
    }
    if (loop->host.watch(loop->host.data, (int) fd, ev) != 0) {
        acme_log(loop, ACME_LOG_ERR, "acme: cannot watch socket %d", (int) fd);
        return -1;
    }
    return 0;
}

static int
curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    acme_loop_t *loop = userp;

    (void) multi;
    loop->curl_deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    if (!loop->in_dispatch) {
        loop_rearm(loop);
    }
    return 0;
}

acme_loop_t *
acme_loop_new(const acme_host_t *host, int log_level, acme_err_t *err)
{
    acme_loop_t *loop;

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        acme_err_set(err, ACME_ERR_INTERNAL, "curl_global_init() failed");
        return NULL;
    }
    loop = calloc(1, sizeof(*loop));
    if (loop == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    loop->multi = curl_multi_init();
    if (loop->multi == NULL) {
        free(loop);
        acme_err_set(err, ACME_ERR_INTERNAL, "curl_multi_init() failed");
        return NULL;
    }
    loop->curl_deadline = -1;
    loop->log_level = log_level;
    if (host != NULL) {
        loop->host = *host;
    }
    if (host != NULL && host->watch != NULL && host->set_timer != NULL) {
        loop->hosted = 1;
        curl_multi_setopt(loop->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
        curl_multi_setopt(loop->multi, CURLMOPT_SOCKETDATA, loop);
        curl_multi_setopt(loop->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
        curl_multi_setopt(loop->multi, CURLMOPT_TIMERDATA, loop);
    }
    curl_multi_setopt(loop->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 4L);
    if (loop->hosted && host->resolve == NULL) {
        curl_version_info_data *cv = curl_version_info(CURLVERSION_NOW);

        /* a libcurl without its resolver thread (or c-ares) would block the host's loop in getaddrinfo() */
        if (cv == NULL || !(cv->features & CURL_VERSION_ASYNCHDNS)) {
            acme_log(loop, ACME_LOG_WARN, "acme: libcurl %s resolves host names synchronously: the event "
                     "loop waits for each answer (configure a resolver)", cv ? cv->version : "");
        }
    }
    return loop;
}

void
acme_loop_free(acme_loop_t *loop)
{
    acme_timer_t *t, *next;

    if (loop == NULL) {
        return;
    }
    acme_resolve_free_all(loop);
    for (t = loop->timers; t != NULL; t = next) {
        next = t->next;
        free(t);
    }
    curl_multi_cleanup(loop->multi);
    if (loop->hosted && loop->host.set_timer != NULL) {
        loop->host.set_timer(loop->host.data, -1);
    }
    free(loop);
}

void *
acme_loop_curl_multi(acme_loop_t *loop)
{
    return loop->multi;
}

int
acme_loop_add_easy(acme_loop_t *loop, void *easy)
{
    if (curl_multi_add_handle(loop->multi, easy) != CURLM_OK) {
        return -1;
    }
    loop->transfers++;
    return 0;
}

void
acme_loop_remove_easy(acme_loop_t *loop, void *easy)
{
    if (curl_multi_remove_handle(loop->multi, easy) == CURLM_OK && loop->transfers > 0) {
        loop->transfers--;
    }
}

size_t
acme_loop_pending(acme_loop_t *loop)
{
    size_t         n = loop->transfers + acme_resolve_pending(loop);
    acme_timer_t  *t;

    for (t = loop->timers; t != NULL; t = t->next) {
        n++;
    }
    return n;
}

acme_timer_t *
acme_timer_add(acme_loop_t *loop, long ms, acme_timer_pt cb, void *arg)
{
    acme_timer_t  *t, **pp;

    t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return NULL;
    }
    t->when = now_ms() + (ms < 0 ? 0 : ms);
    t->cb = cb;
    t->arg = arg;
    for (pp = &loop->timers; *pp != NULL && (*pp)->when <= t->when; pp = &(*pp)->next) {
        /* keep insertion order among equal deadlines */
    }
    t->next = *pp;
    *pp = t;
    if (!loop->in_dispatch) {
        loop_rearm(loop);
    }
    return t;
}

void
acme_timer_cancel(acme_loop_t *loop, acme_timer_t *t)
{
    acme_timer_t **pp;

    if (t == NULL) {
        return;
    }
    for (pp = &loop->timers; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == t) {
            *pp = t->next;
            free(t);
            break;
        }
    }
    if (!loop->in_dispatch) {
        loop_rearm(loop);
    }
}

/* Completed transfers: hand each to acme_http, which calls its owner back. */
static void
loop_check_done(acme_loop_t *loop)
{
    CURLMsg  *msg;
    int       left;
    CURL     *easy;
    CURLcode  rc;

    while ((msg = curl_multi_info_read(loop->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        easy = msg->easy_handle;
        rc = msg->data.result;
        acme_loop_remove_easy(loop, easy);
        acme_http_complete(easy, (int) rc);
    }
}

static void
loop_run_timers(acme_loop_t *loop)
{
    long long      now = now_ms();
    acme_timer_t  *t;

    while ((t = loop->timers) != NULL && t->when <= now) {
        loop->timers = t->next;
        t->cb(t->arg);
        free(t);
    }
}

/* The earliest deadline of curl and our timers, as ms from now; -1 when none. */
static long
loop_next_timeout(acme_loop_t *loop)
{
    long long  next = -1, now;

    if (loop->timers != NULL) {
        next = loop->timers->when;
    }
    if (loop->curl_deadline >= 0 && (next < 0 || loop->curl_deadline < next)) {
        next = loop->curl_deadline;
    }
    if (next < 0) {
        return -1;
    }
    now = now_ms();
    return next <= now ? 0 : (long) (next - now);
}

static void
loop_rearm(acme_loop_t *loop)
{
    if (loop->hosted) {
        loop->host.set_timer(loop->host.data, loop_next_timeout(loop));
    }
}

void
acme_loop_on_timer(acme_loop_t *loop)
{
    int running;

    loop->in_dispatch++;
    if (loop->curl_deadline >= 0 && loop->curl_deadline <= now_ms()) {
        loop->curl_deadline = -1;
        curl_multi_socket_action(loop->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        loop_check_done(loop);
    }
    loop_run_timers(loop);
    loop->in_dispatch--;
    loop_rearm(loop);
}

void
acme_loop_on_socket(acme_loop_t *loop, int fd, int events)
{
    int running, mask = 0;

    if (events & ACME_EV_IN) {
        mask |= CURL_CSELECT_IN;
    }
    if (events & ACME_EV_OUT) {
        mask |= CURL_CSELECT_OUT;
    }
    loop->in_dispatch++;
    curl_multi_socket_action(loop->multi, fd, mask, &running);
    loop_check_done(loop);
    loop->in_dispatch--;
    loop_rearm(loop);
}

void
acme_loop_run(acme_loop_t *loop, volatile int *stop, long timeout_ms)
{
    long long  end = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    long       wait;
    int        running, numfds;

    while (stop == NULL || !*stop) {
        loop->in_dispatch++;
        curl_multi_perform(loop->multi, &running);
        loop_check_done(loop);
        loop_run_timers(loop);
        loop->in_dispatch--;

        if (loop->transfers == 0 && loop->timers == NULL) {
            return;
        }
        if (stop != NULL && *stop) {
            return;
        }
        if (end >= 0 && now_ms() >= end) {
            return;
        }
        wait = loop->transfers ? 1000 : 60000;
        if (loop->timers != NULL) {
            long long d = loop->timers->when - now_ms();
            if (d < 0) {
                d = 0;
            }
            if (d < wait) {
                wait = (long) d;
            }
        }
        if (end >= 0 && end - now_ms() < wait) {
            wait = (long) (end - now_ms());
            if (wait < 0) {
                wait = 0;
            }
        }
        curl_multi_poll(loop->multi, NULL, 0, (int) wait, &numfds);
    }
}

void
acme_loop_wakeup(acme_loop_t *loop)
{
    curl_multi_wakeup(loop->multi);
}

void
acme_log_set_level(acme_loop_t *loop, int level)
{
    loop->log_level = level;
}

void
acme_log(acme_loop_t *loop, int level, const char *fmt, ...)
{
    va_list  ap;
    char     msg[2048];

    if (loop != NULL && level > loop->log_level) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (loop != NULL && loop->host.log != NULL) {
        loop->host.log(loop->host.data, level, msg);
        return;
    }
    fprintf(stderr, "%s\n", msg);
}

const acme_host_t *
acme_loop_host(const acme_loop_t *loop)
{
    return &loop->host;
}

void **
acme_loop_resolve_cache(acme_loop_t *loop)
{
    return &loop->resolve_cache;
}

int
acme_loop_hosted(const acme_loop_t *loop)
{
    return loop->hosted;
}
