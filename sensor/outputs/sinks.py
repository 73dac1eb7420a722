"""Sinks: where encoded events go.

Local sinks (stdout, file) write synchronously: a line is written whole with one write() or not at all.
Network sinks (tcp, unix, udp, forward) never block the caller: `put()` appends to a bounded queue
(dropping and counting the oldest when full) and one daemon thread per sink connects, sends and
reconnects with exponential backoff. Sockets are non-blocking and every wait is short, so `close()`
always returns by its deadline.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import select
import socket
import sys
import threading
import time
from collections import deque
from typing import Any

import msgpack

from sensor.outputs.encode import forward_message, unpack_event_time
from sensor.outputs.spec import OutputSpec

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


class StdoutSink(Sink):
    """Lines on stdout. Looks sys.stdout up on every write so test harnesses that swap it still capture."""

    kind = "stdout"

    def __init__(self, name: str = "-") -> None:
        super().__init__(name)
        self._broken = False

    def put(self, data: bytes) -> None:
        if self._broken:
            self.dropped += 1
            return
        out = sys.stdout
        try:
            buf = getattr(out, "buffer", None)
            if buf is not None:
                buf.write(data + b"\n")
            else:
                out.write(data.decode("utf-8") + "\n")
            out.flush()
            self.sent += 1
        except BrokenPipeError as e:
            # Reader went away (`| head`): stop writing, and point fd 1 at /dev/null so the interpreter's
            # own flush at exit does not raise again (the approach the Python docs recommend).
            self._broken = True
            self.dropped += 1
            self._error(e)
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, out.fileno())
                os.close(devnull)
        except (OSError, ValueError) as e:
            self.dropped += 1
            self._error(e)

    def is_connected(self) -> bool:
        return not self._broken


class FileSink(Sink):
    """Append whole lines with O_APPEND: one write() per line, so concurrent readers never see half a line."""

    kind = "file"

    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self._fd: int | None = None
        self._reopen = False
        self._closed = False
        self._lock = threading.Lock()

    def open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def reopen(self) -> None:
        self._reopen = True

    def _reopen_now(self) -> None:
        self._reopen = False
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as e:  # keep writing to the old file rather than lose lines
            self._error(e)
            return
        old, self._fd = self._fd, fd
        if old is not None:
            with contextlib.suppress(OSError):
                os.close(old)

    def put(self, data: bytes) -> None:
        with self._lock:
            if self._closed:
                self.dropped += 1
                return
            if self._reopen or self._fd is None:
                self._reopen_now()
            if self._fd is None:
                self.dropped += 1
                return
            line = data + b"\n"
            try:
                n = os.write(self._fd, line)
                if n != len(line):  # disk full mid-line: finish it so the file stays line-aligned
                    mv = memoryview(line)
                    while n < len(line):
                        n += os.write(self._fd, mv[n:])
                self.sent += 1
            except OSError as e:
                self.dropped += 1
                self._error(e)

    def close(self, deadline: float) -> None:
        with self._lock:
            self._closed = True
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None

    def is_connected(self) -> bool:
        return self._fd is not None


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
            except OSError as e:
                self._error(e)
                self._disconnect()
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


class StreamSink(QueuedSink):
    """Newline-delimited JSON over TCP or a unix stream socket."""

    BATCH_ITEMS = 512
    BATCH_BYTES = 256 << 10

    def __init__(self, spec: OutputSpec, queue_size: int, **kw: Any) -> None:
        super().__init__(spec.name, spec.options.get("queue", queue_size), **kw)
        self.kind = spec.kind
        self.spec = spec

    def _connect(self) -> None:
        if self.spec.kind != "unix":
            self._sock = self._tcp_connect(self.spec.host, self.spec.port)
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.settimeout(CONNECT_TIMEOUT)
        try:
            s.connect(self.spec.path or "")
        except OSError:
            s.close()
            raise
        s.setblocking(False)
        self._sock = s

    def _pump(self) -> None:
        batch = self._take(self.BATCH_ITEMS, self.BATCH_BYTES)
        if batch is None:
            return
        try:
            check_peer(self._sock)
        except OSError:
            self._settle(0, batch)
            raise
        if not batch:
            return
        buf = b"".join(item + b"\n" for item in batch)
        progress = [0]
        try:
            send_all(self._sock, buf, self._expired, progress)
        finally:
            # Lines wholly handed to the kernel count as sent; the rest (incl. a torn one) go back.
            done, off = 0, 0
            for item in batch:
                off += len(item) + 1
                if off > progress[0]:
                    break
                done += 1
            self._settle(done, batch[done:])


class UdpSink(QueuedSink):
    """One event per datagram, newline-terminated. Oversized events are dropped and counted, never split."""

    kind = "udp"
    MAX_DATAGRAM = 65507  # IPv4 UDP payload limit

    def __init__(self, spec: OutputSpec, queue_size: int, **kw: Any) -> None:
        super().__init__(spec.name, spec.options.get("queue", queue_size), **kw)
        self.spec = spec
        self.max_bytes = spec.options.get("max_bytes", self.MAX_DATAGRAM)
        self.oversized = 0

    def put(self, data: bytes) -> None:
        if len(data) + 1 > self.max_bytes:
            with self._cv:
                self.oversized += 1
                self.dropped += 1
            return
        super().put(data)

    def _connect(self) -> None:
        infos = socket.getaddrinfo(self.spec.host, self.spec.port, type=socket.SOCK_DGRAM)
        family, stype, proto, _, addr = infos[0]
        s = socket.socket(family, stype | socket.SOCK_CLOEXEC, proto)
        s.setblocking(False)
        s.connect(addr)  # lets the kernel report ICMP port-unreachable as ECONNREFUSED
        self._sock = s

    def _pump(self) -> None:
        batch = self._take(256, 1 << 20)
        if not batch:
            return
        assert self._sock is not None
        sent = dropped = 0
        for i, item in enumerate(batch):
            while True:
                try:
                    self._sock.send(item + b"\n")
                    sent += 1
                    break
                except BlockingIOError:
                    if self._expired():
                        self._settle(sent, batch[i:], dropped)
                        return
                    select.select([], [self._sock], [], WAIT_SLICE)
                except ConnectionRefusedError as e:
                    # An earlier datagram met a closed port: this one was not sent; keep the socket.
                    self._error(e)
                    dropped += 1
                    break
                except OSError as e:
                    if e.errno == errno.EMSGSIZE:  # over the path MTU limit of the kernel
                        self.oversized += 1
                        dropped += 1
                        break
                    self._settle(sent, batch[i:], dropped)
                    raise
        self._settle(sent, [], dropped)

    def stats(self) -> dict[str, Any]:
        st = super().stats()
        st["oversized"] = self.oversized
        return st


class ForwardSink(QueuedSink):
    """Fluent forward v1, Forward mode: `[tag, [[EventTime, record], ...], {"size": n, "chunk": id}]`.

    With `chunk=1` each message carries a unique chunk id and counts as sent only when the receiver
    answers `{"ack": id}`; without an ack before `ack_timeout`, or when the connection breaks, the
    sink reconnects and resends the same chunk (same id, so receivers can de-duplicate): at-least-once.
    One chunk is in flight at a time.
    """

    kind = "forward"
    encoding = "forward"

    def __init__(self, spec: OutputSpec, queue_size: int, tag: str, **kw: Any) -> None:
        super().__init__(spec.name, spec.options.get("queue", queue_size), **kw)
        self.spec = spec
        self.tag = spec.options.get("tag", tag)
        self.ack = spec.options.get("chunk", False)
        self.ack_timeout = spec.options.get("ack_timeout", 30.0)
        self.batch = spec.options.get("batch", 256)
        self.acked_chunks = 0
        self.resent_chunks = 0
        self._inflight: list[bytes] = []
        self._chunk_id = ""
        self._unpacker: msgpack.Unpacker | None = None

    def _connect(self) -> None:
        self._sock = self._tcp_connect(self.spec.host, self.spec.port)
        self._unpacker = msgpack.Unpacker(raw=False, ext_hook=unpack_event_time, max_buffer_size=1 << 20)

    def _pump(self) -> None:
        if not self._inflight:
            batch = self._take(self.batch, 1 << 20)
            if batch is None:
                return
            if not batch:
                check_peer(self._sock)
                return
            self._inflight = batch
            self._chunk_id = base64.b64encode(os.urandom(16)).decode("ascii")
        else:
            self.resent_chunks += 1
        option: dict[str, Any] = {"size": len(self._inflight)}
        if self.ack:
            option["chunk"] = self._chunk_id
        msg = forward_message(self.tag, self._inflight, option)
        try:
            send_all(self._sock, msg, self._expired)
        except TimeoutError:
            return  # closing: close() counts the in-flight chunk as dropped
        if self.ack:
            self._wait_ack()
        else:
            n, self._inflight = len(self._inflight), []
            self._settle(n)

    def _wait_ack(self) -> None:
        assert self._sock is not None and self._unpacker is not None
        end = time.monotonic() + self.ack_timeout
        while True:
            if self._expired():
                return
            now = time.monotonic()
            if now >= end:
                raise TimeoutError(f"no ack for chunk within {self.ack_timeout:g}s")
            r, _, _ = select.select([self._sock], [], [], min(WAIT_SLICE, end - now))
            if not r:
                continue
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionResetError(errno.ECONNRESET, "receiver closed the connection before acking")
            self._unpacker.feed(data)
            for reply in self._unpacker:
                if isinstance(reply, dict) and reply.get("ack") == self._chunk_id:
                    n, self._inflight = len(self._inflight), []
                    self.acked_chunks += 1
                    self._settle(n)
                    return
                # an ack for an older id (a resend already acked) or anything else: ignore

    def stats(self) -> dict[str, Any]:
        st = super().stats()
        st["acked_chunks"] = self.acked_chunks
        st["resent_chunks"] = self.resent_chunks
        return st


def make_sink(spec: OutputSpec, *, tag: str, queue_size: int) -> Sink:
    if spec.kind == "stdout":
        return StdoutSink(spec.name)
    if spec.kind == "file":
        assert spec.path is not None
        return FileSink(spec.name, spec.path)
    if spec.kind in ("tcp", "unix"):
        return StreamSink(spec, queue_size)
    if spec.kind == "udp":
        return UdpSink(spec, queue_size)
    if spec.kind == "forward":
        return ForwardSink(spec, queue_size, tag)
    raise ValueError(spec.kind)
