"""Smoke versions of the benchmarks (tiny counts): they must run and produce sane structure, so they
cannot rot. They assert nothing about speed and write nothing to docs/benchmarks.md."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("docs_untouched")


def test_prog_cost_smoke(monkeypatch) -> None:
    from bench import prog_cost

    monkeypatch.setattr(prog_cost, "WARM_UP_S", 0.0)
    rows = prog_cost.measure(repeat=50, runs=1, fills=(1, 40), log=lambda _m: None)
    programs = {r["program"] for r in rows}
    assert programs == {prog_cost.EMPTY, prog_cost.EMPTY2, prog_cost.OURS, prog_cost.OURS_TC_IN, prog_cost.OURS_TC_EG,
                        prog_cost.LRU_ONLY, prog_cost.BEFORE, prog_cost.COLLIDING}
    # Each build measured the path its row names: the storm's key in its slot, the LRU alone, the collision
    # (with the shipped slot count: the measured frames' slots were found held, for ARP and ND alike).
    for frame in prog_cost.FAST_FRAMES:
        paths = {r["program"]: r["path"] for r in rows if r["frame"] == frame and not r.get("limit")}
        assert (paths[prog_cost.OURS], paths[prog_cost.LRU_ONLY], paths[prog_cost.BEFORE],
                paths[prog_cost.COLLIDING]) == ("fast hit", "LRU", "LRU", "collision")
    col = [r for r in rows if r["program"] == prog_cost.COLLIDING and r["frame"] in prog_cost.FAST_FRAMES]
    assert col and all({"vs_lru", "vs_before", "before_ns"} <= r.keys() for r in col)
    assert {r["fill"] for r in rows} == {1, 40}
    assert all(r["ns"] >= 0 for r in rows)
    big = [r for r in rows if r["fill"] == 40]
    assert big and all(r["entries"] >= 40 for r in big)  # the pre-fill really created distinct entries
    variants = prog_cost.measure_variants(repeat=50, runs=1, fill=40)
    assert {v["variant"] for v in variants} >= {"empty XDP", "v_lru", "v_lru_shared", "v_direct"}
    nonarp = prog_cost.measure_nonarp(repeat=50, runs=1)
    v4, v6, icmp = "IPv4 UDP (non-ARP)", "IPv6 UDP (non-ARP)", "IPv6 ICMPv6 echo (non-ARP, non-ND)"
    assert [(r["frame"], r["variant"]) for r in nonarp] == [
        (v4, "empty XDP"), (v4, "v_ethertype"), (v4, prog_cost.OURS),
        (v6, "empty XDP"), (v6, "v_ipv6_nexthdr"), (v6, prog_cost.OURS),
        (icmp, "empty XDP"), (icmp, "v_icmpv6_type"), (icmp, prog_cost.OURS)]
    text = prog_cost.render(rows, variants, 50, 1, 40, nonarp)
    assert "## Per-packet cost" in text and "Where the time goes (ARP request)" in text
    assert "Where the time goes (non-ARP)" in text
    assert "met" in text or "missed" in text
    assert "Collision / fallback no slower than the program before issue 15" in text


def test_userspace_smoke() -> None:
    from bench import userspace

    for shape, targets in (("targets", 200), ("pairs", 4)):
        r = userspace.child(200, shape, intervals=2, peers=2)
        assert len(r["rounds"]) == 4 and r["hwm_kb"] > 0 and r["all_windows"] == targets
        assert [x["changed"] for x in r["rounds"]] == [False, True, False, True]
        for rnd in r["rounds"]:
            # every key was touched once more: one request each, all active (a key can have a row in the
            # LRU map and fast-path rows too)
            assert (rnd["windows"], rnd["requests"]) == (targets, 200) and rnd["entries"] >= 200
            assert rnd["chosen"] == min(20, targets)
            assert rnd["verdict_ms"] >= 0 and rnd["bytes"] > 0 and rnd["cpu_ms"] > 0
    mem = userspace.kernel_memory()
    counts = next(m for m in mem if m["name"] == "arp_counts")
    # the formula matches this kernel's own accounting up to the fixed map header
    assert 0 <= counts["reported_here"] - counts["computed_here"] < 4096
    text = userspace.render([r], mem, 2)
    assert "## Userspace scaling" in text and "64 CPUs" in text


