/* HTTP requests to the CA: one curl easy handle each, bounded, with ACME's headers picked out. */
#include "acme_http.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <curl/curl.h>

#include "acme_resolve.h"
#include "acme_version.h"

struct acme_http_req_s {
    acme_loop_t         *loop;
    CURL                *easy;
    struct curl_slist   *headers;
    char                *body;
    size_t               max_body;
    int                  too_big;
    acme_http_resp_t     resp;
    acme_http_done_pt    done;
    void                *arg;
    acme_resolve_wait_t *wait;          /* the host resolves the URL's host name */
    char                *resolve_key;   /* "host:port:" of CURLOPT_RESOLVE */
    struct curl_slist   *resolve;
    int                  added;         /* to the multi handle */
    int                  follow;        /* redirects followed here (the host resolves names) */
    int                  redirects;
    char                 errbuf[CURL_ERROR_SIZE];
};

#define ACME_HTTP_MAX_REDIRECTS  10L

static unsigned long  request_count;
static char           user_agent[192];

/* RFC 8555 6.1: our name and version, the server we run in, the HTTP library's name and version. */
void
acme_http_set_server(const char *server)
{
    char                    srv[64];
    size_t                  i, n = 0;
    curl_version_info_data *cv = curl_version_info(CURLVERSION_NOW);

    for (i = 0; server != NULL && server[i] != '\0' && n < sizeof(srv) - 1; i++) {
        if (server[i] > ' ' && server[i] < 0x7f && server[i] != '(' && server[i] != ')') {
            srv[n++] = server[i];
        }
    }
    srv[n] = '\0';
    snprintf(user_agent, sizeof(user_agent), "%s/%s%s%s%s libcurl/%s", ACME_PRODUCT, ACME_VERSION,
             n ? " (" : "", srv, n ? ")" : "", cv && cv->version ? cv->version : "unknown");
}

const char *
acme_http_user_agent(void)
{
    if (user_agent[0] == '\0') {
        acme_http_set_server(NULL);
    }
    return user_agent;
}

unsigned long
acme_http_request_count(void)
{
    return request_count;
}

static void
resp_free(acme_http_resp_t *r)
{
    size_t i;

    acme_buf_free(&r->body);
    free(r->content_type);
    free(r->location);
    free(r->replay_nonce);
    free(r->link_up);
    for (i = 0; i < r->nalternate; i++) {
        free(r->links_alternate[i]);
    }
    memset(r, 0, sizeof(*r));
}

static void
req_free(acme_http_req_t *req)
{
    curl_easy_cleanup(req->easy);
    curl_slist_free_all(req->headers);
    curl_slist_free_all(req->resolve);
    free(req->resolve_key);
    free(req->body);
    resp_free(&req->resp);
    free(req);
}

static size_t
write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    acme_http_req_t *req = userdata;
    size_t           n = size * nmemb;

    if (req->resp.body.len + n > req->max_body) {
        req->too_big = 1;
        return 0;
    }
    if (acme_buf_append(&req->resp.body, ptr, n) != 0) {
        return 0;
    }
    return n;
}

static char *
trim_dup(const char *s, size_t n)
{
    while (n > 0 && isspace((unsigned char) *s)) {
        s++;
        n--;
    }
    while (n > 0 && isspace((unsigned char) s[n - 1])) {
        n--;
    }
    return acme_strndup(s, n);
}

long
acme_http_parse_retry_after(const char *v, long now)
{
    struct tm   tm;
    char       *end;
    long        n;
    time_t      t;

    while (*v == ' ' || *v == '\t') {
        v++;
    }
    if (isdigit((unsigned char) *v)) {
        n = strtol(v, &end, 10);
        while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n') {
            end++;
        }
        if (*end != '\0' || n < 0) {
            return 0;
        }
        return n > 86400 * 7 ? 86400 * 7 : n;
    }
    memset(&tm, 0, sizeof(tm));
    end = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end == NULL) {
        return 0;
    }
    t = timegm(&tm);
    if (t <= now) {
        return 0;
    }
    return t - now > 86400 * 7 ? 86400 * 7 : (long) (t - now);
}

