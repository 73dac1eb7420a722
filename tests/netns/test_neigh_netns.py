"""Neighbour-table figures against `ip -s ntable show` / `ip neigh`, and the pressure warning shown by
filling the table with FAILED entries (absent hosts resolved inside a namespace this test made).

The table's limits are global to the machine (gc_thresh* exist only in the initial namespace): they are
never changed here. The test moves the warning threshold instead (--neigh-warn-fraction), relative to the
entries the machine holds right now. Only per-device neighbour timers of the test's own veth are shortened
(a namespace-local sysctl), so resolutions fail in 0.1 s instead of 3 s.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest

from sensor.neigh.table import STAT_NAMES, NeighReader
from tests.support.fixtures_netns import ns_exec
from tests.support.receivers import wait_for

ABSENT = [f"198.18.0.{i}" for i in range(100, 200)]  # nobody in the test namespaces holds these


def fast_failures(ns: str, ifname: str) -> None:
    for key, value in (("mcast_solicit", "1"), ("retrans_time_ms", "100")):
        ns_exec(ns, "sysctl", "-q", "-w", f"net.ipv4.neigh.{ifname}.{key}={value}")


def resolve(ns: str, ips: list[str]) -> None:
    """One UDP datagram to each IP: the kernel creates an INCOMPLETE entry and asks (absent hosts: nobody
    answers, the entry turns FAILED)."""
    code = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "for ip in sys.argv[1:]:\n    s.sendto(b'x',(ip,9))\n")
    ns_exec(ns, "python3", "-c", code, *ips)


def ip_states(ns: str, ifname: str) -> Counter:
    rows = json.loads(ns_exec(ns, "ip", "-j", "neigh", "show", "dev", ifname).stdout or "[]")
    return Counter(s.lower() for r in rows for s in r.get("state", []))


def ip_ntable(ns: str) -> dict:
    return json.loads(ns_exec(ns, "ip", "-s", "-j", "ntable", "show", "name", "arp_cache").stdout)[0]


def in_ns(ns: str, fn):
    from pyroute2 import netns

    netns.pushns(ns)  # this thread only; the netlink socket stays in the namespace it was made in
    try:
        return fn()
    finally:
        netns.popns()


def test_figures_match_ip_neigh_and_ntable(veth_pair):
    ns, dev = veth_pair.b, veth_pair.b_if
    resolve(ns, ["198.18.0.1"])  # a host that answers
    wait_for(lambda: ip_states(ns, dev)["reachable"] == 1, 30, "a REACHABLE entry")
    fast_failures(ns, dev)
    ns_exec(ns, "ip", "neigh", "add", "198.18.0.50", "lladdr", "02:00:00:00:00:50", "nud", "permanent",
            "dev", dev)
    ns_exec(ns, "ip", "neigh", "add", "198.18.0.51", "lladdr", "02:00:00:00:00:51", "nud", "stale", "dev", dev)
    resolve(ns, ABSENT[:20])
    wait_for(lambda: ip_states(ns, dev)["failed"] == 20, 30, "20 FAILED entries")
    reader = in_ns(ns, NeighReader)
    try:
        ifindex = int(ns_exec(ns, "cat", f"/sys/class/net/{dev}/ifindex").stdout)
        ours = Counter(e.state for e in reader.entries() if e.ifindex == ifindex)
        assert ours == ip_states(ns, dev)
        assert ours["failed"] == 20 and ours["permanent"] == 1 and ours["stale"] == 1
        assert ours["reachable"] + ours["stale"] + ours["delay"] + ours["probe"] >= 2  # ping's entry ages
        before = ip_ntable(ns)
        t = reader.table()
        after = ip_ntable(ns)
        assert (t.gc_thresh1, t.gc_thresh2, t.gc_thresh3) == (before["thresh1"], before["thresh2"],
                                                              before["thresh3"])
        # global counters: other namespaces on the machine may move them between the three reads, never back
        for name in STAT_NAMES:
            if name in before:
                assert before[name] <= t.stats[name] <= after[name], name
        assert t.stats["res_failed"] >= 20
        # the entry count is global and moves both ways: compare it on a read that ip saw unchanged on
        # both sides (a consistent snapshot, not a retried assertion)
        for _ in range(50):
            before, entries, after = ip_ntable(ns)["entries"], reader.table().entries, ip_ntable(ns)["entries"]
            if before == after:
                assert entries == before
                break
        else:
            pytest.fail("the machine's neighbour table never held still for three reads")
    finally:
        reader.close()

def test_pressure_warning_when_failed_entries_cross_the_fraction(veth_pair, sensor, tmp_path):
    ns, dev = veth_pair.b, veth_pair.b_if
    fast_failures(ns, dev)
    base = ip_ntable(ns)
    limit = base["thresh3"]
    fill = 80
    # The warning sits 40 entries above what the machine holds now; the test adds 80. Both stay under
    # gc_thresh1 (128) on a quiet machine, so the kernel's periodic GC leaves FAILED entries alone.
    fraction = (base["entries"] + 40) / limit
    out = tmp_path / "events.json"
    proc = sensor(ns, ["-i", dev, "--interval", "0.2", "--min-requests", "1000", "-o", f"file:{out}",
                       "--neigh-warn-fraction", f"{fraction:.6f}"])

    def events() -> list[dict]:
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

    def health() -> list[dict]:
        return [e["arp_sensor"]["health"] for e in events()
                if e["event"]["dataset"] == "arp_sensor.health" and e["event"]["kind"] == "metric"]

    def actions() -> list[str]:
        return [e["event"].get("action") for e in events() if e["event"]["kind"] == "event"]

    wait_for(lambda: len(health()) >= 2, 60, "two health events")
    first = health()[0]
    assert first["neigh_failed"] == 0 and first["neigh_table_fill"] < fraction
    assert first["neigh_gc_thresh3"] == limit
    assert "neigh-table-pressure" not in actions()
    resolve(ns, ABSENT[:fill])
    wait_for(lambda: "neigh-table-pressure" in actions(), 30, "the neigh-table-pressure warning")
    (warn,) = [e for e in events() if e["event"].get("action") == "neigh-table-pressure"]
    assert warn["log"]["level"] == "warning" and f"of gc_thresh3 {limit}" in warn["message"]
    wait_for(lambda: health()[-1]["neigh_failed"] == fill, 30, f"{fill} failed entries in health")
    h = health()[-1]
    assert h["neigh_table_fill"] >= fraction and h["neigh_interfaces"][0]["name"] == dev
    assert h["neigh_interfaces"][0]["failed"] == fill
    assert sum(x["neigh_res_failed"] for x in health()) >= fill
    # flushing the namespace's entries takes the machine back under 90 % of the fraction: cleared, once
    ns_exec(ns, "ip", "neigh", "flush", "dev", dev)
    wait_for(lambda: "neigh-table-pressure-cleared" in actions(), 30, "the cleared event")
    assert proc.finish() == 0
    assert actions().count("neigh-table-pressure") == 1
    assert os.path.exists(out)
