/* Taking over nginx-acme's state: what is taken, what is skipped, once, and nginx-acme's files untouched. */
#include "unit.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include "acme_import.h"
#include "acme_loop.h"
#include "acme_store.h"
#include "acme_x509.h"

#define CA "https://ca.example/dir"

static char  dir[] = "/tmp/acme-import-test-XXXXXX";

static void
write_file(const char *name, const char *data, size_t len)
{
    char  path[256];
    int   fd;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t) len);
    close(fd);
}

static void
read_file(const char *name, char *buf, size_t size)
{
    char     path[256];
    FILE    *f;
    size_t   n;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "r");
    assert_non_null(f);
    n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* "<base>.crt" and "<base>.key" for names, self-signed, with key (or a fresh one when key is NULL). */
static void
plant_cert(const char *base, const char *const *names, size_t n, EVP_PKEY *key, EVP_PKEY *crt_key)
{
    X509        *x = NULL;
    EVP_PKEY    *k = NULL;
    acme_err_t   err;
    char        *pem, file[128];
    size_t       len;
    acme_keyspec_t ks = ACME_KEYSPEC_DEFAULT;

    if (crt_key != NULL) {
        assert_int_equal(acme_selfsigned_key(names, n, crt_key, &x, &err), 0);
    } else {
        assert_int_equal(acme_selfsigned(names, n, &ks, &x, &k, &err), 0);
    }
    pem = acme_x509_to_pem(x, &len, &err);
    assert_non_null(pem);
    snprintf(file, sizeof(file), "%s.crt", base);
    write_file(file, pem, len);
    free(pem);
    pem = acme_key_to_pem(key ? key : k, &len, &err);
    assert_non_null(pem);
    snprintf(file, sizeof(file), "%s.key", base);
    write_file(file, pem, len);
    acme_free_secret(pem, len);
    X509_free(x);
    EVP_PKEY_free(k);
}

/* "<base>.crt" and "<base>.key" for names, expired a minute ago. */
static void
plant_expired(const char *base, const char *const *names, size_t n)
{
    X509           *x = NULL;
    EVP_PKEY       *k = NULL;
    acme_err_t      err;
    acme_keyspec_t  ks = ACME_KEYSPEC_DEFAULT;
    char           *pem, file[128];
    size_t          len;

    assert_int_equal(acme_selfsigned(names, n, &ks, &x, &k, &err), 0);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), -7200));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), -60));
    assert_true(X509_sign(x, k, EVP_sha256()) > 0);
    pem = acme_x509_to_pem(x, &len, &err);
    assert_non_null(pem);
    snprintf(file, sizeof(file), "%s.crt", base);
    write_file(file, pem, len);
    free(pem);
    pem = acme_key_to_pem(k, &len, &err);
    snprintf(file, sizeof(file), "%s.key", base);
    write_file(file, pem, len);
    acme_free_secret(pem, len);
    X509_free(x);
    EVP_PKEY_free(k);
}

