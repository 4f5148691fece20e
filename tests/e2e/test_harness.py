"""Tests of the e2e harness itself (no acmectl needed)."""

import os
import re
import signal
import socket
import ssl
import sys
import textwrap
import time
import urllib.error
from pathlib import Path

import pytest

import harness
import leakcheck
from harness import (HarnessError, LogWatcher, Process, dns_query, find_error_lines,
                     free_port, http_request, run_cmd)

E2E_DIR = Path(__file__).resolve().parent


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of ours still "exists"; treat as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------
# ports, CA
# --------------------------------------------------------------------------

def test_free_port_tcp_and_udp():
    ports = {free_port(udp=True) for _ in range(20)}
    assert len(ports) == 20
    p = ports.pop()
    t = socket.socket()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        t.bind(("127.0.0.1", p))
        u.bind(("127.0.0.1", p))
    finally:
        t.close()
        u.close()


def test_free_port_shared_between_processes(tmp_path, monkeypatch):
    """The processes of a parallel run share a registry: a port one of them handed out (listed there) is
    never handed out by another, and every port handed out is listed."""
    reg = tmp_path / "ports"
    other = run_cmd([sys.executable, "-c", "import harness; print(*(harness.free_port() for _ in range(50)))"],
                    env=harness.child_env({harness.PORT_REGISTRY_ENV: reg, "PYTHONPATH": Path(__file__).parent}),
                    check=True)
    theirs = {int(p) for p in other.stdout.split()}
    assert len(theirs) == 50 and {int(p) for p in reg.read_text().split()} == theirs
    # ports this process never gave out (the kernel picks them as it picked theirs) but another did
    monkeypatch.setattr(harness, "_handed_out", set())
    monkeypatch.setenv(harness.PORT_REGISTRY_ENV, str(reg))
    ours = {free_port() for _ in range(50)}
    assert len(ours) == 50 and not ours & theirs
    assert {int(p) for p in reg.read_text().split()} == theirs | ours


def test_test_ca_server_cert(test_ca):
    cp = run_cmd(["openssl", "verify", "-CAfile", test_ca.ca_cert, test_ca.cert])
    assert cp.returncode == 0, cp.stdout + cp.stderr
    text = run_cmd(["openssl", "x509", "-in", test_ca.cert, "-noout", "-text"], check=True).stdout
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text
    root = run_cmd(["openssl", "x509", "-in", test_ca.ca_cert, "-noout", "-text"],
                   check=True).stdout
    assert "prime256v1" in root or "P-256" in root
    assert "CA:TRUE" in root


# --------------------------------------------------------------------------
# DNS (pebble-challtestsrv)
# --------------------------------------------------------------------------

def test_dns_default_and_add_a(dns):
    name = f"anything-{os.getpid()}.example.org"
    assert dns.resolve(name) == ["127.0.0.1"]
    assert dns.resolve(name, "AAAA") == []
    dns.add_a(name, ["127.0.0.2"])
    assert dns.resolve(name) == ["127.0.0.2"]
    # same over TCP, hand-built packet
    ans = dns_query(name, "A", port=dns.dns_port, tcp=True)
    assert ans.rcode == 0 and ans.values("A") == ["127.0.0.2"]
    dns.clear_a(name)
    assert dns.resolve(name) == ["127.0.0.1"]


def test_dns_txt_and_reset(dns):
    dns.add_a("node2.example.net", "127.0.0.2")
    dns.set_txt("_acme-challenge.example.net", "digest-value")
    assert dns.resolve("_acme-challenge.example.net", "TXT") == ["digest-value"]
    dns.reset()
    assert dns.resolve("node2.example.net") == ["127.0.0.1"]
    assert dns.resolve("_acme-challenge.example.net", "TXT") == []


# --------------------------------------------------------------------------
# Pebble
# --------------------------------------------------------------------------

def test_pebble_directory_over_verified_tls(pebble):
    d = http_request(pebble.directory_url, ca_file=pebble.ca_cert).json()
    for k in ("newNonce", "newAccount", "newOrder"):
        assert d[k].startswith(pebble.base_url + "/")
    assert d["meta"]["externalAccountRequired"] is False
    # verification is real: the system trust store does not know our root
    with pytest.raises(urllib.error.URLError) as ei:
        http_request(pebble.directory_url, context=ssl.create_default_context())
    assert isinstance(ei.value.reason, ssl.SSLCertVerificationError)
    assert pebble.directory_url == f"https://127.0.0.1:{pebble.port}/dir"
    assert pebble.management_url.startswith("https://127.0.0.1:")
    assert pebble.roots().startswith("-----BEGIN CERTIFICATE-----")
    assert pebble.intermediates().startswith("-----BEGIN CERTIFICATE-----")
    assert len({pebble.port, pebble.management_port, pebble.http_port, pebble.tls_port}) == 4


