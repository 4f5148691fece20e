"""nginx + ngx_http_acme_module against Pebble: issuance, serving, hot swap, status, reload."""

import json
import re
import threading
import time

import pytest

from harness import HarnessError, free_port, http_request, openssl, wait_for
from nginx_harness import (cert_issuer, cert_serial, cert_text, http_get, https_get, issuer_block,  # noqa: F401
                           nginx_factory, tls_cert, tls_handshake, tls_verified)

NAME = "a.example.org"


def served_serial(port, sni, roots):
    try:
        return tls_verified(port, sni, roots)
    except (OSError, Exception):
        return None


def wait_issued(port, sni, pebble, timeout=40):
    roots = pebble.roots(0)
    return wait_for(lambda: served_serial(port, sni, roots), timeout,
                    interval=0.2, what=f"a Pebble certificate for {sni}")


def status(port, sni, path="/acme"):
    r = https_get(port, sni, path)
    assert r.status == 200, r.text
    return r.json()


def basic_conf(pebble, tmp_path, https, name=NAME, challenge=None, extra_server="", cert_args=""):
    return issuer_block("pebble", pebble, tmp_path / "state", challenge=challenge) + f"""
    server {{
        listen 127.0.0.1:{pebble.http_port};
        server_name {name};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {name};
        acme_certificate pebble{' ' + cert_args if cert_args else ''};
        {extra_server}
        location / {{ return 200 "tls\\n"; }}
        location = /acme {{ acme_status renew=on renew_interval=1s; }}
    }}
"""


def test_http01_issue_serve_status(pebble, nginx_factory, tmp_path):
    https = free_port()
    ng = nginx_factory(basic_conf(pebble, tmp_path, https), wait_port=https)
    serial = wait_issued(https, NAME, pebble)
    assert serial in pebble.issued_serials()
    assert pebble.order_count() == 1

    # every worker serves it (new connections land on either)
    roots = pebble.roots(0)
    for _ in range(10):
        assert tls_verified(https, NAME, roots) == serial

    r = https_get(https, NAME, "/", roots_pem=roots)
    assert r.status == 200 and r.text == "tls\n"

    st = wait_for(lambda: (lambda s: s if s["certificates"] and
                           s["certificates"][0]["state"] == "valid" else None)(
        status(https, NAME)), 10, what="status valid")
    c = st["certificates"][0]
    assert c["identifiers"] == [NAME]
    assert c["key_type"] == "ecdsa:256"
    assert c["not_after"] and c["next_renewal"]
    text = json.dumps(st)
    assert "PRIVATE" not in text

    # files: keys 0600, state dir 0700
    state = tmp_path / "state"
    assert (state.stat().st_mode & 0o777) == 0o700
    keys = list(state.rglob("privkey.pem"))
    assert keys and all((k.stat().st_mode & 0o777) == 0o600 for k in keys)
    assert ng.proc.alive()


def _workers_loaded(ng, since, name=NAME):
    import re
    pids = set(re.findall(r"\] (\d+)#\d+: .*acme: certificate \"%s\" loaded" % re.escape(name),
                          ng.log_text(since)))
    return pids


def test_forced_renewal_hot_swap_no_failures(pebble, nginx_factory, tmp_path):
    https = free_port()
    conf = basic_conf(pebble, tmp_path, https).replace(
        f"listen 127.0.0.1:{https} ssl;", f"listen 127.0.0.1:{https} ssl reuseport;")
    ng = nginx_factory(conf, wait_port=https)
    old = wait_issued(https, NAME, pebble)
    roots = pebble.roots(0)

    seen, failures, stop = [], [], threading.Event()

    def client():
        while not stop.is_set():
            try:
                seen.append(tls_verified(https, NAME, roots))
            except Exception as e:  # noqa: BLE001
                failures.append(repr(e))

    t = threading.Thread(target=client, daemon=True)
    t.start()
    try:
        time.sleep(0.3)
        mark = ng.log_size()
        r = https_get(https, NAME, f"/acme?renew={NAME}", method="POST")
        assert r.status == 202, r.text
        wait_for(lambda: seen and seen[-1] != old, 30, what="the renewed certificate")
        # both workers picked up the new generation, without a reload
        wait_for(lambda: len(_workers_loaded(ng, mark)) >= 2, 15,
                 what="both workers loading the renewed certificate")
        n = len(seen)
        wait_for(lambda: len(seen) > n + 20, 10, what="more handshakes")
    finally:
        stop.set()
        t.join(10)

    assert not failures, failures[:5]
    new = seen[-1]
    assert new != old and new in pebble.issued_serials()
    # old* new+: once a worker serves the new one, nobody goes back
    first_new = seen.index(new)
    assert all(s == old for s in seen[:first_new])
    assert all(s == new for s in seen[first_new:])
    assert pebble.order_count() == 2
    assert "reload" not in ng.log_text(mark).lower() or "reconfiguring" not in ng.log_text(mark)

    # renew of unknown names, bad methods
    assert https_get(https, NAME, "/acme?renew=nope.example.org", method="POST").status == 404
    assert https_get(https, NAME, "/acme", method="POST").status == 400
    assert https_get(https, NAME, "/acme", method="PUT").status == 405


