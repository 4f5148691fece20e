/*
 * mod_ssl integration.
 *
 * Startup (post_config, before mod_ssl): every managed certificate gets files for mod_ssl through the
 * core's ssl_add_cert_files hook: the stored certs/<name>/fullchain.pem + privkey.pem when they exist,
 * otherwise a self-signed fallback generated into the state directory. (We do not hand the fallback to
 * ssl_add_fallback_cert_files: mod_ssl then marks the vhost "503 until restart" in its own private state,
 * which would defeat the hot swap of the first real certificate. We answer 503 ourselves instead, per
 * connection, while the handshake served a fallback.)
 *
 * Hot swap: mod_ssl's optional init_server hook hands us each SSL vhost's SSL_CTX; we install an OpenSSL
 * certificate callback on it. The callback serves this process's parsed certificates. Each certificate has
 * a generation number in shared memory, which the driver bumps once the certificate's local files changed
 * (the fs store, or with ACMEStorage the local cache it writes from Redis); a handshake re-parses only the
 * certificates of its vhost whose generation moved, from those local files, once per change and process.
 * So a renewed certificate is served from the next handshake in every child, without restart, without
 * reading files per handshake, and never waiting for Redis.
 */
#include "mod_acme.h"

#include <http_core.h>
#include <http_protocol.h>
#include <http_request.h>
#include <http_ssl.h>
#include <mod_ssl.h>
#include <unixd.h>
#include <apr_optional_hooks.h>
#include <apr_atomic.h>

#include <openssl/err.h>

#include <unistd.h>
#include <time.h>

#include "acme_err.h"
#include "acme_store.h"
#include "acme_x509.h"
#include "acme_tlsalpn.h"

/* mod_ssl's optional hooks that Debian's headers do not declare (modules/ssl/mod_ssl_openssl.h). */
APR_DECLARE_EXTERNAL_HOOK(ssl, SSL, int, init_server,
                          (server_rec *s, apr_pool_t *p, int is_proxy, SSL_CTX *ctx))
APR_DECLARE_EXTERNAL_HOOK(ssl, SSL, int, pre_handshake,
                          (conn_rec *c, SSL *ssl, int is_proxy))

#define FALLBACK_MIN_LEFT  (24 * 3600)

/* ---- loading certificates ---- */

void
mod_acme_served_free(mod_acme_served_t *sv)
{
    X509_free(sv->leaf);
    acme_chain_free(sv->chain);
    EVP_PKEY_free(sv->key);
    memset(sv, 0, sizeof(*sv));
}

static int
parse_pair(const char *chain_pem, size_t chain_len, const char *key_pem, size_t key_len,
           mod_acme_served_t *out, acme_err_t *err)
{
    STACK_OF(X509)  *chain = NULL;
    EVP_PKEY        *key;

    if (acme_pem_chain_parse(chain_pem, chain_len, &chain, err) != 0) {
        return -1;
    }
    key = acme_key_from_pem(key_pem, key_len, err);
    if (key == NULL) {
        acme_chain_free(chain);
        return -1;
    }
    if (!X509_check_private_key(sk_X509_value(chain, 0), key)) {
        acme_err_set(err, ACME_ERR_INPUT, "the certificate does not match its key");
        EVP_PKEY_free(key);
        acme_chain_free(chain);
        return -1;
    }
    out->leaf = sk_X509_shift(chain);
    out->chain = chain;
    out->key = key;
    return 0;
}

/* The local cache of a shared store's certificates: what lets Apache start while Redis is down. */
static const char *
cache_key(apr_pool_t *p, const mod_acme_cert_t *cert, const char *file)
{
    return apr_psprintf(p, "cache/%s/%s", cert->name, file);
}

static int
cache_load(apr_pool_t *p, mod_acme_cert_t *cert, mod_acme_served_t *out, const char **msg)
{
    char        *fc = NULL, *pk = NULL;
    size_t       fclen = 0, pklen = 0;
    acme_err_t   err;
    int          rc, tries = 0;

again:
    rc = acme_store_get(mod_acme_g.local, cache_key(p, cert, "fullchain.pem"), &fc, &fclen, &err);
    if (rc == 0) {
        rc = acme_store_get(mod_acme_g.local, cache_key(p, cert, "privkey.pem"), &pk, &pklen, &err);
    }
    if (rc == 0) {
        rc = parse_pair(fc, fclen, pk, pklen, out, &err) == 0 ? 0 : -1;
    }
    free(fc);
    if (pk != NULL) {
        acme_free_secret(pk, pklen);
    }
    fc = pk = NULL;
    if (rc < 0 && tries++ == 0) {
        goto again;     /* read between the driver's two renames: the pair is whole now */
    }
    if (rc < 0) {
        *msg = apr_pstrcat(p, "local cache: ", err.msg, NULL);
    }
    return rc;
}

