/* The issuance job: start, cancel and free, the store locks, the step dispatcher, failure and back-off,
 * identifier errors. The order, authorization, finalize and download steps have files of their own. */
#include "acme_issue_int.h"

#include "acme_csr.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void issue_queue(acme_issue_t *job);

static const char *default_types[] = { "http-01", "tls-alpn-01" };

/* ---- lifecycle ---- */

static void
job_free(acme_issue_t *job)
{
    size_t i;

    acme_issue_withdraw_all(job);
    acme_timer_cancel(job->loop, job->timer);
    acme_timer_cancel(job->loop, job->lock_timer);
    acme_keygen_cancel(job->keygen);
    acme_issue_dns_free(job);
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
    acme_persist_notes_free(job->persist_notes, job->npersist_notes);
    acme_persist_notes_free(job->persist_all, job->npersist_all);
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
/* and its dns-persist-01 notes (finishing_checked: it checked records) */
static __thread int                   finishing_checked;
static __thread acme_persist_note_t  *finishing_notes;
static __thread size_t                finishing_nnotes, finishing_fresh;

size_t
acme_issue_take_ident_errors(acme_ident_error_t **errs)
{
    size_t n = finishing_nerrors;

    *errs = finishing_errors;
    finishing_errors = NULL;
    finishing_nerrors = 0;
    return n;
}

int
acme_issue_take_persist_notes(acme_persist_note_t **notes, size_t *n, size_t *fresh)
{
    int checked = finishing_checked;

    *notes = finishing_notes;
    *n = finishing_nnotes;
    *fresh = finishing_fresh;
    finishing_checked = 0;
    finishing_notes = NULL;
    finishing_nnotes = finishing_fresh = 0;
    return checked;
}

void
acme_issue_job_finish(acme_issue_t *job, const acme_err_t *err)
{
    acme_issue_done_pt  done = job->done;
    void               *arg = job->arg;
    char               *name = job->name;
    acme_ident_error_t *errs = NULL, *outer_errs = finishing_errors;
    size_t              nerrs = 0, outer_n = finishing_nerrors;
    acme_persist_note_t *notes, *outer_notes = finishing_notes;
    size_t              nnotes, fresh, outer_nnotes = finishing_nnotes, outer_fresh = finishing_fresh;
    int                 checked, outer_checked = finishing_checked;

    /* DNS records are removed first, off the loop; this is called again afterwards */
    if (acme_issue_dns_cleanup(job, err)) {
        return;
    }
    /* after a failure, judged against the certificate still in service */
    acme_issue_persist_judge(job, 0);
    job->name = NULL;
    job->state = J_DONE;
    checked = job->npersist_notes > 0;
    notes = job->persist_all;
    nnotes = job->npersist_all;
    fresh = job->npersist_fresh;
    job->persist_all = NULL;
    job->npersist_all = 0;
    if (err != NULL) {
        errs = job->ident_errors;
        nerrs = job->nident_errors;
        job->ident_errors = NULL;
        job->nident_errors = 0;
    }
    job_free(job);
    finishing_errors = errs;
    finishing_nerrors = nerrs;
    finishing_checked = checked;
    finishing_notes = notes;
    finishing_nnotes = nnotes;
    finishing_fresh = fresh;
    done(arg, name, err);
    /* whatever done did not take */
    acme_ident_errors_free(finishing_errors, finishing_nerrors);
    acme_persist_notes_free(finishing_notes, finishing_nnotes);
    finishing_errors = outer_errs;
    finishing_nerrors = outer_n;
    finishing_checked = outer_checked;
    finishing_notes = outer_notes;
    finishing_nnotes = outer_nnotes;
    finishing_fresh = outer_fresh;
    free(name);
}

/* The dns-persist-01 record an identifier's error asks for. */
void
acme_issue_ident_error_record(acme_issue_t *job, const char *type, const char *value, const char *name,
    const char *txt)
{
    acme_ident_error_t *e;
    size_t              i;

    if (name == NULL || txt == NULL) {
        return;
    }
    for (i = 0; i < job->nident_errors; i++) {
        e = &job->ident_errors[i];
        if (strncmp(e->ident, type, strlen(type)) == 0 && e->ident[strlen(type)] == ':'
            && strcmp(e->ident + strlen(type) + 1, value) == 0 && e->record_name == NULL)
        {
            e->record_name = acme_strdup(name);
            e->record_value = acme_strdup(txt);
            if (e->record_name == NULL || e->record_value == NULL) {
                free(e->record_name);
                free(e->record_value);
                e->record_name = e->record_value = NULL;
            }
            return;
        }
    }
}

/* Remember why one identifier failed ("dns:example.org": the CA's problem, subproblems included). */
void
acme_issue_ident_error_add(acme_issue_t *job, const char *type, const char *value, const char *msg)
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
    e->record_name = NULL;
    e->record_value = NULL;
    e->at = time(NULL);
    if (e->ident == NULL || e->error == NULL) {
        free(e->ident);
        free(e->error);
        return;
    }
    job->nident_errors++;
}

