
/*
 * TLS-ALPN-01 (RFC 8737): a client hello callback on every server's SSL_CTX
 * moves a handshake that offers acme-tls/1 for a name with a pending
 * challenge to a private SSL_CTX (no client certificates, acme-tls/1 only,
 * the challenge certificate); any other handshake goes on to nginx's own
 * callbacks (virtual server, ALPN, client certificates) untouched.
 * Challenge certificates are built and cached per worker.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_acme_module.h"
#include "ngx_http_acme_zone.h"

#include "acme_tlsalpn.h"


/*
 * nginx 1.29.2 chooses the virtual server in a client hello callback of its
 * own (its argument in the SSL_CTX's ex_data, ngx_ssl_client_hello_arg_index):
 * ours takes its place and calls it for every handshake it does not take.
 * Older nginx does that in the servername callback, which stays in place.
 */

#if (nginx_version >= 1029002 && defined SSL_CLIENT_HELLO_SUCCESS)
#define NGX_HTTP_ACME_CHAIN_CLIENT_HELLO  1
#endif

#define NGX_HTTP_ACME_TLSALPN_PROTO  "\x0a" "acme-tls/1"
#define NGX_HTTP_ACME_CHALLENGE_MAX  16


typedef int (*ngx_http_acme_client_hello_pt)(SSL *ssl, int *al, void *arg);


/* our client hello callback's argument, one per server SSL_CTX */

typedef struct {
    ngx_http_acme_client_hello_pt   prev;        /* replaced, or NULL */
    void                           *prev_arg;
    SSL_CTX                        *ctx;         /* private, of the cycle */
} ngx_http_acme_tls_alpn_hello_t;


/* a challenge handshake's certificate and key (references) */

typedef struct {
    X509                           *cert;
    EVP_PKEY                       *key;
} ngx_http_acme_conn_challenge_t;


typedef struct {
    u_char                         *sni;
    u_char                         *key_authz;
    X509                           *cert;
    EVP_PKEY                       *key;
    ngx_uint_t                      used;
} ngx_http_acme_challenge_cert_t;


static int ngx_http_acme_client_hello(SSL *ssl, int *al, void *arg);
static int ngx_http_acme_tls_alpn_servername(SSL *ssl, int *al, void *arg);
static int ngx_http_acme_tls_alpn_select(ngx_ssl_conn_t *ssl_conn,
    const unsigned char **out, unsigned char *outlen,
    const unsigned char *in, unsigned int inlen, void *arg);
static int ngx_http_acme_tls_alpn_cert(ngx_ssl_conn_t *ssl_conn, void *arg);


static int                              ngx_http_acme_ssl_index = -1;
static ngx_http_acme_zone_t            *ngx_http_acme_alpn_zone;

static ngx_http_acme_challenge_cert_t   ngx_http_acme_challenges
                                            [NGX_HTTP_ACME_CHALLENGE_MAX];
static ngx_uint_t                       ngx_http_acme_challenge_clock;


/* postconfiguration */

static void
ngx_http_acme_tls_alpn_ctx_cleanup(void *data)
{
    SSL_CTX  *ctx = data;

    SSL_CTX_free(ctx);
}


/*
 * The private context of the challenge handshakes: nothing of a server's
 * configuration (client certificates, ssl_reject_handshake, its ALPN list)
 * may refuse the CA, and nothing of the challenge reaches the servers.
 */

static SSL_CTX *
ngx_http_acme_tls_alpn_ctx(ngx_conf_t *cf)
{
    SSL_CTX             *ctx;
    ngx_pool_cleanup_t  *cln;

    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        ngx_ssl_error(NGX_LOG_EMERG, cf->log, 0,
                      "acme: SSL_CTX_new() failed for tls-alpn-01");
        return NULL;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        SSL_CTX_free(ctx);
        return NULL;
    }

    cln->handler = ngx_http_acme_tls_alpn_ctx_cleanup;
    cln->data = ctx;

    /* RFC 8737: TLS 1.2 or later; no sessions to resume elsewhere */

    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1
        || SSL_CTX_set_session_id_context(ctx,
                              (const u_char *) NGX_HTTP_ACME_TLSALPN_PROTO,
                              sizeof(NGX_HTTP_ACME_TLSALPN_PROTO) - 1)
           != 1)
    {
        ngx_ssl_error(NGX_LOG_EMERG, cf->log, 0,
                      "acme: cannot set up the tls-alpn-01 SSL_CTX");
        return NULL;
    }

    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_COMPRESSION);