int
mod_acme_cache_update(apr_pool_t *p, acme_store_t *shared, mod_acme_cert_t *cert, int *changed,
                      const char **msg)
{
    char                *fc = NULL, *pk = NULL, *old = NULL, *oldk = NULL;
    size_t               fclen = 0, pklen = 0, oldlen = 0, oldklen = 0;
    acme_store_item_t    items[2];
    acme_err_t           err;
    int                  rc;

    rc = acme_store_cert_load(shared, cert->name, &fc, &fclen, &pk, &pklen, NULL, &err);
    if (rc != 0) {
        *msg = rc < 0 ? apr_pstrdup(p, err.msg) : NULL;
        return rc;
    }
    if (acme_store_get(mod_acme_g.local, cache_key(p, cert, "fullchain.pem"), &old, &oldlen, NULL) == 0
        && acme_store_get(mod_acme_g.local, cache_key(p, cert, "privkey.pem"), &oldk, &oldklen, NULL) == 0
        && oldlen == fclen && memcmp(old, fc, fclen) == 0 && oldklen == pklen && memcmp(oldk, pk, pklen) == 0)
    {
        rc = 0;
    } else {
        items[0].key = cache_key(p, cert, "fullchain.pem");
        items[0].data = fc;
        items[0].len = fclen;
        items[0].secret = 0;
        items[1].key = cache_key(p, cert, "privkey.pem");
        items[1].data = pk;
        items[1].len = pklen;
        items[1].secret = 1;
        rc = mod_acme_g.local->ops->commit(mod_acme_g.local, items, 2, &err);
        if (rc != 0) {
            *msg = apr_pstrcat(p, "local cache: ", err.msg, NULL);
        } else if (changed != NULL) {
            *changed = 1;
        }
    }
    free(fc);
    free(old);
    acme_free_secret(pk, pklen);
    if (oldk != NULL) {
        acme_free_secret(oldk, oldklen);
    }
    return rc;
}

int
mod_acme_cert_load(apr_pool_t *p, const char *state_dir, mod_acme_cert_t *cert, mod_acme_served_t *out,
                   const char **msg)
{
    char        *fc = NULL, *pk = NULL;
    size_t       fclen = 0, pklen = 0;
    acme_err_t   err;
    int          rc;

    (void) state_dir;
    memset(out, 0, sizeof(*out));
    if (mod_acme_g.local == NULL) {
        *msg = "no store";
        return -1;
    }
    if (mod_acme_g.storage != NULL) {
        return cache_load(p, cert, out, msg);
    }
    rc = acme_store_cert_load(mod_acme_g.local, cert->name, &fc, &fclen, &pk, &pklen, NULL, &err);
    if (rc != 0) {
        *msg = rc < 0 ? apr_pstrdup(p, err.msg) : NULL;
        return rc;
    }
    rc = parse_pair(fc, fclen, pk, pklen, out, &err);
    free(fc);
    acme_free_secret(pk, pklen);
    if (rc != 0) {
        *msg = apr_pstrdup(p, err.msg);
        return -1;
    }
    return 0;
}

int
mod_acme_cert_index(const char *name, int *idx)
{
    int i;

    for (i = 0; mod_acme_g.certs != NULL && i < mod_acme_g.certs->nelts; i++) {
        if (strcmp(APR_ARRAY_IDX(mod_acme_g.certs, i, mod_acme_cert_t *)->name, name) == 0) {
            *idx = i;
            return 1;
        }
    }
    return 0;
}

static apr_status_t
served_cleanup(void *data)
{
    mod_acme_served_free(data);
    return APR_SUCCESS;
}

/* ---- fallback certificates ---- */

static int
fallback_load(mod_acme_cert_t *cert, const char *ckey, const char *kkey, mod_acme_served_t *out)
{
    char        *fc = NULL, *pk = NULL;
    size_t       fclen = 0, pklen = 0;
    acme_err_t   err;
    int          rc = -1;

    memset(out, 0, sizeof(*out));
    if (acme_store_get(mod_acme_g.local, ckey, &fc, &fclen, NULL) == 0
        && acme_store_get(mod_acme_g.local, kkey, &pk, &pklen, NULL) == 0
        && parse_pair(fc, fclen, pk, pklen, out, &err) == 0)
    {
        STACK_OF(X509) *one = sk_X509_new_null();
        if (one != NULL && sk_X509_push(one, out->leaf)
            && acme_chain_check(one, out->key, cert->ids, cert->nids, time(NULL) + FALLBACK_MIN_LEFT,
                                &err) == 0)
        {
            acme_keyspec_t ks;
            if (acme_keyspec_of(out->key, &ks, &err) == 0 && ks.alg == cert->ks.alg && ks.bits == cert->ks.bits) {
                rc = 0;
            }
        }
        sk_X509_free(one);
        if (rc != 0) {
            mod_acme_served_free(out);
        }
    }
    free(fc);
    if (pk) {
        acme_free_secret(pk, pklen);
    }
    return rc;
}

