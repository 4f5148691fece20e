
/*
 * Serving certificates: the self-signed fallback pushed into the ssl
 * module's configuration, the per worker parsed copies of the managed
 * certificates (reloaded when their generation in the zone changes), the
 * certificate callback choosing among them (TLS-ALPN-01 handshakes are
 * ngx_http_acme_tls_alpn.c's).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_acme_module.h"
#include "ngx_http_acme_zone.h"

#include "acme_store.h"
#include "acme_x509.h"




static ngx_http_acme_wcert_t           *ngx_http_acme_wcerts;
static ngx_uint_t                       ngx_http_acme_nwcerts;
static ngx_http_acme_srv_conf_t       **ngx_http_acme_wservers;
static ngx_uint_t                       ngx_http_acme_nwservers;
static acme_store_t                   **ngx_http_acme_stores;
static ngx_uint_t                       ngx_http_acme_nstores;
static ngx_atomic_uint_t                ngx_http_acme_seen_gen;
static ngx_msec_t                       ngx_http_acme_retry_at;
static ngx_http_acme_zone_t            *ngx_http_acme_wzone;


/* per worker: on-demand certificates (ngx_http_acme_od_cert) */

typedef struct {
    ngx_http_acme_cert_t        conf;            /* name: the store name */
    ngx_http_acme_wcert_t       wc;
} ngx_http_acme_od_wcert_t;


static ngx_http_acme_od_wcert_t  **ngx_http_acme_od_wcerts;
static ngx_uint_t                  ngx_http_acme_od_nwcerts;
static ngx_uint_t                  ngx_http_acme_od_awcerts;


/* PEM text as the ssl module's "data:..." value, in the configuration's pool */

static ngx_int_t
ngx_http_acme_pem_data(ngx_conf_t *cf, ngx_str_t *value, char *pem,
    size_t len)
{
    value->data = ngx_pnalloc(cf->pool, sizeof("data:") - 1 + len + 1);
    if (value->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(ngx_cpymem(value->data, "data:", sizeof("data:") - 1),
               pem, len + 1);
    value->len = sizeof("data:") - 1 + len;

    return NGX_OK;
}


/*
 * One key per key type serves every server's fallback certificate (kept
 * for the master's life: a key per server cost more than nginx's own
 * parsing at 10,000 servers).
 */

static EVP_PKEY *
ngx_http_acme_fallback_key(acme_keyspec_t *ks, acme_err_t *err)
{
    ngx_uint_t              i;
    static EVP_PKEY        *keys[8];
    static acme_keyspec_t   specs[8];

    for (i = 0; i < 8 && keys[i] != NULL; i++) {
        if (specs[i].alg == ks->alg && specs[i].bits == ks->bits) {
            return keys[i];
        }
    }

    if (i == 8) {
        i = 7;
        EVP_PKEY_free(keys[i]);
        keys[i] = NULL;
    }

    keys[i] = acme_key_generate(ks, err);
    specs[i] = *ks;

    return keys[i];
}

/* configuration: the fallback certificate */

ngx_int_t
ngx_http_acme_fallback_make(ngx_conf_t *cf, ngx_http_acme_srv_conf_t *ascf,
    ngx_str_t *names, ngx_uint_t nnames)
{
    char                     *pem, *cn[8];
    size_t                    len;
    X509                     *x;
    EVP_PKEY                 *k;
    ngx_uint_t                i, n;
    acme_err_t                err;
    acme_keyspec_t            ks;

    if (ascf->fallback_cert.len == 0) {

        n = 0;
        for (i = 0; i < nnames && n < 8; i++) {
            cn[n] = ngx_pnalloc(cf->temp_pool, names[i].len + 1);
            if (cn[n] == NULL) {
                return NGX_ERROR;
            }

            ngx_cpystrn((u_char *) cn[n], names[i].data, names[i].len + 1);
            n++;
        }

        if (n == 0) {
            cn[n++] = "acme-fallback.invalid";
        }

        /*
         * the key type of the server's first certificate, so that its real
         * certificate takes the fallback's place in the SSL_CTX
         */

        ks = ascf->od ? ascf->od->keyspec
                      : ((ngx_http_acme_cert_t **) ascf->certs->elts)[0]
                        ->keyspec;

        k = ngx_http_acme_fallback_key(&ks, &err);

        if (k == NULL
            || acme_selfsigned_key((const char *const *) cn, n, k, &x, &err)
               != 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cannot create the fallback certificate: %s",
                               err.msg);
            return NGX_ERROR;
        }

        pem = acme_x509_to_pem(x, &len, &err);
        X509_free(x);

        if (pem == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cannot encode the fallback certificate: %s",
                               err.msg);
            return NGX_ERROR;
        }

        /* k belongs to the cache: a failed configuration must not free it */

        if (ngx_http_acme_pem_data(cf, &ascf->fallback_cert, pem, len)
            != NGX_OK)
        {
            free(pem);
            return NGX_ERROR;
        }

        free(pem);

        pem = acme_key_to_pem(k, &len, &err);

        if (pem == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cannot encode the fallback key: %s", err.msg);
            return NGX_ERROR;
        }

        if (ngx_http_acme_pem_data(cf, &ascf->fallback_key, pem, len)
            != NGX_OK)
        {
            acme_free_secret(pem, len);
            return NGX_ERROR;
        }

        acme_free_secret(pem, len);
    }

    return NGX_OK;
}


