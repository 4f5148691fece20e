"""Fault injection in front of Pebble: FaultProxy is ari_proxy.AriProxy (HTTPS reverse
proxy, Host rewriting, ARI and profiles, request records) plus per-test faults.

Standard library only (plus the openssl CLI for CertForge).

A fault matches requests by method and path and acts on some of them:

    px = FaultProxy(pebble, cert, key, port).start()
    f = px.add_fault("finalize", respond=problem(500, "serverInternal", "boom"))
    f = px.add_fault("order", method="POST", nth=2, times=None, transform=truncate())
    f = px.add_fault("certificate", hold=True)      # ... f.wait_hit(); ...; f.release()

  path        a name from PATHS ("directory", "newOrder", "order", "authz", "challenge",
              "finalize", "certificate", "newNonce", "newAccount", "renewalInfo") or a
              regular expression searched in the request path
  method      "GET", "POST", "HEAD" or None (any)
  nth, times  act on the nth matching request (1-based) and the times-1 after it;
              times=None: from the nth on, forever
  delay       seconds to wait before handling the request (it is forwarded afterwards)
  hold        True: block the request until f.release() (or hold_timeout), then forward it
  drop        True: close the connection without any answer
  respond     (status, headers, body) or callable(FaultRequest) -> that: answered here,
              not forwarded.  POST answers get a fresh Replay-Nonce from Pebble unless
              the headers carry one.  See problem().
  transform   callable(FaultResponse) -> FaultResponse (or None: changed in place), or a
              list of them, applied to the answer (forwarded or not) before it is sent.
              See truncate(), pad(), content_type(), edit_json(), replace_body(),
              set_header(), forge_leaf().
  cut         True: send the headers with the full Content-Length, half the body, and
              close the connection (a transfer broken in the middle)
  lose        True: forward the request, then send a status line and a Content-Length but no
              body, and close the connection (the CA acted; its answer was lost; a bare close
              would make curl resend the request on a fresh connection)

The ARI window served defaults to 30..31 days ahead (AriProxy's default is "renew now"),
so that a certificate is renewed only when a test forces it.

Every matching request counts (f.seen); f.hits counts those acted on; f.hit_event is set
at the first hit.  The proxy additionally records decoded POST payloads (`payloads`:
list of (path, payload dict or None)) and the CSRs sent to finalize (`csrs`: DER bytes).

Implementation note: AriProxy builds its request handler class inside start().  FaultProxy
takes that class from the server, subclasses it, and replaces the server's
finish_request (which does the TLS handshake) so that connections use the subclass.
Nothing in ari_proxy.py changes.
"""

import json
import os
import re
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from ari_proxy import AriProxy, b64u_decode, window_from_now, LOOPBACK  # noqa: F401

# Pebble 2.4 paths (see harness.Pebble.request_count)
PATHS = {
    "directory": r"^/dir$",
    "newNonce": r"^/nonce-plz$",
    "newAccount": r"^/sign-me-up$",
    "newOrder": r"^/order-plz$",
    "order": r"^/my-order/",
    "authz": r"^/authZ/",
    "challenge": r"^/chalZ/",
    "finalize": r"^/finalize-order/",
    "certificate": r"^/certZ/",
    "renewalInfo": r"^/renewal-info/",
}

ACME_ERR = "urn:ietf:params:acme:error:"


class FaultRequest:
    """What a `respond` callable sees."""

    def __init__(self, method, path, headers, body, proxy):
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.proxy = proxy

    def payload(self):
        """The decoded JWS payload of a POST (dict, None for POST-as-GET or garbage)."""
        return decode_jws_payload(self.body)


class FaultResponse:
    """What a `transform` sees and changes: status, headers [(k, v)], body (bytes)."""

    def __init__(self, method, path, status, headers, body, proxy):
        self.method = method
        self.path = path
        self.status = status
        self.headers = list(headers)
        self.body = body or b""
        self.proxy = proxy

    def header(self, name):
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def set_header(self, name, value):
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        if value is not None:
            self.headers.append((name, value))


