"""`arp-sensor doctor`: what works on this host and the exact fix for what does not.

Cheap checks read /proc and /sys; the BPF features (load, XDP, clsact, batch map reads) are proven for
real: a tiny program is loaded and attached to a veth inside a throwaway network namespace, which is
deleted afterwards. Exit 0 when everything the sensor needs works (warnings allowed), 3 otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import secrets
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import click

from sensor.errors import EXIT_ENV, EXIT_OK

MIN_KERNEL = (5, 10)
OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | skip (not run: something it depends on failed)
    detail: str
    fix: str = ""


def kernel_version(release: str | None = None) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def check_kernel() -> Check:
    rel = os.uname().release
    v = kernel_version(rel)
    if v >= MIN_KERNEL:
        return Check("kernel", OK, f"{rel} (>= {MIN_KERNEL[0]}.{MIN_KERNEL[1]})")
    return Check("kernel", FAIL, f"{rel} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]} (batch map reads, "
                 "BPF spin locks, CAP_BPF)", "boot a kernel >= 5.10 (Debian 11+, Ubuntu 22.04+, RHEL 9+)")


def check_btf() -> Check:
    if os.path.exists("/sys/kernel/btf/vmlinux"):
        return Check("btf", OK, "/sys/kernel/btf/vmlinux present")
    return Check("btf", WARN, "no /sys/kernel/btf/vmlinux: the kernel was built without CONFIG_DEBUG_INFO_BTF "
                 "(bcc compiles against headers and does not need it; bpftool and CO-RE tools do)",
                 "use a distribution kernel with CONFIG_DEBUG_INFO_BTF=y if you want BTF-based tools")


def check_bpf_syscall() -> Check:
    """bpf(BPF_PROG_GET_FD_BY_ID, id 0): ENOSYS means no bpf() at all; anything else means it exists."""
    from sensor.kernel import bpfsys

    attr = ctypes.create_string_buffer(128)
    try:
        bpfsys._bpf(bpfsys.BPF_PROG_GET_FD_BY_ID, attr)
    except OSError as e:
        if e.errno == errno.ENOSYS:
            return Check("bpf-syscall", FAIL, "the kernel has no bpf() system call",
                         "boot a kernel built with CONFIG_BPF_SYSCALL=y")
    except Exception as e:  # an architecture bpfsys does not know
        return Check("bpf-syscall", WARN, f"cannot test bpf(): {e}")
    disabled = _read("/proc/sys/kernel/unprivileged_bpf_disabled")
    return Check("bpf-syscall", OK, "bpf() available" + (f" (unprivileged_bpf_disabled={disabled})"
                                                          if disabled else ""))


def check_jit() -> Check:
    v = _read("/proc/sys/net/core/bpf_jit_enable")
    if v in ("1", "2"):
        return Check("jit", OK, f"net.core.bpf_jit_enable={v}")
    if v == "0":
        return Check("jit", WARN, "the BPF JIT is off: programs are interpreted (several times slower per packet)",
                     "sysctl -w net.core.bpf_jit_enable=1 (persist in /etc/sysctl.d/)")
    return Check("jit", WARN, "cannot read /proc/sys/net/core/bpf_jit_enable",
                 "check it as root: sysctl net.core.bpf_jit_enable")


def check_privileges() -> Check:
    from sensor.kernel.datapath import privileges_problem

    problem = privileges_problem()
    if problem is None:
        return Check("privileges", OK, "root" if os.geteuid() == 0 else "CAP_BPF/CAP_PERFMON/CAP_NET_ADMIN")
    return Check("privileges", FAIL, problem, "run as root (sudo arp-sensor ...), or grant the capabilities: "
                 "deploy/systemd/arp-sensor.service does (CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN ...)")


def check_headers() -> Check:
    from sensor.kernel.datapath import kernel_headers_problem

    problem = kernel_headers_problem()
    if problem is None:
        src = os.environ.get("BCC_KERNEL_SOURCE") or f"/lib/modules/{os.uname().release}/build"
        return Check("kernel-headers", OK, f"{src}")
    if os.environ.get("BCC_KERNEL_SOURCE"):
        fix = "unset BCC_KERNEL_SOURCE, or point it at a directory with the kernel's include/"
    else:
        fix = (f"apt-get install linux-headers-{os.uname().release} (Debian/Ubuntu), dnf install kernel-devel "
               "(RHEL/Fedora); in a checkout: make install")
    return Check("kernel-headers", FAIL, problem, fix)


def check_bcc() -> Check:
    spec = importlib.util.find_spec("bcc")
    if spec is None:
        return Check("bcc", FAIL, f"python module bcc not importable by {sys.executable}",
                     "apt-get install python3-bpfcc, and use /usr/bin/python3 or a venv made with "
                     "--system-site-packages (make install does both); the PyPI package 'bcc' is another project")
    return Check("bcc", OK, f"{os.path.dirname(spec.origin or '?')}")


def check_bpffs() -> Check:
    try:
        with open("/proc/self/mounts") as f:
            mounted = any(line.split()[1:3] == ["/sys/fs/bpf", "bpf"] for line in f)
    except OSError:
        mounted = False
    if mounted:
        return Check("bpffs", OK, "/sys/fs/bpf mounted")
    return Check("bpffs", WARN, "/sys/fs/bpf is not a bpf filesystem (arp-sensor does not pin maps today; "
                 "bpftool and pinned-map tools need it)", "mount -t bpf bpf /sys/fs/bpf")


def check_pyroute2() -> Check:
    try:
        v = importlib.metadata.version("pyroute2")
    except importlib.metadata.PackageNotFoundError:
        return Check("pyroute2", FAIL, "pyroute2 not installed", "pip install 'pyroute2>=0.7.12,<0.8' (make install)")
    if kernel_version(v) == (0, 7):
        return Check("pyroute2", OK, v)
    return Check("pyroute2", WARN, f"{v}: arp-sensor is tested with 0.7.x", "pip install 'pyroute2>=0.7.12,<0.8'")


def check_bird(sockets: list[str], explicit: bool) -> list[Check]:
    from sensor.peers.bird import BirdClient, BirdError

    out = []
    for path in sockets:
        name = f"bird:{os.path.basename(path)}"
        if not os.path.exists(path):
            if explicit:
                out.append(Check(name, FAIL, f"{path}: no such socket",
                                 "start BIRD (calico-node) or fix --bird-socket"))
            else:
                out.append(Check(name, WARN, f"{path} not found: not a Calico BGP node, or calico-node is not "
                                 "running here; ARP counting works, BGP verdicts need it",
                                 "run on a Calico node, or pass --bird-socket PATH to your BIRD's control socket"))
            continue
        client = BirdClient(path, timeout=1.0)
        try:
            protos = client.show_protocols(deadline=time.monotonic() + 2.0)
        except BirdError as e:
            out.append(Check(name, FAIL if explicit else WARN, str(e),
                             "check that BIRD is running and that this user may open the socket (root)"))
            continue
        finally:
            client.close()
        bgp = [p for p in protos if p.is_bgp]
        est = sum(1 for p in bgp if p.bgp_state == "Established")
        out.append(Check(name, OK, f"{path}: {client.version or 'BIRD'}, {len(bgp)} BGP peers, {est} Established"))
    return out


def probe_datapath(depends: list[Check]) -> list[Check]:
    """Load + attach for real, in a namespace of our own (never on the host's interfaces)."""
    names = ("load", "xdp", "xdp-link", "clsact", "batch")
    failed = [c.name for c in depends if c.status == FAIL]
    if failed:
        return [Check(f"bpf-{n}", SKIP, f"not probed: {', '.join(failed)} failed") for n in names]
    ns = f"asdoc{secrets.token_hex(3)}"
    code = ("import json,sys\n"
            "from pyroute2 import IPRoute\n"
            "with IPRoute() as ipr:\n"
            "    ipr.link('add', ifname='dprobe0', kind='veth', peer='dprobe1')\n"
            "    for n in ('dprobe0','dprobe1'):\n"
            "        ipr.link('set', index=ipr.link_lookup(ifname=n)[0], state='up')\n"
            "from sensor.kernel.datapath import probe_features\n"
            "print(json.dumps(probe_features('dprobe0')))\n")
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, text=True, timeout=30)
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True,
                           text=True, timeout=180, env=env)
    except (OSError, subprocess.SubprocessError) as e:
        err = getattr(e, "stderr", None) or str(e)
        return [Check(f"bpf-{n}", FAIL, f"cannot create a test network namespace: {err.strip()}",
                      "needs iproute2 (`ip`) and root") for n in names]
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    try:
        res = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return [Check("bpf-load", FAIL, f"probe crashed: {last}", "report this with `arp-sensor doctor --json`")]
    fixes = {
        "load": "see the compiler error; usually kernel headers that do not match the running kernel",
        "xdp": "a kernel without XDP (CONFIG_XDP_SOCKETS/CONFIG_BPF_SYSCALL): run with --attach tc",
        "xdp-link": "kernel < 5.9: XDP is attached through netlink, so after a crash the next start can only "
                    "recognise the stale program with CAP_SYS_ADMIN (or run `arp-sensor detach` as root)",
        "clsact": "load the sch_ingress/cls_bpf modules (modprobe sch_ingress cls_bpf) or enable "
                  "CONFIG_NET_CLS_BPF and CONFIG_NET_SCH_INGRESS",
        "batch": "BPF_MAP_LOOKUP_BATCH needs kernel >= 5.6",
    }
    out = []
    for n in names:
        if n not in res:
            out.append(Check(f"bpf-{n}", SKIP, "not probed: loading failed"))
            continue
        ok, detail = res[n]
        bad = WARN if n == "xdp-link" else FAIL  # the sensor falls back to netlink XDP
        out.append(Check(f"bpf-{n}", OK if ok else bad, detail, "" if ok else fixes[n]))
    return out


