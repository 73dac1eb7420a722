"""Issue 13 item 11: can a node on the passive side of a pair call a live peer `zombie-peer`?

The sensor runs on n4. Calico's mesh is one-directional: n4 is the passive end towards n6 (n6's address
sorts after n4's), so n4 never connects to n6 and never ARPs for it; n7 and n8 connect to n6 and ARP for
it. When BIRD stops on n6 (the host stays up), n4 sees the broadcast requests of n7 and n8 for n6 but not
n6's replies, which are unicast to them. So the question is whether those requests alone can make n4
say `zombie-peer` about a live host.

Phase 1 is what BIRD does by itself. Phase 2 is the worst case: n7 and n8 lose their neighbour entry for
n6 again and again while they have traffic for it (as under neighbour-table pressure, or pod traffic over
IP-in-IP towards a node whose entry was flushed), so every packet costs a fresh broadcast request, and
n6 answers every one of them where n4 cannot see it.

Found (kernel 6.18, this lab): phase 1 puts no sustained requests in front of n4 (answered askers switch
to unicast probes). In phase 2 a sensor that started after the session went down called the live n6
`zombie-peer` (22 requests from 2 hosts in one window, no reply seen). The fix: before such a verdict,
the sensor has n4's own kernel resolve n6 (sensor.peers.own.kernel_resolve); n6 answers n4, and the
candidacy ends. The test keeps both sensors honest.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sensor.lab.live import LiveSensor

pytestmark = pytest.mark.slow

W = 6.0  # --verdict-window
SENSOR, DOWN, ASKERS = "n4", "n6", ("n7", "n8")
ROOT = Path(__file__).resolve().parents[2]

# In an asker: for `seconds`, flush its neighbour entry for the target and send it one UDP datagram,
# twice a second: each datagram needs a new broadcast resolution.
CHURN = ("import socket, subprocess, sys, time\n"
         "ip, dev, end = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])\n"
         "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         "while time.monotonic() < end:\n"
         "    subprocess.run(['ip', 'neigh', 'flush', 'to', ip, 'dev', dev], capture_output=True)\n"
         "    s.sendto(b'x', (ip, 9))  # discard port: only the resolution matters\n"
         "    time.sleep(0.5)\n")


def _sensor(lab, tmp_path: Path, peers: Path, tag: str) -> tuple[LiveSensor, Path]:
    ready = tmp_path / f"ready-{tag}"
    return LiveSensor(lab.exec_argv(SENSOR, [
        sys.executable, "-m", "sensor", "run", "-i", lab.iface, "--interval", "1", "--verdict-window", str(W),
        "--bird-socket", lab.bird_socket(SENSOR), "--peers", str(peers), "--ready-file", str(ready),
        "--top", "0", "--hostname", SENSOR]), cwd=ROOT), ready


def _wait_ready(sensor: LiveSensor, ready: Path) -> None:
    end = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < end and sensor.proc.poll() is None, sensor.stop()
        time.sleep(0.1)


def _asked(sensor: LiveSensor, ip: str) -> int:
    return sum(e["arp"]["requests"] for e in sensor.of("arp_sensor.target") if e["destination"]["ip"] == ip)


def _verdicts(sensor: LiveSensor, ip: str) -> list[tuple[str, str]]:
    return [(e["event"]["action"], e.get("message", "")) for e in sensor.of("arp_sensor.peer")
            if e["destination"]["ip"] == ip]


def test_passive_side_never_calls_a_live_peer_with_bird_stopped_zombie(lab_factory, tmp_path: Path) -> None:
    """Two sensors on n4, one after the other: `early` runs from before BIRD stops on n6 (it may see n6
    answer n4's own kernel once, as the closed session's last packets leave), `late` starts after that,
    with no memory of it: only the others' unanswered-looking requests are in front of it."""
    lab = lab_factory(8)
    ip = {n: lab.ip(n) for n in lab.nodes}
    mesh = f"Mesh_{ip[DOWN].replace('.', '_')} from bgp_template \\{{[^}}]*passive on"
    assert re.search(mesh, (lab.dir / f"{SENSOR}.conf").read_text())  # n4 waits for n6
    for n in ASKERS:  # n7 and n8 connect to n6
        assert not re.search(mesh, (lab.dir / f"{n}.conf").read_text())
    peers = tmp_path / "peers.txt"
    peers.write_text("".join(f"{ip[n]} - {n}\n" for n in lab.nodes))
    early, ready = _sensor(lab, tmp_path, peers, "early")
    late = None
    churn: list[subprocess.Popen] = []
    try:
        _wait_ready(early, ready)
        time.sleep(W)
        assert early.of("arp_sensor.peer") == []
        # Phase 1: BIRD stops on n6; n7 and n8 keep reconnecting (and are answered), n4 waits.
        lab.stop_bird(DOWN)
        time.sleep(3 * W)
        asked_1 = _asked(early, ip[DOWN])
        err = early.stop()  # one sensor per interface: the late one takes over
        late, ready = _sensor(lab, tmp_path, peers, "late")
        _wait_ready(late, ready)
        # Phase 2: the askers re-resolve n6 by broadcast for every datagram, for 4 windows.
        churn = [subprocess.Popen(lab.exec_argv(n, [sys.executable, "-c", CHURN, ip[DOWN], lab.iface,
                                                    str(4 * W)])) for n in ASKERS]
        for p in churn:
            p.wait(timeout=4 * W + 30)
        time.sleep(2)
        lab.start_bird(DOWN)
    finally:
        for p in churn:
            if p.poll() is None:
                p.kill()
        err = early.stop() + (late.stop() if late is not None else "")  # stop() twice is harmless
    assert late is not None
    asked_2 = _asked(late, ip[DOWN])
    print(f"n4 saw {asked_1} requests for {ip[DOWN]} in phase 1, {asked_2} in phase 2 (late sensor); "
          f"early: {_verdicts(early, ip[DOWN])}; late: {_verdicts(late, ip[DOWN])}")
    # The late sensor's evidence: n4's own kernel asked for n6 (egress) and n6 answered n4 (a reply).
    own_asks = sum(e["arp"]["requests"] for e in late.of("arp_sensor.target")
                   if e["destination"]["ip"] == ip[DOWN] and e["network"]["direction"] == "egress")
    replies = sum(e["arp"]["replies"] for e in late.of("arp_sensor.target") if e["destination"]["ip"] == ip[DOWN])
    print(f"late sensor: {own_asks} first-hand requests from n4, {replies} replies from n6 seen")
    assert asked_2 >= 3 * W, (asked_2, err)  # phase 2 did put sustained evidence in front of n4
    for s in (early, late):
        assert not [a for a, _ in _verdicts(s, ip[DOWN]) if a == "zombie-peer-detected"], (_verdicts(s, ip[DOWN]), err)
    assert own_asks >= 1 and replies >= 1  # the first-hand check is what told the late sensor
