/*
 * certbot's layout (certbot/_internal/storage.py, account.py, configuration.py), under its config dir:
 *   renewal/NAME.conf        one per lineage (configobj: "key = value", [renewalparams] with server,
 *                            account, key_type, rsa_key_size, elliptic_curve, preferred_chain)
 *   live/NAME/fullchain.pem, privkey.pem    links into archive/NAME/ (fullchainN.pem, privkeyN.pem)
 *   accounts/<netloc><path of the server URL>/<id>/private_key.json (the key as a JWK), regr.json ("uri":
 *                            the account URL, "body"), meta.json
 * certbot only knows a lineage by its renewal/NAME.conf: a live/ directory without one is reported.
 */
#include "import.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>
#include <openssl/bn.h>

#include "acme_b64.h"
#include "acme_directory.h"

#define CERTBOT_DEFAULT_SERVER  "https://acme-v02.api.letsencrypt.org/directory"

/* The renewal configuration's values that matter here. */
typedef struct {
    char  *server;
    char  *account;
    char  *preferred_chain;
} certbot_conf_t;

static void
conf_free(certbot_conf_t *c)
{
    free(c->server);
    free(c->account);
    free(c->preferred_chain);
    memset(c, 0, sizeof(*c));
}

/* configobj text: the [renewalparams] keys we use ("key = value", values maybe quoted). */
static int
conf_parse(char *text, certbot_conf_t *c)
{
    char   *line, *save = NULL, *eq, *k, *v, *e;
    int     section = 0;
    char  **slot;

    for (line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        while (*line == ' ' || *line == '\t') {
            line++;
        }
        if (*line == '#' || *line == '\0' || *line == '\r') {
            continue;
        }
        if (*line == '[') {
            /* [[webroot_map]] and other subsections are not renewalparams' own values */
            section = strncmp(line, "[renewalparams]", 15) == 0 ? 1 : 2;
            continue;
        }
        eq = strchr(line, '=');
        if (eq == NULL || section != 1) {
            continue;
        }
        k = line;
        e = eq;
        while (e > k && (e[-1] == ' ' || e[-1] == '\t')) {
            e--;
        }
        *e = '\0';
        v = eq + 1;
        while (*v == ' ' || *v == '\t') {
            v++;
        }
        e = v + strlen(v);
        while (e > v && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r')) {
            e--;
        }
        if (e - v >= 2 && (*v == '"' || *v == '\'') && e[-1] == *v) {
            v++;
            e--;
        }
        *e = '\0';
        slot = strcmp(k, "server") == 0 ? &c->server
               : strcmp(k, "account") == 0 ? &c->account
               : strcmp(k, "preferred_chain") == 0 ? &c->preferred_chain : NULL;
        if (slot != NULL) {
            free(*slot);
            if ((*slot = acme_strdup(v)) == NULL) {
                return -1;
            }
        }
    }
    return 0;
}

static BIGNUM *
jwk_bn(json_t *jwk, const char *member)
{
    const char     *s = json_string_value(json_object_get(jwk, member));
    unsigned char  *raw = NULL;
    size_t          len = 0;
    BIGNUM         *bn;

    if (s == NULL || acme_b64url_decode(s, strlen(s), &raw, &len) != 0) {
        return NULL;
    }
    bn = BN_bin2bn(raw, (int) len, NULL);
    acme_free_secret(raw, len);
    return bn;
}

