"""The netns lab: BIRD config rendering, a real 6-node BIRD full mesh, power-off storms seen on the bridge,
revival, and teardown that leaves nothing behind (also after kill -9 of the builder)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sensor.errors import SensorError
from sensor.lab import birdconf
from sensor.lab.lab import STATE_ROOT, Lab
from tests.support.fixtures_lab import ROOT, cli, leftovers, unique_lab_name

HOLD = 6  # seconds: BIRD notices a silent power-off after this


def test_lab_up_without_bird_is_an_environment_error(tmp_path: Path) -> None:
    # a PATH with `ip` but no bird
    (tmp_path / "ip").symlink_to(shutil.which("ip"))
    name = unique_lab_name()
    r = cli("lab", "up", "--nodes", "3", "--name", name, env={**os.environ, "PATH": str(tmp_path)})
    assert r.returncode == 3, r.stderr
    assert "`bird` not found in PATH" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert leftovers(name) == []


def test_lab_too_big_for_the_shared_arp_table_is_refused_before_building() -> None:
    """The kernel's ARP table is shared by all namespaces (gc_thresh3, 1024 by default): a mesh that
    cannot fit would hang in Connect with "neighbor table overflow!", so `up` refuses it up front."""
    thresh3 = int(Path("/proc/sys/net/ipv4/neigh/default/gc_thresh3").read_text())
    if thresh3 > 254 * 253:
        pytest.skip(f"gc_thresh3={thresh3} fits even a 254-node mesh")
    name = unique_lab_name()
    r = cli("lab", "up", "--name", name, "--nodes", "254")
    assert r.returncode == 3, r.stderr
    assert "neighbour table" in r.stderr and "--raise-neigh-limits" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert leftovers(name) == []


def test_failed_build_rolls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure midway (here: the third BIRD refuses to start) leaves nothing behind."""
    started = []
    real = Lab._start_bird

    def flaky(self: Lab, n) -> None:  # type: ignore[no-untyped-def]
        if len(started) == 2:
            raise SensorError("lab: bird failed to start on n3: injected")
        started.append(n.name)
        real(self, n)

    monkeypatch.setattr(Lab, "_start_bird", flaky)
    name = unique_lab_name()
    try:
        with pytest.raises(SensorError, match="injected"):
            Lab(name, 4).up()
        assert started == ["n1", "n2"]
        assert leftovers(name) == []
    finally:
        Lab.destroy(name)


@pytest.fixture(scope="module")
def shared_mesh(module_lab_factory) -> Lab:  # type: ignore[no-untyped-def]
    return module_lab_factory(6, hold_time=HOLD, wait=60)


@pytest.fixture
def mesh(shared_mesh: Lab) -> Lab:
    """The shared lab, every node on and every session Established (whatever the last test did)."""
    lab = Lab.load(shared_mesh.name)  # the CLI may have changed node states behind our object
    for n in lab.nodes:
        if lab.state(n) != "up":
            lab.revive(n) if lab.state(n) == "killed" else lab.start_bird(n)
    lab.wait_established(30)
    return lab


def wait_for(pred, timeout: float, step: float = 0.3):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > end:
            return v
        time.sleep(step)


def test_mesh_establishes_every_session(mesh: Lab) -> None:
    st = mesh.status()
    assert [r["node"] for r in st["nodes"]] == [f"n{i}" for i in range(1, 7)]
    for row in st["nodes"]:
        others = {birdconf.protocol_name(mesh.ip(o)) for o in mesh.nodes if o != row["node"]}
        assert set(row["sessions"]) == others
        assert row["established"] == row["expected"] == 5, row
    # the BIRD in each node is Calico-shaped: passive towards the peers whose address string sorts after its own
    conf = (mesh.dir / "n3.conf").read_text()
    assert re.search(r"Mesh_198_18_0_4 from bgp_template \{[^}]*passive on", conf)
    assert not re.search(r"Mesh_198_18_0_2 from bgp_template \{[^}]*passive on", conf)


