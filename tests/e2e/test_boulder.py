"""Let's Encrypt in production (issue #14): Boulder's order flow, which Pebble never shows, played by
boulder_proxy.BoulderProxy in front of Pebble.

- nginx ordering an ECDSA and an RSA certificate for the same names at once, with orders reused
  (Boulder answers the second newOrder with the first, still pending order): both certificates arrive.
- a resumed order still "processing" is waited for, not failed at once (acmectl killed and run again).
- a challenge POSTed again while the CA validates it (409 "already being validated"): the client polls.
- Let's Encrypt's paused account: the unpause URL at the end of a long detail reaches the error log and
  nginx's status whole.
- a newOrder carrying "replaces" that meets a second 5xx is sent once more without it.
"""
import re
import signal
import subprocess
import time

import pytest

import harness
from boulder_proxy import BoulderProxy
from fault_proxy import replace_body
from nginx_harness import cert_issuer, https_get, issuer_block, nginx_factory, tls_cert  # noqa: F401
from test_faults import Ctl, _debug_log


@pytest.fixture(scope="module")
def boulder_pebble(tmp_path_factory, test_ca, challtestsrv):
    pb = harness.Pebble(tmp_path_factory.mktemp("pebble-boulder"), test_ca,
                        dns_server=challtestsrv.dns_address,
                        env={"PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"})
    try:
        pb.start()
        yield pb
    finally:
        pb.stop()


@pytest.fixture
def pebble_b(boulder_pebble, dns, request):
    if not boulder_pebble.alive():
        boulder_pebble.start()
    boulder_pebble.reset_counters()
    _debug_log(request.node, "pebble (boulder)", boulder_pebble.log_path, boulder_pebble.mark())
    return boulder_pebble


@pytest.fixture
def proxy(pebble_b, test_ca, tmp_path, request):
    cert, key = test_ca.issue("boulder-proxy", ["localhost"], ["127.0.0.1"], basename="boulder-proxy")
    log = tmp_path / "boulder-proxy.log"
    _debug_log(request.node, "boulder-proxy", log)
    px = BoulderProxy(pebble_b, cert, key, harness.free_port(), log_path=log)
    px.start()
    try:
        yield px
    finally:
        px.stop()
    assert not px.errors, f"the proxy itself failed: {px.errors}"


@pytest.fixture
def ctl(acmectl_bin, tmp_path, proxy):
    return Ctl(acmectl_bin, tmp_path / "state", proxy)


