"""Smoke run of bench/outputs.py (tiny counts): it must run against real receivers and account for every
event. Asserts nothing about speed and writes nothing to docs/benchmarks.md."""

from __future__ import annotations

from bench import outputs, report


def test_outputs_bench_smoke(capsys):
    before = report.DOC.read_text() if report.DOC.exists() else None
    outputs.main(["--events", "300", "--runs", "1", "--sinks", "stdout,file,tcp,udp,forward-ack", "--no-write"])
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ") and "| sink |" not in line]
    assert [r.split("|")[1].strip() for r in rows] == [
        "encode only (JSON, baseline)", "encode only (msgpack)", "stdout", "file", "tcp", "udp", "forward-ack"]
    assert all(r.split("|")[6].strip() == "0" for r in rows)  # nothing dropped: the queue holds the burst
    assert (report.DOC.read_text() if report.DOC.exists() else None) == before
