/* The ACME directory, CA names, and directory URL checks. */
#include "acme_directory.h"
#include "acme_store.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <jansson.h>

#define DIR_BODY_MAX       (1024 * 1024)
#define DIR_URL_MAX        2048
#define DIR_TEXT_MAX       1024
#define DIR_PROFILES_MAX   64
#define DIR_PROFILE_NAME_MAX 64

#define LE_V2_URL          "https://acme-v02.api.letsencrypt.org/directory"
#define LE_V2_STAGING_URL  "https://acme-staging-v02.api.letsencrypt.org/directory"

static const struct {
    const char  *name;
    const char  *url;
} known_cas[] = {
    { "letsencrypt",         LE_V2_URL },
    { "letsencrypt-staging", LE_V2_STAGING_URL },
    { "zerossl",             "https://acme.zerossl.com/v2/DV90" },
    { "google",              "https://dv.acme-v02.api.pki.goog/directory" },
    { "google-staging",      "https://dv.acme-v02.test-api.pki.goog/directory" },
    { "buypass",             "https://api.buypass.com/acme/directory" },
    { "buypass-staging",     "https://api.test4.buypass.no/acme/directory" },
};

/* What a URL is made of, as pointers into it. */
typedef struct {
    int          https;
    const char  *host;          /* without brackets for IPv6 */
    size_t       host_len;
    int          ipv6;
    unsigned     port;          /* 0: the scheme's default */
    const char  *path;          /* from the first '/', '?' or '#' after the authority; "" when none */
} url_parts_t;

/* Splits an absolute http(s) URL; NULL when fine, else why not. */
static const char *
url_split(const char *s, url_parts_t *u)
{
    const char     *p, *a, *end, *port;
    size_t          i, len;
    char            tmp[INET6_ADDRSTRLEN + 1];
    unsigned char   addr[16];
    unsigned long   pn;

    memset(u, 0, sizeof(*u));
    len = strnlen(s, DIR_URL_MAX + 1);
    if (len == 0) {
        return "empty URL";
    }
    if (len > DIR_URL_MAX) {
        return "URL too long";
    }
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char) s[i];
        if (c <= 0x20 || c >= 0x7f) {
            return c == ' ' ? "URL contains a space" : "URL contains a control or non-ASCII character";
        }
    }
    if (strncasecmp(s, "https://", 8) == 0) {
        u->https = 1;
        a = s + 8;
    } else if (strncasecmp(s, "http://", 7) == 0) {
        a = s + 7;
    } else {
        return strstr(s, "://") != NULL ? "unsupported URL scheme (expected https://)"
                                        : "not an absolute URL";
    }
    end = a + strcspn(a, "/?#");
    u->path = end;
    if (memchr(a, '@', (size_t) (end - a)) != NULL) {
        return "user information in URLs is not supported";
    }
    if (a == end) {
        return "no host in URL";
    }
    if (*a == '[') {
        p = memchr(a, ']', (size_t) (end - a));
        if (p == NULL || (size_t) (p - a - 1) >= sizeof(tmp)) {
            return "invalid IPv6 address in URL";
        }
        memcpy(tmp, a + 1, (size_t) (p - a - 1));
        tmp[p - a - 1] = '\0';
        if (inet_pton(AF_INET6, tmp, addr) != 1) {
            return "invalid IPv6 address in URL";
        }
        u->host = a + 1;
        u->host_len = (size_t) (p - a - 1);
        u->ipv6 = 1;
        port = p + 1;
        if (port != end && *port != ':') {
            return "invalid host in URL";
        }
    } else {
        port = memchr(a, ':', (size_t) (end - a));
        if (port == NULL) {
            port = end;
        }
        u->host = a;
        u->host_len = (size_t) (port - a);
        if (u->host_len == 0) {
            return "no host in URL";
        }
        for (p = a; p < port; p++) {
            if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')
                  || *p == '-' || *p == '.'))
            {
                return "invalid character in the URL's host";
            }
        }
    }
    if (port != end) {
        /* ":<1..65535>" */
        pn = 0;
        if (port + 1 == end || end - port > 6) {
            return "invalid port in URL";
        }
        for (p = port + 1; p < end; p++) {
            if (*p < '0' || *p > '9') {
                return "invalid port in URL";
            }
            pn = pn * 10 + (unsigned long) (*p - '0');
        }
        if (pn == 0 || pn > 65535) {
            return "invalid port in URL";
        }
        u->port = (unsigned) pn;
    }
    return NULL;
}

