/*
 * mod_acme: automatic HTTPS for Apache httpd 2.4 on top of the ACME core in common/.
 *
 * Shared declarations of the module's parts:
 *   mod_acme.c            module record, hook registration, post_config / child_init orchestration
 *   mod_acme_config.c     directives, per-server configuration and merging, validation
 *   mod_acme_dns.c        DNS validation settings (ACMEDNS*), their merging and check
 *   mod_acme_shm.c        shared memory between the processes (certificate generations, status, renew queue)
 *   mod_acme_drive.c      the background thread running the ACME manager in one process at a time
 *   mod_acme_ssl.c        mod_ssl integration: certificate files, fallback, certificate callback, hot swap
 *   mod_acme_ondemand.c   on-demand TLS: first handshakes wait for a certificate the driver orders
 *   mod_acme_challenge.c  HTTP-01 and TLS-ALPN-01 answers, acme-tls/1 protocol selection
 *   mod_acme_status.c     the acme-status handler
 */
#ifndef MOD_ACME_H
#define MOD_ACME_H

#include <httpd.h>
#include <http_config.h>
#include <http_log.h>
#include <apr_strings.h>
#include <apr_tables.h>
#include <apr_thread_mutex.h>
#include <apr_thread_rwlock.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/evp.h>

#include "acme_dns.h"
#include "acme_ident.h"
#include "acme_key.h"

/* Our own numbered log messages, in the spirit of httpd's APLOGNO(). */
#define ACMELOGNO(n)            "ACME" #n ": "

#define MOD_ACME_DEFAULT_STATE_DIR  "/var/lib/apache2/acme"
#define MOD_ACME_DEFAULT_CA         "letsencrypt"
#define MOD_ACME_HANDLER            "acme-status"
#define MOD_ACME_DRIVER_LOCK        "apache_driver"

extern module AP_MODULE_DECLARE_DATA acme_module;
#ifndef MOD_ACME_MAIN     /* mod_acme.c gets it from AP_DECLARE_MODULE */
APLOG_USE_MODULE(acme);
#endif

/* ---- configuration (mod_acme_config.c) ---- */

#define ACME_UNSET  (-1)

typedef enum {
    ACME_CERT_UNSET = 0,
    ACME_CERT_OFF,
    ACME_CERT_ON,           /* ServerName + ServerAlias */
    ACME_CERT_NAMES         /* the listed names */
} mod_acme_cert_mode_t;

typedef struct {
    const char  *name;      /* as the admin wrote it */
    const char  *url;       /* resolved directory URL */
} mod_acme_ca_t;

typedef struct mod_acme_cert_s mod_acme_cert_t;

