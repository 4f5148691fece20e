"""The suite's test secrets, and the check that none of them ever reaches a message.

Tests that need an EAB HMAC key, a Redis password or a storage key use the constants below, so that the
session-finishing check (conftest.py: no_secret_in_messages) can look for them in everything our software
wrote: every watched server error log, the output of our programs (acmectl, nginx, apache2) run through the
harness, every status file and every HTTP answer the harness fetched. Private keys are found at the end: every
PEM private key file under the session's directories (stores, state paths, key files the tests wrote).

Forms looked for: the raw value, its base64 and base64url encodings (and, for a key given as base64url or raw
bytes, the other encodings and hex of the bytes); for PEM keys each base64 body line. A hit names the file (or
source) and line, never the secret.
"""

import base64
import concurrent.futures
import os
import re
import subprocess
from pathlib import Path

# --------------------------------------------------------------------------
# the secrets (test values: never used outside this suite)
# --------------------------------------------------------------------------

EAB_HMAC_KEY = "iTzDIqeEG0-pAxUelI4mKdhXMjCkeupjyHx2G9-UUe0L4fDTSpuRUV7wnCTx_bmy"       # base64url
EAB_HMAC_KEY_OTHER = "anZBIx4bCiU_RKOcqWCeCGzR6SLTF4sJ1ePX_Kn5cCKpzeR52qQBupK30QVI0LpX"
REDIS_PASSWORD = "TxpLQdFl448VKd3wdxKoBwyD"
STORAGE_KEY = bytes.fromhex("877d939519540742d7c005ae8959dddb2e8a79b38ccaab2ccb5389e55f500b66")
STORAGE_KEY_HEX = STORAGE_KEY.hex()
STORAGE_KEY_OTHER = bytes.fromhex("3e85e3263b68495286f11c44b8c710f35789c0e06d8b97d9116db5aeeb9702a7")
# TSIG keys of the test DNS server (knot_harness.py), used base64 in key files
TSIG_KEY_SHA256 = bytes.fromhex("5e5d26887d4a7cd66559bbd56d759581512cb307cdb7baac826924d3a95a13f6")
TSIG_KEY_SHA384 = bytes.fromhex("15ff50e331ed4207b19d042291ef69e0f5dd74078fc15de4aa89fd874a9f8907")
TSIG_KEY_SHA512 = bytes.fromhex("30a5e6567ba9a630fc141df6529827e2bb6226ec58e12ce7df93238d4d8c6787")
TSIG_KEY_READONLY = bytes.fromhex("6e2fc176f77b3c26eb7cc74123ff082c7b408fdb04842f65420ad0a8c3ab08ca")
# the acme-dns account key of test_dns_publishers.py's stand-in
ACMEDNS_KEY = "htB9mR9DYgcu9bX_afHF62erXaH2TS7bg9KW3F7Z"

_MIN_NEEDLE = 16        # shorter strings would match by chance
_PEM_LINE = 64


def _b64(b):
    return base64.b64encode(b).decode().rstrip("=")


def _b64url(b):
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def needles_for(name, value):
    """{needle: description} for one secret: str (a password; base64url is decoded too) or bytes."""
    forms = []
    if isinstance(value, str):
        raw = value.encode()
        forms += [(value, "raw"), (_b64(raw), "base64"), (_b64url(raw), "base64url")]
        if re.fullmatch(r"[A-Za-z0-9_-]+", value) and len(value) % 4 != 1:
            value = _b64url_decode(value)
    if isinstance(value, bytes):
        forms += [(_b64(value), "base64 of the bytes"), (_b64url(value), "base64url of the bytes"),
                  (value.hex(), "hex"), (value.hex().upper(), "hex")]
    out = {}
    for needle, form in forms:
        if len(needle) >= _MIN_NEEDLE:
            out.setdefault(needle, f"{name} ({form})")
    return out


CONSTANT_SECRETS = {
    "EAB_HMAC_KEY": EAB_HMAC_KEY,
    "EAB_HMAC_KEY_OTHER": EAB_HMAC_KEY_OTHER,
    "REDIS_PASSWORD": REDIS_PASSWORD,
    "STORAGE_KEY": STORAGE_KEY,
    "STORAGE_KEY_OTHER": STORAGE_KEY_OTHER,
    "TSIG_KEY_SHA256": TSIG_KEY_SHA256,
    "TSIG_KEY_SHA384": TSIG_KEY_SHA384,
    "TSIG_KEY_SHA512": TSIG_KEY_SHA512,
    "TSIG_KEY_READONLY": TSIG_KEY_READONLY,
    "ACMEDNS_KEY": ACMEDNS_KEY,
}


# --------------------------------------------------------------------------
# what the session produced (filled in by the harness)
# --------------------------------------------------------------------------

_files = {}         # path -> label
_texts = []         # (label, text)
_roots = set()      # directories searched for PEM private keys at the end
_recorded = 0
_MAX_RECORDED = 64 * 1024 * 1024
_enabled = False    # set by the test session (conftest.py); other users of the harness (bench, demo) keep nothing


def enable(on=True):
    global _enabled
    _enabled = on


def watch_file(path, label=None):
    """A file our software writes (a log, a status file), scanned at the end of the session."""
    if not _enabled:
        return
    p = str(path)
    _files.setdefault(p, label or p)


def record(label, text):
    """Something our software answered or printed (status documents, command output)."""
    global _recorded
    if text is None or not _enabled:
        return
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    if not text or _recorded + len(text) > _MAX_RECORDED:
        return
    _recorded += len(text)
    _texts.append((label, text))


_found_keys = {}    # PEM body line -> path, from directories removed before the end


