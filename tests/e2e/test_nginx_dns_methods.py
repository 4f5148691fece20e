"""nginx: the other DNS publishers (a hook program, acme-dns) and challenge types (dns-account-01,
dns-persist-01) in acme_issuer, with the names acmectl uses; nginx -t refuses incomplete settings."""
import json

from harness import free_port, wait_for
from nginx_harness import cert_text, force_renewal, https_get, issuer_block, nginx_factory, tls_cert  # noqa: F401,E501
from test_dns_publishers import knotc_hook
from test_nginx_dns import _check, _verified, knot  # noqa: F401 (fixtures)


def test_hook_wildcard(pebble_factory, knot, nginx_factory, tmp_path):
    pebble = pebble_factory(dns_server=knot.dns_address)
    hook, log = knotc_hook(tmp_path, knot)
    https = free_port()
    conf = issuer_block("pebble", pebble, tmp_path / "state", challenge="dns-01",
                        extra=f"dns_update hook; dns_hook {hook} timeout=30s; dns_resolver {knot.address}; "
                              "dns_propagation_timeout 20s;") + f"""
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name example.test *.example.test;
        acme_certificate pebble *.example.test example.test;
        location / {{ return 200 "tls\\n"; }}
    }}
"""
    ng = nginx_factory(conf, wait_port=https)
    roots = pebble.roots(0)
    wait_for(lambda: _verified(https, "a.example.test", roots), 90, interval=0.3,
             what="the wildcard certificate through the hook")
    text = cert_text(tls_cert(https, "a.example.test"))
    assert "DNS:*.example.test" in text and "DNS:example.test" in text
    lines = log.read_text()
    assert "ACME_IDENTIFIER=*.example.test" in lines and "ACME_CHALLENGE_TYPE=dns-01" in lines, lines
    assert "ACME_CERTIFICATE=_wildcard.example.test" in lines, lines
    out = ng.log_text()
    assert "answering dns-01 for *.example.test (hook)" in out, out
    wait_for(lambda: knot.txt("_acme-challenge.example.test") == [], 20, what="the record removed")


def test_config_refuses_incomplete_methods(pebble, nginx_factory, tmp_path):
    https = free_port()
    server = f"""
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name example.test;
        acme_certificate pebble example.test;
    }}
"""
    st = tmp_path / "state"

    def iss(challenge, extra):
        return issuer_block("pebble", pebble, st, challenge=challenge, extra=extra) + server

    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    _check(nginx_factory, iss("dns-01", "dns_update hook;"),
           'acme_issuer "pebble": "dns_update hook" needs "dns_hook"')
    _check(nginx_factory, iss("dns-account-01", "dns_update acme-dns;"),
           'acme_issuer "pebble": "dns_update acme-dns" needs "dns_acme_dns"')
    _check(nginx_factory, iss("dns-account-01", ""),
           'acme_issuer "pebble": "challenge dns-account-01" needs "dns_update"')
    _check(nginx_factory, iss("dns-01", f"dns_update hook; dns_hook {tmp_path}/nonexistent;"),
           f'acme_issuer "pebble": "dns_hook": the DNS hook "{tmp_path}/nonexistent": No such file')
    _check(nginx_factory, iss("dns-01", f"dns_update hook; dns_hook {hook} 30s;"),
           'invalid "dns_hook" parameter "30s" in acme_issuer "pebble": expected timeout=TIME')
    _check(nginx_factory, iss("dns-01", f"dns_update rfc2136; dns_hook {hook};"),
           'acme_issuer "pebble": "dns_update rfc2136" needs "dns_tsig_key"')
    # dns-persist-01 publishes nothing
    _check(nginx_factory, iss("dns-persist-01", f"dns_update hook; dns_hook {hook};"),
           'acme_issuer "pebble": "dns_update" is for dns-01 and dns-account-01: '
           '"challenge dns-persist-01" publishes nothing')
    # an acme-dns account file: read now; its password never in a message
    acct = tmp_path / "acmedns.json"
    acct.write_text(json.dumps({"username": "u", "password": "s3cr3t-pass", "subdomain": "x"}))
    out = _check(nginx_factory, iss("dns-01", f"dns_update acme-dns; dns_acme_dns {acct} http://127.0.0.1:1;"),
                 f'invalid "dns_acme_dns" "{acct}" in acme_issuer "pebble":', '"fulldomain"')
    assert "s3cr3t-pass" not in out
    _check(nginx_factory, iss("dns-01", f"dns_update acme-dns; dns_acme_dns {acct} ftp://x;"),
           'invalid "dns_acme_dns" URL "ftp://x" in acme_issuer "pebble": expected http:// or https://')
    _check(nginx_factory, iss("dns-02", ""), 'invalid "challenge" "dns-02" in acme_issuer "pebble"')
    # complete settings pass
    acct.write_text(json.dumps({"username": "u", "password": "s3cr3t-pass", "subdomain": "x",
                                "fulldomain": "x.auth.example.test"}))
    for c, e in (("dns-01", f"dns_update hook; dns_hook {hook} timeout=5s;"),
                 ("dns-account-01", f"dns_update acme-dns; dns_acme_dns {acct} http://127.0.0.1:1;"),
                 ("http-01 dns-persist-01", "dns_resolver 127.0.0.1:53;")):
        ng = nginx_factory(iss(c, e), start=False)
        ok, out = ng.test_config()
        assert ok, out


