/* The order state machine: newOrder (or resume), authorizations, challenges, finalize, download, store. */
#include "acme_issue.h"
#include "acme_keygen.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "acme_b64.h"
#include "acme_csr.h"
#include "acme_x509.h"
#include "acme_store.h"

#include <openssl/evp.h>

typedef enum {
    J_READY = 0,        /* waiting for directory/account */
    J_RESUME,           /* POST-as-GET the stored order */
    J_STALE,            /* POST-as-GET a stored order for other identifiers, to give it up */
    J_ORPHAN_ACCOUNT,   /* a newOrder may have been lost: the account object's "orders" URL */
    J_ORPHAN_LIST,      /* its list of orders */
    J_ORPHAN_ORDER,     /* candidate cand_i */
    J_NEW_ORDER,
    J_AUTHZ,            /* fetching authorization authz_i */
    J_CONFIRM,          /* waiting for the nodes that got the challenge announcement */
    J_CHALLENGE,        /* told the CA to validate */
    J_AUTHZ_POLL,
    J_ORDER_READY_POLL,
    J_FINALIZE,
    J_ORDER_VALID_POLL,
    J_DOWNLOAD,
    J_ALTERNATE,
    J_ABANDON,          /* giving the order up: POST-as-GET of authorization abandon_i */
    J_DEACTIVATE,       /* ... which is pending: deactivating it */
    J_DONE,
    J_QUEUE             /* another job issues for the same CA, identifiers and profile: waiting */
} job_state_t;

typedef struct {
    char          *type;
    acme_ident_t   id;
    char          *token;
    char          *key;         /* in the store: the token (http-01) or the SNI (tls-alpn-01) */
} published_t;

struct acme_issue_s {
    acme_client_t          *c;
    acme_store_t           *store;
    acme_loop_t            *loop;
    char                   *name;
    acme_ident_t           *ids;
    size_t                  nids;
    acme_keyspec_t          keyspec;
    char                  **types;
    size_t                  ntypes;
    char                   *profile;
    int                     profile_required;
    char                   *preferred_chain;
    char                   *replaces;
    long                    poll_timeout;
    acme_challenge_host_t   ch;
    acme_issue_done_pt      done;
    void                   *arg;

    job_state_t             state;
    acme_lock_t            *lock;
    acme_lock_t            *issue_lock;     /* one issuance per (CA, identifier set, profile) */
    char                    issue_lockname[80];
    int                     queued_logged;
    int                     reordered;      /* placed a new order after refusing a certificate */
    acme_timer_t           *lock_timer;     /* lease refresh (shared stores) */
    int                     lock_lost;      /* noticed while a request was in flight */
    acme_err_t              lock_err;
    acme_timer_t           *timer;
    int                     busy;           /* a request is in flight */
    char                    state_text[300];
    unsigned long           state_changes;  /* status pages rebuild when it moves */

    char                   *order_url;
    acme_order_t            order;
    int                     have_order;
    EVP_PKEY               *cert_key;
    acme_ident_error_t     *ident_errors;   /* why identifiers failed, for the caller's status */
    size_t                  nident_errors;
    acme_keygen_t          *keygen;         /* making cert_key */
    size_t                  authz_i;
    char                   *chall_url;
    time_t                  wait_start;
    long                    poll_delay_ms;
    int                     finalize_early; /* finalize sent without reading the order first */
    char                  **cands;          /* orders the account lists, newest first */
    size_t                  ncands;
    size_t                  cand_i;
    int                     replaces_dropped;
    int                     replaces_5xx;   /* newOrders with "replaces" that met a server error */

    char                   *chain_pem;      /* the default chain, while alternates are checked */
    char                  **alternates;
    size_t                  nalternates;
    size_t                  alt_i;

    size_t                  abandon_i;
    int                     abandon_fail;   /* finish with abandon_err afterwards, else order anew */
    acme_err_t              abandon_err;

    published_t            *published;
    size_t                  npublished;
    int                     confirm_n;      /* nodes that got the last challenge announcement */
    long long               confirm_start;  /* ms */
};

#define ISSUE_CONFIRM_MS  3000

static void job_step(acme_issue_t *job);
static void orphan_account_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);
static void orphan_list_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);
static void orphan_order_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);
static void orphan_none(acme_issue_t *job, const char *why);
static void order_dispatch(acme_issue_t *job);
static void issue_queue(acme_issue_t *job);
static void job_fail(acme_issue_t *job, const acme_err_t *err);

static const char *default_types[] = { "http-01", "tls-alpn-01" };

/* ---- published answers, counted ---- */

/*
 * Jobs of this thread's loop that publish the same answer (type, key): two certificates with a name in
 * common answer the same authorization (the CA reuses it). It is published once and withdrawn when the
 * last job lets it go, so one job's withdrawal cannot take another's answer away.
 */
typedef struct {
    char  *type;
    char  *key;
    char  *ka;      /* the answer published last (tls-alpn-01: one per name, a new token replaces it) */
    int    refs;
} pubref_t;

static __thread pubref_t  *pubrefs;
static __thread size_t     npubrefs;

static pubref_t *
pubref_find(const char *type, const char *key)
{
    size_t  i;

    for (i = 0; i < npubrefs; i++) {
        if (strcmp(pubrefs[i].type, type) == 0 && strcmp(pubrefs[i].key, key) == 0) {
            return &pubrefs[i];
        }
    }
    return NULL;
}

static int
pubref_take(const char *type, const char *key, const char *ka)
{
    pubref_t  *r = pubref_find(type, key), *n;
    char      *k;

    if (r != NULL) {
        if (strcmp(r->ka, ka) != 0) {
            if ((k = acme_strdup(ka)) == NULL) {
                return -1;
            }
            free(r->ka);
            r->ka = k;
        }
        r->refs++;
        return 0;
    }
    n = realloc(pubrefs, (npubrefs + 1) * sizeof(*n));
    if (n == NULL) {
        return -1;
    }
    pubrefs = n;
    r = &pubrefs[npubrefs];
    r->type = acme_strdup(type);
    r->key = acme_strdup(key);
    r->ka = acme_strdup(ka);
    r->refs = 1;
    if (r->type == NULL || r->key == NULL || r->ka == NULL) {
        free(r->type);
        free(r->key);
        free(r->ka);
        return -1;
    }
    npubrefs++;
    return 0;
}

/* Returns the references left (0: nobody else publishes it). */
static int
pubref_release(const char *type, const char *key)
{
    pubref_t  *r = pubref_find(type, key);
    int        left;

    if (r == NULL) {
        return 0;
    }
    left = --r->refs;
    if (left == 0) {
        free(r->type);
        free(r->key);
        free(r->ka);
        *r = pubrefs[--npubrefs];
        if (npubrefs == 0) {
            free(pubrefs);
            pubrefs = NULL;
        }
    }
    return left;
}

/* ---- lifecycle ---- */

/* Forget what we published (withdraw: from the host and the store too, unless another job of this
 * process still publishes the same answer). */
static void
published_clear(acme_issue_t *job, int withdraw)
{
    size_t  i;

    for (i = 0; i < job->npublished; i++) {
        published_t *p = &job->published[i];
        if (pubref_release(p->type, p->key) == 0 && withdraw) {
            if (job->ch.withdraw != NULL) {
                job->ch.withdraw(job->ch.data, p->type, &p->id, p->token);
            }
            acme_store_challenge_del(job->store, p->type, p->key, NULL);
            (void) acme_store_challenge_announce(job->store, 0, p->type, p->key, NULL, NULL, NULL);
        }
        free(p->type);
        free(p->token);
        free(p->key);
        acme_ident_free(&p->id);
    }
    free(job->published);
    job->published = NULL;
    job->npublished = 0;
}

static void
withdraw_all(acme_issue_t *job)
{
    published_clear(job, 1);
}

static void
job_free(acme_issue_t *job)
{
    size_t i;

    withdraw_all(job);
    acme_timer_cancel(job->loop, job->timer);
    acme_timer_cancel(job->loop, job->lock_timer);
    acme_keygen_cancel(job->keygen);
    if (job->issue_lock != NULL) {
        job->store->ops->unlock(job->issue_lock);
    }
    if (job->lock != NULL) {
        job->store->ops->unlock(job->lock);
    }
    free(job->name);
    for (i = 0; i < job->nids; i++) {
        acme_ident_free(&job->ids[i]);
    }
    free(job->ids);
    for (i = 0; i < job->ntypes; i++) {
        free(job->types[i]);
    }
    free(job->types);
    free(job->profile);
    free(job->preferred_chain);
    free(job->replaces);
    free(job->order_url);
    if (job->have_order) {
        acme_order_free(&job->order);
    }
    EVP_PKEY_free(job->cert_key);
    acme_ident_errors_free(job->ident_errors, job->nident_errors);
    free(job->chall_url);
    free(job->chain_pem);
    for (i = 0; i < job->nalternates; i++) {
        free(job->alternates[i]);
    }
    free(job->alternates);
    for (i = 0; i < job->ncands; i++) {
        free(job->cands[i]);
    }
    free(job->cands);
    free(job);
}

