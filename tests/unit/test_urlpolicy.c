/* Which URLs the client follows: loopback, origins, and the rules an https or http directory sets. */
#include "unit.h"
#include "acme_urlpolicy.h"

static int   nlogged;
static char  logged[512];

static void
capture(void *data, int level, const char *msg)
{
    (void) data;
    if (level == ACME_LOG_INFO) {
        nlogged++;
        snprintf(logged, sizeof(logged), "%s", msg);
    }
}

static acme_loop_t *
loop_new(void)
{
    acme_host_t   host;
    acme_err_t    err;
    acme_loop_t  *loop;

    memset(&host, 0, sizeof(host));
    host.log = capture;
    loop = acme_loop_new(&host, ACME_LOG_DEBUG, &err);
    assert_non_null(loop);
    nlogged = 0;
    logged[0] = '\0';
    return loop;
}

static void
test_loopback(void **state)
{
    (void) state;
    assert_true(acme_url_loopback("http://localhost:14000/dir"));
    assert_true(acme_url_loopback("http://LOCALHOST/dir"));
    assert_true(acme_url_loopback("http://127.0.0.1/dir"));
    assert_true(acme_url_loopback("http://127.3.4.5:80/dir"));
    assert_true(acme_url_loopback("http://[::1]:8080/dir"));
    assert_false(acme_url_loopback("http://128.0.0.1/dir"));
    assert_false(acme_url_loopback("http://[::2]/dir"));
    assert_false(acme_url_loopback("http://localhost.example.org/dir"));
    assert_false(acme_url_loopback("http://127.0.0.1.nip.io/dir"));
    assert_false(acme_url_loopback("http://0x7f000001/dir"));
    assert_false(acme_url_loopback("http://user@127.0.0.1/dir"));
    assert_false(acme_url_loopback(NULL));
}

static void
test_origin(void **state)
{
    char  o[64];

    (void) state;
    assert_int_equal(acme_url_origin("https://CA.Example/dir?x=1", o, sizeof(o)), 0);
    assert_string_equal(o, "https://ca.example:443");
    assert_int_equal(acme_url_origin("https://ca.example:443/x", o, sizeof(o)), 0);
    assert_string_equal(o, "https://ca.example:443");
    assert_int_equal(acme_url_origin("http://127.0.0.1:8080", o, sizeof(o)), 0);
    assert_string_equal(o, "http://127.0.0.1:8080");
    assert_int_equal(acme_url_origin("http://[::1]/d", o, sizeof(o)), 0);
    assert_string_equal(o, "http://[::1]:80");
    assert_int_equal(acme_url_origin("ftp://ca.example/", o, sizeof(o)), -1);
    assert_int_equal(acme_url_origin("https://ca.example.with.a.very.long.name.example.org/", o, 20), -1);
}

static void
test_init(void **state)
{
    acme_urlpolicy_t  p;
    acme_err_t        err;

    (void) state;
    assert_int_equal(acme_urlpolicy_init(&p, "https://ca.example/dir", &err), 0);
    assert_true(p.https_only);
    assert_int_equal(acme_urlpolicy_init(&p, "http://127.0.0.1:14000/dir", &err), 0);
    assert_false(p.https_only);
    assert_int_equal(acme_urlpolicy_init(&p, "http://ca.example/dir", &err), -1);
    assert_int_equal(err.kind, ACME_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "http://ca.example/dir"));
    assert_int_equal(acme_urlpolicy_init(&p, "gopher://ca.example/", &err), -1);
}

