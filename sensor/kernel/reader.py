"""Reads the kernel maps into a Snapshot of plain Python data. No bcc: only map file descriptors."""

from __future__ import annotations

import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sensor.kernel import bpfsys
from sensor.kernel.layout import (
    ARP_FAST_SLOT,
    ARP_KEY,
    ARP_VAL,
    FAMILY_IPV4,
    FAMILY_IPV6,
    FAST_EPOCH,
    KIND_GRATUITOUS,
    KIND_PROBE,
    KIND_REPLY,
    KIND_REQUEST,
    ND_FAST_SLOT,
    ND_KEY,
    health_names,
    health_struct,
)

# (ifindex, ip, peer, vlan, dir, kind, mac, flags) -> (count, first_seen_ns), LRU and fast path summed. ip and peer
# are text (dotted quad, or RFC 5952 for IPv6), mac is "aa:bb:cc:dd:ee:ff", flags are KEY_F_*.
EntryKey = tuple[int, str, str, int, int, int, str, int]
EntryMap = dict[EntryKey, tuple[int, int]]
TargetKey = tuple[int, str, int, int]  # (ifindex, ip, vlan, dir)
# struct arp_key as numpy sees it (no padding: 4+4+4+2+1+1+8 bytes); the last word holds mac[6] in its
# low 48 bits (wire order, read little-endian), then flags, then pad.
KEY_DTYPE = np.dtype([("ifindex", "<u4"), ("ip", "<u4"), ("peer", "<u4"), ("vlan", "<u2"), ("dir", "u1"),
                      ("kind", "u1"), ("macw", "<u8")])
assert KEY_DTYPE.itemsize == ARP_KEY.size
# struct nd_key: the same word of mac/flags/pad at offset 8, then the two 16-byte addresses (wire order),
# each seen as two little-endian u64 words: exactly the table's 16-byte column form.
ND_KEY_DTYPE = np.dtype([("ifindex", "<u4"), ("vlan", "<u2"), ("dir", "u1"), ("kind", "u1"), ("macw", "<u8"),
                         ("ip", "<u8", (2,)), ("peer", "<u8", (2,))])
assert ND_KEY_DTYPE.itemsize == ND_KEY.size
_MAC_MASK = np.uint64((1 << 48) - 1)
# An IPv4 address in the table's 16-byte form (::ffff:a.b.c.d), as the two little-endian words of those
# 16 bytes: word 0 is zero, word 1 is 0xffff in bits 16-31 and the 4 wire bytes (read LE) in bits 32-63.
_V4_MAPPED = np.uint64(0xFFFF0000)


def v4_words(ip: np.ndarray) -> np.ndarray:
    """(n, 2) u64: IPv4 addresses (wire bytes read as a little-endian u32) in the 16-byte column form."""
    out = np.zeros((len(ip), 2), dtype=np.uint64)
    out[:, 1] = (ip.astype(np.uint64) << np.uint64(32)) | _V4_MAPPED
    return out


def is_v4(words: np.ndarray) -> np.ndarray:
    """Which rows of a 16-byte address column are IPv4-mapped."""
    return (words[:, 0] == 0) & ((words[:, 1] & np.uint64(0xFFFFFFFF)) == _V4_MAPPED)


