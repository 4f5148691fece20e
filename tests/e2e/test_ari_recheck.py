"""ARI after a restart, and on an admin's request (issue #16, item 5).

A CA answers renewalInfo with a Retry-After of 6 hours (Pebble and Let's Encrypt do), and the next check is
kept in the store: a window the CA opens meanwhile (a mass revocation) was only seen hours later, even across a
restart. Now every certificate's renewalInfo is asked again when the server starts (nginx: the first core
since the shared zone was made; Apache: the first configuration generation of the parent), not on a reload or
a graceful restart; and an admin asks for a check without forcing a renewal: `POST ?ari-check=NAME|*` on the
status endpoints (where renewals are allowed, limited like them), `acmectl ari-check [NAME...]`.

The CA is Debian's Pebble behind ari_proxy.AriProxy (renewalInfo with the window and Retry-After a test sets;
it counts the requests)."""

import json
import re
import time

import pytest

import harness
from apache_harness import apache_factory, cert_serial, stored_serial  # noqa: F401  (fixture)
from ari_proxy import AriProxy, ari_cert_id, cert_der, window_from_now
from harness import free_port, wait_for
from nginx_harness import https_get, issuer_block, managed_servers, nginx_factory, tls_verified  # noqa: F401

FUTURE = (30 * 86400, 31 * 86400)
PAST = (-3600, -60)
SIX_HOURS = 21600


class WindowProxy(AriProxy):
    """AriProxy whose window can differ per certificate: `windows` maps an ARI certificate id to its
    window, `window` is the rest's. A CA opens the window of the certificates it revokes, not of their
    replacements (the proxy's one window for all would renew the replacement again, and so on). The
    handler reads `window` just after recording the id asked for (one client at a time in these tests)."""

    def __init__(self, *a, **kw):
        self.windows = {}
        self._default = None
        super().__init__(*a, **kw)

    @property
    def window(self):
        asked = self.ari_requests[-1] if self.ari_requests else None
        return self.windows.get(asked, self._default)

    @window.setter
    def window(self, value):
        self._default = value


@pytest.fixture(scope="module")
def pebble(tmp_path_factory, test_ca, challtestsrv):
    """Pebble without random nonce rejections: the tests count order requests, and a badNonce retry
    would be a second one."""
    pb = harness.Pebble(tmp_path_factory.mktemp("pebble-ari-recheck"), test_ca,
                        dns_server=challtestsrv.dns_address, env={"PEBBLE_WFE_NONCEREJECT": "0"})
    try:
        pb.start()
        yield pb
    finally:
        pb.stop()


@pytest.fixture
def proxy(pebble, tmp_path, test_ca):
    cert, key = test_ca.issue("ari-recheck-proxy", ["localhost"], ["127.0.0.1"], basename="ari-recheck-proxy")
    px = WindowProxy(pebble, cert, key, free_port(), log_path=tmp_path / "proxy.log")
    px.window = window_from_now(*FUTURE)
    px.retry_after = SIX_HOURS
    px.start()
    try:
        yield px
    finally:
        px.stop()
    assert not px.errors, f"the proxy itself failed: {px.errors}"


def ari_count(px):
    return px.count("GET", "/renewal-info/", prefix=True)


def orders(px):
    return px.count("POST", "/order-plz")


def wait_ari(px, above, what, timeout=20):
    return wait_for(lambda: ari_count(px) > above and ari_count(px), timeout, interval=0.2, what=what)


def stays(fn, seconds):
    """fn() stays true for `seconds`."""
    end = time.time() + seconds
    while time.time() < end:
        assert fn()
        time.sleep(0.2)
    return True


# -------------------------------------------------------------------- nginx

def _nginx_conf(px, pebble, tmp_path, https, name):
    return issuer_block("pebble", px.directory_url, tmp_path / "state",
                        extra=f"ssl_trusted_certificate {pebble.ca_cert};") + managed_servers(
        pebble.http_port, https, name, locations=['location = /ro { acme_status; }',
                                                  'location = /rw { acme_status renew=on; }',
                                                  'location = /fast { acme_status renew=on renew_interval=1s; }'])


