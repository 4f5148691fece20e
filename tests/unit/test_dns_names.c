/* The records of the DNS challenge types other than dns-01: names, dns-persist-01's values. */
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

static void
test_dns_persist_match(void **state)
{
    char        *iss[] = { "letsencrypt.org", "pebble.letsencrypt.org" }, why[200];
    const char  *acct = "https://acme.example/acct/1";
    long long    until;
    char        *v;

    v = acme_dns_persist_value("letsencrypt.org", acct, 1, 1800000000LL);
    assert_string_equal(v, "letsencrypt.org; accounturi=https://acme.example/acct/1; policy=wildcard; "
                        "persistUntil=1800000000");
    assert_int_equal(acme_dns_persist_match(v, iss, 2, acct, 1, 1700000000, &until, why, sizeof(why)), 1);
    assert_int_equal(until, 1800000000LL);
    /* passed */
    assert_int_equal(acme_dns_persist_match(v, iss, 2, acct, 1, 1900000000, &until, why, sizeof(why)), 0);
    assert_string_equal(why, "its persistUntil=1800000000 has passed");
    free(v);
    /* RFC 8659: tags case-insensitive, spaces and tabs around; policy's value too */
    assert_int_equal(acme_dns_persist_match("pebble.letsencrypt.org ;\tAccountURI=https://acme.example/acct/1 ;"
                                            " Policy=WILDCARD", iss, 2, acct, 1, 0, &until, why, sizeof(why)), 1);
    /* a wildcard needs policy=wildcard; another account; another CA's record is not ours to judge */
    assert_int_equal(acme_dns_persist_match("letsencrypt.org; accounturi=https://acme.example/acct/1", iss, 2,
                                            acct, 1, 0, &until, why, sizeof(why)), 0);
    assert_string_equal(why, "no policy=wildcard, which a wildcard needs");
    assert_int_equal(acme_dns_persist_match("letsencrypt.org; accounturi=https://acme.example/acct/2", iss, 2,
                                            acct, 0, 0, &until, why, sizeof(why)), 0);
    assert_string_equal(why, "accounturi=https://acme.example/acct/2 is another account's");
    assert_int_equal(acme_dns_persist_match("other-ca.example; accounturi=https://acme.example/acct/1", iss, 2,
                                            acct, 0, 0, &until, why, sizeof(why)), 0);
    assert_string_equal(why, "");
    assert_int_equal(acme_dns_persist_match("letsencrypt.org; accounturi", iss, 2, acct, 0, 0, &until, why,
                                            sizeof(why)), 0);
    assert_string_equal(why, "a malformed parameter (not tag=value)");
    v = acme_dns_persist_name("*.example.org");
    assert_string_equal(v, "_validation-persist.example.org");
    free(v);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dns_account01_name),
        cmocka_unit_test(test_dns_persist_match),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
