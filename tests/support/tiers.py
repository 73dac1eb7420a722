"""Test tiers: each tier folder's conftest marks its tests, so `pytest -m unit` (or `make test-unit`) runs
the tier that needs no root, and the root tiers skip, never fail, for anyone else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.fixtures_lab import lab_unavailable

ROOT_REASON = "needs root (BPF, network namespaces)"


def _why_not(tier: str) -> str | None:
    if tier == "unit":
        return None
    if os.geteuid() != 0:
        return ROOT_REASON
    return lab_unavailable() if tier == "lab" else None


def apply_tier(items: list[pytest.Item], conftest: str) -> None:
    """Mark every test under the folder of `conftest` with the folder's tier (and `root` for the root
    tiers), and skip the root tiers where they cannot run."""
    folder = Path(conftest).resolve().parent
    tier = folder.name
    why = _why_not(tier)
    for item in items:
        if folder not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(getattr(pytest.mark, tier))
        if tier != "unit":
            item.add_marker(pytest.mark.root)
        if why:
            item.add_marker(pytest.mark.skip(reason=why))
