/* acmectl: the admin's command line for the ACME core and the state directory the modules share. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <signal.h>
#include <unistd.h>
#include <jansson.h>
#include <openssl/pem.h>

#include "acme_err.h"
#include "acme_loop.h"
#include "acme_client.h"
#include "acme_issue.h"
#include "acme_store.h"
#include "acme_sched.h"
#include "acme_x509.h"
#include "acme_directory.h"
#include "acme_http.h"
#include "acme_manager.h"
#include "acme_exec.h"
#include "acme_notify.h"
#include "acme_revocation.h"
#include "chsrv.h"
#include "import.h"

#define DEFAULT_STATE "/var/lib/acme"

typedef struct {
    const char      *state;
    const char      *storage;       /* --storage: a directory or redis:// URL, instead of --state */
    const char      *storage_key;   /* --storage-key: seals secrets in Redis */
    char            *storage_url;   /* --storage with --prefix NAME added, owned */
    const char      *ca;
    const char      *ca_cert;
    const char     **contact;
    size_t           ncontact;
    int              agree_tos;
    int              insecure;
    const char      *eab_kid;
    char            *eab_hmac;         /* base64url, owned (acme_free_secret) */
    const char      *account_key;
    acme_keyspec_t   account_keyspec;
    int              verbose;

    acme_store_t    *store;
    acme_loop_t     *loop;
    acme_client_t   *client;
    char            *ca_url;
    acme_ident_error_t *ident_errors;  /* of the last failed issuance */
    size_t           nident_errors;
    int              persist_checked;   /* the last failed issuance checked dns-persist-01 records: */
    acme_persist_note_t *persist_notes; /* the certificate's notes after it */
    size_t           npersist_notes;
} ctl_t;

/* A blocking wait on the loop for one asynchronous operation. */
typedef struct {
    int          done;
    int          failed;
    acme_err_t   err;
} wait_t;

static void
wait_done(void *arg, const acme_err_t *err)
{
    wait_t *w = arg;

    w->done = 1;
    if (err != NULL) {
        w->failed = 1;
        w->err = *err;
    }
}

static int
wait_run(ctl_t *ctl, wait_t *w)
{
    while (!w->done) {
        acme_loop_run(ctl->loop, &w->done, -1);
        if (!w->done && acme_loop_pending(ctl->loop) == 0) {
            acme_err_set(&w->err, ACME_ERR_INTERNAL, "nothing left to wait for");
            w->failed = 1;
            break;
        }
    }
    if (w->failed) {
        fprintf(stderr, "acmectl: %s\n", w->err.msg);
        if (w->err.retry_after > 0) {
            fprintf(stderr, "acmectl: the CA asks to retry after %ld s\n", w->err.retry_after);
        }
        return -1;
    }
    return 0;
}

static void
usage(FILE *f)
{
    fprintf(f,
"usage: acmectl [--state DIR | --storage DIR|redis://... [--prefix NAME]] [--storage-key FILE] [--ca URL|NAME] [--ca-cert FILE]\n"
"               [--insecure] [--contact EMAIL]... [--agree-tos]\n"
"               [--eab-kid KID --eab-hmac-key data:B64URL|FILE] [--account-key FILE | --account-key-type ALG]\n"
"               [-v|--verbose] [-h|--help] COMMAND [ARGS]\n"
"\n"
"commands:\n"
"  issue [--ignore-server] [--challenge TYPE[,TYPE]...] [--http-listen ADDR:PORT] [--tls-listen ADDR:PORT]\n"
"        [--dns-update rfc2136|hook|acme-dns] [--tsig-key|--dns-tsig-key FILE] [--dns-server HOST[:PORT]]\n"
"        [--dns-resolver ADDR[:PORT]] [--dns-hook PROGRAM [--dns-hook-timeout SECONDS]]\n"
"        [--acme-dns ACCOUNTFILE --acme-dns-url URL] [--dns-propagation-timeout SECONDS] [--key ALG]\n"
"        [--profile NAME] [--preferred-chain CN] [--poll-timeout SECONDS] NAME...\n"
"        TYPE: http-01, tls-alpn-01, dns-01 or dns-account-01 (records published by one of --tsig-key,\n"
"        --dns-hook, --acme-dns), dns-persist-01 (its record checked); a wildcard takes a DNS type\n"
"  renew [--force] [--ignore-server] [challenge options as for issue] NAME\n"
"  run [issue options] [--fallback-ca URL|NAME]... [--status-file FILE] [--notify PROGRAM] NAME...\n"
"        keep one certificate issued and renewed in the foreground (SIGUSR1: renew now); PROGRAM is\n"
"        run as PROGRAM EVENT NAME on issued, renewed, failed, expiring, ari-moved\n"
"  ari-check [NAME...]\n"
"        ask the CA's renewal information (RFC 9773) of every certificate, or of those named, again and\n"
"        store it; renews nothing (renew, run or the server act on a window that says renew now)\n"
"  dns-persist-record [--wildcard] [--until UNIXTIME] [--issuer-domain-name NAME]\n"
"        [--publish --tsig-key FILE|--dns-hook PROGRAM] NAME...\n"
"        print the dns-persist-01 TXT record(s) to create once for the account's CA (--publish: and\n"
"        publish them once, with the --dns-update options of issue)\n"
"  list\n"
"  status --json\n"
"  revoke [--reason N] [--with-cert-key] [--notify PROGRAM] NAME\n"
"  account show|find|rollover [--key ALG]|update|deactivate\n"
"  migrate [--from DIR|URL] --to DIR|URL [--from-key FILE] [--to-key FILE]\n"
"        copy every account, certificate, key and pending order from one store to another\n"
"        (--from defaults to the current storage, the keys to --storage-key)\n"
"  import [--dry-run] certbot [DIR] | mod_md [DIR]\n"
"        take certbot's lineages (DIR default /etc/letsencrypt) or mod_md's domains (DIR: its MDStoreDir,\n"
"        default /etc/apache2/md) with their accounts into the store: served at once, renewed on schedule\n"
"  upgrade-storage\n"
"        seal and sign in place what the --storage redis://... holds unsealed or unsigned (written before\n"
"        --storage-key was set, or by an older version); run once, when Redis' content is trusted\n"
"\n"
"CA names: letsencrypt, letsencrypt-staging, zerossl, google, google-staging, buypass,\n"
"buypass-staging, or a directory URL. State directory default: " DEFAULT_STATE "\n");
}

static void
ctl_forged(void *arg, const char *msg)
{
    (void) arg;
    fprintf(stderr, "acmectl: %s\n", msg);
}

static int
b64url_valid(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (!isalnum((unsigned char) s[i]) && s[i] != '-' && s[i] != '_') {
            return 0;
        }
    }
    return n > 0 && n % 4 != 1;
}

/*
 * --eab-hmac-key data:KEY | FILE (as nginx's external_account_key); a bare key that names no file is still
 * taken, as before. The key is never part of a message.
 */
static char *
eab_key_read(const char *arg)
{
    const char  *p, *end, *file = NULL;
    char         buf[4097];
    size_t       n;
    FILE        *f;
    char        *key;

    if (strncmp(arg, "data:", 5) == 0) {
        p = arg + 5;
        n = strlen(p);
    } else if ((f = fopen(arg, "r")) != NULL) {
        n = fread(buf, 1, sizeof(buf), f);
        if (ferror(f) || n == sizeof(buf)) {
            fprintf(stderr, "acmectl: --eab-hmac-key: cannot read %s (at most 4096 bytes)\n", arg);
            fclose(f);
            explicit_bzero(buf, sizeof(buf));
            return NULL;
        }
        fclose(f);
        p = buf;
        file = arg;
    } else if (strchr(arg, '/') == NULL && b64url_valid(arg, strlen(arg))) {
        p = arg;
        n = strlen(p);
    } else {
        fprintf(stderr, "acmectl: --eab-hmac-key: not data:KEY and not a readable file (the value is not "
                "shown)\n");
        return NULL;
    }
    end = p + n;
    while (p < end && isspace((unsigned char) *p)) {
        p++;
    }
    while (end > p && (isspace((unsigned char) end[-1]) || end[-1] == '=')) {
        end--;
    }
    if (!b64url_valid(p, (size_t) (end - p))) {
        fprintf(stderr, "acmectl: --eab-hmac-key: %s%s is not a base64url HMAC key (the value is not shown)\n",
                file ? "the content of " : "the inline key", file ? file : "");
        explicit_bzero(buf, sizeof(buf));
        return NULL;
    }
    key = acme_strndup(p, (size_t) (end - p));
    explicit_bzero(buf, sizeof(buf));
    if (key == NULL) {
        fprintf(stderr, "acmectl: out of memory\n");
    }
    return key;
}

static int
ctl_open_store(ctl_t *ctl, int create)
{
    acme_err_t err;

    ctl->store = acme_store_open(ctl->storage ? ctl->storage : ctl->state, ctl->storage_key,
                                 create ? ACME_STORE_CREATE : 0, &err);
    if (ctl->store == NULL) {
        fprintf(stderr, "acmectl: %s\n", err.msg);
        return -1;
    }
    acme_store_on_forged(ctl->store, ctl_forged, NULL);
    return 0;
}

static void
ctl_log(void *data, int level, const char *msg)
{
    ctl_t *ctl = data;

    if (level <= ACME_LOG_NOTICE || ctl->verbose) {
        fprintf(stderr, "%s\n", msg);
    }
}