def key_root(path):
    """A directory whose PEM private keys count as secrets (beyond the session's temp directory)."""
    if _enabled:
        _roots.add(str(path))


def preserve_dir(path):
    """Before a directory is removed: keep the registered files under it as texts, and its private keys."""
    if not _enabled:
        return
    root = str(path).rstrip("/") + "/"
    for p in [p for p in _files if p.startswith(root)]:
        label = _files.pop(p)
        try:
            with open(p, "rb") as f:
                record(label, f.read())
        except OSError:
            pass
    for line, where in find_private_keys([str(path)]).items():
        _found_keys.setdefault(line, where)
    _roots.discard(str(path))


_PEM_RE = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----\s*(.*?)-----END [A-Z0-9 ]*PRIVATE KEY-----", re.S)


def _public_der(pem_block):
    """The SubjectPublicKeyInfo DER of a PEM private key (b"" when openssl cannot read it)."""
    try:
        p = subprocess.run([os.environ.get("OPENSSL_BIN", "openssl"), "pkey", "-pubout", "-outform", "DER",
                            "-passin", "pass:"], input=pem_block.encode(), stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return b""
    return p.stdout if p.returncode == 0 else b""


def pem_key_lines(text):
    """The base64 body lines of every PEM private key in text that carry private bytes: lines that only
    encode public key bytes (an EC point, an RSA modulus) also appear in certificates and are left out, as
    are short final lines."""
    out = set()
    for m in _PEM_RE.finditer(text):
        lines = [ln.strip() for ln in m.group(2).splitlines() if ln.strip() and ":" not in ln]
        try:
            der = base64.b64decode("".join(lines))
        except ValueError:
            der = None
        pub = _public_der(m.group(0)) if der else b""
        off = 0
        for line in lines:
            n = len(line) * 3 // 4
            chunk = der[off:off + n] if der else b""
            off += n
            if len(line) < _MIN_NEEDLE or (pub and chunk and chunk in pub):
                continue
            out.add(line)
    return out


def find_private_keys(roots, max_size=64 * 1024):
    """{body line: path} of every PEM private key file under roots."""
    found = []
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for fn in files:
                p = os.path.join(dirpath, fn)
                try:
                    if os.path.islink(p) or os.path.getsize(p) > max_size:
                        continue
                    with open(p, "rb") as f:
                        head = f.read(max_size)
                except OSError:
                    continue
                if b"PRIVATE KEY-----" not in head:
                    continue
                found.append((p, head.decode("ascii", "replace")))
    # one openssl run per key (_public_der): several at once, the results taken in walk order
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        per_file = list(pool.map(lambda f: pem_key_lines(f[1]), found))
    lines = {}
    for (p, _), keys in zip(found, per_file):
        for line in keys:
            lines.setdefault(line, p)
    return lines


# --------------------------------------------------------------------------
# the scan
# --------------------------------------------------------------------------

class Secrets:
    """Needles to look for: {needle: description}; 64-character PEM lines are matched through a set."""

    def __init__(self, named=None, pem_lines=None):
        self.needles = {}
        self.pem = {}
        for name, value in (named or {}).items():
            self.needles.update(needles_for(name, value))
        for line, where in (pem_lines or {}).items():
            if len(line) == _PEM_LINE:
                self.pem[line] = f"private key {where} (PEM body line)"
            else:
                self.needles[line] = f"private key {where} (PEM body line)"

    def add_pem(self, text, label):
        for line in pem_key_lines(text):
            self.pem[line] = f"{label} (PEM body line)"

    _RUN = re.compile(r"[A-Za-z0-9+/]{%d,}" % _PEM_LINE)

    def hits_in_line(self, line):
        out = [desc for n, desc in self.needles.items() if n in line]
        if self.pem:
            for m in self._RUN.finditer(line):
                run = m.group(0)
                for i in range(len(run) - _PEM_LINE + 1):
                    d = self.pem.get(run[i:i + _PEM_LINE])
                    if d is not None:
                        out.append(d)
                        break
        return out


HARNESS_LINE = "=== harness: "       # the harness's own header in a process log (the command line)


def scan_text(secrets, label, text):
    """[(label, line number, description)] for every line of text holding a secret."""
    hits = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith(HARNESS_LINE):
            continue
        for d in secrets.hits_in_line(line):
            hits.append((label, i, d))
    return hits


def scan_file(secrets, path, label=None):
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return scan_text(secrets, label or str(path), text)


def session_secrets(extra_roots=()):
    keys = dict(_found_keys)
    keys.update(find_private_keys(sorted(_roots | {str(r) for r in extra_roots})))
    return Secrets(CONSTANT_SECRETS, keys)


def scan_session(extra_roots=()):
    """Every registered file and recorded text against the constants and the private keys found."""
    secrets = session_secrets(extra_roots)
    hits = []
    for path, label in sorted(_files.items()):
        hits += scan_file(secrets, path, label if label != path else None)
    for label, text in _texts:
        hits += scan_text(secrets, label, text)
    return hits


def mask(text):
    """text with every form of the constant secrets replaced by ***."""
    for name, value in CONSTANT_SECRETS.items():
        for needle in needles_for(name, value):
            text = text.replace(needle, "***")
    return text


def report(hits, limit=50):
    lines = [f"{mask(where)}:{n}: {what}" for where, n, what in hits[:limit]]
    if len(hits) > limit:
        lines.append(f"... and {len(hits) - limit} more")
    return "secrets found in messages (the secret itself is not shown):\n" + "\n".join(lines)


def is_ours(argv0):
    """Our programs (whose output and logs are scanned): acmectl, nginx, apache2/httpd."""
    name = Path(str(argv0)).name
    return any(k in name for k in ("acmectl", "nginx", "apache", "httpd"))
