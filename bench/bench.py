#!/usr/bin/python3
"""Benchmark suite: nginx + ngx_http_acme_module, Apache + mod_acme, Apache + mod_md, against a local Pebble.

Run with `make bench` (builds bench/hsbench.c and bench/gencerts.c into build/bench/ first). Every ratio in
the table is measured side by side in this run: variants alternate (A/B/A/B...) against the same server
processes or the same Pebble. Results: build/bench/results.json, build/bench/results.png, and the table on
stdout. The exit status is non-zero only when a scenario could not run; no timing is asserted.

Environment (defaults in brackets):
  BENCH_ONLY            comma list of scenarios to run [handshake,ttc,swap,blocking,scale,idle]; also
                        apache_reload, dns, ondemand (not in the default list)
  BENCH_HS_SECONDS      seconds per handshake measurement [3]
  BENCH_HS_ROUNDS       alternating rounds per variant [4]
  BENCH_HS_THREADS      client threads (the client runs on CPU 1, servers on CPU 0) [2]
  BENCH_TTC_RUNS        time-to-certificate runs per server [3]
  BENCH_SWAPS           forced renewals under load [20]
  BENCH_SWAP_SECONDS    baseline load duration [15]
  BENCH_WRK_CONNECTIONS wrk connections (Connection: close: one handshake per request) [4]
  BENCH_SCALE           managed names issued from Pebble in the scale scenario [1000]
  BENCH_SCALE_TIMEOUT   seconds allowed for that issuance; the rest is projected from the rate [120]
  BENCH_STORED          stored-certificate counts for the start-time runs [1000,10000]
  BENCH_IDLE_SECONDS    idle measurement with 1,000 managed certificates [60]
  BENCH_RELOAD_CERTS    stored certificates in the apache_reload scenario [1000]
  BENCH_RELOAD_RENEWALS renewals measured there [5]
  BENCH_BLOCK_SECONDS   length of each load phase of the blocking scenario [15]
  BENCH_BLOCK_RATE      its request rate (open loop, one full handshake per request) [50]
  BENCH_BLOCK_CERTS     certificates issued under load there [50]
  BENCH_DNS_RUNS        dns: alternating runs of dns-01 wildcard and http-01 issuance [3]
  BENCH_OD_RUNS         ondemand: new names whose first handshake is timed, per server [5]
  BENCH_OUT             output directory [build/bench]
"""

import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import harness  # noqa: E402
from harness import HarnessError, free_port, wait_for  # noqa: E402
import nginx_harness  # noqa: E402
from nginx_harness import Nginx, issuer_block  # noqa: E402
import apache_harness  # noqa: E402

BUILD = harness.build_dir()
OUT = Path(os.environ.get("BENCH_OUT", BUILD / "bench"))
if not OUT.is_absolute():
    OUT = REPO / OUT
HSBENCH = BUILD / "bench" / "hsbench"
GENCERTS = BUILD / "bench" / "gencerts"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
CADDY = shutil.which("caddy") or "/usr/bin/caddy"


def env_int(name, default):
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def env_float(name, default):
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


HS_SECONDS = env_float("BENCH_HS_SECONDS", 3)
HS_ROUNDS = env_int("BENCH_HS_ROUNDS", 4)
HS_THREADS = env_int("BENCH_HS_THREADS", 2)
TTC_RUNS = env_int("BENCH_TTC_RUNS", 3)
SWAPS = env_int("BENCH_SWAPS", 20)
SWAP_SECONDS = env_float("BENCH_SWAP_SECONDS", 15)
WRK_CONNS = env_int("BENCH_WRK_CONNECTIONS", 4)
SCALE = env_int("BENCH_SCALE", 1000)
SCALE_TIMEOUT = env_float("BENCH_SCALE_TIMEOUT", 120)
STORED = [int(x) for x in os.environ.get("BENCH_STORED", "1000,10000").split(",") if x.strip()]
IDLE_SECONDS = env_float("BENCH_IDLE_SECONDS", 60)
RELOAD_CERTS = env_int("BENCH_RELOAD_CERTS", 1000)
RELOAD_RENEWALS = env_int("BENCH_RELOAD_RENEWALS", 5)
BLOCK_SECONDS = env_float("BENCH_BLOCK_SECONDS", 15)
BLOCK_RATE = env_float("BENCH_BLOCK_RATE", 50)
BLOCK_CERTS = env_int("BENCH_BLOCK_CERTS", 50)
ONLY = [x.strip() for x in os.environ.get("BENCH_ONLY", "handshake,ttc,swap,blocking,scale,idle").split(",")
        if x.strip()]

NCPU = os.cpu_count() or 1
SERVER_CPUS = {0}
CLIENT_CPUS = {1} if NCPU > 1 else {0}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------
# processes: a stand-in for the pytest fixtures (procs, server_logs)
# --------------------------------------------------------------------------

class _NoWatch:
    def watch(self, *a, **k):
        pass

    def allow(self, *a, **k):
        pass


class Procs:
    """What nginx_harness.Nginx and apache_harness.Apache expect from the `procs` fixture."""

    def __init__(self):
        self.procs = []
        self.server_logs = _NoWatch()
        self.node = types.SimpleNamespace(_e2e_logs=[])

    def start(self, args, name=None, log_path=None, env=None, cwd=None, wait_port=None,
              wait_log=None, wait_url=None, ca_file=None, timeout=10.0, watch_log=False, allowed=()):
        name = name or Path(str(args[0])).name
        p = harness.Process(args, name=name, log_path=log_path, env=harness.child_env(env), cwd=cwd)
        self.procs.append(p)
        p.start()
        if wait_port:
            p.wait_port(wait_port, timeout=timeout)
        if wait_log:
            p.wait_log(wait_log, timeout=timeout)
        if wait_url:
            p.wait_url(wait_url, ca_file=ca_file, timeout=timeout)
        return p

    def stop_all(self):
        for p in reversed(self.procs):
            try:
                p.stop()
            except Exception:  # noqa: BLE001
                pass
        self.procs = []


# --------------------------------------------------------------------------
# /proc helpers
# --------------------------------------------------------------------------

def group_pids(pgid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                rest = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(rest[2]) == pgid and rest[0] not in (b"Z", b"X"):
            out.append(int(d))
    return sorted(out)


def pin_group(pgid, cpus):
    """Pin every thread of every process in the group (new threads and children inherit)."""
    for pid in group_pids(pgid):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for t in tids:
            try:
                os.sched_setaffinity(int(t), cpus)
            except OSError:
                pass


def proc_cpu_ns(pid):
    """CPU time of all live threads of pid in ns (schedstat), or utime+stime when unavailable."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
        for t in tids:
            try:
                with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
            except OSError:
                pass
        return total
    except OSError:
        return 0


def proc_stat_cpu_s(pid):
    """utime+stime (all threads, also exited ones) in seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            rest = f.read().rsplit(b")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK
    except OSError:
        return 0.0


def group_cpu_ns(pgid):
    return sum(proc_cpu_ns(p) for p in group_pids(pgid))


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.strip()
    except OSError:
        pass
    return out


def rss_kib(pid):
    v = proc_status(pid).get("VmRSS", "0 kB").split()[0]
    return int(v)


def private_kib(pid):
    """Private_Clean + Private_Dirty (USS) from smaps_rollup."""
    tot = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    tot += int(line.split()[1])
    except OSError:
        return None
    return tot


def ctx_switches(pid):
    st = proc_status(pid)
    return int(st.get("voluntary_ctxt_switches", 0)) + int(st.get("nonvoluntary_ctxt_switches", 0))


def nginx_zone_usage(pid, zone_size):
    """Used pages of the module's shared zone, read from ngx_slab_pool_t at the start of the mapping
    (offsets for nginx 1.22 on x86_64: pfree at 80, start at 88, end at 96). Returns (used_bytes,
    total_bytes) or None."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read().splitlines()
    except OSError:
        return None
    for line in maps:
        parts = line.split()
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if hi - lo != zone_size or "rw-s" not in parts[1]:
            continue
        try:
            with open(f"/proc/{pid}/mem", "rb") as m:
                m.seek(lo)
                hdr = m.read(104)
        except OSError:
            return None
        pfree = int.from_bytes(hdr[80:88], "little")
        start = int.from_bytes(hdr[88:96], "little")
        end = int.from_bytes(hdr[96:104], "little")
        if not (lo <= start < end <= hi):
            return None
        pages = (end - start) // 4096
        return (pages - pfree) * 4096, end - start
    return None


# --------------------------------------------------------------------------
# clients
# --------------------------------------------------------------------------

def _client_preexec():
    try:
        os.sched_setaffinity(0, CLIENT_CPUS)
    except OSError:
        pass


def hsbench(port, sni, seconds, threads=None, handshake_only=False, path="/"):
    args = [HSBENCH, "-p", port, "-s", sni, "-c", threads or HS_THREADS, "-t", seconds, "-u", path]
    if handshake_only:
        args.append("-q")
    cp = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        timeout=seconds + 60, preexec_fn=_client_preexec, env=harness.child_env())
    if cp.returncode != 0:
        raise HarnessError(f"hsbench failed: {cp.stderr.decode(errors='replace')}")
    return json.loads(cp.stdout)


def leaf_sha256(port, sni):
    der = nginx_harness.tls_cert(port, sni)
    import hashlib
    return hashlib.sha256(der).hexdigest()


def pem_leaf_sha256(path):
    import hashlib
    pem = Path(path).read_text()
    first = pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first)).hexdigest()


def served_verified(port, sni, roots):
    try:
        return nginx_harness.tls_verified(port, sni, roots, timeout=2)
    except Exception:  # noqa: BLE001
        return None


def measure_alternating(variants, seconds, rounds, warmup=1.0, path="/"):
    """variants: [(label, port, sni, pgid)]. Runs label order rotated each round (A B C, B C A, ...),
    measuring the client's handshake rate and the server group's CPU time per handshake."""
    acc = {v[0]: {"handshakes": 0, "errors": 0, "seconds": 0.0, "cpu_ns": 0, "runs": [],
                  "leaf": None} for v in variants}
    for label, port, sni, pgid in variants:
        r = hsbench(port, sni, warmup, path=path)
        acc[label]["leaf"] = r["leaf_sha256"]
    for rnd in range(rounds):
        order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
        for label, port, sni, pgid in order:
            c0 = group_cpu_ns(pgid)
            r = hsbench(port, sni, seconds, path=path)
            c1 = group_cpu_ns(pgid)
            a = acc[label]
            a["handshakes"] += r["handshakes"]
            a["errors"] += r["errors"]
            a["seconds"] += r["seconds"]
            a["cpu_ns"] += c1 - c0
            a["runs"].append(round(r["rate"], 1))
            if r["errors"] and not a.get("first_error"):
                a["first_error"] = r["first_error"]
            if r["leaf_sha256"] != a["leaf"]:
                a["leaf_changed"] = True
    out = {}
    for label, a in acc.items():
        n = max(a["handshakes"], 1)
        out[label] = {
            "handshakes": a["handshakes"], "errors": a["errors"],
            "rate": round(a["handshakes"] / a["seconds"], 1) if a["seconds"] else 0.0,
            "rate_runs": a["runs"],
            "rate_stdev_pct": round(100 * statistics.pstdev(a["runs"]) / statistics.mean(a["runs"]), 1)
            if a["runs"] and statistics.mean(a["runs"]) else None,
            "server_cpu_us_per_hs": round(a["cpu_ns"] / n / 1000, 1),
            "server_hs_per_cpu_s": round(n / (a["cpu_ns"] / 1e9), 1) if a["cpu_ns"] else None,
            "leaf_sha256": a["leaf"],
        }
        if a.get("first_error"):
            out[label]["first_error"] = a["first_error"]
        if a.get("leaf_changed"):
            out[label]["leaf_changed"] = True
    return out


def ratio(a, b, nd=3):
    """a / b rounded, None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, nd)


def parse_wrk(text):
    def to_ms(v):
        m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
        if not m:
            return None
        x = float(m.group(1))
        return {"us": x / 1000, "ms": x, "s": x * 1000, "m": x * 60000}[m.group(2)]
    res = {}
    for p in ("50", "75", "90", "99"):
        m = re.search(r"^\s+%s%%\s+(\S+)" % p, text, re.M)
        res[f"p{p}_ms"] = to_ms(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    res["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    res["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"),
                                    map(int, m.groups()))) if m else {}
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    res["non_2xx"] = int(m.group(1)) if m else 0
    res["failed"] = sum(res["socket_errors"].values()) + res["non_2xx"]
    return res


def wrk_start(port, host, duration, conns):
    # wrk takes the address (and its SNI) from the URL: 127.0.0.1, with the name as Host header; the
    # server under test is the port's default (only) server, so it is selected whatever the SNI.
    args = [WRK, "-t", "1", "-c", str(conns), "-d", f"{int(duration)}s", "--latency",
            "-H", f"Host: {host}", "-H", "Connection: close", f"https://127.0.0.1:{port}/"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=_client_preexec, env=harness.child_env())


# --------------------------------------------------------------------------
# the environment: DNS, Pebble
# --------------------------------------------------------------------------

class Env:
    def __init__(self, work):
        self.work = Path(work)
        self.ca = harness.TestCA(self.work / "ca")
        self.dns = harness.ChallTestSrv(self.work / "challtestsrv").start()
        self.pebble = harness.Pebble(self.work / "pebble", self.ca, dns_server=self.dns.dns_address,
                                     env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"})
        self.pebble.start()
        self.procs = Procs()

    def close(self):
        self.procs.stop_all()
        self.pebble.stop()
        self.dns.stop()


PEBBLE_REQ_RE = re.compile(r"^Pebble \S+ \S+ (GET|POST|HEAD) (/[A-Za-z-]+/?)\S* -> calling handler", re.M)


def pebble_requests(pebble, since):
    counts = {}
    for meth, path in PEBBLE_REQ_RE.findall(pebble.log_text(since)):
        k = f"{meth} {path}"
        counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items()))


