"""A sensor (or any JSON-lines producer) running in a lab node, its events collected as they arrive:
what lab tests, the demo-style benchmarks and scripts need to watch `arp-sensor run` live."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
from pathlib import Path


class LiveSensor:
    def __init__(self, argv: list[str], cwd: str | Path | None = None, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                                     env=env, start_new_session=True)
        self.events: list[dict] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):  # a line cut by the stop is not an event
                self.events.append(json.loads(line))

    def of(self, dataset: str, action: str | None = None) -> list[dict]:
        """Events of one dataset (and `event.action`) so far."""
        return [e for e in list(self.events) if e["event"]["dataset"] == dataset
                and (action is None or e["event"].get("action") == action)]

    def stop(self, timeout: float = 15) -> str:
        """SIGTERM, SIGKILL after `timeout`; returns what the sensor wrote on stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._t.join(5)
        return self.proc.stderr.read() if self.proc.stderr else ""
