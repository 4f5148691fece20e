/* base64url: RFC 4648 vectors (section 10, in the URL alphabet, unpadded) and strictness. */
#include "unit.h"
#include "acme_b64.h"

static void
check_encode_decode(const char *plain, const char *enc)
{
    char           *e;
    unsigned char  *d;
    size_t          dlen;

    e = acme_b64url_encode((const unsigned char *) plain, strlen(plain));
    assert_non_null(e);
    assert_string_equal(e, enc);
    free(e);

    assert_int_equal(acme_b64url_decode(enc, strlen(enc), &d, &dlen), 0);
    assert_non_null(d);
    assert_int_equal(dlen, strlen(plain));
    assert_memory_equal(d, plain, dlen);
    assert_int_equal(d[dlen], 0);
    free(d);
}

static void
test_rfc4648_vectors(void **state)
{
    check_encode_decode("", "");
    check_encode_decode("f", "Zg");
    check_encode_decode("fo", "Zm8");
    check_encode_decode("foo", "Zm9v");
    check_encode_decode("foob", "Zm9vYg");
    check_encode_decode("fooba", "Zm9vYmE");
    check_encode_decode("foobar", "Zm9vYmFy");
}

static void
test_url_alphabet(void **state)
{
    /* these bytes encode to "+/+/++++" in base64 and "-_-_----" in base64url */
    static const unsigned char  bin[] = { 0xfb, 0xff, 0xbf, 0xfb, 0xef, 0xbe };
    char                       *e;
    unsigned char              *d;
    size_t                      dlen;

    e = acme_b64url_encode(bin, sizeof(bin));
    assert_string_equal(e, "-_-_----");
    assert_int_equal(acme_b64url_decode(e, strlen(e), &d, &dlen), 0);
    assert_int_equal(dlen, sizeof(bin));
    assert_memory_equal(d, bin, sizeof(bin));
    free(d);
    free(e);
}

static void
test_all_bytes_roundtrip(void **state)
{
    unsigned char   bin[256];
    unsigned char  *d;
    char           *e;
    size_t          i, n, dlen;

    for (i = 0; i < sizeof(bin); i++) {
        bin[i] = (unsigned char) (255 - i);
    }
    for (n = 0; n <= sizeof(bin); n++) {
        e = acme_b64url_encode(bin, n);
        assert_non_null(e);
        assert_int_equal(strlen(e), n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0));
        assert_null(strchr(e, '='));
        assert_int_equal(acme_b64url_decode(e, strlen(e), &d, &dlen), 0);
        assert_int_equal(dlen, n);
        if (n) {
            assert_memory_equal(d, bin, n);
        }
        free(d);
        free(e);
    }
}

static void
check_invalid(const char *s)
{
    unsigned char  *d = (unsigned char *) "x";
    size_t          dlen = 99;

    assert_int_equal(acme_b64url_decode(s, strlen(s), &d, &dlen), -1);
    assert_null(d);
    assert_int_equal(dlen, 0);
}

static void
test_invalid(void **state)
{
    check_invalid("Zg==");          /* padding */
    check_invalid("Zm8=");
    check_invalid("Zm9v=");
    check_invalid("+/+/");          /* standard alphabet */
    check_invalid("Zm9v+mFy");
    check_invalid("Zm9v/mFy");
    check_invalid("Zm9v YmFy");     /* whitespace */
    check_invalid("Zm9v\nYmFy");
    check_invalid(" Zm9v");
    check_invalid("Zm9v\t");
    check_invalid("Z");             /* len % 4 == 1 */
    check_invalid("Zm9vY");
    check_invalid("Zh");            /* non-zero unused bits: only "Zg" encodes "f" */
    check_invalid("Zm9");
    check_invalid("Zm\xc3\xa9");    /* non-ASCII */
}

static void
test_embedded_nul_and_length(void **state)
{
    unsigned char  *d;
    size_t          dlen;

    /* the length given counts: "Zm9v\0YmFy" with len 4 decodes "foo", with len 9 fails */
    assert_int_equal(acme_b64url_decode("Zm9v\0YmFy", 4, &d, &dlen), 0);
    assert_int_equal(dlen, 3);
    assert_memory_equal(d, "foo", 3);
    free(d);
    assert_int_equal(acme_b64url_decode("Zm9v\0YmFy", 9, &d, &dlen), -1);
    assert_int_equal(acme_b64url_decode(NULL, 0, &d, &dlen), 0);
    assert_int_equal(dlen, 0);
    free(d);
    assert_int_equal(acme_b64url_decode(NULL, 4, &d, &dlen), -1);
    assert_int_equal(acme_b64url_decode("Zm9v", 4, NULL, &dlen), -1);
}

static void
test_is_token(void **state)
{
    const char *tok = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA";

    assert_int_equal(acme_b64url_is_token(tok, strlen(tok), 128), 1);
    assert_int_equal(acme_b64url_is_token(tok, strlen(tok), strlen(tok)), 1);
    assert_int_equal(acme_b64url_is_token(tok, strlen(tok), strlen(tok) - 1), 0);
    assert_int_equal(acme_b64url_is_token("a", 1, 1), 1);
    assert_int_equal(acme_b64url_is_token("", 0, 10), 0);
    assert_int_equal(acme_b64url_is_token(NULL, 0, 10), 0);
    assert_int_equal(acme_b64url_is_token("abc=", 4, 10), 0);
    assert_int_equal(acme_b64url_is_token("ab/c", 4, 10), 0);
    assert_int_equal(acme_b64url_is_token("ab+c", 4, 10), 0);
    assert_int_equal(acme_b64url_is_token("../x", 4, 10), 0);
    assert_int_equal(acme_b64url_is_token("ab c", 4, 10), 0);
    assert_int_equal(acme_b64url_is_token("ab\0c", 4, 10), 0);
    assert_int_equal(acme_b64url_is_token("A-_z09", 6, 10), 1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc4648_vectors),
        cmocka_unit_test(test_url_alphabet),
        cmocka_unit_test(test_all_bytes_roundtrip),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_embedded_nul_and_length),
        cmocka_unit_test(test_is_token),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