def test_reload_and_restart_place_no_new_order(pebble, nginx_factory, tmp_path):
    https = free_port()
    ng = nginx_factory(basic_conf(pebble, tmp_path, https), wait_port=https)
    serial = wait_issued(https, NAME, pebble)
    roots = pebble.roots(0)
    assert pebble.order_count() == 1

    for _ in range(3):
        mark = ng.reload()
        ng.wait_log(r"acme: the ACME client runs in this cache manager process", since=mark, timeout=15)
        for _ in range(6):
            assert tls_verified(https, NAME, roots) == serial
    time.sleep(1.5)
    assert pebble.order_count() == 1
    assert "acme: \"a.example.org\": " not in ng.log_text(mark) or \
        "missing" not in ng.log_text(mark)

    # restart: the stored certificate is served at once, no order
    ng.stop()
    mark = ng.log_size()
    ng.start(wait_port=https)
    assert tls_verified(https, NAME, roots) == serial
    ng.wait_log(r"acme: the ACME client runs in this cache manager process", since=mark, timeout=15)
    time.sleep(1.5)
    assert tls_verified(https, NAME, roots) == serial
    assert pebble.order_count() == 1
    st = status(https, NAME)
    assert st["certificates"][0]["state"] == "valid"


def test_tls_alpn01_without_plain_http(pebble, nginx_factory, tmp_path):
    name = "alpn.example.org"
    conf = issuer_block("pebble", pebble, tmp_path / "state", challenge="tls-alpn-01") + f"""
    server {{
        listen 127.0.0.1:{pebble.tls_port} ssl http2;
        server_name {name};
        acme_certificate pebble;
        location / {{ return 200 "tls\\n"; }}
    }}
"""
    nginx_factory(conf, wait_port=pebble.tls_port)
    serial = wait_issued(pebble.tls_port, name, pebble)
    assert pebble.order_count() == 1
    # ordinary clients: h2 / http/1.1 as nginx selects them, never acme-tls/1
    der, proto = tls_handshake(pebble.tls_port, name, alpn=["h2", "http/1.1"])
    assert proto == "h2" and cert_serial(der) == serial
    der, proto = tls_handshake(pebble.tls_port, name, alpn=["http/1.1"])
    assert proto == "http/1.1"
    der, proto = tls_handshake(pebble.tls_port, name, alpn=["acme-tls/1", "http/1.1"])
    assert proto == "http/1.1" and cert_serial(der) == serial
    with pytest.raises(Exception):
        tls_handshake(pebble.tls_port, name, alpn=["acme-tls/1"])


def test_variable_form(pebble, nginx_factory, tmp_path):
    https = free_port()
    conf = basic_conf(pebble, tmp_path, https, extra_server="""
        ssl_certificate $acme_certificate;
        ssl_certificate_key $acme_certificate_key;""")
    ng = nginx_factory(conf, wait_port=https)
    serial = wait_issued(https, NAME, pebble)
    r = https_get(https, NAME, "/", roots_pem=pebble.roots(0))
    assert r.status == 200
    # renewal reaches the variables too
    mark = ng.log_size()
    assert https_get(https, NAME, f"/acme?renew={NAME}", method="POST").status == 202
    roots = pebble.roots(0)
    wait_for(lambda: served_serial(https, NAME, roots) not in (None, serial), 30,
             what="renewed certificate through $acme_certificate")
    assert "cannot load certificate" not in ng.log_text(mark)


