/*
 * The filesystem store backend.
 *
 * Every file is written as "<path>.tmp.<pid>.<random>" (O_EXCL, O_NOFOLLOW), fsync'd, renamed over its
 * target, and the directory fsync'd. A multi-key commit first writes every new value to "<path>.next",
 * then atomically writes the journal "<root>/.commit" listing the keys, then renames each .next over its
 * target (or deletes the target), and finally removes the journal. Whoever finds a journal rolls it
 * forward (at open, before a get, before the next commit); .next and temp files with no journal are
 * leftovers of a crash and are removed at open.
 *
 * "<root>/.lock" serialises this: commits and recovery hold it exclusively, single puts shared (so the
 * cleanup at open never removes the temp file of a put in progress elsewhere).
 *
 * The directory usually belongs to a server's worker user, who may plant symbolic links in it. The store
 * keeps a descriptor of its directory and resolves every key beneath it without following any link
 * (acme_beneath.h); a link is an error naming it. When root opens a directory that another user owns, every
 * operation runs with the filesystem ids of that owner (setfsuid, this thread only), so root never writes
 * there as root and what it writes stays the owner's.
 */
#include "acme_store.h"
#include "acme_beneath.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#ifdef __linux__
#include <sys/fsuid.h>
#endif
#include <openssl/rand.h>

#define FS_FILE_MAX       (1024 * 1024)
#define FS_COMMIT_MAX     1000
#define FS_WALK_DEPTH     8
#define FS_JOURNAL        ".commit"
#define FS_STORE_LOCK     ".lock"
#define FS_JOURNAL_MAGIC  "acme-store-commit 1\n"
#define FS_DIR_MODE       0700
#define FS_PARENT_MODE    0755
#define FS_SECRET_MODE    0600
#define FS_FILE_MODE      0644

typedef struct {
    char   *root;       /* as given, for messages */
    int     dfd;        /* the directory, O_NOFOLLOW */
    int     rdonly;     /* ACME_STORE_FS_RDONLY */
    int     as_owner;   /* root acting with the owner's filesystem ids */
    uid_t   uid;        /* who the store writes as: the owner when as_owner, else the effective uid */
    gid_t   gid;
} fs_t;

struct acme_lock_s {
    int  fd;
};

typedef struct {
    int    on;
    uid_t  uid;
    gid_t  gid;
} fs_ids_t;

static const acme_store_ops_t fs_ops;

/* ---- acting as the directory's owner ---- */

static int
fs_enter(fs_t *fs, fs_ids_t *save, acme_err_t *err)
{
    save->on = 0;
#ifdef __linux__
    if (fs->as_owner && geteuid() == 0) {
        save->gid = (gid_t) setfsgid(fs->gid);
        save->uid = (uid_t) setfsuid(fs->uid);
        save->on = 1;
        /* setfsuid reports the previous value only: ask again to know it took */
        if ((uid_t) setfsuid(fs->uid) != fs->uid || (gid_t) setfsgid(fs->gid) != fs->gid) {
            setfsuid(save->uid);
            setfsgid(save->gid);
            save->on = 0;
            acme_err_set(err, ACME_ERR_STORE, "%s: cannot act as its owner (uid %ld)", fs->root,
                         (long) fs->uid);
            return -1;
        }
    }
#else
    (void) fs;
    (void) err;
#endif
    return 0;
}

static void
fs_leave(fs_ids_t *save)
{
#ifdef __linux__
    if (save->on) {
        setfsuid(save->uid);
        setfsgid(save->gid);
    }
#endif
    save->on = 0;
}

/* ---- paths and low-level helpers ---- */

/* "<root>/<key><suffix>" for messages (a static buffer per call site would not do: two in one message). */
static void
fs_shown(fs_t *fs, const char *key, const char *suffix, char *buf, size_t size)
{
    snprintf(buf, size, "%s/%s%s", fs->root, key ? key : "", suffix ? suffix : "");
}

#define FS_SHOWN_MAX  1400

static int
fs_refuse_rdonly(fs_t *fs, const char *what, const char *key, acme_err_t *err)
{
    if (!fs->rdonly) {
        return 0;
    }
    acme_err_set(err, ACME_ERR_STORE, "%s: opened read-only, cannot %s %s", fs->root, what, key);
    return -1;
}

/* The directory holding key (created when create is set): a descriptor, -1, or ACME_BENEATH_MISSING. */
static int
fs_parent(fs_t *fs, const char *key, int create, const char **leaf, acme_err_t *err)
{
    int  fd;

    fd = acme_beneath_parent(fs->dfd, key, create, leaf, fs->root, err);
    if (fd >= 0 && create) {
        char shown[FS_SHOWN_MAX];

        /* a directory we write in: ours alone */
        snprintf(shown, sizeof(shown), "%s/%.*s", fs->root, (int) (*leaf - key), key);
        if (*leaf != key && acme_beneath_dir_check(fd, fs->uid, 1, shown, err) != 0) {
            close(fd);
            return -1;
        }
    }
    return fd;
}

