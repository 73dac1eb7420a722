"""`arp-sensor run` on a veth between two namespaces: exact counts, egress, and attach safety."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import defaultdict

import pytest

from tests.support import frames as F
from tests.support.fixtures_netns import attached_programs, ns_exec, sensor_cmd, sensor_env

VLAN, QINQ = F.ETH_P_8021Q, F.ETH_P_8021AD


def summed_requests(events) -> dict:
    """ARP requests per (direction, target, VLAN); IPv6 targets (nd.*) are summed_solicitations' business."""
    got: dict = defaultdict(int)
    for e in events:
        if "arp" not in e:
            continue
        vlan = int(e.get("network", {}).get("vlan", {}).get("id", 0))
        got[(e["network"]["direction"], e["destination"]["ip"], vlan)] += e["arp"]["requests"]
    return {k: v for k, v in got.items() if v}  # probe-only targets are events with 0 requests


def assert_nothing_attached(ns: str, ifname: str) -> None:
    assert attached_programs(ns, ifname) == {"xdp": [], "ingress": [], "egress": []}


@pytest.mark.parametrize("attach", ["both", "xdp", "tc"])
def test_counts_exactly_what_was_sent(veth_pair, sensor, attach):
    s = sensor(veth_pair.b, ["-i", veth_pair.b_if, "--attach", attach, "--interval", "0.5",
                             "--min-requests", "1", "--top", "0"])
    sent = {
        ("ingress", "198.18.0.7", 0): 10,
        ("ingress", "198.18.0.8", 100): 7,
        ("ingress", "198.18.0.9", 200): 4,  # QinQ: keyed by the outer tag
        ("ingress", "198.18.0.10", 0): 1,
    }
    burst = ([F.arp_request("198.18.0.1", "198.18.0.7")] * 10
             + [F.arp_request("198.18.0.1", "198.18.0.8", vlans=[(VLAN, 100)])] * 7
             + [F.arp_request("198.18.0.3", "198.18.0.9", vlans=[(QINQ, 200), (VLAN, 5)])] * 4
             + [F.arp_request("198.18.0.1", "198.18.0.10")]
             + [F.arp_reply("198.18.0.7", "198.18.0.1"), F.arp_probe("198.18.0.11"), F.ipv4_udp()] * 3)
    veth_pair.send_frames(burst)
    assert s.finish() == 0, s.stderr
    got = {k: v for k, v in summed_requests(s.events("arp_sensor.target")).items() if k[0] == "ingress"}
    assert got == sent
    health = s.events("arp_sensor.health")
    assert sum(e["arp_sensor"]["health"].get("request", 0) for e in health) >= sum(sent.values())
    assert_nothing_attached(veth_pair.b, veth_pair.b_if)


def test_egress_counts_this_hosts_own_requests(veth_pair, sensor):
    s = sensor(veth_pair.b, ["-i", veth_pair.b_if, "--interval", "0.5", "--top", "0"])
    # Frames this namespace sends go through tc egress, as the kernel's own ARP does.
    veth_pair.send_frames([F.arp_request("198.18.0.2", "198.18.0.50")] * 6, ns=veth_pair.b)
    # And the kernel's resolver for a neighbour that never answers.
    ns_exec(veth_pair.b, sys.executable, "-c", "import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
            "s.sendto(b'x', ('198.18.0.51', 9)); time.sleep(0.3)")
    assert s.finish() == 0, s.stderr
    got = summed_requests(s.events("arp_sensor.target"))
    assert got[("egress", "198.18.0.50", 0)] == 6
    assert got[("egress", "198.18.0.51", 0)] >= 1
    # What the peer namespace saw of it is not counted on our ingress: nothing is counted twice.
    assert ("ingress", "198.18.0.50", 0) not in got
    ev = next(e for e in s.events("arp_sensor.target") if e["destination"]["ip"] == "198.18.0.50")
    assert ev["observer"]["egress"]["interface"]["name"] == veth_pair.b_if
    assert ev["arp"]["top_senders"][0]["ip"] == "198.18.0.2"
    assert_nothing_attached(veth_pair.b, veth_pair.b_if)


def test_duration_and_sigterm_detach_everything(veth_pair, sensor):
    s = sensor(veth_pair.b, ["-i", veth_pair.b_if, "--interval", "0.2", "--attach", "tc"])
    progs = attached_programs(veth_pair.b, veth_pair.b_if)
    assert len(progs["ingress"]) == 4 and len(progs["egress"]) == 4  # ARP, 802.1Q, 802.1ad, IPv6
    s.proc.send_signal(signal.SIGINT)
    assert s.finish() == 0
    assert_nothing_attached(veth_pair.b, veth_pair.b_if)


