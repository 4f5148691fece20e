/* The records of the DNS challenge types other than dns-01: names, dns-persist-01's values. */
#include "unit.h"

#include <stdlib.h>
#include <string.h>
#include "acme_dns.h"
#include "acme_store.h"

static void
test_dns_account01_name(void **state)
{
    char *n;

    /* the example of draft-ietf-acme-dns-account-label: base32 of the first 10 bytes of SHA-256 */
    n = acme_dns_account01_name("example.org", "https://example.com/acme/acct/ExampleAccount");
    assert_string_equal(n, "_ujmmovf2vn55tgye._acme-challenge.example.org");
    free(n);
    /* a wildcard's record is its domain's */
    n = acme_dns_account01_name("*.example.org", "https://example.com/acme/acct/ExampleAccount");
    assert_string_equal(n, "_ujmmovf2vn55tgye._acme-challenge.example.org");
    free(n);
}

static void
test_dns_persist_match(void **state)
{
    char        *iss[] = { "letsencrypt.org", "pebble.letsencrypt.org" }, why[200];
    const char  *acct = "https://acme.example/acct/1";
    long long    until;
    char        *v;

    v = acme_dns_persist_value("letsencrypt.org", acct, 1, 1800000000LL);
    assert_string_equal(v, "letsencrypt.org; accounturi=https://acme.example/acct/1; policy=wildcard; "
                        "persistUntil=1800000000");
    assert_int_equal(acme_dns_persist_match(v, iss, 2, acct, 1, 1700000000, &until, why, sizeof(why)), 1);
    assert_int_equal(until, 1800000000LL);
    /* passed */
    assert_int_equal(acme_dns_persist_match(v, iss, 2, acct, 1, 1900000000, &until, why, sizeof(why)), 0);
    assert_string_equal(why, "its persistUntil=1800000000 (2027-01-15T08:00:00Z) has passed: the CA no longer "
                        "accepts it");
    free(v);
    /* RFC 8659: tags case-insensitive, spaces and tabs around; policy's value too */
    assert_int_equal(acme_dns_persist_match("pebble.letsencrypt.org ;\tAccountURI=https://acme.example/acct/1 ;"
                                            " Policy=WILDCARD", iss, 2, acct, 1, 0, &until, why, sizeof(why)), 1);
    /* a wildcard needs policy=wildcard; another account; another CA's record is not ours to judge */
    assert_int_equal(acme_dns_persist_match("letsencrypt.org; accounturi=https://acme.example/acct/1", iss, 2,
                                            acct, 1, 0, &until, why, sizeof(why)), 0);
    assert_string_equal(why, "no policy=wildcard, which a wildcard needs");
    assert_int_equal(acme_dns_persist_match("letsencrypt.org; accounturi=https://acme.example/acct/2", iss, 2,
                                            acct, 0, 0, &until, why, sizeof(why)), 0);
    assert_string_equal(why, "accounturi=https://acme.example/acct/2 is another account's");
    assert_int_equal(acme_dns_persist_match("other-ca.example; accounturi=https://acme.example/acct/1", iss, 2,
                                            acct, 0, 0, &until, why, sizeof(why)), 0);
    assert_string_equal(why, "");
    assert_int_equal(acme_dns_persist_match("letsencrypt.org; accounturi", iss, 2, acct, 0, 0, &until, why,
                                            sizeof(why)), 0);
    assert_string_equal(why, "a malformed parameter (not tag=value)");
    v = acme_dns_persist_name("*.example.org");
    assert_string_equal(v, "_validation-persist.example.org");
    free(v);
}

static void
note_set(acme_persist_note_t *n, const char *ident, time_t until)
{
    memset(n, 0, sizeof(*n));
    n->ident = strdup(ident);
    n->record_name = strdup("_validation-persist.example.org");
    n->record_value = strdup("letsencrypt.org; accounturi=https://acme.example/acct/1; persistUntil=1");
    n->until = until;
    n->at = 1700000000;
}

