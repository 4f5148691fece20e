/* Certificate download: the default chain, alternate chains for a preferred issuer, and the checks
 * before the certificate is stored. */
#include "acme_issue_int.h"

#include "acme_x509.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
    /* dns-persist-01 records that pass before this certificate is renewed: logged, kept for the status */
    acme_issue_persist_judge(job, info.not_after);
    m.persist_notes = job->persist_all;
    m.npersist_notes = job->npersist_all;

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
void
acme_issue_accept_chain(acme_issue_t *job, const char *pem, size_t len)
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
            acme_issue_order_abandon(job, NULL);
            return;
        }
        acme_issue_order_abandon(job, &e);
        return;
    }
    if (store_certificate(job, pem, len, chain, &e) != 0) {
        acme_chain_free(chain);
        acme_err_prefix(&e, "storing the certificate");
        acme_issue_job_fail(job, &e);
        return;
    }
    acme_chain_free(chain);
    acme_log(job->loop, ACME_LOG_NOTICE, "acme: \"%s\": certificate issued by %s and stored", job->name,
             acme_client_directory_url(job->c));
    acme_issue_job_finish(job, NULL);
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
        acme_issue_job_fail(job, &e);
        return -1;
    }
    return 0;
}

void
acme_issue_alternate_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t *job = arg;

    if (!acme_issue_job_back(job)) {
        return;
    }
    if (err == NULL && resp->content_type != NULL
        && strcmp(resp->content_type, "application/pem-certificate-chain") == 0
        && pem_matches_preferred(resp->body.data, resp->body.len, job->preferred_chain))
    {
        acme_log(job->loop, ACME_LOG_INFO, "acme: \"%s\": using the alternate chain by \"%s\"", job->name,
                 job->preferred_chain);
        acme_issue_accept_chain(job, resp->body.data, resp->body.len);
        return;
    }
    job->alt_i++;
    acme_issue_job_step(job);
}

void
acme_issue_download_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    acme_err_t     e;
    size_t         i;

    if (!acme_issue_job_back(job)) {
        return;
    }
    if (err != NULL) {
        e = *err;
        acme_err_prefix(&e, "certificate download");
        acme_issue_job_fail(job, &e);
        return;
    }
    if (require_pem(job, resp) != 0) {
        return;
    }
    if (job->preferred_chain == NULL
        || pem_matches_preferred(resp->body.data, resp->body.len, job->preferred_chain))
    {
        acme_issue_accept_chain(job, resp->body.data, resp->body.len);
        return;
    }
    if (resp->nalternate == 0) {
        acme_log(job->loop, ACME_LOG_WARN, "acme: \"%s\": no chain issued by \"%s\", using the default "
                 "(the CA offers no alternate chains)", job->name, job->preferred_chain);
        acme_issue_accept_chain(job, resp->body.data, resp->body.len);
        return;
    }
    job->chain_pem = acme_strndup(resp->body.data, resp->body.len);
    job->alternates = calloc(resp->nalternate, sizeof(char *));
    if (job->chain_pem == NULL || job->alternates == NULL) {
        acme_err_set(&e, ACME_ERR_INTERNAL, "out of memory");
        acme_issue_job_fail(job, &e);
        return;
    }
    for (i = 0; i < resp->nalternate; i++) {
        job->alternates[i] = acme_strdup(resp->links_alternate[i]);
    }
    job->nalternates = resp->nalternate;
    job->alt_i = 0;
    acme_issue_job_set_state(job, J_ALTERNATE, "choosing the preferred chain", NULL);
    acme_issue_job_step(job);
}
