/*
 * The Redis store backend: values, the index, commits, locks and the authentication of values.
 *
 * Redis layout under the prefix P (default "acme:"; store keys never contain ':', so the names below cannot
 * collide with them):
 *   P<store key>            the value (a string), e.g. "acme:certs/example.org/fullchain.pem". With a storage
 *                           key, secret values are sealed with AES-256-GCM and the others carry a MAC
 *                           line first ("acme-mac-v1:KID:TAG\n", acme_aead.h), both bound to the store key;
 *                           a value that does not authenticate is refused, whoever wrote it
 *   P"dir:"<dir>            SET of the names directly below <dir> ("acme:dir:" for the top level,
 *                           "acme:dir:certs" for the certificate names): list() is one SMEMBERS
 *   P"info:secrets"         SET of the store keys written as secret (kept 0600 by the filesystem backend)
 *   P"info:generation"      counter, INCR'd by every commit that changes certs/<name>/fullchain.pem or
 *                           privkey.pem
 *   P"lock:"<name>          a lock: "<host>:<pid>:<random>", SET NX PX <lease>
 *   P"acks:"<type>/<key>    how many nodes took the last announcement of a challenge (expires,
 *                           acme_store_announce.c)
 * and the pub/sub channel P"events" carries the certificate name of each such change (acme_store_watch.c),
 * P"challenges" the challenge announcements (acme_store_announce.c).
 *
 * Every change is one MULTI/EXEC: the values, their index entries, the secret set, the generation and the
 * announcements become visible together. Directories left empty by deletes are pruned afterwards by a Lua
 * script (atomic, so a concurrent put is never lost from the index).
 *
 * The transport (URL, socket, TLS, timeouts) is acme_redis.c. Key material never appears in messages.
 */
#include "acme_store_redis_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <pthread.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <hiredis/hiredis.h>

#define RD_VALUE_MAX         (1024 * 1024)
#define RD_RAW_MAX           (2 * RD_VALUE_MAX)     /* a sealed value is base64: 4/3 and a header */

#define RD_SCRIPT_REFRESH \
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
#define RD_SCRIPT_UNLOCK \
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
/* KEYS: dir set, value key of node 1, dir set, value key of node 2, ..., the last parent's dir set;
 * ARGV: the name of node i in its parent. Removes the entries of nodes that became empty, bottom up. */
#define RD_SCRIPT_PRUNE \
    "for i = 1, #ARGV do " \
    "  if redis.call('SCARD', KEYS[2*i-1]) > 0 or redis.call('EXISTS', KEYS[2*i]) == 1 then return i - 1 end " \
    "  redis.call('SREM', KEYS[2*i+1], ARGV[i]) " \
    "end return #ARGV"

struct acme_lock_s {
    rd_t         *rd;
    char         *rkey;           /* P"lock:"<name> */
    char          token[160];
    long long     refreshed;      /* monotonic ms of the last successful SET or refresh */
    int           lost;
    acme_lock_t  *next;
};

static const acme_store_ops_t rd_ops;

/* ---- locks: lease refresh ---- */

static int
rd_lock_refresh_locked(acme_lock_t *lk, acme_err_t *err)
{
    rd_t        *rd = lk->rd;
    char         lease[32];
    const char  *argv[6];
    size_t       lens[6];
    redisReply  *rep = NULL;
    int          i, held;

    if (lk->lost) {
        acme_err_set(err, ACME_ERR_BUSY, "the lock %s was lost (its lease expired)", lk->rkey);
        return 0;
    }
    snprintf(lease, sizeof(lease), "%ld", rd->r.lease_ms);
    argv[0] = "EVAL";
    argv[1] = RD_SCRIPT_REFRESH;
    argv[2] = "1";
    argv[3] = lk->rkey;
    argv[4] = lk->token;
    argv[5] = lease;
    for (i = 0; i < 6; i++) {
        lens[i] = strlen(argv[i]);
    }
    if (acme_redis_simple(&rd->r, &rep, 0, "refresh lock", lk->rkey + strlen(rd->r.prefix), err, 6, argv, lens) != 0) {
        if (acme_redis_now() - lk->refreshed >= rd->r.lease_ms) {
            lk->lost = 1;
            acme_err_prefix(err, "the lease is over, the lock counts as lost");
            return 0;
        }
        return -1;
    }
    held = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
    acme_redis_reply_free(rep, 0);
    if (!held) {
        lk->lost = 1;
        acme_err_set(err, ACME_ERR_BUSY, "redis store %s: the lock %s was lost (its lease expired and another "
                     "holder may have taken it)", rd->r.display, lk->rkey + strlen(rd->r.prefix));
        return 0;
    }
    lk->refreshed = acme_redis_now();
    return 1;
}

/* Piggyback: refresh the held locks whose lease is a third gone (at the start of any operation). */
static void
rd_refresh_due(rd_t *rd)
{
    acme_lock_t  *lk;
    long long     now = acme_redis_now();

    for (lk = rd->locks; lk != NULL; lk = lk->next) {
        if (!lk->lost && now - lk->refreshed >= rd->r.lease_ms / 3) {
            rd_lock_refresh_locked(lk, NULL);
        }
    }
}

