"""On-demand TLS in nginx against Pebble: the first handshake for a new allowed name waits (before TLS, in
the worker, without blocking it) for a certificate ordered by the cache manager, and completes with it; names
refused by server_name, the ask endpoint or a limit get the fallback at once, with no order."""

import os
import signal
import subprocess
import json
import re
import socket
import ssl
import threading
import time

import pytest

import harness
from harness import OPENSSL_BIN, free_port, wait_for
from nginx_harness import cert_text, http_get, issuer_block, nginx_factory, tls_cert  # noqa: F401

# handshakes and fallbacks within seconds: alone, not beside other tests (conftest.py)
pytestmark = pytest.mark.serial

MANAGED = "a.example.org"
OD_SUFFIX = ".od.example.org"


class AskServer(harness.AskServer):
    """The ask endpoint; "slow" names are allowed after the wait."""

    def __init__(self, slow=3.0):
        super().__init__(slow, slow_allows=True)


def od_conf(pebble, tmp_path, https, od="", managed=True):
    conf = issuer_block("pebble", pebble, tmp_path / "state") + f"""
    acme_on_demand {od};
    server {{
        listen 127.0.0.1:{pebble.http_port};
        location / {{ return 200 "plain\\n"; }}
        location = /acme {{ acme_status; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name ~^[a-z0-9-]+\\.od\\.example\\.org$ exact.example.net;
        acme_certificate pebble on_demand;
        location / {{ return 200 "on-demand\\n"; }}
    }}
"""
    if managed:
        conf += f"""
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {MANAGED};
        acme_certificate pebble;
        location / {{ return 200 "managed\\n"; }}
    }}
"""
    return conf


def leaf_names(der):
    return sorted(re.findall(r"DNS:([^,\s]+)", cert_text(der)))