static int
fallback_make(apr_pool_t *p, server_rec *s, mod_acme_cert_t *cert, mod_acme_served_t *out)
{
    const char         *ckey = apr_psprintf(p, "fallback/%s/fullchain.pem", cert->name);
    const char         *kkey = apr_psprintf(p, "fallback/%s/privkey.pem", cert->name);
    X509               *x = NULL;
    EVP_PKEY           *k = NULL;
    char               *cpem, *kpem;
    size_t              clen, klen;
    acme_err_t          err;
    acme_store_item_t   items[2];
    int                 rc;

    cert->cert_file = apr_psprintf(p, "%s/%s", mod_acme_g.state_dir, ckey);
    cert->key_file = apr_psprintf(p, "%s/%s", mod_acme_g.state_dir, kkey);
    if (fallback_load(cert, ckey, kkey, out) == 0) {
        return 0;
    }
    if (acme_selfsigned(cert->names, cert->nids, &cert->ks, &x, &k, &err) != 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0030)
                     "%s: cannot make a fallback certificate: %s", cert->name, err.msg);
        return -1;
    }
    cpem = acme_x509_to_pem(x, &clen, &err);
    kpem = cpem ? acme_key_to_pem(k, &klen, &err) : NULL;
    if (cpem == NULL || kpem == NULL) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0031)
                     "%s: cannot encode the fallback certificate: %s", cert->name, err.msg);
        free(cpem);
        X509_free(x);
        EVP_PKEY_free(k);
        return -1;
    }
    items[0].key = ckey;
    items[0].data = cpem;
    items[0].len = clen;
    items[0].secret = 0;
    items[1].key = kkey;
    items[1].data = kpem;
    items[1].len = klen;
    items[1].secret = 1;
    rc = mod_acme_g.local->ops->commit(mod_acme_g.local, items, 2, &err);
    free(cpem);
    acme_free_secret(kpem, klen);
    if (rc != 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0032)
                     "%s: cannot store the fallback certificate in %s: %s", cert->name,
                     mod_acme_g.state_dir, err.msg);
        X509_free(x);
        EVP_PKEY_free(k);
        return -1;
    }
    out->leaf = x;
    out->chain = NULL;
    out->key = k;
    return 0;
}

/* ---- the list of managed certificates ---- */

static const char *
ident_list(apr_pool_t *p, mod_acme_cert_t *c)
{
    const char  *out = "";
    size_t       i;

    for (i = 0; i < c->nids; i++) {
        out = apr_pstrcat(p, out, i ? "," : "", c->names[i], NULL);
    }
    return out;
}

static int
add_name(apr_pool_t *p, apr_array_header_t *names, const char *n, server_rec *s, mod_acme_srv_conf_t *sc)
{
    acme_ident_t  id;
    acme_err_t    err;
    int           i;

    if (acme_ident_parse(n, &id, &err) != 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0033)
                     "ACMECertificate (%s): '%s' cannot be in a certificate: %s",
                     sc->cert_directive ? sc->cert_directive : "?", n, err.msg);
        return -1;
    }
    for (i = 0; i < names->nelts; i++) {
        acme_ident_t *o = &APR_ARRAY_IDX(names, i, acme_ident_t);
        if (o->type == id.type && strcmp(o->value, id.value) == 0) {
            acme_ident_free(&id);
            return 0;
        }
    }
    {
        acme_ident_t *slot = apr_array_push(names);
        slot->type = id.type;
        slot->value = apr_pstrdup(p, id.value);
    }
    acme_ident_free(&id);
    return 0;
}

