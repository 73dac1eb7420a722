"""Wire the bindings engine into the run loop: this interval's active kernel entries -> Sightings ->
`arp_sensor.binding` events; the state file loaded at start, written when bindings changed (at most every
SAVE_EVERY seconds) and at exit. Also the `run` options --binding-*.

The entries carry the ARP sender hardware address and the MAC-mismatch flag in their key
(docs/architecture.md, "Kernel program"), so this costs no map access of its own: the entries were read
for the counts anyway. Entries are grouped with numpy before any Python loop (a storm's 10,000 request
entries come from a few hundred askers).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import click

from sensor.bindings import store
from sensor.bindings.engine import (
    DEFAULT_CONFLICT_S,
    DEFAULT_LEARN_S,
    DEFAULT_MAX_IPS,
    BindingEngine,
    BindingKey,
    Sighting,
)
from sensor.errors import SensorError
from sensor.events.encode import ErrorOnce, Event, warning_event
from sensor.model import StageContext

if TYPE_CHECKING:
    from sensor.pipeline.runner import Runner

SAVE_EVERY = 60.0  # seconds between state-file writes while bindings change
SAVE_IDLE = 600.0  # and at least this often otherwise (last-seen times move on)
NAMES_MAX = 4096  # grouped rows whose names are kept between intervals (a storm repeats a few thousand)

class BindingStage:
    options: ClassVar[list[Callable[[Any], Any]]] = [
        click.option("--bindings/--no-bindings", "bindings", default=True, show_default=True,
                     help="Track IP -> MAC bindings (arpwatch's job): new stations, MAC changes, flip-flops, "
                          "IP conflicts."),
        click.option("--binding-learn", type=click.FloatRange(0, None), default=DEFAULT_LEARN_S,
                     show_default=True, metavar="SECONDS",
                     help="Learn silently for this long after start before announcing new stations "
                          "(0: announce from the start)."),
        click.option("--binding-conflict-window", type=click.FloatRange(0.1, 3600), default=DEFAULT_CONFLICT_S,
                     show_default=True, metavar="SECONDS",
                     help="Two MACs claiming one IP within this many seconds is an ip-conflict; a MAC silent "
                          "this long before another takes over is a mac-changed."),
        click.option("--binding-max-ips", type=click.IntRange(1, None), default=DEFAULT_MAX_IPS,
                     show_default=True, metavar="N",
                     help="A MAC holding more IPs than this on one interface and VLAN is reported "
                          "(proxy ARP, spoofing)."),
        click.option("--binding-state", type=click.Path(dir_okay=False), default=None, metavar="PATH",
                     help="Keep bindings across restarts in this file (written atomically), like "
                          "arpwatch's arp.dat (the shipped unit and DaemonSet: /var/lib/arp-sensor/bindings.json)."),
    ]

    def __init__(self, engine: BindingEngine, state_path: str | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        self.state_path = state_path
        self.log = log or (lambda msg: None)
        self.ifnames: dict[int, str] = {}
        self._names: dict[tuple, tuple[BindingKey, str]] = {}  # grouped row -> its key and ECS MAC
        self._names_for: dict[int, str] = {}  # the interface names _names was built with
        self._grouper: Any = None  # sensor.bindings.rows.Grouper, made on the first interval
        self._bound: tuple[int, Any] | None = None  # (engine.version, sorted key hashes of the bindings)
        self._saved_at = 0.0
        self._errors = ErrorOnce("binding-stage-error", "bindings")

    @classmethod
    def from_options(cls, ctx: StageContext, *, bindings: bool, binding_learn: float,
                     binding_conflict_window: float, binding_max_ips: int,
                     binding_state: str | None) -> BindingStage | None:
        if not bindings:
            return None
        engine = BindingEngine(learn_s=binding_learn, conflict_s=binding_conflict_window, max_ips=binding_max_ips,
                               started=time.time(), hostname=ctx.hostname)
        return cls(engine, binding_state, ctx.log)

    def load(self, now: float) -> list[Event]:
        """Read the state file (if any): known stations are not announced again after a restart."""
        self._saved_at = now
        if not self.state_path:
            return []
        bindings, problem = store.load(self.state_path)
        self.engine.restore(bindings)
        if problem:
            return [warning_event("binding-state-unreadable", problem, now, self.engine.hostname,
                                  path=self.state_path)]
        return []

    def install(self, runner: Runner) -> None:
        self.ifnames = runner.ifnames  # the Runner's own dict: renames follow
        for ev in self.load(time.time()):
            runner.emit(ev)
        runner.interval_hooks.append(self.on_interval)
        runner.health_sources.append(self.health)
        # the learning period counts from when frames are counted, not from the seconds bcc compiles
        runner.ready_hooks.append(lambda: setattr(self.engine, "started", time.time()))

    def health(self) -> dict[str, int]:
        return {"bindings_live": len(self.engine.bindings), "bindings_untracked": self.engine.untracked,
                "binding_new_suppressed": self.engine.suppressed}

    def on_interval(self, interval: Any, now: float) -> list[Event]:
        """Never raises: a problem here costs this interval's binding events and one warning."""
        try:
            events = self.engine.update(self._sightings(interval, now), now)
            events += self._maybe_save(now)
            self._errors.ok()
            return events
        except Exception as e:
            return self._errors.warn(e, now, self.engine.hostname)

    def _sightings(self, interval: Any, now: float) -> list[Sighting]:
        """The interval's Sightings, minus the steady ones: a row whose key is already bound to its MAC
        (no conflict going on, no mismatch, not a probe) only refreshes last-seen here, without a
        Sighting, an event or a string built (a storm repeats the same few thousand rows each interval)."""
        a = interval.active
        if a is None:
            return []
        if self._names_for != self.ifnames or len(self._names) > NAMES_MAX:
            self._names, self._names_for = {}, dict(self.ifnames)  # renamed interfaces: rebuild the names
        from sensor.bindings import rows as R  # numpy and the key layout: only once frames are counted

        if self._grouper is None:
            self._grouper = R.Grouper()
        engine = self.engine
        names, refresh, bindings = self._names, engine.refresh, engine.bindings
        full = engine.full(now)
        rows, sums, flagged, dropped = self._grouper.group(a, self._bound_hashes, engine.room(now), engine.version)
        engine.untracked += dropped
        out = []
        for row, n, mm in zip(rows, sums, flagged, strict=True):
            named = names.get(row)
            if named is None:
                named = R.name_row(row, self.ifnames)
                if named[0] not in bindings and full and not mm and row[4] != R.KIND_PROBE:
                    engine.untracked += 1  # a hash-equal IP that is not bound: still no room
                    continue
                names[row] = named
            kind = row[4]
            if not mm and kind != R.KIND_PROBE and refresh(named[0], named[1], now):
                continue
            out.append(Sighting(*named[0], named[1], R.KIND_NAMES[kind], n, mm))
        return out

    def _bound_hashes(self) -> Any:
        """The bindings' key hashes (sensor.bindings.rows.binding_hashes), rebuilt when bindings came or went."""
        from sensor.bindings import rows as R

        if self._bound is None or self._bound[0] != self.engine.version:
            ifindex = {name: ifx for ifx, name in self.ifnames.items()}
            self._bound = (self.engine.version, R.binding_hashes(self.engine.bindings, ifindex))
        return self._bound[1]

    def _maybe_save(self, now: float) -> list[Event]:
        if not self.state_path:
            return []
        due = SAVE_EVERY if self.engine.dirty else SAVE_IDLE
        if now - self._saved_at < due:
            return []
        return self.save(now)

    def save(self, now: float) -> list[Event]:
        if not self.state_path:
            return []
        self._saved_at = now
        try:
            store.save(self.state_path, self.engine.bindings)
            self.engine.dirty = False
            return []
        except SensorError as e:
            return [warning_event("binding-state-unwritable", str(e), now, self.engine.hostname,
                                  path=self.state_path)]

    def close(self) -> None:
        for ev in self.save(time.time()):
            self.log(ev["message"])
