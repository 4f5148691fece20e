"""`nginx -t` refuses bad acme configuration, naming the directive, the value and file:line."""

import re

import pytest

import leakcheck
from harness import free_port
from nginx_harness import issuer_block, nginx_factory  # noqa: F401


def _conf(tmp_path, issuer="", server_extra="acme_certificate le;", server_name="a.example.org",
          http_extra=""):
    iss = issuer if issuer else (
        "acme_issuer le {\n    uri https://127.0.0.1:14000/dir;\n"
        f"    state_path {tmp_path}/state;\n    accept_terms_of_service;\n}}\n")
    return iss + http_extra + f"""
    server {{
        listen 127.0.0.1:{free_port()} ssl;
        server_name {server_name};
        {server_extra}
    }}
"""


def _line_of(conf_path, needle):
    for i, line in enumerate(conf_path.read_text().splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in {conf_path}")


def _check(nginx_factory, tmp_path, conf, needle, *patterns):
    ng = nginx_factory(conf, start=False)
    ok, out = ng.test_config()
    assert not ok, out
    assert "[emerg]" in out, out
    line = _line_of(ng.conf_path, needle)
    assert f"{ng.conf_path}:{line}" in out, out
    for p in patterns:
        assert re.search(p, out), (p, out)
    return out


def test_good_config_passes(nginx_factory, tmp_path):
    ng = nginx_factory(_conf(tmp_path), start=False)
    ok, out = ng.test_config()
    assert ok, out
    assert (tmp_path / "state").is_dir()
    assert ((tmp_path / "state").stat().st_mode & 0o777) == 0o700


def test_unknown_issuer(nginx_factory, tmp_path):
    _check(nginx_factory, tmp_path, _conf(tmp_path, server_extra="acme_certificate nope;"),
           "acme_certificate nope", r"acme_certificate: issuer \"nope\" is missing")


def test_unknown_fallback_issuer(nginx_factory, tmp_path):
    _check(nginx_factory, tmp_path,
           _conf(tmp_path, server_extra="acme_certificate le fallback=zz;"),
           "fallback=zz", r"issuer \"zz\" is missing")


@pytest.mark.parametrize("uri,pattern", [
    ("ftp://example.org/dir", r"invalid \"uri\" \"ftp://example.org/dir\""),
    ("http://example.org/dir", r"invalid \"uri\" \"http://example.org/dir\""),
    ("nosuchca", r"invalid \"uri\" \"nosuchca\""),
    ("https://acme-v01.api.letsencrypt.org/directory", r"acme-v02"),
])
def test_bad_uri(nginx_factory, tmp_path, uri, pattern):
    iss = f"acme_issuer le {{\n    uri {uri};\n    state_path {tmp_path}/state;\n}}\n"
    _check(nginx_factory, tmp_path, _conf(tmp_path, issuer=iss), f"uri {uri}", pattern)


def test_unusable_state_path(nginx_factory, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    iss = f"acme_issuer le {{\n    uri https://127.0.0.1:1/dir;\n    state_path {f}/sub;\n}}\n"
    out = _check(nginx_factory, tmp_path, _conf(tmp_path, issuer=iss), f"state_path {f}",
                 r"state_path")
    assert str(f) in out


def test_missing_uri(nginx_factory, tmp_path):
    iss = f"acme_issuer le {{\n    state_path {tmp_path}/state;\n}}\n"
    _check(nginx_factory, tmp_path, _conf(tmp_path, issuer=iss), "acme_issuer le",
           r"no \"uri\" is defined in acme_issuer \"le\"")


def test_server_without_names(nginx_factory, tmp_path):
    _check(nginx_factory, tmp_path, _conf(tmp_path, server_name="_ *.example.org"),
           "acme_certificate le",
           r"acme_certificate: no identifiers: the server has no names")


@pytest.mark.parametrize("extra,needle,pattern", [
    ("acme_certificate le key=dsa:1024;", "key=dsa", r"invalid key type \"key=dsa:1024\""),
    ("acme_certificate le bad_name!;", "bad_name", r"invalid identifier \"bad_name!\""),
    ("acme_certificate le *.example.org;", "*.example.org", r"wildcard"),
    ("acme_certificate le profile=a/b;", "profile=a/b", r"invalid \"profile=a/b\": expected profile=NAME"),
    ("acme_certificate le profile=;", "profile=;", r"invalid \"profile=\": expected profile=NAME"),
])
def test_bad_certificate_arguments(nginx_factory, tmp_path, extra, needle, pattern):
    _check(nginx_factory, tmp_path, _conf(tmp_path, server_extra=extra), needle, pattern)


@pytest.mark.parametrize("line,pattern", [
    ("challenge dns-02;",
     r"invalid \"challenge\" \"dns-02\" in acme_issuer \"le\": unsupported challenge, use http-01, tls-alpn-01, "
     r"dns-01, dns-account-01 or dns-persist-01"),
    ("account_key /nonexistent/account.pem;",
     r"invalid \"account_key\" \"/nonexistent/account.pem\" .*: not a key type, and cannot load it as a key file "
     r"\(2: No such file or directory\)"),
    ("account_key ecdsa:999;", r"invalid \"account_key\" \"ecdsa:999\" .*: unsupported curve \"999\" for ECDSA"),
    ("account_key rsa:1024;", r"invalid \"account_key\" \"rsa:1024\" .*: unsupported key size \"1024\" for RSA"),
    ("ssl_verify maybe;", r"invalid \"ssl_verify\" \"maybe\""),
    ("frobnicate 1;", r"unknown directive \"frobnicate\" in acme_issuer \"le\""),
    ("profile x whatever;", r"invalid \"profile\" parameter \"whatever\""),
    ("external_account_key kid /nonexistent/eab.key;", r"/nonexistent/eab.key"),
])
def test_bad_issuer_directives(nginx_factory, tmp_path, line, pattern):
    iss = (f"acme_issuer le {{\n    uri https://127.0.0.1:14000/dir;\n"
           f"    state_path {tmp_path}/state;\n    {line}\n}}\n")
    _check(nginx_factory, tmp_path, _conf(tmp_path, issuer=iss), line, pattern)


# The wording also matches what nginx-acme's own t/acme_conf_issuer.t expects ("must have "zone"",
# "invalid zone size"), see tests/nginx-acme-t.
@pytest.mark.parametrize("arg,pattern", [
    ("acme:1m", r"invalid parameter \"acme:1m\": \"acme_shared_zone\" must have \"zone\" parameter"),
    ("zone=acme:big", r"invalid zone size \"big\" in \"zone=acme:big\""),
    ("zone=:1m", r"invalid zone name in \"zone=:1m\""),
])
def test_bad_shared_zone(nginx_factory, tmp_path, arg, pattern):
    _check(nginx_factory, tmp_path, _conf(tmp_path, http_extra=f"acme_shared_zone {arg};\n"),
           "acme_shared_zone", pattern)


def test_eab_key_file_and_ssl_verify_off_warns(nginx_factory, tmp_path):
    eab = tmp_path / "eab.key"
    eab.write_text(leakcheck.EAB_HMAC_KEY + "\n")
    iss = (f"acme_issuer le {{\n    uri https://127.0.0.1:14000/dir;\n"
           f"    state_path {tmp_path}/state;\n    external_account_key kid-1 {eab};\n"
           f"    ssl_verify off;\n}}\n")
    ng = nginx_factory(_conf(tmp_path, issuer=iss), start=False)
    ok, out = ng.test_config()
    assert ok, out
    assert "ssl_verify off" in out and "[warn]" in out


def _eab_issuer(tmp_path, arg):
    return (f"acme_issuer le {{\n    uri https://127.0.0.1:14000/dir;\n"
            f"    state_path {tmp_path}/state;\n    accept_terms_of_service;\n"
            f"    external_account_key kid-1 {arg};\n}}\n")


def _no_secret(out):
    hits = leakcheck.scan_text(leakcheck.Secrets(leakcheck.CONSTANT_SECRETS), "nginx -t", out)
    assert not hits, leakcheck.report(hits)


def test_eab_key_inline(nginx_factory, tmp_path):
    """external_account_key KID data:KEY takes the key inline, as nginx-acme does."""
    ng = nginx_factory(_conf(tmp_path, issuer=_eab_issuer(tmp_path, f"data:{leakcheck.EAB_HMAC_KEY}")),
                       start=False)
    ok, out = ng.test_config()
    assert ok, out
    _no_secret(out)


@pytest.mark.parametrize("arg,pattern", [
    # not base64url, and a length base64url cannot have
    ("data:{key}*", r"invalid \"external_account_key\" in acme_issuer \"le\": the inline key \(data:\)"),
    ("data:{key3}", r"invalid \"external_account_key\" in acme_issuer \"le\": the inline key \(data:\)"),
    # the key given without data: is no file name, and not shown as one
    ("{key}", r"\"external_account_key\" in acme_issuer \"le\": no such file, .* \"data:\" prefix"),
    ("{file}", r"invalid \"external_account_key\" file \".*eab\.key\" in acme_issuer \"le\""),
])
def test_eab_key_errors_never_show_the_key(nginx_factory, tmp_path, arg, pattern):
    key = leakcheck.EAB_HMAC_KEY
    bad = tmp_path / "eab.key"
    bad.write_text(f"{key}*\n")
    arg = arg.format(key=key, key3=key[:-3], file=bad)
    out = _check(nginx_factory, tmp_path, _conf(tmp_path, issuer=_eab_issuer(tmp_path, arg)),
                 "external_account_key", pattern)
    _no_secret(out)
    assert key[:20] not in out, out


def _issuer_without_tos(tmp_path, pebble, extra=""):
    return (f"acme_issuer le {{\n    uri {pebble.directory_url};\n"
            f"    ssl_trusted_certificate {pebble.ca_cert};\n"
            f"    state_path {tmp_path}/state;\n{extra}}}\n")


def test_terms_of_service_not_accepted(nginx_factory, tmp_path, pebble):
    # Pebble's directory has meta.termsOfService: nginx -t says so, naming the issuer block
    out = _check(nginx_factory, tmp_path, _conf(tmp_path, issuer=_issuer_without_tos(tmp_path, pebble)),
                 "acme_issuer le", r"acme_issuer \"le\": the CA at .* has terms of service",
                 r"accept_terms_of_service")
    assert pebble.directory_url in out


def test_terms_of_service_accepted(nginx_factory, tmp_path, pebble):
    iss = _issuer_without_tos(tmp_path, pebble, "    accept_terms_of_service;\n")
    ng = nginx_factory(_conf(tmp_path, issuer=iss), start=False)
    ok, out = ng.test_config()
    assert ok, out


def test_terms_of_service_unknown_when_ca_down(nginx_factory, tmp_path):
    # a CA that cannot be reached now does not fail the configuration: a warning, checked again later
    iss = (f"acme_issuer le {{\n    uri https://127.0.0.1:{free_port()}/dir;\n"
           f"    state_path {tmp_path}/state;\n}}\n")
    ng = nginx_factory(_conf(tmp_path, issuer=iss), start=False)
    ok, out = ng.test_config()
    assert ok, out
    assert re.search(r"\[warn\].*acme_issuer \"le\": cannot check whether the CA has terms of service", out), out
