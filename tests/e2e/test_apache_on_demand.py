"""On-demand TLS in Apache against Pebble: the first handshake for a new allowed name waits (in mod_ssl's
certificate callback, bounded by waiting=) for a certificate the driver orders, and completes with it; names
refused by ServerName/ServerAlias, the ask endpoint or the waiting cap get the fallback at once, with no
order. Stored on-demand certificates are served after a restart with no order."""

import json
import os
import re
import signal
import socket
import ssl
import threading
import time

import pytest

import harness
from fault_proxy import FaultProxy
from apache_harness import apache_factory  # noqa: F401  (fixture)
from apache_harness import cert_issuer, tls_get

# handshakes and fallbacks within seconds: alone, not beside other tests (conftest.py)
pytestmark = pytest.mark.serial

SUFFIX = ".od.example.org"


class AskServer(harness.AskServer):
    """The ask endpoint; "slow" names are refused after the wait."""


def od_apache(apache_factory, pebble, mpm="event", limits="", ask=None, name="apache-od"):
    glob = ""
    if ask:
        glob += f"ACMEOnDemandAsk {ask} timeout=5s\n"
    if limits:
        glob += f"ACMEOnDemandLimits {limits}\n"
    a = apache_factory(pebble, mpm=mpm, name=name, acme_global=glob)
    # the on-demand vhost is the port's first (default) one: names it does not have reach it too
    a.vhosts = (f"<VirtualHost {a.address}:{a.https_port}>\n    ServerName od.example.org\n"
                f"    ServerAlias *{SUFFIX} exact.example.net\n    SSLEngine on\n    ACMEOnDemand on\n"
                "</VirtualHost>\n")
    return a


