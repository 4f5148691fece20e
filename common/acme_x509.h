/* Certificates as the CA returns them: PEM chains, their facts, their checks, and chain choice. */
#ifndef ACME_X509_H
#define ACME_X509_H

#include <time.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/evp.h>
#include "acme_err.h"
#include "acme_ident.h"
#include "acme_key.h"

/* Split a PEM bundle into certificates (leaf first, as given). Refuses empty bundles, non-certificate
 * PEM blocks and trailing garbage that looks like a truncated block. */
int acme_pem_chain_parse(const char *pem, size_t len, STACK_OF(X509) **chain, acme_err_t *err);
/* Serialise a chain back to PEM, malloc'd. */
char *acme_pem_chain_string(STACK_OF(X509) *chain, size_t *len, acme_err_t *err);
/* One certificate as PEM, malloc'd (keys: acme_key_to_pem). */
char *acme_x509_to_pem(X509 *cert, size_t *len, acme_err_t *err);
void acme_chain_free(STACK_OF(X509) *chain);

typedef struct {
    time_t  not_before;
    time_t  not_after;
    char   *issuer_cn;       /* may be NULL */
    char   *serial_hex;      /* lowercase hex */
    char  **names;           /* subjectAltName DNS names and IP addresses (text) */
    size_t  nnames;
} acme_cert_info_t;

int  acme_cert_info(X509 *cert, acme_cert_info_t *info, acme_err_t *err);
void acme_cert_info_free(acme_cert_info_t *info);

/*
 * Everything we demand before storing or serving a new certificate: the leaf's public key is key's,
 * the leaf covers every identifier, now is within the leaf's validity, each certificate in the chain
 * was issued (name and signature) by the next one. 0 ok, -1 with a message naming what is wrong.
 */
int acme_chain_check(STACK_OF(X509) *chain, EVP_PKEY *key, const acme_ident_t *ids, size_t n,
    time_t now, acme_err_t *err);

/* 1 when the issuer CN of the chain's top certificate (the last one, closest to the root) equals name:
 * the preferred-chain rule of certbot and nginx-acme. */
int acme_chain_issuer_matches(STACK_OF(X509) *chain, const char *name);

/* RFC 9773 certificate identifier: base64url(AKI keyIdentifier) "." base64url(serial DER content). */
char *acme_ari_cert_id(X509 *leaf, acme_err_t *err);

/* A self-signed fallback certificate (served until a real one exists) for these names. */
int acme_selfsigned(const char *const *names, size_t n, const acme_keyspec_t *ks, X509 **cert,
    EVP_PKEY **key, acme_err_t *err);
/* The same with the caller's key (not taken over): one key can serve many fallbacks. */
int acme_selfsigned_key(const char *const *names, size_t n, EVP_PKEY *key, X509 **cert, acme_err_t *err);

/* Helpers shared by the certificate and CSR builders (acme_csr.c, acme_tlsalpn.c). */
/* IPv4 or IPv6 text to 4 or 16 bytes in out; returns the length, 0 when s is not an IP address. */
size_t acme_ip_from_text(const char *s, unsigned char out[16]);
/* Append a dNSName (type DNS) or an iPAddress (type IP, text form) to a GeneralNames stack. */
int acme_san_push(GENERAL_NAMES *gens, acme_ident_type_t type, const char *value, acme_err_t *err);
/* Set a random positive serial number (at most 20 octets, RFC 5280 4.1.2.2). */
int acme_x509_random_serial(X509 *cert, acme_err_t *err);

#endif