char *
ngx_http_acme_fallback_inject(ngx_conf_t *cf, ngx_http_acme_srv_conf_t *ascf,
    ngx_str_t *names, ngx_uint_t nnames)
{
    ngx_str_t                *s;
    ngx_http_ssl_srv_conf_t  *sscf;

    if (ngx_http_acme_fallback_make(cf, ascf, names, nnames) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    sscf = ngx_http_conf_get_module_srv_conf(cf, ngx_http_ssl_module);

    if (ascf->injected
        || sscf->certificates != NGX_CONF_UNSET_PTR
        || sscf->certificate_keys != NGX_CONF_UNSET_PTR)
    {
        /* ssl_certificate is configured: the admin's choice comes first */
        return NGX_CONF_OK;
    }

    sscf->certificates = ngx_array_create(cf->pool, 2, sizeof(ngx_str_t));
    sscf->certificate_keys = ngx_array_create(cf->pool, 2, sizeof(ngx_str_t));

    if (sscf->certificates == NULL || sscf->certificate_keys == NULL) {
        return NGX_CONF_ERROR;
    }

    s = ngx_array_push(sscf->certificates);
    if (s == NULL) {
        return NGX_CONF_ERROR;
    }

    *s = ascf->fallback_cert;

    s = ngx_array_push(sscf->certificate_keys);
    if (s == NULL) {
        return NGX_CONF_ERROR;
    }

    *s = ascf->fallback_key;

    ascf->injected = 1;

    return NGX_CONF_OK;
}


/* postconfiguration: our callbacks on every server's SSL_CTX */

static void
ngx_http_acme_array_shift(ngx_array_t *a)
{
    if (a == NULL || a->nelts == 0) {
        return;
    }

    ngx_memmove(a->elts, (u_char *) a->elts + a->size,
                (a->nelts - 1) * a->size);
    a->nelts--;
}


ngx_int_t
ngx_http_acme_ssl_init(ngx_conf_t *cf)
{
    ngx_uint_t                   s, i;
    ngx_http_ssl_srv_conf_t     *sscf;
    ngx_http_server_name_t      *sn, *osn;
    ngx_http_acme_srv_conf_t    *ascf;
    ngx_http_core_srv_conf_t   **cscfp;
    ngx_http_core_main_conf_t   *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);
    cscfp = cmcf->servers.elts;

    for (s = 0; s < cmcf->servers.nelts; s++) {

        sscf = cscfp[s]->ctx->srv_conf[ngx_http_ssl_module.ctx_index];
        ascf = cscfp[s]->ctx->srv_conf[ngx_http_acme_module.ctx_index];

        if (ascf->od) {
            ascf->od_names = ngx_array_create(cf->pool,
                                       cscfp[s]->server_names.nelts + 1,
                                       sizeof(ngx_http_server_name_t));
            if (ascf->od_names == NULL) {
                return NGX_ERROR;
            }

            sn = cscfp[s]->server_names.elts;

            for (i = 0; i < cscfp[s]->server_names.nelts; i++) {
                osn = ngx_array_push(ascf->od_names);
                if (osn == NULL) {
                    return NGX_ERROR;
                }

                *osn = sn[i];

                osn->name.data = ngx_pstrdup(cf->pool, &sn[i].name);
                if (osn->name.data == NULL) {
                    return NGX_ERROR;
                }
            }
        }

        if (sscf->ssl.ctx == NULL) {
            continue;
        }

        if (ascf->injected && sscf->certificate_values) {

            /*
             * "ssl_certificate $acme_certificate" follows acme_certificate:
             * the variables serve the certificate, our fallback would be
             * loaded on every handshake for nothing
             */

            ngx_http_acme_array_shift(sscf->certificate_values);
            ngx_http_acme_array_shift(sscf->certificate_key_values);
        }

        if (sscf->certificate_values == NULL) {
            SSL_CTX_set_cert_cb(sscf->ssl.ctx, ngx_http_acme_cert_cb, ascf);
        }
    }

    return NGX_OK;
}


/* selection by SNI among several certificates of one key type in a server */