class EntryTable:
    """The map's entries as parallel numpy arrays (one element per LRU entry or per used fast-path slot of
    a CPU): what the aggregator works on, so 100k entries cost a few vector operations per interval
    instead of 100k rounds of Python. Both families share the shape: `ip` and `peer` are 16-byte
    columns ((n, 2) little-endian u64 words whose bytes are the address in wire order; IPv4 as
    ::ffff:a.b.c.d) and `family` says which it is (FAMILY_IPV4/6). `mac` holds the 6 wire bytes read
    little-endian, `flags` the key's KEY_F_* bits."""

    __slots__ = ("count", "dir", "family", "first", "flags", "ifindex", "ip", "kind", "mac", "peer", "raw_keys",
                 "vlan")

    def __init__(self, ifindex: np.ndarray, ip: np.ndarray, peer: np.ndarray, vlan: np.ndarray,
                 dir: np.ndarray, kind: np.ndarray, count: np.ndarray, first: np.ndarray,
                 raw_keys: bytes | None = None, *, mac: np.ndarray | None = None, flags: np.ndarray | None = None,
                 family: np.ndarray | None = None) -> None:
        n = len(count)
        self.ifindex, self.ip, self.peer, self.vlan = ifindex, ip, peer, vlan
        self.dir, self.kind, self.count, self.first = dir, kind, count, first
        self.mac = mac if mac is not None else np.zeros(n, np.uint64)
        self.flags = flags if flags is not None else np.zeros(n, np.uint8)
        self.family = family if family is not None else np.full(n, FAMILY_IPV4, np.uint8)
        # The keys as packed bytes, in read order: when the next read has exactly these bytes (the same
        # entries, in the same buckets), the aggregator reuses all its per-key work.
        self.raw_keys = raw_keys

    def __len__(self) -> int:
        return len(self.count)

    @property
    def all_v4(self) -> bool:
        return bool((self.family == FAMILY_IPV4).all())

    @classmethod
    def from_raw(cls, keys: bytes, vals: bytes, n: int) -> EntryTable:
        """From a batch read of arp_counts: n packed struct arp_key, n struct arp_val (one value per
        entry, shared by all CPUs)."""
        v = np.frombuffer(vals, dtype="<u8", count=n * 2).reshape(n, 2)
        return cls.from_keys(keys, n, v[:, 0].copy(), v[:, 1].copy())

    @classmethod
    def from_keys(cls, keys: bytes, n: int, count: np.ndarray, first: np.ndarray) -> EntryTable:
        """n packed struct arp_key and their values."""
        k = np.frombuffer(keys, dtype=KEY_DTYPE, count=n)
        macw = k["macw"]
        return cls(k["ifindex"].copy(), v4_words(k["ip"]), v4_words(k["peer"]), k["vlan"].copy(), k["dir"].copy(),
                   k["kind"].copy(), count, first, bytes(keys[: n * KEY_DTYPE.itemsize]),
                   mac=macw & _MAC_MASK, flags=(macw >> np.uint64(48)).astype(np.uint8))

    @classmethod
    def from_nd_raw(cls, keys: bytes, vals: bytes, n: int) -> EntryTable:
        """From a batch read of nd_counts: n packed struct nd_key (the ND kinds share the ARP kinds'
        numbers, so the table needs no translation), n struct arp_val."""
        v = np.frombuffer(vals, dtype="<u8", count=n * 2).reshape(n, 2)
        return cls.from_nd_keys(keys, n, v[:, 0].copy(), v[:, 1].copy())

    @classmethod
    def from_nd_keys(cls, keys: bytes, n: int, count: np.ndarray, first: np.ndarray) -> EntryTable:
        """n packed struct nd_key and their values."""
        k = np.frombuffer(keys, dtype=ND_KEY_DTYPE, count=n)
        macw = k["macw"]
        return cls(k["ifindex"].copy(), k["ip"].copy(), k["peer"].copy(), k["vlan"].copy(), k["dir"].copy(),
                   k["kind"].copy(), count, first, bytes(keys[: n * ND_KEY.size]),
                   mac=macw & _MAC_MASK, flags=(macw >> np.uint64(48)).astype(np.uint8),
                   family=np.full(n, FAMILY_IPV6, np.uint8))

    @classmethod
    def concat(cls, a: EntryTable, b: EntryTable) -> EntryTable:
        """Both families in one table (ARP rows first). raw_keys is the ARP row count then both reads'
        bytes, so an unchanged pair of maps is recognised as unchanged and no other pair can look alike."""
        raw = None
        if a.raw_keys is not None and b.raw_keys is not None:
            raw = len(a).to_bytes(8, "little") + a.raw_keys + b.raw_keys
        if not len(b):
            a.raw_keys = raw
            return a
        cols = [np.concatenate([getattr(a, f), getattr(b, f)]) for f in
                ("ifindex", "ip", "peer", "vlan", "dir", "kind", "count", "first")]
        return cls(*cols, raw, mac=np.concatenate([a.mac, b.mac]), flags=np.concatenate([a.flags, b.flags]),
                   family=np.concatenate([a.family, b.family]))

    @classmethod
    def empty(cls) -> EntryTable:
        return cls.from_keys(b"", 0, np.zeros(0, np.uint64), np.zeros(0, np.uint64))

    @classmethod
    def from_entries(cls, entries: EntryMap) -> EntryTable:
        rows = [(i, addr_words(ip), addr_words(peer), vlan, d, kind, mac_int(mac), flags, c, f)
                for (i, ip, peer, vlan, d, kind, mac, flags), (c, f) in entries.items()]
        n = len(rows)
        cols = list(zip(*rows, strict=True)) if rows else [()] * 10
        types = (np.uint32, "2", "2", np.uint16, np.uint8, np.uint8, np.uint64, np.uint8, np.uint64, np.uint64)
        a = [np.array(c, dtype=np.uint64).reshape(n, 2) if t == "2" else np.array(c, dtype=t)
             for c, t in zip(cols, types, strict=True)]
        family = np.where(is_v4(a[1]), FAMILY_IPV4, FAMILY_IPV6).astype(np.uint8)
        t = cls(a[0], a[1], a[2], a[3], a[4], a[5], a[8], a[9], mac=a[6], flags=a[7], family=family)
        t.raw_keys = b"".join(np.ascontiguousarray(x).tobytes() for x in a[:8])
        return t

    def to_entries(self) -> EntryMap:
        return dict(zip(self.to_keys(), zip(self.count.tolist(), self.first.tolist(), strict=True), strict=True))

    def to_keys(self) -> list[EntryKey]:
        """Each row's EntryKey, in row order (rows may repeat a key: fast-path rows are per CPU)."""
        return [(i, addr_text(*ip), addr_text(*peer), vlan, d, kind, mac_text(mac), flags)
                for i, ip, peer, vlan, d, kind, mac, flags in zip(
                    self.ifindex.tolist(), self.ip.tolist(), self.peer.tolist(), self.vlan.tolist(),
                    self.dir.tolist(), self.kind.tolist(), self.mac.tolist(), self.flags.tolist(), strict=True)]