/* Link: <url>;rel="alternate", <url>;rel="up" (possibly several in one header). */
static void
parse_link(acme_http_resp_t *r, const char *v, size_t n)
{
    const char  *p = v, *end = v + n, *lt, *gt, *next;
    char        *url;
    int          alt, up;

    while (p < end) {
        lt = memchr(p, '<', (size_t) (end - p));
        if (lt == NULL) {
            return;
        }
        gt = memchr(lt, '>', (size_t) (end - lt));
        if (gt == NULL) {
            return;
        }
        next = memchr(gt, ',', (size_t) (end - gt));
        if (next == NULL) {
            next = end;
        }
        alt = memmem(gt, (size_t) (next - gt), "rel=\"alternate\"", 15) != NULL
              || memmem(gt, (size_t) (next - gt), "rel=alternate", 13) != NULL;
        up = memmem(gt, (size_t) (next - gt), "rel=\"up\"", 8) != NULL
             || memmem(gt, (size_t) (next - gt), "rel=up", 6) != NULL;
        if (alt || up) {
            url = acme_strndup(lt + 1, (size_t) (gt - lt - 1));
            if (url != NULL && alt && r->nalternate < ACME_HTTP_MAX_LINKS) {
                r->links_alternate[r->nalternate++] = url;
            } else if (url != NULL && up && r->link_up == NULL) {
                r->link_up = url;
            } else {
                free(url);
            }
        }
        p = next + 1;
    }
}

static size_t
header_cb(char *buf, size_t size, size_t nitems, void *userdata)
{
    acme_http_req_t   *req = userdata;
    acme_http_resp_t  *r = &req->resp;
    size_t             n = size * nitems, nlen;
    char              *colon, *v, *semi;

    if (n >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
        /* a new response (after a 100 Continue): forget earlier headers, keep the body */
        acme_buf_t body = r->body;

        memset(&r->body, 0, sizeof(r->body));
        resp_free(r);
        r->body = body;
        return n;
    }
    colon = memchr(buf, ':', n);
    if (colon == NULL) {
        return n;
    }
    nlen = (size_t) (colon - buf);
    v = colon + 1;

#define HDR_IS(name) (nlen == sizeof(name) - 1 && strncasecmp(buf, name, nlen) == 0)

    if (HDR_IS("Replay-Nonce")) {
        free(r->replay_nonce);
        r->replay_nonce = trim_dup(v, n - nlen - 1);
    } else if (HDR_IS("Location")) {
        free(r->location);
        r->location = trim_dup(v, n - nlen - 1);
    } else if (HDR_IS("Content-Type")) {
        free(r->content_type);
        r->content_type = trim_dup(v, n - nlen - 1);
        if (r->content_type != NULL) {
            semi = strchr(r->content_type, ';');
            if (semi != NULL) {
                *semi = '\0';
                while (semi > r->content_type && isspace((unsigned char) semi[-1])) {
                    *--semi = '\0';
                }
            }
            for (semi = r->content_type; *semi; semi++) {
                *semi = (char) tolower((unsigned char) *semi);
            }
        }
    } else if (HDR_IS("Retry-After")) {
        char *t = trim_dup(v, n - nlen - 1);
        if (t != NULL) {
            r->retry_after = acme_http_parse_retry_after(t, (long) time(NULL));
            free(t);
        }
    } else if (HDR_IS("Link")) {
        parse_link(r, v, n - nlen - 1);
    }
#undef HDR_IS
    return n;
}

/* The host's answer for the URL's host name, handed to curl: TLS still checks the name itself. */
static int
http_set_resolve(acme_http_req_t *req, const char *addrs)
{
    char *entry;

    entry = acme_sprintf("%s%s", req->resolve_key, addrs);
    if (entry == NULL) {
        return -1;
    }
    curl_slist_free_all(req->resolve);
    req->resolve = curl_slist_append(NULL, entry);
    free(entry);
    if (req->resolve == NULL) {
        return -1;
    }
    curl_easy_setopt(req->easy, CURLOPT_RESOLVE, req->resolve);
    return 0;
}

static void
http_resolved(void *arg, const char *addrs, const char *error)
{
    acme_http_req_t *req = arg;

    req->wait = NULL;
    if (addrs == NULL) {
        snprintf(req->errbuf, sizeof(req->errbuf), "%s", error);
        acme_http_complete(req->easy, CURLE_COULDNT_RESOLVE_HOST);
        return;
    }
    if (http_set_resolve(req, addrs) != 0 || acme_loop_add_easy(req->loop, req->easy) != 0) {
        snprintf(req->errbuf, sizeof(req->errbuf), "cannot start the request");
        acme_http_complete(req->easy, CURLE_OUT_OF_MEMORY);
        return;
    }
    req->added = 1;
}

