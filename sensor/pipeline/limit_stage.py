"""Wire the rate-limit policy into the run loop: every interval, after the peer stage has updated the
verdicts, decide which targets to limit (sensor.pipeline.ratelimit) and write, refresh or delete their kernel
entries (sensor.kernel.limitmap). Also the `run` options --rate-limit and --limit-*.

Entries: one per limited IP x watched interface x direction (egress always; ingress with
--limit-ingress). Each refresh pushes expires_ns one TTL ahead, so a sensor that dies (even SIGKILL, which
leaves the programs attached) stops limiting within the TTL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import click

from sensor.errors import SensorError
from sensor.events.encode import Event, warning_event
from sensor.kernel.layout import DIR_EGRESS, DIR_INGRESS
from sensor.model import Interval, Log, PeerLookup, StageContext, VerdictView
from sensor.peers import peer_fields
from sensor.pipeline.ratelimit import (
    DEFAULT_BURST,
    DEFAULT_PPS,
    MODES,
    OFF,
    LimitConfig,
    RateLimitPolicy,
    config_from_options,
)

if TYPE_CHECKING:
    from sensor.kernel.limitmap import LimitMap
    from sensor.pipeline.runner import Runner


# --limit-* default to None so that giving one without --rate-limit is an error rather than silently ignored.
OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--rate-limit", "rate_limit", type=click.Choice(MODES), default=OFF, show_default=True,
                 help="Limit ARP requests for dead BGP peers in the kernel: dry-run counts what would be "
                      "dropped, enforce drops on tc egress (docs/ratelimit.md)."),
    click.option("--limit-pps", type=float, default=None, metavar="PPS",
                 help=f"Requests per second allowed per limited target and interface [default: "
                      f"{DEFAULT_PPS:g}, one every {1 / DEFAULT_PPS:g} s; switch DAI: 15 per port]."),
    click.option("--limit-burst", type=int, default=None, metavar="N",
                 help=f"Bucket depth: requests allowed back to back [default: {DEFAULT_BURST}]."),
    click.option("--limit-ttl", type=float, default=None, metavar="S",
                 help="Seconds a limit outlives its last refresh, e.g. after the sensor is killed "
                      "[default: 3 intervals]."),
    click.option("--limit-target", "limit_targets", multiple=True, metavar="IP/CIDR",
                 help="Limit these targets too (repeatable; CIDR at most /24, IPv6 /120). Established BGP "
                      "peers and live hosts are never limited."),
    click.option("--limit-allow", "limit_allow", multiple=True, metavar="IP/CIDR",
                 help="Never limit these (repeatable)."),
    click.option("--limit-unanswered", is_flag=True, default=False,
                 help="Also limit unanswered-target verdicts (not BGP peers)."),
    click.option("--limit-ingress", is_flag=True, default=False,
                 help="Also drop received requests for limited targets (spares this host only; "
                      "only egress limits reduce switch load)."),
]


class RateLimitStage:
    options: ClassVar[list[Callable[[Any], Any]]] = OPTIONS

    def __init__(self, cfg: LimitConfig, verdicts: VerdictView, peers: PeerLookup, hostname: str | None = None,
                 log: Log | None = None, own: Callable[[str], bool] | None = None) -> None:
        self.cfg = cfg
        self.verdicts = verdicts
        self.peers = peers
        self.policy = RateLimitPolicy(cfg, hostname, peer_fields, own)
        self.log = log or (lambda msg: None)
        self.runner: Runner | None = None
        self.lm: LimitMap | None = None
        self.keys: set = set()  # the kernel entries we hold: removals need no walk of the map
        self.map_full = False  # the kernel refused entries last interval (one warning per transition)
        self.refused = 0  # entries the kernel refused this interval (health: ratelimit_entries_refused)

    @classmethod
    def from_options(cls, ctx: StageContext, *, rate_limit: str, limit_pps: float | None, limit_burst: int | None,
                     limit_ttl: float | None, limit_targets: tuple[str, ...], limit_allow: tuple[str, ...],
                     limit_unanswered: bool, limit_ingress: bool) -> RateLimitStage | None:
        """None with --rate-limit off. Needs the verdicts and peers the PeerStage published on `ctx`."""
        cfg = config_from_options(mode=rate_limit, pps=limit_pps, burst=limit_burst, ttl=limit_ttl,
                                  targets=limit_targets, allow=limit_allow, unanswered=limit_unanswered,
                                  ingress=limit_ingress, interval=ctx.interval, attach=ctx.attach)
        if not cfg.enabled:
            return None
        if ctx.verdicts is None or ctx.peers is None:
            raise RuntimeError("RateLimitStage must be built after the PeerStage (sensor.pipeline.stages)")
        return cls(cfg, ctx.verdicts, ctx.peers, ctx.hostname, ctx.log, ctx.own)

    def install(self, runner: Runner) -> None:
        """Register after the PeerStage: its hook updates the verdicts this one reads."""
        self.runner = runner
        runner.interval_hooks.append(self.on_interval)
        runner.health_sources.append(lambda: {"ratelimit_entries_refused": self.refused,
                                              "ratelimit_targets": len(self.policy.active)})

    def _map(self) -> LimitMap:
        if self.lm is None:
            from sensor.kernel.limitmap import LimitMap

            assert self.runner is not None and self.runner.datapath is not None
            self.lm = LimitMap(*self.runner.datapath.limit_fds)
            self.lm.clear()
        return self.lm

    def on_interval(self, interval: Interval, now: float) -> list[Event]:
        from sensor.kernel.limitmap import LimitKey

        assert self.runner is not None
        lm = self._map()
        book = self.peers
        decision = self.policy.update(self.verdicts.verdicts(), book, self.verdicts.alive, now)
        for ev in decision.events:
            if ev["event"]["dataset"] == "arp_sensor.health":
                self.log(ev["message"])
        dirs = [DIR_EGRESS] + ([DIR_INGRESS] if self.cfg.ingress else [])
        want = {LimitKey(ifindex, ip, d) for ip in decision.limit for ifindex in self.runner.ifnames for d in dirs}
        totals: dict[str, tuple[int, int]] = {}

        def add(ip: str, val: Any) -> None:
            d, w = totals.get(ip, (0, 0))
            totals[ip] = (d + val.dropped, w + val.would_drop)

        # Removals first (a limit goes the interval its reason does), taking their last counters.
        for key in self.keys - want:
            val = lm.take(key)
            if val is not None:
                add(key.ip, val)
        self.keys &= want
        now_ns = time.monotonic_ns()
        accepted: set[str] = set()
        self.refused = 0
        for key in sorted(want, key=lambda k: (k.ip, k.ifindex, k.dir)):
            try:
                lm.apply(key, self.cfg.pps, self.cfg.burst, self.cfg.ttl_s, self.cfg.dry_run, now_ns)
            except SensorError:  # the kernel map is full (many IPs x interfaces): keep what fits
                self.refused += 1
                continue
            self.keys.add(key)
            accepted.add(key.ip)
            val = lm.get(key)
            if val is not None:
                add(key.ip, val)
        events = []
        for ev in decision.events:
            ip = ev.get("destination", {}).get("ip")
            if ev["event"].get("action") == "ratelimit-applied" and ip not in accepted:
                # Say only what is true: not applied, so not active; the next interval tries again.
                self.policy.active.pop(ip, None)
                continue
            events.append(ev)
        if self.refused and not self.map_full:
            events.append(warning_event(
                "ratelimit-map-full", f"the kernel limits map is full: {self.refused} entries (IP x interface x "
                "direction) not applied; those targets are not limited (arp_sensor.health.ratelimit_entries_"
                "refused)", now, self.policy.hostname))
        self.map_full = bool(self.refused)
        return events + self.policy.report(decision, totals, now, interval.interval_s, book)

    def close(self) -> None:
        """A clean exit removes every limit at once (a crash leaves them to their TTL)."""
        if self.lm is not None:
            try:
                self.lm.clear()
            except OSError as e:
                self.log(f"cannot remove rate limits: {e} (they lapse within {self.cfg.ttl_s:g} s)")
            self.lm = None
