"""Calico's node-to-node mesh rules, in one place (the lab's BIRD renderer and the sensor both use them).

- Peers are named `Mesh_<ip with dots as underscores>`.
- The mesh is unidirectional: a node writes `passive on` towards every peer whose address **string** sorts
  after its own (Calico's confd template: `{{if gt $onode_ip $node_ip}}`, a Go string comparison; the
  newer Go renderer keeps it, "peer IP lexically greater"). So "198.18.0.9" is passive towards nobody
  that "198.18.0.10" is: "198.18.0.10" < "198.18.0.9" as text, whatever the numbers say.
- Of each pair, the node with the greater string connects. When a node dies, the live nodes that keep
  connecting to it (and so keep broadcasting ARP for it) are exactly those whose string sorts after its own.
"""

from __future__ import annotations

import ipaddress


def canonical(ip: str) -> str:
    """The address as Calico stores it (`ip_addr_v4`: dotted quad, no leading zeros)."""
    return str(ipaddress.ip_address(ip))


def protocol_name(ip: str) -> str:
    """Calico's name for a full-mesh peer: Mesh_10_0_0_7."""
    return "Mesh_" + canonical(ip).replace(".", "_").replace(":", "_")


def is_passive(local_ip: str, peer_ip: str) -> bool:
    """True when the node `local_ip` waits for `peer_ip` to connect: the peer's string sorts after ours."""
    return canonical(peer_ip) > canonical(local_ip)


def connects(local_ip: str, peer_ip: str) -> bool:
    """True when the node `local_ip` is the active side towards `peer_ip` (it connects, and ARPs for a
    dead peer in its reconnect loop): our string sorts after the peer's."""
    return canonical(local_ip) > canonical(peer_ip)
