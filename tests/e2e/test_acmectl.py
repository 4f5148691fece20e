"""acmectl against a real Pebble: the core library end to end."""
import json
import os
import re
import stat
import subprocess

import pytest

import harness
import leakcheck


def x509_text(pem_path, *args):
    return subprocess.run(["openssl", "x509", "-in", str(pem_path), "-noout"] + list(args),
                          capture_output=True, text=True, check=True).stdout


def split_pem(path):
    text = open(path).read()
    return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", text, re.S)


class Ctl:
    """Runs acmectl with a state dir and a Pebble."""

    def __init__(self, binary, state, pebble, extra=()):
        self.binary = binary
        self.state = state
        self.pebble = pebble
        self.extra = list(extra)

    def args(self, *cmd, ca=None, agree=True):
        a = [str(self.binary), "--state", str(self.state),
             "--ca", ca or self.pebble.directory_url, "--ca-cert", str(self.pebble.ca_cert),
             "--contact", "admin@example.org"]
        if agree:
            a.append("--agree-tos")
        return a + self.extra + list(cmd)

    def run(self, *cmd, ca=None, agree=True, timeout=120):
        return harness.run_cmd(self.args(*cmd, ca=ca, agree=agree), timeout=timeout)

    def http(self, *cmd, **kw):
        return self.run(cmd[0], "--http-listen", f"127.0.0.1:{self.pebble.http_port}", *cmd[1:], **kw)

    def ok(self, *cmd, **kw):
        p = self.run(*cmd, **kw)
        assert p.returncode == 0, f"acmectl {' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}"
        return p


@pytest.fixture
def ctl(acmectl_bin, tmp_path, pebble):
    return Ctl(acmectl_bin, tmp_path / "state", pebble)


def verify_chain(pebble, fullchain, tmp_path, index=0):
    roots = tmp_path / f"roots{index}.pem"
    pebble.write_roots(roots, index=index)
    certs = split_pem(fullchain)
    inter = tmp_path / "inter.pem"
    inter.write_text("".join(certs[1:]))
    p = subprocess.run(["openssl", "verify", "-CAfile", str(roots), "-untrusted", str(inter),
                        str(fullchain)], capture_output=True, text=True)
    return p.returncode == 0, p.stdout + p.stderr


def test_issue_http01(ctl, pebble, tmp_path):
    p = ctl.http("issue", "example.org", "www.example.org")
    assert p.returncode == 0, p.stderr
    d = ctl.state / "certs" / "example.org"
    fullchain, privkey, meta = d / "fullchain.pem", d / "privkey.pem", d / "meta.json"
    ok, out = verify_chain(pebble, fullchain, tmp_path)
    assert ok, out
    san = x509_text(fullchain, "-ext", "subjectAltName")
    assert "DNS:example.org" in san and "DNS:www.example.org" in san
    # the key matches the certificate
    pub_cert = subprocess.run(["openssl", "x509", "-in", str(fullchain), "-noout", "-pubkey"],
                              capture_output=True, text=True).stdout
    pub_key = subprocess.run(["openssl", "pkey", "-in", str(privkey), "-pubout"],
                             capture_output=True, text=True).stdout
    assert pub_cert == pub_key
    # modes: keys 0600, state directories 0700
    assert stat.S_IMODE(os.stat(privkey).st_mode) == 0o600
    for sub in [ctl.state, ctl.state / "certs", d, ctl.state / "accounts"]:
        assert stat.S_IMODE(os.stat(sub).st_mode) == 0o700, sub
    acct = list((ctl.state / "accounts").iterdir())
    assert len(acct) == 1
    assert stat.S_IMODE(os.stat(acct[0] / "account.key").st_mode) == 0o600
    m = json.loads(meta.read_text())
    assert m  # parsed
    assert not (d / "order.json").exists(), "the finished order must be forgotten"
    assert not list(ctl.state.rglob("*.tmp*")) and not list(ctl.state.rglob("*.next"))
    assert pebble.order_count() == 1
    # the default key type is ECDSA P-256
    assert "prime256v1" in x509_text(fullchain, "-text") or "P-256" in x509_text(fullchain, "-text")


