"""Cluster mode end to end: two nginx nodes (2 workers each) and one Apache node on different loopback addresses
(127.0.0.2, .3, .4, all with Pebble's httpPort and tlsPort), one Pebble, one redis-server, all nodes on one Redis
prefix sealed with one storage key file. The mock DNS maps each name to the node the CA must validate
(ChallTestSrv.add_a), so the node that orders and the node that answers the CA can differ."""

import os
import re
import signal
import time
import types

import pytest

import harness
import leakcheck
from harness import NODE_ADDRESSES, RedisServer, wait_for
from nginx_harness import https_get, issuer_block, nginx_factory, tls_verified  # noqa: F401
from apache_harness import Apache, apache_factory  # noqa: F401
from fault_proxy import FaultProxy

pytestmark = pytest.mark.skipif(not os.access(harness.REDIS_SERVER_BIN, os.X_OK),
                                reason="redis-server not installed")

ADDR_A, ADDR_B, ADDR_C = NODE_ADDRESSES     # nginx A, nginx B, Apache C
HTTP_NAME = "h.cluster.test"                # issued over http-01
ALPN_NAME = "t.cluster.test"                # issued over tls-alpn-01
PREFIX = "cl"


# --------------------------------------------------------------------------
# nodes
# --------------------------------------------------------------------------

def nginx_conf(ca, addr, state, storage, http_names, alpn_names):
    """One nginx node: two issuers (http-01 only, tls-alpn-01 only), a plain server and one TLS server per
    name, all on addr with the CA's validation ports."""
    conf = storage
    conf += issuer_block("phttp", ca, state / "http", challenge="http-01")
    conf += issuer_block("palpn", ca, state / "alpn", challenge="tls-alpn-01")
    names = list(http_names) + list(alpn_names)
    conf += f"""
    server {{
        listen {addr}:{ca.http_port};
        server_name {' '.join(names)};
        location / {{ return 200 "plain {addr}\\n"; }}
    }}
"""
    for n in names:
        issuer = "phttp" if n in http_names else "palpn"
        conf += f"""
    server {{
        listen {addr}:{ca.tls_port} ssl;
        server_name {n};
        acme_certificate {issuer};
        location / {{ return 200 "tls {addr}\\n"; }}
        location = /acme {{ acme_status renew=on renew_interval=1s; }}
    }}
"""
    return conf


class NginxNode:
    kind = "nginx"

    def __init__(self, factory, name, addr, ca, storage, http_names, alpn_names, tmp_path):
        self.name, self.addr, self.ca = name, addr, ca
        self.ng = factory(nginx_conf(ca, addr, tmp_path / name / "state", storage, http_names, alpn_names),
                          name=name, start=False)

    def start(self):
        self.ng.start()

    def wait_up(self):
        self.ng.proc.wait_port(self.ca.tls_port, host=self.addr, timeout=15)

    def log(self, since=0):
        return self.ng.log_text(since)

    def mark(self):
        return self.ng.log_size()

    def pids(self):
        return {self.ng.proc.pid, *self.ng.worker_pids(), *self.ng.helper_pids()}

    def renew(self, name):
        return https_get(self.ca.tls_port, name, f"/acme?renew={name}", method="POST", host=self.addr).status

    def answered(self, name, since):
        """Log lines showing that this node answered the CA for name."""
        rx = re.compile(r'acme: answering http-01 challenge .*host: "%s[:"]|tls-alpn-01 challenge handshake for "%s"'
                        % (re.escape(name), re.escape(name)))
        return [ln for ln in self.log(since).splitlines() if rx.search(ln)]

    def kill(self):
        self.ng.proc.kill()

    def allow(self, regex):
        self.ng.allow(regex)