/* The finishing job's identifier errors, for acme_issue_take_ident_errors() inside done (the job itself
 * is gone by then: its lock must be free when done starts the next attempt). One loop per thread. */
static __thread acme_ident_error_t  *finishing_errors;
static __thread size_t               finishing_nerrors;

size_t
acme_issue_take_ident_errors(acme_ident_error_t **errs)
{
    size_t n = finishing_nerrors;

    *errs = finishing_errors;
    finishing_errors = NULL;
    finishing_nerrors = 0;
    return n;
}

static void
job_finish(acme_issue_t *job, const acme_err_t *err)
{
    acme_issue_done_pt  done = job->done;
    void               *arg = job->arg;
    char               *name = job->name;
    acme_ident_error_t *errs = NULL, *outer_errs = finishing_errors;
    size_t              nerrs = 0, outer_n = finishing_nerrors;

    job->name = NULL;
    job->state = J_DONE;
    if (err != NULL) {
        errs = job->ident_errors;
        nerrs = job->nident_errors;
        job->ident_errors = NULL;
        job->nident_errors = 0;
    }
    job_free(job);
    finishing_errors = errs;
    finishing_nerrors = nerrs;
    done(arg, name, err);
    /* whatever done did not take */
    acme_ident_errors_free(finishing_errors, finishing_nerrors);
    finishing_errors = outer_errs;
    finishing_nerrors = outer_n;
    free(name);
}

/* Remember why one identifier failed ("dns:example.org": the CA's problem, subproblems included). */
static void
ident_error_add(acme_issue_t *job, const char *type, const char *value, const char *msg)
{
    acme_ident_error_t *e;
    size_t              i;

    for (i = 0; i < job->nident_errors; i++) {
        e = &job->ident_errors[i];
        if (strncmp(e->ident, type, strlen(type)) == 0 && e->ident[strlen(type)] == ':'
            && strcmp(e->ident + strlen(type) + 1, value) == 0)
        {
            return;     /* the first reason is the one that counts */
        }
    }
    e = realloc(job->ident_errors, (job->nident_errors + 1) * sizeof(*e));
    if (e == NULL) {
        return;
    }
    job->ident_errors = e;
    e = &e[job->nident_errors];
    e->ident = acme_sprintf("%s:%s", type, value);
    e->error = acme_strdup(msg);
    e->at = time(NULL);
    if (e->ident == NULL || e->error == NULL) {
        free(e->ident);
        free(e->error);
        return;
    }
    job->nident_errors++;
}

/* An order's or authorization's problem: its subproblems name identifiers (RFC 8555 6.7.1). */
static void
ident_errors_from_problem(acme_issue_t *job, const acme_problem_t *p)
{
    size_t  i;
    char   *msg;

    for (i = 0; p != NULL && i < p->nsubproblems; i++) {
        const acme_problem_t *sp = &p->subproblems[i];
        if (sp->ident_type == NULL || sp->ident_value == NULL) {
            continue;
        }
        msg = acme_problem_message(sp);
        if (msg != NULL) {
            ident_error_add(job, sp->ident_type, sp->ident_value, msg);
            free(msg);
        }
    }
}

static void
job_fail(acme_issue_t *job, const acme_err_t *err)
{
    acme_err_t e = *err;

    /* the caller reports the failure (once); this is the trail for debugging */
    acme_log(job->loop, ACME_LOG_INFO, "acme: certificate \"%s\" from %s: %s", job->name,
             acme_client_directory_url(job->c), e.msg);
    job_finish(job, &e);
}

static void
job_set_state(acme_issue_t *job, job_state_t st, const char *fmt, const char *arg)
{
    job->state = st;
    snprintf(job->state_text, sizeof(job->state_text), fmt, arg ? arg : "");
    job->state_changes++;
}

const char *
acme_issue_state(acme_issue_t *job)
{
    return job->state_text;
}

unsigned long
acme_issue_state_changes(acme_issue_t *job)
{
    return job->state_changes;
}

/* Forget what we published without withdrawing it: the CA may be validating right now, and the
 * process that resumes the stored order answers with the same tokens (and withdraws them). */
static void
forget_published(acme_issue_t *job)
{
    published_clear(job, 0);
}

void
acme_issue_cancel(acme_issue_t *job)
{
    if (job == NULL) {
        return;
    }
    forget_published(job);
    if (job->busy) {
        /*
         * Its request is dropped: waiting for the callback would keep the lock until the CA answers,
         * and for ever when the client is freed next (shutdown), leaking the job.
         */
        acme_client_forget(job->c, job);
    }
    job_free(job);
}

/* ---- helpers ---- */

static void
timer_cb(void *arg)
{
    acme_issue_t *job = arg;

    job->timer = NULL;
    job_step(job);
}

static void
job_later(acme_issue_t *job, long ms)
{
    job->timer = acme_timer_add(job->loop, ms, timer_cb, job);
    if (job->timer == NULL) {
        acme_err_t e;
        acme_err_set(&e, ACME_ERR_INTERNAL, "out of memory");
        job_fail(job, &e);
    }
}

/* Callbacks from the client: returns 1 when the job may continue, 0 when it failed (freed). */
static int
job_back(acme_issue_t *job)
{
    job->busy = 0;
    if (job->lock_lost) {
        acme_err_t e = job->lock_err;
        job_fail(job, &e);
        return 0;
    }
    return 1;
}

/*
 * A shared store's lock has a lease (Redis): extend it every third of the lease while the job lives.
 * Lost (another node may hold it now): stop before anything is stored, at once or when the request in
 * flight returns.
 */
static void
lock_refresh(void *arg)
{
    acme_issue_t  *job = arg;
    acme_err_t     err;
    long           lease = acme_store_lock_lease_ms(job->store);
    int            rc;

    job->lock_timer = NULL;
    if (job->issue_lock != NULL && acme_store_lock_refresh(job->store, job->issue_lock, &err) == 0) {
        acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": lost the lock on issuing for its identifiers: %s",
                 job->name, err.msg);
    }
    rc = acme_store_lock_refresh(job->store, job->lock, &err);
    if (rc == 0) {
        acme_err_set(&job->lock_err, ACME_ERR_BUSY, "lost the lock on \"%s\" to another node: %s",
                     job->name, err.msg);
        if (job->busy) {
            job->lock_lost = 1;
            return;
        }
        err = job->lock_err;
        job_fail(job, &err);
        return;
    }
    if (rc < 0) {
        acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": cannot extend the lock's lease: %s", job->name,
                 err.msg);
    }
    /* every third of the lease; every sixth while the store does not answer */
    job->lock_timer = acme_timer_add(job->loop, rc < 0 ? lease / 6 : lease / 3, lock_refresh, job);
}

static int
job_post(acme_issue_t *job, const char *url, const char *payload, const char *accept,
    acme_client_resp_pt cb)
{
    acme_err_t err;

    job->busy = 1;
    if (acme_client_post(job->c, url, payload, accept, cb, job, &err) != 0) {
        job->busy = 0;
        job_fail(job, &err);
        return -1;
    }
    return 0;
}

static int
require_json(acme_issue_t *job, const acme_http_resp_t *resp, const char *what)
{
    acme_err_t err;

    if (resp->content_type == NULL || strcmp(resp->content_type, "application/json") != 0) {
        acme_err_set(&err, ACME_ERR_BADRESPONSE, "%s: expected application/json, got \"%.60s\"", what,
                     resp->content_type ? resp->content_type : "(none)");
        job_fail(job, &err);
        return -1;
    }
    return 0;
}

/* Polling: honour Retry-After (capped at 60 s), else back off from 1 s to 10 s; give up at the deadline. */
static void
job_poll_later(acme_issue_t *job, long retry_after, const char *what)
{
    acme_err_t  err;
    long        ms;

    if (time(NULL) - job->wait_start > job->poll_timeout) {
        acme_err_set(&err, ACME_ERR_CA, "%s: still not done after %ld s, giving up (order %s)", what,
                     job->poll_timeout, job->order_url ? job->order_url : "not placed");
        job_fail(job, &err);
        return;
    }
    if (retry_after > 0) {
        ms = (retry_after > 60 ? 60 : retry_after) * 1000;
    } else {
        ms = job->poll_delay_ms;
        job->poll_delay_ms = job->poll_delay_ms * 3 / 2;
        if (job->poll_delay_ms > 10000) {
            job->poll_delay_ms = 10000;
        }
    }
    job_later(job, ms);
}

