/*
 * What the issuance files share (acme_issue.c, acme_order.c, acme_authz.c, acme_finalize.c,
 * acme_download.c): the job's state and the steps one file hands to another. Internal.
 */
#ifndef ACME_ISSUE_INT_H
#define ACME_ISSUE_INT_H

#include "acme_issue.h"
#include "acme_dns.h"
#include "acme_keygen.h"
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
    J_DNS,              /* a DNS record is being published (and propagated) or removed, off the loop */
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
    int                     csr_no_cn;
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
    int                     profile_dropped;    /* the CA refused the profile: its default instead */

    char                   *chain_pem;      /* the default chain, while alternates are checked */
    char                  **alternates;
    size_t                  nalternates;
    size_t                  alt_i;

    size_t                  abandon_i;
    int                     abandon_fail;   /* finish with abandon_err afterwards, else order anew */
    acme_err_t              abandon_err;

    published_t            *published;
    size_t                  npublished;

    const acme_dns_config_t *dns;           /* the caller's; NULL: no DNS challenges */
    acme_dns_task_t        *dns_task;
    acme_dns_record_t      *dns_recs;       /* published (or left by a dead process): removed at the end */
    size_t                  ndns_recs;
    char                    dns_ident[256]; /* the identifier being published, for messages */
    char                    dns_type[20];   /* its challenge type ("dns-01", "dns-account-01") */
    char                   *persist_name;   /* dns-persist-01: the record being checked, for the status */
    char                   *persist_value;  /* the value the admin should give it */
    acme_persist_note_t    *persist_notes;  /* dns-persist-01: each record checked (acme_persist_note.c) */
    size_t                  npersist_notes;
    int                     persist_judged; /* persist_all: the certificate's notes after this job */
    acme_persist_note_t    *persist_all;
    size_t                  npersist_all;
    size_t                  npersist_fresh; /* the last of persist_all: this job's warnings */
    int                     dns_finishing;  /* the records are being removed before done */
    int                     dns_finish_failed;
    acme_err_t              dns_finish_err;
    int                     confirm_n;      /* nodes that got the last challenge announcement */
    long long               confirm_start;  /* ms */
};

/* acme_issue.c: the job, failure, back-off, requests */
void acme_issue_job_finish(acme_issue_t *job, const acme_err_t *err);
void acme_issue_ident_error_add(acme_issue_t *job, const char *type, const char *value, const char *msg);
/* Attaches the dns-persist-01 record (name, value) to that identifier's error, for the status. */
void acme_issue_ident_error_record(acme_issue_t *job, const char *type, const char *value, const char *name,
    const char *txt);
void acme_issue_ident_errors_from_problem(acme_issue_t *job, const acme_problem_t *p);
/* acme_issue_dns.c: judges the dns-persist-01 records the job checked against the certificate in service
 * (not_after; 0: the stored one's), logs each warning once, and sets persist_all (once per job). */
void acme_issue_persist_judge(acme_issue_t *job, time_t not_after);
void acme_issue_job_fail(acme_issue_t *job, const acme_err_t *err);
void acme_issue_job_set_state(acme_issue_t *job, job_state_t st, const char *fmt, const char *arg);
void acme_issue_job_later(acme_issue_t *job, long ms);
int acme_issue_job_back(acme_issue_t *job);
int acme_issue_job_post(acme_issue_t *job, const char *url, const char *payload, const char *accept,
             acme_client_resp_pt cb);
int acme_issue_require_json(acme_issue_t *job, const acme_http_resp_t *resp, const char *what);
void acme_issue_job_poll_later(acme_issue_t *job, long retry_after, const char *what);
void acme_issue_poll_reset(acme_issue_t *job);
void acme_issue_job_step(acme_issue_t *job);

/* acme_order.c: orders, lost orders, giving an order up */
int acme_issue_order_store(acme_issue_t *job, acme_err_t *err);
void acme_issue_order_forget(acme_issue_t *job);
int acme_issue_order_load(acme_issue_t *job);
void acme_issue_new_order_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);
void acme_issue_order_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);
void acme_issue_order_abandon(acme_issue_t *job, const acme_err_t *err);
void acme_issue_abandon_done(acme_issue_t *job);
void acme_issue_abandon_authz_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);
void acme_issue_deactivate_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);
void acme_issue_abandon_post(acme_issue_t *job, const char *payload, acme_client_resp_pt cb);
void acme_issue_stale_order_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);
char *acme_issue_new_order_payload(acme_issue_t *job, acme_err_t *err);
void acme_issue_orphan_none(acme_issue_t *job, const char *why);
void acme_issue_orphan_account_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);
void acme_issue_orphan_list_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);
void acme_issue_orphan_order_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);

/* acme_authz.c: authorizations, challenges, published answers */
void acme_issue_withdraw_all(acme_issue_t *job);
void acme_issue_forget_published(acme_issue_t *job);
void acme_issue_confirm_step(acme_issue_t *job);
void acme_issue_authz_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);

void acme_issue_challenge_post(acme_issue_t *job);

/* acme_issue_dns.c: DNS challenges' records, their publication and removal */
int acme_issue_dns_load(acme_issue_t *job, acme_err_t *err);
int acme_issue_dns_publish(acme_issue_t *job, const char *type, const char *domain, int wildcard,
    const char *key_authz, acme_err_t *err);
int acme_issue_dns_cleanup(acme_issue_t *job, const acme_err_t *err);
/* dns-persist-01: checks (off the loop) that the admin's record authorizes the account, then posts c. */
int acme_issue_dns_persist(acme_issue_t *job, const acme_authz_t *a, const acme_challenge_t *c, acme_err_t *err);
void acme_issue_dns_free(acme_issue_t *job);

/* acme_finalize.c */
void acme_issue_finalize_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);

/* acme_download.c */
void acme_issue_accept_chain(acme_issue_t *job, const char *pem, size_t len);
void acme_issue_alternate_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);
void acme_issue_download_resp(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);

#endif /* ACME_ISSUE_INT_H */
