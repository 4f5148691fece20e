/* DNS lookups for validation (ldns): resolvers, CNAMEs, the zone, propagation to every authoritative
 * server; publish and unpublish through the configured method. Blocking: the DNS thread only. */
#include "acme_dns_int.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DNS_QUERY_TIMEOUT_S  2
#define DNS_CNAME_MAX        8
#define DNS_SERVERS_MAX      16
#define DNS_RECHECK_MS       1000

void
acme_dns_target_free(acme_dns_target_t *t)
{
    free(t->fqdn);
    free(t->zone);
    free(t->mname);
    memset(t, 0, sizeof(*t));
}

static char *
rdf_str(const ldns_rdf *rdf)
{
    char  *s = ldns_rdf2str(rdf), *d;

    if (s == NULL) {
        return NULL;
    }
    d = acme_strdup(s);
    free(s);
    return d;
}

static const char *
rcode_name(ldns_pkt_rcode rc)
{
    ldns_lookup_table *lt = ldns_lookup_by_id(ldns_rcodes, (int) rc);

    return lt != NULL ? lt->name : "an unknown rcode";
}

/* addresses of host: a literal, or A and AAAA through via */
static int
host_addrs(const char *host, ldns_resolver *via, ldns_rdf **out, size_t max, size_t *n, acme_err_t *err)
{
    ldns_rdf      *rdf, *name;
    ldns_pkt      *pkt;
    ldns_rr_list  *rrs;
    ldns_rr_type   types[2] = { LDNS_RR_TYPE_A, LDNS_RR_TYPE_AAAA };
    size_t         i, k;

    *n = 0;
    rdf = ldns_rdf_new_frm_str(LDNS_RDF_TYPE_A, host);
    if (rdf == NULL) {
        rdf = ldns_rdf_new_frm_str(LDNS_RDF_TYPE_AAAA, host);
    }
    if (rdf != NULL) {
        out[(*n)++] = rdf;
        return 0;
    }
    if (via == NULL || (name = ldns_dname_new_frm_str(host)) == NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "\"%s\" is not an IP address", host);
        return -1;
    }
    for (k = 0; k < 2; k++) {
        pkt = NULL;
        if (ldns_resolver_query_status(&pkt, via, name, types[k], LDNS_RR_CLASS_IN, LDNS_RD) != LDNS_STATUS_OK
            || pkt == NULL)
        {
            ldns_pkt_free(pkt);
            continue;
        }
        rrs = ldns_pkt_rr_list_by_type(pkt, types[k], LDNS_SECTION_ANSWER);
        for (i = 0; rrs != NULL && i < ldns_rr_list_rr_count(rrs) && *n < max; i++) {
            rdf = ldns_rr_rdf(ldns_rr_list_rr(rrs, i), 0);
            if (rdf != NULL && (out[*n] = ldns_rdf_clone(rdf)) != NULL) {
                (*n)++;
            }
        }
        ldns_rr_list_deep_free(rrs);
        ldns_pkt_free(pkt);
    }
    ldns_rdf_deep_free(name);
    if (*n == 0) {
        acme_err_set(err, ACME_ERR_NETWORK, "no address found for %s", host);
        return -1;
    }
    return 0;
}

static ldns_resolver *
resolver_for(ldns_rdf **addrs, size_t n, int port, int recursive)
{
    ldns_resolver   *r = ldns_resolver_new();
    struct timeval   tv = { DNS_QUERY_TIMEOUT_S, 0 };
    size_t           i;

    if (r == NULL) {
        return NULL;
    }
    for (i = 0; i < n; i++) {
        if (ldns_resolver_push_nameserver(r, addrs[i]) != LDNS_STATUS_OK) {
            ldns_resolver_deep_free(r);
            return NULL;
        }
    }
    ldns_resolver_set_port(r, (uint16_t) port);
    ldns_resolver_set_recursive(r, recursive);
    ldns_resolver_set_timeout(r, tv);
    ldns_resolver_set_retry(r, 2);
    ldns_resolver_set_fallback(r, 1);     /* TCP after a truncated answer */
    return r;
}

