"""`make vm-test`: the Vagrant VM lab boots here and every step of the scenario runs in real VMs.

One lab for the module (tests/artifacts/vmlab.py: libvirtd, virtlogd, vagrant and all VM networks inside a
network namespace of the test's own); the tests are its steps, in order, each one verdict line (`-v`).
After every step the machine's own namespace is compared with how it was before the lab started: no
bridge, NAT rule or dnsmasq may appear there. The lab is torn down at the end, also after a failure."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator

import pytest

from tests.artifacts.vmlab import VmLab, kvm_usable, root_ns_state

# Steps take minutes under TCG (pyproject's 300 s per-test timeout is for the suite).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

NODES = int(os.environ.get("ARP_VMTEST_NODES", "3"))
IPS = [f"198.18.0.{11 + i}" for i in range(NODES)]
NAMES = [f"node{i + 1}" for i in range(NODES)]
LOG = "/var/log/arp-sensor/events.json"
STEP_T0: dict[str, float] = {}


def active_for(ip: str, peers: list[str]) -> bool:
    """Calico's rule: of two mesh nodes, the one whose address *string* sorts after the other's connects."""
    return all(ip > p for p in peers)


# The node that keeps connecting to (and ARPing for) both dead ones, and the two dead ones.
DEAD = [n for n, ip in zip(NAMES, IPS, strict=True) if not active_for(ip, [i for i in IPS if i != ip])][:2]
WATCHER = next(n for n, ip in zip(NAMES, IPS, strict=True)
               if active_for(ip, [IPS[NAMES.index(d)] for d in DEAD]) and n not in DEAD)
DEAD_IPS = [IPS[NAMES.index(d)] for d in DEAD]


class State:
    booted = False


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[VmLab]:
    before = root_ns_state()
    lab = VmLab.start(tmp_path_factory.mktemp("vmlab"), nodes=NODES, memory=int(os.environ.get("ARP_VMTEST_MEM",
                                                                                               "768")))
    lab.root_before = before  # type: ignore[attr-defined]
    try:
        yield lab
    finally:
        forced = lab.stop()
        print(f"\nteardown: {'forced ' + ', '.join(forced) if forced else 'nothing left to force'}; "
              f"vagrant log {lab.log}")
        assert root_ns_state() == before, "the machine's own namespace changed"


@pytest.fixture(autouse=True)
def root_ns_unchanged(request, lab):
    """After every step: the machine's own namespace is as it was (links, iptables, nft, dnsmasq)."""
    if request.node.name not in ("test_box_built_offline", "test_lab_boots") and not State.booted:
        pytest.skip("the lab did not boot")
    t0 = time.monotonic()
    yield
    after = root_ns_state()
    assert after == lab.root_before, f"root namespace changed: {after} != {lab.root_before}"  # type: ignore
    print(f" [{time.monotonic() - t0:.0f} s]", end="")


def sensor_events(lab: VmLab, node: str, since: float = 0.0) -> list[dict]:
    """The JSON lines the shipped unit writes to its LogsDirectory file, from `since` (epoch seconds)."""
    out = lab.ssh(node, f"sudo cat {LOG}").stdout
    evs = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [e for e in evs if _ts(e) >= since]


def _ts(ev: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ev["@timestamp"].replace("Z", "+00:00")).timestamp()


def node_time(lab: VmLab, node: str) -> float:
    return float(lab.ssh(node, "date +%s.%N").stdout)


def wait_for(what: str, fn, timeout: float, every: float = 3.0):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(every)


def mesh_states(lab: VmLab, node: str) -> dict[str, str]:
    out = lab.ssh(node, "sudo birdc -s /var/run/calico/bird.ctl show protocols", check=False).stdout
    return {m.group(1): m.group(2) for m in re.finditer(r"^(Mesh_\S+)\s+BGP\s+\S+\s+\S+\s+\S+\s+(\S+)", out, re.M)}


