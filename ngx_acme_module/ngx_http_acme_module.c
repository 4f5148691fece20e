
/*
 * ngx_http_acme_module: directives, configuration create/merge and
 * validation, module hooks.
 *
 *   acme_issuer NAME { uri ...; contact ...; account_key ...;
 *                      challenge TYPE [TYPE...];
 *                      dns_update rfc2136|hook|acme-dns;
 *                      dns_tsig_key FILE; dns_hook PROGRAM [timeout=TIME];
 *                      dns_acme_dns ACCOUNTFILE URL;
 *                      dns_server HOST[:PORT]; dns_resolver HOST[:PORT];
 *                      dns_propagation_timeout TIME;
 *                      external_account_key KID data:KEY|FILE;
 *                      preferred_chain ...;
 *                      profile NAME [require]; ssl_trusted_certificate ...;
 *                      ssl_verify on|off; state_path DIR;
 *                      common_name_in_csr on|off;
 *                      accept_terms_of_service; }
 *   acme_shared_zone zone=NAME:SIZE;
 *   acme_certificate ISSUER [IDENTIFIERS...] [key=ALG] [fallback=I2[,I3]]
 *                    [profile=NAME];
 *   acme_status [renew=on|off] [renew_interval=TIME]
 *               [format=json|prometheus];
 *   acme_certificate ISSUER on_demand [key=ALG] [fallback=I2[,I3]];
 *   acme_on_demand [ask=URL] [ask_timeout=TIME] [max=N] [rate=N]
 *                  [refuse_time=TIME] [wait=TIME] [waiting=N]
 *                  [unseen=TIME] [fail=fallback|close];
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_acme_module.h"
#include "ngx_http_acme_zone.h"
#include "ngx_http_acme_status_snapshot.h"

#include "acme_directory.h"
#include "acme_exec.h"
#include "acme_ondemand.h"
#include "acme_store.h"
#include "acme_x509.h"


/* a CA that does not answer within this does not hold up "nginx -t" */
#define NGX_HTTP_ACME_TOS_CHECK_TIMEOUT  5000
#define NGX_HTTP_ACME_RESOLVER_TIMEOUT   30000   /* nginx's, nginx-acme's */


static ngx_int_t ngx_http_acme_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_acme_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_acme_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_acme_init_main_conf(ngx_conf_t *cf, void *conf);
static char *ngx_http_acme_storage(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_acme_storage_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static void *ngx_http_acme_create_srv_conf(ngx_conf_t *cf);
static void *ngx_http_acme_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_acme_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);

static char *ngx_http_acme_issuer_block(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_acme_issuer_directive(ngx_conf_t *cf,
    ngx_command_t *dummy, void *conf);
static char *ngx_http_acme_shared_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_acme_certificate(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_acme_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_acme_on_demand(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

static ngx_int_t ngx_http_acme_storage_key_check(ngx_cycle_t *cycle,
    ngx_http_acme_main_conf_t *amcf, ngx_core_conf_t *ccf);
static ngx_uint_t ngx_http_acme_has_scheme(ngx_str_t *v);
static ngx_int_t ngx_http_acme_cert_ids(ngx_conf_t *cf,
    ngx_http_acme_cert_t *cert);
static ngx_int_t ngx_http_acme_cert_wildcards(ngx_conf_t *cf,
    ngx_http_acme_cert_t *cert, ngx_http_acme_issuer_t *iss);
static ngx_int_t ngx_http_acme_cert_issuers(ngx_conf_t *cf,
    ngx_http_acme_main_conf_t *amcf, ngx_http_acme_cert_t *cert);
static void ngx_http_acme_cert_cleanup(void *data);
static ngx_int_t ngx_http_acme_cert_add_name(ngx_conf_t *cf,
    ngx_http_acme_cert_t *cert, ngx_str_t *name, acme_err_t *err);
static char *ngx_http_acme_notify(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_acme_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_acme_init_process(ngx_cycle_t *cycle);
static void ngx_http_acme_exit_process(ngx_cycle_t *cycle);


static ngx_command_t  ngx_http_acme_commands[] = {

    { ngx_string("acme_issuer"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_BLOCK|NGX_CONF_TAKE1,
      ngx_http_acme_issuer_block,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("acme_shared_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_acme_shared_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("acme_storage"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_acme_storage,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("acme_storage_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_acme_storage_key,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("acme_notify"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE123,
      ngx_http_acme_notify,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("acme_certificate"),
      NGX_HTTP_SRV_CONF|NGX_CONF_1MORE,
      ngx_http_acme_certificate,
      NGX_HTTP_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("acme_on_demand"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_ANY,
      ngx_http_acme_on_demand,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("acme_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS|NGX_CONF_TAKE123,
      ngx_http_acme_status,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_acme_module_ctx = {
    ngx_http_acme_preconfiguration,        /* preconfiguration */
    ngx_http_acme_postconfiguration,       /* postconfiguration */

    ngx_http_acme_create_main_conf,        /* create main configuration */
    ngx_http_acme_init_main_conf,          /* init main configuration */

    ngx_http_acme_create_srv_conf,         /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_acme_create_loc_conf,         /* create location configuration */
    ngx_http_acme_merge_loc_conf           /* merge location configuration */
};


ngx_module_t  ngx_http_acme_module = {
    NGX_MODULE_V1,
    &ngx_http_acme_module_ctx,             /* module context */
    ngx_http_acme_commands,                /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_acme_init_module,             /* init module */
    ngx_http_acme_init_process,            /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_acme_exit_process,            /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


ngx_http_acme_main_conf_t *
ngx_http_acme_get_main_conf(void)
{
    ngx_http_conf_ctx_t  *ctx;

    ctx = (ngx_http_conf_ctx_t *) ngx_get_conf(ngx_cycle->conf_ctx,
                                               ngx_http_module);
    if (ctx == NULL) {
        return NULL;
    }

    return ctx->main_conf[ngx_http_acme_module.ctx_index];
}


static ngx_int_t
ngx_http_acme_preconfiguration(ngx_conf_t *cf)
{
    return ngx_http_acme_add_variables(cf);
}


static void *
ngx_http_acme_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_acme_main_conf_t  *amcf;

    amcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_acme_main_conf_t));
    if (amcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&amcf->issuers, cf->pool, 2,
                       sizeof(ngx_http_acme_issuer_t))
        != NGX_OK
        || ngx_array_init(&amcf->certs, cf->pool, 4,
                          sizeof(ngx_http_acme_cert_t *))
           != NGX_OK
        || ngx_array_init(&amcf->stores, cf->pool, 2, sizeof(char *))
           != NGX_OK
        || ngx_array_init(&amcf->od_certs, cf->pool, 1,
                          sizeof(ngx_http_acme_cert_t *))
           != NGX_OK)
    {
        return NULL;
    }

    amcf->od.ask_timeout = NGX_HTTP_ACME_OD_ASK_TIMEOUT;
    amcf->od.max = NGX_HTTP_ACME_OD_MAX;
    amcf->od.rate = NGX_HTTP_ACME_OD_RATE;
    amcf->od.refuse_time = NGX_HTTP_ACME_OD_REFUSE_TIME;
    amcf->od.wait = NGX_HTTP_ACME_OD_WAIT;
    amcf->od.waiting = NGX_HTTP_ACME_OD_WAITING;
    amcf->od.unseen = NGX_HTTP_ACME_OD_UNSEEN;

    return amcf;
}


static void *
ngx_http_acme_create_srv_conf(ngx_conf_t *cf)
{
    ngx_http_acme_srv_conf_t  *ascf;

    ascf = ngx_pcalloc(cf->pool, sizeof(ngx_http_acme_srv_conf_t));
    if (ascf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     ascf->certs = NULL;
     *     ascf->fallback_cert = { 0, NULL };
     *     ascf->fallback_key = { 0, NULL };
     *     ascf->injected = 0;
     */

    return ascf;
}


static void *
ngx_http_acme_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_acme_loc_conf_t  *alcf;

    alcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_acme_loc_conf_t));
    if (alcf == NULL) {
        return NULL;
    }

    alcf->status = NGX_CONF_UNSET;
    alcf->renew = NGX_CONF_UNSET;
    alcf->renew_interval = NGX_CONF_UNSET;
    alcf->format = NGX_CONF_UNSET_UINT;

    return alcf;
}


static char *
ngx_http_acme_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_acme_loc_conf_t  *prev = parent;
    ngx_http_acme_loc_conf_t  *conf = child;

    ngx_conf_merge_value(conf->status, prev->status, 0);
    ngx_conf_merge_value(conf->renew, prev->renew, 0);
    ngx_conf_merge_sec_value(conf->renew_interval, prev->renew_interval,
                             NGX_HTTP_ACME_RENEW_INTERVAL);
    ngx_conf_merge_uint_value(conf->format, prev->format,
                              NGX_HTTP_ACME_STATUS_JSON);

    return NGX_CONF_OK;
}


/* helpers */

static char *
ngx_http_acme_cstr(ngx_pool_t *pool, ngx_str_t *s)
{
    char  *p;

    p = ngx_pnalloc(pool, s->len + 1);
    if (p == NULL) {
        return NULL;
    }

    ngx_memcpy(p, s->data, s->len);
    p[s->len] = '\0';

    return p;
}


static char *
ngx_http_acme_cstr_dup(ngx_pool_t *pool, const char *s)
{
    ngx_str_t  str;

    str.data = (u_char *) s;
    str.len = ngx_strlen(s);

    return ngx_http_acme_cstr(pool, &str);
}


/*
 * external_account_key KID data:KEY | FILE: the base64url HMAC key inline
 * (as nginx-acme takes it) or in a file. Errors name the directive and the
 * file, never the key: an argument that looks like a bare key is not shown.
 */

static ngx_int_t
ngx_http_acme_b64url_valid(u_char *p, size_t len)
{
    size_t  i;

    if (len == 0) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (!(p[i] >= 'a' && p[i] <= 'z') && !(p[i] >= 'A' && p[i] <= 'Z')
            && !(p[i] >= '0' && p[i] <= '9') && p[i] != '-' && p[i] != '_')
        {
            return 0;
        }
    }

    return 1;
}


/*
 * The CA roots for the issuer's own TLS: read and parsed at configuration
 * time (as Apache does), so that "nginx -t" refuses a file that is not PEM
 * instead of every later request to the CA failing.
 */

static ngx_int_t
ngx_http_acme_trusted_pem(ngx_conf_t *cf, ngx_http_acme_issuer_t *iss,
    ngx_str_t *path)
{
    u_char           *buf;
    size_t            size, got;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_err_t         e;
    acme_err_t        err;
    ngx_file_info_t   fi;
    STACK_OF(X509)   *chain;

    fd = ngx_open_file(path->data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "invalid \"ssl_trusted_certificate\" \"%V\" "
                           "in acme_issuer \"%V\": cannot open the file",
                           path, &iss->name);
        return NGX_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR || !ngx_is_file(&fi)
        || ngx_file_size(&fi) > 4 * 1024 * 1024)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"ssl_trusted_certificate\" \"%V\" "
                           "in acme_issuer \"%V\": not a regular file of "
                           "at most 4 MiB", path, &iss->name);
        ngx_close_file(fd);
        return NGX_ERROR;
    }

    size = (size_t) ngx_file_size(&fi);

    buf = ngx_pnalloc(cf->temp_pool, size + 1);
    if (buf == NULL) {
        ngx_close_file(fd);
        return NGX_ERROR;
    }

    for (got = 0; got < size; got += n) {
        n = read(fd, buf + got, size - got);
        if (n <= 0) {
            e = ngx_errno;
            ngx_close_file(fd);
            ngx_conf_log_error(NGX_LOG_EMERG, cf, n < 0 ? e : 0,
                               "invalid \"ssl_trusted_certificate\" \"%V\" "
                               "in acme_issuer \"%V\": cannot read the file",
                               path, &iss->name);
            return NGX_ERROR;
        }
    }

    ngx_close_file(fd);

    chain = NULL;
    if (acme_pem_chain_parse((char *) buf, size, &chain, &err) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"ssl_trusted_certificate\" \"%V\" "
                           "in acme_issuer \"%V\": no PEM certificates: %s",
                           path, &iss->name, err.msg);
        return NGX_ERROR;
    }

    acme_chain_free(chain);

    return NGX_OK;
}