static ngx_uint_t ngx_http_acme_sni_lookup(ngx_http_acme_srv_conf_t *ascf,
    u_char *lower, ngx_http_acme_cert_t **out, ngx_uint_t max);

typedef struct ngx_http_acme_sni_s {
    const char                 *name;            /* identifier, lowercase */
    ngx_http_acme_cert_t       *cert;
} ngx_http_acme_sni_t;


static int ngx_libc_cdecl
ngx_http_acme_sni_cmp(const void *a, const void *b)
{
    const ngx_http_acme_sni_t  *x = a, *y = b;

    return ngx_strcmp(x->name, y->name);
}


static ngx_int_t
ngx_http_acme_sni_index(ngx_cycle_t *cycle, ngx_http_acme_srv_conf_t *ascf)
{
    ngx_uint_t              i, j, k, n, same;
    ngx_http_acme_cert_t  **certs;
    ngx_http_acme_sni_t    *idx;

    certs = ascf->certs->elts;
    same = 0;
    n = 0;

    for (i = 0; i < ascf->certs->nelts; i++) {
        n += certs[i]->nids;

        for (j = i + 1; j < ascf->certs->nelts; j++) {
            if (certs[i]->keyspec.alg == certs[j]->keyspec.alg) {
                same = 1;
            }
        }
    }

    ascf->sni = NULL;
    ascf->nsni = 0;

    if (!same) {
        return NGX_OK;
    }

    idx = ngx_pcalloc(cycle->pool, (n + 1) * sizeof(ngx_http_acme_sni_t));
    if (idx == NULL) {
        return NGX_ERROR;
    }

    k = 0;

    for (i = 0; i < ascf->certs->nelts; i++) {
        for (j = 0; j < certs[i]->nids; j++) {
            if (certs[i]->ids[j].type != ACME_IDENT_DNS) {
                continue;
            }

            idx[k].name = certs[i]->ids[j].value;
            idx[k].cert = certs[i];
            k++;
        }
    }

    ngx_qsort(idx, k, sizeof(ngx_http_acme_sni_t), ngx_http_acme_sni_cmp);

    ascf->sni = idx;
    ascf->nsni = k;

    return NGX_OK;
}


/* the certificates for the client's server name, in configuration order */

static ngx_uint_t
ngx_http_acme_sni_select(ngx_http_acme_srv_conf_t *ascf, ngx_ssl_conn_t *ssl,
    ngx_http_acme_cert_t **out, ngx_uint_t max)
{
    u_char                lower[256];
    size_t                len, i;
    const char           *sni;

    sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (sni == NULL) {
        return 0;
    }

    len = ngx_strlen(sni);
    if (len == 0 || len >= sizeof(lower)) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        lower[i] = ngx_tolower(sni[i]);
    }

    lower[len] = '\0';

    return ngx_http_acme_sni_lookup(ascf, lower, out, max);
}


static ngx_uint_t
ngx_http_acme_sni_lookup(ngx_http_acme_srv_conf_t *ascf, u_char *lower,
    ngx_http_acme_cert_t **out, ngx_uint_t max)
{
    u_char               *p;
    ngx_uint_t            n, lo, hi, mid;
    ngx_http_acme_sni_t   key, *e;

    key.name = (const char *) lower;

    lo = 0;
    hi = ascf->nsni;

    while (lo < hi) {
        mid = (lo + hi) / 2;

        if (ngx_http_acme_sni_cmp(&ascf->sni[mid], &key) < 0) {
            lo = mid + 1;

        } else {
            hi = mid;
        }
    }

    n = 0;

    for (e = &ascf->sni[lo];
         e < ascf->sni + ascf->nsni && ngx_strcmp(e->name, lower) == 0
         && n < max;
         e++)
    {
        out[n++] = e->cert;
    }

    /* no certificate for the exact name: the wildcard of its parent */

    if (n == 0 && lower[0] != '*') {
        p = (u_char *) ngx_strchr(lower, '.');

        if (p != NULL && p > lower && p[1] != '\0') {
            *--p = '*';
            return ngx_http_acme_sni_lookup(ascf, p, out, max);
        }
    }

    return n;
}


/* per worker certificates */

static void
ngx_http_acme_wcert_clear(ngx_http_acme_wcert_t *wc)
{
    if (wc->leaf) {
        X509_free(wc->leaf);
        wc->leaf = NULL;
    }

    if (wc->chain) {
        sk_X509_pop_free(wc->chain, X509_free);
        wc->chain = NULL;
    }

    if (wc->key) {
        EVP_PKEY_free(wc->key);
        wc->key = NULL;
    }

    if (wc->cert_pem.data) {
        free(wc->cert_pem.data);
        ngx_str_null(&wc->cert_pem);
    }

    if (wc->key_pem.data) {
        acme_free_secret(wc->key_pem.data, wc->key_pem.len);
        ngx_str_null(&wc->key_pem);
    }
}


