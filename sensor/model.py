"""Plain data passed between the stages; no bcc, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class WindowKey:
    """Where a target was seen: one interface, one direction, one outer VLAN (0 = untagged)."""

    ifindex: int
    direction: str  # "ingress" | "egress"
    vlan: int
    ip: str  # dotted quad: the IP the counters are about (target of requests, sender of replies)


@dataclass(slots=True)
class TargetWindow:
    """One interval's ARP evidence about one IP on one (interface, direction, VLAN)."""

    key: WindowKey
    interface: str
    interval_s: float
    requests: int = 0  # requests asking for key.ip
    replies: int = 0  # replies sent by key.ip
    gratuitous: int = 0  # gratuitous ARP announcing key.ip
    probes: int = 0  # address probes (sender 0.0.0.0) for key.ip
    senders: int = 0  # distinct IPs that asked for key.ip in the interval
    top_senders: list[tuple[str, int]] = field(default_factory=list)  # (sender ip, requests), busiest first

    @property
    def requests_per_sec(self) -> float:
        return self.requests / self.interval_s if self.interval_s > 0 else 0.0
