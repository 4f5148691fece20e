"""pytest fixtures for the end-to-end suite (library code lives in harness.py).

Fixtures (scope):
  acme_build (session)          Path of $ACME_BUILD or <repo>/build
  acmectl_bin (session)         Path of $ACME_BUILD/acmectl; fails the test if missing
  test_ca (session)             harness.TestCA: root for Pebble's HTTPS (.ca_cert), .cert/.key
  challtestsrv (session)        harness.ChallTestSrv: mock DNS, every name -> 127.0.0.1
  dns (function)                the same ChallTestSrv; records set through it are cleared
                                after the test
  pebble_session (session)      plain shared harness.Pebble (default options)
  pebble (function)             pebble_session, (re)started if needed, counters reset
  pebble_factory (function)     pebble_factory(**opts) -> new started harness.Pebble
  pebble_next_dir (session)     folder of a current Pebble (ARI, profiles; ../shared/pebble/build.sh
                                or $ACME_PEBBLE_NEXT_BUILD, run once); skips the test when that
                                script is absent, fails it when the build fails
  challtestsrv_next (session)   that Pebble's pebble-challtestsrv (mock DNS, as challtestsrv)
  pebble_next_factory (function)
                                as pebble_factory, with the current Pebble (+ profiles={name: s});
                                records set through dns_next are cleared after the test
  server_logs (function)        harness.LogWatcher: .watch(path, allowed=[...]); checked
                                after the test, fails it on unexpected error lines
                                (Apache's: by apache_factory, before it removes the directory)
  check_error_log (function)    harness.check_error_log
  procs (function)              ProcessManager: .start(args, ...) -> harness.Process, all
                                stopped after the test (before server_logs is checked)
  acme_test_client (function)   factory(pebble=None) -> harness.AcmeTestClient
  no_secret_in_messages (session, autouse)
                                after the session: no test secret (leakcheck) in any log,
                                output or status document of our software

Parallel runs: `make test` runs the suite with pytest-xdist (-n auto) except the tests marked
`serial`, which it runs afterwards on their own (tests/run_all.py). Mark a test (or a module, with
`pytestmark = pytest.mark.serial`) serial when it asserts a latency or time bound that another
test's load could break. Ports come from harness.free_port(), unique across the run's processes.
"""

import itertools
import os
import signal
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import leakcheck  # noqa: E402
from harness import (  # noqa: E402
    AcmeTestClient, ChallTestSrv, LogWatcher, Pebble, PebbleNextMissing, Process, TestCA,
    check_error_log as _check_error_log, child_env)


# --------------------------------------------------------------------------
# session plumbing
# --------------------------------------------------------------------------

def pytest_configure(config):
    config.addinivalue_line("markers", "serial: asserts a latency or time bound: run alone, not beside "
                                       "other tests (tests/run_all.py runs these after the parallel pass)")
    config.addinivalue_line("markers", "slow: takes a minute or more: started first (a parallel run does not "
                                       "end with it alone)")
    # pytest-xdist's controller: the workers (started later, with this environment) share one port registry
    if getattr(config, "workerinput", None) is None and config.getoption("numprocesses", None):
        fd, path = tempfile.mkstemp(prefix="acme-e2e-ports-")
        os.close(fd)
        os.environ[harness.PORT_REGISTRY_ENV] = path
        config._port_registry = path
    # A SIGTERM to pytest (CI timeout) should still run fixture teardown, which
    # stops every server; without this the children would be orphaned.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def _term(signum, frame):
            raise KeyboardInterrupt("SIGTERM")
        signal.signal(signal.SIGTERM, _term)
    # make test-asan: the sanitized servers (and acmectl) write their ASan reports to files
    # that the sanitizer_reports fixture checks after each test.
    d = harness.sanitizer_logs()
    if d is not None:
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o1777)     # workers that run as another user write there too
        if getattr(config, "workerinput", None) is None:   # not in an xdist worker: the others may write
            for p in d.iterdir():   # an earlier run's reports were shown by that run
                if p.name.startswith(("asan.", "ubsan.")):
                    p.unlink()
        # ASan (and LSan) reports go to d/asan.PID. UBSan's own reports ignore log_path when
        # linked with ASan (gcc 12) and go to stderr, i.e. nginx's error log, where the log
        # watcher catches "runtime error:" lines; its first check (even a suppressed one) resets
        # the report path to UBSAN_OPTIONS' log_path, hence the same log_path in both.
        # nginx's own benign UBSan reports are suppressed (tests/asan/ubsan.supp; nginx is
        # built with recoverable checks for that). detect_odr_violation=0: every nginx dynamic
        # module defines ngx_modules and ngx_module_names (dlsym reads them from its handle).
        # Leaks stay checked (tests/asan/lsan.supp: nginx's own exit-time ones).
        supp = harness.REPO_ROOT / "tests" / "asan"
        # use_sigaltstack=0: ASan's thread teardown trips over its own alternate signal stack
        # after apr_thread_exit() (a false stack-buffer-overflow in every Apache worker thread).
        for var, extra in (("ASAN_OPTIONS", ["detect_odr_violation=0", "use_sigaltstack=0",
                                             f"log_path={d / 'asan'}"]),
                           # exitcode=0: a leak is judged from its report file (the check after each
                           # test, with harness.IGNORED_LEAKS), not from an exit status: `nginx -t`
                           # returns before making its cycle reachable, and must still succeed
                           ("LSAN_OPTIONS", [f"suppressions={supp / 'lsan.supp'}", "print_suppressions=0",
                                             "exitcode=0"]),
                           ("UBSAN_OPTIONS", ["print_stacktrace=1", "halt_on_error=1",
                                              f"suppressions={supp / 'ubsan.supp'}",
                                              f"log_path={d / 'asan'}"])):
            opts = [o for o in os.environ.get(var, "").split(":") if o]
            keys = {o.split("=", 1)[0] for o in opts}
            os.environ[var] = ":".join(opts + [e for e in extra if e.split("=", 1)[0] not in keys])
        config._sanitizer_seen = set()


