"""nginx with acme_storage redis://...: one node against a redis-server of the test's own and a real Pebble.
Certificates, keys and accounts live in Redis (keys sealed with acme_storage_key); the workers serve from the
local cache under state_path, which the cache manager keeps in step with Redis."""
import os
import re
import subprocess
import threading
import time

import pytest

import harness
import leakcheck
from harness import RedisServer, free_port, wait_for
from nginx_harness import (cert_serial, http_get, https_get, issuer_block, managed_servers,  # noqa: F401
                          nginx_factory, tls_handshake, tls_verified)
from test_redis_store import REDIS_CLI, REDIS_SERVER, Ctl, Redis, key_file, signed, signed_announcement

pytestmark = pytest.mark.skipif(not (os.access(REDIS_SERVER, os.X_OK) and os.access(REDIS_CLI, os.X_OK)),
                                reason="redis-server / redis-cli not installed")

# what a node logs, by design, while its Redis is away
REDIS_DOWN = [r"storage unreachable", r"acme: .*redis store redis://", r"cannot read certificate .* from the storage",
              r"cannot record the failure in the store"]


def served(port, sni, roots):
    try:
        return tls_verified(port, sni, roots)
    except Exception:  # noqa: BLE001
        return None


def wait_served(port, sni, pebble, other_than=None, timeout=45):
    roots = pebble.roots(0)
    return wait_for(lambda: (lambda s: s if s and s != other_than else None)(served(port, sni, roots)),
                    timeout, interval=0.2, what=f"a Pebble certificate for {sni}")


def storage_conf(redis, key):
    return f"acme_storage {redis.url()} prefix=ngx;\nacme_storage_key {key};\n"


def alpn_conf(pebble, tmp_path, redis, key, name):
    return storage_conf(redis, key) + issuer_block("pebble", pebble, tmp_path / "state",
                                                   challenge="tls-alpn-01") + f"""
    server {{
        listen 127.0.0.1:{pebble.tls_port} ssl;
        server_name {name};
        acme_certificate pebble;
        location / {{ return 200 "tls\\n"; }}
        location = /acme {{ acme_status renew=on renew_interval=1s; }}
    }}
"""


@pytest.fixture
def redis(procs, tmp_path):
    return Redis(procs, tmp_path / "redis")


def test_config_checks_without_redis(nginx_factory, pebble, tmp_path):
    """nginx -t checks the URL and the key file without a Redis to talk to, naming directive, value and line."""
    key = key_file(tmp_path / "storage.key")
    port = free_port()                      # nothing listens there
    base = issuer_block("pebble", pebble, tmp_path / "state")
    ng = nginx_factory(f"acme_storage redis://127.0.0.1:{port}/2 prefix=node;\nacme_storage_key {key};\n" + base,
                       start=False)
    ok, out = ng.test_config()
    assert ok, out

    ng.write_conf("acme_storage redis://127.0.0.1:notaport;\n" + base)
    ok, out = ng.test_config()
    assert not ok
    assert '"acme_storage"' in out and "notaport" in out and re.search(r"nginx\.conf:\d+", out), out

    ng.write_conf(f"acme_storage redis://127.0.0.1:{port} colour=blue;\n" + base)
    ok, out = ng.test_config()
    assert not ok and "acme_storage" in out and "colour=blue" in out, out

    # a password in the URL is never shown, whatever is wrong with the URL
    pw = leakcheck.REDIS_PASSWORD
    for url, needle in ((f"redis://:{pw}@127.0.0.1:notaport", "notaport"),
                        (f"redis://u:{pw}@127.0.0.1:{port}/2?bogus=1", "bogus"),
                        (f"http://:{pw}@127.0.0.1:{port}", "expected redis://")):
        ng.write_conf(f'acme_storage "{url}";\n' + base)
        ok, out = ng.test_config()
        assert not ok and '"acme_storage"' in out and needle in out and ":***@" in out, out
        assert pw not in out, out

    missing = tmp_path / "no-such.key"
    ng.write_conf(f"acme_storage redis://127.0.0.1:{port};\nacme_storage_key {missing};\n" + base)
    ok, out = ng.test_config()
    assert not ok and "acme_storage_key" in out and str(missing) in out, out
    assert re.search(r"nginx\.conf:\d+", out), out

    short = key_file(tmp_path / "short.key", b"too short")
    ng.write_conf(f"acme_storage redis://127.0.0.1:{port};\nacme_storage_key {short};\n" + base)
    ok, out = ng.test_config()
    assert not ok and str(short) in out, out

    ng.write_conf(f"acme_storage_key {key};\n" + base)
    ok, out = ng.test_config()
    assert not ok and "needs" in out, out

    # no storage key: accepted, with a warning saying what that means
    ng.write_conf(f"acme_storage redis://127.0.0.1:{port};\n" + base)
    ok, out = ng.test_config()
    assert ok, out
    assert re.search(r"\[warn\].*\"acme_storage\" without \"acme_storage_key\" in \S+nginx\.conf:\d+: .*controls the "
                     r"domains", out), out


