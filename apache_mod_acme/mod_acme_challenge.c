/*
 * Challenges.
 *
 * HTTP-01: answered in post_read_request, before any other module sees the request, for
 * /.well-known/acme-challenge/<token> on every vhost and scheme, from the store (the driver's core writes
 * the key authorization there before it tells the CA, so whichever child gets the validator's request can
 * answer). The raw request path is checked: the token must be base64url characters (acme_http01_parse_path) and nothing else
 * (no '%', '/', '.', NUL...), the Host must be a managed name and the identifier the token was published for
 * (the store's record names it); anything else is a 404 and never a file read. When Redis (ACMEStorage) does
 * not answer the look-up, whether the token exists is not known: 503 with Retry-After, not a 404.
 *
 * TLS-ALPN-01: mod_ssl's ALPN callback asks ap_select_protocol(), which only considers protocols listed by
 * the core's "Protocols" directive of the SNI-selected server (an empty list means "http/1.1 only" and the
 * protocol_propose hooks are not even run). So at post_config we add acme-tls/1 to every server's protocol
 * list (an empty list becomes "http/1.1 acme-tls/1", which selects exactly what the empty list did for
 * every other client). Our protocol_propose hook then proposes acme-tls/1 only when the ClientHello offers
 * it for an SNI name that has a pending tls-alpn-01 challenge in the store, so ordinary clients (HTTP/2
 * included) never negotiate it. protocol_switch accepts the switch for such a connection, and mod_ssl then
 * asks the ssl_answer_challenge hook for the certificate, which we build with acme_tlsalpn_cert().
 */
#include "mod_acme.h"

#include <http_core.h>
#include <http_protocol.h>
#include <http_request.h>
#include <http_ssl.h>
#include <pthread.h>

#include "acme_err.h"
#include "acme_http01.h"
#include "acme_store.h"
#include "acme_tlsalpn.h"
#include "acme_x509.h"


/* ---- names ---- */

int
mod_acme_is_managed_name(const char *host)
{
    acme_ident_t  id;
    int           i, found = 0;
    size_t        j;

    if (host == NULL || !mod_acme_g.active || acme_ident_parse(host, &id, NULL) != 0) {
        return 0;
    }
    for (i = 0; i < mod_acme_g.certs->nelts && !found; i++) {
        mod_acme_cert_t *c = APR_ARRAY_IDX(mod_acme_g.certs, i, mod_acme_cert_t *);
        for (j = 0; j < c->nids && !found; j++) {
            found = c->ids[j].type == id.type && strcmp(c->ids[j].value, id.value) == 0;
        }
    }
    acme_ident_free(&id);
    return found || mod_acme_od_known(host);
}

/* ---- HTTP-01 ---- */

/*
 * With a shared store every look-up is a round trip to Redis. A token the store did not have is remembered
 * per process for a second, so a client repeating bogus tokens costs one look-up a second each. A real token
 * is published before the CA is told to validate it, so it is never remembered as missing (guessing one of
 * 128 random bits in advance is not a concern). A look-up failure is logged at most every MISS_LOG_SECONDS.
 */
#define MISS_SLOTS        256
#define MISS_TTL          apr_time_from_sec(1)
#define MISS_LOG_SECONDS  60

static struct {
    apr_uint64_t  hash;
    apr_time_t    until;
} misses[MISS_SLOTS];
static apr_time_t       miss_logged;
static pthread_mutex_t  miss_mx = PTHREAD_MUTEX_INITIALIZER;

static apr_uint64_t
token_hash(const char *t, size_t n)
{
    apr_uint64_t h = 1469598103934665603ULL;     /* FNV-1a */
    size_t       i;

    for (i = 0; i < n; i++) {
        h = (h ^ (unsigned char) t[i]) * 1099511628211ULL;
    }
    return h | 1;       /* 0 marks an empty slot */
}

static int
miss_known(apr_uint64_t h)
{
    int hit;

    pthread_mutex_lock(&miss_mx);
    hit = misses[h % MISS_SLOTS].hash == h && misses[h % MISS_SLOTS].until > apr_time_now();
    pthread_mutex_unlock(&miss_mx);
    return hit;
}

