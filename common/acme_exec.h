/*
 * Running an admin's program (DNS hooks, notifications): PROGRAM ARGS with the host's environment plus
 * ours, stdin /dev/null, no descriptor of the host, in its own process group killed at a time limit, what
 * it prints kept for the log, its exit status the result. Blocking: call it from a thread of its own,
 * never from an event loop. The program is not our child (an intermediate forks and reaps it), so a host
 * that reaps every child (nginx's SIGCHLD handler: waitpid(-1)) cannot take its status.
 */
#ifndef ACME_EXEC_H
#define ACME_EXEC_H

#include <stdatomic.h>
#include "acme_err.h"

typedef struct {
    char *const  *argv;         /* argv[0]: the program, an absolute path; NULL-terminated */
    char *const  *vars;         /* "NAME=value", NULL-terminated, added to the host's environment */
    const char   *drop_prefix;  /* the host's variables starting with it are left out (ours replace them) */
    long          timeout;      /* seconds, > 0 */
    const char   *what;         /* names the run in output lines and errors: "hook add _acme-challenge.x" */
} acme_exec_t;

/* 0 when path is an absolute path to an executable regular file; else -1 with err naming label and path. */
int acme_exec_check(const char *label, const char *path, acme_err_t *err);

/*
 * Runs x until it ends, its time limit passes or *stop is set (stop may be NULL). out: what it printed,
 * one "WHAT: line" per line, control characters replaced, appended (malloc'd, may be NULL). 0 when it
 * exited with status 0; -1 with err: killed at the limit (ACME_ERR_NETWORK), stopped (ACME_ERR_INTERNAL),
 * a non-zero status or a signal (ACME_ERR_CONFIG, with its last line), or a failure to start it.
 */
int acme_exec_run(const acme_exec_t *x, atomic_int *stop, char **out, acme_err_t *err);

/* Appends len bytes of text to the malloc'd *out (out NULL: nothing). */
void acme_exec_out_append(char **out, const char *text, size_t len);

#endif
