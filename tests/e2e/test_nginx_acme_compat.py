"""nginx-acme's (nginx's official acme module's) configurations run unchanged: what its README documents
behaves the same here, checked with nginx against Pebble.

  leading-dot names   `server_name .example.org` and `acme_certificate ISSUER .example.org` certify
                      www.example.org and example.org (nginx-acme's expansion, in its order); names no
                      certificate can hold warn at `nginx -t` naming the entry, malformed ones are errors
"""

import datetime
import re
import time
import subprocess

import pytest

from fault_proxy import CertForge, FaultProxy, forge_leaf
from harness import free_port, wait_for
from nginx_harness import (cert_serial, cert_text, https_get, issuer_block, nginx_factory,  # noqa: F401
                           tls_cert, tls_verified)


def _conf(pebble, tmp_path, https, server_name, cert_args="", issuer_extra=""):
    return issuer_block("pebble", pebble, tmp_path / "state", extra=issuer_extra) + f"""
    server {{
        listen 127.0.0.1:{pebble.http_port};
        server_name {server_name};
        location / {{ return 404; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {server_name};
        acme_certificate pebble{' ' + cert_args if cert_args else ''};
        location = /acme {{ acme_status; }}
    }}
"""


def _served(https, sni, pebble, timeout=40):
    roots = pebble.roots(0)

    def one():
        try:
            return tls_verified(https, sni, roots)
        except Exception:  # noqa: BLE001  (the fallback certificate, until issued)
            return None
    return wait_for(one, timeout, interval=0.2, what=f"a Pebble certificate for {sni}")


def _status_cert(https, sni):
    r = https_get(https, sni, "/acme")
    assert r.status == 200, r.text
    certs = r.json()["certificates"]
    assert len(certs) == 1, certs
    return certs[0]


def _sans(https, sni):
    return re.findall(r"DNS:([^,\s]+)", cert_text(tls_cert(https, sni)))


@pytest.mark.parametrize("form", ["server_name", "identifier"])
def test_leading_dot_certifies_www_and_bare_name(pebble, nginx_factory, tmp_path, form):
    """nginx-acme's expansion: ".dot.example.org" is "www.dot.example.org" then "dot.example.org"."""
    https = free_port()
    if form == "server_name":
        conf = _conf(pebble, tmp_path, https, ".Dot.example.org")
    else:
        conf = _conf(pebble, tmp_path, https, "other.example.org", cert_args=".dot.example.org")
    nginx_factory(conf, wait_port=https)
    _served(https, "dot.example.org", pebble)
    _served(https, "www.dot.example.org", pebble)
    assert sorted(_sans(https, "dot.example.org")) == ["dot.example.org", "www.dot.example.org"]
    c = _status_cert(https, "dot.example.org")
    assert c["identifiers"] == ["www.dot.example.org", "dot.example.org"], c


def test_leading_dot_beside_the_same_names_is_one_list(pebble, nginx_factory, tmp_path):
    """".dot.example.org" beside "dot.example.org": no name twice, no name dropped."""
    https = free_port()
    ng = nginx_factory(_conf(pebble, tmp_path, https, "dot.example.org .dot.example.org x.example.org"),
                       start=False)
    ok, out = ng.test_config()
    assert ok, out
    ng.start(wait_port=https)
    _served(https, "www.dot.example.org", pebble)
    c = _status_cert(https, "x.example.org")
    assert c["identifiers"] == ["dot.example.org", "www.dot.example.org", "x.example.org"], c


def _line_of(path, needle):
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in {path}")


def test_names_no_certificate_can_hold_are_named_in_warnings(pebble, nginx_factory, tmp_path):
    https = free_port()
    names = r"a.example.org ~^re\d+\.example\.org$ *.w.example.org"
    ng = nginx_factory(_conf(pebble, tmp_path, https, names), start=False)
    ok, out = ng.test_config()
    assert ok, out
    where = f"{ng.conf_path}:{_line_of(ng.conf_path, 'acme_certificate pebble')}"
    for entry in (r"~^re\d+\.example\.org$", r"*.w.example.org"):
        assert re.search(r"\[warn\].*acme_certificate: server_name \"%s\" .*not certified in %s"
                         % (re.escape(entry), re.escape(where)), out), (entry, out)


@pytest.mark.parametrize("entry", [".example..org", "..example.org", "a..example.org", ".-x.example.org",
                                   ".192.0.2.1", "www.example.*"])
