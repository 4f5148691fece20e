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

#endif