def _killed_midway(ctl, name, until, what):
    """Run acmectl issue, SIGKILL it once until() holds (the stored order is left to resume)."""
    p = subprocess.Popen(ctl.args("issue", *ctl.http, name), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        harness.wait_for(until, 20, interval=0.05, what=what)
    finally:
        p.send_signal(signal.SIGKILL)
        out, err = p.communicate(timeout=10)
    assert "issued" not in out, out
    assert (ctl.certdir(name) / "order.json").exists()


def _seen(proxy, path_rx):
    return any(re.search(path_rx, r.path) for r in list(proxy.requests))


# -------------------------------------------------------------------- 1. ECDSA + RSA at once

def test_nginx_ecdsa_and_rsa_with_order_reuse(proxy, pebble_b, nginx_factory, tmp_path):
    proxy.reuse_orders = True
    name = "pair.boulder.example.org"
    names = [name, f"www.{name}"]
    https = harness.free_port()
    conf = issuer_block("boulder", proxy.directory_url, tmp_path / "state",
                        extra=f"ssl_trusted_certificate {pebble_b.ca_cert};") + f"""
    server {{
        listen 127.0.0.1:{pebble_b.http_port};
        server_name {' '.join(names)};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {' '.join(names)};
        acme_certificate boulder;
        acme_certificate boulder key=rsa:2048;
        location / {{ return 200 "tls\\n"; }}
        location = /acme {{ acme_status; }}
    }}
"""
    ng = nginx_factory(conf, wait_port=https, allowed=[r"acme: "])

    def both_valid():
        st = https_get(https, name, "/acme").json()
        certs = [c for c in st["certificates"] if name in c["identifiers"]]
        return certs if len(certs) == 2 and all(c["state"] == "valid" for c in certs) else None
    certs = harness.wait_for(both_valid, 50, interval=0.3, what="both the ECDSA and the RSA certificate")
    assert all(c.get("failures", 0) == 0 for c in certs), certs
    assert "refused" not in ng.log_text()
    # one after the other: the second newOrder came after the first finalize, so no order was shared
    assert proxy.reused == 0
    assert len(proxy.new_orders) == 2
    # both served, each from Pebble
    for ciphers in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"):
        der = tls_cert(https, name, ciphers=ciphers, tls12=True)
        assert "Pebble" in cert_issuer(der), ciphers


def test_refused_certificate_orders_anew_at_once(ctl, proxy):
    """The order's certificate is not for our key (Boulder handed the order to another job of the same
    account, which finalized it with its key; played here by serving the previous certificate once):
    refused, the order forgotten and a new one placed in the same run."""
    name = "refused.boulder.example.org"
    old = ctl.issue(name)["fullchain.pem"]
    f = proxy.add_fault("certificate", method="POST", times=1, transform=replace_body(old))
    p = ctl.run("renew", "--force", *ctl.http, name)
    assert p.returncode == 0, f"{p.stdout}\n{p.stderr}"
    assert "issued" in p.stdout
    assert f.hits == 1
    assert re.search(r"refused: .*public key.*placing a new order", p.stderr), p.stderr
    assert len(proxy.new_orders) == 3      # the first issuance, the refused order, the new one
    assert ctl.fullchain(name).read_bytes() != old


# -------------------------------------------------------------------- 5. processing across a restart

def test_resumed_processing_order_is_waited_for(ctl, proxy):
    name = "processing.boulder.example.org"
    proxy.processing_for = 8
    _killed_midway(ctl, name, lambda: _seen(proxy, r"^/finalize-order/"), "the finalize")
    t0 = time.monotonic()
    p = ctl.run("issue", *ctl.http, name)
    assert p.returncode == 0, f"{p.stdout}\n{p.stderr}"
    assert "issued" in p.stdout
    assert re.search(r"resuming order \S+ \(processing\)", p.stderr), p.stderr
    assert "still not done" not in p.stderr
    assert time.monotonic() - t0 < 40
    assert ctl.fullchain(name).exists()


# -------------------------------------------------------------------- 6. challenge already being validated

def test_challenge_already_being_validated(ctl, proxy):
    name = "conflict.boulder.example.org"
    proxy.validating_for = 6
    # hold the first poll of the authorization after the challenge POST, and kill acmectl there
    f = proxy.add_fault("authz", method="POST", nth=2, hold=True)
    _killed_midway(ctl, name, lambda: f.hits >= 1, "the authorization poll")
    proxy.clear_faults()
    p = ctl.run("issue", *ctl.http, name)
    assert p.returncode == 0, f"{p.stdout}\n{p.stderr}"
    assert proxy.conflicts >= 1, "the resumed job did not POST the challenge again"
    assert re.search(r"already being validated.*polling its authorization", p.stderr), p.stderr
    assert ctl.fullchain(name).exists()


# -------------------------------------------------------------------- 7. paused account

UNPAUSE = ("https://portal.letsencrypt.org/sfe/v1/unpause?jwt=eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
           + "eyJhcGlWZXJzaW9uIjoidjEi" * 20 + ".c2lnbmF0dXJlLW9mLXRoZS1wb3J0YWw")


def test_nginx_paused_account_keeps_unpause_url(proxy, pebble_b, nginx_factory, tmp_path):
    proxy.paused = UNPAUSE
    names = [f"name{i:02d}.paused-account.boulder.example.org" for i in range(10)]
    name = names[0]
    https = harness.free_port()
    conf = issuer_block("boulder", proxy.directory_url, tmp_path / "state",
                        extra=f"ssl_trusted_certificate {pebble_b.ca_cert};") + f"""
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {' '.join(names)};
        acme_certificate boulder;
        location = /acme {{ acme_status; }}
    }}
"""
    ng = nginx_factory(conf, wait_port=https, allowed=[r"acme: "])

    def failed():
        st = https_get(https, name, "/acme").json()
        c = next((c for c in st["certificates"] if name in c["identifiers"]), None)
        return c if c and c.get("last_error") else None
    c = harness.wait_for(failed, 30, interval=0.3, what="the paused account's refusal")
    assert "rateLimited" in c["last_error"], c
    assert c["last_error"].endswith(UNPAUSE), c["last_error"]
    line = harness.wait_for(lambda: re.search(r"\[error\].*acme: .*rateLimited.*", ng.log_text()), 10,
                            what="the error in the log").group(0)
    assert UNPAUSE + "; next try at" in line, line


# -------------------------------------------------------------------- 10. replaces and 5xx

def test_replaces_dropped_after_second_5xx(ctl, proxy):
    name = "replaces-5xx.boulder.example.org"
    ctl.ok("issue", *ctl.http, name)
    proxy.reject_replaces = (500, "serverInternal")
    proxy.reset()
    p = ctl.run("renew", "--force", *ctl.http, name)
    assert p.returncode == 0, f"{p.stdout}\n{p.stderr}"
    assert "issued" in p.stdout
    orders = proxy.new_orders
    assert [bool(o["replaces"]) for o in orders] == [True, True, False], orders
    assert orders[0]["rejected"] and orders[1]["rejected"] and not orders[2]["rejected"]
