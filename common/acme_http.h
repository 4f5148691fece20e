/* HTTP requests to the CA over the loop's curl multi handle: size-limited, with the headers ACME needs. */
#ifndef ACME_HTTP_H
#define ACME_HTTP_H

#include <stddef.h>
#include "acme_err.h"
#include "acme_loop.h"

#define ACME_HTTP_MAX_BODY   (1024 * 1024)
#define ACME_HTTP_MAX_LINKS  8

typedef struct {
    const char *ca_file;        /* trust for the CA's TLS; NULL: the system store */
    int         verify;         /* 0 turns verification off (the caller warns) */
    long        timeout_ms;     /* whole transfer; 0: 30 s */
    long        connect_timeout_ms; /* 0: 10 s */
    size_t      max_body;       /* 0: ACME_HTTP_MAX_BODY */
    int         https_only;     /* curl may speak https only (the directory is https) */
    int         follow_redirects;   /* GET only: up to 10 redirects, each to https (directory GETs) */
} acme_http_conf_t;

typedef struct {
    int         ok;             /* 1 when an HTTP response arrived (any status) */
    long        status;
    acme_buf_t  body;
    char       *content_type;   /* without parameters, lowercase */
    char       *location;
    char       *replay_nonce;
    long        retry_after;    /* seconds; 0 none (HTTP-date or delta-seconds) */
    char       *links_alternate[ACME_HTTP_MAX_LINKS];
    size_t      nalternate;
    char       *link_up;
    char        errmsg[256];    /* transport failure, when !ok */
} acme_http_resp_t;

typedef struct acme_http_req_s acme_http_req_t;

/* resp is owned by the library and valid during the call only. */
typedef void (*acme_http_done_pt)(const acme_http_resp_t *resp, void *arg);

/*
 * Start a request. method "GET", "HEAD" or "POST"; body (POST) is sent as application/jose+json.
 * accept may be NULL. Returns NULL with err when the request could not be started (done is not called).
 */
acme_http_req_t *acme_http_send(acme_loop_t *loop, const acme_http_conf_t *conf, const char *method,
    const char *url, const char *body, const char *accept, acme_http_done_pt done, void *arg,
    acme_err_t *err);
/* Abort; done is not called. */
void acme_http_cancel(acme_http_req_t *req);

/*
 * The User-Agent of every request (process-wide; set once at start-up, before any request):
 * "acme-httpd/VERSION (SERVER) libcurl/VERSION", SERVER e.g. "nginx/1.22.1", "Apache/2.4.62" or
 * "acmectl", so that a CA can tell deployments apart. Without a call: no "(SERVER)".
 */
void acme_http_set_server(const char *server);
const char *acme_http_user_agent(void);

/* Counters (for tests and benchmarks): requests sent through any loop since start. */
unsigned long acme_http_request_count(void);

/* Exposed for tests: parse a Retry-After value (delta-seconds or HTTP-date) relative to now. */
long acme_http_parse_retry_after(const char *v, long now);

#endif