static void
test_takes_over_once(void **state)
{
    static const char *const  a_names[] = { "a.example.org", "www.a.example.org" };
    static const char *const  b_names[] = { "b.example.org" };
    static const char *const  c_names[] = { "c.example.org" };
    static const char *const  d_names[] = { "d.example.org" };
    acme_keyspec_t            ks = ACME_KEYSPEC_DEFAULT;
    acme_ident_t              a_ids[2], b_ids[1], d_ids[1];
    acme_import_cert_t        certs[3];
    acme_import_account_t     account;
    const char               *contact[] = { "mailto:admin@example.org" };
    acme_err_t                err;
    acme_loop_t              *loop;
    acme_store_t             *st;
    EVP_PKEY                 *acct, *other;
    acme_certmeta_t           meta;
    char                     *pem, *js, before[8192], after[8192];
    size_t                    len;

    (void) state;
    assert_non_null(mkdtemp(dir));
    loop = acme_loop_new(NULL, ACME_LOG_ERR, &err);
    assert_non_null(loop);

    acct = acme_key_generate(&ks, &err);
    other = acme_key_generate(&ks, &err);
    assert_non_null(acct);
    assert_non_null(other);
    pem = acme_key_to_pem(acct, &len, &err);
    write_file("account.key", pem, len);
    acme_free_secret(pem, len);
    write_file("account.url", "https://ca.example/acct/7", 25);

    plant_cert("a.example.org-0011223344556677", a_names, 2, NULL, NULL);     /* taken over */
    plant_cert("b.example.org-8899aabbccddeeff", b_names, 1, other, NULL);    /* key mismatch */
    plant_cert("c.example.org-0123456789abcdef", c_names, 1, NULL, NULL);     /* not configured */
    plant_expired("d.example.org-fedcba9876543210", d_names, 1);
    write_file("e.example.org-0000000000000000.crt", "garbage\n", 8);         /* unparsable */
    write_file("e.example.org-0000000000000000.key", "garbage\n", 8);
    write_file("f.example.org-0000000000000000.crt", "garbage\n", 8);         /* no .key */
    read_file("a.example.org-0011223344556677.crt", before, sizeof(before));

    assert_int_equal(acme_ident_parse("a.example.org", &a_ids[0], &err), 0);
    assert_int_equal(acme_ident_parse("www.a.example.org", &a_ids[1], &err), 0);
    assert_int_equal(acme_ident_parse("b.example.org", &b_ids[0], &err), 0);
    assert_int_equal(acme_ident_parse("d.example.org", &d_ids[0], &err), 0);
    memset(certs, 0, sizeof(certs));
    /* configured in another order than the certificate lists them */
    certs[0] = (acme_import_cert_t) { "a.example.org", a_ids, 2, ACME_KEYSPEC_DEFAULT, CA, 0 };
    certs[1] = (acme_import_cert_t) { "b.example.org", b_ids, 1, ACME_KEYSPEC_DEFAULT, CA, 0 };
    certs[2] = (acme_import_cert_t) { "d.example.org", d_ids, 1, ACME_KEYSPEC_DEFAULT, CA, 0 };
    account = (acme_import_account_t) { CA, contact, 1 };

    st = acme_store_fs_open(dir, 1, &err);
    assert_non_null(st);
    assert_int_equal(acme_import_nginx_acme(loop, st, dir, st, &account, certs, 3, &err), 2);
    assert_int_equal(certs[0].imported, 1);
    assert_int_equal(certs[1].imported, 0);
    assert_int_equal(certs[2].imported, 0);

    memset(&meta, 0, sizeof(meta));
    assert_int_equal(acme_store_cert_load(st, "a.example.org", NULL, NULL, NULL, NULL, &meta, &err), 0);
    assert_int_equal(meta.nids, 2);
    assert_string_equal(meta.ca, CA);
    assert_true(meta.not_after > time(NULL));
    acme_certmeta_free(&meta);
    assert_int_equal(acme_store_cert_load(st, "b.example.org", NULL, NULL, NULL, NULL, NULL, &err), 1);
    assert_int_equal(acme_store_cert_load(st, "d.example.org", NULL, NULL, NULL, NULL, NULL, &err), 1);

    assert_int_equal(acme_store_account_load(st, "ca.example_dir", &pem, &len, &js, &err), 0);
    assert_non_null(strstr(js, "\"https://ca.example/acct/7\""));
    assert_non_null(strstr(js, "mailto:admin@example.org"));
    acme_free_secret(pem, len);
    free(js);

    /* nginx-acme's files stay; a second run does nothing */
    read_file("a.example.org-0011223344556677.crt", after, sizeof(after));
    assert_string_equal(before, after);
    snprintf(after, sizeof(after), "%s/account.key", dir);
    assert_int_equal(access(after, F_OK), 0);
    snprintf(after, sizeof(after), "%s/account.url", dir);
    assert_int_equal(access(after, F_OK), 0);
    certs[0].imported = 0;
    assert_int_equal(acme_store_del(st, "certs/a.example.org/fullchain.pem", &err), 0);
    assert_int_equal(acme_import_nginx_acme(loop, st, dir, st, &account, certs, 3, &err), 0);
    assert_int_equal(certs[0].imported, 0);

    /* with the marker gone, a certificate already in the store is kept, not replaced */
    assert_int_equal(acme_store_del(st, ACME_IMPORT_MARKER, &err), 0);
    write_file("certs/a.example.org/fullchain.pem", before, strlen(before));
    assert_int_equal(acme_import_nginx_acme(loop, st, dir, st, &account, certs, 3, &err), 0);
    assert_int_equal(certs[0].imported, 0);

    acme_store_close(st);
    acme_ident_free(&a_ids[0]);
    acme_ident_free(&a_ids[1]);
    acme_ident_free(&b_ids[0]);
    acme_ident_free(&d_ids[0]);
    EVP_PKEY_free(acct);
    EVP_PKEY_free(other);
    acme_loop_free(loop);
    snprintf(after, sizeof(after), "rm -rf %s", dir);
    (void) system(after);
}

