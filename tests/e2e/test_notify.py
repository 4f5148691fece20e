"""Notifications (issue #20): the admin's program run on a certificate's events, `PROGRAM EVENT NAME` with
ACME_* variables, once per event, outside the traffic-serving workers (nginx: the cache manager; Apache:
the driver), killed at its time limit, its output in the log; a failing or hanging program never holds
up issuance."""

import os
import re
import time

import pytest

from apache_harness import apache_factory  # noqa: F401  (fixture)
from harness import free_port, wait_for
from nginx_harness import https_get, issuer_block, nginx_factory, tls_verified  # noqa: F401

SCRIPT = """#!/bin/sh
# one record per run: its arguments, then its environment, then its parent's title
{{
  echo "ARGS $#|$1|$2"
  env | grep -v '^_=' | sort
  echo "PARENT $(tr '\\0' ' ' < /proc/$PPID/cmdline)"
  echo "SELF $(tr '\\0' ' ' < /proc/$$/cmdline)"
  echo "=="
}} >> {out}
echo "notified $1 $2"
{extra}
"""


def make_script(d, extra=""):
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o777)      # Apache's driver runs as www-data
    out = d / "events"
    script = d / "notify.sh"
    script.write_text(SCRIPT.format(out=out, extra=extra))
    os.chmod(script, 0o755)
    return script, out


def events(out):
    """[(event, name, {env})] in the order they ran."""
    try:
        text = out.read_text()
    except OSError:
        return []
    got = []
    for rec in text.split("==\n")[:-1]:     # the last one: being written
        lines = rec.splitlines()
        m = re.match(r"ARGS (\d+)\|([^|]*)\|(.*)$", lines[0])
        assert m and m.group(1) == "2", lines[0]
        env = dict(line.split("=", 1) for line in lines[1:] if "=" in line and not line.startswith(
            ("PARENT ", "SELF ")))
        parent = next(line[7:] for line in lines if line.startswith("PARENT "))
        got.append((m.group(2), m.group(3), env, parent))
    return got


def wait_events(out, n, timeout=40):
    return wait_for(lambda: (lambda e: e if len(e) >= n else None)(events(out)), timeout, interval=0.2,
                    what=f"{n} notification(s)")


def check_env(env, event, name, ident, state):
    assert env["ACME_EVENT"] == event and env["ACME_CERTIFICATE"] == name, env
    assert env["ACME_DOMAINS"] == ident, env
    assert env["ACME_FULLCHAIN"] == f"{state}/certs/{name}/fullchain.pem", env
    assert env["ACME_PRIVKEY"] == f"{state}/certs/{name}/privkey.pem", env
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", env.get("ACME_NOT_AFTER", "")), env
    for k, v in env.items():
        assert "PRIVATE KEY" not in v and "BEGIN" not in v, k


def _nginx_conf(uri, pebble, tmp_path, https, name, notify):
    return issuer_block("pebble", uri, tmp_path / "state",
                        extra=f"ssl_trusted_certificate {pebble.ca_cert};") + f"""
    {notify}
    server {{
        listen 127.0.0.1:{pebble.http_port};
        server_name {name};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {name};
        acme_certificate pebble;
        location / {{ return 200 "tls\\n"; }}
        location = /rw {{ acme_status renew=on; }}
    }}
"""


def _served(https, name, roots):
    try:
        return tls_verified(https, name, roots)
    except Exception:  # noqa: BLE001
        return None


def _served_at(host, https, name, roots):
    try:
        return tls_verified(https, name, roots, host=host)
    except Exception:  # noqa: BLE001
        return None


def _store_name(https, name):
    st = https_get(https, name, "/rw").json()
    return next(c["name"] for c in st["certificates"] if name in c["identifiers"])


# -------------------------------------------------------------------- nginx

