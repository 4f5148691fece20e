"""Prometheus metrics (issue #20, Metrics): nginx's `acme_status format=prometheus` and Apache's
`ACMEStatusFormat prometheus` (and `?format=` in both) answer the status document as Prometheus text.

The text is parsed with a real parser (Debian's python3-prometheus-client), every family must have HELP
and TYPE, and the values are checked against the JSON status and against the world: the not_after of the
certificate served, the failures of a certificate whose CA is unreachable, the ACME requests that the
fault proxy in front of Pebble saw (exactly as many as acme_requests_total says), badNonce retries and
rateLimited answers injected by that proxy, and a forced renewal moving the counters."""

import calendar
import datetime
import re
import time

import pytest
from cryptography import x509

import harness
from apache_harness import apache_factory, stored_der  # noqa: F401  (fixture)
from fault_proxy import FaultProxy, problem
from harness import free_port, wait_for
from nginx_harness import (force_renewal, https_get, issuer_block, managed_servers,  # noqa: F401
                          nginx_factory, tls_cert)

prometheus_parser = pytest.importorskip("prometheus_client.parser",
                                        reason="python3-prometheus-client is not installed (make deps)")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# -------------------------------------------------------------------- helpers

def scrape(text):
    """{(sample name, ((label, value), ...)): value}, after checking the exposition: every family has a
    HELP and a TYPE (gauge or counter), no series twice."""
    samples = {}
    for fam in prometheus_parser.text_string_to_metric_families(text):
        assert fam.documentation, f"{fam.name}: no # HELP"
        assert fam.type in ("gauge", "counter"), f"{fam.name}: # TYPE {fam.type}"
        assert fam.name.startswith("acme_"), fam.name
        for s in fam.samples:
            if fam.type == "counter":
                assert s.name == fam.name + "_total", s.name
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"{key} twice"
            samples[key] = s.value
    return samples


def value(samples, metric, **labels):
    return samples.get((metric, tuple(sorted(labels.items()))))


def unix(iso):
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


def not_after(der):
    na = x509.load_der_x509_certificate(der).not_valid_after
    return calendar.timegm(na.replace(tzinfo=datetime.timezone.utc).timetuple())


def check_certificate(samples, c):
    """Every per-certificate metric against the certificate's JSON status."""
    name = c["name"]
    for member, metric in (("not_before", "not_before"), ("not_after", "not_after"),
                           ("next_renewal", "next_renewal"), ("last_success", "last_success"),
                           ("last_failure", "last_failure")):
        got = value(samples, f"acme_certificate_{metric}_seconds", name=name)
        want = unix(c[member]) if c.get(member) else None
        assert got == want, f"{name} {metric}: {got} != {want} ({c})"
    w = c.get("ari_window")
    assert value(samples, "acme_certificate_ari_window_start_seconds", name=name) == (
        unix(w["start"]) if w else None)
    assert value(samples, "acme_certificate_ari_window_end_seconds", name=name) == (
        unix(w["end"]) if w else None)
    assert value(samples, "acme_certificate_failures", name=name) == c["failures"]
    assert value(samples, "acme_certificate_info", name=name, issuer=c["issuer_name"],
                 key_type=c["key_type"]) == 1
    for state in ("pending", "valid", "renewing", "failing", "expired"):
        assert value(samples, "acme_certificate_state", name=name, state=state) == (state == c["state"]), state


def check_issuer(samples, st, issuer):
    """The issuer's counters against its JSON status; returns its entry."""
    entry = next(i for i in st["issuers"] if i["name"] == issuer)
    for member, metric in (("orders", "acme_orders_total"), ("requests", "acme_requests_total"),
                           ("bad_nonce_retries", "acme_bad_nonce_retries_total"),
                           ("rate_limited", "acme_rate_limited_total")):
        assert value(samples, metric, issuer=issuer) == entry[member], (metric, entry)
    for kind, n in entry["errors"].items():
        assert value(samples, "acme_order_errors_total", issuer=issuer, type=kind) == n, (kind, entry)
    return entry


@pytest.fixture
def proxy(pebble, tmp_path, test_ca):
    cert, key = test_ca.issue("metrics-proxy", ["localhost"], ["127.0.0.1"], basename="metrics-proxy")
    px = FaultProxy(pebble, cert, key, free_port(), log_path=tmp_path / "proxy.log")
    px.start()
    try:
        yield px
    finally:
        px.stop()
    assert not px.errors, f"the proxy itself failed: {px.errors}"


def answers(proxy, kind):
    """How many answers the proxy relayed or made with this ACME problem type (429s count as rateLimited)."""
    with proxy._lock:
        reqs = list(proxy.requests)
    return sum(1 for r in reqs if (r.problem or "").endswith(":" + kind)
               or (kind == "rateLimited" and r.status == 429 and not (r.problem or "").endswith(":" + kind)))


