/* Certificate chains: PEM, facts, checks, chain choice, ARI identifiers, self-signed fallbacks. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE     /* memmem, timegm */
#endif
#include "acme_x509.h"
#include "acme_b64.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#define ACME_CHAIN_MAX_CERTS  10
#define ACME_CHAIN_MAX_BYTES  (256 * 1024)
#define ACME_CN_MAX           64

static const char  pem_begin_any[] = "-----BEGIN ";
static const char  pem_begin_cert[] = "-----BEGIN CERTIFICATE-----";
static const char  pem_end_cert[] = "-----END CERTIFICATE-----";

#define STRLEN_LIT(s)  (sizeof(s) - 1)

static int
pem_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* One "-----BEGIN CERTIFICATE-----" ... "-----END CERTIFICATE-----" block to an X509, strictly. */
static X509 *
pem_block_to_x509(const char *block, size_t len, size_t index, acme_err_t *err)
{
    BIO                  *bio = NULL;
    char                 *copy, *name = NULL, *header = NULL;
    unsigned char        *data = NULL;
    const unsigned char  *p;
    long                  dlen = 0;
    X509                 *x = NULL;

    copy = malloc(len + 2);
    if (copy == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    memcpy(copy, block, len);
    copy[len] = '\n';
    copy[len + 1] = '\0';

    bio = BIO_new_mem_buf(copy, (int) len + 1);
    if (bio == NULL) {
        acme_err_ssl(err, "cannot allocate a BIO");
        free(copy);
        return NULL;
    }

    if (PEM_read_bio(bio, &name, &header, &data, &dlen) != 1) {
        ERR_clear_error();
        acme_err_set(err, ACME_ERR_BADRESPONSE, "certificate %zu of the PEM chain is not valid PEM", index);
        goto done;
    }
    if (strcmp(name, "CERTIFICATE") != 0 || (header != NULL && header[0] != '\0')) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "certificate %zu of the PEM chain has unexpected PEM headers",
                     index);
        goto done;
    }

    p = data;
    x = d2i_X509(NULL, &p, dlen);
    if (x == NULL || p != data + dlen) {
        ERR_clear_error();
        acme_err_set(err, ACME_ERR_BADRESPONSE, "certificate %zu of the PEM chain is not a valid certificate",
                     index);
        X509_free(x);
        x = NULL;
    }

done:
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(data);
    BIO_free(bio);
    free(copy);
    return x;
}

