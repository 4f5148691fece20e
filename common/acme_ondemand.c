/* On-demand certificates: which names may have one (see acme_ondemand.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include "acme_ondemand.h"
#include "acme_http.h"
#include "acme_ident.h"

typedef struct ask_s ask_t;

struct ask_s {
    acme_ondemand_t       *od;
    acme_http_req_t       *req;
    char                  *name;
    acme_ondemand_done_pt  done;
    void                  *arg;
    int                    order;       /* decide: the rate applies; 0: a re-check */
    ask_t                 *next;
};

struct acme_ondemand_s {
    acme_loop_t           *loop;
    acme_ondemand_conf_t   conf;
    char                  *ask_url;
    char                  *ask_ca_file;
    time_t                *orders;      /* ring: when the last rate_per_min orders were allowed */
    size_t                 norders;
    size_t                 next;
    ask_t                 *asks;
    size_t                 nasks;
};

static const char *verdict_names[ACME_OD_NVERDICTS] = {
    "allowed", "invalid_name", "not_server_name", "max_count", "rate_limited", "ask_refused", "ask_failed",
    "waiting_cap", "timeout", "order_failed"
};

const char *
acme_od_verdict_name(acme_od_verdict_t v)
{
    return (unsigned) v < ACME_OD_NVERDICTS ? verdict_names[v] : "unknown";
}

size_t
acme_ondemand_name(const char *sni, size_t len, char *buf, size_t size)
{
    size_t           n;
    unsigned char    a[16];
    acme_ident_t     id;
    acme_err_t       err;

    n = acme_sni_normalize(sni, len, buf, size);
    if (n == 0) {
        return 0;
    }
    /* an IPv4 literal passes the LDH check; IPv6 literals never do (':') */
    if (inet_pton(AF_INET, buf, a) == 1) {
        return 0;
    }
    if (acme_ident_parse(buf, &id, &err) != 0) {
        return 0;
    }
    if (id.type != ACME_IDENT_DNS || strchr(id.value, '.') == NULL || strchr(id.value, '*') != NULL) {
        acme_ident_free(&id);
        return 0;
    }
    acme_ident_free(&id);
    /* a last label of digits only is no host name (and "1.2.3" is an IPv4 address to inet_aton) */
    {
        const char *last = strrchr(buf, '.') + 1;

        if (last[strspn(last, "0123456789")] == '\0') {
            return 0;
        }
    }
    return n;
}

acme_ondemand_t *
acme_ondemand_new(acme_loop_t *loop, const acme_ondemand_conf_t *conf, acme_err_t *err)
{
    acme_ondemand_t *od;

    od = calloc(1, sizeof(*od));
    if (od == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    od->loop = loop;
    od->conf = *conf;
    if (od->conf.ask_timeout_ms <= 0) {
        od->conf.ask_timeout_ms = ACME_OD_ASK_TIMEOUT;
    }
    if (od->conf.max_certs == 0) {
        od->conf.max_certs = ACME_OD_MAX_CERTS;
    }
    if (od->conf.rate_per_min == 0) {
        od->conf.rate_per_min = ACME_OD_RATE;
    }
    if (od->conf.rate_per_min > ACME_OD_RATE_MAX) {
        od->conf.rate_per_min = ACME_OD_RATE_MAX;
    }
    if (conf->ask_url != NULL) {
        od->ask_url = acme_strdup(conf->ask_url);
        if (od->ask_url == NULL) {
            goto oom;
        }
    }
    if (conf->ask_ca_file != NULL) {
        od->ask_ca_file = acme_strdup(conf->ask_ca_file);
        if (od->ask_ca_file == NULL) {
            goto oom;
        }
    }
    od->conf.ask_url = od->ask_url;
    od->conf.ask_ca_file = od->ask_ca_file;
    od->orders = calloc(od->conf.rate_per_min, sizeof(time_t));
    if (od->orders == NULL) {
        goto oom;
    }
    return od;

oom:
    acme_ondemand_free(od);
    acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    return NULL;
}

static void
ask_free(ask_t *a)
{
    free(a->name);
    free(a);
}

void
acme_ondemand_free(acme_ondemand_t *od)
{
    ask_t *a, *next;

    if (od == NULL) {
        return;
    }
    for (a = od->asks; a != NULL; a = next) {
        next = a->next;
        acme_http_cancel(a->req);
        ask_free(a);
    }
    free(od->ask_url);
    free(od->ask_ca_file);
    free(od->orders);
    free(od);
}

const acme_ondemand_conf_t *
acme_ondemand_conf(acme_ondemand_t *od)
{
    return &od->conf;
}

size_t
acme_ondemand_asking(acme_ondemand_t *od)
{
    return od->nasks;
}

/* 1 when one more order fits in the last minute's rate */
static int
rate_ok(acme_ondemand_t *od, time_t now)
{
    /* the oldest of the last rate_per_min orders is at next (0 while the ring is not full) */
    return od->norders < od->conf.rate_per_min || now - od->orders[od->next] >= 60;
}

static void
rate_take(acme_ondemand_t *od, time_t now)
{
    od->orders[od->next] = now;
    od->next = (od->next + 1) % od->conf.rate_per_min;
    if (od->norders < od->conf.rate_per_min) {
        od->norders++;
    }
}

static void
ask_unlink(acme_ondemand_t *od, ask_t *a)
{
    ask_t **pp;

    for (pp = &od->asks; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == a) {
            *pp = a->next;
            od->nasks--;
            return;
        }
    }
}