static int
fs_fsync_fd(int fd, const char *shown, acme_err_t *err)
{
    if (fsync(fd) != 0 && errno != EINVAL && errno != EROFS) {
        acme_err_set(err, ACME_ERR_STORE, "cannot fsync directory of %s: %s", shown, strerror(errno));
        return -1;
    }
    return 0;
}

static int
fs_write_all(int fd, const void *data, size_t len)
{
    const char  *p = data;
    ssize_t      n;

    while (len > 0) {
        n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        p += n;
        len -= (size_t) n;
    }
    return 0;
}

/* Atomically replace name in dfd with data: temp file, fsync, rename, fsync of the directory. */
static int
fs_write_at(int dfd, const char *name, const char *shown, const void *data, size_t len, mode_t mode,
    acme_err_t *err)
{
    static unsigned    counter;
    unsigned char      rnd[4];
    unsigned           r;
    char              *tmp;
    int                fd, e;

    if (RAND_bytes(rnd, sizeof(rnd)) == 1) {
        r = ((unsigned) rnd[0] << 24) | ((unsigned) rnd[1] << 16) | ((unsigned) rnd[2] << 8) | rnd[3];
    } else {
        r = ++counter ^ (unsigned) time(NULL);
    }
    tmp = acme_sprintf("%s.tmp.%ld.%08x", name, (long) getpid(), r);
    if (tmp == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0) {
        acme_err_set(err, ACME_ERR_STORE, "cannot create a temporary file for %s: %s", shown, strerror(errno));
        free(tmp);
        return -1;
    }
    if (fchmod(fd, mode) != 0 || fs_write_all(fd, data, len) != 0 || fsync(fd) != 0) {
        e = errno;
        close(fd);
        unlinkat(dfd, tmp, 0);
        acme_err_set(err, ACME_ERR_STORE, "cannot write %s: %s", shown, strerror(e));
        free(tmp);
        return -1;
    }
    if (close(fd) != 0) {
        e = errno;
        unlinkat(dfd, tmp, 0);
        acme_err_set(err, ACME_ERR_STORE, "cannot write %s: %s", shown, strerror(e));
        free(tmp);
        return -1;
    }
    if (renameat(dfd, tmp, dfd, name) != 0) {
        e = errno;
        unlinkat(dfd, tmp, 0);
        acme_err_set(err, ACME_ERR_STORE, "cannot rename a temporary file over %s: %s", shown, strerror(e));
        free(tmp);
        return -1;
    }
    free(tmp);
    return fs_fsync_fd(dfd, shown, err);
}

/* Reads a whole regular file of at most FS_FILE_MAX bytes. 0, 1 when absent, -1. */
static int
fs_read_at(int dfd, const char *name, const char *shown, char **data, size_t *len, acme_err_t *err)
{
    struct stat   sb;
    char         *buf;
    size_t        have, cap;
    ssize_t       n;
    int           fd;

    fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) {
            return 1;
        }
        acme_err_set(err, ACME_ERR_STORE, "cannot open %s: %s", shown,
                     errno == ELOOP ? "it is a symbolic link (refused, never followed)" : strerror(errno));
        return -1;
    }
    if (fstat(fd, &sb) != 0) {
        acme_err_set(err, ACME_ERR_STORE, "cannot stat %s: %s", shown, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(sb.st_mode)) {
        acme_err_set(err, ACME_ERR_STORE, "%s is not a regular file", shown);
        close(fd);
        return -1;
    }
    if (sb.st_size > FS_FILE_MAX) {
        acme_err_set(err, ACME_ERR_STORE, "%s is too large (%lld bytes, at most %d)", shown,
                     (long long) sb.st_size, FS_FILE_MAX);
        close(fd);
        return -1;
    }
    cap = (size_t) sb.st_size + 1;
    buf = malloc(cap + 1);
    if (buf == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        close(fd);
        return -1;
    }
    have = 0;
    for ( ;; ) {
        if (have == cap) {
            /* it grew while we read it */
            char *nb;

            if (cap > FS_FILE_MAX) {
                acme_free_secret(buf, cap + 1);
                close(fd);
                acme_err_set(err, ACME_ERR_STORE, "%s is too large (more than %d bytes)", shown,
                             FS_FILE_MAX);
                return -1;
            }
            nb = malloc(FS_FILE_MAX + 2);
            if (nb == NULL) {
                acme_free_secret(buf, cap + 1);
                close(fd);
                acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
                return -1;
            }
            memcpy(nb, buf, have);
            acme_free_secret(buf, cap + 1);
            buf = nb;
            cap = FS_FILE_MAX + 1;
        }
        n = read(fd, buf + have, cap - have);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            acme_err_set(err, ACME_ERR_STORE, "cannot read %s: %s", shown, strerror(errno));
            acme_free_secret(buf, cap + 1);
            close(fd);
            return -1;
        }
        if (n == 0) {
            break;
        }
        have += (size_t) n;
    }
    close(fd);
    buf[have] = '\0';
    *data = buf;
    if (len != NULL) {
        *len = have;
    }
    return 0;
}


