/* ACME identifiers: DNS names and IP addresses (RFC 8555 7.1.4, RFC 8738). */
#ifndef ACME_IDENT_H
#define ACME_IDENT_H

#include <stddef.h>
#include "acme_err.h"

typedef enum { ACME_IDENT_DNS = 1, ACME_IDENT_IP = 2 } acme_ident_type_t;

typedef struct {
    acme_ident_type_t type;
    char             *value;     /* DNS: lowercase, no trailing dot; IP: canonical text form */
} acme_ident_t;

/*
 * Parse and normalise a name as the admin wrote it: an IPv4/IPv6 literal (brackets allowed for IPv6)
 * is an IP identifier, anything else must be a valid DNS name (LDH labels, optional leading "*." wildcard,
 * 1..253 bytes, labels 1..63). The result's value is malloc'd.
 */
int  acme_ident_parse(const char *s, acme_ident_t *id, acme_err_t *err);
void acme_ident_free(acme_ident_t *id);
const char *acme_ident_type_name(acme_ident_type_t t);   /* "dns" / "ip" */
/* From ACME JSON ("dns"/"ip"); -1 for other types. */
int acme_ident_type_from_name(const char *s, acme_ident_type_t *t);

/*
 * The name a TLS-ALPN-01 validator sends as SNI for this identifier: the DNS name itself, or for IP
 * addresses the reverse-DNS name (RFC 8738 section 6: "4.3.2.1.in-addr.arpa", nibbles for IPv6). malloc'd.
 */
char *acme_ident_sni(const acme_ident_t *id);
/* The identifier a TLS-ALPN-01 SNI stands for (the inverse of acme_ident_sni; reverse names only in the
 * canonical form it makes). 0, or -1 with err. */
int acme_ident_from_sni(const char *sni, acme_ident_t *id, acme_err_t *err);

/*
 * A server name as a TLS client sent it (len bytes, not NUL-terminated) in the form challenges are kept
 * under: lowercase, no trailing dot, only letters, digits, '-' and '.'. Written NUL-terminated into buf;
 * returns its length, or 0 when the name is empty, has another byte, or does not fit in size.
 */
size_t acme_sni_normalize(const char *sni, size_t len, char *buf, size_t size);

/* 1 when the DNS name is matched by the pattern (exact, or "*.example.org" covering one label). */
int acme_dns_match(const char *pattern, const char *name);

#endif