def dead_ca_url():
    """A directory URL on a loopback port nobody listens on."""
    return f"https://127.0.0.1:{free_port()}/dir"


# -------------------------------------------------------------------- nginx

GOOD, BAD = "good.metrics.example.org", "bad.metrics.example.org"


def _nginx_conf(proxy, pebble, tmp_path, https, dead):
    state = tmp_path / "state"
    servers = ""
    for name, issuer in ((GOOD, "pebble"), (BAD, "dead")):
        servers += managed_servers(pebble.http_port, https, name, cert=issuer, locations=[
            'location = /acme { acme_status renew=on renew_interval=1s; }',
            'location = /metrics { acme_status format=prometheus; }'])
    return (issuer_block("pebble", proxy.directory_url, state,
                         extra=f"ssl_trusted_certificate {pebble.ca_cert};")
            + issuer_block("dead", dead, state) + servers)


def _nginx_json(https):
    r = https_get(https, GOOD, "/acme")
    assert r.status == 200, r.text
    return r.json()


def _nginx_metrics(https, path="/metrics"):
    r = https_get(https, GOOD, path)
    assert r.status == 200, r.text
    assert r.headers["Content-Type"] == CONTENT_TYPE, r.headers
    return scrape(r.text)


def _cert(st, ident):
    return next((c for c in st["certificates"] if ident in c["identifiers"]), None)


def _quiet(get_json, proxy, issuer):
    """The JSON status once the issuer's request counter equals what the proxy saw and stays so."""
    def same():
        st = get_json()
        n = next((i["requests"] for i in st.get("issuers", []) if i["name"] == issuer), None)
        return st if n == proxy.count() and not any(c["state"] == "renewing" for c in st["certificates"]) \
            else None
    wait_for(same, 20, interval=0.3, what="the request counter to match the proxy")
    time.sleep(1)
    return wait_for(same, 20, interval=0.3, what="the request counter to match the proxy")


def test_nginx_metrics_issued_and_failing(pebble, proxy, nginx_factory, tmp_path):
    https = free_port()
    nginx_factory(_nginx_conf(proxy, pebble, tmp_path, https, dead_ca_url()), wait_port=https,
                  allowed=[r"acme: "])
    wait_for(lambda: (lambda c: c if c and c["state"] == "valid" else None)(_cert(_nginx_json(https), GOOD)),
             40, interval=0.3, what="the good certificate")
    wait_for(lambda: (_cert(_nginx_json(https), BAD) or {}).get("failures", 0) > 0, 30, interval=0.3,
             what="the failing certificate's first failure")
    wait_for(lambda: (_cert(_nginx_json(https), GOOD) or {}).get("ari_window"), 30, interval=0.3,
             what="the ARI window")

    st = _quiet(lambda: _nginx_json(https), proxy, "pebble")
    m = _nginx_metrics(https)
    good, bad = _cert(st, GOOD), _cert(st, BAD)
    check_certificate(m, good)
    check_certificate(m, bad)
    # the world agrees: the certificate served, the failing one, what the CA saw
    served = value(m, "acme_certificate_not_after_seconds", name=good["name"])
    wait_for(lambda: not_after(tls_cert(https, GOOD)) == served, 10, what="the served certificate's not_after")
    assert value(m, "acme_certificate_state", name=good["name"], state="valid") == 1
    assert value(m, "acme_certificate_state", name=bad["name"], state="failing") == 1
    assert time.time() - 120 < value(m, "acme_certificate_last_success_seconds", name=good["name"]) <= time.time()
    assert value(m, "acme_certificate_last_success_seconds", name=bad["name"]) is None
    # the proxy's ARI window: 30 to 31 days from now
    assert 29 * 86400 < value(m, "acme_certificate_ari_window_start_seconds", name=good["name"]) - time.time() \
        < value(m, "acme_certificate_ari_window_end_seconds", name=good["name"]) - time.time() < 32 * 86400
    assert value(m, "acme_certificate_failures", name=bad["name"]) >= 1
    assert value(m, "acme_certificate_last_failure_seconds", name=bad["name"]) > time.time() - 120
    assert value(m, "acme_certificate_not_after_seconds", name=bad["name"]) is None
    assert value(m, "acme_order_errors_total", issuer="dead", type="network") >= 1
    assert value(m, "acme_orders_total", issuer="dead") >= 1
    assert value(m, "acme_requests_total", issuer="pebble") == proxy.count()
    assert value(m, "acme_bad_nonce_retries_total", issuer="pebble") == answers(proxy, "badNonce")
    assert value(m, "acme_orders_total", issuer="pebble") == 1
    before = check_issuer(m, st, "pebble")
    check_issuer(m, st, "dead")

    # a forced renewal: one more order, the requests it took, a new certificate
    assert force_renewal(https, GOOD, GOOD).status == 202
    wait_for(lambda: _cert(_nginx_json(https), GOOD)["last_success"] != good["last_success"]
             or _cert(_nginx_json(https), GOOD)["not_after"] != good["not_after"],
             40, interval=0.3, what="the forced renewal")
    st = _quiet(lambda: _nginx_json(https), proxy, "pebble")
    m = _nginx_metrics(https)
    check_certificate(m, _cert(st, GOOD))
    assert value(m, "acme_orders_total", issuer="pebble") == before["orders"] + 1
    assert value(m, "acme_requests_total", issuer="pebble") == proxy.count() > before["requests"]
    served = value(m, "acme_certificate_not_after_seconds", name=good["name"])
    wait_for(lambda: not_after(tls_cert(https, GOOD)) == served, 10, what="the renewed certificate served")

    # the same document either way: ?format= overrides the location's format
    r = https_get(https, GOOD, "/metrics?format=json")
    assert r.status == 200 and r.headers["Content-Type"] == "application/json", r.headers
    assert _cert(r.json(), GOOD)["name"] == good["name"]
    assert value(_nginx_metrics(https, "/acme?format=prometheus"), "acme_orders_total",
                 issuer="pebble") == before["orders"] + 1
    assert https_get(https, GOOD, "/acme?format=xml").status == 400
    assert https_get(https, GOOD, "/acme").headers["Content-Type"] == "application/json"


