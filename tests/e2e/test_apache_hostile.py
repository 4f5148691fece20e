"""mod_acme against hostile input and bad configuration: challenge paths, the status handler, config
errors named by apache2 -t, warnings."""

import os

import harness
import leakcheck
from apache_harness import apache_factory  # noqa: F401  (fixture)
from apache_harness import Apache, http_get, raw_http, tls_get


def _write_token(a, token, ident, value):
    """A challenge record as the core writes it: "<dns|ip> <identifier> <key authorization>"."""
    d = a.state / "challenges" / "http-01"
    d.mkdir(parents=True, exist_ok=True)
    (d / token).write_text(f"{ident} {value}" if ident else value)
    os.chmod(d / token, 0o644)


def test_http01_hostile_paths(apache_factory, procs, server_logs):
    name = "paths.apache.example.org"
    a = apache_factory(None, name="apache-paths", ca_url=f"http://127.0.0.1:{harness.free_port()}/dir")
    a.vhosts = a.managed_vhosts([name]) + (
        f"<VirtualHost 127.0.0.1:{a.http_port}>\n    ServerName other.example.org\n</VirtualHost>\n")
    server_logs.allow(r"ACME0090: acme: .*next try at")
    a.start(procs)
    token = "tok_EN-123abcXYZ-0123456789_abcdefghijklm"
    _write_token(a, token, "dns " + name, token + ".thumb")
    (a.dir / "htdocs" / "secret").write_text("not for you")
    port = a.http_port
    prefix = "/.well-known/acme-challenge/"

    r = http_get(port, name, prefix + token)
    assert r.status == 200 and r.text == token + ".thumb"
    assert http_get(port, name, prefix + token, method="HEAD").status == 200
    # on the TLS vhost too (fallback connection: challenges are still answered)
    status, body, _, _ = tls_get(a.https_port, name, prefix + token)
    assert status == 200 and body == (token + ".thumb").encode()
    # unknown token, other host, other method
    assert http_get(port, name, prefix + "unknownToken").status == 404
    assert http_get(port, name, prefix + "unknownToken-0123456789abcdefghijklmnopq").status == 404
    assert not [x for x in a.log().splitlines() if "ACME0052" in x and "[acme:debug]" not in x]
    assert http_get(port, "other.example.org", prefix + token).status == 404
    assert http_get(port, name, prefix + token, method="POST").status == 405
    bad = [prefix + "..", prefix + "../secret", prefix + "%2e%2e%2fsecret", prefix + "a%2Fb",
           prefix + token + "%00", prefix + "a" * 300, prefix + "abc$", prefix + "a.b",
           prefix + token + "?x=1", prefix + "", prefix + token + "/", prefix + "%74ok"]
    for path in bad:
        status, data = raw_http(port, f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
                                .encode())
        assert status in (400, 404), (path, data[:200])
        assert b"not for you" not in data and b".thumb" not in data
    status, data = raw_http(port, b"GET " + prefix.encode() + b"tok\x00en HTTP/1.1\r\nHost: " +
                            name.encode() + b"\r\nConnection: close\r\n\r\n")
    assert status in (400, 404)
    # the fallback is in place: https requests get 503, the status page does not
    status, _, _, _ = tls_get(a.https_port, name)
    assert status == 503
    status, body, _, _ = tls_get(a.https_port, name, "/acme-status")
    assert status == 200 and b'"certificates"' in body