static int
ctl_client(ctl_t *ctl, const char *ca_override)
{
    acme_err_t          err;
    acme_client_conf_t  conf;
    acme_host_t         host;
    const char         *ca = ca_override ? ca_override : ctl->ca;

    if (ca == NULL) {
        ca = "letsencrypt";
    }
    ctl->ca_url = acme_ca_resolve(ca, &err);
    if (ctl->ca_url == NULL) {
        fprintf(stderr, "acmectl: --ca: %s\n", err.msg);
        return -1;
    }
    memset(&host, 0, sizeof(host));
    host.data = ctl;
    host.log = ctl_log;
    ctl->loop = acme_loop_new(&host, ctl->verbose ? ACME_LOG_DEBUG : ACME_LOG_INFO, &err);
    if (ctl->loop == NULL) {
        fprintf(stderr, "acmectl: %s\n", err.msg);
        return -1;
    }
    memset(&conf, 0, sizeof(conf));
    conf.directory_url = ctl->ca_url;
    conf.ca_file = ctl->ca_cert;
    conf.verify = !ctl->insecure;
    conf.contact = ctl->contact;
    conf.ncontact = ctl->ncontact;
    conf.agree_tos = ctl->agree_tos;
    conf.eab_kid = ctl->eab_kid;
    conf.eab_hmac_key = ctl->eab_hmac;
    conf.account_key_file = ctl->account_key;
    conf.account_keyspec = ctl->account_keyspec;
    if (ctl->insecure) {
        fprintf(stderr, "acmectl: warning: TLS verification of the CA is off (--insecure)\n");
    }
    ctl->client = acme_client_new(ctl->loop, ctl->store, &conf, &err);
    if (ctl->client == NULL) {
        fprintf(stderr, "acmectl: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int
ctl_ready_err(ctl_t *ctl, acme_err_t *fail)
{
    wait_t      w;
    int         rc;

    memset(&w, 0, sizeof(w));
    if (acme_client_ready(ctl->client, wait_done, &w, &w.err) != 0) {
        fprintf(stderr, "acmectl: %s\n", w.err.msg);
        rc = -1;
    } else {
        rc = wait_run(ctl, &w);
    }
    if (rc != 0 && fail != NULL) {
        *fail = w.err;
    }
    return rc;
}

static int
ctl_ready(ctl_t *ctl)
{
    return ctl_ready_err(ctl, NULL);
}

/* ---- issue / renew ---- */

typedef struct {
    const char       *challenge;
    const char       *http_listen;
    const char       *tls_listen;
    const char       *key;
    const char       *profile;
    int               profile_stored;   /* profile from the stored certificate, not --profile */
    const char       *preferred_chain;
    int               force;
    int               ignore_server;
    long              poll_timeout;
    const char       *tsig_key;
    const char       *dns_update;
    const char       *dns_server;
    const char       *dns_resolver;
    long              dns_timeout;
    const char       *dns_hook;
    long              dns_hook_timeout;
    const char       *acme_dns;
    const char       *acme_dns_url;
    int               dns_lookup;       /* dns-persist-01 alone: o->dns for its lookups only */
    acme_dns_config_t dns;
    acmectl_chsrv_t  *srv;
} issue_opts_t;

static int
ch_publish(void *data, const char *type, const acme_ident_t *id, const char *token, const char *ka,
    acme_err_t *err)
{
    issue_opts_t *o = data;

    if (strcmp(type, "http-01") == 0) {
        return acmectl_chsrv_add_http(o->srv, id, token, ka, err);
    }
    return acmectl_chsrv_add_tlsalpn(o->srv, id, ka, err);
}

static void
ch_withdraw(void *data, const char *type, const acme_ident_t *id, const char *token)
{
    issue_opts_t *o = data;

    if (strcmp(type, "http-01") == 0) {
        acmectl_chsrv_remove_http(o->srv, token);
    } else {
        acmectl_chsrv_remove_tlsalpn(o->srv, id);
    }
}

typedef struct {
    wait_t  w;
    char   *name;
    ctl_t  *ctl;
} issue_wait_t;

static void
issue_done(void *arg, const char *name, const acme_err_t *err)
{
    issue_wait_t *iw = arg;
    size_t        fresh;

    iw->name = acme_strdup(name);
    if (err != NULL) {
        acme_ident_errors_free(iw->ctl->ident_errors, iw->ctl->nident_errors);
        iw->ctl->nident_errors = acme_issue_take_ident_errors(&iw->ctl->ident_errors);
    }
    acme_persist_notes_free(iw->ctl->persist_notes, iw->ctl->npersist_notes);
    iw->ctl->persist_notes = NULL;
    iw->ctl->npersist_notes = 0;
    /* after a success they are stored with the certificate; record_failure stores them otherwise */
    iw->ctl->persist_checked = err != NULL && acme_issue_take_persist_notes(&iw->ctl->persist_notes,
                                                                           &iw->ctl->npersist_notes, &fresh);
    wait_done(&iw->w, err);
}

static int
parse_issue_opt(int c, issue_opts_t *o)
{
    switch (c) {
    case 'c': o->challenge = optarg; return 0;
    case 'H': o->http_listen = optarg; return 0;
    case 'T': o->tls_listen = optarg; return 0;
    case 'k': o->key = optarg; return 0;
    case 'p': o->profile = optarg; return 0;
    case 'P': o->preferred_chain = optarg; return 0;
    case 'f': o->force = 1; return 0;
    case 'G': o->ignore_server = 1; return 0;
    case 'W':
        o->poll_timeout = strtol(optarg, NULL, 10);
        if (o->poll_timeout <= 0) {
            fprintf(stderr, "acmectl: --poll-timeout \"%s\": a number of seconds\n", optarg);
            return -1;
        }
        return 0;
    case 'K': o->tsig_key = optarg; return 0;
    case 'U':
        /* the method, named as nginx's dns_update; its own options must match it */
        if (strcmp(optarg, "rfc2136") != 0 && strcmp(optarg, "hook") != 0 && strcmp(optarg, "acme-dns") != 0) {
            fprintf(stderr, "acmectl: --dns-update \"%s\": use rfc2136, hook or acme-dns\n", optarg);
            return -1;
        }
        o->dns_update = optarg;
        return 0;
    case 'D': o->dns_server = optarg; return 0;
    case 'R': o->dns_resolver = optarg; return 0;
    case 'X':
        o->dns_timeout = strtol(optarg, NULL, 10);
        if (o->dns_timeout <= 0) {
            fprintf(stderr, "acmectl: --dns-propagation-timeout \"%s\": a number of seconds\n", optarg);
            return -1;
        }
        return 0;
    case 'j': o->dns_hook = optarg; return 0;
    case 'J':
        o->dns_hook_timeout = strtol(optarg, NULL, 10);
        if (o->dns_hook_timeout <= 0) {
            fprintf(stderr, "acmectl: --dns-hook-timeout \"%s\": a number of seconds\n", optarg);
            return -1;
        }
        return 0;
    case 'a': o->acme_dns = optarg; return 0;
    case 'u': o->acme_dns_url = optarg; return 0;
    }
    return -1;
}

#define ISSUE_TYPES_MAX  5

/*
 * --challenge: types in preference order ("http-01,dns-01": http-01 where it can, dns-01 for wildcards).
 * dns-01 reads the TSIG key file now. 0, or 2 (usage) with a message.
 */
static int
issue_types(issue_opts_t *o, char *buf, size_t len, const char **types, size_t *ntypes)
{
    static const char  *known[] = { "http-01", "tls-alpn-01", "dns-01", "dns-account-01", "dns-persist-01" };
    acme_err_t          err;
    char               *t, *save = NULL;
    size_t              i;
    int                 dns = 0, persist = 0;

    *ntypes = 0;
    snprintf(buf, len, "%s", o->challenge ? o->challenge : "http-01");
    for (t = strtok_r(buf, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        for (i = 0; i < 5 && strcmp(t, known[i]) != 0; i++) {
            /* void */
        }
        if (i == 5 || *ntypes == ISSUE_TYPES_MAX) {
            fprintf(stderr, "acmectl: --challenge \"%s\": use http-01, tls-alpn-01, dns-01, dns-account-01 or "
                    "dns-persist-01 (a list: in order of preference)\n", o->challenge);
            return 2;
        }
        types[(*ntypes)++] = t;
        dns |= i == 2 || i == 3;
        persist |= i == 4;
    }
    if (*ntypes == 0) {
        fprintf(stderr, "acmectl: --challenge: no type\n");
        return 2;
    }
    if (!dns && persist) {
        /* dns-persist-01 publishes nothing: its record is only looked up */
        if (o->tsig_key || o->dns_server || o->dns_timeout || o->dns_hook || o->dns_hook_timeout || o->acme_dns
            || o->acme_dns_url)
        {
            fprintf(stderr, "acmectl: dns-persist-01 publishes nothing (create its record once: acmectl "
                    "dns-persist-record); --tsig-key, --dns-hook and --acme-dns are for dns-01 and "
                    "dns-account-01\n");
            return 2;
        }
        acme_dns_config_free(&o->dns);
        o->dns.resolver = o->dns_resolver ? acme_strdup(o->dns_resolver) : NULL;
        o->dns_lookup = 1;
        return 0;
    }
    if (!dns) {
        if (o->tsig_key || o->dns_update || o->dns_server || o->dns_resolver || o->dns_timeout || o->dns_hook
            || o->dns_hook_timeout || o->acme_dns || o->acme_dns_url)
        {
            fprintf(stderr, "acmectl: --dns-update, --tsig-key, --dns-hook, --acme-dns and the other --dns-... options "
                    "need --challenge dns-01 or dns-account-01\n");
            return 2;
        }
        return 0;
    }
    if ((o->tsig_key != NULL) + (o->dns_hook != NULL) + (o->acme_dns != NULL) != 1) {
        fprintf(stderr, "acmectl: --challenge dns-01 (or dns-account-01) needs one way to publish its records: --tsig-key FILE "
                "(RFC 2136 updates), --dns-hook PROGRAM or --acme-dns ACCOUNTFILE\n");
        return 2;
    }
    if (o->dns_update != NULL
        && strcmp(o->dns_update, o->tsig_key ? "rfc2136" : o->dns_hook ? "hook" : "acme-dns") != 0)
    {
        fprintf(stderr, "acmectl: --dns-update %s: its option is %s\n", o->dns_update,
                strcmp(o->dns_update, "rfc2136") == 0 ? "--tsig-key FILE"
                : strcmp(o->dns_update, "hook") == 0 ? "--dns-hook PROGRAM" : "--acme-dns ACCOUNTFILE");
        return 2;
    }
    if ((o->dns_server != NULL && o->tsig_key == NULL) || (o->dns_hook_timeout && o->dns_hook == NULL)
        || ((o->acme_dns_url != NULL) != (o->acme_dns != NULL)))
    {
        fprintf(stderr, "acmectl: %s\n", o->dns_server != NULL && o->tsig_key == NULL
                ? "--dns-server is for --tsig-key (RFC 2136 updates)"
                : o->dns_hook_timeout && o->dns_hook == NULL ? "--dns-hook-timeout is for --dns-hook"
                : "--acme-dns ACCOUNTFILE and --acme-dns-url URL go together");
        return 2;
    }
    if (o->dns.method == ACME_DNS_NONE) {
        const char *opt = o->tsig_key ? "--tsig-key" : o->dns_hook ? "--dns-hook" : "--acme-dns";
        const char *val = o->tsig_key ? o->tsig_key : o->dns_hook ? o->dns_hook : o->acme_dns;

        memset(&o->dns, 0, sizeof(o->dns));
        if (o->tsig_key != NULL) {
            if (acme_tsig_key_load(o->tsig_key, &o->dns.tsig, &err) != 0) {
                fprintf(stderr, "acmectl: --tsig-key: %s\n", err.msg);
                return 2;
            }
            o->dns.method = ACME_DNS_RFC2136;
        } else if (o->dns_hook != NULL) {
            /* the hook is run by its absolute path, as a server would */
            o->dns.hook = realpath(o->dns_hook, NULL);
            if (o->dns.hook == NULL) {
                fprintf(stderr, "acmectl: --dns-hook %s: %s\n", o->dns_hook, strerror(errno));
                return 2;
            }
            o->dns.method = ACME_DNS_HOOK;
            o->dns.hook_timeout = o->dns_hook_timeout;
        } else {
            if (acme_acmedns_load(o->acme_dns, &o->dns, &err) != 0) {
                fprintf(stderr, "acmectl: --acme-dns: %s\n", err.msg);
                return 2;
            }
            o->dns.method = ACME_DNS_ACMEDNS;
            o->dns.acmedns_url = acme_strdup(o->acme_dns_url);
        }
        o->dns.server = o->dns_server ? acme_strdup(o->dns_server) : NULL;
        o->dns.resolver = o->dns_resolver ? acme_strdup(o->dns_resolver) : NULL;
        o->dns.propagation_timeout = o->dns_timeout;
        if (acme_dns_config_check(&o->dns, &err) != 0) {
            fprintf(stderr, "acmectl: %s %s: %s\n", opt, val, err.msg);
            acme_dns_config_free(&o->dns);
            return 2;
        }
    }
    return 0;
}

static int
has_type(const char **types, size_t n, const char *type)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (strcmp(types[i], type) == 0) {
            return 1;
        }
    }
    return 0;
}

static const struct option issue_longopts[] = {
    { "challenge", required_argument, NULL, 'c' },
    { "http-listen", required_argument, NULL, 'H' },
    { "tls-listen", required_argument, NULL, 'T' },
    { "key", required_argument, NULL, 'k' },
    { "profile", required_argument, NULL, 'p' },
    { "preferred-chain", required_argument, NULL, 'P' },
    { "force", no_argument, NULL, 'f' },
    { "ignore-server", no_argument, NULL, 'G' },
    { "poll-timeout", required_argument, NULL, 'W' },
    { "tsig-key", required_argument, NULL, 'K' },
    { "dns-tsig-key", required_argument, NULL, 'K' },
    { "dns-update", required_argument, NULL, 'U' },
    { "dns-server", required_argument, NULL, 'D' },
    { "dns-resolver", required_argument, NULL, 'R' },
    { "dns-propagation-timeout", required_argument, NULL, 'X' },
    { "dns-hook", required_argument, NULL, 'j' },
    { "dns-hook-timeout", required_argument, NULL, 'J' },
    { "acme-dns", required_argument, NULL, 'a' },
    { "acme-dns-url", required_argument, NULL, 'u' },
    { NULL, 0, NULL, 0 }
};

/*
 * The server (nginx, Apache) that manages the state directory we opened, by the lock it holds there while
 * it runs (ACME_SERVER_LOCK_*), or NULL. A Redis store has no such lock: its certificate lock is enough.
 */
static const char *
ctl_running_server(ctl_t *ctl)
{
    static const char  *locks[][2] = {
        { ACME_SERVER_LOCK_NGINX, "nginx" }, { ACME_SERVER_LOCK_APACHE, "Apache" }
    };
    acme_lock_t        *lk;
    acme_err_t          err;
    size_t              i;

    if (acme_store_lock_lease_ms(ctl->store) != 0) {
        return NULL;
    }
    for (i = 0; i < sizeof(locks) / sizeof(locks[0]); i++) {
        lk = NULL;
        if (ctl->store->ops->lock(ctl->store, locks[i][0], &lk, &err) == 0) {
            return locks[i][1];
        }
        if (lk != NULL) {
            ctl->store->ops->unlock(lk);
        }
    }
    return NULL;
}

static int
issue_names(ctl_t *ctl, issue_opts_t *o, acme_ident_t *ids, size_t nids, const acme_keyspec_t *ks,
    const char *replaces, acme_err_t *fail)
{
    acme_issue_req_t       req;
    acme_challenge_host_t  ch;
    issue_wait_t           iw;
    acme_err_t             err;
    const char            *types[ISSUE_TYPES_MAX];
    char                   typebuf[100];
    size_t                 ntypes;
    acme_issue_t          *job;
    int                    rc, http, tls;

    if (issue_types(o, typebuf, sizeof(typebuf), types, &ntypes) != 0) {
        return 2;
    }
    if (o->profile != NULL && !o->profile_stored) {
        /* an explicit --profile the CA does not list is a typo: refused before ordering (a stored one
         * the CA dropped falls back to its default in the core) */
        const acme_directory_t *dir;

        if (ctl_ready_err(ctl, fail) != 0) {
            return 1;
        }
        dir = acme_client_directory(ctl->client);
        if (dir->nprofiles > 0 && !acme_directory_has_profile(dir, o->profile)) {
            acme_err_set(&err, ACME_ERR_CONFIG, "--profile: the CA %s does not offer the profile \"%s\"",
                         acme_client_directory_url(ctl->client), o->profile);
            fprintf(stderr, "acmectl: %s\n", err.msg);
            if (fail != NULL) {
                *fail = err;
            }
            return 1;
        }
    }
    http = has_type(types, ntypes, "http-01");
    tls = has_type(types, ntypes, "tls-alpn-01");
    if (http && o->http_listen == NULL) {
        o->http_listen = ":80";
    }
    if (tls && o->tls_listen == NULL) {
        o->tls_listen = ":443";
    }
    o->srv = acmectl_chsrv_start(http ? o->http_listen : NULL, tls ? o->tls_listen : NULL, &err);
    if (o->srv == NULL) {
        fprintf(stderr, "acmectl: %s\n", err.msg);
        if (fail != NULL) {
            *fail = err;    /* a local failure is recorded with its reason too */
        }
        return 1;
    }
    memset(&req, 0, sizeof(req));
    req.ids = ids;
    req.nids = nids;
    req.keyspec = *ks;
    req.challenge_types = types;
    req.nchallenge_types = ntypes;
    req.dns = o->dns.method != ACME_DNS_NONE || o->dns_lookup ? &o->dns : NULL;
    req.profile = o->profile;
    req.preferred_chain = o->preferred_chain;
    req.replaces = replaces;
    req.poll_timeout = o->poll_timeout;
    ch.data = o;
    ch.publish = ch_publish;
    ch.withdraw = ch_withdraw;

    memset(&iw, 0, sizeof(iw));
    iw.ctl = ctl;
    job = acme_issue_start(ctl->client, &req, &ch, issue_done, &iw, &err);
    if (job == NULL) {
        fprintf(stderr, "acmectl: %s\n", err.msg);
        acmectl_chsrv_stop(o->srv);
        if (fail != NULL) {
            *fail = err;
        }
        return 1;
    }
    rc = wait_run(ctl, &iw.w);
    acmectl_chsrv_stop(o->srv);
    if (rc != 0 && fail != NULL) {
        *fail = iw.w.err;
    }
    if (rc != 0) {
        size_t i;
        for (i = 0; i < ctl->nident_errors; i++) {
            fprintf(stderr, "acmectl: %s: %s\n", ctl->ident_errors[i].ident, ctl->ident_errors[i].error);
        }
    }
    if (rc == 0) {
        printf("issued %s\n", iw.name);
    }
    free(iw.name);
    return rc == 0 ? 0 : 1;
}

/* The DNS settings (the TSIG secret) are read for one issuance and wiped after it. */
static int
do_issue_names(ctl_t *ctl, issue_opts_t *o, acme_ident_t *ids, size_t nids, const acme_keyspec_t *ks,
    const char *replaces, acme_err_t *fail)
{
    int rc = issue_names(ctl, o, ids, nids, ks, replaces, fail);

    acme_dns_config_free(&o->dns);
    return rc;
}

/* What a first issuance asked for: to describe it when it failed. */
typedef struct {
    const acme_ident_t    *ids;
    size_t                 nids;
    const acme_keyspec_t  *keyspec;
    const char            *ca;
    const char            *profile;
} first_issue_t;

static int
certmeta_new(acme_certmeta_t *f, const char *name, const first_issue_t *fi)
{
    size_t  i;

    f->name = acme_strdup(name);
    f->ids = calloc(fi->nids, sizeof(*f->ids));
    f->ca = fi->ca ? acme_strdup(fi->ca) : NULL;
    f->profile = fi->profile ? acme_strdup(fi->profile) : NULL;
    f->keyspec = *fi->keyspec;
    if (f->name == NULL || f->ids == NULL) {
        return -1;
    }
    for (i = 0; i < fi->nids; i++) {
        f->ids[i].type = fi->ids[i].type;
        f->ids[i].value = acme_strdup(fi->ids[i].value);
        if (f->ids[i].value == NULL) {
            return -1;
        }
        f->nids++;
    }
    return 0;
}

/*
 * Remember a failed renewal (or, with first, a failed first issuance) for the scheduler, list and status;
 * say when to try again.
 */
static void
record_failure(ctl_t *ctl, const char *name, const acme_err_t *err, const first_issue_t *first)
{
    acme_certmeta_t  f;
    time_t           now = time(NULL);
    char             tb[32];
    acme_err_t       serr;

    memset(&f, 0, sizeof(f));
    if (acme_store_meta_load(ctl->store, name, &f, &serr) != 0) {
        if (first == NULL) {
            fprintf(stderr, "acmectl: cannot record the failure of \"%s\": reading its metadata: %s\n", name,
                    serr.msg);
            return;
        }
        /* a first issuance that failed: its metadata makes list and status show it, pending, and why */
        acme_certmeta_free(&f);
        memset(&f, 0, sizeof(f));
        if (certmeta_new(&f, name, first) != 0) {
            fprintf(stderr, "acmectl: cannot record the failure of \"%s\": out of memory\n", name);
            acme_certmeta_free(&f);
            return;
        }
    }
    f.failures++;
    f.next_try = acme_sched_next_try(err->kind, f.failures, err->retry_after, acme_random(), now,
                                     f.not_after);
    f.ca_wait_until = acme_sched_ca_wait(err->kind, err->retry_after, now, f.next_try);
    f.last_error_at = now;
    free(f.last_error);
    f.last_error = acme_strdup(err->msg[0] ? err->msg : "failed (no reason given)");
    if (ctl->nident_errors > 0) {
        acme_ident_errors_free(f.ident_errors, f.nident_errors);
        f.ident_errors = ctl->ident_errors;
        f.nident_errors = ctl->nident_errors;
        ctl->ident_errors = NULL;
        ctl->nident_errors = 0;
    }
    if (ctl->persist_checked && acme_persist_notes_concern(&f, acme_client_directory_url(ctl->client))) {
        acme_persist_notes_free(f.persist_notes, f.npersist_notes);
        f.persist_notes = ctl->persist_notes;
        f.npersist_notes = ctl->npersist_notes;
        ctl->persist_notes = NULL;
        ctl->npersist_notes = 0;
        ctl->persist_checked = 0;
    }
    if (acme_store_meta_save(ctl->store, &f, &serr) == 0) {
        fprintf(stderr, "acmectl: next attempt not before %s\n",
                acme_time_format(f.next_try, tb, sizeof(tb)));
    } else {
        fprintf(stderr, "acmectl: cannot record the failure of \"%s\" in the store: %s\n", name, serr.msg);
    }
    acme_certmeta_free(&f);
}

/* -1 (with a message) when a running server manages the state directory and --ignore-server is not given. */
static int
server_refuses(ctl_t *ctl, const issue_opts_t *o, const char *name)
{
    const char  *server;

    server = o->ignore_server ? NULL : ctl_running_server(ctl);
    if (server == NULL) {
        return 0;
    }
    /* it would answer the challenges, and acmectl would change the renewal time the server keeps */
    fprintf(stderr, "acmectl: \"%s\" is managed by a running %s (it holds its lock in this state "
            "directory): ask the server to renew it (its status endpoint, POST ?renew=%s, with "
            "acme_status renew=on or ACMEStatusRenew on); --ignore-server renews here anyway\n",
            name, server, name);
    return -1;
}

/* The identifiers named on the command line; 0, or 1/2 as exit status (with a message). */
static int
parse_idents(int argc, char **argv, int first, acme_ident_t **out, size_t *n)
{
    acme_ident_t  *ids;
    acme_err_t     err;
    int            i;

    *n = 0;
    ids = calloc((size_t) (argc - first), sizeof(*ids));
    *out = ids;
    if (ids == NULL) {
        return 1;
    }
    for (i = first; i < argc; i++) {
        if (acme_ident_parse(argv[i], &ids[*n], &err) != 0) {
            fprintf(stderr, "acmectl: \"%s\": %s\n", argv[i], err.msg);
            return 2;
        }
        (*n)++;
    }
    return 0;
}

static int
cmd_issue(ctl_t *ctl, int argc, char **argv)
{
    issue_opts_t    o;
    acme_keyspec_t  ks = ACME_KEYSPEC_DEFAULT;
    acme_ident_t   *ids;
    acme_err_t      err;
    size_t          n = 0;
    int             c, i, rc;

    memset(&o, 0, sizeof(o));
    optind = 1;
    while ((c = getopt_long(argc, argv, "", issue_longopts, NULL)) != -1) {
        if (parse_issue_opt(c, &o) != 0) {
            usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "acmectl issue: name at least one identifier\n");
        return 2;
    }
    if (o.key != NULL && acme_keyspec_parse(o.key, &ks, &err) != 0) {
        fprintf(stderr, "acmectl: --key: %s\n", err.msg);
        return 2;
    }
    rc = parse_idents(argc, argv, optind, &ids, &n);
    if (rc != 0) {
        goto done;
    }
    if (ctl_open_store(ctl, 1) != 0 || server_refuses(ctl, &o, ids[0].value) != 0
        || ctl_client(ctl, NULL) != 0)
    {
        rc = 1;
        goto done;
    }
    acme_err_clear(&err);
    rc = do_issue_names(ctl, &o, ids, n, &ks, NULL, &err);
    if (rc == 1) {
        first_issue_t  fi = { ids, n, &ks, ctl->ca_url, o.profile };
        char          *name = acme_cert_name(ids, n, &ks);

        if (name != NULL) {
            record_failure(ctl, name, &err, &fi);
        }
        free(name);
    }
done:
    for (i = 0; (size_t) i < n; i++) {
        acme_ident_free(&ids[i]);
    }
    free(ids);
    return rc;
}

/* Find a stored certificate by its name or any of its identifiers. */
static int
find_cert(ctl_t *ctl, const char *what, acme_certmeta_t *meta)
{
    char        **names = NULL;
    size_t        n = 0, i, j;
    acme_err_t    err;
    int           found = 0;

    if (ctl->store->ops->list(ctl->store, "certs", &names, &n, &err) != 0) {
        fprintf(stderr, "acmectl: %s\n", err.msg);
        return -1;
    }
    for (i = 0; i < n && !found; i++) {
        memset(meta, 0, sizeof(*meta));
        if (acme_store_meta_load(ctl->store, names[i], meta, &err) != 0) {
            if (strcmp(names[i], what) == 0) {
                /* the one asked for, unreadable (another storage key, refused): say why */
                fprintf(stderr, "acmectl: %s\n", err.msg);
                acme_store_list_free(names, n);
                return -1;
            }
            continue;
        }
        if (strcmp(names[i], what) == 0) {
            found = 1;
            break;
        }
        for (j = 0; j < meta->nids; j++) {
            if (strcasecmp(meta->ids[j].value, what) == 0) {
                found = 1;
                break;
            }
        }
        if (!found) {
            acme_certmeta_free(meta);
        }
    }
    acme_store_list_free(names, n);
    if (!found) {
        char *where = acme_store_url_redact(ctl->storage ? ctl->storage : ctl->state);

        fprintf(stderr, "acmectl: no certificate \"%s\" in %s\n", what, where ? where : "the store");
        free(where);
        return -1;
    }
    return 0;
}

static X509 *
load_leaf(ctl_t *ctl, const char *name, EVP_PKEY **key)
{
    char            *chain = NULL, *priv = NULL;
    size_t           clen = 0, plen = 0;
    STACK_OF(X509)  *sk = NULL;
    X509            *leaf = NULL;
    acme_err_t       err;

    if (acme_store_cert_load(ctl->store, name, &chain, &clen, key ? &priv : NULL, key ? &plen : NULL,
                             NULL, &err) != 0)
    {
        fprintf(stderr, "acmectl: certificate \"%s\": %s\n", name, err.msg[0] ? err.msg : "not found");
        return NULL;
    }
    if (acme_pem_chain_parse(chain, clen, &sk, &err) == 0) {
        leaf = sk_X509_value(sk, 0);
        X509_up_ref(leaf);
    } else {
        fprintf(stderr, "acmectl: certificate \"%s\": %s\n", name, err.msg);
    }
    acme_chain_free(sk);
    free(chain);
    if (key != NULL && priv != NULL) {
        *key = acme_key_from_pem(priv, plen, &err);
    }
    acme_free_secret(priv, plen);
    return leaf;
}

typedef struct {
    wait_t               w;
    acme_certmeta_t     *meta;
    long                 retry_after;
} ari_wait_t;

static void
ari_done(void *arg, const acme_renewal_info_t *ri, long retry_after, const acme_err_t *err)
{
    ari_wait_t *aw = arg;

    if (ri != NULL) {
        if (aw->meta->ari_start != ri->start || aw->meta->ari_end != ri->end) {
            aw->meta->renew_at = 0;     /* a new window: choose a new point in it */
            if (ri->explanation_url != NULL) {
                char b1[32], b2[32];

                fprintf(stderr, "acmectl: %s: the CA's renewal window is %s to %s; the CA explains: %s\n",
                        aw->meta->name, acme_time_format(ri->start, b1, sizeof(b1)),
                        acme_time_format(ri->end, b2, sizeof(b2)), ri->explanation_url);
            }
        }
        aw->meta->ari_start = ri->start;
        aw->meta->ari_end = ri->end;
        free(aw->meta->ari_explanation_url);
        aw->meta->ari_explanation_url = acme_strdup(ri->explanation_url);
    }
    aw->meta->ari_next_check = acme_sched_ari_next_check(time(NULL), retry_after, acme_random());
    wait_done(&aw->w, err);
}

static int
cmd_renew(ctl_t *ctl, int argc, char **argv)
{
    issue_opts_t         o;
    acme_certmeta_t      m;
    acme_renew_reason_t  reason;
    acme_err_t           err;
    time_t               now = time(NULL), when;
    X509                *leaf;
    ari_wait_t           aw;
    int                  c, rc;
    char                 tbuf[32];

    memset(&o, 0, sizeof(o));
    optind = 1;
    while ((c = getopt_long(argc, argv, "", issue_longopts, NULL)) != -1) {
        if (parse_issue_opt(c, &o) != 0) {
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "acmectl renew: name one certificate\n");
        return 2;
    }
    if (ctl_open_store(ctl, 0) != 0 || find_cert(ctl, argv[optind], &m) != 0) {
        return 1;
    }
    if (server_refuses(ctl, &o, m.name) != 0) {
        acme_certmeta_free(&m);
        return 1;
    }
    acme_err_clear(&err);
    if (ctl_client(ctl, ctl->ca ? ctl->ca : m.ca) != 0) {
        acme_certmeta_free(&m);
        return 1;
    }
    if (ctl_ready_err(ctl, &err) != 0) {
        record_failure(ctl, m.name, &err, NULL);
        acme_certmeta_free(&m);
        return 1;
    }
    /* RFC 9773: ask the CA when to renew */
    leaf = m.not_after ? load_leaf(ctl, m.name, NULL) : NULL;
    if (leaf != NULL && acme_client_directory(ctl->client)->renewal_info != NULL) {
        memset(&aw, 0, sizeof(aw));
        aw.meta = &m;
        if (acme_client_renewal_info(ctl->client, leaf, ari_done, &aw, &err) == 0) {
            if (wait_run(ctl, &aw.w) != 0) {
                fprintf(stderr, "acmectl: renewalInfo failed; deciding by lifetime\n");
            }
        }
    }
    X509_free(leaf);
    if (m.renew_at == 0 && m.not_after != 0) {
        m.renew_at = acme_sched_renew_time(&m, acme_random(), now, &reason);
    }
    when = acme_sched_renewal(&m, now, &reason);
    acme_store_meta_save(ctl->store, &m, NULL);
    if (!o.force && when > now) {
        printf("%s: not due until %s (%s)\n", m.name, acme_time_format(when, tbuf, sizeof(tbuf)),
               acme_renew_reason_name(reason));
        acme_certmeta_free(&m);
        return 0;
    }
    if (o.force && m.ca_wait_until > now) {
        fprintf(stderr, "acmectl: --force: overriding the CA's Retry-After: it asked not to be asked again "
                "before %s\n", acme_time_format(m.ca_wait_until, tbuf, sizeof(tbuf)));
    }
    if (o.key != NULL && acme_keyspec_parse(o.key, &m.keyspec, &err) != 0) {
        fprintf(stderr, "acmectl: --key: %s\n", err.msg);
        acme_certmeta_free(&m);
        return 2;
    }
    if (o.profile == NULL) {
        o.profile = m.profile;
        o.profile_stored = 1;
    }
    acme_err_clear(&err);
    rc = do_issue_names(ctl, &o, m.ids, m.nids, &m.keyspec, m.not_after ? m.ari_cert_id : NULL, &err);
    if (rc != 0) {
        record_failure(ctl, m.name, &err, NULL);
    }
    acme_certmeta_free(&m);
    return rc;
}

/* ---- ari-check: the CA's renewal information asked again, no renewal ---- */

/* the client for the CA that issued m (a --ca overrides it); a new one when the previous was another CA */
static int
ctl_client_for(ctl_t *ctl, const acme_certmeta_t *m)
{
    const char  *ca = ctl->ca ? ctl->ca : m->ca;
    char        *url;
    acme_err_t   err;
    int          same;

    if (ctl->client != NULL) {
        url = acme_ca_resolve(ca ? ca : "letsencrypt", &err);
        same = url != NULL && strcmp(url, ctl->ca_url) == 0;
        free(url);
        if (same) {
            return 0;
        }
        acme_client_free(ctl->client);
        acme_loop_free(ctl->loop);
        free(ctl->ca_url);
        ctl->client = NULL;
        ctl->loop = NULL;
        ctl->ca_url = NULL;
    }
    return ctl_client(ctl, ca);
}

/* One certificate: 0 asked and stored (printed), 1 failed (said why). */
static int
ari_check_one(ctl_t *ctl, acme_certmeta_t *m)
{
    X509                *leaf;
    ari_wait_t           aw;
    acme_err_t           err;
    acme_renew_reason_t  reason;
    time_t               now = time(NULL), when;
    char                 b1[32], b2[32], b3[32];

    if (m->not_after == 0) {
        printf("%s: no certificate yet\n", m->name);
        return 0;
    }
    if (ctl_client_for(ctl, m) != 0 || ctl_ready(ctl) != 0) {
        return 1;
    }
    if (acme_client_directory(ctl->client)->renewal_info == NULL) {
        printf("%s: the CA (%s) has no renewal information\n", m->name, ctl->ca_url);
        return 0;
    }
    leaf = load_leaf(ctl, m->name, NULL);
    if (leaf == NULL) {
        return 1;
    }
    memset(&aw, 0, sizeof(aw));
    aw.meta = m;
    if (acme_client_renewal_info(ctl->client, leaf, ari_done, &aw, &err) != 0) {
        fprintf(stderr, "acmectl: %s: renewalInfo: %s\n", m->name, err.msg);
        X509_free(leaf);
        return 1;
    }
    X509_free(leaf);
    if (wait_run(ctl, &aw.w) != 0) {
        return 1;
    }
    if (m->renew_at == 0) {
        m->renew_at = acme_sched_renew_time(m, acme_random(), now, &reason);
    }
    if (acme_store_meta_save(ctl->store, m, &err) != 0) {
        fprintf(stderr, "acmectl: %s: cannot store the renewal window: %s\n", m->name, err.msg);
        return 1;
    }
    when = acme_sched_renewal(m, now, &reason);
    printf("%s: renewal window %s to %s; %s%s (%s)\n", m->name,
           acme_time_format(m->ari_start, b1, sizeof(b1)), acme_time_format(m->ari_end, b2, sizeof(b2)),
           when <= now ? "due now, since " : "next renewal ", acme_time_format(when, b3, sizeof(b3)),
           acme_renew_reason_name(reason));
    return 0;
}

/*
 * ari-check [NAME...]: every certificate of the store, or those named (store name or identifier). Nothing
 * is renewed: the window is stored, and whoever keeps the certificate acts on it (acmectl renew, run; a
 * running server at its next look at the store: its status endpoint's ?ari-check makes it look now).
 */
static int
cmd_ari_check(ctl_t *ctl, int argc, char **argv)
{
    char            **names = NULL;
    size_t            n = 0, i;
    acme_err_t        err;
    acme_certmeta_t   m;
    const char       *server;
    int               failed = 0;

    if (argc > 1 && argv[1][0] == '-') {
        fprintf(stderr, "acmectl ari-check: unknown option \"%s\"\n", argv[1]);
        return 2;
    }
    if (ctl_open_store(ctl, 0) != 0) {
        return 1;
    }
    if (argc > 1) {
        for (i = 1; i < (size_t) argc; i++) {
            if (find_cert(ctl, argv[i], &m) != 0) {
                failed = 1;
                continue;
            }
            failed |= ari_check_one(ctl, &m);
            acme_certmeta_free(&m);
        }
    } else {
        if (ctl->store->ops->list(ctl->store, "certs", &names, &n, &err) != 0) {
            fprintf(stderr, "acmectl: %s\n", err.msg);
            return 1;
        }
        for (i = 0; i < n; i++) {
            memset(&m, 0, sizeof(m));
            if (acme_store_meta_load(ctl->store, names[i], &m, &err) != 0) {
                fprintf(stderr, "acmectl: %s: %s\n", names[i], err.msg);
                failed = 1;
                continue;
            }
            failed |= ari_check_one(ctl, &m);
            acme_certmeta_free(&m);
        }
        acme_store_list_free(names, n);
    }
    server = ctl_running_server(ctl);
    if (server != NULL) {
        fprintf(stderr, "acmectl: a running %s manages this state directory: it sees the stored windows at its "
                "next look at the store; POST ?ari-check=NAME (or *) to its status endpoint makes it ask now\n",
                server);
    }
    return failed;
}

/* ---- list / status ---- */

static json_t *
cert_json(ctl_t *ctl, const acme_certmeta_t *m)
{
    json_t              *o, *ids;
    size_t               i;
    char                 b[32], b2[32], ks[16];
    acme_renew_reason_t  reason;
    time_t               next;

    (void) ctl;
    ids = json_array();
    for (i = 0; i < m->nids; i++) {
        json_array_append_new(ids, json_string(m->ids[i].value));
    }
    next = acme_sched_renewal(m, time(NULL), &reason);
    o = json_pack("{s:s, s:o, s:s, s:s?}", "name", m->name, "identifiers", ids,
                  "key_type", acme_keyspec_str(&m->keyspec, ks, sizeof(ks)), "issuer", m->ca);
    json_object_set_new(o, "not_before", m->not_before ? json_string(acme_time_format(m->not_before, b, 32))
                                                       : json_null());
    json_object_set_new(o, "not_after", m->not_after ? json_string(acme_time_format(m->not_after, b, 32))
                                                     : json_null());
    json_object_set_new(o, "next_renewal", json_string(acme_time_format(next, b, 32)));
    json_object_set_new(o, "renewal_reason", json_string(acme_renew_reason_name(reason)));
    if (m->ari_start) {
        json_object_set_new(o, "ari_window", json_pack("{s:s, s:s}", "start",
                            acme_time_format(m->ari_start, b, 32), "end", acme_time_format(m->ari_end, b2, 32)));
        if (m->ari_explanation_url != NULL) {
            json_object_set_new(o, "ari_explanation_url", json_string(m->ari_explanation_url));
        }
    }
    json_object_set_new(o, "state", json_string(m->not_after == 0 ? "pending"
                                                : m->not_after < time(NULL) ? "expired"
                                                : m->failures ? "failing" : "valid"));
    json_object_set_new(o, "last_error", m->last_error ? json_string(m->last_error) : json_null());
    json_object_set_new(o, "identifier_errors", acme_certmeta_ident_errors_json(m));
    json_object_set_new(o, "identifier_warnings", acme_certmeta_ident_warnings_json(m));
    json_object_set_new(o, "failures", json_integer(m->failures));
    return o;
}

/* An empty Redis store: say which other prefixes of the same server hold certificates (stderr). */
static void
list_other_prefixes(ctl_t *ctl)
{
    char        **pre = NULL, *shown;
    size_t        np = 0, i, len;
    acme_err_t    err;

    if (acme_store_lock_lease_ms(ctl->store) == 0
        || acme_store_redis_cert_prefixes(ctl->storage, &pre, &np, &err) != 0 || np == 0)
    {
        return;
    }
    shown = acme_store_url_redact(ctl->storage);
    fprintf(stderr, "acmectl: no certificates under the prefix of %s; other prefixes of this Redis hold some:",
            shown ? shown : "the store");
    for (i = 0; i < np; i++) {
        len = strlen(pre[i]);
        fprintf(stderr, " %s (--prefix %.*s)", pre[i], (int) (len && pre[i][len - 1] == ':' ? len - 1 : len),
                pre[i]);
    }
    fprintf(stderr, "\n");
    free(shown);
    acme_store_list_free(pre, np);
}

static int
cmd_list(ctl_t *ctl, int json_out)
{
    char            **names = NULL;
    size_t            n = 0, i, j;
    acme_err_t        err;
    acme_certmeta_t   m;
    json_t           *arr, *o;
    char              ks[16], b1[32], b2[32], idbuf[512];
    acme_renew_reason_t reason;

    if (ctl_open_store(ctl, 0) != 0) {
        return 1;
    }
    if (ctl->store->ops->list(ctl->store, "certs", &names, &n, &err) != 0) {
        fprintf(stderr, "acmectl: %s\n", err.msg);
        return 1;
    }
    arr = json_array();
    if (!json_out) {
        printf("%-40s %-10s %-20s %-20s %s\n", "NAMES", "KEY", "NOT AFTER", "NEXT RENEWAL", "LAST ERROR");
    }
    for (i = 0; i < n; i++) {
        memset(&m, 0, sizeof(m));
        if (acme_store_meta_load(ctl->store, names[i], &m, &err) != 0) {
            fprintf(stderr, "acmectl: %s: %s\n", names[i], err.msg);
            continue;
        }
        if (json_out) {
            json_array_append_new(arr, cert_json(ctl, &m));
        } else {
            idbuf[0] = '\0';
            for (j = 0; j < m.nids; j++) {
                snprintf(idbuf + strlen(idbuf), sizeof(idbuf) - strlen(idbuf), "%s%s", j ? "," : "",
                         m.ids[j].value);
            }
            printf("%-40s %-10s %-20s %-20s %s\n", idbuf, acme_keyspec_str(&m.keyspec, ks, sizeof(ks)),
                   m.not_after ? acme_time_format(m.not_after, b1, sizeof(b1)) : "-",
                   acme_time_format(acme_sched_renewal(&m, time(NULL), &reason), b2, sizeof(b2)),
                   m.last_error ? m.last_error : "-");
        }
        acme_certmeta_free(&m);
    }
    acme_store_list_free(names, n);
    if (n == 0) {
        list_other_prefixes(ctl);
    }
    if (json_out) {
        o = json_pack("{s:o}", "certificates", arr);
        json_dumpf(o, stdout, JSON_INDENT(2));
        printf("\n");
        json_decref(o);
    } else {
        json_decref(arr);
    }
    return 0;
}

/* ---- revoke ---- */

/* --notify of revoke: the program run once with "revoked", waited for (its time limit applies). */
static void
revoke_notify(ctl_t *ctl, const char *program, const acme_certmeta_t *m)
{
    acme_notify_conf_t   nc;
    acme_notify_event_t  ev;
    acme_notify_t       *n;
    acme_err_t           err;
    char                 domains[2048];
    size_t               i, len = 0;

    memset(&nc, 0, sizeof(nc));
    nc.program = program;
    nc.store_dir = ctl->storage ? NULL : ctl->state;
    n = acme_notify_new(ctl->loop, &nc, &err);
    if (n == NULL) {
        fprintf(stderr, "acmectl: --notify: %s\n", err.msg);
        return;
    }
    domains[0] = '\0';
    for (i = 0; i < m->nids; i++) {
        int k = snprintf(domains + len, sizeof(domains) - len, "%s%s", i ? " " : "", m->ids[i].value);
        if (k < 0 || (size_t) k >= sizeof(domains) - len) {
            break;
        }
        len += (size_t) k;
    }
    memset(&ev, 0, sizeof(ev));
    ev.event = "revoked";
    ev.name = m->name;
    ev.domains = domains;
    ev.issuer = m->ca;
    ev.not_after = m->not_after;
    acme_notify_event(n, &ev);
    while (acme_notify_busy(n)) {
        acme_loop_run(ctl->loop, NULL, 200);
    }
    acme_notify_free(n);
}

/*
 * Marks the certificate for renewal and records the revocation for the servers (acme_revocation.h): the
 * manager that runs the certificate's ACME client sees it within a minute, runs "revoked" and renews.
 */
static void
revoke_record(ctl_t *ctl, acme_certmeta_t *m, X509 *leaf)
{
    acme_cert_info_t  info;
    acme_err_t        err;
    time_t            now = time(NULL);

    memset(&info, 0, sizeof(info));
    free(m->last_error);
    m->last_error = acme_strdup("revoked");
    m->last_error_at = now;
    m->renew_at = now;
    if (acme_cert_info(leaf, &info, &err) == 0) {
        free(m->revoked_serial);
        m->revoked_serial = acme_strdup(info.serial_hex);
        m->revoked_at = now;
        m->revoked_handled = 0;
    }
    if (acme_store_meta_save(ctl->store, m, &err) != 0
        || (m->revoked_serial != NULL
            && acme_revocation_record(ctl->store, m->name, m->revoked_serial, now, &err) != 0))
    {
        fprintf(stderr, "acmectl: %s: the revocation is not recorded for the servers (they renew it at "
                "their next look at it, within a day): %s\n", m->name, err.msg);
    }
    acme_cert_info_free(&info);
}

static int
cmd_revoke(ctl_t *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        { "reason", required_argument, NULL, 'r' },
        { "with-cert-key", no_argument, NULL, 'K' },
        { "notify", required_argument, NULL, 'N' },
        { NULL, 0, NULL, 0 }
    };
    acme_certmeta_t  m;
    int              c, reason = -1, with_key = 0, rc;
    X509            *leaf;
    EVP_PKEY        *key = NULL;
    wait_t           w;
    acme_err_t       err;
    char            *end;
    const char      *notify = NULL;

    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'r') {
            reason = (int) strtol(optarg, &end, 10);
            if (*end != '\0' || reason < 0 || reason > 10 || reason == 7) {
                fprintf(stderr, "acmectl: --reason \"%s\": an RFC 5280 reason code (0-6, 8-10)\n", optarg);
                return 2;
            }
        } else if (c == 'K') {
            with_key = 1;
        } else if (c == 'N') {
            notify = optarg;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "acmectl revoke: name one certificate\n");
        return 2;
    }
    if (notify != NULL && acme_exec_check("--notify: the notification program", notify, &err) != 0) {
        fprintf(stderr, "acmectl: %s\n", err.msg);
        return 2;
    }
    if (ctl_open_store(ctl, 0) != 0 || find_cert(ctl, argv[optind], &m) != 0) {
        return 1;
    }
    leaf = load_leaf(ctl, m.name, with_key ? &key : NULL);
    if (leaf == NULL || ctl_client(ctl, ctl->ca ? ctl->ca : m.ca) != 0
        || (!with_key && ctl_ready(ctl) != 0))
    {
        X509_free(leaf);
        EVP_PKEY_free(key);
        acme_certmeta_free(&m);
        return 1;
    }
    if (with_key) {
        /* the directory is still needed, and an account is harmless */
        if (ctl_ready(ctl) != 0) {
            X509_free(leaf);
            EVP_PKEY_free(key);
            acme_certmeta_free(&m);
            return 1;
        }
    }
    memset(&w, 0, sizeof(w));
    rc = acme_client_revoke(ctl->client, leaf, key, reason, wait_done, &w, &err);
    if (rc != 0) {
        fprintf(stderr, "acmectl: %s\n", err.msg);
    } else {
        rc = wait_run(ctl, &w);
    }
    if (rc == 0) {
        printf("revoked %s\n", m.name);
        revoke_record(ctl, &m, leaf);
        if (notify != NULL) {
            revoke_notify(ctl, notify, &m);
        }
    }
    X509_free(leaf);
    EVP_PKEY_free(key);
    acme_certmeta_free(&m);
    return rc == 0 ? 0 : 1;
}

