/*
 * On-demand limits across the nodes of a shared store (nginx's acme_storage, Apache's ACMEStorage): max and
 * rate counted for the cluster, not per node. The names allowed in the last minute are kept in the store
 * ("ondemand/allowed.json"), read and written under the store's lock "ondemand-limits"; the names that
 * have a certificate are the cluster's index ("ondemand/names.json", written by the hosts).
 */
#ifndef ACME_ONDEMAND_CLUSTER_H
#define ACME_ONDEMAND_CLUSTER_H

#include <time.h>
#include "acme_ondemand.h"
#include "acme_store.h"

#define ACME_OD_ALLOWED_KEY  "ondemand/allowed.json"
#define ACME_OD_NAMES_KEY    "ondemand/names.json"

/*
 * Admits name against the cluster's limits at now: *v is ACME_OD_ALLOWED (recorded: it counts against the
 * rate of every node for a minute), ACME_OD_MAX_COUNT or ACME_OD_RATE_LIMITED. 0 decided, 1 the lock is
 * held by another node (try again soon), -1 the store failed (err; the host decides by its own limits).
 * A name already in the index or allowed in the last minute is allowed again without counting.
 */
int acme_ondemand_cluster_admit(acme_store_t *st, const acme_ondemand_conf_t *conf, const char *name,
    time_t now, acme_od_verdict_t *v, acme_err_t *err);

#endif
