
/*
 * acme_host_t on nginx events: the core's acme_loop runs in hosted mode on
 * an nginx timer and one ngx_connection_t per libcurl socket
 * (level-triggered, as libcurl expects); its log lines go to nginx's log.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_acme_runner.h"


void
ngx_http_acme_host_log(void *data, int level, const char *msg)
{
    ngx_http_acme_runner_t  *rn = data;

    ngx_uint_t  l;

    switch (level) {
    case ACME_LOG_ERR:
        l = NGX_LOG_ERR;
        break;
    case ACME_LOG_WARN:
        l = NGX_LOG_WARN;
        break;
    case ACME_LOG_NOTICE:
        l = NGX_LOG_NOTICE;
        break;
    case ACME_LOG_INFO:
        l = NGX_LOG_INFO;
        break;
    default:
        l = NGX_LOG_DEBUG;
        break;
    }

    ngx_log_error(l, rn->log, 0, "%s", msg);
}


void
ngx_http_acme_host_timer_handler(ngx_event_t *ev)
{
    ngx_http_acme_runner_t  *rn = ev->data;

    if (rn->loop) {
        acme_loop_on_timer(rn->loop);
    }
}


void
ngx_http_acme_host_set_timer(void *data, long ms)
{
    ngx_http_acme_runner_t  *rn = data;

    /*
     * ngx_add_timer() keeps a pending timer less than 300 ms
     * (NGX_TIMER_LAZY_DELAY) away from the new deadline: "at once" would
     * wait for curl's earlier request of up to 300 ms
     */

    if (rn->timer.timer_set) {
        ngx_del_timer(&rn->timer);
    }

    if (ms < 0) {
        return;
    }

    ngx_add_timer(&rn->timer, (ngx_msec_t) ms);
}


static void
ngx_http_acme_host_read_handler(ngx_event_t *ev)
{
    ngx_connection_t        *c = ev->data;
    ngx_http_acme_runner_t  *rn = c->data;

    if (rn->loop) {
        acme_loop_on_socket(rn->loop, c->fd, ACME_EV_IN);
    }
}


static void
ngx_http_acme_host_write_handler(ngx_event_t *ev)
{
    ngx_connection_t        *c = ev->data;
    ngx_http_acme_runner_t  *rn = c->data;

    if (rn->loop) {
        acme_loop_on_socket(rn->loop, c->fd, ACME_EV_OUT);
    }
}


void
ngx_http_acme_conn_forget(ngx_http_acme_runner_t *rn, ngx_uint_t i)
{
    ngx_connection_t  *c;

    c = rn->conns[i];

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    /* the socket is libcurl's: it closes it */

    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;

    rn->conns[i] = rn->conns[--rn->nconns];
}


int
ngx_http_acme_host_watch(void *data, int fd, int events)
{
    ngx_http_acme_runner_t  *rn = data;

    ngx_uint_t          i;
    ngx_connection_t   *c, **conns;

    c = NULL;

    for (i = 0; i < rn->nconns; i++) {
        if (rn->conns[i]->fd == fd) {
            c = rn->conns[i];
            break;
        }
    }

    if (events == 0) {
        if (c) {
            ngx_http_acme_conn_forget(rn, i);
        }

        return 0;
    }

    if (c == NULL) {
        if (rn->nconns == rn->aconns) {
            conns = realloc(rn->conns,
                            (rn->aconns + 8) * sizeof(ngx_connection_t *));
            if (conns == NULL) {
                return -1;
            }

            rn->conns = conns;
            rn->aconns += 8;
        }

        c = ngx_get_connection(fd, rn->log);
        if (c == NULL) {
            return -1;
        }

        c->data = rn;
        c->read->handler = ngx_http_acme_host_read_handler;
        c->write->handler = ngx_http_acme_host_write_handler;
        c->read->log = rn->log;
        c->write->log = rn->log;

        rn->conns[rn->nconns++] = c;
    }

    if ((events & ACME_EV_IN) && !c->read->active) {
        if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return -1;
        }

    } else if (!(events & ACME_EV_IN) && c->read->active) {
        if (ngx_del_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
            return -1;
        }
    }

    if ((events & ACME_EV_OUT) && !c->write->active) {
        if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return -1;
        }

    } else if (!(events & ACME_EV_OUT) && c->write->active) {
        if (ngx_del_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
            return -1;
        }
    }

    return 0;
}
