/* Orders, authorizations, challenges, renewalInfo, RFC 3339 times. */
#include "unit.h"
#include "acme_resource.h"

#define TOKEN  "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"

static void
test_status(void **state)
{
    assert_int_equal(acme_status_parse("pending"), ACME_ST_PENDING);
    assert_int_equal(acme_status_parse("ready"), ACME_ST_READY);
    assert_int_equal(acme_status_parse("processing"), ACME_ST_PROCESSING);
    assert_int_equal(acme_status_parse("valid"), ACME_ST_VALID);
    assert_int_equal(acme_status_parse("invalid"), ACME_ST_INVALID);
    assert_int_equal(acme_status_parse("expired"), ACME_ST_EXPIRED);
    assert_int_equal(acme_status_parse("deactivated"), ACME_ST_DEACTIVATED);
    assert_int_equal(acme_status_parse("revoked"), ACME_ST_REVOKED);
    assert_int_equal(acme_status_parse("Valid"), ACME_ST_UNKNOWN);
    assert_int_equal(acme_status_parse("unknown"), ACME_ST_UNKNOWN);
    assert_int_equal(acme_status_parse(NULL), ACME_ST_UNKNOWN);
    assert_string_equal(acme_status_name(ACME_ST_PROCESSING), "processing");
    assert_string_equal(acme_status_name((acme_status_t) 99), "unknown");
}

static int
order(const char *body, acme_order_t *o, acme_err_t *err)
{
    return acme_order_parse(body, strlen(body), o, err);
}

static void
test_order(void **state)
{
    acme_order_t  o;
    acme_err_t    err;

    assert_int_equal(order("{\"status\": \"pending\", \"expires\": \"2016-01-05T14:09:07.99Z\","
                           " \"identifiers\": [{\"type\": \"dns\", \"value\": \"www.example.org\"}],"
                           " \"notBefore\": \"x\", \"unknown\": {},"
                           " \"authorizations\": [\"https://example.com/acme/authz/PAniVnsZcis\","
                           "                      \"https://example.com/acme/authz/r4HqLzrSrpI\"],"
                           " \"finalize\": \"https://example.com/acme/order/TOlocE8rfgo/finalize\"}", &o, &err), 0);
    assert_int_equal(o.status, ACME_ST_PENDING);
    assert_int_equal(o.nauthorizations, 2);
    assert_string_equal(o.authorizations[1], "https://example.com/acme/authz/r4HqLzrSrpI");
    assert_string_equal(o.finalize, "https://example.com/acme/order/TOlocE8rfgo/finalize");
    assert_null(o.certificate);
    assert_null(o.error);
    assert_int_equal(o.expires, 1452002947);
    acme_order_free(&o);

    assert_int_equal(order("{\"status\": \"processing\", \"authorizations\": [],"
                           " \"finalize\": \"https://ca/f\"}", &o, &err), 0);
    assert_int_equal(o.status, ACME_ST_PROCESSING);
    assert_int_equal(o.nauthorizations, 0);
    acme_order_free(&o);

    assert_int_equal(order("{\"status\": \"valid\", \"authorizations\": [\"https://ca/a\"],"
                           " \"finalize\": \"https://ca/f\", \"certificate\": \"https://ca/cert/1\"}", &o, &err), 0);
    assert_int_equal(o.status, ACME_ST_VALID);
    assert_string_equal(o.certificate, "https://ca/cert/1");
    acme_order_free(&o);

    assert_int_equal(order("{\"status\": \"invalid\", \"authorizations\": [\"https://ca/a\"],"
                           " \"finalize\": \"https://ca/f\", \"error\": {\"type\": "
                           "\"urn:ietf:params:acme:error:unauthorized\", \"detail\": \"no\"}}", &o, &err), 0);
    assert_int_equal(o.status, ACME_ST_INVALID);
    assert_non_null(o.error);
    assert_true(acme_problem_is(o.error, "unauthorized"));
    acme_order_free(&o);
}

static void
expect_order_bad(const char *body, const char *msg_part)
{
    acme_order_t  o;
    acme_err_t    err;

    acme_err_clear(&err);
    if (acme_order_parse(body, body ? strlen(body) : 0, &o, &err) == 0) {
        fail_msg("accepted: %s", body);
    }
    assert_int_equal(err.kind, ACME_ERR_BADRESPONSE);
    if (strstr(err.msg, msg_part) == NULL) {
        fail_msg("message \"%s\" lacks \"%s\"", err.msg, msg_part);
    }
    assert_null(o.authorizations);
    assert_null(o.finalize);
    acme_order_free(&o);
}

