"""mod_acme: dns-01 through RFC 2136 updates to Knot (Pebble validating through it), wildcard
certificates served without a reload, a forced renewal, a refused TSIG key, apache2 -t refusals."""

import time

import pytest

import harness
import knot_harness
from apache_harness import apache_factory  # noqa: F401  (fixture)
from apache_harness import _x509, cert_serial, cert_subject, http_get, stored_serial, tls_get
from test_dns import ZONES, knot_pair  # noqa: F401  (fixture)

WRONG_SECRET_KEY = ('key "acme-key-sha256" { algorithm hmac-sha256; '
                    'secret "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; };\n')


@pytest.fixture
def knot(tmp_path):
    why = knot_harness.available()
    if why:
        pytest.skip(why)
    k = knot_harness.Knot(tmp_path / "knot", ZONES)
    k.start()
    yield k
    k.stop()


def dns_global(a, knot, key="acme-key-sha256", challenge="http-01 dns-01"):
    """Server-wide DNS settings (inherited by every virtual host); the key file in Apache's directory."""
    keyfile = a.dir / "tsig.key"
    knot.key_file(key, keyfile)
    return (f"ACMEChallenge {challenge}\nACMEDNSUpdate rfc2136\nACMEDNSTSIGKey {keyfile}\n"
            f"ACMEDNSResolver {knot.address}\nACMEDNSPropagationTimeout 20s\n")


def vhost_pair(a, server_name, aliases="", cert="on"):
    alias = f"    ServerAlias {aliases}\n" if aliases else ""
    return (f"<VirtualHost {a.address}:{a.http_port}>\n    ServerName {server_name}\n{alias}</VirtualHost>\n"
            f"<VirtualHost {a.address}:{a.https_port}>\n    ServerName {server_name}\n{alias}"
            f"    SSLEngine on\n    ACMECertificate {cert}\n</VirtualHost>\n")


def served(a, sni):
    status, body, der, _ = tls_get(a.https_port, sni, host=a.address)
    assert status == 200, body
    return der


def sans(der):
    return _x509(der, "-noout", "-ext", "subjectAltName")


def cert_of(a, host, pred):
    st = a.status(host)
    return next((c for c in st["certificates"] if pred(c)), None)


def wait_valid_name(a, host, store_name, timeout=90):
    def ok():
        st = a.status(host)
        if not st.get("driver_pid"):
            return None
        c = next((c for c in st["certificates"] if c["name"] == store_name), None)
        return c if c and c["state"] == "valid" else None
    return harness.wait_for(ok, timeout=timeout, interval=0.3, what=f"{store_name} to be valid")


def test_wildcard_and_apex_served(apache_factory, pebble_factory, knot, procs):
    pebble = pebble_factory(dns_server=knot.dns_address)
    a = apache_factory(pebble)
    a.acme_global = dns_global(a, knot)
    # the exact name first: Apache picks the first virtual host whose names match the SNI
    a.vhosts = vhost_pair(a, "www.example.test") + vhost_pair(a, "example.test", "*.example.test")
    a.start(procs)
    wait_valid_name(a, "example.test", "example.test")
    wait_valid_name(a, "www.example.test", "www.example.test")
    # no reload: this generation's children serve what the driver stored
    wild = served(a, "a.example.test")
    text = sans(wild)
    assert "DNS:*.example.test" in text and "DNS:example.test" in text, text
    assert cert_serial(wild) == stored_serial(a.state, "example.test")
    assert served(a, "example.test") == wild
    # the exact name has its own certificate beside the wildcard
    www = served(a, "www.example.test")
    assert "DNS:*.example.test" not in sans(www) and "www.example.test" in cert_subject(www) + sans(www)
    log = a.log()
    assert "answering dns-01 for *.example.test (rfc2136)" in log, log
    assert "answering http-01 for example.test" in log, log
    assert "resuming normal operations" in log and log.count("resuming normal operations") == 1
    assert knot.txt("_acme-challenge.example.test") == []
    for secret in knot.secrets():
        assert secret not in log
        assert secret not in harness.http_request(f"http://127.0.0.1:{a.http_port}/acme-status").text


def _force_renewal(a, host, name):
    r = harness.http_request(f"http://{a.address}:{a.http_port}/acme-status?renew={name}", method="POST",
                             data=b"", timeout=5, headers={"Host": host})
    assert r.status in (200, 202), r
    return r


