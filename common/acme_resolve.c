/* Host names resolved by the host's resolver, cached per loop for their TTL; answers reach waiters on timers. */
#include "acme_resolve.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

typedef struct acme_resolve_entry_s  acme_resolve_entry_t;

struct acme_resolve_wait_s {
    acme_resolve_wait_t   *next;        /* in the entry's list, then in the cache's list of answered */
    acme_loop_t           *loop;
    acme_resolve_entry_t  *entry;       /* NULL once the answer is in (timer set) */
    acme_timer_t          *timer;
    char                  *addrs;
    char                  *error;
    acme_resolve_pt        cb;
    void                  *arg;
};

struct acme_resolve_entry_s {
    acme_resolve_entry_t  *next;
    char                  *name;
    char                  *addrs;       /* NULL while pending */
    long long              expires;     /* ms, monotonic */
    int                    pending;
    void                  *handle;      /* the host's, while pending */
    acme_resolve_wait_t   *waiters;
};

typedef struct {
    acme_resolve_entry_t  *entries;
    acme_resolve_wait_t   *answered;    /* waiters whose timer is set */
    size_t                 nwaiting;    /* waiters not yet called back */
} acme_resolve_cache_t;

#define ACME_RESOLVE_TTL_MAX  3600
#define ACME_RESOLVE_TTL_MIN  1

static long long
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static acme_resolve_cache_t *
cache_get(acme_loop_t *loop, int create)
{
    void **slot = acme_loop_resolve_cache(loop);

    if (*slot == NULL && create) {
        *slot = calloc(1, sizeof(acme_resolve_cache_t));
    }
    return *slot;
}

int
acme_resolve_enabled(const acme_loop_t *loop)
{
    return acme_loop_hosted(loop) && acme_loop_host(loop)->resolve != NULL;
}

int
acme_resolve_wanted(const acme_loop_t *loop, const char *name)
{
    struct in_addr   a4;
    size_t           n;

    if (!acme_resolve_enabled(loop) || name == NULL || name[0] == '\0' || name[0] == '[') {
        return 0;
    }
    if (inet_pton(AF_INET, name, &a4) == 1) {
        return 0;
    }
    n = strlen(name);
    if (n > 0 && name[n - 1] == '.') {
        n--;
    }
    if ((n == 9 && strncasecmp(name, "localhost", 9) == 0)
        || (n > 10 && strncasecmp(name + n - 10, ".localhost", 10) == 0))
    {
        return 0;
    }
    return 1;
}

static void
wait_unlink(acme_resolve_wait_t **pp, acme_resolve_wait_t *w)
{
    for (; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            return;
        }
    }
}

static void
wait_free(acme_resolve_cache_t *c, acme_resolve_wait_t *w)
{
    if (c != NULL && c->nwaiting > 0) {
        c->nwaiting--;
    }
    free(w->addrs);
    free(w->error);
    free(w);
}

static void
wait_fire(void *arg)
{
    acme_resolve_wait_t   *w = arg;
    acme_resolve_cache_t  *c = cache_get(w->loop, 0);

    if (c != NULL) {
        wait_unlink(&c->answered, w);
    }
    w->timer = NULL;
    w->cb(w->arg, w->addrs, w->error);
    wait_free(c, w);
}

static void
entry_free(acme_resolve_entry_t *e)
{
    free(e->name);
    free(e->addrs);
    free(e);
}

static void
entry_unlink(acme_resolve_cache_t *c, acme_resolve_entry_t *e)
{
    acme_resolve_entry_t **pp;

    for (pp = &c->entries; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            return;
        }
    }
}

static int
entry_pending(acme_resolve_cache_t *c, acme_resolve_entry_t *e)
{
    acme_resolve_entry_t *it;

    for (it = c->entries; it != NULL; it = it->next) {
        if (it == e) {
            return e->pending;
        }
    }
    return 0;
}

