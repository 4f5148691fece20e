/* Directory parsing, CA names and URLs, CA ids. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdio.h>
#include "unit.h"
#include "acme_directory.h"

#define NN  "\"newNonce\": \"https://ca.example/nonce\""
#define NA  "\"newAccount\": \"https://ca.example/acct\""
#define NO  "\"newOrder\": \"https://ca.example/order\""

static int
parse(const char *body, acme_directory_t *d, acme_err_t *err)
{
    return acme_directory_parse(body, strlen(body), d, err);
}

static void
test_full(void **state)
{
    acme_directory_t  d;
    acme_err_t        err;
    const char       *body =
        "{" NN ", " NA ", " NO ","
        " \"newAuthz\": \"https://ca.example/authz\","
        " \"revokeCert\": \"https://ca.example/revoke\","
        " \"keyChange\": \"https://ca.example/key-change\","
        " \"renewalInfo\": \"https://ca.example/ari\","
        " \"randomKey123\": \"https://community.letsencrypt.org/t/adding-random-entries\","
        " \"somethingElse\": {\"nested\": [1, 2, 3]},"
        " \"meta\": {\"termsOfService\": \"https://ca.example/tos.pdf\", \"website\": \"https://ca.example\","
        "   \"caaIdentities\": [\"ca.example\"], \"externalAccountRequired\": true,"
        "   \"profiles\": {\"classic\": \"The usual\", \"tlsserver\": \"Short and TLS only\","
        "                  \"shortlived\": 5}}}";

    assert_int_equal(parse(body, &d, &err), 0);
    assert_string_equal(d.new_nonce, "https://ca.example/nonce");
    assert_string_equal(d.new_account, "https://ca.example/acct");
    assert_string_equal(d.new_order, "https://ca.example/order");
    assert_string_equal(d.new_authz, "https://ca.example/authz");
    assert_string_equal(d.revoke_cert, "https://ca.example/revoke");
    assert_string_equal(d.key_change, "https://ca.example/key-change");
    assert_string_equal(d.renewal_info, "https://ca.example/ari");
    assert_string_equal(d.terms_of_service, "https://ca.example/tos.pdf");
    assert_string_equal(d.website, "https://ca.example");
    assert_int_equal(d.eab_required, 1);
    assert_int_equal(d.nprofiles, 3);
    assert_string_equal(d.profiles[0], "classic");
    assert_string_equal(d.profile_descs[0], "The usual");
    assert_string_equal(d.profiles[1], "tlsserver");
    assert_string_equal(d.profile_descs[1], "Short and TLS only");
    assert_string_equal(d.profiles[2], "shortlived");
    assert_string_equal(d.profile_descs[2], "");
    assert_true(acme_directory_has_profile(&d, "classic"));
    assert_true(acme_directory_has_profile(&d, "shortlived"));
    assert_false(acme_directory_has_profile(&d, "Classic"));
    assert_false(acme_directory_has_profile(&d, NULL));
    acme_directory_free(&d);
    assert_null(d.new_nonce);
}

static void
test_minimal(void **state)
{
    acme_directory_t  d;
    acme_err_t        err;

    assert_int_equal(parse("{" NN ", " NA ", " NO ", \"newAuthz\": null, \"meta\": null}", &d, &err), 0);
    assert_null(d.new_authz);
    assert_null(d.renewal_info);
    assert_null(d.terms_of_service);
    assert_int_equal(d.eab_required, 0);
    assert_int_equal(d.nprofiles, 0);
    assert_false(acme_directory_has_profile(&d, "classic"));
    acme_directory_free(&d);

    /* loopback http (pebble behind a proxy, tests) is a URL like any other */
    assert_int_equal(parse("{\"newNonce\": \"http://127.0.0.1:14000/nonce\", " NA ", " NO
                           ", \"meta\": {\"profiles\": {}, \"website\": 7}}", &d, &err), 0);
    assert_null(d.website);
    acme_directory_free(&d);
}

