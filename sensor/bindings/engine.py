"""The bindings engine: IP -> MAC per (interface, VLAN), what arpwatch and addrwatch keep, as pure Python.

Call `BindingEngine.update(sightings, now)` once per interval with what the interval's ARP showed; it
returns `arp_sensor.binding` events. No bcc, no I/O (the state file is sensor.bindings.store).

What claims an IP (the ARP sender hardware address, `sha`, is the claimant's MAC):
  reply        the answerer claims the IP it answers for (the kernel key's `ip`)
  gratuitous   the announcer claims the IP it announces
  request      the asker claims its sender IP (the key's `peer`); the target claims nothing
  probe        (RFC 5227, sender IP 0.0.0.0) claims nothing: it asks whether anyone holds the target

Events (dataset arp_sensor.binding; arpwatch's names where it has one):
  new-station   an IP seen for the first time, once `learn_s` seconds have passed since start (so a
                restart, or a first start, does not announce the whole segment; 0: no learning period)
  mac-changed   an IP now claimed by another MAC, the old one silent for `conflict_s` (a replaced NIC,
                a re-created VM, a failover that completed)
  flip-flop     the same, back to the MAC it had before the last change
  ip-conflict   (alert) two MACs claim one IP within `conflict_s` (duplicate address, a failover pair
                that both answer, a spoofer); or an RFC 5227 probe from another MAC for an IP whose
                holder was seen within `hold_s`. One per episode: again only after that MAC was quiet
                for `conflict_s`. The binding stays with the holder until the holder has been silent
                for `conflict_s`, then the change is reported as mac-changed / flip-flop.
  mac-many-ips  a MAC holds more than `max_ips` IPs on one (interface, VLAN): proxy ARP or spoofing;
                once per crossing
  mac-mismatch  a frame whose Ethernet source differs from its ARP sender MAC (a bridge or proxy
                rewriting, or a forged ARP body); once per (interface, VLAN, IP, MAC)

Memory is bounded: at most `max_bindings` bindings (the least recently seen one that has been silent for
`hold_s` makes room, found in O(1): the bindings are kept least recently seen first; otherwise the new IP
is not tracked and counted in `untracked`), and at most `max_bindings` remembered mismatches. At most
`max_new` new-station events per interval (a flood of spoofed sender IPs would otherwise be a flood of
events); the rest are counted in `suppressed`, with one warning when the cap starts to bite.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from sensor.events.encode import Event, binding_event, warning_event

CLAIMS = ("reply", "gratuitous", "request")
PROBE = "probe"
DEFAULT_LEARN_S = 60.0
DEFAULT_CONFLICT_S = 10.0
DEFAULT_HOLD_S = 600.0
DEFAULT_MAX_IPS = 32
DEFAULT_MAX_BINDINGS = 8192  # ~0.5 KiB each: ~4 MiB at worst (a spoofed flood of sender IPs)
DEFAULT_MAX_NEW = 64  # new-station events per interval; beyond, counted (a flood of spoofed senders)


@lru_cache(maxsize=1 << 16)  # bounded: MACs come from the wire
def ecs_mac(raw: bytes) -> str:
    """ECS form of a MAC: upper-case, hyphen-separated (`02-00-5E-10-00-01`)."""
    return "-".join(f"{b:02X}" for b in raw)


@dataclass(frozen=True, slots=True)
class Sighting:
    """One interval's frames of one kind from one MAC about one IP (a counted kernel entry, summed)."""

    interface: str
    vlan: int
    ip: str  # the claimed IP (see the module docstring), or the probed one
    mac: str  # ECS form
    kind: str  # reply | gratuitous | request | probe
    count: int = 1
    mismatch: bool = False  # some of these frames had an Ethernet source != mac


BindingKey = tuple[str, int, str]  # (interface, vlan, ip)


@dataclass(slots=True)
class Binding:
    mac: str
    first_seen: float
    last_seen: float
    prev_mac: str | None = None  # the MAC before the last change (flip-flop is a change back to it)
    changed: float | None = None  # when the last change happened
    rivals: dict[str, float] | None = None  # other MACs in a conflict episode -> last claim (None: none)


