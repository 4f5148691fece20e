/*
 * Running an admin's program: see acme_exec.h. The program is not our child: an intermediate process forks
 * it, waits for it and writes its pid and then its wait status to a pipe, which this thread reads. Whoever
 * reaps the intermediate (nginx logs it as "unknown process ... exited with code 0") takes nothing from us.
 * Between fork and exec only async-signal-safe calls (the process has other threads): argv and the
 * environment are built before.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE     /* pipe2, close_range */
#endif
#include "acme_exec.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define EXEC_OUT_MAX     8192       /* of what it prints, kept for the log */
#define EXEC_GRACE_MS    2000       /* after the kill, for its status */

int
acme_exec_check(const char *label, const char *path, acme_err_t *err)
{
    struct stat  st;

    if (path == NULL || path[0] != '/') {
        acme_err_set(err, ACME_ERR_CONFIG, "%s \"%s\" is not an absolute path", label, path ? path : "");
        return -1;
    }
    if (stat(path, &st) != 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "%s \"%s\": %s", label, path, strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode) || access(path, X_OK) != 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "%s \"%s\" is not an executable file", label, path);
        return -1;
    }
    return 0;
}

void
acme_exec_out_append(char **out, const char *text, size_t len)
{
    size_t  have;
    char   *n;

    if (out == NULL || len == 0) {
        return;
    }
    have = *out != NULL ? strlen(*out) : 0;
    n = realloc(*out, have + len + 1);
    if (n == NULL) {
        return;
    }
    memcpy(n + have, text, len);
    n[have + len] = '\0';
    *out = n;
}

static long long
mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The host's environment without drop_prefix's variables (ours replace them), then ours. */
static char **
exec_env(const acme_exec_t *x)
{
    char    **env;
    size_t    n = 0, nv = 0, i, k = 0, dl = x->drop_prefix ? strlen(x->drop_prefix) : 0;

    for (i = 0; environ != NULL && environ[i] != NULL; i++) {
        n++;
    }
    for (i = 0; x->vars != NULL && x->vars[i] != NULL; i++) {
        nv++;
    }
    env = calloc(n + nv + 1, sizeof(*env));
    if (env == NULL) {
        return NULL;
    }
    for (i = 0; i < n; i++) {
        if (dl == 0 || strncmp(environ[i], x->drop_prefix, dl) != 0) {
            env[k++] = environ[i];
        }
    }
    for (i = 0; i < nv; i++) {
        env[k++] = x->vars[i];
    }
    env[k] = NULL;
    return env;
}

