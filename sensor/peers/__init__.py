"""Who is behind an IP: BGP peers from BIRD control sockets, a static peers file, Kubernetes nodes.

`PeerBook` merges the sources by IP; `refresh(now)` polls them within a bounded time and returns warning
events when a source fails or recovers. No bcc here.
"""

from __future__ import annotations

from typing import Any

from sensor.model import ESTABLISHED, Peer


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


from sensor.peers.book import PeerBook, default_bird_sockets  # noqa: E402  (book imports peer_fields' module)

__all__ = ["ESTABLISHED", "Peer", "PeerBook", "default_bird_sockets", "peer_fields"]
