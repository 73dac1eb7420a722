"""Rate-limit policy: which targets get a kernel token bucket, from verdicts, peers and the operator's lists.

Pure logic (no bcc, no maps): `RateLimitPolicy.update(...)` takes the interval's verdicts, the PeerBook and
proof-of-life per IP, and returns the targets to limit plus `arp_sensor.ratelimit` / warning events.
sensor/pipeline/limit_stage.py writes the result into the kernel every interval. The rules (docs/ratelimit.md):

- auto mode limits `zombie-peer` targets (and `unanswered-target` ones with --limit-unanswered);
- --limit-target adds manual targets (CIDRs up to /24, IPv6 up to /120, expanded to addresses);
- IPv6 targets are limited like IPv4 ones: their neighbour solicitations (never DAD) on tc egress;
- never limited, whatever the source: an allow-listed address, one of this host's own addresses (every
  address in the sensor's network namespace), an Established BGP peer, a target that
  showed it is alive (replied, announced itself or asked for others) within the verdict window. A manual
  entry refused for one of these reasons gets one warning per reason;
- a limit is removed the interval its reason goes away (verdict cleared, session Established, host
  answered); entries also carry a TTL so that a dead sensor's limits lapse on their own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sensor.errors import EXIT_USAGE, SensorError
from sensor.events.encode import Event, ratelimit_event, warning_event, wire_words
from sensor.kernel.limitmap import MAX_BURST
from sensor.model import Peer, PeerLookup

OFF, DRY_RUN, ENFORCE = "off", "dry-run", "enforce"
MODES = (OFF, DRY_RUN, ENFORCE)
ZOMBIE, UNANSWERED, MANUAL = "zombie-peer", "unanswered-target", "manual"

# Defaults (docs/ratelimit.md): a dead peer needs no ARP at all. Linux asks about 0.4-0.8 times a second
# per (asker, dead target) (3 broadcasts per failed resolution, BIRD retrying every few seconds), so
# anything above ~0.05/s changes little; one request every 50 s keeps asking so that a host that comes
# back silently is still found, while a revived host usually shows itself sooner (it asks for its peers
# or its gateway, which clears the verdict and removes the limit at once). Switch dynamic ARP inspection
# allows 15 pps per port: a reference point for a whole port, not for one dead target.
DEFAULT_PPS = 0.02
DEFAULT_BURST = 1
DEFAULT_TTL_INTERVALS = 3
MIN_PPS, MAX_PPS = 0.001, 1_000_000.0
MAX_PREFIX_WIDTH = 24  # --limit-target CIDRs wider than /24 are refused (256 entries per interface)
MAX_PREFIX_WIDTH6 = 120  # the same 256 addresses for IPv6
MAX_TARGETS = 1024  # limited IPs at once; the kernel map holds 4096 (IPs x interfaces x directions)


def parse_net(spec: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(spec.strip(), strict=False)
    except ValueError:
        raise SensorError(f"{what}: {spec!r} is not an IP address or CIDR", EXIT_USAGE) from None


def expand_targets(specs: Iterable[str], max_width: int = MAX_PREFIX_WIDTH) -> list[str]:
    """--limit-target values → addresses (a CIDR gives its host addresses; /31 and /32 both ends; IPv6
    in RFC 5952 text, as targets are named)."""
    out: dict[str, None] = {}
    for spec in specs:
        net = parse_net(spec, "--limit-target")
        width = max_width if net.version == 4 else max_width + MAX_PREFIX_WIDTH6 - MAX_PREFIX_WIDTH
        if net.prefixlen < width:
            raise SensorError(f"--limit-target: {spec} is wider than /{width} "
                              f"({net.num_addresses} addresses); list narrower CIDRs", EXIT_USAGE)
        hosts = net.hosts() if net.num_addresses > 2 else iter(net)
        for ip in hosts:
            out[str(ip)] = None
    if len(out) > MAX_TARGETS:
        raise SensorError(f"--limit-target: {len(out)} addresses, at most {MAX_TARGETS}", EXIT_USAGE)
    return list(out)


@dataclass(frozen=True)
class LimitConfig:
    mode: str = OFF
    pps: float = DEFAULT_PPS
    burst: int = DEFAULT_BURST
    ttl_s: float = 3.0
    targets: tuple[str, ...] = ()
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    unanswered: bool = False
    ingress: bool = False

    @property
    def enabled(self) -> bool:
        return self.mode != OFF

    @property
    def dry_run(self) -> bool:
        return self.mode == DRY_RUN

    def allowed(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return any(addr in net for net in self.allow)  # never true across families


def config_from_options(*, mode: str = OFF, pps: float | None = None, burst: int | None = None,
                        ttl: float | None = None, targets: Iterable[str] = (), allow: Iterable[str] = (),
                        unanswered: bool = False, ingress: bool = False, interval: float = 1.0,
                        attach: str = "both") -> LimitConfig:
    """Validates the --rate-limit/--limit-* options together; bad values raise SensorError (exit 2)."""
    targets, allow = list(targets), list(allow)
    if mode not in MODES:
        raise SensorError(f"--rate-limit must be one of {', '.join(MODES)}, got {mode!r}", EXIT_USAGE)
    given = [name for name, v in (("--limit-pps", pps), ("--limit-burst", burst), ("--limit-ttl", ttl),
                                  ("--limit-target", targets), ("--limit-allow", allow),
                                  ("--limit-unanswered", unanswered), ("--limit-ingress", ingress))
             if v not in (None, [], False)]
    if mode == OFF:
        if given:
            raise SensorError(f"{given[0]} needs --rate-limit dry-run or enforce", EXIT_USAGE)
        return LimitConfig()
    if attach == "xdp" and not ingress:
        raise SensorError("--rate-limit limits on tc egress, which --attach xdp does not attach: use "
                          "--attach both or tc", EXIT_USAGE)
    pps = DEFAULT_PPS if pps is None else pps
    if not MIN_PPS <= pps <= MAX_PPS:
        raise SensorError(f"--limit-pps must be {MIN_PPS:g}..{MAX_PPS:g}, got {pps:g}", EXIT_USAGE)
    burst = DEFAULT_BURST if burst is None else burst
    if not 1 <= burst <= MAX_BURST:
        raise SensorError(f"--limit-burst must be 1..{MAX_BURST}, got {burst}", EXIT_USAGE)
    ttl = DEFAULT_TTL_INTERVALS * interval if ttl is None else ttl
    if ttl <= interval:
        raise SensorError(f"--limit-ttl ({ttl:g} s) must be longer than --interval ({interval:g} s): entries "
                          "are refreshed once per interval and would lapse in between", EXIT_USAGE)
    if ttl > 3600:
        raise SensorError(f"--limit-ttl must be at most 3600 s (how long limits outlive a dead sensor), "
                          f"got {ttl:g}", EXIT_USAGE)
    return LimitConfig(mode=mode, pps=pps, burst=burst, ttl_s=ttl, targets=tuple(expand_targets(targets)),
                       allow=tuple(parse_net(a, "--limit-allow") for a in allow), unanswered=unanswered,
                       ingress=ingress)


@dataclass
class Active:
    ip: str
    source: str  # ZOMBIE | UNANSWERED | MANUAL
    since: float
    dropped: int = 0  # totals over the life of the limit (kernel counters, all entries of this IP)
    would_drop: int = 0


@dataclass
class Decision:
    limit: dict[str, str]  # ip -> source, what the kernel should hold now
    events: list[Event] = field(default_factory=list)  # warnings and ratelimit-applied
    removed: dict[str, tuple[Active, str]] = field(default_factory=dict)  # ip -> (limit, reason): for report()


class RateLimitPolicy:
    def __init__(self, cfg: LimitConfig, hostname: str | None = None,
                 peer_fields: Callable[[Peer], dict[str, Any]] | None = None,
                 own: Callable[[str], bool] | None = None) -> None:
        self.cfg = cfg
        self.own = own or (lambda ip: False)  # this host's own addresses: never limited
        self.hostname = hostname
        self.peer_fields = peer_fields
        self.active: dict[str, Active] = {}
        self._warned: set[tuple[str, str]] = set()
        self.capped = 0  # candidates left out because MAX_TARGETS were limited already

    def _refusal(self, ip: str, source: str, peers: PeerLookup, alive: Callable[[str], bool]) -> str | None:
        """Why ip must never be limited now, or None."""
        if self.cfg.allowed(ip):
            return "it is on the --limit-allow list"
        if self.own(ip):
            return "it is one of this host's own addresses"
        peer = peers.get(ip)
        if peer is not None and peer.is_bgp and peer.established:
            return f"its BGP session{' ' + peer.name if peer.name else ''} is Established"
        if source == MANUAL and peer is not None and peer.is_bgp and peer.bgp_state is None:
            # A verdict is held while BIRD is unreachable; a manual entry has no evidence to lean on.
            return "it is a BGP peer whose state is unknown (BIRD not reachable)"
        if alive(ip):
            proto = wire_words(ip)[0]
            return f"it answered {proto} (or sent {proto} itself) within the verdict window"
        return None

    def update(self, verdicts: Mapping[str, str], peers: PeerLookup, alive: Callable[[str], bool],
               now: float) -> Decision:
        """verdicts: ip -> verdict for every non-healthy IP; alive(ip): proof of life in the window."""
        candidates: dict[str, str] = {}
        for ip in self.cfg.targets:
            candidates[ip] = MANUAL
        for ip, v in sorted(verdicts.items()):
            if v == ZOMBIE or (v == UNANSWERED and self.cfg.unanswered):
                candidates.setdefault(ip, v)
        events: list[Event] = []
        limit: dict[str, str] = {}
        refused: dict[str, str] = {}
        for ip, source in candidates.items():
            why = self._refusal(ip, source, peers, alive)
            if why:
                refused[ip] = why
                if source == MANUAL and (ip, why) not in self._warned:
                    self._warned.add((ip, why))
                    events.append(warning_event(
                        "ratelimit-refused", f"--limit-target {ip} is not limited: {why}; arp-sensor never "
                        "limits a live peer", now, self.hostname))
                continue
            if len(limit) >= MAX_TARGETS:
                self.capped += 1
                continue
            limit[ip] = source
        removed: dict[str, tuple[Active, str]] = {}
        for ip in list(self.active):
            if ip not in limit:
                a = self.active.pop(ip)
                removed[ip] = (a, refused.get(ip) or ("verdict cleared" if a.source != MANUAL else "no longer listed"))
        for ip, source in limit.items():
            if ip not in self.active:
                a = self.active[ip] = Active(ip, source, now)
                events.append(self._event("ratelimit-applied", a, now, _applied_reason(source, ip), peers.get(ip)))
        return Decision(limit, events, removed)

    def report(self, decision: Decision, totals: Mapping[str, tuple[int, int]], now: float, interval_s: float,
               peers: PeerLookup) -> list[Event]:
        """After the kernel entries were refreshed and the removed ones taken out: `totals` is ip ->
        (dropped, would_drop) summed over the IP's entries as last read (for a removed IP, as taken out).
        Returns a `ratelimit-dropping` event per IP whose counters moved in the interval, then one
        `ratelimit-removed` per removed IP carrying its lifetime totals."""
        events = []
        for ip, (dropped, would) in sorted(totals.items()):
            a = self.active.get(ip) or (decision.removed[ip][0] if ip in decision.removed else None)
            if a is None:
                continue
            d, w = max(0, dropped - a.dropped), max(0, would - a.would_drop)
            a.dropped, a.would_drop = max(a.dropped, dropped), max(a.would_drop, would)
            if d or w:
                events.append(self._event("ratelimit-dropping", a, now, None, peers.get(ip), dropped=d,
                                          would_drop=w, interval_s=interval_s))
        for ip, (a, reason) in decision.removed.items():
            events.append(self._event("ratelimit-removed", a, now, reason, peers.get(ip)))
        return events

    def _event(self, action: str, a: Active, now: float, reason: str | None, peer: Peer | None, *,
               dropped: int | None = None, would_drop: int | None = None,
               interval_s: float | None = None) -> Event:
        cfg = self.cfg
        proto, reqs, _ = wire_words(a.ip)
        if action == "ratelimit-applied":
            verb = "would limit" if cfg.dry_run else "limiting"
            msg = (f"{verb} {reqs} for {a.ip} to {cfg.pps:g}/s (burst {cfg.burst}): {reason}"
                   + (" — dry run, nothing is dropped" if cfg.dry_run else ""))
        elif action == "ratelimit-removed":
            msg = f"{proto} rate limit for {a.ip} removed: {reason}"
        elif cfg.dry_run:
            msg = f"would have dropped {would_drop} {reqs} for {a.ip} in {interval_s:.1f} s (dry run)"
        else:
            msg = f"dropped {dropped} {reqs} for {a.ip} in {interval_s:.1f} s"
        return ratelimit_event(
            action, a.ip, now, mode=cfg.mode, source=a.source, limit_pps=cfg.pps, limit_burst=cfg.burst,
            dropped=dropped if dropped is not None else (0 if action == "ratelimit-applied" else a.dropped),
            would_drop=would_drop if would_drop is not None else (a.would_drop if cfg.dry_run else None),
            interval_s=interval_s, reason=reason, message=msg,
            peer=self.peer_fields(peer) if (peer is not None and self.peer_fields) else None,
            hostname=self.hostname)


def _applied_reason(source: str, ip: str) -> str:
    proto = wire_words(ip)[0]
    return {ZOMBIE: f"zombie-peer: a BGP peer that is down and never answers {proto}",
            UNANSWERED: f"unanswered-target: nobody answers {proto} for it",
            MANUAL: "listed with --limit-target"}[source]