static char *
ngx_http_acme_eab_key(ngx_conf_t *cf, ngx_http_acme_issuer_t *iss,
    ngx_str_t *arg)
{
    u_char           *p, *last, *buf;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_str_t         path, src, dst;
    ngx_err_t         e;
    ngx_file_info_t   fi;

    if (arg->len >= 5 && ngx_strncmp(arg->data, "data:", 5) == 0) {
        p = arg->data + 5;
        last = arg->data + arg->len;
        buf = NULL;
        n = 0;
        ngx_str_null(&path);
        goto decode;
    }

    path = *arg;
    if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    fd = ngx_open_file(path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        e = ngx_errno;

        if (ngx_strlchr(arg->data, arg->data + arg->len, '/') == NULL
            && arg->len >= 16
            && ngx_http_acme_b64url_valid(arg->data, arg->len))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, e,
                               "\"external_account_key\" in acme_issuer "
                               "\"%V\": no such file, and a key given "
                               "inline needs the \"data:\" prefix (the "
                               "value is not shown)", &iss->name);
            return NGX_CONF_ERROR;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, e,
                           "\"external_account_key\" in acme_issuer \"%V\": "
                           "cannot open file \"%V\"", &iss->name, &path);
        return NGX_CONF_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR || !ngx_is_file(&fi)
        || ngx_file_size(&fi) > 4096)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"external_account_key\" in acme_issuer \"%V\": "
                           "\"%V\" is not a small regular file",
                           &iss->name, &path);
        ngx_close_file(fd);
        return NGX_CONF_ERROR;
    }

    buf = ngx_pnalloc(cf->pool, 4097);
    if (buf == NULL) {
        ngx_close_file(fd);
        return NGX_CONF_ERROR;
    }

    n = read(fd, buf, 4096);
    e = ngx_errno;
    ngx_close_file(fd);

    if (n < 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, e,
                           "\"external_account_key\" in acme_issuer \"%V\": "
                           "cannot read \"%V\"", &iss->name, &path);
        return NGX_CONF_ERROR;
    }

    p = buf;
    last = buf + n;

decode:

    while (last > p && (last[-1] == '\n' || last[-1] == '\r'
                        || last[-1] == ' ' || last[-1] == '\t'))
    {
        last--;
    }

    while (p < last && (*p == ' ' || *p == '\t' || *p == '\n'
                        || *p == '\r'))
    {
        p++;
    }

    /* the core decodes unpadded base64url */

    while (last > p && last[-1] == '=') {
        last--;
    }

    src.data = p;
    src.len = last - p;

    dst.len = 0;
    dst.data = ngx_pnalloc(cf->temp_pool, ngx_base64_decoded_length(src.len)
                                          + 1);
    if (dst.data == NULL) {
        return NGX_CONF_ERROR;
    }

    if (!ngx_http_acme_b64url_valid(src.data, src.len)
        || ngx_decode_base64url(&dst, &src) != NGX_OK
        || dst.len == 0)
    {
        ngx_explicit_memzero(dst.data, ngx_base64_decoded_length(src.len));

        if (buf != NULL) {
            ngx_explicit_memzero(buf, n);
        }

        if (path.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid \"external_account_key\" in "
                               "acme_issuer \"%V\": the inline key (data:) "
                               "is not base64url (the value is not shown)",
                               &iss->name);

        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid \"external_account_key\" file "
                               "\"%V\" in acme_issuer \"%V\": expected a "
                               "base64url HMAC key", &path, &iss->name);
        }

        return NGX_CONF_ERROR;
    }

    ngx_explicit_memzero(dst.data, dst.len);

    iss->eab_key = ngx_pnalloc(cf->pool, src.len + 1);
    if (iss->eab_key == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(iss->eab_key, src.data, src.len);
    iss->eab_key[src.len] = '\0';

    if (buf != NULL) {
        ngx_explicit_memzero(buf, n);
    }

    return NGX_CONF_OK;
}


/* acme_issuer NAME { ... } */

/*
 * A CA with terms of service needs accept_terms_of_service before it lets
 * us register: say so at "nginx -t" rather than at the first order. An
 * account already in the store has agreed; a CA we cannot reach now is
 * checked again at the first order (warning only).
 */