void
acme_store_redis_enter(rd_t *rd)
{
    pthread_mutex_lock(&rd->mu);
    if (rd->locks != NULL) {
        rd_refresh_due(rd);
    }
}

void
acme_store_redis_leave(rd_t *rd)
{
    pthread_mutex_unlock(&rd->mu);
}

/* ---- authentication of values (with a storage key) ---- */

static void
rd_err_append(acme_err_t *err, const char *text)
{
    size_t  n;

    if (err != NULL) {
        n = strlen(err->msg);
        snprintf(err->msg + n, sizeof(err->msg) - n, "%s", text);
    }
}

/* The layout's secret keys: with a storage key they must be sealed, whatever info:secrets says. */
int
acme_store_redis_secret_name(const char *key)
{
    const char  *base = strrchr(key, '/');

    base = base ? base + 1 : key;
    return strcmp(base, "privkey.pem") == 0 || strcmp(base, "account.key") == 0
           || strcmp(base, "order.key") == 0;
}

/* Reports a refused record through the host's callback, once per distinct name and content. rd->mu held. */
void
acme_store_redis_forged(rd_t *rd, const char *name, const void *data, size_t len, const char *why)
{
    unsigned char  md[EVP_MAX_MD_SIZE];
    unsigned int   mdlen = 0;
    EVP_MD_CTX    *c;
    unsigned       i, n;
    char           q[140], *msg;
    int            ok;

    if (rd->forged_fn == NULL) {
        return;
    }
    c = EVP_MD_CTX_new();
    ok = c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1
         && EVP_DigestUpdate(c, name, strlen(name) + 1) == 1
         && (len == 0 || EVP_DigestUpdate(c, data, len) == 1)
         && EVP_DigestFinal_ex(c, md, &mdlen) == 1;
    EVP_MD_CTX_free(c);
    if (!ok) {
        return;
    }
    n = rd->forged_n < RD_FORGED_SEEN ? rd->forged_n : RD_FORGED_SEEN;
    for (i = 0; i < n; i++) {
        if (memcmp(rd->forged_seen[i], md, 16) == 0) {
            return;
        }
    }
    memcpy(rd->forged_seen[rd->forged_n % RD_FORGED_SEEN], md, 16);
    rd->forged_n++;
    msg = acme_sprintf("redis store %s: refused %s: %s", rd->r.display, acme_quote(name, q, sizeof(q), 120),
                       why);
    if (msg != NULL) {
        rd->forged_fn(rd->forged_arg, msg);
        free(msg);
    }
}

/*
 * The plaintext of a value read under key: opens a sealed value, checks and strips a MAC, and with a storage
 * key refuses anything else. *pt malloc'd (acme_free_secret). rd->mu held.
 */
static int
rd_value_open(rd_t *rd, const char *key, const char *v, size_t vlen, char **pt, size_t *ptlen, acme_err_t *err)
{
    const char  *nl, *why = NULL;
    char         kid[9];
    acme_err_t   e;

    *pt = NULL;
    *ptlen = 0;
    if (acme_aead_is_sealed(v, vlen)) {
        if (acme_aead_open(rd->key, key, v, vlen, pt, ptlen, &e) == 0) {
            return 0;
        }
        acme_aead_sealed_kid(v, vlen, kid);
        if (rd->key != NULL && strcmp(kid, acme_aead_key_id(rd->key)) == 0) {
            acme_store_redis_forged(rd, key, v, vlen, e.msg);
        }
        if (err != NULL) {
            *err = e;
        }
        if (rd->key == NULL) {
            rd_err_append(err, " (give the storage key file)");
        }
        return -1;
    }
    if (vlen >= ACME_AEAD_MAC_MAGIC_LEN && memcmp(v, ACME_AEAD_MAC_MAGIC, ACME_AEAD_MAC_MAGIC_LEN) == 0) {
        nl = memchr(v, '\n', vlen < ACME_AEAD_MAC_MAX ? vlen : ACME_AEAD_MAC_MAX);
        if (nl == NULL) {
            why = "the MAC line is damaged";
            acme_err_set(err, ACME_ERR_STORE, "%s", why);
        } else if (rd->key == NULL) {
            /* no key: nothing can be checked, Redis is trusted as it was before MACs (public values) */
            vlen -= (size_t) (nl + 1 - v);
            v = nl + 1;
            goto copy;
        } else if (acme_aead_mac_check(rd->key, "store", key, nl + 1, vlen - (size_t) (nl + 1 - v), v,
                                       (size_t) (nl - v), &e) != 0)
        {
            /* another key's MAC is a configuration error, said in err; the rest is a forgery */
            if (vlen > ACME_AEAD_MAC_MAGIC_LEN + 8
                && memcmp(v + ACME_AEAD_MAC_MAGIC_LEN, acme_aead_key_id(rd->key), 8) == 0)
            {
                acme_store_redis_forged(rd, key, v, vlen, e.msg);
            }
            if (err != NULL) {
                *err = e;
            }
            return -1;
        } else if (acme_store_redis_secret_name(key)) {
            why = "a secret that is not sealed";
            acme_err_set(err, ACME_ERR_STORE, "%s", why);
        } else {
            vlen -= (size_t) (nl + 1 - v);
            v = nl + 1;
            goto copy;
        }
        acme_store_redis_forged(rd, key, v, vlen, why);
        return -1;
    }
    if (rd->key != NULL && !rd->unauthenticated_ok) {
        why = acme_store_redis_secret_name(key)
              ? "an unsealed secret, though a storage key is configured (forged, or stored before the key was "
                "configured: \"acmectl --storage URL --storage-key FILE upgrade-storage\" seals what Redis "
                "holds now)"
              : "a value without a MAC, though a storage key is configured (forged, or stored before this "
                "version: \"acmectl --storage URL --storage-key FILE upgrade-storage\" signs what Redis holds "
                "now)";
        acme_err_set(err, ACME_ERR_STORE, "%s", why);
        acme_store_redis_forged(rd, key, v, vlen, why);
        return -1;
    }

copy:
    if (vlen > RD_VALUE_MAX) {
        acme_err_set(err, ACME_ERR_STORE, "%zu bytes is too large", vlen);
        return -1;
    }
    *pt = malloc(vlen + 1);
    if (*pt == NULL) {
        acme_redis_oom(err);
        return -1;
    }
    memcpy(*pt, v, vlen);
    (*pt)[vlen] = '\0';
    *ptlen = vlen;
    return 0;
}