def pebble_leaf(port, name, roots, timeout=60):
    """A verified handshake and one request: (leaf DER, HTTP status, seconds taken)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=roots)
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with ctx.wrap_socket(s, server_hostname=name) as t:
            der = t.getpeercert(binary_form=True)
            took = time.monotonic() - t0
            t.sendall(f"GET /index.html HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = t.recv(65536)
                if not chunk:
                    break
                data += chunk
    return der, int(data.split(b" ")[1]), took


def leaf_names(der):
    text = harness.run_cmd(["openssl", "x509", "-inform", "DER", "-noout", "-ext", "subjectAltName"],
                           input=der).stdout
    text = text.decode() if isinstance(text, bytes) else text
    return sorted(re.findall(r"DNS:([^,\s]+)", text))


def fallback_quick(a, name, bound=3.0):
    """A handshake that ends quickly with a certificate Pebble did not issue; requests on it get 503."""
    t0 = time.monotonic()
    status, _, der, _ = tls_get(a.https_port, name, timeout=10)
    took = time.monotonic() - t0
    assert took < bound, f"{name}: the fallback took {took:.1f} s"
    assert "Pebble" not in cert_issuer(der), f"{name}: got a Pebble certificate"
    assert status == 503
    return der


def od_status(a):
    return a.status()["on_demand"]


def wait_od(a, pred, what, timeout=10):
    return harness.wait_for(lambda: (lambda st: st if pred(st) else None)(od_status(a)), timeout=timeout,
                            interval=0.2, what=what)


def _try(f):
    try:
        return f()
    except Exception:               # noqa: BLE001
        return None


@pytest.mark.parametrize("mpm", ["event", "prefork"])
def test_concurrent_first_handshakes_one_order_per_name(apache_factory, pebble, procs, mpm):
    a = od_apache(apache_factory, pebble, mpm=mpm, limits="waiting=10 rate=100", name=f"apache-od-{mpm}")
    a.start(procs)
    roots = pebble.roots(0)
    base = pebble.order_count()
    names = [f"site{i}{SUFFIX}" for i in range(3)] + ["exact.example.net"]
    per = 2 if mpm == "event" else 1       # prefork: 8 processes, one handshake each
    results, errors = {}, []

    def one(k):
        name = names[k % len(names)]
        try:
            der, status, took = pebble_leaf(a.https_port, name, roots)
            results[k] = (name, leaf_names(der), status, took)
        except Exception as e:      # noqa: BLE001 (reported below)
            errors.append(f"{name}: {e!r}")

    threads = [threading.Thread(target=one, args=(k,)) for k in range(per * len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    assert len(results) == per * len(names)
    for name, sans, status, _ in results.values():
        assert sans == [name], (name, sans)
        assert status == 200, (name, status)
    assert pebble.order_count() - base == len(names)

    # (the driver publishes the counters every quarter second: the last waits end with the handshakes)
    st = wait_od(a, lambda st: st["certificates"] == len(names) and st["waiting"] == 0,
                 "the on-demand certificates counted, nobody waiting")
    assert st["allowed"] == len(names)
    assert st["waited"] >= len(names)
    assert (a.state / "ondemand" / "names.json").is_file()

    # later handshakes: the stored certificate at once, no order
    for name in names:
        der, status, took = pebble_leaf(a.https_port, name, roots)
        assert leaf_names(der) == [name] and status == 200 and took < 2.0
    assert pebble.order_count() - base == len(names)


def test_refusals_cost_no_order(apache_factory, pebble, procs):
    ask = AskServer(slow=3.0)
    try:
        a = od_apache(apache_factory, pebble, ask=ask.url, limits="waiting=2 refuse_time=1h")
        a.start(procs)
        roots = pebble.roots(0)
        base = pebble.order_count()

        # not the vhost's ServerName/ServerAlias: no ask, no order
        fallback_quick(a, "stranger.example.com")
        fallback_quick(a, "a.b.example.net")
        # refused by the ask endpoint: asked once per name, the refusal cached
        for _ in range(3):
            fallback_quick(a, "no1" + SUFFIX)
        fallback_quick(a, "no2" + SUFFIX)
        assert ask.asked.count("no1" + SUFFIX) == 1
        assert ask.asked.count("no2" + SUFFIX) == 1

        # over the waiting cap (waiting=2): two slow asks hold two handshakes, a third falls back at once
        held = []
        for i in range(2):
            th = threading.Thread(target=lambda i=i: _try(lambda: tls_get(a.https_port, f"slow{i}{SUFFIX}",
                                                                          timeout=10)))
            th.start()
            held.append(th)
        time.sleep(1.0)
        fallback_quick(a, "slow9" + SUFFIX, bound=1.0)
        for th in held:
            th.join(15)

        # an allowed name is still ordered and served
        der, status, _ = pebble_leaf(a.https_port, "ok1" + SUFFIX, roots)
        assert leaf_names(der) == ["ok1" + SUFFIX] and status == 200
        assert pebble.order_count() - base == 1

        st = wait_od(a, lambda st: st["refused"]["ask_refused"] >= 4, "ask refusals counted")
        ref = st["refused"]
        assert ref["not_server_name"] == 2
        assert ref["waiting_cap"] >= 1
        assert st["refused_from_cache"] >= 2
        assert st["limits"]["waiting"] == 2 and st["limits"]["ask"] is True
        assert st["limits"]["refuse_time"] == 3600
        assert ask.url not in json.dumps(a.status())

        # one log line per cause, however many names and connections
        log = a.log()
        assert len(re.findall(r"refused \(not_server_name\)", log)) == 1, log
        assert len(re.findall(r"refused \(ask_refused\)", log)) == 1
        assert len(re.findall(r"refused \(waiting_cap\)", log)) == 1
    finally:
        ask.close()


def test_restart_serves_stored_names_without_order(apache_factory, pebble, procs):
    a = od_apache(apache_factory, pebble, limits="fail=close")
    a.start(procs)
    roots = pebble.roots(0)
    name = "kept" + SUFFIX
    der1, status, _ = pebble_leaf(a.https_port, name, roots)
    assert status == 200 and leaf_names(der1) == [name]
    orders = pebble.order_count()

    # fail=close: a refused name gets no certificate at all
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_get(a.https_port, "stranger.example.com", timeout=5)

    a.proc.stop()
    a.start(procs)
    der2, status, took = pebble_leaf(a.https_port, name, roots, timeout=20)
    assert status == 200 and der2 == der1
    time.sleep(1.0)
    assert pebble.order_count() == orders
    st = wait_od(a, lambda st: st["certificates"] == 1, "the stored name counted")
    assert st["allowed"] == 0


def test_ask_revoked_after_restart_stops_serving(apache_factory, pebble, procs):
    ask = AskServer()
    try:
        a = od_apache(apache_factory, pebble, ask=ask.url)
        a.start(procs)
        roots = pebble.roots(0)
        name = "okgone" + SUFFIX
        der, status, _ = pebble_leaf(a.https_port, name, roots)
        assert status == 200 and leaf_names(der) == [name]
        orders = pebble.order_count()

        # the platform drops the customer: after a restart the name is asked again, refused, dropped
        ask.deny = {name}
        a.proc.stop()
        a.start(procs)
        harness.wait_for(lambda: "the ask endpoint now refuses it" in a.log(), timeout=15,
                         what="the re-ask's refusal")
        assert ask.asked.count(name) == 2
        fallback_quick(a, name)
        assert pebble.order_count() == orders
        names = json.loads((a.state / "ondemand" / "names.json").read_text())["names"]
        assert name not in [n["name"] for n in names]
    finally:
        ask.close()


def test_unseen_name_is_dropped(apache_factory, pebble, procs):
    a = od_apache(apache_factory, pebble, limits="unseen=3s")
    a.start(procs)
    roots = pebble.roots(0)
    name = "idle" + SUFFIX
    der, status, _ = pebble_leaf(a.https_port, name, roots)
    assert status == 200
    orders = pebble.order_count()
    harness.wait_for(lambda: re.search(r'"idle\.od\.example\.org": not seen for \d+ s, no longer renewed',
                                       a.log()), timeout=15, what="the unseen name dropped")
    st = wait_od(a, lambda st: st["certificates"] == 0, "no on-demand certificate left")
    assert st["ordering"] == 0
    names = json.loads((a.state / "ondemand" / "names.json").read_text())["names"]
    assert names == []
    assert pebble.order_count() == orders


def test_tls_alpn01_on_the_on_demand_vhost(apache_factory, pebble, procs):
    """No HTTP listener: the CA's acme-tls/1 handshake for the name being ordered is answered, not held."""
    a = apache_factory(pebble, name="apache-od-alpn", listen_http=False,
                       acme_global="ACMEChallenge tls-alpn-01\n")
    a.vhosts = (f"<VirtualHost {a.address}:{a.https_port}>\n    ServerName od.example.org\n"
                f"    ServerAlias *{SUFFIX}\n    SSLEngine on\n    ACMEOnDemand on\n</VirtualHost>\n")
    a.start(procs)
    base = pebble.order_count()
    name = "alpn" + SUFFIX
    der, status, _ = pebble_leaf(a.https_port, name, pebble.roots(0))
    assert status == 200 and leaf_names(der) == [name]
    assert pebble.order_count() - base == 1
    assert "tls-alpn-01" in a.log()


