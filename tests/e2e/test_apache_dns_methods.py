"""mod_acme: the other DNS publishers (a hook program, acme-dns) and challenge types (dns-account-01,
dns-persist-01), with the names acmectl and nginx use; apache2 -t refuses incomplete settings."""
import json
import threading
import time

import harness

from apache_harness import apache_factory  # noqa: F401  (fixture)
from apache_harness import tls_get
from test_apache_dns import _refused, knot, sans, served, vhost_pair, wait_valid_name  # noqa: F401


def spool_hook(a, knot, stop):
    """The driver runs as Apache's user, which cannot reach Knot's control socket: the hook (as an
    admin's script would call a provider's API) hands each change to the test, which applies it with
    knotc, and exits with the result."""
    spool = a.dir / "spool"
    spool.mkdir()
    spool.chmod(0o1777)
    log = a.dir / "hook.log"
    log.touch()
    log.chmod(0o666)
    hook = a.dir / "hook.sh"
    hook.write_text(f"""#!/bin/sh
env | grep '^ACME_' | sort >> {log}
r={spool}/req.$$
printf '%s\\n%s\\n%s\\n%s\\n' "$ACME_ZONE" "$1" "$2" "$3" > $r.tmp && mv $r.tmp $r
i=0; while [ ! -e $r.done ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
echo "hook says: $1 for $ACME_IDENTIFIER"
exit $(cat $r.done 2>/dev/null || echo 9)
""")
    hook.chmod(0o755)

    def serve():
        while not stop.is_set():
            for r in spool.glob("req.*[0-9]"):
                if (spool / (r.name + ".done")).exists():
                    continue
                zone, action, fqdn, value = r.read_text().split("\n")[:4]
                rc = 0
                try:
                    knot.knotc("zone-begin", zone)
                    knot.knotc("zone-set" if action == "add" else "zone-unset", zone, fqdn,
                               *(["60"] if action == "add" else []), "TXT", f'"{value}"')
                    knot.knotc("zone-commit", zone)
                except Exception:
                    rc = 1
                (spool / (r.name + ".done")).write_text(f"{rc}\n")
            time.sleep(0.1)

    threading.Thread(target=serve, daemon=True).start()
    return hook, log


def test_hook_wildcard(apache_factory, pebble_factory, knot, procs):
    pebble = pebble_factory(dns_server=knot.dns_address)
    a = apache_factory(pebble)
    stop = threading.Event()
    hook, log = spool_hook(a, knot, stop)
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
    harness.wait_for(lambda: knot.txt("_acme-challenge.example.test") == [], 20, what="the record removed")
    stop.set()


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


def test_dns_persist_record_in_status(apache_factory, pebble_next_factory, knot, procs, server_logs):
    """dns-persist-01 in Apache: the missing record in /acme-status (name and value), no validation at the
    CA; once created in Knot, the certificate follows."""
    pb = pebble_next_factory(dns_server=knot.dns_address)
    a = apache_factory(pb)
    a.acme_global = f"ACMEChallenge dns-persist-01\nACMEDNSResolver {knot.address}\n"
    a.vhosts = vhost_pair(a, "persist.example.test", "", cert="*.persist.example.test")
    server_logs.allow(r"ACME0090: acme: .*dns-persist-01 for \*\.persist\.example\.test: no TXT record")
    a.start(procs)

    def failed():
        status, body, _, _ = tls_get(a.https_port, "persist.example.test", "/acme-status")
        assert status == 200
        return next((c for c in json.loads(body)["certificates"] if c.get("identifier_errors")), None)
    c = harness.wait_for(failed, 60, interval=0.3, what="the dns-persist-01 record in /acme-status")
    e = c["identifier_errors"][0]
    assert e["identifier"] == "dns:*.persist.example.test", c
    assert e["dns_persist_record"]["name"] == "_validation-persist.persist.example.test", e
    want = e["dns_persist_record"]["value"]
    assert want.startswith("pebble.letsencrypt.org; accounturi=") and want.endswith("; policy=wildcard"), e
    assert f'create `_validation-persist.persist.example.test. IN TXT "{want}"`' in a.log()
    assert pb.proc.log_text().count("Pulled a task from the Tasks queue") == 0, "no validation at the CA"
    knot.knotc("zone-begin", "example.test")
    knot.knotc("zone-set", "example.test", "_validation-persist.persist.example.test.", "60", "TXT", f'"{want}"')
    knot.knotc("zone-commit", "example.test")
    def renew():
        status, body, _, _ = tls_get(a.https_port, "persist.example.test",
                                     "/acme-status?renew=_wildcard.persist.example.test", method="POST")
        return status if status in (200, 202) else None
    harness.wait_for(renew, 10, interval=0.3, what="the renewal accepted")
    def issued():
        # the CA's certificate (the self-signed fallback names *.persist.example.test too)
        c = next(iter(json.loads(tls_get(a.https_port, "persist.example.test", "/acme-status")[1])["certificates"]))
        _, _, der, _ = tls_get(a.https_port, "a.persist.example.test")
        return c["not_after"] and "DNS:*.persist.example.test" in sans(der)
    harness.wait_for(issued, 60, interval=0.3, what="the wildcard certificate through dns-persist-01")