static void
poll_reset(acme_issue_t *job)
{
    job->wait_start = time(NULL);
    job->poll_delay_ms = 100;
}

static int
order_store(acme_issue_t *job, acme_err_t *err)
{
    json_t             *o, *ids;
    char               *js, *pem = NULL;
    size_t              i, pem_len = 0;
    acme_store_item_t   items[2];
    char                k1[512], k2[512];
    int                 rc;

    ids = json_array();
    for (i = 0; i < job->nids; i++) {
        json_array_append_new(ids, json_pack("{s:s, s:s}", "type", acme_ident_type_name(job->ids[i].type),
                                             "value", job->ids[i].value));
    }
    /* without a URL: newOrder is about to be sent (an "intent"), so that a crash before its answer is
     * stored can look the order up in the account's list instead of leaving it orphaned */
    o = json_pack("{s:s, s:o, s:I}", "ca", acme_client_directory_url(job->c),
                  "identifiers", ids, "created", (json_int_t) time(NULL));
    if (o != NULL) {
        json_object_set_new(o, job->order_url ? "url" : "intent",
                            job->order_url ? json_string(job->order_url) : json_true());
    }
    js = o ? json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(o);
    if (js == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    pem = acme_key_to_pem(job->cert_key, &pem_len, err);
    if (pem == NULL) {
        free(js);
        return -1;
    }
    snprintf(k1, sizeof(k1), "certs/%s/order.json", job->name);
    snprintf(k2, sizeof(k2), "certs/%s/order.key", job->name);
    items[0] = (acme_store_item_t) { k2, pem, pem_len, 1 };
    items[1] = (acme_store_item_t) { k1, js, strlen(js), 0 };
    rc = job->store->ops->commit(job->store, items, 2, err);
    acme_free_secret(pem, pem_len);
    free(js);
    return rc;
}

static void
order_forget(acme_issue_t *job)
{
    acme_store_item_t   items[2];
    char                k1[512], k2[512];

    snprintf(k1, sizeof(k1), "certs/%s/order.json", job->name);
    snprintf(k2, sizeof(k2), "certs/%s/order.key", job->name);
    items[0] = (acme_store_item_t) { k1, NULL, 0, 0 };
    items[1] = (acme_store_item_t) { k2, NULL, 0, 1 };
    job->store->ops->commit(job->store, items, 2, NULL);
}

/* A stored order for the same CA and identifiers, with its key: resume it. 1 an order URL, 2 an intent
 * (newOrder sent, answer not stored), 3 an order URL at this CA for other identifiers (the configuration
 * changed: it is given up), 0 nothing usable. */
static int
order_load(acme_issue_t *job)
{
    char        k[512], *js = NULL, *pem = NULL;
    size_t      len, pem_len = 0, i;
    json_t     *o, *ids, *it;
    const char *url, *ca;
    int         ok = 0, intent;

    snprintf(k, sizeof(k), "certs/%s/order.json", job->name);
    if (acme_store_get(job->store, k, &js, &len, NULL) != 0) {
        return 0;
    }
    o = json_loadb(js, len, 0, NULL);
    free(js);
    url = json_string_value(json_object_get(o, "url"));
    intent = url == NULL && json_is_true(json_object_get(o, "intent"));
    ca = json_string_value(json_object_get(o, "ca"));
    ids = json_object_get(o, "identifiers");
    if ((url != NULL || intent) && ca != NULL && strcmp(ca, acme_client_directory_url(job->c)) == 0
        && json_is_array(ids) && json_array_size(ids) == job->nids)
    {
        ok = 1;
        json_array_foreach(ids, i, it) {
            const char *v = json_string_value(json_object_get(it, "value"));
            if (v == NULL || strcmp(v, job->ids[i].value) != 0) {
                ok = 0;
            }
        }
    }
    if (ok) {
        snprintf(k, sizeof(k), "certs/%s/order.key", job->name);
        if (acme_store_get(job->store, k, &pem, &pem_len, NULL) == 0) {
            job->cert_key = acme_key_from_pem(pem, pem_len, NULL);
            acme_free_secret(pem, pem_len);
        }
        if (job->cert_key == NULL) {
            ok = 0;
        } else if (url != NULL) {
            job->order_url = acme_strdup(url);
        }
    }
    if (!ok && url != NULL && ca != NULL && strcmp(ca, acme_client_directory_url(job->c)) == 0) {
        EVP_PKEY_free(job->cert_key);
        job->cert_key = NULL;
        free(job->order_url);
        job->order_url = acme_strdup(url);
        json_decref(o);
        return job->order_url != NULL ? 3 : 0;
    }
    json_decref(o);
    if (ok && intent) {
        return 2;
    }
    return ok && job->order_url != NULL;
}

static int
order_parse(acme_issue_t *job, const acme_http_resp_t *resp, const char *what)
{
    acme_err_t err;

    if (require_json(job, resp, what) != 0) {
        return -1;
    }
    if (job->have_order) {
        acme_order_free(&job->order);
        job->have_order = 0;
    }
    memset(&job->order, 0, sizeof(job->order));
    if (acme_order_parse(resp->body.data, resp->body.len, &job->order, &err) != 0) {
        acme_err_prefix(&err, "%s", what);
        job_fail(job, &err);
        return -1;
    }
    job->have_order = 1;
    return 0;
}

static void order_abandon(acme_issue_t *job, const acme_err_t *err);

static void
order_invalid(acme_issue_t *job, const char *what)
{
    acme_err_t  err;

    if (job->order.error != NULL) {
        ident_errors_from_problem(job, job->order.error);
        acme_problem_to_err(job->order.error, what, &err);
    } else {
        acme_err_set(&err, ACME_ERR_CA, "%s: the order became %s", what,
                     acme_status_name(job->order.status));
    }
    order_abandon(job, &err);
}

/* ---- responses ---- */

static void order_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);

static void
order_dispatch(acme_issue_t *job)
{
    switch (job->order.status) {
    case ACME_ST_PENDING:
        job->authz_i = 0;
        job_set_state(job, J_AUTHZ, "authorizing", NULL);
        job_step(job);
        return;
    case ACME_ST_READY:
        job_set_state(job, J_FINALIZE, "finalizing", NULL);
        job_step(job);
        return;
    case ACME_ST_PROCESSING:
        /* the wait starts now (a resumed order has had no wait yet) */
        poll_reset(job);
        job_set_state(job, J_ORDER_VALID_POLL, "waiting for the CA to issue", NULL);
        job_poll_later(job, 0, "order processing");
        return;
    case ACME_ST_VALID:
        if (job->order.certificate == NULL) {
            acme_err_t err;
            acme_err_set(&err, ACME_ERR_BADRESPONSE, "order %s is valid but has no certificate URL",
                         job->order_url);
            job_fail(job, &err);
            return;
        }
        job_set_state(job, J_DOWNLOAD, "downloading the certificate", NULL);
        job_step(job);
        return;
    default:
        order_invalid(job, "order");
        return;
    }
}

static void
new_order_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    acme_err_t     e;

    if (!job_back(job)) {
        return;
    }
    if (err != NULL) {
        if (job->replaces != NULL && !job->replaces_dropped && err->http_status >= 500
            && ++job->replaces_5xx < 2)
        {
            /* a CA failing on "replaces" fails the same way again: try it once more, then without */
            acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": newOrder failed (%s), trying again",
                     job->name, err->msg);
            job_later(job, 1000);
            return;
        }
        if (job->replaces != NULL && !job->replaces_dropped
            && (err->kind == ACME_ERR_CA || err->http_status >= 500)
            && strstr(err->msg, "accountDoesNotExist") == NULL)
        {
            /* RFC 9773: a CA may refuse "replaces"; order again without it */
            acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": the CA refused \"replaces\" (%s), "
                     "ordering without it", job->name, err->msg);
            job->replaces_dropped = 1;
            job_step(job);
            return;
        }
        e = *err;
        acme_err_prefix(&e, "newOrder");
        if (err->kind == ACME_ERR_CA || err->kind == ACME_ERR_RATELIMIT) {
            order_forget(job);      /* refused: no order was made */
        }
        job_fail(job, &e);
        return;
    }
    if (resp->location == NULL || strncmp(resp->location, "http", 4) != 0) {
        acme_err_set(&e, ACME_ERR_BADRESPONSE, "newOrder: no order URL (Location) in the answer");
        job_fail(job, &e);
        return;
    }
    if (order_parse(job, resp, "newOrder") != 0) {
        return;
    }
    if (job->order.nauthorizations == 0 && job->order.status == ACME_ST_PENDING) {
        acme_err_set(&e, ACME_ERR_BADRESPONSE, "newOrder: a pending order with no authorizations");
        job_fail(job, &e);
        return;
    }
    free(job->order_url);
    job->order_url = acme_strdup(resp->location);
    if (order_store(job, &e) != 0) {
        job_fail(job, &e);
        return;
    }
    acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": order %s is %s", job->name, job->order_url,
             acme_status_name(job->order.status));
    order_dispatch(job);
}