/* A link planted in the state_path is never followed: that file is skipped, the rest goes on. */
static void
test_link_skipped(void **state)
{
    static char   d[] = "/tmp/acme-import-link-XXXXXX";
    char          path[256];
    acme_err_t    err;
    acme_loop_t  *loop;
    acme_store_t *st;
    acme_import_account_t  account = { CA, NULL, 0 };

    (void) state;
    assert_non_null(mkdtemp(d));
    snprintf(path, sizeof(path), "%s/account.key", d);
    assert_int_equal(symlink("/etc/shadow", path), 0);
    loop = acme_loop_new(NULL, ACME_LOG_ERR, &err);
    st = acme_store_fs_open(d, 1, &err);
    assert_non_null(st);
    assert_int_equal(acme_import_nginx_acme(loop, st, d, st, &account, NULL, 0, &err), 0);
    assert_int_equal(acme_store_account_load(st, "ca.example_dir", NULL, NULL, NULL, &err), 1);
    acme_store_close(st);
    acme_loop_free(loop);
    snprintf(path, sizeof(path), "rm -rf %s", d);
    (void) system(path);
}

/* An account URL at another CA (the issuer's uri changed) is not taken: the key is, to be looked up. */
static void
test_account_of_another_ca(void **state)
{
    static char             d[] = "/tmp/acme-import-ca-XXXXXX";
    char                    path[256], *pem, *js;
    size_t                  len;
    acme_err_t              err;
    acme_loop_t            *loop;
    acme_store_t           *st;
    EVP_PKEY               *acct;
    acme_keyspec_t          ks = ACME_KEYSPEC_DEFAULT;
    acme_import_account_t   account = { CA, NULL, 0 };
    FILE                   *f;

    (void) state;
    assert_non_null(mkdtemp(d));
    acct = acme_key_generate(&ks, &err);
    assert_non_null(acct);
    pem = acme_key_to_pem(acct, &len, &err);
    snprintf(path, sizeof(path), "%s/account.key", d);
    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(pem, 1, len, f), len);
    fclose(f);
    acme_free_secret(pem, len);
    snprintf(path, sizeof(path), "%s/account.url", d);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("https://staging.ca.example/acct/9\n", f);
    fclose(f);

    loop = acme_loop_new(NULL, ACME_LOG_ERR, &err);
    st = acme_store_fs_open(d, 1, &err);
    assert_non_null(st);
    assert_int_equal(acme_import_nginx_acme(loop, st, d, st, &account, NULL, 0, &err), 1);
    assert_int_equal(acme_store_account_load(st, "ca.example_dir", &pem, &len, &js, &err), 0);
    assert_null(strstr(js, "\"url\""));
    assert_non_null(strstr(js, CA));
    acme_free_secret(pem, len);
    free(js);
    acme_store_close(st);
    acme_loop_free(loop);
    EVP_PKEY_free(acct);
    snprintf(path, sizeof(path), "rm -rf %s", d);
    (void) system(path);
}

