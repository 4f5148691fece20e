/*
 * An ACME client for one CA and one account (RFC 8555): directory, nonces, signed requests with badNonce
 * retries, account creation / lookup / update / key rollover / deactivation, revocation, renewalInfo.
 * Everything is asynchronous on an acme_loop_t; callbacks run from the loop.
 */
#ifndef ACME_CLIENT_H
#define ACME_CLIENT_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include "acme_err.h"
#include "acme_loop.h"
#include "acme_http.h"
#include "acme_key.h"
#include "acme_store.h"
#include "acme_directory.h"
#include "acme_resource.h"

typedef struct {
    const char          *directory_url;     /* resolved (acme_ca_resolve) */
    const char          *ca_file;           /* trust for the CA's TLS, NULL: system store */
    int                  verify;            /* TLS verification of the CA (default on) */
    const char *const   *contact;           /* "mailto:..." or bare addresses */
    size_t               ncontact;
    int                  agree_tos;
    const char          *eab_kid;           /* External Account Binding, optional */
    const char          *eab_hmac_key;      /* base64url */
    acme_keyspec_t       account_keyspec;   /* for a new account key */
    const char          *account_key_file;  /* an admin-provided account key (PEM), optional */
    long                 timeout_ms;        /* per request, 0: 30 s */
} acme_client_conf_t;

typedef struct acme_client_s acme_client_t;

/* What the client did since it was made (metrics): plain counts, never reset. */
typedef struct {
    unsigned long        requests;          /* HTTP requests sent to the CA (directory, nonce, GET, POST) */
    unsigned long        bad_nonce_retries; /* signed requests sent again after badNonce */
    unsigned long        rate_limited;      /* answers that were rateLimited or HTTP 429 */
} acme_client_stats_t;

/* Called with err == NULL on success. */
typedef void (*acme_client_done_pt)(void *arg, const acme_err_t *err);
/* resp is the 2xx response (valid during the call), or NULL with err. */
typedef void (*acme_client_resp_pt)(void *arg, const acme_http_resp_t *resp, const acme_err_t *err);

acme_client_t *acme_client_new(acme_loop_t *loop, acme_store_t *store, const acme_client_conf_t *conf,
    acme_err_t *err);
/* Cancels every request in flight; no callback runs afterwards. */
void acme_client_free(acme_client_t *c);
/* Cancels the requests and ready() waits made with this callback argument; their callbacks never run. */
void acme_client_forget(acme_client_t *c, void *arg);

acme_loop_t  *acme_client_loop(acme_client_t *c);
const acme_client_stats_t *acme_client_stats(acme_client_t *c);
acme_store_t *acme_client_store(acme_client_t *c);
const char   *acme_client_directory_url(acme_client_t *c);
const char   *acme_client_ca_id(acme_client_t *c);
/* NULL until acme_client_ready() succeeded. */
const acme_directory_t *acme_client_directory(acme_client_t *c);
/*
 * The directory is fetched again by the first acme_client_ready a day after the last fetch, or after this
 * call (a CA answered invalidProfile, or 404 on one of the directory's URLs): a CA that drops or renames a
 * profile is noticed without a restart. That caller is told once the answer is in; requests in flight go
 * on with the old directory. A failed re-fetch keeps the old one.
 */
void acme_client_directory_stale(acme_client_t *c);
const char   *acme_client_account_url(acme_client_t *c);
EVP_PKEY     *acme_client_account_key(acme_client_t *c);

/*
 * Fetch the directory (once) and find the account: from the store, or by creating it (with EAB when the
 * CA requires it; refused when the CA has terms and agree_tos is off). Waiters queue while it runs.
 */
int  acme_client_ready(acme_client_t *c, acme_client_done_pt done, void *arg, acme_err_t *err);
/* Forget the directory and nonce so the next ready() fetches them again (after network errors). */
void acme_client_reset(acme_client_t *c);

/*
 * A JWS-signed POST with the account's kid (payload NULL: POST-as-GET). Takes a nonce (HEAD newNonce only
 * when none is cached), retries badNonce up to 10 times with the nonce of the error, registers again and
 * retries once when the CA no longer knows the account. Non-2xx answers become err (problem documents
 * decoded, Retry-After kept in err->retry_after).
 */
int acme_client_post(acme_client_t *c, const char *url, const char *payload, const char *accept,
    acme_client_resp_pt cb, void *arg, acme_err_t *err);

/* Account operations (RFC 8555 7.3). find: ask the CA for the account of the current key
 * (onlyReturnExisting); registers when there is none. */
int acme_client_account_find(acme_client_t *c, acme_client_done_pt done, void *arg, acme_err_t *err);
int acme_client_account_update(acme_client_t *c, const char *const *contact, size_t n,
    acme_client_done_pt done, void *arg, acme_err_t *err);
int acme_client_account_rollover(acme_client_t *c, const acme_keyspec_t *ks, acme_client_done_pt done,
    void *arg, acme_err_t *err);
int acme_client_account_deactivate(acme_client_t *c, acme_client_done_pt done, void *arg,
    acme_err_t *err);

/* Revocation (7.6): signed by the account (cert_key NULL) or by the certificate's own key. */
int acme_client_revoke(acme_client_t *c, X509 *leaf, EVP_PKEY *cert_key, int reason,
    acme_client_done_pt done, void *arg, acme_err_t *err);

/* RFC 9773 renewalInfo (unauthenticated GET); the callback gets the window, or err. */
typedef void (*acme_client_ari_pt)(void *arg, const acme_renewal_info_t *ri, long retry_after,
    const acme_err_t *err);
int acme_client_renewal_info(acme_client_t *c, X509 *leaf, acme_client_ari_pt cb, void *arg,
    acme_err_t *err);

/* Turn a non-2xx or failed response into err (exposed for tests). */
void acme_client_resp_error(const acme_http_resp_t *resp, const char *what, acme_err_t *err);

#endif
