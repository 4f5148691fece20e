"""nginx's status snapshot (issue #13): 1,000 managed certificates with the default acme_shared_zone, a reload
that resizes the status zone, an order's progress followed without polling.

The 1,000 are pre-seeded in the state directory (leaf certificates from a local CA made here, metadata in the
store's format), so no order is placed for them; three more really issue from Pebble meanwhile. The status
document must list every certificate, fresh, and the log must not say that a zone is full.
"""

import datetime
import json
import os
import re
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fault_proxy import FaultProxy
from harness import free_port, wait_for
from nginx_harness import cert_issuer, https_get, issuer_block, nginx_factory, tls_cert, tls_verified  # noqa: F401

MANY = 1000
PER_SERVER = 1
FRESH = ["fresh1.many.example.org", "fresh2.many.example.org", "fresh3.many.example.org"]


def seeded_name(i):
    return f"c{i:04d}.many.example.org"


def _rfc3339(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def seed_state(state, names, directory_url):
    """certs/<name>/{fullchain.pem, privkey.pem, meta.json} for each name, from a local CA."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    nb, na = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=90)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "many test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(nb).not_valid_after(na)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    certs = state / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(nb).not_valid_after(na)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        d = certs / name
        d.mkdir(mode=0o700)
        (d / "fullchain.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca_pem)
        fd = os.open(d / "privkey.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        (d / "meta.json").write_text(json.dumps({
            "name": name,
            "identifiers": [{"type": "dns", "value": name}],
            "keyspec": "ecdsa:256",
            "ca": directory_url,
            "not_before": _rfc3339(nb),
            "not_after": _rfc3339(na),
            "issued_at": _rfc3339(nb),
            "failures": 0,
        }))


def many_conf(pebble, state, https, many=MANY):
    """The seeded certificates in servers of PER_SERVER names each (one: a server block per certificate, as
    in the report), the fresh ones in a server of their own."""
    servers = []
    for s in range(0, many, PER_SERVER):
        names = [seeded_name(i) for i in range(s, s + PER_SERVER)]
        servers.append(f"""
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {' '.join(names)};
        {' '.join(f'acme_certificate pebble {n};' for n in names)}
        location / {{ return 200 "tls\\n"; }}
    }}""")
    return issuer_block("pebble", pebble, state) + f"""
    server_names_hash_max_size 4096;
    server_names_hash_bucket_size 128;
    server {{
        listen 127.0.0.1:{pebble.http_port};
        server_name {' '.join(FRESH)};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {' '.join(FRESH)};
        {' '.join(f'acme_certificate pebble {n};' for n in FRESH)}
        location / {{ return 200 "tls\\n"; }}
        location = /acme {{ acme_status renew=on renew_interval=1s; }}
    }}""" + "".join(servers) + "\n"


def status(https):
    r = https_get(https, FRESH[0], "/acme", timeout=10)
    assert r.status == 200, r.text
    return r


def test_thousand_certificates_default_zone(pebble, nginx_factory, tmp_path):
    t0 = time.monotonic()
    state = tmp_path / "state"
    seed_state(state, [seeded_name(i) for i in range(MANY)], pebble.directory_url)
    https = free_port()
    ng = nginx_factory(many_conf(pebble, state, https), wait_port=https)

    # the few real ones issue while the status holds 1,003 certificates
    roots = pebble.roots(0)
    for name in FRESH:
        wait_for(lambda name=name: _served(https, name, roots), 60, interval=0.3,
                 what=f"a Pebble certificate for {name}")

    r, st = wait_for(lambda: _all_valid(https, MANY + len(FRESH)), 30, interval=0.5,
                     what="every certificate valid in the status")
    assert st["leader_pid"] in ng.helper_pids()
    # compact: no indentation, no blank after separators
    assert "\n" not in r.text and ", " not in r.text and '": ' not in r.text
    certs = {c["name"]: c for c in st["certificates"]}
    for name in FRESH:
        assert certs[name]["issuer"] == pebble.directory_url and certs[name]["failures"] == 0
    c = certs[seeded_name(MANY - 1)]
    assert c["identifiers"] == [seeded_name(MANY - 1)] and c["renewal_reason"] == "lifetime"
    assert c["last_error"] is None and c["identifier_errors"] == []

    # only the few placed orders; the seeded ones are served as stored
    assert pebble.order_count() == len(FRESH)
    assert "many test CA" in cert_issuer(tls_cert(https, seeded_name(500)))

    # a forced renewal of one of them works and shows up in the status
    mark = ng.log_size()
    r2 = https_get(https, FRESH[0], f"/acme?renew={FRESH[1]}", method="POST")
    assert r2.status == 202, r2.text
    wait_for(lambda: f'certificate "{FRESH[1]}" updated' in ng.log_text(mark), 40,
             what="the forced renewal")
    wait_for(lambda: pebble.order_count() == len(FRESH) + 1
             and _cert(https, FRESH[1])["state"] == "valid", 30, interval=0.5, what="the renewal valid in the status")

    text = ng.log_text()
    assert "zone is full" not in text and "does not fit" not in text
    assert time.monotonic() - t0 < 90


def _all_valid(https, n):
    r = status(https)
    st = r.json()
    certs = {c["name"]: c for c in st["certificates"]}
    if len(certs) == n and all(c["state"] == "valid" for c in certs.values()):
        return r, st
    return None


def _cert(https, name):
    return {c["name"]: c for c in status(https).json()["certificates"]}[name]


def _served(https, name, roots):
    try:
        return tls_verified(https, name, roots)
    except Exception:  # noqa: BLE001
        return None


def test_reload_resizing_the_status_zone_keeps_the_status(pebble, nginx_factory, tmp_path):
    """More certificates after a reload mean a larger status zone: the new zone starts with the old
    document, so acme_status never answers with fewer certificates meanwhile."""
    state = tmp_path / "state"
    seed_state(state, [seeded_name(i) for i in range(200)], pebble.directory_url)
    https = free_port()
    ng = nginx_factory(many_conf(pebble, state, https, 100), wait_port=https)
    wait_for(lambda: _all_valid(https, 100 + len(FRESH)), 60, interval=0.5, what="103 certificates valid")

    seen, errors, stop = [], [], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                seen.append(len(status(https).json()["certificates"]))
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
            time.sleep(0.02)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        ng.write_conf(many_conf(pebble, state, https, 200))
        ng.reload()
        wait_for(lambda: _all_valid(https, 200 + len(FRESH)), 30, interval=0.3, what="203 certificates valid")
    finally:
        stop.set()
        t.join(10)

    assert not errors, errors[:3]
    assert seen and min(seen) >= 100 + len(FRESH), sorted(set(seen))
    assert pebble.order_count() == len(FRESH)


def test_status_follows_an_order_step_by_step(pebble, nginx_factory, tmp_path, test_ca):
    """The snapshot is rebuilt when an order's progress text changes (no timer): held at finalize, the
    status says so; released, the certificate is valid."""
    name = "step.status.example.org"
    cert, key = test_ca.issue("status-proxy", ["localhost"], ["127.0.0.1"], basename="status-proxy")
    px = FaultProxy(pebble, cert, key, free_port(), log_path=tmp_path / "proxy.log").start()
    try:
        hold = px.add_fault("finalize", hold=True)
        https = free_port()
        nginx_factory(issuer_block("held", px.directory_url, tmp_path / "state",
                                   extra=f"ssl_trusted_certificate {pebble.ca_cert};") + f"""
    server {{
        listen 127.0.0.1:{pebble.http_port};
        server_name {name};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {name};
        acme_certificate held;
        location = /acme {{ acme_status; }}
    }}
