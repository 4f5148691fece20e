/*
 * mod_md's layout (src/md_store_fs.c, md_store.c, md_acme_acct.c, md_core.c), under its MDStoreDir:
 *   md_store.json             {"store": {"version"}, "key": base64url of 48 random bytes}: the passphrase
 *                             of the account keys (the groups other than domains/ keep keys encrypted)
 *   domains/NAME/md.json      {"name", "domains": [...], "ca": {"url", "urls", "account"}, ...}
 *   domains/NAME/pubcert.pem  the chain, leaf first, with privkey.pem (RSA keys); other key types as
 *                             pubcert.<spec>.pem and privkey.<spec>.pem (spec: the curve, lowercased)
 *   accounts/ID/account.json  {"url", "ca-url", "contact", "status", ...}
 *   accounts/ID/account.pem   PKCS#8, encrypted with the store's passphrase
 * staging/ holds what mod_md has not activated yet (it waits for a restart): not imported.
 */
#include "import.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include <openssl/pem.h>

#include "acme_b64.h"
#include "acme_directory.h"

#define MD_DEFAULT_CA  "https://acme-v02.api.letsencrypt.org/directory"

typedef struct {
    unsigned char  *pass;       /* the store's key (secret) */
    size_t          pass_len;
    char          **taken;      /* account ids taken already */
    size_t          ntaken;
} md_run_t;

static int
md_pass_cb(char *buf, int size, int rwflag, void *u)
{
    md_run_t  *m = u;

    (void) rwflag;
    if (m->pass == NULL || m->pass_len > (size_t) size) {
        return -1;
    }
    memcpy(buf, m->pass, m->pass_len);
    return (int) m->pass_len;
}

static int
take_account(import_run_t *r, import_src_t *src, md_run_t *m, const char *id, const char *ca)
{
    acme_err_t    err;
    EVP_PKEY     *key = NULL;
    BIO          *bio = NULL;
    json_t       *acct = NULL;
    const char   *url, *status, *acct_ca;
    char         *jpath = NULL, *kpath = NULL, *jtext = NULL, *pem = NULL, what[1200], **v;
    size_t        jlen = 0, klen = 0, i;
    int           rc = 0;

    for (i = 0; i < m->ntaken; i++) {
        if (strcmp(m->taken[i], id) == 0) {
            return 0;
        }
    }
    v = realloc(m->taken, (m->ntaken + 1) * sizeof(char *));
    if (v == NULL || (v[m->ntaken] = acme_strdup(id)) == NULL) {
        if (v != NULL) {
            m->taken = v;
        }
        r->failed = 1;
        return -1;
    }
    m->taken = v;
    m->ntaken++;
    snprintf(what, sizeof(what), "mod_md's account %s/accounts/%s", src->root, id);
    if (strchr(id, '/') != NULL || id[0] == '.') {
        import_skip(r, what, "not an account id");
        return 0;
    }
    jpath = acme_sprintf("accounts/%s/account.json", id);
    kpath = acme_sprintf("accounts/%s/account.pem", id);
    if (jpath == NULL || kpath == NULL) {
        r->failed = 1;
        rc = -1;
        goto done;
    }
    if (import_src_read(src, jpath, &jtext, &jlen, &err) != 0 || import_src_read(src, kpath, &pem, &klen, &err) != 0) {
        import_skip(r, what, "%s", err.msg);
        goto done;
    }
    acct = json_loadb(jtext, jlen, 0, NULL);
    url = json_string_value(json_object_get(acct, "url"));
    status = json_string_value(json_object_get(acct, "status"));
    acct_ca = json_string_value(json_object_get(acct, "ca-url"));
    if (url == NULL || !acme_url_valid(url)) {
        import_skip(r, what, "account.json has no account URL (\"url\")");
        goto done;
    }
    if (status != NULL && strcmp(status, "valid") != 0) {
        import_skip(r, what, "its status is \"%s\"", status);
        goto done;
    }
    if (acct_ca != NULL && strcmp(acct_ca, ca) != 0) {
        import_skip(r, what, "it is an account of %s, not of %s", acct_ca, ca);
        goto done;
    }
    bio = BIO_new_mem_buf(pem, (int) klen);
    key = bio ? PEM_read_bio_PrivateKey(bio, NULL, md_pass_cb, m) : NULL;
    if (key == NULL) {
        import_skip(r, what, "account.pem cannot be read%s", m->pass ? "" : " (md_store.json's key is missing)");
        goto done;
    }
    rc = import_take_account(r, what, ca, key, url, json_object_get(acct, "contact"));

done:
    EVP_PKEY_free(key);
    BIO_free(bio);
    json_decref(acct);
    free(jtext);
    acme_free_secret(pem, klen);
    free(jpath);
    free(kpath);
    return rc;
}

