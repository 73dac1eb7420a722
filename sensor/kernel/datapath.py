"""Loads the kernel program with bcc and attaches it to interfaces: the only module that imports bcc.

Attach rules (docs/architecture.md, docs/reliability.md "Crash recovery"):
- XDP through a BPF link (BPF_LINK_CREATE, kernel >= 5.9): the kernel detaches it when the sensor's
  last fd closes, so a crashed sensor leaves no XDP program behind, under any capability set. A link
  never replaces an attached program (EBUSY), and netlink cannot replace or remove it.
- XDP through netlink only on kernels without XDP links: never replace a program someone else attached
  (XDP_FLAGS_UPDATE_IF_NOEXIST); one left by a crashed arp-sensor (same program name, and no live sensor
  holds the interface lock) is replaced. Reading a program's name by id needs CAP_SYS_ADMIN.
- tc: our own clsact filters at our own priorities, one per ethertype (ARP, 802.1Q, 802.1ad, IPv6) so
  the program only runs for frames that can be ARP or neighbour discovery; a foreign filter at one of
  our priorities is a conflict; the clsact qdisc is removed only if we created it and nothing else uses it.
- Detach removes exactly what this process attached.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
from dataclasses import dataclass, field

from sensor.errors import EXIT_CONFLICT, EXIT_ENV, EXIT_USAGE, SensorError
from sensor.kernel.layout import (
    BPF_DIR,
    DEFAULT_MAX_ENTRIES,
    PROG_LIMCTL,
    PROG_TC_EG,
    PROG_TC_IN,
    PROG_XDP,
    PROGRAM,
    default_fast_slots,
)
from sensor.kernel.loader import bpf_class
from sensor.kernel.reader import MapFds
from sensor.model import LimitFds

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2

ETH_P_ARP, ETH_P_8021Q, ETH_P_8021AD, ETH_P_IPV6 = 0x0806, 0x8100, 0x88A8, 0x86DD
TC_PARENT_INGRESS, TC_PARENT_EGRESS = 0xFFFFFFF2, 0xFFFFFFF3
# Our tc priorities: high numbers run late, so filters that decide (Calico's, for instance) come first;
# ours return TC_ACT_UNSPEC anyway and never end the chain.
TC_PRIO_BASE = 0xC1A0
TC_PROTOS = ((ETH_P_ARP, TC_PRIO_BASE), (ETH_P_8021Q, TC_PRIO_BASE + 1), (ETH_P_8021AD, TC_PRIO_BASE + 2),
             (ETH_P_IPV6, TC_PRIO_BASE + 3))
TC_HANDLE = 0xA59
LOCK_DIR = "/run/arp-sensor/locks"


def kernel_headers_problem() -> str | None:
    """What bcc will miss, as one line, or None when headers are there (mirrors bcc's own search)."""
    rel = os.uname().release
    src = os.environ.get("BCC_KERNEL_SOURCE")
    if src:
        if os.path.isdir(os.path.join(src, "include")):
            return None
        return f"kernel headers not found at BCC_KERNEL_SOURCE={src}; unset it or point it at a kernel build tree"
    build = f"/lib/modules/{rel}/build"
    if os.path.isdir(os.path.join(build, "include")) or os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return None
    return (f"kernel headers for {rel} not found ({build}); run `make install` (links Debian's "
            f"linux-headers) or install linux-headers-{rel}")


def check_fast_slots(n: int) -> None:
    if n < 0 or n & (n - 1):
        raise SensorError(f"--fast-slots {n}: must be 0 or a power of two", EXIT_USAGE)


def privileges_problem() -> str | None:
    if os.geteuid() == 0:
        return None
    try:
        with open("/proc/self/status") as f:
            caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        caps = 0
    cap_net_admin, cap_sys_admin, cap_bpf, cap_perfmon = 12, 21, 39, 38
    has = lambda c: bool(caps >> c & 1)  # noqa: E731
    if has(cap_net_admin) and (has(cap_sys_admin) or (has(cap_bpf) and has(cap_perfmon))):
        return None
    return "needs root, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN, to load and attach eBPF programs"


def ifindex_of(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise SensorError(f"interface {ifname!r} not found in this network namespace", EXIT_USAGE) from None


def netns_id() -> int:
    return os.stat("/proc/self/ns/net").st_ino


@dataclass
class Attachment:
    ifname: str
    ifindex: int
    xdp_flags: int | None = None  # mode flags we attached XDP with, None if no XDP
    xdp_link_fd: int | None = None  # the BPF link holding our XDP program (None: netlink-attached)
    tc: list[tuple[int, int, int]] = field(default_factory=list)  # (parent, proto, prio) we added
    # What should be attached, for the watchdog (kept while a hook is lost or taken).
    want_xdp: int | None = None  # XDP mode flags
    want_tc: dict[int, object] = field(default_factory=dict)  # parent -> program (bcc function)
    created_clsact: bool = False
    lock_fd: int | None = None
    notes: list[str] = field(default_factory=list)  # what we cleaned up on the way (stale programs)


@dataclass
class HookState:
    """One hook as the watchdog found it. change: None (ours, untouched), "reattached" (it was removed
    and the hook was free), "taken" (someone else's program is there: left alone), "failed" (free, but
    attaching failed: detail says why)."""

    ifname: str
    hook: str  # xdp | tc-ingress | tc-egress
    attached: bool
    prog_id: int  # ours when attached, the other program's when taken, else 0
    change: str | None = None
    detail: str = ""


class Datapath:
    """The compiled program and its maps; attach/detach per interface."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, fast_slots: int | None = None,
                 bench_defines: tuple[str, ...] = ()) -> None:
        """bench_defines: extra -D names for bench/ only (builds of the program that are never shipped, such
        as ARP_SENSOR_PERCPU_LRU, to measure against in the same run)."""
        problem = privileges_problem() or kernel_headers_problem()
        if problem:
            raise SensorError(problem, EXIT_ENV)
        BPF = bpf_class()
        self._BPF = BPF
        self.max_entries = max_entries
        self.fast_slots = default_fast_slots() if fast_slots is None else fast_slots
        check_fast_slots(self.fast_slots)
        cflags = [f"-I{BPF_DIR}", f"-DARP_SENSOR_MAX_ENTRIES={max_entries}",
                  f"-DARP_SENSOR_FAST_SLOTS={self.fast_slots}", *(f"-D{d}" for d in bench_defines)]
        # bcc prints clang's diagnostics on fd 2; keep them for the error line, hide them otherwise.
        with tempfile.TemporaryFile() as errf:
            saved = os.dup(2)
            os.dup2(errf.fileno(), 2)
            try:
                self.bpf = BPF(src_file=str(PROGRAM).encode(), cflags=cflags)
                self.fn_xdp = self.bpf.load_func(PROG_XDP.encode(), BPF.XDP)
                self.fn_tc_in = self.bpf.load_func(PROG_TC_IN.encode(), BPF.SCHED_CLS)
                self.fn_tc_eg = self.bpf.load_func(PROG_TC_EG.encode(), BPF.SCHED_CLS)
                self.fn_limctl = self.bpf.load_func(PROG_LIMCTL.encode(), BPF.XDP)  # run, never attached
            except Exception as e:
                os.dup2(saved, 2)
                errf.seek(0)
                lines = [ln for ln in errf.read().decode(errors="replace").splitlines() if "error" in ln]
                detail = lines[0].strip() if lines else str(e)
                raise SensorError(f"cannot compile/load the eBPF program: {detail}", EXIT_ENV) from None
            finally:
                os.dup2(saved, 2)
                os.close(saved)
        self.attachments: list[Attachment] = []

    # -- maps --------------------------------------------------------------------------------------
    @property
    def maps(self) -> MapFds:
        """The counting maps, for sensor.kernel.reader.MapReader."""
        return MapFds(self.bpf[b"arp_counts"].map_fd, self.bpf[b"health"].map_fd, self.bpf[b"arp_fast"].map_fd,
                      self.bpf[b"fast_epoch"].map_fd, self.fast_slots, self.nd_map_fd, self.bpf[b"nd_fast"].map_fd)

    @property
    def nd_map_fd(self) -> int:
        """The IPv6 neighbour discovery counts (struct nd_key -> struct arp_val, one for all CPUs)."""
        return self.bpf[b"nd_counts"].map_fd

    @property
    def limit_fds(self) -> LimitFds:
        return LimitFds(self.bpf[b"limits"].map_fd, self.bpf[b"limits_active"].map_fd, self.fn_limctl.fd)

    # -- attach ------------------------------------------------------------------------------------
    def attach(self, ifname: str, attach: str = "both", xdp_mode: str = "auto") -> Attachment:
        ifindex = ifindex_of(ifname)
        att = Attachment(ifname, ifindex)
        att.lock_fd = _lock_interface(ifname, ifindex)
        try:
            if attach in ("xdp", "both"):
                self._attach_xdp(att, xdp_mode)
                att.want_xdp = att.xdp_flags
            if attach == "tc":
                self._attach_tc(att, TC_PARENT_INGRESS, self.fn_tc_in)
                att.want_tc[TC_PARENT_INGRESS] = self.fn_tc_in
            if attach in ("tc", "both"):
                self._attach_tc(att, TC_PARENT_EGRESS, self.fn_tc_eg)
                att.want_tc[TC_PARENT_EGRESS] = self.fn_tc_eg
        except BaseException:
            self._detach(att)
            raise
        self.attachments.append(att)
        return att

    def _attach_xdp(self, att: Attachment, xdp_mode: str) -> None:
        prog_id, _mode = xdp_query(att.ifindex)
        if prog_id:
            from sensor.kernel.bpfsys import BpfError, prog_name_by_id

            try:
                name = prog_name_by_id(prog_id)
            except BpfError:  # EPERM without CAP_SYS_ADMIN: the kernel will not say whose it is
                raise SensorError(f"{att.ifname}: an XDP program is already attached (id {prog_id}); its name "
                                  f"cannot be read without CAP_SYS_ADMIN, so it is left alone — use --attach tc, "
                                  f"or remove it (`ip link set dev {att.ifname} xdp off`) if it is a stale "
                                  f"arp-sensor's from a version before XDP links", EXIT_CONFLICT) from None
            if name != PROG_XDP:
                raise SensorError(f"{att.ifname}: an XDP program is already attached (id {prog_id}, "
                                  f"{name or '?'}); refusing to replace it — use --attach tc", EXIT_CONFLICT)
            # Ours (netlink-attached by an older version or on an old kernel), and we hold the interface
            # lock: a crashed sensor left it behind.
            self._remove_xdp_any_mode(att.ifname)
            att.notes.append(f"{att.ifname}: removed a stale arp-sensor XDP program (id {prog_id})")
        modes = {"native": [XDP_FLAGS_DRV_MODE], "generic": [XDP_FLAGS_SKB_MODE],
                 "auto": [XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE]}[xdp_mode]
        last = ""
        for mode in modes:
            try:
                if xdp_links_supported():
                    from sensor.kernel.bpfsys import link_create_xdp

                    att.xdp_link_fd = link_create_xdp(self.fn_xdp.fd, att.ifindex, mode)
                else:
                    self._BPF.attach_xdp(att.ifname, self.fn_xdp, XDP_FLAGS_UPDATE_IF_NOEXIST | mode)
                att.xdp_flags = mode
                return
            except Exception as e:
                last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        if xdp_query(att.ifindex)[0]:
            raise SensorError(f"{att.ifname}: an XDP program appeared while attaching; refusing to replace it",
                              EXIT_CONFLICT)
        raise SensorError(f"{att.ifname}: cannot attach XDP in {xdp_mode} mode: {last}", EXIT_ENV)

    def _remove_xdp_any_mode(self, ifname: str) -> None:
        for mode in (XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE):
            with contextlib.suppress(Exception):
                self._BPF.remove_xdp(ifname, mode)

    def _attach_tc(self, att: Attachment, parent: int, fn) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        with IPRoute() as ipr:
            try:
                ipr.tc("add", "clsact", att.ifindex)
                att.created_clsact = True
            except NetlinkError as e:
                if e.code != 17:  # EEXIST: someone's clsact is there already, we share it
                    raise SensorError(f"{att.ifname}: cannot add clsact qdisc: {e}", EXIT_ENV) from None
            for f in tc_filters(ipr, att.ifindex, parent):
                if f["prio"] in {p for _, p in TC_PROTOS}:
                    if not f["name"].startswith("arpsensor_"):
                        raise SensorError(f"{att.ifname}: a foreign tc filter ({f['name'] or f['kind']}) uses "
                                          f"priority {f['prio']}, which arp-sensor needs", EXIT_CONFLICT)
                    _del_filter(ipr, att.ifindex, parent, f["proto"], f["prio"], f["handle"])
                    att.notes.append(f"{att.ifname}: removed a stale arp-sensor tc filter (prio {f['prio']})")
            for proto, prio in TC_PROTOS:
                ipr.tc("add-filter", "bpf", att.ifindex, TC_HANDLE, fd=fn.fd, name=fn.name.decode(),
                       parent=parent, classid=1, direct_action=True, protocol=proto, prio=prio)
                att.tc.append((parent, proto, prio))

    # -- watchdog ----------------------------------------------------------------------------------
    def check_hooks(self) -> list[HookState]:
        """Once per interval: does every hook still hold our program? Someone may have removed it
        (`bpftool link detach`, `tc qdisc del dev X clsact`, `tc filter del`) or put their own there.
        Policy: re-attach when the hook is free; never replace someone else's program. Costs one bpf(2)
        call per XDP link and one netlink dump per tc hook. Interfaces that are gone are skipped (the
        runner reports those)."""
        from pyroute2 import IPRoute

        out: list[HookState] = []
        with IPRoute() as ipr:  # one netlink socket for every tc dump of this check
            for att in self.attachments:
                if not _interface_exists(att.ifindex):
                    continue
                if att.want_xdp is not None:
                    out.append(self._check_xdp(att))
                for parent, fn in att.want_tc.items():
                    out.append(self._check_tc(att, parent, fn, ipr))
        return out

    def _check_xdp(self, att: Attachment) -> HookState:
        from sensor.kernel.bpfsys import link_info

        ours = _prog_id(self.fn_xdp.fd)
        if att.xdp_link_fd is not None:
            if link_info(att.xdp_link_fd).ifindex == att.ifindex:
                return HookState(att.ifname, "xdp", True, ours)
            os.close(att.xdp_link_fd)  # a defunct link: detached by someone, it holds nothing now
            att.xdp_link_fd = None
            att.xdp_flags = None
        elif att.xdp_flags is not None and xdp_query(att.ifindex)[0] == ours:
            return HookState(att.ifname, "xdp", True, ours)
        att.xdp_flags = None
        other = xdp_query(att.ifindex)[0]
        if other:
            return HookState(att.ifname, "xdp", False, other, "taken")
        try:
            mode = {XDP_FLAGS_DRV_MODE: "native", XDP_FLAGS_SKB_MODE: "generic"}[att.want_xdp or 0]
            self._attach_xdp(att, mode)
        except SensorError as e:
            return HookState(att.ifname, "xdp", False, xdp_query(att.ifindex)[0], "failed", str(e))
        return HookState(att.ifname, "xdp", True, ours, "reattached")

    def _check_tc(self, att: Attachment, parent: int, fn, ipr) -> HookState:
        hook = "tc-ingress" if parent == TC_PARENT_INGRESS else "tc-egress"
        name = fn.name.decode()
        prios = {p for _, p in TC_PROTOS}
        filters = [f for f in tc_filters(ipr, att.ifindex, parent) if f["prio"] in prios]
        if sorted(f["prio"] for f in filters if f["name"] == name) == sorted(prios):
            return HookState(att.ifname, hook, True, _prog_id(fn.fd))
        foreign = [f for f in filters if not f["name"].startswith("arpsensor_")]
        if foreign:
            return HookState(att.ifname, hook, False, 0, "taken", f"{foreign[0]['name'] or foreign[0]['kind']} "
                             f"at priority {foreign[0]['prio']}")
        att.tc = [t for t in att.tc if t[0] != parent]
        try:
            self._attach_tc(att, parent, fn)  # removes what is left of ours at that hook, adds all three
        except (SensorError, OSError) as e:
            return HookState(att.ifname, hook, False, 0, "failed", str(e))
        return HookState(att.ifname, hook, True, _prog_id(fn.fd), "reattached")

    # -- detach ------------------------------------------------------------------------------------
    def detach_all(self) -> list[str]:
        """Removes everything this process attached; returns problems (one line each), never raises."""
        problems: list[str] = []
        for att in reversed(self.attachments):
            problems += self._detach(att)
        self.attachments.clear()
        return problems

    def _detach(self, att: Attachment) -> list[str]:
        problems = []
        if att.xdp_link_fd is not None:  # closing our link detaches the program (nothing if it is gone)
            os.close(att.xdp_link_fd)
            att.xdp_link_fd = None
            att.xdp_flags = None
        if att.xdp_flags is not None and _interface_exists(att.ifindex):  # gone: its program went with it
            try:
                prog_id, _ = xdp_query(att.ifindex)
                # Only if it is still ours: never remove what someone attached after us.
                if prog_id and prog_id == _prog_id(self.fn_xdp.fd):
                    self._BPF.remove_xdp(socket.if_indextoname(att.ifindex), att.xdp_flags)
            except Exception as e:
                if _interface_exists(att.ifindex):
                    problems.append(f"{att.ifname}: cannot detach XDP: {e}")
        att.xdp_flags = None
        if att.tc:
            try:
                from pyroute2 import IPRoute

                with IPRoute() as ipr:
                    for parent, proto, prio in att.tc:
                        _del_filter(ipr, att.ifindex, parent, proto, prio, TC_HANDLE)
                    if att.created_clsact and not any(
                        tc_filters(ipr, att.ifindex, p) for p in (TC_PARENT_INGRESS, TC_PARENT_EGRESS)
                    ):
                        with contextlib.suppress(Exception):
                            ipr.tc("del", "clsact", att.ifindex)
            except Exception as e:  # the interface may be gone: its filters went with it
                if _interface_exists(att.ifindex):
                    problems.append(f"{att.ifname}: cannot remove tc filters: {e}")
            att.tc.clear()
        if att.lock_fd is not None:
            os.close(att.lock_fd)
            att.lock_fd = None
        return problems


def xdp_links_supported() -> bool:
    """XDP through BPF_LINK_CREATE: kernel 5.9 and later."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return True
    return (major, minor) >= (5, 9)


def _prog_id(fd: int) -> int:
    from sensor.kernel.bpfsys import prog_id_by_fd

    return prog_id_by_fd(fd)


def _interface_exists(ifindex: int) -> bool:
    try:
        socket.if_indextoname(ifindex)
        return True
    except OSError:
        return False


def xdp_query(ifindex: int) -> tuple[int, str | None]:
    """(program id, mode) of the XDP program on an interface, (0, None) when there is none."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.get_links(ifindex)
    xdp = links[0].get_attr("IFLA_XDP") if links else None
    if not xdp:
        return 0, None
    return xdp.get_attr("IFLA_XDP_PROG_ID") or 0, xdp.get_attr("IFLA_XDP_ATTACHED")


def tc_filters(ipr, ifindex: int, parent: int) -> list[dict]:
    """The bpf/other filters under a clsact hook, as plain dicts."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        msgs = ipr.get_filters(index=ifindex, parent=parent)
    except NetlinkError:
        return []
    out = []
    for m in msgs:
        kind = m.get_attr("TCA_KIND")
        opts = m.get_attr("TCA_OPTIONS")
        if not kind or opts is None:
            continue  # the per-priority header entries carry no options
        name = (opts.get_attr("TCA_BPF_NAME") if opts is not None and kind == "bpf" else None) or ""
        info = m["info"]
        out.append({"kind": kind, "name": name, "prio": info >> 16, "proto": socket.ntohs(info & 0xFFFF),
                    "handle": m["handle"]})
    return out


def _del_filter(ipr, ifindex: int, parent: int, proto: int, prio: int, handle: int) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    with contextlib.suppress(NetlinkError):
        ipr.tc("del-filter", "bpf", ifindex, handle, parent=parent, protocol=proto, prio=prio)


def _lock_interface(ifname: str, ifindex: int) -> int:
    """One sensor per interface per network namespace: a flock the kernel drops when we die, so a
    crashed sensor never blocks the next one, while a live one is detected."""
    os.makedirs(LOCK_DIR, exist_ok=True)
    path = os.path.join(LOCK_DIR, f"{netns_id()}-{ifindex}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SensorError(f"{ifname}: another arp-sensor (pid {pid}) is already attached here",
                          EXIT_CONFLICT) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def detach_stale(ifname: str) -> list[str]:
    """`arp-sensor detach`: removes arp-sensor programs a crashed sensor left on an interface. Refuses
    while a live sensor holds the interface. Touches nothing that is not ours."""
    ifindex = ifindex_of(ifname)
    lock = _lock_interface(ifname, ifindex)
    done: list[str] = []
    try:
        from pyroute2 import IPRoute

        from sensor.kernel.bpfsys import BpfError, prog_name_by_id

        # Our XDP links went with the process that held them; this finds netlink-attached programs (old
        # kernels, older versions), whose name only CAP_SYS_ADMIN may read.
        prog_id, mode = xdp_query(ifindex)
        try:
            name = prog_name_by_id(prog_id) if prog_id else None
        except BpfError:
            name = None
            done.append(f"{ifname}: left XDP program id {prog_id} alone: whose it is cannot be read without "
                        f"CAP_SYS_ADMIN")
        if name == PROG_XDP:
            BPF = bpf_class()
            # The mode flag must match how it was attached.
            BPF.remove_xdp(ifname, XDP_FLAGS_SKB_MODE if mode == "xdpgeneric" else XDP_FLAGS_DRV_MODE)
            done.append(f"{ifname}: removed arp-sensor XDP program (id {prog_id})")
        with IPRoute() as ipr:
            for parent in (TC_PARENT_INGRESS, TC_PARENT_EGRESS):
                for f in tc_filters(ipr, ifindex, parent):
                    if f["name"].startswith("arpsensor_") and f["prio"] in {p for _, p in TC_PROTOS}:
                        _del_filter(ipr, ifindex, parent, f["proto"], f["prio"], f["handle"])
                        done.append(f"{ifname}: removed arp-sensor tc filter (prio {f['prio']})")
    finally:
        os.close(lock)
    return done


# -- feature probe for `arp-sensor doctor` ----------------------------------------------------------------
_PROBE_SRC = b"""
BPF_HASH(probe_map, u32, u64, 8);
int probe_xdp(struct xdp_md *ctx) { return XDP_PASS; }
int probe_tc(struct __sk_buff *skb) { return 0; }
"""


def probe_features(ifname: str) -> dict[str, tuple[bool, str]]:
    """Loads a tiny program with bcc and attaches it to `ifname` with XDP and tc clsact, then removes it;
    exercises batch map reads. Run it only inside a throwaway network namespace (doctor does).
    Returns {feature: (ok, detail)} for load, xdp, xdp-link, clsact, batch."""
    out: dict[str, tuple[bool, str]] = {}
    from sensor.kernel import bpfsys

    BPF = bpf_class()

    with tempfile.TemporaryFile() as errf:  # clang's diagnostics: keep the first error line only
        saved = os.dup(2)
        os.dup2(errf.fileno(), 2)
        try:
            b = BPF(text=_PROBE_SRC)
            fx = b.load_func(b"probe_xdp", BPF.XDP)
            ft = b.load_func(b"probe_tc", BPF.SCHED_CLS)
            out["load"] = (True, "compiled and loaded a test program (XDP, SCHED_CLS)")
        except Exception as e:
            os.dup2(saved, 2)
            errf.seek(0)
            lines = [ln for ln in errf.read().decode(errors="replace").splitlines() if "error" in ln]
            out["load"] = (False, lines[0].strip() if lines else str(e).strip().splitlines()[-1])
            return out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    ifindex = ifindex_of(ifname)
    for mode, flag in (("native", XDP_FLAGS_DRV_MODE), ("generic", XDP_FLAGS_SKB_MODE)):
        try:
            BPF.attach_xdp(ifname, fx, XDP_FLAGS_UPDATE_IF_NOEXIST | flag)
        except Exception as e:
            out["xdp"] = (False, str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
            continue
        attached = xdp_query(ifindex)[0]
        BPF.remove_xdp(ifname, flag)
        out["xdp"] = (bool(attached), f"attached and removed in {mode} mode (veth)" if attached
                      else f"{mode} attach reported success but no program was attached")
        break
    # How the sensor attaches XDP: a BPF link, which a crashed sensor does not leave behind.
    try:
        from sensor.kernel.bpfsys import link_create_xdp

        lfd = link_create_xdp(fx.fd, ifindex, XDP_FLAGS_SKB_MODE)
        attached = xdp_query(ifindex)[0]
        os.close(lfd)
        gone = not xdp_query(ifindex)[0]
        out["xdp-link"] = (bool(attached) and gone, "BPF link attached, and detached when its fd closed"
                           if attached and gone else "BPF link attach did not attach, or outlived its fd")
    except Exception as e:
        out["xdp-link"] = (False, f"BPF_LINK_CREATE for XDP: {str(e).strip() or type(e).__name__}")
    from pyroute2 import IPRoute

    try:
        with IPRoute() as ipr:
            ipr.tc("add", "clsact", ifindex)
            ipr.tc("add-filter", "bpf", ifindex, TC_HANDLE, fd=ft.fd, name="probe_tc", parent=TC_PARENT_EGRESS,
                   classid=1, direct_action=True, protocol=ETH_P_ARP, prio=TC_PRIO_BASE)
            found = [f for f in tc_filters(ipr, ifindex, TC_PARENT_EGRESS) if f["prio"] == TC_PRIO_BASE]
            ipr.tc("del", "clsact", ifindex)
        out["clsact"] = (bool(found), "clsact qdisc and a bpf filter added and removed" if found
                         else "filter add reported success but no filter was found")
    except Exception as e:
        out["clsact"] = (False, str(e))
    try:
        t = b[b"probe_map"]
        for i in range(5):
            t[t.Key(i)] = t.Leaf(i * 10)
        _keys, values, n = bpfsys.map_lookup_batch(t.map_fd, 4, 8, 8)
        got = sorted(int.from_bytes(values[i * 8:i * 8 + 8], "little") for i in range(n))
        out["batch"] = (got == [0, 10, 20, 30, 40], f"BPF_MAP_LOOKUP_BATCH read {n} of 5 entries")
    except Exception as e:
        out["batch"] = (False, f"BPF_MAP_LOOKUP_BATCH: {e}")
    b.cleanup()
    return out
