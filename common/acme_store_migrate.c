/*
 * Migration between stores (a directory or a Redis URL each) and the upgrade of a Redis store to a storage
 * key: every key copied, a directory's files in one commit.
 */
#include "acme_store_redis_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>

#define RD_WALK_DEPTH        8

/* Is key secret in st? dir: the filesystem root when st is a directory store (then the file mode tells). */
static int
mig_secret(acme_store_t *st, const char *dir, const char *key, int *secret, acme_err_t *err)
{
    struct stat  sb;
    char        *path, *k;
    const char  *base;
    redisReply  *rep = NULL;
    const char  *argv[3];
    size_t       lens[3];
    rd_t        *rd;

    *secret = 0;
    if (dir != NULL) {
        path = acme_sprintf("%s/%s", dir, key);
        if (path == NULL) {
            acme_redis_oom(err);
            return -1;
        }
        if (lstat(path, &sb) != 0) {
            acme_err_set(err, ACME_ERR_STORE, "cannot stat %s: %s", path, strerror(errno));
            free(path);
            return -1;
        }
        free(path);
        *secret = (sb.st_mode & 077) == 0;
        return 0;
    }
    if (acme_store_redis_is(st)) {
        rd = st->data;
        k = acme_redis_key(&rd->r, "info:", "secrets");
        if (k == NULL) {
            acme_redis_oom(err);
            return -1;
        }
        argv[0] = "SISMEMBER";
        argv[1] = k;
        argv[2] = key;
        lens[0] = 9;
        lens[1] = strlen(k);
        lens[2] = strlen(key);
        acme_store_redis_enter(rd);
        if (acme_redis_simple(&rd->r, &rep, 1, "secret?", key, err, 3, argv, lens) != 0) {
            acme_store_redis_leave(rd);
            free(k);
            return -1;
        }
        acme_store_redis_leave(rd);
        free(k);
        /* the layout's secret names count whatever the set says (Redis may have been written to) */
        *secret = (rep->type == REDIS_REPLY_INTEGER && rep->integer == 1) || acme_store_redis_secret_name(key);
        acme_redis_reply_free(rep, 0);
        return 0;
    }
    /* unknown backend: the layout's secret files */
    base = strrchr(key, '/');
    base = base ? base + 1 : key;
    *secret = strcmp(base, "privkey.pem") == 0 || strcmp(base, "account.key") == 0
              || strcmp(base, "order.key") == 0;
    return 0;
}

typedef struct {
    acme_store_t                 *src;
    const char                   *src_dir;
    acme_store_t                 *dst;
    acme_store_migrate_stats_t   *stats;
    int                           skip_challenges;
} mig_t;

static void
mig_items_free(acme_store_item_t *items, size_t n)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        free((char *) items[i].key);
        if (items[i].data != NULL) {
            acme_free_secret((void *) items[i].data, items[i].len);
        }
    }
}

static void
mig_count(acme_store_migrate_stats_t *s, const char *key, int secret)
{
    const char  *base = strrchr(key, '/');

    base = base ? base + 1 : key;
    s->keys++;
    s->secrets += secret != 0;
    if (strncmp(key, "accounts/", 9) == 0 && strcmp(base, "account.key") == 0) {
        s->accounts++;
    } else if (strncmp(key, "certs/", 6) == 0 && strcmp(base, "fullchain.pem") == 0) {
        s->certs++;
    } else if (strncmp(key, "certs/", 6) == 0 && strcmp(base, "order.json") == 0) {
        s->orders++;
    } else if (strncmp(key, "challenges/", 11) == 0) {
        s->challenges++;
    }
}

static int
mig_walk(mig_t *m, const char *prefix, int depth, acme_err_t *err)
{
    char                **names = NULL, **sub = NULL, *k, *data = NULL, *path;
    size_t                n = 0, nsub = 0, i, nitems = 0, len = 0;
    acme_store_item_t    *items = NULL;
    struct stat           sb;
    int                   rc = -1, r, is_dir, is_file, secret;

    if (depth > RD_WALK_DEPTH) {
        acme_err_set(err, ACME_ERR_STORE, "%s: nested too deeply", prefix);
        return -1;
    }
    if (m->src->ops->list(m->src, prefix, &names, &n, err) != 0) {
        return -1;
    }
    if (n > 0) {
        items = calloc(n, sizeof(*items));
        if (items == NULL) {
            acme_redis_oom(err);
            goto done;
        }
    }
    for (i = 0; i < n; i++) {
        if (m->skip_challenges && prefix[0] == '\0' && strcmp(names[i], "challenges") == 0) {
            continue;
        }
        k = prefix[0] ? acme_sprintf("%s/%s", prefix, names[i]) : acme_strdup(names[i]);
        if (k == NULL) {
            acme_redis_oom(err);
            goto done;
        }
        if (m->src_dir != NULL) {
            path = acme_sprintf("%s/%s", m->src_dir, k);
            if (path == NULL || lstat(path, &sb) != 0) {
                acme_err_set(err, ACME_ERR_STORE, "cannot stat %s: %s", path ? path : k, strerror(errno));
                free(path);
                free(k);
                goto done;
            }
            free(path);
            is_dir = S_ISDIR(sb.st_mode);
            is_file = S_ISREG(sb.st_mode);
        } else {
            is_dir = 1;
            is_file = 1;
        }
        if (is_dir) {
            if (m->src_dir == NULL) {
                if (m->src->ops->list(m->src, k, &sub, &nsub, err) != 0) {
                    free(k);
                    goto done;
                }
                acme_store_list_free(sub, nsub);
                sub = NULL;
                if (nsub == 0) {
                    is_dir = 0;
                }
            }
            if (is_dir && mig_walk(m, k, depth + 1, err) != 0) {
                free(k);
                goto done;
            }
        }
        if (is_file) {
            r = m->src->ops->get(m->src, k, &data, &len, err);
            if (r < 0) {
                free(k);
                goto done;
            }
            if (r == 1) {
                free(k);
                continue;
            }
            if (mig_secret(m->src, m->src_dir, k, &secret, err) != 0) {
                acme_free_secret(data, len);
                free(k);
                goto done;
            }
            items[nitems].key = k;
            items[nitems].data = data;
            items[nitems].len = len;
            items[nitems].secret = secret;
            nitems++;
            data = NULL;
            continue;
        }
        free(k);
    }
    /* a directory's files together: a certificate, its key and its metadata arrive at once */
    for (i = 0; i < nitems; i += RD_COMMIT_MAX) {
        size_t cnt = nitems - i > RD_COMMIT_MAX ? RD_COMMIT_MAX : nitems - i;

        if (m->dst->ops->commit(m->dst, items + i, cnt, err) != 0) {
            goto done;
        }
    }
    for (i = 0; i < nitems; i++) {
        mig_count(m->stats, items[i].key, items[i].secret);
    }
    rc = 0;
done:
    mig_items_free(items, nitems);
    free(items);
    acme_store_list_free(names, n);
    return rc;
}