ldns_resolver *
acme_dns_resolver(const char *hostport, int default_port, int recursive, ldns_resolver *via, acme_err_t *err)
{
    ldns_resolver   *r = NULL;
    ldns_rdf        *addrs[DNS_SERVERS_MAX];
    struct timeval   tv = { DNS_QUERY_TIMEOUT_S, 0 };
    char             host[300], *colon, *end;
    long             port = default_port;
    size_t           n = 0, i;

    if (hostport == NULL) {
        if (ldns_resolver_new_frm_file(&r, NULL) != LDNS_STATUS_OK || r == NULL) {
            acme_err_set(err, ACME_ERR_CONFIG, "cannot read the system's resolver (/etc/resolv.conf)");
            return NULL;
        }
        ldns_resolver_set_timeout(r, tv);
        ldns_resolver_set_retry(r, 2);
        return r;
    }
    if (hostport[0] == '[') {
        end = strchr(hostport, ']');
        if (end == NULL || (size_t) (end - hostport - 1) >= sizeof(host)) {
            acme_err_set(err, ACME_ERR_CONFIG, "bad DNS server \"%s\"", hostport);
            return NULL;
        }
        memcpy(host, hostport + 1, end - hostport - 1);
        host[end - hostport - 1] = '\0';
        colon = end[1] == ':' ? end + 1 : NULL;
    } else {
        snprintf(host, sizeof(host), "%s", hostport);
        colon = strchr(host, ':');
        if (colon != NULL && strchr(colon + 1, ':') != NULL) {
            colon = NULL;       /* a bare IPv6 address */
        } else if (colon != NULL) {
            *colon = '\0';
            colon = (char *) hostport + (colon - host);
        }
    }
    if (colon != NULL) {
        port = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end != '\0' || port < 1 || port > 65535) {
            acme_err_set(err, ACME_ERR_CONFIG, "bad port in DNS server \"%s\"", hostport);
            return NULL;
        }
    }
    if (host_addrs(host, via, addrs, DNS_SERVERS_MAX, &n, err) != 0) {
        acme_err_prefix(err, "DNS server \"%s\"", hostport);
        return NULL;
    }
    r = resolver_for(addrs, n, (int) port, recursive);
    for (i = 0; i < n; i++) {
        ldns_rdf_deep_free(addrs[i]);
    }
    if (r == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    }
    return r;
}

/* answer (type) or NULL; the packet stays with the caller. */
static ldns_pkt *
query(ldns_resolver *res, const char *name, ldns_rr_type type, uint16_t flags, acme_err_t *err)
{
    ldns_rdf    *dname = ldns_dname_new_frm_str(name);
    ldns_pkt    *pkt = NULL;
    ldns_status  st;

    if (dname == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "\"%s\" is not a DNS name", name);
        return NULL;
    }
    st = ldns_resolver_query_status(&pkt, res, dname, type, LDNS_RR_CLASS_IN, flags);
    ldns_rdf_deep_free(dname);
    if (st != LDNS_STATUS_OK || pkt == NULL) {
        acme_err_set(err, ACME_ERR_NETWORK, "DNS query %s (type %d): %s", name, (int) type,
                     ldns_get_errorstr_by_id(st));
        ldns_pkt_free(pkt);
        return NULL;
    }
    return pkt;
}

/* The owner's CNAME target in pkt's answer, malloc'd, or NULL. */
static char *
cname_of(ldns_pkt *pkt, const char *name)
{
    ldns_rr_list  *rrs = ldns_pkt_rr_list_by_type(pkt, LDNS_RR_TYPE_CNAME, LDNS_SECTION_ANSWER);
    ldns_rdf      *owner = ldns_dname_new_frm_str(name);
    char          *target = NULL;
    size_t         i;

    for (i = 0; rrs != NULL && owner != NULL && i < ldns_rr_list_rr_count(rrs); i++) {
        ldns_rr *rr = ldns_rr_list_rr(rrs, i);
        if (ldns_dname_compare(ldns_rr_owner(rr), owner) == 0 && ldns_rr_rdf(rr, 0) != NULL) {
            target = rdf_str(ldns_rr_rdf(rr, 0));
            break;
        }
    }
    ldns_rr_list_deep_free(rrs);
    ldns_rdf_deep_free(owner);
    return target;
}

