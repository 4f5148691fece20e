/* The store: key rules, wrappers over the backend, and the typed records. */
#include "acme_store.h"
#include "acme_resource.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <jansson.h>

#define STORE_SEGMENT_MAX   200
#define STORE_KEY_MAX       1024
#define STORE_IDS_MAX       1000
#define STORE_KA_MAX        4096

/* ---- key rules ---- */

/* NULL when the n bytes at s make a valid segment, else why not. */
static const char *
store_segment_why(const char *s, size_t n)
{
    size_t  i;

    if (n == 0) {
        return "empty segment";
    }
    if (n > STORE_SEGMENT_MAX) {
        return "segment longer than 200 bytes";
    }
    if (s[0] == '.') {
        return "segment starts with '.'";
    }
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
              || c == '.' || c == '_' || c == '@' || c == '+' || c == '-'))
        {
            return "character outside [A-Za-z0-9._@+-]";
        }
        if (c == '.' && n - i >= 5 && memcmp(s + i, ".tmp.", 5) == 0) {
            return "\".tmp.\" is reserved";
        }
    }
    if (n >= 5 && memcmp(s + n - 5, ".next", 5) == 0) {
        return "\".next\" suffix is reserved";
    }
    return NULL;
}

int
acme_store_name_check(const char *name, const char *what, acme_err_t *err)
{
    const char  *why;
    char         q[140];

    if (what == NULL) {
        what = "name";
    }
    if (name == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "missing %s", what);
        return -1;
    }
    why = store_segment_why(name, strnlen(name, STORE_SEGMENT_MAX + 1));
    if (why == NULL && strlen(name) > STORE_SEGMENT_MAX) {
        why = "longer than 200 bytes";
    }
    if (why != NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "invalid %s \"%s\": %s", what, acme_quote(name, q, sizeof(q), 120),
                     why);
        return -1;
    }
    return 0;
}

#define STORE_NAME_CUT  180

char *
acme_store_name_make(const char *s, size_t n)
{
    char           *r;
    size_t          i, len;
    unsigned long   h;

    len = n > STORE_NAME_CUT ? STORE_NAME_CUT : n;
    r = malloc(len + 10 + 1);
    if (r == NULL) {
        return NULL;
    }
    for (i = 0; i < len; i++) {
        char c = s[i];
        r[i] = ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-'
                || c == '_' || (c == '.' && i > 0)) ? c : '_';
    }
    if (n > len) {
        /* keep long names distinct from others sharing their first bytes */
        h = 2166136261UL;
        for (i = 0; i < n; i++) {
            h = ((h ^ (unsigned char) s[i]) * 16777619UL) & 0xffffffffUL;
        }
        len += (size_t) snprintf(r + len, 11, "_%08lx", h);
    }
    r[len] = '\0';
    if (len == 0) {
        r[len++] = '_';
        r[len] = '\0';
    }
    /* the store's own temporary and journal names must never be producible */
    for (i = 0; i + 5 <= len; i++) {
        if (memcmp(r + i, ".tmp.", 5) == 0) {
            r[i] = '_';
        }
    }
    if (len >= 5 && memcmp(r + len - 5, ".next", 5) == 0) {
        r[len - 5] = '_';
    }
    return r;
}

int
acme_store_key_check(const char *key, acme_err_t *err)
{
    const char  *s, *e, *why = NULL;
    size_t       len;
    char         q[140];

    if (key == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "missing store key");
        return -1;
    }
    len = strnlen(key, STORE_KEY_MAX + 1);
    if (len == 0) {
        why = "empty";
    } else if (len > STORE_KEY_MAX) {
        why = "longer than 1024 bytes";
    } else if (key[0] == '/') {
        why = "leading '/'";
    } else {
        for (s = key; why == NULL; s = e + 1) {
            e = strchr(s, '/');
            if (e == NULL) {
                e = key + len;
            }
            why = store_segment_why(s, (size_t) (e - s));
            if (why == NULL && s == key && e - s == 5 && memcmp(s, "locks", 5) == 0) {
                why = "\"locks\" is reserved";
            }
            if (*e == '\0') {
                break;
            }
        }
    }
    if (why != NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "invalid store key \"%s\": %s", acme_quote(key, q, sizeof(q), 120), why);
        return -1;
    }
    return 0;
}

/* ---- wrappers ---- */

void
acme_store_close(acme_store_t *st)
{
    if (st != NULL && st->ops != NULL && st->ops->destroy != NULL) {
        st->ops->destroy(st);
    }
}

int
acme_store_get(acme_store_t *st, const char *key, char **data, size_t *len, acme_err_t *err)
{
    if (st == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "no store");
        return -1;
    }
    return st->ops->get(st, key, data, len, err);
}

int
acme_store_put(acme_store_t *st, const char *key, const void *data, size_t len, int secret, acme_err_t *err)
{
    if (st == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "no store");
        return -1;
    }
    return st->ops->put(st, key, data, len, secret, err);
}

int
acme_store_del(acme_store_t *st, const char *key, acme_err_t *err)
{
    if (st == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "no store");
        return -1;
    }
    return st->ops->del(st, key, err);
}

