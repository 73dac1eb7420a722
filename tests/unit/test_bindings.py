"""The bindings engine (pure): learning period, changes, flip-flops, conflicts, probes, many IPs per MAC,
mismatches, bounds. Every event is validated against the schema."""

from __future__ import annotations

from sensor.bindings.engine import BindingEngine, Sighting, ecs_mac
from tests.support.fixtures_schema import validate_event

A, B, C = "02-00-00-00-00-0A", "02-00-00-00-00-0B", "02-00-00-00-00-0C"
IP = "198.18.0.7"


def reply(mac: str, ip: str = IP, kind: str = "reply", **kw) -> Sighting:
    return Sighting("eth0", 0, ip, mac, kind, **kw)


def feed(eng: BindingEngine, script: dict[int, list[Sighting]], until: int) -> list[tuple[int, dict]]:
    out = []
    for t in range(until):
        for e in eng.update(script.get(t, []), float(t)):
            out.append((t, validate_event(e)))
    return out


def acts(evs) -> list[tuple[int, str]]:
    return [(t, e["event"]["action"]) for t, e in evs]


def test_ecs_mac():
    assert ecs_mac(bytes([2, 0, 0x5E, 0x10, 0, 0xAB])) == "02-00-5E-10-00-AB"


def test_learning_period_then_new_station():
    eng = BindingEngine(learn_s=60)
    evs = feed(eng, {10: [reply(A)], 59: [reply(B, "198.18.0.8")], 60: [reply(C, "198.18.0.9", "gratuitous")]},
               70)
    assert acts(evs) == [(60, "new-station")]
    e = evs[0][1]
    assert e["event"]["kind"] == "event" and e["event"]["dataset"] == "arp_sensor.binding"
    assert e["source"] == {"ip": "198.18.0.9", "mac": C}
    assert e["arp_sensor"]["binding"] == {"seen_in": "gratuitous"}
    assert e["observer"]["ingress"]["interface"]["name"] == "eth0"
    assert eng.mac_of("eth0", 0, IP) == A and eng.mac_of("eth0", 0, "198.18.0.8") == B  # learnt silently


def test_learning_disabled_announces_at_once_and_vlan_is_part_of_the_key():
    eng = BindingEngine(learn_s=0)
    evs = feed(eng, {0: [reply(A), Sighting("eth0", 42, IP, B, "reply")]}, 2)
    assert acts(evs) == [(0, "new-station"), (0, "new-station")]  # two VLANs: two stations, no conflict
    assert evs[1][1]["network"]["vlan"]["id"] == "42"


def test_stable_host_no_events():
    eng = BindingEngine(learn_s=0)
    evs = feed(eng, {t: [reply(A), reply(A, kind="request")] for t in range(0, 300, 3)}, 300)
    assert acts(evs) == [(0, "new-station")]


def test_mac_changed_then_flip_flop():
    eng = BindingEngine(learn_s=0, conflict_s=10)
    script = {0: [reply(A)], 5: [reply(A)], 20: [reply(B)], 25: [reply(B)], 40: [reply(A)]}
    evs = feed(eng, script, 50)
    assert acts(evs) == [(0, "new-station"), (20, "mac-changed"), (40, "flip-flop")]
    changed, flip = evs[1][1], evs[2][1]
    assert changed["source"] == {"ip": IP, "mac": B}
    assert changed["arp_sensor"]["binding"] == {"previous_mac": A, "seen_in": "reply"}
    assert "was 02-00-00-00-00-0A, silent for 15 s" in changed["message"]
    assert flip["source"]["mac"] == A and flip["arp_sensor"]["binding"]["previous_mac"] == B
    # a third MAC is a change again, not a flip-flop
    assert acts(feed(eng, {60: [reply(C)]}, 61)) == [(60, "mac-changed")]


def test_request_sender_is_a_claim():
    eng = BindingEngine(learn_s=0, conflict_s=10)
    evs = feed(eng, {0: [reply(A, kind="request")], 30: [reply(B, kind="request")]}, 31)
    assert acts(evs) == [(0, "new-station"), (30, "mac-changed")]
    assert evs[1][1]["arp_sensor"]["binding"]["seen_in"] == "request"


