"""Real receivers on 127.0.0.1 for the output tests: TCP lines, UDP datagrams, Fluent forward, syslog-ng."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from sensor.outputs.wire import unpack_event_time


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class _Server:
    """A listening TCP socket served by one thread per connection; stop() closes everything."""

    def __init__(self, port: int = 0, path: str | None = None) -> None:
        if path:  # a unix stream socket: reachable from a sensor in another network namespace
            self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.lsock.bind(path)
            self.port = 0
        else:
            self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.lsock.bind(("127.0.0.1", port))
            self.port = self.lsock.getsockname()[1]
        self.lsock.listen(16)
        self.conns: list[socket.socket] = []
        self.connections = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        self.lsock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                c, _ = self.lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self.conns.append(c)
            t = threading.Thread(target=self._serve_guarded, args=(c,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve_guarded(self, c: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.serve(c)
        with contextlib.suppress(OSError):
            c.close()

    def serve(self, c: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Like a crashed receiver: the listener and every connection close at once."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self.lsock.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()
        for t in self._threads:
            t.join(2)


class TcpLineReceiver(_Server):
    """Collects newline-delimited lines; a trailing partial line at connection end goes to `torn`."""

    def __init__(self, port: int = 0, path: str | None = None) -> None:
        self.lines: list[bytes] = []
        self.torn: list[bytes] = []
        super().__init__(port, path)

    def serve(self, c: socket.socket) -> None:
        buf = b""
        c.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data = c.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            buf += data
            *complete, buf = buf.split(b"\n")
            self.lines.extend(complete)
        if buf:
            self.torn.append(buf)


class SilentReceiver(_Server):
    """Accepts and never reads: the kernel buffers fill and the sender's writes would block."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__(0, path)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    def serve(self, c: socket.socket) -> None:
        self._stop.wait()


class UdpReceiver:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.datagrams: list[bytes] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data = self.sock.recv(70000)
            except TimeoutError:
                continue
            except OSError:
                return
            self.datagrams.append(data)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.sock.close()


class ForwardReceiver(_Server):
    """Fluent forward protocol v1 server: Message, Forward, PackedForward and CompressedPackedForward modes.

    Each received event is stored as (tag, time, record, chunk). With the `chunk` option it replies
    `{"ack": chunk}` unless `ack` is False (a receiver that crashes before acking).
    """

    def __init__(self, port: int = 0, ack: bool = True, ack_limit: int | None = None,
                 garbage: list[bytes] | None = None) -> None:
        self.events: list[tuple[str, float, dict[str, Any], str | None]] = []
        self.messages: list[tuple[str, int, str | None]] = []  # (mode, events, chunk)
        self.acked: list[str] = []
        self.ack = ack
        self.ack_limit = ack_limit  # ack this many chunks, then go silent (a receiver about to crash)
        self.garbage = list(garbage or [])  # raw replies sent instead of the first acks (a broken receiver)
        self.lock = threading.Lock()
        super().__init__(port)

    @staticmethod
    def _entries(blob: bytes) -> list[Any]:
        up = msgpack.Unpacker(raw=False, ext_hook=unpack_event_time)
        up.feed(blob)
        return list(up)

    def handle(self, msg: Any) -> dict[str, Any] | None:
        if msg is None:  # heartbeat
            return None
        assert isinstance(msg, list) and len(msg) >= 2, f"not a forward message: {msg!r}"
        tag, second = msg[0], msg[1]
        option: dict[str, Any] = {}
        if isinstance(second, list):  # Forward mode: [tag, [[time, record], ...], option?]
            mode, entries = "forward", second
            if len(msg) > 2:
                option = msg[2] or {}
        elif isinstance(second, bytes | str):  # PackedForward: [tag, bin(entries), option?]
            option = (msg[2] or {}) if len(msg) > 2 else {}
            blob = second.encode("latin-1") if isinstance(second, str) else second
            if option.get("compressed") == "gzip":
                mode, blob = "compressed", gzip.GzipFile(fileobj=io.BytesIO(blob)).read()
            else:
                mode = "packed"
            entries = self._entries(blob)
        else:  # Message mode: [tag, time, record, option?]
            mode, entries = "message", [[second, msg[2]]]
            if len(msg) > 3:
                option = msg[3] or {}
        for t, record in entries:
            assert isinstance(t, float | int), f"event time is {type(t)}"
            assert isinstance(record, dict), f"record is {type(record)}"
        chunk = option.get("chunk")
        if "size" in option:
            assert option["size"] == len(entries), f"size option {option['size']} != {len(entries)} entries"
        with self.lock:
            self.messages.append((mode, len(entries), chunk))
            self.events.extend((tag, float(t), rec, chunk) for t, rec in entries)
        if chunk and self.ack and (self.ack_limit is None or len(self.acked) < self.ack_limit):
            self.acked.append(chunk)
            return {"ack": chunk}
        return None

    def serve(self, c: socket.socket) -> None:
        up = msgpack.Unpacker(raw=False, ext_hook=unpack_event_time)
        c.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data = c.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            up.feed(data)
            for msg in up:
                reply = self.handle(msg)
                if reply is not None and self.garbage:
                    with self.lock:
                        self.acked.remove(reply["ack"])
                    c.sendall(self.garbage.pop(0))
                elif reply is not None:
                    c.sendall(msgpack.packb(reply))

    def records(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e[2] for e in self.events]


