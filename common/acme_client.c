/* RFC 8555 client for one CA and one account: directory, nonces, signed requests, account operations. */
#include "acme_client.h"
#include "acme_keygen.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/x509.h>

#include "acme_b64.h"
#include "acme_jws.h"
#include "acme_x509.h"
#include "acme_problem.h"
#include "acme_urlpolicy.h"

/* RFC 8555 6.5: a badNonce is always worth a retry with the nonce it brought; the cap only stops a CA that
 * rejects every nonce. Pebble's stress setting (50% at random) makes 11 in a row a 1-in-2048 event per
 * request; 17 is 1 in 131072. */
#define NONCE_RETRIES  16
/* Replay-Nonces kept for the next signed requests: every response brings one, so concurrent orders rarely
 * need a HEAD newNonce. */
#define NONCE_POOL     8
#define DIR_REFRESH    86400            /* s: re-fetch the directory daily */

typedef enum { CL_NONE = 0, CL_DIRECTORY, CL_ACCOUNT, CL_READY } cl_state_t;

typedef struct waiter_s waiter_t;
struct waiter_s {
    waiter_t            *next;
    acme_client_done_pt  done;
    void                *arg;
};

typedef struct op_s op_t;
struct op_s {
    acme_client_t       *c;
    op_t                *next;
    char                *url;
    char                *payload;       /* NULL: POST-as-GET */
    char                *accept;
    EVP_PKEY            *jwk_key;       /* sign in jwk form with this key (newAccount, cert-key revoke) */
    int                  get;           /* plain GET, unsigned */
    int                  tos_retries;   /* agreed to the terms again after userActionRequired */
    int                  nonce_retries;
    int                  account_retries;
    int                  fetching_nonce;
    acme_http_req_t     *req;
    acme_client_resp_pt  cb;
    void                *arg;
    void                *owner;         /* the caller's arg, for acme_client_forget */
    void               (*drop)(void *arg);  /* frees arg when the op ends without its callback */
};

struct acme_client_s {
    acme_loop_t         *loop;
    acme_keygen_t       *keygen;            /* making a new account key */
    acme_store_t        *store;
    acme_http_conf_t     http;
    acme_urlpolicy_t     urls;              /* which URLs the CA may hand out */
    char                *directory_url;
    char                *ca_id;
    char                *ca_file;
    char               **contact;
    size_t               ncontact;
    int                  agree_tos;
    char                *eab_kid;
    unsigned char       *eab_key;
    size_t               eab_key_len;
    acme_keyspec_t       account_keyspec;
    char                *account_key_file;

    cl_state_t           state;
    acme_directory_t     dir;
    int                  have_dir;
    EVP_PKEY            *key;
    char                *account_url;
    char                *nonces[NONCE_POOL];
    size_t               nnonces;
    acme_http_req_t     *dir_req;
    time_t               dir_at;        /* when the directory was fetched */
    int                  dir_stale;     /* re-fetch it at the next acme_client_ready */
    waiter_t            *waiters;
    acme_timer_t        *notify_timer;
    acme_err_t           notify_err;
    int                  notify_failed;
    int                  reregister;    /* the CA forgot the account: register the key again */
    op_t                *ops;
    acme_client_stats_t  stats;
};

static void op_start(op_t *op);
static void client_register(acme_client_t *c);
static void client_account(acme_client_t *c);

static void
nonce_push(acme_client_t *c, const char *nonce)
{
    char *n = acme_strdup(nonce);

    if (n == NULL) {
        return;
    }
    if (c->nnonces == NONCE_POOL) {
        /* the oldest is the likeliest to have expired */
        free(c->nonces[0]);
        memmove(&c->nonces[0], &c->nonces[1], (NONCE_POOL - 1) * sizeof(char *));
        c->nnonces--;
    }
    c->nonces[c->nnonces++] = n;
}

/* The freshest nonce (malloc'd), NULL when none. */
static char *
nonce_pop(acme_client_t *c)
{
    if (c->nnonces == 0) {
        return NULL;
    }
    return c->nonces[--c->nnonces];
}

static void
nonce_clear(acme_client_t *c)
{
    while (c->nnonces > 0) {
        free(c->nonces[--c->nnonces]);
    }
}

static void client_notify(acme_client_t *c, const acme_err_t *err);

static void
account_key_done(void *arg, EVP_PKEY *key, const acme_err_t *err)
{
    acme_client_t *c = arg;

    c->keygen = NULL;
    if (err != NULL) {
        acme_err_t e = *err;
        acme_err_prefix(&e, "generating the account key");
        client_notify(c, &e);
        return;
    }
    c->key = key;
    client_register(c);
}

/* ---- small helpers ---- */

static char *
contact_uri(const char *s)
{
    if (strncmp(s, "mailto:", 7) == 0 || strstr(s, ":") != NULL) {
        return acme_strdup(s);
    }
    return acme_sprintf("mailto:%s", s);
}

static json_t *
contact_json(char *const *contact, size_t n)
{
    json_t  *a = json_array();
    size_t   i;

    for (i = 0; a != NULL && i < n; i++) {
        json_array_append_new(a, json_string(contact[i]));
    }
    return a;
}

/* Take the contacts of a stored account.json (a JSON array of strings); on no memory, keep none. */
static void
contacts_adopt(acme_client_t *c, json_t *arr)
{
    size_t  i, n;

    free(c->contact);
    c->contact = NULL;
    n = json_is_array(arr) ? json_array_size(arr) : 0;
    if (n == 0 || (c->contact = calloc(n, sizeof(char *))) == NULL) {
        return;
    }
    for (i = 0; i < n; i++) {
        const char *v = json_string_value(json_array_get(arr, i));

        if (v != NULL && (c->contact[c->ncontact] = acme_strdup(v)) != NULL) {
            c->ncontact++;
        }
    }
}

void
acme_client_resp_error(const acme_http_resp_t *resp, const char *what, acme_err_t *err)
{
    acme_problem_t  p;
    const char     *ct;

    if (!resp->ok) {
        if (resp->status == -1) {
            acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: %s", what, resp->errmsg);
        } else {
            acme_err_set(err, ACME_ERR_NETWORK, "%s: %s", what, resp->errmsg);
        }
        return;
    }
    ct = resp->content_type ? resp->content_type : "";
    memset(&p, 0, sizeof(p));
    if ((strcmp(ct, "application/problem+json") == 0 || strcmp(ct, "application/json") == 0)
        && acme_problem_parse(resp->body.data, resp->body.len, &p, NULL) == 0
        && p.type != NULL)
    {
        acme_problem_to_err(&p, what, err);
        if (resp->status >= 500 && err->kind == ACME_ERR_CA) {
            err->kind = ACME_ERR_NETWORK;
        }
        acme_problem_free(&p);
    } else {
        acme_problem_free(&p);
        acme_err_set(err, resp->status >= 500 ? ACME_ERR_NETWORK
                          : resp->status == 429 ? ACME_ERR_RATELIMIT : ACME_ERR_CA,
                     "%s: HTTP %ld%s", what, resp->status,
                     resp->status >= 500 ? " (CA server error)" : "");
    }
    if (resp->status == 429 && err != NULL) {
        err->kind = ACME_ERR_RATELIMIT;
    }
    if (err != NULL) {
        err->http_status = (int) resp->status;
    }
    if (err != NULL && resp->retry_after > 0) {
        err->retry_after = resp->retry_after;
    }
}

