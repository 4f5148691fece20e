"""dns-account-01 (draft-ietf-acme-dns-account-label) against the current Pebble, validating through
Knot: the record goes to _<label>._acme-challenge.<domain>, the label from the account URL."""
import base64
import hashlib
import json

import harness
from test_dns import knot, sans  # noqa: F401 (fixture)
from test_dns_publishers import knotc_hook


def label(account_url):
    return base64.b32encode(hashlib.sha256(account_url.encode()).digest()[:10]).decode().lower()


def test_dns_account01_through_a_hook(acmectl_bin, tmp_path, pebble_next_factory, knot):
    # the hook shows the name exactly, and its environment the type
    pb = pebble_next_factory(dns_server=knot.dns_address)
    hook, log = knotc_hook(tmp_path, knot)
    p = harness.run_cmd([
        str(acmectl_bin), "--state", str(tmp_path / "state"), "--ca", pb.directory_url, "--ca-cert",
        str(pb.ca_cert), "--contact", "admin@example.org", "--agree-tos", "-v", "issue",
        "--challenge", "dns-account-01", "--dns-hook", str(hook), "--dns-resolver", knot.address,
        "--dns-propagation-timeout", "20", "hooked.acct.example.test"], timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    url = json.loads(next((tmp_path / "state").rglob("account.json")).read_text())["url"]
    lines = log.read_text().splitlines()
    name = f"_{label(url)}._acme-challenge.hooked.acct.example.test."
    assert [x.split(" ")[:2] for x in lines if x.startswith(("add ", "del "))] == [["add", name], ["del", name]]
    assert "ACME_CHALLENGE_TYPE=dns-account-01" in lines
    assert knot.txt(name.rstrip(".")) == []


def test_dns_account01_wildcard_and_apex(acmectl_bin, tmp_path, pebble_next_factory, knot):
    pb = pebble_next_factory(dns_server=knot.dns_address)
    keyfile = knot.key_file("acme-key-sha256", tmp_path / "tsig.key")
    p = harness.run_cmd([
        str(acmectl_bin), "--state", str(tmp_path / "state"), "--ca", pb.directory_url, "--ca-cert",
        str(pb.ca_cert), "--contact", "admin@example.org", "--agree-tos", "-v", "issue",
        "--challenge", "dns-account-01", "--tsig-key", str(keyfile), "--dns-resolver", knot.address,
        "--dns-propagation-timeout", "20", "*.acct.example.test", "acct.example.test"], timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    san = sans(tmp_path / "state/certs/_wildcard.acct.example.test/fullchain.pem")
    assert "DNS:*.acct.example.test" in san and "DNS:acct.example.test" in san
    out = p.stdout + p.stderr
    assert "answering dns-account-01 for *.acct.example.test (rfc2136)" in out, out
    # the name Knot was asked to update is the draft's, for this account's URL
    acct = next((tmp_path / "state").rglob("account.json"))
    url = json.loads(acct.read_text())["url"]
    name = f"_{label(url)}._acme-challenge.acct.example.test."
    assert f"[example.test.] DDNS, processing 1 updates" in knot.proc.log_text()
    assert f"the dns-account-01 record for *.acct.example.test is on every authoritative server" in out, out
    assert knot.txt(name.rstrip(".")) == []
