"""acmectl's ACME Renewal Information (RFC 9773) and profiles (draft-aaron-acme-profiles): what needs a
proxy even beside a current Pebble.

ARI windows, "replaces" (accepted, and refused as alreadyReplaced), profiles reflected in the certificate
and unknown profiles run against a current Pebble's own answers in test_pebble_current.py. What stays
here needs ari_proxy.AriProxy, an HTTPS reverse proxy in front of Debian's Pebble 2.4 that adds
"renewalInfo" and meta.profiles to the directory, answers renewalInfo itself and records every request
(and the decoded newOrder payloads), because no Pebble can do it:
- a directory without renewalInfo or without profiles, switched during a test;
- "replaces" refused with a chosen status and problem type (400 conflict), and the retry's nonce;
- every request and nonce counted, in order (request economy);
- the proxy itself (its renewalInfo ids, RFC 9773's example).
Pebble 2.4 ignores the unknown newOrder fields "profile" and "replaces", so orders carrying them are issued.

This module runs its own Pebble with PEBBLE_WFE_NONCEREJECT=0: Pebble's default
5% badNonce rejections would make request counts (and "exactly two newOrder
requests") flaky.
"""
import json
import re
import subprocess

import pytest

import harness
from ari_proxy import (AriProxy, ari_cert_id, ari_id_from_parts,
                       serial_content_octets, window_from_now)

PROFILES = {"classic": "The profile you know and love",
            "shortlived": "A short-lived certificate (6 days)"}


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------

def _debug_log(node, title, path, off=0):
    """Show this log when the test fails (see pytest_runtest_makereport in conftest.py)."""
    if not hasattr(node, "_e2e_logs"):
        node._e2e_logs = []
    node._e2e_logs.append((title, path, off))


@pytest.fixture(scope="module")
def ari_pebble(tmp_path_factory, test_ca, challtestsrv):
    pb = harness.Pebble(tmp_path_factory.mktemp("pebble-ari"), test_ca,
                        dns_server=challtestsrv.dns_address,
                        env={"PEBBLE_WFE_NONCEREJECT": "0"})
    try:
        pb.start()
        yield pb
    finally:
        pb.stop()


@pytest.fixture(scope="module")
def proxy_cert(test_ca):
    """(cert, key) for 127.0.0.1/localhost from the test CA that Pebble's HTTPS uses too."""
    return test_ca.issue("ari-proxy", ["localhost"], ["127.0.0.1"], basename="ari-proxy")


@pytest.fixture
def pebble_ari(ari_pebble, request):
    if not ari_pebble.alive():
        ari_pebble.start()
    ari_pebble.reset_counters()
    _debug_log(request.node, "pebble (ari)", ari_pebble.log_path, ari_pebble.mark())
    return ari_pebble


@pytest.fixture
def proxy(pebble_ari, proxy_cert, tmp_path, request):
    cert, key = proxy_cert
    log = tmp_path / "ari-proxy.log"
    px = AriProxy(pebble_ari, cert, key, harness.free_port(), log_path=log)
    _debug_log(request.node, "ari-proxy", log)
    px.start()
    try:
        yield px
    finally:
        px.stop()
    assert not px.errors, f"the proxy itself failed: {px.errors}"


class Ctl:
    """acmectl with a state dir, talking to the proxy."""

    def __init__(self, binary, state, proxy):
        self.binary = binary
        self.state = state
        self.proxy = proxy

    def run(self, *cmd, timeout=60):
        pb = self.proxy.pebble
        args = [str(self.binary), "--state", str(self.state), "--ca", self.proxy.directory_url,
                "--ca-cert", str(pb.ca_cert), "--contact", "admin@example.org", "--agree-tos",
                *cmd]
        return harness.run_cmd(args, timeout=timeout)

    def ok(self, *cmd, **kw):
        p = self.run(*cmd, **kw)
        assert p.returncode == 0, f"acmectl {' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
        return p

    @property
    def http(self):
        return ["--http-listen", f"127.0.0.1:{self.proxy.pebble.http_port}"]

    def fullchain(self, name):
        return self.state / "certs" / name / "fullchain.pem"

    def meta(self, name):
        return json.loads((self.state / "certs" / name / "meta.json").read_text())

    def status(self, name):
        st = json.loads(self.ok("status", "--json").stdout)
        return next(c for c in st["certificates"] if c["name"] == name)


