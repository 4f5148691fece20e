/* TLS-ALPN-01 (RFC 8737) challenge certificates. */
#include "acme_tlsalpn.h"
#include "acme_key.h"
#include "acme_x509.h"

#include <string.h>
#include <openssl/asn1.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>

#define ACME_TLSALPN_CN_MAX  64
#define ACME_TLSALPN_IP_CN   "ACME TLS-ALPN-01 challenge"

int
acme_tlsalpn_cert(const acme_ident_t *id, const char *key_authz, X509 **cert, EVP_PKEY **key,
    acme_err_t *err)
{
    acme_keyspec_t      spec = { ACME_KEY_EC, 256 };
    EVP_PKEY           *pk = NULL;
    X509               *x = NULL;
    X509_NAME          *subj = NULL;
    GENERAL_NAMES      *gens = NULL;
    ASN1_OBJECT        *oid = NULL;
    ASN1_OCTET_STRING  *inner = NULL, *value = NULL;
    X509_EXTENSION     *ext = NULL;
    unsigned char      *der = NULL;
    unsigned char       md[EVP_MAX_MD_SIZE];
    unsigned int        mdlen;
    const char         *cn;
    int                 dlen;

    if (cert == NULL || key == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "tls-alpn-01: no output");
        return -1;
    }
    *cert = NULL;
    *key = NULL;
    if (id == NULL || id->value == NULL || id->value[0] == '\0') {
        acme_err_set(err, ACME_ERR_INPUT, "tls-alpn-01: no identifier");
        return -1;
    }
    if (id->type != ACME_IDENT_DNS && id->type != ACME_IDENT_IP) {
        acme_err_set(err, ACME_ERR_INPUT, "tls-alpn-01: unknown identifier type %d", (int) id->type);
        return -1;
    }
    if (id->type == ACME_IDENT_DNS && strchr(id->value, '*') != NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "tls-alpn-01 cannot validate the wildcard name \"%.253s\"",
                     id->value);
        return -1;
    }
    if (key_authz == NULL || key_authz[0] == '\0') {
        acme_err_set(err, ACME_ERR_INPUT, "tls-alpn-01: no key authorization");
        return -1;
    }

    /* the acmeIdentifier value: the DER of OCTET STRING (SHA-256(key authorization)) */
    if (EVP_Digest(key_authz, strlen(key_authz), md, &mdlen, EVP_sha256(), NULL) != 1) {
        acme_err_ssl(err, "tls-alpn-01: SHA-256 failed");
        return -1;
    }

    pk = acme_key_generate(&spec, err);
    if (pk == NULL) {
        acme_err_prefix(err, "tls-alpn-01");
        return -1;
    }

    gens = GENERAL_NAMES_new();
    if (gens == NULL) {
        goto nomem;
    }
    if (acme_san_push(gens, id->type, id->value, err) != 0) {
        acme_err_prefix(err, "tls-alpn-01");
        goto failed;
    }

    inner = ASN1_OCTET_STRING_new();
    value = ASN1_OCTET_STRING_new();
    if (inner == NULL || value == NULL || ASN1_OCTET_STRING_set(inner, md, (int) mdlen) != 1) {
        goto nomem;
    }
    dlen = i2d_ASN1_OCTET_STRING(inner, &der);
    if (dlen <= 0 || ASN1_OCTET_STRING_set(value, der, dlen) != 1) {
        acme_err_ssl(err, "tls-alpn-01: cannot encode the acmeIdentifier value");
        goto failed;
    }

    oid = OBJ_txt2obj(ACME_TLSALPN_OID, 1);
    if (oid == NULL) {
        acme_err_ssl(err, "tls-alpn-01: cannot build the acmeIdentifier OID");
        goto failed;
    }
    ext = X509_EXTENSION_create_by_OBJ(NULL, oid, 1, value);
    if (ext == NULL) {
        acme_err_ssl(err, "tls-alpn-01: cannot build the acmeIdentifier extension");
        goto failed;
    }

    x = X509_new();
    subj = X509_NAME_new();
    if (x == NULL || subj == NULL) {
        goto nomem;
    }
    cn = (id->type == ACME_IDENT_DNS && strlen(id->value) <= ACME_TLSALPN_CN_MAX)
         ? id->value : ACME_TLSALPN_IP_CN;
    if (X509_NAME_add_entry_by_NID(subj, NID_commonName, MBSTRING_UTF8, (const unsigned char *) cn,
                                   -1, -1, 0) != 1)
    {
        acme_err_ssl(err, "tls-alpn-01: cannot set the subject");
        goto failed;
    }

    if (X509_set_version(x, X509_VERSION_3) != 1
        || acme_x509_random_serial(x, err) != 0
        || X509_set_subject_name(x, subj) != 1
        || X509_set_issuer_name(x, subj) != 1
        || X509_gmtime_adj(X509_getm_notBefore(x), -86400L) == NULL
        || X509_gmtime_adj(X509_getm_notAfter(x), 7 * 86400L) == NULL
        || X509_set_pubkey(x, pk) != 1)
    {
        acme_err_ssl(err, "tls-alpn-01: cannot fill in the certificate");
        goto failed;
    }

    if (X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT) != 1
        || X509_add_ext(x, ext, -1) != 1)
    {
        acme_err_ssl(err, "tls-alpn-01: cannot add the extensions");
        goto failed;
    }

    if (X509_sign(x, pk, EVP_sha256()) <= 0) {
        acme_err_ssl(err, "tls-alpn-01: cannot sign the certificate");
        goto failed;
    }

    *cert = x;
    *key = pk;
    x = NULL;
    pk = NULL;
    goto done;

nomem:
    acme_err_set(err, ACME_ERR_INTERNAL, "tls-alpn-01: out of memory");
failed:
done:
    OPENSSL_free(der);
    ASN1_OCTET_STRING_free(inner);
    ASN1_OCTET_STRING_free(value);
    ASN1_OBJECT_free(oid);
    X509_EXTENSION_free(ext);
    GENERAL_NAMES_free(gens);
    X509_NAME_free(subj);
    X509_free(x);
    EVP_PKEY_free(pk);
    return *cert != NULL ? 0 : -1;
}
