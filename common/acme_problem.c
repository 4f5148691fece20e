/* Problem documents (RFC 7807, RFC 8555 6.7). */
#include "acme_problem.h"

#include <stdlib.h>
#include <string.h>

#define PROBLEM_STR_MAX        1024   /* bytes kept of any string member ... */
#define PROBLEM_DETAIL_MAX     4096   /* ... but "detail": Let's Encrypt's paused-account detail lists the
                                       * names and ends with the unpause URL */
#define PROBLEM_SUB_MAX        100    /* subproblems kept */
#define PROBLEM_BODY_MAX       (1024 * 1024)

/*
 * A copy of a JSON string member: at most PROBLEM_STR_MAX bytes (cut on a UTF-8 boundary), with control
 * characters replaced (whitespace by ' ', the rest by '?'). NULL when absent or not a string.
 */
static char *
problem_str_max(json_t *obj, const char *name, size_t max)
{
    json_t         *v;
    const char     *s;
    size_t          len, i;
    char           *out;
    unsigned char   c;

    v = json_object_get(obj, name);
    if (!json_is_string(v)) {
        return NULL;
    }
    s = json_string_value(v);
    len = strlen(s);
    if (len > max) {
        len = max;
        /* do not cut a multi-byte sequence: back up over continuation bytes */
        while (len > 0 && ((unsigned char) s[len] & 0xc0) == 0x80) {
            len--;
        }
    }
    out = malloc(len + 1);
    if (out == NULL) {
        return NULL;
    }
    for (i = 0; i < len; i++) {
        c = (unsigned char) s[i];
        if (c == '\n' || c == '\r' || c == '\t') {
            c = ' ';
        } else if (c < 0x20 || c == 0x7f) {
            c = '?';
        }
        out[i] = (char) c;
    }
    out[len] = '\0';
    return out;
}

static char *
problem_str(json_t *obj, const char *name)
{
    return problem_str_max(obj, name, PROBLEM_STR_MAX);
}

static int
problem_fill(json_t *obj, acme_problem_t *p, int depth)
{
    json_t      *v, *it;
    json_int_t   st;
    size_t       i, n;

    memset(p, 0, sizeof(*p));
    if (!json_is_object(obj)) {
        return -1;
    }
    p->type = problem_str(obj, "type");
    p->detail = problem_str_max(obj, "detail", PROBLEM_DETAIL_MAX);
    v = json_object_get(obj, "status");
    if (json_is_integer(v)) {
        st = json_integer_value(v);
        if (st >= 100 && st <= 999) {
            p->status = (int) st;
        }
    }
    v = json_object_get(obj, "identifier");
    if (json_is_object(v)) {
        p->ident_type = problem_str(v, "type");
        p->ident_value = problem_str(v, "value");
        if (p->ident_type == NULL || p->ident_value == NULL) {
            free(p->ident_type);
            free(p->ident_value);
            p->ident_type = p->ident_value = NULL;
        }
    }

    /* subproblems only at the top level (RFC 8555 6.7.1); nested ones are ignored */
    v = json_object_get(obj, "subproblems");
    if (depth == 0 && json_is_array(v) && json_array_size(v) > 0) {
        n = json_array_size(v);
        if (n > PROBLEM_SUB_MAX) {
            n = PROBLEM_SUB_MAX;
        }
        p->subproblems = calloc(n, sizeof(acme_problem_t));
        if (p->subproblems != NULL) {
            for (i = 0; i < n; i++) {
                it = json_array_get(v, i);
                if (problem_fill(it, &p->subproblems[p->nsubproblems], depth + 1) == 0) {
                    p->nsubproblems++;
                }
            }
            if (p->nsubproblems == 0) {
                free(p->subproblems);
                p->subproblems = NULL;
            }
        }
    }
    return 0;
}

int
acme_problem_from_json(json_t *obj, acme_problem_t *p)
{
    if (p == NULL) {
        return -1;
    }
    return problem_fill(obj, p, 0);
}

