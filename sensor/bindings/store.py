"""The bindings state file (arpwatch's arp.dat): JSON, written atomically, read at start.

Written to a temporary file in the same directory, fsync'ed, renamed over the old one and the directory
fsync'ed: a crash or power cut leaves the old file or the new one, never half of one. Keyed by interface
NAME (ifindexes change across reboots). A file that cannot be read is moved aside (`.bad`) with one
warning, never a traceback: the sensor starts with no bindings and a learning period.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any

from sensor.bindings.engine import Binding, BindingKey
from sensor.errors import SensorError

VERSION = 1


def dump(bindings: dict[BindingKey, Binding]) -> dict[str, Any]:
    rows = []
    for (ifname, vlan, ip), b in sorted(bindings.items()):
        row: dict[str, Any] = {"interface": ifname, "vlan": vlan, "ip": ip, "mac": b.mac,
                               "first_seen": round(b.first_seen, 3), "last_seen": round(b.last_seen, 3)}
        if b.prev_mac:
            row["prev_mac"] = b.prev_mac
        if b.changed is not None:
            row["changed"] = round(b.changed, 3)
        rows.append(row)
    return {"version": VERSION, "bindings": rows}


def parse(doc: Any) -> dict[BindingKey, Binding]:
    """Raises ValueError with what is wrong."""
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("bindings"), list):
        raise ValueError(f"not a version {VERSION} bindings file")
    out: dict[BindingKey, Binding] = {}
    for i, row in enumerate(doc["bindings"]):
        try:
            key = (str(row["interface"]), int(row["vlan"]), str(row["ip"]))
            out[key] = Binding(str(row["mac"]), float(row["first_seen"]), float(row["last_seen"]),
                               prev_mac=str(row["prev_mac"]) if row.get("prev_mac") else None,
                               changed=float(row["changed"]) if row.get("changed") is not None else None)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"binding #{i + 1}: {type(e).__name__}: {e}") from None
    return out


def load(path: str) -> tuple[dict[BindingKey, Binding], str | None]:
    """(bindings, problem): no file is no bindings and no problem; an unreadable one is moved to PATH.bad."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse(json.load(f)), None
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        problem = f"bindings state file {path} unreadable ({e}); starting with no bindings"
        try:
            os.replace(path, path + ".bad")
            problem += f", the file is kept as {path}.bad"
        except OSError:
            pass
        return {}, problem


def save(path: str, bindings: dict[BindingKey, Binding]) -> None:
    """Atomic replace; raises SensorError (one line) when the directory is not writable."""
    directory = os.path.dirname(os.path.abspath(path))
    data = json.dumps(dump(bindings), separators=(",", ":")).encode()
    try:
        fd, tmp = tempfile.mkstemp(prefix=".bindings.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        raise SensorError(f"cannot write the bindings state file {path}: {e.strerror or e}") from None
