
/*
 * On-demand names in the cache manager: the requests workers queue in the
 * shared zone are decided here (acme_ondemand: valid name, maximum count,
 * rate, the ask endpoint on the core's loop), allowed names become
 * certificates of the template's manager, and their state goes back into
 * the zone, where waiting connections and the certificate callback read
 * it. The names are kept in the store ("ondemand/names.json") with when
 * they were last seen, so a restart serves them without an order and a
 * name unseen for acme_on_demand unseen= is no longer renewed. Each
 * name says which issuer and key type it is for ("issuer", "key"), so a
 * restart gives it back to its own server's template: with acme_storage
 * the index is one for every state_path, without it one per state_path.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_http_acme_runner.h"

#include "acme_ondemand.h"
#include "acme_ondemand_cluster.h"


#define NGX_HTTP_ACME_OD_INDEX       "ondemand/names.json"
#define NGX_HTTP_ACME_OD_CHECK       60      /* s: unseen names, the index */
#define NGX_HTTP_ACME_OD_LOG_EVERY   60      /* s: one line per cause */
#define NGX_HTTP_ACME_OD_RATE_WAIT   60      /* s: a rate-limited name */
#define NGX_HTTP_ACME_OD_SEEN_SAVE   3600    /* s: seen kept this coarsely */
#define NGX_HTTP_ACME_OD_RECHECK     86400   /* s: asked again before renewal */
#define NGX_HTTP_ACME_OD_LOCK_TRIES  20      /* 5 ms apart: the cluster's */


typedef struct {
    char                        *name;            /* DNS name, malloc'd */
    const char                  *store;           /* the manager's */
    ngx_uint_t                   tmpl;            /* in amcf->od_certs */
    time_t                       seen;
    time_t                       saved_seen;
    time_t                       checked_for;     /* not_after re-checked */
    unsigned                     asking:1;
    unsigned                     ready:1;
    unsigned                     rechecking:1;
    unsigned                     recheck:1;       /* after a restart */
} ngx_http_acme_od_name_t;


typedef struct {
    acme_ondemand_t             *od;
    ngx_http_acme_od_name_t     *names;
    ngx_uint_t                   nnames;
    ngx_uint_t                   anames;
    ngx_uint_t                   counts[ACME_OD_NVERDICTS];
    time_t                       logged[ACME_OD_NVERDICTS];
    ngx_uint_t                   quiet[ACME_OD_NVERDICTS];
    time_t                       check_at;
    ngx_uint_t                   dirty;           /* index to save */
    ngx_uint_t                   sig;             /* status last built */
    char                       **dropped;         /* acme_storage: names */
    ngx_uint_t                   ndropped;        /* dropped since the */
    ngx_uint_t                   adropped;        /* index was saved */
} ngx_http_acme_od_run_t;


static ngx_http_acme_od_name_t *
ngx_http_acme_od_find(ngx_http_acme_od_run_t *od, const char *name)
{
    ngx_uint_t  i;

    for (i = 0; i < od->nnames; i++) {
        if (ngx_strcmp(od->names[i].name, name) == 0) {
            return &od->names[i];
        }
    }

    return NULL;
}


static ngx_http_acme_od_name_t *
ngx_http_acme_od_add(ngx_http_acme_od_run_t *od, const char *name,
    ngx_uint_t tmpl)
{
    ngx_http_acme_od_name_t  *n;

    if (od->nnames == od->anames) {
        n = realloc(od->names, (od->anames * 2 + 8) * sizeof(*n));
        if (n == NULL) {
            return NULL;
        }

        od->names = n;
        od->anames = od->anames * 2 + 8;
    }

    n = &od->names[od->nnames];
    ngx_memzero(n, sizeof(*n));

    n->name = strdup(name);
    if (n->name == NULL) {
        return NULL;
    }

    n->tmpl = tmpl;
    n->seen = ngx_time();
    od->nnames++;

    return n;
}


static void
ngx_http_acme_od_dropped(ngx_http_acme_od_run_t *od, const char *name)
{
    char  **d, *copy;

    if (od->ndropped == od->adropped) {
        d = realloc(od->dropped, (od->adropped * 2 + 8) * sizeof(char *));
        if (d == NULL) {
            return;
        }

        od->dropped = d;
        od->adropped = od->adropped * 2 + 8;
    }

    copy = strdup(name);
    if (copy != NULL) {
        od->dropped[od->ndropped++] = copy;
    }
}