int
acme_problem_parse(const char *body, size_t len, acme_problem_t *p, acme_err_t *err)
{
    json_t        *o;
    json_error_t   je;
    int            rc;

    if (p == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "acme_problem_parse: no output");
        return -1;
    }
    memset(p, 0, sizeof(*p));
    if (body == NULL || len == 0) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "problem document: empty body");
        return -1;
    }
    if (len > PROBLEM_BODY_MAX) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "problem document: body of %zu bytes is too large", len);
        return -1;
    }
    o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (o == NULL) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "problem document: invalid JSON: %s (line %d)",
                     je.text, je.line);
        return -1;
    }
    rc = problem_fill(o, p, 0);
    json_decref(o);
    if (rc != 0) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "problem document: not a JSON object");
        return -1;
    }
    return 0;
}

void
acme_problem_free(acme_problem_t *p)
{
    size_t  i;

    if (p == NULL) {
        return;
    }
    for (i = 0; i < p->nsubproblems; i++) {
        acme_problem_free(&p->subproblems[i]);
    }
    free(p->subproblems);
    free(p->type);
    free(p->detail);
    free(p->ident_type);
    free(p->ident_value);
    memset(p, 0, sizeof(*p));
}

const char *
acme_problem_short_type(const acme_problem_t *p)
{
    size_t  n = sizeof(ACME_URN_ERROR) - 1;

    if (p == NULL || p->type == NULL) {
        return "";
    }
    if (strncmp(p->type, ACME_URN_ERROR, n) == 0 && p->type[n] != '\0') {
        return p->type + n;
    }
    return p->type;
}

int
acme_problem_is(const acme_problem_t *p, const char *short_type)
{
    size_t  n = sizeof(ACME_URN_ERROR) - 1;

    if (p == NULL || p->type == NULL || short_type == NULL) {
        return 0;
    }
    return strncmp(p->type, ACME_URN_ERROR, n) == 0 && strcmp(p->type + n, short_type) == 0;
}

/* "<shortType>: <detail>", either part alone when the other is missing. */
static int
problem_append_one(acme_buf_t *b, const acme_problem_t *p)
{
    const char  *t = acme_problem_short_type(p);
    const char  *d = p->detail != NULL ? p->detail : "";

    if (t[0] != '\0' && d[0] != '\0') {
        return acme_buf_printf(b, "%s: %s", t, d);
    }
    if (t[0] != '\0' || d[0] != '\0') {
        return acme_buf_printf(b, "%s", t[0] != '\0' ? t : d);
    }
    if (p->status != 0) {
        return acme_buf_printf(b, "HTTP %d", p->status);
    }
    return acme_buf_printf(b, "unspecified problem");
}

char *
acme_problem_message(const acme_problem_t *p)
{
    acme_buf_t               b = { NULL, 0, 0 };
    const acme_problem_t    *s;
    size_t                   i;
    int                      rc;

    if (p == NULL) {
        return acme_strdup("unspecified problem");
    }
    rc = problem_append_one(&b, p);
    for (i = 0; rc == 0 && i < p->nsubproblems; i++) {
        s = &p->subproblems[i];
        rc = acme_buf_printf(&b, "%s", i == 0 ? " (" : "; ");
        if (rc == 0 && s->ident_type != NULL) {
            rc = acme_buf_printf(&b, "%s %s: ", s->ident_type, s->ident_value);
        }
        if (rc == 0) {
            rc = problem_append_one(&b, s);
        }
    }
    if (rc == 0 && p->nsubproblems > 0) {
        rc = acme_buf_printf(&b, ")");
    }
    if (rc != 0) {
        acme_buf_free(&b);
        return NULL;
    }
    return acme_buf_steal(&b);
}

void
acme_problem_to_err(const acme_problem_t *p, const char *what, acme_err_t *err)
{
    char                *m;
    acme_err_kind_t      kind;

    if (err == NULL) {
        return;
    }
    kind = acme_problem_is(p, "rateLimited") ? ACME_ERR_RATELIMIT : ACME_ERR_CA;
    m = acme_problem_message(p);
    if (what != NULL && what[0] != '\0') {
        acme_err_set(err, kind, "%s: %s", what, m ? m : "(out of memory)");
    } else {
        acme_err_set(err, kind, "%s", m ? m : "(out of memory)");
    }
    free(m);
}
