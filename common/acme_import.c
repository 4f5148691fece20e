/* Taking over nginx-acme's account and certificates (see acme_import.h). */
#include "acme_import.h"
#include "acme_directory.h"
#include "acme_x509.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <jansson.h>

#define IMPORT_URL_MAX  2048

/* One nginx-acme certificate chosen for a configured certificate. */
typedef struct {
    char            *file;      /* "<name>-<hash>.crt" */
    char            *chain;     /* PEM as read */
    size_t           chain_len;
    char            *key;       /* secret */
    size_t           key_len;
    time_t           not_before;
    time_t           not_after;
    char            *serial;
    char            *ari_id;
} import_pick_t;

static void
pick_clear(import_pick_t *p)
{
    free(p->file);
    free(p->chain);
    acme_free_secret(p->key, p->key_len);
    free(p->serial);
    free(p->ari_id);
    memset(p, 0, sizeof(*p));
}

static int
ends_with(const char *s, const char *suffix)
{
    size_t  n = strlen(s), m = strlen(suffix);

    return n > m && strcmp(s + n - m, suffix) == 0;
}

/* 1 when the certificate's names are exactly the configured identifiers (in any order). */
static int
names_match(const acme_cert_info_t *info, const acme_import_cert_t *c)
{
    acme_ident_t  id;
    acme_err_t    e;
    size_t        i, j;
    int           found;

    if (info->nnames != c->nids) {
        return 0;
    }
    for (i = 0; i < info->nnames; i++) {
        if (acme_ident_parse(info->names[i], &id, &e) != 0) {
            return 0;
        }
        found = 0;
        for (j = 0; j < c->nids && !found; j++) {
            found = c->ids[j].type == id.type && strcmp(c->ids[j].value, id.value) == 0;
        }
        acme_ident_free(&id);
        if (!found) {
            return 0;
        }
    }
    return 1;
}

static int
has_key(acme_store_t *st, const char *key, acme_err_t *err)
{
    char    *data = NULL;
    size_t   len = 0;
    int      rc;

    rc = acme_store_get(st, key, &data, &len, err);
    acme_free_secret(data, len);
    return rc;     /* 0 present, 1 absent, -1 error */
}

/*
 * One "<name>-<hash>.crt" with its ".key": checked (parses, key matches, names, currently valid, chain)
 * and matched to a configured certificate. Returns its index, -1 skipped (logged), -2 store error.
 */