@pytest.fixture
def ctl(acmectl_bin, tmp_path, proxy):
    return Ctl(acmectl_bin, tmp_path / "state", proxy)


def serial_of(path):
    return subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-serial"],
                          capture_output=True, text=True, check=True).stdout.strip().split("=")[1]


# --------------------------------------------------------------------------
# the double itself
# --------------------------------------------------------------------------

def test_ari_id_rfc9773_example():
    # RFC 9773 section 4.1 example
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    assert serial_content_octets(0x87654321) == bytes.fromhex("0087654321")
    assert ari_id_from_parts(aki, serial_content_octets(0x87654321)) == \
        "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    assert serial_content_octets(0x7f) == b"\x7f" and serial_content_octets(0x80) == b"\x00\x80"


def test_proxy_directory_and_renewal_info(proxy, ctl):
    """The proxy's directory points only at itself; Pebble accepts JWS signed for proxy
    URLs (it builds and checks URLs from the Host header it receives)."""
    ca = proxy.pebble.ca_cert
    d = harness.http_request(proxy.directory_url, ca_file=ca).json()
    urls = [v for k, v in d.items() if k != "meta"]
    assert urls and all(u.startswith(proxy.base_url + "/") for u in urls), d
    assert d["renewalInfo"] == proxy.renewal_info_url
    assert d["meta"]["profiles"] == PROFILES
    proxy.profiles = None
    proxy.renewal_info = False
    d = harness.http_request(proxy.directory_url, ca_file=ca).json()
    assert "renewalInfo" not in d and "profiles" not in d["meta"]
    proxy.profiles = PROFILES
    proxy.renewal_info = True

    # a whole issuance through the proxy works (every POST's JWS url is a proxy URL)
    ctl.ok("issue", *ctl.http, "direct.example.org")
    assert proxy.pebble.issued_count() == 1
    urls = {o["protected"]["url"] for o in proxy.new_orders}
    assert urls == {proxy.base_url + "/order-plz"}

    # renewalInfo: known certificate -> window + Retry-After; malformed / unknown -> 404 problem
    proxy.window = window_from_now(600, 1200)
    proxy.retry_after = 1234
    cid = ari_cert_id(ctl.fullchain("direct.example.org"))
    r = harness.http_request(f"{proxy.renewal_info_url}/{cid}", ca_file=ca)
    assert r.status == 200 and r.json() == {"suggestedWindow": proxy.window}
    assert r.headers["Retry-After"] == "1234"
    aki = cid.split(".")[0]
    for bad in ["nodot", "a.b.c", "aa.%%%", f"{aki}.AQ", f"{aki}.{cid.split('.')[1]}xx",
                "aYhba4dGQEHhs3uEe6CuLN4ByNQ." + cid.split(".")[1]]:
        r = harness.http_request(f"{proxy.renewal_info_url}/{bad}", ca_file=ca)
        assert r.status == 404, bad
        assert r.headers["Content-Type"] == "application/problem+json"
    assert proxy.ari_requests[0] == cid


# --------------------------------------------------------------------------
# 1. ARI-driven renewal
# --------------------------------------------------------------------------

def test_no_renewal_info_in_directory(ctl, proxy):
    """Without "renewalInfo" in the directory: no ARI request and no "replaces"."""
    name = "noari.example.org"
    ctl.ok("issue", *ctl.http, name)
    proxy.renewal_info = False
    proxy.reset()
    p = ctl.ok("renew", *ctl.http, name)
    assert "not due" in p.stdout and "(lifetime)" in p.stdout, p.stdout
    ctl.ok("renew", "--force", *ctl.http, name)
    assert proxy.count(path="/renewal-info", prefix=True) == 0
    assert len(proxy.new_orders) == 1 and "replaces" not in proxy.new_orders[0]["payload"]


# --------------------------------------------------------------------------
# 2. the CA refuses "replaces"
# --------------------------------------------------------------------------

