/* The server_name of a ClientHello (RFC 8446 4.1.2, RFC 6066 3), from the first TLS record. */
#include <string.h>
#include "acme_clienthello.h"

#define RD16(p) ((size_t) ((p)[0] << 8 | (p)[1]))
#define RD24(p) ((size_t) ((p)[0] << 16 | (p)[1] << 8 | (p)[2]))

/* The extensions of a whole ClientHello in buf: *ext, *ext_len; a result other than ACME_CH_SNI otherwise. */
static acme_ch_result_t
extensions(const unsigned char *buf, size_t len, const unsigned char **ext, size_t *ext_len)
{
    const unsigned char *p, *end;
    size_t               rec, hs, n;

    /* record header: handshake (22), TLS 1.x, length */
    if (len >= 1 && buf[0] != 22) {
        return ACME_CH_NOT_TLS;
    }
    if (len >= 2 && buf[1] != 3) {
        return ACME_CH_NOT_TLS;
    }
    if (len < 5) {
        return ACME_CH_MORE;
    }
    rec = RD16(buf + 3);
    if (rec < 4 || rec > 16384) {
        return ACME_CH_NOT_TLS;
    }
    if (len >= 6 && buf[5] != 1) {     /* client_hello */
        return ACME_CH_NOT_TLS;
    }
    if (len < 9) {
        return ACME_CH_MORE;
    }
    hs = RD24(buf + 6);
    if (hs + 4 > rec) {
        /* a ClientHello split over several records: rare, left to OpenSSL */
        return ACME_CH_NOT_TLS;
    }
    if (len < 5 + 4 + hs) {
        return ACME_CH_MORE;
    }

    p = buf + 9;
    end = p + hs;

    /* version, random */
    if ((size_t) (end - p) < 2 + 32 + 1) {
        return ACME_CH_NOT_TLS;
    }
    p += 34;
    n = *p++;                                   /* session id */
    if ((size_t) (end - p) < n + 2) {
        return ACME_CH_NOT_TLS;
    }
    p += n;
    n = RD16(p);                                /* cipher suites */
    p += 2;
    if ((size_t) (end - p) < n + 1) {
        return ACME_CH_NOT_TLS;
    }
    p += n;
    n = *p++;                                   /* compression methods */
    if ((size_t) (end - p) < n) {
        return ACME_CH_NOT_TLS;
    }
    p += n;
    if (p == end) {
        return ACME_CH_NONE;                    /* no extensions */
    }
    if ((size_t) (end - p) < 2) {
        return ACME_CH_NOT_TLS;
    }
    n = RD16(p);
    p += 2;
    if ((size_t) (end - p) < n) {
        return ACME_CH_NOT_TLS;
    }
    *ext = p;
    *ext_len = n;
    return ACME_CH_SNI;
}

/* The body of extension `want`: ACME_CH_SNI with *body, *body_len; ACME_CH_NONE when absent. */
static acme_ch_result_t
extension(const unsigned char *buf, size_t len, size_t want, const unsigned char **body, size_t *body_len)
{
    const unsigned char *p, *ext_end;
    size_t               n, type, elen;
    acme_ch_result_t     r;

    r = extensions(buf, len, &p, &n);
    if (r != ACME_CH_SNI) {
        return r;
    }
    ext_end = p + n;
    while ((size_t) (ext_end - p) >= 4) {
        type = RD16(p);
        elen = RD16(p + 2);
        p += 4;
        if ((size_t) (ext_end - p) < elen) {
            return ACME_CH_NOT_TLS;
        }
        if (type == want) {
            *body = p;
            *body_len = elen;
            return ACME_CH_SNI;
        }
        p += elen;
    }
    return ACME_CH_NONE;
}

acme_ch_result_t
acme_clienthello_sni(const unsigned char *buf, size_t len, const char **sni, size_t *sni_len)
{
    const unsigned char *p;
    size_t               elen, list, nlen;
    acme_ch_result_t     r;

    *sni = NULL;
    *sni_len = 0;

    r = extension(buf, len, 0, &p, &elen);
    if (r != ACME_CH_SNI) {
        return r;
    }

    /* server_name_list: the first host_name entry */
    if (elen < 2) {
        return ACME_CH_NOT_TLS;
    }
    list = RD16(p);
    if (list + 2 != elen) {
        return ACME_CH_NOT_TLS;
    }
    p += 2;
    while (list >= 3) {
        nlen = RD16(p + 1);
        if (nlen + 3 > list) {
            return ACME_CH_NOT_TLS;
        }
        if (p[0] == 0) {
            if (nlen == 0) {
                return ACME_CH_NOT_TLS;
            }
            *sni = (const char *) p + 3;
            *sni_len = nlen;
            return ACME_CH_SNI;
        }
        p += 3 + nlen;
        list -= 3 + nlen;
    }
    return ACME_CH_NONE;
}

int
acme_clienthello_acme_alpn(const unsigned char *buf, size_t len)
{
    const unsigned char *p;
    size_t               elen, list, n;

    if (extension(buf, len, 16, &p, &elen) != ACME_CH_SNI || elen < 2) {
        return 0;
    }
    list = RD16(p);
    if (list + 2 != elen) {
        return 0;
    }
    p += 2;
    while (list >= 1) {
        n = p[0];
        if (n + 1 > list) {
            return 0;
        }
        if (n == 10 && memcmp(p + 1, "acme-tls/1", 10) == 0) {
            return 1;
        }
        p += 1 + n;
        list -= 1 + n;
    }
    return 0;
}
