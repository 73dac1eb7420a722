"""Builds Ethernet/VLAN/ARP frames byte by byte: for the tests, the benchmarks and the lab's traffic
generators. Pure Python."""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence

BROADCAST = b"\xff" * 6
ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0806, 0x0800, 0x86DD, 0x8100, 0x88A8
ARP_REQUEST, ARP_REPLY = 1, 2


def mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def ip4(text: str) -> bytes:
    return socket.inet_aton(text)


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes,
             vlans: Sequence[tuple[int, int]] = (), pad_to: int = 0) -> bytes:
    """vlans: outermost first, each (tpid, vid). pad_to: zero-pad to that length (60 = minimum frame
    without FCS, as NICs and veth deliver short frames)."""
    frame = dst + src
    for tpid, vid in vlans:
        frame += struct.pack("!HH", tpid, vid & 0x0FFF)
    frame += struct.pack("!H", ethertype) + payload
    return frame.ljust(pad_to, b"\0")


def arp_payload(op: int, sha: bytes, spa: str, tha: bytes, tpa: str, hrd: int = 1, pro: int = ETH_P_IP,
                hln: int = 6, pln: int = 4) -> bytes:
    return struct.pack("!HHBBH", hrd, pro, hln, pln, op) + sha + ip4(spa) + tha + ip4(tpa)


def arp_request(spa: str, tpa: str, sha: bytes = b"\x02\x00\x00\x00\x00\x01",
                vlans: Sequence[tuple[int, int]] = (), pad_to: int = 60) -> bytes:
    """Who has tpa? Tell spa. Broadcast, as the kernel sends it for an unresolved neighbour."""
    return ethernet(BROADCAST, sha, ETH_P_ARP, arp_payload(ARP_REQUEST, sha, spa, b"\0" * 6, tpa), vlans, pad_to)


def arp_reply(spa: str, tpa: str, sha: bytes = b"\x02\x00\x00\x00\x00\x02", tha: bytes = b"\x02\x00\x00\x00\x00\x01",
              vlans: Sequence[tuple[int, int]] = (), pad_to: int = 60) -> bytes:
    """spa is at sha: the answer to a request from tpa."""
    return ethernet(tha, sha, ETH_P_ARP, arp_payload(ARP_REPLY, sha, spa, tha, tpa), vlans, pad_to)


def arp_gratuitous(ip: str, sha: bytes = b"\x02\x00\x00\x00\x00\x03", op: int = ARP_REQUEST) -> bytes:
    return ethernet(BROADCAST, sha, ETH_P_ARP, arp_payload(op, sha, ip, BROADCAST if op == ARP_REPLY else b"\0" * 6,
                                                           ip), pad_to=60)


def arp_probe(tpa: str, sha: bytes = b"\x02\x00\x00\x00\x00\x04") -> bytes:
    """RFC 5227 address probe: sender IP 0.0.0.0."""
    return ethernet(BROADCAST, sha, ETH_P_ARP, arp_payload(ARP_REQUEST, sha, "0.0.0.0", b"\0" * 6, tpa), pad_to=60)


def ipv4_udp(src: str = "198.18.0.1", dst: str = "198.18.0.2", sport: int = 9, dport: int = 9,
             payload: bytes = b"\0" * 18) -> bytes:
    """A minimal IPv4/UDP frame (checksums zero: nothing parses them on our path)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, ip4(src), ip4(dst)) + udp
    return ethernet(b"\x02\x00\x00\x00\x00\x02", b"\x02\x00\x00\x00\x00\x01", ETH_P_IP, ip, pad_to=60)


def ipv6_udp(src: str = "2001:db8::1", dst: str = "2001:db8::2") -> bytes:
    udp = struct.pack("!HHHH", 9, 9, 8, 0)
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, socket.inet_pton(socket.AF_INET6, src),
                     socket.inet_pton(socket.AF_INET6, dst)) + udp
    return ethernet(b"\x33\x33\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x01", ETH_P_IPV6, ip, pad_to=60)
