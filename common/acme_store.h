/*
 * The store: where accounts, certificates, keys, pending orders and challenge tokens live.
 * A small key/value interface (keys are '/'-separated paths such as "certs/example.org/fullchain.pem")
 * with pluggable backends (filesystem now, a shared one later), and typed records on top of it.
 *
 * Layout:
 *   accounts/<ca-id>/account.key     account private key (secret)
 *   accounts/<ca-id>/account.json    {"url": ..., "contact": [...], "directory": ...}
 *   certs/<name>/fullchain.pem       leaf first
 *   certs/<name>/privkey.pem         (secret)
 *   certs/<name>/meta.json           acme_certmeta_t
 *   certs/<name>/order.json          an order in flight, so a restart resumes it
 *   certs/<name>/order.key           its fresh certificate key (secret)
 *   challenges/http-01/<token>       "<dns|ip> <identifier> <key authorization>"
 *   challenges/tls-alpn-01/<sni>     "<dns|ip> <identifier> <key authorization>"
 */
#ifndef ACME_STORE_H
#define ACME_STORE_H

#include <stddef.h>
#include <time.h>
#include <jansson.h>
#include "acme_err.h"
#include "acme_ident.h"
#include "acme_key.h"

typedef struct acme_store_s  acme_store_t;
typedef struct acme_lock_s   acme_lock_t;

/*
 * Locks a running server holds in its state directory while it manages the certificates there:
 * acmectl will not renew under them (docs/acmectl.md).
 */
#define ACME_SERVER_LOCK_NGINX   "nginx_runner"
#define ACME_SERVER_LOCK_APACHE  "apache_driver"      /* mod_acme.h: MOD_ACME_DRIVER_LOCK */

typedef struct {
    const char  *key;
    const void  *data;      /* NULL: delete this key as part of the commit */
    size_t       len;
    int          secret;    /* 0600 and wiped from memory */
} acme_store_item_t;

typedef struct {
    /* 0 found, 1 not found, -1 error. *data is malloc'd and NUL-terminated. */
    int  (*get)(acme_store_t *st, const char *key, char **data, size_t *len, acme_err_t *err);
    /* Atomic replace of one key. */
    int  (*put)(acme_store_t *st, const char *key, const void *data, size_t len, int secret,
                acme_err_t *err);
    /* 0 deleted or absent. */
    int  (*del)(acme_store_t *st, const char *key, acme_err_t *err);
    /* Names directly below a prefix ("certs" lists certificate names). Sorted, malloc'd array of malloc'd. */
    int  (*list)(acme_store_t *st, const char *prefix, char ***names, size_t *n, acme_err_t *err);
    /* All items become visible together, or none (a crash in the middle is rolled forward or back on the
     * next open/get). */
    int  (*commit)(acme_store_t *st, const acme_store_item_t *items, size_t n, acme_err_t *err);
    /* Exclusive lock named name, across processes. 1 taken, 0 held by another, -1 error. Non-blocking. */
    int  (*lock)(acme_store_t *st, const char *name, acme_lock_t **lk, acme_err_t *err);
    void (*unlock)(acme_lock_t *lk);
    void (*destroy)(acme_store_t *st);
} acme_store_ops_t;

struct acme_store_s {
    const acme_store_ops_t *ops;
    void                   *data;
};

/*
 * Filesystem backend rooted at dir: directories 0700, secret files 0600, other files 0644, every write
 * temp + fsync + rename + fsync(dir). Creates dir (missing parents 0755, dir itself 0700) when create is
 * set. Refuses a dir that is a symbolic link, is not a directory or is not writable, with a message naming
 * it. Every key is resolved beneath the directory's descriptor without following symbolic links: a link in
 * the store is an error naming it. A directory the store writes in that its user owns with a looser mode is
 * tightened to 0700; one owned by another user that others may write in is refused. Opened by root, a
 * directory that another user owns is acted on as that user (filesystem ids switched around each
 * operation, in the calling thread), so root never writes there as root.
 * Keys failing acme_store_key_check are refused (ACME_ERR_INPUT).
 */