class ApacheNode:
    kind = "apache"

    def __init__(self, factory, procs, name, addr, ca, ca_url, storage, http_names, alpn_names):
        self.name, self.addr, self.ca, self.procs = name, addr, ca, procs
        vhosts = ""
        self.a = factory(ca, name=name, address=addr, ca_url=ca_url, acme_global=storage)
        for n in http_names:
            vhosts += self.a.managed_vhosts([n], extra="    ACMEChallenge http-01\n")
        for n in alpn_names:
            vhosts += self.a.managed_vhosts([n], extra="    ACMEChallenge tls-alpn-01\n")
        self.a.vhosts = vhosts

    def start(self):
        self.a.start(self.procs, wait=False)

    def wait_up(self):
        self.a.proc.wait_port(self.a.https_port, host=self.addr, timeout=15)
        wait_for(lambda: "resuming normal operations" in self.a.log(), timeout=15, what="apache up")

    def log(self, since=0):
        return self.a.log()[since:]

    def mark(self):
        return len(self.a.log())

    def pids(self):
        out = set()
        pgid = self.a.proc.pid
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat", "rb") as f:
                        rest = f.read().rsplit(b")", 1)[1].split()
                except OSError:
                    continue
                if int(rest[2]) == pgid and rest[0] not in (b"Z", b"X"):
                    out.add(int(d))
        return out

    def renew(self, name):
        return self.a.renew(name).status

    def answered(self, name, since):
        rx = re.compile(r"ACME005[3]: http-01: answering the challenge for %s\b|ACME0062: tls-alpn-01: answering "
                        r"the challenge for %s\b" % (re.escape(name), re.escape(name)))
        return [ln for ln in self.log(since).splitlines() if rx.search(ln)]

    def kill(self):
        self.a.proc.kill()

    def allow(self, regex):
        """After start() (the log is watched from then)."""
        self.procs.server_logs.allow(regex, self.a.error_log)


def ordered(node, name, since=0):
    """True if node's log says it stored a certificate for name that it got from the CA."""
    return f'"{name}": certificate issued by' in node.log(since)


def served(node, name, roots):
    try:
        return tls_verified(node.ca.tls_port, name, roots, host=node.addr, timeout=3)
    except (OSError, ValueError, harness.HarnessError):
        return None


class Cluster:
    def __init__(self, pebble, redis, key_file, nginx_factory, apache_factory, procs, tmp_path,
                 ca=None, url_query="", http_names=(HTTP_NAME,), alpn_names=(ALPN_NAME,),
                 kinds=("nginx", "nginx", "apache")):
        self.pebble = pebble
        self.redis = redis
        ca = ca or pebble
        self.ca = ca
        url = redis.url(url_query)
        ngx_storage = f"acme_storage {url} prefix={PREFIX};\nacme_storage_key {key_file};\n"
        ap_storage = f"ACMEStorage {url} prefix={PREFIX}\nACMEStorageKey {key_file}\n"
        self.names = list(http_names) + list(alpn_names)
        self.nodes = []
        for kind, letter, addr in zip(kinds, "abc", NODE_ADDRESSES):
            if kind == "nginx":
                n = NginxNode(nginx_factory, f"nginx-{letter}", addr, ca, ngx_storage, http_names, alpn_names,
                              tmp_path)
            else:
                n = ApacheNode(apache_factory, procs, f"apache-{letter}", addr, ca, ca.directory_url, ap_storage,
                               http_names, alpn_names)
            self.nodes.append(n)
        self.a, self.b, self.c = self.nodes

    def start(self):
        """All three at once."""
        for n in self.nodes:
            n.start()
        for n in self.nodes:
            n.wait_up()

    def serials(self, name, nodes=None):
        roots = self.pebble.roots(0)
        return [served(n, name, roots) for n in (nodes or self.nodes)]

    def wait_served(self, name, differs_from=None, nodes=None, timeout=60):
        """Wait until every node serves the same Pebble certificate for name (other than differs_from)."""
        def ok():
            s = self.serials(name, nodes)
            if s[0] and len(set(s)) == 1 and s[0] != differs_from:
                return s[0]
            return None
        try:
            return wait_for(ok, timeout, interval=0.3, what=f"one Pebble certificate for {name} on every node")
        except harness.HarnessError as e:
            raise AssertionError(f"{e}: served serials {self.serials(name, nodes)}") from None

    def renew_validated(self, node, name, differs_from):
        """node renews name until the CA validated it anew; (marks before that renewal, new serial)."""
        for _ in range(3):
            marks, since = self.marks(), self.pebble.proc.log_size()
            assert node.renew(name) == 202
            new = self.wait_served(name, differs_from=differs_from)
            if validated_since(self.pebble, name, since):
                return marks, new
            differs_from = new
        raise AssertionError(f"Pebble reused the authorization for {name} three times in a row")

    def orderers(self, name, marks=None):
        return [n.name for n in self.nodes if ordered(n, name, (marks or {}).get(n.name, 0))]

    def marks(self):
        return {n.name: n.mark() for n in self.nodes}

    def allow(self, regex):
        """Error lines every node may log (after start(): Apache's log is watched from its start)."""
        for n in self.nodes:
            n.allow(regex)


