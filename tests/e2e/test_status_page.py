"""The status page for people (issue #20): `acme_status` and Apache's acme-status handler answer a browser
(Accept prefers text/html) with an HTML page drawn from the status document; JSON stays the default.

A real headless Chromium (Debian's `chromium`) loads nginx's page with a valid certificate, a failing one
(its CA answers every new order with a problem whose detail carries markup: `<script>` and `"><img`), one
whose CA is unreachable and one not issued yet (its CA holds the new order); the test checks the rendered DOM, that the markup is
text and built nothing, and saves build/status-page.png. The renew button's POST is checked with the
headers a browser sends: same-origin passes, another site's page is refused. Apache serves the same page.
"""

import html
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

import harness
from apache_harness import apache_factory  # noqa: F401  (fixture)
from fault_proxy import FaultProxy, problem
from harness import free_port, wait_for
from nginx_harness import http_get, issuer_block, nginx_factory  # noqa: F401  (fixture)

CHROMIUM = shutil.which("chromium")
MARKUP = '<script>document.title="pwned"</script>"><img id="injected" src="x">'
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"

VALID, FAILING, SLOW = "valid.page.example.org", "failing.page.example.org", "slow.page.example.org"
DOWN = "down.page.example.org"


@pytest.fixture
def proxies(pebble, tmp_path, test_ca):
    cert, key = test_ca.issue("page-proxy", ["localhost"], ["127.0.0.1"], basename="page-proxy")
    made = []
    for name in ("failing", "slow"):
        px = FaultProxy(pebble, cert, key, free_port(), log_path=tmp_path / f"proxy-{name}.log")
        made.append(px.start())
    try:
        yield made
    finally:
        for px in made:
            for f in px.faults:
                f.release()
            px.stop()


def _request(port, path, method="GET", headers=None):
    return harness.http_request(f"http://127.0.0.1:{port}{path}", method=method,
                                data=b"" if method == "POST" else None, headers=headers or {}, timeout=5)


def _chromium(url, tmp_path, screenshot=None):
    """The DOM after Chromium rendered the page (and a screenshot of it)."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-extensions",
            "--no-first-run", "--proxy-server=direct://", f"--user-data-dir={tmp_path / 'chromium'}",
            "--window-size=1400,700"]
    if screenshot is not None:
        subprocess.run(args + [f"--screenshot={screenshot}", url], capture_output=True, timeout=60, check=True)
    r = subprocess.run(args + ["--dump-dom", url], capture_output=True, timeout=60, check=True)
    return r.stdout.decode()


class _Dom(HTMLParser):
    """Rows of the rendered table (class and visible text of each cell), element counts, the title."""

    def __init__(self):
        super().__init__()
        self.rows, self.tags, self.title, self.forms = [], {}, "", []
        self._stack, self._row, self._cell = [], None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if a.get("id") == "injected":
            self.tags["#injected"] = self.tags.get("#injected", 0) + 1
        if tag == "tr" and "cert" in (a.get("class") or "").split():
            self._row = {"class": a["class"], "cells": []}
            self.rows.append(self._row)
        elif tag == "td" and self._row is not None:
            self._cell = []
            self._row["cells"].append(self._cell)
        elif self._cell is not None and tag in ("br", "li", "p", "span"):
            self._cell.append(" ")      # a line or a box of its own when rendered
        if tag == "form":
            self.forms.append(a)
        if tag not in ("meta", "br", "img", "input", "link"):
            self._stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self._stack:
            while self._stack and self._stack.pop() != tag:
                pass
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._stack and self._stack[-1] == "title":
            self.title += data
        elif self._row is not None and self._cell is not None and not ({"style", "script"} & set(self._stack)):
            self._cell.append(data)

    def row(self, name):
        for r in self.rows:
            cells = [" ".join("".join(c).split()) for c in r["cells"]]
            if cells and cells[0].startswith(name):
                return r["class"], cells
        return None


def _dom(text):
    d = _Dom()
    d.feed(text)
    return d


def _nginx_conf(pebble, proxies, tmp_path, status_port):
    failing, slow = proxies
    trust = f"ssl_trusted_certificate {pebble.ca_cert};"
    conf = (issuer_block("pebble", pebble, tmp_path / "state")
            + issuer_block("failing", failing.directory_url, tmp_path / "state", extra=trust)
            + issuer_block("slow", slow.directory_url, tmp_path / "state", extra=trust)
            + issuer_block("down", f"https://127.0.0.1:{free_port()}/dir", tmp_path / "state", extra=trust))
    conf += f"""
    server {{
        listen 127.0.0.1:{pebble.http_port};
        server_name {VALID} {FAILING} {SLOW} {DOWN};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        server_name localhost;
        location = /status {{ acme_status renew=on; }}
        location = /ro {{ acme_status; }}
        location = /metrics {{ acme_status format=prometheus; }}
    }}