/* create: 1 creates the directory; | ACME_STORE_FS_READER skips the sweep of temporary files a crash left
 * (the process that writes does it: an nginx worker that only reads would walk every directory);
 * | ACME_STORE_FS_RDONLY only reads (no directory made, no journal recovery, no sweep; writes refused): for
 * a configuration check run by root. */
#define ACME_STORE_FS_READER  4
#define ACME_STORE_FS_RDONLY  8
acme_store_t *acme_store_fs_open(const char *dir, int create, acme_err_t *err);
void          acme_store_close(acme_store_t *st);
/*
 * What root does for a server whose workers run as uid/gid: creates dir when missing (parents 0755, dir
 * 0700), and gives dir itself (never what is in it) to uid/gid when root owns it, through a descriptor
 * opened O_NOFOLLOW | O_DIRECTORY; a looser mode is tightened to 0700. uid < 0: no owner change. Everything
 * inside is left to the workers. 0 or -1 with err naming dir.
 */
int           acme_store_fs_prepare(const char *dir, long uid, long gid, acme_err_t *err);

/*
 * Key rules shared by every backend. A segment (a certificate name, a CA id, a lock name...) is 1..200
 * bytes of [A-Za-z0-9._@+-], does not start with '.' (so no "." or ".."; dot names are the backend's own),
 * contains no ".tmp." and does not end in ".next". A key is 1..1024 bytes of such segments joined by single
 * '/' (no leading, trailing or doubled '/'), and its first segment is not "locks". 0 ok, -1 with err
 * (ACME_ERR_INPUT) naming the key.
 */
int acme_store_name_check(const char *name, const char *what, acme_err_t *err);
/* Turn any text into a name acme_store_name_check accepts (characters mapped to '_', reserved ".tmp."
 * and ".next" defused, long text cut with a hash to stay distinct). malloc'd. */
char *acme_store_name_make(const char *s, size_t n);
int acme_store_key_check(const char *key, acme_err_t *err);

/* ---- choosing a backend: a directory or Redis (common/acme_store_backend.c) ---- */

#define ACME_STORE_CREATE  1    /* filesystem: create the directory (and missing parents) */
#define ACME_STORE_LAZY    2    /* Redis: do not connect now (the first operation does); a host that must
                                 * start while Redis is down opens with this */

/*
 * A directory path opens the filesystem backend (acme_store_fs_open); a URL opens Redis:
 *   redis://[user:password@]host[:port][/db][?NAME=VALUE&...]      rediss://... for TLS
 * user and password are percent-decoded; a user name alone needs password_file. Parameters:
 *   prefix=NAME          key prefix, default "acme:" (a ':' is appended when missing)
 *   password_file=PATH   the password (one line) from a file, instead of the URL
 *   tls_ca=FILE          CA bundle to verify the server (default: the system trust store)
 *   tls_cert=FILE, tls_key=FILE   a client certificate (Redis' tls-auth-clients)
 *   tls_servername=NAME  name to verify and send as SNI (default: the host)
 *   connect_timeout=MS, timeout=MS   default 2000 and 5000 ("2s" also works)
 *   lock_lease=SECONDS   lease of a lock, default 30 ("500ms" also works)
 * key_file: the storage key (see acme_aead.h): it seals secret items in Redis and signs the others
 * (acme_store_on_forged); refused with a directory (files there are 0600). Reading a sealed value without
 * the key, or with another key, fails clearly.
 * flags: ACME_STORE_CREATE | ACME_STORE_LAZY (1 is create, as for acme_store_fs_open). Unless LAZY, a Redis
 * store connects (and authenticates) before returning. Errors name the URL without its password.
 */
acme_store_t *acme_store_open(const char *url_or_dir, const char *key_file, int flags, acme_err_t *err);

/*
 * The host name of a Redis URL (malloc'd), NULL when url is no Redis URL or names an address. Addresses
 * for it from the server's resolver (nginx's "resolver"): every store connects to them instead of asking
 * getaddrinfo(); addrs "192.0.2.1,[2001:db8::1]" or NULL with error (connects fail with it); host NULL
 * forgets them. Process-wide, for the thread that runs the core.
 */