def test_http01_keys_sealed_local_cache(pebble, nginx_factory, tmp_path, redis, acmectl_bin):
    """HTTP-01 issuance with everything in Redis; private keys there are sealed; the cache is 0600."""
    name = "rd-http.example.org"
    https = free_port()
    key = key_file(tmp_path / "storage.key")
    conf = (storage_conf(redis, key) + issuer_block("pebble", pebble, tmp_path / "state")
            + managed_servers(pebble.http_port, https, name))
    n = nginx_factory(conf, wait_port=https)
    serial = wait_served(https, name, pebble)
    assert serial in pebble.issued_serials() and pebble.order_count() == 1

    keys = redis.keys("ngx:*")
    assert any(k.endswith("/fullchain.pem") and name in k for k in keys), keys
    assert any(k.startswith("ngx:accounts") or "account" in k for k in keys), keys
    privs = [k for k in keys if k.endswith("privkey.pem") or k.endswith(".key")]
    assert privs, keys
    for k in privs:
        assert b"PRIVATE KEY" not in redis.get(k), k

    # without the key file the sealed key cannot be read; with it, it can
    blind = Ctl(acmectl_bin, redis.url("/0?prefix=ngx"), pebble)
    p = blind.run("status", "--json")
    assert p.returncode != 0 or "PRIVATE" not in p.stdout
    cached = list((tmp_path / "state").rglob("privkey.pem"))
    assert cached and all((c.stat().st_mode & 0o777) == 0o600 for c in cached)

    # a challenge another node published while this one was not subscribed (no announcement reached it) is
    # copied from Redis when the ACME client subscribes again (here: after a reload)
    token, sni = "late-" + "L" * 40, "late-alpn.example.org"
    # as the store writes them: the value (signed with the storage key), and the name in its directory's set
    # (the record names the identifier the token is for: it is answered for that Host only)
    v6token, oldtoken = "late6-" + "S" * 40, "old-" + "O" * 40

    def put(kind, name_, value):
        redis.cli("SET", f"ngx:challenges/{kind}/{name_}", signed(key, f"challenges/{kind}/{name_}", value))

    put("http-01", token, f"dns {name} {token}.thumb")
    put("http-01", v6token, f"ip ::1 {v6token}.thumb")
    put("http-01", oldtoken, f"{oldtoken}.thumb")    # no identifier
    redis.cli("SADD", "ngx:dir:challenges/http-01", token, v6token, oldtoken)
    put("tls-alpn-01", sni, f"dns {sni} other.thumb")
    redis.cli("SADD", "ngx:dir:challenges/tls-alpn-01", sni)
    assert http_get(pebble.http_port, name, f"/.well-known/acme-challenge/{token}")[0] == 404
    mark = len(n.log_text())
    n.reload()
    wait_for(lambda: "3 pending challenge(s) copied from the storage" in n.log_text(mark), 20,
             what="the pending challenges to be copied")
    assert "pending http-01 challenge not copied" in n.log_text(mark)
    for host in (name, name.upper() + ".", f"{name}:{pebble.http_port}"):
        status, body = http_get(pebble.http_port, host, f"/.well-known/acme-challenge/{token}")
        assert (status, body) == (200, f"{token}.thumb".encode()), (host, status, body)
    for host in ("other.example.org", sni, "[::1]"):
        assert http_get(pebble.http_port, host, f"/.well-known/acme-challenge/{token}")[0] == 404, host
    for host in (f"[::1]:{pebble.http_port}", "[0:0::1]"):
        status, body = http_get(pebble.http_port, host, f"/.well-known/acme-challenge/{v6token}")
        assert (status, body) == (200, f"{v6token}.thumb".encode()), (host, status, body)
    assert http_get(pebble.http_port, name, f"/.well-known/acme-challenge/{v6token}")[0] == 404
    assert http_get(pebble.http_port, name, f"/.well-known/acme-challenge/{oldtoken}")[0] == 404
    # and an announced withdrawal removes it
    redis.cli("PUBLISH", "ngx:challenges", signed_announcement(key, f"d http-01 {token}"))
    wait_for(lambda: http_get(pebble.http_port, name, f"/.well-known/acme-challenge/{token}")[0] == 404, 10,
             what="the withdrawal to be applied")

    # withdrawals missed while not subscribed: an announced challenge whose store record is gone (its
    # withdrawal lost) and the tls-alpn-01 one deleted from the store are removed from the zone when the
    # ACME client subscribes again (here: its subscription killed); a pending one stays
    gone, kept = "gone-" + "G" * 40, "kept-" + "K" * 40
    put("http-01", kept, f"dns {name} {kept}.thumb")
    redis.cli("SADD", "ngx:dir:challenges/http-01", kept)
    redis.cli("PUBLISH", "ngx:challenges", signed_announcement(key, f"a http-01 {kept} dns {name} {kept}.thumb"))
    redis.cli("PUBLISH", "ngx:challenges", signed_announcement(key, f"a http-01 {gone} dns {name} {gone}.thumb"))
    wait_for(lambda: http_get(pebble.http_port, name, f"/.well-known/acme-challenge/{gone}")[0] == 200, 10,
             what="the announced challenge to be answered")
    redis.cli("DEL", f"ngx:challenges/tls-alpn-01/{sni}")
    redis.cli("SREM", "ngx:dir:challenges/tls-alpn-01", sni)
    time.sleep(1.1)         # zone entries are stamped in seconds: put strictly before the next listing
    mark = len(n.log_text())
    redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
    wait_for(lambda: "2 challenge(s) withdrawn while not subscribed removed" in n.log_text(mark), 30,
             what="the stale challenges to be removed")
    assert "storage announcements lost" in n.log_text(mark)
    assert http_get(pebble.http_port, name, f"/.well-known/acme-challenge/{gone}")[0] == 404
    assert http_get(pebble.http_port, name, f"/.well-known/acme-challenge/{kept}") == \
        (200, f"{kept}.thumb".encode())
    # an announced one is bound to its identifier too
    assert http_get(pebble.http_port, "other.example.org", f"/.well-known/acme-challenge/{kept}")[0] == 404