def test_power_off_starts_arp_storm_for_exactly_the_dead_and_revival_ends_it(mesh: Lab) -> None:
    dead = ["n2", "n3"]
    dead_ips = {mesh.ip(n) for n in dead}
    live = [n for n in mesh.nodes if n not in dead]
    with mesh.arp_capture() as cap:
        t_kill = time.time()
        for n in dead:
            mesh.kill(n)

        # (a) every live BIRD loses both sessions with a hold-timer or socket error, keeps the others
        def all_noticed() -> bool:
            for n in live:
                protos = mesh.protocols(n)
                for d in dead:
                    if protos[birdconf.protocol_name(mesh.ip(d))].established:
                        return False
            return True

        assert wait_for(all_noticed, HOLD * 2 + 5), mesh.status()
        for n in live:
            protos = mesh.protocols(n)
            for d in dead:
                p = protos[birdconf.protocol_name(mesh.ip(d))]
                assert re.search(r"Hold timer expired|Socket: |No route to host", p.info), (n, d, p)
            assert sum(p.established for p in protos.values()) == len(live) - 1
        # (b) the reconnect loop broadcasts ARP for the dead addresses, and only for them
        t_noticed = time.time()
        assert wait_for(lambda: all(cap.requests(since=t_kill)[ip] >= 5 for ip in dead_ips), 30), cap.requests()
        storm = cap.requests(since=t_kill)
        assert set(storm) == dead_ips, storm
        askers = {f.sender for f in cap.frames if f.kind == "Request"}
        assert askers <= {mesh.ip(n) for n in live} and len(askers) >= 2, askers
        assert t_noticed - t_kill < HOLD * 2 + 5

        # (c) revival: sessions come back, ARP for the revived nodes is answered and stops
        for n in dead:
            mesh.revive(n)
        mesh.wait_established(30)
        time.sleep(2)
        t_quiet = time.time()
        time.sleep(4)
        frames = [f for f in cap.frames if f.ts >= t_quiet]
    requests = [f for f in frames if f.kind == "Request"]
    unanswered = [
        f
        for f in requests
        if not any(r.kind == "Reply" and r.target == f.target and 0 <= r.ts - f.ts < 1 for r in frames)
    ]
    assert unanswered == [], unanswered
    assert len(requests) < min(storm.values()), (requests, storm)


