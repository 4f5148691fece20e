/*
 * gencerts: pre-generate stored certificates in the state directory's layout (README "The state
 * directory", common/acme_store.h), fast, for start-time and idle measurements:
 *
 *   gencerts STATE_DIR FORMAT FIRST COUNT CA_URL
 *
 * FORMAT is a printf format for the name with one %d (e.g. "n%d.bench.example.org"); names FIRST ..
 * FIRST+COUNT-1. Each gets certs/<name>/fullchain.pem (a self-signed EC P-256 leaf for the name, valid
 * from yesterday for 90 days), privkey.pem (0600, its own fresh key) and meta.json (identifiers,
 * ecdsa:256, the CA URL, not_before/not_after, renew_at 60 days out, no ARI check pending), so the
 * scheduler sees a valid certificate that is not due. Files are written directly (no fsync): this is a
 * fixture generator, not the store.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

static void
die(const char *what)
{
    fprintf(stderr, "gencerts: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void
rfc3339(time_t t, char *buf, size_t n)
{
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void
write_file(const char *path, const char *data, size_t len, mode_t mode)
{
    FILE *f;
    int   fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);

    if (fd < 0) {
        die(path);
    }
    f = fdopen(fd, "w");
    if (fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        die(path);
    }
}

int
main(int argc, char **argv)
{
    const char  *state, *fmt, *ca;
    long         first, count, i;
    char         name[256], dir[4096], path[4200], san[300], nb[32], na[32], ra[32], ia[32];
    char        *meta;
    time_t       now = time(NULL);
    EVP_PKEY    *k;
    X509        *x;
    X509_NAME   *subj;
    X509_EXTENSION *ext;
    X509V3_CTX   v3;
    BIO         *b;
    char        *p;
    long         len;

    if (argc != 6) {
        fprintf(stderr, "usage: gencerts STATE_DIR NAME_FORMAT FIRST COUNT CA_URL\n");
        return 2;
    }
    state = argv[1];
    fmt = argv[2];
    first = atol(argv[3]);
    count = atol(argv[4]);
    ca = argv[5];

    snprintf(dir, sizeof(dir), "%s", state);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        die(dir);
    }
    snprintf(dir, sizeof(dir), "%s/certs", state);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        die(dir);
    }
    rfc3339(now - 86400, nb, sizeof(nb));
    rfc3339(now - 86400 + 90 * 86400, na, sizeof(na));
    rfc3339(now + 60 * 86400, ra, sizeof(ra));
    rfc3339(now - 3600, ia, sizeof(ia));

    for (i = first; i < first + count; i++) {
        snprintf(name, sizeof(name), fmt, (int) i);
        snprintf(dir, sizeof(dir), "%s/certs/%s", state, name);
        if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
            die(dir);
        }
        k = EVP_EC_gen("P-256");
        x = X509_new();
        X509_set_version(x, 2);
        ASN1_INTEGER_set_int64(X509_get_serialNumber(x), ((int64_t) now << 20) ^ i);
        X509_gmtime_adj(X509_getm_notBefore(x), -86400);
        X509_gmtime_adj(X509_getm_notAfter(x), 89L * 86400);
        subj = X509_get_subject_name(x);
        X509_NAME_add_entry_by_txt(subj, "CN", MBSTRING_ASC, (unsigned char *) name, -1, -1, 0);
        X509_set_issuer_name(x, subj);
        X509_set_pubkey(x, k);
        X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
        snprintf(san, sizeof(san), "DNS:%s", name);
        ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
        ext = X509V3_EXT_conf_nid(NULL, &v3, NID_ext_key_usage, "serverAuth");
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
        if (!X509_sign(x, k, EVP_sha256())) {
            fprintf(stderr, "gencerts: sign failed\n");
            return 1;
        }

        b = BIO_new(BIO_s_mem());
        PEM_write_bio_X509(b, x);
        len = BIO_get_mem_data(b, &p);
        snprintf(path, sizeof(path), "%s/fullchain.pem", dir);
        write_file(path, p, len, 0644);
        BIO_free(b);

        b = BIO_new(BIO_s_mem());
        PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
        len = BIO_get_mem_data(b, &p);
        snprintf(path, sizeof(path), "%s/privkey.pem", dir);
        write_file(path, p, len, 0600);
        BIO_free(b);

        if (asprintf(&meta,
                     "{\n  \"name\": \"%s\",\n  \"identifiers\": [\n    {\n      \"type\": \"dns\",\n"
                     "      \"value\": \"%s\"\n    }\n  ],\n  \"keyspec\": \"ecdsa:256\",\n"
                     "  \"ca\": \"%s\",\n  \"not_before\": \"%s\",\n  \"not_after\": \"%s\",\n"
                     "  \"issued_at\": \"%s\",\n  \"renew_at\": \"%s\",\n  \"failures\": 0\n}",
                     name, name, ca, nb, na, ia, ra) < 0) {
            die("asprintf");
        }
        snprintf(path, sizeof(path), "%s/meta.json", dir);
        write_file(path, meta, strlen(meta), 0644);
        free(meta);
        X509_free(x);
        EVP_PKEY_free(k);
    }
    return 0;
}