int
acme_url_valid(const char *s)
{
    url_parts_t  u;

    return s != NULL && url_split(s, &u) == NULL;
}

static int
host_is(const url_parts_t *u, const char *name)
{
    return u->host_len == strlen(name) && strncasecmp(u->host, name, u->host_len) == 0;
}

static int
host_is_loopback(const url_parts_t *u)
{
    char            tmp[INET6_ADDRSTRLEN + 1];
    unsigned char   a[16];

    if (host_is(u, "localhost")) {
        return 1;
    }
    if (u->host_len >= sizeof(tmp)) {
        return 0;
    }
    memcpy(tmp, u->host, u->host_len);
    tmp[u->host_len] = '\0';
    if (u->ipv6) {
        return inet_pton(AF_INET6, tmp, a) == 1 && memcmp(a, &in6addr_loopback, 16) == 0;
    }
    return inet_pton(AF_INET, tmp, a) == 1 && a[0] == 127;
}

int
acme_url_loopback(const char *s)
{
    url_parts_t  u;

    return s != NULL && url_split(s, &u) == NULL && host_is_loopback(&u);
}

int
acme_url_origin(const char *s, char *out, size_t n)
{
    url_parts_t  u;
    size_t       i;
    int          len;

    if (s == NULL || url_split(s, &u) != NULL) {
        return -1;
    }
    len = snprintf(out, n, "%s://%s%.*s%s:%u", u.https ? "https" : "http", u.ipv6 ? "[" : "",
                   (int) u.host_len, u.host, u.ipv6 ? "]" : "", u.port ? u.port : (u.https ? 443u : 80u));
    if (len < 0 || (size_t) len >= n) {
        return -1;
    }
    for (i = 0; out[i] != '\0'; i++) {
        out[i] = (char) tolower((unsigned char) out[i]);
    }
    return 0;
}

/* ---- directory ---- */

/* A required (or, with required 0, optional) URL member of the directory. */
static int
dir_url(json_t *o, const char *name, int required, char **out, acme_err_t *err)
{
    json_t      *v = json_object_get(o, name);
    url_parts_t  u;
    const char  *why;
    char         q[256];

    if (v == NULL || (!required && json_is_null(v))) {
        if (required) {
            acme_err_set(err, ACME_ERR_BADRESPONSE, "directory: missing \"%s\"", name);
            return -1;
        }
        return 0;
    }
    if (!json_is_string(v)) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "directory: \"%s\" is not a string", name);
        return -1;
    }
    why = url_split(json_string_value(v), &u);
    if (why != NULL) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "directory: \"%s\" is not a usable URL (\"%s\": %s)",
                     name, acme_quote(json_string_value(v), q, sizeof(q), 200), why);
        return -1;
    }
    *out = acme_strdup(json_string_value(v));
    if (*out == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    return 0;
}

/* An informational text: truncated and made printable; NULL when absent or not a string. */
static char *
dir_text(json_t *v)
{
    const char  *s;
    size_t       len, i;
    char        *out;

    if (!json_is_string(v)) {
        return NULL;
    }
    s = json_string_value(v);
    len = strlen(s);
    if (len > DIR_TEXT_MAX) {
        len = DIR_TEXT_MAX;
        while (len > 0 && ((unsigned char) s[len] & 0xc0) == 0x80) {
            len--;
        }
    }
    out = acme_strndup(s, len);
    for (i = 0; out != NULL && i < len; i++) {
        if ((unsigned char) out[i] < 0x20 || out[i] == 0x7f) {
            out[i] = ' ';
        }
    }
    return out;
}

static int
dir_profile_name_ok(const char *s)
{
    size_t  i;

    for (i = 0; s[i] != '\0'; i++) {
        if ((unsigned char) s[i] <= 0x20 || (unsigned char) s[i] >= 0x7f || i >= DIR_PROFILE_NAME_MAX) {
            return 0;
        }
    }
    return i > 0;
}