def test_nginx_issued_renewed_expiring(pebble, nginx_factory, tmp_path):
    name = "events.notify.example.org"
    https = free_port()
    script, out = make_script(tmp_path / "n")
    state = tmp_path / "state"
    ng = nginx_factory(_nginx_conf(pebble, pebble, tmp_path, https, name,
                                   f"acme_notify {script} timeout=10s expiring=36500d;"), wait_port=https)
    roots = pebble.roots(0)
    old = wait_for(lambda: _served(https, name, roots), 40, interval=0.2, what="the certificate")
    store = _store_name(https, name)
    got = wait_events(out, 2)
    # issued, then (within 100 years of its end) expiring: once each, from the cache manager
    assert [(e, n) for e, n, _, _ in got] == [("issued", store), ("expiring", store)], got
    for ev, _, env, parent in got:
        check_env(env, ev, store, name, state)
        assert env["ACME_ISSUER"] == "pebble"
        assert "cache manager" in parent, parent
    ng.wait_log(rf'notify issued "{re.escape(store)}": notified issued {re.escape(store)}')
    ng.wait_log(rf'notify issued "{re.escape(store)}" \({re.escape(str(script))}\): done')

    # forced renewal: renewed, then the new certificate's expiring; nothing repeats
    assert https_get(https, name, f"/rw?renew={name}", method="POST").status == 202
    wait_for(lambda: (lambda s: s if s and s != old else None)(_served(https, name, roots)), 40,
             interval=0.3, what="the forced renewal")
    got = wait_events(out, 4)
    time.sleep(3)
    got = events(out)
    assert [e for e, _, _, _ in got] == ["issued", "expiring", "renewed", "expiring"], got
    check_env(got[2][2], "renewed", store, name, state)
    check_env(got[3][2], "expiring", store, name, state)
    # recorded in the store: a restart does not repeat it
    ng.stop()
    ng.start(wait_port=https)
    wait_for(lambda: _served(https, name, roots), 20, interval=0.2, what="served after the restart")
    time.sleep(3)
    assert len(events(out)) == 4, events(out)


def test_nginx_failed(pebble, nginx_factory, tmp_path):
    name = "failed.notify.example.org"
    https = free_port()
    script, out = make_script(tmp_path / "n")
    dead = f"https://127.0.0.1:{free_port()}/dir"
    ng = nginx_factory(_nginx_conf(dead, pebble, tmp_path, https, name, f"acme_notify {script};"),
                       wait_port=https, allowed=[r"acme: "])
    got = wait_events(out, 1)
    ev, n, env, _ = got[0]
    assert ev == "failed" and env["ACME_EVENT"] == "failed" and env["ACME_DOMAINS"] == name, got
    assert "cannot reach the CA" in env["ACME_ERROR"], env
    assert "ACME_NOT_AFTER" not in env
    # one run per failed attempt (each is logged with its next try), none more
    time.sleep(2)

    def attempts():
        return len(re.findall(rf'acme: "{re.escape(n)}": .*next try at', ng.log_text()))
    wait_for(lambda: len(events(out)) == attempts(), 5, what="one notification per attempt")
    assert all(e == "failed" for e, _, _, _ in events(out)), events(out)


def test_nginx_hanging_program_is_killed(pebble, nginx_factory, tmp_path):
    name = "hang.notify.example.org"
    https = free_port()
    pidfile = tmp_path / "n" / "pid"
    script, out = make_script(tmp_path / "n", extra=f"echo $$ >> {pidfile}\nexec sleep 300")
    ng = nginx_factory(_nginx_conf(pebble, pebble, tmp_path, https, name,
                                   f"acme_notify {script} timeout=12s;"), wait_port=https,
                       allowed=[r"acme: "])
    roots = pebble.roots(0)
    old = wait_for(lambda: _served(https, name, roots), 40, interval=0.2, what="the certificate")
    wait_events(out, 1)
    pid = int(wait_for(lambda: pidfile.read_text().split()[0] if pidfile.exists() else None, 10,
                       what="the pid file"))
    t0 = time.monotonic()
    # the cache manager's loop is not held up by it: a forced renewal completes while it sleeps
    assert https_get(https, name, f"/rw?renew={name}", method="POST").status == 202
    wait_for(lambda: (lambda s: s if s and s != old else None)(_served(https, name, roots)), 10,
             interval=0.2, what="the forced renewal while the program hangs")
    assert os.path.exists(f"/proc/{pid}") and time.monotonic() - t0 < 10
    # killed at its limit, with its process group; the next one ("renewed") runs then
    ng.wait_log(r'notify issued "[^"]+" \(.*\): did not finish within 12 s: killed', timeout=20)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5, what="the program gone")
    wait_events(out, 2, timeout=10)
    assert [e for e, _, _, _ in events(out)] == ["issued", "renewed"]


