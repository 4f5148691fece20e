/* Problem documents: parsing, hostile input, messages, errors. */
#include "unit.h"
#include "acme_problem.h"

static int
parse(const char *body, acme_problem_t *p, acme_err_t *err)
{
    return acme_problem_parse(body, strlen(body), p, err);
}

static void
test_simple(void **state)
{
    acme_problem_t  p;
    acme_err_t      err;
    char           *m;

    assert_int_equal(parse("{\"type\": \"urn:ietf:params:acme:error:badNonce\", \"detail\": \"stale\", "
                           "\"status\": 400, \"extra\": [1,2]}", &p, &err), 0);
    assert_string_equal(p.type, "urn:ietf:params:acme:error:badNonce");
    assert_string_equal(p.detail, "stale");
    assert_int_equal(p.status, 400);
    assert_int_equal(p.nsubproblems, 0);
    assert_string_equal(acme_problem_short_type(&p), "badNonce");
    assert_true(acme_problem_is(&p, "badNonce"));
    assert_false(acme_problem_is(&p, "badNonc"));
    assert_false(acme_problem_is(&p, "malformed"));
    m = acme_problem_message(&p);
    assert_string_equal(m, "badNonce: stale");
    free(m);

    acme_problem_to_err(&p, "new-order", &err);
    assert_int_equal(err.kind, ACME_ERR_CA);
    assert_string_equal(err.msg, "new-order: badNonce: stale");
    acme_problem_free(&p);
    assert_null(p.type);
}

static void
test_other_types(void **state)
{
    acme_problem_t  p;
    acme_err_t      err;
    char           *m;

    /* not an ACME URN: the full type is used */
    assert_int_equal(parse("{\"type\": \"about:blank\", \"detail\": \"x\"}", &p, NULL), 0);
    assert_string_equal(acme_problem_short_type(&p), "about:blank");
    assert_false(acme_problem_is(&p, "about:blank"));
    acme_problem_free(&p);

    /* rate limits */
    assert_int_equal(parse("{\"type\": \"urn:ietf:params:acme:error:rateLimited\", \"detail\": \"slow down\"}",
                           &p, NULL), 0);
    acme_problem_to_err(&p, "order", &err);
    assert_int_equal(err.kind, ACME_ERR_RATELIMIT);
    assert_string_equal(err.msg, "order: rateLimited: slow down");
    acme_problem_free(&p);

    /* nothing at all */
    assert_int_equal(parse("{}", &p, NULL), 0);
    assert_null(p.type);
    assert_null(p.detail);
    assert_string_equal(acme_problem_short_type(&p), "");
    m = acme_problem_message(&p);
    assert_non_null(m);
    assert_true(strlen(m) > 0);
    free(m);
    acme_problem_free(&p);

    /* only a detail, only a type */
    assert_int_equal(parse("{\"detail\": \"just this\"}", &p, NULL), 0);
    m = acme_problem_message(&p);
    assert_string_equal(m, "just this");
    free(m);
    acme_problem_free(&p);
    assert_int_equal(parse("{\"type\": \"urn:ietf:params:acme:error:caa\"}", &p, NULL), 0);
    m = acme_problem_message(&p);
    assert_string_equal(m, "caa");
    free(m);
    acme_problem_free(&p);
}

static void
test_subproblems(void **state)
{
    acme_problem_t  p;
    acme_err_t      err;
    char           *m;
    const char     *body =
        "{\"type\": \"urn:ietf:params:acme:error:rejectedIdentifier\","
        " \"detail\": \"Some names were rejected\", \"status\": 400,"
        " \"subproblems\": ["
        "  {\"type\": \"urn:ietf:params:acme:error:rejectedIdentifier\", \"detail\": \"forbidden name\","
        "   \"identifier\": {\"type\": \"dns\", \"value\": \"bad.example\"}},"
        "  {\"type\": \"urn:ietf:params:acme:error:caa\", \"detail\": \"CAA forbids\","
        "   \"identifier\": {\"type\": \"dns\", \"value\": \"x.example\"},"
        "   \"subproblems\": [{\"type\": \"nested\"}]},"
        "  \"not an object\","
        "  {\"type\": \"urn:ietf:params:acme:error:malformed\", \"identifier\": \"wrong\"}"
        " ]}";

    assert_int_equal(parse(body, &p, &err), 0);
    assert_int_equal(p.nsubproblems, 3);
    assert_string_equal(p.subproblems[0].ident_type, "dns");
    assert_string_equal(p.subproblems[0].ident_value, "bad.example");
    assert_string_equal(p.subproblems[1].ident_value, "x.example");
    assert_int_equal(p.subproblems[1].nsubproblems, 0);      /* nested ones are ignored */
    assert_null(p.subproblems[2].ident_type);
    m = acme_problem_message(&p);
    assert_string_equal(m, "rejectedIdentifier: Some names were rejected (dns bad.example: rejectedIdentifier: "
                           "forbidden name; dns x.example: caa: CAA forbids; malformed)");
    free(m);
    acme_problem_to_err(&p, NULL, &err);
    assert_string_equal(err.msg, "rejectedIdentifier: Some names were rejected (dns bad.example: "
                                 "rejectedIdentifier: forbidden name; dns x.example: caa: CAA forbids; malformed)");
    acme_problem_free(&p);
}

