"""Smoke versions of the benchmarks (tiny counts): they must run and produce sane structure, so they
cannot rot. They assert nothing about speed and write nothing to docs/benchmarks.md."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("docs_untouched")


def test_flood_smoke(tmp_path) -> None:
    from bench import flood

    r = flood.run_once(count=2000, ntargets=4, interval=0.3, workdir=tmp_path)
    assert r.sent == 2000 and r.trafgen_s > 0 and r.window_s > r.trafgen_s
    assert 0 < r.sensor_requests <= r.rx and 0 < r.tcpdump_captured <= r.rx
    assert r.sensor_health >= r.sensor_requests
    assert r.sensor_user_s >= 0 and r.xdp_mode in ("native", "generic") and r.sensor_hwm_kb > 0
    text = flood.render([r], 2000, 4, 0.3)
    assert "## Counting under flood" in text and "100.00% counted" in text