HOLDERS = 4     # first handshakes held at once; the event MPM config has 15 worker threads


def test_waiting_first_handshakes_leave_other_requests_served(apache_factory, pebble, procs, test_ca,
                                                               tmp_path):
    """Event MPM: while HOLDERS first handshakes wait (the CA holds every new order), new connections
    and requests for an issued name keep being answered promptly. The bound is the waiting cap: with it
    (and HOLDERS) at or above the 15 worker threads, the waits take every thread and this test fails."""
    cert, key = test_ca.issue("od-proxy", ["localhost"], ["127.0.0.1"], basename="od-proxy")
    px = FaultProxy(pebble, cert, key, harness.free_port(), log_path=tmp_path / "proxy.log").start()
    holders = []
    try:
        a = od_apache(apache_factory, pebble, limits=f"waiting={HOLDERS} wait=60s rate=100",
                      name="apache-od-busy")
        a.ca_url = px.directory_url
        a.start(procs)
        roots = pebble.roots(0)
        managed = "managed" + SUFFIX
        der, status, _ = pebble_leaf(a.https_port, managed, roots)
        assert leaf_names(der) == [managed] and status == 200
        wait_od(a, lambda st: st["certificates"] == 1 and st["waiting"] == 0, "the first name settled")

        held = px.add_fault("newOrder", method="POST", times=None, hold=True, hold_timeout=120)
        results, errors = {}, []

        def hold(k):
            name = f"held{k}{SUFFIX}"
            try:
                d, st, took = pebble_leaf(a.https_port, name, roots, timeout=90)
                results[name] = (leaf_names(d), st, took)
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(f"{name}: {e!r}")

        holders = [threading.Thread(target=hold, args=(k,)) for k in range(HOLDERS)]
        for t in holders:
            t.start()
        held.wait_hit(20)
        t_end = time.monotonic() + 10
        while time.monotonic() < t_end and _try(lambda: od_status(a)["waiting"]) != HOLDERS:
            time.sleep(0.2)

        lat = []
        for _ in range(20):
            t0 = time.monotonic()
            d, st, _ = pebble_leaf(a.https_port, managed, roots, timeout=10)
            lat.append(time.monotonic() - t0)
            assert leaf_names(d) == [managed] and st == 200
        assert max(lat) < 2.0, f"requests for {managed} took up to {max(lat):.2f} s"
        # the first handshakes were still waiting all along
        st = od_status(a)
        assert st["waiting"] == HOLDERS and not results, (st, results)

        held.release()
        for t in holders:
            t.join(90)
        assert not errors, errors
        assert sorted(results) == [f"held{k}{SUFFIX}" for k in range(HOLDERS)]
        for name, (sans, code, _) in results.items():
            assert sans == [name] and code == 200, (name, sans, code)
    finally:
        for f in px.faults:
            f.release()
        for t in holders:
            t.join(90)
        px.stop()