static ngx_uint_t
ngx_http_acme_od_was_dropped(ngx_http_acme_od_run_t *od, const char *name)
{
    ngx_uint_t  i;

    for (i = 0; i < od->ndropped; i++) {
        if (ngx_strcmp(od->dropped[i], name) == 0) {
            return 1;
        }
    }

    return 0;
}


static void
ngx_http_acme_od_dropped_clear(ngx_http_acme_od_run_t *od)
{
    ngx_uint_t  i;

    for (i = 0; i < od->ndropped; i++) {
        free(od->dropped[i]);
    }

    od->ndropped = 0;
}


static void
ngx_http_acme_od_forget(ngx_http_acme_runner_t *rn, ngx_http_acme_od_name_t *n)
{
    ngx_http_acme_od_run_t  *od = rn->od;

    ngx_uint_t               i;
    ngx_http_acme_cert_t   **tmpls;

    if (n->store) {
        tmpls = rn->amcf->od_certs.elts;
        (void) acme_manager_remove_cert(rn->managers[tmpls[n->tmpl]->store],
                                        n->store);

        /* the shared index keeps other nodes' names, not this one */
        ngx_http_acme_od_dropped(od, n->name);
    }

    free(n->name);

    i = n - od->names;
    ngx_memmove(n, n + 1, (od->nnames - i - 1) * sizeof(*n));
    od->nnames--;
    od->dirty = 1;
}


static ngx_uint_t
ngx_http_acme_od_managed(ngx_http_acme_od_run_t *od)
{
    ngx_uint_t  i, k;

    for (i = 0, k = 0; i < od->nnames; i++) {
        k += !od->names[i].asking;
    }

    return k;
}


static void
ngx_http_acme_od_publish(ngx_http_acme_runner_t *rn, const char *name,
    u_char state, acme_od_verdict_t cause, time_t until, const char *store,
    time_t seen)
{
    ngx_http_acme_od_entry_t  e;

    ngx_memzero(&e, sizeof(e));
    e.state = state;
    e.cause = (u_char) cause;
    e.until = until;
    e.seen = seen;

    if (store) {
        ngx_cpystrn(e.store, (u_char *) store, sizeof(e.store));
    }

    if (ngx_http_acme_zone_od_set(rn->zone, (u_char *) name,
                                  ngx_strlen(name), &e)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                      "acme: the shared zone is full, the on-demand state "
                      "of \"%s\" not published", name);
    }
}


/* one line per cause and minute, whatever the number of names */

static void
ngx_http_acme_od_refuse(ngx_http_acme_runner_t *rn, const char *name,
    acme_od_verdict_t v, const char *detail)
{
    ngx_http_acme_od_run_t  *od = rn->od;

    time_t  now, wait;

    now = ngx_time();
    od->counts[v]++;

    wait = rn->amcf->od.refuse_time;

    if (v == ACME_OD_RATE_LIMITED || v == ACME_OD_ASK_FAILED) {
        wait = ngx_min(wait, NGX_HTTP_ACME_OD_RATE_WAIT);
    }

    ngx_http_acme_od_publish(rn, name, NGX_HTTP_ACME_OD_REFUSED, v,
                             now + wait, NULL, 0);

    if (now - od->logged[v] < NGX_HTTP_ACME_OD_LOG_EVERY) {
        od->quiet[v]++;
        return;
    }

    ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                  "acme: on-demand certificate for \"%s\" refused (%s): %s; "
                  "refused again for %T s%s", name, acme_od_verdict_name(v),
                  detail, wait,
                  od->quiet[v] ? ", names refused for this cause since "
                                 "the last line are counted in the status"
                               : "");

    od->logged[v] = now;
    od->quiet[v] = 0;
}


