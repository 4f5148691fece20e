
/*
 * The status snapshot in a shared zone of its own.
 *
 * The zone is sized at configuration from what bounds the document: the
 * number of certificates, their names and identifiers, the issuers' URLs
 * and the longest error text the core keeps. One buffer takes all of it;
 * the runner (cache manager) rewrites it under the zone's lock only when a manager's
 * version moved, and acme_status handlers copy it under the same lock.
 * Nothing here blocks: no disk, only a memcpy under a spinlock.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include <jansson.h>

#include "ngx_http_acme_module.h"
#include "ngx_http_acme_status_snapshot.h"

#include "acme_err.h"


/*
 * Compact JSON bytes per certificate beyond its strings: keys,
 * punctuation, eight timestamps, state, reason, counters.
 */
#define NGX_HTTP_ACME_STATUS_CERT     1152
/* per issuer beyond its name (escaped): the counters, by kind of error */
#define NGX_HTTP_ACME_STATUS_ISSUER   512
/* per identifier beyond its name: quotes, "dns:", an error's keys and time */
#define NGX_HTTP_ACME_STATUS_IDENT    96
/* the progress text of a running order (the core's state_text) */
#define NGX_HTTP_ACME_STATUS_PROGRESS 320
/* a directory URL recorded by an earlier configuration */
#define NGX_HTTP_ACME_STATUS_URL      256
#define NGX_HTTP_ACME_STATUS_BASE     1024


typedef struct {
    size_t                      len;             /* 0: none yet */
    size_t                      cap;
    u_char                     *data;
} ngx_http_acme_status_sh_t;


typedef struct {
    ngx_http_acme_status_sh_t  *sh;
    ngx_slab_pool_t            *shpool;
    size_t                      need;            /* the estimate */
} ngx_http_acme_status_zone_t;


static ngx_int_t ngx_http_acme_status_zone_init(ngx_shm_zone_t *shm_zone,
    void *data);


/* an upper bound of the compact document for this configuration */

static size_t
ngx_http_acme_status_size(ngx_http_acme_main_conf_t *amcf)
{
    size_t                   size, url, iname, len;
    ngx_uint_t               i, j;
    ngx_http_acme_cert_t   **certs;
    ngx_http_acme_issuer_t  *iss;

    url = NGX_HTTP_ACME_STATUS_URL;
    iname = 0;

    iss = amcf->issuers.elts;

    for (i = 0; i < amcf->issuers.nelts; i++) {
        if (iss[i].directory_url) {
            len = ngx_strlen(iss[i].directory_url);
            url = ngx_max(url, len);
        }

        url = ngx_max(url, iss[i].uri.len);
        iname = ngx_max(iname, iss[i].name.len);
    }

    size = NGX_HTTP_ACME_STATUS_BASE;
    certs = amcf->certs.elts;

    for (i = 0; i < amcf->certs.nelts; i++) {

        /* error texts are at most ACME_ERR_MSG_MAX, escaping aside */

        size += NGX_HTTP_ACME_STATUS_CERT + ngx_strlen(certs[i]->name)
                + url + iname + NGX_HTTP_ACME_STATUS_PROGRESS
                + ACME_ERR_MSG_MAX;

        /* a manager lists each of its certificates' issuers once */

        size += certs[i]->nissuers
                * (NGX_HTTP_ACME_STATUS_ISSUER + 2 * iname);

        for (j = 0; j < certs[i]->nids; j++) {
            size += NGX_HTTP_ACME_STATUS_IDENT
                    + 2 * ngx_strlen(certs[i]->ids[j].value)
                    + ACME_ERR_MSG_MAX;
        }
    }

    if (amcf->od_certs.nelts) {
        /* on-demand certificates: one name each, and their counters */
        size += 2048 + amcf->od.max * (NGX_HTTP_ACME_STATUS_CERT + 2 * 256
                                       + url + iname
                                       + NGX_HTTP_ACME_STATUS_PROGRESS
                                       + NGX_HTTP_ACME_STATUS_IDENT + 512
                                       + 2 * ACME_ERR_MSG_MAX);
    }

    return size;
}


