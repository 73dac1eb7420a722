"""Read the IPv4 neighbour table over rtnetlink: the table's limits and statistics (RTM_GETNEIGHTBL, what
`ip -s ntable show` prints) and every entry's state (RTM_GETNEIGH, what `ip neigh` prints).

A small dump client with `struct` rather than pyroute2's message classes: pyroute2 0.7 does not parse
`ndts_table_fulls`, and a Calico node can hold thousands of entries read every interval (parsing only
ifindex, state and the address keeps that cheap).

Scope, as the kernel has it (checked on 6.18): `arp_tbl` is ONE table for the whole machine. Its limits
(gc_thresh1/2/3, sysctls that exist only in the initial namespace), its entry count and its statistics are
global whatever namespace asks; the entries dump lists only the asking namespace's entries. So
`TableStats` is the machine, `Entry` rows are this namespace.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from sensor.errors import EXIT_ENV, SensorError

RTM_GETNEIGH = 30
RTM_GETNEIGHTBL = 66
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NDA_DST = 1
NDA_IFINDEX = 8
NDTA_NAME, NDTA_THRESH1, NDTA_THRESH2, NDTA_THRESH3, NDTA_CONFIG, NDTA_STATS = 1, 2, 3, 4, 5, 7

_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_DST_HDR = struct.pack("=HH", 8, 1)  # nlattr {len 8, NDA_DST} of an IPv4 address
_NDT_CONFIG = struct.Struct("=HHIIIIIII")
STAT_NAMES = ("allocs", "destroys", "hash_grows", "res_failed", "lookups", "hits", "rcv_probes_mcast",
              "rcv_probes_ucast", "periodic_gc_runs", "forced_gc_runs", "table_fulls")

# NUD_* bits -> the names `ip neigh` prints (lower case)
STATES = {0x01: "incomplete", 0x02: "reachable", 0x04: "stale", 0x08: "delay", 0x10: "probe",
          0x20: "failed", 0x40: "noarp", 0x80: "permanent"}
STATE_NAMES = ("incomplete", "reachable", "stale", "delay", "probe", "failed", "noarp", "permanent", "none",
               "other")
PROC_STAT = "/proc/net/stat/arp_cache"  # exists in the initial namespace only


def state_name(nud: int) -> str:
    return STATES.get(nud, "none" if nud == 0 else "other")


@dataclass(slots=True)
class TableStats:
    """The machine's ARP table (`ip -s ntable show name arp_cache`); counters are cumulative."""

    entries: int
    gc_thresh1: int
    gc_thresh2: int
    gc_thresh3: int
    stats: dict[str, int] = field(default_factory=dict)  # STAT_NAMES (+ unresolved_discards when readable)

    @property
    def fill(self) -> float:
        """entries / gc_thresh3: past 1.0 the kernel refuses new entries ("neighbour table overflow").
        An upper bound: PERMANENT and NOARP entries count in `entries` but are exempt from the limit."""
        return self.entries / self.gc_thresh3 if self.gc_thresh3 > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Entry:
    ifindex: int
    ip: str
    state: str


def _attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while off + 4 <= end:
        ln, typ = _NLA.unpack_from(buf, off)
        if ln < 4:
            break
        out[typ & 0x3FFF] = buf[off + 4: off + ln]
        off += (ln + 3) & ~3
    return out