def pebble_leaf(port, name, roots, timeout=40):
    """A verified handshake: (leaf DER, seconds taken)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=roots)
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with ctx.wrap_socket(s, server_hostname=name) as t:
            return t.getpeercert(binary_form=True), time.monotonic() - t0


def fallback_quick(port, name, bound=3.0):
    """A handshake that must end quickly with a certificate Pebble did not issue (the fallback)."""
    t0 = time.monotonic()
    der = tls_cert(port, name, timeout=10)
    took = time.monotonic() - t0
    assert took < bound, f"{name}: the fallback took {took:.1f} s"
    text = cert_text(der)
    assert "Pebble" not in text, f"{name}: got a Pebble certificate"
    return der


def full_status(pebble):
    code, body = http_get(pebble.http_port, "status.local", "/acme")
    assert code == 200, body
    return json.loads(body)


def status(pebble):
    """The on_demand member; None until the cache manager has published it."""
    return full_status(pebble).get("on_demand")


def wait_status(pebble, pred, what, full=False):
    """The status document once pred(document) holds (the cache manager rebuilds it within a tick)."""
    return wait_for(lambda: (lambda st: st if st is not None and pred(st) else None)(
        full_status(pebble) if full else status(pebble)), 5, interval=0.1, what=what)


def test_concurrent_first_handshakes_one_order_per_name(pebble, nginx_factory, tmp_path):
    https = free_port()
    ng = nginx_factory(od_conf(pebble, tmp_path, https), wait_port=https, workers=1)
    roots = pebble.roots(0)
    wait_for(lambda: _try(lambda: pebble_leaf(https, MANAGED, roots, timeout=5)), 40, interval=0.2,
             what="the managed certificate")
    base = pebble.order_count()

    names = [f"site{i}{OD_SUFFIX}" for i in range(10)]
    results, errors = {}, []

    def one(k):
        name = names[k % 10]
        try:
            der, took = pebble_leaf(https, name, roots, timeout=60)
            results[k] = (name, leaf_names(der), took)
        except Exception as e:      # noqa: BLE001 (reported below)
            errors.append(f"{name}: {e!r}")

    # the managed name keeps being served by the same (only) worker meanwhile
    lat, stop = [], threading.Event()

    def managed():
        while not stop.is_set():
            _, took = pebble_leaf(https, MANAGED, roots, timeout=10)
            lat.append(took)
            time.sleep(0.05)

    mt = threading.Thread(target=managed)
    mt.start()
    threads = [threading.Thread(target=one, args=(k,)) for k in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    stop.set()
    mt.join(20)

    assert not errors, errors
    assert len(results) == 50
    for name, sans, _ in results.values():
        assert sans == [name], (name, sans)
    assert pebble.order_count() - base == 10
    assert lat and max(lat) < 2.0, f"managed handshakes took up to {max(lat):.2f} s"

    # the document is rebuilt within a tick: one built before the last held handshakes resumed still counts
    # them as waiting; a count that never drops fails here
    st = wait_status(pebble, lambda st: st["certificates"] == 10 and st["waiting"] == 0,
                     "10 on-demand certificates, none waiting")
    assert st["allowed"] == 10
    assert st["waited"] >= 10

    # later handshakes are served at once, with no order
    for name in names:
        der, took = pebble_leaf(https, name, roots)
        assert leaf_names(der) == [name] and took < 2.0
    assert pebble.order_count() - base == 10
    assert ng.proc.alive()


def _try(f):
    try:
        return f()
    except Exception:               # noqa: BLE001
        return None


def test_refusals_cost_no_order(pebble, nginx_factory, tmp_path):
    ask = AskServer(slow=4.0)
    try:
        https = free_port()
        ng = nginx_factory(od_conf(pebble, tmp_path, https,
                                   od=f"ask={ask.url} ask_timeout=1s max=2 rate=100 "
                                      "refuse_time=1h waiting=2",
                                   managed=False), wait_port=https)
        roots = pebble.roots(0)
        base = pebble.order_count()

        # not one of the server's names: no ask, no order
        fallback_quick(https, "stranger.example.com")
        fallback_quick(https, "another.example.com")

        # refused by the ask endpoint: asked once per name, the refusal cached
        for _ in range(3):
            fallback_quick(https, "no1" + OD_SUFFIX)
        fallback_quick(https, "no2" + OD_SUFFIX)
        assert ask.asked.count("no1" + OD_SUFFIX) == 1
        assert ask.asked.count("no2" + OD_SUFFIX) == 1

        # the ask endpoint too slow (ask_timeout=1s): refused, said so
        fallback_quick(https, "slow1" + OD_SUFFIX, bound=4.0)

        # over the waiting cap (waiting=2): two slow names wait, the others fall back at once
        # (the ask for "slow" names takes 4 s, longer than ask_timeout: these wait ~1 s)
        held = []
        for i in range(2):
            th = threading.Thread(target=lambda i=i: held.append(
                _try(lambda: tls_cert(https, f"slow{i + 2}{OD_SUFFIX}", timeout=10))))
            th.start()
            held.append(th)
        time.sleep(0.5)
        fallback_quick(https, "slow9" + OD_SUFFIX, bound=1.0)
        for th in [h for h in held if isinstance(h, threading.Thread)]:
            th.join(15)

        # allowed, up to max=2; the third is refused for the count
        for n in ("ok1", "ok2"):
            der, _ = pebble_leaf(https, n + OD_SUFFIX, roots)
            assert leaf_names(der) == [n + OD_SUFFIX]
        fallback_quick(https, "ok3" + OD_SUFFIX)
        assert pebble.order_count() - base == 2

        st = wait_status(pebble, lambda st: st["refused"]["max_count"] == 1, "max_count counted")
        ref = st["refused"]
        assert ref["not_server_name"] == 2
        assert ref["ask_refused"] == 2
        assert ref["ask_failed"] >= 1
        assert ref["waiting_cap"] >= 1
        assert ref["max_count"] == 1
        assert st["refused_from_cache"] >= 2
        assert st["limits"]["max"] == 2 and st["limits"]["waiting"] == 2 and st["limits"]["ask"] is True
        assert ask.url not in str(st)

        # one log line per cause, however many names and connections
        log = ng.log_text()
        assert len(re.findall(r"refused: not one of the server's server_name", log)) == 1
        assert len(re.findall(r"refused \(ask_refused\)", log)) == 1
        assert len(re.findall(r"refused \(max_count\)", log)) == 1
        assert len(re.findall(r"refused \(ask_failed\)", log)) == 1
    finally:
        ask.close()


def test_rate_limit_and_ask_down(pebble, nginx_factory, tmp_path):
    dead = free_port()       # nothing listens: the ask endpoint is down
    https = free_port()
    ng = nginx_factory(od_conf(pebble, tmp_path, https, od=f"ask=http://127.0.0.1:{dead}/check",
                               managed=False), wait_port=https)
    base = pebble.order_count()
    fallback_quick(https, "down" + OD_SUFFIX)
    wait_status(pebble, lambda st: st["refused"]["ask_failed"] == 1, "ask_failed counted")
    assert "refused (ask_failed)" in ng.log_text()
    assert pebble.order_count() == base
    ng.stop()       # Pebble's HTTP-01 port is the next one's

    https2 = free_port()
    ng2 = nginx_factory(od_conf(pebble, tmp_path / "r", https2, od="rate=1", managed=False),
                        name="nginx-rate", wait_port=https2)
    roots = pebble.roots(0)
    base = pebble.order_count()
    der, _ = pebble_leaf(https2, "first" + OD_SUFFIX, roots)
    assert leaf_names(der) == ["first" + OD_SUFFIX]
    fallback_quick(https2, "second" + OD_SUFFIX)
    assert pebble.order_count() - base == 1
    wait_status(pebble, lambda st: st["refused"]["rate_limited"] == 1, "rate_limited counted")
    assert len(re.findall(r"refused \(rate_limited\)", ng2.log_text())) == 1


def test_restart_serves_stored_and_unseen_not_renewed(pebble, nginx_factory, tmp_path):
    https = free_port()
    conf = od_conf(pebble, tmp_path, https, od="unseen=6s", managed=False)
    ng = nginx_factory(conf, wait_port=https)
    roots = pebble.roots(0)
    base = pebble.order_count()
    der, _ = pebble_leaf(https, "kept" + OD_SUFFIX, roots)
    serial = cert_text(der)
    assert pebble.order_count() - base == 1

    # restart: served at once from the store, no order
    ng.stop()
    ng.start(wait_port=https)
    der, took = pebble_leaf(https, "kept" + OD_SUFFIX, roots)
    assert cert_text(der) == serial and took < 3.0
    assert pebble.order_count() - base == 1

    # unseen for longer than unseen=: no longer managed (never renewed), said so
    ng.wait_log(r"on-demand certificate for \"kept\.od\.example\.org\": not seen for", timeout=20)
    wait_status(pebble, lambda st: st.get("on_demand", {}).get("certificates") == 0
                and not [c for c in st["certificates"] if "kept" + OD_SUFFIX in c["identifiers"]],
                "the unseen name no longer managed", full=True)

    # and a restart does not take it up again
    ng.stop()
    ng.start(wait_port=https)
    time.sleep(1.5)
    st = full_status(pebble)
    assert not st["certificates"]
    assert pebble.order_count() - base == 1


def test_withdrawn_permission_stops_renewal(pebble, nginx_factory, tmp_path):
    """The ask endpoint is asked again after a restart (and before each renewal): a refusal now drops the
    name, which then gets the fallback, with no order."""
    ask = AskServer()
    try:
        https = free_port()
        ng = nginx_factory(od_conf(pebble, tmp_path, https, od=f"ask={ask.url}", managed=False),
                           wait_port=https)
        roots = pebble.roots(0)
        base = pebble.order_count()
        name = "ok1" + OD_SUFFIX
        der, _ = pebble_leaf(https, name, roots)
        assert leaf_names(der) == [name]
        assert pebble.order_count() - base == 1

        ask.deny.add(name)
        ng.stop()
        ng.start(wait_port=https)
        ng.wait_log(r"on-demand certificate for \"ok1\.od\.example\.org\": no longer allowed, not renewed",
                    timeout=15)
        wait_status(pebble, lambda st: not st["certificates"], "the name no longer managed", full=True)
        fallback_quick(https, name)
        assert ask.asked.count(name) == 2
        assert pebble.order_count() - base == 1
    finally:
        ask.close()


def test_tls_alpn01_first_handshake(pebble, nginx_factory, tmp_path):
    """The CA's TLS-ALPN-01 handshake for a name being ordered is not held (it is what the order waits for)."""
    conf = issuer_block("pebble", pebble, tmp_path / "state", challenge="tls-alpn-01") + f"""
    server {{
        listen 127.0.0.1:{pebble.tls_port} ssl;
        server_name .alpn.example.org;
        acme_certificate pebble on_demand;
    }}
"""
    nginx_factory(conf, wait_port=pebble.tls_port)
    roots = pebble.roots(0)
    base = pebble.order_count()
    der, took = pebble_leaf(pebble.tls_port, "new.alpn.example.org", roots)
    assert leaf_names(der) == ["new.alpn.example.org"]
    assert took < 20, f"the first handshake took {took:.1f} s"
    assert pebble.order_count() - base == 1


