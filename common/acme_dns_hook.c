/*
 * The hook publisher: `PROGRAM add|del FQDN VALUE`, the record's context in its environment (never a
 * secret on its command line: the program reads its own credentials), within a time limit (its process
 * group is killed then), what it prints passed to the log, its exit status the result. Blocking: the DNS
 * thread only. Running it is acme_exec.c's (shared with notifications).
 */
#include "acme_dns_int.h"
#include "acme_exec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HOOK_VARS        8

int
acme_dns_hook_check(const acme_dns_config_t *cfg, acme_err_t *err)
{
    return acme_exec_check("the DNS hook", cfg->hook, err);
}

/* The identifier a record is for: its own, else the name without "_acme-challenge.". */
static const char *
rec_ident(const acme_dns_record_t *rec)
{
    if (rec->ident != NULL) {
        return rec->ident;
    }
    return strncmp(rec->name, "_acme-challenge.", 16) == 0 ? rec->name + 16 : rec->name;
}

/* The record's context for the hook's environment (ACME_*: they replace the host's). */
static int
hook_vars(const acme_dns_record_t *rec, const acme_dns_target_t *t, int add, char **vars)
{
    size_t  i;

    vars[0] = acme_sprintf("ACME_ACTION=%s", add ? "add" : "del");
    vars[1] = acme_sprintf("ACME_IDENTIFIER=%s", rec_ident(rec));
    vars[2] = acme_sprintf("ACME_CHALLENGE_TYPE=%s", rec->type ? rec->type : "dns-01");
    vars[3] = acme_sprintf("ACME_CERTIFICATE=%s", rec->cert ? rec->cert : "");
    vars[4] = acme_sprintf("ACME_RECORD_NAME=%s", t->fqdn);
    vars[5] = acme_sprintf("ACME_RECORD_VALUE=%s", rec->value);
    vars[6] = acme_sprintf("ACME_ZONE=%s", t->zone);
    vars[7] = NULL;
    for (i = 0; i < HOOK_VARS - 1; i++) {
        if (vars[i] == NULL) {
            return -1;
        }
    }
    return 0;
}

int
acme_dns_hook_run(const acme_dns_config_t *cfg, const acme_dns_record_t *rec, const acme_dns_target_t *t,
    int add, atomic_int *stop, char **out, acme_err_t *err)
{
    char         *argv[5], *vars[HOOK_VARS], what[600];
    acme_exec_t   x;
    size_t        i;
    int           rc = -1;

    memset(vars, 0, sizeof(vars));
    snprintf(what, sizeof(what), "hook %s %s", add ? "add" : "del", t->fqdn);
    argv[0] = cfg->hook;
    argv[1] = add ? "add" : "del";
    argv[2] = t->fqdn;
    argv[3] = rec->value;
    argv[4] = NULL;
    if (hook_vars(rec, t, add, vars) != 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
    } else {
        x.argv = argv;
        x.vars = vars;
        x.drop_prefix = "ACME_";
        x.timeout = cfg->hook_timeout > 0 ? cfg->hook_timeout : ACME_DNS_HOOK_TIMEOUT_DEFAULT;
        x.what = what;
        rc = acme_exec_run(&x, stop, out, err);
    }
    for (i = 0; i < HOOK_VARS; i++) {
        free(vars[i]);
    }
    return rc;
}
