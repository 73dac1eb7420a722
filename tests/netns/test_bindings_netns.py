"""IP -> MAC bindings through a veth: frames from namespace a, the sensor on namespace b's end.

Waiting for the sensor's own clock, never for ours: a change needs the old MAC silent for the conflict
window, so the next frames are sent only once a health event stamped at least a window after the last
binding event has been written (a precondition the sensor's timestamps prove, not a sleep)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from tests.support import frames as F
from tests.support.receivers import wait_for

IP, OTHER = "198.18.0.7", "198.18.0.8"
A, B, C = "02:00:00:00:07:0a", "02:00:00:00:07:0b", "02:00:00:00:07:0c"
WINDOW = 1.0  # --binding-conflict-window


def ecs(mac: str) -> str:
    return mac.upper().replace(":", "-")


def reply(mac: str, ip: str = IP) -> bytes:
    return F.arp_reply(ip, "198.18.0.2", sha=F.mac(mac), tha=b"\x02\x00\x00\x00\x00\x02")


class Events:
    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.endswith("}")]

    def binding(self) -> list[dict]:
        return [e for e in self.all() if e["event"]["dataset"] == "arp_sensor.binding"]

    def actions(self) -> list[tuple[str, str]]:
        return [(e["event"]["action"], e["source"].get("ip", "")) for e in self.binding()]

    def health_times(self) -> list[float]:
        return [ts(e) for e in self.all() if e["event"]["dataset"] == "arp_sensor.health"
                and e["event"]["kind"] == "metric"]

    def wait_actions(self, n: int, what: str) -> list[tuple[str, str]]:
        wait_for(lambda: len(self.binding()) >= n, 30, what)
        return self.actions()

    def wait_quiet_window(self) -> None:
        """Until the sensor has stamped a health event a full window after its last binding event."""
        last = ts(self.binding()[-1])
        wait_for(lambda: any(t >= last + WINDOW + 0.05 for t in self.health_times()), 30, "a quiet window")


def ts(ev: dict) -> float:
    return datetime.strptime(ev["@timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def start(veth_pair, sensor, tmp_path: Path, *extra: str, name: str = "events.json") -> tuple[object, Events]:
    out = tmp_path / name
    proc = sensor(veth_pair.b, ["-i", veth_pair.b_if, "--interval", "0.2", "--min-requests", "1000", "--no-neigh",
                                "--binding-conflict-window", str(WINDOW), "-o", f"file:{out}", *extra])
    return proc, Events(out)


def test_mac_change_then_flip_flop(veth_pair, sensor, tmp_path):
    proc, ev = start(veth_pair, sensor, tmp_path, "--binding-learn", "0")
    veth_pair.send_frames([reply(A)] * 3)
    assert ev.wait_actions(1, "new-station") == [("new-station", IP)]
    ev.wait_quiet_window()
    veth_pair.send_frames([reply(B)] * 2)
    assert ev.wait_actions(2, "mac-changed")[1] == ("mac-changed", IP)
    changed = ev.binding()[1]
    assert changed["source"] == {"ip": IP, "mac": ecs(B)}
    assert changed["arp_sensor"]["binding"] == {"previous_mac": ecs(A), "seen_in": "reply"}
    assert changed["event"]["kind"] == "event"
    ev.wait_quiet_window()
    veth_pair.send_frames([F.arp_gratuitous(IP, sha=F.mac(A))])
    assert ev.wait_actions(3, "flip-flop")[2] == ("flip-flop", IP)
    assert ev.binding()[2]["arp_sensor"]["binding"]["previous_mac"] == ecs(B)
    assert proc.finish() == 0
    assert ev.actions() == [("new-station", IP), ("mac-changed", IP), ("flip-flop", IP)]


def test_two_macs_in_one_window_conflict(veth_pair, sensor, tmp_path):
    proc, ev = start(veth_pair, sensor, tmp_path, "--binding-learn", "0")
    veth_pair.send_frames([reply(A)] * 3)
    ev.wait_actions(1, "new-station")
    veth_pair.send_frames([reply(A), reply(B), reply(A)])  # both answer within one window
    acts = ev.wait_actions(2, "ip-conflict")
    assert acts == [("new-station", IP), ("ip-conflict", IP)]
    c = ev.binding()[1]
    assert c["event"]["kind"] == "alert"
    assert c["source"] == {"ip": IP, "mac": ecs(B)}
    assert c["arp_sensor"]["binding"] == {"holder_mac": ecs(A), "seen_in": "reply"}
    assert proc.finish() == 0
    assert ev.actions() == acts  # one alert per episode, no mac-changed: A kept answering


def test_probe_conflict(veth_pair, sensor, tmp_path):
    proc, ev = start(veth_pair, sensor, tmp_path, "--binding-learn", "0")
    veth_pair.send_frames([reply(A)])
    ev.wait_actions(1, "new-station")
    veth_pair.send_frames([F.arp_probe(IP, sha=F.mac(C)), F.arp_probe(OTHER, sha=F.mac(C))])
    acts = ev.wait_actions(2, "ip-conflict")
    assert acts[1] == ("ip-conflict", IP)
    c = ev.binding()[1]
    assert c["arp_sensor"]["binding"] == {"holder_mac": ecs(A), "seen_in": "probe"}
    assert c["source"]["mac"] == ecs(C) and "RFC 5227" in c["message"]
    assert proc.finish() == 0
    assert ev.actions() == [("new-station", IP), ("ip-conflict", IP)]  # the probe for OTHER: nobody holds it


def test_stable_host_and_request_senders_give_no_change(veth_pair, sensor, tmp_path):
    proc, ev = start(veth_pair, sensor, tmp_path, "--binding-learn", "0")
    for i in range(5):
        n = len(ev.health_times())
        veth_pair.send_frames([reply(A), F.arp_request(IP, "198.18.0.99", sha=F.mac(A))])  # nobody answers
        wait_for(lambda n=n: len(ev.health_times()) >= n + 2, 30, f"two intervals after burst {i}")
    assert proc.finish() == 0
    assert ev.actions() == [("new-station", IP)]
    health = [e["arp_sensor"]["health"] for e in ev.all() if e["event"]["dataset"] == "arp_sensor.health"
              and e["event"]["kind"] == "metric"]
    assert health[-1]["bindings_live"] >= 1 and health[-1]["bindings_untracked"] == 0


def test_learning_period(veth_pair, sensor, tmp_path):
    proc, ev = start(veth_pair, sensor, tmp_path, "--binding-learn", "3")
    ready_seen = datetime.now(UTC).timestamp()  # learning starts when counting starts, before this
    veth_pair.send_frames([reply(A)])  # inside the learning period: learnt, not announced
    wait_for(lambda: any(t >= ready_seen + 3.05 for t in ev.health_times()), 30, "the end of learning")
    veth_pair.send_frames([reply(B, OTHER), reply(A)])
    assert ev.wait_actions(1, "new-station") == [("new-station", OTHER)]
    assert proc.finish() == 0
    assert ev.actions() == [("new-station", OTHER)]


def test_bindings_kept_across_a_restart(veth_pair, sensor, tmp_path):
    state = tmp_path / "state" / "bindings.json"
    state.parent.mkdir()
    proc, ev = start(veth_pair, sensor, tmp_path, "--binding-learn", "0", "--binding-state", str(state))
    veth_pair.send_frames([reply(A)])
    ev.wait_actions(1, "new-station")
    assert proc.finish() == 0  # SIGTERM: the state file is written on the way out
    saved = json.loads(state.read_text())
    assert [(b["ip"], b["mac"]) for b in saved["bindings"]] == [(IP, ecs(A))]
    assert sorted(p.name for p in state.parent.iterdir()) == ["bindings.json"]

    proc, ev2 = start(veth_pair, sensor, tmp_path, "--binding-learn", "0", "--binding-state", str(state),
                      name="events2.json")
    n = len(ev2.health_times())
    veth_pair.send_frames([reply(A)])  # known from the file: not new
    wait_for(lambda: len(ev2.health_times()) >= n + 2, 30, "two intervals")
    counted = ev2.health_times()[-1]  # A's frames were counted by then
    wait_for(lambda: ev2.health_times()[-1] >= counted + WINDOW + 0.05, 30, "a quiet window")
    veth_pair.send_frames([reply(B)])  # A silent for a window: a change, not a conflict
    assert ev2.wait_actions(1, "mac-changed") == [("mac-changed", IP)]
    assert ev2.binding()[0]["arp_sensor"]["binding"]["previous_mac"] == ecs(A)
    assert proc.finish() == 0


def test_mac_mismatch(veth_pair, sensor, tmp_path):
    proc, ev = start(veth_pair, sensor, tmp_path, "--binding-learn", "60")
    forged = F.ethernet(F.BROADCAST, F.mac(C), F.ETH_P_ARP,
                        F.arp_payload(F.ARP_REQUEST, F.mac(A), IP, b"\0" * 6, "198.18.0.2"), pad_to=60)
    veth_pair.send_frames([forged])
    assert ev.wait_actions(1, "mac-mismatch") == [("mac-mismatch", IP)]
    assert ev.binding()[0]["source"]["mac"] == ecs(A)
    assert proc.finish() == 0