static ngx_int_t
ngx_http_acme_od_manage(ngx_http_acme_runner_t *rn,
    ngx_http_acme_od_name_t *n)
{
    acme_err_t               err;
    acme_ident_t             id;
    ngx_http_acme_cert_t    *tmpl;

    tmpl = ((ngx_http_acme_cert_t **) rn->amcf->od_certs.elts)[n->tmpl];

    id.type = ACME_IDENT_DNS;
    id.value = n->name;

    n->store = acme_manager_add_cert(rn->managers[tmpl->store], &id, 1,
                                     &tmpl->keyspec, rn->od_idx[n->tmpl],
                                     tmpl->nissuers, &err);
    if (n->store == NULL) {
        ngx_log_error(NGX_LOG_ERR, rn->log, 0,
                      "acme: on-demand \"%s\": %s", n->name, err.msg);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_acme_od_allowed(ngx_http_acme_runner_t *rn,
    ngx_http_acme_od_name_t *n, const char *detail)
{
    ngx_http_acme_od_run_t  *od = rn->od;

    n->asking = 0;
    od->counts[ACME_OD_ALLOWED]++;

    if (ngx_http_acme_od_manage(rn, n) != NGX_OK) {
        ngx_http_acme_od_refuse(rn, n->name, ACME_OD_ORDER_FAILED,
                                "cannot add the certificate");
        ngx_http_acme_od_forget(rn, n);
        return;
    }

    ngx_log_error(NGX_LOG_NOTICE, rn->log, 0,
                  "acme: on-demand certificate for \"%s\" allowed%s%s",
                  n->name, detail ? ": " : "", detail ? detail : "");

    od->dirty = 1;

    ngx_http_acme_od_publish(rn, n->name, NGX_HTTP_ACME_OD_BUSY, 0, 0, NULL,
                             n->seen);
}


static void
ngx_http_acme_od_asked(void *arg, const char *name, acme_od_verdict_t v,
    const char *detail)
{
    ngx_http_acme_runner_t  *rn = arg;

    ngx_http_acme_od_name_t  *n;

    n = ngx_http_acme_od_find(rn->od, name);
    if (n == NULL) {
        return;
    }

    if (n->rechecking) {
        /* a name with a certificate: only a refusal stops its renewal */
        n->rechecking = 0;

        if (v == ACME_OD_ASK_REFUSED) {
            ngx_http_acme_od_refuse(rn, name, v, detail);
            ngx_log_error(NGX_LOG_NOTICE, rn->log, 0,
                          "acme: on-demand certificate for \"%s\": no "
                          "longer allowed, not renewed", name);
            ngx_http_acme_od_forget(rn, n);
        }

        return;
    }

    if (!n->asking) {
        return;
    }

    if (v == ACME_OD_ALLOWED) {
        ngx_http_acme_od_allowed(rn, n, detail);
        return;
    }

    ngx_http_acme_od_refuse(rn, name, v, detail);
    ngx_http_acme_od_forget(rn, n);
}


/*
 * acme_storage: max and rate for the whole cluster, counted in the store
 * (the cache manager serves no connection: a few ms of waiting for
 * another node's update are fine here); the node's own limits decide when
 * the store does not answer
 */

static ngx_int_t
ngx_http_acme_od_cluster(ngx_http_acme_runner_t *rn,
    ngx_http_acme_od_name_t *n, acme_od_verdict_t *v)
{
    ngx_http_acme_od_run_t  *od = rn->od;

    int                     rc;
    ngx_uint_t              try;
    acme_err_t              err;
    acme_store_t           *st;
    ngx_http_acme_cert_t  **tmpls;

    tmpls = rn->amcf->od_certs.elts;
    st = rn->stores[tmpls[n->tmpl]->store];

    for (try = 0; try < NGX_HTTP_ACME_OD_LOCK_TRIES; try++) {
        rc = acme_ondemand_cluster_admit(st, acme_ondemand_conf(od->od),
                                         n->name, ngx_time(), v, &err);
        if (rc == 0) {
            return NGX_OK;
        }

        if (rc < 0) {
            ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                          "acme: on-demand \"%s\": the cluster's limits "
                          "not checked, this node's apply: %s", n->name,
                          err.msg);
            return NGX_DECLINED;
        }

        ngx_msleep(5);
    }

    ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                  "acme: on-demand \"%s\": the cluster's limits are being "
                  "updated by another node, this node's apply", n->name);

    return NGX_DECLINED;
}