def _server_pid_of(client_port, server_port):
    """The Apache process holding the server side of our connection (ss -tnp)."""
    out = harness.run_cmd(["ss", "-Htnp", "state", "established", f"( sport = :{server_port} )"]).stdout
    for line in out.splitlines():
        if f":{client_port} " in line + " ":
            m = re.search(r"pid=(\d+)", line)
            if m:
                return int(m.group(1))
    return None


def test_killed_child_gives_its_waiting_share_back(apache_factory, pebble, procs):
    ask = AskServer(slow=6.0)
    try:
        a = od_apache(apache_factory, pebble, ask=ask.url, limits="waiting=1 wait=20s")
        a.start(procs)
        sock = socket.create_connection(("127.0.0.1", a.https_port), timeout=20)
        cport = sock.getsockname()[1]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        th = threading.Thread(target=lambda: _try(lambda: ctx.wrap_socket(sock, server_hostname="slow0" + SUFFIX)))
        th.start()
        wait_od(a, lambda st: st["waiting"] == 1, "one handshake held")
        pid = harness.wait_for(lambda: _server_pid_of(cport, a.https_port), timeout=5,
                               what="the process holding the handshake")
        os.kill(pid, signal.SIGKILL)
        # the cap is free again: the driver (this or the next one) gave the dead process's share back
        wait_od(a, lambda st: st["waiting"] == 0, "the waiting share given back", timeout=15)
        th.join(20)
    finally:
        ask.close()


