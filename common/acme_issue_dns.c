/*
 * A job's DNS challenges: the TXT records it published, kept in the store (certs/<name>/dns-pending.json)
 * from before the update until they are removed, so a process that dies leaves them to the next job for
 * the certificate; publishing off the loop (acme_dns_task); removal when the job ends, failed or not.
 */
#include "acme_issue_int.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static char *
pending_key(acme_issue_t *job)
{
    return acme_sprintf("certs/%s/dns-pending.json", job->name);
}

static int
pending_save(acme_issue_t *job, acme_err_t *err)
{
    json_t  *a = json_array(), *o;
    char    *key = pending_key(job), *text = NULL;
    size_t   i;
    int      rc = -1;

    for (i = 0; a != NULL && i < job->ndns_recs; i++) {
        o = json_pack("{s:s, s:s}", "name", job->dns_recs[i].name, "value", job->dns_recs[i].value);
        if (o != NULL && job->dns_recs[i].ident != NULL) {
            json_object_set_new(o, "identifier", json_string(job->dns_recs[i].ident));
        }
        if (o != NULL && job->dns_recs[i].type != NULL) {
            json_object_set_new(o, "type", json_string(job->dns_recs[i].type));
        }
        if (o == NULL || json_array_append_new(a, o) != 0) {
            json_decref(a);
            a = NULL;
        }
    }
    if (a != NULL && key != NULL) {
        text = json_dumps(a, JSON_COMPACT);
    }
    if (text == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    } else if (job->ndns_recs == 0) {
        rc = acme_store_del(job->store, key, err);
    } else {
        rc = acme_store_put(job->store, key, text, strlen(text), 0, err);
    }
    if (rc != 0) {
        acme_err_prefix(err, "recording the DNS records of \"%s\" for their removal", job->name);
    }
    free(text);
    free(key);
    json_decref(a);
    return rc;
}

static int
rec_add(acme_issue_t *job, const char *name, const char *value, const char *ident, const char *type)
{
    acme_dns_record_t  *r;
    size_t              i;

    for (i = 0; i < job->ndns_recs; i++) {
        if (strcmp(job->dns_recs[i].name, name) == 0 && strcmp(job->dns_recs[i].value, value) == 0) {
            return 0;
        }
    }
    r = realloc(job->dns_recs, (job->ndns_recs + 1) * sizeof(*r));
    if (r == NULL) {
        return -1;
    }
    job->dns_recs = r;
    r = &r[job->ndns_recs];
    memset(r, 0, sizeof(*r));
    r->name = acme_strdup(name);
    r->value = acme_strdup(value);
    r->ident = ident != NULL ? acme_strdup(ident) : NULL;
    r->cert = acme_strdup(job->name);
    r->type = type != NULL ? acme_strdup(type) : NULL;
    if (r->name == NULL || r->value == NULL || r->cert == NULL || (ident != NULL && r->ident == NULL)
        || (type != NULL && r->type == NULL))
    {
        acme_dns_record_clear(r);
        return -1;
    }
    job->ndns_recs++;
    return 0;
}

void
acme_issue_dns_free(acme_issue_t *job)
{
    size_t i;

    acme_dns_task_cancel(job->dns_task);
    job->dns_task = NULL;
    for (i = 0; i < job->ndns_recs; i++) {
        acme_dns_record_clear(&job->dns_recs[i]);
    }
    free(job->dns_recs);
    job->dns_recs = NULL;
    job->ndns_recs = 0;
    free(job->persist_name);
    free(job->persist_value);
    job->persist_name = NULL;
    job->persist_value = NULL;
}

/* Records a process that died left: this job removes them when it ends (or republishes the same). */
int
acme_issue_dns_load(acme_issue_t *job, acme_err_t *err)
{
    char          *key = pending_key(job), *data = NULL;
    size_t         len, i;
    json_t        *a, *o;
    json_error_t   je;
    int            rc;

    if (key == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    rc = acme_store_get(job->store, key, &data, &len, err);
    free(key);
    if (rc != 0) {
        return rc > 0 ? 0 : -1;
    }
    a = json_loadb(data, len, 0, &je);
    free(data);
    if (!json_is_array(a)) {
        json_decref(a);
        acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": ignoring an unreadable dns-pending.json", job->name);
        return 0;
    }
    json_array_foreach(a, i, o) {
        const char *n = json_string_value(json_object_get(o, "name"));
        const char *v = json_string_value(json_object_get(o, "value"));
        const char *id = json_string_value(json_object_get(o, "identifier"));
        const char *ty = json_string_value(json_object_get(o, "type"));
        if (n != NULL && v != NULL && rec_add(job, n, v, id, ty) != 0) {
            json_decref(a);
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            return -1;
        }
    }
    json_decref(a);
    if (job->ndns_recs > 0) {
        acme_log(job->loop, ACME_LOG_NOTICE, "acme: \"%s\": %zu DNS record(s) left by an earlier run will be "
                 "removed when this issuance ends", job->name, job->ndns_recs);
    }
    return 0;
}

