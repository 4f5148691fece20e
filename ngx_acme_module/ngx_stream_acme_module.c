
/*
 * ngx_stream_acme_module: acme_certificate in stream servers.
 *
 *   stream {
 *       server {
 *           listen 8883 ssl;
 *           acme_certificate ISSUER NAME... [key=ALG] [fallback=...];
 *       }
 *   }
 *
 * A separate loadable module, so that an nginx without stream still loads
 * ngx_http_acme_module.  Everything but the stream configuration is the
 * http block's: the issuers, the shared zone, the store and the core in the
 * cache manager; a certificate joins the http module's list and workers
 * serve it from there with the same callback, so a certificate an http and
 * a stream server both name is one certificate with one order.
 *
 * The http block (with acme_issuer) must come before the stream block:
 * the certificate is resolved against its issuers when the directive is
 * read.  nginx 1.22's stream servers have no server_name: the identifiers
 * are listed in the directive.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_http_acme_module.h"


static void *ngx_stream_acme_create_srv_conf(ngx_conf_t *cf);
static char *ngx_stream_acme_certificate(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_stream_acme_postconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_stream_acme_preread_handler(ngx_stream_session_t *s);


static ngx_command_t  ngx_stream_acme_commands[] = {

    { ngx_string("acme_certificate"),
      NGX_STREAM_SRV_CONF|NGX_CONF_1MORE,
      ngx_stream_acme_certificate,
      NGX_STREAM_SRV_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_stream_module_t  ngx_stream_acme_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_stream_acme_postconfiguration,     /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    ngx_stream_acme_create_srv_conf,       /* create server configuration */
    NULL                                   /* merge server configuration */
};


