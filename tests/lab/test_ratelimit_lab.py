"""Rate limiting against real BIRD: an 8-node Calico-style full mesh, two nodes powered off, arp-sensor with
`--rate-limit enforce` on four live nodes. The ARP requests for the dead IPs that those nodes put on the
bridge are counted by tcpdump in the switch namespace (not by the sensor), before and after the limits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from sensor.lab import birdconf
from tests.support.fixtures_netns import REPO, sensor_cmd, sensor_env

PHASE_S = 30.0  # each measurement window (baseline, limited)


class NodeSensor:
    """`arp-sensor run` inside a lab node, stdout to a file that the test reads while it runs."""

    def __init__(self, lab, node: str, tmp: Path, extra: list[str]) -> None:
        self.node = node
        self.out = tmp / f"{node}.jsonl"
        self.err = tmp / f"{node}.err"
        ready = tmp / f"{node}.ready"
        argv = lab.exec_argv(node, sensor_cmd(
            "run", "-i", "eth0", "--interval", "1", "--verdict-window", "4", "--bird-socket",
            lab.bird_socket(node), "--ready-file", str(ready), "--rate-limit", "enforce", *extra))
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env=sensor_env(), cwd=REPO,
                                         start_new_session=True)
        end = time.monotonic() + 60
        while not ready.exists():
            assert self.proc.poll() is None, f"{node}: sensor exited: {self.err.read_text()}"
            assert time.monotonic() < end, f"{node}: sensor not ready"
            time.sleep(0.1)

    def events(self, dataset: str | None = None) -> list[dict]:
        lines = self.out.read_text().split("\n")[:-1]  # the last one may be half written
        evs = [json.loads(line) for line in lines if line]
        return [e for e in evs if dataset is None or e["event"]["dataset"] == dataset]

    def limited(self) -> set[str]:
        """IPs with a limit now, from the sensor's applied/removed events."""
        now: set[str] = set()
        for e in self.events("arp_sensor.ratelimit"):
            if e["event"]["action"] == "ratelimit-applied":
                now.add(e["destination"]["ip"])
            elif e["event"]["action"] == "ratelimit-removed":
                now.discard(e["destination"]["ip"])
        return now

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


class SessionWatch(threading.Thread):
    """Checks every session between the given (live) nodes every second; records any that is not
    Established at any check."""

    def __init__(self, lab, nodes: list[str]) -> None:
        super().__init__(daemon=True)
        self.lab, self.nodes = lab, nodes
        self.problems: list[str] = []
        self.checks = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for n in self.nodes:
                try:
                    protos = self.lab.protocols(n)
                except Exception as e:  # recorded; the assertion reports it
                    self.problems.append(f"{n}: {e}")
                    continue
                for o in self.nodes:
                    if o != n:
                        p = protos.get(birdconf.protocol_name(self.lab.ip(o)))
                        if p is None or not p.established:
                            self.problems.append(f"{n}->{o}: {p.info if p else 'missing'}")
            self.checks += 1
            self.halt.wait(1.0)


def _ts(ev: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ev["@timestamp"].replace("Z", "+00:00")).timestamp()


