/* The filesystem store and the typed records. */
#include "unit.h"
#include "acme_store.h"
#include "acme_beneath.h"

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <ftw.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/types.h>

typedef struct {
    char           dir[64];      /* the temporary directory */
    char           root[128];    /* the store below it */
    acme_store_t  *st;
} fixture_t;

static int
rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void) sb;
    (void) flag;
    (void) ftw;
    chmod(path, 0700);
    return remove(path);
}

static int
setup(void **state)
{
    fixture_t   *f = calloc(1, sizeof(*f));
    acme_err_t   err;

    assert_non_null(f);
    strcpy(f->dir, "/tmp/acme-test-store-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->root, sizeof(f->root), "%s/state/sub", f->dir);
    f->st = acme_store_fs_open(f->root, 1, &err);
    if (f->st == NULL) {
        fail_msg("open: %s", err.msg);
    }
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    fixture_t *f = *state;

    acme_store_close(f->st);
    nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static char *
path_of(fixture_t *f, const char *rel)
{
    static char  buf[4][512];
    static int   i;

    i = (i + 1) % 4;
    snprintf(buf[i], sizeof(buf[i]), "%s/%s", f->root, rel);
    return buf[i];
}

static int
mode_of(const char *path)
{
    struct stat sb;

    if (lstat(path, &sb) != 0) {
        fail_msg("stat %s: %s", path, strerror(errno));
    }
    return (int) (sb.st_mode & 07777);
}

static int
exists(const char *path)
{
    struct stat sb;

    return lstat(path, &sb) == 0;
}

static void
write_raw(const char *path, const char *data)
{
    FILE *fp = fopen(path, "w");

    assert_non_null(fp);
    fputs(data, fp);
    fclose(fp);
}

static void
check_value(acme_store_t *st, const char *key, const char *want)
{
    char       *d = NULL;
    size_t      len = 0;
    acme_err_t  err;
    int         rc;

    rc = acme_store_get(st, key, &d, &len, &err);
    if (want == NULL) {
        if (rc != 1) {
            fail_msg("%s: expected absent, got rc %d (%s)", key, rc, rc == 0 ? d : err.msg);
        }
        assert_null(d);
        return;
    }
    if (rc != 0) {
        fail_msg("%s: rc %d: %s", key, rc, rc < 0 ? err.msg : "absent");
    }
    assert_int_equal(len, strlen(want));
    assert_string_equal(d, want);
    free(d);
}

/* Counts files under dir whose name contains needle. */
static int leftover_count;
static const char *leftover_needle;

static int
count_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void) sb;
    (void) flag;
    if (strstr(path + ftw->base, leftover_needle) != NULL) {
        leftover_count++;
    }
    return 0;
}

static int
count_files(const char *dir, const char *needle)
{
    leftover_count = 0;
    leftover_needle = needle;
    nftw(dir, count_one, 16, FTW_PHYS);
    return leftover_count;
}

/* ---- tests ---- */

static void
test_put_get_modes(void **state)
{
    fixture_t   *f = *state;
    acme_err_t   err;
    mode_t       old;
    char        *d;
    size_t       len;

    /* whatever the umask, the modes are ours */
    old = umask(0);
    assert_int_equal(acme_store_put(f->st, "certs/example.org/fullchain.pem", "CHAIN", 5, 0, &err), 0);
    assert_int_equal(acme_store_put(f->st, "certs/example.org/privkey.pem", "KEY", 3, 1, &err), 0);
    umask(0777);
    assert_int_equal(acme_store_put(f->st, "accounts/ca/account.key", "AK", 2, 1, &err), 0);
    assert_int_equal(acme_store_put(f->st, "accounts/ca/account.json", "{}", 2, 0, &err), 0);
    umask(old);

    assert_int_equal(mode_of(path_of(f, "certs")), 0700);
    assert_int_equal(mode_of(path_of(f, "certs/example.org")), 0700);
    assert_int_equal(mode_of(path_of(f, "accounts")), 0700);
    assert_int_equal(mode_of(path_of(f, "accounts/ca")), 0700);
    assert_int_equal(mode_of(path_of(f, "certs/example.org/fullchain.pem")), 0644);
    assert_int_equal(mode_of(path_of(f, "certs/example.org/privkey.pem")), 0600);
    assert_int_equal(mode_of(path_of(f, "accounts/ca/account.key")), 0600);
    assert_int_equal(mode_of(path_of(f, "accounts/ca/account.json")), 0644);
    /* the root; the parent it created is only passed through (0755 less the umask) */
    assert_int_equal(mode_of(f->root), 0700);
    {
        char parent[160];
        snprintf(parent, sizeof(parent), "%s/state", f->dir);
        assert_int_equal(mode_of(parent) & 0700, 0700);
        assert_int_equal(mode_of(parent) & 022, 0);
    }

    check_value(f->st, "certs/example.org/fullchain.pem", "CHAIN");
    check_value(f->st, "certs/example.org/privkey.pem", "KEY");
    check_value(f->st, "certs/other/fullchain.pem", NULL);
    check_value(f->st, "nothing", NULL);

    /* replace, empty value, binary value */
    assert_int_equal(acme_store_put(f->st, "certs/example.org/fullchain.pem", "NEW CHAIN", 9, 0, &err), 0);
    check_value(f->st, "certs/example.org/fullchain.pem", "NEW CHAIN");
    assert_int_equal(acme_store_put(f->st, "empty", "", 0, 0, &err), 0);
    check_value(f->st, "empty", "");
    assert_int_equal(acme_store_put(f->st, "bin", "a\0b", 3, 0, &err), 0);
    assert_int_equal(acme_store_get(f->st, "bin", &d, &len, &err), 0);
    assert_int_equal(len, 3);
    assert_memory_equal(d, "a\0b", 4);
    free(d);

    /* no temporary file is left behind */
    assert_int_equal(count_files(f->dir, ".tmp."), 0);
    assert_int_equal(count_files(f->dir, ".next"), 0);
}

static void
test_get_refusals(void **state)
{
    fixture_t   *f = *state;
    acme_err_t   err;
    char        *d = NULL, *big;
    size_t       len;
    FILE        *fp;

    /* larger than 1 MiB */
    fp = fopen(path_of(f, "big"), "w");
    assert_non_null(fp);
    big = calloc(1, 1024 * 1024 + 1);
    assert_non_null(big);
    fwrite(big, 1, 1024 * 1024 + 1, fp);
    fclose(fp);
    free(big);
    assert_int_equal(acme_store_get(f->st, "big", &d, &len, &err), -1);
    assert_int_equal(err.kind, ACME_ERR_STORE);
    assert_non_null(strstr(err.msg, "too large"));
    assert_non_null(strstr(err.msg, "/big"));
    assert_null(d);

    /* a symbolic link is not followed */
    write_raw(path_of(f, "target"), "secret");
    assert_int_equal(symlink(path_of(f, "target"), path_of(f, "link")), 0);
    assert_int_equal(acme_store_get(f->st, "link", &d, &len, &err), -1);
    assert_non_null(strstr(err.msg, "symbolic link"));

    /* a FIFO neither blocks nor is read */
    assert_int_equal(mkfifo(path_of(f, "fifo"), 0600), 0);
    assert_int_equal(acme_store_get(f->st, "fifo", &d, &len, &err), -1);
    assert_non_null(strstr(err.msg, "not a regular file"));

    /* a directory */
    assert_int_equal(acme_store_put(f->st, "dir/x", "1", 1, 0, &err), 0);
    assert_int_equal(acme_store_get(f->st, "dir", &d, &len, &err), -1);
    assert_null(d);
}