typedef struct {
    server_rec            *s;
    apr_array_header_t    *cas;             /* mod_acme_ca_t; NULL: unset */
    apr_array_header_t    *contacts;        /* const char *; NULL: unset */
    int                    accept_tos;      /* ACME_UNSET, 0, 1 */
    const char            *trusted_cert;
    apr_array_header_t    *challenges;      /* const char *; NULL: unset */
    apr_array_header_t    *keytypes;        /* acme_keyspec_t; NULL: unset */
    const char            *profile;
    const char            *eab_kid;
    const char            *eab_key_file;
    const char            *eab_hmac;        /* secret, read from eab_key_file */
    const char            *preferred_chain;
    const char            *state_dir;       /* server-wide only */
    const char            *storage;         /* ACMEStorage: redis:// URL (prefix folded in); NULL: state_dir */
    const char            *storage_shown;   /* the URL without its password, for messages */
    const char            *storage_key;     /* ACMEStorageKey file */
    const char            *notify_cmd;      /* ACMENotifyCmd PROGRAM, server-wide only */
    long                   notify_timeout;  /* s; 0: the core's default */
    long                   notify_expiring; /* s; 0: the core's default */
    acme_dns_config_t      dns;             /* ACMEDNS*: each field inherited on its own; the TSIG key is
                                             * the core's (malloc'd), freed with the pool of the server
                                             * that read it */
    const char            *dns_tsig_file;   /* ACMEDNSTSIGKey, for messages */
    const char            *dns_acmedns_file; /* ACMEDNSAcmeDNS's account file, for messages */
    const char            *dns_directive;   /* "ACMEDNSx (file:line)" of this server's own first ACMEDNS*
                                             * directive; not inherited */
    mod_acme_cert_mode_t   cert_mode;       /* per vhost, not inherited */
    apr_array_header_t    *cert_names;      /* const char *, for ACME_CERT_NAMES */
    const char            *cert_directive;  /* "file:line" of ACMECertificate, for messages */
    int                    ondemand;        /* ACMEOnDemand on: per vhost, not inherited */
    const char            *od_ask;          /* ACMEOnDemandAsk URL (server-wide) */
    int                    od_ask_timeout;  /* seconds, 0: the core's default */
    int                    od_max, od_rate, od_refuse, od_wait, od_waiting, od_close;   /* 0: default */
    long                   od_unseen;       /* seconds, 0: MOD_ACME_OD_UNSEEN */

    /* filled in post_config (per generation) */
    apr_array_header_t    *managed;         /* mod_acme_cert_t *: the certificates this vhost manages */
    apr_array_header_t    *served;          /* mod_acme_cert_t *: what an SSL vhost serves */
    int                    ssl_seen;        /* mod_ssl asked us for its certificates */
    int                    cb_installed;    /* our certificate callback is on its SSL_CTX */
} mod_acme_srv_conf_t;

#define MOD_ACME_RENEW_INTERVAL  600    /* a certificate is forced at most once per this, by default */

typedef struct {
    int  renew_allowed;                     /* ACMEStatusRenew, ACME_UNSET, 0, 1 */
    int  renew_interval;                    /* seconds, ACME_UNSET: MOD_ACME_RENEW_INTERVAL */
    int  format;                            /* ACMEStatusFormat: ACME_UNSET, MOD_ACME_FORMAT_* */
} mod_acme_dir_conf_t;

#define MOD_ACME_FORMAT_JSON        0
#define MOD_ACME_FORMAT_PROMETHEUS  1

extern const command_rec mod_acme_cmds[];
void *mod_acme_create_srv_conf(apr_pool_t *p, server_rec *s);
void *mod_acme_merge_srv_conf(apr_pool_t *p, void *base, void *add);
void *mod_acme_create_dir_conf(apr_pool_t *p, char *dir);
void *mod_acme_merge_dir_conf(apr_pool_t *p, void *base, void *add);

mod_acme_srv_conf_t *mod_acme_srv_conf(server_rec *s);
/* Effective values with defaults applied. */
const char *mod_acme_state_dir(server_rec *base);
int mod_acme_check_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s);
const char *mod_acme_vhost_id(apr_pool_t *p, const server_rec *s);

/* ---- DNS validation settings (mod_acme_dns.c) ---- */

const char *mod_acme_set_dns_update(cmd_parms *cmd, void *dc, const char *arg);
const char *mod_acme_set_dns_tsig_key(cmd_parms *cmd, void *dc, const char *arg);
const char *mod_acme_set_dns_hook(cmd_parms *cmd, void *dc, const char *prog, const char *timeout);
const char *mod_acme_set_dns_acmedns(cmd_parms *cmd, void *dc, const char *file, const char *url);
const char *mod_acme_set_dns_server(cmd_parms *cmd, void *dc, const char *arg);
const char *mod_acme_set_dns_resolver(cmd_parms *cmd, void *dc, const char *arg);
const char *mod_acme_set_dns_propagation(cmd_parms *cmd, void *dc, const char *arg);
void mod_acme_dns_merge(mod_acme_srv_conf_t *sc, const mod_acme_srv_conf_t *base,
                        const mod_acme_srv_conf_t *add);