static void
order_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    acme_err_t     e;

    if (!job_back(job)) {
        return;
    }
    if (err != NULL) {
        if (job->state == J_RESUME && (err->kind == ACME_ERR_CA || err->kind == ACME_ERR_BADRESPONSE)) {
            /* the CA lost or expired the order: start afresh */
            acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": stored order unusable (%s), ordering anew",
                     job->name, err->msg);
            order_forget(job);
            EVP_PKEY_free(job->cert_key);
            job->cert_key = NULL;
            job_set_state(job, J_NEW_ORDER, "ordering", NULL);
            job_step(job);
            return;
        }
        e = *err;
        acme_err_prefix(&e, "order %s", job->order_url);
        job_fail(job, &e);
        return;
    }
    if (order_parse(job, resp, "order") != 0) {
        return;
    }
    switch (job->state) {
    case J_RESUME:
        if (job->order.status == ACME_ST_INVALID || job->order.status == ACME_ST_EXPIRED) {
            order_abandon(job, NULL);
            return;
        }
        acme_log(job->loop, ACME_LOG_NOTICE, "acme: \"%s\": resuming order %s (%s)", job->name,
                 job->order_url, acme_status_name(job->order.status));
        order_dispatch(job);
        return;
    case J_ORDER_READY_POLL:
        if (job->order.status == ACME_ST_PENDING) {
            job_poll_later(job, resp->retry_after, "order authorization");
            return;
        }
        order_dispatch(job);
        return;
    case J_FINALIZE:
    case J_ORDER_VALID_POLL:
        if (job->order.status == ACME_ST_PROCESSING || job->order.status == ACME_ST_READY) {
            job_set_state(job, J_ORDER_VALID_POLL, "waiting for the CA to issue", NULL);
            job_poll_later(job, resp->retry_after, "order processing");
            return;
        }
        if (job->order.status == ACME_ST_PENDING) {
            acme_err_set(&e, ACME_ERR_BADRESPONSE, "order %s went back to pending after finalize",
                         job->order_url);
            job_fail(job, &e);
            return;
        }
        order_dispatch(job);
        return;
    default:
        order_dispatch(job);
        return;
    }
}

static const char *
choose_type(acme_issue_t *job, acme_authz_t *a, acme_challenge_t **out)
{
    size_t             i;
    acme_challenge_t  *c;

    for (i = 0; i < job->ntypes; i++) {
        c = acme_authz_challenge(a, job->types[i]);
        if (c != NULL && c->token != NULL && c->url != NULL) {
            *out = c;
            return job->types[i];
        }
    }
    return NULL;
}

static int
publish(acme_issue_t *job, const char *type, const acme_ident_t *id, const char *token, acme_err_t *err)
{
    char         *thumb, *ka, *key;
    published_t  *p;
    pubref_t     *r;
    int           rc, refs_before;

    thumb = acme_jwk_thumbprint(acme_client_account_key(job->c), err);
    if (thumb == NULL) {
        return -1;
    }
    ka = acme_sprintf("%s.%s", token, thumb);
    free(thumb);
    key = strcmp(type, "http-01") == 0 ? acme_strdup(token) : acme_ident_sni(id);
    p = realloc(job->published, (job->npublished + 1) * sizeof(*p));
    if (p != NULL) {
        job->published = p;
    }
    if (ka == NULL || key == NULL || p == NULL) {
        free(ka);
        free(key);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    /* published already by another job, which keeps it until we let it go too */
    r = pubref_find(type, key);
    if (r != NULL && strcmp(r->ka, ka) == 0) {
        rc = pubref_take(type, key, ka);
        free(ka);
        if (rc != 0) {
            free(key);
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            return -1;
        }
        job->confirm_n = 0;
        goto done;
    }
    rc = acme_store_challenge_put(job->store, type, key, id, ka, err);
    if (rc == 0 && job->ch.publish != NULL) {
        rc = job->ch.publish(job->ch.data, type, id, token, ka, err);
    }
    refs_before = r != NULL ? r->refs : 0;
    if (rc == 0 && pubref_take(type, key, ka) != 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        rc = -1;
    }
    /* nodes that answer from memory (nginx) copy it from the announcement; the CA is told once they did */
    job->confirm_n = 0;
    if (rc == 0) {
        job->confirm_n = acme_store_challenge_announce(job->store, 1, type, key, id, ka, err);
        if (job->confirm_n < 0) {
            acme_err_prefix(err, "announcing it to the other nodes");
            rc = -1;
        }
    }
    free(ka);
    if (rc != 0) {
        r = pubref_find(type, key);
        if (r != NULL && r->refs > refs_before) {
            (void) pubref_release(type, key);
        }
        free(key);
        return -1;
    }
done:
    p = &job->published[job->npublished++];
    p->type = acme_strdup(type);
    p->token = acme_strdup(token);
    p->key = key;
    p->id.type = id->type;
    p->id.value = acme_strdup(id->value);
    return 0;
}

static void
authz_problem(acme_issue_t *job, acme_authz_t *a, acme_challenge_t *c)
{
    acme_err_t   err;
    char         what[400];

    snprintf(what, sizeof(what), "%s %s: %s%s", acme_ident_type_name(a->identifier.type),
             a->identifier.value, c ? c->type : "authorization", c ? " failed" : " is invalid");
    if (c != NULL && c->error != NULL) {
        acme_problem_to_err(c->error, what, &err);
    } else {
        acme_err_set(&err, ACME_ERR_CA, "%s (status %s)", what, acme_status_name(a->status));
    }
    {
        char *msg = c != NULL && c->error != NULL ? acme_problem_message(c->error) : NULL;
        char  fb[200];

        if (msg == NULL) {
            snprintf(fb, sizeof(fb), "%s is %s", c ? c->type : "the authorization",
                     acme_status_name(c ? c->status : a->status));
        }
        ident_error_add(job, acme_ident_type_name(a->identifier.type), a->identifier.value, msg ? msg : fb);
        free(msg);
        if (c != NULL) {
            ident_errors_from_problem(job, c->error);
        }
    }
    order_abandon(job, &err);
}

static long long
now_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void challenge_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);

/* The last published challenge: every node that got its announcement has acknowledged it, or the time
 * is up (a node that does not answer in time is one the CA may find unready; the others are). */
static void
confirm_step(acme_issue_t *job)
{
    published_t  *p = &job->published[job->npublished - 1];
    long          n = 0;
    long long     waited;
    acme_err_t    e;
    int           rc;

    rc = acme_store_challenge_acks(job->store, p->type, p->key, &n, &e);
    waited = now_ms() - job->confirm_start;
    if (rc == 0 && n < job->confirm_n && waited < ISSUE_CONFIRM_MS) {
        job_later(job, waited < 100 ? 5 : 25);
        return;
    }
    if (rc != 0) {
        acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": cannot count the nodes that took the %s challenge "
                 "for %s: %s", job->name, p->type, p->id.value, e.msg);
    } else if (n < job->confirm_n) {
        acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": %ld of %d nodes took the %s challenge for %s "
                 "within %d ms; asking the CA to validate anyway", job->name, n, job->confirm_n, p->type,
                 p->id.value, ISSUE_CONFIRM_MS);
    } else {
        acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": %ld node(s) took the %s challenge for %s in %lld ms",
                 job->name, n, p->type, p->id.value, waited);
    }
    job_set_state(job, J_CHALLENGE, "validating", NULL);
    job_post(job, job->chall_url, "{}", NULL, challenge_resp);
}

