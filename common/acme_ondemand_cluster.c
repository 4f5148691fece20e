/* On-demand limits counted across the nodes of a shared store (acme_ondemand_cluster.h). */
#include "acme_ondemand_cluster.h"

#include <string.h>
#include <jansson.h>

#define OD_CLUSTER_LOCK  "ondemand-limits"
#define OD_WINDOW        60             /* s: the rate's minute */

/* The document at key, or an empty object (absent, damaged). NULL: the store failed (err). */
static json_t *
doc_load(acme_store_t *st, const char *key, acme_err_t *err)
{
    char    *data = NULL;
    size_t   len = 0;
    json_t  *doc;
    int      rc;

    rc = acme_store_get(st, key, &data, &len, err);
    if (rc < 0) {
        return NULL;
    }
    doc = rc == 0 ? json_loadb(data, len, 0, NULL) : NULL;
    free(data);
    return json_is_object(doc) ? doc : (json_decref(doc), json_object());
}

static int
listed(json_t *arr, const char *name)
{
    size_t   i;
    json_t  *one;

    json_array_foreach(arr, i, one) {
        const char *n = json_string_value(json_object_get(one, "name"));
        if (n != NULL && strcmp(n, name) == 0) {
            return 1;
        }
    }
    return 0;
}

int
acme_ondemand_cluster_admit(acme_store_t *st, const acme_ondemand_conf_t *conf, const char *name,
    time_t now, acme_od_verdict_t *v, acme_err_t *err)
{
    acme_lock_t  *lk = NULL;
    json_t       *names = NULL, *allowed = NULL, *recent, *one, *arr;
    size_t        i, count, max, rate;
    char         *text;
    int           rc;

    max = conf->max_certs ? conf->max_certs : ACME_OD_MAX_CERTS;
    rate = conf->rate_per_min ? conf->rate_per_min : ACME_OD_RATE;
    rc = st->ops->lock(st, OD_CLUSTER_LOCK, &lk, err);
    if (rc != 1) {
        return rc == 0 ? 1 : -1;
    }
    rc = -1;
    names = doc_load(st, ACME_OD_NAMES_KEY, err);
    allowed = names ? doc_load(st, ACME_OD_ALLOWED_KEY, err) : NULL;
    if (allowed == NULL) {
        goto done;
    }
    /* the last minute's allowances; the others leave the record */
    recent = json_array();
    json_array_foreach(json_object_get(allowed, "allowed"), i, one) {
        json_int_t at = json_integer_value(json_object_get(one, "at"));
        if (json_is_string(json_object_get(one, "name")) && at > (json_int_t) now - OD_WINDOW
            && at <= (json_int_t) now + OD_WINDOW) {
            json_array_append(recent, one);
        }
    }
    json_object_set_new(allowed, "allowed", recent);
    arr = json_object_get(names, "names");
    rc = 0;
    if (listed(arr, name) || listed(recent, name)) {
        *v = ACME_OD_ALLOWED;       /* another node's (or ours): counted already */
        goto done;
    }
    count = json_array_size(arr);
    json_array_foreach(recent, i, one) {
        count += !listed(arr, json_string_value(json_object_get(one, "name")));
    }
    if (count >= max) {
        *v = ACME_OD_MAX_COUNT;
        goto done;
    }
    if (json_array_size(recent) >= rate) {
        *v = ACME_OD_RATE_LIMITED;
        goto done;
    }
    json_array_append_new(recent, json_pack("{s:s, s:I}", "name", name, "at", (json_int_t) now));
    text = json_dumps(allowed, JSON_COMPACT);
    if (text == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        rc = -1;
        goto done;
    }
    rc = acme_store_put(st, ACME_OD_ALLOWED_KEY, text, strlen(text), 0, err);
    free(text);
    *v = ACME_OD_ALLOWED;
done:
    json_decref(names);
    json_decref(allowed);
    st->ops->unlock(lk);
    return rc;
}
