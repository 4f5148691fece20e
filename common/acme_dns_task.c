/*
 * DNS work off the event loop: one thread per task (signals blocked), whose end a loop timer polls, as
 * key generation does (acme_keygen.c); in every loop mode, as a propagation wait lasts minutes. The task
 * has its own copy of the configuration: a cancelled task's thread is left to finish its current query
 * (seconds) and free the task itself, so cancelling never waits for the network.
 */
#include "acme_dns_int.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#define DNS_TASK_POLL_MS  50

#define TASK_RUNNING    0
#define TASK_FINISHED   1
#define TASK_ABANDONED  2

struct acme_dns_task_s {
    acme_loop_t               *loop;
    acme_dns_config_t          cfg;     /* a copy: the thread may outlive the caller's */
    int                        publish;
    acme_dns_record_t         *recs;
    size_t                     nrecs;
    acme_dns_done_pt           done;
    void                      *arg;
    acme_timer_t              *timer;
    pthread_t                  thread;
    int                        threaded;
    atomic_int                 finished;   /* TASK_RUNNING, TASK_FINISHED or TASK_ABANDONED */
    atomic_int                 stop;
    int                        failed;
    acme_err_t                 err;
    char                      *out;     /* what hooks printed: logged from the loop */
    long long                  persist_until;   /* dns-persist-01's check (acme_dns_result_t) */
    char                      *persist_txt;
};

static void
task_free(acme_dns_task_t *t)
{
    size_t i;

    atomic_store(&t->stop, 1);
    if (t->threaded) {
        pthread_join(t->thread, NULL);
    }
    acme_dns_config_free(&t->cfg);
    for (i = 0; i < t->nrecs; i++) {
        acme_dns_record_clear(&t->recs[i]);
    }
    free(t->recs);
    free(t->out);
    free(t->persist_txt);
    free(t);
}

static void *
task_thread(void *p)
{
    acme_dns_task_t  *t = p;
    acme_err_t        e;
    size_t            i;
    int               rc;

    for (i = 0; i < t->nrecs && !atomic_load(&t->stop); i++) {
        if (t->publish && t->recs[i].issuers != NULL && t->recs[i].type != NULL
            && strcmp(t->recs[i].type, "dns-persist-01") == 0)
        {
            /* a challenge's record: only checked; what matched goes back to the caller */
            rc = acme_dns_persist_check(&t->cfg, &t->recs[i], &t->persist_until, &t->persist_txt, &e);
        } else {
            rc = acme_dns_publish_record(&t->cfg, &t->recs[i], t->publish, &t->stop, &t->out, &e);
        }
        if (rc != 0 && !t->failed) {
            t->err = e;
            t->failed = 1;
        }
    }
    if (atomic_exchange(&t->finished, TASK_FINISHED) == TASK_ABANDONED) {
        t->threaded = 0;        /* detached */
        task_free(t);
    }
    return NULL;
}

static void
task_poll(void *p)
{
    acme_dns_task_t   *t = p;
    acme_dns_done_pt   done = t->done;
    void              *arg = t->arg;
    acme_err_t         e;
    acme_dns_result_t  res;
    char              *txt;
    int                failed;

    t->timer = NULL;
    if (atomic_load(&t->finished) == TASK_RUNNING) {
        t->timer = acme_timer_add(t->loop, DNS_TASK_POLL_MS, task_poll, t);
        if (t->timer != NULL) {
            return;
        }
        atomic_store(&t->stop, 1);      /* out of memory: wait for the thread here */
    }
    failed = t->failed;
    e = t->err;
    if (t->out != NULL) {
        char *line, *save = NULL;
        for (line = strtok_r(t->out, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
            acme_log(t->loop, ACME_LOG_NOTICE, "acme: DNS %s", line);
        }
    }
    txt = t->persist_txt;
    t->persist_txt = NULL;
    res.persist_until = t->persist_until;
    res.persist_txt = txt;
    task_free(t);
    done(arg, failed ? &e : NULL, &res);
    free(txt);
}

acme_dns_task_t *
acme_dns_task_start(acme_loop_t *loop, const acme_dns_config_t *cfg, int publish,
    const acme_dns_record_t *recs, size_t nrecs, acme_dns_done_pt done, void *arg, acme_err_t *err)
{
    acme_dns_task_t  *t;
    sigset_t          all, old;
    size_t            i;
    int               rc;

    t = calloc(1, sizeof(*t));
    if (t == NULL || (nrecs > 0 && (t->recs = calloc(nrecs, sizeof(*t->recs))) == NULL)) {
        free(t);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    t->loop = loop;
    if (acme_dns_config_copy(&t->cfg, cfg) != 0) {
        free(t->recs);
        free(t);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    t->publish = publish;
    t->done = done;
    t->arg = arg;
    atomic_init(&t->finished, TASK_RUNNING);
    atomic_init(&t->stop, 0);
    for (i = 0; i < nrecs; i++, t->nrecs++) {
        if (acme_dns_record_copy(&t->recs[i], &recs[i]) != 0) {
            task_free(t);
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            return NULL;
        }
    }
    t->timer = acme_timer_add(loop, DNS_TASK_POLL_MS, task_poll, t);
    if (t->timer == NULL) {
        task_free(t);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    /* signals stay with the host's thread */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&t->thread, NULL, task_thread, t);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        acme_timer_cancel(loop, t->timer);
        task_free(t);
        acme_err_set(err, ACME_ERR_INTERNAL, "DNS: cannot start a thread: %s", strerror(rc));
        return NULL;
    }
    t->threaded = 1;
    return t;
}

void
acme_dns_task_cancel(acme_dns_task_t *t)
{
    if (t == NULL) {
        return;
    }
    if (t->timer != NULL) {
        acme_timer_cancel(t->loop, t->timer);
    }
    atomic_store(&t->stop, 1);
    if (!t->threaded || atomic_exchange(&t->finished, TASK_ABANDONED) == TASK_FINISHED) {
        task_free(t);
        return;
    }
    /* the thread frees the task when its current query is over */
    pthread_detach(t->thread);
}