def pytest_collection_modifyitems(session, config, items):
    # the slow ones first (a stable sort: the same order in every xdist worker)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_unconfigure(config):
    harness._kill_all_live()
    path = getattr(config, "_port_registry", None)
    if path:
        os.unlink(path)


def pytest_sessionfinish(session, exitstatus):
    """Reports written after the last test's check (a session server's exit) fail the run."""
    seen = getattr(session.config, "_sanitizer_seen", None)
    if seen is None:
        return
    harness._kill_all_live()
    new = harness.sanitizer_reports(seen)
    if new:
        sys.stderr.write(harness.format_sanitizer_reports(new) + "\n")
        session.exitstatus = 1


@pytest.fixture(autouse=True)
def sanitizer_reports(request):
    """Fails the test when a sanitized process wrote a report during it. Autouse: set up before
    procs and server_logs, so checked after every server of the test stopped (LSan reports at exit)."""
    seen = getattr(request.config, "_sanitizer_seen", None)
    yield
    if seen is None:
        return
    new = harness.sanitizer_reports(seen)
    seen.update(new)
    if new:
        pytest.fail(harness.format_sanitizer_reports(new), pytrace=False)


def _debug_logs(node):
    """Per-test list of (title, path, offset) shown when the test fails."""
    if not hasattr(node, "_e2e_logs"):
        node._e2e_logs = []
    return node._e2e_logs


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("call", "teardown"):
        for title, path, off in getattr(item, "_e2e_logs", []):
            try:
                with open(path, "rb") as f:
                    f.seek(off)
                    text = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            lines = text.splitlines()
            tail = "\n".join(lines[-80:])
            rep.sections.append((f"{title} ({path}, last {min(80, len(lines))} lines)", tail))


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_messages(tmp_path_factory):
    """Fails the session (at the last test's teardown) when a test secret appears in a server log, our
    programs' output or a status document; private keys are those found under the session's directories."""
    leakcheck.enable()
    yield
    hits = leakcheck.scan_session(extra_roots=[tmp_path_factory.getbasetemp()])
    if hits:
        pytest.fail(leakcheck.report(hits), pytrace=False)


# --------------------------------------------------------------------------
# build / binaries
# --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def acme_build():
    return harness.build_dir()


@pytest.fixture(scope="session")
def acmectl_bin(acme_build):
    p = acme_build / "acmectl"
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail(f"acmectl binary not found at {p} (set ACME_BUILD or run `make`)",
                    pytrace=False)
    return p


# --------------------------------------------------------------------------
# CA, DNS, Pebble
# --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def test_ca(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def challtestsrv(tmp_path_factory):
    srv = ChallTestSrv(tmp_path_factory.mktemp("challtestsrv"))
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def dns(challtestsrv, request):
    if not challtestsrv.alive():
        challtestsrv.start()
    _debug_logs(request.node).append(
        ("pebble-challtestsrv", challtestsrv.log_path, challtestsrv.proc.log_size()))
    yield challtestsrv
    challtestsrv.reset()


@pytest.fixture(scope="session")
def pebble_session(tmp_path_factory, test_ca, challtestsrv):
    pb = Pebble(tmp_path_factory.mktemp("pebble"), test_ca, dns_server=challtestsrv.dns_address)
    try:
        pb.start()
        yield pb
    finally:
        pb.stop()


@pytest.fixture
def pebble(pebble_session, dns, request):
    """The shared plain Pebble. Counters (order_count() ...) count from the test start.
    Tests that restart() it are fine; tests needing special config or env must
    use pebble_factory instead."""
    if not pebble_session.alive():
        pebble_session.start()
    pebble_session.reset_counters()
    _debug_logs(request.node).append(("pebble", pebble_session.log_path, pebble_session.mark()))
    return pebble_session


