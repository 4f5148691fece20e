"""mod_acme under faults: restarts and kills during issuance, challenge failures, a CA that forgets the
account, a read-only state directory, an untrusted CA certificate."""

import json
import re
import os
import signal
import time

import pytest

import harness
from apache_harness import apache_factory  # noqa: F401  (fixture)
from apache_harness import cert_serial, issued_and_served, stored_serial, tls_get


def test_graceful_restart_during_issuance_resumes_the_order(apache_factory, pebble, procs):
    name = "inflight.apache.example.org"
    a = apache_factory(pebble, name="apache-inflight")
    a.vhosts = a.managed_vhosts([name])
    a.start(procs, wait=False)
    harness.wait_for(lambda: "is pending" in a.log(), timeout=20, what="an order in flight")
    a.proc.send_signal(signal.SIGUSR1)
    issued_and_served(a, name)
    # the old generation's driver finished the issuance it had started (or the new one resumed it)
    assert "ACME0081" in a.log()
    time.sleep(1.0)
    assert pebble.order_count() == 1
    assert pebble.issued_count() == 1


def test_sigkill_during_issuance_then_restart(apache_factory, pebble, procs):
    name = "killed.apache.example.org"
    a = apache_factory(pebble, name="apache-killed")
    a.vhosts = a.managed_vhosts([name])
    a.start(procs, wait=False)
    harness.wait_for(lambda: "is pending" in a.log(), timeout=20, what="an order in flight")
    a.proc.kill()           # SIGKILL to the whole process group
    # whatever is on disk parses (no half-written files)
    for p in a.state.rglob("*.pem"):
        assert p.stat().st_size > 0, p
    a.start(procs)
    issued_and_served(a, name)
    # the stored order was looked at again; when the CA had validated while nothing answered, that order
    # is invalid and one new order replaces it, never more
    assert pebble.order_count() <= 2
    assert pebble.issued_count() == 1


def test_graceful_restart_storm_during_issuance(apache_factory, pebble, procs):
    name = "storm.apache.example.org"
    a = apache_factory(pebble, name="apache-storm")
    a.vhosts = a.managed_vhosts([name])
    a.start(procs, wait=False)
    harness.wait_for(lambda: "ACME0079" in a.log(), timeout=20, what="a driver")
    for _ in range(20):
        a.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.15)
    issued_and_served(a, name)
    time.sleep(1.0)
    assert pebble.order_count() == 1
    assert pebble.issued_count() == 1


def test_challenge_failure_reaches_log_and_status(apache_factory, pebble, procs, server_logs):
    # http-01 only, and nothing listens where the validator connects: the challenge fails
    name = "invalid.apache.example.org"
    a = apache_factory(pebble, name="apache-invalid", listen_http=False, acme_global="ACMEChallenge http-01")
    a.vhosts = a.managed_vhosts([name])
    server_logs.allow(r"ACME0090: acme: .*next try at")
    a.start(procs)

    def failing():
        status, body, _, _ = tls_get(a.https_port, name, "/acme-status")
        assert status == 200
        c = json.loads(body)["certificates"][0]
        return c if c.get("last_error") else None
    st = harness.wait_for(failing, timeout=20, interval=0.3, what="the failure in the status")
    assert st["state"] == "failing" and name in st["last_error"], st
    assert "http-01" in st["last_error"]
    assert [e["identifier"] for e in st["identifier_errors"]] == [f"dns:{name}"], st
    assert re.search(r"connection|refused|connect", st["identifier_errors"][0]["error"]), st
    assert "next try at" in a.log() and name in a.log()
    status, _, _, _ = tls_get(a.https_port, name)
    assert status == 503


def test_ca_forgets_the_account(apache_factory, pebble, procs):
    name = "forgotten.apache.example.org"
    a = apache_factory(pebble, name="apache-forgotten")
    a.vhosts = a.managed_vhosts([name])
    a.start(procs)
    st, der = issued_and_served(a, name)
    pebble.restart()            # accounts, orders and roots forgotten
    assert a.renew(name).status == 202
    harness.wait_for(lambda: stored_serial(a.state, st["name"]) != cert_serial(der), timeout=30,
                     what="a certificate from the restarted CA")
    harness.wait_for(lambda: cert_serial(tls_get(a.https_port, name)[2]) == stored_serial(a.state, st["name"]),
                     timeout=10, what="the new certificate served")


