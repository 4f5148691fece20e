"""nginx: dns-01 through RFC 2136 updates to Knot, wildcard certificates, their configuration."""
import pytest

import knot_harness
from harness import free_port, wait_for
from nginx_harness import cert_text, issuer_block, nginx_factory, tls_cert, tls_verified  # noqa: F401
from test_dns import ZONES


@pytest.fixture
def knot(tmp_path):
    why = knot_harness.available()
    if why:
        pytest.skip(why)
    k = knot_harness.Knot(tmp_path / "knot", ZONES)
    k.start()
    yield k
    k.stop()


def dns_issuer(pebble, tmp_path, knot, challenge="http-01 dns-01", extra=""):
    key = knot.key_file("acme-key-sha256", tmp_path / "tsig.key")
    return issuer_block("pebble", pebble, tmp_path / "state", challenge=challenge,
                        extra=f"dns_update rfc2136; dns_tsig_key {key}; dns_resolver {knot.address}; "
                              f"dns_propagation_timeout 20s; {extra}")


def test_wildcard_served(pebble_factory, knot, nginx_factory, tmp_path):
    pebble = pebble_factory(dns_server=knot.dns_address)
    https = free_port()
    conf = dns_issuer(pebble, tmp_path, knot) + f"""
    server {{
        listen 127.0.0.1:{pebble.http_port};
        server_name example.test;
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name example.test *.example.test;
        acme_certificate pebble www.example.test;
        acme_certificate pebble *.example.test example.test;
        location / {{ return 200 "tls\\n"; }}
    }}
"""
    ng = nginx_factory(conf, wait_port=https)
    roots = pebble.roots(0)
    # a name only the wildcard covers gets the wildcard certificate (not the first one of the
    # server's, www's)
    serial = wait_for(lambda: _verified(https, "a.example.test", roots), 60, interval=0.3,
                      what="the wildcard certificate for a.example.test")
    text = cert_text(tls_cert(https, "a.example.test"))
    assert "DNS:*.example.test" in text and "DNS:example.test" in text
    assert _verified(https, "example.test", roots) == serial
    # the exact name has a certificate of its own beside the wildcard
    www = wait_for(lambda: _verified(https, "www.example.test", roots), 60, interval=0.3,
                   what="the certificate for www.example.test")
    assert www != serial
    assert "DNS:*.example.test" not in cert_text(tls_cert(https, "www.example.test"))
    assert (tmp_path / "state/certs/_wildcard.example.test/fullchain.pem").exists()
    log = ng.log_text()
    assert "answering dns-01 for *.example.test (rfc2136)" in log, log
    assert "answering http-01 for example.test" in log, log
    # removed after the issuance, which the cache manager may still be finishing
    wait_for(lambda: knot.txt("_acme-challenge.example.test") == [], 20, what="the record removed")


def _verified(port, sni, roots):
    try:
        return tls_verified(port, sni, roots)
    except Exception:
        return None


def _check(nginx_factory, conf, *needles):
    ng = nginx_factory(conf, start=False)
    ok, out = ng.test_config()
    assert not ok, out
    for n in needles:
        assert n in out, out
    return out


def test_config_refuses_incomplete_dns(pebble, knot, nginx_factory, tmp_path):
    https = free_port()
    server = f"""
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name example.test;
        acme_certificate pebble *.example.test;
    }}
"""
    # a wildcard without dns-01
    _check(nginx_factory, issuer_block("pebble", pebble, tmp_path / "state") + server,
           'acme_certificate: invalid identifier "*.example.test": a wildcard needs "challenge dns-01" '
           'in acme_issuer "pebble"')
    # dns-01 without an update method, without a key
    _check(nginx_factory, issuer_block("pebble", pebble, tmp_path / "state", challenge="dns-01") + server,
           'acme_issuer "pebble": "challenge dns-01" needs "dns_update"')
    _check(nginx_factory, issuer_block("pebble", pebble, tmp_path / "state", challenge="dns-01",
                                       extra="dns_update rfc2136;") + server,
           'acme_issuer "pebble": "dns_update rfc2136" needs "dns_tsig_key"')
    # dns_* without dns-01
    _check(nginx_factory, issuer_block("pebble", pebble, tmp_path / "state", extra="dns_update rfc2136;")
           + server, 'acme_issuer "pebble": the dns_* directives need "challenge dns-01"')
    # an unreadable key file names the directive and the file, not the secret
    bad = tmp_path / "bad.key"
    bad.write_text('key "k" { algorithm hmac-md5; secret "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; };\n')
    out = _check(nginx_factory, issuer_block("pebble", pebble, tmp_path / "state", challenge="dns-01",
                                             extra=f"dns_update rfc2136; dns_tsig_key {bad};") + server,
                 f'invalid "dns_tsig_key" "{bad}" in acme_issuer "pebble": TSIG key file "{bad}": '
                 'TSIG algorithm "hmac-md5" is not supported')
    assert "AAECAwQF" not in out
    _check(nginx_factory, issuer_block("pebble", pebble, tmp_path / "state", challenge="dns-01",
                                       extra="dns_update nsupdate;") + server,
           'invalid "dns_update" "nsupdate" in acme_issuer "pebble": use rfc2136')