/* ---- account ---- */

static int
cmd_account(ctl_t *ctl, int argc, char **argv)
{
    wait_t          w;
    acme_err_t      err;
    acme_keyspec_t  ks = ACME_KEYSPEC_DEFAULT;
    char           *thumb, kbuf[16];
    json_t         *o;
    int             rc;

    if (argc < 2) {
        fprintf(stderr, "acmectl account: show, find, rollover, update or deactivate\n");
        return 2;
    }
    if (strcmp(argv[1], "rollover") == 0 && argc == 4 && strcmp(argv[2], "--key") == 0) {
        if (acme_keyspec_parse(argv[3], &ks, &err) != 0) {
            fprintf(stderr, "acmectl: --key: %s\n", err.msg);
            return 2;
        }
    } else if (argc != 2) {
        fprintf(stderr, "acmectl account: unexpected \"%s\"\n", argv[2]);
        return 2;
    }
    if (ctl_open_store(ctl, 1) != 0 || ctl_client(ctl, NULL) != 0 || ctl_ready(ctl) != 0) {
        return 1;
    }
    memset(&w, 0, sizeof(w));
    if (strcmp(argv[1], "show") == 0) {
        thumb = acme_jwk_thumbprint(acme_client_account_key(ctl->client), NULL);
        acme_keyspec_of(acme_client_account_key(ctl->client), &ks, NULL);
        o = json_pack("{s:s, s:s, s:s, s:s?}", "ca", ctl->ca_url,
                      "url", acme_client_account_url(ctl->client),
                      "key_type", acme_keyspec_str(&ks, kbuf, sizeof(kbuf)), "thumbprint", thumb);
        json_dumpf(o, stdout, JSON_INDENT(2));
        printf("\n");
        json_decref(o);
        free(thumb);
        return 0;
    } else if (strcmp(argv[1], "rollover") == 0) {
        rc = acme_client_account_rollover(ctl->client, &ks, wait_done, &w, &err);
    } else if (strcmp(argv[1], "find") == 0) {
        rc = acme_client_account_find(ctl->client, wait_done, &w, &err);
    } else if (strcmp(argv[1], "deactivate") == 0) {
        rc = acme_client_account_deactivate(ctl->client, wait_done, &w, &err);
    } else if (strcmp(argv[1], "update") == 0) {
        rc = acme_client_account_update(ctl->client, ctl->contact, ctl->ncontact, wait_done, &w, &err);
    } else {
        fprintf(stderr, "acmectl account: unknown \"%s\"\n", argv[1]);
        return 2;
    }
    if (rc != 0) {
        fprintf(stderr, "acmectl: %s\n", err.msg);
        return 1;
    }
    if (wait_run(ctl, &w) != 0) {
        return 1;
    }
    printf("account %s: %s done\n", acme_client_account_url(ctl->client), argv[1]);
    if (strcmp(argv[1], "deactivate") == 0) {
        /* a deactivated account is useless: forget it so the next run registers afresh */
        char key[512];
        snprintf(key, sizeof(key), "accounts/%s/account.json", acme_client_ca_id(ctl->client));
        acme_store_del(ctl->store, key, NULL);
        snprintf(key, sizeof(key), "accounts/%s/account.key", acme_client_ca_id(ctl->client));
        acme_store_del(ctl->store, key, NULL);
    }
    return 0;
}

