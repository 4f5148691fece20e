
/*
 * ngx_http_acme_module: DNS validation settings of an acme_issuer block
 * (dns_update, dns_server, dns_tsig_key, dns_hook, dns_acme_dns,
 * dns_resolver, dns_propagation_timeout) and their check at the block's end.
 * The TSIG key and acme-dns account files are read here, at configuration
 * time; their secrets are wiped with the configuration's pool.
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


static char *
ngx_http_acme_dns_strdup(ngx_str_t *value, char **out)
{
    /* malloc'd: acme_dns_config_free() frees it with the pool */

    *out = malloc(value->len + 1);
    if (*out == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(*out, value->data, value->len);
    (*out)[value->len] = '\0';

    return NGX_CONF_OK;
}


/* dns_hook PROGRAM [timeout=TIME] */

static char *
ngx_http_acme_dns_hook(ngx_conf_t *cf, ngx_http_acme_issuer_t *iss,
    ngx_str_t *value, ngx_uint_t nargs)
{
    time_t     t;
    ngx_str_t  file, s;

    if (iss->dns.hook != NULL) {
        return "is duplicate";
    }

    if (nargs == 2) {
        if (value[2].len <= 8
            || ngx_strncmp(value[2].data, "timeout=", 8) != 0)
        {
            goto invalid;
        }

        s.data = value[2].data + 8;
        s.len = value[2].len - 8;

        t = ngx_parse_time(&s, 1);
        if (t == (time_t) NGX_ERROR || t <= 0) {
            goto invalid;
        }

        iss->dns.hook_timeout = t;
    }

    file = value[1];
    if (ngx_conf_full_name(cf->cycle, &file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return ngx_http_acme_dns_strdup(&file, &iss->dns.hook);

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid \"dns_hook\" parameter \"%V\" in "
                       "acme_issuer \"%V\": expected timeout=TIME",
                       &value[2], &iss->name);
    return NGX_CONF_ERROR;
}


/* dns_acme_dns ACCOUNTFILE URL: the file read now, its passwords kept in
 * memory only */

static char *
ngx_http_acme_dns_acmedns(ngx_conf_t *cf, ngx_http_acme_issuer_t *iss,
    ngx_str_t *value)
{
    ngx_str_t   file;
    acme_err_t  err;

    if (iss->dns.acmedns_url != NULL) {
        return "is duplicate";
    }

    if ((value[2].len < 8
         || ngx_strncasecmp(value[2].data, (u_char *) "https://", 8) != 0)
        && (value[2].len < 7
            || ngx_strncasecmp(value[2].data, (u_char *) "http://", 7) != 0))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"dns_acme_dns\" URL \"%V\" in "
                           "acme_issuer \"%V\": expected http:// or "
                           "https://", &value[2], &iss->name);
        return NGX_CONF_ERROR;
    }

    file = value[1];
    if (ngx_conf_full_name(cf->cycle, &file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (acme_acmedns_load((char *) file.data, &iss->dns, &err) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"dns_acme_dns\" \"%V\" in "
                           "acme_issuer \"%V\": %s", &value[1],
                           &iss->name, err.msg);
        return NGX_CONF_ERROR;
    }

    return ngx_http_acme_dns_strdup(&value[2], &iss->dns.acmedns_url);
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

    if (nargs != 1
        && !((ngx_acme_dns_is("dns_hook") && nargs == 2)
             || (ngx_acme_dns_is("dns_acme_dns") && nargs == 2)))
    {
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

        if (value[1].len == 4 && ngx_strncmp(value[1].data, "hook", 4) == 0) {
            iss->dns.method = ACME_DNS_HOOK;
            return NGX_CONF_OK;
        }

        if (value[1].len == 8 && ngx_strncmp(value[1].data, "acme-dns", 8) == 0)
        {
            iss->dns.method = ACME_DNS_ACMEDNS;
            return NGX_CONF_OK;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"dns_update\" \"%V\" in acme_issuer "
                           "\"%V\": use rfc2136, hook or acme-dns",
                           &value[1], &iss->name);
        return NGX_CONF_ERROR;
    }

    if (ngx_acme_dns_is("dns_hook")) {
        return ngx_http_acme_dns_hook(cf, iss, value, nargs);
    }

    if (ngx_acme_dns_is("dns_acme_dns")) {
        if (nargs != 2) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid number of arguments in "
                               "\"dns_acme_dns\" directive of acme_issuer "
                               "\"%V\": expected ACCOUNTFILE URL",
                               &iss->name);
            return NGX_CONF_ERROR;
        }

        return ngx_http_acme_dns_acmedns(cf, iss, value);
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


/* At the end of the acme_issuer block: DNS settings complete, or none.
 * dns-01 and dns-account-01 publish through dns_update; dns-persist-01
 * publishes nothing and only looks its record up (dns_resolver). */