static void
miss_remember(apr_uint64_t h)
{
    pthread_mutex_lock(&miss_mx);
    misses[h % MISS_SLOTS].hash = h;
    misses[h % MISS_SLOTS].until = apr_time_now() + MISS_TTL;
    pthread_mutex_unlock(&miss_mx);
}

/* 1 when this failure should be logged now */
static int
miss_log_due(void)
{
    apr_time_t  now = apr_time_now();
    int         due;

    pthread_mutex_lock(&miss_mx);
    due = miss_logged == 0 || now - miss_logged >= apr_time_from_sec(MISS_LOG_SECONDS);
    if (due) {
        miss_logged = now;
    }
    pthread_mutex_unlock(&miss_mx);
    return due;
}

/* The path as the client sent it (origin form), query included; absolute-form targets lose their authority. */
static const char *
raw_target(request_rec *r)
{
    const char *u = r->unparsed_uri, *p;

    if (u == NULL) {
        return NULL;
    }
    if (*u != '/' && (p = strstr(u, "://")) != NULL) {
        p = strchr(p + 3, '/');
        return p ? p : "/";
    }
    return u;
}

static int
http01(request_rec *r)
{
    const char          *target, *tok;
    char                *token, *ka = NULL;
    size_t               toklen;
    acme_err_t           err;
    acme_http01_path_t   kind;
    acme_ident_t         id, host;
    int                  rc, same, quiet;
    apr_size_t           len;
    apr_uint64_t         h;

    if (!mod_acme_g.active || r->main != NULL || r->prev != NULL) {
        return DECLINED;
    }
    target = raw_target(r);
    if (target == NULL) {
        return DECLINED;
    }
    kind = acme_http01_parse_path(target, strlen(target), &tok, &toklen);
    if (kind == ACME_HTTP01_NOT_CHALLENGE) {
        return DECLINED;
    }
    if (kind != ACME_HTTP01_TOKEN) {
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, ACMELOGNO(0050)
                      "http-01: malformed challenge path refused");
        return HTTP_NOT_FOUND;
    }
    if (!mod_acme_is_managed_name(r->hostname)) {
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, ACMELOGNO(0051)
                      "http-01: %s is not a managed name", r->hostname ? r->hostname : "(no host)");
        return HTTP_NOT_FOUND;
    }
    if (r->method_number != M_GET) {
        r->allowed = (AP_METHOD_BIT << M_GET);
        return HTTP_METHOD_NOT_ALLOWED;
    }
    token = apr_pstrmemdup(r->pool, tok, toklen);
    h = token_hash(tok, toklen);
    if (mod_acme_g.storage != NULL && miss_known(h)) {
        return HTTP_NOT_FOUND;
    }
    rc = acme_store_challenge_get(mod_acme_g.store, "http-01", token, &id, &ka, &err);
    if (rc != 0) {
        free(ka);
        if (rc > 0) {
            if (mod_acme_g.storage != NULL) {
                miss_remember(h);
            }
            return HTTP_NOT_FOUND;
        }
        /* a token the store refuses (too short...) is the client's doing: not worth a warning */
        quiet = err.kind == ACME_ERR_INPUT || (mod_acme_g.storage != NULL && !miss_log_due());
        ap_log_rerror(APLOG_MARK, quiet ? APLOG_DEBUG : APLOG_WARNING, 0, r,
                      ACMELOGNO(0052) "http-01: store look-up failed: %s", err.msg);
        if (mod_acme_g.storage != NULL && err.kind == ACME_ERR_STORE
            && acme_store_ping(mod_acme_g.store, &err) != 0)
        {
            /* Redis does not answer: whether the token exists is not known, so not a 404 */
            apr_table_setn(r->err_headers_out, "Retry-After", "5");
            return HTTP_SERVICE_UNAVAILABLE;
        }
        /* Redis answers: the record itself was refused (it does not authenticate...) */
        return HTTP_NOT_FOUND;
    }
    /* the token answers for the identifier it was published for, never for another managed name */
    same = acme_ident_parse(r->hostname, &host, NULL) == 0 && host.type == id.type
           && strcmp(host.value, id.value) == 0;
    acme_ident_free(&host);
    acme_ident_free(&id);
    if (!same) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, ACMELOGNO(0054)
                      "http-01: a token requested for %s, which it is not for", r->hostname);
        free(ka);
        return HTTP_NOT_FOUND;
    }
    len = strlen(ka);
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, ACMELOGNO(0053)
                  "http-01: answering the challenge for %s", r->hostname);
    ap_set_content_type(r, "application/octet-stream");
    ap_set_content_length(r, (apr_off_t) len);
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    if (!r->header_only) {
        ap_rwrite(ka, (int) len, r);
    }
    free(ka);
    return DONE;
}