/* ---- run: keep one certificate issued and renewed, in the foreground (the manager without a server) ---- */

static volatile sig_atomic_t  run_stop;
static volatile sig_atomic_t  run_renew;

static void
run_signal(int sig)
{
    if (sig == SIGUSR1) {
        run_renew = 1;
    } else {
        run_stop = 1;
    }
}

typedef struct {
    ctl_t           *ctl;
    acme_manager_t  *m;
    const char      *status_file;
} run_t;

static void
run_write_status(run_t *r)
{
    json_t  *st;
    char    *js;

    if (r->status_file == NULL) {
        return;
    }
    st = acme_manager_status(r->m);
    js = st ? json_dumps(st, JSON_INDENT(2)) : NULL;
    json_decref(st);
    if (js != NULL) {
        FILE *f;
        char  tmp[4096];

        snprintf(tmp, sizeof(tmp), "%s.tmp", r->status_file);
        f = fopen(tmp, "w");
        if (f != NULL) {
            fputs(js, f);
            fclose(f);
            rename(tmp, r->status_file);
        }
        free(js);
    }
}

static void
run_cert_updated(void *data, const char *name)
{
    run_t *r = data;

    printf("updated %s\n", name);
    fflush(stdout);
    run_write_status(r);
}

/*
 * dns-persist-01: the record an admin creates once per name, for this account and CA (its issuer-domain-name:
 * the directory's caaIdentities, or --issuer-domain-name), in zone-file form.
 */
