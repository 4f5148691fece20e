/* Revocations recorded by acmectl for the servers' managers: the list's bounds, its names, a damaged list
 * replaced, the stored certificate's serial. */
#include "unit.h"

#include <unistd.h>
#include <sys/stat.h>
#include "acme_revocation.h"

static void
test_record_and_names(void **state)
{
    char           dir[] = "/tmp/acme-test-revocation-XXXXXX", name[32], serial[32], *text, **names, *s;
    acme_store_t  *st;
    acme_err_t     err;
    size_t         len, n;
    int            i;

    (void) state;
    assert_non_null(mkdtemp(dir));
    st = acme_store_fs_open(dir, 1, &err);
    assert_non_null(st);

    /* none yet */
    assert_int_equal(acme_store_get(st, ACME_REVOCATIONS_KEY, &text, &len, &err), 1);
    /* the newest ACME_REVOCATIONS_MAX are kept, oldest first */
    for (i = 0; i < ACME_REVOCATIONS_MAX + 8; i++) {
        snprintf(name, sizeof(name), "n%d.example.org", i);
        snprintf(serial, sizeof(serial), "%x", i + 256);
        assert_int_equal(acme_revocation_record(st, name, serial, 1735787045 + i, &err), 0);
    }
    assert_int_equal(acme_store_get(st, ACME_REVOCATIONS_KEY, &text, &len, &err), 0);
    assert_non_null(strstr(text, "\"serial\":\"127\""));
    assert_int_equal(acme_revocation_names(text, len, &names, &n), 0);
    free(text);
    assert_int_equal(n, ACME_REVOCATIONS_MAX);
    assert_string_equal(names[0], "n8.example.org");
    assert_string_equal(names[n - 1], "n39.example.org");
    acme_store_list_free(names, n);

    /* a damaged list is replaced by a new one */
    assert_int_equal(acme_store_put(st, ACME_REVOCATIONS_KEY, "{\"x\"", 4, 0, &err), 0);
    assert_int_equal(acme_revocation_record(st, "a.example.org", "0a", 1735787045, &err), 0);
    assert_int_equal(acme_store_get(st, ACME_REVOCATIONS_KEY, &text, &len, &err), 0);
    assert_int_equal(acme_revocation_names(text, len, &names, &n), 0);
    free(text);
    assert_int_equal(n, 1);
    assert_string_equal(names[0], "a.example.org");
    acme_store_list_free(names, n);

    /* not the document: refused; entries without a name skipped */
    assert_int_equal(acme_revocation_names("[]", 2, &names, &n), -1);
    text = "{\"revocations\":[{\"serial\":\"1\"},{\"name\":\"b\"}]}";
    assert_int_equal(acme_revocation_names(text, strlen(text), &names, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(names[0], "b");
    acme_store_list_free(names, n);

    /* no certificate stored: no serial */
    assert_int_equal(acme_revocation_stored_serial(st, "a.example.org", &s, &err), 1);
    assert_null(s);

    acme_store_close(st);
    unit_rmtree(dir);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_and_names),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
