/* AES-256-GCM sealing of secret store values (see acme_aead.h). */
#include "acme_aead.h"
#include "acme_b64.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <openssl/err.h>
#include <openssl/core_names.h>
#include <openssl/params.h>

#define AEAD_KEY_LEN    32
#define AEAD_NONCE_LEN  12
#define AEAD_TAG_LEN    16
#define AEAD_FILE_MAX   4096
#define AEAD_KID_LEN    8
#define AEAD_VALUE_MAX  (16 * 1024 * 1024)

struct acme_aead_key_s {
    unsigned char  key[AEAD_KEY_LEN];
    unsigned char  mac_key[AEAD_KEY_LEN];     /* HKDF subkey of key for HMACs */
    char           kid[AEAD_KID_LEN + 1];
};

static int
aead_hkdf(const unsigned char *ikm, size_t ikmlen, const char *info, unsigned char out[AEAD_KEY_LEN])
{
    EVP_PKEY_CTX  *pctx;
    size_t         outlen = AEAD_KEY_LEN;
    int            ok;

    pctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
    if (pctx == NULL) {
        return -1;
    }
    ok = EVP_PKEY_derive_init(pctx) > 0
         && EVP_PKEY_CTX_set_hkdf_md(pctx, EVP_sha256()) > 0
         && EVP_PKEY_CTX_set1_hkdf_salt(pctx, (const unsigned char *) "acme-store", 10) > 0
         && EVP_PKEY_CTX_set1_hkdf_key(pctx, ikm, (int) ikmlen) > 0
         && EVP_PKEY_CTX_add1_hkdf_info(pctx, (const unsigned char *) info, strlen(info)) > 0
         && EVP_PKEY_derive(pctx, out, &outlen) > 0
         && outlen == AEAD_KEY_LEN;
    EVP_PKEY_CTX_free(pctx);
    return ok ? 0 : -1;
}

static void
aead_set_kid(acme_aead_key_t *k)
{
    static const char   hex[] = "0123456789abcdef";
    unsigned char       md[EVP_MAX_MD_SIZE], in[17 + AEAD_KEY_LEN];
    unsigned int        mdlen = 0;
    int                 i;

    memcpy(in, "acme-store-key-id", 17);
    memcpy(in + 17, k->key, AEAD_KEY_LEN);
    if (EVP_Digest(in, sizeof(in), md, &mdlen, EVP_sha256(), NULL) != 1) {
        memset(md, 0, sizeof(md));
    }
    OPENSSL_cleanse(in, sizeof(in));
    for (i = 0; i < AEAD_KID_LEN / 2; i++) {
        k->kid[2 * i] = hex[md[i] >> 4];
        k->kid[2 * i + 1] = hex[md[i] & 15];
    }
    k->kid[AEAD_KID_LEN] = '\0';
    OPENSSL_cleanse(md, sizeof(md));
}