/* ---- the store-wide lock ---- */

/* Lock files are 0600 whatever the umask; one created by another user (or linked elsewhere) is left alone. */
static void
fs_fix_mode(fs_t *fs, int fd)
{
    struct stat  sb;

    if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_nlink == 1 && sb.st_uid == fs->uid
        && (sb.st_mode & 07777) != FS_SECRET_MODE)
    {
        (void) fchmod(fd, FS_SECRET_MODE);
    }
}

static int
fs_store_lock(fs_t *fs, int op, acme_err_t *err)
{
    char  shown[FS_SHOWN_MAX];
    int   fd;

    fs_shown(fs, FS_STORE_LOCK, NULL, shown, sizeof(shown));
    fd = openat(fs->dfd, FS_STORE_LOCK, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, FS_SECRET_MODE);
    if (fd < 0) {
        acme_err_set(err, ACME_ERR_STORE, "cannot open %s: %s", shown, strerror(errno));
        return -1;
    }
    fs_fix_mode(fs, fd);
    while (flock(fd, op) != 0) {
        if (errno != EINTR) {
            acme_err_set(err, ACME_ERR_STORE, "cannot lock %s: %s", shown, strerror(errno));
            close(fd);
            return -1;
        }
    }
    return fd;
}

static void
fs_store_unlock(int fd)
{
    if (fd >= 0) {
        flock(fd, LOCK_UN);
        close(fd);
    }
}

/* ---- applying a journal line ---- */

/*
 * "put KEY": <KEY>.next over KEY; "del KEY": KEY removed. Both beneath the store's directory, no link
 * followed. 0 done (or nothing left to do), -1 with err.
 */
static int
fs_apply(fs_t *fs, const char *key, int put, acme_err_t *err)
{
    const char  *leaf;
    char        *next, shown[FS_SHOWN_MAX];
    int          dfd, rc = 0;

    dfd = fs_parent(fs, key, 0, &leaf, err);
    if (dfd == ACME_BENEATH_MISSING) {
        return 0;               /* no directory: no .next to rename, nothing to delete */
    }
    if (dfd < 0) {
        return -1;
    }
    fs_shown(fs, key, NULL, shown, sizeof(shown));
    if (put) {
        next = acme_sprintf("%s.next", leaf);
        if (next == NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            close(dfd);
            return -1;
        }
        if (renameat(dfd, next, dfd, leaf) != 0 && errno != ENOENT) {
            acme_err_set(err, ACME_ERR_STORE, "cannot rename %s.next to %s: %s", shown, shown, strerror(errno));
            rc = -1;
        }
        free(next);
    } else if (unlinkat(dfd, leaf, 0) != 0 && errno != ENOENT) {
        acme_err_set(err, ACME_ERR_STORE, "cannot remove %s: %s", shown, strerror(errno));
        rc = -1;
    }
    if (rc == 0) {
        rc = fs_fsync_fd(dfd, shown, err);
    }
    close(dfd);
    return rc;
}

/* ---- recovery ---- */