def test_config_errors_and_fail_close(pebble, nginx_factory, tmp_path):
    https = free_port()
    for od, msg in (("rate=0", r'invalid parameter "rate=0" of "acme_on_demand"'),
                    ("ask=ftp://x/", r'invalid "ask=ftp://x/": the ask endpoint must be an http:// or https:// URL'),
                    ("fail=maybe", r'invalid parameter "fail=maybe" of "acme_on_demand"')):
        ng = nginx_factory(od_conf(pebble, tmp_path, https, od=od, managed=False), name="bad", start=False)
        ok, out = ng.test_config()
        assert not ok and re.search(msg, out), out
    conf = od_conf(pebble, tmp_path, https, managed=False).replace(
        "acme_certificate pebble on_demand;", "acme_certificate pebble on_demand a.od.example.org;")
    ng = nginx_factory(conf, name="bad2", start=False)
    ok, out = ng.test_config()
    assert not ok and "takes its names from handshakes" in out, out

    # fail=close: a refused first handshake is closed, not given the fallback
    ng = nginx_factory(od_conf(pebble, tmp_path, https, od="fail=close", managed=False), name="close",
                       wait_port=https)
    t0 = time.monotonic()
    try:
        tls_cert(https, "stranger.example.com", timeout=10)
        raise AssertionError("the handshake completed")
    except (ssl.SSLError, ConnectionError, OSError) as e:
        assert not isinstance(e, socket.timeout), e
    assert time.monotonic() - t0 < 3
    # a listed name still gets its certificate
    der, _ = pebble_leaf(https, "fine" + OD_SUFFIX, pebble.roots(0))
    assert leaf_names(der) == ["fine" + OD_SUFFIX]


