"""BIRD 2 control-socket client in pure Python (no `birdc` binary).

The protocol (BIRD's doc/prog "Remote control", and what a real BIRD 2.0.12 sends; see tests/data/bird/):
  - on connect BIRD sends a welcome line `0001 BIRD 2.0.12 ready.`
  - every reply line is a 4-digit code, then `-` (more lines follow) or ` ` (last line of the reply),
    then the text; a line that starts with a single space continues the previous line's code (`-` implied);
  - codes: 0xxx action OK (0000 end of a successful listing), 1xxx table rows (1002 protocol row,
    1006 protocol details), 2xxx table headers (2002), 8xxx runtime errors (8003 No protocols match),
    9xxx parse errors (9001 syntax error).
The client keeps one connection open across polls, bounds every exchange by a deadline and drops the
connection on anything unexpected (timeout, EOF mid-reply, a line that is not the protocol), so the next
poll starts clean.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from dataclasses import dataclass, field

from sensor.model import ESTABLISHED

# A reply of 250 peers is ~110 KB; 64 MiB means something is badly wrong (or not BIRD at all).
MAX_REPLY_BYTES = 64 * 1024 * 1024
MAX_LINE_BYTES = 1024 * 1024

_TIME = re.compile(r"^\d{1,2}:\d{2}:\d{2}(\.\d+)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Calico's names for BGP peers: Mesh_10_0_0_7, Node_10_0_0_7, Global_10_0_0_7 (maybe a _port_N suffix);
# IPv6 peers with every ':' as '_': Mesh_2001_db8__7, Mesh_fd00_10_244__1_port_1790.
_CALICO_NAME = re.compile(r"^(?:Mesh|Node|Global)_(\d{1,3})_(\d{1,3})_(\d{1,3})_(\d{1,3})(?:_|$)")
_CALICO_NAME6 = re.compile(r"^(?:Mesh|Node|Global)_([0-9A-Fa-f_]+?)(?:_port_\d+)?$")


class BirdError(Exception):
    """The BIRD socket could not be used this time (missing, refused, timeout, closed, not BIRD)."""


class BirdProtocolError(BirdError):
    """Bytes that do not follow the control-socket protocol: garbage, or a truncated reply."""


class BirdCommandError(BirdError):
    """BIRD answered with an 8xxx (runtime) or 9xxx (parse) error."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"BIRD error {code:04d}: {text}")
        self.code = code
        self.text = text


@dataclass(slots=True)
class ReplyLine:
    code: int
    text: str
    final: bool = False  # code followed by a space: the reply ends here


@dataclass(slots=True)
class BirdProtocol:
    """One row of `show protocols [all]`, with the details of `all` when present."""

    name: str
    proto: str
    table: str
    state: str  # protocol state: up / start / stop / down / flush
    since: str
    info: str
    details: dict[str, str] = field(default_factory=dict)  # top-level `Key: value` lines of the 1006 block

    @property
    def is_bgp(self) -> bool:
        return self.proto.upper() == "BGP"

    @property
    def established(self) -> bool:
        return self.bgp_state == ESTABLISHED

    @property
    def bgp_state(self) -> str | None:
        if not self.is_bgp:
            return None
        if "BGP state" in self.details:
            return self.details["BGP state"].split()[0] if self.details["BGP state"] else None
        return self.info.split()[0] if self.info.split() else None

    @property
    def last_error(self) -> str | None:
        if "Last error" in self.details:
            return self.details["Last error"] or None
        # `show protocols` without `all`: Info is "<BGP state> <last error>" (columns padded with spaces)
        parts = self.info.split(None, 1)
        return parts[1].strip() if self.is_bgp and len(parts) == 2 else None

    @property
    def neighbor_ip(self) -> str | None:
        """The neighbor address: from `Neighbor address:` (an IP, maybe `%iface`), else Calico's name.
        IPv6 in RFC 5952 text, the form targets and events use."""
        addr = self.details.get("Neighbor address", "").split("%")[0].strip()
        if addr:
            try:
                return str(ipaddress.ip_address(addr))
            except ValueError:
                return None  # e.g. a dynamic `range` neighbor: no single IP
        m = _CALICO_NAME.match(self.name)
        if m and all(0 <= int(o) <= 255 for o in m.groups()):
            return ".".join(str(int(o)) for o in m.groups())
        m6 = _CALICO_NAME6.match(self.name)
        if m6 and ("__" in m6.group(1) or m6.group(1).count("_") == 7):  # "::" compressed, or all 8 groups
            try:
                return str(ipaddress.IPv6Address(m6.group(1).replace("_", ":")))  # RFC 5952 text
            except ValueError:
                return None
        return None


