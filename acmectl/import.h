/*
 * acmectl import: certificates and accounts of certbot and mod_md taken into the store, so that the
 * servers serve them at once and renew them with the same account (no order, no new account).
 */
#ifndef ACMECTL_IMPORT_H
#define ACMECTL_IMPORT_H

#include <stddef.h>
#include <sys/types.h>
#include <jansson.h>
#include <openssl/evp.h>
#include "acme_err.h"
#include "acme_store.h"

/*
 * Another tool's directory, only read (import_src.c): every path resolved beneath it one name at a time;
 * a symbolic link is followed only when it stays inside the directory (certbot's live/ links into
 * archive/); root reads a directory another user owns as that user, and refuses directories that others
 * than their owner (or root) may write in.
 */
typedef struct {
    char    *root;          /* as given, for messages */
    char    *real;          /* its absolute path, for the tool's absolute links */
    int      dfd;
    int      as_owner;      /* root reading another user's directory: with that user's filesystem ids */
    uid_t    uid;
    gid_t    gid;
} import_src_t;

int  import_src_open(import_src_t *src, const char *dir, acme_err_t *err);
void import_src_close(import_src_t *src);
/* A regular file beneath the directory (at most 1 MiB). 0, 1 missing (err says which), -1 with err. */
int  import_src_read(import_src_t *src, const char *rel, char **data, size_t *len, acme_err_t *err);
/* The names in directory rel, sorted, without dot names. 0, 1 missing, -1 with err. */
int  import_src_list(import_src_t *src, const char *rel, char ***names, size_t *n, acme_err_t *err);

/* One run of acmectl import. */
typedef struct {
    acme_store_t    *dst;       /* NULL with --dry-run */
    const char      *tool;      /* "certbot", "mod_md" */
    int              dry_run;
    size_t           certs;     /* imported (or would be) */
    size_t           accounts;
    size_t           skipped;
    int              failed;    /* the store failed: stop */
} import_run_t;

/* A certificate (chain leaf first, key) that what names in messages; first: the name to list first (the
 * tool's name for it), ca: the directory URL of the CA that issued it. 0 or -1 when the store failed. */
int  import_take_cert(import_run_t *r, const char *what, const char *first, const char *ca, const char *chain,
    size_t chain_len, const char *key, size_t key_len, const char *preferred_chain);
/* An account of the CA ca: its key, its URL (NULL: looked up by the key), contacts (a JSON array of URIs as
 * both tools keep it, or NULL; other elements are ignored). 0 or -1 (store). */
int  import_take_account(import_run_t *r, const char *what, const char *ca, EVP_PKEY *key, const char *url,
    const json_t *contact);
void import_skip(import_run_t *r, const char *what, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The tools' layouts (import_certbot.c, import_mod_md.c). 0 or -1 when the store failed. */
int  import_certbot(import_run_t *r, import_src_t *src);
int  import_mod_md(import_run_t *r, import_src_t *src);

/* acmectl import [--dry-run] certbot|mod_md [DIR] into dst (NULL with --dry-run). Exit status. */
int  import_command(acme_store_t *dst, int dry_run, const char *tool, const char *dir);

#endif