static void
challenge_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t *job = arg;
    acme_err_t    e;

    (void) resp;
    if (!job_back(job)) {
        return;
    }
    if (err != NULL && err->http_status == 409) {
        /* Boulder: "already being validated" (asked again by a resumed job): wait for that validation */
        acme_log(job->loop, ACME_LOG_NOTICE, "acme: \"%s\": challenge %s is already being validated (%s), "
                 "polling its authorization", job->name, job->chall_url, err->msg);
        err = NULL;
    }
    if (err != NULL) {
        e = *err;
        acme_err_prefix(&e, "challenge %s", job->chall_url);
        job_fail(job, &e);
        return;
    }
    job_set_state(job, J_AUTHZ_POLL, "waiting for validation", NULL);
    poll_reset(job);
    job_later(job, 50);
}

static void
authz_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t      *job = arg;
    acme_authz_t       a;
    acme_challenge_t  *c = NULL, *ci;
    const char        *type;
    acme_err_t         e;
    size_t             i;
    char              *payload = "{}";

    if (!job_back(job)) {
        return;
    }
    if (err != NULL) {
        e = *err;
        acme_err_prefix(&e, "authorization %s", job->order.authorizations[job->authz_i]);
        job_fail(job, &e);
        return;
    }
    if (require_json(job, resp, "authorization") != 0) {
        return;
    }
    memset(&a, 0, sizeof(a));
    if (acme_authz_parse(resp->body.data, resp->body.len, &a, &e) != 0) {
        acme_err_prefix(&e, "authorization %s", job->order.authorizations[job->authz_i]);
        job_fail(job, &e);
        return;
    }

    switch (a.status) {
    case ACME_ST_VALID:
        acme_authz_free(&a);
        job->authz_i++;
        job_set_state(job, J_AUTHZ, "authorizing", NULL);
        job_step(job);
        return;

    case ACME_ST_PENDING:
        if (job->state == J_AUTHZ_POLL) {
            /* validation in progress, unless the challenge already failed */
            for (i = 0; i < a.nchallenges; i++) {
                ci = &a.challenges[i];
                if (ci->status == ACME_ST_INVALID) {
                    authz_problem(job, &a, ci);
                    acme_authz_free(&a);
                    return;
                }
            }
            acme_authz_free(&a);
            job_poll_later(job, resp->retry_after, "authorization");
            return;
        }
        if (a.wildcard) {
            acme_err_set(&e, ACME_ERR_CONFIG, "%s: wildcard names need dns-01, which is not supported",
                         a.identifier.value);
            acme_authz_free(&a);
            order_abandon(job, &e);
            return;
        }
        type = choose_type(job, &a, &c);
        if (type == NULL) {
            acme_err_set(&e, ACME_ERR_CA, "%s %s: the CA offers none of the configured challenge types",
                         acme_ident_type_name(a.identifier.type), a.identifier.value);
            acme_authz_free(&a);
            order_abandon(job, &e);
            return;
        }
        if (c->status == ACME_ST_PROCESSING || c->status == ACME_ST_VALID) {
            payload = NULL;     /* already triggered (a resumed order): just wait */
        }
        if (publish(job, type, &a.identifier, c->token, &e) != 0) {
            acme_err_prefix(&e, "publishing the %s challenge for %s", type, a.identifier.value);
            acme_authz_free(&a);
            job_fail(job, &e);
            return;
        }
        acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": answering %s for %s", job->name, type,
                 a.identifier.value);
        free(job->chall_url);
        job->chall_url = acme_strdup(c->url);
        acme_authz_free(&a);
        if (payload != NULL && job->confirm_n > 0) {
            job_set_state(job, J_CONFIRM, "waiting for the cluster's nodes to take the challenge", NULL);
            job->confirm_start = now_ms();
            job_step(job);
            return;
        }
        job_set_state(job, J_CHALLENGE, "validating", NULL);
        if (payload == NULL) {
            job_set_state(job, J_AUTHZ_POLL, "waiting for validation", NULL);
            poll_reset(job);
            job_later(job, 200);
            return;
        }
        job_post(job, job->chall_url, payload, NULL, challenge_resp);
        return;

    default:
        for (i = 0, ci = NULL; i < a.nchallenges; i++) {
            if (a.challenges[i].status == ACME_ST_INVALID || a.challenges[i].error != NULL) {
                ci = &a.challenges[i];
                break;
            }
        }
        authz_problem(job, &a, ci);
        acme_authz_free(&a);
        return;
    }
}

static void
finalize_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    acme_err_t     e;

    if (!job_back(job)) {
        return;
    }
    if (err != NULL && job->finalize_early && err->kind == ACME_ERR_CA
        && strstr(err->msg, "orderNotReady") != NULL)
    {
        job->finalize_early = 0;
        job_set_state(job, J_ORDER_READY_POLL, "waiting for the order to be ready", NULL);
        poll_reset(job);
        job_poll_later(job, err->retry_after, "order");
        return;
    }
    job->finalize_early = 0;
    if (err != NULL) {
        e = *err;
        acme_err_prefix(&e, "finalize");
        if (err->kind == ACME_ERR_CA) {
            order_forget(job);
        }
        job_fail(job, &e);
        return;
    }
    poll_reset(job);
    order_resp(job, resp, NULL);
}

static int
store_certificate(acme_issue_t *job, const char *pem, size_t len, STACK_OF(X509) *chain, acme_err_t *err)
{
    acme_certmeta_t   m;
    acme_cert_info_t  info;
    char             *key_pem = NULL, *chain_pem = NULL;
    size_t            key_len = 0, chain_len = 0;
    int               rc = -1;

    (void) pem;
    (void) len;
    memset(&m, 0, sizeof(m));
    memset(&info, 0, sizeof(info));
    if (acme_cert_info(sk_X509_value(chain, 0), &info, err) != 0) {
        return -1;
    }
    /* keep what we knew (last ARI state is for the old certificate, so drop it) */
    m.name = job->name;
    m.ids = job->ids;
    m.nids = job->nids;
    m.keyspec = job->keyspec;
    m.ca = (char *) acme_client_directory_url(job->c);
    m.profile = job->profile;
    m.not_before = info.not_before;
    m.not_after = info.not_after;
    m.ari_cert_id = acme_ari_cert_id(sk_X509_value(chain, 0), NULL);
    m.issued_at = time(NULL);

    chain_pem = acme_pem_chain_string(chain, &chain_len, err);
    key_pem = chain_pem ? acme_key_to_pem(job->cert_key, &key_len, err) : NULL;
    if (key_pem != NULL) {
        rc = acme_store_cert_save(job->store, job->name, chain_pem, chain_len, key_pem, key_len, &m, err);
    }
    acme_free_secret(key_pem, key_len);
    free(chain_pem);
    free(m.ari_cert_id);
    acme_cert_info_free(&info);
    return rc;
}

/* Check a downloaded chain; on success store it and finish. */
static void
accept_chain(acme_issue_t *job, const char *pem, size_t len)
{
    STACK_OF(X509)  *chain = NULL;
    acme_err_t       e;
    int              other_key;

    if (acme_pem_chain_parse(pem, len, &chain, &e) != 0
        || acme_chain_check(chain, job->cert_key, job->ids, job->nids, time(NULL), &e) != 0)
    {
        other_key = chain != NULL && sk_X509_num(chain) > 0
                    && EVP_PKEY_eq(X509_get0_pubkey(sk_X509_value(chain, 0)), job->cert_key) != 1;
        acme_chain_free(chain);
        acme_err_prefix(&e, "certificate from %s refused", job->order.certificate);
        /* not this order's certificate: resuming would download it again, so the order is forgotten.
         * For another key (a CA that reused the order and another job of the account finalized it with
         * its key, as Boulder does), a new order is placed at once; a second such refusal fails */
        if (other_key && !job->reordered) {
            job->reordered = 1;
            acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": %s; placing a new order", job->name, e.msg);
            order_abandon(job, NULL);
            return;
        }
        order_abandon(job, &e);
        return;
    }
    if (store_certificate(job, pem, len, chain, &e) != 0) {
        acme_chain_free(chain);
        acme_err_prefix(&e, "storing the certificate");
        job_fail(job, &e);
        return;
    }
    acme_chain_free(chain);
    acme_log(job->loop, ACME_LOG_NOTICE, "acme: \"%s\": certificate issued by %s and stored", job->name,
             acme_client_directory_url(job->c));
    job_finish(job, NULL);
}

static int
pem_matches_preferred(const char *pem, size_t len, const char *preferred)
{
    STACK_OF(X509)  *chain = NULL;
    int              r = 0;

    if (acme_pem_chain_parse(pem, len, &chain, NULL) == 0) {
        r = acme_chain_issuer_matches(chain, preferred);
    }
    acme_chain_free(chain);
    return r;
}

