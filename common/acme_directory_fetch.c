/* One blocking directory fetch on a private loop, for configuration-time checks (nginx -t). */
#include "acme_directory.h"
#include "acme_http.h"
#include "acme_loop.h"

#include <string.h>

typedef struct {
    const char        *url;
    acme_directory_t  *dir;
    acme_err_t        *err;
    int                rc;
    volatile int       done;
} fetch_t;

static void
fetch_done(const acme_http_resp_t *resp, void *arg)
{
    fetch_t  *f = arg;

    f->done = 1;
    if (!resp->ok) {
        acme_err_set(f->err, ACME_ERR_NETWORK, "cannot reach the CA at %s: %s", f->url, resp->errmsg);
        return;
    }
    if (resp->status != 200) {
        acme_err_set(f->err, ACME_ERR_CA, "directory %s: HTTP status %ld", f->url, resp->status);
        return;
    }
    if (resp->content_type == NULL || strcmp(resp->content_type, "application/json") != 0) {
        acme_err_set(f->err, ACME_ERR_BADRESPONSE, "directory %s: expected application/json, got \"%.60s\"",
                     f->url, resp->content_type ? resp->content_type : "(none)");
        return;
    }
    if (acme_directory_parse(resp->body.data, resp->body.len, f->dir, f->err) != 0) {
        acme_err_prefix(f->err, "directory %s", f->url);
        return;
    }
    f->rc = 0;
}

int
acme_directory_fetch(const char *directory_url, const char *ca_file, int verify, long timeout_ms,
    acme_directory_t *dir, acme_err_t *err)
{
    acme_loop_t       *loop;
    acme_http_conf_t   conf;
    acme_http_req_t   *req;
    fetch_t            f;

    memset(dir, 0, sizeof(*dir));
    if (timeout_ms <= 0) {
        timeout_ms = 5000;
    }
    loop = acme_loop_new(NULL, ACME_LOG_ERR, err);
    if (loop == NULL) {
        return -1;
    }
    memset(&conf, 0, sizeof(conf));
    conf.ca_file = ca_file;
    conf.verify = verify;
    conf.timeout_ms = timeout_ms;
    conf.connect_timeout_ms = timeout_ms;
    conf.https_only = strncmp(directory_url, "https://", 8) == 0;
    conf.follow_redirects = 1;

    memset(&f, 0, sizeof(f));
    f.url = directory_url;
    f.dir = dir;
    f.err = err;
    f.rc = -1;

    req = acme_http_send(loop, &conf, "GET", directory_url, NULL, "application/json", fetch_done, &f, err);
    if (req == NULL) {
        acme_loop_free(loop);
        return -1;
    }
    acme_loop_run(loop, &f.done, timeout_ms + 1000);
    if (!f.done) {
        acme_http_cancel(req);
        acme_err_set(err, ACME_ERR_NETWORK, "directory %s: no answer within %ld ms", directory_url, timeout_ms);
    }
    acme_loop_free(loop);
    if (f.rc != 0) {
        acme_directory_free(dir);
        memset(dir, 0, sizeof(*dir));
    }
    return f.rc;
}
