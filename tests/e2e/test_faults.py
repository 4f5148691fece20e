"""Faults at the core level, through acmectl (issue #6, "Faults").

acmectl talks to fault_proxy.FaultProxy, a reverse proxy in front of Pebble that
breaks chosen answers (truncated or huge bodies, wrong content types, foreign or
forged certificates, problem documents, held or dropped requests).  Every test checks
that acmectl fails with an error naming what was wrong and that nothing bad is stored:
the previous certificate byte-identical, no certificate for a fresh name, no temporary
or half-committed files, every key / certificate / JSON file in the state directory
parses.

The module's Pebble runs with PEBBLE_WFE_NONCEREJECT=0 (request counts are exact) and
PEBBLE_AUTHZREUSE=0 (every order is validated again, so validation faults always bite).
"""
import http.server
import json
import random
import re
import resource
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

import harness
from fault_proxy import (CertForge, FaultProxy, content_type, edit_json, forge_leaf, pad,
                         pem_certs, problem, replace_body, stuck_processing, truncate,
                         with_intermediate)

MiB = 1024 * 1024


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------

def _debug_log(node, title, path, off=0):
    """Show this log when the test fails (see pytest_runtest_makereport in conftest.py)."""
    if not hasattr(node, "_e2e_logs"):
        node._e2e_logs = []
    node._e2e_logs.append((title, path, off))


@pytest.fixture(scope="module")
def fault_pebble(tmp_path_factory, test_ca, challtestsrv):
    pb = harness.Pebble(tmp_path_factory.mktemp("pebble-faults"), test_ca,
                        dns_server=challtestsrv.dns_address,
                        env={"PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"})
    try:
        pb.start()
        yield pb
    finally:
        pb.stop()


@pytest.fixture(scope="module")
def proxy_cert(test_ca):
    """(cert, key) for 127.0.0.1/localhost from the test CA that Pebble's HTTPS uses too."""
    return test_ca.issue("fault-proxy", ["localhost"], ["127.0.0.1"], basename="fault-proxy")


@pytest.fixture
def pebble_f(fault_pebble, dns, request):
    if not fault_pebble.alive():
        fault_pebble.start()
    fault_pebble.reset_counters()
    _debug_log(request.node, "pebble (faults)", fault_pebble.log_path, fault_pebble.mark())
    return fault_pebble


def make_proxy(pebble, proxy_cert, tmp_path, request, name="fault-proxy"):
    cert, key = proxy_cert
    log = tmp_path / f"{name}.log"
    _debug_log(request.node, name, log)
    return FaultProxy(pebble, cert, key, harness.free_port(), log_path=log)


@pytest.fixture
def proxy(pebble_f, proxy_cert, tmp_path, request):
    px = make_proxy(pebble_f, proxy_cert, tmp_path, request)
    px.start()
    try:
        yield px
    finally:
        px.stop()
    assert not px.errors, f"the proxy itself failed: {px.errors}"


class Ctl:
    """acmectl with a state directory, talking to a proxy (or any directory URL)."""

    def __init__(self, binary, state, proxy, pebble=None):
        self.binary = binary
        self.state = Path(state)
        self.proxy = proxy
        self.pebble = pebble or proxy.pebble

    @property
    def ca(self):
        return self.proxy.directory_url

    def args(self, *cmd, ca=None):
        return [str(self.binary), "--state", str(self.state), "--ca", ca or self.ca,
                "--ca-cert", str(self.pebble.ca_cert), "--contact", "admin@example.org",
                "--agree-tos", *map(str, cmd)]

    def run(self, *cmd, ca=None, timeout=60, **kw):
        return harness.run_cmd(self.args(*cmd, ca=ca), timeout=timeout, **kw)

    def ok(self, *cmd, **kw):
        p = self.run(*cmd, **kw)
        assert p.returncode == 0, \
            f"acmectl {' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
        return p

    def fails(self, *cmd, **kw):
        p = self.run(*cmd, **kw)
        assert p.returncode not in (0, 2), \
            f"acmectl {' '.join(map(str, cmd))} should have failed ({p.returncode}):\n" \
            f"{p.stdout}\n{p.stderr}"
        assert "issued" not in p.stdout, p.stdout
        return p

    @property
    def http(self):
        return ["--http-listen", f"127.0.0.1:{self.pebble.http_port}"]

    def certdir(self, name):
        return self.state / "certs" / name

    def fullchain(self, name):
        return self.certdir(name) / "fullchain.pem"

    def meta(self, name):
        return json.loads((self.certdir(name) / "meta.json").read_text())

    def status(self, name):
        st = json.loads(self.ok("status", "--json").stdout)
        return next(c for c in st["certificates"] if c["name"] == name)

    def issue(self, *names, extra=()):
        """Issue a certificate for names (the first one names it); returns its snapshot."""
        self.ok("issue", *self.http, *extra, *names)
        return self.snapshot(names[0])

    def snapshot(self, name):
        d = self.certdir(name)
        return {f: (d / f).read_bytes() for f in ("fullchain.pem", "privkey.pem")}


@pytest.fixture
def ctl(acmectl_bin, tmp_path, proxy):
    return Ctl(acmectl_bin, tmp_path / "state", proxy)


# --------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------

def _openssl_ok(*args, input=None):
    p = subprocess.run(["openssl", *map(str, args)], input=input, capture_output=True)
    return p.returncode == 0, p.stderr.decode(errors="replace")


LEFTOVER_RX = re.compile(r"(\.tmp\.|\.tmp$|\.next$|^\.commit$)")


