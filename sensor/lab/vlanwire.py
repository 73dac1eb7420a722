"""802.1Q on the lab's wire without the kernel's 8021q module (CONFIG_VLAN_8021Q is often missing in VMs).

Two tiny tc programs on a node's eth0, loaded with bpf(2) through sensor.kernel.bpfsys (no bcc, no compiler):
- egress, first in the chain: bpf_skb_vlan_push(skb, 802.1Q, VID); with tx VLAN offload switched off on
  eth0 the kernel then writes the tag into the frame, so the bridge, tcpdump and the other nodes' XDP see
  tagged frames on the wire, as from a host whose address sits on eth0.<VID>;
- ingress, last in the chain: bpf_skb_vlan_pop(skb), so the node's stack (which has no VLAN device)
  accepts the frame. Both return TC_ACT_UNSPEC, so any other tc filter (the sensor's) still runs.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess

from pyroute2 import IPRoute

from sensor.errors import EXIT_ENV, SensorError
from sensor.kernel import bpfsys

BPF_PROG_TYPE_SCHED_CLS = 3
FUNC_SKB_VLAN_PUSH = 18
FUNC_SKB_VLAN_POP = 19
TC_ACT_UNSPEC = -1
PUSH_PRIO = 1  # before anything else on egress: others see the frame as a VLAN host would send it
POP_PRIO = 65000  # after anything else on ingress: others see the tag as received

def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def program(push_vid: int | None) -> bytes:
    """push_vid: tag egress frames with this VID; None: pop the tag on ingress. r1 (the skb) is the ctx."""
    mov64_imm, call, exit_ = 0xB7, 0x85, 0x95
    if push_vid is not None:
        body = [
            _insn(mov64_imm, dst=2, imm=socket.htons(0x8100)),  # __be16 vlan_proto
            _insn(mov64_imm, dst=3, imm=push_vid),  # vlan_tci: VID, priority 0
            _insn(call, imm=FUNC_SKB_VLAN_PUSH),
        ]
    else:
        body = [_insn(call, imm=FUNC_SKB_VLAN_POP)]
    return b"".join([*body, _insn(mov64_imm, dst=0, imm=TC_ACT_UNSPEC), _insn(exit_)])


def load(push_vid: int | None) -> int:
    """BPF_PROG_LOAD a SCHED_CLS program; returns its fd."""
    name = b"lab_vlan_push" if push_vid is not None else b"lab_vlan_pop"
    try:
        return bpfsys.prog_load(BPF_PROG_TYPE_SCHED_CLS, program(push_vid), name)
    except bpfsys.BpfError as e:
        raise SensorError(f"lab: --vlan: loading the tagging program failed: {e.strerror}", EXIT_ENV) from None


def tag_in_frame(netns: str, ifname: str) -> None:
    """tx VLAN offload off on `ifname`: the tag is written into the frame instead of riding in skb
    metadata. Needed on the nodes' eth0 and on the bridge's ports (the bridge strips the tag into
    metadata on receive), so that a node's XDP program sees the tag in the frame, as on a trunk port."""
    r = subprocess.run(
        ["ip", "netns", "exec", netns, "ethtool", "-K", ifname, "txvlan", "off"], capture_output=True, text=True
    )
    if r.returncode != 0:
        raise SensorError(f"lab: --vlan: ethtool -K {ifname} txvlan off failed: {r.stderr.strip()}", EXIT_ENV)


def attach(ipr: IPRoute, ifindex: int, vid: int, netns: str, ifname: str = "eth0") -> None:
    """Tag on egress / untag on ingress on `ifindex` (an IPRoute bound to the node's namespace)."""
    tag_in_frame(netns, ifname)
    ipr.tc("add", "clsact", index=ifindex)
    for push_vid, parent, prio in ((vid, "ffff:fff3", PUSH_PRIO), (None, "ffff:fff2", POP_PRIO)):
        fd = load(push_vid)
        try:
            ipr.tc(
                "add-filter",
                "bpf",
                index=ifindex,
                handle=1,
                fd=fd,
                name="lab_vlan_push" if push_vid is not None else "lab_vlan_pop",
                parent=parent,
                prio=prio,
                direct_action=True,
            )
        finally:
            os.close(fd)  # tc holds its own reference
