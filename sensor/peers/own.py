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