ngx_module_t  ngx_stream_acme_module = {
    NGX_MODULE_V1,
    &ngx_stream_acme_module_ctx,           /* module context */
    ngx_stream_acme_commands,              /* module directives */
    NGX_STREAM_MODULE,                     /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static void *
ngx_stream_acme_create_srv_conf(ngx_conf_t *cf)
{
    /* the http module's server structure: its certificate callback's */

    return ngx_pcalloc(cf->pool, sizeof(ngx_http_acme_srv_conf_t));
}


static char *
ngx_stream_acme_certificate(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_acme_srv_conf_t *ascf = conf;

    ngx_str_t                  *n, fb[8];
    ngx_uint_t                  i, nfb;
    ngx_http_acme_cert_t       *cert, **cp;
    ngx_stream_ssl_conf_t      *sscf;
    ngx_http_acme_main_conf_t  *amcf;

    amcf = ngx_http_acme_conf_main_conf(cf);

    if (amcf == NULL || amcf->issuers.nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"acme_certificate\" in stream needs an http "
                           "block with \"acme_issuer\" before the stream "
                           "block");
        return NGX_CONF_ERROR;
    }

    cert = ngx_http_acme_cert_parse(cf);
    if (cert == NULL) {
        return NGX_CONF_ERROR;
    }

    if (cert->names == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"acme_certificate\" in stream needs the "
                           "identifiers: stream servers have no "
                           "server_name");
        return NGX_CONF_ERROR;
    }

    if (ngx_http_acme_cert_resolve(cf, amcf, cert) != NGX_OK
        || ngx_http_acme_cert_conflict(cf, amcf, cert) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (ascf->certs == NULL) {
        ascf->certs = ngx_array_create(cf->pool, 2,
                                       sizeof(ngx_http_acme_cert_t *));
        if (ascf->certs == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    cp = ngx_array_push(ascf->certs);
    if (cp == NULL) {
        return NGX_CONF_ERROR;
    }

    *cp = cert;

    cp = ngx_array_push(&amcf->certs);
    if (cp == NULL) {
        return NGX_CONF_ERROR;
    }

    cert->index = amcf->certs.nelts - 1;
    *cp = cert;

    nfb = 0;
    n = cert->names->elts;

    for (i = 0; i < cert->names->nelts && nfb < 8; i++) {
        fb[nfb] = n[i];
        ngx_http_acme_strip_dot(&fb[nfb++]);
    }

    if (ngx_http_acme_fallback_make(cf, ascf, fb, nfb) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    /*
     * the fallback as the server's ssl_certificate, so that stream's ssl
     * module makes its SSL_CTX and accepts "listen ... ssl" without files
     */

    sscf = ngx_stream_conf_get_module_srv_conf(cf, ngx_stream_ssl_module);

    if (ascf->injected
        || sscf->certificates != NGX_CONF_UNSET_PTR
        || sscf->certificate_keys != NGX_CONF_UNSET_PTR)
    {
        return NGX_CONF_OK;
    }

    sscf->certificates = ngx_array_create(cf->pool, 1, sizeof(ngx_str_t));
    sscf->certificate_keys = ngx_array_create(cf->pool, 1, sizeof(ngx_str_t));

    if (sscf->certificates == NULL || sscf->certificate_keys == NULL) {
        return NGX_CONF_ERROR;
    }

    n = ngx_array_push(sscf->certificates);
    if (n == NULL) {
        return NGX_CONF_ERROR;
    }

    *n = ascf->fallback_cert;

    n = ngx_array_push(sscf->certificate_keys);
    if (n == NULL) {
        return NGX_CONF_ERROR;
    }

    *n = ascf->fallback_key;

    ascf->injected = 1;

    return NGX_CONF_OK;
}


/* the certificate callback on each stream server's SSL_CTX */

static ngx_int_t
ngx_stream_acme_postconfiguration(ngx_conf_t *cf)
{
    ngx_uint_t                    s, l, hook;
    ngx_stream_listen_t          *ls;
    ngx_stream_handler_pt        *h;
    ngx_http_acme_main_conf_t    *amcf;
    ngx_stream_ssl_conf_t        *sscf;
    ngx_http_acme_srv_conf_t     *ascf;
    ngx_stream_core_srv_conf_t  **cscfp;
    ngx_stream_core_main_conf_t  *cmcf;

    amcf = ngx_http_acme_conf_main_conf(cf);
    if (amcf == NULL) {
        return NGX_OK;
    }

    cmcf = ngx_stream_conf_get_module_main_conf(cf, ngx_stream_core_module);
    cscfp = cmcf->servers.elts;
    ls = cmcf->listen.elts;
    hook = 0;

    for (s = 0; s < cmcf->servers.nelts; s++) {

        ascf = cscfp[s]->ctx->srv_conf[ngx_stream_acme_module.ctx_index];
        sscf = cscfp[s]->ctx->srv_conf[ngx_stream_ssl_module.ctx_index];

        if (ascf->certs == NULL) {
            continue;
        }

        for (l = 0; l < cmcf->listen.nelts; l++) {
            if (ls[l].ctx->srv_conf == cscfp[s]->ctx->srv_conf && ls[l].ssl) {
                break;
            }
        }

        if (l == cmcf->listen.nelts || sscf->ssl.ctx == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"acme_certificate\" needs \"listen ... ssl\" "
                          "in the stream server in %s:%ui",
                          cscfp[s]->file_name, cscfp[s]->line);
            return NGX_ERROR;
        }

        if (sscf->certificate_values) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"acme_certificate\" cannot serve with "
                          "\"ssl_certificate\" variables in the stream "
                          "server in %s:%ui",
                          cscfp[s]->file_name, cscfp[s]->line);
            return NGX_ERROR;
        }

        SSL_CTX_set_cert_cb(sscf->ssl.ctx, ngx_http_acme_cert_cb, ascf);

        /* tls-alpn-01 on the stream listener */

        if (ngx_http_acme_tls_alpn_hook(cf, amcf, sscf->ssl.ctx) != NGX_OK) {
            return NGX_ERROR;
        }

        hook = 1;
    }

    if (!hook) {
        return NGX_OK;
    }

    /* a validation's connection is closed after its handshake */

    h = ngx_array_push(&cmcf->phases[NGX_STREAM_PREREAD_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_stream_acme_preread_handler;

    return NGX_OK;
}


static ngx_int_t
ngx_stream_acme_preread_handler(ngx_stream_session_t *s)
{
    if (ngx_http_acme_is_challenge_connection(s->connection)) {
        ngx_log_debug0(NGX_LOG_DEBUG_STREAM, s->connection->log, 0,
                       "acme: tls-alpn-01 validation done, closing");
        return NGX_STREAM_OK;
    }

    return NGX_DECLINED;
}
