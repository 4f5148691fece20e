/*
 * mod_acme directives: parsing, validation (every error names the directive and the value), per-server
 * configuration with httpd's merging (server-wide values are inherited by virtual hosts, which may override
 * them; ACMECertificate belongs to the virtual host that says it).
 */
#include "mod_acme.h"

#include <apr_lib.h>

#include <http_core.h>
#include <util_cfgtree.h>
#include <apr_file_io.h>
#include <ctype.h>

#include "acme_aead.h"
#include "acme_directory.h"
#include "acme_exec.h"
#include "acme_err.h"
#include "acme_ondemand.h"
#include "acme_store.h"
#include "acme_x509.h"

mod_acme_srv_conf_t *
mod_acme_srv_conf(server_rec *s)
{
    return ap_get_module_config(s->module_config, &acme_module);
}

void *
mod_acme_create_srv_conf(apr_pool_t *p, server_rec *s)
{
    mod_acme_srv_conf_t *sc = apr_pcalloc(p, sizeof(*sc));

    sc->s = s;
    sc->accept_tos = ACME_UNSET;
    sc->cert_mode = ACME_CERT_UNSET;
    return sc;
}

void *
mod_acme_merge_srv_conf(apr_pool_t *p, void *basev, void *addv)
{
    mod_acme_srv_conf_t *base = basev, *add = addv;
    mod_acme_srv_conf_t *sc = apr_pcalloc(p, sizeof(*sc));

    sc->s = add->s;
    sc->cas = add->cas ? add->cas : base->cas;
    sc->contacts = add->contacts ? add->contacts : base->contacts;
    sc->accept_tos = add->accept_tos != ACME_UNSET ? add->accept_tos : base->accept_tos;
    sc->trusted_cert = add->trusted_cert ? add->trusted_cert : base->trusted_cert;
    sc->challenges = add->challenges ? add->challenges : base->challenges;
    sc->keytypes = add->keytypes ? add->keytypes : base->keytypes;
    sc->profile = add->profile ? add->profile : base->profile;
    if (add->eab_kid != NULL) {
        sc->eab_kid = add->eab_kid;
        sc->eab_key_file = add->eab_key_file;
        sc->eab_hmac = add->eab_hmac;
    } else {
        sc->eab_kid = base->eab_kid;
        sc->eab_key_file = base->eab_key_file;
        sc->eab_hmac = base->eab_hmac;
    }
    sc->preferred_chain = add->preferred_chain ? add->preferred_chain : base->preferred_chain;
    mod_acme_dns_merge(sc, base, add);
    sc->state_dir = add->state_dir ? add->state_dir : base->state_dir;
    sc->notify_cmd = add->notify_cmd ? add->notify_cmd : base->notify_cmd;
    sc->notify_timeout = add->notify_cmd ? add->notify_timeout : base->notify_timeout;
    sc->notify_expiring = add->notify_cmd ? add->notify_expiring : base->notify_expiring;
    sc->storage = add->storage ? add->storage : base->storage;
    sc->storage_shown = add->storage ? add->storage_shown : base->storage_shown;
    sc->storage_key = add->storage_key ? add->storage_key : base->storage_key;
    /* a certificate belongs to the vhost that asks for it: not inherited */
    sc->cert_mode = add->cert_mode;
    sc->cert_names = add->cert_names;
    sc->cert_directive = add->cert_directive;
    sc->ondemand = add->ondemand;
    /* on-demand limits are server-wide: the main server's */
    sc->od_ask = base->od_ask;
    sc->od_ask_timeout = base->od_ask_timeout;
    sc->od_max = base->od_max;
    sc->od_rate = base->od_rate;
    sc->od_refuse = base->od_refuse;
    sc->od_wait = base->od_wait;
    sc->od_waiting = base->od_waiting;
    sc->od_close = base->od_close;
    sc->od_unseen = base->od_unseen;
    return sc;
}

void *
mod_acme_create_dir_conf(apr_pool_t *p, char *dir)
{
    mod_acme_dir_conf_t *dc = apr_pcalloc(p, sizeof(*dc));

    (void) dir;
    dc->renew_allowed = ACME_UNSET;
    dc->renew_interval = ACME_UNSET;
    dc->format = ACME_UNSET;
    return dc;
}

void *
mod_acme_merge_dir_conf(apr_pool_t *p, void *basev, void *addv)
{
    mod_acme_dir_conf_t *base = basev, *add = addv;
    mod_acme_dir_conf_t *dc = apr_pcalloc(p, sizeof(*dc));

    dc->renew_allowed = add->renew_allowed != ACME_UNSET ? add->renew_allowed : base->renew_allowed;
    dc->renew_interval = add->renew_interval != ACME_UNSET ? add->renew_interval : base->renew_interval;
    dc->format = add->format != ACME_UNSET ? add->format : base->format;
    return dc;
}

const char *
mod_acme_state_dir(server_rec *base)
{
    mod_acme_srv_conf_t *sc = mod_acme_srv_conf(base);

    return sc->state_dir ? sc->state_dir : MOD_ACME_DEFAULT_STATE_DIR;
}

static mod_acme_srv_conf_t *
cmd_conf(cmd_parms *cmd)
{
    return ap_get_module_config(cmd->server->module_config, &acme_module);
}

static const char *
cmd_name(cmd_parms *cmd)
{
    return cmd->directive ? cmd->directive->directive : cmd->cmd->name;
}

static const char *
bad_value(cmd_parms *cmd, const char *value, const char *why)
{
    return apr_psprintf(cmd->pool, "%s: invalid value '%s': %s", cmd_name(cmd), value, why);
}

/* ---- the directives ---- */

static const char *
set_ca(cmd_parms *cmd, void *dc, const char *arg)
{
    mod_acme_srv_conf_t  *sc = cmd_conf(cmd);
    mod_acme_ca_t        *ca;
    acme_err_t            err;
    char                 *url;
    int                   i;

    (void) dc;
    url = acme_ca_resolve(arg, &err);
    if (url == NULL) {
        return bad_value(cmd, arg, err.msg);
    }
    if (sc->cas == NULL) {
        sc->cas = apr_array_make(cmd->pool, 2, sizeof(mod_acme_ca_t));
    }
    for (i = 0; i < sc->cas->nelts; i++) {
        if (strcmp(APR_ARRAY_IDX(sc->cas, i, mod_acme_ca_t).url, url) == 0) {
            free(url);
            return bad_value(cmd, arg, "given twice");
        }
    }
    ca = apr_array_push(sc->cas);
    ca->name = apr_pstrdup(cmd->pool, arg);
    ca->url = apr_pstrdup(cmd->pool, url);
    free(url);
    return NULL;
}

