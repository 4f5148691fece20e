"""acmectl import certbot|mod_md (issue #20): another tool's certificates and accounts into the store.

The source directories are made by the tools themselves against Pebble: certbot (Debian's /usr/bin/certbot,
certonly --standalone) writes /etc/letsencrypt's layout (renewal/NAME.conf, live/ links into archive/,
accounts/<server>/<id>/ with the key as a JWK); Apache with Debian's mod_md writes an MDStoreDir (domains/,
accounts/ with the key encrypted under md_store.json's key). acmectl import takes them into a state
directory; nginx (certbot's) and Apache with mod_acme (mod_md's) then serve the same certificate at once,
place no order and register no account, and a forced renewal orders with the imported account (the order
is in that account's list at Pebble). --dry-run writes nothing; nothing in the source changes; a broken
lineage is skipped with a message naming it."""

import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from apache_harness import MODULES, APACHE_BIN, apache_factory, cert_serial as a_serial, tls_get  # noqa: F401
from harness import AcmeTestClient, HarnessError, child_env, free_port, normalize_serial, openssl, run_cmd, wait_for
from nginx_harness import cert_serial, force_renewal, https_get, issuer_block, nginx_factory, tls_cert  # noqa: F401

CERTBOT = "/usr/bin/certbot"
NAME = "cb.import.example.org"
ALT = "www.cb.import.example.org"
BROKEN = "broken.import.example.org"
MISMATCH = "mismatch.import.example.org"
ESCAPE = "escape.import.example.org"


