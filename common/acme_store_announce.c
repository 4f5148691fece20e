/*
 * Challenge announcements on Redis (acme_store.h): a challenge published or withdrawn on the channel
 * P"challenges" as "a TYPE KEY <challenge text>" / "d TYPE KEY", then " MAC" with a storage key, and the
 * count under P"acks:"<type>/<key> of the nodes that took it. The challenge text is the record's
 * (acme_store_challenge_text: "<dns|ip> <identifier> <key authorization>").
 */
#include "acme_store_redis_int.h"

#include <ctype.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define RD_ACK_TTL  "600"

static int
ka_valid(const char *s)
{
    size_t  i;

    for (i = 0; s[i] != '\0'; i++) {
        if (!(isalnum((unsigned char) s[i]) || s[i] == '-' || s[i] == '_' || s[i] == '.') || i >= 4096) {
            return 0;
        }
    }
    return i > 0;
}

/* 0 when type and key name a challenge as the store keys it (an SNI already lowercased: other nodes use
 * the key as it comes). */
static int
chal_check(const char *type, const char *key, acme_err_t *err)
{
    char  *k, q[140];
    int    same;

    k = acme_store_challenge_key(type, key, err);
    if (k == NULL) {
        return -1;
    }
    same = strcmp(k + strlen("challenges/") + strlen(type) + 1, key) == 0;
    free(k);
    if (!same) {
        acme_err_set(err, ACME_ERR_INPUT, "challenge: %s key \"%s\" is not in its normal form", type,
                     acme_quote(key, q, sizeof(q), 120));
        return -1;
    }
    return 0;
}

/* The acknowledgement counter of a challenge: 1 with *k set (malloc'd), 0 not Redis (nobody to count), -1. */
static int
ack_key(acme_store_t *st, const char *type, const char *key, char **k, acme_err_t *err)
{
    rd_t  *rd;

    *k = NULL;
    if (st == NULL || chal_check(type, key, err) != 0) {
        return -1;
    }
    if (!acme_store_redis_is(st)) {
        return 0;
    }
    rd = st->data;
    *k = acme_sprintf("%sacks:%s/%s", rd->r.prefix, type, key);
    if (*k == NULL) {
        acme_redis_oom(err);
        return -1;
    }
    return 1;
}

int
acme_store_challenge_announce(acme_store_t *st, int add, const char *type, const char *key,
    const acme_ident_t *id, const char *key_authz, acme_err_t *err)
{
    rd_t        *rd;
    redisReply  *rep = NULL;
    char        *chan = NULL, *m = NULL, *ack = NULL, *text = NULL;
    int          rc = -1;

    if (add && (id == NULL || id->value == NULL || key_authz == NULL || !ka_valid(key_authz))) {
        acme_err_set(err, ACME_ERR_INPUT, "challenge %s %s: no identifier or an invalid key authorization",
                     type ? type : "", key ? key : "");
        return -1;
    }
    rc = ack_key(st, type, key, &ack, err);
    if (rc <= 0) {
        return rc;          /* a directory: every process reads it itself */
    }
    rc = -1;
    rd = st->data;
    chan = acme_redis_key(&rd->r, NULL, "challenges");
    if (add) {
        text = acme_store_challenge_text(id, key_authz);
        m = text ? acme_sprintf("a %s %s %s", type, key, text) : NULL;
    } else {
        m = acme_sprintf("d %s %s", type, key);
    }
    if (chan == NULL || ack == NULL || m == NULL) {
        acme_redis_oom(err);
        goto done;
    }
    if (rd->key != NULL) {
        char  mac[ACME_AEAD_MAC_MAX], *signed_m;

        if (acme_aead_mac(rd->key, "announce", "challenges", m, strlen(m), mac) != 0) {
            acme_err_set(err, ACME_ERR_INTERNAL, "redis store %s: announce: HMAC-SHA256 failed", rd->r.display);
            goto done;
        }
        signed_m = acme_sprintf("%s %s", m, mac);
        if (signed_m == NULL) {
            acme_redis_oom(err);
            goto done;
        }
        free(m);
        m = signed_m;
    }
    acme_store_redis_enter(rd);
    if (acme_redis_simple_str(&rd->r, &rep, 1, "announce", err, 2, "DEL", ack) == 0) {
        acme_redis_reply_free(rep, 0);
        rep = NULL;
        if (acme_redis_simple_str(&rd->r, &rep, 1, "announce", err, 3, "PUBLISH", chan, m) == 0) {
            if (rep->type == REDIS_REPLY_INTEGER) {
                rc = rep->integer > INT_MAX ? INT_MAX : (int) rep->integer;
            } else {
                acme_err_set(err, ACME_ERR_STORE, "redis store %s: announce: unexpected reply", rd->r.display);
            }
        }
    }
    acme_store_redis_leave(rd);
    acme_redis_reply_free(rep, 0);
done:
    free(chan);
    free(ack);
    free(text);
    free(m);
    return rc;
}

