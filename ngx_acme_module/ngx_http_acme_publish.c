
/*
 * Challenges in the shared zone: the core publishes and withdraws them
 * through acme_challenge_host_t; with acme_storage, challenges other nodes
 * announce are copied in, and a leader that may have missed announcements
 * resyncs the zone from the store.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_acme_runner.h"


/*
 * acme_challenge_host_t: challenges go into the shared zone, where any
 * worker answers them. http-01: token -> "<identifier> <key authz>" (the
 * identifier is the only Host it is answered for); tls-alpn-01: SNI ->
 * "<dns|ip> <identifier> <key authz>".
 *
 * With acme_storage the core announces every challenge it publishes (the
 * issuing node may be nginx, Apache or acmectl); each leader, this one
 * too, copies it into its zone and acknowledges it, and the core asks the
 * CA to validate once every node did.
 */

static ngx_int_t
ngx_http_acme_challenge_put(ngx_http_acme_runner_t *rn, const char *type,
    const char *key, const char *itype, const char *ivalue, const char *ka)
{
    u_char     *v, *p, kind;
    size_t      len;
    ngx_int_t   rc;

    if (ngx_strcmp(type, "http-01") == 0) {
        kind = NGX_HTTP_ACME_KV_HTTP01;
        len = ngx_strlen(ivalue) + 1 + ngx_strlen(ka);

    } else {
        kind = NGX_HTTP_ACME_KV_TLSALPN;
        len = ngx_strlen(itype) + 1 + ngx_strlen(ivalue) + 1 + ngx_strlen(ka);
    }

    v = ngx_alloc(len, rn->log);
    if (v == NULL) {
        return NGX_ERROR;
    }

    p = v;

    if (kind == NGX_HTTP_ACME_KV_TLSALPN) {
        p = ngx_cpymem(p, itype, ngx_strlen(itype));
        *p++ = ' ';
    }

    p = ngx_cpymem(p, ivalue, ngx_strlen(ivalue));
    *p++ = ' ';
    ngx_memcpy(p, ka, ngx_strlen(ka));

    rc = ngx_http_acme_zone_put(rn->zone, kind, (u_char *) key,
                                ngx_strlen(key), v, len);
    ngx_free(v);

    return rc;
}


int
ngx_http_acme_publish(void *data, const char *type, const acme_ident_t *id,
    const char *token, const char *key_authz, acme_err_t *err)
{
    ngx_http_acme_runner_t  *rn = data;

    char       *key;
    ngx_int_t   rc;

    if (ngx_strcmp(type, "http-01") == 0) {
        key = strdup(token);

    } else if (ngx_strcmp(type, "tls-alpn-01") == 0) {
        key = acme_ident_sni(id);

    } else {
        acme_err_set(err, ACME_ERR_CONFIG,
                     "challenge type \"%s\" is not supported by nginx", type);
        return -1;
    }

    if (key == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }

    rc = ngx_http_acme_challenge_put(rn, type, key,
                                     acme_ident_type_name(id->type),
                                     id->value, key_authz);
    free(key);

    if (rc != NGX_OK) {
        acme_err_set(err, ACME_ERR_INTERNAL,
                     "the acme shared zone is full; increase its size with "
                     "acme_shared_zone");
        return -1;
    }

    ngx_log_error(NGX_LOG_INFO, rn->log, 0,
                  "acme: %s challenge for \"%s\" published", type, id->value);

    return 0;
}


void
ngx_http_acme_withdraw(void *data, const char *type, const acme_ident_t *id,
    const char *token)
{
    ngx_http_acme_runner_t  *rn = data;

    char  *sni;

    if (rn->stopping) {
        /*
         * this worker hands over (reload, exit): the order stays in the
         * store and the next leader resumes it, while the CA may be
         * validating right now; the zone outlives us, so the answer stays
         */
        return;
    }

    if (ngx_strcmp(type, "http-01") == 0) {
        ngx_http_acme_zone_delete(rn->zone, NGX_HTTP_ACME_KV_HTTP01,
                                  (u_char *) token, ngx_strlen(token));

    } else if (ngx_strcmp(type, "tls-alpn-01") == 0) {
        sni = acme_ident_sni(id);
        if (sni == NULL) {
            return;
        }

        ngx_http_acme_zone_delete(rn->zone, NGX_HTTP_ACME_KV_TLSALPN,
                                  (u_char *) sni, ngx_strlen(sni));
        free(sni);
    }
}