static void
ngx_http_acme_od_request(ngx_http_acme_runner_t *rn, u_char *name)
{
    ngx_http_acme_od_run_t  *od = rn->od;

    int                        rc;
    size_t                     len;
    acme_od_verdict_t          v;
    ngx_http_acme_od_name_t   *n;
    ngx_http_acme_od_entry_t   e;

    len = ngx_strlen(name);

    if (ngx_http_acme_zone_od_get(rn->zone, name, len, &e) != NGX_OK
        || e.state != NGX_HTTP_ACME_OD_QUEUED
        || e.tmpl >= rn->amcf->od_certs.nelts)
    {
        return;
    }

    n = ngx_http_acme_od_find(od, (char *) name);

    if (n) {
        /* known already: a restart's zone, or a request that raced */
        ngx_http_acme_od_publish(rn, n->name,
                                 n->ready ? NGX_HTTP_ACME_OD_READY
                                          : NGX_HTTP_ACME_OD_BUSY,
                                 0, 0, n->store, n->seen);
        return;
    }

    n = ngx_http_acme_od_add(od, (char *) name, e.tmpl);
    if (n == NULL) {
        ngx_http_acme_od_refuse(rn, (char *) name, ACME_OD_ORDER_FAILED,
                                "out of memory");
        return;
    }

    n->asking = 1;

    if (rn->cache && ngx_http_acme_od_cluster(rn, n, &v) == NGX_OK
        && v != ACME_OD_ALLOWED)
    {
        ngx_http_acme_od_refuse(rn, n->name, v,
                                v == ACME_OD_MAX_COUNT
                                ? "as many on-demand certificates in the "
                                  "cluster as max= allows"
                                : "as many new orders in the cluster in the "
                                  "last minute as rate= allows");
        ngx_http_acme_od_forget(rn, n);
        return;
    }

    rc = acme_ondemand_decide(od->od, n->name, ngx_http_acme_od_managed(od),
                              ngx_http_acme_od_asked, rn, &v);
    if (rc == 1) {
        ngx_http_acme_od_publish(rn, n->name, NGX_HTTP_ACME_OD_BUSY, 0, 0,
                                 NULL, 0);
        return;
    }

    if (v == ACME_OD_ALLOWED) {
        ngx_http_acme_od_allowed(rn, n, NULL);
        return;
    }

    ngx_http_acme_od_refuse(rn, n->name, v,
                            v == ACME_OD_MAX_COUNT
                            ? "as many on-demand certificates as max= allows"
                            : v == ACME_OD_RATE_LIMITED
                            ? "as many new orders in the last minute as "
                              "rate= allows"
                            : "not a DNS name a certificate can be for");
    ngx_http_acme_od_forget(rn, n);
}


/*
 * acme_storage: the index is the cluster's, each node writes it; names
 * other nodes keep (not unseen, not dropped here) stay in it, so that a
 * restart of any node takes them all up
 */

static void
ngx_http_acme_od_merge(ngx_http_acme_runner_t *rn, json_t *arr)
{
    ngx_http_acme_od_run_t  *od = rn->od;

    char        *data;
    size_t       len, i;
    time_t       seen, now;
    json_t      *doc, *one;
    acme_err_t   err;
    const char  *name;

    ngx_http_acme_od_name_t  *n;

    if (acme_store_get(rn->stores[0], NGX_HTTP_ACME_OD_INDEX, &data, &len,
                       &err)
        != 0)
    {
        return;
    }

    doc = json_loadb(data, len, 0, NULL);
    free(data);

    now = ngx_time();

    for (i = 0; i < json_array_size(json_object_get(doc, "names")); i++) {
        one = json_array_get(json_object_get(doc, "names"), i);
        name = json_string_value(json_object_get(one, "name"));
        seen = (time_t) json_integer_value(json_object_get(one, "seen"));

        n = name ? ngx_http_acme_od_find(od, name) : NULL;

        /* a name being asked about here is not saved by us (yet) */
        if (name == NULL || (n && !n->asking)
            || ngx_http_acme_od_was_dropped(od, name)
            || now - seen > rn->amcf->od.unseen)
        {
            continue;
        }

        /* as written: its issuer and key stay the other node's */
        json_array_append(arr, one);
    }

    json_decref(doc);
}


/* a name's entry: which template it is for, as a restart finds it again */

static json_t *
ngx_http_acme_od_entry(ngx_http_acme_runner_t *rn, ngx_http_acme_od_name_t *n)
{
    char                     key[32];
    ngx_http_acme_cert_t    *tmpl;
    ngx_http_acme_issuer_t  *iss;

    tmpl = ((ngx_http_acme_cert_t **) rn->amcf->od_certs.elts)[n->tmpl];
    iss = &((ngx_http_acme_issuer_t *) rn->amcf->issuers.elts)
                                                          [tmpl->issuers[0]];

    return json_pack("{s:s, s:I, s:s#, s:s}", "name", n->name,
                     "seen", (json_int_t) n->seen,
                     "issuer", (char *) iss->name.data, (int) iss->name.len,
                     "key", acme_keyspec_str(&tmpl->keyspec, key,
                                             sizeof(key)));
}