/* An order's or authorization's problem: its subproblems name identifiers (RFC 8555 6.7.1). */
void
acme_issue_ident_errors_from_problem(acme_issue_t *job, const acme_problem_t *p)
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
            acme_issue_ident_error_add(job, sp->ident_type, sp->ident_value, msg);
            free(msg);
        }
    }
}

void
acme_issue_job_fail(acme_issue_t *job, const acme_err_t *err)
{
    acme_err_t e = *err;

    /* the caller reports the failure (once); this is the trail for debugging */
    acme_log(job->loop, ACME_LOG_INFO, "acme: certificate \"%s\" from %s: %s", job->name,
             acme_client_directory_url(job->c), e.msg);
    acme_issue_job_finish(job, &e);
}

void
acme_issue_job_set_state(acme_issue_t *job, job_state_t st, const char *fmt, const char *arg)
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

void
acme_issue_cancel(acme_issue_t *job)
{
    if (job == NULL) {
        return;
    }
    acme_issue_forget_published(job);
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
    acme_issue_job_step(job);
}

void
acme_issue_job_later(acme_issue_t *job, long ms)
{
    job->timer = acme_timer_add(job->loop, ms, timer_cb, job);
    if (job->timer == NULL) {
        acme_err_t e;
        acme_err_set(&e, ACME_ERR_INTERNAL, "out of memory");
        acme_issue_job_fail(job, &e);
    }
}

/* Callbacks from the client: returns 1 when the job may continue, 0 when it failed (freed). */
int
acme_issue_job_back(acme_issue_t *job)
{
    job->busy = 0;
    if (job->lock_lost) {
        acme_err_t e = job->lock_err;
        acme_issue_job_fail(job, &e);
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
        acme_issue_job_fail(job, &err);
        return;
    }
    if (rc < 0) {
        acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": cannot extend the lock's lease: %s", job->name,
                 err.msg);
    }
    /* every third of the lease; every sixth while the store does not answer */
    job->lock_timer = acme_timer_add(job->loop, rc < 0 ? lease / 6 : lease / 3, lock_refresh, job);
}

int
acme_issue_job_post(acme_issue_t *job, const char *url, const char *payload, const char *accept,
    acme_client_resp_pt cb)
{
    acme_err_t err;

    job->busy = 1;
    if (acme_client_post(job->c, url, payload, accept, cb, job, &err) != 0) {
        job->busy = 0;
        acme_issue_job_fail(job, &err);
        return -1;
    }
    return 0;
}

int
acme_issue_require_json(acme_issue_t *job, const acme_http_resp_t *resp, const char *what)
{
    acme_err_t err;

    if (resp->content_type == NULL || strcmp(resp->content_type, "application/json") != 0) {
        acme_err_set(&err, ACME_ERR_BADRESPONSE, "%s: expected application/json, got \"%.60s\"", what,
                     resp->content_type ? resp->content_type : "(none)");
        acme_issue_job_fail(job, &err);
        return -1;
    }
    return 0;
}

#define ISSUE_POLL_RETRY_AFTER_MAX  600L     /* seconds; Boulder asks for a few */

/*
 * Polling: honour Retry-After up to ISSUE_POLL_RETRY_AFTER_MAX and up to the deadline (one last poll
 * there), else back off from 0.1 s to 10 s; give up past the deadline.
 */
void
acme_issue_job_poll_later(acme_issue_t *job, long retry_after, const char *what)
{
    acme_err_t  err;
    long        ms, left;

    if (time(NULL) - job->wait_start > job->poll_timeout) {
        acme_err_set(&err, ACME_ERR_CA, "%s: still not done after %ld s, giving up (order %s)", what,
                     job->poll_timeout, job->order_url ? job->order_url : "not placed");
        acme_issue_job_fail(job, &err);
        return;
    }
    if (retry_after > 0) {
        left = job->wait_start + job->poll_timeout + 1 - time(NULL);
        if (retry_after > ISSUE_POLL_RETRY_AFTER_MAX) {
            retry_after = ISSUE_POLL_RETRY_AFTER_MAX;
        }
        ms = (retry_after < left ? retry_after : left) * 1000;
    } else {
        ms = job->poll_delay_ms;
        job->poll_delay_ms = job->poll_delay_ms * 3 / 2;
        if (job->poll_delay_ms > 10000) {
            job->poll_delay_ms = 10000;
        }
    }
    acme_issue_job_later(job, ms);
}

