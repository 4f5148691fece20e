/*
 * The key prefixes under which a Redis server holds certificates: for acmectl list, to say that a store
 * with none under its prefix has some under another (acme_storage URL prefix=NAME, ACMEStorage URL
 * prefix=NAME). Read-only: one SCAN walk over P"dir:certs" keys (acme_store_redis.c's layout).
 */
#include "acme_store.h"
#include "acme_redis.h"

#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>

#define PREFIXES_MAX  64
#define SUFFIX        "dir:certs"

static int
prefix_add(char ***out, size_t *n, const char *key, size_t len)
{
    size_t   i;
    char   **grown;

    for (i = 0; i < *n; i++) {
        if (strlen((*out)[i]) == len && memcmp((*out)[i], key, len) == 0) {
            return 0;
        }
    }
    if (*n >= PREFIXES_MAX) {
        return 0;
    }
    grown = realloc(*out, (*n + 1) * sizeof(char *));
    if (grown == NULL) {
        return -1;
    }
    *out = grown;
    grown[*n] = acme_strndup(key, len);
    if (grown[*n] == NULL) {
        return -1;
    }
    (*n)++;
    return 0;
}

int
acme_store_redis_cert_prefixes(const char *url, char ***prefixes, size_t *n, acme_err_t *err)
{
    acme_redis_t   r;
    redisReply    *rep = NULL;
    char           cursor[32] = "0";
    const char    *argv[6];
    size_t         lens[6], i, sl = strlen(SUFFIX);
    int            rc = -1, rounds = 0;

    *prefixes = NULL;
    *n = 0;
    acme_redis_init(&r);
    if (acme_redis_parse_url(&r, url, err) != 0 || (r.display = acme_redis_display_make(&r)) == NULL
        || (r.tls && acme_redis_tls_init(&r, err) != 0))
    {
        goto done;
    }
    do {
        argv[0] = "SCAN";
        argv[1] = cursor;
        argv[2] = "MATCH";
        argv[3] = "*" SUFFIX;
        argv[4] = "COUNT";
        argv[5] = "1000";
        for (i = 0; i < 6; i++) {
            lens[i] = strlen(argv[i]);
        }
        if (acme_redis_simple(&r, &rep, 1, "scan", "*" SUFFIX, err, 6, argv, lens) != 0) {
            goto done;
        }
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 || rep->element[0]->type != REDIS_REPLY_STRING
            || rep->element[1]->type != REDIS_REPLY_ARRAY || rep->element[0]->len >= sizeof(cursor))
        {
            acme_err_set(err, ACME_ERR_STORE, "redis %s: scan: unexpected reply", r.display);
            goto done;
        }
        memcpy(cursor, rep->element[0]->str, rep->element[0]->len);
        cursor[rep->element[0]->len] = '\0';
        for (i = 0; i < rep->element[1]->elements; i++) {
            redisReply *k = rep->element[1]->element[i];

            if (k->type == REDIS_REPLY_STRING && k->len > sl
                && memcmp(k->str + k->len - sl, SUFFIX, sl) == 0
                && prefix_add(prefixes, n, k->str, k->len - sl) != 0)
            {
                acme_redis_oom(err);
                goto done;
            }
        }
        acme_redis_reply_free(rep, 0);
        rep = NULL;
    } while (strcmp(cursor, "0") != 0 && ++rounds < 10000);
    rc = 0;
done:
    acme_redis_reply_free(rep, 0);
    acme_redis_free(&r);
    if (rc != 0) {
        acme_store_list_free(*prefixes, *n);
        *prefixes = NULL;
        *n = 0;
    }
    return rc;
}