/*
 * the template an entry of the index is for: the one with its issuer and
 * key type, else its issuer; else (an entry of an older version, an
 * issuer this node lacks, or an Apache node's ACMECA) the first template
 * whose server_name lists the name, else the first one; without
 * acme_storage only the templates of store g, the state_path it was in
 */

static ngx_int_t
ngx_http_acme_od_tmpl_of(ngx_http_acme_runner_t *rn, json_t *one,
    ngx_uint_t g, ngx_uint_t *tmpl)
{
    char                     buf[32];
    size_t                   len;
    ngx_uint_t               t, pass;
    const char              *issuer, *key, *name;
    ngx_http_acme_cert_t   **tmpls;
    ngx_http_acme_issuer_t  *iss;

    tmpls = rn->amcf->od_certs.elts;
    iss = rn->amcf->issuers.elts;

    issuer = json_string_value(json_object_get(one, "issuer"));
    key = json_string_value(json_object_get(one, "key"));

    for (pass = 0; issuer && pass < 2; pass++) {
        for (t = 0; t < rn->amcf->od_certs.nelts; t++) {
            len = iss[tmpls[t]->issuers[0]].name.len;

            if ((g != NGX_CONF_UNSET_UINT && tmpls[t]->store != g)
                || len != ngx_strlen(issuer)
                || ngx_strncmp(iss[tmpls[t]->issuers[0]].name.data, issuer,
                               len)
                   != 0)
            {
                continue;
            }

            (void) acme_keyspec_str(&tmpls[t]->keyspec, buf, sizeof(buf));

            if (pass == 1 || (key && ngx_strcmp(key, buf) == 0)) {
                *tmpl = t;
                return NGX_OK;
            }
        }
    }

    name = json_string_value(json_object_get(one, "name"));

    for (pass = 0; pass < 2; pass++) {
        for (t = 0; t < rn->amcf->od_certs.nelts; t++) {
            if ((g == NGX_CONF_UNSET_UINT || tmpls[t]->store == g)
                && (pass == 1
                    || (tmpls[t]->cscf
                        && ngx_http_acme_od_listed(tmpls[t]->cscf,
                                                   (u_char *) name,
                                                   ngx_strlen(name)))))
            {
                *tmpl = t;
                return NGX_OK;
            }
        }
    }

    return NGX_DECLINED;
}


/*
 * the index in the store: names, when they were last seen, their issuer
 * and key type; acme_storage: one for every state_path (one key space)
 */

static void
ngx_http_acme_od_save(ngx_http_acme_runner_t *rn)
{
    ngx_http_acme_od_run_t  *od = rn->od;

    char                   *s;
    json_t                 *doc, *arr;
    ngx_uint_t              g, i, nstores;
    acme_err_t              err;
    ngx_http_acme_cert_t  **tmpls;

    tmpls = rn->amcf->od_certs.elts;
    nstores = rn->cache ? 1 : rn->nmanagers;

    for (g = 0; g < nstores; g++) {
        doc = json_object();
        arr = json_array();

        if (rn->cache) {
            ngx_http_acme_od_merge(rn, arr);
        }

        for (i = 0; i < od->nnames; i++) {
            if (od->names[i].asking
                || (rn->cache == NULL && tmpls[od->names[i].tmpl]->store != g))
            {
                continue;
            }

            json_array_append_new(arr,
                                  ngx_http_acme_od_entry(rn, &od->names[i]));
            od->names[i].saved_seen = od->names[i].seen;
        }

        json_object_set_new(doc, "names", arr);
        s = json_dumps(doc, JSON_COMPACT);
        json_decref(doc);

        if (s == NULL
            || acme_store_put(rn->stores[g], NGX_HTTP_ACME_OD_INDEX, s,
                              ngx_strlen(s), 0, &err)
               != 0)
        {
            ngx_log_error(NGX_LOG_WARN, rn->log, 0,
                          "acme: cannot store the on-demand names: %s",
                          s ? err.msg : "out of memory");
        }

        free(s);
    }

    ngx_http_acme_od_dropped_clear(od);
    od->dirty = 0;
}


