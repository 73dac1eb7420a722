"""Shared fixtures. Feature-specific fixtures live in tests/fixtures_*.py and are listed in pytest_plugins."""

pytest_plugins = [
    "tests.fixtures_netns",
    "tests.fixtures_bpf",
    "tests.fixtures_lab",
    "tests.fixtures_schema",
]
