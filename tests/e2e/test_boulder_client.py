"""What Let's Encrypt's Boulder does and Pebble never shows (issue #14, items 2, 3, 4, 8, 9, 11),
through acmectl and fault_proxy.FaultProxy (Pebble plus ARI, profiles and faults).

Short-lived certificates (6-day `shortlived`, step-ca's 24 hours) come from CertForge: a leaf
signed by Pebble's own intermediate with free dates, handed out at the certificate download.
"""
import datetime
import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

import harness

from nginx_harness import NGINX_BIN, https_get, issuer_block, nginx_factory  # noqa: F401  (fixture)
from fault_proxy import (CertForge, edit_json, forge_leaf, problem, set_header, stuck_processing,
                         window_from_now)
# the fixtures of test_faults: a Pebble without random nonce rejections, a FaultProxy, acmectl
from test_faults import (Ctl, backoff_of, ctl, fault_pebble, pebble_f, proxy,  # noqa: F401
                         proxy_cert, wait_status)


def ts(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def issue_short(ctl, proxy, tmp_path, name, life, left):
    """Issue `name` with a forged leaf of `life` seconds of which `left` remain."""
    now = time.time()
    f = proxy.add_fault("certificate", method="POST",
                        transform=forge_leaf(CertForge(proxy.pebble, tmp_path / "forge"), dns=[name],
                                             not_before=now - (life - left), not_after=now + left))
    ctl.issue(name)
    assert f.hits == 1
    proxy.clear_faults()
    meta = ctl.meta(name)
    assert abs(ts(meta["not_after"]) - (now + left)) < 5, meta
    return meta


# --------------------------------------------------------------------------
# item 3: back-off and the time left
# --------------------------------------------------------------------------

def test_rate_limit_backoff_capped_by_time_left(ctl, proxy, tmp_path):
    """A 24-hour certificate with 3 hours left, rate limited with Retry-After 120: the next try
    comes within a tenth of the time left (18 min), not after the one-hour rate-limit floor."""
    name = "shortleft.example.org"
    meta = issue_short(ctl, proxy, tmp_path, name, 86400, 3 * 3600)
    proxy.add_fault("newOrder", respond=problem(429, "rateLimited", "too many new orders recently",
                                                retry_after=120))
    ctl.fails("renew", "--force", *ctl.http, name)
    left = ts(meta["not_after"]) - time.time()
    wait = backoff_of(ctl, name)
    assert 120 - 5 <= wait <= left / 10 + 5, f"next try in {wait:.0f}s with {left:.0f}s left"


def test_refusal_backoff_never_below_retry_after(ctl, proxy, tmp_path):
    """The cap never undercuts the CA: Retry-After 2400 with 3 hours left waits 2400 s."""
    name = "shortra.example.org"
    issue_short(ctl, proxy, tmp_path, name, 86400, 3 * 3600)
    proxy.add_fault("newOrder", respond=problem(429, "rateLimited", "slow down", retry_after=2400))
    ctl.fails("renew", "--force", *ctl.http, name)
    wait = backoff_of(ctl, name)
    assert 2400 - 5 <= wait <= 2400 + 5, f"next try in {wait:.0f}s"


# --------------------------------------------------------------------------
# item 11: an ARI window past notAfter
# --------------------------------------------------------------------------

def test_ari_window_past_not_after_renews_before_expiry(ctl, proxy, tmp_path):
    """A 6-day certificate with 2 days left and a suggested window from 3 to 4 days ahead:
    the renewal falls at least a tenth of the lifetime before notAfter, not at expiry."""
    name = "aripast.example.org"
    meta = issue_short(ctl, proxy, tmp_path, name, 6 * 86400, 2 * 86400)
    proxy.check_known = False       # the forged serial is not in Pebble's records
    proxy.window = window_from_now(3 * 86400, 4 * 86400)
    p = ctl.ok("renew", *ctl.http, name)
    m = re.search(r"not due until (\S+) \((\w+)\)", p.stdout)
    assert m and m.group(2) == "ari", p.stdout
    na = ts(meta["not_after"])
    nb = ts(meta["not_before"])
    assert time.time() - 5 <= ts(m.group(1)) <= na - (na - nb) / 10 + 1, (m.group(1), meta["not_after"])


# --------------------------------------------------------------------------
# item 11: HTTP details
# --------------------------------------------------------------------------

def _release_version():
    """The version at the top of debian/changelog: what the User-Agent must carry."""
    top = (Path(__file__).resolve().parents[2] / "debian" / "changelog").read_text().splitlines()[0]
    return re.match(r"\S+ \(([^)-]+)", top).group(1)


def test_user_agent_and_accept_language(ctl, proxy):
    """RFC 8555 6.1: the User-Agent names the software, its real version and the server kind
    (here acmectl) and the HTTP library; every request asks for English problem details."""
    ctl.issue("ua.example.org")
    seen = list(proxy.headers_seen)
    assert {m for m, _, _ in seen} >= {"GET", "HEAD", "POST"}, seen
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split()[1]
    want = f"acme-httpd/{_release_version()} (acmectl) libcurl/{curl}"
    for method, path, hdrs in seen:
        assert hdrs.get("user-agent") == want, (method, path, hdrs.get("user-agent"))
        assert hdrs.get("accept-language") == "en", (method, path, hdrs)


@pytest.mark.slow
def test_poll_honours_retry_after_beyond_60s(ctl, proxy):
    """The CA answers finalize with "processing" and Retry-After: 65; the client polls the order
    after 65 s (it used to cut every Retry-After to 60 s)."""
    name = "slowfinalize.example.org"
    ctl.issue(name)
    f = proxy.add_fault("finalize", method="POST",
                        transform=[edit_json(stuck_processing), set_header("Retry-After", "65")])
    proxy.reset()
    t0 = time.monotonic()
    ctl.ok("renew", "--force", *ctl.http, name, timeout=120)
    took = time.monotonic() - t0
    assert f.hits == 1
    assert proxy.count("POST", "/my-order/", prefix=True) >= 1
    assert 65 <= took < 90, f"renewal took {took:.1f}s"


def test_ari_check_while_ca_unreachable_retries_soon(acmectl_bin, pebble_f, proxy, tmp_path, procs):
    """An ARI check falls due while the directory cannot be fetched: the next check is within
    minutes, not a day later."""
    c = Ctl(acmectl_bin, tmp_path / "state", proxy)
    name = "arisoon.example.org"
    c.issue(name)
    meta_path = c.certdir(name) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["ari_next_check"] = "2020-01-01T00:00:00Z"          # due at once
    meta_path.write_text(json.dumps(meta))
    proxy.add_fault("directory", method="GET", times=None,
                    respond=problem(503, "serverInternal", "down for maintenance"))
    status = tmp_path / "status.json"
    p = procs.start(c.args("run", *c.http, "--status-file", status, name), name="acmectl-run")
    try:
        st = wait_status(status, lambda s: s.get("next_ari_check") not in (None, meta["ari_next_check"]),
                         20, "an ARI check", p)
        nxt = ts(st["next_ari_check"]) - time.time()
        assert 0 < nxt <= 15 * 60, f"next ARI check in {nxt:.0f}s: {st}"
        assert st["state"] == "valid", st
    finally:
        p.stop()


# --------------------------------------------------------------------------
# item 8: ARI explanationURL
# --------------------------------------------------------------------------

INCIDENT = "https://letsencrypt.example/incident/2026-12-02-revocation"


def test_ari_explanation_url_acmectl(ctl, proxy):
    """The CA moves the window (a mass revocation) and says why: acmectl prints the URL and
    its status shows it; a later answer without one clears it."""
    name = "explained.example.org"
    ctl.issue(name)
    proxy.check_known = True
    proxy.window = window_from_now(600, 2400)
    proxy.explanation_url = INCIDENT
    p = ctl.ok("renew", *ctl.http, name)
    assert re.search(rf"acmectl: {re.escape(name)}: the CA's renewal window is \S+ to \S+; "
                     rf"the CA explains: {re.escape(INCIDENT)}$", p.stderr, re.M), p.stderr
    st = ctl.status(name)
    assert st["ari_explanation_url"] == INCIDENT, st
    proxy.explanation_url = None
    ctl.ok("renew", *ctl.http, name)
    assert "ari_explanation_url" not in ctl.status(name)


def test_ari_explanation_url_manager(acmectl_bin, pebble_f, proxy, tmp_path, procs):
    """The same through the manager (what nginx and Apache run): logged at notice with the
    window, shown in the status document."""
    c = Ctl(acmectl_bin, tmp_path / "state", proxy)
    name = "explained-run.example.org"
    c.issue(name)
    meta_path = c.certdir(name) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["ari_next_check"] = "2020-01-01T00:00:00Z"          # due at once
    meta_path.write_text(json.dumps(meta))
    proxy.window = window_from_now(3600, 7200)
    proxy.explanation_url = INCIDENT
    status = tmp_path / "status.json"
    p = procs.start(c.args("run", *c.http, "--status-file", status, name), name="acmectl-run")
    try:
        st = wait_status(status, lambda s: "ari_explanation_url" in s, 20, "the explanation URL", p)
        assert st["ari_explanation_url"] == INCIDENT
        assert st["ari_window"] == proxy.window, st
        assert re.search(rf'acme: "{re.escape(name)}": ARI window updated: \S+ to \S+; '
                         rf"the CA explains: {re.escape(INCIDENT)}", p.log_text()), p.log_text()
    finally:
        p.stop()


# --------------------------------------------------------------------------
# item 2: a profile the CA drops or renames
# --------------------------------------------------------------------------

def test_stored_profile_dropped_by_ca_falls_back(ctl, proxy):
    """A certificate issued with "shortlived"; the CA renames it: the renewal (a new process,
    as after a restart) orders the CA's default profile with a warning instead of failing."""
    name = "renamed.example.org"
    ctl.ok("issue", *ctl.http, "--profile", "shortlived", name)
    assert ctl.meta(name)["profile"] == "shortlived"
    proxy.profiles = {"classic": "The profile you know and love", "shortlived-v2": "6 days"}
    proxy.reset()
    p = ctl.ok("renew", "--force", *ctl.http, name)
    assert "issued" in p.stdout
    assert re.search(r'does not offer the profile "shortlived" \(any more\); ordering '
                     rf'"{re.escape(name)}" with the CA\'s default profile', p.stderr), p.stderr
    (path, order), = [(pa, pl) for pa, pl in proxy.payloads if pa == "/order-plz"]
    assert "profile" not in order and order.get("replaces"), order


def test_invalid_profile_at_new_order_keeps_replaces(ctl, proxy):
    """newOrder answered invalidProfile (Boulder after dropping a profile the directory fetched
    earlier still listed): the order is placed again without the profile, still with "replaces";
    the profile is not what "replaces" is blamed for."""
    name = "invprofile.example.org"
    ctl.ok("issue", *ctl.http, "--profile", "shortlived", name)
    f = proxy.add_fault("newOrder", respond=problem(400, "invalidProfile",
                                                    'profile "shortlived" is not offered'))
    proxy.reset()
    p = ctl.ok("renew", "--force", *ctl.http, name)
    assert f.hits == 1 and "issued" in p.stdout
    assert re.search(r'the CA refused the profile "shortlived" .*invalidProfile.*ordering with the '
                     r"CA's default profile", p.stderr), p.stderr
    orders = [pl for pa, pl in proxy.payloads if pa == "/order-plz"]
    assert len(orders) == 1, orders           # the refused one was answered by the fault
    assert "profile" not in orders[0] and orders[0].get("replaces"), orders[0]


def test_long_running_refetches_directory_after_invalid_profile(acmectl_bin, pebble_f, proxy, tmp_path,
                                                                 procs):
    """`acmectl run --profile shortlived` (the manager, as in nginx and Apache) keeps its
    directory; the CA drops the profile and answers invalidProfile: the renewal goes on with the
    default profile and the directory is fetched again."""
    c = Ctl(acmectl_bin, tmp_path / "state", proxy)
    name = "longrun-profile.example.org"
    status = tmp_path / "status.json"
    p = procs.start(c.args("run", *c.http, "--profile", "shortlived", "--status-file", status, name),
                    name="acmectl-run")
    try:
        wait_status(status, lambda s: s["state"] == "valid", 30, "the certificate", p)
        first = c.meta(name)["not_before"]
        dir_gets = proxy.count("GET", "/dir")
        proxy.profiles = {"classic": "The profile you know and love"}
        f = proxy.add_fault("newOrder", respond=problem(400, "invalidProfile",
                                                        'profile "shortlived" is not offered'))
        n0 = len(proxy.payloads)
        time.sleep(1.1)                                       # a new not_before
        p.send_signal(signal.SIGUSR1)
        harness.wait_for(lambda: c.meta(name)["not_before"] != first, timeout=30, what="the renewal")
        assert f.hits == 1
        orders = [pl for pa, pl in proxy.payloads[n0:] if pa == "/order-plz"]
        assert len(orders) == 1 and "profile" not in orders[0], orders
        harness.wait_for(lambda: proxy.count("GET", "/dir") > dir_gets, timeout=10,
                         what="the directory fetched again")
        assert re.search(r'the CA refused the profile "shortlived"', p.log_text()), p.log_text()
    finally:
        p.stop()


# --------------------------------------------------------------------------
# item 4: IP certificates and per-certificate profiles
# --------------------------------------------------------------------------

def test_ip_certificate_orders_shortlived(ctl, proxy):
    """An IP address certificate with no profile configured, at a CA listing "shortlived"
    (Let's Encrypt issues IP certificates only under it): the order asks for it."""
    p = ctl.ok("issue", *ctl.http, "127.0.0.1")
    assert re.search(r'"127\.0\.0\.1" has an IP address and no profile is configured: ordering the CA\'s '
                     r'"shortlived" profile', p.stderr), p.stderr
    (order,) = [pl for pa, pl in proxy.payloads if pa == "/order-plz"]
    assert order["profile"] == "shortlived", order
    assert ctl.meta("127.0.0.1")["profile"] == "shortlived"
    # a DNS certificate at the same CA: no profile
    ctl.ok("issue", *ctl.http, "dnsonly.example.org")
    orders = [pl for pa, pl in proxy.payloads if pa == "/order-plz"]
    assert "profile" not in orders[-1], orders[-1]


def test_ip_certificate_rejected_identifier_hint(ctl, proxy):
    """The CA lists no "shortlived" and refuses the IP address: the error says what to do."""
    proxy.profiles = {"classic": "The profile you know and love"}
    proxy.add_fault("newOrder", respond=problem(400, "rejectedIdentifier",
                                                "IP address identifiers are not allowed for this profile"))
    p = ctl.fails("issue", *ctl.http, "127.0.0.1")
    assert re.search(r"rejectedIdentifier: IP address identifiers are not allowed for this profile \(a CA "
                     r'may issue IP address certificates only under a certain profile: Let\'s Encrypt\'s is '
                     r'"shortlived", see the "profile" setting\)', p.stderr), p.stderr


def test_nginx_profile_per_certificate(pebble_f, proxy, nginx_factory, tmp_path):
    """One issuer with `profile classic`; two certificates: one inherits it, the other sets
    `profile=shortlived` on its acme_certificate line."""
    https = harness.free_port()
    a, b = "classic.nginx.example.org", "short.nginx.example.org"
    conf = issuer_block("le", proxy.directory_url, tmp_path / "state",
                        extra=f"ssl_trusted_certificate {pebble_f.ca_cert};\n    profile classic;") + f"""
    server {{
        listen 127.0.0.1:{pebble_f.http_port};
        server_name {a} {b};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {a};
        acme_certificate le;
        location = /acme {{ acme_status; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {b};
        acme_certificate le profile=shortlived;
    }}
"""
    nginx_factory(conf, wait_port=https, allowed=[r"acme: "])

    def both_valid():
        st = https_get(https, a, "/acme").json()["certificates"]
        return st if len(st) == 2 and all(c["state"] == "valid" for c in st) else None
    harness.wait_for(both_valid, timeout=60, interval=0.3, what="both certificates")
    by_name = {pl["identifiers"][0]["value"]: pl for pa, pl in proxy.payloads if pa == "/order-plz"}
    assert by_name[a].get("profile") == "classic", by_name
    assert by_name[b].get("profile") == "shortlived", by_name
    # RFC 8555 6.1: the User-Agent names nginx and its version
    nginx_v = re.search(r"nginx/(\S+)", subprocess.run([NGINX_BIN, "-v"], capture_output=True,
                                                       text=True).stderr).group(1)
    agents = {h.get("user-agent") for _, _, h in proxy.headers_seen}
    assert len(agents) == 1 and re.fullmatch(
        rf"acme-httpd/{re.escape(_release_version())} \(nginx/{re.escape(nginx_v)}\) libcurl/\S+",
        agents.pop()), agents


# --------------------------------------------------------------------------
# item 9: account dead ends
# --------------------------------------------------------------------------

def test_rollover_answer_lost_keeps_new_key(ctl, proxy, tmp_path):
    """keyChange reaches the CA but its answer is lost: the client looks the account up with
    the new key, finds it, and keeps that key (it used to throw it away and be locked out)."""
    ctl.issue("roll-before.example.org")
    before = json.loads(ctl.ok("account", "show").stdout)
    f = proxy.add_fault(r"^/rollover-account-key$", method="POST", lose=True)
    p = ctl.ok("account", "rollover", "--key", "ecdsa:384")
    assert f.hits == 1
    assert "its answer was lost; the account was found with the new key" in p.stderr, p.stderr
    after = json.loads(ctl.ok("account", "show").stdout)
    assert after["url"] == before["url"] and after["key_type"] == "ecdsa:384", after
    assert after["thumbprint"] != before["thumbprint"]
    # the stored key is the one the CA has: orders work without registering again
    p = ctl.ok("issue", *ctl.http, "roll-after.example.org")
    assert "registering again" not in p.stderr
    assert not list((ctl.state / "accounts").glob("*/rollover.key"))


TOS = "https://letsencrypt.example/documents/LE-SA-v1.6-December-2026.pdf"


def _user_action_required():
    body = json.dumps({"type": "urn:ietf:params:acme:error:userActionRequired",
                       "detail": "Terms of service have changed", "status": 403, "instance": TOS})
    return (403, [("Content-Type", "application/problem+json"),
                  ("Link", f'<{TOS}>;rel="terms-of-service"')], body)


def test_user_action_required_agrees_again(ctl, proxy):
    """The terms changed (userActionRequired at newOrder) and --agree-tos is set: the account
    agrees again (termsOfServiceAgreed on the account URL) and the order goes through."""
    name = "newterms.example.org"
    ctl.issue(name)
    f = proxy.add_fault("newOrder", respond=_user_action_required())
    proxy.reset()
    p = ctl.ok("renew", "--force", *ctl.http, name)
    assert f.hits == 1 and "issued" in p.stdout
    assert f"asks for an action on account" in p.stderr and TOS in p.stderr, p.stderr
    assert "agreed to the terms of service of" in p.stderr, p.stderr
    agreed = [pl for pa, pl in proxy.payloads if pa.startswith("/my-account/")]
    assert len(agreed) == 1 and agreed[0]["termsOfServiceAgreed"] is True, proxy.payloads


def test_user_action_required_without_agreement_names_url(ctl, proxy):
    """Without --agree-tos: the failure names the instance URL and what to set; status shows it."""
    name = "newterms-no.example.org"
    ctl.issue(name)
    proxy.add_fault("newOrder", respond=_user_action_required())
    args = [a for a in ctl.args("renew", "--force", *ctl.http, name) if a != "--agree-tos"]
    p = harness.run_cmd(args, timeout=60)
    assert p.returncode not in (0, 2), p.stderr
    assert re.search(r"userActionRequired: Terms of service have changed \(the CA asks for an action at "
                     + re.escape(TOS) + r"; if these are new terms of service, read them and set "
                     r"accept_terms_of_service to agree\)", p.stderr), p.stderr
    assert TOS in ctl.status(name)["last_error"]
    assert not [pa for pa, pl in proxy.payloads if pa.startswith("/my-account/")]



def _deactivate_elsewhere(ctl, proxy, tmp_path, keyfile):
    """Deactivate the account of keyfile from another state directory (as another tool would)."""
    other = Ctl(ctl.binary, tmp_path / "elsewhere", proxy)
    args = other.args("account", "deactivate")
    p = harness.run_cmd(args[:1] + ["--account-key", str(keyfile)] + args[1:], timeout=60)
    assert p.returncode == 0, p.stderr


def test_deactivated_account_with_key_file(ctl, proxy, acmectl_bin, tmp_path):
    """The account of a configured key file was deactivated: every attempt used to fail the same
    way for ever with a bare "unauthorized". The error now says what to do; configuration-class."""
    ctl.issue("deact-first.example.org")
    (acct_dir,) = list((ctl.state / "accounts").iterdir())
    keyfile = tmp_path / "admin-account.key"
    keyfile.write_bytes((acct_dir / "account.key").read_bytes())
    keyfile.chmod(0o600)
    _deactivate_elsewhere(ctl, proxy, tmp_path, keyfile)
    c = Ctl(acmectl_bin, tmp_path / "other", proxy)
    args = c.args("issue", *c.http, "deact-second.example.org")
    p = harness.run_cmd(args[:1] + ["--account-key", str(keyfile)] + args[1:], timeout=60)
    assert p.returncode not in (0, 2), p.stderr
    assert re.search(r"unauthorized: .*deactivated: the account of the configured key file "
                     + re.escape(str(keyfile)) + r" is deactivated at the CA, and a deactivated account "
                     r"cannot be used again: configure a new key file", p.stderr), p.stderr


def test_deactivated_account_with_generated_key(ctl, proxy, tmp_path):
    """The account of a generated (stored) key was deactivated elsewhere: the next renewal
    registers a new account with a new key instead of failing for ever."""
    name = "deact-gen.example.org"
    ctl.issue(name)
    (acct_dir,) = list((ctl.state / "accounts").iterdir())
    keyfile = tmp_path / "copy-account.key"
    keyfile.write_bytes((acct_dir / "account.key").read_bytes())
    keyfile.chmod(0o600)
    before = json.loads((acct_dir / "account.json").read_text())["url"]
    _deactivate_elsewhere(ctl, proxy, tmp_path, keyfile)
    p = ctl.ok("renew", "--force", *ctl.http, name)
    assert "issued" in p.stdout
    assert re.search(r"account \S+ at \S+ is deactivated: registering a new account with a new key",
                     p.stderr), p.stderr
    after = json.loads((acct_dir / "account.json").read_text())["url"]
    assert after != before
    assert (acct_dir / "account.key").read_bytes() != keyfile.read_bytes()


def test_long_running_refetches_directory_after_404(acmectl_bin, pebble_f, proxy, tmp_path, procs):
    """A 404 on one of the directory's URLs (the CA moved its endpoints): the next request that
    needs the client ready fetches the directory again; other errors do not."""
    c = Ctl(acmectl_bin, tmp_path / "state", proxy)
    name = "moved.example.org"
    status = tmp_path / "status.json"
    p = procs.start(c.args("run", *c.http, "--status-file", status, name), name="acmectl-run")
    try:
        wait_status(status, lambda s: s["state"] == "valid", 30, "the certificate", p)
        time.sleep(1)                                   # the ARI check after issuance
        # twice: the order is tried again without "replaces" first
        f = proxy.add_fault("newOrder", times=2, respond=problem(404, "malformed", "no such endpoint"))
        dir_gets = proxy.count("GET", "/dir")
        p.send_signal(signal.SIGUSR1)
        wait_status(status, lambda s: s["failures"] >= 1, 20, "the failure", p)
        assert f.hits == 2
        assert proxy.count("GET", "/dir") == dir_gets       # not fetched yet: nothing asked for it
        p.send_signal(signal.SIGUSR1)                       # the next attempt
        harness.wait_for(lambda: proxy.count("GET", "/dir") > dir_gets, timeout=15,
                         what="the directory fetched again")
        wait_status(status, lambda s: s["failures"] == 0, 30, "the renewal", p)
    finally:
        p.stop()


def test_invalid_profile_at_finalize_then_fallback(acmectl_bin, pebble_f, proxy, tmp_path, procs):
    """The CA drops the profile while an order is open: finalize answers invalidProfile. The
    attempt fails as a configuration matter (the stored certificate stays); the directory is
    fetched again, and the next attempt orders the CA's default profile."""
    c = Ctl(acmectl_bin, tmp_path / "state", proxy)
    name = "finalize-profile.example.org"
    status = tmp_path / "status.json"
    p = procs.start(c.args("run", *c.http, "--profile", "shortlived", "--status-file", status, name),
                    name="acmectl-run")
    try:
        wait_status(status, lambda s: s["state"] == "valid", 30, "the certificate", p)
        time.sleep(1)
        first = c.meta(name)["not_before"]
        f = proxy.add_fault("finalize", method="POST", respond=problem(400, "invalidProfile",
                                                                       'profile "shortlived" is gone'))
        p.send_signal(signal.SIGUSR1)
        st = wait_status(status, lambda s: s["failures"] >= 1, 20, "the failure", p)
        assert f.hits == 1
        assert re.search(r"finalize: .*invalidProfile: profile \"shortlived\" is gone", st["last_error"]), st
        assert c.meta(name)["not_before"] == first
        proxy.profiles = {"classic": "The profile you know and love"}
        n0 = len(proxy.payloads)
        p.send_signal(signal.SIGUSR1)
        harness.wait_for(lambda: c.meta(name)["not_before"] != first, timeout=30, what="the renewal")
        orders = [pl for pa, pl in proxy.payloads[n0:] if pa == "/order-plz"]
        assert orders and "profile" not in orders[-1], orders
        assert re.search(r'does not offer the profile "shortlived" \(any more\)', p.log_text()), p.log_text()
    finally:
        p.stop()
