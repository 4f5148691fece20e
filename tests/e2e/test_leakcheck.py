"""The session's secret check (leakcheck) finds a planted secret in every form it claims, and nothing in clean
text. No servers: the scanner on temp files."""

import base64

import pytest

import harness
import leakcheck

CLEAN = ("2026/12/02 15:00:00 [error] 42#42: acme: issuer \"le\": newAccount: urn:ietf:params:acme:error:"
         "externalAccountRequired (HTTP 403)\n"
         "2026/12/02 15:00:01 [info] 42#42: acme: redis store redis://:***@127.0.0.1:6379/0?prefix=x\n"
         "nonce pHl0b3JvYm90cy1hcmUtbm90LXNlY3JldHM and a kid 0123456789abcdef0123456789abcdef\n")


def _b64(b):
    return base64.b64encode(b).decode()


def _forms():
    eab_bytes = base64.urlsafe_b64decode(leakcheck.EAB_HMAC_KEY + "==")
    return [
        ("EAB_HMAC_KEY", f"[emerg] cannot open \"/etc/nginx/data:{leakcheck.EAB_HMAC_KEY}\""),
        ("EAB_HMAC_KEY", f"key {_b64(eab_bytes)}"),                          # base64 of the bytes
        ("EAB_HMAC_KEY", f"hex {eab_bytes.hex()}"),
        ("EAB_HMAC_KEY_OTHER", f"{leakcheck.EAB_HMAC_KEY_OTHER}"),
        ("REDIS_PASSWORD", f"cannot connect to redis://:{leakcheck.REDIS_PASSWORD}@127.0.0.1:1"),
        ("REDIS_PASSWORD", f"AUTH {_b64(leakcheck.REDIS_PASSWORD.encode())}"),
        ("STORAGE_KEY", f"key file content {leakcheck.STORAGE_KEY_HEX}"),
        ("STORAGE_KEY", f"key {_b64(leakcheck.STORAGE_KEY).rstrip('=')}"),
        ("STORAGE_KEY", "key " + base64.urlsafe_b64encode(leakcheck.STORAGE_KEY).decode()),
    ]


@pytest.mark.parametrize("name,line", _forms())
def test_planted_secret_is_found(tmp_path, name, line):
    log = tmp_path / "error.log"
    log.write_text(CLEAN + line + "\n" + CLEAN)
    hits = leakcheck.scan_file(leakcheck.Secrets(leakcheck.CONSTANT_SECRETS), log)
    assert hits, line
    where, n, what = hits[0]
    assert where == str(log) and n == 4 and what.startswith(name), hits
    # the report names the file and line, never the secret
    rep = leakcheck.report(hits)
    assert f"{log}:4:" in rep and line.split()[-1] not in rep


def test_clean_log_passes(tmp_path):
    log = tmp_path / "error.log"
    log.write_text(CLEAN * 3)
    assert leakcheck.scan_file(leakcheck.Secrets(leakcheck.CONSTANT_SECRETS), log) == []


def test_private_key_found_in_store_and_caught_in_log(tmp_path):
    """A PEM private key under a store directory is a secret: any of its body lines in a log is a hit, also
    inside a longer base64 run (the whole key on one line, as a JSON string would carry it)."""
    store = tmp_path / "state" / "certs" / "x.example.org"
    store.mkdir(parents=True)
    pem = harness.openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256").decode()
    (store / "privkey.pem").write_text(pem)
    keys = leakcheck.find_private_keys([tmp_path / "state"])
    assert keys and all(str(store / "privkey.pem") == p for p in keys.values())
    secrets = leakcheck.Secrets({}, keys)
    body = [ln for ln in pem.splitlines() if not ln.startswith("-----")]
    assert not leakcheck.scan_text(secrets, "log", CLEAN)
    assert leakcheck.scan_text(secrets, "log", CLEAN + body[0] + "\n")[0][1] == 4
    one_line = "".join(body)
    hits = leakcheck.scan_text(secrets, "status", '{"key": "' + one_line + '"}')
    assert hits and hits[0][2].startswith("private key")
    # lines that encode only public bytes (the EC point) are no secret: certificates carry them
    cert = harness.openssl("req", "-new", "-x509", "-key", store / "privkey.pem", "-subj", "/CN=x.example.org",
                           "-days", "1", "-outform", "DER")
    for shift in range(3):      # every byte alignment of the certificate's base64
        text = base64.b64encode(b"\0" * shift + cert).decode()
        assert not leakcheck.scan_text(secrets, "certificate", text), shift


def test_session_registry_scans_watched_files_and_records(tmp_path):
    """What the harness registers (watched logs, recorded answers) is what scan_session reads."""
    log = tmp_path / "planted.log"
    log.write_text(CLEAN + f"password {leakcheck.REDIS_PASSWORD}\n")
    saved_files, saved_texts = dict(leakcheck._files), list(leakcheck._texts)
    try:
        leakcheck.watch_file(log)
        leakcheck.record("GET http://127.0.0.1:1/acme", f'{{"error": "{leakcheck.EAB_HMAC_KEY}"}}')
        hits = leakcheck.scan_session(extra_roots=[tmp_path])
        assert (str(log), 4, "REDIS_PASSWORD (raw)") in hits
        assert ("GET http://127.0.0.1:1/acme", 1, "EAB_HMAC_KEY (raw)") in hits
    finally:
        leakcheck._files.clear()
        leakcheck._files.update(saved_files)
        leakcheck._texts[:] = saved_texts
