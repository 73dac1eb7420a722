"""A receiver process for bench/outputs.py, so its CPU is not charged to the sensor side.

    python -m bench._receiver tcp|udp|unix PATH|forward

Prints the port (or "ready") on one line, then reads and discards until killed. The forward receiver
decodes each message with msgpack and answers `{"ack": chunk}` when asked to.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading

import msgpack


def _drain(c: socket.socket) -> None:
    while c.recv(1 << 20):
        pass


def _forward(c: socket.socket) -> None:
    up = msgpack.Unpacker(raw=False, ext_hook=lambda code, data: data)
    while True:
        data = c.recv(1 << 20)
        if not data:
            return
        up.feed(data)
        for msg in up:
            opt = msg[2] if isinstance(msg, list) and len(msg) > 2 and isinstance(msg[2], dict) else {}
            if opt.get("chunk"):
                c.sendall(msgpack.packb({"ack": opt["chunk"]}))


def main() -> None:
    kind = sys.argv[1]
    if kind == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1], flush=True)
        while True:
            s.recv(70000)
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(sys.argv[2])
        print("ready", flush=True)
    else:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1], flush=True)
    s.listen(8)
    handler = _forward if kind == "forward" else _drain
    while True:
        c, _ = s.accept()
        threading.Thread(target=handler, args=(c,), daemon=True).start()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        main()
