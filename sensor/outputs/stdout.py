"""`-`: JSON lines on standard output, written by the sink's own thread from a bounded queue."""


from __future__ import annotations

import contextlib
import errno
import os
import sys

from sensor.outputs.sink import DEFAULT_QUEUE, QueuedSink


class StdoutSink(QueuedSink):
    """Lines on stdout, written by the sink's own thread: in a DaemonSet stdout is the only output, and a
    stalled log pipe (a container runtime that stops reading) must not stop the poll loop, verdicts or
    limit refreshes, nor make SIGTERM hang. Same bounded queue, drop-and-count as the network sinks.

    Writes go straight to fd 1 with os.write (no Python buffer, whose lock a thread blocked in a write
    would hold at interpreter exit); when sys.stdout is not a real file (a test harness swapped it), to
    its buffer, looked up on every batch so the harness captures."""

    kind = "stdout"
    BATCH_ITEMS = 256
    BATCH_BYTES = 256 << 10

    def __init__(self, name: str = "-", queue_size: int = DEFAULT_QUEUE) -> None:
        super().__init__(name, queue_size)
        self._broken = False

    def put(self, data: bytes) -> None:
        if self._broken:
            with self._cv:
                self.dropped += 1
            return
        super().put(data)

    def is_connected(self) -> bool:
        return not self._broken

    def _connect(self) -> None:
        if self._broken:
            raise BrokenPipeError(errno.EPIPE, "stdout is closed")

    def _pump(self) -> None:
        batch = self._take(self.BATCH_ITEMS, self.BATCH_BYTES)
        if not batch:
            return
        if self._broken:
            self._settle(0, dropped=len(batch))
            return
        buf = b"".join(item + b"\n" for item in batch)
        out = sys.stdout
        try:
            try:
                fd = out.fileno()
            except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: a swapped stdout
                fd = None
            if fd is None:
                target = getattr(out, "buffer", None)
                if target is not None:
                    target.write(buf)
                else:
                    out.write(buf.decode("utf-8"))
                out.flush()
            else:
                out.flush()  # anything printed through sys.stdout goes first
                mv = memoryview(buf)
                while mv:
                    mv = mv[os.write(fd, mv):]
            self._settle(len(batch))
        except BrokenPipeError as e:
            # Reader went away (`| head`): stop writing, and point fd 1 at /dev/null so the interpreter's
            # own flush at exit does not raise again (the approach the Python docs recommend).
            self._broken = True
            self._settle(0, dropped=len(batch))
            self._error(e)
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, out.fileno())
                os.close(devnull)
        except (OSError, ValueError) as e:
            self._settle(0, dropped=len(batch))
            self._error(e)
