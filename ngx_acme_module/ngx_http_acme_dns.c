
/*
 * ngx_http_acme_module: DNS validation settings of an acme_issuer block
 * (dns_update, dns_server, dns_tsig_key, dns_resolver,
 * dns_propagation_timeout) and their check at the block's end. The TSIG key
 * file is read here, at configuration time; its secret is wiped with the
 * configuration's pool.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_acme_module.h"


static void
ngx_http_acme_dns_cleanup(void *data)
{
    acme_dns_config_t  *dns = data;

    acme_dns_config_free(dns);
}


static char *
ngx_http_acme_dns_hostport(ngx_conf_t *cf, ngx_http_acme_issuer_t *iss,
    ngx_str_t *name, ngx_str_t *value, char **out)
{
    u_char      *p, *last;
    ngx_int_t    port;

    p = value->data;
    last = value->data + value->len;

    if (value->len == 0 || value->len > 300) {
        goto invalid;
    }

    if (*p == '[') {
        p = ngx_strlchr(p, last, ']');
        if (p == NULL) {
            goto invalid;
        }

        p++;

    } else if (ngx_strlchr(p, last, ':') != NULL
               && ngx_strlchr(ngx_strlchr(p, last, ':') + 1, last, ':')
                  == NULL)
    {
        p = ngx_strlchr(p, last, ':');

    } else {
        p = last;
    }

    if (p < last) {
        if (*p != ':') {
            goto invalid;
        }

        port = ngx_atoi(p + 1, last - p - 1);
        if (port < 1 || port > 65535) {
            goto invalid;
        }
    }

    /* malloc'd: acme_dns_config_free() frees it with the pool */

    if (*out != NULL) {
        return "is duplicate";
    }

    *out = malloc(value->len + 1);
    if (*out == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(*out, value->data, value->len);
    (*out)[value->len] = '\0';

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid \"%V\" \"%V\" in acme_issuer \"%V\": "
                       "expected HOST[:PORT]", name, value, &iss->name);
    return NGX_CONF_ERROR;
}


char *
ngx_http_acme_dns_directive(ngx_conf_t *cf, ngx_http_acme_issuer_t *iss,
    ngx_str_t *name, ngx_str_t *value, ngx_uint_t nargs)
{
    char                *path;
    time_t               t;
    ngx_str_t            file;
    acme_err_t           err;
    ngx_pool_cleanup_t  *cln;

#define ngx_acme_dns_is(n)                                                    \
    (name->len == sizeof(n) - 1 && ngx_strncmp(name->data, n, name->len) == 0)

    if (!iss->dns_cleanup) {
        cln = ngx_pool_cleanup_add(cf->pool, 0);
        if (cln == NULL) {
            return NGX_CONF_ERROR;
        }

        cln->handler = ngx_http_acme_dns_cleanup;
        cln->data = &iss->dns;
        iss->dns_cleanup = 1;
    }

    if (nargs != 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid number of arguments in \"%V\" "
                           "directive of acme_issuer \"%V\"",
                           name, &iss->name);
        return NGX_CONF_ERROR;
    }

    if (ngx_acme_dns_is("dns_update")) {
        if (value[1].len == 7 && ngx_strncmp(value[1].data, "rfc2136", 7) == 0)
        {
            iss->dns.method = ACME_DNS_RFC2136;
            return NGX_CONF_OK;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"dns_update\" \"%V\" in acme_issuer "
                           "\"%V\": use rfc2136", &value[1], &iss->name);
        return NGX_CONF_ERROR;
    }

    if (ngx_acme_dns_is("dns_server")) {
        return ngx_http_acme_dns_hostport(cf, iss, name, &value[1],
                                          &iss->dns.server);
    }

    if (ngx_acme_dns_is("dns_resolver")) {
        return ngx_http_acme_dns_hostport(cf, iss, name, &value[1],
                                          &iss->dns.resolver);
    }

    if (ngx_acme_dns_is("dns_propagation_timeout")) {
        t = ngx_parse_time(&value[1], 1);
        if (t == (time_t) NGX_ERROR || t <= 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid \"dns_propagation_timeout\" \"%V\" "
                               "in acme_issuer \"%V\"", &value[1],
                               &iss->name);
            return NGX_CONF_ERROR;
        }

        iss->dns.propagation_timeout = t;
        return NGX_CONF_OK;
    }

    if (ngx_acme_dns_is("dns_tsig_key")) {
        if (iss->dns.tsig.name != NULL) {
            return "is duplicate";
        }

        file = value[1];
        if (ngx_conf_full_name(cf->cycle, &file, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        path = (char *) file.data;

        /* read now, like ssl_certificate_key; the message never shows the
         * secret */
        if (acme_tsig_key_load(path, &iss->dns.tsig, &err) != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid \"dns_tsig_key\" \"%V\" in "
                               "acme_issuer \"%V\": %s", &value[1],
                               &iss->name, err.msg);
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "unknown directive \"%V\" in acme_issuer \"%V\"",
                       name, &iss->name);
    return NGX_CONF_ERROR;
}


/* At the end of the acme_issuer block: DNS settings complete, or none. */

char *
ngx_http_acme_dns_check(ngx_conf_t *cf, ngx_http_acme_issuer_t *iss)
{
    ngx_uint_t  i, dns01;
    acme_err_t  err;

    dns01 = 0;

    for (i = 0; i < iss->nchallenges; i++) {
        if (ngx_strcmp(iss->challenges[i], "dns-01") == 0) {
            dns01 = 1;
        }
    }

    if (!dns01) {
        if (iss->dns.method != ACME_DNS_NONE || iss->dns.tsig.name != NULL
            || iss->dns.server != NULL || iss->dns.resolver != NULL
            || iss->dns.propagation_timeout != 0)
        {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "acme_issuer \"%V\": the dns_* directives need "
                          "\"challenge dns-01\" in %s:%ui", &iss->name,
                          iss->file, iss->line);
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;
    }

    if (iss->dns.method == ACME_DNS_NONE) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "acme_issuer \"%V\": \"challenge dns-01\" needs "
                      "\"dns_update\" in %s:%ui", &iss->name, iss->file,
                      iss->line);
        return NGX_CONF_ERROR;
    }

    if (iss->dns.tsig.name == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "acme_issuer \"%V\": \"dns_update rfc2136\" needs "
                      "\"dns_tsig_key\" in %s:%ui", &iss->name, iss->file,
                      iss->line);
        return NGX_CONF_ERROR;
    }

    if (acme_dns_config_check(&iss->dns, &err) != 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "acme_issuer \"%V\": \"dns_tsig_key\": %s in %s:%ui",
                      &iss->name, err.msg, iss->file, iss->line);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}