void
acme_store_on_forged(acme_store_t *st, acme_store_forged_fn fn, void *arg)
{
    rd_t  *rd;

    if (!acme_store_redis_is(st)) {
        return;
    }
    rd = st->data;
    pthread_mutex_lock(&rd->mu);
    rd->forged_fn = fn;
    rd->forged_arg = arg;
    pthread_mutex_unlock(&rd->mu);
}

/* ---- ops ---- */

static int
rd_get(acme_store_t *st, const char *key, char **data, size_t *len, acme_err_t *err)
{
    rd_t        *rd = st->data;
    char        *k, *pt = NULL;
    const char  *argv[2];
    size_t       lens[2], ptlen = 0;
    redisReply  *rep = NULL;
    int          rc = -1;

    if (data == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "store get: no output");
        return -1;
    }
    *data = NULL;
    if (len != NULL) {
        *len = 0;
    }
    if (acme_store_key_check(key, err) != 0) {
        return -1;
    }
    k = acme_redis_key(&rd->r, NULL, key);
    if (k == NULL) {
        acme_redis_oom(err);
        return -1;
    }
    argv[0] = "GET";
    argv[1] = k;
    lens[0] = 3;
    lens[1] = strlen(k);
    acme_store_redis_enter(rd);
    if (acme_redis_simple(&rd->r, &rep, 1, "get", key, err, 2, argv, lens) != 0) {
        goto done;
    }
    if (rep->type == REDIS_REPLY_NIL) {
        rc = 1;
        goto done;
    }
    if (rep->type != REDIS_REPLY_STRING) {
        acme_err_set(err, ACME_ERR_STORE, "redis store %s: get %s: not a string value", rd->r.display, key);
        goto done;
    }
    if (rep->len > RD_RAW_MAX) {
        acme_err_set(err, ACME_ERR_STORE, "redis store %s: get %s: %zu bytes is too large", rd->r.display, key,
                     rep->len);
        goto done;
    }
    if (rd_value_open(rd, key, rep->str, rep->len, &pt, &ptlen, err) != 0) {
        acme_err_prefix(err, "redis store %s: get %s", rd->r.display, key);
        goto done;
    }
    *data = pt;
    if (len != NULL) {
        *len = ptlen;
    }
    rc = 0;
done:
    acme_store_redis_leave(rd);
    acme_redis_reply_free(rep, 1);
    free(k);
    return rc;
}

/* "certs/<name>/fullchain.pem" or privkey.pem: the name (malloc'd), else NULL. */
static char *
rd_cert_of(const char *key)
{
    const char  *n, *s;

    if (strncmp(key, "certs/", 6) != 0) {
        return NULL;
    }
    n = key + 6;
    s = strchr(n, '/');
    if (s == NULL || s == n || (strcmp(s + 1, "fullchain.pem") != 0 && strcmp(s + 1, "privkey.pem") != 0)) {
        return NULL;
    }
    return acme_strndup(n, (size_t) (s - n));
}