/* 1 when the server's ACMEChallenge lists dns-01. */
int  mod_acme_dns01(const mod_acme_srv_conf_t *sc);
/* check_config: complete DNS settings where dns-01 is used, wildcards only with it. 0, or -1 (logged). */
int  mod_acme_dns_check(apr_pool_t *ptemp, server_rec *base);

/* ---- the managed certificates and process-wide state ---- */

/* What one process serves for one certificate: parsed once per generation change. */
typedef struct {
    X509            *leaf;
    STACK_OF(X509)  *chain;     /* without the leaf */
    EVP_PKEY        *key;
    int              fallback;  /* self-signed stand-in */
} mod_acme_served_t;

struct mod_acme_cert_s {
    const char            *name;        /* store name: certs/<name> */
    acme_ident_t          *ids;         /* values in the pool */
    size_t                 nids;
    const char           **names;       /* identifier values, as strings */
    acme_keyspec_t         ks;
    server_rec            *s;           /* the vhost whose ACMECertificate asks for it */
    mod_acme_srv_conf_t   *sc;
    const char            *cert_file;   /* what mod_ssl loads at startup */
    const char            *key_file;
    int                    fallback;    /* at startup: only the self-signed stand-in exists */
    int                    ssl_served;  /* some SSL vhost serves it */
    int                    idx;         /* in mod_acme_g.certs and the shared generation table */
    /* per process: */
    mod_acme_served_t      cur;         /* guarded by mod_acme_g.lock */
    volatile apr_uint32_t  loaded_gen;  /* the shared generation cur was read at */
    apr_time_t             retry_at;    /* a failed reload is tried again from then (under reload_lock) */
};

typedef struct mod_acme_shm_s mod_acme_shm_t;

typedef struct {
    apr_pool_t            *pool;        /* pconf of this generation */
    server_rec            *base;
    const char            *state_dir;
    apr_array_header_t    *certs;       /* mod_acme_cert_t * */
    mod_acme_shm_t        *shm;
    struct acme_store_s   *store;       /* the shared store (Redis) or the state directory; a Redis handle
                                         * reaches the children unconnected: each connects its own */
    struct acme_store_s   *local;       /* the state directory: fallbacks, the local cache, driver lock */
    const char            *storage;     /* Redis URL or NULL */
    const char            *storage_shown;
    const char            *storage_key;
    apr_thread_rwlock_t   *lock;        /* guards the served certificates (per process) */
    apr_thread_mutex_t    *reload_lock; /* one reload at a time (per process) */
    int                    active;      /* post_config completed with managed certificates */
    apr_array_header_t    *od_servers;  /* server_rec *: the vhosts with ACMEOnDemand on */
} mod_acme_globals_t;

extern mod_acme_globals_t mod_acme_g;

/* Per connection (mod_acme.c). */
typedef struct {
    int          fallback;      /* the handshake served a fallback certificate: requests get 503 */
    int          tls_alpn;      /* switched to acme-tls/1: a TLS-ALPN-01 validation */
} mod_acme_conn_t;

mod_acme_conn_t *mod_acme_conn(conn_rec *c, int create);

/* ---- the module (mod_acme.c) ---- */

int mod_acme_parent_started(server_rec *s);

/* ---- shared memory (mod_acme_shm.c) ---- */

#define MOD_ACME_RENEW_SLOTS     16
#define MOD_ACME_NAME_MAX        256
#define MOD_ACME_STATUS_MAX      (128 * 1024)