static const char *
set_contact(cmd_parms *cmd, void *dc, const char *arg)
{
    mod_acme_srv_conf_t  *sc = cmd_conf(cmd);
    const char           *addr = arg, *at;
    const char           *p;

    (void) dc;
    if (strncasecmp(addr, "mailto:", 7) == 0) {
        addr += 7;
    }
    at = strchr(addr, '@');
    if (at == NULL || at == addr || at[1] == '\0' || strchr(at + 1, '@') != NULL) {
        return bad_value(cmd, arg, "expected an e-mail address (admin@example.org or mailto:...)");
    }
    for (p = addr; *p; p++) {
        if ((unsigned char) *p <= ' ' || (unsigned char) *p >= 0x7f || strchr("<>,;\"", *p)) {
            return bad_value(cmd, arg, "expected an e-mail address (admin@example.org or mailto:...)");
        }
    }
    if (sc->contacts == NULL) {
        sc->contacts = apr_array_make(cmd->pool, 2, sizeof(const char *));
    }
    APR_ARRAY_PUSH(sc->contacts, const char *) =
        strncasecmp(arg, "mailto:", 7) == 0 ? apr_pstrdup(cmd->pool, arg)
                                            : apr_pstrcat(cmd->pool, "mailto:", arg, NULL);
    return NULL;
}

static const char *
set_tos(cmd_parms *cmd, void *dc, int flag)
{
    (void) dc;
    cmd_conf(cmd)->accept_tos = flag ? 1 : 0;
    return NULL;
}

static const char *
set_state_dir(cmd_parms *cmd, void *dc, const char *arg)
{
    const char *err = ap_check_cmd_context(cmd, NOT_IN_VIRTUALHOST | NOT_IN_DIR_CONTEXT);
    const char *path;

    (void) dc;
    if (err != NULL) {
        return err;
    }
    if (*arg == '\0') {
        return bad_value(cmd, arg, "empty path");
    }
    path = ap_server_root_relative(cmd->pool, arg);
    if (path == NULL) {
        return bad_value(cmd, arg, "not a valid path");
    }
    cmd_conf(cmd)->state_dir = path;
    return NULL;
}

/* "30", "30s", "5m", "2h", "14d": seconds, or -1 */
static long
parse_seconds(const char *v)
{
    char  *end;
    long   n;

    if (*v < '0' || *v > '9') {
        return -1;
    }
    n = strtol(v, &end, 10);
    if (n < 1 || n > 100L * 365 * 86400) {
        return -1;
    }
    switch (*end) {
    case '\0':
    case 's':
        break;
    case 'm':
        n *= 60;
        break;
    case 'h':
        n *= 3600;
        break;
    case 'd':
        n *= 86400;
        break;
    default:
        return -1;
    }
    return *end != '\0' && end[1] != '\0' ? -1 : n;
}

/* ACMENotifyCmd PROGRAM [timeout=TIME] [expiring=TIME]: checked here so apache2 -t refuses a bad one */
static const char *
set_notify_cmd(cmd_parms *cmd, void *dc, const char *prog, const char *o1, const char *o2)
{
    const char           *err = ap_check_cmd_context(cmd, NOT_IN_VIRTUALHOST | NOT_IN_DIR_CONTEXT);
    const char           *opts[2] = { o1, o2 };
    mod_acme_srv_conf_t  *sc = cmd_conf(cmd);
    acme_err_t            e;
    long                  v;
    int                   i;

    (void) dc;
    if (err != NULL) {
        return err;
    }
    if (acme_exec_check("the notification program", prog, &e) != 0) {
        return bad_value(cmd, prog, e.msg);
    }
    sc->notify_cmd = prog;
    for (i = 0; i < 2; i++) {
        if (opts[i] == NULL) {
            continue;
        }
        if (strncmp(opts[i], "timeout=", 8) == 0 && (v = parse_seconds(opts[i] + 8)) > 0) {
            sc->notify_timeout = v;
        } else if (strncmp(opts[i], "expiring=", 9) == 0 && (v = parse_seconds(opts[i] + 9)) > 0) {
            sc->notify_expiring = v;
        } else {
            return bad_value(cmd, opts[i], "timeout=TIME or expiring=TIME expected (TIME: 30s, 5m, 2h, 14d)");
        }
    }
    return NULL;
}

/* ACMEStorage URL [prefix=NAME]: a Redis URL, checked (not connected) here so apache2 -t refuses a bad one */
static const char *
set_storage(cmd_parms *cmd, void *dc, const char *url, const char *opt)
{
    const char    *err = ap_check_cmd_context(cmd, NOT_IN_VIRTUALHOST | NOT_IN_DIR_CONTEXT);
    const char    *full = url;
    char          *shown;
    acme_store_t  *st;
    acme_err_t     e;

    (void) dc;
    if (err != NULL) {
        return err;
    }
    shown = acme_store_url_redact(url);
    if (shown == NULL) {
        return "ACMEStorage: out of memory";
    }
    cmd_conf(cmd)->storage_shown = apr_pstrdup(cmd->pool, shown);
    free(shown);
    if (strncmp(url, "redis://", 8) != 0 && strncmp(url, "rediss://", 9) != 0) {
        return bad_value(cmd, cmd_conf(cmd)->storage_shown,
                         "a redis:// or rediss:// URL (the default storage is ACMEStateDir)");
    }
    if (opt != NULL) {
        if (strncmp(opt, "prefix=", 7) != 0 || opt[7] == '\0') {
            return bad_value(cmd, opt, "the optional second argument is prefix=NAME");
        }
        if (strstr(url, "prefix=") != NULL) {
            return bad_value(cmd, opt, "the URL has a prefix already");
        }
        full = apr_pstrcat(cmd->pool, url, strchr(url, '?') ? "&" : "?", opt, NULL);
        cmd_conf(cmd)->storage_shown = apr_pstrcat(cmd->pool, cmd_conf(cmd)->storage_shown,
                                                   strchr(url, '?') ? "&" : "?", opt, NULL);
    }
    st = acme_store_open(full, NULL, ACME_STORE_LAZY, &e);
    if (st == NULL) {
        return bad_value(cmd, cmd_conf(cmd)->storage_shown, e.msg);
    }
    acme_store_close(st);
    cmd_conf(cmd)->storage = apr_pstrdup(cmd->pool, full);
    return NULL;
}

