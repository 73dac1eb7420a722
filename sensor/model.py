"""The types that cross stage boundaries, in one place: plain data and protocols, no bcc, no I/O.

    kernel/reader ─Snapshot─► pipeline/aggregate ─Interval (TargetWindows)─► peers + pipeline/detect
      ─VerdictView─► pipeline/limit_stage ─LimitFds─► the kernel's limits map; events/ ─► outputs/
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

Log = Callable[[str], None]  # one line about the sensor itself (stderr, or top's caption)

ESTABLISHED = "Established"


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


@dataclass(frozen=True, slots=True)
class ActiveEntries:
    """The map entries that counted frames in an interval: their keys as the aggregator's six u64 words
    ((ifindex, vlan, dir, kind), ip x2, peer x2, (mac, flags, family)) and their deltas, numpy arrays.
    What the bindings stage reads the ARP sender MACs from, without another map access."""

    words: Any  # (n, 6) u64
    count: Any  # (n,) u64
    keyset: int = 0  # changes whenever the map's key set does: with an equal `index`, the same entries
    index: Any = None  # the active entries' positions in that key set


@dataclass
class Interval:
    """What one map read yields, for every stage after it."""

    interval_s: float
    windows: Sequence[TargetWindow]  # every (interface, direction, VLAN, IP) with activity, busiest first
    health: dict[str, int]  # deltas of the kernel health counters
    health_total: dict[str, int]
    entries_live: int = 0
    entries_evicted: int = 0  # cumulative: inserts - live entries
    targets_live: int = 0  # distinct (interface, direction, VLAN, IP) in the map
    active: ActiveEntries | None = None  # the entries behind the windows (None: built from events)


@dataclass(slots=True)
class Peer:
    """What the sensor knows about one IP that is (or names) a BGP peer or a Kubernetes node."""

    name: str | None  # BIRD protocol name (Mesh_10_0_0_7), else the static file's name
    ip: str
    bgp_state: str | None = None  # Established / Active / Connect / Passive / Idle / ...; None = unknown
    proto_state: str | None = None  # BIRD protocol state: up / start / stop / down
    since: str | None = None  # BIRD's "Since" column, as BIRD prints it
    last_error: str | None = None
    source: str = "bird"  # "bird" | "static" | "k8s": the best source that knows the IP
    node_name: str | None = None  # Kubernetes node, when known
    socket: str | None = None  # the BIRD control socket the BGP state came from
    node_ready: bool | None = None  # Kubernetes Ready condition, when known
    # Calico's string rule (sensor.peers.mesh) for a Mesh_ peer, judged with this node's own address:
    # True = this node connects (and ARPs for the peer while it is dead), False = it waits; None = unknown
    active: bool | None = None

    @property
    def is_bgp(self) -> bool:
        """A BGP peer configured in BIRD (even while its state is unknown because BIRD is unreachable)."""
        return self.source == "bird"

    @property
    def established(self) -> bool:
        return self.bgp_state == ESTABLISHED


class PeerLookup(Protocol):
    """Who is behind an IP (sensor.peers.PeerBook)."""

    def get(self, ip: str) -> Peer | None: ...

    def peers(self) -> list[Peer]: ...


class VerdictView(Protocol):
    """The verdicts the peer stage keeps (sensor.pipeline.detect.VerdictEngine), as later stages read them."""

    def verdict(self, ip: str) -> str: ...

    def verdicts(self) -> dict[str, str]: ...  # ip -> verdict, for the IPs that are not healthy

    def alive(self, ip: str) -> bool: ...  # proof of life (replies, gratuitous, own requests) in the window

    def flagged_peers(self, book: PeerLookup) -> list[Any]: ...  # detect.FlaggedPeer: per-peer metrics


class LimitFds(NamedTuple):
    """The kernel's rate-limit objects (sensor.kernel.limitmap.LimitMap takes them)."""

    limits: int  # the limits hash map
    active: int  # limits_active: how many entries exist
    limctl: int  # arpsensor_limctl, run with BPF_PROG_TEST_RUN to refresh an entry under its lock


@dataclass
class StageContext:
    """What the stages of one run share (sensor.pipeline.stages builds them in order). A stage that
    produces something for later ones publishes it here: PeerStage sets `verdicts` and `peers`, NeighStage
    `unresolved`."""

    interval: float
    attach: str
    hostname: str
    log: Log
    verdicts: VerdictView | None = None
    peers: PeerLookup | None = None
    own: Callable[[str], bool] | None = None  # this host's own addresses (PeerStage publishes it)
    # ip -> "failed" | "incomplete": this host's unresolved neighbour entries on the watched interfaces,
    # updated in place every interval by NeighStage (zombie-peer evidence for the verdicts)
    unresolved: dict[str, str] | None = None