int
acme_pem_chain_parse(const char *pem, size_t len, STACK_OF(X509) **chain, acme_err_t *err)
{
    STACK_OF(X509)  *sk;
    X509            *x;
    const char      *end, *inner;
    size_t           pos, blen, i, n;
    char             label[41];

    if (chain == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "no chain output");
        return -1;
    }
    *chain = NULL;

    if (pem == NULL || len == 0) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "empty certificate chain");
        return -1;
    }
    if (len > ACME_CHAIN_MAX_BYTES) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "certificate chain too large (%zu bytes)", len);
        return -1;
    }

    sk = sk_X509_new_null();
    if (sk == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }

    pos = 0;
    for ( ;; ) {
        while (pos < len && pem_is_space(pem[pos])) {
            pos++;
        }
        if (pos == len) {
            break;
        }

        if (len - pos < STRLEN_LIT(pem_begin_cert)
            || memcmp(pem + pos, pem_begin_cert, STRLEN_LIT(pem_begin_cert)) != 0)
        {
            if (len - pos > STRLEN_LIT(pem_begin_any)
                && memcmp(pem + pos, pem_begin_any, STRLEN_LIT(pem_begin_any)) == 0)
            {
                /* name the block type, only printable characters and only up to its dashes */
                inner = pem + pos + STRLEN_LIT(pem_begin_any);
                for (n = 0; n < sizeof(label) - 1 && inner + n < pem + len
                     && inner[n] != '-' && isprint((unsigned char) inner[n]); n++)
                {
                    label[n] = inner[n];
                }
                label[n] = '\0';
                acme_err_set(err, ACME_ERR_BADRESPONSE,
                             "unexpected PEM block \"%s\" in the certificate chain (only CERTIFICATE allowed)",
                             label);
            } else {
                acme_err_set(err, ACME_ERR_BADRESPONSE,
                             "unexpected data at byte %zu of the certificate chain", pos);
            }
            goto failed;
        }

        i = pos + STRLEN_LIT(pem_begin_cert);
        if (i < len && pem[i] != '\r' && pem[i] != '\n') {
            acme_err_set(err, ACME_ERR_BADRESPONSE, "malformed BEGIN line at byte %zu of the certificate chain",
                         pos);
            goto failed;
        }

        end = memmem(pem + i, len - i, pem_end_cert, STRLEN_LIT(pem_end_cert));
        inner = memmem(pem + i, len - i, pem_begin_any, STRLEN_LIT(pem_begin_any));
        if (end == NULL || (inner != NULL && inner < end)) {
            acme_err_set(err, ACME_ERR_BADRESPONSE,
                         "truncated certificate %zu in the chain (no END CERTIFICATE line)",
                         (size_t) sk_X509_num(sk));
            goto failed;
        }
        blen = (size_t) (end - (pem + pos)) + STRLEN_LIT(pem_end_cert);

        if (sk_X509_num(sk) >= ACME_CHAIN_MAX_CERTS) {
            acme_err_set(err, ACME_ERR_BADRESPONSE, "more than %d certificates in the chain",
                         ACME_CHAIN_MAX_CERTS);
            goto failed;
        }

        x = pem_block_to_x509(pem + pos, blen, (size_t) sk_X509_num(sk), err);
        if (x == NULL) {
            goto failed;
        }
        if (sk_X509_push(sk, x) <= 0) {
            X509_free(x);
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            goto failed;
        }
        pos += blen;
    }

    if (sk_X509_num(sk) == 0) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "no certificate in the chain");
        goto failed;
    }

    *chain = sk;
    return 0;

failed:
    acme_chain_free(sk);
    return -1;
}

char *
acme_pem_chain_string(STACK_OF(X509) *chain, size_t *len, acme_err_t *err)
{
    BIO   *bio;
    char  *data, *out;
    long   n;
    int    i;

    if (chain == NULL || sk_X509_num(chain) <= 0) {
        acme_err_set(err, ACME_ERR_INPUT, "empty certificate chain");
        return NULL;
    }

    bio = BIO_new(BIO_s_mem());
    if (bio == NULL) {
        acme_err_ssl(err, "cannot allocate a BIO");
        return NULL;
    }
    for (i = 0; i < sk_X509_num(chain); i++) {
        if (PEM_write_bio_X509(bio, sk_X509_value(chain, i)) != 1) {
            acme_err_ssl(err, "cannot encode certificate %d of the chain", i);
            BIO_free(bio);
            return NULL;
        }
    }

    n = BIO_get_mem_data(bio, &data);
    if (n <= 0) {
        acme_err_ssl(err, "cannot encode the chain");
        BIO_free(bio);
        return NULL;
    }
    out = acme_strndup(data, (size_t) n);
    BIO_free(bio);
    if (out == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    if (len != NULL) {
        *len = (size_t) n;
    }
    return out;
}

char *
acme_x509_to_pem(X509 *cert, size_t *len, acme_err_t *err)
{
    STACK_OF(X509)  *one;
    char            *out;

    if (cert == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "no certificate");
        return NULL;
    }
    one = sk_X509_new_null();
    if (one == NULL || sk_X509_push(one, cert) <= 0) {
        sk_X509_free(one);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    out = acme_pem_chain_string(one, len, err);
    sk_X509_free(one);
    return out;
}

void
acme_chain_free(STACK_OF(X509) *chain)
{
    if (chain != NULL) {
        sk_X509_pop_free(chain, X509_free);
    }
}

static int
asn1_time_to_time_t(const ASN1_TIME *t, time_t *out)
{
    struct tm  tm;

    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1) {
        ERR_clear_error();
        return -1;
    }
    *out = timegm(&tm);
    return 0;
}

