"""systemd's readiness protocol without a systemd dependency: one datagram to $NOTIFY_SOCKET.

`Type=notify` units wait for READY=1 before they count as started, so the sensor sends it only once
every program is compiled and attached (the moment `--ready-file` is written). The socket address is
a filesystem path or, with a leading "@", a name in the abstract namespace (systemd uses both).
"""

from __future__ import annotations

import os
import socket


def notify(state: str, env: dict[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1\\nSTATUS=...") to the service manager. Returns False when not run
    under one (no NOTIFY_SOCKET) or when the datagram cannot be sent; never raises: readiness reporting
    must not be what kills the sensor."""
    addr = (env if env is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr.startswith("@"):
        target = "\0" + addr[1:]  # abstract namespace
    elif addr.startswith("/"):
        target = addr
    else:
        return False  # vsock:… and other transports are not used for services on a host
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(target)
            s.sendall(state.encode())
        return True
    except OSError:
        return False


def ready(status: str = "") -> bool:
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping() -> bool:
    return notify("STOPPING=1")

