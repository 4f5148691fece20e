"""Debian's apache2 with mod_acme, for the end-to-end tests (uses harness.py).

  Apache(build_dir, pebble, mpm=..., ...)   a config in a world-traversable temp dir (the children run as
                                            www-data when the tests run as root), started in the foreground
                                            through the `procs` fixture
  tls_get(port, name, path, ...)            one HTTPS request on a fresh connection with SNI = name; returns
                                            (status, body, peer certificate DER, negotiated ALPN)
  cert_serial(der) / cert_issuer(der)       facts of a DER certificate (openssl CLI)
  apache_factory (fixture)                  apache_factory(pebble, **options) -> Apache, stopped and
                                            removed after the test; its error log is checked first like
                                            nginx's (server_logs' levels; a.allow(regex) for a line the
                                            test expects, before or after start())
  issued_and_served(a, name)                wait for this generation's driver to report the certificate
                                            valid, then check that the Pebble-issued stored one is served
"""

import os
import re
import shutil
import signal
import socket
import ssl
import tempfile
import time
from pathlib import Path

import pytest

import harness
import leakcheck
from harness import LOOPBACK, HarnessError, openssl, run_cmd, wait_for

APACHE_BIN = os.environ.get("APACHE_BIN", "/usr/sbin/apache2")
# make test-asan: no leak check for httpd. Its processes exit without destroying their pools (and
# mod_ssl its SSL_CTXs): hundreds of blocks at each exit, all under httpd's frames like the module's.
SANITIZER_ENV = harness.sanitizer_env(leaks=False)
MODULES = Path(os.environ.get("APACHE_MODULES", "/usr/lib/apache2/modules"))

# Lines an Apache started by these tests may log at error level or above without failing the test.
ALLOWED_ERRORS = [
    r"AH00558",                       # could not reliably determine the server's FQDN
    # mpm_event's own race at an ungraceful stop (SIGTERM): close_worker_sockets() closes the socket of a
    # connection that a worker is putting into lingering close, whose pollset add then fails with EBADF
    r"\(9\)Bad file descriptor: AH03092: process_lingering_close",
]


def _mpm_conf(mpm):
    if mpm == "prefork":
        return ("StartServers 3\nMinSpareServers 3\nMaxSpareServers 5\nServerLimit 8\n"
                "MaxRequestWorkers 8\n")
    return ("StartServers 2\nServerLimit 3\nThreadsPerChild 5\nMinSpareThreads 5\n"
            "MaxSpareThreads 15\nMaxRequestWorkers 15\nThreadLimit 5\n")


