/* Key generation off the event loop: a thread for RSA under a hosted loop, in-process otherwise. */
#include "acme_keygen.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

#define KEYGEN_POLL_MS     20
#define KEYGEN_TIMEOUT_MS  120000L

struct acme_keygen_s {
    acme_loop_t          *loop;
    acme_keyspec_t        ks;
    acme_keygen_done_pt   done;
    void                 *arg;
    acme_timer_t         *timer;
    pthread_t             thread;
    int                   threaded;     /* thread started and not joined yet */
    atomic_int            finished;     /* the thread set key or err */
    atomic_int            stop;         /* the thread gives up at OpenSSL's next progress callback */
    long                  waited_ms;
    EVP_PKEY             *key;
    acme_err_t            err;
};

static int keygen_threaded;

int
acme_keygen_last_threaded(void)
{
    return keygen_threaded;
}

/* Waits for the thread: it ends within one progress callback once stop is set. */
static void
keygen_join(acme_keygen_t *kg)
{
    if (kg->threaded) {
        pthread_join(kg->thread, NULL);
        kg->threaded = 0;
    }
}

static void
keygen_free(acme_keygen_t *kg)
{
    atomic_store(&kg->stop, 1);
    keygen_join(kg);
    EVP_PKEY_free(kg->key);
    free(kg);
}

static void
keygen_finish(acme_keygen_t *kg, EVP_PKEY *key, const acme_err_t *err)
{
    acme_keygen_done_pt  done = kg->done;
    void                *arg = kg->arg;

    kg->timer = NULL;
    if (kg->key == key) {
        kg->key = NULL;
    }
    if (err != NULL) {
        /* err may live in kg: copy it out before freeing */
        acme_err_t e = *err;
        keygen_free(kg);
        done(arg, NULL, &e);
        return;
    }
    keygen_free(kg);
    done(arg, key, NULL);
}

static void
keygen_local_done(void *p)
{
    acme_keygen_t *kg = p;

    keygen_finish(kg, kg->key, kg->key == NULL ? &kg->err : NULL);
}

/* OpenSSL's progress callback, called for every prime candidate: 0 aborts the generation. */
static int
keygen_progress(EVP_PKEY_CTX *ctx)
{
    acme_keygen_t *kg = EVP_PKEY_CTX_get_app_data(ctx);

    return !atomic_load(&kg->stop);
}

static void *
keygen_thread(void *p)
{
    acme_keygen_t  *kg = p;
    EVP_PKEY_CTX   *ctx;
    EVP_PKEY       *key = NULL;
    char            buf[32];

    ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    if (ctx != NULL && EVP_PKEY_keygen_init(ctx) == 1
        && EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, kg->ks.bits) == 1)
    {
        EVP_PKEY_CTX_set_app_data(ctx, kg);
        EVP_PKEY_CTX_set_cb(ctx, keygen_progress);
        if (EVP_PKEY_generate(ctx, &key) != 1) {
            key = NULL;
        }
    }
    if (key == NULL) {
        if (atomic_load(&kg->stop)) {
            acme_err_set(&kg->err, ACME_ERR_INTERNAL, "key generation (%s) stopped",
                         acme_keyspec_str(&kg->ks, buf, sizeof(buf)));
        } else {
            acme_err_ssl(&kg->err, "key generation (%s) failed", acme_keyspec_str(&kg->ks, buf, sizeof(buf)));
        }
    }
    EVP_PKEY_CTX_free(ctx);
    ERR_clear_error();
    kg->key = key;
    atomic_store(&kg->finished, 1);
    return NULL;
}

static void
keygen_poll(void *p)
{
    acme_keygen_t  *kg = p;
    acme_err_t      err;

    kg->timer = NULL;
    if (atomic_load(&kg->finished)) {
        keygen_join(kg);
        keygen_finish(kg, kg->key, kg->key == NULL ? &kg->err : NULL);
        return;
    }
    kg->waited_ms += KEYGEN_POLL_MS;
    if (kg->waited_ms > KEYGEN_TIMEOUT_MS) {
        acme_err_set(&err, ACME_ERR_INTERNAL, "key generation: no key after %ld s", KEYGEN_TIMEOUT_MS / 1000);
        keygen_finish(kg, NULL, &err);
        return;
    }
    kg->timer = acme_timer_add(kg->loop, KEYGEN_POLL_MS, keygen_poll, kg);
    if (kg->timer == NULL) {
        acme_err_set(&err, ACME_ERR_INTERNAL, "out of memory");
        keygen_finish(kg, NULL, &err);
    }
}

acme_keygen_t *
acme_keygen_start(acme_loop_t *loop, const acme_keyspec_t *ks, acme_keygen_done_pt done, void *arg,
    acme_err_t *err)
{
    acme_keygen_t  *kg;
    sigset_t        all, old;
    int             rc;

    kg = calloc(1, sizeof(*kg));
    if (kg == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    kg->loop = loop;
    kg->ks = *ks;
    kg->done = done;
    kg->arg = arg;
    atomic_init(&kg->finished, 0);
    atomic_init(&kg->stop, 0);
    keygen_threaded = 0;

    if (!acme_loop_hosted(loop) || ks->alg != ACME_KEY_RSA
        || (ks->bits != 2048 && ks->bits != 3072 && ks->bits != 4096))
    {
        /* quick, or refused at once by acme_key_generate */
        kg->key = acme_key_generate(ks, &kg->err);
        kg->timer = acme_timer_add(loop, 0, keygen_local_done, kg);
        if (kg->timer == NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            keygen_free(kg);
            return NULL;
        }
        return kg;
    }

    kg->timer = acme_timer_add(loop, KEYGEN_POLL_MS, keygen_poll, kg);
    if (kg->timer == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        free(kg);
        return NULL;
    }
    /*
     * A thread, not a child process: the host reaps any child it did not start and logs it ("unknown
     * process" in nginx). It takes no signal (the host's handlers stay with its own thread).
     */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&kg->thread, NULL, keygen_thread, kg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "key generation: cannot start a thread: %s", strerror(rc));
        acme_timer_cancel(loop, kg->timer);
        free(kg);
        return NULL;
    }
    kg->threaded = 1;
    keygen_threaded = 1;
    acme_log(loop, ACME_LOG_INFO, "acme: generating an RSA-%d key in a background thread", ks->bits);
    return kg;
}

void
acme_keygen_cancel(acme_keygen_t *kg)
{
    if (kg == NULL) {
        return;
    }
    if (kg->timer != NULL) {
        acme_timer_cancel(kg->loop, kg->timer);
    }
    keygen_free(kg);
}