def test_malformed_server_name_is_an_error(pebble, nginx_factory, tmp_path, entry):
    https = free_port()
    ng = nginx_factory(_conf(pebble, tmp_path, https, f"a.example.org {entry}"), start=False)
    ok, out = ng.test_config()
    assert not ok, out
    where = f"{ng.conf_path}:{_line_of(ng.conf_path, 'acme_certificate pebble')}"
    assert re.search(r"\[emerg\].*acme_certificate: invalid server name \"%s\": .* in %s"
                     % (re.escape(entry), re.escape(where)), out), out


@pytest.mark.parametrize("entry", [".example..org", "..example.org", ".192.0.2.1", ".*.example.org", "."])
def test_malformed_leading_dot_identifier_is_an_error(pebble, nginx_factory, tmp_path, entry):
    https = free_port()
    ng = nginx_factory(_conf(pebble, tmp_path, https, "a.example.org", cert_args=entry), start=False)
    ok, out = ng.test_config()
    assert not ok, out
    where = f"{ng.conf_path}:{_line_of(ng.conf_path, 'acme_certificate pebble')}"
    assert re.search(r"\[emerg\].*invalid identifier \"%s\": .* in %s"
                     % (re.escape(entry), re.escape(where)), out), out


# ---------------------------------------------------------------- a directory URL that redirects

@pytest.fixture
def proxy(pebble, tmp_path, test_ca):
    cert, key = test_ca.issue("compat-proxy", ["localhost"], ["127.0.0.1"], basename="compat-proxy")
    px = FaultProxy(pebble, cert, key, free_port(), log_path=tmp_path / "proxy.log")
    px.start()
    try:
        yield px
    finally:
        px.stop()
    assert not px.errors, f"the proxy itself failed: {px.errors}"


@pytest.mark.parametrize("status", [301, 302])
def test_directory_redirect_is_followed(pebble, proxy, nginx_factory, tmp_path, status):
    """`uri` answering 301/302 (a CA that moved its directory, a balancer adding a slash): nginx follows
    it to the directory and gets its certificate."""
    moved = f"{proxy.base_url}/dir?moved=1"
    proxy.add_fault("directory", method="GET", times=None, respond=(status, [("Location", moved)], b""))
    https = free_port()
    conf = issuer_block("pebble", proxy.directory_url, tmp_path / "state",
                        extra=f"ssl_trusted_certificate {pebble.ca_cert};") + f"""
    server {{
        listen 127.0.0.1:{pebble.http_port};
        server_name moved.example.org;
        location / {{ return 404; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name moved.example.org;
        acme_certificate pebble;
    }}
"""
    nginx_factory(conf, wait_port=https)
    serial = _served(https, "moved.example.org", pebble)
    assert serial in pebble.issued_serials()
    assert proxy.count("GET", "/dir") >= 1 and proxy.count("GET", "/dir?moved=1") >= 1, proxy.summary()


# ---------------------------------------------------------------- key types

def test_p521_account_and_certificate_keys(pebble, nginx_factory, tmp_path):
    """`account_key ecdsa:521` (JWS ES512) and `key=ecdsa:521`, as nginx-acme's README lists them."""
    https = free_port()
    nginx_factory(_conf(pebble, tmp_path, https, "p521.example.org", cert_args="key=ecdsa:521",
                        issuer_extra="account_key ecdsa:521;"), wait_port=https)
    _served(https, "p521.example.org", pebble)
    assert "secp521r1" in cert_text(tls_cert(https, "p521.example.org"))
    assert _status_cert(https, "p521.example.org")["key_type"] == "ecdsa:521"
    keys = list((tmp_path / "state" / "accounts").rglob("account.key"))
    assert len(keys) == 1, sorted((tmp_path / "state").rglob("*"))
    out = subprocess.run(["openssl", "pkey", "-in", str(keys[0]), "-noout", "-text_pub"], capture_output=True,
                         text=True, check=True).stdout
    assert "P-521" in out, out[:200]


# ---------------------------------------------------------------- the CSR

def _proxied_conf(proxy, pebble, tmp_path, https, name, issuer_extra=""):
    return issuer_block("pebble", proxy.directory_url, tmp_path / "state",
                        extra=f"ssl_trusted_certificate {pebble.ca_cert};\n    {issuer_extra}") + f"""
    server {{
        listen 127.0.0.1:{pebble.http_port};
        server_name {name};
        location / {{ return 404; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {name} www.{name};
        acme_certificate pebble;
    }}
"""


