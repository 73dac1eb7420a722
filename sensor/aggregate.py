"""Snapshots of cumulative kernel counters → per-interval TargetWindows. Pure Python, no bcc.

Deltas are taken per map entry: an entry whose first_seen_ns changed (or whose count went down) was
evicted and re-created by the kernel's LRU, so its delta is its current count."""

from __future__ import annotations

from dataclasses import dataclass

from sensor.layout import DIRECTIONS, KIND_GRATUITOUS, KIND_PROBE, KIND_REPLY, KIND_REQUEST
from sensor.model import TargetWindow, WindowKey
from sensor.reader import Snapshot


@dataclass
class Interval:
    interval_s: float
    windows: list[TargetWindow]  # every (interface, direction, VLAN, IP) with activity, busiest first
    health: dict[str, int]  # deltas of the kernel health counters
    health_total: dict[str, int]
    entries_live: int = 0
    entries_evicted: int = 0  # cumulative: inserts - live entries
    targets_live: int = 0  # distinct (interface, direction, VLAN, IP) in the map


class Aggregator:
    def __init__(self, ifnames: dict[int, str], top_senders: int = 5) -> None:
        self.ifnames = ifnames
        self.top_senders = top_senders
        self.prev: Snapshot | None = None

    def update(self, snap: Snapshot) -> Interval:
        prev = self.prev
        self.prev = snap
        interval_s = snap.mono - prev.mono if prev else 0.0
        pe = prev.entries if prev else {}

        # (ifindex, ip, vlan, dir) -> [requests, replies, gratuitous, probes, {sender: requests}]
        acc: dict[tuple[int, str, int, int], list] = {}
        targets = set()
        for key, (count, first) in snap.entries.items():
            ifindex, ip, peer, vlan, d, kind = key
            tkey = (ifindex, ip, vlan, d)
            targets.add(tkey)
            old = pe.get(key)
            n = count - old[0] if old and old[1] == first and count >= old[0] else count
            if not n:
                continue
            a = acc.get(tkey)
            if a is None:
                a = acc[tkey] = [0, 0, 0, 0, {}]
            if kind == KIND_REQUEST:
                a[0] += n
                a[4][peer] = a[4].get(peer, 0) + n
            elif kind == KIND_REPLY:
                a[1] += n
            elif kind == KIND_GRATUITOUS:
                a[2] += n
            elif kind == KIND_PROBE:
                a[3] += n

        windows = []
        for (ifindex, ip, vlan, d), (req, rep, grat, probes, senders) in acc.items():
            top = sorted(senders.items(), key=lambda s: (-s[1], s[0]))[: self.top_senders]
            windows.append(TargetWindow(
                key=WindowKey(ifindex, DIRECTIONS.get(d, str(d)), vlan, ip),
                interface=self.ifnames.get(ifindex, str(ifindex)),
                interval_s=interval_s,
                requests=req, replies=rep, gratuitous=grat, probes=probes,
                senders=len(senders), top_senders=top,
            ))
        windows.sort(key=lambda w: (-w.requests, -w.probes, w.key.ip, w.key.ifindex, w.key.direction))

        ph = prev.health if prev else {}
        health = {k: v - ph.get(k, 0) for k, v in snap.health.items()}
        return Interval(
            interval_s=interval_s, windows=windows, health=health, health_total=dict(snap.health),
            entries_live=len(snap.entries),
            entries_evicted=max(0, snap.health.get("inserts", 0) - len(snap.entries)),
            targets_live=len(targets),
        )


def select(windows: list[TargetWindow], top: int, min_requests: int) -> list[TargetWindow]:
    """The bounded set that becomes `arp_sensor.target` events: at most `top`, each with at least
    `min_requests` requests (probes count as requests here: a probe storm is a storm too)."""
    chosen = [w for w in windows if w.requests + w.probes >= min_requests]
    return chosen[:top] if top > 0 else chosen
