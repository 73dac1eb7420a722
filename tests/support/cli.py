"""Running the CLI as a subprocess and checking its one-line errors (bad input never gives a traceback)."""

from __future__ import annotations

import subprocess

from tests.support.fixtures_netns import REPO, sensor_cmd, sensor_env


def run_cli(*args: str, env: dict | None = None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    e = sensor_env()
    e.update(env or {})
    return subprocess.run([*prefix, *sensor_cmd(*args)], capture_output=True, text=True, env=e, cwd=REPO,
                          timeout=120)


def assert_one_line_error(r: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr


