#!/usr/bin/env python3
"""make demo: automatic HTTPS in one command, on loopback.

Starts pebble-challtestsrv (a DNS server that answers 127.0.0.1 for every name), Pebble (a test ACME CA
with its own roots, PEBBLE_VA_NOSLEEP=1) and Debian's nginx with build/ngx_http_acme_module.so on free
loopback ports (nginx's plain-HTTP listener on the port Pebble validates HTTP-01 on), waits until nginx
serves a certificate from Pebble for demo.example.org, shows it and the curl command to see it yourself,
and stays in the foreground until Ctrl-C; then stops everything it started and removes its directory.

  ACME_BUILD=build python3 tests/demo/demo.py
  DEMO_TIMEOUT=SECONDS   end by itself that long after the certificate is shown (exit status 0 when a
                         certificate was served, 1 otherwise)
  DEMO_KEEP=1            keep the working directory (configuration, logs, state) afterwards
"""

import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
import harness  # noqa: E402

NAME = "demo.example.org"
NGINX = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")
ISSUE_TIMEOUT = 90

NGINX_CONF = """\
# nginx for `make demo`: the module, one ACME issuer (Pebble) and one TLS server that uses it.
load_module {module};
{user}
daemon off;
worker_processes 2;
error_log {dir}/error.log info;
pid {dir}/nginx.pid;

events {{
    worker_connections 256;
}}

http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;

    acme_issuer pebble {{
        uri {directory};                        # Pebble's ACME directory
        contact admin@example.org;
        accept_terms_of_service;
        ssl_trusted_certificate {dir}/pebble-https-ca.pem;   # the CA of Pebble's own HTTPS
        state_path {dir}/state;                 # default: /var/lib/nginx/acme/pebble
    }}

    # plain HTTP on the port Pebble validates on: the module answers the HTTP-01 challenges here
    server {{
        listen 127.0.0.1:{http_port};
        server_name {name};
        location / {{ return 200 "plain HTTP; the certificate is on https://{name}:{https_port}/\\n"; }}
    }}

    server {{
        listen 127.0.0.1:{https_port} ssl;
        server_name {name};
        acme_certificate pebble;

        location / {{ return 200 "Hello from nginx: this certificate came from Pebble through ngx_http_acme_module.\\n"; }}
        location = /acme-status {{ acme_status; allow 127.0.0.1; deny all; }}
    }}
}}
"""


def say(msg=""):
    print(msg, flush=True)