def open_window(px, fullchain):
    """The CA moves the window of this certificate (only) into the past."""
    px.windows[ari_cert_id(fullchain)] = window_from_now(*PAST)


def _fullchain(tmp_path, https, name):
    return tmp_path / "state" / "certs" / _status(https, name)["name"] / "fullchain.pem"


def _served(https, name, roots):
    try:
        return tls_verified(https, name, roots)
    except Exception:  # noqa: BLE001
        return None


def _nginx_issued(ng, px, https, name, roots):
    """The first certificate, and the ARI check that follows an issuance (window in the future)."""
    cert = wait_for(lambda: _served(https, name, roots), 40, interval=0.2, what="the first certificate")
    wait_ari(px, 0, "the ARI check after the issuance")
    st = wait_for(lambda: (lambda c: c if c and c.get("ari_window") else None)(_status(https, name)), 20,
                  interval=0.2, what="the window in the status")
    assert st["next_ari_check"] > time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 3600)), st
    return cert


def _status(https, name):
    st = https_get(https, name, "/ro").json()
    return next((c for c in st["certificates"] if name in c["identifiers"]), None)


def test_nginx_restart_asks_ari_again_reload_does_not(pebble, proxy, nginx_factory, tmp_path):
    name = "restart.ari-recheck.example.org"
    https = free_port()
    roots = pebble.roots(0)
    ng = nginx_factory(_nginx_conf(proxy, pebble, tmp_path, https, name), wait_port=https)
    first = _nginx_issued(ng, proxy, https, name, roots)
    n_ari, n_orders = ari_count(proxy), orders(proxy)

    # a reload is no start: the new cache manager keeps the CA's Retry-After
    mark = ng.reload()
    ng.wait_log(r"the ACME client runs in this cache manager process", 20, since=mark)
    time.sleep(4)
    assert ari_count(proxy) == n_ari, proxy.summary()

    # stopped; the CA opens the window meanwhile; the start asks at once and renews
    chain = _fullchain(tmp_path, https, name)
    ng.stop()
    open_window(proxy, chain)
    mark = ng.log_size()
    ng.start(wait_port=https)
    wait_ari(proxy, n_ari, "the ARI check at start", timeout=15)
    ng.wait_log(r"nginx started: asking the CA's renewal information of 1 certificate again", 5, since=mark)
    new = wait_for(lambda: (lambda c: c if c and c != first else None)(_served(https, name, roots)), 40,
                   interval=0.3, what="the renewal the new window asks for")
    assert new != first
    assert orders(proxy) == n_orders + 1
    assert proxy.new_orders[-1]["replaces"], proxy.new_orders[-1]


def test_nginx_ari_check_request(pebble, proxy, nginx_factory, tmp_path):
    name = "admin.ari-recheck.example.org"
    https = free_port()
    roots = pebble.roots(0)
    ng = nginx_factory(_nginx_conf(proxy, pebble, tmp_path, https, name), wait_port=https)
    first = _nginx_issued(ng, proxy, https, name, roots)
    n_ari, n_orders = ari_count(proxy), orders(proxy)

    # only where renewals are allowed; unknown names are 404
    r = https_get(https, name, f"/ro?ari-check={name}", method="POST")
    assert r.status == 403 and "acme_status renew=on" in r.json()["error"], r.text
    assert https_get(https, name, "/rw?ari-check=nosuch.example.org", method="POST").status == 404

    # a window in the future: asked again, nothing renewed
    r = https_get(https, name, f"/rw?ari-check={name}", method="POST")
    assert r.status == 202 and r.json() == {"ari_check": "accepted"}, r.text
    wait_ari(proxy, n_ari, "the requested ARI check", timeout=10)
    ng.wait_log(rf'acme: ARI check of "{re.escape(name)}" requested', 5)                 # the worker
    ng.wait_log(rf"acme: ARI check of {re.escape(_status(https, name)['name'])} requested", 5)  # the core
    stays(lambda: orders(proxy) == n_orders and _served(https, name, roots) == first, 3)

    # once per renew_interval (10 min by default), per name
    r = https_get(https, name, f"/rw?ari-check={name}", method="POST")
    assert r.status == 429, r.text
    assert 590 <= int(r.headers["Retry-After"]) <= 600, r.headers
    assert r.json()["error"] == "an ARI check was requested recently"

    # the CA opens the window: a check of every certificate renews it
    open_window(proxy, _fullchain(tmp_path, https, name))
    n_ari = ari_count(proxy)
    r = https_get(https, name, "/fast?ari-check=*", method="POST")
    assert r.status == 202, r.text
    wait_ari(proxy, n_ari, "the ARI check of every certificate", timeout=10)
    wait_for(lambda: (lambda c: c if c and c != first else None)(_served(https, name, roots)), 40,
             interval=0.3, what="the renewal the new window asks for")
    assert orders(proxy) == n_orders + 1