static u_char *
ngx_http_acme_data_str(const char *pem, size_t len)
{
    u_char  *p;

    p = malloc(sizeof("data:") - 1 + len + 1);
    if (p == NULL) {
        return NULL;
    }

    ngx_memcpy(p, "data:", sizeof("data:") - 1);
    ngx_memcpy(p + sizeof("data:") - 1, pem, len);
    p[sizeof("data:") - 1 + len] = '\0';

    return p;
}


static ngx_int_t
ngx_http_acme_wcert_load(ngx_http_acme_wcert_t *wc, ngx_log_t *log)
{
    char             *fullchain, *privkey;
    size_t            flen, plen;
    X509             *leaf;
    EVP_PKEY         *key;
    ngx_int_t         rc;
    acme_err_t        err;
    acme_store_t     *st;
    STACK_OF(X509)   *chain;
    ngx_http_acme_wcert_t  fresh;

    st = ngx_http_acme_stores[wc->conf->store];
    if (st == NULL) {
        return NGX_ERROR;
    }

    fullchain = NULL;
    privkey = NULL;
    chain = NULL;
    key = NULL;

    rc = acme_store_cert_load(st, wc->conf->name, &fullchain, &flen,
                              &privkey, &plen, NULL, &err);
    if (rc == 1) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0,
                       "acme: no certificate \"%s\" stored yet",
                       wc->conf->name);
        return NGX_DECLINED;
    }

    if (rc != 0) {
        if (!wc->load_failed) {
            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "acme: cannot load certificate \"%s\": %s",
                          wc->conf->name, err.msg);
            wc->load_failed = 1;
        }

        return NGX_ERROR;
    }

    if (acme_pem_chain_parse(fullchain, flen, &chain, &err) != 0) {
        goto failed;
    }

    key = acme_key_from_pem(privkey, plen, &err);
    if (key == NULL) {
        goto failed;
    }

    leaf = sk_X509_shift(chain);

    if (!acme_key_matches(X509_get0_pubkey(leaf), key)) {
        X509_free(leaf);
        acme_err_set(&err, ACME_ERR_STORE,
                     "the private key does not match the certificate");
        goto failed;
    }

    ngx_memzero(&fresh, sizeof(ngx_http_acme_wcert_t));

    fresh.leaf = leaf;
    fresh.chain = chain;
    fresh.key = key;

    fresh.cert_pem.data = ngx_http_acme_data_str(fullchain, flen);
    fresh.cert_pem.len = sizeof("data:") - 1 + flen;
    fresh.key_pem.data = ngx_http_acme_data_str(privkey, plen);
    fresh.key_pem.len = sizeof("data:") - 1 + plen;

    free(fullchain);
    acme_free_secret(privkey, plen);

    if (fresh.cert_pem.data == NULL || fresh.key_pem.data == NULL) {
        ngx_http_acme_wcert_clear(&fresh);
        return NGX_ERROR;
    }

    ngx_http_acme_wcert_clear(wc);

    wc->leaf = fresh.leaf;
    wc->chain = fresh.chain;
    wc->key = fresh.key;
    wc->cert_pem = fresh.cert_pem;
    wc->key_pem = fresh.key_pem;
    wc->load_failed = 0;
    wc->fallback_logged = 0;

    ngx_log_error(NGX_LOG_INFO, log, 0,
                  "acme: certificate \"%s\" loaded", wc->conf->name);

    return NGX_OK;

failed:

    if (!wc->load_failed) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "acme: stored certificate \"%s\" is unusable: %s",
                      wc->conf->name, err.msg);
        wc->load_failed = 1;
    }

    if (chain) {
        sk_X509_pop_free(chain, X509_free);
    }

    if (key) {
        EVP_PKEY_free(key);
    }

    free(fullchain);

    if (privkey) {
        acme_free_secret(privkey, plen);
    }

    return NGX_ERROR;
}


#define NGX_HTTP_ACME_RETRY_MIN  1000
#define NGX_HTTP_ACME_RETRY_MAX  60000


static void
ngx_http_acme_retry_note(ngx_msec_t at)
{
    if (ngx_http_acme_retry_at == 0
        || (ngx_msec_int_t) (at - ngx_http_acme_retry_at) < 0)
    {
        ngx_http_acme_retry_at = at;
    }
}


/*
 * The generation is recorded only once it is loaded (or known to have no
 * certificate yet): a failed load (a file being replaced, a store that does
 * not answer) is tried again, after 1 s and then up to a minute apart.
 */

