"""acmectl as the docs describe it (issue #15): failures recorded with a reason, contacts kept."""
import json
import socket

import harness
from test_acmectl import Ctl


def status(ctl):
    p = ctl.ok("status", "--json")
    return p, {c["name"]: c for c in json.loads(p.stdout)["certificates"]}


def test_failed_first_issue_is_listed_with_its_error(acmectl_bin, tmp_path, pebble):
    ctl = Ctl(acmectl_bin, tmp_path / "state", pebble)
    # Pebble validates on its HTTP port, where nothing answers: the authorization fails
    p = ctl.run("issue", "--http-listen", f"127.0.0.1:{harness.free_port()}", "fail.example.org")
    assert p.returncode == 1, p.stderr
    p, certs = status(ctl)
    assert "no certificate" not in p.stderr
    c = certs["fail.example.org"]
    assert c["state"] == "pending" and c["failures"] == 1
    assert c["last_error"], c
    lst = ctl.ok("list")
    assert "no certificate" not in lst.stderr
    row = [ln for ln in lst.stdout.splitlines() if ln.startswith("fail.example.org")]
    assert row and not row[0].rstrip().endswith(" -"), lst.stdout


def test_local_renew_failure_is_recorded_with_its_reason(acmectl_bin, tmp_path, pebble):
    ctl = Ctl(acmectl_bin, tmp_path / "state", pebble)
    ctl.ok("issue", "--http-listen", f"127.0.0.1:{pebble.http_port}", "local.example.org")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        p = ctl.run("renew", "--force", "--http-listen", f"127.0.0.1:{port}", "local.example.org")
    finally:
        busy.close()
    assert p.returncode == 1
    _, certs = status(ctl)
    c = certs["local.example.org"]
    assert c["state"] == "failing" and c["failures"] == 1
    assert c["last_error"] and str(port) in c["last_error"], c


def account_json(state):
    (f,) = list((state / "accounts").glob("*/account.json"))
    return json.loads(f.read_text())


def test_account_find_keeps_the_recorded_contacts(acmectl_bin, tmp_path, pebble):
    ctl = Ctl(acmectl_bin, tmp_path / "state", pebble)
    ctl.ok("issue", "--http-listen", f"127.0.0.1:{pebble.http_port}", "contact.example.org")
    assert account_json(ctl.state)["contact"] == ["mailto:admin@example.org"]

    def bare(*cmd):
        # as an admin types it: no --contact
        a = [str(acmectl_bin), "--state", str(ctl.state), "--ca", pebble.directory_url,
             "--ca-cert", str(pebble.ca_cert), "--agree-tos", *cmd]
        p = harness.run_cmd(a, timeout=120)
        assert p.returncode == 0, p.stderr
    bare("account", "find")
    assert account_json(ctl.state)["contact"] == ["mailto:admin@example.org"]
    bare("account", "rollover")
    bare("renew", "--force", "--http-listen", f"127.0.0.1:{pebble.http_port}", "contact.example.org")
    assert account_json(ctl.state)["contact"] == ["mailto:admin@example.org"]