def test_http01_token_bound_to_its_identifier(apache_factory, procs, server_logs):
    """A token is answered only for the identifier it was published for (the Host, normalised as identifiers
    are: case, trailing dot, port, IPv6 brackets and canonical form), never for another managed name."""
    one, two = "bound-one.apache.example.org", "bound-two.apache.example.org"
    a = apache_factory(None, name="apache-bound", ca_url=f"http://127.0.0.1:{harness.free_port()}/dir")
    a.vhosts = a.managed_vhosts([one, two]) + (
        f"<VirtualHost 127.0.0.1:{a.https_port}>\n    ServerName v6.apache.example.org\n"
        "    SSLEngine on\n    ACMECertificate ::1\n</VirtualHost>\n")
    server_logs.allow(r"ACME0090: acme: .*next try at")
    a.start(procs)
    port, prefix = a.http_port, "/.well-known/acme-challenge/"
    t_one, t_v6, t_old = "one_" + "1" * 40, "six_" + "6" * 40, "old_" + "0" * 40
    _write_token(a, t_one, "dns " + one, t_one + ".thumb")
    _write_token(a, t_v6, "ip ::1", t_v6 + ".thumb")
    _write_token(a, t_old, None, t_old + ".thumb")      # no identifier (an older release's record)

    for host in (one, one.upper(), one + ".", f"{one}:{port}"):
        r = http_get(port, host, prefix + t_one)
        assert (r.status, r.text) == (200, t_one + ".thumb"), host
    for host in (two, f"{two}:{port}", "[::1]", "v6.apache.example.org"):
        assert http_get(port, host, prefix + t_one).status == 404, host
    for host in (f"[::1]:{port}", "[0:0::1]", "[::0001]"):
        r = http_get(port, host, prefix + t_v6)
        assert (r.status, r.text) == (200, t_v6 + ".thumb"), host
    for host in (one, two, "[::2]"):
        assert http_get(port, host, prefix + t_v6).status == 404, host
    for host in (one, two):
        assert http_get(port, host, prefix + t_old).status == 404, host
    assert "ACME0054" in a.log()


def test_renew_refused_unless_allowed(apache_factory, procs, server_logs):
    a = apache_factory(None, name="apache-norenew", ca_url=f"http://127.0.0.1:{harness.free_port()}/dir")
    name = "norenew.apache.example.org"
    a.vhosts = a.managed_vhosts([name]) + (
        "<Location /acme-status-ro>\n    SetHandler acme-status\n    Require ip 127.0.0.1\n</Location>\n")
    server_logs.allow(r"ACME0090: acme: .*next try at")
    a.start(procs)
    url = f"http://127.0.0.1:{a.http_port}/acme-status-ro"
    assert harness.http_request(url + f"?renew={name}", method="POST", data=b"").status == 403
    r = harness.http_request(url)
    assert r.status == 200 and r.json()["certificates"][0]["identifiers"] == [name]


CONFIG_ERRORS = [
    ("ACMEKeyType ecdsa:999", ["ACMEKeyType", "ecdsa:999"]),
    ("ACMEKeyType ecdsa:256 ecdsa:384", ["ACMEKeyType", "ecdsa:384"]),
    ("ACMECertificateAuthority https://acme-v01.api.letsencrypt.org/directory",
     ["ACMECertificateAuthority", "acme-v01", "acme-v02.api.letsencrypt.org"]),
    ("ACMECertificateAuthority nosuchca", ["ACMECertificateAuthority", "nosuchca"]),
    ("ACMECertificateAuthority http://example.org/dir", ["ACMECertificateAuthority", "http://example.org/dir"]),
    ("ACMEChallenge dns-01", ["ACMEChallenge", "dns-01"]),
    ("ACMEChallenge http-02", ["ACMEChallenge", "http-02"]),
    ("ACMEContact not-an-address", ["ACMEContact", "not-an-address"]),
    ("ACMEAcceptTermsOfService maybe", ["ACMEAcceptTermsOfService"]),
    ("ACMEStateDir \"\"", ["ACMEStateDir"]),
    ("ACMETrustedCertificate /nonexistent/ca.pem", ["ACMETrustedCertificate", "/nonexistent/ca.pem"]),
    ("ACMEExternalAccountBinding kid-1 /nonexistent/eab.key",
     ["ACMEExternalAccountBinding", "/nonexistent/eab.key"]),
    ("ACMEExternalAccountBinding kid-1", ["ACMEExternalAccountBinding", "kid-1"]),
    ("ACMEProfile 'bad profile!'", ["ACMEProfile", "bad profile!"]),
    ("ACMECertificate on", ["ACMECertificate", "VirtualHost"]),
    ("<VirtualHost 127.0.0.1:{https}>\nServerName v.example.org\nACMEStateDir /tmp/x\n</VirtualHost>",
     ["ACMEStateDir", "VirtualHost"]),
    ("<VirtualHost 127.0.0.1:{https}>\nServerName v.example.org\nACMECertificate bad_name!.example.org\n"
     "</VirtualHost>", ["ACMECertificate", "bad_name!.example.org"]),
    ("<VirtualHost 127.0.0.1:{https}>\nServerName v.example.org\nACMECertificate on a.example.org\n"
     "</VirtualHost>", ["ACMECertificate", "a.example.org"]),
]


