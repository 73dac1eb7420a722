"""Smoke versions of the benchmarks (tiny counts): they must run and produce sane structure, so they
cannot rot. They assert nothing about speed and write nothing to docs/benchmarks.md."""

from __future__ import annotations

import pytest

from bench import report

pytestmark = pytest.mark.usefixtures("docs_untouched")


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


def test_map_memory_formula() -> None:
    from bench.userspace import map_bytes

    m = {"type": "lru_percpu_hash", "bytes_key": 16, "bytes_value": 16, "max_entries": 32768}
    # 16-byte buckets (power of two) + per entry 48 + 16 + 8 + 16 x CPUs
    assert map_bytes(m, 2) == 32768 * (16 + 72 + 32)
    assert map_bytes(m, 64) == 32768 * (16 + 72 + 1024)
    # the shipped LRU maps: one value per entry, so the CPU count does not enter (24-byte key: 16 + 48 + 24 + 16)
    shared = {"type": "lru_hash", "bytes_key": 24, "bytes_value": 16, "max_entries": 32768}
    assert map_bytes(shared, 2) == map_bytes(shared, 256) == 32768 * 104
    assert map_bytes({"type": "percpu_array", "bytes_key": 4, "bytes_value": 88, "max_entries": 1}, 4) == 8 + 88 * 4
    assert map_bytes({"type": "ringbuf", "bytes_key": 0, "bytes_value": 0, "max_entries": 4096}, 2) is None


def test_incident_victims_and_sensor_sample() -> None:
    from bench.incident import pair_stats, sensor_nodes, victims_for
    from sensor.lab.lab import ArpFrame

    for nodes, want in ((8, 2), (20, 4), (50, 10), (250, 50)):
        ips = {i: f"198.18.0.{i}" for i in range(1, nodes + 1)}
        watched = sensor_nodes(ips, 8)
        v = victims_for(nodes, 0.2, watched)
        assert len(v) == want and watched[0] not in v and all(1 <= i <= nodes for i in v)
        assert len(watched) == min(8, nodes) and (nodes == 8 or not set(v) & set(watched))
    # the sample spans the address-string order: with 250 nodes it holds .1xx, .2xx, .5x and .8x nodes
    sample = [f"198.18.0.{i}" for i in sensor_nodes({i: f"198.18.0.{i}" for i in range(1, 251)}, 8)]
    assert sample == sorted(sample, key=lambda ip: int(ip.rsplit(".", 1)[1]))
    assert {ip.rsplit(".", 1)[1][0] for ip in sample} >= {"1", "2", "5", "8"}
    # pairs are judged by the string rule: .9 and .3 ask for .10, .11 does not ask for .2
    frames = [ArpFrame(1.0, "Request", "198.18.0.10", "198.18.0.9"),
              ArpFrame(1.5, "Request", "198.18.0.2", "198.18.0.11"),
              ArpFrame(1.6, "Request", "198.18.0.10", "198.18.0.3"),
              ArpFrame(2.5, "Request", "198.18.0.2", "198.18.0.9")]  # after the window
    st = pair_stats(frames, {"198.18.0.9", "198.18.0.11", "198.18.0.3"}, {"198.18.0.10", "198.18.0.2"}, 0, 2)
    assert (st["pairs_total"], st["pairs_predicted"], st["pairs_observed"]) == (6, 5, 3)
    assert (st["pairs_both"], st["pairs_unexpected"], st["pairs_missing"]) == (2, 1, 3)
    assert st["dead_arp_per_s"] == 1.5 and st["per_pair_arp_per_s"] == 0.5


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
