"""Reads the kernel maps into a Snapshot of plain Python data. No bcc: only map file descriptors."""

from __future__ import annotations

import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field

from sensor import bpfsys
from sensor.layout import (
    ARP_KEY,
    ARP_VAL,
    KIND_GRATUITOUS,
    KIND_PROBE,
    KIND_REPLY,
    KIND_REQUEST,
    health_names,
    health_struct,
)

# (ifindex, ip, peer, vlan, dir, kind) -> (count, first_seen_ns), summed over CPUs
EntryKey = tuple[int, str, str, int, int, int]
EntryMap = dict[EntryKey, tuple[int, int]]
TargetKey = tuple[int, str, int, int]  # (ifindex, ip, vlan, dir)


@dataclass
class Snapshot:
    mono: float  # time.monotonic() when read
    entries: EntryMap = field(default_factory=dict)
    health: dict[str, int] = field(default_factory=dict)


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

    def read_health(self) -> dict[str, int]:
        fmt = health_struct()
        raw = bpfsys.map_lookup_percpu(self.health_fd, (0).to_bytes(4, "little"), fmt.size)
        totals = [0] * len(self.names)
        slot = bpfsys.percpu_value_size(fmt.size)
        for c in range(self.ncpu if raw else 0):
            for i, v in enumerate(fmt.unpack_from(raw, c * slot)):
                totals[i] += v
        return dict(zip(self.names, totals, strict=True))

    def read_entries(self) -> EntryMap:
        keys, vals, _n = bpfsys.map_lookup_batch(self.map_fd, ARP_KEY.size, ARP_VAL.size, self.max_entries,
                                                percpu=True)
        ncpu = self.ncpu
        slot = bpfsys.percpu_value_size(ARP_VAL.size)
        unpack = ARP_VAL.unpack_from
        ntoa = socket.inet_ntoa
        cache: dict[bytes, str] = {}  # many entries share IPs; inet_ntoa once per distinct address
        out: EntryMap = {}
        for i, (ifindex, ip, peer, vlan, d, kind) in enumerate(ARP_KEY.iter_unpack(keys)):
            base = i * slot * ncpu
            count, first = unpack(vals, base)
            for c in range(1, ncpu):
                cn, cf = unpack(vals, base + c * slot)
                count += cn
                if cf > first:  # first_seen_ns is stamped on the creating CPU only
                    first = cf
            ips = cache.get(ip) or cache.setdefault(ip, ntoa(ip))
            peers = cache.get(peer) or cache.setdefault(peer, ntoa(peer))
            out[(ifindex, ips, peers, vlan, d, kind)] = (count, first)
        return out

    def snapshot(self) -> Snapshot:
        # Health first: a frame counted after this read shows up in the next interval's health too, so
        # per-target sums never run ahead of the health totals.
        health = self.read_health()
        return Snapshot(time.monotonic(), self.read_entries(), health)
