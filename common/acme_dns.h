/*
 * DNS validation: the TXT records of dns-01 (RFC 8555 8.4) and the publishers that put them in DNS.
 *
 * A publisher adds and removes one TXT value at a name; the rest is common to every publisher: the
 * record's name (`_acme-challenge.<domain>`, a CNAME there followed), the zone (SOA lookup), and the
 * propagation check (every authoritative server of the zone answers the value). All of it blocks, so it
 * runs in a thread of its own (acme_dns_task_*), whose end the event loop polls, as key generation does.
 *
 * Publishers: RFC 2136 dynamic update with TSIG (acme_dns_rfc2136.c), a hook program the admin writes
 * (acme_dns_hook.c), an acme-dns server's HTTP API (acme_dns_acmedns.c).
 */
#ifndef ACME_DNS_H
#define ACME_DNS_H

#include <stdatomic.h>
#include <time.h>
#include "acme_err.h"
#include "acme_loop.h"

#define ACME_DNS_PROPAGATION_DEFAULT  300     /* seconds */
#define ACME_DNS_HOOK_TIMEOUT_DEFAULT 60      /* seconds */

typedef enum {
    ACME_DNS_NONE = 0,
    ACME_DNS_RFC2136,
    ACME_DNS_HOOK,
    ACME_DNS_ACMEDNS
} acme_dns_method_t;

/* One acme-dns account (the JSON of its /register answer). password: never logged. */
typedef struct {
    char  *domain;          /* the identifier it is for; NULL: every identifier (a file of one account) */
    char  *username;
    char  *password;
    char  *subdomain;
    char  *fulldomain;      /* "<subdomain>.auth.example.org": _acme-challenge.<domain> is a CNAME to it */
} acme_acmedns_account_t;

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
    char              *hook;            /* hook: the program, run as `PROGRAM add|del FQDN VALUE` */
    long               hook_timeout;    /* hook: seconds, killed then; 0: ACME_DNS_HOOK_TIMEOUT_DEFAULT */
    char              *acmedns_url;     /* acme-dns: the server's base URL ("https://auth.example.org") */
    acme_acmedns_account_t *acmedns;    /* acme-dns: the accounts of the account file */
    size_t             nacmedns;
} acme_dns_config_t;

/* "rfc2136", "hook", "acme-dns", for messages and status. */
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
/*
 * Reads an acme-dns account file: one account (`{"username", "password", "subdomain", "fulldomain", ...}`,
 * what /register answers) or, as certbot's acme-dns-auth and lego keep them, an object of accounts by
 * domain (`{"example.org": {...}, ...}`). err names the file and what is wrong, never a password.
 */
int acme_acmedns_load(const char *path, acme_dns_config_t *cfg, acme_err_t *err);
int acme_acmedns_parse(const char *text, size_t len, const char *what, acme_dns_config_t *cfg, acme_err_t *err);
/* The account for an identifier ("*." dropped): its own, else a file-wide one; NULL when none. */
const acme_acmedns_account_t *acme_acmedns_account(const acme_dns_config_t *cfg, const char *ident);
/* Checks a config before use: method, TSIG for RFC 2136, server and resolver addresses. */
int acme_dns_config_check(const acme_dns_config_t *cfg, acme_err_t *err);

/* The dns-01 TXT value: base64url(SHA-256(key authorization)), malloc'd; NULL out of memory. */
char *acme_dns01_value(const char *key_authz);
/* "_acme-challenge.<domain>" for a DNS identifier (a wildcard's "*." dropped), malloc'd. */
char *acme_dns01_name(const char *domain);
/*
 * dns-account-01 (draft-ietf-acme-dns-account-label): "_<label>._acme-challenge.<domain>", label the
 * lower-case base32 (RFC 4648, 16 characters) of the first 10 bytes of SHA-256(account URL); malloc'd.
 * The value is dns-01's.
 */
char *acme_dns_account01_name(const char *domain, const char *account_url);

/* dns-persist-01 (draft-ietf-acme-dns-persist): "_validation-persist.<domain>" ("*." dropped), malloc'd. */
char *acme_dns_persist_name(const char *domain);
/* The record's value: "<issuer>; accounturi=<url>[; policy=wildcard][; persistUntil=<until>]" (until 0:
 * none), malloc'd. */
char *acme_dns_persist_value(const char *issuer, const char *accounturi, int wildcard, long long until);
/* 1 when TXT value txt authorizes accounturi for one of issuers (RFC 8659 syntax; a wildcard needs
 * policy=wildcard; persistUntil not passed at now; *until: its persistUntil or 0); 0 otherwise, why says
 * what is wrong with a record of one of issuers ("" for another CA's). */
int acme_dns_persist_match(const char *txt, char *const *issuers, size_t nissuers, const char *accounturi,
    int wildcard, time_t now, long long *until, char *why, size_t whylen);

/* A TXT record to publish or remove. */
typedef struct {
    char  *name;        /* where the value was asked for: "_acme-challenge.<domain>" */
    char  *value;
    char  *ident;       /* the identifier ("*.example.org"), for hooks, accounts, messages; NULL: from name */
    char  *cert;        /* the certificate's name, for hooks; may be NULL */
    char  *type;        /* the challenge type, for hooks; NULL: "dns-01" */
    char  *issuers;     /* dns-persist-01: the challenge's issuer-domain-names, space-separated (value:
                           the account URL; name: "_validation-persist.<domain>"; checked, not published) */
} acme_dns_record_t;

/* Frees the strings of rec (not rec itself). */
void acme_dns_record_clear(acme_dns_record_t *rec);
/* A deep copy. 0, or -1 out of memory (dst cleared). */
int acme_dns_record_copy(acme_dns_record_t *dst, const acme_dns_record_t *src);

/* ---- blocking operations (the DNS thread) ---- */

/*
 * Adds (add=1, then waits for propagation) or removes rec's value. stop: when it becomes non-zero, waits
 * end early with an error (a hook is killed). out: what a hook printed, appended (malloc'd, may be NULL).
 */
int acme_dns_publish_record(const acme_dns_config_t *cfg, const acme_dns_record_t *rec, int add,
    atomic_int *stop, char **out, acme_err_t *err);
/* stop: when it becomes non-zero, waits end early with an error. */
int acme_dns_publish(const acme_dns_config_t *cfg, const char *name, const char *value,
    atomic_int *stop, acme_err_t *err);
int acme_dns_unpublish(const acme_dns_config_t *cfg, const char *name, const char *value, acme_err_t *err);

/* ---- off the event loop ---- */

typedef struct acme_dns_task_s acme_dns_task_t;


/* What a task found, beside success or failure. */
typedef struct {
    long long    persist_until;     /* dns-persist-01's check: the matching record's persistUntil; 0: none */
    const char  *persist_txt;       /* its TXT value; NULL: no record matched (or no check) */
} acme_dns_result_t;

/* err NULL: done. Called from the loop, never from inside start; the task is gone when this runs (res
 * stays valid during the call only). */
typedef void (*acme_dns_done_pt)(void *arg, const acme_err_t *err, const acme_dns_result_t *res);

/*
 * publish: adds name=value and waits for propagation; otherwise removes every record of recs (all
 * attempted; err is the first failure). cfg and recs are copied.
 */
acme_dns_task_t *acme_dns_task_start(acme_loop_t *loop, const acme_dns_config_t *cfg, int publish,
    const acme_dns_record_t *recs, size_t nrecs, acme_dns_done_pt done, void *arg, acme_err_t *err);
/* done is not called; the thread is told to stop and left to end (after its current query) on its own. */
void acme_dns_task_cancel(acme_dns_task_t *t);

#endif
