"""A unix-socket server that misbehaves like a sick BIRD, for PeerBook fault tests (real sockets, threads)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path

WELCOME = b"0001 BIRD 2.0.12 ready.\n"
DATA = Path(__file__).resolve().parents[1] / "data" / "bird"


class FakeBird:
    """Serve `reply` to `show protocols all`. `mode`:
      ok          the whole reply, connection kept
      garbage     binary junk instead of the reply
      hang        accept and never send a byte (no welcome)
      hang-mid    the welcome and half of the reply, then silence
      close-mid   the welcome and half of the reply, then close
    `mode` and `reply` can be changed while it runs; `connections` counts accepted clients.
    """

    def __init__(self, path: str, reply: bytes | None = None, mode: str = "ok") -> None:
        self.path = path
        self.reply = reply if reply is not None else (DATA / "show_protocols_all.reply").read_bytes()
        self.mode = mode
        self.connections = 0
        self._stop = threading.Event()
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(path):
            os.unlink(path)
        self._srv.bind(path)
        self._srv.listen(8)
        self._srv.settimeout(0.05)
        self._clients: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self._srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._clients.append(c)
            threading.Thread(target=self._client, args=(c,), daemon=True).start()

    def _client(self, c: socket.socket) -> None:
        try:
            if self.mode == "hang":
                self._stop.wait()
                return
            c.sendall(WELCOME)
            buf = b""
            c.settimeout(0.05)
            while not self._stop.is_set():
                try:
                    chunk = c.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    cmd, buf = buf.split(b"\n", 1)
                    if cmd == b"restrict":
                        c.sendall(b"0016 Access restricted\n")
                    elif not self.answer(c, cmd):
                        return
        except OSError:
            pass
        finally:
            c.close()

    def answer(self, c: socket.socket, cmd: bytes) -> bool:
        """Answer one command (after `restrict`); False ends the connection."""
        if self.mode == "garbage":
            c.sendall(b"\x00\xff\xfeGET / HTTP/1.1\r\n\x13\x37" * 20)
        elif self.mode in ("hang-mid", "close-mid"):
            c.sendall(self.reply[: len(self.reply) // 2])
            if self.mode == "hang-mid":
                self._stop.wait()
            return False
        else:
            c.sendall(self.reply)
        return True

    def close(self) -> None:
        """Stop like a dying BIRD: the socket file goes away and open connections are closed."""
        self._stop.set()
        self._srv.close()
        for c in self._clients:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self._thread.join(2)
        if os.path.exists(self.path):
            os.unlink(self.path)