/* certbot's private_key.json (josepy's JWK: RSA as certbot makes them, EC too). NULL when it is not one. */
static EVP_PKEY *
jwk_private_key(const char *text, size_t len)
{
    static const char  *rsa[] = { "n", "e", "d", "p", "q", "dp", "dq", "qi" };
    static const char  *rsa_param[] = {
        OSSL_PKEY_PARAM_RSA_N, OSSL_PKEY_PARAM_RSA_E, OSSL_PKEY_PARAM_RSA_D, OSSL_PKEY_PARAM_RSA_FACTOR1,
        OSSL_PKEY_PARAM_RSA_FACTOR2, OSSL_PKEY_PARAM_RSA_EXPONENT1, OSSL_PKEY_PARAM_RSA_EXPONENT2,
        OSSL_PKEY_PARAM_RSA_COEFFICIENT1
    };
    OSSL_PARAM_BLD  *bld = NULL;
    OSSL_PARAM      *params = NULL;
    EVP_PKEY_CTX    *ctx = NULL;
    EVP_PKEY        *key = NULL;
    BIGNUM          *bn[8] = { NULL };
    json_t          *jwk;
    const char      *kty, *crv, *group, *xs, *ys;
    unsigned char   *x = NULL, *y = NULL, pub[1 + 2 * 66];
    EVP_PKEY_CTX    *check = NULL;
    size_t           xl = 0, yl = 0, i;

    jwk = json_loadb(text, len, 0, NULL);
    kty = json_string_value(json_object_get(jwk, "kty"));
    bld = OSSL_PARAM_BLD_new();
    if (jwk == NULL || kty == NULL || bld == NULL) {
        goto done;
    }
    if (strcmp(kty, "RSA") == 0) {
        ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
        for (i = 0; i < 8; i++) {
            bn[i] = jwk_bn(jwk, rsa[i]);
            if (bn[i] == NULL || !OSSL_PARAM_BLD_push_BN(bld, rsa_param[i], bn[i])) {
                goto done;
            }
        }
    } else if (strcmp(kty, "EC") == 0) {
        crv = json_string_value(json_object_get(jwk, "crv"));
        group = crv == NULL ? NULL : strcmp(crv, "P-256") == 0 ? "P-256" : strcmp(crv, "P-384") == 0 ? "P-384"
                : NULL;
        ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
        bn[0] = jwk_bn(jwk, "d");
        xs = json_string_value(json_object_get(jwk, "x"));
        ys = json_string_value(json_object_get(jwk, "y"));
        if (group == NULL || bn[0] == NULL || xs == NULL || ys == NULL
            || acme_b64url_decode(xs, strlen(xs), &x, &xl) != 0
            || acme_b64url_decode(ys, strlen(ys), &y, &yl) != 0
            || xl != yl || xl > 66)
        {
            goto done;
        }
        pub[0] = 0x04;
        memcpy(pub + 1, x, xl);
        memcpy(pub + 1 + xl, y, yl);
        if (!OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0)
            || !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, 1 + 2 * xl)
            || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, bn[0]))
        {
            goto done;
        }
    } else {
        goto done;
    }
    params = OSSL_PARAM_BLD_to_param(bld);
    if (ctx == NULL || params == NULL || EVP_PKEY_fromdata_init(ctx) <= 0
        || EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_KEYPAIR, params) <= 0)
    {
        EVP_PKEY_free(key);
        key = NULL;
    }
    /* the private half must be the public one's: a damaged file would only sign what the CA refuses */
    check = key ? EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL) : NULL;
    if (key != NULL && (check == NULL || EVP_PKEY_pairwise_check(check) != 1)) {
        EVP_PKEY_free(key);
        key = NULL;
    }

done:
    for (i = 0; i < 8; i++) {
        BN_clear_free(bn[i]);
    }
    EVP_PKEY_CTX_free(check);
    free(x);
    free(y);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(ctx);
    json_decref(jwk);
    return key;
}

/* accounts/<netloc><path>/ of a server URL, as certbot's configuration.server_path makes it. */
static char *
accounts_dir(const char *server)
{
    const char  *p = strstr(server, "://");
    size_t       n;

    p = p ? p + 3 : server;
    n = strcspn(p, "?#");
    while (n > 0 && p[n - 1] == '/') {
        n--;
    }
    return acme_sprintf("accounts/%.*s", (int) n, p);
}

/* The accounts taken already (certbot ids), so that lineages sharing one take it once. */
typedef struct {
    char   **ids;
    size_t   n;
} seen_t;

static int
seen_add(seen_t *s, const char *id)
{
    char   **v;
    size_t   i;

    for (i = 0; i < s->n; i++) {
        if (strcmp(s->ids[i], id) == 0) {
            return 1;
        }
    }
    v = realloc(s->ids, (s->n + 1) * sizeof(char *));
    if (v == NULL) {
        return -1;
    }
    s->ids = v;
    if ((s->ids[s->n] = acme_strdup(id)) == NULL) {
        return -1;
    }
    s->n++;
    return 0;
}

static int
take_account(import_run_t *r, import_src_t *src, const char *server, const char *id)
{
    acme_err_t    err;
    EVP_PKEY     *key = NULL;
    json_t       *regr = NULL;
    const char   *url;
    char         *dir, *kpath = NULL, *rpath = NULL, *jwk = NULL, *rtext = NULL, what[1200];
    size_t        klen = 0, rlen = 0;
    int           rc = 0;

    dir = accounts_dir(server);
    if (dir == NULL || strchr(id, '/') != NULL || id[0] == '.') {
        free(dir);
        return 0;
    }
    snprintf(what, sizeof(what), "certbot's account %s/%s/%s", src->root, dir, id);
    kpath = acme_sprintf("%s/%s/private_key.json", dir, id);
    rpath = acme_sprintf("%s/%s/regr.json", dir, id);
    if (kpath == NULL || rpath == NULL) {
        rc = -1;
        r->failed = 1;
        goto done;
    }
    if (import_src_read(src, kpath, &jwk, &klen, &err) != 0 || import_src_read(src, rpath, &rtext, &rlen, &err) != 0) {
        import_skip(r, what, "%s", err.msg);
        goto done;
    }
    key = jwk_private_key(jwk, klen);
    regr = json_loadb(rtext, rlen, 0, NULL);
    url = json_string_value(json_object_get(regr, "uri"));
    if (key == NULL) {
        import_skip(r, what, "private_key.json is not a private RSA or EC (P-256, P-384) JWK");
        goto done;
    }
    if (url == NULL || !acme_url_valid(url)) {
        import_skip(r, what, "regr.json has no account URL (\"uri\")");
        goto done;
    }
    rc = import_take_account(r, what, server, key, url, json_object_get(json_object_get(regr, "body"), "contact"));

done:
    EVP_PKEY_free(key);
    json_decref(regr);
    acme_free_secret(jwk, klen);
    free(rtext);
    free(kpath);
    free(rpath);
    free(dir);
    return rc;
}

