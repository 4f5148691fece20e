#!/usr/bin/env python3
"""make test-packages: the Debian packages on this machine.

Builds the packages (make deb), installs them with apt-get, checks files, modes, owners and the enabled
modules, runs `nginx -t` and `apache2ctl -t` on /etc's configuration, issues a certificate from Pebble
with the packaged nginx module through a site in /etc/nginx/sites-enabled (default state_path under
/var/lib/nginx/acme, workers as www-data), upgrades (the state stays, an admin's disabling stays),
removes (the state stays) and purges (the state goes, and the purge says so). The stream and mail
packages are installed beside it with Debian's libnginx-mod-stream/-mail present, then with them
removed (apt removes the acme module with them, nginx -t still passes); Debian's packages are put back
as found (installed or not, manual or auto) and /etc/nginx is compared file by file with its state
before.

/etc/nginx, /etc/apache2 and /var/lib/apache2 are copied first and put back at the end, every process
started here is stopped, and the packages are purged even when a step fails. Needs root. Refuses to run
when the packages are already installed, when their state directories exist or when the system's nginx
or Apache is running (it would have to restart them).

  tests/packaging/test_packages.py [--no-build]      (ACME_BUILD: the build directory, default build/)

Ends with "N passed, N failed"; exit status 1 when something failed.
"""

import argparse
import grp
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import harness  # noqa: E402

PKGS = ["libnginx-mod-http-acme", "libapache2-mod-acme", "acmectl"]
# the stream and mail modules (issue #19): contents checked, then installed and removed with Debian's
# libnginx-mod-stream / libnginx-mod-mail present and absent (contexts_present, contexts_absent)
CONTEXT_PKGS = {"libnginx-mod-stream-acme": ("stream", "libnginx-mod-stream"),
                "libnginx-mod-mail-acme": ("mail", "libnginx-mod-mail")}
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
DEBIAN_MODULES = ["libnginx-mod-stream", "libnginx-mod-mail"]
ENABLED = Path("/etc/nginx/modules-enabled")
NGINX_STATE = Path("/var/lib/nginx/acme")
APACHE_STATE = Path("/var/lib/apache2/acme")
NGINX_SO = Path("/usr/lib/nginx/modules/ngx_http_acme_module.so")
NGINX_LOAD = Path("/usr/share/nginx/modules-available/mod-http-acme.conf")
NGINX_LINK = Path("/etc/nginx/modules-enabled/50-mod-http-acme.conf")
APACHE_SO = Path("/usr/lib/apache2/modules/mod_acme.so")
APACHE_LOAD = Path("/etc/apache2/mods-available/acme.load")
APACHE_CONF = Path("/etc/apache2/mods-available/acme.conf")
APACHE_LINK = Path("/etc/apache2/mods-enabled/acme.load")
ACMECTL = Path("/usr/bin/acmectl")
MANPAGE = Path("/usr/share/man/man1/acmectl.1.gz")
NGINX_SITE = Path("/etc/nginx/sites-available/acme-package-test")
NGINX_SITE_LINK = Path("/etc/nginx/sites-enabled/acme-package-test")
APACHE_SITE = Path("/etc/apache2/sites-available/acme-package-test.conf")
NGINX_ERROR_LOG = Path("/var/log/nginx/error.log")
# what the test puts back as it was
RESTORED = [Path("/etc/nginx"), Path("/etc/apache2"), Path("/var/lib/apache2")]
NAME = "pkg.example.org"
WORKER = "www-data"
UPGRADE_SUFFIX = "+pkgtest1"


def out(msg=""):
    """print() that never raises: a closed stdout (| head) must not cut the cleanup short."""
    try:
        print(msg, flush=True)
    except (OSError, ValueError):
        pass


class Abort(Exception):
    """A step failed in a way that makes the following steps meaningless."""


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            out(f"PASS {name}")
        else:
            self.failed += 1
            out(f"FAIL {name}" + (f": {detail}" if detail else ""))
        return ok

    def require(self, name, ok, detail=""):
        if not self.check(name, ok, detail):
            raise Abort(name)


R = Results()


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def run(args, timeout=600, check=False, env=None, input=None):
    """Run a command; returns CompletedProcess with .out (stdout+stderr)."""
    e = harness.child_env(env)
    cp = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        timeout=timeout, env=e, input=input, text=True, errors="replace")
    cp.out = cp.stdout
    if check and cp.returncode != 0:
        raise Abort(f"{' '.join(map(str, args))} exited {cp.returncode}:\n{cp.out[-3000:]}")
    return cp


def apt_get(*args, timeout=900):
    return run(["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300",
                "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold", *args],
               timeout=timeout, env={"DEBIAN_FRONTEND": "noninteractive"})


def pkg_status(pkg):
    cp = run(["dpkg-query", "-W", "-f=${Status} ${Version}", pkg])
    return cp.out.strip() if cp.returncode == 0 else ""


def installed_version(pkg):
    st = pkg_status(pkg)
    m = re.match(r"install ok installed (\S+)", st)
    return m.group(1) if m else None


def owner(path):
    st = os.lstat(path)
    return f"{pwd.getpwuid(st.st_uid).pw_name}:{grp.getgrgid(st.st_gid).gr_name}"


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def file_facts(path, want_mode, want_owner="root:root"):
    """(ok, detail) for a regular file's existence, mode and owner."""
    p = Path(path)
    if not p.is_file():
        return False, f"{p} missing"
    m, o = mode(p), owner(p)
    if m != want_mode or o != want_owner:
        return False, f"{p}: {m:04o} {o}, want {want_mode:04o} {want_owner}"
    return True, ""


