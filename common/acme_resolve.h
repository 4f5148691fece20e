/*
 * Host names resolved by the host (acme_host_t.resolve: nginx's resolver) instead of libcurl's system
 * resolver, cached per loop for the answer's TTL. Without a resolve callback nothing here is used.
 */
#ifndef ACME_RESOLVE_H
#define ACME_RESOLVE_H

#include "acme_err.h"
#include "acme_loop.h"

typedef struct acme_resolve_wait_s  acme_resolve_wait_t;

/* addrs: "127.0.0.1,[::1]" (curl's CURLOPT_RESOLVE form), or NULL and error (a whole sentence). */
typedef void (*acme_resolve_pt)(void *arg, const char *addrs, const char *error);

/* 1 when the loop's host resolves names (acme_host_t.resolve). */
int acme_resolve_enabled(const acme_loop_t *loop);

/*
 * 1 when name is resolved by the host: not an address literal, not "localhost" (RFC 6761: never asked of
 * DNS). name is a URL's host part ("[::1]" for IPv6).
 */
int acme_resolve_wanted(const acme_loop_t *loop, const char *name);

/*
 * Resolve name. Returns 1 with *addrs (malloc'd) when a fresh answer is cached; 0 with *w when the answer
 * comes later: cb is then called once, from a loop entry point (never from within this call), unless
 * acme_resolve_cancel(w) comes first; -1 with err.
 */
int acme_resolve_name(acme_loop_t *loop, const char *name, acme_resolve_pt cb, void *arg, char **addrs,
    acme_resolve_wait_t **w, acme_err_t *err);
void acme_resolve_cancel(acme_loop_t *loop, acme_resolve_wait_t *w);

/* Between acme_loop.c and acme_resolve.c: waiters count as pending work; the loop's cache is freed with it. */
size_t acme_resolve_pending(const acme_loop_t *loop);
void   acme_resolve_free_all(acme_loop_t *loop);

#endif
