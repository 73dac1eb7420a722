"""A killed node revived with new hardware (a new MAC behind the same IP) in the netns lab with real BIRD:
the sensor on another node reports `mac-changed` for that IP with the old MAC as previous_mac, and no
ip-conflict (the old MAC is gone)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from sensor.lab.lab import random_mac
from sensor.lab.live import LiveSensor

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SENSOR = "n1"


def ecs(mac: str) -> str:
    return mac.upper().replace(":", "-")


def wait_for(cond, timeout: float, step: float = 0.25):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()


def test_revived_with_a_new_mac_is_mac_changed(lab_factory, tmp_path: Path) -> None:
    lab = lab_factory(3)
    victim = lab.ip("n3")
    old = lab.mac("n3")
    ready = tmp_path / "ready"
    sensor = LiveSensor(lab.exec_argv(SENSOR, [
        sys.executable, "-m", "sensor", "run", "-i", lab.iface, "--interval", "0.5", "--no-neigh",
        "--binding-learn", "0", "--binding-conflict-window", "2", "--ready-file", str(ready),
        "--hostname", SENSOR]), cwd=ROOT)
    try:
        assert wait_for(ready.exists, 60), sensor.stop()
        # A steady mesh sends no ARP (TCP confirms the neighbours): make n1 resolve n3 once, as any host
        # does now and then, so the sensor learns n3's MAC from its reply
        subprocess.run(lab.exec_argv(SENSOR, ["ip", "neigh", "flush", "to", victim]), check=True, timeout=30)
        assert wait_for(lambda: [e for e in sensor.of("arp_sensor.binding", "new-station")
                                 if e["source"]["ip"] == victim], 60), sensor.of("arp_sensor.binding")
        learnt = [e for e in sensor.of("arp_sensor.binding", "new-station") if e["source"]["ip"] == victim]
        assert learnt[0]["source"]["mac"] == ecs(old)

        lab.kill("n3")
        time.sleep(3)  # the old MAC silent for more than the conflict window before the new one speaks
        new = random_mac()
        lab.revive("n3", mac=new)
        assert lab.mac("n3") == new
        lab.wait_established(60)
        changed = wait_for(lambda: [e for e in sensor.of("arp_sensor.binding", "mac-changed")
                                    if e["source"]["ip"] == victim], 60)
        assert changed, sensor.of("arp_sensor.binding")
        e = changed[0]
        assert e["source"]["mac"] == ecs(new)
        assert e["arp_sensor"]["binding"]["previous_mac"] == ecs(old)
        assert e["observer"]["ingress"]["interface"]["name"] == lab.iface
        print(e["message"])
        assert not [c for c in sensor.of("arp_sensor.binding", "ip-conflict") if c["source"]["ip"] == victim]
    finally:
        err = sensor.stop()
    assert "Traceback" not in err, err
