"""Forced renewals through the status endpoints are opt-in and cannot be abused (issue #12, section 2),
and a failed forced renewal is not retried at once in a loop (issue #13).

nginx: `acme_status` is read-only unless `renew=on` (403 says so); a certificate is forced at most once per
`renew_interval` (default 10 minutes: 429 with Retry-After), decided under the zone's lock so that of
several requests at once exactly one passes; while the CA asked to wait (rateLimited + Retry-After) a
forced renewal gets 429 with the CA's time. Apache: `ACMEStatusRenew` cannot come from .htaccess; a
request sees and renews only its virtual host's certificates (the main server: all); the same limits."""

import re
import threading
import time

import pytest

import harness
from apache_harness import apache_factory  # noqa: F401  (fixture)
from fault_proxy import FaultProxy, problem
from harness import free_port, wait_for
from nginx_harness import https_get, issuer_block, managed_servers, nginx_factory, tls_verified  # noqa: F401

ISO_RX = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"


def _retry_after(r):
    values = r.headers.get_all("Retry-After")
    assert len(values) == 1, values
    return int(values[0])


def _nginx_conf(uri_or_pebble, pebble, tmp_path, https, names, extra=""):
    servers = ""
    for n in names:
        servers += managed_servers(pebble.http_port, https, n, locations=[
            'location = /ro { acme_status; }',
            'location = /rw { acme_status renew=on; }',
            'location = /fast { acme_status renew=on renew_interval=1s; }'])
    return issuer_block("pebble", uri_or_pebble, tmp_path / "state", extra=extra) + servers


def _served(https, name, roots):
    try:
        return tls_verified(https, name, roots)
    except Exception:  # noqa: BLE001
        return None


def _cert(https, name, path="/ro"):
    st = https_get(https, name, path).json()
    return next((c for c in st["certificates"] if name in c["identifiers"]), None)


def _post_all(fn, n):
    """n requests at once (released together): their statuses."""
    out, go = [], threading.Event()

    def one():
        go.wait()
        out.append(fn())
    ts = [threading.Thread(target=one) for _ in range(n)]
    for t in ts:
        t.start()
    go.set()
    for t in ts:
        t.join(15)
    return sorted(out)


# -------------------------------------------------------------------- nginx

def test_nginx_renew_opt_in_and_once_per_interval(pebble, nginx_factory, tmp_path):
    one, two = "one.forced.example.org", "two.forced.example.org"
    https = free_port()
    nginx_factory(_nginx_conf(pebble, pebble, tmp_path, https, [one, two]), wait_port=https)
    roots = pebble.roots(0)
    old = wait_for(lambda: _served(https, one, roots), 40, interval=0.2, what="the first certificate")
    wait_for(lambda: _served(https, two, roots), 40, interval=0.2, what="the second certificate")

    # read-only by default, and it says why
    r = https_get(https, one, f"/ro?renew={one}", method="POST")
    assert r.status == 403 and "acme_status renew=on" in r.json()["error"], r.text
    assert https_get(https, one, "/ro").status == 200

    r = https_get(https, one, f"/rw?renew={one}", method="POST")
    assert r.status == 202, r.text
    # again at once, by identifier or store name: 429 for 10 minutes, with the time
    store_name = _cert(https, one)["name"]
    for what in (one, store_name):
        r = https_get(https, one, f"/rw?renew={what}", method="POST")
        assert r.status == 429, r.text
        assert 590 <= _retry_after(r) <= 600, r.headers
        body = r.json()
        assert body["error"] == "this certificate was forced recently"
        assert re.match(ISO_RX, body["retry_after"])
        assert abs(time.mktime(time.strptime(body["retry_after"], "%Y-%m-%dT%H:%M:%SZ"))
                   - time.mktime(time.gmtime(time.time() + 600))) <= 5
    # the accepted one did renew
    wait_for(lambda: (lambda s: s if s and s != old else None)(_served(https, one, roots)), 40,
             interval=0.3, what="the forced renewal")

    # several at once, from both workers: exactly one passes
    got = _post_all(lambda: https_get(https, two, f"/rw?renew={two}", method="POST").status, 8)
    assert got == [202] + [429] * 7, got


def test_nginx_acme_status_parameters(pebble, nginx_factory, tmp_path):
    https = free_port()
    for bad, msg in (("renew_interval=1s", '"acme_status": renew_interval= needs renew=on'),
                     ("renew=maybe", '"acme_status": invalid parameter "renew=maybe"'),
                     ("renew=on renew_interval=0", '"acme_status": invalid value "renew_interval=0"')):
        conf = _nginx_conf(pebble, pebble, tmp_path, https, ["param.forced.example.org"]).replace(
            "acme_status renew=on renew_interval=1s;", f"acme_status {bad};")
        ng = nginx_factory(conf, name=f"nginx-{len(bad)}", start=False)
        ok, out = ng.test_config()
        assert not ok and msg in out, out


