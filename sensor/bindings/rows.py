"""The interval's active kernel entries grouped for the bindings engine (numpy: loaded when a stage runs,
not when the CLI parses its options).

The entries come as sensor.model.ActiveEntries: the aggregator's six key words and each entry's delta.
A request (ND: a solicitation) claims its sender (`peer`), every other kind the key's `ip`; the ND kinds
have the ARP kinds' numbers, so both families go through the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from sensor.bindings.engine import BindingKey, Sighting, ecs_mac
from sensor.kernel.layout import KEY_F_MAC_MISMATCH, KIND_GRATUITOUS, KIND_PROBE, KIND_REPLY, KIND_REQUEST
from sensor.kernel.reader import addr_text, addr_words
from sensor.model import ActiveEntries

KIND_NAMES = {KIND_REQUEST: "request", KIND_REPLY: "reply", KIND_GRATUITOUS: "gratuitous", KIND_PROBE: "probe"}
_U64 = np.uint64
_M, _M2 = _U64(0x9E3779B97F4A7C15), _U64(0xC2B2AE3D27D4EB4F)  # odd multipliers of the grouping hashes


Row = tuple[int, int, int, int, int]  # (ifindex | vlan << 32, address word 0, word 1, mac, kind)


class Grouping:
    """How one set of active entries groups (see group_rows); reused while the same entries are active."""

    __slots__ = ("first", "flagged", "inv", "order", "table")

    def __init__(self, words: np.ndarray) -> None:
        kind = words[:, 0] >> _U64(56)
        is_req = kind == _U64(KIND_REQUEST)
        a0 = np.where(is_req, words[:, 3], words[:, 1])  # the claimed address: a request's sender, else the key's
        a1 = np.where(is_req, words[:, 4], words[:, 2])
        cols = (words[:, 0] & _U64(0xFFFF_FFFF_FFFF), a0, a1, words[:, 5] & _U64((1 << 48) - 1), kind)
        # Group equal rows by two independent 64-bit mixes of the row: one sort of one u64 column instead
        # of np.unique(axis=0) over void records (several times slower); rows are equal when both mixes
        # are (a false merge needs a 128-bit collision). Equal h1 with different h2 can interleave after
        # the sort and split a row into two groups, which the engine sums again: still exact.
        h1, h2 = cols[0] * _M, (cols[0] + _M) * _M2
        for c in cols[1:]:
            h1 = (h1 ^ c) * _M
            h2 = (h2 ^ c) * _M2
        self.order = np.argsort(h1)
        h1, h2 = h1[self.order], h2[self.order]
        start = np.ones(len(self.order), dtype=bool)
        start[1:] = (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1])
        self.first = self.order[np.flatnonzero(start)]
        self.inv = np.cumsum(start) - 1
        mismatch = ((words[:, 5] >> _U64(48)) & _U64(KEY_F_MAC_MISMATCH)) != 0
        flagged = np.bincount(self.inv, weights=mismatch[self.order].astype(np.float64),
                              minlength=len(self.first)) > 0
        self.flagged = flagged
        self.table = np.stack([c[self.first] for c in cols], axis=1)  # one row per group

    def sums(self, count: np.ndarray) -> np.ndarray:
        return np.bincount(self.inv, weights=count[self.order].astype(np.float64),
                           minlength=len(self.first)).astype(np.int64)

    def select(self, count: np.ndarray) -> tuple[list[Row], list[int], list[bool]]:
        """The groups as Python rows, their frame counts and mismatch flags."""
        rows = [tuple(r) for r in self.table.tolist()]
        return rows, self.sums(count).tolist(), self.flagged.tolist()  # type: ignore[return-value]


def _prefilter(words: np.ndarray, bound: Callable[[], np.ndarray], room: int) -> tuple[np.ndarray, int]:
    """When the entries could hold more new IPs than there is room for: keep the entries whose IP is bound
    (or that are probes, or flagged), plus those of at most `room` new IPs; the rest are left out here, in
    numpy — a flood of spoofed sender IPs never reaches Python. Returns (which entries, new IPs left out)."""
    kind = words[:, 0] >> _U64(56)
    is_req = kind == _U64(KIND_REQUEST)
    kh = key_hashes(words[:, 0] & _U64(0xFFFF_FFFF_FFFF), np.where(is_req, words[:, 3], words[:, 1]),
                    np.where(is_req, words[:, 4], words[:, 2]))
    special = (kind == _U64(KIND_PROBE)) | (((words[:, 5] >> _U64(48)) & _U64(KEY_F_MAC_MISMATCH)) != 0)
    sel = np.isin(kh, bound()) | special
    new = np.flatnonzero(~sel)
    if not len(new):
        return sel, 0
    new_keys = np.unique(kh[new])
    sel[new[np.isin(kh[new], new_keys[:max(0, room)])]] = True
    return sel, max(0, len(new_keys) - max(0, room))


def key_hashes(ifv: np.ndarray, a0: np.ndarray, a1: np.ndarray) -> np.ndarray:
    """A 64-bit mix of (ifindex | vlan << 32, address words): what a binding's key is, as the rows have it."""
    return ((((ifv * _M) ^ a0) * _M) ^ a1) * _M


