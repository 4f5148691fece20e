"""dns-persist-01 (draft-ietf-acme-dns-persist) against the current Pebble, which validates through Knot:
`acmectl dns-persist-record` prints the record; the client checks it with a read-only query before it
answers, so a missing or wrong record fails here, clearly, without a validation at the CA."""
import json
import re
import time

import harness
from test_dns import knot, sans  # noqa: F401 (fixture)


def ctl(acmectl_bin, tmp_path, pb, *args, timeout=120):
    return harness.run_cmd([str(acmectl_bin), "--state", str(tmp_path / "state"), "--ca", pb.directory_url,
                            "--ca-cert", str(pb.ca_cert), "--contact", "admin@example.org", "--agree-tos",
                            "-v"] + list(args), timeout=timeout)


def issue(acmectl_bin, tmp_path, pb, knot, *names):
    return ctl(acmectl_bin, tmp_path, pb, "issue", "--challenge", "dns-persist-01", "--dns-resolver",
               knot.address, *names)


def account_url(tmp_path):
    return json.loads(next((tmp_path / "state").rglob("account.json")).read_text())["url"]


def add_record(knot, line):
    # `_validation-persist.NAME. IN TXT "VALUE"`, as printed
    owner, _, _, value = line.split(" ", 3)
    knot.knotc("zone-begin", "example.test")
    knot.knotc("zone-set", "example.test", owner, "60", "TXT", value)
    knot.knotc("zone-commit", "example.test")


def challenge_statuses(pb):
    """Pebble logs each validation it starts; none may have started for a refused identifier."""
    return pb.proc.log_text().count("Pulled a task from the Tasks queue")


def test_dns_persist_missing_then_created_wildcard(acmectl_bin, tmp_path, pebble_next_factory, knot):
    pb = pebble_next_factory(dns_server=knot.dns_address)
    # no record yet: a clear message with the record to create, and nothing asked of the CA's validator
    p = issue(acmectl_bin, tmp_path, pb, knot, "*.persist.example.test")
    assert p.returncode == 1, p.stdout + p.stderr
    url = account_url(tmp_path)
    want = (f'_validation-persist.persist.example.test. IN TXT "pebble.letsencrypt.org; accounturi={url}; '
            'policy=wildcard"')
    assert ("dns-persist-01 for *.persist.example.test: no TXT record at _validation-persist.persist.example.test "
            f"authorizes this account: create `{want}`") in p.stderr, p.stderr
    assert challenge_statuses(pb) == 0, pb.proc.log_text()
    assert "acmectl: next attempt not before" in p.stderr     # a retry, not a dead end

    # the record acmectl prints, created once; the wildcard needs policy=wildcard
    r = ctl(acmectl_bin, tmp_path, pb, "dns-persist-record", "--wildcard", "persist.example.test")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == want
    add_record(knot, r.stdout.strip())
    p = issue(acmectl_bin, tmp_path, pb, knot, "*.persist.example.test", "persist.example.test")
    assert p.returncode == 0, p.stdout + p.stderr
    san = sans(tmp_path / "state/certs/_wildcard.persist.example.test/fullchain.pem")
    assert "DNS:*.persist.example.test" in san and "DNS:persist.example.test" in san
    assert challenge_statuses(pb) >= 1      # the count sees validations when there are some
    # nothing was published or removed: the record stays
    assert knot.txt("_validation-persist.persist.example.test") == [want.split(" ", 3)[3].strip('"')]


def test_dns_persist_wrong_records(acmectl_bin, tmp_path, pebble_next_factory, knot):
    pb = pebble_next_factory(dns_server=knot.dns_address)
    r = ctl(acmectl_bin, tmp_path, pb, "dns-persist-record", "nowild.example.test")
    assert r.returncode == 0, r.stdout + r.stderr
    add_record(knot, r.stdout.strip())
    # a record without policy=wildcard does not cover the wildcard; another account's does not count
    knot.add_txt("example.test", "_validation-persist.other",
                 "pebble.letsencrypt.org; accounturi=https://127.0.0.1/my-account/other")
    p = issue(acmectl_bin, tmp_path, pb, knot, "*.nowild.example.test")
    assert p.returncode == 1
    assert "(no policy=wildcard, which a wildcard needs)" in p.stderr, p.stderr
    assert knot.txt("_validation-persist.other.example.test") == [
        "pebble.letsencrypt.org; accounturi=https://127.0.0.1/my-account/other"]
    p = issue(acmectl_bin, tmp_path, pb, knot, "other.example.test")
    assert p.returncode == 1
    assert "(accounturi=https://127.0.0.1/my-account/other is another account's)" in p.stderr, p.stderr
    assert challenge_statuses(pb) == 0
    # the plain name is covered
    p = issue(acmectl_bin, tmp_path, pb, knot, "nowild.example.test")
    assert p.returncode == 0, p.stdout + p.stderr