class Fault:
    def __init__(self, path, method=None, nth=1, times=1, delay=0.0, hold=False, hold_timeout=60.0,
                 drop=False, respond=None, transform=None, cut=False, name=None, lose=False):
        self.path_rx = re.compile(PATHS.get(path, path))
        self.method = method
        self.nth = nth
        self.times = times
        self.delay = delay
        self.hold = hold
        self.hold_timeout = hold_timeout
        self.drop = drop
        self.respond = respond
        if transform is not None and not isinstance(transform, (list, tuple)):
            transform = [transform]
        self.transform = list(transform or [])
        self.cut = cut
        self.lose = lose
        self.name = name or f"{method or '*'} {path}"
        self.seen = 0
        self.hits = 0
        self.hit_paths = []
        self.hit_event = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()

    def matches(self, method, path):
        return (self.method is None or self.method == method) and bool(self.path_rx.search(path))

    def take(self, method, path):
        """Count a matching request; True if this one is acted on."""
        with self._lock:
            self.seen += 1
            n = self.seen
            act = n >= self.nth and (self.times is None or n < self.nth + self.times)
            if act:
                self.hits += 1
                self.hit_paths.append(f"{method} {path}")
        if act:
            self.hit_event.set()
        return act

    def give_back(self):
        """Undo take() for a request the fault ended up not acting on."""
        with self._lock:
            self.seen -= 1
            self.hits -= 1
            self.hit_paths.pop()
            if not self.hits:
                self.hit_event.clear()

    def release(self):
        """Let held requests (hold=True) go on, now and from now on."""
        self._release.set()

    def wait_hit(self, timeout=20.0):
        if not self.hit_event.wait(timeout):
            raise TimeoutError(f"fault {self.name!r} was never hit within {timeout}s "
                               f"(seen {self.seen})")
        return self

    def __repr__(self):
        return f"<Fault {self.name} seen={self.seen} hits={self.hits}>"


def _is_bad_nonce(status, body):
    if status != 400 or not body:
        return False
    try:
        return json.loads(body).get("type") == ACME_ERR + "badNonce"
    except (ValueError, AttributeError):
        return False


def decode_jws_payload(body):
    if not body:
        return None
    try:
        jws = json.loads(body)
        p = jws.get("payload")
        return json.loads(b64u_decode(p)) if p else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


# --------------------------------------------------------------------------
# responders and transforms
# --------------------------------------------------------------------------

def problem(status, kind, detail, retry_after=None, headers=(), **fields):
    """A responder answering an RFC 7807 problem document; kind is a short ACME
    error type ("serverInternal") or a full URN; `fields` are added to the document
    (e.g. subproblems=[...])."""
    ptype = kind if ":" in kind else ACME_ERR + kind

    def make(req):
        doc = {"type": ptype, "detail": detail, "status": status}
        doc.update(fields)
        body = json.dumps(doc).encode()
        hdrs = [("Content-Type", "application/problem+json"), ("Cache-Control", "no-store"),
                ("Link", f'<{req.proxy.directory_url}>;rel="index"')]
        if retry_after is not None:
            hdrs.append(("Retry-After", str(retry_after)))
        return status, hdrs + list(headers), body
    return make


def truncate(fraction=0.5):
    """Cut the body to `fraction` of its length (Content-Length matches: the JSON is cut,
    not the transfer)."""
    def t(r):
        r.body = r.body[:int(len(r.body) * fraction)]
    return t


def pad(size):
    """Grow a JSON body to `size` bytes with trailing whitespace (still valid JSON);
    other bodies are padded the same way."""
    def t(r):
        if len(r.body) < size:
            r.body = r.body + b" " * (size - len(r.body))
    return t


def content_type(ct):
    def t(r):
        r.set_header("Content-Type", ct)
    return t


def set_header(name, value):
    def t(r):
        r.set_header(name, value)
    return t


def edit_json(fn):
    """fn(obj) changes the decoded JSON body in place or returns a new object."""
    def t(r):
        obj = json.loads(r.body)
        new = fn(obj)
        r.body = json.dumps(obj if new is None else new, indent=2).encode()
    return t