# the managers' poll of acmectl's revocations, every second instead of every minute
REVOKE_POLL = "ACME_TEST_REVOCATION_POLL_MS"


def _revoke_seen(ctl, store, out, served, old, state, issuer):
    """acmectl revoke on a certificate the server manages: "revoked" once, then a new certificate served."""
    p = ctl.ok("revoke", store)
    assert f"revoked {store}" in p.stdout
    got = wait_events(out, 3, timeout=30)
    assert [(e, n) for e, n, _, _ in got] == [("issued", store), ("revoked", store), ("renewed", store)], got
    check_env(got[1][2], "revoked", store, store, state)
    assert issuer is None or got[1][2]["ACME_ISSUER"] == issuer, got[1][2]
    new = wait_for(lambda: (lambda s: s if s and s != old else None)(served()), 30, interval=0.3,
                   what="the renewed certificate served")
    return new


def test_nginx_revoked_by_acmectl(acmectl_bin, pebble, nginx_factory, tmp_path):
    """acmectl revoke on this host: the cache manager sees it within its poll, runs "revoked" once and
    renews at once; the new certificate is served without a reload; a restart does not repeat it."""
    from test_acmectl import Ctl
    name = "revoked.notify.example.org"
    https = free_port()
    script, out = make_script(tmp_path / "n")
    state = tmp_path / "state"
    ng = nginx_factory(_nginx_conf(pebble, pebble, tmp_path, https, name, f"acme_notify {script};"),
                       wait_port=https, main=f"env {REVOKE_POLL}=1000;")
    roots = pebble.roots(0)
    old = wait_for(lambda: _served(https, name, roots), 40, interval=0.2, what="the certificate")
    store = _store_name(https, name)
    wait_events(out, 1)
    ctl = Ctl(acmectl_bin, state, pebble)
    _revoke_seen(ctl, store, out, lambda: _served(https, name, roots), old, state, "pebble")
    ng.wait_log(rf'acme: "{re.escape(store)}": certificate 0*{old} was revoked at')
    ng.stop()
    ng.start(wait_port=https)
    wait_for(lambda: _served(https, name, roots), 20, interval=0.2, what="served after the restart")
    time.sleep(2.5)     # two polls
    assert [e for e, _, _, _ in events(out)] == ["issued", "revoked", "renewed"], events(out)


def test_nginx_notify_config_errors(pebble, nginx_factory, tmp_path):
    https = free_port()
    script, _ = make_script(tmp_path / "n")
    for bad, msg in ((f"acme_notify {tmp_path}/missing;", "No such file or directory"),
                     ("acme_notify notify.sh;", "is not an absolute path"),
                     (f"acme_notify {script} timeout=0;", '"acme_notify": invalid value "timeout=0"'),
                     (f"acme_notify {script} every=1;", '"acme_notify": invalid parameter "every=1"')):
        ng = nginx_factory(_nginx_conf(pebble, pebble, tmp_path, https, "cfg.notify.example.org", bad),
                           name=f"nginx-{len(bad)}", start=False)
        ok, text = ng.test_config()
        assert not ok and msg in text, text


@pytest.fixture
def ari_proxy(pebble, tmp_path, test_ca):
    from ari_proxy import AriProxy, window_from_now
    cert, key = test_ca.issue("notify-ari-proxy", ["localhost"], ["127.0.0.1"], basename="notify-ari-proxy")
    px = AriProxy(pebble, cert, key, free_port(), log_path=tmp_path / "ari-proxy.log")
    px.window = window_from_now(20 * 86400, 21 * 86400)     # no renewal
    px.start()
    try:
        yield px
    finally:
        px.stop()


