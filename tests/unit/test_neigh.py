"""Neighbour-table pressure, pure part: health fields, deltas, warnings with hysteresis, the /proc parser,
and FAILED neighbour entries as zombie-peer evidence (no root; the kernel side is tests/test_neigh_netns.py)."""

from __future__ import annotations

from sensor.neigh.stage import Pressure
from sensor.neigh.table import Entry, TableStats, read_proc_stat
from sensor.pipeline.detect import ZOMBIE, VerdictEngine
from tests.support.fixtures_schema import validate_event
from tests.unit.test_detect import DEAD, Book, mesh_peer, win

IFS = {2: "eth0", 3: "bond0"}


def table(entries: int, **stats: int) -> TableStats:
    base = dict.fromkeys(("table_fulls", "res_failed", "forced_gc_runs", "allocs"), 0)
    return TableStats(entries=entries, gc_thresh1=128, gc_thresh2=512, gc_thresh3=1024, stats={**base, **stats})


def test_states_per_watched_interface_and_deltas():
    p = Pressure(0.8, "h")
    entries = [Entry(2, "198.18.0.9", "failed"), Entry(2, "198.18.0.10", "failed"),
               Entry(2, "198.18.0.1", "reachable"), Entry(3, "198.18.1.1", "incomplete"),
               Entry(3, "198.18.1.2", "stale"), Entry(9, "198.18.9.9", "failed")]  # 9: not watched
    h, evs = p.update(table(10, res_failed=5, table_fulls=1), entries, IFS, 1.0)
    assert evs == []
    assert h["neigh_table_entries"] == 10 and h["neigh_gc_thresh3"] == 1024
    assert h["neigh_table_fill"] == round(10 / 1024, 4)
    assert (h["neigh_failed"], h["neigh_incomplete"], h["neigh_reachable"], h["neigh_stale"]) == (2, 1, 1, 1)
    eth0 = h["neigh_interfaces"][0]
    assert eth0["name"] == "eth0" and eth0["failed"] == 2 and eth0["reachable"] == 1 and eth0["stale"] == 0
    assert h["neigh_interfaces"][1]["name"] == "bond0" and h["neigh_interfaces"][1]["incomplete"] == 1
    # the first read is the baseline: counters are deltas from it
    assert h["neigh_res_failed"] == 0 and h["neigh_table_fulls"] == 0
    assert "neigh_unresolved_discards" not in h  # not readable outside the initial namespace
    assert p.unresolved == {"198.18.0.9": "failed", "198.18.0.10": "failed", "198.18.1.1": "incomplete"}
    h, _ = p.update(table(10, res_failed=12, table_fulls=1, unresolved_discards=4), entries, IFS, 2.0)
    assert h["neigh_res_failed"] == 7 and h["neigh_table_fulls"] == 0
    h, _ = p.update(table(10, res_failed=3, table_fulls=1, unresolved_discards=6), entries, IFS, 3.0)
    assert h["neigh_res_failed"] == 0 and h["neigh_unresolved_discards"] == 2  # never negative


def test_pressure_warning_once_then_cleared_with_hysteresis():
    p = Pressure(0.5, "h")
    actions = []
    for t, n in enumerate([100, 511, 512, 700, 480, 470, 460, 459, 600]):
        _h, evs = p.update(table(n), [], IFS, float(t))
        actions += [(n, validate_event(e)["event"]["action"]) for e in evs]
    # 512/1024 = 0.5 warns; clears only below 0.45 (460.8 entries): 480, 470 do not clear, 460 does
    assert actions == [(512, "neigh-table-pressure"), (460, "neigh-table-pressure-cleared"),
                       (600, "neigh-table-pressure")]


def test_warning_event_fields():
    p = Pressure(0.05, "node-a")
    _h, evs = p.update(table(60), [Entry(2, "198.18.0.9", "failed")], IFS, 1.0)
    (e,) = evs
    validate_event(e)
    assert e["event"]["dataset"] == "arp_sensor.health" and e["event"]["kind"] == "event"
    assert e["log"]["level"] == "warning" and e["observer"]["hostname"] == "node-a"
    assert "60 of gc_thresh3 1024" in e["message"] and "1 failed" in e["message"]


