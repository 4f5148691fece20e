
/*
 * The shared zone: what every worker must see.
 *
 *   - per certificate generation numbers ("g" entries) and a global
 *     generation that changes whenever any of them does, so a worker
 *     notices a renewal with one atomic read per handshake;
 *   - published challenges: "h" entries (HTTP-01, keyed by token, value
 *     "<identifier> <key authorization>") and "t" entries (TLS-ALPN-01,
 *     keyed by the SNI name, value "<dns|ip> <identifier> <key authz>");
 *   - the leader lock (pid and heartbeat) of the worker running the core;
 *   - renew requests and ARI check requests for the leader (the status
 *     snapshot has a zone of its own: ngx_http_acme_status_snapshot.c);
 *   - acme_storage: whether the leader misses the store's announcements
 *     (so a worker holds an HTTP-01 request for an unknown token) and a
 *     worker's request that it check the store at once;
 *   - whether the core has run since nginx started: the zone survives
 *     reloads, not a restart, so the first runner of a start (and only it)
 *     asks the CA's renewal information of every certificate again;
 *   - per certificate: when a renewal was last forced ("f" entries) and
 *     until when the CA asked to wait ("w", written by the leader), so a
 *     status handler refuses a forced renewal at once; when an ARI check
 *     was last requested ("a", "*" for all certificates);
 *   - on-demand names ("o" entries: queued, busy, ready with the store name,
 *     or refused until a time: the negative cache), the queue of names for
 *     the cache manager, the connections held and the workers' counters.
 */


#ifndef _NGX_HTTP_ACME_ZONE_H_INCLUDED_
#define _NGX_HTTP_ACME_ZONE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


#define NGX_HTTP_ACME_RENEW_MAX    16
#define NGX_HTTP_ACME_RENEW_LEN    256

/* kept for challenges, the leader lock and the renew queue */
#define NGX_HTTP_ACME_ZONE_RESERVE (64 * 1024)

#define NGX_HTTP_ACME_KV_GEN       'g'
#define NGX_HTTP_ACME_KV_HTTP01    'h'
#define NGX_HTTP_ACME_KV_TLSALPN   't'
#define NGX_HTTP_ACME_KV_FORCED    'f'   /* per certificate: last forced */
#define NGX_HTTP_ACME_KV_CA_WAIT   'w'   /* per certificate: CA's wait */
#define NGX_HTTP_ACME_KV_ARI       'a'   /* per certificate: last ARI check */
#define NGX_HTTP_ACME_KV_ONDEMAND  'o'   /* per on-demand name: its state */

/* on-demand requests from the workers to the runner */
#define NGX_HTTP_ACME_OD_QUEUE     64
#define NGX_HTTP_ACME_OD_NAME_LEN  256
#define NGX_HTTP_ACME_OD_STALE     60    /* s: a request not taken up */

/* an on-demand name's state, the value of its "o" entry */
#define NGX_HTTP_ACME_OD_QUEUED    'q'   /* a worker asked */
#define NGX_HTTP_ACME_OD_BUSY      'b'   /* the runner asks or orders */
#define NGX_HTTP_ACME_OD_READY     'r'   /* a certificate is stored */
#define NGX_HTTP_ACME_OD_REFUSED   'x'   /* until `until`, for `cause` */

/* what workers count, shown in the status document */
#define NGX_HTTP_ACME_OD_W_NOT_SERVER_NAME  0
#define NGX_HTTP_ACME_OD_W_INVALID_NAME     1
#define NGX_HTTP_ACME_OD_W_WAITING_CAP      2
#define NGX_HTTP_ACME_OD_W_TIMEOUT          3
#define NGX_HTTP_ACME_OD_W_WAITED           4   /* connections that waited */
#define NGX_HTTP_ACME_OD_W_CACHED_REFUSAL   5   /* refused from the cache */
#define NGX_HTTP_ACME_OD_W_N                6


