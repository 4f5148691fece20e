/* Prometheus text exposition of the status document (see acme_metrics.h and docs/monitoring.md). */
#include "acme_metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "acme_err.h"

static const char *const cert_states[] = { "pending", "valid", "renewing", "failing", "expired" };

/* the certificate's times: member in the status document, metric name, help */
static const struct {
    const char  *member;
    const char  *sub;           /* inside an object member, or NULL */
    const char  *metric;
    const char  *help;
} cert_times[] = {
    { "not_before", NULL, "acme_certificate_not_before_seconds",
      "Start of the served certificate's validity, as a Unix timestamp." },
    { "not_after", NULL, "acme_certificate_not_after_seconds",
      "End of the served certificate's validity, as a Unix timestamp." },
    { "next_renewal", NULL, "acme_certificate_next_renewal_seconds",
      "When the certificate is renewed next (or the next try after a failure), as a Unix timestamp." },
    { "last_success", NULL, "acme_certificate_last_success_seconds",
      "When the served certificate was issued and stored, as a Unix timestamp." },
    { "last_failure", NULL, "acme_certificate_last_failure_seconds",
      "When the last failed issuance attempt ended, as a Unix timestamp." },
    { "ari_window", "start", "acme_certificate_ari_window_start_seconds",
      "Start of the CA's suggested renewal window (ARI), as a Unix timestamp." },
    { "ari_window", "end", "acme_certificate_ari_window_end_seconds",
      "End of the CA's suggested renewal window (ARI), as a Unix timestamp." },
};

/* the issuers' counters: member, metric name, help */
static const struct {
    const char  *member;
    const char  *metric;
    const char  *help;
} issuer_counters[] = {
    { "orders", "acme_orders_total", "Issuance attempts (orders) started with this issuer." },
    { "requests", "acme_requests_total", "HTTP requests sent to this issuer's ACME server." },
    { "bad_nonce_retries", "acme_bad_nonce_retries_total",
      "Signed requests sent again after the CA answered badNonce." },
    { "rate_limited", "acme_rate_limited_total",
      "Answers from this issuer that were rateLimited or HTTP 429." },
};

/* A label value: backslash, double quote and line feed escaped (the format's only escapes). */
static int
put_label(acme_buf_t *b, const char *v)
{
    const char  *p;
    int          rc = 0;

    for (p = v; rc == 0 && *p != '\0'; p++) {
        switch (*p) {
        case '\\': rc = acme_buf_append(b, "\\\\", 2); break;
        case '"':  rc = acme_buf_append(b, "\\\"", 2); break;
        case '\n': rc = acme_buf_append(b, "\\n", 2); break;
        default:   rc = acme_buf_append(b, p, 1); break;
        }
    }
    return rc;
}

static int
put_family(acme_buf_t *b, const char *metric, const char *type, const char *help)
{
    /* the help texts are ours: no backslash or line feed to escape */
    return acme_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", metric, help, metric, type);
}

/* metric{name="..."[,label="..."]} value */
static int
put_sample(acme_buf_t *b, const char *metric, const char *l1, const char *v1, const char *l2, const char *v2,
    long long value)
{
    if (acme_buf_printf(b, "%s{%s=\"", metric, l1) != 0 || put_label(b, v1) != 0) {
        return -1;
    }
    if (l2 != NULL && (acme_buf_printf(b, "\",%s=\"", l2) != 0 || put_label(b, v2) != 0)) {
        return -1;
    }
    return acme_buf_printf(b, "\"} %lld\n", value);
}

/* "2026-01-02T03:04:05Z" as a Unix time; -1 for anything else (null included). */
static long long
iso_time(const json_t *j)
{
    const char  *s = json_string_value(j);
    struct tm    tm;
    int          n = 0;

    if (s == NULL) {
        return -1;
    }
    memset(&tm, 0, sizeof(tm));
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2dZ%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &n) != 6 || s[n] != '\0')
    {
        return -1;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (long long) timegm(&tm);
}

/*
 * keep[i] is 1 when element i has a "name" that no earlier element had (malloc'd; NULL when out of memory):
 * one pass with a hash set, as a scrape of thousands of certificates runs in a traffic-serving worker.
 */
static unsigned char *
first_of_name(const json_t *arr)
{
    size_t          i, n = json_array_size(arr);
    unsigned char  *keep;
    json_t         *seen;
    const char     *name;

    keep = calloc(n ? n : 1, 1);
    seen = json_object();
    for (i = 0; keep != NULL && seen != NULL && i < n; i++) {
        name = json_string_value(json_object_get(json_array_get(arr, i), "name"));
        if (name != NULL && json_object_get(seen, name) == NULL) {
            keep[i] = 1;
            json_object_set_new(seen, name, json_true());
        }
    }
    if (seen == NULL) {
        free(keep);
        keep = NULL;
    }
    json_decref(seen);
    return keep;
}

