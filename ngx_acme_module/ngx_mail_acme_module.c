
/*
 * ngx_mail_acme_module: acme_certificate in mail servers.
 *
 *   mail {
 *       server {
 *           listen 993 ssl;            (or starttls on;)
 *           server_name mail.example.org;
 *           protocol imap;
 *           acme_certificate ISSUER [NAME...] [key=ALG] [fallback=...];
 *       }
 *   }
 *
 * A loadable module of its own, as ngx_stream_acme_module: the http block's
 * issuers, zone, store and core do the rest.  The identifiers are the
 * directive's, or the server's server_name (as merged: nginx's default is
 * the machine's hostname).  mail has no postconfiguration: the certificate
 * is resolved and the callbacks set in this module's merge, which runs
 * after ngx_mail_ssl_module's (a later module) has made the SSL_CTX.
 *
 * tls-alpn-01 is answered on the server's TLS handshakes ("listen ... ssl",
 * and after STARTTLS).  mail has no phase to end a validation's connection
 * in, as stream's preread: the server gets a copy of its protocol whose
 * session start closes it instead of greeting the CA (RFC 8737: acme-tls/1
 * is for the validation only).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_mail.h>

#include "ngx_http_acme_module.h"


typedef struct {
    ngx_http_acme_srv_conf_t    acme;            /* first: the callback's */
    ngx_mail_core_srv_conf_t   *cscf;
    ngx_mail_ssl_conf_t        *sscf;
    ngx_mail_protocol_t        *protocol;        /* the server's own */
} ngx_mail_acme_srv_conf_t;


