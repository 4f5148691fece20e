/*
 * The event loop the ACME core runs on: libcurl's multi interface, timers, and logging.
 *
 * Two ways to drive it:
 *  - inside a host's event loop (nginx): the host supplies acme_host_t; the core asks it to watch sockets
 *    and arm one timer, and the host calls acme_loop_on_socket() / acme_loop_on_timer() back;
 *  - blocking (acmectl, Apache's background thread, tests): acme_loop_run() polls with curl_multi_poll.
 * Callbacks (timers, HTTP completions) always run from those entry points, never re-entrantly.
 */
#ifndef ACME_LOOP_H
#define ACME_LOOP_H

#include <stddef.h>
#include "acme_err.h"

typedef enum {
    ACME_LOG_ERR = 3,
    ACME_LOG_WARN = 4,
    ACME_LOG_NOTICE = 5,
    ACME_LOG_INFO = 6,
    ACME_LOG_DEBUG = 7
} acme_log_level_t;

#define ACME_EV_IN   1
#define ACME_EV_OUT  2

typedef struct {
    void  *data;
    /* Call acme_loop_on_timer() after ms milliseconds (replacing any earlier request); -1: disarm. */
    void (*set_timer)(void *data, long ms);
    /* Report readiness of fd for events (ACME_EV_IN|ACME_EV_OUT) with acme_loop_on_socket(); 0: forget fd.
     * 0 ok, -1 error. */
    int  (*watch)(void *data, int fd, int events);
    /* May be NULL: messages go to stderr. */
    void (*log)(void *data, int level, const char *msg);
    /*
     * May be NULL (and is ignored in blocking mode): libcurl resolves host names, with the system resolver
     * in its resolver thread. Otherwise the CA's host names are resolved here (acme_resolve.h): start
     * resolving name without blocking and report exactly once with acme_loop_resolved(loop, token, ...),
     * possibly from within this call. Returns a handle for resolve_cancel, unused once reported.
     */
    void *(*resolve)(void *data, const char *name, void *token);
    void  (*resolve_cancel)(void *data, void *handle);
} acme_host_t;

typedef struct acme_loop_s   acme_loop_t;
typedef struct acme_timer_s  acme_timer_t;
typedef void (*acme_timer_pt)(void *arg);

/* host NULL, or without watch/set_timer: blocking mode (host->log still used). log_level: messages above it are dropped. */
acme_loop_t *acme_loop_new(const acme_host_t *host, int log_level, acme_err_t *err);
void acme_loop_free(acme_loop_t *loop);

void acme_loop_on_timer(acme_loop_t *loop);
void acme_loop_on_socket(acme_loop_t *loop, int fd, int events);

/*
 * The answer to acme_host_t.resolve: addrs "127.0.0.1,[::1]" valid for ttl seconds, or NULL and error, a
 * sentence naming the name and the resolver ("acme.internal could not be resolved (3: Host not found) by
 * resolver 127.0.0.1:5353"). Defined in acme_resolve.c.
 */
void acme_loop_resolved(acme_loop_t *loop, void *token, const char *addrs, long ttl, const char *error);

/* Blocking driver: returns when *stop is set, when nothing is pending, or after timeout_ms (-1: none). */
void acme_loop_run(acme_loop_t *loop, volatile int *stop, long timeout_ms);
/* Wake acme_loop_run from another thread (it re-checks *stop). */
void acme_loop_wakeup(acme_loop_t *loop);
/* 1 when the loop runs under a host's event loop (nothing may block), 0 in blocking mode. */
int acme_loop_hosted(const acme_loop_t *loop);
/* Number of timers and transfers in flight. */
size_t acme_loop_pending(acme_loop_t *loop);

acme_timer_t *acme_timer_add(acme_loop_t *loop, long ms, acme_timer_pt cb, void *arg);
void acme_timer_cancel(acme_loop_t *loop, acme_timer_t *t);

void acme_log(acme_loop_t *loop, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void acme_log_set_level(acme_loop_t *loop, int level);

/* Between acme_loop.c and acme_http.c: the multi handle, and the completion of one easy handle. */
void *acme_loop_curl_multi(acme_loop_t *loop);
int   acme_loop_add_easy(acme_loop_t *loop, void *easy);
void  acme_loop_remove_easy(acme_loop_t *loop, void *easy);
void  acme_http_complete(void *easy, int curl_result);
/* Between acme_loop.c and acme_resolve.c: the host, and the loop's cache of resolved names. */
const acme_host_t *acme_loop_host(const acme_loop_t *loop);
void **acme_loop_resolve_cache(acme_loop_t *loop);

#endif
