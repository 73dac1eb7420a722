"""Smoke versions of the benchmarks (tiny counts): they must run and produce sane structure, so they
cannot rot. They assert nothing about speed and write nothing to docs/benchmarks.md."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench import report
from tests.fixtures_netns import needs_root


def _doc_state() -> tuple[bool, float, int]:
    d = report.DOC
    return (d.exists(), d.stat().st_mtime if d.exists() else 0.0, d.stat().st_size if d.exists() else 0)


@pytest.fixture(autouse=True)
def docs_untouched() -> Iterator[None]:
    before = _doc_state()
    yield
    assert _doc_state() == before, "a smoke benchmark wrote docs/benchmarks.md"


def test_discovery_finds_every_benchmark() -> None:
    from bench.__main__ import discover

    benches = discover()
    for name in ("prog_cost", "flood", "userspace", "incident"):
        assert name in benches
    assert "report" not in benches and "__main__" not in benches


def test_unknown_benchmark_is_a_usage_error(capsys) -> None:
    from bench.__main__ import main

    assert main(["no_such_bench"]) == 2
    assert "no benchmark" in capsys.readouterr().err


def test_write_section_replaces_only_its_own_block(tmp_path) -> None:
    doc = tmp_path / "b.md"
    report.write_section("a", "A1", doc)
    report.write_section("b", "B1", doc)
    report.write_section("a", "A2", doc)
    text = doc.read_text()
    assert "A2" in text and "A1" not in text and "B1" in text
    assert text.index("A2") < text.index("B1")


@pytest.mark.root
@needs_root
def test_prog_cost_smoke() -> None:
    from bench import prog_cost

    rows = prog_cost.measure(repeat=50, runs=1, fills=(1, 40), log=lambda _m: None)
    programs = {r["program"] for r in rows}
    assert programs == {"empty XDP", "arp-sensor XDP", "arp-sensor tc ingress", "arp-sensor tc egress"}
    assert {r["fill"] for r in rows} == {1, 40}
    assert all(r["ns"] >= 0 for r in rows)
    big = [r for r in rows if r["fill"] == 40]
    assert big and all(r["entries"] >= 40 for r in big)  # the pre-fill really created distinct entries
    variants = prog_cost.measure_variants(repeat=50, runs=1, fill=40)
    assert {v["variant"] for v in variants} >= {"empty XDP", "v_lru", "v_direct"}
    nonarp = prog_cost.measure_nonarp(repeat=50, runs=1)
    assert [r["variant"] for r in nonarp] == ["empty XDP", "v_ethertype", "arp-sensor XDP"]
    text = prog_cost.render(rows, variants, 50, 1, 40, nonarp)
    assert "## Per-packet cost" in text and "Where the time goes (ARP request)" in text
    assert "Where the time goes (non-ARP)" in text
    assert "met" in text or "missed" in text



@pytest.mark.root
@needs_root
def test_flood_smoke(tmp_path) -> None:
    from bench import flood

    r = flood.run_once(count=2000, ntargets=4, interval=0.3, workdir=tmp_path)
    assert r.sent == 2000 and r.trafgen_s > 0 and r.window_s > r.trafgen_s
    assert 0 < r.sensor_requests <= r.rx and 0 < r.tcpdump_captured <= r.rx
    assert r.sensor_health >= r.sensor_requests
    assert r.sensor_user_s >= 0 and r.xdp_mode in ("native", "generic") and r.sensor_hwm_kb > 0
    text = flood.render([r], 2000, 4, 0.3)
    assert "## Counting under flood" in text and "100.00% counted" in text


def test_map_memory_formula() -> None:
    from bench.userspace import map_bytes

    m = {"type": "lru_percpu_hash", "bytes_key": 16, "bytes_value": 16, "max_entries": 32768}
    # 16-byte buckets (power of two) + per entry 48 + 16 + 8 + 16 x CPUs
    assert map_bytes(m, 2) == 32768 * (16 + 72 + 32)
    assert map_bytes(m, 64) == 32768 * (16 + 72 + 1024)
    assert map_bytes({"type": "percpu_array", "bytes_key": 4, "bytes_value": 88, "max_entries": 1}, 4) == 8 + 88 * 4
    assert map_bytes({"type": "ringbuf", "bytes_key": 0, "bytes_value": 0, "max_entries": 4096}, 2) is None


@pytest.mark.root
@needs_root
def test_userspace_smoke() -> None:
    from bench import userspace

    for shape, targets in (("targets", 200), ("pairs", 4)):
        r = userspace.child(200, shape, intervals=2)
        assert len(r["rounds"]) == 4 and r["hwm_kb"] > 0 and r["all_windows"] == targets
        assert [x["changed"] for x in r["rounds"]] == [False, True, False, True]
        for rnd in r["rounds"]:
            # every entry was touched once more: 200 live entries, one request each, all active
            assert (rnd["entries"], rnd["windows"], rnd["requests"]) == (200, targets, 200)
            assert rnd["chosen"] == min(20, targets)
    mem = userspace.kernel_memory()
    counts = next(m for m in mem if m["name"] == "arp_counts")
    # the formula matches this kernel's own accounting up to the fixed map header
    assert 0 <= counts["reported_here"] - counts["computed_here"] < 4096
    text = userspace.render([r], mem, 2)
    assert "## Userspace scaling" in text and "64 CPUs" in text


def test_incident_victims_spare_the_sensor_and_the_highest_node() -> None:
    from bench.incident import victims_for

    for nodes, want in ((8, 2), (20, 4), (50, 10)):
        v = victims_for(nodes, 0.2, nodes // 2)
        assert len(v) == want and nodes // 2 not in v and nodes not in v and all(1 <= i < nodes for i in v)


@pytest.mark.root
@pytest.mark.lab
@pytest.mark.slow
@needs_root
def test_incident_smoke() -> None:
    from bench import incident

    r = incident.run_one(4, 0.2, window=3.0, steady_s=2.0, log=lambda _m: None)
    assert r["dead"] == 1 and r["victims"] == ["n3"]
    assert r["detected"] == 1 and r["false_positives"] == [] and r["delay_median_s"] > 0
    assert r["bridge_arp_per_s"] >= r["bridge_dead_arp_per_s"] >= 0
    text = incident.render([r, {"nodes": 9, "error": "too big"}], 0.2, 3.0, 2.0)
    assert "## The incident, scaled" in text and "failed: too big" in text


def test_rebuild_orders_sections_and_summarises_verdicts(tmp_path) -> None:
    doc = tmp_path / "b.md"
    report.write_section("flood", "## Counting under flood\n\n- Target 100.00% counted: **met** (exact).", doc)
    report.write_section("prog_cost", "## Per-packet cost\n\n- ARP ≤ 1.5× empty: **missed** (2.8×).\n- plain", doc)
    report.write_section("other", "## Other\n\nno targets here", doc)
    report.rebuild(["prog_cost", "flood"], doc)
    text = doc.read_text()
    assert text.index("Targets at a glance") < text.index("<!-- bench:prog_cost -->") < text.index(
        "<!-- bench:flood -->") < text.index("<!-- bench:other -->")
    summary = report.sections(doc)["summary"]
    assert "**missed** (2.8×)" in summary and "**met** (exact)" in summary and "plain" not in summary
    report.rebuild(["prog_cost", "flood"], doc)  # idempotent
    assert doc.read_text() == text
