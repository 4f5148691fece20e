"""acme_certificate in nginx stream servers (issue #19).

ngx_stream_acme_module (loaded after Debian's ngx_stream_module.so and ngx_http_acme_module.so) takes
acme_certificate in stream servers; the http block's issuers, zone, store and core do the rest. A stream TLS
proxy in front of a local echo server gets a Pebble certificate through HTTP-01 answered by the http block's
port-80 server, serves the fallback until then, and serves a forced renewal on the next handshake with no
reload; a certificate named by an http and a stream server is one order; `nginx -t` refuses a stream server
without TLS, a missing issuer and an http block without acme_issuer. TLS-ALPN-01 is answered on stream and
mail TLS listeners, whose validation connections are closed after the handshake (never proxied, no mail
greeting or session)."""

import os
import re
import socket
import ssl
import threading
import time

import pytest

from harness import close_listener, free_port, wait_for
from nginx_harness import STREAM_MODULE, issuer_block, nginx_factory, raw_http, tls_cert  # noqa: F401
from nginx_harness import cert_text, tls_verified

pytestmark = pytest.mark.skipif(not os.path.exists(STREAM_MODULE),
                                reason="Debian's libnginx-mod-stream is not installed")


class EchoServer:
    """A TCP echo server on 127.0.0.1 (the stream proxy's backend)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c):
        with c:
            c.settimeout(5)
            try:
                while True:
                    d = c.recv(4096)
                    if not d:
                        return
                    c.sendall(d)
            except OSError:
                return

    def close(self):
        self.stopped = True
        close_listener(self.sock)


@pytest.fixture
def echo():
    e = EchoServer()
    yield e
    e.close()


def _http(pebble, tmp_path, status_port, extra=""):
    """The http block: the issuer, the port-80 server answering HTTP-01 for any name, a status server."""
    return issuer_block("pebble", pebble, tmp_path / "state") + f"""
    server {{
        listen 127.0.0.1:{pebble.http_port};
        server_name _;
        location / {{ return 404; }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        server_name status;
        location = /acme {{ acme_status renew=on renew_interval=1s; }}
    }}
{extra}"""


def _stream(port, name, backend, extra=""):
    return f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        acme_certificate pebble {name};
        proxy_pass 127.0.0.1:{backend};
        {extra}
    }}
"""


def _verified(port, name, roots):
    try:
        return tls_verified(port, name, roots)
    except Exception:  # noqa: BLE001
        return None


def _echo_through(port, name, roots):
    ctx = ssl.create_default_context(cadata=roots)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=name) as t:
            t.sendall(b"ping\n")
            return t.recv(100)


