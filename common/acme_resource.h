/* ACME resources as the CA returns them: account, order, authorization, challenge, renewalInfo. */
#ifndef ACME_RESOURCE_H
#define ACME_RESOURCE_H

#include <time.h>
#include <stddef.h>
#include <jansson.h>
#include "acme_err.h"
#include "acme_ident.h"
#include "acme_problem.h"

typedef enum {
    ACME_ST_UNKNOWN = 0,
    ACME_ST_PENDING,
    ACME_ST_READY,
    ACME_ST_PROCESSING,
    ACME_ST_VALID,
    ACME_ST_INVALID,
    ACME_ST_EXPIRED,
    ACME_ST_DEACTIVATED,
    ACME_ST_REVOKED
} acme_status_t;

acme_status_t acme_status_parse(const char *s);
const char   *acme_status_name(acme_status_t st);

typedef struct {
    acme_status_t    status;
    char           **authorizations;   /* URLs */
    size_t           nauthorizations;
    char            *finalize;
    char            *certificate;      /* when valid */
    acme_problem_t  *error;            /* NULL when absent */
    time_t           expires;          /* 0 when absent */
} acme_order_t;

typedef struct {
    char            *type;             /* "http-01", "tls-alpn-01", "dns-01", ... */
    char            *url;
    char            *token;            /* validated: base64url, >= 22 chars (128 bits), <= 256 */
    acme_status_t    status;
    acme_problem_t  *error;
    char           **issuer_domain_names;   /* dns-persist-01: "issuer-domain-names", optional */
    size_t           nissuer_domain_names;
    char            *accounturi;            /* dns-persist-01: "accounturi", optional */
} acme_challenge_t;

typedef struct {
    acme_status_t     status;
    acme_ident_t      identifier;
    int               wildcard;
    acme_challenge_t *challenges;
    size_t            nchallenges;
    time_t            expires;
} acme_authz_t;

typedef struct {
    time_t  start;
    time_t  end;
    char   *explanation_url;          /* optional */
} acme_renewal_info_t;

/*
 * Parsers. Each rejects (with err, kind ACME_ERR_BADRESPONSE, naming the field) a body that is not a
 * JSON object, lacks a required member, or has members of the wrong type; unknown members are ignored.
 * Challenges of unknown types are kept with token possibly NULL (they are skipped, not fatal), but a
 * known type with a bad token is an error.
 */
int  acme_order_parse(const char *body, size_t len, acme_order_t *o, acme_err_t *err);
void acme_order_free(acme_order_t *o);
int  acme_authz_parse(const char *body, size_t len, acme_authz_t *a, acme_err_t *err);
void acme_authz_free(acme_authz_t *a);
/* Finds the challenge of this type, NULL when absent. */
acme_challenge_t *acme_authz_challenge(acme_authz_t *a, const char *type);
int  acme_challenge_parse(const char *body, size_t len, acme_challenge_t *c, acme_err_t *err);
void acme_challenge_free(acme_challenge_t *c);
/* RFC 9773: {"suggestedWindow": {"start": RFC3339, "end": RFC3339}, "explanationURL": ...}; end > start. */
int  acme_renewal_info_parse(const char *body, size_t len, acme_renewal_info_t *ri, acme_err_t *err);
void acme_renewal_info_free(acme_renewal_info_t *ri);

/* 1 when s is a challenge token as we accept it: base64url without padding, 22..256 characters. */
int acme_token_valid(const char *s);

/* RFC 3339 timestamps ("2025-01-02T03:04:05Z", fractional seconds and offsets allowed), from 1970 to the
 * end of 9999 UTC. -1 on error. */
int acme_time_parse(const char *s, time_t *t);
/* "2025-01-02T03:04:05Z" into buf (>= 21 bytes). */
const char *acme_time_format(time_t t, char *buf, size_t size);

#endif
