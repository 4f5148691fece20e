"""What Let's Encrypt's Boulder does and Pebble never shows (issue #14, items 2, 3, 4, 8, 9, 11),
through acmectl and fault_proxy.FaultProxy (Pebble plus ARI, profiles and faults).

Short-lived certificates (6-day `shortlived`, step-ca's 24 hours) come from CertForge: a leaf
signed by Pebble's own intermediate with free dates, handed out at the certificate download.
"""
import datetime
import re
import time

import pytest

from fault_proxy import CertForge, forge_leaf, problem, window_from_now
# the fixtures of test_faults: a Pebble without random nonce rejections, a FaultProxy, acmectl
from test_faults import (Ctl, backoff_of, ctl, fault_pebble, pebble_f, proxy,  # noqa: F401
                         proxy_cert)


def ts(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def issue_short(ctl, proxy, tmp_path, name, life, left):
    """Issue `name` with a forged leaf of `life` seconds of which `left` remain."""
    now = time.time()
    f = proxy.add_fault("certificate", method="POST",
                        transform=forge_leaf(CertForge(proxy.pebble, tmp_path / "forge"), dns=[name],
                                             not_before=now - (life - left), not_after=now + left))
    ctl.issue(name)
    assert f.hits == 1
    proxy.clear_faults()
    meta = ctl.meta(name)
    assert abs(ts(meta["not_after"]) - (now + left)) < 5, meta
    return meta


# --------------------------------------------------------------------------
# item 3: back-off and the time left
# --------------------------------------------------------------------------

def test_rate_limit_backoff_capped_by_time_left(ctl, proxy, tmp_path):
    """A 24-hour certificate with 3 hours left, rate limited with Retry-After 120: the next try
    comes within a tenth of the time left (18 min), not after the one-hour rate-limit floor."""
    name = "shortleft.example.org"
    meta = issue_short(ctl, proxy, tmp_path, name, 86400, 3 * 3600)
    proxy.add_fault("newOrder", respond=problem(429, "rateLimited", "too many new orders recently",
                                                retry_after=120))
    ctl.fails("renew", "--force", *ctl.http, name)
    left = ts(meta["not_after"]) - time.time()
    wait = backoff_of(ctl, name)
    assert 120 - 5 <= wait <= left / 10 + 5, f"next try in {wait:.0f}s with {left:.0f}s left"


def test_refusal_backoff_never_below_retry_after(ctl, proxy, tmp_path):
    """The cap never undercuts the CA: Retry-After 2400 with 3 hours left waits 2400 s."""
    name = "shortra.example.org"
    issue_short(ctl, proxy, tmp_path, name, 86400, 3 * 3600)
    proxy.add_fault("newOrder", respond=problem(429, "rateLimited", "slow down", retry_after=2400))
    ctl.fails("renew", "--force", *ctl.http, name)
    wait = backoff_of(ctl, name)
    assert 2400 - 5 <= wait <= 2400 + 5, f"next try in {wait:.0f}s"


# --------------------------------------------------------------------------
# item 11: an ARI window past notAfter
# --------------------------------------------------------------------------

def test_ari_window_past_not_after_renews_before_expiry(ctl, proxy, tmp_path):
    """A 6-day certificate with 2 days left and a suggested window from 3 to 4 days ahead:
    the renewal falls at least a tenth of the lifetime before notAfter, not at expiry."""
    name = "aripast.example.org"
    meta = issue_short(ctl, proxy, tmp_path, name, 6 * 86400, 2 * 86400)
    proxy.check_known = False       # the forged serial is not in Pebble's records
    proxy.window = window_from_now(3 * 86400, 4 * 86400)
    p = ctl.ok("renew", *ctl.http, name)
    m = re.search(r"not due until (\S+) \((\w+)\)", p.stdout)
    assert m and m.group(2) == "ari", p.stdout
    na = ts(meta["not_after"])
    nb = ts(meta["not_before"])
    assert time.time() - 5 <= ts(m.group(1)) <= na - (na - nb) / 10 + 1, (m.group(1), meta["not_after"])