def test_wait_time_out_gives_fallback(pebble, nginx_factory, tmp_path):
    """A CA that never answers: the first handshake gets the fallback after wait=, logged and counted."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)       # accepts (the kernel does), never answers
    try:
        https = free_port()
        conf = od_conf(pebble, tmp_path, https, od="wait=2s", managed=False).replace(
            pebble.directory_url, f"http://127.0.0.1:{silent.getsockname()[1]}/dir")
        # the silent CA is closed at the end: a failure then, by design
        ng = nginx_factory(conf, wait_port=https, allowed=(r"cannot reach the CA",))
        t0 = time.monotonic()
        fallback_quick(https, "late" + OD_SUFFIX, bound=6.0)
        assert time.monotonic() - t0 >= 1.5
        wait_status(pebble, lambda st: st["refused"]["timeout"] == 1 and st["waiting"] == 0, "timeout counted")
        assert "refused: no certificate within wait=" in ng.log_text()
    finally:
        silent.close()


def test_waiting_count_survives_a_worker_crash(pebble, nginx_factory, tmp_path):
    """Connections held by a worker that dies stop counting against waiting= (the cache manager gives its
    share back), so the cap does not stay reached."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        https = free_port()
        conf = od_conf(pebble, tmp_path, https, od="wait=30s waiting=2 unseen=8s", managed=False).replace(
            pebble.directory_url, f"http://127.0.0.1:{silent.getsockname()[1]}/dir")
        ng = nginx_factory(conf, wait_port=https, workers=1,
                           allowed=(r"cannot reach the CA", r"exited on signal 9"))
        held = []
        for i in range(2):
            s = socket.create_connection(("127.0.0.1", https))
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            t = ctx.wrap_socket(s, server_hostname=f"held{i}{OD_SUFFIX}", do_handshake_on_connect=False)
            t.setblocking(False)
            try:
                t.do_handshake()
            except ssl.SSLWantReadError:
                pass
            held.append(t)
        wait_status(pebble, lambda st: st["waiting"] == 2, "two connections held")
        (pid,) = ng.worker_pids()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: ng.worker_pids() and ng.worker_pids() != [pid], 10, what="a new worker")
        wait_status(pebble, lambda st: st["waiting"] == 0, "the dead worker's connections given back")
        for t in held:
            t.close()
    finally:
        silent.close()


