"""dns-persist-01's persistUntil warning with several CAs. nginx `acme_certificate A fallback=B`: the warning
of the issuer that got the certificate is the one kept (status, log once, `persist-expiring` naming that
issuer), a renewal whose record no longer expires clears it, a failed issuer's warning does not stick to the
certificate the next one got, and a failed issuer's check leaves the certificate's warning as it is.
Apache with several ACMECertificateAuthority: the event names the second CA.
acmectl at two CAs: the same, and a certificate from another CA does not take the old one's warnings over."""
import json
import time

from apache_harness import apache_factory, tls_get  # noqa: F401 (fixture)
from harness import free_port, wait_for
from nginx_harness import force_renewal, https_get, issuer_block, nginx_factory  # noqa: F401
from test_apache_dns import vhost_pair
from test_nginx_dns import knot  # noqa: F401 (fixture)
from test_notify import events, make_script

NAME = "fb.example.test"
RECORD = "_validation-persist.fb.example.test"
ISO = "%Y-%m-%dT%H:%M:%SZ"


def _conf(tmp_path, https, first, second, script, knot):
    persist = dict(challenge="dns-persist-01", extra=f"dns_resolver {knot.address};")
    return (issuer_block("first", first, tmp_path / "state", **persist)
            + issuer_block("second", second, tmp_path / "state", **persist) + f"""
    acme_notify {script};
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {NAME};
        acme_certificate first {NAME} fallback=second;
        location = /acme {{ acme_status renew=on renew_interval=1s; }}
    }}
""")


def _status(https):
    certs = https_get(https, NAME, "/acme").json()["certificates"]
    return certs[0] if certs else None


def _set_records(knot, *values):
    had = knot.txt(RECORD)
    knot.knotc("zone-begin", "example.test")
    if had:
        knot.knotc("zone-unset", "example.test", RECORD + ".", "TXT")
    for v in values:
        knot.knotc("zone-set", "example.test", RECORD + ".", "60", "TXT", f'"{v}"')
    knot.knotc("zone-commit", "example.test")


def _account(tmp_path, pb):
    """The account URL the issuer of that Pebble registered (state_path is shared: one per CA)."""
    for p in (tmp_path / "state").rglob("account.json"):
        url = json.loads(p.read_text())["url"]
        if url.startswith(pb.base_url):
            return url
    return None


def test_persist_warning_of_the_fallback_issuer(pebble_next_factory, knot, nginx_factory, tmp_path):
    """The first issuer's CA is down; the second issues with a record whose persistUntil passes in 5 days:
    the warning is in the status, logged once, and notified as the second issuer's; a renewal with a record
    without persistUntil clears it."""
    pb = pebble_next_factory(dns_server=knot.dns_address, env={"PEBBLE_AUTHZREUSE": "0"})
    dead = f"https://127.0.0.1:{free_port()}/dir"
    https = free_port()
    script, out = make_script(tmp_path / "n")
    ng = nginx_factory(_conf(tmp_path, https, dead, pb, script, knot), wait_port=https, allowed=[r"acme: "])
    # no record yet: the second issuer's account exists once its check has failed
    wait_for(lambda: (lambda c: c if c and c["identifier_errors"] else None)(_status(https)), 60,
             interval=0.3, what="the first attempt's failure")
    want = f"pebble.letsencrypt.org; accounturi={_account(tmp_path, pb)}"
    soon = int(time.time()) + 5 * 86400
    _set_records(knot, f"{want}; persistUntil={soon}")
    assert force_renewal(https, NAME, NAME).status in (200, 202)
    c = wait_for(lambda: (lambda c: c if c and c["state"] == "valid" else None)(_status(https)), 60,
                 interval=0.3, what="the certificate from the second issuer")
    assert c["issuer"] == pb.directory_url, c
    assert 'issuer "first" failed, trying "second"' in ng.log_text()
    (w,) = c["identifier_warnings"]
    assert w["identifier"] == f"dns:{NAME}" and w["dns_persist_record"]["name"] == RECORD, w
    assert w["dns_persist_until"] == time.strftime(ISO, time.gmtime(soon)), w
    assert f"persistUntil={soon}" in w["dns_persist_warning"] and "is renewed" in w["dns_persist_warning"], w
    assert ng.log_text().count(w["dns_persist_warning"]) == 1, ng.log_text()
    ev = wait_for(lambda: [e for e in events(out) if e[0] == "persist-expiring"] or None, 40, interval=0.2,
                  what="the persist-expiring notification")
    assert len(ev) == 1 and ev[0][2]["ACME_WARNING"] == w["dns_persist_warning"], events(out)
    # the issuer whose record it is, not the first one
    assert ev[0][2]["ACME_ISSUER"] == "second", ev[0][2]

    # the record renewed without persistUntil: the next renewal (through the same fallback) clears it
    _set_records(knot, want)
    assert force_renewal(https, NAME, NAME).status in (200, 202)
    wait_for(lambda: [e for e in events(out) if e[0] == "renewed"] or None, 60, interval=0.2,
             what="the renewal")
    assert events(out)[-1][2]["ACME_ISSUER"] == "second", events(out)[-1]
    c = wait_for(lambda: (lambda c: c if c and c["state"] == "valid" and not c["identifier_warnings"]
                          else None)(_status(https)), 20, interval=0.3, what="the warning cleared")
    assert c["issuer"] == pb.directory_url, c
    assert len([e for e in events(out) if e[0] == "persist-expiring"]) == 1, events(out)


