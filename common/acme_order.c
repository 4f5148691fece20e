/* Orders: newOrder or resuming a stored one, an order lost between newOrder and storing its URL,
 * giving an order up (deactivating its pending authorizations). */
#include "acme_issue_int.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static int job_has_ip(acme_issue_t *job);

int
acme_issue_order_store(acme_issue_t *job, acme_err_t *err)
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

void
acme_issue_order_forget(acme_issue_t *job)
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
int
acme_issue_order_load(acme_issue_t *job)
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

    if (acme_issue_require_json(job, resp, what) != 0) {
        return -1;
    }
    if (job->have_order) {
        acme_order_free(&job->order);
        job->have_order = 0;
    }
    memset(&job->order, 0, sizeof(job->order));
    if (acme_order_parse(resp->body.data, resp->body.len, &job->order, &err) != 0) {
        acme_err_prefix(&err, "%s", what);
        acme_issue_job_fail(job, &err);
        return -1;
    }
    job->have_order = 1;
    return 0;
}

static void
order_invalid(acme_issue_t *job, const char *what)
{
    acme_err_t  err;

    if (job->order.error != NULL) {
        acme_issue_ident_errors_from_problem(job, job->order.error);
        acme_problem_to_err(job->order.error, what, &err);
    } else {
        acme_err_set(&err, ACME_ERR_CA, "%s: the order became %s", what,
                     acme_status_name(job->order.status));
    }
    acme_issue_order_abandon(job, &err);
}

/* ---- responses ---- */

static void
order_dispatch(acme_issue_t *job)
{
    switch (job->order.status) {
    case ACME_ST_PENDING:
        job->authz_i = 0;
        acme_issue_job_set_state(job, J_AUTHZ, "authorizing", NULL);
        acme_issue_job_step(job);
        return;
    case ACME_ST_READY:
        acme_issue_job_set_state(job, J_FINALIZE, "finalizing", NULL);
        acme_issue_job_step(job);
        return;
    case ACME_ST_PROCESSING:
        /* the wait starts now (a resumed order has had no wait yet) */
        acme_issue_poll_reset(job);
        acme_issue_job_set_state(job, J_ORDER_VALID_POLL, "waiting for the CA to issue", NULL);
        acme_issue_job_poll_later(job, 0, "order processing");
        return;
    case ACME_ST_VALID:
        if (job->order.certificate == NULL) {
            acme_err_t err;
            acme_err_set(&err, ACME_ERR_BADRESPONSE, "order %s is valid but has no certificate URL",
                         job->order_url);
            acme_issue_job_fail(job, &err);
            return;
        }
        acme_issue_job_set_state(job, J_DOWNLOAD, "downloading the certificate", NULL);
        acme_issue_job_step(job);
        return;
    default:
        order_invalid(job, "order");
        return;
    }
}

void
acme_issue_new_order_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    acme_err_t     e;

    if (!acme_issue_job_back(job)) {
        return;
    }
    if (err != NULL && strstr(err->msg, "invalidProfile") != NULL) {
        /* the CA no longer takes the profile (the client fetches its directory again): a configuration
         * matter, not a refusal of "replaces" */
        if (job->profile != NULL && !job->profile_dropped && !job->profile_required) {
            acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": the CA refused the profile \"%s\" (%s); "
                     "ordering with the CA's default profile", job->name, job->profile, err->msg);
            job->profile_dropped = 1;
            acme_issue_job_step(job);
            return;
        }
        e = *err;
        e.kind = ACME_ERR_CONFIG;
        acme_err_prefix(&e, "newOrder");
        acme_issue_order_forget(job);
        acme_issue_job_fail(job, &e);
        return;
    }
    if (err != NULL) {
        if (job->replaces != NULL && !job->replaces_dropped && err->http_status >= 500
            && ++job->replaces_5xx < 2)
        {
            /* a CA failing on "replaces" fails the same way again: try it once more, then without */
            acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": newOrder failed (%s), trying again",
                     job->name, err->msg);
            acme_issue_job_later(job, 1000);
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
            acme_issue_job_step(job);
            return;
        }
        e = *err;
        acme_err_prefix(&e, "newOrder");
        if (strstr(err->msg, "rejectedIdentifier") != NULL && job_has_ip(job)) {
            size_t n = strlen(e.msg);

            snprintf(e.msg + n, sizeof(e.msg) - n, " (a CA may issue IP address certificates only under a "
                     "certain profile: Let's Encrypt's is \"shortlived\", see the \"profile\" setting)");
        }
        if (err->kind == ACME_ERR_CA || err->kind == ACME_ERR_RATELIMIT) {
            acme_issue_order_forget(job);      /* refused: no order was made */
        }
        acme_issue_job_fail(job, &e);
        return;
    }
    if (resp->location == NULL || strncmp(resp->location, "http", 4) != 0) {
        acme_err_set(&e, ACME_ERR_BADRESPONSE, "newOrder: no order URL (Location) in the answer");
        acme_issue_job_fail(job, &e);
        return;
    }
    if (order_parse(job, resp, "newOrder") != 0) {
        return;
    }
    if (job->order.nauthorizations == 0 && job->order.status == ACME_ST_PENDING) {
        acme_err_set(&e, ACME_ERR_BADRESPONSE, "newOrder: a pending order with no authorizations");
        acme_issue_job_fail(job, &e);
        return;
    }
    free(job->order_url);
    job->order_url = acme_strdup(resp->location);
    if (acme_issue_order_store(job, &e) != 0) {
        acme_issue_job_fail(job, &e);
        return;
    }
    acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": order %s is %s", job->name, job->order_url,
             acme_status_name(job->order.status));
    order_dispatch(job);
}

