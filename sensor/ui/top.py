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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # numpy and the reader load only when top runs, not for `arp-sensor --help`
    from sensor.events.decode import EventFeed
    from sensor.model import Interval
    from sensor.pipeline.limit_stage import RateLimitStage
from sensor.model import StageContext
from sensor.pipeline.stages import stage_options

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
            return sorted(rows, key=lambda r: _ip_key(r.ip))
        if sort == "senders":
            return sorted(rows, key=lambda r: (-r.senders, -r.rate, _ip_key(r.ip)))
        return sorted(rows, key=lambda r: (-r.rate, -sum(r.history), _ip_key(r.ip)))


def _ip_key(ip: str) -> tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """IPv4 before IPv6, numeric within a family (the two address types do not compare)."""
    addr = ipaddress.ip_address(ip)
    return addr.version, addr


VERDICT_STYLE = {"zombie-peer": "bold red", "bgp-down-reachable": "yellow", "unanswered-target": "magenta",
                 "healthy": "green"}


COLUMNS = (  # (header, min width, justify), in display order
    ("TARGET IP", 15, "left"), ("MAC", 17, "left"), ("REQ/S", 7, "right"), ("TREND", HISTORY, "left"),
    ("SENDERS", 7, "right"), ("REPLIES", 7, "right"), ("TOP SENDER", 15, "left"), ("SEEN ON", 9, "left"),
    ("BGP PEER", 16, "left"), ("STATE", 11, "left"), ("VERDICT", 18, "left"), ("LIMIT", 14, "left"),
)
# What a narrow terminal keeps first: the answer (which IP, how busy, which peer, what verdict) before
# the detail. Columns that do not fit are left out rather than squeezed into ellipses.
PRIORITY = ("TARGET IP", "REQ/S", "VERDICT", "BGP PEER", "SENDERS", "STATE", "MAC", "TREND", "LIMIT",
            "REPLIES", "TOP SENDER", "SEEN ON")
WIDE = 200  # wide enough for every column while the addresses are IPv4


def columns_for(width: int, wider: dict[str, int] | None = None) -> list[tuple[str, int, str]]:
    """The columns that fit in `width`, by PRIORITY. wider: columns that need more than their minimum for
    the rows shown (an IPv6 address is up to 39 characters), so they are budgeted at their real width
    instead of being cut to an ellipsis after the others were chosen."""
    min_width = {name: max(w, (wider or {}).get(name, 0)) for name, w, _ in COLUMNS}
    chosen, used = set(), 1
    for name in PRIORITY:
        need = min_width[name] + 3  # padding and the border
        if used + need <= width:
            chosen.add(name)
            used += need
    return [(name, min_width[name], justify) for name, _w, justify in COLUMNS if name in chosen]


def limit_cell(limiter: RateLimitStage | None, ip: str) -> str:
    """`dry-run 12` (would have dropped 12) or `enforce 12` (dropped 12) while a limit holds the target."""
    a = limiter.policy.active.get(ip) if limiter is not None else None
    if a is None:
        return ""
    return _limit_text("dry-run" if limiter.cfg.dry_run else "enforce", a.would_drop if limiter.cfg.dry_run
                       else a.dropped)


def _limit_text(mode: str, n: int) -> str:
    return f"[yellow]dry-run {n}[/]" if mode == "dry-run" else f"[bold red]enforce {n}[/]"


# ip -> (BGP peer name, BGP state, verdict, rate-limit cell)
Info = Callable[[str], tuple[str, str, str, str]]


def feed_info(feed: EventFeed, ip: str) -> tuple[str, str, str, str]:
    name, state, verdict, lim = feed.info(ip)
    return name, state, verdict, _limit_text(*lim) if lim else ""


def live_info(ctx: StageContext, limiter: RateLimitStage | None) -> Info:
    def info(ip: str) -> tuple[str, str, str, str]:
        peer = ctx.peers.get(ip) if ctx.peers is not None else None
        return ((peer.name or "") if peer is not None else "",
                (peer.bgp_state or "unknown") if peer is not None and peer.is_bgp else "",
                ctx.verdicts.verdict(ip) if ctx.verdicts is not None else "", limit_cell(limiter, ip))
    return info


def mac_cell(macs: list[str], rival: str | None = None) -> str:
    """The MAC(s) holding an IP (from the bindings); both in red while another MAC claims it too."""
    if rival:
        return f"[bold red]{' '.join(macs)} ≠ {rival}[/]"
    return " ".join(macs)