static int
require_pem(acme_issue_t *job, const acme_http_resp_t *resp)
{
    acme_err_t e;

    if (resp->content_type == NULL || strcmp(resp->content_type, "application/pem-certificate-chain") != 0) {
        acme_err_set(&e, ACME_ERR_BADRESPONSE,
                     "certificate %s: expected application/pem-certificate-chain, got \"%.60s\"",
                     job->order.certificate, resp->content_type ? resp->content_type : "(none)");
        job_fail(job, &e);
        return -1;
    }
    return 0;
}

static void
alternate_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t *job = arg;

    if (!job_back(job)) {
        return;
    }
    if (err == NULL && resp->content_type != NULL
        && strcmp(resp->content_type, "application/pem-certificate-chain") == 0
        && pem_matches_preferred(resp->body.data, resp->body.len, job->preferred_chain))
    {
        acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": using the alternate chain by \"%s\"", job->name,
                 job->preferred_chain);
        accept_chain(job, resp->body.data, resp->body.len);
        return;
    }
    job->alt_i++;
    job_step(job);
}

static void
download_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    acme_err_t     e;
    size_t         i;

    if (!job_back(job)) {
        return;
    }
    if (err != NULL) {
        e = *err;
        acme_err_prefix(&e, "certificate download");
        job_fail(job, &e);
        return;
    }
    if (require_pem(job, resp) != 0) {
        return;
    }
    if (job->preferred_chain == NULL
        || pem_matches_preferred(resp->body.data, resp->body.len, job->preferred_chain))
    {
        accept_chain(job, resp->body.data, resp->body.len);
        return;
    }
    if (resp->nalternate == 0) {
        acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": no chain issued by \"%s\", using the default "
                 "(the CA offers no alternate chains)", job->name, job->preferred_chain);
        accept_chain(job, resp->body.data, resp->body.len);
        return;
    }
    job->chain_pem = acme_strndup(resp->body.data, resp->body.len);
    job->alternates = calloc(resp->nalternate, sizeof(char *));
    if (job->chain_pem == NULL || job->alternates == NULL) {
        acme_err_set(&e, ACME_ERR_INTERNAL, "out of memory");
        job_fail(job, &e);
        return;
    }
    for (i = 0; i < resp->nalternate; i++) {
        job->alternates[i] = acme_strdup(resp->links_alternate[i]);
    }
    job->nalternates = resp->nalternate;
    job->alt_i = 0;
    job_set_state(job, J_ALTERNATE, "choosing the preferred chain", NULL);
    job_step(job);
}

/* ---- giving an order up ---- */

/* The order is forgotten (the next try places a new one) and its pending authorizations are deactivated
 * (RFC 8555 7.5.2): nobody can complete them any more, and they stop counting against the account's
 * limit of pending authorizations. err: the job fails with it afterwards; NULL: it orders anew. */
static void
order_abandon(acme_issue_t *job, const acme_err_t *err)
{
    order_forget(job);
    withdraw_all(job);
    job->abandon_fail = err != NULL;
    if (err != NULL) {
        job->abandon_err = *err;
    }
    job->abandon_i = 0;
    /* ready, processing and valid orders have every authorization valid already */
    if (!job->have_order || (job->order.status != ACME_ST_PENDING && job->order.status != ACME_ST_INVALID)) {
        job->abandon_i = job->have_order ? job->order.nauthorizations : 0;
    }
    job_set_state(job, J_ABANDON, "giving the order up", NULL);
    job_step(job);
}

static void
abandon_done(acme_issue_t *job)
{
    acme_err_t  e;

    if (job->abandon_fail) {
        e = job->abandon_err;
        job_fail(job, &e);
        return;
    }
    EVP_PKEY_free(job->cert_key);
    job->cert_key = NULL;
    free(job->order_url);
    job->order_url = NULL;
    job_set_state(job, J_NEW_ORDER, "ordering", NULL);
    job_step(job);
}

static void
abandon_next(acme_issue_t *job)
{
    job->abandon_i++;
    job_set_state(job, J_ABANDON, "giving the order up", NULL);
    job_step(job);
}

static void
abandon_authz_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    acme_authz_t   a;
    acme_err_t     e;
    int            pending = 0;

    if (!job_back(job)) {
        return;
    }
    if (err == NULL) {
        memset(&a, 0, sizeof(a));
        if (acme_authz_parse(resp->body.data, resp->body.len, &a, &e) == 0) {
            pending = a.status == ACME_ST_PENDING;
            acme_authz_free(&a);
        }
    }
    if (pending) {
        job_set_state(job, J_DEACTIVATE, "giving the order up", NULL);
        job_step(job);
        return;
    }
    abandon_next(job);
}

static void
deactivate_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    const char    *url;

    (void) resp;
    if (!job_back(job)) {
        return;
    }
    url = job->order.authorizations[job->abandon_i];
    if (err != NULL) {
        acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": cannot deactivate the pending authorization %s: %s",
                 job->name, url, err->msg);
    } else {
        acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": deactivated the pending authorization %s of the "
                 "abandoned order", job->name, url);
    }
    abandon_next(job);
}

/* Requests while giving up do not fail the job: the order is forgotten either way. */
static void
abandon_post(acme_issue_t *job, const char *payload, acme_client_resp_pt cb)
{
    acme_err_t  err;

    job->busy = 1;
    if (acme_client_post(job->c, job->order.authorizations[job->abandon_i], payload, NULL, cb, job, &err)
        != 0)
    {
        job->busy = 0;
        acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": cannot deactivate the authorizations of the "
                 "abandoned order: %s", job->name, err.msg);
        abandon_done(job);
    }
}

/* The stored order was for identifiers no longer configured: give it up, then order anew. */
static void
stale_order_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    acme_err_t     e;

    if (!job_back(job)) {
        return;
    }
    if (job->have_order) {
        acme_order_free(&job->order);
        job->have_order = 0;
    }
    memset(&job->order, 0, sizeof(job->order));
    if (err == NULL && acme_order_parse(resp->body.data, resp->body.len, &job->order, &e) == 0) {
        job->have_order = 1;
        acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": giving up the stored order %s (%s): it is for "
                 "other identifiers or lost its key", job->name, job->order_url,
                 acme_status_name(job->order.status));
    }
    order_abandon(job, NULL);
}

/* ---- the machine ---- */

static void
ready_done(void *arg, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    int            rc;

    if (!job_back(job)) {
        return;
    }
    if (err != NULL) {
        job_fail(job, err);
        return;
    }
    rc = order_load(job);
    if (rc == 2 && acme_client_account_url(job->c) != NULL) {
        job_set_state(job, J_ORPHAN_ACCOUNT, "looking for an order lost in a crash", NULL);
    } else if (rc == 1) {
        job_set_state(job, J_RESUME, "resuming the order", NULL);
    } else if (rc == 3) {
        job_set_state(job, J_STALE, "giving up the order for the former identifiers", NULL);
    } else {
        job_set_state(job, J_NEW_ORDER, "ordering", NULL);
    }
    job_step(job);
}

static char *
new_order_payload(acme_issue_t *job, acme_err_t *err)
{
    const acme_directory_t  *dir = acme_client_directory(job->c);
    json_t                  *o, *ids;
    size_t                   i;
    char                    *s;

    ids = json_array();
    for (i = 0; i < job->nids; i++) {
        json_array_append_new(ids, json_pack("{s:s, s:s}", "type", acme_ident_type_name(job->ids[i].type),
                                             "value", job->ids[i].value));
    }
    o = json_pack("{s:o}", "identifiers", ids);
    if (o == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    if (job->profile != NULL) {
        if (dir->nprofiles > 0 && !acme_directory_has_profile(dir, job->profile)) {
            acme_err_set(err, ACME_ERR_CONFIG, "the CA %s does not offer the profile \"%s\"",
                         acme_client_directory_url(job->c), job->profile);
            json_decref(o);
            return NULL;
        }
        if (dir->nprofiles == 0 && job->profile_required) {
            acme_err_set(err, ACME_ERR_CONFIG, "the CA %s offers no profiles, and \"%s\" is required",
                         acme_client_directory_url(job->c), job->profile);
            json_decref(o);
            return NULL;
        }
        if (dir->nprofiles > 0) {
            json_object_set_new(o, "profile", json_string(job->profile));
        } else {
            acme_log(job->loop, ACME_LOG_WARN, "acme: the CA %s offers no profiles; ordering \"%s\" "
                     "without profile \"%s\"", acme_client_directory_url(job->c), job->name, job->profile);
        }
    }
    if (job->replaces != NULL && !job->replaces_dropped && dir->renewal_info != NULL) {
        json_object_set_new(o, "replaces", json_string(job->replaces));
    }
    s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    }
    return s;
}