def test_dns_persist_record_in_status(pebble_next_factory, knot, nginx_factory, tmp_path):
    """dns-persist-01: a missing record fails before the CA validates anything, the record to create in
    the status JSON (name and value apart) and the log; once created in Knot, the certificate follows."""
    pb = pebble_next_factory(dns_server=knot.dns_address)
    https = free_port()
    conf = issuer_block("pebble", pb, tmp_path / "state", challenge="dns-persist-01",
                        extra=f"dns_resolver {knot.address};") + f"""
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name persist.example.test;
        acme_certificate pebble *.persist.example.test;
        location = /acme {{ acme_status renew=on renew_interval=1s; }}
    }}
"""
    ng = nginx_factory(conf, wait_port=https, allowed=[r"acme: "])

    def failed():
        certs = https_get(https, "persist.example.test", "/acme").json()["certificates"]
        return certs[0] if certs and certs[0].get("identifier_errors") else None
    c = wait_for(failed, 60, interval=0.3, what="the dns-persist-01 record in acme_status")
    e = c["identifier_errors"][0]
    assert e["identifier"] == "dns:*.persist.example.test", c
    url = json.loads(next((tmp_path / "state").rglob("account.json")).read_text())["url"]
    want = f"pebble.letsencrypt.org; accounturi={url}; policy=wildcard"
    assert e["dns_persist_record"] == {"name": "_validation-persist.persist.example.test", "value": want}, e
    assert f'create `_validation-persist.persist.example.test. IN TXT "{want}"`' in ng.log_text()
    assert pb.proc.log_text().count("Pulled a task from the Tasks queue") == 0, "no validation at the CA"

    knot.knotc("zone-begin", "example.test")
    knot.knotc("zone-set", "example.test", "_validation-persist.persist.example.test.", "60", "TXT", f'"{want}"')
    knot.knotc("zone-commit", "example.test")
    assert force_renewal(https, "persist.example.test", "_wildcard.persist.example.test").status in (200, 202)
    roots = pb.roots(0)
    wait_for(lambda: _verified(https, "a.persist.example.test", roots), 60, interval=0.3,
             what="the wildcard certificate through dns-persist-01")
    assert "DNS:*.persist.example.test" in cert_text(tls_cert(https, "a.persist.example.test"))
    assert "the dns-persist-01 record for *.persist.example.test authorizes this account" in ng.log_text()


def test_dns_persist_until(pebble_next_factory, knot, nginx_factory, tmp_path):
    """dns-persist-01's persistUntil: a passed one does not count (no validation at the CA, the status and
    the log say it expired and give the record to create); one that passes before the certificate is
    renewed: issued, with a warning in the log (once), in the status per identifier and to acme_notify."""
    from test_notify import events, make_script
    import time
    pb = pebble_next_factory(dns_server=knot.dns_address)
    https = free_port()
    script, out = make_script(tmp_path / "n")
    conf = issuer_block("pebble", pb, tmp_path / "state", challenge="dns-persist-01",
                        extra=f"dns_resolver {knot.address};") + f"""
    acme_notify {script};
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name until.example.test;
        acme_certificate pebble until.example.test;
        location = /acme {{ acme_status renew=on renew_interval=1s; }}
    }}
"""
    ng = nginx_factory(conf, wait_port=https, allowed=[r"acme: "])
    name = "_validation-persist.until.example.test"

    def cert():
        certs = https_get(https, "until.example.test", "/acme").json()["certificates"]
        return certs[0] if certs else None

    def set_record(value, replace=True):
        knot.knotc("zone-begin", "example.test")
        if replace:
            knot.knotc("zone-unset", "example.test", name + ".", "TXT")
        knot.knotc("zone-set", "example.test", name + ".", "60", "TXT", f'"{value}"')
        knot.knotc("zone-commit", "example.test")

    # the account exists once the first attempt (no record yet) has failed
    wait_for(lambda: (lambda c: c if c and c["identifier_errors"] else None)(cert()), 60, interval=0.3,
             what="the first attempt's failure")
    url = json.loads(next((tmp_path / "state").rglob("account.json")).read_text())["url"]
    want = f"pebble.letsencrypt.org; accounturi={url}"
    past = int(time.time()) - 60
    set_record(f"{want}; persistUntil={past}", replace=False)
    assert force_renewal(https, "until.example.test", "until.example.test").status in (200, 202)
    expired = f"its persistUntil={past} ({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(past))}) has passed"
    c = wait_for(lambda: (lambda c: c if c and c["identifier_errors"]
                          and expired in c["identifier_errors"][0]["error"] else None)(cert()),
                 60, interval=0.3, what="the expired record in acme_status")
    assert c["identifier_errors"][0]["dns_persist_record"] == {"name": name, "value": want}, c
    assert f'{expired}: the CA no longer accepts it): create `{name}. IN TXT "{want}"`' in ng.log_text()
    assert pb.proc.log_text().count("Pulled a task from the Tasks queue") == 0, "no validation at the CA"

    soon = int(time.time()) + 3 * 86400
    set_record(f"{want}; persistUntil={soon}")
    assert force_renewal(https, "until.example.test", "until.example.test").status in (200, 202)
    c = wait_for(lambda: (lambda c: c if c and c["state"] == "valid" else None)(cert()), 60, interval=0.3,
                 what="the certificate through dns-persist-01")
    (w,) = c["identifier_warnings"]
    assert w["identifier"] == "dns:until.example.test" and w["dns_persist_record"]["name"] == name, w
    assert w["dns_persist_until"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(soon)), w
    assert f"persistUntil={soon}" in w["dns_persist_warning"] and "is renewed" in w["dns_persist_warning"], w
    assert ng.log_text().count(w["dns_persist_warning"]) == 1, ng.log_text()
    ev = wait_for(lambda: [e for e in events(out) if e[0] == "persist-expiring"] or None, 40, interval=0.2,
                  what="the persist-expiring notification")
    assert len(ev) == 1 and ev[0][2]["ACME_WARNING"] == w["dns_persist_warning"], events(out)
    assert ev[0][2]["ACME_DOMAINS"] == "until.example.test", ev