static int
build_certs(apr_pool_t *p, server_rec *base)
{
    server_rec           *s;
    mod_acme_srv_conf_t  *sc;
    int                   i, k;

    for (s = base; s != NULL; s = s->next) {
        apr_array_header_t  *ids;
        apr_array_header_t  *kts;
        acme_keyspec_t       defks = ACME_KEYSPEC_DEFAULT;

        sc = mod_acme_srv_conf(s);
        sc->managed = apr_array_make(p, 2, sizeof(mod_acme_cert_t *));
        sc->served = apr_array_make(p, 2, sizeof(mod_acme_cert_t *));
        sc->ssl_seen = 0;
        sc->cb_installed = 0;
        if (sc->cert_mode != ACME_CERT_ON && sc->cert_mode != ACME_CERT_NAMES) {
            continue;
        }
        ids = apr_array_make(p, 4, sizeof(acme_ident_t));
        if (sc->cert_mode == ACME_CERT_ON) {
            if (s->server_hostname == NULL || add_name(p, ids, s->server_hostname, s, sc) != 0) {
                return -1;
            }
            for (i = 0; s->names && i < s->names->nelts; i++) {
                if (add_name(p, ids, APR_ARRAY_IDX(s->names, i, const char *), s, sc) != 0) {
                    return -1;
                }
            }
            for (i = 0; s->wild_names && i < s->wild_names->nelts; i++) {
                if (add_name(p, ids, APR_ARRAY_IDX(s->wild_names, i, const char *), s, sc) != 0) {
                    return -1;
                }
            }
        } else {
            for (i = 0; i < sc->cert_names->nelts; i++) {
                if (add_name(p, ids, APR_ARRAY_IDX(sc->cert_names, i, const char *), s, sc) != 0) {
                    return -1;
                }
            }
        }
        kts = sc->keytypes;
        for (k = 0; k < (kts ? kts->nelts : 1); k++) {
            acme_keyspec_t   *ks = kts ? &APR_ARRAY_IDX(kts, k, acme_keyspec_t) : &defks;
            mod_acme_cert_t  *c = NULL, *o;
            char             *name;

            name = acme_cert_name((acme_ident_t *) ids->elts, (size_t) ids->nelts, ks);
            if (name == NULL) {
                return -1;
            }
            for (i = 0; i < mod_acme_g.certs->nelts; i++) {
                o = APR_ARRAY_IDX(mod_acme_g.certs, i, mod_acme_cert_t *);
                if (strcmp(o->name, name) == 0) {
                    c = o;
                }
            }
            if (c != NULL) {
                /* another vhost asks for the same certificate name: it must be the same names */
                int same = c->nids == (size_t) ids->nelts;
                for (i = 0; same && i < ids->nelts; i++) {
                    same = strcmp(c->ids[i].value, APR_ARRAY_IDX(ids, i, acme_ident_t).value) == 0;
                }
                if (!same) {
                    ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0034)
                                 "ACMECertificate (%s): certificate '%s' is already configured with other "
                                 "names (%s) by %s", sc->cert_directive ? sc->cert_directive : "?",
                                 name, ident_list(p, c), mod_acme_vhost_id(p, c->s));
                    free(name);
                    return -1;
                }
            } else {
                c = apr_pcalloc(p, sizeof(*c));
                c->name = apr_pstrdup(p, name);
                c->ids = (acme_ident_t *) ids->elts;
                c->nids = (size_t) ids->nelts;
                c->names = apr_palloc(p, sizeof(char *) * (c->nids + 1));
                for (i = 0; i < ids->nelts; i++) {
                    c->names[i] = c->ids[i].value;
                }
                c->names[c->nids] = NULL;
                c->ks = *ks;
                c->s = s;
                c->sc = sc;
                c->idx = mod_acme_g.certs->nelts;
                APR_ARRAY_PUSH(mod_acme_g.certs, mod_acme_cert_t *) = c;
            }
            free(name);
            APR_ARRAY_PUSH(sc->managed, mod_acme_cert_t *) = c;
        }
    }

    /* what each server serves: its own certificates, or those of the vhost whose names cover its name */
    for (s = base; s != NULL; s = s->next) {
        sc = mod_acme_srv_conf(s);
        if (sc->managed->nelts > 0) {
            apr_array_cat(sc->served, sc->managed);
            continue;
        }
        if (s->server_hostname == NULL) {
            continue;
        }
        /* a certificate naming it exactly before one whose wildcard covers it (pass 1) */
        for (k = 0; k < 2 && sc->served->nelts == 0; k++) {
            for (i = 0; i < mod_acme_g.certs->nelts && sc->served->nelts == 0; i++) {
                mod_acme_cert_t *c = APR_ARRAY_IDX(mod_acme_g.certs, i, mod_acme_cert_t *);
                size_t j;
                for (j = 0; j < c->nids; j++) {
                    int wild = c->ids[j].value[0] == '*';
                    if (wild != k) {
                        continue;
                    }
                    if (c->ids[j].type == ACME_IDENT_DNS ? acme_dns_match(c->ids[j].value, s->server_hostname)
                                                         : strcmp(c->ids[j].value, s->server_hostname) == 0) {
                        apr_array_cat(sc->served, c->sc->managed);
                        break;
                    }
                }
            }
        }
    }
    return 0;
}

