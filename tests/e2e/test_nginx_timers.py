"""The leader's ACME loop runs on one nginx timer. ngx_add_timer() leaves a pending timer alone when the new
deadline is less than 300 ms (NGX_TIMER_LAZY_DELAY) away, so a step asked for "at once" while curl's timer was
pending waited for curl's: ~185 ms between the directory and the account request of every first issuance
(docs/performance.md). nginx's debug log shows each deadline kept that way ("event timer: ID, old: O, new: N");
an earlier one must never be kept."""

import re

from harness import free_port, wait_for
from nginx_harness import issuer_block, managed_servers, nginx_factory, tls_verified  # noqa: F401

NAME = "timers.example.org"
KEPT = re.compile(r"event timer: -?\d+, old: (\d+), new: (\d+)")


def test_earlier_deadline_is_not_postponed(pebble, nginx_factory, tmp_path):
    https = free_port()
    conf = issuer_block("pebble", pebble, tmp_path / "state") + managed_servers(pebble.http_port, https, NAME)
    ng = nginx_factory(conf, wait_port=https, workers=1, level="debug")
    roots = pebble.roots(0)

    def served():
        try:
            return tls_verified(https, NAME, roots)
        except Exception:  # noqa: BLE001
            return None
    wait_for(served, 40, interval=0.1, what=f"a Pebble certificate for {NAME}")

    log = ng.error_log.read_text(errors="replace")
    assert "event timer" in log, "no debug log: nginx built without --with-debug?"
    kept = [(int(o), int(n)) for o, n in KEPT.findall(log)]
    earlier = [(o, n, o - n) for o, n in kept if n < o]
    assert not earlier, f"earlier deadlines kept off by (old, new, ms late): {earlier[:10]}"
