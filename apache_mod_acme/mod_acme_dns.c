/*
 * mod_acme: DNS validation settings (ACMEDNSUpdate, ACMEDNSTSIGKey, ACMEDNSHook, ACMEDNSAcmeDNS,
 * ACMEDNSServer, ACMEDNSResolver, ACMEDNSPropagationTimeout), their merging, and their check at apache2 -t
 * and start: complete where a certificate's ACMEChallenge lists dns-01 or dns-account-01, no publisher
 * where only dns-persist-01 (its record is created once by the admin), absent where no DNS type is listed,
 * and a wildcard name only with a DNS type. The TSIG key and acme-dns account files are read here, at
 * configuration time like SSLCertificateKeyFile; no message shows their secrets, which are wiped with the
 * configuration's pool.
 */
#include "mod_acme.h"

#include <apr_lib.h>
#include <http_core.h>

static const char *
dns_cmd_name(cmd_parms *cmd)
{
    return cmd->directive ? cmd->directive->directive : cmd->cmd->name;
}

/* Notes the first ACMEDNS* directive of this server's own section, for the "needs dns-01" message. */
static mod_acme_srv_conf_t *
dns_conf(cmd_parms *cmd)
{
    mod_acme_srv_conf_t *sc = mod_acme_srv_conf(cmd->server);

    if (sc->dns_directive == NULL) {
        sc->dns_directive = cmd->directive
            ? apr_psprintf(cmd->pool, "%s (%s:%d)", dns_cmd_name(cmd), cmd->directive->filename,
                           cmd->directive->line_num)
            : dns_cmd_name(cmd);
    }
    return sc;
}

static const char *
dns_hostport(cmd_parms *cmd, const char *arg, char **out)
{
    const char  *p = arg, *colon;
    char        *end;
    long         port;

    if (*out != NULL) {
        return apr_psprintf(cmd->pool, "%s: given twice", dns_cmd_name(cmd));
    }
    if (*arg == '\0' || strlen(arg) > 300 || strpbrk(arg, " \t\r\n/") != NULL) {
        goto invalid;
    }
    if (*p == '[') {
        p = strchr(p, ']');
        if (p == NULL || p == arg + 1) {
            goto invalid;
        }
        p++;
        colon = *p == ':' ? p : NULL;
        if (*p != '\0' && colon == NULL) {
            goto invalid;
        }
    } else {
        colon = strchr(p, ':');
        if (colon != NULL && strchr(colon + 1, ':') != NULL) {
            colon = NULL;       /* a bare IPv6 address */
        }
        if (colon == arg) {
            goto invalid;
        }
    }
    if (colon != NULL) {
        port = strtol(colon + 1, &end, 10);
        if (colon[1] == '\0' || *end != '\0' || port < 1 || port > 65535) {
            goto invalid;
        }
    }
    *out = apr_pstrdup(cmd->pool, arg);
    return NULL;

invalid:
    return apr_psprintf(cmd->pool, "%s: invalid value '%s': expected HOST[:PORT] ([IPv6]:PORT with a port)",
                        dns_cmd_name(cmd), arg);
}

const char *
mod_acme_set_dns_update(cmd_parms *cmd, void *dc, const char *arg)
{
    mod_acme_srv_conf_t *sc = dns_conf(cmd);

    (void) dc;
    if (strcasecmp(arg, "rfc2136") == 0) {
        sc->dns.method = ACME_DNS_RFC2136;
    } else if (strcasecmp(arg, "hook") == 0) {
        sc->dns.method = ACME_DNS_HOOK;
    } else if (strcasecmp(arg, "acme-dns") == 0) {
        sc->dns.method = ACME_DNS_ACMEDNS;
    } else {
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': expected rfc2136, hook or acme-dns",
                            dns_cmd_name(cmd), arg);
    }
    return NULL;
}

/* "90", "90s", "5m", "1h": 1 second to a day; -1 otherwise */
static long
dns_duration(const char *arg)
{
    char  *end = NULL;
    long   n;

    n = apr_isdigit(*arg) ? strtol(arg, &end, 10) : -1;
    if (n >= 0 && *end == 'm' && end[1] == '\0') {
        n *= 60;
    } else if (n >= 0 && *end == 'h' && end[1] == '\0') {
        n *= 3600;
    } else if (n >= 0 && !(*end == '\0' || (*end == 's' && end[1] == '\0'))) {
        n = -1;
    }
    return n < 1 || n > 86400 ? -1 : n;
}

