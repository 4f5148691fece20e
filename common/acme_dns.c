/* DNS validation: its configuration and the dns-01 record's name and value. */
#include "acme_dns_int.h"
#include "acme_b64.h"

#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>

const char *
acme_dns_method_name(acme_dns_method_t m)
{
    switch (m) {
    case ACME_DNS_RFC2136:
        return "rfc2136";
    default:
        return "none";
    }
}

void
acme_dns_config_free(acme_dns_config_t *cfg)
{
    free(cfg->resolver);
    free(cfg->server);
    acme_tsig_key_free(&cfg->tsig);
    memset(cfg, 0, sizeof(*cfg));
}

int
acme_dns_config_copy(acme_dns_config_t *dst, const acme_dns_config_t *src)
{
    memset(dst, 0, sizeof(*dst));
    dst->method = src->method;
    dst->propagation_timeout = src->propagation_timeout;
    if ((src->resolver != NULL && (dst->resolver = acme_strdup(src->resolver)) == NULL)
        || (src->server != NULL && (dst->server = acme_strdup(src->server)) == NULL)
        || (src->tsig.name != NULL && (dst->tsig.name = acme_strdup(src->tsig.name)) == NULL)
        || (src->tsig.algorithm != NULL && (dst->tsig.algorithm = acme_strdup(src->tsig.algorithm)) == NULL)
        || (src->tsig.secret != NULL && (dst->tsig.secret = acme_strdup(src->tsig.secret)) == NULL))
    {
        acme_dns_config_free(dst);
        return -1;
    }
    return 0;
}

int
acme_dns_config_check(const acme_dns_config_t *cfg, acme_err_t *err)
{
    if (cfg->method != ACME_DNS_RFC2136) {
        acme_err_set(err, ACME_ERR_CONFIG, "no DNS update method configured");
        return -1;
    }
    if (cfg->tsig.name == NULL || cfg->tsig.secret == NULL) {
        acme_err_set(err, ACME_ERR_CONFIG, "RFC 2136 updates need a TSIG key");
        return -1;
    }
    if (cfg->propagation_timeout < 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "the DNS propagation timeout is negative");
        return -1;
    }
    return acme_dns_rfc2136_check(cfg, err);
}

/* ---- dns-01 ---- */

char *
acme_dns01_value(const char *key_authz)
{
    unsigned char  md[EVP_MAX_MD_SIZE];
    unsigned int   mdlen = 0;

    if (EVP_Digest(key_authz, strlen(key_authz), md, &mdlen, EVP_sha256(), NULL) != 1) {
        return NULL;
    }
    return acme_b64url_encode(md, mdlen);
}

char *
acme_dns01_name(const char *domain)
{
    if (strncmp(domain, "*.", 2) == 0) {
        domain += 2;
    }
    return acme_sprintf("_acme-challenge.%s", domain);
}