static char *
ngx_http_acme_check_tos(ngx_conf_t *cf, ngx_http_acme_issuer_t *iss,
    acme_store_t *st)
{
    int                rc;
    char              *ca_id, *json;
    acme_err_t         aerr;
    acme_directory_t   dir;

    if (iss->accept_tos) {
        return NGX_CONF_OK;
    }

    ca_id = acme_ca_id(iss->directory_url);
    if (ca_id == NULL) {
        return NGX_CONF_ERROR;
    }

    json = NULL;
    rc = acme_store_account_load(st, ca_id, NULL, NULL, &json, &aerr);
    free(json);
    free(ca_id);

    if (rc == 0) {
        return NGX_CONF_OK;
    }

    if (acme_directory_fetch(iss->directory_url, iss->ca_file, iss->verify,
                             NGX_HTTP_ACME_TOS_CHECK_TIMEOUT, &dir, &aerr)
        != 0)
    {
        ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                      "acme_issuer \"%V\": cannot check whether the CA has "
                      "terms of service to accept (checked again at the "
                      "first order): %s in %s:%ui", &iss->name, aerr.msg,
                      iss->file, iss->line);
        return NGX_CONF_OK;
    }

    if (dir.terms_of_service == NULL) {
        acme_directory_free(&dir);
        return NGX_CONF_OK;
    }

    ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                  "acme_issuer \"%V\": the CA at \"%V\" has terms of "
                  "service (%s): read them and add "
                  "\"accept_terms_of_service;\" to the acme_issuer block "
                  "in %s:%ui", &iss->name, &iss->uri, dir.terms_of_service,
                  iss->file, iss->line);

    acme_directory_free(&dir);

    return NGX_CONF_ERROR;
}


