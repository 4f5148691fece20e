"""The status document of a certificate from a CA without renewalInfo (Debian's Pebble) has no
next_ari_check: there is no ARI check to announce (docs/nginx.md, status fields)."""

import json

from harness import free_port, http_request, wait_for
from nginx_harness import issuer_block, nginx_factory  # noqa: F401

NAME = "noari.example.org"


def test_status_without_renewal_info_has_no_next_ari_check(pebble, nginx_factory, tmp_path):
    assert "renewalInfo" not in json.loads(http_request(pebble.directory_url, ca_file=pebble.ca_cert).text)
    https = free_port()
    conf = issuer_block("pebble", pebble, tmp_path / "state") + f"""
    server {{
        listen 127.0.0.1:{pebble.http_port};
        server_name {NAME};
        location = /acme {{ acme_status; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {NAME};
        acme_certificate pebble;
    }}
"""
    nginx_factory(conf, wait_port=https)

    def valid():
        st = json.loads(http_request(f"http://127.0.0.1:{pebble.http_port}/acme",
                                     headers={"Host": NAME}).text)
        c = st["certificates"][0] if st["certificates"] else None
        return c if c and c["state"] == "valid" else None
    c = wait_for(valid, 40, interval=0.3, what="status valid")
    assert "next_ari_check" not in c, c
    assert c["next_renewal"] and c["not_after"], c
