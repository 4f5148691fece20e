"""acmectl as the docs describe it (issue #15): failures recorded with a reason, contacts kept."""
import json
import os
import pwd
import re
import socket
from pathlib import Path

import pytest

import harness
from apache_harness import apache_factory  # noqa: F401  (fixture)
from nginx_harness import issuer_block, nginx_factory  # noqa: F401
from test_acmectl import Ctl
from test_redis_store import redis  # noqa: F401  (fixture)


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


# ------------------------------------------------ item 2: not behind a running server's back

def _refused(p, server):
    return p.returncode == 1 and f"is managed by a running {server}" in p.stderr \
        and "ACMEStatusRenew on" in p.stderr and "--ignore-server" in p.stderr


def test_renew_refused_in_a_running_nginx_state_dir(acmectl_bin, pebble, nginx_factory, tmp_path):
    name = "managed.nginx.example.org"
    https = harness.free_port()
    state = tmp_path / "state"
    conf = issuer_block("pebble", pebble, state) + f"""
    server {{
        listen 127.0.0.1:{pebble.http_port};
        server_name {name};
        location / {{ return 200; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {name};
        acme_certificate pebble;
        location / {{ return 200; }}
    }}
"""
    n = nginx_factory(conf, wait_port=https)
    harness.wait_for(lambda: (state / "certs" / name / "fullchain.pem").exists(), 40, what="the certificate")
    ctl = Ctl(acmectl_bin, state, pebble)
    def meta():
        m = json.loads((state / "certs" / name / "meta.json").read_text())
        return {k: m.get(k) for k in ("renew_at", "failures", "last_error", "next_try")}
    harness.wait_for(lambda: (state / "certs" / name / "meta.json").exists() and meta()["renew_at"], 10,
                     what="the renewal time the server chose")
    before = meta()
    p = ctl.run("renew", "--force", "--http-listen", f"127.0.0.1:{harness.free_port()}", name)
    assert _refused(p, "nginx"), p.stderr
    assert meta() == before
    p = ctl.run("issue", "--http-listen", f"127.0.0.1:{harness.free_port()}", name)
    assert _refused(p, "nginx"), p.stderr
    assert meta() == before
    # the override gets past the check (and then fails here: nothing answers on that port)
    p = ctl.run("renew", "--force", "--ignore-server", "--http-listen", f"127.0.0.1:{harness.free_port()}",
                name)
    assert "is managed by a running" not in p.stderr
    # a stopped server holds nothing
    n.stop()
    p = ctl.run("renew", "--http-listen", f"127.0.0.1:{harness.free_port()}", name)
    assert "is managed by a running" not in p.stderr and p.returncode == 0, p.stderr


def test_renew_refused_in_a_running_apache_state_dir(acmectl_bin, apache_factory, pebble, procs):
    name = "managed.apache.example.org"
    a = apache_factory(pebble, name="apache-managed")
    a.vhosts = a.managed_vhosts([name])
    a.start(procs)
    a.wait_valid(name)
    ctl = Ctl(acmectl_bin, a.state, pebble)
    p = ctl.run("renew", "--force", "--http-listen", f"127.0.0.1:{harness.free_port()}", name)
    assert _refused(p, "Apache"), p.stderr


# ------------------------------------------------ item 4: the README's cluster store, prefix=shop

def test_prefix_as_in_acme_storage(acmectl_bin, tmp_path, pebble, redis):
    url = redis.url()           # as in `acme_storage redis://127.0.0.1:6379 prefix=shop`
    p = harness.run_cmd([str(acmectl_bin), "--storage", url, "--prefix", "shop", "--ca", pebble.directory_url,
                         "--ca-cert", str(pebble.ca_cert), "--agree-tos", "issue", "--http-listen",
                         f"127.0.0.1:{pebble.http_port}", "shop.example.org"], timeout=120)
    assert p.returncode == 0, p.stderr
    assert "shop:certs/shop.example.org/fullchain.pem" in redis.keys("shop:*")

    def run(*a):
        return harness.run_cmd([str(acmectl_bin), "--storage", url, *a], timeout=60)
    p = run("--prefix", "shop", "list")
    assert p.returncode == 0 and "shop.example.org" in p.stdout, p.stderr
    # the same store as the URL form
    p = harness.run_cmd([str(acmectl_bin), "--storage", redis.url("?prefix=shop"), "list"], timeout=60)
    assert "shop.example.org" in p.stdout
    # without it: an empty table, and why
    p = run("list")
    assert p.returncode == 0 and "shop.example.org" not in p.stdout
    assert "other prefixes of this Redis hold some: shop: (--prefix shop)" in p.stderr, p.stderr
    p = run("status", "--json")
    assert json.loads(p.stdout)["certificates"] == [] and "--prefix shop" in p.stderr
    # refused where it means nothing
    p = harness.run_cmd([str(acmectl_bin), "--state", str(tmp_path / "s"), "--prefix", "shop", "list"])
    assert p.returncode == 2 and "only with --storage redis://" in p.stderr
    p = run("--prefix", "x", "--storage", redis.url("?prefix=y"), "list")
    assert p.returncode == 2 and "has a prefix already" in p.stderr