def test_max_count_ask_down_and_invalid_names(apache_factory, pebble, procs):
    dead = harness.free_port()     # nothing listens: the ask endpoint is down
    a = od_apache(apache_factory, pebble, ask=f"http://127.0.0.1:{dead}/check", limits="max=1")
    a.start(procs)
    base = pebble.order_count()
    fallback_quick(a, "down" + SUFFIX)
    fallback_quick(a, "down" + SUFFIX)         # from the negative cache
    fallback_quick(a, "under_score" + SUFFIX)  # not a DNS name the CA could validate: never asked
    st = wait_od(a, lambda st: st["refused"]["ask_failed"] == 1, "ask_failed counted")
    assert st["refused"]["invalid_name"] == 1
    assert st["refused_from_cache"] >= 1
    assert pebble.order_count() == base
    assert len(re.findall(r"refused \(ask_failed\): the ask endpoint did not answer", a.log())) == 1


def test_max_count(apache_factory, pebble, procs):
    a = od_apache(apache_factory, pebble, limits="max=1")
    a.start(procs)
    roots = pebble.roots(0)
    base = pebble.order_count()
    der, status, _ = pebble_leaf(a.https_port, "first" + SUFFIX, roots)
    assert status == 200 and leaf_names(der) == ["first" + SUFFIX]
    fallback_quick(a, "second" + SUFFIX)
    st = wait_od(a, lambda st: st["refused"]["max_count"] == 1, "max_count counted")
    assert st["limits"]["max"] == 1
    assert pebble.order_count() - base == 1
    assert len(re.findall(r"refused \(max_count\)", a.log())) == 1


@pytest.mark.parametrize("line, why", [
    ("ACMEOnDemandLimits max=0", "a positive number expected"),
    ("ACMEOnDemandLimits fail=maybe", "fail=fallback or fail=close expected"),
    ("ACMEOnDemandLimits wait=301s", "wait at most 300s"),
    ("ACMEOnDemandLimits colour=blue", "unknown key"),
    ("ACMEOnDemandAsk ftp://example.org/", "an http:// or https:// URL expected"),
    ("ACMEOnDemandAsk http://127.0.0.1/ timeout=2m", "timeout=DURATION expected"),
    ("ACMEOnDemand on", "must be used inside a <VirtualHost>"),
])
def test_bad_on_demand_directives_fail_config_test(apache_factory, pebble, line, why):
    a = od_apache(apache_factory, pebble)
    a.acme_global = line + "\n"
    cp = a.config_test()
    out = cp.stdout + cp.stderr
    assert cp.returncode != 0, out
    assert why in out, out


def cluster_nodes(apache_factory, pebble, procs, tmp_path, limits=""):
    """Two Apache nodes on one Redis (ACMEStorage): A on 127.0.0.1 with Pebble's ports, B on 127.0.0.2."""
    from test_redis_store import REDIS_CLI, REDIS_SERVER, Redis, key_file
    if not (os.access(REDIS_SERVER, os.X_OK) and os.access(REDIS_CLI, os.X_OK)):
        pytest.skip("redis-server / redis-cli not installed")
    redis = Redis(procs, tmp_path / "redis")
    kf = key_file(tmp_path / "storage.key")
    if os.geteuid() == 0:
        os.chmod(kf, 0o600)
    storage = f'ACMEStorage "{redis.url("/0")}" prefix=od\nACMEStorageKey "{kf}"\n'
    if limits:
        storage += f"ACMEOnDemandLimits {limits}\n"
    nodes = []
    for node, kw in (("a", {}), ("b", {"address": "127.0.0.2", "http_port": harness.free_port(),
                                       "https_port": harness.free_port()})):
        a = apache_factory(pebble, name=f"apache-od-{node}", acme_global=storage, **kw)
        a.vhosts = (f"<VirtualHost {a.address}:{a.https_port}>\n    ServerName od.example.org\n"
                    f"    ServerAlias *{SUFFIX}\n    SSLEngine on\n    ACMEOnDemand on\n</VirtualHost>\n")
        a.start(procs)
        nodes.append(a)
    return nodes