static void
test_https_directory(void **state)
{
    acme_urlpolicy_t  p;
    acme_err_t        err;
    acme_loop_t      *loop = loop_new();

    (void) state;
    assert_int_equal(acme_urlpolicy_init(&p, "https://ca.example/dir", &err), 0);
    assert_int_equal(acme_urlpolicy_check(&p, loop, "\"finalize\"", "https://ca.example/finalize/1", &err), 0);
    assert_int_equal(nlogged, 0);
    /* plain http is refused, even on loopback; the message names the field and the URL */
    assert_int_equal(acme_urlpolicy_check(&p, loop, "\"finalize\"", "http://ca.example/finalize/1", &err), -1);
    assert_int_equal(err.kind, ACME_ERR_BADRESPONSE);
    assert_non_null(strstr(err.msg, "\"finalize\""));
    assert_non_null(strstr(err.msg, "http://ca.example/finalize/1"));
    assert_non_null(strstr(err.msg, "not https"));
    assert_int_equal(acme_urlpolicy_check(&p, loop, "Location", "http://127.0.0.1/acct/1", &err), -1);
    assert_int_equal(acme_urlpolicy_check(&p, loop, "Location", "file:///etc/passwd", &err), -1);
    assert_non_null(strstr(err.msg, "not a valid http(s) URL"));
    assert_int_equal(acme_urlpolicy_check(&p, loop, "Location", "/relative", &err), -1);
    /* another origin: allowed, said once at info */
    assert_int_equal(acme_urlpolicy_check(&p, loop, "\"certificate\"", "https://cdn.example/cert/1", &err), 0);
    assert_int_equal(nlogged, 1);
    assert_non_null(strstr(logged, "\"certificate\""));
    assert_non_null(strstr(logged, "https://cdn.example/cert/1"));
    assert_non_null(strstr(logged, "another origin"));
    assert_int_equal(acme_urlpolicy_check(&p, loop, "\"certificate\"", "https://cdn.example/cert/2", &err), 0);
    assert_int_equal(nlogged, 1);
    /* another port is another origin */
    assert_int_equal(acme_urlpolicy_check(&p, loop, "Location", "https://ca.example:8443/x", &err), 0);
    assert_int_equal(nlogged, 2);
    acme_loop_free(loop);
}

static void
test_http_directory_on_loopback(void **state)
{
    acme_urlpolicy_t  p;
    acme_err_t        err;

    (void) state;
    assert_int_equal(acme_urlpolicy_init(&p, "http://127.0.0.1:14000/dir", &err), 0);
    assert_int_equal(acme_urlpolicy_check(&p, NULL, "Location", "http://127.0.0.1:14000/acct/1", &err), 0);
    assert_int_equal(acme_urlpolicy_check(&p, NULL, "Location", "http://[::1]:14000/acct/1", &err), 0);
    assert_int_equal(acme_urlpolicy_check(&p, NULL, "Location", "https://ca.example/acct/1", &err), 0);
    assert_int_equal(acme_urlpolicy_check(&p, NULL, "Location", "http://ca.example/acct/1", &err), -1);
    assert_non_null(strstr(err.msg, "not loopback"));
}

static void
resp_json(acme_http_resp_t *r, const char *json)
{
    memset(r, 0, sizeof(*r));
    r->ok = 1;
    r->status = 200;
    r->content_type = (char *) "application/json";
    r->body.data = (char *) json;
    r->body.len = strlen(json);
}

