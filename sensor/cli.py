"""Command line: `arp-sensor run|detach|doctor|lab|top|demo`."""

from __future__ import annotations

import sys
from typing import Any

import click

from sensor import __version__, sdnotify
from sensor.config import ENV_VAR as CONFIG_ENV
from sensor.config import ConfigGroup, config_option
from sensor.errors import EXIT_INTERNAL, SensorError
from sensor.kernel.layout import DEFAULT_MAX_ENTRIES
from sensor.pipeline.stages import stage_options


@click.group(cls=ConfigGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="arp-sensor")
@config_option(envvar=CONFIG_ENV)
def cli() -> None:
    """Count ARP requests per target in the kernel and name the BGP peers behind an ARP storm.

    Every flag can also come from a TOML file: `arp-sensor --config FILE CMD` or `CMD --config FILE`
    (keys are flag names; flags on the command line win). See docs/operations.md.
    """


def _log(msg: str) -> None:
    click.echo(f"arp-sensor: {msg}", err=True)


@cli.command()
@click.option("-i", "--interface", "interfaces", multiple=True, required=True, metavar="IFACE",
              help="Interface to watch (repeatable).")
@click.option("--attach", type=click.Choice(["xdp", "tc", "both"]), default="both", show_default=True,
              help="xdp: XDP ingress only; tc: tc ingress + egress; both: XDP ingress + tc egress.")
@click.option("--xdp-mode", type=click.Choice(["auto", "native", "generic"]), default="auto", show_default=True,
              help="auto tries native (driver) XDP and falls back to generic.")
@click.option("--interval", type=click.FloatRange(0.05, 3600), default=1.0, show_default=True,
              help="Seconds between map reads; one set of events per interval.")
@click.option("--duration", type=click.FloatRange(0.1, None), default=None,
              help="Stop after this many seconds (default: run until SIGINT/SIGTERM).")
@click.option("--top", type=click.IntRange(0, None), default=20, show_default=True,
              help="At most N target events per interval (0: no limit).")
@click.option("--min-requests", type=click.IntRange(0, None), default=1, show_default=True,
              help="Only targets with at least N requests in the interval (0: any ARP activity).")
@click.option("--ready-file", type=click.Path(dir_okay=False), default=None,
              help="Written once every program is attached: start traffic after it appears.")
@click.option("--max-entries", type=click.IntRange(256, 1 << 22), default=DEFAULT_MAX_ENTRIES, show_default=True,
              help="Size of each in-kernel LRU map (ARP, ND): one entry per (target, sender, MAC) and per "
                   "replier. Kernel memory is max-entries x 104 bytes (ARP) and x 128 (ND), whatever the CPUs.")
@click.option("--fast-slots", type=click.IntRange(0, 1 << 16), default=None,
              help="Slots of the kernel's fast path per CPU (a power of two; 0 turns it off; default 1024). "
                   "Kernel memory is 208 x fast-slots bytes per CPU (two halves of 40-byte ARP and 64-byte "
                   "ND slots).")
@click.option("--hostname", default=None, help="observer.hostname in events (default: this host's name).")
@stage_options(outputs=True)
def run(interfaces: tuple[str, ...], attach: str, xdp_mode: str, interval: float, duration: float | None,
        top: int, min_requests: int, ready_file: str | None, max_entries: int, fast_slots: int | None,
        hostname: str | None, **stage_opts: Any) -> None:
    """Count ARP per target in the kernel and stream JSON events.

    \b
    Examples:
      arp-sensor run -i eth0
      arp-sensor run -i eth0 -i bond0 --attach tc --interval 5 --top 50
      arp-sensor run -i eth0 --duration 60 --min-requests 1 --ready-file /run/arp-sensor.ready
      arp-sensor run -i eth0 --rate-limit dry-run            # what limits would drop, nothing dropped
      arp-sensor run -i eth0 --rate-limit enforce --limit-allow 198.18.0.1
      arp-sensor run -i eth0 -o file:/var/log/arp-sensor.json -o forward://127.0.0.1:24224?chunk=1
      arp-sensor run -i eth0 --metrics-port 9464
      arp-sensor run -i eth0 --binding-state /var/lib/arp-sensor/bindings.json   # arpwatch's arp.dat

    Exit codes: 0 ok, 1 internal error, 2 bad usage or input, 3 environment (privileges, kernel
    headers, bcc), 4 conflict (a foreign XDP program or tc filter, another arp-sensor).
    """
    from sensor.model import StageContext
    from sensor.pipeline.runner import Runner, RunOptions, check_options
    from sensor.pipeline.stages import build_stages, close_stages, install_stages

    opts = RunOptions(interfaces=list(interfaces), attach=attach, xdp_mode=xdp_mode, interval=interval,
                      duration=duration, top=top, min_requests=min_requests, ready_file=ready_file,
                      max_entries=max_entries, fast_slots=fast_slots)
    if hostname:
        opts.hostname = hostname
    check_options(opts)
    ctx = StageContext(interval=interval, attach=attach, hostname=opts.hostname, log=_log)
    stages = build_stages(ctx, stage_opts, outputs=True)
    runner = Runner(opts, lambda ev: None, _log)  # the output stage installs the real emit
    code = 0
    try:
        install_stages(stages, runner)
        runner.install_signal_handlers()
        runner.ready_hooks.append(lambda: sdnotify.ready(f"watching {', '.join(opts.interfaces)}"))
        runner.start()
        code = runner.run()
    finally:
        sdnotify.stopping()
        close_stages(stages, _log)  # before the detach: limits are removed through the kernel's maps
        for problem in runner.close():
            _log(problem)
    sys.exit(code)


@cli.command()
@click.option("-i", "--interface", "interfaces", multiple=True, required=True, metavar="IFACE",
              help="Interface to clean up (repeatable).")
def detach(interfaces: tuple[str, ...]) -> None:
    """Remove what a crashed arp-sensor left attached (only arp-sensor's own programs and filters).

    \b
    Example:
      arp-sensor detach -i eth0
    """
    from sensor.kernel.datapath import detach_stale

    for ifname in interfaces:
        done = detach_stale(ifname)
        for line in done or [f"{ifname}: nothing of arp-sensor's attached"]:
            click.echo(line)


def main() -> None:
    """Console entry point: SensorError becomes one line on stderr and its exit code, never a traceback."""
    try:
        cli(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:
        # One line, not click's usage block: these land in journald and CI logs.
        where = e.ctx.command_path if e.ctx else "arp-sensor"
        click.echo(f"{where}: error: {e.format_message()} (see --help)", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"arp-sensor: error: {e.format_message()}", err=True)
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


from sensor.lab.cli import lab  # noqa: E402

cli.add_command(lab)

from sensor.ui.doctor import doctor  # noqa: E402

cli.add_command(doctor)

from sensor.ui.demo import demo  # noqa: E402

cli.add_command(demo)

from sensor.ui.top import top  # noqa: E402

cli.add_command(top)
