"""`udp://HOST:PORT`: one JSON event per datagram."""


from __future__ import annotations

import errno
import select
import socket
from typing import Any

from sensor.outputs.sink import (
    WAIT_SLICE,
    QueuedSink,
)
from sensor.outputs.spec import OutputSpec


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
