/* TSIG keys (RFC 8945) from the files admins have: BIND's key statement, or ALGORITHM:NAME:SECRET. The
 * messages name the file, the key and what is wrong, never the secret; secrets are wiped when freed. */
#include "acme_dns.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#define TSIG_FILE_MAX  65536

static void
secret_free(char *s)
{
    if (s != NULL) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

void
acme_tsig_key_free(acme_tsig_key_t *key)
{
    free(key->name);
    free(key->algorithm);
    secret_free(key->secret);
    memset(key, 0, sizeof(*key));
}

typedef struct {
    const char  *p;
    char         tok[1024];
    int          quoted;
} lexer_t;

/* Next token of a BIND configuration: a word, a quoted string or one of { } ;. 0, or -1 at the end. */
static int
lex(lexer_t *lx)
{
    const char  *p = lx->p;
    size_t       n = 0;

    for (;;) {
        while (*p != '\0' && isspace((unsigned char) *p)) {
            p++;
        }
        if (*p == '#' || (p[0] == '/' && p[1] == '/')) {
            while (*p != '\0' && *p != '\n') {
                p++;
            }
            continue;
        }
        if (p[0] == '/' && p[1] == '*') {
            p = strstr(p + 2, "*/");
            p = p == NULL ? "" : p + 2;
            continue;
        }
        break;
    }
    lx->quoted = 0;
    if (*p == '\0') {
        lx->p = p;
        return -1;
    }
    if (*p == '{' || *p == '}' || *p == ';') {
        lx->tok[0] = *p++;
        lx->tok[1] = '\0';
    } else if (*p == '"') {
        lx->quoted = 1;
        for (p++; *p != '\0' && *p != '"'; p++) {
            if (n + 1 < sizeof(lx->tok)) {
                lx->tok[n++] = *p;
            }
        }
        if (*p == '"') {
            p++;
        }
        lx->tok[n] = '\0';
    } else {
        while (*p != '\0' && !isspace((unsigned char) *p) && strchr("{};\"", *p) == NULL) {
            if (n + 1 < sizeof(lx->tok)) {
                lx->tok[n++] = *p;
            }
            p++;
        }
        lx->tok[n] = '\0';
    }
    lx->p = p;
    return 0;
}

static int
tsig_algorithm_ok(const char *alg)
{
    size_t n = strlen(alg);

    if (n > 0 && alg[n - 1] == '.') {
        n--;
    }
    return (n == 11 && (strncasecmp(alg, "hmac-sha256", n) == 0 || strncasecmp(alg, "hmac-sha384", n) == 0
                        || strncasecmp(alg, "hmac-sha512", n) == 0));
}

/* Standard base64 (with padding), at least 16 bytes of key. */
static int
tsig_secret_ok(const char *s)
{
    size_t          n = strlen(s), pad = 0, i;
    unsigned char  *buf;
    int             len;

    if (n == 0 || n % 4 != 0) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (!isalnum((unsigned char) s[i]) && s[i] != '+' && s[i] != '/' && !(s[i] == '=' && i >= n - 2)) {
            return 0;
        }
    }
    pad = (s[n - 1] == '=') + (s[n - 2] == '=');
    buf = malloc(n);
    if (buf == NULL) {
        return 0;
    }
    len = EVP_DecodeBlock(buf, (const unsigned char *) s, (int) n);
    OPENSSL_cleanse(buf, n);
    free(buf);
    return len >= 0 && (size_t) len - pad >= 16;
}

