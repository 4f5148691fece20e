/* The record names of the DNS challenge types other than dns-01. */
#include "unit.h"

#include <stdlib.h>
#include "acme_dns.h"

static void
test_dns_account01_name(void **state)
{
    char *n;

    /* the example of draft-ietf-acme-dns-account-label: base32 of the first 10 bytes of SHA-256 */
    n = acme_dns_account01_name("example.org", "https://example.com/acme/acct/ExampleAccount");
    assert_string_equal(n, "_ujmmovf2vn55tgye._acme-challenge.example.org");
    free(n);
    /* a wildcard's record is its domain's */
    n = acme_dns_account01_name("*.example.org", "https://example.com/acme/acct/ExampleAccount");
    assert_string_equal(n, "_ujmmovf2vn55tgye._acme-challenge.example.org");
    free(n);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dns_account01_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
