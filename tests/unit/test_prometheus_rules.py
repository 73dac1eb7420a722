"""deploy/prometheus/ with the real tools: `promtool check rules|config`, `promtool test rules` (one alert per
dead peer whatever the number of observers, none for a BGP-down-but-alive peer, resolve on revive, the
health alerts), and every sensor metric the rules and the dashboard use is one the sensor exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from sensor.events.encode import health_event, warning_event
from sensor.outputs.metrics import Metrics
from sensor.pipeline.detect import FlaggedPeer

PROM = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = PROM / "arp-sensor.rules.yml"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool not installed (scripts/install-system.sh installs prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=PROM, timeout=120)


@needs_promtool
def test_rules_and_config_check() -> None:
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    r = promtool("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    r = promtool("test", "rules", "arp-sensor.rules.test.yml")
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


@needs_promtool
def test_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    """The same cases against a rule that alerts once per observer: promtool must say FAILED."""
    per_observer = RULES.read_text().replace(
        "arp_sensor:zombie_peer_observers:count\n            * on (peer_ip)",
        'arp_sensor_peer_verdict_since_timestamp_seconds{verdict="zombie-peer"} * 0 + 1\n            * on (peer_ip)')
    assert per_observer != RULES.read_text()
    (tmp_path / RULES.name).write_text(per_observer)
    shutil.copy(PROM / "arp-sensor.rules.test.yml", tmp_path)
    r = subprocess.run(["promtool", "test", "rules", "arp-sensor.rules.test.yml"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode != 0 and "FAILED" in r.stdout + r.stderr


def exported_names() -> set[str]:
    """Every sample name a sensor exports once it has seen health, warnings, outputs and a flagged peer."""
    m = Metrics()
    try:
        port = m.serve("127.0.0.1", 0)
        health = {"interval_s": 1.0, "poll_duration_ms": 3.0, "interfaces": 1, "frames_rx": 10, "frames_tx": 1,
                  "arp": 6, "request": 4, "reply": 1, "gratuitous": 0, "probe": 0, "other_op": 0, "malformed": 0,
                  "runt": 0, "vlan_too_deep": 0, "inserts": 3, "insert_fail": 0, "entries_live": 3,
                  "entries_max": 1024, "entries_evicted": 0, "targets_live": 2,
                  # the neighbour stage's fields (sensor/neigh/stage.py)
                  "neigh_table_entries": 40, "neigh_gc_thresh3": 1024, "neigh_table_fill": 0.04,
                  "neigh_table_fulls": 0, "neigh_res_failed": 2, "neigh_unresolved_discards": 0,
                  "neigh_forced_gc_runs": 0}
        m.observe_event(health_event(health, 1.8e9, "h"))
        m.observe_event(warning_event("program-detached", "x", 1.8e9, "h"))
        m.observe_outputs({"-": {"queued": 0, "sent": 1, "dropped": 0, "errors": 0, "connected": True}})
        m.set_verdicts({"zombie-peer": 1})
        m.set_peers([FlaggedPeer("198.18.0.7", "zombie-peer", 1.8e9, 0.6, "Mesh_198_18_0_7", None, True)])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        m.close()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    names = exported_names()
    dash = json.loads((PROM / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 12 and all(p["targets"] for p in dash["panels"])
    used = set(re.findall(r"\barp_sensor_[a-z_]+", RULES.read_text() + "\n".join(exprs)))
    assert used and used <= names, sorted(used - names)
    # every recorded series the dashboard reads is recorded by the rules
    recorded = set(re.findall(r"record: (\S+)", RULES.read_text()))
    assert set(re.findall(r"\barp_sensor:[a-z_:]+", "\n".join(exprs))) <= recorded