/* ---- TLS-ALPN-01 ---- */

static int
offers_acme_tls(const apr_array_header_t *offers)
{
    int i;

    for (i = 0; offers && i < offers->nelts; i++) {
        if (strcmp(APR_ARRAY_IDX(offers, i, const char *), ACME_TLSALPN_PROTO) == 0) {
            return 1;
        }
    }
    return 0;
}

/* The store key for the SNI (as acme_ident_sni writes it); NULL when not a usable name. */
static char *
sni_key(apr_pool_t *p, const char *sni)
{
    char  k[254];

    if (sni == NULL || acme_sni_normalize(sni, strlen(sni), k, sizeof(k)) == 0
        || acme_store_name_check(k, "sni", NULL) != 0) {
        return NULL;
    }
    return apr_pstrdup(p, k);
}


static int
pending_tls_alpn(apr_pool_t *p, const char *sni, char **ka)
{
    char          *k = sni_key(p, sni);
    char          *v = NULL;
    acme_ident_t   id;
    int            rc, managed;

    if (k == NULL) {
        return 0;
    }
    /* only names we manage reach the store (with Redis, a look-up is a round trip) */
    if (acme_ident_from_sni(k, &id, NULL) != 0) {
        return 0;
    }
    managed = mod_acme_is_managed_name(id.value);
    acme_ident_free(&id);
    if (!managed) {
        return 0;
    }
    /* the record's identifier is checked against its key, the SNI, by the store */
    rc = acme_store_challenge_get(mod_acme_g.store, "tls-alpn-01", k, NULL, &v, NULL);
    if (rc != 0) {
        free(v);
        return 0;
    }
    if (ka != NULL) {
        *ka = apr_pstrdup(p, v);
    }
    free(v);
    return 1;
}

static const char *
conn_sni(conn_rec *c, server_rec *s)
{
    return ap_ssl_var_lookup(c->pool, s, c, NULL, "SSL_TLS_SNI");
}

static int
protocol_propose(conn_rec *c, request_rec *r, server_rec *s, const apr_array_header_t *offers,
                 apr_array_header_t *proposals)
{
    const char *sni;

    if (r != NULL || !mod_acme_g.active || !offers_acme_tls(offers) || !ap_ssl_conn_is_ssl(c)) {
        return DECLINED;
    }
    sni = conn_sni(c, s);
    if (!pending_tls_alpn(c->pool, sni, NULL)) {
        ap_log_cerror(APLOG_MARK, APLOG_DEBUG, 0, c, ACMELOGNO(0060)
                      "tls-alpn-01: acme-tls/1 offered for %s with no pending challenge: not proposed",
                      sni ? sni : "(no SNI)");
        return DECLINED;
    }
    APR_ARRAY_PUSH(proposals, const char *) = ACME_TLSALPN_PROTO;
    return OK;
}

static int
protocol_switch(conn_rec *c, request_rec *r, server_rec *s, const char *protocol)
{
    mod_acme_conn_t *cc;

    (void) s;
    if (r != NULL || !mod_acme_g.active || strcmp(protocol, ACME_TLSALPN_PROTO) != 0) {
        return DECLINED;
    }
    cc = mod_acme_conn(c, 1);
    cc->tls_alpn = 1;
    return OK;
}

static const char *
protocol_get(const conn_rec *c)
{
    mod_acme_conn_t *cc = mod_acme_conn((conn_rec *) c, 0);

    return cc != NULL && cc->tls_alpn ? ACME_TLSALPN_PROTO : NULL;
}