class BindingEngine:
    def __init__(self, *, learn_s: float = DEFAULT_LEARN_S, conflict_s: float = DEFAULT_CONFLICT_S,
                 hold_s: float = DEFAULT_HOLD_S, max_ips: int = DEFAULT_MAX_IPS,
                 max_bindings: int = DEFAULT_MAX_BINDINGS, max_new: int = DEFAULT_MAX_NEW, started: float = 0.0,
                 hostname: str | None = None) -> None:
        self.learn_s = learn_s
        self.conflict_s = conflict_s
        self.hold_s = hold_s
        self.max_ips = max_ips
        self.max_bindings = max_bindings
        self.max_new = max_new
        self.suppressed = 0  # new-station events not emitted: more than max_new in one interval
        self._new_events = 0  # new-station events emitted in the current update
        self._capped = False
        self.started = started
        self.hostname = hostname
        # least recently seen first (every claim moves its binding to the end): the one to evict is at the
        # front, found in O(1) even while a flood of new IPs hits a full table
        self.bindings: OrderedDict[BindingKey, Binding] = OrderedDict()
        self.untracked = 0  # new IPs not tracked because the table was full of live bindings
        self.dirty = False  # bindings changed since the state file was last written
        self.version = 0  # bumped whenever a binding is added or removed
        self._mismatched: set[tuple[BindingKey, str]] = set()
        self._by_ip: dict[str, tuple[BindingKey, ...]] = {}  # ip -> its keys (top's per-IP MAC column)
        self._ips_per_mac: dict[tuple[str, int, str], int] = {}
        self._many: set[tuple[str, int, str]] = set()

    # -- state ------------------------------------------------------------------------------------------
    def restore(self, bindings: dict[BindingKey, Binding]) -> None:
        """Bindings from the state file: known IPs are never announced as new again."""
        self.bindings = OrderedDict(sorted(bindings.items(), key=lambda kv: kv[1].last_seen))
        self.version += 1
        self._ips_per_mac.clear()
        self._by_ip.clear()
        for key in self.bindings:
            self._by_ip[key[2]] = (*self._by_ip.get(key[2], ()), key)
        for (ifname, vlan, _ip), b in self.bindings.items():
            k = (ifname, vlan, b.mac)
            self._ips_per_mac[k] = self._ips_per_mac.get(k, 0) + 1
        self._many = {k for k, n in self._ips_per_mac.items() if n > self.max_ips}

    def mac_of(self, interface: str, vlan: int, ip: str) -> str | None:
        b = self.bindings.get((interface, vlan, ip))
        return b.mac if b else None

    def refresh(self, key: BindingKey, mac: str, now: float) -> bool:
        """The fast path for a claim that changes nothing: `key` is bound to `mac` and no other MAC is in
        a conflict episode for it. Updates last-seen and returns True; False means "give it to update"."""
        b = self.bindings.get(key)
        if b is None or b.mac != mac or b.rivals:
            return False
        b.last_seen = now
        self.bindings.move_to_end(key)
        return True

    def holders(self, ip: str) -> list[tuple[str, Binding]]:
        """(MAC, binding) for an IP on every (interface, VLAN) where it is bound, MACs deduplicated."""
        out: dict[str, Binding] = {}
        for key in sorted(self._by_ip.get(ip, ())):
            b = self.bindings[key]
            out.setdefault(b.mac, b)
        return list(out.items())

    # -- per interval -----------------------------------------------------------------------------------
    def update(self, sightings: Iterable[Sighting], now: float) -> list[Event]:
        claims: dict[BindingKey, dict[str, tuple[int, str]]] = {}
        probes: list[Sighting] = []
        events: list[Event] = []
        self._new_events = 0
        suppressed_before = self.suppressed
        for s in sightings:
            if s.count <= 0:
                continue
            key = (s.interface, s.vlan, s.ip)
            if s.mismatch:
                events += self._mismatch(key, s, now)
            if s.kind == PROBE:
                probes.append(s)
            elif s.kind in CLAIMS and s.ip != "0.0.0.0":
                per_mac = claims.setdefault(key, {})
                n, kind = per_mac.get(s.mac, (0, s.kind))
                # the strongest evidence names the claim: a reply or announcement over a request's sender
                per_mac[s.mac] = (n + s.count, kind if CLAIMS.index(kind) <= CLAIMS.index(s.kind) else s.kind)
        for key, per_mac in claims.items():
            events += self._claims(key, per_mac, now)
        for s in probes:
            events += self._probe(s, now)
        capped = self.suppressed > suppressed_before
        if capped and not self._capped:
            events.append(warning_event(
                "binding-new-stations-capped", f"more than {self.max_new} new stations in one interval (a flood of "
                f"spoofed senders?): new-station events are capped at {self.max_new} per interval, the rest counted "
                "in health (binding_new_suppressed)", now, self.hostname))
        self._capped = capped
        return events

    def room(self, now: float) -> int:
        """About how many new bindings this interval can make: the free slots, or a few when the table is
        full but its least recently seen binding can be evicted (the caller leaves the rest untracked)."""
        free = self.max_bindings - len(self.bindings)
        if free > 0:
            return free
        return 0 if self.full(now) else self.max_new

    def full(self, now: float) -> bool:
        """No room for another binding now (every binding seen within hold_s): a new IP would be untracked."""
        if len(self.bindings) < self.max_bindings:
            return False
        return now - next(iter(self.bindings.values())).last_seen < self.hold_s

    def _claims(self, key: BindingKey, per_mac: dict[str, tuple[int, str]], now: float) -> list[Event]:
        events: list[Event] = []
        # the bound MAC first (it refreshes the binding), then the others, busiest first
        b = self.bindings.get(key)
        order = sorted(per_mac, key=lambda m: (b is None or m != b.mac, -per_mac[m][0], m))
        if b is None:
            mac = order[0]
            b = self._new(key, mac, now)
            if b is None:
                return events
            if now - self.started >= self.learn_s:
                if self._new_events >= self.max_new:
                    self.suppressed += 1
                else:
                    self._new_events += 1
                    events.append(self._event("new-station", key, mac, now, seen_in=per_mac[mac][1],
                                              message=f"new station {key[2]} at {mac} on {_where(key)}"))
        for mac in order:
            kind = per_mac[mac][1]
            if mac == b.mac:
                b.last_seen = now
                self.bindings.move_to_end(key)
                continue
            if now - b.last_seen < self.conflict_s - 1e-6:
                if b.rivals is None:
                    b.rivals = {}
                last = b.rivals.get(mac)
                b.rivals[mac] = now
                if last is None or now - last >= self.conflict_s - 1e-6:
                    events.append(self._event(
                        "ip-conflict", key, mac, now, alert=True, seen_in=kind, holder_mac=b.mac,
                        message=f"IP conflict: {key[2]} on {_where(key)} is claimed by {mac} ({kind}) while "
                                f"{b.mac} holds it (seen {now - b.last_seen:.0f} s ago): a duplicate address, "
                                "a failover pair both answering, or ARP spoofing"))
                continue
            old, silent = b.mac, now - b.last_seen
            action = "flip-flop" if mac == b.prev_mac else "mac-changed"
            self._rebind(key, b, mac, now)
            what = "back to" if action == "flip-flop" else "now"
            events.append(self._event(
                action, key, mac, now, seen_in=kind, previous_mac=old,
                message=f"{key[2]} on {_where(key)} is {what} at {mac} (was {old}, silent for {silent:.0f} s): "
                        "a replaced NIC or re-created VM, a completed failover — or a spoofer if unexpected"))
        if b.rivals:
            b.rivals = {m: t for m, t in b.rivals.items() if now - t < self.conflict_s - 1e-6} or None
        events += self._many_ips(key, b.mac, now)
        return events

    def _probe(self, s: Sighting, now: float) -> list[Event]:
        key = (s.interface, s.vlan, s.ip)
        b = self.bindings.get(key)
        if b is None or b.mac == s.mac or now - b.last_seen >= self.hold_s:
            return []
        if b.rivals is None:
            b.rivals = {}
        last = b.rivals.get(s.mac)
        b.rivals[s.mac] = now
        if last is not None and now - last < self.conflict_s - 1e-6:
            return []
        return [self._event(
            "ip-conflict", key, s.mac, now, alert=True, seen_in=PROBE, holder_mac=b.mac,
            message=f"IP conflict: {s.mac} probes for {s.ip} on {_where(key)} (RFC 5227) while {b.mac} holds "
                    f"it (seen {now - b.last_seen:.0f} s ago): a second host configured with the same address")]

    def _mismatch(self, key: BindingKey, s: Sighting, now: float) -> list[Event]:
        if (key, s.mac) in self._mismatched:
            return []
        if len(self._mismatched) >= self.max_bindings:
            self._mismatched.clear()  # bounded; at worst a mismatch is reported twice
        self._mismatched.add((key, s.mac))
        return [self._event(
            "mac-mismatch", key, s.mac, now, seen_in=s.kind,
            message=f"ARP {s.kind} about {s.ip} on {_where(key)} carries sender MAC {s.mac} but comes from "
                    "another Ethernet source: a bridge or proxy rewriting frames, or a forged ARP body")]

    def _many_ips(self, key: BindingKey, mac: str, now: float) -> list[Event]:
        k = (key[0], key[1], mac)
        n = self._ips_per_mac.get(k, 0)
        if n <= self.max_ips or k in self._many:
            return []
        self._many.add(k)
        return [self._event(
            "mac-many-ips", (key[0], key[1], ""), mac, now, ip_count=n, ip_threshold=self.max_ips,
            message=f"{mac} holds {n} IPs on {_where(key)} (more than {self.max_ips}): a proxy-ARP router, "
                    "or a host answering for addresses that are not its own (spoofing)")]

    # -- bookkeeping ------------------------------------------------------------------------------------
    def _new(self, key: BindingKey, mac: str, now: float) -> Binding | None:
        if len(self.bindings) >= self.max_bindings and not self._make_room(now):
            self.untracked += 1
            return None
        b = self.bindings[key] = Binding(mac, now, now)
        self.version += 1
        self._by_ip[key[2]] = (*self._by_ip.get(key[2], ()), key)
        self._count(key, mac, +1)
        self.dirty = True
        return b

    def _rebind(self, key: BindingKey, b: Binding, mac: str, now: float) -> None:
        self._count(key, b.mac, -1)
        b.prev_mac, b.mac, b.changed, b.last_seen = b.mac, mac, now, now
        self.bindings.move_to_end(key)
        if b.rivals:
            b.rivals = {m: t for m, t in b.rivals.items() if m != mac} or None
        self._count(key, mac, +1)
        self.dirty = True

    def _count(self, key: BindingKey, mac: str, d: int) -> None:
        k = (key[0], key[1], mac)
        n = self._ips_per_mac.get(k, 0) + d
        if n > 0:
            self._ips_per_mac[k] = n
        else:
            self._ips_per_mac.pop(k, None)
        if n <= self.max_ips:
            self._many.discard(k)

    def _make_room(self, now: float) -> bool:
        key, b = next(iter(self.bindings.items()))
        if now - b.last_seen < self.hold_s:
            return False
        self._count(key, b.mac, -1)
        del self.bindings[key]
        self.version += 1
        keys = tuple(k for k in self._by_ip.get(key[2], ()) if k != key)
        if keys:
            self._by_ip[key[2]] = keys
        else:
            self._by_ip.pop(key[2], None)
        return True

    def _event(self, action: str, key: BindingKey, mac: str, now: float, *, message: str, alert: bool = False,
               **fields: object) -> Event:
        return binding_event(action, key[2] or None, mac, message, now, interface=key[0], vlan=key[1],
                             alert=alert, fields={k: v for k, v in fields.items() if v is not None},
                             hostname=self.hostname)


def _where(key: BindingKey) -> str:
    return f"{key[0]} VLAN {key[1]}" if key[1] else key[0]
