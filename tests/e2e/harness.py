"""Reusable end-to-end test harness for the ACME client project.

Standard library only (plus the `openssl`, `pebble` and `pebble-challtestsrv`
executables).  Everything listens on 127.0.0.1 only.

Main pieces (see conftest.py for the pytest fixtures built on them):

  free_port(udp=False)          a free TCP (and, with udp=True, also UDP) port
  TestCA                        root CA + "localhost"/127.0.0.1 server cert (openssl CLI)
  Process                       managed child process in its own process group
  run_cmd()                     one-shot command with timeout, process-group kill
  ChallTestSrv                  pebble-challtestsrv (mock DNS + management API)
  Pebble                        pebble ACME server (+ management API, log counters)
  check_error_log()             fail on [error]/[crit]/[alert]/[emerg] lines
  LogWatcher                    collects logs to check at teardown
  dns_query()                   tiny pure-python DNS client (UDP)
  Http01Responder               tiny HTTP-01 challenge server (thread)
  AcmeTestClient                minimal ACME client (stdlib + openssl CLI) for
                                exercising Pebble without acmectl
"""

import atexit
import base64
import fcntl
import hashlib
import hmac
import http.server
import json
import os
import random
import re
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import leakcheck

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"

PEBBLE_BIN = os.environ.get("PEBBLE_BIN", "/usr/bin/pebble")
CHALLTESTSRV_BIN = os.environ.get("PEBBLE_CHALLTESTSRV_BIN", "/usr/bin/pebble-challtestsrv")
OPENSSL_BIN = os.environ.get("OPENSSL_BIN", "openssl")

# A current Pebble (ARI, profiles): built by ../shared/pebble/build.sh beside the repository, when there
# ($ACME_PEBBLE_NEXT_BUILD: another script that prints the folder with pebble and pebble-challtestsrv).
PEBBLE_NEXT_BUILD = Path(os.environ.get("ACME_PEBBLE_NEXT_BUILD")
                         or REPO_ROOT.parent / "shared" / "pebble" / "build.sh")

_PROXY_VARS = ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy")


class HarnessError(Exception):
    """A harness-level failure (process did not start, timeout, ...)."""


class PebbleNextMissing(HarnessError):
    """No current Pebble on this machine: ../shared/pebble/build.sh is not beside the repository."""


_pebble_next = None     # (dir or None, error) of the one build.sh run of this session


def pebble_next_dir():
    """Folder with a current Pebble's `pebble` and `pebble-challtestsrv` (Debian's Pebble 2.4 lacks ARI
    and profiles). Runs ../shared/pebble/build.sh once per session (it caches its build; the first one
    takes minutes). Raises PebbleNextMissing without that script, HarnessError when the build fails."""
    global _pebble_next
    if _pebble_next is None:
        if not PEBBLE_NEXT_BUILD.is_file():
            _pebble_next = (None, PebbleNextMissing(
                f"needs a current Pebble (ARI, profiles; Debian's Pebble 2.4 has neither): {PEBBLE_NEXT_BUILD} "
                "is not on this machine"))
        else:
            cp = subprocess.run([str(PEBBLE_NEXT_BUILD)], capture_output=True, text=True, timeout=1800,
                                stdin=subprocess.DEVNULL)
            d = Path(cp.stdout.strip().splitlines()[-1]) if cp.returncode == 0 and cp.stdout.strip() else None
            if d is None or not (d / "pebble").is_file() or not (d / "pebble-challtestsrv").is_file():
                _pebble_next = (None, HarnessError(f"{PEBBLE_NEXT_BUILD} failed ({cp.returncode}):\n"
                                                   f"{cp.stdout[-2000:]}{cp.stderr[-4000:]}"))
            else:
                _pebble_next = (d, None)
    if _pebble_next[1] is not None:
        raise _pebble_next[1]
    return _pebble_next[0]


# --------------------------------------------------------------------------
# paths / environment
# --------------------------------------------------------------------------

def sanitizer_logs():
    """$ACME_SANITIZER_LOGS (set by `make test-asan`): the directory where every sanitized test process
    writes its ASan/UBSan/LSan reports, or None when the servers are not sanitized."""
    v = os.environ.get("ACME_SANITIZER_LOGS")
    return Path(v) if v else None


# nginx's own leaks at exit: main() does not destroy its init cycle's pool after a configuration
# error, and nginx -t leaves a regex's PCRE2 context (server_name ~...) to a pool cleanup it never
# runs. Ignored only as leaks whose first frames below the allocator are these (an LSan
# suppression cannot say "called from main" without matching every allocation).
IGNORED_LEAKS = [("ngx_memalign", "ngx_create_pool", "main"), ("ngx_alloc", "ngx_regex_malloc")]
TEST_CYCLE_POOL = ("ngx_memalign", "ngx_create_pool", "ngx_init_cycle")
_FRAME_RE = re.compile(r"^\s+#(\d+) 0x[0-9a-f]+ in (\S+)", re.M)


def sanitizer_report_is_error(text):
    """Whether a sanitizer's report file reports an error (not only IGNORED_LEAKS or, say, the
    suppressions that LSan used)."""
    if not SANITIZER_RE.search(text):
        return False
    if "ERROR: LeakSanitizer" not in text or re.search(r"ERROR: (?!LeakSanitizer)", text):
        return True
    # Indirect leaks hang off direct ones: when every direct leak is an ignored one, so is what hangs off
    # it. A report of indirect leaks only is a structure pointing at itself: ignored only when it is the
    # cycle of `nginx -t`, which main() returns from before setting ngx_cycle (its pool holds the cycle,
    # the cycle its pool)
    direct = cycle_pool = False
    for rec in re.split(r"\n(?=(?:Direct|Indirect) leak of )", text)[1:]:
        frames = tuple(f for n, f in _FRAME_RE.findall(rec) if n != "0")
        if not rec.startswith("Direct"):
            cycle_pool = cycle_pool or frames[:3] == TEST_CYCLE_POOL
            continue
        direct = True
        if not any(frames[:len(ig)] == ig for ig in IGNORED_LEAKS):
            return True
    return not direct and not cycle_pool


def sanitizer_env(leaks=True):
    """Extra environment for a sanitized server (make test-asan): the ASan runtime and a dlclose()
    that keeps modules mapped ($ACME_SANITIZER_PRELOAD), so that LSan symbolizes a module's frames
    at exit and sees what its globals still point to. leaks=False: no leak check at its exit."""
    v = os.environ.get("ACME_SANITIZER_PRELOAD")
    env = {"LD_PRELOAD": v} if v else {}
    if not leaks and sanitizer_logs() is not None:
        env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    return env


def sanitizer_reports(seen=()):
    """Paths of the report files in sanitizer_logs() not in `seen` that report an error."""
    d = sanitizer_logs()
    if d is None or not d.is_dir():
        return []
    out = []
    for p in sorted(d.iterdir()):
        if p.is_file() and p not in seen and sanitizer_report_is_error(p.read_text(errors="replace")):
            out.append(p)
    return out