static void
expect_bad(const char *body, const char *msg_part)
{
    acme_directory_t  d;
    acme_err_t        err;

    acme_err_clear(&err);
    assert_int_equal(acme_directory_parse(body, body ? strlen(body) : 0, &d, &err), -1);
    assert_int_equal(err.kind, ACME_ERR_BADRESPONSE);
    if (strstr(err.msg, msg_part) == NULL) {
        fail_msg("message \"%s\" lacks \"%s\"", err.msg, msg_part);
    }
    assert_null(d.new_nonce);
    acme_directory_free(&d);
}

static void
test_bad(void **state)
{
    expect_bad("{" NA ", " NO "}", "\"newNonce\"");
    expect_bad("{" NN ", " NO "}", "missing \"newAccount\"");
    expect_bad("{" NN ", " NA "}", "missing \"newOrder\"");
    expect_bad("{\"newNonce\": 5, " NA ", " NO "}", "\"newNonce\" is not a string");
    expect_bad("{\"newNonce\": \"/relative\", " NA ", " NO "}", "\"newNonce\"");
    expect_bad("{\"newNonce\": \"ftp://ca.example/x\", " NA ", " NO "}", "scheme");
    expect_bad("{\"newNonce\": \"https:///x\", " NA ", " NO "}", "no host");
    expect_bad("{\"newNonce\": \"https://ca example/x\", " NA ", " NO "}", "space");
    expect_bad("{\"newNonce\": \"https://ca.example/\\nx\", " NA ", " NO "}", "control");
    expect_bad("{\"newNonce\": \"https://user@ca.example/\", " NA ", " NO "}", "user");
    expect_bad("{\"newNonce\": \"https://ca.example:99999/\", " NA ", " NO "}", "port");
    expect_bad("{\"newNonce\": \"https://[::1/\", " NA ", " NO "}", "IPv6");
    expect_bad("{" NN ", " NA ", " NO ", \"renewalInfo\": 1}", "\"renewalInfo\"");
    expect_bad("{" NN ", " NA ", " NO ", \"keyChange\": \"nope\"}", "\"keyChange\"");
    expect_bad("{" NN ", " NA ", " NO ", \"meta\": []}", "\"meta\"");
    expect_bad("{" NN ", " NA ", " NO ", \"meta\": {\"profiles\": [\"a\"]}}", "meta.profiles");
    expect_bad("{" NN ", " NA ", " NO ", \"meta\": {\"externalAccountRequired\": \"yes\"}}",
               "externalAccountRequired");
    expect_bad("[]", "not a JSON object");
    expect_bad("null", "directory: ");
    expect_bad("[{}]", "not a JSON object");
    expect_bad("{", "invalid JSON");
    expect_bad("", "empty");
    expect_bad(NULL, "empty");
}

static void
test_hostile_profiles(void **state)
{
    acme_directory_t  d;
    acme_buf_t        b = { NULL, 0, 0 };
    int               i;

    acme_buf_printf(&b, "{" NN ", " NA ", " NO ", \"meta\": {\"profiles\": {\"bad name\": \"x\", "
                    "\"ctl\\u0001\": \"x\", \"\": \"x\"");
    for (i = 0; i < 500; i++) {
        acme_buf_printf(&b, ", \"p%d\": \"desc\\n%d\"", i, i);
    }
    acme_buf_printf(&b, "}}}");
    assert_int_equal(acme_directory_parse(b.data, b.len, &d, NULL), 0);
    assert_true(d.nprofiles > 0 && d.nprofiles <= 64);
    assert_false(acme_directory_has_profile(&d, "bad name"));
    assert_false(acme_directory_has_profile(&d, ""));
    assert_string_equal(d.profiles[0], "p0");
    assert_string_equal(d.profile_descs[0], "desc 0");
    acme_directory_free(&d);
    acme_buf_free(&b);
}

static void
expect_ca(const char *in, const char *url)
{
    acme_err_t  err;
    char       *u;

    u = acme_ca_resolve(in, &err);
    if (u == NULL) {
        fail_msg("\"%s\" refused: %s", in, err.msg);
    }
    assert_string_equal(u, url);
    free(u);
}

