"""`arp-sensor lab ...`: build, break and tear down the netns BGP full mesh from the shell."""

from __future__ import annotations

import json
import os
import sys

import click

from sensor.errors import SensorError
from sensor.lab import birdconf
from sensor.lab.lab import DEFAULT_PREFIX6, KILLED, Lab, parse_mac, random_mac

name_option = click.option(
    "--name", "-n", default="lab", show_default=True, help="Lab name (1-8 chars: a-z then a-z0-9)."
)


def _echo(msg: str) -> None:
    click.echo(msg, err=True)


@click.group()
def lab() -> None:
    """A Calico-style BGP full mesh of real BIRD routers in network namespaces.

    \b
    Examples:
      arp-sensor lab up --nodes 8
      arp-sensor lab status
      arp-sensor lab kill n3 n4          # power off: link drops, then everything in the node dies
      arp-sensor lab exec n1 -- arp-sensor run -i eth0
      arp-sensor lab revive n3 n4
      arp-sensor lab kill n5 && arp-sensor lab revive --new-mac n5   # back with new hardware
      arp-sensor lab down
    """


@lab.command()
@click.option("--nodes", "-N", type=int, required=True, help="Number of BIRD nodes (2..prefix size).")
@name_option
@click.option("--prefix", default="198.18.0.0/24", show_default=True, help="Node addresses (inside 198.18.0.0/15).")
@click.option("--ipv6", "ipv6", is_flag=True, help="Dual stack: IPv6 addresses and BIRD sessions too.")
@click.option("--prefix6", default=DEFAULT_PREFIX6, show_default=True,
              help="IPv6 node addresses with --ipv6 (inside 2001:db8::/32).")