def format_sanitizer_reports(paths, lines=60):
    out = []
    for p in paths:
        text = p.read_text(errors="replace").splitlines()
        out.append(f"{p}:\n  " + "\n  ".join(text[:lines])
                   + (f"\n  ... ({len(text) - lines} more lines)" if len(text) > lines else ""))
    return "sanitizer reports:\n" + "\n".join(out)


def build_dir():
    """$ACME_BUILD (relative paths are taken relative to the repo root) or <repo>/build."""
    v = os.environ.get("ACME_BUILD")
    if not v:
        return REPO_ROOT / "build"
    p = Path(v)
    return p if p.is_absolute() else (REPO_ROOT / p)


def child_env(extra=None, base=None):
    """Environment for child processes: the current one without proxy variables
    (traffic is loopback only and must never go through a proxy), plus `extra`.
    A value of None in `extra` removes that variable."""
    env = dict(os.environ if base is None else base)
    for k in list(env):
        if k.lower() in _PROXY_VARS:
            del env[k]
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


# --------------------------------------------------------------------------
# ports
# --------------------------------------------------------------------------

_handed_out = set()
_port_lock = threading.Lock()
# The file that the test processes of one parallel run (pytest-xdist) share: one port number a line,
# every port any of them handed out (conftest.py sets it in the controller, the workers inherit it).
PORT_REGISTRY_ENV = "ACME_E2E_PORT_REGISTRY"


class _SharedPorts:
    """The other processes' ports, under an exclusive flock of the registry file (if there is one):
    `taken` holds them, add() records one."""

    def __enter__(self):
        path = os.environ.get(PORT_REGISTRY_ENV)
        self.fh = open(path, "a+") if path else None
        self.taken = set()
        if self.fh:
            fcntl.flock(self.fh, fcntl.LOCK_EX)
            self.fh.seek(0)
            self.taken = {int(x) for x in self.fh.read().split()}
        return self

    def add(self, port):
        if self.fh:
            self.fh.write(f"{port}\n")

    def __exit__(self, *exc):
        if self.fh:
            self.fh.close()     # flushes, then releases the lock


class AskServer:
    """Caddy's on-demand ask contract: GET /check?domain=NAME, 2xx allows. Names starting with "ok" are
    allowed; "slow" ones answer after `slow` seconds, allowed when slow_allows, else refused; the rest get
    403, and so does every name in `deny`. Records every name asked."""

    def __init__(self, slow=3.0, slow_allows=False):
        self.asked = []
        self.deny = set()       # names refused from now on
        outer = self
        allowed = ("ok", "slow") if slow_allows else ("ok",)

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                m = re.match(r"^/check\?domain=([a-z0-9.-]+)$", self.path)
                name = m.group(1) if m else ""
                outer.asked.append(name)
                if name.startswith("slow"):
                    time.sleep(slow)
                self.send_response(200 if name.startswith(allowed) and name not in outer.deny else 403)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer((LOOPBACK, 0), H)
        self.srv.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self.srv.server_address[1]}/check"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def close_listener(sock, thread=None):
    """Close a test double's listening socket. shutdown() wakes the accept() under way in its thread: a
    close() alone leaves the port listening on its loopback address for the rest of the session, ahead of
    a later server's wildcard bind on the same port."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
    if thread is not None:
        thread.join(timeout=10)


def free_port(udp=False, host=LOOPBACK):
    """Return a port on `host` that is currently free for TCP and, if udp=True,
    also for UDP (for DNS servers).  A port is never handed out twice by one
    test run (all processes of a parallel one), so several calls before anything
    binds are safe."""
    with _port_lock, _SharedPorts() as shared:
        for _ in range(200):
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                t.bind((host, 0))
                port = t.getsockname()[1]
                if port in _handed_out or port in shared.taken:
                    continue
                if udp:
                    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    try:
                        u.bind((host, port))
                    except OSError:
                        continue
                    finally:
                        u.close()
            finally:
                t.close()
            _handed_out.add(port)
            shared.add(port)
            return port
    raise HarnessError("could not find a free port")


def port_open(port, host=LOOPBACK, timeout=0.2):
    """True if a TCP connect to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(pred, timeout=10.0, interval=0.05, what="condition"):
    """Poll pred() until truthy; return its value or raise HarnessError."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------
# HTTP helper (no proxies, explicit trust)
# --------------------------------------------------------------------------

class Response:
    def __init__(self, status, headers, body, url):
        self.status = status
        self.headers = headers
        self.body = body
        self.url = url

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.url}>"


def ssl_context(ca_file=None, insecure=False):
    """Client SSL context that trusts exactly `ca_file` (or nothing checked if insecure)."""
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    return ctx


def http_request(url, method=None, data=None, headers=None, ca_file=None, context=None,
                 timeout=10.0, json_body=None, record=True):
    """HTTP(S) request bypassing any proxy.  Never raises on HTTP error statuses;
    returns Response(status, headers, body).  `ca_file` is the trusted root for https.
    The body is kept for the session's secret check (leakcheck) unless record=False."""
    if json_body is not None:
        data = json.dumps(json_body).encode()
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
    if isinstance(data, str):
        data = data.encode()
    handlers = [urllib.request.ProxyHandler({})]
    if url.startswith("https:"):
        handlers.append(urllib.request.HTTPSHandler(context=context or ssl_context(ca_file)))
    opener = urllib.request.build_opener(*handlers)
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=timeout) as r:
            resp = Response(r.status, r.headers, r.read(), url)
    except urllib.error.HTTPError as e:
        resp = Response(e.code, e.headers, e.read(), url)
    if record:
        leakcheck.record(f"{method or 'GET'} {url}", resp.body)
    return resp


# --------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------

_LIVE = set()
_live_lock = threading.Lock()


def _kill_all_live():
    with _live_lock:
        procs = list(_LIVE)
    for p in procs:
        try:
            p.stop(timeout=2)
        except Exception:
            pass


atexit.register(_kill_all_live)


def _killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _group_alive(pgid):
    """True if a non-zombie process is left in process group `pgid`. (Orphans
    reparented to a PID 1 that reaps slowly linger as zombies; they don't count.)"""
    if not os.path.isdir("/proc/self"):
        return _killpg(pgid, 0)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                rest = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # rest: state ppid pgrp ...
        if len(rest) > 2 and int(rest[2]) == pgid and rest[0] not in (b"Z", b"X"):
            return True
    return False


def _tail(text, n=40):
    lines = text.splitlines()
    return "\n".join(lines[-n:])