static int
dir_meta(json_t *meta, acme_directory_t *dir, acme_err_t *err)
{
    json_t      *v, *profiles;
    const char  *k;
    size_t       n;

    if (meta == NULL || json_is_null(meta)) {
        return 0;
    }
    if (!json_is_object(meta)) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "directory: \"meta\" is not an object");
        return -1;
    }
    /* any URL scheme: Pebble's terms are a data: URL; the text is only ever shown */
    v = json_object_get(meta, "termsOfService");
    if (json_is_string(v) && json_string_length(v) > 0) {
        dir->terms_of_service = dir_text(v);
    }
    v = json_object_get(meta, "website");
    if (json_is_string(v) && acme_url_valid(json_string_value(v))) {
        dir->website = dir_text(v);
    }
    v = json_array_get(json_object_get(meta, "caaIdentities"), 0);
    if (json_is_string(v) && json_string_length(v) > 0 && json_string_length(v) <= 253
        && strspn(json_string_value(v), "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")
           == json_string_length(v))
    {
        dir->caa_identity = dir_text(v);
    }
    v = json_object_get(meta, "externalAccountRequired");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_boolean(v)) {
            acme_err_set(err, ACME_ERR_BADRESPONSE, "directory: \"meta.externalAccountRequired\" is not "
                         "a boolean");
            return -1;
        }
        dir->eab_required = json_is_true(v);
    }

    profiles = json_object_get(meta, "profiles");
    if (profiles == NULL || json_is_null(profiles)) {
        return 0;
    }
    if (!json_is_object(profiles)) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "directory: \"meta.profiles\" is not an object");
        return -1;
    }
    n = json_object_size(profiles);
    if (n == 0) {
        return 0;
    }
    if (n > DIR_PROFILES_MAX) {
        n = DIR_PROFILES_MAX;
    }
    dir->profiles = calloc(n, sizeof(char *));
    dir->profile_descs = calloc(n, sizeof(char *));
    if (dir->profiles == NULL || dir->profile_descs == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    json_object_foreach(profiles, k, v) {
        if (dir->nprofiles == n) {
            break;
        }
        if (!dir_profile_name_ok(k)) {
            continue;           /* a name we could not send back anyway */
        }
        dir->profiles[dir->nprofiles] = acme_strdup(k);
        dir->profile_descs[dir->nprofiles] = json_is_string(v) ? dir_text(v) : acme_strdup("");
        if (dir->profiles[dir->nprofiles] == NULL || dir->profile_descs[dir->nprofiles] == NULL) {
            free(dir->profiles[dir->nprofiles]);
            free(dir->profile_descs[dir->nprofiles]);
            dir->profiles[dir->nprofiles] = dir->profile_descs[dir->nprofiles] = NULL;
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            return -1;
        }
        dir->nprofiles++;
    }
    return 0;
}

int
acme_directory_parse(const char *body, size_t len, acme_directory_t *dir, acme_err_t *err)
{
    json_t        *o;
    json_error_t   je;
    int            rc = -1;

    if (dir == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "acme_directory_parse: no output");
        return -1;
    }
    memset(dir, 0, sizeof(*dir));
    if (body == NULL || len == 0) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "directory: empty body");
        return -1;
    }
    if (len > DIR_BODY_MAX) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "directory: body of %zu bytes is too large", len);
        return -1;
    }
    o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (o == NULL) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "directory: invalid JSON: %s (line %d)", je.text, je.line);
        return -1;
    }
    if (!json_is_object(o)) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "directory: not a JSON object");
        goto done;
    }
    if (dir_url(o, "newNonce", 1, &dir->new_nonce, err) != 0
        || dir_url(o, "newAccount", 1, &dir->new_account, err) != 0
        || dir_url(o, "newOrder", 1, &dir->new_order, err) != 0
        || dir_url(o, "newAuthz", 0, &dir->new_authz, err) != 0
        || dir_url(o, "revokeCert", 0, &dir->revoke_cert, err) != 0
        || dir_url(o, "keyChange", 0, &dir->key_change, err) != 0
        || dir_url(o, "renewalInfo", 0, &dir->renewal_info, err) != 0
        || dir_meta(json_object_get(o, "meta"), dir, err) != 0)
    {
        goto done;
    }
    rc = 0;