def _renew(status_port, name):
    deadline = time.time() + 10
    while True:
        st, body = raw_http(status_port, f"POST /acme?renew={name} HTTP/1.1\r\nHost: status\r\n"
                                         f"Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
        if st != 429 or time.time() > deadline:
            return st, body
        time.sleep(0.3)


def test_stream_http01_fallback_issue_and_hot_swap(pebble, nginx_factory, tmp_path, echo):
    name = "stream.example.org"
    sport, status = free_port(), free_port()
    ng = nginx_factory(_http(pebble, tmp_path, status), start=False,
                       stream=_stream(sport, name, echo.port))
    ok, out = ng.test_config()
    assert ok, out
    ng.allow(r'acme: serving the self-signed fallback certificate for ')
    ng.start(wait_port=sport)

    roots = pebble.roots(0)
    serial = wait_for(lambda: _verified(sport, name, roots), 40, interval=0.2, what="the issued certificate")
    assert _echo_through(sport, name, roots) == b"ping\n"
    workers = sorted(ng.worker_pids())

    st, body = _renew(status, name)
    assert st == 202, (st, body)
    renewed = wait_for(lambda: (s := _verified(sport, name, roots)) and s != serial and s, 40,
                       interval=0.3, what="the renewed certificate on the stream listener")
    assert renewed != serial
    assert sorted(ng.worker_pids()) == workers, "the renewal must be served with no reload"
    assert _echo_through(sport, name, roots) == b"ping\n"

    # a reload keeps serving it (the new cycle's stream server finds it in the store)
    ng.reload()
    assert wait_for(lambda: _verified(sport, name, roots), 10, interval=0.2) == renewed


def test_stream_fallback_before_issuance(nginx_factory, tmp_path, echo):
    """With a CA that cannot be reached, the stream listener serves the self-signed fallback naming it."""
    name = "fallback.example.org"
    sport, status, dead = free_port(), free_port(), free_port()
    http = issuer_block("pebble", f"https://127.0.0.1:{dead}/dir", tmp_path / "state") + f"""
    server {{ listen 127.0.0.1:{status}; location / {{ return 404; }} }}
"""
    ng = nginx_factory(http, start=False, stream=_stream(sport, name, echo.port))
    ng.allow(r".*")
    ng.start(wait_port=sport)
    der = tls_cert(sport, name)
    text = cert_text(der)
    assert f"DNS:{name}" in text and "Pebble" not in text, text


def test_http_and_stream_share_one_certificate(pebble, nginx_factory, tmp_path, echo):
    name = "shared.example.org"
    sport, https, status = free_port(), free_port(), free_port()
    extra = f"""
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {name};
        acme_certificate pebble;
        location / {{ return 200 "tls\\n"; }}
    }}
"""
    ng = nginx_factory(_http(pebble, tmp_path, status, extra), start=False,
                       stream=_stream(sport, name, echo.port))
    ng.allow(r'acme: serving the self-signed fallback certificate for ')
    ng.start(wait_port=sport)
    roots = pebble.roots(0)
    s1 = wait_for(lambda: _verified(sport, name, roots), 40, interval=0.2, what="the stream certificate")
    s2 = wait_for(lambda: _verified(https, name, roots), 10, interval=0.2, what="the http certificate")
    assert s1 == s2
    time.sleep(1)
    assert pebble.order_count() == 1
    assert pebble.issued_count() == 1


@pytest.mark.parametrize("case", ["no_tls", "missing_issuer", "no_http_issuer", "no_identifiers", "conflict"])
def test_stream_config_errors(pebble, nginx_factory, tmp_path, case):
    port, status = free_port(), free_port()
    http = _http(pebble, tmp_path, status)
    stream = _stream(port, "s.example.org", 9)
    want = {
        "no_tls": '"acme_certificate" needs "listen ... ssl" in the stream server in ',
        "missing_issuer": 'acme_certificate: issuer "nope" is missing (no acme_issuer block with this name)',
        "no_http_issuer": '"acme_certificate" in stream needs an http block with "acme_issuer" before the '
                          'stream block',
        "no_identifiers": '"acme_certificate" in stream needs the identifiers: stream servers have no '
                          'server_name',
        # one store name (the first identifier), other identifiers: refused as between http servers
        "conflict": 'acme_certificate: certificate "s.example.org" is also configured in ',
    }[case]
    if case == "no_tls":
        stream = stream.replace(" ssl;", ";")
    elif case == "missing_issuer":
        stream = stream.replace("acme_certificate pebble", "acme_certificate nope")
    elif case == "no_http_issuer":
        http = f"server {{ listen 127.0.0.1:{status}; }}\n"
    elif case == "no_identifiers":
        stream = stream.replace("acme_certificate pebble s.example.org", "acme_certificate pebble")
    else:
        http = _http(pebble, tmp_path, status, f"""
    server {{
        listen 127.0.0.1:{free_port()} ssl;
        server_name s.example.org;
        acme_certificate pebble;
    }}
""")
        stream = stream.replace("s.example.org;", "s.example.org t.example.org;")
    ng = nginx_factory(http, start=False, stream=stream)
    ok, out = ng.test_config()
    assert not ok and want in out, out


def test_stream_tls_alpn01_on_the_stream_listener(pebble, nginx_factory, tmp_path, echo):
    """No port-80 server: the CA validates on the stream TLS listener (acme-tls/1), whose validation
    connections are closed, never proxied; other handshakes reach the backend."""
    name = "alpn-stream.example.org"
    status = free_port()
    http = issuer_block("pebble", pebble, tmp_path / "state", challenge="tls-alpn-01") + f"""
    server {{
        listen 127.0.0.1:{status};
        server_name status;
        location = /acme {{ acme_status renew=on renew_interval=1s; }}
    }}
"""
    ng = nginx_factory(http, start=False, stream=_stream(pebble.tls_port, name, echo.port))
    ng.allow(r'acme: serving the self-signed fallback certificate for ')
    ng.start(wait_port=pebble.tls_port)
    roots = pebble.roots(0)
    serial = wait_for(lambda: _verified(pebble.tls_port, name, roots), 40, interval=0.2,
                      what="the certificate validated by tls-alpn-01")
    assert _echo_through(pebble.tls_port, name, roots) == b"ping\n"
    st, body = _renew(status, name)
    assert st == 202, (st, body)
    wait_for(lambda: (s := _verified(pebble.tls_port, name, roots)) and s != serial, 40, interval=0.3,
             what="the renewal validated by tls-alpn-01")
    log = ng.log_text()
    validations = set(re.findall(r" \*(\d+) acme: tls-alpn-01 challenge handshake for ", log))
    proxied = set(re.findall(r" \*(\d+) .*upstream", log))
    assert validations and proxied and not validations & proxied, (validations, proxied)


# -------------------------------------------------------------------- mail


class AuthHttp:
    """A trivial auth_http backend: every login is refused (the tests need the TLS, not a mailbox)."""

    def __init__(self):
        import http.server

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("Auth-Status", "Invalid login or password")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass
        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def auth_http():
    a = AuthHttp()
    yield a
    a.close()


def _mail(name, tls_port, starttls_port, auth_port, acme=None):
    acme = acme or "acme_certificate pebble;"
    return f"""
    auth_http 127.0.0.1:{auth_port}/auth;
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        protocol imap;
        server_name {name};
        {acme}
    }}
    server {{
        listen 127.0.0.1:{starttls_port};
        protocol imap;
        starttls on;
        server_name {name};
        {acme}
    }}
"""


def _starttls_serial(port, name, roots):
    """`openssl s_client -starttls imap`, verified against roots: the leaf's serial (hex) or None."""
    import subprocess
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as f:
        f.write(roots)
        f.flush()
        cp = subprocess.run(["openssl", "s_client", "-starttls", "imap", "-connect", f"127.0.0.1:{port}",
                             "-servername", name, "-verify_hostname", name, "-CAfile", f.name,
                             "-verify_return_error"],
                            input=b"", capture_output=True, timeout=10)
    if cp.returncode != 0:
        return None
    pem = cp.stdout.decode(errors="replace")
    i = pem.find("-----BEGIN CERTIFICATE-----")
    if i < 0:
        return None
    end = pem.index("-----END CERTIFICATE-----", i) + len("-----END CERTIFICATE-----")
    der = ssl.PEM_cert_to_DER_cert(pem[i:end])
    from nginx_harness import cert_serial
    return cert_serial(der)


def test_mail_imap_tls_and_starttls_issue_and_hot_swap(pebble, nginx_factory, tmp_path, auth_http):
    name = "imap.example.org"
    tls, starttls, status = free_port(), free_port(), free_port()
    ng = nginx_factory(_http(pebble, tmp_path, status), start=False,
                       mail=_mail(name, tls, starttls, auth_http.port))
    ok, out = ng.test_config()
    assert ok, out
    ng.allow(r'acme: serving the self-signed fallback certificate for ')
    ng.start(wait_port=tls)
    roots = pebble.roots(0)
    serial = wait_for(lambda: _verified(tls, name, roots), 40, interval=0.2, what="the IMAPS certificate")
    assert wait_for(lambda: _starttls_serial(starttls, name, roots), 10, interval=0.3) == serial
    workers = sorted(ng.worker_pids())

    st, body = _renew(status, name)
    assert st == 202, (st, body)
    renewed = wait_for(lambda: (s := _verified(tls, name, roots)) and s != serial and s, 40, interval=0.3,
                       what="the renewed certificate on IMAPS")
    assert wait_for(lambda: (s := _starttls_serial(starttls, name, roots)) == renewed and s, 10,
                    interval=0.3) == renewed
    assert sorted(ng.worker_pids()) == workers, "the renewal must be served with no reload"


@pytest.mark.parametrize("case", ["no_tls", "missing_issuer", "no_http_issuer"])
def test_mail_config_errors(pebble, nginx_factory, tmp_path, case):
    tls, starttls, status = free_port(), free_port(), free_port()
    http = _http(pebble, tmp_path, status)
    mail = _mail("m.example.org", tls, starttls, 9)
    want = {
        "no_tls": '"acme_certificate" needs "listen ... ssl" or "starttls" in the mail server in ',
        "missing_issuer": 'acme_certificate: issuer "nope" is missing (no acme_issuer block with this name)',
        "no_http_issuer": '"acme_certificate" in mail needs an http block with "acme_issuer" before the '
                          'mail block',
    }[case]
    if case == "no_tls":
        mail = mail.replace(" ssl;", ";").replace("starttls on;", "")
    elif case == "missing_issuer":
        mail = mail.replace("acme_certificate pebble", "acme_certificate nope")
    else:
        http = f"server {{ listen 127.0.0.1:{status}; }}\n"
    ng = nginx_factory(http, start=False, mail=mail)
    ok, out = ng.test_config()
    assert not ok and want in out, out


def _alpn_mail(pebble, tmp_path, status):
    """The http block of the tls-alpn-01 tests: the issuer and a status server, no port-80 server."""
    return issuer_block("pebble", pebble, tmp_path / "state", challenge="tls-alpn-01") + f"""
    server {{
        listen 127.0.0.1:{status};
        server_name status;
        location = /acme {{ acme_status renew=on renew_interval=1s; }}
    }}
"""


def _line(sock):
    buf = b""
    while not buf.endswith(b"\r\n"):
        d = sock.recv(1)
        if not d:
            break
        buf += d
    return buf


def _imaps_greeting(port, name, roots):
    ctx = ssl.create_default_context(cadata=roots)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=name) as t:
            return _line(t)