def state_problems(state, leftovers_ok=False):
    """Every file below `state` is checked: none zero-length (lock files aside, they are
    empty by design), JSON parses, keys parse with `openssl pkey`, every certificate of a
    PEM file parses with `openssl x509`; no temp / .next / journal files unless
    leftovers_ok.  Returns a list of problems (empty: fine)."""
    probs = []
    for p in sorted(Path(state).rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(state)
        if LEFTOVER_RX.search(p.name):
            if not leftovers_ok:
                probs.append(f"{rel}: leftover temporary/commit file")
            continue
        if p.name.endswith(".lock"):
            continue
        data = p.read_bytes()
        if not data:
            probs.append(f"{rel}: zero-length")
            continue
        if p.suffix == ".json":
            try:
                json.loads(data)
            except ValueError as e:
                probs.append(f"{rel}: bad JSON: {e}")
            continue
        if b"PRIVATE KEY-----" in data:
            ok, err = _openssl_ok("pkey", "-noout", "-in", p)
            if not ok:
                probs.append(f"{rel}: openssl pkey: {err.strip()}")
            continue
        if b"-----BEGIN CERTIFICATE-----" in data:
            certs = pem_certs(data)
            if not certs:
                probs.append(f"{rel}: unterminated PEM")
            for i, c in enumerate(certs):
                ok, err = _openssl_ok("x509", "-noout", input=c.encode())
                if not ok:
                    probs.append(f"{rel}: certificate {i}: openssl x509: {err.strip()}")
            rest = re.sub(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", "",
                          data.decode(errors="replace"), flags=re.S)
            if "-----" in rest:
                probs.append(f"{rel}: stray PEM armour outside complete certificates")
            continue
        if p.suffix in (".pem", ".key"):
            probs.append(f"{rel}: neither a key nor a certificate")
        # anything else (challenge key authorizations): non-empty is all we ask
    return probs


def assert_state_clean(state, leftovers_ok=False):
    probs = state_problems(state, leftovers_ok)
    assert not probs, "state directory problems:\n  " + "\n  ".join(probs)


def assert_unchanged(ctl, name, before):
    assert ctl.snapshot(name) == before, f"the stored certificate of {name} changed"
    assert_state_clean(ctl.state)


def assert_nothing_for(ctl, name):
    assert not ctl.fullchain(name).exists(), f"a certificate was stored for {name}"
    assert not (ctl.certdir(name) / "privkey.pem").exists()
    assert_state_clean(ctl.state)


def one_line(stderr, rx):
    """The stderr line matching rx (for messages); fails if none."""
    m = re.search(rx, stderr, re.M)
    assert m, f"no line matching /{rx}/ in stderr:\n{stderr}"
    return m


# --------------------------------------------------------------------------
# the double itself
# --------------------------------------------------------------------------

def test_proxy_passthrough_and_fault_counting(ctl, proxy, pebble_f):
    """Without faults the proxy is transparent; a fault acts on the nth match only."""
    f = proxy.add_fault("authz", method="POST", nth=99)          # never reached
    ctl.issue("plain.example.org")
    assert pebble_f.issued_count() == 1
    assert f.seen >= 1 and f.hits == 0
    assert proxy.count("POST", "/order-plz") == 1
    assert len(proxy.csrs) == 1 and proxy.csrs[0][:1] == b"\x30"  # DER SEQUENCE


def backoff_of(ctl, name):
    """Seconds from now to the stored next_try."""
    m = ctl.meta(name)
    return ts(m["next_try"]) - time.time()


def ts(s):
    return time.mktime(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone


# --------------------------------------------------------------------------
# 1. the CA answers garbage
# --------------------------------------------------------------------------

URL = r"https://127\.0\.0\.1:\d+"
HTML_PAGE = b"<!DOCTYPE html><html><head><title>Login</title></head><body>Please log in</body></html>"

# id: (mode, path, fault, stderr regex, back-off class of a renewal)
#   mode "renew": a stored certificate is renewed (--force); "issue": a fresh name
#   back-off "ca": refused answers wait minutes (300 s +-20 %); "net": seconds
GARBAGE = {
    "truncated-directory": ("renew", "directory", dict(method="GET", transform=truncate()),
                            rf"directory {URL}/dir: .*invalid JSON", "ca"),
    "truncated-newOrder": ("renew", "newOrder", dict(transform=truncate()),
                           r"newOrder: .*invalid JSON", "ca"),
    "truncated-order": ("renew", "order", dict(transform=truncate()),
                        r"order: .*invalid JSON", "ca"),
    "truncated-authz": ("issue", "authz", dict(transform=truncate()),
                        rf"authorization {URL}/authZ/\S+: .*invalid JSON", None),
    "truncated-certificate": ("renew", "certificate", dict(transform=truncate()),
                              rf"certificate from {URL}/certZ/\S+ refused: ", "ca"),
    "huge-directory": ("renew", "directory", dict(method="GET", transform=pad(5 * MiB)),
                       rf"{URL}/dir: .*response body larger than 1048576 bytes", "ca"),
    "huge-newOrder": ("renew", "newOrder", dict(transform=pad(5 * MiB)),
                      rf"newOrder: POST {URL}/order-plz: response body larger than 1048576 bytes",
                      "ca"),
    "huge-authz": ("issue", "authz", dict(transform=pad(5 * MiB)),
                   rf"authorization {URL}/authZ/\S+: POST {URL}/authZ/\S+: "
                   r"response body larger than 1048576 bytes", None),
    "huge-certificate": ("renew", "certificate", dict(transform=pad(5 * MiB)),
                         rf"certificate download: POST {URL}/certZ/\S+: "
                         r"response body larger than 1048576 bytes", "ca"),
    "html-page-directory": ("renew", "directory",
                            dict(method="GET", transform=[content_type("text/html"),
                                                          replace_body(HTML_PAGE)]),
                            rf'{URL}/dir: directory: expected application/json, got "text/html"', "ca"),
    "html-newOrder": ("issue", "newOrder", dict(transform=content_type("text/html")),
                      r'newOrder: expected application/json, got "text/html"', None),
    "html-order": ("renew", "order", dict(transform=content_type("text/html; charset=utf-8")),
                   r'order: expected application/json, got "text/html"', "ca"),
    "html-authz": ("issue", "authz", dict(transform=content_type("text/html")),
                   r'authorization: expected application/json, got "text/html"', None),
    "json-certificate": ("issue", "certificate", dict(transform=content_type("application/json")),
                         rf"certificate {URL}/certZ/\S+: expected application/pem-certificate-chain, "
                         r'got "application/json"', None),
    "cut-transfer-newOrder": ("renew", "newOrder", dict(cut=True),
                              rf"newOrder: POST {URL}/order-plz: transfer closed", "net"),
    "finalize-500": ("issue", "finalize",
                     dict(respond=problem(500, "serverInternal", "the signer is on fire")),
                     rf"finalize: POST {URL}/finalize-order/\S+: serverInternal: "
                     r"the signer is on fire", None),
    "finalize-500-renew": ("renew", "finalize",
                           dict(respond=problem(500, "serverInternal", "the signer is on fire")),
                           rf"finalize: POST {URL}/finalize-order/\S+: serverInternal: "
                           r"the signer is on fire", "net"),
    "json-as-html-directory": ("renew", "directory",
                               dict(method="GET", transform=content_type("text/html")),
                               r'directory.*expected application/json, got "text/html"', "ca"),
}

XFAIL_GARBAGE = {}


@pytest.mark.parametrize("case", [
    pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=XFAIL_GARBAGE[k]))
    if k in XFAIL_GARBAGE else k for k in GARBAGE])
def test_garbage_refused(ctl, proxy, case):
    mode, path, fault, rx, backoff = GARBAGE[case]
    name = f"{case.lower()}.example.org"
    if mode == "renew":
        before = ctl.issue(name)
        proxy.reset()
    f = proxy.add_fault(path, **fault)
    if mode == "renew":
        p = ctl.fails("renew", "--force", *ctl.http, name)
    else:
        p = ctl.fails("issue", *ctl.http, name)
    assert f.hits >= 1, f"the fault was never applied: {f} {proxy.summary()}"
    line = one_line(p.stderr, r"^acmectl: (.*)$").group(1)
    assert re.search(rx, line), f"/{rx}/ not in the error line:\n{p.stderr}"
    if mode == "issue":
        assert_nothing_for(ctl, name)
        return
    assert_unchanged(ctl, name, before)
    st = ctl.status(name)
    assert st["failures"] == 1 and st["state"] == "failing", st
    assert st["last_error"] == line, st
    assert "next attempt not before" in p.stderr
    wait = backoff_of(ctl, name)
    if backoff == "ca":
        assert 300 * 0.8 - 5 <= wait <= 300 * 1.2 + 5, f"refusal back-off {wait:.0f}s"
    else:
        assert 0 < wait <= 5 * 1.2 + 5, f"network-class back-off {wait:.0f}s"


