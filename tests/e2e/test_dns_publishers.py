"""dns-01 through the other publishers: a hook program (here one that edits the Knot zone with knotc,
as an admin's script would call a provider's API) and an acme-dns server (a stand-in speaking acme-dns's
API that writes into Knot), Pebble validating through Knot; failures name the identifier and method."""
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import harness
import knot_harness
import leakcheck
from test_dns import knot, dns_pebble, sans  # noqa: F401 (fixtures)

def base_args(acmectl_bin, tmp_path, pebble, knot):
    return [str(acmectl_bin), "--state", str(tmp_path / "state"), "--ca", pebble.directory_url,
            "--ca-cert", str(pebble.ca_cert), "--contact", "admin@example.org", "--agree-tos", "-v"]


def issue(acmectl_bin, tmp_path, pebble, knot, names, method, timeout=120):
    args = base_args(acmectl_bin, tmp_path, pebble, knot) + [
        "issue", "--challenge", "dns-01", "--dns-resolver", knot.address,
        "--dns-propagation-timeout", "20"] + method + names
    return harness.run_cmd(args, timeout=timeout)


def knotc_hook(tmp_path, knot, body_add="", exit_code=0):
    """A hook that adds/removes the TXT with knotc and records its arguments and ACME_* environment."""
    hook = tmp_path / "hook.sh"
    log = tmp_path / "hook.log"
    conf = knot.workdir / "knot.conf"
    hook.write_text(f"""#!/bin/sh
echo "$1 $2 $3" >> {log}
env | grep '^ACME_' | sort >> {log}
echo "hook says: $1 for $ACME_IDENTIFIER"
{body_add}
k() {{ {knot_harness.KNOTC_BIN} -c {conf} "$@" >/dev/null; }}
k zone-begin "$ACME_ZONE" || exit 1
if [ "$1" = add ]; then k zone-set "$ACME_ZONE" "$2" 60 TXT "\\"$3\\""
else k zone-unset "$ACME_ZONE" "$2" TXT "\\"$3\\""; fi
k zone-commit "$ACME_ZONE" || {{ k zone-abort "$ACME_ZONE"; exit 1; }}
exit {exit_code}
""")
    hook.chmod(0o755)
    return hook, log


def test_hook_publishes_and_removes(acmectl_bin, tmp_path, dns_pebble, knot):
    hook, log = knotc_hook(tmp_path, knot)
    p = issue(acmectl_bin, tmp_path, dns_pebble, knot, ["*.hook.example.test", "hook.example.test"],
              ["--dns-hook", str(hook)])
    assert p.returncode == 0, p.stdout + p.stderr
    san = sans(tmp_path / "state/certs/_wildcard.hook.example.test/fullchain.pem")
    assert "DNS:*.hook.example.test" in san and "DNS:hook.example.test" in san
    text = log.read_text()
    lines = text.splitlines()
    adds = [x for x in lines if x.startswith("add ")]
    dels = [x for x in lines if x.startswith("del ")]
    assert len(adds) == 2 and len(dels) == 2, text
    # PROGRAM add|del FQDN VALUE; the value is a dns-01 value (43 base64url characters)
    for x in adds + dels:
        verb, fqdn, value = x.split(" ")
        assert fqdn == "_acme-challenge.hook.example.test.", x
        assert len(value) == 43, x
    assert "ACME_IDENTIFIER=*.hook.example.test" in lines and "ACME_IDENTIFIER=hook.example.test" in lines
    assert "ACME_CHALLENGE_TYPE=dns-01" in lines
    assert "ACME_CERTIFICATE=_wildcard.hook.example.test" in lines
    assert "ACME_ZONE=example.test." in lines
    # what it printed is in the log, and the records are gone
    assert "hook add _acme-challenge.hook.example.test.: hook says: add for *.hook.example.test" in p.stderr, \
        p.stderr
    assert knot.txt("_acme-challenge.hook.example.test") == []


