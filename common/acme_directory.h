/* The ACME directory (RFC 8555 7.1.1), CA names, and directory URL checks. */
#ifndef ACME_DIRECTORY_H
#define ACME_DIRECTORY_H

#include <stddef.h>
#include "acme_err.h"

typedef struct {
    char   *new_nonce;
    char   *new_account;
    char   *new_order;
    char   *new_authz;          /* optional */
    char   *revoke_cert;
    char   *key_change;
    char   *renewal_info;       /* RFC 9773, optional */
    char   *terms_of_service;   /* meta.termsOfService, optional */
    char   *website;            /* meta.website, optional */
    char   *caa_identity;       /* meta.caaIdentities[0] (dns-persist-01's issuer-domain-name), optional */
    int     eab_required;       /* meta.externalAccountRequired */
    char  **profiles;           /* names from meta.profiles (object keys), optional */
    char  **profile_descs;      /* their descriptions */
    size_t  nprofiles;
} acme_directory_t;

/* Unknown members are ignored. newNonce, newAccount and newOrder must be absolute http(s) URLs. */
int  acme_directory_parse(const char *body, size_t len, acme_directory_t *dir, acme_err_t *err);
void acme_directory_free(acme_directory_t *dir);
/* 1 when the directory offers this profile. */
int  acme_directory_has_profile(const acme_directory_t *dir, const char *name);

/*
 * Turn what the admin wrote (a CA name such as "letsencrypt", or a directory URL) into a directory URL.
 * Known names: letsencrypt, letsencrypt-staging, zerossl, google, google-staging, buypass,
 * buypass-staging. An ACME v1 URL is refused with a message naming the v2 URL to use. URLs must be
 * https://, or http:// to a loopback host. Returns a malloc'd URL or NULL with err.
 */
char *acme_ca_resolve(const char *name_or_url, acme_err_t *err);

/*
 * A short stable id for a CA, used as the accounts/<ca-id>/ directory name: host[_port][_path] with
 * characters outside [A-Za-z0-9.-] replaced by '_' (e.g. "acme-v02.api.letsencrypt.org_directory").
 * malloc'd.
 */
char *acme_ca_id(const char *directory_url);

/* 1 when s is an absolute http:// or https:// URL with a host (optional port), no userinfo, and no
 * spaces, control or non-ASCII characters. */
int acme_url_valid(const char *s);
/* 1 when s is a valid URL (as above) whose host is loopback: localhost, 127.0.0.0/8 or [::1]. */
int acme_url_loopback(const char *s);
/* "scheme://host:port" of a valid URL, lowercase, the default port explicit. 0, or -1 (invalid, too long). */
int acme_url_origin(const char *s, char *out, size_t n);

/*
 * Fetch and parse a directory once, blocking (on a private loop), for configuration checks such as
 * "the CA has terms of service". timeout_ms bounds the whole fetch (0: 5 s). 0 with dir filled (free with
 * acme_directory_free), -1 with err naming the URL. Not for an event loop's thread.
 */
int acme_directory_fetch(const char *directory_url, const char *ca_file, int verify, long timeout_ms,
    acme_directory_t *dir, acme_err_t *err);

#endif
