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
 */
#include "acme_store.h"

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
#include <openssl/rand.h>

#define FS_FILE_MAX       (1024 * 1024)
#define FS_COMMIT_MAX     1000
#define FS_WALK_DEPTH     8
#define FS_JOURNAL        ".commit"
#define FS_STORE_LOCK     ".lock"
#define FS_JOURNAL_MAGIC  "acme-store-commit 1\n"
#define FS_DIR_MODE       0700
#define FS_SECRET_MODE    0600
#define FS_FILE_MODE      0644

typedef struct {
    char  *root;
} fs_t;

struct acme_lock_s {
    int  fd;
};

static const acme_store_ops_t fs_ops;

/* ---- paths and low-level helpers ---- */

static char *
fs_path(fs_t *fs, const char *key, const char *suffix)
{
    return acme_sprintf("%s/%s%s", fs->root, key ? key : "", suffix ? suffix : "");
}

/* The directory part of a path (malloc'd). */
static char *
fs_dirname(const char *path)
{
    const char  *s = strrchr(path, '/');

    if (s == NULL) {
        return acme_strdup(".");
    }
    if (s == path) {
        return acme_strdup("/");
    }
    return acme_strndup(path, (size_t) (s - path));
}

static int
fs_fsync_dir(const char *dir, acme_err_t *err)
{
    int  fd;

    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        acme_err_set(err, ACME_ERR_STORE, "cannot open directory %s: %s", dir, strerror(errno));
        return -1;
    }
    if (fsync(fd) != 0 && errno != EINVAL && errno != EROFS) {
        acme_err_set(err, ACME_ERR_STORE, "cannot fsync directory %s: %s", dir, strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

static int
fs_fsync_parent(const char *path, acme_err_t *err)
{
    char  *d;
    int    rc;

    d = fs_dirname(path);
    if (d == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    rc = fs_fsync_dir(d, err);
    free(d);
    return rc;
}

/* mkdir with mode 0700 whatever the umask; an existing directory is fine. */
static int
fs_mkdir(const char *path, acme_err_t *err)
{
    struct stat  sb;

    if (mkdir(path, FS_DIR_MODE) == 0) {
        if (chmod(path, FS_DIR_MODE) != 0) {
            acme_err_set(err, ACME_ERR_STORE, "cannot set the mode of %s: %s", path, strerror(errno));
            return -1;
        }
        /* the new entry must survive a crash as much as the files we put in it */
        return fs_fsync_parent(path, err);
    }
    if (errno != EEXIST) {
        acme_err_set(err, ACME_ERR_STORE, "cannot create directory %s: %s", path, strerror(errno));
        return -1;
    }
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        acme_err_set(err, ACME_ERR_STORE, "%s exists and is not a directory", path);
        return -1;
    }
    return 0;
}

/* mkdir -p of every directory of path after its first skip bytes (0: all of it). */
static int
fs_mkdirs(char *path, size_t skip, acme_err_t *err)
{
    char  *p;

    for (p = path + skip; *p != '\0'; p++) {
        if (*p != '/' || p == path || p[-1] == '/') {
            continue;
        }
        *p = '\0';
        if (fs_mkdir(path, err) != 0) {
            *p = '/';
            return -1;
        }
        *p = '/';
    }
    return 0;
}

/* The directories leading to key (not key itself). */
static int
fs_mkparents(fs_t *fs, const char *key, acme_err_t *err)
{
    char  *path;
    int    rc;

    path = fs_path(fs, key, NULL);
    if (path == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    rc = fs_mkdirs(path, strlen(fs->root) + 1, err);
    free(path);
    return rc;
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

/* Atomically replace path with data: temp file, fsync, rename, fsync of the directory. */
static int
fs_write_file(const char *path, const void *data, size_t len, mode_t mode, acme_err_t *err)
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
    tmp = acme_sprintf("%s.tmp.%ld.%08x", path, (long) getpid(), r);
    if (tmp == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0) {
        acme_err_set(err, ACME_ERR_STORE, "cannot create %s: %s", tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    if (fchmod(fd, mode) != 0 || fs_write_all(fd, data, len) != 0 || fsync(fd) != 0) {
        e = errno;
        close(fd);
        unlink(tmp);
        acme_err_set(err, ACME_ERR_STORE, "cannot write %s: %s", path, strerror(e));
        free(tmp);
        return -1;
    }
    if (close(fd) != 0) {
        e = errno;
        unlink(tmp);
        acme_err_set(err, ACME_ERR_STORE, "cannot write %s: %s", path, strerror(e));
        free(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        e = errno;
        unlink(tmp);
        acme_err_set(err, ACME_ERR_STORE, "cannot rename %s to %s: %s", tmp, path, strerror(e));
        free(tmp);
        return -1;
    }
    free(tmp);
    return fs_fsync_parent(path, err);
}

/* Reads a whole regular file of at most FS_FILE_MAX bytes. 0, 1 when absent, -1. */
static int
fs_read_file(const char *path, char **data, size_t *len, acme_err_t *err)
{
    struct stat   sb;
    char         *buf;
    size_t        have, cap;
    ssize_t       n;
    int           fd;

    fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) {
            return 1;
        }
        acme_err_set(err, ACME_ERR_STORE, "cannot open %s: %s", path,
                     errno == ELOOP ? "it is a symbolic link" : strerror(errno));
        return -1;
    }
    if (fstat(fd, &sb) != 0) {
        acme_err_set(err, ACME_ERR_STORE, "cannot stat %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(sb.st_mode)) {
        acme_err_set(err, ACME_ERR_STORE, "%s is not a regular file", path);
        close(fd);
        return -1;
    }
    if (sb.st_size > FS_FILE_MAX) {
        acme_err_set(err, ACME_ERR_STORE, "%s is too large (%lld bytes, at most %d)", path,
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
                acme_err_set(err, ACME_ERR_STORE, "%s is too large (more than %d bytes)", path,
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
            acme_err_set(err, ACME_ERR_STORE, "cannot read %s: %s", path, strerror(errno));
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

/* Lock files are 0600 whatever the umask; one created by another user is left as it is. */
static void
fs_fix_mode(int fd)
{
    struct stat  sb;

    if (fstat(fd, &sb) == 0 && sb.st_uid == geteuid() && (sb.st_mode & 07777) != FS_SECRET_MODE) {
        (void) fchmod(fd, FS_SECRET_MODE);
    }
}

static int
fs_store_lock(fs_t *fs, int op, acme_err_t *err)
{
    char  *path;
    int    fd;

    path = fs_path(fs, FS_STORE_LOCK, NULL);
    if (path == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, FS_SECRET_MODE);
    if (fd < 0) {
        acme_err_set(err, ACME_ERR_STORE, "cannot open %s: %s", path, strerror(errno));
        free(path);
        return -1;
    }
    fs_fix_mode(fd);
    while (flock(fd, op) != 0) {
        if (errno != EINTR) {
            acme_err_set(err, ACME_ERR_STORE, "cannot lock %s: %s", path, strerror(errno));
            close(fd);
            free(path);
            return -1;
        }
    }
    free(path);
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

/* ---- recovery ---- */

/* Rolls a leftover journal forward; the caller holds the store lock exclusively. */
static int
fs_recover_journal(fs_t *fs, acme_err_t *err)
{
    char        *jpath, *text = NULL, *line, *nl, *path, *next;
    size_t       len;
    int          rc, ret = 0;
    acme_err_t   e;

    jpath = fs_path(fs, FS_JOURNAL, NULL);
    if (jpath == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    rc = fs_read_file(jpath, &text, &len, err);
    if (rc != 0) {
        free(jpath);
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
            path = fs_path(fs, line + 4, NULL);
            next = fs_path(fs, line + 4, ".next");
            if (path == NULL || next == NULL) {
                free(path);
                free(next);
                acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
                ret = -1;
                break;
            }
            if (line[0] == 'p') {
                if (rename(next, path) != 0 && errno != ENOENT) {
                    acme_err_set(err, ACME_ERR_STORE, "recovering an interrupted commit: cannot rename %s: "
                                 "%s", next, strerror(errno));
                    ret = -1;
                }
            } else if (unlink(path) != 0 && errno != ENOENT) {
                acme_err_set(err, ACME_ERR_STORE, "recovering an interrupted commit: cannot remove %s: %s",
                             path, strerror(errno));
                ret = -1;
            }
            fs_fsync_parent(path, NULL);
            free(path);
            free(next);
        }
    }
    free(text);
    /* done (or hopeless: a journal that cannot be applied must not block the store forever) */
    if (unlink(jpath) != 0 && errno != ENOENT) {
        acme_err_set(err, ACME_ERR_STORE, "cannot remove %s: %s", jpath, strerror(errno));
        ret = -1;
    }
    free(jpath);
    fs_fsync_dir(fs->root, NULL);
    return ret;
}

static int
fs_is_leftover(const char *name)
{
    size_t  n = strlen(name);

    return strstr(name, ".tmp.") != NULL || (n > 5 && strcmp(name + n - 5, ".next") == 0);
}

/* Removes .next and temp files below dir; the caller holds the store lock exclusively. */
static void
fs_clean_leftovers(const char *dir, int depth)
{
    DIR            *d;
    struct dirent  *de;
    struct stat     sb;
    char           *p;

    d = opendir(dir);
    if (d == NULL) {
        return;
    }
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
            continue;
        }
        p = acme_sprintf("%s/%s", dir, de->d_name);
        if (p == NULL) {
            break;
        }
        if (lstat(p, &sb) == 0) {
            if (S_ISDIR(sb.st_mode)) {
                if (depth < FS_WALK_DEPTH) {
                    fs_clean_leftovers(p, depth + 1);
                }
            } else if (S_ISREG(sb.st_mode) && fs_is_leftover(de->d_name)) {
                unlink(p);
            }
        }
        free(p);
    }
    closedir(d);
}

static int
fs_journal_exists(fs_t *fs)
{
    char  *j;
    int    r;

    j = fs_path(fs, FS_JOURNAL, NULL);
    r = j == NULL || access(j, F_OK) == 0 || errno != ENOENT;
    free(j);
    return r;
}

/* ---- ops ---- */

static int
fs_get(acme_store_t *st, const char *key, char **data, size_t *len, acme_err_t *err)
{
    fs_t  *fs = st->data;
    char  *path;
    int    rc, fd;

    if (data == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "store get: no output");
        return -1;
    }
    *data = NULL;
    if (len != NULL) {
        *len = 0;
    }
    if (acme_store_key_check(key, err) != 0) {
        return -1;
    }
    if (fs_journal_exists(fs)) {
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
    path = fs_path(fs, key, NULL);
    if (path == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    rc = fs_read_file(path, data, len, err);
    free(path);
    return rc;
}

static int
fs_put(acme_store_t *st, const char *key, const void *data, size_t len, int secret, acme_err_t *err)
{
    fs_t  *fs = st->data;
    char  *path;
    int    rc, fd;

    if (acme_store_key_check(key, err) != 0) {
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
    path = fs_path(fs, key, NULL);
    if (path == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    fd = fs_store_lock(fs, LOCK_SH, err);
    if (fd < 0) {
        free(path);
        return -1;
    }
    rc = fs_mkparents(fs, key, err);
    if (rc == 0) {
        rc = fs_write_file(path, data ? data : "", len, secret ? FS_SECRET_MODE : FS_FILE_MODE, err);
    }
    fs_store_unlock(fd);
    free(path);
    return rc;
}

static int
fs_del(acme_store_t *st, const char *key, acme_err_t *err)
{
    fs_t  *fs = st->data;
    char  *path;
    int    rc = 0;

    if (acme_store_key_check(key, err) != 0) {
        return -1;
    }
    path = fs_path(fs, key, NULL);
    if (path == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    if (unlink(path) != 0) {
        if (errno != ENOENT && errno != ENOTDIR) {
            acme_err_set(err, ACME_ERR_STORE, "cannot remove %s: %s", path, strerror(errno));
            rc = -1;
        }
    } else {
        rc = fs_fsync_parent(path, err);
    }
    free(path);
    return rc;
}

static int
fs_name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *) a, *(char *const *) b);
}

static int
fs_list(acme_store_t *st, const char *prefix, char ***names, size_t *n, acme_err_t *err)
{
    fs_t           *fs = st->data;
    DIR            *d;
    struct dirent  *de;
    char           *path, **v = NULL, **nv;
    size_t          cnt = 0, cap = 0;
    int             root = prefix == NULL || prefix[0] == '\0';
    acme_err_t      e;

    if (names == NULL || n == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "store list: no output");
        return -1;
    }
    *names = NULL;
    *n = 0;
    if (!root && acme_store_key_check(prefix, err) != 0) {
        return -1;
    }
    path = root ? acme_strdup(fs->root) : fs_path(fs, prefix, NULL);
    if (path == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    d = opendir(path);
    if (d == NULL) {
        if (errno == ENOENT || errno == ENOTDIR) {
            free(path);
            return 0;
        }
        acme_err_set(err, ACME_ERR_STORE, "cannot list %s: %s", path, strerror(errno));
        free(path);
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
    free(path);
    if (cnt > 1) {
        qsort(v, cnt, sizeof(char *), fs_name_cmp);
    }
    *names = v;
    *n = cnt;
    return 0;

nomem:
    closedir(d);
    free(path);
    acme_store_list_free(v, cnt);
    acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    return -1;
}

static int
fs_commit(acme_store_t *st, const acme_store_item_t *items, size_t n, acme_err_t *err)
{
    fs_t        *fs = st->data;
    size_t       i, j, written = 0;
    int          fd = -1, rc = -1;
    char        *path = NULL, *next = NULL, *jpath = NULL;
    acme_buf_t   jb = { NULL, 0, 0 };
    acme_err_t   e;

    if (n == 0) {
        return 0;
    }
    if (items == NULL || n > FS_COMMIT_MAX) {
        acme_err_set(err, ACME_ERR_INPUT, "store commit: %zu items", n);
        return -1;
    }
    for (i = 0; i < n; i++) {
        if (acme_store_key_check(items[i].key, err) != 0) {
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

    /* 1. every new value as <key>.next */
    for (i = 0; i < n; i++) {
        if (items[i].data == NULL) {
            continue;
        }
        next = fs_path(fs, items[i].key, ".next");
        if (next == NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            goto undo;
        }
        if (fs_mkparents(fs, items[i].key, err) != 0
            || fs_write_file(next, items[i].data, items[i].len,
                             items[i].secret ? FS_SECRET_MODE : FS_FILE_MODE, err) != 0)
        {
            goto undo;
        }
        free(next);
        next = NULL;
        written = i + 1;
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
    jpath = fs_path(fs, FS_JOURNAL, NULL);
    if (jpath == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto undo;
    }
    if (fs_write_file(jpath, jb.data, jb.len, FS_SECRET_MODE, err) != 0) {
        unlink(jpath);
        goto undo;
    }

    /* 3. apply, 4. forget the journal */
    rc = 0;
    for (i = 0; i < n; i++) {
        path = fs_path(fs, items[i].key, NULL);
        next = fs_path(fs, items[i].key, ".next");
        if (path == NULL || next == NULL) {
            if (rc == 0) {
                acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            }
            rc = -1;
        } else if (items[i].data != NULL) {
            if (rename(next, path) != 0) {
                if (rc == 0) {
                    acme_err_set(err, ACME_ERR_STORE, "cannot rename %s to %s: %s", next, path,
                                 strerror(errno));
                }
                unlink(next);
                rc = -1;
            }
        } else if (unlink(path) != 0 && errno != ENOENT && errno != ENOTDIR) {
            if (rc == 0) {
                acme_err_set(err, ACME_ERR_STORE, "cannot remove %s: %s", path, strerror(errno));
            }
            rc = -1;
        }
        if (path != NULL && fs_fsync_parent(path, rc == 0 ? err : &e) != 0) {
            rc = -1;
        }
        free(path);
        free(next);
        path = next = NULL;
    }
    if (unlink(jpath) != 0 && rc == 0) {
        acme_err_set(err, ACME_ERR_STORE, "cannot remove %s: %s", jpath, strerror(errno));
        rc = -1;
    }
    if (fs_fsync_dir(fs->root, rc == 0 ? err : &e) != 0) {
        rc = -1;
    }
    goto done;

undo:
    free(next);
    next = NULL;
    for (i = 0; i < written; i++) {
        if (items[i].data != NULL) {
            next = fs_path(fs, items[i].key, ".next");
            if (next != NULL) {
                unlink(next);
            }
            free(next);
            next = NULL;
        }
    }
    rc = -1;

done:
    fs_store_unlock(fd);
    acme_buf_free(&jb);
    free(jpath);
    return rc;
}

static int
fs_lock(acme_store_t *st, const char *name, acme_lock_t **lk, acme_err_t *err)
{
    fs_t         *fs = st->data;
    char         *dir, *path;
    int           fd;
    acme_lock_t  *l;

    if (lk == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "store lock: no output");
        return -1;
    }
    *lk = NULL;
    if (acme_store_name_check(name, "lock name", err) != 0) {
        return -1;
    }
    dir = fs_path(fs, "locks", NULL);
    path = acme_sprintf("%s/locks/%s.lock", fs->root, name);
    if (dir == NULL || path == NULL) {
        free(dir);
        free(path);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    if (fs_mkdir(dir, err) != 0) {
        free(dir);
        free(path);
        return -1;
    }
    free(dir);
    fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, FS_SECRET_MODE);
    if (fd < 0) {
        acme_err_set(err, ACME_ERR_STORE, "cannot open lock file %s: %s", path, strerror(errno));
        free(path);
        return -1;
    }
    fs_fix_mode(fd);
    while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EINTR) {
            continue;
        }
        close(fd);
        if (errno == EWOULDBLOCK) {
            free(path);
            return 0;
        }
        acme_err_set(err, ACME_ERR_STORE, "cannot lock %s: %s", path, strerror(errno));
        free(path);
        return -1;
    }
    free(path);
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
        free(fs->root);
        free(fs);
    }
    free(st);
}

static const acme_store_ops_t fs_ops = {
    fs_get, fs_put, fs_del, fs_list, fs_commit, fs_lock, fs_unlock, fs_destroy
};

acme_store_t *
acme_store_fs_open(const char *dir, int create, acme_err_t *err)
{
    acme_store_t  *st;
    fs_t          *fs;
    struct stat    sb;
    char          *root;
    size_t         len;
    int            fd, rc;

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
        return NULL;
    }
    if (create & 1) {
        char *p = acme_sprintf("%s/", root);

        if (p == NULL) {
            free(root);
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            return NULL;
        }
        rc = fs_mkdirs(p, 0, err);
        free(p);
        if (rc != 0) {
            acme_err_prefix(err, "state directory %s", root);
            free(root);
            return NULL;
        }
    }
    if (stat(root, &sb) != 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "state directory %s: %s", root, strerror(errno));
        free(root);
        return NULL;
    }
    if (!S_ISDIR(sb.st_mode)) {
        acme_err_set(err, ACME_ERR_CONFIG, "state directory %s is not a directory", root);
        free(root);
        return NULL;
    }
    if (access(root, W_OK | X_OK) != 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "state directory %s is not writable: %s", root, strerror(errno));
        free(root);
        return NULL;
    }

    st = calloc(1, sizeof(*st));
    fs = calloc(1, sizeof(*fs));
    if (st == NULL || fs == NULL) {
        free(st);
        free(fs);
        free(root);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    fs->root = root;
    st->ops = &fs_ops;
    st->data = fs;

    /* finish or discard what a crash left behind */
    fd = fs_store_lock(fs, LOCK_EX, err);
    if (fd < 0) {
        fs_destroy(st);
        return NULL;
    }
    rc = fs_recover_journal(fs, err);
    if (rc == 0 && !(create & ACME_STORE_FS_READER)) {
        fs_clean_leftovers(root, 0);
    }
    fs_store_unlock(fd);
    if (rc != 0) {
        fs_destroy(st);
        return NULL;
    }
    return st;
}
