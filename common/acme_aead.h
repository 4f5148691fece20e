/*
 * Sealing of secret store values at rest: AES-256-GCM with a key the admin provides in a file.
 *
 * Key file: exactly 32 raw bytes, or 64 hex digits (surrounding whitespace ignored), or anything else of at
 * least 32 bytes, from which the key is derived with HKDF-SHA256 (salt "acme-store", info
 * "acme-store-aead-v1"). It must be a regular file that others cannot read or write.
 *
 * A sealed value is text:  "acme-aead-v1:" KID ":" base64url(nonce[12] || ciphertext || tag[16])
 * KID is the first 4 bytes of SHA-256("acme-store-key-id" || key) in hex, so that a value sealed with another
 * key is told apart from a damaged one. The nonce is random for every seal; the additional authenticated
 * data is the store key the value is kept under (so a sealed value cannot be moved to another key).
 *
 * Values that are not secret are authenticated instead (acme_aead_mac): HMAC-SHA256 under a subkey derived
 * from the key with HKDF-SHA256 (info "acme-store-mac-v1"), over a domain, a NUL, the name and the data.
 * The sealing key itself is unchanged, so values sealed before MACs existed still open.
 */
#ifndef ACME_AEAD_H
#define ACME_AEAD_H

#include <stddef.h>
#include "acme_err.h"

#define ACME_AEAD_MAGIC      "acme-aead-v1:"
#define ACME_AEAD_MAGIC_LEN  13

typedef struct acme_aead_key_s acme_aead_key_t;

/* Reads the key file. NULL with err (ACME_ERR_CONFIG naming the file, never its contents). */
acme_aead_key_t *acme_aead_key_load(const char *file, acme_err_t *err);
/* A key from raw key material (32 bytes used as is, other lengths >= 32 derived as for a file). */
acme_aead_key_t *acme_aead_key_from_bytes(const void *data, size_t len, acme_err_t *err);
void             acme_aead_key_free(acme_aead_key_t *k);
/* The 8 hex digits identifying the key (not secret). */
const char      *acme_aead_key_id(const acme_aead_key_t *k);

/* 1 when data looks like a sealed value (starts with ACME_AEAD_MAGIC). */
int acme_aead_is_sealed(const void *data, size_t len);
/* The KID of a sealed value into kid[9] ("" when unreadable). */
void acme_aead_sealed_kid(const void *data, size_t len, char kid[9]);

/* Seals pt under aad. *out is malloc'd, NUL-terminated text. 0 or -1. */
int acme_aead_seal(const acme_aead_key_t *k, const char *aad, const void *pt, size_t ptlen, char **out,
    size_t *outlen, acme_err_t *err);
/* Opens a sealed value; *pt is malloc'd, NUL-terminated, to be freed with acme_free_secret(*pt, *ptlen).
 * -1 with ACME_ERR_STORE: another key (naming both key ids), damaged or moved value. */
int acme_aead_open(const acme_aead_key_t *k, const char *aad, const void *sealed, size_t len, char **pt,
    size_t *ptlen, acme_err_t *err);

/* The MAC of data stored or sent under name, as text: "acme-mac-v1:" KID ":" base64url(tag[32]) into
 * out[ACME_AEAD_MAC_MAX]. domain separates uses ("store", "announce"). 0 or -1. */
#define ACME_AEAD_MAC_MAGIC      "acme-mac-v1:"
#define ACME_AEAD_MAC_MAGIC_LEN  12
#define ACME_AEAD_MAC_MAX        72
int acme_aead_mac(const acme_aead_key_t *k, const char *domain, const char *name, const void *data,
    size_t len, char out[ACME_AEAD_MAC_MAX]);
/* 0 when mac (mac_len bytes, as acme_aead_mac writes it) authenticates data under name; -1 with
 * ACME_ERR_STORE saying why (another key naming both key ids, or a forgery). */
int acme_aead_mac_check(const acme_aead_key_t *k, const char *domain, const char *name, const void *data,
    size_t len, const char *mac, size_t mac_len, acme_err_t *err);

#endif
