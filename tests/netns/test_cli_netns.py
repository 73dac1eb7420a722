"""Bad input never gives a traceback: one line on stderr and a documented exit code."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.cli import assert_one_line_error, run_cli
from tests.support.fixtures_netns import unique


@pytest.fixture
def lone_ns():
    """A namespace of our own, so that even a broken check never attaches to the host's interfaces."""
    name = unique("ascli")
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield ("ip", "netns", "exec", name)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_missing_privileges(lone_ns):
    r = run_cli("run", "-i", "lo", prefix=(*lone_ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"))
    assert_one_line_error(r, 3, "needs root")


def test_missing_kernel_headers(lone_ns):
    r = run_cli("run", "-i", "lo", env={"BCC_KERNEL_SOURCE": "/nonexistent/headers"}, prefix=lone_ns)
    assert_one_line_error(r, 3, "kernel headers not found")


def test_detach_on_a_clean_interface_says_so(lone_ns):
    r = run_cli("detach", "-i", "lo", prefix=lone_ns)
    assert r.returncode == 0 and "nothing of arp-sensor's attached" in r.stdout