static void
expect_ca_bad(const char *in, const char *msg_part)
{
    acme_err_t  err;
    char       *u;

    acme_err_clear(&err);
    u = acme_ca_resolve(in, &err);
    if (u != NULL) {
        fail_msg("\"%s\" accepted", in);
    }
    assert_int_equal(err.kind, ACME_ERR_CONFIG);
    if (strstr(err.msg, msg_part) == NULL) {
        fail_msg("message \"%s\" lacks \"%s\"", err.msg, msg_part);
    }
}

static void
test_ca_names(void **state)
{
    expect_ca("letsencrypt", "https://acme-v02.api.letsencrypt.org/directory");
    expect_ca("LetsEncrypt", "https://acme-v02.api.letsencrypt.org/directory");
    expect_ca("letsencrypt-staging", "https://acme-staging-v02.api.letsencrypt.org/directory");
    expect_ca("zerossl", "https://acme.zerossl.com/v2/DV90");
    expect_ca("google", "https://dv.acme-v02.api.pki.goog/directory");
    expect_ca("google-staging", "https://dv.acme-v02.test-api.pki.goog/directory");
    expect_ca("buypass", "https://api.buypass.com/acme/directory");
    expect_ca("buypass-staging", "https://api.test4.buypass.no/acme/directory");
    expect_ca("https://ca.example/dir", "https://ca.example/dir");
    expect_ca("https://acme-v02.api.letsencrypt.org/directory", "https://acme-v02.api.letsencrypt.org/directory");
    expect_ca("http://localhost:14000/dir", "http://localhost:14000/dir");
    expect_ca("http://127.0.0.1:14000/dir", "http://127.0.0.1:14000/dir");
    expect_ca("http://127.1.2.3/dir", "http://127.1.2.3/dir");
    expect_ca("http://[::1]:14000/dir", "http://[::1]:14000/dir");
    expect_ca("https://[2001:db8::1]:8443/dir", "https://[2001:db8::1]:8443/dir");
}

static void
test_ca_v1(void **state)
{
    expect_ca_bad("https://acme-v01.api.letsencrypt.org/directory",
                  "is retired; use https://acme-v02.api.letsencrypt.org/directory (or letsencrypt)");
    expect_ca_bad("https://acme-v01.api.letsencrypt.org/directory", "ACME v1");
    expect_ca_bad("https://ACME-V01.api.letsencrypt.org/acme/directory",
                  "https://acme-v02.api.letsencrypt.org/directory");
    expect_ca_bad("https://acme-staging.api.letsencrypt.org/directory",
                  "https://acme-staging-v02.api.letsencrypt.org/directory (or letsencrypt-staging)");
    expect_ca_bad("https://acme-staging.api.letsencrypt.org/directory", "is retired");
    expect_ca_bad("https://other.api.letsencrypt.org/acme/directory",
                  "https://acme-v02.api.letsencrypt.org/directory");
}

static void
test_ca_bad(void **state)
{
    expect_ca_bad(NULL, "no CA");
    expect_ca_bad("", "no CA");
    expect_ca_bad("letsencrypt2", "unknown CA \"letsencrypt2\"");
    expect_ca_bad("ftp://ca.example/dir", "\"ftp://ca.example/dir\"");
    expect_ca_bad("ftp://ca.example/dir", "scheme");
    expect_ca_bad("http://ca.example/dir", "\"http://ca.example/dir\" must use https://");
    expect_ca_bad("http://128.0.0.1/dir", "https");
    expect_ca_bad("http://[::2]/dir", "https");
    expect_ca_bad("http://localhost.evil.example/dir", "https");
    expect_ca_bad("https://", "no host");
    expect_ca_bad("https:///dir", "\"https:///dir\"");
    expect_ca_bad("https://ca.example/a dir", "space");
    expect_ca_bad("https://ca.example/a dir", "\"https://ca.example/a dir\"");
    expect_ca_bad("https://ca.example/\x01", "control");
    expect_ca_bad("https://ca.example/\x01", "\"https://ca.example/?\"");
    expect_ca_bad(" https://ca.example/", "space");
    expect_ca_bad("https://ca_example/", "host");
    expect_ca_bad("https://ca.example:0/", "port");
    expect_ca_bad("https://ca.example:/", "port");
    expect_ca_bad("https://u:p@ca.example/", "user");
}