/* One pubcert[.spec].pem of domains/NAME with its privkey[.spec].pem. */
static int
take_cert(import_run_t *r, import_src_t *src, const char *name, const char *file, const char *first,
    const char *ca)
{
    acme_err_t   err;
    char        *cpath, *kpath, *chain = NULL, *key = NULL, what[1200];
    size_t       clen = 0, klen = 0;
    int          rc = 0;

    snprintf(what, sizeof(what), "mod_md's domain %s/domains/%s (%s)", src->root, name, file);
    cpath = acme_sprintf("domains/%s/%s", name, file);
    kpath = acme_sprintf("domains/%s/privkey%s", name, file + strlen("pubcert"));
    if (cpath == NULL || kpath == NULL) {
        r->failed = 1;
        rc = -1;
    } else if (import_src_read(src, cpath, &chain, &clen, &err) != 0
               || import_src_read(src, kpath, &key, &klen, &err) != 0)
    {
        import_skip(r, what, "%s", err.msg);
    } else {
        rc = import_take_cert(r, what, first, ca, chain, clen, key, klen, NULL);
    }
    free(chain);
    acme_free_secret(key, klen);
    free(cpath);
    free(kpath);
    return rc;
}

static int
take_domain(import_run_t *r, import_src_t *src, md_run_t *m, const char *name)
{
    acme_err_t    err;
    json_t       *md = NULL, *cav, *urls;
    const char   *ca, *account, *first;
    char         *path, *text = NULL, **files = NULL, what[1200];
    size_t        len = 0, nfiles = 0, i, certs = 0, flen;
    int           rc = 0;

    snprintf(what, sizeof(what), "mod_md's domain %s/domains/%s", src->root, name);
    path = acme_sprintf("domains/%s/md.json", name);
    if (path == NULL) {
        r->failed = 1;
        return -1;
    }
    if (import_src_read(src, path, &text, &len, &err) != 0) {
        import_skip(r, what, "%s", err.msg);
        goto done;
    }
    md = json_loadb(text, len, 0, NULL);
    if (md == NULL) {
        import_skip(r, what, "md.json is not JSON");
        goto done;
    }
    cav = json_object_get(md, "ca");
    urls = json_object_get(cav, "urls");
    ca = json_string_value(json_object_get(cav, "url"));
    if (ca == NULL) {
        ca = json_string_value(json_array_get(urls, 0));
    }
    if (ca == NULL) {
        ca = MD_DEFAULT_CA;
    }
    if (!acme_url_valid(ca)) {
        import_skip(r, what, "its CA (%s) is not a directory URL", ca);
        goto done;
    }
    first = json_string_value(json_object_get(md, "name"));
    if (first == NULL) {
        first = json_string_value(json_array_get(json_object_get(md, "domains"), 0));
    }
    account = json_string_value(json_object_get(cav, "account"));
    if (account != NULL && take_account(r, src, m, account, ca) != 0) {
        rc = -1;
        goto done;
    }
    free(path);
    path = acme_sprintf("domains/%s", name);
    if (path == NULL || import_src_list(src, path, &files, &nfiles, &err) < 0) {
        import_skip(r, what, "%s", path ? err.msg : "out of memory");
        goto done;
    }
    for (i = 0; i < nfiles && rc == 0; i++) {
        flen = strlen(files[i]);
        if (strncmp(files[i], "pubcert", 7) == 0 && flen >= 11 && strcmp(files[i] + flen - 4, ".pem") == 0) {
            rc = take_cert(r, src, name, files[i], first ? first : name, ca);
            certs++;
        }
    }
    if (certs == 0) {
        import_skip(r, what, "no certificate yet (no pubcert.pem)");
    }

done:
    acme_store_list_free(files, nfiles);
    json_decref(md);
    free(text);
    free(path);
    return rc;
}

/* md_store.json's key: the passphrase of the account keys. */
static void
store_key(import_src_t *src, md_run_t *m)
{
    acme_err_t   err;
    json_t      *j;
    const char  *k;
    char        *text = NULL;
    size_t       len = 0;

    if (import_src_read(src, "md_store.json", &text, &len, &err) != 0) {
        fprintf(stderr, "acmectl: %s: accounts cannot be read without it\n", err.msg);
        return;
    }
    j = json_loadb(text, len, 0, NULL);
    k = json_string_value(json_object_get(j, "key"));
    if (k == NULL || acme_b64url_decode(k, strlen(k), &m->pass, &m->pass_len) != 0) {
        fprintf(stderr, "acmectl: %s/md_store.json has no key: accounts cannot be read\n", src->root);
        m->pass = NULL;
        m->pass_len = 0;
    }
    json_decref(j);
    acme_free_secret(text, len);
}

int
import_mod_md(import_run_t *r, import_src_t *src)
{
    acme_err_t   err;
    md_run_t     m;
    char       **names = NULL;
    size_t       n = 0, i;
    int          rc, ret = 0;

    memset(&m, 0, sizeof(m));
    rc = import_src_list(src, "domains", &names, &n, &err);
    if (rc != 0) {
        fprintf(stderr, "acmectl: %s%s\n", err.msg, rc == 1 ? " (not mod_md's MDStoreDir?)" : "");
        r->skipped++;
        return 0;
    }
    store_key(src, &m);
    for (i = 0; i < n && ret == 0; i++) {
        ret = take_domain(r, src, &m, names[i]);
    }
    for (i = 0; i < m.ntaken; i++) {
        free(m.taken[i]);
    }
    free(m.taken);
    acme_free_secret(m.pass, m.pass_len);
    acme_store_list_free(names, n);
    return ret;
}
