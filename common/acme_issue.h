/*
 * Issuance: the order state machine (RFC 8555 7.4) for one certificate, from newOrder through
 * authorizations, challenges, finalize and download to a checked certificate in the store. Resumes an
 * order left in the store by a process that died. Holds the certificate's store lock while it runs.
 */
#ifndef ACME_ISSUE_H
#define ACME_ISSUE_H

#include <time.h>
#include "acme_client.h"
#include "acme_dns.h"
#include "acme_ident.h"
#include "acme_key.h"
#include "acme_store.h"

typedef struct {
    const char          *name;              /* certs/<name>; NULL: acme_cert_name(ids, keyspec) */
    const acme_ident_t  *ids;
    size_t               nids;
    acme_keyspec_t       keyspec;
    const char *const   *challenge_types;   /* preference order; NULL: {"http-01", "tls-alpn-01"};
                                               a wildcard takes the first DNS type ("dns-01") of them */
    size_t               nchallenge_types;
    const acme_dns_config_t *dns;           /* how dns-01 records are published (needed by "dns-01");
                                               the caller's, alive as long as the job */
    const char          *profile;           /* optional */
    int                  profile_required;  /* fail when the CA does not offer it */
    const char          *preferred_chain;   /* issuer CN, optional */
    int                  csr_no_cn;         /* no subject CN in the CSR (nginx-acme's default) */
    const char          *replaces;          /* ARI id of the certificate this one replaces, optional */
    long                 poll_timeout;      /* seconds for each wait on the CA, 0: 300 */
    int                  check_seen;        /* with seen_issued_at: skip when another process renewed */
    time_t               seen_issued_at;    /* issued_at of the stored certificate the caller decided on */
} acme_issue_req_t;

/* How challenges reach the validator. publish must make the answer visible before it returns 0. */
typedef struct {
    void  *data;
    int  (*publish)(void *data, const char *type, const acme_ident_t *id, const char *token,
                    const char *key_authz, acme_err_t *err);
    void (*withdraw)(void *data, const char *type, const acme_ident_t *id, const char *token);
} acme_challenge_host_t;

typedef struct acme_issue_s acme_issue_t;

/* err NULL: the certificate is in the store under name (possibly stored by another process meanwhile). */
typedef void (*acme_issue_done_pt)(void *arg, const char *name, const acme_err_t *err);

/*
 * Start issuing. Returns NULL with err when it cannot start; err->kind ACME_ERR_BUSY when another process
 * holds the certificate's lock. done is called exactly once otherwise (never from inside this call).
 */
acme_issue_t *acme_issue_start(acme_client_t *c, const acme_issue_req_t *req,
    const acme_challenge_host_t *ch, acme_issue_done_pt done, void *arg, acme_err_t *err);
/* Stop without calling done; the lock is released, the stored order and the published challenges are
 * kept so a later start (this process or the next one, after a reload) resumes it while the CA may still
 * be validating. */
void acme_issue_cancel(acme_issue_t *job);

/* Inside done (err != NULL) only: hands the per-identifier validation errors of the finishing job to the
 * caller (free with acme_ident_errors_free). Returns their number, 0 when the failure was not an
 * identifier's. */
size_t acme_issue_take_ident_errors(acme_ident_error_t **errs);
/* Inside done only: 1 when the finishing job checked dns-persist-01 records, with the certificate's notes
 * after it (*notes: replace the old ones with these; free with acme_persist_notes_free; NULL when none
 * remain), of which the last *fresh are this job's warnings; 0 when it checked none (keep the old). */
int acme_issue_take_persist_notes(acme_persist_note_t **notes, size_t *n, size_t *fresh);
/* What the job is doing now ("authorizing example.org", "finalizing", ...), for status pages. */
const char *acme_issue_state(acme_issue_t *job);
/* Counts changes of acme_issue_state(): a status page is rebuilt only when it moved. */
unsigned long acme_issue_state_changes(acme_issue_t *job);

#endif
