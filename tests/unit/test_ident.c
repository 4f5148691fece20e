/* Identifiers: parsing, normalisation, reverse names, wildcard matching. */
#include "unit.h"
#include "acme_ident.h"

static void
expect_ok(const char *in, acme_ident_type_t type, const char *value)
{
    acme_ident_t  id;
    acme_err_t    err;

    if (acme_ident_parse(in, &id, &err) != 0) {
        fail_msg("\"%s\" refused: %s", in, err.msg);
    }
    assert_int_equal(id.type, type);
    assert_string_equal(id.value, value);
    acme_ident_free(&id);
    assert_null(id.value);
}

static void
expect_bad(const char *in, const char *msg_part)
{
    acme_ident_t  id;
    acme_err_t    err;

    acme_err_clear(&err);
    if (acme_ident_parse(in, &id, &err) == 0) {
        fail_msg("\"%s\" accepted as \"%s\"", in, id.value);
    }
    assert_null(id.value);
    assert_int_equal(err.kind, ACME_ERR_INPUT);
    if (msg_part != NULL && strstr(err.msg, msg_part) == NULL) {
        fail_msg("\"%s\": message \"%s\" lacks \"%s\"", in, err.msg, msg_part);
    }
}

static void
test_dns_valid(void **state)
{
    expect_ok("example.org", ACME_IDENT_DNS, "example.org");
    expect_ok("WWW.Example.ORG", ACME_IDENT_DNS, "www.example.org");
    expect_ok("example.org.", ACME_IDENT_DNS, "example.org");
    expect_ok("a-b.c-d.example", ACME_IDENT_DNS, "a-b.c-d.example");
    expect_ok("xn--bcher-kva.example", ACME_IDENT_DNS, "xn--bcher-kva.example");
    expect_ok("localhost", ACME_IDENT_DNS, "localhost");
    expect_ok("1a.example", ACME_IDENT_DNS, "1a.example");
    expect_ok("*.example.org", ACME_IDENT_DNS, "*.example.org");
    expect_ok("*.EXAMPLE.org", ACME_IDENT_DNS, "*.example.org");
}

static void
test_dns_lengths(void **state)
{
    char  name[400];
    char  label[70];

    /* 63-byte label fine, 64 not */
    memset(label, 'a', 63);
    label[63] = '\0';
    snprintf(name, sizeof(name), "%s.example", label);
    expect_ok(name, ACME_IDENT_DNS, name);
    snprintf(name, sizeof(name), "a%s.example", label);
    expect_bad(name, "63");

    /* 253 bytes total fine, 254 not: four 62-byte labels and dots make 251 */
    memset(label, 'b', 62);
    label[62] = '\0';
    snprintf(name, sizeof(name), "%s.%s.%s.%s.ab", label, label, label, label);
    assert_int_equal(strlen(name), 254);
    expect_bad(name, "253");
    snprintf(name, sizeof(name), "%s.%s.%s.%s.a", label, label, label, label);
    assert_int_equal(strlen(name), 253);
    expect_ok(name, ACME_IDENT_DNS, name);
    /* a trailing dot does not count */
    snprintf(name, sizeof(name), "%s.%s.%s.%s.a.", label, label, label, label);
    {
        acme_ident_t id;
        assert_int_equal(acme_ident_parse(name, &id, NULL), 0);
        assert_int_equal(strlen(id.value), 253);
        acme_ident_free(&id);
    }
}