static char *
absolute(const char *name)
{
    size_t n = strlen(name);

    return n > 0 && name[n - 1] == '.' ? acme_strdup(name) : acme_sprintf("%s.", name);
}

int
acme_dns_find_target(ldns_resolver *res, const char *name, acme_dns_target_t *t, acme_err_t *err)
{
    ldns_pkt      *pkt;
    ldns_rr_list  *soa;
    char          *next;
    int            hops;

    memset(t, 0, sizeof(*t));
    t->fqdn = absolute(name);
    if (t->fqdn == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    /* the challenge's name may be delegated to another zone by a CNAME */
    for (hops = 0; ; hops++) {
        pkt = query(res, t->fqdn, LDNS_RR_TYPE_CNAME, LDNS_RD, err);
        if (pkt == NULL) {
            goto fail;
        }
        next = cname_of(pkt, t->fqdn);
        ldns_pkt_free(pkt);
        if (next == NULL) {
            break;
        }
        if (hops == DNS_CNAME_MAX) {
            free(next);
            acme_err_set(err, ACME_ERR_CONFIG, "%s: more than %d CNAMEs", name, DNS_CNAME_MAX);
            goto fail;
        }
        free(t->fqdn);
        t->fqdn = next;
    }
    pkt = query(res, t->fqdn, LDNS_RR_TYPE_SOA, LDNS_RD, err);
    if (pkt == NULL) {
        goto fail;
    }
    soa = ldns_pkt_rr_list_by_type(pkt, LDNS_RR_TYPE_SOA, LDNS_SECTION_ANSWER);
    if (soa == NULL || ldns_rr_list_rr_count(soa) == 0) {
        ldns_rr_list_deep_free(soa);
        soa = ldns_pkt_rr_list_by_type(pkt, LDNS_RR_TYPE_SOA, LDNS_SECTION_AUTHORITY);
    }
    if (soa == NULL || ldns_rr_list_rr_count(soa) == 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "no zone found for %s (SOA lookup: %s, no SOA record)", t->fqdn,
                     rcode_name(ldns_pkt_get_rcode(pkt)));
        ldns_rr_list_deep_free(soa);
        ldns_pkt_free(pkt);
        goto fail;
    }
    t->zone = rdf_str(ldns_rr_owner(ldns_rr_list_rr(soa, 0)));
    t->mname = ldns_rr_rdf(ldns_rr_list_rr(soa, 0), 0) != NULL
               ? rdf_str(ldns_rr_rdf(ldns_rr_list_rr(soa, 0), 0)) : NULL;
    ldns_rr_list_deep_free(soa);
    ldns_pkt_free(pkt);
    if (t->zone == NULL || t->mname == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto fail;
    }
    return 0;
fail:
    acme_dns_target_free(t);
    return -1;
}

/* 1 when one of the TXT records at name in pkt's answer is value. */
static int
has_txt(ldns_pkt *pkt, const char *value)
{
    ldns_rr_list  *rrs = ldns_pkt_rr_list_by_type(pkt, LDNS_RR_TYPE_TXT, LDNS_SECTION_ANSWER);
    size_t         i, k, len, vlen = strlen(value);
    int            found = 0;
    char           buf[512];

    for (i = 0; rrs != NULL && !found && i < ldns_rr_list_rr_count(rrs); i++) {
        ldns_rr *rr = ldns_rr_list_rr(rrs, i);
        size_t   off = 0;
        /* the character-strings of one TXT record, joined (RFC 8555 8.4 values fit one) */
        for (k = 0; k < ldns_rr_rd_count(rr); k++) {
            ldns_rdf *rd = ldns_rr_rdf(rr, k);
            len = ldns_rdf_size(rd) > 0 ? ldns_rdf_data(rd)[0] : 0;
            if (len + 1 > ldns_rdf_size(rd) || off + len >= sizeof(buf)) {
                off = sizeof(buf);
                break;
            }
            memcpy(buf + off, ldns_rdf_data(rd) + 1, len);
            off += len;
        }
        found = off == vlen && memcmp(buf, value, vlen) == 0;
    }
    ldns_rr_list_deep_free(rrs);
    return found;
}

