"""Faults seen from the servers. The CA answers garbage: nginx (2 workers) and Apache with mod_acme talk to
Pebble through fault_proxy.FaultProxy. Each answer is refused with a clear error in the error log and
in the status JSON; nothing bad is stored or served: the fallback certificate (nothing issued yet) or
the old certificate (a forced renewal hit the garbage) keeps being served, and once the CA behaves
again the certificate arrives with no reload.

The same faults against acmectl, with their exact messages, are in test_faults.py. Also: a challenge
failure per identifier in nginx's acme_status, and a Pebble that rejects half the nonces and reuses
every authorization."""

import re
import time

import pytest

import harness
from apache_harness import apache_factory  # noqa: F401  (fixture)
from apache_harness import cert_serial as a_cert_serial, tls_get
from fault_proxy import CertForge, FaultProxy, content_type, forge_leaf, pad, problem, truncate
from nginx_harness import (cert_issuer, cert_serial, force_renewal, https_get, issuer_block,  # noqa: F401
                          managed_servers,
                           nginx_factory, tls_cert)

MiB = 1024 * 1024

# id: (mode, proxy path, fault, regex in last_error)
#   mode "issue": nothing issued yet, the fallback is served; "renew": a certificate exists and a
#   forced renewal meets the garbage
CASES = {
    "truncated-order": ("renew", "order", dict(transform=truncate()), r"order: .*invalid JSON"),
    "huge-certificate": ("renew", "certificate", dict(transform=pad(5 * MiB)),
                         r"larger than 1048576 bytes"),
    "html-newOrder": ("issue", "newOrder", dict(transform=content_type("text/html")),
                      r'newOrder: expected application/json, got "text/html"'),
    "finalize-500": ("issue", "finalize",
                     dict(respond=problem(500, "serverInternal", "the signer is on fire")),
                     r"serverInternal: the signer is on fire"),
    "names-mismatch": ("renew", "certificate", "names",
                       r"refused: .*the certificate does not cover identifier dns:www\."),
    "expired-leaf": ("renew", "certificate", "expired",
                     r"refused: .*the certificate has expired"),
}


@pytest.fixture
def proxy(pebble, tmp_path, test_ca):
    cert, key = test_ca.issue("garbage-proxy", ["localhost"], ["127.0.0.1"], basename="garbage-proxy")
    px = FaultProxy(pebble, cert, key, harness.free_port(), log_path=tmp_path / "proxy.log")
    px.start()
    try:
        yield px
    finally:
        px.stop()
    assert not px.errors, f"the proxy itself failed: {px.errors}"


def _fault(proxy, pebble, tmp_path, case, names):
    mode, path, fault, _ = CASES[case]
    if fault == "names":
        fault = dict(method="POST", transform=forge_leaf(CertForge(pebble, tmp_path / "forge"), dns=names[:1]))
    elif fault == "expired":
        now = time.time()
        fault = dict(method="POST", transform=forge_leaf(CertForge(pebble, tmp_path / "forge"), dns=names,
                                                         not_before=now - 10 * 86400, not_after=now - 86400))
    return proxy.add_fault(path, times=None, **fault)


def _wait_refused(get_status, rx, what):
    def refused():
        c = get_status()
        if c and c.get("last_error") and c.get("failures", 0) >= 1:
            return c
        return None
    c = harness.wait_for(refused, timeout=40, interval=0.3, what=what)
    assert re.search(rx, c["last_error"]), c
    return c


# -------------------------------------------------------------------- nginx

def _nginx_conf(proxy, pebble, tmp_path, https, names):
    return issuer_block("garbage", proxy.directory_url, tmp_path / "state",
                        extra=f"ssl_trusted_certificate {pebble.ca_cert};") + managed_servers(
        pebble.http_port, https, ' '.join(names), cert='garbage',
        locations=['location = /acme { acme_status renew=on renew_interval=1s; }'])