def replace_body(body, ct=None):
    """A fixed body (bytes/str), or callable(FaultResponse) -> bytes/str."""
    def t(r):
        b = body(r) if callable(body) else body
        r.body = b.encode() if isinstance(b, str) else b
        if ct is not None:
            r.set_header("Content-Type", ct)
    return t


def stuck_processing(obj):
    """edit_json() function: the order is "processing" forever, with no certificate URL."""
    obj["status"] = "processing"
    obj.pop("certificate", None)


# --------------------------------------------------------------------------
# the proxy
# --------------------------------------------------------------------------

class FaultProxy(AriProxy):
    """AriProxy with faults (add_fault / clear_faults).  See the module docstring."""

    def __init__(self, pebble, cert, key, port, log_path=None):
        super().__init__(pebble, cert, key, port, log_path=log_path)
        # unlike AriProxy's "renew now": renewals happen when a test forces them, not
        # because the ARI window (asked right after each issuance) says so
        self.window = window_from_now(30 * 86400, 31 * 86400)
        self.faults = []
        self.payloads = []      # (path, decoded JWS payload) of forwarded POSTs
        self.csrs = []          # DER CSRs sent to finalize

    # -- faults -------------------------------------------------------------------
    def add_fault(self, path, **kw):
        f = Fault(path, **kw)
        with self._lock:
            self.faults.append(f)
        return f

    def clear_faults(self):
        with self._lock:
            faults, self.faults = self.faults, []
        for f in faults:
            f.release()

    def reset(self):
        super().reset()
        with self._lock:
            self.payloads.clear()
            self.csrs.clear()

    def _take_fault(self, method, path):
        """The first fault acting on this request (every matching fault counts it)."""
        with self._lock:
            faults = list(self.faults)
        chosen = None
        for f in faults:
            if f.matches(method, path) and f.take(method, path) and chosen is None:
                chosen = f
        return chosen

    # -- upstream: record what the client sends --------------------------------------
    def upstream(self, method, path, body=None, headers=None):
        if method == "POST" and body:
            payload = decode_jws_payload(body)
            with self._lock:
                self.payloads.append((path, payload))
                if re.search(PATHS["finalize"], path) and isinstance(payload, dict) \
                        and payload.get("csr"):
                    try:
                        self.csrs.append(b64u_decode(payload["csr"]))
                    except ValueError:
                        pass
        return super().upstream(method, path, body, headers)

    # -- lifecycle --------------------------------------------------------------------
    def start(self):
        super().start()
        srv = self._server
        base = srv.RequestHandlerClass
        handler = _fault_handler_class(base, self)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert), str(self.key))

        def finish_request(request, client_address):
            request.settimeout(30)
            try:
                tls = ctx.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return
            try:
                handler(tls, client_address, srv)
            finally:
                try:
                    tls.close()
                except OSError:
                    pass
        # no client has connected yet (start() just returned): every connection uses it
        srv.finish_request = finish_request
        return self

    def stop(self):
        # held requests must not keep the server from shutting down
        with self._lock:
            faults = list(self.faults)
        for f in faults:
            f.release()
        super().stop()


