/*
 * dns-persist-01 (draft-ietf-acme-dns-persist): nothing is published at validation time; the admin keeps
 * `_validation-persist.<domain> TXT "<issuer-domain-name>; accounturi=<url>[; policy=wildcard]
 * [; persistUntil=<unix time>]"`. Before answering, a read-only query checks that one record authorizes
 * this account (as the CA will judge it: RFC 8659 issue-value syntax), so a missing record costs no
 * failed validation at the CA. Blocking: the DNS thread only.
 */
#include "acme_dns_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

char *
acme_dns_persist_name(const char *domain)
{
    if (strncmp(domain, "*.", 2) == 0) {
        domain += 2;
    }
    return acme_sprintf("_validation-persist.%s", domain);
}

char *
acme_dns_persist_value(const char *issuer, const char *accounturi, int wildcard, long long until)
{
    char  u[40] = "";

    if (until > 0) {
        snprintf(u, sizeof(u), "; persistUntil=%lld", until);
    }
    return acme_sprintf("%s; accounturi=%s%s%s", issuer, accounturi, wildcard ? "; policy=wildcard" : "", u);
}

/* RFC 8659 WSP: space and tab */
static void
trim(const char **s, size_t *n)
{
    while (*n > 0 && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t')) {
        (*n)--;
    }
}

int
acme_dns_persist_match(const char *txt, char *const *issuers, size_t nissuers, const char *accounturi,
    int wildcard, time_t now, long long *until, char *why, size_t whylen)
{
    const char  *p = txt, *semi, *eq, *tag, *val;
    size_t       n, tn, vn, i;
    int          ours = 0, seen_acct = 0, policy_wild = 0;
    long long    pu = 0;
    char         buf[300];

    *until = 0;
    why[0] = '\0';
    semi = strchr(p, ';');
    n = semi ? (size_t) (semi - p) : strlen(p);
    trim(&p, &n);
    for (i = 0; i < nissuers; i++) {
        if (strlen(issuers[i]) == n && strncasecmp(issuers[i], p, n) == 0) {
            ours = 1;
        }
    }
    if (!ours) {
        return 0;       /* another CA's record: not an error */
    }
    while (semi != NULL) {
        p = semi + 1;
        semi = strchr(p, ';');
        n = semi ? (size_t) (semi - p) : strlen(p);
        trim(&p, &n);
        eq = memchr(p, '=', n);
        if (n == 0 || eq == NULL) {
            snprintf(why, whylen, "a malformed parameter (not tag=value)");
            return 0;
        }
        tag = p;
        tn = (size_t) (eq - p);
        val = eq + 1;
        vn = n - tn - 1;
        trim(&tag, &tn);
        trim(&val, &vn);
        snprintf(buf, sizeof(buf), "%.*s", (int) (vn < sizeof(buf) - 1 ? vn : sizeof(buf) - 1), val);
        if (tn == 10 && strncasecmp(tag, "accounturi", 10) == 0) {
            seen_acct = 1;
            if (strlen(accounturi) != vn || strncmp(accounturi, val, vn) != 0) {
                snprintf(why, whylen, "accounturi=%.200s is another account's", buf);
                return 0;
            }
        } else if (tn == 6 && strncasecmp(tag, "policy", 6) == 0) {
            policy_wild = strcasecmp(buf, "wildcard") == 0;
        } else if (tn == 12 && strncasecmp(tag, "persistuntil", 12) == 0) {
            char *end;
            pu = strtoll(buf, &end, 10);
            if (buf[0] == '\0' || *end != '\0') {
                snprintf(why, whylen, "a malformed persistUntil \"%.40s\"", buf);
                return 0;
            }
        }
    }
    if (!seen_acct) {
        snprintf(why, whylen, "no accounturi");
        return 0;
    }
    if (wildcard && !policy_wild) {
        snprintf(why, whylen, "no policy=wildcard, which a wildcard needs");
        return 0;
    }
    if (pu != 0 && (long long) now > pu) {
        char       tb[32] = "";
        time_t     t = (time_t) pu;
        struct tm  tm;

        if (gmtime_r(&t, &tm) != NULL) {
            strftime(tb, sizeof(tb), " (%Y-%m-%dT%H:%M:%SZ)", &tm);
        }
        snprintf(why, whylen, "its persistUntil=%lld%s has passed: the CA no longer accepts it", pu, tb);
        return 0;
    }
    *until = pu;
    return 1;
}