@click.option(
    "--vlan",
    type=int,
    help="Tag every frame on the wire with 802.1Q VLAN ID (tc programs on each eth0; no 8021q module needed).",
)
@click.option(
    "--hold-time",
    default=str(birdconf.LAB_HOLD_TIME),
    show_default=True,
    help="BGP hold time in seconds, or 'default' for BIRD's 240 s (what Calico runs).",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until every session is Established.")
@click.option("--timeout", type=float, default=120, show_default=True, help="Seconds to wait for the mesh.")
@click.option(
    "--raise-neigh-limits",
    is_flag=True,
    help="Raise the host's ARP table limits (net.ipv4.neigh.default.gc_thresh*) if the mesh needs it "
    "(labs above ~20 nodes; the table is shared by all namespaces).",
)
def up(
    nodes: int,
    name: str,
    prefix: str,
    ipv6: bool,
    prefix6: str,
    vlan: int | None,
    hold_time: str,
    wait: bool,
    timeout: float,
    raise_neigh_limits: bool,
) -> None:
    """Build the lab: a switch namespace with a bridge and N nodes each running BIRD."""
    if hold_time == "default":
        hold: int | None = None
    else:
        try:
            hold = int(hold_time)
        except ValueError:
            raise SensorError(f"lab: --hold-time must be seconds or 'default', got {hold_time!r}") from None
    the_lab = Lab(name, nodes, prefix=prefix, vlan=vlan, hold_time=hold, ipv6=prefix6 if ipv6 else None)
    the_lab.up(progress=_echo, raise_neigh_limits=raise_neigh_limits)
    if wait:
        took = the_lab.wait_established(timeout, progress=_echo)
        sessions = nodes * (nodes - 1) * (2 if ipv6 else 1)
        _echo(f"lab {name}: full mesh Established ({sessions} sessions) after {took:.1f}s")
    v6 = f" and {the_lab.ip6('n1')}..{the_lab.ip6(the_lab.nodes[-1])}" if ipv6 else ""
    _echo(
        f"lab {name}: nodes n1..n{nodes} = {the_lab.ip('n1')}..{the_lab.ip(the_lab.nodes[-1])}{v6}; "
        f"run commands with `arp-sensor lab exec --name {name} n1 -- CMD` or `ip netns exec {name}-n1 CMD`"
    )


@lab.command()
@name_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(name: str, as_json: bool) -> None:
    """Which nodes are up and how many of their BGP sessions are Established."""
    st = Lab.load(name).status()
    if as_json:
        click.echo(json.dumps(st, indent=1))
        return
    click.echo(
        f"lab {st['name']}  prefix {st['prefix']}  hold time "
        f"{st['hold_time'] or 'default (240)'}s{'  vlan ' + str(st['vlan']) if st['vlan'] else ''}"
    )
    click.echo(f"{'node':<6}{'ip':<16}{'netns':<12}{'state':<14}{'bird':<8}{'established':<13}down sessions")
    for row in st["nodes"]:
        est = f"{row['established']}/{row['expected']}" if "established" in row else "-"
        if row.get("stale"):
            est += f" +{row['stale']} stale"  # Established to a powered-off node until its hold timer fires
        down = [
            f"{p} ({s['info'] or s['state']})"
            for p, s in row.get("sessions", {}).items()
            if not s["info"].startswith("Established")
        ]
        click.echo(
            f"{row['node']:<6}{row['ip']:<16}{row['netns']:<12}{row['state']:<14}"
            f"{row['bird_pid'] or '-'!s:<8}{est:<13}{', '.join(down)}"
        )


@lab.command()
@name_option
@click.argument("nodes", nargs=-1, required=True)
def kill(name: str, nodes: tuple[str, ...]) -> None:
    """Power NODEs off (n3, 3 or its IP): the link drops first, then everything in the node dies."""
    the_lab = Lab.load(name)
    targets = [the_lab.node(n) for n in nodes]  # validate all before touching any
    for n in targets:
        the_lab.kill(n.name)
        _echo(f"lab {name}: {n.name} ({n.ip}) powered off")


@lab.command()
@name_option
@click.option("--mac", default=None, metavar="MAC", help="Come back with this MAC on eth0 (one node).")
@click.option("--new-mac", is_flag=True, help="Come back with a fresh random MAC on eth0 (new hardware).")
@click.argument("nodes", nargs=-1, required=True)
def revive(name: str, nodes: tuple[str, ...], mac: str | None, new_mac: bool) -> None:
    """Power NODEs back on (link up, BIRD started), optionally with new hardware (--mac / --new-mac)."""
    if mac is not None and (new_mac or len(nodes) != 1):
        raise click.UsageError("--mac takes exactly one node and excludes --new-mac")
    the_lab = Lab.load(name)
    targets = [the_lab.node(n) for n in nodes]
    macs = {n.name: parse_mac(mac) if mac else random_mac() for n in targets} if mac or new_mac else {}
    for n in targets:
        was = n.state
        the_lab.revive(n.name, macs.get(n.name))
        new = f" with MAC {macs[n.name]}" if n.name in macs else ""
        _echo(f"lab {name}: {n.name} ({n.ip}) {'powered on' if was == KILLED else 'already up'}{new}")


@lab.command()
@name_option
@click.option("--all", "all_labs", is_flag=True, help="Every lab on this machine.")
def down(name: str, all_labs: bool) -> None:
    """Remove the lab: namespaces, links, bridge, BIRD processes, state (idempotent; works after a crash)."""
    for lab_name in Lab.names() if all_labs else [name]:
        removed = Lab.destroy(lab_name)
        _echo(
            f"lab {lab_name}: removed {len(removed)} namespaces/dirs"
            if removed
            else f"lab {lab_name}: nothing to remove"
        )


@lab.command(name="exec", context_settings={"ignore_unknown_options": True})
@name_option
@click.argument("node")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name: str, node: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside NODE's namespace, as on a real host: lab exec n1 -- ip neigh."""
    argv = Lab.load(name).exec_argv(node, list(command))
    sys.stdout.flush()
    os.execvp(argv[0], argv)
