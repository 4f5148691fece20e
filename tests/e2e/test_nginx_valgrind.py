"""nginx with the module under valgrind through 50 forced renewals: no invalid memory access, no
uninitialised value used, no leak, and no growth of the heap between renewal 5 and renewal 50.

nginx runs as one process (master_process off) so that valgrind sees the ACME client, the
certificate swaps and the handshakes in one place. vgdb asks for a leak summary after 5 and after 50
renewals; the exit leak check must find nothing lost in nginx's, the module's or libacme's frames."""

import os
import re
import shutil
import signal
import subprocess

import pytest

import harness
from nginx_harness import (NGINX_BIN, Nginx, cert_issuer, cert_serial, force_renewal, issuer_block,
                          managed_servers, tls_cert)

RENEWALS = int(os.environ.get("ACME_VALGRIND_RENEWALS", "50"))
NAME = "valgrind.example.org"

pytestmark = pytest.mark.skipif(shutil.which("valgrind") is None or shutil.which("vgdb") is None,
                                reason="valgrind is not installed")


def _summary(text):
    """{'definitely': bytes, 'indirectly': ..., 'possibly': ..., 'reachable': ...} of the last leak
    summary in a valgrind log."""
    out = {}
    for kind, key in (("definitely lost", "definitely"), ("indirectly lost", "indirectly"),
                      ("possibly lost", "possibly"), ("still reachable", "reachable")):
        m = re.findall(rf"{kind}: ([\d,]+) (?:\([+-]?[\d,]+\) )?bytes", text)
        assert m, f"no \"{kind}\" in valgrind's summary:\n{text[-2000:]}"
        out[key] = int(m[-1].replace(",", ""))
    return out


def _leak_summary(pid):
    """Ask the running valgrind (through vgdb) for a leak summary; it answers on vgdb's output."""
    cp = subprocess.run(["vgdb", f"--pid={pid}", "leak_check", "summary"], capture_output=True,
                        text=True, timeout=180)
    assert "still reachable" in cp.stdout + cp.stderr, cp.stdout + cp.stderr
    return _summary(cp.stdout + cp.stderr)


MEMCHECK_ERRORS = re.compile(r"Invalid (read|write|free)|Mismatched free|uninitialised|"
                             r"Source and destination overlap|Syscall param .* points to unaddressable")


def _records(text):
    """valgrind's error and loss records: the paragraphs of its log."""
    body = re.sub(r"^==\d+== ?", "", text, flags=re.M)
    return [p for p in body.split("\n\n") if p.strip()]


def _ours(record):
    return re.search(r"ngx_http_acme|\bacme_|ngx_acme_module|common/acme", record) is not None


@pytest.mark.slow
def test_fifty_renewals_under_valgrind(pebble, procs, server_logs, tmp_path):
    https = harness.free_port()
    conf = issuer_block("pebble", pebble, tmp_path / "state") + managed_servers(
        pebble.http_port, https, NAME, locations=['location = /acme { acme_status renew=on renew_interval=1s; }'])
    ng = Nginx(tmp_path / "nginx", procs, server_logs, conf, workers=1, level="notice")
    ng.conf_path.write_text(ng.conf_path.read_text().replace("master_process on;", "master_process off;"))
    vlog = tmp_path / "valgrind.log"
    cmd = ["valgrind", "--tool=memcheck", "--leak-check=full", "--show-leak-kinds=definite,indirect",
           "--errors-for-leak-kinds=definite,indirect", "--track-origins=no", "--num-callers=30",
           "--vgdb=yes", "--vgdb-error=999999", f"--log-file={vlog}",
           NGINX_BIN, "-p", str(ng.dir), "-c", str(ng.conf_path), "-e", str(ng.error_log)]
    ng.proc = procs.start(cmd, name="nginx-valgrind", log_path=ng.dir / "stdout.log",
                          wait_port=https, timeout=120)
    pid = ng.proc.pid
    roots = pebble.roots(0)

    def served():
        try:
            der = tls_cert(https, NAME, timeout=30)
        except OSError:
            return None
        return cert_serial(der) if "Pebble" in cert_issuer(der) else None

    serial = harness.wait_for(served, 120, interval=0.5, what="the first certificate under valgrind")
    assert roots
    serials = [serial]
    mid = None
    for i in range(1, RENEWALS + 1):
        r = force_renewal(https, NAME, NAME, request_timeout=30)
        assert r.status == 202, r
        serial = harness.wait_for(lambda: (lambda s: s if s and s != serials[-1] else None)(served()),
                                  120, interval=0.3, what=f"renewal {i} served")
        serials.append(serial)
        if i == 5:
            mid = _leak_summary(pid)
    end = _leak_summary(pid)
    assert len(set(serials)) == RENEWALS + 1

    # no growth of what is still allocated (parsed certificates, keys, curl handles, status
    # snapshots) across 45 renewals: a per-renewal leak of even 100 bytes would show
    growth = end["reachable"] + end["definitely"] + end["indirectly"] + end["possibly"] \
        - (mid["reachable"] + mid["definitely"] + mid["indirectly"] + mid["possibly"])
    print("leak summaries after 5 and after all renewals:", mid, end)
    assert growth < 45 * 100, f"heap grew by {growth} bytes over 45 renewals: {mid} -> {end}"

    ng.proc.send_signal(signal.SIGQUIT)
    ng.proc.wait_exit(timeout=120)
    text = vlog.read_text(errors="replace")
    records = _records(text)
    bad = [r for r in records if MEMCHECK_ERRORS.search(r)]
    assert not bad, "valgrind found memory errors:\n\n" + "\n\n".join(bad[:10])
    # nginx itself leaves one 8-byte environment block in single-process mode: only our frames count
    lost = [r for r in records if re.search(r"are (definitely|indirectly) lost", r) and _ours(r)]
    assert not lost, "leaks in the module or libacme:\n\n" + "\n\n".join(lost[:10])
    assert re.search(r"ERROR SUMMARY: \d+ errors", text), text[-3000:]