#ifdef SSL_OP_NO_RENEGOTIATION
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
#endif

    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);

    /* without it OpenSSL calls the first server's: nginx's, which switches */
    SSL_CTX_set_tlsext_servername_callback(ctx,
                                           ngx_http_acme_tls_alpn_servername);

    SSL_CTX_set_alpn_select_cb(ctx, ngx_http_acme_tls_alpn_select, NULL);
    SSL_CTX_set_cert_cb(ctx, ngx_http_acme_tls_alpn_cert, NULL);

    return ctx;
}


ngx_int_t
ngx_http_acme_tls_alpn_init(ngx_conf_t *cf)
{
    ngx_uint_t                        s;
    ngx_http_ssl_srv_conf_t          *sscf;
    ngx_http_core_srv_conf_t        **cscfp;
    ngx_http_core_main_conf_t        *cmcf;
    ngx_http_acme_main_conf_t        *amcf;

    amcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_acme_module);

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);
    cscfp = cmcf->servers.elts;

    for (s = 0; s < cmcf->servers.nelts; s++) {

        sscf = cscfp[s]->ctx->srv_conf[ngx_http_ssl_module.ctx_index];

        if (sscf->ssl.ctx == NULL) {
            continue;
        }

        if (ngx_http_acme_tls_alpn_hook(cf, amcf, sscf->ssl.ctx) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * Our client hello callback on a server's SSL_CTX: http's, and stream's
 * (ngx_stream_acme_module); the private SSL_CTX is the cycle's, shared.
 */

ngx_int_t
ngx_http_acme_tls_alpn_hook(ngx_conf_t *cf, ngx_http_acme_main_conf_t *amcf,
    SSL_CTX *server_ctx)
{
    ngx_http_acme_tls_alpn_hello_t   *hello;

    if (ngx_http_acme_ssl_index == -1) {
        ngx_http_acme_ssl_index = SSL_get_ex_new_index(0, NULL, NULL, NULL,
                                                       NULL);
        if (ngx_http_acme_ssl_index == -1) {
            ngx_ssl_error(NGX_LOG_EMERG, cf->log, 0,
                          "SSL_get_ex_new_index() failed");
            return NGX_ERROR;
        }
    }

    if (amcf->tls_alpn_ctx == NULL) {
        amcf->tls_alpn_ctx = ngx_http_acme_tls_alpn_ctx(cf);
        if (amcf->tls_alpn_ctx == NULL) {
            return NGX_ERROR;
        }
    }

    hello = ngx_pcalloc(cf->pool, sizeof(ngx_http_acme_tls_alpn_hello_t));
    if (hello == NULL) {
        return NGX_ERROR;
    }

    hello->ctx = amcf->tls_alpn_ctx;

#if (NGX_HTTP_ACME_CHAIN_CLIENT_HELLO)

    /*
     * OpenSSL cannot tell the callback in place; nginx puts its
     * argument next to its callback, so that tells it is there
     */

    if (SSL_CTX_get_ex_data(server_ctx, ngx_ssl_client_hello_arg_index)
        != NULL)
    {
        hello->prev = ngx_ssl_client_hello_callback;
        hello->prev_arg = NULL;
    }

#endif

    SSL_CTX_set_client_hello_cb(server_ctx, ngx_http_acme_client_hello,
                                hello);

    return NGX_OK;
}


/* per worker */

void
ngx_http_acme_tls_alpn_init_process(ngx_cycle_t *cycle)
{
    ngx_http_acme_main_conf_t  *amcf;

    amcf = ngx_http_acme_get_main_conf();

    ngx_http_acme_alpn_zone = amcf->shm_zone ? amcf->shm_zone->data : NULL;
}


static void
ngx_http_acme_challenge_cert_clear(ngx_http_acme_challenge_cert_t *cc)
{
    free(cc->sni);
    free(cc->key_authz);

    if (cc->cert) {
        X509_free(cc->cert);
    }

    if (cc->key) {
        EVP_PKEY_free(cc->key);
    }

    ngx_memzero(cc, sizeof(ngx_http_acme_challenge_cert_t));
}


void
ngx_http_acme_tls_alpn_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t  i;

    ngx_http_acme_alpn_zone = NULL;

    for (i = 0; i < NGX_HTTP_ACME_CHALLENGE_MAX; i++) {
        if (ngx_http_acme_challenges[i].sni) {
            ngx_http_acme_challenge_cert_clear(&ngx_http_acme_challenges[i]);
        }
    }
}


/* the challenge certificate for an SNI name, built once per worker */

static ngx_http_acme_challenge_cert_t *
ngx_http_acme_challenge_cert(ngx_str_t *sni, ngx_str_t *value, ngx_log_t *log)
{
    u_char                          *p, *last, *authz;
    ngx_uint_t                       i, oldest;
    acme_err_t                       err;
    acme_ident_t                     id;
    ngx_http_acme_challenge_cert_t  *cc;

    /* value: "dns|ip <identifier> <key authorization>" */

    p = value->data;
    last = value->data + value->len;

    if (value->len < 4) {
        return NULL;
    }

    if (ngx_strncmp(p, "dns ", 4) == 0) {
        id.type = ACME_IDENT_DNS;
        p += 4;

    } else if (ngx_strncmp(p, "ip ", 3) == 0) {
        id.type = ACME_IDENT_IP;
        p += 3;

    } else {
        return NULL;
    }

    authz = ngx_strlchr(p, last, ' ');
    if (authz == NULL) {
        return NULL;
    }

    *authz++ = '\0';
    id.value = (char *) p;

    oldest = 0;

    for (i = 0; i < NGX_HTTP_ACME_CHALLENGE_MAX; i++) {
        cc = &ngx_http_acme_challenges[i];

        if (cc->sni == NULL) {
            oldest = i;
            continue;
        }

        if (ngx_strlen(cc->sni) == sni->len
            && ngx_strncmp(cc->sni, sni->data, sni->len) == 0
            && ngx_strcmp(cc->key_authz, authz) == 0)
        {
            cc->used = ++ngx_http_acme_challenge_clock;
            return cc;
        }

        if (ngx_http_acme_challenges[oldest].sni != NULL
            && cc->used < ngx_http_acme_challenges[oldest].used)
        {
            oldest = i;
        }
    }

    cc = &ngx_http_acme_challenges[oldest];

    if (cc->sni) {
        ngx_http_acme_challenge_cert_clear(cc);
    }

    if (acme_tlsalpn_cert(&id, (char *) authz, &cc->cert, &cc->key, &err)
        != 0)
    {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "acme: cannot build the tls-alpn-01 certificate for "
                      "\"%s\": %s", id.value, err.msg);
        ngx_memzero(cc, sizeof(ngx_http_acme_challenge_cert_t));
        return NULL;
    }

    cc->sni = (u_char *) acme_strndup((char *) sni->data, sni->len);
    cc->key_authz = (u_char *) acme_strdup((char *) authz);

    if (cc->sni == NULL || cc->key_authz == NULL) {
        ngx_http_acme_challenge_cert_clear(cc);
        return NULL;
    }

    cc->used = ++ngx_http_acme_challenge_clock;

    ngx_log_error(NGX_LOG_INFO, log, 0,
                  "acme: tls-alpn-01 challenge certificate for \"%V\" built",
                  sni);

    return cc;
}