def test_rediss_with_password_file(pebble, nginx_factory, tmp_path, procs, acmectl_bin, test_ca):
    """acme_storage over TLS (rediss://, server verified with tls_ca) with the password in a file: issuance,
    and a renewal stored by another writer reaches nginx through the subscription on the TLS connection."""
    pw = leakcheck.REDIS_PASSWORD
    pwf = tmp_path / "redis.pw"
    pwf.write_text(pw + "\n")
    pwf.chmod(0o600)
    tls = {"cert": test_ca.cert, "key": test_ca.key, "ca": test_ca.ca_cert}
    r = Redis(procs, tmp_path / "redis-tls", password=pw, tls=tls, name="redis-tls")
    url = f"rediss://localhost:{r.port}?tls_ca={test_ca.ca_cert}&password_file={pwf}"
    key = key_file(tmp_path / "storage.key")
    name = "rd-tls.example.org"
    conf = (f'acme_storage "{url}" prefix=ngx;\nacme_storage_key {key};\n'
            + issuer_block("pebble", pebble, tmp_path / "state", challenge="tls-alpn-01") + f"""
    server {{
        listen 127.0.0.1:{pebble.tls_port} ssl;
        server_name {name};
        acme_certificate pebble;
        location / {{ return 200 "tls\\n"; }}
    }}
""")
    ng = nginx_factory(conf, wait_port=pebble.tls_port)
    first = wait_served(pebble.tls_port, name, pebble)
    assert any(k.startswith("ngx:certs/") for k in r.keys("ngx:*"))
    assert pw not in ng.log_text()

    certname = next(k.split("/")[1] for k in r.keys("ngx:certs/*/fullchain.pem"))
    ctl = Ctl(acmectl_bin, url + "&prefix=ngx", pebble, key_file=key)
    ctl.ok("renew", "--force", "--http-listen", f"127.0.0.1:{pebble.http_port}", certname)
    wait_served(pebble.tls_port, name, pebble, other_than=first, timeout=20)
    assert "subscribed to storage announcements" in ng.log_text()
    assert "announcements lost" not in ng.log_text()