def test_fallback_until_the_ca_is_reachable(pebble_factory, nginx_factory, tmp_path):
    pb = pebble_factory(start=False, port=free_port(), management_port=free_port(),
                        http_port=free_port(), tls_port=free_port())
    https = free_port()
    ng = nginx_factory(basic_conf(pb, tmp_path, https), wait_port=https,
                       allowed=[r"acme: ", r"Couldn't connect|connect"])
    # the CA is down: handshakes still work, with the self-signed fallback
    der = tls_cert(https, NAME)
    text = cert_issuer(der)
    assert "Pebble" not in text
    ng.wait_log(r"serving the self-signed fallback certificate for \"a.example.org\"")
    ng.wait_log(r"\[error\].*acme: \"a.example.org\": .*next try at", timeout=20)
    # the CA comes back: the certificate arrives without a reload
    pb.start()
    serial = wait_issued(https, NAME, pb, timeout=60)
    assert serial in pb.issued_serials()


def test_two_key_types_by_client_capability(pebble, nginx_factory, tmp_path):
    https = free_port()
    conf = basic_conf(pebble, tmp_path, https,
                      extra_server="acme_certificate pebble key=rsa:2048;")
    nginx_factory(conf, wait_port=https)
    roots = pebble.roots(0)

    def both():
        try:
            ec = tls_cert(https, NAME)
            rsa = tls_cert(https, NAME, tls12=True, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
        except Exception:  # noqa: BLE001
            return None
        # (while only one of them exists, it is served to every client)
        if "Pebble" in cert_issuer(ec) and "Pebble" in cert_issuer(rsa) \
                and "id-ecPublicKey" in cert_text(ec):
            return ec, rsa
        return None
    ec, rsa = wait_for(both, 60, interval=0.3, what="both certificates")
    assert "id-ecPublicKey" in cert_text(ec)
    assert "rsaEncryption" in cert_text(rsa)
    assert cert_serial(ec) != cert_serial(rsa)
    # a TLS 1.3 client is served ECDSA, verified
    assert tls_verified(https, NAME, roots) == cert_serial(ec)
    assert pebble.order_count() == 2


def test_issuer_fallback_when_first_ca_is_down(pebble, nginx_factory, tmp_path):
    https = free_port()
    dead = f"https://127.0.0.1:{free_port()}/dir"
    conf = issuer_block("dead", dead, tmp_path / "state") + \
        basic_conf(pebble, tmp_path, https).replace(
            "acme_certificate pebble;", "acme_certificate dead fallback=pebble;")
    ng = nginx_factory(conf, wait_port=https,
                       allowed=[r"acme: .*dead|acme: .*127\.0\.0\.1"])
    serial = wait_issued(https, NAME, pebble, timeout=60)
    assert serial in pebble.issued_serials()
    assert "issuer \"dead\" failed, trying \"pebble\"" in ng.log_text()


def test_cache_manager_killed_respawned_takes_over(pebble, nginx_factory, tmp_path):
    # the ACME client runs in the cache manager, never in a worker; killed, the master respawns it and
    # the new one takes the lock over
    import os
    import signal as sig
    https = free_port()
    ng = nginx_factory(basic_conf(pebble, tmp_path, https), wait_port=https,
                       allowed=[r"cache manager process \d+ exited on signal 9"])
    old = wait_issued(https, NAME, pebble)
    leader = wait_for(lambda: status(https, NAME).get("leader_pid"), 10, what="leader pid")
    assert ng.helper_pids() == [leader]
    assert leader not in ng.worker_pids()
    mark = ng.log_size()
    os.kill(leader, sig.SIGKILL)
    ng.wait_log(r"acme: the ACME client runs in this cache manager process \(took over\)", since=mark,
                timeout=15)
    new_leader = wait_for(lambda: (lambda p: p if p and p != leader else None)(
        status(https, NAME).get("leader_pid")), 15, what="new leader in status")
    assert ng.helper_pids() == [new_leader]
    # the new cache manager works: a forced renewal goes through it
    assert https_get(https, NAME, f"/acme?renew={NAME}", method="POST").status == 202
    roots = pebble.roots(0)
    wait_for(lambda: served_serial(https, NAME, roots) not in (None, old), 30,
             what="renewal by the new cache manager")
    assert pebble.order_count() == 2


def test_reload_storm_during_issuance_places_one_order(pebble, nginx_factory, tmp_path):
    https = free_port()
    ng = nginx_factory(basic_conf(pebble, tmp_path, https), wait_port=https,
                       allowed=[r"acme: "])
    for _ in range(10):
        ng.proc.send_signal(__import__("signal").SIGHUP)
        time.sleep(0.15)
    serial = wait_issued(https, NAME, pebble, timeout=60)
    time.sleep(2)
    assert serial in pebble.issued_serials()
    assert pebble.issued_count() == 1
    assert pebble.order_count() == 1, pebble.order_count()


def test_rsa_key_made_off_the_worker(pebble, nginx_factory, tmp_path):
    # an RSA-4096 key takes about a second: the cache manager makes it in a thread and keeps running;
    # the certificate still arrives, and nginx never sees a child process it did not start (it would
    # reap it and log "unknown process ... exited", or an alert if it was killed)
    https = free_port()
    conf = basic_conf(pebble, tmp_path, https, cert_args="key=rsa:4096")
    ng = nginx_factory(conf, wait_port=https)
    ng.wait_log(r"acme: generating an RSA-4096 key", timeout=30)

    def issued():
        try:
            c = tls_cert(https, NAME, tls12=True, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
        except Exception:  # noqa: BLE001
            return None
        return c if "Pebble" in cert_issuer(c) else None
    c = wait_for(issued, 60, interval=0.3, what="the RSA-4096 certificate")
    assert "Public-Key: (4096 bit)" in cert_text(c)
    assert not re.search(r"\[(alert|crit|emerg)\]", ng.log_text())
    assert "unknown process" not in ng.log_text()
    assert "in a background thread" in ng.log_text()


def test_failed_load_is_retried(pebble, nginx_factory, tmp_path):
    # a worker that cannot load a stored certificate (here: a key that does not match it, as while a file is
    # replaced by hand) must try again, not record the generation as loaded and serve the fallback forever
    https = free_port()
    ng = nginx_factory(basic_conf(pebble, tmp_path, https), wait_port=https, workers=1,
                       allowed=[r"stored certificate \"%s\" is unusable" % re.escape(NAME)])
    ng.wait_log(r'"%s": certificate issued by .* and stored' % re.escape(NAME), timeout=40)
    key = tmp_path / "state" / "certs" / NAME / "privkey.pem"
    good = key.read_bytes()
    other = tmp_path / "other.pem"
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(other))
    key.write_bytes(other.read_bytes())
    mark = ng.log_size()
    assert "Pebble" not in cert_issuer(tls_cert(https, NAME))       # the fallback
    ng.wait_log(r'stored certificate "%s" is unusable' % re.escape(NAME), timeout=10, since=mark)
    key.write_bytes(good)
    serial = wait_issued(https, NAME, pebble, timeout=15)
    assert serial in pebble.issued_serials()
    assert pebble.order_count() == 1


def test_several_certificates_of_one_type_by_sni(pebble, nginx_factory, tmp_path):
    # one server, one ECDSA certificate per name (identifiers listed): each name gets its own
    https = free_port()
    names = ["one.example.org", "two.example.org", "three.example.org"]
    conf = issuer_block("pebble", pebble, tmp_path / "state") + f"""
    server {{
        listen 127.0.0.1:{pebble.http_port};
        server_name {' '.join(names)};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {' '.join(names)};
        {' '.join(f'acme_certificate pebble {n};' for n in names)}
        location / {{ return 200 "tls\\n"; }}
    }}
"""
    nginx_factory(conf, wait_port=https)
    roots = pebble.roots(0)
    for n in names:
        wait_for(lambda: served_serial(https, n, roots), 60, interval=0.3, what=f"the certificate of {n}")
        text = cert_text(tls_cert(https, n))
        assert f"DNS:{n}" in text and all(f"DNS:{o}" not in text for o in names if o != n), text
    # an unknown name: the server's first certificate
    assert "DNS:one.example.org" in cert_text(tls_cert(https, "other.example.org"))
    assert pebble.issued_count() == 3


@pytest.mark.parametrize("form", ["data", "file"])
def test_external_account_binding(pebble_factory, nginx_factory, tmp_path, form):
    """A CA that requires EAB: the HMAC key inline (data:KEY, as nginx-acme) or in a file; never shown."""
    import leakcheck
    key = leakcheck.EAB_HMAC_KEY
    pb = pebble_factory(eab_keys={"kid-1": key})
    keyfile = tmp_path / "eab.key"
    keyfile.write_text(key + "\n")
    https = free_port()
    arg = f"data:{key}" if form == "data" else keyfile
    conf = basic_conf(pb, tmp_path, https).replace(
        "    accept_terms_of_service;\n", f"    accept_terms_of_service;\n    external_account_key kid-1 {arg};\n", 1)
    ng = nginx_factory(conf, wait_port=https)
    serial = wait_issued(https, NAME, pb)
    assert serial in pb.issued_serials()
    assert key not in ng.log_text() and key not in json.dumps(status(https, NAME))