def test_cluster_second_node_serves_without_order(apache_factory, pebble, procs, tmp_path):
    """ACMEStorage: a name issued by node A is served by node B with no second order (B's manager finds
    the certificate in Redis; its driver copies it into B's local cache)."""
    nodes = cluster_nodes(apache_factory, pebble, procs, tmp_path)
    roots = pebble.roots(0)
    name = "shared" + SUFFIX
    base = pebble.order_count()
    der_a, status, _ = pebble_leaf(nodes[0].https_port, name, roots)
    assert status == 200 and leaf_names(der_a) == [name]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=roots)
    with socket.create_connection(("127.0.0.2", nodes[1].https_port), timeout=30) as s:
        with ctx.wrap_socket(s, server_hostname=name) as t:
            der_b = t.getpeercert(binary_form=True)
    assert der_b == der_a
    assert pebble.order_count() - base == 1

    # both nodes' first handshakes for a new name at once: one order, both serve its certificate
    name = "both" + SUFFIX
    got, errors = {}, []

    def one(k):
        try:
            node = nodes[k % 2]
            with socket.create_connection((node.address, node.https_port), timeout=30) as s:
                t0 = time.monotonic()
                with ctx.wrap_socket(s, server_hostname=name) as t:
                    got[k] = (t.getpeercert(binary_form=True), time.monotonic() - t0)
        except Exception as e:      # noqa: BLE001 (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not errors, errors
    assert len(got) == 4 and len({der for der, _ in got.values()}) == 1, "the nodes served different certificates"
    assert leaf_names(got[0][0]) == [name]
    assert pebble.order_count() - base == 2
    # the node that found the store's lock taken serves it once the other announces it (not ~15 s later,
    # when its manager would look again by itself)
    took = max(t for _, t in got.values())
    assert took < 8, f"a first handshake took {took:.1f} s"

    # the names' index in the store is the cluster's: B's save keeps the name only A has seen, so a
    # restart of A takes it up again (no order, before any handshake)
    for i, only in enumerate(("aonly", "bonly")):
        node = nodes[i]
        with socket.create_connection((node.address, node.https_port), timeout=30) as s:
            with ctx.wrap_socket(s, server_hostname=only + SUFFIX) as t:
                assert leaf_names(t.getpeercert(binary_form=True)) == [only + SUFFIX]
    nodes[0].proc.stop()
    nodes[0].start(procs)
    want = {"aonly" + SUFFIX, "bonly" + SUFFIX, name}
    harness.wait_for(lambda: want <= {i for c in nodes[0].status()["certificates"] for i in c["identifiers"]},
                     timeout=10, interval=0.2, what="the cluster's on-demand names taken up after a restart")
    assert pebble.order_count() - base == 4


def test_cluster_wide_limits(apache_factory, pebble, procs, tmp_path):
    """ACMEStorage: rate= and max= count the cluster's new names, not each node's."""
    nodes = cluster_nodes(apache_factory, pebble, procs, tmp_path, limits="rate=1 max=2")
    roots = pebble.roots(0)
    base = pebble.order_count()
    der, status, _ = pebble_leaf(nodes[0].https_port, "r1" + SUFFIX, roots)
    assert status == 200 and leaf_names(der) == ["r1" + SUFFIX]
    # B allowed none itself, but the cluster did one this minute
    status, _, der, _ = tls_get(nodes[1].https_port, "r2" + SUFFIX, timeout=10, host=nodes[1].address)
    assert status == 503 and "Pebble" not in cert_issuer(der)
    assert pebble.order_count() - base == 1
    harness.wait_for(lambda: "refused (rate_limited): as many new orders in the cluster in the last minute"
                     in nodes[1].log(), timeout=5, what="the cluster's rate logged")


def test_rate_limited(apache_factory, pebble, procs):
    a = od_apache(apache_factory, pebble, limits="rate=1")
    a.start(procs)
    base = pebble.order_count()
    der, status, _ = pebble_leaf(a.https_port, "r1" + SUFFIX, pebble.roots(0))
    assert status == 200
    fallback_quick(a, "r2" + SUFFIX)
    fallback_quick(a, "r3" + SUFFIX)
    st = wait_od(a, lambda st: st["refused"]["rate_limited"] == 2, "rate_limited counted")
    assert st["allowed"] == 1
    assert pebble.order_count() - base == 1
    assert len(re.findall(r"refused \(rate_limited\)", a.log())) == 1