def test_mail_tls_alpn01_on_the_imaps_listener(pebble, nginx_factory, tmp_path, auth_http):
    """No port-80 server: the CA validates on an IMAPS listener (acme-tls/1); IMAP clients then get the
    issued certificate and the greeting, and its renewal with no reload."""
    name = "alpn-imap.example.org"
    status = free_port()
    mail = f"""
    auth_http 127.0.0.1:{auth_http.port}/auth;
    server {{
        listen 127.0.0.1:{pebble.tls_port} ssl;
        protocol imap;
        server_name {name};
        acme_certificate pebble;
    }}
"""
    ng = nginx_factory(_alpn_mail(pebble, tmp_path, status), start=False, mail=mail)
    ng.allow(r'acme: serving the self-signed fallback certificate for ')
    ng.start(wait_port=pebble.tls_port)
    roots = pebble.roots(0)
    serial = wait_for(lambda: _verified(pebble.tls_port, name, roots), 40, interval=0.2,
                      what="the IMAPS certificate validated by tls-alpn-01")
    assert f'tls-alpn-01 challenge handshake for "{name}"' in ng.log_text()
    assert _imaps_greeting(pebble.tls_port, name, roots).startswith(b"* OK")
    workers = sorted(ng.worker_pids())
    st, body = _renew(status, name)
    assert st == 202, (st, body)
    wait_for(lambda: (s := _verified(pebble.tls_port, name, roots)) and s != serial, 40, interval=0.3,
             what="the renewal validated by tls-alpn-01")
    assert sorted(ng.worker_pids()) == workers, "the renewal must be served with no reload"


