"""Tier `artifacts`: the shipped container image and VM lab, built and run (root; minutes). Not collected by
`make test` (pyproject's norecursedirs); `make image-test` and `make vm-test` name these files."""

from tests.support.tiers import apply_tier


def pytest_collection_modifyitems(items):  # type: ignore[no-untyped-def]
    apply_tier(items, __file__)
