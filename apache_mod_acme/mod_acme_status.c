/*
 * The acme-status handler:
 *   GET                JSON per certificate (names, issuer, key type, validity, next renewal and why, state,
 *                      last error) as the driver last published it; before the driver runs, what the store
 *                      says. Never keys or EAB secrets (the manager's status has neither).
 *   POST ?renew=NAME   queue a renewal of the certificate with that store name or identifier: 202; 404 for
 *                      names we do not manage; 403 unless "ACMEStatusRenew on" applies to the location.
 *   anything else      405.
 */
#include "mod_acme.h"

#include <http_protocol.h>
#include <http_request.h>
#include <http_core.h>
#include <time.h>

#include <jansson.h>

#include "acme_store.h"

static const char *
iso_time(apr_pool_t *p, time_t t)
{
    struct tm   tm;
    char        buf[32];

    gmtime_r(&t, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return apr_pstrdup(p, buf);
}

/* Before the driver published anything: the configured certificates and what the store knows of them. */
static const char *
status_from_store(request_rec *r)
{
    json_t      *root = json_object(), *arr = json_array();
    const char  *out;
    char        *text;
    int          i;

    for (i = 0; mod_acme_g.active && i < mod_acme_g.certs->nelts; i++) {
        mod_acme_cert_t  *c = APR_ARRAY_IDX(mod_acme_g.certs, i, mod_acme_cert_t *);
        acme_certmeta_t   meta;
        json_t           *o = json_object(), *ids = json_array();
        char              ks[16];
        size_t            j;
        int               have;

        for (j = 0; j < c->nids; j++) {
            json_array_append_new(ids, json_string(c->ids[j].value));
        }
        memset(&meta, 0, sizeof(meta));
        have = acme_store_meta_load(mod_acme_g.store, c->name, &meta, NULL) == 0;
        json_object_set_new(o, "name", json_string(c->name));
        json_object_set_new(o, "identifiers", ids);
        json_object_set_new(o, "issuer", have && meta.ca ? json_string(meta.ca) : json_null());
        json_object_set_new(o, "key_type", json_string(acme_keyspec_str(&c->ks, ks, sizeof(ks))));
        json_object_set_new(o, "not_before", have && meta.not_before
                            ? json_string(iso_time(r->pool, meta.not_before)) : json_null());
        json_object_set_new(o, "not_after", have && meta.not_after
                            ? json_string(iso_time(r->pool, meta.not_after)) : json_null());
        json_object_set_new(o, "next_renewal", have && meta.renew_at
                            ? json_string(iso_time(r->pool, meta.renew_at)) : json_null());
        json_object_set_new(o, "renewal_reason", json_null());
        json_object_set_new(o, "state", json_string(have && meta.not_after ? "valid" : "pending"));
        json_object_set_new(o, "failures", json_integer(have ? meta.failures : 0));
        json_object_set_new(o, "last_error", have && meta.last_error ? json_string(meta.last_error)
                                                                     : json_null());
        json_object_set_new(o, "identifier_errors", have ? acme_certmeta_ident_errors_json(&meta)
                                                         : json_array());
        if (have) {
            acme_certmeta_free(&meta);
        }
        json_array_append_new(arr, o);
    }
    json_object_set_new(root, "certificates", arr);
    json_object_set_new(root, "driver_pid", json_null());
    text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    out = apr_pstrdup(r->pool, text ? text : "{}");
    free(text);
    return out;
}

static int
known_name(const char *what)
{
    int     i;
    size_t  j;

    for (i = 0; mod_acme_g.active && i < mod_acme_g.certs->nelts; i++) {
        mod_acme_cert_t *c = APR_ARRAY_IDX(mod_acme_g.certs, i, mod_acme_cert_t *);
        if (strcmp(c->name, what) == 0) {
            return 1;
        }
        for (j = 0; j < c->nids; j++) {
            if (strcasecmp(c->ids[j].value, what) == 0) {
                return 1;
            }
        }
    }
    return 0;
}

static const char *
arg_value(request_rec *r, const char *name)
{
    char        *args, *tok, *save = NULL;
    apr_size_t   n = strlen(name);

    if (r->args == NULL) {
        return NULL;
    }
    args = apr_pstrdup(r->pool, r->args);
    for (tok = apr_strtok(args, "&", &save); tok; tok = apr_strtok(NULL, "&", &save)) {
        if (strncmp(tok, name, n) == 0 && tok[n] == '=') {
            char *v = tok + n + 1;
            if (ap_unescape_urlencoded(v) != OK) {
                return "";
            }
            return v;
        }
    }
    return NULL;
}

static int
send_json(request_rec *r, int status, const char *json)
{
    r->status = status;
    ap_set_content_type(r, "application/json");
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    if (!r->header_only) {
        ap_rputs(json, r);
        ap_rputs("\n", r);
    }
    return OK;
}

static int
status_handler(request_rec *r)
{
    mod_acme_dir_conf_t  *dc;
    const char           *json, *name;
    json_t               *o;
    char                 *text;

    if (r->handler == NULL || strcmp(r->handler, MOD_ACME_HANDLER) != 0) {
        return DECLINED;
    }
    if (r->method_number == M_GET) {
        json = mod_acme_shm_status_get(mod_acme_g.active ? mod_acme_g.shm : NULL, r->pool);
        if (json == NULL) {
            json = status_from_store(r);
        }
        return send_json(r, HTTP_OK, json);
    }
    if (r->method_number != M_POST) {
        r->allowed = (AP_METHOD_BIT << M_GET) | (AP_METHOD_BIT << M_POST);
        return HTTP_METHOD_NOT_ALLOWED;
    }
    dc = ap_get_module_config(r->per_dir_config, &acme_module);
    name = arg_value(r, "renew");
    if (name == NULL || *name == '\0' || strlen(name) >= MOD_ACME_NAME_MAX) {
        return HTTP_BAD_REQUEST;
    }
    if (dc == NULL || dc->renew_allowed != 1) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, ACMELOGNO(0100)
                      "acme-status: renew refused: ACMEStatusRenew is not on for this location");
        return HTTP_FORBIDDEN;
    }
    if (!known_name(name)) {
        return HTTP_NOT_FOUND;
    }
    if (mod_acme_shm_renew_push(mod_acme_g.shm, name) != 0) {
        apr_table_setn(r->err_headers_out, "Retry-After", "5");
        return HTTP_SERVICE_UNAVAILABLE;
    }
    ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, r, ACMELOGNO(0101)
                  "acme-status: renewal of %s requested", name);
    o = json_pack("{s:s, s:s}", "renew", name, "status", "queued");
    text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    json = apr_pstrdup(r->pool, text ? text : "{}");
    free(text);
    return send_json(r, HTTP_ACCEPTED, json);
}

void
mod_acme_status_register_hooks(apr_pool_t *p)
{
    (void) p;
    ap_hook_handler(status_handler, NULL, NULL, APR_HOOK_MIDDLE);
}
