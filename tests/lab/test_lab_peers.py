"""Zombie-peer verdicts in the netns lab with real BIRD: an 8-node Calico-style full mesh, the sensor on n4.

n4 is the active end towards n2 and n3 (their address strings sort before n4's: n4 connects to them) and
the passive end towards n6 (Calico's unidirectional mesh: n6 connects to n4). Kill n2 and n6 → exactly those two get
`zombie-peer-detected` within 3 verdict windows of leaving Established in n4's BIRD; stop BIRD on n3 with
its link up → `bgp-down-reachable`, never zombie; revive → cleared.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sensor.lab.live import LiveSensor
from sensor.peers.bird import BirdClient, BirdError

pytestmark = pytest.mark.slow

W = 6.0  # --verdict-window
SENSOR = "n4"
ROOT = Path(__file__).resolve().parents[2]


def alerts(sensor: LiveSensor, action: str | None = None) -> list[dict]:
    return sensor.of("arp_sensor.peer", action)


class LeftEstablished:
    """Polls the sensor node's BIRD: when did each peer last leave Established (epoch seconds)?"""

    def __init__(self, socket: str) -> None:
        self.client = BirdClient(socket, timeout=1.0)
        self.left: dict[str, float] = {}
        self.state: dict[str, str | None] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                protos = self.client.show_protocols()
            except BirdError:
                continue
            now = time.time()
            for p in protos:
                ip = p.neighbor_ip
                if not p.is_bgp or ip is None:
                    continue
                if p.bgp_state != "Established" and self.state.get(ip) == "Established":
                    self.left[ip] = now
                self.state[ip] = p.bgp_state

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)
        self.client.close()


def wait_for(cond, timeout: float, step: float = 0.25):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()


def epoch(ev: dict) -> float:
    return datetime.strptime(ev["@timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def test_lab_kill_stop_bird_revive(lab_factory, tmp_path: Path) -> None:
    lab = lab_factory(8)
    ip = {n: lab.ip(n) for n in lab.nodes}
    conf = (lab.dir / f"{SENSOR}.conf").read_text()
    # both sides of the passive rule are covered: n4 waits for n6, and connects to n2
    assert re.search(rf"Mesh_{ip['n6'].replace('.', '_')} from bgp_template \{{[^}}]*passive on", conf)
    assert not re.search(rf"Mesh_{ip['n2'].replace('.', '_')} from bgp_template \{{[^}}]*passive on", conf)

    peers = tmp_path / "peers.txt"
    peers.write_text("".join(f"{ip[n]} - {n}\n" for n in lab.nodes))
    ready = tmp_path / "ready"
    sensor = LiveSensor(lab.exec_argv(SENSOR, [
        sys.executable, "-m", "sensor", "run", "-i", lab.iface, "--interval", "1", "--verdict-window", str(W),
        "--bird-socket", lab.bird_socket(SENSOR), "--peers", str(peers), "--ready-file", str(ready),
        "--hostname", SENSOR]), cwd=ROOT)
    watch = LeftEstablished(lab.bird_socket(SENSOR))
    try:
        assert wait_for(ready.exists, 30), sensor.stop()
        time.sleep(W)  # a healthy mesh: nothing to say
        assert alerts(sensor) == []

        # 1. power off n2 (n4 is its active end) and n6 (n4 is its passive end)
        for n in ("n2", "n6"):
            lab.kill(n)
        dead = {ip["n2"], ip["n6"]}
        got = wait_for(lambda: {e["destination"]["ip"] for e in alerts(sensor, "zombie-peer-detected")} >= dead,
                       2 * lab.hold_time + 4 * W + 10)
        assert got, (alerts(sensor), watch.state)
        for e in alerts(sensor, "zombie-peer-detected"):
            d = e["destination"]["ip"]
            assert d in dead
            assert watch.state[d] != "Established" and d in watch.left
            delay = epoch(e) - watch.left[d]
            print(f"zombie {d}: {delay:.1f} s after leaving Established ({e['bgp']['peer']['state']}); "
                  f"{e['message']}")
            assert 0 <= delay <= 3 * W, (d, delay)
            node = next(n for n in lab.nodes if ip[n] == d)
            assert e["bgp"]["peer"]["name"] == f"Mesh_{d.replace('.', '_')}"
            assert e["bgp"]["peer"]["state"] not in ("Established", "unknown")
            assert e["kubernetes"]["node"]["name"] == node and f"kubectl delete node {node}" in e["message"]
            assert e["arp"]["replies"] == 0 and e["arp"]["requests"] >= 3
        assert len(alerts(sensor, "zombie-peer-detected")) == 2

        # 2. BIRD stops on n3, its link stays up: a BGP problem, not a dead host
        lab.stop_bird("n3")
        assert wait_for(lambda: alerts(sensor, "bgp-down-reachable-detected"), 4 * W + 30), alerts(sensor)
        (reach,) = alerts(sensor, "bgp-down-reachable-detected")
        assert reach["destination"]["ip"] == ip["n3"] and "not a dead host" in reach["message"]
        print(reach["message"])

        # 3. revive: the zombies clear, n3's BIRD comes back
        for n in ("n2", "n6"):
            lab.revive(n)
        assert wait_for(lambda: {e["destination"]["ip"] for e in alerts(sensor, "zombie-peer-cleared")} >= dead,
                        30), alerts(sensor)
        lab.start_bird("n3")
        assert wait_for(lambda: alerts(sensor, "bgp-down-reachable-cleared"), 30), alerts(sensor)
        lab.wait_established(30)
        time.sleep(2)
    finally:
        watch.stop()
        err = sensor.stop()
    detected = {(e["destination"]["ip"], e["event"]["action"]) for e in alerts(sensor)
                if e["event"]["action"].endswith("-detected")}
    # no live peer was ever flagged, and n3 was never called a zombie
    assert detected == {(ip["n2"], "zombie-peer-detected"), (ip["n6"], "zombie-peer-detected"),
                        (ip["n3"], "bgp-down-reachable-detected")}, (detected, err)
    targets = [e for e in sensor.events if e["event"]["dataset"] == "arp_sensor.target"
               and e["destination"]["ip"] == ip["n2"]]
    assert targets and all(t["bgp"]["peer"]["name"] == f"Mesh_{ip['n2'].replace('.', '_')}" for t in targets)
