"""The kernel's rate-limit entries (bpf/arp_sensor.h: struct limit_key/limit_val, limits_active), written and
read through raw bpf(2) on map file descriptors: no bcc, so tests can drive any loaded program's maps.

Times are the kernel's bpf_ktime_get_ns() clock, which is CLOCK_MONOTONIC: time.monotonic_ns() here.
"""

from __future__ import annotations

import errno
import socket
import time
from dataclasses import dataclass

from sensor.errors import EXIT_ENV, SensorError
from sensor.kernel import bpfsys
from sensor.kernel.layout import (
    LIMIT_CMD,
    LIMIT_F_DRY_RUN,
    LIMIT_FAMILY_IPV4,
    LIMIT_FAMILY_IPV6,
    LIMIT_FIELDS,
    LIMIT_KEY,
    LIMIT_VAL,
    LIMITS_ACTIVE,
)

NS = 1_000_000_000
MAX_BURST = 1_000_000  # burst * cost_ns must fit in u64 with cost_ns up to 1e12 (0.001 pps)
XDP_PASS = 2


@dataclass(frozen=True, slots=True)
class LimitKey:
    ifindex: int
    ip: str  # dotted quad (ARP requests) or IPv6 text (neighbour solicitations)
    dir: int  # layout.DIR_INGRESS / DIR_EGRESS

    def pack(self) -> bytes:
        if ":" in self.ip:
            return LIMIT_KEY.pack(self.ifindex, self.dir, LIMIT_FAMILY_IPV6,
                                  socket.inet_pton(socket.AF_INET6, self.ip))
        return LIMIT_KEY.pack(self.ifindex, self.dir, LIMIT_FAMILY_IPV4, socket.inet_aton(self.ip))

    @classmethod
    def unpack(cls, raw: bytes) -> LimitKey:
        ifindex, d, family, ip = LIMIT_KEY.unpack(raw)
        if family == LIMIT_FAMILY_IPV6:
            return cls(ifindex, socket.inet_ntop(socket.AF_INET6, ip), d)
        return cls(ifindex, socket.inet_ntoa(ip[:4]), d)


@dataclass(slots=True)
class LimitVal:
    flags: int = 0
    rate_mpps: int = 0
    cost_ns: int = 0
    burst: int = 0
    tokens_ns: int = 0
    last_refill_ns: int = 0
    expires_ns: int = 0
    dropped: int = 0
    would_drop: int = 0
    passed: int = 0

    def pack(self) -> bytes:
        return LIMIT_VAL.pack(*(getattr(self, f) for f in LIMIT_FIELDS))

    @classmethod
    def unpack(cls, raw: bytes) -> LimitVal:
        return cls(*LIMIT_VAL.unpack(raw[: LIMIT_VAL.size]))

    @property
    def dry_run(self) -> bool:
        return bool(self.flags & LIMIT_F_DRY_RUN)

    @property
    def tokens(self) -> float:
        return self.tokens_ns / self.cost_ns if self.cost_ns else 0.0


def cost_ns(pps: float) -> int:
    """Credit one request costs: the bucket's fixed point (see struct limit_val)."""
    return max(1, round(NS / pps))