acme_aead_key_t *
acme_aead_key_from_bytes(const void *data, size_t len, acme_err_t *err)
{
    const unsigned char  *p = data, *s, *e;
    acme_aead_key_t      *k;
    size_t                i;
    int                   hi, lo, rc = 0;

    k = calloc(1, sizeof(*k));
    if (k == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    /* 64 hex digits, maybe with whitespace around them */
    s = p;
    e = p + len;
    while (s < e && (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')) {
        s++;
    }
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n')) {
        e--;
    }
    if (e - s == 2 * AEAD_KEY_LEN) {
        for (i = 0; i < AEAD_KEY_LEN; i++) {
            hi = acme_hexval(s[2 * i]);
            lo = acme_hexval(s[2 * i + 1]);
            if (hi < 0 || lo < 0) {
                break;
            }
            k->key[i] = (unsigned char) (hi << 4 | lo);
        }
        if (i == AEAD_KEY_LEN) {
            goto derived;
        }
    }
    if (len == AEAD_KEY_LEN) {
        memcpy(k->key, p, AEAD_KEY_LEN);
    } else if (len > AEAD_KEY_LEN) {
        rc = aead_hkdf(p, len, "acme-store-aead-v1", k->key);
    } else {
        acme_err_set(err, ACME_ERR_CONFIG, "the key is too short (%zu bytes; 32 raw bytes, 64 hex digits or "
                     "at least 32 bytes to derive a key from)", len);
        acme_aead_key_free(k);
        return NULL;
    }
    if (rc != 0) {
        goto failed;
    }

derived:
    /* the MAC key is a subkey: independent of the sealing key, which stays as it was */
    if (aead_hkdf(k->key, AEAD_KEY_LEN, "acme-store-mac-v1", k->mac_key) != 0) {
        goto failed;
    }
    aead_set_kid(k);
    return k;

failed:
    acme_err_ssl(err, "HKDF failed");
    acme_aead_key_free(k);
    return NULL;
}

acme_aead_key_t *
acme_aead_key_load(const char *file, acme_err_t *err)
{
    struct stat       sb;
    unsigned char     buf[AEAD_FILE_MAX + 1];
    acme_aead_key_t  *k;
    size_t            have = 0;
    ssize_t           n;
    int               fd;

    if (file == NULL || file[0] == '\0') {
        acme_err_set(err, ACME_ERR_CONFIG, "no storage key file given");
        return NULL;
    }
    fd = open(file, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "storage key file %s: %s", file, strerror(errno));
        return NULL;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        acme_err_set(err, ACME_ERR_CONFIG, "storage key file %s: not a regular file", file);
        close(fd);
        return NULL;
    }
    if (sb.st_mode & (S_IRWXO | S_IWGRP)) {
        acme_err_set(err, ACME_ERR_CONFIG, "storage key file %s: others can read or change it (mode %04o); "
                     "chmod 600 it", file, (unsigned) (sb.st_mode & 07777));
        close(fd);
        return NULL;
    }
    for ( ;; ) {
        n = read(fd, buf + have, sizeof(buf) - have);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            acme_err_set(err, ACME_ERR_CONFIG, "storage key file %s: %s", file, strerror(errno));
            close(fd);
            OPENSSL_cleanse(buf, sizeof(buf));
            return NULL;
        }
        if (n == 0 || have + (size_t) n == sizeof(buf)) {
            have += (size_t) n;
            break;
        }
        have += (size_t) n;
    }
    close(fd);
    if (have > AEAD_FILE_MAX) {
        acme_err_set(err, ACME_ERR_CONFIG, "storage key file %s: larger than %d bytes", file, AEAD_FILE_MAX);
        OPENSSL_cleanse(buf, sizeof(buf));
        return NULL;
    }
    k = acme_aead_key_from_bytes(buf, have, err);
    OPENSSL_cleanse(buf, sizeof(buf));
    if (k == NULL) {
        acme_err_prefix(err, "storage key file %s", file);
    }
    return k;
}

void
acme_aead_key_free(acme_aead_key_t *k)
{
    if (k != NULL) {
        OPENSSL_cleanse(k, sizeof(*k));
        free(k);
    }
}

const char *
acme_aead_key_id(const acme_aead_key_t *k)
{
    return k ? k->kid : "";
}

int
acme_aead_is_sealed(const void *data, size_t len)
{
    return data != NULL && len >= ACME_AEAD_MAGIC_LEN && memcmp(data, ACME_AEAD_MAGIC, ACME_AEAD_MAGIC_LEN) == 0;
}

void
acme_aead_sealed_kid(const void *data, size_t len, char kid[9])
{
    const char  *p = data;
    size_t       i;

    kid[0] = '\0';
    if (!acme_aead_is_sealed(data, len) || len < ACME_AEAD_MAGIC_LEN + AEAD_KID_LEN + 1
        || p[ACME_AEAD_MAGIC_LEN + AEAD_KID_LEN] != ':')
    {
        return;
    }
    for (i = 0; i < AEAD_KID_LEN; i++) {
        if (acme_hexval(p[ACME_AEAD_MAGIC_LEN + i]) < 0) {
            kid[0] = '\0';
            return;
        }
        kid[i] = p[ACME_AEAD_MAGIC_LEN + i];
    }
    kid[AEAD_KID_LEN] = '\0';
}