char *acme_store_redis_host(const char *url);
int   acme_store_redis_host_addresses(const char *host, const char *addrs, const char *error);
/* "redis" or "filesystem". */
const char   *acme_store_backend(const acme_store_t *st);
/* The URL with any password replaced by "***" (malloc'd); other strings copied. */
char         *acme_store_url_redact(const char *url_or_dir);
/* 0 when the store answers (filesystem: always), -1 with err. */
int           acme_store_ping(acme_store_t *st, acme_err_t *err);

/*
 * Locks of a shared store have a lease (Redis: SET NX PX, default 30 s). The holder must call
 * acme_store_lock_refresh at least every acme_store_lock_lease_ms()/3 while it works (a Redis store also
 * refreshes due leases by itself at the start of any operation on the same store). 1 still held (lease
 * extended), 0 lost (the lease ran out and the lock may be someone else's: stop, do not commit results),
 * -1 Redis could not be reached (still within the lease: try again soon). Filesystem locks need none:
 * always 1. Unlock (ops->unlock) before closing the store, or the lease expires by itself.
 */
int           acme_store_lock_refresh(acme_store_t *st, acme_lock_t *lk, acme_err_t *err);
/* The lease in ms, 0 when locks have none (filesystem). */
long          acme_store_lock_lease_ms(const acme_store_t *st);

/*
 * Change notification. A value that differs from the last one seen means that some certificate's
 * fullchain/privkey changed. Redis: the counter <prefix>info:generation, INCR'd in the same transaction as
 * each such change; filesystem (or any other backend): a 64-bit fingerprint of the names and chains under
 * certs/ (reads every fullchain.pem: poll it every few seconds, not per request). Compare for equality only.
 */
int           acme_store_generation(acme_store_t *st, unsigned long long *gen, acme_err_t *err);

/*
 * Redis only: every such change is also PUBLISHed on the channel <prefix>"events" with the certificate name.
 * acme_store_watch_open subscribes on a connection of its own (NULL with ACME_ERR_CONFIG for the filesystem).
 * Poll acme_store_watch_fd() for POLLIN, then call acme_store_watch_next() until it returns 0:
 * 1 *name set (malloc'd certificate name), 0 nothing more for now, -1 the connection is gone (close the
 * watch, open a new one later, and compare acme_store_generation: changes may have been missed).
 * One thread at a time per watch.
 */
typedef struct acme_store_watch_s acme_store_watch_t;
acme_store_watch_t *acme_store_watch_open(acme_store_t *st, acme_err_t *err);
int                 acme_store_watch_fd(const acme_store_watch_t *w);
int                 acme_store_watch_next(acme_store_watch_t *w, char **name, acme_err_t *err);
void                acme_store_watch_close(acme_store_watch_t *w);
/*
 * Challenge announcements (Redis only), for hosts that answer challenges from their own memory (nginx's
 * shared zone) instead of reading the store per request (Apache). The issuing core announces every
 * challenge it publishes or withdraws on the channel <prefix>"challenges"; acme_store_watch_open_challenges
 * opens a watch that receives them as well (acme_store_watch_next returns 2 with *name set to the message,
 * malloc'd; read it with acme_store_challenge_msg_parse). A host that has made an announced challenge
 * answerable calls acme_store_challenge_ack; the core waits until acme_store_challenge_acks reaches the
 * count acme_store_challenge_announce returned (the watches that got it, the sender's own included; 0 for
 * a filesystem store), or a time limit, before it asks the CA to validate.
 * key: the token (http-01) or the SNI (tls-alpn-01), as in challenges/<type>/<key>.
 */
acme_store_watch_t *acme_store_watch_open_challenges(acme_store_t *st, acme_err_t *err);
int acme_store_challenge_announce(acme_store_t *st, int add, const char *type, const char *key,
    const acme_ident_t *id, const char *key_authz, acme_err_t *err);
int acme_store_challenge_ack(acme_store_t *st, const char *type, const char *key, acme_err_t *err);
/* *n: acknowledgements so far of the last announcement of this challenge. */
int acme_store_challenge_acks(acme_store_t *st, const char *type, const char *key, long *n, acme_err_t *err);

