"""Dual stack against real BIRD (issue 17): a 5-node mesh with BGP sessions over IPv4 and IPv6 (`lab up
--ipv6`), two nodes powered off. The sensors name both addresses of each dead node as `zombie-peer` (each a
BGP peer over its own family), `--rate-limit enforce` cuts both storms (ARP requests and neighbour
solicitations for the dead addresses, counted by tcpdump on the bridge, not by the sensor), and every
session between live nodes stays Established over both families."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from sensor.lab import birdconf
from sensor.lab.live import LiveSensor
from tests.support.fixtures_netns import REPO, sensor_env

PHASE_S = 15.0  # each measurement window (baseline, limited)


def wait_until(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.5)


def link_local(lab, node: str) -> str:  # type: ignore[no-untyped-def]
    out = subprocess.run(lab.exec_argv(node, ["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"]),
                         capture_output=True, text=True, check=True).stdout
    return out.split(" inet6 ")[1].split("/")[0]


class SessionWatch(threading.Thread):
    """Every second, every session between the live nodes over both families; records any not Established."""

    def __init__(self, lab, nodes: list[str]) -> None:  # type: ignore[no-untyped-def]
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
                    for ip in (self.lab.ip(o), self.lab.ip6(o)) if o != n else ():
                        p = protos.get(birdconf.protocol_name(ip))
                        if p is None or not p.established:
                            self.problems.append(f"{n}->{ip}: {p.info if p else 'missing'}")
            self.checks += 1
            self.halt.wait(1.0)


def test_dual_stack_zombies_named_over_both_families_and_both_storms_cut(lab_factory, tmp_path: Path) -> None:
    lab = lab_factory(5, hold_time=3, ipv6="2001:db8:17::/64")
    dead = ["n1", "n2"]  # the lowest addresses: every other node keeps reconnecting to them
    limited = ["n4", "n5"]  # run the sensor with enforce there
    live = [n for n in lab.nodes if n not in dead]
    dead4, dead6 = {lab.ip(n) for n in dead}, {lab.ip6(n) for n in dead}
    dead_ips = dead4 | dead6
    owner = {ip: n for n in lab.nodes for ip in (lab.ip(n), lab.ip6(n), link_local(lab, n))}

    watch = SessionWatch(lab, live)
    watch.start()
    sensors: dict[str, LiveSensor] = {}
    try:
        for n in dead:
            lab.kill(n)
        with lab.arp_capture() as cap:
            def from_limited(a: float, b: float, family: set[str]) -> int:
                # a solicitation's source is the asker's global or link-local address (reachability probes)
                return sum(1 for f in list(cap.frames) if f.kind == "Request" and f.target in family
                           and a <= f.ts < b and owner.get(f.sender or "") in limited)

            wait_until(lambda: from_limited(0, 1e12, dead4) >= 4 and from_limited(0, 1e12, dead6) >= 4, 60,
                       "both storms")
            t0 = time.time()
            time.sleep(PHASE_S)
            t1 = time.time()
            for n in limited:
                ready = tmp_path / f"{n}.ready"
                sensors[n] = LiveSensor(lab.exec_argv(n, [
                    sys.executable, "-m", "sensor", "run", "-i", "eth0", "--interval", "1", "--verdict-window", "4",
                    "--bird-socket", lab.bird_socket(n), "--ready-file", str(ready), "--rate-limit", "enforce",
                    "--hostname", n]), cwd=REPO, env=sensor_env())
                wait_until(ready.exists, 60, f"{n}: sensor ready")

            def limited_now(s: LiveSensor) -> set[str]:
                now: set[str] = set()
                for e in s.of("arp_sensor.ratelimit"):
                    if e["event"]["action"] == "ratelimit-applied":
                        now.add(e["destination"]["ip"])
                    elif e["event"]["action"] == "ratelimit-removed":
                        now.discard(e["destination"]["ip"])
                return now

            for n, s in sensors.items():
                wait_until(lambda s=s: limited_now(s) >= dead_ips, 60, f"{n}: limits on {sorted(dead_ips)}")
            time.sleep(2)
            t2 = time.time()
            time.sleep(PHASE_S)
            t3 = time.time()
            counts = {fam: (from_limited(t0, t1, ips), from_limited(t2, t3, ips))
                      for fam, ips in (("ARP", dead4), ("ND", dead6))}
    finally:
        watch.halt.set()
        watch.join(10)
        errs = {n: s.stop() for n, s in sensors.items()}

    print(f"\nbridge, from the limited nodes, for the dead addresses ({PHASE_S:.0f} s each, before -> after "
          f"limits): {counts}")
    for fam, (before, after) in counts.items():
        assert before >= 4, (fam, before)  # a storm was there to cut
        assert after <= 0.10 * before, (fam, before, after)
    assert watch.checks >= 10 and watch.problems == [], watch.problems[:5]
    for n, s in sensors.items():
        assert s.proc.returncode == 0, (n, errs[n][-800:])
        zombies = {e["destination"]["ip"]: e for e in s.of("arp_sensor.peer", "zombie-peer-detected")}
        assert set(zombies) == dead_ips, (n, sorted(zombies))  # both families, never a live peer
        for ip, e in zombies.items():
            assert e["bgp"]["peer"]["name"] == birdconf.protocol_name(ip)
            assert e["network"]["type"] == ("ipv6" if ":" in ip else "ipv4")
            evidence = e["nd"]["solicitations"] if ":" in ip else e["arp"]["requests"]
            assert evidence >= 1, e
        applied = {e["destination"]["ip"] for e in s.of("arp_sensor.ratelimit", "ratelimit-applied")}
        assert applied == dead_ips, (n, applied)
        targets6 = [e for e in s.of("arp_sensor.target") if e["destination"]["ip"] in dead6]
        assert targets6 and all(e["nd"]["solicitations"] >= 1 and "arp" not in e for e in targets6)
        dropped6 = sum(e["nd"]["dropped"] for e in s.of("arp_sensor.ratelimit", "ratelimit-dropping")
                       if e["destination"]["ip"] in dead6)
        assert dropped6 > 0, n