NGX_HTTP_EXTRA = """
    server_names_hash_max_size 131072;
    server_names_hash_bucket_size 128;
    ssl_session_cache off;
    ssl_session_tickets off;
"""


def new_nginx(env, name, http_conf, workers=1, level="notice"):
    d = env.work / name
    if d.exists():
        shutil.rmtree(d)
    return Nginx(d, env.procs, env.procs.server_logs, NGX_HTTP_EXTRA + http_conf, workers=workers,
                 level=level)


def nginx_workers(ng):
    # the cache manager runs the ACME client: its CPU counts too
    return ng.worker_pids() + ng.helper_pids()


def nginx_error_lines(ng):
    return harness.find_error_lines(ng.error_log)[:20]


# --------------------------------------------------------------------------
# Caddy (Debian's caddy 2.6) as a peer: its own ACME client against the same Pebble
# --------------------------------------------------------------------------

def caddy_available():
    return Path(CADDY).is_file()


def caddy_leaf_key(pem_path):
    cp = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(pem_path)],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    m = re.search(r"Public Key Algorithm: (\S+)", cp.stdout)
    return m.group(1) if m else None


class Caddy:
    """caddy run with a Caddyfile of its own: Pebble as the only CA (acme_ca) trusted through
    acme_ca_root, Pebble's challenge ports as http_port/https_port (so both http-01 and tls-alpn-01
    validate, whichever Caddy picks), storage, config and HOME in a fresh directory, no admin
    endpoint. body: the site block's body; static: (fullchain, key) served instead of issuing;
    global_extra: more global options (on_demand_tls);
    fresh=False keeps the directory (and the certificate stored there by an earlier run)."""

    def __init__(self, env, name, site_name, body, static=None, http_port=None, https_port=None,
                 fresh=True, global_extra=""):
        self.env = env
        self.dir = env.work / name
        if fresh and self.dir.exists():
            shutil.rmtree(self.dir)
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        (self.dir / "config").mkdir(exist_ok=True)
        pb = env.pebble
        self.http_port = http_port or pb.http_port
        self.https_port = https_port or pb.tls_port
        tls = f"\ttls {static[0]} {static[1]}\n" if static else ""
        (self.dir / "Caddyfile").write_text(f"""{{
\tadmin off
\tstorage file_system {{
\t\troot {self.dir}/data
\t}}
\tacme_ca {pb.directory_url}
\tacme_ca_root {pb.ca_cert}
\temail admin@example.org
\thttp_port {self.http_port}
\thttps_port {self.https_port}
\tskip_install_trust
\tocsp_stapling off
\tauto_https disable_redirects
\tlog {{
\t\tlevel WARN
\t}}
{global_extra}}}
{site_name} {{
{tls}{body}}}
""")
        self.proc = None

    def start(self):
        self.proc = self.env.procs.start(
            [CADDY, "run", "--config", self.dir / "Caddyfile", "--adapter", "caddyfile"],
            name="caddy", log_path=self.dir / "caddy.log",
            env={"HOME": self.dir, "XDG_DATA_HOME": self.dir / "data",
                 "XDG_CONFIG_HOME": self.dir / "config"})
        return self.proc

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def cert_files(self, name):
        """The certificate and key Caddy stored for name (certmagic's layout)."""
        crt = list((self.dir / "data").glob(f"certificates/*/{name}/{name}.crt"))
        if not crt:
            return None
        return crt[0], crt[0].with_suffix(".key")

    def log_tail(self, n=3000):
        try:
            return self.proc.log_text()[-n:] if self.proc else ""
        except Exception:  # noqa: BLE001
            return ""


# --------------------------------------------------------------------------
# scenario 1: handshake cost
# --------------------------------------------------------------------------

def scenario_handshake_nginx(env):
    pb = env.pebble
    name = "hs.bench.example.org"
    state = env.work / "hs-state"
    pa, pbp, pc = free_port(), free_port(), free_port()
    static_dir = env.work / "hs-static"
    static_dir.mkdir(exist_ok=True)

    def conf(with_static):
        c = issuer_block("pebble", pb, state) + f"""
    server {{
        listen 127.0.0.1:{pb.http_port};
        server_name {name};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{pa} ssl;
        server_name {name};
        access_log off;
        acme_certificate pebble;
        location / {{ return 200 "ok\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{pc} ssl;
        server_name {name};
        access_log off;
        acme_certificate pebble;
        ssl_certificate $acme_certificate;
        ssl_certificate_key $acme_certificate_key;
        location / {{ return 200 "ok\\n"; }}
    }}
"""
        if with_static:
            c += f"""
    server {{
        listen 127.0.0.1:{pbp} ssl;
        server_name {name};
        access_log off;
        ssl_certificate {static_dir}/fullchain.pem;
        ssl_certificate_key {static_dir}/privkey.pem;
        location / {{ return 200 "ok\\n"; }}
    }}
"""
        return c

    roots = pb.roots(0)
    cd = None
    if caddy_available():
        # Caddy gets its certificate from Pebble first (it needs Pebble's challenge ports), then is
        # restarted on free ports, serving the certificate it stored
        cname = "hsc.bench.example.org"
        cd = Caddy(env, "caddy-hs", cname, '\trespond "ok" 200\n')
        cd.start()
        try:
            _wait_served(cd.proc, cd.https_port, cname, roots, timeout=60)
        except HarnessError as e:
            raise HarnessError(f"caddy: {e}\n{cd.log_tail()}") from None
        cd.stop()
        cd = Caddy(env, "caddy-hs", cname, '\trespond "ok" 200\n', http_port=free_port(),
                   https_port=free_port(), fresh=False)
    ng = new_nginx(env, "ngx-hs", conf(False))
    ng.start(wait_port=pa)
    wait_for(lambda: served_verified(pa, name, roots), 60, 0.1, "the managed certificate")
    ng.stop()
    for f in ("fullchain.pem", "privkey.pem"):
        shutil.copy(state / "certs" / name / f, static_dir / f)
    ng.write_conf(NGX_HTTP_EXTRA + conf(True))
    ng.start(wait_port=pbp)
    pin_group(ng.proc.pid, SERVER_CPUS)
    want = pem_leaf_sha256(static_dir / "fullchain.pem")
    for port in (pa, pbp, pc):
        wait_for(lambda: leaf_sha256(port, name) == want, 15, 0.1, f"the issued certificate on {port}")
    variants = [("managed", pa, name, ng.proc.pid), ("static", pbp, name, ng.proc.pid),
                ("variable", pc, name, ng.proc.pid)]
    caddy_want = None
    if cd:
        cd.start()
        cd.proc.wait_port(cd.https_port, timeout=15)
        pin_group(cd.proc.pid, SERVER_CPUS)
        crt, _ = cd.cert_files(cname)
        caddy_want = pem_leaf_sha256(crt)
        wait_for(lambda: leaf_sha256(cd.https_port, cname) == caddy_want, 15, 0.1, "caddy's certificate")
        variants.append(("caddy", cd.https_port, cname, cd.proc.pid))
    log("nginx handshakes: " + ", ".join(f"{v[0]} :{v[1]}" for v in variants))
    res = measure_alternating(variants, HS_SECONDS, HS_ROUNDS)
    for k, v in res.items():
        if v["leaf_sha256"] != (caddy_want if k == "caddy" else want):
            raise HarnessError(f"{k}: served another certificate than the issued one")
    st, mg, va = res["static"], res["managed"], res["variable"]
    out = {"variants": res,
           "key_types": {"nginx": caddy_leaf_key(static_dir / "fullchain.pem")},
           "managed_static_rate_ratio": ratio(mg["rate"], st["rate"]),
           "variable_static_rate_ratio": ratio(va["rate"], st["rate"]),
           "managed_static_cpu_ratio": ratio(st["server_cpu_us_per_hs"], mg["server_cpu_us_per_hs"]),
           "variable_static_cpu_ratio": ratio(st["server_cpu_us_per_hs"], va["server_cpu_us_per_hs"]),
           "errors": nginx_error_lines(ng)}
    if "caddy" in res:
        cv = res["caddy"]
        out["key_types"]["caddy"] = caddy_leaf_key(crt)
        # CPU efficiency of nginx's managed certificate against Caddy's (> 1: nginx cheaper)
        out["managed_caddy_cpu_ratio"] = ratio(cv["server_cpu_us_per_hs"], mg["server_cpu_us_per_hs"])
        out["managed_caddy_rate_ratio"] = ratio(mg["rate"], cv["rate"])
        cd.stop()
    ng.stop()
    return out


def apache_available():
    return (BUILD / "mod_acme.so").is_file()


def scenario_handshake_apache(env):
    pb = env.pebble
    name = "hsa.bench.example.org"
    sport = free_port()
    static_dir = Path(tempfile.mkdtemp(prefix="bench_static_"))
    os.chmod(static_dir, 0o755)
    ap = apache_harness.Apache(BUILD, pb, mpm="event", name="apache-hs", log_level="warn")
    ap.extra_global = "SSLSessionTickets off\n"
    ap.vhosts = ap.managed_vhosts([name])
    try:
        ap.start(env.procs)
        roots = pb.roots(0)
        wait_for(lambda: served_verified(ap.https_port, name, roots), 60, 0.1,
                 "the mod_acme certificate")
        ap.proc.stop()
        for f in ("fullchain.pem", "privkey.pem"):
            shutil.copy(ap.state / "certs" / name / f, static_dir / f)
            os.chmod(static_dir / f, 0o644)
        ap.extra_global = (f"SSLSessionTickets off\nListen {harness.LOOPBACK}:{sport} https\n")
        ap.vhosts = ap.managed_vhosts([name]) + (
            f"<VirtualHost {harness.LOOPBACK}:{sport}>\n    ServerName {name}\n    SSLEngine on\n"
            f"    SSLCertificateFile {static_dir}/fullchain.pem\n"
            f"    SSLCertificateKeyFile {static_dir}/privkey.pem\n</VirtualHost>\n")
        ap.start(env.procs)
        pin_group(ap.proc.pid, SERVER_CPUS)
        want = pem_leaf_sha256(static_dir / "fullchain.pem")
        for port in (ap.https_port, sport):
            wait_for(lambda: leaf_sha256(port, name) == want, 15, 0.1, f"the issued certificate on {port}")
        log(f"apache handshakes: managed :{ap.https_port}, static :{sport}")
        res = measure_alternating([("managed", ap.https_port, name, ap.proc.pid),
                                   ("static", sport, name, ap.proc.pid)], HS_SECONDS, HS_ROUNDS,
                                  path="/index.html")
        st, mg = res["static"], res["managed"]
        return {"variants": res,
                "managed_static_rate_ratio": ratio(mg["rate"], st["rate"]),
                "managed_static_cpu_ratio": ratio(st["server_cpu_us_per_hs"], mg["server_cpu_us_per_hs"]),
                "errors": harness.find_error_lines(ap.error_log, allowed=apache_harness.ALLOWED_ERRORS)}
    finally:
        if ap.proc:
            ap.proc.stop()
        ap.cleanup()
        shutil.rmtree(static_dir, ignore_errors=True)