def test_two_macs_in_one_window_conflict_once_per_episode():
    eng = BindingEngine(learn_s=0, conflict_s=10)
    # A holds; B answers too, every 2 s, alongside A: one conflict, not one per interval
    script = {0: [reply(A)]}
    for t in range(2, 20, 2):
        script[t] = [reply(A), reply(B)]
    script[40] = [reply(A)]
    script[42] = [reply(A), reply(B, kind="gratuitous")]  # B back after a quiet window: a new episode
    evs = feed(eng, script, 45)
    assert acts(evs) == [(0, "new-station"), (2, "ip-conflict"), (42, "ip-conflict")]
    c = evs[1][1]
    assert c["event"]["kind"] == "alert"
    assert c["source"] == {"ip": IP, "mac": B}
    assert c["arp_sensor"]["binding"] == {"holder_mac": A, "seen_in": "reply"}
    assert evs[2][1]["arp_sensor"]["binding"]["seen_in"] == "gratuitous"
    assert eng.mac_of("eth0", 0, IP) == A  # a conflict does not move the binding


def test_conflict_then_takeover_is_a_change():
    eng = BindingEngine(learn_s=0, conflict_s=10)
    script = {0: [reply(A)], 1: [reply(A), reply(B)]}
    for t in range(2, 20):
        script[t] = [reply(B)]
    evs = feed(eng, script, 20)
    # A last seen at 1; B alone from 2: conflict while A is fresh, mac-changed once A is silent 10 s
    assert acts(evs) == [(0, "new-station"), (1, "ip-conflict"), (11, "mac-changed")]


def test_first_interval_with_two_macs_is_a_conflict():
    eng = BindingEngine(learn_s=60)
    evs = feed(eng, {1: [reply(B, count=1), reply(A, count=5)]}, 2)
    assert acts(evs) == [(1, "ip-conflict")]  # learning hides new-station, never a conflict
    assert evs[0][1]["arp_sensor"]["binding"]["holder_mac"] == A  # the busier MAC is bound


def test_probe_conflict_rfc5227():
    eng = BindingEngine(learn_s=0, conflict_s=10, hold_s=600)
    script = {0: [reply(A)], 5: [reply(B, kind="probe")], 6: [reply(B, kind="probe")],
              7: [reply(A, kind="probe")],  # the holder re-probing its own address: fine
              8: [reply(C, "198.18.0.99", kind="probe")]}  # nobody holds it: a normal probe
    evs = feed(eng, script, 10)
    assert acts(evs) == [(0, "new-station"), (5, "ip-conflict")]
    c = evs[1][1]
    assert c["arp_sensor"]["binding"] == {"holder_mac": A, "seen_in": "probe"} and c["event"]["kind"] == "alert"
    assert "RFC 5227" in c["message"]
    assert eng.mac_of("eth0", 0, "198.18.0.99") is None  # a probe claims nothing


def test_probe_for_a_long_silent_holder_is_no_conflict():
    eng = BindingEngine(learn_s=0, hold_s=600)
    assert acts(feed(eng, {0: [reply(A)], 700: [reply(B, kind="probe")]}, 701)) == [(0, "new-station")]


def test_mac_many_ips_once_per_crossing():
    eng = BindingEngine(learn_s=0, max_ips=4)
    script = {t: [reply(A, f"198.18.1.{t}")] for t in range(1, 8)}
    evs = feed(eng, script, 10)
    many = [(t, e) for t, e in evs if e["event"]["action"] == "mac-many-ips"]
    assert [t for t, _ in many] == [5]
    e = many[0][1]
    assert e["source"] == {"mac": A} and e["arp_sensor"]["binding"] == {"ip_count": 5, "ip_threshold": 4}