/* Rolls a leftover journal forward; the caller holds the store lock exclusively. */
static int
fs_recover_journal(fs_t *fs, acme_err_t *err)
{
    char        *text = NULL, *line, *nl, jshown[FS_SHOWN_MAX];
    size_t       len;
    int          rc, ret = 0;
    acme_err_t   e;

    fs_shown(fs, FS_JOURNAL, NULL, jshown, sizeof(jshown));
    rc = fs_read_at(fs->dfd, FS_JOURNAL, jshown, &text, &len, err);
    if (rc != 0) {
        if (rc < 0) {
            /* a link or worse in place of the journal: remove the entry, never follow it */
            (void) unlinkat(fs->dfd, FS_JOURNAL, 0);
        }
        return rc > 0 ? 0 : -1;
    }
    if (strncmp(text, FS_JOURNAL_MAGIC, sizeof(FS_JOURNAL_MAGIC) - 1) == 0) {
        for (line = text + sizeof(FS_JOURNAL_MAGIC) - 1; *line != '\0'; line = nl + 1) {
            nl = strchr(line, '\n');
            if (nl == NULL) {
                break;          /* cannot happen: the journal is written whole */
            }
            *nl = '\0';
            if ((strncmp(line, "put ", 4) != 0 && strncmp(line, "del ", 4) != 0)
                || acme_store_key_check(line + 4, &e) != 0)
            {
                continue;
            }
            if (fs_apply(fs, line + 4, line[0] == 'p', ret == 0 ? err : &e) != 0) {
                if (ret == 0) {
                    acme_err_prefix(err, "recovering an interrupted commit (%s)", jshown);
                }
                ret = -1;
            }
        }
    }
    free(text);
    /* done (or hopeless: a journal that cannot be applied must not block the store forever) */
    if (unlinkat(fs->dfd, FS_JOURNAL, 0) != 0 && errno != ENOENT && ret == 0) {
        acme_err_set(err, ACME_ERR_STORE, "cannot remove %s: %s", jshown, strerror(errno));
        ret = -1;
    }
    (void) fs_fsync_fd(fs->dfd, jshown, NULL);
    return ret;
}

static int
fs_is_leftover(const char *name)
{
    size_t  n = strlen(name);

    return strstr(name, ".tmp.") != NULL || (n > 5 && strcmp(name + n - 5, ".next") == 0);
}

/* Removes .next and temp files below dfd (closed here); links are not followed. The caller holds the store
 * lock exclusively. */
static void
fs_clean_leftovers(int dfd, int depth)
{
    DIR            *d;
    struct dirent  *de;
    struct stat     sb;
    int             sub;

    d = fdopendir(dfd);
    if (d == NULL) {
        close(dfd);
        return;
    }
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0
            || fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0)
        {
            continue;
        }
        if (S_ISDIR(sb.st_mode)) {
            if (depth < FS_WALK_DEPTH) {
                sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (sub >= 0) {
                    fs_clean_leftovers(sub, depth + 1);
                }
            }
        } else if (S_ISREG(sb.st_mode) && fs_is_leftover(de->d_name)) {
            (void) unlinkat(dirfd(d), de->d_name, 0);
        }
    }
    closedir(d);
}

static int
fs_journal_exists(fs_t *fs)
{
    struct stat  sb;

    return fstatat(fs->dfd, FS_JOURNAL, &sb, AT_SYMLINK_NOFOLLOW) == 0 || errno != ENOENT;
}

/* ---- ops (each runs as the directory's owner: see the wrappers below) ---- */

static int
fs_get_(fs_t *fs, const char *key, char **data, size_t *len, acme_err_t *err)
{
    const char  *leaf;
    char         shown[FS_SHOWN_MAX];
    int          rc, fd;

    if (acme_store_key_check(key, err) != 0) {
        return -1;
    }
    if (!fs->rdonly && fs_journal_exists(fs)) {
        /* a commit is being applied, or was interrupted: wait for it or finish it */
        fd = fs_store_lock(fs, LOCK_EX, err);
        if (fd < 0) {
            return -1;
        }
        rc = fs_recover_journal(fs, err);
        fs_store_unlock(fd);
        if (rc != 0) {
            return -1;
        }
    }
    fd = fs_parent(fs, key, 0, &leaf, err);
    if (fd == ACME_BENEATH_MISSING) {
        return 1;
    }
    if (fd < 0) {
        return -1;
    }
    fs_shown(fs, key, NULL, shown, sizeof(shown));
    rc = fs_read_at(fd, leaf, shown, data, len, err);
    close(fd);
    return rc;
}

static int
fs_put_(fs_t *fs, const char *key, const void *data, size_t len, int secret, acme_err_t *err)
{
    const char  *leaf;
    char         shown[FS_SHOWN_MAX];
    int          rc, lfd, fd;

    if (acme_store_key_check(key, err) != 0 || fs_refuse_rdonly(fs, "write", key, err) != 0) {
        return -1;
    }
    if (data == NULL && len > 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "store put %s: no data", key);
        return -1;
    }
    if (len > FS_FILE_MAX) {
        acme_err_set(err, ACME_ERR_INPUT, "store put %s: %zu bytes is too large", key, len);
        return -1;
    }
    lfd = fs_store_lock(fs, LOCK_SH, err);
    if (lfd < 0) {
        return -1;
    }
    fd = fs_parent(fs, key, 1, &leaf, err);
    if (fd < 0) {
        fs_store_unlock(lfd);
        return -1;
    }
    fs_shown(fs, key, NULL, shown, sizeof(shown));
    rc = fs_write_at(fd, leaf, shown, data ? data : "", len, secret ? FS_SECRET_MODE : FS_FILE_MODE, err);
    close(fd);
    fs_store_unlock(lfd);
    return rc;
}

