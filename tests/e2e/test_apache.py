"""mod_acme end to end: issuance (HTTP-01, TLS-ALPN-01, every MPM), serving, hot swap, fallback,
graceful restart, key types, EAB, preferred chain. Debian's apache2 + mod_acme against Pebble
(helpers and the apache_factory fixture in apache_harness.py)."""

import json
import os
import pwd
import re
import signal
import socket
import ssl
import threading
import time

import pytest

import harness
import leakcheck
from apache_harness import apache_factory  # noqa: F401  (fixture)
from apache_harness import (cert_issuer, cert_serial, cert_subject, http_get, issued_and_served,
                            log_pids_serials, stored_der, stored_serial, tls_get, tls_connect)


@pytest.mark.parametrize("mpm", ["event", "worker", "prefork"])
def test_http01_issuance_and_serving(apache_factory, pebble, procs, mpm):
    name = f"{mpm}.apache.example.org"
    a = apache_factory(pebble, mpm=mpm, name=f"apache-{mpm}")
    a.vhosts = a.managed_vhosts([name, "www." + name])
    a.start(procs)
    st, der = issued_and_served(a, name)
    assert set(st["identifiers"]) == {name, "www." + name}
    assert st["key_type"] == "ecdsa:256"
    assert st["not_after"] and st["next_renewal"]
    # the alias is served the same certificate
    status, _, der2, _ = tls_get(a.https_port, "www." + name)
    assert status == 200 and der2 == der
    assert pebble.order_count() == 1
    # state files: keys 0600, directories 0700
    d = a.state / "certs" / name
    assert (os.stat(d / "privkey.pem").st_mode & 0o777) == 0o600
    assert (os.stat(d).st_mode & 0o777) == 0o700
    if os.geteuid() == 0:       # the children's user owns the state
        uid = pwd.getpwnam("www-data").pw_uid
        assert all(p.lstat().st_uid == uid for p in a.state.rglob("*"))
    # no secrets in the status
    text = harness.http_request(f"http://127.0.0.1:{a.http_port}/acme-status").text
    assert "PRIVATE KEY" not in text


def _client_loop(port, name, stop, results, path="/index.html"):
    """Fresh TLS connections until stop is set: results gets (time, status or error, serial DER)."""
    while not stop.is_set():
        t = time.monotonic()
        try:
            status, _, der, _ = tls_get(port, name, path)
            results.append((t, status, der))
        except Exception as e:  # a failed handshake or request is what the test is about
            results.append((t, repr(e), None))