/* ---- an order lost between newOrder and storing its URL (RFC 8555 7.1.2.1) ---- */

#define ORPHAN_CANDIDATES  5

static void
orphan_none(acme_issue_t *job, const char *why)
{
    acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": no order to resume (%s), ordering anew", job->name, why);
    free(job->order_url);
    job->order_url = NULL;
    job_set_state(job, J_NEW_ORDER, "ordering", NULL);
    job_step(job);
}

/* The CA's answer while looking for the order, parsed; NULL when the search is over (the job failed or
 * orders anew). */
static json_t *
orphan_answer(acme_issue_t *job, const acme_http_resp_t *resp, const acme_err_t *err)
{
    json_t  *o;

    if (!job_back(job)) {
        return NULL;
    }
    if (err != NULL) {
        orphan_none(job, err->msg);
        return NULL;
    }
    o = json_loadb(resp->body.data, resp->body.len, 0, NULL);
    if (o == NULL) {
        orphan_none(job, "the CA's answer is not JSON");
    }
    return o;
}

static void
orphan_account_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    json_t        *o;
    const char    *orders;

    o = orphan_answer(job, resp, err);
    if (o == NULL) {
        return;
    }
    orders = json_string_value(json_object_get(o, "orders"));
    if (orders == NULL || strncmp(orders, "https://", 8) != 0) {
        json_decref(o);
        orphan_none(job, "the CA does not list the account's orders");
        return;
    }
    free(job->order_url);
    job->order_url = acme_strdup(orders);     /* the list, until an order is chosen */
    json_decref(o);
    job_set_state(job, J_ORPHAN_LIST, "looking for an order lost in a crash", NULL);
    job_step(job);
}

static void
orphan_list_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    json_t        *o, *a, *it;
    size_t         n, i;

    o = orphan_answer(job, resp, err);
    if (o == NULL) {
        return;
    }
    a = json_object_get(o, "orders");
    n = json_array_size(a);
    job->cands = calloc(ORPHAN_CANDIDATES, sizeof(char *));
    /* the newest orders are last in practice: look at those */
    for (i = n; job->cands != NULL && i > 0 && job->ncands < ORPHAN_CANDIDATES; i--) {
        it = json_array_get(a, i - 1);
        if (json_is_string(it) && strncmp(json_string_value(it), "https://", 8) == 0) {
            job->cands[job->ncands] = acme_strdup(json_string_value(it));
            if (job->cands[job->ncands] != NULL) {
                job->ncands++;
            }
        }
    }
    json_decref(o);
    job->cand_i = 0;
    job_set_state(job, J_ORPHAN_ORDER, "looking for an order lost in a crash", NULL);
    job_step(job);
}

/* 1 when the order body names exactly our identifiers (in any order). */
static int
orphan_same_ids(acme_issue_t *job, const acme_http_resp_t *resp)
{
    json_t      *o, *ids, *it;
    size_t       i, j, found = 0;
    const char  *t, *v;

    o = json_loadb(resp->body.data, resp->body.len, 0, NULL);
    ids = json_object_get(o, "identifiers");
    if (json_array_size(ids) != job->nids) {
        json_decref(o);
        return 0;
    }
    for (i = 0; i < job->nids; i++) {
        json_array_foreach(ids, j, it) {
            t = json_string_value(json_object_get(it, "type"));
            v = json_string_value(json_object_get(it, "value"));
            if (t != NULL && v != NULL && strcmp(t, acme_ident_type_name(job->ids[i].type)) == 0
                && strcasecmp(v, job->ids[i].value) == 0)
            {
                found++;
                break;
            }
        }
    }
    json_decref(o);
    return found == job->nids;
}

static void
orphan_order_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    acme_err_t     e;

    if (!job_back(job)) {
        return;
    }
    if (err == NULL && resp->content_type != NULL && strcmp(resp->content_type, "application/json") == 0
        && orphan_same_ids(job, resp))
    {
        if (job->have_order) {
            acme_order_free(&job->order);
            job->have_order = 0;
        }
        memset(&job->order, 0, sizeof(job->order));
        if (acme_order_parse(resp->body.data, resp->body.len, &job->order, &e) == 0) {
            job->have_order = 1;
            if (job->order.status == ACME_ST_PENDING || job->order.status == ACME_ST_READY) {
                free(job->order_url);
                job->order_url = acme_strdup(job->cands[job->cand_i]);
                if (job->order_url == NULL || order_store(job, &e) != 0) {
                    acme_err_prefix(&e, "storing the order for \"%s\"", job->name);
                    job_fail(job, &e);
                    return;
                }
                acme_log(job->loop, ACME_LOG_NOTICE, "acme: \"%s\": resuming order %s (%s), found in the "
                         "account's orders", job->name, job->order_url, acme_status_name(job->order.status));
                order_dispatch(job);
                return;
            }
        }
    }
    job->cand_i++;
    job_step(job);
}

static void
cert_key_done(void *arg, EVP_PKEY *key, const acme_err_t *err)
{
    acme_issue_t *job = arg;

    job->keygen = NULL;
    if (err != NULL) {
        acme_err_t e = *err;
        acme_err_prefix(&e, "generating the key for \"%s\"", job->name);
        job_fail(job, &e);
        return;
    }
    job->cert_key = key;
    job_step(job);
}

static void
job_step(acme_issue_t *job)
{
    acme_err_t   err;
    char        *s, *csr, *payload;

    switch (job->state) {
    case J_QUEUE:
        issue_queue(job);
        return;

    case J_READY:
        job->busy = 1;
        if (acme_client_ready(job->c, ready_done, job, &err) != 0) {
            job->busy = 0;
            job_fail(job, &err);
        }
        return;

    case J_RESUME:
        job_post(job, job->order_url, NULL, NULL, order_resp);
        return;

    case J_STALE:
        job_post(job, job->order_url, NULL, NULL, stale_order_resp);
        return;

    case J_ORPHAN_ACCOUNT:
        /* POST-as-GET of the account (Pebble and Boulder answer it; Pebble refuses the empty update of
         * RFC 8555 7.3.3); a CA refusing both just leads to a new order */
        job_post(job, acme_client_account_url(job->c), NULL, NULL, orphan_account_resp);
        return;

    case J_ORPHAN_LIST:
        job_post(job, job->order_url, NULL, NULL, orphan_list_resp);
        return;

    case J_ORPHAN_ORDER:
        if (job->cand_i >= job->ncands) {
            orphan_none(job, "no pending order for these identifiers");
            return;
        }
        job_post(job, job->cands[job->cand_i], NULL, NULL, orphan_order_resp);
        return;

    case J_NEW_ORDER:
        if (job->cert_key == NULL) {
            /* off the loop: an RSA key can take seconds */
            job->keygen = acme_keygen_start(job->loop, &job->keyspec, cert_key_done, job, &err);
            if (job->keygen == NULL) {
                job_fail(job, &err);
            }
            return;
        }
        s = new_order_payload(job, &err);
        if (s == NULL) {
            job_fail(job, &err);
            return;
        }
        free(job->order_url);
        job->order_url = NULL;
        if (order_store(job, &err) != 0) {
            free(s);
            acme_err_prefix(&err, "storing the order for \"%s\"", job->name);
            job_fail(job, &err);
            return;
        }
        job_post(job, acme_client_directory(job->c)->new_order, s, NULL, new_order_resp);
        free(s);
        return;

    case J_AUTHZ:
        if (job->authz_i >= job->order.nauthorizations) {
            /* every authorization is valid: finalize at once (RFC 8555 7.4); a CA that has not moved
             * the order to "ready" yet answers orderNotReady and the order is polled then */
            withdraw_all(job);
            job->finalize_early = 1;
            job_set_state(job, J_FINALIZE, "finalizing", NULL);
            job_step(job);
            return;
        }
        job_post(job, job->order.authorizations[job->authz_i], NULL, NULL, authz_resp);
        return;

    case J_AUTHZ_POLL:
        job_post(job, job->order.authorizations[job->authz_i], NULL, NULL, authz_resp);
        return;

    case J_ORDER_READY_POLL:
    case J_ORDER_VALID_POLL:
        job_post(job, job->order_url, NULL, NULL, order_resp);
        return;

    case J_FINALIZE:
        if (job->order.finalize == NULL) {
            acme_err_set(&err, ACME_ERR_BADRESPONSE, "order %s has no finalize URL", job->order_url);
            job_fail(job, &err);
            return;
        }
        csr = acme_csr_create(job->cert_key, job->ids, job->nids, &err);
        if (csr == NULL) {
            job_fail(job, &err);
            return;
        }
        payload = acme_sprintf("{\"csr\":\"%s\"}", csr);
        free(csr);
        if (payload == NULL) {
            acme_err_set(&err, ACME_ERR_INTERNAL, "out of memory");
            job_fail(job, &err);
            return;
        }
        poll_reset(job);
        job_post(job, job->order.finalize, payload, NULL, finalize_resp);
        free(payload);
        return;

    case J_DOWNLOAD:
        job_post(job, job->order.certificate, NULL, "application/pem-certificate-chain", download_resp);
        return;

    case J_ALTERNATE:
        if (job->alt_i >= job->nalternates) {
            acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": no chain issued by \"%s\", using the default",
                     job->name, job->preferred_chain);
            s = job->chain_pem;
            job->chain_pem = NULL;
            accept_chain(job, s, strlen(s));
            free(s);
            return;
        }
        job_post(job, job->alternates[job->alt_i], NULL, "application/pem-certificate-chain",
                 alternate_resp);
        return;

    case J_ABANDON:
        if (!job->have_order || job->abandon_i >= job->order.nauthorizations) {
            abandon_done(job);
            return;
        }
        abandon_post(job, NULL, abandon_authz_resp);
        return;

    case J_DEACTIVATE:
        abandon_post(job, "{\"status\":\"deactivated\"}", deactivate_resp);
        return;

    case J_DONE:
        job_finish(job, NULL);
        return;

    case J_CONFIRM:
        confirm_step(job);
        return;

    case J_CHALLENGE:
        return;
    }
}