def test_tls_alpn_hot_swap_outage_restart_resume(pebble, nginx_factory, tmp_path, redis, acmectl_bin, procs):
    """TLS-ALPN-01 issuance; a renewal stored into Redis by acmectl is served without a reload; with Redis
    stopped nginx keeps serving and restarts from its cache; with Redis back, renewals work again."""
    name = "rd-alpn.example.org"
    key = key_file(tmp_path / "storage.key")
    ng = nginx_factory(alpn_conf(pebble, tmp_path, redis, key, name), wait_port=pebble.tls_port,
                       allowed=REDIS_DOWN)
    first = wait_served(pebble.tls_port, name, pebble)
    master = ng.proc.pid

    # another writer renews into Redis (HTTP-01 on Pebble's port: nginx only holds the TLS port)
    certname = next(k.split("/")[1] for k in redis.keys("ngx:certs/*/fullchain.pem"))
    ctl = Ctl(acmectl_bin, redis.url("?prefix=ngx"), pebble, key_file=key)
    ctl.ok("renew", "--force", "--http-listen", f"127.0.0.1:{pebble.http_port}", certname)
    second = wait_served(pebble.tls_port, name, pebble, other_than=first, timeout=20)
    assert ng.proc.pid == master and ng.proc.alive()
    assert second in pebble.issued_serials()

    # Redis goes away (its data saved): serving goes on, and a restart serves from the cache
    rport, rdir = redis.port, redis.dir
    harness.run_cmd([REDIS_CLI, "-h", "127.0.0.1", "-p", str(rport), "SHUTDOWN", "SAVE"], timeout=30)
    assert (rdir / "dump.rdb").exists()
    wait_for(lambda: not redis.proc.alive(), 10, what="redis-server gone")
    for _ in range(5):
        assert tls_verified(pebble.tls_port, name, pebble.roots(0)) == second
    ng.wait_log(r"storage unreachable", timeout=20)

    ng.stop()
    ng.start(wait_port=pebble.tls_port)
    assert wait_served(pebble.tls_port, name, pebble, timeout=20) == second

    # Redis back with its data: the node notices, and a renewal goes through Redis again
    mark = ng.log_size()
    procs.start([REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(rport), "--save", "",
                 "--appendonly", "no", "--dir", str(rdir)], name="redis-server-again", wait_port=rport)
    # (subscribing is the sign: a leader started during the outage may never have had a store check fail,
    # as it logs "storage unreachable" and "reachable again" only for its own checks)
    ng.wait_log(r"subscribed to storage announcements", timeout=90, since=mark)
    r = https_get(pebble.tls_port, name, f"/acme?renew={name}", method="POST")
    assert r.status == 202, r.text
    third = wait_served(pebble.tls_port, name, pebble, other_than=second, timeout=20)
    assert third not in (first, second)


