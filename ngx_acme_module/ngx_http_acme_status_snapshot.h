
/*
 * The status snapshot: the runner (cache manager) builds one compact JSON document of every
 * manager's certificates when something in it changed, and keeps it in a
 * shared zone of its own, sized from the configuration, that every worker's
 * acme_status handler copies from. It never takes room from challenges.
 */


#ifndef _NGX_HTTP_ACME_STATUS_SNAPSHOT_H_INCLUDED_
#define _NGX_HTTP_ACME_STATUS_SNAPSHOT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_acme_module.h"

#include "acme_manager.h"


/* the runner's side */

typedef struct {
    ngx_shm_zone_t             *zone;
    char                       *last;            /* written last, malloc'd */
    unsigned long               version;         /* managers' versions */
    size_t                      refused;         /* too large, logged */
    void                       *on_demand;       /* json_t *, owned */
    unsigned                    stale:1;         /* rebuild at the next tick */
} ngx_http_acme_snapshot_t;


/* at configuration: adds "<acme_shared_zone name>_status", sized for amcf */
ngx_int_t ngx_http_acme_status_zone_add(ngx_conf_t *cf,
    ngx_http_acme_main_conf_t *amcf);

/* NGX_OK with a copy in pool, NGX_DECLINED before the first snapshot */
ngx_int_t ngx_http_acme_status_zone_get(ngx_shm_zone_t *zone,
    ngx_pool_t *pool, ngx_str_t *json);

void ngx_http_acme_snapshot_init(ngx_http_acme_snapshot_t *ss,
    ngx_shm_zone_t *zone);
/* rebuilds and publishes when a manager changed or after a touch */
void ngx_http_acme_snapshot_update(ngx_http_acme_snapshot_t *ss,
    acme_manager_t **managers, ngx_uint_t n, ngx_log_t *log);
void ngx_http_acme_snapshot_touch(ngx_http_acme_snapshot_t *ss);
void ngx_http_acme_snapshot_free(ngx_http_acme_snapshot_t *ss);


#endif /* _NGX_HTTP_ACME_STATUS_SNAPSHOT_H_INCLUDED_ */