void
acme_store_list_free(char **names, size_t n)
{
    size_t  i;

    if (names == NULL) {
        return;
    }
    for (i = 0; i < n; i++) {
        free(names[i]);
    }
    free(names);
}

/* ---- certificate metadata ---- */

void
acme_certmeta_free(acme_certmeta_t *m)
{
    size_t  i;

    if (m == NULL) {
        return;
    }
    free(m->name);
    for (i = 0; i < m->nids; i++) {
        acme_ident_free(&m->ids[i]);
    }
    free(m->ids);
    free(m->ca);
    free(m->profile);
    free(m->ari_cert_id);
    free(m->ari_explanation_url);
    free(m->last_error);
    free(m->revoked_serial);
    acme_ident_errors_free(m->ident_errors, m->nident_errors);
    acme_persist_notes_free(m->persist_notes, m->npersist_notes);
    memset(m, 0, sizeof(*m));
}

void
acme_ident_errors_free(acme_ident_error_t *e, size_t n)
{
    size_t i;

    for (i = 0; e != NULL && i < n; i++) {
        free(e[i].ident);
        free(e[i].error);
        free(e[i].record_name);
        free(e[i].record_value);
    }
    free(e);
}

static int
meta_set_str(json_t *o, const char *name, const char *v)
{
    return v == NULL ? 0 : json_object_set_new(o, name, json_string(v));
}

static int
meta_set_time(json_t *o, const char *name, time_t t)
{
    char  buf[32];

    if (t == 0) {
        return 0;
    }
    if (acme_time_format(t, buf, sizeof(buf))[0] == '\0') {
        return -1;
    }
    return json_object_set_new(o, name, json_string(buf));
}