static void
test_url_valid(void **state)
{
    assert_true(acme_url_valid("https://a"));
    assert_true(acme_url_valid("http://a.example:80/x?y#z"));
    assert_true(acme_url_valid("HTTPS://A.EXAMPLE/"));
    assert_false(acme_url_valid("a.example"));
    assert_false(acme_url_valid("https:/a"));
    assert_false(acme_url_valid("file:///etc/passwd"));
    assert_false(acme_url_valid("javascript://x"));
    assert_false(acme_url_valid(""));
    assert_false(acme_url_valid(NULL));
}

static void
expect_id(const char *url, const char *id)
{
    char *s = acme_ca_id(url);

    assert_non_null(s);
    assert_string_equal(s, id);
    free(s);
}

static void
test_ca_id(void **state)
{
    char  big[600];
    char *a, *b;

    expect_id("https://acme-v02.api.letsencrypt.org/directory", "acme-v02.api.letsencrypt.org_directory");
    expect_id("https://localhost:14000/dir", "localhost_14000_dir");
    expect_id("https://acme.zerossl.com/v2/DV90", "acme.zerossl.com_v2_DV90");
    expect_id("https://ca.example/", "ca.example");
    expect_id("https://[::1]:14000/dir", "___1__14000_dir");
    expect_id("https://../x", "_._x");
    expect_id("", "_");
    assert_null(acme_ca_id(NULL));

    /* over-long ids are cut but stay distinct */
    memset(big, 'a', sizeof(big));
    memcpy(big, "https://", 8);
    big[sizeof(big) - 1] = '\0';
    a = acme_ca_id(big);
    big[sizeof(big) - 2] = 'b';
    b = acme_ca_id(big);
    assert_true(strlen(a) <= 220);
    assert_string_not_equal(a, b);
    free(a);
    free(b);
}

static void
test_terms_any_scheme(void **state)
{
    acme_directory_t  d;
    acme_err_t        err;

    (void) state;
    /* Pebble's terms are a data: URL; they still mean "agree first" */
    assert_int_equal(parse("{" NN ", " NA ", " NO ", \"meta\": {\"termsOfService\": "
                           "\"data:text/plain,Do%20what%20thou%20wilt\"}}", &d, &err), 0);
    assert_string_equal(d.terms_of_service, "data:text/plain,Do%20what%20thou%20wilt");
    acme_directory_free(&d);
    /* empty or not a string: no terms */
    assert_int_equal(parse("{" NN ", " NA ", " NO ", \"meta\": {\"termsOfService\": \"\"}}", &d, &err), 0);
    assert_null(d.terms_of_service);
    acme_directory_free(&d);
    assert_int_equal(parse("{" NN ", " NA ", " NO ", \"meta\": {\"termsOfService\": 7}}", &d, &err), 0);
    assert_null(d.terms_of_service);
    acme_directory_free(&d);
}

static void
test_fetch_unreachable(void **state)
{
    acme_directory_t  d;
    acme_err_t        err;
    int               fd, port;
    struct sockaddr_in sa;
    socklen_t         sl = sizeof(sa);

    (void) state;
    /* a port nobody listens on: bind one, read its number, close it */
    fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *) &sa, &sl), 0);
    port = ntohs(sa.sin_port);
    close(fd);

    {
        char url[64];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/dir", port);
        assert_int_equal(acme_directory_fetch(url, NULL, 1, 2000, &d, &err), -1);
        assert_int_equal(err.kind, ACME_ERR_NETWORK);
        assert_non_null(strstr(err.msg, url));
        assert_null(d.new_nonce);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_minimal),
        cmocka_unit_test(test_bad),
        cmocka_unit_test(test_hostile_profiles),
        cmocka_unit_test(test_ca_names),
        cmocka_unit_test(test_ca_v1),
        cmocka_unit_test(test_ca_bad),
        cmocka_unit_test(test_url_valid),
        cmocka_unit_test(test_ca_id),
        cmocka_unit_test(test_terms_any_scheme),
        cmocka_unit_test(test_fetch_unreachable),
    };

    return cmocka_run_group_tests_name("directory", tests, NULL, NULL);
}
