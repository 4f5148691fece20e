
/*
 * The shared zone: a slab pool with a red-black tree of small key/value
 * entries (certificate generations, challenges), the leader lock, the
 * renew requests and the ARI check requests.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_acme_zone.h"


typedef struct {
    u_char                      color;
    u_char                      kind;
    u_short                     klen;
    uint32_t                    vlen;
    ngx_uint_t                  num;             /* generation; put time */
    u_char                      data[1];         /* key, then value */
} ngx_http_acme_kv_t;


/*
 * A challenge is answered for an hour at most: a withdrawal that never
 * arrived (another node's, announced while this one was not listening)
 * does not leave an answer behind for good.
 */
#define NGX_HTTP_ACME_CHALLENGE_TTL  3600


static ngx_inline ngx_uint_t
ngx_http_acme_zone_expired(ngx_http_acme_kv_t *kv, time_t now)
{
    return (kv->kind == NGX_HTTP_ACME_KV_HTTP01
            || kv->kind == NGX_HTTP_ACME_KV_TLSALPN)
           && now - (time_t) kv->num > NGX_HTTP_ACME_CHALLENGE_TTL;
}


static void ngx_http_acme_zone_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_http_acme_kv_t *ngx_http_acme_zone_lookup(ngx_http_acme_zone_t *z,
    u_char kind, u_char *key, size_t klen, ngx_rbtree_node_t **found);