int
acme_dns_persist_check(const acme_dns_config_t *cfg, const acme_dns_record_t *rec, long long *until_out,
    char **txt_out, acme_err_t *err)
{
    ldns_resolver  *res;
    ldns_rdf       *dname;
    ldns_pkt       *pkt = NULL;
    ldns_rr_list   *rrs = NULL;
    ldns_status     st;
    char          **issuers = NULL, *list = NULL, *tok, *save = NULL, txt[1024], why[300], reasons[600];
    size_t          nissuers = 0, i, k, off, roff = 0;
    const char     *ident = rec->ident != NULL ? rec->ident : rec->name;
    int             wildcard = strncmp(ident, "*.", 2) == 0, rc = -1, found = 0;
    long long       until = 0;
    char           *want = NULL;

    reasons[0] = '\0';
    list = acme_strdup(rec->issuers != NULL ? rec->issuers : "");
    issuers = calloc(64, sizeof(*issuers));
    if (list == NULL || issuers == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }
    for (tok = strtok_r(list, " ", &save); tok != NULL && nissuers < 64; tok = strtok_r(NULL, " ", &save)) {
        issuers[nissuers++] = tok;
    }
    want = acme_dns_persist_value(nissuers > 0 ? issuers[0] : "<issuer-domain-name>", rec->value, wildcard, 0);
    if (nissuers == 0) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "the CA's dns-persist-01 challenge names no issuer-domain-names");
        goto done;
    }
    res = acme_dns_resolver(cfg != NULL ? cfg->resolver : NULL, 53, 1, NULL, err);
    if (res == NULL) {
        goto done;
    }
    dname = ldns_dname_new_frm_str(rec->name);
    st = dname != NULL ? ldns_resolver_query_status(&pkt, res, dname, LDNS_RR_TYPE_TXT, LDNS_RR_CLASS_IN,
                                                    LDNS_RD) : LDNS_STATUS_ERR;
    ldns_rdf_deep_free(dname);
    ldns_resolver_deep_free(res);
    if (st != LDNS_STATUS_OK || pkt == NULL) {
        acme_err_set(err, ACME_ERR_NETWORK, "DNS query %s TXT: %s", rec->name, ldns_get_errorstr_by_id(st));
        goto done;
    }
    rrs = ldns_pkt_rr_list_by_type(pkt, LDNS_RR_TYPE_TXT, LDNS_SECTION_ANSWER);
    for (i = 0; rrs != NULL && !found && i < ldns_rr_list_rr_count(rrs); i++) {
        ldns_rr *rr = ldns_rr_list_rr(rrs, i);
        /* a record's character-strings, joined */
        for (k = 0, off = 0; k < ldns_rr_rd_count(rr); k++) {
            ldns_rdf *rd = ldns_rr_rdf(rr, k);
            size_t    len = ldns_rdf_size(rd) > 0 ? ldns_rdf_data(rd)[0] : 0;
            if (len + 1 > ldns_rdf_size(rd) || off + len >= sizeof(txt)) {
                break;
            }
            memcpy(txt + off, ldns_rdf_data(rd) + 1, len);
            off += len;
        }
        txt[off] = '\0';
        found = acme_dns_persist_match(txt, issuers, nissuers, rec->value, wildcard, time(NULL), &until, why,
                                       sizeof(why));
        if (!found && why[0] != '\0' && roff < sizeof(reasons) - 1) {
            roff += (size_t) snprintf(reasons + roff, sizeof(reasons) - roff, "%s%s", roff ? "; " : "", why);
        }
    }
    if (!found) {
        acme_err_set(err, ACME_ERR_CONFIG, "no TXT record at %s authorizes this account%s%s%s: create "
                     "`%s. IN TXT \"%s\"` (acmectl dns-persist-record prints it)", rec->name,
                     reasons[0] ? " (" : "", reasons, reasons[0] ? ")" : "", rec->name, want);
        goto done;
    }
    if (txt_out != NULL && (*txt_out = acme_strdup(txt)) == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }
    if (until_out != NULL) {
        *until_out = until;
    }
    rc = 0;
done:
    ldns_rr_list_deep_free(rrs);
    ldns_pkt_free(pkt);
    free(issuers);
    free(list);
    free(want);
    return rc;
}