/* Appends the prune of the directories above a deleted key (see RD_SCRIPT_PRUNE). 1 appended, 0 none. */
static int
rd_prune_cmd(rd_t *rd, acme_buf_t *b, const char *key)
{
    enum { MAXN = 8 };
    const char  *argv[3 + 3 * MAXN + 1];
    size_t       lens[3 + 3 * MAXN + 1];
    char        *keys[2 * MAXN + 1], *names[MAXN], *d, *slash, nk[16];
    int          nkeys = 0, nn = 0, argc = 0, i, rc = -1;

    d = acme_strdup(key);
    if (d == NULL) {
        return -1;
    }
    slash = strrchr(d, '/');
    if (slash == NULL) {
        free(d);
        return 0;       /* a top-level key: no directory above it */
    }
    *slash = '\0';
    /* d: the deepest directory; walk up, one node at a time */
    for ( ;; ) {
        slash = strrchr(d, '/');
        keys[nkeys++] = acme_redis_key(&rd->r, "dir:", d);
        keys[nkeys++] = acme_redis_key(&rd->r, NULL, d);
        names[nn++] = acme_strdup(slash ? slash + 1 : d);
        if (slash == NULL) {
            d[0] = '\0';
        } else {
            *slash = '\0';
        }
        if (d[0] == '\0' || nn == MAXN) {
            break;
        }
    }
    keys[nkeys++] = acme_redis_key(&rd->r, "dir:", d);      /* the last node's parent ("" = the top level) */
    for (i = 0; i < nkeys; i++) {
        if (keys[i] == NULL) {
            goto done;
        }
    }
    for (i = 0; i < nn; i++) {
        if (names[i] == NULL) {
            goto done;
        }
    }
    snprintf(nk, sizeof(nk), "%d", nkeys);
    argv[argc++] = "EVAL";
    argv[argc++] = RD_SCRIPT_PRUNE;
    argv[argc++] = nk;
    for (i = 0; i < nkeys; i++) {
        argv[argc++] = keys[i];
    }
    for (i = 0; i < nn; i++) {
        argv[argc++] = names[i];
    }
    for (i = 0; i < argc; i++) {
        lens[i] = strlen(argv[i]);
    }
    rc = acme_redis_cmd_argv(b, argc, argv, lens) == 0 ? 1 : -1;
done:
    for (i = 0; i < nkeys; i++) {
        free(keys[i]);
    }
    for (i = 0; i < nn; i++) {
        free(names[i]);
    }
    free(d);
    return rc;
}

