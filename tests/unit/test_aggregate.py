"""Aggregation of cumulative per-CPU counters into per-interval windows (pure, no root)."""

from __future__ import annotations

from sensor.kernel.layout import KIND_GRATUITOUS, KIND_PROBE, KIND_REPLY, KIND_REQUEST
from sensor.kernel.reader import Snapshot
from sensor.pipeline.aggregate import Aggregator, select

T = "198.18.0.7"
Z = "0.0.0.0"
M = "02:00:00:00:00:01"


def snap(mono: float, entries=None, health=None) -> Snapshot:
    return Snapshot(mono, entries or {}, health or {})


def req(sender: str, target: str = T, ifindex: int = 3, vlan: int = 0, d: int = 0):
    return (ifindex, target, sender, vlan, d, KIND_REQUEST, M, 0)


def test_first_interval_counts_everything_since_attach():
    agg = Aggregator({3: "eth0"})
    agg.update(snap(0.0))
    iv = agg.update(snap(1.0, {req("198.18.0.1"): (3, 1), req("198.18.0.2"): (2, 1),
                               (3, T, Z, 0, 0, KIND_REPLY, M, 0): (1, 1)},
                         {"request": 5, "inserts": 3}))
    [w] = iv.windows
    assert (w.key.ip, w.key.direction, w.interface, w.requests, w.replies, w.senders) == (T, "ingress", "eth0", 5, 1, 2)
    assert w.top_senders == [("198.18.0.1", 3), ("198.18.0.2", 2)]
    assert w.requests_per_sec == 5.0
    assert iv.health == {"request": 5, "inserts": 3}
    assert (iv.entries_live, iv.entries_evicted, iv.targets_live) == (3, 0, 1)


def test_deltas_between_intervals():
    agg = Aggregator({3: "eth0"})
    agg.update(snap(0.0, {req("198.18.0.1", d=1): (5, 111), (3, T, Z, 0, 1, KIND_PROBE, M, 0): (1, 5)}))
    iv = agg.update(snap(2.0, {req("198.18.0.1", d=1): (9, 111), (3, T, Z, 0, 1, KIND_PROBE, M, 0): (3, 5)}))
    [w] = iv.windows
    assert (w.requests, w.replies, w.probes, w.key.direction) == (4, 0, 2, "egress")
    assert w.requests_per_sec == 2.0


def test_idle_targets_produce_no_window_and_silent_senders_are_not_counted():
    agg = Aggregator({})
    agg.update(snap(0.0, {req("198.18.0.1"): (5, 1), req("198.18.0.2"): (1, 1)}))
    iv = agg.update(snap(1.0, {req("198.18.0.1"): (5, 1), req("198.18.0.2"): (4, 1)}))
    [w] = iv.windows
    assert (w.requests, w.senders, w.top_senders) == (3, 1, [("198.18.0.2", 3)])
    assert agg.update(snap(2.0, {req("198.18.0.1"): (5, 1), req("198.18.0.2"): (4, 1)})).windows == []


def test_evicted_and_recreated_entry_counts_from_zero():
    """first_seen_ns changed: the LRU evicted the entry and the kernel re-created it, so the whole
    current count is new, even though it is smaller than before."""
    agg = Aggregator({})
    agg.update(snap(0.0, {req("198.18.0.1"): (50, 111)}))
    [w] = agg.update(snap(1.0, {req("198.18.0.1"): (3, 222)})).windows
    assert w.requests == 3


def test_evictions_are_inserts_minus_live_entries():
    agg = Aggregator({})
    iv = agg.update(snap(0.0, {req("198.18.0.1"): (1, 1)}, health={"inserts": 40}))
    assert iv.entries_evicted == 39


def test_kinds_vlans_and_directions_are_kept_apart():
    agg = Aggregator({})
    agg.update(snap(0.0))
    iv = agg.update(snap(1.0, {req("198.18.0.1"): (1, 1), req("198.18.0.1", vlan=100): (2, 1),
                               req("198.18.0.1", d=1): (3, 1), (3, T, Z, 0, 0, KIND_GRATUITOUS, M, 0): (7, 1)}))
    got = {(w.key.vlan, w.key.direction): (w.requests, w.gratuitous) for w in iv.windows}
    assert got == {(0, "ingress"): (1, 7), (100, "ingress"): (2, 0), (0, "egress"): (3, 0)}
    assert [w.requests for w in iv.windows] == [3, 2, 1]  # busiest first


def test_select_bounds_the_volume():
    agg = Aggregator({})
    agg.update(snap(0.0))
    entries = {req("198.18.0.1", target=f"198.18.1.{i}"): (i, 1) for i in range(1, 30)}
    entries[(3, "198.18.2.1", Z, 0, 0, KIND_REPLY, M, 0)] = (4, 1)
    iv = agg.update(snap(1.0, entries))
    assert [w.requests for w in select(iv.windows, top=5, min_requests=1)] == [29, 28, 27, 26, 25]
    assert len(select(iv.windows, top=0, min_requests=25)) == 5
    assert len(select(iv.windows, top=0, min_requests=1)) == 29  # the reply-only IP asked for nothing
    assert len(select(iv.windows, top=0, min_requests=0)) == 30


def test_entry_hash_spreads_keys_that_differ_only_in_addresses():
    """Entries are matched between reads by a 64-bit hash, verified on the key; keys that share a hash go
    through a Python loop. A grid of 400 targets x 50 senders (the shape of a storm) must not collide: a
    multiply-only hash left IPv4 bits (the high halves of their words) in 16 bits of the hash, and the
    100k-entry grid took seconds per interval to match."""
    import numpy as np

    from sensor.kernel.reader import EntryTable, v4_words
    from sensor.pipeline.aggregate import _Sorted

    n = 20_000
    ip = np.array([int.from_bytes(bytes([198, 18, 1 + i // 50 // 256, i // 50 % 256]), "little") for i in range(n)],
                  dtype=np.uint32)
    peer = np.array([int.from_bytes(bytes([198, 18, 0, 10 + i % 50]), "little") for i in range(n)], dtype=np.uint32)
    t = EntryTable(np.ones(n, np.uint32), v4_words(ip), v4_words(peer), np.zeros(n, np.uint16), np.zeros(n, np.uint8),
                   np.zeros(n, np.uint8), np.ones(n, np.uint64), np.ones(n, np.uint64))
    assert len(np.unique(_Sorted(t).h)) == n