static const char *
set_storage_key(cmd_parms *cmd, void *dc, const char *arg)
{
    const char       *err = ap_check_cmd_context(cmd, NOT_IN_VIRTUALHOST | NOT_IN_DIR_CONTEXT);
    const char       *path;
    acme_aead_key_t  *k;
    acme_err_t        e;

    (void) dc;
    if (err != NULL) {
        return err;
    }
    path = ap_server_root_relative(cmd->pool, arg);
    if (path == NULL || *arg == '\0') {
        return bad_value(cmd, arg, "not a valid path");
    }
    k = acme_aead_key_load(path, &e);
    if (k == NULL) {
        return bad_value(cmd, path, e.msg);
    }
    acme_aead_key_free(k);
    cmd_conf(cmd)->storage_key = path;
    return NULL;
}

static const char *
read_small_file(cmd_parms *cmd, const char *path, apr_size_t max, char **out, apr_size_t *outlen)
{
    apr_file_t   *f;
    apr_finfo_t   fi;
    apr_status_t  rv;
    apr_size_t    n;
    char          eb[128];

    rv = apr_file_open(&f, path, APR_FOPEN_READ, 0, cmd->temp_pool);
    if (rv != APR_SUCCESS) {
        return apr_psprintf(cmd->pool, "cannot open %s: %s", path, apr_strerror(rv, eb, sizeof(eb)));
    }
    rv = apr_file_info_get(&fi, APR_FINFO_SIZE | APR_FINFO_TYPE, f);
    if (rv != APR_SUCCESS || fi.filetype != APR_REG) {
        apr_file_close(f);
        return apr_psprintf(cmd->pool, "%s is not a regular file", path);
    }
    if ((apr_size_t) fi.size > max) {
        apr_file_close(f);
        return apr_psprintf(cmd->pool, "%s is too large", path);
    }
    n = (apr_size_t) fi.size;
    *out = apr_palloc(cmd->temp_pool, n + 1);
    if (n > 0) {
        rv = apr_file_read_full(f, *out, n, &n);
    }
    apr_file_close(f);
    if (rv != APR_SUCCESS) {
        return apr_psprintf(cmd->pool, "cannot read %s: %s", path, apr_strerror(rv, eb, sizeof(eb)));
    }
    (*out)[n] = '\0';
    *outlen = n;
    return NULL;
}

static const char *
set_trusted(cmd_parms *cmd, void *dc, const char *arg)
{
    const char      *path = ap_server_root_relative(cmd->pool, arg);
    const char      *why;
    char            *pem;
    apr_size_t       len;
    STACK_OF(X509)  *chain = NULL;
    acme_err_t       err;

    (void) dc;
    if (path == NULL) {
        return bad_value(cmd, arg, "not a valid path");
    }
    why = read_small_file(cmd, path, 4 * 1024 * 1024, &pem, &len);
    if (why != NULL) {
        return bad_value(cmd, arg, why);
    }
    if (acme_pem_chain_parse(pem, len, &chain, &err) != 0) {
        return bad_value(cmd, arg, apr_psprintf(cmd->pool, "no PEM certificates: %s", err.msg));
    }
    acme_chain_free(chain);
    cmd_conf(cmd)->trusted_cert = path;
    return NULL;
}

static const char *
set_challenge(cmd_parms *cmd, void *dc, const char *arg)
{
    mod_acme_srv_conf_t  *sc = cmd_conf(cmd);
    const char           *t;
    int                   i;

    (void) dc;
    if (strcasecmp(arg, "http-01") == 0) {
        t = "http-01";
    } else if (strcasecmp(arg, "tls-alpn-01") == 0) {
        t = "tls-alpn-01";
    } else if (strcasecmp(arg, "dns-01") == 0) {
        t = "dns-01";
    } else if (strcasecmp(arg, "dns-account-01") == 0) {
        t = "dns-account-01";
    } else if (strcasecmp(arg, "dns-persist-01") == 0) {
        t = "dns-persist-01";
    } else {
        return bad_value(cmd, arg, "expected http-01, tls-alpn-01, dns-01, dns-account-01 or dns-persist-01");
    }
    if (sc->challenges == NULL) {
        sc->challenges = apr_array_make(cmd->pool, 2, sizeof(const char *));
    }
    for (i = 0; i < sc->challenges->nelts; i++) {
        if (strcmp(APR_ARRAY_IDX(sc->challenges, i, const char *), t) == 0) {
            return bad_value(cmd, arg, "given twice");
        }
    }
    APR_ARRAY_PUSH(sc->challenges, const char *) = t;
    return NULL;
}

static const char *
set_keytype(cmd_parms *cmd, void *dc, const char *arg)
{
    mod_acme_srv_conf_t  *sc = cmd_conf(cmd);
    acme_keyspec_t        ks;
    acme_err_t            err;
    int                   i;

    (void) dc;
    if (acme_keyspec_parse(arg, &ks, &err) != 0) {
        return bad_value(cmd, arg, err.msg);
    }
    if (sc->keytypes == NULL) {
        sc->keytypes = apr_array_make(cmd->pool, 2, sizeof(acme_keyspec_t));
    }
    for (i = 0; i < sc->keytypes->nelts; i++) {
        acme_keyspec_t *o = &APR_ARRAY_IDX(sc->keytypes, i, acme_keyspec_t);
        if (o->alg == ks.alg) {
            return bad_value(cmd, arg, "one key type per algorithm (a second ECDSA or RSA key could "
                             "not be served by client capability)");
        }
    }
    APR_ARRAY_PUSH(sc->keytypes, acme_keyspec_t) = ks;
    return NULL;
}

