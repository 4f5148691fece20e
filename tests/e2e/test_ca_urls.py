"""The ACME client talks only to what it should: with an https directory every URL the CA hands out must be
https (refused clearly, naming the field and the URL, before anything is sent to it); a URL on another origin
is allowed and logged at info; directory GETs follow up to 10 redirects to https; POSTs follow none.

acmectl against fault_proxy.FaultProxy (https, in front of Pebble) rewriting the CA's answers.
"""

import re
import socket

import pytest

from fault_proxy import edit_json, set_header
from test_faults import Ctl, ctl, fault_pebble, pebble_f, proxy, proxy_cert  # noqa: F401  (fixtures)


def _http(url):
    assert url.startswith("https://"), url
    return "http://" + url[len("https://"):]


def _first_authz(o):
    o["authorizations"][0] = _http(o["authorizations"][0])


def _finalize(o):
    o["finalize"] = _http(o["finalize"])


def _challenge(o):
    for ch in o.get("challenges", []):
        ch["url"] = _http(ch["url"])


def _certificate(o):
    if "certificate" in o:
        o["certificate"] = _http(o["certificate"])


def _location(r):
    r.set_header("Location", _http(r.header("Location")))


# (fault path, method, transform, field named in the error, requests that must never be made)
HTTP_URLS = {
    "finalize": ("newOrder", "POST", edit_json(_finalize), r'"finalize"', ("POST", "/finalize-order/")),
    "authorizations": ("newOrder", "POST", edit_json(_first_authz), r'"authorizations\[0\]"',
                       ("POST", "/authZ/")),
    "challenge": ("authz", "POST", edit_json(_challenge), r'"challenges\[0\]\.url"', ("POST", "/chalZ/")),
    "certificate": ("order", "POST", edit_json(_certificate), r'"certificate"', ("POST", "/certZ/")),
    "order Location": ("newOrder", "POST", _location, r"Location", ("POST", "/my-order/")),
}


@pytest.mark.parametrize("case", list(HTTP_URLS))
def test_http_url_from_the_ca_is_refused(ctl, proxy, case):
    path, method, transform, field, never = HTTP_URLS[case]
    proxy.add_fault(path, method=method, times=None, transform=transform)
    p = ctl.fails("issue", *ctl.http, "plain.example.org")
    err = p.stderr
    assert re.search(rf"the CA's {field} URL \"http://127\.0\.0\.1:{proxy.port}/[^\"]*\" is not https", err), err
    assert proxy.directory_url in err, err
    assert proxy.count(never[0], never[1], prefix=True) == 0, proxy.summary()
    assert not ctl.fullchain("plain.example.org").exists()


def test_http_alternate_chain_is_refused(ctl, proxy):
    alt = f'<http://127.0.0.1:{proxy.port}/certZ/alt/1>;rel="alternate"'
    proxy.add_fault("certificate", method="POST", times=None, transform=set_header("Link", alt))
    p = ctl.fails("issue", *ctl.http, "alt.example.org")
    assert re.search(r'the CA\'s Link rel="alternate" #1 URL "http://127\.0\.0\.1:\d+/certZ/alt/1" is not https',
                     p.stderr), p.stderr
    assert proxy.count("POST", "/certZ/alt/", prefix=True) == 0


def test_other_origin_is_allowed_and_logged(ctl, proxy):
    """renewalInfo on another host (localhost instead of 127.0.0.1: the same proxy; an unsigned GET, so the
    host does not matter to Pebble): followed, and said at info once."""
    def other_host(d):
        d["renewalInfo"] = d["renewalInfo"].replace("://127.0.0.1:", "://localhost:")
    proxy.add_fault("directory", method="GET", times=None, transform=edit_json(other_host))
    p = ctl.ok("-v", "issue", *ctl.http, "origin.example.org")     # -v: info lines too
    assert re.search(rf"the CA's directory \"renewalInfo\" URL \"https://localhost:{proxy.port}/renewal-info\" "
                     r"is on another origin than its directory", p.stderr), p.stderr
    assert p.stderr.count("another origin") == 1, p.stderr
    assert ctl.fullchain("origin.example.org").exists()
    # renew asks the renewalInfo URL (not due: the proxy's window is a month ahead)
    ctl.ok("renew", *ctl.http, "origin.example.org")
    assert proxy.ari_requests, proxy.summary()


@pytest.mark.parametrize("status", [301, 302])
def test_directory_redirect_is_followed(ctl, proxy, status):
    moved = f"{proxy.base_url}/dir?moved=1"
    proxy.add_fault("directory", method="GET", times=None, respond=(status, [("Location", moved)], b""))
    ctl.ok("issue", *ctl.http, "moved.example.org")
    assert proxy.count("GET", "/dir") >= 1 and proxy.count("GET", "/dir?moved=1") >= 1, proxy.summary()


def test_directory_redirects_stop_after_ten(ctl, proxy):
    proxy.add_fault("directory", method="GET", times=None,
                    respond=(302, [("Location", proxy.directory_url)], b""))
    p = ctl.fails("issue", *ctl.http, "loop.example.org")
    assert re.search(r"(?i)redirect", p.stderr), p.stderr
    assert proxy.count("GET", "/dir") == 11, proxy.summary()


def test_directory_redirect_to_http_is_refused(ctl, proxy):
    with socket.socket() as lsn:
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(4)
        lsn.settimeout(0.5)
        target = f"http://127.0.0.1:{lsn.getsockname()[1]}/dir"
        proxy.add_fault("directory", method="GET", times=None, respond=(302, [("Location", target)], b""))
        p = ctl.fails("issue", *ctl.http, "downgrade.example.org")
        assert proxy.directory_url in p.stderr and re.search(r"(?i)protocol", p.stderr), p.stderr
        with pytest.raises(socket.timeout):
            lsn.accept()


def test_post_redirect_is_not_followed(ctl, proxy):
    moved = f"{proxy.base_url}/order-plz-moved"
    proxy.add_fault("newOrder", method="POST", times=None, respond=(307, [("Location", moved)], b""))
    p = ctl.fails("issue", *ctl.http, "post.example.org")
    assert re.search(r"POST https://127\.0\.0\.1:\d+/order-plz.*307", p.stderr), p.stderr
    assert proxy.count("POST", "/order-plz-moved") == 0, proxy.summary()