static ngx_int_t
ngx_http_acme_wcert_reload(ngx_http_acme_wcert_t *wc, ngx_uint_t gen,
    ngx_log_t *log)
{
    ngx_int_t  rc;

    rc = ngx_http_acme_wcert_load(wc, log);

    if (rc == NGX_OK || rc == NGX_DECLINED) {
        wc->gen = gen;
        wc->retry_at = 0;
        wc->retry_delay = 0;
        return rc;
    }

    wc->tried_gen = gen;
    wc->retry_delay = wc->retry_delay ? ngx_min(wc->retry_delay * 2,
                                                NGX_HTTP_ACME_RETRY_MAX)
                                      : NGX_HTTP_ACME_RETRY_MIN;
    wc->retry_at = ngx_current_msec + wc->retry_delay;
    if (wc->retry_at == 0) {
        wc->retry_at = 1;
    }

    ngx_http_acme_retry_note(wc->retry_at);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, log, 0,
                   "acme: loading \"%s\" again in %M ms",
                   wc->conf->name, wc->retry_delay);

    return rc;
}


static ngx_uint_t
ngx_http_acme_wcert_gen(ngx_http_acme_wcert_t *wc)
{
    if (ngx_http_acme_wzone == NULL) {
        return 0;
    }

    return ngx_http_acme_zone_cert_gen(ngx_http_acme_wzone,
                                       (u_char *) wc->conf->name,
                                       ngx_strlen(wc->conf->name));
}


/* load a certificate on its first use in this worker (not all at start) */

static void
ngx_http_acme_wcert_ensure(ngx_http_acme_wcert_t *wc, ngx_log_t *log)
{
    if (wc->loaded) {
        return;
    }

    wc->loaded = 1;

    (void) ngx_http_acme_wcert_reload(wc, ngx_http_acme_wcert_gen(wc), log);
}


/*
 * The server's certificates go into its own SSL_CTX, one per key type, as
 * static ssl_certificate files do: OpenSSL then serves them by client
 * capability with no work of ours per handshake.
 */

static void
ngx_http_acme_ctx_install(ngx_http_acme_srv_conf_t *ascf, ngx_log_t *log)
{
    ngx_uint_t               i, n;
    ngx_http_acme_cert_t   **certs;
    ngx_http_acme_wcert_t   *wc;

    n = 0;
    certs = ascf->certs->elts;

    for (i = 0; i < ascf->certs->nelts; i++) {
        wc = &ngx_http_acme_wcerts[certs[i]->index];

        ngx_http_acme_wcert_ensure(wc, log);

        if (wc->leaf == NULL) {
            continue;
        }

        if (SSL_CTX_use_cert_and_key(ascf->ctx, wc->leaf, wc->key, wc->chain,
                                     1)
            != 1)
        {
            ngx_ssl_error(NGX_LOG_ERR, log, 0,
                          "acme: cannot install certificate \"%s\"",
                          wc->conf->name);
            continue;
        }

        ascf->ctx_last = wc->leaf;
        n++;
    }

    ascf->ctx_installed = 1;
    ascf->ctx_complete = (n == ascf->certs->nelts);
}


static void
ngx_http_acme_wcerts_refresh(ngx_log_t *log)
{
    ngx_uint_t                  i, j, gen, changed;
    ngx_msec_t                  now;
    ngx_atomic_uint_t           g;
    ngx_http_acme_cert_t      **certs;
    ngx_http_acme_wcert_t      *wc;
    ngx_http_acme_srv_conf_t   *ascf;

    if (ngx_http_acme_wzone == NULL) {
        return;
    }

    g = ngx_http_acme_wzone->sh->gen;
    now = ngx_current_msec;

    if (g == ngx_http_acme_seen_gen
        && (ngx_http_acme_retry_at == 0
            || (ngx_msec_int_t) (now - ngx_http_acme_retry_at) < 0))
    {
        return;
    }

    ngx_http_acme_seen_gen = g;
    ngx_http_acme_retry_at = 0;
    changed = 0;

    for (i = 0; i < ngx_http_acme_nwcerts; i++) {
        wc = &ngx_http_acme_wcerts[i];

        if (!wc->loaded) {
            continue;
        }

        gen = ngx_http_acme_wcert_gen(wc);

        if (wc->retry_at) {
            /* a failed load: again when due, or at once for a newer one */

            if (gen == wc->tried_gen
                && (ngx_msec_int_t) (now - wc->retry_at) < 0)
            {
                ngx_http_acme_retry_note(wc->retry_at);
                continue;
            }

        } else if (gen == wc->gen) {
            continue;
        }

        if (ngx_http_acme_wcert_reload(wc, gen, log) == NGX_OK) {
            wc->dirty = 1;
            changed = 1;
        }
    }

    if (!changed) {
        return;
    }

    for (i = 0; i < ngx_http_acme_nwservers; i++) {
        ascf = ngx_http_acme_wservers[i];

        if (!ascf->ctx_installed) {
            continue;
        }

        certs = ascf->certs->elts;

        for (j = 0; j < ascf->certs->nelts; j++) {
            if (ngx_http_acme_wcerts[certs[j]->index].dirty) {
                ngx_http_acme_ctx_install(ascf, log);
                break;
            }
        }
    }

    for (i = 0; i < ngx_http_acme_nwcerts; i++) {
        ngx_http_acme_wcerts[i].dirty = 0;
    }
}