def _pebble_serial(https, name, roots):
    try:
        der = tls_cert(https, name)
    except OSError:
        return None
    return cert_serial(der) if "Pebble" in cert_issuer(der) else None


@pytest.mark.parametrize("case", list(CASES))
def test_nginx_refuses_garbage(case, pebble, proxy, nginx_factory, tmp_path):
    mode, _, _, rx = CASES[case]
    name = f"{case}.nginx.example.org".lower()
    names = [name, f"www.{name}"]
    https = harness.free_port()
    if mode == "issue":
        f = _fault(proxy, pebble, tmp_path, case, names)
    ng = nginx_factory(_nginx_conf(proxy, pebble, tmp_path, https, names), wait_port=https,
                       allowed=[r"acme: "])
    roots = pebble.roots(0)
    old = None
    if mode == "renew":
        old = harness.wait_for(lambda: _pebble_serial(https, name, roots), 40, interval=0.2,
                               what="the first certificate")
        f = _fault(proxy, pebble, tmp_path, case, names)
        assert https_get(https, name, f"/acme?renew={name}", method="POST").status == 202

    def cert_status():
        st = https_get(https, name, "/acme").json()
        return next((c for c in st["certificates"] if name in c["identifiers"]), None)
    c = _wait_refused(cert_status, rx, f"nginx to refuse {case}")
    assert f.hits >= 1
    assert c["state"] in ("failing", "pending"), c
    # the error log says it, naming the certificate, with the next try
    harness.wait_for(lambda: re.search(rf"\[error\].*acme: \"{re.escape(c['name'])}\": .*next try at",
                                       ng.log_text()), 10, what="the error in the log")
    # nothing bad served: the old certificate, or the self-signed fallback
    der = tls_cert(https, name)
    if old is not None:
        assert cert_serial(der) == old
    else:
        assert "Pebble" not in cert_issuer(der)
        assert not (tmp_path / "state" / "certs" / c["name"] / "fullchain.pem").exists()
    assert ng.proc.alive(), "nginx must keep running"

    # the CA behaves again: a (new) certificate arrives with no reload
    proxy.clear_faults()
    assert force_renewal(https, name, name).status == 202
    new = harness.wait_for(lambda: (lambda s: s if s and s != old else None)(
        _pebble_serial(https, name, roots)), 60, interval=0.3, what="the certificate once the CA behaves")
    assert new != old


# -------------------------------------------------------------------- Apache

@pytest.mark.parametrize("case", ["truncated-order", "html-newOrder", "names-mismatch"])
def test_apache_refuses_garbage(case, pebble, proxy, apache_factory, procs, server_logs, tmp_path):  # noqa: F811
    mode, _, _, rx = CASES[case]
    name = f"{case}.apache.example.org".lower()
    names = [name, f"www.{name}"]
    a = apache_factory(pebble, name=f"apache-{case}", ca_url=proxy.directory_url)
    a.allow(rf'ACME0090: acme: "{re.escape(name)}": .*{rx}.*; next try at')    # the refusal under test
    a.vhosts = a.managed_vhosts(names)
    if mode == "issue":
        f = _fault(proxy, pebble, tmp_path, case, names)
    a.start(procs)
    old = None
    if mode == "renew":
        st = a.wait_valid(name)
        old = a_cert_serial(tls_get(a.https_port, name)[2])
        f = _fault(proxy, pebble, tmp_path, case, names)
        assert a.renew(name).status == 202
    c = _wait_refused(lambda: a.cert_status(name), rx, f"Apache to refuse {case}")
    assert f.hits >= 1
    assert "next try at" in a.log() and c["name"] in a.log()
    status, _, der, _ = tls_get(a.https_port, name)
    if old is not None:
        assert status == 200 and a_cert_serial(der) == old
    else:
        assert status == 503, "the fallback certificate answers 503 until the real one exists"
        assert not (a.state / "certs" / c["name"] / "fullchain.pem").exists()
    if mode == "renew":
        assert st["name"] == c["name"]

    proxy.clear_faults()
    assert a.renew(name).status == 202
    harness.wait_for(lambda: (lambda s: s if s[0] == 200 and a_cert_serial(s[2]) != old else None)(
        tls_get(a.https_port, name)), 60, interval=0.3, what="the certificate once the CA behaves")


