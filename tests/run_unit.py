#!/usr/bin/python3
"""Run cmocka unit-test binaries and count their results."""
import re
import subprocess
import sys


def run_unit(binaries):
    passed = failed = 0
    for b in binaries:
        p = subprocess.run([b], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=300)
        out = p.stdout
        sys.stdout.write(out)
        m = re.search(r"\[  PASSED  \] (\d+) test", out)
        f = re.search(r"\[  FAILED  \] (\d+) test", out)
        np = int(m.group(1)) if m else 0
        nf = int(f.group(1)) if f else 0
        if p.returncode != 0 and nf == 0:
            # crashed or aborted before cmocka could count: the whole binary failed
            print(f"{b}: exited with status {p.returncode}")
            nf = 1
        passed += np
        failed += nf
    return passed, failed


if __name__ == "__main__":
    p, f = run_unit(sys.argv[1:])
    print(f"unit: {p} passed, {f} failed")
    sys.exit(1 if f else 0)
