"""Calico's passive rule in a 12-node lab, where string and numeric order differ: after a power-off, the
nodes that keep ARPing for a dead node are exactly those whose address string sorts after its own.

n3 (198.18.0.3) and n10 (198.18.0.10) are powered off. As text, "198.18.0.10" < "198.18.0.11" <
"198.18.0.12" < "198.18.0.2" < ... < "198.18.0.9", so n3 is asked for by n4-n9 only (not n10-n12, which a
numeric rule would add) and n10 by n2, n4-n9, n11, n12 (not n1; a numeric rule would keep only n11, n12).

Judged in a steady window: the passive side ARPs too for a while after the hold timer, while its closed
session's last TCP segments are retransmitted (measured here and in docs/lab.md: ~90 s, about one
3-request resolution cycle every 15 s), so the window starts well after that tail.
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.long, pytest.mark.timeout(600)]

HOLD = 6
DEAD = ("n3", "n10")
STEADY_FROM = 135.0  # s after the power-off: the passive tail (~100 s) is over
STEADY_S = 20.0  # the active side makes a 3-request cycle every ~5 s: 10+ requests each in the window


def test_askers_are_the_nodes_whose_address_string_sorts_after(lab_factory) -> None:  # type: ignore[no-untyped-def]
    lab = lab_factory(12, hold_time=HOLD, wait=120)
    live = [n for n in lab.nodes if n not in DEAD]
    with lab.arp_capture() as cap:
        t_kill = time.time()
        for n in DEAD:
            lab.kill(n)
        time.sleep(STEADY_FROM + STEADY_S)
        frames = [f for f in cap.frames if f.kind == "Request"]
    for dead in DEAD:
        ip = lab.ip(dead)
        expected = {lab.ip(n) for n in live if lab.ip(n) > ip}  # Python compares str as Go does: bytewise
        numeric = {lab.ip(n) for n in live if int(lab.ip(n).rsplit(".", 1)[1]) > int(ip.rsplit(".", 1)[1])}
        assert expected != numeric  # the lab size makes the two rules differ for both dead nodes
        asked = [f for f in frames if f.target == ip]
        steady = {f.sender for f in asked if t_kill + STEADY_FROM <= f.ts < t_kill + STEADY_FROM + STEADY_S}
        assert steady == expected, (dead, sorted(steady), sorted(expected))
        # the passive side asked too, but only during the tail after the hold timer
        last: dict[str, float] = defaultdict(float)
        for f in asked:
            last[f.sender] = max(last[f.sender], f.ts - t_kill)
        tail = {s: round(t, 1) for s, t in last.items() if s not in expected}
        print(f"{dead}: passive side's last request (s after power-off): {tail}")
        assert all(t < STEADY_FROM for t in tail.values()), tail
