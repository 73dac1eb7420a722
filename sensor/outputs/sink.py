"""What every sink shares: counters and the Dispatcher's interface (Sink), and for stdout and the network
sinks a bounded queue drained by one daemon thread per sink with non-blocking sockets and reconnect
backoff (QueuedSink), so `put()` never blocks the interval loop and `close()` always returns by its
deadline.
"""


from __future__ import annotations

import contextlib
import errno
import select
import socket
import threading
import time
from collections import deque
from typing import Any

DEFAULT_QUEUE = 10_000  # events per network sink; about 10 MB at the size of a busy target event
DEFAULT_QUEUE_BYTES = 16 << 20  # memory bound independent of event size
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
CONNECT_TIMEOUT = 2.0
WAIT_SLICE = 0.1  # longest single wait, so close() and shutdown are prompt


class Sink:
    """Base: counters plus the interface the Dispatcher uses."""

    kind = "sink"
    encoding = "json"  # "json" (a line, no newline) or "forward" (a msgpack entry)

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent = 0
        self.dropped = 0
        self.errors = 0
        self.last_error = ""

    def put(self, data: bytes) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Start background work (network sinks)."""

    def reopen(self) -> None:
        """Reopen files (logrotate). Signal-safe: only sets a flag honoured before the next write."""

    def close(self, deadline: float) -> None:
        """Flush what can be flushed before `deadline` (time.monotonic()), then release resources."""

    def queued(self) -> int:
        return 0

    def is_connected(self) -> bool:
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "queued": self.queued(),
            "sent": self.sent,
            "dropped": self.dropped,
            "errors": self.errors,
            "connected": self.is_connected(),
        }

    def _error(self, e: BaseException | str) -> None:
        self.errors += 1
        self.last_error = str(e)


class QueuedSink(Sink):
    """A bounded queue drained by one thread. Subclasses implement connect/pump/close_socket.

    Accounting: every event put() is, at any moment, exactly one of queued (waiting or in flight),
    sent (handed to the kernel; forward with chunk=1: acknowledged) or dropped.
    """

    def __init__(self, name: str, queue_size: int = DEFAULT_QUEUE, queue_bytes: int = DEFAULT_QUEUE_BYTES,
                 backoff: tuple[float, float] = (BACKOFF_MIN, BACKOFF_MAX)) -> None:
        super().__init__(name)
        self.queue_size = max(1, queue_size)
        self.queue_bytes = max(1, queue_bytes)
        self.backoff_min, self.backoff_max = backoff
        self._q: deque[bytes] = deque()
        self._qbytes = 0
        self._taken = 0  # events taken off the queue and not yet settled (the in-flight batch)
        self._cv = threading.Condition()  # RLock inside: stats() may nest
        self._closing = False
        self._deadline = float("inf")
        self._connected = False
        self._sock: socket.socket | None = None
        self.connects = 0
        self._thread = threading.Thread(target=self._run, name=f"arp-sensor output {name}", daemon=True)

    # -- caller side: O(1), never blocks on I/O ------------------------------------------------------
    def put(self, data: bytes) -> None:
        with self._cv:
            if self._closing:
                self.dropped += 1
                return
            self._q.append(data)
            self._qbytes += len(data)
            self._trim()
            self._cv.notify()

    def _trim(self) -> None:
        """Drop the oldest while over either bound (call with the lock held)."""
        while len(self._q) > self.queue_size or (self._qbytes > self.queue_bytes and len(self._q) > 1):
            self._qbytes -= len(self._q.popleft())
            self.dropped += 1

    def queued(self) -> int:
        return len(self._q) + self._taken

    def is_connected(self) -> bool:
        return self._connected

    def stats(self) -> dict[str, Any]:
        with self._cv:  # a consistent snapshot: queued + sent + dropped == events put
            return super().stats()

    def start(self) -> None:
        self._thread.start()

    def close(self, deadline: float) -> None:
        with self._cv:
            self._closing = True
            self._deadline = deadline
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()) + 2 * WAIT_SLICE)
        with self._cv:  # what could not be delivered in time is lost: say so in the counters
            self.dropped += len(self._q) + self._taken
            self._q.clear()
            self._qbytes = 0
            self._taken = 0

    # -- sender thread ------------------------------------------------------------------------------
    def _expired(self) -> bool:
        return self._closing and time.monotonic() >= self._deadline

    def _take(self, max_items: int, max_bytes: int) -> list[bytes] | None:
        """Up to max_items from the queue; [] after an idle wait; None when closing and drained."""
        with self._cv:
            if not self._q:
                if self._closing:
                    return None
                self._cv.wait(WAIT_SLICE * 5)
            batch: list[bytes] = []
            size = 0
            while self._q and len(batch) < max_items and (not batch or size + len(self._q[0]) <= max_bytes):
                item = self._q.popleft()
                self._qbytes -= len(item)
                size += len(item)
                batch.append(item)
            self._taken = len(batch)
            return batch

    def _settle(self, sent: int, requeue: list[bytes] | None = None, dropped: int = 0) -> None:
        """Close the books on the in-flight batch: sent, dropped, or back at the head of the queue."""
        with self._cv:
            self.sent += sent
            self.dropped += dropped
            self._taken = 0
            if requeue:
                self._q.extendleft(reversed(requeue))
                self._qbytes += sum(len(i) for i in requeue)
                self._trim()

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        with self._cv:
            while not self._closing and time.monotonic() < end:
                self._cv.wait(min(WAIT_SLICE, end - time.monotonic()))

    def _run(self) -> None:
        backoff = self.backoff_min
        while True:
            if self._closing and (self._expired() or (not self._q and not self._taken)):
                break
            if not self._connected:
                try:
                    self._connect()
                    self._connected = True
                    self.connects += 1
                    backoff = self.backoff_min
                except OSError as e:
                    self._error(e)
                    if self._closing:
                        break  # receiver down at shutdown: do not wait out the backoff
                    self._sleep(backoff)
                    backoff = min(backoff * 2, self.backoff_max)
                    continue
            try:
                self._pump()
            except OSError as e:  # incl. forward's AckError: count, reconnect, resend
                self._error(e)
                self._disconnect()
            except Exception as e:  # a bug must not kill the sender thread silently either; no hot loop
                self._error(e)
                self._disconnect()
                self._sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max)
        self._disconnect()

    def _disconnect(self) -> None:
        self._connected = False
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _tcp_connect(self, host: str | None, port: int | None) -> socket.socket:
        timeout = CONNECT_TIMEOUT
        if self._closing:
            timeout = max(0.05, min(timeout, self._deadline - time.monotonic()))
        s = socket.create_connection((host, port), timeout=timeout)
        if s.getsockname() == s.getpeername():
            # TCP simultaneous open onto itself: a local port nobody listens on, picked as our own
            # ephemeral port. It would "deliver" to ourselves; treat it as the refusal it is.
            s.close()
            raise ConnectionRefusedError(errno.ECONNREFUSED, "connected to itself (nobody listening)")
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        s.setblocking(False)
        return s

    # -- subclass hooks ------------------------------------------------------------------------------
    def _connect(self) -> None:
        raise NotImplementedError

    def _pump(self) -> None:
        """Send some of the queue; raise OSError when the connection is unusable."""
        raise NotImplementedError


def send_all(sock: socket.socket | None, buf: bytes, expired: Any, progress: list[int] | None = None) -> int:
    """Write buf on a non-blocking socket in short waits; raise TimeoutError once expired() is true.

    `progress[0]` tracks bytes written so a caller can tell, after an exception, which lines got out.
    """
    assert sock is not None
    mv = memoryview(buf)
    prog = progress if progress is not None else [0]
    prog[0] = 0
    while prog[0] < len(buf):
        try:
            prog[0] += sock.send(mv[prog[0]:])
        except BlockingIOError:
            if expired():
                raise TimeoutError("shutdown deadline reached while the receiver was not reading") from None
            select.select([], [sock], [], WAIT_SLICE)
    return prog[0]


def check_peer(sock: socket.socket | None) -> None:
    """Our receivers never talk unasked: readable means EOF or reset, so reconnect now rather than later."""
    assert sock is not None
    r, _, _ = select.select([sock], [], [], 0)
    if r:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        if not data:
            raise ConnectionResetError(errno.ECONNRESET, "receiver closed the connection")