static int
rd_commit(acme_store_t *st, const acme_store_item_t *items, size_t n, acme_err_t *err)
{
    rd_t          *rd = st->data;
    acme_buf_t     b = { NULL, 0, 0 }, pb = { NULL, 0, 0 };
    redisReply   **rep = NULL, *exec, *prep;
    char         **certs = NULL, *k = NULL, *sealed = NULL, *dk = NULL, *name, *p, eb[220];
    size_t         ncerts = 0, i, j, vlen, sealed_len = 0;
    const char    *val, *op = n == 1 ? (items[0].data ? "put" : "del") : "commit";
    const char    *what = n == 1 ? items[0].key : NULL;
    char          *secrets = NULL, *gen = NULL, *chan = NULL, mac[ACME_AEAD_MAC_MAX];
    int            ncmd = 0, nprune = 0, rc = -1, dup, r, secret;

    if (n == 0) {
        return 0;
    }
    if (items == NULL || n > RD_COMMIT_MAX) {
        acme_err_set(err, ACME_ERR_INPUT, "store commit: %zu items", n);
        return -1;
    }
    for (i = 0; i < n; i++) {
        if (acme_store_key_check(items[i].key, err) != 0) {
            return -1;
        }
        if (items[i].len > RD_VALUE_MAX) {
            acme_err_set(err, ACME_ERR_INPUT, "store %s %s: %zu bytes is too large", op, items[i].key,
                         items[i].len);
            return -1;
        }
        for (j = 0; j < i; j++) {
            if (strcmp(items[i].key, items[j].key) == 0) {
                acme_err_set(err, ACME_ERR_INPUT, "store commit: key %s given twice", items[i].key);
                return -1;
            }
        }
    }
    secrets = acme_redis_key(&rd->r, "info:", "secrets");
    gen = acme_redis_key(&rd->r, "info:", "generation");
    chan = acme_redis_key(&rd->r, NULL, "events");
    certs = calloc(n, sizeof(char *));
    if (secrets == NULL || gen == NULL || chan == NULL || certs == NULL || acme_redis_cmd_str(&b, 1, "MULTI") != 0) {
        goto nomem;
    }
    ncmd++;
    for (i = 0; i < n; i++) {
        const char *key = items[i].key;

        k = acme_redis_key(&rd->r, NULL, key);
        if (k == NULL) {
            goto nomem;
        }
        if (items[i].data != NULL) {
            const char  *argv[3];
            size_t       lens[3];

            val = items[i].data;
            vlen = items[i].len;
            secret = items[i].secret || (rd->key != NULL && acme_store_redis_secret_name(key));
            if (secret && rd->key != NULL) {
                if (acme_aead_seal(rd->key, key, val, vlen, &sealed, &sealed_len, err) != 0) {
                    acme_err_prefix(err, "redis store %s: %s %s", rd->r.display, op, key);
                    goto done;
                }
                val = sealed;
                vlen = sealed_len;
            } else if (rd->key != NULL) {
                /* the MAC line, then the value */
                if (acme_aead_mac(rd->key, "store", key, val, vlen, mac) != 0) {
                    acme_err_set(err, ACME_ERR_INTERNAL, "redis store %s: %s %s: HMAC-SHA256 failed",
                                 rd->r.display, op, key);
                    goto done;
                }
                sealed_len = strlen(mac) + 1 + vlen;
                sealed = malloc(sealed_len);
                if (sealed == NULL) {
                    goto nomem;
                }
                memcpy(sealed, mac, sealed_len - 1 - vlen);
                sealed[sealed_len - 1 - vlen] = '\n';
                if (vlen > 0) {
                    memcpy(sealed + sealed_len - vlen, val, vlen);
                }
                val = sealed;
                vlen = sealed_len;
            }
            argv[0] = "SET";
            argv[1] = k;
            argv[2] = val;
            lens[0] = 3;
            lens[1] = strlen(k);
            lens[2] = vlen;
            if (acme_redis_cmd_argv(&b, 3, argv, lens) != 0) {
                goto nomem;
            }
            ncmd++;
            free(sealed);
            sealed = NULL;
            /* every directory level above it */
            p = (char *) key;
            for ( ;; ) {
                const char *s = strchr(p, '/');
                char *parent = acme_strndup(key, p == key ? 0 : (size_t) (p - key - 1));
                char *child = s ? acme_strndup(p, (size_t) (s - p)) : acme_strdup(p);

                dk = parent ? acme_redis_key(&rd->r, "dir:", parent) : NULL;
                if (dk == NULL || child == NULL || acme_redis_cmd_str(&b, 3, "SADD", dk, child) != 0) {
                    free(parent);
                    free(child);
                    goto nomem;
                }
                ncmd++;
                free(parent);
                free(child);
                free(dk);
                dk = NULL;
                if (s == NULL) {
                    break;
                }
                p = (char *) s + 1;
            }
            if (acme_redis_cmd_str(&b, 3, secret ? "SADD" : "SREM", secrets, key) != 0) {
                goto nomem;
            }
            ncmd++;
        } else {
            const char *s = strrchr(key, '/');
            char *parent = acme_strndup(key, s ? (size_t) (s - key) : 0);

            dk = parent ? acme_redis_key(&rd->r, "dir:", parent) : NULL;
            free(parent);
            if (dk == NULL || acme_redis_cmd_str(&b, 2, "DEL", k) != 0
                || acme_redis_cmd_str(&b, 3, "SREM", dk, s ? s + 1 : key) != 0
                || acme_redis_cmd_str(&b, 3, "SREM", secrets, key) != 0)
            {
                goto nomem;
            }
            ncmd += 3;
            free(dk);
            dk = NULL;
            r = rd_prune_cmd(rd, &pb, key);
            if (r < 0) {
                goto nomem;
            }
            nprune += r;
        }
        free(k);
        k = NULL;
        name = rd_cert_of(key);
        if (name != NULL) {
            for (dup = 0, j = 0; j < ncerts; j++) {
                dup |= strcmp(certs[j], name) == 0;
            }
            if (dup) {
                free(name);
            } else {
                certs[ncerts++] = name;
            }
        }
    }
    if (ncerts > 0) {
        if (acme_redis_cmd_str(&b, 2, "INCR", gen) != 0) {
            goto nomem;
        }
        ncmd++;
        for (j = 0; j < ncerts; j++) {
            if (acme_redis_cmd_str(&b, 3, "PUBLISH", chan, certs[j]) != 0) {
                goto nomem;
            }
            ncmd++;
        }
    }
    if (acme_redis_cmd_str(&b, 1, "EXEC") != 0) {
        goto nomem;
    }
    ncmd++;
    rep = calloc((size_t) ncmd, sizeof(*rep));
    if (rep == NULL) {
        goto nomem;
    }

    acme_store_redis_enter(rd);
    if (acme_redis_run(&rd->r, &b, ncmd, rep, 1, op, what, err) != 0) {
        acme_store_redis_leave(rd);
        free(rep);
        rep = NULL;
        goto done;
    }
    exec = rep[ncmd - 1];
    for (i = 0; i < (size_t) ncmd - 1; i++) {
        if (rep[i]->type == REDIS_REPLY_ERROR) {
            acme_err_set(err, ACME_ERR_STORE, "%s", acme_redis_errstr(rep[i], eb, sizeof(eb)));
            acme_redis_err_context(&rd->r, err, op, what);
            acme_store_redis_leave(rd);
            goto done;
        }
    }
    if (exec->type != REDIS_REPLY_ARRAY) {
        acme_err_set(err, ACME_ERR_STORE, "the transaction failed: %s",
                     exec->type == REDIS_REPLY_ERROR ? acme_redis_errstr(exec, eb, sizeof(eb)) : "aborted");
        acme_redis_err_context(&rd->r, err, op, what);
        acme_store_redis_leave(rd);
        goto done;
    }
    for (i = 0; i < exec->elements; i++) {
        if (exec->element[i]->type == REDIS_REPLY_ERROR) {
            acme_err_set(err, ACME_ERR_STORE, "%s", acme_redis_errstr(exec->element[i], eb, sizeof(eb)));
            acme_redis_err_context(&rd->r, err, op, what);
            acme_store_redis_leave(rd);
            goto done;
        }
    }
    rc = 0;
    /* best effort: directories left empty disappear from their parents' index */
    if (nprune > 0) {
        redisReply **pr = calloc((size_t) nprune, sizeof(*pr));
        acme_err_t   e;

        if (pr != NULL && acme_redis_run(&rd->r, &pb, nprune, pr, 1, "prune", NULL, &e) == 0) {
            for (i = 0; i < (size_t) nprune; i++) {
                prep = pr[i];
                acme_redis_reply_free(prep, 0);
            }
        }
        free(pr);
    }
    acme_store_redis_leave(rd);
    goto done;

nomem:
    acme_redis_oom(err);
done:
    if (rep != NULL) {
        for (i = 0; i < (size_t) ncmd; i++) {
            acme_redis_reply_free(rep[i], 0);
        }
        free(rep);
    }
    for (j = 0; j < ncerts; j++) {
        free(certs[j]);
    }
    free(certs);
    free(k);
    free(dk);
    free(sealed);
    free(secrets);
    free(gen);
    free(chan);
    acme_redis_cmd_free(&b);
    acme_redis_cmd_free(&pb);
    return rc;
}