XDP_MODES = {"xdp": "driver (native) mode", "xdpgeneric": "generic (skb) mode", "xdpoffload": "offload mode",
             "xdpmulti": "several modes"}


def check_attached(interfaces: list[str]) -> list[Check]:
    """What is attached to the watched interfaces now, and in which XDP mode (a running sensor, or what a
    killed one left): `--xdp-mode auto` picks driver mode where the NIC's driver has it, else generic."""
    import socket

    from pyroute2 import IPRoute

    from sensor.kernel.bpfsys import prog_name_by_id
    from sensor.kernel.datapath import PROG_XDP, TC_PARENT_EGRESS, TC_PARENT_INGRESS, tc_filters, xdp_query

    out = []
    for ifname in interfaces:
        name = f"attached-{ifname}"
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError:
            out.append(Check(name, WARN, f"{ifname}: no such interface here", "check `interface` in the config"))
            continue
        prog_id, mode = xdp_query(ifindex)
        parts = []
        if prog_id:
            owner = "arp-sensor" if prog_name_by_id(prog_id) == PROG_XDP else "another program's"
            parts.append(f"{owner} XDP in {XDP_MODES.get(str(mode), str(mode))} (prog id {prog_id})")
        with IPRoute() as ipr:
            for hook, parent in (("ingress", TC_PARENT_INGRESS), ("egress", TC_PARENT_EGRESS)):
                filters = tc_filters(ipr, ifindex, parent)
                if filters:
                    parts.append(f"tc {hook}: {len(filters)} filter(s)")
        out.append(Check(name, OK, f"{ifname}: " + ("; ".join(parts) if parts else "nothing attached")))
    return out