def test_two_nodes_shared_challenges(pebble, nginx_factory, tmp_path, redis):
    """Two nodes on one Redis, sharing Pebble's HTTP-01 port with reuseport, so that the kernel spreads the
    CA's validation requests over both: node 1 issues A alone; node 0, started next, serves A from Redis
    through its cache, and orders B, which node 1 does not even configure, yet answers for."""
    names = ["rd-two.example.org", "rd-two-b.example.org"]
    key = key_file(tmp_path / "storage.key")
    ports = [free_port(), free_port(), free_port()]

    def conf(i):
        c = storage_conf(redis, key) + issuer_block("pebble", pebble, tmp_path / f"state{i}") + f"""
    server {{
        listen 127.0.0.1:{pebble.http_port} reuseport;
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{ports[i]} ssl;
        server_name {names[0]};
        acme_certificate pebble;
        location / {{ return 200 "tls\\n"; }}
    }}
"""
        if i == 0:
            c += f"""
    server {{
        listen 127.0.0.1:{ports[2]} ssl;
        server_name {names[1]};
        acme_certificate pebble;
    }}
"""
        return c

    nginx_factory(conf(1), name="node1", wait_port=ports[1])
    first = wait_served(ports[1], names[0], pebble)
    n0 = nginx_factory(conf(0), name="node0", wait_port=ports[0])
    assert wait_served(ports[0], names[0], pebble, timeout=20) == first
    wait_served(ports[2], names[1], pebble, timeout=40)
    assert pebble.order_count() == 2
    assert list((tmp_path / "state0").rglob("fullchain.pem"))
    # the CA was asked to validate once both nodes had taken the challenge (no waiting on a timer)
    assert re.search(r"2 node\(s\) took the http-01 challenge for rd-two-b\.example\.org", n0.log_text())
    assert "asking the CA to validate anyway" not in n0.log_text()
    # every validation request answered 200, on whichever node the kernel sent it to
    hits = []
    for i in range(2):
        log = (tmp_path / f"node{i}" / "access.log").read_text(errors="replace")
        hits += [(i, m) for m in re.findall(r'"GET /\.well-known/acme-challenge/\S+ HTTP/1\.1" (\d+)', log)]
    assert hits and all(code == "200" for _, code in hits), hits


def _self_signed(tmp_path, name):
    """An attacker's key and certificate for name (PEM bytes, the key unencrypted)."""
    k, c = tmp_path / "evil.key", tmp_path / "evil.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(k), "-out", str(c), "-subj", f"/CN={name}", "-addext",
                    f"subjectAltName=DNS:{name}", "-days", "30"], check=True, capture_output=True)
    return k.read_bytes(), c.read_bytes()