def test_dns_persist_until(apache_factory, pebble_next_factory, knot, procs, server_logs):
    """persistUntil in Apache: a passed one does not count (no validation at the CA, /acme-status says it
    expired); one that passes before the certificate is renewed: issued, with a warning in the log (once)
    and per identifier in /acme-status."""
    pb = pebble_next_factory(dns_server=knot.dns_address)
    a = apache_factory(pb)
    a.acme_global = f"ACMEChallenge dns-persist-01\nACMEDNSResolver {knot.address}\n"
    a.vhosts = vhost_pair(a, "until.example.test", "", cert="until.example.test")
    server_logs.allow(r"acme: .*dns-persist-01 for until\.example\.test: no TXT record")
    server_logs.allow(r"acme: \"until\.example\.test\": dns-persist-01 record .* passes in")
    a.start(procs)
    name = "_validation-persist.until.example.test"

    def cert(cond):
        status, body, _, _ = tls_get(a.https_port, "until.example.test", "/acme-status")
        assert status == 200
        return next((c for c in json.loads(body)["certificates"] if cond(c)), None)

    def renew():
        status, _, _, _ = tls_get(a.https_port, "until.example.test", "/acme-status?renew=until.example.test",
                                  method="POST")
        return status if status in (200, 202) else None

    # the account exists once the first attempt (no record yet) has failed
    c = harness.wait_for(lambda: cert(lambda c: c.get("identifier_errors")), 60, interval=0.3,
                         what="the first attempt's failure")
    want = c["identifier_errors"][0]["dns_persist_record"]["value"]
    past = int(time.time()) - 60
    knot.knotc("zone-begin", "example.test")
    knot.knotc("zone-set", "example.test", name + ".", "60", "TXT", f'"{want}; persistUntil={past}"')
    knot.knotc("zone-commit", "example.test")
    harness.wait_for(renew, 10, interval=0.3, what="the renewal accepted")
    expired = f"its persistUntil={past} ({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(past))}) has passed"
    harness.wait_for(lambda: cert(lambda c: c.get("identifier_errors")
                                  and expired in c["identifier_errors"][0]["error"]), 60, interval=0.3,
                     what="the expired record in /acme-status")
    assert f'{expired}: the CA no longer accepts it): create `{name}. IN TXT "{want}"`' in a.log()
    assert pb.proc.log_text().count("Pulled a task from the Tasks queue") == 0, "no validation at the CA"

    soon = int(time.time()) + 3 * 86400
    knot.knotc("zone-begin", "example.test")
    knot.knotc("zone-unset", "example.test", name + ".", "TXT")
    knot.knotc("zone-set", "example.test", name + ".", "60", "TXT", f'"{want}; persistUntil={soon}"')
    knot.knotc("zone-commit", "example.test")
    harness.wait_for(renew, 10, interval=0.3, what="the renewal accepted")
    c = harness.wait_for(lambda: cert(lambda c: c.get("identifier_warnings")), 60, interval=0.3,
                         what="the warning in /acme-status")
    (w,) = c["identifier_warnings"]
    assert w["identifier"] == "dns:until.example.test" and w["dns_persist_record"]["name"] == name, w
    assert w["dns_persist_until"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(soon)), w
    assert f"persistUntil={soon}" in w["dns_persist_warning"] and "is renewed" in w["dns_persist_warning"], w
    assert c["identifier_errors"] == [] and c["not_after"], c
    assert a.log().count(w["dns_persist_warning"]) == 1, a.log()