ngx_http_acme_wcert_t *
ngx_http_acme_wcert(ngx_http_acme_cert_t *cert, ngx_log_t *log)
{
    ngx_http_acme_wcert_t  *wc;

    if (ngx_http_acme_wcerts == NULL
        || cert->index >= ngx_http_acme_nwcerts)
    {
        return NULL;
    }

    ngx_http_acme_wcerts_refresh(log);

    wc = &ngx_http_acme_wcerts[cert->index];

    ngx_http_acme_wcert_ensure(wc, log);

    return wc;
}


ngx_http_acme_wcert_t *
ngx_http_acme_wcert_peek(ngx_http_acme_cert_t *cert)
{
    if (ngx_http_acme_wcerts == NULL
        || cert->index >= ngx_http_acme_nwcerts)
    {
        return NULL;
    }

    return &ngx_http_acme_wcerts[cert->index];
}


ngx_int_t
ngx_http_acme_certs_init_process(ngx_cycle_t *cycle)
{
    char                       **paths;
    ngx_uint_t                   i, n;
    acme_err_t                   err;
    ngx_http_acme_cert_t       **certs;
    ngx_http_acme_wcert_t       *wc;
    ngx_http_ssl_srv_conf_t     *sscf;
    ngx_http_acme_srv_conf_t    *ascf;
    ngx_http_core_srv_conf_t   **cscfp;
    ngx_http_acme_main_conf_t   *amcf;
    ngx_http_core_main_conf_t   *cmcf;

    amcf = ngx_http_acme_get_main_conf();

    ngx_http_acme_wzone = amcf->shm_zone ? amcf->shm_zone->data : NULL;

    ngx_http_acme_nstores = amcf->stores.nelts;
    ngx_http_acme_stores = ngx_pcalloc(cycle->pool,
                              (amcf->stores.nelts + 1) * sizeof(acme_store_t *));
    if (ngx_http_acme_stores == NULL) {
        return NGX_ERROR;
    }

    paths = amcf->stores.elts;
    for (i = 0; i < amcf->stores.nelts; i++) {

        /* twice: a journal that failed to apply is dropped by the first */

        for (n = 0; n < 2 && ngx_http_acme_stores[i] == NULL; n++) {
            ngx_http_acme_stores[i] = acme_store_fs_open(paths[i],
                                                 1 | ACME_STORE_FS_READER,
                                                 &err);
            if (ngx_http_acme_stores[i] == NULL) {
                ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                              "acme: cannot open state_path \"%s\": %s",
                              paths[i], err.msg);
            }
        }
    }

    ngx_http_acme_nwcerts = amcf->certs.nelts;
    ngx_http_acme_wcerts = ngx_pcalloc(cycle->pool,
                              (amcf->certs.nelts + 1)
                              * sizeof(ngx_http_acme_wcert_t));
    if (ngx_http_acme_wcerts == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_acme_wzone) {
        ngx_http_acme_seen_gen = ngx_http_acme_wzone->sh->gen;
    }

    /* parsed on first use: a worker with 10,000 certificates starts at once */

    certs = amcf->certs.elts;
    for (i = 0; i < amcf->certs.nelts; i++) {
        wc = &ngx_http_acme_wcerts[i];
        wc->conf = certs[i];
    }

    /* the servers whose SSL_CTX receives their certificates */

    cmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_core_module);
    cscfp = cmcf->servers.elts;

    ngx_http_acme_nwservers = 0;
    ngx_http_acme_wservers = ngx_pcalloc(cycle->pool,
                                 (cmcf->servers.nelts + 1)
                                 * sizeof(ngx_http_acme_srv_conf_t *));
    if (ngx_http_acme_wservers == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < cmcf->servers.nelts; i++) {
        sscf = cscfp[i]->ctx->srv_conf[ngx_http_ssl_module.ctx_index];
        ascf = cscfp[i]->ctx->srv_conf[ngx_http_acme_module.ctx_index];

        ascf->ctx = NULL;
        ascf->ctx_last = NULL;
        ascf->ctx_installed = 0;
        ascf->ctx_complete = 0;
        ascf->sni = NULL;
        ascf->nsni = 0;

        if (ascf->certs == NULL || sscf->ssl.ctx == NULL
            || sscf->certificate_values)
        {
            continue;
        }

        if (ngx_http_acme_sni_index(cycle, ascf) != NGX_OK) {
            return NGX_ERROR;
        }

        if (ascf->sni) {
            /* one SSL_CTX slot per key type cannot hold them: chosen per handshake */
            continue;
        }

        ascf->ctx = sscf->ssl.ctx;
        ngx_http_acme_wservers[ngx_http_acme_nwservers++] = ascf;
    }

    return NGX_OK;
}


