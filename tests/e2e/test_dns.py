"""DNS validation (dns-01) through RFC 2136 updates to a real authoritative server (Knot), Pebble
validating through it: names, wildcards, CNAME delegation, refused keys, cleanup."""
import json
import socket
import subprocess
import threading
import time

import pytest

import harness
import knot_harness

# Pebble asks Knot without recursion, and Knot follows no CNAME into another zone: the delegation's
# target stays inside example.test (the client would follow it anywhere: it asks SOA for the target).
# mix: an A record of its own, as `*` stops matching it once _acme-challenge.mix exists (RFC 4592).
ZONES = {
    "example.test": "_acme-challenge.delegated CNAME delegated.acme-challenges.example.test.\n"
                    "mix A 127.0.0.1\n",
    "challenges.test": "",
}


@pytest.fixture
def knot(tmp_path):
    why = knot_harness.available()
    if why:
        pytest.skip(why)
    k = knot_harness.Knot(tmp_path / "knot", ZONES)
    k.start()
    yield k
    k.stop()


@pytest.fixture
def dns_pebble(pebble_factory, knot):
    # Pebble checks TXT records (and resolves A records) through Knot
    return pebble_factory(dns_server=knot.dns_address)


def acmectl(acmectl_bin, tmp_path, pebble, knot, *cmd, key="acme-key-sha256", extra=(), timeout=120):
    keyfile = tmp_path / "tsig.key"
    if key is not None and not keyfile.exists():
        knot.key_file(key, keyfile)
    args = [str(acmectl_bin), "--state", str(tmp_path / "state"), "--ca", pebble.directory_url,
            "--ca-cert", str(pebble.ca_cert), "--contact", "admin@example.org", "--agree-tos", "-v",
            cmd[0], "--challenge", "dns-01", "--tsig-key", str(keyfile),
            "--dns-resolver", knot.address, "--dns-propagation-timeout", "20"] + list(extra) + list(cmd[1:])
    return harness.run_cmd(args, timeout=timeout)


def sans(path):
    return subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True, check=True).stdout


def test_dns01_name(acmectl_bin, tmp_path, dns_pebble, knot):
    p = acmectl(acmectl_bin, tmp_path, dns_pebble, knot, "issue", "www.example.test")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "DNS:www.example.test" in sans(tmp_path / "state/certs/www.example.test/fullchain.pem")
    # the record is gone, and so is the note of it in the store
    assert knot.txt("_acme-challenge.www.example.test") == []
    assert not (tmp_path / "state/certs/www.example.test/dns-pending.json").exists()


def test_dns01_wildcard_and_apex_sha512_line_key(acmectl_bin, tmp_path, dns_pebble, knot):
    # a `ALGORITHM:NAME:SECRET` key file; both values at _acme-challenge.example.test at once
    knot.key_file("acme-key-sha512", tmp_path / "tsig.key", fmt="line")
    p = acmectl(acmectl_bin, tmp_path, dns_pebble, knot, "issue", "*.example.test", "example.test")
    assert p.returncode == 0, p.stdout + p.stderr
    cert = tmp_path / "state/certs/_wildcard.example.test/fullchain.pem"
    san = sans(cert)
    assert "DNS:*.example.test" in san and "DNS:example.test" in san
    assert knot.txt("_acme-challenge.example.test") == []


def test_dns01_http01_mix(acmectl_bin, tmp_path, dns_pebble, knot):
    # the apex by http-01 (first choice), the wildcard by dns-01 (the only type it can use)
    p = acmectl(acmectl_bin, tmp_path, dns_pebble, knot, "issue", "*.mix.example.test", "mix.example.test",
                extra=["--challenge", "http-01,dns-01", "--http-listen", f"127.0.0.1:{dns_pebble.http_port}"])
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout + p.stderr
    assert "answering http-01 for mix.example.test" in out, out
    assert "answering dns-01 for *.mix.example.test" in out, out


def test_wildcard_without_dns_challenge(acmectl_bin, tmp_path, dns_pebble, knot):
    p = harness.run_cmd([str(acmectl_bin), "--state", str(tmp_path / "state"), "--ca", dns_pebble.directory_url,
                         "--ca-cert", str(dns_pebble.ca_cert), "--contact", "admin@example.org", "--agree-tos",
                         "issue", "--http-listen", f"127.0.0.1:{dns_pebble.http_port}", "*.example.test"],
                        timeout=60)
    assert p.returncode == 1
    assert "*.example.test: a wildcard needs a DNS challenge (dns-01), and none is configured" in p.stderr


