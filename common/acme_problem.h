/* Problem documents (RFC 7807, RFC 8555 6.7) and their subproblems. */
#ifndef ACME_PROBLEM_H
#define ACME_PROBLEM_H

#include <stddef.h>
#include <jansson.h>
#include "acme_err.h"

#define ACME_URN_ERROR "urn:ietf:params:acme:error:"

typedef struct acme_problem_s acme_problem_t;

struct acme_problem_s {
    char            *type;          /* full URN, or NULL */
    char            *detail;        /* NULL when absent */
    int              status;        /* 0 when absent */
    char            *ident_type;    /* subproblems: the identifier it concerns */
    char            *ident_value;
    acme_problem_t  *subproblems;
    size_t           nsubproblems;
};

/* Parse from a JSON object; tolerant of missing or mistyped members (they become NULL/0). -1 only when
 * obj is not an object. Strings are truncated to a sane length and control characters replaced. */
int  acme_problem_from_json(json_t *obj, acme_problem_t *p);
/* Parse from a response body; -1 with err when it is not a JSON object. */
int  acme_problem_parse(const char *body, size_t len, acme_problem_t *p, acme_err_t *err);
void acme_problem_free(acme_problem_t *p);

/* "badNonce" for "urn:ietf:params:acme:error:badNonce"; the full type otherwise; "" when none. */
const char *acme_problem_short_type(const acme_problem_t *p);
/* 1 when p's type is urn:ietf:params:acme:error:<short>. */
int acme_problem_is(const acme_problem_t *p, const char *short_type);

/*
 * One line for logs and status: "<shortType>: <detail> [(dns example.org: <shortType>: <detail>; ...)]".
 * malloc'd.
 */
char *acme_problem_message(const acme_problem_t *p);

/* Fill err from a problem: kind ACME_ERR_RATELIMIT for rateLimited, ACME_ERR_CA otherwise;
 * msg = "<what>: <problem message>". */
void acme_problem_to_err(const acme_problem_t *p, const char *what, acme_err_t *err);

#endif
