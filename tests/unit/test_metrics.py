"""Prometheus metrics: observe health/outputs/verdicts, scrape /metrics over HTTP, parse with prometheus_client."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sensor.errors import SensorError
from sensor.events.encode import base_event, health_event
from sensor.outputs import build_outputs
from sensor.outputs.metrics import Metrics
from tests.support.receivers import sample_events


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


HEALTH = {"interval_s": 1.0, "poll_duration_ms": 3.0, "interfaces": 2, "frames_rx": 1000, "frames_tx": 10,
          "arp": 60, "request": 40, "reply": 10, "gratuitous": 5, "probe": 3, "other_op": 2, "malformed": 4,
          "runt": 1, "vlan_too_deep": 0, "inserts": 30, "insert_fail": 0, "entries_live": 256, "entries_max": 1024,
          "entries_evicted": 7, "targets_live": 12, "some_future_counter": 9}


@pytest.fixture
def metrics():
    m = Metrics()
    yield m
    m.close()


def test_scrape_health_outputs_verdicts(metrics, tmp_path):
    port = metrics.serve("127.0.0.1", 0)
    metrics.observe_event(health_event(HEALTH, 1.8e9, "h"))
    metrics.observe_event(health_event({**HEALTH, "request": 2, "poll_duration_ms": 30.0, "entries_evicted": 9},
                                       1.8e9 + 1, "h"))
    rl = base_event("arp_sensor.ratelimit", "event", 1.8e9, "h")
    rl["event"]["action"] = "ratelimit-dropping"
    rl["destination"] = {"ip": "198.18.0.7"}
    rl["arp"] = {"dropped": 17}
    metrics.observe_event(rl)
    metrics.set_verdicts({"zombie-peer": 1, "unanswered-target": 3})
    with build_outputs([f"file:{tmp_path}/e.json"]) as d:
        for ev in sample_events(5):
            d.emit(ev)
        metrics.observe_outputs(d.stats())
    got = scrape(port)

    assert got[("arp_sensor_frames_total", (("direction", "rx"),))] == 2000
    assert got[("arp_sensor_arp_frames_total", ())] == 120
    assert got[("arp_sensor_arp_operations_total", (("operation", "request"),))] == 42  # deltas summed
    assert got[("arp_sensor_arp_operations_total", (("operation", "other"),))] == 4
    assert got[("arp_sensor_malformed_frames_total", (("reason", "invalid"),))] == 8
    assert got[("arp_sensor_map_entries", ())] == 256
    assert got[("arp_sensor_map_fill_ratio", ())] == 0.25
    assert got[("arp_sensor_map_evictions_total", ())] == 9  # cumulative: latest value, not a sum
    assert got[("arp_sensor_ratelimit_dropped_total", ())] == 17
    assert got[("arp_sensor_verdicts", (("verdict", "unanswered-target"),))] == 3
    assert got[("arp_sensor_poll_duration_seconds_count", ())] == 2
    assert got[("arp_sensor_poll_duration_seconds_bucket", (("le", "0.005"),))] == 1
    out = (("output", f"file:{tmp_path}/e.json"),)
    assert got[("arp_sensor_output_sent_total", out)] == 5
    assert got[("arp_sensor_output_dropped_total", out)] == 0
    assert got[("arp_sensor_output_connected", out)] == 1
    # No per-IP labels anywhere, and nothing from unknown health keys.
    assert not any(dict(labels).keys() & {"ip", "destination", "target"} for _, labels in got)
    assert not any("future" in name for name, _ in got)


def test_two_instances_do_not_share_state():
    a, b = Metrics(), Metrics()
    try:
        pa, pb = a.serve("127.0.0.1", 0), b.serve("127.0.0.1", 0)
        a.observe_health({"request": 5})
        assert scrape(pa)[("arp_sensor_arp_operations_total", (("operation", "request"),))] == 5
        assert ("arp_sensor_arp_operations_total", (("operation", "request"),)) not in scrape(pb)
    finally:
        a.close()
        b.close()


def test_port_in_use_is_one_line_error(metrics):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(SensorError, match=r"cannot serve metrics on 127\.0\.0\.1:\d+") as ei:
            metrics.serve("127.0.0.1", s.getsockname()[1])
    assert ei.value.exit_code == 2 and "\n" not in str(ei.value)


def test_per_peer_series_only_for_flagged_bgp_peers(metrics):
    """The roll-up's per-peer series: one per flagged BGP peer (zombie or BGP-down-but-alive), none for
    healthy peers or unanswered targets (IPs the wire chooses), gone once the verdict clears."""
    from dataclasses import replace

    from sensor.pipeline.detect import VerdictEngine
    from tests.unit.test_detect import Book, mesh_peer, run, storm, win

    port = metrics.serve("127.0.0.1", 0)
    zombie = replace(mesh_peer(), active=True)
    alive = mesh_peer(ip="198.18.0.8", node=None)
    ok = mesh_peer("Established", ip="198.18.0.9")
    eng, book = VerdictEngine(window_s=10.0), Book(zombie, alive, ok)

    def traffic(t: int):
        return [*storm(t), win("198.18.0.8", 2, replies=1), win("198.18.0.9", 3),
                win("198.18.0.99", 4), win("198.18.0.99", 1, direction="egress")]

    run(eng, book, 0, 30, traffic)
    assert eng.verdicts() == {"198.18.0.7": "zombie-peer", "198.18.0.8": "bgp-down-reachable",
                              "198.18.0.99": "unanswered-target"}
    metrics.set_peers(eng.flagged_peers(book))
    got = scrape(port)
    since = {dict(k[1])["peer_ip"]: (dict(k[1]), v) for k, v in got.items()
             if k[0] == "arp_sensor_peer_verdict_since_timestamp_seconds"}
    assert set(since) == {"198.18.0.7", "198.18.0.8"}
    labels, t_enter = since["198.18.0.7"]
    assert labels == {"peer_ip": "198.18.0.7", "peer_name": "Mesh_198_18_0_7", "k8s_node": "worker-7",
                      "verdict": "zombie-peer", "active": "true"}
    assert 0 < t_enter < 30
    assert since["198.18.0.8"][0]["active"] == "unknown" and since["198.18.0.8"][0]["k8s_node"] == ""
    own = {dict(k[1])["peer_ip"]: v for k, v in got.items() if k[0] == "arp_sensor_peer_own_arp_requests_per_second"}
    assert own == {"198.18.0.7": 1.0, "198.18.0.8": 0.0}  # storm(): this node sends 1 of the 3 requests/s
    # the zombie answers again: its series disappear with the verdict
    run(eng, book, 30, 3, lambda t: [win("198.18.0.7", 1, replies=1), *traffic(t)[2:]])
    metrics.set_peers(eng.flagged_peers(book))
    got = scrape(port)
    assert {dict(k[1])["peer_ip"] for k in got if k[0] == "arp_sensor_peer_own_arp_requests_per_second"} == {
        "198.18.0.8"}


def test_warning_events_counted_by_action(metrics):
    from sensor.events.encode import warning_event

    port = metrics.serve("127.0.0.1", 0)
    for action in ("program-detached", "program-detached", "interface-gone", "Not A Name!"):
        metrics.observe_event(warning_event(action, "m", 1.8e9, "h"))
    got = scrape(port)
    assert got[("arp_sensor_warnings_total", (("action", "program-detached"),))] == 2
    assert got[("arp_sensor_warnings_total", (("action", "interface-gone"),))] == 1
    assert got[("arp_sensor_warnings_total", (("action", "other"),))] == 1


def test_nd_counters_and_ipv6_drops_are_first_class(metrics):
    """IPv6 neighbour discovery health counters get their own series; an IPv6 ratelimit event (nd.*) counts
    its drops like an ARP one."""
    from sensor.events.encode import ratelimit_event

    port = metrics.serve("127.0.0.1", 0)
    nd = {"nd": 20, "nd_solicit": 12, "nd_dad": 2, "nd_advert_solicited": 3, "nd_advert_unsolicited": 1,
          "nd_malformed": 2, "nd_ext_hdr": 5, "nd_inserts": 4, "nd_insert_fail": 0}
    metrics.observe_event(health_event({**HEALTH, **nd}, 1.8e9, "h"))
    metrics.observe_event(ratelimit_event("ratelimit-dropping", "2001:db8::7", 1.8e9, mode="enforce",
                                          source="zombie-peer", limit_pps=0.02, limit_burst=1, dropped=6, hostname="h"))
    got = scrape(port)
    assert got[("arp_sensor_nd_frames_total", ())] == 20
    assert got[("arp_sensor_nd_messages_total", (("kind", "solicitation"),))] == 12
    assert got[("arp_sensor_nd_messages_total", (("kind", "dad"),))] == 2
    assert got[("arp_sensor_nd_messages_total", (("kind", "advertisement"),))] == 3
    assert got[("arp_sensor_nd_messages_total", (("kind", "unsolicited_advertisement"),))] == 1
    assert got[("arp_sensor_nd_malformed_frames_total", ())] == 2
    assert got[("arp_sensor_nd_extension_header_frames_total", ())] == 5
    assert got[("arp_sensor_nd_map_inserts_total", ())] == 4
    assert got[("arp_sensor_ratelimit_dropped_total", ())] == 6