def test_mail_starttls_name_validated_on_an_https_server(pebble, nginx_factory, tmp_path, test_ca, auth_http):
    """The usual setup: mail with STARTTLS only (the CA's TLS-ALPN-01 connection cannot reach it), an
    https server on the port the CA validates on, whose names are others: it answers for the mail name."""
    name, www = "alpn-starttls.example.org", "www.example.org"
    starttls, status = free_port(), free_port()
    cert, key = test_ca.issue(www, [www])
    http = _alpn_mail(pebble, tmp_path, status) + f"""
    server {{
        listen 127.0.0.1:{pebble.tls_port} ssl;
        server_name {www};
        ssl_certificate {cert};
        ssl_certificate_key {key};
    }}
"""
    mail = f"""
    auth_http 127.0.0.1:{auth_http.port}/auth;
    server {{
        listen 127.0.0.1:{starttls};
        protocol imap;
        starttls only;
        server_name {name};
        acme_certificate pebble;
    }}
"""
    ng = nginx_factory(http, start=False, mail=mail)
    ng.allow(r'acme: serving the self-signed fallback certificate for ')
    ng.start(wait_port=starttls)
    wait_for(lambda: _starttls_serial(starttls, name, pebble.roots(0)), 40, interval=0.3,
             what="the STARTTLS certificate validated by tls-alpn-01 on the https server")
    assert f'tls-alpn-01 challenge handshake for "{name}"' in ng.log_text()