static int
resp_is_problem(const acme_http_resp_t *resp, const char *short_type)
{
    acme_problem_t  p;
    int             r;

    memset(&p, 0, sizeof(p));
    if (acme_problem_parse(resp->body.data, resp->body.len, &p, NULL) != 0) {
        acme_problem_free(&p);
        return 0;
    }
    r = acme_problem_is(&p, short_type);
    acme_problem_free(&p);
    return r;
}

/* Every request to the CA goes through here, so the metrics count them all. */
static acme_http_req_t *
client_send(acme_client_t *c, const acme_http_conf_t *conf, const char *method, const char *url,
    const char *body, const char *accept, acme_http_done_pt done, void *arg, acme_err_t *err)
{
    acme_http_req_t *req;

    req = acme_http_send(c->loop, conf, method, url, body, accept, done, arg, err);
    if (req != NULL) {
        c->stats.requests++;
    }
    return req;
}

/* An answer that asks us to slow down: 429, or a rateLimited problem with any status. */
static void
client_count_answer(acme_client_t *c, const acme_http_resp_t *resp)
{
    if (resp->ok && (resp->status == 429 || (resp->status >= 400 && resp_is_problem(resp, "rateLimited")))) {
        c->stats.rate_limited++;
    }
}

/* The problem's "instance" URL (RFC 8555 7.3.3: where the user acts, e.g. new terms), malloc'd or NULL. */
static char *
problem_instance(const acme_http_resp_t *resp)
{
    json_t      *j;
    const char  *s;
    char        *r = NULL;

    j = json_loadb(resp->body.data ? resp->body.data : "", resp->body.len, 0, NULL);
    s = json_string_value(json_object_get(j, "instance"));
    if (s != NULL && acme_url_valid(s)) {
        r = acme_strdup(s);
    }
    json_decref(j);
    return r;
}

/* ---- lifecycle ---- */

acme_client_t *
acme_client_new(acme_loop_t *loop, acme_store_t *store, const acme_client_conf_t *conf, acme_err_t *err)
{
    acme_client_t  *c;
    size_t          i;

    if (conf->directory_url == NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "no ACME directory URL");
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    if (acme_urlpolicy_init(&c->urls, conf->directory_url, err) != 0) {
        free(c);
        return NULL;
    }
    c->http.https_only = c->urls.https_only;
    c->loop = loop;
    c->store = store;
    c->directory_url = acme_strdup(conf->directory_url);
    c->ca_id = acme_ca_id(conf->directory_url);
    c->ca_file = acme_strdup(conf->ca_file);
    c->http.ca_file = c->ca_file;
    c->http.verify = conf->verify;
    c->http.timeout_ms = conf->timeout_ms;
    c->agree_tos = conf->agree_tos;
    c->account_keyspec = conf->account_keyspec.alg ? conf->account_keyspec : ACME_KEYSPEC_DEFAULT;
    c->account_key_file = acme_strdup(conf->account_key_file);
    if (c->directory_url == NULL || c->ca_id == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto failed;
    }
    if (conf->ncontact) {
        c->contact = calloc(conf->ncontact, sizeof(char *));
        if (c->contact == NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            goto failed;
        }
        for (i = 0; i < conf->ncontact; i++) {
            c->contact[i] = contact_uri(conf->contact[i]);
        }
        c->ncontact = conf->ncontact;
    }
    if (conf->eab_kid != NULL) {
        if (conf->eab_hmac_key == NULL
            || acme_b64url_decode(conf->eab_hmac_key, strlen(conf->eab_hmac_key), &c->eab_key,
                                  &c->eab_key_len) != 0
            || c->eab_key_len == 0)
        {
            acme_err_set(err, ACME_ERR_CONFIG,
                         "external account binding \"%s\": the HMAC key is not base64url", conf->eab_kid);
            goto failed;
        }
        c->eab_kid = acme_strdup(conf->eab_kid);
    }
    return c;

failed:
    acme_client_free(c);
    return NULL;
}

static void
op_free(op_t *op)
{
    free(op->url);
    free(op->payload);
    free(op->accept);
    EVP_PKEY_free(op->jwk_key);
    free(op);
}

static void
op_unlink(op_t *op)
{
    op_t **pp;

    for (pp = &op->c->ops; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == op) {
            *pp = op->next;
            return;
        }
    }
}

void
acme_client_free(acme_client_t *c)
{
    op_t      *op, *next;
    waiter_t  *w, *wn;
    size_t     i;

    if (c == NULL) {
        return;
    }
    acme_keygen_cancel(c->keygen);
    for (op = c->ops; op != NULL; op = next) {
        next = op->next;
        acme_http_cancel(op->req);
        if (op->drop != NULL) {
            op->drop(op->arg);
        }
        op_free(op);
    }
    for (w = c->waiters; w != NULL; w = wn) {
        wn = w->next;
        free(w);
    }
    acme_http_cancel(c->dir_req);
    acme_timer_cancel(c->loop, c->notify_timer);
    acme_directory_free(&c->dir);
    EVP_PKEY_free(c->key);
    free(c->account_url);
    nonce_clear(c);
    free(c->directory_url);
    free(c->ca_id);
    free(c->ca_file);
    for (i = 0; i < c->ncontact; i++) {
        free(c->contact[i]);
    }
    free(c->contact);
    free(c->eab_kid);
    acme_free_secret(c->eab_key, c->eab_key_len);
    free(c->account_key_file);
    free(c);
}

void
acme_client_forget(acme_client_t *c, void *arg)
{
    op_t      **pp, *op;
    waiter_t  **wp, *w;

    if (c == NULL) {
        return;
    }
    for (pp = &c->ops; *pp != NULL; ) {
        op = *pp;
        if (op->owner != arg) {
            pp = &op->next;
            continue;
        }
        *pp = op->next;
        acme_http_cancel(op->req);
        if (op->drop != NULL) {
            op->drop(op->arg);
        }
        op_free(op);
    }
    for (wp = &c->waiters; *wp != NULL; ) {
        w = *wp;
        if (w->arg != arg) {
            wp = &w->next;
            continue;
        }
        *wp = w->next;
        free(w);
    }
}