typedef struct {
    int          add;           /* 1 published, 0 withdrawn */
    const char  *type;          /* "http-01" or "tls-alpn-01" */
    const char  *key;           /* token or SNI (valid as a store key) */
    acme_ident_t id;            /* add only: the identifier (malloc'd value) */
    const char  *key_authz;     /* add only */
    char        *buf;           /* owns the strings above */
} acme_challenge_msg_t;

/* 0 with *m filled (free with acme_store_challenge_msg_free), -1 with err naming what is wrong. */
int  acme_store_challenge_msg_parse(const char *msg, acme_challenge_msg_t *m, acme_err_t *err);
void acme_store_challenge_msg_free(acme_challenge_msg_t *m);

/*
 * Copies every key of one store into another (a directory or a Redis URL each, as acme_store_open takes
 * them), each directory's keys in one commit, keeping secret-ness (filesystem: mode 0600; Redis: the
 * <prefix>info:secrets set). Keys only in the destination stay. Running it again gives the same result.
 * from_key/to_key: storage key files for a Redis side (ignored for a directory).
 */
typedef struct {
    size_t  keys;           /* copied */
    size_t  secrets;        /* of which secret */
    size_t  accounts;       /* accounts/<ca>/account.key */
    size_t  certs;          /* certs/<name>/fullchain.pem */
    size_t  orders;         /* certs/<name>/order.json (in flight) */
    size_t  challenges;     /* challenges/... */
} acme_store_migrate_stats_t;

int acme_store_migrate(const char *from, const char *from_key, const char *to, const char *to_key,
    acme_store_migrate_stats_t *stats, acme_err_t *err);

/*
 * Redis with a storage key: every value is authenticated, secret ones sealed (acme_aead.h), the others
 * with a MAC bound to their store key, and challenge announcements with a MAC too. A value or an
 * announcement that does not authenticate (forged, moved to another name, or written without the key) is
 * refused: get fails with ACME_ERR_STORE, a watch drops the announcement. fn (when set) is told once per
 * distinct refused record (the last 64 are remembered), from the thread that read it, with the store's
 * mutex held (fn must not call the store). A filesystem store ignores this. Without a storage key nothing
 * is checked (public values and announcements read as they are, a MAC cut off): Redis is trusted.
 */
typedef void (*acme_store_forged_fn)(void *arg, const char *msg);
void acme_store_on_forged(acme_store_t *st, acme_store_forged_fn fn, void *arg);

/*
 * Upgrade of a Redis store in place to a storage key: seals the secrets and signs the other values that
 * are not yet (written before this version or before the key was configured), accepting them as they are
 * now; challenges are not carried over (they are short-lived, and trusting them is what a forger wants).
 * Run once, when Redis' content is trusted. Values already sealed or signed must authenticate.
 */
int acme_store_upgrade(const char *url, const char *key_file, acme_store_migrate_stats_t *stats,
    acme_err_t *err);

/* Convenience wrappers over ops. */
int  acme_store_get(acme_store_t *st, const char *key, char **data, size_t *len, acme_err_t *err);
int  acme_store_put(acme_store_t *st, const char *key, const void *data, size_t len, int secret,
                    acme_err_t *err);
int  acme_store_del(acme_store_t *st, const char *key, acme_err_t *err);
void acme_store_list_free(char **names, size_t n);
/*
 * The key prefixes ("acme:", "shop:"...) under which the Redis server of url holds certificates (at most 64),
 * whatever url's own prefix; for a hint when a prefix holds none. 0, or -1 with err.
 */
int  acme_store_redis_cert_prefixes(const char *url, char ***prefixes, size_t *n, acme_err_t *err);

/* ---- typed records ---- */

/* Why one identifier failed validation in the last attempt (the CA's problem, subproblems included). */
typedef struct {
    char           *ident;         /* "dns:example.org" */
    char           *error;
    time_t          at;
    char           *record_name;   /* dns-persist-01: the TXT record the admin must create; else NULL */
    char           *record_value;
} acme_ident_error_t;

