/*
 * RFC 2136 dynamic update signed with TSIG (RFC 8945): one TXT value added or deleted, at the zone's
 * primary (SOA MNAME) or the configured server, over TCP. ldns builds and sends the message; libknot signs
 * it and checks the server's signed answer (libldns cannot sign with hmac-sha384: it misnames it
 * "hmac-shac384." in its table). Blocking: the DNS thread only.
 */
#include "acme_dns_int.h"

#include <stdlib.h>
#include <string.h>
#include <libknot/consts.h>
#include <libknot/error.h>
#include <libknot/packet/pkt.h>
#include <libknot/packet/wire.h>
#include <libknot/tsig-op.h>
#include <libknot/tsig.h>

/* room for the longest MAC of the algorithms taken (hmac-sha512): knot_tsig_sign writes it without a
 * size check */
#define TSIG_MAC_MAX  64

static const char *
rcode_name(ldns_pkt_rcode rc)
{
    ldns_lookup_table *lt = ldns_lookup_by_id(ldns_rcodes, (int) rc);

    return lt != NULL ? lt->name : "an unknown rcode";
}

/* libknot's key from ours; knot_tsig_key_deinit wipes its copy of the secret. */
static int
tsig_key_init(const acme_tsig_key_t *k, knot_tsig_key_t *key, acme_err_t *err)
{
    int  ret;

    memset(key, 0, sizeof(*key));
    ret = knot_tsig_key_init(key, k->algorithm, k->name, k->secret);
    if (ret != KNOT_EOK) {
        acme_err_set(err, ACME_ERR_CONFIG, "TSIG key \"%s\": libknot cannot use it with %s: %s", k->name,
                     k->algorithm, knot_strerror(ret));
        return -1;
    }
    return 0;
}

/* Signs the message in wire form: *out (malloc'd) the signed message, mac the request MAC (the answer's
 * signature covers it). */
static int
tsig_sign(const uint8_t *msg, size_t len, const knot_tsig_key_t *key, uint8_t **out, size_t *outlen,
    uint8_t *mac, size_t *maclen)
{
    size_t    max = len + knot_tsig_wire_size(key);
    uint8_t  *buf;
    int       ret;

    if (max > 65535 || (buf = malloc(max)) == NULL) {
        return KNOT_ESPACE;
    }
    memcpy(buf, msg, len);
    *maclen = TSIG_MAC_MAX;
    ret = knot_tsig_sign(buf, &len, max, NULL, 0, mac, maclen, key, 0, 0);
    if (ret != KNOT_EOK) {
        free(buf);
        return ret;
    }
    *out = buf;
    *outlen = len;
    return KNOT_EOK;
}

/* The key signs: checked at configuration time, on a message that is never sent. */
int
acme_dns_rfc2136_check(const acme_dns_config_t *cfg, acme_err_t *err)
{
    knot_tsig_key_t  key;
    uint8_t          hdr[KNOT_WIRE_HEADER_SIZE], *out = NULL, mac[TSIG_MAC_MAX];
    size_t           outlen, maclen;
    int              ret;

    if (tsig_key_init(&cfg->tsig, &key, err) != 0) {
        return -1;
    }
    memset(hdr, 0, sizeof(hdr));
    knot_wire_set_opcode(hdr, KNOT_OPCODE_UPDATE);
    ret = tsig_sign(hdr, sizeof(hdr), &key, &out, &outlen, mac, &maclen);
    knot_tsig_key_deinit(&key);
    free(out);
    if (ret != KNOT_EOK) {
        acme_err_set(err, ACME_ERR_CONFIG, "TSIG key \"%s\": libknot cannot sign with %s: %s", cfg->tsig.name,
                     cfg->tsig.algorithm, knot_strerror(ret));
        return -1;
    }
    return 0;
}

/*
 * The answer to the update whose id and request MAC are given: NULL when its TSIG signature is valid
 * (*rcode set), else why not. An answer whose signature fails is never taken: a refusal comes unsigned
 * when the server does not accept the key, and anything else unsigned or badly signed may be forged.
 */
