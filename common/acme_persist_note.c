/*
 * dns-persist-01's persistUntil: the CA stops accepting a record after it, and every renewal needs the
 * record again. A job notes each record it checked; the notes that warn (the record passes before the
 * certificate's next renewal may need it) are logged once by the job and kept in the certificate's metadata
 * for the status, until a later check of the same identifier says otherwise.
 */
#include "acme_store.h"
#include "acme_resource.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void
acme_persist_notes_free(acme_persist_note_t *n, size_t count)
{
    size_t i;

    for (i = 0; n != NULL && i < count; i++) {
        free(n[i].ident);
        free(n[i].record_name);
        free(n[i].record_value);
        free(n[i].warning);
    }
    free(n);
}

int
acme_persist_judge(acme_persist_note_t *n, const char *cert, time_t not_after, time_t now)
{
    char        tu[32], tn[32], *w;
    const char *id = strchr(n->ident, ':') != NULL ? strchr(n->ident, ':') + 1 : n->ident;
    long long   left = (long long) n->until - (long long) now;

    free(n->warning);
    n->warning = NULL;
    if (n->until == 0 || (n->until >= now + ACME_PERSIST_WARN_S && n->until >= not_after)) {
        return 0;
    }
    acme_time_format(n->until, tu, sizeof(tu));
    if (left <= 0) {
        w = acme_sprintf("dns-persist-01 record %s for %s: its persistUntil=%lld (%s) has passed: the CA no "
                         "longer accepts it, and the renewal of \"%s\" fails until it is replaced by a record "
                         "with a later persistUntil, or none (acmectl dns-persist-record prints it)",
                         n->record_name, id, (long long) n->until, tu, cert);
    } else if (not_after > now + ACME_PERSIST_WARN_S) {
        w = acme_sprintf("dns-persist-01 record %s for %s: its persistUntil=%lld (%s) passes in %lld day(s), "
                         "before \"%s\" (valid until %s) is renewed; replace it by a record with a later "
                         "persistUntil, or none (acmectl dns-persist-record prints it)", n->record_name, id,
                         (long long) n->until, tu, left / 86400, cert,
                         acme_time_format(not_after, tn, sizeof(tn)));
    } else {
        w = acme_sprintf("dns-persist-01 record %s for %s: its persistUntil=%lld (%s) passes in %lld day(s) "
                         "(less than %ld); replace it by a record with a later persistUntil, or none (acmectl "
                         "dns-persist-record prints it)", n->record_name, id, (long long) n->until, tu,
                         left / 86400, ACME_PERSIST_WARN_S / 86400);
    }
    if (w == NULL) {
        return -1;
    }
    n->warning = w;
    return 1;
}

static int
note_copy(acme_persist_note_t *dst, const acme_persist_note_t *src)
{
    memset(dst, 0, sizeof(*dst));
    dst->ident = acme_strdup(src->ident);
    dst->record_name = src->record_name != NULL ? acme_strdup(src->record_name) : NULL;
    dst->record_value = src->record_value != NULL ? acme_strdup(src->record_value) : NULL;
    dst->warning = src->warning != NULL ? acme_strdup(src->warning) : NULL;
    dst->until = src->until;
    dst->at = src->at;
    return dst->ident == NULL || (src->record_name != NULL && dst->record_name == NULL)
           || (src->record_value != NULL && dst->record_value == NULL)
           || (src->warning != NULL && dst->warning == NULL) ? -1 : 0;
}

static int
ident_listed(const char *ident, const acme_ident_t *ids, size_t nids)
{
    size_t      i, tl;
    const char *t;

    for (i = 0; i < nids; i++) {
        t = acme_ident_type_name(ids[i].type);
        tl = strlen(t);
        if (ids[i].value != NULL && strncmp(ident, t, tl) == 0 && ident[tl] == ':'
            && strcmp(ident + tl + 1, ids[i].value) == 0)
        {
            return 1;
        }
    }
    return 0;
}

static int
ident_checked(const char *ident, const acme_persist_note_t *checked, size_t nchecked)
{
    size_t i;

    for (i = 0; i < nchecked; i++) {
        if (strcmp(checked[i].ident, ident) == 0) {
            return 1;
        }
    }
    return 0;
}

int
acme_persist_notes_merge(const acme_persist_note_t *old, size_t nold, const acme_persist_note_t *checked,
    size_t nchecked, const acme_ident_t *ids, size_t nids, acme_persist_note_t **out, size_t *nout)
{
    acme_persist_note_t  *r;
    size_t                i, n = 0;

    *out = NULL;
    *nout = 0;
    if (nold + nchecked == 0) {
        return 0;
    }
    r = calloc(nold + nchecked, sizeof(*r));
    if (r == NULL) {
        return -1;
    }
    for (i = 0; i < nold; i++) {
        if (old[i].warning != NULL && ident_listed(old[i].ident, ids, nids)
            && !ident_checked(old[i].ident, checked, nchecked))
        {
            if (note_copy(&r[n++], &old[i]) != 0) {
                goto fail;
            }
        }
    }
    for (i = 0; i < nchecked; i++) {
        if (checked[i].warning != NULL && note_copy(&r[n++], &checked[i]) != 0) {
            goto fail;
        }
    }
    if (n == 0) {
        free(r);
        return 0;
    }
    *out = r;
    *nout = n;
    return 0;
fail:
    acme_persist_notes_free(r, n);
    return -1;
}

int
acme_persist_notes_concern(const acme_certmeta_t *m, const char *ca)
{
    return m->not_after == 0 || m->ca == NULL || (ca != NULL && strcmp(m->ca, ca) == 0);
}