static void
test_resp(void **state)
{
    acme_urlpolicy_t  p;
    acme_http_resp_t  r;
    acme_err_t        err;
    const char       *order_ok =
        "{\"status\": \"ready\", \"authorizations\": [\"https://ca.example/authz/1\", \"https://ca.example/authz/2\"],"
        " \"finalize\": \"https://ca.example/finalize/1\", \"certificate\": \"https://ca.example/cert/1\"}";

    (void) state;
    assert_int_equal(acme_urlpolicy_init(&p, "https://ca.example/dir", &err), 0);
    resp_json(&r, order_ok);
    assert_int_equal(acme_urlpolicy_check_resp(&p, NULL, &r, &err), 0);

    resp_json(&r, "{\"authorizations\": [\"https://ca.example/authz/1\", \"http://ca.example/authz/2\"]}");
    assert_int_equal(acme_urlpolicy_check_resp(&p, NULL, &r, &err), -1);
    assert_non_null(strstr(err.msg, "\"authorizations[1]\""));
    assert_non_null(strstr(err.msg, "http://ca.example/authz/2"));

    resp_json(&r, "{\"finalize\": \"http://ca.example/finalize/1\"}");
    assert_int_equal(acme_urlpolicy_check_resp(&p, NULL, &r, &err), -1);
    assert_non_null(strstr(err.msg, "\"finalize\""));

    resp_json(&r, "{\"status\": \"valid\", \"certificate\": \"http://ca.example/cert/1\"}");
    assert_int_equal(acme_urlpolicy_check_resp(&p, NULL, &r, &err), -1);
    assert_non_null(strstr(err.msg, "\"certificate\""));

    resp_json(&r, "{\"challenges\": [{\"type\": \"http-01\", \"url\": \"https://ca.example/chall/1\"},"
                  " {\"type\": \"tls-alpn-01\", \"url\": \"http://ca.example/chall/2\"}]}");
    assert_int_equal(acme_urlpolicy_check_resp(&p, NULL, &r, &err), -1);
    assert_non_null(strstr(err.msg, "\"challenges[1].url\""));

    resp_json(&r, "{\"type\": \"http-01\", \"url\": \"http://ca.example/chall/1\"}");
    assert_int_equal(acme_urlpolicy_check_resp(&p, NULL, &r, &err), -1);
    assert_non_null(strstr(err.msg, "\"url\""));

    resp_json(&r, "{\"status\": \"valid\", \"orders\": \"http://ca.example/orders/1\"}");
    assert_int_equal(acme_urlpolicy_check_resp(&p, NULL, &r, &err), -1);
    resp_json(&r, "{\"orders\": [\"https://ca.example/order/1\", \"http://ca.example/order/2\"]}");
    assert_int_equal(acme_urlpolicy_check_resp(&p, NULL, &r, &err), -1);
    assert_non_null(strstr(err.msg, "\"orders[1]\""));

    /* headers */
    resp_json(&r, "{}");
    r.location = (char *) "http://ca.example/order/1";
    assert_int_equal(acme_urlpolicy_check_resp(&p, NULL, &r, &err), -1);
    assert_non_null(strstr(err.msg, "Location"));
    resp_json(&r, "{}");
    r.links_alternate[0] = (char *) "https://ca.example/cert/1/1";
    r.links_alternate[1] = (char *) "http://ca.example/cert/1/2";
    r.nalternate = 2;
    assert_int_equal(acme_urlpolicy_check_resp(&p, NULL, &r, &err), -1);
    assert_non_null(strstr(err.msg, "alternate"));
    assert_non_null(strstr(err.msg, "http://ca.example/cert/1/2"));
    resp_json(&r, "{}");
    r.link_up = (char *) "http://ca.example/issuer";
    assert_int_equal(acme_urlpolicy_check_resp(&p, NULL, &r, &err), -1);

    /* a body that is not JSON is left to its reader; non-string members too */
    resp_json(&r, "-----BEGIN CERTIFICATE-----");
    r.content_type = (char *) "application/pem-certificate-chain";
    assert_int_equal(acme_urlpolicy_check_resp(&p, NULL, &r, &err), 0);
    resp_json(&r, "{\"finalize\": 5, \"authorizations\": [1, null]}");
    assert_int_equal(acme_urlpolicy_check_resp(&p, NULL, &r, &err), 0);
}

static void
test_directory(void **state)
{
    acme_urlpolicy_t  p;
    acme_directory_t  d;
    acme_err_t        err;

    (void) state;
    assert_int_equal(acme_urlpolicy_init(&p, "https://ca.example/dir", &err), 0);
    memset(&d, 0, sizeof(d));
    d.new_nonce = (char *) "https://ca.example/nonce";
    d.new_account = (char *) "https://ca.example/acct";
    d.new_order = (char *) "https://ca.example/order";
    assert_int_equal(acme_urlpolicy_check_directory(&p, NULL, &d, &err), 0);
    d.renewal_info = (char *) "http://ca.example/ari";
    assert_int_equal(acme_urlpolicy_check_directory(&p, NULL, &d, &err), -1);
    assert_non_null(strstr(err.msg, "\"renewalInfo\""));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loopback),
        cmocka_unit_test(test_origin),
        cmocka_unit_test(test_init),
        cmocka_unit_test(test_https_directory),
        cmocka_unit_test(test_http_directory_on_loopback),
        cmocka_unit_test(test_resp),
        cmocka_unit_test(test_directory),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
