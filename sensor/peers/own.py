"""This host's own addresses: never an `unanswered-target`, never rate-limited (issue 13).

With `--attach xdp` the sensor sees only ingress, so the replies this host sends for its own addresses
are never seen: requests for them would look unanswered, and `--limit-unanswered --limit-ingress` would
drop the requests that reach this host. Every address of every interface in the sensor's network
namespace counts, read over netlink (no capability needed) and refreshed at most every `ttl` seconds.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def netns_addresses() -> frozenset[str]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return frozenset(a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()
                         if a["family"] in (socket.AF_INET, socket.AF_INET6) and a.get_attr("IFA_ADDRESS"))


class OwnAddresses:
    """Callable: own(ip) is True for an address of this network namespace. A failed read keeps the last
    good set (an address never becomes limitable because netlink hiccupped)."""

    def __init__(self, ttl: float = 5.0, read: Callable[[], frozenset[str]] = netns_addresses) -> None:
        self.ttl = ttl
        self._read = read
        self._addrs: frozenset[str] = frozenset()
        self._at = float("-inf")

    def addresses(self) -> frozenset[str]:
        now = time.monotonic()
        if now - self._at >= self.ttl:
            try:
                self._addrs = self._read()
                self._at = now
            except OSError:
                pass
        return self._addrs

    def __call__(self, ip: str) -> bool:
        return ip in self.addresses()


NTF_USE = 0x01  # RTM_NEWNEIGH flag: resolve as if a packet were sent, without sending one
NUD_INCOMPLETE, NUD_REACHABLE, NUD_STALE, NUD_DELAY, NUD_PROBE = 0x01, 0x02, 0x04, 0x08, 0x10
NUD_FAILED, NUD_NOARP, NUD_PERMANENT = 0x20, 0x40, 0x80


def kernel_resolve(ip: str) -> None:
    """The first-hand check before a zombie verdict (sensor.pipeline.detect): this host's kernel asks for
    `ip` now, on the interface its route uses, with its own ARP machinery: a broadcast request (at most
    mcast_solicit of them) when it has no usable entry, a unicast probe (state PROBE) when the entry is
    stale. A live host answers us, where the sensor sees it. A REACHABLE entry is left alone (the engine
    asks again a window later), as are entries configured by hand. Never raises: a failed check is no
    evidence either way."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            routes = ipr.route("get", dst=ip)
            oif = routes[0].get_attr("RTA_OIF") if routes else None
            if not oif:
                return
            states = [n["state"] for n in ipr.get_neighbours(dst=ip, ifindex=oif)]
            state = states[0] if states else 0
            if state & (NUD_PERMANENT | NUD_NOARP | NUD_REACHABLE | NUD_INCOMPLETE | NUD_PROBE):
                return
            if state & (NUD_STALE | NUD_DELAY):
                ipr.neigh("change", dst=ip, ifindex=oif, state=NUD_PROBE)  # probe now, not after DELAY
            else:
                ipr.neigh("replace", dst=ip, ifindex=oif, flags=NTF_USE, state=0)
    except (OSError, NetlinkError, IndexError):
        return
