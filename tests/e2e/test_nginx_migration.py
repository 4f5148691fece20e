"""The documented zero-downtime migration (docs/migrating.md): ssl_certificate files before
acme_certificate are served until the first certificate is issued, and the log says so (not that the
self-signed fallback is served)."""

from harness import free_port, openssl
from harness import normalize_serial
from nginx_harness import cert_serial, issuer_block, nginx_factory, tls_cert  # noqa: F401

NAME = "migrate.example.org"


def test_files_before_acme_certificate_are_served_and_logged_as_such(nginx_factory, test_ca, tmp_path):
    cert, key = test_ca.issue(NAME, [NAME])
    dead = free_port()                     # a CA that never answers: no certificate is issued
    port = free_port()
    conf = issuer_block("le", f"https://127.0.0.1:{dead}/dir", tmp_path / "state") + f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {NAME};
        ssl_certificate     {cert};
        ssl_certificate_key {key};
        acme_certificate le;
        location / {{ return 200 "ok\\n"; }}
    }}
"""
    ng = nginx_factory(conf, wait_port=port, allowed=[r"acme: "])
    file_serial = openssl("x509", "-noout", "-serial", "-in", str(cert)).decode().split("=")[1].strip()
    der = tls_cert(port, NAME)
    assert cert_serial(der) == normalize_serial(file_serial), "the ssl_certificate file is not served"
    ng.wait_log(rf'acme: serving the server\'s ssl_certificate files for "{NAME}"', timeout=15)
    assert "self-signed fallback" not in ng.log_text(), ng.log_text()[-3000:]