def _attach_foreign_xdp(ns: str, ifname: str, name: str = "foreign_xdp") -> int:
    """A program attached through netlink by a process that then exits (it stays attached)."""
    code = ("from sensor.kernel.loader import bpf_class; BPF = bpf_class()\n"
            f"b=BPF(text=b'int {name}(struct xdp_md *c){{return XDP_PASS;}}')\n"
            f"BPF.attach_xdp(b'{ifname}', b.load_func(b'{name}', BPF.XDP), 2)\n")
    ns_exec(ns, "/usr/bin/python3", "-c", code)
    [prog_id] = attached_programs(ns, ifname)["xdp"]
    return prog_id


def test_refuses_to_replace_a_foreign_xdp_program(veth_pair, sensor):
    prog_id = _attach_foreign_xdp(veth_pair.b, veth_pair.b_if)
    s = sensor(veth_pair.b, ["-i", veth_pair.b_if, "--duration", "5"], wait=False)
    rc = s.finish()
    assert rc == 4
    assert s.stderr.strip().count("\n") == 0 and "XDP program is already attached" in s.stderr
    assert "Traceback" not in s.stderr
    assert attached_programs(veth_pair.b, veth_pair.b_if)["xdp"] == [prog_id]
    # --attach tc coexists with it and leaves it alone.
    s = sensor(veth_pair.b, ["-i", veth_pair.b_if, "--attach", "tc", "--duration", "1"])
    assert s.finish() == 0
    assert attached_programs(veth_pair.b, veth_pair.b_if) == {"xdp": [prog_id], "ingress": [], "egress": []}


def test_foreign_tc_filters_are_untouched(veth_pair, sensor):
    ns, dev = veth_pair.b, veth_pair.b_if
    ns_exec(ns, "tc", "qdisc", "add", "dev", dev, "clsact")
    # u32 is the classifier this kernel has without modules (no act_gact, no matchall).
    ns_exec(ns, "tc", "filter", "add", "dev", dev, "ingress", "prio", "10", "protocol", "arp", "u32",
            "match", "u32", "0", "0")
    ns_exec(ns, "tc", "filter", "add", "dev", dev, "egress", "prio", "20", "protocol", "all", "u32",
            "match", "u32", "0", "0")
    before = attached_programs(ns, dev)
    s = sensor(ns, ["-i", dev, "--attach", "tc", "--interval", "0.3"])
    during = attached_programs(ns, dev)
    assert all(f in during["ingress"] for f in before["ingress"])
    assert all(f in during["egress"] for f in before["egress"])
    veth_pair.send_frames([F.arp_request("198.18.0.1", "198.18.0.7")] * 5)
    assert s.finish() == 0
    # Our filter ran after the foreign one at a lower prio number: TC_ACT_UNSPEC kept the chain going.
    assert summed_requests(s.events("arp_sensor.target"))[("ingress", "198.18.0.7", 0)] == 5
    assert attached_programs(ns, dev) == before  # and the clsact qdisc, which was not ours, stays


def test_second_sensor_on_the_same_interface_refuses(veth_pair, sensor):
    first = sensor(veth_pair.b, ["-i", veth_pair.b_if])
    second = sensor(veth_pair.b, ["-i", veth_pair.b_if, "--duration", "5"], wait=False)
    assert second.finish() == 4
    assert "another arp-sensor" in second.stderr and "Traceback" not in second.stderr
    assert first.proc.poll() is None  # the first one goes on
    assert first.finish() == 0
    assert_nothing_attached(veth_pair.b, veth_pair.b_if)


def test_after_kill_9_the_next_run_cleans_up_and_detach_works(veth_pair, sensor):
    ns, dev = veth_pair.b, veth_pair.b_if
    crashed = sensor(ns, ["-i", dev])
    crashed.kill()  # SIGKILL: no chance to detach
    left = attached_programs(ns, dev)
    # The XDP link died with its process; the netlink tc filters stay.
    assert left["xdp"] == [] and len(left["egress"]) == 4
    s = sensor(ns, ["-i", dev, "--duration", "1"])
    progs = attached_programs(ns, dev)
    assert len(progs["xdp"]) == 1 and len(progs["egress"]) == 4  # replaced, not doubled
    assert s.finish() == 0
    assert "removed a stale arp-sensor tc filter" in s.stderr
    assert_nothing_attached(ns, dev)
    # `arp-sensor detach` after another crash.
    crashed = sensor(ns, ["-i", dev])
    crashed.kill()
    r = ns_exec(ns, *sensor_cmd("detach", "-i", dev), env=sensor_env())
    assert "removed arp-sensor tc filter" in r.stdout
    assert_nothing_attached(ns, dev)


def test_a_netlink_attached_arp_sensor_xdp_program_is_recognised_as_stale(veth_pair, sensor):
    """What a version before XDP links (or a kernel < 5.9) leaves after a crash: our program name,
    attached through netlink. As root (CAP_SYS_ADMIN reads the name) the next run replaces it, and
    `detach` removes it."""
    ns, dev = veth_pair.b, veth_pair.b_if
    stale = _attach_foreign_xdp(ns, dev, name="arpsensor_xdp")
    s = sensor(ns, ["-i", dev, "--duration", "1"])
    assert attached_programs(ns, dev)["xdp"] not in ([], [stale])
    assert s.finish() == 0
    assert f"removed a stale arp-sensor XDP program (id {stale})" in s.stderr
    assert_nothing_attached(ns, dev)
    stale = _attach_foreign_xdp(ns, dev, name="arpsensor_xdp")
    r = ns_exec(ns, *sensor_cmd("detach", "-i", dev), env=sensor_env())
    assert f"removed arp-sensor XDP program (id {stale})" in r.stdout
    assert_nothing_attached(ns, dev)