static char *
ngx_http_acme_issuer_block(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_acme_main_conf_t *amcf = conf;

    char                    *rv;
    ngx_str_t               *value;
    ngx_uint_t               i;
    ngx_conf_t               save;
    acme_store_t            *st;
    ngx_http_acme_issuer_t  *iss;

    value = cf->args->elts;

    iss = amcf->issuers.elts;
    for (i = 0; i < amcf->issuers.nelts; i++) {
        if (iss[i].name.len == value[1].len
            && ngx_strncmp(iss[i].name.data, value[1].data, value[1].len)
               == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate acme_issuer \"%V\"", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    if (value[1].len == 0 || value[1].len > 64) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid acme_issuer name \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    for (i = 0; i < value[1].len; i++) {
        u_char ch = value[1].data[i];

        if (!(ch >= 'a' && ch <= 'z') && !(ch >= 'A' && ch <= 'Z')
            && !(ch >= '0' && ch <= '9') && ch != '-' && ch != '_'
            && ch != '.')
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid acme_issuer name \"%V\"", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    iss = ngx_array_push(&amcf->issuers);
    if (iss == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(iss, sizeof(ngx_http_acme_issuer_t));

    iss->name = value[1];
    iss->verify = 1;
    iss->account_keyspec = ACME_KEYSPEC_DEFAULT;
    iss->file = cf->conf_file->file.name.data;
    iss->line = cf->conf_file->line;

    if (ngx_array_init(&iss->contacts, cf->pool, 1, sizeof(char *))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    save = *cf;
    cf->handler = ngx_http_acme_issuer_directive;
    cf->handler_conf = (char *) iss;

    rv = ngx_conf_parse(cf, NULL);

    *cf = save;

    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (iss->directory_url == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "no \"uri\" is defined in acme_issuer \"%V\" in %s:%ui",
                      &iss->name, iss->file, iss->line);
        return NGX_CONF_ERROR;
    }

    if (ngx_http_acme_dns_check(cf, iss) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    st = ngx_http_acme_state_open(cf, iss);
    if (st == NULL) {
        return NGX_CONF_ERROR;
    }

    rv = ngx_http_acme_check_tos(cf, iss, st);

    acme_store_close(st);

    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (ngx_http_acme_state_add(amcf, iss) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_acme_issuer_directive(ngx_conf_t *cf, ngx_command_t *dummy,
    void *conf)
{
    ngx_http_acme_issuer_t  *iss = conf;

    char         *s, **c, *url;
    ngx_str_t    *value, *name, key;
    ngx_uint_t    i, nargs;
    acme_err_t    err;
    acme_keyspec_t  ks;
    ngx_file_info_t fi;

    value = cf->args->elts;
    name = &value[0];
    nargs = cf->args->nelts - 1;

#define ngx_acme_is(n)                                                        \
    (name->len == sizeof(n) - 1 && ngx_strncmp(name->data, n, name->len) == 0)

#define ngx_acme_nargs(lo, hi)                                                \
    if ((ngx_int_t) nargs < lo || (ngx_int_t) nargs > hi) {                   \
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,                              \
                           "invalid number of arguments in \"%V\" "           \
                           "directive of acme_issuer \"%V\"",                 \
                           name, &iss->name);                                 \
        return NGX_CONF_ERROR;                                                \
    }

    if (ngx_acme_is("uri")) {
        ngx_acme_nargs(1, 1);

        s = ngx_http_acme_cstr(cf->pool, &value[1]);
        if (s == NULL) {
            return NGX_CONF_ERROR;
        }

        url = acme_ca_resolve(s, &err);
        if (url == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid \"uri\" \"%V\" in acme_issuer "
                               "\"%V\": %s", &value[1], &iss->name, err.msg);
            return NGX_CONF_ERROR;
        }

        iss->uri = value[1];
        iss->directory_url = ngx_http_acme_cstr_dup(cf->pool, url);
        free(url);

        return iss->directory_url ? NGX_CONF_OK : NGX_CONF_ERROR;
    }

    if (ngx_acme_is("contact")) {
        ngx_acme_nargs(1, 16);

        for (i = 1; i <= nargs; i++) {

            /* an e-mail address (the core adds "mailto:") or any URL */

            if (value[i].len == 0 || value[i].len > 256
                || (ngx_strlchr(value[i].data, value[i].data + value[i].len,
                                '@') == NULL
                    && !ngx_http_acme_has_scheme(&value[i])))
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid \"contact\" \"%V\" in "
                                   "acme_issuer \"%V\"", &value[i],
                                   &iss->name);
                return NGX_CONF_ERROR;
            }

            c = ngx_array_push(&iss->contacts);
            if (c == NULL) {
                return NGX_CONF_ERROR;
            }

            *c = ngx_http_acme_cstr(cf->pool, &value[i]);
            if (*c == NULL) {
                return NGX_CONF_ERROR;
            }
        }

        return NGX_CONF_OK;
    }

    if (ngx_acme_is("account_key")) {
        ngx_acme_nargs(1, 1);

        s = ngx_http_acme_cstr(cf->pool, &value[1]);
        if (s == NULL) {
            return NGX_CONF_ERROR;
        }

        if (acme_keyspec_parse(s, &ks, &err) == 0) {
            iss->account_keyspec = ks;
            return NGX_CONF_OK;
        }

        /* as in nginx-acme, what is no key type is a file name */

        if (ngx_strchr(s, ':') != NULL
            || ngx_strncasecmp((u_char *) s, (u_char *) "ec", 2) == 0
            || ngx_strncasecmp((u_char *) s, (u_char *) "rsa", 3) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid \"account_key\" \"%V\" in "
                               "acme_issuer \"%V\": %s", &value[1],
                               &iss->name, err.msg);
            return NGX_CONF_ERROR;
        }

        key = value[1];
        if (ngx_conf_full_name(cf->cycle, &key, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        if (ngx_file_info(key.data, &fi) == NGX_FILE_ERROR
            || !ngx_is_file(&fi))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               "invalid \"account_key\" \"%V\" in "
                               "acme_issuer \"%V\": not a key type, and "
                               "cannot load it as a key file",
                               &value[1], &iss->name);
            return NGX_CONF_ERROR;
        }

        iss->account_key_file = (char *) key.data;

        return NGX_CONF_OK;
    }

    if (ngx_acme_is("challenge")) {
        ngx_acme_nargs(1, 5);

        /* several: in order of preference, per identifier (a wildcard
         * takes the first DNS type) */

        iss->nchallenges = 0;

        for (i = 1; i <= nargs; i++) {
            if ((value[i].len == 7
                 && ngx_strncmp(value[i].data, "http-01", 7) == 0)
                || (value[i].len == 4
                    && ngx_strncmp(value[i].data, "http", 4) == 0))
            {
                s = "http-01";

            } else if ((value[i].len == 11
                        && ngx_strncmp(value[i].data, "tls-alpn-01", 11)
                           == 0)
                       || (value[i].len == 8
                           && ngx_strncmp(value[i].data, "tls-alpn", 8)
                              == 0))
            {
                s = "tls-alpn-01";

            } else if ((value[i].len == 6
                        && ngx_strncmp(value[i].data, "dns-01", 6) == 0)
                       || (value[i].len == 3
                           && ngx_strncmp(value[i].data, "dns", 3) == 0))
            {
                s = "dns-01";

            } else if (value[i].len == 14
                       && ngx_strncmp(value[i].data, "dns-account-01", 14)
                          == 0)
            {
                s = "dns-account-01";

            } else if (value[i].len == 14
                       && ngx_strncmp(value[i].data, "dns-persist-01", 14)
                          == 0)
            {
                s = "dns-persist-01";

            } else {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid \"challenge\" \"%V\" in "
                                   "acme_issuer \"%V\": unsupported "
                                   "challenge, use http-01, tls-alpn-01, "
                                   "dns-01, dns-account-01 or "
                                   "dns-persist-01",
                                   &value[i], &iss->name);
                return NGX_CONF_ERROR;
            }

            iss->challenges[iss->nchallenges++] = s;
        }

        return NGX_CONF_OK;
    }

    if (name->len > 4 && ngx_strncmp(name->data, "dns_", 4) == 0) {
        return ngx_http_acme_dns_directive(cf, iss, name, value, nargs);
    }

    if (ngx_acme_is("external_account_key")) {
        ngx_acme_nargs(2, 2);

        iss->eab_kid = ngx_http_acme_cstr(cf->pool, &value[1]);
        if (iss->eab_kid == NULL) {
            return NGX_CONF_ERROR;
        }

        return ngx_http_acme_eab_key(cf, iss, &value[2]);
    }

    if (ngx_acme_is("preferred_chain")) {
        ngx_acme_nargs(1, 1);

        iss->preferred_chain = ngx_http_acme_cstr(cf->pool, &value[1]);

        return iss->preferred_chain ? NGX_CONF_OK : NGX_CONF_ERROR;
    }

    if (ngx_acme_is("profile")) {
        ngx_acme_nargs(1, 2);

        if (nargs == 2) {
            if (value[2].len != 7
                || ngx_strncmp(value[2].data, "require", 7) != 0)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid \"profile\" parameter \"%V\" in "
                                   "acme_issuer \"%V\"", &value[2],
                                   &iss->name);
                return NGX_CONF_ERROR;
            }

            iss->profile_required = 1;
        }

        iss->profile = ngx_http_acme_cstr(cf->pool, &value[1]);

        return iss->profile ? NGX_CONF_OK : NGX_CONF_ERROR;
    }

    if (ngx_acme_is("ssl_trusted_certificate")) {
        ngx_acme_nargs(1, 1);

        key = value[1];
        if (ngx_conf_full_name(cf->cycle, &key, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        if (ngx_http_acme_trusted_pem(cf, iss, &key) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        iss->ca_file = (char *) key.data;

        return NGX_CONF_OK;
    }

    if (ngx_acme_is("ssl_verify")) {
        ngx_acme_nargs(1, 1);

        if (value[1].len == 2 && ngx_strncmp(value[1].data, "on", 2) == 0) {
            iss->verify = 1;
            return NGX_CONF_OK;
        }

        if (value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0) {
            iss->verify = 0;
            ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                               "acme_issuer \"%V\": \"ssl_verify off\": the "
                               "ACME server's certificate is not verified",
                               &iss->name);
            return NGX_CONF_OK;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"ssl_verify\" \"%V\" in acme_issuer "
                           "\"%V\": use on or off", &value[1], &iss->name);
        return NGX_CONF_ERROR;
    }

    if (ngx_acme_is("common_name_in_csr")) {
        ngx_acme_nargs(1, 1);

        /* off (nginx-acme's default): the names only in subjectAltName */

        if (value[1].len == 2 && ngx_strncmp(value[1].data, "on", 2) == 0) {
            iss->common_name_in_csr = 1;
            return NGX_CONF_OK;
        }

        if (value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0) {
            iss->common_name_in_csr = 0;
            return NGX_CONF_OK;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"common_name_in_csr\" \"%V\" in "
                           "acme_issuer \"%V\": use on or off", &value[1],
                           &iss->name);
        return NGX_CONF_ERROR;
    }

    if (ngx_acme_is("state_path")) {
        ngx_acme_nargs(1, 1);

        if (value[1].len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid \"state_path\" \"%V\" in acme_issuer "
                               "\"%V\": a directory is required", &value[1],
                               &iss->name);
            return NGX_CONF_ERROR;
        }

        /* nginx-acme's "off": the default directory, said in state_open */

        if (value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0) {
            iss->state_path = NULL;
            iss->state_path_off = 1;
            iss->state_path_line = cf->conf_file->line;
            return NGX_CONF_OK;
        }

        key = value[1];
        if (ngx_conf_full_name(cf->cycle, &key, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        iss->state_path = (char *) key.data;
        iss->state_path_line = cf->conf_file->line;

        return NGX_CONF_OK;
    }

    if (ngx_acme_is("accept_terms_of_service")) {
        ngx_acme_nargs(0, 0);

        iss->accept_tos = 1;

        return NGX_CONF_OK;
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "unknown directive \"%V\" in acme_issuer \"%V\"",
                       name, &iss->name);
    return NGX_CONF_ERROR;

#undef ngx_acme_is
#undef ngx_acme_nargs
}


/* acme_shared_zone zone=NAME:SIZE */

static char *
ngx_http_acme_shared_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_acme_main_conf_t *amcf = conf;

    u_char     *p;
    ssize_t     size;
    ngx_str_t  *value, name, s;

    if (amcf->zone_name.len) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strncmp(value[1].data, "zone=", 5) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\": \"acme_shared_zone\" "
                           "must have \"zone\" parameter (zone=NAME:SIZE)",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    name.data = value[1].data + 5;

    p = (u_char *) ngx_strchr(name.data, ':');
    if (p == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone size in \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    name.len = p - name.data;

    s.data = p + 1;
    s.len = value[1].data + value[1].len - s.data;

    size = ngx_parse_size(&s);

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone name in \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (size == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone size \"%V\" in \"%V\"",
                           &s, &value[1]);
        return NGX_CONF_ERROR;
    }

    if (size < (ssize_t) (8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is too small", &value[1]);
        return NGX_CONF_ERROR;
    }

    amcf->zone_name = name;
    amcf->zone_size = size;

    return NGX_CONF_OK;
}


/*
 * acme_storage redis://... [prefix=NAME]: the shared store. Checked here
 * without connecting (ACME_STORE_LAZY), so nginx -t works with Redis down.
 */

static char *
ngx_http_acme_storage(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_acme_main_conf_t *amcf = conf;

    char          *url, *shown;
    size_t         len;
    ngx_str_t     *value;

    if (amcf->storage) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strncmp(value[1].data, "redis://", 8) != 0
        && ngx_strncmp(value[1].data, "rediss://", 9) != 0)
    {
        /* the value may hold a password: shown without it */
        shown = acme_store_url_redact((char *) value[1].data);
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"acme_storage\" \"%s\": expected "
                           "redis://[user:password@]host[:port][/db] or "
                           "rediss://...", shown ? shown : "(redacted)");
        free(shown);
        return NGX_CONF_ERROR;
    }

    len = value[1].len + 1;

    if (cf->args->nelts == 3) {
        if (ngx_strncmp(value[2].data, "prefix=", 7) != 0
            || value[2].len == 7)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"acme_storage\": invalid parameter \"%V\", "
                               "expected prefix=NAME", &value[2]);
            return NGX_CONF_ERROR;
        }

        len += value[2].len + 1;
    }

    url = ngx_pnalloc(cf->pool, len);
    if (url == NULL) {
        return NGX_CONF_ERROR;
    }

    if (cf->args->nelts == 3) {
        ngx_sprintf((u_char *) url, "%V%c%V%Z", &value[1],
                    ngx_strchr(value[1].data, '?') ? '&' : '?', &value[2]);

    } else {
        ngx_sprintf((u_char *) url, "%V%Z", &value[1]);
    }

    if (ngx_http_acme_state_storage(cf, url) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    amcf->storage = url;
    amcf->storage_file = cf->conf_file->file.name.data;
    amcf->storage_line = cf->conf_file->line;

    return NGX_CONF_OK;
}


/* acme_storage_key FILE: checked with the URL in init_main_conf */