static void
ngx_http_acme_conn_challenge_cleanup(void *data)
{
    ngx_http_acme_conn_challenge_t  *ch = data;

    if (ch->cert) {
        X509_free(ch->cert);
        ch->cert = NULL;
    }

    if (ch->key) {
        EVP_PKEY_free(ch->key);
        ch->key = NULL;
    }
}


/* 1 when the ALPN extension offers acme-tls/1 */

static ngx_uint_t
ngx_http_acme_offers_acme_tls(const u_char *p, size_t len)
{
    size_t  n, l;

    if (len < 2) {
        return 0;
    }

    n = (p[0] << 8) | p[1];
    p += 2;

    if (n != len - 2) {
        return 0;
    }

    while (n > 0) {
        l = p[0];

        if (l + 1 > n) {
            return 0;
        }

        if (l == ACME_TLSALPN_PROTO_LEN
            && ngx_memcmp(p + 1, ACME_TLSALPN_PROTO, l) == 0)
        {
            return 1;
        }

        p += l + 1;
        n -= l + 1;
    }

    return 0;
}


static ngx_int_t
ngx_http_acme_client_sni(SSL *ssl, u_char *buf, size_t size, ngx_str_t *sni)
{
    size_t          n, l;
    const u_char   *p;

    if (!SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &n)) {
        return NGX_DECLINED;
    }

    /* list length, name type (host_name), name length, name */

    if (n < 5 || (size_t) ((p[0] << 8) | p[1]) != n - 2 || p[2] != 0) {
        return NGX_DECLINED;
    }

    l = (p[3] << 8) | p[4];

    if (l + 5 > n) {
        return NGX_DECLINED;
    }

    l = acme_sni_normalize((const char *) p + 5, l, (char *) buf, size);

    sni->data = buf;
    sni->len = l;

    return l ? NGX_OK : NGX_DECLINED;
}


