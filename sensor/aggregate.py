"""Snapshots of cumulative kernel counters → per-interval TargetWindows. Pure Python, no bcc.

A counter that went down, or an entry whose first_seen_ns changed, was evicted and re-created by the
kernel's LRU: its delta is its current value (what was counted since re-creation)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sensor.layout import DIRECTIONS
from sensor.model import TargetWindow, WindowKey
from sensor.reader import Snapshot


@dataclass
class Interval:
    interval_s: float
    windows: list[TargetWindow]  # every (interface, direction, VLAN, IP) with activity, busiest first
    health: dict[str, int]  # deltas of the kernel health counters
    health_total: dict[str, int]
    live_targets: int = 0
    live_pairs: int = 0
    evicted_targets: int = 0  # cumulative: inserts - live entries
    evicted_pairs: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def _delta(cur: tuple[int, ...], prev: tuple[int, ...] | None) -> tuple[int, ...]:
    """Field-wise delta of cumulative counters whose last field is first_seen_ns."""
    if prev is None or prev[-1] != cur[-1]:
        return cur[:-1]
    return tuple(c - p if c >= p else c for c, p in zip(cur[:-1], prev[:-1], strict=True))


class Aggregator:
    def __init__(self, ifnames: dict[int, str], top_senders: int = 5) -> None:
        self.ifnames = ifnames
        self.top_senders = top_senders
        self.prev: Snapshot | None = None

    def update(self, snap: Snapshot) -> Interval:
        prev = self.prev
        self.prev = snap
        interval_s = snap.mono - prev.mono if prev else 0.0
        pt = prev.targets if prev else {}
        pp = prev.pairs if prev else {}

        # Who asked for each target in this interval.
        asked: dict[tuple[int, str, int, int], list[tuple[str, int]]] = defaultdict(list)
        for (ifindex, sender, target, vlan, d), cur in snap.pairs.items():
            n = _delta(cur, pp.get((ifindex, sender, target, vlan, d)))[0]
            if n:
                asked[(ifindex, target, vlan, d)].append((sender, n))

        windows = []
        for key, cur in snap.targets.items():
            req, rep, grat, probes = _delta(cur, pt.get(key))
            if not (req or rep or grat or probes):
                continue
            ifindex, ip, vlan, d = key
            senders = sorted(asked.get(key, ()), key=lambda s: (-s[1], s[0]))
            windows.append(TargetWindow(
                key=WindowKey(ifindex, DIRECTIONS.get(d, str(d)), vlan, ip),
                interface=self.ifnames.get(ifindex, str(ifindex)),
                interval_s=interval_s,
                requests=req, replies=rep, gratuitous=grat, probes=probes,
                senders=len(senders), top_senders=senders[: self.top_senders],
            ))
        windows.sort(key=lambda w: (-w.requests, -w.probes, w.key.ip, w.key.ifindex, w.key.direction))

        ph = prev.health if prev else {}
        health = {k: v - ph.get(k, 0) for k, v in snap.health.items()}
        return Interval(
            interval_s=interval_s, windows=windows, health=health, health_total=dict(snap.health),
            live_targets=len(snap.targets), live_pairs=len(snap.pairs),
            evicted_targets=max(0, snap.health.get("target_inserts", 0) - len(snap.targets)),
            evicted_pairs=max(0, snap.health.get("pair_inserts", 0) - len(snap.pairs)),
        )


def select(windows: list[TargetWindow], top: int, min_requests: int) -> list[TargetWindow]:
    """The bounded set that becomes `arp_sensor.target` events: at most `top`, each with at least
    `min_requests` requests (probes count as requests here: a probe storm is a storm too)."""
    chosen = [w for w in windows if w.requests + w.probes >= min_requests]
    return chosen[:top] if top > 0 else chosen
