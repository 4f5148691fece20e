/* Notifications: a queue of runs of the admin's program, one at a time in a thread; see acme_notify.h. */
#include "acme_notify.h"
#include "acme_exec.h"
#include "acme_resource.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOTIFY_QUEUE_MAX   64       /* runs waiting; more are dropped with a warning */
#define NOTIFY_POLL_MS     200      /* how often the loop looks whether the run ended */
#define NOTIFY_VARS        12

typedef struct job_s job_t;

struct job_s {
    job_t          *next;
    acme_notify_t  *owner;
    char           *event;
    char           *name;
    char           *argv[4];
    char           *vars[NOTIFY_VARS];
    char            what[300];
    /* the thread's results, read by the loop once done is set */
    atomic_int      done;
    int             rc;
    char           *out;
    acme_err_t      err;
};

struct acme_notify_s {
    acme_loop_t    *loop;
    char           *program;
    char           *store_dir;
    long            timeout;
    long            expiring;
    job_t          *head, *tail;    /* head runs when running is set */
    size_t          queued;
    int             running;
    pthread_t       thread;
    atomic_int      stop;
    acme_timer_t   *timer;
};

static void notify_next(acme_notify_t *n);

static void
job_free(job_t *j)
{
    size_t i;

    if (j == NULL) {
        return;
    }
    free(j->event);
    free(j->name);
    for (i = 0; i < NOTIFY_VARS; i++) {
        free(j->vars[i]);
    }
    free(j->out);
    free(j);
}

acme_notify_t *
acme_notify_new(acme_loop_t *loop, const acme_notify_conf_t *conf, acme_err_t *err)
{
    acme_notify_t *n;

    if (acme_exec_check("the notification program", conf->program, err) != 0) {
        return NULL;
    }
    n = calloc(1, sizeof(*n));
    if (n == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    n->loop = loop;
    n->program = acme_strdup(conf->program);
    n->store_dir = conf->store_dir ? acme_strdup(conf->store_dir) : NULL;
    n->timeout = conf->timeout > 0 ? conf->timeout : ACME_NOTIFY_TIMEOUT_DEFAULT;
    n->expiring = conf->expiring > 0 ? conf->expiring : ACME_NOTIFY_EXPIRING_DEFAULT;
    atomic_init(&n->stop, 0);
    if (n->program == NULL || (conf->store_dir != NULL && n->store_dir == NULL)) {
        acme_notify_free(n);
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    return n;
}

void
acme_notify_free(acme_notify_t *n)
{
    job_t *j, *next;

    if (n == NULL) {
        return;
    }
    if (n->running) {
        atomic_store(&n->stop, 1);
        pthread_join(n->thread, NULL);
    }
    acme_timer_cancel(n->loop, n->timer);
    for (j = n->head; j != NULL; j = next) {
        next = j->next;
        job_free(j);
    }
    free(n->program);
    free(n->store_dir);
    free(n);
}

long
acme_notify_expiring(const acme_notify_t *n)
{
    return n->expiring;
}

int
acme_notify_busy(const acme_notify_t *n)
{
    return n != NULL && n->head != NULL;
}

static void *
notify_thread(void *arg)
{
    job_t          *j = arg;
    acme_notify_t  *n = j->owner;
    acme_exec_t     x;

    x.argv = j->argv;
    x.vars = j->vars;
    x.drop_prefix = "ACME_";
    x.timeout = n->timeout;
    x.what = j->what;
    j->rc = acme_exec_run(&x, &n->stop, &j->out, &j->err);
    atomic_store(&j->done, 1);
    return NULL;
}

/* What it printed, one log line each (acme_exec_run prefixed them). */
static void
log_out(acme_notify_t *n, const char *out)
{
    const char *p = out, *e;

    while (p != NULL && *p != '\0') {
        e = strchr(p, '\n');
        acme_log(n->loop, ACME_LOG_NOTICE, "acme: %.*s", (int) (e ? e - p : (long) strlen(p)), p);
        p = e ? e + 1 : NULL;
    }
}

static void
notify_poll(void *arg)
{
    acme_notify_t  *n = arg;
    job_t          *j = n->head;

    n->timer = NULL;
    if (!n->running || j == NULL) {
        return;
    }
    if (!atomic_load(&j->done)) {
        n->timer = acme_timer_add(n->loop, NOTIFY_POLL_MS, notify_poll, n);
        return;
    }
    pthread_join(n->thread, NULL);
    n->running = 0;
    log_out(n, j->out);
    if (j->rc == 0) {
        acme_log(n->loop, ACME_LOG_NOTICE, "acme: %s (%s): done", j->what, n->program);
    } else {
        acme_log(n->loop, ACME_LOG_WARN, "acme: %s", j->err.msg);
    }
    n->head = j->next;
    if (n->head == NULL) {
        n->tail = NULL;
    }
    n->queued--;
    job_free(j);
    notify_next(n);
}

static void
notify_next(acme_notify_t *n)
{
    job_t     *j = n->head;
    sigset_t   all, old;
    int        rc;

    if (n->running || j == NULL) {
        return;
    }
    /* the host's signals stay with its own thread (nginx's handlers must interrupt its event loop) */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&n->thread, NULL, notify_thread, j);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        acme_log(n->loop, ACME_LOG_WARN, "acme: %s (%s): cannot start a thread", j->what, n->program);
        n->head = j->next;
        if (n->head == NULL) {
            n->tail = NULL;
        }
        n->queued--;
        job_free(j);
        /* the next one on the next event */
        return;
    }
    n->running = 1;
    n->timer = acme_timer_add(n->loop, NOTIFY_POLL_MS, notify_poll, n);
}

