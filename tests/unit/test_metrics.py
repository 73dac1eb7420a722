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