def _fault_handler_class(base, outer):
    class FaultHandler(base):
        _fault = None

        def _fault_dispatch(self):
            method, path = self.command, self.path
            f = self._fault = outer._take_fault(method, path)
            if f is None:
                return base._handle(self)
            outer._log(f"FAULT {f.name}: {method} {path}")
            if f.delay:
                time.sleep(f.delay)
            if f.hold:
                f._release.wait(f.hold_timeout)
            if f.drop:
                self._read_body()
                outer._record(method, path, 0, "dropped")
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return None
            if f.respond is not None:
                body = self._read_body()
                nonce = None
                try:
                    nonce = json.loads(b64u_decode(json.loads(body)["protected"])).get("nonce")
                except (ValueError, KeyError, TypeError, AttributeError):
                    pass
                req = FaultRequest(method, path, dict(self.headers.items()), body, outer)
                r = f.respond(req) if callable(f.respond) else f.respond
                status, hdrs, rbody = r
                hdrs = list(hdrs)
                given = None
                if method in ("POST", "HEAD") and not any(k.lower() == "replay-nonce" for k, _ in hdrs):
                    given = outer.fresh_nonce()
                    hdrs.append(("Replay-Nonce", given))
                ptype = None
                if status >= 400:
                    try:
                        ptype = json.loads(rbody).get("type")
                    except (ValueError, AttributeError):
                        ptype = "?"
                outer._record(method, path, status, ptype, nonce, given)
                if isinstance(rbody, str):
                    rbody = rbody.encode()
                return self._send(status, hdrs, rbody, head=(method == "HEAD"))
            return base._handle(self)

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _fault_dispatch

        def _read_body(self):
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _send(self, status, headers, body, head=False):
            f = self._fault
            self._fault = None      # once per request (an error path may send again)
            if f is not None and (f.transform or f.cut or f.lose) and f.respond is None \
                    and _is_bad_nonce(status, body):
                # Pebble rejected the nonce at random (PEBBLE_WFE_NONCEREJECT): the client must see
                # that answer as it is and retry; the fault acts on the retry instead
                f.give_back()
                outer._log(f"FAULT {f.name}: skipped, Pebble answered badNonce")
                f = None
            if f is not None and f.transform and not head:
                r = FaultResponse(self.command, self.path, status, headers, body, outer)
                for t in f.transform:
                    out = t(r)
                    if isinstance(out, FaultResponse):
                        r = out
                status, headers, body = r.status, r.headers, r.body
            try:
                if f is not None and f.lose:
                    outer._log(f"FAULT {f.name}: answer {status} lost")
                    self.wfile.write(f"HTTP/1.1 {status} OK\r\nContent-Length: 1000\r\n\r\n".encode())
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                if f is not None and f.cut and not head:
                    return self._send_cut(status, headers, body)
                return base._send(self, status, headers, body, head=head)
            except (OSError, ssl.SSLError):
                # the client went away (e.g. killed while a request was held)
                self.close_connection = True
                return None

        def _send_cut(self, status, headers, body):
            self.send_response(status)
            for k, v in headers:
                if k.lower() in ("content-length", "connection", "transfer-encoding", "date",
                                 "server"):
                    continue
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return FaultHandler


# --------------------------------------------------------------------------
# certificates the CA never issued (openssl CLI)
# --------------------------------------------------------------------------

def _openssl(*args, input=None):
    p = subprocess.run(["openssl", *map(str, args)], input=input, capture_output=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))}: "
                           f"{p.stderr.decode(errors='replace')}")
    return p.stdout


def pem_certs(text):
    if isinstance(text, bytes):
        text = text.decode()
    return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", text, re.S)


