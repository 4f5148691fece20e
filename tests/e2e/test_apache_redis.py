"""mod_acme with ACMEStorage redis://...: issuance into Redis (HTTP-01, TLS-ALPN-01), certificates written by
another node (acmectl) served without restart, keys sealed with ACMEStorageKey, a Redis outage (serving goes
on, a graceful restart works from the local cache) and the recovery (renewal works again)."""

import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import harness
import leakcheck
from apache_harness import apache_factory  # noqa: F401  (fixture)
from apache_harness import cert_serial, http_get, tls_get
from test_redis_store import REDIS_CLI, REDIS_SERVER, Ctl, Redis, key_file, signed

pytestmark = pytest.mark.skipif(not (os.access(REDIS_SERVER, os.X_OK) and os.access(REDIS_CLI, os.X_OK)),
                                reason="redis-server / redis-cli not installed")

PREFIX = "ap"


def _key(path):
    kf = key_file(path)
    if os.geteuid() == 0:
        os.chmod(kf, 0o600)     # read by the parent (root) only, as mod_ssl's keys
    return kf


def _apache(apache_factory, pebble, redis, kf, names, challenge="http-01", **kw):
    a = apache_factory(pebble, acme_global=(f'ACMEStorage "{redis.url("/0")}" prefix={PREFIX}\n'
                                            f'ACMEStorageKey "{kf}"\nACMEChallenge {challenge}\n'), **kw)
    a.vhosts = a.managed_vhosts(names)
    return a


def _redis_serial(redis, name):
    pem = redis.value(f"{PREFIX}:certs/{name}/fullchain.pem")
    p = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem, capture_output=True, check=True)
    return harness.normalize_serial(p.stdout.decode())


def _served_serial(a, name):
    status, _, der, _ = tls_get(a.https_port, name)
    assert status == 200
    return cert_serial(der)


def _wait_served(a, name, serial, timeout=30):
    return harness.wait_for(lambda: _served_serial(a, name) == serial, timeout=timeout, interval=0.3,
                            what=f"{name} to serve {serial}")


def test_http01_into_redis_sealed_and_outage(apache_factory, pebble, procs, tmp_path):
    redis = Redis(procs, tmp_path / "redis")
    kf = _key(tmp_path / "storage.key")
    name = "redis.apache.example.org"
    a = _apache(apache_factory, pebble, redis, kf, [name])
    a.start(procs)
    a.wait_valid(name)
    serial = _redis_serial(redis, name)
    _wait_served(a, name, serial)

    # everything in Redis, keys sealed; nothing but the cache and fallbacks on disk
    keys = redis.keys(f"{PREFIX}:*")
    assert f"{PREFIX}:certs/{name}/meta.json" in keys
    assert any(k.startswith(f"{PREFIX}:accounts/") and k.endswith("/account.key") for k in keys)
    assert redis.get(f"{PREFIX}:certs/{name}/privkey.pem").startswith(b"acme-aead-v1:")
    assert not (a.state / "certs").exists() and not (a.state / "accounts").exists()
    cached = a.state / "cache" / name / "privkey.pem"
    assert (os.stat(cached).st_mode & 0o777) == 0o600
    # without the key file the private key cannot be read
    p = Ctl(harness_ctl(), redis.url(f"/0?prefix={PREFIX}"), pebble).run("revoke", "--with-cert-key", name)
    assert p.returncode != 0 and "storage key" in p.stderr, p.stderr

    # Redis down (its data saved first, as a persistent Redis would): serving goes on, the outage is logged
    # once, a graceful restart works from the local cache
    redis.cli("SAVE")
    a.allow(r"ACME0087: ACMEStorage redis://\S+ is out of reach \(.*cannot connect: Connection refused\)")
    # the driver after the graceful restart cannot read the store: it puts the certificate off, orders nothing
    a.allow(rf'ACME0090: acme: "{re.escape(name)}": storage unreachable, nothing ordered: ')
    redis.proc.stop()
    harness.wait_for(lambda: "is out of reach" in a.log(), timeout=20, what="the outage to be logged")
    assert _served_serial(a, name) == serial
    since = len(a.log())
    a.graceful()
    assert _served_serial(a, name) == serial
    time.sleep(6)       # more than one generation check
    assert _served_serial(a, name) == serial
    assert a.log().count("is out of reach") <= 2      # once per driver, not per check
    assert f'"{name}": missing from' not in a.log()[since:]

    # Redis back: the recovery is logged, a renewal works and is served
    redis.proc.start()
    redis.proc.wait_port(redis.port, timeout=10)
    harness.wait_for(lambda: "answers again" in a.log(), timeout=30, what="the recovery to be logged")
    r = a.renew(name)
    assert r.status == 202, r
    new = harness.wait_for(lambda: (lambda s: s if s != serial else None)(_redis_serial(redis, name)),
                           timeout=60, interval=0.5, what="a renewal stored in Redis")
    _wait_served(a, name, new)


