"""PeerBook: the merged view of all peer sources, refreshed once per interval within a time budget.

Merge rules, by IP:
  - BIRD (BGP protocols with a neighbor address) gives name, BGP/protocol state, since, last error, socket.
    Two protocols for one IP (bird.ctl and bird6.ctl, Mesh_ and Node_): an Established one wins.
  - The static file gives a name for IPs BIRD does not know, and a node name (it wins over Kubernetes).
  - Kubernetes gives the node name (when not set statically) and the Ready condition.
A source that fails keeps its last data; a failed BIRD socket's peers stay in the book with state None
("unknown") until it answers again. One warning event per transition (unavailable / recovered).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from sensor.errors import EXIT_USAGE, SensorError
from sensor.events.encode import Event, warning_event
from sensor.model import ESTABLISHED, Peer
from sensor.peers.bird import BirdClient, BirdError, BirdProtocol
from sensor.peers.k8s import K8sNode, K8sNodesError, parse_nodes
from sensor.peers.mesh import connects
from sensor.peers.static import StaticPeer, parse_peers

CALICO_BIRD_SOCKETS = ("/var/run/calico/bird.ctl", "/var/run/calico/bird6.ctl")


def default_bird_sockets() -> list[str]:
    """Calico's BIRD sockets that exist right now (the default for `--bird-socket`)."""
    return [p for p in CALICO_BIRD_SOCKETS if os.path.exists(p)]


@dataclass(slots=True)
class _BirdSource:
    client: BirdClient
    required: bool  # an explicit --bird-socket: warn when missing even before it was ever seen
    ok: bool | None = None  # None: not asked yet
    seen: bool = False
    protocols: list[BirdProtocol] = field(default_factory=list)
    error: str | None = None
    next_try: float = 0.0


@dataclass(slots=True)
class _FileSource:
    path: str
    kind: str  # "static" | "k8s"
    mtime: float | None = None
    ok: bool = True
    static: list[StaticPeer] = field(default_factory=list)
    nodes: list[K8sNode] = field(default_factory=list)


