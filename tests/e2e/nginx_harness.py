"""nginx with ngx_http_acme_module for the end-to-end tests (helpers and fixtures).

  Nginx            one nginx ($NGINX_BIN, default Debian's /usr/sbin/nginx) in a temp dir: writes nginx.conf from an
                   http{} body, runs `nginx -t`, starts it in the foreground with 2 workers,
                   reloads, stops; error log checked by the harness's LogWatcher.
  tls_cert()       the certificate a TLS server presents for an SNI name (ssl module, no checks)
  tls_verified()   a verified handshake against given roots: returns the leaf's serial
  cert_text()      `openssl x509 -text` of a DER/PEM certificate
  nginx (fixture)  factory(http_conf, name=None, **kw) -> started Nginx
"""

import os
import re
import signal
import socket
import ssl
import subprocess
import time
import http.client
from pathlib import Path

import pytest

import harness
import leakcheck
from harness import HarnessError, free_port, http_request, openssl, wait_for

NGINX_BIN = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")
NGINX_ENV = harness.sanitizer_env()


def module_path():
    return harness.build_dir() / "ngx_http_acme_module.so"


MAIN_CONF = """\
load_module {module};
{user}
daemon off;
master_process on;
worker_processes {workers};
error_log {dir}/error.log {level};
pid {dir}/nginx.pid;
{main}
events {{
    worker_connections 512;
}}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
{http}
}}
{after_http}"""

# Debian's dynamic stream module (libnginx-mod-stream) and ours beside the http module's
STREAM_MODULE = "/usr/share/nginx/modules/ngx_stream_module.so"
MAIL_MODULE = "/usr/share/nginx/modules/ngx_mail_module.so"


def stream_module_path():
    return harness.build_dir() / "ngx_stream_acme_module.so"


def mail_module_path():
    return harness.build_dir() / "ngx_mail_acme_module.so"


def issuer_block(name, pebble, state_path, challenge=None, extra=""):
    """An acme_issuer block for a Pebble (or any URL when pebble is a string)."""
    uri = pebble if isinstance(pebble, str) else pebble.directory_url
    lines = [f"acme_issuer {name} {{",
             f"    uri {uri};",
             "    contact admin@example.org;",
             "    accept_terms_of_service;",
             f"    state_path {state_path};"]
    if not isinstance(pebble, str):
        lines.append(f"    ssl_trusted_certificate {pebble.ca_cert};")
    if challenge:
        lines.append(f"    challenge {challenge};")
    if extra:
        lines.append("    " + extra)
    lines.append("}")
    return "\n".join(lines) + "\n"


def managed_servers(http_port, https_port, names, cert="pebble", locations=()):
    """The two server blocks most tests need: NAMES answered over plain HTTP on http_port (where the CA's
    HTTP-01 requests arrive) and served over TLS on https_port with `acme_certificate CERT`; locations:
    more location blocks (strings) for the TLS server."""
    extra = "".join(f"\n        {loc}" for loc in locations)
    return f"""
    server {{
        listen 127.0.0.1:{http_port};
        server_name {names};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{https_port} ssl;
        server_name {names};
        acme_certificate {cert};
        location / {{ return 200 "tls\\n"; }}{extra}
    }}
"""