/* ---- the state directory belongs to the user the children run as ---- */

/*
 * Root creates the directory and gives the directory itself (never what is in it) to the children's user.
 * The store opened here then acts as that user (acme_store_fs_open switches the filesystem ids around every
 * operation when root opens another user's directory): journal recovery, the cache and the fallback files
 * are written as the children's user, and no link planted in the directory is followed.
 */
static acme_store_t *
state_dir_open(server_rec *s, const char *dir)
{
    acme_store_t  *st = NULL;
    acme_err_t     err;
    long           uid = -1, gid = -1;
    int            n;

    if (geteuid() == 0 && ap_unixd_config.user_id != 0) {
        uid = (long) ap_unixd_config.user_id;
        gid = (long) ap_unixd_config.group_id;
    }
    if (acme_store_fs_prepare(dir, uid, gid, &err) != 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0035) "ACMEStateDir %s: %s", dir, err.msg);
        return NULL;
    }
    /* twice: a journal that failed to apply (a link in the directory, say) is dropped by the first */
    for (n = 0; n < 2 && st == NULL; n++) {
        st = acme_store_fs_open(dir, 1, &err);
        if (st == NULL) {
            ap_log_error(APLOG_MARK, n == 0 ? APLOG_ERR : APLOG_EMERG, 0, s, ACMELOGNO(0036)
                         "ACMEStateDir %s: %s", dir, err.msg);
        }
    }
    return st;
}

/* a record in Redis that does not authenticate: the store says so once per process */
static void
forged_log(void *data, const char *msg)
{
    ap_log_error(APLOG_MARK, APLOG_ERR, 0, (server_rec *) data, ACMELOGNO(0113) "%s", msg);
}

static apr_status_t
store_cleanup(void *data)
{
    (void) data;
    if (mod_acme_g.store != NULL && mod_acme_g.store != mod_acme_g.local) {
        acme_store_close(mod_acme_g.store);
    }
    if (mod_acme_g.local != NULL) {
        acme_store_close(mod_acme_g.local);
    }
    mod_acme_g.store = NULL;
    mod_acme_g.local = NULL;
    return APR_SUCCESS;
}

