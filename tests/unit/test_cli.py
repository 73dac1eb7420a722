"""Bad input never gives a traceback: one line on stderr and a documented exit code."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sensor.cli import cli
from tests.support.cli import assert_one_line_error, run_cli


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


