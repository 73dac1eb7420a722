"""Command line: `arp-sensor run|detach|doctor|lab|top|demo`."""

from __future__ import annotations

import sys

import click

from sensor import __version__
from sensor.errors import EXIT_INTERNAL, SensorError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="arp-sensor")
def cli() -> None:
    """Count ARP requests per target in the kernel and name the BGP peers behind an ARP storm."""


def main() -> None:
    """Console entry point: SensorError becomes one line on stderr and its exit code, never a traceback."""
    try:
        cli(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("arp-sensor: aborted", err=True)
        sys.exit(130)
    except SensorError as e:
        click.echo(f"arp-sensor: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # last resort: one line, not a traceback
        click.echo(f"arp-sensor: internal error: {type(e).__name__}: {e}", err=True)
        sys.exit(EXIT_INTERNAL)