def hs_ms(port, sni):
    """One full handshake on a new connection, in ms (the client does nothing else)."""
    t0 = time.perf_counter()
    s = apache_harness.tls_connect(port, sni, timeout=60)
    took = (time.perf_counter() - t0) * 1000
    s.close()
    return took


def scenario_apache_reload(env):
    """Apache with RELOAD_CERTS stored certificates (one SSL vhost each): the handshake latency in a child
    right after one of them was renewed (a forced renewal from Pebble, so the driver bumps that
    certificate's generation), against handshakes with no change. Before per-certificate generations,
    the first handshake after any change re-read every certificate."""
    pb = env.pebble
    fmt = "r%d.reload.bench.example.org"
    n = RELOAD_CERTS
    target = fmt % (n // 2)
    ap = apache_harness.Apache(BUILD, pb, mpm="event", name="apache-reload",
                               log_level="notice acme:info")
    ap.extra_global = "SSLSessionTickets off\n"
    t0 = time.monotonic()
    gen_store(ap.state, fmt, 0, n, pb.directory_url)
    if os.geteuid() == 0:
        # the state directory is the children's user's (Apache as root does not take it over)
        import pwd
        pw = pwd.getpwnam("www-data")
        for root, dirs, files in os.walk(ap.state):
            for x in [root] + [os.path.join(root, f) for f in dirs + files]:
                os.lchown(x, pw.pw_uid, pw.pw_gid)
    log(f"apache_reload: {n} stored certificates generated in {time.monotonic() - t0:.1f} s")
    ap.vhosts = "".join(f"<VirtualHost {harness.LOOPBACK}:{ap.https_port}>\n    ServerName {fmt % i}\n"
                        "    SSLEngine on\n    ACMECertificate on\n</VirtualHost>\n" for i in range(n))
    try:
        t0 = time.monotonic()
        ap.start(env.procs, wait=False)
        wait_for(lambda: "resuming normal operations" in ap.log(), 300, 0.2, "apache to be up")
        ap.proc.wait_port(ap.https_port, timeout=60)
        pin_group(ap.proc.pid, SERVER_CPUS)
        wait_for(lambda: "runs the ACME driver" in ap.log(), 120, 0.2, "the driver")
        started = round(time.monotonic() - t0, 1)
        log(f"apache_reload: up in {started} s")
        base, after, after2 = [], [], []
        for k in range(RELOAD_RENEWALS):
            for _ in range(20):
                hs_ms(ap.https_port, target)        # every child settled (the driver's start bumps all)
            base += [hs_ms(ap.https_port, target) for _ in range(10)]
            stored = ap.log().count("ACME0070")
            r = ap.renew(target)
            if r.status != 202:
                raise HarnessError(f"renew: {r.status}")
            try:
                wait_for(lambda: ap.log().count("ACME0070") > stored, 60, 0.005, f"renewal {k + 1} stored")
            except HarnessError:
                log("apache_reload: error log tail:\n" + "\n".join(ap.log().splitlines()[-15:]))
                raise
            time.sleep(0.5)     # the driver's own work after storing (status JSON) off the server CPU;
            #                     the children re-read a certificate at their next handshake, not before
            after.append(hs_ms(ap.https_port, target))     # one child re-reads: the first handshake
            after2.append(hs_ms(ap.https_port, target))    # the other child, or a settled one
        bm, am = statistics.median(base), statistics.median(after)
        return {"certificates": n, "renewals": RELOAD_RENEWALS, "start_s": started,
                "baseline_ms_median": round(bm, 2), "baseline_ms_max": round(max(base), 2),
                "after_renewal_ms": [round(x, 2) for x in after],
                "after_renewal_second_ms": [round(x, 2) for x in after2],
                "after_renewal_ms_median": round(am, 2),
                "after_baseline_ratio": ratio(am, bm, 2),
                "errors": harness.find_error_lines(ap.error_log, allowed=apache_harness.ALLOWED_ERRORS)}
    finally:
        if ap.proc:
            ap.proc.stop()
        ap.cleanup()


# --------------------------------------------------------------------------
# scenario 2: time to certificate
# --------------------------------------------------------------------------

def _wait_served(proc, port, name, roots, timeout=120):
    def ok():
        if proc is not None and not proc.alive():
            raise HarnessError("server exited")
        return served_verified(port, name, roots)
    wait_for(ok, timeout, 0.01, f"a Pebble certificate for {name}")
    return time.monotonic()


def ttc_nginx(env, i):
    pb = env.pebble
    name = f"ttc-ngx-{i}.bench.example.org"
    https = free_port()
    state = env.work / f"ttc-ngx-state-{i}"
    conf = issuer_block("pebble", pb, state) + f"""
    server {{
        listen 127.0.0.1:{pb.http_port};
        server_name {name};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {name};
        acme_certificate pebble;
        location / {{ return 200 "ok\\n"; }}
    }}
"""
    ng = new_nginx(env, f"ngx-ttc-{i}", conf, workers=2)
    roots = pb.roots(0)
    mark = pb.mark()
    t0 = time.monotonic()
    ng.start()
    try:
        t1 = _wait_served(ng.proc, https, name, roots)
        time.sleep(0.5)
        return {"seconds": round(t1 - t0, 3), "requests": pebble_requests(pb, mark),
                "orders": pb.order_count(mark)}
    finally:
        ng.stop()


def ttc_mod_acme(env, i):
    pb = env.pebble
    name = f"ttc-acme-{i}.bench.example.org"
    ap = apache_harness.Apache(BUILD, pb, mpm="event", name=f"apache-ttc-{i}", log_level="warn")
    ap.vhosts = ap.managed_vhosts([name])
    roots = pb.roots(0)
    mark = pb.mark()
    t0 = time.monotonic()
    try:
        ap.start(env.procs, wait=False)
        t1 = _wait_served(ap.proc, ap.https_port, name, roots)
        time.sleep(0.5)
        return {"seconds": round(t1 - t0, 3), "requests": pebble_requests(pb, mark),
                "orders": pb.order_count(mark)}
    finally:
        if ap.proc:
            ap.proc.stop()
        ap.cleanup()


MD_CONF = """\
ServerRoot "{dir}"
PidFile "{dir}/httpd.pid"
DefaultRuntimeDir "{dir}/run"
Mutex file:{dir}/run default
ErrorLog "{dir}/error.log"
LogLevel warn md:info
ServerName localhost
DocumentRoot "{dir}/htdocs"
TypesConfig /etc/mime.types
SSLSessionCache none
GracefulShutdownTimeout 5
LoadModule mpm_event_module {mods}/mod_mpm_event.so
LoadModule authz_core_module {mods}/mod_authz_core.so
LoadModule mime_module {mods}/mod_mime.so
LoadModule socache_shmcb_module {mods}/mod_socache_shmcb.so
LoadModule ssl_module {mods}/mod_ssl.so
LoadModule md_module {mods}/mod_md.so
{user}
StartServers 2
ServerLimit 3
ThreadsPerChild 5
MinSpareThreads 5
MaxSpareThreads 15
MaxRequestWorkers 15
ThreadLimit 5
Listen 127.0.0.1:{http}
Listen 127.0.0.1:{https} https
<Directory "{dir}/htdocs">
    Require all granted
</Directory>
MDStoreDir "{dir}/md"
MDCertificateAuthority {ca_url}
MDCACertificateFile {ca_file}
MDCertificateAgreement accepted
MDContactEmail admin@example.org
MDPortMap http:{http} https:{https}
MDCAChallenges http-01
MDRenewViaARI off
MDomain {name}
<VirtualHost 127.0.0.1:{http}>
    ServerName {name}
</VirtualHost>
<VirtualHost 127.0.0.1:{https}>
    ServerName {name}
    SSLEngine on
</VirtualHost>
"""


def ttc_mod_md(env, i):
    pb = env.pebble
    name = f"ttc-md-{i}.bench.example.org"
    d = Path(tempfile.mkdtemp(prefix="bench_md_"))
    os.chmod(d, 0o755)
    (d / "htdocs").mkdir()
    (d / "run").mkdir()
    os.chmod(d / "htdocs", 0o755)
    shutil.copy(pb.ca_cert, d / "pebble-ca.pem")
    os.chmod(d / "pebble-ca.pem", 0o644)
    user = "User www-data\nGroup www-data" if os.geteuid() == 0 else ""
    (d / "httpd.conf").write_text(MD_CONF.format(
        dir=d, mods=apache_harness.MODULES, user=user, http=pb.http_port, https=pb.tls_port,
        ca_url=pb.directory_url, ca_file=d / "pebble-ca.pem", name=name))
    roots = pb.roots(0)
    mark = pb.mark()
    staged = d / "md" / "staging" / name / "pubcert.pem"
    proc = None
    t0 = time.monotonic()
    try:
        proc = env.procs.start([apache_harness.APACHE_BIN, "-f", d / "httpd.conf", "-DFOREGROUND"],
                               name=f"apache-md-{i}", log_path=d / "stdout.log",
                               env={"APACHE_RUN_DIR": d / "run"})

        def is_staged():
            if not proc.alive():
                raise HarnessError(f"mod_md apache exited: {proc.log_text()[-2000:]}"
                                   f"{(d / 'error.log').read_text(errors='replace')[-2000:]}")
            return staged.is_file() and staged.stat().st_size > 0
        try:
            wait_for(is_staged, 120, 0.01, "mod_md's staged certificate")
        except HarnessError as e:
            raise HarnessError(f"{e}\n{(d / 'error.log').read_text(errors='replace')[-3000:]}") from None
        t1 = time.monotonic()
        time.sleep(0.5)
        reqs = pebble_requests(pb, mark)
        orders = pb.order_count(mark)
        # it serves the staged certificate only after a graceful restart
        log_before = (d / "error.log").read_text(errors="replace").count("resuming normal operations")
        t2 = time.monotonic()
        proc.send_signal(signal.SIGUSR1)
        t3 = _wait_served(proc, pb.tls_port, name, roots, timeout=60)
        del log_before
        return {"seconds": round(t1 - t0, 3), "graceful_to_served_s": round(t3 - t2, 3),
                "requests": reqs, "orders": orders}
    finally:
        if proc:
            proc.stop()
        shutil.rmtree(d, ignore_errors=True)


def ttc_caddy(env, i):
    pb = env.pebble
    name = f"ttc-caddy-{i}.bench.example.org"
    cd = Caddy(env, f"caddy-ttc-{i}", name, '\trespond "ok" 200\n')
    roots = pb.roots(0)
    mark = pb.mark()
    t0 = time.monotonic()
    cd.start()
    try:
        try:
            t1 = _wait_served(cd.proc, cd.https_port, name, roots)
        except HarnessError as e:
            raise HarnessError(f"{e}\n{cd.log_tail()}") from None
        time.sleep(0.5)
        return {"seconds": round(t1 - t0, 3), "requests": pebble_requests(pb, mark),
                "orders": pb.order_count(mark)}
    finally:
        cd.stop()
        shutil.rmtree(cd.dir, ignore_errors=True)


def summarize_ttc(runs):
    secs = [r["seconds"] for r in runs]
    req_totals = [sum(r["requests"].values()) for r in runs]
    out = {"runs": runs, "median_s": round(statistics.median(secs), 3), "min_s": min(secs),
           "max_s": max(secs), "requests_per_issuance_median": statistics.median(req_totals)}
    if "graceful_to_served_s" in runs[0]:
        out["graceful_to_served_median_s"] = round(statistics.median(
            [r["graceful_to_served_s"] for r in runs]), 3)
    return out


def scenario_ttc(env, servers):
    out = {}
    fns = {"nginx": ttc_nginx, "apache_mod_acme": ttc_mod_acme, "apache_mod_md": ttc_mod_md,
           "caddy": ttc_caddy}
    runs = {s: [] for s in servers}
    errors = {}
    for i in range(TTC_RUNS):
        for s in servers:                     # alternate servers within each round
            if s in errors:
                continue
            try:
                runs[s].append(fns[s](env, i))
                log(f"time to certificate {s} #{i}: {runs[s][-1]['seconds']} s")
            except Exception as e:  # noqa: BLE001
                errors[s] = f"{type(e).__name__}: {e}"
                log(f"time to certificate {s}: FAILED {errors[s][:300]}")
    for s in servers:
        if runs[s]:
            out[s] = summarize_ttc(runs[s])
        if s in errors:
            out.setdefault(s, {})["error"] = errors[s]
    return out, errors


# --------------------------------------------------------------------------
# scenario 3: hot swap under load
# --------------------------------------------------------------------------

def force_renew(port, name):
    """POST a forced renewal; a 429 (forced less than renew_interval=1s ago) is posted again."""
    deadline = time.monotonic() + 10
    while True:
        r = nginx_harness.https_get(port, name, f"/acme?renew={name}", method="POST")
        if r.status == 202:
            return
        if r.status != 429 or time.monotonic() > deadline:
            raise HarnessError(f"renew request: HTTP {r.status} {r.text}")
        time.sleep(0.1)


def renewing_server(pb, https, name):
    """An HTTP-01 server on Pebble's port and an HTTPS one with one certificate whose renewals can be
    forced (acme_status renew=on, once a second)."""
    return f"""
    server {{
        listen 127.0.0.1:{pb.http_port};
        server_name {name};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {name};
        access_log off;
        acme_certificate pebble;
        location / {{ return 200 "ok\\n"; }}
        location = /acme {{ acme_status renew=on renew_interval=1s; }}
    }}
"""


def scenario_swap(env):
    pb = env.pebble
    name = "swap.bench.example.org"
    https = free_port()
    state = env.work / "swap-state"
    conf = issuer_block("pebble", pb, state) + renewing_server(pb, https, name)
    ng = new_nginx(env, "ngx-swap", conf, workers=2)
    ng.start(wait_port=https)
    roots = pb.roots(0)
    w = None
    try:
        first = wait_for(lambda: served_verified(https, name, roots), 60, 0.1, "the first certificate")
        time.sleep(1.0)
        workers = nginx_workers(ng)

        def mem():
            return {str(p): {"rss_kib": rss_kib(p), "private_kib": private_kib(p)} for p in workers}

        # warm-up, then baseline
        w = wrk_start(https, name, 3, WRK_CONNS)
        w.communicate(timeout=30)
        mem0 = mem()
        log(f"swap: baseline {SWAP_SECONDS:.0f} s")
        w = wrk_start(https, name, SWAP_SECONDS, WRK_CONNS)
        base = parse_wrk(w.communicate(timeout=SWAP_SECONDS + 60)[0].decode(errors="replace"))
        mem1 = mem()

        log(f"swap: {SWAPS} forced renewals under load")
        w = wrk_start(https, name, 600, WRK_CONNS)
        time.sleep(1.0)
        t0 = time.monotonic()
        mark = pb.mark()
        serials = [first]
        for i in range(SWAPS):
            force_renew(https, name)
            prev = serials[-1]
            serials.append(wait_for(lambda: (lambda s: s if s and s != prev else None)(
                served_verified(https, name, roots)), 60, 0.05, f"renewal {i + 1}"))
        # every worker has reloaded its copy once the new serial shows; a second for stragglers
        time.sleep(1.0)
        t1 = time.monotonic()
        w.send_signal(signal.SIGINT)
        swap = parse_wrk(w.communicate(timeout=60)[0].decode(errors="replace"))
        mem2 = mem()
        issued = pb.issued_count(mark)

        log(f"swap: after-baseline {SWAP_SECONDS:.0f} s")
        w = wrk_start(https, name, SWAP_SECONDS, WRK_CONNS)
        base2 = parse_wrk(w.communicate(timeout=SWAP_SECONDS + 60)[0].decode(errors="replace"))
        # memory: 20 more swaps without load, to see whether growth continues
        for i in range(SWAPS):
            prev = served_verified(https, name, roots)
            force_renew(https, name)
            wait_for(lambda: (lambda s: s if s and s != prev else None)(
                served_verified(https, name, roots)), 60, 0.05, f"extra renewal {i + 1}")
        time.sleep(1.0)
        mem3 = mem()
        p99s = [x for x in (base["p99_ms"], base2["p99_ms"]) if x is not None]
        p99_base = statistics.mean(p99s) if p99s else None
        return {
            "baseline": base, "during_swaps": swap, "baseline_after": base2,
            "swaps": SWAPS, "swap_seconds": round(t1 - t0, 2), "issued": issued,
            "distinct_serials": len(set(serials)),
            "failed_requests": swap["failed"],
            "p99_ratio": ratio(swap["p99_ms"], p99_base, 2),
            "rps_ratio": ratio(swap["rps"], statistics.mean([base["rps"], base2["rps"]])),
            "worker_memory": {"after_warmup": mem0, "after_baseline": mem1, "after_swaps": mem2,
                              "after_second_swaps_without_load": mem3},
            "rss_growth_kib_per_worker_swaps": {p: mem2[p]["rss_kib"] - mem1[p]["rss_kib"] for p in mem1},
            "rss_growth_kib_per_worker_next_swaps": {p: mem3[p]["rss_kib"] - mem2[p]["rss_kib"]
                                                     for p in mem2 if p in mem3},
            "errors": nginx_error_lines(ng),
        }
    finally:
        if w is not None and w.poll() is None:      # a failure mid-run: no 600 s wrk left behind
            w.kill()
            w.wait()
        ng.stop()


# --------------------------------------------------------------------------
# scenario 7: does the module block the worker that serves traffic?
# --------------------------------------------------------------------------

def hsbench_start(port, sni, seconds, rate=BLOCK_RATE, threads=8):
    """Open-loop load in the background (one full handshake + GET per connection); latencies count from
    each request's scheduled start. hsbench_finish() ends it early (SIGINT) and reads its JSON."""
    args = [HSBENCH, "-p", port, "-s", sni, "-c", threads, "-t", seconds, "-r", rate]
    return subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_client_preexec, env=harness.child_env())


