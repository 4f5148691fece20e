"""Hostile input against the nginx module: challenge paths, tokens of other names, acme-tls/1."""

import re
import socket
import threading

import pytest

from harness import free_port, wait_for
from nginx_harness import (http_get, issuer_block, nginx_factory,  # noqa: F401
                           raw_http, tls_handshake)

HANG = "hang.example.org"
OTHER = "a.example.org"


class HangingHttp:
    """Accepts Pebble's validation request for HANG, records the token, never answers."""

    def __init__(self, host, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.tokens = []
        self.conns = []
        self.stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            try:
                c.settimeout(5)
                data = c.recv(4096)
            except OSError:
                continue
            m = re.search(rb"GET /\.well-known/acme-challenge/([A-Za-z0-9_-]+) ", data)
            if m:
                self.tokens.append(m.group(1).decode())

    def close(self):
        self.stop = True
        for c in self.conns:
            c.close()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


@pytest.fixture
def pending_token(pebble, dns, nginx_factory, tmp_path):
    """nginx with a published http-01 token for HANG that Pebble cannot validate yet."""
    dns.add_a(HANG, "127.0.0.2")
    hang = HangingHttp("127.0.0.2", pebble.http_port)
    https = free_port()
    conf = issuer_block("pebble", pebble, tmp_path / "state") + f"""
    server {{
        listen 127.0.0.1:{pebble.http_port};
        server_name {OTHER};
        root {tmp_path}/www;
        location / {{ }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {HANG};
        acme_certificate pebble;
    }}
"""
    (tmp_path / "www" / ".well-known" / "acme-challenge").mkdir(parents=True)
    (tmp_path / "www" / "secret.txt").write_text("secret\n")
    ng = nginx_factory(conf, wait_port=https, allowed=[r"acme: ", r"client sent invalid"])
    try:
        token = wait_for(lambda: hang.tokens and hang.tokens[0], 30, what="Pebble's request")
        # the token file does not exist on disk: nothing may be read from there
        (tmp_path / "www" / ".well-known" / "acme-challenge" / token).write_text("FROM DISK\n")
        yield ng, token, pebble.http_port
    finally:
        hang.close()


def _right_name_only(ng, token, port):
    status, body = http_get(port, HANG, f"/.well-known/acme-challenge/{token}")
    assert status == 200
    assert body.decode().startswith(token + ".") and "FROM DISK" not in body.decode()
    assert http_get(port, HANG.upper(), f"/.well-known/acme-challenge/{token}")[0] == 200
    status, body = http_get(port, HANG, f"/.well-known/acme-challenge/{token}", method="HEAD")
    assert status == 200 and body == b""
    # another name's host never gets this key authorization
    status, body = http_get(port, OTHER, f"/.well-known/acme-challenge/{token}")
    assert status == 404 and token.encode() not in body
    assert http_get(port, "127.0.0.1", f"/.well-known/acme-challenge/{token}")[0] == 404
    assert http_get(port, HANG, f"/.well-known/acme-challenge/{token}", method="POST")[0] == 405


HOSTILE_PATHS = [
    "/.well-known/acme-challenge/",
    "/.well-known/acme-challenge/unknown-token-aaaaaaaaaaaaaaaaaaaaaaaa",
    "/.well-known/acme-challenge/../../secret.txt",
    "/.well-known/acme-challenge/..%2F..%2Fsecret.txt",
    "/.well-known/acme-challenge/%2e%2e/secret.txt",
    "/.well-known/acme-challenge/a%2Fb",
    "/.well-known/acme-challenge/" + "A" * 300,
    "/.well-known/acme-challenge/tok$en",
    "/.well-known/acme-challenge/tok.en",
    "/.well-known/acme-challenge/tok%00en",
    "/.well-known/acme-challenge/TOKEN?x=1",
    "/.well-known/acme-challenge/TOKEN/",
    "/.well-known/acme-challenge/TOKEN%41",
    "/x/../.well-known/acme-challenge/TOKEN",
    "/.well-known/acme-challenge//TOKEN",
]


def _hostile_paths(ng, token, port):
    for path in HOSTILE_PATHS:
        path = path.replace("TOKEN", token)
        status, body = http_get(port, HANG, path)
        assert status in (400, 404), (path, status, body[:200])
        assert b"secret" not in body and b"FROM DISK" not in body
        assert token.encode() + b"." not in body


def _nul_and_garbage(ng, token, port):
    for raw in (f"GET /.well-known/acme-challenge/{token}\x00 HTTP/1.1\r\nHost: {HANG}\r\n\r\n",
                f"GET /.well-known/acme-challenge/\x00{token} HTTP/1.1\r\nHost: {HANG}\r\n\r\n",
                f"GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: {HANG}\x00x\r\n\r\n"):
        status, body = raw_http(port, raw.encode())
        assert status in (400, 404, None), (raw, status)
        assert token.encode() + b"." not in body


def _acme_tls1_without_pending_challenge(ng, token, port):
    https = int(re.search(r"listen 127\.0\.0\.1:(\d+) ssl", ng.conf_path.read_text()).group(1))
    # no tls-alpn-01 challenge for this name: acme-tls/1 is never negotiated
    with pytest.raises(Exception):
        tls_handshake(https, HANG, alpn=["acme-tls/1"])
    der, proto = tls_handshake(https, HANG, alpn=["acme-tls/1", "http/1.1"])
    assert proto == "http/1.1"


def test_hostile_input(pending_token):
    """One nginx and one pending challenge for all of these (keeps the suite fast)."""
    ng, token, port = pending_token
    _right_name_only(ng, token, port)
    _hostile_paths(ng, token, port)
    _nul_and_garbage(ng, token, port)
    _acme_tls1_without_pending_challenge(ng, token, port)
    # the token is still answered after all that
    assert http_get(port, HANG, f"/.well-known/acme-challenge/{token}")[0] == 200