def test_forged_records_refused(pebble, nginx_factory, tmp_path, redis):
    """With acme_storage_key, what Redis holds must authenticate. A challenge record or an announcement
    written straight into Redis is not answered, and logged once however often it is read; a private key
    replaced by a plaintext PEM, an attacker's key and certificate, and a tampered fullchain.pem are refused:
    the certificate served stays."""
    name = "rd-forged.example.org"
    https = free_port()
    key = key_file(tmp_path / "storage.key")
    conf = (storage_conf(redis, key) + issuer_block("pebble", pebble, tmp_path / "state")
            + managed_servers(pebble.http_port, https, name))
    n = nginx_factory(conf, wait_port=https,
                      allowed=[r"acme: redis store \S+: refused ", r"cannot read certificate .* from the storage"])
    serial = wait_served(https, name, pebble)
    roots = pebble.roots(0)

    def chal(tok):
        return http_get(pebble.http_port, name, f"/.well-known/acme-challenge/{tok}")

    # a forged challenge record, read at each resubscription, next to a genuine one
    forged = "forged-" + "F" * 40
    redis.cli("SET", f"ngx:challenges/http-01/{forged}", f"dns {name} {forged}.thumb")
    redis.cli("SADD", "ngx:dir:challenges/http-01", forged)
    for i in range(2):
        good = f"good{i}-" + "G" * 40
        redis.cli("SET", f"ngx:challenges/http-01/{good}",
                  signed(key, f"challenges/http-01/{good}", f"dns {name} {good}.t"))
        redis.cli("SADD", "ngx:dir:challenges/http-01", good)
        mark = len(n.log_text())
        redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
        wait_for(lambda: "1 pending challenge(s) copied from the storage" in n.log_text(mark), 30,
                 what="the genuine pending challenge to be copied")
        assert chal(good) == (200, f"{good}.t".encode())
        assert chal(forged)[0] == 404
    assert n.log_text().count(f"refused challenges/http-01/{forged}: a value without a MAC") == 1, n.log_text()

    # a forged announcement (three times, and one with a MAC of another key), then a genuine one
    fake = "fake-" + "A" * 40
    for _ in range(3):
        redis.cli("PUBLISH", "ngx:challenges", f"a http-01 {fake} dns {name} {fake}.thumb")
    redis.cli("PUBLISH", "ngx:challenges", f"a http-01 {fake} dns {name} {fake}.thumb acme-mac-v1:00000000:AAAA")
    real = "real-" + "R" * 40
    redis.cli("PUBLISH", "ngx:challenges", signed_announcement(key, f"a http-01 {real} dns {name} {real}.thumb"))
    wait_for(lambda: chal(real)[0] == 200, 10, what="the genuine announcement to be answered")
    assert chal(fake)[0] == 404
    log = n.log_text()
    assert log.count("refused challenge announcement: an announcement without a MAC") == 1, log
    assert log.count("refused challenge announcement: the value carries a MAC of another storage key") == 1, log

    def refused(what, change):
        mark = len(n.log_text())
        change()
        redis.cli("PUBLISH", "ngx:events", name)
        wait_for(lambda: re.search(rf"refused certs/{re.escape(name)}/\S+: {what}", n.log_text(mark)), 15,
                 what=f"the refusal ({what})")
        time.sleep(1)
        assert served(https, name, roots) == serial, "the certificate served changed"

    evil_key, evil_cert = _self_signed(tmp_path, name)
    # the sealed private key replaced by a plaintext PEM
    refused("an unsealed secret", lambda: redis.cli("SET", f"ngx:certs/{name}/privkey.pem", evil_key))
    # the attacker's own certificate with it
    refused("a value without a MAC", lambda: redis.cli("SET", f"ngx:certs/{name}/fullchain.pem", evil_cert))
    # the genuine leaf with another chain, its MAC line kept
    leaf = re.search(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n",
                     next((tmp_path / "state").rglob("fullchain.pem")).read_bytes(), re.S)
    assert leaf
    refused("the MAC does not authenticate",
            lambda: redis.cli("SET", f"ngx:certs/{name}/fullchain.pem",
                              signed(key, f"certs/{name}/fullchain.pem", "x").split("\n", 1)[0].encode()
                              + b"\n" + leaf.group(0) + evil_cert))
    assert "PRIVATE KEY" not in n.log_text()