@pytest.mark.parametrize("line,subject", [
    ("", None),                                     # nginx-acme 0.4's default: off
    ("common_name_in_csr off;", None),
    ("common_name_in_csr on;", "cn.example.org"),
])
def test_common_name_in_csr(pebble, proxy, nginx_factory, tmp_path, line, subject):
    """The CSR Pebble receives: no subject CN unless `common_name_in_csr on`; the names in subjectAltName."""
    https = free_port()
    nginx_factory(_proxied_conf(proxy, pebble, tmp_path, https, "cn.example.org", line), wait_port=https)
    _served(https, "cn.example.org", pebble)
    # one order; Pebble's random badNonce (5% by default) can make the client send its finalize again
    assert proxy.csrs, proxy.summary()
    for der in proxy.csrs:
        text = subprocess.run(["openssl", "req", "-inform", "DER", "-noout", "-subject", "-text"],
                              input=der, capture_output=True, check=True).stdout.decode()
        if subject is None:
            assert re.search(r"(?m)^subject=\s*$", text), text
            assert "CN" not in text.split("Subject Public Key Info")[0], text
        else:
            assert re.search(r"(?m)^subject=\s*CN\s*=\s*%s\s*$" % re.escape(subject), text), text
        assert re.search(r"DNS:cn\.example\.org, DNS:www\.cn\.example\.org", text), text


def test_common_name_in_csr_bad_value(pebble, nginx_factory, tmp_path):
    https = free_port()
    ng = nginx_factory(_conf(pebble, tmp_path, https, "a.example.org", issuer_extra="common_name_in_csr yes;"),
                       start=False)
    ok, out = ng.test_config()
    assert not ok, out
    assert re.search(r"invalid \"common_name_in_csr\" \"yes\" in acme_issuer \"pebble\": use on or off in %s:%d"
                     % (re.escape(str(ng.conf_path)), _line_of(ng.conf_path, "common_name_in_csr yes")), out), out


# ---------------------------------------------------------------- state_path: off, and its default

def _issuer_without_state(pebble, line=""):
    return (f"acme_issuer pebble {{\n    uri {pebble.directory_url};\n"
            f"    ssl_trusted_certificate {pebble.ca_cert};\n    accept_terms_of_service;\n"
            f"    contact admin@example.org;\n    {line}\n}}\n")


@pytest.mark.parametrize("line", ["", "state_path off;"])
def test_state_in_nginx_acmes_default_directory(pebble, nginx_factory, tmp_path, line):
    """No state_path (or nginx-acme's `state_path off`) with nginx-acme's default directory, acme_NAME under
    nginx's prefix, present: the state is kept there (off: with a warning saying where)."""
    https = free_port()
    conf = _issuer_without_state(pebble, line) + _conf(pebble, tmp_path, https, "st.example.org").split("}\n", 1)[1]
    ng = nginx_factory(conf, start=False)
    theirs = ng.dir / "acme_pebble"
    theirs.mkdir(mode=0o700)
    ok, out = ng.test_config()
    assert ok, out
    if line:
        assert re.search(r"\[warn\].*acme_issuer \"pebble\": \"state_path off\": the state is kept in \"%s\" "
                         r"all the same.* in %s:%d" % (re.escape(str(theirs)), re.escape(str(ng.conf_path)),
                                                       _line_of(ng.conf_path, "state_path off")), out), out
    else:
        assert re.search(r"\[notice\].*acme_issuer \"pebble\": no \"state_path\": using nginx-acme's state "
                         r"directory \"%s\"" % re.escape(str(theirs)), out), out
    ng.start(wait_port=https)
    _served(https, "st.example.org", pebble)
    assert list(theirs.glob("accounts/*/account.key")), sorted(theirs.rglob("*"))
    assert (theirs / "certs" / "st.example.org" / "fullchain.pem").is_file(), sorted(theirs.rglob("*"))


# ---------------------------------------------------------------- nginx-acme's README example

