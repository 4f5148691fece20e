/*
 * mod_acme: the module record and hook registration. The ACME protocol lives in the server-independent
 * core (common/); this module is the glue to httpd (see mod_acme.h for the parts).
 */
#define MOD_ACME_MAIN
#include "mod_acme.h"

#include <http_protocol.h>
#include <mpm_common.h>
#include <http_core.h>

mod_acme_globals_t mod_acme_g;

mod_acme_conn_t *
mod_acme_conn(conn_rec *c, int create)
{
    mod_acme_conn_t *cc = ap_get_module_config(c->conn_config, &acme_module);

    if (cc == NULL && create) {
        cc = apr_pcalloc(c->pool, sizeof(*cc));
        ap_set_module_config(c->conn_config, &acme_module, cc);
    }
    return cc;
}

/*
 * 1 the first time the parent configures itself for real: a start, not a graceful restart or a restart
 * (SIGHUP), which keep the parent and its process pool (the module may be unloaded in between, so the mark
 * is the pool's, not a static). The pre-configuration pass at startup does not count.
 */
int
mod_acme_parent_started(server_rec *s)
{
    static const char  key[] = "mod_acme_parent_started";
    void              *seen = NULL;

    if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_CREATE_PRE_CONFIG) {
        return 0;
    }
    apr_pool_userdata_get(&seen, key, s->process->pool);
    if (seen != NULL) {
        return 0;
    }
    apr_pool_userdata_set((const void *) 1, key, apr_pool_cleanup_null, s->process->pool);
    return 1;
}

static int
check_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    return mod_acme_check_config(pconf, plog, ptemp, s);
}

/* Before mod_ssl: it asks us for certificate files while it initialises. */
static int
post_config_prepare(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    (void) plog;
    return mod_acme_ssl_prepare(pconf, ptemp, s);
}

/* After mod_ssl: now we know which vhosts have SSL. */
static int
post_config_check(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    (void) pconf;
    (void) plog;
    mod_acme_ssl_check(ptemp, s);
    return OK;
}

static void
child_init(apr_pool_t *pchild, server_rec *s)
{
    mod_acme_drive_child_init(pchild, s);
}

static void
child_stopping(apr_pool_t *pchild, int graceful)
{
    mod_acme_drive_child_stopping(pchild, graceful);
}

static void
register_hooks(apr_pool_t *p)
{
    static const char *const ssl[] = { "mod_ssl.c", NULL };

    ap_hook_check_config(check_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_config(post_config_prepare, NULL, ssl, APR_HOOK_MIDDLE);
    ap_hook_post_config(post_config_check, ssl, NULL, APR_HOOK_LAST);
    ap_hook_child_init(child_init, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_stopping(child_stopping, NULL, NULL, APR_HOOK_MIDDLE);
    mod_acme_ssl_register_hooks(p);
    mod_acme_challenge_register_hooks(p);
    mod_acme_status_register_hooks(p);
}

AP_DECLARE_MODULE(acme) = {
    STANDARD20_MODULE_STUFF,
    mod_acme_create_dir_conf,
    mod_acme_merge_dir_conf,
    mod_acme_create_srv_conf,
    mod_acme_merge_srv_conf,
    mod_acme_cmds,
    register_hooks,
#if defined(AP_MODULE_FLAG_ALWAYS_MERGE)
    AP_MODULE_FLAG_ALWAYS_MERGE
#endif
};
