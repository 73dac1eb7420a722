"""Tier `netns`: veth/netns traffic and sensor processes (root)."""

from tests.support.tiers import apply_tier


def pytest_collection_modifyitems(items):  # type: ignore[no-untyped-def]
    apply_tier(items, __file__)