static void *ngx_mail_acme_create_srv_conf(ngx_conf_t *cf);
static char *ngx_mail_acme_merge_srv_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_mail_acme_certificate(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static void ngx_mail_acme_init_session(ngx_mail_session_t *s,
    ngx_connection_t *c);
static void ngx_mail_acme_init_protocol(ngx_event_t *rev);
static ngx_uint_t ngx_mail_acme_validation_done(ngx_connection_t *c);


static ngx_command_t  ngx_mail_acme_commands[] = {

    { ngx_string("acme_certificate"),
      NGX_MAIL_SRV_CONF|NGX_CONF_1MORE,
      ngx_mail_acme_certificate,
      NGX_MAIL_SRV_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_mail_module_t  ngx_mail_acme_module_ctx = {
    NULL,                                  /* protocol */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    ngx_mail_acme_create_srv_conf,         /* create server configuration */
    ngx_mail_acme_merge_srv_conf           /* merge server configuration */
};


ngx_module_t  ngx_mail_acme_module = {
    NGX_MODULE_V1,
    &ngx_mail_acme_module_ctx,             /* module context */
    ngx_mail_acme_commands,                /* module directives */
    NGX_MAIL_MODULE,                       /* module type */
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
ngx_mail_acme_create_srv_conf(ngx_conf_t *cf)
{
    return ngx_pcalloc(cf->pool, sizeof(ngx_mail_acme_srv_conf_t));
}


static char *
ngx_mail_acme_certificate(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_mail_acme_srv_conf_t *macf = conf;

    ngx_str_t                  *n, fb[8];
    ngx_uint_t                  i, nfb;
    ngx_mail_ssl_conf_t        *sscf;
    ngx_http_acme_cert_t       *cert, **cp;
    ngx_http_acme_srv_conf_t   *ascf;
    ngx_http_acme_main_conf_t  *amcf;

    ascf = &macf->acme;

    amcf = ngx_http_acme_conf_main_conf(cf);

    if (amcf == NULL || amcf->issuers.nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"acme_certificate\" in mail needs an http "
                           "block with \"acme_issuer\" before the mail "
                           "block");
        return NGX_CONF_ERROR;
    }

    cert = ngx_http_acme_cert_parse(cf);
    if (cert == NULL) {
        return NGX_CONF_ERROR;
    }

    macf->cscf = ngx_mail_conf_get_module_srv_conf(cf, ngx_mail_core_module);
    macf->sscf = ngx_mail_conf_get_module_srv_conf(cf, ngx_mail_ssl_module);

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

    /* the fallback's names: those known so far */

    nfb = 0;

    if (cert->names) {
        n = cert->names->elts;
        for (i = 0; i < cert->names->nelts && nfb < 8; i++) {
            fb[nfb] = n[i];
            ngx_http_acme_strip_dot(&fb[nfb++]);
        }

    } else if (macf->cscf->server_name.len) {
        fb[nfb++] = macf->cscf->server_name;
    }

    if (ngx_http_acme_fallback_make(cf, ascf, fb, nfb) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    /* the fallback as ssl_certificate: mail's ssl module requires one */

    sscf = macf->sscf;

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


static char *
ngx_mail_acme_merge_srv_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_mail_acme_srv_conf_t *conf = child;

    ngx_str_t                  *n;
    ngx_uint_t                  i;
    ngx_mail_protocol_t        *protocol;
    ngx_http_acme_cert_t      **certs;
    ngx_http_acme_main_conf_t  *amcf;

    if (conf->acme.certs == NULL) {
        return NGX_CONF_OK;
    }

    if (!conf->sscf->listen && conf->sscf->starttls == NGX_MAIL_STARTTLS_OFF)
    {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"acme_certificate\" needs \"listen ... ssl\" or "
                      "\"starttls\" in the mail server in %s:%ui",
                      conf->cscf->file_name, conf->cscf->line);
        return NGX_CONF_ERROR;
    }

    amcf = ngx_http_acme_conf_main_conf(cf);
    certs = conf->acme.certs->elts;

    for (i = 0; i < conf->acme.certs->nelts; i++) {

        if (certs[i]->names == NULL) {

            if (conf->cscf->server_name.len == 0) {
                ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                              "acme_certificate: no identifiers: list them "
                              "or set server_name in %s:%ui",
                              certs[i]->file, certs[i]->line);
                return NGX_CONF_ERROR;
            }

            certs[i]->names = ngx_array_create(cf->pool, 1,
                                               sizeof(ngx_str_t));
            if (certs[i]->names == NULL) {
                return NGX_CONF_ERROR;
            }

            n = ngx_array_push(certs[i]->names);
            if (n == NULL) {
                return NGX_CONF_ERROR;
            }

            *n = conf->cscf->server_name;
        }

        if (ngx_http_acme_cert_resolve(cf, amcf, certs[i]) != NGX_OK
            || ngx_http_acme_cert_conflict(cf, amcf, certs[i]) != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }
    }

    if (conf->sscf->ssl.ctx == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"acme_certificate\": the mail server in %s:%ui has "
                      "no SSL context", conf->cscf->file_name,
                      conf->cscf->line);
        return NGX_CONF_ERROR;
    }

    SSL_CTX_set_cert_cb(conf->sscf->ssl.ctx, ngx_http_acme_cert_cb,
                        &conf->acme);

    /* tls-alpn-01 where the CA reaches a TLS listener (port 443 only) */

    if (ngx_http_acme_tls_alpn_hook(cf, amcf, conf->sscf->ssl.ctx)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    /* core's merge (an earlier module) has set the protocol */

    protocol = ngx_palloc(cf->pool, sizeof(ngx_mail_protocol_t));
    if (protocol == NULL) {
        return NGX_CONF_ERROR;
    }

    conf->protocol = conf->cscf->protocol;

    *protocol = *conf->protocol;
    protocol->init_session = ngx_mail_acme_init_session;
    protocol->init_protocol = ngx_mail_acme_init_protocol;

    conf->cscf->protocol = protocol;

    return NGX_CONF_OK;
}


/*
 * After the handshake: init_session on an implicit TLS listener,
 * init_protocol after STARTTLS; a validation's connection ends there
 */

static void
ngx_mail_acme_init_session(ngx_mail_session_t *s, ngx_connection_t *c)
{
    ngx_mail_acme_srv_conf_t  *macf;

    if (ngx_mail_acme_validation_done(c)) {
        return;
    }

    macf = ngx_mail_get_module_srv_conf(s, ngx_mail_acme_module);

    macf->protocol->init_session(s, c);
}


static void
ngx_mail_acme_init_protocol(ngx_event_t *rev)
{
    ngx_connection_t          *c;
    ngx_mail_session_t        *s;
    ngx_mail_acme_srv_conf_t  *macf;

    c = rev->data;
    s = c->data;

    if (ngx_mail_acme_validation_done(c)) {
        return;
    }

    macf = ngx_mail_get_module_srv_conf(s, ngx_mail_acme_module);

    /* the protocol's own takes the connection's next reads */

    rev->handler = macf->protocol->init_protocol;

    macf->protocol->init_protocol(rev);
}


/* a tls-alpn-01 validation's connection: closed, with no mail protocol */

static ngx_uint_t
ngx_mail_acme_validation_done(ngx_connection_t *c)
{
    if (!ngx_http_acme_is_challenge_connection(c)) {
        return 0;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_MAIL, c->log, 0,
                   "acme: tls-alpn-01 validation done, closing");

    /* the CA closes at once (RFC 8737), with or without its close_notify */

    c->ssl->no_wait_shutdown = 1;

    ngx_mail_close_connection(c);

    return 1;
}