static void
test_del_list(void **state)
{
    fixture_t   *f = *state;
    acme_err_t   err;
    char       **names;
    size_t       n;

    assert_int_equal(acme_store_put(f->st, "certs/b.example/meta.json", "{}", 2, 0, &err), 0);
    assert_int_equal(acme_store_put(f->st, "certs/a.example/meta.json", "{}", 2, 0, &err), 0);
    assert_int_equal(acme_store_put(f->st, "certs/_wildcard.c.example/meta.json", "{}", 2, 0, &err), 0);
    write_raw(path_of(f, "certs/a.example/meta.json.next"), "x");     /* not a name */
    write_raw(path_of(f, "certs/.hidden"), "x");

    assert_int_equal(f->st->ops->list(f->st, "certs", &names, &n, &err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(names[0], "_wildcard.c.example");
    assert_string_equal(names[1], "a.example");
    assert_string_equal(names[2], "b.example");
    acme_store_list_free(names, n);

    assert_int_equal(f->st->ops->list(f->st, "certs/a.example", &names, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(names[0], "meta.json");
    acme_store_list_free(names, n);

    assert_int_equal(f->st->ops->list(f->st, "nothing/here", &names, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_null(names);
    assert_int_equal(f->st->ops->list(f->st, "../x", &names, &n, &err), -1);

    /* the root: no lock files, no dot files */
    assert_int_equal(f->st->ops->list(f->st, "", &names, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(names[0], "certs");
    acme_store_list_free(names, n);

    assert_int_equal(acme_store_del(f->st, "certs/b.example/meta.json", &err), 0);
    assert_false(exists(path_of(f, "certs/b.example/meta.json")));
    assert_int_equal(acme_store_del(f->st, "certs/b.example/meta.json", &err), 0);
    assert_int_equal(acme_store_del(f->st, "certs/none/meta.json", &err), 0);
    check_value(f->st, "certs/b.example/meta.json", NULL);
}

static void
test_key_rejection(void **state)
{
    fixture_t    *f = *state;
    acme_err_t    err;
    char          longseg[300], longkey[1100];
    char         *d;
    size_t        len, i;
    const char   *bad[] = {
        "", "/abs", "..", "../x", "a/../b", "a/..", "a/./b", ".", "a//b", "a/", "/", "a b", "a\nb", "a\\b",
        "a:b", "caf\xc3\xa9", "a*b", "locks", "locks/x.lock", ".commit", ".lock", "certs/.x", "x.next",
        "certs/a/meta.json.next", "a.tmp.1.2", "certs/x/y.tmp.55.abcd", "a?b", "a%2fb", "a~",
    };
    const char   *good[] = {
        "a", "certs/example.org/meta.json", "accounts/acme-v02.api.letsencrypt.org_directory/account.key",
        "x@y+z-1_2.3", "challenges/http-01/" "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA", "mylocks/x",
        "next", "a.nexts", "tmp.x",
    };

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        acme_err_clear(&err);
        if (acme_store_put(f->st, bad[i], "x", 1, 0, &err) != -1) {
            fail_msg("put \"%s\" accepted", bad[i]);
        }
        assert_int_equal(err.kind, ACME_ERR_INPUT);
        assert_non_null(strstr(err.msg, "invalid store key"));
        assert_int_equal(acme_store_get(f->st, bad[i], &d, &len, &err), -1);
        assert_int_equal(acme_store_del(f->st, bad[i], &err), -1);
        assert_int_equal(acme_store_key_check(bad[i], NULL), -1);
    }
    assert_int_equal(acme_store_put(f->st, NULL, "x", 1, 0, &err), -1);
    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        if (acme_store_key_check(good[i], &err) != 0) {
            fail_msg("\"%s\" refused: %s", good[i], err.msg);
        }
    }
    /* the culprit is named */
    assert_int_equal(acme_store_put(f->st, "a/../b", "x", 1, 0, &err), -1);
    assert_non_null(strstr(err.msg, "\"a/../b\""));

    memset(longseg, 'a', 201);
    longseg[201] = '\0';
    assert_int_equal(acme_store_key_check(longseg, NULL), -1);
    longseg[200] = '\0';
    assert_int_equal(acme_store_key_check(longseg, NULL), 0);
    for (i = 0; i + 2 < sizeof(longkey); i += 2) {
        longkey[i] = 'a';
        longkey[i + 1] = '/';
    }
    longkey[sizeof(longkey) - 2] = 'a';
    longkey[sizeof(longkey) - 1] = '\0';
    assert_int_equal(acme_store_key_check(longkey, NULL), -1);

    /* names (one segment) */
    assert_int_equal(acme_store_name_check("example.org", "name", NULL), 0);
    assert_int_equal(acme_store_name_check("a/b", "name", &err), -1);
    assert_non_null(strstr(err.msg, "invalid name \"a/b\""));
    assert_int_equal(acme_store_name_check("..", "name", NULL), -1);
    assert_int_equal(acme_store_name_check(NULL, "name", NULL), -1);

    /* nothing was created by the refused calls */
    assert_false(exists(path_of(f, "b")));
    assert_false(exists(path_of(f, "x.next")));
}

static void
test_commit(void **state)
{
    fixture_t          *f = *state;
    acme_err_t          err;
    acme_store_item_t   items[4] = {
        { "certs/c/fullchain.pem", "CHAIN", 5, 0 },
        { "certs/c/privkey.pem", "KEY", 3, 1 },
        { "certs/c/order.json", NULL, 0, 0 },
        { "certs/c/order.key", NULL, 0, 1 },
    };
    acme_store_item_t   dup[2] = {
        { "certs/c/a", "1", 1, 0 },
        { "certs/c/a", "2", 1, 0 },
    };
    acme_store_item_t   badkey[2] = {
        { "certs/c/fullchain.pem", "X", 1, 0 },
        { "certs/../escape", "2", 1, 0 },
    };

    assert_int_equal(acme_store_put(f->st, "certs/c/order.json", "{}", 2, 0, &err), 0);
    assert_int_equal(acme_store_put(f->st, "certs/c/order.key", "OK", 2, 1, &err), 0);
    if (f->st->ops->commit(f->st, items, 4, &err) != 0) {
        fail_msg("commit: %s", err.msg);
    }
    check_value(f->st, "certs/c/fullchain.pem", "CHAIN");
    check_value(f->st, "certs/c/privkey.pem", "KEY");
    check_value(f->st, "certs/c/order.json", NULL);
    check_value(f->st, "certs/c/order.key", NULL);
    assert_int_equal(mode_of(path_of(f, "certs/c/privkey.pem")), 0600);
    assert_int_equal(mode_of(path_of(f, "certs/c/fullchain.pem")), 0644);
    assert_int_equal(count_files(f->dir, ".next"), 0);
    assert_int_equal(count_files(f->dir, ".tmp."), 0);
    assert_false(exists(path_of(f, ".commit")));

    /* refused before anything is written */
    assert_int_equal(f->st->ops->commit(f->st, dup, 2, &err), -1);
    assert_int_equal(err.kind, ACME_ERR_INPUT);
    assert_int_equal(f->st->ops->commit(f->st, badkey, 2, &err), -1);
    assert_non_null(strstr(err.msg, "certs/../escape"));
    check_value(f->st, "certs/c/fullchain.pem", "CHAIN");
    assert_int_equal(f->st->ops->commit(f->st, NULL, 0, &err), 0);
}

static void
test_commit_all_or_nothing(void **state)
{
    fixture_t          *f = *state;
    acme_err_t          err;
    acme_store_item_t   items[3] = {
        { "certs/d/fullchain.pem", "NEW CHAIN", 9, 0 },
        { "certs/d/meta.json", NULL, 0, 0 },
        { "certs/blocked/sub/privkey.pem", "NEW KEY", 7, 1 },   /* "blocked" is a file: cannot work */
    };

    assert_int_equal(acme_store_put(f->st, "certs/d/fullchain.pem", "OLD CHAIN", 9, 0, &err), 0);
    assert_int_equal(acme_store_put(f->st, "certs/d/meta.json", "OLD META", 8, 0, &err), 0);
    assert_int_equal(acme_store_put(f->st, "certs/blocked", "file", 4, 0, &err), 0);

    assert_int_equal(f->st->ops->commit(f->st, items, 3, &err), -1);
    assert_int_equal(err.kind, ACME_ERR_STORE);
    assert_non_null(strstr(err.msg, "blocked"));
    /* nothing changed, nothing left over */
    check_value(f->st, "certs/d/fullchain.pem", "OLD CHAIN");
    check_value(f->st, "certs/d/meta.json", "OLD META");
    assert_int_equal(count_files(f->dir, ".next"), 0);
    assert_int_equal(count_files(f->dir, ".tmp."), 0);
    assert_false(exists(path_of(f, ".commit")));
}

static void
test_recovery_journal(void **state)
{
    fixture_t   *f = *state;
    acme_err_t   err;

    /* a crash after the journal was written and one rename was done */
    assert_int_equal(acme_store_put(f->st, "certs/e/fullchain.pem", "OLD CHAIN", 9, 0, &err), 0);
    assert_int_equal(acme_store_put(f->st, "certs/e/privkey.pem", "OLD KEY", 7, 1, &err), 0);
    assert_int_equal(acme_store_put(f->st, "certs/e/order.json", "{}", 2, 0, &err), 0);
    acme_store_close(f->st);
    f->st = NULL;

    write_raw(path_of(f, "certs/e/fullchain.pem"), "NEW CHAIN");                 /* already renamed */
    write_raw(path_of(f, "certs/e/privkey.pem.next"), "NEW KEY");
    write_raw(path_of(f, "certs/e/meta.json.next"), "NEW META");
    write_raw(path_of(f, ".commit"), "acme-store-commit 1\n"
                                     "put certs/e/fullchain.pem\n"
                                     "put certs/e/privkey.pem\n"
                                     "put certs/e/meta.json\n"
                                     "del certs/e/order.json\n"
                                     "put ../../../etc/evil\n");

    f->st = acme_store_fs_open(f->root, 0, &err);
    if (f->st == NULL) {
        fail_msg("reopen: %s", err.msg);
    }
    check_value(f->st, "certs/e/fullchain.pem", "NEW CHAIN");
    check_value(f->st, "certs/e/privkey.pem", "NEW KEY");
    check_value(f->st, "certs/e/meta.json", "NEW META");
    check_value(f->st, "certs/e/order.json", NULL);
    assert_false(exists(path_of(f, ".commit")));
    assert_int_equal(count_files(f->dir, ".next"), 0);
}

static void
test_recovery_stale(void **state)
{
    fixture_t   *f = *state;
    acme_err_t   err;

    /* a crash before the journal: the .next files are garbage, the old values stay */
    assert_int_equal(acme_store_put(f->st, "certs/g/fullchain.pem", "OLD CHAIN", 9, 0, &err), 0);
    acme_store_close(f->st);
    f->st = NULL;
    write_raw(path_of(f, "certs/g/fullchain.pem.next"), "NEW CHAIN");
    write_raw(path_of(f, "certs/g/privkey.pem.next"), "NEW KEY");
    write_raw(path_of(f, "certs/g/fullchain.pem.tmp.123.deadbeef"), "half");

    f->st = acme_store_fs_open(f->root, 0, &err);
    if (f->st == NULL) {
        fail_msg("reopen: %s", err.msg);
    }
    check_value(f->st, "certs/g/fullchain.pem", "OLD CHAIN");
    check_value(f->st, "certs/g/privkey.pem", NULL);
    assert_false(exists(path_of(f, "certs/g/fullchain.pem.next")));
    assert_false(exists(path_of(f, "certs/g/privkey.pem.next")));
    assert_false(exists(path_of(f, "certs/g/fullchain.pem.tmp.123.deadbeef")));
}

static void
test_recovery_on_get(void **state)
{
    fixture_t   *f = *state;
    acme_err_t   err;

    /* another process died mid-commit while we were running: the next get finishes it */
    assert_int_equal(acme_store_put(f->st, "certs/h/fullchain.pem", "OLD", 3, 0, &err), 0);
    write_raw(path_of(f, "certs/h/fullchain.pem.next"), "NEW");
    write_raw(path_of(f, ".commit"), "acme-store-commit 1\nput certs/h/fullchain.pem\n");
    check_value(f->st, "certs/h/fullchain.pem", "NEW");
    assert_false(exists(path_of(f, ".commit")));
    assert_false(exists(path_of(f, "certs/h/fullchain.pem.next")));

    /* a garbage journal is dropped */
    write_raw(path_of(f, "certs/h/fullchain.pem.next"), "NEWER");
    write_raw(path_of(f, ".commit"), "something else\nput certs/h/fullchain.pem\n");
    check_value(f->st, "certs/h/fullchain.pem", "NEW");
    assert_false(exists(path_of(f, ".commit")));
}

static void
test_locks(void **state)
{
    fixture_t     *f = *state;
    acme_err_t     err;
    acme_lock_t   *a = NULL, *b = NULL, *c = NULL;
    acme_store_t  *st2;
    mode_t         old;

    old = umask(0777);
    assert_int_equal(f->st->ops->lock(f->st, "cert-example.org", &a, &err), 1);
    umask(old);
    assert_non_null(a);
    assert_int_equal(mode_of(path_of(f, "locks")), 0700);
    assert_int_equal(mode_of(path_of(f, "locks/cert-example.org.lock")), 0600);
    assert_int_equal(mode_of(path_of(f, ".lock")), 0600);

    /* held: by this handle and by another one (another open file description) */
    assert_int_equal(f->st->ops->lock(f->st, "cert-example.org", &b, &err), 0);
    assert_null(b);
    st2 = acme_store_fs_open(f->root, 0, &err);
    assert_non_null(st2);
    assert_int_equal(st2->ops->lock(st2, "cert-example.org", &b, &err), 0);
    assert_null(b);
    /* other names are independent */
    assert_int_equal(st2->ops->lock(st2, "cert-other", &c, &err), 1);

    f->st->ops->unlock(a);
    assert_int_equal(st2->ops->lock(st2, "cert-example.org", &b, &err), 1);
    assert_non_null(b);
    assert_int_equal(f->st->ops->lock(f->st, "cert-example.org", &a, &err), 0);
    st2->ops->unlock(b);
    st2->ops->unlock(c);
    acme_store_close(st2);

    assert_int_equal(f->st->ops->lock(f->st, "cert-example.org", &a, &err), 1);
    f->st->ops->unlock(a);

    assert_int_equal(f->st->ops->lock(f->st, "../x", &a, &err), -1);
    assert_int_equal(err.kind, ACME_ERR_INPUT);
    assert_int_equal(f->st->ops->lock(f->st, "a/b", &a, &err), -1);
    assert_int_equal(f->st->ops->lock(f->st, "", &a, &err), -1);
    assert_null(a);
}

static void
test_open_errors(void **state)
{
    fixture_t     *f = *state;
    acme_err_t     err;
    acme_store_t  *st;
    char           p[256];

    snprintf(p, sizeof(p), "%s/missing/deeper", f->dir);
    st = acme_store_fs_open(p, 0, &err);
    assert_null(st);
    assert_non_null(strstr(err.msg, p));

    snprintf(p, sizeof(p), "%s/afile", f->dir);
    write_raw(p, "x");
    st = acme_store_fs_open(p, 1, &err);
    assert_null(st);
    assert_non_null(strstr(err.msg, p));
    st = acme_store_fs_open(p, 0, &err);
    assert_null(st);
    assert_non_null(strstr(err.msg, "not a directory"));

    if (geteuid() != 0) {
        snprintf(p, sizeof(p), "%s/readonly", f->dir);
        assert_int_equal(mkdir(p, 0500), 0);
        st = acme_store_fs_open(p, 0, &err);
        assert_null(st);
        assert_non_null(strstr(err.msg, "not writable"));
    }
    assert_null(acme_store_fs_open(NULL, 1, &err));
    assert_null(acme_store_fs_open("", 1, &err));

    /* a trailing slash is fine */
    snprintf(p, sizeof(p), "%s/slash/", f->dir);
    st = acme_store_fs_open(p, 1, &err);
    assert_non_null(st);
    acme_store_close(st);
}

/* ---- links planted by whoever owns the directory (the worker user) ---- */

/* An outside directory holding a file the store must never touch: <dir>/victim/passwd. */
static void
make_victim(fixture_t *f, char *victim, size_t size)
{
    char p[300];

    snprintf(victim, size, "%s/victim", f->dir);
    assert_int_equal(mkdir(victim, 0755), 0);
    snprintf(p, sizeof(p), "%s/passwd", victim);
    write_raw(p, "root:x:0:0");
}

static int
victim_intact(const char *victim)
{
    char   p[300];
    DIR   *d;
    int    n = 0;
    struct dirent *de;

    snprintf(p, sizeof(p), "%s/passwd", victim);
    if (!exists(p)) {
        return 0;
    }
    d = opendir(victim);
    assert_non_null(d);
    while ((de = readdir(d)) != NULL) {
        n += de->d_name[0] != '.';
    }
    closedir(d);
    return n == 1;
}

static void
test_resolver(void **state)
{
    fixture_t   *f = *state;
    acme_err_t   err;
    char         victim[256];
    const char  *leaf;
    int          dfd, fd;

    make_victim(f, victim, sizeof(victim));
    dfd = open(f->root, O_RDONLY | O_DIRECTORY);
    assert_true(dfd >= 0);
    assert_int_equal(mkdir(path_of(f, "a"), 0700), 0);
    assert_int_equal(mkdir(path_of(f, "a/b"), 0700), 0);
    assert_int_equal(symlink(victim, path_of(f, "a/link")), 0);
    write_raw(path_of(f, "a/file"), "x");

    /* plain paths */
    fd = acme_beneath_dir(dfd, "a/b", 0, "STATE", &err);
    assert_true(fd >= 0);
    close(fd);
    fd = acme_beneath_parent(dfd, "a/b/c", 0, &leaf, "STATE", &err);
    assert_true(fd >= 0);
    assert_string_equal(leaf, "c");
    close(fd);

    /* a link in the middle or at the end: refused, named, never followed (with create too) */
    assert_int_equal(acme_beneath_dir(dfd, "a/link/x", 0, "STATE", &err), -1);
    assert_non_null(strstr(err.msg, "STATE/a/link is a symbolic link"));
    assert_int_equal(acme_beneath_dir(dfd, "a/link", 0, "STATE", &err), -1);
    assert_int_equal(acme_beneath_parent(dfd, "a/link/passwd", 0, &leaf, "STATE", &err), -1);
    assert_non_null(strstr(err.msg, "symbolic link"));
    assert_int_equal(acme_beneath_dir(dfd, "a/link/new", 1, "STATE", &err), -1);
    assert_int_equal(acme_beneath_parent(dfd, "a/link/new/x", 1, &leaf, "STATE", &err), -1);

    /* "..", ".", empty components, absolute paths */
    assert_int_equal(acme_beneath_dir(dfd, "..", 0, "STATE", &err), -1);
    assert_int_equal(acme_beneath_dir(dfd, "a/../..", 0, "STATE", &err), -1);
    assert_int_equal(acme_beneath_parent(dfd, "a/../../victim/passwd", 0, &leaf, "STATE", &err), -1);
    assert_int_equal(acme_beneath_parent(dfd, "../victim/passwd", 1, &leaf, "STATE", &err), -1);
    assert_int_equal(acme_beneath_parent(dfd, "a/..", 0, &leaf, "STATE", &err), -1);
    assert_int_equal(acme_beneath_dir(dfd, "a/./b", 0, "STATE", &err), -1);
    assert_int_equal(acme_beneath_dir(dfd, "a//b", 0, "STATE", &err), -1);
    assert_int_equal(acme_beneath_dir(dfd, victim, 0, "STATE", &err), -1);
    assert_non_null(strstr(err.msg, "absolute"));
    assert_int_equal(acme_beneath_parent(dfd, "/etc/passwd", 0, &leaf, "STATE", &err), -1);
    assert_int_equal(acme_beneath_parent(dfd, "/passwd", 0, &leaf, "STATE", &err), -1);

    /* missing: told apart from an error; a file on the way counts as missing */
    assert_int_equal(acme_beneath_dir(dfd, "a/none/x", 0, "STATE", &err), ACME_BENEATH_MISSING);
    assert_int_equal(acme_beneath_dir(dfd, "a/file/x", 0, "STATE", &err), ACME_BENEATH_MISSING);
    assert_int_equal(acme_beneath_dir(dfd, "a/file/x", 1, "STATE", &err), -1);

    /* create: 0700 whatever the umask */
    {
        mode_t old = umask(0);
        fd = acme_beneath_dir(dfd, "n1/n2", 1, "STATE", &err);
        umask(old);
    }
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(mode_of(path_of(f, "n1")), 0700);
    assert_int_equal(mode_of(path_of(f, "n1/n2")), 0700);

    /* a directory others may write in: tightened when ours */
    assert_int_equal(chmod(path_of(f, "a"), 0777), 0);
    fd = acme_beneath_dir(dfd, "a", 0, "STATE", &err);
    assert_int_equal(acme_beneath_dir_check(fd, geteuid(), 1, "STATE/a", &err), 0);
    close(fd);
    assert_int_equal(mode_of(path_of(f, "a")), 0700);
    assert_int_equal(chmod(path_of(f, "a"), 0777), 0);
    fd = acme_beneath_dir(dfd, "a", 0, "STATE", &err);
    assert_int_equal(acme_beneath_dir_check(fd, geteuid() + 1, 1, "STATE/a", &err), -1);
    assert_non_null(strstr(err.msg, "STATE/a"));
    close(fd);
    close(dfd);
    assert_true(victim_intact(victim));
}

static void
test_link_journal_attack(void **state)
{
    fixture_t   *f = *state;
    acme_err_t   err;
    char         victim[256];

    /* x -> outside, and a journal asking to delete x/passwd and to rename x/passwd.next over it */
    make_victim(f, victim, sizeof(victim));
    assert_int_equal(acme_store_put(f->st, "certs/e/fullchain.pem", "OLD", 3, 0, &err), 0);
    acme_store_close(f->st);
    f->st = NULL;
    assert_int_equal(symlink(victim, path_of(f, "x")), 0);
    write_raw(path_of(f, "certs/e/fullchain.pem.next"), "NEW");
    write_raw(path_of(f, ".commit"), "acme-store-commit 1\n"
                                     "del x/passwd\n"
                                     "put x/passwd\n"
                                     "put certs/e/fullchain.pem\n");
    {
        char p[300];
        snprintf(p, sizeof(p), "%s/passwd.next", victim);
        write_raw(p, "planted");
    }

    /* read-only (a configuration check): the journal is left alone */
    f->st = acme_store_fs_open(f->root, 1 | ACME_STORE_FS_RDONLY, &err);
    assert_non_null(f->st);
    check_value(f->st, "certs/e/fullchain.pem", "OLD");
    assert_true(exists(path_of(f, ".commit")));
    assert_int_equal(acme_store_put(f->st, "certs/e/x", "1", 1, 0, &err), -1);
    assert_non_null(strstr(err.msg, "read-only"));
    assert_int_equal(f->st->ops->del(f->st, "certs/e/fullchain.pem", &err), -1);
    acme_store_close(f->st);

    /* the recovery: refuses the link, names it, applies the rest, drops the journal */
    f->st = acme_store_fs_open(f->root, 0, &err);
    assert_null(f->st);
    assert_non_null(strstr(err.msg, "/x is a symbolic link"));
    {
        char p[300];
        snprintf(p, sizeof(p), "%s/passwd", victim);
        assert_true(exists(p));
        snprintf(p, sizeof(p), "%s/passwd.next", victim);
        assert_true(exists(p));
    }
    assert_false(exists(path_of(f, ".commit")));
    f->st = acme_store_fs_open(f->root, 0, &err);
    assert_non_null(f->st);
    check_value(f->st, "certs/e/fullchain.pem", "NEW");

    /* every operation through the link is refused */
    {
        char *d = NULL;
        assert_int_equal(acme_store_get(f->st, "x/passwd", &d, NULL, &err), -1);
        assert_null(d);
    }
    assert_non_null(strstr(err.msg, "symbolic link"));
    assert_int_equal(acme_store_put(f->st, "x/new", "1", 1, 0, &err), -1);
    assert_non_null(strstr(err.msg, "/x is a symbolic link"));
    assert_int_equal(acme_store_del(f->st, "x/passwd", &err), -1);
    {
        char **names = NULL;
        size_t n = 0;
        assert_int_equal(f->st->ops->list(f->st, "x", &names, &n, &err), -1);
    }
    {
        acme_store_item_t items[2] = {
            { "certs/e/fullchain.pem", "NEWER", 5, 0 },
            { "x/passwd", NULL, 0, 0 },
        };
        assert_int_equal(f->st->ops->commit(f->st, items, 2, &err), -1);
        assert_non_null(strstr(err.msg, "symbolic link"));
        items[1].key = "x/passwd";
        items[1].data = "evil";
        items[1].len = 4;
        assert_int_equal(f->st->ops->commit(f->st, items, 2, &err), -1);
    }
    check_value(f->st, "certs/e/fullchain.pem", "NEW");
    assert_false(exists(path_of(f, ".commit")));
    assert_int_equal(count_files(f->dir, ".next"), 1);         /* the planted victim/passwd.next */
    {
        char p[300];
        snprintf(p, sizeof(p), "%s/passwd.next", victim);
        unlink(p);
    }
    assert_true(victim_intact(victim));
}

static void
test_linked_directories(void **state)
{
    fixture_t     *f = *state;
    acme_err_t     err;
    char           victim[256];
    acme_lock_t   *lk = NULL;
    acme_store_item_t items[2] = {
        { "fallback/e/fullchain.pem", "C", 1, 0 },
        { "fallback/e/privkey.pem", "K", 1, 1 },
    };

    make_victim(f, victim, sizeof(victim));
    assert_int_equal(symlink(victim, path_of(f, "fallback")), 0);
    assert_int_equal(f->st->ops->commit(f->st, items, 2, &err), -1);
    assert_non_null(strstr(err.msg, "/fallback is a symbolic link"));

    assert_int_equal(mkdir(path_of(f, "certs"), 0700), 0);
    assert_int_equal(symlink(victim, path_of(f, "certs/e")), 0);
    items[0].key = "certs/e/fullchain.pem";
    items[1].key = "certs/e/privkey.pem";
    assert_int_equal(f->st->ops->commit(f->st, items, 2, &err), -1);
    assert_non_null(strstr(err.msg, "/certs/e is a symbolic link"));
    assert_int_equal(acme_store_put(f->st, "certs/e/privkey.pem", "K", 1, 1, &err), -1);

    assert_int_equal(symlink(victim, path_of(f, "accounts")), 0);
    assert_int_equal(acme_store_account_save(f->st, "ca", "AK", 2, "{}", &err), -1);
    assert_non_null(strstr(err.msg, "/accounts is a symbolic link"));

    assert_int_equal(symlink(victim, path_of(f, "locks")), 0);
    assert_int_equal(f->st->ops->lock(f->st, "cert-e", &lk, &err), -1);
    assert_non_null(strstr(err.msg, "/locks is a symbolic link"));

    /* a link in place of a file is not read either */
    assert_int_equal(mkdir(path_of(f, "certs/f"), 0700), 0);
    {
        char p[300];
        snprintf(p, sizeof(p), "%s/passwd", victim);
        assert_int_equal(symlink(p, path_of(f, "certs/f/fullchain.pem")), 0);
    }
    {
        char *d = NULL;
        assert_int_equal(acme_store_get(f->st, "certs/f/fullchain.pem", &d, NULL, &err), -1);
        assert_null(d);
        assert_non_null(strstr(err.msg, "symbolic link"));
    }

    /* the state directory itself given as a link */
    assert_int_equal(symlink(f->root, path_of(f, "../state-link")), 0);
    {
        char p[300];
        acme_store_t *st;
        snprintf(p, sizeof(p), "%s/state/state-link", f->dir);
        st = acme_store_fs_open(p, 1, &err);
        assert_null(st);
        assert_non_null(strstr(err.msg, "symbolic link"));
        assert_int_equal(acme_store_fs_prepare(p, -1, -1, &err), -1);
    }
    assert_true(victim_intact(victim));
}

static void
test_commit_rename_fails(void **state)
{
    fixture_t          *f = *state;
    acme_err_t          err;
    acme_store_item_t   items[2] = {
        { "certs/r/privkey.pem", "NEW KEY", 7, 1 },
        { "certs/r/fullchain.pem", "NEW CHAIN", 9, 0 },
    };

    assert_int_equal(acme_store_put(f->st, "certs/r/privkey.pem", "OLD KEY", 7, 1, &err), 0);
    /* something in the way of the second rename (a directory cannot be replaced by a file) */
    assert_int_equal(mkdir(path_of(f, "certs/r/fullchain.pem"), 0700), 0);
    write_raw(path_of(f, "certs/r/fullchain.pem/x"), "x");
    assert_int_equal(f->st->ops->commit(f->st, items, 2, &err), -1);
    assert_non_null(strstr(err.msg, "certs/r/fullchain.pem"));
    /* the journal and the .next not yet renamed stay, for recovery to roll forward */
    assert_true(exists(path_of(f, ".commit")));
    assert_true(exists(path_of(f, "certs/r/fullchain.pem.next")));

    unlink(path_of(f, "certs/r/fullchain.pem/x"));
    rmdir(path_of(f, "certs/r/fullchain.pem"));
    check_value(f->st, "certs/r/fullchain.pem", "NEW CHAIN");
    check_value(f->st, "certs/r/privkey.pem", "NEW KEY");
    assert_false(exists(path_of(f, ".commit")));
}

static void
test_loose_modes(void **state)
{
    fixture_t     *f = *state;
    acme_err_t     err;
    acme_store_t  *st;

    assert_int_equal(acme_store_put(f->st, "certs/m/meta.json", "{}", 2, 0, &err), 0);
    assert_int_equal(chmod(path_of(f, "certs/m"), 0777), 0);
    assert_int_equal(acme_store_put(f->st, "certs/m/meta.json", "{}", 2, 0, &err), 0);
    assert_int_equal(mode_of(path_of(f, "certs/m")), 0700);

    acme_store_close(f->st);
    f->st = NULL;
    assert_int_equal(chmod(f->root, 0755), 0);
    st = acme_store_fs_open(f->root, 0, &err);
    assert_non_null(st);
    assert_int_equal(mode_of(f->root), 0700);
    acme_store_close(st);
}

/* Run as root: a directory another user owns is acted on as that user; prepare gives only the top. */
static void
test_root_as_owner(void **state)
{
    fixture_t     *f = *state;
    acme_err_t     err;
    acme_store_t  *st;
    char           p[300];
    struct stat    sb;
    acme_lock_t   *lk = NULL;

    if (geteuid() != 0) {
        skip();
    }
    snprintf(p, sizeof(p), "%s/worker/state", f->dir);
    assert_int_equal(acme_store_fs_prepare(p, 65534, 65534, &err), 0);
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_uid, 65534);
    assert_int_equal(sb.st_mode & 07777, 0700);
    snprintf(p, sizeof(p), "%s/worker", f->dir);
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_uid, 0);                 /* parents stay root's */

    snprintf(p, sizeof(p), "%s/worker/state", f->dir);
    st = acme_store_fs_open(p, 1, &err);
    if (st == NULL) {
        fail_msg("open: %s", err.msg);
    }
    assert_int_equal(acme_store_put(st, "certs/o/privkey.pem", "K", 1, 1, &err), 0);
    assert_int_equal(st->ops->lock(st, "cert-o", &lk, &err), 1);
    st->ops->unlock(lk);
    snprintf(p, sizeof(p), "%s/worker/state/certs/o/privkey.pem", f->dir);
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_uid, 65534);
    snprintf(p, sizeof(p), "%s/worker/state/certs", f->dir);
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_uid, 65534);
    /* and back to root afterwards: this process's own files are root's */
    assert_int_equal(acme_store_put(f->st, "mine", "1", 1, 0, &err), 0);
    assert_int_equal(stat(path_of(f, "mine"), &sb), 0);
    assert_int_equal(sb.st_uid, 0);

    /* a file root left in there (an older version) is not readable by the owner: a clear error */
    assert_int_equal(chown(p, 0, 0), 0);
    assert_int_equal(chmod(p, 0700), 0);
    assert_int_equal(acme_store_put(st, "certs/o/privkey.pem", "K", 1, 1, &err), -1);
    assert_non_null(strstr(err.msg, "/certs"));
    acme_store_close(st);
}

/* ---- records ---- */

static void
fill_meta(acme_certmeta_t *m)
{
    memset(m, 0, sizeof(*m));
    m->name = strdup("_wildcard.example.org_rsa2048");
    m->nids = 3;
    m->ids = calloc(3, sizeof(acme_ident_t));
    m->ids[0].type = ACME_IDENT_DNS;
    m->ids[0].value = strdup("*.example.org");
    m->ids[1].type = ACME_IDENT_DNS;
    m->ids[1].value = strdup("example.org");
    m->ids[2].type = ACME_IDENT_IP;
    m->ids[2].value = strdup("2001:db8::1");
    m->keyspec.alg = ACME_KEY_RSA;
    m->keyspec.bits = 2048;
    m->ca = strdup("https://acme-v02.api.letsencrypt.org/directory");
    m->profile = strdup("tlsserver");
    m->not_before = 1735787045;
    m->not_after = 1735787045 + 90 * 86400;
    m->ari_cert_id = strdup("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
    m->ari_start = 1735787045 + 60 * 86400;
    m->ari_end = 1735787045 + 62 * 86400;
    m->ari_next_check = 1735787045 + 3600;
    m->renew_at = 1735787045 + 61 * 86400;
    m->failures = 3;
    m->next_try = 1735787045 + 600;
    m->last_error = strdup("order: rateLimited: \"too many\"\nsecond line");
    m->last_error_at = 1735787045 + 1;
    m->ca_wait_until = 1735787045 + 3600;
    m->expiring_notified = 1735787045 + 7200;
    m->revoked_serial = strdup("0a1b2c");
    m->revoked_at = 1735787045 + 9000;
    m->revoked_handled = 1735787045 + 9060;
    m->issued_at = 1735787045 + 2;
}

static void
assert_meta_equal(const acme_certmeta_t *a, const acme_certmeta_t *b)
{
    size_t  i;

    assert_string_equal(a->name, b->name);
    assert_int_equal(a->nids, b->nids);
    for (i = 0; i < a->nids; i++) {
        assert_int_equal(a->ids[i].type, b->ids[i].type);
        assert_string_equal(a->ids[i].value, b->ids[i].value);
    }
    assert_int_equal(a->keyspec.alg, b->keyspec.alg);
    assert_int_equal(a->keyspec.bits, b->keyspec.bits);
    assert_string_equal(a->ca, b->ca);
    assert_string_equal(a->profile, b->profile);
    assert_int_equal(a->not_before, b->not_before);
    assert_int_equal(a->not_after, b->not_after);
    assert_string_equal(a->ari_cert_id, b->ari_cert_id);
    assert_int_equal(a->ari_start, b->ari_start);
    assert_int_equal(a->ari_end, b->ari_end);
    assert_int_equal(a->ari_next_check, b->ari_next_check);
    assert_int_equal(a->renew_at, b->renew_at);
    assert_int_equal(a->failures, b->failures);
    assert_int_equal(a->next_try, b->next_try);
    assert_string_equal(a->last_error, b->last_error);
    assert_int_equal(a->last_error_at, b->last_error_at);
    assert_int_equal(a->ca_wait_until, b->ca_wait_until);
    assert_int_equal(a->expiring_notified, b->expiring_notified);
    assert_string_equal(a->revoked_serial, b->revoked_serial);
    assert_int_equal(a->revoked_at, b->revoked_at);
    assert_int_equal(a->revoked_handled, b->revoked_handled);
    assert_int_equal(a->issued_at, b->issued_at);
}

static void
test_certmeta_json(void **state)
{
    acme_certmeta_t  m, back;
    acme_err_t       err;
    char            *js;

    fill_meta(&m);
    js = acme_certmeta_to_json(&m);
    assert_non_null(js);
    assert_non_null(strstr(js, "\"keyspec\": \"rsa:2048\""));
    assert_non_null(strstr(js, "\"not_after\": \"2025-04-02T03:04:05Z\""));
    assert_non_null(strstr(js, "\"type\": \"ip\""));
    if (acme_certmeta_from_json(js, strlen(js), &back, &err) != 0) {
        fail_msg("%s: %s", js, err.msg);
    }
    assert_meta_equal(&m, &back);
    free(js);
    acme_certmeta_free(&back);
    acme_certmeta_free(&m);
    assert_null(m.name);

    /* a fresh one: zero times are left out and come back as 0; the default key type */
    memset(&m, 0, sizeof(m));
    m.name = "fresh.example";
    js = acme_certmeta_to_json(&m);
    assert_null(strstr(js, "not_after"));
    assert_int_equal(acme_certmeta_from_json(js, strlen(js), &back, &err), 0);
    assert_int_equal(back.not_after, 0);
    assert_int_equal(back.nids, 0);
    assert_int_equal(back.keyspec.alg, ACME_KEY_EC);
    assert_int_equal(back.keyspec.bits, 256);
    assert_null(back.ca);
    free(js);
    acme_certmeta_free(&back);
}

static void
expect_meta_bad(const char *js, const char *msg_part)
{
    acme_certmeta_t  m;
    acme_err_t       err;

    acme_err_clear(&err);
    if (acme_certmeta_from_json(js, strlen(js), &m, &err) == 0) {
        fail_msg("accepted: %s", js);
    }
    if (strstr(err.msg, msg_part) == NULL) {
        fail_msg("message \"%s\" lacks \"%s\"", err.msg, msg_part);
    }
    assert_null(m.name);
    assert_null(m.ids);
    acme_certmeta_free(&m);
}

static void
test_certmeta_ident_errors(void **state)
{
    acme_certmeta_t  m, back;
    acme_err_t       err;
    char            *js;
    json_t          *arr;

    memset(&m, 0, sizeof(m));
    m.name = strdup("two.example");
    m.ident_errors = calloc(2, sizeof(acme_ident_error_t));
    m.nident_errors = 2;
    m.ident_errors[0].ident = strdup("dns:a.two.example");
    m.ident_errors[0].error = strdup("unauthorized: key authorization did not match");
    m.ident_errors[0].at = 1700000000;
    m.ident_errors[1].ident = strdup("ip:192.0.2.1");
    m.ident_errors[1].error = strdup("connection: refused");
    m.ident_errors[1].at = 1700000001;
    js = acme_certmeta_to_json(&m);
    assert_non_null(strstr(js, "\"identifier_errors\""));
    assert_int_equal(acme_certmeta_from_json(js, strlen(js), &back, &err), 0);
    assert_int_equal(back.nident_errors, 2);
    assert_string_equal(back.ident_errors[0].ident, "dns:a.two.example");
    assert_string_equal(back.ident_errors[1].error, "connection: refused");
    assert_int_equal(back.ident_errors[1].at, 1700000001);
    arr = acme_certmeta_ident_errors_json(&back);
    assert_int_equal(json_array_size(arr), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(arr, 0), "identifier")),
                        "dns:a.two.example");
    json_decref(arr);
    free(js);
    acme_certmeta_free(&back);
    acme_certmeta_free(&m);

    /* none: the member is left out, and the status array is empty */
    memset(&m, 0, sizeof(m));
    js = acme_certmeta_to_json(&m);
    assert_null(strstr(js, "identifier_errors"));
    arr = acme_certmeta_ident_errors_json(&m);
    assert_int_equal(json_array_size(arr), 0);
    json_decref(arr);
    free(js);

    expect_meta_bad("{\"name\": \"x\", \"identifiers\": [], \"identifier_errors\": 3}", "\"identifier_errors\"");
    expect_meta_bad("{\"name\": \"x\", \"identifiers\": [], \"identifier_errors\": [7]}",
                    "\"identifier_errors\"[0]");
    expect_meta_bad("{\"name\": \"x\", \"identifiers\": [], \"identifier_errors\": [{\"identifier\": \"dns:a\"}]}",
                    "needs");
    expect_meta_bad("{\"name\": \"x\", \"identifiers\": [], \"identifier_errors\": "
                    "[{\"identifier\": \"dns:a\", \"error\": \"e\", \"at\": 5}]}", "\"at\"");
}

static void
test_certmeta_bad(void **state)
{
    acme_certmeta_t  m;

    expect_meta_bad("{\"name\": \"x\"}", "\"identifiers\"");
    expect_meta_bad("{\"name\": \"x\", \"identifiers\": {}}", "\"identifiers\"");
    expect_meta_bad("{\"name\": \"x\", \"identifiers\": [{\"type\": \"dns\", \"value\": \"a..b\"}]}",
                    "identifiers[0]");
    expect_meta_bad("{\"name\": \"x\", \"identifiers\": [{\"type\": \"dns\", \"value\": \"a.b\"}, 5]}",
                    "identifiers[1]");
    expect_meta_bad("{\"name\": \"x\", \"identifiers\": [{\"type\": \"email\", \"value\": \"a.b\"}]}",
                    "identifiers[0]");
    expect_meta_bad("{\"name\": \"x\", \"identifiers\": [{\"type\": \"ip\", \"value\": \"a.b\"}]}",
                    "not of type ip");
    expect_meta_bad("{\"name\": \"x\", \"identifiers\": [], \"not_after\": 12345}", "\"not_after\"");
    expect_meta_bad("{\"name\": \"x\", \"identifiers\": [], \"renew_at\": \"soon\"}", "\"renew_at\"");
    expect_meta_bad("{\"name\": \"x\", \"identifiers\": [], \"keyspec\": \"dsa:1024\"}", "\"keyspec\"");
    expect_meta_bad("{\"name\": \"x\", \"identifiers\": [], \"ca\": 1}", "\"ca\"");
    expect_meta_bad("{\"name\": \"x\", \"identifiers\": [], \"failures\": -1}", "\"failures\"");
    expect_meta_bad("{\"name\": \"x\", \"identifiers\": [], \"failures\": \"2\"}", "\"failures\"");
    expect_meta_bad("{\"name\": \"../x\", \"identifiers\": []}", "\"name\"");
    expect_meta_bad("[]", "not a JSON object");
    expect_meta_bad("{", "invalid JSON");
    assert_int_equal(acme_certmeta_from_json(NULL, 0, &m, NULL), -1);
    /* unknown members and nulls are fine */
    {
        const char *js = "{\"identifiers\": [], \"future\": 1, \"ca\": null}";
        assert_int_equal(acme_certmeta_from_json(js, strlen(js), &m, NULL), 0);
        assert_null(m.ca);
    }
    acme_certmeta_free(&m);
}

static void
expect_name(const char *id, const char *ks, const char *want)
{
    acme_ident_t    ids[2];
    acme_keyspec_t  k = ACME_KEYSPEC_DEFAULT;
    char           *n;

    assert_int_equal(acme_ident_parse(id, &ids[0], NULL), 0);
    assert_int_equal(acme_ident_parse("second.example", &ids[1], NULL), 0);
    if (ks != NULL) {
        assert_int_equal(acme_keyspec_parse(ks, &k, NULL), 0);
    }
    n = acme_cert_name(ids, 2, ks ? &k : NULL);
    assert_non_null(n);
    assert_string_equal(n, want);
    assert_int_equal(acme_store_name_check(n, "name", NULL), 0);
    free(n);
    acme_ident_free(&ids[0]);
    acme_ident_free(&ids[1]);
}

static void
test_cert_name(void **state)
{
    char           big[260], *a, *b;
    acme_ident_t   id;

    expect_name("example.org", NULL, "example.org");
    expect_name("example.org", "ecdsa:256", "example.org");
    expect_name("Example.ORG", "ecdsa:384", "example.org_ecdsa384");
    expect_name("*.example.org", "rsa:2048", "_wildcard.example.org_rsa2048");
    expect_name("*.example.org", "rsa:4096", "_wildcard.example.org_rsa4096");
    expect_name("*.example.org", NULL, "_wildcard.example.org");
    expect_name("192.0.2.1", NULL, "192.0.2.1");
    expect_name("2001:db8::1", "rsa:3072", "2001_db8__1_rsa3072");
    assert_null(acme_cert_name(NULL, 0, NULL));

    /* very long names stay valid and distinct */
    memset(big, 'a', sizeof(big));
    memcpy(big + 60, ".", 1);
    memcpy(big + 120, ".", 1);
    memcpy(big + 180, ".", 1);
    big[240] = '\0';
    id.type = ACME_IDENT_DNS;
    id.value = big;
    a = acme_cert_name(&id, 1, NULL);
    big[239] = 'b';
    b = acme_cert_name(&id, 1, NULL);
    assert_int_equal(acme_store_name_check(a, "name", NULL), 0);
    assert_string_not_equal(a, b);
    free(a);
    free(b);
}

static void
test_cert_save_load(void **state)
{
    fixture_t        *f = *state;
    acme_err_t        err;
    acme_certmeta_t   m, back;
    char             *chain, *key;
    size_t            clen, klen;

    fill_meta(&m);
    assert_int_equal(acme_store_cert_load(f->st, m.name, &chain, &clen, &key, &klen, &back, &err), 1);
    assert_null(chain);

    /* an order in flight, which the save removes */
    assert_int_equal(acme_store_put(f->st, "certs/_wildcard.example.org_rsa2048/order.json", "{}", 2, 0, &err), 0);
    assert_int_equal(acme_store_put(f->st, "certs/_wildcard.example.org_rsa2048/order.key", "K", 1, 1, &err), 0);

    if (acme_store_cert_save(f->st, m.name, "CHAIN PEM", 9, "KEY PEM", 7, &m, &err) != 0) {
        fail_msg("save: %s", err.msg);
    }
    assert_false(exists(path_of(f, "certs/_wildcard.example.org_rsa2048/order.json")));
    assert_false(exists(path_of(f, "certs/_wildcard.example.org_rsa2048/order.key")));
    assert_int_equal(mode_of(path_of(f, "certs/_wildcard.example.org_rsa2048/privkey.pem")), 0600);
    assert_int_equal(mode_of(path_of(f, "certs/_wildcard.example.org_rsa2048/fullchain.pem")), 0644);
    assert_int_equal(mode_of(path_of(f, "certs/_wildcard.example.org_rsa2048/meta.json")), 0644);
    assert_int_equal(mode_of(path_of(f, "certs/_wildcard.example.org_rsa2048")), 0700);

    assert_int_equal(acme_store_cert_load(f->st, m.name, &chain, &clen, &key, &klen, &back, &err), 0);
    assert_string_equal(chain, "CHAIN PEM");
    assert_int_equal(clen, 9);
    assert_string_equal(key, "KEY PEM");
    assert_int_equal(klen, 7);
    assert_meta_equal(&m, &back);
    free(chain);
    acme_free_secret(key, klen);
    acme_certmeta_free(&back);

    /* only the chain */
    assert_int_equal(acme_store_cert_load(f->st, m.name, &chain, &clen, NULL, NULL, NULL, &err), 0);
    assert_string_equal(chain, "CHAIN PEM");
    free(chain);

    /* meta alone */
    m.failures = 0;
    assert_int_equal(acme_store_meta_save(f->st, &m, &err), 0);
    assert_int_equal(acme_store_meta_load(f->st, m.name, &back, &err), 0);
    assert_meta_equal(&m, &back);
    acme_certmeta_free(&back);
    assert_int_equal(acme_store_meta_load(f->st, "none.example", &back, &err), 1);
    assert_int_equal(acme_store_meta_load(f->st, "../etc", &back, &err), -1);

    /* a corrupt meta file: an error naming it */
    assert_int_equal(acme_store_put(f->st, "certs/broken/meta.json", "{\"identifiers\": 5}", 18, 0, &err), 0);
    assert_int_equal(acme_store_meta_load(f->st, "broken", &back, &err), -1);
    assert_non_null(strstr(err.msg, "certs/broken/meta.json"));
    assert_non_null(strstr(err.msg, "identifiers"));

    /* a missing key is an error */
    assert_int_equal(acme_store_del(f->st, "certs/_wildcard.example.org_rsa2048/privkey.pem", &err), 0);
    assert_int_equal(acme_store_cert_load(f->st, m.name, &chain, &clen, &key, &klen, NULL, &err), -1);
    assert_null(chain);
    assert_null(key);
    assert_non_null(strstr(err.msg, "privkey.pem"));

    assert_int_equal(acme_store_cert_save(f->st, "a/b", "C", 1, "K", 1, &m, &err), -1);
    assert_int_equal(err.kind, ACME_ERR_INPUT);
    acme_certmeta_free(&m);
}

static void
test_account(void **state)
{
    fixture_t   *f = *state;
    acme_err_t   err;
    char        *key, *js;
    size_t       klen;

    assert_int_equal(acme_store_account_load(f->st, "ca.example_dir", &key, &klen, &js, &err), 1);
    assert_null(key);
    assert_int_equal(acme_store_account_save(f->st, "ca.example_dir", "ACCOUNT KEY", 11,
                                             "{\"url\": \"https://ca.example/acct/1\"}", &err), 0);
    assert_int_equal(mode_of(path_of(f, "accounts/ca.example_dir/account.key")), 0600);
    assert_int_equal(mode_of(path_of(f, "accounts/ca.example_dir/account.json")), 0644);
    assert_int_equal(acme_store_account_load(f->st, "ca.example_dir", &key, &klen, &js, &err), 0);
    assert_string_equal(key, "ACCOUNT KEY");
    assert_int_equal(klen, 11);
    assert_string_equal(js, "{\"url\": \"https://ca.example/acct/1\"}");
    acme_free_secret(key, klen);
    free(js);
    assert_int_equal(acme_store_account_load(f->st, "ca.example_dir", &key, &klen, NULL, &err), 0);
    acme_free_secret(key, klen);
    assert_int_equal(acme_store_account_load(f->st, "..", &key, &klen, &js, &err), -1);
    assert_int_equal(acme_store_account_save(f->st, "a/b", "K", 1, NULL, &err), -1);
}

static void
test_challenges(void **state)
{
    fixture_t     *f = *state;
    acme_err_t     err;
    char          *ka, *raw;
    size_t         len;
    acme_ident_t   id;
    acme_ident_t   dns = { ACME_IDENT_DNS, "a.example.org" };
    acme_ident_t   www = { ACME_IDENT_DNS, "www.example.org" };
    acme_ident_t   ip = { ACME_IDENT_IP, "1.2.3.4" };
    const char    *tok = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA";

    /* the record names the identifier the token is for */
    assert_int_equal(acme_store_challenge_put(f->st, "http-01", tok, &dns, "KA1", &err), 0);
    assert_true(exists(path_of(f, "challenges/http-01/evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA")));
    assert_int_equal(acme_store_get(f->st, "challenges/http-01/evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA",
                                    &raw, &len, &err), 0);
    assert_string_equal(raw, "dns a.example.org KA1");
    free(raw);
    assert_int_equal(acme_store_challenge_get(f->st, "http-01", tok, &id, &ka, &err), 0);
    assert_string_equal(ka, "KA1");
    assert_int_equal(id.type, ACME_IDENT_DNS);
    assert_string_equal(id.value, "a.example.org");
    acme_ident_free(&id);
    free(ka);
    assert_int_equal(acme_store_challenge_get(f->st, "http-01", tok, NULL, &ka, &err), 0);
    free(ka);

    /* tls-alpn-01 by server name, case-insensitively; the identifier must be the one the SNI stands for */
    assert_int_equal(acme_store_challenge_put(f->st, "tls-alpn-01", "WWW.Example.org", &www, "KA2", &err), 0);
    assert_true(exists(path_of(f, "challenges/tls-alpn-01/www.example.org")));
    assert_int_equal(acme_store_challenge_get(f->st, "tls-alpn-01", "www.example.org", &id, &ka, &err), 0);
    assert_string_equal(ka, "KA2");
    assert_string_equal(id.value, "www.example.org");
    acme_ident_free(&id);
    free(ka);
    assert_int_equal(acme_store_challenge_put(f->st, "tls-alpn-01", "4.3.2.1.in-addr.arpa", &ip, "KA3", &err), 0);
    assert_int_equal(acme_store_challenge_put(f->st, "tls-alpn-01", "4.3.2.1.in-addr.arpa", &dns, "KA3", &err),
                     -1);
    assert_int_equal(acme_store_challenge_put(f->st, "tls-alpn-01", "www.example.org", &dns, "KA3", &err), -1);

    assert_int_equal(acme_store_challenge_del(f->st, "http-01", tok, &err), 0);
    assert_int_equal(acme_store_challenge_get(f->st, "http-01", tok, &id, &ka, &err), 1);
    assert_null(ka);
    assert_null(id.value);
    assert_int_equal(acme_store_challenge_del(f->st, "http-01", tok, &err), 0);

    /* a record without its identifier (an older release's, or forged) is never answered */
    assert_int_equal(acme_store_put(f->st, "challenges/http-01/evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA",
                                    "KA1", 3, 0, &err), 0);
    assert_int_equal(acme_store_challenge_get(f->st, "http-01", tok, &id, &ka, &err), -1);
    assert_null(ka);
    assert_non_null(strstr(err.msg, "identifier"));
    assert_int_equal(acme_store_put(f->st, "challenges/http-01/evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA",
                                    "dns * KA1", 9, 0, &err), 0);
    assert_int_equal(acme_store_challenge_get(f->st, "http-01", tok, &id, &ka, &err), -1);
    assert_int_equal(acme_store_put(f->st, "challenges/tls-alpn-01/www.example.org", "dns a.example.org KA2", 21,
                                    0, &err), 0);
    assert_int_equal(acme_store_challenge_get(f->st, "tls-alpn-01", "www.example.org", &id, &ka, &err), -1);

    /* refusals */
    assert_int_equal(acme_store_challenge_put(f->st, "http-01", "short", &dns, "KA", &err), -1);
    assert_non_null(strstr(err.msg, "\"short\""));
    assert_int_equal(acme_store_challenge_get(f->st, "http-01", "../../../../etc/passwd", NULL, &ka, &err), -1);
    assert_int_equal(acme_store_challenge_get(f->st, "http-01", "aaaaaaaaaaaaaaaaaaaaaa/..", NULL, &ka, &err), -1);
    assert_int_equal(acme_store_challenge_get(f->st, "tls-alpn-01", "*.example.org", NULL, &ka, &err), -1);
    assert_int_equal(acme_store_challenge_get(f->st, "tls-alpn-01", "..", NULL, &ka, &err), -1);
    assert_int_equal(acme_store_challenge_get(f->st, "tls-alpn-01", "1.2.3.4", NULL, &ka, &err), -1);
    assert_int_equal(acme_store_challenge_get(f->st, "dns-01", "example.org", NULL, &ka, &err), -1);
    assert_non_null(strstr(err.msg, "dns-01"));
    assert_int_equal(acme_store_challenge_put(f->st, "http-01", tok, &dns, "", &err), -1);
    assert_int_equal(acme_store_challenge_put(f->st, "http-01", tok, &dns, NULL, &err), -1);
    assert_int_equal(acme_store_challenge_put(f->st, "http-01", tok, NULL, "KA", &err), -1);
    assert_int_equal(acme_store_challenge_put(f->st, "http-01", tok, &dns, "K A", &err), -1);
}

/* One text of a challenge: what a record holds is what an announcement carries after "a TYPE KEY ". */
static void
test_challenge_text(void **state)
{
    fixture_t             *f = *state;
    acme_err_t             err;
    acme_challenge_msg_t   m;
    acme_ident_t           ip = { ACME_IDENT_IP, "1.2.3.4" };
    acme_ident_type_t      type;
    char                  *raw, *text, *msg, *value, *ka;
    size_t                 len, i;
    const char            *sni = "4.3.2.1.in-addr.arpa";
    static const char     *bad[] = { "", "dns", "dns a.example", "foo a.example k.a", "DNS a.example k.a", NULL };

    text = acme_store_challenge_text(&ip, "k.a");
    assert_non_null(text);
    assert_string_equal(text, "ip 1.2.3.4 k.a");

    /* the record put writes */
    assert_int_equal(acme_store_challenge_put(f->st, "tls-alpn-01", sni, &ip, "k.a", &err), 0);
    assert_int_equal(acme_store_get(f->st, "challenges/tls-alpn-01/4.3.2.1.in-addr.arpa", &raw, &len, &err), 0);
    assert_string_equal(raw, text);

    /* read back as an announcement */
    msg = acme_sprintf("a tls-alpn-01 %s %s", sni, raw);
    assert_non_null(msg);
    assert_int_equal(acme_store_challenge_msg_parse(msg, &m, &err), 0);
    assert_true(m.add);
    assert_int_equal(m.id.type, ACME_IDENT_IP);
    assert_string_equal(m.id.value, "1.2.3.4");
    assert_string_equal(m.key_authz, "k.a");
    acme_store_challenge_msg_free(&m);
    free(msg);
    free(raw);

    /* split undoes it in place */
    assert_int_equal(acme_store_challenge_text_split(text, &type, &value, &ka), 0);
    assert_int_equal(type, ACME_IDENT_IP);
    assert_string_equal(value, "1.2.3.4");
    assert_string_equal(ka, "k.a");
    free(text);
    for (i = 0; bad[i] != NULL; i++) {
        text = strdup(bad[i]);
        assert_non_null(text);
        if (acme_store_challenge_text_split(text, &type, &value, &ka) == 0) {
            fail_msg("split \"%s\"", bad[i]);
        }
        free(text);
    }
}

/* A store whose certificate is renewed between two reads (the first N reads of fullchain.pem see the
 * old one, later reads the new one; privkey.pem is always the new key). */
static int torn_reads;

static int
torn_get(acme_store_t *st, const char *key, char **data, size_t *len, acme_err_t *err)
{
    const char *v;

    (void) st;
    (void) err;
    if (strstr(key, "fullchain.pem") != NULL) {
        v = torn_reads++ < 1 ? "OLD-CHAIN" : "NEW-CHAIN";
    } else if (strstr(key, "privkey.pem") != NULL) {
        v = "NEW-KEY";
    } else {
        return 1;
    }
    *data = strdup(v);
    if (len != NULL) {
        *len = strlen(v);
    }
    return 0;
}

static void
test_cert_load_not_torn(void **state)
{
    acme_store_ops_t  ops;
    acme_store_t      st;
    acme_err_t        err;
    char             *fc, *pk;
    size_t            fl, pl;

    memset(&ops, 0, sizeof(ops));
    ops.get = torn_get;
    st.ops = &ops;
    st.data = NULL;
    torn_reads = 0;
    assert_int_equal(acme_store_cert_load(&st, "torn.example", &fc, &fl, &pk, &pl, NULL, &err), 0);
    /* the certificate read after the key, not the one before it */
    assert_string_equal(fc, "NEW-CHAIN");
    assert_string_equal(pk, "NEW-KEY");
    assert_true(torn_reads >= 3);
    free(fc);
    free(pk);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_certmeta_ident_errors),
        cmocka_unit_test(test_cert_load_not_torn),
        cmocka_unit_test_setup_teardown(test_put_get_modes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_get_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_del_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_rejection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_all_or_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recovery_journal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recovery_stale, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recovery_on_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_locks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resolver, setup, teardown),
        cmocka_unit_test_setup_teardown(test_link_journal_attack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_linked_directories, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_rename_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loose_modes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_root_as_owner, setup, teardown),
        cmocka_unit_test(test_certmeta_json),
        cmocka_unit_test(test_certmeta_bad),
        cmocka_unit_test(test_cert_name),
        cmocka_unit_test_setup_teardown(test_cert_save_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_account, setup, teardown),
        cmocka_unit_test_setup_teardown(test_challenges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_challenge_text, setup, teardown),
    };

    return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
