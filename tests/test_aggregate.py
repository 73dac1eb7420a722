"""Aggregation of cumulative per-CPU counters into per-interval windows (pure, no root)."""

from __future__ import annotations

from sensor.aggregate import Aggregator, select
from sensor.reader import Snapshot

T = "198.18.0.7"


def snap(mono: float, targets=None, pairs=None, health=None) -> Snapshot:
    return Snapshot(mono, targets or {}, pairs or {}, health or {})


def test_first_interval_counts_everything_since_attach():
    agg = Aggregator({3: "eth0"})
    agg.update(snap(0.0))
    iv = agg.update(snap(1.0, {(3, T, 0, 0): (5, 0, 0, 0, 111)},
                         {(3, "198.18.0.1", T, 0, 0): (3, 1), (3, "198.18.0.2", T, 0, 0): (2, 1)},
                         {"frames": 9, "target_inserts": 1}))
    [w] = iv.windows
    assert (w.key.ip, w.key.direction, w.interface, w.requests, w.senders) == (T, "ingress", "eth0", 5, 2)
    assert w.top_senders == [("198.18.0.1", 3), ("198.18.0.2", 2)]
    assert w.requests_per_sec == 5.0
    assert iv.health == {"frames": 9, "target_inserts": 1}
    assert iv.evicted_targets == 0


def test_deltas_between_intervals():
    agg = Aggregator({3: "eth0"})
    agg.update(snap(0.0, {(3, T, 0, 1): (5, 1, 0, 0, 111)}))
    iv = agg.update(snap(2.0, {(3, T, 0, 1): (9, 1, 0, 2, 111)}))
    [w] = iv.windows
    assert (w.requests, w.replies, w.probes, w.key.direction) == (4, 0, 2, "egress")
    assert w.requests_per_sec == 2.0


def test_idle_targets_produce_no_window():
    agg = Aggregator({})
    agg.update(snap(0.0, {(3, T, 0, 0): (5, 0, 0, 0, 111)}))
    assert agg.update(snap(1.0, {(3, T, 0, 0): (5, 0, 0, 0, 111)})).windows == []


def test_evicted_and_recreated_entry_counts_from_zero():
    """first_seen_ns changed: the LRU evicted the entry and the kernel re-created it, so the whole
    current value is new, even though it is smaller than before."""
    agg = Aggregator({})
    agg.update(snap(0.0, {(3, T, 0, 0): (50, 0, 0, 0, 111)}))
    [w] = agg.update(snap(1.0, {(3, T, 0, 0): (3, 0, 0, 0, 222)})).windows
    assert w.requests == 3


def test_evictions_are_inserts_minus_live_entries():
    agg = Aggregator({})
    iv = agg.update(snap(0.0, {(3, T, 0, 0): (1, 0, 0, 0, 1)}, health={"target_inserts": 40, "pair_inserts": 2}))
    assert iv.evicted_targets == 39 and iv.evicted_pairs == 2


def test_vlans_and_directions_are_kept_apart():
    agg = Aggregator({})
    agg.update(snap(0.0))
    iv = agg.update(snap(1.0, {(3, T, 0, 0): (1, 0, 0, 0, 1), (3, T, 100, 0): (2, 0, 0, 0, 1),
                               (3, T, 0, 1): (3, 0, 0, 0, 1)}))
    got = {(w.key.vlan, w.key.direction): w.requests for w in iv.windows}
    assert got == {(0, "ingress"): 1, (100, "ingress"): 2, (0, "egress"): 3}
    assert [w.requests for w in iv.windows] == [3, 2, 1]  # busiest first


def test_select_bounds_the_volume():
    agg = Aggregator({})
    agg.update(snap(0.0))
    iv = agg.update(snap(1.0, {(3, f"198.18.0.{i}", 0, 0): (i, 0, 0, 0, 1) for i in range(1, 30)}
                         | {(3, "198.18.1.1", 0, 0): (0, 4, 0, 0, 1)}))
    assert len(select(iv.windows, top=5, min_requests=1)) == 5
    assert [w.requests for w in select(iv.windows, top=5, min_requests=1)] == [29, 28, 27, 26, 25]
    assert len(select(iv.windows, top=0, min_requests=25)) == 5
    assert len(select(iv.windows, top=0, min_requests=1)) == 29  # the reply-only IP asked for nothing
    assert len(select(iv.windows, top=0, min_requests=0)) == 30
