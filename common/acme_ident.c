/* ACME identifiers: DNS names and IP addresses. */
#include "acme_ident.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#define IDENT_INPUT_MAX  1024     /* longer input is refused before looking at it */
#define DNS_NAME_MAX     253
#define DNS_LABEL_MAX    63

static int
ident_ip(const char *s, size_t len, acme_ident_t *id)
{
    char            tmp[INET6_ADDRSTRLEN + 2], out[INET6_ADDRSTRLEN];
    unsigned char   addr[16];
    int             bracket = 0;

    if (len >= 2 && s[0] == '[' && s[len - 1] == ']') {
        bracket = 1;
        s++;
        len -= 2;
    }
    if (len == 0 || len >= sizeof(tmp)) {
        return bracket ? -1 : 0;
    }
    memcpy(tmp, s, len);
    tmp[len] = '\0';

    if (!bracket && inet_pton(AF_INET, tmp, addr) == 1) {
        if (inet_ntop(AF_INET, addr, out, sizeof(out)) == NULL) {
            return -1;
        }
    } else if (inet_pton(AF_INET6, tmp, addr) == 1) {
        if (inet_ntop(AF_INET6, addr, out, sizeof(out)) == NULL) {
            return -1;
        }
    } else {
        return bracket ? -1 : 0;
    }
    id->type = ACME_IDENT_IP;
    id->value = acme_strdup(out);
    return id->value ? 1 : -2;
}

/* Checks a DNS name (already lowercase, no trailing dot); NULL when fine, else why not. */
static const char *
ident_dns_check(const char *s, size_t len)
{
    size_t       i, label;
    int          digits_only;
    const char  *p = s;

    if (len >= 2 && s[0] == '*' && s[1] == '.') {
        p += 2;
        len -= 2;
        if (len == 0) {
            return "a wildcard needs a domain after \"*.\"";
        }
    }
    label = 0;
    digits_only = 1;
    for (i = 0; i <= len; i++) {
        unsigned char c = i < len ? (unsigned char) p[i] : '.';

        if (c == '.') {
            if (label == 0) {
                return "empty label";
            }
            if (label > DNS_LABEL_MAX) {
                return "label longer than 63 bytes";
            }
            if (p[i - 1] == '-') {
                return "label ends with '-'";
            }
            if (i == len && digits_only) {
                return "the last label is numeric (not a valid IP address either)";
            }
            label = 0;
            digits_only = 1;
            continue;
        }
        if (c >= 0x80) {
            return "non-ASCII character (use the punycode \"xn--\" form)";
        }
        if (c == '*') {
            return "'*' is only allowed as the whole first label";
        }
        if (c == '_') {
            return "underscore";
        }
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) {
            return "invalid character";
        }
        if (c == '-' && label == 0) {
            return "label starts with '-'";
        }
        if (!(c >= '0' && c <= '9')) {
            digits_only = 0;
        }
        label++;
    }
    return NULL;
}

int
acme_ident_parse(const char *s, acme_ident_t *id, acme_err_t *err)
{
    size_t       len, i;
    char        *v;
    const char  *why;
    char         q[96];
    int          rc;

    if (id == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "acme_ident_parse: no output");
        return -1;
    }
    id->type = 0;
    id->value = NULL;
    if (s == NULL || s[0] == '\0') {
        acme_err_set(err, ACME_ERR_INPUT, "empty name");
        return -1;
    }
    len = strnlen(s, IDENT_INPUT_MAX + 1);
    if (len > IDENT_INPUT_MAX) {
        acme_err_set(err, ACME_ERR_INPUT, "invalid name \"%s\": longer than %d bytes",
                     acme_quote(s, q, sizeof(q), 80), DNS_NAME_MAX);
        return -1;
    }

    rc = ident_ip(s, len, id);
    if (rc == 1) {
        return 0;
    }
    if (rc == -2) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    if (rc == -1) {
        acme_err_set(err, ACME_ERR_INPUT, "invalid IPv6 address \"%s\"", acme_quote(s, q, sizeof(q), 80));
        return -1;
    }

    /* a DNS name: one trailing dot allowed, lowercase */
    if (s[len - 1] == '.') {
        len--;
    }
    if (len == 0) {
        acme_err_set(err, ACME_ERR_INPUT, "invalid name \"%s\": empty", acme_quote(s, q, sizeof(q), 80));
        return -1;
    }
    if (len > DNS_NAME_MAX) {
        acme_err_set(err, ACME_ERR_INPUT, "invalid name \"%s\": longer than %d bytes",
                     acme_quote(s, q, sizeof(q), 80), DNS_NAME_MAX);
        return -1;
    }
    v = acme_strndup(s, len);
    if (v == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    for (i = 0; i < len; i++) {
        if (v[i] >= 'A' && v[i] <= 'Z') {
            v[i] = (char) (v[i] - 'A' + 'a');
        }
    }
    why = ident_dns_check(v, len);
    if (why != NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "invalid name \"%s\": %s", acme_quote(s, q, sizeof(q), 80), why);
        free(v);
        return -1;
    }
    id->type = ACME_IDENT_DNS;
    id->value = v;
    return 0;
}

void
acme_ident_free(acme_ident_t *id)
{
    if (id != NULL) {
        free(id->value);
        id->value = NULL;
        id->type = 0;
    }
}

const char *
acme_ident_type_name(acme_ident_type_t t)
{
    switch (t) {
    case ACME_IDENT_DNS: return "dns";
    case ACME_IDENT_IP:  return "ip";
    }
    return "unknown";
}