def test_pebble_issuance_counts_and_cluster_dns(pebble, dns, acme_test_client, tmp_path):
    """A full http-01 issuance through the harness: the name is mapped to
    127.0.0.2 in the mock DNS, so Pebble must use challtestsrv to find the
    responder listening on 127.0.0.2:<httpPort>."""
    host = "node2.cluster.test"
    dns.add_a(host, "127.0.0.2")
    client = acme_test_client(pebble)
    client.register()
    responder = harness.Http01Responder(pebble.http_port, host="127.0.0.2").start()
    try:
        chain, key = client.issue([host], pebble.http_port, responder=responder)
    finally:
        responder.stop()
    assert (host, ) == tuple({h.split(":")[0] for h, _ in responder.requests})
    assert pebble.order_count() == 1
    assert pebble.issued_count() == 1
    assert pebble.request_count("/order-plz") >= 1
    assert pebble.account_count() >= 1
    # the chain verifies against the root from the management API
    (tmp_path / "chain.pem").write_text(chain)
    roots = pebble.write_roots(tmp_path / "roots.pem")
    cp = run_cmd(["openssl", "verify", "-CAfile", roots, "-untrusted", tmp_path / "chain.pem",
                  tmp_path / "chain.pem"])
    assert cp.returncode == 0, cp.stdout + cp.stderr
    serial = run_cmd(["openssl", "x509", "-in", tmp_path / "chain.pem", "-noout", "-serial"],
                     check=True).stdout
    assert pebble.cert_status(serial)["Status"] == "Valid"
    assert pebble.issued_serials() == [harness.normalize_serial(serial)]


def test_pebble_counters_are_per_test(pebble):
    # the previous test issued on the shared Pebble; counting starts anew
    assert pebble.order_count() == 0 and pebble.issued_count() == 0


def test_pebble_restart_keeps_directory_url(pebble_factory, acme_test_client):
    pb = pebble_factory(env={"PEBBLE_WFE_NONCEREJECT": "0"})
    url, ports = pb.directory_url, (pb.port, pb.management_port, pb.http_port, pb.tls_port)
    root_before = pb.roots()
    client = acme_test_client(pb)
    client.register()
    assert pb.account_count() == 1
    old_pid = pb.proc.pid
    pb.restart()
    assert not _pid_alive(old_pid)
    assert pb.directory_url == url
    assert (pb.port, pb.management_port, pb.http_port, pb.tls_port) == ports
    assert "newOrder" in pb.directory()
    assert pb.roots() != root_before          # new CA on every start
    assert pb.account_count() == 0            # state is gone
    with pytest.raises(harness.AcmeError) as ei:
        client.new_order(["gone.example.com"])
    assert "accountDoesNotExist" in ei.value.problem.get("type", "")
    assert "Configured to reject 0% of good nonces" in pb.log_text()


def test_pebble_env_and_fixed_ports(pebble_factory):
    hp, tp = free_port(), free_port()
    pb = pebble_factory(http_port=hp, tls_port=tp,
                        env={"PEBBLE_ALTERNATE_ROOTS": "1", "PEBBLE_CHAIN_LENGTH": "2"})
    assert (pb.http_port, pb.tls_port) == (hp, tp)
    cfg = pb.config_path.read_text()
    assert f'"httpPort": {hp}' in cfg and f'"tlsPort": {tp}' in cfg
    roots = pb.all_roots()
    assert len(roots) == 2 and roots[0] != roots[1]
    assert pb.intermediates(1).startswith("-----BEGIN CERTIFICATE-----")
    assert "Disabling random VA sleeps" in pb.log_text()


def test_pebble_eab(pebble_factory, acme_test_client):
    key = leakcheck.EAB_HMAC_KEY
    pb = pebble_factory(eab_keys={"kid-1": key})
    assert pb.directory()["meta"]["externalAccountRequired"] is True
    c = acme_test_client(pb)
    with pytest.raises(harness.AcmeError) as ei:
        c.register()
    assert "externalAccountRequired" in ei.value.problem.get("type", "")
    assert c.register(eab_kid="kid-1", eab_hmac_key=key)["status"] == "valid"


# --------------------------------------------------------------------------
# error-log checking
# --------------------------------------------------------------------------

NGINX_LOG = """\
2024/05/01 10:00:00 [notice] 100#100: using the "epoll" event method
2024/05/01 10:00:01 [warn] 100#100: something mildly odd
2024/05/01 10:00:02 [error] 101#101: *1 acme: order failed for example.com
2024/05/01 10:00:03 [emerg] 100#100: bind() to 127.0.0.1:80 failed
nginx: [alert] could not open error log file
some [error] in the middle of a line is not a level
"""