@lru_cache(maxsize=1 << 16)  # bounded: the IPs come from the wire
def ip_text(ip: int) -> str:
    """Dotted quad of an IP held as its wire bytes read little-endian (cached: IPs repeat)."""
    return socket.inet_ntoa(ip.to_bytes(4, "little"))


def addr_text(w0: int, w1: int) -> str:
    """Text of an address in the 16-byte column form: dotted quad for IPv4-mapped, else RFC 5952."""
    if w0 == 0 and w1 & 0xFFFFFFFF == 0xFFFF0000:
        return ip_text(w1 >> 32)
    return _v6_text(w0, w1)


@lru_cache(maxsize=1 << 16)
def _v6_text(w0: int, w1: int) -> str:
    return socket.inet_ntop(socket.AF_INET6, w0.to_bytes(8, "little") + w1.to_bytes(8, "little"))


def addr_words(text: str) -> tuple[int, int]:
    """The two column words of an address given as text (IPv4 or IPv6)."""
    raw = socket.inet_pton(socket.AF_INET6, text) if ":" in text else b"\0" * 10 + b"\xff\xff" + socket.inet_aton(text)
    return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")


def mac_text(mac: int) -> str:
    return mac.to_bytes(6, "little").hex(":")


def mac_int(text: str) -> int:
    return int.from_bytes(bytes.fromhex(text.replace(":", "")), "little")


class Snapshot:
    """One read of the maps: `mono` (time.monotonic() when read), `entries` (EntryMap: the LRU map,
    cumulative) and `health`, plus `fast`: the fast-path counts of the interval (deltas, one row per
    CPU and slot, so a key can have several rows and can also be in `entries`). Built either from an
    EntryMap (tests, tools) or from an EntryTable (the reader); each form is derived from the other on
    first use."""

    __slots__ = ("_entries", "_table", "fast", "health", "mono")

    def __init__(self, mono: float, entries: EntryMap | None = None, health: dict[str, int] | None = None,
                 table: EntryTable | None = None, fast: EntryTable | None = None) -> None:
        self.mono = mono
        self.health = health if health is not None else {}
        self._entries = entries if entries is not None or table is not None else {}
        self._table = table
        self.fast = fast

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


@dataclass(frozen=True)
class MapFds:
    """The counting maps of one loaded program (Datapath.maps)."""

    counts: int  # arp_counts: LRU hash, one value per entry, cumulative
    health: int  # health: per-CPU array, one struct health_counters
    fast: int  # arp_fast: per-CPU array of 2 x fast_slots struct arp_fast_slot
    epoch: int  # fast_epoch: array, one struct fast_epoch
    fast_slots: int  # 0: the fast path is compiled out
    nd: int | None = None  # nd_counts: the IPv6 neighbour discovery LRU map
    nd_fast: int | None = None  # nd_fast: its fast-path array (same epoch, same slots)