def served_leaf(port, roots_pem):
    """The leaf (DER) nginx serves for NAME when it chains to Pebble's root, else None."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=roots_pem)
    try:
        with socket.create_connection((harness.LOOPBACK, port), timeout=3) as s:
            with ctx.wrap_socket(s, server_hostname=NAME) as t:
                return t.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None


def log_tail(path, n=30):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class Demo:
    def __init__(self):
        self.build = harness.build_dir()
        self.module = self.build / "ngx_http_acme_module.so"
        self.dir = Path(tempfile.mkdtemp(prefix="acme-demo-"))
        os.chmod(self.dir, 0o755)       # nginx's workers (www-data when run as root) work in it
        self.chall = self.pebble = self.nginx = None

    def start(self):
        if not self.module.is_file():
            raise harness.HarnessError(f"{self.module} is missing: run `make` first")
        say("== starting pebble-challtestsrv (DNS: every name is 127.0.0.1) and Pebble (a test ACME CA)")
        self.chall = harness.ChallTestSrv(self.dir / "challtestsrv").start()
        ca = harness.TestCA(self.dir / "pebble-https-ca")
        self.pebble = harness.Pebble(self.dir / "pebble", ca, dns_server=self.chall.dns_address).start()
        shutil.copy(self.pebble.ca_cert, self.dir / "pebble-https-ca.pem")
        os.chmod(self.dir / "pebble-https-ca.pem", 0o644)
        say(f"   Pebble: {self.pebble.directory_url} (validates HTTP-01 on port {self.pebble.http_port})")

        self.https_port = harness.free_port()
        (self.dir / "tmp").mkdir()
        conf = self.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(
            module=self.module, user="user www-data;" if os.geteuid() == 0 else "", dir=self.dir,
            directory=self.pebble.directory_url, http_port=self.pebble.http_port,
            https_port=self.https_port, name=NAME))
        say(f"== starting Debian's nginx with {self.module}")
        say(f"   configuration: {conf}")
        cp = harness.run_cmd([NGINX, "-t", "-q", "-p", self.dir, "-c", conf, "-e", self.dir / "error.log"],
                             timeout=60)
        if cp.returncode != 0:
            raise harness.HarnessError(f"nginx -t failed:\n{cp.stdout}{cp.stderr}\n"
                                       f"{log_tail(self.dir / 'error.log')}")
        self.nginx = harness.Process([NGINX, "-p", self.dir, "-c", conf, "-e", self.dir / "error.log"],
                                     name="nginx", log_path=self.dir / "nginx-stdout.log")
        self.nginx.start()
        self.nginx.wait_port(self.https_port, timeout=15)
        say(f"   https://{NAME}:{self.https_port}/ (127.0.0.1), plain HTTP on port {self.pebble.http_port}")

    def wait_certificate(self):
        say(f"== waiting for nginx to get a certificate for {NAME} from Pebble ...")
        roots = self.pebble.roots(0)
        self.root_file = self.dir / "pebble-root.pem"
        self.root_file.write_text(roots)
        os.chmod(self.root_file, 0o644)
        t0 = time.monotonic()
        deadline = t0 + ISSUE_TIMEOUT
        while time.monotonic() < deadline:
            if not self.nginx.alive():
                raise harness.HarnessError(f"nginx exited:\n{log_tail(self.dir / 'error.log')}")
            der = served_leaf(self.https_port, roots)
            if der:
                say(f"   served after {time.monotonic() - t0:.1f} s")
                return der
            time.sleep(0.3)
        raise harness.HarnessError(f"no certificate from Pebble after {ISSUE_TIMEOUT} s; nginx's log:\n"
                                   f"{log_tail(self.dir / 'error.log')}")

    def show(self, der):
        pem = harness.openssl("x509", "-inform", "DER", "-outform", "PEM", input=der)
        (self.dir / "served.pem").write_bytes(pem)
        info = harness.openssl("x509", "-noout", "-subject", "-issuer", "-serial", "-dates", "-ext",
                               "subjectAltName", input=pem).decode()
        say()
        say(f"== the certificate nginx serves for {NAME}")
        lines = [ln.strip() for ln in info.strip().splitlines()]
        for i, line in enumerate(lines):
            if line.endswith("Subject Alternative Name:"):
                continue
            if i and lines[i - 1].endswith("Subject Alternative Name:"):
                line = "subjectAltName=" + line
            say("   " + line)
        state = self.dir / "state" / "certs"
        if state.is_dir():
            say(f"   stored in {state}/: {', '.join(sorted(p.name for p in state.iterdir()))}")
        acmectl = self.build / "acmectl"
        if acmectl.is_file():
            cp = harness.run_cmd([acmectl, "--state", self.dir / "state", "list"], timeout=30)
            if cp.returncode == 0 and cp.stdout.strip():
                say(f"== acmectl --state {self.dir / 'state'} list")
                for line in cp.stdout.rstrip().splitlines():
                    say("   " + line)

        curl = ["curl", "--cacert", str(self.root_file), "--resolve", f"{NAME}:{self.https_port}:127.0.0.1"]
        if any(os.environ.get(v) for v in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")):
            curl += ["--noproxy", "*"]
        curl.append(f"https://{NAME}:{self.https_port}/")
        if shutil.which("curl"):
            cp = subprocess.run(curl + ["-sS"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                timeout=15, env=harness.child_env(), text=True)
            say()
            say("== curl, verifying against Pebble's root:")
            say("   " + cp.stdout.strip())
        say()
        say("See it yourself (another terminal):")
        say("   " + " ".join(shlex.quote(a) for a in curl))
        say(f"   curl --cacert {shlex.quote(str(self.root_file))} --resolve "
            f"{NAME}:{self.https_port}:127.0.0.1 https://{NAME}:{self.https_port}/acme-status")
        say()

    def stop(self):
        for name, s in (("nginx", self.nginx), ("Pebble", self.pebble), ("pebble-challtestsrv", self.chall)):
            if s is not None:
                try:
                    s.stop()
                except Exception as e:      # keep stopping the others
                    say(f"   stopping {name}: {e}")
        if os.environ.get("DEMO_KEEP"):
            say(f"== stopped; kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
            say("== stopped nginx, Pebble and pebble-challtestsrv; removed " + str(self.dir))


def main():
    try:
        timeout = float(os.environ.get("DEMO_TIMEOUT") or 0)
    except ValueError:
        say(f"DEMO_TIMEOUT={os.environ['DEMO_TIMEOUT']!r}: a number of seconds")
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt
    # also SIGINT: started in the background by a non-interactive shell, it would be ignored
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_term)

    demo = Demo()
    rc = 1
    try:
        demo.start()
        der = demo.wait_certificate()
        demo.show(der)
        rc = 0
        if timeout > 0:
            say(f"Running for {timeout:g} s (DEMO_TIMEOUT); Ctrl-C stops it earlier.")
        else:
            say("Running until Ctrl-C.")
        end = time.monotonic() + timeout if timeout > 0 else None
        while end is None or time.monotonic() < end:
            if not demo.nginx.alive():
                say(f"nginx exited:\n{log_tail(demo.dir / 'error.log')}")
                rc = 1
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        say()
    except harness.HarnessError as e:
        say(f"demo failed: {e}")
        rc = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *a: say("   (stopping, one moment)"))
        demo.stop()
        harness._kill_all_live()
    return rc


if __name__ == "__main__":
    sys.exit(main())