ngx_int_t
ngx_http_acme_status_zone_add(ngx_conf_t *cf,
    ngx_http_acme_main_conf_t *amcf)
{
    size_t                        need, size;
    ngx_str_t                     name;
    ngx_http_acme_status_zone_t  *z;

    need = ngx_http_acme_status_size(amcf);

    /* the slab pool's header and page table, a page for our header */
    size = ngx_align(need, ngx_pagesize) + need / 64 + 8 * ngx_pagesize;

    name.len = amcf->zone_name.len + sizeof("_status") - 1;
    name.data = ngx_pnalloc(cf->pool, name.len);
    if (name.data == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(name.data, "%V_status", &amcf->zone_name);

    amcf->status_zone = ngx_shared_memory_add(cf, &name, size,
                                              &ngx_http_acme_module);
    if (amcf->status_zone == NULL) {
        return NGX_ERROR;
    }

    if (amcf->status_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "acme_shared_zone: zone \"%V\" is already used",
                           &name);
        return NGX_ERROR;
    }

    z = ngx_pcalloc(cf->pool, sizeof(ngx_http_acme_status_zone_t));
    if (z == NULL) {
        return NGX_ERROR;
    }

    z->need = need;

    amcf->status_zone->init = ngx_http_acme_status_zone_init;
    amcf->status_zone->data = z;

    return NGX_OK;
}


/*
 * A reload that changes the size (certificates added) makes a new zone:
 * it starts with the old zone's document, still mapped in the master, so
 * acme_status does not go empty until the next runner writes.
 */

static void
ngx_http_acme_status_zone_inherit(ngx_http_acme_status_zone_t *z)
{
    ngx_uint_t                    i;
    ngx_shm_zone_t               *shm;
    ngx_list_part_t              *part;
    ngx_http_acme_status_sh_t    *osh;
    ngx_http_acme_status_zone_t  *oz;

    part = (ngx_list_part_t *) &ngx_cycle->shared_memory.part;
    shm = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return;
            }

            part = part->next;
            shm = part->elts;
            i = 0;
        }

        if (shm[i].tag != &ngx_http_acme_module
            || shm[i].init != ngx_http_acme_status_zone_init
            || shm[i].data == NULL)
        {
            continue;
        }

        oz = shm[i].data;
        osh = oz->sh;

        if (osh == NULL || osh->len == 0 || osh->len > z->sh->cap) {
            continue;
        }

        ngx_memcpy(z->sh->data, osh->data, osh->len);
        z->sh->len = osh->len;

        return;
    }
}


static ngx_int_t
ngx_http_acme_status_zone_init(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_acme_status_zone_t  *oz = data;

    size_t                        len;
    ngx_http_acme_status_zone_t  *z;

    z = shm_zone->data;

    if (oz) {
        z->sh = oz->sh;
        z->shpool = oz->shpool;
        return NGX_OK;
    }

    z->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        z->sh = z->shpool->data;
        return NGX_OK;
    }

    z->sh = ngx_slab_calloc(z->shpool, sizeof(ngx_http_acme_status_sh_t));
    if (z->sh == NULL) {
        return NGX_ERROR;
    }

    z->shpool->data = z->sh;

    len = sizeof(" in acme zone \"\"") + shm_zone->shm.name.len;

    z->shpool->log_ctx = ngx_slab_alloc(z->shpool, len);
    if (z->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(z->shpool->log_ctx, " in acme zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* every free page: the pages are touched only as the document grows */

    len = z->shpool->pfree << ngx_pagesize_shift;

    z->sh->data = ngx_slab_alloc(z->shpool, len);
    if (z->sh->data == NULL || len < z->need) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "acme: the status zone \"%V\" holds %uz of %uz bytes",
                      &shm_zone->shm.name, z->sh->data ? len : 0, z->need);
        return NGX_ERROR;
    }

    z->sh->cap = len;
    z->shpool->log_nomem = 0;

    ngx_http_acme_status_zone_inherit(z);

    return NGX_OK;
}


ngx_int_t
ngx_http_acme_status_zone_get(ngx_shm_zone_t *zone, ngx_pool_t *pool,
    ngx_str_t *json)
{
    u_char                       *p;
    ngx_http_acme_status_zone_t  *z;

    z = zone->data;

    ngx_shmtx_lock(&z->shpool->mutex);

    if (z->sh->len == 0) {
        ngx_shmtx_unlock(&z->shpool->mutex);
        return NGX_DECLINED;
    }

    p = ngx_pnalloc(pool, z->sh->len);
    if (p == NULL) {
        ngx_shmtx_unlock(&z->shpool->mutex);
        return NGX_ERROR;
    }

    ngx_memcpy(p, z->sh->data, z->sh->len);
    json->data = p;
    json->len = z->sh->len;

    ngx_shmtx_unlock(&z->shpool->mutex);

    return NGX_OK;
}