/* The (first) commonName of a name as a malloc'd UTF-8 string; NULL when absent or holding a NUL. */
static char *
name_cn(const X509_NAME *nm)
{
    const X509_NAME_ENTRY  *e;
    unsigned char          *utf8 = NULL;
    char                   *s;
    int                     idx, n;

    if (nm == NULL) {
        return NULL;
    }
    idx = X509_NAME_get_index_by_NID(nm, NID_commonName, -1);
    if (idx < 0) {
        return NULL;
    }
    e = X509_NAME_get_entry(nm, idx);
    n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(e));
    if (n < 0) {
        ERR_clear_error();
        return NULL;
    }
    if (memchr(utf8, '\0', (size_t) n) != NULL) {
        OPENSSL_free(utf8);
        return NULL;
    }
    s = acme_strndup((const char *) utf8, (size_t) n);
    OPENSSL_free(utf8);
    return s;
}

/* A SAN entry as text (DNS name, or IP address), malloc'd; NULL for other or malformed entries. */
static char *
general_name_text(const GENERAL_NAME *gn)
{
    const unsigned char  *d;
    char                  buf[INET6_ADDRSTRLEN];
    int                   n, i;

    if (gn->type == GEN_DNS) {
        d = ASN1_STRING_get0_data(gn->d.dNSName);
        n = ASN1_STRING_length(gn->d.dNSName);
        if (n <= 0) {
            return NULL;
        }
        for (i = 0; i < n; i++) {
            if (d[i] <= 0x20 || d[i] >= 0x7f) {
                return NULL;
            }
        }
        return acme_strndup((const char *) d, (size_t) n);
    }

    if (gn->type == GEN_IPADD) {
        d = ASN1_STRING_get0_data(gn->d.iPAddress);
        n = ASN1_STRING_length(gn->d.iPAddress);
        if (n == 4 && inet_ntop(AF_INET, d, buf, sizeof(buf)) != NULL) {
            return acme_strdup(buf);
        }
        if (n == 16 && inet_ntop(AF_INET6, d, buf, sizeof(buf)) != NULL) {
            return acme_strdup(buf);
        }
    }
    return NULL;
}

int
acme_cert_info(X509 *cert, acme_cert_info_t *info, acme_err_t *err)
{
    GENERAL_NAMES   *gens;
    BIGNUM          *bn;
    char            *hex, *s;
    int              i, num;

    if (info == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "no certificate info output");
        return -1;
    }
    memset(info, 0, sizeof(*info));
    if (cert == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "no certificate");
        return -1;
    }

    if (asn1_time_to_time_t(X509_get0_notBefore(cert), &info->not_before) != 0
        || asn1_time_to_time_t(X509_get0_notAfter(cert), &info->not_after) != 0)
    {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "the certificate has an invalid validity period");
        return -1;
    }

    info->issuer_cn = name_cn(X509_get_issuer_name(cert));

    bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
    hex = bn ? BN_bn2hex(bn) : NULL;
    BN_free(bn);
    if (hex == NULL) {
        acme_err_ssl(err, "cannot read the certificate's serial number");
        goto failed;
    }
    info->serial_hex = acme_strdup(hex);
    OPENSSL_free(hex);
    if (info->serial_hex == NULL) {
        goto nomem;
    }
    for (s = info->serial_hex; *s; s++) {
        *s = (char) tolower((unsigned char) *s);
    }

    gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    if (gens != NULL) {
        num = sk_GENERAL_NAME_num(gens);
        info->names = calloc((size_t) (num > 0 ? num : 1), sizeof(char *));
        if (info->names == NULL) {
            GENERAL_NAMES_free(gens);
            goto nomem;
        }
        for (i = 0; i < num; i++) {
            s = general_name_text(sk_GENERAL_NAME_value(gens, i));
            if (s != NULL) {
                info->names[info->nnames++] = s;
            }
        }
        GENERAL_NAMES_free(gens);
    }
    ERR_clear_error();
    return 0;

nomem:
    acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
failed:
    acme_cert_info_free(info);
    return -1;
}

void
acme_cert_info_free(acme_cert_info_t *info)
{
    size_t i;

    if (info == NULL) {
        return;
    }
    free(info->issuer_cn);
    free(info->serial_hex);
    for (i = 0; i < info->nnames; i++) {
        free(info->names[i]);
    }
    free(info->names);
    memset(info, 0, sizeof(*info));
}

