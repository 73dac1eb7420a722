"""Schema fixture shared by every test: whatever the sensor emits must match sensor/events/schema/events.schema.json.

- `validate_event(ev)` / `parse_events(text)`: for tests that read sensor output (stdout, files, receivers).
- An autouse fixture hooks `Dispatcher.observers` so every event emitted in-process is validated, and
  sets ARP_SENSOR_VALIDATE_SCHEMA=1 so sensor subprocesses started by tests validate before emitting
  (an invalid event makes them exit 1 with one line on stderr).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from sensor.outputs import Dispatcher, validate


def validate_event(ev: Any) -> dict[str, Any]:
    """Fail the calling test with a one-line reason unless `ev` matches the schema; return it."""
    problem = validate.problem(ev)
    if problem:
        pytest.fail(f"{problem}\n  event: {json.dumps(ev)[:2000]}", pytrace=False)
    return ev


def parse_events(text: str | bytes) -> list[dict[str, Any]]:
    """JSON lines → validated events. Blank lines are skipped; a line that is not a JSON object fails."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    events = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError as e:
            pytest.fail(f"line {n} is not JSON ({e}): {line[:300]!r}", pytrace=False)
        if not isinstance(ev, dict):
            pytest.fail(f"line {n} is not a JSON object: {line[:300]!r}", pytrace=False)
        events.append(validate_event(ev))
    return events


@pytest.fixture(autouse=True)
def _validate_emitted_events(monkeypatch: pytest.MonkeyPatch):
    """Validate every event passing through Dispatcher.emit in this process; report all at teardown."""
    monkeypatch.setenv(validate.ENV_VAR, "1")
    bad: list[str] = []

    def observe(ev: dict[str, Any]) -> None:
        problem = validate.problem(ev)
        if problem:
            bad.append(problem)

    Dispatcher.observers.append(observe)
    try:
        yield
    finally:
        Dispatcher.observers.remove(observe)
    if bad:
        pytest.fail(f"{len(bad)} emitted event(s) violate the schema; first: {bad[0]}", pytrace=False)


@pytest.fixture
def schema_env() -> dict[str, str]:
    """Environment for sensor subprocesses: validation on (already inherited; explicit for clarity)."""
    return {**os.environ, validate.ENV_VAR: "1"}
