"""mod_acme: the other DNS publishers (a hook program, acme-dns) and challenge types (dns-account-01,
dns-persist-01), with the names acmectl and nginx use; apache2 -t refuses incomplete settings."""
import json

from apache_harness import apache_factory  # noqa: F401  (fixture)
from test_apache_dns import _refused, knot, sans, served, vhost_pair, wait_valid_name  # noqa: F401
from test_dns_publishers import knotc_hook


def test_hook_wildcard(apache_factory, pebble_factory, knot, procs):
    pebble = pebble_factory(dns_server=knot.dns_address)
    hook, log = knotc_hook(knot.workdir.parent, knot)
    a = apache_factory(pebble)
    a.acme_global = (f"ACMEChallenge http-01 dns-01\nACMEDNSUpdate hook\nACMEDNSHook {hook} 30s\n"
                     f"ACMEDNSResolver {knot.address}\nACMEDNSPropagationTimeout 20s\n")
    a.vhosts = vhost_pair(a, "example.test", "*.example.test")
    a.start(procs)
    wait_valid_name(a, "example.test", "example.test")
    text = sans(served(a, "a.example.test"))
    assert "DNS:*.example.test" in text and "DNS:example.test" in text, text
    lines = log.read_text()
    assert "ACME_IDENTIFIER=*.example.test" in lines and "ACME_CHALLENGE_TYPE=dns-01" in lines, lines
    out = a.log()
    assert "answering dns-01 for *.example.test (hook)" in out, out
    assert knot.txt("_acme-challenge.example.test") == []


def test_config_test_refuses_incomplete_methods(apache_factory, pebble, tmp_path):
    a = apache_factory(pebble)
    a.vhosts = vhost_pair(a, "example.test", "*.example.test")
    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    a.acme_global = "ACMEChallenge dns-01\nACMEDNSUpdate hook\n"
    _refused(a, "ACMEDNSUpdate hook needs ACMEDNSHook")
    a.acme_global = "ACMEChallenge dns-account-01\nACMEDNSUpdate acme-dns\n"
    _refused(a, "ACMEDNSUpdate acme-dns needs ACMEDNSAcmeDNS")
    a.acme_global = "ACMEChallenge dns-account-01\n"
    _refused(a, "ACMEChallenge dns-account-01 needs ACMEDNSUpdate")
    a.acme_global = f"ACMEChallenge dns-01\nACMEDNSUpdate hook\nACMEDNSHook {tmp_path}/nonexistent\n"
    _refused(a, f"ACMEDNSHook {tmp_path}/nonexistent: the DNS hook", "No such file")
    a.acme_global = f"ACMEChallenge dns-01\nACMEDNSUpdate hook\nACMEDNSHook {hook} soon\n"
    _refused(a, "ACMEDNSHook: invalid timeout 'soon'")
    a.acme_global = f"ACMEChallenge dns-persist-01\nACMEDNSUpdate hook\nACMEDNSHook {hook}\n"
    _refused(a, "ACMEDNSUpdate is for dns-01 and dns-account-01: ACMEChallenge dns-persist-01 publishes nothing")
    acct = tmp_path / "acmedns.json"
    acct.write_text(json.dumps({"username": "u", "password": "s3cr3t-pass", "subdomain": "x"}))
    a.acme_global = f"ACMEChallenge dns-01\nACMEDNSUpdate acme-dns\nACMEDNSAcmeDNS {acct} http://127.0.0.1:1\n"
    out = _refused(a, f"ACMEDNSAcmeDNS: invalid value '{acct}'", '"fulldomain"')
    assert "s3cr3t-pass" not in out
    a.acme_global = f"ACMEDNSAcmeDNS {acct} ftp://x\n"
    _refused(a, "ACMEDNSAcmeDNS: invalid URL 'ftp://x'")
    a.acme_global = "ACMEDNSUpdate nsupdate\n"
    _refused(a, "ACMEDNSUpdate: invalid value 'nsupdate': expected rfc2136, hook or acme-dns")
    acct.write_text(json.dumps({"username": "u", "password": "s3cr3t-pass", "subdomain": "x",
                                "fulldomain": "x.auth.example.test"}))
    for g in (f"ACMEChallenge dns-01\nACMEDNSUpdate hook\nACMEDNSHook {hook} 5s\n",
              f"ACMEChallenge dns-account-01\nACMEDNSUpdate acme-dns\nACMEDNSAcmeDNS {acct} http://127.0.0.1:1\n",
              "ACMEChallenge dns-persist-01\nACMEDNSResolver 127.0.0.1:53\n"):
        a.acme_global = g
        p = a.config_test()
        assert p.returncode == 0, p.stdout + p.stderr