static int
put_certificates(acme_buf_t *b, const json_t *certs, const unsigned char *keep)
{
    size_t         i, t, s;
    const json_t  *c, *v;
    const char    *name, *state, *str;
    long long      at;
    int            rc = 0;

    rc |= put_family(b, "acme_certificate_info", "gauge",
                     "A managed certificate: its issuer (by configured name) and key type, always 1.");
    for (i = 0; i < json_array_size(certs); i++) {
        if (!keep[i]) {
            continue;
        }
        c = json_array_get(certs, i);
        name = json_string_value(json_object_get(c, "name"));
        str = json_string_value(json_object_get(c, "issuer_name"));
        rc |= acme_buf_printf(b, "acme_certificate_info{name=\"");
        rc |= put_label(b, name);
        rc |= acme_buf_printf(b, "\",issuer=\"");
        rc |= put_label(b, str ? str : "");
        rc |= acme_buf_printf(b, "\",key_type=\"");
        str = json_string_value(json_object_get(c, "key_type"));
        rc |= put_label(b, str ? str : "");
        rc |= acme_buf_printf(b, "\"} 1\n");
    }

    rc |= put_family(b, "acme_certificate_state", "gauge",
                     "1 for the certificate's current state (pending, valid, renewing, failing, expired), "
                     "0 for the others.");
    for (i = 0; i < json_array_size(certs); i++) {
        if (!keep[i]) {
            continue;
        }
        c = json_array_get(certs, i);
        name = json_string_value(json_object_get(c, "name"));
        state = json_string_value(json_object_get(c, "state"));
        for (s = 0; s < sizeof(cert_states) / sizeof(cert_states[0]); s++) {
            rc |= put_sample(b, "acme_certificate_state", "name", name, "state", cert_states[s],
                             state != NULL && strcmp(state, cert_states[s]) == 0);
        }
    }

    for (t = 0; t < sizeof(cert_times) / sizeof(cert_times[0]); t++) {
        rc |= put_family(b, cert_times[t].metric, "gauge", cert_times[t].help);
        for (i = 0; i < json_array_size(certs); i++) {
            if (!keep[i]) {
                continue;
            }
            c = json_array_get(certs, i);
            v = json_object_get(c, cert_times[t].member);
            if (cert_times[t].sub != NULL) {
                v = json_object_get(v, cert_times[t].sub);
            }
            at = iso_time(v);
            if (at >= 0) {
                rc |= put_sample(b, cert_times[t].metric, "name",
                                 json_string_value(json_object_get(c, "name")), NULL, NULL, at);
            }
        }
    }

    rc |= put_family(b, "acme_certificate_failures", "gauge",
                     "Consecutive failed issuance attempts (0 after a success).");
    for (i = 0; i < json_array_size(certs); i++) {
        if (!keep[i]) {
            continue;
        }
        c = json_array_get(certs, i);
        rc |= put_sample(b, "acme_certificate_failures", "name", json_string_value(json_object_get(c, "name")),
                         NULL, NULL, (long long) json_integer_value(json_object_get(c, "failures")));
    }
    return rc ? -1 : 0;
}

/* The sum over every issuer of this name (several managers may each have one). */
static long long
issuer_sum(const json_t *issuers, const char *name, const char *member, const char *sub)
{
    size_t         i;
    long long      n = 0;
    const json_t  *is, *v;
    const char    *other;

    for (i = 0; i < json_array_size(issuers); i++) {
        is = json_array_get(issuers, i);
        other = json_string_value(json_object_get(is, "name"));
        if (other == NULL || strcmp(other, name) != 0) {
            continue;
        }
        v = json_object_get(is, member);
        if (sub != NULL) {
            v = json_object_get(v, sub);
        }
        n += json_integer_value(v);
    }
    return n;
}

static int
put_issuers(acme_buf_t *b, const json_t *issuers, const unsigned char *keep)
{
    size_t         i, t;
    const json_t  *errs;
    const char    *name, *type;
    json_t        *v;
    int            rc = 0;

    for (t = 0; t < sizeof(issuer_counters) / sizeof(issuer_counters[0]); t++) {
        rc |= put_family(b, issuer_counters[t].metric, "counter", issuer_counters[t].help);
        for (i = 0; i < json_array_size(issuers); i++) {
            if (!keep[i]) {
                continue;
            }
            name = json_string_value(json_object_get(json_array_get(issuers, i), "name"));
            rc |= put_sample(b, issuer_counters[t].metric, "issuer", name, NULL, NULL,
                             issuer_sum(issuers, name, issuer_counters[t].member, NULL));
        }
    }

    rc |= put_family(b, "acme_order_errors_total", "counter",
                     "Failed issuance attempts with this issuer by kind of error (network, ca, ratelimit, "
                     "badresponse, config, store, input, internal).");
    for (i = 0; i < json_array_size(issuers); i++) {
        if (!keep[i]) {
            continue;
        }
        name = json_string_value(json_object_get(json_array_get(issuers, i), "name"));
        errs = json_object_get(json_array_get(issuers, i), "errors");
        json_object_foreach((json_t *) errs, type, v) {
            rc |= put_sample(b, "acme_order_errors_total", "issuer", name, "type", type,
                             issuer_sum(issuers, name, "errors", type));
        }
    }
    return rc ? -1 : 0;
}

char *
acme_metrics_prometheus(const json_t *status)
{
    acme_buf_t      b;
    const json_t   *certs, *issuers;
    unsigned char  *ck, *ik;
    int             rc;

    certs = json_object_get(status, "certificates");
    issuers = json_object_get(status, "issuers");
    ck = first_of_name(certs);
    ik = first_of_name(issuers);
    memset(&b, 0, sizeof(b));
    rc = ck == NULL || ik == NULL
         || put_certificates(&b, certs, ck) != 0
         || put_issuers(&b, issuers, ik) != 0
         || acme_buf_append(&b, "", 0) != 0;
    free(ck);
    free(ik);
    if (rc) {
        acme_buf_free(&b);
        return NULL;
    }
    return acme_buf_steal(&b);
}