static int
fs_del_(fs_t *fs, const char *key, acme_err_t *err)
{
    if (acme_store_key_check(key, err) != 0 || fs_refuse_rdonly(fs, "remove", key, err) != 0) {
        return -1;
    }
    return fs_apply(fs, key, 0, err);
}

static int
fs_name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *) a, *(char *const *) b);
}

static int
fs_list_(fs_t *fs, const char *prefix, char ***names, size_t *n, acme_err_t *err)
{
    DIR            *d;
    struct dirent  *de;
    char          **v = NULL, **nv;
    size_t          cnt = 0, cap = 0;
    int             root = prefix == NULL || prefix[0] == '\0', fd;
    acme_err_t      e;

    if (!root && acme_store_key_check(prefix, err) != 0) {
        return -1;
    }
    fd = acme_beneath_dir(fs->dfd, root ? "" : prefix, 0, fs->root, err);
    if (fd == ACME_BENEATH_MISSING) {
        return 0;
    }
    if (fd < 0) {
        return -1;
    }
    d = fdopendir(fd);
    if (d == NULL) {
        acme_err_set(err, ACME_ERR_STORE, "cannot list %s/%s: %s", fs->root, root ? "" : prefix,
                     strerror(errno));
        close(fd);
        return -1;
    }
    while ((de = readdir(d)) != NULL) {
        if (acme_store_name_check(de->d_name, "name", &e) != 0 || (root && strcmp(de->d_name, "locks") == 0)) {
            continue;       /* ours (dot files, leftovers) or nothing a key could name */
        }
        if (cnt == cap) {
            cap = cap ? cap * 2 : 16;
            nv = realloc(v, cap * sizeof(char *));
            if (nv == NULL) {
                goto nomem;
            }
            v = nv;
        }
        v[cnt] = acme_strdup(de->d_name);
        if (v[cnt] == NULL) {
            goto nomem;
        }
        cnt++;
    }
    closedir(d);
    if (cnt > 1) {
        qsort(v, cnt, sizeof(char *), fs_name_cmp);
    }
    *names = v;
    *n = cnt;
    return 0;

nomem:
    closedir(d);
    acme_store_list_free(v, cnt);
    acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    return -1;
}

/* Removes the .next files of the first n items (a commit given up before its journal). */
static void
fs_undo(fs_t *fs, const acme_store_item_t *items, size_t n)
{
    const char  *leaf;
    char        *next;
    size_t       i;
    int          fd;
    acme_err_t   e;

    for (i = 0; i < n; i++) {
        if (items[i].data == NULL) {
            continue;
        }
        fd = fs_parent(fs, items[i].key, 0, &leaf, &e);
        if (fd < 0) {
            continue;
        }
        next = acme_sprintf("%s.next", leaf);
        if (next != NULL) {
            (void) unlinkat(fd, next, 0);
        }
        free(next);
        close(fd);
    }
}