class FastDrain:
    """Takes the fast path's counts out of the kernel once per interval, exactly (docs/architecture.md,
    "Kernel program"): flip fast_epoch to the other half, wait an RCU grace period
    (membarrier(MEMBARRIER_CMD_GLOBAL): XDP and tc programs run inside RCU read-side sections, so no
    program still writes the retired half when it returns), read the retired half of every CPU, zero
    what was used. Where membarrier GLOBAL is refused (nohz_full kernels), the retired half is read one
    interval later instead (`grace` says which). Both families' arrays (arp_fast, nd_fast) follow the one
    epoch: one flip and one grace period drain both."""

    def __init__(self, fast_fd: int, epoch_fd: int, slots: int, nd_fast_fd: int | None = None) -> None:
        self.fast_fd, self.epoch_fd, self.slots = fast_fd, epoch_fd, slots
        self.ncpu = bpfsys.possible_cpus()
        # (map fd, per-CPU slot size, key words, table builder) per family
        self.arrays = [(fast_fd, bpfsys.percpu_value_size(ARP_FAST_SLOT.size), 3, EntryTable.from_keys)]
        if nd_fast_fd is not None:
            self.arrays.append((nd_fast_fd, bpfsys.percpu_value_size(ND_FAST_SLOT.size), 6, EntryTable.from_nd_keys))
        raw = bpfsys.map_lookup(epoch_fd, ZERO_KEY, FAST_EPOCH.size)
        self.half = FAST_EPOCH.unpack(raw)[0] & 1 if raw else 0
        self.grace = "membarrier" if bpfsys.membarrier_global_available() else "interval"
        self._pending: int | None = None  # grace "interval": the half retired at the previous drain
        self._retired = 0  # grace "membarrier": the half begin() retired
        self._waiter: threading.Thread | None = None
        self._grace_error: OSError | None = None
        self._kbuf = np.empty(4 * slots, dtype=np.uint8)
        self._vbuf = np.empty(slots * self.ncpu * max(a[1] for a in self.arrays), dtype=np.uint8)
        self.drains = 0
        self.last_grace_ms = 0.0  # how long the last grace period took (a wait, not CPU)

    def _flip(self) -> int:
        """Makes the other half current; returns the retired one. The current half is read from the map,
        not remembered: a second reader of the same maps (a tool, a test) may have flipped it."""
        raw = bpfsys.map_lookup(self.epoch_fd, ZERO_KEY, FAST_EPOCH.size)
        old = FAST_EPOCH.unpack(raw)[0] & 1 if raw else self.half
        self.half = 1 - old
        bpfsys.map_update(self.epoch_fd, ZERO_KEY, FAST_EPOCH.pack(self.half))
        return old

    def drain(self) -> EntryTable:
        """This interval's fast-path counts: one row per (slot, CPU) that counted something."""
        self.begin()
        return self.finish()

    def begin(self) -> None:
        """Flips the epoch and starts the grace period on a helper thread, so the caller can read the LRU
        map while it runs (the syscall releases the GIL): a poll waits max(grace, read), not their sum."""
        self.drains += 1
        if self.grace != "membarrier":
            return
        self._retired = self._flip()
        self._waiter = threading.Thread(target=self._wait, name="arp-sensor-grace", daemon=True)
        self._waiter.start()

    def _wait(self) -> None:
        t0 = time.monotonic()
        try:
            bpfsys.membarrier_global()
        except OSError as e:
            self._grace_error = e
        self.last_grace_ms = (time.monotonic() - t0) * 1e3

    def finish(self) -> EntryTable:
        """After begin(): waits for the grace period, then reads and zeroes the retired half."""
        if self.grace == "membarrier":
            self._waiter.join()
            if self._grace_error is None:
                return self._read_and_zero(self._retired)
            # Refused after all (the query said yes): from now on the retired half is read one interval
            # later; this one is read at the next drain, so nothing is lost.
            self._grace_error, self.grace, self._pending = None, "interval", self._retired
            return EntryTable.empty()
        out = self._read_and_zero(self._pending) if self._pending is not None else EntryTable.empty()
        self._pending = self._flip()
        return out

    def _read_and_zero(self, half: int) -> EntryTable:
        """Both families' retired halves, ARP rows first."""
        tables = [self._read_and_zero_one(half, *a) for a in self.arrays]
        return tables[0] if len(tables) == 1 else EntryTable.concat(tables[0], tables[1])

    def _read_and_zero_one(self, half: int, fd: int, slot_size: int, kw: int, build) -> EntryTable:  # type: ignore[no-untyped-def]
        s, ncpu = self.slots, self.ncpu
        n = bpfsys.array_lookup_batch_into(fd, half * s, s, self._kbuf.ctypes.data, self._vbuf.ctypes.data,
                                           ncpu * slot_size)
        words = slot_size // 8
        v = self._vbuf[: n * ncpu * slot_size].view("<u8").reshape(n, ncpu, words)
        count = v[:, :, kw]  # the slot: kw key words, then count, then first_seen_ns
        used = count != 0
        rows = np.flatnonzero(used.reshape(-1))  # (slot, cpu) in slot order
        keys = np.ascontiguousarray(v.reshape(-1, words)[rows, :kw])
        table = build(keys.tobytes(), len(rows), count.reshape(-1)[rows].copy(),
                      v[:, :, kw + 1].reshape(-1)[rows].copy())
        slots_used = np.flatnonzero(used.any(axis=1))
        if len(slots_used):  # nobody writes this half until the next flip
            idx = (slots_used + half * s).astype("<u4")
            bpfsys.map_update_batch(fd, idx.tobytes(), bytes(len(idx) * ncpu * slot_size), len(idx))
        return table

    def clear(self) -> None:
        """Zeroes both halves of every array (tests reset the maps between cases)."""
        idx = np.arange(2 * self.slots, dtype="<u4")
        for fd, slot_size, _kw, _build in self.arrays:
            bpfsys.map_update_batch(fd, idx.tobytes(), bytes(len(idx) * self.ncpu * slot_size), len(idx))
        self._pending = None