static int
cmd_dns_persist_record(ctl_t *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        { "wildcard", no_argument, NULL, 'w' },
        { "until", required_argument, NULL, 'u' },
        { "issuer-domain-name", required_argument, NULL, 'i' },
        { "publish", no_argument, NULL, 'P' },
        { "tsig-key", required_argument, NULL, 'K' },
        { "dns-server", required_argument, NULL, 'D' },
        { "dns-resolver", required_argument, NULL, 'R' },
        { "dns-propagation-timeout", required_argument, NULL, 'X' },
        { "dns-hook", required_argument, NULL, 'j' },
        { "dns-hook-timeout", required_argument, NULL, 'J' },
        { NULL, 0, NULL, 0 }
    };
    const char   *issuer = NULL, *acct;
    long long     until = 0;
    int           c, wildcard = 0, i, publish = 0, rc = 0;
    char         *end, *name, *value, typebuf[40];
    issue_opts_t  o;
    const char   *types[ISSUE_TYPES_MAX];
    size_t        ntypes;
    acme_err_t    err;

    memset(&o, 0, sizeof(o));
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'w') {
            wildcard = 1;
        } else if (c == 'u') {
            until = strtoll(optarg, &end, 10);
            if (*end != '\0' || until <= (long long) time(NULL)) {
                fprintf(stderr, "acmectl: --until \"%s\": a Unix time in the future\n", optarg);
                return 2;
            }
        } else if (c == 'i') {
            issuer = optarg;
        } else if (c == 'P') {
            publish = 1;
        } else if (parse_issue_opt(c, &o) != 0) {
            usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "acmectl dns-persist-record: name at least one domain\n");
        return 2;
    }
    if (publish) {
        /* published once through an update method, as dns-01's records are (and left in place) */
        o.challenge = "dns-01";
        if (issue_types(&o, typebuf, sizeof(typebuf), types, &ntypes) != 0) {
            return 2;
        }
        if (o.dns.method == ACME_DNS_ACMEDNS) {
            fprintf(stderr, "acmectl: --publish: acme-dns can only publish at its own subdomain\n");
            acme_dns_config_free(&o.dns);
            return 2;
        }
    } else if (o.tsig_key || o.dns_hook || o.dns_server || o.dns_timeout || o.dns_hook_timeout) {
        fprintf(stderr, "acmectl dns-persist-record: --tsig-key, --dns-hook and the --dns-... options go with "
                "--publish\n");
        return 2;
    }
    if (ctl_open_store(ctl, 1) != 0 || ctl_client(ctl, NULL) != 0 || ctl_ready(ctl) != 0) {
        acme_dns_config_free(&o.dns);
        return 1;
    }
    if (issuer == NULL) {
        issuer = acme_client_directory(ctl->client)->caa_identity;
    }
    if (issuer == NULL) {
        fprintf(stderr, "acmectl: the CA %s names no caaIdentities in its directory: give its "
                "issuer-domain-name with --issuer-domain-name\n", acme_client_directory_url(ctl->client));
        acme_dns_config_free(&o.dns);
        return 1;
    }
    acct = acme_client_account_url(ctl->client);
    for (i = optind; i < argc; i++) {
        /* "*.example.org" means example.org with policy=wildcard */
        int w = wildcard || strncmp(argv[i], "*.", 2) == 0;
        name = acme_dns_persist_name(argv[i]);
        value = acme_dns_persist_value(issuer, acct, w, until);
        if (name == NULL || value == NULL) {
            free(name);
            free(value);
            fprintf(stderr, "acmectl: out of memory\n");
            return 1;
        }
        printf("%s. IN TXT \"%s\"\n", name, value);
        fflush(stdout);
        if (publish) {
            acme_dns_record_t rec = { .name = name, .value = value, .ident = argv[i], .type = "dns-persist-01" };
            char             *out = NULL, *line, *save = NULL;

            /* blocking is fine here: acmectl has nothing else to do */
            if (acme_dns_publish_record(&o.dns, &rec, 1, NULL, &out, &err) != 0) {
                fprintf(stderr, "acmectl: publishing %s (%s): %s\n", name, acme_dns_method_name(o.dns.method),
                        err.msg);
                rc = 1;
            } else {
                fprintf(stderr, "acmectl: published %s (%s); it stays until you remove it\n", name,
                        acme_dns_method_name(o.dns.method));
            }
            for (line = out ? strtok_r(out, "\n", &save) : NULL; line; line = strtok_r(NULL, "\n", &save)) {
                fprintf(stderr, "acmectl: DNS %s\n", line);
            }
            free(out);
        }
        free(name);
        free(value);
    }
    acme_dns_config_free(&o.dns);
    return rc;
}