void
ngx_http_acme_challenge_message(ngx_http_acme_runner_t *rn, char *msg)
{
    u_char                kind;
    acme_err_t            err;
    acme_challenge_msg_t  m;

    if (acme_store_challenge_msg_parse(msg, &m, &err) != 0) {
        ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                      "acme: storage: %s", err.msg);
        return;
    }

    kind = ngx_strcmp(m.type, "http-01") == 0 ? NGX_HTTP_ACME_KV_HTTP01
                                              : NGX_HTTP_ACME_KV_TLSALPN;

    if (!m.add) {
        ngx_http_acme_zone_delete(rn->zone, kind, (u_char *) m.key,
                                  ngx_strlen(m.key));
        acme_store_challenge_msg_free(&m);
        return;
    }

    if (ngx_http_acme_challenge_put(rn, m.type, m.key,
                                    acme_ident_type_name(m.id.type),
                                    m.id.value, m.key_authz)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, rn->log, 0,
                      "acme: the shared zone is full, the %s challenge for "
                      "\"%s\" is not answered here; increase its size with "
                      "acme_shared_zone", m.type, m.id.value);
        acme_store_challenge_msg_free(&m);
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, rn->log, 0,
                   "acme: announced %s challenge for \"%s\" taken",
                   m.type, m.id.value);

    if (acme_store_challenge_ack(rn->stores[0], m.type, m.key, &err) != 0) {
        ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                      "acme: cannot acknowledge the %s challenge for \"%s\": "
                      "%s", m.type, m.id.value, err.msg);
    }

    acme_store_challenge_msg_free(&m);
}


typedef struct {
    char                      **names;
    size_t                      n;
} ngx_http_acme_names_t;


static ngx_int_t
ngx_http_acme_challenge_pending(void *ctx, u_char *key, size_t klen)
{
    ngx_http_acme_names_t  *pending = ctx;

    size_t  i;

    for (i = 0; i < pending->n; i++) {
        if (ngx_strlen(pending->names[i]) == klen
            && ngx_memcmp(pending->names[i], key, klen) == 0)
        {
            return 1;
        }
    }

    return 0;
}


/*
 * A leader that subscribes (at start, after an outage) may have missed
 * announcements: challenges pending in the store are copied into the zone
 * unless it has them, and entries the store no longer has (a withdrawal
 * it missed) are removed. The store's record names the identifier, so an
 * entry read back this way is bound to it as an announced one is.
 *
 * Every challenge is in the store before it is in a zone, so an entry put
 * before the listing and missing from it was withdrawn.
 */

void
ngx_http_acme_challenge_resync(ngx_http_acme_runner_t *rn)
{
    static const char      *types[] = { "http-01", "tls-alpn-01" };

    int                     rc;
    char                  **names, *dir, *key, *ka;
    size_t                  n, i, t, len, copied, removed;
    time_t                  listed;
    u_char                  kind;
    ngx_str_t               v;
    ngx_pool_t             *pool;
    acme_err_t              err;
    acme_ident_t            id;
    acme_store_t           *st;
    ngx_http_acme_names_t   pending;

    st = rn->stores[0];

    pool = ngx_create_pool(1024, rn->log);
    if (pool == NULL) {
        return;
    }

    copied = 0;
    removed = 0;

    for (t = 0; t < 2; t++) {
        kind = t == 0 ? NGX_HTTP_ACME_KV_HTTP01 : NGX_HTTP_ACME_KV_TLSALPN;
        dir = t == 0 ? "challenges/http-01" : "challenges/tls-alpn-01";

        listed = ngx_time();

        if (st->ops->list(st, dir, &names, &n, &err) != 0) {
            ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                          "acme: cannot list the pending challenges in the "
                          "storage: %s", err.msg);
            break;
        }

        pending.names = names;
        pending.n = n;

        removed += ngx_http_acme_zone_sweep(rn->zone, kind, listed,
                                            ngx_http_acme_challenge_pending,
                                            &pending);

        for (i = 0; i < n; i++) {
            if (ngx_http_acme_zone_get(rn->zone, kind, (u_char *) names[i],
                                       ngx_strlen(names[i]), pool, &v)
                != NGX_DECLINED)
            {
                continue;
            }

            key = names[i];

            rc = acme_store_challenge_get(st, types[t], key, &id, &ka, &err);

            if (rc != 0) {
                if (rc < 0) {
                    ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                                  "acme: pending %s challenge not copied "
                                  "from the storage: %s", types[t], err.msg);
                }

                free(ka);
                continue;
            }

            rc = ngx_http_acme_challenge_put(rn, types[t], key,
                                             acme_ident_type_name(id.type),
                                             id.value, ka);
            acme_ident_free(&id);

            len = ngx_strlen(ka);
            ngx_explicit_memzero(ka, len);
            free(ka);

            if (rc == NGX_OK) {
                copied++;
            }
        }

        acme_store_list_free(names, n);
    }

    ngx_destroy_pool(pool);

    if (copied) {
        ngx_log_error(NGX_LOG_INFO, rn->log, 0,
                      "acme: %uz pending challenge(s) copied from the storage",
                      copied);
    }

    if (removed) {
        ngx_log_error(NGX_LOG_INFO, rn->log, 0,
                      "acme: %uz challenge(s) withdrawn while not subscribed "
                      "removed", removed);
    }
}