def test_requests_per_issuance(ctl, proxy):
    """The protocol minimum for a new account and one name: directory, newNonce, newAccount,
    newOrder, authorization, challenge, authorization poll(s), finalize, order poll(s) while
    Pebble processes, certificate. Finalize follows the last valid authorization directly (no
    order read in between), and no further nonce is fetched: every response brings one."""
    name = "requests.example.org"
    ctl.issue(name)
    posts = [p for p, _ in proxy.payloads]
    fin = next(i for i, p in enumerate(posts) if p.startswith("/finalize-order/"))
    assert posts[fin - 1].startswith("/authZ/"), posts
    assert proxy.count("HEAD", "/nonce-plz") + proxy.count("GET", "/nonce-plz") == 1, proxy.summary()
    assert proxy.count("GET", "/dir") == 1, proxy.summary()
    assert proxy.count("POST", "/order-plz") == 1 and proxy.count("POST", "/chalZ/", prefix=True) == 1
    assert proxy.count("POST", "/certZ/", prefix=True) == 1


def test_huge_directory_not_called_unreachable(ctl, proxy):
    name = "hugedir.example.org"
    proxy.add_fault("directory", method="GET", transform=pad(5 * MiB))
    p = ctl.fails("issue", *ctl.http, name)
    assert "larger than 1048576 bytes" in p.stderr
    assert "cannot reach the CA" not in p.stderr, p.stderr


# --------------------------------------------------------------------------
# 2. certificates that must not be stored
# --------------------------------------------------------------------------

def test_certforge_sanity(proxy, pebble_f, tmp_path):
    """The forged certificates used below differ from genuine ones only where intended."""
    forge = CertForge(pebble_f, tmp_path / "forge")
    key = tmp_path / "k.pem"
    csr = subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                          "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-subj",
                          "/CN=x", "-outform", "DER"], capture_output=True, check=True).stdout
    now = time.time()
    good = tmp_path / "good.pem"
    good.write_text(forge.leaf_from_csr(csr, dns=["a.example.org"]))
    old = tmp_path / "old.pem"
    old.write_text(forge.leaf_from_csr(csr, dns=["a.example.org"], not_before=now - 10 * 86400,
                                       not_after=now - 86400))
    inter_old = tmp_path / "inter-old.pem"
    inter_old.write_text(forge.expired_intermediate())

    def verify(leaf, inter, *opts):
        return subprocess.run(["openssl", "verify", *opts, "-CAfile", str(forge.root),
                               "-untrusted", str(inter), str(leaf)],
                              capture_output=True, text=True)
    assert verify(good, forge.inter).returncode == 0
    r = verify(old, forge.inter)
    assert r.returncode != 0 and "expired" in r.stdout + r.stderr
    assert verify(old, forge.inter, "-no_check_time").returncode == 0
    # the re-signed intermediate certifies the genuine leaf; only its dates are wrong
    r = verify(good, inter_old)
    assert r.returncode != 0 and "expired" in r.stdout + r.stderr, r
    assert verify(good, inter_old, "-no_check_time").returncode == 0
    pub = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout"], capture_output=True,
                         text=True).stdout
    leaf_pub = subprocess.run(["openssl", "x509", "-in", str(good), "-noout", "-pubkey"],
                              capture_output=True, text=True).stdout
    assert pub == leaf_pub


def _cert_fault(kind, ctl, forge, name):
    now = time.time()
    names = [name, f"www.{name}"]
    if kind == "other-key":
        # a genuine chain from an earlier issuance for the same names, with another key
        return replace_body(ctl.fullchain(name).read_bytes()), "the certificate's public key is not our certificate key"
    if kind == "names":
        return forge_leaf(forge, dns=names[:1]), f"the certificate does not cover identifier dns:{names[1]}"
    if kind == "expired-leaf":
        return (forge_leaf(forge, dns=names, not_before=now - 10 * 86400, not_after=now - 86400),
                r"the certificate has expired \(notAfter was \d+ s ago\)")
    if kind == "not-yet-valid":
        return (forge_leaf(forge, dns=names, not_before=now + 86400, not_after=now + 10 * 86400),
                r"the certificate is not valid yet")
    if kind == "expired-intermediate":
        return with_intermediate(forge.expired_intermediate()), r"expired"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", [
    "other-key", "names", "expired-leaf", "not-yet-valid",
    "expired-intermediate",
])
def test_bad_certificate_refused_then_recovers(ctl, proxy, pebble_f, tmp_path, kind):
    name = f"{kind}.example.org"
    before = ctl.issue(name, f"www.{name}")
    proxy.reset()
    forge = CertForge(pebble_f, tmp_path / "forge")
    transform, rx = _cert_fault(kind, ctl, forge, name)
    # a certificate for another key: the order is given up and a new one placed at once (a CA that
    # reused the order for another job); refused again, the attempt fails
    times = 2 if kind == "other-key" else 1
    f = proxy.add_fault("certificate", method="POST", transform=transform, times=times)
    p = ctl.fails("renew", "--force", *ctl.http, name)
    assert f.hits == times
    line = one_line(p.stderr, r"^acmectl: (.*)$").group(1)
    assert re.search(rf"certificate from {URL}/certZ/\S+ refused: .*{rx}", line), p.stderr
    assert_unchanged(ctl, name, before)
    st = ctl.status(name)
    assert st["failures"] == 1 and st["last_error"] == line
    # the refused order is forgotten: resuming it would download the same certificate again
    assert not (ctl.certdir(name) / "order.json").exists()
    assert not (ctl.certdir(name) / "order.key").exists()

    # the CA behaves again: the next attempt places a new order and succeeds
    proxy.clear_faults()
    new_orders = proxy.add_fault("newOrder", method="POST", times=0)
    ctl.ok("renew", "--force", *ctl.http, name)
    assert new_orders.seen == 1
    after = ctl.snapshot(name)
    assert after["fullchain.pem"] != before["fullchain.pem"]
    assert not (ctl.certdir(name) / "order.json").exists()
    assert_state_clean(ctl.state)
    assert ctl.status(name)["failures"] == 0


