"""nginx's `resolver`: the CA's host name is resolved by the http block's resolver (as in nginx-acme),
not by the system resolver; a resolver that does not answer fails the attempt after resolver_timeout,
names the host and the resolver, and nginx keeps serving."""

import http.server
import os
import re
import socket
import ssl
import threading
import time

import pytest

from harness import Pebble, TestCA, free_port, wait_for
from nginx_harness import http_get, https_get, nginx_factory, tls_verified  # noqa: F401
from test_redis_store import REDIS_CLI, REDIS_SERVER, Redis, key_file

NAME = "a.example.org"
CA_HOST = "acme.internal"   # known to the test DNS server only, never to the system resolver


@pytest.fixture
def internal_pebble(tmp_path, dns):
    """A Pebble whose HTTPS certificate is valid for acme.internal, reached by that name."""
    ca = TestCA(tmp_path / "ca")
    ca.cert, ca.key = ca.issue(CA_HOST, [CA_HOST, "localhost"], ["127.0.0.1"], basename="pebble-tls")
    pb = Pebble(tmp_path / "pebble", ca, dns_server=dns.dns_address)
    pb.start()
    yield pb
    pb.stop()


def conf(pebble, tmp_path, https, resolver, extra_http="", uri=None):
    return f"""
    {resolver}
    {extra_http}
    acme_issuer internal {{
        uri {uri or f"https://{CA_HOST}:{pebble.port}/dir"};
        contact admin@example.org;
        accept_terms_of_service;
        state_path {tmp_path / "state"};
        ssl_trusted_certificate {pebble.ca_cert};
    }}
    server {{
        listen 127.0.0.1:{pebble.http_port};
        server_name {NAME};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {NAME};
        acme_certificate internal;
        location / {{ return 200 "tls\\n"; }}
        location = /acme {{ acme_status; }}
    }}
"""


def test_ca_name_resolved_by_nginx_resolver(internal_pebble, dns, nginx_factory, tmp_path):
    """`resolver` names the only server that knows acme.internal: the certificate is issued (TLS to the CA
    verified against the name), and the test DNS server saw the queries."""
    https = free_port()
    dns.clear_dns_request_history(CA_HOST)
    ng = nginx_factory(conf(internal_pebble, tmp_path, https, f"resolver {dns.dns_address};"),
                       wait_port=https)
    roots = internal_pebble.roots(0)

    def served():
        try:
            return tls_verified(https, NAME, roots)
        except Exception:
            return None
    serial = wait_for(served, 40, interval=0.2, what=f"a certificate from https://{CA_HOST}")
    assert serial in internal_pebble.issued_serials()
    asked = [q["Question"]["Qtype"] for q in dns.dns_request_history(CA_HOST)
             if q["Question"]["Name"] == CA_HOST + "."]
    assert 1 in asked, "the CA's name was not asked of the configured resolver (A)"
    assert "Could not resolve host" not in ng.log_text()


def test_resolver_without_answer(internal_pebble, nginx_factory, tmp_path):
    """A resolver that never answers: after resolver_timeout the attempt fails with the host and the
    resolver named, a next try is scheduled, and nginx serves meanwhile."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    queries = []
    stop = threading.Event()

    def swallow():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                queries.append(silent.recv(4096))
            except OSError:
                pass
    t = threading.Thread(target=swallow, daemon=True)
    t.start()
    try:
        https = free_port()
        ng = nginx_factory(conf(internal_pebble, tmp_path, https,
                                f"resolver 127.0.0.1:{port}; resolver_timeout 2s;"),
                           wait_port=https,
                           allowed=[r"could not be resolved", r"next try at",
                                    r"\[error\].*resolved", r"timed out"])
        started = time.monotonic()
        line = ng.wait_log(rf"{re.escape(CA_HOST)} could not be resolved \(110: Operation timed out\) "
                           rf"by resolver 127\.0\.0\.1:{port}", timeout=30)
        elapsed = time.monotonic() - started
        assert line
        assert elapsed >= 1.5, f"failed after {elapsed:.1f}s, before resolver_timeout (2s)"
        assert queries, "nginx's resolver was never asked"
        ng.wait_log(r"next try at", timeout=10)
        # nginx serves throughout (plain HTTP, and TLS with the fallback certificate)
        status, body = http_get(internal_pebble.http_port, NAME, "/")
        assert status == 200 and body == b"plain\n"
        r = https_get(https, NAME, "/")
        assert r.status == 200 and r.text == "tls\n"
        assert "Could not resolve host" not in ng.log_text()
    finally:
        stop.set()
        t.join(2)
        silent.close()


@pytest.mark.skipif(not (os.access(REDIS_SERVER, os.X_OK) and os.access(REDIS_CLI, os.X_OK)),
                    reason="redis-server / redis-cli not installed")
def test_redis_host_resolved_by_nginx_resolver(internal_pebble, dns, nginx_factory, procs, tmp_path):
    """acme_storage redis://redis.internal:PORT: the Redis host name, known to the test DNS server only,
    is resolved through `resolver` too; the certificate is issued and stored in that Redis."""
    redis = Redis(procs, tmp_path / "redis")
    key = key_file(tmp_path / "storage.key")
    https = free_port()
    dns.clear_dns_request_history("redis.internal")
    storage = f"acme_storage redis://redis.internal:{redis.port} prefix=ngx;\nacme_storage_key {key};"
    nginx_factory(conf(internal_pebble, tmp_path, https, f"resolver {dns.dns_address} ipv6=off;", storage),
                  wait_port=https)
    roots = internal_pebble.roots(0)

    def served():
        try:
            return tls_verified(https, NAME, roots)
        except Exception:
            return None
    serial = wait_for(served, 40, interval=0.2, what="a certificate with the store in redis.internal")
    assert serial in internal_pebble.issued_serials()
    assert any(k.startswith("ngxcerts/" + NAME) or NAME in k for k in redis.keys()), redis.keys()
    assert any(q["Question"]["Name"] == "redis.internal." for q in dns.dns_request_history("redis.internal"))


def test_directory_redirect_to_another_name(internal_pebble, dns, nginx_factory, tmp_path):
    """The directory URL answers 301 to another host name: that name is resolved by `resolver` as well
    (libcurl following the redirect itself would ask the system resolver, which knows neither)."""
    old = "old-ca.internal"
    cert, key = internal_pebble.ca.issue(old, [old], basename="old-ca")
    target = f"https://{CA_HOST}:{internal_pebble.port}/dir"

    class Moved(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(301)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Moved)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        https = free_port()
        for h in (old, CA_HOST):
            dns.clear_dns_request_history(h)
        nginx_factory(conf(internal_pebble, tmp_path, https, f"resolver {dns.dns_address} ipv6=off;",
                           uri=f"https://{old}:{srv.server_address[1]}/directory"), wait_port=https)
        roots = internal_pebble.roots(0)

        def served():
            try:
                return tls_verified(https, NAME, roots)
            except Exception:
                return None
        serial = wait_for(served, 40, interval=0.2, what="a certificate through the redirected directory")
        assert serial in internal_pebble.issued_serials()
        for h in (old, CA_HOST):
            assert any(q["Question"]["Name"] == h + "." for q in dns.dns_request_history(h)), h
    finally:
        srv.shutdown()
        srv.server_close()
