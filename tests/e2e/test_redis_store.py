"""The Redis store through acmectl: --storage, --storage-key, migrate, against a redis-server of the test's own
(loopback, free port, no persistence) and a real Pebble."""
import base64
import hashlib
import hmac
import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

import harness
import leakcheck

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"

pytestmark = pytest.mark.skipif(not (os.access(REDIS_SERVER, os.X_OK) and os.access(REDIS_CLI, os.X_OK)),
                                reason="redis-server / redis-cli not installed")


class Redis:
    """A redis-server on 127.0.0.1 (plain, with a password, or TLS only)."""

    def __init__(self, procs, workdir, password=None, tls=None, name="redis-server"):
        self.procs = procs
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.tls = tls          # dict(cert=, key=, ca=, auth_clients="no"|"yes")
        self.port = harness.free_port()
        args = [REDIS_SERVER, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir)]
        if tls:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(tls["cert"]),
                     "--tls-key-file", str(tls["key"]), "--tls-ca-cert-file", str(tls["ca"]),
                     "--tls-auth-clients", tls.get("auth_clients", "no")]
        else:
            args += ["--port", str(self.port)]
        if password:
            args += ["--requirepass", password]
        self.proc = procs.start(args, name=name, wait_port=self.port)

    def url(self, query="", auth=True):
        scheme = "rediss" if self.tls else "redis"
        cred = f":{self.password}@" if (self.password and auth) else ""
        return f"{scheme}://{cred}127.0.0.1:{self.port}{query}"

    def cli(self, *args):
        a = [REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port)]
        if self.password:
            a += ["-a", self.password, "--no-auth-warning"]
        if self.tls:
            a += ["--tls", "--cacert", str(self.tls["ca"])]
            if "client_cert" in self.tls:
                a += ["--cert", str(self.tls["client_cert"]), "--key", str(self.tls["client_key"])]
        p = subprocess.run(a + list(args), capture_output=True, timeout=30)
        assert p.returncode == 0, p.stderr.decode(errors="replace")
        return p.stdout

    def keys(self, pattern="*"):
        return sorted(self.cli("--raw", "KEYS", pattern).decode().split())

    def get(self, key):
        return self.cli("--raw", "GET", key)

    def value(self, key):
        """A value as the store reads it: without the MAC line a storage key puts first."""
        v = self.get(key)
        return v.split(b"\n", 1)[1] if v.startswith(b"acme-mac-v1:") else v


class Ctl:
    """acmectl with a storage (directory or URL) and a Pebble."""

    def __init__(self, binary, storage, pebble, key_file=None):
        self.binary = binary
        self.storage = storage
        self.pebble = pebble
        self.key_file = key_file

    def args(self, *cmd):
        a = [str(self.binary), "--storage", str(self.storage)]
        if self.key_file:
            a += ["--storage-key", str(self.key_file)]
        return a + ["--ca", self.pebble.directory_url, "--ca-cert", str(self.pebble.ca_cert),
                    "--contact", "admin@example.org", "--agree-tos"] + [str(c) for c in cmd]

    def run(self, *cmd, timeout=120):
        return harness.run_cmd(self.args(*cmd), timeout=timeout)

    def ok(self, *cmd, **kw):
        p = self.run(*cmd, **kw)
        assert p.returncode == 0, f"acmectl {' '.join(map(str, cmd))} failed:\n{p.stdout}\n{p.stderr}"
        return p

    def issue(self, *names):
        return self.ok("issue", "--http-listen", f"127.0.0.1:{self.pebble.http_port}", *names)


def acmectl(binary, *args, timeout=120):
    return harness.run_cmd([str(binary)] + [str(a) for a in args], timeout=timeout)


def key_file(path, data=None):
    p = Path(path)
    p.write_bytes(data if data is not None else leakcheck.STORAGE_KEY)
    p.chmod(0o600)
    return p


