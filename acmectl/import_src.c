/*
 * Reading another tool's directory for acmectl import (see import.h): nothing there is ever changed.
 *
 * certbot's live/NAME/ files are symbolic links into archive/NAME/ (relative, "../../archive/NAME/cert3.pem")
 * and an old accounts/<server>/ may be a link to the ACME v1 server's accounts: such links are resolved
 * here by name, one component at a time beneath the directory's descriptor, and followed only while they
 * stay inside it. Run by root, a directory on the way that others may write in is refused (a planted link
 * or file would be read as root), and a source directory another user owns is read as that user.
 */
#include "import.h"
#include "acme_beneath.h"

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#ifdef __linux__
#include <sys/fsuid.h>
#endif

#define SRC_FILE_MAX    (1024 * 1024)
#define SRC_LINKS_MAX   16
#define SRC_DEPTH_MAX   32

typedef struct {
    int    on;
    uid_t  uid;
    gid_t  gid;
} src_ids_t;

static void
src_enter(import_src_t *src, src_ids_t *save)
{
    save->on = 0;
#ifdef __linux__
    if (src->as_owner) {
        save->gid = (gid_t) setfsgid(src->gid);
        save->uid = (uid_t) setfsuid(src->uid);
        save->on = 1;
    }
#endif
}

static void
src_leave(src_ids_t *save)
{
#ifdef __linux__
    if (save->on) {
        setfsuid(save->uid);
        setfsgid(save->gid);
    }
#endif
}

/* Run by root: a directory that another user than the one reading (or root) owns, or that group or others
 * may write in, could hold what that user planted. */
static int
src_dir_check(import_src_t *src, int fd, const char *shown, acme_err_t *err)
{
    struct stat  sb;

    if (geteuid() != 0) {
        return 0;
    }
    if (fstat(fd, &sb) != 0) {
        acme_err_set(err, ACME_ERR_STORE, "cannot stat %s: %s", shown, strerror(errno));
        return -1;
    }
    if ((sb.st_uid != 0 && sb.st_uid != src->uid) || (sb.st_mode & 022) != 0) {
        acme_err_set(err, ACME_ERR_STORE, "%s belongs to uid %ld with mode %04o: others than its owner may "
                     "write in it, not read as root", shown, (long) sb.st_uid, (unsigned) (sb.st_mode & 07777));
        return -1;
    }
    return 0;
}

int
import_src_open(import_src_t *src, const char *dir, acme_err_t *err)
{
    struct stat  sb;
    size_t       len;

    memset(src, 0, sizeof(*src));
    src->dfd = -1;
    len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') {
        len--;
    }
    src->root = acme_strndup(dir, len);
    src->real = realpath(dir, NULL);
    if (src->root == NULL || src->real == NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "%s: %s", dir, src->root ? strerror(errno) : "out of memory");
        import_src_close(src);
        return -1;
    }
    /* the path the admin named, links included; what is beneath it is resolved by name */
    src->dfd = open(src->real, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (src->dfd < 0 || fstat(src->dfd, &sb) != 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "%s: %s", src->root, strerror(errno));
        import_src_close(src);
        return -1;
    }
    src->uid = geteuid();
    src->gid = getegid();
    if (src->uid == 0 && sb.st_uid != 0) {
        /* certbot --config-dir of a user: read as that user, so that root reads nothing more than it could */
        src->as_owner = 1;
        src->uid = sb.st_uid;
        src->gid = sb.st_gid;
    }
    if (src_dir_check(src, src->dfd, src->root, err) != 0) {
        import_src_close(src);
        return -1;
    }
    return 0;
}

void
import_src_close(import_src_t *src)
{
    if (src->dfd >= 0) {
        close(src->dfd);
    }
    free(src->root);
    free(src->real);
    memset(src, 0, sizeof(*src));
    src->dfd = -1;
}

/* Components of a path, in a fixed array. */
typedef struct {
    char    *c[SRC_DEPTH_MAX];
    size_t   n;
} src_path_t;

static void
path_free(src_path_t *p)
{
    while (p->n > 0) {
        free(p->c[--p->n]);
    }
}

