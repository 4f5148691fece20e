/* CSRs for finalize: SHA-256, every identifier in subjectAltName, CN = first DNS identifier unless asked not to. */
#include "acme_csr.h"
#include "acme_b64.h"
#include "acme_x509.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define ACME_CSR_CN_MAX  64

char *
acme_csr_create(EVP_PKEY *key, const acme_ident_t *ids, size_t n, unsigned flags, acme_err_t *err)
{
    X509_REQ                    *req = NULL;
    X509_NAME                   *subj;
    GENERAL_NAMES               *gens = NULL;
    X509_EXTENSION              *ext = NULL;
    STACK_OF(X509_EXTENSION)    *exts = NULL;
    unsigned char               *der = NULL;
    const char                  *cn = NULL;
    char                        *out = NULL;
    size_t                       i;
    int                          dlen;

    if (key == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "CSR: no key");
        return NULL;
    }
    if (ids == NULL || n == 0) {
        acme_err_set(err, ACME_ERR_INPUT, "CSR: no identifiers");
        return NULL;
    }
    if (n > INT_MAX) {
        acme_err_set(err, ACME_ERR_INPUT, "CSR: too many identifiers");
        return NULL;
    }

    gens = GENERAL_NAMES_new();
    if (gens == NULL) {
        goto nomem;
    }
    for (i = 0; i < n; i++) {
        if (ids[i].value == NULL) {
            acme_err_set(err, ACME_ERR_INPUT, "CSR: identifier %zu has no value", i);
            goto failed;
        }
        if (acme_san_push(gens, ids[i].type, ids[i].value, err) != 0) {
            acme_err_prefix(err, "CSR");
            goto failed;
        }
        if (cn == NULL && ids[i].type == ACME_IDENT_DNS && !(flags & ACME_CSR_NO_CN)) {
            cn = ids[i].value;
        }
    }

    req = X509_REQ_new();
    if (req == NULL) {
        goto nomem;
    }
    if (X509_REQ_set_version(req, X509_REQ_VERSION_1) != 1) {
        acme_err_ssl(err, "CSR: cannot set the version");
        goto failed;
    }

    subj = X509_REQ_get_subject_name(req);
    if (cn != NULL && strlen(cn) <= ACME_CSR_CN_MAX
        && X509_NAME_add_entry_by_NID(subj, NID_commonName, MBSTRING_UTF8, (const unsigned char *) cn,
                                      -1, -1, 0) != 1)
    {
        acme_err_ssl(err, "CSR: cannot set the subject");
        goto failed;
    }

    if (X509_REQ_set_pubkey(req, key) != 1) {
        acme_err_ssl(err, "CSR: cannot set the public key");
        goto failed;
    }

    ext = X509V3_EXT_i2d(NID_subject_alt_name, 0, gens);
    exts = sk_X509_EXTENSION_new_null();
    if (ext == NULL || exts == NULL || sk_X509_EXTENSION_push(exts, ext) <= 0) {
        acme_err_ssl(err, "CSR: cannot build the subjectAltName extension");
        goto failed;
    }
    ext = NULL;     /* owned by exts now */

    if (X509_REQ_add_extensions(req, exts) != 1) {
        acme_err_ssl(err, "CSR: cannot add the extensions");
        goto failed;
    }

    if (X509_REQ_sign(req, key, EVP_sha256()) <= 0) {
        acme_err_ssl(err, "CSR: cannot sign");
        goto failed;
    }

    dlen = i2d_X509_REQ(req, &der);
    if (dlen <= 0) {
        acme_err_ssl(err, "CSR: cannot encode");
        goto failed;
    }
    out = acme_b64url_encode(der, (size_t) dlen);
    if (out == NULL) {
        goto nomem;
    }
    goto done;

nomem:
    acme_err_set(err, ACME_ERR_INTERNAL, "CSR: out of memory");
failed:
    free(out);
    out = NULL;
done:
    OPENSSL_free(der);
    X509_EXTENSION_free(ext);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    GENERAL_NAMES_free(gens);
    X509_REQ_free(req);
    return out;
}