/*
 * One issuance at a time per (CA, identifier set, profile), across jobs and processes sharing the store:
 * Boulder answers a newOrder with the same account's pending order for the same identifiers and
 * profile, so two certificates for the same names (ECDSA and RSA) ordered at once would share an order.
 * The second waits until the first finalized; its newOrder then gets a new order.
 */
static int
issue_lockname(acme_issue_t *job, acme_err_t *err)
{
    EVP_MD_CTX     *md;
    unsigned char   h[EVP_MAX_MD_SIZE];
    unsigned int    hlen = 0, k;
    char          **v;
    size_t          i, j;
    int             ok;

    v = calloc(job->nids, sizeof(char *));
    md = EVP_MD_CTX_new();
    ok = v != NULL && md != NULL && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;
    for (i = 0; ok && i < job->nids; i++) {
        v[i] = acme_sprintf("%s:%s", acme_ident_type_name(job->ids[i].type), job->ids[i].value);
        ok = v[i] != NULL;
    }
    /* the set, not the order of the names */
    for (i = 1; ok && i < job->nids; i++) {
        for (j = i; j > 0 && strcmp(v[j - 1], v[j]) > 0; j--) {
            char *t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    }
    ok = ok && EVP_DigestUpdate(md, acme_client_directory_url(job->c),
                                strlen(acme_client_directory_url(job->c)) + 1) == 1;
    for (i = 0; ok && i < job->nids; i++) {
        ok = EVP_DigestUpdate(md, v[i], strlen(v[i]) + 1) == 1;
    }
    ok = ok && EVP_DigestUpdate(md, job->profile ? job->profile : "", job->profile ? strlen(job->profile) : 0)
         == 1 && EVP_DigestFinal_ex(md, h, &hlen) == 1;
    for (i = 0; v != NULL && i < job->nids; i++) {
        free(v[i]);
    }
    free(v);
    EVP_MD_CTX_free(md);
    if (!ok) {
        acme_err_set(err, ACME_ERR_INTERNAL, "cannot name the issuance lock of \"%s\"", job->name);
        return -1;
    }
    k = (unsigned int) snprintf(job->issue_lockname, sizeof(job->issue_lockname), "issue-");
    for (i = 0; i < 16 && i < hlen; i++) {
        k += (unsigned int) snprintf(job->issue_lockname + k, sizeof(job->issue_lockname) - k, "%02x", h[i]);
    }
    return 0;
}

static void
issue_queue(acme_issue_t *job)
{
    acme_err_t  err;
    int         rc;

    rc = job->store->ops->lock(job->store, job->issue_lockname, &job->issue_lock, &err);
    if (rc < 0) {
        job->issue_lock = NULL;
        acme_err_prefix(&err, "locking the issuance for the identifiers of \"%s\"", job->name);
        job_fail(job, &err);
        return;
    }
    if (rc == 0) {
        job->issue_lock = NULL;
        if (!job->queued_logged) {
            job->queued_logged = 1;
            acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": another certificate for the same identifiers "
                     "is being ordered, waiting for it", job->name);
        }
        job_set_state(job, J_QUEUE, "waiting for another certificate for the same identifiers", NULL);
        job_later(job, 500);
        return;
    }
    job_set_state(job, J_READY, "starting", NULL);
    job_step(job);
}

/* Under the lock: did another process store a newer certificate since the caller looked? */
static int
renewed_elsewhere(acme_issue_t *job, time_t seen)
{
    acme_certmeta_t  m;
    int              r;

    memset(&m, 0, sizeof(m));
    if (acme_store_meta_load(job->store, job->name, &m, NULL) != 0) {
        return 0;
    }
    r = m.not_after != 0 && m.issued_at > seen && m.not_after > time(NULL);
    acme_certmeta_free(&m);
    if (r) {
        acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": another process renewed it meanwhile", job->name);
    }
    return r;
}

acme_issue_t *
acme_issue_start(acme_client_t *c, const acme_issue_req_t *req, const acme_challenge_host_t *ch,
    acme_issue_done_pt done, void *arg, acme_err_t *err)
{
    acme_issue_t  *job;
    size_t         i;
    int            rc;
    char           lockname[600];
    const char *const *types;
    size_t         ntypes;

    if (req->nids == 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "no identifiers to order a certificate for");
        return NULL;
    }
    job = calloc(1, sizeof(*job));
    if (job == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    job->c = c;
    job->store = acme_client_store(c);
    job->loop = acme_client_loop(c);
    job->done = done;
    job->arg = arg;
    if (ch != NULL) {
        job->ch = *ch;
    }
    job->keyspec = req->keyspec.alg ? req->keyspec : ACME_KEYSPEC_DEFAULT;
    job->ids = calloc(req->nids, sizeof(acme_ident_t));
    if (job->ids == NULL) {
        goto nomem;
    }
    for (i = 0; i < req->nids; i++) {
        job->ids[i].type = req->ids[i].type;
        job->ids[i].value = acme_strdup(req->ids[i].value);
        if (job->ids[i].value == NULL) {
            goto nomem;
        }
        job->nids++;
    }
    job->name = req->name ? acme_strdup(req->name) : acme_cert_name(job->ids, job->nids, &job->keyspec);
    types = req->challenge_types ? req->challenge_types : default_types;
    ntypes = req->challenge_types ? req->nchallenge_types : 2;
    job->types = calloc(ntypes ? ntypes : 1, sizeof(char *));
    if (job->name == NULL || job->types == NULL) {
        goto nomem;
    }
    for (i = 0; i < ntypes; i++) {
        job->types[i] = acme_strdup(types[i]);
        job->ntypes++;
    }
    job->profile = acme_strdup(req->profile);
    job->profile_required = req->profile_required;
    job->preferred_chain = acme_strdup(req->preferred_chain);
    job->replaces = acme_strdup(req->replaces);
    job->poll_timeout = req->poll_timeout > 0 ? req->poll_timeout : 300;
    snprintf(job->state_text, sizeof(job->state_text), "starting");

    snprintf(lockname, sizeof(lockname), "cert-%s", job->name);
    rc = job->store->ops->lock(job->store, lockname, &job->lock, err);
    if (rc <= 0) {
        if (rc == 0) {
            acme_err_set(err, ACME_ERR_BUSY, "certificate \"%s\" is being issued by another process",
                         job->name);
        }
        job->lock = NULL;
        job_free(job);
        return NULL;
    }
    if (acme_store_lock_lease_ms(job->store) > 0) {
        job->lock_timer = acme_timer_add(job->loop, acme_store_lock_lease_ms(job->store) / 3, lock_refresh, job);
    }
    if (req->check_seen && renewed_elsewhere(job, req->seen_issued_at)) {
        job->state = J_DONE;
        job_later(job, 0);
        return job;
    }
    if (issue_lockname(job, err) != 0) {
        job_free(job);
        return NULL;
    }
    job->state = J_QUEUE;
    job_later(job, 0);
    return job;

nomem:
    acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    job_free(job);
    return NULL;
}