static const char *
set_profile(cmd_parms *cmd, void *dc, const char *arg)
{
    const char *p;

    (void) dc;
    if (*arg == '\0' || strlen(arg) > 64) {
        return bad_value(cmd, arg, "expected a profile name");
    }
    for (p = arg; *p; p++) {
        if (!isalnum((unsigned char) *p) && !strchr("._-", *p)) {
            return bad_value(cmd, arg, "a profile name has letters, digits, '.', '_' and '-' only");
        }
    }
    cmd_conf(cmd)->profile = apr_pstrdup(cmd->pool, arg);
    return NULL;
}

static int
b64url_valid(const char *s, apr_size_t n)
{
    apr_size_t i;

    if (n == 0) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (!isalnum((unsigned char) s[i]) && s[i] != '-' && s[i] != '_') {
            return 0;
        }
    }
    return 1;
}

/*
 * ACMEExternalAccountBinding KID data:KEY | KEYFILE: the base64url HMAC key inline (as nginx-acme's
 * external_account_key takes it) or in a file. Errors name the directive and the file, never the key.
 */
static const char *
set_eab(cmd_parms *cmd, void *dc, const char *kid, const char *file)
{
    mod_acme_srv_conf_t  *sc = cmd_conf(cmd);
    const char           *path, *why;
    char                 *data, *p, *end;
    apr_size_t            len;

    (void) dc;
    if (file == NULL) {
        if (strcasecmp(kid, "none") == 0) {
            sc->eab_kid = "";           /* explicitly none (overrides an inherited binding) */
            sc->eab_key_file = NULL;
            sc->eab_hmac = NULL;
            return NULL;
        }
        return apr_psprintf(cmd->pool, "%s: expected KID data:KEY or KID KEYFILE (or none), got '%s' only",
                            cmd_name(cmd), kid);
    }
    if (*kid == '\0' || strlen(kid) > 256 || strpbrk(kid, " \t\r\n\"\\") != NULL) {
        return bad_value(cmd, kid, "not a usable key identifier");
    }
    if (strncmp(file, "data:", 5) == 0) {
        path = NULL;
        len = strlen(file + 5);
        data = apr_pstrmemdup(cmd->temp_pool, file + 5, len);
    } else {
        path = ap_server_root_relative(cmd->pool, file);
        if (path == NULL) {
            return bad_value(cmd, file, "not a valid path");
        }
        why = read_small_file(cmd, path, 4096, &data, &len);
        if (why != NULL) {
            if (strchr(file, '/') == NULL && strlen(file) >= 16 && b64url_valid(file, strlen(file))) {
                /* most likely the key itself, given without data: */
                return apr_psprintf(cmd->pool, "%s: no such file, and a key given inline needs the data: "
                                    "prefix (the value is not shown)", cmd_name(cmd));
            }
            return bad_value(cmd, file, why);
        }
    }
    /* surrounding white space and base64 padding are ignored */
    p = data;
    end = data + len;
    while (p < end && isspace((unsigned char) *p)) {
        p++;
    }
    while (end > p && (isspace((unsigned char) end[-1]) || end[-1] == '=')) {
        end--;
    }
    if (!b64url_valid(p, (apr_size_t) (end - p)) || (end - p) % 4 == 1) {
        memset(data, 0, len);
        /* never show the key itself */
        if (path == NULL) {
            return apr_psprintf(cmd->pool, "%s: the inline key (data:) is not base64url (the value is not "
                                "shown)", cmd_name(cmd));
        }
        return bad_value(cmd, file, "the file must hold the base64url-encoded HMAC key");
    }
    sc->eab_kid = apr_pstrdup(cmd->pool, kid);
    sc->eab_key_file = path;
    sc->eab_hmac = apr_pstrmemdup(cmd->pool, p, (apr_size_t) (end - p));
    memset(data, 0, len);
    return NULL;
}

static const char *
set_preferred_chain(cmd_parms *cmd, void *dc, const char *arg)
{
    (void) dc;
    if (*arg == '\0' || strlen(arg) > 256) {
        return bad_value(cmd, arg, "expected the issuer common name of the preferred chain");
    }
    cmd_conf(cmd)->preferred_chain = apr_pstrdup(cmd->pool, arg);
    return NULL;
}

static const char *
set_certificate(cmd_parms *cmd, void *dc, const char *arg)
{
    mod_acme_srv_conf_t  *sc = cmd_conf(cmd);
    acme_ident_t          id;
    acme_err_t            err;

    (void) dc;
    if (!cmd->server->is_virtual) {
        return apr_psprintf(cmd->pool, "%s must be used inside a <VirtualHost> (got '%s' in the main "
                            "server configuration)", cmd_name(cmd), arg);
    }
    if (cmd->directive != NULL) {
        sc->cert_directive = apr_psprintf(cmd->pool, "%s:%d", cmd->directive->filename,
                                          cmd->directive->line_num);
    }
    if (strcasecmp(arg, "on") == 0 || strcasecmp(arg, "off") == 0) {
        if (sc->cert_mode == ACME_CERT_NAMES) {
            return bad_value(cmd, arg, "'on' and 'off' cannot be combined with names");
        }
        sc->cert_mode = strcasecmp(arg, "on") == 0 ? ACME_CERT_ON : ACME_CERT_OFF;
        return NULL;
    }
    if (sc->cert_mode == ACME_CERT_ON || sc->cert_mode == ACME_CERT_OFF) {
        return bad_value(cmd, arg, "names cannot be combined with 'on' or 'off'");
    }
    if (acme_ident_parse(arg, &id, &err) != 0) {
        return bad_value(cmd, arg, err.msg);
    }
    acme_ident_free(&id);
    if (sc->cert_names == NULL) {
        sc->cert_names = apr_array_make(cmd->pool, 4, sizeof(const char *));
    }
    APR_ARRAY_PUSH(sc->cert_names, const char *) = apr_pstrdup(cmd->pool, arg);
    sc->cert_mode = ACME_CERT_NAMES;
    return NULL;
}