void
acme_issue_poll_reset(acme_issue_t *job)
{
    job->wait_start = time(NULL);
    job->poll_delay_ms = 100;
}

/* ---- the machine ---- */

static void
ready_done(void *arg, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    int            rc;

    if (!acme_issue_job_back(job)) {
        return;
    }
    if (err != NULL) {
        acme_issue_job_fail(job, err);
        return;
    }
    rc = acme_issue_order_load(job);
    if (rc == 2 && acme_client_account_url(job->c) != NULL) {
        acme_issue_job_set_state(job, J_ORPHAN_ACCOUNT, "looking for an order lost in a crash", NULL);
    } else if (rc == 1) {
        acme_issue_job_set_state(job, J_RESUME, "resuming the order", NULL);
    } else if (rc == 3) {
        acme_issue_job_set_state(job, J_STALE, "giving up the order for the former identifiers", NULL);
    } else {
        acme_issue_job_set_state(job, J_NEW_ORDER, "ordering", NULL);
    }
    acme_issue_job_step(job);
}

static void
cert_key_done(void *arg, EVP_PKEY *key, const acme_err_t *err)
{
    acme_issue_t *job = arg;

    job->keygen = NULL;
    if (err != NULL) {
        acme_err_t e = *err;
        acme_err_prefix(&e, "generating the key for \"%s\"", job->name);
        acme_issue_job_fail(job, &e);
        return;
    }
    job->cert_key = key;
    acme_issue_job_step(job);
}