def _tree(root):
    """Every file, link and directory under root with its content, target or mode: to see that nothing
    changed."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(dirpath) / n
            st = p.lstat()
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_dir():
                out[str(p)] = ("dir", st.st_mode, st.st_uid)
            else:
                out[str(p)] = ("file", st.st_mode, st.st_uid, st.st_mtime_ns,
                               hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _serial_of_pem(pem):
    out = openssl("x509", "-noout", "-serial", input=pem).decode()
    return normalize_serial(out.strip().split("=", 1)[1])


def _certbot(pebble, base, names, *extra):
    if not os.access(CERTBOT, os.X_OK):
        pytest.skip(f"{CERTBOT} is not installed (Debian package certbot)")
    args = [CERTBOT, "certonly", "--non-interactive", "--agree-tos", "--email", "admin@example.org",
            "--no-eff-email", "--server", pebble.directory_url, "--config-dir", base / "letsencrypt",
            "--work-dir", base / "work", "--logs-dir", base / "logs", "--standalone",
            "--http-01-address", "127.0.0.1", "--http-01-port", pebble.http_port, *extra]
    for n in names:
        args += ["-d", n]
    r = run_cmd(args, timeout=180, env=child_env({"REQUESTS_CA_BUNDLE": pebble.ca_cert}))
    assert r.returncode == 0, r.stdout + r.stderr
    return base / "letsencrypt"


def _ctl(acmectl_bin, state, *args):
    return run_cmd([acmectl_bin, "--state", state, *args], timeout=60)


def _account_client(pebble, state, url, tmp_path):
    """A client signing with the account key acmectl stored, as the account at that URL."""
    ca_ids = os.listdir(state / "accounts")
    assert len(ca_ids) == 1, ca_ids
    acct = json.loads((state / "accounts" / ca_ids[0] / "account.json").read_text())
    assert acct["url"] == url, acct
    c = AcmeTestClient(pebble.directory_url, pebble.ca_cert, tmp_path / "acct-client",
                       account_key=state / "accounts" / ca_ids[0] / "account.key")
    c.kid = url
    return c


def test_certbot_import_served_and_renewed_by_nginx(pebble, acmectl_bin, nginx_factory, tmp_path):
    base = tmp_path / "certbot"
    base.mkdir()
    le = _certbot(pebble, base, [NAME, ALT])
    _certbot(pebble, base, [BROKEN])
    # a lineage that cannot be imported: its key is gone (the live/ link dangles)
    archive_key = le / "archive" / BROKEN / "privkey1.pem"
    archive_key.unlink()

    # and one whose key is not its certificate's (certbot's layout, another key in archive/)
    (le / "archive" / MISMATCH).mkdir(mode=0o700)
    (le / "live" / MISMATCH).mkdir(mode=0o700)
    for f in ("cert", "chain", "fullchain"):
        shutil.copy(le / "archive" / NAME / f"{f}1.pem", le / "archive" / MISMATCH / f"{f}1.pem")
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
            le / "archive" / MISMATCH / "privkey1.pem")
    for f in ("cert", "chain", "fullchain", "privkey"):
        os.symlink(f"../../archive/{MISMATCH}/{f}1.pem", le / "live" / MISMATCH / f"{f}.pem")
    (le / "renewal" / f"{MISMATCH}.conf").write_text(
        (le / "renewal" / f"{NAME}.conf").read_text().replace(NAME, MISMATCH))

    # and one whose key is a link out of certbot's directory (to a copy of a good key): not followed
    (le / "archive" / ESCAPE).mkdir(mode=0o700)
    (le / "live" / ESCAPE).mkdir(mode=0o700)
    for f in ("cert", "chain", "fullchain"):
        shutil.copy(le / "archive" / NAME / f"{f}1.pem", le / "archive" / ESCAPE / f"{f}1.pem")
        os.symlink(f"../../archive/{ESCAPE}/{f}1.pem", le / "live" / ESCAPE / f"{f}.pem")
    outside = tmp_path / "outside-key.pem"
    shutil.copy(le / "archive" / NAME / "privkey1.pem", outside)
    os.symlink(outside, le / "live" / ESCAPE / "privkey.pem")
    (le / "renewal" / f"{ESCAPE}.conf").write_text(
        (le / "renewal" / f"{NAME}.conf").read_text().replace(NAME, ESCAPE))

    regr = next((le / "accounts").rglob("regr.json"))
    account_url = json.loads(regr.read_text())["uri"]
    chain = (le / "live" / NAME / "fullchain.pem").read_bytes()
    serial = _serial_of_pem(chain)
    before = _tree(le)
    state = tmp_path / "state"

    # --dry-run: says what, writes nothing
    r = _ctl(acmectl_bin, state, "import", "--dry-run", "certbot", le)
    assert f'would import certbot\'s lineage {le}/live/{NAME} as "{NAME}"' in r.stdout, r.stdout + r.stderr
    assert f"would import certbot's account {le}/accounts/" in r.stdout, r.stdout
    assert f"certbot's lineage {le}/live/{BROKEN} skipped: " in r.stderr, r.stderr
    assert not state.exists()
    assert _tree(le) == before

    # root does not make the state directory (it would be root's, not the server's user's)
    if os.geteuid() == 0:
        r = _ctl(acmectl_bin, state, "import", "certbot", le)
        assert r.returncode == 1 and f"the state directory {state} does not exist" in r.stderr, r.stderr
        assert not state.exists()
    state.mkdir(mode=0o700)     # as the server makes it (its workers run as root in these tests)

    # root reads nothing from a directory that others may write in (they could plant what it reads)
    if os.geteuid() == 0:
        os.chmod(le / "archive", 0o777)
        r = _ctl(acmectl_bin, state, "import", "--dry-run", "certbot", le)
        os.chmod(le / "archive", 0o700)
        assert re.search(rf"lineage {re.escape(str(le))}/live/{re.escape(NAME)} skipped: .*archive belongs to uid 0 "
                         r"with mode 0777: others than its owner may write in it", r.stderr), r.stdout + r.stderr
        assert "would import certbot's lineage" not in r.stdout, r.stdout

    r = _ctl(acmectl_bin, state, "import", "certbot", le)
    assert f"certbot's lineage {le}/live/{MISMATCH} skipped: the key does not match the certificate" in r.stderr, \
        r.stderr
    assert r.returncode == 1, r.stdout + r.stderr          # lineages skipped
    assert f"certbot's lineage {le}/live/{ESCAPE} skipped: {le}/live/{ESCAPE}/privkey.pem is a link out of {le}" \
        in r.stderr, r.stderr
    assert re.search(rf"certbot's lineage {re.escape(str(le))}/live/{re.escape(BROKEN)} skipped: .*privkey",
                     r.stderr), r.stderr
    assert f'imported certbot\'s lineage {le}/live/{NAME} as "{NAME}"' in r.stdout, r.stdout
    assert f"serial {serial}" in r.stdout.replace(":", "").lower() or serial in r.stdout.lower(), r.stdout
    assert f"({account_url})" in r.stdout, r.stdout
    assert _tree(le) == before, "acmectl import changed certbot's directory"
    assert not (state / "certs" / BROKEN).exists(), "the broken lineage was half-written"
    assert not (state / "certs" / MISMATCH).exists(), "the mismatched lineage was half-written"
    assert (state / "certs" / NAME / "fullchain.pem").is_file()

    # a second run changes nothing and says so
    stored = (state / "certs" / NAME / "fullchain.pem").read_bytes()
    r2 = _ctl(acmectl_bin, state, "import", "certbot", le)
    assert f'certbot\'s lineage {le}/live/{NAME} as "{NAME}": already in the store' in r2.stdout, r2.stdout
    assert "account" in r2.stdout and "already in the store" in r2.stdout, r2.stdout
    # nothing was replaced
    assert (state / "certs" / NAME / "fullchain.pem").read_bytes() == stored

    accounts = pebble.account_count()
    mark = pebble.mark()
    https = free_port()
    nginx_factory(issuer_block("pebble", pebble, state) + f"""
    acme_shared_zone zone=ngx_acme_shared:1M;
    server {{
        listen 127.0.0.1:{pebble.http_port};
        server_name {NAME} {ALT};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {NAME} {ALT};
        acme_certificate pebble;
        location / {{ return 200 "tls\\n"; }}
        location = /acme {{ acme_status renew=on renew_interval=1s; }}
    }}