def hsbench_finish(p, stop=False, timeout=120):
    if stop:
        p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=timeout)
    if p.returncode != 0:
        raise HarnessError(f"hsbench failed: {err.decode(errors='replace')}")
    r = json.loads(out)
    return {k: r[k] for k in ("handshakes", "errors", "seconds", "rate", "lat_p50_ms", "lat_p99_ms",
                              "lat_p999_ms", "lat_max_ms", "n_over_50ms", "n_over_1s", "first_error")}


def _block_compare(idle, busy):
    return {"idle": idle, "busy": busy,
            "worst_ms": busy["lat_max_ms"], "p99_ms": busy["lat_p99_ms"],
            "p99_ratio": ratio(busy["lat_p99_ms"], idle["lat_p99_ms"], 2),
            "worst_ratio": ratio(busy["lat_max_ms"], idle["lat_max_ms"], 2)}


def scenario_blocking_redis(env):
    """(a) worker_processes 1, acme_storage redis:// to a redis-server that is then paused (SIGSTOP: the
    kernel still accepts connections, nothing answers): steady load while a forced renewal is posted every
    second, against the same load with Redis answering and nothing due."""
    import leakcheck
    pb = env.pebble
    name = "blk-redis.bench.example.org"
    https = free_port()
    rdir = env.work / "blk-redis"
    redis = harness.RedisServer(rdir).start()
    key = rdir / "storage.key"
    key.write_bytes(leakcheck.STORAGE_KEY)
    key.chmod(0o600)
    conf = (f"acme_storage {redis.url()} prefix=bench;\nacme_storage_key {key};\n"
            + issuer_block("pebble", pb, env.work / "blk-redis-state") + renewing_server(pb, https, name))
    ng = new_nginx(env, "ngx-blk-redis", conf, workers=1)
    stopped = False
    try:
        ng.start(wait_port=https)
        pin_group(ng.proc.pid, SERVER_CPUS)
        roots = pb.roots(0)
        wait_for(lambda: served_verified(https, name, roots), 60, 0.1, "the certificate (Redis store)")
        time.sleep(1.0)
        hsbench_finish(hsbench_start(https, name, 2))            # warm-up
        log(f"blocking (a): idle load {BLOCK_SECONDS:.0f} s")
        idle = hsbench_finish(hsbench_start(https, name, BLOCK_SECONDS))
        log(f"blocking (a): Redis paused, a forced renewal every second, load {BLOCK_SECONDS:.0f} s")
        os.kill(redis.proc.pid, signal.SIGSTOP)
        stopped = True
        load = hsbench_start(https, name, BLOCK_SECONDS)
        t_end = time.monotonic() + BLOCK_SECONDS - 1
        posts = []
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            try:
                r = nginx_harness.https_get(https, name, f"/acme?renew={name}", method="POST", timeout=10)
                posts.append({"status": r.status, "ms": round((time.monotonic() - t0) * 1000, 1)})
            except Exception as e:  # noqa: BLE001
                posts.append({"error": f"{type(e).__name__}: {e}"[:120],
                              "ms": round((time.monotonic() - t0) * 1000, 1)})
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
        busy = hsbench_finish(load)
        out = _block_compare(idle, busy)
        out["renew_posts"] = posts
        out["errors"] = nginx_error_lines(ng)
        return out
    finally:
        if stopped:
            os.kill(redis.proc.pid, signal.SIGCONT)
        ng.stop()
        redis.stop()


def scenario_blocking_issue(env):
    """(b) worker_processes 1, file store: steady load on one name already issued while BLOCK_CERTS other
    server blocks are issued from Pebble, against the same load once they are all stored (nothing due)."""
    pb = env.pebble
    name = "blk-load.bench.example.org"
    fmt = "blk%d.bench.example.org"
    https = free_port()
    state = env.work / "blk-issue-state"
    head = issuer_block("pebble", pb, state) + f"""
    server {{
        listen 127.0.0.1:{pb.http_port};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {name};
        access_log off;
        acme_certificate pebble;
        location / {{ return 200 "ok\\n"; }}
    }}
"""
    many = "".join(f"""
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {fmt % i};
        access_log off;
        acme_certificate pebble;
        location / {{ return 200 "ok\\n"; }}
    }}
""" for i in range(BLOCK_CERTS))
    roots = pb.roots(0)
    ng = new_nginx(env, "ngx-blk-issue", head, workers=1)
    try:
        ng.start(wait_port=https)
        wait_for(lambda: served_verified(https, name, roots), 60, 0.1, "the load name's certificate")
        ng.stop()
        ng.write_conf(NGX_HTTP_EXTRA + head + many)

        def stored():
            return sum((state / "certs" / (fmt % i) / "fullchain.pem").is_file() for i in range(BLOCK_CERTS))
        log(f"blocking (b): {BLOCK_CERTS} certificates issued under load")
        ng.start(wait_port=https)
        pin_group(ng.proc.pid, SERVER_CPUS)
        t0 = time.monotonic()
        load = hsbench_start(https, name, 300)
        try:
            wait_for(lambda: stored() == BLOCK_CERTS, 120, 0.05, f"{BLOCK_CERTS} certificates stored")
        finally:
            took = time.monotonic() - t0
            busy = hsbench_finish(load, stop=True)
        for i in (0, BLOCK_CERTS - 1):
            wait_for(lambda: served_verified(https, fmt % i, roots), 30, 0.1, f"{fmt % i} served")
        time.sleep(1.0)
        log(f"blocking (b): idle load {max(took, 5):.0f} s")
        idle = hsbench_finish(hsbench_start(https, name, max(took, 5)))
        out = _block_compare(idle, busy)
        out["certificates"] = BLOCK_CERTS
        out["issuance_s"] = round(took, 2)
        out["errors"] = nginx_error_lines(ng)
        return out
    finally:
        ng.stop()


