
/*
 * Taking over nginx-acme's state (common/acme_import.c) in the runner,
 * before a state_path's manager starts: an account and certificates left
 * there by nginx's official acme module are used, so switching modules
 * places no order and registers no account. The files are read in the
 * state_path (the default or the one configured: where nginx-acme kept
 * them when both modules are given the same), as the worker user, beneath
 * the directory without following links; nothing of nginx-acme's is changed.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_acme_runner.h"

#include "acme_import.h"


ngx_int_t
ngx_http_acme_import(ngx_http_acme_runner_t *rn, ngx_uint_t g)
{
    char                        **paths;
    ngx_int_t                     rc;
    ngx_uint_t                    i, n, several;
    acme_err_t                    err;
    acme_store_t                 *src;
    acme_import_cert_t           *ic;
    acme_import_account_t         account;
    ngx_http_acme_cert_t        **certs;
    ngx_http_acme_issuer_t       *iss, *one;
    ngx_http_acme_main_conf_t    *amcf;

    amcf = rn->amcf;
    paths = amcf->stores.elts;
    iss = amcf->issuers.elts;
    certs = amcf->certs.elts;

    /* nginx-acme's files are on disk: with acme_storage, in the local copy */
    src = rn->cache ? rn->cache[g] : rn->stores[g];

    /* the account belongs to the issuer of this state_path, if just one */

    one = NULL;
    several = 0;

    for (i = 0; i < amcf->issuers.nelts; i++) {
        if (iss[i].store != g) {
            continue;
        }

        if (one != NULL
            && ngx_strcmp(one->directory_url, iss[i].directory_url) != 0)
        {
            several = 1;
        }

        if (one == NULL || iss[i].account_key_file != NULL) {
            /* a key file is the admin's: never replaced by another key */
            one = &iss[i];
        }
    }

    ngx_memzero(&account, sizeof(acme_import_account_t));

    if (one != NULL && !several && one->account_key_file == NULL) {
        account.ca = one->directory_url;
        account.contact = (const char *const *) one->contacts.elts;
        account.ncontact = one->contacts.nelts;
    }

    ic = ngx_calloc((amcf->certs.nelts + 1) * sizeof(acme_import_cert_t),
                    rn->log);
    if (ic == NULL) {
        return NGX_ERROR;
    }

    n = 0;

    for (i = 0; i < amcf->certs.nelts; i++) {
        if (certs[i]->store != g) {
            continue;
        }

        ic[n].name = certs[i]->name;
        ic[n].ids = certs[i]->ids;
        ic[n].nids = certs[i]->nids;
        ic[n].keyspec = certs[i]->keyspec;
        ic[n].ca = iss[certs[i]->issuers[0]].directory_url;
        n++;
    }

    rc = NGX_OK;

    if (acme_import_nginx_acme(rn->loop, src, paths[g], rn->stores[g],
                               &account, ic, n, &err)
        < 0)
    {
        ngx_log_error(NGX_LOG_ERR, rn->log, 0, "acme: %s", err.msg);
        rc = NGX_ERROR;

    } else {
        for (i = 0; i < n; i++) {
            if (ic[i].imported) {
                /* workers that already tried serve it at the next handshake */
                ngx_http_acme_cert_updated(rn, ic[i].name);
            }
        }
    }

    ngx_free(ic);

    return rc;
}