def test_nginx_acme_readme_example(pebble, proxy, nginx_factory, tmp_path):
    """nginx-acme's README example as it is (less `ssl_certificate_cache`, which nginx 1.22 lacks, and
    `resolver`): `contact` without "mailto:", a leading-dot server_name, `acme_shared_zone`, the
    $acme_certificate variables; plus `ssl_verify off` with no trusted CA file (the proxy's certificate is
    from the test CA, which the system does not trust)."""
    https = free_port()
    conf = f"""
    acme_issuer example {{
        uri         {proxy.directory_url};
        contact     admin@example.test;
        state_path  {tmp_path}/acme-example;
        accept_terms_of_service;
        ssl_verify  off;
    }}

    acme_shared_zone zone=ngx_acme_shared:1M;

    server {{
        listen 127.0.0.1:{https} ssl;
        server_name  .example.test;

        acme_certificate example;

        ssl_certificate       $acme_certificate;
        ssl_certificate_key   $acme_certificate_key;
    }}

    server {{
        # listener on port 80 is required to process ACME HTTP-01 challenges
        listen 127.0.0.1:{pebble.http_port};

        location / {{
            return 404;
        }}
    }}
"""
    ng = nginx_factory(conf, start=False)
    ok, out = ng.test_config()
    assert ok, out
    assert re.search(r"\[warn\].*\"ssl_verify off\"", out), out
    ng.start(wait_port=https)
    _served(https, "example.test", pebble)
    _served(https, "www.example.test", pebble)
    assert sorted(_sans(https, "example.test")) == ["example.test", "www.example.test"]
    accounts = [p for path, p in proxy.payloads if path.startswith("/sign-me-up")]
    assert accounts and accounts[0]["contact"] == ["mailto:admin@example.test"], proxy.payloads[:2]


def test_contact_with_a_scheme_is_kept(pebble, nginx_factory, tmp_path):
    """nginx-acme takes any URL as `contact` (mailto: added only without a scheme); so does this module."""
    https = free_port()
    ng = nginx_factory(_conf(pebble, tmp_path, https, "a.example.org",
                             issuer_extra="contact https://example.org/contact;"), start=False)
    ok, out = ng.test_config()
    assert ok, out
    for bad in ("nobody", ":x", "1http://example.org"):
        ng.write_conf(_conf(pebble, tmp_path, https, "a.example.org", issuer_extra=f"contact {bad};"))
        ok, out = ng.test_config()
        assert not ok and f'invalid "contact" "{bad}" in acme_issuer "pebble"' in out, out


# ---------------------------------------------------------------- unversioned challenge names

@pytest.mark.parametrize("challenge", ["http", "tls-alpn"])
def test_unversioned_challenge_names(pebble, nginx_factory, tmp_path, challenge):
    """`challenge http` is http-01 and `challenge tls-alpn` is tls-alpn-01, as in nginx-acme: each the only
    way the certificate can be validated here (only that challenge's port is served)."""
    name = f"{challenge}.chal.example.org"
    conf = issuer_block("pebble", pebble, tmp_path / "state", challenge=challenge)
    if challenge == "http":
        https = free_port()
        conf += f"""
    server {{
        listen 127.0.0.1:{pebble.http_port};
        location / {{ return 404; }}
    }}"""
    else:
        https = pebble.tls_port
    conf += f"""
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {name};
        acme_certificate pebble;
    }}
"""
    ng = nginx_factory(conf, wait_port=https)
    _served(https, name, pebble)
    if challenge == "http":
        assert "/.well-known/acme-challenge/" in (ng.dir / "access.log").read_text()
    else:
        assert f'tls-alpn-01 challenge handshake for "{name}"' in ng.log_text()


# ---------------------------------------------------------------- preferred_chain

def test_preferred_chain_is_served(pebble_factory, nginx_factory, tmp_path):
    """`preferred_chain NAME`: the chain whose topmost certificate NAME issued is the one served."""
    pb = pebble_factory(env={"PEBBLE_ALTERNATE_ROOTS": "2"})
    alt = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=pb.roots(1).encode(),
                         capture_output=True, check=True).stdout.decode()
    alt_cn = re.search(r"CN\s*=\s*(.+)", alt).group(1).strip()
    https = free_port()
    nginx_factory(_conf(pb, tmp_path, https, "chain.example.org", issuer_extra=f'preferred_chain "{alt_cn}";'),
                  wait_port=https)

    def verifies(roots):
        try:
            return tls_verified(https, "chain.example.org", roots)
        except Exception:  # noqa: BLE001
            return None
    wait_for(lambda: verifies(pb.roots(1)), 40, interval=0.2, what="the chain below the alternate root")
    assert verifies(pb.roots(0)) is None


# ---------------------------------------------------------------- profile

@pytest.mark.parametrize("line", ["profile shortlived;", "profile shortlived require;"])
def test_profile_is_requested(pebble, proxy, nginx_factory, tmp_path, line):
    """`profile NAME [require]`: newOrder asks for the profile (the proxy advertises it in the directory)."""
    https = free_port()
    nginx_factory(_proxied_conf(proxy, pebble, tmp_path, https, "profile.example.org", line), wait_port=https)
    _served(https, "profile.example.org", pebble)
    # every newOrder request asks for it (Pebble may reject a nonce: the retry is a second request)
    assert proxy.new_orders and {o["profile"] for o in proxy.new_orders} == {"shortlived"}, proxy.new_orders