/*
 * NGX_OK: a challenge handshake, its certificate attached to the SSL;
 * NGX_DECLINED: any other handshake
 */

static ngx_int_t
ngx_http_acme_challenge_hello(SSL *ssl, ngx_connection_t *c)
{
    u_char                           buf[256];
    size_t                           len;
    ngx_str_t                        sni, value;
    const u_char                    *p;
    ngx_pool_cleanup_t              *cln;
    ngx_http_acme_conn_challenge_t  *ch;
    ngx_http_acme_challenge_cert_t  *cc;

    if (ngx_http_acme_alpn_zone == NULL) {
        return NGX_DECLINED;
    }

#if (NGX_QUIC)

    /* RFC 8737 validates over TLS on TCP; QUIC handshakes stay nginx's */

    if (c->listening && c->listening->quic) {
        return NGX_DECLINED;
    }

#endif

    if (!SSL_client_hello_get0_ext(ssl,
                        TLSEXT_TYPE_application_layer_protocol_negotiation,
                        &p, &len)
        || !ngx_http_acme_offers_acme_tls(p, len))
    {
        return NGX_DECLINED;
    }

    if (ngx_http_acme_client_sni(ssl, buf, sizeof(buf), &sni) != NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "acme: acme-tls/1 offered without a usable SNI name");
        return NGX_DECLINED;
    }

    if (ngx_http_acme_zone_get(ngx_http_acme_alpn_zone,
                               NGX_HTTP_ACME_KV_TLSALPN,
                               sni.data, sni.len, c->pool, &value)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "acme: acme-tls/1 offered for \"%V\", which has no "
                      "pending tls-alpn-01 challenge", &sni);
        return NGX_DECLINED;
    }

    cc = ngx_http_acme_challenge_cert(&sni, &value, c->log);
    if (cc == NULL) {
        return NGX_DECLINED;
    }

    ch = ngx_pcalloc(c->pool, sizeof(ngx_http_acme_conn_challenge_t));
    if (ch == NULL) {
        return NGX_DECLINED;
    }

    cln = ngx_pool_cleanup_add(c->pool, 0);
    if (cln == NULL) {
        return NGX_DECLINED;
    }

    /* the cache may drop it while this handshake waits for the client */

    X509_up_ref(cc->cert);
    EVP_PKEY_up_ref(cc->key);

    ch->cert = cc->cert;
    ch->key = cc->key;

    cln->handler = ngx_http_acme_conn_challenge_cleanup;
    cln->data = ch;

    (void) SSL_set_ex_data(ssl, ngx_http_acme_ssl_index, ch);

    ngx_log_error(NGX_LOG_INFO, c->log, 0,
                  "acme: tls-alpn-01 challenge handshake for \"%V\"", &sni);

    return NGX_OK;
}


