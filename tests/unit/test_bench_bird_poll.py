"""Smoke run of bench/bird_poll.py so it cannot rot (it measures, it asserts nothing about speed)."""

from __future__ import annotations

from bench import bird_poll


def test_bird_poll_bench_smoke(capsys):
    bird_poll.main(["--peers", "10", "--runs", "2", "--no-write"])
    out = capsys.readouterr().out
    assert "parse recorded 250-peer reply" in out and "of a 1 s interval" in out