static void
test_order_bad(void **state)
{
    acme_buf_t  b = { NULL, 0, 0 };
    int         i;

    expect_order_bad("{\"authorizations\": [], \"finalize\": \"https://ca/f\"}", "missing \"status\"");
    expect_order_bad("{\"status\": 1, \"authorizations\": [], \"finalize\": \"https://ca/f\"}",
                     "\"status\" is not a string");
    expect_order_bad("{\"status\": \"weird\", \"authorizations\": [], \"finalize\": \"https://ca/f\"}",
                     "unexpected \"status\" \"weird\"");
    expect_order_bad("{\"status\": \"revoked\", \"authorizations\": [], \"finalize\": \"https://ca/f\"}",
                     "\"status\"");
    expect_order_bad("{\"status\": \"pending\", \"finalize\": \"https://ca/f\"}", "missing \"authorizations\"");
    expect_order_bad("{\"status\": \"pending\", \"authorizations\": \"https://ca/a\", \"finalize\": \"https://ca/f\"}",
                     "\"authorizations\" is not an array");
    expect_order_bad("{\"status\": \"pending\", \"authorizations\": [\"https://ca/a\", 5],"
                     " \"finalize\": \"https://ca/f\"}", "authorizations[1]");
    expect_order_bad("{\"status\": \"pending\", \"authorizations\": [\"file:///etc/passwd\"],"
                     " \"finalize\": \"https://ca/f\"}", "authorizations[0]");
    expect_order_bad("{\"status\": \"pending\", \"authorizations\": []}", "missing \"finalize\"");
    expect_order_bad("{\"status\": \"pending\", \"authorizations\": [], \"finalize\": null}", "finalize");
    expect_order_bad("{\"status\": \"pending\", \"authorizations\": [], \"finalize\": \"/f\"}", "\"finalize\"");
    expect_order_bad("{\"status\": \"valid\", \"authorizations\": [], \"finalize\": \"https://ca/f\"}",
                     "\"certificate\" is missing");
    expect_order_bad("{\"status\": \"valid\", \"authorizations\": [], \"finalize\": \"https://ca/f\","
                     " \"certificate\": 3}", "\"certificate\"");
    expect_order_bad("{\"status\": \"pending\", \"authorizations\": [], \"finalize\": \"https://ca/f\","
                     " \"expires\": \"tomorrow\"}", "\"expires\"");
    expect_order_bad("{\"status\": \"pending\", \"authorizations\": [], \"finalize\": \"https://ca/f\","
                     " \"error\": \"bad\"}", "\"error\"");
    expect_order_bad("[]", "not a JSON object");
    expect_order_bad("{\"status\"", "invalid JSON");
    expect_order_bad("", "empty");
    expect_order_bad(NULL, "empty");

    acme_buf_printf(&b, "{\"status\": \"pending\", \"finalize\": \"https://ca/f\", \"authorizations\": [");
    for (i = 0; i < 5000; i++) {
        acme_buf_printf(&b, "%s\"https://ca/a/%d\"", i ? "," : "", i);
    }
    acme_buf_printf(&b, "]}");
    expect_order_bad(b.data, "5000 authorizations");
    acme_buf_free(&b);
}

static int
authz(const char *body, acme_authz_t *a, acme_err_t *err)
{
    return acme_authz_parse(body, strlen(body), a, err);
}