def test_issue_tlsalpn01_rsa(ctl, pebble, tmp_path):
    p = ctl.run("issue", "--challenge", "tls-alpn-01", "--tls-listen", f"127.0.0.1:{pebble.tls_port}",
                "--key", "rsa:2048", "alpn.example.org")
    assert p.returncode == 0, p.stderr
    fullchain = ctl.state / "certs" / "alpn.example.org_rsa2048" / "fullchain.pem"
    ok, out = verify_chain(pebble, fullchain, tmp_path)
    assert ok, out
    assert "rsaEncryption" in x509_text(fullchain, "-text")


def test_issue_ip_identifier(ctl, pebble):
    p = ctl.http("issue", "127.0.0.1")
    assert p.returncode == 0, p.stderr
    fullchain = ctl.state / "certs" / "127.0.0.1" / "fullchain.pem"
    assert "IP Address:127.0.0.1" in x509_text(fullchain, "-ext", "subjectAltName")


def test_nonce_rejection(acmectl_bin, tmp_path, pebble_factory):
    peb = pebble_factory(env={"PEBBLE_WFE_NONCEREJECT": "50"})
    c = Ctl(acmectl_bin, tmp_path / "state", peb)
    p = c.http("issue", "nonce.example.org")
    assert p.returncode == 0, p.stderr
    assert (c.state / "certs" / "nonce.example.org" / "fullchain.pem").exists()


def test_authz_reuse(acmectl_bin, tmp_path, pebble_factory):
    peb = pebble_factory(env={"PEBBLE_AUTHZREUSE": "100"})
    c = Ctl(acmectl_bin, tmp_path / "state", peb)
    c.ok("issue", "--http-listen", f"127.0.0.1:{peb.http_port}", "reuse.example.org")
    c.ok("renew", "--force", "--http-listen", f"127.0.0.1:{peb.http_port}", "reuse.example.org")
    assert peb.issued_count() == 2


def test_eab_required(acmectl_bin, tmp_path, pebble_factory):
    key = leakcheck.EAB_HMAC_KEY
    peb = pebble_factory(eab_keys={"kid-1": key})
    c = Ctl(acmectl_bin, tmp_path / "state", peb)
    p = c.http("issue", "eab.example.org")
    assert p.returncode != 0
    assert "External Account Binding" in p.stderr
    assert not (c.state / "certs" / "eab.example.org" / "fullchain.pem").exists()
    c.extra = ["--eab-kid", "kid-1", "--eab-hmac-key", f"data:{key}"]
    p = c.http("issue", "eab.example.org")
    assert p.returncode == 0, p.stderr
    # the key in a file, and as a bare argument (as before data: existed)
    kf = tmp_path / "eab.key"
    kf.write_text(key + "\n")
    for i, arg in enumerate((str(kf), key)):
        c3 = Ctl(acmectl_bin, tmp_path / f"state-{i}", peb, ["--eab-kid", "kid-1", "--eab-hmac-key", arg])
        p = c3.http("issue", f"eab-{i}.example.org")
        assert p.returncode == 0, p.stderr
    # a key that is not base64url: refused before anything is sent, never shown
    kf.write_text(key + "*\n")
    for arg, needle in ((f"data:{key}*", "inline key"), (str(kf), str(kf)), (f"{key}*", "not data:KEY")):
        c4 = Ctl(acmectl_bin, tmp_path / "state-bad", peb, ["--eab-kid", "kid-1", "--eab-hmac-key", arg])
        p = c4.http("issue", "eab-bad.example.org")
        assert p.returncode == 2 and "--eab-hmac-key" in p.stderr and needle in p.stderr, p.stderr
        assert key not in p.stderr + p.stdout
    # a wrong key is refused by the CA with a clear message
    c2 = Ctl(acmectl_bin, tmp_path / "state2", peb,
             ["--eab-kid", "kid-1", "--eab-hmac-key", "AAAA" + key[4:]])
    p = c2.http("issue", "eab2.example.org")
    assert p.returncode != 0 and "account registration" in p.stderr


def test_terms_of_service_must_be_agreed(ctl, pebble):
    p = ctl.http("issue", "tos.example.org", agree=False)
    assert p.returncode != 0
    assert "terms of service" in p.stderr


