"""Snapshots of cumulative kernel counters → per-interval TargetWindows. Pure Python + numpy, no bcc.

Deltas are taken per map entry: an entry whose first_seen_ns changed (or whose count went down) was
evicted and re-created by the kernel's LRU, so its delta is its current count.

Everything per entry is done with numpy on the snapshot's EntryTable (100k entries in a few
milliseconds, docs/benchmarks.md), and TargetWindow objects are built only when someone looks at them:
`Interval.windows` is a lazy, busiest-first sequence, and `select()` builds just the windows it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np

from sensor.kernel.layout import DIR_EGRESS, DIRECTIONS, KIND_GRATUITOUS, KIND_PROBE, KIND_REPLY, KIND_REQUEST
from sensor.kernel.reader import EntryTable, Snapshot, addr_text, ip_text, is_v4
from sensor.model import ActiveEntries, Interval, TargetWindow, WindowKey

_U64 = np.uint64
# Multipliers of a 64-bit mixing hash: entries are matched between snapshots by hash, then verified
# on the full key, so a collision costs a slow path, never a wrong count.
_M1, _M2 = _U64(0x9E3779B97F4A7C15), _U64(0xC2B2AE3D27D4EB4F)
# Rank of each octet's decimal text among all 256: dotted quads sort as text (the order the windows
# have always had: "198.18.0.10" < "198.18.0.9"), and text order is octet-by-octet text order.
_OCTET_RANK = np.empty(256, dtype=np.uint8)
_OCTET_RANK[sorted(range(256), key=str)] = np.arange(256, dtype=np.uint8)
# Address codes: an IPv4 address is its wire bytes read as a little-endian u32 (as the kernel key holds
# it); an IPv6 address is _V6_CODE + its index in the key set's list of IPv6 addresses.
_V6_CODE = 1 << 32


def _ip_text_rank(ip: np.ndarray, text=ip_text) -> np.ndarray:
    """A u64 per address code (see _Groups) that orders like the address text."""
    if not len(ip) or int(ip.max()) < _V6_CODE:
        wire = np.ascontiguousarray(ip, dtype="<u4").view(np.uint8)  # first octet first
        return _OCTET_RANK[wire].view(">u4").astype(_U64)  # ranked octets, first one most significant
    texts = np.array([text(c) for c in ip.tolist()])
    return np.unique(texts, return_inverse=True)[1].reshape(-1).astype(_U64)


def _words(t: EntryTable) -> np.ndarray:
    """Each key as six u64 words: (ifindex, vlan, dir, kind), ip (2 words), peer (2 words),
    (mac, flags, family)."""
    w = np.empty((len(t), 6), dtype=_U64)
    w[:, 0] = (t.ifindex.astype(_U64) | (t.vlan.astype(_U64) << _U64(32)) | (t.dir.astype(_U64) << _U64(48))
               | (t.kind.astype(_U64) << _U64(56)))
    w[:, 1:3], w[:, 3:5] = t.ip, t.peer
    w[:, 5] = t.mac.astype(_U64) | (t.flags.astype(_U64) << _U64(48)) | (t.family.astype(_U64) << _U64(56))
    return w


class _Sorted:
    """A snapshot's entries ordered by key hash (words as _words): what the next interval's deltas are
    matched against."""

    __slots__ = ("count", "first", "h", "sel", "w")

    def __init__(self, t: EntryTable) -> None:
        w = _words(t)
        # Each round folds the product's high half down: a multiply alone carries bits only upwards, so
        # keys differing in the high halves of words (IPv4 addresses sit there) would share a hash, and the
        # exact-match fallback in previous() is a Python loop.
        h = np.zeros(len(w), dtype=_U64)
        for j in range(6):
            h = (h ^ w[:, j]) * _M1
            h ^= h >> _U64(32)
        h *= _M2
        order = np.argsort(h)
        self.sel = order  # table index of each sorted entry
        self.h, self.w = h[order], w[order]
        self.count, self.first = t.count[order], t.first[order]

    def with_values(self, t: EntryTable) -> _Sorted:
        """The same keys in the same order, with the values of a table whose raw keys are identical."""
        new = object.__new__(_Sorted)
        new.h, new.w, new.sel = self.h, self.w, self.sel
        new.count, new.first = t.count[self.sel], t.first[self.sel]
        return new

    def __len__(self) -> int:
        return len(self.h)

    def drop_duplicates(self) -> None:
        """A key read twice in one batch read (evicted and re-created during the read): keep one."""
        if len(self.h) < 2:
            return
        dup = (self.h[1:] == self.h[:-1]) & (self.w[1:] == self.w[:-1]).all(axis=1)
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
        hit = same_hash & (prev.w[pos] == self.w).all(axis=1)
        for i in np.flatnonzero(same_hash & ~hit):  # two keys share a hash: find the right one
            j = int(pos[i])
            while j < len(prev) and prev.h[j] == self.h[i]:
                if (prev.w[j] == self.w[i]).all():
                    pos[i], hit[i] = j, True
                    break
                j += 1
        return np.where(hit, prev.count[pos], _U64(0)), np.where(hit, prev.first[pos], _U64(0))


def _addr_codes(words: np.ndarray, v6: list[str]) -> np.ndarray:
    """Address codes (see _V6_CODE) of a 16-byte column; IPv6 texts are appended to v6."""
    v4 = is_v4(words)
    codes = words[:, 1] >> _U64(32)
    if not v4.all():
        rows = np.flatnonzero(~v4)
        uniq, inv = np.unique(words[rows], axis=0, return_inverse=True)
        codes = codes.copy()
        codes[rows] = _U64(_V6_CODE + len(v6)) + inv.reshape(-1).astype(_U64)
        v6.extend(addr_text(int(a), int(b)) for a, b in uniq.tolist())
    return codes


class _Groups:
    """Per key set (reused while the rows stay the same): the rows are the LRU entries, then the fast
    path's rows. Each row's fields as address codes, its target, and — when one (target, sender) pair
    has several rows (several MACs asked, flags differ, a key counted on several CPUs' fast paths or in
    both places) — its pair, so senders are counted once per IP."""

    def __init__(self, w: np.ndarray) -> None:
        self.w = w  # the rows' key words (LRU entries, then fast-path rows)
        self.ifindex = w[:, 0] & _U64(0xFFFFFFFF)
        self.vlan = (w[:, 0] >> _U64(32)) & _U64(0xFFFF)
        self.d = (w[:, 0] >> _U64(48)) & _U64(0xFF)
        self.kind = w[:, 0] >> _U64(56)
        self.v6: list[str] = []
        self.ip = _addr_codes(w[:, 1:3], self.v6)
        self.peer = _addr_codes(w[:, 3:5], self.v6)
        ifindex, ip, vlan, d = self.ifindex, self.ip, self.vlan, self.d
        small_if = ifindex if not len(ifindex) or int(ifindex.max()) < (1 << 19) else \
            np.unique(ifindex, return_inverse=True)[1].reshape(-1).astype(_U64)
        tkey = (ip << _U64(32)) | (small_if << _U64(13)) | ((vlan & _U64(0xFFF)) << _U64(1)) | (d & _U64(1))
        if len(vlan) and (int(vlan.max()) > 0xFFF or int(d.max()) > 1 or int(ip.max()) >= _V6_CODE):
            tkey = np.unique(np.stack([ip, ifindex, vlan, d], axis=1), axis=0,
                             return_inverse=True)[1].reshape(-1).astype(_U64)
        utk, tinv = np.unique(tkey, return_inverse=True)
        self.tinv, self.ntargets = tinv.reshape(-1), len(utk)
        # Pairs: request entries by (target, sender IP); None while every pair has one entry.
        req = np.flatnonzero(self.kind == KIND_REQUEST)
        self.pinv: np.ndarray | None = None
        if len(req):
            if int(self.peer[req].max()) < _V6_CODE:  # one sort of u64s
                upk, pinv = np.unique((self.tinv[req].astype(_U64) << _U64(32)) | self.peer[req],
                                      return_inverse=True)
                upk = np.stack([upk >> _U64(32), upk & _U64(0xFFFFFFFF)], axis=1)
            else:
                upk, pinv = np.unique(np.stack([self.tinv[req].astype(_U64), self.peer[req]], axis=1), axis=0,
                                      return_inverse=True)
            if len(upk) < len(req):
                self.pinv = np.full(len(w), -1, dtype=np.int64)
                self.pinv[req] = pinv.reshape(-1)
                self.pair_target, self.pair_peer = upk[:, 0].astype(np.int64), upk[:, 1]

    def text(self, code: int) -> str:
        return ip_text(code) if code < _V6_CODE else self.v6[code - _V6_CODE]


@dataclass
class IPSums:
    """One interval per IP (WindowList.by_ip): address codes (_V6_CODE), sums over the IP's windows, the
    senders of any request (proof they are alive), code -> text, and the senders of some IPs."""

    codes: np.ndarray
    requests: np.ndarray
    replies: np.ndarray
    alive: np.ndarray  # replies + gratuitous
    senders: np.ndarray  # the most distinct senders in one of its windows
    own: np.ndarray  # requests on egress: this host's own
    askers: np.ndarray  # codes
    text: Callable[[int], str]
    tops: Callable[[Sequence[int]], dict[int, dict[str, int]]]


class WindowList(Sequence[TargetWindow]):
    """Busiest-first TargetWindows of one interval, built on access (and kept once built)."""

    def __init__(self, agg: Aggregator, interval_s: float, cols: dict[str, np.ndarray], order: np.ndarray,
                 req_entries: tuple[np.ndarray, np.ndarray, np.ndarray], text=ip_text) -> None:
        self._agg = agg
        self._text = text  # address code -> text
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
            key=WindowKey(ifindex, DIRECTIONS.get(d, str(d)), vals["vlan"], self._text(vals["ip"])),
            interface=self._agg.ifnames.get(ifindex, str(ifindex)),
            interval_s=self.interval_s,
            requests=vals["requests"], replies=vals["replies"], gratuitous=vals["gratuitous"],
            probes=vals["probes"], senders=vals["senders"], top_senders=self._top(i),
        )

    def _build_all(self) -> None:
        c = self._lists()
        names, ifnames, interval_s, top_n = DIRECTIONS, self._agg.ifnames, self.interval_s, self._agg.top_senders
        starts, peer, n = c["starts"], c["peer"], c["n"]
        built, ip_text = self._built, self._text
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
        senders = [(self._text(p), c) for p, c in zip(peers.tolist(), counts.tolist(), strict=True)]
        senders.sort(key=lambda s: (-s[1], s[0]))
        return senders[: self._agg.top_senders]

    def by_ip(self) -> IPSums:
        """The interval summed per IP over its windows (interfaces, directions, VLANs) without building a
        TargetWindow: what the verdict engine needs for every IP, as arrays."""
        c = self.cols
        codes, inv = np.unique(c["ip"], return_inverse=True)
        inv = inv.reshape(-1)
        n = len(codes)

        def total(name: str) -> np.ndarray:
            return np.bincount(inv, weights=c[name].astype(np.float64), minlength=n).astype(np.int64)

        senders = np.zeros(n, dtype=np.int64)
        np.maximum.at(senders, inv, c["senders"].astype(np.int64))
        replies = total("replies")
        askers = np.unique(self._req[1]) if len(self._req[1]) else np.zeros(0, _U64)
        def tops(ks: Sequence[int]) -> dict[int, dict[str, int]]:
            """Senders of the given IPs (indexes into codes) summed over their windows: evidence for a verdict
            (every sender, not each window's top few). One pass over the request entries for all of them."""
            widx, peer, m = self._req
            want = np.sort(np.asarray(ks, dtype=np.int64))
            out: dict[int, dict[str, int]] = {int(k): {} for k in want.tolist()}
            if not len(want) or not len(widx):
                return out
            ip_of = inv[self.order[widx]]  # request entry -> its window's IP index
            pos = np.minimum(np.searchsorted(want, ip_of), len(want) - 1)
            for k, p, c in zip(ip_of[want[pos] == ip_of].tolist(), peer[want[pos] == ip_of].tolist(),
                               m[want[pos] == ip_of].tolist(), strict=True):
                d = out[k]
                t = self._text(p)
                d[t] = d.get(t, 0) + int(c)
            return out

        egress = c["dir"] == DIR_EGRESS
        own = np.bincount(inv[egress], weights=c["requests"][egress].astype(np.float64), minlength=n).astype(np.int64)
        return IPSums(codes, total("requests"), replies, replies + total("gratuitous"), senders, own, askers,
                      self._text, tops)

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
        self._groups: _Groups | None = None
        self._keyset = 0  # counts key-set changes: the bindings stage reuses its grouping while it holds
        self._prev_fast_raw = b""

    def update(self, snap: Snapshot) -> Interval:
        prev = self.prev
        self.prev = snap
        interval_s = snap.mono - prev.mono if prev else 0.0

        t, f = snap.table, snap.fast
        fast_raw = f.raw_keys if f is not None and len(f) else b""
        prev_s = self._prev_sorted
        same = prev_s is not None and t.raw_keys is not None and t.raw_keys == self._prev_raw
        if same:
            # The same entries in the same order as last time (a storm's steady state): every per-key
            # result (order, matching) carries over; only the values are new.
            cur = prev_s.with_values(t)
            old_count, old_first = prev_s.count, prev_s.first
        else:
            cur = _Sorted(t)
            cur.drop_duplicates()
            if prev_s is not None:
                old_count, old_first = cur.previous(prev_s)
            else:
                old_count = old_first = np.zeros(len(cur), _U64)
        # Absent before: old (0, 0), so the whole count is new either way.
        delta = np.where((old_first == cur.first) & (cur.count >= old_count), cur.count - old_count, cur.count)
        if fast_raw:  # fast-path rows are deltas already: they follow the LRU rows
            delta = np.concatenate([delta, f.count.astype(_U64)])  # type: ignore[union-attr]
        groups = self._groups
        if not same or groups is None or fast_raw != self._prev_fast_raw:
            groups = _Groups(np.concatenate([cur.w, _words(f)]) if fast_raw else cur.w)  # type: ignore[arg-type]
            self._keyset += 1  # the rows (LRU entries, then fast-path rows) changed
        self._prev_sorted, self._prev_raw, self._groups, self._prev_fast_raw = cur, t.raw_keys, groups, fast_raw
        g = groups
        tinv, ntargets, kind = g.tinv, g.ntargets, g.kind

        active = delta > 0
        a_idx = np.flatnonzero(active)
        a_t, a_kind, a_n = tinv[a_idx], kind[a_idx], delta[a_idx]
        sums = {}
        for name, k in (("requests", KIND_REQUEST), ("replies", KIND_REPLY), ("gratuitous", KIND_GRATUITOUS),
                        ("probes", KIND_PROBE)):
            m = a_kind == k
            sums[name] = np.bincount(a_t[m], weights=a_n[m].astype(np.float64), minlength=ntargets).astype(np.int64)
        is_req = a_kind == KIND_REQUEST
        if g.pinv is None:  # one entry per (target, sender): entries are the senders
            req_t, req_peer, req_n = a_t[is_req], g.peer[a_idx[is_req]], a_n[is_req]
        else:  # a sender with several entries (MACs): sum them into its pair first
            pd = np.bincount(g.pinv[a_idx[is_req]], weights=a_n[is_req].astype(np.float64),
                             minlength=len(g.pair_target)).astype(_U64)
            ap = np.flatnonzero(pd)
            req_t, req_peer, req_n = g.pair_target[ap], g.pair_peer[ap], pd[ap]
        sums["senders"] = np.bincount(req_t, minlength=ntargets)

        # One representative entry per target for its fields; windows = targets with activity.
        rep = np.zeros(ntargets, dtype=np.int64)
        rep[tinv] = np.arange(len(tinv))
        has = np.zeros(ntargets, dtype=bool)
        has[a_t] = True
        w = np.flatnonzero(has)
        rep_w = rep[w]
        cols = {"ifindex": g.ifindex[rep_w], "ip": g.ip[rep_w], "vlan": g.vlan[rep_w], "dir": g.d[rep_w]}
        cols.update({k: v[w] for k, v in sums.items()})
        order = self._order(cols, g.text)

        # Active senders by their window's final position: the top senders, sorted out lazily.
        pos_of_target = np.full(ntargets, -1, dtype=np.int64)
        pos_of_target[w[order]] = np.arange(len(w))
        req_entries = (pos_of_target[req_t], req_peer, req_n)

        ph = prev.health if prev else {}
        health = {k: v - ph.get(k, 0) for k, v in snap.health.items()}
        live = len(cur)
        return Interval(
            interval_s=interval_s, windows=WindowList(self, interval_s, cols, order, req_entries, g.text),
            health=health, health_total=dict(snap.health), entries_live=live,
            entries_evicted=max(0, snap.health.get("inserts", 0) - live), targets_live=ntargets,
            active=ActiveEntries(g.w[a_idx], a_n, self._keyset, a_idx),
        )

    @staticmethod
    def _order(cols: dict[str, np.ndarray], text=ip_text) -> np.ndarray:
        """Busiest first: requests, probes (both descending), then IP (as text), ifindex, direction
        name, VLAN — a total order, so output is stable interval to interval."""
        if not len(cols["requests"]):
            return np.zeros(0, dtype=np.int64)
        dir_names = sorted({int(x) for x in np.unique(cols["dir"])}, key=lambda x: DIRECTIONS.get(x, str(x)))
        dir_rank = np.zeros(int(cols["dir"].max()) + 1, dtype=np.uint64)
        dir_rank[dir_names] = np.arange(len(dir_names), dtype=np.uint64)
        req, probes = cols["requests"], cols["probes"]
        # Three packed u64 keys instead of six: ip text rank (32 bits) + ifindex (32); direction + VLAN.
        k2 = (_ip_text_rank(cols["ip"], text) << _U64(32)) | cols["ifindex"]
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