ngx_int_t
ngx_http_acme_zone_init(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_acme_zone_t  *ozone = data;

    size_t                 len;
    ngx_http_acme_zone_t  *zone;

    zone = shm_zone->data;

    if (ozone) {
        zone->sh = ozone->sh;
        zone->shpool = ozone->shpool;
        return NGX_OK;
    }

    zone->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        zone->sh = zone->shpool->data;
        return NGX_OK;
    }

    zone->sh = ngx_slab_calloc(zone->shpool, sizeof(ngx_http_acme_sh_t));
    if (zone->sh == NULL) {
        return NGX_ERROR;
    }

    zone->shpool->data = zone->sh;

    ngx_rbtree_init(&zone->sh->rbtree, &zone->sh->sentinel,
                    ngx_http_acme_zone_rbtree_insert);

    len = sizeof(" in acme zone \"\"") + shm_zone->shm.name.len;

    zone->shpool->log_ctx = ngx_slab_alloc(zone->shpool, len);
    if (zone->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(zone->shpool->log_ctx, " in acme zone \"%V\"%Z",
                &shm_zone->shm.name);

    zone->shpool->log_nomem = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_acme_kv_cmp(ngx_http_acme_kv_t *a, ngx_http_acme_kv_t *b)
{
    ngx_int_t  rc;

    if (a->kind != b->kind) {
        return (ngx_int_t) a->kind - (ngx_int_t) b->kind;
    }

    rc = ngx_memn2cmp(a->data, b->data, a->klen, b->klen);

    return rc;
}


static void
ngx_http_acme_zone_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t   **p;
    ngx_http_acme_kv_t   *kv, *kvt;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else {
            kv = (ngx_http_acme_kv_t *) &node->color;
            kvt = (ngx_http_acme_kv_t *) &temp->color;

            p = (ngx_http_acme_kv_cmp(kv, kvt) < 0) ? &temp->left
                                                     : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


static uint32_t
ngx_http_acme_zone_hash(u_char kind, u_char *key, size_t klen)
{
    uint32_t  crc;

    ngx_crc32_init(crc);
    ngx_crc32_update(&crc, &kind, 1);
    ngx_crc32_update(&crc, key, klen);
    ngx_crc32_final(crc);

    return crc;
}


/* with the zone locked */

static ngx_http_acme_kv_t *
ngx_http_acme_zone_lookup(ngx_http_acme_zone_t *z, u_char kind, u_char *key,
    size_t klen, ngx_rbtree_node_t **found)
{
    uint32_t             hash;
    ngx_int_t            rc;
    ngx_rbtree_node_t   *node, *sentinel;
    ngx_http_acme_kv_t  *kv;

    hash = ngx_http_acme_zone_hash(kind, key, klen);

    node = z->sh->rbtree.root;
    sentinel = z->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        kv = (ngx_http_acme_kv_t *) &node->color;

        rc = (ngx_int_t) kind - (ngx_int_t) kv->kind;
        if (rc == 0) {
            rc = ngx_memn2cmp(key, kv->data, klen, kv->klen);
        }

        if (rc == 0) {
            *found = node;
            return kv;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    *found = NULL;
    return NULL;
}


static ngx_http_acme_kv_t *
ngx_http_acme_zone_insert(ngx_http_acme_zone_t *z, u_char kind, u_char *key,
    size_t klen, u_char *value, size_t vlen)
{
    size_t               n;
    ngx_rbtree_node_t   *node;
    ngx_http_acme_kv_t  *kv;

    n = offsetof(ngx_rbtree_node_t, color)
        + offsetof(ngx_http_acme_kv_t, data) + klen + vlen;

    node = ngx_slab_alloc_locked(z->shpool, n);
    if (node == NULL) {
        return NULL;
    }

    node->key = ngx_http_acme_zone_hash(kind, key, klen);

    kv = (ngx_http_acme_kv_t *) &node->color;
    kv->kind = kind;
    kv->klen = (u_short) klen;
    kv->vlen = (uint32_t) vlen;
    kv->num = 0;
    ngx_memcpy(kv->data, key, klen);

    if (vlen) {
        ngx_memcpy(kv->data + klen, value, vlen);
    }

    ngx_rbtree_insert(&z->sh->rbtree, node);

    return kv;
}


ngx_int_t
ngx_http_acme_zone_put(ngx_http_acme_zone_t *z, u_char kind, u_char *key,
    size_t klen, u_char *value, size_t vlen)
{
    ngx_rbtree_node_t   *node;
    ngx_http_acme_kv_t  *kv;

    if (klen > 0xffff) {
        return NGX_ERROR;
    }

    ngx_shmtx_lock(&z->shpool->mutex);

    kv = ngx_http_acme_zone_lookup(z, kind, key, klen, &node);

    if (kv) {
        ngx_rbtree_delete(&z->sh->rbtree, node);
        ngx_slab_free_locked(z->shpool, node);
    }

    kv = ngx_http_acme_zone_insert(z, kind, key, klen, value, vlen);

    if (kv) {
        kv->num = ngx_time();
    }

    ngx_shmtx_unlock(&z->shpool->mutex);

    return kv ? NGX_OK : NGX_ERROR;
}


void
ngx_http_acme_zone_delete(ngx_http_acme_zone_t *z, u_char kind, u_char *key,
    size_t klen)
{
    ngx_rbtree_node_t   *node;
    ngx_http_acme_kv_t  *kv;

    ngx_shmtx_lock(&z->shpool->mutex);

    kv = ngx_http_acme_zone_lookup(z, kind, key, klen, &node);

    if (kv) {
        ngx_rbtree_delete(&z->sh->rbtree, node);
        ngx_slab_free_locked(z->shpool, node);
    }

    ngx_shmtx_unlock(&z->shpool->mutex);
}


ngx_uint_t
ngx_http_acme_zone_sweep(ngx_http_acme_zone_t *z, u_char kind, time_t before,
    ngx_http_acme_zone_keep_pt keep, void *ctx)
{
    time_t               now;
    ngx_uint_t           n;
    ngx_rbtree_node_t   *node, *root, *sentinel;
    ngx_http_acme_kv_t  *kv;

    now = ngx_time();
    n = 0;

    ngx_shmtx_lock(&z->shpool->mutex);

    sentinel = z->sh->rbtree.sentinel;

again:

    root = z->sh->rbtree.root;

    if (root != sentinel) {

        for (node = ngx_rbtree_min(root, sentinel);
             node;
             node = ngx_rbtree_next(&z->sh->rbtree, node))
        {
            kv = (ngx_http_acme_kv_t *) &node->color;

            if (kv->kind != kind) {
                continue;
            }

            if (!ngx_http_acme_zone_expired(kv, now)
                && ((time_t) kv->num >= before
                    || keep(ctx, kv->data, kv->klen)))
            {
                continue;
            }

            /* a deletion rebalances the tree: walk it again */
            ngx_rbtree_delete(&z->sh->rbtree, node);
            ngx_slab_free_locked(z->shpool, node);
            n++;

            goto again;
        }
    }

    ngx_shmtx_unlock(&z->shpool->mutex);

    return n;
}


ngx_int_t
ngx_http_acme_zone_get(ngx_http_acme_zone_t *z, u_char kind, u_char *key,
    size_t klen, ngx_pool_t *pool, ngx_str_t *value)
{
    u_char              *p;
    ngx_rbtree_node_t   *node;
    ngx_http_acme_kv_t  *kv;

    ngx_shmtx_lock(&z->shpool->mutex);

    kv = ngx_http_acme_zone_lookup(z, kind, key, klen, &node);

    if (kv && ngx_http_acme_zone_expired(kv, ngx_time())) {
        ngx_rbtree_delete(&z->sh->rbtree, node);
        ngx_slab_free_locked(z->shpool, node);
        kv = NULL;
    }

    if (kv == NULL) {
        ngx_shmtx_unlock(&z->shpool->mutex);
        return NGX_DECLINED;
    }

    p = ngx_pnalloc(pool, kv->vlen + 1);
    if (p == NULL) {
        ngx_shmtx_unlock(&z->shpool->mutex);
        return NGX_ERROR;
    }

    ngx_memcpy(p, kv->data + kv->klen, kv->vlen);
    p[kv->vlen] = '\0';

    value->data = p;
    value->len = kv->vlen;

    ngx_shmtx_unlock(&z->shpool->mutex);

    return NGX_OK;
}


ngx_uint_t
ngx_http_acme_zone_cert_gen(ngx_http_acme_zone_t *z, u_char *name, size_t len)
{
    ngx_uint_t           gen;
    ngx_rbtree_node_t   *node;
    ngx_http_acme_kv_t  *kv;

    ngx_shmtx_lock(&z->shpool->mutex);

    kv = ngx_http_acme_zone_lookup(z, NGX_HTTP_ACME_KV_GEN, name, len, &node);
    gen = kv ? kv->num : 0;

    ngx_shmtx_unlock(&z->shpool->mutex);

    return gen;
}


ngx_int_t
ngx_http_acme_zone_cert_bump(ngx_http_acme_zone_t *z, u_char *name,
    size_t len)
{
    ngx_rbtree_node_t   *node;
    ngx_http_acme_kv_t  *kv;

    ngx_shmtx_lock(&z->shpool->mutex);

    kv = ngx_http_acme_zone_lookup(z, NGX_HTTP_ACME_KV_GEN, name, len, &node);

    if (kv == NULL) {
        kv = ngx_http_acme_zone_insert(z, NGX_HTTP_ACME_KV_GEN, name, len,
                                       NULL, 0);
    }

    if (kv) {
        kv->num++;
    }

    ngx_shmtx_unlock(&z->shpool->mutex);

    /* after the entry changed: workers compare the global one first */
    (void) ngx_atomic_fetch_add(&z->sh->gen, 1);

    return kv ? NGX_OK : NGX_ERROR;
}


/* the slab chunk an entry takes, for room planning at configuration */

size_t
ngx_http_acme_zone_entry_size(size_t klen, size_t vlen)
{
    size_t  n, size;

    n = offsetof(ngx_rbtree_node_t, color)
        + offsetof(ngx_http_acme_kv_t, data) + klen + vlen;

    for (size = 8; size < n; size <<= 1) { /* void */ }

    return size;
}


ngx_int_t
ngx_http_acme_zone_renew_request(ngx_http_acme_zone_t *z, ngx_str_t *name,
    time_t interval, time_t *until)
{
    time_t               now;
    ngx_uint_t           i;
    ngx_rbtree_node_t   *node;
    ngx_http_acme_kv_t  *kv, *forced;

    if (name->len == 0 || name->len >= NGX_HTTP_ACME_RENEW_LEN) {
        return NGX_ERROR;
    }

    now = ngx_time();

    ngx_shmtx_lock(&z->shpool->mutex);

    kv = ngx_http_acme_zone_lookup(z, NGX_HTTP_ACME_KV_CA_WAIT, name->data,
                                   name->len, &node);

    if (kv && (time_t) kv->num > now) {
        *until = (time_t) kv->num;
        ngx_shmtx_unlock(&z->shpool->mutex);
        return NGX_DECLINED;
    }

    forced = ngx_http_acme_zone_lookup(z, NGX_HTTP_ACME_KV_FORCED, name->data,
                                       name->len, &node);

    if (forced && now - (time_t) forced->num < interval) {
        *until = (time_t) forced->num + interval;
        ngx_shmtx_unlock(&z->shpool->mutex);
        return NGX_AGAIN;
    }

    for (i = 0; i < z->sh->nrenew; i++) {
        if (ngx_strlen(z->sh->renew[i]) == name->len
            && ngx_strncmp(z->sh->renew[i], name->data, name->len) == 0)
        {
            break;
        }
    }

    if (i == NGX_HTTP_ACME_RENEW_MAX) {
        ngx_shmtx_unlock(&z->shpool->mutex);
        return NGX_BUSY;
    }

    if (forced == NULL) {
        forced = ngx_http_acme_zone_insert(z, NGX_HTTP_ACME_KV_FORCED,
                                           name->data, name->len, NULL, 0);
        if (forced == NULL) {
            /* no room to remember it: refuse rather than allow a flood */
            ngx_shmtx_unlock(&z->shpool->mutex);
            return NGX_BUSY;
        }
    }

    if (i == z->sh->nrenew) {
        ngx_memcpy(z->sh->renew[i], name->data, name->len);
        z->sh->renew[i][name->len] = '\0';
        z->sh->nrenew++;
    }

    forced->num = (ngx_uint_t) now;

    ngx_shmtx_unlock(&z->shpool->mutex);

    return NGX_OK;
}


ngx_int_t
ngx_http_acme_zone_set_ca_wait(ngx_http_acme_zone_t *z, u_char *name,
    size_t len, time_t until)
{
    ngx_rbtree_node_t   *node;
    ngx_http_acme_kv_t  *kv;

    if (len == 0 || len > 0xffff) {
        return NGX_ERROR;
    }

    ngx_shmtx_lock(&z->shpool->mutex);

    kv = ngx_http_acme_zone_lookup(z, NGX_HTTP_ACME_KV_CA_WAIT, name, len,
                                   &node);

    if (until == 0) {
        if (kv) {
            ngx_rbtree_delete(&z->sh->rbtree, node);
            ngx_slab_free_locked(z->shpool, node);
        }

        ngx_shmtx_unlock(&z->shpool->mutex);
        return NGX_OK;
    }

    if (kv == NULL) {
        kv = ngx_http_acme_zone_insert(z, NGX_HTTP_ACME_KV_CA_WAIT, name, len,
                                       NULL, 0);
    }

    if (kv) {
        kv->num = (ngx_uint_t) until;
    }

    ngx_shmtx_unlock(&z->shpool->mutex);

    return kv ? NGX_OK : NGX_ERROR;
}


ngx_uint_t
ngx_http_acme_zone_renew_take(ngx_http_acme_zone_t *z,
    u_char out[][NGX_HTTP_ACME_RENEW_LEN])
{
    ngx_uint_t  n;

    if (z->sh->nrenew == 0) {
        return 0;
    }

    ngx_shmtx_lock(&z->shpool->mutex);

    n = z->sh->nrenew;
    ngx_memcpy(out, z->sh->renew, n * NGX_HTTP_ACME_RENEW_LEN);
    z->sh->nrenew = 0;

    ngx_shmtx_unlock(&z->shpool->mutex);

    return n;
}


ngx_int_t
ngx_http_acme_zone_ari_request(ngx_http_acme_zone_t *z, ngx_str_t *name,
    time_t interval, time_t *until)
{
    time_t               now;
    ngx_uint_t           i;
    ngx_rbtree_node_t   *node;
    ngx_http_acme_kv_t  *last;

    if (name->len == 0 || name->len >= NGX_HTTP_ACME_RENEW_LEN) {
        return NGX_ERROR;
    }

    now = ngx_time();

    ngx_shmtx_lock(&z->shpool->mutex);

    last = ngx_http_acme_zone_lookup(z, NGX_HTTP_ACME_KV_ARI, name->data,
                                     name->len, &node);

    if (last && now - (time_t) last->num < interval) {
        *until = (time_t) last->num + interval;
        ngx_shmtx_unlock(&z->shpool->mutex);
        return NGX_AGAIN;
    }

    for (i = 0; i < z->sh->nari; i++) {
        if (ngx_strlen(z->sh->ari[i]) == name->len
            && ngx_strncmp(z->sh->ari[i], name->data, name->len) == 0)
        {
            break;
        }
    }

    if (i == NGX_HTTP_ACME_RENEW_MAX) {
        ngx_shmtx_unlock(&z->shpool->mutex);
        return NGX_BUSY;
    }

    if (last == NULL) {
        last = ngx_http_acme_zone_insert(z, NGX_HTTP_ACME_KV_ARI,
                                         name->data, name->len, NULL, 0);
        if (last == NULL) {
            /* no room to remember it: refuse rather than allow a flood */
            ngx_shmtx_unlock(&z->shpool->mutex);
            return NGX_BUSY;
        }
    }

    if (i == z->sh->nari) {
        ngx_memcpy(z->sh->ari[i], name->data, name->len);
        z->sh->ari[i][name->len] = '\0';
        z->sh->nari++;
    }

    last->num = (ngx_uint_t) now;

    ngx_shmtx_unlock(&z->shpool->mutex);

    return NGX_OK;
}


ngx_uint_t
ngx_http_acme_zone_ari_take(ngx_http_acme_zone_t *z,
    u_char out[][NGX_HTTP_ACME_RENEW_LEN])
{
    ngx_uint_t  n;

    if (z->sh->nari == 0) {
        return 0;
    }

    ngx_shmtx_lock(&z->shpool->mutex);

    n = z->sh->nari;
    ngx_memcpy(out, z->sh->ari, n * NGX_HTTP_ACME_RENEW_LEN);
    z->sh->nari = 0;

    ngx_shmtx_unlock(&z->shpool->mutex);

    return n;
}


/* on-demand names */

static void
ngx_http_acme_zone_od_read(ngx_http_acme_kv_t *kv, ngx_http_acme_od_entry_t *e)
{
    ngx_memzero(e, sizeof(ngx_http_acme_od_entry_t));
    ngx_memcpy(e, kv->data + kv->klen,
               ngx_min(kv->vlen, sizeof(ngx_http_acme_od_entry_t)));
    e->store[NGX_HTTP_ACME_OD_NAME_LEN - 1] = '\0';
}


static ngx_int_t
ngx_http_acme_zone_od_write(ngx_http_acme_zone_t *z, u_char *name,
    size_t len, ngx_http_acme_od_entry_t *e)
{
    ngx_rbtree_node_t   *node;
    ngx_http_acme_kv_t  *kv;

    kv = ngx_http_acme_zone_lookup(z, NGX_HTTP_ACME_KV_ONDEMAND, name, len,
                                   &node);
    if (kv) {
        ngx_memcpy(kv->data + kv->klen, e,
                   ngx_min(kv->vlen, sizeof(ngx_http_acme_od_entry_t)));
        kv->num = ngx_time();
        return NGX_OK;
    }

    kv = ngx_http_acme_zone_insert(z, NGX_HTTP_ACME_KV_ONDEMAND, name, len,
                                   (u_char *) e,
                                   sizeof(ngx_http_acme_od_entry_t));
    if (kv == NULL) {
        return NGX_ERROR;
    }

    kv->num = ngx_time();

    return NGX_OK;
}


ngx_int_t
ngx_http_acme_zone_od_request(ngx_http_acme_zone_t *z, u_char *name,
    size_t len, ngx_uint_t tmpl, time_t now, ngx_http_acme_od_entry_t *e)
{
    ngx_int_t            rc;
    ngx_rbtree_node_t   *node;
    ngx_http_acme_kv_t  *kv;

    if (len >= NGX_HTTP_ACME_OD_NAME_LEN) {
        return NGX_ERROR;
    }

    ngx_shmtx_lock(&z->shpool->mutex);

    kv = ngx_http_acme_zone_lookup(z, NGX_HTTP_ACME_KV_ONDEMAND, name, len,
                                   &node);
    if (kv) {
        ngx_http_acme_zone_od_read(kv, e);

        /*
         * a refusal until it expires; a request the cache manager has not
         * touched for a while (it died, or restarted with a fresh queue) is
         * queued again: it republishes the names it knows
         */

        if ((e->state == NGX_HTTP_ACME_OD_REFUSED && e->until > now)
            || e->state == NGX_HTTP_ACME_OD_READY
            || (e->state != NGX_HTTP_ACME_OD_REFUSED
                && now - (time_t) kv->num < NGX_HTTP_ACME_OD_STALE))
        {
            ngx_shmtx_unlock(&z->shpool->mutex);
            return NGX_OK;
        }
    }

    if (z->sh->nod == NGX_HTTP_ACME_OD_QUEUE) {
        ngx_shmtx_unlock(&z->shpool->mutex);
        return NGX_BUSY;
    }

    ngx_memzero(e, sizeof(ngx_http_acme_od_entry_t));
    e->state = NGX_HTTP_ACME_OD_QUEUED;
    e->tmpl = (u_char) tmpl;

    rc = ngx_http_acme_zone_od_write(z, name, len, e);

    if (rc == NGX_OK) {
        ngx_memcpy(z->sh->od[z->sh->nod], name, len);
        z->sh->od[z->sh->nod][len] = '\0';
        z->sh->nod++;
    }

    ngx_shmtx_unlock(&z->shpool->mutex);

    return rc == NGX_OK ? NGX_OK : NGX_BUSY;
}


ngx_int_t
ngx_http_acme_zone_od_get(ngx_http_acme_zone_t *z, u_char *name, size_t len,
    ngx_http_acme_od_entry_t *e)
{
    ngx_rbtree_node_t   *node;
    ngx_http_acme_kv_t  *kv;

    ngx_shmtx_lock(&z->shpool->mutex);

    kv = ngx_http_acme_zone_lookup(z, NGX_HTTP_ACME_KV_ONDEMAND, name, len,
                                   &node);
    if (kv) {
        ngx_http_acme_zone_od_read(kv, e);
    }

    ngx_shmtx_unlock(&z->shpool->mutex);

    return kv ? NGX_OK : NGX_DECLINED;
}


ngx_int_t
ngx_http_acme_zone_od_set(ngx_http_acme_zone_t *z, u_char *name, size_t len,
    ngx_http_acme_od_entry_t *e)
{
    ngx_int_t  rc;

    ngx_shmtx_lock(&z->shpool->mutex);
    rc = ngx_http_acme_zone_od_write(z, name, len, e);
    ngx_shmtx_unlock(&z->shpool->mutex);

    return rc;
}


void
ngx_http_acme_zone_od_seen(ngx_http_acme_zone_t *z, u_char *name, size_t len,
    time_t now)
{
    ngx_rbtree_node_t         *node;
    ngx_http_acme_kv_t        *kv;
    ngx_http_acme_od_entry_t   e;

    ngx_shmtx_lock(&z->shpool->mutex);

    kv = ngx_http_acme_zone_lookup(z, NGX_HTTP_ACME_KV_ONDEMAND, name, len,
                                   &node);
    if (kv) {
        ngx_http_acme_zone_od_read(kv, &e);

        if (now - e.seen >= 60) {
            e.seen = now;
            (void) ngx_http_acme_zone_od_write(z, name, len, &e);
        }
    }

    ngx_shmtx_unlock(&z->shpool->mutex);
}


ngx_uint_t
ngx_http_acme_zone_od_take(ngx_http_acme_zone_t *z,
    u_char out[][NGX_HTTP_ACME_OD_NAME_LEN])
{
    ngx_uint_t  n;

    if (z->sh->nod == 0) {
        return 0;
    }

    ngx_shmtx_lock(&z->shpool->mutex);

    n = z->sh->nod;
    ngx_memcpy(out, z->sh->od, n * NGX_HTTP_ACME_OD_NAME_LEN);
    z->sh->nod = 0;

    ngx_shmtx_unlock(&z->shpool->mutex);

    return n;
}


ngx_uint_t
ngx_http_acme_zone_od_sweep(ngx_http_acme_zone_t *z, time_t now,
    ngx_uint_t max)
{
    ngx_uint_t                 n;
    ngx_rbtree_node_t         *node, *next, *root, *sentinel;
    ngx_http_acme_kv_t        *kv;
    ngx_http_acme_od_entry_t   e;

    n = 0;

    ngx_shmtx_lock(&z->shpool->mutex);

    sentinel = z->sh->rbtree.sentinel;
    root = z->sh->rbtree.root;

    if (root != sentinel) {

        for (node = ngx_rbtree_min(root, sentinel); node && n < max;
             node = next)
        {
            /* the successor stays the successor across a deletion */
            next = ngx_rbtree_next(&z->sh->rbtree, node);

            kv = (ngx_http_acme_kv_t *) &node->color;

            if (kv->kind != NGX_HTTP_ACME_KV_ONDEMAND) {
                continue;
            }

            ngx_http_acme_zone_od_read(kv, &e);

            if (e.state != NGX_HTTP_ACME_OD_REFUSED || e.until > now) {
                continue;
            }

            ngx_rbtree_delete(&z->sh->rbtree, node);
            ngx_slab_free_locked(z->shpool, node);
            n++;
        }
    }

    ngx_shmtx_unlock(&z->shpool->mutex);

    return n;
}


ngx_http_acme_od_slot_t *
ngx_http_acme_zone_od_slot(ngx_http_acme_zone_t *z, ngx_pid_t pid)
{
    ngx_uint_t                i;
    ngx_http_acme_od_slot_t  *sl;

    sl = z->sh->od_slots;

    for (i = 0; i < NGX_HTTP_ACME_OD_SLOTS - 1; i++) {
        if ((ngx_pid_t) sl[i].pid == pid) {
            return &sl[i];
        }
    }

    for (i = 0; i < NGX_HTTP_ACME_OD_SLOTS - 1; i++) {
        if (sl[i].pid == 0 && ngx_atomic_cmp_set(&sl[i].pid, 0, pid)) {
            return &sl[i];
        }
    }

    /* shared, never reclaimed */
    return &sl[NGX_HTTP_ACME_OD_SLOTS - 1];
}


void
ngx_http_acme_zone_od_reclaim(ngx_http_acme_zone_t *z)
{
    ngx_pid_t                 pid;
    ngx_uint_t                i;
    ngx_atomic_uint_t         held;
    ngx_http_acme_od_slot_t  *sl;

    sl = z->sh->od_slots;

    for (i = 0; i < NGX_HTTP_ACME_OD_SLOTS - 1; i++) {
        pid = (ngx_pid_t) sl[i].pid;

        if (pid == 0 || kill(pid, 0) == 0 || ngx_errno != NGX_ESRCH) {
            continue;
        }

        held = sl[i].held;
        sl[i].held = 0;

        if (held) {
            (void) ngx_atomic_fetch_add(&z->sh->od_waiting,
                                        -(ngx_atomic_int_t) held);
        }

        sl[i].pid = 0;
    }
}