def test_dns01_cname_delegation(acmectl_bin, tmp_path, dns_pebble, knot):
    # _acme-challenge.delegated.example.test is a CNAME: the value goes to its target (a TXT beside
    # the CNAME would be refused, and the propagation check asks the target), through --dns-server
    p = acmectl(acmectl_bin, tmp_path, dns_pebble, knot, "issue", "delegated.example.test",
                extra=["--dns-server", knot.dns_address])
    assert p.returncode == 0, p.stdout + p.stderr
    assert knot.txt("delegated.acme-challenges.example.test") == []


def test_dns01_cname_into_another_zone(acmectl_bin, tmp_path, pebble_factory, knot):
    # a CNAME into another zone: the update goes to that zone (Pebble, asking Knot without recursion,
    # cannot follow it, so the validation itself is not the point here: Pebble answers from a stand-in)
    knot.knotc("zone-begin", "example.test")
    knot.knotc("zone-set", "example.test", "_acme-challenge.other", "60", "CNAME", "other.challenges.test.")
    knot.knotc("zone-commit", "example.test")
    pb = pebble_factory()
    p = acmectl(acmectl_bin, tmp_path, pb, knot, "issue", "other.example.test")
    log = knot.proc.log_text()
    assert "[challenges.test.] DDNS, processing 1 updates" in log, log
    assert "removed 1 DNS record(s)" in p.stderr, p.stderr
    assert knot.txt("other.challenges.test") == []


@pytest.mark.parametrize("key", ["ro-key", "wrong-secret"])
def test_dns01_refused_key(acmectl_bin, tmp_path, dns_pebble, knot, key):
    keyfile = tmp_path / "tsig.key"
    if key == "wrong-secret":
        keyfile.write_text('key "acme-key-sha256" { algorithm hmac-sha256; '
                           'secret "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; };\n')
    else:
        knot.key_file(key, keyfile)
    p = acmectl(acmectl_bin, tmp_path, dns_pebble, knot, "issue", "refused.example.test")
    assert p.returncode == 1
    name = "ro-key" if key == "ro-key" else "acme-key-sha256"
    assert ('acmectl: dns:refused.example.test: dns-01 (rfc2136) for refused.example.test: DNS update '
            '(add _acme-challenge.refused.example.test.)') in p.stderr, p.stderr
    assert f'TSIG key "{name}": NOTAUTH without a valid TSIG signature (TSIG error ' in p.stderr
    # ro-key: known to Knot, not allowed to update; the other: Knot's secret differs
    assert ("BADKEY: the server does not accept this key here" if key == "ro-key" else
            "BADSIG: the server has another secret for this key") in p.stderr, p.stderr
    assert knot.txt("_acme-challenge.refused.example.test") == []


def test_dns01_cleanup_after_failed_validation(acmectl_bin, tmp_path, pebble_factory, knot):
    # Pebble asks another DNS server (challtestsrv): the validation fails, the record still goes
    pb = pebble_factory()
    p = acmectl(acmectl_bin, tmp_path, pb, knot, "issue", "fail.example.test")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "removed 1 DNS record(s)" in p.stderr
    assert knot.txt("_acme-challenge.fail.example.test") == []
    assert not (tmp_path / "state/certs/fail.example.test/dns-pending.json").exists()


def test_dns01_cleanup_after_crash(acmectl_bin, tmp_path, dns_pebble, knot):
    # a process killed after its update left the record and its note in the store
    knot.add_txt("example.test", "_acme-challenge.crash", "left-by-a-dead-process")
    d = tmp_path / "state/certs/crash.example.test"
    d.mkdir(parents=True)
    (d / "dns-pending.json").write_text(json.dumps(
        [{"name": "_acme-challenge.crash.example.test", "value": "left-by-a-dead-process"}]))
    assert knot.txt("_acme-challenge.crash.example.test") == ["left-by-a-dead-process"]
    p = acmectl(acmectl_bin, tmp_path, dns_pebble, knot, "issue", "crash.example.test")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "1 DNS record(s) left by an earlier run" in p.stdout + p.stderr
    assert knot.txt("_acme-challenge.crash.example.test") == []
    assert not (d / "dns-pending.json").exists()


def test_tsig_key_checked_at_configuration(acmectl_bin, tmp_path, dns_pebble, knot):
    bad = tmp_path / "tsig.key"
    bad.write_text('key "k" { algorithm hmac-md5; secret "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; };\n')
    p = acmectl(acmectl_bin, tmp_path, dns_pebble, knot, "issue", "x.example.test")
    assert p.returncode == 2
    assert 'TSIG algorithm "hmac-md5" is not supported' in p.stderr, p.stderr
    assert "AAECAwQF" not in p.stderr


