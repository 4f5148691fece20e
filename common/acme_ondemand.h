/*
 * On-demand certificates: whether a name seen in a TLS handshake may get a certificate of its own. The
 * host (nginx, Apache) matches the name against the server's names and keeps the negative cache where its
 * processes share it; this decides the rest, in this order: a valid DNS name (never an IP address), the
 * maximum count, the rate of new orders, then the ask endpoint (GET <url>?domain=<name>, 2xx: allowed,
 * Caddy's contract), asked on the core's loop.
 */
#ifndef ACME_ONDEMAND_H
#define ACME_ONDEMAND_H

#include <stddef.h>
#include <time.h>
#include "acme_err.h"
#include "acme_loop.h"

#define ACME_OD_MAX_CERTS     100
#define ACME_OD_RATE          10        /* new orders per minute */
#define ACME_OD_ASK_TIMEOUT   5000      /* ms */
#define ACME_OD_RATE_MAX      1000

typedef struct {
    const char  *ask_url;               /* NULL: no ask */
    long         ask_timeout_ms;        /* 0: ACME_OD_ASK_TIMEOUT */
    const char  *ask_ca_file;           /* trust for an https ask URL; NULL: the system store */
    size_t       max_certs;             /* 0: ACME_OD_MAX_CERTS */
    unsigned     rate_per_min;          /* 0: ACME_OD_RATE; at most ACME_OD_RATE_MAX */
} acme_ondemand_conf_t;

typedef enum {
    ACME_OD_ALLOWED = 0,
    ACME_OD_INVALID_NAME,               /* an IP address, or not a DNS name */
    ACME_OD_NOT_SERVER_NAME,            /* the host's check: none of the server's names */
    ACME_OD_MAX_COUNT,
    ACME_OD_RATE_LIMITED,
    ACME_OD_ASK_REFUSED,                /* the ask endpoint answered, not 2xx */
    ACME_OD_ASK_FAILED,                 /* the ask endpoint did not answer (down, slow) */
    ACME_OD_WAITING_CAP,                /* the host's check: too many connections waiting */
    ACME_OD_TIMEOUT,                    /* the host's: no certificate in time */
    ACME_OD_ORDER_FAILED,
    ACME_OD_NVERDICTS
} acme_od_verdict_t;

typedef struct acme_ondemand_s acme_ondemand_t;

/* Called from the loop with the ask's verdict; detail says why (HTTP status, transport error). */
typedef void (*acme_ondemand_done_pt)(void *arg, const char *name, acme_od_verdict_t v, const char *detail);

/* "allowed", "invalid_name", ..., as the status documents show them. */
const char *acme_od_verdict_name(acme_od_verdict_t v);

/*
 * The name a client sent (len bytes) as an on-demand DNS name: lowercase, no trailing dot, written
 * NUL-terminated into buf. 0 (refuse without asking) for an IP address, a name that is not a valid DNS name
 * (a wildcard included), or one that does not fit.
 */
size_t acme_ondemand_name(const char *sni, size_t len, char *buf, size_t size);

acme_ondemand_t *acme_ondemand_new(acme_loop_t *loop, const acme_ondemand_conf_t *conf, acme_err_t *err);
void acme_ondemand_free(acme_ondemand_t *od);    /* cancels asks under way: their done is not called */

/*
 * Decides for name, of which the host keeps ncerts on-demand certificates already. Returns 0 with *v set
 * when decided at once (every refusal but the ask's, or allowed without an ask URL), 1 when the ask endpoint
 * was asked (done follows from the loop). An allowed name counts against the rate at once.
 */
int acme_ondemand_decide(acme_ondemand_t *od, const char *name, size_t ncerts, acme_ondemand_done_pt done,
    void *arg, acme_od_verdict_t *v);

/*
 * Asks the ask endpoint again about a name that has a certificate (before a renewal, after a restart):
 * 0 asked (done follows: allowed, ask_refused or ask_failed; no limit applies), -1 no ask URL or error.
 */
int acme_ondemand_ask(acme_ondemand_t *od, const char *name, acme_ondemand_done_pt done, void *arg);

/* Asks under way (the host limits them with its waiting cap). */
size_t acme_ondemand_asking(acme_ondemand_t *od);

/* The limits in effect (defaults filled in). */
const acme_ondemand_conf_t *acme_ondemand_conf(acme_ondemand_t *od);

#endif