class LimitMap:
    """Entries of one loaded program's `limits` map, plus the `limits_active` count the kernel checks
    before any hash lookup. Every change goes through here so the count stays right."""

    def __init__(self, limits_fd: int, active_fd: int, ctl_fd: int) -> None:
        self.fd, self.active_fd, self.ctl_fd = limits_fd, active_fd, ctl_fd
        # Entries in the map. Only user space creates or deletes them, so after one walk here every
        # change keeps it exact: creating or removing a limit costs O(1) syscalls, not a walk of the map.
        self.count = len(bpfsys.map_keys(self.fd, LIMIT_KEY.size))

    # -- raw access (tests write tokens and clocks directly) -----------------------------------------
    def get(self, key: LimitKey) -> LimitVal | None:
        raw = bpfsys.map_lookup(self.fd, key.pack(), LIMIT_VAL.size, bpfsys.BPF_F_LOCK)
        return LimitVal.unpack(raw) if raw is not None else None

    def put(self, key: LimitKey, val: LimitVal) -> None:
        try:
            bpfsys.map_update(self.fd, key.pack(), val.pack(), bpfsys.BPF_F_LOCK)
        except bpfsys.BpfError as e:
            if e.errno == errno.E2BIG:
                raise SensorError("the kernel limits map is full (ARP_SENSOR_MAX_LIMITS)", EXIT_ENV) from None
            raise
        self.sync_active()

    def delete(self, key: LimitKey) -> bool:
        gone = bpfsys.map_delete(self.fd, key.pack())
        if gone:
            self._counted(-1)
        return gone

    def _counted(self, delta: int) -> None:
        self.count = max(0, self.count + delta)
        self.set_active(self.count)

    def take(self, key: LimitKey) -> LimitVal | None:
        """Removes an entry and returns its last counters, atomically where the kernel can (5.14+)."""
        try:
            raw = bpfsys.map_lookup_and_delete(self.fd, key.pack(), LIMIT_VAL.size, bpfsys.BPF_F_LOCK)
        except bpfsys.BpfError as e:
            if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, 524):  # 524: ENOTSUPP
                raise
            val = self.get(key)
            raw = val.pack() if val and bpfsys.map_delete(self.fd, key.pack()) else None
        if raw is not None:
            self._counted(-1)
        return LimitVal.unpack(raw) if raw is not None else None

    def list_keys(self) -> list[LimitKey]:
        return [LimitKey.unpack(k) for k in bpfsys.map_keys(self.fd, LIMIT_KEY.size)]

    def read(self) -> dict[LimitKey, LimitVal]:
        out = {}
        for k in self.list_keys():
            v = self.get(k)
            if v is not None:  # deleted between the walk and the lookup
                out[k] = v
        return out

    def active(self) -> int:
        raw = bpfsys.map_lookup(self.active_fd, b"\0\0\0\0", LIMITS_ACTIVE.size)
        return LIMITS_ACTIVE.unpack(raw)[0] if raw else 0

    def set_active(self, n: int) -> None:
        bpfsys.map_update(self.active_fd, b"\0\0\0\0", LIMITS_ACTIVE.pack(n))

    def sync_active(self) -> int:
        """Counts the entries with a walk of the map and writes the count (put() and tests; the policy's
        operations keep the count without walking)."""
        self.count = len(bpfsys.map_keys(self.fd, LIMIT_KEY.size))
        self.set_active(self.count)
        return self.count

    def clear(self) -> None:
        self.set_active(0)  # first: the kernel stops looking while we delete
        for k in bpfsys.map_keys(self.fd, LIMIT_KEY.size):
            bpfsys.map_delete(self.fd, k)
        self.sync_active()

    # -- the policy's operations ----------------------------------------------------------------------
    def apply(self, key: LimitKey, pps: float, burst: int, ttl_s: float, dry_run: bool,
              now_ns: int | None = None) -> bool:
        """Creates the entry (a full bucket) or refreshes it: new expiry and config, written by the
        arpsensor_limctl program under the entry's lock, so the kernel's tokens and counters are never
        overwritten. Returns True when the entry was created."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        cost = cost_ns(pps)
        flags = LIMIT_F_DRY_RUN if dry_run else 0
        expires = now_ns + int(ttl_s * NS)
        cmd = LIMIT_CMD.pack(key.pack(), flags, round(pps * 1000), cost, burst, expires)
        if bpfsys.prog_test_run(self.ctl_fd, cmd).retval == XDP_PASS:
            return False
        val = LimitVal(flags=flags, rate_mpps=round(pps * 1000), cost_ns=cost, burst=burst, tokens_ns=burst * cost,
                       last_refill_ns=now_ns, expires_ns=expires)
        try:
            bpfsys.map_update(self.fd, key.pack(), val.pack(), bpfsys.BPF_NOEXIST)
        except bpfsys.BpfError as e:
            if e.errno == errno.E2BIG:
                raise SensorError("the kernel limits map is full", EXIT_ENV) from None
            if e.errno != errno.EEXIST:
                raise
            bpfsys.prog_test_run(self.ctl_fd, cmd)  # created meanwhile: refresh it instead
            return False
        self._counted(+1)
        return True