void
acme_issue_order_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    acme_err_t     e;

    if (!acme_issue_job_back(job)) {
        return;
    }
    if (err != NULL) {
        if (job->state == J_RESUME && (err->kind == ACME_ERR_CA || err->kind == ACME_ERR_BADRESPONSE)) {
            /* the CA lost or expired the order: start afresh */
            acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": stored order unusable (%s), ordering anew",
                     job->name, err->msg);
            acme_issue_order_forget(job);
            EVP_PKEY_free(job->cert_key);
            job->cert_key = NULL;
            acme_issue_job_set_state(job, J_NEW_ORDER, "ordering", NULL);
            acme_issue_job_step(job);
            return;
        }
        e = *err;
        acme_err_prefix(&e, "order %s", job->order_url);
        acme_issue_job_fail(job, &e);
        return;
    }
    if (order_parse(job, resp, "order") != 0) {
        return;
    }
    switch (job->state) {
    case J_RESUME:
        if (job->order.status == ACME_ST_INVALID || job->order.status == ACME_ST_EXPIRED) {
            acme_issue_order_abandon(job, NULL);
            return;
        }
        acme_log(job->loop, ACME_LOG_NOTICE, "acme: \"%s\": resuming order %s (%s)", job->name,
                 job->order_url, acme_status_name(job->order.status));
        order_dispatch(job);
        return;
    case J_ORDER_READY_POLL:
        if (job->order.status == ACME_ST_PENDING) {
            acme_issue_job_poll_later(job, resp->retry_after, "order authorization");
            return;
        }
        order_dispatch(job);
        return;
    case J_FINALIZE:
    case J_ORDER_VALID_POLL:
        if (job->order.status == ACME_ST_PROCESSING || job->order.status == ACME_ST_READY) {
            acme_issue_job_set_state(job, J_ORDER_VALID_POLL, "waiting for the CA to issue", NULL);
            acme_issue_job_poll_later(job, resp->retry_after, "order processing");
            return;
        }
        if (job->order.status == ACME_ST_PENDING) {
            acme_err_set(&e, ACME_ERR_BADRESPONSE, "order %s went back to pending after finalize",
                         job->order_url);
            acme_issue_job_fail(job, &e);
            return;
        }
        order_dispatch(job);
        return;
    default:
        order_dispatch(job);
        return;
    }
}

/* ---- giving an order up ---- */

/* The order is forgotten (the next try places a new one) and its pending authorizations are deactivated
 * (RFC 8555 7.5.2): nobody can complete them any more, and they stop counting against the account's
 * limit of pending authorizations. err: the job fails with it afterwards; NULL: it orders anew. */
void
acme_issue_order_abandon(acme_issue_t *job, const acme_err_t *err)
{
    acme_issue_order_forget(job);
    acme_issue_withdraw_all(job);
    job->abandon_fail = err != NULL;
    if (err != NULL) {
        job->abandon_err = *err;
    }
    job->abandon_i = 0;
    /* ready, processing and valid orders have every authorization valid already */
    if (!job->have_order || (job->order.status != ACME_ST_PENDING && job->order.status != ACME_ST_INVALID)) {
        job->abandon_i = job->have_order ? job->order.nauthorizations : 0;
    }
    acme_issue_job_set_state(job, J_ABANDON, "giving the order up", NULL);
    acme_issue_job_step(job);
}

void
acme_issue_abandon_done(acme_issue_t *job)
{
    acme_err_t  e;

    if (job->abandon_fail) {
        e = job->abandon_err;
        acme_issue_job_fail(job, &e);
        return;
    }
    EVP_PKEY_free(job->cert_key);
    job->cert_key = NULL;
    free(job->order_url);
    job->order_url = NULL;
    acme_issue_job_set_state(job, J_NEW_ORDER, "ordering", NULL);
    acme_issue_job_step(job);
}

static void
abandon_next(acme_issue_t *job)
{
    job->abandon_i++;
    acme_issue_job_set_state(job, J_ABANDON, "giving the order up", NULL);
    acme_issue_job_step(job);
}