def test_nginx_challenge_failure_per_identifier(pebble, nginx_factory, tmp_path):
    """http-01 with nothing listening where the validator connects: the challenge's problem reaches
    the log and acme_status, per identifier."""
    name = "chfail.nginx.example.org"
    https = harness.free_port()
    conf = issuer_block("pebble", pebble, tmp_path / "state", challenge="http-01") + f"""
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {name};
        acme_certificate pebble;
        location = /acme {{ acme_status renew=on renew_interval=1s; }}
    }}
"""
    ng = nginx_factory(conf, wait_port=https, allowed=[r"acme: "])

    def failed():
        # before the first snapshot the status lists no certificate yet
        certs = https_get(https, name, "/acme").json()["certificates"]
        return certs[0] if certs and certs[0].get("identifier_errors") else None
    c = harness.wait_for(failed, 40, interval=0.3, what="the identifier's error in acme_status")
    assert [e["identifier"] for e in c["identifier_errors"]] == [f"dns:{name}"], c
    assert re.search(r"connection|refused|connect", c["identifier_errors"][0]["error"]), c
    assert re.search(rf"dns {re.escape(name)}: http-01 failed", c["last_error"]), c
    assert re.search(r"\[error\].*http-01 failed", ng.log_text())


STRESS = {"PEBBLE_WFE_NONCEREJECT": "50", "PEBBLE_AUTHZREUSE": "100"}


def test_nginx_stressed_pebble(pebble_factory, nginx_factory, tmp_path):
    """Half the nonces rejected (badNonce retries) and authorizations reused (orders that are
    ready at once): two certificates for overlapping names, then a forced renewal, all served."""
    pb = pebble_factory(env=STRESS)
    https = harness.free_port()
    names = ["stress.nginx.example.org", "www.stress.nginx.example.org"]
    conf = issuer_block("pebble", pb, tmp_path / "state") + f"""
    server {{
        listen 127.0.0.1:{pb.http_port};
        server_name {' '.join(names)};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {' '.join(names)};
        acme_certificate pebble;
        acme_certificate pebble {names[0]} key=rsa:2048;
        location = /acme {{ acme_status renew=on renew_interval=1s; }}
    }}
"""
    nginx_factory(conf, wait_port=https)

    def all_valid():
        st = https_get(https, names[0], "/acme").json()["certificates"]
        return st if len(st) == 2 and all(c["state"] == "valid" for c in st) else None
    harness.wait_for(all_valid, 60, interval=0.3, what="both certificates")
    before = _pebble_serial(https, names[0], None)
    assert before
    assert https_get(https, names[0], f"/acme?renew={names[1]}", method="POST").status == 202
    harness.wait_for(lambda: (lambda s: s if s and s != before else None)(_pebble_serial(https, names[0], None)),
                     60, interval=0.3, what="the renewed certificate")
    assert pb.issued_count() == 3


def test_apache_stressed_pebble(pebble_factory, apache_factory, procs):  # noqa: F811
    pb = pebble_factory(env=STRESS)
    names = ["stress.apache.example.org", "www.stress.apache.example.org"]
    a = apache_factory(pb, name="apache-stress")
    a.vhosts = a.managed_vhosts(names)
    a.start(procs)
    a.wait_valid(names[0], timeout=60)
    old = a_cert_serial(tls_get(a.https_port, names[0])[2])
    assert a.renew(names[0]).status == 202
    harness.wait_for(lambda: (lambda s: s if s[0] == 200 and a_cert_serial(s[2]) != old else None)(
        tls_get(a.https_port, names[1])), 60, interval=0.3, what="the renewed certificate")
    assert pb.issued_count() == 2