static void
test_authz(void **state)
{
    acme_authz_t       a;
    acme_err_t         err;
    acme_challenge_t  *c;

    assert_int_equal(authz("{\"status\": \"pending\", \"expires\": \"2016-01-02T14:09:30Z\","
                           " \"identifier\": {\"type\": \"dns\", \"value\": \"WWW.example.org\"},"
                           " \"challenges\": ["
                           "  {\"url\": \"https://example.com/acme/chall/prV_B7yEyA4\", \"type\": \"http-01\","
                           "   \"status\": \"pending\", \"token\": \"DGyRejmCefe7v4NfDGDKfA\"},"
                           "  {\"url\": \"https://example.com/acme/chall/Rg5dV14Gh1Q\", \"type\": \"dns-01\","
                           "   \"status\": \"pending\", \"token\": \"" TOKEN "\"},"
                           "  {\"url\": \"https://example.com/acme/chall/x\", \"type\": \"tls-alpn-01\","
                           "   \"status\": \"processing\", \"token\": \"" TOKEN "\"},"
                           "  {\"url\": \"https://example.com/acme/chall/y\", \"type\": \"future-01\","
                           "   \"status\": \"pending\", \"token\": \"short\"},"
                           "  {\"url\": \"https://example.com/acme/chall/z\", \"type\": \"future-02\","
                           "   \"status\": \"pending\"}"
                           "]}", &a, &err), 0);
    assert_int_equal(a.status, ACME_ST_PENDING);
    assert_int_equal(a.identifier.type, ACME_IDENT_DNS);
    assert_string_equal(a.identifier.value, "www.example.org");
    assert_int_equal(a.wildcard, 0);
    assert_int_equal(a.expires, 1451743770);
    assert_int_equal(a.nchallenges, 5);
    c = acme_authz_challenge(&a, "http-01");
    assert_non_null(c);
    assert_string_equal(c->token, "DGyRejmCefe7v4NfDGDKfA");
    assert_string_equal(c->url, "https://example.com/acme/chall/prV_B7yEyA4");
    assert_int_equal(c->status, ACME_ST_PENDING);
    c = acme_authz_challenge(&a, "tls-alpn-01");
    assert_non_null(c);
    assert_int_equal(c->status, ACME_ST_PROCESSING);
    assert_string_equal(c->token, TOKEN);
    /* unknown types are kept, a bad or missing token is dropped */
    c = acme_authz_challenge(&a, "future-01");
    assert_non_null(c);
    assert_null(c->token);
    c = acme_authz_challenge(&a, "future-02");
    assert_non_null(c);
    assert_null(c->token);
    assert_null(acme_authz_challenge(&a, "dns-account-01"));
    acme_authz_free(&a);

    /* a wildcard authorization, an IP one, an invalid one with its problem */
    assert_int_equal(authz("{\"status\": \"valid\", \"wildcard\": true,"
                           " \"identifier\": {\"type\": \"dns\", \"value\": \"example.org\"},"
                           " \"challenges\": []}", &a, &err), 0);
    assert_int_equal(a.wildcard, 1);
    assert_int_equal(a.nchallenges, 0);
    acme_authz_free(&a);

    assert_int_equal(authz("{\"status\": \"pending\", \"identifier\": {\"type\": \"ip\", \"value\": \"2001:DB8::1\"},"
                           " \"challenges\": []}", &a, &err), 0);
    assert_int_equal(a.identifier.type, ACME_IDENT_IP);
    assert_string_equal(a.identifier.value, "2001:db8::1");
    acme_authz_free(&a);

    assert_int_equal(authz("{\"status\": \"invalid\", \"identifier\": {\"type\": \"dns\", \"value\": \"a.example\"},"
                           " \"challenges\": [{\"url\": \"https://ca/c\", \"type\": \"http-01\", \"status\": \"invalid\","
                           " \"token\": \"" TOKEN "\", \"error\": {\"type\": \"urn:ietf:params:acme:error:connection\","
                           " \"detail\": \"refused\"}}]}", &a, &err), 0);
    assert_int_equal(a.status, ACME_ST_INVALID);
    assert_int_equal(a.challenges[0].status, ACME_ST_INVALID);
    assert_non_null(a.challenges[0].error);
    assert_string_equal(a.challenges[0].error->detail, "refused");
    acme_authz_free(&a);
}

static void
expect_authz_bad(const char *body, const char *msg_part)
{
    acme_authz_t  a;
    acme_err_t    err;

    acme_err_clear(&err);
    if (acme_authz_parse(body, strlen(body), &a, &err) == 0) {
        fail_msg("accepted: %s", body);
    }
    assert_int_equal(err.kind, ACME_ERR_BADRESPONSE);
    if (strstr(err.msg, msg_part) == NULL) {
        fail_msg("message \"%s\" lacks \"%s\"", err.msg, msg_part);
    }
    assert_null(a.challenges);
    assert_null(a.identifier.value);
    acme_authz_free(&a);
}

#define ID  "\"identifier\": {\"type\": \"dns\", \"value\": \"a.example\"}"
#define CH(type, token)  "{\"url\": \"https://ca/c\", \"type\": \"" type "\", \"status\": \"pending\", " token "}"