def test_failed_order_deactivates_pending_authorizations(ctl, proxy):
    """An order that fails gives its pending authorizations up (RFC 8555 7.5.2): the first
    authorization fails at the CA (its token is changed on the way, so the answer published is
    not the one the CA fetches); the other one, still pending, is deactivated."""
    name = "deactivate.example.org"

    def wrong_token(obj):
        for c in obj.get("challenges", []):
            c["token"] = "A" * 43
    proxy.add_fault("authz", method="POST", nth=1, times=1, transform=edit_json(wrong_token))
    answers = []

    def record(r):
        try:
            answers.append((r.path, r.status, json.loads(r.body)))
        except ValueError:
            answers.append((r.path, r.status, None))
    proxy.add_fault("authz", method="POST", times=None, transform=record)
    p = ctl.fails("issue", *ctl.http, name, f"www.{name}")
    assert "is invalid" in p.stderr or "failed" in p.stderr, p.stderr

    asked = [path for path, pl in proxy.payloads
             if re.search(r"^/authZ/", path) and pl == {"status": "deactivated"}]
    assert len(asked) == 1, proxy.payloads
    done = [a for a in answers if a[0] == asked[0] and a[2] and a[2].get("status") == "deactivated"]
    assert done and done[-1][1] == 200, answers
    assert not (ctl.certdir(name) / "order.json").exists()

    # the next attempt places a new order and succeeds
    proxy.clear_faults()
    new_orders = proxy.add_fault("newOrder", method="POST", times=0)
    ctl.ok("issue", *ctl.http, name, f"www.{name}")
    assert new_orders.seen == 1


def test_order_for_former_identifiers_is_given_up(ctl, proxy):
    """A stored order for identifiers no longer asked for is not left pending at the CA: its
    pending authorizations are deactivated before the new order is placed."""
    name = "former.example.org"
    # the CA fails the challenge requests: the order stays stored with both authorizations pending
    proxy.add_fault("challenge", method="POST", times=None,
                    respond=problem(500, "serverInternal", "not now"))
    ctl.fails("issue", *ctl.http, name, f"www.{name}")
    assert (ctl.certdir(name) / "order.json").exists()
    proxy.clear_faults()
    proxy.reset()

    ctl.ok("issue", *ctl.http, name)
    asked = [path for path, pl in proxy.payloads
             if re.search(r"^/authZ/", path) and pl == {"status": "deactivated"}]
    assert len(asked) == 2, proxy.payloads
    assert proxy.count("POST", "/order-plz") == 1
    assert not (ctl.certdir(name) / "order.json").exists()


# --------------------------------------------------------------------------
# 3. an order stuck in "processing"
# --------------------------------------------------------------------------

def test_order_stuck_processing_gives_up(ctl, proxy):
    name = "stuck.example.org"
    before = ctl.issue(name)
    f = proxy.add_fault(r"^/(my-order|finalize-order)/", method="POST", times=None,
                        transform=[edit_json(stuck_processing), content_type("application/json")])
    t0 = time.monotonic()
    p = ctl.fails("renew", "--force", "--poll-timeout", "3", *ctl.http, name)
    took = time.monotonic() - t0
    assert f.hits >= 2
    assert 3 <= took < 15, f"gave up after {took:.1f}s"
    line = one_line(p.stderr, r"^acmectl: (.*)$").group(1)
    assert re.search(rf"processing: still not done after 3 s, giving up \(order {URL}/my-order/\S+\)", line), p.stderr
    assert_unchanged(ctl, name, before)
    # the order is kept to be resumed: the CA may finish it later
    assert (ctl.certdir(name) / "order.json").exists()
    proxy.clear_faults()
    proxy.reset()
    p = ctl.ok("renew", "--force", *ctl.http, name)
    assert re.search(r"resuming order \S+ \((ready|processing|valid)\)", p.stderr), p.stderr
    assert proxy.count("POST", "/order-plz") == 0, "the stored order should have been resumed"
    assert ctl.snapshot(name) != before
    assert_state_clean(ctl.state)


# --------------------------------------------------------------------------
# 4. rate limits and problem documents
# --------------------------------------------------------------------------

@pytest.mark.parametrize("retry_after", [120, 7200])
def test_rate_limited_new_order(ctl, proxy, retry_after):
    """429 rateLimited + Retry-After: the failure is recorded; the next try waits at least
    an hour (rate limits) and at least Retry-After, plus up to 20 % jitter."""
    name = f"ratelimit{retry_after}.example.org"
    before = ctl.issue(name)
    proxy.reset()
    f = proxy.add_fault("newOrder", respond=problem(429, "rateLimited", "too many new orders recently",
                                                    retry_after=retry_after))
    p = ctl.fails("renew", "--force", *ctl.http, name)
    assert f.hits == 1
    line = one_line(p.stderr, r"^acmectl: (.*)$").group(1)
    assert re.search(rf"newOrder: POST {URL}/order-plz: rateLimited: too many new orders recently",
                     line), p.stderr
    assert f"the CA asks to retry after {retry_after} s" in p.stderr
    assert_unchanged(ctl, name, before)
    floor = max(retry_after, 3600)
    wait = backoff_of(ctl, name)
    assert floor - 5 <= wait <= floor * 1.2 + 5, f"next try in {wait:.0f}s"
    st = ctl.status(name)
    assert st["failures"] == 1 and st["state"] == "failing"
    assert st["renewal_reason"] == "retry" and st["next_renewal"] == ctl.meta(name)["next_try"]
    assert "rateLimited" in st["last_error"]
    # not retried by itself: one newOrder
    assert proxy.count("POST", "/order-plz") == 1


def test_force_overrides_ca_retry_after(ctl, proxy):
    """After rateLimited + Retry-After, a plain renew waits; renew --force overrides the CA's wait and
    says so (the status endpoints of the modules never do)."""
    name = "override.example.org"
    ctl.issue(name)
    proxy.reset()
    f = proxy.add_fault("newOrder", respond=problem(429, "rateLimited", "too many new orders recently",
                                                    retry_after=7200))
    t0 = time.time()
    ctl.fails("renew", "--force", *ctl.http, name)
    until = ctl.meta(name)["ca_wait_until"]
    assert abs(time.mktime(time.strptime(until, "%Y-%m-%dT%H:%M:%SZ"))
               - time.mktime(time.gmtime(t0 + 7200))) <= 5, until
    p = ctl.ok("renew", *ctl.http, name)
    assert "not due until" in p.stdout and "overriding" not in p.stderr
    p = ctl.ok("renew", "--force", *ctl.http, name)
    assert f"acmectl: --force: overriding the CA's Retry-After: it asked not to be asked again before {until}" \
        in p.stderr, p.stderr
    assert f.hits == 1 and proxy.count("POST", "/order-plz") == 2
    assert "ca_wait_until" not in ctl.meta(name)


