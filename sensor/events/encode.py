"""ECS-style event dicts (the contract in docs/events.md, validated by sensor/events/schema/events.schema.json).

Pure functions: they take plain data and return dicts ready for any output.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import Any

from sensor.model import TargetWindow

SCHEMA_VERSION = "1"

Event = dict[str, Any]


# IPv6 targets carry their counts under `nd` with neighbour-discovery names; the numbers are the same
# fields the ARP events have (the kernel's ND kinds share the ARP kinds' slots: NS ~ request, NA solicited ~
# reply, NA unsolicited ~ gratuitous, DAD ~ probe). Fields not listed keep their names.
ND_NAMES = {"requests": "solicitations", "requests_per_sec": "solicitations_per_sec", "replies": "advertisements",
            "gratuitous": "unsolicited_advertisements", "probes": "dad"}


def family(ip: str) -> tuple[str, str]:
    """(section, network.type) for an address: ("arp", "ipv4") or ("nd", "ipv6")."""
    return ("nd", "ipv6") if ":" in ip else ("arp", "ipv4")


def wire_words(ip: str) -> tuple[str, str, str]:
    """(protocol, its requests, its answers) for messages about ip: ARP, or IPv6 neighbour discovery."""
    if ":" in ip:
        return "neighbour discovery", "neighbour solicitations", "neighbour advertisements"
    return "ARP", "ARP requests", "ARP replies"


def counts_section(ev: Event, ip: str, counts: dict[str, Any]) -> None:
    """Puts `counts` (ARP names) under ev["arp"] or, for an IPv6 address, ev["nd"] renamed; sets
    network.type. The one place the two families' event shapes differ (sensor.events.decode.counts_of reads
    them back)."""
    section, net_type = family(ip)
    ev.setdefault("network", {})["type"] = net_type
    if section == "nd":
        counts = {ND_NAMES.get(k, k): v for k, v in counts.items()}
        if "top_senders" in counts:
            counts["top_senders"] = [{"ip": t["ip"], "solicitations": t["requests"]} for t in counts["top_senders"]]
    ev[section] = counts


def timestamp(now: float) -> str:
    """RFC 3339, UTC, millisecond precision: what ECS and most pipelines parse without configuration."""
    dt = datetime.fromtimestamp(now, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def base_event(dataset: str, kind: str, now: float, hostname: str | None = None) -> Event:
    return {
        "@timestamp": timestamp(now),
        "event": {"kind": kind, "dataset": dataset},
        "observer": {"hostname": hostname or socket.gethostname()},
        "arp_sensor": {"schema_version": SCHEMA_VERSION},
    }


def target_event(w: TargetWindow, now: float, hostname: str | None = None,
                 peer: dict[str, Any] | None = None) -> Event:
    """`arp_sensor.target`: one noteworthy target in one interval (`arp.*`, or `nd.*` for an IPv6
    target). `peer` is `bgp.peer` when known."""
    ev = base_event("arp_sensor.target", "metric", now, hostname)
    side = "ingress" if w.key.direction == "ingress" else "egress"
    ev["observer"][side] = {"interface": {"name": w.interface}}
    ev["destination"] = {"ip": w.key.ip}
    ev["network"] = {"direction": w.key.direction}
    if w.key.vlan:
        ev["network"]["vlan"] = {"id": str(w.key.vlan)}  # ECS types vlan.id as keyword
    counts_section(ev, w.key.ip, {
        "requests": w.requests,
        "requests_per_sec": round(w.requests_per_sec, 3),
        "replies": w.replies,
        "gratuitous": w.gratuitous,
        "probes": w.probes,
        "senders": w.senders,
        "top_senders": [{"ip": ip, "requests": n} for ip, n in w.top_senders],
        "interval_s": w.interval_s,
    })
    if peer:
        ev["bgp"] = {"peer": peer}
    return ev


def health_event(counters: dict[str, int | float], now: float, hostname: str | None = None) -> Event:
    """`arp_sensor.health`: datapath counters (deltas for the interval and totals) and sensor internals."""
    ev = base_event("arp_sensor.health", "metric", now, hostname)
    ev["arp_sensor"]["health"] = dict(counters)
    return ev


def warning_event(action: str, message: str, now: float, hostname: str | None = None,
                  path: str | None = None, level: str = "warning") -> Event:
    """`arp_sensor.health` with `event.kind: event`: something an operator should know about the sensor
    itself (a peer source down, an interface gone). One per transition, not one per interval.
    `path` (the BIRD socket or input file concerned) goes to ECS `file.path`; `level` is ECS `log.level`
    (info for a condition that cleared, error for one that loses data)."""
    ev = base_event("arp_sensor.health", "event", now, hostname)
    ev["event"]["action"] = action
    ev["log"] = {"level": level}
    ev["message"] = message
    if path:
        ev["file"] = {"path": path}
    return ev


class ErrorOnce:
    """A stage's interval hook never raises: an exception becomes one warning event per new error (the
    same error again, interval after interval, is silent) until an interval succeeds."""

    def __init__(self, action: str, skipped: str) -> None:
        self.action, self.skipped = action, skipped  # e.g. "peer-stage-error", "peers/verdicts"
        self.last: str | None = None

    def ok(self) -> None:
        self.last = None

    def warn(self, e: Exception, now: float, hostname: str | None) -> list[Event]:
        msg = f"{type(e).__name__}: {e}"
        if msg == self.last:
            return []
        self.last = msg
        return [warning_event(self.action, f"{self.skipped} skipped this interval: {msg}", now, hostname)]


def peer_event(action: str, ip: str, message: str, now: float, *, peer: dict[str, Any] | None = None,
               evidence: dict[str, Any] | None = None, node_name: str | None = None,
               verdict: str | None = None, reason: str | None = None,
               hostname: str | None = None) -> Event:
    """`arp_sensor.peer` alert on a verdict change (`zombie-peer-detected`, `zombie-peer-cleared`, ...).

    `peer` is `bgp.peer` (see sensor.peers.peer_fields), `evidence` the ARP window (`arp.*`: requests,
    replies, senders, top_senders, window_s; `nd.*` for an IPv6 address), `verdict` the verdict after the
    change, `reason` why a verdict cleared (ECS `event.reason`).
    """
    ev = base_event("arp_sensor.peer", "alert", now, hostname)
    ev["event"]["action"] = action
    if reason:
        ev["event"]["reason"] = reason
    ev["destination"] = {"ip": ip}
    if peer:
        ev["bgp"] = {"peer": peer}
    if evidence is not None:
        counts_section(ev, ip, dict(evidence))
    if node_name:
        ev["kubernetes"] = {"node": {"name": node_name}}
    if verdict:
        ev["arp_sensor"]["verdict"] = verdict
    ev["message"] = message
    return ev


def ratelimit_event(action: str, ip: str, now: float, *, mode: str, source: str, limit_pps: float,
                    limit_burst: int, dropped: int, would_drop: int | None = None,
                    interval_s: float | None = None, reason: str | None = None, message: str | None = None,
                    peer: dict[str, Any] | None = None, hostname: str | None = None) -> Event:
    """`arp_sensor.ratelimit`: a kernel limit for one target was applied, removed, or dropped requests.

    `arp.dropped` is what the kernel dropped (in the interval for `ratelimit-dropping`, over the limit's
    life for `ratelimit-removed`); `arp.would_drop` the same for dry-run limits. `arp_sensor.ratelimit`
    holds the mode (dry-run / enforce) and the source (zombie-peer / unanswered-target / manual).
    """
    ev = base_event("arp_sensor.ratelimit", "event", now, hostname)
    ev["event"]["action"] = action
    if reason:
        ev["event"]["reason"] = reason
    ev["destination"] = {"ip": ip}
    arp: dict[str, Any] = {"dropped": dropped, "limit_pps": limit_pps, "limit_burst": limit_burst}
    if would_drop is not None:
        arp["would_drop"] = would_drop
    if interval_s is not None:
        arp["interval_s"] = round(interval_s, 3)
    counts_section(ev, ip, arp)
    ev["arp_sensor"]["ratelimit"] = {"mode": mode, "source": source}
    if peer:
        ev["bgp"] = {"peer": peer}
    if message:
        ev["message"] = message
    return ev


def binding_event(action: str, ip: str | None, mac: str, message: str, now: float, *, interface: str,
                  vlan: int = 0, alert: bool = False, fields: dict[str, Any] | None = None,
                  hostname: str | None = None) -> Event:
    """`arp_sensor.binding`: an IP -> MAC binding changed or conflicts (new-station, mac-changed, flip-flop,
    ip-conflict, mac-many-ips, mac-mismatch). `ip`/`mac` are ECS `source.ip`/`source.mac` (the MAC in ECS
    form, upper-case and hyphen-separated); `fields` go to `arp_sensor.binding` (previous_mac, holder_mac,
    seen_in, ip_count, ...). `alert` for conflicts, `event` otherwise."""
    ev = base_event("arp_sensor.binding", "alert" if alert else "event", now, hostname)
    ev["event"]["action"] = action
    ev["observer"]["ingress"] = {"interface": {"name": interface}}
    ev["source"] = {"mac": mac} if ip is None else {"ip": ip, "mac": mac}
    if vlan:
        ev["network"] = {"vlan": {"id": str(vlan)}}
    if fields:
        ev["arp_sensor"]["binding"] = dict(fields)
    ev["message"] = message
    return ev