def _second_issues(pebble_next_factory, knot, nginx_factory, tmp_path, dns_next, first_until=None,
                   second_until=None):
    """Two issuers whose CAs see different DNS servers (the first's cannot see Knot's records): once both
    accounts exist and the first attempt failed, each account's record is created (with persistUntil when
    given) and a renewal forced; the second issues. (second, https, nginx, notify output, status)."""
    first = pebble_next_factory(dns_server=dns_next.dns_address, env={"PEBBLE_AUTHZREUSE": "0"})
    second = pebble_next_factory(dns_server=knot.dns_address, env={"PEBBLE_AUTHZREUSE": "0"})
    https = free_port()
    script, out = make_script(tmp_path / "n")
    ng = nginx_factory(_conf(tmp_path, https, first, second, script, knot), wait_port=https,
                       allowed=[r"acme: "])
    # no record yet: both accounts exist once both checks have failed
    wait_for(lambda: _account(tmp_path, first) and _account(tmp_path, second), 60, interval=0.3,
             what="both accounts")
    wait_for(lambda: (lambda c: c if c and c["failures"] else None)(_status(https)), 60, interval=0.3,
             what="the first attempt's failure")

    def value(pb, until):
        return f"pebble.letsencrypt.org; accounturi={_account(tmp_path, pb)}" \
               + (f"; persistUntil={until}" if until else "")

    _set_records(knot, value(first, first_until), value(second, second_until))
    assert force_renewal(https, NAME, NAME).status in (200, 202)
    c = wait_for(lambda: (lambda c: c if c and c["state"] == "valid" else None)(_status(https)), 60,
                 interval=0.3, what="the certificate from the second issuer")
    assert c["issuer"] == second.directory_url, c
    return second, https, ng, out, c


def test_failed_issuers_persist_warning_does_not_stick(pebble_next_factory, knot, nginx_factory, tmp_path,
                                                       dns_next):
    """The first issuer's record passes in 5 days (logged and notified as the first issuer's when checked),
    but its CA cannot see the record (its DNS is another server) and the validation fails; the second issues
    with a record that does not expire: no warning on the certificate."""
    soon = int(time.time()) + 5 * 86400
    second, https, ng, out, c = _second_issues(pebble_next_factory, knot, nginx_factory, tmp_path, dns_next,
                                               first_until=soon)
    # the first issuer checked its record (and warned), then failed
    log = ng.log_text()
    assert f"persistUntil={soon}" in log and 'issuer "first" failed, trying "second"' in log, log
    assert c["identifier_warnings"] == [], c
    assert c["identifier_errors"] == [], c
    for e in events(out):
        if e[0] == "persist-expiring":
            assert e[2]["ACME_ISSUER"] == "first", e


def test_failed_issuers_check_keeps_the_certificates_warning(pebble_next_factory, knot, nginx_factory,
                                                            tmp_path, dns_next):
    """The certificate in service came from the second issuer, with a warning on its record. A renewal:
    the first issuer checks its own record (no warning) and fails, the second is down: the warning on the
    record the certificate's renewal needs stays (status, and stored with the failure)."""
    soon = int(time.time()) + 5 * 86400
    second, https, ng, out, c = _second_issues(pebble_next_factory, knot, nginx_factory, tmp_path, dns_next,
                                               second_until=soon)
    (w,) = c["identifier_warnings"]
    assert f"persistUntil={soon}" in w["dns_persist_warning"], w

    second.stop()
    mark = ng.log_size()
    assert force_renewal(https, NAME, NAME).status in (200, 202)
    c = wait_for(lambda: (lambda c: c if c and c["state"] == "failing" else None)(_status(https)), 60,
                 interval=0.3, what="the failed renewal")
    assert "the dns-persist-01 record for fb.example.test authorizes this account" in ng.log_text(since=mark)
    assert c["identifier_warnings"] == [w], c
    # stored with the failure: what the next start shows too
    meta = json.loads((tmp_path / "state/certs" / NAME / "meta.json").read_text())
    assert meta["dns_persist_warnings"][0]["dns_persist_warning"] == w["dns_persist_warning"], meta