static void
test_authz_bad(void **state)
{
    acme_buf_t  b = { NULL, 0, 0 };
    int         i;

    expect_authz_bad("{\"status\": \"pending\", \"challenges\": []}", "missing \"identifier\"");
    expect_authz_bad("{\"status\": \"pending\", \"identifier\": \"a.example\", \"challenges\": []}",
                     "\"identifier\" is not an object");
    expect_authz_bad("{\"status\": \"pending\", \"identifier\": {\"type\": \"email\", \"value\": \"a@b\"},"
                     " \"challenges\": []}", "unsupported identifier type \"email\"");
    expect_authz_bad("{\"status\": \"pending\", \"identifier\": {\"value\": \"a.example\"}, \"challenges\": []}",
                     "identifier.type");
    expect_authz_bad("{\"status\": \"pending\", \"identifier\": {\"type\": \"dns\"}, \"challenges\": []}",
                     "identifier.value");
    expect_authz_bad("{\"status\": \"pending\", \"identifier\": {\"type\": \"dns\", \"value\": \"bad..name\"},"
                     " \"challenges\": []}", "identifier.value");
    expect_authz_bad("{\"status\": \"pending\", \"identifier\": {\"type\": \"dns\", \"value\": \"1.2.3.4\"},"
                     " \"challenges\": []}", "not of type dns");
    expect_authz_bad("{\"status\": \"pending\", \"identifier\": {\"type\": \"ip\", \"value\": \"a.example\"},"
                     " \"challenges\": []}", "not of type ip");
    expect_authz_bad("{\"status\": \"ready\", " ID ", \"challenges\": []}", "\"status\"");
    expect_authz_bad("{" ID ", \"challenges\": []}", "missing \"status\"");
    expect_authz_bad("{\"status\": \"pending\", " ID "}", "missing \"challenges\"");
    expect_authz_bad("{\"status\": \"pending\", " ID ", \"challenges\": {}}", "\"challenges\" is not an array");
    expect_authz_bad("{\"status\": \"pending\", " ID ", \"wildcard\": \"yes\", \"challenges\": []}", "\"wildcard\"");
    expect_authz_bad("{\"status\": \"pending\", " ID ", \"challenges\": [5]}", "challenges[0]");
    /* known types with bad tokens */
    expect_authz_bad("{\"status\": \"pending\", " ID ", \"challenges\": [" CH("http-01", "\"token\": \"short\"") "]}",
                     "invalid \"token\"");
    expect_authz_bad("{\"status\": \"pending\", " ID ", \"challenges\": [" CH("http-01", "\"token\": \"" TOKEN "\"")
                     ", " CH("tls-alpn-01", "\"token\": \"../../../../etc/passwd/aaaaaaaaaaaa\"") "]}",
                     "challenges[1]");
    expect_authz_bad("{\"status\": \"pending\", " ID ", \"challenges\": [" CH("http-01", "\"token\": \"" TOKEN "=\"")
                     "]}", "invalid \"token\"");
    expect_authz_bad("{\"status\": \"pending\", " ID ", \"challenges\": [" CH("http-01", "\"x\": 1") "]}",
                     "missing \"token\"");
    expect_authz_bad("{\"status\": \"pending\", " ID ", \"challenges\": [" CH("dns-01", "\"token\": 12345") "]}",
                     "\"token\" is not a string");
    expect_authz_bad("{\"status\": \"pending\", " ID ", \"challenges\": [{\"type\": \"http-01\", \"status\": \"pending\","
                     " \"token\": \"" TOKEN "\"}]}", "missing \"url\"");
    expect_authz_bad("{\"status\": \"pending\", " ID ", \"challenges\": [{\"url\": \"https://ca/c\","
                     " \"status\": \"pending\", \"token\": \"" TOKEN "\"}]}", "missing \"type\"");
    expect_authz_bad("{\"status\": \"pending\", " ID ", \"challenges\": [{\"url\": \"https://ca/c\", \"type\": "
                     "\"http-01\", \"status\": \"ready\", \"token\": \"" TOKEN "\"}]}", "\"status\"");
    expect_authz_bad("{\"status\": \"pending\", " ID ", \"challenges\": [" CH("bad type", "\"x\": 1") "]}",
                     "invalid \"type\"");

    acme_buf_printf(&b, "{\"status\": \"pending\", " ID ", \"challenges\": [");
    for (i = 0; i < 1000; i++) {
        acme_buf_printf(&b, "%s" CH("x-%d", "\"x\": 1"), i ? "," : "", i);
    }
    acme_buf_printf(&b, "]}");
    expect_authz_bad(b.data, "1000 challenges");
    acme_buf_free(&b);
}