""", wait_port=https)

    def served():
        try:
            return cert_serial(tls_cert(https, NAME))
        except Exception:  # noqa: BLE001
            return None

    # served at once: certbot's certificate, no order, no account
    wait_for(lambda: served() == serial, 15, interval=0.2, what="certbot's certificate served")

    def status():
        st = https_get(https, NAME, "/acme").json()
        c = next((c for c in st["certificates"] if NAME in c["identifiers"]), None)     # once the runner runs
        return c if c and c.get("next_renewal") else None
    st = wait_for(status, 10, interval=0.2, what="a scheduled renewal")
    assert st["state"] == "valid", st
    assert pebble.order_count(since=mark) == 0, "an order was placed for a certificate certbot had"
    assert pebble.request_count("/sign-me-up", since=mark) == 0, "newAccount was asked"
    assert pebble.account_count() == accounts

    # a forced renewal orders with certbot's account
    r = force_renewal(https, NAME, NAME)
    assert r.status == 202, r.text
    wait_for(lambda: served() not in (None, serial), 60, interval=0.3, what="the renewed certificate")
    assert pebble.order_count(since=mark) == 1
    assert pebble.request_count("/sign-me-up", since=mark) == 0
    client = _account_client(pebble, state, account_url, tmp_path)
    orders = client.get(client.get(account_url)["orders"])["orders"]
    # certbot's two orders (NAME, BROKEN) and the renewal
    assert len(orders) == 3, f"the renewal was not ordered by certbot's account: {orders}"
    assert _tree(le) == before


MD_NAME = "md.import.example.org"
MD_ALT = "www.md.import.example.org"

MD_CONF = """\
ServerRoot "{dir}"
PidFile "{dir}/httpd.pid"
DefaultRuntimeDir "{dir}/run"
Mutex file:{dir}/run default
ErrorLog "{dir}/error.log"
LogLevel warn md:info
ServerName localhost
DocumentRoot "{dir}/htdocs"
SSLSessionCache none
GracefulShutdownTimeout 5
LoadModule mpm_event_module {mods}/mod_mpm_event.so
LoadModule authz_core_module {mods}/mod_authz_core.so
LoadModule socache_shmcb_module {mods}/mod_socache_shmcb.so
LoadModule ssl_module {mods}/mod_ssl.so
LoadModule md_module {mods}/mod_md.so
{user}
Listen 127.0.0.1:{http}
Listen 127.0.0.1:{https} https
MDStoreDir "{dir}/md"
MDCertificateAuthority {ca_url}
MDCACertificateFile {dir}/pebble-ca.pem
MDCertificateAgreement accepted
MDContactEmail admin@example.org
MDPortMap http:{http} https:{https}
MDCAChallenges http-01
MDRenewViaARI off
MDPrivateKeys secp256r1
MDomain {name} {alt}
<VirtualHost 127.0.0.1:{http}>
    ServerName {name}
    ServerAlias {alt}
</VirtualHost>
<VirtualHost 127.0.0.1:{https}>
    ServerName {name}
    ServerAlias {alt}
    SSLEngine on