APACHE_LOG = """\
[Wed May 01 10:00:00.123456 2024] [mpm_event:notice] [pid 10:tid 11] AH00489: resuming
[Wed May 01 10:00:01.123456 2024] [ssl:warn] [pid 10:tid 11] AH01909: no cert
[Wed May 01 10:00:02.123456 2024] [md:error] [pid 10:tid 11] acme failed
[Wed May 01 10:00:03.123456 2024] [core:alert] [pid 10:tid 11] bad thing
[Wed May 01 10:00:04.123456 2024] [:emerg] [pid 10:tid 11] anonymous module
"""


def test_check_error_log_nginx(tmp_path, check_error_log):
    log = tmp_path / "error.log"
    log.write_text(NGINX_LOG)
    with pytest.raises(AssertionError, match=r"\[error\].*order failed"):
        check_error_log(log)
    bad = find_error_lines(log)
    assert len(bad) == 3 and "[emerg]" in bad[1] and bad[2].startswith("nginx: [alert]")
    check_error_log(log, allowed=[r"order failed for example\.com", r"bind\(\) to",
                                  "could not open error log"])
    with pytest.raises(AssertionError, match="emerg"):
        check_error_log(log, allowed=[r"order failed"])
    check_error_log(tmp_path / "missing.log")  # no file, no errors
    # since= skips old content
    off = log.stat().st_size
    check_error_log(log, since=off)


def test_check_error_log_apache(tmp_path, check_error_log):
    log = tmp_path / "apache_error.log"
    log.write_text(APACHE_LOG)
    bad = find_error_lines(log)
    assert [re.search(r"\] \[([^\]]*)\]", b).group(1) for b in bad] == \
        ["md:error", "core:alert", ":emerg"]
    with pytest.raises(AssertionError):
        check_error_log(log, allowed=["acme failed"])
    check_error_log(log, allowed=["acme failed", "bad thing", "anonymous module"])


def test_log_watcher(tmp_path):
    log = tmp_path / "e.log"
    log.write_text("2024/05/01 10:00:02 [error] 1#1: old error\n")
    w = LogWatcher()
    w.watch(log, from_end=True)
    w.check()  # old content ignored
    with open(log, "a") as f:
        f.write("2024/05/01 10:00:03 [error] 1#1: new error\n")
    with pytest.raises(AssertionError, match="new error"):
        w.check()
    w.allow("new error")
    w.check()


# --------------------------------------------------------------------------
# Process helper
# --------------------------------------------------------------------------

LISTENER = ("import socket,sys,time\n"
            "s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
            "print('listening', flush=True)\n"
            "time.sleep(600)\n")


def test_process_wait_port_log_and_stop_group(tmp_path):
    port = free_port()
    script = tmp_path / "listen.py"
    script.write_text(LISTENER)
    # a shell with a background grandchild: stop() must take down the whole group
    p = Process(["sh", "-c", f'sleep 600 & echo child=$!; exec /usr/bin/python3 {script} {port}'],
                name="listener", log_path=tmp_path / "listener.log")
    with p:
        p.wait_port(port, timeout=5)
        p.wait_log(r"listening", timeout=5)
        child = int(p.wait_log(r"child=(\d+)").group(1))
        assert _pid_alive(child)
    assert not p.alive()
    assert not _pid_alive(child)
    assert "exited with" in p.log_text()


def test_process_sigkill_when_sigterm_ignored(tmp_path):
    p = Process(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"],
                log_path=tmp_path / "stubborn.log").start()
    p.wait_log("ready", timeout=5)
    t = time.monotonic()
    rc = p.stop(timeout=0.5)
    assert rc == -signal.SIGKILL
    assert time.monotonic() - t < 5


def test_process_early_exit_is_reported(tmp_path):
    p = Process(["sh", "-c", "echo boom-from-child; exit 3"], log_path=tmp_path / "x.log").start()
    with pytest.raises(HarnessError, match="boom-from-child"):
        p.wait_port(free_port(), timeout=5)
    assert p.returncode == 3


def test_run_cmd_timeout(tmp_path):
    cp = run_cmd(["sh", "-c", "echo out; echo err >&2; exit 4"])
    assert (cp.returncode, cp.stdout, cp.stderr) == (4, "out\n", "err\n")
    t = time.monotonic()
    with pytest.raises(HarnessError, match="timeout"):
        run_cmd(["sh", "-c", "sleep 600"], timeout=0.3)
    assert time.monotonic() - t < 5


def test_child_env_has_no_proxy(monkeypatch):
    monkeypatch.setenv("https_proxy", "http://192.0.2.1:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://192.0.2.1:3128")
    env = harness.child_env({"FOO": "1"})
    assert env["FOO"] == "1"
    assert not any(k.lower().endswith("_proxy") for k in env)