class Process:
    """A managed child process, started in its own session/process group so that
    stop() also reaches its children (nginx workers, apache children...).

    Output (stdout+stderr) is appended to `log_path`.  Run servers in the
    foreground (nginx "daemon off;", apache -DFOREGROUND): daemons that call
    setsid() themselves escape the process group.
    """

    def __init__(self, args, name=None, log_path=None, env=None, cwd=None, stdin=None):
        self.args = [str(a) for a in args]
        self.name = name or Path(self.args[0]).name
        self.log_path = Path(log_path) if log_path else None
        self.env = env if env is not None else child_env()
        self.cwd = str(cwd) if cwd else None
        self.stdin = stdin
        self.popen = None
        self._log_fh = None
        self._start_offset = 0
        if self.log_path is not None and leakcheck.is_ours(self.args[0]):
            leakcheck.watch_file(self.log_path)

    # -- lifecycle --------------------------------------------------------
    def start(self):
        if self.alive():
            raise HarnessError(f"{self.name} already running (pid {self.pid})")
        if self.log_path is None:
            raise HarnessError(f"{self.name}: log_path is required")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self.log_path, "ab", buffering=0)
        self._log_fh.write(f"=== harness: start {self.name}: {' '.join(self.args)}\n".encode())
        self._start_offset = self._log_fh.tell()
        self.popen = subprocess.Popen(
            self.args, stdout=self._log_fh, stderr=subprocess.STDOUT,
            stdin=self.stdin if self.stdin is not None else subprocess.DEVNULL,
            env=self.env, cwd=self.cwd, start_new_session=True)
        with _live_lock:
            _LIVE.add(self)
        return self

    @property
    def pid(self):
        return self.popen.pid if self.popen else None

    @property
    def returncode(self):
        return self.popen.poll() if self.popen else None

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def send_signal(self, sig):
        """Signal the main process only (e.g. SIGHUP for an nginx reload)."""
        if self.alive():
            self.popen.send_signal(sig)

    def stop(self, timeout=None, sig=signal.SIGTERM):
        """SIGTERM the whole process group, wait, then SIGKILL. Idempotent.
        Returns the exit status of the main process."""
        if self.popen is None:
            return None
        if timeout is None:
            # sanitized servers exit slowly (LeakSanitizer walks the heap of every process at exit)
            timeout = 20.0 if os.environ.get("ACME_SANITIZER_PRELOAD") else 5.0
        pgid = self.popen.pid  # start_new_session: pgid == pid
        if self.popen.poll() is None:
            _killpg(pgid, sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # sweep anything left in the group (or the main process if it ignored SIGTERM)
        if _group_alive(pgid):
            _killpg(pgid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _group_alive(pgid) and time.monotonic() < deadline:
                if self.popen.poll() is None:
                    try:
                        self.popen.wait(timeout=0.05)
                    except subprocess.TimeoutExpired:
                        pass
                else:
                    time.sleep(0.02)
        rc = self.popen.wait()
        if self._log_fh:
            try:
                self._log_fh.write(f"=== harness: {self.name} exited with {rc}\n".encode())
                self._log_fh.close()
            except OSError:
                pass
            self._log_fh = None
        with _live_lock:
            _LIVE.discard(self)
        return rc

    def kill(self):
        return self.stop(timeout=0, sig=signal.SIGKILL)

    def restart(self):
        self.stop()
        self.start()
        return self

    def __enter__(self):
        if not self.alive():
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- logs ---------------------------------------------------------------
    def log_size(self):
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_text(self, since=0):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _check_alive(self, what):
        if not self.alive():
            raise HarnessError(
                f"{self.name} exited with status {self.returncode} while waiting for {what}; "
                f"log {self.log_path}:\n{_tail(self.log_text(self._start_offset))}")

    # -- waits ----------------------------------------------------------------
    def wait_port(self, port, host=LOOPBACK, timeout=10.0):
        def ok():
            self._check_alive(f"port {host}:{port}")
            return port_open(port, host)
        try:
            wait_for(ok, timeout, what=f"{self.name} to listen on {host}:{port}")
        except HarnessError as e:
            raise HarnessError(f"{e}; log:\n{_tail(self.log_text(self._start_offset))}") from None
        return self

    def wait_log(self, pattern, timeout=10.0, since=None):
        """Wait until a line matching regex `pattern` appears in the log (after
        `since`, default: since this start). Returns the re.Match."""
        rx = re.compile(pattern)
        start = self._start_offset if since is None else since

        def ok():
            m = rx.search(self.log_text(start))
            if m:
                return m
            self._check_alive(f"log line /{pattern}/")
            return None
        try:
            return wait_for(ok, timeout, what=f"{self.name} log /{pattern}/")
        except HarnessError as e:
            raise HarnessError(f"{e}; log:\n{_tail(self.log_text(start))}") from None

    def wait_url(self, url, ca_file=None, timeout=10.0, ok_status=None):
        """Wait until `url` answers (any HTTP status, or one in ok_status)."""
        def ok():
            self._check_alive(url)
            try:
                r = http_request(url, ca_file=ca_file, timeout=2)
            except (OSError, ssl.SSLError):
                return None
            if ok_status and r.status not in ok_status:
                return None
            return r
        try:
            return wait_for(ok, timeout, interval=0.05, what=f"{self.name} at {url}")
        except HarnessError as e:
            raise HarnessError(f"{e}; log:\n{_tail(self.log_text(self._start_offset))}") from None

    def wait_exit(self, timeout=10.0):
        """Wait for the process to exit on its own; returns its status."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{self.name} did not exit within {timeout}s") from None

    def __repr__(self):
        return f"<Process {self.name} pid={self.pid} alive={self.alive()}>"


def run_cmd(args, timeout=60.0, env=None, cwd=None, input=None, check=False):
    """Run a command to completion (own process group, killed on timeout).
    Returns subprocess.CompletedProcess with text stdout/stderr."""
    args = [str(a) for a in args]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                         env=env if env is not None else child_env(), cwd=cwd,
                         start_new_session=True)
    try:
        out, err = p.communicate(input=input.encode() if isinstance(input, str) else input,
                                 timeout=timeout)
    except subprocess.TimeoutExpired:
        _killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise HarnessError(f"timeout after {timeout}s: {' '.join(args)}\nstdout:\n"
                           f"{out.decode(errors='replace')}\nstderr:\n{err.decode(errors='replace')}")
    finally:
        _killpg(p.pid, signal.SIGKILL)  # strays left in the group
    cp = subprocess.CompletedProcess(args, p.returncode, out.decode("utf-8", "replace"),
                                     err.decode("utf-8", "replace"))
    if leakcheck.is_ours(args[0]):
        leakcheck.record(f"output of {' '.join(args)[:200]}", cp.stdout + cp.stderr)
    if check and cp.returncode != 0:
        raise HarnessError(f"command failed ({cp.returncode}): {' '.join(args)}\n"
                           f"stdout:\n{cp.stdout}\nstderr:\n{cp.stderr}")
    return cp


def openssl(*args, input=None):
    """Run the openssl CLI, raising on failure; returns stdout (bytes if binary)."""
    p = subprocess.run([OPENSSL_BIN, *map(str, args)], input=input, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    if p.returncode != 0:
        raise HarnessError(f"openssl {' '.join(map(str, args))} failed: "
                           f"{p.stderr.decode(errors='replace')}")
    return p.stdout


# --------------------------------------------------------------------------
# test CA
# --------------------------------------------------------------------------

class TestCA:
    """A throw-away root CA (EC P-256) generated with the openssl CLI, plus a
    server certificate for "localhost" and 127.0.0.1 (used by Pebble's HTTPS
    listeners).  Attributes are Paths: ca_cert, ca_key, cert, key, chain."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory, name="e2e test root"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_key = self.dir / "root.key"
        self.ca_cert = self.dir / "root.pem"
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", self.ca_key, "-out", self.ca_cert, "-days", "30",
                "-subj", f"/CN={name}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-addext", "subjectKeyIdentifier=hash")
        self.cert, self.key = self.issue("localhost", ["localhost"], ["127.0.0.1"])
        self.chain = self.cert  # leaf only; the root is trusted directly

    def issue(self, name, dns_names=(), ips=(), days=30, basename=None):
        """Issue an EC P-256 server certificate; returns (cert_path, key_path)."""
        base = basename or re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        key = self.dir / f"{base}.key"
        csr = self.dir / f"{base}.csr"
        cert = self.dir / f"{base}.pem"
        ext = self.dir / f"{base}.ext"
        sans = [f"DNS:{d}" for d in dns_names] + [f"IP:{i}" for i in ips]
        lines = ["basicConstraints=critical,CA:FALSE",
                 "keyUsage=critical,digitalSignature",
                 "extendedKeyUsage=serverAuth",
                 "authorityKeyIdentifier=keyid"]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", csr, "-CA", self.ca_cert, "-CAkey", self.ca_key,
                "-set_serial", str(random.getrandbits(63)), "-out", cert, "-days", str(days),
                "-extfile", ext)
        return cert, key

    def ssl_context(self):
        return ssl_context(self.ca_cert)