def scenario_blocking(env):
    return {"redis_paused": scenario_blocking_redis(env), "issuing": scenario_blocking_issue(env)}


# --------------------------------------------------------------------------
# scenario 4: scale, and 5: idle
# --------------------------------------------------------------------------

ZONE_SIZE = 64 * 1024 * 1024


def scale_conf(pb, state, fmt, n, https, zone=True, static_dir=None, http=True, one_server=False):
    parts = []
    if not static_dir:
        parts.append(issuer_block("pebble", pb, state))
        if zone:
            parts.append(f"    acme_shared_zone zone=acme_bench:{ZONE_SIZE // (1024 * 1024)}m;\n")
    if http:
        parts.append(f"""
    server {{
        listen 127.0.0.1:{pb.http_port} default_server;
        server_name _;
        location / {{ return 200 "plain\\n"; }}
    }}
""")
    if one_server:
        # one server block holding every certificate, chosen by SNI
        names = " ".join(fmt % i for i in range(n))
        certs = " ".join(f"acme_certificate pebble {fmt % i};" for i in range(n))
        parts.append(f"    server {{ listen 127.0.0.1:{https} ssl; server_name {names}; access_log off; "
                     f"{certs} location / {{ return 200 \"ok\\n\"; }} }}\n")
        return "".join(parts)
    for i in range(n):
        nm = fmt % i
        if static_dir:
            cert = f"ssl_certificate {static_dir}/certs/{nm}/fullchain.pem; " \
                   f"ssl_certificate_key {static_dir}/certs/{nm}/privkey.pem;"
        else:
            cert = "acme_certificate pebble;"
        parts.append(f"    server {{ listen 127.0.0.1:{https} ssl; server_name {nm}; access_log off; "
                     f"{cert} location / {{ return 200 \"ok\\n\"; }} }}\n")
    return "".join(parts)


def count_issued(state):
    d = state / "certs"
    try:
        return sum(1 for x in os.scandir(d) if os.path.exists(os.path.join(x.path, "fullchain.pem")))
    except OSError:
        return 0


