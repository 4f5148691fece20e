/* What every import shares: checking another tool's certificate, storing it and an account (acme_import.h). */
#include "acme_import.h"
#include "acme_directory.h"
#include "acme_x509.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <jansson.h>

void
acme_import_item_free(acme_import_item_t *it)
{
    size_t  i;

    free(it->chain);
    acme_free_secret(it->key, it->key_len);
    for (i = 0; i < it->nids; i++) {
        acme_ident_free(&it->ids[i]);
    }
    free(it->ids);
    free(it->serial);
    free(it->ari_id);
    free(it->issuer_cn);
    memset(it, 0, sizeof(*it));
}

/* The leaf's names as identifiers, first (when among them) first. 0, 1 with err, -1 out of memory. */
static int
item_ids(const acme_cert_info_t *info, const char *first, acme_import_item_t *it, acme_err_t *err)
{
    size_t  i, at = 0;

    if (info->nnames == 0) {
        acme_err_set(err, ACME_ERR_INPUT, "the certificate names nothing (no subjectAltName)");
        return 1;
    }
    it->ids = calloc(info->nnames, sizeof(acme_ident_t));
    if (it->ids == NULL) {
        return -1;
    }
    for (i = 0; i < info->nnames; i++) {
        if (first != NULL && strcasecmp(info->names[i], first) == 0) {
            at = i;
        }
    }
    for (i = 0; i < info->nnames; i++) {
        /* the first identifier names the certificate in the store, as the servers name theirs */
        size_t  from = i == 0 ? at : (i <= at ? i - 1 : i);

        if (acme_ident_parse(info->names[from], &it->ids[i], err) != 0) {
            acme_err_prefix(err, "its name %s", info->names[from]);
            return 1;
        }
        it->nids++;
    }
    return 0;
}

int
acme_import_check(const char *chain, size_t chain_len, const char *key, size_t key_len, const char *first,
    time_t now, acme_import_item_t *it, acme_err_t *err)
{
    STACK_OF(X509)    *sk = NULL;
    EVP_PKEY          *pk = NULL;
    acme_cert_info_t   info;
    int                rc = 1;

    memset(it, 0, sizeof(*it));
    memset(&info, 0, sizeof(info));
    if (acme_pem_chain_parse(chain, chain_len, &sk, err) != 0
        || (pk = acme_key_from_pem(key, key_len, err)) == NULL
        || acme_cert_info(sk_X509_value(sk, 0), &info, err) != 0)
    {
        goto done;
    }
    if (acme_keyspec_of(pk, &it->keyspec, err) != 0) {
        acme_err_prefix(err, "its key");
        goto done;
    }
    if (EVP_PKEY_eq(X509_get0_pubkey(sk_X509_value(sk, 0)), pk) != 1) {
        acme_err_set(err, ACME_ERR_INPUT, "the key does not match the certificate");
        goto done;
    }
    rc = item_ids(&info, first, it, err);
    if (rc != 0) {
        goto done;
    }
    rc = 1;
    if (acme_chain_check(sk, pk, it->ids, it->nids, now, err) != 0) {
        goto done;
    }
    rc = -1;
    it->serial = acme_strdup(info.serial_hex ? info.serial_hex : "");
    it->issuer_cn = info.issuer_cn ? acme_strdup(info.issuer_cn) : NULL;
    it->ari_id = acme_ari_cert_id(sk_X509_value(sk, 0), NULL);
    it->chain = acme_pem_chain_string(sk, &it->chain_len, err);
    it->key = it->chain ? acme_key_to_pem(pk, &it->key_len, err) : NULL;
    if (it->serial == NULL || it->key == NULL || (info.issuer_cn != NULL && it->issuer_cn == NULL)) {
        goto done;
    }
    it->not_before = info.not_before;
    it->not_after = info.not_after;
    rc = 0;

done:
    if (rc == -1) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    }
    if (rc != 0) {
        acme_import_item_free(it);
    }
    acme_cert_info_free(&info);
    acme_chain_free(sk);
    EVP_PKEY_free(pk);
    return rc;
}

/* 0 present, 1 absent, -1 error */
static int
present(acme_store_t *st, const char *key, acme_err_t *err)
{
    char    *data = NULL;
    size_t   len = 0;
    int      rc;

    rc = acme_store_get(st, key, &data, &len, err);
    acme_free_secret(data, len);
    return rc;
}

int
acme_import_store_cert(acme_store_t *dst, const char *name, const acme_ident_t *ids, size_t nids,
    const acme_keyspec_t *ks, const char *ca, const acme_import_item_t *it, acme_err_t *err)
{
    acme_certmeta_t  m;
    char            *k;
    int              rc;

    k = acme_sprintf("certs/%s/fullchain.pem", name);
    if (k == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    rc = present(dst, k, err);
    free(k);
    if (rc <= 0) {
        return rc;      /* there is one, or an error */
    }
    memset(&m, 0, sizeof(m));
    m.name = (char *) name;
    m.ids = (acme_ident_t *) ids;
    m.nids = nids;
    m.keyspec = *ks;
    m.ca = (char *) ca;
    m.not_before = it->not_before;
    m.not_after = it->not_after;
    m.ari_cert_id = it->ari_id;
    m.issued_at = time(NULL);
    if (acme_store_cert_save(dst, name, it->chain, it->chain_len, it->key, it->key_len, &m, err) != 0) {
        return -1;
    }
    return 1;
}

int
acme_import_store_account(acme_store_t *dst, const char *ca, EVP_PKEY *key, const char *url,
    const char *const *contact, size_t ncontact, int *same, acme_err_t *err)
{
    EVP_PKEY  *have;
    json_t    *o = NULL, *c;
    char      *ca_id, *pem = NULL, *js = NULL, *cur = NULL, *cur_json = NULL;
    size_t     len = 0, cur_len = 0, i;
    int        rc, ret = -1;

    if (acme_jws_alg(key) == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "a key type the client cannot sign with");
        return -1;
    }
    ca_id = acme_ca_id(ca);
    if (ca_id == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    rc = acme_store_account_load(dst, ca_id, &cur, &cur_len, &cur_json, err);
    if (rc < 0) {
        goto done;
    }
    if (rc == 0) {
        if (same != NULL) {
            have = acme_key_from_pem(cur, cur_len, NULL);
            *same = have != NULL && acme_key_matches(have, key);
            EVP_PKEY_free(have);
        }
        ret = 0;
        goto done;
    }
    pem = acme_key_to_pem(key, &len, err);
    c = json_array();
    o = json_object();
    if (pem == NULL || c == NULL || o == NULL) {
        json_decref(c);
        if (pem != NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        }
        goto done;
    }
    for (i = 0; i < ncontact; i++) {
        json_array_append_new(c, json_string(contact[i]));
    }
    json_object_set_new(o, "contact", c);
    json_object_set_new(o, "directory", json_string(ca));
    if (url != NULL) {
        json_object_set_new(o, "url", json_string(url));
    }
    js = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (js == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }
    if (acme_store_account_save(dst, ca_id, pem, len, js, err) != 0) {
        goto done;
    }
    ret = 1;

done:
    acme_free_secret(pem, len);
    acme_free_secret(cur, cur_len);
    free(cur_json);
    json_decref(o);
    free(js);
    free(ca_id);
    return ret;
}