/* Per certificate entries for mod_acme_g.certs as it is when called (post_config). */
apr_status_t mod_acme_shm_create(apr_pool_t *p, server_rec *s, mod_acme_shm_t **shm);
/* Moves whenever any certificate's generation does. */
apr_uint32_t mod_acme_shm_generation(mod_acme_shm_t *shm);
apr_uint32_t mod_acme_shm_cert_generation(mod_acme_shm_t *shm, int idx);
/* After the certificate's local files (fs store or local cache) changed; idx -1: every certificate. */
void         mod_acme_shm_bump(mod_acme_shm_t *shm, int idx);
/* Status JSON written by the driver; read into a pool string (NULL when none yet). */
void         mod_acme_shm_status_put(mod_acme_shm_t *shm, const char *json, apr_size_t len);
const char  *mod_acme_shm_status_get(mod_acme_shm_t *shm, apr_pool_t *p);
/* Renew requests from any process to the driver. 0 queued, -1 queue full. */
int          mod_acme_shm_renew_push(mod_acme_shm_t *shm, const char *name);
/* Takes one queued request into buf; 1 taken, 0 none. */
int          mod_acme_shm_renew_pop(mod_acme_shm_t *shm, char *buf, apr_size_t size);
/* A new driver repairs what a process that died mid-write left: the status sequence, renew slots held by
 * dead processes. Returns how many things it repaired. */
int          mod_acme_shm_recover(mod_acme_shm_t *shm);
/*
 * A forced renewal of certificate i (index in mod_acme_g.certs) at now: 0 claimed (*prev: the previous
 * time, for mod_acme_shm_renew_unclaim), 1 the CA asked to wait until *until, 2 forced less than interval
 * seconds ago (next at *until), -1 no such certificate. Atomic across processes.
 */
int          mod_acme_shm_renew_claim(mod_acme_shm_t *shm, int i, apr_uint32_t now, apr_uint32_t interval,
                                      apr_uint32_t *until, apr_uint32_t *prev);
void         mod_acme_shm_renew_unclaim(mod_acme_shm_t *shm, int i, apr_uint32_t now, apr_uint32_t prev);
/* The driver: until when the CA asked to wait for certificate i (0: no more). */
void         mod_acme_shm_set_ca_wait(mod_acme_shm_t *shm, int i, apr_uint32_t until);
/* The parent started (not a graceful restart): the first driver asks ARI again (taken once). */
void         mod_acme_shm_set_ari_start(mod_acme_shm_t *shm);
int          mod_acme_shm_take_ari_start(mod_acme_shm_t *shm);
/*
 * An ARI check of certificate i requested at now: 0 queued for the driver, 2 one was accepted less than
 * interval ago (*until: when the next may be), -1 no such certificate. The driver takes it once.
 */
int          mod_acme_shm_ari_claim(mod_acme_shm_t *shm, int i, apr_uint32_t now, apr_uint32_t interval,
                                    apr_uint32_t *until);
int          mod_acme_shm_ari_take(mod_acme_shm_t *shm, int i);
void         mod_acme_shm_set_driver(mod_acme_shm_t *shm, pid_t pid);
pid_t        mod_acme_shm_driver(mod_acme_shm_t *shm);

/* ---- the driver (mod_acme_drive.c) ---- */

void mod_acme_drive_child_init(apr_pool_t *pchild, server_rec *s);
void mod_acme_drive_child_stopping(apr_pool_t *pchild, int graceful);
/* Route a core log line to the error log (acme_host_t.log). */
void mod_acme_core_log(void *data, int level, const char *msg);
int  mod_acme_core_log_level(server_rec *s);

/* ---- mod_ssl integration (mod_acme_ssl.c) ---- */

/* post_config, before mod_ssl: state dir, certificate list, fallback certificates. */
int  mod_acme_ssl_prepare(apr_pool_t *pconf, apr_pool_t *ptemp, server_rec *s);
/* post_config, after mod_ssl: warnings about names no SSL vhost serves. */
void mod_acme_ssl_check(apr_pool_t *ptemp, server_rec *s);
void mod_acme_ssl_register_hooks(apr_pool_t *p);
/* 1 when this connection's handshake served a fallback certificate. */
int  mod_acme_conn_fallback(conn_rec *c);
/* Parse what this host has for cert into out (0 ok, 1 none, -1 error with msg): the fs store, or with
 * ACMEStorage the local cache the driver keeps; never Redis (this runs inside handshakes). */