static const char *
tsig_check_answer(uint8_t *wire, size_t len, uint16_t id, const knot_tsig_key_t *key, const uint8_t *mac,
    size_t maclen, int *rcode, char *buf, size_t size)
{
    knot_pkt_t           *pkt;
    uint16_t              tsig_err;
    const char           *why = NULL;
    int                   ret;

    *rcode = -1;
    if (len < KNOT_WIRE_HEADER_SIZE || len > 65535 || knot_wire_get_id(wire) != id || !knot_wire_get_qr(wire)) {
        return "not an answer to the update";
    }
    *rcode = knot_wire_get_rcode(wire);
    /* knot_pkt_parse strips the TSIG record from the wire (the signed part stays) */
    pkt = knot_pkt_new(wire, (uint16_t) len, NULL);
    if (pkt == NULL) {
        return "out of memory";
    }
    ret = knot_pkt_parse(pkt, 0);
    if (ret != KNOT_EOK) {
        snprintf(buf, size, "a malformed message: %s", knot_strerror(ret));
        why = buf;
    } else if (pkt->tsig_rr == NULL) {
        why = "unsigned: the server does not accept this key for the zone: unknown to it, another secret or "
              "algorithm, or not allowed to update";
    } else if ((tsig_err = knot_tsig_rdata_error(pkt->tsig_rr)) != 0) {
        /* the server's verdict on the update's signature (its answer is unsigned then, but BADTIME's) */
        if (tsig_err == KNOT_RCODE_BADKEY) {
            why = "TSIG error BADKEY: the server does not accept this key here: unknown to it, known with "
                  "another algorithm, or not allowed to update the zone";
        } else if (tsig_err == KNOT_RCODE_BADSIG) {
            why = "TSIG error BADSIG: the server has another secret for this key";
        } else if (tsig_err == KNOT_RCODE_BADTIME) {
            why = "TSIG error BADTIME: the clocks of this host and the server differ by more than the fudge "
                  "(300 s)";
        } else {
            snprintf(buf, size, "TSIG error %u from the server", (unsigned) tsig_err);
            why = buf;
        }
    } else {
        ret = knot_tsig_client_check(pkt->tsig_rr, pkt->wire, pkt->size, mac, maclen, key, 0);
        if (ret == KNOT_TSIG_EBADTIME) {
            why = "its signing time is further from this host's clock than its fudge allows";
        } else if (ret == KNOT_TSIG_EBADKEY) {
            why = "signed with another key or algorithm";
        } else if (ret != KNOT_EOK) {
            why = "the signature does not verify: the answer was altered on the way, or comes from a server "
                  "with another secret";
        }
    }
    knot_pkt_free(pkt);
    return why;
}