# -------------------------------------------------------------------- Apache

def _apache(apache_factory, pebble, proxy, procs, name, tag):
    a = apache_factory(pebble, name=f"apache-{tag}", ca_url=proxy.directory_url)
    a.vhosts = a.managed_vhosts([name])
    a.start(procs)
    st = a.wait_valid(name)
    wait_ari(proxy, 0, "the ARI check after the issuance")
    wait_for(lambda: (a.cert_status(name) or {}).get("ari_window"), 20, interval=0.3,
             what="the window in the status")
    return a, st["name"]


def _ari_post(a, name, what):
    return harness.http_request(f"http://{a.address}:{a.http_port}/acme-status?ari-check={what}",
                                method="POST", data=b"", timeout=5, headers={"Host": name})


def test_apache_start_asks_ari_again_graceful_does_not(apache_factory, pebble, proxy, procs):
    name = "restart.apache-ari-recheck.example.org"
    a, store_name = _apache(apache_factory, pebble, proxy, procs, name, "ari-restart")
    first = stored_serial(a.state, store_name)
    n_ari, n_orders = ari_count(proxy), orders(proxy)

    # a graceful restart keeps the parent: no start, the CA's Retry-After holds
    old_driver = a.status(name)["driver_pid"]
    a.graceful()
    wait_for(lambda: (lambda p: p and p != old_driver)(a.status(name).get("driver_pid")), 30, interval=0.3,
             what="the new generation's driver")
    time.sleep(4)
    assert ari_count(proxy) == n_ari, proxy.summary()

    # stopped; the CA opens the window; the start asks at once and renews
    open_window(proxy, a.state / "certs" / store_name / "fullchain.pem")
    a.proc.stop()
    a.start(procs)
    wait_ari(proxy, n_ari, "the ARI check at start", timeout=20)
    assert re.search(r"ACME0120: Apache started: asking the CA's renewal information of 1 certificate again",
                     a.log())
    wait_for(lambda: stored_serial(a.state, store_name) != first, 40, interval=0.3,
             what="the renewal the new window asks for")
    assert orders(proxy) == n_orders + 1
    assert proxy.new_orders[-1]["replaces"], proxy.new_orders[-1]


def test_apache_ari_check_request(apache_factory, pebble, proxy, procs):
    name = "admin.apache-ari-recheck.example.org"
    a, store_name = _apache(apache_factory, pebble, proxy, procs, name, "ari-admin")
    first = stored_serial(a.state, store_name)
    n_ari, n_orders = ari_count(proxy), orders(proxy)

    assert _ari_post(a, name, "nosuch.example.org").status == 404
    r = _ari_post(a, name, name)
    assert r.status == 202, r
    assert r.json() == {"ari_check": name, "status": "queued", "certificates": 1}
    wait_ari(proxy, n_ari, "the requested ARI check", timeout=10)
    stays(lambda: orders(proxy) == n_orders and stored_serial(a.state, store_name) == first, 3)

    open_window(proxy, a.state / "certs" / store_name / "fullchain.pem")
    n_ari = ari_count(proxy)
    r = _ari_post(a, name, "*")
    assert r.status == 202, r
    wait_ari(proxy, n_ari, "the ARI check of every certificate", timeout=10)
    wait_for(lambda: stored_serial(a.state, store_name) != first, 40, interval=0.3,
             what="the renewal the new window asks for")
    assert orders(proxy) == n_orders + 1