def test_rejected_identifiers_subproblems(ctl, proxy):
    """A problem document with subproblems (RFC 8555 6.7.1) reaches stderr and status per
    identifier."""
    name = "subproblems.example.org"
    names = [name, f"bad.{name}"]
    before = ctl.issue(*names)
    subs = [{"type": "urn:ietf:params:acme:error:rejectedIdentifier",
             "detail": "this name is on the policy block list",
             "identifier": {"type": "dns", "value": names[1]}},
            {"type": "urn:ietf:params:acme:error:caa",
             "detail": "CAA record forbids issuance",
             "identifier": {"type": "dns", "value": names[0]}}]
    # every newOrder: acmectl orders once with "replaces" and, refused, once without it
    f = proxy.add_fault("newOrder", times=None,
                        respond=problem(400, "rejectedIdentifier", "some identifiers were refused",
                                        subproblems=subs))
    p = ctl.fails("renew", "--force", *ctl.http, name)
    line = one_line(p.stderr, r"^acmectl: (.*)$").group(1)
    assert "rejectedIdentifier" in line and "some identifiers were refused" in line
    for s in subs:
        v = s["identifier"]["value"]
        assert re.search(rf"dns {re.escape(v)}: \S*{s['type'].rsplit(':', 1)[1]}\S*: {s['detail']}",
                         line), line
    assert f.hits == 2, f
    st = ctl.status(name)
    assert st["last_error"] == line and st["failures"] == 1
    assert_unchanged(ctl, name, before)


class _WrongKeyAuthz(http.server.BaseHTTPRequestHandler):
    """Answers every HTTP-01 request with a wrong key authorization."""

    def do_GET(self):
        b = b"not-the-key-authorization"
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def log_message(self, *a):
        pass


# how the CA's validation fails -> what the challenge's problem says
CHALLENGE_FAILURES = {
    "wrong-key-authorization": r"unauthorized: .*did not match.*not-the-key-authorization",
    "connection-refused": r"connection: .*(refused|connect)",
}


@pytest.mark.parametrize("how", list(CHALLENGE_FAILURES))
def test_challenge_failure_problem_reaches_stderr_and_status(ctl, proxy, pebble_f, how):
    """Validation fails: the challenge's problem document, with its detail, reaches stderr and
    status --json last_error, naming the identifier; the certificate is kept and the failed
    order forgotten.  acmectl answers HTTP-01 on another port than Pebble's httpPort, where
    there is either a server with a wrong key authorization, or nothing at all."""
    name = f"chfail-{how}.example.org"
    before = ctl.issue(name, f"www.{name}")
    srv = None
    if how == "wrong-key-authorization":
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", pebble_f.http_port), _WrongKeyAuthz)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
    try:
        p = ctl.fails("renew", "--force", "--http-listen", f"127.0.0.1:{harness.free_port()}", name)
    finally:
        if srv is not None:
            srv.shutdown()
            srv.server_close()
    line = one_line(p.stderr, r"^acmectl: (.*)$").group(1)
    # the first authorization to fail names its identifier (the CA lists them in any order)
    assert re.search(rf"dns (www\.)?{re.escape(name)}: http-01 failed: {CHALLENGE_FAILURES[how]}", line), \
        p.stderr
    assert p.stderr.count(line) == 1, "the error is reported once"
    st = ctl.status(name)
    assert st["last_error"] == line and st["failures"] == 1 and st["state"] == "failing"
    # per identifier: the one whose validation failed, with the CA's problem
    ie = st["identifier_errors"]
    assert ie and all(e["identifier"] in (f"dns:{name}", f"dns:www.{name}") for e in ie), ie
    assert re.search(CHALLENGE_FAILURES[how], ie[0]["error"]), ie
    assert re.search(rf"^acmectl: {re.escape(ie[0]['identifier'])}: ", p.stderr, re.M), p.stderr
    assert 240 - 5 <= backoff_of(ctl, name) <= 360 + 5
    assert_unchanged(ctl, name, before)
    assert not (ctl.certdir(name) / "order.json").exists(), "a failed order must be forgotten"


def test_va_always_invalid(acmectl_bin, ctl, proxy, pebble_factory):
    """The same with a Pebble whose VA refuses everything (PEBBLE_VA_ALWAYS_INVALID, in Pebble
    releases that have it; the Debian 12 Pebble 2.4 has only PEBBLE_VA_ALWAYS_VALID)."""
    if b"PEBBLE_VA_ALWAYS_INVALID" not in Path(harness.PEBBLE_BIN).read_bytes():
        pytest.skip(f"{harness.PEBBLE_BIN} does not know PEBBLE_VA_ALWAYS_INVALID "
                    "(see test_challenge_failure_problem_reaches_stderr_and_status)")
    name = "alwaysinvalid.example.org"
    before = ctl.issue(name)
    bad = pebble_factory(env={"PEBBLE_VA_ALWAYS_INVALID": "1", "PEBBLE_WFE_NONCEREJECT": "0"})
    c = Ctl(acmectl_bin, ctl.state, proxy, pebble=bad)
    p = c.fails("renew", "--force", "--http-listen", f"127.0.0.1:{bad.http_port}", name,
                ca=bad.directory_url)
    line = one_line(p.stderr, r"^acmectl: (.*)$").group(1)
    assert re.search(rf"dns (www\.)?{re.escape(name)}: http-01 failed: \S+: \S", line), p.stderr
    st = ctl.status(name)
    assert st["last_error"] == line and st["failures"] == 1
    assert_unchanged(ctl, name, before)


# --------------------------------------------------------------------------
# 5. the CA unreachable, then back (acmectl run)
# --------------------------------------------------------------------------