# --------------------------------------------------------------------------
# DNS (pure python client)
# --------------------------------------------------------------------------

DNS_TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "TXT": 16, "AAAA": 28, "CAA": 257}


def _dns_name(buf, off):
    labels = []
    jumped_end = None
    for _ in range(128):
        ln = buf[off]
        if ln == 0:
            off += 1
            break
        if ln & 0xC0 == 0xC0:
            ptr = struct.unpack_from("!H", buf, off)[0] & 0x3FFF
            if jumped_end is None:
                jumped_end = off + 2
            off = ptr
            continue
        labels.append(buf[off + 1:off + 1 + ln].decode("ascii", "replace"))
        off += 1 + ln
    return ".".join(labels), (jumped_end if jumped_end is not None else off)


class DNSAnswer:
    def __init__(self, rcode, answers):
        self.rcode = rcode          # 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN ...
        self.answers = answers      # list of (name, type, ttl, value)

    def values(self, qtype=None):
        t = DNS_TYPES.get(qtype, qtype) if qtype else None
        return [v for (_, typ, _, v) in self.answers if t is None or typ == t]


def dns_query(name, qtype="A", server=LOOPBACK, port=53, timeout=2.0, tcp=False):
    """Send one DNS query and return a DNSAnswer.  Values: A/AAAA -> address
    string, TXT -> joined string, CNAME -> name, others -> raw bytes."""
    qt = DNS_TYPES.get(qtype, qtype) if isinstance(qtype, str) else qtype
    qid = random.getrandbits(16)
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        b = label.encode("idna") if label else b""
        q += bytes([len(b)]) + b
    q += b"\x00" + struct.pack("!HH", qt, 1)
    if tcp:
        with socket.create_connection((server, port), timeout=timeout) as s:
            s.sendall(struct.pack("!H", len(q)) + q)
            hdr = _recv_exact(s, 2)
            resp = _recv_exact(s, struct.unpack("!H", hdr)[0])
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(q, (server, port))
            while True:
                resp, _ = s.recvfrom(65535)
                if len(resp) >= 2 and struct.unpack_from("!H", resp)[0] == qid:
                    break
    rid, flags, qd, an, _, _ = struct.unpack_from("!HHHHHH", resp)
    off = 12
    for _ in range(qd):
        _, off = _dns_name(resp, off)
        off += 4
    answers = []
    for _ in range(an):
        rname, off = _dns_name(resp, off)
        typ, _cls, ttl, rdlen = struct.unpack_from("!HHIH", resp, off)
        off += 10
        rdata = resp[off:off + rdlen]
        if typ == 1 and rdlen == 4:
            val = socket.inet_ntop(socket.AF_INET, rdata)
        elif typ == 28 and rdlen == 16:
            val = socket.inet_ntop(socket.AF_INET6, rdata)
        elif typ == 16:
            parts, i = [], 0
            while i < len(rdata):
                ln = rdata[i]
                parts.append(rdata[i + 1:i + 1 + ln].decode("utf-8", "replace"))
                i += 1 + ln
            val = "".join(parts)
        elif typ == 5:
            val, _ = _dns_name(resp, off)
        else:
            val = bytes(rdata)
        answers.append((rname, typ, ttl, val))
        off += rdlen
    return DNSAnswer(flags & 0xF, answers)


def _recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise HarnessError("DNS TCP connection closed early")
        buf += chunk
    return buf


# --------------------------------------------------------------------------
# pebble-challtestsrv
# --------------------------------------------------------------------------

def _fqdn(host):
    return host if host.endswith(".") else host + "."


