#!/usr/bin/python3
"""make test: unit tests, then the end-to-end suite, then one summary line for CI."""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_unit import run_unit  # noqa: E402


def main():
    up, uf = run_unit(sys.argv[1:])
    print(f"unit: {up} passed, {uf} failed", flush=True)
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE",
           os.path.join(here, "e2e")]
    extra = os.environ.get("PYTEST_ARGS")
    if extra:
        cmd += extra.split()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stdout.write(p.stdout)
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
    print(f"e2e: {ep} passed, {ef} failed")
    total_p, total_f = up + ep, uf + ef
    print(f"{total_p} passed, {total_f} failed")
    return 1 if total_f or total_p == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