def read_status(path):
    try:
        return json.loads(Path(path).read_text())["certificates"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def wait_status(path, pred, timeout, what, proc=None):
    def ok():
        if proc is not None and not proc.alive():
            raise AssertionError(f"acmectl run exited ({proc.returncode}):\n{proc.log_text()}")
        st = read_status(path)
        return st if st and pred(st) else None
    try:
        return harness.wait_for(ok, timeout=timeout, interval=0.1, what=what)
    except harness.HarnessError as e:
        raise AssertionError(f"{e}; last status: {read_status(path)}") from None


def test_ca_unreachable_then_back(acmectl_bin, pebble_f, proxy_cert, tmp_path, request, procs):
    """`acmectl run` starts while the CA's port is closed: the status shows the failure and a
    retry within seconds; once the CA listens, the certificate arrives without a restart."""
    px = make_proxy(pebble_f, proxy_cert, tmp_path, request)      # not started: port closed
    assert not harness.port_open(px.port)
    c = Ctl(acmectl_bin, tmp_path / "state", px)
    status = tmp_path / "status.json"
    name = "unreachable.example.org"
    p = procs.start(c.args("run", *c.http, "--status-file", status, name), name="acmectl-run")
    try:
        st = wait_status(status, lambda s: s["failures"] >= 1, 15, "the first failure", p)
        now = time.time()
        assert st["state"] == "failing" and st["not_after"] is None, st
        assert re.search(rf"{re.escape(px.directory_url)}: cannot reach the CA: .*"
                         r"(Couldn't connect|Connection refused|Failed to connect)",
                         st["last_error"]), st
        assert st["renewal_reason"] == "retry"
        retry_in = ts(st["next_renewal"]) - now
        assert retry_in <= 5 * 1.2 + 2, f"a network error should be retried within seconds: {st}"
        assert re.search(r"cannot reach the CA.*; next try at", p.log_text())
        assert_nothing_for(c, name)

        t0 = time.monotonic()
        px.start()
        st = wait_status(status, lambda s: s["state"] == "valid", 40, "the certificate", p)
        took = time.monotonic() - t0
        assert p.alive(), "acmectl run must keep running"
        assert st["failures"] == 0 and st["last_error"] is None and st["not_after"], st
        assert "updated " + name in p.log_text()
        # the retry back-off doubles per failure from 5 s: a handful of retries at most
        assert took < 40
        assert pebble_f.issued_count() == 1
        assert_state_clean(c.state)
        ok, out = _verify_stored(c, name, pebble_f, tmp_path)
        assert ok, out
    finally:
        p.stop()
        px.stop()
    assert not px.errors, px.errors


def _verify_stored(ctl, name, pebble, tmp_path):
    """The stored chain verifies to Pebble's root and its leaf holds privkey.pem's key."""
    roots = pebble.write_roots(tmp_path / f"roots-{name}.pem", index=0)
    fullchain = ctl.fullchain(name)
    certs = pem_certs(fullchain.read_text())
    inter = tmp_path / f"inter-{name}.pem"
    inter.write_text("".join(certs[1:]))
    v = subprocess.run(["openssl", "verify", "-CAfile", str(roots), "-untrusted", str(inter),
                        str(fullchain)], capture_output=True, text=True)
    if v.returncode != 0:
        return False, v.stdout + v.stderr
    pub_cert = subprocess.run(["openssl", "x509", "-in", str(fullchain), "-noout", "-pubkey"],
                              capture_output=True, text=True).stdout
    pub_key = subprocess.run(["openssl", "pkey", "-in", str(ctl.certdir(name) / "privkey.pem"),
                              "-pubout"], capture_output=True, text=True).stdout
    if pub_cert != pub_key:
        return False, "privkey.pem does not match the certificate"
    san = subprocess.run(["openssl", "x509", "-in", str(fullchain), "-noout", "-ext",
                          "subjectAltName"], capture_output=True, text=True).stdout
    if f"DNS:{name}" not in san:
        return False, f"{name} not in {san}"
    return True, ""


# --------------------------------------------------------------------------
# 6. SIGKILL in the middle of an issuance
# --------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["finalize-lost", "finalize-done", "download"])
def test_sigkill_mid_issuance_resumes_order(ctl, proxy, pebble_f, procs, tmp_path, where):
    """acmectl run is SIGKILLed while a request is held at the proxy:
      finalize-lost  the finalize never reaches the CA (order still "ready" on restart)
      finalize-done  the finalize reaches the CA after the kill (order "valid" on restart)
      download       the certificate download is held (order "valid" on restart)
    The state directory parses at the moment of the kill; the restart resumes the stored
    order: one newOrder across both runs, and the certificate is stored."""
    name = f"kill-{where}.example.org"
    status = tmp_path / "status.json"
    path = "certificate" if where == "download" else "finalize"
    f = proxy.add_fault(path, method="POST", hold=True, drop=(where == "finalize-lost"))
    args = ctl.args("run", *ctl.http, "--status-file", status, name)
    p1 = procs.start(args, name="acmectl-run1")
    f.wait_hit(20)
    order_key = ctl.certdir(name) / "order.key"
    assert (ctl.certdir(name) / "order.json").exists() and order_key.exists()
    p1.kill()
    assert p1.returncode == -signal.SIGKILL

    # at the kill: everything on disk parses, nothing is zero-length or half-written
    assert_state_clean(ctl.state)
    assert not ctl.fullchain(name).exists()
    key_pub = subprocess.run(["openssl", "pkey", "-in", str(order_key), "-pubout"],
                             capture_output=True, text=True, check=True).stdout

    # the held request goes on (forwarded, or dropped) before the restart
    f.release()
    harness.wait_for(lambda: proxy.count("POST", PATH_PREFIX[path], prefix=True) >= 1, timeout=10,
                     what="the held request to finish")
    p2 = procs.start(args, name="acmectl-run2")
    wait_status(status, lambda s: s["state"] == "valid", 30, "the certificate", p2)
    log2 = p2.log_text()
    p2.stop()
    assert re.search(rf'"{re.escape(name)}": resuming order {URL}/my-order/\S+ \((ready|valid|processing)\)',
                     log2), log2
    assert proxy.count("POST", "/order-plz") == 1, proxy.summary()
    assert pebble_f.order_count() == 1 and pebble_f.issued_count() == 1
    ok, out = _verify_stored(ctl, name, pebble_f, tmp_path)
    assert ok, out
    cert_pub = subprocess.run(["openssl", "x509", "-in", str(ctl.fullchain(name)), "-noout",
                               "-pubkey"], capture_output=True, text=True).stdout
    assert cert_pub == key_pub, "the resumed order must use the stored order key"
    assert not (ctl.certdir(name) / "order.json").exists()
    assert_state_clean(ctl.state)


PATH_PREFIX = {"finalize": "/finalize-order/", "certificate": "/certZ/"}


def test_sigkill_at_random_moments(ctl, proxy):
    """acmectl renew is SIGKILLed at 20 random moments (from the directory fetch to the commit of
    the new certificate). After every kill everything on disk parses: no zero-length or
    half-written key, certificate or JSON (temporary files may be left; they are never read as
    records). The stored certificate is always a whole one: the old or a new one. A last run
    completes the job and cleans up."""
    name = "randomkill.example.org"
    ctl.issue(name)
    rng = random.Random(8555)
    stored = set()
    for i in range(20):
        p = subprocess.Popen(ctl.args("renew", "--force", *ctl.http, name), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, 0.6))
        p.kill()
        p.wait()
        probs = state_problems(ctl.state, leftovers_ok=True)
        assert not probs, f"after kill {i}:\n  " + "\n  ".join(probs)
        # killed between the renames of a commit: the files on disk may be half old, half new until the
        # next opening of the store rolls the journal forward (a reader only sees the store after that)
        if any(Path(ctl.state).rglob(".commit")):
            ctl.ok("list")
            assert not any(Path(ctl.state).rglob(".commit")), f"after kill {i}: the journal was not rolled forward"
        ok, out = _verify_stored(ctl, name, proxy.pebble, ctl.state.parent)
        assert ok, f"after kill {i}: {out}"
        stored.add(ctl.fullchain(name).read_bytes())
    # some kills came after the commit: the moments really spread over the whole renewal
    assert len(stored) >= 2, "no kill landed after a completed renewal; widen the delays"
    ctl.ok("renew", "--force", *ctl.http, name)
    assert_state_clean(ctl.state)
    ok, out = _verify_stored(ctl, name, proxy.pebble, ctl.state.parent)
    assert ok, out


# --------------------------------------------------------------------------
# 7. a read-only state directory
# --------------------------------------------------------------------------