static void
test_dns_invalid(void **state)
{
    char big[3000];

    expect_bad(NULL, "empty");
    expect_bad("", "empty");
    expect_bad(".", NULL);
    expect_bad("..", "empty label");
    expect_bad("a..b", "empty label");
    expect_bad(".example.org", "empty label");
    expect_bad("example.org..", "empty label");
    expect_bad("-a.example", "starts with '-'");
    expect_bad("a-.example", "ends with '-'");
    expect_bad("a.-b.example", "starts with '-'");
    expect_bad("under_score.example", "underscore");
    expect_bad("_acme-challenge.example", "underscore");
    expect_bad("b\xc3\xbc" "cher.example", "non-ASCII");
    expect_bad("sp ace.example", "invalid character");
    expect_bad("a/b.example", "invalid character");
    expect_bad("a:b.example", "invalid character");
    expect_bad("new\nline.example", "invalid character");
    expect_bad("*", NULL);
    expect_bad("*.", NULL);
    expect_bad("a.*.example", "'*'");
    expect_bad("*.*.example", "'*'");
    expect_bad("w*.example", "'*'");
    expect_bad("**.example", "'*'");
    expect_bad("1.2.3.256", "numeric");
    expect_bad("1.2.3", "numeric");
    expect_bad("example.123", "numeric");
    expect_bad("[1.2.3.4]", "IPv6");
    expect_bad("[::1", NULL);
    expect_bad("[zz::1]", "IPv6");
    expect_bad("fe80::1%eth0", NULL);
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    expect_bad(big, "longer");
}

static void
test_ip(void **state)
{
    expect_ok("192.0.2.1", ACME_IDENT_IP, "192.0.2.1");
    expect_ok("0.0.0.0", ACME_IDENT_IP, "0.0.0.0");
    expect_ok("::1", ACME_IDENT_IP, "::1");
    expect_ok("[::1]", ACME_IDENT_IP, "::1");
    expect_ok("2001:DB8:0:0:0:0:0:1", ACME_IDENT_IP, "2001:db8::1");
    expect_ok("[2001:0db8:0000:0000:0001:0000:0000:0001]", ACME_IDENT_IP, "2001:db8::1:0:0:1");
    expect_ok("::ffff:192.0.2.1", ACME_IDENT_IP, "::ffff:192.0.2.1");
    /* leading zeros are not an IPv4 address, and not a name either */
    expect_bad("01.2.3.4", NULL);
}

static void
test_type_names(void **state)
{
    acme_ident_type_t  t = 0;

    assert_string_equal(acme_ident_type_name(ACME_IDENT_DNS), "dns");
    assert_string_equal(acme_ident_type_name(ACME_IDENT_IP), "ip");
    assert_int_equal(acme_ident_type_from_name("dns", &t), 0);
    assert_int_equal(t, ACME_IDENT_DNS);
    assert_int_equal(acme_ident_type_from_name("ip", &t), 0);
    assert_int_equal(t, ACME_IDENT_IP);
    assert_int_equal(acme_ident_type_from_name("email", &t), -1);
    assert_int_equal(acme_ident_type_from_name("DNS", &t), -1);
    assert_int_equal(acme_ident_type_from_name(NULL, &t), -1);
}

static void
expect_sni(const char *in, const char *sni)
{
    acme_ident_t  id, back;
    char         *s;

    assert_int_equal(acme_ident_parse(in, &id, NULL), 0);
    s = acme_ident_sni(&id);
    assert_non_null(s);
    assert_string_equal(s, sni);
    /* and back */
    assert_int_equal(acme_ident_from_sni(s, &back, NULL), 0);
    assert_int_equal(back.type, id.type);
    assert_string_equal(back.value, id.value);
    acme_ident_free(&back);
    free(s);
    acme_ident_free(&id);
}

static void
test_from_sni_refused(void **state)
{
    static const char  *bad[] = {
        "", "*.example.org", "1.2.3.in-addr.arpa", "1.2.3.4.5.in-addr.arpa", "01.2.3.4.in-addr.arpa",
        "256.2.3.4.in-addr.arpa", "a.b.c.d.in-addr.arpa", "1..3.4.in-addr.arpa", ".in-addr.arpa",
        "1.0.0.ip6.arpa", "g.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.00.ip6.arpa", "bad name", NULL
    };
    acme_ident_t  id;
    acme_err_t    err;
    int           i;

    (void) state;
    for (i = 0; bad[i] != NULL; i++) {
        if (acme_ident_from_sni(bad[i], &id, &err) == 0) {
            fail_msg("accepted \"%s\" as %s", bad[i], id.value);
        }
        assert_int_equal(err.kind, ACME_ERR_INPUT);
    }
    assert_int_equal(acme_ident_from_sni(NULL, &id, &err), -1);
    /* uppercase is the same name */
    assert_int_equal(acme_ident_from_sni("4.3.2.1.IN-ADDR.ARPA", &id, &err), 0);
    assert_string_equal(id.value, "1.2.3.4");
    acme_ident_free(&id);
}

