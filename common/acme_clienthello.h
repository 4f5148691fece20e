/*
 * The server name of a TLS ClientHello read ahead of the handshake (nginx peeks at the first bytes of an
 * on-demand connection before OpenSSL sees them). Bounded: one record of at most 16 KiB, every length checked
 * against the bytes at hand; nothing is allocated.
 */
#ifndef ACME_CLIENTHELLO_H
#define ACME_CLIENTHELLO_H

#include <stddef.h>

#define ACME_CLIENTHELLO_MAX  (5 + 16384)   /* one TLS record */

typedef enum {
    ACME_CH_SNI = 0,        /* found: *sni, *sni_len point into buf */
    ACME_CH_MORE = 1,       /* a ClientHello so far: read more (up to ACME_CLIENTHELLO_MAX) */
    ACME_CH_NONE = 2,       /* a ClientHello without server_name */
    ACME_CH_NOT_TLS = 3     /* not a ClientHello (or malformed, or split over records) */
} acme_ch_result_t;

acme_ch_result_t acme_clienthello_sni(const unsigned char *buf, size_t len, const char **sni, size_t *sni_len);

/* 1 when a whole ClientHello in buf offers ALPN "acme-tls/1" (a TLS-ALPN-01 validation, RFC 8737). */
int acme_clienthello_acme_alpn(const unsigned char *buf, size_t len);

#endif