class Apache:
    """One apache2 instance. The directory is outside pytest's (0700) tmp tree so that the children
    (www-data) can reach the state directory and the CA file."""

    def __init__(self, build, pebble=None, mpm="event", name="apache", http_port=None, https_port=None,
                 acme_global="", vhosts=None, extra_global="", log_level="info acme:debug",
                 ca_url=None, http2=False, listen_http=True, address=LOOPBACK, server_logs=None):
        if harness.sanitizer_logs() is not None and "APACHE_BIN" not in os.environ:
            pytest.skip("under the sanitizers without $APACHE_BIN (see tests/asan/build-apache.sh)")
        self.build = Path(build)
        self.module = self.build / "mod_acme.so"
        if not self.module.is_file():
            raise HarnessError(f"{self.module} not found (make build/mod_acme.so)")
        self.pebble = pebble
        self.mpm = mpm
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix="mod_acme_e2e_"))
        leakcheck.key_root(self.dir)
        os.chmod(self.dir, 0o755)
        self.state = self.dir / "state"
        self.conf = self.dir / "httpd.conf"
        self.error_log = self.dir / "error.log"
        self.access_log = self.dir / "access.log"
        self.http_port = http_port or (pebble.http_port if pebble else harness.free_port())
        self.https_port = https_port or (pebble.tls_port if pebble else harness.free_port())
        self.listen_http = listen_http
        self.address = address      # the loopback address it listens on (cluster nodes: 127.0.0.2...)
        self.http2 = http2
        self.ca_file = None
        if pebble is not None:
            self.ca_file = self.dir / "pebble-ca.pem"
            shutil.copy(pebble.ca_cert, self.ca_file)
            os.chmod(self.ca_file, 0o644)
        self.ca_url = ca_url or (pebble.directory_url if pebble else None)
        self.acme_global = acme_global
        self.vhosts = vhosts or ""
        self.extra_global = extra_global
        self.log_level = log_level
        self.proc = None
        # watched from the start (like nginx's), so that allow() before start() counts
        self.server_logs = server_logs
        if server_logs is not None:
            for log in self.logs():
                server_logs.watch(log, allowed=list(ALLOWED_ERRORS))
        (self.dir / "htdocs").mkdir()
        (self.dir / "htdocs" / "index.html").write_text("hello from apache\n")
        (self.dir / "run").mkdir()
        for p in (self.dir / "htdocs", self.dir / "htdocs" / "index.html"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        self.write()

    # -- configuration -------------------------------------------------------------
    def base_config(self):
        mods = [("mpm_%s_module" % self.mpm, "mod_mpm_%s.so" % self.mpm),
                ("authz_core_module", "mod_authz_core.so"),
                ("authz_host_module", "mod_authz_host.so"),
                ("socache_shmcb_module", "mod_socache_shmcb.so"),
                ("ssl_module", "mod_ssl.so")]
        if self.http2:
            mods.append(("http2_module", "mod_http2.so"))
        lines = [f'ServerRoot "{self.dir}"',
                 f'PidFile "{self.dir}/httpd.pid"',
                 f'DefaultRuntimeDir "{self.dir}/run"',
                 f'Mutex file:{self.dir}/run default',
                 f'ErrorLog "{self.error_log}"',
                 f'LogLevel {self.log_level}',
                 'ServerName localhost',
                 f'DocumentRoot "{self.dir}/htdocs"',
                 'SSLSessionCache none',
                 'KeepAliveTimeout 2',
                 'GracefulShutdownTimeout 5']
        lines += [f"LoadModule {n} {MODULES / f}" for n, f in mods]
        lines.append(f"LoadModule acme_module {self.module}")
        if os.geteuid() == 0:
            lines += ["User www-data", "Group www-data"]
        lines.append(_mpm_conf(self.mpm))
        lines.append('LogFormat "%P %{SSL_SERVER_M_SERIAL}x %>s %U" acme')
        lines.append(f'CustomLog "{self.access_log}" acme')
        if self.listen_http:
            lines.append(f"Listen {self.address}:{self.http_port}")
        lines.append(f"Listen {self.address}:{self.https_port} https")
        lines.append(f'<Directory "{self.dir}/htdocs">\n    Require all granted\n</Directory>')
        # tests force renewals often: at most one per second and certificate (the default is 10 minutes)
        lines.append("<Location /acme-status>\n    SetHandler acme-status\n    ACMEStatusRenew on interval=1s\n"
                     f"    Require ip {LOOPBACK} {self.address}\n</Location>")
        if self.ca_url:
            lines.append(f"ACMECertificateAuthority {self.ca_url}")
        if self.ca_file:
            lines.append(f"ACMETrustedCertificate {self.ca_file}")
        lines += ["ACMEAcceptTermsOfService on", "ACMEContact admin@example.org",
                  f'ACMEStateDir "{self.state}"']
        return "\n".join(lines) + "\n"

    def write(self):
        self.conf.write_text(self.base_config() + self.extra_global + "\n" + self.acme_global + "\n"
                             + self.vhosts + "\n")

    def managed_vhosts(self, names, http=True, extra=""):
        """Name-based vhosts for `names` (first = ServerName): plain HTTP and TLS with ACMECertificate on."""
        sn, aliases = names[0], names[1:]
        alias = f"    ServerAlias {' '.join(aliases)}\n" if aliases else ""
        out = ""
        if http and self.listen_http:
            out += (f"<VirtualHost {self.address}:{self.http_port}>\n    ServerName {sn}\n{alias}"
                    "</VirtualHost>\n")
        out += (f"<VirtualHost {self.address}:{self.https_port}>\n    ServerName {sn}\n{alias}"
                f"    SSLEngine on\n    ACMECertificate on\n{extra}</VirtualHost>\n")
        return out

    # -- lifecycle -----------------------------------------------------------------
    def start(self, procs, wait=True):
        self.write()
        up = self.log().count("resuming normal operations")    # a restart appends to the same log
        self.proc = procs.start([APACHE_BIN, "-f", self.conf, "-DFOREGROUND"], name=self.name,
                                log_path=self.dir / "stdout.log",
                                env={"APACHE_RUN_DIR": self.dir / "run", **SANITIZER_ENV},
                                watch_log=self.server_logs is None, allowed=ALLOWED_ERRORS)
        if self.server_logs is None:
            procs.server_logs.watch(self.error_log, allowed=list(ALLOWED_ERRORS))
        procs.node._e2e_logs.append((f"{self.name} error.log", self.error_log, 0))
        if wait:
            # this Apache's own listeners: a killed one's may linger for a moment
            wait_for(lambda: self.log().count("resuming normal operations") > up, timeout=15,
                     what="apache to be up")
            self.proc.wait_port(self.https_port, host=self.address, timeout=15)
        return self

    def graceful(self):
        """apache2 -k graceful: SIGUSR1 to the parent. Waits for the new generation."""
        n = self.log().count("resuming normal operations")
        self.proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: self.log().count("resuming normal operations") > n, timeout=20,
                 what="graceful restart")

    def config_test(self):
        self.write()
        return run_cmd([APACHE_BIN, "-t", "-f", self.conf], timeout=30,
                       env=harness.child_env({"APACHE_RUN_DIR": self.dir / "run",
                                              **SANITIZER_ENV}))

    def logs(self):
        """The error log and the foreground process's output (startup errors, sanitizer reports)."""
        return (self.error_log, self.dir / "stdout.log")

    def allow(self, regex):
        """Let the error log have lines matching `regex` at error level or above (see LogWatcher)."""
        self.server_logs.allow(regex, self.error_log)

    def log(self):
        try:
            return self.error_log.read_text(errors="replace")
        except OSError:
            return ""

    def access(self):
        try:
            return self.access_log.read_text(errors="replace")
        except OSError:
            return ""

    def cleanup(self):
        leakcheck.preserve_dir(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- status --------------------------------------------------------------------
    def status(self, host=None):
        """The status a request for Host `host` sees (its virtual host's certificates; the default vhost
        of the HTTP port without one)."""
        r = harness.http_request(f"http://{self.address}:{self.http_port}/acme-status", timeout=5,
                                 headers={"Host": host} if host else None)
        assert r.status == 200, r
        return r.json()

    def cert_status(self, name):
        for c in self.status(_host(name))["certificates"]:
            if c["name"] == name or name in c["identifiers"]:
                return c
        return None

    def wait_valid(self, name, timeout=45):
        """Wait until this generation's driver says the certificate is valid; returns its status."""
        def ok():
            st = self.status(_host(name))
            if not st.get("driver_pid"):
                return None     # not yet from this generation's driver (which makes every child reload)
            c = next((c for c in st["certificates"] if c["name"] == name or name in c["identifiers"]), None)
            if not c or c["state"] != "valid":
                return None
            return c
        return wait_for(ok, timeout=timeout, interval=0.1, what=f"{name} to be valid")

    def renew(self, name, timeout=5):
        """POST ?renew=name; waits out a 429 of the 1 s interval set above: returns the final answer."""
        deadline = time.time() + timeout
        while True:
            r = harness.http_request(f"http://{self.address}:{self.http_port}/acme-status?renew={name}",
                                     method="POST", data=b"", timeout=5, headers={"Host": _host(name)})
            if r.status != 429 or time.time() > deadline:
                return r
            time.sleep(0.2)


def _host(name):
    """The Host header that reaches the virtual host of a certificate named by identifier or store name
    (acme-status shows a virtual host only its own certificates)."""
    name = name.split("_")[0].strip("[]")
    return f"[{name}]" if ":" in name else name


def tls_connect(port, name, alpn=None, timeout=5.0, host=LOOPBACK):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        return ctx.wrap_socket(sock, server_hostname=name)
    except Exception:
        sock.close()
        raise


def tls_get(port, name, path="/index.html", alpn=None, method="GET", timeout=5.0, host=LOOPBACK):
    """One HTTP/1.1 request on a new TLS connection to host:port: (status, body, der, alpn)."""
    s = tls_connect(port, name, alpn=alpn, timeout=timeout, host=host)
    try:
        der = s.getpeercert(binary_form=True)
        proto = s.selected_alpn_protocol()
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    leakcheck.record(f"{method} https://{name}:{port}{path}", data)
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    if not m:
        raise HarnessError(f"bad HTTP answer from {name}:{port}: {data[:200]!r}")
    return int(m.group(1)), body, der, proto


def http_get(port, name, path="/", method="GET", host=LOOPBACK):
    """Plain HTTP to host:port with a Host header; returns harness.Response."""
    return harness.http_request(f"http://{host}:{port}{path}", method=method,
                                headers={"Host": name}, timeout=5)


def raw_http(port, request_bytes, timeout=5.0):
    """Send raw bytes, return (status or None, whole answer)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(request_bytes)
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
    leakcheck.record(f"raw HTTP to port {port}", data)
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return (int(m.group(1)) if m else None), data


def _x509(der, *args):
    return openssl("x509", "-inform", "DER", "-noout", *args, input=der).decode()


def cert_serial(der):
    return harness.normalize_serial(_x509(der, "-serial"))


def cert_issuer(der):
    return _x509(der, "-issuer").strip()


def cert_subject(der):
    return _x509(der, "-subject").strip()


def stored_serial(state, name):
    pem = (Path(state) / "certs" / name / "fullchain.pem").read_text()
    first = pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    out = openssl("x509", "-noout", "-serial", input=first.encode()).decode()
    return harness.normalize_serial(out)


def stored_der(state, name):
    """DER of the leaf in certs/<name>/fullchain.pem."""
    pem = (Path(state) / "certs" / name / "fullchain.pem").read_text()
    first = pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    return ssl.PEM_cert_to_DER_cert(first)


def log_pids_serials(access_text):
    """[(pid, serial, status, path)] from the access log format "%P %{SSL_SERVER_M_SERIAL}x %>s %U"."""
    out = []
    for line in access_text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            out.append((parts[0], harness.normalize_serial(parts[1]) if parts[1] != "-" else None,
                        parts[2], parts[3]))
    return out




# -- pytest glue ---------------------------------------------------------------------

@pytest.fixture
def apache_factory(acme_build, procs):
    """apache_factory(pebble, **Apache options) -> Apache (not started); all stopped and removed after."""
    made = []

    def make(*args, **kw):
        a = Apache(acme_build, *args, server_logs=procs.server_logs, **kw)
        made.append(a)
        return a

    yield make
    procs.stop_all()
    # server_logs' own check comes after the directories are gone: check Apache's logs here, with the
    # same LogWatcher entries (levels, allowed regexes), then forget them. Sanitizer reports always count.
    bad = []
    for a in made:
        for log in a.logs():
            entry = next((e for e in procs.server_logs.entries if e[0] == log), None)
            if entry is None:
                bad += [f"{log}: {line}" for line in harness.find_error_lines(log, levels=())]
            else:
                _, allowed, off, levels = entry
                bad += [f"{log}: {line}" for line in harness.find_error_lines(log, allowed, off, levels)]
            procs.server_logs.unwatch(log)
        a.cleanup()
    if bad:
        raise AssertionError("unexpected error lines in Apache's logs:\n  " + "\n  ".join(bad[:40]))


def issued_and_served(a, name, store_name=None):
    """Wait for a valid certificate (from this generation's driver), check it is Pebble's and served."""
    st = a.wait_valid(name)
    store_name = store_name or st["name"]
    status, body, der, _ = tls_get(a.https_port, name, host=a.address)
    assert status == 200, body
    assert b"hello from apache" in body
    assert "Pebble" in cert_issuer(der), cert_issuer(der)
    assert cert_serial(der) == stored_serial(a.state, store_name)
    return st, der