json_t *
acme_certmeta_ident_errors_json(const acme_certmeta_t *m)
{
    json_t  *arr = json_array(), *e;
    size_t   i;
    char     tb[32];

    for (i = 0; arr != NULL && i < m->nident_errors; i++) {
        e = json_pack("{s:s, s:s, s:s}", "identifier", m->ident_errors[i].ident,
                      "error", m->ident_errors[i].error,
                      "at", acme_time_format(m->ident_errors[i].at, tb, sizeof(tb)));
        if (e != NULL && m->ident_errors[i].record_name != NULL && m->ident_errors[i].record_value != NULL
            && json_object_set_new(e, "dns_persist_record",
                                   json_pack("{s:s, s:s}", "name", m->ident_errors[i].record_name,
                                             "value", m->ident_errors[i].record_value)) != 0)
        {
            json_decref(e);
            e = NULL;
        }
        if (e == NULL || json_array_append_new(arr, e) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

json_t *
acme_certmeta_ident_warnings_json(const acme_certmeta_t *m)
{
    json_t                     *arr = json_array(), *e;
    const acme_persist_note_t  *n;
    size_t                      i;
    char                        tu[32], ta[32];

    for (i = 0; arr != NULL && i < m->npersist_notes; i++) {
        n = &m->persist_notes[i];
        if (n->warning == NULL) {
            continue;
        }
        e = json_pack("{s:s, s:{s:s?, s:s?}, s:s, s:s, s:s}", "identifier", n->ident, "dns_persist_record",
                      "name", n->record_name, "value", n->record_value,
                      "dns_persist_until", acme_time_format(n->until, tu, sizeof(tu)),
                      "dns_persist_warning", n->warning, "at", acme_time_format(n->at, ta, sizeof(ta)));
        if (e == NULL || json_array_append_new(arr, e) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

char *
acme_certmeta_to_json(const acme_certmeta_t *m)
{
    json_t          *o, *ids, *id;
    acme_keyspec_t   ks;
    size_t           i;
    char             kb[32], *s;
    int              rc = 0;

    if (m == NULL) {
        return NULL;
    }
    o = json_object();
    ids = json_array();
    if (o == NULL || ids == NULL) {
        json_decref(o);
        json_decref(ids);
        return NULL;
    }
    rc |= meta_set_str(o, "name", m->name);
    for (i = 0; i < m->nids; i++) {
        if (m->ids[i].value == NULL) {
            continue;
        }
        id = json_pack("{s:s, s:s}", "type", acme_ident_type_name(m->ids[i].type), "value", m->ids[i].value);
        rc |= json_array_append_new(ids, id);
    }
    rc |= json_object_set_new(o, "identifiers", ids);
    ks = m->keyspec.alg != 0 ? m->keyspec : ACME_KEYSPEC_DEFAULT;
    rc |= json_object_set_new(o, "keyspec", json_string(acme_keyspec_str(&ks, kb, sizeof(kb))));
    rc |= meta_set_str(o, "ca", m->ca);
    rc |= meta_set_str(o, "profile", m->profile);
    rc |= meta_set_time(o, "not_before", m->not_before);
    rc |= meta_set_time(o, "not_after", m->not_after);
    rc |= meta_set_time(o, "issued_at", m->issued_at);
    rc |= meta_set_str(o, "ari_cert_id", m->ari_cert_id);
    rc |= meta_set_time(o, "ari_start", m->ari_start);
    rc |= meta_set_time(o, "ari_end", m->ari_end);
    rc |= meta_set_time(o, "ari_next_check", m->ari_next_check);
    rc |= meta_set_str(o, "ari_explanation_url", m->ari_explanation_url);
    rc |= meta_set_time(o, "renew_at", m->renew_at);
    rc |= json_object_set_new(o, "failures", json_integer(m->failures));
    rc |= meta_set_time(o, "next_try", m->next_try);
    rc |= meta_set_str(o, "last_error", m->last_error);
    rc |= meta_set_time(o, "last_error_at", m->last_error_at);
    rc |= meta_set_time(o, "ca_wait_until", m->ca_wait_until);
    rc |= meta_set_time(o, "expiring_notified", m->expiring_notified);
    rc |= meta_set_str(o, "revoked_serial", m->revoked_serial);
    rc |= meta_set_time(o, "revoked_at", m->revoked_at);
    rc |= meta_set_time(o, "revoked_handled", m->revoked_handled);
    if (m->nident_errors > 0) {
        json_t *arr = acme_certmeta_ident_errors_json(m);
        rc |= arr ? json_object_set_new(o, "identifier_errors", arr) : -1;
    }
    if (m->npersist_notes > 0) {
        json_t *arr = acme_certmeta_ident_warnings_json(m);     /* the status's form */
        rc |= arr ? json_object_set_new(o, "dns_persist_warnings", arr) : -1;
    }
    if (rc != 0) {
        json_decref(o);
        return NULL;
    }
    s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

/* An optional string member; absent and null leave *out NULL. */
static int
meta_get_str(json_t *o, const char *name, char **out, acme_err_t *err)
{
    json_t  *v = json_object_get(o, name);

    if (v == NULL || json_is_null(v)) {
        return 0;
    }
    if (!json_is_string(v)) {
        acme_err_set(err, ACME_ERR_STORE, "\"%s\" is not a string", name);
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
meta_get_time(json_t *o, const char *name, time_t *out, acme_err_t *err)
{
    json_t  *v = json_object_get(o, name);
    char     q[80];

    if (v == NULL || json_is_null(v)) {
        return 0;
    }
    if (!json_is_string(v)) {
        acme_err_set(err, ACME_ERR_STORE, "\"%s\" is not a string", name);
        return -1;
    }
    if (acme_time_parse(json_string_value(v), out) != 0) {
        acme_err_set(err, ACME_ERR_STORE, "\"%s\" is not an RFC 3339 time (\"%s\")", name,
                     acme_quote(json_string_value(v), q, sizeof(q), 120));
        return -1;
    }
    return 0;
}

#define META_IDENT_ERRORS_MAX  100

/* "dns_persist_record": {"name", "value"}, optional */
static int
meta_get_record(json_t *it, acme_ident_error_t *e, acme_err_t *err)
{
    json_t  *r = json_object_get(it, "dns_persist_record");

    if (r == NULL || json_is_null(r)) {
        return 0;
    }
    if (!json_is_object(r) || meta_get_str(r, "name", &e->record_name, err) != 0
        || meta_get_str(r, "value", &e->record_value, err) != 0)
    {
        if (!json_is_object(r)) {
            acme_err_set(err, ACME_ERR_STORE, "\"dns_persist_record\" is not an object");
        }
        return -1;
    }
    return 0;
}

static int
meta_get_ident_errors(json_t *o, acme_certmeta_t *m, acme_err_t *err)
{
    json_t              *v, *it;
    size_t               i, n;
    acme_ident_error_t  *e;

    v = json_object_get(o, "identifier_errors");
    if (v == NULL || json_is_null(v)) {
        return 0;
    }
    n = json_is_array(v) ? json_array_size(v) : 0;
    if (!json_is_array(v) || n > META_IDENT_ERRORS_MAX) {
        acme_err_set(err, ACME_ERR_STORE, "\"identifier_errors\" is not an array of at most %d entries",
                     META_IDENT_ERRORS_MAX);
        return -1;
    }
    if (n == 0) {
        return 0;
    }
    m->ident_errors = calloc(n, sizeof(acme_ident_error_t));
    if (m->ident_errors == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    for (i = 0; i < n; i++) {
        it = json_array_get(v, i);
        e = &m->ident_errors[i];
        m->nident_errors = i + 1;
        if (!json_is_object(it)
            || meta_get_str(it, "identifier", &e->ident, err) != 0
            || meta_get_str(it, "error", &e->error, err) != 0
            || meta_get_time(it, "at", &e->at, err) != 0
            || meta_get_record(it, e, err) != 0)
        {
            if (json_is_object(it)) {
                acme_err_prefix(err, "\"identifier_errors\"[%zu]", i);
            } else {
                acme_err_set(err, ACME_ERR_STORE, "\"identifier_errors\"[%zu] is not an object", i);
            }
            return -1;
        }
        if (e->ident == NULL || e->error == NULL) {
            acme_err_set(err, ACME_ERR_STORE, "\"identifier_errors\"[%zu]: needs \"identifier\" and \"error\"", i);
            return -1;
        }
    }
    return 0;
}

static int
meta_get_ids(json_t *o, acme_certmeta_t *m, acme_err_t *err)
{
    json_t             *v, *it, *t, *val;
    size_t              i, n;
    acme_ident_type_t   type;
    acme_err_t          e;

    v = json_object_get(o, "identifiers");
    if (v == NULL) {
        acme_err_set(err, ACME_ERR_STORE, "missing \"identifiers\"");
        return -1;
    }
    if (!json_is_array(v)) {
        acme_err_set(err, ACME_ERR_STORE, "\"identifiers\" is not an array");
        return -1;
    }
    n = json_array_size(v);
    if (n > STORE_IDS_MAX) {
        acme_err_set(err, ACME_ERR_STORE, "\"identifiers\" has %zu entries (at most %d)", n, STORE_IDS_MAX);
        return -1;
    }
    if (n == 0) {
        return 0;
    }
    m->ids = calloc(n, sizeof(acme_ident_t));
    if (m->ids == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    json_array_foreach(v, i, it) {
        t = json_object_get(it, "type");
        val = json_object_get(it, "value");
        if (!json_is_object(it) || !json_is_string(t) || !json_is_string(val)) {
            acme_err_set(err, ACME_ERR_STORE, "\"identifiers[%zu]\" is not {\"type\": ..., \"value\": ...}", i);
            return -1;
        }
        if (acme_ident_type_from_name(json_string_value(t), &type) != 0) {
            acme_err_set(err, ACME_ERR_STORE, "\"identifiers[%zu]\": unknown type", i);
            return -1;
        }
        if (acme_ident_parse(json_string_value(val), &m->ids[i], &e) != 0) {
            acme_err_set(err, ACME_ERR_STORE, "\"identifiers[%zu]\": %s", i, e.msg);
            return -1;
        }
        m->nids++;
        if (m->ids[i].type != type) {
            acme_err_set(err, ACME_ERR_STORE, "\"identifiers[%zu]\": \"%s\" is not of type %s", i,
                         m->ids[i].value, acme_ident_type_name(type));
            return -1;
        }
    }
    return 0;
}

/* "dns_persist_warnings": as acme_certmeta_ident_warnings_json writes it */
static int
meta_get_persist_notes(json_t *o, acme_certmeta_t *m, acme_err_t *err)
{
    json_t               *v, *it, *r;
    size_t                i, n;
    acme_persist_note_t  *p;

    v = json_object_get(o, "dns_persist_warnings");
    if (v == NULL || json_is_null(v)) {
        return 0;
    }
    n = json_is_array(v) ? json_array_size(v) : 0;
    if (!json_is_array(v) || n > META_IDENT_ERRORS_MAX) {
        acme_err_set(err, ACME_ERR_STORE, "\"dns_persist_warnings\" is not an array of at most %d entries",
                     META_IDENT_ERRORS_MAX);
        return -1;
    }
    if (n == 0) {
        return 0;
    }
    m->persist_notes = calloc(n, sizeof(*m->persist_notes));
    if (m->persist_notes == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    for (i = 0; i < n; i++) {
        it = json_array_get(v, i);
        p = &m->persist_notes[i];
        m->npersist_notes = i + 1;
        r = json_is_object(it) ? json_object_get(it, "dns_persist_record") : NULL;
        if (!json_is_object(it) || !json_is_object(r)
            || meta_get_str(it, "identifier", &p->ident, err) != 0
            || meta_get_str(r, "name", &p->record_name, err) != 0
            || meta_get_str(r, "value", &p->record_value, err) != 0
            || meta_get_time(it, "dns_persist_until", &p->until, err) != 0
            || meta_get_str(it, "dns_persist_warning", &p->warning, err) != 0
            || meta_get_time(it, "at", &p->at, err) != 0)
        {
            if (json_is_object(it) && json_is_object(r)) {
                acme_err_prefix(err, "\"dns_persist_warnings\"[%zu]", i);
            } else {
                acme_err_set(err, ACME_ERR_STORE, "\"dns_persist_warnings\"[%zu] is not an object with "
                             "\"dns_persist_record\"", i);
            }
            return -1;
        }
        if (p->ident == NULL || p->warning == NULL) {
            acme_err_set(err, ACME_ERR_STORE, "\"dns_persist_warnings\"[%zu]: needs \"identifier\" and "
                         "\"dns_persist_warning\"", i);
            return -1;
        }
    }
    return 0;
}

int
acme_certmeta_from_json(const char *s, size_t len, acme_certmeta_t *m, acme_err_t *err)
{
    json_t        *o, *v;
    json_error_t   je;
    char          *ks = NULL;
    acme_err_t     e;
    int            rc = -1;

    if (m == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "acme_certmeta_from_json: no output");
        return -1;
    }
    memset(m, 0, sizeof(*m));
    m->keyspec = ACME_KEYSPEC_DEFAULT;
    if (s == NULL || len == 0) {
        acme_err_set(err, ACME_ERR_STORE, "empty certificate metadata");
        return -1;
    }
    o = json_loadb(s, len, JSON_REJECT_DUPLICATES, &je);
    if (o == NULL) {
        acme_err_set(err, ACME_ERR_STORE, "invalid JSON: %s (line %d)", je.text, je.line);
        return -1;
    }
    if (!json_is_object(o)) {
        acme_err_set(err, ACME_ERR_STORE, "not a JSON object");
        goto done;
    }
    if (meta_get_str(o, "name", &m->name, err) != 0) {
        goto done;
    }
    if (m->name != NULL && acme_store_name_check(m->name, "\"name\"", &e) != 0) {
        acme_err_set(err, ACME_ERR_STORE, "%s", e.msg);
        goto done;
    }
    if (meta_get_ids(o, m, err) != 0
        || meta_get_str(o, "keyspec", &ks, err) != 0
        || meta_get_str(o, "ca", &m->ca, err) != 0
        || meta_get_str(o, "profile", &m->profile, err) != 0
        || meta_get_str(o, "ari_cert_id", &m->ari_cert_id, err) != 0
        || meta_get_str(o, "ari_explanation_url", &m->ari_explanation_url, err) != 0
        || meta_get_str(o, "last_error", &m->last_error, err) != 0
        || meta_get_time(o, "not_before", &m->not_before, err) != 0
        || meta_get_time(o, "not_after", &m->not_after, err) != 0
        || meta_get_time(o, "issued_at", &m->issued_at, err) != 0
        || meta_get_time(o, "ari_start", &m->ari_start, err) != 0
        || meta_get_time(o, "ari_end", &m->ari_end, err) != 0
        || meta_get_time(o, "ari_next_check", &m->ari_next_check, err) != 0
        || meta_get_time(o, "renew_at", &m->renew_at, err) != 0
        || meta_get_time(o, "next_try", &m->next_try, err) != 0
        || meta_get_time(o, "last_error_at", &m->last_error_at, err) != 0
        || meta_get_time(o, "ca_wait_until", &m->ca_wait_until, err) != 0
        || meta_get_time(o, "expiring_notified", &m->expiring_notified, err) != 0
        || meta_get_str(o, "revoked_serial", &m->revoked_serial, err) != 0
        || meta_get_time(o, "revoked_at", &m->revoked_at, err) != 0
        || meta_get_time(o, "revoked_handled", &m->revoked_handled, err) != 0
        || meta_get_ident_errors(o, m, err) != 0
        || meta_get_persist_notes(o, m, err) != 0)
    {
        goto done;
    }
    if (ks != NULL && acme_keyspec_parse(ks, &m->keyspec, &e) != 0) {
        acme_err_set(err, ACME_ERR_STORE, "\"keyspec\": %s", e.msg);
        goto done;
    }
    v = json_object_get(o, "failures");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT_MAX) {
            acme_err_set(err, ACME_ERR_STORE, "\"failures\" is not a non-negative integer");
            goto done;
        }
        m->failures = (int) json_integer_value(v);
    }
    rc = 0;

done:
    free(ks);
    json_decref(o);
    if (rc != 0) {
        acme_certmeta_free(m);
    }
    return rc;
}

char *
acme_cert_name(const acme_ident_t *ids, size_t nids, const acme_keyspec_t *ks)
{
    acme_buf_t   b = { NULL, 0, 0 };
    const char  *v;
    char        *raw, *safe;
    int          rc, wild;

    if (ids == NULL || nids == 0 || ids[0].value == NULL || ids[0].value[0] == '\0') {
        return NULL;
    }
    v = ids[0].value;
    wild = v[0] == '*' && v[1] == '.';
    raw = acme_sprintf("%s%s", wild ? "_wildcard." : "", wild ? v + 2 : v);
    safe = raw ? acme_store_name_make(raw, strlen(raw)) : NULL;
    free(raw);
    rc = safe ? acme_buf_printf(&b, "%s", safe) : -1;
    free(safe);
    if (rc == 0 && ks != NULL && ks->alg != 0 && !(ks->alg == ACME_KEY_EC && ks->bits == 256)) {
        rc = acme_buf_printf(&b, "_%s%d", ks->alg == ACME_KEY_EC ? "ecdsa" : "rsa", ks->bits);
    }
    if (rc != 0) {
        acme_buf_free(&b);
        return NULL;
    }
    return acme_buf_steal(&b);
}

/* ---- certificates ---- */

static char *
store_key(const char *a, const char *name, const char *b)
{
    return acme_sprintf("%s/%s/%s", a, name, b);
}

int
acme_store_meta_load(acme_store_t *st, const char *name, acme_certmeta_t *meta, acme_err_t *err)
{
    char    *key, *js = NULL;
    size_t   len = 0;
    int      rc;

    if (meta == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "acme_store_meta_load: no output");
        return -1;
    }
    memset(meta, 0, sizeof(*meta));
    if (acme_store_name_check(name, "certificate name", err) != 0) {
        return -1;
    }
    key = store_key("certs", name, "meta.json");
    if (key == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    rc = acme_store_get(st, key, &js, &len, err);
    if (rc == 1) {
        acme_err_set(err, ACME_ERR_STORE, "no certificate \"%s\" in the store", name);
    } else if (rc == 0) {
        if (acme_certmeta_from_json(js, len, meta, err) != 0) {
            /* read, but unusable: not the store failing (the manager tells them apart) */
            if (err != NULL) {
                err->kind = ACME_ERR_INPUT;
            }
            acme_err_prefix(err, "%s", key);
            rc = -1;
        } else {
            /* the directory name is the truth, whatever the file says */
            free(meta->name);
            meta->name = acme_strdup(name);
            if (meta->name == NULL) {
                acme_certmeta_free(meta);
                acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
                rc = -1;
            }
        }
    }
    free(js);
    free(key);
    return rc;
}

int
acme_store_meta_save(acme_store_t *st, const acme_certmeta_t *meta, acme_err_t *err)
{
    char  *key, *js;
    int    rc;

    if (meta == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "acme_store_meta_save: no metadata");
        return -1;
    }
    if (acme_store_name_check(meta->name, "certificate name", err) != 0) {
        return -1;
    }
    key = store_key("certs", meta->name, "meta.json");
    js = acme_certmeta_to_json(meta);
    if (key == NULL || js == NULL) {
        free(key);
        free(js);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    rc = acme_store_put(st, key, js, strlen(js), 0, err);
    free(key);
    free(js);
    return rc;
}

int
acme_store_cert_load(acme_store_t *st, const char *name, char **fullchain, size_t *fullchain_len,
    char **privkey, size_t *privkey_len, acme_certmeta_t *meta, acme_err_t *err)
{
    char    *key = NULL, *chain = NULL, *pk = NULL, *again = NULL;
    size_t   clen = 0, plen = 0, alen = 0;
    int      rc, tries = 0;

    if (fullchain != NULL) {
        *fullchain = NULL;
    }
    if (fullchain_len != NULL) {
        *fullchain_len = 0;
    }
    if (privkey != NULL) {
        *privkey = NULL;
    }
    if (privkey_len != NULL) {
        *privkey_len = 0;
    }
    if (meta != NULL) {
        memset(meta, 0, sizeof(*meta));
    }
    if (acme_store_name_check(name, "certificate name", err) != 0) {
        return -1;
    }

retry:
    key = store_key("certs", name, "fullchain.pem");
    if (key == NULL) {
        goto nomem;
    }
    rc = acme_store_get(st, key, &chain, &clen, err);
    if (rc != 0) {
        if (rc == 1) {
            acme_err_set(err, ACME_ERR_STORE, "no certificate \"%s\" in the store", name);
        }
        free(key);
        return rc;
    }
    free(key);

    if (privkey != NULL) {
        key = store_key("certs", name, "privkey.pem");
        if (key == NULL) {
            goto nomem;
        }
        rc = acme_store_get(st, key, &pk, &plen, err);
        if (rc == 1) {
            acme_err_set(err, ACME_ERR_STORE, "%s is missing", key);
        }
        free(key);
        if (rc != 0) {
            goto fail;
        }
        /*
         * two reads are not one snapshot: a commit of a renewal between them would pair the old
         * certificate with the new key. Read the certificate again; when it changed, start over.
         */
        key = store_key("certs", name, "fullchain.pem");
        if (key == NULL) {
            goto nomem;
        }
        rc = acme_store_get(st, key, &again, &alen, err);
        free(key);
        if (rc == 0 && (alen != clen || memcmp(again, chain, clen) != 0) && ++tries < 5) {
            free(again);
            free(chain);
            acme_free_secret(pk, plen);
            again = chain = pk = NULL;
            alen = clen = plen = 0;
            goto retry;
        }
        free(again);
        if (rc != 0) {
            if (rc == 1) {
                acme_err_set(err, ACME_ERR_STORE, "no certificate \"%s\" in the store", name);
            }
            goto fail;
        }
    }
    if (meta != NULL && acme_store_meta_load(st, name, meta, err) != 0) {
        goto fail;
    }

    if (fullchain != NULL) {
        *fullchain = chain;
        if (fullchain_len != NULL) {
            *fullchain_len = clen;
        }
    } else {
        free(chain);
    }
    if (privkey != NULL) {
        *privkey = pk;
        if (privkey_len != NULL) {
            *privkey_len = plen;
        }
    }
    return 0;

nomem:
    acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
fail:
    free(chain);
    acme_free_secret(pk, plen);
    return -1;
}

int
acme_store_cert_save(acme_store_t *st, const char *name, const char *fullchain, size_t fullchain_len,
    const char *privkey, size_t privkey_len, const acme_certmeta_t *meta, acme_err_t *err)
{
    acme_certmeta_t     m;
    acme_store_item_t   items[5];
    char               *keys[5] = { NULL, NULL, NULL, NULL, NULL };
    char               *js = NULL;
    size_t              i;
    int                 rc = -1;

    if (acme_store_name_check(name, "certificate name", err) != 0) {
        return -1;
    }
    if (fullchain == NULL || fullchain_len == 0 || privkey == NULL || privkey_len == 0 || meta == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "saving certificate \"%s\": missing chain, key or metadata", name);
        return -1;
    }
    m = *meta;
    m.name = (char *) name;
    js = acme_certmeta_to_json(&m);
    keys[0] = store_key("certs", name, "fullchain.pem");
    keys[1] = store_key("certs", name, "privkey.pem");
    keys[2] = store_key("certs", name, "meta.json");
    keys[3] = store_key("certs", name, "order.json");
    keys[4] = store_key("certs", name, "order.key");
    if (js == NULL || keys[0] == NULL || keys[1] == NULL || keys[2] == NULL || keys[3] == NULL
        || keys[4] == NULL)
    {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }
    items[0] = (acme_store_item_t) { keys[0], fullchain, fullchain_len, 0 };
    items[1] = (acme_store_item_t) { keys[1], privkey, privkey_len, 1 };
    items[2] = (acme_store_item_t) { keys[2], js, strlen(js), 0 };
    items[3] = (acme_store_item_t) { keys[3], NULL, 0, 0 };
    items[4] = (acme_store_item_t) { keys[4], NULL, 0, 1 };
    rc = st->ops->commit(st, items, 5, err);
    if (rc != 0) {
        acme_err_prefix(err, "saving certificate \"%s\"", name);
    }

done:
    for (i = 0; i < 5; i++) {
        free(keys[i]);
    }
    free(js);
    return rc;
}

/* ---- accounts ---- */

int
acme_store_account_load(acme_store_t *st, const char *ca_id, char **key_pem, size_t *key_len, char **json,
    acme_err_t *err)
{
    char    *k = NULL, *pem = NULL, *js = NULL;
    size_t   plen = 0, jlen = 0;
    int      rc;

    if (key_pem != NULL) {
        *key_pem = NULL;
    }
    if (key_len != NULL) {
        *key_len = 0;
    }
    if (json != NULL) {
        *json = NULL;
    }
    if (acme_store_name_check(ca_id, "CA id", err) != 0) {
        return -1;
    }
    k = store_key("accounts", ca_id, "account.key");
    if (k == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    rc = acme_store_get(st, k, &pem, &plen, err);
    free(k);
    if (rc != 0) {
        if (rc == 1) {
            acme_err_set(err, ACME_ERR_STORE, "no account for %s in the store", ca_id);
        }
        return rc;
    }
    if (json != NULL) {
        k = store_key("accounts", ca_id, "account.json");
        if (k == NULL) {
            acme_free_secret(pem, plen);
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            return -1;
        }
        rc = acme_store_get(st, k, &js, &jlen, err);
        free(k);
        if (rc < 0) {
            acme_free_secret(pem, plen);
            return -1;
        }
        *json = js;
    }
    if (key_pem != NULL) {
        *key_pem = pem;
        if (key_len != NULL) {
            *key_len = plen;
        }
    } else {
        acme_free_secret(pem, plen);
    }
    return 0;
}

int
acme_store_account_save(acme_store_t *st, const char *ca_id, const char *key_pem, size_t key_len,
    const char *json, acme_err_t *err)
{
    acme_store_item_t   items[2];
    char               *k1, *k2;
    int                 rc;

    if (acme_store_name_check(ca_id, "CA id", err) != 0) {
        return -1;
    }
    if (key_pem == NULL || key_len == 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "saving the account for %s: no key", ca_id);
        return -1;
    }
    k1 = store_key("accounts", ca_id, "account.key");
    k2 = store_key("accounts", ca_id, "account.json");
    if (k1 == NULL || k2 == NULL) {
        free(k1);
        free(k2);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    items[0] = (acme_store_item_t) { k1, key_pem, key_len, 1 };
    items[1] = (acme_store_item_t) { k2, json, json ? strlen(json) : 0, 0 };
    rc = st->ops->commit(st, items, json ? 2 : 1, err);
    if (rc != 0) {
        acme_err_prefix(err, "saving the account for %s", ca_id);
    }
    free(k1);
    free(k2);
    return rc;
}

/* ---- challenges ---- */

char *
acme_store_challenge_key(const char *type, const char *id, acme_err_t *err)
{
    acme_ident_t  ident;
    acme_err_t    e;
    char          q[140], *k;

    if (type == NULL || id == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "challenge: missing type or id");
        return NULL;
    }
    if (strcmp(type, "http-01") == 0) {
        if (!acme_token_valid(id)) {
            acme_err_set(err, ACME_ERR_INPUT, "invalid http-01 token \"%s\"", acme_quote(id, q, sizeof(q), 120));
            return NULL;
        }
        k = acme_sprintf("challenges/http-01/%s", id);

    } else if (strcmp(type, "tls-alpn-01") == 0) {
        if (acme_ident_parse(id, &ident, &e) != 0 || ident.type != ACME_IDENT_DNS
            || ident.value[0] == '*')
        {
            acme_ident_free(&ident);
            acme_err_set(err, ACME_ERR_INPUT, "invalid tls-alpn-01 server name \"%s\"",
                         acme_quote(id, q, sizeof(q), 120));
            return NULL;
        }
        k = acme_sprintf("challenges/tls-alpn-01/%s", ident.value);
        acme_ident_free(&ident);

    } else {
        acme_err_set(err, ACME_ERR_INPUT, "unsupported challenge type \"%s\"", acme_quote(type, q, sizeof(q), 120));
        return NULL;
    }
    if (k == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    }
    return k;
}

char *
acme_store_challenge_text(const acme_ident_t *id, const char *key_authz)
{
    return acme_sprintf("%s %s %s", acme_ident_type_name(id->type), id->value, key_authz);
}

int
acme_store_challenge_text_split(char *text, acme_ident_type_t *type, char **value, char **key_authz)
{
    char  *sp1, *sp2;

    sp1 = strchr(text, ' ');
    sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (sp2 == NULL) {
        return -1;
    }
    *sp1 = '\0';
    *sp2 = '\0';
    if (acme_ident_type_from_name(text, type) != 0) {
        return -1;
    }
    *value = sp1 + 1;
    *key_authz = sp2 + 1;
    return 0;
}

/*
 * A challenge record is "<dns|ip> <identifier> <key authorization>": the identifier is what a host checks
 * a request against (the Host of an HTTP-01 request; the key of a TLS-ALPN-01 record, its SNI, already
 * names it), so a token is never answered for another name.
 */
static int
challenge_record_check(const char *type, const char *key, const acme_ident_t *id, const char *ka,
    acme_err_t *err)
{
    size_t  i, len;
    char   *sni;
    int     same;

    len = ka ? strnlen(ka, STORE_KA_MAX + 1) : 0;
    if (len == 0 || len > STORE_KA_MAX) {
        acme_err_set(err, ACME_ERR_INPUT, "challenge: key authorization missing or too long");
        return -1;
    }
    for (i = 0; i < len; i++) {
        if (ka[i] <= ' ' || ka[i] > '~') {
            acme_err_set(err, ACME_ERR_INPUT, "challenge: key authorization with a space or control character");
            return -1;
        }
    }
    if (id == NULL || id->value == NULL || id->value[0] == '\0' || id->value[0] == '*'
        || strchr(id->value, ' ') != NULL || (id->type != ACME_IDENT_DNS && id->type != ACME_IDENT_IP))
    {
        acme_err_set(err, ACME_ERR_INPUT, "challenge: missing or invalid identifier");
        return -1;
    }
    if (strcmp(type, "tls-alpn-01") == 0) {
        sni = acme_ident_sni(id);
        same = sni != NULL && strcmp(sni, key) == 0;
        free(sni);
        if (!same) {
            acme_err_set(err, ACME_ERR_INPUT, "challenge: tls-alpn-01 record for %s under another name", id->value);
            return -1;
        }
    }
    return 0;
}

int
acme_store_challenge_put(acme_store_t *st, const char *type, const char *key, const acme_ident_t *id,
    const char *key_authz, acme_err_t *err)
{
    char    *k, *v;
    int      rc;

    k = acme_store_challenge_key(type, key, err);
    if (k == NULL) {
        return -1;
    }
    if (challenge_record_check(type, k + strlen("challenges/") + strlen(type) + 1, id, key_authz, err) != 0) {
        free(k);
        return -1;
    }
    v = acme_store_challenge_text(id, key_authz);
    if (v == NULL) {
        free(k);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    rc = acme_store_put(st, k, v, strlen(v), 0, err);
    free(k);
    free(v);
    return rc;
}

int
acme_store_challenge_get(acme_store_t *st, const char *type, const char *key, acme_ident_t *id,
    char **key_authz, acme_err_t *err)
{
    char               *k, *v = NULL, *value, *text_ka = NULL, *ka;
    size_t              len;
    int                 rc;
    acme_ident_t        ident = { 0, NULL };
    acme_ident_type_t   it;

    if (key_authz == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "acme_store_challenge_get: no output");
        return -1;
    }
    *key_authz = NULL;
    if (id != NULL) {
        id->type = 0;
        id->value = NULL;
    }
    k = acme_store_challenge_key(type, key, err);
    if (k == NULL) {
        return -1;
    }
    rc = acme_store_get(st, k, &v, &len, err);
    if (rc != 0) {
        free(k);
        free(v);
        return rc;
    }
    if (strlen(v) == len && acme_store_challenge_text_split(v, &it, &value, &text_ka) == 0
        && (ident.value = acme_strdup(value)) != NULL)
    {
        ident.type = it;
    }
    rc = -1;
    if (ident.value == NULL
        || challenge_record_check(type, k + strlen("challenges/") + strlen(type) + 1, &ident, text_ka, NULL)
           != 0)
    {
        acme_err_set(err, ACME_ERR_STORE, "challenge record %s is not \"<dns|ip> <identifier> <key "
                     "authorization>\" (written by an older release?)", k);
    } else if ((ka = acme_strdup(text_ka)) == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    } else {
        *key_authz = ka;
        if (id != NULL) {
            *id = ident;
            ident.value = NULL;
        }
        rc = 0;
    }
    acme_ident_free(&ident);
    free(v);
    free(k);
    return rc;
}

int
acme_store_challenge_del(acme_store_t *st, const char *type, const char *id, acme_err_t *err)
{
    char  *k;
    int    rc;

    k = acme_store_challenge_key(type, id, err);
    if (k == NULL) {
        return -1;
    }
    rc = acme_store_del(st, k, err);
    free(k);
    return rc;
}
