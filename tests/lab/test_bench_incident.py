"""Smoke versions of the benchmarks (tiny counts): they must run and produce sane structure, so they
cannot rot. They assert nothing about speed and write nothing to docs/benchmarks.md."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("docs_untouched")


@pytest.mark.slow
@pytest.mark.long  # ~45 s of lab for a bench smoke: `make test` stays under its 15 minutes (it was 14+)
def test_incident_smoke() -> None:
    from bench import incident

    r = incident.run_one(4, 0.25, window=3.0, steady_s=3.0, tail_s=15.0, enforce=False, log=lambda _m: None)
    assert r["dead"] == 1 and r["victims"] == ["n3"] and r["sensors"] == 4
    assert r["alerted"] == 1 and r["false_alerts"] == [] and r["first_alert_s"] > 0
    assert r["storm"]["arp_per_s"] >= r["storm"]["dead_arp_per_s"] > 0
    text = incident.render([r, {"nodes": 9, "error": "too big"}], 0.25, 3.0, 3.0, 15.0)
    assert "## The incident, scaled" in text and "9 nodes did not complete:** too big" in text
