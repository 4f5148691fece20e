"""A test double in front of Pebble 2.4 adding what it lacks: ACME Renewal
Information (RFC 9773) and certificate profiles (draft-aaron-acme-profiles).

A current Pebble has both (test_pebble_current.py runs against it); this proxy
stays for what no Pebble does: any Retry-After, a directory without
renewalInfo or profiles, a chosen refusal of "replaces", counting requests,
and faults (fault_proxy.py, boulder_proxy.py build on it).

Standard library only.  AriProxy is a threaded HTTPS reverse proxy listening on
127.0.0.1:<port> with a certificate (127.0.0.1 / localhost) from the harness's
test CA, i.e. the same root that Pebble's own HTTPS chains to, so a client that
trusts `pebble.ca_cert` trusts the proxy too.

Every request is forwarded to Pebble with its method, path, body and headers,
including the proxy's own Host header.  Pebble builds the URLs it hands out
(directory, Location, links) from the Host it receives and checks the JWS
"url" against it, so the client only ever sees and signs proxy URLs and Pebble
agrees with them (test_proxy_directory_and_renewal_info in test_ari_profiles.py checks
this).

On top of that:

  GET  /dir                 adds "renewalInfo" and meta.profiles (profiles=None: none)
  GET  /renewal-info/<id>   {"suggestedWindow": {"start", "end"}} from `window`,
                            Retry-After: `retry_after`; the ids asked for are in
                            `ari_requests`; malformed or unknown ids get a 404 problem
  POST /order-plz           the JWS payload is decoded and recorded in `new_orders`
                            (replaces, profile); with reject_replaces set, an
                            order carrying "replaces" is answered by the proxy
                            with a problem document (and a fresh Replay-Nonce
                            from Pebble) and not forwarded
  every request             recorded in `requests` as Req(method, path, status,
                            problem type, JWS nonce of a POST); every Replay-Nonce
                            handed to the client is in `nonces_given`; its request
                            headers (names lowercased) in `headers_seen` as
                            (method, path, dict)

Pebble 2.4 ignores the unknown newOrder fields "profile" and "replaces"
(encoding/json drops unknown keys), so they can stay in the signed payload.
"""

import base64
import datetime
import http.client
import http.server
import json
import re
import ssl
import subprocess
import sys
import threading
from collections import namedtuple
from pathlib import Path

LOOPBACK = "127.0.0.1"

# request headers not forwarded (hop-by-hop, RFC 9110 7.6.1)
_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "proxy-authorization", "proxy-authenticate"}

ARI_ID_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")

Req = namedtuple("Req", "method path status problem nonce")


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_decode(s):
    if isinstance(s, str):
        s = s.encode()
    return base64.urlsafe_b64decode(s + b"=" * (-len(s) % 4))