int
acme_ident_type_from_name(const char *s, acme_ident_type_t *t)
{
    acme_ident_type_t  v;

    if (s == NULL) {
        return -1;
    }
    if (strcmp(s, "dns") == 0) {
        v = ACME_IDENT_DNS;
    } else if (strcmp(s, "ip") == 0) {
        v = ACME_IDENT_IP;
    } else {
        return -1;
    }
    if (t != NULL) {
        *t = v;
    }
    return 0;
}

char *
acme_ident_sni(const acme_ident_t *id)
{
    static const char   hex[] = "0123456789abcdef";
    unsigned char       a[16];
    char                buf[80], *p;
    int                 i;

    if (id == NULL || id->value == NULL) {
        return NULL;
    }
    if (id->type == ACME_IDENT_DNS) {
        return acme_strdup(id->value);
    }
    if (id->type != ACME_IDENT_IP) {
        return NULL;
    }
    if (inet_pton(AF_INET, id->value, a) == 1) {
        snprintf(buf, sizeof(buf), "%u.%u.%u.%u.in-addr.arpa", a[3], a[2], a[1], a[0]);
        return acme_strdup(buf);
    }
    if (inet_pton(AF_INET6, id->value, a) == 1) {
        p = buf;
        for (i = 15; i >= 0; i--) {
            *p++ = hex[a[i] & 0x0f];
            *p++ = '.';
            *p++ = hex[a[i] >> 4];
            *p++ = '.';
        }
        memcpy(p, "ip6.arpa", sizeof("ip6.arpa"));
        return acme_strdup(buf);
    }
    return NULL;
}

int
acme_ident_from_sni(const char *sni, acme_ident_t *id, acme_err_t *err)
{
    static const char  v4[] = ".in-addr.arpa", v6[] = ".ip6.arpa";
    char               text[64], q[140], *back;
    const char        *s, *lab[4];
    size_t             n, i, k, ll[4];
    int                nl;

    memset(id, 0, sizeof(*id));
    n = sni ? strlen(sni) : 0;
    if (n > sizeof(v4) - 1 && strcasecmp(sni + n - (sizeof(v4) - 1), v4) == 0) {
        /* d.c.b.a.in-addr.arpa -> a.b.c.d */
        for (s = sni, nl = 0; s < sni + n - (sizeof(v4) - 1) && nl < 4; nl++) {
            lab[nl] = s;
            ll[nl] = strcspn(s, ".");
            s += ll[nl] + 1;
        }
        if (nl != 4 || s != sni + n - (sizeof(v4) - 1) + 1 || ll[0] + ll[1] + ll[2] + ll[3] > 12) {
            goto bad;
        }
        snprintf(text, sizeof(text), "%.*s.%.*s.%.*s.%.*s", (int) ll[3], lab[3], (int) ll[2], lab[2],
                 (int) ll[1], lab[1], (int) ll[0], lab[0]);
    } else if (n > sizeof(v6) - 1 && strcasecmp(sni + n - (sizeof(v6) - 1), v6) == 0) {
        /* 32 nibbles, least significant first */
        if (n - (sizeof(v6) - 1) != 63) {
            goto bad;
        }
        for (i = 0, k = 0; i < 32; i++) {
            text[k++] = sni[62 - 2 * i];
            if (i % 4 == 3 && i != 31) {
                text[k++] = ':';
            }
        }
        text[k] = '\0';
    } else {
        if (acme_ident_parse(sni ? sni : "", id, err) != 0) {
            return -1;
        }
        if (id->type != ACME_IDENT_DNS || id->value[0] == '*') {
            acme_ident_free(id);
            goto bad;
        }
        return 0;
    }
    if (acme_ident_parse(text, id, NULL) != 0 || id->type != ACME_IDENT_IP) {
        acme_ident_free(id);
        goto bad;
    }
    /* only the canonical reverse name (as acme_ident_sni makes it) */
    back = acme_ident_sni(id);
    if (back == NULL || strcasecmp(back, sni) != 0) {
        free(back);
        acme_ident_free(id);
        goto bad;
    }
    free(back);
    return 0;
bad:
    acme_err_set(err, ACME_ERR_INPUT, "\"%s\" is not a server name a TLS-ALPN-01 validator sends",
                 acme_quote(sni ? sni : "", q, sizeof(q), 120));
    return -1;
}

size_t
acme_sni_normalize(const char *sni, size_t len, char *buf, size_t size)
{
    size_t  i;
    char    c;

    if (sni == NULL || len == 0 || len >= size) {
        return 0;
    }
    for (i = 0; i < len; i++) {
        c = sni[i];
        if (c >= 'A' && c <= 'Z') {
            c |= 0x20;
        } else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.')) {
            return 0;
        }
        buf[i] = c;
    }
    if (buf[len - 1] == '.') {
        len--;
    }
    buf[len] = '\0';
    return len;
}

int
acme_dns_match(const char *pattern, const char *name)
{
    const char  *dot;
    size_t       pl, nl;

    if (pattern == NULL || name == NULL || pattern[0] == '\0') {
        return 0;
    }
    pl = strlen(pattern);
    nl = strlen(name);
    /* a trailing dot on either side does not matter */
    if (pl > 1 && pattern[pl - 1] == '.') {
        pl--;
    }
    if (nl > 1 && name[nl - 1] == '.') {
        nl--;
    }
    if (pl == nl && strncasecmp(pattern, name, pl) == 0) {
        return 1;
    }
    if (pl < 3 || pattern[0] != '*' || pattern[1] != '.') {
        return 0;
    }
    /* "*.example.org" covers exactly one non-empty, non-wildcard label in front of ".example.org" */
    dot = memchr(name, '.', nl);
    if (dot == NULL || dot == name || memchr(name, '*', (size_t) (dot - name)) != NULL) {
        return 0;
    }
    return (size_t) (name + nl - dot) == pl - 1 && strncasecmp(dot, pattern + 1, pl - 1) == 0;
}