static void
test_challenge(void **state)
{
    acme_challenge_t  c;
    acme_err_t        err;
    const char       *ok = "{\"type\": \"http-01\", \"url\": \"https://ca/c/1\", \"status\": \"valid\","
                           " \"token\": \"" TOKEN "\", \"validated\": \"2025-01-01T00:00:00Z\"}";
    const char       *bad = "{\"type\": \"http-01\", \"url\": \"https://ca/c/1\", \"status\": \"valid\","
                            " \"token\": \"abc/def\"}";

    assert_int_equal(acme_challenge_parse(ok, strlen(ok), &c, &err), 0);
    assert_string_equal(c.type, "http-01");
    assert_int_equal(c.status, ACME_ST_VALID);
    assert_string_equal(c.token, TOKEN);
    acme_challenge_free(&c);
    assert_null(c.type);

    assert_int_equal(acme_challenge_parse(bad, strlen(bad), &c, &err), -1);
    assert_non_null(strstr(err.msg, "token"));
    assert_null(c.type);
    acme_challenge_free(&c);
    assert_int_equal(acme_challenge_parse("5", 1, &c, &err), -1);
}

static void
test_token(void **state)
{
    char  t[300];

    assert_true(acme_token_valid(TOKEN));
    assert_true(acme_token_valid("abcdefghijklmnopqrstuv"));           /* 22 */
    assert_false(acme_token_valid("abcdefghijklmnopqrstu"));           /* 21 */
    assert_true(acme_token_valid("-_-_-_-_-_-_-_-_-_-_-_"));
    assert_false(acme_token_valid("abcdefghijklmnopqrstu+"));
    assert_false(acme_token_valid("abcdefghijklmnopqrstu/"));
    assert_false(acme_token_valid("abcdefghijklmnopqrstu="));
    assert_false(acme_token_valid("abcdefghijklmnopqrst.."));
    assert_false(acme_token_valid("abcdefghijk mnopqrstuv"));
    assert_false(acme_token_valid(""));
    assert_false(acme_token_valid(NULL));
    memset(t, 'A', 256);
    t[256] = '\0';
    assert_true(acme_token_valid(t));
    t[256] = 'A';
    t[257] = '\0';
    assert_false(acme_token_valid(t));
}

static void
test_renewal_info(void **state)
{
    acme_renewal_info_t  ri;
    acme_err_t           err;
    const char          *ok = "{\"suggestedWindow\": {\"start\": \"2025-01-02T04:00:00Z\","
                              " \"end\": \"2025-01-03T04:00:00Z\"},"
                              " \"explanationURL\": \"https://acme.example.com/docs/ari\"}";
    const char          *bad[] = {
        "{}",
        "{\"suggestedWindow\": []}",
        "{\"suggestedWindow\": {\"start\": \"2025-01-02T04:00:00Z\"}}",
        "{\"suggestedWindow\": {\"start\": \"2025-01-02T04:00:00Z\", \"end\": 5}}",
        "{\"suggestedWindow\": {\"start\": \"2025-01-03T04:00:00Z\", \"end\": \"2025-01-02T04:00:00Z\"}}",
        "{\"suggestedWindow\": {\"start\": \"2025-01-03T04:00:00Z\", \"end\": \"2025-01-03T04:00:00Z\"}}",
        "[]",
    };
    size_t               i;

    assert_int_equal(acme_renewal_info_parse(ok, strlen(ok), &ri, &err), 0);
    assert_int_equal(ri.start, 1735790400);
    assert_int_equal(ri.end, 1735790400 + 86400);
    assert_string_equal(ri.explanation_url, "https://acme.example.com/docs/ari");
    acme_renewal_info_free(&ri);

    ok = "{\"suggestedWindow\": {\"start\": \"2025-01-02T04:00:00Z\", \"end\": \"2025-01-03T04:00:00Z\"},"
         " \"explanationURL\": \"javascript:alert(1)\"}";
    assert_int_equal(acme_renewal_info_parse(ok, strlen(ok), &ri, &err), 0);
    assert_null(ri.explanation_url);
    acme_renewal_info_free(&ri);

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        acme_err_clear(&err);
        assert_int_equal(acme_renewal_info_parse(bad[i], strlen(bad[i]), &ri, &err), -1);
        assert_int_equal(err.kind, ACME_ERR_BADRESPONSE);
        assert_non_null(strstr(err.msg, "renewalInfo"));
        acme_renewal_info_free(&ri);
    }
}