static int
tsig_key_set(acme_tsig_key_t *key, const char *name, const char *alg, const char *secret, const char *what,
    acme_err_t *err)
{
    char  lower[32];
    size_t i;

    if (name[0] == '\0' || strlen(name) > 253 || strspn(name, "abcdefghijklmnopqrstuvwxyz"
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != strlen(name))
    {
        acme_err_set(err, ACME_ERR_CONFIG, "%s: the key name is not a DNS name", what);
        return -1;
    }
    if (!tsig_algorithm_ok(alg)) {
        acme_err_set(err, ACME_ERR_CONFIG, "%s: TSIG algorithm \"%.40s\" is not supported (hmac-sha256, "
                     "hmac-sha384, hmac-sha512)", what, alg);
        return -1;
    }
    if (!tsig_secret_ok(secret)) {
        acme_err_set(err, ACME_ERR_CONFIG, "%s: the secret of key \"%s\" is not base64 of 16 bytes or more",
                     what, name);
        return -1;
    }
    for (i = 0; i < 11; i++) {
        lower[i] = (char) tolower((unsigned char) alg[i]);
    }
    lower[11] = '\0';
    key->name = acme_strdup(name);
    key->algorithm = acme_strdup(lower);
    key->secret = acme_strdup(secret);
    if (key->name == NULL || key->algorithm == NULL || key->secret == NULL) {
        acme_tsig_key_free(key);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    return 0;
}

/* `key "NAME" { algorithm ALG; secret "SECRET"; };` */
static int
tsig_parse_bind(const char *text, const char *what, acme_tsig_key_t *key, acme_err_t *err)
{
    lexer_t  lx;
    char     name[256], alg[64], *secret = NULL;
    int      rc = -1, depth;

    memset(&lx, 0, sizeof(lx));
    lx.p = text;
    name[0] = alg[0] = '\0';
    while (lex(&lx) == 0) {
        if (lx.quoted || strcmp(lx.tok, "key") != 0) {
            continue;
        }
        if (lex(&lx) != 0 || lx.tok[0] == '{') {
            break;
        }
        snprintf(name, sizeof(name), "%.255s", lx.tok);
        if (lex(&lx) != 0 || strcmp(lx.tok, "{") != 0) {
            break;
        }
        for (depth = 1; depth > 0 && lex(&lx) == 0; ) {
            if (!lx.quoted && strcmp(lx.tok, "{") == 0) {
                depth++;
            } else if (!lx.quoted && strcmp(lx.tok, "}") == 0) {
                depth--;
            } else if (depth == 1 && !lx.quoted && strcmp(lx.tok, "algorithm") == 0 && lex(&lx) == 0) {
                snprintf(alg, sizeof(alg), "%.63s", lx.tok);
            } else if (depth == 1 && !lx.quoted && strcmp(lx.tok, "secret") == 0 && lex(&lx) == 0) {
                secret_free(secret);
                secret = acme_strdup(lx.tok);
            }
        }
        break;
    }
    OPENSSL_cleanse(lx.tok, sizeof(lx.tok));
    if (name[0] == '\0') {
        acme_err_set(err, ACME_ERR_CONFIG, "%s: no `key \"NAME\" { ... };` statement", what);
    } else if (alg[0] == '\0' || secret == NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "%s: key \"%s\" has no %s", what, name,
                     alg[0] == '\0' ? "algorithm" : "secret");
    } else {
        rc = tsig_key_set(key, name, alg, secret, what, err);
    }
    secret_free(secret);
    return rc;
}

/* `[ALGORITHM:]NAME:SECRET` on one line */
static int
tsig_parse_line(const char *text, const char *what, acme_tsig_key_t *key, acme_err_t *err)
{
    char  *line, *a, *b, *c, *end;
    int    rc;

    line = acme_strdup(text);
    if (line == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    for (end = line + strlen(line); end > line && isspace((unsigned char) end[-1]); end--) {
        end[-1] = '\0';
    }
    a = line;
    while (isspace((unsigned char) *a)) {
        a++;
    }
    b = strchr(a, ':');
    c = b != NULL ? strchr(b + 1, ':') : NULL;
    if (b == NULL || strchr(a, '\n') != NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "%s: neither a BIND key statement nor NAME:SECRET", what);
        rc = -1;
    } else if (c == NULL) {
        *b = '\0';
        rc = tsig_key_set(key, a, "hmac-sha256", b + 1, what, err);
    } else {
        *b = *c = '\0';
        rc = tsig_key_set(key, b + 1, a, c + 1, what, err);
    }
    OPENSSL_cleanse(line, strlen(text));
    free(line);
    return rc;
}

int
acme_tsig_key_parse(const char *text, const char *what, acme_tsig_key_t *key, acme_err_t *err)
{
    lexer_t  lx;
    int      bind;

    memset(key, 0, sizeof(*key));
    memset(&lx, 0, sizeof(lx));
    lx.p = text;
    bind = lex(&lx) == 0 && !lx.quoted && strcmp(lx.tok, "key") == 0;
    OPENSSL_cleanse(lx.tok, sizeof(lx.tok));
    return bind || strstr(text, "key ") != NULL ? tsig_parse_bind(text, what, key, err)
                                                : tsig_parse_line(text, what, key, err);
}

int
acme_tsig_key_load(const char *path, acme_tsig_key_t *key, acme_err_t *err)
{
    FILE    *f;
    char    *buf, what[600];
    size_t   n;
    int      rc;

    snprintf(what, sizeof(what), "TSIG key file \"%s\"", path);
    f = fopen(path, "re");
    if (f == NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "%s: %s", what, strerror(errno));
        return -1;
    }
    buf = malloc(TSIG_FILE_MAX + 1);
    if (buf == NULL) {
        fclose(f);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return -1;
    }
    n = fread(buf, 1, TSIG_FILE_MAX + 1, f);
    if (ferror(f) || n > TSIG_FILE_MAX) {
        acme_err_set(err, ACME_ERR_CONFIG, "%s: %s", what, ferror(f) ? "read error" : "larger than 64 KiB");
        rc = -1;
    } else {
        buf[n] = '\0';
        rc = acme_tsig_key_parse(buf, what, key, err);
    }
    fclose(f);
    OPENSSL_cleanse(buf, n < TSIG_FILE_MAX + 1 ? n : TSIG_FILE_MAX + 1);
    free(buf);
    return rc;
}
