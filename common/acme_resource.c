/* ACME resources as the CA returns them. */
#include "acme_resource.h"
#include "acme_directory.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RES_BODY_MAX        (1024 * 1024)
#define RES_AUTHZ_MAX       1000        /* authorizations in one order */
#define RES_CHALLENGES_MAX  64          /* challenges in one authorization */
#define RES_TYPE_MAX        64
#define TOKEN_MIN           22          /* 128 bits of base64url */
#define TOKEN_MAX           256

static const char *status_names[] = {
    "unknown", "pending", "ready", "processing", "valid", "invalid", "expired", "deactivated", "revoked"
};

acme_status_t
acme_status_parse(const char *s)
{
    size_t  i;

    if (s == NULL) {
        return ACME_ST_UNKNOWN;
    }
    for (i = 1; i < sizeof(status_names) / sizeof(status_names[0]); i++) {
        if (strcmp(s, status_names[i]) == 0) {
            return (acme_status_t) i;
        }
    }
    return ACME_ST_UNKNOWN;
}

const char *
acme_status_name(acme_status_t st)
{
    if ((unsigned) st < sizeof(status_names) / sizeof(status_names[0])) {
        return status_names[st];
    }
    return "unknown";
}

int
acme_token_valid(const char *s)
{
    size_t  i;

    if (s == NULL) {
        return 0;
    }
    for (i = 0; s[i] != '\0'; i++) {
        char c = s[i];
        if (i >= TOKEN_MAX
            || !((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'
                 || c == '_'))
        {
            return 0;
        }
    }
    return i >= TOKEN_MIN;
}

/* ---- helpers ---- */

static json_t *
res_load(const char *body, size_t len, const char *what, acme_err_t *err)
{
    json_t        *o;
    json_error_t   je;

    if (body == NULL || len == 0) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: empty body", what);
        return NULL;
    }
    if (len > RES_BODY_MAX) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: body of %zu bytes is too large", what, len);
        return NULL;
    }
    o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (o == NULL) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: invalid JSON: %s (line %d)", what, je.text, je.line);
        return NULL;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: not a JSON object", what);
        return NULL;
    }
    return o;
}

/* The status member; it must be one of the allowed ones (a 0-terminated list). */
static int
res_status(json_t *o, const char *what, const acme_status_t *allowed, acme_status_t *out, acme_err_t *err)
{
    json_t         *v = json_object_get(o, "status");
    acme_status_t   st;
    char            q[80];

    if (v == NULL) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: missing \"status\"", what);
        return -1;
    }
    if (!json_is_string(v)) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: \"status\" is not a string", what);
        return -1;
    }
    st = acme_status_parse(json_string_value(v));
    for (; *allowed != ACME_ST_UNKNOWN; allowed++) {
        if (*allowed == st) {
            *out = st;
            return 0;
        }
    }
    acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: unexpected \"status\" \"%s\"", what,
                 acme_quote(json_string_value(v), q, sizeof(q), 64));
    return -1;
}

static int
res_url(json_t *o, const char *what, const char *name, int required, char **out, acme_err_t *err)
{
    json_t  *v = json_object_get(o, name);
    char     q[80];

    if (v == NULL || (!required && json_is_null(v))) {
        if (required) {
            acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: missing \"%s\"", what, name);
            return -1;
        }
        return 0;
    }
    if (!json_is_string(v)) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: \"%s\" is not a string", what, name);
        return -1;
    }
    if (!acme_url_valid(json_string_value(v))) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: \"%s\" is not an http(s) URL (\"%s\")", what, name,
                     acme_quote(json_string_value(v), q, sizeof(q), 64));
        return -1;
    }
    *out = acme_strdup(json_string_value(v));
    if (*out == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    return 0;
}

static int
res_time(json_t *o, const char *what, const char *name, int required, time_t *out, acme_err_t *err)
{
    json_t  *v = json_object_get(o, name);
    char     q[80];

    if (v == NULL || json_is_null(v)) {
        if (required) {
            acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: missing \"%s\"", what, name);
            return -1;
        }
        return 0;
    }
    if (!json_is_string(v)) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: \"%s\" is not a string", what, name);
        return -1;
    }
    if (acme_time_parse(json_string_value(v), out) != 0) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: \"%s\" is not an RFC 3339 time (\"%s\")", what, name,
                     acme_quote(json_string_value(v), q, sizeof(q), 64));
        return -1;
    }
    return 0;
}