int
acme_aead_seal(const acme_aead_key_t *k, const char *aad, const void *pt, size_t ptlen, char **out,
    size_t *outlen, acme_err_t *err)
{
    EVP_CIPHER_CTX  *c = NULL;
    unsigned char   *raw = NULL;
    char            *b64 = NULL, *res = NULL;
    size_t           rawlen;
    int              n, ok = 0;

    *out = NULL;
    if (outlen != NULL) {
        *outlen = 0;
    }
    if (k == NULL || aad == NULL || (pt == NULL && ptlen > 0) || ptlen > AEAD_VALUE_MAX) {
        acme_err_set(err, ACME_ERR_INTERNAL, "seal: bad arguments");
        return -1;
    }
    rawlen = AEAD_NONCE_LEN + ptlen + AEAD_TAG_LEN;
    raw = malloc(rawlen);
    c = EVP_CIPHER_CTX_new();
    if (raw == NULL || c == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }
    if (RAND_bytes(raw, AEAD_NONCE_LEN) != 1) {
        acme_err_ssl(err, "seal: no random nonce");
        goto done;
    }
    if (EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1
        || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, AEAD_NONCE_LEN, NULL) != 1
        || EVP_EncryptInit_ex(c, NULL, NULL, k->key, raw) != 1
        || EVP_EncryptUpdate(c, NULL, &n, (const unsigned char *) aad, (int) strlen(aad)) != 1
        || (ptlen > 0 && EVP_EncryptUpdate(c, raw + AEAD_NONCE_LEN, &n, pt, (int) ptlen) != 1)
        || EVP_EncryptFinal_ex(c, raw + AEAD_NONCE_LEN + ptlen, &n) != 1
        || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, AEAD_TAG_LEN, raw + AEAD_NONCE_LEN + ptlen) != 1)
    {
        acme_err_ssl(err, "seal: AES-256-GCM failed");
        goto done;
    }
    b64 = acme_b64url_encode(raw, rawlen);
    res = b64 ? acme_sprintf("%s%s:%s", ACME_AEAD_MAGIC, k->kid, b64) : NULL;
    if (res == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }
    *out = res;
    if (outlen != NULL) {
        *outlen = strlen(res);
    }
    ok = 1;

done:
    EVP_CIPHER_CTX_free(c);
    free(raw);
    free(b64);
    return ok ? 0 : -1;
}

int
acme_aead_open(const acme_aead_key_t *k, const char *aad, const void *sealed, size_t len, char **pt,
    size_t *ptlen, acme_err_t *err)
{
    EVP_CIPHER_CTX  *c = NULL;
    unsigned char   *raw = NULL;
    char            *res = NULL, kid[AEAD_KID_LEN + 1];
    const char      *s = sealed;
    size_t           rawlen = 0, clen, off = ACME_AEAD_MAGIC_LEN + AEAD_KID_LEN + 1;
    int              n, ok = 0;

    *pt = NULL;
    if (ptlen != NULL) {
        *ptlen = 0;
    }
    acme_aead_sealed_kid(sealed, len, kid);
    if (kid[0] == '\0') {
        acme_err_set(err, ACME_ERR_STORE, "not a sealed value (damaged header)");
        return -1;
    }
    if (k == NULL) {
        acme_err_set(err, ACME_ERR_STORE, "the value is encrypted (storage key id %s) and no storage key is "
                     "configured", kid);
        return -1;
    }
    if (strcmp(kid, k->kid) != 0) {
        acme_err_set(err, ACME_ERR_STORE, "the value is encrypted with another storage key (key id %s; the "
                     "configured key has id %s)", kid, k->kid);
        return -1;
    }
    if (aad == NULL || acme_b64url_decode(s + off, len - off, &raw, &rawlen) != 0
        || rawlen < AEAD_NONCE_LEN + AEAD_TAG_LEN)
    {
        acme_err_set(err, ACME_ERR_STORE, "the encrypted value is damaged (bad encoding)");
        goto done;
    }
    clen = rawlen - AEAD_NONCE_LEN - AEAD_TAG_LEN;
    res = malloc(clen + 1);
    c = EVP_CIPHER_CTX_new();
    if (res == NULL || c == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }
    if (EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1
        || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, AEAD_NONCE_LEN, NULL) != 1
        || EVP_DecryptInit_ex(c, NULL, NULL, k->key, raw) != 1
        || EVP_DecryptUpdate(c, NULL, &n, (const unsigned char *) aad, (int) strlen(aad)) != 1
        || (clen > 0 && EVP_DecryptUpdate(c, (unsigned char *) res, &n, raw + AEAD_NONCE_LEN, (int) clen) != 1)
        || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, AEAD_TAG_LEN, raw + AEAD_NONCE_LEN + clen) != 1)
    {
        acme_err_ssl(err, "open: AES-256-GCM failed");
        goto done;
    }
    if (EVP_DecryptFinal_ex(c, (unsigned char *) res + clen, &n) != 1) {
        ERR_clear_error();
        acme_err_set(err, ACME_ERR_STORE, "the encrypted value does not authenticate (damaged, or moved from "
                     "another store key)");
        goto done;
    }
    res[clen] = '\0';
    *pt = res;
    res = NULL;
    if (ptlen != NULL) {
        *ptlen = clen;
    }
    ok = 1;

