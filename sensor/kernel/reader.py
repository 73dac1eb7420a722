"""Reads the kernel maps into a Snapshot of plain Python data. No bcc: only map file descriptors."""

from __future__ import annotations

import socket
import time
from collections import defaultdict
from functools import lru_cache

import numpy as np

from sensor.kernel import bpfsys
from sensor.kernel.layout import (
    ARP_KEY,
    ARP_VAL,
    KIND_GRATUITOUS,
    KIND_PROBE,
    KIND_REPLY,
    KIND_REQUEST,
    ND_KEY,
    health_names,
    health_struct,
)

# (ifindex, ip, peer, vlan, dir, kind) -> (count, first_seen_ns), summed over CPUs
EntryKey = tuple[int, str, str, int, int, int]
EntryMap = dict[EntryKey, tuple[int, int]]
TargetKey = tuple[int, str, int, int]  # (ifindex, ip, vlan, dir)
# struct arp_key as numpy sees it (no padding: 4+4+4+2+1+1 bytes)
KEY_DTYPE = np.dtype([("ifindex", "<u4"), ("ip", "<u4"), ("peer", "<u4"), ("vlan", "<u2"), ("dir", "u1"),
                      ("kind", "u1")])
assert KEY_DTYPE.itemsize == ARP_KEY.size


class EntryTable:
    """The map's entries as parallel numpy arrays (one element per entry, per-CPU values already
    summed): what the aggregator works on, so 100k entries cost a few vector operations per interval
    instead of 100k rounds of Python. IPs stay as read: the 4 wire bytes seen as a little-endian u32."""

    __slots__ = ("count", "dir", "first", "ifindex", "ip", "kind", "peer", "raw_keys", "vlan")

    def __init__(self, ifindex: np.ndarray, ip: np.ndarray, peer: np.ndarray, vlan: np.ndarray,
                 dir: np.ndarray, kind: np.ndarray, count: np.ndarray, first: np.ndarray,
                 raw_keys: bytes | None = None) -> None:
        self.ifindex, self.ip, self.peer, self.vlan = ifindex, ip, peer, vlan
        self.dir, self.kind, self.count, self.first = dir, kind, count, first
        # The keys as packed bytes, in read order: when the next read has exactly these bytes (the same
        # entries, in the same buckets), the aggregator reuses all its per-key work.
        self.raw_keys = raw_keys

    def __len__(self) -> int:
        return len(self.count)

    @classmethod
    def from_raw(cls, keys: bytes, vals: bytes, n: int, ncpu: int) -> EntryTable:
        """From a batch read: n packed struct arp_key, n x ncpu per-CPU struct arp_val slots."""
        k = np.frombuffer(keys, dtype=KEY_DTYPE, count=n)
        slot_words = bpfsys.percpu_value_size(ARP_VAL.size) // 8
        v = np.frombuffer(vals, dtype="<u8", count=n * ncpu * slot_words).reshape(n, ncpu, slot_words)
        return cls(k["ifindex"].copy(), k["ip"].copy(), k["peer"].copy(), k["vlan"].copy(), k["dir"].copy(),
                   k["kind"].copy(),
                   v[:, :, 0].sum(axis=1, dtype=np.uint64),
                   # first_seen_ns is stamped on the creating CPU only: the others hold 0
                   v[:, :, 1].max(axis=1) if n else np.zeros(0, np.uint64), bytes(keys[: n * KEY_DTYPE.itemsize]))

    @classmethod
    def from_entries(cls, entries: EntryMap) -> EntryTable:
        aton = socket.inet_aton
        rows = [(i, int.from_bytes(aton(ip), "little"), int.from_bytes(aton(peer), "little"), vlan, d, kind, c, f)
                for (i, ip, peer, vlan, d, kind), (c, f) in entries.items()]
        cols = list(zip(*rows, strict=True)) if rows else [()] * 8
        types = (np.uint32, np.uint32, np.uint32, np.uint16, np.uint8, np.uint8, np.uint64, np.uint64)
        t = cls(*(np.array(c, dtype=t) for c, t in zip(cols, types, strict=True)))
        packed = np.zeros(len(rows), dtype=KEY_DTYPE)
        for name, col in zip(KEY_DTYPE.names, (t.ifindex, t.ip, t.peer, t.vlan, t.dir, t.kind), strict=True):
            packed[name] = col
        t.raw_keys = packed.tobytes()
        return t

    def to_entries(self) -> EntryMap:
        ntoa = ip_text
        out: EntryMap = {}
        for i, ip, peer, vlan, d, kind, c, f in zip(self.ifindex.tolist(), self.ip.tolist(), self.peer.tolist(),
                                                    self.vlan.tolist(), self.dir.tolist(), self.kind.tolist(),
                                                    self.count.tolist(), self.first.tolist(), strict=True):
            out[(i, ntoa(ip), ntoa(peer), vlan, d, kind)] = (c, f)
        return out


@lru_cache(maxsize=1 << 16)  # bounded: the IPs come from the wire
def ip_text(ip: int) -> str:
    """Dotted quad of an IP held as its wire bytes read little-endian (cached: IPs repeat)."""
    return socket.inet_ntoa(ip.to_bytes(4, "little"))


