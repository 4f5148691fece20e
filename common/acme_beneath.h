/*
 * Paths beneath a directory descriptor, never following a symbolic link.
 *
 * The state directory belongs to the worker user: whoever runs as that user can plant a symbolic link in
 * it. Every store path is therefore resolved beneath the store's directory descriptor, one plain name at
 * a time (openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS where the kernel has it, else openat with
 * O_NOFOLLOW | O_DIRECTORY per component), and files are then acted on with the *at() calls relative to
 * the descriptor found. A symbolic link on the way is an error naming it, never followed.
 */
#ifndef ACME_BENEATH_H
#define ACME_BENEATH_H

#include <sys/types.h>
#include "acme_err.h"

/* A missing directory on the way (with create unset): err says which; the caller may treat it as absent. */
#define ACME_BENEATH_MISSING  (-2)

/*
 * Opens the directory rel beneath dirfd (rel: plain names joined by single '/', no "." or "..", not
 * absolute; "" is dirfd itself). create: missing directories are made, mode 0700. shown: how dirfd is
 * named in messages. Returns a new descriptor (O_CLOEXEC), -1 with err, or ACME_BENEATH_MISSING.
 */
int acme_beneath_dir(int dirfd, const char *rel, int create, const char *shown, acme_err_t *err);

/*
 * The directory holding rel's last name, opened as acme_beneath_dir does; *leaf points into rel at that
 * name. Returns a descriptor, -1 with err, or ACME_BENEATH_MISSING.
 */
int acme_beneath_parent(int dirfd, const char *rel, int create, const char **leaf, const char *shown,
    acme_err_t *err);

/*
 * A directory the store writes in must be its owner's alone: owned by uid, a looser mode is tightened to
 * 0700 (when tighten is set); owned by another user, it is refused when the group or others may write.
 * shown names it in messages. 0 or -1 with err.
 */
int acme_beneath_dir_check(int fd, uid_t uid, int tighten, const char *shown, acme_err_t *err);

#endif
