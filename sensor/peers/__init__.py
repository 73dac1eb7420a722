"""Who is behind an IP: BGP peers from BIRD control sockets, a static peers file, Kubernetes nodes.

`PeerBook` merges the sources by IP; `refresh(now)` polls them within a bounded time and returns warning
events when a source fails or recovers. No bcc here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ESTABLISHED = "Established"


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


def peer_fields(peer: Peer) -> dict[str, Any] | None:
    """`bgp.peer` for events: name, state ("unknown" while BIRD cannot be asked), last_error when set.
    None for an IP only Kubernetes knows (a node, not a BGP peer we can name)."""
    if not peer.is_bgp and not peer.name:
        return None
    out: dict[str, Any] = {}
    if peer.name:
        out["name"] = peer.name
    out["state"] = peer.bgp_state or "unknown"
    if peer.last_error:
        out["last_error"] = peer.last_error
    if peer.active is not None:
        out["active"] = peer.active
    return out


from sensor.peers.book import PeerBook, default_bird_sockets  # noqa: E402  (book imports Peer from here)

__all__ = ["ESTABLISHED", "Peer", "PeerBook", "default_bird_sockets", "peer_fields"]