static void
test_wrong_types(void **state)
{
    acme_problem_t  p;

    /* mistyped members become NULL/0 */
    assert_int_equal(parse("{\"type\": 5, \"detail\": {\"a\": 1}, \"status\": \"400\", \"subproblems\": {},"
                           " \"identifier\": {\"type\": 1, \"value\": \"x\"}}", &p, NULL), 0);
    assert_null(p.type);
    assert_null(p.detail);
    assert_int_equal(p.status, 0);
    assert_null(p.ident_type);
    assert_null(p.ident_value);
    assert_int_equal(p.nsubproblems, 0);
    acme_problem_free(&p);

    assert_int_equal(parse("{\"status\": 99999999999999}", &p, NULL), 0);
    assert_int_equal(p.status, 0);
    acme_problem_free(&p);
    assert_int_equal(parse("{\"status\": -400}", &p, NULL), 0);
    assert_int_equal(p.status, 0);
    acme_problem_free(&p);
    assert_int_equal(parse("{\"status\": 4.5e2}", &p, NULL), 0);
    assert_int_equal(p.status, 0);
    acme_problem_free(&p);
}

static void
test_not_object(void **state)
{
    acme_problem_t  p;
    acme_err_t      err;
    json_t         *j;

    assert_int_equal(parse("[1, 2]", &p, &err), -1);
    assert_int_equal(err.kind, ACME_ERR_BADRESPONSE);
    assert_non_null(strstr(err.msg, "not a JSON object"));
    acme_problem_free(&p);        /* safe after a failure */
    assert_int_equal(parse("\"str\"", &p, &err), -1);
    assert_int_equal(parse("null", &p, &err), -1);
    assert_int_equal(parse("{\"type\": ", &p, &err), -1);
    assert_non_null(strstr(err.msg, "invalid JSON"));
    assert_int_equal(parse("", &p, &err), -1);
    assert_int_equal(acme_problem_parse(NULL, 0, &p, &err), -1);
    /* duplicate members: refused rather than guessing which one counts */
    assert_int_equal(parse("{\"type\": \"a\", \"type\": \"b\"}", &p, &err), -1);

    j = json_array();
    assert_int_equal(acme_problem_from_json(j, &p), -1);
    assert_int_equal(acme_problem_from_json(NULL, &p), -1);
    json_decref(j);
}

