"""Nothing blocks a worker that serves traffic: with one worker and acme_storage redis://, a Redis that
stops answering (SIGSTOPped, or a listener that accepts and never replies) while the ACME client works
leaves every request answered at once. The client runs in nginx's cache manager process."""
import os
import signal
import socket
import threading
import time

import pytest

from harness import close_listener, free_port, wait_for
from nginx_harness import force_renewal, http_get, https_get, issuer_block, managed_servers, nginx_factory  # noqa: F401
from test_nginx_redis import REDIS_DOWN, alpn_conf, served, storage_conf, wait_served
from test_redis_store import REDIS_CLI, REDIS_SERVER, Redis, key_file

pytestmark = pytest.mark.skipif(not (os.access(REDIS_SERVER, os.X_OK) and os.access(REDIS_CLI, os.X_OK)),
                                reason="redis-server / redis-cli not installed")

NAME = "stall.example.org"
SLOW = 0.5          # seconds: an answer slower than this means the worker was blocked
ALLOWED = REDIS_DOWN + [r"acme: "]


def timed_requests(fetch, count=50, spread=10.0):
    """count requests over about spread seconds: the slowest answer, in seconds (a failure counts as
    its client time-out)."""
    worst = 0.0
    for _ in range(count):
        t0 = time.monotonic()
        try:
            fetch()
        except OSError:
            pass
        worst = max(worst, time.monotonic() - t0)
        time.sleep(spread / count)
    return worst


def runner_pid(ng):
    """the cache manager's pid once it says it runs the ACME client."""
    ng.wait_log(r"acme: the ACME client runs in this cache manager process", timeout=15)
    pids = ng.helper_pids()
    assert len(pids) == 1, pids
    return pids[0]


@pytest.mark.serial
def test_stalled_redis_during_forced_renewal(pebble, nginx_factory, tmp_path, procs):
    redis = Redis(procs, tmp_path / "redis")
    key = key_file(tmp_path / "storage.key")
    ng = nginx_factory(alpn_conf(pebble, tmp_path, redis, key, NAME), wait_port=pebble.tls_port,
                       workers=1, allowed=ALLOWED)
    old = wait_served(pebble.tls_port, NAME, pebble)
    roots = pebble.roots(0)

    redis.proc.send_signal(signal.SIGSTOP)
    try:
        r = force_renewal(pebble.tls_port, NAME, NAME, timeout=5, request_timeout=2)
        assert r.status == 202, r
        worst = timed_requests(lambda: https_get(pebble.tls_port, NAME, "/", roots_pem=roots, timeout=2))
        assert worst < SLOW, f"a request took {worst:.2f} s while Redis was stopped"
        assert served(pebble.tls_port, NAME, roots) == old
    finally:
        redis.proc.send_signal(signal.SIGCONT)

    # the renewal goes through once Redis answers again
    wait_served(pebble.tls_port, NAME, pebble, other_than=old, timeout=120)
    assert runner_pid(ng) not in ng.worker_pids()


class Blackhole:
    """A TCP listener that accepts connections and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        close_listener(self.sock, self.thread)
        for c in self.conns:
            c.close()


@pytest.mark.serial
def test_blackholed_redis(pebble, nginx_factory, tmp_path):
    hole = Blackhole()
    try:
        key = key_file(tmp_path / "storage.key")
        port = free_port()
        conf = storage_conf(type("R", (), {"url": lambda self: f"redis://127.0.0.1:{hole.port}"})(), key) \
            + issuer_block("pebble", pebble, tmp_path / "state") + managed_servers(port, pebble.tls_port, NAME)
        # nginx's fast shutdown (the harness's SIGTERM) kills a cache manager that waits on Redis
        ng = nginx_factory(conf, wait_port=port, workers=1,
                           allowed=ALLOWED + [r"cache manager process \d+ exited on signal 9"])
        # the ACME client is now waiting on Redis, again and again
        wait_for(lambda: hole.conns, 15, what="a connection to the blackhole")
        worst = timed_requests(lambda: http_get(port, NAME, "/", timeout=2))
        assert worst < SLOW, f"a request took {worst:.2f} s while Redis never answered"
        assert http_get(port, NAME, "/", timeout=2) == (200, b"plain\n")
        assert runner_pid(ng) not in ng.worker_pids()
    finally:
        hole.close()


def test_reload_during_rsa_keygen(pebble, nginx_factory, tmp_path):
    """A reload while the cache manager makes an RSA-4096 key in its thread: the old cache manager leaves
    at once (its atexit handler stops and joins the thread, releases the lock), the new one takes over
    and issues; no process dies on a signal, and workers never run the client."""
    from test_nginx import basic_conf, wait_issued
    https = free_port()
    ng = nginx_factory(basic_conf(pebble, tmp_path, https, cert_args="key=rsa:4096"), wait_port=https)
    old = runner_pid(ng)
    ng.wait_log(r"acme: generating an RSA-4096 key", timeout=30)
    mark = ng.reload()
    ng.wait_log(r"acme: the ACME client runs in this cache manager process", since=mark, timeout=15)
    wait_for(lambda: old not in ng.helper_pids(), 10, what="the old cache manager to exit")
    assert "ACME client stopped in this process" in ng.log_text(mark)
    serial = wait_issued(https, "a.example.org", pebble, timeout=90)
    assert serial in pebble.issued_serials()
    assert pebble.order_count() == 1
    assert not __import__("re").search(r"exited on signal|\[(alert|crit|emerg)\]", ng.log_text())
    assert set(ng.helper_pids()).isdisjoint(ng.worker_pids()) and len(ng.helper_pids()) == 1


def test_with_a_proxy_cache_of_its_own(pebble, nginx_factory, tmp_path):
    """A proxy_cache_path of the user's: one cache manager calls both managers and runs the client; the
    cache loader (also a helper process, alive for its first minute) never does."""
    from test_nginx import basic_conf, status, wait_issued
    https = free_port()
    conf = f"proxy_cache_path {tmp_path / 'cache'} keys_zone=pc:1m;\n" + basic_conf(pebble, tmp_path, https)
    ng = nginx_factory(conf, wait_port=https)
    # the loader names itself once its init_process calls (ours included) are done
    loaders = wait_for(lambda: ng._child_pids(b"cache loader process"), 10, what="the cache loader")
    assert len(loaders) == 1, loaders
    wait_issued(https, "a.example.org", pebble)
    leader = status(https, "a.example.org")["leader_pid"]
    assert ng.helper_pids() == [leader] and leader == runner_pid(ng)
    assert len(__import__("re").findall(r"acme: the ACME client runs in this", ng.log_text())) == 1
    assert loaders[0] not in (leader, *ng.worker_pids())


def _nice(pid):
    # /proc/PID/stat: the 19th field is the nice value (the command name in parentheses may hold spaces)
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


@pytest.mark.serial
def test_cache_manager_yields_the_cpu_to_workers(pebble, nginx_factory, tmp_path):
    """The cache manager that runs the client runs at a priority 10 below the workers', so issuance
    that shares a CPU with a worker lets the worker's handshakes go first."""
    from test_nginx import basic_conf, wait_issued
    https = free_port()
    ng = nginx_factory(basic_conf(pebble, tmp_path, https), wait_port=https)
    manager = runner_pid(ng)
    workers = ng.worker_pids()
    assert workers
    assert {_nice(manager) - _nice(w) for w in workers} == {10}
    wait_issued(https, "a.example.org", pebble)
