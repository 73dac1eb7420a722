"""The run loop: attach, then every interval read the maps, aggregate, and emit events.

Kept free of click so the demo, `top` and the benchmarks can drive it too. Only the Datapath touches bcc.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sensor.errors import EXIT_INTERNAL, SensorError
from sensor.events import encode as events
from sensor.kernel.layout import DEFAULT_MAX_ENTRIES
from sensor.kernel.reader import MapReader
from sensor.model import Interval
from sensor.pipeline.aggregate import Aggregator, select

Emit = Callable[[events.Event], None]


@dataclass
class RunOptions:
    interfaces: list[str]
    attach: str = "both"  # xdp | tc | both
    xdp_mode: str = "auto"  # auto | native | generic
    interval: float = 1.0
    duration: float | None = None
    top: int = 20
    min_requests: int = 1
    ready_file: str | None = None
    max_entries: int = DEFAULT_MAX_ENTRIES
    fast_slots: int | None = None  # None: the header's default
    hostname: str = field(default_factory=socket.gethostname)


class Runner:
    def __init__(self, opts: RunOptions, emit: Emit, log: Callable[[str], None] | None = None) -> None:
        self.opts = opts
        self.emit = emit
        self.log = log or (lambda msg: None)
        self.stop_event = threading.Event()
        self.started = False  # set once every program is attached and the baseline is read
        self.datapath = None
        self.ifnames: dict[int, str] = {}
        # Hooks for later stages (peers, verdicts, rate limits): called once per interval.
        self.interval_hooks: list[Callable[[Interval, float], list[events.Event]]] = []
        self.target_annotators: list[Callable[[str], dict | None]] = []
        # Stages add their own counters to every health event (e.g. the rate-limit stage).
        self.health_sources: list[Callable[[], dict]] = []
        # The attach watchdog: each hook as last checked, and its state ("ok", "taken", "failed").
        self.hooks: list = []
        self.hook_states: dict[tuple[str, str], str] = {}
        # Called once everything is compiled and attached (systemd's READY=1 goes here).
        self.ready_hooks: list[Callable[[], None]] = []

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        from sensor.kernel.datapath import Datapath  # the bcc import happens here, not at CLI parse time

        self.datapath = Datapath(self.opts.max_entries, self.opts.fast_slots)
        for ifname in self.opts.interfaces:
            if self.stop_event.is_set():  # SIGTERM while compiling: attach nothing, announce nothing
                return
            att = self.datapath.attach(ifname, self.opts.attach, self.opts.xdp_mode)
            self.ifnames[att.ifindex] = ifname
            for note in att.notes:
                self.log(note)
        self.reader = MapReader(self.datapath.maps, self.opts.max_entries)
        self.aggregator = Aggregator(self.ifnames)
        self.aggregator.update(self.reader.snapshot())  # baseline: maps are new, so all zero
        self.if_stats = self._read_if_stats()
        if self.stop_event.is_set():
            return
        self.started = True
        if self.opts.ready_file:
            with open(self.opts.ready_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        for hook in self.ready_hooks:
            hook()

    def close(self) -> list[str]:
        if self.datapath is None:
            return []
        problems = self.datapath.detach_all()
        self.datapath = None
        return problems

    def request_stop(self, *_args) -> None:
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.request_stop)

    # -- loop ------------------------------------------------------------------------------------
    def run(self) -> int:
        """Polls until stopped or --duration; a final poll flushes the last partial interval."""
        if not self.started:  # stopped during start(): nothing to poll
            return 0
        started = time.monotonic()
        deadline = started + self.opts.duration if self.opts.duration else None
        next_tick = started + self.opts.interval
        while True:
            timeout = next_tick - time.monotonic()
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
            stopped = self.stop_event.wait(max(0.0, timeout))
            self.poll()
            if stopped or (deadline is not None and time.monotonic() >= deadline - 1e-3):
                return 0
            if not self.ifnames:
                self.log("no interface left to watch; exiting")
                return EXIT_INTERNAL
            next_tick += self.opts.interval
            if next_tick < time.monotonic():  # we fell behind (suspended?): don't burst to catch up
                next_tick = time.monotonic() + self.opts.interval

    def poll(self) -> Interval:
        t0, c0 = time.monotonic(), time.thread_time()
        now = time.time()
        snap = self.reader.snapshot()
        iv = self.aggregator.update(snap)
        for w in select(iv.windows, self.opts.top, self.opts.min_requests):
            peer = None
            for annotate in self.target_annotators:
                peer = peer or annotate(w.key.ip)
            self.emit(events.target_event(w, now, self.opts.hostname, peer))
        for hook in self.interval_hooks:
            for ev in hook(iv, now):
                self.emit(ev)
        self._check_interfaces(now)
        self._check_hooks(now)
        poll_ms = (time.monotonic() - t0) * 1000
        h = self.health_fields(iv, poll_ms)
        # CPU the poll itself used: a poll_duration_ms far above it is time spent waiting (for a core taken
        # by softirq/traffic, for the fast path's grace period), not work (docs/benchmarks.md).
        h["poll_cpu_ms"] = round((time.thread_time() - c0) * 1000, 3)
        h["poll_grace_ms"] = round(self.reader.fast.last_grace_ms, 3) if self.reader.fast else 0.0
        self.emit(events.health_event(h, now, self.opts.hostname))
        return iv

    def _read_if_stats(self) -> dict[int, tuple[int, int]]:
        """(rx, tx) packets per watched interface: the kernel program counts only ARP, so frames seen
        come from the interface's own counters (free, and exact)."""
        out = {}
        for ifindex, name in self.ifnames.items():
            try:
                base = f"/sys/class/net/{name}/statistics/"
                with open(base + "rx_packets") as rx, open(base + "tx_packets") as tx:
                    out[ifindex] = (int(rx.read()), int(tx.read()))
            except (OSError, ValueError):
                continue
        return out

    def health_fields(self, iv: Interval, poll_ms: float) -> dict:
        h: dict = {"interval_s": round(iv.interval_s, 3), "poll_duration_ms": round(poll_ms, 3),
                   "interfaces": len(self.ifnames)}
        stats = self._read_if_stats()
        h["frames_rx"] = sum(v[0] - self.if_stats.get(k, v)[0] for k, v in stats.items())
        h["frames_tx"] = sum(v[1] - self.if_stats.get(k, v)[1] for k, v in stats.items())
        self.if_stats = stats
        h.update(iv.health)
        for source in self.health_sources:
            h.update(source())
        h["hooks_attached"] = sum(hk.attached for hk in self.hooks)
        h["hooks"] = [{"interface": hk.ifname, "hook": hk.hook, "attached": hk.attached, "prog_id": hk.prog_id}
                      for hk in self.hooks]
        h.update({
            "entries_live": iv.entries_live, "entries_max": self.opts.max_entries,
            "entries_evicted": iv.entries_evicted, "targets_live": iv.targets_live,
        })
        fast = self.reader.fast
        h["fast_slots"] = fast.slots if fast else 0
        # 1: membarrier(MEMBARRIER_CMD_GLOBAL) was refused (nohz_full), so fast-path counts are read one
        # interval after their epoch ended (still exact, one interval late).
        h["fast_drain_deferred"] = int(bool(fast) and fast.grace == "interval")
        return h

    def _check_interfaces(self, now: float) -> None:
        """An interface can vanish (deleted, moved to another namespace) or be renamed under us."""
        for ifindex, name in list(self.ifnames.items()):
            try:
                current = socket.if_indextoname(ifindex)
            except OSError as e:
                if e.errno not in (errno.ENXIO, errno.ENODEV):  # no answer about the interface (EMFILE...)
                    self.log(f"cannot check interface {name}: {e.strerror}; still watching it")
                    continue
                del self.ifnames[ifindex]
                self.emit(events.warning_event("interface-gone", f"interface {name} (ifindex {ifindex}) is gone; "
                                               "no longer watching it", now, self.opts.hostname))
                continue
            if current != name:
                self.ifnames[ifindex] = current
                self.aggregator.ifnames[ifindex] = current
                self.emit(events.warning_event("interface-renamed", f"interface {name} is now {current}; "
                                               "still watching it", now, self.opts.hostname))


    def _check_hooks(self, now: float) -> None:
        """The attach watchdog (docs/reliability.md): one `program-detached` warning when a hook lost our
        program, one `program-reattached` event when it holds it again after being taken."""
        if self.datapath is None:
            return
        self.hooks = self.datapath.check_hooks()
        for hk in self.hooks:
            key = (hk.ifname, hk.hook)
            before = self.hook_states.get(key, "ok")
            after = hk.change if hk.change in ("taken", "failed") else "ok"
            self.hook_states[key] = after
            where = f"{hk.hook} on {hk.ifname}"
            if hk.change == "reattached" and before == "ok":
                self.emit(events.warning_event(
                    "program-detached", f"our program on {where} was removed by someone else; re-attached "
                    "(the hook was free); frames in between were not counted", now, self.opts.hostname))
            elif hk.change == "reattached":
                self.emit(events.warning_event(
                    "program-reattached", f"{where} is free again; our program is re-attached", now,
                    self.opts.hostname, level="info"))
            elif after != "ok" and before == "ok":
                why = (f"someone else's program is there ({hk.detail or f'id {hk.prog_id}'}); never replaced, "
                       "re-attached when the hook is free again" if after == "taken"
                       else f"re-attaching failed: {hk.detail}; retried every interval")
                self.emit(events.warning_event(
                    "program-detached", f"our program on {where} was removed or replaced: {why}; nothing is "
                    f"counted there meanwhile", now, self.opts.hostname))


def check_options(opts: RunOptions) -> None:
    if not opts.interfaces:
        raise SensorError("at least one -i/--interface is required")
    if len(set(opts.interfaces)) != len(opts.interfaces):
        raise SensorError("each -i/--interface may be given once")
    from sensor.kernel.datapath import check_fast_slots, ifindex_of  # fails fast, before the seconds a compile takes

    for ifname in opts.interfaces:
        ifindex_of(ifname)
    if opts.fast_slots is not None:
        check_fast_slots(opts.fast_slots)
