"""Smoke version of bench/ratelimit.py's cost part (tiny counts): it must run and render. The storm part
needs the lab; tests/test_ratelimit_lab.py measures the same storm with assertions."""

from __future__ import annotations


def test_ratelimit_cost_smoke() -> None:
    from bench import ratelimit

    cost = ratelimit.measure_cost(repeat=50, runs=1)
    assert [r["scenario"] for r in cost] == [name for name, _ in ratelimit.SCENARIOS]
    assert all(r[p] > 0 for r in cost for p in ("empty XDP", "XDP", "XDP, no limit code", "tc egress"))
    storm = [ratelimit.Phase("no limits", 10, 100), ratelimit.Phase("--rate-limit enforce", 10, 3, dropped=90)]
    text = ratelimit.render(cost, storm, 50, 1)
    assert "97.0% fewer" in text and "96.8%" in text  # 90 of 93 asked were cut
    assert "limit hit, bucket empty" in text and "added, XDP" in text
