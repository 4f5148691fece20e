/*
 * The hook publisher: `PROGRAM add|del FQDN VALUE`, the record's context in its environment (never a
 * secret on its command line: the program reads its own credentials), within a time limit (its process
 * group is killed then), what it prints passed to the log, its exit status the result. Blocking: the DNS
 * thread only.
 *
 * The host may reap any child of its process: nginx's SIGCHLD handler calls waitpid(-1, WNOHANG) in every
 * process, the cache manager that runs the core too. So the hook is not our child: an intermediate process
 * forks it, waits for it and writes its pid and then its wait status to a pipe, which this thread reads.
 * Whoever reaps the intermediate (nginx logs it as "unknown process ... exited with code 0") takes nothing
 * from us. Between fork and exec only async-signal-safe calls (the process has other threads): argv and
 * the environment are built before.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE     /* pipe2, close_range */
#endif
#include "acme_dns_int.h"

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

#define HOOK_OUT_MAX     8192       /* of what it prints, kept for the log */
#define HOOK_GRACE_MS    2000       /* after the kill, for its status */
#define HOOK_VARS        8

int
acme_dns_hook_check(const acme_dns_config_t *cfg, acme_err_t *err)
{
    struct stat  st;

    if (cfg->hook == NULL || cfg->hook[0] != '/') {
        acme_err_set(err, ACME_ERR_CONFIG, "the DNS hook \"%s\" is not an absolute path",
                     cfg->hook ? cfg->hook : "");
        return -1;
    }
    if (stat(cfg->hook, &st) != 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "the DNS hook \"%s\": %s", cfg->hook, strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode) || access(cfg->hook, X_OK) != 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "the DNS hook \"%s\" is not an executable file", cfg->hook);
        return -1;
    }
    return 0;
}

static long long
mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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

/* The host's environment without ACME_* (ours replace them), then ours. */
static char **
hook_env(const acme_dns_record_t *rec, const acme_dns_target_t *t, int add, char **vars)
{
    char    **env;
    size_t    n = 0, i, k = 0;

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
            return NULL;
        }
    }
    for (i = 0; environ != NULL && environ[i] != NULL; i++) {
        n++;
    }
    env = calloc(n + HOOK_VARS, sizeof(*env));
    if (env == NULL) {
        return NULL;
    }
    for (i = 0; i < n; i++) {
        if (strncmp(environ[i], "ACME_", 5) != 0) {
            env[k++] = environ[i];
        }
    }
    for (i = 0; vars[i] != NULL; i++) {
        env[k++] = vars[i];
    }
    env[k] = NULL;
    return env;
}

/* The hook's process: its own group (killed as one), stdout and stderr to the pipe, nothing else open. */
static void
hook_exec(char *const argv[], char *const envp[], int out, int devnull)
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
    /* the host's sockets and files are not the hook's */
    if (close_range(3, ~0U, 0) != 0) {
        for (fd = 3; fd < 65536; fd++) {
            close(fd);
        }
    }
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(argv[0], argv, envp);
    (void) !write(2, "cannot execute the hook\n", 24);
    _exit(127);
}

/* The intermediate: the hook's parent, so that only it reaps the hook; reports pid, then status. */
static void
hook_reaper(char *const argv[], char *const envp[], int out[2], int st, int devnull)
{
    struct sigaction  sa;
    pid_t             h;
    int               status = 0;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    sigaction(SIGCHLD, &sa, NULL);
    h = fork();
    if (h == 0) {
        hook_exec(argv, envp, out[1], devnull);
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

/* Printable text of what the hook wrote, one "hook ACTION FQDN: " per line. */
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
            acme_dns_out_append(out, line, o);
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
acme_dns_hook_run(const acme_dns_config_t *cfg, const acme_dns_record_t *rec, const acme_dns_target_t *t,
    int add, atomic_int *stop, char **out, acme_err_t *err)
{
    char           *argv[5], *vars[HOOK_VARS], **envp, buf[HOOK_OUT_MAX], what[600], last[300];
    int             outp[2] = { -1, -1 }, stp[2] = { -1, -1 }, devnull = -1, status = 0, got_pid = 0;
    int             got_status = 0, out_open = 1, killed = 0, stopped = 0, rc = -1;
    pid_t           pid, hpid = -1;
    size_t          len = 0, i;
    long            limit = cfg->hook_timeout > 0 ? cfg->hook_timeout : ACME_DNS_HOOK_TIMEOUT_DEFAULT;
    long long       deadline, kill_deadline = 0, now;
    unsigned char   sbuf[sizeof(pid_t) + sizeof(int)];
    size_t          slen = 0;

    memset(vars, 0, sizeof(vars));
    snprintf(what, sizeof(what), "hook %s %s", add ? "add" : "del", t->fqdn);
    envp = hook_env(rec, t, add, vars);
    argv[0] = cfg->hook;
    argv[1] = add ? "add" : "del";
    argv[2] = t->fqdn;
    argv[3] = rec->value;
    argv[4] = NULL;
    if (envp == NULL) {
        acme_err_set(err, ACME_ERR_INTERNAL, "out of memory");
        goto done;
    }
    if (pipe2(outp, O_CLOEXEC) != 0 || pipe2(stp, O_CLOEXEC) != 0
        || (devnull = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0)
    {
        acme_err_set(err, ACME_ERR_INTERNAL, "%s (%s): pipe: %s", what, cfg->hook, strerror(errno));
        goto done;
    }
    pid = fork();
    if (pid < 0) {
        acme_err_set(err, ACME_ERR_INTERNAL, "%s (%s): fork: %s", what, cfg->hook, strerror(errno));
        goto done;
    }
    if (pid == 0) {
        close(stp[0]);
        hook_reaper(argv, envp, outp, stp[1], devnull);
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
            kill_deadline = now + HOOK_GRACE_MS;
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
        acme_err_set(err, ACME_ERR_INTERNAL, "%s (%s): stopped (killed)", what, cfg->hook);
    } else if (killed) {
        acme_err_set(err, ACME_ERR_NETWORK, "%s (%s): did not finish within %ld s: killed%s%s", what,
                     cfg->hook, limit, last[0] ? "; it printed last: " : "", last);
    } else if (!got_status) {
        acme_err_set(err, ACME_ERR_INTERNAL, "%s (%s): %s", what, cfg->hook,
                     got_pid && hpid <= 0 ? "cannot fork" : "lost its status");
    } else if (WIFSIGNALED(status)) {
        acme_err_set(err, ACME_ERR_CONFIG, "%s (%s): killed by signal %d%s%s", what, cfg->hook,
                     WTERMSIG(status), last[0] ? ": " : "", last);
    } else if (WEXITSTATUS(status) != 0) {
        acme_err_set(err, ACME_ERR_CONFIG, "%s (%s): exited with status %d%s%s", what, cfg->hook,
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
    for (i = 0; i < HOOK_VARS; i++) {
        free(vars[i]);
    }
    free(envp);
    return rc;
}
