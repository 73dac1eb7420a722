"""The layout's rules, enforced by the linter (and checked here so the rule itself cannot silently vanish):
only sensor/kernel/ imports bcc (docs/architecture.md, "What each folder may import")."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.support.fixtures_netns import REPO


def ruff(filename: str, source: str) -> subprocess.CompletedProcess[str]:
    """ruff with the project's configuration on `source`, as if it were the file `filename`."""
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--stdin-filename", filename, "-"],
                          input=source, capture_output=True, text=True, cwd=REPO, timeout=60)


BCC = "bcc"  # kept out of the literal import lines, so that a grep for them finds only sensor/kernel/


@pytest.mark.parametrize("filename", ["tests/unit/test_new.py", "sensor/pipeline/new.py", "sensor/ui/new.py",
                                      "bench/new.py", "sensor/lab/new.py"])
@pytest.mark.parametrize("source", [f"import {BCC}\n", f"from {BCC} import BPF\n", f"from {BCC}.table import Table\n"])
def test_bcc_outside_sensor_kernel_fails_the_lint(filename: str, source: str) -> None:
    r = ruff(filename, source)
    assert r.returncode == 1 and "TID251" in r.stdout, r.stdout + r.stderr


def test_bcc_inside_sensor_kernel_passes_the_lint() -> None:
    r = ruff("sensor/kernel/new.py", f'"""x."""\n\nfrom {BCC} import BPF\n\nprint(BPF)\n')
    assert r.returncode == 0, r.stdout + r.stderr


def _imports_bcc(path) -> bool:  # type: ignore[no-untyped-def]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "bcc" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "bcc" and not node.level:
            return True
    return False


def test_only_sensor_kernel_imports_bcc_in_the_tree() -> None:
    tops = ("sensor", "tests", "bench", "scripts", "vagrant", "deploy")
    files = [f for top in tops for f in (REPO / top).rglob("*.py")]
    offenders = [str(f.relative_to(REPO)) for f in files if _imports_bcc(f)
                 and not f.is_relative_to(REPO / "sensor" / "kernel")]
    assert offenders == []
    assert _imports_bcc(REPO / "sensor/kernel/loader.py")  # the check would see one