void
acme_loop_resolved(acme_loop_t *loop, void *token, const char *addrs, long ttl, const char *error)
{
    acme_resolve_cache_t  *c = cache_get(loop, 0);
    acme_resolve_entry_t  *e;
    acme_resolve_wait_t   *w, *next;

    if (c == NULL) {
        return;
    }
    /* a token we do not know (already reported) is ignored */
    if (!entry_pending(c, token)) {
        return;
    }
    e = token;
    e->pending = 0;
    e->handle = NULL;
    if (addrs == NULL || addrs[0] == '\0') {
        if (error == NULL) {
            error = "no address";
        }
    } else {
        e->addrs = acme_strdup(addrs);
        if (e->addrs == NULL) {
            error = "out of memory";
        }
        if (ttl > ACME_RESOLVE_TTL_MAX) {
            ttl = ACME_RESOLVE_TTL_MAX;
        }
        e->expires = now_ms() + (ttl < ACME_RESOLVE_TTL_MIN ? ACME_RESOLVE_TTL_MIN : ttl) * 1000;
    }

    for (w = e->waiters; w != NULL; w = next) {
        next = w->next;
        w->next = NULL;
        w->entry = NULL;
        if (e->addrs != NULL) {
            w->addrs = acme_strdup(e->addrs);
        }
        if (w->addrs == NULL) {
            w->error = acme_sprintf("%s", e->addrs ? "out of memory" : error);
        }
        w->timer = acme_timer_add(loop, 0, wait_fire, w);
        if (w->timer == NULL) {
            /* out of memory: the owner is never called back; it times out at its own timer */
            wait_free(c, w);
            continue;
        }
        w->next = c->answered;
        c->answered = w;
    }
    e->waiters = NULL;

    if (e->addrs == NULL) {
        /* failures are not cached: the next request asks again */
        entry_unlink(c, e);
        entry_free(e);
    }
}

int
acme_resolve_name(acme_loop_t *loop, const char *name, acme_resolve_pt cb, void *arg, char **addrs,
    acme_resolve_wait_t **wp, acme_err_t *err)
{
    acme_resolve_cache_t  *c;
    acme_resolve_entry_t  *e, *ent, **pp;
    acme_resolve_wait_t   *w;
    const acme_host_t     *host = acme_loop_host(loop);
    long long              now = now_ms();
    void                  *handle;

    *addrs = NULL;
    *wp = NULL;
    c = cache_get(loop, 1);
    if (c == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }

    for (pp = &c->entries; (e = *pp) != NULL; pp = &e->next) {
        if (strcasecmp(e->name, name) != 0) {
            continue;
        }
        if (!e->pending && e->expires <= now) {
            /* expired: ask again */
            *pp = e->next;
            entry_free(e);
            e = NULL;
        }
        break;
    }

    if (e != NULL && !e->pending) {
        *addrs = acme_strdup(e->addrs);
        if (*addrs == NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            return -1;
        }
        return 1;
    }

    w = calloc(1, sizeof(*w));
    if (w == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    w->loop = loop;
    w->cb = cb;
    w->arg = arg;

    if (e == NULL) {
        e = calloc(1, sizeof(*e));
        if (e == NULL || (e->name = acme_strdup(name)) == NULL) {
            free(e);
            free(w);
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            return -1;
        }
        e->pending = 1;
        e->next = c->entries;
        c->entries = e;
        w->entry = e;
        e->waiters = w;
        c->nwaiting++;
        *wp = w;

        /* the host may answer from within the call (its own cache): acme_loop_resolved sets timers */
        ent = e;
        handle = host->resolve(host->data, name, ent);
        if (entry_pending(c, ent)) {
            ent->handle = handle;
        }
        return 0;
    }

    w->entry = e;
    w->next = e->waiters;
    e->waiters = w;
    c->nwaiting++;
    *wp = w;
    return 0;
}

void
acme_resolve_cancel(acme_loop_t *loop, acme_resolve_wait_t *w)
{
    acme_resolve_cache_t  *c = cache_get(loop, 0);

    if (w == NULL) {
        return;
    }
    if (w->entry != NULL) {
        /* the query goes on: its answer is cached for the next request */
        wait_unlink(&w->entry->waiters, w);
    } else {
        acme_timer_cancel(loop, w->timer);
        if (c != NULL) {
            wait_unlink(&c->answered, w);
        }
    }
    wait_free(c, w);
}

size_t
acme_resolve_pending(const acme_loop_t *loop)
{
    acme_resolve_cache_t *c = *acme_loop_resolve_cache((acme_loop_t *) loop);

    return c == NULL ? 0 : c->nwaiting;
}

void
acme_resolve_free_all(acme_loop_t *loop)
{
    acme_resolve_cache_t  *c = cache_get(loop, 0);
    acme_resolve_entry_t  *e, *next;
    acme_resolve_wait_t   *w, *wn;
    const acme_host_t     *host = acme_loop_host(loop);

    if (c == NULL) {
        return;
    }
    for (e = c->entries; e != NULL; e = next) {
        next = e->next;
        if (e->pending && e->handle != NULL && host->resolve_cancel != NULL) {
            host->resolve_cancel(host->data, e->handle);
        }
        for (w = e->waiters; w != NULL; w = wn) {
            wn = w->next;
            wait_free(NULL, w);
        }
        entry_free(e);
    }
    /* their timers are freed by the loop */
    for (w = c->answered; w != NULL; w = wn) {
        wn = w->next;
        wait_free(NULL, w);
    }
    free(c);
    *acme_loop_resolve_cache(loop) = NULL;
}
