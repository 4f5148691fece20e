/* acmectl's own challenge servers: HTTP-01 and TLS-ALPN-01 (RFC 8737) in one background thread. */
#ifndef ACMECTL_CHSRV_H
#define ACMECTL_CHSRV_H

#include "acme_err.h"
#include "acme_ident.h"

typedef struct acmectl_chsrv_s acmectl_chsrv_t;

/*
 * Starts the listeners in one background thread. http_listen / tls_listen: "ADDR:PORT"
 * ("127.0.0.1:5002", "[::1]:5002", ":80" or "*:80" meaning all addresses, a bare "80" too);
 * either may be NULL. Port 0 binds an ephemeral port (see acmectl_chsrv_http_port()).
 */
acmectl_chsrv_t *acmectl_chsrv_start(const char *http_listen, const char *tls_listen, acme_err_t *err);

/* The bound ports, -1 when that server is not listening. */
int  acmectl_chsrv_http_port(const acmectl_chsrv_t *s);
int  acmectl_chsrv_tls_port(const acmectl_chsrv_t *s);

/* Thread-safe; copy their strings. Adding a known token / identifier again replaces it. */
/* HTTP-01: answered only for a Host (or absolute-form authority) that is the identifier id. */
int  acmectl_chsrv_add_http(acmectl_chsrv_t *s, const acme_ident_t *id, const char *token, const char *key_authz,
    acme_err_t *err);
/* Builds the challenge certificate now (acme_tlsalpn_cert); keyed by acme_ident_sni(id). */
int  acmectl_chsrv_add_tlsalpn(acmectl_chsrv_t *s, const acme_ident_t *id, const char *key_authz,
    acme_err_t *err);
void acmectl_chsrv_remove_http(acmectl_chsrv_t *s, const char *token);
void acmectl_chsrv_remove_tlsalpn(acmectl_chsrv_t *s, const acme_ident_t *id);

/* Joins the thread, closes every socket, frees everything. NULL is fine. */
void acmectl_chsrv_stop(acmectl_chsrv_t *s);

#endif