def test_alternate_chain_preferred(acmectl_bin, tmp_path, pebble_factory):
    peb = pebble_factory(env={"PEBBLE_ALTERNATE_ROOTS": "2"})
    alt_root = tmp_path / "alt.pem"
    alt_root.write_text(peb.roots(1))
    alt_cn = re.search(r"CN\s*=\s*(.+)", x509_text(alt_root, "-subject")).group(1).strip()
    default_root = tmp_path / "r0.pem"
    default_root.write_text(peb.roots(0))
    default_cn = re.search(r"CN\s*=\s*(.+)", x509_text(default_root, "-subject")).group(1).strip()
    assert alt_cn != default_cn

    c = Ctl(acmectl_bin, tmp_path / "state", peb)
    c.ok("issue", "--http-listen", f"127.0.0.1:{peb.http_port}", "--preferred-chain", alt_cn,
         "chain.example.org")
    fullchain = c.state / "certs" / "chain.example.org" / "fullchain.pem"
    top = split_pem(fullchain)[-1]
    t = tmp_path / "top.pem"
    t.write_text(top)
    assert alt_cn in x509_text(t, "-issuer")
    ok, out = verify_chain(peb, fullchain, tmp_path, index=1)
    assert ok, out

    # without a preference the default chain is kept
    c2 = Ctl(acmectl_bin, tmp_path / "state2", peb)
    c2.ok("issue", "--http-listen", f"127.0.0.1:{peb.http_port}", "chain2.example.org")
    t.write_text(split_pem(c2.state / "certs" / "chain2.example.org" / "fullchain.pem")[-1])
    assert default_cn in x509_text(t, "-issuer")


def test_preferred_chain_compares_the_top_issuer_only(acmectl_bin, tmp_path, pebble_factory):
    # chains of leaf, intermediate and upper intermediate (root apart): the upper intermediate of the
    # alternate chain issues its lower one, but is not the top certificate's issuer (the alternate
    # root is), so naming it selects nothing and the default chain stays
    peb = pebble_factory(env={"PEBBLE_ALTERNATE_ROOTS": "1", "PEBBLE_CHAIN_LENGTH": "3"})
    lower = tmp_path / "lower1.pem"
    lower.write_text(peb.intermediates(1))
    upper_cn = re.search(r"CN\s*=\s*(.+)", x509_text(lower, "-issuer")).group(1).strip()
    alt_root = tmp_path / "alt.pem"
    alt_root.write_text(peb.roots(1))
    alt_cn = re.search(r"CN\s*=\s*(.+)", x509_text(alt_root, "-subject")).group(1).strip()
    assert upper_cn != alt_cn

    c = Ctl(acmectl_bin, tmp_path / "state", peb)
    p = c.ok("issue", "--http-listen", f"127.0.0.1:{peb.http_port}", "--preferred-chain", upper_cn,
             "top.example.org")
    assert f'no chain issued by "{upper_cn}", using the default' in p.stderr, p.stderr
    chain = split_pem(c.state / "certs" / "top.example.org" / "fullchain.pem")
    assert len(chain) >= 3
    t = tmp_path / "top.pem"
    t.write_text(chain[-1])
    assert alt_cn not in x509_text(t, "-issuer")
    ok, out = verify_chain(peb, c.state / "certs" / "top.example.org" / "fullchain.pem", tmp_path, index=0)
    assert ok, out

    # the alternate root's name selects the alternate chain
    c2 = Ctl(acmectl_bin, tmp_path / "state2", peb)
    c2.ok("issue", "--http-listen", f"127.0.0.1:{peb.http_port}", "--preferred-chain", alt_cn,
          "top2.example.org")
    t.write_text(split_pem(c2.state / "certs" / "top2.example.org" / "fullchain.pem")[-1])
    assert alt_cn in x509_text(t, "-issuer")


def serial_of(path):
    return x509_text(path, "-serial").strip().split("=")[1]


def test_revoke(ctl, pebble):
    ctl.ok("issue", "--http-listen", f"127.0.0.1:{pebble.http_port}", "revoke.example.org")
    fullchain = ctl.state / "certs" / "revoke.example.org" / "fullchain.pem"
    serial = serial_of(fullchain)
    assert pebble.cert_status(serial)["Status"] == "Valid"
    ctl.ok("revoke", "--reason", "4", "revoke.example.org")
    assert pebble.cert_status(serial)["Status"] == "Revoked"