static int
cmd_run(ctl_t *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        { "challenge", required_argument, NULL, 'c' },
        { "http-listen", required_argument, NULL, 'H' },
        { "tls-listen", required_argument, NULL, 'T' },
        { "key", required_argument, NULL, 'k' },
        { "profile", required_argument, NULL, 'p' },
        { "preferred-chain", required_argument, NULL, 'P' },
        { "fallback-ca", required_argument, NULL, 'F' },
        { "status-file", required_argument, NULL, 'S' },
        { "poll-timeout", required_argument, NULL, 'W' },
        { "tsig-key", required_argument, NULL, 'K' },
        { "dns-tsig-key", required_argument, NULL, 'K' },
        { "dns-update", required_argument, NULL, 'U' },
        { "dns-server", required_argument, NULL, 'D' },
        { "dns-resolver", required_argument, NULL, 'R' },
        { "dns-propagation-timeout", required_argument, NULL, 'X' },
        { "dns-hook", required_argument, NULL, 'j' },
        { "dns-hook-timeout", required_argument, NULL, 'J' },
        { "acme-dns", required_argument, NULL, 'a' },
        { "acme-dns-url", required_argument, NULL, 'u' },
        { "notify", required_argument, NULL, 'N' },
        { NULL, 0, NULL, 0 }
    };
    issue_opts_t         o;
    acme_keyspec_t       ks = ACME_KEYSPEC_DEFAULT;
    acme_ident_t        *ids = NULL;
    size_t               nids = 0, i, nissuers = 0;
    const char          *cas[8];
    int                  idx[8];
    acme_err_t           err;
    acme_host_t          host;
    acme_manager_host_t  mh;
    acme_issuer_conf_t   ic;
    run_t                r;
    acme_notify_conf_t   nc;
    const char          *types[ISSUE_TYPES_MAX];
    char                 typebuf[100];
    size_t               ntypes;
    char                *url;
    int                  c, rc = 1, http, tls;

    memset(&o, 0, sizeof(o));
    memset(&r, 0, sizeof(r));
    memset(&nc, 0, sizeof(nc));
    cas[nissuers++] = ctl->ca ? ctl->ca : "letsencrypt";
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'F' && nissuers < 8) {
            cas[nissuers++] = optarg;
        } else if (c == 'S') {
            r.status_file = optarg;
        } else if (c == 'N') {
            nc.program = optarg;
        } else if (parse_issue_opt(c, &o) != 0) {
            usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "acmectl run: name at least one identifier\n");
        return 2;
    }
    if (o.key != NULL && acme_keyspec_parse(o.key, &ks, &err) != 0) {
        fprintf(stderr, "acmectl: --key: %s\n", err.msg);
        return 2;
    }
    if (issue_types(&o, typebuf, sizeof(typebuf), types, &ntypes) != 0) {
        return 2;
    }
    http = has_type(types, ntypes, "http-01");
    tls = has_type(types, ntypes, "tls-alpn-01");
    rc = parse_idents(argc, argv, optind, &ids, &nids);
    if (rc != 0) {
        goto done;
    }
    rc = 1;
    if (ctl_open_store(ctl, 1) != 0) {
        goto done;
    }
    o.srv = acmectl_chsrv_start(http ? (o.http_listen ? o.http_listen : ":80") : NULL,
                                tls ? (o.tls_listen ? o.tls_listen : ":443") : NULL, &err);
    if (o.srv == NULL) {
        fprintf(stderr, "acmectl: %s\n", err.msg);
        goto done;
    }
    memset(&host, 0, sizeof(host));
    host.data = ctl;
    host.log = ctl_log;
    ctl->loop = acme_loop_new(&host, ctl->verbose ? ACME_LOG_DEBUG : ACME_LOG_INFO, &err);
    memset(&mh, 0, sizeof(mh));
    mh.data = &r;
    mh.challenges.data = &o;
    mh.challenges.publish = ch_publish;
    mh.challenges.withdraw = ch_withdraw;
    mh.cert_updated = run_cert_updated;
    r.ctl = ctl;
    r.m = ctl->loop ? acme_manager_new(ctl->loop, ctl->store, &mh, &err) : NULL;
    if (r.m == NULL) {
        fprintf(stderr, "acmectl: %s\n", err.msg);
        goto done;
    }
    for (i = 0; i < nissuers; i++) {
        url = acme_ca_resolve(cas[i], &err);
        if (url == NULL) {
            fprintf(stderr, "acmectl: CA \"%s\": %s\n", cas[i], err.msg);
            rc = 2;
            goto done;
        }
        memset(&ic, 0, sizeof(ic));
        ic.name = cas[i];
        ic.client.directory_url = url;
        ic.client.ca_file = ctl->ca_cert;
        ic.client.verify = !ctl->insecure;
        ic.client.contact = ctl->contact;
        ic.client.ncontact = ctl->ncontact;
        ic.client.agree_tos = ctl->agree_tos;
        ic.client.eab_kid = ctl->eab_kid;
        ic.client.eab_hmac_key = ctl->eab_hmac;
        ic.client.account_key_file = ctl->account_key;
        ic.client.account_keyspec = ctl->account_keyspec;
        ic.challenge_types = types;
        ic.nchallenge_types = ntypes;
        ic.dns = o.dns.method != ACME_DNS_NONE ? &o.dns : NULL;
        ic.profile = o.profile;
        ic.preferred_chain = o.preferred_chain;
        idx[i] = acme_manager_add_issuer(r.m, &ic, &err);
        free(url);
        if (idx[i] < 0) {
            fprintf(stderr, "acmectl: %s\n", err.msg);
            goto done;
        }
    }
    if (o.poll_timeout > 0) {
        acme_manager_set_poll_timeout(r.m, o.poll_timeout);
    }
    if (nc.program != NULL) {
        nc.store_dir = ctl->storage ? NULL : ctl->state;
        if (acme_manager_set_notify(r.m, &nc, &err) != 0) {
            fprintf(stderr, "acmectl: --notify: %s\n", err.msg);
            rc = 2;
            goto done;
        }
    }
    if (acme_manager_add_cert(r.m, ids, nids, &ks, idx, nissuers, &err) == NULL
        || acme_manager_start(r.m, &err) != 0)
    {
        fprintf(stderr, "acmectl: %s\n", err.msg);
        goto done;
    }
    /* a start: a window the CA opened while its Retry-After kept us from asking is seen now */
    acme_manager_ari_check(r.m, NULL);
    signal(SIGTERM, run_signal);
    signal(SIGINT, run_signal);
    signal(SIGUSR1, run_signal);
    run_write_status(&r);
    while (!run_stop) {
        acme_loop_run(ctl->loop, NULL, 200);
        if (run_renew) {
            run_renew = 0;
            time_t until = 0;
            char   tb[32];

            if (acme_manager_renew(r.m, ids[0].value, &until) == 1) {
                fprintf(stderr, "acmectl: SIGUSR1: not renewing now: the CA asked to wait until %s "
                        "(acmectl renew --force overrides)\n", acme_time_format(until, tb, sizeof(tb)));
            }
        }
        run_write_status(&r);
    }
    rc = 0;
