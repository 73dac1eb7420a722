"""The VM lab as `make vm-test` runs it: libvirtd, virtlogd, vagrant and every VM network inside a network
namespace this code creates, so no bridge, dnsmasq, NAT rule or libvirt network lands in the machine's own.

    lab = VmLab.start(tmp)          # namespace, virtlogd, libvirtd, a storage pool of its own
    lab.vagrant("up")               # runs inside the namespace, VAGRANT_HOME in the cache (the box stays)
    lab.ssh("node1", "sudo birdc ...")
    lab.stop()                      # domains, networks, pool, qemu, dnsmasq, daemons, namespace: all gone

`python -m tests.artifacts.vmlab up|ssh NODE CMD|down DIR` drives one by hand while developing."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.fixtures_netns import REPO, unique

CACHE = Path(os.environ.get("ARP_SENSOR_CACHE", "/var/cache/arp-sensor"))
BOX_NAME = "arp-sensor/debian12"
URI = "qemu:///system"
OUR_NETS = ("arp-sensor-lab", "arp-sensor-mgmt")
DOMAIN_PREFIX = "arp-lab-"  # the Vagrantfile's libvirt default_prefix


def sh(*cmd: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)[:200]} exited {r.returncode}: {(r.stderr or r.stdout).strip()[-2000:]}")
    return r


def kvm_usable() -> bool:
    """The Vagrantfile's rule: /dev/kvm and the CPU's VT-x/AMD-V flag (a nested guest often has only the first)."""
    flags = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    return os.access("/dev/kvm", os.R_OK) and bool(flags and re.search(r"\b(vmx|svm)\b", flags.group(1)))


def root_ns_state() -> dict[str, object]:
    """What must never change in the machine's own namespace: its links, firewall rules, dnsmasq there."""
    links = sorted(x["ifname"] for x in json.loads(sh("ip", "-j", "link", "show").stdout))
    rules = sh("iptables-save", check=False).stdout if shutil.which("iptables-save") else ""
    nft = sh("nft", "list", "ruleset", check=False).stdout if shutil.which("nft") else ""
    strip = lambda t: "\n".join(x for x in t.splitlines() if not x.startswith("#"))  # noqa: E731 (timestamps)
    root_net = os.stat("/proc/self/ns/net").st_ino  # the test runs in the machine's own namespace
    dnsmasq = [p for p in _pids("dnsmasq") if _netns_of(p) == root_net]
    return {"links": links, "iptables": strip(rules), "nft": nft, "dnsmasq_in_root_ns": dnsmasq}


def _pids(name: str) -> list[int]:
    """Live processes of that name (a zombie waiting for its reaper is not one)."""
    r = sh("pgrep", "-x", name, check=False)
    out = []
    for pid in map(int, r.stdout.split()):
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.append(pid)
        except OSError:
            pass
    return out


