"""Switching from nginx's official acme module (nginx-acme) keeps its state (issue #16, item 7).

A state_path in nginx-acme's layout (account.key, account.url, <first name>-<hash>.crt and .key at the
top, as nginx-acme's src/conf/issuer.rs and src/lib.rs write them) holds an account registered at Pebble
and a certificate Pebble issued to it. nginx with this module and the same state_path serves that
certificate (same serial) without placing an order or registering an account, leaves nginx-acme's files
as they were, logs what it took over and what it skipped, and a forced renewal orders with the account
taken over (the order shows up in that account's order list). A restart does not take over again.
With acme_storage (Redis) the same files are taken over into Redis."""

import json
import os
import re

import pytest

from harness import free_port, normalize_serial, openssl, wait_for
from nginx_harness import (cert_serial, force_renewal, https_get, issuer_block,  # noqa: F401
                           nginx_factory, tls_cert)
from test_redis_store import REDIS_CLI, REDIS_SERVER, Redis, key_file

NAME = "takeover.example.org"
ALT = "www.takeover.example.org"
# nginx-acme's "<first name>-<SipHash of its order, hex>"; the hash is matched by names, not computed
BASE = f"{NAME}-8f3a1c2e5d6b7a90"
BROKEN = "broken.example.org-0123456789abcdef.crt"


def _leaf_serial(pem):
    out = openssl("x509", "-noout", "-serial", input=pem.encode()).decode()
    return normalize_serial(out.strip().split("=", 1)[1])


def _nginx_acme_state(client, pebble, state):
    """What nginx-acme leaves in its state_path after issuing NAME + ALT with that account."""
    client.register(contact=["mailto:admin@example.org"])
    chain, key = client.issue([NAME, ALT], pebble.http_port)
    state.mkdir(mode=0o700)
    files = {
        "account.key": client.key_path.read_bytes(),         # PKCS#8 PEM, as nginx-acme writes it
        "account.url": client.kid.encode(),                   # no newline, as nginx-acme writes it
        f"{BASE}.crt": chain.encode(),                        # the chain as the CA sent it
        f"{BASE}.key": key.read_bytes(),                      # PKCS#8 PEM
        BROKEN: b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n",
    }
    for name, data in files.items():
        (state / name).write_bytes(data)
        os.chmod(state / name, 0o600 if name.endswith(".key") else 0o644)
    return files, _leaf_serial(chain)


def _conf(pebble, state, https, storage=""):
    # an nginx-acme configuration: the variable form, the same state_path
    return storage + issuer_block("pebble", pebble, state) + f"""
    acme_shared_zone zone=ngx_acme_shared:1M;
    server {{
        listen 127.0.0.1:{pebble.http_port};
        server_name {NAME} {ALT};
        location / {{ return 200 "plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        server_name {NAME} {ALT};
        acme_certificate pebble;
        ssl_certificate     $acme_certificate;
        ssl_certificate_key $acme_certificate_key;
        location / {{ return 200 "tls\\n"; }}
        location = /acme {{ acme_status renew=on renew_interval=1s; }}
    }}
"""


def _served_serial(https):
    try:
        return cert_serial(tls_cert(https, NAME))
    except Exception:  # noqa: BLE001
        return None


def _status(https):
    st = https_get(https, NAME, "/acme").json()
    return next(c for c in st["certificates"] if NAME in c["identifiers"])


@pytest.mark.parametrize("storage", ["files", "redis"])
def test_nginx_takes_over_nginx_acme_state(storage, pebble, acme_test_client, nginx_factory, procs, tmp_path):
    redis, conf = None, ""
    if storage == "redis":
        if not (os.access(REDIS_SERVER, os.X_OK) and os.access(REDIS_CLI, os.X_OK)):
            pytest.skip("redis-server / redis-cli not installed")
        redis = Redis(procs, tmp_path / "redis")
        conf = f"acme_storage {redis.url()} prefix=ngx;\nacme_storage_key {key_file(tmp_path / 'storage.key')};\n"
    state = tmp_path / "acme_pebble"
    client = acme_test_client()
    files, serial = _nginx_acme_state(client, pebble, state)
    accounts = pebble.account_count()
    mark = pebble.mark()

    https = free_port()
    ng = nginx_factory(_conf(pebble, state, https, conf), wait_port=https,
                       allowed=[rf"nginx-acme's certificate \S+/{re.escape(BROKEN)} not taken over"])

    # served at once: the certificate nginx-acme had, no order
    wait_for(lambda: _served_serial(https) == serial, 15, interval=0.2, what="the taken-over certificate")
    ng.wait_log(rf"took over nginx-acme's account {re.escape(str(state))}/account\.key for "
                rf"{re.escape(pebble.directory_url)} \({re.escape(client.kid)}\)")
    ng.wait_log(rf"took over nginx-acme's certificate {re.escape(str(state))}/{re.escape(BASE)}\.crt as "
                rf"\"{re.escape(NAME)}\" \(serial 0*{serial}, valid until ")
    ng.wait_log(rf"nginx-acme's certificate {re.escape(str(state))}/{re.escape(BROKEN)} not taken over: ")
    st = wait_for(lambda: (lambda c: c if c.get("next_renewal") else None)(_status(https)), 10,
                  interval=0.2, what="a scheduled renewal")
    assert st["state"] == "valid", st
    assert pebble.order_count(since=mark) == 0, "an order was placed for a certificate nginx-acme had"
    assert pebble.request_count("/sign-me-up", since=mark) == 0, "newAccount was asked: the account was not reused"
    assert pebble.account_count() == accounts

    # nginx-acme's files are left as they were; ours hold the account URL
    for name, data in files.items():
        assert (state / name).read_bytes() == data, name
    if redis:
        keys = redis.keys("ngx:*")
        acct = [k for k in keys if k.startswith("ngx:accounts/") and k.endswith("/account.json")]
        assert len(acct) == 1, keys
        assert json.loads(redis.value(acct[0]))["url"] == client.kid
    else:
        ca_ids = os.listdir(state / "accounts")
        assert len(ca_ids) == 1, ca_ids
        assert json.loads((state / "accounts" / ca_ids[0] / "account.json").read_text())["url"] == client.kid
    assert (state / "nginx-acme.imported").exists()     # in the state_path, with Redis too

    # once: a restart takes nothing over again
    ng.stop()
    since = ng.log_size()
    ng.start(wait_port=https)
    wait_for(lambda: _served_serial(https) == serial, 15, interval=0.2, what="the certificate after a restart")
    # the runner has started (its status is there) before the log is read
    wait_for(lambda: (lambda c: c if c.get("next_renewal") else None)(_status(https)), 10,
             interval=0.2, what="the status after a restart")
    assert "took over" not in ng.log_text(since) and "not taken over" not in ng.log_text(since)

    # a forced renewal orders with the account taken over
    r = force_renewal(https, NAME, NAME)
    assert r.status == 202, r.text
    wait_for(lambda: _served_serial(https) not in (None, serial), 60, interval=0.3, what="the renewed certificate")
    assert pebble.order_count(since=mark) == 1
    assert pebble.request_count("/sign-me-up", since=mark) == 0
    orders = client.get(client.get(client.kid)["orders"])["orders"]
    assert len(orders) == 2, f"the renewal was not ordered by nginx-acme's account: {orders}"
    assert "took over" not in ng.log_text(since)