def attached(lab: VmLab, node: str, ifname: str = "eth1") -> dict[str, object]:
    link = json.loads(lab.ssh(node, f"ip -j -d link show {ifname}").stdout)[0]
    xdp = link.get("xdp", {})
    tc = {h: json.loads(lab.ssh(node, f"sudo tc -j filter show dev {ifname} {h}").stdout or "[]")
          for h in ("ingress", "egress")}
    return {"xdp_mode": xdp.get("mode") if xdp.get("prog") else None,
            "tc": {h: len([f for f in v if f.get("options")]) for h, v in tc.items()}}


def unit_prop(lab: VmLab, node: str, *props: str) -> dict[str, str]:
    out = lab.ssh(node, "systemctl show arp-sensor " + " ".join(f"-p {p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def arp_burst(lab: VmLab, src: str, target: str, count: int) -> None:
    """Exactly `count` ARP requests for `target` on the lab network from node `src` (raw frames, built by the
    tests' own frame helpers in the VM's copy of the repository)."""
    code = ("import socket; from tests.support.frames import arp_request; "
            "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('eth1', 0)); "
            f"[s.send(arp_request('{IPS[NAMES.index(src)]}', '{target}')) for _ in range({count})]")
    lab.ssh(src, f'cd /opt/arp-sensor && sudo .venv/bin/python -c "{code}"')


def counted(lab: VmLab, node: str, target: str, since: float) -> int:
    return sum(e["arp"]["requests"] for e in sensor_events(lab, node, since)
               if e["event"]["dataset"] == "arp_sensor.target" and e["destination"]["ip"] == target
               and e["network"]["direction"] == "ingress")


def assert_counts_exactly(lab: VmLab, node: str, src: str, target: str, n: int) -> None:
    since = node_time(lab, node)
    arp_burst(lab, src, target, n)
    wait_for(f"{n} requests for {target} counted on {node}", lambda: counted(lab, node, target, since) >= n, 60)
    time.sleep(3)  # later intervals must not add any
    assert counted(lab, node, target, since) == n


# -- the steps -----------------------------------------------------------------------------------------
def test_box_built_offline(lab):
    """vagrant/box/build.sh (cached) and `vagrant box add`."""
    print(f" {lab.ensure_box()}", end="")


def test_lab_boots(lab):
    """`vagrant up`: libvirt's qemu (TCG) domain type when KVM is unusable, every node provisioned."""
    t0 = time.monotonic()
    # The first machine alone creates the networks and uploads the box (vagrant-libvirt races on those when
    # several start at once), then the others boot in parallel, then all provision in parallel.
    lab.vagrant("up", "--no-provision", NAMES[0], timeout=3600)
    lab.vagrant("up", "--no-provision", "--parallel", *NAMES[1:], timeout=3600)
    t_boot = time.monotonic() - t0
    lab.vagrant("up", "--provision", "--parallel", timeout=3600)
    print(f" booted in {t_boot:.0f} s, provisioned in {time.monotonic() - t0 - t_boot:.0f} s;", end="")
    print(f" up in {time.monotonic() - t0:.0f} s", end="")
    want = "kvm" if kvm_usable() else "qemu"
    doms = lab.domains()
    assert len(doms) == NODES, doms
    for d in doms:
        assert f"<domain type='{want}'" in lab.virsh("dumpxml", d).stdout
    nets = set(lab.networks())
    assert {"arp-sensor-lab", "arp-sensor-mgmt"} <= nets, nets
    # where libvirt's dnsmasq and bridges are: the lab's namespace (so the root-namespace check sees a real thing)
    assert lab.dnsmasq_in_lab_ns(), "no dnsmasq in the lab's namespace"
    assert lab.bridge("arp-sensor-lab") in lab.in_ns("ip", "-br", "link").stdout
    lab.ssh_config()
    for n in NAMES:
        assert lab.ssh(n, "systemctl is-active arp-sensor arp-lab-bird").stdout.split() == ["active", "active"]
    State.booted = True


def test_mesh_established(lab):
    def all_up():
        states = {n: mesh_states(lab, n) for n in NAMES}
        return all(len(s) == NODES - 1 and set(s.values()) == {"Established"} for s in states.values())
    wait_for("full mesh Established", all_up, 180)


def test_ready_only_after_attach(lab):
    """Type=notify: `systemctl restart` returns after READY=1, and by then the programs are attached."""
    node = NAMES[0]
    lab.ssh(node, "sudo systemctl restart arp-sensor")
    att = attached(lab, node)  # right after systemctl returned
    assert att["xdp_mode"] and att["tc"]["egress"] >= 1, att
    p = unit_prop(lab, node, "ActiveState", "SubState", "Type")
    assert p == {"ActiveState": "active", "SubState": "running", "Type": "notify"}, p


def test_file_output_under_the_sandbox(lab):
    """ProtectSystem=strict and the documented file output: JSON lines in the unit's LogsDirectory."""
    node = NAMES[0]
    p = unit_prop(lab, node, "ProtectSystem", "LogsDirectory")
    assert p["ProtectSystem"] == "strict" and p["LogsDirectory"] == "arp-sensor", p
    since = node_time(lab, node)
    wait_for("health events in the file", lambda: any(e["event"]["dataset"] == "arp_sensor.health"
                                                      for e in sensor_events(lab, node, since)), 30)
    assert_counts_exactly(lab, node, NAMES[1], "198.18.0.99", 5)


def test_kill9_restart_counts_again(lab):
    """kill -9 → systemd restarts the sensor (Restart=on-failure) and the new one attaches and counts."""
    node = NAMES[0]
    p = unit_prop(lab, node, "MainPID", "NRestarts")
    lab.ssh(node, f"sudo kill -9 {p['MainPID']}")

    def restarted():
        q = unit_prop(lab, node, "MainPID", "NRestarts", "ActiveState")
        return q if q["ActiveState"] == "active" and q["MainPID"] not in ("0", p["MainPID"]) else None
    q = wait_for("systemd restarts the sensor", restarted, 120)
    assert int(q["NRestarts"]) == int(p["NRestarts"]) + 1
    assert attached(lab, node)["xdp_mode"]
    assert_counts_exactly(lab, node, NAMES[1], "198.18.0.98", 6)


def test_stop_leaves_nothing_attached(lab):
    """systemctl stop, and after kill -9 + stop: ExecStopPost's detach leaves nothing attached."""
    node = NAMES[0]
    lab.ssh(node, "sudo systemctl stop arp-sensor")
    assert attached(lab, node) == {"xdp_mode": None, "tc": {"ingress": 0, "egress": 0}}
    lab.ssh(node, "sudo systemctl start arp-sensor")
    pid = unit_prop(lab, node, "MainPID")["MainPID"]
    # SIGKILL and stop before systemd's restart: only ExecStopPost cleans up what the dead sensor left
    lab.ssh(node, f"sudo systemctl kill -s SIGKILL arp-sensor; sudo systemctl stop arp-sensor; echo {pid}")
    assert attached(lab, node) == {"xdp_mode": None, "tc": {"ingress": 0, "egress": 0}}
    lab.ssh(node, "sudo systemctl start arp-sensor")


def test_zombie_peers_named(lab):
    """`vagrant halt --force` two nodes: the node that is the active side for both names both zombie-peer."""
    since = node_time(lab, WATCHER)
    lab.vagrant("halt", "--force", *DEAD, timeout=300)

    def zombies():
        evs = sensor_events(lab, WATCHER, since)
        got = {e["destination"]["ip"] for e in evs if e["event"].get("action") == "zombie-peer-detected"}
        return got if set(DEAD_IPS) <= got else None
    wait_for(f"zombie-peer for {DEAD_IPS} on {WATCHER}", zombies, 240)
    print(f" {WATCHER} names {DEAD_IPS}", end="")


def _arp_on_lab_bridge(lab: VmLab, seconds: int, sender: str, targets: list[str]) -> dict[str, int]:
    br = lab.bridge("arp-sensor-lab")
    out = lab.in_ns("timeout", str(seconds), "tcpdump", "-l", "-n", "-i", br, "arp", "and", "src", "host", sender,
                    check=False, timeout=seconds + 30).stdout
    return {t: len(re.findall(rf"Request who-has {re.escape(t)} ", out)) for t in targets}


def test_rate_limit_enforce_cuts_dead_peer_arp(lab):
    """--rate-limit enforce on the watcher: its ARP for the dead peers, seen on the lab bridge, drops."""
    sender = IPS[NAMES.index(WATCHER)]
    before = _arp_on_lab_bridge(lab, 40, sender, DEAD_IPS)
    assert all(n >= 3 for n in before.values()), before  # BIRD keeps reconnecting: ARP for both
    lab.ssh(WATCHER, "sudo sed -i 's|^ARP_SENSOR_OPTS=.*|& --rate-limit enforce|' /etc/default/arp-sensor && "
                     "sudo systemctl restart arp-sensor")
    since = node_time(lab, WATCHER)

    def applied():
        evs = sensor_events(lab, WATCHER, since)
        got = {e["destination"]["ip"] for e in evs if e["event"].get("action") == "ratelimit-applied"}
        return set(DEAD_IPS) <= got
    wait_for("ratelimit-applied for both", applied, 120)
    after = _arp_on_lab_bridge(lab, 40, sender, DEAD_IPS)
    # 0.02/s with a burst of 1: at most 2 requests per target in 40 s
    assert all(n <= 2 for n in after.values()), (before, after)
    print(f" ARP in 40 s before {before}, with enforce {after}", end="")


def test_revived_nodes_clear_the_alerts(lab):
    since = node_time(lab, WATCHER)
    lab.vagrant("up", *DEAD, timeout=1800)

    def cleared():
        evs = sensor_events(lab, WATCHER, since)
        got = {e["destination"]["ip"] for e in evs if e["event"].get("action") == "zombie-peer-cleared"}
        return set(DEAD_IPS) <= got
    wait_for("zombie-peer-cleared for both", cleared, 300)
    wait_for("mesh Established again", lambda: set(mesh_states(lab, WATCHER).values()) == {"Established"}, 180)


def test_xdp_native_on_virtio_net(lab):
    """--xdp-mode native: driver-mode XDP on virtio-net, exact counts, and doctor reports the mode."""
    node = NAMES[-1]
    lab.ssh(node, "sudo sed -i 's|^ARP_SENSOR_OPTS=.*|ARP_SENSOR_OPTS=--bird-socket /var/run/calico/bird.ctl "
                  f"-o - -o file:{LOG} --xdp-mode native --attach xdp|' /etc/default/arp-sensor && "
                  "sudo systemctl restart arp-sensor")
    assert lab.ssh(node, "readlink /sys/class/net/eth1/device/driver").stdout.strip().endswith("virtio_net")
    assert attached(lab, node)["xdp_mode"] == 1  # XDP_ATTACHED_DRV
    assert_counts_exactly(lab, node, NAMES[0], "198.18.0.97", 7)
    r = lab.ssh(node, "sudo ARP_SENSOR_CONFIG=/etc/arp-sensor/config.toml arp-sensor doctor --json", check=False,
                timeout=900)  # doctor compiles its probe program: a minute or more under TCG
    c = {x["name"]: x for x in map(json.loads, r.stdout.splitlines())}
    assert "arp-sensor XDP in driver (native) mode" in c["attached-eth1"]["detail"], c.get("attached-eth1")


def test_destroy_leaves_nothing(lab):
    lab.vagrant("destroy", "-f", timeout=600)
    assert lab.domains() == []
    assert lab.networks() == []
    vols = [v for v in lab.volumes() if "vagrant_box_image" not in v]  # the box's base image is the cache
    assert vols == [], vols
    assert lab.qemu_pids() == []
