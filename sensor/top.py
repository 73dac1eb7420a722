"""`arp-sensor top`: a live terminal view of the busiest ARP targets, driven by the same Runner as `run`.

Per interval: the Runner reads the kernel maps and aggregates (no map reading here); the PeerStage (when
BIRD sockets or peer files are there) names the peer behind each IP and keeps the verdicts. This module
only keeps a short per-IP history for the sparkline and renders a table with rich.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import sys
import termios
import time
import tty
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # numpy and the reader load only when top runs, not for `arp-sensor --help`
    from sensor.aggregate import Interval
from sensor.limitstage import RATELIMIT_KEYS, ratelimit_options
from sensor.peers.stage import peer_options

SPARK = "▁▂▃▄▅▆▇█"
HISTORY = 16  # intervals of history per IP (the sparkline's width)
MAX_TRACKED = 4096  # IPs with history: an attacker chooses target IPs, keep memory bounded
# Windows come busiest first; under a storm of 100k entries the tail cannot reach the screen anyway.
MAX_WINDOWS = 8192
SORTS = ("requests", "senders", "ip")


def sparkline(values: list[float]) -> str:
    top = max(values, default=0)
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))] if v > 0 else " "
                   for v in values)


@dataclass
class Row:
    ip: str
    rate: float = 0.0  # requests/s in the last interval
    requests: int = 0
    replies: int = 0
    senders: int = 0
    top_sender: str = ""
    top_count: int = 0
    where: set[str] = field(default_factory=set)
    history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))


class TopState:
    """Per-IP rows and history from successive Intervals (pure: no bcc, no terminal)."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.intervals = 0

    def update(self, iv: Interval) -> None:
        self.intervals += 1
        seen: dict[str, Row] = {}
        for w in islice(iv.windows, MAX_WINDOWS):
            r = seen.get(w.key.ip)
            if r is None:
                old = self.rows.get(w.key.ip)
                r = seen[w.key.ip] = Row(w.key.ip, history=old.history if old else deque(maxlen=HISTORY))
            r.requests += w.requests + w.probes
            r.replies += w.replies
            r.senders = max(r.senders, w.senders)
            if w.top_senders and w.top_senders[0][1] > r.top_count:
                r.top_sender, r.top_count = w.top_senders[0]
            r.where.add(f"{w.interface}{'.' + str(w.key.vlan) if w.key.vlan else ''} "
                        f"{'in' if w.key.direction == 'ingress' else 'out'}")
        for r in seen.values():
            r.rate = r.requests / iv.interval_s if iv.interval_s > 0 else 0.0
            r.history.append(r.rate)
        for ip, r in self.rows.items():
            if ip not in seen:
                r.rate, r.requests, r.replies, r.senders, r.top_sender, r.top_count = 0.0, 0, 0, 0, "", 0
                r.history.append(0.0)
                if any(r.history):
                    seen[ip] = r  # keep it on screen while its sparkline still shows activity
        if len(seen) > MAX_TRACKED:
            keep = sorted(seen.values(), key=lambda r: -sum(r.history))[:MAX_TRACKED]
            seen = {r.ip: r for r in keep}
        self.rows = seen

    def sorted_rows(self, sort: str) -> list[Row]:
        rows = list(self.rows.values())
        if sort == "ip":
            return sorted(rows, key=lambda r: ipaddress.ip_address(r.ip))
        if sort == "senders":
            return sorted(rows, key=lambda r: (-r.senders, -r.rate, ipaddress.ip_address(r.ip)))
        return sorted(rows, key=lambda r: (-r.rate, -sum(r.history), ipaddress.ip_address(r.ip)))


VERDICT_STYLE = {"zombie-peer": "bold red", "bgp-down-reachable": "yellow", "unanswered-target": "magenta",
                 "healthy": "green"}


COLUMNS = (  # (header, min width, justify, shown on a narrow terminal)
    ("TARGET IP", 15, "left", True), ("REQ/S", 7, "right", True), ("TREND", HISTORY, "left", True),
    ("SENDERS", 7, "right", True), ("REPLIES", 7, "right", True), ("TOP SENDER", 15, "left", False),
    ("SEEN ON", 8, "left", False), ("BGP PEER", 8, "left", True), ("STATE", 11, "left", True),
    ("VERDICT", 18, "left", True), ("LIMIT", 14, "left", True),
)
WIDE = 150  # below this many columns, the optional ones are left out