static int
fs_commit_(fs_t *fs, const acme_store_item_t *items, size_t n, acme_err_t *err)
{
    size_t       i, j, written = 0;
    int          fd = -1, pfd, rc = -1;
    char        *next = NULL, shown[FS_SHOWN_MAX];
    const char  *leaf;
    acme_buf_t   jb = { NULL, 0, 0 };

    if (n == 0) {
        return 0;
    }
    if (items == NULL || n > FS_COMMIT_MAX) {
        acme_err_set(err, ACME_ERR_INPUT, "store commit: %zu items", n);
        return -1;
    }
    for (i = 0; i < n; i++) {
        if (acme_store_key_check(items[i].key, err) != 0
            || fs_refuse_rdonly(fs, "commit", items[i].key, err) != 0)
        {
            return -1;
        }
        if (items[i].len > FS_FILE_MAX) {
            acme_err_set(err, ACME_ERR_INPUT, "store commit %s: %zu bytes is too large", items[i].key,
                         items[i].len);
            return -1;
        }
        for (j = 0; j < i; j++) {
            if (strcmp(items[i].key, items[j].key) == 0) {
                acme_err_set(err, ACME_ERR_INPUT, "store commit: key %s given twice", items[i].key);
                return -1;
            }
        }
    }

    fd = fs_store_lock(fs, LOCK_EX, err);
    if (fd < 0) {
        return -1;
    }
    if (fs_recover_journal(fs, err) != 0) {
        goto done;
    }

    /* 1. every new value as <key>.next; a deletion whose path is refused (a link) refuses the commit now,
     * before anything is applied */
    for (i = 0; i < n; i++) {
        if (items[i].data == NULL) {
            pfd = fs_parent(fs, items[i].key, 0, &leaf, err);
            if (pfd == -1) {
                goto undo;
            }
            if (pfd >= 0) {
                close(pfd);
            }
            continue;
        }
        pfd = fs_parent(fs, items[i].key, 1, &leaf, err);
        if (pfd < 0) {
            goto undo;
        }
        next = acme_sprintf("%s.next", leaf);
        if (next == NULL) {
            close(pfd);
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            goto undo;
        }
        fs_shown(fs, items[i].key, ".next", shown, sizeof(shown));
        written = i + 1;
        if (fs_write_at(pfd, next, shown, items[i].data, items[i].len,
                        items[i].secret ? FS_SECRET_MODE : FS_FILE_MODE, err) != 0)
        {
            close(pfd);
            goto undo;
        }
        close(pfd);
        free(next);
        next = NULL;
    }

    /* 2. the journal: from here on the commit happens, now or at the next recovery */
    if (acme_buf_printf(&jb, "%s", FS_JOURNAL_MAGIC) != 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto undo;
    }
    for (i = 0; i < n; i++) {
        if (acme_buf_printf(&jb, "%s %s\n", items[i].data ? "put" : "del", items[i].key) != 0) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            goto undo;
        }
    }
    fs_shown(fs, FS_JOURNAL, NULL, shown, sizeof(shown));
    if (fs_write_at(fs->dfd, FS_JOURNAL, shown, jb.data, jb.len, FS_SECRET_MODE, err) != 0) {
        (void) unlinkat(fs->dfd, FS_JOURNAL, 0);
        goto undo;
    }

    /* 3. apply. A step that fails leaves the journal and the .next files not yet renamed: the next
     * recovery rolls the whole commit forward, so a new key never stays beside an old certificate. */
    for (i = 0; i < n; i++) {
        if (fs_apply(fs, items[i].key, items[i].data != NULL, err) != 0) {
            acme_err_prefix(err, "store commit (kept in %s/%s for the next recovery)", fs->root, FS_JOURNAL);
            goto done;
        }
    }

    /* 4. forget the journal */
    if (unlinkat(fs->dfd, FS_JOURNAL, 0) != 0) {
        acme_err_set(err, ACME_ERR_STORE, "cannot remove %s: %s", shown, strerror(errno));
        goto done;
    }
    rc = fs_fsync_fd(fs->dfd, shown, err);
    goto done;

undo:
    free(next);
    next = NULL;
    fs_undo(fs, items, written);
    rc = -1;

done:
    fs_store_unlock(fd);
    acme_buf_free(&jb);
    return rc;
}

static int
fs_lock_(fs_t *fs, const char *name, acme_lock_t **lk, acme_err_t *err)
{
    char          *file, shown[FS_SHOWN_MAX];
    int            dfd, fd;
    acme_lock_t   *l;

    if (acme_store_name_check(name, "lock name", err) != 0
        || fs_refuse_rdonly(fs, "take the lock", name, err) != 0)
    {
        return -1;
    }
    dfd = acme_beneath_dir(fs->dfd, "locks", 1, fs->root, err);
    if (dfd < 0) {
        return -1;
    }
    fs_shown(fs, "locks", NULL, shown, sizeof(shown));
    if (acme_beneath_dir_check(dfd, fs->uid, 1, shown, err) != 0) {
        close(dfd);
        return -1;
    }
    file = acme_sprintf("%s.lock", name);
    if (file == NULL) {
        close(dfd);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    snprintf(shown, sizeof(shown), "%s/locks/%s", fs->root, file);
    fd = openat(dfd, file, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, FS_SECRET_MODE);
    close(dfd);
    free(file);
    if (fd < 0) {
        acme_err_set(err, ACME_ERR_STORE, "cannot open lock file %s: %s", shown,
                     errno == ELOOP ? "it is a symbolic link (refused, never followed)" : strerror(errno));
        return -1;
    }
    fs_fix_mode(fs, fd);
    while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EINTR) {
            continue;
        }
        close(fd);
        if (errno == EWOULDBLOCK) {
            return 0;
        }
        acme_err_set(err, ACME_ERR_STORE, "cannot lock %s: %s", shown, strerror(errno));
        return -1;
    }
    l = malloc(sizeof(*l));
    if (l == NULL) {
        close(fd);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    l->fd = fd;
    *lk = l;
    return 1;
}

/* ---- the ops table: every operation as the directory's owner ---- */