def test_mismatch_once_per_station():
    eng = BindingEngine(learn_s=60)
    script = {t: [reply(A, mismatch=True)] for t in range(5)}
    evs = feed(eng, script, 5)
    assert acts(evs) == [(0, "mac-mismatch")]
    assert evs[0][1]["source"] == {"ip": IP, "mac": A} and "Ethernet source" in evs[0][1]["message"]


def test_bounded_bindings():
    eng = BindingEngine(learn_s=0, max_bindings=2, hold_s=100)
    feed(eng, {0: [reply(A, "198.18.0.1"), reply(A, "198.18.0.2"), reply(A, "198.18.0.3")]}, 1)
    assert len(eng.bindings) == 2 and eng.untracked == 1
    # once a binding has been silent for hold_s it makes room
    eng.update([reply(B, "198.18.0.3")], 200.0)
    assert len(eng.bindings) == 2 and eng.mac_of("eth0", 0, "198.18.0.3") == B


def test_zero_counts_and_unspecified_ip_ignored():
    eng = BindingEngine(learn_s=0)
    assert eng.update([reply(A, count=0), reply(A, "0.0.0.0")], 1.0) == []
    assert not eng.bindings


def test_schema_rejects_wrong_binding_events():
    from sensor.outputs import validate

    eng = BindingEngine(learn_s=0)
    (_new, conflict) = eng.update([reply(A), reply(B)], 0.0)
    assert validate.problem(conflict) is None
    assert validate.problem({**conflict, "event": {**conflict["event"], "kind": "event"}})  # conflicts alert
    assert validate.problem({**conflict, "source": {"ip": IP, "mac": "02:00:00:00:00:0b"}})  # not ECS form
    changed = eng.update([reply(B)], 30.0)[0]
    assert changed["event"]["action"] == "mac-changed" and validate.problem(changed) is None
    del changed["arp_sensor"]["binding"]["previous_mac"]
    assert validate.problem(changed)