def test_ip_and_invalid_names_never_asked(pebble, nginx_factory, tmp_path):
    """Even when server_name matches anything: an IP address or an invalid DNS name is refused by the worker,
    never asked about, never ordered."""
    ask = AskServer()
    try:
        https = free_port()
        conf = od_conf(pebble, tmp_path, https, od=f"ask={ask.url}", managed=False).replace(
            "server_name ~^[a-z0-9-]+\\.od\\.example\\.org$ exact.example.net;", "server_name ~.;")
        nginx_factory(conf, wait_port=https)
        base = pebble.order_count()
        for sni in ("192.0.2.7", "bad_name.example.org", "nodot"):
            t0 = time.monotonic()
            p = subprocess.run([OPENSSL_BIN, "s_client", "-connect", f"127.0.0.1:{https}", "-servername", sni],
                               input=b"", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=20)
            assert time.monotonic() - t0 < 3, sni
            assert b"BEGIN CERTIFICATE" not in p.stdout or b"Pebble" not in p.stdout
        wait_status(pebble, lambda st: st["refused"]["invalid_name"] == 3, "three invalid names counted")
        assert ask.asked == []
        assert pebble.order_count() == base
    finally:
        ask.close()


def cluster_nodes(pebble, nginx_factory, procs, tmp_path, od=""):
    """Two nginx nodes on one Redis (acme_storage): (their TLS ports, the nodes). A answers the CA's HTTP-01
    requests (from the store) for both nodes' orders and serves the status; B has only TLS."""
    from test_redis_store import REDIS_CLI, REDIS_SERVER, Redis, key_file
    if not (os.access(REDIS_SERVER, os.X_OK) and os.access(REDIS_CLI, os.X_OK)):
        import pytest
        pytest.skip("redis-server / redis-cli not installed")
    redis = Redis(procs, tmp_path / "redis")
    storage = f"acme_storage {redis.url()} prefix=od;\nacme_storage_key {key_file(tmp_path / 'storage.key')};\n"
    ports, nodes = [free_port(), free_port()], []
    for i, node in enumerate("ab"):
        conf = storage + od_conf(pebble, tmp_path / node, ports[i], od=od, managed=False)
        if node == "b":
            conf = conf.replace(f"listen 127.0.0.1:{pebble.http_port};", f"listen 127.0.0.1:{free_port()};")
        nodes.append(nginx_factory(conf, name=f"nginx-{node}", wait_port=ports[i]))
    return ports, nodes