done:
    acme_manager_free(r.m);
    acmectl_chsrv_stop(o.srv);
    acme_dns_config_free(&o.dns);
    for (i = 0; i < nids; i++) {
        acme_ident_free(&ids[i]);
    }
    free(ids);
    return rc;
}

/* ---- upgrade-storage: seal and sign a Redis store in place ---- */

static int
cmd_upgrade_storage(ctl_t *ctl, int argc)
{
    acme_store_migrate_stats_t   st;
    acme_err_t                   err;
    char                        *shown;
    int                          rc;

    if (argc != 1) {
        fprintf(stderr, "acmectl upgrade-storage: no arguments\n");
        return 2;
    }
    if (ctl->storage == NULL || ctl->storage_key == NULL) {
        fprintf(stderr, "acmectl upgrade-storage: give --storage redis://... and --storage-key FILE\n");
        return 2;
    }
    rc = acme_store_upgrade(ctl->storage, ctl->storage_key, &st, &err);
    if (rc != 0) {
        fprintf(stderr, "acmectl: %s\n", err.msg);
        return 1;
    }
    shown = acme_store_url_redact(ctl->storage);
    printf("sealed and signed %zu keys (%zu secret) in %s: %zu accounts, %zu certificates, "
           "%zu pending orders\n", st.keys, st.secrets, shown ? shown : "?", st.accounts, st.certs, st.orders);
    free(shown);
    return 0;
}