/* "30", "30s", "10m", "1h": seconds, at least 1 and at most a day; -1 otherwise. */
static int
parse_interval(const char *v)
{
    char  *end;
    long   n;

    if (!apr_isdigit(*v)) {
        return -1;
    }
    n = strtol(v, &end, 10);
    if (*end == 'm' && end[1] == '\0') {
        n *= 60;
    } else if (*end == 'h' && end[1] == '\0') {
        n *= 3600;
    } else if (!(*end == '\0' || (*end == 's' && end[1] == '\0'))) {
        return -1;
    }
    return n >= 1 && n <= 86400 ? (int) n : -1;
}

static const char *
set_status_renew(cmd_parms *cmd, void *dcv, const char *flag, const char *interval)
{
    mod_acme_dir_conf_t *dc = dcv;

    if (strcasecmp(flag, "on") == 0) {
        dc->renew_allowed = 1;
    } else if (strcasecmp(flag, "off") == 0) {
        dc->renew_allowed = 0;
    } else {
        return bad_value(cmd, flag, "on or off expected");
    }
    if (interval != NULL) {
        if (strncmp(interval, "interval=", 9) != 0 || (dc->renew_interval = parse_interval(interval + 9)) < 0) {
            return bad_value(cmd, interval, "interval=DURATION expected (seconds, or with s, m, h; 1s to 1 day)");
        }
        if (dc->renew_allowed != 1) {
            return bad_value(cmd, interval, "an interval needs 'on'");
        }
    }
    return NULL;
}

static const char *
set_status_format(cmd_parms *cmd, void *dcv, const char *arg)
{
    mod_acme_dir_conf_t *dc = dcv;

    if (strcasecmp(arg, "json") == 0) {
        dc->format = MOD_ACME_FORMAT_JSON;
    } else if (strcasecmp(arg, "prometheus") == 0) {
        dc->format = MOD_ACME_FORMAT_PROMETHEUS;
    } else {
        return bad_value(cmd, arg, "json or prometheus expected");
    }
    return NULL;
}

static const char *
set_ondemand(cmd_parms *cmd, void *dc, int on)
{
    (void) dc;
    if (!cmd->server->is_virtual) {
        return apr_psprintf(cmd->pool, "%s must be used inside a <VirtualHost>", cmd_name(cmd));
    }
    cmd_conf(cmd)->ondemand = on;
    return NULL;
}

/* "30", "30s", "10m", "1h", "2d": seconds (1 to 365 days); -1 otherwise. */
static long
parse_duration(const char *v)
{
    char  *end;
    long   n;

    if (!apr_isdigit(*v)) {
        return -1;
    }
    n = strtol(v, &end, 10);
    if (*end == 'm' && end[1] == '\0') {
        n *= 60;
    } else if (*end == 'h' && end[1] == '\0') {
        n *= 3600;
    } else if (*end == 'd' && end[1] == '\0') {
        n *= 86400;
    } else if (!(*end == '\0' || (*end == 's' && end[1] == '\0'))) {
        return -1;
    }
    return n >= 1 && n <= 365L * 86400 ? n : -1;
}

static const char *
set_od_ask(cmd_parms *cmd, void *dc, const char *url, const char *timeout)
{
    mod_acme_srv_conf_t  *sc = cmd_conf(cmd);
    const char           *e = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    long                  t;

    (void) dc;
    if (e != NULL) {
        return e;
    }
    if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0) {
        return bad_value(cmd, "(the URL)", "an http:// or https:// URL expected");
    }
    sc->od_ask = url;
    if (timeout != NULL) {
        if (strncmp(timeout, "timeout=", 8) != 0 || (t = parse_duration(timeout + 8)) < 0 || t > 60) {
            return bad_value(cmd, timeout, "timeout=DURATION expected (1s to 60s)");
        }
        sc->od_ask_timeout = (int) t;
    }
    return NULL;
}

static const char *
set_od_limits(cmd_parms *cmd, void *dc, const char *arg)
{
    mod_acme_srv_conf_t  *sc = cmd_conf(cmd);
    const char           *e = ap_check_cmd_context(cmd, GLOBAL_ONLY), *v;
    long                  n;
    char                 *end;

    (void) dc;
    if (e != NULL) {
        return e;
    }
    v = strchr(arg, '=');
    if (v == NULL || v[1] == '\0') {
        return bad_value(cmd, arg, "KEY=VALUE expected (max, rate, refuse_time, wait, waiting, unseen, fail)");
    }
    v++;
    if (strncmp(arg, "fail=", 5) == 0) {
        if (strcmp(v, "fallback") != 0 && strcmp(v, "close") != 0) {
            return bad_value(cmd, arg, "fail=fallback or fail=close expected");
        }
        sc->od_close = strcmp(v, "close") == 0;
        return NULL;
    }
    if (strncmp(arg, "unseen=", 7) == 0) {
        if ((n = parse_duration(v)) < 0) {
            return bad_value(cmd, arg, "a duration expected (seconds, or with s, m, h, d; at most 365d)");
        }
        sc->od_unseen = n;
        return NULL;
    }
    if (strncmp(arg, "refuse_time=", 12) == 0 || strncmp(arg, "wait=", 5) == 0) {
        n = parse_duration(v);
        if (n < 0 || (arg[0] == 'w' && n > 300)) {
            return bad_value(cmd, arg, "a duration expected (seconds, or with s, m, h, d; wait at most 300s)");
        }
        if (arg[0] == 'w') {
            sc->od_wait = (int) n;
        } else {
            sc->od_refuse = (int) n;
        }
        return NULL;
    }
    if (strncmp(arg, "max=", 4) != 0 && strncmp(arg, "rate=", 5) != 0 && strncmp(arg, "waiting=", 8) != 0) {
        return bad_value(cmd, arg, "unknown key (max, rate, refuse_time, wait, waiting, unseen, fail)");
    }
    n = apr_isdigit(*v) ? strtol(v, &end, 10) : -1;
    if (n < 1 || *end != '\0') {
        return bad_value(cmd, arg, "a positive number expected");
    }
    if (strncmp(arg, "max=", 4) == 0 && n <= MOD_ACME_OD_SLOTS / 2) {
        sc->od_max = (int) n;
    } else if (strncmp(arg, "rate=", 5) == 0 && n <= ACME_OD_RATE_MAX) {
        sc->od_rate = (int) n;
    } else if (strncmp(arg, "waiting=", 8) == 0 && n <= 4096) {
        sc->od_waiting = (int) n;
    } else {
        return bad_value(cmd, arg, apr_psprintf(cmd->pool, "out of range (max=1..%d, rate=1..%d, "
                                                "waiting=1..4096)", MOD_ACME_OD_SLOTS / 2, ACME_OD_RATE_MAX));
    }
    return NULL;
}

