"""Lab fixtures: netns BGP full meshes with real BIRD, torn down by finalizers even when a test fails.

    def test_x(lab_factory):
        lab = lab_factory(6)                 # built, every session Established
        lab.kill("n2")

`lab_factory` is function-scoped; `module_lab_factory` shares labs across a module (build once, use often).
Names are unique per run ("t" + random hex) so parallel runs and other engineers' labs never collide.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sensor.lab.lab import STATE_ROOT

ROOT = Path(__file__).resolve().parents[2]

LabFactory = Callable[..., "object"]


def lab_unavailable() -> str | None:
    """Why a lab cannot be built here, or None."""
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces)"
    for tool in ("bird", "birdc", "ip", "tcpdump"):
        if shutil.which(tool) is None:
            return f"lab tests need `{tool}` (scripts/install-system.sh installs it)"
    return None


def unique_lab_name() -> str:
    return "t" + secrets.token_hex(3)[:5]


def _factory(request: pytest.FixtureRequest) -> Iterator[LabFactory]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    from sensor.lab.lab import Lab

    built: list[str] = []

    def make(nodes: int = 3, *, wait: float | None = 60, **kwargs: object) -> Lab:
        name = str(kwargs.pop("name", None) or unique_lab_name())
        built.append(name)  # before up(): a half-built lab is torn down too
        lab = Lab(name, nodes, **kwargs)  # type: ignore[arg-type]
        lab.up()
        if wait is not None:
            lab.wait_established(wait)
        return lab

    yield make
    for name in built:
        Lab.destroy(name)


@pytest.fixture
def lab_factory(request: pytest.FixtureRequest) -> Iterator[LabFactory]:
    yield from _factory(request)


@pytest.fixture(scope="module")
def module_lab_factory(request: pytest.FixtureRequest) -> Iterator[LabFactory]:
    yield from _factory(request)


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sensor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def leftovers(name: str) -> list[str]:
    """Everything of lab NAME still on the machine: namespaces, processes naming its state, links, state."""
    found = (
        [f"netns {ns}" for ns in os.listdir("/run/netns") if ns.startswith(f"{name}-")]
        if os.path.isdir("/run/netns")
        else []
    )
    marker = f"{STATE_ROOT / name}/".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(f"process {pid}")
        except OSError:
            pass
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [f"root link {m}" for m in re.findall(rf"^\d+: ({re.escape(name)}\w*)[@:]", links, re.M)]
    if (STATE_ROOT / name).exists():
        found.append(f"state {STATE_ROOT / name}")
    return found