static int
rd_put(acme_store_t *st, const char *key, const void *data, size_t len, int secret, acme_err_t *err)
{
    acme_store_item_t  it;

    if (data == NULL && len > 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "store put %s: no data", key ? key : "?");
        return -1;
    }
    it.key = key;
    it.data = data ? data : "";
    it.len = len;
    it.secret = secret;
    return rd_commit(st, &it, 1, err);
}

static int
rd_del(acme_store_t *st, const char *key, acme_err_t *err)
{
    acme_store_item_t  it;

    it.key = key;
    it.data = NULL;
    it.len = 0;
    it.secret = 0;
    return rd_commit(st, &it, 1, err);
}

static int
rd_name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *) a, *(char *const *) b);
}

static int
rd_list(acme_store_t *st, const char *prefix, char ***names, size_t *n, acme_err_t *err)
{
    rd_t        *rd = st->data;
    int          root = prefix == NULL || prefix[0] == '\0';
    char        *dk, **v = NULL;
    const char  *argv[2];
    size_t       lens[2], i, cnt = 0;
    redisReply  *rep = NULL;
    acme_err_t   e;

    if (names == NULL || n == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "store list: no output");
        return -1;
    }
    *names = NULL;
    *n = 0;
    if (!root && acme_store_key_check(prefix, err) != 0) {
        return -1;
    }
    dk = acme_redis_key(&rd->r, "dir:", root ? "" : prefix);
    if (dk == NULL) {
        acme_redis_oom(err);
        return -1;
    }
    argv[0] = "SMEMBERS";
    argv[1] = dk;
    lens[0] = 8;
    lens[1] = strlen(dk);
    acme_store_redis_enter(rd);
    if (acme_redis_simple(&rd->r, &rep, 1, "list", root ? "(top level)" : prefix, err, 2, argv, lens) != 0) {
        acme_store_redis_leave(rd);
        free(dk);
        return -1;
    }
    acme_store_redis_leave(rd);
    free(dk);
    if (rep->type != REDIS_REPLY_ARRAY) {
        acme_err_set(err, ACME_ERR_STORE, "redis store %s: list %s: not a set", rd->r.display,
                     root ? "(top level)" : prefix);
        acme_redis_reply_free(rep, 0);
        return -1;
    }
    if (rep->elements > 0) {
        v = calloc(rep->elements, sizeof(char *));
        if (v == NULL) {
            acme_redis_reply_free(rep, 0);
            acme_redis_oom(err);
            return -1;
        }
    }
    for (i = 0; i < rep->elements; i++) {
        redisReply *el = rep->element[i];

        if (el->type != REDIS_REPLY_STRING || strlen(el->str) != el->len
            || acme_store_name_check(el->str, "name", &e) != 0)
        {
            continue;
        }
        v[cnt] = acme_strdup(el->str);
        if (v[cnt] == NULL) {
            acme_store_list_free(v, cnt);
            acme_redis_reply_free(rep, 0);
            acme_redis_oom(err);
            return -1;
        }
        cnt++;
    }
    acme_redis_reply_free(rep, 0);
    if (cnt > 1) {
        qsort(v, cnt, sizeof(char *), rd_name_cmp);
    }
    if (cnt == 0) {
        free(v);
        v = NULL;
    }
    *names = v;
    *n = cnt;
    return 0;
}

static void
rd_token(char *buf, size_t size)
{
    unsigned char  r[16];
    char           host[64], hex[33];
    size_t         i;

    if (gethostname(host, sizeof(host)) != 0) {
        strcpy(host, "host");
    }
    host[sizeof(host) - 1] = '\0';
    for (i = 0; host[i] != '\0'; i++) {
        if ((unsigned char) host[i] <= 0x20 || (unsigned char) host[i] >= 0x7f) {
            host[i] = '_';
        }
    }
    if (RAND_bytes(r, sizeof(r)) != 1) {
        /* no randomness: still unique enough per process and time, but say so in the token */
        long long t = acme_redis_now();
        memset(r, 0, sizeof(r));
        memcpy(r, &t, sizeof(t));
    }
    for (i = 0; i < sizeof(r); i++) {
        snprintf(hex + 2 * i, 3, "%02x", r[i]);
    }
    snprintf(buf, size, "%s:%ld:%s", host, (long) getpid(), hex);
}

