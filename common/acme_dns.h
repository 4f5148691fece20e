/*
 * DNS validation: the TXT records of dns-01 (RFC 8555 8.4) and the publishers that put them in DNS.
 *
 * A publisher adds and removes one TXT value at a name; the rest is common to every publisher: the
 * record's name (`_acme-challenge.<domain>`, a CNAME there followed), the zone (SOA lookup), and the
 * propagation check (every authoritative server of the zone answers the value). All of it blocks, so it
 * runs in a thread of its own (acme_dns_task_*), whose end the event loop polls, as key generation does.
 *
 * Publishers: RFC 2136 dynamic update with TSIG (acme_dns_rfc2136.c). Later: a hook program, acme-dns.
 */
#ifndef ACME_DNS_H
#define ACME_DNS_H

#include <stdatomic.h>
#include "acme_err.h"
#include "acme_loop.h"

#define ACME_DNS_PROPAGATION_DEFAULT  300     /* seconds */

typedef enum {
    ACME_DNS_NONE = 0,
    ACME_DNS_RFC2136
} acme_dns_method_t;

/* A TSIG key (RFC 8945). secret: base64, as in BIND's key files; never logged. */
typedef struct {
    char  *name;            /* "acme-key." */
    char  *algorithm;       /* "hmac-sha256", "hmac-sha384" or "hmac-sha512" */
    char  *secret;
} acme_tsig_key_t;

/*
 * How DNS records are published and checked; filled at configuration time, read-only afterwards (the DNS
 * thread reads it), owned by the caller and alive as long as any job that uses it.
 */
typedef struct {
    acme_dns_method_t  method;
    char              *resolver;        /* "HOST[:PORT]" for the lookups; NULL: /etc/resolv.conf */
    char              *server;          /* RFC 2136: "HOST[:PORT]" of the updates; NULL: the SOA MNAME */
    acme_tsig_key_t    tsig;            /* RFC 2136 */
    long               propagation_timeout;     /* seconds; 0: ACME_DNS_PROPAGATION_DEFAULT */
} acme_dns_config_t;

/* "rfc2136", for messages and status. */
const char *acme_dns_method_name(acme_dns_method_t m);

/*
 * Reads a TSIG key file: BIND's `key "NAME" { algorithm hmac-sha256; secret "BASE64"; };` (what
 * tsig-keygen and knotc make; the first key of the file), or one line `[ALGORITHM:]NAME:SECRET` (dig -y).
 * err names the file and what is wrong, never the secret. 0 or -1.
 */
int acme_tsig_key_load(const char *path, acme_tsig_key_t *key, acme_err_t *err);
int acme_tsig_key_parse(const char *text, const char *what, acme_tsig_key_t *key, acme_err_t *err);
/* Wipes the secret. */
void acme_tsig_key_free(acme_tsig_key_t *key);
void acme_dns_config_free(acme_dns_config_t *cfg);
/* A deep copy (the secret too). 0, or -1 out of memory. */
int acme_dns_config_copy(acme_dns_config_t *dst, const acme_dns_config_t *src);
/* Checks a config before use: method, TSIG for RFC 2136, server and resolver addresses. */
int acme_dns_config_check(const acme_dns_config_t *cfg, acme_err_t *err);

/* The dns-01 TXT value: base64url(SHA-256(key authorization)), malloc'd; NULL out of memory. */
char *acme_dns01_value(const char *key_authz);
/* "_acme-challenge.<domain>" for a DNS identifier (a wildcard's "*." dropped), malloc'd. */
char *acme_dns01_name(const char *domain);

/* ---- blocking operations (the DNS thread) ---- */

/* stop: when it becomes non-zero, waits end early with an error. */
int acme_dns_publish(const acme_dns_config_t *cfg, const char *name, const char *value,
    atomic_int *stop, acme_err_t *err);
int acme_dns_unpublish(const acme_dns_config_t *cfg, const char *name, const char *value, acme_err_t *err);

/* ---- off the event loop ---- */

typedef struct acme_dns_task_s acme_dns_task_t;

typedef struct {
    char  *name;        /* where the value was asked for: "_acme-challenge.<domain>" */
    char  *value;
} acme_dns_record_t;

/* err NULL: done. Called from the loop, never from inside start; the task is gone when this runs. */
typedef void (*acme_dns_done_pt)(void *arg, const acme_err_t *err);

/*
 * publish: adds name=value and waits for propagation; otherwise removes every record of recs (all
 * attempted; err is the first failure). cfg and recs are copied.
 */
acme_dns_task_t *acme_dns_task_start(acme_loop_t *loop, const acme_dns_config_t *cfg, int publish,
    const acme_dns_record_t *recs, size_t nrecs, acme_dns_done_pt done, void *arg, acme_err_t *err);
/* done is not called; the thread is told to stop and left to end (after its current query) on its own. */
void acme_dns_task_cancel(acme_dns_task_t *t);

#endif