def harness_ctl():
    return os.path.join(os.environ.get("ACME_BUILD", "build"), "acmectl")


@pytest.mark.parametrize("mpm", ["event", "prefork"])
def test_tlsalpn01_and_acmectl_hot_swap(apache_factory, pebble, procs, tmp_path, mpm):
    """Apache issues over TLS-ALPN-01 into Redis; acmectl (another node) renews into the same Redis over
    HTTP-01; Apache serves the new certificate without restart (prefork: every child its own connection)."""
    redis = Redis(procs, tmp_path / "redis")
    kf = _key(tmp_path / "storage.key")
    name = "alpn.redis.apache.example.org"
    a = _apache(apache_factory, pebble, redis, kf, [name], challenge="tls-alpn-01",
                http_port=harness.free_port(), mpm=mpm)
    a.start(procs)
    a.wait_valid(name)
    first = _redis_serial(redis, name)
    _wait_served(a, name, first)
    pid_line = a.log().count("resuming normal operations")

    ctl = Ctl(harness_ctl(), redis.url(f"/0?prefix={PREFIX}"), pebble, key_file=kf)
    ctl.ok("renew", "--force", "--http-listen", f"127.0.0.1:{pebble.http_port}", name)
    second = _redis_serial(redis, name)
    assert second != first
    _wait_served(a, name, second, timeout=20)
    assert a.log().count("resuming normal operations") == pid_line, "no restart"
    # children serve only what the driver wrote into the local cache, before it bumped the generation
    assert ((a.state / "cache" / name / "fullchain.pem").read_bytes().rstrip()
            == redis.value(f"{PREFIX}:certs/{name}/fullchain.pem").rstrip())


def _get_calls(redis):
    m = re.search(r"cmdstat_get:calls=(\d+)", redis.cli("INFO", "commandstats").decode())
    return int(m.group(1)) if m else 0


def test_bogus_tokens_spare_redis(apache_factory, pebble, procs, tmp_path):
    """Bogus HTTP-01 requests: other names and malformed tokens never reach Redis, a repeated well-formed
    token for a managed name is looked up about once a second per child."""
    redis = Redis(procs, tmp_path / "redis")
    kf = _key(tmp_path / "storage.key")
    name = "flood.redis.apache.example.org"
    a = _apache(apache_factory, pebble, redis, kf, [name])
    a.start(procs)
    a.wait_valid(name)
    before = _get_calls(redis)
    t0 = time.monotonic()
    token = "A" * 43
    for i in range(60):
        assert http_get(a.http_port, "not-managed.example.org", f"/.well-known/acme-challenge/{token}").status == 404
        assert http_get(a.http_port, name, "/.well-known/acme-challenge/short").status == 404
        assert http_get(a.http_port, name, f"/.well-known/acme-challenge/{token}").status == 404
    seconds = time.monotonic() - t0
    calls = _get_calls(redis) - before
    # children (2 for event in the harness, at most 4) x seconds, plus the driver's generation checks
    assert calls <= (int(seconds) + 1) * 4 + int(seconds / 5) + 2, (calls, seconds)