/* a worker's share of od_waiting: given back by the runner if it dies */
#define NGX_HTTP_ACME_OD_SLOTS     128

typedef struct {
    ngx_atomic_t                pid;             /* 0: free */
    ngx_atomic_t                held;
} ngx_http_acme_od_slot_t;


typedef struct {
    u_char                      state;
    u_char                      cause;           /* acme_od_verdict_t */
    u_char                      tmpl;            /* in amcf->od_certs */
    time_t                      until;           /* refused until */
    time_t                      seen;            /* last handshake seen */
    u_char                      store[NGX_HTTP_ACME_OD_NAME_LEN];
} ngx_http_acme_od_entry_t;


typedef struct {
    ngx_rbtree_t                rbtree;
    ngx_rbtree_node_t           sentinel;

    ngx_atomic_t                gen;
    ngx_atomic_t                leader;          /* pid, 0: none */
    ngx_atomic_t                heartbeat;       /* ngx_time() */

    ngx_uint_t                  nrenew;
    u_char                      renew[NGX_HTTP_ACME_RENEW_MAX]
                                     [NGX_HTTP_ACME_RENEW_LEN];

    ngx_uint_t                  nari;            /* "*": every certificate */
    u_char                      ari[NGX_HTTP_ACME_RENEW_MAX]
                                   [NGX_HTTP_ACME_RENEW_LEN];

    ngx_atomic_t                started;         /* the core ran since
                                                    nginx started */
    ngx_atomic_t                unsubscribed;    /* acme_storage: the
                                                    leader misses the
                                                    announcements */
    ngx_atomic_t                resync;          /* a worker asks the
                                                    leader to check the
                                                    store now */
    ngx_atomic_t                od_waiting;      /* connections held now */
    ngx_http_acme_od_slot_t     od_slots[NGX_HTTP_ACME_OD_SLOTS];
    ngx_atomic_t                od_count[NGX_HTTP_ACME_OD_W_N];
    ngx_atomic_t                od_logged[NGX_HTTP_ACME_OD_W_N];
    ngx_uint_t                  nod;
    u_char                      od[NGX_HTTP_ACME_OD_QUEUE]
                                  [NGX_HTTP_ACME_OD_NAME_LEN];
} ngx_http_acme_sh_t;


typedef struct ngx_http_acme_zone_s  ngx_http_acme_zone_t;

struct ngx_http_acme_zone_s {
    ngx_http_acme_sh_t         *sh;
    ngx_slab_pool_t            *shpool;
};


ngx_int_t ngx_http_acme_zone_init(ngx_shm_zone_t *shm_zone, void *data);

/* NGX_OK, NGX_ERROR (zone full) */
ngx_int_t ngx_http_acme_zone_put(ngx_http_acme_zone_t *z, u_char kind,
    u_char *key, size_t klen, u_char *value, size_t vlen);
void ngx_http_acme_zone_delete(ngx_http_acme_zone_t *z, u_char kind,
    u_char *key, size_t klen);
/* NGX_OK with a copy in pool, NGX_DECLINED when absent, NGX_ERROR */
ngx_int_t ngx_http_acme_zone_get(ngx_http_acme_zone_t *z, u_char kind,
    u_char *key, size_t klen, ngx_pool_t *pool, ngx_str_t *value);

/* 1: keep the entry; called with the zone locked */
typedef ngx_int_t (*ngx_http_acme_zone_keep_pt)(void *ctx, u_char *key,
    size_t klen);

/*
 * Deletes the challenge entries of kind put before `before` that keep()
 * declines, and those past their time to live; returns how many.
 */
ngx_uint_t ngx_http_acme_zone_sweep(ngx_http_acme_zone_t *z, u_char kind,
    time_t before, ngx_http_acme_zone_keep_pt keep, void *ctx);

ngx_uint_t ngx_http_acme_zone_cert_gen(ngx_http_acme_zone_t *z,
    u_char *name, size_t len);
