
/*
 * Where the module keeps its state: each issuer's state_path (its default,
 * created and opened read-only while the configuration is read, given to
 * the worker user by the master) and the acme_storage URL and key, checked
 * without a connection.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_acme_module.h"

#include "acme_store.h"


/*
 * no state_path (or nginx-acme's "state_path off"): nginx-acme's default
 * directory, "acme_NAME" under nginx's prefix, when it is there (a
 * configuration moved from nginx-acme keeps its state), else ours
 */

static ngx_int_t
ngx_http_acme_state_default(ngx_conf_t *cf, ngx_http_acme_issuer_t *iss)
{
    ngx_str_t        path;
    ngx_uint_t       theirs;
    ngx_file_info_t  fi;

    path.len = cf->cycle->prefix.len + sizeof("acme_") - 1 + iss->name.len;
    path.data = ngx_pnalloc(cf->pool, path.len + 1);
    if (path.data == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(path.data, "%Vacme_%V%Z", &cf->cycle->prefix, &iss->name);

    theirs = (ngx_link_info(path.data, &fi) != NGX_FILE_ERROR
              && ngx_is_dir(&fi));

    if (!theirs) {
        path.len = sizeof(NGX_HTTP_ACME_DEFAULT_STATE_PATH) - 1
                   + iss->name.len;
        path.data = ngx_pnalloc(cf->pool, path.len + 1);
        if (path.data == NULL) {
            return NGX_ERROR;
        }

        ngx_sprintf(path.data, "%s%V%Z", NGX_HTTP_ACME_DEFAULT_STATE_PATH,
                    &iss->name);
    }

    iss->state_path = (char *) path.data;

    if (iss->state_path_off) {
        ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                      "acme_issuer \"%V\": \"state_path off\": the state "
                      "is kept in \"%s\" all the same, so that the account "
                      "and certificates survive a restart in %s:%ui",
                      &iss->name, iss->state_path, iss->file,
                      iss->state_path_line);

    } else if (theirs) {
        ngx_log_error(NGX_LOG_NOTICE, cf->log, 0,
                      "acme_issuer \"%V\": no \"state_path\": using "
                      "nginx-acme's state directory \"%s\" in %s:%ui",
                      &iss->name, iss->state_path, iss->file, iss->line);
    }

    return NGX_OK;
}


/* the issuer's state_path, read-only: for the checks of the configuration */

acme_store_t *
ngx_http_acme_state_open(ngx_conf_t *cf, ngx_http_acme_issuer_t *iss)
{
    ngx_uint_t     line;
    acme_err_t     aerr;
    acme_store_t  *st;

    line = iss->state_path_line ? iss->state_path_line : iss->line;

    if (iss->state_path == NULL
        && ngx_http_acme_state_default(cf, iss) != NGX_OK)
    {
        return NULL;
    }

    /*
     * an unusable state_path is a configuration error; root only creates
     * the directory here (given to the worker user in init_module) and
     * reads: recovery, cleanup and every write are the workers'
     */

    if (acme_store_fs_prepare(iss->state_path, -1, -1, &aerr) != 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "acme_issuer \"%V\": cannot create state_path \"%s\": "
                      "%s in %s:%ui", &iss->name, iss->state_path, aerr.msg,
                      iss->file, line);
        return NULL;
    }

    st = acme_store_fs_open(iss->state_path, ACME_STORE_FS_RDONLY, &aerr);
    if (st == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "acme_issuer \"%V\": unusable state_path \"%s\": %s "
                      "in %s:%ui", &iss->name, iss->state_path, aerr.msg,
                      iss->file, line);
        return NULL;
    }

    return st;
}


/* issuers sharing a state_path share its store */

ngx_int_t
ngx_http_acme_state_add(ngx_http_acme_main_conf_t *amcf,
    ngx_http_acme_issuer_t *iss)
{
    char        **sp;
    ngx_uint_t    i;

    sp = amcf->stores.elts;
    for (i = 0; i < amcf->stores.nelts; i++) {
        if (ngx_strcmp(sp[i], iss->state_path) == 0) {
            break;
        }
    }

    if (i == amcf->stores.nelts) {
        sp = ngx_array_push(&amcf->stores);
        if (sp == NULL) {
            return NGX_ERROR;
        }

        *sp = iss->state_path;
    }

    iss->store = i;

    return NGX_OK;
}


/* acme_storage: the URL parsed, no connection */

ngx_int_t
ngx_http_acme_state_storage(ngx_conf_t *cf, char *url)
{
    char          *shown;
    acme_err_t     err;
    acme_store_t  *st;

    st = acme_store_open(url, NULL, ACME_STORE_LAZY, &err);
    if (st == NULL) {
        shown = acme_store_url_redact(url);
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"acme_storage\" \"%s\": %s",
                           shown ? shown : "(redacted)", err.msg);
        free(shown);
        return NGX_ERROR;
    }

    acme_store_close(st);

    return NGX_OK;
}


/* acme_storage_key: needs acme_storage; the key file read and checked */

ngx_int_t
ngx_http_acme_state_storage_key(ngx_conf_t *cf,
    ngx_http_acme_main_conf_t *amcf)
{
    acme_err_t     aerr;
    acme_store_t  *st;

    if (amcf->storage_key && amcf->storage == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"acme_storage_key\" \"%s\" needs \"acme_storage "
                      "redis://...\" in %s:%ui", amcf->storage_key,
                      amcf->storage_key_file, amcf->storage_key_line);
        return NGX_ERROR;
    }

    if (amcf->storage_key) {
        /* reads and checks the key file; still no connection */
        st = acme_store_open(amcf->storage, amcf->storage_key,
                             ACME_STORE_LAZY, &aerr);
        if (st == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"acme_storage_key\" \"%s\": %s in %s:%ui",
                          amcf->storage_key, aerr.msg,
                          amcf->storage_key_file, amcf->storage_key_line);
            return NGX_ERROR;
        }

        acme_store_close(st);

    } else if (amcf->storage) {
        ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                      "\"acme_storage\" without \"acme_storage_key\" "
                      "in %s:%ui: private keys are kept in Redis "
                      "unencrypted and whoever can write to Redis controls "
                      "the domains",
                      amcf->storage_file, amcf->storage_line);
    }

    return NGX_OK;
}


/*
 * the master gives each state_path directory (only the directory itself,
 * on an O_NOFOLLOW descriptor) to the worker user; what is inside belongs
 * to the workers, and root never walks, repairs or writes it
 */

ngx_int_t
ngx_http_acme_state_own(ngx_cycle_t *cycle, ngx_http_acme_main_conf_t *amcf)
{
    char             **p;
    long               uid, gid;
    ngx_uint_t         i;
    acme_err_t         aerr;
    ngx_core_conf_t   *ccf;

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    if (geteuid() != 0 || ccf->user == (ngx_uid_t) NGX_CONF_UNSET_UINT) {
        uid = -1;
        gid = -1;

    } else {
        uid = (long) ccf->user;
        gid = (long) ccf->group;
    }

    p = amcf->stores.elts;
    for (i = 0; i < amcf->stores.nelts; i++) {
        if (acme_store_fs_prepare(p[i], uid, gid, &aerr) != 0) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                          "acme: state_path \"%s\": %s", p[i], aerr.msg);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}
