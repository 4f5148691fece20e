/*
 * Replays the fuzzing seeds (tests/fuzz/corpus/<target>/) and every crash ever found
 * (tests/fuzz/regressions/<target>/) through the fuzz targets in the normal build, so that `make test`
 * and `make test-asan` keep them. The directory is $ACME_FUZZ_DIR, by default tests/fuzz next to this
 * source file (the tests run from the top of the tree). FUZZ_REPLAY_VERBOSE=1 names each input as it runs.
 */
#include "unit.h"

#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>

static const char  *fuzz_current = "";

/* A broken property names the input and fails the test (under libFuzzer it aborts). */
#define FUZZ_FAIL(...)                                   \
    do {                                                 \
        print_error("input %s:\n", fuzz_current);        \
        fail_msg(__VA_ARGS__);                           \
    } while (0)

#include "../fuzz/targets.c"

static char  fuzz_root[4096];

static const char *
root_dir(void)
{
    const char  *env = getenv("ACME_FUZZ_DIR");
    const char  *slash;

    if (fuzz_root[0] == '\0') {
        if (env != NULL && env[0] != '\0') {
            snprintf(fuzz_root, sizeof(fuzz_root), "%s", env);
        } else {
            slash = strrchr(__FILE__, '/');
            snprintf(fuzz_root, sizeof(fuzz_root), "%.*s%s../fuzz", slash ? (int) (slash - __FILE__) : 0,
                     __FILE__, slash ? "/" : "");
        }
    }
    return fuzz_root;
}

static int
is_dir(const char *path)
{
    struct stat  st;

    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int
visible(const struct dirent *d)
{
    return d->d_name[0] != '.';
}

/* Every file of dir through t; returns how many (-1 when dir is absent). */
static int
replay_dir(const fuzz_target_t *t, const char *dir)
{
    struct dirent  **ents;
    char             path[8192];
    uint8_t         *buf;
    FILE            *f;
    long             size;
    int              n, i, count = 0;

    if (!is_dir(dir)) {
        return -1;
    }
    n = scandir(dir, &ents, visible, alphasort);
    if (n < 0) {
        fail_msg("cannot list %s: %s", dir, strerror(errno));
    }
    for (i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, ents[i]->d_name);
        free(ents[i]);
        if (is_dir(path)) {
            continue;
        }
        f = fopen(path, "rb");
        if (f == NULL) {
            fail_msg("cannot open %s: %s", path, strerror(errno));
        }
        assert_int_equal(fseek(f, 0, SEEK_END), 0);
        size = ftell(f);
        assert_true(size >= 0);
        rewind(f);
        /* exactly the input's size, so that ASan sees any read past its end */
        buf = malloc(size > 0 ? (size_t) size : 1);
        assert_non_null(buf);
        assert_int_equal(fread(buf, 1, (size_t) size, f), (size_t) size);
        fclose(f);

        fuzz_current = path;
        if (getenv("FUZZ_REPLAY_VERBOSE") != NULL) {
            print_message("  %s\n", path);
        }
        assert_int_equal(t->fn(buf, (size_t) size), 0);
        fuzz_current = "";
        free(buf);
        count++;
    }
    free(ents);
    return count;
}

static void
replay_target(void **state)
{
    const fuzz_target_t  *t = NULL;
    const char           *name = *state;
    char                  dir[4096 + 64];
    size_t                i;
    int                   seeds, regs;

    for (i = 0; i < FUZZ_NTARGETS; i++) {
        if (strcmp(fuzz_targets[i].name, name) == 0) {
            t = &fuzz_targets[i];
        }
    }
    assert_non_null(t);

    snprintf(dir, sizeof(dir), "%s/corpus/%s", root_dir(), name);
    seeds = replay_dir(t, dir);
    if (seeds <= 0) {
        fail_msg("no seeds in %s (set ACME_FUZZ_DIR to the tests/fuzz directory)", dir);
    }
    snprintf(dir, sizeof(dir), "%s/regressions/%s", root_dir(), name);
    regs = replay_dir(t, dir);
    print_message("fuzz target %s: %d seeds, %d regressions replayed\n", name, seeds, regs < 0 ? 0 : regs);
}

/* Every directory under corpus/ and regressions/ is a target: a typo must not hide a regression. */
static void
no_stray_dirs(void **state)
{
    static const char  *kinds[] = { "corpus", "regressions" };
    struct dirent     **ents;
    char                dir[4096 + 64], path[8192];
    size_t              k, i;
    int                 n, j, known;

    for (k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        snprintf(dir, sizeof(dir), "%s/%s", root_dir(), kinds[k]);
        if (!is_dir(dir)) {
            if (k == 0) {
                fail_msg("no %s (set ACME_FUZZ_DIR to the tests/fuzz directory)", dir);
            }
            continue;
        }
        n = scandir(dir, &ents, visible, alphasort);
        assert_true(n >= 0);
        for (j = 0; j < n; j++) {
            snprintf(path, sizeof(path), "%s/%s", dir, ents[j]->d_name);
            known = 0;
            for (i = 0; i < FUZZ_NTARGETS; i++) {
                known |= strcmp(fuzz_targets[i].name, ents[j]->d_name) == 0;
            }
            if (is_dir(path) && !known) {
                fail_msg("%s is not named after a fuzz target", path);
            }
            free(ents[j]);
        }
        free(ents);
    }
}

int
main(void)
{
#define FUZZ_REPLAY_TEST(n)  { "replay_" #n, replay_target, NULL, NULL, (void *) #n },
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(no_stray_dirs),
        FUZZ_TARGETS(FUZZ_REPLAY_TEST)
    };
#undef FUZZ_REPLAY_TEST

    return cmocka_run_group_tests(tests, NULL, NULL);
}
