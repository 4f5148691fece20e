"""TLS-ALPN-01 handshakes on a private context: servers that ask for client certificates, a name that is
not the default server's, HTTP/2 kept on the managed servers."""

import re
import shutil
import socket
import subprocess
import threading

import pytest

from harness import OPENSSL_BIN, free_port, wait_for
from nginx_harness import (NGINX_BIN, cert_serial, cert_text, issuer_block, nginx_factory,  # noqa: F401
                           tls_handshake, tls_verified)

NAME = "alpn-verify.example.org"
HANG = "alpn-hang.example.org"
OTHER = "alpn-default.example.org"
ACME_IDENTIFIER_OID = "1.3.6.1.5.5.7.1.31"


class HangingTls:
    """Accepts the CA's TLS-ALPN-01 connections and never answers: the challenge stays pending meanwhile."""

    def __init__(self, host, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.hellos = []
        self.conns = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            try:
                c.settimeout(5)
                self.hellos.append(c.recv(4096))
            except OSError:
                continue

    def close(self):
        for c in self.conns:
            c.close()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def nginx_version():
    p = subprocess.run([NGINX_BIN, "-v"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", p.stdout.decode())
    return tuple(map(int, m.groups()))


def s_client(port, sni, alpn, *extra):
    """openssl s_client with -msg: (returncode, output, leaf PEM or None)."""
    p = subprocess.run([OPENSSL_BIN, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", sni,
                        "-alpn", alpn, "-msg", "-showcerts", *extra],
                       input=b"", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=20)
    out = p.stdout.decode(errors="replace")
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    return p.returncode, out, m.group(0) if m else None


def default_server(test_ca, port, extra=""):
    cert, key = test_ca.issue(OTHER, [OTHER])
    return f"""
    server {{
        listen 127.0.0.1:{port} ssl http2 default_server;
        server_name {OTHER};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        {extra}
        location / {{ return 200 "default\\n"; }}
    }}
"""


def test_tls_alpn01_with_client_certificates_requested(pebble, nginx_factory, test_ca, tmp_path):
    """A managed server with ssl_verify_client on, not the default server of its port, is validated over
    TLS-ALPN-01; HTTP/2 is still negotiated on it afterwards."""
    conf = issuer_block("pebble", pebble, tmp_path / "state", challenge="tls-alpn-01") \
        + default_server(test_ca, pebble.tls_port) + f"""
    server {{
        listen 127.0.0.1:{pebble.tls_port} ssl http2;
        server_name {NAME};
        acme_certificate pebble;
        ssl_verify_client on;
        ssl_client_certificate {test_ca.ca_cert};
        location / {{ return 200 "tls\\n"; }}
    }}
"""
    ng = nginx_factory(conf, wait_port=pebble.tls_port)
    roots = pebble.roots(0)
    serial = wait_for(lambda: _verified(pebble.tls_port, NAME, roots), 40, interval=0.2,
                      what=f"a Pebble certificate for {NAME}")
    assert f'tls-alpn-01 challenge handshake for "{NAME}"' in ng.log_text()
    der, proto = tls_handshake(pebble.tls_port, NAME, alpn=["h2", "http/1.1"])
    assert proto == "h2" and cert_serial(der) == serial
    der, proto = tls_handshake(pebble.tls_port, NAME, alpn=["acme-tls/1", "h2", "http/1.1"])
    assert proto == "h2" and cert_serial(der) == serial
    # the server still asks ordinary clients for certificates
    rc, out, _ = s_client(pebble.tls_port, NAME, "h2")
    assert "CertificateRequest" in out and "ALPN protocol: h2" in out, out


def _verified(port, sni, roots):
    try:
        return tls_verified(port, sni, roots)
    except Exception:
        return None


def test_tls_alpn01_handshake_on_a_private_context(pebble, dns, nginx_factory, test_ca, tmp_path):
    """While the CA's validation is held pending: acme-tls/1 for the name gets the challenge certificate
    and no certificate request, though its server (not the port's default) asks for client certificates;
    HTTP/2 and client certificate requests stay on the ordinary handshakes of both servers."""
    dns.add_a(HANG, "127.0.0.2")
    hang = HangingTls("127.0.0.2", pebble.tls_port)
    https = free_port()
    conf = issuer_block("pebble", pebble, tmp_path / "state", challenge="tls-alpn-01") \
        + default_server(test_ca, https, extra=f"""ssl_verify_client optional;
        ssl_client_certificate {test_ca.ca_cert};""") + f"""
    server {{
        listen 127.0.0.1:{https} ssl http2;
        server_name {HANG};
        acme_certificate pebble;
        ssl_verify_client on;
        ssl_client_certificate {test_ca.ca_cert};
        location / {{ return 200 "tls\\n"; }}
    }}
"""
    ng = nginx_factory(conf, wait_port=https, allowed=[r"acme: "])
    try:
        wait_for(lambda: any(HANG.encode() in h for h in hang.hellos), 30, what="the CA's TLS-ALPN-01 connection")
        for version in ("-tls1_2", "-tls1_3"):
            rc, out, pem = s_client(https, HANG, "acme-tls/1", version)
            assert rc == 0 and "ALPN protocol: acme-tls/1" in out, out
            assert "CertificateRequest" not in out, out
            text = cert_text(pem)
            assert ACME_IDENTIFIER_OID in text and f"DNS:{HANG}" in text, text
        assert f'tls-alpn-01 challenge handshake for "{HANG}"' in ng.log_text()
        # the ordinary handshakes of the same name: its server's certificate, HTTP/2, certificate request
        rc, out, pem = s_client(https, HANG, "h2,http/1.1")
        assert rc == 0 and "ALPN protocol: h2" in out and "CertificateRequest" in out, out
        assert ACME_IDENTIFIER_OID not in cert_text(pem)
        # acme-tls/1 among others: the challenge (the client asked for it)
        der, proto = tls_handshake(https, HANG, alpn=["h2", "acme-tls/1"])
        assert proto == "acme-tls/1" and ACME_IDENTIFIER_OID in cert_text(der)
        # and of the default server, which has no challenge
        rc, out, pem = s_client(https, OTHER, "acme-tls/1,h2")
        assert rc == 0 and "ALPN protocol: h2" in out and "CertificateRequest" in out, out
        assert f"DNS:{OTHER}" in cert_text(pem)
    finally:
        hang.close()


@pytest.mark.skipif(nginx_version() < (1, 29, 2),
                    reason="nginx chooses the virtual server in its client hello callback from 1.29.2 on")
def test_nginx_client_hello_callback_still_chooses_the_server(pebble, nginx_factory, test_ca, tmp_path):
    """nginx >= 1.29.2 (NGINX_BIN=...): our client hello callback calls nginx's, so the server named by SNI
    is chosen before the protocol version is: its own ssl_protocols apply."""
    https = free_port()
    conf = issuer_block("pebble", pebble, tmp_path / "state", challenge="tls-alpn-01") \
        + default_server(test_ca, https, extra="ssl_protocols TLSv1.2 TLSv1.3;") + f"""
    server {{
        listen 127.0.0.1:{https} ssl http2;
        server_name {NAME};
        acme_certificate pebble;
        ssl_protocols TLSv1.3;
        location / {{ return 200 "tls\\n"; }}
    }}
"""
    nginx_factory(conf, wait_port=https, allowed=[r"acme: "])
    rc, out, _ = s_client(https, NAME, "h2", "-tls1_2")
    assert rc != 0 and "protocol version" in out, out
    rc, out, _ = s_client(https, NAME, "h2", "-tls1_3")
    assert rc == 0 and "ALPN protocol: h2" in out, out
    rc, out, _ = s_client(https, OTHER, "h2", "-tls1_2")
    assert rc == 0 and "ALPN protocol: h2" in out, out


def _has_http3():
    p = subprocess.run([NGINX_BIN, "-V"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
    return "--with-http_v3_module" in p.stdout.decode()


@pytest.mark.skipif(not _has_http3() or shutil.which("gtlsclient") is None,
                    reason="needs an nginx with --with-http_v3_module (NGINX_BIN=...) and gtlsclient (ngtcp2-client)")
def test_http3_alpn_on_a_managed_server(pebble, nginx_factory, tmp_path):
    """nginx's own ALPN callback stays: h3 is negotiated on a managed server's QUIC listener."""
    port = free_port(udp=True)
    conf = issuer_block("pebble", pebble, tmp_path / "state", challenge="tls-alpn-01") + f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        listen 127.0.0.1:{port} quic;
        server_name {NAME};
        acme_certificate pebble;
        location / {{ return 200 "over h3\\n"; }}
    }}
"""
    nginx_factory(conf, wait_port=port, allowed=[r"acme: "])
    p = subprocess.run(["gtlsclient", "--exit-on-all-streams-close", "--timeout=5s", "127.0.0.1", str(port),
                        f"https://{NAME}:{port}/"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    out = p.stdout.decode(errors="replace")
    assert "over h3" in out, out[-3000:]