def test_config_errors(acme_build, tmp_path):
    a = Apache(acme_build, None, name="apache-t", ca_url=None)
    try:
        a.vhosts = a.managed_vhosts(["ok.example.org"])
        p = a.config_test()
        assert p.returncode == 0 and "Syntax OK" in p.stdout + p.stderr, p.stdout + p.stderr
        # an EAB key file that exists is accepted and its content never echoed when wrong
        keyfile = a.dir / "eab.key"
        keyfile.write_text("not base64url!!")
        a.acme_global = f"ACMEExternalAccountBinding kid-1 {keyfile}"
        p = a.config_test()
        out = p.stdout + p.stderr
        assert p.returncode != 0 and "ACMEExternalAccountBinding" in out and "not base64url" not in out
        assert str(keyfile) in out, out
        # the same inline (data:KEY), and a key given without data:: named, never shown
        key = leakcheck.EAB_HMAC_KEY
        for arg, needle in ((f"data:{key}*", "data:"), (key, "data:"),
                            (f"data:{key[:-3]}", "data:")):
            a.acme_global = f"ACMEExternalAccountBinding kid-1 {arg}"
            p = a.config_test()
            out = p.stdout + p.stderr
            assert p.returncode != 0 and "ACMEExternalAccountBinding" in out and needle in out, (arg, out)
            assert key[:20] not in out, out
        a.acme_global = f"ACMEExternalAccountBinding kid-1 data:{key}"
        p = a.config_test()
        assert p.returncode == 0, p.stdout + p.stderr
        # a name no SSL vhost serves: a warning, also from apache2 -t
        a.acme_global = (f"<VirtualHost 127.0.0.1:{a.http_port}>\nServerName plainonly.example.org\n"
                         "ACMECertificate on\n</VirtualHost>")
        p = a.config_test()
        out = p.stdout + p.stderr
        assert p.returncode == 0, out
        assert "ACME0006" in out and "plainonly.example.org" in out and "ok.example.org" not in out, out
        for line, needles in CONFIG_ERRORS:
            a.acme_global = line.format(https=a.https_port)
            p = a.config_test()
            out = p.stdout + p.stderr
            assert p.returncode != 0, (line, out)
            for n in needles:
                assert n in out, (line, n, out)
    finally:
        a.cleanup()


def test_warning_for_names_without_tls_vhost(apache_factory, procs, server_logs):
    a = apache_factory(None, name="apache-warn", ca_url=f"http://127.0.0.1:{harness.free_port()}/dir")
    a.vhosts = (f"<VirtualHost 127.0.0.1:{a.http_port}>\n    ServerName plain.example.org\n"
                "    ACMECertificate on\n</VirtualHost>\n"
                f"<VirtualHost 127.0.0.1:{a.https_port}>\n    ServerName tls.example.org\n    SSLEngine on\n"
                "    ACMECertificate on\n</VirtualHost>\n")
    server_logs.allow(r"ACME0090: acme: .*next try at")
    a.start(procs)
    log = a.log()
    assert "ACME0041" in log and "plain.example.org: no virtual host with SSLEngine on" in log
    assert "tls.example.org: no virtual host with SSLEngine on" not in log