# -------------------------------------------------------------------- acmectl

class Ctl:
    """acmectl with a state directory, talking to the proxy."""

    def __init__(self, binary, state, proxy):
        self.binary, self.state, self.proxy = binary, state, proxy

    def args(self, *cmd):
        return [str(self.binary), "--state", str(self.state), "--ca", self.proxy.directory_url,
                "--ca-cert", str(self.proxy.pebble.ca_cert), "--contact", "admin@example.org", "--agree-tos",
                *cmd]

    def run(self, *cmd):
        return harness.run_cmd(self.args(*cmd), timeout=60)

    def ok(self, *cmd):
        p = self.run(*cmd)
        assert p.returncode == 0, f"acmectl {' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
        return p

    @property
    def http(self):
        return ["--http-listen", f"127.0.0.1:{self.proxy.pebble.http_port}"]

    def fullchain(self, name):
        return self.state / "certs" / name / "fullchain.pem"

    def serial(self, name):
        return cert_serial(cert_der(self.fullchain(name)))


@pytest.fixture
def ctl(acmectl_bin, tmp_path, proxy):
    return Ctl(acmectl_bin, tmp_path / "state", proxy)


def _issued_with_future_window(ctl, proxy, name):
    ctl.ok("issue", *ctl.http, name)
    p = ctl.ok("renew", *ctl.http, name)         # asks ARI: the window is a month away, the next check 6 h
    assert "not due until" in p.stdout and "(ari)" in p.stdout, p.stdout
    return ctl.serial(name)


def test_acmectl_ari_check(ctl, proxy):
    one, two = "one.acmectl-ari-recheck.example.org", "two.acmectl-ari-recheck.example.org"
    s1, s2 = _issued_with_future_window(ctl, proxy, one), _issued_with_future_window(ctl, proxy, two)
    n_ari, n_orders = ari_count(proxy), orders(proxy)

    # one certificate, by name: asked, stored, nothing renewed
    p = ctl.ok("ari-check", one)
    assert ari_count(proxy) == n_ari + 1, proxy.summary()
    assert re.search(rf"^{re.escape(one)}: renewal window \S+ to \S+; next renewal \S+ \(ari\)$", p.stdout,
                     re.M), p.stdout
    assert two not in p.stdout

    # the CA opens the window of the first: every certificate is asked, none renewed, the first is due
    open_window(proxy, ctl.fullchain(one))
    p = ctl.ok("ari-check")
    assert ari_count(proxy) == n_ari + 3, proxy.summary()
    assert re.search(rf"^{re.escape(one)}: renewal window \S+ to \S+; due now, since \S+ \(ari\)$", p.stdout,
                     re.M), p.stdout
    assert re.search(rf"^{re.escape(two)}: .*next renewal \S+ \(ari\)$", p.stdout, re.M), p.stdout
    assert orders(proxy) == n_orders and (ctl.serial(one), ctl.serial(two)) == (s1, s2)

    # the stored window is what the scheduler goes by
    st = {c["name"]: c for c in json.loads(ctl.ok("status", "--json").stdout)["certificates"]}
    due = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 5))
    assert st[one]["next_renewal"] <= due and st[one]["renewal_reason"] == "ari", st[one]
    assert st[two]["next_renewal"] > due, st[two]

    assert ctl.run("ari-check", "nosuch.example.org").returncode == 1


def test_acmectl_run_asks_ari_at_start(ctl, proxy, procs):
    name = "run.acmectl-ari-recheck.example.org"
    first = _issued_with_future_window(ctl, proxy, name)
    n_ari = ari_count(proxy)
    open_window(proxy, ctl.fullchain(name))
    p = procs.start(ctl.args("run", *ctl.http, name), name="acmectl-run-ari")
    wait_ari(proxy, n_ari, "the ARI check at start", timeout=15)
    wait_for(lambda: ctl.serial(name) != first, 40, interval=0.3, what="the renewal the new window asks for")
    assert proxy.new_orders[-1]["replaces"], proxy.new_orders[-1]
    p.stop()
