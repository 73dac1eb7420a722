"""A Calico-style BGP full mesh of real BIRD 2 routers in network namespaces.

Layout of a lab called NAME with N nodes:
- netns `NAME-sw` holds the "switch": a Linux bridge `NAMEbr` with one port `NAMEp<i>` per node;
- netns `NAME-n<i>` is node i: `eth0` (the other end of `NAMEp<i>`) with the i-th address of the prefix
  (with a VLAN, tc programs tag its frames on the wire: sensor.lab.vlanwire), and a BIRD whose config,
  control socket, pid file and log live in /run/arp-sensor/lab/NAME/.
With `ipv6` (a prefix inside 2001:db8::/32) the lab is dual stack: every node also gets the i-th IPv6
address and BIRD sessions over IPv6 (Mesh_2001_db8__<i>), and the switch floods multicast like one without
MLD snooping, so a dead node's neighbour solicitations reach every port as its ARP requests do.
Nothing is ever created in the root namespace, so deleting the lab's namespaces and killing every process
whose command line names the state directory removes everything, even after a crash (`Lab.destroy`).

`kill` powers a node off like real hardware: the link drops first (no FIN or RST reaches the peers), then
every process in the node dies. The node stays configured on every other node, whose BIRD notices only
when its hold timer expires and then keeps reconnecting, broadcasting ARP for the dead address. Only the
peers whose address *string* sorts after the dead node's reconnect (Calico's unidirectional mesh,
sensor.peers.mesh), so the death of the node with the greatest string is silent.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from sensor.errors import EXIT_ENV, EXIT_INTERNAL, SensorError
from sensor.lab import birdconf, vlanwire
from sensor.neigh.table import NeighReader
from sensor.peers.bird import BirdClient, BirdError, BirdProtocol

STATE_ROOT = Path(os.environ.get("ARP_SENSOR_LAB_DIR", "/run/arp-sensor/lab"))
NETNS_DIR = "/run/netns"
# Short names keep every interface name (NAMEp<i>, NAMEbr) within IFNAMSIZ (15 chars); no '-' so that
# lab "a" never matches the namespaces of lab "a-b".
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
SAFE_NET = ipaddress.IPv4Network("198.18.0.0/15")  # benchmarking range: never routed anywhere
SAFE_NET6 = ipaddress.IPv6Network("2001:db8::/32")  # documentation range: never routed anywhere
DEFAULT_PREFIX6 = "2001:db8::/64"
MAX_NODES = 254
NEIGH_REACHABLE_MS = 4000  # Linux default 30000; see _build_node

UP, KILLED, BIRD_STOPPED = "up", "killed", "bird-stopped"

Progress = Callable[[str], None]


@dataclass
class Node:
    name: str  # n1, n2, ...
    index: int
    ip: str
    netns: str
    port: str  # the bridge-side veth in the switch namespace
    state: str = UP
    ip6: str | None = None  # dual-stack labs only




def require_tools() -> None:
    """The lab needs root (namespaces) and BIRD 2 (`bird`, `birdc`) on PATH."""
    for tool in ("bird", "birdc"):
        if shutil.which(tool) is None:
            raise SensorError(f"lab: `{tool}` not found in PATH (install bird2: scripts/install-system.sh)", EXIT_ENV)
    if os.geteuid() != 0:
        raise SensorError("lab: must run as root (network namespaces)", EXIT_ENV)


@contextlib.contextmanager
def ipr_in(ns: str) -> Iterator[IPRoute]:
    """An IPRoute bound to namespace `ns` (a netlink socket stays in the netns it was opened in)."""
    if not os.path.exists(os.path.join(NETNS_DIR, ns)):
        raise SensorError(f"lab: network namespace {ns} is gone (run `arp-sensor lab down`)", EXIT_ENV)
    netns.pushns()
    try:
        netns.setns(ns, flags=0)  # flags=0: never create a namespace that vanished
        ipr = IPRoute()
    finally:
        netns.popns()
    try:
        yield ipr
    finally:
        ipr.close()


def _write_sysctl_in(ns: str, values: dict[str, str]) -> None:
    """Write /proc/sys/KEY (slash-separated) in `ns`: /proc/sys/net follows the opening thread's netns."""
    netns.pushns()
    try:
        netns.setns(ns, flags=0)
        for key, value in values.items():
            with open("/proc/sys/" + key, "w") as f:
                f.write(value)
    finally:
        netns.popns()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_dead(pids: list[int], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(_pid_alive(p) for p in pids):
            return True
        time.sleep(0.02)
    return not any(_pid_alive(p) for p in pids)


_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")


def parse_mac(text: str) -> str:
    """A unicast MAC (colon or hyphen separated, any case) in the colon form the kernel takes."""
    mac = text.strip().lower()
    if not _MAC_RE.match(mac) or int(mac[:2], 16) & 1 or mac.replace("-", ":") == "00:00:00:00:00:00":
        raise SensorError(f"lab: bad MAC {text!r}: expected a unicast address like 02:00:00:00:01:03")
    return mac.replace("-", ":")


def random_mac() -> str:
    """A random locally administered unicast MAC (02:xx:...)."""
    return ":".join(["02", *(f"{b:02x}" for b in os.urandom(5))])


class Lab:
    """Build, break and tear down a netns BGP full mesh. See the module docstring for the layout."""

    def __init__(
        self,
        name: str = "lab",
        nodes: int = 3,
        prefix: str = "198.18.0.0/24",
        vlan: int | None = None,
        hold_time: int | None = birdconf.LAB_HOLD_TIME,
        asn: int = birdconf.DEFAULT_ASN,
        ipv6: str | None = None,
    ) -> None:
        if not NAME_RE.match(name or ""):
            raise SensorError(f"lab: bad name {name!r}: 1-8 chars, a lowercase letter then [a-z0-9]")
        try:
            net = ipaddress.IPv4Network(prefix, strict=False)
        except ValueError:
            raise SensorError(f"lab: bad prefix {prefix!r}: expected an IPv4 CIDR like 198.18.0.0/24") from None
        if not net.subnet_of(SAFE_NET):
            raise SensorError(f"lab: prefix {net} must lie inside {SAFE_NET} (addresses that never leave the lab)")
        hosts = list(net.hosts()) if net.prefixlen < 31 else []
        limit = min(len(hosts), MAX_NODES)
        if not 2 <= nodes <= limit:
            raise SensorError(f"lab: --nodes must be 2..{limit} for prefix {net}, got {nodes}")
        if vlan is not None and not 1 <= vlan <= 4094:
            raise SensorError(f"lab: --vlan must be 1..4094, got {vlan}")
        if hold_time is not None and not 3 <= hold_time <= 65535:
            raise SensorError(f"lab: --hold-time must be 3..65535 s, got {hold_time}")
        hosts6: list = []
        if ipv6 is not None:
            try:
                net6 = ipaddress.IPv6Network(ipv6, strict=False)
            except ValueError:
                raise SensorError(f"lab: bad IPv6 prefix {ipv6!r}: expected a CIDR like {DEFAULT_PREFIX6}") from None
            if not net6.subnet_of(SAFE_NET6):
                raise SensorError(f"lab: IPv6 prefix {net6} must lie inside {SAFE_NET6} (addresses that never leave "
                                  "the lab)")
            if net6.num_addresses < nodes + 2:
                raise SensorError(f"lab: IPv6 prefix {net6} is too small for {nodes} nodes")
            it = net6.hosts()
            hosts6 = [next(it) for _ in range(nodes)]
        self.ipv6 = str(net6) if ipv6 is not None else None
        self.name = name
        self.prefix = str(net)
        self.vlan = vlan
        self.hold_time = hold_time
        self.asn = asn
        self.switch_netns = f"{name}-sw"
        self.bridge = f"{name}br"
        self._nodes = [Node(f"n{i}", i, str(hosts[i - 1]), f"{name}-n{i}", f"{name}p{i}",
                            ip6=str(hosts6[i - 1]) if hosts6 else None) for i in range(1, nodes + 1)]
        self.dir = STATE_ROOT / name

    # ---- naming
    @property
    def nodes(self) -> list[str]:
        return [n.name for n in self._nodes]

    @property
    def iface(self) -> str:
        """The interface that carries the node's address (always eth0; with --vlan its frames are tagged)."""
        return "eth0"

    def node(self, ref: str | int) -> Node:
        """A node by name (n3), index (3) or IP address."""
        key = str(ref)
        for n in self._nodes:
            if key in (n.name, str(n.index), n.ip, n.ip6):
                return n
        raise SensorError(f"lab {self.name}: unknown node {key!r} (nodes: n1..n{len(self._nodes)})")

    def netns(self, node: str | int) -> str:
        return self.node(node).netns

    def ip(self, node: str | int) -> str:
        return self.node(node).ip

    def ip6(self, node: str | int) -> str | None:
        return self.node(node).ip6

    def bird_socket(self, node: str | int) -> str:
        return str(self.dir / f"{self.node(node).name}.ctl")

    def _path(self, node: Node, ext: str) -> Path:
        return self.dir / f"{node.name}.{ext}"

    def exec_argv(self, node: str | int, argv: list[str]) -> list[str]:
        """argv that runs `argv` inside the node, as on a real host."""
        return ["ip", "netns", "exec", self.netns(node), *argv]

    def state(self, node: str | int) -> str:
        return self.node(node).state

    def mac(self, node: str | int) -> str:
        """The node's eth0 MAC, lower-case colon form (as `ip link` shows it)."""
        with ipr_in(self.netns(node)) as ipr:
            return str(ipr.get_links(ipr.link_lookup(ifname="eth0")[0])[0].get_attr("IFLA_ADDRESS"))

    # ---- persistent state (so `lab down` works after a crash)
    def _save(self, phase: str) -> None:
        doc = {
            "name": self.name,
            "prefix": self.prefix,
            "vlan": self.vlan,
            "hold_time": self.hold_time,
            "asn": self.asn,
            "ipv6": self.ipv6,
            "phase": phase,
            "builder_pid": os.getpid(),
            "switch_netns": self.switch_netns,
            "bridge": self.bridge,
            "nodes": [asdict(n) for n in self._nodes],
        }
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(self.dir / "state.json")

    @classmethod
    def load(cls, name: str) -> Lab:
        """The lab NAME as `up` left it (from its state JSON)."""
        path = STATE_ROOT / name / "state.json"
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise SensorError(f"lab: no lab named {name!r} (no {path}); start one with `arp-sensor lab up`") from None
        except (OSError, ValueError) as e:
            raise SensorError(f"lab: unreadable state {path}: {e}; run `arp-sensor lab down --name {name}`") from None
        lab = cls(doc["name"], len(doc["nodes"]), doc["prefix"], doc.get("vlan"), doc.get("hold_time"), doc["asn"],
                  doc.get("ipv6"))
        lab._nodes = [Node(**n) for n in doc["nodes"]]
        lab.phase = doc.get("phase", "?")
        return lab

    @staticmethod
    def names() -> list[str]:
        """Every lab that has state on this machine or left a namespace behind."""
        found = {p.name for p in STATE_ROOT.iterdir() if p.is_dir()} if STATE_ROOT.is_dir() else set()
        for ns in netns.listnetns():
            m = re.match(r"^([a-z][a-z0-9]{0,7})-(sw|n\d+)$", ns)
            if m:
                found.add(m.group(1))
        return sorted(found)

    # ---- build
    def neigh_entries_needed(self) -> int:
        """ARP entries the full mesh holds: every node resolves every other node."""
        n = len(self._nodes)
        return n * (n - 1)

    def check_neigh_table(self, raise_limits: bool = False, say: Progress | None = None) -> None:
        """The kernel's ARP table is one table shared by every namespace, capped by init_net's gc_thresh3
        (1024 by default): a 33-node mesh already overflows it ("neighbor table overflow!") and sessions
        hang in Connect. Refuse, or with `raise_limits` raise the host's limits (never lower them)."""
        reader = NeighReader()  # the machine's table, whichever namespace asks
        try:
            table = reader.table()
        finally:
            reader.close()
        limits = {"gc_thresh2": table.gc_thresh2, "gc_thresh3": table.gc_thresh3}
        in_use = table.entries
        want = in_use + self.neigh_entries_needed() + 128  # headroom for the host's own neighbours
        if want <= limits["gc_thresh3"]:
            return
        if not raise_limits:
            raise SensorError(
                f"lab: {len(self._nodes)} nodes need {self.neigh_entries_needed()} ARP entries ({in_use} in use) "
                f"but the kernel's neighbour table, shared by all namespaces, holds {limits['gc_thresh3']} "
                f"(gc_thresh3); pass --raise-neigh-limits or sysctl -w net.ipv4.neigh.default.gc_thresh3={2 * want}",
                EXIT_ENV,
            )
        new = {"gc_thresh2": max(limits["gc_thresh2"], want), "gc_thresh3": max(limits["gc_thresh3"], 2 * want)}
        for k, v in new.items():
            Path(f"/proc/sys/net/ipv4/neigh/default/{k}").write_text(str(v))
        if say:
            say(
                f"lab {self.name}: raised net.ipv4.neigh.default.gc_thresh2/3 to {new['gc_thresh2']}/"
                f"{new['gc_thresh3']} (host-wide: the ARP table is shared by all namespaces)"
            )

    def up(self, progress: Progress | None = None, raise_neigh_limits: bool = False) -> Lab:
        """Build the lab and start every BIRD. On any failure (or Ctrl-C) nothing is left behind."""
        say = progress or (lambda _msg: None)
        require_tools()
        self.check_neigh_table(raise_neigh_limits, say)
        mine = [self.switch_netns, *(n.netns for n in self._nodes)]
        if self.dir.exists() or any(ns in netns.listnetns() for ns in mine):
            raise SensorError(
                f"lab {self.name} already exists; pick another --name or run `arp-sensor lab down --name {self.name}`"
            )
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
        try:
            self.dir.mkdir()  # atomic claim of the name against a concurrent `up`
        except FileExistsError:
            raise SensorError(f"lab {self.name} already exists (being built by someone else?)") from None
        try:
            self._save("building")  # first, so `down` finds the namespaces even if we die right now
            t0 = time.monotonic()
            self._build_switch()
            for n in self._nodes:
                self._build_node(n)
            say(f"lab {self.name}: {len(self._nodes)} namespaces and links in {time.monotonic() - t0:.1f}s")
            configs = birdconf.mesh(
                [n.ip for n in self._nodes],
                [n.ip6 for n in self._nodes if n.ip6] or None,
                asn=self.asn,
                hold_time=self.hold_time,
            )
            for n in self._nodes:
                self._path(n, "conf").write_text(
                    configs[n.ip].replace("log stderr all;", f'log "{self._path(n, "log")}" all;')
                )
            for n in self._nodes:
                self._start_bird(n)
            self._save("up")
            say(f"lab {self.name}: {len(self._nodes)} BIRDs started in {time.monotonic() - t0:.1f}s")
        except BaseException as e:
            with contextlib.suppress(Exception):
                self.down()
            if isinstance(e, (NetlinkError, OSError)):  # one line for the operator, not a traceback
                raise SensorError(f"lab {self.name}: build failed and was rolled back: {e}", EXIT_ENV) from e
            raise
        return self

    def _build_switch(self) -> None:
        netns.create(self.switch_netns)
        _write_sysctl_in(
            self.switch_netns,
            {"net/ipv6/conf/all/disable_ipv6": "1", "net/ipv6/conf/default/disable_ipv6": "1"},
        )
        with ipr_in(self.switch_netns) as sw:
            # STP off (the default) and no forward delay: ports forward as soon as they are up
            # no multicast snooping: flood solicited-node multicast like a switch without MLD snooping
            sw.link("add", ifname=self.bridge, kind="bridge", br_stp_state=0, br_forward_delay=0,
                    br_mcast_snooping=0)
            sw.link("set", index=sw.link_lookup(ifname=self.bridge)[0], state="up")

    def _build_node(self, n: Node) -> None:
        netns.create(n.netns)
        # IPv6 off: no DAD/RS/MLD chatter on the wire, so every frame in the lab is one we mean to send.
        # A short reachable time: with Calico's 240 s hold time the dead peer's neighbour entry is long
        # stale when reconnecting starts; with the lab's short hold time it would still be REACHABLE for
        # up to 45 s and the storm would start late. The broadcast cycle itself (mcast_solicit 3,
        # retrans_time 1 s) keeps Linux's defaults.
        # Dual stack: IPv6 on, but quiet: no DAD (the lab's addresses are unique by construction), no router
        # solicitations, no RAs; what remains on the wire is neighbour discovery for the peers (and MLD
        # reports when a group is joined).
        _write_sysctl_in(
            n.netns,
            {
                "net/ipv6/conf/all/disable_ipv6": "1",
                "net/ipv6/conf/default/disable_ipv6": "1",
            } if not n.ip6 else {
                "net/ipv6/conf/default/accept_dad": "0",
                "net/ipv6/conf/default/dad_transmits": "0",
                "net/ipv6/conf/default/router_solicitations": "0",
                "net/ipv6/conf/default/accept_ra": "0",
            },
        )
        with ipr_in(n.netns) as ipr:
            ipr.link(
                "add",
                ifname="eth0",
                kind="veth",
                peer={"ifname": n.port, "net_ns_fd": os.path.join(NETNS_DIR, self.switch_netns)},
            )
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.link("set", index=eth0, state="up")
            if self.vlan:
                # tagged on the wire, untagged in the stack: works without the kernel's 8021q module
                vlanwire.attach(ipr, eth0, self.vlan, n.netns)
            plen = ipaddress.IPv4Network(self.prefix).prefixlen
            ipr.addr("add", index=eth0, address=n.ip, prefixlen=plen)
            if n.ip6 and self.ipv6:
                ipr.addr("add", index=eth0, address=n.ip6, prefixlen=ipaddress.IPv6Network(self.ipv6).prefixlen,
                         flags=0x02)  # IFA_F_NODAD
        # per device: a new namespace has no neigh/default of its own (the kernel shares init_net's)
        reach = {f"net/ipv4/neigh/{self.iface}/base_reachable_time_ms": str(NEIGH_REACHABLE_MS)}
        if n.ip6:
            reach[f"net/ipv6/neigh/{self.iface}/base_reachable_time_ms"] = str(NEIGH_REACHABLE_MS)
        _write_sysctl_in(n.netns, reach)
        with ipr_in(self.switch_netns) as sw:
            br = sw.link_lookup(ifname=self.bridge)[0]
            sw.link("set", index=sw.link_lookup(ifname=n.port)[0], master=br, state="up")
        if self.vlan:
            vlanwire.tag_in_frame(self.switch_netns, n.port)

    # ---- BIRD
    def _bird_pid(self, n: Node) -> int | None:
        try:
            pid = int(self._path(n, "pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid) else None

    def _start_bird(self, n: Node) -> None:
        pidfile = self._path(n, "pid")
        pidfile.unlink(missing_ok=True)
        argv = self.exec_argv(
            n.name,
            ["bird", "-c", str(self._path(n, "conf")), "-s", self.bird_socket(n.name), "-P", str(pidfile)],
        )
        # bird daemonizes: this returns once it has forked, and the lab outlives the process that built it
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise SensorError(f"lab: bird failed to start on {n.name}: {msg[-1] if msg else r.returncode}", EXIT_ENV)
        end = time.monotonic() + 5
        while self._bird_pid(n) is None or not Path(self.bird_socket(n.name)).exists():
            if time.monotonic() > end:
                raise SensorError(f"lab: bird on {n.name} did not come up (see {self._path(n, 'log')})", EXIT_ENV)
            time.sleep(0.02)

    def _stop_bird(self, n: Node, sig: int) -> None:
        pid = self._bird_pid(n)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            _wait_dead([pid], 5)
        self._path(n, "pid").unlink(missing_ok=True)

    def stop_bird(self, node: str | int) -> None:
        """BIRD stops (its peers see the session close) but the node stays up and answers ARP."""
        n = self.node(node)
        if n.state == KILLED:
            raise SensorError(f"lab {self.name}: {n.name} is powered off; revive it first")
        self._stop_bird(n, signal.SIGTERM)
        n.state = BIRD_STOPPED
        self._save("up")

    def start_bird(self, node: str | int) -> None:
        n = self.node(node)
        if n.state == KILLED:
            raise SensorError(f"lab {self.name}: {n.name} is powered off; use revive")
        if self._bird_pid(n) is None:
            self._start_bird(n)
        n.state = UP
        self._save("up")

    def birdc(self, node: str | int, command: str = "show protocols", timeout: float = 5) -> str:
        """Raw birdc output for `command` on the node's control socket."""
        r = subprocess.run(
            ["birdc", "-s", self.bird_socket(node), *command.split()],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0:
            raise SensorError(
                f"lab: birdc on {self.node(node).name} failed: {(r.stderr or r.stdout).strip()}", EXIT_ENV
            )
        return r.stdout

    def protocols(self, node: str | int) -> dict[str, BirdProtocol]:
        """The node's BGP sessions by protocol name (Mesh_198_18_0_3 ...), read from its control socket
        with the sensor's own BIRD client (one parser for BIRD's replies)."""
        client = BirdClient(self.bird_socket(node), timeout=5)
        try:
            return {p.name: p for p in client.show_protocols() if p.is_bgp}
        except (OSError, BirdError) as e:
            raise SensorError(f"lab: BIRD on {self.node(node).name} did not answer: {e}", EXIT_ENV) from None
        finally:
            client.close()

    # ---- power
    def _set_links(self, n: Node, state: str) -> None:
        with ipr_in(self.switch_netns) as sw:
            sw.link("set", index=sw.link_lookup(ifname=n.port)[0], state=state)
        with ipr_in(n.netns) as ipr:
            for ifname in dict.fromkeys(["eth0", self.iface]):
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state=state)

    def kill(self, node: str | int) -> None:
        """Power off: the link drops first (no FIN/RST escapes), then everything in the node dies."""
        n = self.node(node)
        if n.state == KILLED:
            return
        self._set_links(n, "down")
        pids = netns.ns_pids().get(n.netns, [])
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_dead(pids, 5)
        self._path(n, "pid").unlink(missing_ok=True)
        n.state = KILLED
        self._save("up")

    def revive(self, node: str | int, mac: str | None = None) -> None:
        """Power on: link up, BIRD started (a no-op for a node that is up). `mac`: come back with this
        MAC on eth0 (new hardware behind the same IP, e.g. a replaced NIC); only for a powered-off node."""
        n = self.node(node)
        if mac is not None:
            if n.state != KILLED:
                raise SensorError(f"lab {self.name}: {n.name} is not powered off; kill it before giving it a new MAC")
            with ipr_in(n.netns) as ipr:  # the link is down: the address changes before anyone sees it
                ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], address=parse_mac(mac))
        if n.state == KILLED:
            # its neighbour table went with the link (the kernel flushes it on down), as in a reboot
            self._set_links(n, "up")
        if self._bird_pid(n) is None:
            self._start_bird(n)
        n.state = UP
        self._save("up")

    # ---- observe
    def status(self) -> dict:
        """Per node: state, BIRD pid, and every BGP session's state/info."""
        live = {n.name for n in self._nodes if n.state == UP}
        out = []
        for n in self._nodes:
            pid = self._bird_pid(n)
            row: dict = {"node": n.name, "ip": n.ip, "netns": n.netns, "state": n.state, "bird_pid": pid}
            if n.ip6:
                row["ip6"] = n.ip6
            if pid is not None:
                try:
                    protos = self.protocols(n.name)
                except (SensorError, subprocess.TimeoutExpired) as e:
                    row["error"] = str(e)
                    protos = {}
                row["sessions"] = {name: {"state": p.state, "info": p.info} for name, p in protos.items()}
                # Counted over the same peers (both families in a dual-stack lab): sessions to live nodes that
                # are Established, out of the live nodes. A session to a powered-off node stays Established
                # until the hold timer fires: it is `stale`, not one more than expected.
                peers = {birdconf.protocol_name(a): o for o in self._nodes if o.name != n.name
                         for a in (o.ip, o.ip6) if a}
                est = {name for name, p in protos.items() if p.established and name in peers}
                row["established"] = sum(1 for name in est if peers[name].name in live)
                row["expected"] = sum(1 for o in peers.values() if o.name in live) if n.name in live else 0
                row["stale"] = sum(1 for name in est if peers[name].name not in live)
            out.append(row)
        return {
            "name": self.name,
            "prefix": self.prefix,
            "ipv6": self.ipv6,
            "vlan": self.vlan,
            "hold_time": self.hold_time,
            "nodes": out,
        }

    def not_established(self) -> list[str]:
        """Sessions between two live nodes that are not Established, as 'n1->n3 (info)'."""
        live = [n for n in self._nodes if n.state == UP]
        missing = []
        for n in live:
            try:
                protos = self.protocols(n.name)
            except (SensorError, subprocess.TimeoutExpired):
                missing.append(f"{n.name}: no answer on {self.bird_socket(n.name)}")
                continue
            for o in live:
                if o is n:
                    continue
                for ip in (o.ip, o.ip6) if o.ip6 else (o.ip,):
                    p = protos.get(birdconf.protocol_name(ip))
                    if p is None or not p.established:
                        missing.append(f"{n.name}->{o.name} {ip} ({p.info if p else 'missing'})")
        return missing

    def wait_established(self, timeout: float = 60, progress: Progress | None = None) -> float:
        """Wait until every session between live nodes is Established; returns the seconds it took."""
        t0 = time.monotonic()
        last_report = t0
        total = sum(1 for n in self._nodes if n.state == UP)
        total = total * (total - 1) * (2 if self.ipv6 else 1)
        while True:
            missing = self.not_established()
            now = time.monotonic()
            if not missing:
                return now - t0
            if now - t0 > timeout:
                raise SensorError(
                    f"lab {self.name}: {len(missing)}/{total} sessions not Established after {timeout:.0f}s, "
                    f"e.g. {missing[0]}",
                    EXIT_INTERNAL,
                )
            if progress and now - last_report >= 1:
                progress(f"lab {self.name}: {total - len(missing)}/{total} sessions Established ({now - t0:.0f}s)")
                last_report = now
            time.sleep(0.3)

    def arp_capture(self) -> ArpCapture:
        """Capture ARP and neighbour solicitations on the switch's bridge (what every port of the L2 domain
        receives)."""
        return ArpCapture(self.switch_netns, self.bridge)

    def count_arp(self, seconds: float) -> Counter[str]:
        """ARP requests per target IP seen on the bridge during `seconds`."""
        with self.arp_capture() as cap:
            time.sleep(seconds)
        return cap.requests()

    # ---- tear down
    def down(self) -> None:
        Lab.destroy(self.name)

    @staticmethod
    def destroy(name: str) -> list[str]:
        """Remove every trace of lab NAME (idempotent, works without state). Returns what was removed."""
        if not NAME_RE.match(name or ""):
            raise SensorError(f"lab: bad name {name!r}")
        state_dir = STATE_ROOT / name
        pat = re.compile(rf"^{re.escape(name)}-(sw|n\d+)$")
        spaces = [ns for ns in netns.listnetns() if pat.match(ns)]
        victims: set[int] = set()
        pids_by_ns = netns.ns_pids()
        for ns in spaces:
            victims.update(pids_by_ns.get(ns, []))
        # processes whose netns is already unnamed (or never got a pid file) still name our state dir
        marker = (str(state_dir) + "/").encode()
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        if marker in f.read():
                            victims.add(int(entry))
                except OSError:
                    continue
        victims.discard(os.getpid())
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        _wait_dead(sorted(victims), 5)
        removed = []
        # nodes first: deleting a node's namespace deletes its veth pair, then the bridge goes with the switch
        for ns in sorted(spaces, key=lambda s: s.endswith("-sw")):
            with contextlib.suppress(FileNotFoundError):
                netns.remove(ns)
                removed.append(ns)
        if state_dir.is_dir():
            shutil.rmtree(state_dir, ignore_errors=True)
            removed.append(str(state_dir))
        return removed


# `-e` lines read "... ethertype ARP (0x0806), length 42: Request who-has 198.18.0.3 tell 198.18.0.5, ..."
# (with "vlan 100, p 0, ethertype ARP" in between when tagged), and for IPv6 neighbour solicitations
# "... 2001:db8::2 > ff02::1:ff00:1: ICMP6, neighbor solicitation, who has 2001:db8::1, length 32".
_TCPDUMP_RE = re.compile(
    r"^(?P<ts>\d+\.\d+) .*?(?:\b(?P<kind>Request|Reply) (?:who-has (?P<target>[\d.]+)"
    r"(?: \([^)]*\))? tell (?P<sender>[\d.]+)|(?P<rtarget>[\d.]+) is-at)"
    r"|(?P<src6>[0-9a-f:]+) > [0-9a-f:]+: ICMP6, neighbor solicitation, who has (?P<ns>[0-9a-f:]+))"
)


@dataclass
class ArpFrame:
    ts: float
    kind: str  # Request or Reply
    target: str  # the IP asked for (requests) or announced (replies)
    sender: str | None


def parse_tcpdump_line(line: str) -> ArpFrame | None:
    """One line of `tcpdump -nn -tt -e -l` output, tagged or not. A neighbour solicitation is a Request
    (target: the address solicited)."""
    m = _TCPDUMP_RE.search(line)
    if not m:
        return None
    if m["ns"]:
        return ArpFrame(float(m["ts"]), "Request", m["ns"], m["src6"])
    if m["kind"] == "Request":
        return ArpFrame(float(m["ts"]), "Request", m["target"], m["sender"])
    return ArpFrame(float(m["ts"]), "Reply", m["rtarget"], None)


class ArpCapture:
    """tcpdump on the lab's bridge inside the switch namespace; bounded by the `with` block.

    The bridge's own port receives every broadcast the switch floods, so this sees each ARP request once.
    """

    def __init__(self, switch_netns: str, bridge: str) -> None:
        self.argv = [
            "ip",
            "netns",
            "exec",
            switch_netns,
            "tcpdump",
            "-i",
            bridge,
            "-nn",
            "-tt",
            "-e",
            "-l",
            # ARP, and IPv6 neighbour solicitations right after the IPv6 header (what the sensor counts)
            "arp or (icmp6 and ip6[40] == 135) or (vlan and (arp or (icmp6 and ip6[40] == 135)))",
        ]
        self.frames: list[ArpFrame] = []
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 10) -> ArpCapture:
        if shutil.which("tcpdump") is None:
            raise SensorError("lab: tcpdump not found in PATH (scripts/install-system.sh installs it)", EXIT_ENV)
        self._proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # tcpdump says "listening on" once the capture is live: only then is a count meaningful
        assert self._proc.stderr is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            line = self._proc.stderr.readline()
            if "listening on" in line:
                break
            if not line and self._proc.poll() is not None:
                raise SensorError(f"lab: tcpdump on the bridge failed (exit {self._proc.returncode})", EXIT_ENV)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            f = parse_tcpdump_line(line)
            if f:
                self.frames.append(f)

    def stop(self) -> list[ArpFrame]:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._reader:
                self._reader.join(5)
            self._proc = None
        return self.frames

    def requests(self, since: float = 0.0) -> Counter[str]:
        """ARP requests and neighbour solicitations per target IP (optionally only those at or after epoch
        time `since`)."""
        return Counter(f.target for f in list(self.frames) if f.kind == "Request" and f.ts >= since)

    def __enter__(self) -> ArpCapture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