def live_mac(stage: Any | None) -> Callable[[str], str]:
    """ip -> MAC cell from a sensor.bindings.stage.BindingStage (empty without one)."""
    def mac(ip: str) -> str:
        if stage is None:
            return ""
        held = stage.engine.holders(ip)
        rivals = [m for _mac, b in held for m in (b.rivals or ())]
        return mac_cell([m for m, _b in held], rivals[0] if rivals else None)
    return mac


def render(state: TopState, sort: str, rows: int, title: str, notes: list[str], width: int = WIDE,
           info: Info | None = None, mac: Callable[[str], str] | None = None):
    from rich.table import Table

    table = Table(title=title, title_justify="left", caption=" · ".join(notes) or None,
                  caption_justify="left", expand=False, pad_edge=False)
    top = state.sorted_rows(sort)[:rows]
    shown = columns_for(width, {"TARGET IP": max((len(r.ip) for r in top), default=0),
                                "TOP SENDER": max((len(r.top_sender) for r in top), default=0)})
    for name, min_width, justify in shown:
        table.add_column(name, min_width=min_width, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in top:
        peer, bgp_state, verdict, limit = info(r.ip) if info is not None else ("", "", "", "")
        cells = {
            "TARGET IP": r.ip, "MAC": mac(r.ip) if mac is not None else "", "REQ/S": f"{r.rate:,.1f}",
            "TREND": sparkline(list(r.history)),
            "SENDERS": str(r.senders), "REPLIES": str(r.replies), "TOP SENDER": r.top_sender,
            "SEEN ON": ", ".join(sorted(r.where)), "BGP PEER": peer, "STATE": bgp_state,
            "VERDICT": f"[{VERDICT_STYLE.get(verdict, '')}]{verdict}[/]" if verdict else "",
            "LIMIT": limit,
        }
        table.add_row(*(cells[c[0]] for c in shown))
    return table


class LineSource:
    """Lines from a file (followed as it grows, like tail -f) or from stdin (until EOF), without blocking."""

    def __init__(self, path: str) -> None:
        self.path = path
        if path == "-":
            self.fd = sys.stdin.fileno()
            self.follow = False
        else:
            try:
                self.fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                from sensor.errors import EXIT_USAGE, SensorError

                raise SensorError(f"--events {path}: {e.strerror}", EXIT_USAGE) from None
            self.follow = True
        os.set_blocking(self.fd, False)
        self.buf = b""
        self.eof = False

    def lines(self) -> list[str]:
        out: list[str] = []
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                self.eof = True  # a file: caught up (more may come); stdin: the writer is gone
                break
            self.eof = False
            self.buf += chunk
            if len(chunk) < 1 << 16:
                break
        if b"\n" in self.buf:
            *done, self.buf = self.buf.split(b"\n")
            out = [d.decode(errors="replace") for d in done]
        if self.eof and not self.follow and self.buf:
            out.append(self.buf.decode(errors="replace"))
            self.buf = b""
        return out

    def close(self) -> None:
        if self.path != "-":
            os.close(self.fd)


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
@click.option("-i", "--interface", "interfaces", multiple=True, metavar="IFACE",
              help="Interface to watch (repeatable); or --events.")
@click.option("--events", "events_path", metavar="FILE|-", default=None,
              help="Show a running sensor's JSON events instead of attaching: a file (followed as it "
                   "grows) or - for stdin (journalctl -u arp-sensor -o cat -f | arp-sensor top --events -).")
@click.option("--attach", type=click.Choice(["xdp", "tc", "both"]), default="both", show_default=True,
              help="Where to count, as for `run`.")
@click.option("--interval", type=click.FloatRange(0.1, 60), default=1.0, show_default=True,
              help="Seconds between refreshes (with --events: the sensor's own interval).")
@click.option("--sort", type=click.Choice(SORTS), default="requests", show_default=True,
              help="Order of the rows (press s to cycle).")
@click.option("--rows", type=click.IntRange(1, 10000), default=20, show_default=True, help="Rows to show.")
@click.option("--once", is_flag=True, help="Print one table and exit: after one interval, or with --events "
                                           "at the end of the input (for pipes).")
@stage_options(outputs=False)
@click.pass_context
def top(ctx: click.Context, interfaces: tuple[str, ...], events_path: str | None, attach: str, interval: float,
        sort: str, rows: int, once: bool, **stage_opts: Any) -> None:
    """Live view of the busiest ARP targets: requests/s, trend, senders, replies, BGP peer and verdict.

    With -i, top attaches like `run` (and detaches on exit) and refreshes every --interval. BGP
    columns come from Calico's BIRD sockets when they exist, or --bird-socket / --peers / --k8s-nodes.
    With --rate-limit dry-run|enforce it applies limits like `run` and LIMIT shows what they drop (or
    would drop). One interface takes one arp-sensor at a time: while `arp-sensor run` (the service)
    watches it, use --events to show that sensor's own JSON instead; it attaches nothing.

    Keys: q quits, s cycles the sort order; Ctrl-C quits too. Without a terminal (a pipe, cron, CI)
    use --once, or read one table per interval.

    \b
    Examples:
      sudo arp-sensor top -i eth0
      sudo arp-sensor top -i bond0 --bird-socket /var/run/calico/bird.ctl --sort senders
      sudo arp-sensor top -i eth0 --once --interval 5 | tee arp-top.txt
      sudo arp-sensor top -i bond0 --rate-limit dry-run     # what limits would drop, nothing dropped
      journalctl -u arp-sensor -o cat -f | arp-sensor top --events -
      kubectl -n arp-sensor logs -f POD | arp-sensor top --events -      # the node's pod
      arp-sensor top --events /var/log/arp-sensor.json --once

    Exit codes: 0 ok, 2 bad usage, 3 environment (privileges, headers, bcc), 4 conflict.
    """
    from click.core import ParameterSource

    if events_path is not None:
        if ctx.get_parameter_source("interfaces") == ParameterSource.COMMANDLINE and interfaces:
            raise click.UsageError("give -i/--interface (attach) or --events (read a sensor's JSON), not both")
        flags = {"bird_sockets": "--bird-socket", "peers_file": "--peers", "k8s_nodes": "--k8s-nodes"}
        given = [flag for name, flag in flags.items() if stage_opts.get(name)]
        if stage_opts.get("rate_limit", "off") != "off":
            given.append("--rate-limit")
        if given:
            raise click.UsageError(f"{', '.join(given)} only apply with -i: with --events the running sensor "
                                   "decides peers, verdicts and limits")
        _top_events(events_path, sort, rows, once)
        return
    if not interfaces:
        raise click.UsageError("Missing option '-i' / '--interface' (or --events FILE|-)")
    _top_live(list(interfaces), attach, interval, sort, rows, once, stage_opts)


def _console():
    from rich.console import Console

    tty_out = sys.stdout.isatty()
    return Console(width=None if tty_out else max(200, int(os.environ.get("COLUMNS", "0") or 0))), tty_out


def _show_loop(console, tty_out: bool, keys, step: Callable[[float], bool], draw: Callable[[], Any],
               stop: Callable[[], bool], cycle_sort: Callable[[], None]) -> None:
    """Redraw after every step that changed something or a key; q (or stop()) ends it.
    step(timeout) waits at most `timeout` seconds for news and returns whether the table changed."""
    from rich.live import Live

    live = Live(console=console, auto_refresh=False) if tty_out else None
    with keys_from(keys) as fd, live or contextlib.nullcontext():
        show = (lambda t: live.update(t, refresh=True)) if live else console.print  # a pipe: one per tick
        if live:
            show(draw())
        while not stop():
            changed = step(0.0 if fd is not None else 0.2)  # with a terminal, the key wait below paces us
            key = read_key(fd, 0.0 if changed else 0.1) if fd is not None else None
            if key in ("q", "Q"):
                break
            if key in ("s", "S"):
                cycle_sort()
                changed = True
            if changed:
                show(draw())


def _top_live(interfaces: list[str], attach: str, interval: float, sort: str, rows: int, once: bool,
              stage_opts: dict[str, Any]) -> None:
    from sensor.bindings.stage import BindingStage
    from sensor.peers.stage import PeerStage
    from sensor.pipeline.limit_stage import RateLimitStage
    from sensor.pipeline.runner import Runner, RunOptions, check_options
    from sensor.pipeline.stages import build_stages, close_stages, install_stages

    opts = RunOptions(interfaces=interfaces, attach=attach, interval=interval, top=1,
                      min_requests=1 << 62)  # no target events: the table is the output
    given_sources = bool(stage_opts.get("bird_sockets") or stage_opts.get("peers_file")
                         or stage_opts.get("k8s_nodes"))
    check_options(opts)
    notes: deque[str] = deque(maxlen=3)  # the latest messages about the sensor itself, for the caption

    def collect(ev: dict) -> None:
        if ev.get("event", {}).get("kind") == "event" and ev.get("message"):  # warnings (BIRD down ...)
            notes.append(ev["message"])

    ctx = StageContext(interval=interval, attach=attach, hostname=opts.hostname, log=notes.append)
    stages = build_stages(ctx, stage_opts, outputs=False)  # the table is the output
    runner = Runner(opts, collect, notes.append)
    runner.install_signal_handlers()
    install_stages(stages, runner)
    peer_stage = next(s for s in stages if isinstance(s, PeerStage))
    limiter = next((s for s in stages if isinstance(s, RateLimitStage)), None)
    have_peers = given_sources or any(s["ok"] is not None for s in peer_stage.book.sources())
    bindings = next((s for s in stages if isinstance(s, BindingStage)), None)  # the MAC column
    state = TopState()
    console, tty_out = _console()
    sort_box = [sort]
    info = live_info(ctx, limiter)

    def draw():
        title = (f"arp-sensor top · {', '.join(interfaces)} ({attach}) · every {interval:g}s · "
                 f"{len(state.rows)} targets · sort: {sort_box[0]}" + ("" if once else " · q quit, s sort"))
        caption = [] if have_peers else ["no BIRD socket or peers file: BGP columns empty"]
        caption.append(f"rate limits: {limiter.cfg.mode}" if limiter else "rate limits: off (--rate-limit)")
        return render(state, sort_box[0], rows, title, caption + list(notes), console.width, info,
                      live_mac(bindings))

    next_tick = [0.0]

    def step(timeout: float) -> bool:
        left = next_tick[0] - time.monotonic()
        if left > 0:
            runner.stop_event.wait(min(timeout, left))
            if time.monotonic() < next_tick[0]:
                return False
        state.update(runner.poll())
        next_tick[0] = max(next_tick[0] + interval, time.monotonic() + interval * 0.5)
        if not runner.ifnames:  # every watched interface was deleted or moved away
            runner.stop_event.set()
        return True

    def cycle() -> None:
        sort_box[0] = SORTS[(SORTS.index(sort_box[0]) + 1) % len(SORTS)]

    try:
        runner.start()
        next_tick[0] = time.monotonic() + interval
        if once:
            runner.stop_event.wait(interval)
            state.update(runner.poll())
            console.print(draw())
            return
        _show_loop(console, tty_out, sys.stdin, step, draw, runner.stop_event.is_set, cycle)
        if not runner.ifnames:
            from sensor.errors import EXIT_INTERNAL, SensorError

            raise SensorError(f"no interface left to watch ({', '.join(interfaces)} gone); exiting", EXIT_INTERNAL)
    finally:
        close_stages(stages, notes.append)
        problems = runner.close()
        for p in problems:
            click.echo(f"arp-sensor: {p}", err=True)


def _top_events(path: str, sort: str, rows: int, once: bool) -> None:
    import signal
    import threading

    from sensor.events.decode import EventFeed

    src = LineSource(path)
    feed = EventFeed()
    state = TopState()
    console, tty_out = _console()
    sort_box = [sort]
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # stdin carries the events: keys come from the terminal itself.
    keys: Any = sys.stdin
    if path == "-":
        try:
            keys = open("/dev/tty")  # noqa: SIM115 (closed below)
        except OSError:
            keys = None

    def draw():
        hosts = ", ".join(sorted(h for h in feed.hosts if h)) or "?"
        where = "stdin" if path == "-" else path
        title = (f"arp-sensor top · events of {hosts} from {where} · {len(state.rows)} targets · "
                 f"sort: {sort_box[0]}" + ("" if once else " · q quit, s sort"))
        caption = ["BGP peer, verdict and limit as the sensor reported them"]
        if src.eof and not src.follow:
            caption.append("end of input")
        if feed.skipped:
            caption.append(f"{feed.skipped} lines that are not arp-sensor events skipped")
        return render(state, sort_box[0], rows, title, caption, console.width, lambda ip: feed_info(feed, ip),
                      lambda ip: mac_cell(*feed.mac(ip)))

    def step(timeout: float) -> bool:
        changed = False
        for line in src.lines():
            iv = feed.feed(line)
            if iv is not None:
                state.update(iv)
                changed = True
        if not changed:
            stop.wait(timeout)
        return changed

    def cycle() -> None:
        sort_box[0] = SORTS[(SORTS.index(sort_box[0]) + 1) % len(SORTS)]

    try:
        if once:
            while not (src.eof or stop.is_set()):
                step(0.05)
            step(0)
            console.print(draw())
            return
        _show_loop(console, tty_out, keys if keys is not None else _NoKeys(), step, draw, stop.is_set, cycle)
    finally:
        src.close()
        if path == "-" and keys is not None:
            keys.close()


class _NoKeys:
    @staticmethod
    def isatty() -> bool:
        return False