/* certbot's name for a lineage is its first name, "-0001" and so on added when taken. */
static char *
lineage_first(const char *lineage)
{
    const char  *d = strrchr(lineage, '-');
    size_t       n = strlen(lineage);

    if (d != NULL && strlen(d) == 5 && strspn(d + 1, "0123456789") == 4) {
        n = (size_t) (d - lineage);
    }
    return acme_strndup(lineage, n);
}

static int
take_lineage(import_run_t *r, import_src_t *src, const char *lineage, seen_t *seen)
{
    certbot_conf_t  conf;
    acme_err_t      err;
    char           *text = NULL, *chain = NULL, *key = NULL, *path = NULL, *first = NULL, what[1200];
    size_t          len = 0, clen = 0, klen = 0;
    int             rc = 0, s;

    memset(&conf, 0, sizeof(conf));
    snprintf(what, sizeof(what), "certbot's lineage %s/live/%s", src->root, lineage);
    path = acme_sprintf("renewal/%s.conf", lineage);
    if (path == NULL) {
        r->failed = 1;
        return -1;
    }
    if (import_src_read(src, path, &text, &len, &err) != 0) {
        import_skip(r, what, "%s", err.msg);
        goto done;
    }
    if (conf_parse(text, &conf) != 0) {
        r->failed = 1;
        rc = -1;
        goto done;
    }
    if (conf.server == NULL && (conf.server = acme_strdup(CERTBOT_DEFAULT_SERVER)) == NULL) {
        r->failed = 1;
        rc = -1;
        goto done;
    }
    if (!acme_url_valid(conf.server)) {
        import_skip(r, what, "the server in renewal/%s.conf is not a URL", lineage);
        goto done;
    }
    free(path);
    path = acme_sprintf("live/%s/fullchain.pem", lineage);
    if (path == NULL || import_src_read(src, path, &chain, &clen, &err) != 0) {
        import_skip(r, what, "%s", path ? err.msg : "out of memory");
        goto done;
    }
    free(path);
    path = acme_sprintf("live/%s/privkey.pem", lineage);
    if (path == NULL || import_src_read(src, path, &key, &klen, &err) != 0) {
        import_skip(r, what, "%s", path ? err.msg : "out of memory");
        goto done;
    }
    /* the account first: a certificate is renewed by it */
    if (conf.account != NULL) {
        s = seen_add(seen, conf.account);
        if (s < 0) {
            r->failed = 1;
            rc = -1;
            goto done;
        }
        if (s == 0 && take_account(r, src, conf.server, conf.account) != 0) {
            rc = -1;
            goto done;
        }
    }
    first = lineage_first(lineage);
    rc = import_take_cert(r, what, first, conf.server, chain, clen, key, klen, conf.preferred_chain);

done:
    conf_free(&conf);
    free(text);
    free(chain);
    acme_free_secret(key, klen);
    free(path);
    free(first);
    return rc;
}

int
import_certbot(import_run_t *r, import_src_t *src)
{
    acme_err_t   err;
    seen_t       seen;
    char       **conf = NULL, **live = NULL, what[1200];
    size_t       nconf = 0, nlive = 0, i, j, len;
    int          rc, ret = 0, found;

    memset(&seen, 0, sizeof(seen));
    rc = import_src_list(src, "renewal", &conf, &nconf, &err);
    if (rc < 0) {
        fprintf(stderr, "acmectl: %s\n", err.msg);
        return -1;
    }
    if (import_src_list(src, "live", &live, &nlive, &err) < 0) {
        fprintf(stderr, "acmectl: %s\n", err.msg);
        acme_store_list_free(conf, nconf);
        return -1;
    }
    if (rc == 1 && nlive == 0) {
        fprintf(stderr, "acmectl: %s has neither renewal/ nor live/: not certbot's directory\n", src->root);
        r->skipped++;
    }
    for (i = 0; i < nconf && ret == 0; i++) {
        len = strlen(conf[i]);
        if (len <= 5 || strcmp(conf[i] + len - 5, ".conf") != 0) {
            continue;
        }
        conf[i][len - 5] = '\0';
        ret = take_lineage(r, src, conf[i], &seen);
        conf[i][len - 5] = '.';
    }
    for (i = 0; i < nlive && ret == 0; i++) {
        found = strcmp(live[i], "README") == 0;
        for (j = 0; j < nconf && !found; j++) {
            len = strlen(live[i]);
            found = strncmp(conf[j], live[i], len) == 0 && strcmp(conf[j] + len, ".conf") == 0;
        }
        if (!found) {
            snprintf(what, sizeof(what), "certbot's lineage %s/live/%s", src->root, live[i]);
            import_skip(r, what, "no renewal/%s.conf (certbot does not renew it either)", live[i]);
        }
    }
    for (i = 0; i < seen.n; i++) {
        free(seen.ids[i]);
    }
    free(seen.ids);
    acme_store_list_free(conf, nconf);
    acme_store_list_free(live, nlive);
    return ret;
}
