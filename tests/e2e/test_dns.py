"""DNS validation (dns-01) through RFC 2136 updates to a real authoritative server (Knot), Pebble
validating through it: names, wildcards, CNAME delegation, refused keys, cleanup."""
import json
import subprocess

import pytest

import harness
import knot_harness

ZONES = {
    "example.test": "_acme-challenge.delegated CNAME delegated.challenges.test.\n",
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
            "--ca-cert", str(pebble.ca_cert), "--contact", "admin@example.org", "--agree-tos",
            cmd[0], "--challenge", "dns-01", "--tsig-key", str(keyfile),
            "--dns-resolver", knot.address, "--dns-propagation-timeout", "20"] + list(extra) + list(cmd[1:])
    return harness.run_cmd(args, timeout=timeout)


def sans(path):
    return subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True, check=True).stdout


def test_dns01_name(acmectl_bin, tmp_path, dns_pebble, knot):
    p = acmectl(acmectl_bin, tmp_path, dns_pebble, knot, "issue", "www.example.test", extra=["-v"]
                if False else [])
    assert p.returncode == 0, p.stdout + p.stderr
    assert "DNS:www.example.test" in sans(tmp_path / "state/certs/www.example.test/fullchain.pem")
    # the record is gone, and so is the note of it in the store
    assert knot.txt("_acme-challenge.www.example.test") == []
    assert not (tmp_path / "state/certs/www.example.test/dns-pending.json").exists()