const command_rec mod_acme_cmds[] = {
    AP_INIT_ITERATE("ACMECertificateAuthority", set_ca, NULL, RSRC_CONF,
                    "CA names (letsencrypt, zerossl, ...) or ACME v2 directory URLs; several = fallback in order"),
    AP_INIT_ITERATE("ACMEContact", set_contact, NULL, RSRC_CONF,
                    "contact e-mail addresses for the ACME account"),
    AP_INIT_FLAG("ACMEAcceptTermsOfService", set_tos, NULL, RSRC_CONF,
                 "on: agree to the CA's terms of service"),
    AP_INIT_TAKE1("ACMEStateDir", set_state_dir, NULL, RSRC_CONF,
                  "where accounts, keys and certificates are kept (default " MOD_ACME_DEFAULT_STATE_DIR ")"),
    AP_INIT_TAKE12("ACMEStorage", set_storage, NULL, RSRC_CONF,
                   "redis://[user:password@]host:port[/db][?prefix=...] [prefix=NAME]: keep everything in Redis "
                   "(cluster mode); default: ACMEStateDir"),
    AP_INIT_TAKE123("ACMENotifyCmd", set_notify_cmd, NULL, RSRC_CONF,
                    "PROGRAM [timeout=TIME] [expiring=TIME]: run on certificate events (issued, renewed, "
                    "failed, expiring, ari-moved)"),
    AP_INIT_TAKE1("ACMEStorageKey", set_storage_key, NULL, RSRC_CONF,
                  "file with the AES-256-GCM key sealing private keys in Redis"),
    AP_INIT_TAKE1("ACMETrustedCertificate", set_trusted, NULL, RSRC_CONF,
                  "PEM file with the roots to trust for the ACME server's own TLS"),
    AP_INIT_ITERATE("ACMEChallenge", set_challenge, NULL, RSRC_CONF,
                    "allowed challenge types in order of preference: http-01 tls-alpn-01 dns-01 dns-account-01 "
                    "dns-persist-01 (a wildcard takes a DNS type)"),
    AP_INIT_TAKE1("ACMEDNSUpdate", mod_acme_set_dns_update, NULL, RSRC_CONF,
                  "rfc2136, hook or acme-dns: how dns-01 and dns-account-01 records are published"),
    AP_INIT_TAKE12("ACMEDNSHook", mod_acme_set_dns_hook, NULL, RSRC_CONF,
                   "PROGRAM [TIMEOUT]: ACMEDNSUpdate hook runs `PROGRAM add|del FQDN VALUE` (default 60s)"),
    AP_INIT_TAKE2("ACMEDNSAcmeDNS", mod_acme_set_dns_acmedns, NULL, RSRC_CONF,
                  "ACCOUNTFILE URL: ACMEDNSUpdate acme-dns's account file (read at start) and server"),
    AP_INIT_TAKE1("ACMEDNSTSIGKey", mod_acme_set_dns_tsig_key, NULL, RSRC_CONF,
                  "file with the TSIG key of the updates (BIND's key statement, or ALG:NAME:SECRET)"),
    AP_INIT_TAKE1("ACMEDNSServer", mod_acme_set_dns_server, NULL, RSRC_CONF,
                  "HOST[:PORT] the updates go to (default: the zone's primary, its SOA MNAME)"),
    AP_INIT_TAKE1("ACMEDNSResolver", mod_acme_set_dns_resolver, NULL, RSRC_CONF,
                  "HOST[:PORT] of the resolver for the zone lookups (default: /etc/resolv.conf)"),
    AP_INIT_TAKE1("ACMEDNSPropagationTimeout", mod_acme_set_dns_propagation, NULL, RSRC_CONF,
                  "how long every authoritative server may take to answer a new record (default 5m)"),
    AP_INIT_ITERATE("ACMEKeyType", set_keytype, NULL, RSRC_CONF,
                    "certificate key types (ecdsa:256, rsa:2048, ...); several = one certificate each"),
    AP_INIT_TAKE1("ACMEProfile", set_profile, NULL, RSRC_CONF,
                  "the CA's certificate profile to ask for"),
    AP_INIT_TAKE12("ACMEExternalAccountBinding", set_eab, NULL, RSRC_CONF,
                   "KID data:KEY or KID KEYFILE: external account binding (the base64url HMAC key inline or "
                   "in a file), or none"),
    AP_INIT_TAKE1("ACMEPreferredChain", set_preferred_chain, NULL, RSRC_CONF,
                  "issuer common name of the preferred alternate chain"),
    AP_INIT_ITERATE("ACMECertificate", set_certificate, NULL, RSRC_CONF,
                    "on (ServerName + ServerAlias), off, or the names to manage a certificate for"),
    AP_INIT_FLAG("ACMEOnDemand", set_ondemand, NULL, RSRC_CONF,
                 "on: a certificate for each new name of this vhost (ServerName, ServerAlias) at its first "
                 "TLS handshake"),
    AP_INIT_TAKE12("ACMEOnDemandAsk", set_od_ask, NULL, RSRC_CONF,
                   "URL [timeout=DURATION]: GET URL?domain=NAME must answer 2xx before a new name is ordered"),
    AP_INIT_ITERATE("ACMEOnDemandLimits", set_od_limits, NULL, RSRC_CONF,
                    "max=N rate=N refuse_time=DURATION wait=DURATION waiting=N unseen=DURATION fail=fallback|close"),
    /* not OR_*: never from .htaccess, where a vhost's users could turn it on */
    AP_INIT_TAKE12("ACMEStatusRenew", set_status_renew, NULL, RSRC_CONF | ACCESS_CONF,
                   "on|off [interval=DURATION]: the acme-status handler accepts POST ?renew=NAME, each "
                   "certificate at most once per DURATION (default 10m)"),
    AP_INIT_TAKE1("ACMEStatusFormat", set_status_format, NULL, RSRC_CONF | ACCESS_CONF,
                  "json|prometheus: what the acme-status handler answers a GET with (default json; "
                  "?format= in the request overrides it)"),
    { NULL }
};

