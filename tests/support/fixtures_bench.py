"""Benchmark smoke tests run the real benchmarks on small sizes; none may write docs/benchmarks.md."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench import report


def _doc_state() -> tuple[bool, float, int]:
    d = report.DOC
    return (d.exists(), d.stat().st_mtime if d.exists() else 0.0, d.stat().st_size if d.exists() else 0)


@pytest.fixture
def docs_untouched() -> Iterator[None]:
    before = _doc_state()
    yield
    assert _doc_state() == before, "a smoke benchmark wrote docs/benchmarks.md"