def test_state_file_round_trip_atomic_and_bad_file(tmp_path):
    from sensor.bindings import store

    path = str(tmp_path / "bindings.json")
    eng = BindingEngine(learn_s=0)
    feed(eng, {0: [reply(A)], 20: [reply(B)], 21: [Sighting("eth1", 7, "198.18.0.8", C, "gratuitous")]}, 22)
    store.save(path, eng.bindings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bindings.json"]  # no temporary left behind
    loaded, problem = store.load(path)
    assert problem is None and loaded == eng.bindings
    again = BindingEngine(learn_s=0, started=100.0)
    again.restore(loaded)
    # known: no new-station; the change history survives (back to A is a flip-flop)
    evs = feed(again, {101: [reply(A), Sighting("eth1", 7, "198.18.0.8", C, "reply")]}, 102)
    assert acts(evs) == [(101, "flip-flop")]
    (tmp_path / "bindings.json").write_text('{"version": 1, "bindings": [{"ip": 5}]}')
    loaded, problem = store.load(path)
    assert loaded == {} and "unreadable" in problem and (tmp_path / "bindings.json.bad").exists()
    assert store.load(str(tmp_path / "absent.json")) == ({}, None)


def test_state_file_unwritable_is_one_line_error(tmp_path):
    import pytest

    from sensor.bindings import store
    from sensor.errors import SensorError

    with pytest.raises(SensorError, match="cannot write the bindings state file"):
        store.save(str(tmp_path / "no" / "such" / "dir.json"), {})


def test_sightings_from_the_aggregators_active_entries():
    """Kernel entries (mac and flags in the key) -> the aggregator's active entries (deltas) -> Sightings:
    a request claims its sender (peer), replies their key IP; entries with no new frames are skipped;
    a sender's entries with and without the mismatch flag are one Sighting, flagged."""
    from sensor.bindings.rows import sightings
    from sensor.kernel.layout import KEY_F_MAC_MISMATCH, KIND_PROBE, KIND_REPLY, KIND_REQUEST
    from sensor.kernel.reader import Snapshot
    from sensor.pipeline.aggregate import Aggregator

    a, b = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
    base = {  # (ifindex, ip, peer, vlan, dir, kind, mac, flags) -> (count, first_seen)
        (2, "198.18.0.6", "0.0.0.0", 0, 0, KIND_REPLY, b, 0): (4, 1),  # silent from now on
    }
    later = dict(base)
    later.update({
        (2, "198.18.0.9", "198.18.0.1", 0, 0, KIND_REQUEST, a, 0): (3, 2),  # A (198.18.0.1) asks for .9
        (2, "198.18.0.8", "198.18.0.1", 0, 1, KIND_REQUEST, a, KEY_F_MAC_MISMATCH): (2, 2),  # and for .8
        (2, "198.18.0.7", "0.0.0.0", 0, 0, KIND_REPLY, b, 0): (1, 2),  # B answers for .7
        (2, "198.18.0.7", "0.0.0.0", 5, 0, KIND_PROBE, a, 0): (1, 2),  # A probes .7 on VLAN 5
        (3, "2001:db8::7", "::", 0, 0, KIND_REPLY, b, 0): (1, 2),  # ND: an advertisement (same kinds)
    })
    agg = Aggregator({2: "eth0", 3: "eth1"})
    agg.update(Snapshot(0.0, entries=base, health={}))
    iv = agg.update(Snapshot(1.0, entries=later, health={}))
    got = sightings(iv.active.words, iv.active.count, {2: "eth0", 3: "eth1"})
    assert sorted(got, key=lambda s: (s.interface, s.vlan, s.ip)) == [
        Sighting("eth0", 0, "198.18.0.1", A, "request", 5, True),
        Sighting("eth0", 0, "198.18.0.7", B, "reply", 1, False),
        Sighting("eth0", 5, "198.18.0.7", A, "probe", 1, False),
        Sighting("eth1", 0, "2001:db8::7", B, "reply", 1, False),
    ]


def test_prometheus_binding_metrics():
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from sensor.bindings.stage import BindingStage
    from sensor.events.encode import health_event
    from sensor.outputs.metrics import Metrics

    m = Metrics()
    stage = BindingStage(BindingEngine(learn_s=0))
    for ev in stage.engine.update([reply(A), reply(B), reply(A, "198.18.0.8")], 0.0):
        m.observe_event(ev)
    m.observe_event(health_event(stage.health(), 0.0, "h"))
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(generate_latest(m.registry).decode()) for s in f.samples}
    assert got[("arp_sensor_binding_events_total", (("action", "new-station"),))] == 2
    assert got[("arp_sensor_binding_events_total", (("action", "ip-conflict"),))] == 1
    assert got[("arp_sensor_binding_events_total", (("action", "flip-flop"),))] == 0
    assert got[("arp_sensor_bindings", ())] == 2 and got[("arp_sensor_bindings_untracked_total", ())] == 0


def test_stage_reuses_its_grouping_only_for_the_same_active_entries():
    """Differential: the stage (which reuses its grouping while the aggregator's key set and the active
    entries stay the same) against the same stage regrouping every interval, over random intervals where
    entries appear, go quiet, change MAC and conflict."""
    import random

    from sensor.bindings.stage import BindingStage
    from sensor.kernel.layout import KIND_GRATUITOUS, KIND_PROBE, KIND_REPLY, KIND_REQUEST
    from sensor.kernel.reader import Snapshot
    from sensor.pipeline.aggregate import Aggregator

    rng = random.Random(16)
    macs = [f"02:00:00:00:00:{i:02x}" for i in range(1, 5)]
    keys = [(2, f"198.18.0.{rng.randint(1, 6)}", f"198.18.0.{rng.randint(1, 6)}", rng.choice([0, 7]), 0,
             rng.choice([KIND_REQUEST, KIND_REPLY, KIND_GRATUITOUS, KIND_PROBE]), rng.choice(macs),
             rng.choice([0, 0, 0, 1])) for _ in range(40)]
    counts = dict.fromkeys(keys, 0)
    agg = Aggregator({2: "eth0"})
    stages = [BindingStage(BindingEngine(learn_s=0, conflict_s=3)) for _ in range(2)]
    for st in stages:
        st.ifnames = {2: "eth0"}
    reused, actions = 0, set()
    live = set(keys[:20])
    for t in range(1, 200):
        if t % 25 == 0:  # the key set changes now and then
            live = set(rng.sample(keys, 20))
        busy = live if t % 3 else set(rng.sample(sorted(live), 5))  # same active entries, or a subset
        for k in busy:
            counts[k] += 1
        iv = agg.update(Snapshot(float(t), entries={k: (max(1, counts[k]), 1) for k in live}, health={}))
        stages[1]._grouper = None  # the reference regroups every interval
        before = stages[0]._grouper._last if stages[0]._grouper else None
        got = [stage.on_interval(iv, float(t)) for stage in stages]
        reused += before is not None and stages[0]._grouper._last is before
        assert got[0] == got[1], t
        assert stages[0].engine.bindings == stages[1].engine.bindings, t
        actions |= {e["event"]["action"] for e in got[0]}
    assert reused > 50  # the reuse path was exercised
    assert {"new-station", "ip-conflict", "mac-changed", "mac-mismatch"} <= actions, actions


