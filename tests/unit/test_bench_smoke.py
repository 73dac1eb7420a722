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
    assert map_bytes({"type": "percpu_array", "bytes_key": 4, "bytes_value": 88, "max_entries": 1}, 4) == 8 + 88 * 4
    assert map_bytes({"type": "ringbuf", "bytes_key": 0, "bytes_value": 0, "max_entries": 4096}, 2) is None


def test_incident_victims_spare_the_sensor_and_the_highest_node() -> None:
    from bench.incident import victims_for

    for nodes, want in ((8, 2), (20, 4), (50, 10)):
        v = victims_for(nodes, 0.2, nodes // 2)
        assert len(v) == want and nodes // 2 not in v and nodes not in v and all(1 <= i < nodes for i in v)


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