class NeighReader:
    """One NETLINK_ROUTE socket, reused each interval; `close()` when done."""

    def __init__(self) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      socket.NETLINK_ROUTE)
            self.sock.bind((0, 0))
        except OSError as e:
            raise SensorError(f"cannot open a netlink socket for the neighbour table: {e.strerror or e}",
                              EXIT_ENV) from None
        self.sock.settimeout(2.0)
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def _dump(self, msg_type: int, body: bytes) -> list[bytes]:
        """One dump request; returns each reply message's payload (after the nlmsghdr)."""
        self.seq += 1
        seq = self.seq
        self.sock.send(_NLMSG.pack(_NLMSG.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        out: list[bytes] = []
        while True:
            buf = self.sock.recv(1 << 16)
            off = 0
            while off + _NLMSG.size <= len(buf):
                ln, typ, _flags, mseq, _pid = _NLMSG.unpack_from(buf, off)
                if ln < _NLMSG.size:
                    return out
                if mseq == seq:
                    if typ == NLMSG_DONE:
                        return out
                    if typ == NLMSG_ERROR:
                        err = -struct.unpack_from("=i", buf, off + _NLMSG.size)[0]
                        if err:
                            raise OSError(err, os.strerror(err))
                        return out
                    out.append(buf[off + _NLMSG.size: off + ln])
                off += (ln + 3) & ~3

    def table(self) -> TableStats:
        """The `arp_cache` table's limits and statistics (global to the machine)."""
        for payload in self._dump(RTM_GETNEIGHTBL, struct.pack("=Bxxx", socket.AF_INET)):
            a = _attrs(payload, 4, len(payload))
            if a.get(NDTA_NAME, b"").rstrip(b"\0") != b"arp_cache" or NDTA_CONFIG not in a:
                continue  # the per-device parameter messages carry no config
            cfg = _NDT_CONFIG.unpack_from(a[NDTA_CONFIG])
            raw = a.get(NDTA_STATS, b"")
            n = min(len(raw) // 8, len(STAT_NAMES))  # older kernels have no table_fulls
            stats = dict(zip(STAT_NAMES, struct.unpack_from(f"={n}Q", raw), strict=False))
            stats.update(read_proc_stat())
            return TableStats(entries=cfg[2], gc_thresh1=_u32(a.get(NDTA_THRESH1)),
                              gc_thresh2=_u32(a.get(NDTA_THRESH2)), gc_thresh3=_u32(a.get(NDTA_THRESH3)),
                              stats=stats)
        raise SensorError("the kernel reported no arp_cache neighbour table", EXIT_ENV)

    def entries(self, ifindexes: Iterable[int] | None = None) -> list[Entry]:
        """IPv4 neighbour entries of this network namespace; with `ifindexes`, only those interfaces'
        (the kernel filters the dump: a node's hundreds of pod interfaces are never parsed)."""
        out: list[Entry] = []
        for ifindex in (None,) if ifindexes is None else ifindexes:
            body = _NDMSG.pack(socket.AF_INET, 0, 0, 0, 0)
            if ifindex is not None:
                body += _NLA.pack(8, NDA_IFINDEX) + struct.pack("=I", ifindex)
            for payload in self._dump(RTM_GETNEIGH, body):
                _fam, ifx, nud, _flags, _type = _NDMSG.unpack_from(payload)
                if ifindex is not None and ifx != ifindex:
                    continue  # a kernel that ignores the filter
                # NDA_DST comes first in every kernel's fill_neigh(): read it in place, else look for it
                if payload[_NDMSG.size: _NDMSG.size + 4] == _DST_HDR:
                    dst = payload[_NDMSG.size + 4: _NDMSG.size + 8]
                else:
                    dst = _attrs(payload, _NDMSG.size, len(payload)).get(NDA_DST, b"")
                if len(dst) == 4:
                    out.append(Entry(ifx, socket.inet_ntoa(dst), STATES.get(nud, "none" if nud == 0 else "other")))
        return out


def _u32(b: bytes | None) -> int:
    return struct.unpack("=I", b[:4])[0] if b and len(b) >= 4 else 0


def read_proc_stat(path: str = PROC_STAT) -> dict[str, int]:
    """`unresolved_discards` (packets dropped while waiting for resolution): only /proc/net/stat/arp_cache
    has it, and only the initial namespace has that file. Per-CPU rows of hex counters, summed; {} when the
    file is absent or unreadable."""
    try:
        with open(path) as f:
            lines = f.read().split("\n")
    except OSError:
        return {}
    head = lines[0].split() if lines else []
    if "unresolved_discards" not in head:
        return {}
    col = head.index("unresolved_discards")
    total = 0
    for line in lines[1:]:
        cells = line.split()
        if len(cells) > col:
            try:
                total += int(cells[col], 16)
            except ValueError:
                return {}
    return {"unresolved_discards": total}