int  mod_acme_cert_load(apr_pool_t *p, const char *state_dir, mod_acme_cert_t *cert,
                        mod_acme_served_t *out, const char **msg);
void mod_acme_served_free(mod_acme_served_t *sv);
/* Copies what the shared store has for cert into the local cache (cache/<name>/...), when it differs.
 * 0 written (*changed = 1) or unchanged, 1 nothing stored, -1 error with msg. Driver and post_config only:
 * it reads Redis. changed may be NULL. */
int  mod_acme_cache_update(apr_pool_t *p, struct acme_store_s *shared, mod_acme_cert_t *cert, int *changed,
                           const char **msg);
/* 1 when the name is a configured certificate's store name; its index in mod_acme_g.certs in *idx. */
int  mod_acme_cert_index(const char *name, int *idx);

/* ---- challenges (mod_acme_challenge.c) ---- */

void mod_acme_challenge_register_hooks(apr_pool_t *p);
/* post_config: let acme-tls/1 be selected on every server without a Protocols line. */
void mod_acme_challenge_add_protocol(apr_pool_t *pconf, server_rec *s);
/* 1 when host is one of the managed identifiers. */
int  mod_acme_is_managed_name(const char *host);

/* ---- on-demand TLS (mod_acme_ondemand.c) ---- */

#define MOD_ACME_OD_SLOTS        512    /* names known at once (refused ones included) */
#define MOD_ACME_OD_REFUSE       600    /* seconds a refused name stays refused, by default */
#define MOD_ACME_OD_WAIT         30     /* seconds a first handshake waits, by default */
#define MOD_ACME_OD_WAITING      16     /* handshake threads waiting at once, by default */
#define MOD_ACME_OD_UNSEEN       (30L * 86400)  /* a name unseen this long is not renewed */

/* post_config: the table of on-demand names (when a vhost has ACMEOnDemand on). */
apr_status_t mod_acme_od_shm_create(apr_pool_t *p, server_rec *s);
/* The effective limits (defaults applied) from the main server's configuration. */
void mod_acme_od_limits(mod_acme_srv_conf_t *sc, int *refuse, int *wait, int *waiting);
/* In a handshake on an on-demand vhost (cert_cb): 1 served an on-demand certificate, 0 the caller serves
 * the fallback, -1 close (fail=close). May wait for the driver, bounded by the waiting cap. */
int  mod_acme_od_handshake(SSL *ssl, server_rec *s, mod_acme_srv_conf_t *sc);
/* acme-status POST ?renew=NAME for an issued on-demand name: 0 claimed, 2 forced less than interval seconds
 * ago (*until: when it may be again), -1 no such name. */
int  mod_acme_od_renew_claim(const char *name, apr_uint32_t now, apr_uint32_t interval, apr_uint32_t *until);
/* 1 when host is an on-demand name being ordered or issued (HTTP-01 / TLS-ALPN-01 answers); with ACMEStorage,
 * any name an on-demand vhost allows (another node may be ordering it). */
int  mod_acme_od_known(const char *host);
/* The driver: on its loop, once per turn. */
struct acme_manager_s;
struct acme_loop_s;
void *mod_acme_od_driver_new(apr_pool_t *p, struct acme_loop_s *loop, struct acme_manager_s *m,
                             struct acme_store_s *st, server_rec *s, apr_array_header_t *issuers);
void  mod_acme_od_driver_step(void *od);
void  mod_acme_od_driver_free(void *od);
/* The status document's "on_demand" member (a jansson object). */
void *mod_acme_od_status(void);
/* cert_updated for a store name that is no configured certificate. */
void  mod_acme_od_cert_updated(const char *name);
/* ACMEStorage: another node announced a change to a store name (issued, renewed). */
void  mod_acme_od_announced(const char *name);

/* ---- status (mod_acme_status.c) ---- */

void mod_acme_status_register_hooks(apr_pool_t *p);

#endif