acme_loop_t *acme_client_loop(acme_client_t *c) { return c->loop; }
acme_store_t *acme_client_store(acme_client_t *c) { return c->store; }
const char *acme_client_directory_url(acme_client_t *c) { return c->directory_url; }
const char *acme_client_ca_id(acme_client_t *c) { return c->ca_id; }
const char *acme_client_account_url(acme_client_t *c) { return c->account_url; }
EVP_PKEY *acme_client_account_key(acme_client_t *c) { return c->key; }
const acme_client_stats_t *acme_client_stats(acme_client_t *c) { return &c->stats; }

const acme_directory_t *
acme_client_directory(acme_client_t *c)
{
    return c->have_dir ? &c->dir : NULL;
}

void
acme_client_reset(acme_client_t *c)
{
    if (c->state == CL_READY || c->state == CL_NONE) {
        if (c->state == CL_READY && c->dir_req != NULL) {
            acme_http_cancel(c->dir_req);       /* a background re-fetch */
            c->dir_req = NULL;
        }
        acme_directory_free(&c->dir);
        memset(&c->dir, 0, sizeof(c->dir));
        c->have_dir = 0;
        c->state = CL_NONE;
        nonce_clear(c);
    }
}

/* ---- readiness: directory and account ---- */

static void
notify_cb(void *arg)
{
    acme_client_t  *c = arg;
    waiter_t       *w, *list;
    acme_err_t      err;
    int             failed;

    c->notify_timer = NULL;
    list = c->waiters;
    c->waiters = NULL;
    err = c->notify_err;
    failed = c->notify_failed;
    while ((w = list) != NULL) {
        list = w->next;
        w->done(w->arg, failed ? &err : NULL);
        free(w);
    }
}

/* Waiters are told from a timer, never from inside the caller's own call. */
static void
client_notify(acme_client_t *c, const acme_err_t *err)
{
    if (err != NULL) {
        c->notify_err = *err;
        c->notify_failed = 1;
        c->state = CL_NONE;
    } else {
        c->notify_failed = 0;
        c->state = CL_READY;
    }
    if (c->notify_timer == NULL) {
        c->notify_timer = acme_timer_add(c->loop, 0, notify_cb, c);
    }
}

