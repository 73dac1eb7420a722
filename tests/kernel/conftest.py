"""Tier `kernel`: BPF programs in the real kernel through BPF_PROG_TEST_RUN (root)."""

from tests.support.tiers import apply_tier


def pytest_collection_modifyitems(items):  # type: ignore[no-untyped-def]
    apply_tier(items, __file__)