ZERO_KEY = (0).to_bytes(4, "little")


def target_totals(entries: EntryMap) -> dict[TargetKey, tuple[int, int, int, int]]:
    """Cumulative (requests, replies, gratuitous, probes) per target: a view for tests and tools."""
    out: dict[TargetKey, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    slot = {KIND_REQUEST: 0, KIND_REPLY: 1, KIND_GRATUITOUS: 2, KIND_PROBE: 3}
    for (ifindex, ip, _peer, vlan, d, kind, _mac, _flags), (n, _first) in entries.items():
        out[(ifindex, ip, vlan, d)][slot[kind]] += n
    return {k: tuple(v) for k, v in out.items()}  # type: ignore[misc]


def pair_totals(entries: EntryMap) -> dict[tuple[int, str, str, int, int], int]:
    """Cumulative requests per (ifindex, sender, target, vlan, dir), over the sender's MACs."""
    out: dict[tuple[int, str, str, int, int], int] = defaultdict(int)
    for (ifindex, ip, peer, vlan, d, kind, _mac, _flags), (n, _f) in entries.items():
        if kind == KIND_REQUEST:
            out[(ifindex, peer, ip, vlan, d)] += n
    return dict(out)


class MapReader:
    """maps.nd: the nd_counts map (IPv6 neighbour discovery), read into the same table as ARP; None reads
    ARP only. room: entries the read buffers start with (default: the map's size plus headroom for churn).
    They grow when a read under churn meets more; a read only stops short of the end of the map past
    READ_LIMIT times the map's size (never seen: that many inserts during one read)."""

    READ_LIMIT = 16

    def __init__(self, maps: MapFds, max_entries: int, room: int | None = None) -> None:
        self.map_fd, self.health_fd, self.max_entries = maps.counts, maps.health, max_entries
        self.nd_fd = maps.nd
        self.ncpu = bpfsys.possible_cpus()
        self.names = health_names()
        self.fast = FastDrain(maps.fast, maps.epoch, maps.fast_slots, maps.nd_fast) if maps.fast_slots else None
        self._fast_totals: dict[EntryKey, list[int]] = {}
        self._kbuf: np.ndarray | None = None
        self._vbuf: np.ndarray | None = None
        # Per map (False: ARP, True: ND): [keys, values, room]. Headroom: a read under churn meets entries
        # evicted behind it and inserted ahead of it.
        room = room or max_entries + max_entries // 8 + 64
        self._bufs: dict[bool, list] = {False: [None, None, room], True: [None, None, room]}
        # Cumulative, reported in health like the kernel's counters (the aggregator takes deltas).
        self.read_grown = 0  # reads that needed bigger buffers to reach the end of the map
        self.read_cut_short = 0  # reads that stopped before the end (READ_LIMIT)

    def read_health(self) -> dict[str, int]:
        fmt = health_struct()
        raw = bpfsys.map_lookup_percpu(self.health_fd, ZERO_KEY, fmt.size)
        totals = [0] * len(self.names)
        slot = bpfsys.percpu_value_size(fmt.size)
        for c in range(self.ncpu if raw else 0):
            for i, v in enumerate(fmt.unpack_from(raw, c * slot)):
                totals[i] += v
        return dict(zip(self.names, totals, strict=True))

    def read_raw(self, nd: bool = False) -> tuple[memoryview, memoryview, int]:
        """One batch read of the whole ARP map (nd: the ND map), always to its end, into buffers kept
        between reads (allocating and zeroing megabytes per interval cost more than the numpy work);
        valid until the next read. A snapshot that missed entries would count their whole cumulative
        counts again in the next interval (a false storm), so the buffers grow instead of stopping."""
        slot = ARP_VAL.size  # one value per entry: the LRU maps are not per-CPU
        ksize = ND_KEY.size if nd else ARP_KEY.size
        buf = self._bufs[nd]
        if buf[0] is None:
            buf[0], buf[1] = np.empty(ksize * buf[2], dtype=np.uint8), np.empty(slot * buf[2], dtype=np.uint8)
        grown = False

        def grow(n: int) -> tuple[int, int, int] | None:
            nonlocal grown
            limit = self.READ_LIMIT * self.max_entries + 1024
            if buf[2] >= limit:
                return None
            buf[2] = min(buf[2] * 2, limit)
            kbuf, vbuf = np.empty(ksize * buf[2], dtype=np.uint8), np.empty(slot * buf[2], dtype=np.uint8)
            kbuf[: ksize * n] = buf[0][: ksize * n]
            vbuf[: slot * n] = buf[1][: slot * n]
            buf[0], buf[1] = kbuf, vbuf
            grown = True
            return kbuf.ctypes.data, vbuf.ctypes.data, buf[2]

        fd = self.nd_fd if nd else self.map_fd
        n, complete = bpfsys.map_lookup_batch_into(fd, buf[0].ctypes.data, ksize, buf[1].ctypes.data, slot,  # type: ignore[arg-type]
                                                   buf[2], grow)
        self.read_grown += grown
        self.read_cut_short += not complete
        return memoryview(buf[0])[: ksize * n], memoryview(buf[1])[: slot * n], n

    def read_table(self) -> EntryTable:
        """The LRU maps alone (cumulative counts)."""
        arp = EntryTable.from_raw(*self.read_raw())
        if self.nd_fd is None:
            return arp
        return EntryTable.concat(arp, EntryTable.from_nd_raw(*self.read_raw(nd=True)))

    def read_fast(self) -> EntryTable:
        """The fast path's counts since the previous drain (deltas; empty when compiled out)."""
        return self.fast.drain() if self.fast else EntryTable.empty()

    def read_entries(self) -> EntryMap:
        """Cumulative counts per key, LRU and fast path summed: a view for tests and tools. It keeps the
        fast path's running totals in a dict (the runner uses snapshot(), which keeps none)."""
        out = self.read_table().to_entries()
        fast = self.read_fast()
        totals = self._fast_totals
        for key, c, f in zip(fast.to_keys(), fast.count.tolist(), fast.first.tolist(), strict=True):
            t = totals.setdefault(key, [0, f])
            t[0] += c
            t[1] = min(t[1], f)
        for key, (c, f) in totals.items():
            old = out.get(key)
            out[key] = (old[0] + c, old[1]) if old else (c, f)
        return out

    def forget_fast_totals(self) -> None:
        """Tests that empty the maps forget read_entries()'s running fast-path totals too."""
        self._fast_totals.clear()
        if self.fast:
            self.fast.clear()

    def snapshot(self) -> Snapshot:
        # Health first: a frame counted after this read shows up in the next interval's health too, so
        # per-target sums never run ahead of the health totals.
        health = self.read_health()
        if self.fast:
            self.fast.begin()  # the grace period runs while the LRU map is read
        table = self.read_table()
        fast = self.fast.finish() if self.fast else EntryTable.empty()
        health["map_read_grown"], health["map_read_cut_short"] = self.read_grown, self.read_cut_short
        return Snapshot(time.monotonic(), None, health, table=table, fast=fast)
