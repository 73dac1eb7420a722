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

IPv6 neighbour discovery (RFC 4861), after the same tag walk (steps 1-2; the VLAN rules are shared):
11. Ethertype IPv6 (0x86DD) with fewer than 40 bytes of IPv6 header counts nothing (it cannot be known
    to be ND).
12. Next header 58 (ICMPv6) goes to step 13. A next header that is an IPv6 extension header (0, 43, 44,
    50, 51, 60, 135, 139, 140, 253, 254) counts `nd_ext_hdr` and nothing else: the chain is NOT walked,
    so an ND message behind an extension header is never counted as one (it is only made visible).
    Any other next header counts nothing.
13. No ICMPv6 type byte, or a type other than 135 (NS) or 136 (NA): nothing.
14. Every frame reaching here counts `nd`. Fewer than 24 bytes of ICMPv6 message (type, code, checksum,
    flags/reserved, target), an IPv6 version other than 6, ICMPv6 code != 0 or IPv6 hop limit != 255
    counts `nd_malformed` and nothing else (RFC 4861 7.1.1/7.1.2). Bytes after the 24 are only read
    for the first option (step 16); the IPv6 payload length and the checksum are not checked.
15. The key's address is always the target from the message body, never the IPv6 destination:
    - NS with IPv6 source `::` (duplicate address detection): `nd_dad`, no asker.
    - other NS: `nd_solicit`, plus one (IPv6 source, target) pair.
    - NA with the S (solicited) flag: `nd_advert_solicited`; without it: `nd_advert_unsolicited`.
16. The key's MAC: when the FIRST option right after the 24 bytes is the source link-layer address
    option (type 1, NS) or target link-layer address option (type 2, NA) of length 1 (8 bytes, all in
    the frame), its address; else the Ethernet source. Flag KEY_F_MAC_MISMATCH when that option is
    present and differs from the Ethernet source. Later options are not walked.
Exactly one of nd_malformed / nd_dad / nd_solicit / nd_advert_solicited / nd_advert_unsolicited per
frame that counts `nd`.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

ETH_HLEN = 14
ETH_P_ARP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0806, 0x86DD, 0x8100, 0x88A8
VLAN_MAX_DEPTH = 2
ARP_LEN = 28
IPV6_LEN = 40
ND_LEN = 24  # ICMPv6 type, code, checksum, flags/reserved, target
ICMPV6 = 58
ND_NS, ND_NA = 135, 136
NA_FLAG_SOLICITED = 0x40
# IANA "IPv6 Extension Header Types" (RFC 8200 section 4 and later): next headers the kernel does not walk.
IPV6_EXT_HEADERS = frozenset({0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254})
KEY_F_MAC_MISMATCH = 1  # bpf/arp_sensor.h (tests/kernel/test_fuzz_bpf.py checks the two agree)

# Per-target counter each kind bumps (target_val member), for the kinds that have a target.
TARGET_FIELD = {"request": "requests", "reply": "replies", "gratuitous": "gratuitous", "probe": "probes",
                "ns": "solicitations", "ns_dad": "dad", "na_solicited": "advertisements_solicited",
                "na_unsolicited": "advertisements_unsolicited"}
ND_KINDS = ("ns", "na_solicited", "na_unsolicited", "ns_dad")  # ND_KIND_* in bpf/arp_sensor.h, in order


@dataclass(frozen=True)
class Verdict:
    """What one frame does to the counters."""

    health: tuple[str, ...] = ()  # health counters bumped by one each (besides the *inserts)
    kind: str | None = None  # request | reply | gratuitous | probe | ns | ns_dad | na_*, when counted
    ip: str | None = None  # the target map key's IP (dotted quad, or RFC 5952 for ND)
    vlan: int = 0
    pair: tuple[str, str] | None = None  # (sender, target) for ARP requests and ND solicitations
    mac: str | None = None  # the key's MAC ("aa:bb:cc:dd:ee:ff"), when a target is counted: ARP sha, ND option
    flags: int = 0  # the key's KEY_F_* bits

    @property
    def family(self) -> int:
        return 6 if self.kind in ND_KINDS else 4

    @property
    def entry(self) -> tuple[str, str, int, str, str, int] | None:
        """The map entry the frame is counted in: (ip, peer, vlan, kind, mac, flags)."""
        if self.kind is None:
            return None
        none = "::" if self.family == 6 else "0.0.0.0"
        return (self.ip, self.pair[0] if self.pair else none, self.vlan, self.kind, self.mac, self.flags)

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
            return _classify_nd(frame, pos, vlan) if proto == ETH_P_IPV6 else NOTHING
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
            return _classify_nd(frame, pos, vlan) if proto == ETH_P_IPV6 else NOTHING
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


def _classify_nd(frame: bytes, pos: int, vlan: int) -> Verdict:
    """Steps 11-16: the IPv6 header starts at pos."""
    ip6 = frame[pos:pos + IPV6_LEN]
    if len(ip6) < IPV6_LEN:
        return NOTHING
    if ip6[6] != ICMPV6:
        return Verdict(("nd_ext_hdr",), vlan=vlan) if ip6[6] in IPV6_EXT_HEADERS else NOTHING
    icmp = frame[pos + IPV6_LEN:pos + IPV6_LEN + ND_LEN]
    if not icmp or icmp[0] not in (ND_NS, ND_NA):
        return NOTHING
    if len(icmp) < ND_LEN or ip6[0] >> 4 != 6 or icmp[1] != 0 or ip6[7] != 255:
        return Verdict(("nd", "nd_malformed"), vlan=vlan)
    ns = icmp[0] == ND_NS
    eth_src = frame[6:12]
    opt = frame[pos + IPV6_LEN + ND_LEN:pos + IPV6_LEN + ND_LEN + 8]
    if len(opt) == 8 and opt[0] == (1 if ns else 2) and opt[1] == 1:
        key = {"mac": opt[2:8].hex(":"), "flags": KEY_F_MAC_MISMATCH if opt[2:8] != eth_src else 0}
    else:
        key = {"mac": eth_src.hex(":"), "flags": 0}
    ntop = _ntop6
    target = ntop(icmp[8:24])
    src = ip6[8:24]
    if ns and src == bytes(16):
        return Verdict(("nd", "nd_dad"), "ns_dad", target, vlan, **key)
    if ns:
        return Verdict(("nd", "nd_solicit"), "ns", target, vlan, (ntop(src), target), **key)
    if icmp[4] & NA_FLAG_SOLICITED:
        return Verdict(("nd", "nd_advert_solicited"), "na_solicited", target, vlan, **key)
    return Verdict(("nd", "nd_advert_unsolicited"), "na_unsolicited", target, vlan, **key)


def _ntop6(addr: bytes) -> str:
    """RFC 5952 text (lower case, longest zero run compressed, never a single zero group)."""
    return socket.inet_ntop(socket.AF_INET6, addr)