def test_cluster_second_node_serves_without_order(pebble, nginx_factory, procs, tmp_path):
    """acme_storage: a name node A issued at its first handshake is served by node B with no second order;
    first handshakes on both nodes at once for one new name make one order (the store's lock)."""
    ports, nodes = cluster_nodes(pebble, nginx_factory, procs, tmp_path)
    roots = pebble.roots(0)
    base = pebble.order_count()

    name = "shared" + OD_SUFFIX
    der_a, _ = pebble_leaf(ports[0], name, roots)
    assert leaf_names(der_a) == [name]
    assert pebble.order_count() - base == 1
    der_b, _ = pebble_leaf(ports[1], name, roots)
    assert der_b == der_a, "node B did not serve node A's certificate"
    assert pebble.order_count() - base == 1

    # both nodes' first handshakes for a new name at once: one order, both serve its certificate
    name = "both" + OD_SUFFIX
    got, errors = {}, []

    def one(k):
        try:
            got[k] = pebble_leaf(ports[k % 2], name, roots, timeout=30)
        except Exception as e:      # noqa: BLE001 (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not errors, errors
    assert len(got) == 6 and len({der for der, _ in got.values()}) == 1, "the nodes served different certificates"
    assert leaf_names(got[0][0]) == [name]
    assert pebble.order_count() - base == 2
    # the node that found the store's lock taken serves it once the other announces it (not ~15 s later,
    # when its manager would look again by itself)
    took = max(t for _, t in got.values())
    assert took < 8, f"a first handshake took {took:.1f} s"

    # the names' index in the store is the cluster's: B's save keeps the name only A has seen, so a
    # restart of A takes it up again (no order, before any handshake)
    for i, only in enumerate(("aonly", "bonly")):
        assert leaf_names(pebble_leaf(ports[i], only + OD_SUFFIX, roots)[0]) == [only + OD_SUFFIX]
    nodes[0].stop()
    nodes[0].start(wait_port=ports[0])
    wait_status(pebble, lambda st: {"aonly" + OD_SUFFIX, "bonly" + OD_SUFFIX, name}
                <= {i for c in st["certificates"] for i in c["identifiers"]},
                "the cluster's on-demand names taken up after a restart", full=True)
    assert pebble.order_count() - base == 4


def test_cluster_wide_limits(pebble, nginx_factory, procs, tmp_path):
    """acme_storage: rate= and max= count the cluster's new names, not each node's."""
    ports, nodes = cluster_nodes(pebble, nginx_factory, procs, tmp_path, od="rate=1 max=2")
    roots = pebble.roots(0)
    base = pebble.order_count()
    assert leaf_names(pebble_leaf(ports[0], "r1" + OD_SUFFIX, roots)[0]) == ["r1" + OD_SUFFIX]
    # B allowed none itself, but the cluster did one this minute
    fallback_quick(ports[1], "r2" + OD_SUFFIX)
    assert pebble.order_count() - base == 1
    nodes[1].wait_log(r'refused \(rate_limited\): as many new orders in the cluster in the last minute', timeout=5)
    # A's name is served by B: no new name, no limit
    assert leaf_names(pebble_leaf(ports[1], "r1" + OD_SUFFIX, roots)[0]) == ["r1" + OD_SUFFIX]
    assert pebble.order_count() - base == 1