def test_stop_bird_keeps_node_reachable(mesh: Lab) -> None:
    """BIRD down but the host up: peers lose the session at once, the node still answers ARP."""
    mesh.wait_established(30)
    mesh.stop_bird("n5")
    assert mesh.state("n5") == "bird-stopped"
    assert wait_for(lambda: not mesh.protocols("n6")["Mesh_198_18_0_5"].established, 5)
    r = subprocess.run(
        mesh.exec_argv("n1", ["arping", "-c", "1", "-w", "2", "-i", "eth0", mesh.ip("n5")]),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    mesh.start_bird("n5")
    assert mesh.state("n5") == "up"
    mesh.wait_established(30)


def test_cli_status_exec_kill_revive_on_the_shared_lab(mesh: Lab) -> None:
    r = cli("lab", "status", "--name", mesh.name, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert [n["state"] for n in st["nodes"]] == ["up"] * 6
    r = cli("lab", "exec", "--name", mesh.name, "n4", "--", "ip", "-o", "-4", "addr", "show", "dev", "eth0")
    assert r.returncode == 0 and f"inet {mesh.ip('n4')}/24" in r.stdout, r.stdout + r.stderr
    # up twice with the same name: refused, and the running lab is untouched
    r = cli("lab", "up", "--name", mesh.name, "--nodes", "3")
    assert r.returncode == 2 and "already exists" in r.stderr
    r = cli("lab", "kill", "--name", mesh.name, "n99")
    assert r.returncode == 2 and "unknown node 'n99'" in r.stderr
    assert all(os.path.exists(f"/run/netns/{mesh.netns(n)}") for n in mesh.nodes)
    r = cli("lab", "kill", "--name", mesh.name, "6")  # by index
    assert r.returncode == 0 and "n6 (198.18.0.6) powered off" in r.stderr
    assert Lab.load(mesh.name).state("n6") == "killed"
    # right after the power-off the live nodes' sessions to n6 are still Established (hold timer):
    # counted apart as stale, never as 5 established out of 4 expected
    st = json.loads(cli("lab", "status", "--name", mesh.name, "--json").stdout)
    for row in st["nodes"][:5]:
        assert row["established"] == row["expected"] == 4 and row["stale"] in (0, 1), row
    r = cli("lab", "status", "--name", mesh.name)
    assert re.search(r"^n6 .*killed", r.stdout, re.M), r.stdout
    assert not re.search(r"\b5/4\b", r.stdout), r.stdout
    r = cli("lab", "revive", "--name", mesh.name, "198.18.0.6")  # by IP
    assert r.returncode == 0, r.stderr
    assert Lab.load(mesh.name).state("n6") == "up"
    Lab.load(mesh.name).wait_established(30)


def test_down_after_kill9_of_the_builder_leaves_nothing() -> None:
    name = unique_lab_name()
    code = f"from sensor.lab.lab import Lab; Lab({name!r}, 16).up(); import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        # strike mid-build: some nodes exist, BIRD is already running on at least one
        assert wait_for(lambda: (STATE_ROOT / name / "n2.pid").exists(), 30, step=0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert any(x.startswith("netns") for x in leftovers(name))
        r = cli("lab", "down", "--name", name)
        assert r.returncode == 0, r.stderr
        assert leftovers(name) == []
        r = cli("lab", "down", "--name", name)  # idempotent
        assert r.returncode == 0 and "nothing to remove" in r.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
        Lab.destroy(name)


def test_vlan_lab_carries_tagged_frames_end_to_end(lab_factory) -> None:  # type: ignore[no-untyped-def]
    """Every frame on the bridge carries VLAN 100 (tagged by tc programs, no 8021q module needed), the
    mesh establishes over it, the storm for a dead node is tagged, and a sensor in a node reports it."""
    lab = lab_factory(3, vlan=100, hold_time=3)
    # 3 s of whatever crosses the bridge (BGP keepalives every second): every frame is tagged
    wire = subprocess.run(
        ["ip", "netns", "exec", lab.switch_netns, "timeout", "3", "tcpdump", "-i", lab.bridge, "-nn", "-e", "-l"],
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    wire = [ln for ln in wire if ln.strip()]  # tcpdump killed mid-line leaves a blank one
    assert len(wire) >= 3, wire
    assert [ln for ln in wire if "ethertype 802.1Q (0x8100)" not in ln or "vlan 100," not in ln] == []
    # the sensor in n2 sees the tag in both directions, as on a host whose address sits on eth0.100
    ready = lab.dir / "sensor.ready"
    sensor = subprocess.Popen(
        lab.exec_argv("n2", [sys.executable, "-m", "sensor", "run", "-i", "eth0", "--interval", "1",
                             "--min-requests", "1", "--duration", "16", "--ready-file", str(ready)]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert wait_for(lambda: ready.exists() or sensor.poll() is not None, 90), "sensor never attached"
        assert sensor.poll() is None, sensor.communicate()[1][-2000:]
        cap = lab.arp_capture()
        cap.argv[-1] = "vlan and arp"  # only tagged frames
        with cap:
            lab.kill("n1")
            assert wait_for(lambda: cap.requests().get(lab.ip("n1"), 0) >= 2, 15)
        out, err = sensor.communicate(timeout=60)
    finally:
        if sensor.poll() is None:
            sensor.kill()
    assert sensor.returncode == 0, err[-2000:]
    targets = [e for e in map(json.loads, out.splitlines()) if e["event"]["dataset"] == "arp_sensor.target"]
    assert {e["destination"]["ip"] for e in targets} == {lab.ip("n1")}
    assert {(e["network"]["direction"], e["network"].get("vlan", {}).get("id")) for e in targets} == {
        ("ingress", "100"),
        ("egress", "100"),
    }
    r = cli("lab", "down", "--name", lab.name)
    assert r.returncode == 0 and leftovers(lab.name) == []


@pytest.mark.slow
def test_demo_streams_json_and_names_the_dead_peer() -> None:
    """A short `arp-sensor demo` (the same code as `make demo`): real sensor in n1, n2 powered off."""
    r = cli("demo", "--nodes", "4", "--kill", "n2", "--before", "2", "--after", "14", timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    events = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    targets = {e["destination.ip"] for e in events if e["event.dataset"] == "arp_sensor.target"}
    assert targets == {"198.18.0.2"}, targets
    assert "<- n2, powered off" in r.stderr
    assert "every powered-off peer (n2) is being asked for" in r.stderr
    assert "Mesh_198_18_0_2 (n2): " in r.stderr  # BIRD's view of the dead peer in the summary
    name = re.search(r"building lab (demo[0-9a-f]+)", r.stderr)
    assert name and leftovers(name[1]) == []




def test_dual_stack_lab_meshes_over_both_families_and_a_dead_node_storms_both(lab_factory) -> None:  # type: ignore[no-untyped-def]
    """`lab up --ipv6`: sessions over IPv4 and IPv6 (Calico names), and a powered-off node draws ARP
    requests and neighbour solicitations (for its address in the body) from the live nodes' reconnects."""
    lab = lab_factory(3, hold_time=3, ipv6="2001:db8:17::/64")
    st = lab.status()
    for row in st["nodes"]:
        others = [o for o in lab.nodes if o != row["node"]]
        assert set(row["sessions"]) == {birdconf.protocol_name(ip) for o in others
                                        for ip in (lab.ip(o), lab.ip6(o))}
        assert row["established"] == row["expected"] == 4, row
    assert lab.ip6("n1") == "2001:db8:17::1" and Lab.load(lab.name).ip6("n3") == "2001:db8:17::3"
    with lab.arp_capture() as cap:
        t_kill = time.time()
        lab.kill("n1")  # the lowest address: both other nodes keep reconnecting to it
        dead = {lab.ip("n1"), lab.ip6("n1")}
        assert wait_for(lambda: all(cap.requests(since=t_kill)[ip] >= 3 for ip in dead), 30), cap.requests()
    assert set(cap.requests(since=t_kill)) == dead
    assert lab.not_established() == []  # the live nodes' sessions over both families stay up
