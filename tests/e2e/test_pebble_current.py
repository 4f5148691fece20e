"""ARI (RFC 9773), profiles and External Account Binding against a current Pebble, for acmectl, nginx and
Apache: the real CA's answers, no proxy in between.

Debian's Pebble 2.4 (the default of every other test) has no renewalInfo and no profiles, so these tests
need the current one that ../shared/pebble/build.sh builds (conftest.py: pebble_next_factory); they are
skipped, saying so, on a machine without ../shared. What this Pebble does here:

- ARI: renewalInfo answers a window at 2/3 of the lifetime with Retry-After: 21600; its management API
  (`set-renewal-info`) replaces the window of one certificate. A newOrder's "replaces" is checked (same
  account, the certificate known and not yet replaced: else an error) and logged ("ARI: order ... is a
  replacement of ..."), which is what these tests read to know the CA accepted it.
- Profiles: its "profiles" config sets each profile's validity, so the issued certificate's lifetime says
  which profile the order carried. An order without a profile gets a random one, hence the "decoy" profile
  and several certificates with distinct profiles: a client that drops the field passes by chance with
  probability 1/4 per certificate (at most 1/64 for a test).
- EAB: externalAccountBindingRequired with MAC keys: an account without a binding or with a wrong MAC is
  refused.

ari_proxy.py stays for what even this Pebble cannot do: any Retry-After (it always sends 6 hours), a
refused "replaces" with a chosen status and problem type, counting each request, a directory without
renewalInfo or profiles (test_ari_profiles.py, test_boulder.py, test_ari_recheck.py).
"""

import datetime
import json
import re
import shutil
import subprocess
import time

import pytest

import harness
import leakcheck
from apache_harness import apache_factory, cert_serial as apache_serial, stored_serial, tls_get  # noqa: F401
from ari_proxy import ari_cert_id, ari_cert_id_openssl, rfc3339, window_from_now
from harness import free_port, wait_for
from nginx_harness import https_get, issuer_block, managed_servers, nginx_factory, tls_cert, tls_verified  # noqa: F401

RENEWAL_INFO = "/draft-ietf-acme-ari-03/renewalInfo/"     # this Pebble's path (its directory says so)
DAY = 86400
# the error lines of a certificate ({} its name) refused without a key (by the client: the directory says
# externalAccountRequired) and with a wrong MAC (by the CA)
EAB_MISSING = r'"{}": the CA \S+ requires External Account Binding: configure a key id and HMAC key'
EAB_WRONG = r'"{}": account registration at \S+: POST \S+: unauthorized: external account binding JWS verification'
# validity in seconds: distinct, so that a certificate's lifetime names its profile
PROFILES = {"classic": 90 * DAY, "tlsserver": 45 * DAY, "shortlived": 6 * DAY, "decoy": 30 * DAY}