def test_hook_fails(acmectl_bin, tmp_path, dns_pebble, knot):
    hook, log = knotc_hook(tmp_path, knot, body_add='echo "provider says: quota exceeded" >&2; exit 3')
    p = issue(acmectl_bin, tmp_path, dns_pebble, knot, ["fail.example.test"], ["--dns-hook", str(hook)])
    assert p.returncode == 1, p.stdout + p.stderr
    assert (f"dns-01 (hook) for fail.example.test: hook add _acme-challenge.fail.example.test. ({hook}): "
            "exited with status 3: provider says: quota exceeded") in p.stderr, p.stderr
    # nothing was validated: no failed authorization at the CA beyond the abandoned order
    assert knot.txt("_acme-challenge.fail.example.test") == []


def test_hook_hangs_and_is_killed(acmectl_bin, tmp_path, dns_pebble, knot):
    pidfile = tmp_path / "sleep.pid"
    hook, log = knotc_hook(tmp_path, knot, body_add=f'if [ "$1" = add ]; then sleep 300 & echo $! > {pidfile}; '
                                                    'wait; fi')
    t0 = time.monotonic()
    p = issue(acmectl_bin, tmp_path, dns_pebble, knot, ["hang.example.test"],
              ["--dns-hook", str(hook), "--dns-hook-timeout", "2"])
    took = time.monotonic() - t0
    assert p.returncode == 1, p.stdout + p.stderr
    assert (f"dns-01 (hook) for hang.example.test: hook add _acme-challenge.hang.example.test. ({hook}): "
            "did not finish within 2 s: killed; it printed last: hook says: add for hang.example.test") \
        in p.stderr, p.stderr
    assert took < 30, took
    # its whole process group went, the sleep it started too
    pid = int(pidfile.read_text())
    harness.wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
                     open(f"/proc/{pid}/stat").read().split()[2] == "Z", 5, what="the hook's child gone")


def test_hook_checked_at_configuration(acmectl_bin, tmp_path, dns_pebble, knot):
    hook = tmp_path / "not-executable.sh"
    hook.write_text("#!/bin/sh\n")
    p = issue(acmectl_bin, tmp_path, dns_pebble, knot, ["x.example.test"], ["--dns-hook", str(hook)])
    assert p.returncode == 2
    assert f'--dns-hook {hook}: the DNS hook "{hook}" is not an executable file' in p.stderr, p.stderr


# ---- acme-dns ----

ACMEDNS_USER = "c36f50e8-4632-44f0-83fe-e070fef28a10"
ACMEDNS_KEY = leakcheck.ACMEDNS_KEY     # looked for in every output of the session