static int
res_problem(json_t *o, const char *what, acme_problem_t **out, acme_err_t *err)
{
    json_t          *v = json_object_get(o, "error");
    acme_problem_t  *p;

    if (v == NULL || json_is_null(v)) {
        return 0;
    }
    if (!json_is_object(v)) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: \"error\" is not an object", what);
        return -1;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    acme_problem_from_json(v, p);
    *out = p;
    return 0;
}

static void
res_problem_free(acme_problem_t *p)
{
    if (p != NULL) {
        acme_problem_free(p);
        free(p);
    }
}

/* ---- order ---- */

static const acme_status_t order_statuses[] = {
    ACME_ST_PENDING, ACME_ST_READY, ACME_ST_PROCESSING, ACME_ST_VALID, ACME_ST_INVALID, ACME_ST_UNKNOWN
};

int
acme_order_parse(const char *body, size_t len, acme_order_t *o, acme_err_t *err)
{
    json_t      *j, *v, *it;
    size_t       i, n;
    char         q[80];
    int          rc = -1;

    if (o == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "acme_order_parse: no output");
        return -1;
    }
    memset(o, 0, sizeof(*o));
    j = res_load(body, len, "order", err);
    if (j == NULL) {
        return -1;
    }
    if (res_status(j, "order", order_statuses, &o->status, err) != 0
        || res_url(j, "order", "finalize", 1, &o->finalize, err) != 0
        || res_url(j, "order", "certificate", 0, &o->certificate, err) != 0
        || res_time(j, "order", "expires", 0, &o->expires, err) != 0
        || res_problem(j, "order", &o->error, err) != 0)
    {
        goto done;
    }
    if (o->status == ACME_ST_VALID && o->certificate == NULL) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "order: status is valid but \"certificate\" is missing");
        goto done;
    }

    v = json_object_get(j, "authorizations");
    if (v == NULL) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "order: missing \"authorizations\"");
        goto done;
    }
    if (!json_is_array(v)) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "order: \"authorizations\" is not an array");
        goto done;
    }
    n = json_array_size(v);
    if (n > RES_AUTHZ_MAX) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "order: %zu authorizations (at most %d accepted)", n,
                     RES_AUTHZ_MAX);
        goto done;
    }
    if (n > 0) {
        o->authorizations = calloc(n, sizeof(char *));
        if (o->authorizations == NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            goto done;
        }
    }
    json_array_foreach(v, i, it) {
        if (!json_is_string(it) || !acme_url_valid(json_string_value(it))) {
            acme_err_set(err, ACME_ERR_BADRESPONSE, "order: \"authorizations[%zu]\" is not an http(s) URL%s%s%s",
                         i, json_is_string(it) ? " (\"" : "",
                         json_is_string(it) ? acme_quote(json_string_value(it), q, sizeof(q), 64) : "",
                         json_is_string(it) ? "\")" : "");
            goto done;
        }
        o->authorizations[i] = acme_strdup(json_string_value(it));
        if (o->authorizations[i] == NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            goto done;
        }
        o->nauthorizations++;
    }
    rc = 0;

done:
    json_decref(j);
    if (rc != 0) {
        acme_order_free(o);
    }
    return rc;
}

void
acme_order_free(acme_order_t *o)
{
    size_t  i;

    if (o == NULL) {
        return;
    }
    for (i = 0; i < o->nauthorizations; i++) {
        free(o->authorizations[i]);
    }
    free(o->authorizations);
    free(o->finalize);
    free(o->certificate);
    res_problem_free(o->error);
    memset(o, 0, sizeof(*o));
}

/* ---- challenge ---- */

static const acme_status_t challenge_statuses[] = {
    ACME_ST_PENDING, ACME_ST_PROCESSING, ACME_ST_VALID, ACME_ST_INVALID, ACME_ST_UNKNOWN
};

/* Types whose token we use: a bad one is an error. */
static int
challenge_type_known(const char *t)
{
    return strcmp(t, "http-01") == 0 || strcmp(t, "tls-alpn-01") == 0 || strcmp(t, "dns-01") == 0;
}

