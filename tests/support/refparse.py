"""The reference parser: what the kernel program (bpf/arp_sensor.bpf.c) counts for one frame, in plain
Python. It is the specification of the classification (docs/reliability.md quotes it) and the oracle
that tests/test_fuzz_bpf.py holds the kernel to, frame by frame. Pure Python, no bcc.

The rules, in order:
1. A frame shorter than the 14-byte Ethernet header counts nothing (the kernel never runs a program
   on one; BPF_PROG_TEST_RUN refuses it with EINVAL).
2. Ethertype ARP (0x0806) goes to step 4. Ethertype 802.1Q (0x8100) or 802.1ad (0x88a8) starts a tag
   walk: at most two tags are skipped; the outermost tag's VID (low 12 bits of the TCI) is the key's
   `vlan` (on tc the kernel may have moved the outer tag to skb metadata: then that VID is used and
   the in-band tags are still walked). A frame that ends inside a tag counts `runt`; a third tag counts
   `vlan_too_deep`; either way nothing else is counted. Any other ethertype counts nothing.
3. After the tags, an ethertype other than ARP counts nothing.
4. Every frame reaching here counts `arp`. Fewer than 28 bytes of ARP header, or hrd != 1, pro !=
   0x0800, hln != 6, pln != 4, counts `malformed` and nothing else. Bytes after the 28 (padding up to
   the 60-byte minimum, or anything else) are ignored.
5. An operation other than 1 (request) or 2 (reply) counts `other_op`.
6. op 1 with sender IP 0.0.0.0: `probe`, keyed by the target IP.
7. sender IP == target IP (op 1 or 2): `gratuitous`, keyed by that IP.
8. op 1: `request`, keyed by the target IP, plus one (sender, target) pair.
9. op 2: `reply`, keyed by the sender IP (the address that answered).
Exactly one of malformed / other_op / probe / gratuitous / request / reply per ARP frame.
10. Every counted frame's key carries the ARP sender hardware address (sha, bytes 8-13 of the ARP
    header) as `mac`, and flag KEY_F_MAC_MISMATCH (1) when the Ethernet source (bytes 6-11 of the
    frame) differs from it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

ETH_HLEN = 14
ETH_P_ARP, ETH_P_8021Q, ETH_P_8021AD = 0x0806, 0x8100, 0x88A8
VLAN_MAX_DEPTH = 2
ARP_LEN = 28
KEY_F_MAC_MISMATCH = 1  # bpf/arp_sensor.h (tests/kernel/test_fuzz_bpf.py checks the two agree)

# Per-target counter each kind bumps (target_val member), for the kinds that have a target.
TARGET_FIELD = {"request": "requests", "reply": "replies", "gratuitous": "gratuitous", "probe": "probes"}


@dataclass(frozen=True)
class Verdict:
    """What one frame does to the counters."""

    health: tuple[str, ...] = ()  # health counters bumped by one each (besides the *_inserts)
    kind: str | None = None  # request | reply | gratuitous | probe, when a target is counted
    ip: str | None = None  # the target map key's IP (dotted quad)
    vlan: int = 0
    pair: tuple[str, str] | None = None  # (sender, target) for requests
    mac: str | None = None  # the key's MAC (ARP sha), "aa:bb:cc:dd:ee:ff", when a target is counted
    flags: int = 0  # the key's KEY_F_* bits

    @property
    def entry(self) -> tuple[str, str, int, str, str, int] | None:
        """The map entry the frame is counted in: (ip, peer, vlan, kind, mac, flags)."""
        if self.kind is None:
            return None
        return (self.ip, self.pair[0] if self.pair else "0.0.0.0", self.vlan, self.kind, self.mac, self.flags)

    @property
    def refused(self) -> bool:
        return self.health == ("refused",)


REFUSED = Verdict(("refused",))
NOTHING = Verdict()


def _is_vlan(proto: int) -> bool:
    return proto in (ETH_P_8021Q, ETH_P_8021AD)


def classify(frame: bytes, skb_vlan: int | None = None) -> Verdict:
    """The counters one frame moves. skb_vlan: the VID tc found in skb metadata, if any."""
    if len(frame) < ETH_HLEN:
        return REFUSED
    proto = int.from_bytes(frame[12:14], "big")
    pos = ETH_HLEN
    vlan = skb_vlan or 0
    have_vlan = skb_vlan is not None
    if proto != ETH_P_ARP:
        if not _is_vlan(proto):
            return NOTHING
        for _ in range(VLAN_MAX_DEPTH):
            if not _is_vlan(proto):
                break
            if pos + 4 > len(frame):
                return Verdict(("runt",))
            if not have_vlan:
                vlan = int.from_bytes(frame[pos:pos + 2], "big") & 0x0FFF
                have_vlan = True
            proto = int.from_bytes(frame[pos + 2:pos + 4], "big")
            pos += 4
        else:
            if _is_vlan(proto):
                return Verdict(("vlan_too_deep",))
        if proto != ETH_P_ARP:
            return NOTHING
    arp = frame[pos:pos + ARP_LEN]
    if (len(arp) < ARP_LEN or arp[0:2] != b"\x00\x01" or arp[2:4] != b"\x08\x00" or arp[4] != 6
            or arp[5] != 4):
        return Verdict(("arp", "malformed"), vlan=vlan)
    op = int.from_bytes(arp[6:8], "big")
    spa, tpa = arp[14:18], arp[24:28]
    if op not in (1, 2):
        return Verdict(("arp", "other_op"), vlan=vlan)
    ntoa = socket.inet_ntoa
    sha = arp[8:14]
    key = {"mac": sha.hex(":"), "flags": KEY_F_MAC_MISMATCH if frame[6:12] != sha else 0}
    if op == 1 and spa == b"\0\0\0\0":
        return Verdict(("arp", "probe"), "probe", ntoa(tpa), vlan, **key)
    if spa == tpa:
        return Verdict(("arp", "gratuitous"), "gratuitous", ntoa(spa), vlan, **key)
    if op == 1:
        return Verdict(("arp", "request"), "request", ntoa(tpa), vlan, (ntoa(spa), ntoa(tpa)), **key)
    return Verdict(("arp", "reply"), "reply", ntoa(spa), vlan, **key)