void
ngx_http_acme_certs_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t  i;

    for (i = 0; i < ngx_http_acme_od_nwcerts; i++) {
        ngx_http_acme_wcert_clear(&ngx_http_acme_od_wcerts[i]->wc);
        free(ngx_http_acme_od_wcerts[i]->conf.name);
        free(ngx_http_acme_od_wcerts[i]);
    }

    free(ngx_http_acme_od_wcerts);
    ngx_http_acme_od_wcerts = NULL;
    ngx_http_acme_od_nwcerts = 0;
    ngx_http_acme_od_awcerts = 0;

    for (i = 0; i < ngx_http_acme_nwcerts; i++) {
        ngx_http_acme_wcert_clear(&ngx_http_acme_wcerts[i]);
    }

    ngx_http_acme_nwcerts = 0;
    ngx_http_acme_wcerts = NULL;
    ngx_http_acme_nwservers = 0;
    ngx_http_acme_wservers = NULL;

    for (i = 0; i < ngx_http_acme_nstores; i++) {
        if (ngx_http_acme_stores[i]) {
            acme_store_close(ngx_http_acme_stores[i]);
        }
    }

    ngx_http_acme_nstores = 0;
    ngx_http_acme_stores = NULL;
}


/*
 * What a handshake gets while the certificate is not issued: our self-signed
 * fallback, or the server's own ssl_certificate files when they come before
 * acme_certificate (a migration), which then stay in its SSL_CTX.
 */

static void
ngx_http_acme_log_fallback(ngx_http_acme_wcert_t *wc, ngx_uint_t own_files)
{
    char             *what;
    ngx_uint_t        level;
    acme_err_t        err;
    acme_certmeta_t   meta;
    acme_store_t     *st;

    wc->fallback_logged = 1;

    st = ngx_http_acme_stores[wc->conf->store];

    ngx_memzero(&meta, sizeof(acme_certmeta_t));

    what = own_files ? "the server's ssl_certificate files"
                     : "the self-signed fallback certificate";
    level = own_files ? NGX_LOG_NOTICE : NGX_LOG_WARN;

    if (st && acme_store_meta_load(st, wc->conf->name, &meta, &err) == 0
        && meta.last_error)
    {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "acme: serving %s for \"%s\": no certificate yet, last "
                      "attempt failed: %s", what, wc->conf->name,
                      meta.last_error);

    } else {
        ngx_log_error(level, ngx_cycle->log, 0,
                      "acme: serving %s for \"%s\": no certificate issued "
                      "yet", what, wc->conf->name);
    }

    acme_certmeta_free(&meta);
}


/*
 * On-demand certificates, per worker: found by the handshake's name in the
 * zone (ngx_http_acme_od_runner.c publishes the store name once issued),
 * loaded on first use and again when their generation moves.
 */



static ngx_http_acme_od_wcert_t *
ngx_http_acme_od_wcert(ngx_http_acme_cert_t *tmpl, u_char *store)
{
    ngx_uint_t                  i;
    ngx_http_acme_od_wcert_t   *ow, **grown;

    for (i = 0; i < ngx_http_acme_od_nwcerts; i++) {
        ow = ngx_http_acme_od_wcerts[i];

        if (ow->conf.store == tmpl->store
            && ngx_strcmp(ow->conf.name, store) == 0)
        {
            return ow;
        }
    }

    if (ngx_http_acme_od_nwcerts == ngx_http_acme_od_awcerts) {
        grown = realloc(ngx_http_acme_od_wcerts,
                        (ngx_http_acme_od_awcerts * 2 + 8) * sizeof(*grown));
        if (grown == NULL) {
            return NULL;
        }

        ngx_http_acme_od_wcerts = grown;
        ngx_http_acme_od_awcerts = ngx_http_acme_od_awcerts * 2 + 8;
    }

    ow = calloc(1, sizeof(ngx_http_acme_od_wcert_t));
    if (ow == NULL) {
        return NULL;
    }

    ow->conf.name = strdup((char *) store);
    if (ow->conf.name == NULL) {
        free(ow);
        return NULL;
    }

    ow->conf.store = tmpl->store;
    ow->conf.keyspec = tmpl->keyspec;
    ow->wc.conf = &ow->conf;

    ngx_http_acme_od_wcerts[ngx_http_acme_od_nwcerts++] = ow;

    return ow;
}