int
acme_store_challenge_ack(acme_store_t *st, const char *type, const char *key, acme_err_t *err)
{
    rd_t        *rd;
    redisReply  *rep = NULL;
    char        *ack;
    int          rc;

    rc = ack_key(st, type, key, &ack, err);
    if (rc <= 0) {
        return rc;
    }
    rc = -1;
    rd = st->data;
    acme_store_redis_enter(rd);
    if (acme_redis_simple_str(&rd->r, &rep, 0, "acknowledge", err, 2, "INCR", ack) == 0) {
        acme_redis_reply_free(rep, 0);
        rep = NULL;
        if (acme_redis_simple_str(&rd->r, &rep, 1, "acknowledge", err, 3, "EXPIRE", ack, RD_ACK_TTL) == 0) {
            rc = 0;
        }
    }
    acme_store_redis_leave(rd);
    acme_redis_reply_free(rep, 0);
    free(ack);
    return rc;
}

int
acme_store_challenge_acks(acme_store_t *st, const char *type, const char *key, long *n, acme_err_t *err)
{
    rd_t        *rd;
    redisReply  *rep = NULL;
    char        *ack, *end;
    int          rc;

    if (n == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "acknowledgements: no output");
        return -1;
    }
    *n = 0;
    rc = ack_key(st, type, key, &ack, err);
    if (rc <= 0) {
        return rc;
    }
    rc = -1;
    rd = st->data;
    acme_store_redis_enter(rd);
    if (acme_redis_simple_str(&rd->r, &rep, 1, "acknowledgements", err, 2, "GET", ack) == 0) {
        if (rep->type == REDIS_REPLY_NIL) {
            rc = 0;
        } else if (rep->type == REDIS_REPLY_STRING) {
            *n = strtol(rep->str, &end, 10);
            rc = (end != rep->str && *end == '\0') ? 0 : -1;
        }
        if (rc != 0) {
            acme_err_set(err, ACME_ERR_STORE, "redis store %s: acknowledgements: not a number", rd->r.display);
        }
    }
    acme_store_redis_leave(rd);
    acme_redis_reply_free(rep, 0);
    free(ack);
    return rc;
}

int
acme_store_challenge_msg_parse(const char *msg, acme_challenge_msg_t *m, acme_err_t *err)
{
    char        *sp, *text = NULL, *value, *ka;
    acme_err_t   e;

    memset(m, 0, sizeof(*m));
    if (msg == NULL || strlen(msg) > 8192 || (m->buf = acme_strdup(msg)) == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "challenge announcement: missing or too long");
        return -1;
    }
    /* "a TYPE KEY <challenge text>" or "d TYPE KEY" */
    if ((m->buf[0] != 'a' && m->buf[0] != 'd') || m->buf[1] != ' ') {
        goto bad;
    }
    m->add = m->buf[0] == 'a';
    m->type = m->buf + 2;
    sp = strchr(m->type, ' ');
    if (sp == NULL) {
        goto bad;
    }
    *sp = '\0';
    m->key = sp + 1;
    sp = strchr(m->key, ' ');
    if (sp != NULL) {
        *sp = '\0';
        text = sp + 1;
    }
    if (m->type[0] == '\0' || m->key[0] == '\0' || (text != NULL) != m->add) {
        goto bad;
    }
    if (chal_check(m->type, m->key, err) != 0) {
        acme_err_prefix(err, "challenge announcement");
        acme_store_challenge_msg_free(m);
        return -1;
    }
    if (m->add) {
        acme_ident_type_t  it;
        char              *sni;

        if (acme_store_challenge_text_split(text, &it, &value, &ka) != 0
            || acme_ident_parse(value, &m->id, &e) != 0 || m->id.type != it || m->id.value[0] == '*'
            || !ka_valid(ka))
        {
            goto bad;
        }
        if (strcmp(m->type, "tls-alpn-01") == 0) {
            sni = acme_ident_sni(&m->id);
            if (sni == NULL || strcmp(sni, m->key) != 0) {
                free(sni);
                goto bad;
            }
            free(sni);
        }
        m->key_authz = ka;
    }
    return 0;
bad:
    acme_err_set(err, ACME_ERR_INPUT, "challenge announcement: malformed");
    acme_store_challenge_msg_free(m);
    return -1;
}

void
acme_store_challenge_msg_free(acme_challenge_msg_t *m)
{
    if (m != NULL) {
        acme_ident_free(&m->id);
        free(m->buf);
        memset(m, 0, sizeof(*m));
    }
}

