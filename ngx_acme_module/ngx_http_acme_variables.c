
/*
 * $acme_certificate and $acme_certificate_key: "data:" PEM of the current
 * certificate of the server's (first) acme_certificate, from the worker's
 * cache, for "ssl_certificate $acme_certificate;". Before the first
 * certificate exists they hold the fallback. TLS-ALPN-01 handshakes
 * never evaluate them: they move to a private SSL_CTX.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_acme_module.h"


static ngx_int_t ngx_http_acme_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


static ngx_http_variable_t  ngx_http_acme_vars[] = {

    { ngx_string("acme_certificate"), NULL, ngx_http_acme_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("acme_certificate_key"), NULL, ngx_http_acme_variable, 1,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_acme_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_acme_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_acme_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    ngx_str_t                 *s;
    ngx_uint_t                 i;
    ngx_http_acme_cert_t     **certs;
    ngx_http_acme_wcert_t     *wc;
    ngx_http_acme_srv_conf_t  *ascf;

    ascf = ngx_http_get_module_srv_conf(r, ngx_http_acme_module);

    if (ascf == NULL || ascf->certs == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    certs = ascf->certs->elts;

    for (i = 0; i < ascf->certs->nelts; i++) {

        /*
         * the key follows the certificate evaluated just before it:
         * only the certificate variable looks for a new generation
         */

        wc = data ? ngx_http_acme_wcert_peek(certs[i])
                  : ngx_http_acme_wcert(certs[i], r->connection->log);

        if (wc && wc->leaf) {
            s = data ? &wc->key_pem : &wc->cert_pem;
            goto found;
        }
    }

    s = data ? &ascf->fallback_key : &ascf->fallback_cert;

    if (s->len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

found:

    v->data = s->data;
    v->len = s->len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}