@pytest.fixture
def proxy(pebble, tmp_path, test_ca):
    cert, key = test_ca.issue("forced-proxy", ["localhost"], ["127.0.0.1"], basename="forced-proxy")
    px = FaultProxy(pebble, cert, key, free_port(), log_path=tmp_path / "proxy.log")
    px.start()
    try:
        yield px
    finally:
        px.stop()
    assert not px.errors, f"the proxy itself failed: {px.errors}"


def test_nginx_forced_renewal_waits_for_ca_retry_after(pebble, proxy, nginx_factory, tmp_path):
    name = "ratelimited.forced.example.org"
    https = free_port()
    ng = nginx_factory(_nginx_conf(proxy.directory_url, pebble, tmp_path, https, [name],
                                   extra=f"ssl_trusted_certificate {pebble.ca_cert};"),
                       wait_port=https, allowed=[r"acme: "])
    roots = pebble.roots(0)
    old = wait_for(lambda: _served(https, name, roots), 40, interval=0.2, what="the first certificate")
    f = proxy.add_fault("newOrder", times=None,
                        respond=problem(429, "rateLimited", "too many new orders", retry_after=3600))
    t0 = time.time()
    assert https_get(https, name, f"/fast?renew={name}", method="POST").status == 202
    c = wait_for(lambda: (lambda c: c if c and c.get("ca_retry_after") else None)(_cert(https, name)),
                 30, interval=0.3, what="the rate limit in the status")
    assert "rateLimited" in c["last_error"]
    time.sleep(1.2)     # past renew_interval=1s: only the CA's wait is left
    r = https_get(https, name, f"/fast?renew={name}", method="POST")
    assert r.status == 429, r.text
    assert 3590 - (time.time() - t0) <= _retry_after(r) <= 3600, r.headers
    assert r.json() == {"error": "the CA asked to wait (rate limited)", "retry_after": c["ca_retry_after"]}
    assert f.hits == 1
    assert _served(https, name, roots) == old
    assert ng.proc.alive()


def test_nginx_failed_forced_renewal_is_not_retried_at_once(pebble, nginx_factory, tmp_path):
    """Issue #13: a forced renewal whose start fails at once (here the certificate's lock file cannot be
    opened) was retried at once, in a loop; it is one attempt, then the normal back-off."""
    name = "loop.forced.example.org"
    https = free_port()
    ng = nginx_factory(_nginx_conf(pebble, pebble, tmp_path, https, [name]), wait_port=https,
                       allowed=[r"acme: "])
    roots = pebble.roots(0)
    wait_for(lambda: _served(https, name, roots), 40, interval=0.2, what="the first certificate")
    store_name = _cert(https, name)["name"]
    lock = tmp_path / "state" / "locks" / f"cert-{store_name}.lock"
    if lock.exists():
        lock.unlink()
    lock.mkdir()        # open(O_RDWR) fails: EISDIR, also as root
    mark = ng.log_size()
    assert https_get(https, name, f"/fast?renew={name}", method="POST").status == 202
    wait_for(lambda: "cannot open lock file" in ng.log_text(mark), 15, what="the failed attempt")
    time.sleep(3)
    attempts = re.findall(rf'acme: "{re.escape(store_name)}": .*cannot open lock file.*next try at',
                          ng.log_text(mark))
    assert len(attempts) == 1, f"{len(attempts)} attempts"
    c = _cert(https, name)
    assert c["failures"] == 1 and c["state"] == "failing", c


# -------------------------------------------------------------------- Apache

def test_apache_htaccess_cannot_allow_renewals(apache_factory, pebble, procs):
    name = "htaccess.forced.example.org"
    a = apache_factory(pebble, name="apache-htaccess")
    sub = a.dir / "htdocs" / "t"
    sub.mkdir(parents=True, exist_ok=True)
    (sub / ".htaccess").write_text("ACMEStatusRenew on\n")
    a.extra_global = (f'<Directory "{sub}">\n    AllowOverride All\n    SetHandler acme-status\n'
                      "    Require all granted\n</Directory>\n")
    a.vhosts = a.managed_vhosts([name])
    a.start(procs)
    procs.server_logs.allow(r"ACMEStatusRenew not allowed here", a.error_log)
    a.wait_valid(name)
    r = harness.http_request(f"http://{a.address}:{a.http_port}/t/?renew={name}", method="POST", data=b"",
                             headers={"Host": name})
    assert r.status == 500, r
    wait_for(lambda: "ACMEStatusRenew not allowed here" in a.log(), 5, what="the .htaccess error")