class AcmeDns:
    """acme-dns's /update: checks the account's user and key, keeps the subdomain's last two values in
    Knot (zone example.test, names <subdomain>.auth.example.test), as acme-dns does in its own zone."""

    def __init__(self, knot, subdomain):
        self.knot = knot
        self.subdomain = subdomain
        self.values = []
        self.requests = []
        self.fail = None
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append((self.path, dict(self.headers), body))
                if outer.fail:
                    return self.answer(outer.fail, {"error": "forbidden"})
                if self.path != "/update":
                    return self.answer(404, {"error": "not found"})
                if (self.headers.get("X-Api-User") != ACMEDNS_USER
                        or self.headers.get("X-Api-Key") != ACMEDNS_KEY):
                    return self.answer(401, {"error": "forbidden"})
                req = json.loads(body)
                if req.get("subdomain") != outer.subdomain or len(req.get("txt", "")) != 43:
                    return self.answer(400, {"error": "bad_subdomain"})
                owner = f"{outer.subdomain}.auth.example.test."
                k = outer.knot
                k.knotc("zone-begin", "example.test")
                if len(outer.values) == 2:
                    k.knotc("zone-unset", "example.test", owner, "TXT", f'"{outer.values.pop(0)}"')
                k.knotc("zone-set", "example.test", owner, "60", "TXT", f'"{req["txt"]}"')
                k.knotc("zone-commit", "example.test")
                outer.values.append(req["txt"])
                self.answer(200, {"txt": req["txt"]})

            def answer(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def acmedns(knot):
    a = AcmeDns(knot, "8e5700ea-a4bf-41c7-8a77-e990661dcc6a")
    yield a
    a.close()


def account_file(tmp_path, acmedns, domains=None, key=ACMEDNS_KEY):
    acct = {"username": ACMEDNS_USER, "password": key, "subdomain": acmedns.subdomain,
            "fulldomain": f"{acmedns.subdomain}.auth.example.test", "allowfrom": []}
    path = tmp_path / "acmedns.json"
    # certbot's acme-dns-auth and lego keep accounts by domain
    path.write_text(json.dumps({d: acct for d in domains} if domains else acct))
    path.chmod(0o600)
    return path


def cname(knot, name, target):
    knot.knotc("zone-begin", "example.test")
    knot.knotc("zone-set", "example.test", name, "60", "CNAME", target)
    knot.knotc("zone-commit", "example.test")


def test_acmedns_wildcard_and_apex(acmectl_bin, tmp_path, dns_pebble, knot, acmedns):
    cname(knot, "_acme-challenge.adns", f"{acmedns.subdomain}.auth.example.test.")
    f = account_file(tmp_path, acmedns, domains=["adns.example.test"])
    p = issue(acmectl_bin, tmp_path, dns_pebble, knot, ["*.adns.example.test", "adns.example.test"],
              ["--acme-dns", str(f), "--acme-dns-url", acmedns.url])
    assert p.returncode == 0, p.stdout + p.stderr
    san = sans(tmp_path / "state/certs/_wildcard.adns.example.test/fullchain.pem")
    assert "DNS:*.adns.example.test" in san and "DNS:adns.example.test" in san
    # both values went through /update, with the account's headers and JSON
    assert [r[0] for r in acmedns.requests] == ["/update", "/update"]
    assert all(json.loads(r[2])["subdomain"] == acmedns.subdomain for r in acmedns.requests)
    assert "answering dns-01 for *.adns.example.test (acme-dns)" in p.stderr, p.stderr
    assert ACMEDNS_KEY not in p.stdout + p.stderr


def test_acmedns_missing_cname(acmectl_bin, tmp_path, dns_pebble, knot, acmedns):
    f = account_file(tmp_path, acmedns)
    p = issue(acmectl_bin, tmp_path, dns_pebble, knot, ["nocname.example.test"],
              ["--acme-dns", str(f), "--acme-dns-url", acmedns.url])
    assert p.returncode == 1
    assert ("dns-01 (acme-dns) for nocname.example.test: _acme-challenge.nocname.example.test is not a CNAME "
            f"to the acme-dns account's {acmedns.subdomain}.auth.example.test") in p.stderr, p.stderr
    assert acmedns.requests == []


def test_acmedns_refused_key(acmectl_bin, tmp_path, dns_pebble, knot, acmedns):
    cname(knot, "_acme-challenge.adnsbad", f"{acmedns.subdomain}.auth.example.test.")
    f = account_file(tmp_path, acmedns, key="wrong-key-wrong-key-wrong-key-wrong-key1")
    p = issue(acmectl_bin, tmp_path, dns_pebble, knot, ["adnsbad.example.test"],
              ["--acme-dns", str(f), "--acme-dns-url", acmedns.url])
    assert p.returncode == 1
    assert (f"dns-01 (acme-dns) for adnsbad.example.test: acme-dns {acmedns.url}/update (user {ACMEDNS_USER}, "
            f"subdomain {acmedns.subdomain}): HTTP 401 (the server refused the account's user or key)") \
        in p.stderr, p.stderr
    assert "wrong-key" not in p.stdout + p.stderr


def test_acmedns_account_file_checked(acmectl_bin, tmp_path, dns_pebble, knot, acmedns):
    f = tmp_path / "acmedns.json"
    f.write_text(json.dumps({"example.test": {"username": "u", "password": "secret-pw-123"}}))
    p = issue(acmectl_bin, tmp_path, dns_pebble, knot, ["x.example.test"],
              ["--acme-dns", str(f), "--acme-dns-url", acmedns.url])
    assert p.returncode == 2
    assert (f'--acme-dns: acme-dns account file "{f}": the account for example.test has no "subdomain"') \
        in p.stderr, p.stderr
    assert "secret-pw-123" not in p.stderr