</VirtualHost>
"""


def _mod_md_store(pebble, procs):
    """Apache with Debian's mod_md gets a certificate from Pebble; after the graceful restart that
    activates it, its MDStoreDir holds domains/NAME and the account."""
    if not (MODULES / "mod_md.so").is_file():
        pytest.skip("mod_md.so is not installed")
    d = Path(tempfile.mkdtemp(prefix="import_md_"))
    os.chmod(d, 0o755)
    for sub in ("htdocs", "run"):
        (d / sub).mkdir()
        os.chmod(d / sub, 0o755)
    shutil.copy(pebble.ca_cert, d / "pebble-ca.pem")
    os.chmod(d / "pebble-ca.pem", 0o644)
    user = "User www-data\nGroup www-data" if os.geteuid() == 0 else ""
    (d / "httpd.conf").write_text(MD_CONF.format(
        dir=d, mods=MODULES, user=user, http=pebble.http_port, https=pebble.tls_port,
        ca_url=pebble.directory_url, name=MD_NAME, alt=MD_ALT))
    proc = procs.start([APACHE_BIN, "-f", d / "httpd.conf", "-DFOREGROUND"], name="apache-mod_md",
                       log_path=d / "stdout.log", env={"APACHE_RUN_DIR": d / "run"})
    try:
        staged = d / "md" / "staging" / MD_NAME
        wait_for(lambda: (staged / "pubcert.secp256r1.pem").is_file(), 120, 0.2,
                 what=f"mod_md's staged certificate ({(d / 'error.log')})")
        # mod_md activates it at a graceful restart, once its staging is complete (the certificate file may
        # come before the rest): restarted again until it has
        active = d / "md" / "domains" / MD_NAME / "pubcert.secp256r1.pem"
        for _ in range(6):
            proc.send_signal(signal.SIGUSR1)
            try:
                wait_for(active.is_file, 10, 0.2, what="mod_md's activated certificate")
                break
            except HarnessError:
                continue
        assert active.is_file(), (d / "error.log").read_text(errors="replace")[-3000:]
    finally:
        proc.stop()
    return d


def test_mod_md_import_served_and_renewed_by_apache(pebble, acmectl_bin, apache_factory, procs, tmp_path):
    d = _mod_md_store(pebble, procs)
    try:
        md = d / "md"
        acct_id = json.loads((md / "domains" / MD_NAME / "md.json").read_text())["ca"]["account"]
        account_url = json.loads((md / "accounts" / acct_id / "account.json").read_text())["url"]
        assert b"ENCRYPTED" in (md / "accounts" / acct_id / "account.pem").read_bytes()
        serial = _serial_of_pem((md / "domains" / MD_NAME / "pubcert.secp256r1.pem").read_bytes())
        before = _tree(md)

        a = apache_factory(pebble, vhosts=None)
        a.vhosts = a.managed_vhosts([MD_NAME, MD_ALT])
        # the state directory is the workers' (as the module prepares it): acmectl, run by root, writes as
        # its owner
        a.state.mkdir(mode=0o700)
        www = pwd.getpwnam("www-data")
        if os.geteuid() == 0:
            os.chown(a.state, www.pw_uid, www.pw_gid)

        r = _ctl(acmectl_bin, a.state, "import", "--dry-run", "mod_md", md)
        assert f'would import mod_md\'s domain {md}/domains/{MD_NAME} (pubcert.secp256r1.pem) as "{MD_NAME}"' \
            in r.stdout, r.stdout + r.stderr
        assert os.listdir(a.state) == []
        r = _ctl(acmectl_bin, a.state, "import", "mod_md", md)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"imported mod_md's account {md}/accounts/{acct_id} for {pebble.directory_url} ({account_url})" \
            in r.stdout, r.stdout
        assert _tree(md) == before, "acmectl import changed mod_md's store"
        r = _ctl(acmectl_bin, a.state, "import", "mod_md", md)     # again: nothing to do, nothing skipped
        assert r.returncode == 0 and "already in the store" in r.stdout, r.stdout + r.stderr
        if os.geteuid() == 0:
            assert (a.state / "certs" / MD_NAME / "privkey.pem").stat().st_uid == www.pw_uid

        accounts = pebble.account_count()
        mark = pebble.mark()
        a.start(procs)
        st = a.wait_valid(MD_NAME)
        status, _, der, _ = tls_get(a.https_port, MD_NAME)
        assert status == 200
        assert a_serial(der) == serial, "mod_md's certificate is not the one served"
        assert pebble.order_count(since=mark) == 0, "an order was placed for a certificate mod_md had"
        assert pebble.request_count("/sign-me-up", since=mark) == 0
        assert pebble.account_count() == accounts

        # a forced renewal orders with mod_md's account
        a.renew(MD_NAME)
        wait_for(lambda: a_serial(tls_get(a.https_port, MD_NAME)[2]) != serial, 60, interval=0.3,
                 what="the renewed certificate")
        assert pebble.order_count(since=mark) == 1
        assert pebble.request_count("/sign-me-up", since=mark) == 0
        del st
        # mod_md's account (RSA, as mod_md makes them) has its order and the renewal
        client = _account_client(pebble, a.state, account_url, tmp_path)
        orders = client.get(client.get(account_url)["orders"])["orders"]
        assert len(orders) == 2, f"the renewal was not ordered by mod_md's account: {orders}"
        assert _tree(md) == before
    finally:
        shutil.rmtree(d, ignore_errors=True)
