/*
 * Paths beneath a directory descriptor, never following a symbolic link (see acme_beneath.h).
 */
#include "acme_beneath.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#ifdef __linux__
#include <linux/openat2.h>
#endif

#define BENEATH_DIR_MODE  0700
#define BENEATH_NAME_MAX  255

/* "dir/a/b" for messages: shown, then rel up to len bytes. */
static void
beneath_name(char *buf, size_t size, const char *shown, const char *rel, size_t len)
{
    if (len == 0) {
        snprintf(buf, size, "%s", shown);
    } else {
        snprintf(buf, size, "%s/%.*s", shown, (int) len, rel);
    }
}

/* rel must be plain names: not absolute, no empty, "." or ".." component. */
static int
beneath_rel_check(const char *rel, size_t len, const char *shown, acme_err_t *err)
{
    size_t  i, start, n;

    if (len > 0 && rel[0] == '/') {
        acme_err_set(err, ACME_ERR_INPUT, "%s: the path %.*s is absolute (only paths inside it are used)",
                     shown, (int) len, rel);
        return -1;
    }
    for (start = 0, i = 0; i <= len; i++) {
        if (i < len && rel[i] != '/') {
            continue;
        }
        n = i - start;
        if (len > 0 && (n == 0 || n > BENEATH_NAME_MAX || (n == 1 && rel[start] == '.')
                        || (n == 2 && rel[start] == '.' && rel[start + 1] == '.')))
        {
            acme_err_set(err, ACME_ERR_INPUT, "%s: the path %.*s has an empty, \".\", \"..\" or too long "
                         "component", shown, (int) len, rel);
            return -1;
        }
        start = i + 1;
    }
    return 0;
}

/* Why openat(dirfd, name, O_DIRECTORY | O_NOFOLLOW) failed, as -1 with err or ACME_BENEATH_MISSING. */
static int
beneath_fail(int dirfd, const char *name, int e, const char *shown, const char *rel, size_t len,
    acme_err_t *err)
{
    struct stat  sb;
    char         path[1024];

    beneath_name(path, sizeof(path), shown, rel, len);
    if (e == ENOENT) {
        acme_err_set(err, ACME_ERR_STORE, "%s does not exist", path);
        return ACME_BENEATH_MISSING;
    }
    if ((e == ELOOP || e == ENOTDIR) && fstatat(dirfd, name, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
        if (S_ISLNK(sb.st_mode)) {
            acme_err_set(err, ACME_ERR_STORE, "%s is a symbolic link (symbolic links in the state directory "
                         "are refused, never followed)", path);
            return -1;
        }
        if (S_ISREG(sb.st_mode)) {
            acme_err_set(err, ACME_ERR_STORE, "%s is a file, not a directory", path);
            return ACME_BENEATH_MISSING;
        }
        acme_err_set(err, ACME_ERR_STORE, "%s is not a directory", path);
        return -1;
    }
    acme_err_set(err, ACME_ERR_STORE, "cannot open directory %s: %s", path, strerror(e));
    return -1;
}

/* One component at a time: openat(O_NOFOLLOW | O_DIRECTORY), mkdirat when create is set. */
static int
beneath_walk(int dirfd, const char *rel, size_t len, int create, const char *shown, acme_err_t *err)
{
    char    name[BENEATH_NAME_MAX + 1];
    size_t  i, start, n;
    int     fd, nfd, rc, made;

    /* a description of its own (a dup would share the directory offset with dirfd's readers) */
    fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        acme_err_set(err, ACME_ERR_STORE, "%s: %s", shown, strerror(errno));
        return -1;
    }
    for (start = 0, i = 0; len > 0 && i <= len; i++) {
        if (i < len && rel[i] != '/') {
            continue;
        }
        n = i - start;
        memcpy(name, rel + start, n);
        name[n] = '\0';
        made = 0;
        for ( ;; ) {
            nfd = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (nfd >= 0 || errno != ENOENT || !create || made) {
                break;
            }
            if (mkdirat(fd, name, BENEATH_DIR_MODE) != 0 && errno != EEXIST) {
                char path[1024];

                beneath_name(path, sizeof(path), shown, rel, i);
                acme_err_set(err, ACME_ERR_STORE, "cannot create directory %s: %s", path, strerror(errno));
                close(fd);
                return -1;
            }
            made = 1;
        }
        if (nfd < 0) {
            rc = beneath_fail(fd, name, errno, shown, rel, i, err);
            if (rc == ACME_BENEATH_MISSING && create) {
                rc = -1;
            }
            close(fd);
            return rc;
        }
        if (made) {
            /* whatever the umask; and the new entry must survive a crash like the files put in it */
            (void) fchmod(nfd, BENEATH_DIR_MODE);
            (void) fsync(fd);
        }
        close(fd);
        fd = nfd;
        start = i + 1;
    }
    return fd;
}

