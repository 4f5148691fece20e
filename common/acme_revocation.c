/* Revocations made by acmectl, recorded for the servers' managers (acme_revocation.h). */
#include "acme_revocation.h"

#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "acme_resource.h"
#include "acme_x509.h"

int
acme_revocation_record(acme_store_t *st, const char *name, const char *serial, time_t at, acme_err_t *err)
{
    json_t  *o = NULL, *arr, *e;
    char    *text = NULL, tb[32];
    size_t   len = 0;
    int      rc;

    rc = acme_store_get(st, ACME_REVOCATIONS_KEY, &text, &len, err);
    if (rc < 0) {
        return -1;
    }
    if (rc == 0) {
        /* a damaged list is replaced: it only tells the managers where to look */
        o = json_loadb(text, len, 0, NULL);
    }
    free(text);
    if (o == NULL || !json_is_object(o) || !json_is_array(json_object_get(o, "revocations"))) {
        json_decref(o);
        o = json_pack("{s:[]}", "revocations");
    }
    arr = o ? json_object_get(o, "revocations") : NULL;
    e = json_pack("{s:s, s:s, s:s}", "name", name, "serial", serial, "at", acme_time_format(at, tb, sizeof(tb)));
    if (arr == NULL || e == NULL || json_array_append_new(arr, e) != 0) {
        json_decref(o);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    while (json_array_size(arr) > ACME_REVOCATIONS_MAX) {
        json_array_remove(arr, 0);
    }
    text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (text == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    rc = acme_store_put(st, ACME_REVOCATIONS_KEY, text, strlen(text), 0, err);
    free(text);
    return rc;
}

int
acme_revocation_names(const char *text, size_t len, char ***names, size_t *n)
{
    json_t  *o, *arr, *name;
    size_t   i, k = 0;
    char   **r;

    *names = NULL;
    *n = 0;
    o = json_loadb(text, len, 0, NULL);
    arr = o ? json_object_get(o, "revocations") : NULL;
    if (!json_is_array(arr)) {
        json_decref(o);
        return -1;
    }
    r = calloc(json_array_size(arr) + 1, sizeof(char *));
    for (i = 0; r != NULL && i < json_array_size(arr); i++) {
        name = json_object_get(json_array_get(arr, i), "name");
        if (json_is_string(name) && (r[k] = acme_strdup(json_string_value(name))) != NULL) {
            k++;
        }
    }
    json_decref(o);
    if (r == NULL) {
        return -1;
    }
    *names = r;
    *n = k;
    return 0;
}

int
acme_revocation_stored_serial(acme_store_t *st, const char *name, char **serial, acme_err_t *err)
{
    char              *pem = NULL;
    size_t             len = 0;
    STACK_OF(X509)    *chain = NULL;
    acme_cert_info_t   info;
    int                rc;

    *serial = NULL;
    rc = acme_store_cert_load(st, name, &pem, &len, NULL, NULL, NULL, err);
    if (rc != 0) {
        return rc;
    }
    memset(&info, 0, sizeof(info));
    if (acme_pem_chain_parse(pem, len, &chain, err) != 0
        || acme_cert_info(sk_X509_value(chain, 0), &info, err) != 0)
    {
        free(pem);
        acme_chain_free(chain);
        return -1;
    }
    *serial = acme_strdup(info.serial_hex);
    free(pem);
    acme_chain_free(chain);
    acme_cert_info_free(&info);
    if (*serial == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    return 0;
}
