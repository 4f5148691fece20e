"""Boulder's order flow in front of Pebble (issue #14): what Let's Encrypt does and Pebble never shows.

BoulderProxy is fault_proxy.FaultProxy (faults, ARI, profiles, request records) plus these rules,
each off until a test turns it on (letsencrypt/boulder: ra/ra.go NewOrder, wfe2/wfe.go):

  reuse_orders = True      a newOrder from the same account for the same identifier set and
                           profile as an earlier order that was not finalized yet is answered with
                           that order (201, same Location, the order as first answered; Pebble is not
                           asked).  `reused` counts these answers.
  processing_for = S       for S seconds after a finalize, the order is "processing" (no
                           certificate URL) in every answer: a slow signer.
  validating_for = S       for S seconds after a challenge POST, validation is in progress: every
                           order that is "ready" reads "pending", every authorization that is
                           "valid" reads "pending" with its challenges "pending", and a challenge
                           POSTed again is refused with 409 ("already being validated";
                           Boulder's conflict is a malformed problem with status 409).  `conflicts`
                           counts the refusals.
  paused = URL             every newOrder is refused as from a paused account: 429 rateLimited, no
                           Retry-After, a detail naming every identifier and ending with URL.

Standard library only.
"""

import json
import re
import time

from fault_proxy import ACME_ERR, PATHS, FaultProxy, decode_jws_payload  # noqa: F401
from ari_proxy import b64u_decode


def _protected(body):
    try:
        return json.loads(b64u_decode(json.loads(body)["protected"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


def _problem(status, kind, detail):
    doc = {"type": ACME_ERR + kind, "detail": detail, "status": status}
    return status, [("Content-Type", "application/problem+json")], json.dumps(doc).encode()


class BoulderProxy(FaultProxy):
    def __init__(self, pebble, cert, key, port, log_path=None):
        super().__init__(pebble, cert, key, port, log_path=log_path)
        self.reuse_orders = False
        self.processing_for = 0.0
        self.validating_for = 0.0
        self.paused = None
        self.reused = 0
        self.conflicts = 0
        self._orders = {}           # (kid, identifiers, profile) -> [location, body, finalize path, finalized]
        self._finalized_at = {}     # order path -> time of its finalize
        self._validating = {}       # challenge path -> time of its first POST

    # -- helpers ------------------------------------------------------------------------
    def _with_nonce(self, status, headers, body):
        return status, list(headers) + [("Replay-Nonce", self.fresh_nonce()),
                                        ("Link", f'<{self.directory_url}>;rel="index"')], body

    def _validation_open(self):
        now = time.time()
        with self._lock:
            return any(now - t < self.validating_for for t in self._validating.values())

    @staticmethod
    def _path(url):
        m = re.match(r"^https?://[^/]+(/.*)$", url or "")
        return m.group(1) if m else url

    # -- the rules ----------------------------------------------------------------------
    def upstream(self, method, path, body=None, headers=None):
        if method != "POST" or not body:
            return super().upstream(method, path, body, headers)
        payload = decode_jws_payload(body)

        if re.search(PATHS["newOrder"], path):
            if self.paused:
                ids = [i.get("value") for i in (payload or {}).get("identifiers", [])]
                return self._with_nonce(*_problem(
                    429, "rateLimited",
                    "Your account is temporarily prevented from requesting certificates for "
                    f"{', '.join(ids)} and possibly others. Please visit: {self.paused}"))
            if self.reuse_orders and isinstance(payload, dict):
                key = (_protected(body).get("kid"),
                       tuple(sorted((i.get("type"), i.get("value")) for i in payload.get("identifiers", []))),
                       payload.get("profile"))
                with self._lock:
                    prev = self._orders.get(key)
                if prev is not None and not prev[3]:
                    with self._lock:
                        self.reused += 1
                    self._log(f"BOULDER reusing order {prev[0]}")
                    return self._with_nonce(201, [("Content-Type", "application/json"),
                                                  ("Location", prev[0])], prev[1])
                status, rh, data = super().upstream(method, path, body, headers)
                loc = next((v for k, v in rh if k.lower() == "location"), None)
                if status == 201 and loc:
                    fin = self._path(json.loads(data).get("finalize"))
                    with self._lock:
                        self._orders[key] = [loc, data, fin, False]
                return status, rh, data
            return super().upstream(method, path, body, headers)

        if re.search(PATHS["finalize"], path):
            with self._lock:
                for o in self._orders.values():
                    if o[2] == path:
                        o[3] = True
            status, rh, data = super().upstream(method, path, body, headers)
            if status == 200 and self.processing_for > 0:
                with self._lock:
                    self._finalized_at["/my-order/" + path.rsplit("/", 1)[-1]] = time.time()
                data = self._processing(path, data)
            return status, rh, data

        if re.search(PATHS["challenge"], path) and isinstance(payload, dict) and self.validating_for > 0:
            now = time.time()
            with self._lock:
                started = self._validating.get(path)
                if started is None:
                    self._validating[path] = now
            if started is not None and now - started < self.validating_for:
                with self._lock:
                    self.conflicts += 1
                return self._with_nonce(*_problem(409, "malformed",
                                                  f"Unable to update challenge :: authorization "
                                                  f"{path.rsplit('/', 1)[-1]} is already being validated"))
            return super().upstream(method, path, body, headers)

        status, rh, data = super().upstream(method, path, body, headers)
        if status == 200 and re.search(PATHS["order"], path):
            data = self._processing(path, data)
            if self.validating_for > 0 and self._validation_open():
                data = self._edit(data, lambda o: o.update(status="pending") if o.get("status") == "ready"
                                  else None)
        elif status == 200 and re.search(PATHS["authz"], path) and self._validation_open():
            def pend(a):
                if a.get("status") == "valid":
                    a["status"] = "pending"
                    for c in a.get("challenges", []):
                        c["status"] = "pending"
                        c.pop("validated", None)
            data = self._edit(data, pend)
        return status, rh, data

    def _processing(self, path, data):
        if self.processing_for <= 0:
            return data
        oid = path.rsplit("/", 1)[-1]
        with self._lock:
            t = self._finalized_at.get("/my-order/" + oid)
        if t is None or time.time() - t >= self.processing_for:
            return data

        def proc(o):
            if o.get("status") in ("valid", "processing", "ready"):
                o["status"] = "processing"
                o.pop("certificate", None)
        return self._edit(data, proc)

    @staticmethod
    def _edit(data, fn):
        try:
            o = json.loads(data)
        except ValueError:
            return data
        fn(o)
        return json.dumps(o, indent=2).encode()