done:
    EVP_CIPHER_CTX_free(c);
    if (res != NULL) {
        acme_free_secret(res, clen + 1);
    }
    if (raw != NULL) {
        acme_free_secret(raw, rawlen);
    }
    return ok ? 0 : -1;
}

static int
aead_hmac(const acme_aead_key_t *k, const char *domain, const char *name, const void *data, size_t len,
    unsigned char tag[32])
{
    EVP_MAC       *mac;
    EVP_MAC_CTX   *c = NULL;
    OSSL_PARAM     params[2];
    size_t         tlen = 0;
    int            ok;

    mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (mac == NULL) {
        return -1;
    }
    params[0] = OSSL_PARAM_construct_utf8_string("digest", (char *) "SHA256", 0);
    params[1] = OSSL_PARAM_construct_end();
    c = EVP_MAC_CTX_new(mac);
    /* domain NUL name NUL data: neither part can be shifted into the other */
    ok = c != NULL
         && EVP_MAC_init(c, k->mac_key, AEAD_KEY_LEN, params) == 1
         && EVP_MAC_update(c, (const unsigned char *) domain, strlen(domain) + 1) == 1
         && EVP_MAC_update(c, (const unsigned char *) name, strlen(name) + 1) == 1
         && (len == 0 || EVP_MAC_update(c, data, len) == 1)
         && EVP_MAC_final(c, tag, &tlen, 32) == 1
         && tlen == 32;
    EVP_MAC_CTX_free(c);
    EVP_MAC_free(mac);
    return ok ? 0 : -1;
}

int
acme_aead_mac(const acme_aead_key_t *k, const char *domain, const char *name, const void *data, size_t len,
    char out[ACME_AEAD_MAC_MAX])
{
    unsigned char  tag[32];
    char          *b64;

    out[0] = '\0';
    if (k == NULL || domain == NULL || name == NULL || (data == NULL && len > 0)
        || aead_hmac(k, domain, name, data, len, tag) != 0)
    {
        ERR_clear_error();
        return -1;
    }
    b64 = acme_b64url_encode(tag, sizeof(tag));
    if (b64 == NULL) {
        return -1;
    }
    snprintf(out, ACME_AEAD_MAC_MAX, "%s%s:%s", ACME_AEAD_MAC_MAGIC, k->kid, b64);
    free(b64);
    return 0;
}

int
acme_aead_mac_check(const acme_aead_key_t *k, const char *domain, const char *name, const void *data,
    size_t len, const char *mac, size_t mac_len, acme_err_t *err)
{
    char  want[ACME_AEAD_MAC_MAX], kid[AEAD_KID_LEN + 1];

    kid[0] = '\0';
    if (mac_len >= ACME_AEAD_MAC_MAGIC_LEN + AEAD_KID_LEN + 1
        && memcmp(mac, ACME_AEAD_MAC_MAGIC, ACME_AEAD_MAC_MAGIC_LEN) == 0
        && mac[ACME_AEAD_MAC_MAGIC_LEN + AEAD_KID_LEN] == ':')
    {
        memcpy(kid, mac + ACME_AEAD_MAC_MAGIC_LEN, AEAD_KID_LEN);
        kid[AEAD_KID_LEN] = '\0';
    }
    if (kid[0] == '\0') {
        acme_err_set(err, ACME_ERR_STORE, "no valid MAC (damaged header)");
        return -1;
    }
    if (k == NULL) {
        acme_err_set(err, ACME_ERR_STORE, "the value carries a MAC (storage key id %.8s) and no storage key is "
                     "configured", kid);
        return -1;
    }
    if (strcmp(kid, k->kid) != 0) {
        acme_err_set(err, ACME_ERR_STORE, "the value carries a MAC of another storage key (key id %.8s; the "
                     "configured key has id %s)", kid, k->kid);
        return -1;
    }
    if (acme_aead_mac(k, domain, name, data, len, want) != 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "HMAC-SHA256 failed");
        return -1;
    }
    if (strlen(want) != mac_len || CRYPTO_memcmp(want, mac, mac_len) != 0) {
        OPENSSL_cleanse(want, sizeof(want));
        acme_err_set(err, ACME_ERR_STORE, "the MAC does not authenticate the value (forged, damaged, or moved "
                     "from another name)");
        return -1;
    }
    OPENSSL_cleanse(want, sizeof(want));
    return 0;
}