/* The program's process: its own group (killed as one), stdout and stderr to the pipe, nothing else open. */
static void
exec_child(char *const argv[], char *const envp[], int out, int devnull)
{
    struct sigaction  sa;
    sigset_t          none;
    int               fd;

    setpgid(0, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &sa, NULL);
    sigaction(SIGCHLD, &sa, NULL);
    if (dup2(devnull, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0) {
        _exit(126);
    }
    /* the host's sockets and files are not the program's */
    if (close_range(3, ~0U, 0) != 0) {
        for (fd = 3; fd < 65536; fd++) {
            close(fd);
        }
    }
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(argv[0], argv, envp);
    (void) !write(2, "cannot execute the program\n", 27);
    _exit(127);
}

/* The intermediate: the program's parent, so that only it reaps it; reports pid, then status. */
static void
exec_reaper(char *const argv[], char *const envp[], int out[2], int st, int devnull)
{
    struct sigaction  sa;
    pid_t             h;
    int               status = 0;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    sigaction(SIGCHLD, &sa, NULL);
    h = fork();
    if (h == 0) {
        exec_child(argv, envp, out[1], devnull);
    }
    close(out[0]);
    close(out[1]);
    (void) !write(st, &h, sizeof(h));
    if (h > 0) {
        while (waitpid(h, &status, 0) < 0 && errno == EINTR) {
            /* void */
        }
        (void) !write(st, &status, sizeof(status));
    }
    _exit(0);
}

/* Printable text of what the program wrote, one "WHAT: " per line. */
static void
out_lines(char **out, const char *prefix, const char *buf, size_t len)
{
    size_t  i, start = 0;
    char    line[600];

    for (i = 0; i <= len; i++) {
        if (i < len && buf[i] != '\n') {
            continue;
        }
        if (i > start) {
            size_t n = i - start, k, o;
            o = (size_t) snprintf(line, sizeof(line), "%s: ", prefix);
            for (k = 0; k < n && o + 2 < sizeof(line); k++) {
                unsigned char c = (unsigned char) buf[start + k];
                line[o++] = c < 0x20 || c == 0x7f ? '?' : (char) c;
            }
            line[o++] = '\n';
            acme_exec_out_append(out, line, o);
        }
        start = i + 1;
    }
}

/* The last non-empty line of buf, for the error message. */
static void
last_line(const char *buf, size_t len, char *dst, size_t size)
{
    size_t  end = len, start, n, k;

    while (end > 0 && (buf[end - 1] == '\n' || buf[end - 1] == '\r' || buf[end - 1] == ' ')) {
        end--;
    }
    for (start = end; start > 0 && buf[start - 1] != '\n'; start--) {
        /* void */
    }
    n = end - start < size - 1 ? end - start : size - 1;
    for (k = 0; k < n; k++) {
        unsigned char c = (unsigned char) buf[start + k];
        dst[k] = c < 0x20 || c == 0x7f ? '?' : (char) c;
    }
    dst[n] = '\0';
}

int
acme_exec_run(const acme_exec_t *x, atomic_int *stop, char **out, acme_err_t *err)
{
    char           *const *argv = x->argv, **envp, buf[EXEC_OUT_MAX], last[300];
    const char     *what = x->what, *prog = x->argv[0];
    int             outp[2] = { -1, -1 }, stp[2] = { -1, -1 }, devnull = -1, status = 0, got_pid = 0;
    int             got_status = 0, out_open = 1, killed = 0, stopped = 0, rc = -1;
    pid_t           pid, hpid = -1;
    size_t          len = 0, i;
    long            limit = x->timeout > 0 ? x->timeout : 30;
    long long       deadline, kill_deadline = 0, now;
    unsigned char   sbuf[sizeof(pid_t) + sizeof(int)];
    size_t          slen = 0;

    envp = exec_env(x);
    if (envp == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }
    if (pipe2(outp, O_CLOEXEC) != 0 || pipe2(stp, O_CLOEXEC) != 0
        || (devnull = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0)
    {
        acme_err_set(err, ACME_ERR_INTERNAL, "%s (%s): pipe: %s", what, prog, strerror(errno));
        goto done;
    }
    pid = fork();
    if (pid < 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "%s (%s): fork: %s", what, prog, strerror(errno));
        goto done;
    }
    if (pid == 0) {
        close(stp[0]);
        exec_reaper(argv, envp, outp, stp[1], devnull);
    }
    close(outp[1]);
    close(stp[1]);
    outp[1] = stp[1] = -1;

    deadline = mono_ms() + limit * 1000;
    while (!got_status) {
        struct pollfd  pfd[2];
        nfds_t         nfd = 0;
        int            wait_ms, n;
        ssize_t        r;

        now = mono_ms();
        if (!killed && (now >= deadline || (stop != NULL && atomic_load(stop)))) {
            stopped = now < deadline;
            if (got_pid) {
                kill(-hpid, SIGKILL);
                kill(hpid, SIGKILL);
            }
            killed = 1;
            kill_deadline = now + EXEC_GRACE_MS;
        }
        if (killed && now >= kill_deadline) {
            break;
        }
        wait_ms = (int) ((killed ? kill_deadline : deadline) - now);
        wait_ms = wait_ms > 100 ? 100 : wait_ms < 0 ? 0 : wait_ms;
        pfd[nfd].fd = stp[0];
        pfd[nfd++].events = POLLIN;
        if (out_open) {
            pfd[nfd].fd = outp[0];
            pfd[nfd++].events = POLLIN;
        }
        n = poll(pfd, nfd, wait_ms);
        if (n < 0 && errno != EINTR) {
            break;
        }
        if (n <= 0) {
            continue;
        }
        if (out_open && pfd[1].revents != 0) {
            char tmp[2048];
            r = read(outp[0], tmp, sizeof(tmp));
            if (r <= 0 && !(r < 0 && errno == EINTR)) {
                out_open = 0;
            } else if (r > 0) {
                size_t take = (size_t) r < sizeof(buf) - len ? (size_t) r : sizeof(buf) - len;
                memcpy(buf + len, tmp, take);
                len += take;
            }
        }
        if (pfd[0].revents != 0) {
            r = read(stp[0], sbuf + slen, sizeof(sbuf) - slen);
            if (r <= 0 && !(r < 0 && errno == EINTR)) {
                break;          /* the intermediate is gone without a status */
            }
            if (r > 0) {
                slen += (size_t) r;
            }
            if (!got_pid && slen >= sizeof(pid_t)) {
                memcpy(&hpid, sbuf, sizeof(pid_t));
                got_pid = 1;
                if (hpid <= 0) {
                    break;
                }
                if (killed) {
                    kill(-hpid, SIGKILL);
                    kill(hpid, SIGKILL);
                }
            }
            if (slen == sizeof(sbuf)) {
                memcpy(&status, sbuf + sizeof(pid_t), sizeof(int));
                got_status = 1;
            }
        }
    }
    /* what it printed after its end (a child of its own may hold the pipe: not waited for) */
    if (got_status && out_open) {
        ssize_t r;
        fcntl(outp[0], F_SETFL, O_NONBLOCK);
        while (len < sizeof(buf) && (r = read(outp[0], buf + len, sizeof(buf) - len)) > 0) {
            len += (size_t) r;
        }
    }
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        /* void: the host's handler may have reaped it (ECHILD) */
    }
    out_lines(out, what, buf, len);
    last_line(buf, len, last, sizeof(last));
    if (killed && stopped) {
        acme_err_set(err, ACME_ERR_INTERNAL, "%s (%s): stopped (killed)", what, prog);
    } else if (killed) {
        acme_err_set(err, ACME_ERR_NETWORK, "%s (%s): did not finish within %ld s: killed%s%s", what,
                     prog, limit, last[0] ? "; it printed last: " : "", last);
    } else if (!got_status) {
        acme_err_set(err, ACME_ERR_INTERNAL, "%s (%s): %s", what, prog,
                     got_pid && hpid <= 0 ? "cannot fork" : "lost its status");
    } else if (WIFSIGNALED(status)) {
        acme_err_set(err, ACME_ERR_CONFIG, "%s (%s): killed by signal %d%s%s", what, prog,
                     WTERMSIG(status), last[0] ? ": " : "", last);
    } else if (WEXITSTATUS(status) != 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "%s (%s): exited with status %d%s%s", what, prog,
                     WEXITSTATUS(status), last[0] ? ": " : "", last);
    } else {
        rc = 0;
    }
done:
    for (i = 0; i < 2; i++) {
        if (outp[i] >= 0) {
            close(outp[i]);
        }
        if (stp[i] >= 0) {
            close(stp[i]);
        }
    }
    if (devnull >= 0) {
        close(devnull);
    }
    free(envp);
    return rc;
}
