"""Parse `--output` values into OutputSpec; every mistake is one SensorError line (exit 2)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sensor.errors import EXIT_USAGE, SensorError

FORMS = ("-, file:PATH, unix:PATH, tcp://HOST:PORT, udp://HOST:PORT, forward://HOST:PORT[?tag=T&chunk=1]; "
         "options after ?, e.g. ?queue=N (unix: as unix:///PATH?queue=N)")

# Options each kind accepts in its query string, with a converter that raises ValueError on bad input.
TAG_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


def _pos_int(v: str) -> int:
    n = int(v)
    if n <= 0:
        raise ValueError("must be a positive integer")
    return n


def _pos_float(v: str) -> float:
    f = float(v)
    if not f > 0 or f != f or f == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return f


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1 or 0")


def _tag(v: str) -> str:
    if not TAG_RE.match(v):
        raise ValueError("must be 1-128 characters of letters, digits, '.', '_' or '-'")
    return v


def _datagram(v: str) -> int:
    n = int(v)
    if not 64 <= n <= 65507:
        raise ValueError("must be between 64 and 65507 bytes")
    return n


_OPTIONS: dict[str, dict[str, Any]] = {
    "tcp": {"queue": _pos_int},
    "unix": {"queue": _pos_int},
    "udp": {"queue": _pos_int, "max_bytes": _datagram},
    "forward": {"queue": _pos_int, "tag": _tag, "chunk": _bool, "ack_timeout": _pos_float, "batch": _pos_int},
}


@dataclass(frozen=True)
class OutputSpec:
    """One parsed `--output`: `name` is the user's spec (the label in stats, health events and metrics)."""

    kind: str  # stdout | file | unix | tcp | udp | forward
    name: str
    path: str | None = None
    host: str | None = None
    port: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


def _bad(spec: str, why: str) -> SensorError:
    return SensorError(f"bad --output {spec!r}: {why} (forms: {FORMS})", EXIT_USAGE)


def parse_spec(spec: str) -> OutputSpec:
    s = spec.strip()
    if s == "-":
        return OutputSpec("stdout", "-")
    for kind in ("file", "unix"):
        if s.startswith(kind + ":") and not s.startswith(kind + "://"):
            path = s[len(kind) + 1:]
            if not path:
                raise _bad(spec, f"{kind}: needs a path")
            if "\0" in path:
                raise _bad(spec, "path contains a NUL byte")
            return OutputSpec(kind, s, path=path)
    if "://" not in s:
        raise _bad(spec, "unknown output")
    try:
        u = urlsplit(s)
        port = u.port
    except ValueError as e:  # bad port or bracket syntax
        raise _bad(spec, str(e)) from None
    kind = u.scheme.lower()
    if kind not in _OPTIONS:
        raise _bad(spec, f"unknown scheme {u.scheme!r}")
    if kind == "unix":  # unix:///abs/path?queue=N: the URL form, for options (unix:PATH is taken literally)
        if u.netloc or not u.path.startswith("/") or len(u.path) < 2:
            raise _bad(spec, "the URL form is unix:///ABSOLUTE/PATH[?queue=N]")
        return OutputSpec("unix", s, path=u.path, options=_options(spec, kind, u.query))
    if not u.hostname:
        raise _bad(spec, "needs HOST:PORT")
    if port is None or port == 0:
        raise _bad(spec, "needs a port between 1 and 65535")
    if u.path not in ("", "/") or u.fragment or u.username or u.password:
        raise _bad(spec, "only HOST:PORT and ?options are allowed")
    return OutputSpec(kind, s, host=u.hostname, port=port, options=_options(spec, kind, u.query))


def _options(spec: str, kind: str, query: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise _bad(spec, f"cannot parse options {query!r}") from None
    allowed = _OPTIONS[kind]
    for key, value in pairs:
        if key not in allowed:
            raise _bad(spec, f"unknown option {key!r} for {kind} (allowed: {', '.join(sorted(allowed))})")
        try:
            options[key] = allowed[key](value)
        except ValueError as e:
            raise _bad(spec, f"option {key}={value!r} {e}") from None
    return options


def parse_specs(specs: list[str]) -> list[OutputSpec]:
    out: list[OutputSpec] = []
    seen: set[str] = set()
    for spec in specs:
        o = parse_spec(spec)
        if o.name in seen:
            raise _bad(spec, "given twice")
        seen.add(o.name)
        out.append(o)
    return out