def run_checks(bird_sockets: list[str], interfaces: list[str] | None = None) -> list[Check]:
    from sensor.peers.book import CALICO_BIRD_SOCKETS

    checks = [check_kernel(), check_btf(), check_bpf_syscall(), check_jit()]
    base = [check_privileges(), check_headers(), check_bcc()]
    checks += base
    checks += probe_datapath([checks[0], checks[2], *base])
    checks += [check_bpffs(), check_pyroute2()]
    checks += check_bird(list(bird_sockets) or list(CALICO_BIRD_SOCKETS), explicit=bool(bird_sockets))
    checks += check_attached(list(interfaces or []))
    return checks


def _read(path: str) -> str | None:
    with contextlib.suppress(OSError), open(path) as f:
        return f.read().strip()
    return None


COLORS = {OK: "green", WARN: "yellow", FAIL: "red", SKIP: "bright_black"}


@click.command()
@click.option("--bird-socket", "bird_sockets", multiple=True, metavar="PATH",
              help="BIRD control socket to check (repeatable); a missing one is a failure. "
                   "Default: /var/run/calico/bird.ctl and bird6.ctl, a warning when absent.")
@click.option("-i", "--interface", "interfaces", multiple=True, metavar="IFACE",
              help="Interface to report what is attached to, and the XDP mode (repeatable; the config file's "
                   "top-level `interface` applies).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per check, for scripts.")
def doctor(bird_sockets: tuple[str, ...], interfaces: tuple[str, ...], as_json: bool) -> None:
    """Check this host: kernel, BPF features, headers for bcc, privileges, BIRD sockets.

    Prints each check as ok / warn / fail with the exact fix. The BPF features (loading a program,
    XDP, tc clsact, batch map reads) are tested for real on a veth inside a throwaway network
    namespace, which is removed afterwards; nothing touches the host's interfaces.

    \b
    Examples:
      sudo arp-sensor doctor
      sudo arp-sensor doctor --bird-socket /var/run/calico/bird.ctl
      sudo arp-sensor doctor -i eth0            # what is attached to eth0, XDP driver or generic mode
      arp-sensor doctor --json | jq -r 'select(.status=="fail") | .fix'

    Exit codes: 0 everything arp-sensor needs works (warnings are fine), 3 something it needs fails.
    """
    checks = run_checks(list(bird_sockets), list(interfaces))
    failed = [c for c in checks if c.status == FAIL]
    if as_json:
        for c in checks:
            click.echo(json.dumps(asdict(c)))
    else:
        click.echo(f"arp-sensor doctor: Linux {os.uname().release} {platform.machine()}, "
                   f"Python {platform.python_version()}")
        width = max(len(c.name) for c in checks)
        for c in checks:
            click.echo(f"  {click.style(c.status.ljust(4), fg=COLORS[c.status])}  {c.name.ljust(width)}  {c.detail}")
            if c.fix and c.status in (WARN, FAIL):
                click.echo(f"  {'':4}  {'':{width}}  fix: {c.fix}")
        warned = sum(1 for c in checks if c.status == WARN)
        if failed:
            click.echo(f"{len(failed)} failed, {warned} warnings: arp-sensor cannot run here until the "
                       "failures are fixed")
        else:
            click.echo(f"all needed checks passed ({warned} warnings): arp-sensor can run here")
    sys.exit(EXIT_ENV if failed else EXIT_OK)