def test_full_table_leaves_a_flood_of_new_ips_out_but_watches_the_known_ones():
    """A full table (every binding seen lately): new IPs are counted as untracked without ever becoming
    Sightings; the bound IPs still refresh, change and conflict."""
    from sensor.bindings.stage import BindingStage
    from sensor.kernel.layout import KIND_REPLY, KIND_REQUEST
    from sensor.kernel.reader import Snapshot
    from sensor.pipeline.aggregate import Aggregator

    a, b = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
    known = {(2, f"198.18.0.{i}", "0.0.0.0", 0, 0, KIND_REPLY, a, 0): (1, 1) for i in range(1, 5)}
    agg = Aggregator({2: "eth0"})
    stage = BindingStage(BindingEngine(learn_s=0, max_bindings=4, hold_s=600))
    stage.ifnames = {2: "eth0"}
    agg.update(Snapshot(0.0, entries={}, health={}))
    evs = stage.on_interval(agg.update(Snapshot(1.0, entries=known, health={})), 1.0)
    assert [e["event"]["action"] for e in evs] == ["new-station"] * 4
    flood = {(2, "198.18.9.9", f"198.19.{i // 250}.{i % 250 + 1}", 0, 0, KIND_REQUEST, b, 0): (1, 2)
             for i in range(1000)}  # 1000 spoofed senders, one MAC
    later = {k: (2, 1) for k in known}
    later[(2, "198.18.0.1", "0.0.0.0", 0, 0, KIND_REPLY, b, 0)] = (1, 2)  # and B answers for .1 too
    evs = stage.on_interval(agg.update(Snapshot(2.0, entries={**later, **flood}, health={})), 2.0)
    assert [(e["event"]["action"], e["source"]["ip"]) for e in evs] == [("ip-conflict", "198.18.0.1")]
    assert stage.engine.untracked == 1000 and len(stage.engine.bindings) == 4
    assert all(b_.last_seen == 2.0 for b_ in stage.engine.bindings.values())  # the known ones refreshed
    assert len(stage._names) <= 5  # the flood was never named
    h = stage.health()
    assert h["bindings_live"] == 4 and h["bindings_untracked"] == 1000


def test_new_station_events_capped_per_interval():
    eng = BindingEngine(learn_s=0, max_new=3)
    evs = [validate_event(e) for e in eng.update([reply(A, f"198.18.1.{i}") for i in range(10)], 0.0)]
    acts_ = [e["event"]["action"] for e in evs]
    assert acts_.count("new-station") == 3 and eng.suppressed == 7 and len(eng.bindings) == 10
    assert acts_.count("binding-new-stations-capped") == 1  # one warning when the cap starts to bite
    evs = eng.update([reply(A, f"198.18.2.{i}") for i in range(10)], 1.0)
    assert [e["event"]["action"] for e in evs].count("binding-new-stations-capped") == 0  # not again