# ------------------------------------------------ item 8: --help, the man page and docs/acmectl.md agree

ROOT = Path(__file__).resolve().parents[2]
OPT_RX = r"(?<![\w-])--[a-z][a-z0-9-]*"


def _man_text():
    t = (ROOT / "debian" / "acmectl.1").read_text()
    return re.sub(r"\\f[BIRP]", "", t).replace("\\-", "-")


def _sources(acmectl_bin):
    p = harness.run_cmd([str(acmectl_bin), "--help"])
    assert p.returncode == 0
    return {"acmectl --help": p.stdout, "debian/acmectl.1": _man_text(),
            "docs/acmectl.md": (ROOT / "docs" / "acmectl.md").read_text()}


def test_help_man_page_and_docs_name_the_same_options(acmectl_bin):
    src = (ROOT / "acmectl" / "acmectl.c").read_text()
    # the option tables the program parses are the reference
    table = {"--" + o for o in re.findall(r'\{ "([a-z][a-z0-9-]*)", (?:required|no)_argument', src)}
    table.add("--json")     # status --json, parsed by hand
    assert {"--state", "--storage", "--prefix", "--insecure", "--ignore-server"} <= table
    for where, text in _sources(acmectl_bin).items():
        found = set(re.findall(OPT_RX, text))
        assert found == table, f"{where}: missing {sorted(table - found)}, unknown {sorted(found - table)}"


def test_help_man_page_and_docs_name_the_same_commands(acmectl_bin):
    s = _sources(acmectl_bin)
    cmds = {
        "acmectl --help": re.findall(r"^  ([a-z][a-z-]*)", s["acmectl --help"].split("commands:")[1], re.M),
        "debian/acmectl.1": re.findall(r"^\.B ([a-z][a-z-]*)",
                                       s["debian/acmectl.1"].split(".SH COMMANDS")[1].split(".SH")[0], re.M),
        "docs/acmectl.md": re.findall(r"^\| `([a-z][a-z-]*)", s["docs/acmectl.md"], re.M),
    }
    subs = {
        "acmectl --help": re.findall(r"account (.*?)(?:\n|$)", s["acmectl --help"])[0],
        "debian/acmectl.1": " ".join(re.findall(r"^\.B account ([a-z]+)", s["debian/acmectl.1"], re.M)),
        "docs/acmectl.md": re.findall(r"`account ([^`]*)`", s["docs/acmectl.md"])[0],
    }
    ref = set(cmds["acmectl --help"])
    assert {"issue", "renew", "list", "migrate", "upgrade-storage"} <= ref
    ref_sub = set(re.findall(r"[a-z]+", subs["acmectl --help"])) - {"key"}
    assert ref_sub == {"show", "find", "rollover", "update", "deactivate"}
    for where in cmds:
        assert set(cmds[where]) == ref, f"{where}: {sorted(set(cmds[where]) ^ ref)}"
        assert set(re.findall(r"[a-z]+", subs[where])) - {"key"} == ref_sub, (where, subs[where])
    # the man page no longer recommends renewing behind a running server's back
    for where, text in s.items():
        assert not re.search(r"runuser[^\n]*acmectl[^\n]* renew", text), where


# ------------------------------------------------ item 3: nginx's acme_storage_key and the worker user

@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a worker user other than the master's)")
def test_nginx_t_refuses_a_storage_key_the_worker_cannot_read(nginx_factory, pebble, tmp_path):
    key = tmp_path / "keys" / "storage.key"
    key.parent.mkdir()
    key.write_bytes(os.urandom(32))
    os.chmod(key, 0o600)                    # root's, as `head -c 32 /dev/urandom > FILE; chmod 600 FILE` makes it
    os.chmod(tmp_path, 0o755)
    os.chmod(tmp_path.parent, 0o755)
    base = issuer_block("pebble", pebble, tmp_path / "state")
    ng = nginx_factory(f"acme_storage redis://127.0.0.1:{harness.free_port()} prefix=shop;\n"
                       f"acme_storage_key {key};\n" + base, start=False, user="www-data",
                       allowed=(r"\"acme_storage_key\" .* cannot read it",))
    ok, out = ng.test_config()
    assert not ok, out
    assert re.search(r'"acme_storage_key" "' + re.escape(str(key)) + r'": the worker user "www-data", as which the '
                     r"ACME client runs, cannot read it \(owner uid 0, group gid 0, mode 0600\).* in \S+nginx\.conf:\d+",
                     out), out
    assert "state_path" not in out
    # what it says to do works
    pw = pwd.getpwnam("www-data")
    os.chown(key, pw.pw_uid, pw.pw_gid)
    ok, out = ng.test_config()
    assert "acme_storage_key" not in out, out