/* 1 when the SAN dNSName san (not NUL-terminated) covers name: exact, or "*.rest" for one more label. */
static int
dns_covers(const unsigned char *san, size_t sanlen, const char *name)
{
    const char  *dot;
    size_t       nlen;

    if (sanlen == 0 || memchr(san, '\0', sanlen) != NULL) {
        return 0;
    }
    nlen = strlen(name);
    if (sanlen == nlen && strncasecmp((const char *) san, name, nlen) == 0) {
        return 1;
    }
    if (sanlen > 2 && san[0] == '*' && san[1] == '.' && name[0] != '*') {
        dot = strchr(name, '.');
        if (dot == NULL || dot == name) {
            return 0;
        }
        dot++;
        return strlen(dot) == sanlen - 2 && strncasecmp((const char *) san + 2, dot, sanlen - 2) == 0;
    }
    return 0;
}

static int
san_covers(GENERAL_NAMES *gens, const acme_ident_t *id)
{
    const GENERAL_NAME  *gn;
    unsigned char        ip[16];
    size_t               iplen = 0;
    int                  i;

    if (id->type == ACME_IDENT_IP) {
        iplen = acme_ip_from_text(id->value, ip);
        if (iplen == 0) {
            return 0;
        }
    }

    for (i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
        gn = sk_GENERAL_NAME_value(gens, i);

        if (id->type == ACME_IDENT_DNS && gn->type == GEN_DNS) {
            if (dns_covers(ASN1_STRING_get0_data(gn->d.dNSName),
                           (size_t) ASN1_STRING_length(gn->d.dNSName), id->value))
            {
                return 1;
            }

        } else if (id->type == ACME_IDENT_IP && gn->type == GEN_IPADD) {
            if ((size_t) ASN1_STRING_length(gn->d.iPAddress) == iplen
                && memcmp(ASN1_STRING_get0_data(gn->d.iPAddress), ip, iplen) == 0)
            {
                return 1;
            }
        }
    }
    return 0;
}

int
acme_chain_check(STACK_OF(X509) *chain, EVP_PKEY *key, const acme_ident_t *ids, size_t n,
    time_t now, acme_err_t *err)
{
    X509           *leaf, *cert, *issuer;
    EVP_PKEY       *pub;
    GENERAL_NAMES  *gens;
    time_t          nb, na;
    size_t          i;
    int             j, num, rc;

    if (chain == NULL || sk_X509_num(chain) <= 0) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "empty certificate chain");
        return -1;
    }
    if (key == NULL || (ids == NULL && n > 0)) {
        acme_err_set(err, ACME_ERR_INPUT, "chain check: no key or no identifiers");
        return -1;
    }
    leaf = sk_X509_value(chain, 0);

    pub = X509_get0_pubkey(leaf);
    if (pub == NULL || EVP_PKEY_eq(pub, key) != 1) {
        ERR_clear_error();
        acme_err_set(err, ACME_ERR_BADRESPONSE, "the certificate's public key is not our certificate key");
        return -1;
    }

    gens = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
    for (i = 0; i < n; i++) {
        if (ids[i].value == NULL || (ids[i].type != ACME_IDENT_DNS && ids[i].type != ACME_IDENT_IP)) {
            acme_err_set(err, ACME_ERR_INPUT, "chain check: invalid identifier %zu", i);
            GENERAL_NAMES_free(gens);
            return -1;
        }
        if (gens == NULL || !san_covers(gens, &ids[i])) {
            acme_err_set(err, ACME_ERR_BADRESPONSE, "the certificate does not cover identifier %s:%.256s",
                         ids[i].type == ACME_IDENT_DNS ? "dns" : "ip", ids[i].value);
            GENERAL_NAMES_free(gens);
            return -1;
        }
    }
    GENERAL_NAMES_free(gens);
    ERR_clear_error();

    if (asn1_time_to_time_t(X509_get0_notBefore(leaf), &nb) != 0
        || asn1_time_to_time_t(X509_get0_notAfter(leaf), &na) != 0)
    {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "the certificate has an invalid validity period");
        return -1;
    }
    if (now < nb) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "the certificate is not valid yet (notBefore is %lld s ahead)",
                     (long long) (nb - now));
        return -1;
    }
    if (now > na) {
        acme_err_set(err, ACME_ERR_BADRESPONSE, "the certificate has expired (notAfter was %lld s ago)",
                     (long long) (now - na));
        return -1;
    }

    num = sk_X509_num(chain);
    for (j = 0; j + 1 < num; j++) {
        cert = sk_X509_value(chain, j);
        issuer = sk_X509_value(chain, j + 1);

        rc = X509_check_issued(issuer, cert);
        if (rc != X509_V_OK) {
            ERR_clear_error();
            acme_err_set(err, ACME_ERR_BADRESPONSE,
                         "certificate %d of the chain (0 = leaf) was not issued by certificate %d: %s",
                         j, j + 1, X509_verify_cert_error_string(rc));
            return -1;
        }

        if (asn1_time_to_time_t(X509_get0_notBefore(issuer), &nb) != 0
            || asn1_time_to_time_t(X509_get0_notAfter(issuer), &na) != 0
            || now < nb || now > na)
        {
            acme_err_set(err, ACME_ERR_BADRESPONSE,
                         "certificate %d of the chain (0 = leaf) is expired or not valid yet", j + 1);
            return -1;
        }

        pub = X509_get0_pubkey(issuer);
        if (pub == NULL || X509_verify(cert, pub) != 1) {
            ERR_clear_error();
            acme_err_set(err, ACME_ERR_BADRESPONSE,
                         "the signature of certificate %d of the chain (0 = leaf) does not verify with "
                         "the key of certificate %d", j, j + 1);
            return -1;
        }
    }

    return 0;
}

