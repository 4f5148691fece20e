/*
 * Change notification on Redis: a watch is its own connection subscribed to P"events" (the name of each
 * certificate a commit changed) and, for hosts that answer challenges from memory, P"challenges" (the
 * announcements of acme_store_announce.c, whose MAC is checked here).
 */
#include "acme_store_redis_int.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <hiredis/hiredis.h>

struct acme_store_watch_s {
    rd_t               *rd;
    acme_redis_conn_t   c;
    int                 messages;     /* also return challenge announcements */
    char               *chal_chan;    /* P"challenges" */
};

static acme_store_watch_t *watch_open(acme_store_t *st, int challenges, acme_err_t *err);

acme_store_watch_t *
acme_store_watch_open(acme_store_t *st, acme_err_t *err)
{
    return watch_open(st, 0, err);
}

acme_store_watch_t *
acme_store_watch_open_challenges(acme_store_t *st, acme_err_t *err)
{
    return watch_open(st, 1, err);
}

static acme_store_watch_t *
watch_open(acme_store_t *st, int challenges, acme_err_t *err)
{
    acme_store_watch_t  *w;
    rd_t                *rd;
    acme_buf_t           b = { NULL, 0, 0 };
    redisReply          *rep[2] = { NULL, NULL };
    char                *chan, *cchan, eb[220];
    int                  fresh, i, n = challenges ? 2 : 1, ok = 1;

    if (!acme_store_redis_is(st)) {
        acme_err_set(err, ACME_ERR_CONFIG, "the %s store has no change notification: poll "
                     "acme_store_generation()", st ? acme_store_backend(st) : "(no)");
        return NULL;
    }
    rd = st->data;
    w = calloc(1, sizeof(*w));
    chan = acme_redis_key(&rd->r, NULL, "events");
    cchan = acme_redis_key(&rd->r, NULL, "challenges");
    if (w == NULL || chan == NULL || cchan == NULL
        || (challenges ? acme_redis_cmd_str(&b, 3, "SUBSCRIBE", chan, cchan)
                       : acme_redis_cmd_str(&b, 2, "SUBSCRIBE", chan)) != 0)
    {
        free(w);
        free(chan);
        free(cchan);
        acme_redis_cmd_free(&b);
        acme_redis_oom(err);
        return NULL;
    }
    acme_redis_conn_init(&w->c);
    w->rd = rd;
    w->messages = challenges;
    w->chal_chan = cchan;
    if (acme_redis_ensure(&rd->r, &w->c, &fresh, err) != 0
        || acme_redis_conn_command(&w->c, rd->r.command_ms, b.data, b.len, n, rep, err) != 0)
    {
        acme_redis_err_context(&rd->r, err, "subscribe", chan + strlen(rd->r.prefix));
        acme_redis_conn_close(&w->c);
        free(w);
        free(chan);
        free(cchan);
        acme_redis_cmd_free(&b);
        return NULL;
    }
    acme_redis_cmd_free(&b);
    for (i = 0; i < n; i++) {
        if (ok && (rep[i]->type != REDIS_REPLY_ARRAY || rep[i]->elements < 1
                   || rep[i]->element[0]->type != REDIS_REPLY_STRING
                   || strcmp(rep[i]->element[0]->str, "subscribe") != 0))
        {
            acme_err_set(err, ACME_ERR_STORE, "redis store %s: subscribe %s: %s", rd->r.display, chan,
                         rep[i]->type == REDIS_REPLY_ERROR ? acme_redis_errstr(rep[i], eb, sizeof(eb))
                                                           : "unexpected reply");
            ok = 0;
        }
        acme_redis_reply_free(rep[i], 0);
    }
    free(chan);
    if (!ok) {
        acme_redis_conn_close(&w->c);
        free(cchan);
        free(w);
        return NULL;
    }
    pthread_mutex_lock(&rd->mu);
    rd->refs++;
    pthread_mutex_unlock(&rd->mu);
    return w;
}

int
acme_store_watch_fd(const acme_store_watch_t *w)
{
    return w ? w->c.fd : -1;
}

/*
 * With a storage key, an announcement must end in " MAC" over the rest: 0 with the MAC cut off msg, -1
 * (reported once) when it does not authenticate. Without a key, 0 (msg as it came).
 */
