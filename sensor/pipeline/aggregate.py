"""Snapshots of cumulative kernel counters → per-interval TargetWindows. Pure Python + numpy, no bcc.

Deltas are taken per map entry: an entry whose first_seen_ns changed (or whose count went down) was
evicted and re-created by the kernel's LRU, so its delta is its current count.

Everything per entry is done with numpy on the snapshot's EntryTable (100k entries in a few
milliseconds, docs/benchmarks.md), and TargetWindow objects are built only when someone looks at them:
`Interval.windows` is a lazy, busiest-first sequence, and `select()` builds just the windows it returns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np

from sensor.kernel.layout import DIRECTIONS, KIND_GRATUITOUS, KIND_PROBE, KIND_REPLY, KIND_REQUEST
from sensor.kernel.reader import EntryTable, Snapshot, ip_text
from sensor.model import Interval, TargetWindow, WindowKey

_U64 = np.uint64
# Multipliers of a 64-bit mixing hash: entries are matched between snapshots by hash, then verified
# on the full key, so a collision costs a slow path, never a wrong count.
_M1, _M2 = _U64(0x9E3779B97F4A7C15), _U64(0xC2B2AE3D27D4EB4F)
# Rank of each octet's decimal text among all 256: dotted quads sort as text (the order the windows
# have always had: "198.18.0.10" < "198.18.0.9"), and text order is octet-by-octet text order.
_OCTET_RANK = np.empty(256, dtype=np.uint8)
_OCTET_RANK[sorted(range(256), key=str)] = np.arange(256, dtype=np.uint8)


def _ip_text_rank(ip: np.ndarray) -> np.ndarray:
    """A u64 per IP (wire bytes as little-endian u32) that orders like the dotted-quad text."""
    wire = np.ascontiguousarray(ip, dtype="<u4").view(np.uint8)  # first octet first
    return _OCTET_RANK[wire].view(">u4").astype(_U64)  # ranked octets, first one most significant


class _Sorted:
    """A snapshot's entries ordered by key hash: what the next interval's deltas are matched against."""

    __slots__ = ("count", "first", "h", "sel", "w0", "w1")

    def __init__(self, t: EntryTable) -> None:
        w0 = t.ifindex.astype(_U64) | (t.ip.astype(_U64) << _U64(32))
        w1 = (t.peer.astype(_U64) | (t.vlan.astype(_U64) << _U64(32)) | (t.dir.astype(_U64) << _U64(48))
              | (t.kind.astype(_U64) << _U64(56)))
        h = (w0 * _M1) ^ ((w1 + _M1) * _M2)
        order = np.argsort(h)
        self.sel = order  # table index of each sorted entry
        self.h, self.w0, self.w1 = h[order], w0[order], w1[order]
        self.count, self.first = t.count[order], t.first[order]

    def with_values(self, t: EntryTable) -> _Sorted:
        """The same keys in the same order, with the values of a table whose raw keys are identical."""
        new = object.__new__(_Sorted)
        new.h, new.w0, new.w1, new.sel = self.h, self.w0, self.w1, self.sel
        new.count, new.first = t.count[self.sel], t.first[self.sel]
        return new

    def __len__(self) -> int:
        return len(self.h)

    def drop_duplicates(self) -> None:
        """A key read twice in one batch read (evicted and re-created during the read): keep one."""
        if len(self.h) < 2:
            return
        dup = (self.h[1:] == self.h[:-1]) & (self.w0[1:] == self.w0[:-1]) & (self.w1[1:] == self.w1[:-1])
        if dup.any():
            keep = np.ones(len(self.h), dtype=bool)
            keep[1:][dup] = False
            for name in self.__slots__:
                setattr(self, name, getattr(self, name)[keep])

    def previous(self, prev: _Sorted) -> tuple[np.ndarray, np.ndarray]:
        """(count, first) of each entry in `prev`, (0, 0) where it was not there."""
        n = len(self.h)
        if not len(prev) or not n:
            return np.zeros(n, _U64), np.zeros(n, _U64)
        pos = np.minimum(np.searchsorted(prev.h, self.h), len(prev) - 1)
        same_hash = prev.h[pos] == self.h
        hit = same_hash & (prev.w0[pos] == self.w0) & (prev.w1[pos] == self.w1)
        for i in np.flatnonzero(same_hash & ~hit):  # two keys share a hash: find the right one
            j = int(pos[i])
            while j < len(prev) and prev.h[j] == self.h[i]:
                if prev.w0[j] == self.w0[i] and prev.w1[j] == self.w1[i]:
                    pos[i], hit[i] = j, True
                    break
                j += 1
        return np.where(hit, prev.count[pos], _U64(0)), np.where(hit, prev.first[pos], _U64(0))


def _target_groups(cur: _Sorted) -> tuple:
    """Key fields of the sorted entries, and each entry's target: (ifindex, ip, vlan, dir) packed
    exactly into one u64 (while ifindex < 2^19), grouped by np.unique."""
    ifindex = cur.w0 & _U64(0xFFFFFFFF)
    ip = cur.w0 >> _U64(32)
    vlan = (cur.w1 >> _U64(32)) & _U64(0xFFFF)
    d = (cur.w1 >> _U64(48)) & _U64(0xFF)
    kind = cur.w1 >> _U64(56)
    small_if = ifindex if not len(ifindex) or int(ifindex.max()) < (1 << 19) else \
        np.unique(ifindex, return_inverse=True)[1].astype(_U64)
    tkey = (ip << _U64(32)) | (small_if << _U64(13)) | ((vlan & _U64(0xFFF)) << _U64(1)) | (d & _U64(1))
    if len(vlan) and (int(vlan.max()) > 0xFFF or int(d.max()) > 1):  # cannot happen with our kernel program
        tkey = np.unique(np.stack([ip, ifindex, vlan, d], axis=1), axis=0, return_inverse=True)[1].astype(_U64)
    utk, tinv = np.unique(tkey, return_inverse=True)
    return ifindex, ip, vlan, d, kind, tinv.reshape(-1), len(utk)


class WindowList(Sequence[TargetWindow]):
    """Busiest-first TargetWindows of one interval, built on access (and kept once built)."""

    def __init__(self, agg: Aggregator, interval_s: float, cols: dict[str, np.ndarray], order: np.ndarray,
                 req_entries: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        self._agg = agg
        self.interval_s = interval_s
        self.cols = cols  # per window, unordered: ifindex, ip, vlan, dir, requests, replies, ...
        self.order = order  # the row in cols of the i-th busiest window
        self._req = req_entries  # active request entries: (window index, sender ip, requests)
        self._starts: np.ndarray | None = None
        self._as_lists: dict[str, list] | None = None
        self._built: list[TargetWindow | None] = [None] * len(cols["requests"])

    def __len__(self) -> int:
        return len(self._built)

    @overload
    def __getitem__(self, i: int) -> TargetWindow: ...
    @overload
    def __getitem__(self, i: slice) -> list[TargetWindow]: ...
    def __getitem__(self, i: int | slice) -> TargetWindow | list[TargetWindow]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("window index out of range")
        w = self._built[i]
        if w is None:
            w = self._built[i] = self._build(i)
        return w

    def __iter__(self) -> Iterator[TargetWindow]:
        if len(self) > 64 and None in self._built:
            self._build_all()  # walking everything: convert columns once instead of per window
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"WindowList({len(self)} windows)"

    def _group(self) -> None:
        """Request entries ordered by window, and where each window's run starts (once, when needed)."""
        if self._starts is None:
            widx, peer, n = self._req
            o = np.argsort(widx, kind="stable")
            self._req = (widx[o], peer[o], n[o])
            self._starts = np.searchsorted(self._req[0], np.arange(len(self) + 1))

    def _lists(self) -> dict[str, list]:
        if self._as_lists is None:
            self._group()
            _widx, peer, n = self._req
            self._as_lists = {k: v[self.order].tolist() for k, v in self.cols.items()}
            self._as_lists.update(starts=self._starts.tolist(), peer=peer.tolist(), n=n.tolist())
        return self._as_lists

    def _build(self, i: int) -> TargetWindow:
        c = self._lists() if self._as_lists is not None or len(self) <= 64 else None
        if c is None:  # one window out of many: index the arrays, do not convert them all
            c, row = self.cols, int(self.order[i])
            vals = {k: int(c[k][row]) for k in ("ifindex", "dir", "vlan", "ip", "requests", "replies",
                                                 "gratuitous", "probes", "senders")}
        else:
            vals = {k: c[k][i] for k in ("ifindex", "dir", "vlan", "ip", "requests", "replies", "gratuitous",
                                          "probes", "senders")}
        ifindex, d = vals["ifindex"], vals["dir"]
        return TargetWindow(
            key=WindowKey(ifindex, DIRECTIONS.get(d, str(d)), vals["vlan"], ip_text(vals["ip"])),
            interface=self._agg.ifnames.get(ifindex, str(ifindex)),
            interval_s=self.interval_s,
            requests=vals["requests"], replies=vals["replies"], gratuitous=vals["gratuitous"],
            probes=vals["probes"], senders=vals["senders"], top_senders=self._top(i),
        )

    def _build_all(self) -> None:
        c = self._lists()
        names, ifnames, interval_s, top_n = DIRECTIONS, self._agg.ifnames, self.interval_s, self._agg.top_senders
        starts, peer, n = c["starts"], c["peer"], c["n"]
        built = self._built
        for i, (ifindex, d, vlan, ip, req, rep, grat, probes, senders) in enumerate(zip(
                c["ifindex"], c["dir"], c["vlan"], c["ip"], c["requests"], c["replies"], c["gratuitous"],
                c["probes"], c["senders"], strict=True)):
            if built[i] is not None:
                continue
            lo, hi = starts[i], starts[i + 1]
            if hi - lo == 1:
                top = [(ip_text(peer[lo]), n[lo])] if top_n > 0 else []
            else:
                top = sorted(((ip_text(p), m) for p, m in zip(peer[lo:hi], n[lo:hi], strict=True)),
                             key=lambda s: (-s[1], s[0]))[:top_n]
            built[i] = TargetWindow(WindowKey(ifindex, names.get(d, str(d)), vlan, ip_text(ip)),
                                    ifnames.get(ifindex, str(ifindex)), interval_s, req, rep, grat, probes,
                                    senders, top)

    def _top(self, i: int) -> list[tuple[str, int]]:
        widx, peer, n = self._req
        if self._starts is not None:
            lo, hi = int(self._starts[i]), int(self._starts[i + 1])
            peers, counts = peer[lo:hi], n[lo:hi]
        else:  # a few windows out of many: pick their entries, do not sort them all
            m = widx == i
            peers, counts = peer[m], n[m]
        senders = [(ip_text(p), c) for p, c in zip(peers.tolist(), counts.tolist(), strict=True)]
        senders.sort(key=lambda s: (-s[1], s[0]))
        return senders[: self._agg.top_senders]

    def chosen(self, top: int, min_requests: int) -> list[TargetWindow]:
        c = self.cols
        idx = np.flatnonzero((c["requests"] + c["probes"] >= min_requests)[self.order])
        if top > 0:
            idx = idx[:top]
        return [self[int(i)] for i in idx]