int
acme_chain_issuer_matches(STACK_OF(X509) *chain, const char *name)
{
    char  *cn;
    int    n, match;

    n = chain != NULL ? sk_X509_num(chain) : 0;
    if (n <= 0 || name == NULL || name[0] == '\0') {
        return 0;
    }
    /* the top certificate (last, closest to the root) names the root the chain leads to; an issuer
     * lower down (the leaf's intermediate) is shared by alternates and decides nothing */
    cn = name_cn(X509_get_issuer_name(sk_X509_value(chain, n - 1)));
    match = cn != NULL && strcmp(cn, name) == 0;
    free(cn);
    return match;
}

char *
acme_ari_cert_id(X509 *leaf, acme_err_t *err)
{
    AUTHORITY_KEYID       *akid;
    const ASN1_INTEGER    *serial;
    unsigned char         *der = NULL;
    const unsigned char   *p;
    char                  *a, *b, *out;
    long                   clen;
    int                    dlen, tag, cls, r;

    if (leaf == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "no certificate");
        return NULL;
    }

    akid = X509_get_ext_d2i(leaf, NID_authority_key_identifier, NULL, NULL);
    if (akid == NULL || akid->keyid == NULL || ASN1_STRING_length(akid->keyid) <= 0) {
        ERR_clear_error();
        AUTHORITY_KEYID_free(akid);
        acme_err_set(err, ACME_ERR_BADRESPONSE, "the certificate has no Authority Key Identifier keyIdentifier");
        return NULL;
    }
    a = acme_b64url_encode(ASN1_STRING_get0_data(akid->keyid), (size_t) ASN1_STRING_length(akid->keyid));
    AUTHORITY_KEYID_free(akid);
    if (a == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }

    /* the serial number's DER INTEGER content octets (two's complement, minimal, sign byte kept) */
    serial = X509_get0_serialNumber(leaf);
    dlen = i2d_ASN1_INTEGER(serial, &der);
    if (dlen <= 0) {
        acme_err_ssl(err, "cannot encode the certificate's serial number");
        free(a);
        return NULL;
    }
    p = der;
    r = ASN1_get_object(&p, &clen, &tag, &cls, dlen);
    if ((r & 0x80) || tag != V_ASN1_INTEGER || cls != V_ASN1_UNIVERSAL || clen <= 0
        || p + clen != der + dlen)
    {
        ERR_clear_error();
        acme_err_set(err, ACME_ERR_BADRESPONSE, "the certificate's serial number is malformed");
        OPENSSL_free(der);
        free(a);
        return NULL;
    }
    b = acme_b64url_encode(p, (size_t) clen);
    OPENSSL_free(der);
    if (b == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        free(a);
        return NULL;
    }

    out = acme_sprintf("%s.%s", a, b);
    free(a);
    free(b);
    if (out == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    }
    return out;
}