def test_forced_renewal_served_without_reload(apache_factory, pebble_factory, knot, procs):
    # new authorizations for the renewal (Pebble still reuses one in a hundred)
    pebble = pebble_factory(dns_server=knot.dns_address, env={"PEBBLE_AUTHZREUSE": "0"})
    a = apache_factory(pebble)
    a.acme_global = dns_global(a, knot, challenge="dns-01")
    a.vhosts = vhost_pair(a, "example.test", "*.example.test", cert="*.example.test example.test")
    a.start(procs)
    wait_valid_name(a, "example.test", "_wildcard.example.test")
    first = served(a, "b.example.test")
    assert cert_serial(first) == stored_serial(a.state, "_wildcard.example.test")
    _force_renewal(a, "example.test", "_wildcard.example.test")
    harness.wait_for(lambda: stored_serial(a.state, "_wildcard.example.test") != cert_serial(first), 90,
                     interval=0.3, what="the renewed certificate")
    new = stored_serial(a.state, "_wildcard.example.test")
    # (a handshake while another thread of its process reloads may still get the old one)
    for sni in ("b.example.test", "example.test"):
        harness.wait_for(lambda: cert_serial(served(a, sni)) == new, 15, interval=0.3,
                         what=f"the renewed certificate served for {sni}")
    log = a.log()
    # both identifiers through dns-01 (no http-01 in ACMEChallenge), for both orders
    assert log.count("answering dns-01 for *.example.test (rfc2136)") == 2, log
    assert log.count("answering dns-01 for example.test (rfc2136)") == 2, log
    assert "answering http-01" not in log
    assert log.count("resuming normal operations") == 1


def test_refused_key_keeps_certificate(apache_factory, pebble_factory, knot, procs):
    pebble = pebble_factory(dns_server=knot.dns_address, env={"PEBBLE_AUTHZREUSE": "0"})
    a = apache_factory(pebble)
    a.acme_global = dns_global(a, knot)
    a.vhosts = vhost_pair(a, "example.test", "*.example.test")
    a.start(procs)
    wait_valid_name(a, "example.test", "example.test")
    old = cert_serial(served(a, "c.example.test"))
    # the key Knot now refuses, read at the graceful restart
    (a.dir / "tsig.key").write_text(WRONG_SECRET_KEY)
    a.allow(r"ACME0090: acme: .*next try at")
    a.graceful()
    harness.wait_for(lambda: cert_of(a, "example.test", lambda c: c["name"] == "example.test"
                                     and c["state"] == "valid") and a.status("example.test").get("driver_pid"),
                     30, interval=0.3, what="the new generation's driver")
    _force_renewal(a, "example.test", "example.test")
    harness.wait_for(lambda: "next try at" in a.log(), 60, interval=0.3, what="the failure")
    line = next(l for l in a.log().splitlines() if "next try at" in l)
    assert "*.example.test" in line and "dns-01 (rfc2136)" in line, line
    assert "DNS update (add _acme-challenge.example.test.)" in line, line
    assert 'TSIG key "acme-key-sha256": NOTAUTH' in line, line
    assert "AAECAwQF" not in a.log()
    # the status follows the log line
    c = harness.wait_for(lambda: cert_of(a, "example.test", lambda c: c["name"] == "example.test"
                                         and c["failures"] >= 1), 10, interval=0.2, what="the failure's status")
    assert "dns-01 (rfc2136) for *.example.test" in (c["last_error"] or ""), c
    assert c["next_renewal"], c
    assert cert_serial(served(a, "c.example.test")) == old
    assert stored_serial(a.state, "example.test") == old
    assert knot.txt("_acme-challenge.example.test") == []


def _refused(a, *needles):
    p = a.config_test()
    assert p.returncode != 0, p.stdout + p.stderr
    out = p.stdout + p.stderr
    for n in needles:
        assert n in out, out
    return out