static void
test_sni(void **state)
{
    acme_ident_t  bad = { ACME_IDENT_IP, "not-an-ip" };

    expect_sni("example.org", "example.org");
    expect_sni("1.2.3.4", "4.3.2.1.in-addr.arpa");
    expect_sni("192.0.2.10", "10.2.0.192.in-addr.arpa");
    expect_sni("::1",
               "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa");
    /* RFC 8738 section 6 example */
    expect_sni("2001:db8::1",
               "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa");
    assert_null(acme_ident_sni(&bad));
    assert_null(acme_ident_sni(NULL));
}

static void
test_sni_normalize(void **state)
{
    static const char  *bad[] = { "", ".", "a_b.example", "a b", "a\xc3\xa9.example", "a:1", NULL };
    char                buf[16];
    int                 i;

    (void) state;
    assert_int_equal(acme_sni_normalize("WWW.Example.ORG", 15, buf, sizeof(buf)), 15);
    assert_string_equal(buf, "www.example.org");
    /* the trailing dot of an absolute name goes */
    assert_int_equal(acme_sni_normalize("Example.org.", 12, buf, sizeof(buf)), 11);
    assert_string_equal(buf, "example.org");
    /* len bounds the input, not a NUL */
    assert_int_equal(acme_sni_normalize("a-1.example.org", 3, buf, sizeof(buf)), 3);
    assert_string_equal(buf, "a-1");
    assert_int_equal(acme_sni_normalize("4.3.2.1.IN-ADDR.ARPA", 20, buf, 20), 0);
    assert_int_equal(acme_sni_normalize("x", 1, buf, 1), 0);
    assert_int_equal(acme_sni_normalize(NULL, 3, buf, sizeof(buf)), 0);
    for (i = 0; bad[i] != NULL; i++) {
        if (acme_sni_normalize(bad[i], strlen(bad[i]), buf, sizeof(buf)) != 0) {
            fail_msg("accepted \"%s\" as \"%s\"", bad[i], buf);
        }
    }
}

static void
test_match(void **state)
{
    assert_true(acme_dns_match("example.org", "example.org"));
    assert_true(acme_dns_match("Example.ORG", "example.org"));
    assert_true(acme_dns_match("example.org.", "example.org"));
    assert_true(acme_dns_match("*.example.org", "www.example.org"));
    assert_true(acme_dns_match("*.example.org", "WWW.example.ORG"));
    assert_true(acme_dns_match("*.example.org", "*.example.org"));
    assert_false(acme_dns_match("*.example.org", "example.org"));
    assert_false(acme_dns_match("*.example.org", "a.b.example.org"));
    assert_false(acme_dns_match("*.example.org", ".example.org"));
    assert_false(acme_dns_match("*.example.org", "wwwexample.org"));
    assert_false(acme_dns_match("*.example.org", "www.example.org.evil"));
    assert_false(acme_dns_match("www.example.org", "*.example.org"));
    assert_false(acme_dns_match("example.org", "example.com"));
    assert_false(acme_dns_match("*", "x"));
    assert_false(acme_dns_match("", ""));
    assert_false(acme_dns_match(NULL, "x"));
    assert_false(acme_dns_match("x", NULL));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dns_valid),
        cmocka_unit_test(test_dns_lengths),
        cmocka_unit_test(test_dns_invalid),
        cmocka_unit_test(test_ip),
        cmocka_unit_test(test_type_names),
        cmocka_unit_test(test_sni),
        cmocka_unit_test(test_from_sni_refused),
        cmocka_unit_test(test_sni_normalize),
        cmocka_unit_test(test_match),
    };

    return cmocka_run_group_tests_name("ident", tests, NULL, NULL);
}
