"""The kernel's fast path under traffic: keys that collide on purpose, slots reclaimed at every epoch flip
while frames arrive, and every frame still counted exactly once (docs/architecture.md, "Kernel program").

A sensor with 2 fast-path slots per CPU and half flips its epoch every 0.1 s while trafgen sends a bounded
round-robin storm for 8 targets through a veth: at most 2 keys per CPU fit a half, so most frames collide and
go to the LRU map, and each flip hands the emptied half to whichever keys arrive first. The targets' sums
over all target events must equal what the interface received, split exactly as sent."""

from __future__ import annotations

import shutil
from collections import defaultdict

import pytest

from tests.netns.test_flood import ARP_HDR, stop, trafgen
from tests.support import frames as F
from tests.support.fixtures_netns import ns_exec

pytestmark = [pytest.mark.skipif(shutil.which("trafgen") is None, reason="needs trafgen (netsniff-ng)")]

TARGETS = [f"198.18.210.{i}" for i in range(1, 9)]
PER_TARGET = 25_000
PPS = 100_000  # 2 s of storm: about 20 epoch flips at --interval 0.1
# One packet definition per target (trafgen sends them round robin); one sender, one MAC.
CFG = "".join(
    f"""{{ fill(0xff, 6), 0x02, 0x00, 0x5e, 0x00, 0x02, 0x01, {ARP_HDR},
  0x02, 0x00, 0x5e, 0x00, 0x02, 0x01, 198, 18, 100, 9,
  fill(0x00, 6), 198, 18, 210, {i}, fill(0x00, 18) }}
""" for i in range(1, 9))
# The same for IPv6: neighbour solicitations for 8 targets (nd_fast in front of nd_counts).
TARGETS6 = [f"2001:db8::d2:{i}" for i in range(1, 9)]
CFG6 = "".join("{ " + ", ".join(f"0x{b:02x}" for b in F.neighbour_solicitation("2001:db8::64:9", t)) + " }\n"
               for t in TARGETS6)
COUNTED = ("request", "reply", "gratuitous", "probe", "nd_solicit", "nd_dad", "nd_advert_solicited",
           "nd_advert_unsolicited")  # every frame counted in a map, either family


def rx_packets(ns: str, ifname: str) -> int:
    return int(ns_exec(ns, "cat", f"/sys/class/net/{ifname}/statistics/rx_packets").stdout)


@pytest.mark.parametrize(("attach", "family"), [("xdp", "arp"), ("tc", "arp"), ("xdp", "nd"), ("tc", "nd")])
def test_colliding_keys_and_reclaimed_slots_count_exactly(veth_pair, sensor, tmp_path, attach, family):
    cfg = tmp_path / "storm.cfg"
    cfg.write_text(CFG if family == "arp" else CFG6)
    targets, counter, count = (TARGETS, "request", "requests") if family == "arp" else \
        (TARGETS6, "nd_solicit", "solicitations")
    s = sensor(veth_pair.b, ["-i", veth_pair.b_if, "--attach", attach, "--fast-slots", "2", "--interval", "0.1",
                             "--top", "0", "--min-requests", "1"])
    rx0 = rx_packets(veth_pair.b, veth_pair.b_if)
    storm = trafgen(veth_pair.a, veth_pair.a_if, str(cfg), PER_TARGET * len(targets), PPS, steady=True)
    try:
        assert storm.wait(timeout=120) == 0, storm.stderr.read()
    finally:
        stop(storm)
    rx = rx_packets(veth_pair.b, veth_pair.b_if) - rx0
    assert s.finish() == 0, s.stderr  # SIGTERM: the final poll drains the last epoch

    got: dict[str, int] = defaultdict(int)
    for e in s.events("arp_sensor.target"):
        if family in e and e["destination"]["ip"] in targets:  # not the namespaces' own ND or ARP
            got[e["destination"]["ip"]] += e[family][count]
    health = [e["arp_sensor"]["health"] for e in s.events("arp_sensor.health") if e["event"]["kind"] == "metric"]
    total = {k: sum(h.get(k, 0) for h in health) for k in (*COUNTED, "fast_hits", "fast_claims", "fast_collisions")}
    print(f"fastpath[{attach}, {family}]: rx {rx}, {len(health)} intervals, {total}")
    # Every storm frame reached the sensor's interface (besides them: the odd IPv6 router solicitation of a
    # new link) and was counted once, for the target it asked for: the storm is round robin, so each target
    # got exactly its share.
    sent = PER_TARGET * len(targets)
    assert sent <= rx <= sent + 10
    assert dict(got) == dict.fromkeys(targets, PER_TARGET)
    assert sent <= total[counter] <= sent + 10
    # each counted frame, of either family, in exactly one place
    assert total["fast_hits"] + total["fast_claims"] + total["fast_collisions"] == sum(total[k] for k in COUNTED)
    # Both places were used, and slots were claimed again after the flips (reclaimed), not once.
    assert total["fast_collisions"] > sent // 4 and total["fast_hits"] > sent // 20
    flips = sum(1 for h in health if h.get(counter, 0))
    assert flips >= 10 and total["fast_claims"] >= flips
    assert all(h["fast_slots"] == 2 and h["fast_drain_deferred"] == 0 for h in health)