/* ---- whole-configuration checks (check_config runs for apache2 -t too) ---- */

/*
 * apache2 -t does not run post_config, where mod_ssl tells us which vhosts have SSL. For the config test
 * the parsed directive tree says it well enough: the names of every <VirtualHost> with "SSLEngine on".
 */
static void
conftree_ssl_names(apr_pool_t *p, const ap_directive_t *vh, apr_array_header_t *out)
{
    const ap_directive_t  *c;
    apr_array_header_t    *names = apr_array_make(p, 4, sizeof(const char *));
    int                    ssl = 0;

    for (c = vh->first_child; c != NULL; c = c->next) {
        const char *args = c->args ? c->args : "", *w;

        if (strcasecmp(c->directive, "SSLEngine") == 0) {
            w = ap_getword_conf(p, &args);
            ssl = strcasecmp(w, "on") == 0;
        } else if (strcasecmp(c->directive, "ServerName") == 0 || strcasecmp(c->directive, "ServerAlias") == 0) {
            while (*(w = ap_getword_conf(p, &args)) != '\0') {
                char *n = apr_pstrdup(p, w), *colon;
                if (strstr(n, "://") != NULL) {
                    n = strstr(n, "://") + 3;
                }
                if (n[0] != '[' && (colon = strrchr(n, ':')) != NULL && strchr(n, ':') == colon) {
                    *colon = '\0';
                }
                APR_ARRAY_PUSH(names, const char *) = n;
            }
        }
    }
    if (ssl) {
        apr_array_cat(out, names);
    }
}

static int
name_covered(const char *name, const apr_array_header_t *ssl_names)
{
    int i;

    for (i = 0; i < ssl_names->nelts; i++) {
        const char *n = APR_ARRAY_IDX(ssl_names, i, const char *);
        if (strcasecmp(n, name) == 0 || (n[0] == '*' && acme_dns_match(n, name))) {
            return 1;
        }
    }
    return 0;
}

static void
config_test_ssl_warnings(apr_pool_t *ptemp, server_rec *base)
{
    const ap_directive_t  *d;
    apr_array_header_t    *ssl_names = apr_array_make(ptemp, 8, sizeof(const char *));
    server_rec            *s;

    for (d = ap_conftree; d != NULL; d = d->next) {
        if (strcasecmp(d->directive, "<VirtualHost") == 0) {
            conftree_ssl_names(ptemp, d, ssl_names);
        }
    }
    for (s = base; s != NULL; s = s->next) {
        mod_acme_srv_conf_t  *sc = mod_acme_srv_conf(s);
        apr_array_header_t   *names = apr_array_make(ptemp, 4, sizeof(const char *));
        int                   i;

        if (sc->cert_mode == ACME_CERT_ON) {
            APR_ARRAY_PUSH(names, const char *) = s->server_hostname;
            if (s->names) {
                apr_array_cat(names, s->names);
            }
            if (s->wild_names) {
                apr_array_cat(names, s->wild_names);
            }
        } else if (sc->cert_mode == ACME_CERT_NAMES) {
            apr_array_cat(names, sc->cert_names);
        } else {
            continue;
        }
        for (i = 0; i < names->nelts; i++) {
            const char *n = APR_ARRAY_IDX(names, i, const char *);
            if (n != NULL && !name_covered(n, ssl_names)) {
                ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, ACMELOGNO(0006)
                             "ACMECertificate (%s): no virtual host with SSLEngine on has the name %s; its "
                             "certificate would be obtained but not used", sc->cert_directive ? sc->cert_directive : "?",
                             n);
            }
        }
    }
}

/* "NAME:PORT (FILE:LINE)" of a virtual host, for messages (s->port is 0 unless ServerName has a port) */
const char *
mod_acme_vhost_id(apr_pool_t *p, const server_rec *s)
{
    unsigned port = s->port ? s->port : (s->addrs ? s->addrs->host_port : 0);

    return apr_psprintf(p, "%s:%u (%s:%d)", s->server_hostname ? s->server_hostname : "(no ServerName)",
                        port, s->defn_name ? s->defn_name : "?", s->defn_line_number);
}

/*
 * Two virtual hosts that ask for the same store name (first name + key type) must ask for the same names.
 * Checked here, and again where the certificates are built (ACME0034), so that apache2 -t refuses what
 * would stop the server at start.
 */
typedef struct {
    char                 *name;
    apr_array_header_t   *ids;          /* const char * identifier values, in order */
    server_rec           *s;
} conf_cert_t;

static apr_array_header_t *
conf_cert_ids(apr_pool_t *p, server_rec *s, mod_acme_srv_conf_t *sc)
{
    apr_array_header_t  *in = apr_array_make(p, 4, sizeof(const char *));
    apr_array_header_t  *ids = apr_array_make(p, 4, sizeof(acme_ident_t));
    acme_ident_t         id;
    acme_err_t           err;
    int                  i, j, dup;

    if (sc->cert_mode == ACME_CERT_ON) {
        APR_ARRAY_PUSH(in, const char *) = s->server_hostname;
        if (s->names) {
            apr_array_cat(in, s->names);
        }
        if (s->wild_names) {
            apr_array_cat(in, s->wild_names);
        }
    } else {
        apr_array_cat(in, sc->cert_names);
    }
    for (i = 0; i < in->nelts; i++) {
        const char *n = APR_ARRAY_IDX(in, i, const char *);
        if (n == NULL || acme_ident_parse(n, &id, &err) != 0) {
            return NULL;        /* reported by ACME0002-0004 or, at start, ACME0033 */
        }
        for (j = 0, dup = 0; j < ids->nelts && !dup; j++) {
            acme_ident_t *o = &APR_ARRAY_IDX(ids, j, acme_ident_t);
            dup = o->type == id.type && strcmp(o->value, id.value) == 0;
        }
        if (!dup) {
            acme_ident_t *slot = apr_array_push(ids);
            slot->type = id.type;
            slot->value = apr_pstrdup(p, id.value);
        }
        acme_ident_free(&id);
    }
    return ids;
}