static int
examine(acme_loop_t *loop, acme_store_t *src, const char *shown, const char *file, acme_import_cert_t *certs,
    size_t ncerts, import_pick_t *out, acme_err_t *err)
{
    STACK_OF(X509)    *chain = NULL;
    EVP_PKEY          *key = NULL;
    acme_cert_info_t   info;
    acme_keyspec_t     ks;
    acme_err_t         e;
    char              *keyfile = NULL, *pem = NULL, *kpem = NULL, ksbuf[16];
    size_t             len = 0, klen = 0, i;
    int                rc, idx = -1;

    memset(&info, 0, sizeof(info));
    keyfile = acme_strdup(file);
    if (keyfile == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -2;
    }
    memcpy(keyfile + strlen(keyfile) - 3, "key", 3);

    rc = acme_store_get(src, file, &pem, &len, &e);
    if (rc == 0) {
        rc = acme_store_get(src, keyfile, &kpem, &klen, &e);
        if (rc == 1) {
            acme_err_set(&e, ACME_ERR_STORE, "no %s beside it (a key=FILE certificate is ordered again)", keyfile);
        }
    }
    if (rc != 0) {
        acme_log(loop, ACME_LOG_WARN, "acme: nginx-acme's certificate %s/%s not taken over: %s", shown, file,
                 e.msg);
        goto done;
    }
    if (acme_pem_chain_parse(pem, len, &chain, &e) != 0
        || (key = acme_key_from_pem(kpem, klen, &e)) == NULL
        || acme_cert_info(sk_X509_value(chain, 0), &info, &e) != 0)
    {
        acme_log(loop, ACME_LOG_WARN, "acme: nginx-acme's certificate %s/%s not taken over: %s", shown, file,
                 e.msg);
        goto done;
    }
    if (acme_keyspec_of(key, &ks, &e) != 0) {
        acme_log(loop, ACME_LOG_WARN, "acme: nginx-acme's certificate %s/%s not taken over: its key: %s",
                 shown, file, e.msg);
        goto done;
    }
    if (EVP_PKEY_eq(X509_get0_pubkey(sk_X509_value(chain, 0)), key) != 1) {
        acme_log(loop, ACME_LOG_WARN, "acme: nginx-acme's certificate %s/%s not taken over: %s does not match "
                 "it", shown, file, keyfile);
        goto done;
    }
    for (i = 0; i < ncerts; i++) {
        if (certs[i].keyspec.alg == ks.alg && certs[i].keyspec.bits == ks.bits && names_match(&info, &certs[i])) {
            break;
        }
    }
    if (i == ncerts) {
        acme_buf_t  b;

        memset(&b, 0, sizeof(b));
        for (i = 0; i < info.nnames; i++) {
            (void) acme_buf_printf(&b, "%s%s", i ? ", " : "", info.names[i]);
        }
        acme_log(loop, ACME_LOG_WARN, "acme: nginx-acme's certificate %s/%s not taken over: its names (%s) "
                 "and key type %s match no certificate configured for this state_path", shown, file,
                 b.data ? b.data : "none", acme_keyspec_str(&ks, ksbuf, sizeof(ksbuf)));
        acme_buf_free(&b);
        goto done;
    }
    if (acme_chain_check(chain, key, certs[i].ids, certs[i].nids, time(NULL), &e) != 0) {
        acme_log(loop, ACME_LOG_WARN, "acme: nginx-acme's certificate %s/%s not taken over: %s", shown, file,
                 e.msg);
        goto done;
    }

    out->file = acme_strdup(file);
    out->serial = acme_strdup(info.serial_hex ? info.serial_hex : "");
    out->ari_id = acme_ari_cert_id(sk_X509_value(chain, 0), NULL);
    /* stored as our own downloads are: re-serialised, so nothing but the certificates comes along */
    out->chain = acme_pem_chain_string(chain, &out->chain_len, &e);
    out->key = out->chain ? acme_key_to_pem(key, &out->key_len, &e) : NULL;
    if (out->file == NULL || out->serial == NULL || out->key == NULL) {
        pick_clear(out);
        acme_err_set(err, ACME_ERR_INTERNAL, "taking over %s/%s: out of memory", shown, file);
        idx = -2;
        goto done;
    }
    out->not_before = info.not_before;
    out->not_after = info.not_after;
    idx = (int) i;

done:
    acme_cert_info_free(&info);
    acme_chain_free(chain);
    EVP_PKEY_free(key);
    free(pem);
    acme_free_secret(kpem, klen);
    free(keyfile);
    return idx;
}

/* Store the chosen certificate as certs/<name>. 1 taken over, 0 skipped, -1 store error. */
static int
take_cert(acme_loop_t *loop, const char *shown, acme_store_t *dst, acme_import_cert_t *c, import_pick_t *p,
    acme_err_t *err)
{
    acme_import_item_t  it;
    int                 rc;
    char                until[32];
    struct tm           tm;

    memset(&it, 0, sizeof(it));
    it.chain = p->chain;
    it.chain_len = p->chain_len;
    it.key = p->key;
    it.key_len = p->key_len;
    it.not_before = p->not_before;
    it.not_after = p->not_after;
    it.ari_id = p->ari_id;
    rc = acme_import_store_cert(dst, c->name, c->ids, c->nids, &c->keyspec, c->ca, &it, err);
    if (rc <= 0) {
        if (rc == 0) {
            acme_log(loop, ACME_LOG_WARN, "acme: nginx-acme's certificate %s/%s not taken over: \"%s\" already "
                     "has one in the store", shown, p->file, c->name);
        }
        return rc;
    }
    c->imported = 1;
    gmtime_r(&p->not_after, &tm);
    strftime(until, sizeof(until), "%Y-%m-%dT%H:%M:%SZ", &tm);
    acme_log(loop, ACME_LOG_NOTICE, "acme: took over nginx-acme's certificate %s/%s as \"%s\" (serial %s, "
             "valid until %s)", shown, p->file, c->name, p->serial, until);
    return 1;
}