static int
ngx_http_acme_client_hello(SSL *ssl, int *al, void *arg)
{
    ngx_http_acme_tls_alpn_hello_t  *hello = arg;

    ngx_connection_t  *c;

    c = ngx_ssl_get_connection(ssl);

    (void) SSL_set_ex_data(ssl, ngx_http_acme_ssl_index, NULL);

    if (ngx_http_acme_challenge_hello(ssl, c) != NGX_OK) {

        if (hello->prev) {
            return hello->prev(ssl, al, hello->prev_arg);
        }

        return SSL_CLIENT_HELLO_SUCCESS;
    }

    /* as ngx_http_ssl_servername() switches to a server's SSL_CTX */

    if (SSL_set_SSL_CTX(ssl, hello->ctx) == NULL) {
        ngx_ssl_error(NGX_LOG_ERR, c->log, 0,
                      "acme: SSL_set_SSL_CTX() failed for tls-alpn-01");
        *al = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }

    SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);

    SSL_clear_options(ssl, SSL_get_options(ssl)
                           & ~SSL_CTX_get_options(hello->ctx));
    SSL_set_options(ssl, SSL_CTX_get_options(hello->ctx));

    if (SSL_set_min_proto_version(ssl, TLS1_2_VERSION) != 1
        || SSL_set_num_tickets(ssl, 0) != 1)
    {
        *al = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }

    return SSL_CLIENT_HELLO_SUCCESS;
}


/* the private context's callbacks */

static int
ngx_http_acme_tls_alpn_servername(SSL *ssl, int *al, void *arg)
{
    return SSL_TLSEXT_ERR_OK;
}


static int
ngx_http_acme_tls_alpn_select(ngx_ssl_conn_t *ssl_conn,
    const unsigned char **out, unsigned char *outlen,
    const unsigned char *in, unsigned int inlen, void *arg)
{
    if (SSL_select_next_proto((unsigned char **) out, outlen,
                              (unsigned char *) NGX_HTTP_ACME_TLSALPN_PROTO,
                              sizeof(NGX_HTTP_ACME_TLSALPN_PROTO) - 1,
                              in, inlen)
        != OPENSSL_NPN_NEGOTIATED)
    {
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }

    return SSL_TLSEXT_ERR_OK;
}


static int
ngx_http_acme_tls_alpn_cert(ngx_ssl_conn_t *ssl_conn, void *arg)
{
    ngx_connection_t                *c;
    ngx_http_acme_conn_challenge_t  *ch;

    c = ngx_ssl_get_connection(ssl_conn);

    ch = SSL_get_ex_data(ssl_conn, ngx_http_acme_ssl_index);

    if (c->ssl->handshaked || ch == NULL) {
        return 0;
    }

    if (SSL_use_cert_and_key(ssl_conn, ch->cert, ch->key, NULL, 1) != 1) {
        ngx_ssl_error(NGX_LOG_ERR, c->log, 0,
                      "acme: cannot use the challenge certificate");
        return 0;
    }

    /* the CA needs only the handshake: closed once it is done */
    c->close = 1;

    return 1;
}


ngx_uint_t
ngx_http_acme_is_challenge_connection(ngx_connection_t *c)
{
    if (c->ssl == NULL || ngx_http_acme_ssl_index == -1) {
        return 0;
    }

    return SSL_get_ex_data(c->ssl->connection, ngx_http_acme_ssl_index)
           != NULL;
}