static void
ngx_http_acme_od_load(ngx_http_acme_runner_t *rn)
{
    ngx_http_acme_od_run_t  *od = rn->od;

    char                     *data;
    size_t                    len, i;
    time_t                    seen, now;
    json_t                   *doc, *arr, *one;
    ngx_uint_t                g, t, nstores;
    acme_err_t                err;
    const char               *name;
    ngx_http_acme_od_name_t  *n;

    now = ngx_time();
    nstores = rn->cache ? 1 : rn->nmanagers;

    for (g = 0; g < nstores; g++) {

        if (acme_store_get(rn->stores[g], NGX_HTTP_ACME_OD_INDEX, &data, &len,
                           &err)
            != 0)
        {
            continue;
        }

        doc = json_loadb(data, len, 0, NULL);
        free(data);

        arr = json_object_get(doc, "names");

        for (i = 0; i < json_array_size(arr); i++) {
            one = json_array_get(arr, i);
            name = json_string_value(json_object_get(one, "name"));
            seen = (time_t) json_integer_value(json_object_get(one, "seen"));

            if (name == NULL || ngx_http_acme_od_find(od, name)
                || ngx_http_acme_od_tmpl_of(rn, one,
                                            rn->cache ? NGX_CONF_UNSET_UINT
                                                      : g,
                                            &t)
                   != NGX_OK)
            {
                continue;
            }

            if (now - seen > rn->amcf->od.unseen) {
                ngx_log_error(NGX_LOG_NOTICE, rn->log, 0,
                              "acme: on-demand certificate for \"%s\": not "
                              "seen for %T days, no longer renewed", name,
                              (now - seen) / 86400);
                od->dirty = 1;
                continue;
            }

            n = ngx_http_acme_od_add(od, name, t);
            if (n == NULL) {
                break;
            }

            n->seen = seen;
            n->saved_seen = seen;
            n->recheck = 1;

            if (ngx_http_acme_od_manage(rn, n) != NGX_OK) {
                ngx_http_acme_od_forget(rn, n);
            }
        }

        json_decref(doc);
    }
}


/* issued, failed, unseen: what each managed name became */

static void
ngx_http_acme_od_follow(ngx_http_acme_runner_t *rn, time_t now)
{
    ngx_http_acme_od_run_t  *od = rn->od;

    ngx_uint_t                 i;
    ngx_http_acme_cert_t     **tmpls;
    ngx_http_acme_od_name_t   *n;
    ngx_http_acme_od_entry_t   e;
    acme_manager_cert_info_t   info;

    tmpls = rn->amcf->od_certs.elts;

    for (i = 0; i < od->nnames; /* void */) {
        n = &od->names[i];

        if (n->asking || n->store == NULL
            || acme_manager_cert_info(rn->managers[tmpls[n->tmpl]->store],
                                      n->store, &info)
               != 0)
        {
            i++;
            continue;
        }

        if (!n->ready && info.not_after > now && !info.issuing) {
            /*
             * acme_storage: a certificate another node issued is valid
             * here without cert_updated; the workers read the local cache
             */
            if (rn->cache
                && ngx_http_acme_cache_refresh(rn, tmpls[n->tmpl]->store,
                                               n->store)
                   != NGX_OK)
            {
                i++;
                continue;
            }

            n->ready = 1;
            ngx_http_acme_od_publish(rn, n->name, NGX_HTTP_ACME_OD_READY, 0,
                                     0, n->store, n->seen);
            i++;
            continue;
        }

        if (n->ready && rn->amcf->od.ask && !n->rechecking
            && (n->recheck
                || (info.renew_at - now < NGX_HTTP_ACME_OD_RECHECK
                    && n->checked_for != info.not_after)))
        {
            /* permission is asked again after a restart and before renewal */
            n->recheck = 0;
            n->checked_for = info.not_after;

            if (acme_ondemand_ask(od->od, n->name, ngx_http_acme_od_asked, rn)
                == 0)
            {
                n->rechecking = 1;
            }
        }

        if (!n->ready && info.failures && !info.issuing) {
            ngx_http_acme_od_refuse(rn, n->name, ACME_OD_ORDER_FAILED,
                                    info.last_error ? info.last_error
                                                    : "the order failed");
            ngx_http_acme_od_forget(rn, n);
            continue;
        }

        if (n->ready && now >= od->check_at) {
            if (ngx_http_acme_zone_od_get(rn->zone, (u_char *) n->name,
                                          ngx_strlen(n->name), &e)
                == NGX_OK
                && e.seen > n->seen)
            {
                n->seen = e.seen;
            }

            if (now - n->seen > rn->amcf->od.unseen) {
                ngx_log_error(NGX_LOG_NOTICE, rn->log, 0,
                              "acme: on-demand certificate for \"%s\": not "
                              "seen for %T s, no longer renewed", n->name,
                              now - n->seen);
                ngx_http_acme_zone_delete(rn->zone, NGX_HTTP_ACME_KV_ONDEMAND,
                                          (u_char *) n->name,
                                          ngx_strlen(n->name));
                ngx_http_acme_od_forget(rn, n);
                continue;
            }

            if (n->seen - n->saved_seen >= NGX_HTTP_ACME_OD_SEEN_SAVE) {
                od->dirty = 1;
            }
        }

        i++;
    }

    if (now >= od->check_at) {
        ngx_http_acme_zone_od_reclaim(rn->zone);

        /* the negative cache: expired refusals leave the zone */
        (void) ngx_http_acme_zone_od_sweep(rn->zone, now, 1000);

        od->check_at = now + ngx_min(NGX_HTTP_ACME_OD_CHECK,
                                     ngx_max(rn->amcf->od.unseen / 4, 1));
    }
}


