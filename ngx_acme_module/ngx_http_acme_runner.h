
/*
 * Internal to the runner (the ACME core in the cache manager): the state
 * its files share. ngx_http_acme_runner.c starts and stops the core and
 * holds the lock, ngx_http_acme_host.c runs acme_loop on nginx events,
 * ngx_http_acme_publish.c puts challenges into the shared zone and
 * ngx_http_acme_follow.c follows the shared store (acme_storage),
 * ngx_http_acme_import.c takes over nginx-acme's state.
 */


#ifndef _NGX_HTTP_ACME_RUNNER_H_INCLUDED_
#define _NGX_HTTP_ACME_RUNNER_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_acme_module.h"
#include "ngx_http_acme_zone.h"
#include "ngx_http_acme_status_snapshot.h"

#include "acme_loop.h"
#include "acme_manager.h"
#include "acme_store.h"


typedef struct {
    ngx_cycle_t                 *cycle;
    ngx_log_t                   *log;
    ngx_http_acme_main_conf_t   *amcf;
    ngx_http_acme_zone_t        *zone;

    acme_loop_t                 *loop;
    acme_store_t               **stores;
    acme_store_t               **cache;          /* acme_storage: state_path */
    acme_lock_t                **held;           /* for acmectl: we manage
                                                    each state_path */
    ngx_uint_t                   held_logged;
    acme_manager_t             **managers;

    acme_store_watch_t          *watch;          /* certificate announcements */
    ngx_connection_t            *watch_conn;

    unsigned long long           store_gen;
    ngx_uint_t                   store_gen_known;
    ngx_uint_t                   store_down;
    ngx_uint_t                   store_slow;     /* a check timed out */
    time_t                       store_check_at;
    time_t                       store_backoff;
    ngx_uint_t                   nmanagers;

    ngx_event_t                  timer;

    ngx_connection_t           **conns;
    ngx_uint_t                   nconns;
    ngx_uint_t                   aconns;

    ngx_http_acme_snapshot_t     status;
    unsigned long                ca_wait_version;
    ngx_uint_t                   ca_wait_known;
    ngx_uint_t                   stopping;

    int                        **od_idx;         /* per on-demand template:
                                                    the manager's issuers */
    void                        *od;             /* on-demand names */
} ngx_http_acme_runner_t;


/* ngx_http_acme_host.c: acme_host_t */
void ngx_http_acme_host_log(void *data, int level, const char *msg);
void ngx_http_acme_host_timer_handler(ngx_event_t *ev);
void ngx_http_acme_host_set_timer(void *data, long ms);
int ngx_http_acme_host_watch(void *data, int fd, int events);
void ngx_http_acme_conn_forget(ngx_http_acme_runner_t *rn, ngx_uint_t i);

/* ngx_http_acme_resolver.c: acme_host_t.resolve (http's "resolver") */
void *ngx_http_acme_host_resolve(void *data, const char *name, void *token);
void ngx_http_acme_host_resolve_cancel(void *data, void *handle);
ngx_int_t ngx_http_acme_storage_resolve(ngx_http_acme_main_conf_t *amcf);

/* ngx_http_acme_publish.c: acme_challenge_host_t */
int ngx_http_acme_publish(void *data, const char *type,
    const acme_ident_t *id, const char *token, const char *key_authz,
    acme_err_t *err);
void ngx_http_acme_withdraw(void *data, const char *type,
    const acme_ident_t *id, const char *token);
void ngx_http_acme_challenge_message(ngx_http_acme_runner_t *rn, char *msg);
void ngx_http_acme_challenge_resync(ngx_http_acme_runner_t *rn);

/* ngx_http_acme_follow.c: acme_storage */
void ngx_http_acme_forged(void *data, const char *msg);
void ngx_http_acme_watch_open(ngx_http_acme_runner_t *rn);
void ngx_http_acme_watch_close(ngx_http_acme_runner_t *rn);
void ngx_http_acme_store_check(ngx_http_acme_runner_t *rn, time_t now);
void ngx_http_acme_cert_updated(void *data, const char *name);
ngx_int_t ngx_http_acme_cache_refresh(ngx_http_acme_runner_t *rn,
    ngx_uint_t g, const char *name);

/* ngx_http_acme_import.c: nginx-acme's state taken over */
ngx_int_t ngx_http_acme_import(ngx_http_acme_runner_t *rn, ngx_uint_t g);
/* ngx_http_acme_od_runner.c: on-demand names in the cache manager */
ngx_int_t ngx_http_acme_od_start(ngx_http_acme_runner_t *rn);
void ngx_http_acme_od_tick(ngx_http_acme_runner_t *rn);
void ngx_http_acme_od_stop(ngx_http_acme_runner_t *rn);
ngx_int_t ngx_http_acme_od_refresh(ngx_http_acme_runner_t *rn,
    const char *name);


#endif /* _NGX_HTTP_ACME_RUNNER_H_INCLUDED_ */
