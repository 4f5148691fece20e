/* RFC 2136 dynamic update signed with TSIG (RFC 8945), through ldns: one TXT value added or deleted, at
 * the zone's primary (SOA MNAME) or the configured server. Blocking: the DNS thread only. */
#include "acme_dns_int.h"

#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>

static const char *
rcode_name(ldns_pkt_rcode rc)
{
    ldns_lookup_table *lt = ldns_lookup_by_id(ldns_rcodes, (int) rc);

    return lt != NULL ? lt->name : "an unknown rcode";
}

/*
 * The key signs: checked at configuration time, on a query that is never sent. libldns names hmac-sha384
 * "hmac-shac384." in its table (1.8.3 and since), so it cannot sign with it, and trying leaks what it had
 * made: refused without trying.
 */
int
acme_dns_rfc2136_check(const acme_dns_config_t *cfg, acme_err_t *err)
{
    ldns_pkt     *pkt = NULL;
    ldns_status   st;
    char          alg[32];

    if (strcmp(cfg->tsig.algorithm, "hmac-sha384") == 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "TSIG key \"%s\": libldns %s cannot sign with hmac-sha384 (it "
                     "misnames the algorithm): use hmac-sha256 or hmac-sha512", cfg->tsig.name, ldns_version());
        return -1;
    }
    snprintf(alg, sizeof(alg), "%s.", cfg->tsig.algorithm);
    st = ldns_pkt_query_new_frm_str(&pkt, "example.", LDNS_RR_TYPE_SOA, LDNS_RR_CLASS_IN, 0);
    if (st == LDNS_STATUS_OK) {
        st = ldns_pkt_tsig_sign(pkt, cfg->tsig.name, cfg->tsig.secret, 300, alg, NULL);
    }
    ldns_pkt_free(pkt);
    if (st != LDNS_STATUS_OK) {
        acme_err_set(err, ACME_ERR_CONFIG, "TSIG key \"%s\": libldns %s cannot sign with %s: %s", cfg->tsig.name,
                     ldns_version(), cfg->tsig.algorithm, ldns_get_errorstr_by_id(st));
        return -1;
    }
    return 0;
}

