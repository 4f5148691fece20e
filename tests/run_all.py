#!/usr/bin/python3
"""make test: unit tests, then the end-to-end suite, then one summary line for CI.

The end-to-end suite runs in two passes when pytest-xdist is there: every test not marked `serial` on
$E2E_JOBS processes (default: auto, one per CPU), then the `serial` ones (latency and time bounds) alone.
E2E_JOBS=1 (or no pytest-xdist): one pass, one process. $PYTEST_ARGS goes to both passes."""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_unit import run_unit  # noqa: E402


def e2e_passes(here, extra):
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE",
           os.path.join(here, "e2e")] + extra
    jobs = os.environ.get("E2E_JOBS", "auto")
    try:
        import xdist  # noqa: F401
    except ImportError:
        jobs = "1"
    if jobs in ("", "0", "1"):
        return [cmd]
    return [cmd + ["-n", jobs, "-m", "not serial"], cmd + ["-m", "serial"]]


def run_pass(cmd):
    """(passed, failed) of one pytest run, its output shown."""
    print(" ".join(cmd[1:]), flush=True)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stdout.write(p.stdout)
    sys.stdout.flush()
    ep = ef = 0
    last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    m = re.search(r"(\d+) passed", last)
    if m:
        ep = int(m.group(1))
    for kw in ("failed", "error", "errors"):
        m = re.search(r"(\d+) " + kw, last)
        if m:
            ef += int(m.group(1))
    if p.returncode not in (0, 5) and ef == 0:
        ef = 1
    return ep, ef


def main():
    up, uf = run_unit(sys.argv[1:])
    print(f"unit: {up} passed, {uf} failed", flush=True)
    here = os.path.dirname(os.path.abspath(__file__))
    extra = os.environ.get("PYTEST_ARGS", "").split()
    ep = ef = 0
    for cmd in e2e_passes(here, extra):
        p, f = run_pass(cmd)
        ep, ef = ep + p, ef + f
    print(f"e2e: {ep} passed, {ef} failed")
    total_p, total_f = up + ep, uf + ef
    print(f"{total_p} passed, {total_f} failed")
    return 1 if total_f or total_p == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
