/*
 * Fuzz targets for the parsers that read what a CA, a client or the state directory hands us.
 *
 * One function per target, int fuzz_<name>(const uint8_t *data, size_t size), always returning 0. Each
 * frees everything it got (LeakSanitizer counts a leak as a failure) and checks a few properties the
 * headers promise; a broken property goes to FUZZ_FAIL (abort() under libFuzzer, a cmocka failure in
 * tests/unit/test_fuzz_corpus.c, which includes this file).
 *
 * FUZZ_TARGETS(X) lists the targets; the corpus directories tests/fuzz/corpus/<name>/ and
 * tests/fuzz/regressions/<name>/ are named after them.
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "acme_directory.h"
#include "acme_http.h"
#include "acme_http01.h"
#include "acme_ident.h"
#include "acme_problem.h"
#include "acme_resource.h"
#include "acme_store.h"
#include "acme_x509.h"

#ifndef FUZZ_FAIL
#define FUZZ_FAIL(...)                                                                          \
    do {                                                                                        \
        fprintf(stderr, "\nfuzz property violated (%s:%d): ", __FILE__, __LINE__);              \
        fprintf(stderr, __VA_ARGS__);                                                           \
        fputc('\n', stderr);                                                                    \
        abort();                                                                                \
    } while (0)
#endif

#define FUZZ_CHECK(cond, ...)                                                                   \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            FUZZ_FAIL(__VA_ARGS__);                                                             \
        }                                                                                       \
    } while (0)

/* A fixed "now" so that every run of an input takes the same path. */
#define FUZZ_NOW  ((time_t) 1735787045)      /* 2025-01-02T03:04:05Z */

/* The input as a C string (cut at its first NUL), malloc'd with exactly the room it needs. */
static char *
fuzz_cstr(const uint8_t *data, size_t size)
{
    char  *s = malloc(size + 1);

    if (s != NULL) {
        if (size > 0) {
            memcpy(s, data, size);
        }
        s[size] = '\0';
    }
    return s;
}

/* An err message is always a NUL-terminated string that fits its buffer. */
static void
fuzz_err_ok(const acme_err_t *err)
{
    FUZZ_CHECK(memchr(err->msg, '\0', sizeof(err->msg)) != NULL, "error message not terminated");
}

/* ---- problem documents ---- */

static int
fuzz_problem(const uint8_t *data, size_t size)
{
    acme_problem_t  p;
    acme_err_t      err;
    char           *m;
    size_t          i;

    memset(&err, 0, sizeof(err));
    if (acme_problem_parse((const char *) data, size, &p, &err) != 0) {
        fuzz_err_ok(&err);
        return 0;
    }
    FUZZ_CHECK(p.nsubproblems <= 100, "%zu subproblems kept", p.nsubproblems);
    FUZZ_CHECK(p.status == 0 || (p.status >= 100 && p.status <= 999), "status %d", p.status);
    for (i = 0; i < p.nsubproblems; i++) {
        FUZZ_CHECK(p.subproblems[i].nsubproblems == 0, "nested subproblems kept");
        FUZZ_CHECK((p.subproblems[i].ident_type == NULL) == (p.subproblems[i].ident_value == NULL),
                   "half an identifier in subproblem %zu", i);
    }
    (void) acme_problem_short_type(&p);
    (void) acme_problem_is(&p, "rateLimited");
    m = acme_problem_message(&p);
    FUZZ_CHECK(m != NULL, "no problem message");
    free(m);
    acme_problem_to_err(&p, "fuzz", &err);
    fuzz_err_ok(&err);
    FUZZ_CHECK(err.kind == ACME_ERR_CA || err.kind == ACME_ERR_RATELIMIT, "error kind %d", (int) err.kind);
    acme_problem_free(&p);
    return 0;
}

/* ---- directory ---- */

