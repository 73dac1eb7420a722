"""Prometheus metrics for `arp-sensor run --metrics-port N` (prometheus-client, a dedicated registry).

API (what the run command calls; small on purpose):

    m = Metrics()                       # own CollectorRegistry: several instances can coexist (tests)
    port = m.serve("127.0.0.1", 9464)   # HTTP /metrics in a daemon thread; returns the bound port
    m.observe_health(health)            # the `arp_sensor.health` counters dict of each interval
    m.observe_outputs(dispatcher.stats())
    m.set_verdicts({"zombie-peer": 1, "unanswered-target": 3})   # IPs per non-healthy verdict now
    m.set_peers(engine.flagged_peers(book))   # BGP peers holding zombie-peer / bgp-down-reachable now
    m.observe_event(ev)                 # any event: health metrics and ratelimit drops are picked up
    m.close()

Kernel counters in the health dict are per-interval deltas and are summed into Prometheus counters;
`*_live`, `*_max`, `interfaces` are gauges; `entries_evicted` is already cumulative. Unknown keys
are ignored, missing ones simply not exported. Labels are operation, reason, direction, verdict, output
(one value per --output), interface (one per -i) and state (the kernel's NUD states), all from small
sets, plus per-peer series for the cluster roll-up (below).

Per-IP labels exist only for configured BGP peers that hold a non-healthy verdict (zombie-peer,
bgp-down-reachable) right now: an attacker chooses target IPs but not the BIRD configuration, so these are
bounded by the cluster's size (and capped at PEER_SERIES_MAX); a healthy peer or target has no series.
Two series per such peer, labels peer_ip, peer_name, k8s_node, verdict, active:
  arp_sensor_peer_verdict_since_timestamp_seconds   when this sensor entered the verdict
  arp_sensor_peer_own_arp_requests_per_second       ARP requests this node itself sent for the peer (egress)
`active` is Calico's string rule seen from this node: "true" (it connects, so it is expected to ask),
"false" (it waits), "unknown" (its own address is not known yet). deploy/prometheus/ rolls them up.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sensor.errors import EXIT_USAGE, SensorError
from sensor.events.decode import counts_of

# health key -> (metric, help, label name, label value); summed (per-interval deltas)
_DELTAS: list[tuple[str, str, str, str | None, str | None]] = [
    ("frames_rx", "arp_sensor_frames", "Frames on the watched interfaces (interface counters).", "direction", "rx"),
    ("frames_tx", "arp_sensor_frames", "Frames on the watched interfaces (interface counters).", "direction", "tx"),
    ("arp", "arp_sensor_arp_frames", "Frames with ethertype ARP seen by the kernel program.", None, None),
    ("request", "arp_sensor_arp_operations", "Valid ARP frames by operation.", "operation", "request"),
    ("reply", "arp_sensor_arp_operations", "Valid ARP frames by operation.", "operation", "reply"),
    ("gratuitous", "arp_sensor_arp_operations", "Valid ARP frames by operation.", "operation", "gratuitous"),
    ("probe", "arp_sensor_arp_operations", "Valid ARP frames by operation.", "operation", "probe"),
    ("other_op", "arp_sensor_arp_operations", "Valid ARP frames by operation.", "operation", "other"),
    ("malformed", "arp_sensor_malformed_frames", "ARP frames that failed validation.", "reason", "invalid"),
    ("runt", "arp_sensor_malformed_frames", "ARP frames that failed validation.", "reason", "runt"),
    ("vlan_too_deep", "arp_sensor_malformed_frames", "ARP frames that failed validation.", "reason",
     "vlan_too_deep"),
    ("inserts", "arp_sensor_map_inserts", "New entries in the kernel LRU map.", None, None),
    ("insert_fail", "arp_sensor_map_insert_failures", "Failed kernel map updates.", None, None),
    # IPv6 neighbour discovery: the same evidence for IPv6 targets (docs/events.md, nd.*)
    ("nd", "arp_sensor_nd_frames", "ICMPv6 neighbour solicitations/advertisements seen by the kernel program.",
     None, None),
    ("nd_solicit", "arp_sensor_nd_messages", "Valid neighbour discovery messages by kind.", "kind", "solicitation"),
    ("nd_dad", "arp_sensor_nd_messages", "Valid neighbour discovery messages by kind.", "kind", "dad"),
    ("nd_advert_solicited", "arp_sensor_nd_messages", "Valid neighbour discovery messages by kind.", "kind",
     "advertisement"),
    ("nd_advert_unsolicited", "arp_sensor_nd_messages", "Valid neighbour discovery messages by kind.", "kind",
     "unsolicited_advertisement"),
    ("nd_malformed", "arp_sensor_nd_malformed_frames",
     "Neighbour discovery that failed validation (cut short, code != 0, hop limit != 255).", None, None),
    ("nd_ext_hdr", "arp_sensor_nd_extension_header_frames",
     "IPv6 frames with an extension header before the payload (not walked: ND behind one is not counted).",
     None, None),
    ("nd_inserts", "arp_sensor_nd_map_inserts", "New entries in the kernel ND LRU map.", None, None),
    ("nd_insert_fail", "arp_sensor_nd_map_insert_failures", "Failed kernel ND map updates.", None, None),
    # Issue 13: reads that had to grow to reach the end of the map / stopped short (should stay 0)
    ("map_read_grown", "arp_sensor_map_reads", "Map reads that needed bigger buffers or stopped short.", "result",
     "grown"),
    ("map_read_cut_short", "arp_sensor_map_reads", "Map reads that needed bigger buffers or stopped short.",
     "result", "cut_short"),
    ("ratelimit_entries_refused", "arp_sensor_ratelimit_entries_refused",
     "Rate-limit entries the full kernel limits map refused (summed over intervals).", None, None),
    ("verdict_first_hand_checks", "arp_sensor_verdict_first_hand_checks",
     "Times this host's kernel resolved a zombie candidate itself (passive side of a pair).", None, None),
    ("neigh_table_fulls", "arp_sensor_neigh_table_fulls", "New ARP neighbours the kernel refused (table full).",
     None, None),
    ("neigh_res_failed", "arp_sensor_neigh_resolution_failures", "ARP resolutions that got no answer.", None,
     None),
    ("neigh_unresolved_discards", "arp_sensor_neigh_unresolved_discards",
     "Packets dropped while waiting for ARP resolution (initial namespace only).", None, None),
    ("neigh_forced_gc_runs", "arp_sensor_neigh_forced_gc_runs",
     "Forced garbage collections of the neighbour table (above gc_thresh2).", None, None),
    ("fast_hits", "arp_sensor_fast_path_frames", "ARP frames by where the kernel counted them.", "result", "hit"),
    ("fast_claims", "arp_sensor_fast_path_frames", "ARP frames by where the kernel counted them.", "result",
     "claim"),
    ("fast_collisions", "arp_sensor_fast_path_frames", "ARP frames by where the kernel counted them.", "result",
     "collision"),
]
# health key -> gauge
_GAUGES: list[tuple[str, str, str]] = [
    ("entries_live", "arp_sensor_map_entries", "Live entries in the kernel LRU map."),
    ("entries_max", "arp_sensor_map_max_entries", "Capacity of the kernel LRU map."),
    ("targets_live", "arp_sensor_targets", "Distinct target IPs in the kernel map."),
    ("interfaces", "arp_sensor_interfaces", "Interfaces being watched."),
    ("hooks_attached", "arp_sensor_hooks_attached", "Hooks (XDP, tc) still holding this sensor's programs."),
    ("ratelimit_targets", "arp_sensor_ratelimit_targets", "Targets the kernel holds a rate limit for now."),
    ("neigh_table_entries", "arp_sensor_neigh_table_entries", "Entries in the machine's ARP neighbour table."),
    ("neigh_gc_thresh3", "arp_sensor_neigh_gc_thresh3", "The ARP neighbour table's hard limit (gc_thresh3)."),
    ("neigh_table_fill", "arp_sensor_neigh_table_fill_ratio", "ARP neighbour table entries / gc_thresh3."),
    ("bindings_live", "arp_sensor_bindings", "IP -> MAC bindings held (per interface and VLAN)."),
]
# health key -> counter that is already cumulative
_TOTALS: list[tuple[str, str, str]] = [
    ("entries_evicted", "arp_sensor_map_evictions", "Entries the kernel LRU map evicted (inserts - live)."),
    ("bindings_untracked", "arp_sensor_bindings_untracked", "New IPs not tracked: the bindings table was full."),
]
BINDING_ACTIONS = ("new-station", "mac-changed", "flip-flop", "ip-conflict", "mac-many-ips", "mac-mismatch")
_OUTPUT_COUNTERS = [("sent", "arp_sensor_output_sent", "Events delivered per output."),
                    ("dropped", "arp_sensor_output_dropped", "Events lost per output (queue full, oversized)."),
                    ("errors", "arp_sensor_output_errors", "Connect/send errors per output.")]
_ACTION_RE = re.compile(r"^[a-z][a-z0-9-]{0,47}$")
_MAX_ACTIONS = 64
PEER_SERIES_MAX = 1024  # per-peer series per sensor; also the cap of VerdictEngine.flagged_peers
_PEER_LABELS = ["peer_ip", "peer_name", "k8s_node", "verdict", "active"]
POLL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    """Holds the latest values and exposes them on collect(); all methods are thread-safe."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lock = threading.Lock()
        self._sums: dict[tuple[str, str | None, str | None], float] = {}
        self._gauges: dict[str, float] = {}
        self._totals: dict[str, float] = {}
        self._outputs: dict[str, dict[str, Any]] = {}
        self._verdicts: dict[str, int] = {}
        self._peers: list[Any] = []
        self._neigh: dict[tuple[str, str], int] = {}  # (watched interface, NUD state) -> entries
        self._binding_events = dict.fromkeys(BINDING_ACTIONS, 0)
        self._ratelimit_dropped = 0
        self._warnings: dict[str, int] = {}
        self._health_events = 0
        self._server: Any = None
        self.poll_duration = Histogram("arp_sensor_poll_duration_seconds",
                                       "Time to read the maps, aggregate and emit one interval.",
                                       buckets=POLL_BUCKETS, registry=self.registry)
        self.registry.register(self)

    # -- inputs ---------------------------------------------------------------------------------
    def observe_health(self, health: dict[str, Any]) -> None:
        with self._lock:
            self._health_events += 1
            for key, name, _help, label, value in _DELTAS:
                v = health.get(key)
                if _num(v):
                    self._sums[(name, label, value)] = self._sums.get((name, label, value), 0) + max(0, v)
            for key, name, _help in _GAUGES:
                if _num(health.get(key)):
                    self._gauges[name] = health[key]
            for key, name, _help in _TOTALS:
                if _num(health.get(key)):
                    self._totals[name] = health[key]
            if isinstance(health.get("neigh_interfaces"), list):
                self._neigh = {(str(i.get("name")), s): n for i in health["neigh_interfaces"] if isinstance(i, dict)
                               for s, n in i.items() if s != "name" and _num(n)}
        ms = health.get("poll_duration_ms")
        if _num(ms):
            self.poll_duration.observe(ms / 1000.0)

    def observe_outputs(self, stats: dict[str, dict[str, Any]]) -> None:
        with self._lock:
            self._outputs = {name: dict(s) for name, s in stats.items()}

    def set_verdicts(self, counts: dict[str, int]) -> None:
        with self._lock:
            self._verdicts = {str(k): int(v) for k, v in counts.items()}

    def set_peers(self, flagged: list[Any]) -> None:
        """The flagged BGP peers now (sensor.pipeline.detect.FlaggedPeer); replaces the previous set."""
        with self._lock:
            self._peers = list(flagged[:PEER_SERIES_MAX])

    def observe_event(self, ev: dict[str, Any]) -> None:
        """Convenience for an emit hook: health metrics and `ratelimit-dropping` drops."""
        event = ev.get("event", {})
        if event.get("dataset") == "arp_sensor.health" and event.get("kind") == "metric":
            self.observe_health(ev.get("arp_sensor", {}).get("health", {}))
        elif event.get("dataset") == "arp_sensor.health" and event.get("kind") == "event":
            action = event.get("action")
            # actions are the sensor's own kebab-case names (a small fixed set); anything else is "other"
            key = action if isinstance(action, str) and _ACTION_RE.match(action) else "other"
            with self._lock:
                if key not in self._warnings and len(self._warnings) >= _MAX_ACTIONS:
                    key = "other"
                self._warnings[key] = self._warnings.get(key, 0) + 1
        elif event.get("dataset") == "arp_sensor.binding" and event.get("action") in self._binding_events:
            with self._lock:
                self._binding_events[event["action"]] += 1
        elif event.get("dataset") == "arp_sensor.ratelimit" and event.get("action") == "ratelimit-dropping":
            dropped = counts_of(ev).get("dropped")  # arp.* or, for an IPv6 target, nd.*
            if _num(dropped):
                with self._lock:
                    self._ratelimit_dropped += dropped

    # -- exposition -----------------------------------------------------------------------------
    def describe(self) -> list[Metric]:
        return []  # dynamic label sets: let the registry call collect() when needed

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families: dict[str, CounterMetricFamily] = {}
            helps = {name: (h, label) for _k, name, h, label, _v in _DELTAS}
            for name, (h, label) in helps.items():
                families[name] = CounterMetricFamily(name, h, labels=[label] if label else [])
            for (name, label, value), total in self._sums.items():
                families[name].add_metric([value] if label else [], total)
            yield from (f for f in families.values() if f.samples)
            for _key, name, h in _GAUGES:
                if name in self._gauges:
                    yield GaugeMetricFamily(name, h, value=self._gauges[name])
            live, cap = self._gauges.get("arp_sensor_map_entries"), self._gauges.get("arp_sensor_map_max_entries")
            if live is not None and cap:
                yield GaugeMetricFamily("arp_sensor_map_fill_ratio", "Live entries / capacity of the kernel map.",
                                        value=live / cap)
            for _key, name, h in _TOTALS:
                if name in self._totals:
                    yield CounterMetricFamily(name, h, value=self._totals[name])
            if self._neigh:
                n = GaugeMetricFamily("arp_sensor_neigh_entries", "ARP neighbour entries per watched interface "
                                      "and state (this network namespace).", labels=["interface", "state"])
                for (ifname, state), count in sorted(self._neigh.items()):
                    n.add_metric([ifname, state], count)
                yield n
            b = CounterMetricFamily("arp_sensor_binding_events", "arp_sensor.binding events by action.",
                                    labels=["action"])
            for action, n in self._binding_events.items():
                b.add_metric([action], n)
            yield b
            yield CounterMetricFamily("arp_sensor_health_intervals", "Intervals observed.",
                                      value=self._health_events)
            w = CounterMetricFamily("arp_sensor_warnings", "Warning events by event.action (program-detached, "
                                    "interface-gone, peer-source-unavailable...).", labels=["action"])
            for action, n in sorted(self._warnings.items()):
                w.add_metric([action], n)
            yield w
            yield CounterMetricFamily("arp_sensor_ratelimit_dropped",
                                      "ARP requests the kernel rate limit dropped.", value=self._ratelimit_dropped)
            v = GaugeMetricFamily("arp_sensor_verdicts", "IPs currently holding each non-healthy verdict.",
                                  labels=["verdict"])
            for verdict, n in sorted(self._verdicts.items()):
                v.add_metric([verdict], n)
            yield v
            since = GaugeMetricFamily("arp_sensor_peer_verdict_since_timestamp_seconds",
                                      "When this sensor entered the verdict, per BGP peer holding zombie-peer or "
                                      "bgp-down-reachable (no series for healthy peers).", labels=_PEER_LABELS)
            own = GaugeMetricFamily("arp_sensor_peer_own_arp_requests_per_second",
                                    "ARP requests this node itself sent for the flagged BGP peer, per second "
                                    "over the verdict window.", labels=_PEER_LABELS)
            for f in self._peers:
                active = "unknown" if f.active is None else ("true" if f.active else "false")
                labels = [f.ip, f.name or "", f.node_name or "", f.verdict, active]
                since.add_metric(labels, f.since)
                own.add_metric(labels, f.own_requests_per_s)
            yield since
            yield own
            q = GaugeMetricFamily("arp_sensor_output_queued", "Events waiting per output.", labels=["output"])
            c = GaugeMetricFamily("arp_sensor_output_connected", "1 when the output is connected/open.",
                                  labels=["output"])
            counters = {k: CounterMetricFamily(name, h, labels=["output"]) for k, name, h in _OUTPUT_COUNTERS}
            for out, s in self._outputs.items():
                q.add_metric([out], s.get("queued", 0))
                c.add_metric([out], 1 if s.get("connected") else 0)
                for k, fam in counters.items():
                    fam.add_metric([out], s.get(k, 0))
            yield q
            yield c
            yield from counters.values()

    def serve(self, addr: str, port: int) -> int:
        """Serve /metrics on addr:port in a daemon thread; returns the bound port (port 0 picks one)."""
        from prometheus_client import start_http_server

        try:
            server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as e:
            raise SensorError(f"cannot serve metrics on {addr}:{port}: {e.strerror or e}", EXIT_USAGE) from None
        self._server = server
        return server.server_address[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