static char *
ngx_http_acme_storage_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_acme_main_conf_t *amcf = conf;

    ngx_str_t  *value, file;

    if (amcf->storage_key) {
        return "is duplicate";
    }

    value = cf->args->elts;
    file = value[1];

    if (ngx_conf_full_name(cf->cycle, &file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    amcf->storage_key = ngx_pnalloc(cf->pool, file.len + 1);
    if (amcf->storage_key == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_sprintf((u_char *) amcf->storage_key, "%V%Z", &file);

    amcf->storage_key_file = cf->conf_file->file.name.data;
    amcf->storage_key_line = cf->conf_file->line;

    return NGX_CONF_OK;
}


/* acme_notify PROGRAM [timeout=TIME] [expiring=TIME] */

static char *
ngx_http_acme_notify(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_acme_main_conf_t *amcf = conf;

    time_t       t;
    ngx_str_t   *value, v;
    ngx_uint_t   i;
    acme_err_t   err;

    if (amcf->notify) {
        return "is duplicate";
    }

    value = cf->args->elts;

    amcf->notify = ngx_pnalloc(cf->pool, value[1].len + 1);
    if (amcf->notify == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_sprintf((u_char *) amcf->notify, "%V%Z", &value[1]);

    if (acme_exec_check("the notification program", amcf->notify, &err)
        != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"acme_notify\": %s",
                           err.msg);
        return NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "timeout=", 8) == 0) {
            v.data = value[i].data + 8;
            v.len = value[i].len - 8;

            t = ngx_parse_time(&v, 1);
            if (t == (time_t) NGX_ERROR || t < 1) {
                goto invalid;
            }

            amcf->notify_timeout = t;
            continue;
        }

        if (ngx_strncmp(value[i].data, "expiring=", 9) == 0) {
            v.data = value[i].data + 9;
            v.len = value[i].len - 9;

            t = ngx_parse_time(&v, 1);
            if (t == (time_t) NGX_ERROR || t < 1) {
                goto invalid;
            }

            amcf->notify_expiring = t;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"acme_notify\": invalid parameter \"%V\": "
                           "timeout=TIME or expiring=TIME expected",
                           &value[i]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "\"acme_notify\": invalid value \"%V\": "
                       "a time of at least 1s expected", &value[i]);
    return NGX_CONF_ERROR;
}


/*
 * acme_certificate ISSUER [IDENTIFIERS...] [key=ALG] [fallback=I2[,I3]]
 *                  [profile=NAME]
 */

static char *
ngx_http_acme_certificate(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_acme_srv_conf_t *ascf = conf;

    ngx_str_t                   *n, fb[8];
    ngx_uint_t                   i, nfb;
    ngx_http_acme_cert_t        *cert, **cp;
    ngx_http_core_srv_conf_t    *cscf;
    ngx_http_server_name_t      *sn;
    ngx_http_acme_main_conf_t   *amcf;

    amcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_acme_module);
    cscf = ngx_http_conf_get_module_srv_conf(cf, ngx_http_core_module);

    cert = ngx_http_acme_cert_parse(cf);
    if (cert == NULL) {
        return NGX_CONF_ERROR;
    }

    cert->cscf = cscf;

    if (cert->on_demand) {
        if (cert->names) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"acme_certificate ... on_demand\" takes "
                               "its names from handshakes: remove the "
                               "identifiers, server_name says which names "
                               "are allowed");
            return NGX_CONF_ERROR;
        }

        if (ascf->od || ascf->certs) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"acme_certificate ... on_demand\" must be "
                               "the server's only \"acme_certificate\"");
            return NGX_CONF_ERROR;
        }

        if (amcf->od_certs.nelts == 255) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "too many on-demand servers (255 at most)");
            return NGX_CONF_ERROR;
        }

        ascf->od = cert;

        cp = ngx_array_push(&amcf->od_certs);
        if (cp == NULL) {
            return NGX_CONF_ERROR;
        }

        cert->index = amcf->od_certs.nelts - 1;
        *cp = cert;

        return ngx_http_acme_fallback_inject(cf, ascf, NULL, 0);
    }

    if (ascf->od) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"acme_certificate ... on_demand\" must be "
                           "the server's only \"acme_certificate\"");
        return NGX_CONF_ERROR;
    }

    if (ascf->certs == NULL) {
        ascf->certs = ngx_array_create(cf->pool, 2,
                                       sizeof(ngx_http_acme_cert_t *));
        if (ascf->certs == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    cp = ascf->certs->elts;
    for (i = 0; i < ascf->certs->nelts; i++) {
        if (cp[i]->keyspec.alg == cert->keyspec.alg
            && cp[i]->names == NULL && cert->names == NULL)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate \"acme_certificate\" with the same "
                               "key type in this server");
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

    /* the names the fallback certificate shows: what is known so far */

    nfb = 0;

    if (cert->names) {
        n = cert->names->elts;
        for (i = 0; i < cert->names->nelts && nfb < 8; i++) {
            fb[nfb] = n[i];
            ngx_http_acme_strip_dot(&fb[nfb++]);
        }

    } else {
        sn = cscf->server_names.elts;
        for (i = 0; i < cscf->server_names.nelts && nfb < 8; i++) {
#if (NGX_PCRE)
            if (sn[i].regex) {
                continue;
            }
#endif
            if (sn[i].name.len < 2 || sn[i].name.data[0] == '~'
                || ngx_strlchr(sn[i].name.data,
                               sn[i].name.data + sn[i].name.len, '*')
                   != NULL)
            {
                continue;
            }

            fb[nfb] = sn[i].name;
            ngx_http_acme_strip_dot(&fb[nfb++]);
        }
    }

    return ngx_http_acme_fallback_inject(cf, ascf, fb, nfb);
}


/*
 * The directive's arguments, in any context (http, stream, mail): the
 * caller sets the server it belongs to and adds it to amcf->certs.
 */

ngx_http_acme_cert_t *
ngx_http_acme_cert_parse(ngx_conf_t *cf)
{
    char                        *s;
    u_char                      *p, *last, *start;
    ngx_str_t                   *value, *n;
    ngx_uint_t                   i;
    acme_err_t                   err;
    acme_ident_t                 id;
    ngx_http_acme_cert_t        *cert;

    value = cf->args->elts;

    cert = ngx_pcalloc(cf->pool, sizeof(ngx_http_acme_cert_t));
    if (cert == NULL) {
        return NULL;
    }

    cert->keyspec = ACME_KEYSPEC_DEFAULT;
    cert->file = cf->conf_file->file.name.data;
    cert->line = cf->conf_file->line;

    if (ngx_array_init(&cert->issuer_names, cf->pool, 2, sizeof(ngx_str_t))
        != NGX_OK)
    {
        return NULL;
    }

    n = ngx_array_push(&cert->issuer_names);
    if (n == NULL) {
        return NULL;
    }

    *n = value[1];

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strcmp(value[i].data, "on_demand") == 0) {
            if (cf->module_type != NGX_HTTP_MODULE) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"on_demand\" is for http servers "
                                   "only");
                return NULL;
            }

            cert->on_demand = 1;
            continue;
        }

        if (ngx_strncmp(value[i].data, "key=", 4) == 0) {
            s = ngx_http_acme_cstr(cf->pool, &value[i]);
            if (s == NULL) {
                return NULL;
            }

            if (acme_keyspec_parse(s + 4, &cert->keyspec, &err) != 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid key type \"%V\": %s",
                                   &value[i], err.msg);
                return NULL;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "profile=", 8) == 0) {
            start = value[i].data + 8;
            last = value[i].data + value[i].len;

            if (start == last || last - start > 64) {
                goto bad_profile;
            }

            for (p = start; p < last; p++) {
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
                      || (*p >= '0' && *p <= '9') || *p == '.' || *p == '_'
                      || *p == '-'))
                {
                    goto bad_profile;
                }
            }

            cert->profile = ngx_pnalloc(cf->pool, last - start + 1);
            if (cert->profile == NULL) {
                return NULL;
            }

            *ngx_cpymem(cert->profile, start, last - start) = '\0';

            continue;

        bad_profile:

            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid \"%V\": expected profile=NAME "
                               "(letters, digits, \".\", \"_\", \"-\")",
                               &value[i]);
            return NULL;
        }

        if (ngx_strncmp(value[i].data, "fallback=", 9) == 0) {
            start = value[i].data + 9;
            last = value[i].data + value[i].len;

            if (start == last) {
                goto bad_fallback;
            }

            while (start < last) {
                p = ngx_strlchr(start, last, ',');
                if (p == NULL) {
                    p = last;
                }

                if (p == start) {
                    goto bad_fallback;
                }

                n = ngx_array_push(&cert->issuer_names);
                if (n == NULL) {
                    return NULL;
                }

                n->data = start;
                n->len = p - start;

                start = p + 1;
            }

            continue;

        bad_fallback:

            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid \"%V\": expected "
                               "fallback=ISSUER[,ISSUER...]", &value[i]);
            return NULL;
        }

        /* ".example.org": checked as "www.example.org", see cert_ids */

        s = ngx_pnalloc(cf->temp_pool, value[i].len + sizeof("www"));
        if (s == NULL) {
            return NULL;
        }

        ngx_sprintf((u_char *) s, "%s%V%Z",
                    value[i].data[0] == '.' ? "www" : "", &value[i]);

        if (acme_ident_parse(s, &id, &err) != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid identifier \"%V\": %s",
                               &value[i], err.msg);
            return NULL;
        }

        if (value[i].data[0] == '.' && id.type != ACME_IDENT_DNS) {
            acme_ident_free(&id);
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid identifier \"%V\": a leading dot "
                               "needs a DNS name after it", &value[i]);
            return NULL;
        }

        /* a wildcard needs dns-01 in every issuer: checked once they are
         * known (init_main_conf) */

        acme_ident_free(&id);

        if (cert->names == NULL) {
            cert->names = ngx_array_create(cf->pool, 2, sizeof(ngx_str_t));
            if (cert->names == NULL) {
                return NULL;
            }
        }

        n = ngx_array_push(cert->names);
        if (n == NULL) {
            return NULL;
        }

        *n = value[i];
    }

    return cert;
}