static void
publish_done(void *arg, const acme_err_t *err, const acme_dns_result_t *res)
{
    acme_issue_t  *job = arg;
    acme_err_t     e;

    (void) res;
    job->dns_task = NULL;
    if (err != NULL) {
        e = *err;
        acme_err_prefix(&e, "%s (%s) for %s", job->dns_type, acme_dns_method_name(job->dns->method),
                        job->dns_ident);
        acme_issue_ident_error_add(job, "dns", job->dns_ident, e.msg);
        acme_issue_job_fail(job, &e);
        return;
    }
    acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": the %s record for %s is on every authoritative "
             "server", job->name, job->dns_type, job->dns_ident);
    acme_issue_challenge_post(job);
}

int
acme_issue_dns_publish(acme_issue_t *job, const char *type, const char *domain, int wildcard,
    const char *key_authz, acme_err_t *err)
{
    acme_dns_record_t  rec;
    const char        *acct = acme_client_account_url(job->c);

    memset(&rec, 0, sizeof(rec));
    snprintf(job->dns_type, sizeof(job->dns_type), "%s", type);
    if (strcmp(type, "dns-account-01") == 0) {
        if (acct == NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "dns-account-01 needs the account's URL");
            return -1;
        }
        rec.name = acme_dns_account01_name(domain, acct);
    } else {
        rec.name = acme_dns01_name(domain);
    }
    rec.type = job->dns_type;
    rec.value = acme_dns01_value(key_authz);
    snprintf(job->dns_ident, sizeof(job->dns_ident), "%s%s", wildcard ? "*." : "", domain);
    rec.ident = job->dns_ident;
    rec.cert = job->name;
    if (rec.name == NULL || rec.value == NULL || rec_add(job, rec.name, rec.value, rec.ident, rec.type) != 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto fail;
    }
    /* recorded before the update: a crash after it leaves the record to the next run's cleanup */
    if (pending_save(job, err) != 0) {
        goto fail;
    }
    job->dns_task = acme_dns_task_start(job->loop, job->dns, 1, &rec, 1, publish_done, job, err);
    if (job->dns_task == NULL) {
        goto fail;
    }
    acme_issue_job_set_state(job, J_DNS, "publishing the DNS record for %s", job->dns_ident);
    free(rec.name);
    free(rec.value);
    return 0;
fail:
    free(rec.name);
    free(rec.value);
    return -1;
}

static void
cleanup_done(void *arg, const acme_err_t *err, const acme_dns_result_t *res)
{
    acme_issue_t  *job = arg;
    acme_err_t     e;

    (void) res;
    job->dns_task = NULL;
    if (err != NULL) {
        /* kept in the store: the next run tries again */
        acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": removing its DNS records (%s): %s", job->name,
                 acme_dns_method_name(job->dns->method), err->msg);
    } else {
        acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": removed %zu DNS record(s)", job->name,
                 job->ndns_recs);
        acme_issue_dns_free(job);
        if (pending_save(job, &e) != 0) {
            acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": %s", job->name, e.msg);
        }
    }
    e = job->dns_finish_err;
    acme_issue_job_finish(job, job->dns_finish_failed ? &e : NULL);
}

/* 1: the records are being removed, and acme_issue_job_finish is called again afterwards. */
int
acme_issue_dns_cleanup(acme_issue_t *job, const acme_err_t *err)
{
    acme_err_t  e;

    if (job->dns == NULL || job->ndns_recs == 0 || job->dns_finishing) {
        return 0;
    }
    job->dns_finishing = 1;
    job->dns_finish_failed = err != NULL;
    if (err != NULL) {
        job->dns_finish_err = *err;
    }
    acme_dns_task_cancel(job->dns_task);
    job->dns_task = acme_dns_task_start(job->loop, job->dns, 0, job->dns_recs, job->ndns_recs, cleanup_done,
                                        job, &e);
    if (job->dns_task == NULL) {
        acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": removing its DNS records: %s", job->name, e.msg);
        return 0;
    }
    acme_issue_job_set_state(job, J_DNS, "removing its DNS records", NULL);
    return 1;
}

/* ---- dns-persist-01 ---- */

/* The latest check of an identifier's record replaces an earlier one of the same job. */
static void
persist_note(acme_issue_t *job, const acme_dns_result_t *res)
{
    acme_persist_note_t  *n = NULL;
    char                 *ident = acme_sprintf("dns:%s", job->dns_ident);
    size_t                i;

    for (i = 0; ident != NULL && i < job->npersist_notes; i++) {
        if (strcmp(job->persist_notes[i].ident, ident) == 0) {
            n = &job->persist_notes[i];
            free(n->ident);
            free(n->record_name);
            free(n->record_value);
            free(n->warning);
            break;
        }
    }
    if (ident != NULL && n == NULL) {
        n = realloc(job->persist_notes, (job->npersist_notes + 1) * sizeof(*n));
        if (n != NULL) {
            job->persist_notes = n;
            n = &n[job->npersist_notes++];
        }
    }
    if (n == NULL) {
        free(ident);
        return;     /* out of memory: no warning this time */
    }
    memset(n, 0, sizeof(*n));
    n->ident = ident;
    n->record_name = acme_strdup(job->persist_name);
    n->record_value = res != NULL && res->persist_txt != NULL ? acme_strdup(res->persist_txt) : NULL;
    n->until = res != NULL ? (time_t) res->persist_until : 0;
    n->at = time(NULL);
}

