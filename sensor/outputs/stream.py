"""`tcp://HOST:PORT` and `unix:PATH`: newline-delimited JSON over a stream socket."""


from __future__ import annotations

import socket
from typing import Any

from sensor.outputs.sink import (
    CONNECT_TIMEOUT,
    QueuedSink,
    check_peer,
    send_all,
)
from sensor.outputs.spec import OutputSpec


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
