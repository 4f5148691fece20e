/*
 * Prometheus metrics: the text exposition format (0.0.4) rendered from a status document, the one
 * acme_manager_status() makes, so that nginx and Apache answer with the same metrics by construction.
 */
#ifndef ACME_METRICS_H
#define ACME_METRICS_H

#include <jansson.h>

#define ACME_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/*
 * {"certificates": [...], "issuers": [...]} as text (malloc'd), NULL when out of memory. A certificate or
 * an issuer named twice (several managers) is shown once, issuers' counters summed. Members a document
 * lacks (a certificate not issued yet, an older snapshot without issuers) give no sample.
 */
char *acme_metrics_prometheus(const json_t *status);

#endif