def _hkdf(ikm, info):
    prk = hmac.new(b"acme-store", ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def _storage_key(path):
    """(key id, MAC key) of a storage key file, derived as common/acme_aead.c does."""
    raw = Path(path).read_bytes()
    s = raw.strip(b" \t\r\n")
    if len(s) == 64 and re.fullmatch(rb"[0-9a-fA-F]{64}", s):
        k = bytes.fromhex(s.decode())
    elif len(raw) == 32:
        k = raw
    else:
        k = _hkdf(raw, b"acme-store-aead-v1")
    return hashlib.sha256(b"acme-store-key-id" + k).hexdigest()[:8], _hkdf(k, b"acme-store-mac-v1")


def store_mac(key_path, domain, name, data):
    if isinstance(data, str):
        data = data.encode()
    kid, mk = _storage_key(key_path)
    tag = hmac.new(mk, domain.encode() + b"\0" + name.encode() + b"\0" + data, hashlib.sha256).digest()
    return f"acme-mac-v1:{kid}:" + base64.urlsafe_b64encode(tag).decode().rstrip("=")


def signed(key_path, store_key, value):
    """A value as the store writes it under store_key (no prefix) with that storage key."""
    return store_mac(key_path, "store", store_key, value) + "\n" + value


def signed_announcement(key_path, msg):
    return msg + " " + store_mac(key_path, "announce", "challenges", msg)


def verify_chain(pebble, pem_bytes, tmp_path):
    chain = tmp_path / "chain-under-test.pem"
    chain.write_bytes(pem_bytes)
    certs = re.findall(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", pem_bytes, re.S)
    inter = tmp_path / "inter-under-test.pem"
    inter.write_bytes(b"".join(certs[1:]))
    roots = pebble.write_roots(tmp_path / "roots-under-test.pem", index=0)
    p = subprocess.run(["openssl", "verify", "-CAfile", str(roots), "-untrusted", str(inter), str(chain)],
                       capture_output=True, text=True)
    return p.returncode == 0, p.stdout + p.stderr


def tree(root):
    """{relative path: (mode, bytes or None for a directory)} without the backend's own files, nor
    directories without files (a store holds keys, not directories)."""
    out = {}
    root = Path(root)
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts[0] == "locks" or any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_dir() and not any(f.is_file() for f in p.rglob("*")):
            continue
        st = p.lstat()
        out[str(rel)] = (stat.S_IMODE(st.st_mode), None if p.is_dir() else p.read_bytes())
    return out


@pytest.fixture
def redis(procs, tmp_path):
    return Redis(procs, tmp_path / "redis")


# --------------------------------------------------------------------------


def test_issue_list_status_on_redis(acmectl_bin, tmp_path, pebble, redis):
    """acmectl issue --storage redis://... writes nothing locally; list, status, renew work from Redis; the
    private keys in Redis are sealed with the storage key."""
    kf = key_file(tmp_path / "storage.key")
    url = redis.url("/0?prefix=e2e")
    ctl = Ctl(acmectl_bin, url, pebble, key_file=kf)
    ctl.issue("redis.example.org", "www.redis.example.org")

    keys = redis.keys("e2e:*")
    assert "e2e:certs/redis.example.org/fullchain.pem" in keys
    assert "e2e:certs/redis.example.org/privkey.pem" in keys
    assert "e2e:certs/redis.example.org/meta.json" in keys
    assert "e2e:certs/redis.example.org/order.json" not in keys, "the finished order is forgotten"
    acct = [k for k in keys if k.startswith("e2e:accounts/") and k.endswith("/account.key")]
    assert len(acct) == 1
    assert not any(k.startswith("e2e:challenges/") for k in keys), "challenges are withdrawn"

    # a Redis dump alone does not leak the keys
    dump = b"".join(redis.cli("--raw", "GET", k) for k in keys if not re.match(r"e2e:(dir|info|lock):", k))
    assert b"PRIVATE KEY" not in dump
    assert redis.get("e2e:certs/redis.example.org/privkey.pem").startswith(b"acme-aead-v1:")
    assert redis.get(acct[0]).startswith(b"acme-aead-v1:")
    fullchain = redis.value("e2e:certs/redis.example.org/fullchain.pem").rstrip(b"\n") + b"\n"
    ok, out = verify_chain(pebble, fullchain, tmp_path)
    assert ok, out
    secrets_set = sorted(redis.cli("--raw", "SMEMBERS", "e2e:info:secrets").decode().split())
    assert "certs/redis.example.org/privkey.pem" in secrets_set
    assert acct[0][len("e2e:"):] in secrets_set
    assert redis.cli("--raw", "GET", "e2e:info:generation").strip() == b"1"

    # list and status read the store in Redis
    p = ctl.ok("list")
    assert "redis.example.org,www.redis.example.org" in p.stdout
    st = json.loads(ctl.ok("status", "--json").stdout)
    assert [c["name"] for c in st["certificates"]] == ["redis.example.org"]
    assert st["certificates"][0]["state"] == "valid"

    # renew: a new certificate, a new generation, the account key unsealed and used again
    before = redis.get("e2e:certs/redis.example.org/fullchain.pem")
    ctl.ok("renew", "--force", "--http-listen", f"127.0.0.1:{pebble.http_port}", "redis.example.org")
    assert redis.get("e2e:certs/redis.example.org/fullchain.pem") != before
    assert redis.cli("--raw", "GET", "e2e:info:generation").strip() == b"2"
    assert pebble.account_count() >= 1

    # without the key (or with another): the public parts still list, secrets fail clearly
    nokey = Ctl(acmectl_bin, url, pebble)
    assert "redis.example.org" in nokey.ok("list").stdout
    p = nokey.run("account", "show")
    assert p.returncode != 0
    assert "encrypted" in p.stderr and "storage key" in p.stderr, p.stderr
    other = Ctl(acmectl_bin, url, pebble, key_file=key_file(tmp_path / "other.key", leakcheck.STORAGE_KEY_OTHER))
    p = other.run("revoke", "--with-cert-key", "redis.example.org")
    assert p.returncode != 0
    assert "another storage key" in p.stderr, p.stderr
    # nothing went to a local state directory
    assert not (tmp_path / "state").exists()


def test_migrate_roundtrip(acmectl_bin, tmp_path, pebble, redis):
    """fs -> redis (sealed) -> fs: the same files with the same modes; migrate is idempotent."""
    src = tmp_path / "src"
    ctl = Ctl(acmectl_bin, src, pebble)
    ctl.issue("mig.example.org")
    ctl.ok("issue", "--http-listen", f"127.0.0.1:{pebble.http_port}", "--key", "rsa:2048", "mig2.example.org")
    # an order in flight
    pend = src / "certs" / "pending.example.org"
    pend.mkdir(mode=0o700)
    (pend / "order.json").write_text('{"url": "https://ca.example/order/1"}')
    (pend / "order.json").chmod(0o644)
    (pend / "order.key").write_text("-----BEGIN PRIVATE KEY-----\nfake\n-----END PRIVATE KEY-----\n")
    (pend / "order.key").chmod(0o600)
    original = tree(src)
    assert original["certs/mig.example.org/privkey.pem"][0] == 0o600

    kf = key_file(tmp_path / "k.hex", leakcheck.STORAGE_KEY_HEX.encode() + b"\n")
    url = redis.url("?prefix=mig")
    p = acmectl(acmectl_bin, "--storage-key", kf, "migrate", "--from", src, "--to", url)
    assert p.returncode == 0, p.stderr
    summary = p.stdout.strip()
    assert re.search(r"migrated 10 keys \(4 secret\) from .* to redis://127\.0\.0\.1:\d+\?prefix=mig: "
                     r"1 accounts, 2 certificates, 1 pending orders, 0 challenges", summary), summary
    # again: the same
    p = acmectl(acmectl_bin, "--storage-key", kf, "migrate", "--from", src, "--to", url)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == summary
    assert b"PRIVATE KEY" not in redis.get("mig:certs/pending.example.org/order.key")

    # the Redis store is usable as is
    p = acmectl(acmectl_bin, "--storage", url, "--storage-key", kf, "list")
    assert p.returncode == 0 and "mig2.example.org" in p.stdout, p.stdout + p.stderr

    # back, without the key: refused, saying why
    back = tmp_path / "back"
    p = acmectl(acmectl_bin, "--storage", url, "migrate", "--to", back)
    assert p.returncode == 1
    assert "encrypted" in p.stderr, p.stderr
    # with the key (--from defaults to --storage): identical files and modes
    p = acmectl(acmectl_bin, "--storage", url, "--storage-key", kf, "migrate", "--to", back)
    assert p.returncode == 0, p.stderr
    restored = tree(back)
    assert restored == original
    assert stat.S_IMODE(back.stat().st_mode) == 0o700

    # the restored directory works
    st = json.loads(Ctl(acmectl_bin, back, pebble).ok("status", "--json").stdout)
    assert sorted(c["name"] for c in st["certificates"]) == ["mig.example.org", "mig2.example.org_rsa2048"]

    # same source and destination
    p = acmectl(acmectl_bin, "migrate", "--from", back, "--to", str(back) + "/")
    assert p.returncode == 1 and "same" in p.stderr


def test_password_file(acmectl_bin, tmp_path, procs):
    pw = leakcheck.REDIS_PASSWORD
    r = Redis(procs, tmp_path / "redis-auth", password=pw)
    pwf = tmp_path / "redis.pw"
    pwf.write_text(pw + "\n")
    pwf.chmod(0o600)
    src = tmp_path / "src"
    (src / "certs" / "x.example").mkdir(parents=True)
    (src / "certs" / "x.example" / "meta.json").write_text(
        '{"name": "x.example", "identifiers": [{"type": "dns", "value": "x.example"}]}')

    url = f"redis://127.0.0.1:{r.port}?password_file={pwf}"
    p = acmectl(acmectl_bin, "migrate", "--from", src, "--to", url)
    assert p.returncode == 0, p.stderr
    p = acmectl(acmectl_bin, "--storage", url, "list")
    assert p.returncode == 0 and "x.example" in p.stdout, p.stdout + p.stderr
    assert r.keys("acme:certs/*") == ["acme:certs/x.example/meta.json"]

    # the password in the URL works too, and is never shown
    p = acmectl(acmectl_bin, "--storage", r.url(), "list")
    assert p.returncode == 0, p.stderr
    p = acmectl(acmectl_bin, "--storage", f"redis://:wrong-{pw}@127.0.0.1:{r.port}", "list")
    assert p.returncode == 1
    assert "authentication refused" in p.stderr and pw not in p.stderr, p.stderr
    p = acmectl(acmectl_bin, "--storage", f"redis://127.0.0.1:{r.port}", "list")
    assert p.returncode == 1 and "NOAUTH" in p.stderr, p.stderr
    # an unreachable server: named, with the operation, quickly
    port = harness.free_port()
    p = acmectl(acmectl_bin, "--storage", f"redis://:{pw}@127.0.0.1:{port}", "list", timeout=20)
    assert p.returncode == 1
    assert f"redis://127.0.0.1:{port}" in p.stderr and "cannot connect" in p.stderr and pw not in p.stderr


def _client_cert(ca, tmp_path):
    """A clientAuth certificate from the test CA (TestCA.issue makes serverAuth ones)."""
    key, csr, crt, ext = (tmp_path / n for n in ("client.key", "client.csr", "client.pem", "client.ext"))
    ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=clientAuth\n")
    harness.openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", csr, "-subj", "/CN=acme-node")
    harness.openssl("x509", "-req", "-in", csr, "-CA", ca.ca_cert, "-CAkey", ca.ca_key, "-set_serial", "4242",
                    "-out", crt, "-days", "2", "-extfile", ext)
    return crt, key


def test_rediss(acmectl_bin, tmp_path, pebble, procs, test_ca):
    """TLS to Redis (rediss://): server verified with tls_ca, optional client certificate."""
    tls = {"cert": test_ca.cert, "key": test_ca.key, "ca": test_ca.ca_cert}
    r = Redis(procs, tmp_path / "redis-tls", tls=tls, name="redis-tls")
    url = r.url(f"?tls_ca={test_ca.ca_cert}")
    ctl = Ctl(acmectl_bin, url, pebble)
    ctl.issue("tls.example.org")
    assert "tls.example.org" in ctl.ok("list").stdout
    assert "acme:certs/tls.example.org/fullchain.pem" in r.keys()
    # by name too (the certificate is for localhost and 127.0.0.1)
    p = acmectl(acmectl_bin, "--storage", f"rediss://localhost:{r.port}?tls_ca={test_ca.ca_cert}", "list")
    assert p.returncode == 0, p.stderr

    # the system trust store does not know the test CA; a wrong name does not verify
    p = acmectl(acmectl_bin, "--storage", r.url(), "list")
    assert p.returncode == 1 and "certificate verification failed" in p.stderr, p.stderr
    p = acmectl(acmectl_bin, "--storage", r.url(f"?tls_ca={test_ca.ca_cert}&tls_servername=other.example"),
                "list")
    assert p.returncode == 1 and "verif" in p.stderr, p.stderr
    # plain redis:// to a TLS port fails (quickly, with a timeout at worst)
    p = acmectl(acmectl_bin, "--storage", f"redis://127.0.0.1:{r.port}?timeout=1s", "list", timeout=30)
    assert p.returncode == 1

    # a server that wants client certificates
    crt, key = _client_cert(test_ca, tmp_path)
    tls2 = dict(tls, auth_clients="yes", client_cert=crt, client_key=key)
    r2 = Redis(procs, tmp_path / "redis-mtls", tls=tls2, name="redis-mtls")
    p = acmectl(acmectl_bin, "--storage", r2.url(f"?tls_ca={test_ca.ca_cert}"), "list")
    assert p.returncode == 1
    p = acmectl(acmectl_bin, "--storage", r2.url(f"?tls_ca={test_ca.ca_cert}&tls_cert={crt}&tls_key={key}"),
                "list")
    assert p.returncode == 0, p.stderr


def test_lock_lease_extended_during_a_long_issuance(acmectl_bin, tmp_path, pebble, redis, test_ca):
    """A Redis lock has a lease (here 1 s); the issuance extends it while it waits on the CA (finalize
    held 3 s at a proxy), so a second process for the same certificate is still refused after the first
    lease ran out, and the first one stores its certificate."""
    from fault_proxy import FaultProxy
    cert, key = test_ca.issue("lease-proxy", ["localhost"], ["127.0.0.1"], basename="lease-proxy")
    px = FaultProxy(pebble, cert, key, harness.free_port(), log_path=tmp_path / "proxy.log")
    px.start()
    try:
        f = px.add_fault("finalize", method="POST", hold=True)
        url = redis.url("/0?prefix=lease&lock_lease=1s")
        name = "lease.example.org"

        def args(*cmd):
            return [str(acmectl_bin), "--storage", url, "--ca", px.directory_url, "--ca-cert",
                    str(pebble.ca_cert), "--contact", "admin@example.org", "--agree-tos", *cmd]
        first = subprocess.Popen(args("issue", "--http-listen", f"127.0.0.1:{pebble.http_port}", name),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        f.wait_hit(30)
        import time
        time.sleep(2.5)     # more than two leases
        assert redis.keys("lease:lock:*"), "the lock expired while its holder was working"
        second = harness.run_cmd(args("issue", "--http-listen", f"127.0.0.1:{harness.free_port()}", name),
                                 timeout=60)
        assert second.returncode != 0 and "being issued by another process" in second.stderr, second.stderr
        f.release()
        out, err = first.communicate(timeout=60)
        assert first.returncode == 0, err
        assert redis.get(f"lease:certs/{name}/fullchain.pem").startswith(b"-----BEGIN CERTIFICATE-----")
        assert not redis.keys("lease:lock:*"), "the lock is released at the end"
    finally:
        px.stop()


def test_upgrade_storage(acmectl_bin, tmp_path, pebble, redis):
    """A Redis store written without a storage key (or before values were signed) is refused once the key is
    configured, naming the way out; `acmectl upgrade-storage` seals and signs it in place, after which the
    certificate reads back as it was."""
    url = redis.url("/0?prefix=up")
    name = "upgrade.example.org"
    Ctl(acmectl_bin, url, pebble).issue(name)
    chain = redis.get(f"up:certs/{name}/fullchain.pem")
    assert chain.startswith(b"-----BEGIN CERTIFICATE-----")
    kf = key_file(tmp_path / "storage.key")
    ctl = Ctl(acmectl_bin, url, pebble, key_file=kf)

    p = ctl.run("revoke", "--with-cert-key", name)
    assert p.returncode != 0 and "upgrade-storage" in p.stderr, p.stderr
    assert "PRIVATE KEY" not in p.stderr

    p = ctl.ok("upgrade-storage")
    assert "1 certificates" in p.stdout, p.stdout
    assert redis.get(f"up:certs/{name}/privkey.pem").startswith(b"acme-aead-v1:")
    assert redis.get(f"up:certs/{name}/fullchain.pem").startswith(b"acme-mac-v1:")
    assert redis.value(f"up:certs/{name}/fullchain.pem") == chain
    p = ctl.ok("status", "--json")
    assert name in p.stdout
    # without the key it needs, or twice: refused / the same
    assert Ctl(acmectl_bin, url, pebble).run("upgrade-storage").returncode == 2
    ctl.ok("upgrade-storage")
    assert redis.value(f"up:certs/{name}/fullchain.pem") == chain