def test_dns_persist_until_warns(acmectl_bin, tmp_path, pebble_next_factory, knot):
    """persistUntil in 5 days, before the certificate (Pebble: 90 days) is renewed: issued, with a warning
    in the log and, per identifier, in acmectl status --json."""
    pb = pebble_next_factory(dns_server=knot.dns_address)
    soon = int(time.time()) + 5 * 86400
    r = ctl(acmectl_bin, tmp_path, pb, "dns-persist-record", "--until", str(soon), "until.example.test")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith(f'; persistUntil={soon}"')
    add_record(knot, r.stdout.strip())
    p = issue(acmectl_bin, tmp_path, pb, knot, "until.example.test")
    assert p.returncode == 0, p.stdout + p.stderr
    # 5 days less the seconds since (or exactly 5 days, by a clock's rounding); once
    warning = re.search(r"acme: \"until.example.test\": (dns-persist-01 record _validation-persist.until.example.test "
                        f"for until.example.test: its persistUntil={soon} \\(\\S+Z\\) passes in [45] day\\(s\\), "
                        r"before \"until.example.test\" \(valid until \S+Z\) is renewed; replace it by a record "
                        r"with a later persistUntil, or none \(acmectl dns-persist-record prints it\))$",
                        p.stderr, re.M)
    assert warning and p.stderr.count("passes in") == 1, p.stderr
    st = json.loads(ctl(acmectl_bin, tmp_path, pb, "status", "--json").stdout)
    (c,) = st["certificates"]
    (w,) = c["identifier_warnings"]
    assert w["identifier"] == "dns:until.example.test", w
    assert w["dns_persist_record"] == {"name": "_validation-persist.until.example.test",
                                       "value": r.stdout.strip().split(" ", 3)[3].strip('"')}, w
    assert w["dns_persist_until"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(soon)), w
    assert w["dns_persist_warning"] == warning.group(1), w
    assert c["identifier_errors"] == [] and c["state"] == "valid", c


def test_dns_persist_until_passed(acmectl_bin, tmp_path, pebble_next_factory, knot):
    """persistUntil passed: the record does not count, nothing is asked of the CA's validator, and the
    message names the record, says it expired and gives the one to create."""
    pb = pebble_next_factory(dns_server=knot.dns_address)
    r = ctl(acmectl_bin, tmp_path, pb, "dns-persist-record", "past.example.test")
    assert r.returncode == 0, r.stdout + r.stderr
    want = r.stdout.strip()
    past = int(time.time()) - 3600
    add_record(knot, want[:-1] + f'; persistUntil={past}"')
    p = issue(acmectl_bin, tmp_path, pb, knot, "past.example.test")
    assert p.returncode == 1, p.stdout + p.stderr
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(past))
    assert (f"dns-persist-01 for past.example.test: no TXT record at _validation-persist.past.example.test "
            f"authorizes this account (its persistUntil={past} ({when}) has passed: the CA no longer accepts it): "
            f"create `{want}`") in p.stderr, p.stderr
    assert challenge_statuses(pb) == 0, pb.proc.log_text()
    (c,) = json.loads(ctl(acmectl_bin, tmp_path, pb, "status", "--json").stdout)["certificates"]
    assert c["identifier_errors"][0]["dns_persist_record"]["name"] == "_validation-persist.past.example.test", c


def test_dns_persist_record_published_once(acmectl_bin, tmp_path, pebble_next_factory, knot):
    # --publish: the record goes in through an RFC 2136 update (and stays), then issuance finds it
    pb = pebble_next_factory(dns_server=knot.dns_address)
    keyfile = knot.key_file("acme-key-sha256", tmp_path / "tsig.key")
    r = ctl(acmectl_bin, tmp_path, pb, "dns-persist-record", "--publish", "--tsig-key", str(keyfile),
            "--dns-resolver", knot.address, "--dns-propagation-timeout", "20", "*.pub.example.test")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "acmectl: published _validation-persist.pub.example.test (rfc2136); it stays until you remove it" \
        in r.stderr, r.stderr
    value = r.stdout.strip().split(" ", 3)[3].strip('"')
    assert value.endswith("; policy=wildcard")
    assert knot.txt("_validation-persist.pub.example.test") == [value]
    p = issue(acmectl_bin, tmp_path, pb, knot, "*.pub.example.test", "pub.example.test")
    assert p.returncode == 0, p.stdout + p.stderr
    assert knot.txt("_validation-persist.pub.example.test") == [value]
    # the update options go with --publish only
    r = ctl(acmectl_bin, tmp_path, pb, "dns-persist-record", "--tsig-key", str(keyfile), "x.example.test")
    assert r.returncode == 2 and "go with --publish" in r.stderr, r.stderr