int
mod_acme_ssl_prepare(apr_pool_t *pconf, apr_pool_t *ptemp, server_rec *base)
{
    acme_err_t      err;
    apr_status_t    rv;
    int             i, redis_down = 0;

    mod_acme_g.pool = pconf;
    mod_acme_g.base = base;
    mod_acme_g.state_dir = mod_acme_state_dir(base);
    mod_acme_g.storage = mod_acme_srv_conf(base)->storage;
    mod_acme_g.storage_shown = mod_acme_srv_conf(base)->storage_shown;
    mod_acme_g.storage_key = mod_acme_srv_conf(base)->storage_key;
    mod_acme_g.certs = apr_array_make(pconf, 4, sizeof(mod_acme_cert_t *));
    mod_acme_g.active = 0;
    mod_acme_g.shm = NULL;

    if (build_certs(pconf, base) != 0) {
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    if (mod_acme_g.certs->nelts == 0) {
        return OK;
    }
    mod_acme_g.local = state_dir_open(base, mod_acme_g.state_dir);
    if (mod_acme_g.local == NULL) {
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    mod_acme_g.store = mod_acme_g.local;
    apr_pool_cleanup_register(pconf, NULL, store_cleanup, apr_pool_cleanup_null);
    if (mod_acme_g.storage != NULL) {
        /* lazy: Apache starts while Redis is down, from the local cache */
        mod_acme_g.store = acme_store_open(mod_acme_g.storage, mod_acme_g.storage_key, ACME_STORE_LAZY, &err);
        if (mod_acme_g.store == NULL) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, 0, base, ACMELOGNO(0048)
                         "ACMEStorage %s: %s", mod_acme_g.storage_shown, err.msg);
            return HTTP_INTERNAL_SERVER_ERROR;
        }
        acme_store_on_forged(mod_acme_g.store, forged_log, base);
    }

    for (i = 0; i < mod_acme_g.certs->nelts; i++) {
        mod_acme_cert_t  *c = APR_ARRAY_IDX(mod_acme_g.certs, i, mod_acme_cert_t *);
        const char       *msg = NULL, *dir = "certs";
        int               rc;

        if (mod_acme_g.storage != NULL) {
            /* mod_ssl reads files: the local cache, refreshed from Redis when it answers */
            dir = "cache";
            rc = redis_down ? -1 : mod_acme_cache_update(ptemp, mod_acme_g.store, c, NULL, &msg);
            if (rc < 0 && !redis_down) {
                redis_down = 1;
                ap_log_error(APLOG_MARK, APLOG_WARNING, 0, base, ACMELOGNO(0049)
                             "ACMEStorage %s: %s; serving certificates from the local cache in %s/cache",
                             mod_acme_g.storage_shown, msg, mod_acme_g.state_dir);
            }
            if (rc == 1) {
                msg = NULL;
            } else {
                rc = cache_load(pconf, c, &c->cur, &msg);
                if (rc < 0 && redis_down) {
                    rc = 1;     /* nothing cached: the fallback */
                }
            }
        } else {
            rc = mod_acme_cert_load(pconf, mod_acme_g.state_dir, c, &c->cur, &msg);
        }
        if (rc == 0) {
            c->cert_file = apr_psprintf(pconf, "%s/%s/%s/fullchain.pem", mod_acme_g.state_dir, dir, c->name);
            c->key_file = apr_psprintf(pconf, "%s/%s/%s/privkey.pem", mod_acme_g.state_dir, dir, c->name);
            c->fallback = 0;
            ap_log_error(APLOG_MARK, APLOG_INFO, 0, c->s, ACMELOGNO(0037)
                         "%s: serving the stored certificate", c->name);
        } else {
            if (rc < 0) {
                ap_log_error(APLOG_MARK, APLOG_WARNING, 0, c->s, ACMELOGNO(0038)
                             "%s: the stored certificate is not usable (%s)", c->name, msg);
            }
            if (fallback_make(pconf, c->s, c, &c->cur) != 0) {
                return HTTP_INTERNAL_SERVER_ERROR;
            }
            c->fallback = 1;
            c->cur.fallback = 1;
            ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, c->s, ACMELOGNO(0039)
                         "%s: no certificate from the CA yet for %s; serving a self-signed fallback "
                         "certificate (requests get 503) until it arrives", c->name, ident_list(ptemp, c));
        }
        apr_pool_cleanup_register(pconf, &c->cur, served_cleanup, apr_pool_cleanup_null);
    }
    if (mod_acme_g.storage != NULL) {
        /* the children must not inherit this process's Redis connection: a fresh handle, unconnected, which
         * each child (request threads and the driver, under the store's mutex) connects on first use */
        acme_store_close(mod_acme_g.store);
        mod_acme_g.store = acme_store_open(mod_acme_g.storage, mod_acme_g.storage_key, ACME_STORE_LAZY, &err);
        if (mod_acme_g.store == NULL) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, 0, base, ACMELOGNO(0048)
                         "ACMEStorage %s: %s", mod_acme_g.storage_shown, err.msg);
            return HTTP_INTERNAL_SERVER_ERROR;
        }
        acme_store_on_forged(mod_acme_g.store, forged_log, base);
    }
    rv = mod_acme_shm_create(pconf, base, &mod_acme_g.shm);
    if (rv != APR_SUCCESS) {
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    if (mod_acme_parent_started(base)) {
        /* a window the CA opened while its Retry-After kept us from asking is seen at start */
        mod_acme_shm_set_ari_start(mod_acme_g.shm);
    }
    rv = apr_thread_rwlock_create(&mod_acme_g.lock, pconf);
    if (rv == APR_SUCCESS) {
        rv = apr_thread_mutex_create(&mod_acme_g.reload_lock, APR_THREAD_MUTEX_DEFAULT, pconf);
    }
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, rv, base, ACMELOGNO(0040) "cannot create locks");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    mod_acme_challenge_add_protocol(pconf, base);
    mod_acme_g.active = 1;
    return OK;
}

void
mod_acme_ssl_check(apr_pool_t *ptemp, server_rec *base)
{
    server_rec  *s;
    int          i;

    if (!mod_acme_g.active) {
        return;
    }
    for (i = 0; i < mod_acme_g.certs->nelts; i++) {
        mod_acme_cert_t *c = APR_ARRAY_IDX(mod_acme_g.certs, i, mod_acme_cert_t *);
        if (!c->ssl_served) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, c->s, ACMELOGNO(0041)
                         "ACMECertificate (%s) for %s: no virtual host with SSLEngine on serves these names; "
                         "the certificate is obtained but no TLS connection will use it",
                         c->sc->cert_directive ? c->sc->cert_directive : "?", ident_list(ptemp, c));
        }
    }
    for (s = base; s != NULL; s = s->next) {
        mod_acme_srv_conf_t *sc = mod_acme_srv_conf(s);
        if (sc->ssl_seen && !sc->cb_installed) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, ACMELOGNO(0042)
                         "%s:%u: mod_ssl did not offer its init_server hook: renewed certificates are "
                         "used only after a restart", s->server_hostname, s->port);
        }
    }
}