static char *
ngx_http_acme_dns_needs(ngx_conf_t *cf, ngx_http_acme_issuer_t *iss,
    const char *what, const char *needs)
{
    ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                  "acme_issuer \"%V\": %s needs %s in %s:%ui",
                  &iss->name, what, needs, iss->file, iss->line);
    return NGX_CONF_ERROR;
}


char *
ngx_http_acme_dns_check(ngx_conf_t *cf, ngx_http_acme_issuer_t *iss)
{
    char        *publish, *directive;
    ngx_uint_t   i, persist;
    acme_err_t   err;

    publish = NULL;
    persist = 0;

    for (i = 0; i < iss->nchallenges; i++) {
        if (ngx_strcmp(iss->challenges[i], "dns-persist-01") == 0) {
            persist = 1;

        } else if (publish == NULL
                   && ngx_strncmp(iss->challenges[i], "dns-", 4) == 0)
        {
            publish = iss->challenges[i];
        }
    }

    if (publish == NULL) {
        if (!persist
            && (iss->dns.method != ACME_DNS_NONE || iss->dns.resolver != NULL
                || iss->dns.tsig.name != NULL || iss->dns.hook != NULL
                || iss->dns.acmedns_url != NULL || iss->dns.server != NULL
                || iss->dns.propagation_timeout != 0))
        {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "acme_issuer \"%V\": the dns_* directives need "
                          "\"challenge dns-01\" (or dns-account-01, "
                          "dns-persist-01) in %s:%ui", &iss->name,
                          iss->file, iss->line);
            return NGX_CONF_ERROR;
        }

        directive = iss->dns.method != ACME_DNS_NONE ? "dns_update"
                    : iss->dns.tsig.name != NULL ? "dns_tsig_key"
                    : iss->dns.hook != NULL ? "dns_hook"
                    : iss->dns.acmedns_url != NULL ? "dns_acme_dns"
                    : iss->dns.server != NULL ? "dns_server"
                    : iss->dns.propagation_timeout != 0
                      ? "dns_propagation_timeout" : NULL;

        if (directive != NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "acme_issuer \"%V\": \"%s\" is for dns-01 and "
                          "dns-account-01: \"challenge dns-persist-01\" "
                          "publishes nothing (create its record once) "
                          "in %s:%ui", &iss->name, directive, iss->file,
                          iss->line);
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;
    }

    switch (iss->dns.method) {

    case ACME_DNS_RFC2136:
        if (iss->dns.tsig.name == NULL) {
            return ngx_http_acme_dns_needs(cf, iss, "\"dns_update rfc2136\"",
                                           "\"dns_tsig_key\"");
        }

        directive = iss->dns.hook != NULL ? "dns_hook"
                    : iss->dns.acmedns_url != NULL ? "dns_acme_dns" : NULL;
        break;

    case ACME_DNS_HOOK:
        if (iss->dns.hook == NULL) {
            return ngx_http_acme_dns_needs(cf, iss, "\"dns_update hook\"",
                                           "\"dns_hook\"");
        }

        directive = iss->dns.tsig.name != NULL ? "dns_tsig_key"
                    : iss->dns.acmedns_url != NULL ? "dns_acme_dns"
                    : iss->dns.server != NULL ? "dns_server" : NULL;
        break;

    case ACME_DNS_ACMEDNS:
        if (iss->dns.acmedns_url == NULL) {
            return ngx_http_acme_dns_needs(cf, iss, "\"dns_update acme-dns\"",
                                           "\"dns_acme_dns\"");
        }

        directive = iss->dns.tsig.name != NULL ? "dns_tsig_key"
                    : iss->dns.hook != NULL ? "dns_hook"
                    : iss->dns.server != NULL ? "dns_server" : NULL;
        break;

    default:
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "acme_issuer \"%V\": \"challenge %s\" needs "
                      "\"dns_update\" in %s:%ui", &iss->name, publish,
                      iss->file, iss->line);
        return NGX_CONF_ERROR;
    }

    if (directive != NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "acme_issuer \"%V\": \"%s\" is not used by "
                      "\"dns_update %s\" in %s:%ui", &iss->name, directive,
                      acme_dns_method_name(iss->dns.method), iss->file,
                      iss->line);
        return NGX_CONF_ERROR;
    }

    if (acme_dns_config_check(&iss->dns, &err) != 0) {
        directive = iss->dns.method == ACME_DNS_RFC2136 ? "dns_tsig_key"
                    : iss->dns.method == ACME_DNS_HOOK ? "dns_hook"
                    : "dns_acme_dns";

        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "acme_issuer \"%V\": \"%s\": %s in %s:%ui",
                      &iss->name, directive, err.msg, iss->file, iss->line);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}
