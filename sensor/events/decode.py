"""Events read back: a running sensor's JSON lines (journald, a pod's log, a file) → the Intervals its map
reads produced, for `arp-sensor top --events`. The inverse of encode.py; lines that are not events of ours
are counted and skipped, never fatal."""

from __future__ import annotations

import json
from typing import Any

from sensor.events.encode import ND_NAMES
from sensor.model import Interval, TargetWindow, WindowKey

MAX_MACS = 4096  # IPs whose MAC the binding events gave (bounded: IPs come from the wire)


def counts_of(ev: dict[str, Any]) -> dict[str, Any]:
    """The inverse of encode.counts_section, for readers of events (top --events, the demo, metrics):
    the counts of either family under the ARP names ({} when the event has none)."""
    if "nd" not in ev:
        return ev.get("arp", {})
    back = {v: k for k, v in ND_NAMES.items()}
    counts = {back.get(k, k): v for k, v in ev["nd"].items()}
    if "top_senders" in counts:
        counts["top_senders"] = [{"ip": t["ip"], "requests": t["solicitations"]} for t in counts["top_senders"]]
    return counts


class EventFeed:
    """A running sensor's JSON events → Intervals (what the sensor's own map reads gave it), plus per IP
    what the events said about peers, verdicts and limits.

    `arp_sensor.target` events of one interval are collected until that interval's `arp_sensor.health`
    metric (the sensor writes it last); peer alerts carry the verdicts, ratelimit events the limits,
    binding events the MACs. Lines that are not events of ours are counted and skipped."""

    def __init__(self) -> None:
        self.pending: list[Any] = []
        self.peers: dict[str, tuple[str, str]] = {}
        self.verdicts: dict[str, str] = {}
        self.limits: dict[str, list] = {}  # ip -> [mode, dropped or would-drop so far]
        self.macs: dict[str, tuple[str, str | None]] = {}  # ip -> (MAC, a rival MAC while in conflict)
        self.skipped = 0
        self.hosts: set[str] = set()

    def feed(self, line: str) -> Interval | None:
        try:
            ev = json.loads(line)
            ds = ev["event"]["dataset"]
        except (ValueError, KeyError, TypeError):
            self.skipped += 1 if line.strip() else 0
            return None
        try:
            self.hosts.add(ev.get("observer", {}).get("hostname", ""))
            ip = ev.get("destination", {}).get("ip")
            peer = ev.get("bgp", {}).get("peer")
            if ip and peer:
                self.peers[ip] = (peer.get("name", ""), peer.get("state", ""))
            if ds == "arp_sensor.target":
                arp, net = counts_of(ev), ev.get("network", {})
                direction = net.get("direction", "ingress")
                obs = ev.get("observer", {}).get(direction, {})
                self.pending.append(TargetWindow(
                    WindowKey(0, direction, int(net.get("vlan", {}).get("id", 0) or 0), ip),
                    obs.get("interface", {}).get("name", "?"), float(arp.get("interval_s", 0) or 0),
                    requests=int(arp.get("requests", 0)), replies=int(arp.get("replies", 0)),
                    gratuitous=int(arp.get("gratuitous", 0)), probes=int(arp.get("probes", 0)),
                    senders=int(arp.get("senders", 0)),
                    top_senders=[(s["ip"], int(s["requests"])) for s in arp.get("top_senders", [])]))
            elif ds == "arp_sensor.peer" and ip:
                self.verdicts[ip] = ev.get("arp_sensor", {}).get("verdict", "")
            elif ds == "arp_sensor.binding":
                src, b = ev.get("source", {}), ev.get("arp_sensor", {}).get("binding", {})
                if src.get("ip") and ev["event"].get("action") in ("new-station", "mac-changed", "flip-flop"):
                    self.macs[src["ip"]] = (src["mac"], None)
                elif src.get("ip") and ev["event"].get("action") == "ip-conflict":
                    self.macs[src["ip"]] = (b.get("holder_mac", ""), src["mac"])
                if len(self.macs) > MAX_MACS:  # bounded: IPs come from the wire
                    del self.macs[next(iter(self.macs))]
            elif ds == "arp_sensor.ratelimit" and ip:
                action = ev["event"].get("action")
                mode = ev.get("arp_sensor", {}).get("ratelimit", {}).get("mode", "enforce")
                if action == "ratelimit-removed":
                    self.limits.pop(ip, None)
                else:
                    cur = self.limits.setdefault(ip, [mode, 0])
                    if action == "ratelimit-dropping":
                        arp = counts_of(ev)
                        cur[1] += int(arp.get("would_drop" if mode == "dry-run" else "dropped", 0) or 0)
            elif ds == "arp_sensor.health" and ev["event"].get("kind") == "metric":
                h = ev.get("arp_sensor", {}).get("health", {})
                windows, self.pending = self.pending, []
                dt = float(h.get("interval_s") or (windows[0].interval_s if windows else 0) or 1.0)
                return Interval(interval_s=dt, windows=windows, health={}, health_total={})
        except (KeyError, TypeError, ValueError, AttributeError):
            self.skipped += 1
        return None

    def mac(self, ip: str) -> tuple[list[str], str | None]:
        """The MAC(s) the binding events gave for an IP, and a rival MAC while they report a conflict."""
        held, rival = self.macs.get(ip, ("", None))
        return ([held] if held else []), rival

    def info(self, ip: str) -> tuple[str, str, str, tuple[str, int] | None]:
        """(BGP peer name, BGP state, verdict, (limit mode, dropped or would-drop) or None) for an IP."""
        name, state = self.peers.get(ip, ("", ""))
        lim = self.limits.get(ip)
        return name, state, self.verdicts.get(ip, ""), (lim[0], lim[1]) if lim else None