/* ACMEDNSHook PROGRAM [TIMEOUT]: checked (absolute, executable) with the rest at the end */
const char *
mod_acme_set_dns_hook(cmd_parms *cmd, void *dc, const char *prog, const char *timeout)
{
    mod_acme_srv_conf_t  *sc = dns_conf(cmd);
    const char           *path;

    (void) dc;
    if (sc->dns.hook != NULL) {
        return apr_psprintf(cmd->pool, "%s: given twice", dns_cmd_name(cmd));
    }
    path = ap_server_root_relative(cmd->pool, prog);
    if (path == NULL || *prog == '\0') {
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': not a valid path", dns_cmd_name(cmd), prog);
    }
    if (timeout != NULL) {
        sc->dns.hook_timeout = dns_duration(timeout);
        if (sc->dns.hook_timeout < 0) {
            return apr_psprintf(cmd->pool, "%s: invalid timeout '%s': expected a duration (seconds, or with "
                                "s, m, h; 1s to 1 day)", dns_cmd_name(cmd), timeout);
        }
    }
    sc->dns.hook = (char *) path;
    return NULL;
}

static apr_status_t
acmedns_cleanup(void *data)
{
    acme_dns_config_free(data);
    return APR_SUCCESS;
}

/* ACMEDNSAcmeDNS ACCOUNTFILE URL: the file read now; its passwords never in a message */
const char *
mod_acme_set_dns_acmedns(cmd_parms *cmd, void *dc, const char *file, const char *url)
{
    mod_acme_srv_conf_t  *sc = dns_conf(cmd);
    acme_dns_config_t    *accounts;
    const char           *path;
    acme_err_t            err;

    (void) dc;
    if (sc->dns.acmedns_url != NULL) {
        return apr_psprintf(cmd->pool, "%s: given twice", dns_cmd_name(cmd));
    }
    if (strncasecmp(url, "https://", 8) != 0 && strncasecmp(url, "http://", 7) != 0) {
        return apr_psprintf(cmd->pool, "%s: invalid URL '%s': expected http:// or https://",
                            dns_cmd_name(cmd), url);
    }
    path = ap_server_root_relative(cmd->pool, file);
    if (path == NULL || *file == '\0') {
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': not a valid path", dns_cmd_name(cmd), file);
    }
    /* the accounts are the core's (malloc'd), freed with this pool */
    accounts = apr_pcalloc(cmd->pool, sizeof(*accounts));
    if (acme_acmedns_load(path, accounts, &err) != 0) {
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': %s", dns_cmd_name(cmd), file, err.msg);
    }
    apr_pool_cleanup_register(cmd->pool, accounts, acmedns_cleanup, apr_pool_cleanup_null);
    sc->dns.acmedns = accounts->acmedns;
    sc->dns.nacmedns = accounts->nacmedns;
    sc->dns.acmedns_url = apr_pstrdup(cmd->pool, url);
    sc->dns_acmedns_file = path;
    return NULL;
}

static apr_status_t
tsig_cleanup(void *data)
{
    acme_tsig_key_free(data);
    return APR_SUCCESS;
}

const char *
mod_acme_set_dns_tsig_key(cmd_parms *cmd, void *dc, const char *arg)
{
    mod_acme_srv_conf_t  *sc = dns_conf(cmd);
    const char           *path;
    acme_err_t            err;

    (void) dc;
    if (sc->dns.tsig.name != NULL) {
        return apr_psprintf(cmd->pool, "%s: given twice", dns_cmd_name(cmd));
    }
    path = ap_server_root_relative(cmd->pool, arg);
    if (path == NULL || *arg == '\0') {
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': not a valid path", dns_cmd_name(cmd), arg);
    }
    /* the core's message names the file and what is wrong, never the secret */
    if (acme_tsig_key_load(path, &sc->dns.tsig, &err) != 0) {
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': %s", dns_cmd_name(cmd), arg, err.msg);
    }
    apr_pool_cleanup_register(cmd->pool, &sc->dns.tsig, tsig_cleanup, apr_pool_cleanup_null);
    sc->dns_tsig_file = path;
    return NULL;
}

const char *
mod_acme_set_dns_server(cmd_parms *cmd, void *dc, const char *arg)
{
    (void) dc;
    return dns_hostport(cmd, arg, &dns_conf(cmd)->dns.server);
}

const char *
mod_acme_set_dns_resolver(cmd_parms *cmd, void *dc, const char *arg)
{
    (void) dc;
    return dns_hostport(cmd, arg, &dns_conf(cmd)->dns.resolver);
}