def _probe_write(d):
    probe = Path(d) / ".write-probe"
    try:
        probe.write_text("x")
    except OSError:
        return False
    probe.unlink()
    return True


def _bind_ro_prefix(d):
    """A command prefix running the command with `d` bind-mounted read-only in a private mount
    namespace, or None (with the reason) if that does not work here."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return None, "unshare/mount not installed"
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(d)]
    p = subprocess.run(prefix + ["sh", "-c", ': > "$0/.write-probe"', str(d)], capture_output=True,
                       text=True)
    if (Path(d) / ".write-probe").exists():
        (Path(d) / ".write-probe").unlink()
        return None, "the read-only bind mount does not stop writes"
    if p.returncode == 0 or "Read-only file system" not in p.stderr:
        return None, f"unshare -m / mount --bind -o ro failed: {p.stderr.strip()}"
    return prefix, None


class ReadOnly:
    """Makes a directory read-only for acmectl: "mode" (chmod 0500: useless for root),
    "immutable" (chattr +i) or "bind-ro" (read-only bind mount in a private mount namespace;
    acmectl runs inside it: use .prefix).  skip() with the reason when the way does not work."""

    def __init__(self, how, d):
        self.how = how
        self.d = Path(d)
        self.prefix = []
        self._mode = None

    def __enter__(self):
        d = self.d
        if self.how == "mode":
            self._mode = d.stat().st_mode & 0o7777
            d.chmod(0o500)
            if _probe_write(d):
                d.chmod(self._mode)
                pytest.skip("chmod 0500 does not stop writes here (running as root)")
        elif self.how == "immutable":
            if shutil.which("chattr") is None:
                pytest.skip("chattr is not installed")
            p = subprocess.run(["chattr", "+i", str(d)], capture_output=True, text=True)
            if p.returncode != 0:
                pytest.skip(f"chattr +i failed here: {p.stderr.strip()}")
            if _probe_write(d):
                subprocess.run(["chattr", "-i", str(d)])
                pytest.skip("chattr +i does not stop writes here")
        elif self.how == "bind-ro":
            prefix, why = _bind_ro_prefix(d)
            if prefix is None:
                pytest.skip(why)
            self.prefix = prefix
        return self

    def __exit__(self, *exc):
        if self.how == "mode" and self._mode is not None:
            self.d.chmod(self._mode)
        elif self.how == "immutable":
            subprocess.run(["chattr", "-i", str(self.d)], capture_output=True)


@pytest.mark.parametrize("how", ["mode", "immutable", "bind-ro"])
def test_read_only_cert_dir(ctl, proxy, how):
    name = f"readonly-{how}.example.org"
    before = ctl.issue(name)
    meta_before = (ctl.certdir(name) / "meta.json").read_bytes()
    with ReadOnly(how, ctl.certdir(name)) as ro:
        p = harness.run_cmd(ro.prefix + ctl.args("renew", "--force", *ctl.http, name), timeout=60)
        assert p.returncode not in (0, 2), p.stdout + p.stderr
        assert "issued" not in p.stdout
        assert ctl.snapshot(name) == before
        assert (ctl.certdir(name) / "meta.json").read_bytes() == meta_before
    line = one_line(p.stderr, r"^acmectl: (.*)$").group(1)
    assert re.search(rf"{re.escape(str(ctl.certdir(name)))}/\S+: "
                     r"(Operation not permitted|Read-only file system|Permission denied)", line), p.stderr
    assert re.search(r"cannot (create|write|rename|open)", line), line
    assert p.stderr.count(line) == 1, "the error is reported once"
    assert_unchanged(ctl, name, before)
    # writable again: the renewal goes through
    ctl.ok("renew", "--force", *ctl.http, name)
    assert ctl.snapshot(name) != before
    assert_state_clean(ctl.state)


# --------------------------------------------------------------------------
# 8. the disk is full
# --------------------------------------------------------------------------

def _fsize_limit(ctl, name):
    """A file size limit letting the small files of a renewal through (order, key, meta,
    journal) but not the new fullchain.pem."""
    d = ctl.certdir(name)
    small = max((d / f).stat().st_size for f in ("meta.json", "privkey.pem"))
    limit = max(small + 256, 1024)
    assert limit < (d / "fullchain.pem").stat().st_size, "the chain is too small for this test"
    return limit


def _run_limited(args, limit, ignore_sigxfsz):
    def pre():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        if ignore_sigxfsz:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # restore_signals (the default) puts SIGXFSZ back to SIG_DFL before pre() runs
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60,
                          preexec_fn=pre, env=harness.child_env(), start_new_session=True)


def test_disk_full_file_size_limit(ctl, proxy):
    """RLIMIT_FSIZE with SIGXFSZ ignored: the write of the new chain fails with EFBIG; the
    commit is undone, the old certificate is intact, nothing is left over."""
    name = "fsize.example.org"
    before = ctl.issue(name)
    limit = _fsize_limit(ctl, name)
    p = _run_limited(ctl.args("renew", "--force", *ctl.http, name), limit, ignore_sigxfsz=True)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    line = one_line(p.stderr, r"^acmectl: (.*)$").group(1)
    assert re.search(rf'storing the certificate: saving certificate "{re.escape(name)}": '
                     rf"cannot write {re.escape(str(ctl.certdir(name)))}/fullchain\.pem\S*: "
                     r"File too large", line), p.stderr
    assert p.stderr.count("File too large") == 1, "the error is reported once"
    assert_unchanged(ctl, name, before)
    st = ctl.status(name)
    assert st["failures"] == 1 and "File too large" in st["last_error"]


def test_disk_full_sigxfsz_is_an_error_not_a_crash(ctl, proxy):
    name = "sigxfsz2.example.org"
    ctl.issue(name)
    limit = _fsize_limit(ctl, name)
    p = _run_limited(ctl.args("renew", "--force", *ctl.http, name), limit, ignore_sigxfsz=False)
    assert p.returncode == 1, f"acmectl died with {p.returncode}"
    assert "File too large" in p.stderr


TMPFS_SCRIPT = r'''
set -e
state="$1"; src="$2"; out="$3"; free_pages="$4"; shift 4
mount -t tmpfs -o size=16m,mode=0700 tmpfs "$state"
cp -a "$src"/. "$state"/
used=$(df -k --output=used "$state" | tail -n 1 | tr -d ' ')
mount -o remount,size=$(( used + free_pages * 4 ))k "$state"
echo "tmpfs: ${used}k used, $(df -k --output=avail "$state" | tail -n 1 | tr -d ' ')k free" >&2
set +e
"$@"
rc=$?
cp -a "$state"/. "$out"/
exit $rc
'''


def _tmpfs_works(tmp_path):
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    d = tmp_path / "tmpfs-probe"
    d.mkdir()
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        'mount -t tmpfs -o size=64k tmpfs "$0" && head -c 200000 /dev/zero > "$0/f"',
                        str(d)], capture_output=True, text=True)
    if "No space left on device" not in p.stderr:
        return f"cannot mount a small tmpfs in a private mount namespace: {p.stderr.strip()}"
    return None


@pytest.mark.parametrize("free_pages", [0, 1, 3])
def test_disk_full_tmpfs(ctl, proxy, tmp_path, free_pages):
    """The state directory on a full tmpfs (ENOSPC), with 0, 1 or 3 free pages: the renewal
    fails wherever it runs out of space, with a store error naming the file; the old
    certificate is intact and nothing is truncated or left over.  acmectl runs in a private
    mount namespace; the state is copied out of the tmpfs afterwards for the checks."""
    why = _tmpfs_works(tmp_path)
    if why:
        pytest.skip(why)
    name = f"enospc{free_pages}.example.org"
    before = ctl.issue(name)
    src, out = tmp_path / "state-src", tmp_path / "state-out"
    shutil.copytree(ctl.state, src, symlinks=True)
    out.mkdir()
    cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", TMPFS_SCRIPT, "sh",
           str(ctl.state), str(src), str(out), str(free_pages)] + \
        ctl.args("renew", "--force", *ctl.http, name)
    p = harness.run_cmd(cmd, timeout=60)
    assert "tmpfs:" in p.stderr, p.stderr
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    line = one_line(p.stderr, r"^acmectl: (.*)$").group(1)
    assert re.search(rf"{re.escape(str(ctl.state))}/\S+: No space left on device", line), p.stderr
    assert re.search(r"cannot (create|write)", line), line
    assert p.stderr.count(line) == 1, "the error is reported once"
    # the failure is recorded for the scheduler, or, on a disk too full for that, the log says so
    assert "next attempt not before" in p.stderr or re.search(
        rf"cannot record the failure of \"{re.escape(name)}\" in the store: .*No space left on device",
        p.stderr), p.stderr
    after = Ctl(ctl.binary, out, ctl.proxy)
    assert after.snapshot(name) == before, "the old certificate changed on the full disk"
    assert_state_clean(out)


# --------------------------------------------------------------------------
# requests per issuance: the protocol minimum
# --------------------------------------------------------------------------

def _kinds(proxy):
    """The proxy's requests as (METHOD, PATHS name) in order."""
    from fault_proxy import PATHS
    out = []
    with proxy._lock:
        reqs = list(proxy.requests)
    for r in reqs:
        name = next((k for k, rx in PATHS.items() if re.search(rx, r.path)), r.path)
        out.append((r.method, name))
    return out


