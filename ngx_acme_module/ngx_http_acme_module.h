
/*
 * ngx_http_acme_module: automatic HTTPS inside nginx.
 *
 * Configuration structures shared by the module's files, and the functions
 * each file offers the others.
 */


#ifndef _NGX_HTTP_ACME_MODULE_H_INCLUDED_
#define _NGX_HTTP_ACME_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/evp.h>

#include "acme_dns.h"
#include "acme_err.h"
#include "acme_ident.h"
#include "acme_key.h"
#include "acme_store.h"


#define NGX_HTTP_ACME_DEFAULT_STATE_PATH  "/var/lib/nginx/acme/"
#define NGX_HTTP_ACME_DEFAULT_ZONE_NAME   "ngx_http_acme"
#define NGX_HTTP_ACME_DEFAULT_ZONE_SIZE   (256 * 1024)
#define NGX_HTTP_ACME_CHALLENGE_PREFIX    "/.well-known/acme-challenge/"


typedef struct ngx_http_acme_zone_s  ngx_http_acme_zone_t;


typedef struct {
    ngx_str_t                   name;

    ngx_str_t                   uri;             /* as written */
    char                       *directory_url;   /* resolved */
    ngx_array_t                 contacts;        /* char * */
    acme_keyspec_t              account_keyspec;
    char                       *account_key_file;
    char                       *challenges[5];   /* preference order */
    ngx_uint_t                  nchallenges;     /* 0: the core's order */
    acme_dns_config_t           dns;             /* with a DNS type */
    ngx_uint_t                  dns_cleanup;     /* its pool cleanup added */
    char                       *eab_kid;
    char                       *eab_key;         /* base64url HMAC key */
    char                       *preferred_chain;
    char                       *profile;
    ngx_flag_t                  profile_required;
    char                       *ca_file;
    ngx_flag_t                  verify;
    ngx_flag_t                  common_name_in_csr;
    char                       *state_path;
    ngx_uint_t                  state_path_line;
    ngx_flag_t                  state_path_off;
    ngx_flag_t                  accept_tos;

    ngx_uint_t                  store;           /* in amcf->stores */

    u_char                     *file;
    ngx_uint_t                  line;
} ngx_http_acme_issuer_t;


typedef struct {
    ngx_uint_t                  index;           /* in amcf->certs */

    ngx_http_core_srv_conf_t   *cscf;            /* NULL: stream, mail */
    ngx_array_t                 issuer_names;    /* ngx_str_t */
    ngx_uint_t                 *issuers;         /* in amcf->issuers */
    ngx_uint_t                  nissuers;
    ngx_array_t                *names;           /* ngx_str_t, explicit */
    acme_ident_t               *ids;
    ngx_uint_t                  nids;
    acme_keyspec_t              keyspec;
    char                       *profile;         /* profile=, NULL: the issuer's */
    char                       *name;            /* store name */
    ngx_uint_t                  store;
    unsigned                    on_demand:1;     /* a template: names come
                                                    from handshakes */

    u_char                     *file;
    ngx_uint_t                  line;
} ngx_http_acme_cert_t;


/* acme_on_demand: limits of on-demand certificates, for all servers */

typedef struct {
    char                       *ask;             /* URL, NULL: no ask */
    ngx_msec_t                  ask_timeout;
    ngx_uint_t                  max;             /* certificates */
    ngx_uint_t                  rate;            /* new orders a minute */
    time_t                      refuse_time;     /* negative cache */
    ngx_msec_t                  wait;            /* a first handshake */
    ngx_uint_t                  waiting;         /* connections held */
    time_t                      unseen;          /* not renewed after */
    ngx_flag_t                  fail_close;
} ngx_http_acme_od_conf_t;


#define NGX_HTTP_ACME_OD_ASK_TIMEOUT  5000
#define NGX_HTTP_ACME_OD_MAX          100
#define NGX_HTTP_ACME_OD_RATE         10
#define NGX_HTTP_ACME_OD_REFUSE_TIME  600
#define NGX_HTTP_ACME_OD_WAIT         30000
#define NGX_HTTP_ACME_OD_WAITING      64
#define NGX_HTTP_ACME_OD_UNSEEN       (30 * 86400)