class Snapshot:
    """One read of the maps: `mono` (time.monotonic() when read), `entries` (EntryMap) and `health`.
    Built either from an EntryMap (tests, tools) or from an EntryTable (the reader); each form is
    derived from the other on first use."""

    __slots__ = ("_entries", "_table", "health", "mono")

    def __init__(self, mono: float, entries: EntryMap | None = None, health: dict[str, int] | None = None,
                 table: EntryTable | None = None) -> None:
        self.mono = mono
        self.health = health if health is not None else {}
        self._entries = entries if entries is not None or table is not None else {}
        self._table = table

    @property
    def entries(self) -> EntryMap:
        if self._entries is None:
            self._entries = self._table.to_entries()  # type: ignore[union-attr]
        return self._entries

    @property
    def table(self) -> EntryTable:
        if self._table is None:
            self._table = EntryTable.from_entries(self._entries or {})
        return self._table


def target_totals(entries: EntryMap) -> dict[TargetKey, tuple[int, int, int, int]]:
    """Cumulative (requests, replies, gratuitous, probes) per target: a view for tests and tools."""
    out: dict[TargetKey, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    slot = {KIND_REQUEST: 0, KIND_REPLY: 1, KIND_GRATUITOUS: 2, KIND_PROBE: 3}
    for (ifindex, ip, _peer, vlan, d, kind), (n, _first) in entries.items():
        out[(ifindex, ip, vlan, d)][slot[kind]] += n
    return {k: tuple(v) for k, v in out.items()}  # type: ignore[misc]


def pair_totals(entries: EntryMap) -> dict[tuple[int, str, str, int, int], int]:
    """Cumulative requests per (ifindex, sender, target, vlan, dir)."""
    return {(ifindex, peer, ip, vlan, d): n for (ifindex, ip, peer, vlan, d, kind), (n, _f) in entries.items()
            if kind == KIND_REQUEST}


class MapReader:
    def __init__(self, map_fd: int, health_fd: int, max_entries: int) -> None:
        self.map_fd, self.health_fd, self.max_entries = map_fd, health_fd, max_entries
        self.ncpu = bpfsys.possible_cpus()
        self.names = health_names()
        self._kbuf: np.ndarray | None = None
        self._vbuf: np.ndarray | None = None

    def read_health(self) -> dict[str, int]:
        fmt = health_struct()
        raw = bpfsys.map_lookup_percpu(self.health_fd, (0).to_bytes(4, "little"), fmt.size)
        totals = [0] * len(self.names)
        slot = bpfsys.percpu_value_size(fmt.size)
        for c in range(self.ncpu if raw else 0):
            for i, v in enumerate(fmt.unpack_from(raw, c * slot)):
                totals[i] += v
        return dict(zip(self.names, totals, strict=True))

    def read_raw(self) -> tuple[memoryview, memoryview, int]:
        """One batch read of the whole map into buffers kept between reads (allocating and zeroing
        megabytes per interval cost more than the numpy work); valid until the next read."""
        slot = bpfsys.percpu_value_size(ARP_VAL.size) * self.ncpu
        # Headroom: a read under churn meets entries evicted behind it and inserted ahead of it.
        room = self.max_entries + self.max_entries // 8 + 64
        if self._kbuf is None:
            self._kbuf = np.empty(ARP_KEY.size * room, dtype=np.uint8)
            self._vbuf = np.empty(slot * room, dtype=np.uint8)
        n = bpfsys.map_lookup_batch_into(self.map_fd, self._kbuf.ctypes.data, ARP_KEY.size,
                                         self._vbuf.ctypes.data, slot, room)
        return memoryview(self._kbuf)[: ARP_KEY.size * n], memoryview(self._vbuf)[: slot * n], n

    def read_table(self) -> EntryTable:
        return EntryTable.from_raw(*self.read_raw(), self.ncpu)

    def read_entries(self) -> EntryMap:
        return self.read_table().to_entries()

    def snapshot(self) -> Snapshot:
        # Health first: a frame counted after this read shows up in the next interval's health too, so
        # per-target sums never run ahead of the health totals.
        health = self.read_health()
        return Snapshot(time.monotonic(), None, health, table=self.read_table())


# (ifindex, ip, peer, vlan, dir, kind, mac, flags) -> (count, first_seen_ns), summed over CPUs; ip/peer in
# RFC 5952 text ("::" for no peer), mac as 6 bytes.
NdEntryKey = tuple[int, str, str, int, int, int, bytes, int]


def read_nd_entries(map_fd: int, max_entries: int) -> dict[NdEntryKey, tuple[int, int]]:
    """The nd_counts map as plain Python (one batch read)."""
    keys, vals, n = bpfsys.map_lookup_batch(map_fd, ND_KEY.size, ARP_VAL.size, max_entries, percpu=True)
    slot = bpfsys.percpu_value_size(ARP_VAL.size)
    ncpu = len(vals) // (slot * n) if n else 0
    ntop = socket.inet_ntop
    out: dict[NdEntryKey, tuple[int, int]] = {}
    for i in range(n):
        ifindex, vlan, d, kind, mac, flags, ip, peer = ND_KEY.unpack_from(keys, i * ND_KEY.size)
        count = first = 0
        for c in range(ncpu):
            cnt, fs = ARP_VAL.unpack_from(vals, (i * ncpu + c) * slot)
            count, first = count + cnt, max(first, fs)
        out[(ifindex, ntop(socket.AF_INET6, ip), ntop(socket.AF_INET6, peer), vlan, d, kind, mac, flags)] = (
            count, first)
    return out