/* account.key and account.url. 1 taken over, 0 none or skipped, -1 store error. */
static int
take_account(acme_loop_t *loop, acme_store_t *src, const char *shown, acme_store_t *dst,
    const acme_import_account_t *a, char **url_out, acme_err_t *err)
{
    EVP_PKEY    *key = NULL;
    acme_err_t   e;
    char        *pem = NULL, *url = NULL;
    char         o1[512], o2[512];
    size_t       len = 0, ulen = 0;
    int          rc, ret = -1;

    rc = acme_store_get(src, "account.key", &pem, &len, &e);
    if (rc != 0) {
        if (rc < 0) {
            /* a link or another unreadable file there is skipped, never followed */
            acme_log(loop, ACME_LOG_WARN, "acme: nginx-acme's account %s/account.key not taken over: %s",
                     shown, e.msg);
        }
        return 0;
    }
    if (a == NULL || a->ca == NULL) {
        acme_log(loop, ACME_LOG_WARN, "acme: nginx-acme's account %s/account.key not taken over: no single "
                 "issuer of this state_path to take it (several CAs, or account_key FILE)", shown);
        ret = 0;
        goto done;
    }
    key = acme_key_from_pem(pem, len, &e);
    if (key == NULL || acme_jws_alg(key) == NULL) {
        acme_log(loop, ACME_LOG_WARN, "acme: nginx-acme's account %s/account.key not taken over: %s", shown,
                 key == NULL ? e.msg : "a key type the client cannot sign with");
        ret = 0;
        goto done;
    }
    if (acme_store_get(src, "account.url", &url, &ulen, &e) < 0) {
        acme_log(loop, ACME_LOG_WARN, "acme: nginx-acme's %s/account.url not read (%s): the account is looked "
                 "up by its key", shown, e.msg);
        free(url);
        url = NULL;
        ulen = 0;
    }
    while (url != NULL && ulen > 0 && (url[ulen - 1] == '\n' || url[ulen - 1] == '\r' || url[ulen - 1] == ' ')) {
        url[--ulen] = '\0';
    }
    if (url != NULL && (ulen == 0 || ulen > IMPORT_URL_MAX || strlen(url) != ulen || !acme_url_valid(url))) {
        acme_log(loop, ACME_LOG_WARN, "acme: nginx-acme's %s/account.url is not a URL: the account is looked "
                 "up by its key", shown);
        free(url);
        url = NULL;
    }
    if (url != NULL && (acme_url_origin(url, o1, sizeof(o1)) != 0 || acme_url_origin(a->ca, o2, sizeof(o2)) != 0
                        || strcmp(o1, o2) != 0))
    {
        /* an account of another CA (the issuer's uri changed): its URL would only be refused */
        acme_log(loop, ACME_LOG_WARN, "acme: nginx-acme's %s/account.url (%s) is not at %s: the account is "
                 "looked up by its key", shown, url, a->ca);
        free(url);
        url = NULL;
    }
    /* without a URL (nginx-acme found an existing account), the client looks the account up by its key */
    rc = acme_import_store_account(dst, a->ca, key, url, a->contact, a->ncontact, NULL, err);
    if (rc < 0) {
        goto done;
    }
    if (rc == 0) {
        acme_log(loop, ACME_LOG_WARN, "acme: nginx-acme's account %s/account.key not taken over: the store "
                 "already has an account for %s", shown, a->ca);
        ret = 0;
        goto done;
    }
    acme_log(loop, ACME_LOG_NOTICE, "acme: took over nginx-acme's account %s/account.key for %s (%s)", shown,
             a->ca, url ? url : "URL looked up by the key");
    *url_out = url;
    url = NULL;
    ret = 1;

done:
    EVP_PKEY_free(key);
    acme_free_secret(pem, len);
    free(url);
    return ret;
}