/*
 * acme_on_demand [ask=URL] [ask_timeout=TIME] [max=N] [rate=N]
 *                [refuse_time=TIME] [wait=TIME] [waiting=N] [unseen=TIME]
 *                [fail=fallback|close];
 */

static char *
ngx_http_acme_on_demand(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_acme_main_conf_t *amcf = conf;

    char        *s;
    time_t       t;
    ngx_int_t    n;
    ngx_str_t   *value, v;
    ngx_uint_t   i;
    ngx_msec_t   ms;

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "ask=", 4) == 0) {
            s = ngx_http_acme_cstr(cf->pool, &value[i]);
            if (s == NULL) {
                return NGX_CONF_ERROR;
            }

            s += 4;

            if (ngx_strncmp(s, "http://", 7) != 0
                && ngx_strncmp(s, "https://", 8) != 0)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid \"%V\": the ask endpoint must "
                                   "be an http:// or https:// URL",
                                   &value[i]);
                return NGX_CONF_ERROR;
            }

            amcf->od.ask = s;
            continue;
        }

        if (ngx_strncmp(value[i].data, "fail=", 5) == 0) {
            if (ngx_strcmp(value[i].data + 5, "close") == 0) {
                amcf->od.fail_close = 1;

            } else if (ngx_strcmp(value[i].data + 5, "fallback") == 0) {
                amcf->od.fail_close = 0;

            } else {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "max=", 4) == 0
            || ngx_strncmp(value[i].data, "rate=", 5) == 0
            || ngx_strncmp(value[i].data, "waiting=", 8) == 0)
        {
            v.data = (u_char *) ngx_strchr(value[i].data, '=') + 1;
            v.len = value[i].data + value[i].len - v.data;

            n = ngx_atoi(v.data, v.len);
            if (n <= 0) {
                goto invalid;
            }

            if (value[i].data[0] == 'm') {
                amcf->od.max = n;

            } else if (value[i].data[0] == 'r') {
                if (n > ACME_OD_RATE_MAX) {
                    goto invalid;
                }

                amcf->od.rate = n;

            } else {
                amcf->od.waiting = n;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "refuse_time=", 12) == 0
            || ngx_strncmp(value[i].data, "unseen=", 7) == 0)
        {
            v.data = (u_char *) ngx_strchr(value[i].data, '=') + 1;
            v.len = value[i].data + value[i].len - v.data;

            t = ngx_parse_time(&v, 1);
            if (t == (time_t) NGX_ERROR || t <= 0) {
                goto invalid;
            }

            if (value[i].data[0] == 'r') {
                amcf->od.refuse_time = t;

            } else {
                amcf->od.unseen = t;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "wait=", 5) == 0
            || ngx_strncmp(value[i].data, "ask_timeout=", 12) == 0)
        {
            v.data = (u_char *) ngx_strchr(value[i].data, '=') + 1;
            v.len = value[i].data + value[i].len - v.data;

            ms = ngx_parse_time(&v, 0);
            if (ms == (ngx_msec_t) NGX_ERROR || ms == 0) {
                goto invalid;
            }

            if (value[i].data[0] == 'w') {
                amcf->od.wait = ms;

            } else {
                amcf->od.ask_timeout = ms;
            }

            continue;
        }

    invalid:

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\" of \"acme_on_demand\" "
                           "(ask=URL, ask_timeout=TIME, max=N, rate=N "
                           "(at most %d), refuse_time=TIME, wait=TIME, "
                           "waiting=N, unseen=TIME, fail=fallback|close)",
                           &value[i], ACME_OD_RATE_MAX);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* acme_status */

static char *
ngx_http_acme_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_acme_loc_conf_t *alcf = conf;

    time_t                     t;
    ngx_str_t                 *value, v;
    ngx_uint_t                 i;
    ngx_http_core_loc_conf_t  *clcf;

    if (alcf->status != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    alcf->status = 1;

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strcmp(value[i].data, "renew=on") == 0) {
            alcf->renew = 1;
            continue;
        }

        if (ngx_strcmp(value[i].data, "renew=off") == 0) {
            alcf->renew = 0;
            continue;
        }

        if (ngx_strncmp(value[i].data, "renew_interval=", 15) == 0) {
            v.data = value[i].data + 15;
            v.len = value[i].len - 15;

            t = ngx_parse_time(&v, 1);
            if (t == (time_t) NGX_ERROR || t < 1) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"acme_status\": invalid value \"%V\": "
                                   "a time of at least 1s expected",
                                   &value[i]);
                return NGX_CONF_ERROR;
            }

            alcf->renew_interval = t;
            continue;
        }

        if (ngx_strcmp(value[i].data, "format=json") == 0) {
            alcf->format = NGX_HTTP_ACME_STATUS_JSON;
            continue;
        }

        if (ngx_strcmp(value[i].data, "format=prometheus") == 0) {
            alcf->format = NGX_HTTP_ACME_STATUS_PROMETHEUS;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"acme_status\": invalid parameter \"%V\": "
                           "renew=on|off, renew_interval=TIME or "
                           "format=json|prometheus expected",
                           &value[i]);
        return NGX_CONF_ERROR;
    }

    if (alcf->renew_interval != NGX_CONF_UNSET && alcf->renew != 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"acme_status\": renew_interval= needs renew=on");
        return NGX_CONF_ERROR;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_acme_status_handler;

    return NGX_CONF_OK;
}


/* RFC 3986: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":" and more */

static ngx_uint_t
ngx_http_acme_has_scheme(ngx_str_t *v)
{
    u_char      c;
    ngx_uint_t  i;

    for (i = 0; i < v->len; i++) {
        c = v->data[i];

        if (c == ':') {
            return i > 0 && i + 1 < v->len;
        }

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (i > 0 && ((c >= '0' && c <= '9') || c == '+' || c == '-'
                            || c == '.'))))
        {
            return 0;
        }
    }

    return 0;
}


/* ".example.org" as the fallback certificate shows it */

void
ngx_http_acme_strip_dot(ngx_str_t *name)
{
    if (name->len > 1 && name->data[0] == '.') {
        name->data++;
        name->len--;
    }
}


/*
 * A certificate's issuers, identifiers and store name, once the issuers are
 * known: at the end of the http block, or at once for stream and mail.
 */

