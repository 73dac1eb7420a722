"""End to end with a real Prometheus: an 8-node Calico-style lab, a sensor on every node, Prometheus inside
the lab (in n1's namespace) scraping them every second with deploy/prometheus/arp-sensor.rules.yml. Two
nodes are powered off: exactly two ArpSensorZombiePeer alerts fire, one per dead peer however many sensors
see it, and every Grafana panel query returns data; after revival both alerts resolve."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sensor.lab.live import LiveSensor
from sensor.lab.prom import LabPrometheus

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (install-system.sh)"),
    pytest.mark.timeout(600),
]

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
PORT = 9464  # the sensor's metrics port on each node's address
PROM_NODE = "n1"  # Prometheus lives here; never powered off
DEAD = ("n2", "n5")
W = 6.0  # --verdict-window


def wait_for(pred, timeout: float, step: float = 0.5):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ConnectionError, OSError):
            v = pred()
            if v:
                return v
        if time.monotonic() > end:
            return None
        time.sleep(step)


def test_two_dead_nodes_two_alerts_then_resolved(lab_factory) -> None:  # type: ignore[no-untyped-def]
    lab = lab_factory(8, hold_time=6, wait=90)
    sensors: dict[str, LiveSensor] = {}
    prom = None
    with tempfile.TemporaryDirectory(prefix="arp-prom-") as tmp:
        work = Path(tmp)
        try:
            for n in lab.nodes:
                sensors[n] = LiveSensor(lab.exec_argv(n, [
                    sys.executable, "-m", "sensor", "run", "-i", lab.iface, "--interval", "1", "--top", "0",
                    "--verdict-window", str(W), "--bird-socket", lab.bird_socket(n), "--hostname", n,
                    "--metrics-port", str(PORT), "--metrics-addr", lab.ip(n),
                    "--ready-file", str(work / f"{n}.ready"), "-o", f"file:{work / n}.json"]), cwd=ROOT)
            ready = wait_for(lambda: all((work / f"{n}.ready").exists() for n in lab.nodes)
                             or any(s.proc.poll() is not None for s in sensors.values()), 240)
            dead_early = {n: s.stop() for n, s in sensors.items() if s.proc.poll() is not None}
            assert ready and not dead_early, dead_early
            prom = LabPrometheus(lab, PROM_NODE, [f"{lab.ip(n)}:{PORT}" for n in lab.nodes], work)
            assert wait_for(lambda: prom.value('sum(up{job="arp-sensor"})') == 8, 60), prom.stop()
            assert prom.alerts() == []  # a healthy mesh alerts on nothing

            dead_ips = {lab.ip(n) for n in DEAD}
            for n in DEAD:
                lab.kill(n)  # its sensor dies with it

            # every dead peer alerts once, with several observers behind each alert
            def both_seen_by_many() -> bool:
                obs = {r["metric"]["peer_ip"]: float(r["value"][1])
                       for r in prom.query("arp_sensor:zombie_peer_observers:count")}
                return set(obs) == dead_ips and min(obs.values()) >= 3

            # (the alert is evaluated just after the records it reads: wait for it too, then judge exactly)
            assert wait_for(lambda: both_seen_by_many() and len(prom.alerts()) >= 2, 2 * 6 + 4 * W + 60), \
                prom.query("arp_sensor:zombie_peer_observers:count")
            alerts = prom.alerts()
            per_observer = prom.value('count(arp_sensor_peer_verdict_since_timestamp_seconds{verdict="zombie-peer"})')
            assert per_observer is not None and per_observer >= 6  # many sensors, ...
            assert sorted(a["labels"]["peer_ip"] for a in alerts) == sorted(dead_ips), alerts  # ... two alerts
            for a in alerts:
                ip = a["labels"]["peer_ip"]
                assert a["labels"]["peer_name"] == "Mesh_" + ip.replace(".", "_")
                ann = a["annotations"]
                assert int(ann["observers"]) >= 3 and int(ann["askers"]) >= 1, ann
                assert float(ann["arp_requests_per_second"]) > 0 and ann["since"].startswith("20"), ann
                # Calico's rule, as the live observers see it: those whose address string sorts after the peer's
                live_after = [n for n in lab.nodes if n not in DEAD and lab.ip(n) > ip]
                assert int(ann["expected_askers"]) <= len(live_after), (ann, live_after)
            assert int(prom.value('count(ALERTS{alertname="ArpSensorZombiePeer", alertstate="firing"})') or 0) == 2
            # each sensor says whether its node is the active side towards the dead peer: Calico's string rule
            by_ip = {lab.ip(n): lab.ip(n) for n in lab.nodes}
            for r in prom.query("arp_sensor_peer_verdict_since_timestamp_seconds"):
                m = r["metric"]
                me = by_ip[m["instance"].rsplit(":", 1)[0]]
                assert m["active"] == str(me > m["peer_ip"]).lower(), m
            print("alerts:", json.dumps([{**a["labels"], **a["annotations"]} for a in alerts]))

            # every panel of the dashboard answers, with data, while the storm is on
            dash = json.loads((PROM / "grafana-dashboard.json").read_text())
            empty = [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]
                     if not prom.query(t["expr"])]
            assert empty == [], empty

            # revival: the sessions come back, every sensor clears its verdict, both alerts resolve
            for n in DEAD:
                lab.revive(n)
            lab.wait_established(60)
            assert wait_for(lambda: prom.alerts() == [] and not prom.query(
                "arp_sensor:zombie_peer_observers:count"), 60), prom.alerts()
        finally:
            log = prom.stop() if prom is not None else ""
            errors = {n: s.stop()[-500:] for n, s in sensors.items()}
            if sys.exc_info()[0] is not None:
                print("prometheus log:", log, "\nsensor stderr:", errors)