class SyslogNg:
    """A real syslog-ng (`syslog-ng -F`) with a TCP source (no-parse + json-parser) writing a file.

    Each output line is `<parsed view>\\t<raw message>`: the parsed view is syslog-ng's own
    re-serialisation of the fields its json-parser extracted (values become strings in 3.x).
    """

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("syslog-ng") or "/usr/sbin/syslog-ng"
        self.dir = workdir
        self.port = free_port()
        self.out = workdir / "received.log"
        conf = workdir / "syslog-ng.conf"
        conf.write_text(f"""@version: 3.38
options {{ stats-freq(0); create-dirs(no); }};
source s_sensor {{
  network(ip("127.0.0.1") port({self.port}) transport("tcp") flags(no-parse) log-msg-size(1048576));
}};
parser p_json {{ json-parser(prefix(".json.")); }};
destination d_file {{
  file("{self.out}" template("$(format-json --key .json.* --shift 6)\\t${{MESSAGE}}\\n"));
}};
log {{ source(s_sensor); parser(p_json); destination(d_file); }};
""")
        self.log = open(workdir / "syslog-ng.stderr", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [self.binary, "-F", "-f", str(conf), "--pidfile", str(workdir / "pid"),
             "--control", str(workdir / "ctl"), "--persist-file", str(workdir / "persist")],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(self._listening, 10, f"syslog-ng listening on {self.port}")
        except AssertionError:
            self.stop()
            err = (workdir / "syslog-ng.stderr").read_text()
            raise AssertionError(f"syslog-ng did not start: {err}") from None

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"syslog-ng exited {self.proc.returncode}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def received(self) -> list[tuple[dict[str, Any], str]]:
        if not self.out.exists():
            return []
        rows = []
        for line in self.out.read_text("utf-8").splitlines():
            parsed, _, raw = line.partition("\t")
            rows.append((json.loads(parsed), raw))
        return rows

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def sample_events(n: int, start: int = 0) -> list[dict[str, Any]]:
    """n schema-valid events built by sensor.events.encode; event i has arp.requests == i (its identity)."""
    from sensor.events.encode import health_event, target_event, warning_event
    from sensor.model import TargetWindow, WindowKey

    out: list[dict[str, Any]] = []
    for i in range(start, start + n):
        if i % 50 == 49:
            out.append(health_event({"frames": i, "arp_request": i, "seq": i}, 1.8e9 + i, "node-a"))
            continue
        if i % 50 == 48:
            w = warning_event("peer-source-unavailable", f"BIRD socket gone ({i}): «retrying»", 1.8e9 + i, "node-a")
            w["error"] = {"message": "No such file or directory"}
            out.append(w)
            continue
        key = WindowKey(2 + i % 3, "ingress" if i % 2 else "egress", 100 if i % 5 == 0 else 0,
                        f"198.18.{(i >> 8) & 0xff}.{i & 0xff}")
        w = TargetWindow(key, f"veth{i % 3}", 1.0, requests=i, replies=i % 7, gratuitous=i % 3, probes=i % 2,
                         senders=2, top_senders=[("198.19.0.1", i // 2), ("198.19.0.2", i - i // 2)])
        peer = {"name": f"Mesh_198_18_0_{i % 256}", "state": "start",
                "last_error": 'Socket: Connection refused "é"'} if i % 4 == 0 else None
        out.append(target_event(w, 1.8e9 + i / 1000, "node-a", peer=peer))
    return out


def identity(ev: dict[str, Any]) -> tuple[str, int]:
    """What makes a sample event unique: its dataset and its index."""
    ds = ev["event"]["dataset"]
    if ev["event"]["kind"] == "event":
        return ds, int(ev["message"].split("(")[1].split(")")[0])
    if ds == "arp_sensor.health":
        return ds, ev["arp_sensor"]["health"]["seq"]
    return ds, ev["arp"]["requests"]