def test_config_test_refuses_incomplete_dns(apache_factory, pebble, knot):
    a = apache_factory(pebble)
    wild = vhost_pair(a, "example.test", "*.example.test")
    explicit = vhost_pair(a, "example.test", "", cert="*.example.test example.test")
    keyfile = knot.key_file("acme-key-sha256", a.dir / "tsig.key")
    # a wildcard without a DNS challenge: ServerAlias and explicit names
    a.acme_global, a.vhosts = "", wild
    _refused(a, "'*.example.test' is a wildcard, which needs a DNS challenge: add ACMEChallenge dns-01")
    a.vhosts = explicit
    _refused(a, "'*.example.test' is a wildcard, which needs a DNS challenge")
    # dns-01 without an update method, without a key
    a.vhosts = wild
    a.acme_global = "ACMEChallenge http-01 dns-01\n"
    _refused(a, "ACMEChallenge dns-01 needs ACMEDNSUpdate")
    a.acme_global = "ACMEChallenge dns-01\nACMEDNSUpdate rfc2136\n"
    _refused(a, "ACMEDNSUpdate rfc2136 needs ACMEDNSTSIGKey")
    # a managed virtual host's own ACMEDNS* where it does not use dns-01 (server-wide: a warning)
    a.acme_global = ""
    a.vhosts = vhost_pair(a, "example.test").replace("    ACMECertificate on\n",
                                                     "    ACMECertificate on\n    ACMEDNSUpdate rfc2136\n")
    _refused(a, "ACMEDNSUpdate (", "the ACMEDNS* directives need ACMEChallenge dns-01")
    a.acme_global, a.vhosts = f"ACMEDNSUpdate rfc2136\nACMEDNSTSIGKey {keyfile}\n", vhost_pair(a, "example.test")
    p = a.config_test()
    assert p.returncode == 0 and "ACME0145: ACMEDNSUpdate (" in p.stdout + p.stderr, p.stdout + p.stderr
    # bad values name the directive and the value, never the secret
    bad = a.dir / "md5.key"
    bad.write_text('key "k" { algorithm hmac-md5; secret "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; };\n')
    a.vhosts = wild
    a.acme_global = f"ACMEChallenge dns-01\nACMEDNSUpdate rfc2136\nACMEDNSTSIGKey {bad}\n"
    out = _refused(a, f"ACMEDNSTSIGKey: invalid value '{bad}'", 'TSIG algorithm "hmac-md5" is not supported')
    assert "AAECAwQF" not in out
    a.acme_global = "ACMEDNSUpdate nsupdate\n"
    _refused(a, "ACMEDNSUpdate: invalid value 'nsupdate': expected rfc2136")
    a.acme_global = "ACMEDNSServer 127.0.0.1:99999\n"
    _refused(a, "ACMEDNSServer: invalid value '127.0.0.1:99999'")
    a.acme_global = "ACMEDNSPropagationTimeout soon\n"
    _refused(a, "ACMEDNSPropagationTimeout: invalid value 'soon'")
    # complete settings pass
    a.acme_global = (f"ACMEChallenge http-01 dns-01\nACMEDNSUpdate rfc2136\nACMEDNSTSIGKey {keyfile}\n"
                     f"ACMEDNSServer {knot.address}:53\nACMEDNSResolver {knot.address}\n")
    p = a.config_test()
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.serial
def test_propagation_wait_blocks_no_child(apache_factory, pebble_factory, knot_pair, procs):
    # prefork: the driver's child serves requests in its main thread; the DNS work (here a wait for
    # ns2, which lags) runs in a thread of its own, so every child keeps answering meanwhile
    k1, k2 = knot_pair
    pebble = pebble_factory(dns_server=k1.dns_address)
    a = apache_factory(pebble, mpm="prefork")
    keyfile = k1.key_file("acme-key-sha256", a.dir / "tsig.key")
    a.acme_global = (f"ACMEChallenge dns-01\nACMEDNSUpdate rfc2136\nACMEDNSTSIGKey {keyfile}\n"
                     f"ACMEDNSResolver {k1.address}\nACMEDNSPropagationTimeout 60\n")
    a.vhosts = vhost_pair(a, "lag.example.test")
    a.start(procs)
    owner = "_acme-challenge.lag.example.test"
    harness.wait_for(lambda: k1.txt(owner), timeout=30, what="the record on ns1")
    value = k1.txt(owner)[0]
    # a few seconds of requests (new connections, so every child gets some) while the driver waits
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 4:
        start = time.monotonic()
        r = http_get(a.http_port, "lag.example.test", "/index.html")
        assert r.status == 200 and time.monotonic() - start < 1.0, r
        assert a.status("lag.example.test")["driver_pid"]
        n += 1
    assert n > 20
    c = cert_of(a, "lag.example.test", lambda c: c["name"] == "lag.example.test")
    assert c["state"] != "valid" and "is on every authoritative server" not in a.log(), c
    k2.add_txt("example.test", "_acme-challenge.lag", value)
    wait_valid_name(a, "lag.example.test", "lag.example.test", timeout=60)
    assert cert_serial(served(a, "lag.example.test")) == stored_serial(a.state, "lag.example.test")
    assert "the dns-01 record for lag.example.test is on every authoritative server" in a.log()
