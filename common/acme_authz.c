/* Authorizations and challenges: choosing a type, publishing and withdrawing answers (counted per
 * thread), waiting for other nodes, telling the CA to validate, polling, identifier problems. */
#include "acme_issue_int.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ISSUE_CONFIRM_MS  3000

static int publish(acme_issue_t *job, const char *type, const acme_ident_t *id, const char *token,
                   acme_err_t *err);
static void challenge_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);

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

void
acme_issue_withdraw_all(acme_issue_t *job)
{
    published_clear(job, 1);
}

/* Forget what we published without withdrawing it: the CA may be validating right now, and the
 * process that resumes the stored order answers with the same tokens (and withdraws them). */
void
acme_issue_forget_published(acme_issue_t *job)
{
    published_clear(job, 0);
}

static int
dns_type(const char *type)
{
    return strncmp(type, "dns-", 4) == 0;
}

/* The first configured type the CA offers for this identifier; a wildcard only validates through DNS. */
static const char *
choose_type(acme_issue_t *job, acme_authz_t *a, acme_challenge_t **out)
{
    size_t             i;
    acme_challenge_t  *c;

    for (i = 0; i < job->ntypes; i++) {
        if (a->wildcard && !dns_type(job->types[i])) {
            continue;
        }
        c = acme_authz_challenge(a, job->types[i]);
        /* dns-persist-01 has no token */
        if (c != NULL && (c->token != NULL || strcmp(job->types[i], "dns-persist-01") == 0) && c->url != NULL) {
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

static int
dns_publish(acme_issue_t *job, const char *type, acme_authz_t *a, const char *token, acme_err_t *err)
{
    char  *thumb, *ka;
    int    rc;

    thumb = acme_jwk_thumbprint(acme_client_account_key(job->c), err);
    if (thumb == NULL) {
        return -1;
    }
    ka = acme_sprintf("%s.%s", token, thumb);
    free(thumb);
    if (ka == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    rc = acme_issue_dns_publish(job, type, a->identifier.value, a->wildcard, ka, err);
    free(ka);
    return rc;
}

/* The answer is in place: tell the CA to validate. */
void
acme_issue_challenge_post(acme_issue_t *job)
{
    acme_issue_job_set_state(job, J_CHALLENGE, "validating", NULL);
    acme_issue_job_post(job, job->chall_url, "{}", NULL, challenge_resp);
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
        acme_issue_ident_error_add(job, acme_ident_type_name(a->identifier.type), a->identifier.value, msg ? msg : fb);
        free(msg);
        if (c != NULL) {
            acme_issue_ident_errors_from_problem(job, c->error);
        }
    }
    acme_issue_order_abandon(job, &err);
}

static long long
now_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The last published challenge: every node that got its announcement has acknowledged it, or the time
 * is up (a node that does not answer in time is one the CA may find unready; the others are). */
void
acme_issue_confirm_step(acme_issue_t *job)
{
    published_t  *p = &job->published[job->npublished - 1];
    long          n = 0;
    long long     waited;
    acme_err_t    e;
    int           rc;

    rc = acme_store_challenge_acks(job->store, p->type, p->key, &n, &e);
    waited = now_ms() - job->confirm_start;
    if (rc == 0 && n < job->confirm_n && waited < ISSUE_CONFIRM_MS) {
        acme_issue_job_later(job, waited < 100 ? 5 : 25);
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
    acme_issue_job_set_state(job, J_CHALLENGE, "validating", NULL);
    acme_issue_job_post(job, job->chall_url, "{}", NULL, challenge_resp);
}

static void
challenge_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t *job = arg;
    acme_err_t    e;

    (void) resp;
    if (!acme_issue_job_back(job)) {
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
        acme_issue_job_fail(job, &e);
        return;
    }
    acme_issue_job_set_state(job, J_AUTHZ_POLL, "waiting for validation", NULL);
    acme_issue_poll_reset(job);
    acme_issue_job_later(job, 50);
}

void
acme_issue_authz_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t      *job = arg;
    acme_authz_t       a;
    acme_challenge_t  *c = NULL, *ci;
    const char        *type;
    acme_err_t         e;
    size_t             i;
    char              *payload = "{}";

    if (!acme_issue_job_back(job)) {
        return;
    }
    if (err != NULL) {
        e = *err;
        acme_err_prefix(&e, "authorization %s", job->order.authorizations[job->authz_i]);
        acme_issue_job_fail(job, &e);
        return;
    }
    if (acme_issue_require_json(job, resp, "authorization") != 0) {
        return;
    }
    memset(&a, 0, sizeof(a));
    if (acme_authz_parse(resp->body.data, resp->body.len, &a, &e) != 0) {
        acme_err_prefix(&e, "authorization %s", job->order.authorizations[job->authz_i]);
        acme_issue_job_fail(job, &e);
        return;
    }

    switch (a.status) {
    case ACME_ST_VALID:
        acme_authz_free(&a);
        job->authz_i++;
        acme_issue_job_set_state(job, J_AUTHZ, "authorizing", NULL);
        acme_issue_job_step(job);
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
            acme_issue_job_poll_later(job, resp->retry_after, "authorization");
            return;
        }
        type = choose_type(job, &a, &c);
        if (type == NULL && a.wildcard) {
            for (i = 0; i < job->ntypes && !dns_type(job->types[i]); i++) {
                /* void */
            }
            acme_err_set(&e, ACME_ERR_CONFIG, "*.%s: a wildcard needs a DNS challenge (dns-01), %s",
                         a.identifier.value, i < job->ntypes ? "which the CA does not offer"
                         : "and none is configured");
            acme_authz_free(&a);
            acme_issue_order_abandon(job, &e);
            return;
        }
        if (type == NULL) {
            acme_err_set(&e, ACME_ERR_CA, "%s %s: the CA offers none of the configured challenge types",
                         acme_ident_type_name(a.identifier.type), a.identifier.value);
            acme_authz_free(&a);
            acme_issue_order_abandon(job, &e);
            return;
        }
        if (c->status == ACME_ST_PROCESSING || c->status == ACME_ST_VALID) {
            payload = NULL;     /* already triggered (a resumed order): just wait */
        }
        if (strcmp(type, "dns-persist-01") == 0 && payload != NULL) {
            free(job->chall_url);
            job->chall_url = acme_strdup(c->url);
            if (acme_issue_dns_persist(job, &a, c, &e) != 0) {
                acme_err_prefix(&e, "checking the dns-persist-01 record for %s%s", a.wildcard ? "*." : "",
                                a.identifier.value);
                acme_authz_free(&a);
                acme_issue_job_fail(job, &e);
                return;
            }
            acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": answering dns-persist-01 for %s%s (its record "
                     "checked first)", job->name, a.wildcard ? "*." : "", a.identifier.value);
            acme_authz_free(&a);
            return;
        }
        if (dns_type(type) && payload != NULL) {
            free(job->chall_url);
            job->chall_url = acme_strdup(c->url);
            if (dns_publish(job, type, &a, c->token, &e) != 0) {
                acme_err_prefix(&e, "publishing the %s challenge for %s%s", type, a.wildcard ? "*." : "",
                                a.identifier.value);
                acme_authz_free(&a);
                acme_issue_job_fail(job, &e);
                return;
            }
            acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": answering %s for %s%s (%s)", job->name, type,
                     a.wildcard ? "*." : "", a.identifier.value, acme_dns_method_name(job->dns->method));
            acme_authz_free(&a);
            return;
        }
        if (dns_type(type)) {
            /* a resumed order: the record is still there (the next removal takes it) */
            free(job->chall_url);
            job->chall_url = acme_strdup(c->url);
            acme_authz_free(&a);
            acme_issue_job_set_state(job, J_AUTHZ_POLL, "waiting for validation", NULL);
            acme_issue_poll_reset(job);
            acme_issue_job_later(job, 200);
            return;
        }
        if (publish(job, type, &a.identifier, c->token, &e) != 0) {
            acme_err_prefix(&e, "publishing the %s challenge for %s", type, a.identifier.value);
            acme_authz_free(&a);
            acme_issue_job_fail(job, &e);
            return;
        }
        acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": answering %s for %s", job->name, type,
                 a.identifier.value);
        free(job->chall_url);
        job->chall_url = acme_strdup(c->url);
        acme_authz_free(&a);
        if (payload != NULL && job->confirm_n > 0) {
            acme_issue_job_set_state(job, J_CONFIRM, "waiting for the cluster's nodes to take the challenge", NULL);
            job->confirm_start = now_ms();
            acme_issue_job_step(job);
            return;
        }
        acme_issue_job_set_state(job, J_CHALLENGE, "validating", NULL);
        if (payload == NULL) {
            acme_issue_job_set_state(job, J_AUTHZ_POLL, "waiting for validation", NULL);
            acme_issue_poll_reset(job);
            acme_issue_job_later(job, 200);
            return;
        }
        acme_issue_job_post(job, job->chall_url, payload, NULL, challenge_resp);
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