def test_nginx_metrics_bad_nonce_and_rate_limits(pebble, proxy, nginx_factory, tmp_path):
    https = free_port()
    nginx_factory(_nginx_conf(proxy, pebble, tmp_path, https, dead_ca_url()), wait_port=https,
                  allowed=[r"acme: "])
    wait_for(lambda: (lambda c: c if c and c["state"] == "valid" else None)(_cert(_nginx_json(https), GOOD)),
             40, interval=0.3, what="the good certificate")
    _quiet(lambda: _nginx_json(https), proxy, "pebble")
    m0 = _nginx_metrics(https)

    # two badNonce answers to the next new order: two retries, then the order goes through (Pebble itself
    # rejects some nonces too: the proxy's record of the answers is the reference)
    nonce = proxy.add_fault("newOrder", times=2, respond=problem(400, "badNonce", "stale nonce"))
    assert force_renewal(https, GOOD, GOOD).status == 202
    wait_for(lambda: nonce.hits == 2 and _cert(_nginx_json(https), GOOD)["state"] == "valid",
             40, interval=0.3, what="the renewal through two badNonce answers")
    st = _quiet(lambda: _nginx_json(https), proxy, "pebble")
    m1 = _nginx_metrics(https)
    assert value(m1, "acme_bad_nonce_retries_total", issuer="pebble") == answers(proxy, "badNonce")
    assert value(m1, "acme_bad_nonce_retries_total", issuer="pebble") >= \
        value(m0, "acme_bad_nonce_retries_total", issuer="pebble") + 2
    assert value(m1, "acme_rate_limited_total", issuer="pebble") == answers(proxy, "rateLimited") == 0
    check_issuer(m1, st, "pebble")

    # rateLimited: counted by the client and as an order error of that kind
    limit = proxy.add_fault("newOrder", times=None,
                            respond=problem(429, "rateLimited", "too many new orders", retry_after=3600))
    assert force_renewal(https, GOOD, GOOD).status == 202
    wait_for(lambda: limit.hits == 1 and _cert(_nginx_json(https), GOOD)["failures"] == 1, 30,
             interval=0.3, what="the rate-limited renewal")
    st = _quiet(lambda: _nginx_json(https), proxy, "pebble")
    m2 = _nginx_metrics(https)
    assert value(m2, "acme_rate_limited_total", issuer="pebble") == answers(proxy, "rateLimited") == 1
    assert value(m2, "acme_order_errors_total", issuer="pebble", type="ratelimit") == \
        value(m1, "acme_order_errors_total", issuer="pebble", type="ratelimit") + 1
    assert value(m2, "acme_bad_nonce_retries_total", issuer="pebble") == answers(proxy, "badNonce")
    good = _cert(st, GOOD)
    assert value(m2, "acme_certificate_failures", name=good["name"]) == 1
    assert value(m2, "acme_certificate_state", name=good["name"], state="failing") == 1
    check_certificate(m2, good)
    check_issuer(m2, st, "pebble")


