/*
 * Which URLs the client follows. The directory URL sets the rules for every URL the CA hands out
 * (directory entries, Location, Link, and the URL members of its JSON: account orders, order
 * authorizations / finalize / certificate, challenge url):
 *   - an https directory: every URL must be https;
 *   - an http directory (allowed on loopback only, for tests): https, or http to a loopback host.
 * A URL on another origin than the directory's is allowed (CAs use other hosts) and logged at info once.
 */
#ifndef ACME_URLPOLICY_H
#define ACME_URLPOLICY_H

#include "acme_err.h"
#include "acme_loop.h"
#include "acme_http.h"
#include "acme_directory.h"

#define ACME_URLPOLICY_ORIGIN_MAX  300
#define ACME_URLPOLICY_SEEN        8

typedef struct {
    char    directory[ACME_URLPOLICY_ORIGIN_MAX];
    char    origin[ACME_URLPOLICY_ORIGIN_MAX];   /* the directory's scheme://host:port */
    int     https_only;
    char    seen[ACME_URLPOLICY_SEEN][ACME_URLPOLICY_ORIGIN_MAX];   /* other origins already logged */
    size_t  nseen;
} acme_urlpolicy_t;

/* The rules for a directory URL; -1 (ACME_ERR_CONFIG) for an invalid one or http off loopback. */
int acme_urlpolicy_init(acme_urlpolicy_t *p, const char *directory_url, acme_err_t *err);
/* 0 when url may be followed (loop, when not NULL, hears of another origin); -1 with err naming field and
 * url (ACME_ERR_BADRESPONSE: the CA handed it out). */
int acme_urlpolicy_check(acme_urlpolicy_t *p, acme_loop_t *loop, const char *field, const char *url,
    acme_err_t *err);
/* Every URL in a directory. */
int acme_urlpolicy_check_directory(acme_urlpolicy_t *p, acme_loop_t *loop, const acme_directory_t *dir,
    acme_err_t *err);
/* Every URL in a CA's answer: Location, Link (alternate, up), and the URL members of a JSON body. */
int acme_urlpolicy_check_resp(acme_urlpolicy_t *p, acme_loop_t *loop, const acme_http_resp_t *resp,
    acme_err_t *err);

#endif