@pytest.mark.parametrize("mpm", ["event", "prefork"])
def test_forced_renewal_hot_swap(apache_factory, pebble, procs, mpm):
    name = f"swap-{mpm}.apache.example.org"
    a = apache_factory(pebble, mpm=mpm, name=f"apache-swap-{mpm}")
    a.vhosts = a.managed_vhosts([name])
    a.start(procs)
    st, der1 = issued_and_served(a, name)
    parent = a.proc.pid
    starts = a.log().count("resuming normal operations")

    # the handler: unknown names, other methods
    assert a.renew("unknown.example.org").status == 404
    r = harness.http_request(f"http://127.0.0.1:{a.http_port}/acme-status", method="PUT", data=b"x")
    assert r.status == 405
    r = harness.http_request(f"http://127.0.0.1:{a.http_port}/acme-status", method="POST", data=b"")
    assert r.status == 400

    stop, results = threading.Event(), []
    threads = [threading.Thread(target=_client_loop, args=(a.https_port, name, stop, results))
               for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        r = a.renew(name)
        assert r.status == 202, r.text
        harness.wait_for(lambda: stored_der(a.state, st["name"]) != der1, timeout=30,
                         what="the renewed certificate in the store")
        der2 = stored_der(a.state, st["name"])
        serial2 = cert_serial(der2)
        t_stored = time.monotonic()
        harness.wait_for(lambda: any(d == der2 for _, _, d in results[-20:]),
                         timeout=10, what="the renewed certificate to be served")
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(10)

    failed = [x for x in results if x[1] != 200]
    assert not failed, failed[:5]
    assert len(results) > 20
    # no restart happened
    assert a.proc.pid == parent and a.proc.alive()
    assert a.log().count("resuming normal operations") == starts
    # every fresh connection now gets the new certificate, whichever child accepts it
    mark = len(a.access().splitlines())
    for _ in range(30):
        status, _, der, _ = tls_get(a.https_port, name)
        assert status == 200 and der == der2
    after = [x for x in log_pids_serials("\n".join(a.access().splitlines()[mark:]))
             if x[3] == "/index.html"]      # not the MPM's own dummy connections
    assert after and all(s == serial2 for _, s, _, _ in after), after
    pids = {p for p, _, _, _ in after}
    if mpm == "prefork":
        assert len(pids) >= 2, pids
    # the handshakes that started a while after the store had it all served it
    late = [x for x in results if x[0] > t_stored + 0.3]
    assert late and all(d == der2 for _, _, d in late)
    assert {d for _, _, d in results} <= {der1, der2}
    assert pebble.order_count() == 2
    st2 = a.cert_status(name)
    assert st2["state"] == "valid"


def test_renewal_rereads_only_that_certificate(apache_factory, pebble, procs):
    """A renewal makes each child re-read the renewed certificate only, at its next handshake for it: another
    certificate's files are left alone (here replaced by garbage once served: reading them would log
    ACME0044 and fail)."""
    one, other = "one.reload.apache.example.org", "other.reload.apache.example.org"
    a = apache_factory(pebble, name="apache-one-reload")
    a.vhosts = a.managed_vhosts([one]) + a.managed_vhosts([other])
    a.start(procs)
    st, der1 = issued_and_served(a, one)
    st_other, _ = issued_and_served(a, other)
    for _ in range(10):
        assert tls_get(a.https_port, other)[0] == 200

    (a.state / "certs" / st_other["name"] / "fullchain.pem").write_text("not a certificate\n")
    r = a.renew(one)
    assert r.status == 202, r.text
    harness.wait_for(lambda: stored_der(a.state, st["name"]) != der1, timeout=30,
                     what="the renewed certificate in the store")
    der2 = stored_der(a.state, st["name"])
    harness.wait_for(lambda: tls_get(a.https_port, one)[2] == der2, timeout=10,
                     what="the renewed certificate to be served")
    for _ in range(20):     # every child
        status, _, der, _ = tls_get(a.https_port, one)
        assert status == 200 and der == der2
    time.sleep(0.5)
    assert "ACME0044" not in a.log()


def test_fallback_until_the_ca_comes_back(apache_factory, pebble_factory, procs, server_logs):
    pb = pebble_factory(start=False, port=harness.free_port(), management_port=harness.free_port(),
                        http_port=harness.free_port(), tls_port=harness.free_port())
    name = "fallback.apache.example.org"
    a = apache_factory(pb, name="apache-fallback")
    a.vhosts = a.managed_vhosts([name])
    server_logs.allow(r"ACME0090: acme: .*next try at")
    a.start(procs)
    starts = a.log().count("resuming normal operations")
    assert "ACME0039" in a.log() and "self-signed fallback" in a.log()

    status, body, der, _ = tls_get(a.https_port, name)
    assert status == 503
    assert cert_subject(der).split("=", 1)[1] == cert_issuer(der).split("=", 1)[1]  # self-signed
    assert name in harness.openssl("x509", "-inform", "DER", "-noout", "-ext", "subjectAltName",
                                   input=der).decode()
    # plain HTTP is not affected; the status says why
    assert http_get(a.http_port, name, "/index.html").status == 200
    harness.wait_for(lambda: (a.cert_status(name) or {}).get("last_error"), timeout=15,
                     what="the failure in the status")
    st = a.cert_status(name)
    assert st["state"] in ("pending", "failing") and st["not_after"] is None

    # the CA comes back: the certificate arrives and is served with no reload
    pb.start()
    issued_and_served(a, name)
    assert a.log().count("resuming normal operations") == starts


def test_graceful_restart_places_no_new_order(apache_factory, pebble, procs):
    name = "graceful.apache.example.org"
    a = apache_factory(pebble, name="apache-graceful")
    a.vhosts = a.managed_vhosts([name])
    a.start(procs)
    st, der = issued_and_served(a, name)
    assert pebble.order_count() == 1
    for _ in range(3):
        a.graceful()
        harness.wait_for(lambda: (a.status().get("driver_pid") or 0) > 0, timeout=15,
                         what="a driver in the new generation")
    status, _, der2, _ = tls_get(a.https_port, name)
    assert status == 200 and der2 == der
    time.sleep(1.5)
    assert pebble.order_count() == 1
    assert pebble.issued_count() == 1


def _proc_stat(pid):
    """/proc/PID/stat's fields after the command name: [state, ppid, ...]; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


@pytest.mark.serial
def test_stop_is_not_held_up_by_a_child_waiting_for_the_driver_lock(apache_factory, pebble, procs):
    """A child that waits to become the driver retries the lock every second; a stop (SIGTERM to the
    parent, as apache2 -k stop) ends that wait at once. The child is stopped well inside its wait (its
    retries follow its start, seen in /proc), and must be gone long before the retry would be due."""
    name = "stop.apache.example.org"
    a = apache_factory(pebble, name="apache-stop")     # event: two children, one the driver
    a.vhosts = a.managed_vhosts([name])
    a.start(procs)
    a.wait_valid(name)
    driver = a.status()["driver_pid"]
    parent = a.proc.pid
    waiting = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != driver
               and (_proc_stat(p) or [None, None])[1] == str(parent)]
    assert len(waiting) == 1, (driver, waiting)
    child = waiting[0]
    # its driver thread tried the lock at its start and tries again every second (LOCK_RETRY_MS)
    hz = os.sysconf("SC_CLK_TCK")
    started = int(_proc_stat(child)[19]) / hz           # starttime, seconds since boot
    now = time.clock_gettime(time.CLOCK_BOOTTIME)
    due = started + 1.0 * (int(now - started) + 2)      # a retry at least a second ahead
    time.sleep(due + 0.25 - now)                        # a quarter of a second after it: 0.75 s to wait
    t0 = time.monotonic()
    os.kill(parent, signal.SIGTERM)
    while time.monotonic() - t0 < 5:
        st = _proc_stat(child)
        if st is None or st[0] in ("Z", "X"):
            break
        time.sleep(0.005)
    took = time.monotonic() - t0
    assert a.proc.wait_exit(timeout=10) == 0
    assert took < 0.4, f"the waiting child took {took:.2f} s to stop"


ACME_OID_TEXT = "1.3.6.1.5.5.7.1.31"


@pytest.mark.parametrize("protocols", [None, "h2 http/1.1"])
def test_tls_alpn01_with_only_a_tls_listener(apache_factory, pebble, procs, protocols):
    name = "alpn-%s.apache.example.org" % ("h2" if protocols else "plain")
    a = apache_factory(pebble, name="apache-alpn", listen_http=False, http2=True,
                       acme_global="ACMEChallenge tls-alpn-01\n"
                       + (f"Protocols {protocols}\n" if protocols else ""))
    a.vhosts = a.managed_vhosts([name])
    a.start(procs)

    def st():
        status, body, _, _ = tls_get(a.https_port, name, "/acme-status")
        assert status == 200, body
        return json.loads(body)["certificates"][0]
    harness.wait_for(lambda: st()["state"] == "valid", timeout=45, interval=0.3, what="issuance")
    assert "ACME0062: tls-alpn-01: answering the challenge" in a.log()
    status, body, der, proto = tls_get(a.https_port, name, alpn=["h2", "http/1.1"] if not protocols
                                       else ["http/1.1"])
    assert status == 200 and "Pebble" in cert_issuer(der)
    assert cert_serial(der) == stored_serial(a.state, name)
    # ordinary clients: what the Protocols line says, never acme-tls/1
    s = tls_connect(a.https_port, name, alpn=["h2", "http/1.1"])
    try:
        assert s.selected_alpn_protocol() == ("h2" if protocols else "http/1.1")
    finally:
        s.close()
    if protocols:
        # a real HTTP/2 request is served (on an h2 stream: a secondary connection of the TLS one)
        p = harness.run_cmd(["curl", "-sk", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                             "--resolve", f"{name}:{a.https_port}:127.0.0.1",
                             f"https://{name}:{a.https_port}/index.html"], timeout=20)
        assert p.stdout.strip() == "2 200", (p.stdout, p.stderr)
    # acme-tls/1 offered for a name with no pending challenge: no challenge certificate
    try:
        s = tls_connect(a.https_port, name, alpn=["acme-tls/1"])
    except (ssl.SSLError, OSError):
        pass            # refusing the handshake is fine too
    else:
        try:
            assert s.selected_alpn_protocol() != "acme-tls/1"
            assert ACME_OID_TEXT not in harness.openssl(
                "x509", "-inform", "DER", "-noout", "-text", input=s.getpeercert(True)).decode()
        finally:
            s.close()
    assert pebble.order_count() == 1


def _tls12_cert(port, name, cipher):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(cipher)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=name) as s:
            return s.getpeercert(True)


def test_two_key_types_served_by_client_capability(apache_factory, pebble, procs):
    name = "dual.apache.example.org"
    a = apache_factory(pebble, name="apache-dual", acme_global="ACMEKeyType ecdsa:256 rsa:2048")
    a.vhosts = a.managed_vhosts([name])
    a.start(procs)
    a.wait_valid(name + "_rsa2048")
    a.wait_valid(name)
    assert {c["key_type"] for c in a.status()["certificates"]} == {"ecdsa:256", "rsa:2048"}
    ec = _tls12_cert(a.https_port, name, "ECDHE-ECDSA-AES128-GCM-SHA256")
    rsa = _tls12_cert(a.https_port, name, "ECDHE-RSA-AES128-GCM-SHA256")
    assert "id-ecPublicKey" in harness.openssl("x509", "-inform", "DER", "-noout", "-text", input=ec).decode()
    assert "rsaEncryption" in harness.openssl("x509", "-inform", "DER", "-noout", "-text", input=rsa).decode()
    assert cert_serial(ec) == stored_serial(a.state, name)
    assert cert_serial(rsa) == stored_serial(a.state, name + "_rsa2048")
    assert pebble.order_count() == 2


@pytest.mark.parametrize("form", ["file", "data"])
def test_external_account_binding(apache_factory, pebble_factory, procs, form):
    """The HMAC key in a file or inline (data:KEY, as nginx's external_account_key)."""
    key = leakcheck.EAB_HMAC_KEY
    pb = pebble_factory(eab_keys={"kid-1": key})
    name = "eab.apache.example.org"
    a = apache_factory(pb, name="apache-eab")
    keyfile = a.dir / "eab.key"
    keyfile.write_text(key + "\n")
    a.acme_global = f"ACMEExternalAccountBinding kid-1 {keyfile if form == 'file' else 'data:' + key}"
    a.vhosts = a.managed_vhosts([name])
    a.start(procs)
    issued_and_served(a, name)
    status = harness.http_request(f"http://127.0.0.1:{a.http_port}/acme-status").text
    assert key not in status and key not in a.log()


def test_per_vhost_overrides(apache_factory, pebble, procs):
    a = apache_factory(pebble, name="apache-override", acme_global="ACMEKeyType ecdsa:256")
    one, two = "one.apache.example.org", "two.apache.example.org"
    a.vhosts = a.managed_vhosts([one]) + a.managed_vhosts(
        [two], extra="    ACMEKeyType rsa:2048\n    ACMEChallenge tls-alpn-01\n")
    a.start(procs)
    a.wait_valid(one)
    st2 = a.wait_valid(two)
    assert st2["name"] == two + "_rsa2048" and st2["key_type"] == "rsa:2048"
    _, _, der1, _ = tls_get(a.https_port, one)
    _, _, der2, _ = tls_get(a.https_port, two)
    assert "id-ecPublicKey" in harness.openssl("x509", "-inform", "DER", "-noout", "-text", input=der1).decode()
    assert "rsaEncryption" in harness.openssl("x509", "-inform", "DER", "-noout", "-text", input=der2).decode()
    log = a.log()
    assert f"answering http-01 for {one}" in log
    assert f"tls-alpn-01: answering the challenge for {two}" in log


def test_ip_identifier_tls_alpn(apache_factory, pebble, procs):
    a = apache_factory(pebble, name="apache-ip", listen_http=False, acme_global="ACMEChallenge tls-alpn-01")
    a.vhosts = (f"<VirtualHost 127.0.0.1:{a.https_port}>\n    ServerName ip.apache.example.org\n"
                "    SSLEngine on\n    ACMECertificate 127.0.0.1\n</VirtualHost>\n")
    a.start(procs)

    def valid():
        status, body, _, _ = tls_get(a.https_port, "ip.apache.example.org", "/acme-status")
        c = json.loads(body)["certificates"][0]
        return c["state"] == "valid" and c
    harness.wait_for(valid, timeout=30, interval=0.3, what="the IP certificate")
    assert "1.0.0.127.in-addr.arpa" in a.log()
    _, _, der, _ = tls_get(a.https_port, "ip.apache.example.org")
    san = harness.openssl("x509", "-inform", "DER", "-noout", "-ext", "subjectAltName", input=der).decode()
    assert "IP Address:127.0.0.1" in san


def test_preferred_chain_is_served(apache_factory, pebble_factory, procs):
    pb = pebble_factory(env={"PEBBLE_ALTERNATE_ROOTS": "2"})
    alt = harness.openssl("x509", "-noout", "-subject", input=pb.roots(1).encode()).decode()
    alt_cn = re.search(r"CN\s*=\s*(.+)", alt).group(1).strip()
    name = "chain.apache.example.org"
    a = apache_factory(pb, name="apache-chain", acme_global=f'ACMEPreferredChain "{alt_cn}"')
    a.vhosts = a.managed_vhosts([name])
    a.start(procs)
    issued_and_served(a, name)
    # the served chain ends below the alternate root, and verifies against it
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=pb.roots(1))
    with socket.create_connection(("127.0.0.1", a.https_port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=name) as s:
            assert s.version()
    ctx0 = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx0.load_verify_locations(cadata=pb.roots(0))
    with pytest.raises(ssl.SSLError):
        with socket.create_connection(("127.0.0.1", a.https_port), timeout=5) as sock:
            ctx0.wrap_socket(sock, server_hostname=name)