static void
expect_time(const char *s, time_t want)
{
    time_t  t = 12345;

    if (acme_time_parse(s, &t) != 0) {
        fail_msg("\"%s\" refused", s);
    }
    assert_int_equal(t, want);
}

static void
test_time(void **state)
{
    const char  *bad[] = {
        "", "garbage", "2025-01-02", "2025-01-02T03:04:05", "2025-01-02T03:04:05ZZ", "2025-01-02T03:04:05 Z",
        "2025-13-02T03:04:05Z", "2025-00-02T03:04:05Z", "2025-02-29T03:04:05Z", "2025-04-31T00:00:00Z",
        "2025-01-32T00:00:00Z", "2025-01-02T24:00:00Z", "2025-01-02T23:60:00Z", "2025-01-02T23:00:61Z",
        "2025-01-02T03:04:05.Z", "2025-01-02T03:04:05+0100", "2025-01-02T03:04:05+01", "2025-01-02T03:04:05+24:00",
        "2025-01-02T03:04:05+01:60", "25-01-02T03:04:05Z", "2025-1-02T03:04:05Z", "2025-01-02X03:04:05Z",
        "+025-01-02T03:04:05Z", "2025-01-02T03:04:05Z\n", " 2025-01-02T03:04:05Z", "2025-01-02T03:04",
    };
    size_t       i;
    time_t       t;
    char         buf[32];

    expect_time("1970-01-01T00:00:00Z", 0);
    expect_time("2025-01-02T03:04:05Z", 1735787045);
    expect_time("2025-01-02t03:04:05z", 1735787045);
    expect_time("2025-01-02 03:04:05Z", 1735787045);
    expect_time("2025-01-02T03:04:05.123456789Z", 1735787045);
    expect_time("2025-01-02T03:04:05.9Z", 1735787045);
    expect_time("2025-01-02T04:04:05+01:00", 1735787045);
    expect_time("2025-01-01T21:34:05-05:30", 1735787045);
    expect_time("2025-01-02T03:04:05.5+00:00", 1735787045);
    expect_time("2025-01-02T03:04:05-00:00", 1735787045);
    expect_time("2024-02-29T00:00:00Z", 1709164800);
    expect_time("2000-02-29T00:00:00Z", 951782400);
    expect_time("2016-12-31T23:59:60Z", 1483228799);
    expect_time("9999-12-31T23:59:59Z", 253402300799LL);
    /* outside what acme_time_format writes back (found by fuzzing: a stored time must reload) */
    assert_int_equal(acme_time_parse("1969-12-31T23:59:59Z", &t), -1);
    assert_int_equal(acme_time_parse("0999-12-31T23:59:59Z", &t), -1);
    assert_int_equal(acme_time_parse("9999-12-31T23:59:59-23:59", &t), -1);
    assert_int_equal(acme_time_parse("0000-01-01T00:00:00+00:01", &t), -1);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        t = 777;
        if (acme_time_parse(bad[i], &t) == 0) {
            fail_msg("\"%s\" accepted", bad[i]);
        }
        assert_int_equal(t, 777);
    }
    assert_int_equal(acme_time_parse(NULL, &t), -1);

    assert_string_equal(acme_time_format(1735787045, buf, sizeof(buf)), "2025-01-02T03:04:05Z");
    assert_string_equal(acme_time_format(0, buf, sizeof(buf)), "1970-01-01T00:00:00Z");
    assert_int_equal(acme_time_parse(acme_time_format(1900000000, buf, sizeof(buf)), &t), 0);
    assert_int_equal(t, 1900000000);
    assert_string_equal(acme_time_format(1735787045, buf, 5), "");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status),
        cmocka_unit_test(test_order),
        cmocka_unit_test(test_order_bad),
        cmocka_unit_test(test_authz),
        cmocka_unit_test(test_authz_bad),
        cmocka_unit_test(test_challenge),
        cmocka_unit_test(test_token),
        cmocka_unit_test(test_renewal_info),
        cmocka_unit_test(test_time),
    };

    return cmocka_run_group_tests_name("resource", tests, NULL, NULL);
}