class PeerBook:
    """Peers by IP from BIRD sockets, a static peers file and Kubernetes node JSON.

    bird_sockets: control sockets that must be there (missing → warning event);
    optional_sockets: polled only once they exist (Calico's defaults), silent until then.
    peers_file: static peers file; k8s_nodes: `kubectl get nodes -o json` output file, or "-" for stdin
    (read once here). Unreadable files at construction raise SensorError (exit 2); later failures are
    warning events and the last good data is kept.
    timeout: per BIRD exchange; budget: total time one refresh may spend on BIRD sockets;
    retry_s: after a socket timed out, wait this long before paying the timeout again.
    """

    def __init__(self, bird_sockets: list[str] | None = None, *, optional_sockets: list[str] | None = None,
                 peers_file: str | None = None, k8s_nodes: str | None = None, timeout: float = 0.25,
                 budget: float = 0.5, retry_s: float = 5.0, hostname: str | None = None,
                 local_ip: str | None = None) -> None:
        self.timeout = timeout
        self.budget = budget
        self.retry_s = retry_s
        self.hostname = hostname
        self._bird: list[_BirdSource] = []
        for path in bird_sockets or []:
            self._bird.append(_BirdSource(BirdClient(path, timeout), required=True))
        for path in optional_sockets or []:
            if path not in (bird_sockets or []):
                self._bird.append(_BirdSource(BirdClient(path, timeout), required=False))
        self._pending: list[tuple[str, str, str | None]] = []  # (action, message, path) before first refresh
        self._files: list[_FileSource] = []
        if peers_file:
            self._files.append(self._load_initial(_FileSource(peers_file, "static")))
        if k8s_nodes:
            self._files.append(self._load_initial(_FileSource(k8s_nodes, "k8s")))
        self._peers: dict[str, Peer] = {}
        # This node's own address in the mesh, for Calico's string rule: `local_ip` when given, else the
        # `Source address` BIRD reports for its sessions, else the Kubernetes node named `hostname`.
        self.node_ip: str | None = local_ip
        self._node_ip_fixed = local_ip is not None
        self._merge()

    # -- public API -------------------------------------------------------------------------------------
    def get(self, ip: str) -> Peer | None:
        return self._peers.get(ip)

    def peers(self) -> list[Peer]:
        return list(self._peers.values())

    def sources(self) -> list[dict[str, Any]]:
        """State of every source, for `status`-like output and tests."""
        out: list[dict[str, Any]] = [
            {"kind": "bird", "path": s.client.path, "ok": s.ok, "error": s.error,
             "protocols": len(s.protocols)} for s in self._bird
        ]
        out += [{"kind": f.kind, "path": f.path, "ok": f.ok} for f in self._files]
        return out

    def refresh(self, now: float) -> list[Event]:
        """Poll BIRD sockets (bounded by `budget`), reload changed files, merge; return warning events."""
        events = [self._warn(a, m, now, p) for a, m, p in self._pending]
        self._pending.clear()
        end = time.monotonic() + self.budget
        for src in self._bird:
            if src.next_try > time.monotonic():
                continue
            left = end - time.monotonic()
            if left <= 0.01:
                break  # out of budget: try the rest next interval, keep their state
            started = time.monotonic()
            try:
                protos = src.client.show_protocols(deadline=started + min(self.timeout, left))
            except BirdError as e:
                missing = not os.path.exists(src.client.path)
                if missing and not src.required and not src.seen:
                    continue  # a default socket that never existed: not an error
                if time.monotonic() - started >= min(self.timeout, left) * 0.9:
                    # it hangs: don't pay the timeout every interval
                    src.next_try = time.monotonic() + self.retry_s
                if src.ok is not False:
                    events.append(self._warn(
                        "peer-source-unavailable",
                        f"BIRD socket unavailable, BGP state of its peers is unknown until it answers: {e}",
                        now, src.client.path))
                src.ok, src.error = False, str(e)
                continue
            src.seen = True
            src.next_try = 0.0
            if src.ok is False:
                events.append(self._warn(
                    "peer-source-recovered",
                    f"BIRD socket {src.client.path} answers again ({len(protos)} protocols)",
                    now, src.client.path))
            src.ok, src.error, src.protocols = True, None, protos
        for f in self._files:
            events += self._reload(f, now)
        self._merge()
        return events

    # -- files ------------------------------------------------------------------------------------------
    def _read(self, f: _FileSource) -> str:
        if f.path == "-":
            return sys.stdin.read()
        with open(f.path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def _parse(self, f: _FileSource, text: str) -> list[str]:
        name = "stdin" if f.path == "-" else f.path
        if f.kind == "static":
            f.static, problems = parse_peers(text, name)
        else:
            f.nodes, problems = parse_nodes(text, name)
        return problems

    def _load_initial(self, f: _FileSource) -> _FileSource:
        what = "peers file" if f.kind == "static" else "Kubernetes nodes file"
        try:
            if f.path != "-":
                f.mtime = os.stat(f.path).st_mtime
            problems = self._parse(f, self._read(f))
        except OSError as e:
            raise SensorError(f"cannot read {what} {f.path}: {e.strerror or e}", EXIT_USAGE) from None
        except K8sNodesError as e:
            raise SensorError(str(e), EXIT_USAGE) from None
        action = "peer-file-invalid-line" if f.kind == "static" else "k8s-nodes-invalid-entry"
        self._pending += [(action, p, None if f.path == "-" else f.path) for p in problems]
        return f

    def _reload(self, f: _FileSource, now: float) -> list[Event]:
        if f.path == "-":
            return []
        events: list[Event] = []
        try:
            mtime = os.stat(f.path).st_mtime
            if mtime == f.mtime and f.ok:
                return []
            problems = self._parse(f, self._read(f))
        except (OSError, K8sNodesError) as e:
            if f.ok:
                msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                msg = f"cannot reload {f.path}, keeping its last content: {msg}"
                events.append(self._warn("peer-source-unavailable", msg, now, f.path))
            f.ok = False
            return events
        f.mtime = mtime
        if not f.ok:
            events.append(self._warn("peer-source-recovered", f"{f.path} readable again", now, f.path))
        f.ok = True
        action = "peer-file-invalid-line" if f.kind == "static" else "k8s-nodes-invalid-entry"
        events += [self._warn(action, p, now, f.path) for p in problems]
        return events

    def _warn(self, action: str, message: str, now: float, path: str | None) -> Event:
        return warning_event(action, message, now, self.hostname, path)

    # -- merge ------------------------------------------------------------------------------------------
    def _merge(self) -> None:
        peers: dict[str, Peer] = {}
        for src in self._bird:
            for p in src.protocols:
                ip = p.neighbor_ip if p.is_bgp else None
                if ip is None:
                    continue
                known = src.ok is True
                peer = Peer(
                    name=p.name, ip=ip, source="bird", socket=src.client.path,
                    bgp_state=p.bgp_state if known else None, proto_state=p.state if known else None,
                    since=p.since if known else None, last_error=p.last_error if known else None,
                )
                old = peers.get(ip)
                if old is None or (peer.bgp_state == ESTABLISHED and old.bgp_state != ESTABLISHED):
                    peers[ip] = peer
        for f in self._files:
            for s in f.static:
                peer = peers.get(s.ip)
                if peer is None:
                    peers[s.ip] = Peer(name=s.name, ip=s.ip, source="static", node_name=s.node_name)
                elif s.node_name:
                    peer.node_name = s.node_name
            for n in f.nodes:
                for ip in n.ips:
                    peer = peers.get(ip)
                    if peer is None:
                        peer = peers[ip] = Peer(name=None, ip=ip, source="k8s")
                    if peer.node_name is None:
                        peer.node_name = n.name
                    if peer.node_name == n.name:
                        peer.node_ready = n.ready
        self._node_ip_from(peers)
        self._peers = peers

    def _node_ip_from(self, peers: dict[str, Peer]) -> None:
        """Learn this node's address (kept once seen), then mark each Mesh_ peer active or passive."""
        if not self._node_ip_fixed:
            seen: dict[str, int] = {}
            for src in self._bird:
                for p in src.protocols:
                    addr = p.details.get("Source address", "").split("%")[0].strip() if p.is_bgp else ""
                    if addr:
                        seen[addr] = seen.get(addr, 0) + 1
            if not seen and self.hostname:
                for f in self._files:
                    for n in f.nodes:
                        if n.name == self.hostname:
                            seen.update({ip: 1 for ip in n.ips if ":" not in ip})
            if seen:
                self.node_ip = max(sorted(seen), key=lambda a: seen[a])
        if self.node_ip is None:
            return
        for peer in peers.values():
            if peer.is_bgp and peer.name and peer.name.startswith("Mesh_") and ":" not in peer.ip:
                try:
                    peer.active = connects(self.node_ip, peer.ip)
                except ValueError:
                    peer.active = None

    def close(self) -> None:
        for src in self._bird:
            src.client.close()