void
acme_notify_event(acme_notify_t *n, const acme_notify_event_t *ev)
{
    job_t   *j;
    char     b1[32], b2[32];
    size_t   k = 0, i;
    int      oom = 0;

    if (n == NULL) {
        return;
    }
    if (n->queued >= NOTIFY_QUEUE_MAX) {
        acme_log(n->loop, ACME_LOG_WARN, "acme: notify %s \"%s\": %d notifications waiting, this one dropped",
                 ev->event, ev->name, NOTIFY_QUEUE_MAX);
        return;
    }
    j = calloc(1, sizeof(*j));
    if (j == NULL) {
        acme_log(n->loop, ACME_LOG_WARN, "acme: notify %s \"%s\": out of memory", ev->event, ev->name);
        return;
    }
    atomic_init(&j->done, 0);
    j->owner = n;
    j->event = acme_strdup(ev->event);
    j->name = acme_strdup(ev->name);
    snprintf(j->what, sizeof(j->what), "notify %s \"%s\"", ev->event, ev->name);
    j->vars[k++] = acme_sprintf("ACME_EVENT=%s", ev->event);
    j->vars[k++] = acme_sprintf("ACME_CERTIFICATE=%s", ev->name);
    j->vars[k++] = acme_sprintf("ACME_DOMAINS=%s", ev->domains ? ev->domains : "");
    if (ev->issuer != NULL) {
        j->vars[k++] = acme_sprintf("ACME_ISSUER=%s", ev->issuer);
    }
    if (ev->not_after != 0) {
        j->vars[k++] = acme_sprintf("ACME_NOT_AFTER=%s", acme_time_format(ev->not_after, b1, sizeof(b1)));
    }
    if (n->store_dir != NULL) {
        j->vars[k++] = acme_sprintf("ACME_FULLCHAIN=%s/certs/%s/fullchain.pem", n->store_dir, ev->name);
        j->vars[k++] = acme_sprintf("ACME_PRIVKEY=%s/certs/%s/privkey.pem", n->store_dir, ev->name);
    }
    if (ev->error != NULL) {
        j->vars[k++] = acme_sprintf("ACME_ERROR=%s", ev->error);
    }
    if (ev->warning != NULL) {
        j->vars[k++] = acme_sprintf("ACME_WARNING=%s", ev->warning);
    }
    if (ev->ari_start != 0) {
        j->vars[k++] = acme_sprintf("ACME_ARI_START=%s", acme_time_format(ev->ari_start, b1, sizeof(b1)));
        j->vars[k++] = acme_sprintf("ACME_ARI_END=%s", acme_time_format(ev->ari_end, b2, sizeof(b2)));
    }
    for (i = 0; i < k; i++) {
        oom |= j->vars[i] == NULL;
    }
    j->argv[0] = n->program;
    j->argv[1] = j->event;
    j->argv[2] = j->name;
    j->argv[3] = NULL;
    if (oom || j->event == NULL || j->name == NULL) {
        acme_log(n->loop, ACME_LOG_WARN, "acme: notify %s \"%s\": out of memory", ev->event, ev->name);
        job_free(j);
        return;
    }
    if (n->tail != NULL) {
        n->tail->next = j;
    } else {
        n->head = j;
    }
    n->tail = j;
    n->queued++;
    notify_next(n);
}
