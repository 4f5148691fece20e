/*
 * acmectl import: what certbot's and mod_md's layouts yield (import_certbot.c, import_mod_md.c) is checked
 * and stored with the core's import pieces (acme_import.h), one atomic commit per certificate and per
 * account; --dry-run only says what would be.
 */
#include "import.h"
#include "acme_import.h"
#include "acme_directory.h"
#include "acme_x509.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int import_account_store(import_run_t *r, const char *what, const char *ca, EVP_PKEY *key,
    const char *url, const char *const *contact, size_t ncontact);

void
import_skip(import_run_t *r, const char *what, const char *fmt, ...)
{
    va_list  ap;

    fprintf(stderr, "acmectl: %s skipped: ", what);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    r->skipped++;
}

static void
time_str(time_t t, char *buf, size_t size)
{
    struct tm  tm;

    gmtime_r(&t, &tm);
    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* 1 when the store's certificate name has this serial (imported before). */
static int
same_serial(acme_store_t *dst, const char *name, const char *serial)
{
    STACK_OF(X509)    *sk = NULL;
    acme_cert_info_t   info;
    acme_err_t         err;
    char              *chain = NULL;
    size_t             len = 0;
    int                same = 0;

    memset(&info, 0, sizeof(info));
    if (acme_store_cert_load(dst, name, &chain, &len, NULL, NULL, NULL, &err) == 0
        && acme_pem_chain_parse(chain, len, &sk, &err) == 0
        && acme_cert_info(sk_X509_value(sk, 0), &info, &err) == 0)
    {
        same = info.serial_hex != NULL && strcmp(info.serial_hex, serial) == 0;
    }
    acme_cert_info_free(&info);
    acme_chain_free(sk);
    free(chain);
    return same;
}

int
import_take_cert(import_run_t *r, const char *what, const char *first, const char *ca, const char *chain,
    size_t chain_len, const char *key, size_t key_len, const char *preferred_chain)
{
    acme_import_item_t  it;
    acme_err_t          err;
    acme_buf_t          names;
    char               *name = NULL, until[32], ks[16];
    size_t              i;
    int                 rc;

    rc = acme_import_check(chain, chain_len, key, key_len, first, time(NULL), &it, &err);
    if (rc != 0) {
        if (rc < 0) {
            fprintf(stderr, "acmectl: %s: %s\n", what, err.msg);
            r->failed = 1;
            return -1;
        }
        import_skip(r, what, "%s", err.msg);
        return 0;
    }
    memset(&names, 0, sizeof(names));
    for (i = 0; i < it.nids; i++) {
        (void) acme_buf_printf(&names, "%s%s", i ? " " : "", it.ids[i].value);
    }
    name = acme_cert_name(it.ids, it.nids, &it.keyspec);
    if (name == NULL || names.data == NULL) {
        fprintf(stderr, "acmectl: %s: out of memory\n", what);
        r->failed = 1;
        rc = -1;
        goto done;
    }
    time_str(it.not_after, until, sizeof(until));
    acme_keyspec_str(&it.keyspec, ks, sizeof(ks));
    if (r->dst == NULL) {
        printf("would import %s as \"%s\": %s, %s, serial %s, valid until %s, from %s\n", what, name,
               names.data, ks, it.serial, until, ca);
    } else {
        rc = acme_import_store_cert(r->dst, name, it.ids, it.nids, &it.keyspec, ca, &it, &err);
        if (rc < 0) {
            fprintf(stderr, "acmectl: %s: %s\n", what, err.msg);
            r->failed = 1;
            goto done;
        }
        if (rc == 0) {
            if (same_serial(r->dst, name, it.serial)) {
                printf("%s as \"%s\": already in the store\n", what, name);
            } else {
                import_skip(r, what, "the store already has another certificate \"%s\" (kept)", name);
            }
            goto done;
        }
        printf("imported %s as \"%s\": %s, %s, serial %s, valid until %s, from %s\n", what, name,
               names.data, ks, it.serial, until, ca);
    }
    r->certs++;
    rc = 0;
    /* what the server's configuration must say for it to be this certificate's */
    if (it.keyspec.alg != ACME_KEY_EC || it.keyspec.bits != 256) {
        printf("  note: a %s key: served where the configuration asks for it (nginx: acme_certificate ... "
               "key=%s; Apache: ACMEKeyType %s)\n", ks, ks, ks);
    }
    if (preferred_chain != NULL && preferred_chain[0] != '\0') {
        printf("  note: preferred chain \"%s\": set preferred_chain (nginx's acme_issuer) or "
               "--preferred-chain for renewals to ask for it\n", preferred_chain);
    }

done:
    acme_buf_free(&names);
    free(name);
    acme_import_item_free(&it);
    return rc;
}

int
import_take_account(import_run_t *r, const char *what, const char *ca, EVP_PKEY *key, const char *url,
    const json_t *contact)
{
    int           rc;
    const char  **contacts = NULL;
    size_t        i, n = 0;

    if (json_is_array(contact) && json_array_size(contact) > 0) {
        contacts = calloc(json_array_size(contact), sizeof(char *));
        for (i = 0; contacts != NULL && i < json_array_size(contact); i++) {
            if (json_is_string(json_array_get(contact, i))) {
                contacts[n++] = json_string_value(json_array_get(contact, i));
            }
        }
    }
    rc = import_account_store(r, what, ca, key, url, contacts, n);
    free(contacts);
    return rc;
}

static int
import_account_store(import_run_t *r, const char *what, const char *ca, EVP_PKEY *key, const char *url,
    const char *const *contact, size_t ncontact)
{
    acme_err_t  err;
    int         rc, same = 0;

    if (acme_jws_alg(key) == NULL) {
        import_skip(r, what, "a key type the client cannot sign with");
        return 0;
    }
    if (r->dst == NULL) {
        printf("would import %s for %s (%s)\n", what, ca, url ? url : "URL looked up by its key");
        r->accounts++;
        return 0;
    }
    rc = acme_import_store_account(r->dst, ca, key, url, contact, ncontact, &same, &err);
    if (rc < 0) {
        fprintf(stderr, "acmectl: %s: %s\n", what, err.msg);
        r->failed = 1;
        return -1;
    }
    if (rc == 0) {
        if (same) {
            printf("%s for %s: already in the store\n", what, ca);
            return 0;
        }
        import_skip(r, what, "the store already has another account for %s (kept: renewals use it)", ca);
        return 0;
    }
    printf("imported %s for %s (%s)\n", what, ca, url ? url : "URL looked up by its key");
    r->accounts++;
    return 0;
}

int
import_command(acme_store_t *dst, int dry_run, const char *tool, const char *dir)
{
    import_run_t  r;
    import_src_t  src;
    acme_err_t    err;
    int           rc;

    memset(&r, 0, sizeof(r));
    r.dst = dry_run ? NULL : dst;
    r.tool = tool;
    r.dry_run = dry_run;
    if (import_src_open(&src, dir, &err) != 0) {
        fprintf(stderr, "acmectl import %s: %s\n", tool, err.msg);
        return 1;
    }
    rc = strcmp(tool, "certbot") == 0 ? import_certbot(&r, &src) : import_mod_md(&r, &src);
    import_src_close(&src);
    if (rc != 0 || r.failed) {
        fprintf(stderr, "acmectl: import stopped: the store failed (what was imported before stays; running "
                "import again is safe)\n");
        return 1;
    }
    printf("%s %zu certificate%s and %zu account%s from %s's %s%s\n", dry_run ? "would import" : "imported",
           r.certs, r.certs == 1 ? "" : "s", r.accounts, r.accounts == 1 ? "" : "s", tool, dir,
           r.skipped ? "; some were skipped (see above)" : "");
    return r.skipped ? 1 : 0;
}
