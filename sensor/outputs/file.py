"""`file:PATH`: JSON lines appended to a file, each written whole; reopened on SIGHUP (logrotate)."""


from __future__ import annotations

import contextlib
import os
import threading

from sensor.outputs.sink import (
    Sink,
)


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