def test_revoke_with_certificate_key(ctl, pebble):
    ctl.ok("issue", "--http-listen", f"127.0.0.1:{pebble.http_port}", "revoke2.example.org")
    serial = serial_of(ctl.state / "certs" / "revoke2.example.org" / "fullchain.pem")
    ctl.ok("revoke", "--with-cert-key", "revoke2.example.org")
    assert pebble.cert_status(serial)["Status"] == "Revoked"


def test_account_rollover_and_deactivate(ctl, pebble):
    before = json.loads(ctl.ok("account", "show").stdout)
    ctl.ok("account", "rollover", "--key", "ecdsa:384")
    after = json.loads(ctl.ok("account", "show").stdout)
    assert before["url"] == after["url"]
    assert before["thumbprint"] != after["thumbprint"]
    assert after["key_type"] == "ecdsa:384"
    # the new key works for orders
    ctl.ok("issue", "--http-listen", f"127.0.0.1:{pebble.http_port}", "roll.example.org")
    ctl.ok("account", "deactivate")
    assert pebble.account_count() >= 1
    # a fresh account is registered next time
    again = json.loads(ctl.ok("account", "show").stdout)
    assert again["url"] != before["url"]


def test_pebble_restart_forgets_account(ctl, pebble):
    ctl.ok("issue", "--http-listen", f"127.0.0.1:{pebble.http_port}", "forget.example.org")
    first = json.loads(ctl.ok("account", "show").stdout)["url"]
    pebble.restart()
    since = pebble.mark()
    p = ctl.ok("renew", "--force", "--http-listen", f"127.0.0.1:{pebble.http_port}",
               "forget.example.org")
    assert "registering again" in p.stderr
    second = json.loads(ctl.ok("account", "show").stdout)["url"]
    assert first != second
    assert pebble.issued_count(since=since) == 1


def test_renew_not_due_then_forced(ctl, pebble):
    ctl.ok("issue", "--http-listen", f"127.0.0.1:{pebble.http_port}", "renew.example.org")
    fullchain = ctl.state / "certs" / "renew.example.org" / "fullchain.pem"
    s1 = serial_of(fullchain)
    p = ctl.ok("renew", "--http-listen", f"127.0.0.1:{pebble.http_port}", "renew.example.org")
    assert "not due" in p.stdout
    assert serial_of(fullchain) == s1
    ctl.ok("renew", "--force", "--http-listen", f"127.0.0.1:{pebble.http_port}", "renew.example.org")
    assert serial_of(fullchain) != s1
    assert pebble.issued_count() == 2


def test_list_and_status(ctl, pebble):
    ctl.ok("issue", "--http-listen", f"127.0.0.1:{pebble.http_port}", "list.example.org",
           "www.list.example.org")
    out = ctl.ok("list").stdout
    assert "list.example.org,www.list.example.org" in out and "ecdsa:256" in out
    st = json.loads(ctl.ok("status", "--json").stdout)
    (c,) = st["certificates"]
    assert c["identifiers"] == ["list.example.org", "www.list.example.org"]
    assert c["key_type"] == "ecdsa:256"
    assert c["state"] == "valid"
    assert c["issuer"] == pebble.directory_url
    assert c["renewal_reason"] in ("lifetime", "ari")
    assert c["not_after"] > c["not_before"]
    assert "PRIVATE" not in json.dumps(st)


def test_ca_down_clear_error_nothing_written(ctl, pebble):
    dead = f"https://127.0.0.1:{harness.free_port()}/dir"
    p = ctl.http("issue", "down.example.org", ca=dead)
    assert p.returncode != 0
    assert "cannot reach the CA" in p.stderr and dead in p.stderr
    assert not (ctl.state / "certs" / "down.example.org" / "fullchain.pem").exists()
    # renewing a stored certificate while the CA is down keeps it and says when to retry
    ctl.ok("issue", "--http-listen", f"127.0.0.1:{pebble.http_port}", "down2.example.org")
    fullchain = ctl.state / "certs" / "down2.example.org" / "fullchain.pem"
    before = fullchain.read_bytes()
    p = ctl.run("renew", "--force", "--http-listen", f"127.0.0.1:{pebble.http_port}",
                "down2.example.org", ca=dead)
    assert p.returncode != 0
    assert "next attempt" in p.stderr
    assert fullchain.read_bytes() == before
    st = json.loads(ctl.ok("status", "--json").stdout)
    c = [x for x in st["certificates"] if x["name"] == "down2.example.org"][0]
    assert c["failures"] == 1 and "cannot reach the CA" in c["last_error"]


