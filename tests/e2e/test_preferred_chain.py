"""preferred_chain that names no issuer of the chains on offer: the default chain is used and the log says
so (docs/nginx.md: `no chain issued by "CN", using the default`), also when the CA offers no alternates."""

from test_acmectl import Ctl, split_pem


def test_preferred_chain_without_alternates_says_the_default_is_used(acmectl_bin, tmp_path, pebble_factory):
    peb = pebble_factory(env={"PEBBLE_ALTERNATE_ROOTS": "0"})
    c = Ctl(acmectl_bin, tmp_path / "state", peb)
    p = c.ok("issue", "--http-listen", f"127.0.0.1:{peb.http_port}", "--preferred-chain", "No Such Root CA",
             "nochain.example.org")
    assert 'no chain issued by "No Such Root CA", using the default' in p.stderr, p.stderr
    assert len(split_pem(c.state / "certs" / "nochain.example.org" / "fullchain.pem")) >= 2