/* ---- migrate: copy a store into another (directory <-> Redis) ---- */

static int
cmd_migrate(ctl_t *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        { "from", required_argument, NULL, 'f' },
        { "to", required_argument, NULL, 't' },
        { "from-key", required_argument, NULL, 'F' },
        { "to-key", required_argument, NULL, 'T' },
        { NULL, 0, NULL, 0 }
    };
    acme_store_migrate_stats_t   st;
    const char                  *from = ctl->storage ? ctl->storage : ctl->state, *to = NULL;
    const char                  *from_key = ctl->storage_key, *to_key = ctl->storage_key;
    char                        *sf, *stt;
    acme_err_t                   err;
    int                          c, rc;

    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'f': from = optarg; break;
        case 't': to = optarg; break;
        case 'F': from_key = optarg; break;
        case 'T': to_key = optarg; break;
        default:  usage(stderr); return 2;
        }
    }
    if (to == NULL || optind != argc) {
        fprintf(stderr, "acmectl migrate: --to DIR|URL is needed (and nothing else)\n");
        return 2;
    }
    rc = acme_store_migrate(from, from_key, to, to_key, &st, &err);
    sf = acme_store_url_redact(from);
    stt = acme_store_url_redact(to);
    if (rc != 0) {
        fprintf(stderr, "acmectl: %s\n", err.msg);
        if (st.keys > 0) {
            fprintf(stderr, "acmectl: %zu keys were copied before the failure; running migrate again is safe\n",
                    st.keys);
        }
    } else {
        printf("migrated %zu keys (%zu secret) from %s to %s: %zu accounts, %zu certificates, "
               "%zu pending orders, %zu challenges\n", st.keys, st.secrets, sf ? sf : "?", stt ? stt : "?",
               st.accounts, st.certs, st.orders, st.challenges);
    }
    free(sf);
    free(stt);
    return rc == 0 ? 0 : 1;
}

/* ---- import: certbot's and mod_md's certificates and accounts (import.c) ---- */

static int
cmd_import(ctl_t *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        { "dry-run", no_argument, NULL, 'n' },
        { NULL, 0, NULL, 0 }
    };
    const char  *tool, *dir;
    int          c, dry_run = 0;

    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'n': dry_run = 1; break;
        default:  usage(stderr); return 2;
        }
    }
    if (optind >= argc || argc - optind > 2
        || (strcmp(argv[optind], "certbot") != 0 && strcmp(argv[optind], "mod_md") != 0))
    {
        fprintf(stderr, "acmectl import: certbot [DIR] or mod_md [DIR]\n");
        return 2;
    }
    tool = argv[optind];
    dir = optind + 1 < argc ? argv[optind + 1]
          : strcmp(tool, "certbot") == 0 ? "/etc/letsencrypt" : "/etc/apache2/md";
    if (!dry_run && ctl->storage == NULL && geteuid() == 0 && access(ctl->state, F_OK) != 0) {
        /* made by root, it would be root's: the server's workers could not write in it */
        fprintf(stderr, "acmectl import: the state directory %s does not exist: start the server once (it "
                "makes it for its user), or create it for that user (install -d -o www-data -g www-data -m 0700 "
                "%s)\n", ctl->state, ctl->state);
        return 1;
    }
    if (!dry_run && ctl_open_store(ctl, 1) != 0) {
        return 1;
    }
    return import_command(ctl->store, dry_run, tool, dir);
}

/* --prefix NAME: the prefix=NAME of nginx's acme_storage and Apache's ACMEStorage, for the same store. */
static int
storage_prefix(ctl_t *ctl, const char *prefix)
{
    if (ctl->storage == NULL
        || (strncmp(ctl->storage, "redis://", 8) != 0 && strncmp(ctl->storage, "rediss://", 9) != 0))
    {
        fprintf(stderr, "acmectl: --prefix %s: only with --storage redis://... or rediss://...\n", prefix);
        return -1;
    }
    if (prefix[0] == '\0' || strpbrk(prefix, "&?# ") != NULL) {
        fprintf(stderr, "acmectl: --prefix \"%s\": a key prefix, as in acme_storage URL prefix=NAME\n", prefix);
        return -1;
    }
    if (strstr(ctl->storage, "prefix=") != NULL) {
        fprintf(stderr, "acmectl: --prefix %s: the --storage URL has a prefix already\n", prefix);
        return -1;
    }
    ctl->storage_url = acme_sprintf("%s%cprefix=%s", ctl->storage, strchr(ctl->storage, '?') ? '&' : '?',
                                    prefix);
    if (ctl->storage_url == NULL) {
        fprintf(stderr, "acmectl: out of memory\n");
        return -1;
    }
    ctl->storage = ctl->storage_url;
    return 0;
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "state", required_argument, NULL, 's' },
        { "storage", required_argument, NULL, 'S' },
        { "storage-key", required_argument, NULL, 'Y' },
        { "prefix", required_argument, NULL, 'X' },
        { "ca", required_argument, NULL, 'a' },
        { "ca-cert", required_argument, NULL, 'C' },
        { "contact", required_argument, NULL, 'm' },
        { "agree-tos", no_argument, NULL, 't' },
        { "insecure", no_argument, NULL, 'I' },
        { "eab-kid", required_argument, NULL, 'e' },
        { "eab-hmac-key", required_argument, NULL, 'E' },
        { "account-key", required_argument, NULL, 'A' },
        { "account-key-type", required_argument, NULL, 'K' },
        { "verbose", no_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    ctl_t        ctl;
    acme_err_t   kerr;
    int          c, rc;
    const char  *cmd, *prefix = NULL;

    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);   /* a full disk (or a file size limit) is a write error, not a crash */
    memset(&ctl, 0, sizeof(ctl));
    acme_http_set_server("acmectl");
    ctl.account_keyspec = ACME_KEYSPEC_DEFAULT;
    ctl.state = getenv("ACME_STATE") ? getenv("ACME_STATE") : DEFAULT_STATE;
    ctl.contact = calloc((size_t) argc, sizeof(char *));
    if (ctl.contact == NULL) {
        return 1;
    }
    /* options stop at the command; each command parses its own */
    while ((c = getopt_long(argc, argv, "+vh", opts, NULL)) != -1) {
        switch (c) {
        case 's': ctl.state = optarg; break;
        case 'S': ctl.storage = optarg; break;
        case 'Y': ctl.storage_key = optarg; break;
        case 'X': prefix = optarg; break;
        case 'a': ctl.ca = optarg; break;
        case 'C': ctl.ca_cert = optarg; break;
        case 'm': ctl.contact[ctl.ncontact++] = optarg; break;
        case 't': ctl.agree_tos = 1; break;
        case 'I': ctl.insecure = 1; break;
        case 'e': ctl.eab_kid = optarg; break;
        case 'E':
            acme_free_secret(ctl.eab_hmac, ctl.eab_hmac ? strlen(ctl.eab_hmac) : 0);
            ctl.eab_hmac = eab_key_read(optarg);
            if (ctl.eab_hmac == NULL) {
                free(ctl.contact);
                return 2;
            }
            break;
        case 'A': ctl.account_key = optarg; break;
        case 'K':
            if (acme_keyspec_parse(optarg, &ctl.account_keyspec, &kerr) != 0) {
                fprintf(stderr, "acmectl: --account-key-type: %s\n", kerr.msg);
                free(ctl.contact);
                return 2;
            }
            break;
        case 'v': ctl.verbose = 1; break;
        case 'h': usage(stdout); free(ctl.contact); return 0;
        default:  usage(stderr); free(ctl.contact); return 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        free(ctl.contact);
        return 2;
    }
    if (prefix != NULL && storage_prefix(&ctl, prefix) != 0) {
        free(ctl.contact);
        return 2;
    }
    cmd = argv[optind];
    argc -= optind;
    argv += optind;

    if (strcmp(cmd, "issue") == 0) {
        rc = cmd_issue(&ctl, argc, argv);
    } else if (strcmp(cmd, "renew") == 0) {
        rc = cmd_renew(&ctl, argc, argv);
    } else if (strcmp(cmd, "run") == 0) {
        rc = cmd_run(&ctl, argc, argv);
    } else if (strcmp(cmd, "ari-check") == 0) {
        rc = cmd_ari_check(&ctl, argc, argv);
    } else if (strcmp(cmd, "list") == 0) {
        rc = cmd_list(&ctl, 0);
    } else if (strcmp(cmd, "status") == 0) {
        if (argc > 2 || (argc == 2 && strcmp(argv[1], "--json") != 0)) {
            fprintf(stderr, "acmectl status: only --json is known\n");
            free(ctl.contact);
            return 2;
        }
        rc = cmd_list(&ctl, 1);
    } else if (strcmp(cmd, "revoke") == 0) {
        rc = cmd_revoke(&ctl, argc, argv);
    } else if (strcmp(cmd, "account") == 0) {
        rc = cmd_account(&ctl, argc, argv);
    } else if (strcmp(cmd, "migrate") == 0) {
        rc = cmd_migrate(&ctl, argc, argv);
    } else if (strcmp(cmd, "import") == 0) {
        rc = cmd_import(&ctl, argc, argv);
    } else if (strcmp(cmd, "dns-persist-record") == 0) {
        rc = cmd_dns_persist_record(&ctl, argc, argv);
    } else if (strcmp(cmd, "upgrade-storage") == 0) {
        rc = cmd_upgrade_storage(&ctl, argc);
    } else {
        fprintf(stderr, "acmectl: unknown command \"%s\"\n", cmd);
        usage(stderr);
        rc = 2;
    }
    acme_client_free(ctl.client);
    acme_loop_free(ctl.loop);
    acme_store_close(ctl.store);
    free(ctl.ca_url);
    free(ctl.storage_url);
    free(ctl.contact);
    acme_free_secret(ctl.eab_hmac, ctl.eab_hmac ? strlen(ctl.eab_hmac) : 0);
    acme_ident_errors_free(ctl.ident_errors, ctl.nident_errors);
    acme_persist_notes_free(ctl.persist_notes, ctl.npersist_notes);
    return rc;
}