static int
account_save(acme_client_t *c, acme_err_t *err)
{
    char    *pem, *js;
    size_t   len;
    json_t  *o;
    int      rc;

    pem = acme_key_to_pem(c->key, &len, err);
    if (pem == NULL) {
        return -1;
    }
    o = json_pack("{s:s, s:s, s:o}", "url", c->account_url, "directory", c->directory_url,
                  "contact", contact_json(c->contact, c->ncontact));
    js = o ? json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(o);
    if (js == NULL) {
        acme_free_secret(pem, len);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    rc = acme_store_account_save(c->store, c->ca_id, pem, len, js, err);
    acme_free_secret(pem, len);
    free(js);
    return rc;
}

static int
load_key_file(const char *path, EVP_PKEY **key, acme_err_t *err)
{
    FILE    *f;
    char     buf[16384];
    size_t   n;

    f = fopen(path, "r");
    if (f == NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "cannot read account key \"%s\": %m", path);
        return -1;
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    *key = acme_key_from_pem(buf, n, err);
    memset(buf, 0, sizeof(buf));
    if (*key == NULL) {
        acme_err_prefix(err, "account key \"%s\"", path);
        return -1;
    }
    return 0;
}

static void
new_account_done(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_client_t  *c = arg;
    acme_err_t      e;

    if (err != NULL) {
        e = *err;
        acme_err_prefix(&e, "account registration at %s", c->directory_url);
        client_notify(c, &e);
        return;
    }
    if (resp->location == NULL || strncmp(resp->location, "http", 4) != 0) {
        acme_err_set(&e, ACME_ERR_BADRESPONSE, "account registration at %s: no account URL (Location)",
                     c->directory_url);
        client_notify(c, &e);
        return;
    }
    free(c->account_url);
    c->account_url = acme_strdup(resp->location);
    if (account_save(c, &e) != 0) {
        client_notify(c, &e);
        return;
    }
    acme_log(c->loop, ACME_LOG_NOTICE, "acme: %s account %s at %s",
             resp->status == 201 ? "created" : "found", c->account_url, c->directory_url);
    client_notify(c, NULL);
}

static op_t *
op_new(acme_client_t *c, const char *url, const char *payload, const char *accept,
    acme_client_resp_pt cb, void *arg)
{
    op_t *op;

    op = calloc(1, sizeof(*op));
    if (op == NULL) {
        return NULL;
    }
    op->c = c;
    op->url = acme_strdup(url);
    op->payload = acme_strdup(payload);
    op->accept = acme_strdup(accept);
    op->cb = cb;
    op->arg = arg;
    op->owner = arg;
    if (op->url == NULL || (payload != NULL && op->payload == NULL)) {
        op_free(op);
        return NULL;
    }
    op->next = c->ops;
    c->ops = op;
    return op;
}

static void
op_fail(op_t *op, const acme_err_t *err)
{
    acme_client_resp_pt  cb = op->cb;
    void                *arg = op->arg;

    op_unlink(op);
    op_free(op);
    cb(arg, NULL, err);
}

/* newAccount, signed with the account key in jwk form (with EAB when needed). */
static void
client_register(acme_client_t *c)
{
    json_t      *o, *eab;
    char        *payload;
    acme_err_t   err;
    op_t        *op;

    if (c->dir.terms_of_service != NULL && !c->agree_tos) {
        acme_err_set(&err, ACME_ERR_CONFIG,
                     "the CA %s has terms of service (%s): agree to them first "
                     "(accept_terms_of_service, ACMEAcceptTermsOfService on, acmectl --agree-tos)",
                     c->directory_url, c->dir.terms_of_service);
        client_notify(c, &err);
        return;
    }
    if (c->dir.eab_required && c->eab_kid == NULL) {
        acme_err_set(&err, ACME_ERR_CONFIG,
                     "the CA %s requires External Account Binding: configure a key id and HMAC key",
                     c->directory_url);
        client_notify(c, &err);
        return;
    }
    o = json_object();
    json_object_set_new(o, "termsOfServiceAgreed", json_boolean(c->agree_tos));
    if (c->ncontact) {
        json_object_set_new(o, "contact", contact_json(c->contact, c->ncontact));
    }
    if (c->eab_kid != NULL) {
        eab = acme_jws_eab(c->eab_kid, c->eab_key, c->eab_key_len, c->key, c->dir.new_account, &err);
        if (eab == NULL) {
            json_decref(o);
            client_notify(c, &err);
            return;
        }
        json_object_set_new(o, "externalAccountBinding", eab);
    }
    payload = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    op = payload ? op_new(c, c->dir.new_account, payload, NULL, new_account_done, c) : NULL;
    free(payload);
    if (op == NULL) {
        acme_err_set(&err, ACME_ERR_INTERNAL, "out of memory");
        client_notify(c, &err);
        return;
    }
    op->jwk_key = c->key;
    EVP_PKEY_up_ref(c->key);
    c->state = CL_ACCOUNT;
    op_start(op);
}

/* 1 when err is the CA saying the account (of this key) is deactivated: it never comes back (7.3.6). */
static int
err_deactivated(const acme_err_t *err)
{
    return err != NULL && strstr(err->msg, "unauthorized") != NULL && strstr(err->msg, "deactivated") != NULL;
}

/*
 * A deactivated account: with a generated key, it is forgotten (store included) and a new key registers a
 * new account; a configured key file cannot be used again, which the error says (configuration-class).
 * 0: go on with client_account(); -1: *e filled.
 */
static int
client_deactivated(acme_client_t *c, const acme_err_t *err, acme_err_t *e)
{
    char *k1, *k2;

    if (c->account_key_file != NULL) {
        acme_err_set(e, ACME_ERR_CONFIG, "%s: the account of the configured key file %s is deactivated at "
                     "the CA, and a deactivated account cannot be used again: configure a new key file (or "
                     "none, to have a key made)", err->msg, c->account_key_file);
        return -1;
    }
    acme_log(c->loop, ACME_LOG_WARN, "acme: account %s at %s is deactivated: registering a new account with "
             "a new key", c->account_url ? c->account_url : "-", c->directory_url);
    k1 = acme_sprintf("accounts/%s/account.key", c->ca_id);
    k2 = acme_sprintf("accounts/%s/account.json", c->ca_id);
    if (k1 == NULL || k2 == NULL
        || acme_store_del(c->store, k2, e) != 0 || acme_store_del(c->store, k1, e) != 0)
    {
        if (k1 == NULL || k2 == NULL) {
            acme_err_set(e, ACME_ERR_INTERNAL, "out of memory");
        }
        free(k1);
        free(k2);
        return -1;
    }
    free(k1);
    free(k2);
    EVP_PKEY_free(c->key);
    c->key = NULL;
    free(c->account_url);
    c->account_url = NULL;
    return 0;
}

static void
find_account_done(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acme_client_t  *c = arg;
    acme_err_t      e;

    if (err != NULL && strstr(err->msg, "accountDoesNotExist") != NULL) {
        /* no account for this key yet */
        client_register(c);
        return;
    }
    if (err_deactivated(err)) {
        if (client_deactivated(c, err, &e) == 0) {
            client_account(c);
            return;
        }
        acme_err_prefix(&e, "account lookup at %s", c->directory_url);
        client_notify(c, &e);
        return;
    }
    if (err == NULL && resp->location != NULL && strncmp(resp->location, "http", 4) == 0) {
        free(c->account_url);
        c->account_url = acme_strdup(resp->location);
        if (account_save(c, &e) != 0) {
            client_notify(c, &e);
            return;
        }
        acme_log(c->loop, ACME_LOG_NOTICE, "acme: found account %s at %s for the configured key",
                 c->account_url, c->directory_url);
        client_notify(c, NULL);
        return;
    }
    if (err != NULL) {
        e = *err;
    } else {
        acme_err_set(&e, ACME_ERR_BADRESPONSE, "no account URL (Location)");
    }
    acme_err_prefix(&e, "account lookup at %s", c->directory_url);
    client_notify(c, &e);
}

/* newAccount with onlyReturnExisting (RFC 8555 7.3.1): the account of this key, if any. */
static void
client_find(acme_client_t *c)
{
    op_t        *op;
    acme_err_t   err;

    op = op_new(c, c->dir.new_account, "{\"onlyReturnExisting\":true}", NULL, find_account_done, c);
    if (op == NULL) {
        acme_err_set(&err, ACME_ERR_INTERNAL, "out of memory");
        client_notify(c, &err);
        return;
    }
    op->jwk_key = c->key;
    EVP_PKEY_up_ref(c->key);
    c->state = CL_ACCOUNT;
    op_start(op);
}

static void
client_account(acme_client_t *c)
{
    char        *pem = NULL, *js = NULL;
    size_t       len = 0;
    acme_err_t   err;
    json_t      *o;
    const char  *url;
    EVP_PKEY    *stored = NULL;
    int          rc;

    c->state = CL_ACCOUNT;
    rc = acme_store_account_load(c->store, c->ca_id, &pem, &len, &js, &err);
    if (rc < 0) {
        client_notify(c, &err);
        return;
    }
    if (rc == 0) {
        stored = acme_key_from_pem(pem, len, &err);
        acme_free_secret(pem, len);
        if (stored == NULL) {
            free(js);
            acme_err_prefix(&err, "stored account key for %s", c->directory_url);
            client_notify(c, &err);
            return;
        }
        o = json_loads(js ? js : "", 0, NULL);
        free(js);
        url = json_string_value(json_object_get(o, "url"));
        free(c->account_url);
        c->account_url = url ? acme_strdup(url) : NULL;
        if (c->ncontact == 0) {
            /* none configured (acmectl without --contact): keep the recorded ones, every save rewrites them */
            contacts_adopt(c, json_object_get(o, "contact"));
        }
        json_decref(o);
    }

    if (c->key == NULL && c->account_key_file != NULL) {
        if (load_key_file(c->account_key_file, &c->key, &err) != 0) {
            EVP_PKEY_free(stored);
            client_notify(c, &err);
            return;
        }
        if (stored != NULL && !acme_key_matches(stored, c->key)) {
            /* the admin changed the key file: find or create the account of the new key */
            free(c->account_url);
            c->account_url = NULL;
        }
        EVP_PKEY_free(stored);
        stored = NULL;
    }
    if (c->key == NULL) {
        c->key = stored;
        stored = NULL;
    }
    EVP_PKEY_free(stored);

    if (c->reregister) {
        c->reregister = 0;
        free(c->account_url);
        c->account_url = NULL;
    }
    if (c->key != NULL && c->account_url != NULL) {
        client_notify(c, NULL);
        return;
    }
    if (c->key == NULL) {
        /* off the loop: an RSA key can take seconds */
        c->keygen = acme_keygen_start(c->loop, &c->account_keyspec, account_key_done, c, &err);
        if (c->keygen == NULL) {
            client_notify(c, &err);
        }
        return;
    }
    /* a known key without a URL (an admin's key file, or the CA forgot us): look it up first */
    client_find(c);
}

void
acme_client_directory_stale(acme_client_t *c)
{
    c->dir_stale = 1;
}

/* 1 when url is one of the directory's resources (a 404 there means the directory changed) */
static int
dir_has_url(const acme_directory_t *d, const char *url)
{
    const char *u[] = { d->new_nonce, d->new_account, d->new_order, d->new_authz, d->revoke_cert,
                        d->key_change, d->renewal_info };
    size_t      i;

    for (i = 0; i < sizeof(u) / sizeof(u[0]); i++) {
        if (u[i] != NULL && strncmp(url, u[i], strlen(u[i])) == 0) {
            return 1;
        }
    }
    return 0;
}

/* A background re-fetch: the new directory replaces the old one only when it is good. */
static void
directory_refresh_done(const acme_http_resp_t *resp, void *arg)
{
    acme_client_t     *c = arg;
    acme_directory_t   nd;
    acme_err_t         err;

    c->dir_req = NULL;
    client_count_answer(c, resp);
    c->dir_at = time(NULL);
    c->dir_stale = 0;
    memset(&nd, 0, sizeof(nd));
    if (!resp->ok || resp->status != 200) {
        acme_client_resp_error(resp, "directory", &err);
    } else if (resp->content_type == NULL || strcmp(resp->content_type, "application/json") != 0) {
        acme_err_set(&err, ACME_ERR_BADRESPONSE, "directory: expected application/json, got \"%.60s\"",
                     resp->content_type ? resp->content_type : "(none)");
    } else if (acme_directory_parse(resp->body.data, resp->body.len, &nd, &err) == 0
               && acme_urlpolicy_check_directory(&c->urls, c->loop, &nd, &err) == 0)
    {
        acme_directory_free(&c->dir);
        c->dir = nd;
        acme_log(c->loop, ACME_LOG_INFO, "acme: directory %s fetched again (%zu profiles)", c->directory_url,
                 c->dir.nprofiles);
    } else {
        acme_directory_free(&nd);
        acme_log(c->loop, ACME_LOG_WARN, "acme: %s: fetching the directory again failed, keeping the one "
                 "fetched before: %s", c->directory_url, err.msg);
    }
    if (c->waiters != NULL) {
        client_notify(c, NULL);     /* those who asked meanwhile: ready, with the newest directory */
    }
}

static void
directory_done(const acme_http_resp_t *resp, void *arg)
{
    acme_client_t  *c = arg;
    acme_err_t      err;

    c->dir_req = NULL;
    client_count_answer(c, resp);
    if (!resp->ok || resp->status != 200) {
        if (resp->ok || resp->status == -1) {
            /* the CA answered, with an error or with garbage */
            acme_client_resp_error(resp, "directory", &err);
        } else {
            acme_client_resp_error(resp, "cannot reach the CA", &err);
        }
        acme_err_prefix(&err, "%s", c->directory_url);
        client_notify(c, &err);
        return;
    }
    if (resp->content_type == NULL || strcmp(resp->content_type, "application/json") != 0) {
        acme_err_set(&err, ACME_ERR_BADRESPONSE, "%s: directory: expected application/json, got \"%.60s\"",
                     c->directory_url, resp->content_type ? resp->content_type : "(none)");
        client_notify(c, &err);
        return;
    }
    acme_directory_free(&c->dir);
    memset(&c->dir, 0, sizeof(c->dir));
    if (acme_directory_parse(resp->body.data, resp->body.len, &c->dir, &err) != 0
        || acme_urlpolicy_check_directory(&c->urls, c->loop, &c->dir, &err) != 0)
    {
        acme_err_prefix(&err, "directory %s", c->directory_url);
        acme_directory_free(&c->dir);
        memset(&c->dir, 0, sizeof(c->dir));
        client_notify(c, &err);
        return;
    }
    c->have_dir = 1;
    c->dir_at = time(NULL);
    c->dir_stale = 0;
    client_account(c);
}

int
acme_client_ready(acme_client_t *c, acme_client_done_pt done, void *arg, acme_err_t *err)
{
    waiter_t          *w;
    acme_http_conf_t   dconf;

    w = calloc(1, sizeof(*w));
    if (w == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    w->done = done;
    w->arg = arg;
    w->next = c->waiters;
    c->waiters = w;

    if (c->state == CL_READY && c->have_dir && c->dir_req == NULL
        && (c->dir_stale || time(NULL) - c->dir_at >= DIR_REFRESH))
    {
        /* requests in flight keep the current one; this caller (and any until the answer) waits for it */
        dconf = c->http;
        dconf.follow_redirects = 1;
        c->dir_req = client_send(c, &dconf, "GET", c->directory_url, NULL, "application/json",
                                 directory_refresh_done, c, NULL);
    }
    switch (c->state) {
    case CL_READY:
        if (c->dir_req != NULL) {
            return 0;               /* told by directory_refresh_done */
        }
        c->notify_failed = 0;
        if (c->notify_timer == NULL) {
            c->notify_timer = acme_timer_add(c->loop, 0, notify_cb, c);
        }
        return 0;
    case CL_DIRECTORY:
    case CL_ACCOUNT:
        return 0;
    case CL_NONE:
        break;
    }
    if (c->have_dir) {
        client_account(c);
        return 0;
    }
    c->state = CL_DIRECTORY;
    dconf = c->http;
    dconf.follow_redirects = 1;         /* directory GETs only */
    c->dir_req = client_send(c, &dconf, "GET", c->directory_url, NULL, "application/json",
                             directory_done, c, err);
    if (c->dir_req == NULL) {
        c->waiters = w->next;
        free(w);
        c->state = CL_NONE;
        return -1;
    }
    return 0;
}

/* ---- signed requests ---- */

static void op_send(op_t *op);
static void op_user_action(op_t *op, const acme_http_resp_t *resp);

static void
op_account_ready(void *arg, const acme_err_t *err)
{
    op_t *op = arg;

    if (err != NULL) {
        op_fail(op, err);
        return;
    }
    op_start(op);
}

static void
op_resp(const acme_http_resp_t *resp, void *arg)
{
    op_t                *op = arg;
    acme_client_t       *c = op->c;
    acme_client_resp_pt  cb;
    void                *cbarg;
    acme_err_t           err;
    char                 what[300];

    op->req = NULL;
    client_count_answer(c, resp);
    if (resp->ok && resp->replay_nonce != NULL && resp->replay_nonce[0] != '\0'
        && strlen(resp->replay_nonce) < 256)
    {
        nonce_push(c, resp->replay_nonce);
    }

    if (op->fetching_nonce) {
        op->fetching_nonce = 0;
        if (!resp->ok || c->nnonces == 0) {
            if (resp->ok) {
                acme_err_set(&err, ACME_ERR_BADRESPONSE, "newNonce %s: no Replay-Nonce header",
                             c->dir.new_nonce);
            } else {
                acme_client_resp_error(resp, "cannot reach the CA for a nonce", &err);
            }
            op_fail(op, &err);
            return;
        }
        op_send(op);
        return;
    }

    if (resp->ok && resp->status >= 200 && resp->status < 300) {
        if (acme_urlpolicy_check_resp(&c->urls, c->loop, resp, &err) != 0) {
            acme_err_prefix(&err, "%s %.250s", op->get ? "GET" : "POST", op->url);
            op_fail(op, &err);
            return;
        }
        cb = op->cb;
        cbarg = op->arg;
        op_unlink(op);
        op_free(op);
        cb(cbarg, resp, NULL);
        return;
    }

    if (resp->ok && !op->get && resp->status == 400 && resp_is_problem(resp, "badNonce")
        && op->nonce_retries < NONCE_RETRIES)
    {
        op->nonce_retries++;
        c->stats.bad_nonce_retries++;
        acme_log(c->loop, ACME_LOG_DEBUG, "acme: badNonce from %s, retrying", op->url);
        op_start(op);
        return;
    }

    if (resp->ok && !op->get && op->jwk_key == NULL && op->account_retries == 0
        && (resp->status == 400 || resp->status == 401 || resp->status == 403)
        && resp_is_problem(resp, "accountDoesNotExist"))
    {
        /* the CA forgot us (or the account was removed): register again and retry once */
        op->account_retries++;
        acme_log(c->loop, ACME_LOG_WARN, "acme: %s no longer knows account %s, registering again",
                 c->directory_url, c->account_url ? c->account_url : "-");
        free(c->account_url);
        c->account_url = NULL;
        c->reregister = 1;
        c->state = CL_NONE;
        if (acme_client_ready(c, op_account_ready, op, &err) != 0) {
            op_fail(op, &err);
        }
        return;
    }

    if (resp->ok && (resp->status == 404 || resp_is_problem(resp, "invalidProfile"))
        && (resp->status != 404 || dir_has_url(&c->dir, op->url)))
    {
        c->dir_stale = 1;       /* the CA changed its directory or its profiles */
    }
    if (resp->ok && !op->get && op->jwk_key == NULL && op->account_retries == 0 && resp->status == 403
        && resp_is_problem(resp, "unauthorized"))
    {
        snprintf(what, sizeof(what), "%s %.250s", op->get ? "GET" : "POST", op->url);
        acme_client_resp_error(resp, what, &err);
        if (err_deactivated(&err)) {
            acme_err_t  e2;

            op->account_retries++;
            if (client_deactivated(c, &err, &e2) != 0) {
                op_fail(op, &e2);
                return;
            }
            c->state = CL_NONE;
            if (acme_client_ready(c, op_account_ready, op, &err) != 0) {
                op_fail(op, &err);
            }
            return;
        }
    }
    if (resp->ok && !op->get && op->jwk_key == NULL && resp_is_problem(resp, "userActionRequired")) {
        op_user_action(op, resp);
        return;
    }
    snprintf(what, sizeof(what), "%s %.250s", op->get ? "GET" : "POST", op->url);
    acme_client_resp_error(resp, what, &err);
    op_fail(op, &err);
}

/* The terms were agreed to again: the request that met userActionRequired goes once more. */
static void
op_tos_agreed(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    op_t        *op = arg;
    acme_err_t   e;

    (void) resp;
    if (err != NULL) {
        e = *err;
        acme_err_prefix(&e, "agreeing to the terms of service of %s again", op->c->directory_url);
        op_fail(op, &e);
        return;
    }
    acme_log(op->c->loop, ACME_LOG_NOTICE, "acme: agreed to the terms of service of %s again",
             op->c->directory_url);
    op_start(op);
}

/*
 * userActionRequired (RFC 8555 7.3.3), typically new terms of service: with accept_terms_of_service the
 * account agrees again (once per request), else the error names the instance URL for the admin.
 */
static void
op_user_action(op_t *op, const acme_http_resp_t *resp)
{
    acme_client_t  *c = op->c;
    op_t           *agree;
    acme_err_t      err;
    char            what[300], *instance = problem_instance(resp), *payload;
    size_t          n;
    json_t         *o;

    acme_log(c->loop, ACME_LOG_NOTICE, "acme: %s asks for an action on account %s: %s", c->directory_url,
             c->account_url ? c->account_url : "-", instance ? instance : "(no instance URL given)");
    if (c->agree_tos && op->tos_retries == 0 && c->account_url != NULL) {
        op->tos_retries++;
        /* the contacts too: some CAs (Pebble) take an update without them for an empty one */
        o = json_pack("{s:b}", "termsOfServiceAgreed", 1);
        if (o != NULL && c->ncontact > 0) {
            json_object_set_new(o, "contact", contact_json(c->contact, c->ncontact));
        }
        payload = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        agree = payload ? op_new(c, c->account_url, payload, NULL, op_tos_agreed, op) : NULL;
        free(payload);
        if (agree != NULL) {
            free(instance);
            op_start(agree);
            return;
        }
    }
    snprintf(what, sizeof(what), "POST %.250s", op->url);
    acme_client_resp_error(resp, what, &err);
    n = strlen(err.msg);
    snprintf(err.msg + n, sizeof(err.msg) - n, " (the CA asks for an action at %s%s)",
             instance ? instance : "its website",
             c->agree_tos ? "" : "; if these are new terms of service, read them and set "
                                 "accept_terms_of_service to agree");
    err.kind = ACME_ERR_CONFIG;
    free(instance);
    op_fail(op, &err);
}

static void
op_send(op_t *op)
{
    acme_client_t  *c = op->c;
    char           *jws, *nonce;
    acme_err_t      err;

    /* URLs from the store (a resumed order, the account) obey the same rules as the CA's answers */
    if (acme_urlpolicy_check(&c->urls, c->loop, "request", op->url, &err) != 0) {
        op_fail(op, &err);
        return;
    }

    if (op->get) {
        op->req = client_send(c, &c->http, "GET", op->url, NULL, op->accept, op_resp, op, &err);
        if (op->req == NULL) {
            op_fail(op, &err);
        }
        return;
    }
    nonce = nonce_pop(c);
    if (nonce == NULL) {
        op_start(op);
        return;
    }
    if (op->jwk_key != NULL) {
        jws = acme_jws_sign(op->jwk_key, NULL, nonce, op->url, op->payload, &err);
    } else {
        jws = acme_jws_sign(c->key, c->account_url, nonce, op->url, op->payload, &err);
    }
    free(nonce);
    if (jws == NULL) {
        op_fail(op, &err);
        return;
    }
    op->req = client_send(c, &c->http, "POST", op->url, jws, op->accept, op_resp, op, &err);
    free(jws);
    if (op->req == NULL) {
        op_fail(op, &err);
    }
}

static void
op_start(op_t *op)
{
    acme_client_t  *c = op->c;
    acme_err_t      err;

    if (op->get || c->nnonces > 0) {
        op_send(op);
        return;
    }
    if (!c->have_dir) {
        acme_err_set(&err, ACME_ERR_INTERNAL, "no directory for %s", c->directory_url);
        op_fail(op, &err);
        return;
    }
    op->fetching_nonce = 1;
    op->req = client_send(c, &c->http, "HEAD", c->dir.new_nonce, NULL, NULL, op_resp, op, &err);
    if (op->req == NULL) {
        op_fail(op, &err);
    }
}

int
acme_client_post(acme_client_t *c, const char *url, const char *payload, const char *accept,
    acme_client_resp_pt cb, void *arg, acme_err_t *err)
{
    op_t *op;

    if (c->state != CL_READY || c->key == NULL || c->account_url == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "ACME client for %s is not ready", c->directory_url);
        return -1;
    }
    op = op_new(c, url, payload, accept, cb, arg);
    if (op == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    op_start(op);
    return 0;
}

/* ---- account operations ---- */

typedef struct {
    acme_client_t       *c;
    acme_client_done_pt  done;
    void                *arg;
    EVP_PKEY            *new_key;
} acct_op_t;

static acct_op_t *
acct_op_new(acme_client_t *c, acme_client_done_pt done, void *arg)
{
    acct_op_t *a = calloc(1, sizeof(*a));

    if (a != NULL) {
        a->c = c;
        a->done = done;
        a->arg = arg;
    }
    return a;
}

static void
acct_finish(acct_op_t *a, const acme_err_t *err)
{
    acme_client_done_pt  done = a->done;
    void                *arg = a->arg;

    EVP_PKEY_free(a->new_key);
    free(a);
    done(arg, err);
}

static void
acct_simple_done(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    (void) resp;
    acct_finish(arg, err);
}

static int
acct_post(acme_client_t *c, const char *url, json_t *payload, acct_op_t *a, acme_client_resp_pt cb,
    acme_err_t *err)
{
    char  *s;
    int    rc;

    if (a == NULL) {
        json_decref(payload);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    s = payload ? json_dumps(payload, JSON_COMPACT) : NULL;
    json_decref(payload);
    if (s == NULL) {
        free(a);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    rc = acme_client_post(c, url, s, NULL, cb, a, err);
    free(s);
    if (rc != 0) {
        EVP_PKEY_free(a->new_key);
        free(a);
    }
    return rc;
}

int
acme_client_account_find(acme_client_t *c, acme_client_done_pt done, void *arg, acme_err_t *err)
{
    /* forget the stored URL so ready() asks the CA (onlyReturnExisting) for this key's account */
    if (c->state == CL_READY) {
        c->state = CL_NONE;
    }
    c->reregister = 1;
    return acme_client_ready(c, done, arg, err);
}

static void
update_done(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acct_op_t   *a = arg;
    acme_err_t   e;

    (void) resp;
    if (err == NULL && account_save(a->c, &e) != 0) {
        acct_finish(a, &e);
        return;
    }
    acct_finish(a, err);
}

int
acme_client_account_update(acme_client_t *c, const char *const *contact, size_t n,
    acme_client_done_pt done, void *arg, acme_err_t *err)
{
    size_t   i;
    char   **nc;

    nc = calloc(n ? n : 1, sizeof(char *));
    if (nc == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    for (i = 0; i < n; i++) {
        nc[i] = contact_uri(contact[i]);
    }
    for (i = 0; i < c->ncontact; i++) {
        free(c->contact[i]);
    }
    free(c->contact);
    c->contact = nc;
    c->ncontact = n;
    return acct_post(c, c->account_url,
                     json_pack("{s:o}", "contact", contact_json(c->contact, c->ncontact)),
                     acct_op_new(c, done, arg), update_done, err);
}

/* accounts/<ca>/rollover.key: the new key, stored before keyChange is sent (malloc'd) */
static char *
rollover_key_name(acme_client_t *c)
{
    return acme_sprintf("accounts/%s/rollover.key", c->ca_id);
}

/* The CA has the new key: it becomes the account key; the pending copy goes. */
static void
rollover_adopt(acct_op_t *a, const char *how)
{
    acme_client_t  *c = a->c;
    acme_err_t      e;
    char           *k;

    EVP_PKEY_free(c->key);
    c->key = a->new_key;
    a->new_key = NULL;
    if (account_save(c, &e) != 0) {
        acme_err_prefix(&e, "key rollover succeeded at the CA but the new key could not be stored (it is "
                        "in the store as accounts/%s/rollover.key)", c->ca_id);
        acct_finish(a, &e);
        return;
    }
    k = rollover_key_name(c);
    if (k != NULL) {
        acme_store_del(c->store, k, NULL);
        free(k);
    }
    acme_log(c->loop, ACME_LOG_NOTICE, "acme: rolled over the key of account %s%s", c->account_url, how);
    acct_finish(a, NULL);
}

/* After a lost keyChange answer: the account of the new key, if the CA made the change. */
static void
rollover_find_done(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acct_op_t      *a = arg;
    acme_client_t  *c = a->c;
    acme_err_t      e;
    char           *k;

    if (err == NULL && resp->location != NULL && c->account_url != NULL
        && strcmp(resp->location, c->account_url) == 0)
    {
        rollover_adopt(a, " (its answer was lost; the account was found with the new key)");
        return;
    }
    if (err != NULL && strstr(err->msg, "accountDoesNotExist") != NULL) {
        /* the CA never made the change: the old key stays */
        k = rollover_key_name(c);
        if (k != NULL) {
            acme_store_del(c->store, k, NULL);
            free(k);
        }
        acme_err_set(&e, ACME_ERR_NETWORK, "key rollover: the answer was lost and the CA still has the "
                     "old key; try again");
        acct_finish(a, &e);
        return;
    }
    acme_err_set(&e, err ? err->kind : ACME_ERR_BADRESPONSE, "key rollover: the answer was lost, and looking "
                 "the account up with the new key failed (%s); the new key is kept in the store as "
                 "accounts/%s/rollover.key", err ? err->msg : "another account URL", c->ca_id);
    acct_finish(a, &e);
}

static void
rollover_done(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    acct_op_t      *a = arg;
    acme_client_t  *c = a->c;
    op_t           *op;
    acme_err_t      e;

    (void) resp;
    if (err != NULL && err->kind == ACME_ERR_NETWORK) {
        /* the CA may have made the change: ask it for the new key's account */
        acme_log(c->loop, ACME_LOG_WARN, "acme: key rollover of account %s: %s; looking the account up "
                 "with the new key", c->account_url, err->msg);
        op = op_new(c, c->dir.new_account, "{\"onlyReturnExisting\":true}", NULL, rollover_find_done, a);
        if (op != NULL) {
            op->jwk_key = a->new_key;
            EVP_PKEY_up_ref(a->new_key);
            op_start(op);
            return;
        }
        acme_err_set(&e, ACME_ERR_INTERNAL, "out of memory");
        acct_finish(a, &e);
        return;
    }
    if (err != NULL) {
        char *k = rollover_key_name(c);

        if (k != NULL) {
            acme_store_del(c->store, k, NULL);
            free(k);
        }
        acct_finish(a, err);
        return;
    }
    rollover_adopt(a, "");
}

/* The new key goes into the store before the CA hears of it: an answer lost in transit loses no key. */
static int
rollover_key_store(acme_client_t *c, EVP_PKEY *key, acme_err_t *err)
{
    char    *pem, *k;
    size_t   len;
    int      rc;

    pem = acme_key_to_pem(key, &len, err);
    k = rollover_key_name(c);
    if (pem == NULL || k == NULL) {
        if (pem != NULL) {
            acme_free_secret(pem, len);
        }
        free(k);
        if (k == NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        }
        return -1;
    }
    rc = acme_store_put(c->store, k, pem, len, 1, err);
    acme_free_secret(pem, len);
    free(k);
    if (rc != 0) {
        acme_err_prefix(err, "key rollover: storing the new key first");
    }
    return rc;
}

int
acme_client_account_rollover(acme_client_t *c, const acme_keyspec_t *ks, acme_client_done_pt done,
    void *arg, acme_err_t *err)
{
    acct_op_t  *a;
    json_t     *inner_payload, *old_jwk, *inner;
    char       *s;

    if (c->state != CL_READY || c->dir.key_change == NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "the CA %s offers no keyChange", c->directory_url);
        return -1;
    }
    a = acct_op_new(c, done, arg);
    if (a == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    a->new_key = acme_key_generate(ks, err);
    old_jwk = a->new_key ? acme_jwk(c->key, err) : NULL;
    if (old_jwk == NULL) {
        EVP_PKEY_free(a->new_key);
        free(a);
        return -1;
    }
    inner_payload = json_pack("{s:s, s:o}", "account", c->account_url, "oldKey", old_jwk);
    s = inner_payload ? json_dumps(inner_payload, JSON_COMPACT) : NULL;
    json_decref(inner_payload);
    inner = s ? acme_jws_sign_json(a->new_key, NULL, NULL, c->dir.key_change, s, err) : NULL;
    free(s);
    if (inner == NULL || rollover_key_store(c, a->new_key, err) != 0) {
        json_decref(inner);
        EVP_PKEY_free(a->new_key);
        free(a);
        return -1;
    }
    return acct_post(c, c->dir.key_change, inner, a, rollover_done, err);
}

int
acme_client_account_deactivate(acme_client_t *c, acme_client_done_pt done, void *arg, acme_err_t *err)
{
    return acct_post(c, c->account_url, json_pack("{s:s}", "status", "deactivated"),
                     acct_op_new(c, done, arg), acct_simple_done, err);
}

int
acme_client_revoke(acme_client_t *c, X509 *leaf, EVP_PKEY *cert_key, int reason,
    acme_client_done_pt done, void *arg, acme_err_t *err)
{
    unsigned char  *der = NULL;
    int             len;
    char           *b64, *s;
    json_t         *o;
    op_t           *op;
    acct_op_t      *a;

    if (c->dir.revoke_cert == NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "the CA %s offers no revokeCert", c->directory_url);
        return -1;
    }
    len = i2d_X509(leaf, &der);
    if (len <= 0) {
        acme_err_ssl(err, "cannot encode the certificate");
        return -1;
    }
    b64 = acme_b64url_encode(der, (size_t) len);
    OPENSSL_free(der);
    o = b64 ? json_pack("{s:s}", "certificate", b64) : NULL;
    free(b64);
    if (o != NULL && reason >= 0) {
        json_object_set_new(o, "reason", json_integer(reason));
    }
    s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    a = s ? acct_op_new(c, done, arg) : NULL;
    op = a ? op_new(c, c->dir.revoke_cert, s, NULL, acct_simple_done, a) : NULL;
    free(s);
    if (op == NULL) {
        free(a);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    if (cert_key != NULL) {
        op->jwk_key = cert_key;
        EVP_PKEY_up_ref(cert_key);
    }
    op_start(op);
    return 0;
}

/* ---- renewalInfo ---- */

typedef struct {
    acme_client_ari_pt  cb;
    void               *arg;
} ari_op_t;

static void
ari_done(void *arg, const acme_http_resp_t *resp, const acme_err_t *err)
{
    ari_op_t             *a = arg;
    acme_renewal_info_t   ri;
    acme_err_t            e;

    if (err != NULL) {
        a->cb(a->arg, NULL, err->retry_after, err);
        free(a);
        return;
    }
    memset(&ri, 0, sizeof(ri));
    if (acme_renewal_info_parse(resp->body.data, resp->body.len, &ri, &e) != 0) {
        acme_err_prefix(&e, "renewalInfo");
        a->cb(a->arg, NULL, resp->retry_after, &e);
    } else {
        a->cb(a->arg, &ri, resp->retry_after, NULL);
    }
    acme_renewal_info_free(&ri);
    free(a);
}

int
acme_client_renewal_info(acme_client_t *c, X509 *leaf, acme_client_ari_pt cb, void *arg, acme_err_t *err)
{
    char      *id, *url;
    ari_op_t  *a;
    op_t      *op;
    size_t     n;

    if (!c->have_dir || c->dir.renewal_info == NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "the CA %s offers no renewalInfo", c->directory_url);
        return -1;
    }
    id = acme_ari_cert_id(leaf, err);
    if (id == NULL) {
        return -1;
    }
    n = strlen(c->dir.renewal_info);
    url = acme_sprintf("%s%s%s", c->dir.renewal_info,
                       n && c->dir.renewal_info[n - 1] == '/' ? "" : "/", id);
    free(id);
    a = calloc(1, sizeof(*a));
    op = (url && a) ? op_new(c, url, NULL, "application/json", ari_done, a) : NULL;
    free(url);
    if (op == NULL) {
        free(a);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    a->cb = cb;
    a->arg = arg;
    op->owner = arg;
    op->drop = free;
    op->get = 1;
    op_start(op);
    return 0;
}