#if defined(__linux__) && defined(SYS_openat2)

static int  beneath_no_openat2;

/* One system call where the kernel has openat2 (5.6); 0 with *fd set, 1 to walk instead. */
static int
beneath_openat2(int dirfd, const char *rel, size_t len, int *fd)
{
    struct open_how  how;
    char             path[1100];
    long             r;

    if (beneath_no_openat2 || len >= sizeof(path)) {
        return 1;
    }
    memcpy(path, rel, len);
    path[len] = '\0';
    memset(&how, 0, sizeof(how));
    how.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    r = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
    if (r >= 0) {
        *fd = (int) r;
        return 0;
    }
    if (errno == ENOSYS || errno == EPERM) {
        /* no openat2 here (or a seccomp filter refuses it) */
        beneath_no_openat2 = 1;
    }
    /* the walk says precisely what is wrong (which component is a link, which one is missing) */
    return 1;
}

#else

static int
beneath_openat2(int dirfd, const char *rel, size_t len, int *fd)
{
    (void) dirfd;
    (void) rel;
    (void) len;
    (void) fd;
    return 1;
}

#endif

static int
beneath_open(int dirfd, const char *rel, size_t len, int create, const char *shown, acme_err_t *err)
{
    int  fd;

    if (beneath_rel_check(rel, len, shown, err) != 0) {
        return -1;
    }
    if (len > 0 && !create && beneath_openat2(dirfd, rel, len, &fd) == 0) {
        return fd;
    }
    return beneath_walk(dirfd, rel, len, create, shown, err);
}

int
acme_beneath_dir(int dirfd, const char *rel, int create, const char *shown, acme_err_t *err)
{
    return beneath_open(dirfd, rel, strlen(rel), create, shown, err);
}

int
acme_beneath_parent(int dirfd, const char *rel, int create, const char **leaf, const char *shown,
    acme_err_t *err)
{
    const char  *s = strrchr(rel, '/');
    size_t       len = s ? (size_t) (s - rel) : 0;

    *leaf = s ? s + 1 : rel;
    if (**leaf == '\0' || strcmp(*leaf, ".") == 0 || strcmp(*leaf, "..") == 0 || (s == rel)) {
        acme_err_set(err, ACME_ERR_INPUT, "%s: the path %s does not end in a plain name", shown, rel);
        return -1;
    }
    return beneath_open(dirfd, rel, len, create, shown, err);
}

int
acme_beneath_dir_check(int fd, uid_t uid, int tighten, const char *shown, acme_err_t *err)
{
    struct stat  sb;

    if (fstat(fd, &sb) != 0) {
        acme_err_set(err, ACME_ERR_STORE, "cannot stat %s: %s", shown, strerror(errno));
        return -1;
    }
    if (sb.st_uid == uid) {
        if ((sb.st_mode & 077) != 0 && tighten && fchmod(fd, BENEATH_DIR_MODE) != 0) {
            acme_err_set(err, ACME_ERR_STORE, "cannot set the mode of %s to 0700: %s", shown, strerror(errno));
            return -1;
        }
        return 0;
    }
    if ((sb.st_mode & 022) != 0) {
        acme_err_set(err, ACME_ERR_STORE, "%s belongs to uid %ld and others than its owner may write in it "
                     "(mode %04o): refused", shown, (long) sb.st_uid, (unsigned) (sb.st_mode & 07777));
        return -1;
    }
    return 0;
}