void
acme_store_redis_unref(rd_t *rd)
{
    int  last;

    pthread_mutex_lock(&rd->mu);
    last = --rd->refs == 0;
    pthread_mutex_unlock(&rd->mu);
    if (!last) {
        return;
    }
    acme_redis_free(&rd->r);
    acme_aead_key_free(rd->key);
    pthread_mutex_destroy(&rd->mu);
    free(rd);
}

static int
rd_lock(acme_store_t *st, const char *name, acme_lock_t **lkp, acme_err_t *err)
{
    rd_t         *rd = st->data;
    acme_lock_t  *lk;
    char          lease[32];
    const char   *argv[6];
    size_t        lens[6];
    redisReply   *rep = NULL;
    int           i, taken;
    long long     t0;

    if (lkp == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "store lock: no output");
        return -1;
    }
    *lkp = NULL;
    if (acme_store_name_check(name, "lock name", err) != 0) {
        return -1;
    }
    lk = calloc(1, sizeof(*lk));
    if (lk == NULL) {
        acme_redis_oom(err);
        return -1;
    }
    lk->rkey = acme_redis_key(&rd->r, "lock:", name);
    if (lk->rkey == NULL) {
        free(lk);
        acme_redis_oom(err);
        return -1;
    }
    rd_token(lk->token, sizeof(lk->token));
    snprintf(lease, sizeof(lease), "%ld", rd->r.lease_ms);
    argv[0] = "SET";
    argv[1] = lk->rkey;
    argv[2] = lk->token;
    argv[3] = "NX";
    argv[4] = "PX";
    argv[5] = lease;
    for (i = 0; i < 6; i++) {
        lens[i] = strlen(argv[i]);
    }
    acme_store_redis_enter(rd);
    t0 = acme_redis_now();
    if (acme_redis_simple(&rd->r, &rep, 0, "lock", name, err, 6, argv, lens) != 0) {
        acme_store_redis_leave(rd);
        free(lk->rkey);
        free(lk);
        return -1;
    }
    taken = rep->type == REDIS_REPLY_STATUS;
    acme_redis_reply_free(rep, 0);
    if (!taken) {
        acme_store_redis_leave(rd);
        free(lk->rkey);
        free(lk);
        return 0;
    }
    lk->rd = rd;
    lk->refreshed = t0;
    lk->next = rd->locks;
    rd->locks = lk;
    rd->refs++;
    acme_store_redis_leave(rd);
    *lkp = lk;
    return 1;
}

static void
rd_unlock(acme_lock_t *lk)
{
    rd_t         *rd;
    acme_lock_t **pp;
    const char   *argv[5];
    size_t        lens[5];
    redisReply   *rep = NULL;
    acme_err_t    e;
    int           i;

    if (lk == NULL) {
        return;
    }
    rd = lk->rd;
    pthread_mutex_lock(&rd->mu);
    for (pp = &rd->locks; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == lk) {
            *pp = lk->next;
            break;
        }
    }
    if (!lk->lost) {
        argv[0] = "EVAL";
        argv[1] = RD_SCRIPT_UNLOCK;
        argv[2] = "1";
        argv[3] = lk->rkey;
        argv[4] = lk->token;
        for (i = 0; i < 5; i++) {
            lens[i] = strlen(argv[i]);
        }
        /* a failure leaves the lock to its lease */
        if (acme_redis_simple(&rd->r, &rep, 0, "unlock", lk->rkey + strlen(rd->r.prefix), &e, 5, argv, lens) == 0) {
            acme_redis_reply_free(rep, 0);
        }
    }
    pthread_mutex_unlock(&rd->mu);
    free(lk->rkey);
    OPENSSL_cleanse(lk->token, sizeof(lk->token));
    free(lk);
    acme_store_redis_unref(rd);
}

static void
rd_destroy(acme_store_t *st)
{
    if (st == NULL) {
        return;
    }
    if (st->data != NULL) {
        acme_store_redis_unref(st->data);
    }
    free(st);
}

static const acme_store_ops_t rd_ops = {
    rd_get, rd_put, rd_del, rd_list, rd_commit, rd_lock, rd_unlock, rd_destroy
};

/* ---- opening ---- */