static long long
mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#define ADDR_SILENT   -1    /* no answer (yet): an address this host cannot reach (IPv6) counts for nothing */
#define ADDR_WITHOUT   0    /* answered, without the value */
#define ADDR_WITH      1

/* Appends to a message, truncating it at the end of buf. */
static void
append(char *buf, size_t size, size_t *off, const char *fmt, ...)
{
    va_list  ap;
    int      n;

    if (*off + 1 >= size) {
        return;
    }
    va_start(ap, fmt);
    n = vsnprintf(buf + *off, size - *off, fmt, ap);
    va_end(ap);
    if (n > 0) {
        *off = *off + (size_t) n >= size ? size - 1 : *off + (size_t) n;
    }
}

/* An NS is up to date when one of its addresses answers the value and none answers without it. */
static int
ns_done(const int *st, size_t from, size_t to)
{
    size_t  i;
    int     with = 0;

    for (i = from; i < to; i++) {
        if (st[i] == ADDR_WITHOUT) {
            return 0;
        }
        with |= st[i] == ADDR_WITH;
    }
    return with;
}

/* Every authoritative server of the zone (NS, port 53) answers value at t->fqdn. */
static int
wait_propagation(const acme_dns_config_t *cfg, ldns_resolver *lookup, const acme_dns_target_t *t,
    const char *value, atomic_int *stop, acme_err_t *err)
{
    ldns_pkt       *pkt;
    ldns_rr_list   *nsl;
    ldns_rdf       *addrs[DNS_SERVERS_MAX];
    char           *names[DNS_SERVERS_MAX], lag[600];
    int             st[DNS_SERVERS_MAX];
    size_t          naddrs = 0, i, j, k, n, done, nns;
    long long       deadline;
    long            timeout = cfg->propagation_timeout > 0 ? cfg->propagation_timeout
                                                           : ACME_DNS_PROPAGATION_DEFAULT;
    int             rc = -1;

    pkt = query(lookup, t->zone, LDNS_RR_TYPE_NS, LDNS_RD, err);
    if (pkt == NULL) {
        acme_err_prefix(err, "the authoritative servers of %s", t->zone);
        return -1;
    }
    nsl = ldns_pkt_rr_list_by_type(pkt, LDNS_RR_TYPE_NS, LDNS_SECTION_ANSWER);
    for (i = 0; nsl != NULL && i < ldns_rr_list_rr_count(nsl) && naddrs < DNS_SERVERS_MAX; i++) {
        char      *ns = rdf_str(ldns_rr_rdf(ldns_rr_list_rr(nsl, i), 0));
        acme_err_t e;
        if (ns == NULL) {
            continue;
        }
        if (host_addrs(ns, lookup, addrs + naddrs, DNS_SERVERS_MAX - naddrs, &n, &e) == 0) {
            for (k = 0; k < n; k++) {
                names[naddrs + k] = ns;
                st[naddrs + k] = ADDR_SILENT;
            }
            naddrs += n;
            if (n == 0) {
                free(ns);
            }
        } else {
            free(ns);
        }
    }
    ldns_rr_list_deep_free(nsl);
    ldns_pkt_free(pkt);
    if (naddrs == 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "no authoritative server (NS) found for %s", t->zone);
        return -1;
    }

    deadline = mono_ms() + timeout * 1000;
    for (;;) {
        for (i = 0; i < naddrs; i++) {
            ldns_resolver *r;
            if (st[i] != ADDR_WITH && (r = resolver_for(&addrs[i], 1, 53, 0)) != NULL) {
                acme_err_t e;
                ldns_resolver_set_retry(r, 1);
                pkt = query(r, t->fqdn, LDNS_RR_TYPE_TXT, 0, &e);
                st[i] = pkt == NULL ? (st[i] == ADDR_WITHOUT ? ADDR_WITHOUT : ADDR_SILENT)
                                    : has_txt(pkt, value) ? ADDR_WITH : ADDR_WITHOUT;
                ldns_pkt_free(pkt);
                ldns_resolver_deep_free(r);
            }
        }
        /* the addresses of one NS are together */
        for (i = 0, done = 0, nns = 0; i < naddrs; i = j, nns++) {
            for (j = i; j < naddrs && names[j] == names[i]; j++) {
                /* void */
            }
            done += ns_done(st, i, j);
        }
        if (done == nns) {
            rc = 0;
            break;
        }
        if (atomic_load(stop)) {
            acme_err_set(err, ACME_ERR_INTERNAL, "stopped while waiting for DNS propagation");
            break;
        }
        if (mono_ms() >= deadline) {
            size_t off = 0;
            lag[0] = '\0';
            for (i = 0; i < naddrs; i = j) {
                for (j = i; j < naddrs && names[j] == names[i]; j++) {
                    /* void */
                }
                if (ns_done(st, i, j)) {
                    continue;
                }
                append(lag, sizeof(lag), &off, "%s%s (", off ? ", " : "", names[i]);
                for (k = i, n = 0; k < j; k++) {
                    if (st[k] == ADDR_WITHOUT || (st[k] == ADDR_SILENT && j - i == 1)) {
                        char *a = rdf_str(addrs[k]);
                        append(lag, sizeof(lag), &off, "%s%s%s", n++ ? ", " : "", a ? a : "?",
                               st[k] == ADDR_SILENT ? ": no answer" : "");
                        free(a);
                    }
                }
                append(lag, sizeof(lag), &off, "%s)", n == 0 ? "no answer" : "");
            }
            acme_err_set(err, ACME_ERR_NETWORK, "%s TXT: not answered by %s after %ld s (DNS propagation "
                         "timeout)", t->fqdn, lag, timeout);
            break;
        }
        for (k = 0; k < DNS_RECHECK_MS / 50 && !atomic_load(stop); k++) {
            usleep(50000);
        }
    }
    for (i = 0; i < naddrs; i++) {
        ldns_rdf_deep_free(addrs[i]);
        if (i + 1 == naddrs || names[i + 1] != names[i]) {
            free(names[i]);
        }
    }
    return rc;
}

