/*
 * mod_acme: DNS validation settings (ACMEDNSUpdate, ACMEDNSTSIGKey, ACMEDNSServer, ACMEDNSResolver,
 * ACMEDNSPropagationTimeout), their merging, and their check at apache2 -t and start: complete where a
 * certificate's ACMEChallenge lists dns-01, absent where none does, and a wildcard name only with dns-01.
 * The TSIG key file is read here, at configuration time like SSLCertificateKeyFile; no message shows its
 * secret, which is wiped with the configuration's pool.
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
    if (strcasecmp(arg, "rfc2136") != 0) {
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': expected rfc2136", dns_cmd_name(cmd), arg);
    }
    sc->dns.method = ACME_DNS_RFC2136;
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
    char                 *end = NULL;
    long                  n;

    (void) dc;
    n = apr_isdigit(*arg) ? strtol(arg, &end, 10) : -1;
    if (n >= 0 && *end == 'm' && end[1] == '\0') {
        n *= 60;
    } else if (n >= 0 && *end == 'h' && end[1] == '\0') {
        n *= 3600;
    } else if (n >= 0 && !(*end == '\0' || (*end == 's' && end[1] == '\0'))) {
        n = -1;
    }
    if (n < 1 || n > 86400) {
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
    sc->dns_directive = add->dns_directive;
}

int
mod_acme_dns01(const mod_acme_srv_conf_t *sc)
{
    int i;

    for (i = 0; sc->challenges != NULL && i < sc->challenges->nelts; i++) {
        if (strcmp(APR_ARRAY_IDX(sc->challenges, i, const char *), "dns-01") == 0) {
            return 1;
        }
    }
    return 0;
}

static int
is_wildcard(const char *n)
{
    return n != NULL && n[0] == '*' && n[1] == '.';
}

/*
 * One server's DNS settings: where a certificate is managed, every wildcard name needs dns-01 and dns-01
 * needs complete settings; ACMEDNS* written in a section where nothing uses dns-01 are refused.
 * 0, or -1 (logged).
 */
static int
check_server(apr_pool_t *p, server_rec *s, int any_dns01)
{
    mod_acme_srv_conf_t  *sc = mod_acme_srv_conf(s);
    const char           *where = sc->cert_directive ? sc->cert_directive : "?";
    const char           *wild = NULL;
    acme_err_t            err;
    int                   i, managed;

    managed = sc->cert_mode == ACME_CERT_ON || sc->cert_mode == ACME_CERT_NAMES;
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
        if (sc->dns_directive != NULL && s->is_virtual && (managed || !any_dns01)) {
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
    if (!managed) {
        return 0;
    }
    if (sc->dns.method == ACME_DNS_NONE) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0142)
                     "ACMEChallenge dns-01 needs ACMEDNSUpdate (for ACMECertificate %s in %s)", where,
                     mod_acme_vhost_id(p, s));
        return -1;
    }
    if (sc->dns.tsig.name == NULL) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0143)
                     "ACMEDNSUpdate rfc2136 needs ACMEDNSTSIGKey (for ACMECertificate %s in %s)", where,
                     mod_acme_vhost_id(p, s));
        return -1;
    }
    if (acme_dns_config_check(&sc->dns, &err) != 0) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0144)
                     "ACMEDNSTSIGKey %s: %s (for ACMECertificate %s)", sc->dns_tsig_file, err.msg, where);
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