def validated_since(pebble, name, since):
    """Pebble validated name after its log offset since. Even with PEBBLE_AUTHZREUSE=0 it reuses a valid
    authorization once in a hundred orders (it makes a new one when rand.Intn(100) > 0), and then no node
    is asked."""
    return f'Value:"{name}"' in pebble.proc.log_text(since)


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------

@pytest.fixture
def cpebble(pebble_factory):
    """A Pebble of its own that never reuses authorizations (every order is validated) and rejects no
    good nonce (so newOrder requests count orders)."""
    return pebble_factory(env={"PEBBLE_AUTHZREUSE": "0", "PEBBLE_WFE_NONCEREJECT": "0"})


@pytest.fixture
def redis(procs, tmp_path):
    r = RedisServer(tmp_path / "redis", persist=True)     # a restart keeps the data, as a real one would
    procs.procs.append(r)       # stopped with the other processes (Process-like stop())
    r.start()
    return r


@pytest.fixture
def key_file(tmp_path):
    p = tmp_path / "storage.key"
    p.write_bytes(leakcheck.STORAGE_KEY)
    p.chmod(0o600)
    return p


@pytest.fixture
def cluster(cpebble, redis, key_file, nginx_factory, apache_factory, procs, tmp_path, dns):
    def make(**kw):
        return Cluster(cpebble, redis, key_file, nginx_factory, apache_factory, procs, tmp_path, **kw)
    return make


# the mixed cluster (nginx A, nginx B, Apache C), and three Apache nodes for the tests that do not depend on
# the server kind
KINDS = pytest.mark.parametrize("kinds", [("nginx", "nginx", "apache"), ("apache", "apache", "apache")],
                                ids=["mixed", "apache"])


# --------------------------------------------------------------------------
# the harness: nodes on other loopback addresses (no Redis)
# --------------------------------------------------------------------------

def test_nodes_on_other_loopback_addresses(pebble, dns, nginx_factory, apache_factory, procs, acme_build,
                                           tmp_path):
    """Plain nodes (each its own state directory): the CA validates at the address the mock DNS gives."""
    dns.map_a("n2.cluster.test", ADDR_B)
    dns.map_a("ap4.cluster.test", ADDR_C)
    assert dns.resolve("n2.cluster.test") == [ADDR_B]
    node = NginxNode(nginx_factory, "plain-b", ADDR_B, pebble, "", ["n2.cluster.test"], [], tmp_path)
    node.start()
    node.wait_up()
    ap = ApacheNode(apache_factory, procs, "plain-c", ADDR_C, pebble, pebble.directory_url, "", [],
                    ["ap4.cluster.test"])
    ap.start()
    ap.wait_up()
    roots = pebble.roots(0)
    sb = wait_for(lambda: served(node, "n2.cluster.test", roots), 40, interval=0.3, what="nginx on .3 issued")
    sc = wait_for(lambda: served(ap, "ap4.cluster.test", roots), 40, interval=0.3, what="apache on .4 issued")
    assert {sb, sc} <= set(pebble.issued_serials())
    assert node.answered("n2.cluster.test", 0), node.log()[-3000:]
    assert ap.answered("ap4.cluster.test", 0), ap.log()[-3000:]
    # nothing listens on 127.0.0.1 at those ports
    assert not harness.port_open(pebble.http_port) and not harness.port_open(pebble.tls_port)


# --------------------------------------------------------------------------
# cluster
# --------------------------------------------------------------------------

