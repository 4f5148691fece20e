/*
 * What the Redis store's files share (acme_store_redis.c, acme_store_announce.c, acme_store_watch.c,
 * acme_store_migrate.c, acme_store_backend.c): the store's state behind acme_store_t's data. Internal.
 */
#ifndef ACME_STORE_REDIS_INT_H
#define ACME_STORE_REDIS_INT_H

#include <pthread.h>
#include "acme_store.h"
#include "acme_aead.h"
#include "acme_redis.h"

#define RD_COMMIT_MAX        1000
#define RD_FORGED_SEEN       64     /* forged records remembered, so each is reported once */

typedef struct rd_s {
    pthread_mutex_t   mu;
    int               refs;           /* the store and its watches */

    acme_redis_t      r;              /* the URL's settings and the command connection */
    acme_aead_key_t  *key;
    int               unauthenticated_ok;    /* upgrade: accept values without a MAC or seal */
    acme_store_forged_fn  forged_fn;
    void             *forged_arg;
    unsigned char     forged_seen[RD_FORGED_SEEN][16];
    unsigned          forged_n;

    acme_lock_t      *locks;          /* held, for the refresh piggybacked on other operations */
} rd_t;

acme_store_t *acme_store_redis_open(const char *url, const char *key_file, int flags, acme_err_t *err);
int           acme_store_redis_is(const acme_store_t *st);
/* Drops a reference to rd (the store's or a watch's); the last frees it. */
void          acme_store_redis_unref(rd_t *rd);
/* Takes rd->mu, and refreshes the held locks whose lease is a third gone. */
void          acme_store_redis_enter(rd_t *rd);
void          acme_store_redis_leave(rd_t *rd);
/* Reports a refused record through the host's callback, once per distinct name and content. rd->mu held. */
void          acme_store_redis_forged(rd_t *rd, const char *name, const void *data, size_t len, const char *why);
/* The layout's secret keys: with a storage key they must be sealed, whatever info:secrets says. */
int           acme_store_redis_secret_name(const char *key);
/* The counter INCR'd by every commit that changes a certificate or its key (st and gen checked). */
int           acme_store_redis_generation(acme_store_t *st, unsigned long long *gen, acme_err_t *err);

#endif