/* Prepends the components of s (in front of what is left to resolve: q holds them last first). */
static int
path_push_text(src_path_t *q, const char *s)
{
    const char  *end = s + strlen(s), *p;
    size_t       len;

    /* pushed from the end, so that the first component is on top */
    while (end > s) {
        while (end > s && end[-1] == '/') {
            end--;
        }
        for (p = end; p > s && p[-1] != '/'; p--) {
            /* find the start of the last component */
        }
        len = (size_t) (end - p);
        if (len > 0) {
            if (q->n == SRC_DEPTH_MAX || (q->c[q->n] = acme_strndup(p, len)) == NULL) {
                return -1;
            }
            q->n++;
        }
        end = p;
    }
    return 0;
}

static char *
path_join(const src_path_t *p, size_t n)
{
    acme_buf_t  b;
    size_t      i;

    memset(&b, 0, sizeof(b));
    for (i = 0; i < n; i++) {
        if (acme_buf_printf(&b, "%s%s", i ? "/" : "", p->c[i]) != 0) {
            acme_buf_free(&b);
            return NULL;
        }
    }
    return b.data ? acme_buf_steal(&b) : acme_strdup("");
}

/*
 * Resolves rel beneath the directory, following links that stay inside it; *parent is the directory that
 * holds the last name (a descriptor) and *leaf that name (malloc'd). 0, 1 missing, -1 with err.
 */
static int
src_resolve(import_src_t *src, const char *rel, int *parent, char **leaf, acme_err_t *err)
{
    src_path_t   q, done;
    struct stat  sb;
    char         target[PATH_MAX], *name, *dir = NULL, shown[1400];
    size_t       rl;
    ssize_t      tl;
    int          fd = -1, links = 0, rc = -1;

    memset(&q, 0, sizeof(q));
    memset(&done, 0, sizeof(done));
    if (path_push_text(&q, rel) != 0) {
        acme_err_set(err, ACME_ERR_INPUT, "%s/%s: too deep", src->root, rel);
        goto out;
    }
    while (q.n > 0) {
        name = q.c[--q.n];
        if (strcmp(name, ".") == 0) {
            free(name);
            continue;
        }
        if (strcmp(name, "..") == 0) {
            free(name);
            if (done.n == 0) {
                acme_err_set(err, ACME_ERR_STORE, "%s/%s leads out of %s: not followed", src->root, rel,
                             src->root);
                goto out;
            }
            free(done.c[--done.n]);
            continue;
        }
        free(dir);
        dir = path_join(&done, done.n);
        if (dir == NULL) {
            free(name);
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            goto out;
        }
        if (fd >= 0) {
            close(fd);
        }
        snprintf(shown, sizeof(shown), "%s%s%s", src->root, dir[0] ? "/" : "", dir);
        fd = acme_beneath_dir(src->dfd, dir, 0, src->root, err);
        if (fd < 0 || src_dir_check(src, fd, shown, err) != 0) {
            free(name);
            rc = fd == ACME_BENEATH_MISSING ? 1 : -1;
            goto out;
        }
        if (fstatat(fd, name, &sb, AT_SYMLINK_NOFOLLOW) != 0) {
            rc = errno == ENOENT ? 1 : -1;
            acme_err_set(err, ACME_ERR_STORE, "%s/%s: %s", shown, name, strerror(errno));
            free(name);
            goto out;
        }
        if (!S_ISLNK(sb.st_mode) && q.n == 0) {
            *leaf = name;       /* the last name: the caller opens it, never following a link */
            *parent = fd;
            fd = -1;
            rc = 0;
            goto out;
        }
        if (!S_ISLNK(sb.st_mode)) {
            if (done.n == SRC_DEPTH_MAX) {
                acme_err_set(err, ACME_ERR_INPUT, "%s/%s: too deep", src->root, rel);
                free(name);
                goto out;
            }
            done.c[done.n++] = name;
            continue;
        }
        tl = readlinkat(fd, name, target, sizeof(target) - 1);
        if (tl < 0 || ++links > SRC_LINKS_MAX) {
            acme_err_set(err, ACME_ERR_STORE, "%s/%s: %s", shown, name, tl < 0 ? strerror(errno)
                         : "too many symbolic links");
            free(name);
            goto out;
        }
        free(name);
        target[tl] = '\0';
        if (target[0] == '/') {
            rl = strlen(src->real);
            if (strncmp(target, src->real, rl) != 0 || (target[rl] != '/' && target[rl] != '\0')) {
                acme_err_set(err, ACME_ERR_STORE, "%s/%s is a link out of %s (to %s): not followed", src->root,
                             rel, src->root, target);
                goto out;
            }
            path_free(&done);
            memmove(target, target + rl, strlen(target + rl) + 1);
        }
        if (path_push_text(&q, target) != 0) {
            acme_err_set(err, ACME_ERR_INPUT, "%s/%s: too deep", src->root, rel);
            goto out;
        }
    }
    acme_err_set(err, ACME_ERR_INPUT, "%s/%s: not a file name", src->root, rel);

out:
    if (fd >= 0) {
        close(fd);
    }
    free(dir);
    path_free(&q);
    path_free(&done);
    return rc;
}

