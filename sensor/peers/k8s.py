"""Kubernetes nodes from `kubectl get nodes -o json` output (a NodeList, a single Node, or a List).

No Kubernetes client library needed. Per node: name, InternalIP addresses, Calico's
`projectcalico.org/IPv4Address` annotation (the BGP address, `10.0.0.7/24` → `10.0.0.7`) and the Ready
condition. A node with missing or odd fields is kept as far as it is usable and reported, never a crash.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

CALICO_IPV4_ANNOTATION = "projectcalico.org/IPv4Address"
CALICO_IPV6_ANNOTATION = "projectcalico.org/IPv6Address"


@dataclass(slots=True)
class K8sNode:
    name: str
    ips: list[str] = field(default_factory=list)  # Calico BGP address first, then InternalIPs
    ready: bool | None = None  # None: no Ready condition reported


class K8sNodesError(ValueError):
    """The document is not kubectl's node JSON at all (not JSON, no items)."""


def _ip(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_interface(value.strip()).ip)  # accepts "10.0.0.7" and "10.0.0.7/24"
    except ValueError:
        return None


def parse_nodes(text: str, source: str = "k8s nodes") -> tuple[list[K8sNode], list[str]]:
    """Return (nodes, problems). Raises K8sNodesError when the text is not node JSON at all."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise K8sNodesError(f"{source}: not JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(doc, dict) and doc.get("kind") == "Node":
        items: Any = [doc]
    elif isinstance(doc, dict) and isinstance(doc.get("items"), list):
        items = doc["items"]
    else:
        raise K8sNodesError(f"{source}: expected `kubectl get nodes -o json` output (an object with items)")
    nodes: list[K8sNode] = []
    problems: list[str] = []
    for i, item in enumerate(items):
        meta = item.get("metadata") if isinstance(item, dict) else None
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not name:
            problems.append(f"{source}: items[{i}]: node without metadata.name, skipped")
            continue
        node = K8sNode(name)
        annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
        for key in (CALICO_IPV4_ANNOTATION, CALICO_IPV6_ANNOTATION):
            if key in annotations:
                ip = _ip(annotations[key])
                if ip is None:
                    bad = str(annotations[key])[:60]
                    problems.append(f"{source}: node {name}: bad {key} annotation {bad!r}")
                elif ip not in node.ips:
                    node.ips.append(ip)
        status = item.get("status") if isinstance(item.get("status"), dict) else {}
        addresses = status.get("addresses") if isinstance(status.get("addresses"), list) else []
        for a in addresses:
            if isinstance(a, dict) and a.get("type") == "InternalIP":
                ip = _ip(a.get("address"))
                if ip is None:
                    problems.append(f"{source}: node {name}: bad InternalIP {str(a.get('address'))[:60]!r}")
                elif ip not in node.ips:
                    node.ips.append(ip)
        conditions = status.get("conditions") if isinstance(status.get("conditions"), list) else []
        for c in conditions:
            if isinstance(c, dict) and c.get("type") == "Ready":
                node.ready = {"True": True, "False": False}.get(str(c.get("status")))
        if not node.ips:
            problems.append(f"{source}: node {name}: no InternalIP, no {CALICO_IPV4_ANNOTATION} annotation")
        nodes.append(node)
    return nodes, problems