def test_forged_records_refused(apache_factory, pebble, procs, tmp_path, server_logs):
    """With ACMEStorageKey, what Redis holds must authenticate: a challenge record written straight into Redis
    is not answered (and logged once per child, not per request); an attacker's plaintext key and certificate
    are refused, the certificate served stays, a graceful restart included."""
    redis = Redis(procs, tmp_path / "redis")
    kf = _key(tmp_path / "storage.key")
    name = "forged.redis.apache.example.org"
    a = _apache(apache_factory, pebble, redis, kf, [name])
    server_logs.allow(r"ACME0113: redis store \S+: refused ")
    server_logs.allow(r"ACME0052: http-01: store look-up failed: .*a value without a MAC")
    a.start(procs)
    a.wait_valid(name)
    serial = _redis_serial(redis, name)
    _wait_served(a, name, serial)

    forged, good = "F" * 43, "G" * 43
    redis.cli("SET", f"{PREFIX}:challenges/http-01/{forged}", f"dns {name} {forged}.thumb")
    redis.cli("SET", f"{PREFIX}:challenges/http-01/{good}",
              signed(kf, f"challenges/http-01/{good}", f"dns {name} {good}.t"))
    for _ in range(10):
        assert http_get(a.http_port, name, f"/.well-known/acme-challenge/{forged}").status == 404
        time.sleep(0.1)
    r = http_get(a.http_port, name, f"/.well-known/acme-challenge/{good}")
    assert (r.status, r.body) == (200, f"{good}.t".encode()), r
    children = 3        # the harness's event MPM: ServerLimit 3
    n = a.log().count(f"refused challenges/http-01/{forged}: a value without a MAC")
    assert 1 <= n <= children, a.log()

    # an attacker's key (plaintext) and certificate in place of the sealed key and the signed chain
    k, c = tmp_path / "evil.key", tmp_path / "evil.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(k), "-out", str(c), "-subj", f"/CN={name}", "-addext",
                    f"subjectAltName=DNS:{name}", "-days", "30"], check=True, capture_output=True)
    redis.cli("SET", f"{PREFIX}:certs/{name}/privkey.pem", k.read_bytes())
    redis.cli("SET", f"{PREFIX}:certs/{name}/fullchain.pem", c.read_bytes())
    redis.cli("INCR", f"{PREFIX}:info:generation")
    redis.cli("PUBLISH", f"{PREFIX}:events", name)
    harness.wait_for(lambda: f"refused certs/{name}/fullchain.pem: a value without a MAC" in a.log(), timeout=20,
                     what="the forged certificate to be refused")
    for _ in range(5):
        assert _served_serial(a, name) == serial
        time.sleep(0.3)
    a.graceful()
    assert _served_serial(a, name) == serial
    assert "PRIVATE KEY" not in a.log()


def test_config_errors(apache_factory, pebble, tmp_path):
    a = apache_factory(pebble, acme_global='ACMEStorage "redis://127.0.0.1:1/0?bogus=1"\n')
    a.vhosts = a.managed_vhosts(["bad.example.org"])
    p = a.config_test()
    assert p.returncode != 0 and "ACMEStorage" in p.stderr and "bogus" in p.stderr, p.stderr
    # a password in the URL is never shown, whatever is wrong with the URL
    pw = leakcheck.REDIS_PASSWORD
    for url, needle in ((f"redis://:{pw}@127.0.0.1:1/0?bogus=1", "bogus"),
                        (f"redis://u:{pw}@127.0.0.1:notaport/0", "port"),
                        (f"http://:{pw}@127.0.0.1:1/0", "redis://")):
        a.acme_global = f'ACMEStorage "{url}"\n'
        p = a.config_test()
        assert p.returncode != 0 and "ACMEStorage" in p.stderr and needle in p.stderr, p.stderr
        assert ":***@" in p.stderr and pw not in p.stdout + p.stderr, p.stderr
    a.acme_global = 'ACMEStorage "redis://127.0.0.1:1/0"\nACMEStorageKey /nonexistent/storage.key\n'
    p = a.config_test()
    assert p.returncode != 0 and "ACMEStorageKey" in p.stderr and "/nonexistent/storage.key" in p.stderr, p.stderr
    # a good URL with Redis not running: the test passes (nothing connects)
    kf = _key(tmp_path / "k")
    a.acme_global = f'ACMEStorage "redis://127.0.0.1:1/0" prefix=x\nACMEStorageKey "{kf}"\n'
    p = a.config_test()
    assert p.returncode == 0, p.stderr