static int
config_test_cert_names(apr_pool_t *p, server_rec *base)
{
    apr_array_header_t   *certs = apr_array_make(p, 8, sizeof(conf_cert_t));
    server_rec           *s;
    mod_acme_srv_conf_t  *sc;
    acme_keyspec_t        defks = ACME_KEYSPEC_DEFAULT;
    int                   i, j, k;

    for (s = base; s != NULL; s = s->next) {
        apr_array_header_t  *ids;

        sc = mod_acme_srv_conf(s);
        if (sc->cert_mode != ACME_CERT_ON && sc->cert_mode != ACME_CERT_NAMES) {
            continue;
        }
        ids = conf_cert_ids(p, s, sc);
        if (ids == NULL || ids->nelts == 0) {
            continue;
        }
        for (k = 0; k < (sc->keytypes ? sc->keytypes->nelts : 1); k++) {
            acme_keyspec_t  *ks = sc->keytypes ? &APR_ARRAY_IDX(sc->keytypes, k, acme_keyspec_t) : &defks;
            conf_cert_t     *c = NULL;
            char            *name;
            int              same;

            name = acme_cert_name((acme_ident_t *) ids->elts, (size_t) ids->nelts, ks);
            if (name == NULL) {
                continue;
            }
            for (i = 0; i < certs->nelts && c == NULL; i++) {
                if (strcmp(APR_ARRAY_IDX(certs, i, conf_cert_t).name, name) == 0) {
                    c = &APR_ARRAY_IDX(certs, i, conf_cert_t);
                }
            }
            if (c == NULL) {
                c = apr_array_push(certs);
                c->name = apr_pstrdup(p, name);
                c->ids = ids;
                c->s = s;
                free(name);
                continue;
            }
            free(name);
            same = c->ids->nelts == ids->nelts;
            for (j = 0; same && j < ids->nelts; j++) {
                same = strcmp(APR_ARRAY_IDX(c->ids, j, acme_ident_t).value,
                              APR_ARRAY_IDX(ids, j, acme_ident_t).value) == 0;
            }
            if (!same) {
                const char *had = "";
                for (j = 0; j < c->ids->nelts; j++) {
                    had = apr_pstrcat(p, had, j ? "," : "", APR_ARRAY_IDX(c->ids, j, acme_ident_t).value,
                                      NULL);
                }
                ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0034)
                             "ACMECertificate (%s): certificate '%s' is already configured with other "
                             "names (%s) by %s", sc->cert_directive ? sc->cert_directive : "?", c->name,
                             had, mod_acme_vhost_id(p, c->s));
                return -1;
            }
        }
    }
    return 0;
}

int
mod_acme_check_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *base)
{
    server_rec           *s;
    mod_acme_srv_conf_t  *sc;
    int                   warned_tos = 0;

    (void) pconf;
    (void) plog;
    for (s = base; s != NULL; s = s->next) {
        sc = mod_acme_srv_conf(s);
        if (sc->cert_mode != ACME_CERT_ON && sc->cert_mode != ACME_CERT_NAMES) {
            continue;
        }
        if (sc->cert_mode == ACME_CERT_ON) {
            acme_ident_t  id;
            acme_err_t    err;
            int           i;

            if (s->server_hostname == NULL) {
                ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0001)
                             "ACMECertificate on (%s): the virtual host has no ServerName",
                             sc->cert_directive ? sc->cert_directive : "?");
                return HTTP_INTERNAL_SERVER_ERROR;
            }
            if (acme_ident_parse(s->server_hostname, &id, &err) != 0) {
                ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0002)
                             "ACMECertificate on (%s): ServerName '%s' cannot be in a certificate: %s",
                             sc->cert_directive ? sc->cert_directive : "?", s->server_hostname, err.msg);
                return HTTP_INTERNAL_SERVER_ERROR;
            }
            acme_ident_free(&id);
            for (i = 0; s->names && i < s->names->nelts; i++) {
                const char *n = APR_ARRAY_IDX(s->names, i, const char *);
                if (acme_ident_parse(n, &id, &err) != 0) {
                    ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0003)
                                 "ACMECertificate on (%s): ServerAlias '%s' cannot be in a certificate: %s",
                                 sc->cert_directive ? sc->cert_directive : "?", n, err.msg);
                    return HTTP_INTERNAL_SERVER_ERROR;
                }
                acme_ident_free(&id);
            }
            for (i = 0; s->wild_names && i < s->wild_names->nelts; i++) {
                const char *n = APR_ARRAY_IDX(s->wild_names, i, const char *);
                if (acme_ident_parse(n, &id, &err) != 0) {
                    ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, ACMELOGNO(0004)
                                 "ACMECertificate on (%s): ServerAlias '%s' cannot be in a certificate "
                                 "(only a leading '*.' wildcard is possible): %s",
                                 sc->cert_directive ? sc->cert_directive : "?", n, err.msg);
                    return HTTP_INTERNAL_SERVER_ERROR;
                }
                acme_ident_free(&id);
            }
        }
        if (sc->accept_tos != 1 && !warned_tos) {
            warned_tos = 1;
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, ACMELOGNO(0005)
                         "ACMEAcceptTermsOfService is not on: a CA with terms of service will refuse to "
                         "create the account");
        }
        if (sc->eab_kid != NULL && *sc->eab_kid == '\0') {
            sc->eab_kid = NULL;
        }
    }
    if (mod_acme_dns_check(ptemp, base) != 0) {
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    if (config_test_cert_names(ptemp, base) != 0) {
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    sc = mod_acme_srv_conf(base);
    if (sc->storage_key != NULL && sc->storage == NULL) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, base, ACMELOGNO(0007)
                     "ACMEStorageKey %s: applies to ACMEStorage redis://... only (the state directory keeps "
                     "keys in files only its owner can read)", sc->storage_key);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    if (sc->storage != NULL && sc->storage_key == NULL) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, base, ACMELOGNO(0008)
                     "ACMEStorage %s without ACMEStorageKey: private keys are kept in Redis unencrypted",
                     sc->storage_shown);
    }
    if (ap_state_query(AP_SQ_RUN_MODE) == AP_SQ_RM_CONFIG_TEST) {
        config_test_ssl_warnings(ptemp, base);     /* at startup mod_acme_ssl_check() says it exactly */
    }
    (void) ptemp;
    return OK;
}