/* Walks src into dst; *stats (when not NULL): what was copied, also after a failure. */
static int
mig_run(acme_store_t *src, const char *src_dir, acme_store_t *dst, int skip_challenges,
    acme_store_migrate_stats_t *stats, const char *what, acme_err_t *err)
{
    acme_store_migrate_stats_t   s;
    mig_t                        m;
    int                          rc;

    memset(&s, 0, sizeof(s));
    m.src = src;
    m.src_dir = src_dir;
    m.dst = dst;
    m.stats = &s;
    m.skip_challenges = skip_challenges;
    rc = mig_walk(&m, "", 0, err);
    if (rc != 0) {
        acme_err_prefix(err, "%s", what);
    }
    if (stats != NULL) {
        *stats = s;
    }
    return rc;
}

int
acme_store_migrate(const char *from, const char *from_key, const char *to, const char *to_key,
    acme_store_migrate_stats_t *stats, acme_err_t *err)
{
    acme_store_t  *src = NULL, *dst = NULL;
    char          *sf = NULL;
    size_t         fl, tl;
    int            rc = -1;

    if (stats != NULL) {
        memset(stats, 0, sizeof(*stats));
    }
    if (from == NULL || to == NULL || from[0] == '\0' || to[0] == '\0') {
        acme_err_set(err, ACME_ERR_CONFIG, "migrate: give a source and a destination");
        return -1;
    }
    fl = strlen(from);
    tl = strlen(to);
    while (fl > 1 && from[fl - 1] == '/') {
        fl--;
    }
    while (tl > 1 && to[tl - 1] == '/') {
        tl--;
    }
    if (fl == tl && memcmp(from, to, fl) == 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "migrate: the source and the destination are the same");
        return -1;
    }
    src = acme_store_open(from, acme_redis_url_is(from) ? from_key : NULL, 0, err);
    if (src == NULL) {
        acme_err_prefix(err, "migrate: source");
        return -1;
    }
    dst = acme_store_open(to, acme_redis_url_is(to) ? to_key : NULL, ACME_STORE_CREATE, err);
    if (dst == NULL) {
        acme_err_prefix(err, "migrate: destination");
        goto done;
    }
    if (!acme_store_redis_is(src)) {
        sf = acme_strndup(from, fl);
        if (sf == NULL) {
            acme_redis_oom(err);
            goto done;
        }
    }
    rc = mig_run(src, sf, dst, 0, stats, "migrate", err);
done:
    free(sf);
    acme_store_close(src);
    acme_store_close(dst);
    return rc;
}

int
acme_store_upgrade(const char *url, const char *key_file, acme_store_migrate_stats_t *stats, acme_err_t *err)
{
    acme_store_t  *src = NULL, *dst = NULL;
    int            rc = -1;

    if (stats != NULL) {
        memset(stats, 0, sizeof(*stats));
    }
    if (url == NULL || !acme_redis_url_is(url) || key_file == NULL || key_file[0] == '\0') {
        acme_err_set(err, ACME_ERR_CONFIG, "upgrade: a redis:// storage and its storage key are needed");
        return -1;
    }
    /* two connections to the same store: one reads as it is, one writes sealed and signed */
    src = acme_store_open(url, key_file, 0, err);
    if (src == NULL) {
        acme_err_prefix(err, "upgrade");
        return -1;
    }
    ((rd_t *) src->data)->unauthenticated_ok = 1;
    dst = acme_store_open(url, key_file, 0, err);
    if (dst == NULL) {
        acme_err_prefix(err, "upgrade");
        goto done;
    }
    rc = mig_run(src, NULL, dst, 1, stats, "upgrade", err);
done:
    acme_store_close(src);
    acme_store_close(dst);
    return rc;
}