def scale_issue(env):
    pb = env.pebble
    fmt = "i%d.scale.example.org"
    https = free_port()
    state = env.work / "scale-issue-state"
    ng = new_nginx(env, "ngx-scale-issue", scale_conf(pb, state, fmt, SCALE, https), workers=2)
    mark = pb.mark()
    t0 = time.monotonic()
    ng.start(wait_port=https, timeout=120)
    progress = []
    deadline = t0 + SCALE_TIMEOUT
    n = 0
    while time.monotonic() < deadline:
        n = count_issued(state)
        progress.append((round(time.monotonic() - t0, 1), n))
        if n >= SCALE:
            break
        time.sleep(1.0)
    t1 = time.monotonic()
    roots = pb.roots(0)
    ok_last = served_verified(https, fmt % (SCALE - 1), roots) is not None if n >= SCALE else None
    reqs = pebble_requests(pb, mark)
    workers = nginx_workers(ng)
    leader = None
    out = {"names": SCALE, "issued": n, "seconds": round(t1 - t0, 1), "complete": n >= SCALE,
           "rate_per_s": round(n / (t1 - t0), 2), "last_name_served": ok_last,
           "projected_s_for_all": round(t1 - t0, 1) if n >= SCALE else (
               round(SCALE / (n / (t1 - t0)), 0) if n else None),
           "pebble_orders": pb.order_count(mark), "pebble_requests": reqs,
           "requests_per_issuance": round(sum(reqs.values()) / max(n, 1), 1),
           "progress": progress[::max(1, len(progress) // 30)],
           "leader_cpu_s": None, "errors": nginx_error_lines(ng)[:20]}
    cpu = {p: proc_stat_cpu_s(p) for p in workers}
    out["worker_cpu_s"] = cpu
    out["pebble_cpu_s"] = proc_stat_cpu_s(pb.proc.pid)
    del leader
    ng.stop()
    return out


def gen_store(state, fmt, first, count, ca_url):
    """Pre-generate `count` certificates in two parallel processes."""
    half = count // 2
    ps = [subprocess.Popen([str(GENCERTS), str(state), fmt, str(first), str(half), ca_url]),
          subprocess.Popen([str(GENCERTS), str(state), fmt, str(first + half), str(count - half), ca_url])]
    for p in ps:
        if p.wait() != 0:
            raise HarnessError("gencerts failed")


def wait_rss_stable(pids, settle=2.0, timeout=600):
    """Wait until no worker's RSS moved by more than 1% over `settle` seconds (every worker has loaded
    what it loads at start)."""
    deadline = time.monotonic() + timeout
    prev = {p: rss_kib(p) for p in pids}
    while time.monotonic() < deadline:
        time.sleep(settle)
        cur = {p: rss_kib(p) for p in pids}
        if all(abs(cur[p] - prev[p]) <= max(prev[p], 1) * 0.01 for p in pids):
            return cur
        prev = cur
    return prev


def start_time(env, n, state, fmt, static=False, workers=2, name=None, one_server=False):
    """Start nginx with n server blocks (one name each) whose certificates are all in `state`: seconds
    until the port accepts and until the last-defined name is served with its stored certificate.
    Returns (result, running Nginx)."""
    pb = env.pebble
    https = free_port()
    ng = new_nginx(env, name or f"ngx-start-{'static' if static else 'acme'}-{n}",
                   scale_conf(pb, state, fmt, n, https, static_dir=state if static else None, http=False,
                              one_server=one_server),
                   workers=workers)
    last = fmt % (n - 1)
    want = pem_leaf_sha256(state / "certs" / last / "fullchain.pem")
    mark = pb.mark()
    t0 = time.monotonic()
    ng.start()
    t_port = None

    def ok():
        nonlocal t_port
        if not ng.proc.alive():
            raise HarnessError(f"nginx exited: {ng.log_text()[-2000:]}")
        if t_port is None:
            if not harness.port_open(https):
                return False
            t_port = time.monotonic()
        try:
            return leaf_sha256(https, last) == want
        except OSError:
            return False
    wait_for(ok, 900, 0.01, f"{last} served")
    t1 = time.monotonic()
    res = {"certificates": n, "seconds": round(t1 - t0, 3), "port_open_s": round(t_port - t0, 3),
           "port": https}
    wait_for(lambda: len(ng.worker_pids()) >= workers, 60, 0.05, "all workers")
    ws = ng.worker_pids()
    wait_rss_stable(ws)
    res["workers_settled_s"] = round(time.monotonic() - t0, 1)
    res["worker_rss_kib"] = [rss_kib(p) for p in ws]
    res["worker_private_kib"] = [private_kib(p) for p in ws]
    res["master_rss_kib"] = rss_kib(ng.proc.pid)
    if not static:
        z = nginx_zone_usage(ws[0], ZONE_SIZE)
        res["zone_used_bytes"] = z[0] if z else None
        res["pebble_orders_after_start"] = pb.order_count(mark)
    return res, ng


def scenario_scale_and_idle(env, do_scale, do_idle):
    out = {}
    idle = None
    pb = env.pebble
    fmt = "n%d.bench.example.org"
    stored = sorted(set(STORED + ([1000] if do_idle else []))) if do_scale else [1000]
    top = max(stored)
    state = env.work / "stored-state"
    t0 = time.monotonic()
    gen_store(state, fmt, 0, top, pb.directory_url)
    out["gencerts_seconds"] = round(time.monotonic() - t0, 1)
    log(f"scale: {top} stored certificates generated in {out['gencerts_seconds']} s")
    keep = {}
    try:
        if do_scale:
            log(f"scale: issuing {SCALE} names from Pebble (at most {SCALE_TIMEOUT:.0f} s)")
            out["issuance"] = scale_issue(env)
            i = out["issuance"]
            log(f"scale: issued {i['issued']}/{SCALE} in {i['seconds']} s ({i['rate_per_s']}/s)")
        starts = {}
        for n in stored:
            for kind in ("acme", "static"):
                r, ng = start_time(env, n, state, fmt, static=(kind == "static"))
                starts[f"{kind}_{n}"] = r
                log(f"scale: start with {n} {kind} certificates: port {r['port_open_s']} s, "
                    f"last name served {r['seconds']} s, worker RSS {r['worker_rss_kib']} KiB")
                used = False
                if n == 1000 and do_idle:
                    keep[kind] = ng              # the idle measurement runs on these later
                    used = True
                if n == top and kind == "acme" and do_scale:
                    keep["sni"] = (ng, r)
                    used = True
                if not used:
                    ng.stop()
        if do_scale:
            r, ng = start_time(env, top, state, fmt, name=f"ngx-start-one-{top}", one_server=True)
            ng.stop()
            starts[f"one_{top}"] = r
            log(f"scale: start with {top} acme certificates in one server: port {r['port_open_s']} s, "
                f"last name served {r['seconds']} s")
        if do_scale:
            out["start"] = starts
            if len(stored) >= 2:
                lo, hi = stored[-2], stored[-1]
                per = {}
                for kind in ("acme", "static"):
                    a, b = starts[f"{kind}_{lo}"], starts[f"{kind}_{hi}"]
                    per[kind] = {
                        "worker_rss_kib_per_cert": round((statistics.mean(b["worker_rss_kib"])
                                                          - statistics.mean(a["worker_rss_kib"])) / (hi - lo), 2),
                        "worker_private_kib_per_cert": round((statistics.mean(b["worker_private_kib"])
                                                              - statistics.mean(a["worker_private_kib"]))
                                                             / (hi - lo), 2),
                        "master_rss_kib_per_cert": round((b["master_rss_kib"] - a["master_rss_kib"])
                                                         / (hi - lo), 2),
                    }
                    if kind == "acme" and a.get("zone_used_bytes") is not None \
                            and b.get("zone_used_bytes") is not None:
                        per[kind]["zone_bytes_per_cert"] = round(
                            (b["zone_used_bytes"] - a["zone_used_bytes"]) / (hi - lo), 1)
                per["module_worker_rss_kib_per_cert"] = round(per["acme"]["worker_rss_kib_per_cert"]
                                                              - per["static"]["worker_rss_kib_per_cert"], 2)
                out["memory_per_cert"] = per
                out["memory_counts"] = [lo, hi]

            # SNI: the first vs the last-defined name, on the largest store (2 workers pinned to CPU 0)
            ng, r = keep.pop("sni")
            try:
                pin_group(ng.proc.pid, SERVER_CPUS)
                log(f"scale: handshakes for the first vs the last of {top} names")
                res = measure_alternating([("first", r["port"], fmt % 0, ng.proc.pid),
                                           ("last", r["port"], fmt % (top - 1), ng.proc.pid)],
                                          HS_SECONDS, HS_ROUNDS)
                out["sni"] = {"certificates": top, "variants": res,
                              "last_first_rate_ratio": ratio(res["last"]["rate"], res["first"]["rate"]),
                              "last_first_cpu_ratio": ratio(res["first"]["server_cpu_us_per_hs"],
                                                            res["last"]["server_cpu_us_per_hs"])}
            finally:
                if keep.get("acme") is not ng:
                    ng.stop()

        if do_idle:
            log(f"idle: nginx with 1,000 managed and nginx with 1,000 static certificates, "
                f"{IDLE_SECONDS:.0f} s side by side")
            nga, ngs = keep["acme"], keep["static"]
            time.sleep(3.0)
            groups = {"acme": nga, "static": ngs}
            pids = {k: [g.proc.pid] + g.worker_pids() + g.helper_pids() for k, g in groups.items()}
            c0 = {k: {p: proc_stat_cpu_s(p) for p in v} for k, v in pids.items()}
            s0 = {k: {p: ctx_switches(p) for p in v} for k, v in pids.items()}
            t0 = time.monotonic()
            time.sleep(IDLE_SECONDS)
            el = time.monotonic() - t0
            idle = {"seconds": round(el, 1), "certificates": 1000}
            for k, v in pids.items():
                per = {}
                for p in v:
                    cpu = proc_stat_cpu_s(p) - c0[k][p]
                    per[str(p)] = {"role": "master" if p == groups[k].proc.pid else "worker",
                                   "cpu_s": round(cpu, 3),
                                   "cpu_s_per_min": round(cpu * 60 / el, 4),
                                   "wakeups_per_s": round((ctx_switches(p) - s0[k][p]) / el, 2)}
                idle[k] = {"processes": per,
                           "total_cpu_s_per_min": round(sum(x["cpu_s_per_min"] for x in per.values()), 4),
                           "max_worker_cpu_s_per_min": max(x["cpu_s_per_min"] for x in per.values()
                                                           if x["role"] == "worker")}
    finally:
        for v in keep.values():
            (v[0] if isinstance(v, tuple) else v).stop()
    return out, idle


# --------------------------------------------------------------------------
# table, chart
# --------------------------------------------------------------------------

# --------------------------------------------------------------------------
# scenario 8: dns-01 (RFC 2136 to Knot) beside http-01, time to certificate
# --------------------------------------------------------------------------

DNS_ZONE = "example.test"
DNS_RUNS = env_int("BENCH_DNS_RUNS", 3)


class TxtWatch:
    """Polls Knot for the TXT records at _acme-challenge.ZONE every 5 ms: when they appear (the RFC 2136
    update applied) and when they are gone again (the module removes them when the issuance ends)."""

    def __init__(self, knot, name):
        import threading
        self.knot, self.name = knot, name
        self.first = {}          # number of values -> first monotonic time seen
        self.gone = None
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        seen = False
        while not self._stop:
            try:
                n = len(harness.dns_query(self.name, "TXT", server=self.knot.address, port=53,
                                          timeout=0.5).values("TXT"))
            except OSError:
                n = None
            now = time.monotonic()
            if n:
                seen = True
                self.first.setdefault(n, now)
            elif n == 0 and seen and self.gone is None:
                self.gone = now
            time.sleep(0.005)

    def stop(self):
        self._stop = True
        self._t.join(2)


def ttc_dns_nginx(env, pb, knot, i, wildcard):
    """One issuance from a fresh state directory: the wildcard (*.ZONE + ZONE, dns-01 through RFC 2136)
    or a plain name (http-01), same Pebble (its -dnsserver is Knot), same nginx build."""
    https = free_port()
    state = env.work / f"dns-state-{i}-{int(wildcard)}"
    if wildcard:
        key = knot.key_file("acme-key-sha256", env.work / "tsig.key")
        issuer = issuer_block("pebble", pb, state, challenge="dns-01",
                              extra=f"dns_update rfc2136; dns_tsig_key {key}; dns_resolver {knot.address}; "
                                    "dns_propagation_timeout 20s;")
        names, sni = f"*.{DNS_ZONE} {DNS_ZONE}", f"w{i}.{DNS_ZONE}"
    else:
        issuer = issuer_block("pebble", pb, state)
        sni = f"h{i}.{DNS_ZONE}"
        names = sni
    conf = issuer + f"""
    server {{
        listen 127.0.0.1:{pb.http_port};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {names};
        acme_certificate pebble {names};
        location / {{ return 200 "ok\\n"; }}
    }}
"""
    ng = new_nginx(env, f"ngx-dns-{i}-{int(wildcard)}", conf, workers=2)
    roots = pb.roots(0)
    mark = pb.mark()
    watch = TxtWatch(knot, f"_acme-challenge.{DNS_ZONE}") if wildcard else None
    t0 = time.monotonic()
    ng.start()
    try:
        t1 = _wait_served(ng.proc, https, sni, roots, timeout=60)
        out = {"seconds": round(t1 - t0, 3)}
        if watch:
            wait_for(lambda: watch.gone, 10, 0.01, "the TXT records removed")
            watch.stop()
            first = min(watch.first.values()) if watch.first else None
            both = watch.first.get(2)
            out["phases_s"] = {
                # account, order, authorizations, SOA/NS lookups, the RFC 2136 updates
                "start_to_txt_in_knot": round(first - t0, 3) if first else None,
                "txt_first_to_both": round(both - first, 3) if both and first else None,
                # propagation check on every NS, challenge answered, Pebble's lookups, finalize,
                # certificate; the records are removed when the issuance ends
                "txt_in_knot_to_removed": round(watch.gone - first, 3) if first else None,
                "removed_to_served": round(t1 - watch.gone, 3),
            }
            text = ng.log_text()
            out["dns01_answered"] = text.count("answering dns-01 for")
        time.sleep(0.3)
        out["requests"] = pebble_requests(pb, mark)
        out["orders"] = pb.order_count(mark)
        out["errors"] = nginx_error_lines(ng)
        return out
    finally:
        if watch:
            watch.stop()
        ng.stop()


def scenario_dns(env):
    import knot_harness
    why = knot_harness.available()
    if why:
        raise HarnessError(f"dns scenario: {why}")
    knot = knot_harness.Knot(env.work / "knot", {DNS_ZONE: ""}).start()
    pb = harness.Pebble(env.work / "pebble-dns", env.ca, dns_server=knot.dns_address,
                        env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"})
    pb.start()
    try:
        runs = {"dns01_wildcard": [], "http01": []}
        for i in range(DNS_RUNS):
            order = [True, False] if i % 2 == 0 else [False, True]   # alternate which goes first
            for wildcard in order:
                r = ttc_dns_nginx(env, pb, knot, i, wildcard)
                k = "dns01_wildcard" if wildcard else "http01"
                runs[k].append(r)
                log(f"time to certificate {k} #{i}: {r['seconds']} s {r.get('phases_s', '')}")
        out = {k: summarize_ttc(v) for k, v in runs.items()}
        ph = [r["phases_s"] for r in runs["dns01_wildcard"]]
        out["dns01_wildcard"]["phases_median_s"] = {
            k: round(statistics.median([p[k] for p in ph if p[k] is not None]), 3)
            for k in ph[0] if any(p[k] is not None for p in ph)}
        out["dns_http_ratio"] = ratio(out["dns01_wildcard"]["median_s"], out["http01"]["median_s"], 2)
        out["knot"] = subprocess.run([knot_harness.KNOTD_BIN, "--version"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True).stdout.strip()
        return out
    finally:
        pb.stop()
        knot.stop()


# --------------------------------------------------------------------------
# scenario 9: on-demand TLS: first handshake for a new name, and handshakes for issued ones
# --------------------------------------------------------------------------

OD_RUNS = env_int("BENCH_OD_RUNS", 5)
OD_SUFFIX = ".od.bench.example.org"


class AskServer:
    """The ask endpoint of both nginx (acme_on_demand ask=) and Caddy (on_demand_tls ask): GET
    URL?domain=NAME, 200 for names under OD_SUFFIX, 403 for the rest."""

    def __init__(self):
        import http.server
        import threading

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                ok = re.search(r"[?&]domain=[a-z0-9-]+" + re.escape(OD_SUFFIX) + r"$", self.path)
                self.send_response(200 if ok else 403)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/check"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def first_handshake(port, name, roots, timeout=60):
    """Seconds from sending the ClientHello (connected first) to a completed handshake verified against
    Pebble's root, and the leaf's DER."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=roots)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        t0 = time.monotonic()
        with ctx.wrap_socket(s, server_hostname=name) as t:
            t1 = time.monotonic()
            return t1 - t0, t.getpeercert(binary_form=True)


def od_nginx(env, ask):
    """nginx: the first handshakes for OD_RUNS new names (sequential), then handshakes/s and server CPU
    per handshake for an issued on-demand name against a configured name, in one nginx."""
    pb = env.pebble
    pod, pcfg = free_port(), free_port()
    cfg = "cfg" + OD_SUFFIX.replace(".od.", ".")
    state = env.work / "od-state"
    conf = issuer_block("pebble", pb, state) + f"""
    acme_on_demand ask={ask.url} rate=1000 max=1000;
    server {{
        listen 127.0.0.1:{pb.http_port};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{pod} ssl;
        server_name ~^[a-z0-9-]+{re.escape(OD_SUFFIX)}$;
        access_log off;
        acme_certificate pebble on_demand;
        location / {{ return 200 "ok\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{pcfg} ssl;
        server_name {cfg};
        access_log off;
        acme_certificate pebble;
        location / {{ return 200 "ok\\n"; }}
    }}
"""
    ng = new_nginx(env, "ngx-od", conf, workers=1)
    roots = pb.roots(0)
    ng.start(wait_port=pod)
    try:
        wait_for(lambda: served_verified(pcfg, cfg, roots), 60, 0.1, "the configured certificate")
        runs = []
        for i in range(-1, OD_RUNS):
            name = f"n{i}{OD_SUFFIX}" if i >= 0 else f"warm-n{OD_SUFFIX}"
            mark = pb.mark()
            secs, _ = first_handshake(pod, name, roots)
            time.sleep(0.3)
            runs.append({"name": name, "seconds": round(secs, 3), "requests": pebble_requests(pb, mark),
                         "orders": pb.order_count(mark)})
            log(f"on-demand first handshake nginx {name}: {runs[-1]['seconds']} s")
        warm, runs = runs[0], runs[1:]
        # pinned for the handshake measurement only: Caddy's first handshakes are not pinned either
        pin_group(ng.proc.pid, SERVER_CPUS)
        od_name = runs[0]["name"]
        res = measure_alternating([("on_demand", pod, od_name, ng.proc.pid),
                                   ("configured", pcfg, cfg, ng.proc.pid)], HS_SECONDS, HS_ROUNDS)
        for k, want in (("on_demand", od_name), ("configured", cfg)):
            names = re.findall(r"DNS:([^,\s]+)", subprocess.run(
                ["openssl", "x509", "-noout", "-text", "-inform", "DER"],
                input=nginx_harness.tls_cert(pod if k == "on_demand" else pcfg, want),
                stdout=subprocess.PIPE).stdout.decode())
            if want not in names:
                raise HarnessError(f"{k}: {want} served a certificate for {names}")
        od, cf = res["on_demand"], res["configured"]
        return {"first_handshake": summarize_ttc(runs), "warmup": warm, "handshake": {
            "variants": res,
            "od_configured_rate_ratio": ratio(od["rate"], cf["rate"]),
            "od_configured_cpu_ratio": ratio(cf["server_cpu_us_per_hs"], od["server_cpu_us_per_hs"])},
            "errors": nginx_error_lines(ng)}
    finally:
        ng.stop()


def od_caddy(env, ask):
    """Caddy 2.6: on_demand_tls { ask URL } and a catch-all https:// site with tls { on_demand }; it
    serves on Pebble's tls-alpn-01 port and answers http-01 on Pebble's http-01 port (as in ttc)."""
    pb = env.pebble
    cd = Caddy(env, "caddy-od", "https://", '\ttls {\n\t\ton_demand\n\t}\n\trespond "ok" 200\n',
               global_extra=f"\ton_demand_tls {{\n\t\task {ask.url}\n\t}}\n")
    roots = pb.roots(0)
    cd.start()
    try:
        cd.proc.wait_port(cd.https_port, timeout=15)
        runs = []
        for i in range(-1, OD_RUNS):
            name = f"c{i}{OD_SUFFIX}" if i >= 0 else f"warm-c{OD_SUFFIX}"
            mark = pb.mark()
            try:
                secs, _ = first_handshake(cd.https_port, name, roots)
            except (OSError, ssl.SSLError) as e:
                raise HarnessError(f"caddy on-demand {name}: {e}\n{cd.log_tail()}") from None
            time.sleep(0.3)
            runs.append({"name": name, "seconds": round(secs, 3), "requests": pebble_requests(pb, mark),
                         "orders": pb.order_count(mark)})
            log(f"on-demand first handshake caddy {name}: {runs[-1]['seconds']} s")
        return {"first_handshake": summarize_ttc(runs[1:]), "warmup": runs[0]}
    finally:
        cd.stop()


def od_apache(env, ask):
    """Apache (event MPM) + mod_acme: ACMEOnDemand on in the default TLS vhost of Pebble's tls-alpn-01
    port, the same ask endpoint, the limits of nginx's run (max capped at mod_acme's 256); http-01 is
    answered on Pebble's http-01 port. First handshakes only, as for Caddy."""
    pb = env.pebble
    ap = apache_harness.Apache(BUILD, pb, mpm="event", name="apache-od", log_level="warn",
                               acme_global=f"ACMEOnDemandAsk {ask.url}\n"
                                           "ACMEOnDemandLimits max=256 rate=1000\n")
    ap.vhosts = (f"<VirtualHost {harness.LOOPBACK}:{ap.https_port}>\n"
                 f"    ServerName {OD_SUFFIX[1:]}\n    ServerAlias *{OD_SUFFIX}\n"
                 "    SSLEngine on\n    ACMEOnDemand on\n</VirtualHost>\n")
    roots = pb.roots(0)
    try:
        ap.start(env.procs)
        runs = []
        for i in range(-1, OD_RUNS):
            name = f"a{i}{OD_SUFFIX}" if i >= 0 else f"warm-a{OD_SUFFIX}"
            mark = pb.mark()
            secs, _ = first_handshake(ap.https_port, name, roots)
            time.sleep(0.3)
            runs.append({"name": name, "seconds": round(secs, 3), "requests": pebble_requests(pb, mark),
                         "orders": pb.order_count(mark)})
            log(f"on-demand first handshake apache {name}: {runs[-1]['seconds']} s")
        return {"first_handshake": summarize_ttc(runs[1:]), "warmup": runs[0],
                "errors": harness.find_error_lines(ap.error_log, allowed=apache_harness.ALLOWED_ERRORS)}
    finally:
        if ap.proc:
            ap.proc.stop()
        ap.cleanup()


OD_SERVERS = {"nginx": od_nginx, "apache": od_apache, "caddy": od_caddy}


def scenario_ondemand(env):
    ask = AskServer()
    out, errors = {}, {}
    try:
        for s, fn in OD_SERVERS.items():
            if s == "caddy" and not caddy_available():
                continue
            if s == "apache" and not apache_available():
                errors[s] = "skipped: build/mod_acme.so not built"
                continue
            try:
                out[s] = fn(env, ask)
            except Exception as e:  # noqa: BLE001
                errors[s] = f"{type(e).__name__}: {e}"[:2000]
                log(f"on-demand {s}: FAILED {errors[s][:300]}")
            env.procs.stop_all()
    finally:
        ask.close()
    n = out.get("nginx", {}).get("first_handshake", {}).get("median_s")
    for s in list(out):
        if s != "nginx" and n and out[s].get("first_handshake", {}).get("median_s"):
            out[f"nginx_{s}_ratio"] = ratio(n, out[s]["first_handshake"]["median_s"], 2)
    if errors:
        out["failed_servers"] = errors
        if "nginx" in errors:
            raise HarnessError(f"on-demand: {errors}")
    return out


def fmt_num(v, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        v = f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return f"{v}{unit}"


def build_table(R):
    rows = []  # (scenario, metric, value, target)
    S = R["scenarios"]

    def add(s, m, v, t=""):
        rows.append((s, m, v, t))

    h = S.get("handshake_nginx", {})
    if "variants" in h:
        v = h["variants"]
        add("1 handshake nginx", "static: handshakes/s (client) | server CPU us/handshake",
            f"{v['static']['rate']:.0f} | {v['static']['server_cpu_us_per_hs']}")
        add("1 handshake nginx", "managed: handshakes/s | server CPU us/handshake",
            f"{v['managed']['rate']:.0f} | {v['managed']['server_cpu_us_per_hs']}")
        add("1 handshake nginx", "variable: handshakes/s | server CPU us/handshake",
            f"{v['variable']['rate']:.0f} | {v['variable']['server_cpu_us_per_hs']}")
        add("1 handshake nginx", "managed/static (rate | CPU efficiency)",
            f"{h['managed_static_rate_ratio']} | {h['managed_static_cpu_ratio']}", ">= 0.98")
        add("1 handshake nginx", "variable/static (rate | CPU efficiency)",
            f"{h['variable_static_rate_ratio']} | {h['variable_static_cpu_ratio']}")
        if "caddy" in v:
            add("1 handshake nginx", "caddy (own Pebble cert): handshakes/s | server CPU us/handshake",
                f"{v['caddy']['rate']:.0f} | {v['caddy']['server_cpu_us_per_hs']}")
            add("1 handshake nginx", "nginx managed/caddy (rate | CPU efficiency)",
                f"{h['managed_caddy_rate_ratio']} | {h['managed_caddy_cpu_ratio']}")
    elif h.get("status"):
        add("1 handshake nginx", "status", h.get("status") + ": " + h.get("error", "")[:80])
    h = S.get("handshake_apache", {})
    if "variants" in h:
        v = h["variants"]
        add("1 handshake apache", "static: handshakes/s | server CPU us/handshake",
            f"{v['static']['rate']:.0f} | {v['static']['server_cpu_us_per_hs']}")
        add("1 handshake apache", "mod_acme: handshakes/s | server CPU us/handshake",
            f"{v['managed']['rate']:.0f} | {v['managed']['server_cpu_us_per_hs']}")
        add("1 handshake apache", "managed/static (rate | CPU efficiency)",
            f"{h['managed_static_rate_ratio']} | {h['managed_static_cpu_ratio']}", ">= 0.98")
    elif h.get("status"):
        add("1 handshake apache", "status", h.get("status") + ": " + h.get("error", "")[:80])
    t = S.get("ttc", {})
    for s, label in (("nginx", "nginx + module"), ("apache_mod_acme", "apache + mod_acme"),
                     ("apache_mod_md", "apache + mod_md (staged)"), ("caddy", "caddy 2.6")):
        x = t.get(s)
        if not x:
            continue
        if "median_s" in x:
            extra = ""
            if "graceful_to_served_median_s" in x:
                extra = f" (+ graceful restart to served {x['graceful_to_served_median_s']} s)"
            add("2 time to cert", f"{label}: median s [min-max]{extra}",
                f"{x['median_s']} [{x['min_s']}-{x['max_s']}]", "< 1 s, <= mod_md")
            add("2 time to cert", f"{label}: ACME requests per issuance (median)",
                fmt_num(x["requests_per_issuance_median"]))
        if "error" in x:
            add("2 time to cert", f"{label}: error", x["error"][:100])
    if t.get("nginx", {}).get("median_s") and t.get("apache_mod_md", {}).get("median_s"):
        add("2 time to cert", "nginx/mod_md time ratio",
            ratio(t["nginx"]["median_s"], t["apache_mod_md"]["median_s"]), "<= 1")
    if t.get("nginx", {}).get("median_s") and t.get("caddy", {}).get("median_s"):
        add("2 time to cert", "nginx/caddy time ratio", ratio(t["nginx"]["median_s"], t["caddy"]["median_s"]),
            "<= 0.6")
    if t.get("apache_mod_acme", {}).get("median_s") and t.get("apache_mod_md", {}).get("median_s"):
        add("2 time to cert", "mod_acme/mod_md time ratio",
            ratio(t["apache_mod_acme"]["median_s"], t["apache_mod_md"]["median_s"]), "<= 1")
    w = S.get("swap", {})
    if "during_swaps" in w:
        add("3 hot swap", f"failed requests during {w['swaps']} swaps (wrk, Connection: close)",
            w["failed_requests"], "0")
        add("3 hot swap", "p99 ms baseline | during swaps | ratio",
            f"{w['baseline']['p99_ms']}/{w['baseline_after']['p99_ms']} | {w['during_swaps']['p99_ms']} | "
            f"{w['p99_ratio']}", "ratio <= 2")
        add("3 hot swap", "requests/s during swaps / baseline", w["rps_ratio"])
        g = list(w["rss_growth_kib_per_worker_swaps"].values())
        g2 = list(w["rss_growth_kib_per_worker_next_swaps"].values())
        add("3 hot swap", f"worker RSS growth KiB: {w['swaps']} swaps under load | {w['swaps']} more",
            f"{g} | {g2}", "no growth")
    b = S.get("blocking", {})
    for k, label in (("redis_paused", "Redis paused, renewals posted"),
                     ("issuing", f"{b.get('issuing', {}).get('certificates', '')} certs issued")):
        x = b.get(k)
        if not x:
            continue
        add("7 blocking", f"{label}: p99 ms idle | busy | ratio",
            f"{x['idle']['lat_p99_ms']} | {x['busy']['lat_p99_ms']} | {x['p99_ratio']}", "ratio <= 1.2")
        add("7 blocking", f"{label}: worst ms idle | busy; requests > 1 s",
            f"{x['idle']['lat_max_ms']} | {x['busy']['lat_max_ms']}; {x['busy']['n_over_1s']}", "busy < 50")
    sc = S.get("scale", {})
    if "issuance" in sc and "issued" in sc["issuance"]:
        i = sc["issuance"]
        add("4 scale", f"{i['names']} names from Pebble: issued, in s, per s, projected s for all",
            f"{i['issued']}, {i['seconds']}, {i['rate_per_s']}, {i['projected_s_for_all']}")
        add("4 scale", "ACME requests | nonce fetches per issued certificate",
            f"{i['requests_per_issuance']} | "
            f"{round(i['pebble_requests'].get('HEAD /nonce-plz', 0) / max(i['issued'], 1), 2)}")
    for k, r in sorted(sc.get("start", {}).items(), key=lambda kv: (kv[1]["certificates"], kv[0])):
        kind = {"acme": "managed", "static": "static", "one": "managed in one server"}[k.split("_")[0]]
        add("4 scale", f"nginx start, {r['certificates']} {kind}"
            f" certs: port open | last name served (s)", f"{r['port_open_s']} | {r['seconds']}",
            "< 2 s at 10,000" if not k.startswith("static") else "")
    st = sc.get("start", {})
    for n in STORED:
        if f"acme_{n}" in st and f"static_{n}" in st:
            add("4 scale", f"start time managed/static at {n}",
                ratio(st[f"acme_{n}"]["seconds"], st[f"static_{n}"]["seconds"], 2))
    m = sc.get("memory_per_cert")
    if m:
        lo, hi = sc["memory_counts"]
        add("4 scale", f"per-worker RSS | private KiB per cert (acme, {lo}->{hi})",
            f"{m['acme']['worker_rss_kib_per_cert']} | {m['acme']['worker_private_kib_per_cert']}")
        add("4 scale", "per-worker RSS | private KiB per cert (static ssl_certificate)",
            f"{m['static']['worker_rss_kib_per_cert']} | {m['static']['worker_private_kib_per_cert']}")
        add("4 scale", "module's own per-worker RSS KiB per cert (managed - static)",
            m["module_worker_rss_kib_per_cert"], "< 16")
        add("4 scale", "shared zone bytes per cert", fmt_num(m["acme"].get("zone_bytes_per_cert")))
    if "sni" in sc:
        s = sc["sni"]
        add("4 scale", f"handshakes/s first | last of {s['certificates']} names",
            f"{s['variants']['first']['rate']:.0f} | {s['variants']['last']['rate']:.0f}")
        add("4 scale", "last/first (rate | CPU efficiency)",
            f"{s['last_first_rate_ratio']} | {s['last_first_cpu_ratio']}", "~1")
    d = S.get("dns", {})
    for k, label in (("dns01_wildcard", "dns-01 RFC 2136, *.zone + zone"), ("http01", "http-01, one name")):
        x = d.get(k)
        if x and "median_s" in x:
            add("8 dns", f"{label}: time to cert, median s [min-max]",
                f"{x['median_s']} [{x['min_s']}-{x['max_s']}]")
            add("8 dns", f"{label}: ACME requests per issuance (median)",
                fmt_num(x["requests_per_issuance_median"]))
    if d.get("dns_http_ratio"):
        add("8 dns", "dns-01 wildcard / http-01 time ratio", d["dns_http_ratio"])
        for k, v in d["dns01_wildcard"].get("phases_median_s", {}).items():
            add("8 dns", f"dns-01 phase (median s): {k}", v)
    o = S.get("ondemand", {})
    for k in ("nginx", "apache", "caddy"):
        x = o.get(k, {}).get("first_handshake")
        if x:
            add("9 ondemand", f"{k}: first ClientHello -> handshake, new name, median s [min-max]",
                f"{x['median_s']} [{x['min_s']}-{x['max_s']}]")
            add("9 ondemand", f"{k}: ACME requests per new name (median)",
                fmt_num(x["requests_per_issuance_median"]))
        if o.get(f"nginx_{k}_ratio"):
            add("9 ondemand", f"nginx/{k} first-handshake time ratio", o[f"nginx_{k}_ratio"])
    h = o.get("nginx", {}).get("handshake")
    if h:
        v = h["variants"]
        for k in ("on_demand", "configured"):
            add("9 ondemand", f"nginx {k} (issued): handshakes/s | server CPU us/handshake",
                f"{v[k]['rate']:.0f} | {v[k]['server_cpu_us_per_hs']}")
        add("9 ondemand", "on_demand/configured (rate | CPU efficiency)",
            f"{h['od_configured_rate_ratio']} | {h['od_configured_cpu_ratio']}", "~1")
    for k, e in o.get("failed_servers", {}).items():
        add("9 ondemand", f"{k}: error", e[:100])
    rl = S.get("apache_reload", {})
    if "after_renewal_ms_median" in rl:
        add("6 apache reload", f"handshake ms with {rl['certificates']} certs: no change | first after a "
            "renewal (median)", f"{rl['baseline_ms_median']} | {rl['after_renewal_ms_median']}")
        add("6 apache reload", "first handshake after a renewal / no change", rl["after_baseline_ratio"],
            "~1")
    idle = S.get("idle", {})
    if "acme" in idle:
        add("5 idle", f"CPU s/min, 1,000 managed certs, all processes ({idle['seconds']} s)",
            idle["acme"]["total_cpu_s_per_min"])
        add("5 idle", "CPU s/min, busiest worker (managed) | static nginx total",
            f"{idle['acme']['max_worker_cpu_s_per_min']} | {idle['static']['total_cpu_s_per_min']}")
        wk = [f"{x['wakeups_per_s']}" for x in idle["acme"]["processes"].values() if x["role"] == "worker"]
        add("5 idle", "context switches/s per worker (managed)", ", ".join(wk))
    for name, s in S.items():
        if s.get("status") not in (None, "ok"):
            if not any(r[0].endswith(name) for r in rows):
                add(name, s["status"], s.get("error", "")[:100])
    return rows


def print_table(rows):
    w0 = max([len(r[0]) for r in rows] + [8])
    w1 = max([len(r[1]) for r in rows] + [6])
    w2 = max([len(str(r[2])) for r in rows] + [5])
    line = f"{'scenario':<{w0}}  {'metric':<{w1}}  {'value':<{w2}}  target"
    print(line)
    print("-" * len(line))
    for r in rows:
        print(f"{r[0]:<{w0}}  {r[1]:<{w1}}  {str(r[2]):<{w2}}  {r[3]}")


def chart(R, path):
    S = R["scenarios"]
    ratios = []
    h = S.get("handshake_nginx", {})
    if "variants" in h:
        ratios.append(("nginx managed/static", h["managed_static_rate_ratio"], h["managed_static_cpu_ratio"]))
        ratios.append(("nginx variable/static", h["variable_static_rate_ratio"],
                       h["variable_static_cpu_ratio"]))
        if "managed_caddy_cpu_ratio" in h:
            ratios.append(("nginx managed/caddy", h["managed_caddy_rate_ratio"], h["managed_caddy_cpu_ratio"]))
    h = S.get("handshake_apache", {})
    if "variants" in h:
        ratios.append(("apache mod_acme/static", h["managed_static_rate_ratio"], h["managed_static_cpu_ratio"]))
    h = S.get("ondemand", {}).get("nginx", {}).get("handshake")
    if h:
        ratios.append(("nginx on-demand/configured", h["od_configured_rate_ratio"], h["od_configured_cpu_ratio"]))
    s = S.get("scale", {}).get("sni")
    if s:
        ratios.append(("SNI last/first", s["last_first_rate_ratio"], s["last_first_cpu_ratio"]))
    ttc = []
    for k, label in (("nginx", "nginx"), ("apache_mod_acme", "mod_acme"), ("apache_mod_md", "mod_md staged"),
                     ("caddy", "caddy")):
        x = S.get("ttc", {}).get(k, {})
        if "median_s" in x:
            ttc.append((label, x["median_s"]))
    for k, label in (("dns01_wildcard", "nginx dns-01 wildcard"), ("http01", "nginx http-01 (dns run)")):
        x = S.get("dns", {}).get(k, {})
        if "median_s" in x:
            ttc.append((label, x["median_s"]))
    for k in ("nginx", "apache", "caddy"):
        x = S.get("ondemand", {}).get(k, {}).get("first_handshake", {})
        if "median_s" in x:
            ttc.append((f"{k} on-demand 1st hs", x["median_s"]))
    blk = []
    for k, label in (("redis_paused", "Redis paused"), ("issuing", "issuing")):
        x = S.get("blocking", {}).get(k)
        if x:
            blk.append((f"{label} idle", x["idle"]["lat_p99_ms"], x["idle"]["lat_max_ms"]))
            blk.append((f"{label} busy", x["busy"]["lat_p99_ms"], x["busy"]["lat_max_ms"]))
    d3 = path.parent / "chart_blocking.dat"
    d3.write_text("".join(f"\"{a}\" {max(b, 0.01)} {max(c, 0.01)}\n" for a, b, c in blk) or "\"none\" 1 1\n")
    d1 = path.parent / "chart_ratios.dat"
    d2 = path.parent / "chart_ttc.dat"
    d1.write_text("".join(f"\"{a}\" {b} {c}\n" for a, b, c in ratios) or "\"none\" 0 0\n")
    d2.write_text("".join(f"\"{a}\" {b}\n" for a, b in ttc) or "\"none\" 0\n")
    gp = path.parent / "chart.gp"
    gp.write_text(f"""set terminal pngcairo noenhanced size 1600,520 font "sans,10"
set output "{path}"
set multiplot layout 1,3 title "ACME benchmarks, {R['date']} ({R['machine']['cpus']} CPUs)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set yrange [0:*]
set grid ytics
set xtics rotate by -20 scale 0
set key top left
set title "ratios, side by side (1.0 = parity)"
set arrow 1 from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 2 lc rgb "red"
plot "{d1}" using 2:xtic(1) title "handshakes/s", "" using 3 title "server CPU efficiency"
unset arrow 1
set title "time to certificate, median (s)"
set key off
plot "{d2}" using 2:xtic(1) title "seconds" lc rgb "#4477aa"
set title "blocking: request latency, worker_processes 1 (ms, log)"
set key top left
set logscale y
set yrange [0.1:*]
plot "{d3}" using 2:xtic(1) title "p99", "" using 3 title "worst"
unset multiplot
""")
    cp = subprocess.run(["gnuplot", str(gp)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if cp.returncode != 0:
        log(f"gnuplot failed: {cp.stderr.decode(errors='replace')}")
        return False
    return True


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def other_load():
    """Other CPU consumers during the run (other test suites on the machine skew the numbers)."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0:3]
    except OSError:
        return None


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for b in (HSBENCH, GENCERTS):
        if not b.is_file():
            print(f"bench: {b} missing (run `make bench`)", file=sys.stderr)
            return 2
    if not (BUILD / "ngx_http_acme_module.so").is_file():
        print("bench: build/ngx_http_acme_module.so missing", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="acme_bench_"))
    R = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
         "machine": {"cpus": NCPU, "kernel": platform.release(), "loadavg_start": other_load(),
                     "nginx": subprocess.run(["/usr/sbin/nginx", "-v"], stderr=subprocess.PIPE,
                                             text=True).stderr.strip(),
                     "openssl": ssl.OPENSSL_VERSION},
         "config": {"hs_seconds": HS_SECONDS, "hs_rounds": HS_ROUNDS, "hs_threads": HS_THREADS,
                    "ttc_runs": TTC_RUNS, "swaps": SWAPS, "swap_seconds": SWAP_SECONDS,
                    "wrk_connections": WRK_CONNS, "scale": SCALE, "scale_timeout": SCALE_TIMEOUT,
                    "stored": STORED, "idle_seconds": IDLE_SECONDS, "only": ONLY},
         "scenarios": {}}
    S = R["scenarios"]
    failed = []
    t_start = time.monotonic()

    def run(name, fn, *a):
        log(f"scenario {name}")
        t0 = time.monotonic()
        try:
            res = fn(*a)
            res = dict(res or {})
            res["status"] = "ok"
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            res = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
            failed.append(name)
        res["elapsed_s"] = round(time.monotonic() - t0, 1)
        S[name] = res
        env.procs.stop_all()
        return res

    env = Env(work)
    try:
        have_apache = apache_available()
        if "handshake" in ONLY:
            run("handshake_nginx", scenario_handshake_nginx, env)
            if have_apache:
                run("handshake_apache", scenario_handshake_apache, env)
            else:
                S["handshake_apache"] = {"status": "skipped", "error": "build/mod_acme.so not built"}
        if "ttc" in ONLY:
            servers = (["nginx"] + (["apache_mod_acme"] if have_apache else []) + ["apache_mod_md"]
                       + (["caddy"] if caddy_available() else []))

            def ttc():
                res, errors = scenario_ttc(env, servers)
                if errors:
                    res["failed_servers"] = errors
                    failed.append("ttc:" + ",".join(errors))
                return res
            run("ttc", ttc)
            if not have_apache:
                S["ttc"]["apache_mod_acme"] = {"error": "skipped: build/mod_acme.so not built"}
        if "swap" in ONLY:
            run("swap", scenario_swap, env)
        if "blocking" in ONLY:
            run("blocking", scenario_blocking, env)
        if "apache_reload" in ONLY:
            if have_apache:
                run("apache_reload", scenario_apache_reload, env)
            else:
                S["apache_reload"] = {"status": "skipped", "error": "build/mod_acme.so not built"}
        if "dns" in ONLY:
            run("dns", scenario_dns, env)
        if "ondemand" in ONLY:
            run("ondemand", scenario_ondemand, env)
        if "scale" in ONLY or "idle" in ONLY:
            holder = {}

            def scale():
                out, idle = scenario_scale_and_idle(env, "scale" in ONLY, "idle" in ONLY)
                holder["idle"] = idle
                return out
            run("scale", scale)
            if "idle" in ONLY:
                if holder.get("idle"):
                    S["idle"] = dict(holder["idle"], status="ok")
                elif S["scale"]["status"] != "ok":
                    S["idle"] = {"status": "failed", "error": "not reached: the scale scenario failed"}
                    failed.append("idle")
            if "scale" not in ONLY:
                S.pop("scale", None)
    finally:
        env.close()
    R["total_seconds"] = round(time.monotonic() - t_start, 1)
    R["machine"]["loadavg_end"] = other_load()
    R["failed"] = failed
    rows = build_table(R)
    R["table"] = [{"scenario": a, "metric": b, "value": c, "target": d} for a, b, c, d in rows]
    (OUT / "results.json").write_text(json.dumps(R, indent=2) + "\n")
    png = OUT / "results.png"
    chart(R, png)
    print()
    print(f"ACME benchmarks {R['date']}, {NCPU} CPUs, {R['total_seconds']} s "
          f"(servers pinned to CPU {sorted(SERVER_CPUS)}, clients to CPU {sorted(CLIENT_CPUS)})")
    print_table(rows)
    print(f"\nwrote {OUT / 'results.json'} and {png}")
    if failed:
        print(f"bench: scenarios that did not run: {', '.join(failed)}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