/* 1: the request may start; 0: it waits for the host's resolver (http_resolved); -1: err. */
static int
http_resolve(acme_http_req_t *req, const char *url, acme_err_t *err)
{
    int      rc;
    char    *host = NULL, *port = NULL, *addrs = NULL;
    CURLU   *u;

    if (!acme_resolve_enabled(req->loop)) {
        return 1;
    }
    u = curl_url();
    if (u == NULL || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK
        || curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK
        || curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK)
    {
        curl_free(host);
        curl_url_cleanup(u);
        acme_err_set(err, ACME_ERR_BADRESPONSE, "refusing to fetch \"%.200s\": not a valid URL", url);
        return -1;
    }
    curl_url_cleanup(u);
    rc = 1;
    if (acme_resolve_wanted(req->loop, host)) {
        req->resolve_key = acme_sprintf("%s:%s:", host, port);
        if (req->resolve_key == NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            rc = -1;
        } else {
            rc = acme_resolve_name(req->loop, host, http_resolved, req, &addrs, &req->wait, err);
            if (rc == 1 && http_set_resolve(req, addrs) != 0) {
                acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
                rc = -1;
            }
        }
    }
    free(addrs);
    curl_free(host);
    curl_free(port);
    return rc;
}

acme_http_req_t *
acme_http_send(acme_loop_t *loop, const acme_http_conf_t *conf, const char *method,
    const char *url, const char *body, const char *accept, acme_http_done_pt done, void *arg,
    acme_err_t *err)
{
    int              rc;
    acme_http_req_t *req;
    char            *hdr;

    if (strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "refusing to fetch \"%.200s\": not an http(s) URL", url);
        return NULL;
    }
    req = calloc(1, sizeof(*req));
    if (req == NULL || (req->easy = curl_easy_init()) == NULL) {
        free(req);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    req->loop = loop;
    req->done = done;
    req->arg = arg;
    req->max_body = conf->max_body ? conf->max_body : ACME_HTTP_MAX_BODY;

    req->headers = curl_slist_append(NULL, "Expect:");
    /* RFC 8555 6.1: problem details in English; the messages we log quote them */
    req->headers = curl_slist_append(req->headers, "Accept-Language: en");
    if (accept != NULL) {
        hdr = acme_sprintf("Accept: %s", accept);
        if (hdr != NULL) {
            req->headers = curl_slist_append(req->headers, hdr);
            free(hdr);
        }
    }

    curl_easy_setopt(req->easy, CURLOPT_URL, url);
    curl_easy_setopt(req->easy, CURLOPT_PRIVATE, req);
    curl_easy_setopt(req->easy, CURLOPT_NOSIGNAL, 1L);
    /* plain http only for an http directory (on loopback: acme_urlpolicy_init); redirects lead to https */
    curl_easy_setopt(req->easy, CURLOPT_PROTOCOLS_STR, conf->https_only ? "https" : "http,https");
    curl_easy_setopt(req->easy, CURLOPT_REDIR_PROTOCOLS_STR, "https");
    if (conf->follow_redirects && strcmp(method, "GET") == 0 && acme_resolve_enabled(loop)) {
        /* libcurl would resolve the new host itself: each hop goes through the host's resolver */
        req->follow = 1;
        curl_easy_setopt(req->easy, CURLOPT_FOLLOWLOCATION, 0L);
    } else if (conf->follow_redirects && strcmp(method, "GET") == 0) {
        curl_easy_setopt(req->easy, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(req->easy, CURLOPT_MAXREDIRS, ACME_HTTP_MAX_REDIRECTS);
    } else {
        curl_easy_setopt(req->easy, CURLOPT_FOLLOWLOCATION, 0L);
    }
    curl_easy_setopt(req->easy, CURLOPT_USERAGENT, acme_http_user_agent());
    curl_easy_setopt(req->easy, CURLOPT_TIMEOUT_MS, conf->timeout_ms ? conf->timeout_ms : 30000L);
    curl_easy_setopt(req->easy, CURLOPT_CONNECTTIMEOUT_MS,
                     conf->connect_timeout_ms ? conf->connect_timeout_ms : 10000L);
    curl_easy_setopt(req->easy, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(req->easy, CURLOPT_WRITEDATA, req);
    curl_easy_setopt(req->easy, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(req->easy, CURLOPT_HEADERDATA, req);
    curl_easy_setopt(req->easy, CURLOPT_ERRORBUFFER, req->errbuf);
    curl_easy_setopt(req->easy, CURLOPT_ACCEPT_ENCODING, "");
    if (conf->ca_file != NULL) {
        curl_easy_setopt(req->easy, CURLOPT_CAINFO, conf->ca_file);
    }
    if (!conf->verify) {
        curl_easy_setopt(req->easy, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(req->easy, CURLOPT_SSL_VERIFYHOST, 0L);
    }

    if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(req->easy, CURLOPT_NOBODY, 1L);
    } else if (strcmp(method, "POST") == 0) {
        req->body = acme_strdup(body ? body : "");
        req->headers = curl_slist_append(req->headers, "Content-Type: application/jose+json");
        curl_easy_setopt(req->easy, CURLOPT_POST, 1L);
        curl_easy_setopt(req->easy, CURLOPT_POSTFIELDS, req->body);
        curl_easy_setopt(req->easy, CURLOPT_POSTFIELDSIZE, (long) strlen(req->body));
    }
    curl_easy_setopt(req->easy, CURLOPT_HTTPHEADER, req->headers);

    rc = http_resolve(req, url, err);
    if (rc < 0) {
        req_free(req);
        return NULL;
    }
    if (rc == 1) {
        if (acme_loop_add_easy(loop, req->easy) != 0) {
            req_free(req);
            acme_err_set(err, ACME_ERR_INTERNAL, "cannot start a request to %.200s", url);
            return NULL;
        }
        req->added = 1;
    }
    request_count++;
    acme_log(loop, ACME_LOG_DEBUG, "acme: %s %s", method, url);
    return req;
}

void
acme_http_cancel(acme_http_req_t *req)
{
    if (req == NULL) {
        return;
    }
    if (req->wait != NULL) {
        acme_resolve_cancel(req->loop, req->wait);
    }
    if (req->added) {
        acme_loop_remove_easy(req->loop, req->easy);
    }
    req_free(req);
}

/*
 * A redirect of a GET that follows them, when the host resolves names: the same easy handle goes on to the
 * next URL (https only, at most ACME_HTTP_MAX_REDIRECTS), its host resolved first. 1: it goes on; 0: the
 * request completes now (*curl_result may turn into an error).
 */
static int
http_redirect(acme_http_req_t *req, int *curl_result)
{
    int          rc;
    long         status = 0;
    char        *next = NULL, *url;
    acme_err_t   err;

    curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status != 301 && status != 302 && status != 303 && status != 307 && status != 308) {
        return 0;
    }
    if (curl_easy_getinfo(req->easy, CURLINFO_REDIRECT_URL, &next) != CURLE_OK || next == NULL) {
        return 0;
    }
    if (++req->redirects > ACME_HTTP_MAX_REDIRECTS) {
        snprintf(req->errbuf, sizeof(req->errbuf), "more than %ld redirects", ACME_HTTP_MAX_REDIRECTS);
        *curl_result = CURLE_TOO_MANY_REDIRECTS;
        return 0;
    }
    if (strncmp(next, "https://", 8) != 0) {
        snprintf(req->errbuf, sizeof(req->errbuf), "redirected to \"%.200s\", not https: refused", next);
        *curl_result = CURLE_UNSUPPORTED_PROTOCOL;
        return 0;
    }
    url = acme_strdup(next);
    if (url == NULL) {
        *curl_result = CURLE_OUT_OF_MEMORY;
        return 0;
    }
    acme_log(req->loop, ACME_LOG_DEBUG, "acme: redirected to %s", url);
    resp_free(&req->resp);
    curl_easy_setopt(req->easy, CURLOPT_URL, url);
    free(req->resolve_key);
    req->resolve_key = NULL;
    rc = http_resolve(req, url, &err);
    free(url);
    if (rc == 1) {
        if (acme_loop_add_easy(req->loop, req->easy) != 0) {
            snprintf(req->errbuf, sizeof(req->errbuf), "cannot start the request");
            *curl_result = CURLE_OUT_OF_MEMORY;
            return 0;
        }
        req->added = 1;
    } else if (rc < 0) {
        snprintf(req->errbuf, sizeof(req->errbuf), "%.200s", err.msg);
        *curl_result = CURLE_URL_MALFORMAT;
        return 0;
    }
    return 1;
}

void
acme_http_complete(void *easy, int curl_result)
{
    acme_http_req_t *req = NULL;
    long             status = 0;

    curl_easy_getinfo((CURL *) easy, CURLINFO_PRIVATE, (char **) &req);
    if (req == NULL) {
        return;
    }
    req->added = 0;
    if (curl_result == CURLE_OK && req->follow && http_redirect(req, &curl_result)) {
        return;
    }
    if (curl_result == CURLE_OK) {
        curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &status);
        req->resp.ok = 1;
        req->resp.status = status;
    } else if (req->too_big) {
        snprintf(req->resp.errmsg, sizeof(req->resp.errmsg),
                 "response body larger than %zu bytes", req->max_body);
        req->resp.ok = 0;
        req->resp.status = -1;      /* the CA answered, but garbage */
    } else {
        snprintf(req->resp.errmsg, sizeof(req->resp.errmsg), "%s",
                 req->errbuf[0] ? req->errbuf : curl_easy_strerror((CURLcode) curl_result));
    }
    if (req->resp.body.data == NULL) {
        acme_buf_append(&req->resp.body, "", 0);
    }
    req->done(&req->resp, req->arg);
    req_free(req);
}