def _netns_of(pid: int) -> int | None:
    """The inode of a process's network namespace (None once it is gone)."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _netns_inode(name: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return None


@dataclass
class VmLab:
    tmp: Path
    ns: str
    nodes: int = 3
    memory: int = 768
    pool: str = ""
    env: dict[str, str] = field(default_factory=dict)
    daemon_pids: dict[str, int] = field(default_factory=dict)
    log: Path | None = None

    # -- start -------------------------------------------------------------------------------------------
    @classmethod
    def start(cls, tmp: Path, nodes: int = 3, memory: int = 768) -> VmLab:
        for d in ("libvirtd", "virtlogd"):
            if _pids(d):
                raise AssertionError(f"a {d} already runs on this machine (pid {_pids(d)}): the test starts its own")
        lab = cls(tmp=tmp, ns=unique("arpvm-"), nodes=nodes, memory=memory)
        lab.pool = f"arp-vmtest-{lab.ns[-6:]}"
        lab.log = tmp / "vagrant.log"
        sh("ip", "netns", "add", lab.ns)
        try:
            sh("ip", "-n", lab.ns, "link", "set", "lo", "up")
            for d in ("virtlogd", "libvirtd"):
                sh("ip", "netns", "exec", lab.ns, d, "-d")
                pid = int(Path(f"/run/{d}.pid").read_text())
                lab.daemon_pids[d] = pid
            lab._wait_libvirt()
            # qemu runs as libvirt-qemu: the pool goes where that user can reach, not under a 0700 tmp dir
            pool_dir = Path("/var/lib/libvirt/images") / lab.pool
            pool_dir.mkdir(parents=True)
            lab.virsh("pool-define-as", lab.pool, "dir", "--target", str(pool_dir))
            lab.virsh("pool-start", lab.pool)
            lab.env = {
                "VAGRANT_HOME": str(CACHE / "vagrant.d"), "VAGRANT_DOTFILE_PATH": str(tmp / "dot-vagrant"),
                "VAGRANT_DEFAULT_PROVIDER": "libvirt", "VAGRANT_CHECKPOINT_DISABLE": "1",
                "LIBVIRT_DEFAULT_URI": URI, "ARP_LAB_BOX": BOX_NAME, "ARP_LAB_NODES": str(nodes),
                "ARP_LAB_MEMORY": str(memory), "ARP_LAB_POOL": lab.pool,
            }
        except BaseException:
            lab.stop()
            raise
        return lab

    def ensure_box(self) -> str:
        """vagrant/box/build.sh (cached), added to VAGRANT_HOME again only when the build changed."""
        r = sh(str(REPO / "vagrant/box/build.sh"), timeout=3600)
        path = r.stdout.strip().splitlines()[-1]
        marker = CACHE / "vagrant.d" / "arp-sensor-box.added"
        listed = BOX_NAME in self.vagrant("box", "list", check=False).stdout
        if not listed or not marker.exists() or marker.read_text() != path:
            self.vagrant("box", "add", "--force", "--name", BOX_NAME, path, timeout=1200)
            marker.write_text(path)
        return r.stdout.strip().splitlines()[0]

    def _wait_libvirt(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.virsh("version", check=False).returncode != 0:
            assert time.monotonic() < deadline, "libvirtd did not answer"
            time.sleep(0.5)

    # -- use ---------------------------------------------------------------------------------------------
    def virsh(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return sh("virsh", "-c", URI, *args, check=check, timeout=timeout)

    def in_ns(self, *cmd: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.ns, *cmd, check=check, timeout=timeout, **kw)

    def vagrant(self, *args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
        """vagrant inside the namespace; its output goes to the log as it runs (and is returned)."""
        env = {**os.environ, **self.env}
        t0 = time.monotonic()
        out = self.tmp / "vagrant.last"
        with open(out, "w") as f:
            r = subprocess.run(["ip", "netns", "exec", self.ns, "vagrant", *args], cwd=REPO / "vagrant", env=env,
                               stdout=f, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        text = out.read_text(errors="replace")
        with open(self.log, "a") as f:  # type: ignore[arg-type]
            f.write(f"\n$ vagrant {' '.join(args)}  ({time.monotonic() - t0:.0f} s, exit {r.returncode})\n{text}")
        if check and r.returncode != 0:
            raise AssertionError(f"vagrant {' '.join(args)} exited {r.returncode}: {text[-3000:]}")
        return subprocess.CompletedProcess(r.args, r.returncode, text, "")

    def ssh_config(self) -> Path:
        cfg = self.tmp / "ssh_config"
        cfg.write_text(self.vagrant("ssh-config").stdout)
        return cfg

    def ssh(self, node: str, cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cfg = self.tmp / "ssh_config"
        if not cfg.exists():
            self.ssh_config()
        return self.in_ns("ssh", "-F", str(cfg), "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", node, cmd,
                          check=check, timeout=timeout)

    def domains(self) -> list[str]:
        return [d for d in self.virsh("list", "--all", "--name").stdout.split() if d.startswith(DOMAIN_PREFIX)]

    def networks(self) -> list[str]:
        return [n for n in self.virsh("net-list", "--all", "--name").stdout.split() if n in OUR_NETS]

    def volumes(self) -> list[str]:
        r = self.virsh("vol-list", self.pool, check=False)
        return [ln.split()[0] for ln in r.stdout.splitlines()[2:] if ln.strip()]

    def bridge(self, net: str) -> str:
        xml = self.virsh("net-dumpxml", net).stdout
        m = re.search(r"<bridge name='([^']+)'", xml)
        assert m, xml
        return m.group(1)

    def dnsmasq_in_lab_ns(self) -> list[int]:
        return [p for p in _pids("dnsmasq") if _netns_of(p) == _netns_inode(self.ns)]

    def qemu_pids(self) -> list[int]:
        return [p for p in _pids("qemu-system-x86_64") if _netns_of(p) == _netns_inode(self.ns)]

    # -- stop --------------------------------------------------------------------------------------------
    def stop(self) -> list[str]:
        """Everything this lab made goes, whatever state it is in; returns what had to be forced."""
        forced = []
        if self.daemon_pids.get("libvirtd") and _netns_of(self.daemon_pids["libvirtd"]):
            for dom in self.virsh("list", "--all", "--name", check=False).stdout.split():
                if not dom.startswith(DOMAIN_PREFIX):
                    continue  # only the lab's own: libvirt's config is the machine's
                forced.append(f"domain {dom}")
                self.virsh("destroy", dom, check=False)
                self.virsh("undefine", dom, "--remove-all-storage", "--nvram", check=False)
            for net in self.virsh("net-list", "--all", "--name", check=False).stdout.split():
                if net not in OUR_NETS:
                    continue
                forced.append(f"network {net}")
                self.virsh("net-destroy", net, check=False)
                self.virsh("net-undefine", net, check=False)
            if self.pool:
                self.virsh("pool-destroy", self.pool, check=False)
                self.virsh("pool-undefine", self.pool, check=False)
        if self.pool:
            shutil.rmtree(Path("/var/lib/libvirt/images") / self.pool, ignore_errors=True)
        ns_link = f"/run/netns/{self.ns}"
        ns_id = _netns_inode(self.ns)
        # qemu and dnsmasq of this namespace (libvirtd's children may outlive it), then the daemons
        for name in ("qemu-system-x86_64", "dnsmasq"):
            for pid in _pids(name):
                if ns_id and _netns_of(pid) == ns_id:
                    forced.append(f"{name} {pid}")
                    os.kill(pid, signal.SIGKILL)
        for d in ("libvirtd", "virtlogd"):
            pid = self.daemon_pids.pop(d, None)
            if pid and _netns_of(pid) is not None:
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    if _netns_of(pid) is None:
                        break
                    time.sleep(0.1)
                else:
                    os.kill(pid, signal.SIGKILL)
        if os.path.exists(ns_link):
            sh("ip", "netns", "del", self.ns, check=False)
        return forced


def main(argv: list[str]) -> int:
    """Development helper: `up` starts a lab and prints its state dir; `ssh`, `vagrant`, `down` use it."""
    state = Path(os.environ.get("ARP_VMLAB_STATE", "/tmp/arp-vmlab.json"))
    if argv[0] == "up":
        tmp = Path(sh("mktemp", "-d", "/var/tmp/arp-vmlab.XXXXXX").stdout.strip())
        lab = VmLab.start(tmp)
        state.write_text(json.dumps({"tmp": str(tmp), "ns": lab.ns, "pool": lab.pool, "env": lab.env,
                                     "pids": lab.daemon_pids}))
        print(tmp, lab.ns)
        return 0
    s = json.loads(state.read_text())
    lab = VmLab(tmp=Path(s["tmp"]), ns=s["ns"], pool=s["pool"], env=s["env"], daemon_pids=s["pids"],
                log=Path(s["tmp"]) / "vagrant.log")
    if argv[0] == "vagrant":
        r = lab.vagrant(*argv[1:], check=False)
        print(r.stdout, r.stderr)
        return r.returncode
    if argv[0] == "ssh":
        r = lab.ssh(argv[1], argv[2], check=False, timeout=600)
        print(r.stdout, r.stderr)
        return r.returncode
    if argv[0] == "down":
        print("forced:", lab.stop())
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
