"""Static peers file: names (and Kubernetes node names) for IPs when BIRD is not reachable or not used.

Format, one peer per line:

    # comment (also after a peer)
    IP [NAME] [NODE]
    198.18.0.7  Mesh_198_18_0_7  worker-7
    198.18.0.8  rack2-sw
    198.18.0.9
    198.18.0.10 -  worker-10      # "-": no name, only the node

IP is an IPv4 or IPv6 address; NAME a peer name without spaces (shown as `bgp.peer.name` when BIRD does not
know the IP); NODE the Kubernetes node name (`kubernetes.node.name`, and the `kubectl delete node` hint).
A bad line is reported with its line number and skipped; the rest of the file is used.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StaticPeer:
    ip: str
    name: str | None = None
    node_name: str | None = None


def parse_peers(text: str, source: str = "peers file") -> tuple[list[StaticPeer], list[str]]:
    """Return (peers, problems); each problem is one line like `peers.txt:3: 'x' is not an IP address`."""
    peers: list[StaticPeer] = []
    problems: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) > 3:
            problems.append(f"{source}:{n}: expected 'IP [NAME] [NODE]', got {len(fields)} fields")
            continue
        try:
            ip = str(ipaddress.ip_address(fields[0]))
        except ValueError:
            problems.append(f"{source}:{n}: {fields[0][:60]!r} is not an IP address")
            continue
        name = fields[1] if len(fields) > 1 and fields[1] != "-" else None
        node = fields[2] if len(fields) > 2 and fields[2] != "-" else None
        peers.append(StaticPeer(ip, name, node))
    return peers, problems
