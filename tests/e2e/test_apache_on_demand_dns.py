"""On-demand TLS in Apache with DNS validation: an on-demand name's order uses the virtual host's
challenges and DNS update settings (dns-01 through RFC 2136 to Knot), after the ask endpoint and the
limits."""

import harness
from apache_harness import apache_factory  # noqa: F401  (fixture)
from test_apache_dns import _refused, dns_global, knot  # noqa: F401  (fixture)
from test_apache_on_demand import AskServer, fallback_quick, leaf_names, od_status, pebble_leaf


def test_dns01_first_handshake(apache_factory, pebble_factory, knot, procs):
    pebble = pebble_factory(dns_server=knot.dns_address)
    ask = AskServer()
    try:
        # nothing on Pebble's HTTP-01 port (Apache's HTTP port, for the status, is another): only dns-01
        # can validate the names
        a = apache_factory(pebble, http_port=harness.free_port(), https_port=harness.free_port())
        a.acme_global = (dns_global(a, knot, challenge="dns-01")
                         + f"ACMEOnDemandAsk {ask.url} timeout=5s\nACMEOnDemandLimits rate=1\n")
        a.vhosts = (f"<VirtualHost {a.address}:{a.https_port}>\n    ServerName od.example.test\n"
                    "    ServerAlias *.od.example.test\n    SSLEngine on\n    ACMEOnDemand on\n"
                    "</VirtualHost>\n")
        a.start(procs)
        roots = pebble.roots(0)
        base = pebble.order_count()

        # the ask endpoint decides first: a refused name costs no order and no record
        fallback_quick(a, "no.od.example.test")
        assert ask.asked == ["no.od.example.test"]

        name = "ok1.od.example.test"
        der, status, took = pebble_leaf(a.https_port, name, roots)
        assert status == 200 and leaf_names(der) == [name]
        assert took < 20, f"the first handshake took {took:.1f} s"
        assert pebble.order_count() - base == 1
        log = a.log()
        assert f"answering dns-01 for {name} (rfc2136)" in log, log
        assert "answering http-01" not in log, log
        harness.wait_for(lambda: knot.txt(f"_acme-challenge.{name}") == [], 10, what="the record removed")

        # then the limits: rate=1, a second allowed name within the minute is refused
        fallback_quick(a, "ok2.od.example.test")
        assert pebble.order_count() - base == 1
        st = od_status(a)
        assert st["certificates"] == 1 and st["refused"]["ask_refused"] == 1, st
        assert st["refused"]["rate_limited"] == 1, st
        # the refused names caused no DNS update: ok1's record added and removed, nothing else
        assert knot.log_path.read_text().count("DDNS, processing") == 2
    finally:
        ask.close()


def test_config_test_checks_the_on_demand_vhost_dns_settings(apache_factory, pebble):
    """An on-demand virtual host's names are ordered with its DNS settings: apache2 -t checks them as it
    does a managed one's, instead of the first order failing."""
    a = apache_factory(pebble)
    hook = a.dir / "hook.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)

    def od_vhost(lines):
        return (f"<VirtualHost {a.address}:{a.https_port}>\n    ServerName od.example.test\n"
                f"    ServerAlias *.od.example.test\n    SSLEngine on\n    ACMEOnDemand on\n{lines}"
                "</VirtualHost>\n")

    a.vhosts = od_vhost("    ACMEChallenge dns-01\n")
    _refused(a, "ACMEChallenge dns-01 needs ACMEDNSUpdate (for ACMEOnDemand on in ")
    a.vhosts = od_vhost("    ACMEChallenge dns-01\n    ACMEDNSUpdate hook\n")
    _refused(a, "ACMEDNSUpdate hook needs ACMEDNSHook (for ACMEOnDemand on in ")
    # its own ACMEDNS* unused (no dns-01 there) while another virtual host uses dns-01
    a.vhosts = (od_vhost("    ACMEDNSUpdate hook\n")
                + f"<VirtualHost {a.address}:{a.https_port}>\n    ServerName www.example.test\n    SSLEngine on\n"
                  f"    ACMECertificate on\n    ACMEChallenge dns-01\n    ACMEDNSUpdate hook\n"
                  f"    ACMEDNSHook {hook}\n</VirtualHost>\n")
    _refused(a, "the ACMEDNS* directives need ACMEChallenge dns-01")
    # complete: accepted
    a.vhosts = od_vhost(f"    ACMEChallenge dns-01\n    ACMEDNSUpdate hook\n    ACMEDNSHook {hook}\n")
    p = a.config_test()
    assert p.returncode == 0, p.stdout + p.stderr


def test_dns_account01_first_handshake(apache_factory, pebble_next_factory, knot, procs):
    """dns-account-01 (the current Pebble): the account-scoped record, published through RFC 2136."""
    pebble = pebble_next_factory(dns_server=knot.dns_address)
    a = apache_factory(pebble, http_port=harness.free_port(), https_port=harness.free_port())
    a.acme_global = dns_global(a, knot, challenge="dns-account-01")
    a.vhosts = (f"<VirtualHost {a.address}:{a.https_port}>\n    ServerName od.example.test\n"
                "    ServerAlias *.od.example.test\n    SSLEngine on\n    ACMEOnDemand on\n</VirtualHost>\n")
    a.start(procs)
    base = pebble.order_count()
    name = "acct.od.example.test"
    der, status, _ = pebble_leaf(a.https_port, name, pebble.roots(0))
    assert status == 200 and leaf_names(der) == [name]
    assert pebble.order_count() - base == 1
    assert f"answering dns-account-01 for {name} (rfc2136)" in a.log()