def test_two_nodes_revoked_by_acmectl(pebble, nginx_factory, tmp_path, redis, acmectl_bin):
    """acmectl revoke against the cluster's Redis: one node runs "revoked" (the one that takes the
    certificate's lock), and renews; both serve the new certificate; nothing runs twice."""
    from test_notify import events, make_script
    name = "rd-revoked.example.org"
    key = key_file(tmp_path / "storage.key")
    ports = [free_port(), free_port()]
    outs = []
    for i in range(2):
        script, out = make_script(tmp_path / f"n{i}")
        outs.append(out)
        conf = storage_conf(redis, key) + issuer_block("pebble", pebble, tmp_path / f"state{i}") + f"""
    acme_notify {script};
    server {{
        listen 127.0.0.1:{pebble.http_port} reuseport;
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{ports[i]} ssl;
        server_name {name};
        acme_certificate pebble;
    }}
"""
        nginx_factory(conf, name=f"node{i}", wait_port=ports[i], main="env ACME_TEST_REVOCATION_POLL_MS=1000;")
        old = wait_served(ports[i], name, pebble)

    def all_events():
        return sorted((e, i) for i in range(2) for e, _, _, _ in events(outs[i]))
    Ctl(acmectl_bin, redis.url("?prefix=ngx"), pebble, key_file=key).ok("revoke", name)
    for i in range(2):
        wait_served(ports[i], name, pebble, other_than=old, timeout=30)
    wait_for(lambda: len(all_events()) >= 3, 10, what="the notifications")
    time.sleep(2.5)         # two polls of each node
    got = all_events()
    assert [e for e, _ in got] == ["issued", "renewed", "revoked"], got
    # revoked and renewed by one node
    assert got[1][1] == got[2][1], got
    assert pebble.order_count() == 2


@pytest.mark.serial
def test_http01_held_until_subscribed_again(pebble, nginx_factory, tmp_path, procs):
    """A challenge another node stored while this one's leader is not subscribed (Redis down, then back) is
    answered, not 404: the worker holds the request for the unknown token (without blocking: other requests
    are served meanwhile) and its leader checks Redis at once, subscribes again and copies the challenge."""
    redis = RedisServer(tmp_path / "redis", persist=True)       # the record survives the restart
    procs.procs.append(redis)
    redis.start()
    name, https, plain = "rd-held.example.org", free_port(), free_port()
    key = key_file(tmp_path / "storage.key")
    conf = (storage_conf(redis, key) + issuer_block("pebble", pebble, tmp_path / "state")
            + managed_servers(pebble.http_port, https, name) + f"""
    server {{
        listen 127.0.0.1:{plain};
        location / {{ return 200 "plain\\n"; }}
    }}
""")
    n = nginx_factory(conf, wait_port=https, allowed=REDIS_DOWN + [r"storage announcements lost"])
    wait_for(lambda: "subscribed to storage announcements" in n.log_text(), 15, what="the subscription")
    # stored as another node stores it, not announced: this node learns of it only from a resync
    token = "held-" + "H" * 40
    redis.command("SET", f"ngx:challenges/http-01/{token}",
                  signed(key, f"challenges/http-01/{token}", f"dns {name} {token}.thumb"))
    redis.command("SADD", "ngx:dir:challenges/http-01", token)
    mark = len(n.log_text())
    redis.stop()
    wait_for(lambda: "storage unreachable" in n.log_text(mark), 15, interval=0.1, what="Redis to be missed")

    # a token nobody stored: held for at most about 3 s, then 404 as before; the worker serves meanwhile
    got = {}

    def fetch(tok, key_):
        got[key_] = http_get(pebble.http_port, name, f"/.well-known/acme-challenge/{tok}")
    t = threading.Thread(target=fetch, args=("none-" + "N" * 40, "none"))
    started = time.monotonic()
    t.start()
    wait_for(lambda: not t.is_alive() or "waiting for them" in n.log_text(mark), 5, interval=0.05,
             what="the request to be held")
    assert t.is_alive(), f"answered at once while Redis is down: {got}"
    before = time.monotonic()
    assert http_get(plain, "x", "/")[0] == 200
    assert time.monotonic() - before < 1
    t.join(10)
    assert got["none"][0] == 404 and 2.5 < time.monotonic() - started < 5, got

    t = threading.Thread(target=fetch, args=(token, "answer"))
    t.start()
    wait_for(lambda: not t.is_alive() or n.log_text(mark).count("waiting for them") == 2, 5, interval=0.05,
             what="the request to be held")
    assert t.is_alive(), f"answered at once while Redis is down: {got}"
    redis.start()
    t.join(10)
    assert got.get("answer") == (200, f"{token}.thumb".encode()), (got, n.log_text(mark)[-3000:])
    assert f"unknown http-01 token \"{token}\"" not in n.log_text(mark)