size_t
acme_ip_from_text(const char *s, unsigned char out[16])
{
    if (s == NULL) {
        return 0;
    }
    if (inet_pton(AF_INET, s, out) == 1) {
        return 4;
    }
    if (inet_pton(AF_INET6, s, out) == 1) {
        return 16;
    }
    return 0;
}

int
acme_san_push(GENERAL_NAMES *gens, acme_ident_type_t type, const char *value, acme_err_t *err)
{
    GENERAL_NAME       *gn;
    ASN1_IA5STRING     *ia5;
    ASN1_OCTET_STRING  *os;
    unsigned char       ip[16];
    size_t              len, i, iplen;

    if (gens == NULL || value == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "no subjectAltName value");
        return -1;
    }

    gn = GENERAL_NAME_new();
    if (gn == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }

    if (type == ACME_IDENT_DNS) {
        len = strlen(value);
        if (len == 0 || len > 253) {
            acme_err_set(err, ACME_ERR_INPUT, "invalid DNS name length (%zu)", len);
            GENERAL_NAME_free(gn);
            return -1;
        }
        for (i = 0; i < len; i++) {
            if (!isalnum((unsigned char) value[i]) && value[i] != '-' && value[i] != '.'
                && value[i] != '_' && value[i] != '*')
            {
                acme_err_set(err, ACME_ERR_INPUT, "invalid character in DNS name \"%.253s\"", value);
                GENERAL_NAME_free(gn);
                return -1;
            }
        }
        ia5 = ASN1_IA5STRING_new();
        if (ia5 == NULL || ASN1_STRING_set(ia5, value, (int) len) != 1) {
            ASN1_IA5STRING_free(ia5);
            GENERAL_NAME_free(gn);
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            return -1;
        }
        GENERAL_NAME_set0_value(gn, GEN_DNS, ia5);

    } else if (type == ACME_IDENT_IP) {
        iplen = acme_ip_from_text(value, ip);
        if (iplen == 0) {
            acme_err_set(err, ACME_ERR_INPUT, "invalid IP address \"%.64s\"", value);
            GENERAL_NAME_free(gn);
            return -1;
        }
        os = ASN1_OCTET_STRING_new();
        if (os == NULL || ASN1_OCTET_STRING_set(os, ip, (int) iplen) != 1) {
            ASN1_OCTET_STRING_free(os);
            GENERAL_NAME_free(gn);
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            return -1;
        }
        GENERAL_NAME_set0_value(gn, GEN_IPADD, os);

    } else {
        acme_err_set(err, ACME_ERR_INPUT, "unknown identifier type %d", (int) type);
        GENERAL_NAME_free(gn);
        return -1;
    }

    if (sk_GENERAL_NAME_push(gens, gn) <= 0) {
        GENERAL_NAME_free(gn);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    return 0;
}

int
acme_x509_random_serial(X509 *cert, acme_err_t *err)
{
    unsigned char  buf[16];
    BIGNUM        *bn;
    int            ok;

    if (RAND_bytes(buf, sizeof(buf)) != 1) {
        acme_err_ssl(err, "no random bytes for a serial number");
        return -1;
    }
    /* positive, never zero, 16 content octets */
    buf[0] = (unsigned char) ((buf[0] & 0x7f) | 0x40);

    bn = BN_bin2bn(buf, sizeof(buf), NULL);
    ok = bn != NULL && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) != NULL;
    BN_free(bn);
    if (!ok) {
        acme_err_ssl(err, "cannot set the serial number");
        return -1;
    }
    return 0;
}