def binding_hashes(keys: Iterable[BindingKey], ifindex: dict[str, int]) -> np.ndarray:
    """key_hashes of bindings (interface name, VLAN, IP text), sorted; keys of unwatched interfaces skipped."""
    ifv, w0, w1 = [], [], []
    for name, vlan, ip in keys:
        ifx = ifindex.get(name)
        if ifx is None:
            continue
        a0, a1 = addr_words(ip)
        ifv.append(ifx | vlan << 32)
        w0.append(a0)
        w1.append(a1)
    return np.sort(key_hashes(np.array(ifv, dtype=_U64), np.array(w0, dtype=_U64), np.array(w1, dtype=_U64)))


def _kept(words: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Which entries claim or probe something and counted frames."""
    return np.isin(words[:, 0] >> _U64(56), np.array(list(KIND_NAMES), dtype=_U64)) & (count > 0)


def group_rows(words: np.ndarray, count: np.ndarray) -> tuple[list[Row], list[int], list[bool]]:
    """This interval's active entries (sensor.pipeline.aggregate.ActiveEntries: the six key words and the
    delta of each) grouped per (interface, VLAN, claimed IP, MAC, kind): the rows, their frame counts,
    and whether any of their entries carried KEY_F_MAC_MISMATCH. A request (ND: a solicitation) claims
    its sender (`peer`), every other kind the key's `ip`. Both families: ND kinds have the ARP kinds'
    numbers."""
    keep = _kept(words, count)
    if not keep.any():
        return [], [], []
    return Grouping(words[keep]).select(count[keep])


def name_row(row: Row, ifnames: dict[int, str]) -> tuple[BindingKey, str]:
    """(interface name, VLAN, IP text) and the ECS MAC of a grouped row."""
    ifv, a0, a1, m, _kind = row
    ifx = ifv & 0xFFFFFFFF
    return (ifnames.get(ifx, str(ifx)), ifv >> 32, addr_text(a0, a1)), ecs_mac(m.to_bytes(6, "little"))


def sightings(words: np.ndarray, count: np.ndarray, ifnames: dict[int, str]) -> list[Sighting]:
    """The active entries as Sightings (see group_rows)."""
    rows, sums, flagged = group_rows(words, count)
    out = []
    for row, n, mm in zip(rows, sums, flagged, strict=True):
        key, mac = name_row(row, ifnames)
        out.append(Sighting(*key, mac, KIND_NAMES[row[4]], n, mm))
    return out


class Grouper:
    """group_rows, reusing the last grouping while the same entries are active (a storm's steady state:
    the aggregator's key set unchanged, the same entries with new frames): then only the counts are summed."""

    def __init__(self) -> None:
        self._last: tuple | None = None  # (keyset, active index, Grouping, kept mask)

    def group(self, a: ActiveEntries, bound: Callable[[], np.ndarray], room: int, version: int
              ) -> tuple[list[Row], list[int], list[bool], int]:
        """Rows, counts, mismatch flags, and how many new IPs were left out for want of room (`bound()`:
        the bindings' key hashes, sorted, asked for only when the entries outnumber `room`; `version`:
        the engine's, so a changed set of bindings regroups)."""
        last = self._last
        if not (last is not None and a.index is not None and last[0] == a.keyset and last[4] == version
                and np.array_equal(last[1], a.index)):
            keep = _kept(a.words, a.count)
            dropped = 0
            if int(keep.sum()) > room:
                sel, dropped = _prefilter(a.words[keep], bound, room)
                keep[np.flatnonzero(keep)[~sel]] = False
            if not keep.any():
                self._last = None
                return [], [], [], dropped
            last = self._last = (a.keyset, a.index, Grouping(a.words[keep]), keep, version, dropped)
        g, keep = last[2], last[3]
        return (*g.select(a.count[keep]), last[5])