/* The pieces acmectl import shares: check, certificate and account stored once, nothing overwritten. */
static void
test_import_pieces(void **state)
{
    static const char *const  names[] = { "www.x.example.org", "x.example.org" };
    char                      sdir[] = "/tmp/acme-import-pieces-XXXXXX", cmd[128];
    acme_keyspec_t            ks = ACME_KEYSPEC_DEFAULT;
    acme_import_item_t        it;
    acme_err_t                err;
    acme_store_t             *st;
    X509                     *x = NULL;
    EVP_PKEY                 *k = NULL, *other, *acct;
    char                     *crt, *key, *okey, *js = NULL, *apem = NULL;
    size_t                    clen, klen, oklen, alen = 0;
    int                       same = -1;

    (void) state;
    assert_non_null(mkdtemp(sdir));
    st = acme_store_fs_open(sdir, 1, &err);
    assert_non_null(st);
    assert_int_equal(acme_selfsigned(names, 2, &ks, &x, &k, &err), 0);
    other = acme_key_generate(&ks, &err);
    acct = acme_key_generate(&ks, &err);
    assert_non_null(other);
    assert_non_null(acct);
    crt = acme_x509_to_pem(x, &clen, &err);
    key = acme_key_to_pem(k, &klen, &err);
    okey = acme_key_to_pem(other, &oklen, &err);
    assert_non_null(crt);
    assert_non_null(key);
    assert_non_null(okey);

    /* another key than the certificate's: refused, and why */
    assert_int_equal(acme_import_check(crt, clen, okey, oklen, NULL, time(NULL), &it, &err), 1);
    assert_non_null(strstr(err.msg, "does not match"));
    /* not valid yet / no longer valid: refused */
    assert_int_equal(acme_import_check(crt, clen, key, klen, NULL, time(NULL) + 400L * 86400, &it, &err), 1);
    /* the tool's name for it comes first, whatever the certificate's order */
    assert_int_equal(acme_import_check(crt, clen, key, klen, "x.example.org", time(NULL), &it, &err), 0);
    assert_int_equal(it.nids, 2);
    assert_string_equal(it.ids[0].value, "x.example.org");
    assert_string_equal(it.ids[1].value, "www.x.example.org");
    assert_true(it.keyspec.alg == ACME_KEY_EC && it.keyspec.bits == 256);

    assert_int_equal(acme_import_store_cert(st, "x.example.org", it.ids, it.nids, &it.keyspec, CA, &it, &err), 1);
    assert_int_equal(acme_store_cert_load(st, "x.example.org", NULL, NULL, NULL, NULL, NULL, &err), 0);
    /* never over what the store has */
    assert_int_equal(acme_import_store_cert(st, "x.example.org", it.ids, it.nids, &it.keyspec, CA, &it, &err), 0);

    assert_int_equal(acme_import_store_account(st, CA, acct, "https://ca.example/acct/9", NULL, 0, &same, &err), 1);
    assert_int_equal(acme_store_account_load(st, "ca.example_dir", &apem, &alen, &js, &err), 0);
    assert_non_null(strstr(js, "https://ca.example/acct/9"));
    assert_int_equal(acme_import_store_account(st, CA, acct, "https://ca.example/acct/9", NULL, 0, &same, &err), 0);
    assert_int_equal(same, 1);
    assert_int_equal(acme_import_store_account(st, CA, other, NULL, NULL, 0, &same, &err), 0);
    assert_int_equal(same, 0);

    acme_import_item_free(&it);
    acme_free_secret(apem, alen);
    free(js);
    free(crt);
    acme_free_secret(key, klen);
    acme_free_secret(okey, oklen);
    X509_free(x);
    EVP_PKEY_free(k);
    EVP_PKEY_free(other);
    EVP_PKEY_free(acct);
    acme_store_close(st);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", sdir);
    assert_int_equal(system(cmd), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_takes_over_once),
        cmocka_unit_test(test_link_skipped),
        cmocka_unit_test(test_account_of_another_ca),
        cmocka_unit_test(test_import_pieces),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