static int
challenge_fill(json_t *j, const char *what, acme_challenge_t *c, acme_err_t *err)
{
    json_t      *v;
    const char  *t;
    size_t       i;
    char         q[80];

    memset(c, 0, sizeof(*c));
    if (!json_is_object(j)) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: not a JSON object", what);
        return -1;
    }
    v = json_object_get(j, "type");
    if (v == NULL) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: missing \"type\"", what);
        return -1;
    }
    if (!json_is_string(v)) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: \"type\" is not a string", what);
        return -1;
    }
    t = json_string_value(v);
    for (i = 0; t[i] != '\0'; i++) {
        if ((unsigned char) t[i] <= 0x20 || (unsigned char) t[i] >= 0x7f || i >= RES_TYPE_MAX) {
            acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: invalid \"type\" \"%s\"", what,
                         acme_quote(t, q, sizeof(q), 64));
            return -1;
        }
    }
    if (i == 0) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "%s: empty \"type\"", what);
        return -1;
    }
    c->type = acme_strdup(t);
    if (c->type == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    if (res_url(j, what, "url", 1, &c->url, err) != 0
        || res_status(j, what, challenge_statuses, &c->status, err) != 0
        || res_problem(j, what, &c->error, err) != 0)
    {
        goto fail;
    }

    v = json_object_get(j, "token");
    if (challenge_type_known(t)) {
        if (v == NULL) {
            acme_err_set(err, ACME_ERR_BADRESPONSE, "%s (%s): missing \"token\"", what, t);
            goto fail;
        }
        if (!json_is_string(v)) {
            acme_err_set(err, ACME_ERR_BADRESPONSE, "%s (%s): \"token\" is not a string", what, t);
            goto fail;
        }
        if (!acme_token_valid(json_string_value(v))) {
            acme_err_set(err, ACME_ERR_BADRESPONSE, "%s (%s): invalid \"token\" \"%s\" (expected %d to %d "
                         "base64url characters)", what, t, acme_quote(json_string_value(v), q, sizeof(q), 64),
                         TOKEN_MIN, TOKEN_MAX);
            goto fail;
        }
    }
    if (json_is_string(v) && acme_token_valid(json_string_value(v))) {
        c->token = acme_strdup(json_string_value(v));
        if (c->token == NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            goto fail;
        }
    }
    /* dns-persist-01 (draft-ietf-acme-dns-persist): what the TXT record must name */
    v = json_object_get(j, "issuer-domain-names");
    if (json_is_array(v) && json_array_size(v) > 0) {
        json_t *e;
        c->issuer_domain_names = calloc(json_array_size(v), sizeof(char *));
        if (c->issuer_domain_names == NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            goto fail;
        }
        json_array_foreach(v, i, e) {
            const char *n = json_string_value(e);
            if (n == NULL || n[0] == '\0' || strlen(n) > 253
                || strspn(n, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.") != strlen(n))
            {
                acme_err_set(err, ACME_ERR_BADRESPONSE, "%s (%s): \"issuer-domain-names\" holds something "
                             "other than a domain name", what, t);
                goto fail;
            }
            if ((c->issuer_domain_names[c->nissuer_domain_names] = acme_strdup(n)) == NULL) {
                acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
                goto fail;
            }
            c->nissuer_domain_names++;
        }
    }
    v = json_object_get(j, "accounturi");
    if (json_is_string(v) && (c->accounturi = acme_strdup(json_string_value(v))) == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto fail;
    }
    return 0;

fail:
    acme_challenge_free(c);
    return -1;
}

int
acme_challenge_parse(const char *body, size_t len, acme_challenge_t *c, acme_err_t *err)
{
    json_t  *j;
    int      rc;

    if (c == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "acme_challenge_parse: no output");
        return -1;
    }
    memset(c, 0, sizeof(*c));
    j = res_load(body, len, "challenge", err);
    if (j == NULL) {
        return -1;
    }
    rc = challenge_fill(j, "challenge", c, err);
    json_decref(j);
    return rc;
}

void
acme_challenge_free(acme_challenge_t *c)
{
    if (c == NULL) {
        return;
    }
    free(c->type);
    free(c->url);
    free(c->token);
    res_problem_free(c->error);
    for (size_t i = 0; i < c->nissuer_domain_names; i++) {
        free(c->issuer_domain_names[i]);
    }
    free(c->issuer_domain_names);
    free(c->accounturi);
    memset(c, 0, sizeof(*c));
}

/* ---- authorization ---- */

static const acme_status_t authz_statuses[] = {
    ACME_ST_PENDING, ACME_ST_VALID, ACME_ST_INVALID, ACME_ST_DEACTIVATED, ACME_ST_EXPIRED, ACME_ST_REVOKED,
    ACME_ST_UNKNOWN
};

static int
authz_identifier(json_t *j, acme_authz_t *a, acme_err_t *err)
{
    json_t             *id, *t, *v;
    acme_ident_type_t   type;
    acme_err_t          e;
    char                q[80];

    id = json_object_get(j, "identifier");
    if (id == NULL) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "authorization: missing \"identifier\"");
        return -1;
    }
    if (!json_is_object(id)) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "authorization: \"identifier\" is not an object");
        return -1;
    }
    t = json_object_get(id, "type");
    v = json_object_get(id, "value");
    if (!json_is_string(t)) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "authorization: \"identifier.type\" is %s",
                     t == NULL ? "missing" : "not a string");
        return -1;
    }
    if (acme_ident_type_from_name(json_string_value(t), &type) != 0) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "authorization: unsupported identifier type \"%s\"",
                     acme_quote(json_string_value(t), q, sizeof(q), 64));
        return -1;
    }
    if (!json_is_string(v)) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "authorization: \"identifier.value\" is %s",
                     v == NULL ? "missing" : "not a string");
        return -1;
    }
    if (acme_ident_parse(json_string_value(v), &a->identifier, &e) != 0) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "authorization: \"identifier.value\": %s", e.msg);
        return -1;
    }
    if (a->identifier.type != type) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "authorization: identifier \"%s\" is not of type %s",
                     acme_quote(json_string_value(v), q, sizeof(q), 64), acme_ident_type_name(type));
        acme_ident_free(&a->identifier);
        return -1;
    }
    return 0;
}

