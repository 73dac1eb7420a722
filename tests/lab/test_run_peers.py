"""`arp-sensor run` with a real BIRD: zombie and reachable-but-down peers end to end (root, netns only).

Topology (all in namespaces made here): a switch namespace with a bridge; node A (198.18.0.1: BIRD and the
sensor), node B (198.18.0.2: BIRD, a live peer), node C (198.18.0.3: up, no BIRD: BGP down but it answers
ARP); 198.18.0.7 is a configured peer that does not exist.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BIRD_TMPL = """router id {me};
protocol device {{ scan time 10; }}
template bgp mesh {{ local as 64512; connect delay time 1; connect retry time 1; error wait time 1, 2;
  hold time 6; ipv4 {{ import all; export none; }}; }}
{peers}
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tag = secrets.token_hex(2)
    d = tmp_path_factory.mktemp("mesh")
    ns = {n: f"rp{n}{tag}" for n in ("sw", "a", "b", "c")}
    procs: list[subprocess.Popen] = []
    try:
        for n in ns.values():
            sh("ip", "netns", "add", n)
            sh("ip", "-n", n, "link", "set", "lo", "up")
        sh("ip", "-n", ns["sw"], "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", ns["sw"], "link", "set", "br0", "up")
        for i, n in enumerate(("a", "b", "c"), 1):
            sh("ip", "-n", ns["sw"], "link", "add", f"p{n}", "type", "veth", "peer", "name", "eth0",
               "netns", ns[n])
            sh("ip", "-n", ns["sw"], "link", "set", f"p{n}", "master", "br0", "up")
            sh("ip", "-n", ns[n], "addr", "add", f"198.18.0.{i}/24", "dev", "eth0")
            sh("ip", "-n", ns[n], "link", "set", "eth0", "up")
        peers_a = "\n".join(f"protocol bgp Mesh_198_18_0_{i} from mesh {{ neighbor 198.18.0.{i} as 64512; }}"
                            for i in (2, 3, 7))
        (d / "a.conf").write_text(BIRD_TMPL.format(me="198.18.0.1", peers=peers_a))
        (d / "b.conf").write_text(BIRD_TMPL.format(
            me="198.18.0.2", peers="protocol bgp Mesh_198_18_0_1 from mesh { neighbor 198.18.0.1 as 64512; }"))
        for n in ("a", "b"):
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns[n], "bird", "-f", "-c", str(d / f"{n}.conf"), "-s", str(d / f"{n}.ctl")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield ns, d
    finally:
        for p in procs:
            p.terminate()
            p.wait(5)
        for n in ns.values():
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def test_run_flags_zombie_and_reachable_down_and_annotates_targets(mesh):
    ns, d = mesh
    peers = d / "peers.txt"
    peers.write_text("198.18.0.7 - worker-7\n198.18.0.3 - worker-3\nnot-an-ip\n")
    ready = d / "ready"
    cmd = ["ip", "netns", "exec", ns["a"], sys.executable, "-m", "sensor", "run", "-i", "eth0",
           "--interval", "0.5", "--duration", "14", "--verdict-window", "4", "--min-requests", "1",
           "--bird-socket", str(d / "a.ctl"), "--bird-socket", str(d / "missing.ctl"), "--peers", str(peers),
           "--hostname", "node-a", "--ready-file", str(ready)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 20
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        # BIRD resolved its peers before the sensor was attached: make it ask again, as it would for
        # a fresh connection (the live host C then answers once; dead 198.18.0.7 never does)
        sh("ip", "-n", ns["a"], "neigh", "flush", "dev", "eth0")
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    alerts = [e for e in events if e["event"]["dataset"] == "arp_sensor.peer"]
    by_ip = {(e["destination"]["ip"], e["event"]["action"]) for e in alerts}
    assert ("198.18.0.7", "zombie-peer-detected") in by_ip, alerts
    assert ("198.18.0.3", "bgp-down-reachable-detected") in by_ip, alerts
    assert not {ip for ip, _ in by_ip} & {"198.18.0.2", "198.18.0.1"}  # the live peer is never flagged
    zombie = next(e for e in alerts if e["event"]["action"] == "zombie-peer-detected")
    assert zombie["bgp"]["peer"]["name"] == "Mesh_198_18_0_7" and zombie["bgp"]["peer"]["state"] != "Established"
    assert zombie["kubernetes"]["node"]["name"] == "worker-7" and zombie["arp"]["replies"] == 0
    assert "kubectl delete node worker-7" in zombie["message"]
    warnings = [e for e in events if e["event"].get("action") in ("peer-source-unavailable",
                                                                   "peer-file-invalid-line")]
    assert sorted(e["event"]["action"] for e in warnings) == ["peer-file-invalid-line", "peer-source-unavailable"]
    targets = [e for e in events if e["event"]["dataset"] == "arp_sensor.target"
               and e["destination"]["ip"] == "198.18.0.7"]
    assert targets and all(t["bgp"]["peer"]["name"] == "Mesh_198_18_0_7" for t in targets[1:])
