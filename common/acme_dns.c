/* DNS validation: its configuration and the dns-01 record's name and value. */
#include "acme_dns_int.h"
#include "acme_b64.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <jansson.h>

const char *
acme_dns_method_name(acme_dns_method_t m)
{
    switch (m) {
    case ACME_DNS_RFC2136:
        return "rfc2136";
    case ACME_DNS_HOOK:
        return "hook";
    case ACME_DNS_ACMEDNS:
        return "acme-dns";
    default:
        return "none";
    }
}

static void
secret_free(char *s)
{
    if (s != NULL) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

static void
acmedns_accounts_free(acme_acmedns_account_t *a, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        free(a[i].domain);
        free(a[i].username);
        secret_free(a[i].password);
        free(a[i].subdomain);
        free(a[i].fulldomain);
    }
    free(a);
}

void
acme_dns_config_free(acme_dns_config_t *cfg)
{
    free(cfg->resolver);
    free(cfg->server);
    acme_tsig_key_free(&cfg->tsig);
    free(cfg->hook);
    free(cfg->acmedns_url);
    acmedns_accounts_free(cfg->acmedns, cfg->nacmedns);
    memset(cfg, 0, sizeof(*cfg));
}

static int
dup_opt(char **dst, const char *src)
{
    *dst = NULL;
    return src != NULL && (*dst = acme_strdup(src)) == NULL ? -1 : 0;
}

void
acme_dns_record_clear(acme_dns_record_t *rec)
{
    free(rec->name);
    free(rec->value);
    free(rec->ident);
    free(rec->cert);
    free(rec->type);
    free(rec->issuers);
    memset(rec, 0, sizeof(*rec));
}

int
acme_dns_record_copy(acme_dns_record_t *dst, const acme_dns_record_t *src)
{
    memset(dst, 0, sizeof(*dst));
    if (dup_opt(&dst->name, src->name) != 0 || dup_opt(&dst->value, src->value) != 0
        || dup_opt(&dst->ident, src->ident) != 0 || dup_opt(&dst->cert, src->cert) != 0
        || dup_opt(&dst->type, src->type) != 0 || dup_opt(&dst->issuers, src->issuers) != 0)
    {
        acme_dns_record_clear(dst);
        return -1;
    }
    return 0;
}

int
acme_dns_config_copy(acme_dns_config_t *dst, const acme_dns_config_t *src)
{
    memset(dst, 0, sizeof(*dst));
    dst->method = src->method;
    dst->propagation_timeout = src->propagation_timeout;
    if ((src->resolver != NULL && (dst->resolver = acme_strdup(src->resolver)) == NULL)
        || (src->server != NULL && (dst->server = acme_strdup(src->server)) == NULL)
        || (src->tsig.name != NULL && (dst->tsig.name = acme_strdup(src->tsig.name)) == NULL)
        || (src->tsig.algorithm != NULL && (dst->tsig.algorithm = acme_strdup(src->tsig.algorithm)) == NULL)
        || (src->tsig.secret != NULL && (dst->tsig.secret = acme_strdup(src->tsig.secret)) == NULL)
        || dup_opt(&dst->hook, src->hook) != 0 || dup_opt(&dst->acmedns_url, src->acmedns_url) != 0)
    {
        acme_dns_config_free(dst);
        return -1;
    }
    dst->hook_timeout = src->hook_timeout;
    if (src->nacmedns > 0) {
        size_t i;

        dst->acmedns = calloc(src->nacmedns, sizeof(*dst->acmedns));
        if (dst->acmedns == NULL) {
            acme_dns_config_free(dst);
            return -1;
        }
        dst->nacmedns = src->nacmedns;
        for (i = 0; i < src->nacmedns; i++) {
            const acme_acmedns_account_t *a = &src->acmedns[i];
            acme_acmedns_account_t       *b = &dst->acmedns[i];
            if (dup_opt(&b->domain, a->domain) != 0 || dup_opt(&b->username, a->username) != 0
                || dup_opt(&b->password, a->password) != 0 || dup_opt(&b->subdomain, a->subdomain) != 0
                || dup_opt(&b->fulldomain, a->fulldomain) != 0)
            {
                acme_dns_config_free(dst);
                return -1;
            }
        }
    }
    return 0;
}