def test_nginx_ari_moved(pebble, ari_proxy, nginx_factory, tmp_path):
    """The first window learned is no event; a moved one is, once, with the new window."""
    import json
    from ari_proxy import window_from_now
    name = "ari.notify.example.org"
    https = free_port()
    script, out = make_script(tmp_path / "n")
    conf = _nginx_conf(ari_proxy.directory_url, pebble, tmp_path, https, name, f"acme_notify {script};")
    ng = nginx_factory(conf, wait_port=https)
    roots = pebble.roots(0)
    wait_for(lambda: _served(https, name, roots), 40, interval=0.2, what="the certificate")
    store = _store_name(https, name)
    ng.wait_log(rf'acme: "{re.escape(store)}": ARI window updated')
    time.sleep(1)
    assert [e for e, _, _, _ in events(out)] == ["issued"], events(out)

    # the CA moves the window; the next check (made due now, instead of in hours) sees it
    ng.stop()
    ari_proxy.window = window_from_now(10 * 86400, 11 * 86400)
    meta = tmp_path / "state" / "certs" / store / "meta.json"
    m = json.loads(meta.read_text())
    m["ari_next_check"] = "2000-01-01T00:00:00Z"
    meta.write_text(json.dumps(m))
    ng.start(wait_port=https)
    got = wait_events(out, 2)
    time.sleep(2)
    got = events(out)
    assert [e for e, _, _, _ in got] == ["issued", "ari-moved"], got
    env = got[1][2]
    check_env(env, "ari-moved", store, name, tmp_path / "state")
    assert env["ACME_ARI_START"] == ari_proxy.window["start"], env
    assert env["ACME_ARI_END"] == ari_proxy.window["end"], env


# -------------------------------------------------------------------- Apache

def test_apache_issued_renewed_failed(apache_factory, pebble, procs):
    name = "events.apache-notify.example.org"
    a = apache_factory(pebble, name="apache-notify")
    script, out = make_script(a.dir / "n")
    a.extra_global = f"ACMENotifyCmd {script} timeout=10s expiring=36500d\n"
    a.vhosts = a.managed_vhosts([name])
    a.start(procs)
    st = a.wait_valid(name)
    store = st["name"]
    got = wait_events(out, 2)
    assert [(e, n) for e, n, _, _ in got] == [("issued", store), ("expiring", store)], got
    for ev, _, env, _ in got:
        check_env(env, ev, store, name, a.state)
    wait_for(lambda: f'notify issued "{store}": notified issued {store}' in a.log(), 10,
             what="the program's output in the log")
    r = a.renew(name)
    assert r.status == 202, r
    got = wait_events(out, 4)
    time.sleep(3)
    got = events(out)
    assert [e for e, _, _, _ in got] == ["issued", "expiring", "renewed", "expiring"], got
    check_env(got[2][2], "renewed", store, name, a.state)


def test_apache_failed_and_hanging(apache_factory, pebble, procs):
    name = "failed.apache-notify.example.org"
    dead = f"https://127.0.0.1:{free_port()}/dir"
    a = apache_factory(pebble, name="apache-notify-failed", ca_url=dead)
    script, out = make_script(a.dir / "n", extra="exec sleep 300")
    a.extra_global = f"ACMENotifyCmd {script} timeout=2\n"
    a.vhosts = a.managed_vhosts([name])
    a.allow(r"acme|ACME")
    a.start(procs)
    got = wait_events(out, 1)
    assert got[0][0] == "failed" and got[0][2]["ACME_DOMAINS"] == name, got
    assert got[0][2]["ACME_ERROR"], got
    wait_for(lambda: re.search(r'notify failed "[^"]+" \(.*\): did not finish within 2 s: killed', a.log()),
             15, what="the kill in the log")


def test_apache_revoked_by_acmectl(acmectl_bin, apache_factory, pebble, procs, monkeypatch):
    """The same with Apache's driver; a restart does not repeat it."""
    from test_acmectl import Ctl
    monkeypatch.setenv(REVOKE_POLL, "1000")
    name = "revoked.apache-notify.example.org"
    a = apache_factory(pebble, name="apache-notify-revoked")
    script, out = make_script(a.dir / "n")
    a.extra_global = f"ACMENotifyCmd {script}\n"
    a.vhosts = a.managed_vhosts([name])
    a.start(procs)
    store = a.wait_valid(name)["name"]
    roots = pebble.roots(0)

    def served():
        return _served_at(a.address, a.https_port, name, roots)
    old = wait_for(served, 20, interval=0.2, what="the certificate")
    wait_events(out, 1)
    ctl = Ctl(acmectl_bin, a.state, pebble)
    _revoke_seen(ctl, store, out, served, old, a.state, None)
    a.proc.stop()
    a.start(procs)
    wait_for(served, 20, interval=0.2, what="served after the restart")
    time.sleep(2.5)     # two polls
    assert [e for e, _, _, _ in events(out)] == ["issued", "revoked", "renewed"], events(out)