ngx_int_t
ngx_http_acme_cert_resolve(ngx_conf_t *cf, ngx_http_acme_main_conf_t *amcf,
    ngx_http_acme_cert_t *cert)
{
    char                *name;
    ngx_pool_cleanup_t  *cln;

    if (ngx_http_acme_cert_issuers(cf, amcf, cert) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_acme_cert_wildcards(cf, cert, amcf->issuers.elts)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_http_acme_cert_cleanup;
    cln->data = cert;

    if (ngx_http_acme_cert_ids(cf, cert) != NGX_OK) {
        return NGX_ERROR;
    }

    name = acme_cert_name(cert->ids, cert->nids, &cert->keyspec);
    if (name == NULL) {
        return NGX_ERROR;
    }

    cert->name = ngx_http_acme_cstr_dup(cf->pool, name);
    free(name);

    if (cert->name == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * The same store name must mean the same identifiers: a certificate against
 * those before it in amcf->certs (http's at the block's end, stream's and
 * mail's as they are read, after http's).
 */

ngx_int_t
ngx_http_acme_cert_conflict(ngx_conf_t *cf, ngx_http_acme_main_conf_t *amcf,
    ngx_http_acme_cert_t *cert)
{
    ngx_uint_t              i, k;
    ngx_http_acme_cert_t  **certs;

    certs = amcf->certs.elts;

    for (i = 0; i < amcf->certs.nelts && certs[i] != cert; i++) {
        if (certs[i]->name == NULL
            || certs[i]->store != cert->store
            || ngx_strcmp(certs[i]->name, cert->name) != 0)
        {
            continue;
        }

        if (certs[i]->nids != cert->nids) {
            goto conflict;
        }

        for (k = 0; k < cert->nids; k++) {
            if (ngx_strcmp(certs[i]->ids[k].value, cert->ids[k].value) != 0) {
                goto conflict;
            }
        }

        continue;

    conflict:

        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "acme_certificate: certificate \"%s\" is also "
                      "configured in %s:%ui with different names "
                      "in %s:%ui", cert->name, certs[i]->file,
                      certs[i]->line, cert->file, cert->line);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* the http block's configuration while the configuration is read */

ngx_http_acme_main_conf_t *
ngx_http_acme_conf_main_conf(ngx_conf_t *cf)
{
    ngx_http_conf_ctx_t  *ctx;

    ctx = (ngx_http_conf_ctx_t *) ngx_get_conf(cf->cycle->conf_ctx,
                                               ngx_http_module);
    if (ctx == NULL) {
        return NULL;
    }

    return ctx->main_conf[ngx_http_acme_module.ctx_index];
}


/* identifiers: explicit, or the server's real names */

static ngx_int_t
ngx_http_acme_cert_ids(ngx_conf_t *cf, ngx_http_acme_cert_t *cert)
{
    ngx_str_t               *names, one;
    ngx_uint_t               i, n, explicit;
    acme_err_t               err;
    ngx_http_server_name_t  *sn;

    explicit = (cert->names != NULL);

    if (explicit) {
        n = cert->names->nelts;
        names = cert->names->elts;

    } else if (cert->cscf) {
        n = cert->cscf->server_names.nelts;
        names = NULL;

    } else {
        /* stream and mail: their caller lists the names */
        n = 0;
        names = NULL;
    }

    /* a leading dot stands for two names */

    cert->ids = ngx_pcalloc(cf->pool, (n ? 2 * n : 1) * sizeof(acme_ident_t));
    if (cert->ids == NULL) {
        return NGX_ERROR;
    }

    cert->nids = 0;

    sn = cert->cscf ? cert->cscf->server_names.elts : NULL;

    for (i = 0; i < n; i++) {

        if (explicit) {
            one = names[i];

        } else {
            one = sn[i].name;

            /* not names: the empty name and the conventional "_" */

            if (one.len == 0 || (one.len == 1 && one.data[0] == '_')) {
                continue;
            }

#if (NGX_PCRE)
            /* nginx keeps a regex's name without its "~" */

            if (sn[i].regex) {
                ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                              "acme_certificate: server_name \"~%V\" is a "
                              "regular expression and is not certified "
                              "in %s:%ui", &one, cert->file, cert->line);
                continue;
            }
#endif

            if (one.len > 2 && one.data[0] == '*' && one.data[1] == '.') {
                ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                              "acme_certificate: server_name \"%V\" is a "
                              "wildcard, which needs the dns-01 challenge, "
                              "and is not certified in %s:%ui", &one,
                              cert->file, cert->line);
                continue;
            }

            /* as nginx-acme: a config with one cannot be meant for it */

            if (ngx_strlchr(one.data, one.data + one.len, '*') != NULL) {
                ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                              "acme_certificate: invalid server name \"%V\": "
                              "a wildcard no certificate can name in %s:%ui",
                              &one, cert->file, cert->line);
                return NGX_ERROR;
            }
        }

        switch (ngx_http_acme_cert_add_name(cf, cert, &one, &err)) {

        case NGX_OK:
            break;

        case NGX_DECLINED:
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "acme_certificate: invalid %s \"%V\": %s "
                          "in %s:%ui", explicit ? "identifier" : "server name",
                          &one, err.msg, cert->file, cert->line);
            return NGX_ERROR;

        default:
            return NGX_ERROR;
        }
    }

    if (cert->nids == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "acme_certificate: no identifiers: the server has no "
                      "names to certify (server_name has no DNS names or "
                      "addresses other than wildcards, regular expressions "
                      "or \"_\"); "
                      "list the identifiers in the directive in %s:%ui",
                      cert->file, cert->line);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * one name as nginx-acme reads it: ".example.org" (nginx's "example.org and
 * all its subdomains") is certified as "www.example.org" and "example.org",
 * in this order; a name already in the list is not added again.
 * NGX_DECLINED with err: not a name a certificate can hold.
 */

static ngx_int_t
ngx_http_acme_cert_add_name(ngx_conf_t *cf, ngx_http_acme_cert_t *cert,
    ngx_str_t *name, acme_err_t *err)
{
    char          *s;
    ngx_uint_t     dot, k, j;
    acme_ident_t  *id;

    dot = (name->len > 0 && name->data[0] == '.');

    s = ngx_pnalloc(cf->temp_pool, name->len + sizeof("www"));
    if (s == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf((u_char *) s, "%s%V%Z", dot ? "www" : "", name);

    for (k = 0; k < (dot ? 2 : 1); k++) {
        id = &cert->ids[cert->nids];

        /* "www.example.org", then "example.org" */

        if (acme_ident_parse(s + k * 4, id, err) != 0) {
            return NGX_DECLINED;
        }

        if (dot && (id->type != ACME_IDENT_DNS || id->value[0] == '*')) {
            acme_ident_free(id);
            acme_err_set(err, ACME_ERR_INPUT, "a leading dot needs a "
                         "DNS name after it");
            return NGX_DECLINED;
        }

        /* the core copies what it keeps; these stay for the process */

        for (j = 0; j < cert->nids; j++) {
            if (cert->ids[j].type == id->type
                && ngx_strcmp(cert->ids[j].value, id->value) == 0)
            {
                break;
            }
        }

        if (j < cert->nids) {
            acme_ident_free(id);
            continue;
        }

        cert->nids++;
    }

    return NGX_OK;
}


/* A wildcard identifier is validated through DNS only: every issuer of the
 * certificate must allow dns-01. */

static ngx_int_t
ngx_http_acme_cert_wildcards(ngx_conf_t *cf, ngx_http_acme_cert_t *cert,
    ngx_http_acme_issuer_t *iss)
{
    ngx_str_t   *n;
    ngx_uint_t   i, j, k, dns01;

    if (cert->names == NULL) {
        return NGX_OK;
    }

    n = cert->names->elts;

    for (i = 0; i < cert->names->nelts; i++) {
        if (n[i].len < 2 || n[i].data[0] != '*') {
            continue;
        }

        for (j = 0; j < cert->nissuers; j++) {
            dns01 = 0;

            for (k = 0; k < iss[cert->issuers[j]].nchallenges; k++) {
                if (ngx_strncmp(iss[cert->issuers[j]].challenges[k], "dns-",
                                4)
                    == 0)
                {
                    dns01 = 1;
                }
            }

            if (!dns01) {
                ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                              "acme_certificate: invalid identifier \"%V\": "
                              "a wildcard needs \"challenge dns-01\" in "
                              "acme_issuer \"%V\" in %s:%ui", &n[i],
                              &iss[cert->issuers[j]].name, cert->file,
                              cert->line);
                return NGX_ERROR;
            }
        }
    }

    return NGX_OK;
}


static void
ngx_http_acme_cert_cleanup(void *data)
{
    ngx_http_acme_cert_t  *cert = data;

    ngx_uint_t  i;

    for (i = 0; i < cert->nids; i++) {
        acme_ident_free(&cert->ids[i]);
    }

    cert->nids = 0;
}


static ngx_int_t
ngx_http_acme_cert_issuers(ngx_conf_t *cf, ngx_http_acme_main_conf_t *amcf,
    ngx_http_acme_cert_t *cert)
{
    ngx_str_t               *in;
    ngx_uint_t               j, k;
    ngx_http_acme_issuer_t  *iss;

    iss = amcf->issuers.elts;
    in = cert->issuer_names.elts;
    cert->nissuers = cert->issuer_names.nelts;
    cert->issuers = ngx_pcalloc(cf->pool,
                                cert->nissuers * sizeof(ngx_uint_t));
    if (cert->issuers == NULL) {
        return NGX_ERROR;
    }

    for (j = 0; j < cert->nissuers; j++) {
        for (k = 0; k < amcf->issuers.nelts; k++) {
            if (iss[k].name.len == in[j].len
                && ngx_strncmp(iss[k].name.data, in[j].data, in[j].len) == 0)
            {
                break;
            }
        }

        if (k == amcf->issuers.nelts) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "acme_certificate: issuer \"%V\" is missing "
                          "(no acme_issuer block with this name) "
                          "in %s:%ui", &in[j], cert->file, cert->line);
            return NGX_ERROR;
        }

        cert->issuers[j] = k;
    }

    cert->store = iss[cert->issuers[0]].store;

    return NGX_OK;
}


