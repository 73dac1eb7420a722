"""The one BIRD 2 config renderer for the netns lab and vagrant/: a Calico-style BGP full mesh.

Modelled on Calico's confd template (confd/etc/calico/confd/templates/bird.cfg.template):
- every peer comes from `template bgp bgp_template` with Calico's reconnect timers (today's template:
  `connect delay time 2; connect retry time 5; error wait time 5,30; graceful restart;`, no hold time;
  a 1 / 3 / 5,60 variant was proposed upstream and never merged),
- one `protocol bgp Mesh_<ip with underscores>` per other node,
- the mesh is unidirectional exactly as in Calico: in node A's config the session to a peer whose address
  *string* sorts after A's is `passive on` (`{{if gt $onode_ip $node_ip}}`, a string comparison), so of
  each pair the greater string connects and, once the peer is dead, keeps ARPing for it. From 10 nodes on
  this is not the numeric order: "198.18.0.10" < "198.18.0.9". The rule lives in sensor.peers.mesh.

Calico's BIRD runs on BIRD 1.6 syntax; this renders BIRD 2 (`local ... as`, `ipv4 { }` channels).
Dual stack (`local_ip6`/`peers6`): the IPv6 mesh is a second template (`bgp_template6`, an `ipv6 { }`
channel, sessions over IPv6) in the same BIRD, named like Calico names IPv6 peers (Mesh_2001_db8__7) and
unidirectional by the same rule; Calico's BIRD 1.6 runs it as a separate bird6 with its own bird6.ctl.

Calico leaves BIRD's default hold time (240 s): a silently powered-off node is noticed only when the hold
timer expires, and only then does the reconnect loop (and the ARP storm) start. The lab defaults to a
short, lab-only hold time so the demo and the tests show the storm within seconds (the rendered line says
so); pass `hold_time=None` for BIRD's default, as Calico.

Command line (used by vagrant/ provisioning):
    python -m sensor.lab.birdconf --local 198.18.0.11 --mesh 198.18.0.11 198.18.0.12 198.18.0.13 -o bird.conf
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from sensor.errors import SensorError
from sensor.peers.mesh import connects, is_passive, protocol_name

DEFAULT_ASN = 64512  # Calico's default AS number
LAB_HOLD_TIME = 6  # seconds, lab only; BIRD's minimum is 3, its default (and Calico's) 240
BIRD_DEFAULT_HOLD_TIME = 240


@dataclass(frozen=True)
class Timers:
    """Reconnect timers of Calico's bgp_template (Calico sets no hold time: BIRD's 240 s)."""

    connect_delay: int = 2
    connect_retry: int = 5
    error_wait: tuple[int, int] = (5, 30)


CALICO_TIMERS = Timers()


__all__ = ["CALICO_TIMERS", "DEFAULT_ASN", "LAB_HOLD_TIME", "Timers", "connects", "is_passive", "mesh",
           "protocol_name", "render"]


def _check_ip(ip: str, version: int = 4) -> str:
    try:
        addr = ipaddress.ip_address(ip)
        if addr.version == version:
            return str(addr)
    except ValueError:
        pass
    raise SensorError(f"birdconf: not an IPv{version} address: {ip!r}") from None


def render(
    local_ip: str,
    peers: Iterable[str],
    *,
    asn: int = DEFAULT_ASN,
    hold_time: int | None = LAB_HOLD_TIME,
    router_id: str | None = None,
    log_file: str | None = None,
    timers: Timers = CALICO_TIMERS,
    pod_block: str | None = None,
    local_ip6: str | None = None,
    peers6: Iterable[str] = (),
) -> str:
    """BIRD 2 config for the node `local_ip` peering with every address in `peers` (itself is skipped),
    and, with `local_ip6`, over IPv6 with every address in `peers6`.

    `pod_block` (a CIDR) is announced to the mesh like Calico announces a node's IPAM block, so that
    `show route` on the peers has something to show.
    """
    local_ip = _check_ip(local_ip)
    peer_ips = sorted({_check_ip(p) for p in peers} - {local_ip}, key=ipaddress.IPv4Address)
    local6 = _check_ip(local_ip6, 6) if local_ip6 else None
    peer_ips6 = sorted({_check_ip(p, 6) for p in peers6} - {local6}, key=ipaddress.IPv6Address) if local6 else []
    if hold_time is not None and not 3 <= hold_time <= 65535:
        raise SensorError(f"birdconf: hold time must be 3..65535 s (BIRD's limits), got {hold_time}")
    if not 1 <= asn <= 4294967295:
        raise SensorError(f"birdconf: AS number out of range: {asn}")

    out: list[str] = [
        f"# BIRD 2 config for {local_ip}: Calico-style node-to-node mesh (rendered by sensor.lab.birdconf)",
        f'log "{log_file}" all;' if log_file else "log stderr all;",
        f"router id {_check_ip(router_id) if router_id else local_ip};",
        "",
        "protocol device {",
        "  scan time 2;    # Calico scans interfaces every 2 seconds",
        "}",
        "",
    ]
    export = "none"
    if pod_block:
        try:
            block = ipaddress.IPv4Network(pod_block)
        except ValueError:
            raise SensorError(f"birdconf: not an IPv4 CIDR: {pod_block!r}") from None
        out += [
            "# This node's pod block, announced like Calico announces its IPAM blocks.",
            "protocol static pod_block {",
            "  ipv4;",
            f"  route {block} blackhole;",
            "}",
            "",
        ]
        export = "where source = RTS_STATIC"
    hold = (
        f"  hold time {hold_time};  # LAB ONLY: Calico keeps BIRD's default ({BIRD_DEFAULT_HOLD_TIME} s); "
        "short here so a power-off is noticed fast"
        if hold_time is not None
        else f"  # hold time: BIRD's default ({BIRD_DEFAULT_HOLD_TIME} s), as in Calico"
    )
    def template(name: str, local: str, channel: list[str]) -> list[str]:
        return [
            f"template bgp {name} {{",
            "  debug { states };",
            '  description "Connection to BGP peer";',
            f"  local {local} as {asn};  # the source address of the TCP connection",
            "  multihop;",
            *channel,
            "  graceful restart;",
            f"  connect delay time {timers.connect_delay};",
            f"  connect retry time {timers.connect_retry};",
            f"  error wait time {timers.error_wait[0]},{timers.error_wait[1]};",
            hold,
            "}",
            "",
        ]

    out += ["# Template for all BGP clients (Calico's bgp_template)"]
    out += template("bgp_template", local_ip, [
        "  ipv4 {",
        "    gateway recursive;",
        "    import all;",
        f"    export {export};",
        "    add paths on;",
        "  };",
    ])
    if local6:
        out += ["# The same for the IPv6 mesh: sessions over IPv6 (Calico's bird6)"]
        out += template("bgp_template6", local6, ["  ipv6 {", "    import all;", "    export none;", "  };"])
    out.append("# ------------- Node-to-node mesh -------------")
    for peer, template, local in [(p, "bgp_template", local_ip) for p in peer_ips] + \
            [(p, "bgp_template6", local6) for p in peer_ips6]:
        out.append(f"protocol bgp {protocol_name(peer)} from {template} {{")
        out.append(f"  neighbor {peer} as {asn};")
        if is_passive(local, peer):  # type: ignore[arg-type]
            out.append("  passive on; # Mesh is unidirectional, peer will connect to us.")
        out.append("}")
    out.append("")
    return "\n".join(out)


def mesh(ips: Iterable[str], ips6: Iterable[str] | None = None, **kwargs: object) -> dict[str, str]:
    """Configs for every node of a full mesh, keyed by node IP. ips6: the nodes' IPv6 addresses, in the
    same order, for a dual-stack mesh."""
    nodes = [_check_ip(ip) for ip in ips]
    v6 = [_check_ip(ip, 6) for ip in ips6] if ips6 else []
    if v6 and len(v6) != len(nodes):
        raise SensorError("birdconf: a dual-stack mesh needs one IPv6 address per node")
    return {ip: render(ip, nodes, local_ip6=v6[i] if v6 else None, peers6=v6, **kwargs)  # type: ignore[arg-type]
            for i, ip in enumerate(nodes)}


def main(argv: list[str] | None = None) -> int:
    """`python -m sensor.lab.birdconf`: argparse, not click, so a bare `python3` on a VM can run it."""
    p = argparse.ArgumentParser(prog="python -m sensor.lab.birdconf", description=__doc__.split("\n")[0])
    p.add_argument("--local", required=True, help="this node's IP (router id, source address)")
    p.add_argument("--mesh", nargs="+", required=True, help="every node's IP (this node's is skipped)")
    p.add_argument("--asn", type=int, default=DEFAULT_ASN)
    p.add_argument("--hold-time", default=str(LAB_HOLD_TIME), help="seconds, or 'default' for BIRD's 240 s (Calico)")
    p.add_argument("--log-file", help="BIRD log file (default: stderr)")
    p.add_argument("--pod-block", help="CIDR to announce, like a Calico IPAM block")
    p.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    a = p.parse_args(argv)
    try:
        hold = None if a.hold_time == "default" else int(a.hold_time)
        text = render(a.local, a.mesh, asn=a.asn, hold_time=hold, log_file=a.log_file, pod_block=a.pod_block)
    except ValueError:
        print(f"birdconf: error: bad --hold-time {a.hold_time!r}", file=sys.stderr)
        return 2
    except SensorError as e:
        print(f"{e}", file=sys.stderr)
        return e.exit_code
    if a.output == "-":
        sys.stdout.write(text)
    else:
        with open(a.output, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