ngx_int_t
ngx_http_acme_od_cert(ngx_ssl_conn_t *ssl_conn,
    ngx_http_acme_srv_conf_t *ascf)
{
    char                       name[NGX_HTTP_ACME_OD_NAME_LEN];
    size_t                     len;
    ngx_uint_t                 gen;
    const char                *sni;
    ngx_connection_t          *c;
    ngx_http_acme_wcert_t     *wc;
    ngx_http_acme_od_wcert_t  *ow;
    ngx_http_acme_od_entry_t   e;

    c = ngx_ssl_get_connection(ssl_conn);

    sni = SSL_get_servername(ssl_conn, TLSEXT_NAMETYPE_host_name);

    if (sni == NULL || ngx_http_acme_wzone == NULL) {
        return 1;
    }

    len = acme_sni_normalize(sni, ngx_strlen(sni), name, sizeof(name));

    if (len == 0
        || ngx_http_acme_zone_od_get(ngx_http_acme_wzone, (u_char *) name,
                                     len, &e)
           != NGX_OK
        || e.state != NGX_HTTP_ACME_OD_READY)
    {
        /* the fallback certificate */
        return 1;
    }

    ow = ngx_http_acme_od_wcert(ascf->od, e.store);
    if (ow == NULL) {
        return 1;
    }

    wc = &ow->wc;
    gen = ngx_http_acme_wcert_gen(wc);

    if (!wc->loaded
        || (gen != wc->gen && gen != wc->tried_gen)
        || (wc->retry_at
            && (ngx_msec_int_t) (ngx_current_msec - wc->retry_at) >= 0))
    {
        wc->loaded = 1;
        (void) ngx_http_acme_wcert_reload(wc, gen, c->log);
    }

    if (wc->leaf == NULL) {
        return 1;
    }

    if (SSL_use_cert_and_key(ssl_conn, wc->leaf, wc->key, wc->chain, 1) != 1)
    {
        ngx_ssl_error(NGX_LOG_ERR, c->log, 0,
                      "acme: SSL_use_cert_and_key(\"%s\") failed",
                      wc->conf->name);
        return 0;
    }

    return 1;
}


int
ngx_http_acme_cert_cb(ngx_ssl_conn_t *ssl_conn, void *arg)
{
    ngx_http_acme_srv_conf_t  *ascf = arg;

    ngx_uint_t                        i, n, served;
    ngx_connection_t                 *c;
    ngx_http_acme_cert_t            **certs, *sel[8];
    ngx_http_acme_wcert_t            *wc;

    c = ngx_ssl_get_connection(ssl_conn);

    if (c->ssl->handshaked) {
        return 0;
    }

    if (ascf && ascf->od) {
        return ngx_http_acme_od_cert(ssl_conn, ascf);
    }

    if (ascf == NULL || ascf->certs == NULL) {
        return 1;
    }

    ngx_http_acme_wcerts_refresh(c->log);

    if (ascf->ctx && !ascf->ctx_installed) {
        ngx_http_acme_ctx_install(ascf, c->log);
    }

    /*
     * the common case: the SSL_CTX holds every certificate of the server
     * and this connection's copy of it is current (an SSL copies the
     * context's certificates when it is made or switched by SNI)
     */

    if (ascf->ctx_complete && SSL_get_certificate(ssl_conn) == ascf->ctx_last)
    {
        return 1;
    }

    served = 0;
    certs = ascf->certs->elts;
    n = ascf->certs->nelts;

    if (ascf->sni) {
        n = ngx_http_acme_sni_select(ascf, ssl_conn, sel, 8);

        if (n == 0) {
            /* no or an unknown server name: the server's first certificate */
            sel[0] = certs[0];
            n = 1;
        }

        certs = sel;
    }

    for (i = 0; i < n; i++) {

        wc = ngx_http_acme_wcert(certs[i], c->log);
        if (wc == NULL) {
            continue;
        }

        if (wc->leaf == NULL) {
            if (!wc->fallback_logged) {
                ngx_http_acme_log_fallback(wc, !ascf->injected);
            }

            continue;
        }

        if (served == 0) {
            /* the fallback must not stay for clients of the other type */
            SSL_certs_clear(ssl_conn);
        }

        if (SSL_use_cert_and_key(ssl_conn, wc->leaf, wc->key, wc->chain, 1)
            != 1)
        {
            ngx_ssl_error(NGX_LOG_ERR, c->log, 0,
                          "acme: SSL_use_cert_and_key(\"%s\") failed",
                          wc->conf->name);
            return 0;
        }

        served++;
    }

    return 1;
}