class ChallTestSrv:
    """pebble-challtestsrv with only its DNS server and its management API, both
    on free loopback ports.  By default every name resolves (A) to 127.0.0.1
    and AAAA queries get no answer (so validation uses IPv4)."""

    def __init__(self, workdir, default_ipv4=LOOPBACK, default_ipv6="", next_dir=None):
        """next_dir: a current Pebble's folder (pebble_next_dir()): its pebble-challtestsrv."""
        self.next_dir = next_dir
        self.binary = str(Path(next_dir) / "pebble-challtestsrv") if next_dir else CHALLTESTSRV_BIN
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.default_ipv4 = default_ipv4
        self.default_ipv6 = default_ipv6
        self.log_path = self.workdir / "challtestsrv.log"
        self.dns_port = None
        self.management_port = None
        self.proc = None
        self._records = set()   # (kind, host) to clear on reset()

    @property
    def dns_address(self):
        """host:port, e.g. for `pebble -dnsserver`."""
        return f"{LOOPBACK}:{self.dns_port}"

    @property
    def management_url(self):
        return f"http://{LOOPBACK}:{self.management_port}"

    def start(self, timeout=10.0):
        last = None
        for _ in range(3):
            self.dns_port = free_port(udp=True)
            self.management_port = free_port()
            # Pebble 2.4's flag is -dns01; current ones call it -dnsserver and add DoH (off here)
            dns = (["-dnsserver", self.dns_address, "-doh", ""] if self.next_dir
                   else ["-dns01", self.dns_address])
            self.proc = Process(
                [self.binary, *dns,
                 "-http01", "", "-https01", "", "-tlsalpn01", "",
                 "-management", f"{LOOPBACK}:{self.management_port}",
                 "-defaultIPv4", self.default_ipv4,
                 "-defaultIPv6", self.default_ipv6],
                name="pebble-challtestsrv", log_path=self.log_path, cwd=self.workdir)
            self.proc.start()
            try:
                self.proc.wait_port(self.management_port, timeout=timeout)
                self.proc.wait_port(self.dns_port, timeout=timeout)
                wait_for(self._dns_ready, timeout, what="challtestsrv DNS (UDP)")
                return self
            except HarnessError as e:
                last = e
                self.proc.stop()
        raise HarnessError(f"pebble-challtestsrv did not start: {last}")

    def _dns_ready(self):
        try:
            dns_query("harness-probe.invalid", "A", port=self.dns_port, timeout=0.3)
            return True
        except OSError:
            return False

    def stop(self):
        if self.proc:
            self.proc.stop()

    def alive(self):
        return self.proc is not None and self.proc.alive()

    def log_text(self, since=0):
        return self.proc.log_text(since) if self.proc else ""

    # -- management API -------------------------------------------------------
    def _post(self, path, obj):
        r = http_request(self.management_url + path, method="POST", json_body=obj, timeout=5)
        if r.status != 200:
            raise HarnessError(f"challtestsrv {path} {obj}: HTTP {r.status} {r.text}")
        return r

    def add_a(self, host, addresses):
        """Answer A queries for `host` with `addresses` (list or single string)."""
        if isinstance(addresses, str):
            addresses = [addresses]
        self._post("/add-a", {"host": host, "addresses": list(addresses)})
        self._records.add(("a", host))

    def map_a(self, host, addresses):
        """Answer A queries for `host` with exactly `addresses` (add_a appends to what is there)."""
        self.clear_a(host)
        self.add_a(host, addresses)

    def clear_a(self, host):
        self._post("/clear-a", {"host": host})
        self._records.discard(("a", host))

    def add_aaaa(self, host, addresses):
        if isinstance(addresses, str):
            addresses = [addresses]
        self._post("/add-aaaa", {"host": host, "addresses": list(addresses)})
        self._records.add(("aaaa", host))

    def clear_aaaa(self, host):
        self._post("/clear-aaaa", {"host": host})
        self._records.discard(("aaaa", host))

    def set_txt(self, host, value):
        """TXT record, e.g. set_txt("_acme-challenge.example.com", digest)."""
        self._post("/set-txt", {"host": _fqdn(host), "value": value})
        self._records.add(("txt", host))

    def clear_txt(self, host):
        self._post("/clear-txt", {"host": _fqdn(host)})
        self._records.discard(("txt", host))

    def set_cname(self, host, target):
        self._post("/set-cname", {"host": host, "target": _fqdn(target)})
        self._records.add(("cname", host))

    def clear_cname(self, host):
        self._post("/clear-cname", {"host": host})
        self._records.discard(("cname", host))

    def set_servfail(self, host):
        self._post("/set-servfail", {"host": host})
        self._records.add(("servfail", host))

    def clear_servfail(self, host):
        self._post("/clear-servfail", {"host": host})
        self._records.discard(("servfail", host))

    def set_default_ipv4(self, ip):
        self._post("/set-default-ipv4", {"ip": ip})
        self._records.add(("default4", ""))

    def dns_request_history(self, host):
        r = self._post("/dns-request-history", {"host": host})
        return r.json() or []

    def clear_dns_request_history(self, host):
        self._post("/clear-request-history", {"host": host, "type": "dns"})

    def reset(self):
        """Undo every record set through this object (used between tests)."""
        for kind, host in list(self._records):
            try:
                if kind == "default4":
                    self._post("/set-default-ipv4", {"ip": self.default_ipv4})
                    self._records.discard((kind, host))
                else:
                    getattr(self, f"clear_{kind}")(host)
            except (HarnessError, OSError):
                pass

    def resolve(self, name, qtype="A"):
        """Query the mock DNS server; returns the list of answer values."""
        return dns_query(name, qtype, port=self.dns_port).values(qtype)


# --------------------------------------------------------------------------
# Pebble
# --------------------------------------------------------------------------

PEBBLE_ORDER_RE = re.compile(r"^Pebble .*Added order \"?[^\s\"]+\"? to the db", re.M)
PEBBLE_ISSUED_RE = re.compile(r"^Pebble .*Issued certificate serial (\S+) for order (\S+)", re.M)
PEBBLE_ACCOUNTS_RE = re.compile(r"^Pebble .*There are now (\d+) accounts in memory", re.M)
_ADDR_IN_USE_RE = re.compile(r"address already in use", re.I)


def normalize_serial(serial):
    """int, hex string, "0A:1B..." or openssl's "serial=0A1B" -> "a1b"."""
    if isinstance(serial, int):
        return format(serial, "x")
    s = serial.strip().split("=")[-1].replace(":", "").lower().lstrip("0")
    return s or "0"