def test_table_full_is_an_error_per_transition():
    p = Pressure(0.99, "h")
    seen = []
    for t, fulls in enumerate([0, 0, 3, 9, 9, 10]):
        _h, evs = p.update(table(1024, table_fulls=fulls), [], IFS, float(t))
        seen += [(t, e["event"]["action"], e["log"]["level"]) for e in map(validate_event, evs)
                 if e["event"]["action"] == "neigh-table-full"]
    assert seen == [(2, "neigh-table-full", "error"), (5, "neigh-table-full", "error")]


def test_health_event_with_neigh_fields_validates():
    from sensor.events.encode import health_event

    h, _ = Pressure().update(table(3), [Entry(2, "198.18.0.9", "failed")], IFS, 1.0)
    validate_event(health_event({"interval_s": 1.0, **h}, 1.0, "h"))


def test_proc_stat_parser(tmp_path):
    f = tmp_path / "arp_cache"
    head = ("entries  allocs   destroys hash_grows lookups  hits     res_failed rcv_probes_mcast rcv_probes_ucast "
            "periodic_gc_runs forced_gc_runs unresolved_discards table_fulls\n")
    f.write_text(head + "00000002 00000001 00000000 00000000 00000004 00000000 00000000 00000000 00000000 "
                 "00000011 00000000 0000000a 00000000\n" + "00000002 00000001 00000000 00000000 00000002 "
                 "00000002 00000000 00000000 00000000 00000000 00000000 00000005 00000000\n")
    assert read_proc_stat(str(f)) == {"unresolved_discards": 15}
    assert read_proc_stat(str(tmp_path / "absent")) == {}
    f.write_text("garbage\n1 2 3\n")
    assert read_proc_stat(str(f)) == {}


def test_failed_neighbour_entry_is_zombie_evidence():
    """One request per window is under min_requests (3): not enough alone, enough when the kernel's own
    neighbour entry for the peer is FAILED (it asked and nobody answered)."""
    def sparse(t: int):
        return [win(DEAD, 1)] if t % 10 == 0 else []

    plain, with_neigh = VerdictEngine(window_s=10.0), VerdictEngine(window_s=10.0)
    with_neigh.neigh = {DEAD: "failed"}
    book = Book(mesh_peer())
    out_plain = [e for t in range(40) for e in plain.update(sparse(t), book, float(t))]
    out_neigh = [validate_event(e) for t in range(40) for e in with_neigh.update(sparse(t), book, float(t))]
    assert out_plain == []
    assert [e["event"]["action"] for e in out_neigh] == ["zombie-peer-detected"]
    assert out_neigh[0]["arp"]["neigh_state"] == "failed"
    assert "neighbour entry for it is FAILED" in out_neigh[0]["message"]
    assert with_neigh.verdict(DEAD) == ZOMBIE
    # INCOMPLETE (still resolving) is not proof: no verdict from it alone
    inc = VerdictEngine(window_s=10.0)
    inc.neigh = {DEAD: "incomplete"}
    assert [e for t in range(40) for e in inc.update(sparse(t), book, float(t))] == []


def test_prometheus_neigh_metrics():
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from sensor.events.encode import health_event
    from sensor.outputs.metrics import Metrics

    m = Metrics()
    p = Pressure()
    entries = [Entry(2, "198.18.0.9", "failed"), Entry(3, "198.18.1.1", "reachable")]
    for t, fails in enumerate([1, 4, 6]):
        h, _ = p.update(table(512, res_failed=fails * 10, table_fulls=fails), entries, IFS, float(t))
        m.observe_event(health_event(h, float(t), "h"))
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(generate_latest(m.registry).decode()) for s in f.samples}
    assert got[("arp_sensor_neigh_entries", (("interface", "eth0"), ("state", "failed")))] == 1
    assert got[("arp_sensor_neigh_entries", (("interface", "bond0"), ("state", "reachable")))] == 1
    assert got[("arp_sensor_neigh_entries", (("interface", "bond0"), ("state", "failed")))] == 0
    assert got[("arp_sensor_neigh_table_entries", ())] == 512
    assert got[("arp_sensor_neigh_gc_thresh3", ())] == 1024
    assert got[("arp_sensor_neigh_table_fill_ratio", ())] == 0.5
    assert got[("arp_sensor_neigh_table_fulls_total", ())] == 5  # deltas after the first read: 3 + 2
    assert got[("arp_sensor_neigh_resolution_failures_total", ())] == 50