int
acme_dns_rfc2136_update(const acme_dns_config_t *cfg, ldns_resolver *lookup, const acme_dns_target_t *t,
    int add, const char *value, acme_err_t *err)
{
    ldns_resolver            *srv;
    ldns_rr_list             *up;
    ldns_rr                  *rr = NULL;
    ldns_rdf                 *zone;
    ldns_pkt                 *pkt;
    ldns_buffer              *qb = NULL;
    ldns_status               st = LDNS_STATUS_NETWORK_ERR;
    knot_tsig_key_t           key;
    struct sockaddr_storage  *ss;
    size_t                    i, sslen, len, signedlen, anslen = 0, maclen;
    uint8_t                  *wire = NULL, *signedw = NULL, *ans = NULL, mac[TSIG_MAC_MAX];
    uint16_t                  id;
    char                     *text, *where, why_buf[200];
    const char               *why, *op = add ? "add" : "delete";
    int                       rc = -1, ret, rcode;

    if (tsig_key_init(&cfg->tsig, &key, err) != 0) {
        return -1;
    }
    /* the server named by the configuration, else the zone's primary */
    where = cfg->server != NULL ? acme_strdup(cfg->server) : acme_sprintf("%s (primary of %s)", t->mname, t->zone);
    srv = acme_dns_resolver(cfg->server != NULL ? cfg->server : t->mname, 53, 0, lookup, err);
    if (srv == NULL || where == NULL) {
        if (srv != NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        }
        ldns_resolver_deep_free(srv);
        free(where);
        knot_tsig_key_deinit(&key);
        return -1;
    }

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
    id = ldns_pkt_id(pkt);
    st = ldns_pkt2wire(&wire, pkt, &len);
    ldns_pkt_free(pkt);
    if (st != LDNS_STATUS_OK) {
        acme_err_set(err, ACME_ERR_INTERNAL, "cannot build the update for %s: %s", t->fqdn,
                     ldns_get_errorstr_by_id(st));
        goto done;
    }
    ret = tsig_sign(wire, len, &key, &signedw, &signedlen, mac, &maclen);
    if (ret != KNOT_EOK) {
        acme_err_set(err, ACME_ERR_CONFIG, "DNS update for %s: cannot sign with TSIG key \"%s\" (%s): %s",
                     t->fqdn, cfg->tsig.name, cfg->tsig.algorithm, knot_strerror(ret));
        goto done;
    }
    qb = ldns_buffer_new(signedlen);
    if (qb == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }
    /* ldns sends what was written: up to the buffer's position */
    ldns_buffer_write(qb, signedw, signedlen);

    /* the server's addresses in turn, until one answers */
    st = LDNS_STATUS_NETWORK_ERR;
    for (i = 0; i < ldns_resolver_nameserver_count(srv) && ans == NULL; i++) {
        ss = ldns_rdf2native_sockaddr_storage(ldns_resolver_nameservers(srv)[i], ldns_resolver_port(srv),
                                              &sslen);
        if (ss == NULL) {
            continue;
        }
        st = ldns_tcp_send(&ans, qb, ss, (socklen_t) sslen, ldns_resolver_timeout(srv), &anslen);
        free(ss);
        if (st != LDNS_STATUS_OK) {
            free(ans);
            ans = NULL;
        }
    }
    if (ans == NULL) {
        acme_err_set(err, ACME_ERR_NETWORK, "DNS update (%s %s) at %s: %s", op, t->fqdn, where,
                     ldns_get_errorstr_by_id(st));
        goto done;
    }
    why = tsig_check_answer(ans, anslen, id, &key, mac, maclen, &rcode, why_buf, sizeof(why_buf));
    if (why != NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "DNS update (%s %s) in zone %s at %s with TSIG key \"%s\": %s "
                     "without a valid TSIG signature (%s)", op, t->fqdn, t->zone, where, cfg->tsig.name,
                     rcode == LDNS_RCODE_NOERROR ? "an answer" : rcode < 0 ? "a message"
                     : rcode_name((ldns_pkt_rcode) rcode), why);
        goto done;
    }
    if (rcode != LDNS_RCODE_NOERROR) {
        acme_err_set(err, rcode == LDNS_RCODE_SERVFAIL ? ACME_ERR_NETWORK : ACME_ERR_CONFIG,
                     "DNS update (%s %s) in zone %s at %s with TSIG key \"%s\": %s%s", op, t->fqdn, t->zone,
                     where, cfg->tsig.name, rcode_name((ldns_pkt_rcode) rcode),
                     rcode == LDNS_RCODE_NOTAUTH ? " (the server refused the TSIG key or is not authoritative)"
                     : rcode == LDNS_RCODE_REFUSED ? " (the server does not allow this key to update the zone)"
                     : "");
        goto done;
    }
    rc = 0;
done:
    free(ans);
    ldns_buffer_free(qb);
    free(signedw);
    free(wire);
    ldns_rr_list_deep_free(up);
    if (up == NULL) {
        ldns_rr_free(rr);
    }
    free(text);
    free(where);
    ldns_resolver_deep_free(srv);
    knot_tsig_key_deinit(&key);
    return rc;
}