done:
    json_decref(o);
    if (rc != 0) {
        acme_directory_free(dir);
    }
    return rc;
}

void
acme_directory_free(acme_directory_t *dir)
{
    size_t  i;

    if (dir == NULL) {
        return;
    }
    free(dir->new_nonce);
    free(dir->new_account);
    free(dir->new_order);
    free(dir->new_authz);
    free(dir->revoke_cert);
    free(dir->key_change);
    free(dir->renewal_info);
    free(dir->terms_of_service);
    free(dir->website);
    free(dir->caa_identity);
    for (i = 0; i < dir->nprofiles; i++) {
        free(dir->profiles[i]);
        free(dir->profile_descs[i]);
    }
    free(dir->profiles);
    free(dir->profile_descs);
    memset(dir, 0, sizeof(*dir));
}

int
acme_directory_has_profile(const acme_directory_t *dir, const char *name)
{
    size_t  i;

    if (dir == NULL || name == NULL) {
        return 0;
    }
    for (i = 0; i < dir->nprofiles; i++) {
        if (strcmp(dir->profiles[i], name) == 0) {
            return 1;
        }
    }
    return 0;
}

/* ---- CA names ---- */

char *
acme_ca_resolve(const char *name_or_url, acme_err_t *err)
{
    url_parts_t  u;
    const char  *why, *v2;
    size_t       i;
    char         q[256];
    char        *url;

    if (name_or_url == NULL || name_or_url[0] == '\0') {
        acme_err_set(err, ACME_ERR_CONFIG, "no CA given (a directory URL or one of letsencrypt, "
                     "letsencrypt-staging, zerossl, google, google-staging, buypass, buypass-staging)");
        return NULL;
    }
    for (i = 0; i < sizeof(known_cas) / sizeof(known_cas[0]); i++) {
        if (strcasecmp(name_or_url, known_cas[i].name) == 0) {
            url = acme_strdup(known_cas[i].url);
            if (url == NULL) {
                acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            }
            return url;
        }
    }

    if (strstr(name_or_url, "://") == NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "unknown CA \"%s\" (expected a directory URL or one of "
                     "letsencrypt, letsencrypt-staging, zerossl, google, google-staging, buypass, "
                     "buypass-staging)", acme_quote(name_or_url, q, sizeof(q), 200));
        return NULL;
    }
    why = url_split(name_or_url, &u);
    if (why != NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "invalid CA directory URL \"%s\": %s",
                     acme_quote(name_or_url, q, sizeof(q), 200), why);
        return NULL;
    }

    /* ACME v1 is gone: say what to use instead */
    v2 = NULL;
    if (host_is(&u, "acme-v01.api.letsencrypt.org")) {
        v2 = LE_V2_URL " (or letsencrypt)";
    } else if (host_is(&u, "acme-staging.api.letsencrypt.org")) {
        v2 = LE_V2_STAGING_URL " (or letsencrypt-staging)";
    } else if (u.host_len > 16
               && strncasecmp(u.host + u.host_len - 16, ".letsencrypt.org", 16) == 0
               && strncmp(u.path, "/acme/directory", 15) == 0)
    {
        v2 = LE_V2_URL " (or letsencrypt)";
    }
    if (v2 != NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "ACME v1 (\"%s\") is retired; use %s",
                     acme_quote(name_or_url, q, sizeof(q), 200), v2);
        return NULL;
    }

    if (!u.https && !host_is_loopback(&u)) {
        acme_err_set(err, ACME_ERR_CONFIG, "CA directory URL \"%s\" must use https:// (http:// only for "
                     "localhost)", acme_quote(name_or_url, q, sizeof(q), 200));
        return NULL;
    }
    url = acme_strdup(name_or_url);
    if (url == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    }
    return url;
}

char *
acme_ca_id(const char *directory_url)
{
    const char  *s, *p;
    char        *id;
    size_t       len;

    if (directory_url == NULL) {
        return NULL;
    }
    s = directory_url;
    p = strstr(s, "://");
    if (p != NULL) {
        s = p + 3;
    }
    len = strlen(s);
    while (len > 0 && s[len - 1] == '/') {
        len--;
    }
    id = acme_store_name_make(s, len);
    return id;
}