acme_store_t *
acme_store_redis_open(const char *url, const char *key_file, int flags, acme_err_t *err)
{
    acme_store_t  *st = NULL;
    rd_t          *rd;
    char          *shown;
    redisReply    *rep = NULL;
    const char    *argv[1] = { "PING" };
    size_t         lens[1] = { 4 };

    rd = calloc(1, sizeof(*rd));
    st = calloc(1, sizeof(*st));
    if (rd == NULL || st == NULL) {
        free(rd);
        free(st);
        acme_redis_oom(err);
        return NULL;
    }
    pthread_mutex_init(&rd->mu, NULL);
    rd->refs = 1;
    acme_redis_init(&rd->r);
    st->ops = &rd_ops;
    st->data = rd;

    if (acme_redis_parse_url(&rd->r, url, err) != 0) {
        shown = acme_store_url_redact(url);
        acme_err_prefix(err, "storage %s", shown ? shown : "(redis URL)");
        if (err != NULL) {
            err->kind = err->kind == ACME_ERR_INTERNAL ? ACME_ERR_INTERNAL : ACME_ERR_CONFIG;
        }
        free(shown);
        rd_destroy(st);
        return NULL;
    }
    rd->r.display = acme_redis_display_make(&rd->r);
    if (rd->r.display == NULL) {
        acme_redis_oom(err);
        rd_destroy(st);
        return NULL;
    }
    if (rd->r.tls && acme_redis_tls_init(&rd->r, err) != 0) {
        acme_err_prefix(err, "storage %s", rd->r.display);
        rd_destroy(st);
        return NULL;
    }
    if (key_file != NULL && key_file[0] != '\0') {
        rd->key = acme_aead_key_load(key_file, err);
        if (rd->key == NULL) {
            acme_err_prefix(err, "storage %s", rd->r.display);
            rd_destroy(st);
            return NULL;
        }
    }
    if (!(flags & ACME_STORE_LAZY)) {
        pthread_mutex_lock(&rd->mu);
        if (acme_redis_simple(&rd->r, &rep, 1, "connect", NULL, err, 1, argv, lens) != 0) {
            pthread_mutex_unlock(&rd->mu);
            rd_destroy(st);
            return NULL;
        }
        pthread_mutex_unlock(&rd->mu);
        acme_redis_reply_free(rep, 0);
    }
    return st;
}

int
acme_store_redis_is(const acme_store_t *st)
{
    return st != NULL && st->ops == &rd_ops;
}

/* ---- locks ---- */

int
acme_store_lock_refresh(acme_store_t *st, acme_lock_t *lk, acme_err_t *err)
{
    rd_t  *rd;
    int    rc;

    if (st == NULL || lk == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "lock refresh: no store or lock");
        return -1;
    }
    if (!acme_store_redis_is(st)) {
        return 1;       /* filesystem locks last until unlock or exit */
    }
    rd = st->data;
    if (lk->rd != rd) {
        acme_err_set(err, ACME_ERR_INTERNAL, "lock refresh: the lock belongs to another store");
        return -1;
    }
    pthread_mutex_lock(&rd->mu);
    rc = rd_lock_refresh_locked(lk, err);
    pthread_mutex_unlock(&rd->mu);
    return rc;
}

long
acme_store_lock_lease_ms(const acme_store_t *st)
{
    return acme_store_redis_is(st) ? ((rd_t *) st->data)->r.lease_ms : 0;
}

/* ---- health ---- */

int
acme_store_ping(acme_store_t *st, acme_err_t *err)
{
    rd_t         *rd;
    redisReply   *rep = NULL;
    const char   *argv[1] = { "PING" };
    size_t        lens[1] = { 4 };
    int           rc;

    if (!acme_store_redis_is(st)) {
        return st != NULL ? 0 : -1;
    }
    rd = st->data;
    acme_store_redis_enter(rd);
    rc = acme_redis_simple(&rd->r, &rep, 1, "ping", NULL, err, 1, argv, lens);
    acme_store_redis_leave(rd);
    acme_redis_reply_free(rep, 0);
    return rc;
}
/* ---- generation ---- */

int
acme_store_redis_generation(acme_store_t *st, unsigned long long *gen, acme_err_t *err)
{
    rd_t         *rd;
    redisReply   *rep = NULL;
    const char   *argv[2];
    size_t        lens[2];
    char         *k, *end;
    int           rc = -1;

    rd = st->data;
    k = acme_redis_key(&rd->r, "info:", "generation");
    if (k == NULL) {
        acme_redis_oom(err);
        return -1;
    }
    argv[0] = "GET";
    argv[1] = k;
    lens[0] = 3;
    lens[1] = strlen(k);
    acme_store_redis_enter(rd);
    if (acme_redis_simple(&rd->r, &rep, 1, "generation", NULL, err, 2, argv, lens) == 0) {
        if (rep->type == REDIS_REPLY_NIL) {
            rc = 0;
        } else if (rep->type == REDIS_REPLY_STRING) {
            errno = 0;
            *gen = strtoull(rep->str, &end, 10);
            if (errno == 0 && end != rep->str && *end == '\0') {
                rc = 0;
            } else {
                acme_err_set(err, ACME_ERR_STORE, "redis store %s: generation: not a number", rd->r.display);
            }
        } else {
            acme_err_set(err, ACME_ERR_STORE, "redis store %s: generation: not a number", rd->r.display);
        }
    }
    acme_store_redis_leave(rd);
    acme_redis_reply_free(rep, 0);
    free(k);
    return rc;
}