int
acme_authz_parse(const char *body, size_t len, acme_authz_t *a, acme_err_t *err)
{
    json_t  *j, *v, *it;
    size_t   i, n;
    char     what[64];
    int      rc = -1;

    if (a == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "acme_authz_parse: no output");
        return -1;
    }
    memset(a, 0, sizeof(*a));
    j = res_load(body, len, "authorization", err);
    if (j == NULL) {
        return -1;
    }
    if (res_status(j, "authorization", authz_statuses, &a->status, err) != 0
        || authz_identifier(j, a, err) != 0
        || res_time(j, "authorization", "expires", 0, &a->expires, err) != 0)
    {
        goto done;
    }
    v = json_object_get(j, "wildcard");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_boolean(v)) {
            acme_err_set(err, ACME_ERR_BADRESPONSE, "authorization: \"wildcard\" is not a boolean");
            goto done;
        }
        a->wildcard = json_is_true(v);
    }

    v = json_object_get(j, "challenges");
    if (v == NULL) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "authorization: missing \"challenges\"");
        goto done;
    }
    if (!json_is_array(v)) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "authorization: \"challenges\" is not an array");
        goto done;
    }
    n = json_array_size(v);
    if (n > RES_CHALLENGES_MAX) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "authorization: %zu challenges (at most %d accepted)", n,
                     RES_CHALLENGES_MAX);
        goto done;
    }
    if (n > 0) {
        a->challenges = calloc(n, sizeof(acme_challenge_t));
        if (a->challenges == NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            goto done;
        }
    }
    json_array_foreach(v, i, it) {
        snprintf(what, sizeof(what), "authorization: \"challenges[%zu]\"", i);
        if (challenge_fill(it, what, &a->challenges[i], err) != 0) {
            goto done;
        }
        a->nchallenges++;
    }
    rc = 0;

done:
    json_decref(j);
    if (rc != 0) {
        acme_authz_free(a);
    }
    return rc;
}

void
acme_authz_free(acme_authz_t *a)
{
    size_t  i;

    if (a == NULL) {
        return;
    }
    for (i = 0; i < a->nchallenges; i++) {
        acme_challenge_free(&a->challenges[i]);
    }
    free(a->challenges);
    acme_ident_free(&a->identifier);
    memset(a, 0, sizeof(*a));
}

acme_challenge_t *
acme_authz_challenge(acme_authz_t *a, const char *type)
{
    size_t  i;

    if (a == NULL || type == NULL) {
        return NULL;
    }
    for (i = 0; i < a->nchallenges; i++) {
        if (a->challenges[i].type != NULL && strcmp(a->challenges[i].type, type) == 0) {
            return &a->challenges[i];
        }
    }
    return NULL;
}

/* ---- renewalInfo ---- */

