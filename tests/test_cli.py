"""Bad input never gives a traceback: one line on stderr and a documented exit code."""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner

from sensor.cli import cli
from tests.fixtures_netns import REPO, needs_root, sensor_cmd, sensor_env, unique


def run_cli(*args: str, env: dict | None = None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    e = sensor_env()
    e.update(env or {})
    return subprocess.run([*prefix, *sensor_cmd(*args)], capture_output=True, text=True, env=e, cwd=REPO,
                          timeout=120)


def assert_one_line_error(r: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr


def test_help_lists_the_commands():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for cmd in ("run", "detach"):
        assert cmd in result.output


def test_run_help_has_examples():
    result = CliRunner().invoke(cli, ["run", "--help"])
    assert result.exit_code == 0
    assert "arp-sensor run -i eth0" in result.output and "Exit codes" in result.output


@pytest.mark.parametrize(("args", "needle"), [
    (["run"], "Missing option '-i'"),
    (["run", "-i", "lo", "--interval", "0"], "--interval"),
    (["run", "-i", "lo", "--attach", "bogus"], "--attach"),
    (["run", "-i", "lo", "--xdp-mode", "turbo"], "--xdp-mode"),
    (["run", "-i", "lo", "--top", "-1"], "--top"),
    (["run", "-i", "lo", "--max-entries", "1"], "--max-entries"),
    (["run", "-i", "lo", "--duration", "abc"], "--duration"),
    (["run", "-i", "lo", "-i", "lo"], "once"),
    (["frobnicate"], "No such command"),
])
def test_bad_flags(args, needle):
    assert_one_line_error(run_cli(*args), 2, needle)


def test_unknown_interface():
    assert_one_line_error(run_cli("run", "-i", "nosuchif0"), 2, "interface 'nosuchif0' not found")


@pytest.fixture
def lone_ns():
    """A namespace of our own, so that even a broken check never attaches to the host's interfaces."""
    name = unique("ascli")
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield ("ip", "netns", "exec", name)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


@needs_root
def test_missing_privileges(lone_ns):
    r = run_cli("run", "-i", "lo", prefix=(*lone_ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"))
    assert_one_line_error(r, 3, "needs root")


@needs_root
def test_missing_kernel_headers(lone_ns):
    r = run_cli("run", "-i", "lo", env={"BCC_KERNEL_SOURCE": "/nonexistent/headers"}, prefix=lone_ns)
    assert_one_line_error(r, 3, "kernel headers not found")


@needs_root
def test_detach_on_a_clean_interface_says_so(lone_ns):
    r = run_cli("detach", "-i", "lo", prefix=lone_ns)
    assert r.returncode == 0 and "nothing of arp-sensor's attached" in r.stdout
