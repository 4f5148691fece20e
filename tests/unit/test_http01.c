/* HTTP-01 challenge path recognition: hostile paths never yield a token. */
#include "unit.h"

#include "acme_http01.h"

static int
classify(const char *p, size_t n, const char **tok, size_t *tlen)
{
    return acme_http01_parse_path(p, n, tok, tlen);
}

#define C(s) classify(s, sizeof(s) - 1, &tok, &tlen)

static void
test_valid_token(void **state)
{
    const char *tok;
    size_t      tlen;

    assert_int_equal(C("/.well-known/acme-challenge/LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"),
                     ACME_HTTP01_TOKEN);
    assert_int_equal(tlen, 43);
    assert_memory_equal(tok, "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0", 43);
    assert_int_equal(C("/.well-known/acme-challenge/a-b_cccccccccccccccccc"), ACME_HTTP01_TOKEN);
    /* shorter than 128 bits: no CA issues such a token */
    assert_int_equal(C("/.well-known/acme-challenge/a-b_ccccccccccccccccc"), ACME_HTTP01_MALFORMED);
}

static void
test_not_ours(void **state)
{
    const char *tok;
    size_t      tlen;

    assert_int_equal(C("/"), ACME_HTTP01_NOT_CHALLENGE);
    assert_int_equal(C("/index.html"), ACME_HTTP01_NOT_CHALLENGE);
    assert_int_equal(C("/.well-known/acme-challenge"), ACME_HTTP01_NOT_CHALLENGE);
    assert_int_equal(C("/.well-known%2facme-challenge/abc"), ACME_HTTP01_NOT_CHALLENGE);
    assert_int_equal(C("/.well-known/ACME-challenge/abc"), ACME_HTTP01_NOT_CHALLENGE);
    assert_int_equal(C(""), ACME_HTTP01_NOT_CHALLENGE);
}

static void
test_hostile(void **state)
{
    const char *tok;
    size_t      tlen;
    char        big[ACME_HTTP01_PREFIX_LEN + ACME_HTTP01_TOKEN_MAX + 2];

    assert_int_equal(C("/.well-known/acme-challenge/"), ACME_HTTP01_MALFORMED);
    assert_int_equal(C("/.well-known/acme-challenge/../../etc/passwd"), ACME_HTTP01_MALFORMED);
    assert_int_equal(C("/.well-known/acme-challenge/.."), ACME_HTTP01_MALFORMED);
    assert_int_equal(C("/.well-known/acme-challenge/abc%2f..%2fx"), ACME_HTTP01_MALFORMED);
    assert_int_equal(C("/.well-known/acme-challenge/abcdefghijklmnopqrstuvwxyz/def"), ACME_HTTP01_MALFORMED);
    assert_int_equal(C("/.well-known/acme-challenge/abc?x=1"), ACME_HTTP01_MALFORMED);
    assert_int_equal(C("/.well-known/acme-challenge/abc\0def"), ACME_HTTP01_MALFORMED);
    assert_int_equal(C("/.well-known/acme-challenge/ab+c"), ACME_HTTP01_MALFORMED);
    assert_int_equal(C("/.well-known/acme-challenge/ab=c"), ACME_HTTP01_MALFORMED);
    assert_int_equal(C("/.well-known/acme-challenge/ab c"), ACME_HTTP01_MALFORMED);
    assert_int_equal(C("/.well-known/acme-challenge/\xc3\xa9t\xc3\xa9"), ACME_HTTP01_MALFORMED);

    memcpy(big, ACME_HTTP01_PREFIX, ACME_HTTP01_PREFIX_LEN);
    memset(big + ACME_HTTP01_PREFIX_LEN, 'a', ACME_HTTP01_TOKEN_MAX + 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(classify(big, sizeof(big) - 1, &tok, &tlen), ACME_HTTP01_MALFORMED);
    assert_int_equal(classify(big, sizeof(big) - 2, &tok, &tlen), ACME_HTTP01_TOKEN);
    assert_int_equal(tlen, ACME_HTTP01_TOKEN_MAX);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_token),
        cmocka_unit_test(test_not_ours),
        cmocka_unit_test(test_hostile),
    };

    return cmocka_run_group_tests_name("http01", tests, NULL, NULL);
}
