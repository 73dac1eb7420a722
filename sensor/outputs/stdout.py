"""`-`: JSON lines on standard output."""


from __future__ import annotations

import contextlib
import os
import sys

from sensor.outputs.sink import (
    Sink,
)


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