static int
fs_get(acme_store_t *st, const char *key, char **data, size_t *len, acme_err_t *err)
{
    fs_ids_t  ids;
    int       rc;

    if (data == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "store get: no output");
        return -1;
    }
    *data = NULL;
    if (len != NULL) {
        *len = 0;
    }
    if (fs_enter(st->data, &ids, err) != 0) {
        return -1;
    }
    rc = fs_get_(st->data, key, data, len, err);
    fs_leave(&ids);
    return rc;
}

static int
fs_put(acme_store_t *st, const char *key, const void *data, size_t len, int secret, acme_err_t *err)
{
    fs_ids_t  ids;
    int       rc;

    if (fs_enter(st->data, &ids, err) != 0) {
        return -1;
    }
    rc = fs_put_(st->data, key, data, len, secret, err);
    fs_leave(&ids);
    return rc;
}

static int
fs_del(acme_store_t *st, const char *key, acme_err_t *err)
{
    fs_ids_t  ids;
    int       rc;

    if (fs_enter(st->data, &ids, err) != 0) {
        return -1;
    }
    rc = fs_del_(st->data, key, err);
    fs_leave(&ids);
    return rc;
}

static int
fs_list(acme_store_t *st, const char *prefix, char ***names, size_t *n, acme_err_t *err)
{
    fs_ids_t  ids;
    int       rc;

    if (names == NULL || n == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "store list: no output");
        return -1;
    }
    *names = NULL;
    *n = 0;
    if (fs_enter(st->data, &ids, err) != 0) {
        return -1;
    }
    rc = fs_list_(st->data, prefix, names, n, err);
    fs_leave(&ids);
    return rc;
}

static int
fs_commit(acme_store_t *st, const acme_store_item_t *items, size_t n, acme_err_t *err)
{
    fs_ids_t  ids;
    int       rc;

    if (fs_enter(st->data, &ids, err) != 0) {
        return -1;
    }
    rc = fs_commit_(st->data, items, n, err);
    fs_leave(&ids);
    return rc;
}

static int
fs_lock(acme_store_t *st, const char *name, acme_lock_t **lk, acme_err_t *err)
{
    fs_ids_t  ids;
    int       rc;

    if (lk == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "store lock: no output");
        return -1;
    }
    *lk = NULL;
    if (fs_enter(st->data, &ids, err) != 0) {
        return -1;
    }
    rc = fs_lock_(st->data, name, lk, err);
    fs_leave(&ids);
    return rc;
}

static void
fs_unlock(acme_lock_t *lk)
{
    if (lk != NULL) {
        flock(lk->fd, LOCK_UN);
        close(lk->fd);
        free(lk);
    }
}

static void
fs_destroy(acme_store_t *st)
{
    fs_t  *fs;

    if (st == NULL) {
        return;
    }
    fs = st->data;
    if (fs != NULL) {
        if (fs->dfd >= 0) {
            close(fs->dfd);
        }
        free(fs->root);
        free(fs);
    }
    free(st);
}

static const acme_store_ops_t fs_ops = {
    fs_get, fs_put, fs_del, fs_list, fs_commit, fs_lock, fs_unlock, fs_destroy
};

/* ---- opening ---- */