def test_v1_url_refused(ctl):
    p = ctl.run("issue", "x.example.org", ca="https://acme-v01.api.letsencrypt.org/directory")
    assert p.returncode != 0
    assert "acme-v02.api.letsencrypt.org" in p.stderr


def test_bad_identifier_refused(ctl):
    p = ctl.http("issue", "bad..name")
    assert p.returncode == 2
    assert "bad..name" in p.stderr


def test_account_key_file_finds_existing_account(ctl, acmectl_bin, tmp_path, pebble):
    first = json.loads(ctl.ok("account", "show").stdout)
    (acct_dir,) = list((ctl.state / "accounts").iterdir())
    keyfile = tmp_path / "admin-account.key"
    keyfile.write_bytes((acct_dir / "account.key").read_bytes())
    keyfile.chmod(0o600)
    accounts = pebble.account_count()
    # a fresh state directory with the admin's key: onlyReturnExisting finds the same account
    other = Ctl(acmectl_bin, tmp_path / "other", pebble, ["--account-key", str(keyfile)])
    p = other.ok("account", "show")
    assert json.loads(p.stdout)["url"] == first["url"]
    assert "found account" in p.stderr
    assert pebble.account_count() == accounts
    # and "account find" asks again
    p = other.ok("account", "find")
    assert first["url"] in p.stdout


@pytest.mark.parametrize("alg,kty", [("rsa:2048", "rsa:2048"), ("ecdsa:384", "ecdsa:384")])
def test_account_key_types(acmectl_bin, tmp_path, pebble, alg, kty):
    c = Ctl(acmectl_bin, tmp_path / "state", pebble, ["--account-key-type", alg])
    c.ok("issue", "--http-listen", f"127.0.0.1:{pebble.http_port}", f"acct-{alg[:3]}.example.org")
    assert json.loads(c.ok("account", "show").stdout)["key_type"] == kty


def wait_status(path, pred, timeout=30):
    def ok():
        try:
            st = json.loads(open(path).read())
        except (OSError, ValueError):
            return False
        return pred(st["certificates"][0])
    harness.wait_for(ok, timeout=timeout, what=f"status in {path}")
    return json.loads(open(path).read())["certificates"][0]


def test_run_manager_issuer_fallback_and_forced_renewal(ctl, pebble, procs, tmp_path):
    """The manager: the first CA is down, the fallback issues; SIGUSR1 renews; a restart reuses it."""
    import signal as sig
    dead = f"https://127.0.0.1:{harness.free_port()}/dir"
    status = tmp_path / "status.json"
    args = ctl.args("run", "--http-listen", f"127.0.0.1:{pebble.http_port}",
                    "--fallback-ca", pebble.directory_url, "--status-file", str(status),
                    "managed.example.org", ca=dead)
    p = procs.start(args, name="acmectl-run")
    c = wait_status(status, lambda c: c["state"] == "valid")
    assert c["issuer"] == pebble.directory_url
    fullchain = ctl.state / "certs" / "managed.example.org" / "fullchain.pem"
    s1 = serial_of(fullchain)
    assert "trying" in p.log_text() and dead in p.log_text()
    assert pebble.issued_count() == 1

    p.send_signal(sig.SIGUSR1)
    harness.wait_for(lambda: serial_of(fullchain) != s1, timeout=30, what="forced renewal")
    wait_status(status, lambda c: c["state"] == "valid")
    assert pebble.issued_count() == 2
    p.stop()

    # a restart finds the stored certificate valid: no new order
    since = pebble.mark()
    p = procs.start(args, name="acmectl-run2")
    c = wait_status(status, lambda c: c["state"] == "valid" and c["renewal_reason"] == "lifetime")
    import time
    time.sleep(1)
    assert pebble.order_count(since=since) == 0
    p.stop()