class CertForge:
    """Signs certificates with Pebble's own issuing keys (management API: /roots/0,
    /root-keys/0, /intermediates/0, /intermediate-keys/0), so that a forged leaf chains
    exactly like a real one.  Dates are free (openssl ca -startdate/-enddate), e.g. an
    expired leaf or an expired intermediate.  Fetch after each Pebble (re)start."""

    def __init__(self, pebble, workdir=None):
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="certforge"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.root = self.dir / "root.pem"
        self.root_key = self.dir / "root.key"
        self.inter = self.dir / "inter.pem"
        self.inter_key = self.dir / "inter.key"
        self.root.write_text(pebble.roots(0))
        self.inter.write_text(pebble.intermediates(0))
        for path, pem in ((self.root_key, pebble.root_key(0)),
                          (self.inter_key, pebble.intermediate_key(0))):
            if not pem:
                raise RuntimeError("Pebble's management API gave no issuing key")
            path.write_text(pem)
            path.chmod(0o600)
        self._n = 0

    def _ca(self, csr, ca_cert, ca_key, ext_lines, start, end, subj=None):
        """openssl ca: sign `csr` (PEM path) with dates start/end (YYYYMMDDHHMMSSZ)."""
        self._n += 1
        d = self.dir / f"ca{self._n}"
        (d / "new").mkdir(parents=True)
        (d / "index.txt").write_text("")
        (d / "serial").write_text("%032x\n" % int.from_bytes(os.urandom(15), "big"))
        (d / "ca.cnf").write_text(
            "[ca]\ndefault_ca = c\n[c]\n"
            f"dir = {d}\ndatabase = $dir/index.txt\nnew_certs_dir = $dir/new\n"
            "serial = $dir/serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n"
            "email_in_dn = no\ncopy_extensions = none\n[p]\ncommonName = optional\n")
        (d / "ext.cnf").write_text("\n".join(ext_lines) + "\n")
        out = d / "out.pem"
        args = ["ca", "-batch", "-config", d / "ca.cnf", "-in", csr, "-cert", ca_cert,
                "-keyfile", ca_key, "-startdate", start, "-enddate", end,
                "-extfile", d / "ext.cnf", "-notext", "-out", out]
        if subj is not None:
            args += ["-subj", subj]
        _openssl(*args)
        return out.read_text()

    @staticmethod
    def stamp(t):
        """epoch seconds -> openssl ca date."""
        return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(t))

    def leaf_from_csr(self, csr_der, dns=(), ips=(), not_before=None, not_after=None):
        """A leaf for the CSR's public key, signed by Pebble's intermediate, with these
        SANs and dates (default: valid from an hour ago for 30 days).  Returns the PEM
        leaf followed by Pebble's intermediate (a full chain)."""
        now = time.time()
        nb = now - 3600 if not_before is None else not_before
        na = now + 30 * 86400 if not_after is None else not_after
        self._n += 1
        csr = self.dir / f"leaf{self._n}.csr"
        _openssl("req", "-inform", "DER", "-in", "-", "-out", csr, input=csr_der)
        sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
        ext = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature",
               "extendedKeyUsage=serverAuth", "authorityKeyIdentifier=keyid",
               "subjectKeyIdentifier=hash"]
        if sans:
            ext.append("subjectAltName=" + ",".join(sans))
        leaf = self._ca(csr, self.inter, self.inter_key, ext, self.stamp(nb), self.stamp(na),
                        subj="/CN=" + (list(dns) + list(ips) + ["forged"])[0])
        return pem_certs(leaf)[0] + self.inter.read_text()

    def expired_intermediate(self, not_before=None, not_after=None):
        """Pebble's intermediate (same name, key and key identifiers) re-signed by its root
        with dates in the past (default: expired a day ago).  Returns PEM."""
        now = time.time()
        nb = now - 90 * 86400 if not_before is None else not_before
        na = now - 86400 if not_after is None else not_after
        text = _openssl("x509", "-in", self.inter, "-noout", "-subject", "-nameopt", "RFC2253",
                        "-ext", "subjectKeyIdentifier").decode()
        subject = re.search(r"subject=(.*)", text).group(1).strip()
        skid = re.search(r"Subject Key Identifier:\s*\n\s*([0-9A-Fa-f:]+)", text).group(1)
        csr = self.dir / "inter.csr"
        # RFC 2253 is "CN=x,O=y" (most specific first); -subj wants "/O=y/CN=x"
        parts = [p.replace("\\,", ",") for p in re.split(r"(?<!\\),", subject)]
        subj = "/" + "/".join(reversed(parts))
        _openssl("req", "-new", "-key", self.inter_key, "-subj", subj, "-out", csr)
        ext = ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,digitalSignature,keyCertSign",
               "extendedKeyUsage=serverAuth,clientAuth", f"subjectKeyIdentifier={skid}",
               "authorityKeyIdentifier=keyid"]
        return self._ca(csr, self.root, self.root_key, ext, self.stamp(nb), self.stamp(na),
                        subj=subj)


def forge_leaf(forge, dns=(), ips=(), not_before=None, not_after=None):
    """transform for the certificate download: a leaf for the last CSR the client sent to
    finalize, signed by Pebble's intermediate, with the given names and dates."""
    def t(r):
        if not r.proxy.csrs:
            raise RuntimeError("forge_leaf: no CSR seen at finalize")
        r.body = forge.leaf_from_csr(r.proxy.csrs[-1], dns, ips, not_before, not_after).encode()
    return t


def with_intermediate(pem):
    """transform for the certificate download: keep the leaf, replace the rest of the
    chain with `pem` (e.g. CertForge.expired_intermediate())."""
    def t(r):
        r.body = (pem_certs(r.body)[0] + pem).encode()
    return t
