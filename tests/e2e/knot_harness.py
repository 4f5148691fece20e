"""Knot DNS (Debian `knot`) as the authoritative server of test zones, for DNS validation.

It listens on port 53 of a loopback address of its own (127.53.X.Y, free at start): the zones' NS
and SOA MNAME name it, and the client checks propagation on every NS at port 53 as in production,
so binding port 53 needs root (tests skip otherwise). Names have A records 127.0.0.1 through `*`,
except a name that also has a name below it (`_acme-challenge.NAME`, RFC 4592): a test answering
HTTP-01 for such a name gives it an A record of its own. Zones accept RFC 2136 updates signed with
the TSIG keys `acme-key-sha256`, `-sha384` and `-sha512` (leakcheck's constants); `ro-key` is
known to Knot but may not update. Pebble (`-dnsserver`) resolves the HTTP-01 names through it.
"""

import base64
import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import leakcheck
from harness import HarnessError, Process, dns_query, wait_for

KNOTD_BIN = shutil.which("knotd") or "/usr/sbin/knotd"
KNOTC_BIN = shutil.which("knotc") or "/usr/sbin/knotc"


def available():
    """None when Knot can run here, else why not."""
    if not os.path.exists(KNOTD_BIN):
        return "knotd is not installed (apt-get install knot)"
    if os.geteuid() != 0:
        return "Knot must bind port 53 of a loopback address (root)"
    return None


def free_address(taken=()):
    """A loopback address whose port 53 is free (UDP and TCP)."""
    for _ in range(50):
        addr = f"127.53.{random.randint(1, 254)}.{random.randint(1, 254)}"
        if addr in taken:
            continue
        ok = True
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            s = socket.socket(socket.AF_INET, kind)
            try:
                s.bind((addr, 53))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return addr
    raise HarnessError("no free 127.53.x.y:53")


class Knot:
    """knotd with zones ZONES (name -> extra zone lines). ns_addresses: the zones' NS (ns1, ns2, ...:
    this server's address alone by default; two servers of one zone list the same ones), each an
    address or a list of addresses."""

    def __init__(self, workdir, zones, address=None, ns_addresses=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.zones = zones
        self.address = address
        self.ns_addresses = ns_addresses
        self.proc = None
        self.log_path = self.workdir / "knotd.log"
        # name -> (algorithm, base64 secret); the suite's constants, which no message may show
        self.keys = {
            "acme-key-sha256": ("hmac-sha256", base64.b64encode(leakcheck.TSIG_KEY_SHA256).decode()),
            "acme-key-sha384": ("hmac-sha384", base64.b64encode(leakcheck.TSIG_KEY_SHA384).decode()),
            "acme-key-sha512": ("hmac-sha512", base64.b64encode(leakcheck.TSIG_KEY_SHA512).decode()),
            "ro-key": ("hmac-sha256", base64.b64encode(leakcheck.TSIG_KEY_READONLY).decode()),
        }

    @property
    def dns_address(self):
        return f"{self.address}:53"

    def key_file(self, name, path=None, fmt="bind"):
        """Write key NAME to a file (BIND's key statement, or fmt="line": ALG:NAME:SECRET)."""
        alg, secret = self.keys[name]
        path = Path(path or self.workdir / f"{name}.key")
        if fmt == "bind":
            path.write_text(f'key "{name}" {{\n\talgorithm {alg};\n\tsecret "{secret}";\n}};\n')
        else:
            path.write_text(f"{alg}:{name}:{secret}\n")
        path.chmod(0o600)
        return path

    def secrets(self):
        return [s for (_, s) in self.keys.values()]

    def _write(self):
        (self.workdir / "zones").mkdir(exist_ok=True)
        (self.workdir / "db").mkdir(exist_ok=True)
        keys = "".join(f"  - id: {n}\n    algorithm: {a}\n    secret: {s}\n"
                       for n, (a, s) in self.keys.items())
        update_keys = ", ".join(n for n in self.keys if n != "ro-key")
        zones = ""
        ns = self.ns_addresses or [self.address]
        for z, extra in self.zones.items():
            zones += f"  - domain: {z}\n    acl: [acme_update]\n"
            (self.workdir / "zones" / f"{z}.zone").write_text(
                f"$ORIGIN {z}.\n$TTL 60\n"
                f"@ SOA ns1.{z}. hostmaster.{z}. 1 3600 600 86400 60\n"
                + "".join(f"@ NS ns{i + 1}.{z}.\n" + "".join(f"ns{i + 1} A {x}\n" for x in
                                                            (a if isinstance(a, (list, tuple)) else [a]))
                          for i, a in enumerate(ns)) +
                "@ A 127.0.0.1\n"
                "* A 127.0.0.1\n" + extra)
        (self.workdir / "knot.conf").write_text(
            "server:\n"
            f"  rundir: {self.workdir}\n"
            f"  listen: {self.address}@53\n"
            "log:\n"
            "  - target: stderr\n"
            "    any: info\n"
            "database:\n"
            f"  storage: {self.workdir / 'db'}\n"
            "key:\n" + keys +
            "acl:\n"
            "  - id: acme_update\n"
            f"    key: [{update_keys}]\n"
            "    action: update\n"
            "    update-type: TXT\n"      # as docs/acmectl.md advises
            "template:\n"
            "  - id: default\n"
            f"    storage: {self.workdir / 'zones'}\n"
            "    file: \"%s.zone\"\n"
            "    zonefile-sync: -1\n"
            "    zonefile-load: whole\n"
            "    journal-content: none\n"
            "zone:\n" + zones)

    def start(self, timeout=10.0):
        self.address = self.address or free_address()
        self._write()
        self.proc = Process([KNOTD_BIN, "-c", str(self.workdir / "knot.conf")], name="knotd",
                            log_path=self.log_path, cwd=self.workdir)
        self.proc.start()
        zone = next(iter(self.zones))

        def ready():
            try:
                return dns_query(zone, "SOA", server=self.address, port=53, timeout=0.3).rcode == 0
            except OSError:
                return False
        wait_for(ready, timeout, what="knotd")
        return self

    def stop(self):
        if self.proc:
            self.proc.stop()

    def knotc(self, *args):
        p = subprocess.run([KNOTC_BIN, "-c", str(self.workdir / "knot.conf")] + list(args),
                           capture_output=True, text=True, timeout=20)
        if p.returncode != 0:
            raise HarnessError(f"knotc {' '.join(args)}: {p.stdout}{p.stderr}")
        return p.stdout

    def add_txt(self, zone, owner, value):
        """Add a TXT record behind the client's back (a record a dead process left)."""
        self.knotc("zone-begin", zone)
        self.knotc("zone-set", zone, owner, "60", "TXT", f'"{value}"')
        self.knotc("zone-commit", zone)

    def txt(self, name):
        """The TXT values at name, straight from Knot."""
        return dns_query(name, "TXT", server=self.address, port=53).values("TXT")

    def wait_txt(self, name, pred, timeout=10.0):
        wait_for(lambda: pred(self.txt(name)), timeout, what=f"TXT {name}")
        time.sleep(0)