def test_acmectl_another_cas_warning_neither_cleared_nor_kept(acmectl_bin, tmp_path, pebble_next_factory,
                                                              knot):
    """acmectl at two CAs: a certificate from B with a warning on its record for N. A failed check at A
    (no record for A's account yet) leaves B's warning on B's certificate; A's certificate (N by http-01,
    so not checked; the wildcard by dns-persist-01) does not take B's warning over."""
    from test_dns_persist import ctl
    b = pebble_next_factory(dns_server=knot.dns_address, env={"PEBBLE_AUTHZREUSE": "0"})
    a = pebble_next_factory(dns_server=knot.dns_address, env={"PEBBLE_AUTHZREUSE": "0"})
    n, wild = "cross.example.test", "*.w.cross.example.test"
    knot.knotc("zone-begin", "example.test")
    knot.knotc("zone-set", "example.test", n + ".", "60", "A", "127.0.0.1")    # `*` stops at its subtree
    knot.knotc("zone-commit", "example.test")

    def record(pb, *args):
        r = ctl(acmectl_bin, tmp_path, pb, "dns-persist-record", *args)
        assert r.returncode == 0, r.stdout + r.stderr
        owner, _, _, value = r.stdout.strip().split(" ", 3)
        knot.add_txt("example.test", owner[:-len(".example.test.")], value.strip('"'))

    def status():
        (c,) = json.loads(ctl(acmectl_bin, tmp_path, b, "status", "--json").stdout)["certificates"]
        return c

    def issue(pb, *args):
        return ctl(acmectl_bin, tmp_path, pb, "issue", "--dns-resolver", knot.address, *args, n, wild)

    soon = int(time.time()) + 5 * 86400
    record(b, "--until", str(soon), n)
    record(b, "--wildcard", "w.cross.example.test")
    p = issue(b, "--challenge", "dns-persist-01")
    assert p.returncode == 0, p.stdout + p.stderr
    c = status()
    (w,) = c["identifier_warnings"]
    assert w["identifier"] == f"dns:{n}" and f"persistUntil={soon}" in w["dns_persist_warning"], c

    # A: no record for its account yet: the check fails; B's certificate keeps its warning
    p = issue(a, "--challenge", "dns-persist-01")
    assert p.returncode == 1 and "authorizes this account" in p.stderr, p.stdout + p.stderr
    c = status()
    assert c["identifier_warnings"] == [w] and c["issuer"] == b.directory_url, c

    # A's certificate: the wildcard's record checked (no persistUntil), N by http-01
    record(a, "--wildcard", "w.cross.example.test")
    p = issue(a, "--challenge", "http-01,dns-persist-01", "--http-listen", f"127.0.0.1:{a.http_port}")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "the dns-persist-01 record for *.w.cross.example.test authorizes this account" in p.stderr, p.stderr
    c = status()
    assert c["issuer"] == a.directory_url and c["identifier_warnings"] == [], c


def test_apache_persist_warning_of_the_second_ca(apache_factory, pebble_next_factory, knot, procs):
    """Apache, `ACMECertificateAuthority DEAD PEBBLE`: the certificate from the second CA with a record whose
    persistUntil passes in 5 days: the warning in /acme-status, and persist-expiring naming the second CA."""
    pb = pebble_next_factory(dns_server=knot.dns_address)
    dead = f"https://127.0.0.1:{free_port()}/dir"
    a = apache_factory(pb, name="apache-persist-fb", ca_url=f"{dead} {pb.directory_url}")
    script, out = make_script(a.dir / "n")
    a.extra_global = f"ACMENotifyCmd {script} timeout=10s\n"
    a.acme_global = f"ACMEChallenge dns-persist-01\nACMEDNSResolver {knot.address}\n"
    a.vhosts = vhost_pair(a, NAME, "", cert=NAME)
    a.allow(r"acme: .*cannot reach the CA")
    a.allow(rf"acme: .*dns-persist-01 for {NAME}: no TXT record")
    a.start(procs)

    def cert():
        status, body, _, _ = tls_get(a.https_port, NAME, "/acme-status")
        return next(iter(json.loads(body)["certificates"]), None) if status == 200 else None

    c = wait_for(lambda: (lambda c: c if c and c.get("identifier_errors") else None)(cert()), 60,
                 interval=0.3, what="the first attempt's failure")
    want = c["identifier_errors"][0]["dns_persist_record"]["value"]
    soon = int(time.time()) + 5 * 86400
    _set_records(knot, f"{want}; persistUntil={soon}")
    assert a.renew(NAME).status in (200, 202)
    c = wait_for(lambda: (lambda c: c if c and c.get("identifier_warnings") else None)(cert()), 60,
                 interval=0.3, what="the warning in /acme-status")
    (w,) = c["identifier_warnings"]
    assert f"persistUntil={soon}" in w["dns_persist_warning"] and c["issuer"] == pb.directory_url, c
    ev = wait_for(lambda: [e for e in events(out) if e[0] == "persist-expiring"] or None, 40, interval=0.2,
                  what="the persist-expiring notification")
    assert len(ev) == 1 and ev[0][2]["ACME_WARNING"] == w["dns_persist_warning"], events(out)
    assert ev[0][2]["ACME_ISSUER"] == pb.directory_url, ev[0][2]
