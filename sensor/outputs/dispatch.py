"""Dispatcher: one `emit(event)` fans an event out to every configured sink without blocking."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, ClassVar

from sensor.errors import EXIT_USAGE, SensorError
from sensor.outputs import validate
from sensor.outputs.file import FileSink
from sensor.outputs.forward import ForwardSink
from sensor.outputs.sink import DEFAULT_QUEUE, Sink
from sensor.outputs.spec import TAG_RE, OutputSpec, parse_specs
from sensor.outputs.stdout import StdoutSink
from sensor.outputs.stream import StreamSink
from sensor.outputs.udp import UdpSink
from sensor.outputs.wire import encode_forward_entry, encode_json

Event = dict[str, Any]
_HEALTH_KEYS = ("type", "queued", "sent", "dropped", "errors", "connected")


class Dispatcher:
    """Fans events out to sinks. Safe to call `emit` from one thread; `stats` from any thread."""

    # Called with every event before it is encoded. A test seam (tests/support/fixtures_schema.py validates
    # every event emitted in-process through it); production code leaves it empty.
    observers: ClassVar[list[Callable[[Event], None]]] = []

    def __init__(self, sinks: list[Sink], *, validate_schema: bool | None = None) -> None:
        self.sinks = sinks
        self.emitted = 0
        self.encode_errors = 0
        if validate_schema is None:
            validate_schema = os.environ.get(validate.ENV_VAR, "") not in ("", "0")
        self._validate = validate_schema
        if validate_schema:
            validate.validator()  # fail at start, not at the first event, if jsonschema is missing
        self._wants_json = any(s.encoding == "json" for s in sinks)
        self._wants_forward = any(s.encoding == "forward" for s in sinks)
        self._closed = False

    def emit(self, event: Event) -> None:
        """Encode once per wire format and hand the bytes to each sink. Never blocks on a receiver.

        An event that cannot be encoded (NaN, a non-JSON type) is counted in `encode_errors` and
        skipped. With ARP_SENSOR_VALIDATE_SCHEMA=1 an event that violates the schema raises
        SchemaViolation (a SensorError, exit 1): that is a bug and tests must see it.
        """
        for obs in self.observers:
            obs(event)
        if self._validate:
            validate.check(event)
        self.emitted += 1
        try:
            line = encode_json(event) if self._wants_json else b""
            entry = encode_forward_entry(event) if self._wants_forward else b""
        except (TypeError, ValueError, OverflowError):
            self.encode_errors += 1
            return
        for sink in self.sinks:
            sink.put(entry if sink.encoding == "forward" else line)

    def reopen(self) -> None:
        """Reopen file outputs (after logrotate moved them). Safe to call from a signal handler."""
        for sink in self.sinks:
            sink.reopen()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per output (keyed by its --output spec): type, queued, sent, dropped, errors, connected."""
        return {s.name: s.stats() for s in self.sinks}

    def health_counters(self) -> dict[str, Any]:
        """Output totals plus a per-output list, ready to merge into the `arp_sensor.health` counters."""
        st = self.stats()
        return {
            "output_queued": sum(s["queued"] for s in st.values()),
            "output_sent": sum(s["sent"] for s in st.values()),
            "output_dropped": sum(s["dropped"] for s in st.values()),
            "output_errors": sum(s["errors"] for s in st.values()) + self.encode_errors,
            "outputs": [{"name": name, **{k: s[k] for k in _HEALTH_KEYS}} for name, s in st.items()],
        }

    def close(self, timeout: float = 5.0) -> None:
        """Flush what can be delivered within `timeout` seconds in total; the rest counts as dropped."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + max(0.0, timeout)
        for sink in self.sinks:
            sink.close(deadline)

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_outputs(specs: list[str], *, tag: str = "arp_sensor", queue_size: int = DEFAULT_QUEUE,
                  validate_schema: bool | None = None) -> Dispatcher:
    """Parse `--output` values, open files, start one sender thread per network output.

    Raises SensorError (exit 2) for a bad spec or a file that cannot be opened. Network receivers
    that are down are not an error: those outputs queue and reconnect in the background.
    """
    if not TAG_RE.match(tag):
        raise SensorError(f"bad --tag {tag!r}: 1-128 characters of letters, digits, '.', '_' or '-'", EXIT_USAGE)
    parsed = parse_specs(list(specs) or ["-"])
    sinks: list[Sink] = []
    try:
        for spec in parsed:
            sink = make_sink(spec, tag=tag, queue_size=queue_size)
            if isinstance(sink, FileSink):
                try:
                    sink.open()
                except OSError as e:
                    why = e.strerror or str(e)
                    raise SensorError(f"cannot open --output {spec.name!r}: {why}", EXIT_USAGE) from None
            sinks.append(sink)
        d = Dispatcher(sinks, validate_schema=validate_schema)
    except BaseException:
        for s in sinks:
            s.close(time.monotonic())
        raise
    for s in sinks:
        s.start()
    return d


def make_sink(spec: OutputSpec, *, tag: str, queue_size: int) -> Sink:
    if spec.kind == "stdout":
        return StdoutSink(spec.name, spec.options.get("queue", queue_size))
    if spec.kind == "file":
        assert spec.path is not None
        return FileSink(spec.name, spec.path)
    if spec.kind in ("tcp", "unix"):
        return StreamSink(spec, queue_size)
    if spec.kind == "udp":
        return UdpSink(spec, queue_size)
    if spec.kind == "forward":
        return ForwardSink(spec, queue_size, tag)
    raise ValueError(spec.kind)
