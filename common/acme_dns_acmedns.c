/*
 * The acme-dns publisher (github.com/joohoi/acme-dns, as certbot, lego and Caddy use it): the account's
 * user and key in X-Api-User/X-Api-Key, `POST <url>/update` with {"subdomain", "txt"}. The admin made
 * _acme-challenge.<domain> a CNAME to the account's fulldomain once; the value lands there. Blocking
 * (libcurl's easy interface, with the core's User-Agent): the DNS thread only, never the event loop.
 */
#include "acme_dns_int.h"
#include "acme_http.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>

#define ACMEDNS_TIMEOUT_S   30
#define ACMEDNS_BODY_MAX    4096

int
acme_dns_acmedns_check(const acme_dns_config_t *cfg, acme_err_t *err)
{
    if (cfg->acmedns_url == NULL
        || (strncasecmp(cfg->acmedns_url, "https://", 8) != 0 && strncasecmp(cfg->acmedns_url, "http://", 7) != 0))
    {
        acme_err_set(err, ACME_ERR_CONFIG, "acme-dns needs the server's URL (http:// or https://)%s%s",
                     cfg->acmedns_url ? ", not " : "", cfg->acmedns_url ? cfg->acmedns_url : "");
        return -1;
    }
    if (cfg->nacmedns == 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "acme-dns needs an account file");
        return -1;
    }
    return 0;
}

typedef struct {
    char    data[ACMEDNS_BODY_MAX];
    size_t  len;
} body_t;

static size_t
body_write(char *p, size_t size, size_t n, void *arg)
{
    body_t  *b = arg;
    size_t   len = size * n, take = len < sizeof(b->data) - 1 - b->len ? len : sizeof(b->data) - 1 - b->len;

    memcpy(b->data + b->len, p, take);
    b->len += take;
    b->data[b->len] = '\0';
    return len;
}

static int
same_name(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);

    la -= la > 0 && a[la - 1] == '.';
    lb -= lb > 0 && b[lb - 1] == '.';
    return la == lb && strncasecmp(a, b, la) == 0;
}

/* The answer's text, printable and short, for a message. */
static void
excerpt(const body_t *b, char *dst, size_t size)
{
    size_t i, n = b->len < size - 1 ? b->len : size - 1;

    for (i = 0; i < n; i++) {
        dst[i] = isprint((unsigned char) b->data[i]) ? b->data[i] : ' ';
    }
    dst[n] = '\0';
}

int
acme_dns_acmedns_update(const acme_dns_config_t *cfg, const acme_dns_record_t *rec,
    const acme_dns_target_t *t, acme_err_t *err)
{
    const acme_acmedns_account_t  *a;
    const char                    *ident;
    struct curl_slist             *hdrs = NULL;
    CURL                          *curl = NULL;
    CURLcode                       cc;
    body_t                        *body = NULL;
    json_t                        *req = NULL;
    char                          *url = NULL, *payload = NULL, *huser = NULL, *hkey = NULL, ex[200];
    long                           status = 0;
    int                            rc = -1;

    ident = rec->ident != NULL ? rec->ident
            : strncmp(rec->name, "_acme-challenge.", 16) == 0 ? rec->name + 16 : rec->name;
    a = acme_acmedns_account(cfg, ident);
    if (a == NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "the acme-dns account file has no account for %s", ident);
        return -1;
    }
    /* the value is published at fulldomain: the challenge's name must lead there */
    if (!same_name(t->fqdn, a->fulldomain)) {
        acme_err_set(err, ACME_ERR_CONFIG, "%s is not a CNAME to the acme-dns account's %s (it leads to %s): "
                     "create `%s CNAME %s.`", rec->name, a->fulldomain, t->fqdn, rec->name, a->fulldomain);
        return -1;
    }
    url = acme_sprintf("%s%supdate", cfg->acmedns_url,
                       cfg->acmedns_url[strlen(cfg->acmedns_url) - 1] == '/' ? "" : "/");
    req = json_pack("{s:s, s:s}", "subdomain", a->subdomain, "txt", rec->value);
    payload = req != NULL ? json_dumps(req, JSON_COMPACT) : NULL;
    huser = acme_sprintf("X-Api-User: %s", a->username);
    hkey = acme_sprintf("X-Api-Key: %s", a->password);
    body = calloc(1, sizeof(*body));
    curl = curl_easy_init();
    if (url == NULL || payload == NULL || huser == NULL || hkey == NULL || body == NULL || curl == NULL
        || (hdrs = curl_slist_append(hdrs, "Content-Type: application/json")) == NULL
        || curl_slist_append(hdrs, huser) == NULL || curl_slist_append(hdrs, hkey) == NULL)
    {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, payload);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, acme_http_user_agent());
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, body_write);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, body);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, (long) ACMEDNS_TIMEOUT_S);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
    cc = curl_easy_perform(curl);
    if (cc != CURLE_OK) {
        acme_err_set(err, ACME_ERR_NETWORK, "acme-dns %s: %s", url, curl_easy_strerror(cc));
        goto done;
    }
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) {
        excerpt(body, ex, sizeof(ex));
        acme_err_set(err, status == 401 || status == 403 || status == 400 ? ACME_ERR_CONFIG : ACME_ERR_NETWORK,
                     "acme-dns %s (user %s, subdomain %s): HTTP %ld%s%s%s", url, a->username, a->subdomain,
                     status, status == 401 ? " (the server refused the account's user or key)" : "",
                     ex[0] ? ": " : "", ex);
        goto done;
    }
    rc = 0;
done:
    curl_slist_free_all(hdrs);
    if (curl != NULL) {
        curl_easy_cleanup(curl);
    }
    if (hkey != NULL) {
        OPENSSL_cleanse(hkey, strlen(hkey));
        free(hkey);
    }
    free(huser);
    free(url);
    free(payload);
    free(body);
    json_decref(req);
    return rc;
}
