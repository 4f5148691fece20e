/* The status page: content negotiation, the POST origin rules, escaping, the policy's stylesheet hash. */
#include "unit.h"
#include "acme_status_html.h"

#include <openssl/evp.h>

static int
html(const char *accept)
{
    return acme_status_accepts_html(accept, accept ? strlen(accept) : 0);
}

static void
test_negotiation(void **state)
{
    /* browsers */
    assert_true(html("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"));
    assert_true(html("text/html, */*; q=0.5"));
    assert_true(html("TEXT/HTML"));
    assert_true(html("application/json;q=0.5, text/html"));
    /* JSON stays the default */
    assert_false(html(NULL));
    assert_false(html(""));
    assert_false(html("*/*"));
    assert_false(html("application/json"));
    assert_false(html("application/json, text/html"));
    assert_false(html("text/html, application/json"));
    assert_false(html("text/html;q=0"));
    assert_false(html("text/html;q=0.5, */*"));
    assert_false(html("text/html;q=0.5, application/*"));
    assert_false(html("text/*"));
    assert_false(html("text/htmlx"));
    assert_false(html("text/html;q=bogus"));
    assert_true(html("text/html;q=0.9, application/json;q=0.8"));
    assert_false(html("text/html;q=0.80, application/json;q=0.8"));
    /* only the first len bytes count */
    assert_false(acme_status_accepts_html("text/html", 4));
}

static void
test_post_rules(void **state)
{
    /* curl, scripts: no browser signals */
    assert_true(acme_status_post_allowed(NULL, NULL, "example.org"));
    assert_true(acme_status_post_allowed(NULL, NULL, NULL));
    /* the page's own form */
    assert_true(acme_status_post_allowed("same-origin", "https://Example.org:8443", "example.org:8443"));
    assert_true(acme_status_post_allowed("none", NULL, "example.org"));
    /* another site's page */
    assert_false(acme_status_post_allowed("cross-site", NULL, "example.org"));
    assert_false(acme_status_post_allowed("same-site", NULL, "example.org"));
    assert_false(acme_status_post_allowed(NULL, "https://evil.example", "example.org"));
    assert_false(acme_status_post_allowed(NULL, "null", "example.org"));
    assert_false(acme_status_post_allowed(NULL, "https://example.org.evil.example", "example.org"));
    assert_false(acme_status_post_allowed(NULL, "https://example.org/", "example.org"));
    assert_false(acme_status_post_allowed(NULL, "https://example.org", NULL));
    assert_false(acme_status_post_allowed("same-origin", "https://evil.example", "example.org"));
}

static void
test_escaping(void **state)
{
    static const char doc[] =
        "{\"certificates\": [{\"name\": \"a<b>&\\\"c'\", \"identifiers\": [\"<script>alert(1)</script>\"],"
        " \"issuer\": \"https://ca/\\\"><img src=x>\", \"issuer_name\": \"<i>\", \"key_type\": \"<k>\","
        " \"not_before\": \"2026-01-01T00:00:00Z\", \"not_after\": \"2026-03-02T00:00:00Z\","
        " \"next_renewal\": \"<n>\", \"renewal_reason\": \"<r>\", \"state\": \"x\\\" onclick=\\\"y\","
        " \"failures\": 2, \"last_error\": \"\\\"><img src=x onerror=alert(1)>\","
        " \"identifier_errors\": [{\"identifier\": \"<id>\", \"error\": \"<e>\", \"at\": \"t\"}],"
        " \"identifier_warnings\": [{\"identifier\": \"dns:<w>\", \"dns_persist_warning\": \"<pw>\"}]}]}";
    time_t  now = 1767225600 + 30 * 86400;    /* 2026-01-31 */
    size_t  len = 0;
    char   *page;

    page = acme_status_html(doc, sizeof(doc) - 1, 1, now, &len);
    assert_non_null(page);
    assert_int_equal(strlen(page), len);
    /* nothing from the document as markup */
    assert_null(strstr(page, "<script"));
    assert_null(strstr(page, "<img"));
    assert_null(strstr(page, "<i>"));
    assert_null(strstr(page, "<k>"));
    assert_null(strstr(page, "onclick=\""));
    assert_non_null(strstr(page, "a&lt;b&gt;&amp;&quot;c&#39;"));
    assert_non_null(strstr(page, "&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert_non_null(strstr(page, "Last error: &quot;&gt;&lt;img src=x onerror=alert(1)&gt;"));
    assert_non_null(strstr(page, "&lt;id&gt;: &lt;e&gt;"));
    /* a dns-persist-01 warning, as text */
    assert_non_null(strstr(page, "<p class=\"warning\">Warning: &lt;pw&gt;</p>"));
    assert_non_null(strstr(page, "<tr class=\"cert x&quot; onclick=&quot;y\">"));
    /* the name in the form's URL: percent-encoded */
    assert_non_null(strstr(page, "action=\"?renew=a%3Cb%3E%26%22c%27\""));
    /* 60 days of life, 30 left */
    assert_non_null(strstr(page, "max=\"60\" low=\"6\" high=\"20\" optimum=\"60\" value=\"30\"></meter> "
                                 "30 days left"));
    assert_non_null(strstr(page, "2 failed attempts"));
    free(page);

    /* no buttons without renewal */
    page = acme_status_html(doc, sizeof(doc) - 1, 0, now, &len);
    assert_non_null(page);
    assert_null(strstr(page, "<form"));
    free(page);

    /* not JSON: a page that says so */
    page = acme_status_html("<x>", 3, 0, now, &len);
    assert_non_null(page);
    assert_non_null(strstr(page, "could not be read"));
    assert_null(strstr(page, "<x>"));
    free(page);
}

/* the policy allows exactly the page's stylesheet */
static void
test_csp_hash(void **state)
{
    const char     *csp = acme_status_html_csp();
    unsigned char   md[32], b64[64];
    unsigned int    mdlen = 0;
    char           *page, *s, *e, want[128];
    size_t          len;

    page = acme_status_html("{\"certificates\": []}", 20, 0, 0, &len);
    assert_non_null(page);
    s = strstr(page, "<style>");
    e = strstr(page, "</style>");
    assert_true(s != NULL && e != NULL);
    s += 7;
    assert_int_equal(EVP_Digest(s, (size_t) (e - s), md, &mdlen, EVP_sha256(), NULL), 1);
    EVP_EncodeBlock(b64, md, (int) mdlen);
    snprintf(want, sizeof(want), "style-src 'sha256-%s'", b64);
    assert_non_null(strstr(csp, want));
    assert_non_null(strstr(csp, "default-src 'none'"));
    assert_non_null(strstr(csp, "form-action 'self'"));
    assert_null(strstr(csp, "script-src"));
    assert_null(strstr(csp, "unsafe"));
    assert_non_null(strstr(page, "0 certificates"));
    free(page);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_negotiation),
        cmocka_unit_test(test_post_rules),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_csp_hash),
    };

    return cmocka_run_group_tests_name("status_html", tests, NULL, NULL);
}