/* ---- hooks ---- */

static int
add_cert_files(server_rec *s, apr_pool_t *p, apr_array_header_t *cert_files, apr_array_header_t *key_files)
{
    mod_acme_srv_conf_t  *sc = mod_acme_srv_conf(s);
    int                   i;

    (void) p;
    if (!mod_acme_g.active || sc->served == NULL || sc->served->nelts == 0) {
        return DECLINED;
    }
    if (cert_files->nelts > 0) {
        /* the admin configured SSLCertificateFile: theirs wins */
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, ACMELOGNO(0043)
                     "%s:%u has SSLCertificateFile and ACMECertificate: using the configured files",
                     s->server_hostname, s->port);
        return DECLINED;
    }
    sc->ssl_seen = 1;
    for (i = 0; i < sc->served->nelts; i++) {
        mod_acme_cert_t *c = APR_ARRAY_IDX(sc->served, i, mod_acme_cert_t *);
        APR_ARRAY_PUSH(cert_files, const char *) = c->cert_file;
        APR_ARRAY_PUSH(key_files, const char *) = c->key_file;
        c->ssl_served = 1;
    }
    return OK;
}

/*
 * Re-parse one certificate when the driver changed its local files since this process read them. Only
 * local files (never Redis: a handshake must not wait for it), only this certificate. wait: when another
 * thread is reloading, wait for it instead of serving what this process has (a fallback: that would be a
 * 503).
 */
static void
maybe_reload(server_rec *s, mod_acme_cert_t *c, int wait)
{
    apr_uint32_t        gen = mod_acme_shm_cert_generation(mod_acme_g.shm, c->idx);
    apr_pool_t         *tp;
    apr_time_t          now;
    mod_acme_served_t   fresh, old;
    const char         *msg = NULL;
    int                 rc;

    if (gen == apr_atomic_read32(&c->loaded_gen)) {
        return;
    }
    if (wait) {
        apr_thread_mutex_lock(mod_acme_g.reload_lock);
    } else if (apr_thread_mutex_trylock(mod_acme_g.reload_lock) != APR_SUCCESS) {
        return;         /* another thread reloads; serve what we have meanwhile */
    }
    now = apr_time_now();
    gen = mod_acme_shm_cert_generation(mod_acme_g.shm, c->idx);
    if (gen == apr_atomic_read32(&c->loaded_gen) || now < c->retry_at) {
        apr_thread_mutex_unlock(mod_acme_g.reload_lock);
        return;
    }
    apr_pool_create(&tp, NULL);
    rc = mod_acme_cert_load(tp, mod_acme_g.state_dir, c, &fresh, &msg);
    if (rc < 0) {
        /* not this generation for good: again in a second (a child forked with the parent's startup state
         * would otherwise keep serving it) */
        c->retry_at = now + apr_time_from_sec(1);
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, s, ACMELOGNO(0044)
                     "%s: cannot load the renewed certificate, keeping the current one: %s", c->name, msg);
    } else {
        memset(&old, 0, sizeof(old));
        apr_thread_rwlock_wrlock(mod_acme_g.lock);
        if (rc == 0) {
            old = c->cur;
            c->cur = fresh;
        }
        apr_atomic_set32(&c->loaded_gen, gen);
        apr_thread_rwlock_unlock(mod_acme_g.lock);
        mod_acme_served_free(&old);
        ap_log_error(APLOG_MARK, APLOG_DEBUG, 0, s, ACMELOGNO(0045)
                     "%s: %s (generation %u)", c->name, rc == 0 ? "certificate reloaded" : "nothing stored yet",
                     gen);
    }
    apr_pool_destroy(tp);
    apr_thread_mutex_unlock(mod_acme_g.reload_lock);
}