def tree_snapshot(root):
    """{relative path: (kind, mode, uid, gid, content hash or link target)} of a directory tree."""
    root = Path(root)
    snap = {}
    if not root.exists():
        return snap
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                snap[rel] = ("l", 0, st.st_uid, st.st_gid, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                snap[rel] = ("d", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, "")
            else:
                h = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
                snap[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, h)
    st = os.lstat(root)
    snap["."] = ("d", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, "")
    return snap


def snapshot_diff(a, b):
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            out.append(f"{k}: {a.get(k)} -> {b.get(k)}")
    return out


def nginx_t(conf=None):
    return run(["/usr/sbin/nginx", "-t", "-q"] + (["-c", conf] if conf else []), timeout=60)


def apt_mark_auto(pkg):
    return pkg in run(["apt-mark", "showauto", pkg]).out.split()


def apache2ctl_t():
    return run(["/usr/sbin/apache2ctl", "-t"], timeout=60)


def pid_alive(pidfile):
    try:
        pid = int(Path(pidfile).read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def served_cert(port, sni, roots_pem):
    """A verified handshake (chain to roots_pem, name sni): the leaf in DER, or None."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=roots_pem)
    try:
        with socket.create_connection((harness.LOOPBACK, port), timeout=3) as s:
            with ctx.wrap_socket(s, server_hostname=sni) as t:
                return t.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None


def https_body(port, sni, roots_pem, path="/"):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=roots_pem)
    with socket.create_connection((harness.LOOPBACK, port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=sni) as t:
            t.sendall(f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
            buf = b""
            while True:
                chunk = t.recv(65536)
                if not chunk:
                    break
                buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), body.decode(errors="replace")


def repack(deb, workdir, suffix):
    """A copy of `deb` with `suffix` appended to its version (an upgrade to install)."""
    d = Path(workdir) / (Path(deb).stem + "-x")
    shutil.rmtree(d, ignore_errors=True)
    run(["dpkg-deb", "-R", deb, d], check=True)
    ctl = d / "DEBIAN" / "control"
    text = ctl.read_text()
    version = re.search(r"^Version: (\S+)$", text, re.M).group(1)
    ctl.write_text(re.sub(r"^Version: \S+$", f"Version: {version}{suffix}", text, flags=re.M))
    out = Path(workdir) / Path(deb).name.replace(f"_{version}_", f"_{version}{suffix}_")
    run(["dpkg-deb", "--root-owner-group", "-b", d, out], check=True)
    shutil.rmtree(d, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------------
# the steps
# --------------------------------------------------------------------------------------------------

class PackageTest:
    def __init__(self, build, no_build):
        self.build = build
        self.deb_dir = build / "deb"
        self.no_build = no_build
        self.tmp = Path(tempfile.mkdtemp(prefix="acme-pkgtest-"))
        os.chmod(self.tmp, 0o755)     # the nginx workers (www-data) read the CA file in it
        self.backup = self.tmp / "backup"
        self.snapshots = {}
        self.procs = []
        self.touched = False          # the machine was changed: restore at the end
        self.debs = {}
        self.nginx = None
        self.pebble = None
        self.chall = None
        self.log_offset = 0
        self.debian_modules = {}      # libnginx-mod-stream/-mail: (installed version or None, auto)
        self.debian_modules_restored = False
        self.debian_modules_rc = {}   # ... not installed but its configuration kept ("rc")
        self.own_policy_rc_d = False

    # -- preflight -----------------------------------------------------------------------------
    def preflight(self):
        R.require("running as root", os.geteuid() == 0, "installing packages needs root")
        for p in PKGS + list(CONTEXT_PKGS):
            st = pkg_status(p)
            R.require(f"{p} not installed before the test", not st or "not-installed" in st,
                      f"dpkg says \"{st}\"; purge it first (apt-get purge {p}); a test run that was "
                      "killed leaves its copies of /etc/nginx, /etc/apache2 and /var/lib/apache2 in "
                      "/tmp/acme-pkgtest-*/backup")
        for d in (NGINX_STATE, APACHE_STATE):
            R.require(f"{d} absent before the test", not d.exists(),
                      f"{d} exists: it may hold someone's accounts and certificates; move it away first")
        R.require("the system's nginx is not running", not pid_alive("/run/nginx.pid"),
                  "stop it first (the test runs nginx with /etc/nginx and would restart it)")
        R.require("the system's Apache is not running", not pid_alive("/run/apache2/apache2.pid"),
                  "stop it first (installing a module restarts it)")
        # installing and removing nginx modules triggers nginx-common's "reload": never (re)start a
        # system nginx here (other tests may use this machine); a policy-rc.d answering 101 forbids it
        if POLICY_RC_D.exists():
            cp = run([POLICY_RC_D, "nginx", "start"])
            R.require(f"{POLICY_RC_D} forbids starting nginx (exit 101)", cp.returncode == 101,
                      f"exit {cp.returncode}")
        else:
            POLICY_RC_D.write_text("#!/bin/sh\n# tests/packaging/test_packages.py (removed when it ends)\n"
                                   "exit 101\n")
            os.chmod(POLICY_RC_D, 0o755)
            self.own_policy_rc_d = True
        for t in ("/usr/sbin/nginx", "/usr/sbin/apache2ctl", "/usr/sbin/a2enmod", harness.PEBBLE_BIN,
                  harness.CHALLTESTSRV_BIN):
            R.require(f"{t} present", Path(t).exists(), "make deps installs it")

    def build_debs(self):
        if not self.no_build:
            t0 = time.monotonic()
            cp = run(["make", "--no-print-directory", "-C", REPO, f"BUILD={self.build}", "deb"],
                     timeout=3600)
            out(cp.out[-1500:] if cp.returncode else f"make deb: {time.monotonic() - t0:.0f} s")
            R.require("make deb", cp.returncode == 0, "see above")
        for p in PKGS + list(CONTEXT_PKGS):
            found = sorted(self.deb_dir.glob(f"{p}_*.deb"))
            R.require(f"{p} .deb built", len(found) == 1, f"{[str(f) for f in found]} in {self.deb_dir}")
            self.debs[p] = found[0]

    def check_debs(self):
        abi = re.search(r"nginx:abi=(\S+)",
                        Path("/usr/share/nginx/src/debian/libnginx-mod.abisubstvars").read_text()).group(1)
        dep = run(["dpkg-deb", "-f", self.debs["libnginx-mod-http-acme"], "Depends"]).out
        R.check(f"libnginx-mod-http-acme depends on {abi}", abi in dep, dep.strip())
        api = re.search(r"apache2-api-\d+", run(["dpkg-query", "-W", "-f=${Provides}", "apache2-bin"]).out)
        dep = run(["dpkg-deb", "-f", self.debs["libapache2-mod-acme"], "Depends"]).out
        R.check(f"libapache2-mod-acme depends on {api.group(0) if api else 'apache2-api-*'}",
                api is not None and api.group(0) in dep, dep.strip())
        for p, paths in (("libnginx-mod-http-acme", [NGINX_SO, NGINX_LOAD]),
                         ("libapache2-mod-acme", [APACHE_SO, APACHE_LOAD, APACHE_CONF]),
                         ("acmectl", [ACMECTL, MANPAGE])):
            listing = run(["dpkg-deb", "-c", self.debs[p]]).out
            missing = [str(x) for x in paths if f".{x}\n" not in listing + "\n" and f".{x} " not in listing]
            R.check(f"{p} ships {', '.join(x.name for x in paths)}", not missing, f"missing {missing}")
        listing = run(["dpkg-deb", "-c", self.debs["libnginx-mod-http-acme"]]).out
        R.check("the state directory is made by postinst, not shipped", "var/lib" not in listing)
        self.check_context_debs()

    def check_context_debs(self):
        """libnginx-mod-stream-acme, libnginx-mod-mail-acme: their module, load file, dependencies and a
        load order after Debian's stream/mail module and ngx_http_acme_module (whose symbols they use)."""
        version = run(["dpkg-deb", "-f", self.debs["libnginx-mod-http-acme"], "Version"]).out.strip()
        for p, (ctx, debian_pkg) in CONTEXT_PKGS.items():
            so = f"/usr/lib/nginx/modules/ngx_{ctx}_acme_module.so"
            load = f"/usr/share/nginx/modules-available/mod-{ctx}-acme.conf"
            listing = run(["dpkg-deb", "-c", self.debs[p]]).out
            R.check(f"{p} ships {so} and {load}", f".{so}\n" in listing and f".{load}\n" in listing, listing)
            dep = run(["dpkg-deb", "-f", self.debs[p], "Depends"]).out
            R.check(f"{p} depends on libnginx-mod-http-acme (= {version}) and {debian_pkg}",
                    f"libnginx-mod-http-acme (= {version})" in dep and re.search(rf"\b{debian_pkg}\b", dep)
                    is not None, dep.strip())
            with tempfile.TemporaryDirectory() as d:
                run(["dpkg-deb", "-x", self.debs[p], d], check=True)
                text = Path(d, load.lstrip("/")).read_text()
                R.check(f"{load} loads the module", text.strip() == f"load_module modules/ngx_{ctx}_acme_module.so;",
                        text)
                run(["dpkg-deb", "-e", self.debs[p], f"{d}/DEBIAN"], check=True)
                postinst = Path(d, "DEBIAN", "postinst").read_text()
            m = re.search(rf"mod-{ctx}-acme\.conf:(\S+)", postinst)
            link = m.group(1) if m else ""
            R.check(f"{p} enables {link or '?'} after 50-mod-{ctx}.conf and 50-mod-http-acme.conf",
                    link > f"50-mod-{ctx}.conf" and link > "50-mod-http-acme.conf", postinst[-800:])

    # -- backup / restore ----------------------------------------------------------------------
    def backup_of(self, d):
        """Where the copy of `d` goes: /etc/apache2 -> BACKUP/etc_apache2 (one name per directory)."""
        return self.backup / str(d).strip("/").replace("/", "_")

    def take_backup(self):
        self.backup.mkdir()
        out(f"  (copies of {', '.join(map(str, RESTORED))} in {self.backup}; put back at the end)")
        for d in RESTORED:
            self.snapshots[d] = tree_snapshot(d)
            if d.exists():
                run(["cp", "-a", d, self.backup_of(d)], check=True)
        self.log_offset = NGINX_ERROR_LOG.stat().st_size if NGINX_ERROR_LOG.exists() else 0

    def restore(self):
        for d in RESTORED:
            if tree_snapshot(d) == self.snapshots[d]:
                continue
            b = self.backup_of(d)
            if d.exists():
                shutil.rmtree(d)
            if b.exists():
                run(["cp", "-a", b, d], check=True)
        for d in RESTORED:
            diff = snapshot_diff(self.snapshots[d], tree_snapshot(d))
            R.check(f"{d} is as it was", not diff, "\n  ".join(diff[:20]))

    # -- install -------------------------------------------------------------------------------
    def install(self):
        self.touched = True
        t0 = time.monotonic()
        cp = apt_get("install", *[self.debs[p].resolve() for p in PKGS])
        R.require("apt-get install ./build/deb/*.deb", cp.returncode == 0, cp.out[-3000:])
        out(f"  (installed in {time.monotonic() - t0:.0f} s)")
        for p in PKGS:
            R.check(f"{p} installed", installed_version(p) is not None, pkg_status(p))

    def check_installed(self):
        for path, m in ((NGINX_SO, 0o644), (NGINX_LOAD, 0o644), (APACHE_SO, 0o644), (APACHE_LOAD, 0o644),
                        (APACHE_CONF, 0o644), (ACMECTL, 0o755), (MANPAGE, 0o644)):
            ok, detail = file_facts(path, m)
            R.check(f"{path} {m:04o} root:root", ok, detail)
        R.check("the nginx load file loads the module",
                NGINX_LOAD.is_file() and NGINX_LOAD.read_text().strip()
                == "load_module modules/ngx_http_acme_module.so;",
                NGINX_LOAD.read_text() if NGINX_LOAD.is_file() else "missing")
        R.check(f"{NGINX_LINK} enabled (-> {NGINX_LOAD})",
                NGINX_LINK.is_symlink() and os.readlink(NGINX_LINK) == str(NGINX_LOAD),
                os.readlink(NGINX_LINK) if NGINX_LINK.is_symlink() else "no link")
        R.check("a2enmod acme: mods-enabled/acme.load and acme.conf",
                APACHE_LINK.is_symlink() and Path("/etc/apache2/mods-enabled/acme.conf").is_symlink()
                and APACHE_LINK.resolve() == APACHE_LOAD)
        R.check("acme.load pulls in mod_ssl (a2enmod dependency)",
                Path("/etc/apache2/mods-enabled/ssl.load").exists())
        cp = run(["a2query", "-m", "acme"])
        R.check("a2query -m acme: enabled", cp.returncode == 0, cp.out.strip())
        for d in (NGINX_STATE, APACHE_STATE):
            ok = d.is_dir() and not d.is_symlink() and mode(d) == 0o700 and owner(d) == f"{WORKER}:{WORKER}"
            R.check(f"{d} is {WORKER}:{WORKER} 0700", ok,
                    f"{mode(d):04o} {owner(d)}" if d.exists() else "missing")
        cp = run([ACMECTL, "--help"])
        R.check("acmectl --help", cp.returncode == 0 and "usage: acmectl" in cp.out, cp.out[-500:])
        cp = run(["sh", "-c", f"zcat {MANPAGE} | groff -man -Tutf8 -ww -z 2>&1 || true"]) \
            if shutil.which("groff") else None
        if cp is not None:
            R.check("acmectl.1 formats without warnings", cp.out.strip() == "", cp.out[-1000:])

    def config_tests(self):
        cp = nginx_t()
        R.check("nginx -t with the module enabled", cp.returncode == 0, cp.out[-2000:])
        cp = apache2ctl_t()
        R.check("apache2ctl -t with mod_acme enabled", cp.returncode == 0 and "Syntax OK" in cp.out,
                cp.out[-2000:])
        # an SSL virtual host with ACMECertificate on, in /etc/apache2's layout (configuration only: a
        # running Apache would listen on ports.conf's 80/443)
        APACHE_SITE.write_text(
            "<VirtualHost 127.0.0.1:8443>\n"
            f"    ServerName {NAME}\n"
            "    SSLEngine on\n"
            "    ACMECertificate on\n"
            "</VirtualHost>\n"
            "ACMEContact admin@example.org\n"
            "ACMEAcceptTermsOfService on\n")
        cp = run(["a2ensite", "-q", APACHE_SITE.stem])
        R.check("a2ensite acme-package-test", cp.returncode == 0, cp.out)
        cp = apache2ctl_t()
        R.check("apache2ctl -t with an ACMECertificate virtual host", cp.returncode == 0
                and "Syntax OK" in cp.out, cp.out[-2000:])
        run(["a2dissite", "-q", APACHE_SITE.stem])
        APACHE_SITE.unlink()
        if APACHE_STATE.exists():
            R.check(f"{APACHE_STATE} still {WORKER} 0700 after apache2ctl -t",
                    mode(APACHE_STATE) == 0o700 and owner(APACHE_STATE) == f"{WORKER}:{WORKER}",
                    f"{mode(APACHE_STATE):04o} {owner(APACHE_STATE)}")

    # -- the stream and mail packages (issue #19) ---------------------------------------------------
    def record_debian_modules(self):
        for deb in DEBIAN_MODULES:
            self.debian_modules[deb] = (installed_version(deb), apt_mark_auto(deb))
            self.debian_modules_rc[deb] = "config-files" in pkg_status(deb)
        out("  (Debian's modules before: " + ", ".join(
            f"{d} {v or 'absent'}{' auto' if a else ''}" for d, (v, a) in self.debian_modules.items()) + ")")

    def restore_debian_modules(self):
        """libnginx-mod-stream/-mail as found: installed (same version, same auto mark) or not."""
        for deb, (version, auto) in self.debian_modules.items():
            now = installed_version(deb)
            if version is None and now is not None:
                # removed but its configuration kept (a .removed link) or never there
                apt_get("remove" if self.debian_modules_rc[deb] else "purge", deb)
            elif version is not None and now != version:
                apt_get("install", f"{deb}={version}")
            if version is not None:
                run(["apt-mark", "auto" if auto else "manual", deb])
        self.debian_modules_restored = True
        for deb, (version, auto) in self.debian_modules.items():
            R.check(f"{deb} as found ({version or 'absent'}{', auto' if auto else ''})",
                    installed_version(deb) == version and (version is None or apt_mark_auto(deb) == auto),
                    f"{pkg_status(deb)}, auto {apt_mark_auto(deb)}")

    def context_conf(self, contexts):
        """A configuration in the test's directory with acme_certificate in http and in each of
        `contexts`, loading /etc/nginx/modules-enabled/*.conf as Debian's nginx.conf does (so that
        the packages' links and their order are what is tested; /etc/nginx itself is not edited)."""
        ports = [harness.free_port() for _ in range(3)]
        text = f"""\
# written by tests/packaging/test_packages.py
include /etc/nginx/modules-enabled/*.conf;
pid {self.tmp}/ctx-nginx.pid;
error_log {self.tmp}/ctx-error.log;
events {{ }}
http {{
    acme_issuer pebble {{
        uri https://127.0.0.1:14000/dir;
        contact admin@example.org;
        accept_terms_of_service;
        state_path {self.tmp}/ctx-state;
    }}
    server {{
        listen 127.0.0.1:{ports[0]} ssl;
        server_name {NAME};
        acme_certificate pebble;
    }}
}}
"""
        if "stream" in contexts:
            text += f"""
stream {{
    server {{
        listen 127.0.0.1:{ports[1]} ssl;
        acme_certificate pebble stream.{NAME};
        proxy_pass 127.0.0.1:9;
    }}
}}
"""
        if "mail" in contexts:
            text += f"""
mail {{
    auth_http 127.0.0.1:9/auth;
    server {{
        listen 127.0.0.1:{ports[2]} ssl;
        protocol imap;
        server_name mail.{NAME};
        acme_certificate pebble;
    }}
}}
"""
        conf = self.tmp / ("ctx-" + "-".join(["http", *contexts]) + ".conf")
        conf.write_text(text)
        return conf

    def check_nginx_t(self, contexts, when):
        label = "+".join(["http", *contexts])
        cp = nginx_t(self.context_conf(contexts))
        R.check(f"nginx -t, acme_certificate in {label}, {when}", cp.returncode == 0, cp.out[-2000:])

    def check_nginx_t_refuses(self, ctx, when):
        """Proof that the configurations above need the module: without it, acme_certificate in ctx
        is refused (not allowed there, or unknown when the http module is gone too)."""
        cp = nginx_t(self.context_conf([ctx]))
        R.check(f"nginx -t refuses acme_certificate in {ctx} {when}",
                cp.returncode != 0 and re.search(r'unknown directive "acme_certificate"|'
                                                 r'"acme_certificate" directive is not allowed here',
                                                 cp.out) is not None, cp.out[-1000:])

    def check_context_enabled(self, ctx, enabled):
        link = ENABLED / f"60-mod-{ctx}-acme.conf"
        target = f"/usr/share/nginx/modules-available/mod-{ctx}-acme.conf"
        if not enabled:
            R.check(f"{link.name} no longer enabled", not link.exists() and not link.is_symlink(),
                    os.readlink(link) if link.is_symlink() else "")
            return
        R.check(f"{link} -> {target}", link.is_symlink() and os.readlink(link) == target,
                os.readlink(link) if link.is_symlink() else "no link")
        order = sorted(n for n in os.listdir(ENABLED) if n.endswith(".conf"))
        need = [f"50-mod-{ctx}.conf", "50-mod-http-acme.conf"]
        R.check(f"{link.name} loads after {' and '.join(need)}",
                all(n in order and order.index(n) < order.index(link.name) for n in need), str(order))

    def contexts_present(self):
        """Debian's libnginx-mod-stream/-mail installed: add the stream and mail acme packages, then
        remove them one at a time; nginx -t passes at every step with what is still loaded."""
        self.record_debian_modules()
        self.etc_nginx_before_contexts = tree_snapshot("/etc/nginx")
        for deb in DEBIAN_MODULES:
            if installed_version(deb) is None:
                cp = apt_get("install", deb)
                R.require(f"apt-get install {deb} (Debian's, absent here)", cp.returncode == 0,
                          cp.out[-2000:])
        cp = apt_get("install", *[self.debs[p].resolve() for p in CONTEXT_PKGS])
        R.require("apt-get install the stream and mail acme packages", cp.returncode == 0, cp.out[-3000:])
        R.check("apt pulled nothing else in",
                not re.search(r"^Setting up (?!libnginx-mod-(stream|mail)-acme\b)", cp.out, re.M),
                cp.out[-2000:])
        for p, (ctx, _) in CONTEXT_PKGS.items():
            R.check(f"{p} installed", installed_version(p) is not None, pkg_status(p))
            ok, detail = file_facts(f"/usr/lib/nginx/modules/ngx_{ctx}_acme_module.so", 0o644)
            R.check(f"ngx_{ctx}_acme_module.so 0644 root:root", ok, detail)
            self.check_context_enabled(ctx, True)
        self.check_nginx_t(["stream", "mail"], "all three packages installed")

        cp = apt_get("remove", "libnginx-mod-stream-acme")
        R.require("apt-get remove libnginx-mod-stream-acme", cp.returncode == 0, cp.out[-3000:])
        R.check("only libnginx-mod-stream-acme removed",
                installed_version("libnginx-mod-stream-acme") is None
                and all(installed_version(p) for p in ("libnginx-mod-stream", "libnginx-mod-mail",
                                                       "libnginx-mod-mail-acme", "libnginx-mod-http-acme")),
                cp.out[-1500:])
        self.check_context_enabled("stream", False)
        self.check_nginx_t(["mail"], "stream-acme removed (stream block without acme_certificate gone)")
        self.check_nginx_t_refuses("stream", "with libnginx-mod-stream-acme removed")

        cp = apt_get("remove", "libnginx-mod-mail-acme")
        R.require("apt-get remove libnginx-mod-mail-acme", cp.returncode == 0, cp.out[-3000:])
        self.check_context_enabled("mail", False)
        self.check_nginx_t([], "stream-acme and mail-acme removed")
        self.check_nginx_t_refuses("mail", "with libnginx-mod-mail-acme removed")
        cp = apt_get("purge", *CONTEXT_PKGS)
        R.require("apt-get purge the stream and mail acme packages", cp.returncode == 0, cp.out[-3000:])
        left = [n for n in os.listdir(ENABLED) if "-acme.conf" in n and "http" not in n]
        R.check("purge removes their modules-enabled links (and .removed)", not left, str(left))

    def contexts_absent(self):
        """Debian's libnginx-mod-stream/-mail absent: removing them takes the acme modules along, apt
        will not install the acme modules without them, and nginx -t passes without them."""
        cp = apt_get("install", *[self.debs[p].resolve() for p in CONTEXT_PKGS])
        R.require("apt-get install the stream and mail acme packages again", cp.returncode == 0,
                  cp.out[-3000:])
        cp = run(["apt-get", "remove", "-s", *DEBIAN_MODULES])
        extra = sorted(set(re.findall(r"^Remv (\S+)", cp.out, re.M)) - set(DEBIAN_MODULES)
                       - set(CONTEXT_PKGS))
        if extra:
            # a metapackage (nginx-full, nginx-extras) or another module needs them on this machine
            out(f"SKIP Debian's stream/mail modules absent: removing them would also remove {extra}")
            apt_get("purge", *CONTEXT_PKGS)
            self.restore_debian_modules()
            return
        for deb, p in (("libnginx-mod-stream", "libnginx-mod-stream-acme"),
                       ("libnginx-mod-mail", "libnginx-mod-mail-acme")):
            cp = apt_get("remove", deb)
            R.require(f"apt-get remove {deb}", cp.returncode == 0, cp.out[-3000:])
            R.check(f"removing {deb} removes {p}", installed_version(deb) is None
                    and installed_version(p) is None and f"Removing {p} " in cp.out, cp.out[-1500:])
            if deb == "libnginx-mod-stream":
                self.check_nginx_t(["mail"], f"{deb} removed")
        R.check("libnginx-mod-http-acme stays", installed_version("libnginx-mod-http-acme") is not None)
        for ctx in ("stream", "mail"):
            self.check_context_enabled(ctx, False)
        self.check_nginx_t([], "Debian's stream and mail modules removed")

        for p, (ctx, deb) in CONTEXT_PKGS.items():
            cp = run(["apt-get", "install", "-s", self.debs[p].resolve(), f"{deb}-"])
            R.check(f"apt refuses {p} while {deb} is to stay absent",
                    cp.returncode != 0 and "unmet dependencies" in cp.out.lower(), cp.out[-1500:])
            cp = run(["apt-get", "install", "-s", self.debs[p].resolve()])
            R.check(f"apt-get install -s {p}: pulls {deb}",
                    cp.returncode == 0 and re.search(rf"^Inst {deb} ", cp.out, re.M) is not None,
                    cp.out[-1500:])
        # a real install pulls Debian's packages (from the apt cache or the Debian mirror)
        cp = apt_get("install", *[self.debs[p].resolve() for p in CONTEXT_PKGS])
        R.require("apt-get install the stream and mail acme packages, Debian's modules absent",
                  cp.returncode == 0, cp.out[-3000:])
        R.check("apt installed Debian's stream and mail modules with them",
                all(installed_version(d) for d in DEBIAN_MODULES),
                ", ".join(f"{d} {pkg_status(d)}" for d in DEBIAN_MODULES))
        for ctx in ("stream", "mail"):
            self.check_context_enabled(ctx, True)
        self.check_nginx_t(["stream", "mail"], "installed with Debian's modules pulled in")
        cp = apt_get("purge", *CONTEXT_PKGS)
        R.require("apt-get purge the stream and mail acme packages", cp.returncode == 0, cp.out[-3000:])
        self.restore_debian_modules()
        diff = snapshot_diff(self.etc_nginx_before_contexts, tree_snapshot("/etc/nginx"))
        R.check("/etc/nginx after the stream/mail steps as before them (sha256 of each file, links, modes)",
                not diff, "\n  ".join(diff[:20]))

    # -- issuance through /etc/nginx -------------------------------------------------------------
    def start_pebble(self):
        ca = harness.TestCA(self.tmp / "ca")
        self.chall = harness.ChallTestSrv(self.tmp / "challtestsrv")
        self.chall.start()
        self.pebble = harness.Pebble(self.tmp / "pebble", ca, dns_server=self.chall.dns_address)
        self.pebble.start()
        self.ca_file = self.tmp / "pebble-ca.pem"
        shutil.copy(self.pebble.ca_cert, self.ca_file)
        os.chmod(self.ca_file, 0o644)

    def issue_with_nginx(self):
        self.start_pebble()
        https = harness.free_port()
        self.https_port = https
        # the stock sites-enabled/default listens on :80; this test uses loopback ports only
        default = Path("/etc/nginx/sites-enabled/default")
        if default.is_symlink() or default.exists():
            default.unlink()
        NGINX_SITE.write_text(f"""\
# written by tests/packaging/test_packages.py (removed when it ends)
acme_issuer pebble {{
    uri {self.pebble.directory_url};
    contact admin@example.org;
    ssl_trusted_certificate {self.ca_file};
    accept_terms_of_service;
}}

server {{
    listen 127.0.0.1:{self.pebble.http_port};
    server_name {NAME};
    location / {{ return 200 "plain\\n"; }}
}}

server {{
    listen 127.0.0.1:{https} ssl;
    server_name {NAME};
    acme_certificate pebble;
    location / {{ return 200 "packaged nginx\\n"; }}
    location = /acme-status {{ acme_status; allow 127.0.0.1; deny all; }}
}}
""")
        NGINX_SITE_LINK.symlink_to(NGINX_SITE)
        cp = nginx_t()
        R.require("nginx -t with acme_issuer/acme_certificate in sites-enabled", cp.returncode == 0,
                  cp.out[-2000:])
        R.check(f"{NGINX_STATE}/pebble (default state_path) made for the workers",
                (NGINX_STATE / "pebble").is_dir() and mode(NGINX_STATE / "pebble") == 0o700
                and owner(NGINX_STATE / "pebble").startswith(WORKER + ":"),
                f"{mode(NGINX_STATE / 'pebble'):04o} {owner(NGINX_STATE / 'pebble')}"
                if (NGINX_STATE / "pebble").exists() else "missing")

        self.nginx = harness.Process(["/usr/sbin/nginx", "-g", "daemon off;"], name="nginx",
                                     log_path=self.tmp / "nginx-stdout.log")
        self.procs.append(self.nginx)
        self.nginx.start()
        self.nginx.wait_port(https, timeout=15)
        roots = self.pebble.roots(0)
        t0 = time.monotonic()
        try:
            der = harness.wait_for(lambda: served_cert(https, NAME, roots), 60, interval=0.3,
                                   what="a certificate from Pebble")
        except harness.HarnessError as e:
            R.require("the packaged module serves a certificate from Pebble", False,
                      f"{e}\n{self.nginx_log()[-3000:]}")
        R.check("the packaged module serves a certificate from Pebble", True)
        out(f"  (issued and served in {time.monotonic() - t0:.1f} s)")
        text = harness.openssl("x509", "-inform", "DER", "-noout", "-subject", "-issuer", "-ext",
                               "subjectAltName", input=der).decode()
        R.check(f"its SAN is {NAME}, issued by Pebble", f"DNS:{NAME}" in text and "Pebble" in text, text)
        status, body = https_body(https, NAME, roots)
        R.check("HTTPS request answered", " 200 " in status + " " and body == "packaged nginx\n",
                f"{status} {body!r}")
        cert_dir = NGINX_STATE / "pebble" / "certs" / NAME
        ok, detail = file_facts(cert_dir / "privkey.pem", 0o600, f"{WORKER}:{WORKER}")
        R.check(f"{cert_dir}/privkey.pem 0600 {WORKER}", ok, detail)
        R.check(f"{cert_dir}/fullchain.pem stored", (cert_dir / "fullchain.pem").is_file())
        cp = run(["runuser", "-u", WORKER, "--", ACMECTL, "--state", NGINX_STATE / "pebble", "list"])
        R.check("acmectl list (as www-data) shows it", cp.returncode == 0 and NAME in cp.out, cp.out[-1000:])
        self.nginx.stop()
        bad = harness.find_error_lines(NGINX_ERROR_LOG, since=self.log_offset,
                                       levels=("crit", "alert", "emerg"))
        R.check("no [crit]/[alert]/[emerg] in /var/log/nginx/error.log", not bad, "\n  ".join(bad[:10]))
        NGINX_SITE_LINK.unlink()
        NGINX_SITE.unlink()

    def nginx_log(self):
        try:
            with open(NGINX_ERROR_LOG, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    # -- upgrade, admin choices, remove, purge ------------------------------------------------------
    def upgrade(self):
        before = {d: tree_snapshot(d) for d in (NGINX_STATE, APACHE_STATE)}
        R.check("the nginx state holds an account and a certificate",
                any(k.endswith("account.key") for k in before[NGINX_STATE])
                and any(k.endswith("fullchain.pem") for k in before[NGINX_STATE]))
        new = [repack(self.debs[p], self.tmp, UPGRADE_SUFFIX) for p in PKGS]
        self.upgraded = new
        cp = apt_get("install", *new)
        R.require(f"upgrade to {UPGRADE_SUFFIX}", cp.returncode == 0, cp.out[-3000:])
        R.check("all upgraded", all((installed_version(p) or "").endswith(UPGRADE_SUFFIX) for p in PKGS),
                ", ".join(f"{p} {installed_version(p)}" for p in PKGS))
        for d in (NGINX_STATE, APACHE_STATE):
            diff = snapshot_diff(before[d], tree_snapshot(d))
            R.check(f"upgrade keeps {d} (files, modes, owners)", not diff, "\n  ".join(diff[:10]))
        R.check("upgrade keeps the modules enabled", NGINX_LINK.is_symlink() and APACHE_LINK.is_symlink())
        cp = nginx_t()
        R.check("nginx -t after the upgrade", cp.returncode == 0, cp.out[-1000:])

        # an admin disables both modules; a reinstall must respect that
        NGINX_LINK.unlink()
        run(["a2dismod", "-q", "acme"], check=True)
        cp = apt_get("install", "--reinstall", *new)
        R.require("apt-get install --reinstall", cp.returncode == 0, cp.out[-3000:])
        R.check("an admin's disabling survives a reinstall",
                not NGINX_LINK.exists() and not NGINX_LINK.is_symlink() and not APACHE_LINK.exists(),
                f"nginx link {NGINX_LINK.is_symlink()}, apache link {APACHE_LINK.exists()}")
        NGINX_LINK.symlink_to(NGINX_LOAD)
        run(["a2enmod", "-q", "acme"], check=True)

    def remove(self):
        before = {d: tree_snapshot(d) for d in (NGINX_STATE, APACHE_STATE)}
        cp = apt_get("remove", *PKGS)
        R.require("apt-get remove", cp.returncode == 0, cp.out[-3000:])
        R.check("remove says the state is kept", "keeping /var/lib/nginx/acme" in cp.out, cp.out[-1500:])
        for p in PKGS:
            R.check(f"{p} removed", installed_version(p) is None, pkg_status(p))
        for d in (NGINX_STATE, APACHE_STATE):
            diff = snapshot_diff(before[d], tree_snapshot(d))
            R.check(f"remove keeps {d} (accounts, keys, certificates)", d.is_dir() and not diff,
                    "\n  ".join(diff[:10]))
        R.check("the modules are gone", not NGINX_SO.exists() and not APACHE_SO.exists()
                and not ACMECTL.exists())
        R.check("nginx: modules-enabled link set aside (Debian's .removed)",
                not NGINX_LINK.is_symlink() and Path(str(NGINX_LINK) + ".removed").is_symlink())
        R.check("apache: acme disabled", not APACHE_LINK.exists() and not APACHE_LINK.is_symlink())
        cp = nginx_t()
        R.check("nginx -t after remove", cp.returncode == 0, cp.out[-1000:])
        cp = apache2ctl_t()
        R.check("apache2ctl -t after remove", cp.returncode == 0, cp.out[-1000:])

    def purge(self):
        cp = apt_get("purge", *PKGS)
        R.require("apt-get purge", cp.returncode == 0, cp.out[-3000:])
        for d in (NGINX_STATE, APACHE_STATE):
            R.check(f"purge deletes {d} and says so", not d.exists() and f"deleting {d}" in cp.out,
                    cp.out[-1500:])
        for p in PKGS:
            R.check(f"{p} purged", pkg_status(p) in ("", "unknown ok not-installed")
                    or "not-installed" in pkg_status(p), pkg_status(p))
        R.check("purge removes the conffiles and links",
                not APACHE_LOAD.exists() and not APACHE_CONF.exists()
                and not Path(str(NGINX_LINK) + ".removed").is_symlink())

    # -- cleanup ---------------------------------------------------------------------------------
    def cleanup(self):
        for p in reversed(self.procs):
            try:
                p.stop()
            except Exception:
                pass
        for s in (self.pebble, self.chall):
            if s is not None:
                try:
                    s.stop()
                except Exception:
                    pass
        restored = True
        if self.touched:
            try:
                left = [p for p in list(CONTEXT_PKGS) + PKGS
                        if pkg_status(p) and "not-installed" not in pkg_status(p)]
                if left:
                    out(f"cleanup: purging {' '.join(left)}")
                    cp = apt_get("purge", *left)
                    if cp.returncode != 0:
                        run(["dpkg", "--purge", *left])
            except Exception:
                R.check("cleanup: purge the packages", False, traceback.format_exc())
            try:
                if self.debian_modules and not self.debian_modules_restored:
                    self.restore_debian_modules()
            except Exception:
                R.check("cleanup: Debian's stream/mail packages as found", False, traceback.format_exc())
            for d in (NGINX_STATE, APACHE_STATE):
                if d.exists():
                    shutil.rmtree(d, ignore_errors=True)
            try:
                self.restore()
            except Exception:
                restored = False
                R.check("cleanup: restore", False, f"{traceback.format_exc()}\nthe copies are in {self.backup}")
        if self.own_policy_rc_d:
            POLICY_RC_D.unlink(missing_ok=True)
        alive = [p.name for p in self.procs if p.alive()]
        R.check("every process started here stopped", not alive, str(alive))
        R.check("no system nginx or Apache left running",
                not pid_alive("/run/nginx.pid") and not pid_alive("/run/apache2/apache2.pid"))
        if restored:
            shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-build", action="store_true", help="use the .deb files already in BUILD/deb")
    args = ap.parse_args()
    build = harness.build_dir()
    t0 = time.monotonic()

    def on_term(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_term)

    t = PackageTest(build, args.no_build)
    try:
        t.preflight()
        t.build_debs()
        t.check_debs()
        t.take_backup()
        t.install()
        t.check_installed()
        t.config_tests()
        t.contexts_present()
        t.contexts_absent()
        t.issue_with_nginx()
        t.upgrade()
        t.remove()
        t.purge()
    except Abort as e:
        out(f"stopped after: {e}")
    except KeyboardInterrupt:
        R.check("not interrupted", False)
    except Exception:
        R.check("no unexpected error", False, traceback.format_exc())
    finally:
        # the cleanup puts /etc back: it must not be cut short
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *a: out("(cleaning up, one moment)"))
        if t.snapshots:
            t.cleanup()
        else:
            if t.own_policy_rc_d:
                POLICY_RC_D.unlink(missing_ok=True)
            shutil.rmtree(t.tmp, ignore_errors=True)
            harness._kill_all_live()
    out(f"(test-packages took {time.monotonic() - t0:.0f} s)")
    out(f"{R.passed} passed, {R.failed} failed")
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