def two_issuer_conf(pebble, tmp_path, ports, storage=""):
    """On-demand servers with their own issuer and state_path (pa: *.oda..., pb: *.odb...), and one more
    on pa with RSA keys (*.odr...)."""
    conf = storage + issuer_block("pa", pebble, tmp_path / "state-a") + issuer_block("pb", pebble,
                                                                                     tmp_path / "state-b")
    conf += f"""
    server {{
        listen 127.0.0.1:{pebble.http_port};
        location / {{ return 200 "plain\\n"; }}
        location = /acme {{ acme_status; }}
    }}
"""
    for port, iss, sub in ((ports[0], "pa", "oda"), (ports[1], "pb", "odb"), (ports[2], "pa key=rsa:2048", "odr")):
        conf += f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name ~^[a-z0-9-]+\\.{sub}\\.example\\.org$;
        acme_certificate {iss} on_demand;
        location / {{ return 200 "{sub}\\n"; }}
    }}
"""
    return conf


@pytest.mark.parametrize("storage", ["redis", "state_path"])
def test_names_stay_with_their_issuer_after_restart(pebble, nginx_factory, procs, tmp_path, storage):
    """On-demand servers on two issuers with different state_paths (one acme_storage, or none), and one more
    on the first issuer with RSA keys: after a restart each name is taken up by its own server's issuer and
    key type (no order, served at once); the names' index keeps them all (not only the last writer's)."""
    conf = ""
    if storage == "redis":
        from test_redis_store import REDIS_CLI, REDIS_SERVER, Redis, key_file, signed
        if not (os.access(REDIS_SERVER, os.X_OK) and os.access(REDIS_CLI, os.X_OK)):
            pytest.skip("redis-server / redis-cli not installed")
        redis = Redis(procs, tmp_path / "redis")
        conf = f"acme_storage {redis.url()} prefix=od2;\nacme_storage_key {key_file(tmp_path / 'k.key')};\n"
    ports = [free_port(), free_port(), free_port()]
    ng = nginx_factory(two_issuer_conf(pebble, tmp_path, ports, conf), wait_port=ports[2])
    roots = pebble.roots(0)
    base = pebble.order_count()
    # name: (its server's port, issuer, store name)
    names = {"one.oda.example.org": (ports[0], "pa", "one.oda.example.org"),
             "two.odb.example.org": (ports[1], "pb", "two.odb.example.org"),
             "three.odr.example.org": (ports[2], "pa", "three.odr.example.org_rsa2048")}
    ders = {}
    for name, (port, _, _) in names.items():
        ders[name], _ = pebble_leaf(port, name, roots)
        assert leaf_names(ders[name]) == [name]
    assert pebble.order_count() - base == 3

    def by_name(st):
        return {c["name"]: c for c in st["certificates"]}

    def taken_up(what):
        st = wait_status(pebble, lambda st: {s for _, _, s in names.values()} <= set(by_name(st)), what,
                         full=True)
        for name, (port, iss, store) in names.items():
            assert by_name(st)[store]["issuer_name"] == iss, f"{name} taken up by the wrong issuer: {st}"
            der, took = pebble_leaf(port, name, roots)
            assert der == ders[name] and took < 3.0, f"{name} not served from the store ({what})"
        assert pebble.order_count() - base == 3

    wait_status(pebble, lambda st: st["on_demand"]["certificates"] == 3, "the names issued", full=True)
    ng.stop()
    ng.start(wait_port=ports[2])
    taken_up("the names taken up after the restart")

    # an index written before its entries named their issuer still loads: by state_path, then (one index
    # for all with acme_storage) by server_name
    ng.stop()
    now = int(time.time())
    if storage == "redis":
        legacy = json.dumps({"names": [{"name": n, "seen": now} for n in names]})
        redis.cli("SET", "od2:ondemand/names.json", signed(tmp_path / "k.key", "ondemand/names.json", legacy))
    else:
        for sub in "ab":
            index = tmp_path / f"state-{sub}" / "ondemand" / "names.json"
            entries = json.loads(index.read_text())["names"]
            assert entries and all(set(e) == {"name", "seen", "issuer", "key"} for e in entries), entries
            index.write_text(json.dumps({"names": [{"name": e["name"], "seen": now} for e in entries]}))
    ng.start(wait_port=ports[2])
    taken_up("the names taken up from an older index")