class Pebble:
    """A Pebble ACME server on loopback.

    directory_url, base_url, management_url, http_port, tls_port, ca_cert
    (root that signs Pebble's own HTTPS certificate: pass it to clients as
    --ca-cert), log_path.  State lives in memory: restart() forgets accounts,
    orders and regenerates the issuing roots, but keeps ports and config.
    """

    def __init__(self, workdir, ca, dns_server=None, http_port=None, tls_port=None,
                 eab_keys=None, eab_required=None, env=None, strict=False,
                 ocsp_responder_url="", extra_config=None, port=None, management_port=None,
                 next_dir=None, profiles=None):
        """next_dir: a current Pebble's folder (pebble_next_dir()) instead of Debian's 2.4; only that one
        has ARI (set_renewal_info()) and profiles ({name: validity in seconds}: its "profiles" config)."""
        self.binary = str(Path(next_dir) / "pebble") if next_dir else PEBBLE_BIN
        self.next_dir = next_dir
        self.profiles = dict(profiles or {})
        if self.profiles and not next_dir:
            raise HarnessError("Pebble 2.4 has no profiles: pass next_dir=pebble_next_dir()")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca = ca
        self.dns_server = dns_server
        self._fixed = {"port": port, "management_port": management_port,
                       "http_port": http_port, "tls_port": tls_port}
        self.port = port
        self._mgmt_port = management_port
        self.http_port = http_port
        self.tls_port = tls_port
        self.eab_keys = dict(eab_keys or {})
        self.eab_required = bool(self.eab_keys) if eab_required is None else bool(eab_required)
        self.env = {"PEBBLE_VA_NOSLEEP": "1"}
        # None removes a variable (e.g. {"PEBBLE_VA_NOSLEEP": None} for real sleeps)
        self.env.update({k: (None if v is None else str(v)) for k, v in (env or {}).items()})
        self.strict = strict
        self.ocsp_responder_url = ocsp_responder_url
        self.extra_config = dict(extra_config or {})
        self.config_path = self.workdir / "pebble-config.json"
        self.log_path = self.workdir / "pebble.log"
        self.proc = None
        self._count_base = 0
        self.starts = 0

    # -- addresses ----------------------------------------------------------------
    @property
    def base_url(self):
        return f"https://{LOOPBACK}:{self.port}"

    @property
    def directory_url(self):
        return f"{self.base_url}/dir"

    @property
    def management_port(self):
        return self._mgmt_port

    @property
    def management_url(self):
        return f"https://{LOOPBACK}:{self._mgmt_port}"

    @property
    def ca_cert(self):
        """Path of the root that Pebble's HTTPS (ACME + management) chains to."""
        return self.ca.ca_cert

    # -- lifecycle ----------------------------------------------------------------
    def _write_config(self):
        cfg = {
            "listenAddress": f"{LOOPBACK}:{self.port}",
            "managementListenAddress": f"{LOOPBACK}:{self._mgmt_port}",
            "certificate": str(self.ca.cert),
            "privateKey": str(self.ca.key),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": self.ocsp_responder_url,
            "externalAccountBindingRequired": self.eab_required,
        }
        if self.eab_keys:
            cfg["externalAccountMACKeys"] = self.eab_keys
        if self.profiles:
            cfg["profiles"] = {n: {"description": f"{n}: {v} s", "validityPeriod": v}
                               for n, v in self.profiles.items()}
        cfg.update(self.extra_config)
        self.config_path.write_text(json.dumps({"pebble": cfg}, indent=2) + "\n")

    def _cmd(self):
        cmd = [self.binary, "-config", str(self.config_path)]
        if self.dns_server:
            cmd += ["-dnsserver", self.dns_server]
        if self.strict:
            cmd += ["-strict"]
        return cmd

    def _pick_ports(self):
        for attr, key in (("port", "port"), ("_mgmt_port", "management_port"),
                          ("http_port", "http_port"), ("tls_port", "tls_port")):
            if self._fixed[key] is None:
                setattr(self, attr, free_port())

    def start(self, timeout=15.0):
        """Start (first time: pick free ports for all not given). Waits for /dir."""
        attempts = 3 if self.starts == 0 else 1
        last = None
        for i in range(attempts):
            if self.starts == 0:
                self._pick_ports()
            self._write_config()
            self.proc = Process(self._cmd(), name="pebble", log_path=self.log_path,
                                env=child_env(self.env), cwd=self.workdir)
            self.proc.start()
            try:
                self.proc.wait_url(self.directory_url, ca_file=self.ca_cert, timeout=timeout,
                                   ok_status=(200,))
                self.proc.wait_url(self.management_url + "/roots/0", ca_file=self.ca_cert,
                                   timeout=timeout, ok_status=(200,))
                self.starts += 1
                return self
            except HarnessError as e:
                last = e
                self.proc.stop()
                if not _ADDR_IN_USE_RE.search(str(e)) or self.starts:
                    break
        raise HarnessError(f"pebble did not start: {last}")

    def stop(self):
        if self.proc:
            self.proc.stop()

    def restart(self, timeout=15.0):
        """Stop and start again on the same ports with the same config: all
        accounts/orders/authzs are forgotten and new issuing roots generated."""
        self.stop()
        with open(self.log_path, "ab") as f:
            f.write(b"=== harness: pebble restart\n")
        return self.start(timeout=timeout)

    def alive(self):
        return self.proc is not None and self.proc.alive()

    # -- HTTP helpers ---------------------------------------------------------------
    def ssl_context(self):
        return ssl_context(self.ca_cert)

    def get(self, url, **kw):
        return http_request(url, ca_file=self.ca_cert, **kw)

    def directory(self):
        r = self.get(self.directory_url)
        if r.status != 200:
            raise HarnessError(f"pebble /dir: HTTP {r.status}")
        return r.json()

    def _mgmt_pem(self, path):
        # Pebble's own keys: not an answer of our software
        r = self.get(self.management_url + path, record=False)
        if r.status != 200:
            return None
        return r.text

    def roots(self, index=0):
        """PEM of the issuing root `index` (0 = default chain; 1.. = alternates
        with PEBBLE_ALTERNATE_ROOTS).  Changes on every (re)start."""
        pem = self._mgmt_pem(f"/roots/{index}")
        if pem is None:
            raise HarnessError(f"pebble has no root {index}")
        return pem

    def intermediates(self, index=0):
        pem = self._mgmt_pem(f"/intermediates/{index}")
        if pem is None:
            raise HarnessError(f"pebble has no intermediate {index}")
        return pem

    def root_key(self, index=0):
        return self._mgmt_pem(f"/root-keys/{index}")

    def intermediate_key(self, index=0):
        return self._mgmt_pem(f"/intermediate-keys/{index}")

    def all_roots(self):
        """List of root PEMs: default first, then alternates."""
        out, i = [], 0
        while True:
            pem = self._mgmt_pem(f"/roots/{i}")
            if pem is None:
                return out
            out.append(pem)
            i += 1

    def write_roots(self, path, index=None):
        """Write one root (index) or all roots concatenated to `path`; returns Path."""
        pem = self.roots(index) if index is not None else "".join(self.all_roots())
        p = Path(path)
        p.write_text(pem)
        return p

    def set_renewal_info(self, cert_pem, window=None, raw=None):
        """A current Pebble only: from now on, renewalInfo for this certificate (PEM; the first one is the
        leaf) answers {"suggestedWindow": window} (window: {"start": RFC 3339, "end": ...}), or `raw` as is.
        Pebble still sends Retry-After: 21600 (6 h) with it."""
        if not self.next_dir:
            raise HarnessError("Pebble 2.4 has no renewalInfo: pass next_dir=pebble_next_dir()")
        if isinstance(cert_pem, Path):
            cert_pem = cert_pem.read_text()
        leaf = cert_pem[:cert_pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
        body = raw if raw is not None else json.dumps({"suggestedWindow": window})
        r = self.get(self.management_url + "/set-renewal-info/", method="POST",
                     json_body={"Certificate": leaf + "\n", "ARIResponse": body})
        if r.status != 200:
            raise HarnessError(f"set-renewal-info: HTTP {r.status} {r.text}")

    def replacements(self, since=None):
        """(new order, replaced order) ids: newOrders whose "replaces" this (current) Pebble accepted."""
        return re.findall(r'^Pebble .*ARI: order "([^"]*)" is a replacement of "([^"]*)"',
                          self.log_text(self._since(since)), re.M)

    def cert_status(self, serial):
        """Management /cert-status-by-serial/<hex serial>: dict with Status
        ("Valid"/"Revoked"), Serial, Certificate, Reason, RevokedAt; None if unknown.
        `serial` may be an int, a hex string, or openssl's "serial=..." output."""
        serial = normalize_serial(serial)
        r = self.get(self.management_url + f"/cert-status-by-serial/{serial}")
        if r.status == 404:
            return None
        if r.status != 200:
            raise HarnessError(f"cert-status-by-serial {serial}: HTTP {r.status} {r.text}")
        return r.json()

    # -- logs and counters --------------------------------------------------------
    def log_text(self, since=0):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def mark(self):
        """Current log offset; pass as since= to the counters."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def reset_counters(self):
        """Make order_count()/issued_count() default to counting from now."""
        self._count_base = self.mark()

    def _since(self, since):
        return self._count_base if since is None else since

    def order_count(self, since=None):
        """Number of orders created (new-order requests that succeeded)."""
        return len(PEBBLE_ORDER_RE.findall(self.log_text(self._since(since))))

    def issued_count(self, since=None):
        """Number of certificates issued."""
        return len(PEBBLE_ISSUED_RE.findall(self.log_text(self._since(since))))

    def request_count(self, path, method="POST", since=None):
        """Number of HTTP requests Pebble handled for a path prefix, e.g.
        request_count("/order-plz") counts new-order POSTs (also rejected ones,
        unlike order_count()). Paths: /dir /nonce-plz /sign-me-up /order-plz
        /my-order/ /authZ/ /chalZ/ /finalize-order/ /certZ/ /revoke-cert
        /rollover-account-key /my-account/ /list-orderz/."""
        rx = re.compile(r"^Pebble \S+ \S+ %s %s\S* -> calling handler" % (
            re.escape(method) if method else r"\S+", re.escape(path)), re.M)
        return len(rx.findall(self.log_text(self._since(since))))

    def issued_serials(self, since=None):
        """Serials issued (normalized: lower-case hex, no leading zeros)."""
        return [normalize_serial(m[0])
                for m in PEBBLE_ISSUED_RE.findall(self.log_text(self._since(since)))]

    def account_count(self):
        """Accounts currently in memory (from the last "There are now N accounts" line
        since the last (re)start)."""
        text = self.log_text(self.proc._start_offset if self.proc else 0)
        m = PEBBLE_ACCOUNTS_RE.findall(text)
        return int(m[-1]) if m else 0

    def __repr__(self):
        return f"<Pebble {self.directory_url} alive={self.alive()}>"


# --------------------------------------------------------------------------
# error-log checking
# --------------------------------------------------------------------------

DEFAULT_LEVELS = ("error", "crit", "alert", "emerg")


def _level_re(levels):
    lv = "|".join(levels)
    # nginx:  2024/01/02 03:04:05 [error] 123#0: ...
    #         nginx: [emerg] unknown directive ...   (startup messages on stderr)
    # apache: [Tue Jan 02 03:04:05.123456 2024] [ssl:error] [pid 1] ...  (also "[:error]"
    #         and plain "[error]")
    return re.compile(
        r"^(?:\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} \[(?:%s)\]"
        r"|[\w.-]+: \[(?:%s)\]"
        r"|\[[^\]]*\] \[(?:[\w.-]*:)?(?:%s)\])" % (lv, lv, lv))


# A sanitizer's report (make test-asan): UBSan writes to stderr, which nginx sends to its error
# log. Never allowed; empty `levels` watch a log for these lines only.
SANITIZER_RE = re.compile(r"runtime error: |^==\d+==ERROR: \w+Sanitizer|^SUMMARY: \w+Sanitizer", re.M)


def find_error_lines(path, allowed=(), since=0, levels=DEFAULT_LEVELS):
    """Return the log lines at the given levels that match none of the `allowed`
    regexes (re.search), and every sanitizer report line.  A missing file has no errors."""
    rx = _level_re(levels) if levels else None
    allowed_rx = [re.compile(a) if isinstance(a, str) else a for a in allowed]
    try:
        with open(path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    bad = []
    for line in text.splitlines():
        if SANITIZER_RE.search(line) or (
                rx and rx.search(line) and not any(a.search(line) for a in allowed_rx)):
            bad.append(line)
    return bad


def check_error_log(path, allowed=(), since=0, levels=DEFAULT_LEVELS):
    """Raise AssertionError if `path` has [error]/[crit]/[alert]/[emerg] lines
    (nginx or Apache format) that match none of the `allowed` regexes."""
    bad = find_error_lines(path, allowed, since, levels)
    if bad:
        shown = "\n  ".join(bad[:30])
        more = f"\n  ... and {len(bad) - 30} more" if len(bad) > 30 else ""
        raise AssertionError(f"unexpected error lines in {path}:\n  {shown}{more}")


class LogWatcher:
    """Collects server logs to check with check_error_log() at teardown."""

    def __init__(self):
        self.entries = []   # [path, allowed list, offset, levels]

    def watch(self, path, allowed=(), from_end=False, levels=DEFAULT_LEVELS):
        """Check `path` at teardown. from_end=True ignores what is already in it
        (for logs shared between tests). Returns an entry whose allowed list
        can be extended with allow()."""
        path = Path(path)
        leakcheck.watch_file(path)
        off = 0
        if from_end:
            try:
                off = path.stat().st_size
            except OSError:
                off = 0
        for e in self.entries:
            if e[0] == path:
                e[1].extend(allowed)
                return e
        entry = [path, list(allowed), off, tuple(levels)]
        self.entries.append(entry)
        return entry

    def allow(self, regex, path=None):
        """Allow `regex` for one watched log (or all of them)."""
        for e in self.entries:
            if path is None or e[0] == Path(path):
                e[1].append(regex)

    def unwatch(self, path):
        self.entries = [e for e in self.entries if e[0] != Path(path)]

    def problems(self):
        out = []
        for path, allowed, off, levels in self.entries:
            bad = find_error_lines(path, allowed, off, levels)
            if bad:
                out.append((path, bad))
        return out

    def check(self):
        probs = self.problems()
        if probs:
            msg = []
            for path, bad in probs:
                msg.append(f"{path}:\n  " + "\n  ".join(bad[:30]))
            raise AssertionError("unexpected error lines in server logs:\n" + "\n".join(msg))


# --------------------------------------------------------------------------
# HTTP-01 responder
# --------------------------------------------------------------------------

class Http01Responder:
    """Serves /.well-known/acme-challenge/<token> on 127.0.0.1:port from a dict
    (tokens[token] = key_authorization).  Records request (host, path) pairs."""

    def __init__(self, port, host=LOOPBACK):
        self.port = port
        self.host = host
        self.tokens = {}
        self.requests = []
        self._server = None
        self._thread = None

    def start(self):
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append((self.headers.get("Host"), self.path))
                prefix = "/.well-known/acme-challenge/"
                tok = self.path[len(prefix):] if self.path.startswith(prefix) else None
                body = outer.tokens.get(tok)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        class S(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = S((self.host, self.port), H)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# --------------------------------------------------------------------------
# minimal ACME client (for testing the harness / preparing server state)
# --------------------------------------------------------------------------

def b64u(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_decode(s):
    s = s + "=" * (-len(s) % 4)
    return base64.urlsafe_b64decode(s)


class AcmeError(Exception):
    def __init__(self, resp):
        self.resp = resp
        try:
            self.problem = resp.json()
        except ValueError:
            self.problem = {"detail": resp.text}
        super().__init__(f"HTTP {resp.status} {resp.url}: {self.problem}")


class AcmeTestClient:
    """A deliberately small RFC 8555 client (RS256 account key via the openssl
    CLI) used to exercise Pebble without acmectl.  Not a reference for
    correctness; it retries badNonce and polls simply."""

    def __init__(self, directory_url, ca_file, workdir, account_key=None):
        self.directory_url = directory_url
        self.ca_file = ca_file
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dir = http_request(directory_url, ca_file=ca_file).json()
        self.key_path = Path(account_key) if account_key else self.workdir / "account.key"
        if not self.key_path.exists():
            openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", self.key_path)
        mod = openssl("rsa", "-in", self.key_path, "-noout", "-modulus").decode()
        n = bytes.fromhex(mod.strip().split("=", 1)[1])
        self.jwk = {"e": b64u((65537).to_bytes(3, "big")), "kty": "RSA", "n": b64u(n)}
        self.thumbprint = b64u(hashlib.sha256(
            json.dumps(self.jwk, sort_keys=True, separators=(",", ":")).encode()).digest())
        self.kid = None
        self._nonce = None

    def _sign(self, data):
        return openssl("dgst", "-sha256", "-sign", self.key_path, input=data)

    def _new_nonce(self):
        r = http_request(self.dir["newNonce"], method="HEAD", ca_file=self.ca_file)
        return r.headers["Replay-Nonce"]

    def post(self, url, payload, use_jwk=False, retries=10):
        """Signed POST; payload None = POST-as-GET. Returns Response (raises AcmeError >= 400)."""
        for _ in range(retries):
            nonce = self._nonce or self._new_nonce()
            self._nonce = None
            prot = {"alg": "RS256", "nonce": nonce, "url": url}
            if use_jwk or not self.kid:
                prot["jwk"] = self.jwk
            else:
                prot["kid"] = self.kid
            p64 = b64u(json.dumps(prot))
            pl64 = "" if payload is None else b64u(json.dumps(payload))
            sig = self._sign(f"{p64}.{pl64}".encode())
            body = json.dumps({"protected": p64, "payload": pl64, "signature": b64u(sig)})
            r = http_request(url, method="POST", data=body, ca_file=self.ca_file,
                             headers={"Content-Type": "application/jose+json"})
            self._nonce = r.headers.get("Replay-Nonce")
            if r.status >= 400:
                err = AcmeError(r)
                if err.problem.get("type") == "urn:ietf:params:acme:error:badNonce":
                    continue
                raise err
            return r
        raise HarnessError("too many badNonce errors")

    def register(self, eab_kid=None, eab_hmac_key=None, contact=None):
        payload = {"termsOfServiceAgreed": True}
        if contact:
            payload["contact"] = contact
        if eab_kid:
            url = self.dir["newAccount"]
            prot = b64u(json.dumps({"alg": "HS256", "kid": eab_kid, "url": url}))
            pl = b64u(json.dumps(self.jwk))
            mac = hmac.new(b64u_decode(eab_hmac_key), f"{prot}.{pl}".encode(),
                           hashlib.sha256).digest()
            payload["externalAccountBinding"] = {"protected": prot, "payload": pl,
                                                 "signature": b64u(mac)}
        r = self.post(self.dir["newAccount"], payload, use_jwk=True)
        self.kid = r.headers["Location"]
        return r.json()

    def new_order(self, domains):
        r = self.post(self.dir["newOrder"],
                      {"identifiers": [{"type": "dns", "value": d} for d in domains]})
        return r.headers["Location"], r.json()

    def get(self, url):
        return self.post(url, None).json()

    def poll(self, url, until=("valid", "invalid"), timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get(url)
            if obj.get("status") in until:
                return obj
            if time.monotonic() > deadline:
                raise HarnessError(f"{url} still {obj.get('status')} after {timeout}s")
            time.sleep(0.1)

    def issue(self, domains, http_port, responder=None):
        """Full http-01 issuance; returns (chain_pem, key_path). The challenge
        response is served on 127.0.0.1:http_port (Pebble's httpPort) unless a
        running Http01Responder is passed."""
        order_url, order = self.new_order(domains)
        own = responder is None
        if own:
            responder = Http01Responder(http_port).start()
        try:
            for az_url in order["authorizations"]:
                az = self.get(az_url)
                if az["status"] == "valid":
                    continue
                ch = next(c for c in az["challenges"] if c["type"] == "http-01")
                responder.tokens[ch["token"]] = f"{ch['token']}.{self.thumbprint}"
                self.post(ch["url"], {})
                az = self.poll(az_url)
                if az["status"] != "valid":
                    raise HarnessError(f"authorization failed: {az}")
        finally:
            if own:
                responder.stop()
        order = self.poll(order_url, until=("ready", "invalid"))
        if order["status"] != "ready":
            raise HarnessError(f"order not ready: {order}")
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", domains[0])
        key = self.workdir / f"{base}.key"
        csr = openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                      "-nodes", "-keyout", key, "-subj", f"/CN={domains[0]}", "-outform", "DER",
                      "-addext", "subjectAltName=" + ",".join(f"DNS:{d}" for d in domains))
        self.post(order["finalize"], {"csr": b64u(csr)})
        order = self.poll(order_url)
        if order["status"] != "valid":
            raise HarnessError(f"order failed: {order}")
        chain = self.post(order["certificate"], None).text
        return chain, key


# --------------------------------------------------------------------------
# cluster nodes: other loopback addresses, Redis
# --------------------------------------------------------------------------

# Every 127.0.0.0/8 address is loopback on Linux: cluster nodes listen on these with Pebble's httpPort and
# tlsPort, and the mock DNS maps a name to one of them (ChallTestSrv.add_a) to choose the node the CA validates.
NODE_ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")

REDIS_SERVER_BIN = os.environ.get("REDIS_SERVER_BIN", "/usr/bin/redis-server")


class RedisServer:
    """A redis-server on 127.0.0.1 (free port, no persistence) that can be stopped and started again on the
    same port. command() speaks RESP over a plain socket (no redis-cli needed) and returns raw bytes."""

    def __init__(self, workdir, port=None, persist=False):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persist = persist      # append-only file, fsync'd: the data survives stop() + start()
        self.log_path = self.dir / "redis-server.log"
        self.proc = None

    def url(self, query=""):
        return f"redis://{LOOPBACK}:{self.port}{query}"

    def start(self, timeout=10.0):
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        self.proc = Process([REDIS_SERVER_BIN, "--bind", LOOPBACK, "--port", str(self.port), "--save", "",
                             *aof, "--dir", str(self.dir)],
                            name="redis-server", log_path=self.log_path, cwd=self.dir)
        self.proc.start()
        self.proc.wait_port(self.port, timeout=timeout)
        wait_for(lambda: self._ping(), timeout, what="redis PING")
        return self

    def stop(self):
        if self.proc:
            self.proc.stop()

    def alive(self):
        return self.proc is not None and self.proc.alive()

    def _ping(self):
        try:
            return self.command("PING") == "PONG"
        except OSError:
            return False

    def command(self, *args, timeout=5.0):
        """One command; the reply: bytes (bulk), str (status), int, list, None (nil). Errors raise."""
        req = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            req += b"$%d\r\n%s\r\n" % (len(a), a)
        with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as s:
            s.sendall(req)
            f = s.makefile("rb")
            return self._reply(f)

    def _reply(self, f):
        line = f.readline()
        if not line.endswith(b"\r\n"):
            raise HarnessError(f"redis: short reply {line!r}")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise HarnessError(f"redis: {rest.decode(errors='replace')}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = f.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply(f) for _ in range(n)]
        raise HarnessError(f"redis: unexpected reply {line!r}")

    def get(self, key):
        return self.command("GET", key)

    def value(self, key):
        """A value as the store reads it: without the MAC line a storage key puts first."""
        v = self.get(key)
        return v.split(b"\n", 1)[1] if v and v.startswith(b"acme-mac-v1:") else v

    def keys(self, pattern="*"):
        return sorted(k.decode() for k in self.command("KEYS", pattern))