def test_apache_notify_config_errors(apache_factory, pebble):
    a = apache_factory(pebble, name="apache-notify-cfg")
    script, _ = make_script(a.dir / "n")
    for bad, msg in ((f"ACMENotifyCmd {a.dir}/missing", "No such file or directory"),
                     (f"ACMENotifyCmd {script} timeout=0", "invalid value 'timeout=0'"),
                     (f"<VirtualHost 127.0.0.1:{free_port()}>\nACMENotifyCmd {script}\n</VirtualHost>",
                      "ACMENotifyCmd cannot occur within")):
        a.extra_global = bad + "\n"
        cp = a.config_test()
        assert cp.returncode != 0 and msg in cp.stdout + cp.stderr, cp.stdout + cp.stderr


# -------------------------------------------------------------------- acmectl run

def test_acmectl_run_notify(acmectl_bin, pebble, procs, tmp_path):
    import signal as sig
    from test_acmectl import Ctl
    ctl = Ctl(acmectl_bin, tmp_path / "state", pebble)
    script, out = make_script(tmp_path / "n")
    name = "run.notify.example.org"
    p = procs.start(ctl.args("run", "--http-listen", f"127.0.0.1:{pebble.http_port}", "--notify", str(script),
                             name), name="acmectl-run-notify")
    got = wait_events(out, 1)
    assert [(e, n) for e, n, _, _ in got] == [("issued", name)], got
    check_env(got[0][2], "issued", name, name, ctl.state)
    p.send_signal(sig.SIGUSR1)
    got = wait_events(out, 2)
    assert [e for e, _, _, _ in got] == ["issued", "renewed"], got
    wait_for(lambda: f'notify renewed "{name}": notified renewed {name}' in p.log_text(), 10,
             what="the program's output")
    p.stop()


def test_acmectl_revoke_notify(acmectl_bin, pebble, tmp_path):
    from test_acmectl import Ctl
    ctl = Ctl(acmectl_bin, tmp_path / "state", pebble)
    script, out = make_script(tmp_path / "n")
    name = "revoke.notify.example.org"
    ctl.ok("issue", "--http-listen", f"127.0.0.1:{pebble.http_port}", name)
    assert events(out) == []
    p = ctl.ok("revoke", "--notify", str(script), name)
    assert f"revoked {name}" in p.stdout
    got = events(out)       # run and waited for before acmectl exits
    assert [(e, n) for e, n, _, _ in got] == [("revoked", name)], got
    check_env(got[0][2], "revoked", name, name, ctl.state)
    assert got[0][2]["ACME_ISSUER"] == pebble.directory_url
    assert f'notify revoked "{name}": notified revoked {name}' in p.stderr
    bad = ctl.run("revoke", "--notify", "notify.sh", name)
    assert bad.returncode == 2, bad.stderr
    assert 'the notification program "notify.sh" is not an absolute path' in bad.stderr


def test_apache_ari_moved(apache_factory, pebble, ari_proxy, procs):
    import json
    from ari_proxy import window_from_now
    name = "ari.apache-notify.example.org"
    a = apache_factory(pebble, name="apache-notify-ari", ca_url=ari_proxy.directory_url)
    script, out = make_script(a.dir / "n")
    a.extra_global = f"ACMENotifyCmd {script}\n"
    a.vhosts = a.managed_vhosts([name])
    a.start(procs)
    store = a.wait_valid(name)["name"]
    wait_for(lambda: "ARI window updated" in a.log(), 20, what="the first ARI window")
    time.sleep(1)
    assert [e for e, _, _, _ in events(out)] == ["issued"], events(out)

    # the CA moves the window; the next check (made due now) sees it, in the next generation's driver
    ari_proxy.window = window_from_now(10 * 86400, 11 * 86400)
    meta = a.state / "certs" / store / "meta.json"
    m = json.loads(meta.read_text())
    m["ari_next_check"] = "2000-01-01T00:00:00Z"
    meta.write_text(json.dumps(m))
    a.graceful()
    got = wait_events(out, 2)
    time.sleep(2)
    got = events(out)
    assert [e for e, _, _, _ in got] == ["issued", "ari-moved"], got
    assert got[1][2]["ACME_ARI_START"] == ari_proxy.window["start"], got[1][2]
    check_env(got[1][2], "ari-moved", store, name, a.state)