void
acme_issue_persist_judge(acme_issue_t *job, time_t not_after)
{
    acme_certmeta_t       old;
    acme_persist_note_t  *all;
    size_t                i, nall, fresh = 0;
    int                   have, keep;

    if (job->persist_judged || job->npersist_notes == 0) {
        return;
    }
    job->persist_judged = 1;
    memset(&old, 0, sizeof(old));
    have = acme_store_meta_load(job->store, job->name, &old, NULL) == 0;
    if (not_after == 0 && have) {
        not_after = old.not_after;
    }
    for (i = 0; i < job->npersist_notes; i++) {
        if (acme_persist_judge(&job->persist_notes[i], job->name, not_after, time(NULL)) == 1) {
            /* once per check: this job's */
            acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": %s", job->name, job->persist_notes[i].warning);
            fresh++;
        }
    }
    /* the notes of another CA's certificate are on records this one's renewal does not need */
    keep = have && acme_persist_notes_concern(&old, acme_client_directory_url(job->c));
    if (acme_persist_notes_merge(keep ? old.persist_notes : NULL, keep ? old.npersist_notes : 0,
                                 job->persist_notes, job->npersist_notes, job->ids, job->nids, &all, &nall)
        == 0)
    {
        job->persist_all = all;
        job->npersist_all = nall;
        job->npersist_fresh = fresh;
    }
    if (have) {
        acme_certmeta_free(&old);
    }
}

static void
persist_done(void *arg, const acme_err_t *err, const acme_dns_result_t *res)
{
    acme_issue_t  *job = arg;
    acme_err_t     e;

    job->dns_task = NULL;
    persist_note(job, err == NULL ? res : NULL);
    if (err != NULL) {
        /* the challenge is not posted: no failed validation at the CA; the job is retried later */
        e = *err;
        acme_err_prefix(&e, "dns-persist-01 for %s", job->dns_ident);
        acme_issue_ident_error_add(job, "dns", job->dns_ident, e.msg);
        /* the record to create, apart from the message, for the status */
        acme_issue_ident_error_record(job, "dns", job->dns_ident, job->persist_name, job->persist_value);
        acme_log(job->loop, ACME_LOG_ERR, "acme: \"%s\": %s", job->name, e.msg);
        acme_issue_job_fail(job, &e);
        return;
    }
    acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": the dns-persist-01 record for %s authorizes this "
             "account", job->name, job->dns_ident);
    acme_issue_challenge_post(job);
}

int
acme_issue_dns_persist(acme_issue_t *job, const acme_authz_t *a, const acme_challenge_t *c, acme_err_t *err)
{
    static const acme_dns_config_t  system_resolver;    /* no publisher: /etc/resolv.conf */
    acme_dns_record_t               rec;
    const char                     *acct;
    size_t                          i, len = 1;
    int                             rc = -1;

    memset(&rec, 0, sizeof(rec));
    /* the account URL as the CA will compare it: the challenge's accounturi, else ours */
    acct = c->accounturi != NULL ? c->accounturi : acme_client_account_url(job->c);
    snprintf(job->dns_ident, sizeof(job->dns_ident), "%s%s", a->wildcard ? "*." : "", a->identifier.value);
    snprintf(job->dns_type, sizeof(job->dns_type), "dns-persist-01");
    if (acct == NULL || c->nissuer_domain_names == 0) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "the dns-persist-01 challenge for %s has no %s", job->dns_ident,
                     acct == NULL ? "accounturi" : "issuer-domain-names");
        return -1;
    }
    for (i = 0; i < c->nissuer_domain_names; i++) {
        len += strlen(c->issuer_domain_names[i]) + 1;
    }
    rec.issuers = calloc(1, len);
    rec.name = acme_dns_persist_name(a->identifier.value);
    if (rec.issuers == NULL || rec.name == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }
    for (i = 0; i < c->nissuer_domain_names; i++) {
        strcat(rec.issuers, i ? " " : "");
        strcat(rec.issuers, c->issuer_domain_names[i]);
    }
    rec.value = (char *) acct;
    rec.ident = job->dns_ident;
    rec.cert = job->name;
    rec.type = job->dns_type;
    free(job->persist_name);
    free(job->persist_value);
    job->persist_name = acme_strdup(rec.name);
    job->persist_value = acme_dns_persist_value(c->issuer_domain_names[0], acct, a->wildcard, 0);
    job->dns_task = acme_dns_task_start(job->loop, job->dns != NULL ? job->dns : &system_resolver, 1, &rec, 1,
                                        persist_done, job, err);
    if (job->dns_task == NULL) {
        goto done;
    }
    acme_issue_job_set_state(job, J_DNS, "checking the dns-persist-01 record of %s", job->dns_ident);
    rc = 0;
done:
    free(rec.issuers);
    free(rec.name);
    return rc;
}