static int
watch_msg_check(rd_t *rd, char *msg)
{
    char        *sp;
    const char  *why = NULL;
    acme_err_t   e;

    pthread_mutex_lock(&rd->mu);
    if (rd->key == NULL) {
        /* no key: nothing can be checked; a MAC a keyed node added is cut off */
        sp = strrchr(msg, ' ');
        if (sp != NULL && strncmp(sp + 1, ACME_AEAD_MAC_MAGIC, ACME_AEAD_MAC_MAGIC_LEN) == 0) {
            *sp = '\0';
        }
    } else {
        sp = strrchr(msg, ' ');
        if (sp == NULL || strncmp(sp + 1, ACME_AEAD_MAC_MAGIC, ACME_AEAD_MAC_MAGIC_LEN) != 0) {
            why = "an announcement without a MAC, though a storage key is configured";
        } else if (acme_aead_mac_check(rd->key, "announce", "challenges", msg, (size_t) (sp - msg), sp + 1,
                                       strlen(sp + 1), &e) != 0)
        {
            why = e.msg;
        } else {
            *sp = '\0';
        }
        if (why != NULL) {
            acme_store_redis_forged(rd, "challenge announcement", msg, strlen(msg), why);
        }
    }
    pthread_mutex_unlock(&rd->mu);
    return why == NULL ? 0 : -1;
}

int
acme_store_watch_next(acme_store_watch_t *w, char **name, acme_err_t *err)
{
    void        *rp = NULL;
    redisReply  *rep;
    short        want;
    int          r;
    acme_err_t   e;

    if (name != NULL) {
        *name = NULL;
    }
    if (w == NULL || name == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "watch: no watch or output");
        return -1;
    }
    if (w->c.fd < 0) {
        acme_err_set(err, ACME_ERR_STORE, "redis store %s: events: the connection is closed", w->rd->r.display);
        return -1;
    }
    for ( ;; ) {
        if (redisReaderGetReply(w->c.reader, &rp) != REDIS_OK) {
            acme_err_set(err, ACME_ERR_STORE, "redis store %s: events: protocol error: %s", w->rd->r.display,
                         w->c.reader->errstr);
            acme_redis_conn_close(&w->c);
            return -1;
        }
        if (rp != NULL) {
            rep = rp;
            if (w->messages && rep->type == REDIS_REPLY_ARRAY && rep->elements == 3
                && rep->element[0]->type == REDIS_REPLY_STRING && strcmp(rep->element[0]->str, "message") == 0
                && rep->element[1]->type == REDIS_REPLY_STRING && strcmp(rep->element[1]->str, w->chal_chan) == 0
                && rep->element[2]->type == REDIS_REPLY_STRING && rep->element[2]->len > 0
                && strlen(rep->element[2]->str) == rep->element[2]->len)
            {
                if (watch_msg_check(w->rd, rep->element[2]->str) != 0) {
                    freeReplyObject(rep);
                    continue;
                }
                *name = acme_strdup(rep->element[2]->str);
                freeReplyObject(rep);
                if (*name == NULL) {
                    acme_redis_oom(err);
                    return -1;
                }
                return 2;
            }
            if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 3
                && rep->element[0]->type == REDIS_REPLY_STRING && strcmp(rep->element[0]->str, "message") == 0
                && rep->element[2]->type == REDIS_REPLY_STRING
                && strlen(rep->element[2]->str) == rep->element[2]->len
                && acme_store_name_check(rep->element[2]->str, "name", &e) == 0)
            {
                *name = acme_strdup(rep->element[2]->str);
                freeReplyObject(rep);
                if (*name == NULL) {
                    acme_redis_oom(err);
                    return -1;
                }
                return 1;
            }
            freeReplyObject(rep);
            continue;
        }
        if (w->c.pid != getpid()) {
            acme_err_set(err, ACME_ERR_STORE, "redis store %s: events: the watch belongs to the parent process",
                         w->rd->r.display);
            return -1;
        }
        r = acme_redis_conn_read(&w->c, &want, err);
        if (r < 0) {
            acme_err_prefix(err, "redis store %s: events", w->rd->r.display);
            if (err != NULL) {
                err->kind = ACME_ERR_STORE;
            }
            acme_redis_conn_close(&w->c);
            return -1;
        }
        if (r == 0) {
            return 0;
        }
    }
}

void
acme_store_watch_close(acme_store_watch_t *w)
{
    if (w == NULL) {
        return;
    }
    if (w->c.fd >= 0 && w->c.pid != getpid()) {
        if (w->c.ssl != NULL) {
            SSL_free(w->c.ssl);
            w->c.ssl = NULL;
        }
    }
    acme_redis_conn_close(&w->c);
    acme_store_redis_unref(w->rd);
    free(w->chal_chan);
    free(w);
}