def _acme_tls(sock, name):
    """An acme-tls/1 handshake on a connected socket: (ALPN, leaf DER, what the server sends next:
    b"" when it closes, None when it waits for the client)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["acme-tls/1"])
    with ctx.wrap_socket(sock, server_hostname=name) as t:
        alpn, der = t.selected_alpn_protocol(), t.getpeercert(binary_form=True)
        t.settimeout(3)
        try:
            after = t.recv(100)
        except TimeoutError:
            after = None
        except OSError:
            after = b""
    return alpn, der, after


def test_mail_tls_alpn01_validation_connection_gets_no_mail_protocol(pebble, dns, nginx_factory, tmp_path,
                                                                        auth_http):
    """While the CA's validation is held pending: an acme-tls/1 handshake for the name, on an SMTPS
    listener and after IMAP STARTTLS, gets the challenge certificate and is closed, with no greeting and
    no IMAP session (RFC 8737: acme-tls/1 is for the validation only)."""
    from test_nginx_tls_alpn import ACME_IDENTIFIER_OID, HangingTls
    name = "alpn-mail-hang.example.org"
    dns.add_a(name, "127.0.0.2")
    hang = HangingTls("127.0.0.2", pebble.tls_port)
    smtps, imap, status = free_port(), free_port(), free_port()
    mail = f"""
    auth_http 127.0.0.1:{auth_http.port}/auth;
    server {{
        listen 127.0.0.1:{smtps} ssl;
        protocol smtp;
        server_name {name};
        acme_certificate pebble;
    }}
    server {{
        listen 127.0.0.1:{imap};
        protocol imap;
        starttls on;
        server_name {name};
        acme_certificate pebble;
    }}
"""
    ng = nginx_factory(_alpn_mail(pebble, tmp_path, status), start=False, mail=mail)
    ng.allow(r"acme: ")
    ng.start(wait_port=imap)
    try:
        wait_for(lambda: any(name.encode() in h for h in hang.hellos), 30, what="the CA's TLS-ALPN-01 connection")
        alpn, der, after = _acme_tls(socket.create_connection(("127.0.0.1", smtps), timeout=5), name)
        assert alpn == "acme-tls/1" and ACME_IDENTIFIER_OID in cert_text(der)
        assert after == b"", f"the SMTPS validation connection got {after!r}"

        s = socket.create_connection(("127.0.0.1", imap), timeout=5)
        assert _line(s).startswith(b"* OK")
        s.sendall(b"a STARTTLS\r\n")
        assert _line(s).startswith(b"a OK")
        alpn, der, after = _acme_tls(s, name)
        assert alpn == "acme-tls/1" and ACME_IDENTIFIER_OID in cert_text(der)
        assert after == b"", f"the STARTTLS validation connection got {after!r}"
        assert ng.log_text().count(f'tls-alpn-01 challenge handshake for "{name}"') == 2
    finally:
        hang.close()
