"""The stages after the map read, wired in ONE place, in their one correct order.

    kernel maps ─► Runner.poll: read, aggregate, target events
                     └► per interval, in this order:
                          NeighStage      the kernel's neighbour table (netlink)   → ctx.unresolved
                          PeerStage       peers (BIRD, static, k8s) + verdicts     → ctx.verdicts, ctx.peers
                                          (reads ctx.unresolved)
                          BindingStage    IP -> MAC bindings from the active entries (arp_sensor.binding)
                          RateLimitStage  verdicts → kernel limit entries          (reads ctx.verdicts)
                   every event ─► OutputStage (JSON sinks, Prometheus)             (reads ctx.verdicts)

A stage is a class with `options` (its click options), `from_options(ctx, **its_options)` (None when its
options leave it off), `install(runner)` and `close()`; what it shares with later stages goes on the
StageContext (sensor.model). A new stage: one module, plus one line in STAGES below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from sensor.bindings.stage import BindingStage
from sensor.model import Log, StageContext
from sensor.neigh.stage import NeighStage
from sensor.outputs.stage import OutputStage
from sensor.peers.stage import PeerStage
from sensor.pipeline.limit_stage import RateLimitStage

if TYPE_CHECKING:  # the runner (numpy, the map reader) loads only when a command runs
    from sensor.pipeline.runner import Runner


class Stage(Protocol):
    options: ClassVar[list[Callable[[Any], Any]]]

    @classmethod
    def from_options(cls, ctx: StageContext, **opts: Any) -> Stage | None: ...

    def install(self, runner: Runner) -> None: ...

    def close(self) -> None: ...


# The order is the dataflow: neighbour entries before the verdicts, verdicts before the limits that act on them.
STAGES: tuple[type[Stage], ...] = (NeighStage, PeerStage, BindingStage, RateLimitStage)


def option_names(options: Iterable[Callable[[Any], Any]]) -> list[str]:
    """The parameter names a list of click.option decorators declares."""

    def probe() -> None: ...

    for opt in options:
        opt(probe)
    return [p.name for p in getattr(probe, "__click_params__", []) if p.name]


def stage_options(*, outputs: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Every stage's click options on a command (sqlite-utils style), outputs' too for `run`."""
    classes = ((OutputStage,) if outputs else ()) + STAGES

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for cls in reversed(classes):
            for opt in reversed(cls.options):
                f = opt(f)
        return f

    return decorate


def _own(cls: type[Stage], opts: dict[str, Any]) -> dict[str, Any]:
    return {k: opts.pop(k) for k in option_names(cls.options)}


def build_stages(ctx: StageContext, opts: dict[str, Any], *, outputs: bool) -> list[Stage]:
    """Builds the stages from the command's options (consumed from `opts`), in order; outputs first when
    asked for, since everything the others emit goes through them."""
    own = {cls: _own(cls, opts) for cls in ((OutputStage,) if outputs else ()) + STAGES}
    built: list[Stage] = []
    try:
        for cls, kw in own.items():
            stage = cls.from_options(ctx, **kw)
            if stage is not None:
                built.append(stage)
    except BaseException:
        close_stages(built, ctx.log)
        raise
    return built


def install_stages(stages: Iterable[Stage], runner: Runner) -> None:
    for stage in stages:
        stage.install(runner)


def close_stages(stages: Iterable[Stage], log: Log) -> None:
    """Closes in reverse order (limits go before the verdicts they came from; outputs last, to flush).
    Call it before Runner.close: a stage may still need the kernel's maps (the limits are removed)."""
    for stage in reversed(list(stages)):
        try:
            stage.close()
        except Exception as e:  # one stage failing to close must not keep the others open
            log(f"closing {type(stage).__name__}: {type(e).__name__}: {e}")