def test_requests_per_issuance_minimum(ctl, proxy):
    """A fresh issuance for two names: no order poll before finalize (the order is known ready once the
    last authorization is valid), one request of each kind besides the few authorization and order polls
    the CA's pace needs."""
    name = "count.example.org"
    ctl.issue(name, f"www.{name}")
    kinds = _kinds(proxy)
    n = lambda m, k: kinds.count((m, k))      # noqa: E731
    fin = kinds.index(("POST", "finalize"))
    assert ("POST", "order") not in kinds[:fin], kinds
    assert n("POST", "newAccount") == 1 and n("POST", "newOrder") == 1, kinds
    assert n("POST", "challenge") == 2 and n("POST", "finalize") == 1, kinds
    assert n("POST", "certificate") == 1, kinds
    # each authorization: one fetch, then polls at 60, 120, 240 ms ... while Pebble validates
    assert 4 <= n("POST", "authz") <= 10, kinds
    assert n("POST", "order") <= 3, kinds
    # renewal with the same account: no newAccount, one newNonce at most
    proxy.reset()
    ctl.ok("renew", "--force", *ctl.http, name)
    kinds = _kinds(proxy)
    assert ("POST", "newAccount") not in kinds and n("HEAD", "newNonce") + n("GET", "newNonce") <= 1, kinds
    fin = kinds.index(("POST", "finalize"))
    assert ("POST", "order") not in kinds[:fin], kinds


def test_finalize_order_not_ready_polls_then_finalizes(ctl, proxy):
    """A CA that has not caught up with the last authorization answers orderNotReady: the order is polled
    until ready, then finalized once more."""
    name = "notready.example.org"
    f = proxy.add_fault("finalize", method="POST",
                        respond=problem(403, "orderNotReady", "the order is not ready yet"))
    p = ctl.ok("issue", *ctl.http, name)
    assert f.hits == 1
    kinds = _kinds(proxy)
    fins = [i for i, k in enumerate(kinds) if k == ("POST", "finalize")]
    assert len(fins) == 2, kinds
    assert ("POST", "order") in kinds[fins[0]:fins[1]], kinds
    assert "issued" in p.stdout


def test_orphan_lost_new_order_answer_is_found_in_the_account_orders(ctl, proxy):
    """newOrder reaches the CA but its answer is lost (as in a crash before the order URL is stored): the
    next run finds the order in the account's "orders" list (RFC 8555 7.1.2.1, Pebble lists them) and
    resumes it instead of leaving it orphaned and placing another."""
    name = "orphan.example.org"
    ctl.issue("first-orphan.example.org")          # the account exists
    f = proxy.add_fault("newOrder", method="POST", cut=True, times=None)
    p = ctl.fails("issue", *ctl.http, name)
    assert f.hits >= 1
    order = json.loads((ctl.certdir(name) / "order.json").read_text())
    assert order.get("intent") is True and "url" not in order, order
    assert (ctl.certdir(name) / "order.key").exists()
    proxy.clear_faults()
    proxy.reset()
    p = ctl.ok("issue", *ctl.http, name)
    assert "found in the account's orders" in p.stderr, p.stderr
    assert proxy.count("POST", "/order-plz") == 0, proxy.summary()
    assert not (ctl.certdir(name) / "order.json").exists()
    # the key recorded with the intent is the certificate's key
    out = subprocess.run(["openssl", "x509", "-noout", "-pubkey", "-in", str(ctl.fullchain(name))],
                         capture_output=True, text=True).stdout
    key = subprocess.run(["openssl", "pkey", "-pubout", "-in", str(ctl.certdir(name) / "privkey.pem")],
                         capture_output=True, text=True).stdout
    assert out and out == key


def test_orphan_intent_without_a_listed_order_orders_anew(ctl, proxy):
    """An intent whose newOrder never reached the CA: nothing in the list matches, one new order."""
    name = "intent-only.example.org"
    ctl.issue("first-intent.example.org")
    f = proxy.add_fault("newOrder", method="POST", drop=True, times=None)
    ctl.fails("issue", *ctl.http, name)
    assert f.hits >= 1
    assert json.loads((ctl.certdir(name) / "order.json").read_text()).get("intent") is True
    proxy.clear_faults()
    proxy.reset()
    ctl.ok("issue", *ctl.http, name)
    # the account object and its list were asked, then one new order placed
    assert proxy.count("POST", "/order-plz") == 1, proxy.summary()
    assert any(k.startswith("POST /list-orderz/") for k in proxy.summary()), proxy.summary()
