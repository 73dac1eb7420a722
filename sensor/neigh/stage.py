"""Neighbour-table pressure as a run-loop stage: health fields, Prometheus figures (through the health
event) and warning events, plus the FAILED/INCOMPLETE entries the verdicts use as evidence.

`Pressure` is the pure part (unit-tested without root): give it one read of the table and the entries,
get the health fields and the events. `NeighStage` reads the kernel each interval (a stage of
sensor.pipeline.stages, before the peer stage so the verdicts see this interval's entries).

Warnings (`arp_sensor.health`, `event.kind: event`), one per transition:
  neigh-table-pressure          entries / gc_thresh3 reached --neigh-warn-fraction
  neigh-table-pressure-cleared  back under 90 % of the fraction (hysteresis; level info)
  neigh-table-full              the kernel refused new entries (table_fulls grew) in the interval
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import click

from sensor.events.encode import ErrorOnce, Event, warning_event
from sensor.model import StageContext
from sensor.neigh.table import STATE_NAMES, Entry, NeighReader, TableStats

if TYPE_CHECKING:
    from sensor.pipeline.runner import Runner

DEFAULT_WARN_FRACTION = 0.8
HYSTERESIS = 0.9  # the warning clears only below 90 % of the fraction: no flapping at the edge
UNRESOLVED = ("failed", "incomplete")  # the kernel asked and got no answer (yet)
# cumulative kernel counters reported as per-interval deltas (health key = "neigh_" + name)
DELTAS = ("table_fulls", "res_failed", "unresolved_discards", "forced_gc_runs")


class Pressure:
    def __init__(self, warn_fraction: float = DEFAULT_WARN_FRACTION, hostname: str | None = None) -> None:
        self.warn_fraction = warn_fraction
        self.hostname = hostname
        self._prev: dict[str, int] | None = None
        self._warned = False
        self._full = False
        self.unresolved: dict[str, str] = {}  # ip -> failed | incomplete, on the watched interfaces

    def update(self, table: TableStats, entries: Iterable[Entry], ifnames: dict[int, str],
               now: float) -> tuple[dict[str, Any], list[Event]]:
        per_if: dict[int, dict[str, int]] = {i: dict.fromkeys(STATE_NAMES, 0) for i in ifnames}
        unresolved: dict[str, str] = {}
        for e in entries:
            counts = per_if.get(e.ifindex)
            if counts is None:
                continue
            counts[e.state] += 1
            if e.state in UNRESOLVED:
                unresolved[e.ip] = e.state
        self.unresolved = unresolved
        h: dict[str, Any] = {"neigh_table_entries": table.entries, "neigh_gc_thresh3": table.gc_thresh3,
                             "neigh_table_fill": round(table.fill, 4)}
        for name in STATE_NAMES:
            h[f"neigh_{name}"] = sum(c.get(name, 0) for c in per_if.values())
        h["neigh_interfaces"] = [{"name": ifnames[i], **c} for i, c in sorted(per_if.items())]
        prev = self._prev
        for name in DELTAS:
            if name in table.stats:
                # a counter that went backwards (it cannot, short of a reboot) restarts from zero
                before = prev.get(name, table.stats[name]) if prev is not None else table.stats[name]
                h[f"neigh_{name}"] = max(0, table.stats[name] - before)
        self._prev = dict(table.stats)
        return h, self._events(table, h, now)

    def _events(self, table: TableStats, h: dict[str, Any], now: float) -> list[Event]:
        events: list[Event] = []
        fill = table.fill
        limit = f"{table.entries} of gc_thresh3 {table.gc_thresh3}"
        if not self._warned and fill >= self.warn_fraction:
            self._warned = True
            events.append(warning_event(
                "neigh-table-pressure",
                f"the ARP neighbour table holds {limit} entries ({fill:.0%}, warning at "
                f"{self.warn_fraction:.0%}); {h['neigh_failed']} failed and {h['neigh_incomplete']} incomplete "
                "on the watched interfaces — past gc_thresh3 the kernel refuses new neighbours "
                "(\"neighbour table overflow\"): see docs/operations.md", now, self.hostname))
        elif self._warned and fill < self.warn_fraction * HYSTERESIS:
            self._warned = False
            events.append(warning_event(
                "neigh-table-pressure-cleared", f"the ARP neighbour table is back to {limit} entries ({fill:.0%})",
                now, self.hostname, level="info"))
        fulls = h.get("neigh_table_fulls", 0)
        if fulls and not self._full:
            events.append(warning_event(
                "neigh-table-full", f"the kernel refused {fulls} new ARP neighbour entries in the interval "
                f"(table_fulls; {limit}): hosts on this node cannot resolve new neighbours", now, self.hostname,
                level="error"))
        self._full = bool(fulls)
        return events


class NeighStage:
    """First in STAGES: its interval hook runs before the peer stage's, so the verdicts see this interval's
    unresolved entries (published on the StageContext as one dict, updated in place)."""

    options: ClassVar[list[Callable[[Any], Any]]] = [
        click.option("--neigh/--no-neigh", "neigh", default=True, show_default=True,
                     help="Read the neighbour table (netlink) every interval: health figures, warnings, and "
                          "FAILED entries as zombie-peer evidence."),
        click.option("--neigh-warn-fraction", type=click.FloatRange(0.001, 1.0), default=DEFAULT_WARN_FRACTION,
                     show_default=True,
                     help="Warn when the ARP neighbour table holds this fraction of gc_thresh3 (the machine's "
                          "hard limit; never changed by arp-sensor)."),
    ]

    def __init__(self, pressure: Pressure, reader: NeighReader | None = None) -> None:
        self.pressure = pressure
        self.reader = reader
        self.ifnames: dict[int, str] = {}
        self.health: dict[str, Any] = {}
        self.unresolved: dict[str, str] = {}  # shared with the verdicts: updated in place every interval
        self._errors = ErrorOnce("neigh-read-error", "the neighbour table read")

    @classmethod
    def from_options(cls, ctx: StageContext, *, neigh: bool, neigh_warn_fraction: float) -> NeighStage | None:
        if not neigh:
            return None
        stage = cls(Pressure(neigh_warn_fraction, ctx.hostname))
        ctx.unresolved = stage.unresolved
        return stage

    def install(self, runner: Runner) -> None:
        self.ifnames = runner.ifnames  # the Runner's own dict: renames and vanished interfaces follow
        runner.interval_hooks.append(self.on_interval)
        runner.health_sources.append(lambda: self.health)

    def on_interval(self, _interval: Any, now: float) -> list[Event]:
        """Never raises: a netlink problem costs this interval's figures and one warning, not the sensor."""
        try:
            if self.reader is None:
                self.reader = NeighReader()
            entries = self.reader.entries(list(self.ifnames))
            self.health, events = self.pressure.update(self.reader.table(), entries, self.ifnames, now)
            self._errors.ok()
        except Exception as e:
            self.health = {}
            return self._errors.warn(e, now, self.pressure.hostname)
        self.unresolved.clear()
        self.unresolved.update(self.pressure.unresolved)
        return events

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
