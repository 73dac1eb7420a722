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


# -- IPv6 neighbour discovery (RFC 4861) ------------------------------------------------------------------
ND_NS, ND_NA = 135, 136
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x80, 0x40, 0x20
ICMPV6 = 58


def ip6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def solicited_node(target: str) -> str:
    """ff02::1:ffXX:XXXX, the multicast group an NS for target goes to."""
    return socket.inet_ntop(socket.AF_INET6, ip6("ff02::1:ff00:0")[:13] + ip6(target)[13:])


def multicast_mac(group: str) -> bytes:
    return b"\x33\x33" + ip6(group)[12:]


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv6_packet(src: str, dst: str, next_header: int, payload: bytes, hop_limit: int = 255,
                ext: bytes = b"") -> bytes:
    """An IPv6 header plus payload. ext: one extension header to put in front, of type ext_type (its
    first byte, the next header, is set to next_header here)."""
    nh = next_header
    if ext:
        nh, ext = ext_type(ext), bytes([next_header]) + ext[1:]
    return struct.pack("!IHBB16s16s", 6 << 28, len(ext) + len(payload), nh, hop_limit, ip6(src),
                       ip6(dst)) + ext + payload


def ext_type(ext: bytes) -> int:
    """The header type our ext builders stash in the placeholder next-header byte."""
    return ext[0]


def hop_by_hop(type_: int = 0) -> bytes:
    """An 8-byte extension header (hop-by-hop, type 0, by default; PadN only). Its first byte holds
    its own type until ipv6_packet() puts the real next header there."""
    return bytes([type_, 0, 1, 4, 0, 0, 0, 0])


def icmpv6(src: str, dst: str, type_: int, code: int, body: bytes) -> bytes:
    """ICMPv6 message with its checksum over the IPv6 pseudo-header (RFC 4443 2.3)."""
    pseudo = ip6(src) + ip6(dst) + struct.pack("!IxxxB", 4 + len(body), ICMPV6)
    csum = _checksum(pseudo + struct.pack("!BBH", type_, code, 0) + body)
    return struct.pack("!BBH", type_, code, csum) + body


def nd_option(kind: int, lladdr: bytes) -> bytes:
    """Source (1) or target (2) link-layer address option: type, length 1 (8 bytes), the MAC."""
    return bytes([kind, 1]) + lladdr


def neighbour_solicitation(src: str, target: str, smac: bytes = b"\x02\x00\x00\x00\x06\x01",
                           vlans: Sequence[tuple[int, int]] = (), dst: str | None = None,
                           hop_limit: int = 255, code: int = 0, lladdr: bytes | None = None,
                           ext: bytes = b"") -> bytes:
    """Who has target? As the kernel sends it: to the solicited-node group, with the source link-layer
    option (omitted for DAD: src "::"). lladdr: the option's MAC when it should differ from smac."""
    dst = dst or solicited_node(target)
    opts = b"" if src == "::" else nd_option(1, lladdr or smac)
    body = b"\0" * 4 + ip6(target) + opts
    packet = ipv6_packet(src, dst, ICMPV6, icmpv6(src, dst, ND_NS, code, body), hop_limit, ext)
    return ethernet(multicast_mac(dst), smac, ETH_P_IPV6, packet, vlans)


def dad_probe(target: str, smac: bytes = b"\x02\x00\x00\x00\x06\x02",
              vlans: Sequence[tuple[int, int]] = ()) -> bytes:
    """Duplicate address detection (RFC 4862): an NS from :: for a tentative address."""
    return neighbour_solicitation("::", target, smac, vlans)


def neighbour_advertisement(target: str, dst: str = "ff02::1", smac: bytes = b"\x02\x00\x00\x00\x06\x03",
                            solicited: bool = False, override: bool = True,
                            vlans: Sequence[tuple[int, int]] = (), src: str | None = None,
                            hop_limit: int = 255, lladdr: bytes | None = None) -> bytes:
    """target is at smac. Solicited: the answer to an NS (unicast to the asker); else an unsolicited
    announcement (to all nodes)."""
    src = src or target
    flags = (NA_SOLICITED if solicited else 0) | (NA_OVERRIDE if override else 0)
    body = bytes([flags, 0, 0, 0]) + ip6(target) + nd_option(2, lladdr or smac)
    packet = ipv6_packet(src, dst, ICMPV6, icmpv6(src, dst, ND_NA, 0, body), hop_limit)
    dmac = multicast_mac(dst) if ip6(dst)[0] == 0xFF else b"\x02\x00\x00\x00\x06\x01"
    return ethernet(dmac, smac, ETH_P_IPV6, packet, vlans)


def icmpv6_echo(src: str = "2001:db8::1", dst: str = "2001:db8::2",
                vlans: Sequence[tuple[int, int]] = ()) -> bytes:
    """An echo request: IPv6 and ICMPv6, but not ND."""
    packet = ipv6_packet(src, dst, ICMPV6, icmpv6(src, dst, 128, 0, b"\0\1\0\1" + b"\0" * 8), 64)
    return ethernet(b"\x02\x00\x00\x00\x06\x04", b"\x02\x00\x00\x00\x06\x01", ETH_P_IPV6, packet, vlans)