# --------------------------------------------------------------------------
# fixtures' teardown, seen from a nested pytest run
# --------------------------------------------------------------------------

INNER_TESTS = '''
import os, pytest

def test_log_error_fails_at_teardown(procs, server_logs, tmp_path):
    log = tmp_path / "srv_error.log"
    p = procs.start(["sh", "-c", "echo ok; sleep 600"], name="srv", wait_log="ok")
    open(os.environ["PIDS_FILE"], "a").write(f"{p.pid}\\n")
    server_logs.watch(log, allowed=["tolerated"])
    log.write_text("2024/05/01 10:00:02 [error] 1#1: tolerated thing\\n"
                   "2024/05/01 10:00:03 [error] 1#1: unexpected-failure-xyz\\n")

def test_failing_test_still_stops_pebble(pebble_factory):
    pb = pebble_factory()
    open(os.environ["PIDS_FILE"], "a").write(f"{pb.proc.pid}\\n")
    assert False, "intentional"

def test_missing_acmectl(acmectl_bin):
    pass
'''

INNER_CONFTEST = '''
import importlib.util, sys
sys.path.insert(0, {e2e!r})
_spec = importlib.util.spec_from_file_location("e2e_conftest", {conftest!r})
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
globals().update({{k: v for k, v in vars(_mod).items() if not k.startswith("__")}})
'''


def test_fixture_teardown_in_nested_run(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "conftest.py").write_text(INNER_CONFTEST.format(
        e2e=str(E2E_DIR), conftest=str(E2E_DIR / "conftest.py")))
    (inner / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    pids = tmp_path / "pids"
    env = harness.child_env({"PIDS_FILE": pids, "ACME_BUILD": tmp_path / "no-build"})
    cp = run_cmd([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE",
                  "--rootdir", inner, "--basetemp", tmp_path / "basetemp", inner],
                 env=env, cwd=inner, timeout=120)
    out = cp.stdout + cp.stderr
    assert cp.returncode == 1, out
    assert re.search(r"1 failed, 1 passed, 2 errors", out), out
    assert "unexpected-failure-xyz" in out and "tolerated thing" not in out, out
    assert "acmectl binary not found" in out, out
    assert "intentional" in out
    # failure report carries the pebble log tail
    assert "ACME directory available at" in out, out
    for pid in map(int, pids.read_text().split()):
        assert not _pid_alive(pid), f"pid {pid} survived the nested run"


INNER_APACHE_TEST = '''
import os
from apache_harness import apache_factory  # noqa: F401

def test_apache_error_lines(apache_factory, procs):
    a = apache_factory(None, name="apache-logcheck")
    a.allow("tolerated-apache-thing")       # before start(): still counts
    a.start(procs)
    open(os.environ["PIDS_FILE"], "a").write(f"{a.proc.pid}\\n")
    with open(a.error_log, "a") as f:
        for level, text in (("acme:error", "tolerated-apache-thing"), ("acme:crit", "unexpected-apache-xyz"),
                            ("warn", "warned-apache-thing"), ("ssl:error", "unexpected-ssl-xyz")):
            f.write(f"[Wed Dec 02 17:00:00.000000 2026] [{level}] [pid 1:tid 2] {text}\\n")
'''


def test_apache_error_log_checked_at_teardown(tmp_path, acme_build):
    """Apache's error log is checked like nginx's (LogWatcher levels and allow()) before its directory is
    removed: the test passes, its teardown reports the unexpected lines and only those."""
    if harness.sanitizer_logs() is not None and "APACHE_BIN" not in os.environ:
        pytest.skip("under the sanitizers without $APACHE_BIN")
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "conftest.py").write_text(INNER_CONFTEST.format(
        e2e=str(E2E_DIR), conftest=str(E2E_DIR / "conftest.py")))
    (inner / "test_inner_apache.py").write_text(textwrap.dedent(INNER_APACHE_TEST))
    pids = tmp_path / "pids"
    env = harness.child_env({"PIDS_FILE": pids, "ACME_BUILD": acme_build})
    cp = run_cmd([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE",
                  "--rootdir", inner, "--basetemp", tmp_path / "basetemp", inner],
                 env=env, cwd=inner, timeout=120)
    out = cp.stdout + cp.stderr
    assert re.search(r"1 passed, 1 error", out), out
    reported = [ln for ln in out.splitlines() if re.search(r"/error\.log: \[", ln)]
    assert any("unexpected-apache-xyz" in ln for ln in reported), out
    assert any("unexpected-ssl-xyz" in ln for ln in reported), out
    assert not any("tolerated-apache-thing" in ln or "warned-apache-thing" in ln for ln in reported), out
    for pid in map(int, pids.read_text().split()):
        assert not _pid_alive(pid), f"pid {pid} survived the nested run"