void  acme_ident_errors_free(acme_ident_error_t *e, size_t n);

/*
 * dns-persist-01: one identifier's record as last checked. In a job's list every checked identifier has one
 * (warning NULL: nothing to say); a certificate's metadata keeps only those with a warning.
 */
typedef struct {
    char           *ident;         /* "dns:example.org" */
    char           *record_name;   /* "_validation-persist.example.org" */
    char           *record_value;  /* the TXT value that matched */
    time_t          until;         /* its persistUntil; 0: none */
    char           *warning;       /* persistUntil comes too soon (acme_persist_judge); NULL: none */
    time_t          at;            /* when it was checked */
} acme_persist_note_t;

/* persistUntil this close (or before the certificate expires, whichever is later): a warning. */
#define ACME_PERSIST_WARN_S  (30L * 86400)

void  acme_persist_notes_free(acme_persist_note_t *n, size_t count);
/*
 * Sets n->warning when n->until passes before max(now + ACME_PERSIST_WARN_S, not_after): the certificate
 * in service (not_after; 0: none) is renewed before it expires, and that renewal needs the record again.
 * cert: the certificate's name, for the text. 1 warned, 0 not, -1 out of memory.
 */
int   acme_persist_judge(acme_persist_note_t *n, const char *cert, time_t not_after, time_t now);
/*
 * A certificate's notes after a job that checked the records of checked[]: the old notes of identifiers
 * still in ids that were not checked again, then the checked ones with a warning (copies). *out malloc'd
 * (NULL when none). 0, or -1 out of memory.
 */
int   acme_persist_notes_merge(const acme_persist_note_t *old, size_t nold, const acme_persist_note_t *checked,
    size_t nchecked, const acme_ident_t *ids, size_t nids, acme_persist_note_t **out, size_t *nout);

typedef struct {
    char           *name;          /* certs/<name> */
    acme_ident_t   *ids;
    size_t          nids;
    acme_keyspec_t  keyspec;
    char           *ca;            /* directory URL of the CA that issued it (or last tried) */
    char           *profile;       /* optional */
    time_t          not_before;    /* 0 when no certificate yet */
    time_t          not_after;
    char           *ari_cert_id;   /* optional */
    time_t          ari_start;     /* 0 when no ARI window known */
    time_t          ari_end;
    time_t          ari_next_check;
    char           *ari_explanation_url;    /* the CA's explanationURL with the window, optional */
    time_t          renew_at;      /* chosen renewal time, 0: not chosen yet */
    int             failures;      /* consecutive failed attempts */
    time_t          next_try;      /* after a failure, 0: none */
    char           *last_error;    /* optional */
    time_t          last_error_at;
    time_t          ca_wait_until; /* the CA's Retry-After after rateLimited/429: no forced renewal before
                                    * it (acmectl renew --force aside), 0: none */
    acme_ident_error_t *ident_errors;   /* of the last failure that concerned identifiers; none after a
                                         * success */
    size_t          nident_errors;
    acme_persist_note_t *persist_notes;     /* dns-persist-01 records with a warning */
    size_t          npersist_notes;
    time_t          issued_at;     /* when we stored it */
    time_t          expiring_notified;  /* when the "expiring" notification ran for this certificate
                                         * (once per certificate: a new one starts at 0) */
    char           *revoked_serial; /* acmectl revoke: the serial (lowercase hex) it revoked; counts only
                                     * while it is the stored certificate's */
    time_t          revoked_at;
    time_t          revoked_handled;    /* when a server's manager ran "revoked" and renewed for it (once:
                                         * a new certificate's meta has none of the three) */
} acme_certmeta_t;

void  acme_certmeta_free(acme_certmeta_t *m);
/* JSON text (malloc'd) and back; unknown members ignored, bad members refused with err. */
char *acme_certmeta_to_json(const acme_certmeta_t *m);
/* [{"identifier", "error", "at"}] for status pages (a new reference; an empty array when none). */
json_t *acme_certmeta_ident_errors_json(const acme_certmeta_t *m);
/* [{"identifier", "dns_persist_record": {"name", "value"}, "dns_persist_until", "dns_persist_warning", "at"}]
 * for status pages (a new reference; an empty array when none). */