/* PEM text in the pool (the key's malloc'd copy is wiped) */
static const char *
pool_pem(apr_pool_t *p, char *pem, size_t len, int secret)
{
    const char *out;

    if (pem == NULL) {
        return NULL;
    }
    out = apr_pstrmemdup(p, pem, len);
    if (secret) {
        acme_free_secret(pem, len);
    } else {
        free(pem);
    }
    return out;
}

static int
answer_challenge(conn_rec *c, const char *server_name, const char **pcert_pem, const char **pkey_pem)
{
    mod_acme_conn_t  *cc = mod_acme_conn(c, 0);
    char             *ka = NULL, *sni;
    acme_ident_t      id;
    acme_err_t        err;
    X509             *x = NULL;
    EVP_PKEY         *k = NULL;
    char             *round, *pem;
    size_t            len = 0;

    if (cc == NULL || !cc->tls_alpn || server_name == NULL) {
        return DECLINED;
    }
    if (!pending_tls_alpn(c->pool, server_name, &ka)) {
        return DECLINED;
    }
    sni = sni_key(c->pool, server_name);
    if (sni == NULL || acme_ident_from_sni(sni, &id, NULL) != 0) {
        return DECLINED;
    }
    /* the name must be the canonical SNI of the identifier it stands for */
    round = acme_ident_sni(&id);
    if (round == NULL || strcmp(round, sni) != 0) {
        free(round);
        acme_ident_free(&id);
        return DECLINED;
    }
    free(round);
    if (acme_tlsalpn_cert(&id, ka, &x, &k, &err) != 0) {
        ap_log_cerror(APLOG_MARK, APLOG_ERR, 0, c, ACMELOGNO(0061)
                      "tls-alpn-01: cannot make the challenge certificate for %s: %s", sni, err.msg);
        acme_ident_free(&id);
        return DECLINED;
    }
    acme_ident_free(&id);
    pem = acme_x509_to_pem(x, &len, &err);
    *pcert_pem = pool_pem(c->pool, pem, len, 0);
    pem = acme_key_to_pem(k, &len, &err);
    *pkey_pem = pool_pem(c->pool, pem, len, 1);
    X509_free(x);
    EVP_PKEY_free(k);
    if (*pcert_pem == NULL || *pkey_pem == NULL) {
        return DECLINED;
    }
    ap_log_cerror(APLOG_MARK, APLOG_INFO, 0, c, ACMELOGNO(0062)
                  "tls-alpn-01: answering the challenge for %s", sni);
    return OK;
}

void
mod_acme_challenge_add_protocol(apr_pool_t *pconf, server_rec *base)
{
    server_rec *s;

    for (s = base; s != NULL; s = s->next) {
        core_server_config  *conf = ap_get_core_module_config(s->module_config);
        apr_array_header_t  *np;
        int                  i, has = 0;

        if (conf == NULL || conf->protocols == NULL) {
            continue;
        }
        for (i = 0; i < conf->protocols->nelts; i++) {
            if (strcmp(APR_ARRAY_IDX(conf->protocols, i, const char *), ACME_TLSALPN_PROTO) == 0) {
                has = 1;
            }
        }
        if (has) {
            continue;
        }
        /* a copy: merged configurations share the main server's array */
        np = apr_array_make(pconf, conf->protocols->nelts + 2, sizeof(const char *));
        if (conf->protocols->nelts == 0) {
            APR_ARRAY_PUSH(np, const char *) = AP_PROTOCOL_HTTP1;
        } else {
            apr_array_cat(np, conf->protocols);
        }
        APR_ARRAY_PUSH(np, const char *) = ACME_TLSALPN_PROTO;
        conf->protocols = np;
    }
}

void
mod_acme_challenge_register_hooks(apr_pool_t *p)
{
    (void) p;
    ap_hook_post_read_request(http01, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_protocol_propose(protocol_propose, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_protocol_switch(protocol_switch, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_protocol_get(protocol_get, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_ssl_answer_challenge(answer_challenge, NULL, NULL, APR_HOOK_MIDDLE);
}
