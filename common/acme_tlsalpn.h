/* TLS-ALPN-01 challenge certificates (RFC 8737). */
#ifndef ACME_TLSALPN_H
#define ACME_TLSALPN_H

#include <openssl/x509.h>
#include <openssl/evp.h>
#include "acme_err.h"
#include "acme_ident.h"

#define ACME_TLSALPN_PROTO      "acme-tls/1"
#define ACME_TLSALPN_PROTO_LEN  10
#define ACME_TLSALPN_OID        "1.3.6.1.5.5.7.1.31"

/*
 * A self-signed certificate (fresh P-256 key, short validity) with exactly one subjectAltName for the
 * identifier (dNSName, or iPAddress for IP identifiers) and the critical acmeIdentifier extension whose
 * value is the DER OCTET STRING of SHA-256(key_authz). Returns 0 and sets *cert and *key.
 */
int acme_tlsalpn_cert(const acme_ident_t *id, const char *key_authz, X509 **cert, EVP_PKEY **key,
    acme_err_t *err);

#endif