static void
ngx_http_acme_od_status(ngx_http_acme_runner_t *rn)
{
    ngx_http_acme_od_run_t  *od = rn->od;

    json_t                   *doc, *lim, *ref;
    ngx_uint_t                i, sig, ready, busy, asking, w[8];
    ngx_http_acme_sh_t       *sh;
    ngx_http_acme_od_conf_t  *c;

    sh = rn->zone->sh;
    c = &rn->amcf->od;

    ready = 0;
    busy = 0;
    asking = 0;

    for (i = 0; i < od->nnames; i++) {
        if (od->names[i].asking) {
            asking++;

        } else if (od->names[i].ready) {
            ready++;

        } else {
            busy++;
        }
    }

    for (i = 0; i < NGX_HTTP_ACME_OD_W_N; i++) {
        w[i] = sh->od_count[i];
    }

    sig = ready * 7 + busy * 131 + asking * 1031 + sh->od_waiting * 65537;

    for (i = 0; i < ACME_OD_NVERDICTS; i++) {
        sig = sig * 31 + od->counts[i];
    }

    for (i = 0; i < NGX_HTTP_ACME_OD_W_N; i++) {
        sig = sig * 37 + w[i];
    }

    if (rn->status.on_demand && sig == od->sig) {
        return;
    }

    od->sig = sig;

    lim = json_pack("{s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s}",
                    "ask", c->ask != NULL,
                    "ask_timeout_ms", (json_int_t) c->ask_timeout,
                    "max", (json_int_t) c->max,
                    "rate_per_minute", (json_int_t) c->rate,
                    "refuse_time", (json_int_t) c->refuse_time,
                    "wait_ms", (json_int_t) c->wait,
                    "waiting", (json_int_t) c->waiting,
                    "unseen", (json_int_t) c->unseen,
                    "fail", c->fail_close ? "close" : "fallback");

    ref = json_object();

    for (i = 1; i < ACME_OD_NVERDICTS; i++) {
        json_object_set_new(ref, acme_od_verdict_name(i),
                            json_integer(od->counts[i]));
    }

    json_object_set_new(ref, "not_server_name",
        json_integer(w[NGX_HTTP_ACME_OD_W_NOT_SERVER_NAME]));
    json_object_set_new(ref, "invalid_name",
        json_integer(w[NGX_HTTP_ACME_OD_W_INVALID_NAME]
                     + od->counts[ACME_OD_INVALID_NAME]));
    json_object_set_new(ref, "waiting_cap",
        json_integer(w[NGX_HTTP_ACME_OD_W_WAITING_CAP]));
    json_object_set_new(ref, "timeout",
        json_integer(w[NGX_HTTP_ACME_OD_W_TIMEOUT]));

    doc = json_pack("{s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o}",
                    "limits", lim,
                    "certificates", (json_int_t) ready,
                    "ordering", (json_int_t) busy,
                    "asking", (json_int_t) asking,
                    "waiting", (json_int_t) sh->od_waiting,
                    "waited", (json_int_t) w[NGX_HTTP_ACME_OD_W_WAITED],
                    "allowed", (json_int_t) od->counts[ACME_OD_ALLOWED],
                    "refused_from_cache",
                    (json_int_t) w[NGX_HTTP_ACME_OD_W_CACHED_REFUSAL],
                    "refused", ref);

    if (rn->status.on_demand) {
        json_decref(rn->status.on_demand);
    }

    rn->status.on_demand = doc;
    ngx_http_acme_snapshot_touch(&rn->status);
}


