"""The output stage: `--output`, `--tag`, `--metrics-port`, `--metrics-addr`, and the emit path they build.

Installed first on the Runner, so every event goes through `emit`: each health metric event gets the
outputs' counters merged in and feeds the Prometheus metrics; SIGHUP reopens file outputs.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import click

from sensor.model import StageContext
from sensor.outputs.dispatch import Dispatcher, build_outputs
from sensor.outputs.spec import FORMS

if TYPE_CHECKING:
    from sensor.outputs.metrics import Metrics
    from sensor.pipeline.runner import Runner

CLOSE_TIMEOUT = 3.0  # seconds at shutdown to flush queued events to network outputs


class OutputStage:
    options: ClassVar[list[Callable[[Any], Any]]] = [
        click.option("--output", "-o", "output", multiple=True, default=("-",), show_default=True,
                     metavar="SPEC", help=f"Where events go (repeatable): {FORMS}."),
        click.option("--tag", default="arp_sensor", show_default=True,
                     help="Fluent tag for forward:// outputs (overridable per output with ?tag=)."),
        click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
                     help="Serve Prometheus metrics on this port (0: any free port; default: off)."),
        click.option("--metrics-addr", default="127.0.0.1", show_default=True,
                     help="Address for --metrics-port (0.0.0.0 to expose beyond this host)."),
    ]

    def __init__(self, dispatcher: Dispatcher, metrics: Metrics | None = None,
                 ctx: StageContext | None = None) -> None:
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.metrics_port: int | None = None
        self.ctx = ctx  # its verdicts (published by the PeerStage, built after us) feed the metrics

    @classmethod
    def from_options(cls, ctx: StageContext | None = None, *, output: tuple[str, ...] | list[str], tag: str,
                     metrics_port: int | None, metrics_addr: str) -> OutputStage:
        stage = cls(build_outputs(list(output) or ["-"], tag=tag), ctx=ctx)
        if metrics_port is not None:
            from sensor.outputs.metrics import Metrics  # prometheus_client only when asked for

            try:
                stage.metrics = Metrics()
                stage.metrics_port = stage.metrics.serve(metrics_addr, metrics_port)
            except BaseException:
                stage.dispatcher.close(0)
                raise
        return stage

    def emit(self, ev: dict[str, Any]) -> None:
        event = ev.get("event", {})
        if event.get("dataset") == "arp_sensor.health" and event.get("kind") == "metric":
            ev["arp_sensor"]["health"].update(self.dispatcher.health_counters())
            if self.metrics is not None:
                self.metrics.observe_outputs(self.dispatcher.stats())
                if self.ctx is not None and self.ctx.verdicts is not None:
                    self.metrics.set_verdicts(dict(Counter(self.ctx.verdicts.verdicts().values())))
                    if self.ctx.peers is not None:
                        self.metrics.set_peers(self.ctx.verdicts.flagged_peers(self.ctx.peers))
        if self.metrics is not None:
            self.metrics.observe_event(ev)
        self.dispatcher.emit(ev)

    def install(self, runner: Runner) -> None:
        """Every event the runner and the later stages emit goes through here. SIGHUP (logrotate's
        postrotate) reopens file outputs instead of killing the sensor."""
        runner.emit = self.emit
        signal.signal(signal.SIGHUP, lambda *_: self.dispatcher.reopen())

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        self.dispatcher.close(timeout)
        if self.metrics is not None:
            self.metrics.close()