/* "90", "90s", "5m", "1h": 1 second to a day */
const char *
mod_acme_set_dns_propagation(cmd_parms *cmd, void *dc, const char *arg)
{
    mod_acme_srv_conf_t  *sc = dns_conf(cmd);
    long                  n;

    (void) dc;
    n = dns_duration(arg);
    if (n < 0) {
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': expected a duration (seconds, or with s, m, "
                            "h; 1s to 1 day)", dns_cmd_name(cmd), arg);
    }
    sc->dns.propagation_timeout = n;
    return NULL;
}

void
mod_acme_dns_merge(mod_acme_srv_conf_t *sc, const mod_acme_srv_conf_t *base, const mod_acme_srv_conf_t *add)
{
    /* shallow: the strings and the key stay owned by the server that read them */
    sc->dns.method = add->dns.method != ACME_DNS_NONE ? add->dns.method : base->dns.method;
    sc->dns.server = add->dns.server ? add->dns.server : base->dns.server;
    sc->dns.resolver = add->dns.resolver ? add->dns.resolver : base->dns.resolver;
    sc->dns.propagation_timeout = add->dns.propagation_timeout ? add->dns.propagation_timeout
                                                                : base->dns.propagation_timeout;
    if (add->dns.tsig.name != NULL) {
        sc->dns.tsig = add->dns.tsig;
        sc->dns_tsig_file = add->dns_tsig_file;
    } else {
        sc->dns.tsig = base->dns.tsig;
        sc->dns_tsig_file = base->dns_tsig_file;
    }
    if (add->dns.hook != NULL) {
        sc->dns.hook = add->dns.hook;
        sc->dns.hook_timeout = add->dns.hook_timeout;
    } else {
        sc->dns.hook = base->dns.hook;
        sc->dns.hook_timeout = base->dns.hook_timeout;
    }
    if (add->dns.acmedns_url != NULL) {
        sc->dns.acmedns_url = add->dns.acmedns_url;
        sc->dns.acmedns = add->dns.acmedns;
        sc->dns.nacmedns = add->dns.nacmedns;
        sc->dns_acmedns_file = add->dns_acmedns_file;
    } else {
        sc->dns.acmedns_url = base->dns.acmedns_url;
        sc->dns.acmedns = base->dns.acmedns;
        sc->dns.nacmedns = base->dns.nacmedns;
        sc->dns_acmedns_file = base->dns_acmedns_file;
    }
    sc->dns_directive = add->dns_directive;
}

/* A DNS type listed (dns-01, dns-account-01, dns-persist-01): its settings are used. */
int
mod_acme_dns01(const mod_acme_srv_conf_t *sc)
{
    int i;

    for (i = 0; sc->challenges != NULL && i < sc->challenges->nelts; i++) {
        if (strncmp(APR_ARRAY_IDX(sc->challenges, i, const char *), "dns-", 4) == 0) {
            return 1;
        }
    }
    return 0;
}

/* The first listed type that publishes a record (dns-01, dns-account-01), or NULL. */
static const char *
dns_publishing_type(const mod_acme_srv_conf_t *sc)
{
    const char  *t;
    int          i;

    for (i = 0; sc->challenges != NULL && i < sc->challenges->nelts; i++) {
        t = APR_ARRAY_IDX(sc->challenges, i, const char *);
        if (strcmp(t, "dns-01") == 0 || strcmp(t, "dns-account-01") == 0) {
            return t;
        }
    }
    return NULL;
}

static int
is_wildcard(const char *n)
{
    return n != NULL && n[0] == '*' && n[1] == '.';
}

/*
 * One server's DNS settings: where a certificate is managed (configured or on demand), every wildcard
 * name needs dns-01 and dns-01 needs complete settings; ACMEDNS* written in a section where nothing uses
 * dns-01 are refused. 0, or -1 (logged).
 */
