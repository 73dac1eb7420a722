"""Wire encodings: one JSON line per event, and Fluent forward entries (msgpack with EventTime).

Pure functions, no I/O: the Dispatcher encodes each event once per encoding and hands the bytes to
every sink, so a sink never sees (or keeps a reference to) a dict the caller may reuse.
"""

from __future__ import annotations

import json
import struct
import time
from datetime import datetime
from typing import Any

import msgpack

Event = dict[str, Any]

# Fluent forward protocol v1: EventTime is msgpack ext type 0 with big-endian uint32 seconds + nanoseconds.
EVENT_TIME_EXT = 0


def encode_json(ev: Event) -> bytes:
    """Compact one-line UTF-8 JSON without the trailing newline. NaN/Infinity are refused (not JSON)."""
    return json.dumps(ev, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def event_time(ev: Event) -> float:
    """The event's own `@timestamp` as epoch seconds, so the forward time equals the JSON one."""
    ts = ev.get("@timestamp")
    if isinstance(ts, str):
        try:
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time()


def pack_event_time(t: float) -> msgpack.ExtType:
    sec = int(t)
    nsec = min(round((t - sec) * 1e9), 999_999_999)
    return msgpack.ExtType(EVENT_TIME_EXT, struct.pack(">II", sec, nsec))


def unpack_event_time(code: int, data: bytes) -> Any:
    """`ext_hook` for msgpack.Unpacker: EventTime → float seconds; other ext types stay ExtType."""
    if code == EVENT_TIME_EXT and len(data) == 8:
        sec, nsec = struct.unpack(">II", data)
        return sec + nsec / 1e9
    return msgpack.ExtType(code, data)


def encode_forward_entry(ev: Event) -> bytes:
    """One Forward-mode entry, `[EventTime, record]`, already msgpack-encoded (concatenated into chunks)."""
    return msgpack.packb([pack_event_time(event_time(ev)), ev], use_bin_type=True)


def forward_message(tag: str, entries: list[bytes], option: dict[str, Any]) -> bytes:
    """Forward mode `[tag, [entry, ...], option]` built from pre-encoded entries without re-encoding them."""
    out = bytearray(b"\x93")  # fixarray of 3
    out += msgpack.packb(tag, use_bin_type=True)
    n = len(entries)
    if n < 16:
        out.append(0x90 | n)
    elif n < 0x10000:
        out += b"\xdc" + struct.pack(">H", n)
    else:
        out += b"\xdd" + struct.pack(">I", n)
    for e in entries:
        out += e
    out += msgpack.packb(option, use_bin_type=True)
    return bytes(out)