def rfc3339(t):
    """datetime (aware or naive UTC) or epoch seconds -> "YYYY-MM-DDTHH:MM:SSZ"."""
    if isinstance(t, (int, float)):
        t = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    if t.tzinfo is not None:
        t = t.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return t.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def window_from_now(start_s, end_s):
    """A suggestedWindow {"start", "end"} relative to now (seconds; negative = past)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"start": rfc3339(now + datetime.timedelta(seconds=start_s)),
            "end": rfc3339(now + datetime.timedelta(seconds=end_s))}


# --------------------------------------------------------------------------
# RFC 9773 certificate identifier (minimal DER walk)
# --------------------------------------------------------------------------

def _der_tlv(buf, off):
    """(tag, content_start, content_end) of the DER element at `off`."""
    tag = buf[off]
    ln = buf[off + 1]
    off += 2
    if ln & 0x80:
        n = ln & 0x7F
        if n == 0 or n > 4:
            raise ValueError("unsupported DER length")
        ln = int.from_bytes(buf[off:off + n], "big")
        off += n
    if off + ln > len(buf):
        raise ValueError("truncated DER")
    return tag, off, off + ln


def _der_children(buf, start, end):
    out = []
    while start < end:
        tag, cs, ce = _der_tlv(buf, start)
        out.append((tag, cs, ce))
        start = ce
    return out


OID_AKI = bytes([0x55, 0x1D, 0x23])   # 2.5.29.35


def ari_id_from_parts(aki_keyid, serial_content):
    """base64url(AKI keyIdentifier) "." base64url(serial INTEGER content octets)."""
    return f"{b64u(aki_keyid)}.{b64u(serial_content)}"


def serial_content_octets(serial):
    """The DER INTEGER content octets of a (non-negative) serial number."""
    n = max(1, (serial.bit_length() + 8) // 8)   # +8: room for a sign bit
    return serial.to_bytes(n, "big")


def cert_der(cert):
    """PEM text / PEM file Path / DER bytes -> DER of the first certificate."""
    if isinstance(cert, Path):
        cert = cert.read_bytes()
    if isinstance(cert, str):
        cert = cert.encode()
    if cert.lstrip().startswith(b"-----BEGIN"):
        m = re.search(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", cert, re.S)
        if not m:
            raise ValueError("no certificate in PEM")
        return base64.b64decode(b"".join(m.group(1).split()))
    return cert


def cert_serial_and_aki(cert):
    """(serial content octets, AKI keyIdentifier bytes or None) parsed from DER."""
    der = cert_der(cert)
    _, cs, ce = _der_tlv(der, 0)                        # Certificate
    tag, ts, te = _der_tlv(der, cs)                     # TBSCertificate
    kids = _der_children(der, ts, te)
    i = 0
    if kids[0][0] == 0xA0:                              # [0] version
        i = 1
    tag, ss, se = kids[i]
    if tag != 0x02:
        raise ValueError("no serial INTEGER")
    serial = der[ss:se]
    aki = None
    for tag, es, ee in kids[i + 1:]:
        if tag != 0xA3:                                 # [3] extensions
            continue
        _, ls, le = _der_tlv(der, es)                   # SEQUENCE OF Extension
        for _, xs, xe in _der_children(der, ls, le):
            parts = _der_children(der, xs, xe)
            if parts[0][0] != 0x06 or der[parts[0][1]:parts[0][2]] != OID_AKI:
                continue
            _, vs, ve = parts[-1]                       # extnValue OCTET STRING
            _, as_, ae = _der_tlv(der, vs)              # AuthorityKeyIdentifier SEQUENCE
            for t, ks, ke in _der_children(der, as_, ae):
                if t == 0x80:                           # [0] IMPLICIT keyIdentifier
                    aki = der[ks:ke]
    return serial, aki


def ari_cert_id(cert):
    """The RFC 9773 certificate identifier of `cert` (PEM text/path or DER)."""
    serial, aki = cert_serial_and_aki(cert)
    if aki is None:
        raise ValueError("certificate has no Authority Key Identifier keyIdentifier")
    return ari_id_from_parts(aki, serial)


def ari_cert_id_openssl(pem_path):
    """The same identifier, computed with the openssl CLI (an independent check)."""
    out = subprocess.run(["openssl", "x509", "-in", str(pem_path), "-noout", "-serial",
                          "-ext", "authorityKeyIdentifier"],
                         capture_output=True, text=True, check=True).stdout
    serial = int(re.search(r"serial=([0-9A-Fa-f]+)", out).group(1), 16)
    # "keyid:AB:CD:..." (OpenSSL 1.1) or a bare "AB:CD:..." line (OpenSSL 3)
    m = re.search(r"Authority Key Identifier:.*?\n\s*(?:keyid:)?([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*)",
                  out, re.S)
    aki = bytes.fromhex(m.group(1).replace(":", ""))
    return ari_id_from_parts(aki, serial_content_octets(serial))


# --------------------------------------------------------------------------
# the proxy
# --------------------------------------------------------------------------

class AriProxy:
    """HTTPS reverse proxy to `pebble` (a harness.Pebble) adding ARI and profiles.

    Attributes to configure per test (thread-safe enough: set before the client runs):
      window          {"start": rfc3339, "end": rfc3339} served by renewalInfo
      retry_after     Retry-After of renewalInfo answers (seconds; None: no header)
      explanation_url explanationURL of renewalInfo answers (None: left out)
      profiles        dict name -> description for meta.profiles (None: not advertised)
      renewal_info    True: advertise "renewalInfo" in the directory
      reject_replaces None, or (status, problem type suffix) to refuse newOrder with "replaces"
      check_known     True: renewalInfo answers 404 for serials Pebble never issued
    Records: requests, ari_requests, new_orders (dicts: payload, protected, replaces, profile,
    rejected, and for rejected ones the "nonce" handed out), nonces_given.
    """

    def __init__(self, pebble, cert, key, port, log_path=None):
        self.pebble = pebble
        self.cert = Path(cert)
        self.key = Path(key)
        self.port = port
        self.log_path = Path(log_path) if log_path else None
        self.window = window_from_now(-3600, -60)       # default: renew now
        self.retry_after = 21600
        self.explanation_url = None     # explanationURL of renewalInfo answers (None: none)
        self.profiles = {"classic": "The profile you know and love",
                         "shortlived": "A short-lived certificate (6 days)"}
        self.renewal_info = True
        self.reject_replaces = None
        self.check_known = True
        self.requests = []
        self.ari_requests = []
        self.new_orders = []
        self.nonces_given = []
        self.headers_seen = []      # (method, path, {lowercased name: value})
        self.errors = []            # exceptions in the proxy itself
        self._lock = threading.Lock()
        self._server = None
        self._thread = None
        self._upstream_ctx = ssl.create_default_context(cafile=str(pebble.ca_cert))
        self._log_fh = None

    # -- addresses ------------------------------------------------------------------
    @property
    def base_url(self):
        return f"https://{LOOPBACK}:{self.port}"

    @property
    def directory_url(self):
        return f"{self.base_url}/dir"

    @property
    def renewal_info_url(self):
        return f"{self.base_url}/renewal-info"

    # -- records --------------------------------------------------------------------
    def reset(self):
        with self._lock:
            self.requests.clear()
            self.ari_requests.clear()
            self.new_orders.clear()
            self.nonces_given.clear()
            self.headers_seen.clear()

    def count(self, method=None, path=None, prefix=False):
        """Requests seen with this method and path (prefix=True: path prefix)."""
        with self._lock:
            reqs = list(self.requests)
        return sum(1 for r in reqs
                   if (method is None or r.method == method)
                   and (path is None or (r.path.startswith(path) if prefix else r.path == path)))

    def summary(self):
        """{"METHOD /path-without-ids": n} for all requests seen (for messages)."""
        out = {}
        with self._lock:
            reqs = list(self.requests)
        for r in reqs:
            p = re.sub(r"^(/[^/]+/).+$", r"\1*", r.path)
            k = f"{r.method} {p}"
            out[k] = out.get(k, 0) + 1
        return out

    def _record(self, method, path, status, problem=None, nonce=None, given=None):
        with self._lock:
            self.requests.append(Req(method, path, status, problem, nonce))
            if given:
                self.nonces_given.append(given)
        self._log(f"{method} {path} -> {status}{' ' + problem if problem else ''}")

    def _log(self, line):
        if self._log_fh:
            try:
                self._log_fh.write((line + "\n").encode())
            except (OSError, ValueError):
                pass

    # -- upstream -------------------------------------------------------------------
    def upstream(self, method, path, body=None, headers=None):
        """One request to Pebble; returns (status, [(k, v)], body)."""
        conn = http.client.HTTPSConnection(LOOPBACK, self.pebble.port, context=self._upstream_ctx,
                                           timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            return r.status, r.getheaders(), data
        finally:
            conn.close()

    def fresh_nonce(self):
        _, hdrs, _ = self.upstream("HEAD", "/nonce-plz", headers={"Host": self.host_header})
        for k, v in hdrs:
            if k.lower() == "replay-nonce":
                return v
        raise RuntimeError("Pebble gave no Replay-Nonce")

    @property
    def host_header(self):
        return f"{LOOPBACK}:{self.port}"

    def _known_serial(self, serial_bytes, cert_id):
        """True if Pebble issued a certificate with this serial and it has this ARI id."""
        serial = int.from_bytes(serial_bytes, "big", signed=True)
        if serial <= 0:
            return False
        try:
            st = self.pebble.cert_status(serial)
        except Exception as e:  # management API trouble: say so in the record
            self.errors.append(f"cert_status: {e}")
            return False
        if not st or not st.get("Certificate"):
            return False
        try:
            return ari_cert_id(st["Certificate"]) == cert_id
        except ValueError:
            return False

    # -- lifecycle ------------------------------------------------------------------
    def start(self):
        outer = self
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_fh = open(self.log_path, "ab", buffering=0)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"    # keep-alive: curl reuses connections

            def log_message(self, *a):
                pass

            def _send(self, status, headers, body, head=False):
                self.send_response(status)
                seen_len = False
                for k, v in headers:
                    kl = k.lower()
                    if kl in _HOP or kl in ("date", "server"):
                        continue
                    if kl == "content-length":
                        if not head:
                            continue
                        seen_len = True
                    self.send_header(k, v)
                if not head:
                    self.send_header("Content-Length", str(len(body)))
                elif not seen_len:
                    self.send_header("Content-Length", "0")
                self.end_headers()
                if not head and body:
                    self.wfile.write(body)

            def _problem(self, status, ptype, detail, extra_headers=()):
                body = json.dumps({"type": ptype, "detail": detail, "status": status}).encode()
                hdrs = [("Content-Type", "application/problem+json"),
                        ("Cache-Control", "no-store")] + list(extra_headers)
                self._send(status, hdrs, body)
                return body

            def _handle(self):
                method = self.command
                path = self.path
                with outer._lock:
                    outer.headers_seen.append((method, path,
                                               {k.lower(): v for k, v in self.headers.items()}))
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                self.jws_nonce = None
                if method == "POST" and body:
                    try:
                        prot = json.loads(b64u_decode(json.loads(body)["protected"]))
                        self.jws_nonce = prot.get("nonce")
                    except (ValueError, KeyError, TypeError, AttributeError):
                        pass
                try:
                    if method == "GET" and path.startswith("/renewal-info"):
                        return self._renewal_info(path)
                    if method == "POST" and path == "/order-plz":
                        if self._new_order(body):
                            return
                    self._forward(method, path, body)
                except Exception as e:  # keep serving; the test sees .errors
                    outer.errors.append(f"{method} {path}: {e!r}")
                    outer._log(f"ERROR {method} {path}: {e!r}")
                    try:
                        self._problem(500, "urn:ietf:params:acme:error:serverInternal",
                                      f"ari_proxy: {e!r}")
                    except OSError:
                        pass
                    outer._record(method, path, 500, "proxy-error", self.jws_nonce)

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _handle

            def _forward(self, method, path, body):
                hdrs = {k: v for k, v in self.headers.items()
                        if k.lower() not in _HOP and k.lower() != "host"}
                hdrs["Host"] = outer.host_header
                status, rh, data = outer.upstream(method, path, body, hdrs)
                problem = None
                ctype = next((v for k, v in rh if k.lower() == "content-type"), "")
                if status >= 400 and "problem+json" in ctype:
                    try:
                        problem = json.loads(data).get("type")
                    except ValueError:
                        problem = "?"
                if method == "GET" and path == "/dir" and status == 200:
                    d = json.loads(data)
                    if outer.renewal_info:
                        d["renewalInfo"] = outer.renewal_info_url
                    if outer.profiles is not None:
                        d.setdefault("meta", {})["profiles"] = dict(outer.profiles)
                    data = json.dumps(d, indent=2).encode()
                given = next((v for k, v in rh if k.lower() == "replay-nonce"), None)
                outer._record(method, path, status, problem, self.jws_nonce, given)
                self._send(status, rh, data, head=(method == "HEAD"))

            def _renewal_info(self, path):
                m = re.match(r"^/renewal-info/([^/?#]*)$", path)
                cert_id = m.group(1) if m else ""
                with outer._lock:
                    outer.ari_requests.append(cert_id)
                ok = bool(ARI_ID_RE.match(cert_id))
                if ok:
                    try:
                        serial = b64u_decode(cert_id.split(".")[1])
                        b64u_decode(cert_id.split(".")[0])
                    except ValueError:
                        ok = False
                if ok and outer.check_known:
                    ok = outer._known_serial(serial, cert_id)
                if not ok:
                    outer._record("GET", path, 404, "malformed")
                    self._problem(404, "urn:ietf:params:acme:error:malformed",
                                  f"no certificate with renewalInfo id {cert_id!r}")
                    return
                doc = {"suggestedWindow": dict(outer.window)}
                if outer.explanation_url is not None:
                    doc["explanationURL"] = outer.explanation_url
                body = json.dumps(doc).encode()
                hdrs = [("Content-Type", "application/json")]
                if outer.retry_after is not None:
                    hdrs.append(("Retry-After", str(outer.retry_after)))
                outer._record("GET", path, 200)
                self._send(200, hdrs, body)

            def _new_order(self, body):
                """Record the order; True if answered here (not forwarded)."""
                rec = {"payload": None, "replaces": None, "profile": None, "rejected": False}
                try:
                    jws = json.loads(body)
                    payload = json.loads(b64u_decode(jws["payload"])) if jws.get("payload") else {}
                    rec["payload"] = payload
                    rec["replaces"] = payload.get("replaces")
                    rec["profile"] = payload.get("profile")
                    rec["protected"] = json.loads(b64u_decode(jws["protected"]))
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    rec["error"] = repr(e)
                with outer._lock:
                    outer.new_orders.append(rec)
                if outer.reject_replaces and rec["replaces"] is not None:
                    status, kind = outer.reject_replaces
                    rec["rejected"] = True
                    ptype = f"urn:ietf:params:acme:error:{kind}"
                    nonce = rec["nonce"] = outer.fresh_nonce()
                    self._problem(status, ptype,
                                  f"this CA does not accept \"replaces\" ({rec['replaces']})",
                                  [("Replay-Nonce", nonce),
                                   ("Link", f'<{outer.directory_url}>;rel="index"')])
                    outer._record("POST", "/order-plz", status, ptype, self.jws_nonce, nonce)
                    return True
                return False

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert), str(self.key))

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def finish_request(self, request, client_address):
                # TLS handshake in the connection's own thread, not in accept()
                request.settimeout(30)
                try:
                    tls = ctx.wrap_socket(request, server_side=True)
                except (OSError, ssl.SSLError):
                    return
                try:
                    Handler(tls, client_address, self)
                finally:
                    try:
                        tls.close()
                    except OSError:
                        pass

            def handle_error(self, request, client_address):
                e = sys.exc_info()[1]
                # clients closing keep-alive connections are normal
                if not isinstance(e, (ConnectionError, ssl.SSLError, TimeoutError)):
                    outer.errors.append(f"server: {e!r}")

        srv = Server((LOOPBACK, self.port), Handler)
        self._server = srv
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="ari-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None
        if self._log_fh:
            self._log_fh.close()
            self._log_fh = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
