"""Smoke versions of the benchmarks (tiny counts): they must run and produce sane structure, so they
cannot rot. They assert nothing about speed and write nothing to docs/benchmarks.md."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("docs_untouched")


@pytest.mark.slow
def test_incident_smoke() -> None:
    from bench import incident

    r = incident.run_one(4, 0.2, window=3.0, steady_s=2.0, log=lambda _m: None)
    assert r["dead"] == 1 and r["victims"] == ["n3"]
    assert r["detected"] == 1 and r["false_positives"] == [] and r["delay_median_s"] > 0
    assert r["bridge_arp_per_s"] >= r["bridge_dead_arp_per_s"] >= 0
    text = incident.render([r, {"nodes": 9, "error": "too big"}], 0.2, 3.0, 2.0)
    assert "## The incident, scaled" in text and "failed: too big" in text