static void
test_hostile(void **state)
{
    acme_problem_t  p;
    acme_buf_t      b = { NULL, 0, 0 };
    size_t          i;
    char           *m;

    /* a huge array of subproblems: kept to 100 */
    acme_buf_printf(&b, "{\"type\": \"urn:ietf:params:acme:error:malformed\", \"subproblems\": [");
    for (i = 0; i < 5000; i++) {
        acme_buf_printf(&b, "%s{\"type\": \"t%zu\", \"detail\": \"d\", \"identifier\": {\"type\": \"dns\","
                        " \"value\": \"n%zu.example\"}}", i ? "," : "", i, i);
    }
    acme_buf_printf(&b, "]}");
    assert_int_equal(acme_problem_parse(b.data, b.len, &p, NULL), 0);
    assert_int_equal(p.nsubproblems, 100);
    assert_string_equal(p.subproblems[99].type, "t99");
    m = acme_problem_message(&p);
    assert_non_null(m);
    free(m);
    acme_problem_free(&p);
    acme_buf_free(&b);

    /* a huge detail: truncated (at 4096 bytes: Let's Encrypt's paused-account detail ends with the
     * unpause URL after a list of names); control characters replaced */
    acme_buf_printf(&b, "{\"detail\": \"line1\\nline2\\u0001\\u001b[31m");
    for (i = 0; i < 100000; i++) {
        acme_buf_append(&b, "x", 1);
    }
    acme_buf_printf(&b, "\"}");
    assert_int_equal(acme_problem_parse(b.data, b.len, &p, NULL), 0);
    assert_true(strlen(p.detail) <= 4096 && strlen(p.detail) > 2048);
    assert_memory_equal(p.detail, "line1 line2??[31m", 17);
    for (i = 0; p.detail[i]; i++) {
        assert_true((unsigned char) p.detail[i] >= 0x20);
    }
    acme_problem_free(&p);
    acme_buf_free(&b);

    /* truncation does not split a UTF-8 sequence */
    acme_buf_printf(&b, "{\"detail\": \"");
    for (i = 0; i < 3000; i++) {
        acme_buf_append(&b, "\xc3\xa9", 2);
    }
    acme_buf_printf(&b, "x\"}");
    assert_int_equal(acme_problem_parse(b.data, b.len, &p, NULL), 0);
    assert_int_equal(strlen(p.detail) % 2, 0);
    assert_true(strlen(p.detail) <= 4096);
    acme_problem_free(&p);
    acme_buf_free(&b);

    /* an embedded NUL is not accepted */
    assert_int_equal(parse("{\"detail\": \"ab\\u0000cd\"}", &p, NULL), -1);

    /* deep nesting does not crash */
    for (i = 0; i < 100000; i++) {
        acme_buf_append(&b, "[", 1);
    }
    assert_int_equal(acme_problem_parse(b.data, b.len, &p, NULL), -1);
    acme_buf_free(&b);
}

/* Let's Encrypt's paused account: a long list of names, the unpause URL last. The error message (which
 * is prefixed twice on its way to the log) keeps the URL whole. */
static void
test_paused_keeps_url(void **state)
{
    acme_buf_t       b = { NULL, 0, 0 };
    acme_problem_t   p;
    acme_err_t       err;
    size_t           i;
    const char      *url = "https://portal.letsencrypt.org/sfe/v1/unpause?jwt=eyJhbGciOiJIUzI1NiJ9."
                           "eyJhcGlWZXJzaW9uIjoidjEiLCJpZGVudGlmaWVycyI6ImEsYixjIn0.c2lnbmF0dXJl";
    (void) state;

    acme_buf_printf(&b, "{\"type\": \"urn:ietf:params:acme:error:rateLimited\", \"status\": 429, "
                    "\"detail\": \"Your account is temporarily prevented from requesting certificates for ");
    for (i = 0; i < 40; i++) {
        acme_buf_printf(&b, "%sname-number-%02zu.a-rather-long-subdomain.example.org", i ? ", " : "", i);
    }
    acme_buf_printf(&b, " and possibly others. Please visit: %s\"}", url);
    assert_int_equal(acme_problem_parse(b.data, b.len, &p, NULL), 0);
    assert_non_null(strstr(p.detail, url));
    acme_problem_to_err(&p, "newOrder", &err);
    acme_err_prefix(&err, "certificate \"%s\"", "name-number-00.a-rather-long-subdomain.example.org");
    acme_err_prefix(&err, "issuing");
    assert_int_equal(err.kind, ACME_ERR_RATELIMIT);
    assert_true(strlen(err.msg) < sizeof(err.msg));
    assert_true(strlen(err.msg) > sizeof(err.msg) / 2);
    /* the head and the end both kept, the middle cut */
    assert_memory_equal(err.msg, "issuing: certificate", 20);
    assert_non_null(strstr(err.msg, " ... "));
    assert_non_null(strstr(err.msg, url));
    assert_string_equal(err.msg + strlen(err.msg) - strlen(url), url);
    acme_problem_free(&p);
    acme_buf_free(&b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple),
        cmocka_unit_test(test_other_types),
        cmocka_unit_test(test_subproblems),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_not_object),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_paused_keeps_url),
    };

    return cmocka_run_group_tests_name("problem", tests, NULL, NULL);
}