int
acme_dns_publish_record(const acme_dns_config_t *cfg, const acme_dns_record_t *rec, int add, atomic_int *stop,
    char **out, acme_err_t *err)
{
    ldns_resolver      *lookup;
    acme_dns_target_t   t;
    int                 rc;

    if (rec->type != NULL && strcmp(rec->type, "dns-persist-01") == 0 && rec->issuers != NULL) {
        /* a challenge's record: checked, never published nor removed (the admin's, published once
         * with acmectl dns-persist-record --publish, has no issuers) */
        return add ? acme_dns_persist_check(cfg, rec, NULL, NULL, err) : 0;
    }
    lookup = acme_dns_resolver(cfg->resolver, 53, 1, NULL, err);
    if (lookup == NULL) {
        return -1;
    }
    rc = acme_dns_find_target(lookup, rec->name, &t, err);
    if (rc == 0) {
        switch (cfg->method) {
        case ACME_DNS_RFC2136:
            rc = acme_dns_rfc2136_update(cfg, lookup, &t, add, rec->value, err);
            break;
        case ACME_DNS_HOOK:
            rc = acme_dns_hook_run(cfg, rec, &t, add, stop, out, err);
            break;
        case ACME_DNS_ACMEDNS:
            /* acme-dns keeps the last two values of a subdomain and has no removal: nothing to undo */
            rc = add ? acme_dns_acmedns_update(cfg, rec, &t, err) : 0;
            break;
        default:
            acme_err_set(err, ACME_ERR_CONFIG, "no DNS update method configured");
            rc = -1;
        }
        if (rc == 0 && add) {
            rc = wait_propagation(cfg, lookup, &t, rec->value, stop, err);
        }
        acme_dns_target_free(&t);
    }
    ldns_resolver_deep_free(lookup);
    return rc;
}

int
acme_dns_publish(const acme_dns_config_t *cfg, const char *name, const char *value, atomic_int *stop,
    acme_err_t *err)
{
    acme_dns_record_t rec = { .name = (char *) name, .value = (char *) value };

    return acme_dns_publish_record(cfg, &rec, 1, stop, NULL, err);
}

int
acme_dns_unpublish(const acme_dns_config_t *cfg, const char *name, const char *value, acme_err_t *err)
{
    acme_dns_record_t rec = { .name = (char *) name, .value = (char *) value };

    return acme_dns_publish_record(cfg, &rec, 0, NULL, NULL, err);
}
