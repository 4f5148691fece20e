/*
 * Notifications: the admin's program run on a certificate's events (issued, renewed, failed, expiring,
 * ari-moved, revoked, persist-expiring) as `PROGRAM EVENT NAME`, the details in ACME_* variables (names,
 * issuer, expiry, the paths of the chain and the key: never a key or any other secret). One run at a time,
 * in order, each in a thread of its own (acme_exec.c: time limit, output to the log); the loop only looks at
 * a flag on a timer, so a failing or hanging program never delays the loop or issuance.
 */
#ifndef ACME_NOTIFY_H
#define ACME_NOTIFY_H

#include <time.h>
#include "acme_loop.h"

#define ACME_NOTIFY_TIMEOUT_DEFAULT    30L              /* s */
#define ACME_NOTIFY_EXPIRING_DEFAULT   (14L * 86400)    /* s before not_after */

typedef struct {
    const char  *program;       /* absolute path; NULL: no notifications */
    long         timeout;       /* s, killed then; 0: ACME_NOTIFY_TIMEOUT_DEFAULT */
    long         expiring;      /* s before not_after for "expiring"; 0: ACME_NOTIFY_EXPIRING_DEFAULT */
    const char  *store_dir;     /* a filesystem store's directory (for ACME_FULLCHAIN, ACME_PRIVKEY);
                                   NULL: a store without files (Redis) */
} acme_notify_conf_t;

/* One event's details; strings are copied. */
typedef struct {
    const char  *event;
    const char  *name;          /* the certificate's store name */
    const char  *domains;       /* its identifiers, space-separated */
    const char  *issuer;        /* NULL: none */
    time_t       not_after;     /* 0: none */
    const char  *error;         /* failed: what failed; NULL otherwise */
    const char  *warning;       /* persist-expiring: the warning; NULL otherwise */
    time_t       ari_start, ari_end;    /* ari-moved */
} acme_notify_event_t;

typedef struct acme_notify_s acme_notify_t;

/* Strings of conf are copied. NULL with err (the program not an executable file). */
acme_notify_t *acme_notify_new(acme_loop_t *loop, const acme_notify_conf_t *conf, acme_err_t *err);
/* Kills a program still running (at once) and waits for its thread. */
void acme_notify_free(acme_notify_t *n);
/* Queues one run; never blocks. */
void acme_notify_event(acme_notify_t *n, const acme_notify_event_t *ev);
/* The "expiring" threshold in seconds. */
long acme_notify_expiring(const acme_notify_t *n);
/* 1 while a run is queued or running (acmectl waits for them before it exits). */
int acme_notify_busy(const acme_notify_t *n);

#endif