int
acme_import_nginx_acme(acme_loop_t *loop, acme_store_t *src, const char *shown, acme_store_t *dst,
    const acme_import_account_t *account, acme_import_cert_t *certs, size_t ncerts, acme_err_t *err)
{
    import_pick_t  *picks = NULL, p;
    json_t         *rec = NULL, *files;
    char          **names = NULL, *url = NULL, *js = NULL;
    size_t          n = 0, i, found = 0;
    int             rc, idx, taken = 0, ret = -1;

    /* in the state_path itself: with a shared store, later starts need not reach it to know */
    rc = has_key(src, ACME_IMPORT_MARKER, err);
    if (rc <= 0) {
        return rc;      /* done before, or an error */
    }
    if (src->ops->list(src, "", &names, &n, err) != 0) {
        acme_err_prefix(err, "looking for nginx-acme's state in %s", shown);
        return -1;
    }
    for (i = 0; i < n; i++) {
        if (strcmp(names[i], "account.key") == 0 || ends_with(names[i], ".crt")) {
            found++;
        }
    }
    if (found == 0) {
        acme_store_list_free(names, n);
        return 0;
    }
    picks = calloc(ncerts + 1, sizeof(import_pick_t));
    rec = json_object();
    files = json_array();
    if (picks == NULL || rec == NULL || files == NULL) {
        json_decref(files);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }
    json_object_set_new(rec, "certificates", files);

    rc = take_account(loop, src, shown, dst, account, &url, err);
    if (rc < 0) {
        goto done;
    }
    taken += rc;

    for (i = 0; i < n; i++) {
        if (!ends_with(names[i], ".crt")) {
            continue;
        }
        memset(&p, 0, sizeof(p));
        idx = examine(loop, src, shown, names[i], certs, ncerts, &p, err);
        if (idx == -2) {
            goto done;
        }
        if (idx < 0) {
            continue;
        }
        if (picks[idx].file == NULL || p.not_after > picks[idx].not_after) {
            if (picks[idx].file != NULL) {
                acme_log(loop, ACME_LOG_INFO, "acme: nginx-acme's certificate %s/%s not taken over: %s is newer",
                         shown, picks[idx].file, p.file);
            }
            pick_clear(&picks[idx]);
            picks[idx] = p;
        } else {
            acme_log(loop, ACME_LOG_INFO, "acme: nginx-acme's certificate %s/%s not taken over: %s is newer",
                     shown, p.file, picks[idx].file);
            pick_clear(&p);
        }
    }
    for (i = 0; i < ncerts; i++) {
        if (picks[i].file == NULL) {
            continue;
        }
        rc = take_cert(loop, shown, dst, &certs[i], &picks[i], err);
        if (rc < 0) {
            goto done;
        }
        if (rc == 1) {
            json_array_append_new(files, json_pack("{s:s, s:s, s:s}", "file", picks[i].file, "name",
                                                   certs[i].name, "serial", picks[i].serial));
        }
        taken += rc;
    }

    json_object_set_new(rec, "from", json_string(shown));
    json_object_set_new(rec, "at", json_integer((json_int_t) time(NULL)));
    json_object_set_new(rec, "account", url ? json_string(url) : json_null());
    js = json_dumps(rec, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (js == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }
    if (acme_store_put(src, ACME_IMPORT_MARKER, js, strlen(js), 0, err) != 0) {
        goto done;
    }
    ret = taken;

done:
    if (ret < 0) {
        acme_err_prefix(err, "taking over nginx-acme's state in %s", shown);
    }
    for (i = 0; picks != NULL && i < ncerts; i++) {
        pick_clear(&picks[i]);
    }
    free(picks);
    json_decref(rec);
    free(js);
    free(url);
    acme_store_list_free(names, n);
    return ret;
}