def test_dns01_sha384_key(acmectl_bin, tmp_path, dns_pebble, knot):
    # hmac-sha384 (signed by libknot: libldns misnames it "hmac-shac384." and cannot): the update is
    # accepted and Knot's signed answer checked, the certificate issued, the record removed
    knot.key_file("acme-key-sha384", tmp_path / "tsig.key")
    p = acmectl(acmectl_bin, tmp_path, dns_pebble, knot, "issue", "sha384.example.test")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "DNS:sha384.example.test" in sans(tmp_path / "state/certs/sha384.example.test/fullchain.pem")
    assert knot.proc.log_text().count("[example.test.] DDNS, processing 1 updates") == 2   # add, delete
    assert knot.txt("_acme-challenge.sha384.example.test") == []


class MacFlipProxy:
    """TCP DNS in front of Knot that flips one bit of the TSIG MAC in every answer (the last MAC byte: an
    answer's TSIG record ends with the MAC, original id, error and an empty other data)."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.sock = socket.create_server((harness.LOOPBACK, 0))
        self.address = f"{harness.LOOPBACK}:{self.sock.getsockname()[1]}"
        self.flipped = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @staticmethod
    def _read_msg(conn):
        n = int.from_bytes(conn.recv(2, socket.MSG_WAITALL), "big")
        return conn.recv(n, socket.MSG_WAITALL) if n else b""

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, socket.create_connection(self.upstream, timeout=5) as up:
                query = self._read_msg(conn)
                up.sendall(len(query).to_bytes(2, "big") + query)
                answer = bytearray(self._read_msg(up))
                if len(answer) > 7 and answer[-2:] == b"\0\0":
                    answer[-7] ^= 1
                    self.flipped += 1
                conn.sendall(len(answer).to_bytes(2, "big") + answer)

    def close(self):
        harness.close_listener(self.sock, self.thread)


def test_dns01_answer_with_a_bad_signature(acmectl_bin, tmp_path, dns_pebble, knot):
    # Knot applies the update, but its answer arrives with a broken MAC: an error naming the server and
    # the key, never taken for a success (no validation asked for, no certificate)
    proxy = MacFlipProxy((knot.address, 53))
    knot.key_file("acme-key-sha384", tmp_path / "tsig.key")
    try:
        p = acmectl(acmectl_bin, tmp_path, dns_pebble, knot, "issue", "forged.example.test",
                    extra=["--dns-server", proxy.address])
    finally:
        proxy.close()
    assert p.returncode == 1, p.stdout + p.stderr
    assert proxy.flipped >= 1
    assert (f"DNS update (add _acme-challenge.forged.example.test.) in zone example.test. at {proxy.address} "
            'with TSIG key "acme-key-sha384": an answer without a valid TSIG signature (the signature does '
            "not verify") in p.stderr, p.stderr
    assert not (tmp_path / "state/certs/forged.example.test/fullchain.pem").exists()
    # the deletion's answer fails the same way: unconfirmed, the record stays noted for the next run
    assert (tmp_path / "state/certs/forged.example.test/dns-pending.json").exists()


def test_run_keeps_a_wildcard(acmectl_bin, tmp_path, dns_pebble, knot, procs):
    # the manager's path (what nginx runs): dns-01 for a wildcard, the record removed afterwards
    knot.key_file("acme-key-sha256", tmp_path / "tsig.key")
    status = tmp_path / "status.json"
    args = [str(acmectl_bin), "--state", str(tmp_path / "state"), "--ca", dns_pebble.directory_url,
            "--ca-cert", str(dns_pebble.ca_cert), "--contact", "admin@example.org", "--agree-tos",
            "run", "--challenge", "dns-01", "--dns-update", "rfc2136",
            "--dns-tsig-key", str(tmp_path / "tsig.key"),
            "--dns-resolver", knot.address, "--status-file", str(status), "*.run.example.test"]
    p = procs.start(args, name="acmectl-run")

    def valid():
        try:
            c = json.loads(status.read_text())["certificates"][0]
        except (OSError, ValueError, IndexError, KeyError):
            return False
        return c["state"] == "valid"
    harness.wait_for(valid, timeout=60, what="a valid wildcard certificate")
    assert "DNS:*.run.example.test" in sans(tmp_path / "state/certs/_wildcard.run.example.test/fullchain.pem")
    harness.wait_for(lambda: knot.txt("_acme-challenge.run.example.test") == [], timeout=10,
                     what="the record removed")
    p.stop()


@pytest.fixture
def knot_pair(tmp_path):
    """Two authoritative servers of the zones (ns1: the primary, Pebble's; ns2), not in sync: ns2 gets
    nothing by updates or transfers, only what a test adds to it, as a secondary that lags."""
    why = knot_harness.available()
    if why:
        pytest.skip(why)
    a1 = knot_harness.free_address()
    a2 = knot_harness.free_address(taken=(a1,))
    k1 = knot_harness.Knot(tmp_path / "knot1", ZONES, address=a1, ns_addresses=[a1, a2]).start()
    k2 = knot_harness.Knot(tmp_path / "knot2", ZONES, address=a2, ns_addresses=[a1, a2]).start()
    yield k1, k2
    k1.stop()
    k2.stop()


def _run_lagging(acmectl_bin, tmp_path, pebble, k1, procs, name, timeout):
    keyfile = tmp_path / "tsig.key"
    k1.key_file("acme-key-sha256", keyfile)
    args = [str(acmectl_bin), "--state", str(tmp_path / "state"), "--ca", pebble.directory_url,
            "--ca-cert", str(pebble.ca_cert), "--contact", "admin@example.org", "--agree-tos", "-v",
            "issue", "--challenge", "dns-01", "--tsig-key", str(keyfile), "--dns-resolver", k1.address,
            "--dns-propagation-timeout", str(timeout), name]
    return procs.start(args, name="acmectl-lag")


def test_dns01_waits_for_every_authoritative_server(acmectl_bin, tmp_path, pebble_factory, knot_pair, procs):
    k1, k2 = knot_pair
    pebble = pebble_factory(dns_server=k1.dns_address)
    p = _run_lagging(acmectl_bin, tmp_path, pebble, k1, procs, "lag.example.test", 30)
    owner = "_acme-challenge.lag.example.test"
    harness.wait_for(lambda: k1.txt(owner), timeout=20, what="the record on ns1")
    value = k1.txt(owner)[0]
    time.sleep(2)
    # ns2 does not answer it yet: the CA has not been asked
    assert k2.txt(owner) == []
    assert "is on every authoritative server" not in p.log_text()
    assert pebble.log_text().count("POST /chalZ/") == 0, pebble.log_text()
    k2.add_txt("example.test", "_acme-challenge.lag", value)
    assert p.wait_exit(timeout=30) == 0, p.log_text()
    assert "the dns-01 record for lag.example.test is on every authoritative server" in p.log_text()
    assert pebble.log_text().count("POST /chalZ/") >= 1     # what the CA logs when asked
    assert k1.txt(owner) == []


def test_dns01_propagation_timeout(acmectl_bin, tmp_path, pebble_factory, knot_pair, procs):
    k1, k2 = knot_pair
    pebble = pebble_factory(dns_server=k1.dns_address)
    p = _run_lagging(acmectl_bin, tmp_path, pebble, k1, procs, "lag2.example.test", 3)
    assert p.wait_exit(timeout=30) == 1, p.log_text()
    out = p.log_text()
    assert (f"acmectl: dns:lag2.example.test: dns-01 (rfc2136) for lag2.example.test: "
            f"_acme-challenge.lag2.example.test. TXT: not answered by ns2.example.test. ({k2.address}) "
            f"after 3 s (DNS propagation timeout)") in out, out
    assert "POST /chalZ/" not in pebble.log_text()
    assert k1.txt("_acme-challenge.lag2.example.test") == []


def test_dns01_unreachable_address_of_a_server(acmectl_bin, tmp_path, pebble_factory, procs):
    # ns1 has a second address nobody answers on (as an IPv6 address from a host without IPv6): it
    # counts for nothing once another address of ns1 answers the value; a server none of whose
    # addresses answers holds the issuance back until the timeout, named
    why = knot_harness.available()
    if why:
        pytest.skip(why)
    a1 = knot_harness.free_address()
    dead = knot_harness.free_address(taken=(a1,))
    k = knot_harness.Knot(tmp_path / "knot", ZONES, address=a1, ns_addresses=[[a1, dead]]).start()
    try:
        pebble = pebble_factory(dns_server=k.dns_address)
        p = _run_lagging(acmectl_bin, tmp_path, pebble, k, procs, "twoaddr.example.test", 20)
        assert p.wait_exit(timeout=60) == 0, p.log_text()
    finally:
        k.stop()

    a1 = knot_harness.free_address()
    k = knot_harness.Knot(tmp_path / "knot2", ZONES, address=a1, ns_addresses=[a1, dead]).start()
    try:
        (tmp_path / "b").mkdir()
        p = _run_lagging(acmectl_bin, tmp_path / "b", pebble, k, procs, "deadns.example.test", 3)
        assert p.wait_exit(timeout=60) == 1, p.log_text()
        assert f"not answered by ns2.example.test. ({dead}: no answer) after 3 s" in p.log_text(), p.log_text()
    finally:
        k.stop()