int
acme_dns_rfc2136_update(const acme_dns_config_t *cfg, ldns_resolver *lookup, const acme_dns_target_t *t,
    int add, const char *value, acme_err_t *err)
{
    ldns_resolver  *srv;
    ldns_rr_list   *up;
    ldns_rr        *rr = NULL;
    ldns_rdf       *zone;
    ldns_pkt       *pkt, *answer = NULL;
    ldns_status     st;
    char           *text, *where, alg[32];
    int             rc = -1;

    /* the server named by the configuration, else the zone's primary */
    where = cfg->server != NULL ? acme_strdup(cfg->server) : acme_sprintf("%s (primary of %s)", t->mname, t->zone);
    srv = acme_dns_resolver(cfg->server != NULL ? cfg->server : t->mname, 53, 0, lookup, err);
    if (srv == NULL || where == NULL) {
        if (srv != NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        }
        ldns_resolver_deep_free(srv);
        free(where);
        return -1;
    }
    /* the update is signed with the resolver's key, and ldns checks the answer's TSIG with it */
    snprintf(alg, sizeof(alg), "%s.", cfg->tsig.algorithm);
    ldns_resolver_set_tsig_keyname(srv, cfg->tsig.name);
    ldns_resolver_set_tsig_algorithm(srv, alg);
    ldns_resolver_set_tsig_keydata(srv, cfg->tsig.secret);
    ldns_resolver_set_usevc(srv, 1);

    text = acme_sprintf("%s %d IN TXT \"%s\"", t->fqdn, ACME_DNS_TTL, value);
    up = ldns_rr_list_new();
    if (text == NULL || up == NULL || ldns_rr_new_frm_str(&rr, text, 0, NULL, NULL) != LDNS_STATUS_OK) {
        acme_err_set(err, ACME_ERR_INTERNAL, "cannot build the TXT record for %s", t->fqdn);
        goto done;
    }
    if (!add) {
        /* RFC 2136 2.5.4: class NONE, TTL 0 deletes this one value */
        ldns_rr_set_class(rr, LDNS_RR_CLASS_NONE);
        ldns_rr_set_ttl(rr, 0);
    }
    ldns_rr_list_push_rr(up, rr);
    zone = ldns_dname_new_frm_str(t->zone);
    pkt = zone != NULL ? ldns_update_pkt_new(zone, LDNS_RR_CLASS_IN, NULL, up, NULL) : NULL;
    if (pkt == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "cannot build the update for %s", t->fqdn);
        goto done;
    }
    ldns_pkt_set_random_id(pkt);
    ldns_pkt_set_rd(pkt, 0);
    st = ldns_update_pkt_tsig_add(pkt, srv);
    if (st != LDNS_STATUS_OK) {
        ldns_pkt_free(pkt);
        acme_err_set(err, ACME_ERR_CONFIG, "DNS update for %s: cannot sign with TSIG key \"%s\" (%s): %s",
                     t->fqdn, cfg->tsig.name, cfg->tsig.algorithm, ldns_get_errorstr_by_id(st));
        goto done;
    }
    /* ldns_send keeps an answer whose TSIG fails (a refusal from a server that does not know the key) */
    st = ldns_send(&answer, srv, pkt);
    ldns_pkt_free(pkt);
    if ((st == LDNS_STATUS_CRYPTO_TSIG_BOGUS || st == LDNS_STATUS_CRYPTO_TSIG_ERR) && answer != NULL) {
        /* a refusal comes unsigned when the server does not know the key or the signature is wrong */
        ldns_pkt_rcode rcode = ldns_pkt_get_rcode(answer);
        acme_err_set(err, ACME_ERR_CONFIG, "DNS update (%s %s) in zone %s at %s with TSIG key \"%s\": %s "
                     "without a valid TSIG signature (the server does not accept this key for the zone: unknown "
                     "to it, another secret or algorithm, or not allowed to update)", add ? "add" : "delete", t->fqdn, t->zone, where, cfg->tsig.name,
                     rcode == LDNS_RCODE_NOERROR ? "an answer" : rcode_name(rcode));
        goto done;
    }
    if (st != LDNS_STATUS_OK || answer == NULL) {
        acme_err_set(err, ACME_ERR_NETWORK, "DNS update (%s %s) at %s: %s", add ? "add" : "delete", t->fqdn,
                     where, ldns_get_errorstr_by_id(st));
        goto done;
    }
    if (ldns_pkt_get_rcode(answer) != LDNS_RCODE_NOERROR) {
        ldns_pkt_rcode rcode = ldns_pkt_get_rcode(answer);
        acme_err_set(err, rcode == LDNS_RCODE_SERVFAIL ? ACME_ERR_NETWORK : ACME_ERR_CONFIG,
                     "DNS update (%s %s) in zone %s at %s with TSIG key \"%s\": %s%s", add ? "add" : "delete",
                     t->fqdn, t->zone, where, cfg->tsig.name, rcode_name(rcode),
                     rcode == LDNS_RCODE_NOTAUTH ? " (the server refused the TSIG key or is not authoritative)"
                     : rcode == LDNS_RCODE_REFUSED ? " (the server does not allow this key to update the zone)"
                     : "");
        goto done;
    }
    rc = 0;
done:
    ldns_pkt_free(answer);
    ldns_rr_list_deep_free(up);
    if (up == NULL) {
        ldns_rr_free(rr);
    }
    free(text);
    free(where);
    /* ldns keeps a copy of the secret */
    if (ldns_resolver_tsig_keydata(srv) != NULL) {
        OPENSSL_cleanse((char *) ldns_resolver_tsig_keydata(srv), strlen(ldns_resolver_tsig_keydata(srv)));
    }
    ldns_resolver_deep_free(srv);
    return rc;
}