@pytest.fixture
def pebble_factory(tmp_path, test_ca, dns, request):
    """pebble_factory(**opts) -> started Pebble; opts are Pebble's keyword arguments:
    env={...}, http_port=, tls_port=, eab_keys={kid: b64url_key}, eab_required=,
    dns_server= (default: the session challtestsrv), strict=, extra_config={...},
    start=False to get it unstarted. All are stopped after the test."""
    made = []
    counter = itertools.count(1)

    def make(start=True, **opts):
        opts.setdefault("dns_server", dns.dns_address)
        pb = Pebble(tmp_path / f"pebble{next(counter)}", test_ca, **opts)
        made.append(pb)
        _debug_logs(request.node).append((f"pebble #{len(made)}", pb.log_path, 0))
        if start:
            pb.start()
        return pb

    yield make
    for pb in reversed(made):
        try:
            pb.stop()
        except Exception:  # keep stopping the others
            pass


@pytest.fixture(scope="session")
def pebble_next_dir():
    """A current Pebble's folder. Debian's Pebble 2.4 (the default of every other test) has no ARI and
    no profiles; without ../shared/pebble/build.sh the test is skipped, a failed build fails it."""
    try:
        return harness.pebble_next_dir()
    except PebbleNextMissing as e:
        pytest.skip(str(e))
    except harness.HarnessError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def challtestsrv_next(tmp_path_factory, pebble_next_dir):
    srv = ChallTestSrv(tmp_path_factory.mktemp("challtestsrv-next"), next_dir=pebble_next_dir)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def dns_next(challtestsrv_next, request):
    if not challtestsrv_next.alive():
        challtestsrv_next.start()
    _debug_logs(request.node).append(
        ("pebble-challtestsrv (current)", challtestsrv_next.log_path, challtestsrv_next.proc.log_size()))
    yield challtestsrv_next
    challtestsrv_next.reset()


@pytest.fixture
def pebble_next_factory(tmp_path, test_ca, dns_next, pebble_next_dir, request):
    """pebble_next_factory(**opts) -> a started current Pebble (harness.Pebble with next_dir); opts as
    pebble_factory's, plus profiles={name: validity in seconds}. All are stopped after the test."""
    made = []
    counter = itertools.count(1)

    def make(start=True, **opts):
        opts.setdefault("dns_server", dns_next.dns_address)
        pb = Pebble(tmp_path / f"pebble-next{next(counter)}", test_ca, next_dir=pebble_next_dir, **opts)
        made.append(pb)
        _debug_logs(request.node).append((f"pebble (current) #{len(made)}", pb.log_path, 0))
        if start:
            pb.start()
        return pb

    yield make
    for pb in reversed(made):
        try:
            pb.stop()
        except Exception:  # keep stopping the others
            pass


# --------------------------------------------------------------------------
# logs and processes
# --------------------------------------------------------------------------

@pytest.fixture
def server_logs():
    """LogWatcher: server_logs.watch(path, allowed=[regex, ...], from_end=False).
    After the test (and after every process from `procs` was stopped) each
    watched log is checked; unexpected [error]/[crit]/[alert]/[emerg] lines fail
    the test (reported as an error in teardown)."""
    w = LogWatcher()
    yield w
    w.check()


@pytest.fixture
def check_error_log():
    return _check_error_log


class ProcessManager:
    """Starts harness.Process objects for one test and stops them all at teardown."""

    def __init__(self, tmp_path, server_logs, node):
        self.tmp_path = Path(tmp_path)
        self.server_logs = server_logs
        self.node = node
        self.procs = []

    def start(self, args, name=None, log_path=None, env=None, cwd=None,
              wait_port=None, wait_log=None, wait_url=None, ca_file=None, timeout=10.0,
              watch_log=False, allowed=()):
        """Start `args`; output goes to log_path (default tmp_path/<name>.log).
        env: extra variables on top of the (proxy-free) environment.
        wait_port / wait_log (regex) / wait_url (+ca_file): readiness checks.
        watch_log=True registers the output log with server_logs (allowed regexes)."""
        name = name or Path(str(args[0])).name
        log_path = Path(log_path) if log_path else self.tmp_path / f"{name}.log"
        p = Process(args, name=name, log_path=log_path, env=child_env(env), cwd=cwd)
        self.procs.append(p)
        _debug_logs(self.node).append((name, log_path, 0))
        if watch_log:
            self.server_logs.watch(log_path, allowed=allowed)
        if "--status-file" in args[:-1]:
            leakcheck.watch_file(args[list(args).index("--status-file") + 1])
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
            except Exception:
                pass


@pytest.fixture
def procs(tmp_path, server_logs, request):
    # depends on server_logs so that the log check runs after the processes stopped
    m = ProcessManager(tmp_path, server_logs, request.node)
    yield m
    m.stop_all()


@pytest.fixture
def acme_test_client(tmp_path, request):
    """factory(pebble=None, name=None) -> harness.AcmeTestClient for that
    Pebble (default: the shared one). Call .register() then .issue(domains, http_port)."""
    n = itertools.count(1)

    def make(pebble=None, name=None):
        pb = pebble or request.getfixturevalue("pebble")
        return AcmeTestClient(pb.directory_url, pb.ca_cert,
                              tmp_path / (name or f"client{next(n)}"))
    return make