def test_interface_deleted_while_running(veth_pair, sensor):
    s = sensor(veth_pair.b, ["-i", veth_pair.b_if, "--interval", "0.2"])
    ns_exec(veth_pair.b, "ip", "link", "del", veth_pair.b_if)
    try:
        rc = s.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("sensor kept running with no interface left")
    s.finish()
    assert rc == 1
    assert "Traceback" not in s.stderr and "no interface left" in s.stderr
    gone = [e for e in s.events("arp_sensor.health") if e["event"].get("action") == "interface-gone"]
    assert len(gone) == 1 and veth_pair.b_if in gone[0]["message"]


def summed_solicitations(events) -> dict:
    got: dict = defaultdict(int)
    for e in events:
        if e["network"].get("type") != "ipv6":
            continue
        vlan = int(e.get("network", {}).get("vlan", {}).get("id", 0))
        got[(e["network"]["direction"], e["destination"]["ip"], vlan)] += e["nd"]["solicitations"]
    return {k: v for k, v in got.items() if v}


@pytest.mark.parametrize("attach", ["both", "tc"])
def test_counts_neighbour_solicitations_exactly(veth_pair, sensor, attach):
    """Known NS counts per IPv6 target (some tagged, one QinQ) are summed exactly in nd.solicitations;
    DAD, advertisements, NS behind an extension header or with a wrong hop limit, and other IPv6 are not
    solicitations. ARP beside them keeps arp.* with network.type ipv4."""
    s = sensor(veth_pair.b, ["-i", veth_pair.b_if, "--attach", attach, "--interval", "0.5",
                             "--min-requests", "1", "--top", "0"])
    asker = "2001:db8::1"
    sent = {
        ("ingress", "2001:db8::7", 0): 9,
        ("ingress", "2001:db8::8", 100): 6,
        ("ingress", "2001:db8::9", 200): 4,  # QinQ: keyed by the outer tag
        ("ingress", "2001:db8::a", 0): 1,
    }
    burst = ([F.neighbour_solicitation(asker, "2001:db8::7")] * 9
             + [F.neighbour_solicitation(asker, "2001:db8::8", vlans=[(VLAN, 100)])] * 6
             + [F.neighbour_solicitation("2001:db8::3", "2001:db8::9", vlans=[(QINQ, 200), (VLAN, 5)])] * 4
             + [F.neighbour_solicitation(asker, "2001:db8::a")]
             + [F.dad_probe("2001:db8::7"), F.neighbour_advertisement("2001:db8::7", solicited=True, dst=asker),
                F.neighbour_advertisement("2001:db8::8", vlans=[(VLAN, 100)]),
                F.neighbour_solicitation(asker, "2001:db8::7", hop_limit=64),
                F.neighbour_solicitation(asker, "2001:db8::7", ext=F.hop_by_hop()), F.icmpv6_echo(), F.ipv6_udp(),
                F.arp_request("198.18.0.1", "198.18.0.7")] * 2)
    veth_pair.send_frames(burst)
    assert s.finish() == 0, s.stderr
    targets = s.events("arp_sensor.target")
    got = {k: v for k, v in summed_solicitations(targets).items() if k[0] == "ingress"}
    assert got == sent
    by_ip = defaultdict(lambda: defaultdict(int))
    for e in targets:
        for k, v in e.get("nd", {}).items():
            if isinstance(v, int):
                by_ip[e["destination"]["ip"]][k] += v
    assert by_ip["2001:db8::7"]["dad"] == 2 and by_ip["2001:db8::7"]["advertisements"] == 2
    assert by_ip["2001:db8::8"]["unsolicited_advertisements"] == 2  # same (target, VLAN) as its solicitations
    arp = [e for e in targets if e["destination"]["ip"] == "198.18.0.7"]
    assert arp and all(e["network"]["type"] == "ipv4" and "arp" in e and "nd" not in e for e in arp)
    ns7 = next(e for e in targets if e["destination"]["ip"] == "2001:db8::7" and e["nd"]["solicitations"])
    assert ns7["nd"]["top_senders"][0] == {"ip": asker, "solicitations": ns7["nd"]["solicitations"]}
    health = s.events("arp_sensor.health")
    total = {k: sum(e["arp_sensor"]["health"].get(k, 0) for e in health) for k in ("nd_solicit", "nd_malformed",
                                                                                     "nd_ext_hdr")}
    assert total["nd_solicit"] >= sum(sent.values()) and total["nd_malformed"] >= 2 and total["nd_ext_hdr"] >= 2
    assert_nothing_attached(veth_pair.b, veth_pair.b_if)
