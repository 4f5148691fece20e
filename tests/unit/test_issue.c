/* Issuance jobs: cancelling one while its request is in flight. */
#include "unit.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include "acme_client.h"
#include "acme_issue.h"
#include "acme_loop.h"
#include "acme_store.h"

static int   done_calls;

static void
issue_done(void *arg, const char *name, const acme_err_t *err)
{
    (void) arg;
    (void) name;
    (void) err;
    done_calls++;
}

static int
publish(void *data, const char *type, const acme_ident_t *id, const char *token,
    const char *key_authz, acme_err_t *err)
{
    return 0;
}

static void
withdraw(void *data, const char *type, const acme_ident_t *id, const char *token)
{
}

/* A CA that accepts connections and never answers. */
static int
silent_ca(int *port)
{
    struct sockaddr_in  sin;
    socklen_t           len = sizeof(sin);
    int                 fd;

    fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *) &sin, sizeof(sin)), 0);
    assert_int_equal(listen(fd, 8), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *) &sin, &len), 0);
    *port = ntohs(sin.sin_port);
    return fd;
}

/*
 * Cancelled while its request waits for the CA: the lock is free at once, done never runs, and freeing
 * the client afterwards leaves nothing behind (the job used to wait for a callback that never came).
 */
static void
test_cancel_while_request_in_flight(void **state)
{
    char                   dir[] = "/tmp/acme-issue-test-XXXXXX", url[64];
    int                    fd, port;
    acme_err_t             err;
    acme_loop_t           *loop;
    acme_store_t          *st;
    acme_client_t         *c;
    acme_issue_t          *job;
    acme_lock_t           *lk;
    acme_ident_t           id;
    acme_client_conf_t     cc;
    acme_issue_req_t       req;
    acme_challenge_host_t  ch = { NULL, publish, withdraw };

    fd = silent_ca(&port);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/dir", port);
    assert_non_null(mkdtemp(dir));
    loop = acme_loop_new(NULL, ACME_LOG_ERR, &err);
    assert_non_null(loop);
    st = acme_store_fs_open(dir, 1, &err);
    assert_non_null(st);
    memset(&cc, 0, sizeof(cc));
    cc.directory_url = url;
    cc.agree_tos = 1;
    cc.account_keyspec = ACME_KEYSPEC_DEFAULT;
    cc.timeout_ms = 60000;
    c = acme_client_new(loop, st, &cc, &err);
    assert_non_null(c);
    assert_int_equal(acme_ident_parse("cancel.example.org", &id, &err), 0);
    memset(&req, 0, sizeof(req));
    req.name = "cancel.example.org";
    req.ids = &id;
    req.nids = 1;
    req.keyspec = ACME_KEYSPEC_DEFAULT;

    done_calls = 0;
    job = acme_issue_start(c, &req, &ch, issue_done, NULL, &err);
    assert_non_null(job);
    /* the job asks for the directory, which never comes */
    acme_loop_run(loop, NULL, 300);
    assert_int_equal(st->ops->lock(st, "cert-cancel.example.org", &lk, &err), 0);

    acme_issue_cancel(job);
    assert_int_equal(st->ops->lock(st, "cert-cancel.example.org", &lk, &err), 1);
    st->ops->unlock(lk);

    acme_client_free(c);
    acme_loop_run(loop, NULL, 100);
    assert_int_equal(done_calls, 0);
    acme_ident_free(&id);
    acme_store_close(st);
    acme_loop_free(loop);
    close(fd);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cancel_while_request_in_flight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
