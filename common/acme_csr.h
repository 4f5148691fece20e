/* Certificate signing requests for finalize (RFC 8555 7.4). */
#ifndef ACME_CSR_H
#define ACME_CSR_H

#include <openssl/evp.h>
#include "acme_err.h"
#include "acme_ident.h"

#define ACME_CSR_NO_CN  0x1     /* an empty subject: the names are in subjectAltName only */

/*
 * A CSR signed by key (SHA-256) with a subjectAltName extension holding every identifier (dNSName or
 * iPAddress), and CN = the first DNS identifier when it fits in 64 bytes (unless ACME_CSR_NO_CN in flags).
 * Returns base64url(DER), malloc'd.
 */
char *acme_csr_create(EVP_PKEY *key, const acme_ident_t *ids, size_t n, unsigned flags, acme_err_t *err);

#endif