ngx_int_t ngx_http_acme_zone_cert_bump(ngx_http_acme_zone_t *z,
    u_char *name, size_t len);

size_t ngx_http_acme_zone_entry_size(size_t klen, size_t vlen);

/* NGX_OK, NGX_BUSY when the queue is full */
/*
 * Queues a forced renewal of the certificate with store name `name`:
 * NGX_OK; NGX_BUSY when the queue is full; NGX_DECLINED when the CA asked
 * to wait, NGX_AGAIN when the last forced renewal is less than `interval`
 * seconds ago (both with *until). One check and update under the zone's
 * lock: of two requests at once, one passes.
 */
ngx_int_t ngx_http_acme_zone_renew_request(ngx_http_acme_zone_t *z,
    ngx_str_t *name, time_t interval, time_t *until);
/* The leader: until when the CA asked to wait, 0: no more */
ngx_int_t ngx_http_acme_zone_set_ca_wait(ngx_http_acme_zone_t *z,
    u_char *name, size_t len, time_t until);
/* moves up to NGX_HTTP_ACME_RENEW_MAX requests into out; returns how many */
ngx_uint_t ngx_http_acme_zone_renew_take(ngx_http_acme_zone_t *z,
    u_char out[][NGX_HTTP_ACME_RENEW_LEN]);

/*
 * Queues an ARI check of the certificate with store name `name` ("*": of
 * every certificate): NGX_OK; NGX_BUSY when the queue is full; NGX_AGAIN
 * with *until when the last one for that name is less than `interval`
 * seconds ago.
 */
ngx_int_t ngx_http_acme_zone_ari_request(ngx_http_acme_zone_t *z,
    ngx_str_t *name, time_t interval, time_t *until);
ngx_uint_t ngx_http_acme_zone_ari_take(ngx_http_acme_zone_t *z,
    u_char out[][NGX_HTTP_ACME_RENEW_LEN]);

/*
 * On-demand names. A worker's request: NGX_OK with *e the name's state
 * (queued now when it had none, or its refusal had expired); NGX_BUSY when
 * the queue is full or the zone is; NGX_ERROR.
 */
ngx_int_t ngx_http_acme_zone_od_request(ngx_http_acme_zone_t *z,
    u_char *name, size_t len, ngx_uint_t tmpl, time_t now,
    ngx_http_acme_od_entry_t *e);
/* NGX_OK with *e, NGX_DECLINED when the name has no entry */
ngx_int_t ngx_http_acme_zone_od_get(ngx_http_acme_zone_t *z, u_char *name,
    size_t len, ngx_http_acme_od_entry_t *e);
ngx_int_t ngx_http_acme_zone_od_set(ngx_http_acme_zone_t *z, u_char *name,
    size_t len, ngx_http_acme_od_entry_t *e);
/* a worker saw a handshake for a ready name: seen = now, once a minute */
void ngx_http_acme_zone_od_seen(ngx_http_acme_zone_t *z, u_char *name,
    size_t len, time_t now);
/* a worker's slot (the last one is shared when all are taken) */
ngx_http_acme_od_slot_t *ngx_http_acme_zone_od_slot(ngx_http_acme_zone_t *z,
    ngx_pid_t pid);
/* the runner: the connections a dead worker held are no longer waiting */
void ngx_http_acme_zone_od_reclaim(ngx_http_acme_zone_t *z);
/* the runner: deletes up to max expired refusals; returns how many */
ngx_uint_t ngx_http_acme_zone_od_sweep(ngx_http_acme_zone_t *z, time_t now,
    ngx_uint_t max);
/* the runner: moves queued names into out; returns how many */
ngx_uint_t ngx_http_acme_zone_od_take(ngx_http_acme_zone_t *z,
    u_char out[][NGX_HTTP_ACME_OD_NAME_LEN]);


#endif /* _NGX_HTTP_ACME_ZONE_H_INCLUDED_ */
