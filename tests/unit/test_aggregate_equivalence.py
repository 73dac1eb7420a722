"""The vectorised aggregator (numpy over EntryTables) against the plain per-entry Python algorithm it
replaced, on random snapshot sequences: same windows, same order, same top senders, same counters."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.kernel.layout import DIRECTIONS, KEY_F_MAC_MISMATCH, KIND_GRATUITOUS, KIND_PROBE, KIND_REPLY, KIND_REQUEST
from sensor.kernel.reader import EntryTable, Snapshot
from sensor.model import TargetWindow, WindowKey
from sensor.pipeline.aggregate import Aggregator, select


def reference(prev: Snapshot | None, snap: Snapshot, ifnames: dict[int, str], top_senders: int = 5):
    """The per-entry algorithm of sensor/pipeline/aggregate.py before it was vectorised (commit d2cb028), with
    the VLAN as the last tie-break of the order (it used to leave VLAN ties in map order)."""
    interval_s = snap.mono - prev.mono if prev else 0.0
    pe = prev.entries if prev else {}
    acc: dict[tuple[int, str, int, int], list] = {}
    targets = set()
    for key, (count, first) in snap.entries.items():
        ifindex, ip, peer, vlan, d, kind, _mac, _flags = key
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
        top = sorted(senders.items(), key=lambda s: (-s[1], s[0]))[:top_senders]
        windows.append(TargetWindow(key=WindowKey(ifindex, DIRECTIONS.get(d, str(d)), vlan, ip),
                                    interface=ifnames.get(ifindex, str(ifindex)), interval_s=interval_s,
                                    requests=req, replies=rep, gratuitous=grat, probes=probes,
                                    senders=len(senders), top_senders=top))
    windows.sort(key=lambda w: (-w.requests, -w.probes, w.key.ip, w.key.ifindex, w.key.direction, w.key.vlan))
    return windows, len(snap.entries), len(targets)


# Few distinct values, so keys collide across snapshots and ties in the ordering are common; IPs whose
# text order differs from their numeric order ("198.18.0.10" < "198.18.0.9").
IPS = ["198.18.0.9", "198.18.0.10", "198.18.0.100", "198.18.1.2", "198.19.255.1", "198.18.0.1"]
# Two MACs (and a mismatch flag) for one key: one sender with several entries is still one sender.
MACS = ["02:00:00:00:00:01", "02:00:00:00:00:01", "02:00:00:00:00:02", "ff:ee:dd:cc:bb:aa"]
PEERS = ["198.18.0.1", "198.18.0.2", "198.18.0.20", "198.18.0.3", "198.18.5.5", "198.18.0.11", "198.18.0.12"]
key_st = st.tuples(st.sampled_from([2, 3, 700000]), st.sampled_from(IPS), st.sampled_from(PEERS),
                   st.sampled_from([0, 0, 100, 4095]), st.sampled_from([0, 1]),
                   st.sampled_from([KIND_REQUEST, KIND_REQUEST, KIND_REPLY, KIND_GRATUITOUS, KIND_PROBE]),
                   st.sampled_from(MACS), st.sampled_from([0, 0, KEY_F_MAC_MISMATCH]))
val_st = st.tuples(st.integers(0, 60), st.sampled_from([1, 2, 3]))
snap_st = st.dictionaries(key_st, val_st, max_size=40)


def _normalise(entries):
    # The kernel keys non-request kinds with peer 0.0.0.0; keep the generated data realistic.
    return {(i, ip, peer if kind == KIND_REQUEST else "0.0.0.0", v, d, kind, mac, flags): val
            for (i, ip, peer, v, d, kind, mac, flags), val in entries.items()}


# Large generated snapshots are the point here, not a smell: don't let hypothesis give up on them.
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.data_too_large, HealthCheck.too_slow])
@given(st.lists(st.tuples(snap_st, st.booleans(), st.lists(val_st, min_size=40, max_size=40)), min_size=1,
                max_size=5), st.integers(1, 5))
def test_vectorised_aggregator_matches_the_per_entry_algorithm(seq, top_senders):
    ifnames = {2: "eth0", 3: "bond0"}
    agg = Aggregator(ifnames, top_senders=top_senders)
    prev = None
    for t, (raw, same_keys, vals) in enumerate(seq):
        entries = _normalise(raw)
        if same_keys and prev is not None:  # the same entries in the same order, new values (steady state)
            entries = dict(zip(prev.entries, vals, strict=False))
        snap = Snapshot(float(t), entries, {"inserts": 100})
        # half the time through the table form, as the reader builds it
        if t % 2:
            snap = Snapshot(snap.mono, None, snap.health, table=EntryTable.from_entries(snap.entries))
        iv = agg.update(snap)
        want, live, targets = reference(prev, snap, ifnames, top_senders)
        assert list(iv.windows) == want
        assert (iv.entries_live, iv.targets_live) == (live, targets)
        for top, m in ((0, 0), (3, 1), (2, 30)):
            chosen = [w for w in want if w.requests + w.probes >= m]
            assert select(iv.windows, top, m) == (chosen[:top] if top else chosen)
        prev = snap


def test_table_round_trip():
    entries = {(3, "198.18.0.7", "198.18.0.1", 100, 1, KIND_REQUEST, "02:00:00:00:00:01", 0): (5, 123456789012),
               (3, "198.18.0.7", "198.18.0.1", 100, 1, KIND_REQUEST, "02:00:00:00:00:09", KEY_F_MAC_MISMATCH): (1, 2),
               (2, "198.19.255.254", "0.0.0.0", 0, 0, KIND_REPLY, "ff:ee:dd:cc:bb:aa", 0): (2**40, 1),
               (2, "2001:db8::1", "2001:db8::2", 0, 0, KIND_REQUEST, "02:00:00:00:00:01", 0): (3, 4)}
    assert EntryTable.from_entries(entries).to_entries() == entries


big_key_st = st.tuples(st.sampled_from([2, 3]), st.integers(0, 400).map(lambda i: f"198.18.{i // 250}.{i % 250}"),
                       st.integers(1, 30).map(lambda i: f"198.19.0.{i}"), st.sampled_from([0, 7]),
                       st.sampled_from([0, 1]), st.sampled_from([KIND_REQUEST, KIND_REQUEST, KIND_REPLY, KIND_PROBE]),
                       st.sampled_from(MACS), st.sampled_from([0, KEY_F_MAC_MISMATCH]))
big_snap_st = st.dictionaries(big_key_st, st.tuples(st.integers(0, 9), st.sampled_from([1, 2])),
                              min_size=100, max_size=250)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.data_too_large, HealthCheck.too_slow,
                                                               HealthCheck.large_base_example])
@given(st.lists(big_snap_st, min_size=2, max_size=3), st.booleans())
def test_many_windows_built_in_bulk_or_one_by_one(seq, walk):
    """More than 64 windows: iteration builds them in bulk, indexing one by one; both as the reference."""
    agg = Aggregator({2: "eth0"}, top_senders=3)
    prev = None
    for t, raw in enumerate(seq):
        snap = Snapshot(float(t), _normalise(raw), {})
        iv = agg.update(snap)
        want, _live, _targets = reference(prev, snap, {2: "eth0"}, 3)
        if walk:
            assert list(iv.windows) == want
        else:
            assert [iv.windows[i] for i in range(len(iv.windows) - 1, -1, -1)] == want[::-1]
            assert select(iv.windows, 10, 2) == [w for w in want if w.requests + w.probes >= 2][:10]
        prev = snap