typedef struct {
    ngx_array_t                 issuers;         /* ngx_http_acme_issuer_t */
    ngx_array_t                 certs;           /* ngx_http_acme_cert_t * */
    ngx_array_t                 stores;          /* char *, state paths */
    ngx_array_t                 od_certs;        /* ngx_http_acme_cert_t *,
                                                    on-demand templates */
    ngx_http_acme_od_conf_t     od;

    ngx_shm_zone_t             *shm_zone;
    ngx_shm_zone_t             *status_zone;     /* the status snapshot */
    ngx_str_t                   zone_name;
    size_t                      zone_size;

    char                       *storage;         /* Redis URL, NULL: files */
    char                       *storage_key;     /* AES-256-GCM key file */
    u_char                     *storage_file;
    ngx_uint_t                  storage_line;
    u_char                     *storage_key_file;
    ngx_uint_t                  storage_key_line;

    char                       *notify;          /* acme_notify PROGRAM */
    time_t                      notify_timeout;  /* 0: the core's default */
    time_t                      notify_expiring; /* 0: the core's default */

    ngx_resolver_t             *resolver;        /* http's, NULL: libcurl's */
    ngx_msec_t                  resolver_timeout;

    SSL_CTX                    *tls_alpn_ctx;    /* tls-alpn-01, private */

    ngx_uint_t                  enabled;
} ngx_http_acme_main_conf_t;


typedef struct {
    ngx_array_t                *certs;           /* ngx_http_acme_cert_t * */
    ngx_http_acme_cert_t       *od;              /* on_demand template */
    ngx_array_t                *od_names;        /* ngx_http_server_name_t,
                                                    kept past configuration */

    ngx_str_t                   fallback_cert;   /* "data:" PEM */
    ngx_str_t                   fallback_key;
    ngx_uint_t                  injected;        /* pushed into sscf */

    /*
     * per worker: several certificates of one key type (listed identifiers)
     * are chosen by SNI from this index, sorted by name
     */
    struct ngx_http_acme_sni_s *sni;
    ngx_uint_t                  nsni;

    /* per worker: the certificates installed in the server's own SSL_CTX */
    SSL_CTX                    *ctx;
    X509                       *ctx_last;        /* leaf installed last */
    unsigned                    ctx_installed:1;
    unsigned                    ctx_complete:1;  /* every certificate */
} ngx_http_acme_srv_conf_t;


/* a certificate is forced at most once per this, by default */
#define NGX_HTTP_ACME_RENEW_INTERVAL  600


#define NGX_HTTP_ACME_STATUS_JSON        0
#define NGX_HTTP_ACME_STATUS_PROMETHEUS  1


typedef struct {
    ngx_flag_t                  status;
    ngx_flag_t                  renew;           /* renew=on: POST ?renew */
    time_t                      renew_interval;  /* seconds */
    ngx_uint_t                  format;          /* NGX_HTTP_ACME_STATUS_* */
} ngx_http_acme_loc_conf_t;


/* per worker: the parsed copy of one managed certificate */

typedef struct {
    ngx_http_acme_cert_t       *conf;
    ngx_uint_t                  gen;             /* generation loaded */
    ngx_uint_t                  tried_gen;       /* generation that failed */
    ngx_msec_t                  retry_at;        /* 0: no failed load */
    ngx_msec_t                  retry_delay;
    X509                       *leaf;
    STACK_OF(X509)             *chain;           /* intermediates */
    EVP_PKEY                   *key;
    ngx_str_t                   cert_pem;        /* "data:" fullchain */
    ngx_str_t                   key_pem;         /* "data:" key, secret */
    time_t                      not_after;
    unsigned                    loaded:1;        /* on first need */
    unsigned                    dirty:1;         /* reloaded, not installed */
    unsigned                    fallback_logged:1;
    unsigned                    load_failed:1;
} ngx_http_acme_wcert_t;


extern ngx_module_t  ngx_http_acme_module;
extern ngx_module_t  ngx_http_ssl_module;


/* ngx_http_acme_module.c */
ngx_http_acme_main_conf_t *ngx_http_acme_get_main_conf(void);
ngx_http_acme_main_conf_t *ngx_http_acme_conf_main_conf(ngx_conf_t *cf);
ngx_http_acme_cert_t *ngx_http_acme_cert_parse(ngx_conf_t *cf);
ngx_int_t ngx_http_acme_cert_resolve(ngx_conf_t *cf,
    ngx_http_acme_main_conf_t *amcf, ngx_http_acme_cert_t *cert);