class Nginx:
    def __init__(self, workdir, procs, server_logs, http_conf, workers=2, level="info",
                 allowed=(), user=None, stream=None, mail=None, main=""):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "tmp").mkdir(exist_ok=True)
        self.procs = procs
        self.server_logs = server_logs
        self.conf_path = self.dir / "nginx.conf"
        self.error_log = self.dir / "error.log"
        self.pid_path = self.dir / "nginx.pid"
        self.workers = workers
        self.level = level
        self.allowed = list(allowed)
        self.user = user        # the workers' user (default: root when the tests run as root)
        self.stream = stream    # a stream{} body: loads stream and ngx_stream_acme_module
        self.mail = mail        # a mail{} body: loads mail and ngx_mail_acme_module
        self.main = main        # main-context directives (env ...;)
        self.proc = None
        self.write_conf(http_conf)
        self.server_logs.watch(self.error_log, allowed=self.allowed)
        if harness.sanitizer_logs() is not None:
            # UBSan reports before nginx redirects stderr to its error log
            self.server_logs.watch(self.dir / "stdout.log", levels=())

    def write_conf(self, http_conf):
        if self.user:
            user = f"user {self.user};"
        else:
            user = "user root;" if os.geteuid() == 0 else ""
        pre, post, after = [], [], ""
        if self.stream is not None:
            pre.append(STREAM_MODULE)
            post.append(stream_module_path())
            after += f"stream {{\n{self.stream}\n}}\n"
        if self.mail is not None:
            pre.append(MAIL_MODULE)
            post.append(mail_module_path())
            after += f"mail {{\n{self.mail}\n}}\n"
        module = ";\nload_module ".join(str(m) for m in pre + [module_path()] + post)
        self.conf_path.write_text(MAIN_CONF.format(
            module=module, user=user, workers=self.workers, dir=self.dir, main=self.main,
            level=self.level, http=http_conf, after_http=after))

    def allow(self, regex):
        self.server_logs.allow(regex, self.error_log)

    def test_config(self):
        """`nginx -t`: returns (ok, output)."""
        cp = harness.run_cmd([NGINX_BIN, "-t", "-p", self.dir, "-c", self.conf_path,
                              "-e", self.dir / "test-stderr.log"], timeout=60,
                             env=harness.child_env(NGINX_ENV))
        out = cp.stdout + cp.stderr
        leakcheck.watch_file(self.dir / "test-stderr.log")
        try:
            out += (self.dir / "test-stderr.log").read_text()
        except OSError:
            pass
        return cp.returncode == 0, out

    def start(self, wait_port=None, timeout=15):
        self.proc = self.procs.start(
            [NGINX_BIN, "-p", self.dir, "-c", self.conf_path, "-e", self.error_log],
            name=f"nginx-{self.dir.name}", log_path=self.dir / "stdout.log", env=NGINX_ENV,
            wait_port=wait_port, timeout=timeout)
        return self

    def worker_pids(self):
        """pids of the current (non-exiting) worker processes."""
        return self._child_pids(b"worker process")

    def helper_pids(self):
        """pids of the current cache manager processes (where the ACME client runs)."""
        return self._child_pids(b"cache manager process")

    def _child_pids(self, title):
        out = []
        master = self.proc.pid
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    rest = f.read().rsplit(b")", 1)[1].split()
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if int(rest[1]) == master and rest[0] not in (b"Z", b"X") \
                    and title in cmd and b"shutting down" not in cmd:
                out.append(int(d))
        return sorted(out)

    def reload(self, timeout=15):
        old = set(self.worker_pids())
        mark = self.log_size()
        self.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: set(self.worker_pids()) - old and len(
            set(self.worker_pids()) - old) >= self.workers, timeout,
            what="new nginx workers after reload")
        return mark

    def log_size(self):
        try:
            return self.error_log.stat().st_size
        except OSError:
            return 0

    def log_text(self, since=0):
        try:
            with open(self.error_log, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_log(self, pattern, timeout=30, since=0):
        rx = re.compile(pattern)

        def ok():
            if self.proc is not None and not self.proc.alive():
                raise HarnessError(f"nginx exited; log:\n{self.log_text()[-3000:]}")
            return rx.search(self.log_text(since))
        try:
            return wait_for(ok, timeout, interval=0.1, what=f"nginx log /{pattern}/")
        except HarnessError as e:
            raise HarnessError(f"{e}\n{self.log_text(since)[-4000:]}") from None

    def stop(self):
        if self.proc:
            self.proc.stop()


# --------------------------------------------------------------------------
# TLS client helpers
# --------------------------------------------------------------------------

def _client_ctx(ciphers=None, tls12=False, alpn=None, sigalgs=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers:
        ctx.set_ciphers(ciphers)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def tls_handshake(port, sni, ciphers=None, tls12=False, alpn=None, timeout=5, host="127.0.0.1"):
    """Handshake without verification; returns (der_leaf, selected_alpn)."""
    ctx = _client_ctx(ciphers, tls12, alpn)
    with socket.create_connection((host, port), timeout=timeout) as s:
        with ctx.wrap_socket(s, server_hostname=sni) as t:
            return t.getpeercert(binary_form=True), t.selected_alpn_protocol()


def tls_cert(port, sni, **kw):
    return tls_handshake(port, sni, **kw)[0]


def cert_text(der_or_pem):
    if isinstance(der_or_pem, str):
        der_or_pem = der_or_pem.encode()
    form = "PEM" if der_or_pem.startswith(b"-----") else "DER"
    return openssl("x509", "-inform", form, "-noout", "-text", "-serial",
                   input=der_or_pem).decode()


def cert_serial(der):
    m = re.search(r"^serial=([0-9A-Fa-f]+)", cert_text(der), re.M)
    return harness.normalize_serial(m.group(1))


def cert_issuer(der):
    m = re.search(r"Issuer: (.*)", cert_text(der))
    return m.group(1).strip()


def verified_context(roots_pem):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=roots_pem)
    return ctx


def tls_verified(port, sni, roots_pem, timeout=5, host="127.0.0.1"):
    """A verified handshake (chain to roots_pem, name sni) with host:port; returns the leaf's serial."""
    ctx = verified_context(roots_pem)
    with socket.create_connection((host, port), timeout=timeout) as s:
        with ctx.wrap_socket(s, server_hostname=sni) as t:
            return cert_serial(t.getpeercert(binary_form=True))


def https_get(port, sni, path="/", roots_pem=None, method="GET", timeout=5, host="127.0.0.1"):
    """One HTTPS request with SNI/Host sni (verified when roots_pem is given)."""
    ctx = verified_context(roots_pem) if roots_pem else _client_ctx()
    url = f"https://{sni}:{port}{path}"

    class _Conn(http.client.HTTPSConnection):
        def connect(self):
            sock = socket.create_connection((host, port), timeout=timeout)
            self.sock = ctx.wrap_socket(sock, server_hostname=sni)

    conn = _Conn(sni, port, timeout=timeout, context=ctx)
    try:
        conn.request(method, path, headers={"Host": sni})
        r = conn.getresponse()
        resp = harness.Response(r.status, r.headers, r.read(), url)
        leakcheck.record(f"{method} {url}", resp.body)
        return resp
    finally:
        conn.close()


def force_renewal(port, sni, what, path="/acme", timeout=5, request_timeout=5):
    """POST path?renew=what; waits out a 429 of renew_interval=1s (the test configurations' interval):
    returns the final answer."""
    deadline = time.time() + timeout
    while True:
        r = https_get(port, sni, f"{path}?renew={what}", method="POST", timeout=request_timeout)
        if r.status != 429 or time.time() > deadline:
            return r
        time.sleep(0.2)


def http_get(port, host, path, method="GET", timeout=5, address="127.0.0.1"):
    """Plain HTTP to address:port with an explicit Host header, path sent as is."""
    return raw_http(port, f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
                          f"Connection: close\r\n\r\n".encode(), timeout, address=address)


def raw_http(port, data, timeout=5, address="127.0.0.1"):
    """Send raw bytes to address:port, return (status, body)."""
    with socket.create_connection((address, port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
    leakcheck.record(f"raw HTTP to {address}:{port}", buf)
    head, _, body = buf.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return (int(m.group(1)) if m else None), body


# --------------------------------------------------------------------------
# fixture
# --------------------------------------------------------------------------

@pytest.fixture
def nginx_factory(tmp_path, procs, server_logs):
    """factory(http_conf, name="nginx", start=True, wait_port=None, allowed=()) -> Nginx."""
    if not module_path().is_file():
        pytest.fail(f"{module_path()} not built (make build/ngx_http_acme_module.so)",
                    pytrace=False)
    made = []

    def make(http_conf, name="nginx", start=True, wait_port=None, allowed=(), **kw):
        n = Nginx(tmp_path / name, procs, server_logs, http_conf, allowed=allowed, **kw)
        made.append(n)
        if start:
            n.start(wait_port=wait_port)
        return n

    yield make
    for n in made:
        n.stop()
