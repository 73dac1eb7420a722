"""Reads the kernel maps into a Snapshot of plain Python data. No bcc: only map file descriptors."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

from sensor import bpfsys
from sensor.layout import PAIR_KEY, PAIR_VAL, TARGET_KEY, TARGET_VAL, health_names, health_struct

# (ifindex, ip, vlan, dir) -> (requests, replies, gratuitous, probes, first_seen_ns)
TargetMap = dict[tuple[int, str, int, int], tuple[int, int, int, int, int]]
# (ifindex, sender, target, vlan, dir) -> (requests, first_seen_ns)
PairMap = dict[tuple[int, str, str, int, int], tuple[int, int]]


@dataclass
class Snapshot:
    mono: float  # time.monotonic() when read
    targets: TargetMap = field(default_factory=dict)
    pairs: PairMap = field(default_factory=dict)
    health: dict[str, int] = field(default_factory=dict)


def _sum_percpu(buf: bytes, count: int, fmt, ncpu: int) -> list[tuple[int, ...]]:
    """Per-CPU values: counters add up across CPUs; the last field (first_seen_ns) is set on one CPU
    only, so it is the maximum instead."""
    slot = bpfsys.percpu_value_size(fmt.size)
    nfields = len(fmt.unpack(bytes(fmt.size)))
    out = []
    unpack = fmt.unpack_from
    for i in range(count):
        base = i * slot * ncpu
        acc = list(unpack(buf, base))
        for c in range(1, ncpu):
            v = unpack(buf, base + c * slot)
            for f in range(nfields - 1):
                acc[f] += v[f]
            if v[-1] > acc[-1]:
                acc[-1] = v[-1]
        out.append(tuple(acc))
    return out


class MapReader:
    def __init__(self, targets_fd: int, pairs_fd: int, health_fd: int, max_targets: int, max_pairs: int):
        self.targets_fd, self.pairs_fd, self.health_fd = targets_fd, pairs_fd, health_fd
        self.max_targets, self.max_pairs = max_targets, max_pairs
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

    def read_targets(self) -> TargetMap:
        keys, vals, n = bpfsys.map_lookup_batch(self.targets_fd, TARGET_KEY.size, TARGET_VAL.size,
                                                self.max_targets, percpu=True)
        summed = _sum_percpu(vals, n, TARGET_VAL, self.ncpu)
        out: TargetMap = {}
        ntoa = socket.inet_ntoa
        for i, (ifindex, ip, vlan, d) in enumerate(TARGET_KEY.iter_unpack(keys)):
            out[(ifindex, ntoa(ip), vlan, d)] = summed[i]  # type: ignore[assignment]
        return out

    def read_pairs(self) -> PairMap:
        keys, vals, n = bpfsys.map_lookup_batch(self.pairs_fd, PAIR_KEY.size, PAIR_VAL.size,
                                                self.max_pairs, percpu=True)
        summed = _sum_percpu(vals, n, PAIR_VAL, self.ncpu)
        out: PairMap = {}
        ntoa = socket.inet_ntoa
        for i, (ifindex, s, t, vlan, d) in enumerate(PAIR_KEY.iter_unpack(keys)):
            out[(ifindex, ntoa(s), ntoa(t), vlan, d)] = summed[i]  # type: ignore[assignment]
        return out

    def snapshot(self) -> Snapshot:
        # Health first: a frame counted per target after this read shows up in the next interval's
        # health too, so per-target sums never exceed the health totals of the same interval by much.
        health = self.read_health()
        return Snapshot(time.monotonic(), self.read_targets(), self.read_pairs(), health)
