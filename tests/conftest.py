"""Shared fixtures. Feature-specific fixtures live in tests/support/fixtures_*.py and are listed in pytest_plugins."""

pytest_plugins = [
    "tests.support.fixtures_netns",
    "tests.support.fixtures_bpf",
    "tests.support.fixtures_lab",
    "tests.support.fixtures_schema",
    "tests.support.fixtures_bench",
]