def wait_until(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_enforce_cuts_dead_peer_arp_on_the_bridge_and_spares_live_peers(lab_factory, tmp_path):
    lab = lab_factory(8)
    dead = ["n3", "n6"]
    limited = ["n1", "n4", "n7", "n8"]  # run the sensor with enforce
    live = [n for n in lab.nodes if n not in dead]
    control = [n for n in live if n not in limited]  # no sensor: the storm goes on there
    dead_ips = {lab.ip(n) for n in dead}
    ip_of = {lab.ip(n): n for n in lab.nodes}
    established_manual = lab.ip("n5")  # a live, Established peer someone lists by mistake

    watch = SessionWatch(lab, live)
    watch.start()
    sensors: list[NodeSensor] = []
    try:
        for n in dead:
            lab.kill(n)
        with lab.arp_capture() as cap:
            # the storm starts once the live nodes' hold timers expire
            wait_until(lambda: sum(1 for f in cap.frames if f.kind == "Request" and f.target in dead_ips
                                   and ip_of.get(f.sender) in limited) >= 8, 60, "the ARP storm")
            t0 = time.time()
            time.sleep(PHASE_S)
            t1 = time.time()
            for n in limited:
                extra = ["--limit-target", established_manual] if n == "n1" else []
                sensors.append(NodeSensor(lab, n, tmp_path, extra))
            for s in sensors:
                wait_until(lambda s=s: s.limited() >= dead_ips, 60, f"{s.node}: limits on {sorted(dead_ips)}")
            time.sleep(2)
            t2 = time.time()
            time.sleep(PHASE_S)
            t3 = time.time()
        frames = [f for f in cap.frames if f.kind == "Request" and f.target in dead_ips]

        def count(nodes: list[str], a: float, b: float) -> int:
            return sum(1 for f in frames if a <= f.ts < b and ip_of.get(f.sender) in nodes)

        before, after = count(limited, t0, t1), count(limited, t2, t3)
        ctl_before, ctl_after = count(control, t0, t1), count(control, t2, t3)
        per_pair = Counter((ip_of.get(f.sender), f.target) for f in frames if t2 <= f.ts < t3)
        dropped_b = sum(e["arp"]["dropped"] for s in sensors for e in s.events("arp_sensor.ratelimit")
                        if e["event"]["action"] == "ratelimit-dropping" and t2 <= _ts(e) < t3)
        print(f"\nbridge: dead-peer ARP requests from the limited nodes {before} in {t1 - t0:.0f} s without limits, "
              f"{after} in {t3 - t2:.0f} s with limits ({1 - after / before:.1%} fewer; their sensors dropped "
              f"{dropped_b} in that window); control nodes {ctl_before} -> {ctl_after}; unlimited "
              f"(node, target) pairs with limits on: {dict(per_pair)}")
        assert before >= 4 * len(limited), before  # a storm was there to cut
        assert after <= 0.10 * before, (before, after)
        assert ctl_after >= 0.5 * ctl_before  # the storm itself went on: the limits did the cutting

        # Revive: every limit goes, the sessions come back.
        for n in dead:
            lab.revive(n)
        for s in sensors:
            wait_until(lambda s=s: not (s.limited() & dead_ips), 90, f"{s.node}: limits removed")
        lab.wait_established(90)
    finally:
        watch.halt.set()
        watch.join(10)
        codes = {s.node: s.stop() for s in sensors}

    assert watch.checks >= 20 and watch.problems == [], watch.problems[:5]
    assert codes == dict.fromkeys(limited, 0), {s.node: s.err.read_text()[-500:] for s in sensors}
    for s in sensors:
        rl = s.events("arp_sensor.ratelimit")
        applied = {e["destination"]["ip"] for e in rl if e["event"]["action"] == "ratelimit-applied"}
        assert applied == dead_ips, (s.node, applied)  # never a live peer
        removed = {e["destination"]["ip"] for e in rl if e["event"]["action"] == "ratelimit-removed"}
        assert removed == dead_ips
        # every request the kernel dropped was one for a dead peer: the per-target drops (dead IPs
        # only) add up to the kernel's global drop counter
        dropped = sum(e["arp"]["dropped"] for e in rl if e["event"]["action"] == "ratelimit-dropping")
        health = sum(e["arp_sensor"]["health"].get("ratelimit_dropped", 0)
                     for e in s.events("arp_sensor.health") if e["event"]["kind"] == "metric")
        assert dropped == health > 0, (s.node, dropped, health)
    warnings = [e for e in sensors[0].events("arp_sensor.health")
                if e["event"].get("action") == "ratelimit-refused"]
    assert len(warnings) == 1 and established_manual in warnings[0]["message"]
    assert "Established" in warnings[0]["message"]
    assert "is not limited" in sensors[0].err.read_text()  # and on stderr, for whoever runs it by hand