def test_read_only_state_keeps_serving(apache_factory, pebble, procs, server_logs):
    name = "readonly.apache.example.org"
    a = apache_factory(pebble, name="apache-readonly")
    a.vhosts = a.managed_vhosts([name])
    server_logs.allow(r"ACME0090: acme: ")
    a.start(procs)
    st, der = issued_and_served(a, name)
    certdir = a.state / "certs" / st["name"]
    modes = {p: p.stat().st_mode for p in [a.state, a.state / "certs", certdir]}
    try:
        for p in modes:
            os.chmod(p, 0o500)
        assert a.renew(name).status == 202
        harness.wait_for(lambda: (a.cert_status(name) or {}).get("last_error"), timeout=20,
                         what="the store failure in the status")
        for _ in range(5):
            status, _, der2, _ = tls_get(a.https_port, name)
            assert status == 200 and der2 == der
        assert (certdir / "fullchain.pem").stat().st_size > 0
    finally:
        for p, m in modes.items():
            os.chmod(p, m & 0o7777)


def test_ca_tls_certificate_is_verified(apache_factory, pebble, procs, server_logs):
    name = "untrusted.apache.example.org"
    a = apache_factory(pebble, name="apache-untrusted")
    a.ca_file = None            # no ACMETrustedCertificate: Pebble's test root is not in the system store
    a.vhosts = a.managed_vhosts([name])
    server_logs.allow(r"ACME0090: acme: .*next try at")
    a.start(procs)
    st = harness.wait_for(lambda: (a.cert_status(name) or {}).get("last_error") and a.cert_status(name),
                          timeout=20, what="the TLS failure in the status")
    assert "certificate" in st["last_error"].lower(), st["last_error"]
    assert pebble.order_count() == 0
    assert tls_get(a.https_port, name)[0] == 503


def _driver_shm(pid, driver_pid):
    """(address, bytes) of mod_acme's shared segment in process pid: an anonymous shared mapping (APR keeps
    its size in the first 8 bytes, the usable part follows) whose driver_pid field (offset 4) is the
    driver's."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb") as mem:
        for line in maps:
            f = line.split()
            if f[1] != "rw-s" or "/dev/zero" not in line:
                continue
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            mem.seek(lo)
            data = mem.read(hi - lo)
            if int.from_bytes(data[12:16], "little") == driver_pid:
                return lo + 8, data[8:]
    raise AssertionError("mod_acme's shared memory not found")


@pytest.mark.serial
def test_driver_killed_mid_write_is_repaired(apache_factory, procs, server_logs):
    """A driver that dies in the middle of writing the shared memory (here: stopped, its half-done writes
    put in place as a crash would leave them, then SIGKILLed): the status sequence left odd and the renew
    slots it held (one being taken, the others being filled). Readers do not wait for it, and the next
    driver (another prefork child) repairs all of it: its status is served again and renew requests are
    queued and taken."""
    name = "shm.apache.example.org"
    a = apache_factory(None, name="apache-shm", mpm="prefork",
                       ca_url=f"http://127.0.0.1:{harness.free_port()}/dir")
    a.vhosts = a.managed_vhosts([name])
    server_logs.allow(r"ACME0090: acme: .*next try at")
    server_logs.allow(r"exit signal Killed")
    a.start(procs)
    old = harness.wait_for(lambda: a.status().get("driver_pid"), timeout=20, what="the driver's status")
    # a request the driver takes leaves the name in slot 0: that finds the slots whatever the layout
    assert a.renew(name).status == 202
    harness.wait_for(lambda: "ACME0080" in a.log(), timeout=10, what="the renew request to be taken")

    os.kill(old, signal.SIGSTOP)
    try:
        base, data = _driver_shm(old, old)
        seq = int.from_bytes(data[8:12], "little")
        slot0 = data.index(name.encode() + b"\0") - 4
        slot_size = 4 + 256
        with open(f"/proc/{old}/mem", "r+b") as mem:
            mem.seek(base + 8)
            mem.write((seq | 1).to_bytes(4, "little"))              # died between the two increments
            for i in range(16):                                      # every slot held by the dead driver:
                state = (old << 2) | (3 if i == 0 else 1)           # slot 0 being taken, the rest filled
                mem.seek(base + slot0 + i * slot_size)
                mem.write(state.to_bytes(4, "little"))
    finally:
        os.kill(old, signal.SIGKILL)
    # a reader does not wait for a writer that is gone (the store's view serves meanwhile)
    t0 = time.monotonic()
    a.status()
    assert time.monotonic() - t0 < 0.8
    taken = a.log().count("ACME0080")

    def new_driver():
        pid = a.status().get("driver_pid")
        return pid and pid != old and pid
    new = harness.wait_for(new_driver, timeout=20, what="another child to drive, its status served")
    assert new != old and "ACME0021" in a.log()
    # the request the dead driver was taking is taken again, and the queue takes new ones
    harness.wait_for(lambda: a.log().count("ACME0080") > taken, timeout=10, what="the interrupted request")
    taken = a.log().count("ACME0080")
    for _ in range(3):
        assert a.renew(name).status == 202
    harness.wait_for(lambda: a.log().count("ACME0080") >= taken + 3, timeout=10, what="the new requests")