def ts(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


def past_window():
    """A window that closed ten minutes ago: renew now."""
    return window_from_now(-7200, -600)


def lifetime(pem_or_der):
    """notAfter - notBefore + 1 s of a certificate: Pebble's validityPeriod of the order's profile."""
    args = ["openssl", "x509", "-noout", "-startdate", "-enddate", "-dateopt", "iso_8601"]
    if isinstance(pem_or_der, bytes):
        out = subprocess.run(args + ["-inform", "DER"], input=pem_or_der, capture_output=True,
                             check=True).stdout.decode()
    else:
        out = subprocess.run(args + ["-in", str(pem_or_der)], capture_output=True, text=True,
                             check=True).stdout
    d = dict(line.split("=", 1) for line in out.splitlines())
    f = "%Y-%m-%d %H:%M:%SZ"
    nb = datetime.datetime.strptime(d["notBefore"], f)
    na = datetime.datetime.strptime(d["notAfter"], f)
    return int((na - nb).total_seconds()) + 1


def profile_of(pem_or_der):
    n = lifetime(pem_or_der)
    return next((p for p, v in PROFILES.items() if v == n), f"(none: {n} s)")


def age_ari_check(state, name):
    """Pebble sends Retry-After: 21600 with every renewalInfo, so the next ARI check is about 6 hours away.
    Move it into the past in the stored state (the server is stopped), as if those hours had passed."""
    p = state / "certs" / name / "meta.json"
    m = json.loads(p.read_text())
    assert m.get("ari_next_check"), m      # the first check after issuance was made
    m["ari_next_check"] = rfc3339(time.time() - 60)
    p.write_text(json.dumps(m))


@pytest.fixture
def pebble_ari(pebble_next_factory):
    """One 90-day profile (Pebble's default): certificates' lifetimes and ARI windows do not vary.
    No random badNonce: request counts stay exact."""
    return pebble_next_factory(env={"PEBBLE_WFE_NONCEREJECT": "0"})


@pytest.fixture
def pebble_profiles(pebble_next_factory):
    return pebble_next_factory(profiles=PROFILES, env={"PEBBLE_WFE_NONCEREJECT": "0"})


# --------------------------------------------------------------------------
# acmectl
# --------------------------------------------------------------------------

class Ctl:
    def __init__(self, binary, state, pebble, extra=()):
        self.binary, self.state, self.pebble, self.extra = binary, state, pebble, list(extra)

    def run(self, *cmd):
        return harness.run_cmd([str(self.binary), "--state", str(self.state), "--ca", self.pebble.directory_url,
                                "--ca-cert", str(self.pebble.ca_cert), "--contact", "admin@example.org",
                                "--agree-tos", *self.extra, cmd[0],
                                "--http-listen", f"127.0.0.1:{self.pebble.http_port}", *cmd[1:]], timeout=120)

    def ok(self, *cmd):
        p = self.run(*cmd)
        assert p.returncode == 0, f"acmectl {' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}"
        return p

    def fullchain(self, name):
        return self.state / "certs" / name / "fullchain.pem"

    def meta(self, name):
        return json.loads((self.state / "certs" / name / "meta.json").read_text())

    def status(self, name):
        p = harness.run_cmd([str(self.binary), "--state", str(self.state), "status", "--json"], timeout=30)
        assert p.returncode == 0, p.stderr
        return next(c for c in json.loads(p.stdout)["certificates"] if c["name"] == name)


def test_acmectl_ari_window_future_then_past(acmectl_bin, tmp_path, pebble_ari):
    pb = pebble_ari
    ctl = Ctl(acmectl_bin, tmp_path / "state", pb)
    name = "ari.ctl.example.org"
    ctl.ok("issue", name)
    fullchain = ctl.fullchain(name)
    old = fullchain.read_text()
    # RFC 9773 id, computed twice (DER walk in Python, the openssl CLI), is the one stored
    old_id = ari_cert_id(fullchain)
    assert old_id == ari_cert_id_openssl(fullchain) == ctl.meta(name)["ari_cert_id"]

    # A window that opens in 10 minutes and closes in 40. Pebble's Retry-After (6 h, +-20% jitter) puts the
    # next ARI check after the window's end, so the renewal point inside the window is the next event.
    window = window_from_now(600, 2400)
    pb.set_renewal_info(old, window)
    mark = pb.mark()
    p = ctl.ok("renew", name)
    assert pb.request_count(RENEWAL_INFO, method="GET", since=mark) == 1
    m = re.search(r"not due until (\S+) \((\w+)\)", p.stdout)
    assert m and m.group(2) == "ari", p.stdout
    assert ts(window["start"]) <= ts(m.group(1)) <= ts(window["end"])
    assert pb.request_count("/order-plz", since=mark) == 0 and fullchain.read_text() == old
    st = ctl.status(name)
    assert st["renewal_reason"] == "ari" and st["next_renewal"] == m.group(1), st
    assert st["ari_window"] == window, st
    meta = ctl.meta(name)
    assert (meta["ari_start"], meta["ari_end"]) == (window["start"], window["end"])
    now = datetime.datetime.now(datetime.timezone.utc)
    assert now + datetime.timedelta(seconds=0.8 * 21600 - 120) <= ts(meta["ari_next_check"]) \
        <= now + datetime.timedelta(seconds=1.2 * 21600 + 5), meta

    # the CA now says: renew now
    pb.set_renewal_info(old, past_window())
    mark = pb.mark()
    p = ctl.ok("renew", name)
    assert "issued" in p.stdout, p.stdout
    assert pb.issued_count(since=mark) == 1 and fullchain.read_text() != old
    # the real CA accepted "replaces" (same account, the old certificate) at the first try
    assert len(pb.replacements(since=mark)) == 1, pb.log_text(mark)[-3000:]
    assert 'refused "replaces"' not in p.stderr, p.stderr
    assert pb.request_count("/order-plz", since=mark) == 1
    new_id = ari_cert_id(fullchain)
    assert new_id != old_id and ctl.meta(name)["ari_cert_id"] == new_id
    # the old certificate's window is not carried over: the new one has Pebble's own (2/3 of its lifetime)
    assert ctl.status(name).get("ari_window") != window


def test_acmectl_replaces_of_a_replaced_certificate(acmectl_bin, tmp_path, pebble_ari):
    """The same certificate replaced twice (a state directory restored from a backup): the real CA refuses
    the second "replaces" (alreadyReplaced, 409) and acmectl orders again without it."""
    pb = pebble_ari
    ctl = Ctl(acmectl_bin, tmp_path / "state", pb)
    name = "replaced.ctl.example.org"
    ctl.ok("issue", name)
    shutil.copytree(ctl.state, tmp_path / "backup")
    ctl.ok("renew", "--force", name)
    assert len(pb.replacements()) == 1
    shutil.rmtree(ctl.state)
    shutil.copytree(tmp_path / "backup", ctl.state)
    mark = pb.mark()
    p = ctl.ok("renew", "--force", name)
    assert re.search(r'refused "replaces".*alreadyReplaced', p.stderr), p.stderr
    assert pb.request_count("/order-plz", since=mark) == 2 and pb.issued_count(since=mark) == 1
    assert pb.replacements(since=mark) == []


def test_acmectl_profile_in_certificate(acmectl_bin, tmp_path, pebble_profiles):
    ctl = Ctl(acmectl_bin, tmp_path / "state", pebble_profiles)
    for prof in ("shortlived", "tlsserver", "classic"):
        name = f"{prof}.ctl.example.org"
        ctl.ok("issue", "--profile", prof, name)
        assert profile_of(ctl.fullchain(name)) == prof
        assert ctl.meta(name)["profile"] == prof
    # a renewal orders the stored profile again
    ctl.ok("renew", "--force", "shortlived.ctl.example.org")
    assert pebble_profiles.issued_count() == 4
    assert profile_of(ctl.fullchain("shortlived.ctl.example.org")) == "shortlived"


def test_acmectl_profile_unknown_refused_before_ordering(acmectl_bin, tmp_path, pebble_profiles):
    ctl = Ctl(acmectl_bin, tmp_path / "state", pebble_profiles)
    name = "nosuch.ctl.example.org"
    p = ctl.run("issue", "--profile", "nosuch", name)
    assert p.returncode != 0
    assert '"nosuch"' in p.stderr and "profile" in p.stderr, p.stderr
    assert pebble_profiles.request_count("/order-plz") == 0
    assert not ctl.fullchain(name).exists()


def test_acmectl_eab_required(acmectl_bin, tmp_path, pebble_next_factory):
    key = leakcheck.EAB_HMAC_KEY
    pb = pebble_next_factory(eab_keys={"kid-1": key}, eab_required=True)
    wrong = ("B" if key[0] != "B" else "C") + key[1:]
    # without a key: refused before asking (the directory says externalAccountRequired); a wrong MAC: by the CA
    for i, (extra, msg) in enumerate((([], "requires External Account Binding"),
                                      (["--eab-kid", "kid-1", "--eab-hmac-key", f"data:{wrong}"],
                                       "unauthorized: external account binding"))):
        ctl = Ctl(acmectl_bin, tmp_path / f"refused{i}", pb, extra)
        p = ctl.run("issue", "eab.ctl.example.org")
        assert p.returncode != 0 and msg in p.stderr, p.stderr
        assert key not in p.stdout + p.stderr and wrong not in p.stdout + p.stderr
    assert pb.account_count() == 0 and pb.order_count() == 0
    ctl = Ctl(acmectl_bin, tmp_path / "state", pb, ["--eab-kid", "kid-1", "--eab-hmac-key", f"data:{key}"])
    ctl.ok("issue", "eab.ctl.example.org")
    assert pb.account_count() == 1 and pb.issued_count() == 1


# --------------------------------------------------------------------------
# nginx
# --------------------------------------------------------------------------

def nginx_conf(pb, tmp_path, https, certs, issuers=None):
    """certs: [(name, acme_certificate arguments after the issuer)]; issuers: {issuer: extra lines}."""
    issuers = issuers or {"pebble": ""}
    conf = "".join(issuer_block(i, pb, tmp_path / f"state-{i}", extra=extra) for i, extra in issuers.items())
    for name, args in certs:
        conf += managed_servers(pb.http_port, https, name, cert=args, locations=[
            'location = /acme { acme_status; }'])
    return conf


def nginx_status(https, name):
    r = https_get(https, name, "/acme")
    assert r.status == 200, r.text
    return next(c for c in r.json()["certificates"] if name in c["identifiers"])


def served(https, name, roots):
    try:
        return tls_verified(https, name, roots)
    except Exception:  # noqa: BLE001
        return None


def test_nginx_ari_window_renews_and_replaces(pebble_ari, nginx_factory, tmp_path):
    pb, name, https = pebble_ari, "ari.nginx.example.org", free_port()
    ng = nginx_factory(nginx_conf(pb, tmp_path, https, [(name, "pebble")]), wait_port=https)
    roots = pb.roots(0)
    old = wait_for(lambda: served(https, name, roots), 40, what="the first certificate")
    # the ARI check right after issuance got Pebble's own window, 2/3 into the lifetime
    st = wait_for(lambda: (lambda c: c if c.get("ari_window") else None)(nginx_status(https, name)), 20,
                  what="the first renewalInfo")
    assert st["renewal_reason"] == "ari", st
    ng.stop()

    state = tmp_path / "state-pebble"
    pb.set_renewal_info((state / "certs" / st["name"] / "fullchain.pem").read_text(), past_window())
    age_ari_check(state, st["name"])
    mark = pb.mark()
    ng.start(wait_port=https)
    new = wait_for(lambda: (lambda s: s if s not in (None, old) else None)(served(https, name, roots)), 40,
                   what="the renewed certificate")
    assert new in pb.issued_serials(since=mark)
    assert len(pb.replacements(since=mark)) == 1, pb.log_text(mark)[-3000:]
    assert pb.request_count("/order-plz", since=mark) == 1
    ng.wait_log(rf'"{name}": ari from "pebble"')


def test_nginx_profiles_in_certificates(pebble_profiles, nginx_factory, tmp_path):
    pb, https = pebble_profiles, free_port()
    certs = [("issuer.nginx.example.org", "pebble"),                       # the issuer's profile
             ("tls.nginx.example.org", "pebble profile=tlsserver"),       # the certificate's own
             ("classic.nginx.example.org", "pebble profile=classic")]
    nginx_factory(nginx_conf(pb, tmp_path, https, certs, {"pebble": "profile shortlived;"}), wait_port=https)
    roots = pb.roots(0)
    for (name, _), prof in zip(certs, ("shortlived", "tlsserver", "classic")):
        wait_for(lambda: served(https, name, roots), 40, what=f"a certificate for {name}")
        assert profile_of(tls_cert(https, name)) == prof, name


def test_nginx_eab_required(pebble_next_factory, nginx_factory, tmp_path):
    key = leakcheck.EAB_HMAC_KEY
    wrong = ("B" if key[0] != "B" else "C") + key[1:]
    pb, https = pebble_next_factory(eab_keys={"kid-1": key}, eab_required=True), free_port()
    certs = [("nokey.nginx.example.org", "nokey"), ("wrong.nginx.example.org", "wrong"),
             ("good.nginx.example.org", "good")]
    ng = nginx_factory(nginx_conf(pb, tmp_path, https, certs, {
        "nokey": "", "wrong": f"external_account_key kid-1 data:{wrong};",
        "good": f"external_account_key kid-1 data:{key};"}), wait_port=https,
        allowed=[EAB_MISSING.format(r"nokey\.nginx\.example\.org"),
                 EAB_WRONG.format(r"wrong\.nginx\.example\.org")])
    roots = pb.roots(0)
    wait_for(lambda: served(https, "good.nginx.example.org", roots), 40, what="the good issuer's certificate")
    # without a key: refused before asking (the directory says externalAccountRequired); a wrong MAC: by the CA
    for name, msg in (("nokey.nginx.example.org", "requires External Account Binding"),
                      ("wrong.nginx.example.org", "unauthorized: external account binding")):
        st = wait_for(lambda: (lambda c: c if c["failures"] else None)(nginx_status(https, name)), 30,
                      what=f"{name} failing")
        assert st["state"] == "failing" and msg in st["last_error"], st
    assert pb.account_count() == 1 and pb.issued_count() == 1
    assert key not in ng.log_text() and wrong not in ng.log_text()


# --------------------------------------------------------------------------
# Apache
# --------------------------------------------------------------------------

def test_apache_ari_window_renews_and_replaces(pebble_ari, apache_factory, procs):
    pb, name = pebble_ari, "ari.apache.example.org"
    a = apache_factory(pb, name="apache-ari")
    a.vhosts = a.managed_vhosts([name])
    a.start(procs)
    st = a.wait_valid(name)
    old = stored_serial(a.state, st["name"])
    wait_for(lambda: (a.cert_status(name) or {}).get("ari_window"), 20, what="the first renewalInfo")
    a.proc.stop()

    pb.set_renewal_info((a.state / "certs" / st["name"] / "fullchain.pem").read_text(), past_window())
    age_ari_check(a.state, st["name"])
    mark = pb.mark()
    a.start(procs)
    wait_for(lambda: stored_serial(a.state, st["name"]) != old, 40, what="the renewed certificate")
    new = stored_serial(a.state, st["name"])
    assert new in pb.issued_serials(since=mark)
    wait_for(lambda: apache_serial(tls_get(a.https_port, name)[2]) == new, 20, what="the new one served")
    assert len(pb.replacements(since=mark)) == 1, pb.log_text(mark)[-3000:]
    assert pb.request_count("/order-plz", since=mark) == 1
    assert f'"{name}": ari from' in a.log()


def test_apache_profiles_in_certificates(pebble_profiles, apache_factory, procs):
    pb = pebble_profiles
    a = apache_factory(pb, name="apache-profiles", acme_global="ACMEProfile shortlived")
    certs = [("global.apache.example.org", "", "shortlived"),
             ("tls.apache.example.org", "    ACMEProfile tlsserver\n", "tlsserver"),
             ("classic.apache.example.org", "    ACMEProfile classic\n", "classic")]
    a.vhosts = "".join(a.managed_vhosts([n], extra=extra) for n, extra, _ in certs)
    a.start(procs)
    for name, _, prof in certs:
        st = a.wait_valid(name)
        assert profile_of(harness.openssl("x509", "-outform", "DER", "-in",
                                          str(a.state / "certs" / st["name"] / "fullchain.pem"))) == prof
        assert profile_of(tls_get(a.https_port, name)[2]) == prof, name


def test_apache_eab_required(pebble_next_factory, apache_factory, procs):
    key = leakcheck.EAB_HMAC_KEY
    wrong = ("B" if key[0] != "B" else "C") + key[1:]
    pb = pebble_next_factory(eab_keys={"kid-1": key}, eab_required=True)
    name = "eab.apache.example.org"
    for i, directive in enumerate(("", f"ACMEExternalAccountBinding kid-1 data:{wrong}")):
        a = apache_factory(pb, name=f"apache-eab{i}", acme_global=directive)
        a.allow((EAB_WRONG if directive else EAB_MISSING).format(r"eab\.apache\.example\.org"))
        a.vhosts = a.managed_vhosts([name])
        a.start(procs)
        st = wait_for(lambda: (lambda c: c if c and c["failures"] else None)(a.cert_status(name)), 30,
                      what="the certificate failing")
        assert ("unauthorized: external account binding" if directive else "requires External Account Binding") \
            in st["last_error"], st
        assert wrong not in a.log() and key not in a.log()
        a.proc.stop()
    assert pb.account_count() == 0 and pb.order_count() == 0
    a = apache_factory(pb, name="apache-eab", acme_global=f"ACMEExternalAccountBinding kid-1 data:{key}")
    a.vhosts = a.managed_vhosts([name])
    a.start(procs)
    a.wait_valid(name)
    assert pb.account_count() == 1 and pb.issued_count() == 1