/* acme_storage: an announcement (or the periodic check) for on-demand names */

ngx_int_t
ngx_http_acme_od_refresh(ngx_http_acme_runner_t *rn, const char *name)
{
    ngx_http_acme_od_run_t  *od = rn->od;

    ngx_uint_t               i;
    ngx_http_acme_cert_t   **tmpls;
    ngx_http_acme_od_name_t  *n;

    if (od == NULL || rn->cache == NULL) {
        return NGX_OK;
    }

    tmpls = rn->amcf->od_certs.elts;

    for (i = 0; i < od->nnames; i++) {
        n = &od->names[i];

        if (n->store == NULL
            || (name != NULL && ngx_strcmp(n->store, name) != 0))
        {
            continue;
        }

        if (!n->ready) {
            /*
             * another node issued it while ours found the store's lock
             * taken: the manager looks now, not after its busy retry;
             * ngx_http_acme_od_follow() then copies it and says ready
             */
            if (name != NULL) {
                (void) acme_manager_reload_cert(
                                   rn->managers[tmpls[n->tmpl]->store],
                                   n->store);
            }

            continue;
        }

        if (ngx_http_acme_cache_refresh(rn, tmpls[n->tmpl]->store, n->store)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_acme_od_start(ngx_http_acme_runner_t *rn)
{
    acme_err_t               err;
    ngx_http_acme_od_run_t  *od;
    acme_ondemand_conf_t     conf;

    od = ngx_calloc(sizeof(ngx_http_acme_od_run_t), rn->log);
    if (od == NULL) {
        return NGX_ERROR;
    }

    rn->od = od;

    ngx_memzero(&conf, sizeof(conf));
    conf.ask_url = rn->amcf->od.ask;
    conf.ask_timeout_ms = rn->amcf->od.ask_timeout;
    conf.max_certs = rn->amcf->od.max;
    conf.rate_per_min = rn->amcf->od.rate;

    od->od = acme_ondemand_new(rn->loop, &conf, &err);
    if (od->od == NULL) {
        ngx_log_error(NGX_LOG_ERR, rn->log, 0, "acme: on-demand: %s",
                      err.msg);
        return NGX_ERROR;
    }

    ngx_http_acme_od_load(rn);
    ngx_http_acme_od_follow(rn, ngx_time());

    if (od->dirty) {
        ngx_http_acme_od_save(rn);
    }

    ngx_http_acme_od_status(rn);

    return NGX_OK;
}


void
ngx_http_acme_od_tick(ngx_http_acme_runner_t *rn)
{
    ngx_http_acme_od_run_t  *od = rn->od;

    u_char      req[NGX_HTTP_ACME_OD_QUEUE][NGX_HTTP_ACME_OD_NAME_LEN];
    ngx_uint_t  i, n;

    if (od == NULL) {
        return;
    }

    n = ngx_http_acme_zone_od_take(rn->zone, req);

    for (i = 0; i < n; i++) {
        ngx_http_acme_od_request(rn, req[i]);
    }

    ngx_http_acme_od_follow(rn, ngx_time());

    if (od->dirty) {
        ngx_http_acme_od_save(rn);
    }

    ngx_http_acme_od_status(rn);
}


void
ngx_http_acme_od_stop(ngx_http_acme_runner_t *rn)
{
    ngx_http_acme_od_run_t  *od = rn->od;

    ngx_uint_t  i;

    if (od == NULL) {
        return;
    }

    acme_ondemand_free(od->od);

    for (i = 0; i < od->nnames; i++) {
        free(od->names[i].name);
    }

    ngx_http_acme_od_dropped_clear(od);
    free(od->dropped);
    free(od->names);
    ngx_free(od);

    rn->od = NULL;
}
