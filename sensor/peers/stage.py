"""The peer stage: peers and verdicts in the run loop (sensor.pipeline.runner.Runner hooks), and its options.

Per interval the Runner calls `PeerStage.on_interval(interval, now)`: refresh the PeerBook (bounded time),
update the verdicts with all of the interval's TargetWindows, and return the warning and alert events.
`annotate(ip)` gives `bgp.peer` for `arp_sensor.target` events (state as of the previous refresh).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import click

from sensor.events.encode import ErrorOnce, Event
from sensor.model import Interval, StageContext
from sensor.peers import PeerBook, peer_fields
from sensor.peers.book import CALICO_BIRD_SOCKETS
from sensor.peers.own import OwnAddresses, kernel_resolve
from sensor.pipeline.detect import VerdictEngine

if TYPE_CHECKING:
    from sensor.pipeline.runner import Runner


class PeerStage:
    options: ClassVar[list[Callable[[Any], Any]]] = [
        click.option("--bird-socket", "bird_sockets", multiple=True, metavar="PATH",
                     help="BIRD control socket to read BGP peers from (repeatable). Default: "
                          "/var/run/calico/bird.ctl and bird6.ctl, used when they exist."),
        click.option("--peers", "peers_file", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                     help="Static peers file: one 'IP [NAME] [NODE]' per line, # comments."),
        click.option("--k8s-nodes", "k8s_nodes", default=None, metavar="FILE|-",
                     help="`kubectl get nodes -o json` output (a file, or - for stdin): node names for IPs."),
        click.option("--verdict-window", type=click.FloatRange(1, 3600), default=10.0, show_default=True,
                     help="Seconds of ARP evidence per verdict; a verdict needs two windows of evidence."),
        click.option("--first-hand-check/--no-first-hand-check", default=True, show_default=True,
                     help="Before a zombie verdict that only other hosts' requests back, have this host's "
                          "kernel resolve the IP (at most 3 ARP/NS per check, 4 checks per interval), so a "
                          "live peer answers us. Off: nothing on the wire, but a host on the passive side "
                          "of a session can call a live peer whose BGP daemon is down a zombie."),
    ]

    def __init__(self, book: PeerBook, engine: VerdictEngine) -> None:
        self.book = book
        self.engine = engine
        self._errors = ErrorOnce("peer-stage-error", "peers/verdicts")
        self._confirms = 0

    @classmethod
    def from_options(cls, ctx: StageContext, *, bird_sockets: list[str] | tuple[str, ...] | None,
                     peers_file: str | None, k8s_nodes: str | None, verdict_window: float,
                     first_hand_check: bool = True, min_requests: int = 3) -> PeerStage:
        """No --bird-socket: Calico's sockets, used only once they exist. Explicit ones must exist (else a
        warning event; the sensor keeps counting). Publishes the verdicts and the peers on `ctx`."""
        interval, hostname = ctx.interval, ctx.hostname
        explicit = list(bird_sockets or [])
        book = PeerBook(explicit, optional_sockets=[] if explicit else list(CALICO_BIRD_SOCKETS),
                        peers_file=peers_file, k8s_nodes=k8s_nodes,
                        timeout=min(0.25, interval / 4), budget=min(0.5, interval / 2), hostname=hostname)
        own = OwnAddresses()
        engine = VerdictEngine(window_s=verdict_window, min_requests=min_requests, hostname=hostname, own=own,
                               confirm=kernel_resolve if first_hand_check else None)
        if ctx.unresolved is not None:  # NeighStage (earlier in STAGES) keeps it current
            engine.neigh = ctx.unresolved
        ctx.verdicts, ctx.peers, ctx.own = engine, book, own
        return cls(book, engine)

    def on_interval(self, interval: Interval, now: float) -> list[Event]:
        """Never raises: a bug here must not stop the counting; it becomes one warning per new error."""
        try:
            events = self.book.refresh(now)
            events += self.engine.update(interval.windows, self.book, now)
            self._errors.ok()
            return events
        except Exception as e:
            return self._errors.warn(e, now, self.engine.hostname)

    def annotate(self, ip: str) -> dict[str, Any] | None:
        peer = self.book.get(ip)
        return peer_fields(peer) if peer is not None else None

    def install(self, runner: Runner) -> None:
        """Register with a sensor.pipeline.runner.Runner; the first refresh happens now so that the first
        interval's target events are already annotated."""
        for ev in self.book.refresh(time.time()):
            runner.emit(ev)
        runner.interval_hooks.append(self.on_interval)
        runner.target_annotators.append(self.annotate)
        runner.health_sources.append(self.health)

    def health(self) -> dict[str, int]:
        """First-hand checks (the host's kernel asked for a zombie candidate itself) in the interval."""
        n, self._confirms = self.engine.confirms - self._confirms, self.engine.confirms
        return {"verdict_first_hand_checks": n}

    def close(self) -> None:
        self.book.close()