static int
fuzz_directory(const uint8_t *data, size_t size)
{
    acme_directory_t  d;
    acme_err_t        err;
    size_t            i;

    memset(&err, 0, sizeof(err));
    if (acme_directory_parse((const char *) data, size, &d, &err) != 0) {
        fuzz_err_ok(&err);
        return 0;
    }
    FUZZ_CHECK(acme_url_valid(d.new_nonce) && acme_url_valid(d.new_account) && acme_url_valid(d.new_order),
               "directory accepted without its required URLs");
    FUZZ_CHECK(d.new_authz == NULL || acme_url_valid(d.new_authz), "bad newAuthz kept");
    FUZZ_CHECK(d.renewal_info == NULL || acme_url_valid(d.renewal_info), "bad renewalInfo kept");
    for (i = 0; i < d.nprofiles; i++) {
        FUZZ_CHECK(d.profiles[i] != NULL && d.profile_descs[i] != NULL, "profile %zu missing", i);
        FUZZ_CHECK(acme_directory_has_profile(&d, d.profiles[i]), "profile %zu not found", i);
    }
    (void) acme_directory_has_profile(&d, "default");
    acme_directory_free(&d);
    return 0;
}

/* ---- CA names and directory URLs (configuration input) ---- */

static int
fuzz_ca(const uint8_t *data, size_t size)
{
    acme_err_t   err;
    char        *s, *url, *id, *id2;
    size_t       i;

    s = fuzz_cstr(data, size);
    if (s == NULL) {
        return 0;
    }
    memset(&err, 0, sizeof(err));
    (void) acme_url_valid(s);
    url = acme_ca_resolve(s, &err);
    if (url == NULL) {
        fuzz_err_ok(&err);
    } else {
        FUZZ_CHECK(acme_url_valid(url), "acme_ca_resolve returned an invalid URL");
        /* the id names the accounts/<ca-id>/ directory: it must be a store segment */
        id = acme_ca_id(url);
        FUZZ_CHECK(id != NULL, "no CA id");
        FUZZ_CHECK(acme_store_name_check(id, "CA id", &err) == 0, "acme_ca_id(\"%.300s\") = \"%s\": %s",
                   url, id, err.msg);
        id2 = acme_ca_id(url);
        FUZZ_CHECK(id2 != NULL && strcmp(id, id2) == 0, "acme_ca_id is not stable");
        free(id2);
        free(id);
        free(url);
    }
    id = acme_ca_id(s);
    if (id != NULL) {
        FUZZ_CHECK(id[0] != '\0', "empty CA id");
        for (i = 0; id[i] != '\0'; i++) {
            char c = id[i];
            FUZZ_CHECK((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-'
                       || c == '_' || c == '.', "character 0x%02x in a CA id", (unsigned char) c);
        }
        free(id);
    }
    free(s);
    return 0;
}

/* ---- order, authorization, challenge, renewalInfo ---- */

static void
fuzz_check_problem(const acme_problem_t *p)
{
    char  *m;

    if (p != NULL) {
        m = acme_problem_message(p);
        FUZZ_CHECK(m != NULL, "no problem message");
        free(m);
    }
}

static void
fuzz_check_challenge(const acme_challenge_t *c)
{
    FUZZ_CHECK(c->type != NULL && c->type[0] != '\0', "challenge without a type");
    FUZZ_CHECK(acme_url_valid(c->url), "challenge with a bad url");
    FUZZ_CHECK(c->token == NULL || acme_token_valid(c->token), "challenge with a bad token");
    if (strcmp(c->type, "http-01") == 0 || strcmp(c->type, "tls-alpn-01") == 0
        || strcmp(c->type, "dns-01") == 0)
    {
        FUZZ_CHECK(c->token != NULL, "%s challenge without a token", c->type);
    }
    FUZZ_CHECK(c->status != ACME_ST_UNKNOWN, "challenge with an unknown status");
    (void) acme_status_name(c->status);
    fuzz_check_problem(c->error);
}

static int
fuzz_order(const uint8_t *data, size_t size)
{
    acme_order_t  o;
    acme_err_t    err;
    size_t        i;

    memset(&err, 0, sizeof(err));
    if (acme_order_parse((const char *) data, size, &o, &err) != 0) {
        fuzz_err_ok(&err);
        return 0;
    }
    FUZZ_CHECK(o.status != ACME_ST_UNKNOWN, "order with an unknown status");
    FUZZ_CHECK(acme_url_valid(o.finalize), "order with a bad finalize URL");
    FUZZ_CHECK(o.status != ACME_ST_VALID || o.certificate != NULL, "valid order without a certificate");
    FUZZ_CHECK(o.certificate == NULL || acme_url_valid(o.certificate), "order with a bad certificate URL");
    for (i = 0; i < o.nauthorizations; i++) {
        FUZZ_CHECK(acme_url_valid(o.authorizations[i]), "order with a bad authorization URL");
    }
    fuzz_check_problem(o.error);
    acme_order_free(&o);
    return 0;
}

static int
fuzz_authz(const uint8_t *data, size_t size)
{
    acme_authz_t   a;
    acme_err_t     err;
    acme_ident_t   id;
    size_t         i;
    char          *sni;

    memset(&err, 0, sizeof(err));
    if (acme_authz_parse((const char *) data, size, &a, &err) != 0) {
        fuzz_err_ok(&err);
        return 0;
    }
    FUZZ_CHECK(a.status != ACME_ST_UNKNOWN, "authorization with an unknown status");
    FUZZ_CHECK(a.identifier.value != NULL, "authorization without an identifier");
    /* what we keep is normalised: parsing it again gives it back unchanged */
    FUZZ_CHECK(acme_ident_parse(a.identifier.value, &id, &err) == 0, "identifier \"%s\" does not parse again: %s",
               a.identifier.value, err.msg);
    FUZZ_CHECK(id.type == a.identifier.type && strcmp(id.value, a.identifier.value) == 0,
               "identifier \"%s\" is not normalised", a.identifier.value);
    acme_ident_free(&id);
    sni = acme_ident_sni(&a.identifier);
    FUZZ_CHECK(sni != NULL, "no SNI name for \"%s\"", a.identifier.value);
    free(sni);
    for (i = 0; i < a.nchallenges; i++) {
        fuzz_check_challenge(&a.challenges[i]);
    }
    (void) acme_authz_challenge(&a, "http-01");
    (void) acme_authz_challenge(&a, "tls-alpn-01");
    acme_authz_free(&a);
    return 0;
}

static int
fuzz_challenge(const uint8_t *data, size_t size)
{
    acme_challenge_t  c;
    acme_err_t        err;

    memset(&err, 0, sizeof(err));
    if (acme_challenge_parse((const char *) data, size, &c, &err) != 0) {
        fuzz_err_ok(&err);
        return 0;
    }
    fuzz_check_challenge(&c);
    acme_challenge_free(&c);
    return 0;
}

/* A time we accepted can be written (acme_time_format, as meta.json stores it) and read back unchanged. */
static void
fuzz_check_time_roundtrip(time_t t, const char *what)
{
    char    buf[64];
    time_t  t2;

    acme_time_format(t, buf, sizeof(buf));
    FUZZ_CHECK(buf[0] != '\0', "%.80s: acme_time_format failed for %lld", what, (long long) t);
    FUZZ_CHECK(acme_time_parse(buf, &t2) == 0 && t2 == t,
               "%.80s: %lld is formatted as \"%s\", which does not parse back", what, (long long) t, buf);
}

static int
fuzz_renewal_info(const uint8_t *data, size_t size)
{
    acme_renewal_info_t  ri;
    acme_err_t           err;

    memset(&err, 0, sizeof(err));
    if (acme_renewal_info_parse((const char *) data, size, &ri, &err) != 0) {
        fuzz_err_ok(&err);
        return 0;
    }
    FUZZ_CHECK(ri.end > ri.start, "renewal window ends before it starts");
    /* the window goes into meta.json (ari_start, ari_end) */
    fuzz_check_time_roundtrip(ri.start, "suggestedWindow.start");
    fuzz_check_time_roundtrip(ri.end, "suggestedWindow.end");
    FUZZ_CHECK(ri.explanation_url == NULL || acme_url_valid(ri.explanation_url), "bad explanationURL kept");
    acme_renewal_info_free(&ri);
    return 0;
}

/* ---- timestamps: RFC 3339 (the CA's JSON, meta.json) and Retry-After (HTTP) ---- */

static int
fuzz_time(const uint8_t *data, size_t size)
{
    char     *s;
    time_t    t;
    long      ra;

    s = fuzz_cstr(data, size);
    if (s == NULL) {
        return 0;
    }
    if (acme_time_parse(s, &t) == 0) {
        /* what we accept, we can write back and read again (meta.json stores times this way) */
        fuzz_check_time_roundtrip(t, s);
    }
    ra = acme_http_parse_retry_after(s, (long) FUZZ_NOW);
    FUZZ_CHECK(ra >= 0 && ra <= 7 * 86400, "Retry-After \"%.80s\" gives %ld s", s, ra);
    free(s);
    return 0;
}

/* ---- PEM chains and the certificates in them ---- */

static int
fuzz_pem_chain(const uint8_t *data, size_t size)
{
    STACK_OF(X509)    *chain, *again;
    acme_cert_info_t   info;
    acme_ident_t      *ids;
    acme_err_t         err;
    EVP_PKEY          *pub;
    size_t             i, nids;
    char              *pem, *ari;
    size_t             plen;
    time_t             leaf_nb = FUZZ_NOW;
    int                j, n;

    memset(&err, 0, sizeof(err));
    if (acme_pem_chain_parse((const char *) data, size, &chain, &err) != 0) {
        fuzz_err_ok(&err);
        FUZZ_CHECK(chain == NULL, "chain set on failure");
        ERR_clear_error();
        return 0;
    }
    n = sk_X509_num(chain);
    FUZZ_CHECK(n >= 1 && n <= 10, "%d certificates in a chain", n);

    ids = NULL;
    nids = 0;
    for (j = 0; j < n; j++) {
        if (acme_cert_info(sk_X509_value(chain, j), &info, &err) != 0) {
            fuzz_err_ok(&err);
            continue;
        }
        FUZZ_CHECK(info.serial_hex != NULL, "certificate without a serial");
        for (i = 0; i < info.nnames; i++) {
            FUZZ_CHECK(info.names[i] != NULL, "NULL SAN");
        }
        if (j == 0 && info.nnames > 0) {
            /* the leaf's names as identifiers, for the chain check below */
            ids = calloc(info.nnames, sizeof(*ids));
            for (i = 0; ids != NULL && i < info.nnames; i++) {
                if (acme_ident_parse(info.names[i], &ids[nids], &err) == 0) {
                    nids++;
                }
            }
        }
        if (j == 0) {
            leaf_nb = info.not_before;
        }
        acme_cert_info_free(&info);
    }
    pub = X509_get0_pubkey(sk_X509_value(chain, 0));
    if (pub != NULL) {
        /* at the leaf's notBefore, so that the check goes on to names and signatures */
        (void) acme_chain_check(chain, pub, ids, nids, leaf_nb, &err);
        (void) acme_chain_check(chain, pub, NULL, 0, FUZZ_NOW, &err);
    }
    for (i = 0; i < nids; i++) {
        acme_ident_free(&ids[i]);
    }
    free(ids);

    (void) acme_chain_issuer_matches(chain, "Pebble Intermediate CA 7c0f2a");
    (void) acme_chain_issuer_matches(chain, "");
    ari = acme_ari_cert_id(sk_X509_value(chain, 0), &err);
    free(ari);

    /* what we parse, we can write and parse back, to as many certificates */
    pem = acme_pem_chain_string(chain, &plen, &err);
    if (pem != NULL) {
        again = NULL;
        FUZZ_CHECK(acme_pem_chain_parse(pem, plen, &again, &err) == 0, "re-encoded chain refused: %s", err.msg);
        FUZZ_CHECK(sk_X509_num(again) == n, "re-encoded chain has %d certificates, not %d",
                   sk_X509_num(again), n);
        acme_chain_free(again);
        free(pem);
    }
    acme_chain_free(chain);
    ERR_clear_error();
    return 0;
}

/* ---- HTTP-01 request paths ---- */

static int
fuzz_http01(const uint8_t *data, size_t size)
{
    const char  *path = (const char *) data;
    const char  *tok = NULL;
    size_t       tlen = 0, i;
    int          r;

    r = acme_http01_parse_path(path, size, &tok, &tlen);
    FUZZ_CHECK(r == ACME_HTTP01_NOT_CHALLENGE || r == ACME_HTTP01_TOKEN || r == ACME_HTTP01_MALFORMED,
               "unexpected result %d", r);
    if (size >= ACME_HTTP01_PREFIX_LEN && memcmp(path, ACME_HTTP01_PREFIX, ACME_HTTP01_PREFIX_LEN) == 0) {
        FUZZ_CHECK(r != ACME_HTTP01_NOT_CHALLENGE, "a path under the challenge prefix is not ours");
    } else {
        FUZZ_CHECK(r == ACME_HTTP01_NOT_CHALLENGE, "a path outside the prefix was classified %d", r);
    }
    if (r != ACME_HTTP01_TOKEN) {
        return 0;
    }
    FUZZ_CHECK(tok == path + ACME_HTTP01_PREFIX_LEN && tlen == size - ACME_HTTP01_PREFIX_LEN,
               "token does not span the rest of the path");
    FUZZ_CHECK(tlen >= 1 && tlen <= ACME_HTTP01_TOKEN_MAX, "token of %zu bytes", tlen);
    for (i = 0; i < tlen; i++) {
        char c = tok[i];
        FUZZ_CHECK((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'
                   || c == '_', "character 0x%02x in a token", (unsigned char) c);
    }
    return 0;
}

/* ---- identifiers (configuration and the CA's JSON) ---- */

static int
fuzz_ident(const uint8_t *data, size_t size)
{
    acme_ident_t   id, id2;
    acme_err_t     err;
    char          *s, *sni, *name;

    s = fuzz_cstr(data, size);
    if (s == NULL) {
        return 0;
    }
    memset(&err, 0, sizeof(err));
    /* as a validator's SNI: a reverse name maps back to the same SNI, a DNS name to itself normalised */
    if (acme_ident_from_sni(s, &id, &err) == 0) {
        sni = acme_ident_sni(&id);
        if (id.type == ACME_IDENT_IP) {
            FUZZ_CHECK(sni != NULL && strcasecmp(sni, s) == 0, "SNI \"%s\" -> \"%s\" -> \"%s\"", s, id.value,
                       sni ? sni : "(none)");
        } else {
            FUZZ_CHECK(acme_ident_parse(s, &id2, &err) == 0 && id2.type == ACME_IDENT_DNS
                       && strcmp(id2.value, id.value) == 0, "SNI \"%s\" -> \"%s\"", s, id.value);
            acme_ident_free(&id2);
        }
        free(sni);
        acme_ident_free(&id);
    } else {
        fuzz_err_ok(&err);
    }
    if (acme_ident_parse(s, &id, &err) != 0) {
        fuzz_err_ok(&err);
        FUZZ_CHECK(id.value == NULL, "value set on failure");
        free(s);
        return 0;
    }
    FUZZ_CHECK(id.value != NULL && (id.type == ACME_IDENT_DNS || id.type == ACME_IDENT_IP), "bad result");
    FUZZ_CHECK(acme_ident_parse(id.value, &id2, &err) == 0, "\"%s\" does not parse again: %s", id.value,
               err.msg);
    FUZZ_CHECK(id2.type == id.type && strcmp(id2.value, id.value) == 0, "\"%s\" is not normalised", id.value);
    acme_ident_free(&id2);
    if (id.type == ACME_IDENT_DNS) {
        FUZZ_CHECK(strlen(id.value) <= 253, "DNS name of %zu bytes", strlen(id.value));
        FUZZ_CHECK(acme_dns_match(id.value, id.value), "\"%s\" does not match itself", id.value);
    }
    sni = acme_ident_sni(&id);
    FUZZ_CHECK(sni != NULL, "no SNI name for \"%s\"", id.value);
    /* (a DNS identifier that is itself a reverse name is read back as the address: the SNI is the same) */
    if (id.value[0] != '*' && !(strlen(id.value) >= 5 && strcmp(id.value + strlen(id.value) - 5, ".arpa") == 0)) {
        FUZZ_CHECK(acme_ident_from_sni(sni, &id2, &err) == 0, "SNI \"%s\" does not map back: %s", sni, err.msg);
        FUZZ_CHECK(id2.type == id.type && strcmp(id2.value, id.value) == 0, "SNI \"%s\" maps back to \"%s\"",
                   sni, id2.value);
        acme_ident_free(&id2);
    }
    free(sni);
    /* a certificate for this name is stored under certs/<acme_cert_name>/: it must be a store segment */
    name = acme_cert_name(&id, 1, NULL);
    FUZZ_CHECK(name != NULL, "no certificate name for \"%s\"", id.value);
    FUZZ_CHECK(acme_store_name_check(name, "certificate name", &err) == 0, "acme_cert_name(\"%s\") = \"%s\": %s",
               id.value, name, err.msg);
    free(name);
    acme_ident_free(&id);
    free(s);
    return 0;
}

/* ---- certs/<name>/meta.json ---- */

static int
fuzz_certmeta(const uint8_t *data, size_t size)
{
    acme_certmeta_t  m, m2;
    acme_err_t       err;
    char            *js, *name;
    size_t           i;

    memset(&err, 0, sizeof(err));
    if (acme_certmeta_from_json((const char *) data, size, &m, &err) != 0) {
        fuzz_err_ok(&err);
        return 0;
    }
    name = acme_cert_name(m.ids, m.nids, &m.keyspec);
    if (name != NULL) {
        FUZZ_CHECK(acme_store_name_check(name, "certificate name", &err) == 0, "acme_cert_name gave \"%s\": %s",
                   name, err.msg);
        free(name);
    }
    /* what we read, we write back and read again, unchanged */
    js = acme_certmeta_to_json(&m);
    FUZZ_CHECK(js != NULL, "acme_certmeta_to_json failed");
    FUZZ_CHECK(acme_certmeta_from_json(js, strlen(js), &m2, &err) == 0, "meta.json we wrote is refused: %s\n%s",
               err.msg, js);
    FUZZ_CHECK(m2.nids == m.nids, "identifiers lost");
    for (i = 0; i < m.nids; i++) {
        FUZZ_CHECK(m2.ids[i].type == m.ids[i].type && strcmp(m2.ids[i].value, m.ids[i].value) == 0,
                   "identifier %zu changed", i);
    }
    FUZZ_CHECK(m2.keyspec.alg == m.keyspec.alg && m2.keyspec.bits == m.keyspec.bits, "keyspec changed");
    FUZZ_CHECK(m2.not_before == m.not_before && m2.not_after == m.not_after && m2.issued_at == m.issued_at
               && m2.ari_start == m.ari_start && m2.ari_end == m.ari_end
               && m2.ari_next_check == m.ari_next_check && m2.renew_at == m.renew_at
               && m2.next_try == m.next_try && m2.last_error_at == m.last_error_at, "a time changed");
    FUZZ_CHECK(m2.failures == m.failures, "failures changed");
    acme_certmeta_free(&m2);
    free(js);
    acme_certmeta_free(&m);
    return 0;
}

/* ---- challenge announcements read from Redis (acme_storage) ---- */

static int
fuzz_announce(const uint8_t *data, size_t size)
{
    acme_challenge_msg_t  m;
    acme_err_t            err;
    char                 *s, *sni;

    s = fuzz_cstr(data, size);
    if (s == NULL) {
        return 0;
    }
    memset(&err, 0, sizeof(err));
    if (acme_store_challenge_msg_parse(s, &m, &err) != 0) {
        fuzz_err_ok(&err);
        FUZZ_CHECK(m.buf == NULL && m.id.value == NULL, "fields set on failure");
        free(s);
        return 0;
    }
    FUZZ_CHECK(m.type != NULL && m.key != NULL, "no type or key");
    FUZZ_CHECK(strchr(m.key, '/') == NULL && strstr(m.key, "..") == NULL, "key \"%s\" is not a segment", m.key);
    if (m.add) {
        FUZZ_CHECK(m.id.value != NULL && m.key_authz != NULL && strchr(m.key_authz, ' ') == NULL, "bad fields");
        if (strcmp(m.type, "tls-alpn-01") == 0) {
            sni = acme_ident_sni(&m.id);
            FUZZ_CHECK(sni != NULL && strcmp(sni, m.key) == 0, "SNI key \"%s\" for \"%s\"", m.key, m.id.value);
            free(sni);
        }
    } else {
        FUZZ_CHECK(m.key_authz == NULL && m.id.value == NULL, "a withdrawal with a value");
    }
    acme_store_challenge_msg_free(&m);
    free(s);
    return 0;
}

/* ---- the list ---- */

#define FUZZ_TARGETS(X)  \
    X(problem)           \
    X(directory)         \
    X(ca)                \
    X(order)             \
    X(authz)             \
    X(challenge)         \
    X(renewal_info)      \
    X(time)              \
    X(pem_chain)         \
    X(http01)            \
    X(ident)             \
    X(certmeta)          \
    X(announce)

typedef struct {
    const char  *name;
    int        (*fn)(const uint8_t *data, size_t size);
} fuzz_target_t;

#define FUZZ_TABLE_ENTRY(n)  { #n, fuzz_##n },
static const fuzz_target_t  fuzz_targets[] = { FUZZ_TARGETS(FUZZ_TABLE_ENTRY) };
#undef FUZZ_TABLE_ENTRY

#define FUZZ_NTARGETS  (sizeof(fuzz_targets) / sizeof(fuzz_targets[0]))
