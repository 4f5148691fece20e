"""Root never repairs, writes or walks the state directory that the worker user owns.

Whoever runs as the worker user (www-data here) can plant a symbolic link in the state directory and a
commit journal naming paths through it. The nginx master (configuration, `nginx -t`, reload) and the Apache
parent (start, graceful restart) must not follow it: nothing outside the store is touched, and the
process that finds it logs an error naming the link. No recursive chown either."""

import os
import pwd
import re
import shutil
import tempfile
from pathlib import Path

import pytest

import harness
from harness import free_port, wait_for
from apache_harness import apache_factory  # noqa: F401  (fixture)
from apache_harness import tls_get
from nginx_harness import Nginx, module_path

WORKER = "www-data"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the servers' parents run as root, "
                                "their workers as www-data")

LINK_ERROR = r"/x is a symbolic link"


@pytest.fixture
def open_dir():
    """A directory the worker user can pass through (pytest's tmp dirs are 0700 root)."""
    d = Path(tempfile.mkdtemp(prefix="acme_statedir_e2e_"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _worker_ids():
    pw = pwd.getpwnam(WORKER)
    return pw.pw_uid, pw.pw_gid


def _victim(base):
    """An outside directory with a file root could delete or overwrite: base/victim/passwd."""
    v = base / "victim"
    v.mkdir()
    (v / "passwd").write_text("root:x:0:0\n")
    (v / "passwd.next").write_text("planted\n")
    return v


def _victim_intact(v):
    return (sorted(p.name for p in v.iterdir()) == ["passwd", "passwd.next"]
            and (v / "passwd").read_text() == "root:x:0:0\n")


def _plant(state, victim):
    """What the worker user can do: state/x -> victim, and a journal deleting and replacing x/passwd."""
    uid, gid = _worker_ids()
    link = state / "x"
    if not link.is_symlink():
        os.symlink(victim, link)
        os.lchown(link, uid, gid)
    j = state / ".commit"
    j.write_text("acme-store-commit 1\ndel x/passwd\nput x/passwd\n")
    os.chown(j, uid, gid)
    os.chmod(j, 0o600)


def _worker_state(base):
    """A state directory as an existing install has it: the worker's, 0700."""
    uid, gid = _worker_ids()
    state = base / "state"
    state.mkdir(mode=0o700)
    os.chown(state, uid, gid)
    return state


# ---------------------------------------------------------------------------------------------------------
# nginx: master as root, workers as www-data
# ---------------------------------------------------------------------------------------------------------

def _nginx_conf(state, port, certificate=True):
    """An issuer (CA out of reach); with certificate=False no certificate, so nothing but the workers'
    opening of the store reads it (an issuance in flight would read it too)."""
    server = (f"listen 127.0.0.1:{port} ssl;\n        acme_certificate le;" if certificate
              else f"listen 127.0.0.1:{port};")
    return f"""
    acme_issuer le {{
        uri http://127.0.0.1:{free_port()}/dir;
        state_path {state};
        accept_terms_of_service;
    }}
    server {{
        {server}
        server_name a.statedir.example.org;
    }}
"""


def test_nginx_link_and_journal(open_dir, procs, server_logs):
    if not module_path().is_file():
        pytest.fail(f"{module_path()} not built", pytrace=False)
    victim = _victim(open_dir)
    state = _worker_state(open_dir)
    rootfile = state / "left-by-root"
    rootfile.write_text("x")            # an older version's root-owned file: no recursive chown
    _plant(state, victim)
    port = free_port()
    ng = Nginx(open_dir / "nginx", procs, server_logs, _nginx_conf(state, port, certificate=False),
               user=WORKER, allowed=[LINK_ERROR])
    os.chmod(ng.dir, 0o755)

    # nginx -t (root): reads only; the journal stays for the workers
    ok, out = ng.test_config()
    assert ok, out
    assert _victim_intact(victim)
    assert (state / ".commit").exists()

    # start: a worker (www-data) finds the journal, refuses the link and says so
    ng.start(wait_port=port)
    ng.wait_log(LINK_ERROR)
    assert _victim_intact(victim)
    wait_for(lambda: not (state / ".commit").exists(), 10, what="the journal dropped")
    assert state.stat().st_uid == _worker_ids()[0]
    assert rootfile.stat().st_uid == 0

    # reload (the master parses the configuration again, new workers start)
    _plant(state, victim)
    mark = ng.reload()
    ng.wait_log(LINK_ERROR, since=mark)
    assert _victim_intact(victim)
    assert rootfile.stat().st_uid == 0
    assert (state / "x").is_symlink()        # never followed, never "repaired" either


def test_nginx_gives_only_the_new_directory(open_dir, procs, server_logs):
    """A new state_path is made 0700 for the worker user; parents it makes are root's and 0755."""
    if not module_path().is_file():
        pytest.fail(f"{module_path()} not built", pytrace=False)
    state = open_dir / "new" / "state"
    port = free_port()
    ng = Nginx(open_dir / "nginx", procs, server_logs, _nginx_conf(state, port, certificate=False),
               user=WORKER)
    ng.start(wait_port=port)
    st = state.stat()
    assert st.st_uid == _worker_ids()[0] and (st.st_mode & 0o777) == 0o700
    pst = state.parent.stat()
    assert pst.st_uid == 0 and (pst.st_mode & 0o022) == 0
    # the workers write there (their lock files), as the worker user
    wait_for(lambda: (state / ".lock").exists(), 10, what="the workers' store lock")
    assert (state / ".lock").stat().st_uid == _worker_ids()[0]


# ---------------------------------------------------------------------------------------------------------
# Apache: parent as root, children as www-data
# ---------------------------------------------------------------------------------------------------------

def _apache(apache_factory, server_logs, name, host):
    a = apache_factory(None, name=name, ca_url=f"http://127.0.0.1:{free_port()}/dir")
    a.vhosts = a.managed_vhosts([host])
    server_logs.allow(r"ACME0090: acme: .*next try at")
    return a


def test_apache_graceful_link_and_journal(apache_factory, procs, server_logs):
    a = _apache(apache_factory, server_logs, "apache-statedir", "a.statedir.example.org")
    victim = _victim(a.dir)
    server_logs.allow(LINK_ERROR)
    a.start(procs)
    assert a.state.stat().st_uid == _worker_ids()[0]
    # the fallback files were written as the children's user
    fb = a.state / "fallback"
    assert fb.stat().st_uid == _worker_ids()[0]
    for p in fb.rglob("*"):
        assert p.stat().st_uid == _worker_ids()[0], p

    _plant(a.state, victim)
    a.graceful()
    wait_for(lambda: LINK_ERROR.replace("\\", "") in a.log(), 10, what="the link named in the log")
    assert _victim_intact(victim)
    assert (a.state / "x").is_symlink()
    status, _, _, _ = tls_get(a.https_port, "a.statedir.example.org")
    assert status == 503                        # still serving (the fallback)


def test_apache_linked_fallback_refused(apache_factory, procs, server_logs):
    a = _apache(apache_factory, server_logs, "apache-linkfb", "b.statedir.example.org")
    victim = _victim(a.dir)
    state = _worker_state(a.dir)
    uid, gid = _worker_ids()
    os.symlink(victim, state / "fallback")
    os.lchown(state / "fallback", uid, gid)
    a.start(procs, wait=False)
    wait_for(lambda: not a.proc.alive(), 20, what="apache to refuse to start")
    log = a.log()
    assert "/fallback is a symbolic link" in log, log[-2000:]
    assert _victim_intact(victim)
    assert not any(p.name.endswith(".pem") for p in victim.iterdir())
    server_logs.unwatch(a.error_log)


def test_apache_linked_certificate_dir_refused(apache_factory, procs, server_logs):
    host = "c.statedir.example.org"
    a = _apache(apache_factory, server_logs, "apache-linkcert", host)
    # the failed try cannot be recorded through the planted link: the refusal under test
    a.allow(rf'ACME0090: acme: "{re.escape(host)}": cannot record the failure in the store: '
            rf'\S+/certs/{re.escape(host)} is a symbolic link')
    victim = _victim(a.dir)
    state = _worker_state(a.dir)
    uid, gid = _worker_ids()
    (state / "certs").mkdir(mode=0o700)
    os.chown(state / "certs", uid, gid)
    os.symlink(victim, state / "certs" / host)
    os.lchown(state / "certs" / host, uid, gid)
    a.start(procs)
    log = a.log()
    assert f"/certs/{host} is a symbolic link" in log, log[-2000:]
    assert _victim_intact(victim)


# ---------------------------------------------------------------------------------------------------------
# acmectl run by root on a server's directory
# ---------------------------------------------------------------------------------------------------------

def test_acmectl_as_root(acmectl_bin, open_dir):
    """Root's acmectl follows no link either, and what it writes stays the directory owner's."""
    victim = _victim(open_dir)
    state = _worker_state(open_dir)
    _plant(state, victim)
    base = [str(acmectl_bin), "--state", str(state), "--ca", f"http://127.0.0.1:{free_port()}/dir"]
    p = harness.run_cmd(base + ["list"], timeout=60)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "/x is a symbolic link" in out, out
    assert _victim_intact(victim)
    assert not (state / ".commit").exists()
    # the journal is gone: the store opens; the files acmectl makes are the worker's
    p = harness.run_cmd(base + ["list"], timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    uid = _worker_ids()[0]
    made = [q for q in state.rglob("*") if not q.is_symlink()]
    assert made and all(q.lstat().st_uid == uid for q in made), [(str(q), q.lstat().st_uid) for q in made]
    assert _victim_intact(victim)