int
acme_dns_config_check(const acme_dns_config_t *cfg, acme_err_t *err)
{
    if (cfg->propagation_timeout < 0 || cfg->hook_timeout < 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "the DNS %s timeout is negative",
                     cfg->hook_timeout < 0 ? "hook" : "propagation");
        return -1;
    }
    switch (cfg->method) {
    case ACME_DNS_RFC2136:
        if (cfg->tsig.name == NULL || cfg->tsig.secret == NULL) {
            acme_err_set(err, ACME_ERR_CONFIG, "RFC 2136 updates need a TSIG key");
            return -1;
        }
        return acme_dns_rfc2136_check(cfg, err);
    case ACME_DNS_HOOK:
        return acme_dns_hook_check(cfg, err);
    case ACME_DNS_ACMEDNS:
        return acme_dns_acmedns_check(cfg, err);
    default:
        acme_err_set(err, ACME_ERR_CONFIG, "no DNS update method configured");
        return -1;
    }
}

/* ---- acme-dns account files ---- */

#define ACMEDNS_FILE_MAX  (1024 * 1024)

static int
acmedns_account_set(acme_acmedns_account_t *a, const char *domain, json_t *o, const char *what,
    acme_err_t *err)
{
    static const char  *fields[] = { "username", "password", "subdomain", "fulldomain" };
    const char         *v[4];
    size_t              i;

    memset(a, 0, sizeof(*a));
    for (i = 0; i < 4; i++) {
        v[i] = json_string_value(json_object_get(o, fields[i]));
        if (v[i] == NULL || v[i][0] == '\0') {
            acme_err_set(err, ACME_ERR_CONFIG, "%s: the account%s%s has no \"%s\"", what,
                         domain ? " for " : "", domain ? domain : "", fields[i]);
            return -1;
        }
    }
    if (strspn(v[2], "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != strlen(v[2])
        || strspn(v[3], "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
           != strlen(v[3]))
    {
        acme_err_set(err, ACME_ERR_CONFIG, "%s: the account%s%s: \"subdomain\" or \"fulldomain\" is not a DNS "
                     "name", what, domain ? " for " : "", domain ? domain : "");
        return -1;
    }
    if (dup_opt(&a->domain, domain) != 0 || dup_opt(&a->username, v[0]) != 0
        || dup_opt(&a->password, v[1]) != 0 || dup_opt(&a->subdomain, v[2]) != 0
        || dup_opt(&a->fulldomain, v[3]) != 0)
    {
        free(a->domain);
        free(a->username);
        secret_free(a->password);
        free(a->subdomain);
        free(a->fulldomain);
        memset(a, 0, sizeof(*a));
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    return 0;
}

int
acme_acmedns_parse(const char *text, size_t len, const char *what, acme_dns_config_t *cfg, acme_err_t *err)
{
    json_t        *root, *o;
    json_error_t   je;
    const char    *domain;
    size_t         n = 0;
    int            rc = -1;

    root = json_loadb(text, len, 0, &je);
    if (!json_is_object(root)) {
        /* jansson's message may quote the text: only its position */
        acme_err_set(err, ACME_ERR_CONFIG, "%s: not a JSON object (line %d)", what, je.line);
        json_decref(root);
        return -1;
    }
    acmedns_accounts_free(cfg->acmedns, cfg->nacmedns);
    cfg->acmedns = NULL;
    cfg->nacmedns = 0;
    if (json_object_get(root, "username") != NULL) {
        cfg->acmedns = calloc(1, sizeof(*cfg->acmedns));
        if (cfg->acmedns == NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        } else if (acmedns_account_set(cfg->acmedns, NULL, root, what, err) == 0) {
            cfg->nacmedns = 1;
            rc = 0;
        }
        goto done;
    }
    cfg->acmedns = calloc(json_object_size(root) + 1, sizeof(*cfg->acmedns));
    if (cfg->acmedns == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }
    json_object_foreach(root, domain, o) {
        if (!json_is_object(o)) {
            acme_err_set(err, ACME_ERR_CONFIG, "%s: \"%.200s\" is not an account object", what, domain);
            goto done;
        }
        if (acmedns_account_set(&cfg->acmedns[n], domain, o, what, err) != 0) {
            goto done;
        }
        cfg->nacmedns = ++n;
    }
    if (n == 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "%s: no account", what);
        goto done;
    }
    rc = 0;
done:
    if (rc != 0) {
        acmedns_accounts_free(cfg->acmedns, cfg->nacmedns);
        cfg->acmedns = NULL;
        cfg->nacmedns = 0;
    }
    json_decref(root);
    return rc;
}

int
acme_acmedns_load(const char *path, acme_dns_config_t *cfg, acme_err_t *err)
{
    FILE    *f;
    char    *buf, what[600];
    size_t   n;
    int      rc;

    snprintf(what, sizeof(what), "acme-dns account file \"%s\"", path);
    f = fopen(path, "re");
    if (f == NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "%s: %s", what, strerror(errno));
        return -1;
    }
    buf = malloc(ACMEDNS_FILE_MAX + 1);
    if (buf == NULL) {
        fclose(f);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    n = fread(buf, 1, ACMEDNS_FILE_MAX + 1, f);
    if (ferror(f) || n > ACMEDNS_FILE_MAX) {
        acme_err_set(err, ACME_ERR_CONFIG, "%s: %s", what, ferror(f) ? "read error" : "larger than 1 MiB");
        rc = -1;
    } else {
        rc = acme_acmedns_parse(buf, n, what, cfg, err);
    }
    fclose(f);
    OPENSSL_cleanse(buf, n < ACMEDNS_FILE_MAX + 1 ? n : ACMEDNS_FILE_MAX + 1);
    free(buf);
    return rc;
}

const acme_acmedns_account_t *
acme_acmedns_account(const acme_dns_config_t *cfg, const char *ident)
{
    const acme_acmedns_account_t  *any = NULL;
    size_t                          i;
    const char                     *d;

    if (strncmp(ident, "*.", 2) == 0) {
        ident += 2;
    }
    for (i = 0; i < cfg->nacmedns; i++) {
        d = cfg->acmedns[i].domain;
        if (d == NULL) {
            any = &cfg->acmedns[i];
            continue;
        }
        if (strncmp(d, "*.", 2) == 0) {
            d += 2;
        }
        if (strcasecmp(d, ident) == 0) {
            return &cfg->acmedns[i];
        }
    }
    return any;
}

/* ---- dns-01 ---- */

char *
acme_dns01_value(const char *key_authz)
{
    unsigned char  md[EVP_MAX_MD_SIZE];
    unsigned int   mdlen = 0;

    if (EVP_Digest(key_authz, strlen(key_authz), md, &mdlen, EVP_sha256(), NULL) != 1) {
        return NULL;
    }
    return acme_b64url_encode(md, mdlen);
}

char *
acme_dns01_name(const char *domain)
{
    if (strncmp(domain, "*.", 2) == 0) {
        domain += 2;
    }
    return acme_sprintf("_acme-challenge.%s", domain);
}

char *
acme_dns_account01_name(const char *domain, const char *account_url)
{
    static const char  b32[] = "abcdefghijklmnopqrstuvwxyz234567";
    unsigned char      md[EVP_MAX_MD_SIZE];
    unsigned int       mdlen = 0, i, bits = 0, acc = 0;
    char               label[17];
    size_t             n = 0;

    if (EVP_Digest(account_url, strlen(account_url), md, &mdlen, EVP_sha256(), NULL) != 1) {
        return NULL;
    }
    /* 10 bytes are 80 bits: 16 characters of 5 bits, no padding */
    for (i = 0; i < 10; i++) {
        acc = (acc << 8) | md[i];
        bits += 8;
        while (bits >= 5) {
            label[n++] = b32[(acc >> (bits - 5)) & 31];
            bits -= 5;
        }
    }
    label[n] = '\0';
    if (strncmp(domain, "*.", 2) == 0) {
        domain += 2;
    }
    return acme_sprintf("_%s._acme-challenge.%s", label, domain);
}