int
import_src_read(import_src_t *src, const char *rel, char **data, size_t *len, acme_err_t *err)
{
    struct stat  sb;
    src_ids_t    ids;
    char        *leaf = NULL, *buf = NULL;
    size_t       got = 0;
    ssize_t      n;
    int          dfd = -1, fd = -1, rc;

    *data = NULL;
    *len = 0;
    src_enter(src, &ids);
    rc = src_resolve(src, rel, &dfd, &leaf, err);
    if (rc != 0) {
        goto done;
    }
    rc = -1;
    fd = openat(dfd, leaf, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        rc = errno == ENOENT ? 1 : -1;
        acme_err_set(err, ACME_ERR_STORE, "%s/%s: %s", src->root, rel, errno == ELOOP
                     ? "a symbolic link where the file was expected" : strerror(errno));
        goto done;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size > SRC_FILE_MAX) {
        acme_err_set(err, ACME_ERR_STORE, "%s/%s: not a regular file of at most 1 MiB", src->root, rel);
        goto done;
    }
    buf = malloc((size_t) sb.st_size + 1);
    if (buf == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }
    while (got < (size_t) sb.st_size && (n = read(fd, buf + got, (size_t) sb.st_size - got)) > 0) {
        got += (size_t) n;
    }
    if (got != (size_t) sb.st_size) {
        acme_err_set(err, ACME_ERR_STORE, "%s/%s: cannot read it", src->root, rel);
        acme_free_secret(buf, (size_t) sb.st_size + 1);
        buf = NULL;
        goto done;
    }
    buf[got] = '\0';
    *data = buf;
    *len = got;
    rc = 0;

done:
    src_leave(&ids);
    if (fd >= 0) {
        close(fd);
    }
    if (dfd >= 0) {
        close(dfd);
    }
    free(leaf);
    return rc;
}

static int
name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *) a, *(char *const *) b);
}

int
import_src_list(import_src_t *src, const char *rel, char ***names, size_t *n, acme_err_t *err)
{
    src_ids_t       ids;
    DIR            *d = NULL;
    struct dirent  *de;
    char           *leaf = NULL, **v = NULL, **nv, shown[1400];
    size_t          cap = 0;
    int             dfd = -1, fd = -1, rc;

    *names = NULL;
    *n = 0;
    src_enter(src, &ids);
    if (rel[0] == '\0') {
        fd = dup(src->dfd);
        rc = fd < 0 ? -1 : 0;
    } else {
        rc = src_resolve(src, rel, &dfd, &leaf, err);
        if (rc == 0) {
            fd = openat(dfd, leaf, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (fd < 0) {
                rc = errno == ENOENT ? 1 : -1;
                acme_err_set(err, ACME_ERR_STORE, "%s/%s: %s", src->root, rel, strerror(errno));
            } else {
                snprintf(shown, sizeof(shown), "%s/%s", src->root, rel);
                rc = src_dir_check(src, fd, shown, err);
            }
        }
    }
    if (rc != 0) {
        goto done;
    }
    rc = -1;
    d = fdopendir(fd);
    if (d == NULL) {
        acme_err_set(err, ACME_ERR_STORE, "%s/%s: %s", src->root, rel, strerror(errno));
        goto done;
    }
    fd = -1;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') {
            continue;
        }
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            nv = realloc(v, cap * sizeof(char *));
            if (nv == NULL) {
                goto oom;
            }
            v = nv;
        }
        if ((v[*n] = acme_strdup(de->d_name)) == NULL) {
            goto oom;
        }
        (*n)++;
    }
    if (*n > 0) {
        qsort(v, *n, sizeof(char *), name_cmp);
    }
    *names = v;
    v = NULL;
    rc = 0;
    goto done;

oom:
    acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    acme_store_list_free(v, *n);
    v = NULL;
    *n = 0;

done:
    src_leave(&ids);
    if (d != NULL) {
        closedir(d);
    }
    if (fd >= 0) {
        close(fd);
    }
    if (dfd >= 0) {
        close(dfd);
    }
    free(leaf);
    return rc;
}
