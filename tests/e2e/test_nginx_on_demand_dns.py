"""On-demand TLS in nginx with DNS validation: an on-demand name's order uses its issuer's challenges and
DNS update settings (dns-01 through RFC 2136 to Knot), after the ask endpoint and the limits."""

import json

from harness import free_port, wait_for
from nginx_harness import http_get, nginx_factory  # noqa: F401 (fixture)
from test_nginx_dns import dns_issuer, knot  # noqa: F401 (fixture)
from test_nginx_on_demand import AskServer, fallback_quick, leaf_names, pebble_leaf


def _od_servers(od_params, status, https):
    """acme_on_demand with od_params, the status server, and the on-demand server of issuer pebble."""
    return f"""
    acme_on_demand {od_params};
    server {{
        listen 127.0.0.1:{status};
        location = /acme {{ acme_status; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name .od.example.test;
        acme_certificate pebble on_demand;
        location / {{ return 200 "on-demand\\n"; }}
    }}
"""


def test_dns01_first_handshake(pebble_factory, knot, nginx_factory, tmp_path):
    pebble = pebble_factory(dns_server=knot.dns_address)
    ask = AskServer()
    try:
        https, status = free_port(), free_port()
        # nothing listens on Pebble's HTTP-01 port: only dns-01 can validate the names
        conf = dns_issuer(pebble, tmp_path, knot, challenge="dns-01") \
            + _od_servers(f"ask={ask.url} rate=1", status, https)
        ng = nginx_factory(conf, wait_port=https)
        roots = pebble.roots(0)
        base = pebble.order_count()

        # the ask endpoint decides first: a refused name costs no order and no record
        fallback_quick(https, "no.od.example.test")
        assert ask.asked == ["no.od.example.test"]

        name = "ok1.od.example.test"
        der, took = pebble_leaf(https, name, roots)
        assert leaf_names(der) == [name]
        assert took < 20, f"the first handshake took {took:.1f} s"
        assert pebble.order_count() - base == 1
        log = ng.log_text()
        assert f"answering dns-01 for {name} (rfc2136)" in log, log
        assert "answering http-01" not in log, log
        wait_for(lambda: knot.txt(f"_acme-challenge.{name}") == [], 10, what="the record removed")

        # then the limits: rate=1, a second allowed name within the minute is refused
        fallback_quick(https, "ok2.od.example.test")
        assert pebble.order_count() - base == 1

        code, body = http_get(status, "status.local", "/acme")
        st = json.loads(body)["on_demand"]
        assert st["certificates"] == 1 and st["refused"]["ask_refused"] == 1, st
        assert st["refused"]["rate_limited"] == 1, st
        # the refused names caused no DNS update: ok1's record added and removed, nothing else
        assert knot.log_path.read_text().count("DDNS, processing") == 2
    finally:
        ask.close()


def test_dns_account01_first_handshake(pebble_next_factory, knot, nginx_factory, tmp_path):
    """dns-account-01 (the current Pebble): the account-scoped record, published through RFC 2136."""
    pebble = pebble_next_factory(dns_server=knot.dns_address)
    https = free_port()
    conf = dns_issuer(pebble, tmp_path, knot, challenge="dns-account-01") + f"""
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name .od.example.test;
        acme_certificate pebble on_demand;
    }}
"""
    ng = nginx_factory(conf, wait_port=https)
    base = pebble.order_count()
    name = "acct.od.example.test"
    der, _ = pebble_leaf(https, name, pebble.roots(0))
    assert leaf_names(der) == [name]
    assert pebble.order_count() - base == 1
    assert f"answering dns-account-01 for {name} (rfc2136)" in ng.log_text()


def test_dns_persist01_first_handshake(pebble_next_factory, knot, nginx_factory, tmp_path):
    """dns-persist-01 for on-demand names: a name whose _validation-persist record authorizes the account
    (created beforehand, by the customer say) is issued at its first handshake, with nothing published; a
    name without one gets the fallback, with the record to create logged, and no validation at the CA."""
    from nginx_harness import cert_text, issuer_block, tls_cert
    pb = pebble_next_factory(dns_server=knot.dns_address)
    https, status = free_port(), free_port()
    # nothing listens on Pebble's HTTP-01 port and nothing publishes records: only the customer's record
    conf = issuer_block("pebble", pb, tmp_path / "state", challenge="dns-persist-01",
                        extra=f"dns_resolver {knot.address};") + _od_servers("refuse_time=1s", status, https)
    ng = nginx_factory(conf, wait_port=https,
                       allowed=[r'acme: "missing\.od\.example\.test": dns-persist-01 for missing\.od'])
    roots = pb.roots(0)

    # no record: the fallback, the record to create in the log, nothing validated at the CA
    missing = "missing.od.example.test"
    assert "Pebble" not in cert_text(tls_cert(https, missing, timeout=40))
    wait_for(lambda: f"no TXT record at _validation-persist.{missing}" in ng.log_text(), 10,
             what="the record to create logged")
    assert pb.proc.log_text().count("Pulled a task from the Tasks queue") == 0, "no validation at the CA"

    # the customer creates the record for the account (it exists since that first order)
    url = json.loads(next((tmp_path / "state").rglob("account.json")).read_text())["url"]
    name = "persist.od.example.test"
    want = f"pebble.letsencrypt.org; accounturi={url}"
    knot.knotc("zone-begin", "example.test")
    knot.knotc("zone-set", "example.test", f"_validation-persist.{name}.", "60", "TXT", f'"{want}"')
    knot.knotc("zone-commit", "example.test")
    ddns = knot.log_path.read_text().count("DDNS, processing")

    der, took = pebble_leaf(https, name, roots)
    assert leaf_names(der) == [name]
    assert took < 20, f"the first handshake took {took:.1f} s"
    log = ng.log_text()
    assert f"the dns-persist-01 record for {name} authorizes this account" in log, log
    code, body = http_get(status, "status.local", "/acme")
    st = json.loads(body)
    assert st["on_demand"]["certificates"] == 1, st["on_demand"]
    # nothing published: the record stays as created
    assert knot.log_path.read_text().count("DDNS, processing") == ddns
    assert knot.txt(f"_validation-persist.{name}") == [want]