def parse_line(raw: bytes, prev_code: int | None) -> ReplyLine:
    """One line (without the newline) of a reply; `prev_code` is the code a ` ` continuation inherits."""
    if raw[:1] == b" ":
        if prev_code is None:
            raise BirdProtocolError("continuation line before any reply code")
        return ReplyLine(prev_code, raw[1:].decode("utf-8", "replace"))
    sep = raw[4:5]
    if (sep == b"-" or sep == b" ") and raw[:4].isdigit():  # bytes.isdigit: ASCII digits only
        return ReplyLine(int(raw[:4]), raw[5:].decode("utf-8", "replace"), sep == b" ")
    shown = raw[:40].decode("ascii", "backslashreplace")
    raise BirdProtocolError(f"not a BIRD reply line: {shown!r}")


class ReplyReader:
    """Incremental reply parser: feed bytes, get the lines of one reply; `done` after its final line."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._prev: int | None = None
        self.lines: list[ReplyLine] = []
        self.done = False
        self.size = 0

    def feed(self, data: bytes) -> None:
        if self.done:
            if data:
                raise BirdProtocolError("bytes after the end of a reply")
            return
        self.size += len(data)
        if self.size > MAX_REPLY_BYTES:
            raise BirdProtocolError(f"reply larger than {MAX_REPLY_BYTES} bytes")
        self._buf += data
        if b"\n" in data:
            *complete, rest = self._buf.split(b"\n")
            self._buf = bytearray(rest)
            prev, out = self._prev, self.lines
            for i, raw in enumerate(complete):
                line = parse_line(raw, prev)
                prev = line.code
                out.append(line)
                if line.final:
                    self.done = True
                    if i != len(complete) - 1 or rest:
                        raise BirdProtocolError("bytes after the end of a reply")
                    break
            self._prev = prev
        if len(self._buf) > MAX_LINE_BYTES:
            raise BirdProtocolError(f"reply line longer than {MAX_LINE_BYTES} bytes")


def parse_reply(data: bytes) -> list[ReplyLine]:
    """A complete reply (bytes from the socket) → its lines; truncated or garbage → BirdProtocolError."""
    r = ReplyReader()
    r.feed(data)
    if not r.done:
        raise BirdProtocolError(f"truncated reply ({len(data)} bytes, no final line)")
    return r.lines


def check_error(lines: list[ReplyLine]) -> None:
    """Raise BirdCommandError when the reply is an 8xxx/9xxx error."""
    for ln in lines:
        if ln.code >= 8000:
            raise BirdCommandError(ln.code, ln.text.strip())


def parse_protocols(lines: list[ReplyLine]) -> list[BirdProtocol]:
    """`show protocols [all]` reply lines → protocols. 8003 "No protocols match" is an empty list."""
    if lines and lines[-1].code == 8003:
        return []
    check_error(lines)
    protos: list[BirdProtocol] = []
    cur: BirdProtocol | None = None
    in_channel = False
    for ln in lines:
        if ln.code == 1002:
            cur = _parse_row(ln.text)
            in_channel = False
            if cur is not None:
                protos.append(cur)
        elif ln.code == 1006 and cur is not None:
            text = ln.text.strip()
            if not text:
                continue
            # Keys after "Channel ipv4" (State, Table, ...) belong to the channel, not the protocol.
            if text.startswith("Channel "):
                in_channel = True
                continue
            if in_channel or ":" not in text:
                continue
            key, _, value = text.partition(":")
            cur.details.setdefault(key.strip(), value.strip())
    return protos


def _parse_row(text: str) -> BirdProtocol | None:
    # "%-10s %-10s %-10s %-6s %-12s  %s": name proto table state since info. Names longer than the column
    # push the rest right, and `since` is one token ("22:59:36.654", "2026-11-27") or two ("iso long").
    tok = text.split()
    if len(tok) < 5:
        return None
    name, proto, table, state = tok[:4]
    rest = tok[4:]
    since = rest[0]
    n = 1
    if _DATE.match(rest[0]) and len(rest) > 1 and _TIME.match(rest[1]):
        since = f"{rest[0]} {rest[1]}"
        n = 2
    info = " ".join(rest[n:])
    return BirdProtocol(name=name, proto=proto, table=table, state=state, since=since, info=info)


class BirdClient:
    """One BIRD control socket. `show_protocols()` connects on demand, reuses the connection, and closes
    it on any error so that a restarted BIRD is picked up by the next call."""

    def __init__(self, path: str, timeout: float = 0.3) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self.version: str | None = None

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def _connect(self, deadline: float) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(max(deadline - time.monotonic(), 0.001))
            s.connect(self.path)
        except FileNotFoundError:
            s.close()
            raise BirdError(f"{self.path}: no such socket (is BIRD running?)") from None
        except OSError as e:
            s.close()
            raise BirdError(f"{self.path}: connect: {e.strerror or e}") from None
        self._sock = s
        welcome = self._read_reply(deadline)
        if welcome[-1].code != 1:
            self.close()
            last = welcome[-1]
            raise BirdProtocolError(f"{self.path}: unexpected welcome {last.code:04d} {last.text!r}")
        self.version = welcome[-1].text.strip()
        # Read-only from here on: BIRD refuses configure/disable/... on a restricted connection. A BIRD
        # without `restrict` answers 9001; we carry on, this client only ever sends `show` commands.
        self._exchange("restrict", deadline)

    def _read_reply(self, deadline: float) -> list[ReplyLine]:
        assert self._sock is not None
        reader = ReplyReader()
        try:
            while not reader.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BirdError(f"{self.path}: timed out after {self.timeout:g} s waiting for BIRD")
                self._sock.settimeout(left)
                chunk = self._sock.recv(262144)
                if not chunk:
                    what = "mid-reply" if reader.size else "before replying"
                    raise BirdError(f"{self.path}: BIRD closed the connection {what}")
                reader.feed(chunk)
        except TimeoutError:
            self.close()
            raise BirdError(f"{self.path}: timed out after {self.timeout:g} s waiting for BIRD") from None
        except OSError as e:
            self.close()
            raise BirdError(f"{self.path}: {e.strerror or e}") from None
        except BirdError as e:
            self.close()
            if isinstance(e, BirdProtocolError) and not str(e).startswith(self.path):
                raise BirdProtocolError(f"{self.path}: {e}") from None
            raise
        return reader.lines

    def _exchange(self, command: str, deadline: float) -> list[ReplyLine]:
        assert self._sock is not None
        try:
            self._sock.settimeout(max(deadline - time.monotonic(), 0.001))
            self._sock.sendall(command.encode() + b"\n")
        except OSError as e:
            self.close()
            raise BirdError(f"{self.path}: send: {e.strerror or e}") from None
        return self._read_reply(deadline)

    def command(self, command: str, deadline: float | None = None) -> list[ReplyLine]:
        """Send one command, return its reply lines (errors are returned, not raised)."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        reused = self._sock is not None
        if self._sock is None:
            self._connect(deadline)
        try:
            return self._exchange(command, deadline)
        except BirdError:
            # A kept connection may have died with a restarted BIRD: one fresh try if time is left.
            if not reused or time.monotonic() >= deadline:
                raise
        self._connect(deadline)
        return self._exchange(command, deadline)

    def show_protocols(self, deadline: float | None = None) -> list[BirdProtocol]:
        return parse_protocols(self.command("show protocols all", deadline))
