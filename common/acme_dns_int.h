/*
 * What the DNS files share (acme_dns_lookup.c, acme_dns_rfc2136.c, acme_dns_task.c): lookups with
 * ldns and the publishers' entry points. Blocking: the DNS thread only. Internal.
 */
#ifndef ACME_DNS_INT_H
#define ACME_DNS_INT_H

#include "acme_dns.h"

#include <ldns/ldns.h>

#define ACME_DNS_TTL  60

/* Where a record's value goes: the name after CNAMEs, its zone and the zone's primary (SOA MNAME). */
typedef struct {
    char  *fqdn;        /* "_acme-challenge.example.org." or a CNAME's target, absolute */
    char  *zone;        /* "example.org." */
    char  *mname;       /* "ns1.example.org." */
} acme_dns_target_t;

void acme_dns_target_free(acme_dns_target_t *t);

/* A resolver: for hostport ("HOST[:PORT]", HOST an address or, with via, a name looked up through via),
 * or the system's (/etc/resolv.conf) when hostport is NULL. recursive: RD set. */
ldns_resolver *acme_dns_resolver(const char *hostport, int default_port, int recursive, ldns_resolver *via,
    acme_err_t *err);
/* Follows CNAMEs from name and finds the zone by an SOA lookup. */
int acme_dns_find_target(ldns_resolver *res, const char *name, acme_dns_target_t *t, acme_err_t *err);

/* RFC 2136: the TSIG key can sign (configuration time). */
int acme_dns_rfc2136_check(const acme_dns_config_t *cfg, acme_err_t *err);
/* RFC 2136: add (add=1) or delete one TXT value at t->fqdn. */
int acme_dns_rfc2136_update(const acme_dns_config_t *cfg, ldns_resolver *lookup, const acme_dns_target_t *t,
    int add, const char *value, acme_err_t *err);

/* Hook: the program exists and is executable (configuration time). */
int acme_dns_hook_check(const acme_dns_config_t *cfg, acme_err_t *err);
/* Hook: runs `PROGRAM add|del FQDN VALUE` with rec's context in its environment, within the time limit;
 * what it prints is appended to *out. */
int acme_dns_hook_run(const acme_dns_config_t *cfg, const acme_dns_record_t *rec, const acme_dns_target_t *t,
    int add, atomic_int *stop, char **out, acme_err_t *err);

/* acme-dns: a URL and at least one account (configuration time). */
int acme_dns_acmedns_check(const acme_dns_config_t *cfg, acme_err_t *err);
/* acme-dns: t->fqdn must be the account's fulldomain (the CNAME in place); POST /update. */
int acme_dns_acmedns_update(const acme_dns_config_t *cfg, const acme_dns_record_t *rec,
    const acme_dns_target_t *t, acme_err_t *err);

/* dns-persist-01: a read-only query finds a TXT record at rec->name that authorizes the account
 * (rec->value) for one of rec->issuers. until, txt (may be NULL): its persistUntil (0: none) and its value
 * (malloc'd). A record whose persistUntil has passed does not count; the error says so. */
int acme_dns_persist_check(const acme_dns_config_t *cfg, const acme_dns_record_t *rec, long long *until,
    char **txt, acme_err_t *err);

#endif
