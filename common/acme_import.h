/*
 * Taking over nginx-acme's state (nginx's official acme module): its account and certificates become the
 * store's, so that switching modules places no order and registers no account.
 *
 * nginx-acme keeps, at the top of an issuer's state_path:
 *   account.key                  the account key (PEM, PKCS#8)
 *   account.url                  the account URL (only when nginx-acme created the account)
 *   <first name>-<hash>.crt      a certificate chain, leaf first, as the CA sent it
 *   <first name>-<hash>.key      its key (PEM, PKCS#8; absent with key=FILE)
 * <hash> is a SipHash of nginx-acme's internal order structure, so a certificate is matched to the
 * configuration by its names (subjectAltName) and key type instead.
 */
#ifndef ACME_IMPORT_H
#define ACME_IMPORT_H

#include <stddef.h>
#include "acme_err.h"
#include "acme_ident.h"
#include "acme_key.h"
#include "acme_loop.h"
#include "acme_store.h"

/* The key in the state_path that records a takeover: its presence means it was done (delete it to run it
 * again). */
#define ACME_IMPORT_MARKER  "nginx-acme.imported"

/* A certificate the server is configured with. */
typedef struct {
    const char          *name;      /* store name (certs/<name>) */
    const acme_ident_t  *ids;
    size_t               nids;
    acme_keyspec_t       keyspec;
    const char          *ca;        /* directory URL of its first issuer (meta.json's "ca") */
    int                  imported;  /* out: 1 when a certificate was taken over for it */
} acme_import_cert_t;

/* The issuer whose state_path holds the files (ca NULL: no account is taken over). */
typedef struct {
    const char          *ca;        /* directory URL */
    const char *const   *contact;
    size_t               ncontact;
} acme_import_account_t;

/*
 * Reads nginx-acme's files from src (a filesystem store on the state_path; none of them is changed or
 * deleted; shown names it in messages) and commits what it takes over into dst (each item in one atomic
 * commit): the account (unless dst has one for that CA) and, for each configured certificate whose names
 * and key type a valid certificate there matches (the newest of several), its chain and key (unless dst
 * has one). Logs one line per item taken over and per file skipped, and why. Then writes
 * ACME_IMPORT_MARKER into src (ours, beside nginx-acme's files), so it runs once. Nothing found, or the
 * marker present: 0 and nothing done. A file of src that cannot be read (a link) is skipped and logged.
 * Returns the number of items taken over, -1 with err when a store failed (nothing marked: the next
 * start tries again).
 */
int acme_import_nginx_acme(acme_loop_t *loop, acme_store_t *src, const char *shown, acme_store_t *dst,
    const acme_import_account_t *account, acme_import_cert_t *certs, size_t ncerts, acme_err_t *err);

/*
 * The pieces every import shares (nginx-acme's above, certbot's and mod_md's in acmectl).
 *
 * A certificate another tool issued, checked for the store: acme_import_check parses chain (PEM, leaf
 * first) and key (PEM), demands that the key is the leaf's, that the leaf is valid at now and that the
 * chain chains (acme_chain_check, for the leaf's own names), and fills it: the chain and key re-serialised
 * (nothing but the certificates and the key comes along), the leaf's names as identifiers (first: that
 * name first, when the leaf has it), its key type, validity, serial and ARI id. 0 ok, 1 not acceptable
 * (why in err), -1 out of memory. Free with acme_import_item_free.
 */
typedef struct {
    char            *chain;
    size_t           chain_len;
    char            *key;           /* secret */
    size_t           key_len;
    acme_ident_t    *ids;
    size_t           nids;
    acme_keyspec_t   keyspec;
    time_t           not_before;
    time_t           not_after;
    char            *serial;        /* lowercase hex */
    char            *ari_id;        /* may be NULL */
    char            *issuer_cn;     /* of the leaf, may be NULL */
} acme_import_item_t;

int  acme_import_check(const char *chain, size_t chain_len, const char *key, size_t key_len, const char *first,
    time_t now, acme_import_item_t *it, acme_err_t *err);
void acme_import_item_free(acme_import_item_t *it);

/*
 * Stores a checked certificate as certs/<name> (chain, key and meta.json in one commit) for the identifiers
 * ids and key type ks, issued by the CA with directory URL ca, unless the store has a certificate of that
 * name. 1 stored, 0 the store has one (nothing written), -1 with err.
 */
int acme_import_store_cert(acme_store_t *dst, const char *name, const acme_ident_t *ids, size_t nids,
    const acme_keyspec_t *ks, const char *ca, const acme_import_item_t *it, acme_err_t *err);

/*
 * Stores an account of the CA with directory URL ca: its key (any type the client signs with), its URL
 * (NULL: the client looks the account up by its key) and contacts, as accounts/<ca-id>/ in one commit,
 * unless the store has an account for that CA (then *same, when not NULL, says whether it has this key).
 * 1 stored, 0 the store has one (nothing written), -1 with err (a key the client cannot sign with is one).
 */
int acme_import_store_account(acme_store_t *dst, const char *ca, EVP_PKEY *key, const char *url,
    const char *const *contact, size_t ncontact, int *same, acme_err_t *err);

#endif
