/* Key generation off the event loop: a forked child for RSA under a hosted loop, in-process otherwise. */
#include "acme_keygen.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <openssl/crypto.h>

#define KEYGEN_POLL_MS     20
#define KEYGEN_TIMEOUT_MS  120000L
#define KEYGEN_PEM_MAX     (64 * 1024)

struct acme_keygen_s {
    acme_loop_t          *loop;
    acme_keyspec_t        ks;
    acme_keygen_done_pt   done;
    void                 *arg;
    acme_timer_t         *timer;
    pid_t                 pid;
    int                   fd;
    acme_buf_t            pem;
    long                  waited_ms;
    EVP_PKEY             *key;      /* in-process result */
    acme_err_t            err;
};

static int keygen_forked;

int
acme_keygen_last_forked(void)
{
    return keygen_forked;
}

static void
keygen_free(acme_keygen_t *kg)
{
    if (kg->fd >= 0) {
        close(kg->fd);
    }
    if (kg->pem.data != NULL) {
        OPENSSL_cleanse(kg->pem.data, kg->pem.len);
    }
    acme_buf_free(&kg->pem);
    EVP_PKEY_free(kg->key);
    free(kg);
}

/* The child may already have been reaped by the host (nginx's SIGCHLD handler waits for any child). */
static void
keygen_reap(pid_t pid)
{
    int st;

    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        /* again */
    }
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

static void
keygen_child(const acme_keyspec_t *ks, int wfd)
{
    EVP_PKEY  *key;
    char      *pem;
    size_t     len, off = 0;
    ssize_t    n;

    /* keep only the pipe: the host's sockets must not outlive it in here */
    if (wfd != 3 && dup2(wfd, 3) < 0) {
        _exit(1);
    }
    close_range(4, ~0U, 0);

    key = acme_key_generate(ks, NULL);
    pem = key ? acme_key_to_pem(key, &len, NULL) : NULL;
    if (pem == NULL) {
        _exit(1);
    }
    while (off < len) {
        n = write(3, pem + off, len - off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            _exit(1);
        }
        off += (size_t) n;
    }
    OPENSSL_cleanse(pem, len);
    _exit(0);
}

static void
keygen_poll(void *p)
{
    acme_keygen_t  *kg = p;
    char            buf[4096];
    ssize_t         n;
    EVP_PKEY       *key;
    acme_err_t      err;

    kg->timer = NULL;
    for ( ;; ) {
        n = read(kg->fd, buf, sizeof(buf));
        if (n > 0) {
            if (kg->pem.len + (size_t) n > KEYGEN_PEM_MAX || acme_buf_append(&kg->pem, buf, (size_t) n) != 0) {
                OPENSSL_cleanse(buf, sizeof(buf));
                acme_err_set(&err, ACME_ERR_INTERNAL, "key generation: the child process sent too much");
                goto fail;
            }
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        break;
    }
    OPENSSL_cleanse(buf, sizeof(buf));

    if (n < 0 && errno == EAGAIN) {
        kg->waited_ms += KEYGEN_POLL_MS;
        if (kg->waited_ms > KEYGEN_TIMEOUT_MS) {
            acme_err_set(&err, ACME_ERR_INTERNAL, "key generation: no key after %ld s", KEYGEN_TIMEOUT_MS / 1000);
            goto fail;
        }
        kg->timer = acme_timer_add(kg->loop, KEYGEN_POLL_MS, keygen_poll, kg);
        if (kg->timer == NULL) {
            acme_err_set(&err, ACME_ERR_INTERNAL, "out of memory");
            goto fail;
        }
        return;
    }
    if (n < 0) {
        acme_err_set(&err, ACME_ERR_INTERNAL, "key generation: reading from the child process: %s",
                     strerror(errno));
        goto fail;
    }

    /* end of file: the child wrote everything and exited */
    keygen_reap(kg->pid);
    kg->pid = 0;
    key = kg->pem.len > 0 ? acme_key_from_pem(kg->pem.data, kg->pem.len, NULL) : NULL;
    if (key == NULL) {
        acme_err_set(&err, ACME_ERR_INTERNAL, "key generation: the child process failed");
        keygen_finish(kg, NULL, &err);
        return;
    }
    keygen_finish(kg, key, NULL);
    return;

fail:
    kill(kg->pid, SIGKILL);
    keygen_reap(kg->pid);
    kg->pid = 0;
    keygen_finish(kg, NULL, &err);
}

acme_keygen_t *
acme_keygen_start(acme_loop_t *loop, const acme_keyspec_t *ks, acme_keygen_done_pt done, void *arg,
    acme_err_t *err)
{
    acme_keygen_t  *kg;
    int             fds[2];

    kg = calloc(1, sizeof(*kg));
    if (kg == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    kg->loop = loop;
    kg->ks = *ks;
    kg->done = done;
    kg->arg = arg;
    kg->fd = -1;
    keygen_forked = 0;

    if (!acme_loop_hosted(loop) || ks->alg != ACME_KEY_RSA) {
        kg->key = acme_key_generate(ks, &kg->err);
        kg->timer = acme_timer_add(loop, 0, keygen_local_done, kg);
        if (kg->timer == NULL) {
            acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
            keygen_free(kg);
            return NULL;
        }
        return kg;
    }

    if (pipe2(fds, O_CLOEXEC) != 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "key generation: pipe: %s", strerror(errno));
        free(kg);
        return NULL;
    }
    kg->pid = fork();
    if (kg->pid < 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "key generation: fork: %s", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        free(kg);
        return NULL;
    }
    if (kg->pid == 0) {
        close(fds[0]);
        keygen_child(ks, fds[1]);
    }
    close(fds[1]);
    kg->fd = fds[0];
    if (fcntl(kg->fd, F_SETFL, fcntl(kg->fd, F_GETFL) | O_NONBLOCK) != 0
        || (kg->timer = acme_timer_add(loop, KEYGEN_POLL_MS, keygen_poll, kg)) == NULL)
    {
        acme_err_set(err, ACME_ERR_INTERNAL, "key generation: cannot watch the child process");
        kill(kg->pid, SIGKILL);
        keygen_reap(kg->pid);
        keygen_free(kg);
        return NULL;
    }
    keygen_forked = 1;
    acme_log(loop, ACME_LOG_INFO, "acme: generating an RSA-%d key in child process %ld", ks->bits,
             (long) kg->pid);
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
    if (kg->pid > 0) {
        kill(kg->pid, SIGKILL);
        keygen_reap(kg->pid);
    }
    keygen_free(kg);
}