static char *
ngx_http_acme_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_acme_main_conf_t *amcf = conf;

    size_t                   need;
    ngx_str_t                zname;
    ngx_uint_t               i;
    ngx_http_acme_cert_t   **certs;
    ngx_http_acme_zone_t    *zone;

    if (ngx_http_acme_state_storage_key(cf, amcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (amcf->certs.nelts == 0 && amcf->issuers.nelts == 0) {
        return NGX_CONF_OK;
    }

    amcf->enabled = 1;

    certs = amcf->certs.elts;

    for (i = 0; i < amcf->certs.nelts; i++) {
        if (ngx_http_acme_cert_resolve(cf, amcf, certs[i]) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    certs = amcf->od_certs.elts;

    for (i = 0; i < amcf->od_certs.nelts; i++) {
        if (ngx_http_acme_cert_issuers(cf, amcf, certs[i]) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    certs = amcf->certs.elts;

    /* the same store name must mean the same identifiers */

    for (i = 0; i < amcf->certs.nelts; i++) {
        if (ngx_http_acme_cert_conflict(cf, amcf, certs[i]) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    if (amcf->zone_name.len == 0) {
        ngx_str_set(&amcf->zone_name, NGX_HTTP_ACME_DEFAULT_ZONE_NAME);
        amcf->zone_size = NGX_HTTP_ACME_DEFAULT_ZONE_SIZE;
    }

    /*
     * a certificate renewed while nginx runs keeps its generation entry in
     * the zone for good: say so when those could crowd out the challenges
     */

    need = NGX_HTTP_ACME_ZONE_RESERVE;

    for (i = 0; i < amcf->certs.nelts; i++) {
        need += ngx_http_acme_zone_entry_size(ngx_strlen(certs[i]->name), 0);
    }

    if (amcf->zone_size < need) {
        ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                      "acme_shared_zone \"%V\": %uzk leaves too little "
                      "room for challenges beside the generation numbers "
                      "of %ui certificates, use at least %uzk",
                      &amcf->zone_name, amcf->zone_size / 1024,
                      amcf->certs.nelts, (need + 1023) / 1024);
    }

    zname = amcf->zone_name;

    amcf->shm_zone = ngx_shared_memory_add(cf, &zname, amcf->zone_size,
                                           &ngx_http_acme_module);
    if (amcf->shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (amcf->shm_zone->data) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "acme_shared_zone \"%V\" is already used", &zname);
        return NGX_CONF_ERROR;
    }

    zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_acme_zone_t));
    if (zone == NULL) {
        return NGX_CONF_ERROR;
    }

    amcf->shm_zone->init = ngx_http_acme_zone_init;
    amcf->shm_zone->data = zone;

    if (ngx_http_acme_status_zone_add(cf, amcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_acme_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_loc_conf_t   *clcf;
    ngx_http_core_main_conf_t  *cmcf;
    ngx_http_acme_main_conf_t  *amcf;

    amcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_acme_module);

    if (!amcf->enabled) {
        return NGX_OK;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    /*
     * the http block's "resolver" resolves the CA's host names, as in
     * nginx-acme; without one (nginx's placeholder has no servers),
     * libcurl resolves them in its resolver thread
     */

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->resolver && clcf->resolver->connections.nelts) {
        amcf->resolver = clcf->resolver;

        /* the http block's own value is never merged: unset there */
        amcf->resolver_timeout = clcf->resolver_timeout
                                 != NGX_CONF_UNSET_MSEC
                                 ? clcf->resolver_timeout
                                 : NGX_HTTP_ACME_RESOLVER_TIMEOUT;
    }

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_POST_READ_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_acme_challenge_handler;

    if (ngx_http_acme_ssl_init(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_acme_tls_alpn_init(cf);
}


/*
 * the key is read where the core runs, in the cache manager process, as the
 * worker user: nginx -t says so when that user cannot read it (by the file's
 * owner, group and mode; the content is never read or shown here)
 */

static ngx_int_t
ngx_http_acme_storage_key_check(ngx_cycle_t *cycle,
    ngx_http_acme_main_conf_t *amcf, ngx_core_conf_t *ccf)
{
    int          i, n;
    char         mode[8];
    gid_t        groups[256];
    ngx_uint_t   readable;
    struct stat  sb;

    if (stat(amcf->storage_key, &sb) != 0) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "\"acme_storage_key\" \"%s\": cannot stat it in %s:%ui",
                      amcf->storage_key, amcf->storage_key_file,
                      amcf->storage_key_line);
        return NGX_ERROR;
    }

    if (sb.st_uid == ccf->user) {
        readable = (sb.st_mode & S_IRUSR) != 0;

    } else {
        readable = 0;

        if (sb.st_mode & S_IRGRP) {
            n = 256;
            if (getgrouplist(ccf->username, ccf->group, groups, &n) < 0) {
                n = 0;
                readable = (sb.st_gid == ccf->group);
            }

            for (i = 0; i < n; i++) {
                if (groups[i] == sb.st_gid) {
                    readable = 1;
                }
            }
        }
    }

    if (!readable) {
        /* ngx_log_error() has no octal */
        snprintf(mode, sizeof(mode), "%04o", (unsigned) (sb.st_mode & 07777));

        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "\"acme_storage_key\" \"%s\": the worker user \"%s\", "
                      "as which the ACME client runs, cannot read it "
                      "(owner uid %d, group gid %d, mode %s): chown it "
                      "to that user or make it readable by its group, "
                      "in %s:%ui", amcf->storage_key, ccf->username,
                      (int) sb.st_uid, (int) sb.st_gid, mode,
                      amcf->storage_key_file, amcf->storage_key_line);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_acme_init_module(ngx_cycle_t *cycle)
{
    ngx_core_conf_t             *ccf;
    ngx_http_acme_main_conf_t   *amcf;
    ngx_http_conf_ctx_t         *ctx;

    ctx = (ngx_http_conf_ctx_t *) ngx_get_conf(cycle->conf_ctx,
                                               ngx_http_module);
    if (ctx == NULL) {
        return NGX_OK;
    }

    amcf = ctx->main_conf[ngx_http_acme_module.ctx_index];

    if (amcf == NULL || !amcf->enabled) {
        return NGX_OK;
    }

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    if (amcf->storage_key && geteuid() == 0
        && ccf->user != (ngx_uid_t) NGX_CONF_UNSET_UINT
        && ngx_http_acme_storage_key_check(cycle, amcf, ccf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_acme_state_own(cycle, amcf) != NGX_OK) {
        return NGX_ERROR;
    }

    /* the core runs in the cache manager process (ngx_http_acme_runner.c) */

    return ngx_http_acme_runner_add_path(cycle, amcf);
}


static ngx_int_t
ngx_http_acme_init_process(ngx_cycle_t *cycle)
{
    ngx_http_acme_main_conf_t  *amcf;

    amcf = ngx_http_acme_get_main_conf();

    if (amcf == NULL || !amcf->enabled) {
        return NGX_OK;
    }

    if (ngx_process == NGX_PROCESS_HELPER) {
        /* the cache manager runs the core and serves nothing */
        return ngx_http_acme_runner_init_process(cycle);
    }

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    if (ngx_http_acme_certs_init_process(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_http_acme_tls_alpn_init_process(cycle);

    if (ngx_http_acme_od_init_process(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_acme_runner_init_process(cycle);
}


static void
ngx_http_acme_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_acme_main_conf_t  *amcf;

    amcf = ngx_http_acme_get_main_conf();

    if (amcf == NULL || !amcf->enabled) {
        return;
    }

    ngx_http_acme_runner_exit_process(cycle);
    ngx_http_acme_tls_alpn_exit_process(cycle);
    ngx_http_acme_certs_exit_process(cycle);
}