static void
ask_done(const acme_http_resp_t *resp, void *arg)
{
    ask_t               *a = arg;
    acme_ondemand_t     *od = a->od;
    acme_od_verdict_t    v;
    char                 detail[300];

    ask_unlink(od, a);
    if (!resp->ok) {
        v = ACME_OD_ASK_FAILED;
        snprintf(detail, sizeof(detail), "the ask endpoint did not answer: %s", resp->errmsg);
    } else if (resp->status < 200 || resp->status > 299) {
        v = ACME_OD_ASK_REFUSED;
        snprintf(detail, sizeof(detail), "the ask endpoint answered %ld", resp->status);
    } else if (a->order && !rate_ok(od, time(NULL))) {
        /* others were allowed while this one was asked */
        v = ACME_OD_RATE_LIMITED;
        snprintf(detail, sizeof(detail), "more than %u new on-demand orders in a minute",
                 od->conf.rate_per_min);
    } else {
        v = ACME_OD_ALLOWED;
        if (a->order) {
            rate_take(od, time(NULL));
        }
        snprintf(detail, sizeof(detail), "the ask endpoint answered %ld", resp->status);
    }
    a->done(a->arg, a->name, v, detail);
    ask_free(a);
}

static int
ask_start(acme_ondemand_t *od, const char *name, int order, acme_ondemand_done_pt done, void *arg)
{
    char              *url;
    size_t             len;
    ask_t             *a;
    acme_err_t         err;
    acme_http_conf_t   hc;

    a = calloc(1, sizeof(*a));
    len = strlen(od->ask_url) + sizeof("?domain=") + strlen(name);
    url = malloc(len);
    if (a == NULL || url == NULL) {
        free(a);
        free(url);
        return -1;
    }
    /* the name is LDH and dots: nothing to escape */
    snprintf(url, len, "%s%sdomain=%s", od->ask_url, strchr(od->ask_url, '?') ? "&" : "?", name);

    memset(&hc, 0, sizeof(hc));
    hc.ca_file = od->ask_ca_file;
    hc.verify = 1;
    hc.timeout_ms = od->conf.ask_timeout_ms;
    hc.connect_timeout_ms = od->conf.ask_timeout_ms;
    hc.max_body = 4096;
    hc.https_only = strncmp(od->ask_url, "https://", 8) == 0;

    a->od = od;
    a->name = acme_strdup(name);
    a->done = done;
    a->arg = arg;
    if (a->name == NULL) {
        free(url);
        ask_free(a);
        return -1;
    }
    a->req = acme_http_send(od->loop, &hc, "GET", url, NULL, NULL, ask_done, a, &err);
    free(url);
    if (a->req == NULL) {
        acme_log(od->loop, ACME_LOG_WARN, "acme: on-demand \"%s\": cannot ask: %s", name, err.msg);
        ask_free(a);
        return -1;
    }
    a->order = order;
    a->next = od->asks;
    od->asks = a;
    od->nasks++;
    return 0;
}

int
acme_ondemand_decide(acme_ondemand_t *od, const char *name, size_t ncerts, acme_ondemand_done_pt done,
    void *arg, acme_od_verdict_t *v)
{
    char              buf[256];
    time_t            now = time(NULL);

    if (acme_ondemand_name(name, strlen(name), buf, sizeof(buf)) == 0 || strcmp(buf, name) != 0) {
        *v = ACME_OD_INVALID_NAME;
        return 0;
    }
    if (ncerts >= od->conf.max_certs) {
        *v = ACME_OD_MAX_COUNT;
        return 0;
    }
    if (!rate_ok(od, now)) {
        *v = ACME_OD_RATE_LIMITED;
        return 0;
    }
    if (od->ask_url == NULL) {
        rate_take(od, now);
        *v = ACME_OD_ALLOWED;
        return 0;
    }
    if (ask_start(od, name, 1, done, arg) != 0) {
        *v = ACME_OD_ASK_FAILED;
        return 0;
    }
    return 1;
}

int
acme_ondemand_ask(acme_ondemand_t *od, const char *name, acme_ondemand_done_pt done, void *arg)
{
    if (od->ask_url == NULL) {
        return -1;
    }
    return ask_start(od, name, 0, done, arg);
}