"""
    for name, issuer in ((VALID, "pebble"), (FAILING, "failing"), (SLOW, "slow"), (DOWN, "down")):
        conf += f"""
    server {{
        listen 127.0.0.1:{free_port()} ssl;
        server_name {name};
        acme_certificate {issuer};
        location / {{ return 200 "tls\\n"; }}
    }}
"""
    return conf


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make deps installs it)")
def test_nginx_status_page_in_chromium(pebble, proxies, nginx_factory, tmp_path):
    failing, slow = proxies
    failing.add_fault("newOrder", method="POST", times=None,
                      respond=problem(400, "rejectedIdentifier", MARKUP))
    held = slow.add_fault("newOrder", method="POST", hold=True, hold_timeout=120)
    port = free_port()
    nginx_factory(_nginx_conf(pebble, proxies, tmp_path, port), wait_port=port, allowed=[r"acme: "])

    def ready():
        st = _request(port, "/status").json()
        by = {c["identifiers"][0]: c for c in st["certificates"]}
        ok = (by.get(VALID, {}).get("state") == "valid" and by.get(FAILING, {}).get("last_error")
              and by.get(DOWN, {}).get("last_error") and held.hits >= 1)
        return by if ok else None
    by = wait_for(ready, 60, interval=0.3, what="a valid, a failing and a held certificate")

    # JSON stays the default: no Accept, */*, application/json, and both at the same q
    for accept in (None, "*/*", "application/json", "application/json, text/html"):
        r = _request(port, "/status", headers={"Accept": accept} if accept else {})
        assert r.status == 200 and r.headers["Content-Type"].startswith("application/json"), (accept, r)
        assert r.json()["certificates"]

    # an explicit format wins over a browser's Accept
    for path, ctype in (("/status?format=json", "application/json"), ("/metrics", "text/plain"),
                        ("/status?format=prometheus", "text/plain")):
        r = _request(port, path, headers={"Accept": BROWSER_ACCEPT})
        assert r.status == 200 and r.headers["Content-Type"].startswith(ctype), (path, r.headers)

    # a browser's Accept: the page, with a strict policy
    r = _request(port, "/status", headers={"Accept": BROWSER_ACCEPT})
    assert r.status == 200 and r.headers["Content-Type"] == "text/html; charset=utf-8", r
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "form-action 'self'" in csp and "script-src" not in csp, csp
    assert re.search(r"style-src 'sha256-[A-Za-z0-9+/]+=*'", csp), csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    raw = r.body.decode()
    assert "<script" not in raw and "<img" not in raw and "http://" not in raw.split("<body>")[0], raw[:400]
    assert html.escape(MARKUP, quote=True).replace("&#x27;", "&#39;") in raw

    # Chromium renders it
    shot = harness.build_dir() / "status-page.png"
    shot.unlink(missing_ok=True)
    text = _chromium(f"http://127.0.0.1:{port}/status", tmp_path, screenshot=shot)
    dom = _dom(text)
    assert "4 certificates: 1 valid, 1 being issued or waiting, 2 failing or expired." in text, text[:2000]
    assert shot.is_file() and shot.stat().st_size > 10000, "the screenshot for people to look at"
    assert dom.title == "ACME certificates", dom.title       # the injected script did not run
    assert dom.tags.get("#injected") is None and dom.tags.get("img") is None, dom.tags
    assert dom.tags.get("script") is None, dom.tags
    assert len(dom.rows) == 4, dom.rows

    cls, cells = dom.row(by[VALID]["name"])
    names, issuer, key, days, renewal, state, button = cells
    assert "valid" in cls.split() and VALID in names and "pebble" in issuer and key == by[VALID]["key_type"]
    assert re.fullmatch(r"(\d+) days left", days) and int(days.split()[0]) >= 1, days
    assert renewal == f"{by[VALID]['next_renewal']} by the certificate's lifetime" and state == "Valid", cells

    cls, cells = dom.row(by[FAILING]["name"])
    names, issuer, key, days, renewal, state, button = cells
    assert "failing" in cls.split() and FAILING in names and "failing" in issuer, cells
    assert days == "no certificate yet" and renewal.endswith("retry after a failure"), cells
    assert state.startswith("Failing") and "failed attempt" in state, state
    # the CA's text, markup and all, as text
    assert "Last error:" in state and MARKUP in state, state

    # an unreachable CA: the error in words
    cls, cells = dom.row(by[DOWN]["name"])
    names, issuer, key, days, renewal, state, button = cells
    assert "failing" in cls.split() and DOWN in names and "down" in issuer, cells
    # another attempt may have failed between the JSON and the page: curl's "after N ms" differs
    ms = re.compile(r"after \d+ ms")
    assert state.startswith("Failing") and ms.sub("after N ms", f"Last error: {by[DOWN]['last_error']}") \
        in ms.sub("after N ms", state), state

    cls, cells = dom.row(by[SLOW]["name"])
    names, issuer, key, days, renewal, state, button = cells
    assert SLOW in names and days == "no certificate yet" and "slow" in issuer, cells
    assert state.startswith(("Being issued now", "Not yet issued")), state
    assert "error" not in state.lower(), state

    # one renew button per certificate, a POST of the existing ?renew= request
    assert sorted(f["action"] for f in dom.forms) == sorted(f"?renew={by[n]['name']}"
                                                            for n in (VALID, FAILING, SLOW, DOWN)), dom.forms
    assert all(f["method"] == "post" for f in dom.forms)

    # without renew=on: the page has no button
    ro = _dom(_chromium(f"http://127.0.0.1:{port}/ro", tmp_path))
    assert len(ro.rows) == 4 and not ro.forms and "Renew" not in str(ro.rows)

    # the button's POST: what a browser sends from this page passes; from another site's page it is refused
    action = f"/status?renew={by[VALID]['name']}"
    host = f"127.0.0.1:{port}"
    for hdrs in ({"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
                 {"Sec-Fetch-Site": "same-site"},
                 {"Origin": "http://evil.example"},
                 {"Origin": "null"}):
        r = _request(port, action, "POST", {"Accept": BROWSER_ACCEPT, **hdrs})
        assert r.status == 403 and "other sites" in r.json()["error"], (hdrs, r)
    r = _request(port, action, "POST", {"Accept": BROWSER_ACCEPT, "Origin": f"http://{host}",
                                        "Sec-Fetch-Site": "same-origin"})
    assert r.status == 202, r
    held.release()


def test_apache_status_page(pebble, apache_factory, procs, tmp_path):  # noqa: F811
    name = "page.apache.example.org"
    a = apache_factory(pebble, name="apache-page")
    a.vhosts = a.managed_vhosts([name])
    a.start(procs)
    c = a.wait_valid(name)
    url = "/acme-status"
    js = _request(a.http_port, url, headers={"Host": name})
    assert js.headers["Content-Type"].startswith("application/json")
    r = harness.http_request(f"http://{a.address}:{a.http_port}{url}", timeout=5,
                             headers={"Host": name, "Accept": BROWSER_ACCEPT})
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html"), r
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    dom = _dom(r.body.decode())
    assert dom.title == "ACME certificates" and len(dom.rows) == 1, dom.rows
    cls, cells = dom.row(c["name"])
    names, issuer, key, days, renewal, state, button = cells
    assert "valid" in cls.split() and name in names and key == c["key_type"] and state == "Valid", cells
    assert re.fullmatch(r"\d+ days left", days) and renewal.startswith(c["next_renewal"]), cells
    assert [f["action"] for f in dom.forms] == [f"?renew={c['name']}"]
    # the same POST rules
    r = harness.http_request(f"http://{a.address}:{a.http_port}{url}?renew={name}", method="POST", data=b"",
                             headers={"Host": name, "Origin": "http://evil.example",
                                      "Sec-Fetch-Site": "cross-site"}, timeout=5)
    assert r.status == 403 and "other sites" in r.json()["error"], r
    assert a.renew(name).status == 202