void
acme_issue_job_step(acme_issue_t *job)
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
            acme_issue_job_fail(job, &err);
        }
        return;

    case J_RESUME:
        acme_issue_job_post(job, job->order_url, NULL, NULL, acme_issue_order_resp);
        return;

    case J_STALE:
        acme_issue_job_post(job, job->order_url, NULL, NULL, acme_issue_stale_order_resp);
        return;

    case J_ORPHAN_ACCOUNT:
        /* POST-as-GET of the account (Pebble and Boulder answer it; Pebble refuses the empty update of
         * RFC 8555 7.3.3); a CA refusing both just leads to a new order */
        acme_issue_job_post(job, acme_client_account_url(job->c), NULL, NULL, acme_issue_orphan_account_resp);
        return;

    case J_ORPHAN_LIST:
        acme_issue_job_post(job, job->order_url, NULL, NULL, acme_issue_orphan_list_resp);
        return;

    case J_ORPHAN_ORDER:
        if (job->cand_i >= job->ncands) {
            acme_issue_orphan_none(job, "no pending order for these identifiers");
            return;
        }
        acme_issue_job_post(job, job->cands[job->cand_i], NULL, NULL, acme_issue_orphan_order_resp);
        return;

    case J_NEW_ORDER:
        if (job->cert_key == NULL) {
            /* off the loop: an RSA key can take seconds */
            job->keygen = acme_keygen_start(job->loop, &job->keyspec, cert_key_done, job, &err);
            if (job->keygen == NULL) {
                acme_issue_job_fail(job, &err);
            }
            return;
        }
        s = acme_issue_new_order_payload(job, &err);
        if (s == NULL) {
            acme_issue_job_fail(job, &err);
            return;
        }
        free(job->order_url);
        job->order_url = NULL;
        if (acme_issue_order_store(job, &err) != 0) {
            free(s);
            acme_err_prefix(&err, "storing the order for \"%s\"", job->name);
            acme_issue_job_fail(job, &err);
            return;
        }
        acme_issue_job_post(job, acme_client_directory(job->c)->new_order, s, NULL, acme_issue_new_order_resp);
        free(s);
        return;

    case J_AUTHZ:
        if (job->authz_i >= job->order.nauthorizations) {
            /* every authorization is valid: finalize at once (RFC 8555 7.4); a CA that has not moved
             * the order to "ready" yet answers orderNotReady and the order is polled then */
            acme_issue_withdraw_all(job);
            job->finalize_early = 1;
            acme_issue_job_set_state(job, J_FINALIZE, "finalizing", NULL);
            acme_issue_job_step(job);
            return;
        }
        acme_issue_job_post(job, job->order.authorizations[job->authz_i], NULL, NULL, acme_issue_authz_resp);
        return;

    case J_AUTHZ_POLL:
        acme_issue_job_post(job, job->order.authorizations[job->authz_i], NULL, NULL, acme_issue_authz_resp);
        return;

    case J_ORDER_READY_POLL:
    case J_ORDER_VALID_POLL:
        acme_issue_job_post(job, job->order_url, NULL, NULL, acme_issue_order_resp);
        return;

    case J_FINALIZE:
        if (job->order.finalize == NULL) {
            acme_err_set(&err, ACME_ERR_BADRESPONSE, "order %s has no finalize URL", job->order_url);
            acme_issue_job_fail(job, &err);
            return;
        }
        csr = acme_csr_create(job->cert_key, job->ids, job->nids,
                              job->csr_no_cn ? ACME_CSR_NO_CN : 0, &err);
        if (csr == NULL) {
            acme_issue_job_fail(job, &err);
            return;
        }
        payload = acme_sprintf("{\"csr\":\"%s\"}", csr);
        free(csr);
        if (payload == NULL) {
            acme_err_set(&err, ACME_ERR_INTERNAL, "out of memory");
            acme_issue_job_fail(job, &err);
            return;
        }
        acme_issue_poll_reset(job);
        acme_issue_job_post(job, job->order.finalize, payload, NULL, acme_issue_finalize_resp);
        free(payload);
        return;

    case J_DOWNLOAD:
        acme_issue_job_post(job, job->order.certificate, NULL, "application/pem-certificate-chain",
                            acme_issue_download_resp);
        return;

    case J_ALTERNATE:
        if (job->alt_i >= job->nalternates) {
            acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": no chain issued by \"%s\", using the default",
                     job->name, job->preferred_chain);
            s = job->chain_pem;
            job->chain_pem = NULL;
            acme_issue_accept_chain(job, s, strlen(s));
            free(s);
            return;
        }
        acme_issue_job_post(job, job->alternates[job->alt_i], NULL, "application/pem-certificate-chain",
                 acme_issue_alternate_resp);
        return;

    case J_ABANDON:
        if (!job->have_order || job->abandon_i >= job->order.nauthorizations) {
            acme_issue_abandon_done(job);
            return;
        }
        acme_issue_abandon_post(job, NULL, acme_issue_abandon_authz_resp);
        return;

    case J_DEACTIVATE:
        acme_issue_abandon_post(job, "{\"status\":\"deactivated\"}", acme_issue_deactivate_resp);
        return;

    case J_DONE:
        acme_issue_job_finish(job, NULL);
        return;

    case J_CONFIRM:
        acme_issue_confirm_step(job);
        return;

    case J_CHALLENGE:
    case J_DNS:
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
        acme_issue_job_fail(job, &err);
        return;
    }
    if (rc == 0) {
        job->issue_lock = NULL;
        if (!job->queued_logged) {
            job->queued_logged = 1;
            acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": another certificate for the same identifiers "
                     "is being ordered, waiting for it", job->name);
        }
        acme_issue_job_set_state(job, J_QUEUE, "waiting for another certificate for the same identifiers", NULL);
        acme_issue_job_later(job, 500);
        return;
    }
    acme_issue_job_set_state(job, J_READY, "starting", NULL);
    acme_issue_job_step(job);
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
    job->csr_no_cn = req->csr_no_cn;
    job->replaces = acme_strdup(req->replaces);
    job->poll_timeout = req->poll_timeout > 0 ? req->poll_timeout : 300;
    job->dns = req->dns;
    for (i = 0; i < job->ntypes; i++) {
        if (job->types[i] == NULL) {
            goto nomem;
        }
        if ((strcmp(job->types[i], "dns-01") == 0 || strcmp(job->types[i], "dns-account-01") == 0)
            && (job->dns == NULL || job->dns->method == ACME_DNS_NONE))
        {
            acme_err_set(err, ACME_ERR_CONFIG, "\"%s\": %s needs a DNS update method", job->name,
                         job->types[i]);
            job_free(job);
            return NULL;
        }
    }
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
    if (job->dns != NULL && job->dns->method != ACME_DNS_NONE && acme_issue_dns_load(job, err) != 0) {
        job_free(job);
        return NULL;
    }
    if (req->check_seen && renewed_elsewhere(job, req->seen_issued_at)) {
        job->state = J_DONE;
        acme_issue_job_later(job, 0);
        return job;
    }
    if (issue_lockname(job, err) != 0) {
        job_free(job);
        return NULL;
    }
    job->state = J_QUEUE;
    acme_issue_job_later(job, 0);
    return job;

nomem:
    acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    job_free(job);
    return NULL;
}