""", wait_port=https)
        hold.wait_hit(30)

        def step():
            c = https_get(https, name, "/acme").json()["certificates"][0]
            return c if c["state"] == "renewing" and c.get("progress") == "finalizing" else None

        wait_for(step, 10, interval=0.2, what="progress 'finalizing' in the status")
        hold.release()
        c = wait_for(lambda: (lambda c: c if c["state"] == "valid" else None)(
            https_get(https, name, "/acme").json()["certificates"][0]), 30, interval=0.3,
            what="the certificate valid in the status")
        assert "progress" not in c and c["failures"] == 0
    finally:
        px.stop()
    assert not px.errors, px.errors


def test_small_shared_zone_for_many_certificates_warns(nginx_factory, tmp_path):
    """Generation entries stay in acme_shared_zone: nginx -t says when 1,600 of them could crowd out the
    challenges in the default 256k, and is quiet with a zone that leaves room."""
    names = [f"z{i:04d}.zone.example.org" for i in range(1600)]
    iss = issuer_block("le", "https://127.0.0.1:14000/dir", tmp_path / "state")
    server = f"""
    server {{
        listen 127.0.0.1:{free_port()} ssl;
        server_name {names[0]};
        {' '.join(f'acme_certificate le {n};' for n in names)}
    }}
"""
    ng = nginx_factory(iss + server, name="small", start=False)
    ok, out = ng.test_config()
    assert ok, out
    assert "[warn]" in out and re.search(
        r'acme_shared_zone "ngx_http_acme": 256k leaves too little room for challenges beside the generation '
        r'numbers of 1600 certificates, use at least (\d+)k', out), out
    need = int(re.search(r"use at least (\d+)k", out).group(1))
    assert 256 < need < 1024

    ng = nginx_factory(iss + f"acme_shared_zone zone=acme:{need}k;\n" + server, name="roomy", start=False)
    ok, out = ng.test_config()
    assert ok, out
    assert "acme_shared_zone" not in out, out