class Aggregator:
    def __init__(self, ifnames: dict[int, str], top_senders: int = 5) -> None:
        self.ifnames = ifnames
        self.top_senders = top_senders
        self.prev: Snapshot | None = None
        self._prev_sorted: _Sorted | None = None
        self._prev_raw: bytes | None = None
        self._groups: tuple = ()

    def update(self, snap: Snapshot) -> Interval:
        prev = self.prev
        self.prev = snap
        interval_s = snap.mono - prev.mono if prev else 0.0

        t = snap.table
        prev_s = self._prev_sorted
        if prev_s is not None and t.raw_keys is not None and t.raw_keys == self._prev_raw:
            # The same entries in the same order as last time (a storm's steady state): every per-key
            # result (order, matching, target groups) carries over; only the values are new.
            cur = prev_s.with_values(t)
            old_count, old_first = prev_s.count, prev_s.first
            groups = self._groups
        else:
            cur = _Sorted(t)
            cur.drop_duplicates()
            if prev_s is not None:
                old_count, old_first = cur.previous(prev_s)
            else:
                old_count = old_first = np.zeros(len(cur), _U64)
            groups = _target_groups(cur)
        self._prev_sorted, self._prev_raw, self._groups = cur, t.raw_keys, groups
        # Absent before: old (0, 0), so the whole count is new either way.
        delta = np.where((old_first == cur.first) & (cur.count >= old_count), cur.count - old_count, cur.count)
        ifindex, ip, vlan, d, kind, tinv, ntargets = groups

        active = delta > 0
        a_idx = np.flatnonzero(active)
        a_t, a_kind, a_n = tinv[a_idx], kind[a_idx], delta[a_idx]
        sums = {}
        for name, k in (("requests", KIND_REQUEST), ("replies", KIND_REPLY), ("gratuitous", KIND_GRATUITOUS),
                        ("probes", KIND_PROBE)):
            m = a_kind == k
            sums[name] = np.bincount(a_t[m], weights=a_n[m].astype(np.float64), minlength=ntargets).astype(np.int64)
        is_req = a_kind == KIND_REQUEST
        sums["senders"] = np.bincount(a_t[is_req], minlength=ntargets)

        # One representative entry per target for its fields; windows = targets with activity.
        rep = np.zeros(ntargets, dtype=np.int64)
        rep[tinv] = np.arange(len(tinv))
        has = np.zeros(ntargets, dtype=bool)
        has[a_t] = True
        w = np.flatnonzero(has)
        rep_w = rep[w]
        cols = {"ifindex": ifindex[rep_w], "ip": ip[rep_w], "vlan": vlan[rep_w], "dir": d[rep_w]}
        cols.update({k: v[w] for k, v in sums.items()})
        order = self._order(cols)

        # Active request entries by their window's final position: the top senders, sorted out lazily.
        pos_of_target = np.full(ntargets, -1, dtype=np.int64)
        pos_of_target[w[order]] = np.arange(len(w))
        req_entries = (pos_of_target[a_t[is_req]], cur.w1[a_idx[is_req]] & _U64(0xFFFFFFFF), a_n[is_req])

        ph = prev.health if prev else {}
        health = {k: v - ph.get(k, 0) for k, v in snap.health.items()}
        live = len(cur)
        return Interval(
            interval_s=interval_s, windows=WindowList(self, interval_s, cols, order, req_entries), health=health,
            health_total=dict(snap.health), entries_live=live,
            entries_evicted=max(0, snap.health.get("inserts", 0) - live), targets_live=ntargets,
        )

    @staticmethod
    def _order(cols: dict[str, np.ndarray]) -> np.ndarray:
        """Busiest first: requests, probes (both descending), then IP (as text), ifindex, direction
        name, VLAN — a total order, so output is stable interval to interval."""
        if not len(cols["requests"]):
            return np.zeros(0, dtype=np.int64)
        dir_names = sorted({int(x) for x in np.unique(cols["dir"])}, key=lambda x: DIRECTIONS.get(x, str(x)))
        dir_rank = np.zeros(int(cols["dir"].max()) + 1, dtype=np.uint64)
        dir_rank[dir_names] = np.arange(len(dir_names), dtype=np.uint64)
        req, probes = cols["requests"], cols["probes"]
        # Three packed u64 keys instead of six: ip text rank (32 bits) + ifindex (32); direction + VLAN.
        k2 = (_ip_text_rank(cols["ip"]) << _U64(32)) | cols["ifindex"]
        k3 = (dir_rank[cols["dir"].astype(np.int64)] << _U64(16)) | cols["vlan"]
        if int(req.max()) < 1 << 32 and int(probes.max()) < 1 << 32:
            top = _U64(0xFFFFFFFF)
            k1 = ((top - req.astype(_U64)) << _U64(32)) | (top - probes.astype(_U64))
            return np.lexsort((k3, k2, k1))
        return np.lexsort((k3, k2, -probes, -req))  # 4 billion frames for one IP in one interval


def select(windows: Sequence[TargetWindow], top: int, min_requests: int) -> list[TargetWindow]:
    """The bounded set that becomes `arp_sensor.target` events: at most `top`, each with at least
    `min_requests` requests (probes count as requests here: a probe storm is a storm too)."""
    if isinstance(windows, WindowList):  # only the chosen windows get built
        return windows.chosen(top, min_requests)
    chosen = [w for w in windows if w.requests + w.probes >= min_requests]
    return chosen[:top] if top > 0 else chosen