def test_nginx_acme_status_format_parameter(pebble, nginx_factory, tmp_path):
    https = free_port()
    conf = (issuer_block("pebble", pebble, tmp_path / "state") + f"""
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name param.metrics.example.org;
        acme_certificate pebble;
        location = /metrics {{ acme_status format=text; }}
    }}
""")
    ng = nginx_factory(conf, start=False)
    ok, out = ng.test_config()
    assert not ok and '"acme_status": invalid parameter "format=text"' in out, out


# -------------------------------------------------------------------- Apache

def test_apache_metrics_issued_and_failing(apache_factory, pebble, proxy, procs, server_logs):
    good, bad = "good.apache-metrics.example.org", "bad.apache-metrics.example.org"
    dead = dead_ca_url()
    issuer = proxy.directory_url
    a = apache_factory(pebble, name="apache-metrics", ca_url=issuer)
    a.allow(rf'acme: "{re.escape(bad)}"')
    main_port = free_port()
    a.extra_global = (f"Listen {a.address}:{main_port}\n"
                      "<Location /metrics>\n    SetHandler acme-status\n    ACMEStatusFormat prometheus\n"
                      "    Require all granted\n</Location>\n")
    a.vhosts = (a.managed_vhosts([good])
                + a.managed_vhosts([bad], extra=f"    ACMECertificateAuthority {dead}\n"))
    a.start(procs)
    a.wait_valid(good)

    def main_json():
        r = harness.http_request(f"http://{a.address}:{main_port}/acme-status")
        assert r.status == 200, r
        return r.json()

    def metrics(path="/metrics", port=main_port, host=None):
        r = harness.http_request(f"http://{a.address}:{port}{path}", headers={"Host": host} if host else None)
        assert r.status == 200, r
        assert r.headers["Content-Type"] == CONTENT_TYPE, r.headers
        return scrape(r.text)

    wait_for(lambda: (_cert(main_json(), bad) or {}).get("failures", 0) > 0, 30, interval=0.3,
             what="the failing certificate's first failure")
    st = _quiet(main_json, proxy, issuer)
    m = metrics()
    g, b = _cert(st, good), _cert(st, bad)
    check_certificate(m, g)
    check_certificate(m, b)
    assert value(m, "acme_certificate_not_after_seconds", name=g["name"]) == \
        not_after(stored_der(a.state, g["name"]))
    assert value(m, "acme_certificate_state", name=b["name"], state="failing") == 1
    assert value(m, "acme_certificate_failures", name=b["name"]) >= 1
    assert value(m, "acme_order_errors_total", issuer=dead, type="network") >= 1
    assert value(m, "acme_requests_total", issuer=issuer) == proxy.count()
    before = check_issuer(m, st, issuer)
    check_issuer(m, st, dead)

    # a virtual host sees only its own certificate and its issuer
    mv = metrics("/acme-status?format=prometheus", a.http_port, good)
    assert value(mv, "acme_certificate_failures", name=g["name"]) == 0
    assert value(mv, "acme_certificate_failures", name=b["name"]) is None
    assert value(mv, "acme_orders_total", issuer=dead) is None
    assert value(mv, "acme_orders_total", issuer=issuer) == before["orders"]

    # a forced renewal moves the counters
    assert a.renew(good).status == 202
    wait_for(lambda: (lambda c: c if c["last_success"] != g["last_success"] and c["state"] == "valid"
                      else None)(_cert(main_json(), good)), 40, interval=0.3, what="the forced renewal")
    st = _quiet(main_json, proxy, issuer)
    m = metrics()
    check_certificate(m, _cert(st, good))
    assert value(m, "acme_orders_total", issuer=issuer) == before["orders"] + 1
    assert value(m, "acme_requests_total", issuer=issuer) == proxy.count() > before["requests"]
    assert value(m, "acme_certificate_not_after_seconds", name=g["name"]) == \
        not_after(stored_der(a.state, g["name"]))

    # ?format= either way, and nothing else
    r = harness.http_request(f"http://{a.address}:{main_port}/metrics?format=json")
    assert r.status == 200 and r.headers["Content-Type"] == "application/json", r
    assert harness.http_request(f"http://{a.address}:{main_port}/metrics?format=xml").status == 400


def test_apache_status_format_values(apache_factory, pebble):
    a = apache_factory(pebble, name="apache-format-values")
    a.extra_global = "<Location /x>\n    SetHandler acme-status\n    ACMEStatusFormat text\n</Location>\n"
    a.vhosts = a.managed_vhosts(["values.apache-metrics.example.org"])
    cp = a.config_test()
    out = cp.stdout + cp.stderr
    assert cp.returncode != 0 and "ACMEStatusFormat: invalid value 'text'" in out, out