def test_validated_on_another_node(cluster, dns):
    """The node that orders is not the node the CA validates: http-01 ordered by nginx A and answered by
    Apache C; tls-alpn-01 ordered by Apache C and answered by nginx B."""
    dns.map_a(HTTP_NAME, ADDR_B)
    dns.map_a(ALPN_NAME, ADDR_B)
    cl = cluster()
    cl.start()
    first = {n: cl.wait_served(n) for n in cl.names}
    # the first issuance: whoever ordered, B answered
    for n in cl.names:
        assert len(cl.orderers(n)) == 1, cl.orderers(n)
        assert cl.b.answered(n, 0), f"nginx B did not answer the CA for {n}"

    # http-01: A orders, the CA goes to C
    dns.map_a(HTTP_NAME, ADDR_C)
    marks, new = cl.renew_validated(cl.a, HTTP_NAME, first[HTTP_NAME])
    assert cl.orderers(HTTP_NAME, marks) == ["nginx-a"]
    assert cl.c.answered(HTTP_NAME, marks["apache-c"]), cl.c.log(marks["apache-c"])[-3000:]
    assert not cl.a.answered(HTTP_NAME, marks["nginx-a"])
    assert new in cl.pebble.issued_serials()

    # tls-alpn-01: C orders, the CA goes to B
    marks, _ = cl.renew_validated(cl.c, ALPN_NAME, first[ALPN_NAME])
    assert cl.orderers(ALPN_NAME, marks) == ["apache-c"]
    assert cl.b.answered(ALPN_NAME, marks["nginx-b"]), cl.b.log(marks["nginx-b"])[-3000:]
    assert not cl.c.answered(ALPN_NAME, marks["apache-c"])
    # Apache's core waited for both nginx nodes to take the challenge it announced
    assert re.search(r"2 node\(s\) took the tls-alpn-01 challenge for " + re.escape(ALPN_NAME),
                     cl.c.log(marks["apache-c"])), cl.c.log(marks["apache-c"])[-3000:]


@KINDS
def test_one_order_per_certificate(cluster, dns, kinds):
    """Three nodes started at once place one order per certificate between them."""
    dns.map_a(HTTP_NAME, ADDR_A)
    dns.map_a(ALPN_NAME, ADDR_C)
    cl = cluster(kinds=kinds)
    base = cl.pebble.mark()
    cl.start()
    for n in cl.names:
        cl.wait_served(n)
    time.sleep(2)       # a late duplicate would show up by now
    assert cl.pebble.request_count("/order-plz", since=base) == 2
    assert cl.pebble.order_count(since=base) == 2
    assert cl.pebble.issued_count(since=base) == 2
    for n in cl.names:
        assert len(cl.orderers(n)) == 1, (n, cl.orderers(n))


@KINDS
def test_forced_renewal_served_everywhere_without_reload(cluster, dns, kinds):
    dns.map_a(HTTP_NAME, ADDR_B)
    cl = cluster(alpn_names=(), kinds=kinds)
    cl.start()
    old = cl.wait_served(HTTP_NAME)
    pids = {n.name: n.pids() for n in cl.nodes}
    gens = [n.log().count("resuming normal operations") for n in cl.nodes]     # Apache generations
    marks = cl.marks()
    assert cl.b.renew(HTTP_NAME) == 202
    new = cl.wait_served(HTTP_NAME, differs_from=old, timeout=40)
    assert new in cl.pebble.issued_serials()
    # no reload, no restart, no graceful: the same processes serve the new certificate
    assert {n.name: n.pids() for n in cl.nodes} == pids
    assert [n.log().count("resuming normal operations") for n in cl.nodes] == gens
    for n in cl.nodes:
        assert "reconfiguring" not in n.log(marks[n.name])


@KINDS
def test_lock_holder_killed_mid_issuance(cpebble, redis, key_file, nginx_factory, apache_factory, procs,
                                         tmp_path, dns, test_ca, kinds):
    """The node holding the certificate's lock is SIGKILLed while its finalize is held at the CA; after the
    lease another node finishes the issuance and every surviving node serves it."""
    cert, key = test_ca.issue("cluster-proxy", ["localhost"], ["127.0.0.1"], basename="cluster-proxy")
    px = FaultProxy(cpebble, cert, key, harness.free_port(), log_path=tmp_path / "fault-proxy.log").start()
    try:
        ca = types.SimpleNamespace(directory_url=px.directory_url, ca_cert=cpebble.ca_cert,
                                   http_port=cpebble.http_port, tls_port=cpebble.tls_port)
        held = px.add_fault("finalize", hold=True, hold_timeout=60)
        dns.map_a(HTTP_NAME, ADDR_B)
        cl = Cluster(cpebble, redis, key_file, nginx_factory, apache_factory, procs, tmp_path, ca=ca,
                     url_query="?lock_lease=2s", alpn_names=(), kinds=kinds)
        cl.start()
        assert held.wait_hit(timeout=40), "no finalize reached the CA"
        locks = [k for k in redis.keys(f"{PREFIX}:lock:*") if HTTP_NAME in k]
        assert len(locks) == 1, redis.keys("*")
        owner = redis.get(locks[0]).decode()
        pid = int(owner.split(":")[1])
        holder = next(n for n in cl.nodes if pid in n.pids())
        holder.kill()
        held.release()
        survivors = [n for n in cl.nodes if n is not holder]
        serial = cl.wait_served(HTTP_NAME, nodes=survivors, timeout=60)
        assert serial in cpebble.issued_serials()
        finisher = [n.name for n in survivors if ordered(n, HTTP_NAME)]
        assert len(finisher) == 1, finisher
        assert not ordered(holder, HTTP_NAME)
    finally:
        px.stop()