# ---------------------------------------------------------------- renewal of short-lived certificates

def _epoch(v):
    if isinstance(v, (int, float)):
        return int(v)
    return int(datetime.datetime.strptime(v, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc).timestamp())


@pytest.mark.parametrize("days,share", [(6, 1 / 2), (30, 2 / 3)])
def test_short_lived_certificate_renews_at_half_its_lifetime(pebble, proxy, nginx_factory, tmp_path, days, share):
    """nginx-acme 0.4: a certificate valid for less than 10 days is renewed at half its lifetime (a longer one
    here at two thirds). The CA (the proxy, with no ARI) hands out a leaf signed by Pebble's intermediate
    with the lifetime under test."""
    proxy.renewal_info = False
    name = f"life{days}.example.org"
    now = int(time.time())
    not_before, not_after = now - 60, now - 60 + days * 86400
    proxy.add_fault("certificate", method="POST", times=None,
                    transform=forge_leaf(CertForge(pebble, tmp_path / "forge"), dns=[name, f"www.{name}"],
                                         not_before=not_before, not_after=not_after))
    https = free_port()
    conf = _proxied_conf(proxy, pebble, tmp_path, https, name).replace(
        "acme_certificate pebble;", "acme_certificate pebble;\n        location = /acme { acme_status; }")
    nginx_factory(conf, wait_port=https)
    _served(https, name, pebble)

    def renewal():
        c = _status_cert(https, name)
        return c if c.get("next_renewal") and c.get("state") == "valid" else None
    c = wait_for(renewal, 20, interval=0.2, what="the status with the next renewal")
    assert c["renewal_reason"] == "lifetime", c
    assert abs(_epoch(c["not_after"]) - not_after) <= 1, c
    want = not_before + int(days * 86400 * share)
    assert abs(_epoch(c["next_renewal"]) - want) <= 60, (c, want)


# ---------------------------------------------------------------- account_key FILE

def test_account_key_file_name_without_dot_or_slash(pebble, nginx_factory, tmp_path):
    """nginx-acme reads any account_key value that is no key type as a file (relative to the configuration's
    directory): `account_key acctkey` too."""
    https = free_port()
    ng = nginx_factory(_conf(pebble, tmp_path, https, "acctfile.example.org",
                             issuer_extra="account_key acctkey;"), start=False)
    ok, out = ng.test_config()
    assert not ok and re.search(r"invalid \"account_key\" \"acctkey\" in acme_issuer \"pebble\": not a key "
                                r"type, and cannot load it as a key file", out), out
    key = ng.conf_path.parent / "acctkey"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384",
                    "-out", str(key)], check=True, capture_output=True)
    key.chmod(0o644)
    ok, out = ng.test_config()
    assert ok, out
    ng.start(wait_port=https)
    _served(https, "acctfile.example.org", pebble)


def test_nginx_acme_default_directory_taken_over_without_state_path(pebble, acme_test_client, nginx_factory,
                                                                    tmp_path):
    """A configuration that relied on nginx-acme's default state directory (no state_path): the state nginx-acme
    left in acme_NAME under nginx's prefix is found and taken over, no order placed."""
    from test_nginx_acme_state import ALT, NAME, _nginx_acme_state

    https = free_port()
    conf = _issuer_without_state(pebble) + f"""
    server {{
        listen 127.0.0.1:{pebble.http_port};
        location / {{ return 404; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {NAME} {ALT};
        acme_certificate pebble;
        ssl_certificate     $acme_certificate;
        ssl_certificate_key $acme_certificate_key;
    }}
"""
    ng = nginx_factory(conf, start=False,
                       allowed=[r"nginx-acme's certificate \S+ not taken over"])
    state = ng.dir / "acme_pebble"
    _, serial = _nginx_acme_state(acme_test_client(), pebble, state)
    mark = pebble.mark()
    ng.start(wait_port=https)

    def served():
        try:
            return cert_serial(tls_cert(https, NAME))
        except Exception:  # noqa: BLE001
            return None
    wait_for(lambda: served() == serial, 15, interval=0.2, what="nginx-acme's certificate, taken over")
    ng.wait_log(r"took over nginx-acme's account %s/account\.key" % re.escape(str(state)))
    assert pebble.order_count(since=mark) == 0