int
acme_renewal_info_parse(const char *body, size_t len, acme_renewal_info_t *ri, acme_err_t *err)
{
    json_t  *j, *w, *v;
    int      rc = -1;

    if (ri == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "acme_renewal_info_parse: no output");
        return -1;
    }
    memset(ri, 0, sizeof(*ri));
    j = res_load(body, len, "renewalInfo", err);
    if (j == NULL) {
        return -1;
    }
    w = json_object_get(j, "suggestedWindow");
    if (w == NULL) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "renewalInfo: missing \"suggestedWindow\"");
        goto done;
    }
    if (!json_is_object(w)) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "renewalInfo: \"suggestedWindow\" is not an object");
        goto done;
    }
    if (res_time(w, "renewalInfo: suggestedWindow", "start", 1, &ri->start, err) != 0
        || res_time(w, "renewalInfo: suggestedWindow", "end", 1, &ri->end, err) != 0)
    {
        goto done;
    }
    if (ri->end <= ri->start) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "renewalInfo: \"suggestedWindow\" ends before it starts");
        goto done;
    }
    /* informational: kept only when it is a proper URL */
    v = json_object_get(j, "explanationURL");
    if (json_is_string(v) && acme_url_valid(json_string_value(v))) {
        ri->explanation_url = acme_strdup(json_string_value(v));
    }
    rc = 0;

done:
    json_decref(j);
    if (rc != 0) {
        acme_renewal_info_free(ri);
    }
    return rc;
}

void
acme_renewal_info_free(acme_renewal_info_t *ri)
{
    if (ri != NULL) {
        free(ri->explanation_url);
        memset(ri, 0, sizeof(*ri));
    }
}

/* ---- RFC 3339 ---- */

/* n decimal digits at *p into *v; advances *p. */
static int
time_digits(const char **p, int n, int *v)
{
    int  i;

    *v = 0;
    for (i = 0; i < n; i++) {
        if ((*p)[i] < '0' || (*p)[i] > '9') {
            return -1;
        }
        *v = *v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    return 0;
}

static int
time_days_in_month(int year, int mon)
{
    static const int  days[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };

    if (mon == 2 && ((year % 4 == 0 && year % 100 != 0) || year % 400 == 0)) {
        return 29;
    }
    return days[mon - 1];
}

int
acme_time_parse(const char *s, time_t *t)
{
    struct tm    tm;
    const char  *p = s;
    int          year, mon, day, hour, min, sec, oh = 0, om = 0, sign = 0;
    time_t       r;

    if (s == NULL) {
        return -1;
    }
    if (time_digits(&p, 4, &year) != 0 || *p++ != '-'
        || time_digits(&p, 2, &mon) != 0 || *p++ != '-'
        || time_digits(&p, 2, &day) != 0)
    {
        return -1;
    }
    if (*p != 'T' && *p != 't' && *p != ' ') {
        return -1;
    }
    p++;
    if (time_digits(&p, 2, &hour) != 0 || *p++ != ':'
        || time_digits(&p, 2, &min) != 0 || *p++ != ':'
        || time_digits(&p, 2, &sec) != 0)
    {
        return -1;
    }
    if (mon < 1 || mon > 12 || day < 1 || day > time_days_in_month(year, mon)
        || hour > 23 || min > 59 || sec > 60)
    {
        return -1;
    }
    if (sec == 60) {
        sec = 59;               /* a leap second: close enough */
    }
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9') {
            return -1;
        }
        while (*p >= '0' && *p <= '9') {
            p++;
        }
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        sign = *p++ == '+' ? 1 : -1;
        if (time_digits(&p, 2, &oh) != 0 || *p++ != ':' || time_digits(&p, 2, &om) != 0
            || oh > 23 || om > 59)
        {
            return -1;
        }
    } else {
        return -1;
    }
    if (*p != '\0') {
        return -1;
    }

    memset(&tm, 0, sizeof(tm));
    tm.tm_year = year - 1900;
    tm.tm_mon = mon - 1;
    tm.tm_mday = day;
    tm.tm_hour = hour;
    tm.tm_min = min;
    tm.tm_sec = sec;
    r = timegm(&tm);
    if (r == (time_t) -1 && !(year == 1969 && mon == 12 && day == 31 && hour == 23 && min == 59)) {
        return -1;
    }
    /* local time = UTC + offset */
    r -= (time_t) sign * (oh * 3600 + om * 60);
    /* 1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z: what acme_time_format can write back */
    if (r < 0 || r > (time_t) 253402300799LL) {
        return -1;
    }
    *t = r;
    return 0;
}

const char *
acme_time_format(time_t t, char *buf, size_t size)
{
    struct tm  tm;

    if (buf == NULL || size == 0) {
        return "";
    }
    if (gmtime_r(&t, &tm) == NULL || strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
        buf[0] = '\0';
    }
    return buf;
}