int
acme_selfsigned_key(const char *const *names, size_t n, EVP_PKEY *pk, X509 **cert, acme_err_t *err)
{
    X509                *x = NULL;
    X509_NAME           *subj = NULL;
    GENERAL_NAMES       *gens = NULL;
    BASIC_CONSTRAINTS   *bc = NULL;
    EXTENDED_KEY_USAGE  *eku = NULL;
    unsigned char        ip[16];
    size_t               i;

    if (cert == NULL || pk == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "self-signed: no output or no key");
        return -1;
    }
    *cert = NULL;
    if (names == NULL || n == 0) {
        acme_err_set(err, ACME_ERR_INPUT, "self-signed: no names");
        return -1;
    }
    for (i = 0; i < n; i++) {
        if (names[i] == NULL || names[i][0] == '\0') {
            acme_err_set(err, ACME_ERR_INPUT, "self-signed: empty name %zu", i);
            return -1;
        }
    }

    gens = GENERAL_NAMES_new();
    if (gens == NULL) {
        goto nomem;
    }
    for (i = 0; i < n; i++) {
        if (acme_san_push(gens,
                          acme_ip_from_text(names[i], ip) ? ACME_IDENT_IP : ACME_IDENT_DNS,
                          names[i], err) != 0)
        {
            acme_err_prefix(err, "self-signed");
            goto failed;
        }
    }

    x = X509_new();
    subj = X509_NAME_new();
    if (x == NULL || subj == NULL) {
        goto nomem;
    }
    if (strlen(names[0]) <= ACME_CN_MAX
        && X509_NAME_add_entry_by_NID(subj, NID_commonName, MBSTRING_UTF8,
                                      (const unsigned char *) names[0], -1, -1, 0) != 1)
    {
        acme_err_ssl(err, "self-signed: cannot set the subject");
        goto failed;
    }

    if (X509_set_version(x, X509_VERSION_3) != 1
        || acme_x509_random_serial(x, err) != 0
        || X509_set_subject_name(x, subj) != 1
        || X509_set_issuer_name(x, subj) != 1
        || X509_gmtime_adj(X509_getm_notBefore(x), -3600) == NULL
        || X509_time_adj_ex(X509_getm_notAfter(x), 365, 0, NULL) == NULL
        || X509_set_pubkey(x, pk) != 1)
    {
        acme_err_ssl(err, "self-signed: cannot fill in the certificate");
        goto failed;
    }

    bc = BASIC_CONSTRAINTS_new();
    eku = sk_ASN1_OBJECT_new_null();
    if (bc == NULL || eku == NULL || sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_server_auth)) <= 0) {
        goto nomem;
    }
    bc->ca = 0;

    if (X509_add1_ext_i2d(x, NID_basic_constraints, bc, 1, X509V3_ADD_DEFAULT) != 1
        || X509_add1_ext_i2d(x, NID_ext_key_usage, eku, 0, X509V3_ADD_DEFAULT) != 1
        || X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT) != 1)
    {
        acme_err_ssl(err, "self-signed: cannot add extensions");
        goto failed;
    }

    if (X509_sign(x, pk, EVP_sha256()) <= 0) {
        acme_err_ssl(err, "self-signed: cannot sign");
        goto failed;
    }

    BASIC_CONSTRAINTS_free(bc);
    sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
    GENERAL_NAMES_free(gens);
    X509_NAME_free(subj);
    *cert = x;
    return 0;

nomem:
    acme_err_set(err, ACME_ERR_INTERNAL, "self-signed: out of memory");
failed:
    BASIC_CONSTRAINTS_free(bc);
    sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
    GENERAL_NAMES_free(gens);
    X509_NAME_free(subj);
    X509_free(x);
    return -1;
}

int
acme_selfsigned(const char *const *names, size_t n, const acme_keyspec_t *ks, X509 **cert,
    EVP_PKEY **key, acme_err_t *err)
{
    acme_keyspec_t   spec = ks != NULL ? *ks : ACME_KEYSPEC_DEFAULT;
    EVP_PKEY        *pk;

    if (cert == NULL || key == NULL) {
        acme_err_set(err, ACME_ERR_INPUT, "self-signed: no output");
        return -1;
    }
    *cert = NULL;
    *key = NULL;
    pk = acme_key_generate(&spec, err);
    if (pk == NULL) {
        acme_err_prefix(err, "self-signed");
        return -1;
    }
    if (acme_selfsigned_key(names, n, pk, cert, err) != 0) {
        EVP_PKEY_free(pk);
        return -1;
    }
    *key = pk;
    return 0;
}