/* NGX_OK, NGX_DECLINED when larger than the zone */

static ngx_int_t
ngx_http_acme_status_zone_set(ngx_shm_zone_t *zone, u_char *json, size_t len)
{
    ngx_http_acme_status_zone_t  *z;

    z = zone->data;

    if (len == 0 || len > z->sh->cap) {
        return NGX_DECLINED;
    }

    ngx_shmtx_lock(&z->shpool->mutex);

    ngx_memcpy(z->sh->data, json, len);
    z->sh->len = len;

    ngx_shmtx_unlock(&z->shpool->mutex);

    return NGX_OK;
}


void
ngx_http_acme_snapshot_init(ngx_http_acme_snapshot_t *ss,
    ngx_shm_zone_t *zone)
{
    ngx_memzero(ss, sizeof(ngx_http_acme_snapshot_t));

    ss->zone = zone;
    ss->stale = 1;
}


void
ngx_http_acme_snapshot_touch(ngx_http_acme_snapshot_t *ss)
{
    ss->stale = 1;
}


void
ngx_http_acme_snapshot_free(ngx_http_acme_snapshot_t *ss)
{
    free(ss->last);
    ss->last = NULL;

    if (ss->on_demand) {
        json_decref(ss->on_demand);
        ss->on_demand = NULL;
    }
}


/* every manager's certificates in one compact document */

static char *
ngx_http_acme_snapshot_build(acme_manager_t **managers, ngx_uint_t n,
    json_t *on_demand)
{
    char        *s;
    size_t       i;
    json_t      *doc, *arr, *iarr, *one, *certs, *issuers;
    ngx_uint_t   m;

    doc = json_object();
    arr = json_array();
    iarr = json_array();

    if (doc == NULL || arr == NULL || iarr == NULL) {
        json_decref(doc);
        json_decref(arr);
        json_decref(iarr);
        return NULL;
    }

    for (m = 0; m < n; m++) {
        one = acme_manager_status(managers[m]);
        if (one == NULL) {
            continue;
        }

        certs = json_object_get(one, "certificates");

        for (i = 0; certs && i < json_array_size(certs); i++) {
            json_array_append(arr, json_array_get(certs, i));
        }

        /* the metrics' counters; an issuer in several managers is summed */

        issuers = json_object_get(one, "issuers");

        for (i = 0; issuers && i < json_array_size(issuers); i++) {
            json_array_append(iarr, json_array_get(issuers, i));
        }

        json_decref(one);
    }

    json_object_set_new(doc, "certificates", arr);
    json_object_set_new(doc, "issuers", iarr);
    json_object_set_new(doc, "leader_pid", json_integer(ngx_pid));

    if (on_demand) {
        json_object_set(doc, "on_demand", on_demand);
    }

    s = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(doc);

    return s;
}


/*
 * Rebuilding costs time linear in the certificates: only when a manager's
 * version moved (its progress texts included) or after a touch, never
 * just because time passed.
 */

void
ngx_http_acme_snapshot_update(ngx_http_acme_snapshot_t *ss,
    acme_manager_t **managers, ngx_uint_t n, ngx_log_t *log)
{
    char           *s;
    size_t          len;
    ngx_uint_t      m;
    unsigned long   version;

    version = 0;

    for (m = 0; m < n; m++) {
        version += acme_manager_version(managers[m]);
    }

    if (!ss->stale && version == ss->version) {
        return;
    }

    ss->stale = 0;
    ss->version = version;

    s = ngx_http_acme_snapshot_build(managers, n, ss->on_demand);
    if (s == NULL) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "acme: cannot build the status document");
        return;
    }

    if (ss->last && ngx_strcmp(ss->last, s) == 0) {
        free(s);
        return;
    }

    len = ngx_strlen(s);

    if (ngx_http_acme_status_zone_set(ss->zone, (u_char *) s, len)
        != NGX_OK)
    {
        /* only error texts beyond the estimate get here: say so once */

        if (len > ss->refused) {
            ngx_log_error(NGX_LOG_WARN, log, 0,
                          "acme: the status document (%uz bytes) does not "
                          "fit its zone \"%V\", status not updated",
                          len, &ss->zone->shm.name);
            ss->refused = len;
        }

        free(s);
        return;
    }

    ss->refused = 0;

    free(ss->last);
    ss->last = s;
}