def test_apache_per_vhost_and_limits(apache_factory, pebble, procs):
    one, two, three = ("one.apache-forced.example.org", "two.apache-forced.example.org",
                       "three.apache-forced.example.org")
    a = apache_factory(pebble, name="apache-forced")
    main_port = free_port()
    # a location with the default interval (the harness's /acme-status allows one per second), and a
    # port without virtual hosts: the main server's
    a.extra_global = (f"Listen {a.address}:{main_port}\n"
                      "<Location /acme-slow>\n    SetHandler acme-status\n    ACMEStatusRenew on\n"
                      "    Require all granted\n</Location>\n")
    a.vhosts = a.managed_vhosts([one]) + a.managed_vhosts([two]) + a.managed_vhosts([three])
    a.start(procs)
    for n in (one, two, three):
        a.wait_valid(n)

    def names(host=None, port=None):
        r = harness.http_request(f"http://{a.address}:{port or a.http_port}/acme-status",
                                 headers={"Host": host} if host else None)
        assert r.status == 200, r
        return sorted(i for c in r.json()["certificates"] for i in c["identifiers"])

    # a virtual host lists only its own; the main server all
    assert names(one) == [one] and names(two) == [two]
    assert names(port=main_port) == sorted([one, two, three])

    def post(what, host, path="/acme-slow"):
        return harness.http_request(f"http://{a.address}:{a.http_port}{path}?renew={what}", method="POST",
                                    data=b"", headers={"Host": host})

    # another vhost's certificate does not exist here
    assert post(two, one).status == 404
    assert post(two, one, "/acme-status").status == 404
    r = post(two, two)
    assert r.status == 202, r
    r = post(two, two)
    assert r.status == 429, r
    assert 590 <= _retry_after(r) <= 600, r.headers
    body = r.json()
    assert body["error"] == "this certificate was forced recently" and re.match(ISO_RX, body["retry_after"])

    # several at once, across children: exactly one passes
    got = _post_all(lambda: post(three, three).status, 8)
    assert got == [202] + [429] * 7, got


def test_apache_forced_renewal_waits_for_ca_retry_after(apache_factory, pebble, proxy, procs, server_logs):
    """The driver publishes the CA's wait in the shared memory; any child answers 429 with its time."""
    name = "ratelimited.apache-forced.example.org"
    a = apache_factory(pebble, name="apache-ratelimited", ca_url=proxy.directory_url)
    a.allow(rf'ACME0090: acme: "{re.escape(name)}": newOrder: .*rateLimited: too many new orders; next try at')
    a.vhosts = a.managed_vhosts([name])
    a.start(procs)
    a.wait_valid(name)
    f = proxy.add_fault("newOrder", times=None,
                        respond=problem(429, "rateLimited", "too many new orders", retry_after=3600))
    t0 = time.time()
    assert a.renew(name).status == 202
    c = wait_for(lambda: (lambda c: c if c and c.get("ca_retry_after") else None)(a.cert_status(name)),
                 30, interval=0.3, what="the rate limit in the status")
    assert "rateLimited" in c["last_error"]
    time.sleep(1.2)     # past the harness's interval=1s: only the CA's wait is left
    r = harness.http_request(f"http://{a.address}:{a.http_port}/acme-status?renew={name}", method="POST",
                             data=b"", headers={"Host": name})
    assert r.status == 429, r
    assert 3590 - (time.time() - t0) <= _retry_after(r) <= 3600, r.headers
    assert r.json() == {"error": "the CA asked to wait (rate limited)", "retry_after": c["ca_retry_after"]}
    assert f.hits == 1


@pytest.mark.parametrize("value,why", [
    ("maybe", "on or off expected"),
    ("on interval=0", "interval=DURATION expected"),
    ("on every=5m", "interval=DURATION expected"),
    ("off interval=5m", "an interval needs 'on'"),
])
def test_apache_status_renew_values(apache_factory, pebble, value, why):
    a = apache_factory(pebble, name="apache-renew-values")
    a.extra_global = f"<Location /x>\n    SetHandler acme-status\n    ACMEStatusRenew {value}\n</Location>\n"
    a.vhosts = a.managed_vhosts(["values.apache-forced.example.org"])
    cp = a.config_test()
    out = cp.stdout + cp.stderr
    assert cp.returncode != 0 and "ACMEStatusRenew: invalid value" in out and why in out, out