void
acme_issue_abandon_authz_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    acme_authz_t   a;
    acme_err_t     e;
    int            pending = 0;

    if (!acme_issue_job_back(job)) {
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
        acme_issue_job_set_state(job, J_DEACTIVATE, "giving the order up", NULL);
        acme_issue_job_step(job);
        return;
    }
    abandon_next(job);
}

void
acme_issue_deactivate_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    const char    *url;

    (void) resp;
    if (!acme_issue_job_back(job)) {
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
void
acme_issue_abandon_post(acme_issue_t *job, const char *payload, acme_client_resp_pt cb)
{
    acme_err_t  err;

    job->busy = 1;
    if (acme_client_post(job->c, job->order.authorizations[job->abandon_i], payload, NULL, cb, job, &err)
        != 0)
    {
        job->busy = 0;
        acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": cannot deactivate the authorizations of the "
                 "abandoned order: %s", job->name, err.msg);
        acme_issue_abandon_done(job);
    }
}

/* The stored order was for identifiers no longer configured: give it up, then order anew. */
void
acme_issue_stale_order_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    acme_err_t     e;

    if (!acme_issue_job_back(job)) {
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
    acme_issue_order_abandon(job, NULL);
}

#define ISSUE_IP_PROFILE  "shortlived"

static int
job_has_ip(acme_issue_t *job)
{
    size_t i;

    for (i = 0; i < job->nids; i++) {
        if (job->ids[i].type == ACME_IDENT_IP) {
            return 1;
        }
    }
    return 0;
}

char *
acme_issue_new_order_payload(acme_issue_t *job, acme_err_t *err)
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
    if (job->profile == NULL && job_has_ip(job) && acme_directory_has_profile(dir, ISSUE_IP_PROFILE)) {
        /* Let's Encrypt issues IP address certificates only under "shortlived" */
        acme_log(job->loop, ACME_LOG_NOTICE, "acme: \"%s\" has an IP address and no profile is configured: "
                 "ordering the CA's \"%s\" profile", job->name, ISSUE_IP_PROFILE);
        job->profile = acme_strdup(ISSUE_IP_PROFILE);
    }
    if (job->profile != NULL && !job->profile_dropped) {
        if (dir->nprofiles > 0 && !acme_directory_has_profile(dir, job->profile)) {
            if (job->profile_required) {
                acme_err_set(err, ACME_ERR_CONFIG, "the CA %s does not offer the profile \"%s\", which is "
                             "required", acme_client_directory_url(job->c), job->profile);
                json_decref(o);
                return NULL;
            }
            /* dropped or renamed by the CA: renewals go on with its default */
            acme_log(job->loop, ACME_LOG_WARN, "acme: the CA %s does not offer the profile \"%s\" (any "
                     "more); ordering \"%s\" with the CA's default profile", acme_client_directory_url(job->c),
                     job->profile, job->name);
            job->profile_dropped = 1;
        }
    }
    if (job->profile != NULL && !job->profile_dropped) {
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

void
acme_issue_orphan_none(acme_issue_t *job, const char *why)
{
    acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": no order to resume (%s), ordering anew", job->name, why);
    free(job->order_url);
    job->order_url = NULL;
    acme_issue_job_set_state(job, J_NEW_ORDER, "ordering", NULL);
    acme_issue_job_step(job);
}

/* The CA's answer while looking for the order, parsed; NULL when the search is over (the job failed or
 * orders anew). */
static json_t *
orphan_answer(acme_issue_t *job, const acme_http_resp_t *resp, const acme_err_t *err)
{
    json_t  *o;

    if (!acme_issue_job_back(job)) {
        return NULL;
    }
    if (err != NULL) {
        acme_issue_orphan_none(job, err->msg);
        return NULL;
    }
    o = json_loadb(resp->body.data, resp->body.len, 0, NULL);
    if (o == NULL) {
        acme_issue_orphan_none(job, "the CA's answer is not JSON");
    }
    return o;
}

void
acme_issue_orphan_account_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
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
        acme_issue_orphan_none(job, "the CA does not list the account's orders");
        return;
    }
    free(job->order_url);
    job->order_url = acme_strdup(orders);     /* the list, until an order is chosen */
    json_decref(o);
    acme_issue_job_set_state(job, J_ORPHAN_LIST, "looking for an order lost in a crash", NULL);
    acme_issue_job_step(job);
}

void
acme_issue_orphan_list_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
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
    acme_issue_job_set_state(job, J_ORPHAN_ORDER, "looking for an order lost in a crash", NULL);
    acme_issue_job_step(job);
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

void
acme_issue_orphan_order_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    acme_err_t     e;

    if (!acme_issue_job_back(job)) {
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
                if (job->order_url == NULL || acme_issue_order_store(job, &e) != 0) {
                    acme_err_prefix(&e, "storing the order for \"%s\"", job->name);
                    acme_issue_job_fail(job, &e);
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
    acme_issue_job_step(job);
}