# alreadyReplaced (409) comes from the real CA: test_pebble_current.py; a 400 conflict only from the proxy
@pytest.mark.parametrize("status,kind", [(400, "conflict")])
def test_replaces_refused_retried_without(ctl, proxy, pebble_ari, status, kind):
    name = f"replaced-{status}.example.org"
    ctl.ok("issue", *ctl.http, name)
    old_id = ari_cert_id(ctl.fullchain(name))
    old_serial = serial_of(ctl.fullchain(name))
    proxy.window = window_from_now(30 * 86400, 31 * 86400)   # not due: --force is what renews
    proxy.reject_replaces = (status, kind)
    proxy.reset()
    p = ctl.ok("renew", "--force", *ctl.http, name)
    assert "issued" in p.stdout
    assert serial_of(ctl.fullchain(name)) != old_serial
    assert pebble_ari.issued_count() == 2

    first, second = proxy.new_orders       # exactly two newOrder requests
    assert first["replaces"] == old_id and first["rejected"]
    assert "replaces" not in second["payload"] and not second["rejected"]
    assert first["payload"]["identifiers"] == second["payload"]["identifiers"]
    # the retry used the nonce of the error response: no extra newNonce request
    assert second["protected"]["nonce"] == first["nonce"]
    assert proxy.count("HEAD", "/nonce-plz") + proxy.count("GET", "/nonce-plz") <= 1
    assert proxy.count("POST", "/order-plz") == 2
    assert re.search(r'refused "replaces".*' + kind, p.stderr), p.stderr


# --------------------------------------------------------------------------
# 3. profiles
# --------------------------------------------------------------------------

def test_profile_without_ca_profiles_warns(ctl, proxy, pebble_ari):
    name = "classic.example.org"
    proxy.profiles = None
    p = ctl.ok("issue", *ctl.http, "--profile", "classic", name)
    (o,) = proxy.new_orders
    assert "profile" not in o["payload"]
    assert "offers no profiles" in p.stderr and '"classic"' in p.stderr, p.stderr
    assert ctl.fullchain(name).exists()


# --------------------------------------------------------------------------
# 4. request economy
# --------------------------------------------------------------------------

def test_request_economy_fresh_issue(ctl, proxy):
    """One issuance from an empty state directory (new account, one identifier, http-01).
    What the CA sees, in order:
      GET  /dir              1   (the directory is read once per run)
      HEAD /nonce-plz        1   (the only newNonce: every later nonce comes from the
                                  Replay-Nonce of the previous answer)
      POST /sign-me-up       1   newAccount
      POST /order-plz        1   newOrder
      POST /authZ/*          1 + polls until valid
      POST /chalZ/*          1   respond to http-01
      POST /my-order/*       >=1 poll until ready/valid
      POST /finalize-order/* 1
      POST /certZ/*          1   download
    and nothing else (no renewalInfo: there is no certificate yet)."""
    name = "economy.example.org"
    ctl.ok("issue", *ctl.http, name)
    s = proxy.summary()
    exact = {"GET /dir": 1, "HEAD /nonce-plz": 1, "POST /sign-me-up": 1, "POST /order-plz": 1,
             "POST /chalZ/*": 1, "POST /finalize-order/*": 1, "POST /certZ/*": 1}
    for k, n in exact.items():
        assert s.get(k) == n, (k, s)
    assert 1 <= s.get("POST /authZ/*", 0) <= 5, s
    assert 1 <= s.get("POST /my-order/*", 0) <= 5, s
    assert set(s) <= set(exact) | {"POST /authZ/*", "POST /my-order/*"}, s
    assert proxy.count("GET", "/nonce-plz") == 0
    # every POST used a distinct nonce that the CA had handed out before
    posts = [r for r in proxy.requests if r.method == "POST"]
    nonces = [r.nonce for r in posts]
    assert None not in nonces and len(set(nonces)) == len(nonces)
    assert set(nonces) <= set(proxy.nonces_given)
    assert all(r.status < 400 for r in proxy.requests), proxy.requests

    # A renewal with the stored account: one directory fetch, one renewalInfo, one newNonce,
    # no account request.
    proxy.reset()
    ctl.ok("renew", *ctl.http, name)      # default window: in the past, renew now
    s = proxy.summary()
    assert s.get("GET /dir") == 1 and s.get("GET /renewal-info/*") == 1, s
    assert s.get("HEAD /nonce-plz") == 1 and "POST /sign-me-up" not in s, s
    assert s.get("POST /order-plz") == 1, s
