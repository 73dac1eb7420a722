"""`forward://HOST:PORT`: Fluent forward protocol (msgpack), optionally with acks (`chunk=1`)."""


from __future__ import annotations

import base64
import errno
import os
import select
import time
from typing import Any

import msgpack

from sensor.outputs.sink import (
    WAIT_SLICE,
    QueuedSink,
    check_peer,
    send_all,
)
from sensor.outputs.spec import OutputSpec
from sensor.outputs.wire import forward_message, unpack_event_time


class AckError(ConnectionError):
    """The receiver answered something that is not an ack: the connection is closed and the chunk resent
    on a new one, like any broken connection."""


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
            try:
                self._unpacker.feed(data)
                replies = list(self._unpacker)
            except (msgpack.UnpackException, ValueError, TypeError) as e:  # incl. BufferFull, StackError
                raise AckError(f"undecodable ack from the receiver: {type(e).__name__}: {e}") from None
            for reply in replies:
                ack = reply.get("ack") if isinstance(reply, dict) else None
                if not isinstance(ack, str):
                    raise AckError(f"not an ack from the receiver: {str(reply)[:80]}")
                if ack == self._chunk_id:
                    n, self._inflight = len(self._inflight), []
                    self.acked_chunks += 1
                    self._settle(n)
                    return
                # an ack for an older id (a resend already acked): ignore

    def stats(self) -> dict[str, Any]:
        st = super().stats()
        st["acked_chunks"] = self.acked_chunks
        st["resent_chunks"] = self.resent_chunks
        return st