static int
check_server(apr_pool_t *p, server_rec *s, int any_dns01)
{
    mod_acme_srv_conf_t  *sc = mod_acme_srv_conf(s);
    const char           *where = sc->cert_directive ? sc->cert_directive : "?";
    const char           *wild = NULL;
    const char           *type, *unused, *needs, *what;
    acme_err_t            err;
    int                   i, managed, missing;

    managed = sc->cert_mode == ACME_CERT_ON || sc->cert_mode == ACME_CERT_NAMES;
    /* an on-demand vhost's names are ordered with its settings too: the same checks, now */
    what = managed ? apr_pstrcat(p, "ACMECertificate ", where, NULL) : "ACMEOnDemand on";
    if (!mod_acme_dns01(sc)) {
        if (managed && sc->cert_mode == ACME_CERT_ON) {
            for (i = 0; s->wild_names && i < s->wild_names->nelts && wild == NULL; i++) {
                if (is_wildcard(APR_ARRAY_IDX(s->wild_names, i, const char *))) {
                    wild = APR_ARRAY_IDX(s->wild_names, i, const char *);
                }
            }
        } else if (managed) {
            for (i = 0; i < sc->cert_names->nelts && wild == NULL; i++) {
                if (is_wildcard(APR_ARRAY_IDX(sc->cert_names, i, const char *))) {
                    wild = APR_ARRAY_IDX(sc->cert_names, i, const char *);
                }
            }
        }
        if (wild != NULL) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0140)
                         "ACMECertificate (%s): '%s' is a wildcard, which needs a DNS challenge: add "
                         "ACMEChallenge dns-01 (with ACMEDNSUpdate and ACMEDNSTSIGKey)", where, wild);
            return -1;
        }
        /* a managed vhost's own ACMEDNS* unused: an error; server-wide defaults no vhost uses: a warning */
        if (sc->dns_directive != NULL && s->is_virtual && (managed || sc->ondemand || !any_dns01)) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0141)
                         "%s: the ACMEDNS* directives need ACMEChallenge dns-01 in %s", sc->dns_directive,
                         mod_acme_vhost_id(p, s));
            return -1;
        }
        if (sc->dns_directive != NULL && !s->is_virtual && !any_dns01) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, ACMELOGNO(0145)
                         "%s: no ACMEChallenge lists dns-01, the ACMEDNS* settings are not used",
                         sc->dns_directive);
        }
        return 0;
    }
    if (!managed && !sc->ondemand) {
        return 0;
    }
    type = dns_publishing_type(sc);
    if (type == NULL) {
        /* dns-persist-01 only: its record is looked up (ACMEDNSResolver), never published */
        unused = sc->dns.method != ACME_DNS_NONE ? "ACMEDNSUpdate"
                 : sc->dns.tsig.name != NULL ? "ACMEDNSTSIGKey"
                 : sc->dns.hook != NULL ? "ACMEDNSHook"
                 : sc->dns.acmedns_url != NULL ? "ACMEDNSAcmeDNS"
                 : sc->dns.server != NULL ? "ACMEDNSServer"
                 : sc->dns.propagation_timeout ? "ACMEDNSPropagationTimeout" : NULL;
        if (unused != NULL) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0146)
                         "%s is for dns-01 and dns-account-01: ACMEChallenge dns-persist-01 publishes "
                         "nothing, its record is created once (for %s in %s)", unused, what,
                         mod_acme_vhost_id(p, s));
            return -1;
        }
        return 0;
    }
    if (sc->dns.method == ACME_DNS_NONE) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0142)
                     "ACMEChallenge %s needs ACMEDNSUpdate (for %s in %s)", type, what,
                     mod_acme_vhost_id(p, s));
        return -1;
    }
    needs = sc->dns.method == ACME_DNS_RFC2136 ? "ACMEDNSTSIGKey"
            : sc->dns.method == ACME_DNS_HOOK ? "ACMEDNSHook" : "ACMEDNSAcmeDNS";
    missing = sc->dns.method == ACME_DNS_RFC2136 ? sc->dns.tsig.name == NULL
              : sc->dns.method == ACME_DNS_HOOK ? sc->dns.hook == NULL : sc->dns.acmedns_url == NULL;
    if (missing) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0143)
                     "ACMEDNSUpdate %s needs %s (for %s in %s)",
                     acme_dns_method_name(sc->dns.method), needs, what, mod_acme_vhost_id(p, s));
        return -1;
    }
    if (acme_dns_config_check(&sc->dns, &err) != 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0144)
                     "%s %s: %s (for %s)", needs,
                     sc->dns.method == ACME_DNS_RFC2136 ? sc->dns_tsig_file
                     : sc->dns.method == ACME_DNS_HOOK ? sc->dns.hook : sc->dns_acmedns_file,
                     err.msg, what);
        return -1;
    }
    return 0;
}

int
mod_acme_dns_check(apr_pool_t *ptemp, server_rec *base)
{
    server_rec  *s;
    int          any_dns01 = 0;

    for (s = base; s != NULL; s = s->next) {
        any_dns01 |= mod_acme_dns01(mod_acme_srv_conf(s));
    }
    for (s = base; s != NULL; s = s->next) {
        if (check_server(ptemp, s, any_dns01) != 0) {
            return -1;
        }
    }
    return 0;
}