ngx_int_t ngx_http_acme_cert_conflict(ngx_conf_t *cf,
    ngx_http_acme_main_conf_t *amcf, ngx_http_acme_cert_t *cert);
void ngx_http_acme_strip_dot(ngx_str_t *name);

/* ngx_http_acme_dns.c */
char *ngx_http_acme_dns_directive(ngx_conf_t *cf, ngx_http_acme_issuer_t *iss,
    ngx_str_t *name, ngx_str_t *value, ngx_uint_t nargs);
char *ngx_http_acme_dns_check(ngx_conf_t *cf, ngx_http_acme_issuer_t *iss);

/* ngx_http_acme_state.c */
acme_store_t *ngx_http_acme_state_open(ngx_conf_t *cf,
    ngx_http_acme_issuer_t *iss);
ngx_int_t ngx_http_acme_state_add(ngx_http_acme_main_conf_t *amcf,
    ngx_http_acme_issuer_t *iss);
ngx_int_t ngx_http_acme_state_storage(ngx_conf_t *cf, char *url);
ngx_int_t ngx_http_acme_state_storage_key(ngx_conf_t *cf,
    ngx_http_acme_main_conf_t *amcf);
ngx_int_t ngx_http_acme_state_own(ngx_cycle_t *cycle,
    ngx_http_acme_main_conf_t *amcf);

/* ngx_http_acme_cert.c */
ngx_int_t ngx_http_acme_ssl_init(ngx_conf_t *cf);
char *ngx_http_acme_fallback_inject(ngx_conf_t *cf,
    ngx_http_acme_srv_conf_t *ascf, ngx_str_t *names, ngx_uint_t nnames);
ngx_int_t ngx_http_acme_fallback_make(ngx_conf_t *cf,
    ngx_http_acme_srv_conf_t *ascf, ngx_str_t *names, ngx_uint_t nnames);
int ngx_http_acme_cert_cb(ngx_ssl_conn_t *ssl_conn, void *arg);
ngx_int_t ngx_http_acme_certs_init_process(ngx_cycle_t *cycle);
void ngx_http_acme_certs_exit_process(ngx_cycle_t *cycle);
ngx_http_acme_wcert_t *ngx_http_acme_wcert(ngx_http_acme_cert_t *cert,
    ngx_log_t *log);
ngx_http_acme_wcert_t *ngx_http_acme_wcert_peek(ngx_http_acme_cert_t *cert);

ngx_int_t ngx_http_acme_od_cert(ngx_ssl_conn_t *ssl_conn,
    ngx_http_acme_srv_conf_t *ascf);

/* ngx_http_acme_ondemand.c: first handshakes held before TLS */
ngx_int_t ngx_http_acme_od_init_process(ngx_cycle_t *cycle);
ngx_uint_t ngx_http_acme_od_listed(ngx_http_core_srv_conf_t *cscf,
    u_char *name, size_t len);

/* ngx_http_acme_tls_alpn.c */
ngx_int_t ngx_http_acme_tls_alpn_init(ngx_conf_t *cf);
ngx_int_t ngx_http_acme_tls_alpn_hook(ngx_conf_t *cf,
    ngx_http_acme_main_conf_t *amcf, SSL_CTX *server_ctx);
void ngx_http_acme_tls_alpn_init_process(ngx_cycle_t *cycle);
void ngx_http_acme_tls_alpn_exit_process(ngx_cycle_t *cycle);
ngx_uint_t ngx_http_acme_is_challenge_connection(ngx_connection_t *c);

/* ngx_http_acme_runner.c */
ngx_int_t ngx_http_acme_runner_init_process(ngx_cycle_t *cycle);
void ngx_http_acme_runner_exit_process(ngx_cycle_t *cycle);
ngx_int_t ngx_http_acme_runner_add_path(ngx_cycle_t *cycle,
    ngx_http_acme_main_conf_t *amcf);

/* ngx_http_acme_challenge.c */
ngx_int_t ngx_http_acme_challenge_handler(ngx_http_request_t *r);

/* ngx_http_acme_status.c */
ngx_int_t ngx_http_acme_status_handler(ngx_http_request_t *r);

/* ngx_http_acme_variables.c */
ngx_int_t ngx_http_acme_add_variables(ngx_conf_t *cf);


#endif /* _NGX_HTTP_ACME_MODULE_H_INCLUDED_ */
