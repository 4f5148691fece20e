/*
 * Revocations made outside the servers (acmectl revoke), for the servers to see: the certificate's meta
 * says which serial was revoked (revoked_serial), and one small key, ACME_REVOCATIONS_KEY, lists the latest
 * revocations, so a manager polls one key instead of every certificate's meta.
 */
#ifndef ACME_REVOCATION_H
#define ACME_REVOCATION_H

#include <time.h>
#include "acme_store.h"

#define ACME_REVOCATIONS_KEY  "revocations.json"
#define ACME_REVOCATIONS_MAX  32        /* entries kept: the newest */

/* Appends {"name", "serial", "at"} to ACME_REVOCATIONS_KEY (the oldest dropped beyond the maximum).
 * 0, -1 with err. */
int acme_revocation_record(acme_store_t *st, const char *name, const char *serial, time_t at,
    acme_err_t *err);

/* The names the key's text lists, malloc'd (acme_store_list_free); 0, -1 not that document. */
int acme_revocation_names(const char *text, size_t len, char ***names, size_t *n);

/* The serial of the stored certificate's leaf (lowercase hex, malloc'd): 0, 1 none stored, -1 with err. */
int acme_revocation_stored_serial(acme_store_t *st, const char *name, char **serial, acme_err_t *err);

#endif
