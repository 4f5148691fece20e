/* Prometheus exposition of a status document: escaping, times, duplicates, absent members. */
#include "unit.h"
#include "acme_metrics.h"

static char *
render(const char *doc)
{
    json_t  *j = json_loads(doc, 0, NULL);
    char    *text;

    assert_non_null(j);
    text = acme_metrics_prometheus(j);
    json_decref(j);
    assert_non_null(text);
    return text;
}

static void
test_certificate_times(void **state)
{
    char *t = render("{\"certificates\":[{\"name\":\"a.example\",\"issuer_name\":\"pebble\","
                     "\"key_type\":\"ecdsa:256\",\"state\":\"valid\",\"failures\":0,"
                     "\"not_after\":\"2030-01-02T03:04:05Z\",\"last_success\":null,"
                     "\"ari_window\":{\"start\":\"2029-12-01T00:00:00Z\",\"end\":\"2029-12-03T00:00:00Z\"}}]}");

    assert_non_null(strstr(t, "# TYPE acme_certificate_not_after_seconds gauge\n"));
    assert_non_null(strstr(t, "acme_certificate_not_after_seconds{name=\"a.example\"} 1893553445\n"));
    assert_non_null(strstr(t, "acme_certificate_ari_window_start_seconds{name=\"a.example\"} 1890777600\n"));
    assert_non_null(strstr(t, "acme_certificate_ari_window_end_seconds{name=\"a.example\"} 1890950400\n"));
    assert_non_null(strstr(t, "acme_certificate_info{name=\"a.example\",issuer=\"pebble\","
                              "key_type=\"ecdsa:256\"} 1\n"));
    assert_non_null(strstr(t, "acme_certificate_state{name=\"a.example\",state=\"valid\"} 1\n"));
    assert_non_null(strstr(t, "acme_certificate_state{name=\"a.example\",state=\"failing\"} 0\n"));
    /* null and absent times give no sample */
    assert_null(strstr(t, "acme_certificate_last_success_seconds{"));
    assert_null(strstr(t, "acme_certificate_not_before_seconds{"));
    free(t);
}

static void
test_label_escaping(void **state)
{
    char *t = render("{\"certificates\":[],\"issuers\":[{\"name\":\"a\\\"b\\\\c\\nd\",\"orders\":2,"
                     "\"requests\":7,\"bad_nonce_retries\":1,\"rate_limited\":0,\"errors\":{\"network\":3}}]}");

    assert_non_null(strstr(t, "acme_orders_total{issuer=\"a\\\"b\\\\c\\nd\"} 2\n"));
    assert_non_null(strstr(t, "acme_order_errors_total{issuer=\"a\\\"b\\\\c\\nd\",type=\"network\"} 3\n"));
    assert_null(strstr(t, "c\nd"));
    free(t);
}

static void
test_issuers_summed_once(void **state)
{
    char *t = render("{\"certificates\":[{\"name\":\"x\",\"failures\":2,\"state\":\"failing\"},"
                     "{\"name\":\"x\",\"failures\":9}],"
                     "\"issuers\":[{\"name\":\"le\",\"requests\":5,\"errors\":{\"ca\":1}},"
                     "{\"name\":\"le\",\"requests\":6,\"errors\":{\"ca\":2}}]}");

    assert_non_null(strstr(t, "acme_requests_total{issuer=\"le\"} 11\n"));
    assert_null(strstr(strstr(t, "acme_requests_total{") + 1, "acme_requests_total{"));
    assert_non_null(strstr(t, "acme_order_errors_total{issuer=\"le\",type=\"ca\"} 3\n"));
    assert_non_null(strstr(t, "acme_certificate_failures{name=\"x\"} 2\n"));
    assert_null(strstr(t, "acme_certificate_failures{name=\"x\"} 9\n"));
    free(t);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_certificate_times),
        cmocka_unit_test(test_label_escaping),
        cmocka_unit_test(test_issuers_summed_once),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
