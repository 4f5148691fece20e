/*
 * Which backend a store is: acme_store_open picks the filesystem or Redis by the form of its argument, and
 * what every backend answers alike (its name, its generation) is here, above both backends.
 */
#include "acme_store_redis_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>

char *
acme_store_url_redact(const char *s)
{
    const char  *p, *end, *at, *colon;
    acme_buf_t   b = { NULL, 0, 0 };

    if (s == NULL) {
        return NULL;
    }
    p = strstr(s, "://");
    if (p == NULL) {
        return acme_strdup(s);
    }
    p += 3;
    end = p + strcspn(p, "/?#");
    at = memrchr(p, '@', (size_t) (end - p));
    if (at == NULL) {
        return acme_strdup(s);
    }
    colon = memchr(p, ':', (size_t) (at - p));
    if (colon == NULL) {
        return acme_strdup(s);      /* a user name alone */
    }
    if (acme_buf_append(&b, s, (size_t) (colon - s)) != 0 || acme_buf_append(&b, ":***", 4) != 0
        || acme_buf_append(&b, at, strlen(at)) != 0)
    {
        acme_buf_free(&b);
        return NULL;
    }
    return acme_buf_steal(&b);
}

acme_store_t *
acme_store_open(const char *url_or_dir, const char *key_file, int flags, acme_err_t *err)
{
    const char  *sch;

    if (url_or_dir == NULL || url_or_dir[0] == '\0') {
        acme_err_set(err, ACME_ERR_CONFIG, "no storage given");
        return NULL;
    }
    if (acme_redis_url_is(url_or_dir)) {
        return acme_store_redis_open(url_or_dir, key_file, flags, err);
    }
    sch = strstr(url_or_dir, "://");
    if (sch != NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "storage \"%.*s://...\": unknown scheme (a directory, redis:// or "
                     "rediss://)", (int) (sch - url_or_dir > 20 ? 20 : sch - url_or_dir), url_or_dir);
        return NULL;
    }
    if (key_file != NULL && key_file[0] != '\0') {
        acme_err_set(err, ACME_ERR_CONFIG, "storage %s: a storage key applies to redis:// storage only (the "
                     "filesystem store keeps secrets in files only its owner can read)", url_or_dir);
        return NULL;
    }
    return acme_store_fs_open(url_or_dir, flags & ACME_STORE_CREATE, err);
}

const char *
acme_store_backend(const acme_store_t *st)
{
    return acme_store_redis_is(st) ? "redis" : "filesystem";
}

/* ---- generation ---- */

/* Any backend but Redis: a fingerprint of every certificate's name and chain. */
static int
store_fingerprint(acme_store_t *st, unsigned long long *gen, acme_err_t *err)
{
    char          **names = NULL, *data = NULL, *key;
    size_t          n = 0, i, len = 0;
    unsigned char   md[EVP_MAX_MD_SIZE];
    unsigned int    mdlen = 0;
    EVP_MD_CTX     *ctx;
    int             rc = -1, r;

    if (st->ops->list(st, "certs", &names, &n, err) != 0) {
        return -1;
    }
    ctx = EVP_MD_CTX_new();
    if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        acme_err_ssl(err, "generation: SHA-256");
        goto done;
    }
    for (i = 0; i < n; i++) {
        key = acme_sprintf("certs/%s/fullchain.pem", names[i]);
        if (key == NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            goto done;
        }
        r = st->ops->get(st, key, &data, &len, err);
        free(key);
        if (r < 0) {
            goto done;
        }
        EVP_DigestUpdate(ctx, names[i], strlen(names[i]) + 1);
        if (r == 0) {
            char lb[32];

            snprintf(lb, sizeof(lb), "%zu:", len);
            EVP_DigestUpdate(ctx, lb, strlen(lb));
            EVP_DigestUpdate(ctx, data, len);
        } else {
            EVP_DigestUpdate(ctx, "-", 1);
        }
        free(data);
        data = NULL;
    }
    if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen < 8) {
        acme_err_ssl(err, "generation: SHA-256");
        goto done;
    }
    *gen = 0;
    for (i = 0; i < 8; i++) {
        *gen = (*gen << 8) | md[i];
    }
    rc = 0;
done:
    EVP_MD_CTX_free(ctx);
    acme_store_list_free(names, n);
    return rc;
}

int
acme_store_generation(acme_store_t *st, unsigned long long *gen, acme_err_t *err)
{
    if (st == NULL || gen == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "generation: no store or output");
        return -1;
    }
    *gen = 0;
    if (!acme_store_redis_is(st)) {
        return store_fingerprint(st, gen, err);
    }
    return acme_store_redis_generation(st, gen, err);
}