/* mkdir -p: missing parents 0755 (they are only passed through), the directory itself 0700. */
static int
fs_mkdirs(const char *root, acme_err_t *err)
{
    char    *path, *p;
    int      rc = 0, last;
    mode_t   mode;

    path = acme_strdup(root);
    if (path == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    for (p = path + 1; rc == 0; p++) {
        if (*p != '/' && *p != '\0') {
            continue;
        }
        last = *p == '\0';
        *p = '\0';
        mode = last ? FS_DIR_MODE : FS_PARENT_MODE;
        if (mkdir(path, mode) == 0) {
            if (last && chmod(path, mode) != 0) {
                acme_err_set(err, ACME_ERR_STORE, "cannot set the mode of %s: %s", path, strerror(errno));
                rc = -1;
            }
        } else if (errno != EEXIST) {
            acme_err_set(err, ACME_ERR_STORE, "cannot create directory %s: %s", path, strerror(errno));
            rc = -1;
        }
        if (last) {
            break;
        }
        *p = '/';
    }
    free(path);
    return rc;
}

/* The directory itself, never through a link in its last component; -1 with err. */
static int
fs_open_root(const char *root, struct stat *sb, acme_err_t *err)
{
    int  fd, e;

    fd = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        e = errno;
        if ((e == ELOOP || e == ENOTDIR) && lstat(root, sb) == 0 && S_ISLNK(sb->st_mode)) {
            acme_err_set(err, ACME_ERR_CONFIG, "state directory %s is a symbolic link (refused: name the "
                         "directory it points to)", root);
        } else if (e == ENOTDIR) {
            acme_err_set(err, ACME_ERR_CONFIG, "state directory %s is not a directory", root);
        } else {
            acme_err_set(err, ACME_ERR_CONFIG, "state directory %s: %s", root, strerror(e));
        }
        return -1;
    }
    if (fstat(fd, sb) != 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "state directory %s: %s", root, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static char *
fs_root_name(const char *dir, acme_err_t *err)
{
    size_t  len;
    char   *root;

    if (dir == NULL || dir[0] == '\0') {
        acme_err_set(err, ACME_ERR_CONFIG, "no state directory given");
        return NULL;
    }
    len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') {
        len--;
    }
    root = acme_strndup(dir, len);
    if (root == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    }
    return root;
}

int
acme_store_fs_prepare(const char *dir, long uid, long gid, acme_err_t *err)
{
    struct stat  sb;
    char        *root;
    int          fd, rc = 0;

    root = fs_root_name(dir, err);
    if (root == NULL) {
        return -1;
    }
    if (fs_mkdirs(root, err) != 0) {
        acme_err_prefix(err, "state directory %s", root);
        free(root);
        return -1;
    }
    fd = fs_open_root(root, &sb, err);
    if (fd < 0) {
        free(root);
        return -1;
    }
    if (uid >= 0 && sb.st_uid == 0 && (uid_t) uid != 0) {
        /* new, or made by root before: the worker's (this directory only, on its descriptor) */
        if (fchown(fd, (uid_t) uid, gid >= 0 ? (gid_t) gid : (gid_t) -1) != 0) {
            acme_err_set(err, ACME_ERR_STORE, "state directory %s: cannot give it to uid %ld: %s", root, uid,
                         strerror(errno));
            rc = -1;
        }
        sb.st_uid = (uid_t) uid;
    }
    if (rc == 0 && (sb.st_mode & 077) != 0 && fchmod(fd, FS_DIR_MODE) != 0) {
        acme_err_set(err, ACME_ERR_STORE, "state directory %s: cannot set its mode to 0700: %s", root,
                     strerror(errno));
        rc = -1;
    }
    close(fd);
    free(root);
    return rc;
}

acme_store_t *
acme_store_fs_open(const char *dir, int create, acme_err_t *err)
{
    acme_store_t  *st;
    fs_t          *fs;
    struct stat    sb;
    char          *root;
    int            fd, rc;
    fs_ids_t       ids;

    root = fs_root_name(dir, err);
    if (root == NULL) {
        return NULL;
    }
    if ((create & 1) && !(create & ACME_STORE_FS_RDONLY) && fs_mkdirs(root, err) != 0) {
        acme_err_prefix(err, "state directory %s", root);
        free(root);
        return NULL;
    }
    fd = fs_open_root(root, &sb, err);
    if (fd < 0) {
        free(root);
        return NULL;
    }

    st = calloc(1, sizeof(*st));
    fs = calloc(1, sizeof(*fs));
    if (st == NULL || fs == NULL) {
        free(st);
        free(fs);
        free(root);
        close(fd);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    fs->root = root;
    fs->dfd = fd;
    fs->rdonly = (create & ACME_STORE_FS_RDONLY) != 0;
    fs->uid = geteuid();
    fs->gid = getegid();
#ifdef __linux__
    if (fs->uid == 0 && sb.st_uid != 0) {
        /* root on another user's directory (a server's worker, acmectl run by root): act as that user */
        fs->as_owner = 1;
        fs->uid = sb.st_uid;
        fs->gid = sb.st_gid;
    }
#endif
    st->ops = &fs_ops;
    st->data = fs;

    if (fs->rdonly) {
        return st;
    }
    if (fs_enter(fs, &ids, err) != 0) {
        fs_destroy(st);
        return NULL;
    }
    rc = acme_beneath_dir_check(fd, fs->uid, 1, root, err);
    if (rc == 0 && faccessat(fd, ".", W_OK | X_OK, AT_EACCESS) != 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "state directory %s is not writable: %s", root, strerror(errno));
        rc = -1;
    }
    if (rc == 0) {
        /* finish or discard what a crash left behind */
        fd = fs_store_lock(fs, LOCK_EX, err);
        rc = fd < 0 ? -1 : fs_recover_journal(fs, err);
        if (rc == 0 && !(create & ACME_STORE_FS_READER)) {
            int top = openat(fs->dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

            if (top >= 0) {
                fs_clean_leftovers(top, 0);
            }
        }
        fs_store_unlock(fd);
    }
    fs_leave(&ids);
    if (rc != 0) {
        fs_destroy(st);
        return NULL;
    }
    return st;
}