@KINDS
def test_redis_down_serving_goes_on(cluster, dns, redis, kinds):
    dns.map_a(HTTP_NAME, ADDR_C)
    cl = cluster(alpn_names=(), kinds=kinds)
    cl.start()
    cl.allow(r"redis")
    old = cl.wait_served(HTTP_NAME)
    redis.stop()
    for _ in range(3):
        time.sleep(1)
        assert cl.serials(HTTP_NAME) == [old] * 3
    # status still answers (from what the nodes know)
    assert cl.a.renew("nope.cluster.test") == 404
    redis.start()
    time.sleep(1)
    assert cl.a.renew(HTTP_NAME) == 202
    new = cl.wait_served(HTTP_NAME, differs_from=old, timeout=60)
    assert new in cl.pebble.issued_serials()


@pytest.mark.serial
def test_restarts_with_redis_down_keep_serving(cluster, dns, redis):
    """Redis down, then every node restarted (nginx: reload, then stop and start; Apache: graceful, then stop
    and start): each serves the certificate it had, not the self-signed fallback, and none takes its
    certificate for missing (nothing ordered, no failure on the CA's back-off). A renewal asked while Redis
    is down is carried out, once, soon after Redis is back."""
    dns.map_a(HTTP_NAME, ADDR_C)
    cl = cluster(alpn_names=())
    cl.start()
    cl.allow(r"redis|storage unreachable")
    old = cl.wait_served(HTTP_NAME)
    assert cl.pebble.issued_count() == 1
    redis.stop()
    for n in cl.nodes:
        if n.kind == "nginx":
            n.ng.reload()
        else:
            n.a.graceful()
    assert cl.serials(HTTP_NAME) == [old] * 3
    marks = {}
    for n in cl.nodes:
        (n.ng if n.kind == "nginx" else n.a).proc.stop()
        marks[n.name] = n.mark()
        n.start()
    for n in cl.nodes:
        n.wait_up()
    assert cl.serials(HTTP_NAME) == [old] * 3
    assert cl.a.renew(HTTP_NAME) == 202
    wait_for(lambda: "storage unreachable, nothing ordered" in cl.a.log(marks[cl.a.name]), 20,
             what="node a to put the renewal off")
    for n in cl.nodes:
        assert f'"{HTTP_NAME}": missing from' not in n.log(marks[n.name]), n.name
    redis.start()
    new = cl.wait_served(HTTP_NAME, differs_from=old, timeout=60)
    assert new in cl.pebble.issued_serials()
    assert cl.orderers(HTTP_NAME, marks) == [cl.a.name]
    assert cl.pebble.issued_count() == 2


@pytest.mark.serial
def test_http01_at_nginx_right_after_redis_outage(cluster, dns, redis):
    """Redis down, then up, and Apache C renews at once: the CA validates at nginx A, whose leader has not
    subscribed to the store's announcements again yet (so C did not wait for its ack). A's worker holds the
    CA's request and asks its leader for a check of the store, which subscribes again and copies the
    challenge: 200, not 404 (unknown token), and the order goes through."""
    dns.map_a(HTTP_NAME, ADDR_A)
    cl = cluster(alpn_names=())
    cl.start()
    cl.allow(r"redis|storage unreachable")
    old = cl.wait_served(HTTP_NAME)
    mark = cl.a.mark()
    redis.stop()
    wait_for(lambda: "storage unreachable" in cl.a.log(mark), 15, interval=0.1, what="nginx A to miss Redis")
    marks, since = cl.marks(), cl.pebble.proc.log_size()
    redis.start()
    assert cl.c.renew(HTTP_NAME) == 202
    new = cl.wait_served(HTTP_NAME, differs_from=old, timeout=15)
    assert new in cl.pebble.issued_serials()
    log = cl.a.log(marks[cl.a.name])
    assert "unknown http-01 token" not in log, log[-3000:]
    if validated_since(cl.pebble, HTTP_NAME, since):
        assert cl.a.answered(HTTP_NAME, marks[cl.a.name]), log[-3000:]
    assert cl.orderers(HTTP_NAME, marks) == [cl.c.name]