json_t *acme_certmeta_ident_warnings_json(const acme_certmeta_t *m);
int   acme_certmeta_from_json(const char *s, size_t len, acme_certmeta_t *m, acme_err_t *err);
/*
 * Whether m's dns-persist-01 notes are about records at the CA ca (directory URL): yes when no certificate
 * is in service or it came from ca. Only then does a failed job at ca replace them, and a new certificate
 * from ca keep those of identifiers it did not check. A record is per CA (its account): another CA's (a
 * fallback issuer's) is not the one the certificate's renewal needs.
 */
int   acme_persist_notes_concern(const acme_certmeta_t *m, const char *ca);

/*
 * certs/<name>: the first identifier, "*." written as "_wildcard.", then "_<keyspec>" (e.g. "_rsa2048",
 * "_ecdsa384") for any key type other than ecdsa:256. malloc'd.
 */
char *acme_cert_name(const acme_ident_t *ids, size_t nids, const acme_keyspec_t *ks);

/* 0 found, 1 none, -1 error. Any out-param may be NULL. */
int acme_store_cert_load(acme_store_t *st, const char *name, char **fullchain, size_t *fullchain_len,
    char **privkey, size_t *privkey_len, acme_certmeta_t *meta, acme_err_t *err);
/* fullchain + privkey + meta in one commit, and removes order.json/order.key. */
int acme_store_cert_save(acme_store_t *st, const char *name, const char *fullchain, size_t fullchain_len,
    const char *privkey, size_t privkey_len, const acme_certmeta_t *meta, acme_err_t *err);
/* certs/<meta->name>/meta.json alone. */
int acme_store_meta_save(acme_store_t *st, const acme_certmeta_t *meta, acme_err_t *err);
/* 0 found, 1 none, -1 error; meta->name is set to name. */
int acme_store_meta_load(acme_store_t *st, const char *name, acme_certmeta_t *meta, acme_err_t *err);

/* Account: key PEM (secret) and JSON. 0 found, 1 none, -1 error. */
int acme_store_account_load(acme_store_t *st, const char *ca_id, char **key_pem, size_t *key_len,
    char **json, acme_err_t *err);
int acme_store_account_save(acme_store_t *st, const char *ca_id, const char *key_pem, size_t key_len,
    const char *json, acme_err_t *err);

/* Challenge publication through the store (any node of a shared backend can answer). */
/*
 * The one text of a challenge, in its record (challenges/<type>/<key>) and in its announcement:
 * "<dns|ip> <identifier> <key authorization>" (malloc'd; NULL out of memory). The callers check id and
 * key_authz; split undoes it in place: 0 with *type, and *value and *key_authz pointing into text at what
 * follows its first and second space; -1 when it has fewer spaces or another type.
 */
char *acme_store_challenge_text(const acme_ident_t *id, const char *key_authz);
int   acme_store_challenge_text_split(char *text, acme_ident_type_t *type, char **value, char **key_authz);
/* The store key of a challenge response, "challenges/<type>/<id>" (malloc'd; an SNI id lowercased); NULL
 * with err when type or id is not acceptable. */
char *acme_store_challenge_key(const char *type, const char *id, acme_err_t *err);
/* key: the token (http-01) or the SNI (tls-alpn-01); the record names the identifier it is for (id: its
 * SNI must be the key for tls-alpn-01), so a host answers it for that identifier only. */
int acme_store_challenge_put(acme_store_t *st, const char *type, const char *key, const acme_ident_t *id,
    const char *key_authz, acme_err_t *err);
/* 0 with *key_authz (malloc'd) and, when id is not NULL, *id (free with acme_ident_free) set; 1 none; -1
 * error (a record not in that form is one). */
int acme_store_challenge_get(acme_store_t *st, const char *type, const char *key, acme_ident_t *id,
    char **key_authz, acme_err_t *err);
int acme_store_challenge_del(acme_store_t *st, const char *type, const char *id, acme_err_t *err);

#endif