def limit_cell(limiter: Any | None, ip: str) -> str:
    """`dry-run 12` (would have dropped 12) or `enforce 12` (dropped 12) while a limit holds the target."""
    a = limiter.policy.active.get(ip) if limiter is not None else None
    if a is None:
        return ""
    if limiter.cfg.dry_run:
        return f"[yellow]dry-run {a.would_drop}[/]"
    return f"[bold red]enforce {a.dropped}[/]"


def render(state: TopState, sort: str, rows: int, title: str, stage: Any | None, notes: list[str],
           width: int = WIDE, limiter: Any | None = None):
    from rich.table import Table

    table = Table(title=title, title_justify="left", caption=" · ".join(notes) or None,
                  caption_justify="left", expand=False, pad_edge=False)
    shown = [c for c in COLUMNS if c[3] or width >= WIDE]
    for name, min_width, justify, _ in shown:
        table.add_column(name, min_width=min_width, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in state.sorted_rows(sort)[:rows]:
        peer = stage.book.get(r.ip) if stage is not None else None
        verdict = stage.engine.verdict(r.ip) if stage is not None else ""
        cells = {
            "TARGET IP": r.ip, "REQ/S": f"{r.rate:,.1f}", "TREND": sparkline(list(r.history)),
            "SENDERS": str(r.senders), "REPLIES": str(r.replies), "TOP SENDER": r.top_sender,
            "SEEN ON": ", ".join(sorted(r.where)),
            "BGP PEER": (peer.name or "") if peer is not None else "",
            "STATE": (peer.bgp_state or "unknown") if peer is not None and peer.is_bgp else "",
            "VERDICT": f"[{VERDICT_STYLE.get(verdict, '')}]{verdict}[/]" if verdict else "",
            "LIMIT": limit_cell(limiter, r.ip),
        }
        table.add_row(*(cells[c[0]] for c in shown))
    return table


@contextlib.contextmanager
def keys_from(stream) -> Iterator[Any]:
    """Single keypresses from a terminal (cbreak: no Enter needed, Ctrl-C still sends SIGINT)."""
    if not stream.isatty():
        yield None
        return
    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def read_key(fd: int | None, timeout: float) -> str | None:
    if fd is None:
        time.sleep(max(0.0, timeout))
        return None
    ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
    if not ready:
        return None
    data = os.read(fd, 32)
    return data.decode(errors="replace")[:1] if data else "q"  # EOF on the terminal: quit


@click.command()
@click.option("-i", "--interface", "interfaces", multiple=True, required=True, metavar="IFACE",
              help="Interface to watch (repeatable).")
@click.option("--attach", type=click.Choice(["xdp", "tc", "both"]), default="both", show_default=True,
              help="Where to count, as for `run`.")
@click.option("--interval", type=click.FloatRange(0.1, 60), default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--sort", type=click.Choice(SORTS), default="requests", show_default=True,
              help="Order of the rows (press s to cycle).")
@click.option("--rows", type=click.IntRange(1, 10000), default=20, show_default=True, help="Rows to show.")
@click.option("--once", is_flag=True, help="Count for one interval, print one table and exit (for pipes).")
@peer_options
@ratelimit_options
def top(interfaces: tuple[str, ...], attach: str, interval: float, sort: str, rows: int, once: bool,
        **peer_opts: Any) -> None:
    """Live view of the busiest ARP targets: requests/s, trend, senders, replies, BGP peer and verdict.

    Attaches like `run` (and detaches on exit), refreshes every --interval. BGP columns come from
    Calico's BIRD sockets when they exist, or --bird-socket / --peers / --k8s-nodes. With
    --rate-limit dry-run|enforce, top applies limits like `run` and LIMIT shows what they drop
    (would drop, for dry-run). Keys: q quits, s cycles the sort order; Ctrl-C quits too. Without a
    terminal (a pipe, cron, CI) use --once, or read one table per interval.

    top attaches its own programs: it cannot share an interface with a running `arp-sensor run`
    (exit 4); read that one's JSON, or stop it for the incident.

    \b
    Examples:
      sudo arp-sensor top -i eth0
      sudo arp-sensor top -i bond0 --bird-socket /var/run/calico/bird.ctl --sort senders
      sudo arp-sensor top -i eth0 --once --interval 5 | tee arp-top.txt
      sudo arp-sensor top -i bond0 --rate-limit dry-run     # what limits would drop, nothing dropped

    Exit codes: 0 ok, 2 bad usage, 3 environment (privileges, headers, bcc), 4 conflict.
    """
    from rich.console import Console
    from rich.live import Live

    from sensor.limitstage import RateLimitStage, config_from_cli
    from sensor.peers.stage import PeerStage
    from sensor.runner import Runner, RunOptions, check_options

    opts = RunOptions(interfaces=list(interfaces), attach=attach, interval=interval, top=1,
                      min_requests=1 << 62)  # no target events: the table is the output
    limit_cfg = config_from_cli({k: peer_opts.pop(k) for k in RATELIMIT_KEYS}, interval, attach)
    check_options(opts)
    notes: deque[str] = deque(maxlen=3)  # the latest messages about the sensor itself, for the caption

    def log(msg: str) -> None:
        notes.append(msg)

    def collect(ev: dict) -> None:
        if ev.get("event", {}).get("kind") == "event" and ev.get("message"):  # warnings (BIRD down ...)
            notes.append(ev["message"])

    runner = Runner(opts, collect, log)
    runner.install_signal_handlers()
    stage = PeerStage.from_options(**peer_opts, interval=interval, hostname=opts.hostname)
    stage.install(runner)
    limiter = RateLimitStage(limit_cfg, stage, opts.hostname, log) if limit_cfg.enabled else None
    if limiter:
        limiter.install(runner)
    have_peers = bool(peer_opts.get("bird_sockets") or peer_opts.get("peers_file") or peer_opts.get("k8s_nodes")
                      or any(s["ok"] is not None for s in stage.book.sources()))
    state = TopState()
    tty_out = sys.stdout.isatty()
    console = Console(width=None if tty_out else max(200, int(os.environ.get("COLUMNS", "0") or 0)))

    def title() -> str:
        where = ", ".join(opts.interfaces)
        return (f"arp-sensor top · {where} ({attach}) · every {interval:g}s · {len(state.rows)} targets · "
                f"sort: {sort}" + ("" if once else " · q quit, s sort"))

    def footer() -> list[str]:
        out = [] if have_peers else ["no BIRD socket or peers file: BGP columns empty"]
        out.append(f"rate limits: {limit_cfg.mode}" if limiter else "rate limits: off (--rate-limit)")
        return out + list(notes)

    try:
        runner.start()
        if once:
            runner.stop_event.wait(interval)
            state.update(runner.poll())
            console.print(render(state, sort, rows, title(), stage, footer(), console.width, limiter))
            return
        live = Live(console=console, auto_refresh=False) if tty_out else None
        with keys_from(sys.stdin) as fd, live or contextlib.nullcontext():
            show = (lambda t: live.update(t, refresh=True)) if live else console.print  # a pipe: one per tick
            next_tick = time.monotonic() + interval
            while not runner.stop_event.is_set():
                key = read_key(fd, min(0.2, next_tick - time.monotonic()))
                if key in ("q", "Q"):
                    break
                if key in ("s", "S"):
                    sort = SORTS[(SORTS.index(sort) + 1) % len(SORTS)]
                elif time.monotonic() < next_tick:
                    continue
                else:
                    state.update(runner.poll())
                    next_tick += interval
                    if next_tick < time.monotonic():
                        next_tick = time.monotonic() + interval
                show(render(state, sort, rows, title(), stage, footer(), console.width, limiter))
    finally:
        if limiter:
            limiter.close()
        problems = runner.close()
        stage.close()
        for p in problems:
            click.echo(f"arp-sensor: {p}", err=True)
