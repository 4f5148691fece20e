/* Which URLs the client follows: the rules an https (or loopback http) directory sets for the CA's URLs. */
#include "acme_urlpolicy.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <jansson.h>

int
acme_urlpolicy_init(acme_urlpolicy_t *p, const char *directory_url, acme_err_t *err)
{
    char q[256];

    memset(p, 0, sizeof(*p));
    if (directory_url == NULL || acme_url_origin(directory_url, p->origin, sizeof(p->origin)) != 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "CA directory URL \"%s\" is not a valid http(s) URL",
                     acme_quote(directory_url ? directory_url : "", q, sizeof(q), 200));
        return -1;
    }
    p->https_only = strncasecmp(directory_url, "https://", 8) == 0;
    if (!p->https_only && !acme_url_loopback(directory_url)) {
        acme_err_set(err, ACME_ERR_CONFIG, "CA directory URL \"%s\" must use https:// (http:// only for "
                     "localhost)", acme_quote(directory_url, q, sizeof(q), 200));
        return -1;
    }
    snprintf(p->directory, sizeof(p->directory), "%s", directory_url);
    return 0;
}

static void
note_origin(acme_urlpolicy_t *p, acme_loop_t *loop, const char *field, const char *url, const char *origin)
{
    size_t  i;
    char    q[256];

    if (strcmp(origin, p->origin) == 0) {
        return;
    }
    for (i = 0; i < p->nseen; i++) {
        if (strcmp(p->seen[i], origin) == 0) {
            return;
        }
    }
    if (p->nseen < ACME_URLPOLICY_SEEN) {
        snprintf(p->seen[p->nseen++], ACME_URLPOLICY_ORIGIN_MAX, "%s", origin);
    }
    if (loop != NULL) {
        acme_log(loop, ACME_LOG_INFO, "acme: the CA's %s URL \"%s\" is on another origin than its directory "
                 "%s (allowed)", field, acme_quote(url, q, sizeof(q), 200), p->directory);
    }
}

int
acme_urlpolicy_check(acme_urlpolicy_t *p, acme_loop_t *loop, const char *field, const char *url,
    acme_err_t *err)
{
    char  origin[ACME_URLPOLICY_ORIGIN_MAX], q[256];

    if (url == NULL || acme_url_origin(url, origin, sizeof(origin)) != 0) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "the CA's %s URL \"%s\" is not a valid http(s) URL", field,
                     acme_quote(url ? url : "", q, sizeof(q), 200));
        return -1;
    }
    if (strncmp(origin, "http://", 7) == 0) {
        if (p->https_only) {
            acme_err_set(err, ACME_ERR_BADRESPONSE, "the CA's %s URL \"%s\" is not https (its directory %s "
                         "is): refused", field, acme_quote(url, q, sizeof(q), 200), p->directory);
            return -1;
        }
        if (!acme_url_loopback(url)) {
            acme_err_set(err, ACME_ERR_BADRESPONSE, "the CA's %s URL \"%s\" is plain http to a host that is "
                         "not loopback: refused", field, acme_quote(url, q, sizeof(q), 200));
            return -1;
        }
    }
    note_origin(p, loop, field, url, origin);
    return 0;
}

int
acme_urlpolicy_check_directory(acme_urlpolicy_t *p, acme_loop_t *loop, const acme_directory_t *dir,
    acme_err_t *err)
{
    struct { const char *name; const char *url; } f[] = {
        { "newNonce", dir->new_nonce }, { "newAccount", dir->new_account }, { "newOrder", dir->new_order },
        { "newAuthz", dir->new_authz }, { "revokeCert", dir->revoke_cert }, { "keyChange", dir->key_change },
        { "renewalInfo", dir->renewal_info },
    };
    size_t  i;
    char    field[64];

    for (i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        snprintf(field, sizeof(field), "directory \"%s\"", f[i].name);
        if (f[i].url != NULL && acme_urlpolicy_check(p, loop, field, f[i].url, err) != 0) {
            return -1;
        }
    }
    return 0;
}

static int
check_member(acme_urlpolicy_t *p, acme_loop_t *loop, json_t *v, const char *name, acme_err_t *err)
{
    json_t  *e, *u;
    size_t   i;
    char     field[80];

    if (json_is_string(v)) {
        snprintf(field, sizeof(field), "\"%s\"", name);
        return acme_urlpolicy_check(p, loop, field, json_string_value(v), err);
    }
    if (!json_is_array(v)) {
        return 0;
    }
    json_array_foreach(v, i, e) {
        u = json_is_object(e) ? json_object_get(e, "url") : e;
        if (!json_is_string(u)) {
            continue;
        }
        snprintf(field, sizeof(field), json_is_object(e) ? "\"%s[%zu].url\"" : "\"%s[%zu]\"", name, i);
        if (acme_urlpolicy_check(p, loop, field, json_string_value(u), err) != 0) {
            return -1;
        }
    }
    return 0;
}

int
acme_urlpolicy_check_resp(acme_urlpolicy_t *p, acme_loop_t *loop, const acme_http_resp_t *resp,
    acme_err_t *err)
{
    static const char *const  members[] = {
        "url", "finalize", "certificate", "orders", "authorizations", "challenges",
    };
    json_t                   *o;
    size_t                    i;
    int                       rc = 0;
    char                      field[48];

    if (resp->location != NULL && acme_urlpolicy_check(p, loop, "Location", resp->location, err) != 0) {
        return -1;
    }
    for (i = 0; i < resp->nalternate; i++) {
        snprintf(field, sizeof(field), "Link rel=\"alternate\" #%zu", i + 1);
        if (acme_urlpolicy_check(p, loop, field, resp->links_alternate[i], err) != 0) {
            return -1;
        }
    }
    if (resp->link_up != NULL && acme_urlpolicy_check(p, loop, "Link rel=\"up\"", resp->link_up, err) != 0) {
        return -1;
    }
    if (resp->content_type == NULL || strcmp(resp->content_type, "application/json") != 0
        || resp->body.len == 0)
    {
        return 0;
    }
    o = json_loadb(resp->body.data, resp->body.len, 0, NULL);
    if (!json_is_object(o)) {
        json_decref(o);
        return 0;               /* the reader of the answer says what is wrong with it */
    }
    for (i = 0; i < sizeof(members) / sizeof(members[0]) && rc == 0; i++) {
        rc = check_member(p, loop, json_object_get(o, members[i]), members[i], err);
    }
    json_decref(o);
    return rc;
}
