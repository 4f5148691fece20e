/* Finalize: the CA's answer to the CSR (the request itself is sent by the step dispatcher). */
#include "acme_issue_int.h"

#include <string.h>

void
acme_issue_finalize_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_issue_t  *job = arg;
    acme_err_t     e;

    if (!acme_issue_job_back(job)) {
        return;
    }
    if (err != NULL && job->finalize_early && err->kind == ACME_ERR_CA
        && strstr(err->msg, "orderNotReady") != NULL)
    {
        job->finalize_early = 0;
        acme_issue_job_set_state(job, J_ORDER_READY_POLL, "waiting for the order to be ready", NULL);
        acme_issue_poll_reset(job);
        acme_issue_job_poll_later(job, err->retry_after, "order");
        return;
    }
    job->finalize_early = 0;
    if (err != NULL) {
        e = *err;
        if (strstr(err->msg, "invalidProfile") != NULL) {
            /* the profile went away while the order was open: the next order falls back (or, when
             * required, says so) once the client has the CA's new directory */
            e.kind = ACME_ERR_CONFIG;
        }
        acme_err_prefix(&e, "finalize");
        if (err->kind == ACME_ERR_CA) {
            acme_issue_order_forget(job);
        }
        acme_issue_job_fail(job, &e);
        return;
    }
    acme_issue_poll_reset(job);
    acme_issue_order_resp(job, resp, NULL);
}