/* persistUntil before the certificate in service ends, or within 30 days: a warning; after both: none */
static void
test_dns_persist_judge(void **state)
{
    acme_persist_note_t  n;
    time_t               now = 1700000000, day = 86400;

    note_set(&n, "dns:example.org", now + 40 * day);
    assert_int_equal(acme_persist_judge(&n, "example.org", now + 30 * day, now), 0);
    assert_null(n.warning);
    assert_int_equal(acme_persist_judge(&n, "example.org", 0, now), 0);
    /* the record ends before the certificate does: its renewal needs the record again */
    assert_int_equal(acme_persist_judge(&n, "example.org", now + 90 * day, now), 1);
    assert_string_equal(n.warning, "dns-persist-01 record _validation-persist.example.org for example.org: its "
                        "persistUntil=1703456000 (2023-12-24T22:13:20Z) passes in 40 day(s), before "
                        "\"example.org\" (valid until 2024-02-12T22:13:20Z) is renewed; replace it by a record "
                        "with a later persistUntil, or none (acmectl dns-persist-record prints it)");
    n.until = now + 5 * day;
    assert_int_equal(acme_persist_judge(&n, "example.org", now + 6 * day, now), 1);
    assert_non_null(strstr(n.warning, "passes in 5 day(s) (less than 30); replace it"));
    n.until = now - 1;
    assert_int_equal(acme_persist_judge(&n, "example.org", now + 6 * day, now), 1);
    assert_non_null(strstr(n.warning, "has passed: the CA no longer accepts it"));
    n.until = 0;        /* no persistUntil */
    assert_int_equal(acme_persist_judge(&n, "example.org", now + 6 * day, now), 0);
    assert_null(n.warning);
    free(n.ident);
    free(n.record_name);
    free(n.record_value);
}

/* a check replaces the identifier's old note; identifiers not checked keep theirs; gone names drop */
static void
test_dns_persist_merge(void **state)
{
    acme_persist_note_t  old[3], job[2], *out;
    acme_ident_t         ids[2] = { { ACME_IDENT_DNS, "a.example.org" }, { ACME_IDENT_DNS, "b.example.org" } };
    acme_certmeta_t      m, back;
    acme_err_t           err;
    size_t               n, i;
    char                *js;

    note_set(&old[0], "dns:a.example.org", 1);
    note_set(&old[1], "dns:b.example.org", 2);
    note_set(&old[2], "dns:gone.example.org", 3);
    for (i = 0; i < 3; i++) {
        old[i].warning = strdup("old");
    }
    note_set(&job[0], "dns:a.example.org", 0);      /* checked again: fine now */
    note_set(&job[1], "dns:new.example.org", 4);    /* not among ids: still the job's own */
    job[1].warning = strdup("new");
    assert_int_equal(acme_persist_notes_merge(old, 3, job, 2, ids, 2, &out, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(out[0].ident, "dns:b.example.org");
    assert_string_equal(out[0].warning, "old");
    assert_string_equal(out[1].ident, "dns:new.example.org");
    assert_string_equal(out[1].warning, "new");

    /* kept in meta.json, shown in the status */
    memset(&m, 0, sizeof(m));
    m.name = "a.example.org";
    m.ids = ids;
    m.nids = 2;
    m.persist_notes = out;
    m.npersist_notes = n;
    js = acme_certmeta_to_json(&m);
    assert_non_null(js);
    assert_int_equal(acme_certmeta_from_json(js, strlen(js), &back, &err), 0);
    assert_int_equal(back.npersist_notes, 2);
    assert_string_equal(back.persist_notes[1].ident, "dns:new.example.org");
    assert_string_equal(back.persist_notes[1].record_name, "_validation-persist.example.org");
    assert_int_equal(back.persist_notes[1].until, 4);
    assert_int_equal(back.persist_notes[1].at, 1700000000);
    assert_string_equal(back.persist_notes[1].warning, "new");
    assert_non_null(strstr(js, "\"dns_persist_until\": \"1970-01-01T00:00:04Z\""));
    free(js);
    acme_certmeta_free(&back);
    acme_persist_notes_free(out, n);
    for (i = 0; i < 3; i++) {
        free(old[i].ident);
        free(old[i].record_name);
        free(old[i].record_value);
        free(old[i].warning);
    }
    for (i = 0; i < 2; i++) {
        free(job[i].ident);
        free(job[i].record_name);
        free(job[i].record_value);
        free(job[i].warning);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dns_account01_name),
        cmocka_unit_test(test_dns_persist_match),
        cmocka_unit_test(test_dns_persist_judge),
        cmocka_unit_test(test_dns_persist_merge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