@KINDS
def test_secrets_sealed_in_redis(cluster, dns, redis, key_file, acmectl_bin, kinds):
    dns.map_a(HTTP_NAME, ADDR_A)
    cl = cluster(alpn_names=(), kinds=kinds)
    cl.start()
    cl.wait_served(HTTP_NAME)
    keys = redis.keys(f"{PREFIX}:*")
    priv = f"{PREFIX}:certs/{HTTP_NAME}/privkey.pem"
    assert priv in keys, keys
    acct = [k for k in keys if k.startswith(f"{PREFIX}:accounts/") and k.endswith("/account.key")]
    assert len(acct) == 1, keys
    for k in [priv] + acct:
        raw = redis.get(k)
        assert raw.startswith(b"acme-aead-v1:"), raw[:40]
        assert b"PRIVATE KEY" not in raw
    values = b"".join(redis.get(k) or b"" for k in keys if redis.command("TYPE", k) == "string")
    assert b"PRIVATE KEY" not in values
    # the certificate itself is public
    assert redis.value(f"{PREFIX}:certs/{HTTP_NAME}/fullchain.pem").startswith(b"-----BEGIN CERTIFICATE-----")
    # the key file opens them; without it they stay closed
    ca = ["--ca", cl.pebble.directory_url, "--ca-cert", cl.pebble.ca_cert]
    url = redis.url(f"?prefix={PREFIX}")
    p = harness.run_cmd([acmectl_bin, "--storage", url, "--storage-key", key_file, *ca, "account", "show"],
                        timeout=30)
    assert p.returncode == 0, p.stderr
    p = harness.run_cmd([acmectl_bin, "--storage", url, *ca, "account", "show"], timeout=30)
    assert p.returncode != 0 and "encrypted" in p.stderr, p.stderr


def test_two_apache_nodes(cpebble, redis, key_file, apache_factory, procs, dns):
    """Two Apache nodes (.3 and .4) on one prefix: one order between them, a renewal ordered by one and
    validated at the other, served by both with no graceful restart."""
    storage = f"ACMEStorage {redis.url()} prefix={PREFIX}\nACMEStorageKey {key_file}\n"
    dns.map_a(HTTP_NAME, ADDR_B)
    nodes = [ApacheNode(apache_factory, procs, f"apache-{i}", addr, cpebble, cpebble.directory_url, storage,
                        [HTTP_NAME], []) for i, addr in ((3, ADDR_B), (4, ADDR_C))]
    base = cpebble.mark()
    for n in nodes:
        n.start()
    for n in nodes:
        n.wait_up()
    roots = cpebble.roots(0)

    def same(differs_from=None):
        s = [served(n, HTTP_NAME, roots) for n in nodes]
        return s[0] if s[0] and len(set(s)) == 1 and s[0] != differs_from else None
    old = wait_for(same, 60, interval=0.3, what="both Apache nodes serving one certificate")
    assert cpebble.request_count("/order-plz", since=base) == 1 == cpebble.order_count(since=base)
    assert nodes[0].answered(HTTP_NAME, 0)
    gens = [n.a.log().count("resuming normal operations") for n in nodes]

    dns.map_a(HTTP_NAME, ADDR_C)
    for _ in range(3):      # until the CA validates anew (see validated_since)
        marks, since = [n.mark() for n in nodes], cpebble.proc.log_size()
        assert nodes[0].renew(HTTP_NAME) == 202
        new = wait_for(lambda: same(old), 60, interval=0.3, what="the renewed certificate on both nodes")
        if validated_since(cpebble, HTTP_NAME, since):
            break
        old = new
    assert new in cpebble.issued_serials()
    assert ordered(nodes[0], HTTP_NAME, marks[0]) and not ordered(nodes[1], HTTP_NAME, marks[1])
    assert nodes[1].answered(HTTP_NAME, marks[1]) and not nodes[0].answered(HTTP_NAME, marks[0])
    assert [n.a.log().count("resuming normal operations") for n in nodes] == gens