@pytest.mark.serial
def test_renewal_while_redis_hangs_keeps_handshakes_fast(apache_factory, pebble, procs, tmp_path):
    """Redis stopped (SIGSTOP: connections hang rather than fail), one renewal forced: every HTTPS request
    is answered quickly. A handshake reads only local files (the cache the driver keeps), never Redis."""
    redis = Redis(procs, tmp_path / "redis")
    kf = _key(tmp_path / "storage.key")
    name = "hang.redis.apache.example.org"
    a = _apache(apache_factory, pebble, redis, kf, [name])
    a.start(procs)
    a.wait_valid(name)
    serial = _redis_serial(redis, name)
    _wait_served(a, name, serial)

    redis.proc.send_signal(signal.SIGSTOP)
    try:
        r = a.renew(name)
        assert r.status == 202, r
        slow = []
        for i in range(60):
            t0 = time.monotonic()
            try:
                status, _, der, _ = tls_get(a.https_port, name, timeout=10)
            except OSError as e:
                slow.append((i, f"{type(e).__name__}: {e}"))
                continue
            took = time.monotonic() - t0
            assert status == 200
            assert cert_serial(der) == serial
            if took > 2:
                slow.append((i, round(took, 1)))
        assert not slow, slow
    finally:
        redis.proc.send_signal(signal.SIGCONT)


def test_challenge_answered_as_soon_as_redis_is_back(apache_factory, pebble, procs, tmp_path):
    """Redis stopped while challenge requests come in (every child's look-up fails: 503, not a 404 saying the
    token does not exist), then back: a token published at once is answered by every child at once, as the
    CA's validation, asked for by a node that already sees Redis, must be. No child keeps failing on the
    connection Redis's restart broke, nor on the back-off its refused connects left."""
    redis = Redis(procs, tmp_path / "redis")
    kf = _key(tmp_path / "storage.key")
    name = "back.redis.apache.example.org"
    a = _apache(apache_factory, pebble, redis, kf, [name])
    a.allow(r"ACME0087: ACMEStorage redis://\S+ is out of reach \(.*cannot connect: Connection refused\)")
    a.start(procs)
    a.wait_valid(name)
    path = "/.well-known/acme-challenge/"
    token = "T" * 43

    def many(tok, n=24):
        with ThreadPoolExecutor(6) as ex:
            return list(ex.map(lambda _: http_get(a.http_port, name, path + tok), range(n)))

    # every child connected (an unknown token: 404), then the connections broken by the outage
    assert {r.status for r in many("W" * 43)} == {404}
    redis.proc.stop()
    down = many("D" * 43)
    assert {r.status for r in down} == {503}, [r.status for r in down]
    assert all(r.headers.get("Retry-After") for r in down)
    t0 = time.monotonic()
    redis.proc.start()
    redis.proc.wait_port(redis.port, timeout=10)
    redis.cli("SET", f"{PREFIX}:challenges/http-01/{token}",
              signed(kf, f"challenges/http-01/{token}", f"dns {name} {token}.t"))
    back = many(token)
    took = time.monotonic() - t0
    assert [(r.status, r.body) for r in back] == [(200, f"{token}.t".encode())] * len(back), \
        ([r.status for r in back], round(took, 2))