def test_renewed_on_demand_certificate_is_hot_swapped(apache_factory, pebble, procs):
    a = od_apache(apache_factory, pebble)
    a.start(procs)
    roots = pebble.roots(0)
    name = "renew" + SUFFIX
    der1, status, _ = pebble_leaf(a.https_port, name, roots)
    assert status == 200
    assert a.renew("unknown" + SUFFIX).status == 404      # never issued: not renewable
    r = a.renew(name)
    assert r.status == 202, r.text
    der2 = harness.wait_for(lambda: (lambda d: d if d != der1 else None)(
        pebble_leaf(a.https_port, name, roots)[0]), timeout=30, what="the renewed certificate served")
    assert leaf_names(der2) == [name]
    # every child serves it from its next handshake, without a restart
    for _ in range(10):
        assert pebble_leaf(a.https_port, name, roots)[0] == der2
    # forced again at once: 429 (ACMEStatusRenew interval=1s in the harness: wait it out first)
    time.sleep(1.1)
    assert a.renew(name, timeout=0).status == 202
    assert a.renew(name, timeout=0).status == 429


def test_names_stay_with_their_vhost_ca_after_restart(apache_factory, pebble, pebble_factory, procs):
    """Two ACMEOnDemand vhosts (two ports) that both allow *.od.example.org, each with its own CA: after a
    restart each name is still the vhost's that had it (its CA renews it), whichever vhost comes first;
    the list says which CA and key type each name is for."""
    pb2 = pebble_factory(http_port=pebble.http_port)
    a = od_apache(apache_factory, pebble, name="apache-od-two")
    port2 = harness.free_port()
    a.vhosts += (f"Listen {a.address}:{port2} https\n<VirtualHost {a.address}:{port2}>\n"
                 f"    ServerName od2.example.org\n    ServerAlias *{SUFFIX}\n    SSLEngine on\n"
                 f"    ACMEOnDemand on\n    ACMECertificateAuthority {pb2.directory_url}\n</VirtualHost>\n")
    a.start(procs)
    cas = {"one" + SUFFIX: (a.https_port, pebble), "two" + SUFFIX: (port2, pb2)}
    ders, base = {}, {}
    for name, (port, ca) in cas.items():
        base[name] = ca.order_count()
        ders[name], status, _ = pebble_leaf(port, name, ca.roots(0))
        assert status == 200 and leaf_names(ders[name]) == [name]
        assert ca.order_count() == base[name] + 1
    entries = {n["name"]: n for n in json.loads((a.state / "ondemand" / "names.json").read_text())["names"]}
    for name, (_, ca) in cas.items():
        assert entries[name]["issuer"] == ca.directory_url and entries[name]["key"] == "ecdsa:256", entries

    a.proc.stop()
    a.start(procs)
    for name, (port, ca) in cas.items():
        der, status, took = pebble_leaf(port, name, ca.roots(0))
        assert der == ders[name] and status == 200 and took < 3.0
    # a forced renewal goes to the vhost's own CA, not the other one's
    for name, (_, ca) in cas.items():
        orders = (pebble.order_count(), pb2.order_count())
        r = a.renew(name)
        assert r.status in (200, 202), r
        harness.wait_for(lambda: ca.order_count() == base[name] + 2, timeout=30, interval=0.2,
                         what=f"the renewal of {name} by its vhost's CA")
        assert pebble.order_count() + pb2.order_count() == sum(orders) + 1, f"{name}: renewed by the other CA"
        # and served (verified against that CA's roots) once stored
        harness.wait_for(lambda: _try(lambda: pebble_leaf(cas[name][0], name, ca.roots(0), timeout=5)[0]
                                      != ders[name]), timeout=30, interval=0.2, what=f"{name} renewed")