static int
cert_cb(SSL *ssl, void *arg)
{
    server_rec            *s = arg;
    mod_acme_srv_conf_t   *sc = mod_acme_srv_conf(s);
    const unsigned char   *alpn = NULL;
    unsigned int           alen = 0;
    conn_rec              *c;
    mod_acme_conn_t       *cc;
    int                    i, fallback = 0;

    if (!mod_acme_g.active) {
        return 1;
    }
    SSL_get0_alpn_selected(ssl, &alpn, &alen);
    if (alen == ACME_TLSALPN_PROTO_LEN && memcmp(alpn, ACME_TLSALPN_PROTO, alen) == 0) {
        /*
         * A TLS-ALPN-01 validation (TLS 1.3 selects ALPN before this callback): mod_ssl installed the
         * challenge certificate with SSL_use_certificate, which only replaces the slot of its key type.
         * The vhost's other slots (an RSA certificate next to the P-256 challenge one) would still be
         * chosen by the client's signature algorithms, so the challenge certificate is left alone.
         */
        X509      *x = SSL_get_certificate(ssl);
        EVP_PKEY  *k = SSL_get_privatekey(ssl);
        if (x != NULL && k != NULL && X509_up_ref(x) && EVP_PKEY_up_ref(k)) {
            SSL_certs_clear(ssl);
            if (SSL_use_certificate(ssl, x) != 1 || SSL_use_PrivateKey(ssl, k) != 1) {
                ERR_clear_error();
            }
            X509_free(x);
            EVP_PKEY_free(k);
        }
        return 1;
    }
    if (sc->served == NULL || sc->served->nelts == 0) {
        return 1;
    }
    for (i = 0; i < sc->served->nelts; i++) {
        mod_acme_cert_t *mc = APR_ARRAY_IDX(sc->served, i, mod_acme_cert_t *);

        /* a fallback here may be stale: a child forked with the parent's startup state, racing the thread
         * that loads the certificate issued since */
        apr_thread_rwlock_rdlock(mod_acme_g.lock);
        fallback = mc->cur.fallback;
        apr_thread_rwlock_unlock(mod_acme_g.lock);
        maybe_reload(s, mc, fallback);
    }
    fallback = 0;
    apr_thread_rwlock_rdlock(mod_acme_g.lock);
    for (i = 0; i < sc->served->nelts; i++) {
        mod_acme_cert_t *mc = APR_ARRAY_IDX(sc->served, i, mod_acme_cert_t *);
        if (mc->cur.leaf == NULL) {
            continue;
        }
        if (SSL_use_cert_and_key(ssl, mc->cur.leaf, mc->cur.key, mc->cur.chain, 1) != 1) {
            ERR_clear_error();
            continue;   /* mod_ssl's own (startup) certificate stays */
        }
        fallback |= mc->cur.fallback;
    }
    apr_thread_rwlock_unlock(mod_acme_g.lock);
    c = SSL_get_app_data(ssl);
    if (c != NULL && (cc = mod_acme_conn(c, 1)) != NULL) {
        cc->fallback = fallback;
    }
    return 1;
}

static int
init_server(server_rec *s, apr_pool_t *p, int is_proxy, SSL_CTX *ctx)
{
    mod_acme_srv_conf_t *sc = mod_acme_srv_conf(s);

    (void) p;
    if (is_proxy || !mod_acme_g.active) {
        return DECLINED;
    }
    /* on every SSL vhost: a TLS-ALPN-01 validation may arrive with any SNI; our certificates only where
     * mod_ssl took them from us */
    SSL_CTX_set_cert_cb(ctx, cert_cb, s);
    if (sc->ssl_seen) {
        sc->cb_installed = 1;
    } else {
        sc->served = NULL;
    }
    return DECLINED;    /* run-all hook: others may want the context too */
}

static int
pre_handshake(conn_rec *c, SSL *ssl, int is_proxy)
{
    (void) ssl;
    if (!is_proxy && mod_acme_g.active) {
        mod_acme_conn(c, 1);
    }
    return DECLINED;
}

int
mod_acme_conn_fallback(conn_rec *c)
{
    mod_acme_conn_t *cc;

    while (c->master) {
        c = c->master;
    }
    cc = mod_acme_conn(c, 0);
    return cc != NULL && cc->fallback;
}

/* 503 for requests on a connection whose handshake served a fallback certificate. */
static int
fixups(request_rec *r)
{
    if (!mod_acme_g.active || r->main != NULL) {
        return DECLINED;
    }
    if (r->handler != NULL && strcmp(r->handler, MOD_ACME_HANDLER) == 0) {
        return DECLINED;
    }
    if (mod_acme_conn_fallback(r->connection)) {
        apr_table_setn(r->err_headers_out, "Retry-After", "30");
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, ACMELOGNO(0046)
                      "503: no certificate from the CA yet for %s", r->hostname ? r->hostname : "?");
        return HTTP_SERVICE_UNAVAILABLE;
    }
    return DECLINED;
}

void
mod_acme_ssl_register_hooks(apr_pool_t *p)
{
    (void) p;
    ap_hook_ssl_add_cert_files(add_cert_files, NULL, NULL, APR_HOOK_MIDDLE);
    APR_OPTIONAL_HOOK(ssl, init_server, init_server, NULL, NULL, APR_HOOK_MIDDLE);
    APR_OPTIONAL_HOOK(ssl, pre_handshake, pre_handshake, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_fixups(fixups, NULL, NULL, APR_HOOK_REALLY_FIRST);
}
