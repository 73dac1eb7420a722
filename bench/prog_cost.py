"""Per-packet cost of the kernel program: BPF_PROG_TEST_RUN ns/packet of an empty XDP program (the
floor: what the kernel's test-run loop itself costs) against ours (XDP, tc ingress, tc egress), on the
frames that matter, with 1, 10k and 100k distinct entries already in the map. Then "where the time
goes": the ARP path rebuilt step by step (parse only, + the health array, + the LRU hash lookup) and
the alternatives that would close the gap, measured the same way.

    python -m bench.prog_cost [--repeat N] [--runs N] [--fills 1,10000,100000] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.report import machine, median, table, write_section
from sensor.kernel import bpfsys
from tests.support import frames as F

BENCH_BPF = Path(__file__).resolve().parent / "bpf"
EMPTY_XDP = BENCH_BPF / "empty_xdp.c"  # the floor every ratio is taken against
VARIANTS_C = BENCH_BPF / "variants.c"
LINE_RATE_10G_NS = 1e9 / 14.88e6  # 64-byte frames at 10 GbE: 67.2 ns per frame

FRAMES = {
    "IPv4 UDP (non-ARP)": F.ipv4_udp(),
    "IPv6 UDP (non-ARP)": F.ipv6_udp(),
    "ARP request": F.arp_request("198.18.0.1", "198.18.0.7"),
    "ARP reply": F.arp_reply("198.18.0.7", "198.18.0.1"),
    "ARP request, 802.1Q": F.arp_request("198.18.0.1", "198.18.0.7", vlans=[(F.ETH_P_8021Q, 100)]),
    # IPv6 neighbour discovery (issue 17): its own map, so the ARP fill does not matter to it
    "IPv6 NS (ND)": F.neighbour_solicitation("2001:db8::1", "2001:db8::7"),
    "IPv6 ICMPv6 echo (non-ARP, non-ND)": F.icmpv6_echo(),
}
ARP_FRAMES = [f for f in FRAMES if "non-ARP" not in f and "(ND)" not in f]
# The rate-limit path (docs/ratelimit.md), measured with the "ARP request" frame at the smallest fill.
# Kept out of the verdicts: a limit entry is hit only by requests for a limited (dead) target.
LIMIT_EMPTY = "ARP request, limits map empty"
LIMIT_OTHER = "ARP request, 64 limits for other targets"
LIMIT_HIT = "ARP request, limit entry hit"
LIMIT_ROWS = (LIMIT_EMPTY, LIMIT_OTHER, LIMIT_HIT)
TARGETS = {"non-ARP": 1.05, "ARP": 1.5, "ND": 1.5}  # ND: no target of its own; held to the ARP path's
FILLS = (1, 10_000, 100_000)

VARIANTS = [
    ("v_parse", "parse only (no map)"),
    ("v_parse_health", "parse + per-CPU array bump (health)"),
    ("v_call", "parse + health + one trivial kernel call"),
    ("v_lru", "parse + health + LRU per-CPU hash, 16-byte key (the program before issue 15)"),
    ("v_lru_shared", "parse + health + LRU hash, one value for all CPUs, atomic add (ours, behind the fast path)"),
    ("v_lru_only", "LRU per-CPU hash lookup alone, no parse"),
    ("v_lru4", "parse + health + LRU per-CPU hash, 4-byte key"),
    ("v_phash", "parse + health + plain per-CPU hash (no LRU)"),
    ("v_direct", "parse + health + direct-mapped per-CPU array"),
]


def _fill_frame(i: int) -> bytes:
    """The i-th distinct (target, sender) pair, all inside 198.18.0.0/15 and none equal to the measured
    keys (198.18.0.x)."""
    tpa = f"198.19.{(i >> 8) & 0xFF}.{i & 0xFF}"
    spa = f"198.18.{1 + (i >> 16)}.1"
    return F.arp_request(spa, tpa)


def prefill(prog_fd: int, start: int, stop: int) -> None:
    """Creates map entries [start, stop) by running the real program once per distinct frame."""
    for i in range(start, stop):
        bpfsys.prog_test_run(prog_fd, _fill_frame(i), repeat=1)


def map_entries(map_fd: int, key_size: int, value_size: int, max_entries: int) -> int:
    return bpfsys.map_lookup_batch(map_fd, key_size, value_size, max_entries)[2]  # one value per entry


EMPTY, EMPTY2 = "empty XDP", "empty XDP, second copy (noise)"  # its row name; EMPTY2: loaded twice, the noise row


def interleaved(progs: dict[str, int], frame: bytes, repeat: int, runs: int) -> dict[str, list[float]]:
    """ns/packet of each run of each program on one frame (see interleaved_frames)."""
    return interleaved_frames(progs, {"": frame}, repeat, runs)[""]


def interleaved_frames(progs: dict[str, int], frames: dict[str, bytes], repeat: int,
                       runs: int) -> dict[str, dict[str, list[float]]]:
    """{frame: {program: ns/packet of each run}}, each run timed by this thread's CPU clock around the test
    run (sub-ns resolution: the kernel reports whole ns per repetition, and the 1.05× target is about
    1.5 ns here; the CPU clock, unlike the wall clock, stops while other jobs have the core; a syscall's
    own ~1 µs is 0.001 ns per repetition). Programs and frames are interleaved run by run: drift hits
    every program alike (paired() takes it out), and a spell of interference from the machine's
    neighbours, which slows the programs that touch memory more than the empty one, lands in a few runs
    of every frame (the median drops them) instead of in all runs of one frame."""
    samples = {f: {p: [] for p in progs} for f in frames}
    for _ in range(runs):
        for fname, frame in frames.items():
            for pname, fd in progs.items():
                t0 = time.thread_time_ns()
                bpfsys.prog_test_run(fd, frame, repeat=repeat)
                samples[fname][pname].append((time.thread_time_ns() - t0) / repeat)
    return samples


WARM_UP_S = 3.0


def warm_up(progs: dict[str, int], frame: bytes, share: float = 1.0) -> None:
    """Runs the programs, unmeasured, for a few seconds first (share × WARM_UP_S): the first second or two
    after compiling measured up to 1.5× slower here (all of the first frame's runs, not one)."""
    end = time.monotonic() + share * WARM_UP_S
    while time.monotonic() < end:
        for fd in progs.values():
            bpfsys.prog_test_run(fd, frame, repeat=100_000)


def paired(samples: dict[str, list[float]], a: str, b: str) -> float:
    """Median over runs of (a − b) in the same run: what a costs over b, with the drift between runs
    (which moves both alike) taken out."""
    return median([x - y for x, y in zip(samples[a], samples[b], strict=True)])


def costs(samples: dict[str, list[float]], base: str = EMPTY) -> dict[str, tuple[float, float]]:
    """{program: (median ns/packet, ratio to base)}; the ratio is 1 + paired difference / base."""
    b = median(samples[base])
    return {p: (median(s), 1 + paired(samples, p, base) / b) for p, s in samples.items()}


OURS = "arp-sensor XDP"
OURS_TC_IN, OURS_TC_EG = "arp-sensor tc ingress", "arp-sensor tc egress"
LRU_ONLY = "arp-sensor XDP, fast path off (LRU only)"
BEFORE = "arp-sensor XDP before issue 15 (per-CPU LRU only)"
COLLIDING = "arp-sensor XDP, slot taken (collision → LRU)"
FAST_FRAMES = ("ARP request", "ARP reply", "ARP request, 802.1Q", "IPv6 NS (ND)")  # frames the fast path counts


def _path(reader, fd: int, frame: bytes) -> str:
    """Runs the frame once and says where the kernel counted it (from the health counters)."""
    h0 = reader.read_health()
    bpfsys.prog_test_run(fd, frame)
    h1 = reader.read_health()
    moved = [k for k in ("fast_hits", "fast_claims", "fast_collisions") if h1[k] != h0[k]]
    return {"fast_hits": "fast hit", "fast_claims": "fast claim", "fast_collisions": "collision"}.get(
        moved[0] if moved else "", "LRU" if h1["arp"] != h0["arp"] or h1.get("nd") != h0.get("nd") else "no map")


@contextlib.contextmanager
def pinned() -> Iterator[None]:
    """Runs the block on one CPU. BPF_PROG_TEST_RUN runs the program on the calling CPU, and fast-path
    slots are per CPU: a thread that migrated would find the other CPU's slots in another state (its
    frame's slot free, or the colliding key absent) and measure another path than the row says."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def measure(repeat: int, runs: int, fills: tuple[int, ...] = FILLS,
            log: Callable[[str], None] = print) -> list[dict]:
    with pinned():
        return _measure(repeat, runs, fills, log)


def _measure(repeat: int, runs: int, fills: tuple[int, ...], log: Callable[[str], None]) -> list[dict]:
    """Four builds of the shipped program in one interleaved run against the empty program: as shipped
    (the measured frames' keys in their fast-path slots: a storm); with the fast path compiled out (the
    LRU maps alone); the program before issue 15 (no fast path, and the per-CPU LRU maps it used then:
    `-DARP_SENSOR_PERCPU_LRU`); and as shipped with each measured frame's slot held by another key (every
    frame pays the slot check and then the LRU map: what each frame of a spoofed flood that has taken
    every slot pays). A second copy of the empty program shows the measurement's own noise."""
    from sensor.kernel.loader import bpf_class

    BPF = bpf_class()

    from sensor.kernel.datapath import Datapath
    from sensor.kernel.layout import ARP_KEY, ARP_VAL
    from sensor.kernel.reader import MapReader

    def empty() -> int:
        return BPF(src_file=str(EMPTY_XDP).encode()).load_func(b"empty_xdp", BPF.XDP).fd

    # Room for the largest fill with slack: an LRU map starts evicting before it is completely full
    # (per-CPU free lists), and we want N live entries, not N inserts.
    max_entries = max(1024, 1 << (2 * max(fills) - 1).bit_length())
    dp = Datapath(max_entries=max_entries)
    off = Datapath(max_entries=max_entries, fast_slots=0)
    before = Datapath(max_entries=max_entries, fast_slots=0, bench_defines=("ARP_SENSOR_PERCPU_LRU",))
    col = Datapath(max_entries=max_entries)
    readers = {d: MapReader(d.maps, max_entries) for d in (dp, off, before, col)}
    progs = {EMPTY: empty(), EMPTY2: empty(), OURS: dp.fn_xdp.fd, OURS_TC_IN: dp.fn_tc_in.fd,
             OURS_TC_EG: dp.fn_tc_eg.fd, LRU_ONLY: off.fn_xdp.fd, BEFORE: before.fn_xdp.fd, COLLIDING: col.fn_xdp.fd}
    owner = {OURS: dp, OURS_TC_IN: dp, OURS_TC_EG: dp, LRU_ONLY: off, BEFORE: before, COLLIDING: col}
    holders = slot_holders({f: FRAMES[f] for f in FAST_FRAMES}, col.fast_slots)
    warm_up(progs, FRAMES["ARP request"])
    rows = []
    filled = 0
    for fill in sorted(fills):
        # The measured frames create their own entries on their first run; the rest are distinct pairs.
        t0 = time.monotonic()
        for d in (dp, off, before, col):
            prefill(d.fn_xdp.fd, filled, max(0, fill - 1))
        filled = max(filled, fill - 1)
        # A fresh epoch, as after a flip: the measured frames claim their slots on their first run (the fill
        # frames claimed slots of the old half). In `col` the holders take the measured frames' slots first.
        for r in readers.values():
            r.read_fast()
        for h in holders:
            bpfsys.prog_test_run(col.fn_xdp.fd, h)
        paths = {(fname, pname): _path(readers[owner[pname]], fd, frame)
                 for fname, frame in FRAMES.items() for pname, fd in progs.items() if pname in owner}
        for fname in FAST_FRAMES:
            if paths[(fname, COLLIDING)] != "collision":
                raise RuntimeError(f"prog_cost: {fname!r} did not collide in the slot-taken build")
        live = map_entries(off.maps.counts, ARP_KEY.size, ARP_VAL.size, max_entries)
        log(f"prog_cost: {live} entries in the LRU map ({time.monotonic() - t0:.1f} s to fill)")
        # Non-ARP frames touch no map (and ND has its own): only the ARP frames are measured at every fill.
        frames = {f: fr for f, fr in FRAMES.items() if fill == min(fills) or f in ARP_FRAMES}
        every = interleaved_frames(progs, frames, repeat, runs)
        for fname, samples in every.items():
            cost = costs(samples)
            for pname in progs:
                # The steady path: where the second and later runs of this frame were counted.
                path = paths.get((fname, pname), "")
                path = {"fast claim": "fast hit"}.get(path, path)
                row = {"fill": fill, "entries": live, "frame": fname, "program": pname, "ns": cost[pname][0],
                       "ratio": cost[pname][1], "path": path}
                if pname == COLLIDING:
                    # Paired, run by run: what the slot check adds to the LRU maps, and where a flood that
                    # defeats the fast path stands against the program before it.
                    row["vs_lru"] = paired(samples, COLLIDING, LRU_ONLY)
                    row["vs_before"] = paired(samples, COLLIDING, BEFORE)
                    row["before_ns"] = median(samples[BEFORE])
                rows.append(row)
    core = {p: progs[p] for p in (EMPTY, EMPTY2, OURS, OURS_TC_IN, OURS_TC_EG)}
    rows += measure_limits(dp, core, repeat, runs, max(fills), live)
    return rows


def slot_holders(frames: dict[str, bytes], slots: int) -> list[bytes]:
    """For each frame, another frame of its family whose key takes the same fast-path slot, found by the
    kernel itself (no copy of its hash here): in a scratch program with the same slot count, the first k
    frames of a pool are run into an empty half, then the frame; the smallest k after which the frame
    collides names the pool frame that claimed its slot (a longer prefix only ever holds more slots, so
    k is found by halving)."""
    from sensor.kernel.datapath import Datapath
    from sensor.kernel.reader import MapReader

    scratch = Datapath(max_entries=8 * slots, fast_slots=slots)
    reader = MapReader(scratch.maps, 8 * slots)
    fd = scratch.fn_xdp.fd

    def pool(fname: str) -> list[bytes]:
        if "(ND)" in fname:
            return [F.neighbour_solicitation("2001:db8:250::1", f"2001:db8:251::{j + 1:x}") for j in range(4 * slots)]
        return [F.arp_request("198.18.250.1", f"198.19.{j >> 8}.{j & 0xFF}") for j in range(4 * slots)]

    def collides(cands: list[bytes], frame: bytes) -> bool:
        reader.fast.clear()
        for c in cands:
            bpfsys.prog_test_run(fd, c)
        before = reader.read_health()["fast_collisions"]
        bpfsys.prog_test_run(fd, frame)
        return reader.read_health()["fast_collisions"] > before

    out = []
    for fname, frame in frames.items():
        cands = pool(fname)
        if not collides(cands, frame):  # 4 × slots keys leave one given slot empty with probability e^-4
            raise RuntimeError(f"prog_cost: no key of the pool shares a slot with {fname!r}")
        lo, hi = 0, len(cands)  # collides after cands[:hi], not after cands[:lo]
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if collides(cands[:mid], frame) else (mid, hi)
        out.append(cands[hi - 1])
    return out


def measure_limits(dp, progs: dict[str, int], repeat: int, runs: int, fill: int, live: int) -> list[dict]:
    """The ARP request with no limit (limits_active = 0: one array read), with limits held for other
    targets (a hash miss), and with a limit for its own target (hash hit, spin lock, bucket arithmetic;
    the bucket is deep enough that every run passes, and a drop takes the same path)."""
    from sensor.kernel.layout import DIR_EGRESS, DIR_INGRESS
    from sensor.kernel.limitmap import LimitKey, LimitMap

    lm = LimitMap(*dp.limit_fds)
    frame = FRAMES["ARP request"]
    lo = 1  # test runs happen on the namespace's loopback device
    rows = []

    def row(name: str) -> None:
        cost = costs(interleaved(progs, frame, repeat, runs))
        for pname in progs:
            rows.append({"fill": fill, "entries": live, "frame": name, "program": pname, "ns": cost[pname][0],
                         "ratio": cost[pname][1], "limit": True})

    try:
        lm.clear()
        row(LIMIT_EMPTY)
        for i in range(64):
            for d in (DIR_INGRESS, DIR_EGRESS):
                lm.apply(LimitKey(lo, f"198.18.200.{i}", d), pps=1.0, burst=1, ttl_s=3600, dry_run=False)
        row(LIMIT_OTHER)
        for d in (DIR_INGRESS, DIR_EGRESS):
            lm.apply(LimitKey(lo, "198.18.0.7", d), pps=1e6, burst=1_000_000, ttl_s=3600, dry_run=False)
        row(LIMIT_HIT)
    finally:
        lm.clear()
    return rows


def measure_variants(repeat: int, runs: int, fill: int) -> list[dict]:
    """The ARP-request path decomposed, each variant with `fill` entries in its map."""
    from sensor.kernel.loader import bpf_class

    BPF = bpf_class()

    vmax = max(1024, 1 << (2 * fill - 1).bit_length())
    b = BPF(src_file=str(VARIANTS_C).encode(), cflags=[f"-DVMAX={vmax}"])
    progs = {EMPTY: BPF(src_file=str(EMPTY_XDP).encode()).load_func(b"empty_xdp", BPF.XDP).fd}
    for fn, _label in VARIANTS:
        progs[fn] = b.load_func(fn.encode(), BPF.XDP).fd
    for fn in ("v_lru", "v_lru_shared", "v_lru4", "v_phash"):
        prefill(progs[fn], 0, max(0, fill - 1))
    frame = FRAMES["ARP request"]
    warm_up(progs, frame)
    samples = interleaved(progs, frame, repeat, runs)
    cost = costs(samples)
    ns = {p: c[0] for p, c in cost.items()}
    info = xlated_info(progs)
    labels = dict(VARIANTS, **{EMPTY: "empty XDP (floor)"})
    return [{"variant": p, "label": labels[p], "ns": v, "ratio": cost[p][1],
             "added": paired(samples, p, EMPTY), **info.get(p, {})} for p, v in ns.items()]


def measure_nonarp(repeat: int, runs: int, ours_fd: int | None = None) -> list[dict]:
    """Non-ARP IPv4, IPv6 and ICMPv6 frames: empty against the least any program must do to tell them
    apart (IPv4: the ethertype; IPv6: the ethertype, the header's bounds and its next header, which every
    IPv6 frame must pass before it can be known not to be ND; ICMPv6: its type too) and against ours,
    with the kernel's own whole-ns figure beside the CPU clock's."""
    from sensor.kernel.loader import bpf_class

    BPF = bpf_class()

    from sensor.kernel.datapath import Datapath

    b = BPF(src_file=str(VARIANTS_C).encode(), cflags=["-DVMAX=1024"])
    dp = None
    if ours_fd is None:
        dp = Datapath()
        ours_fd = dp.fn_xdp.fd
    out = []
    for fname, minimal in (("IPv4 UDP (non-ARP)", "v_ethertype"), ("IPv6 UDP (non-ARP)", "v_ipv6_nexthdr"),
                           ("IPv6 ICMPv6 echo (non-ARP, non-ND)", "v_icmpv6_type")):
        progs = {EMPTY: BPF(src_file=str(EMPTY_XDP).encode()).load_func(b"empty_xdp", BPF.XDP).fd,
                 minimal: b.load_func(minimal.encode(), BPF.XDP).fd, OURS: ours_fd}
        frame = FRAMES[fname]
        warm_up(progs, frame, 0.3)
        samples = interleaved(progs, frame, repeat, runs)
        kern = {p: bpfsys.prog_test_run(fd, frame, repeat=repeat).duration_ns for p, fd in progs.items()}
        cost = costs(samples)
        info = xlated_info(progs)
        labels = {EMPTY: "empty XDP (floor)", "v_ethertype": "bounds check + ethertype compare only",
                  "v_ipv6_nexthdr": "ethertype + IPv6 header bounds + next header only",
                  "v_icmpv6_type": "ethertype + IPv6 header + next header + ICMPv6 type only",
                  OURS: "arp-sensor XDP (as shipped)"}
        out += [{"frame": fname, "variant": p, "label": labels[p], "ns": cost[p][0], "kernel_ns": kern[p],
                 "ratio": cost[p][1], "added": paired(samples, p, EMPTY), **info.get(p, {})} for p in progs]
    return out


def xlated_info(progs: dict[str, int]) -> dict[str, dict]:
    """Instruction count after the verifier's rewrites, and the kernel functions each program calls
    (an inlined map lookup shows no call), from `bpftool prog dump xlated`."""
    out: dict[str, dict] = {}
    for name, fd in progs.items():
        try:
            pid = bpfsys.prog_id_by_fd(fd)
            r = subprocess.run(["bpftool", "-j", "prog", "dump", "xlated", "id", str(pid)],
                               capture_output=True, text=True, timeout=20, check=True)
            insns = json.loads(r.stdout)
        except (OSError, subprocess.SubprocessError, ValueError, bpfsys.BpfError):
            continue
        calls = []
        for ins in insns:
            m = re.search(r"\bcall ([A-Za-z_]\w*)", ins.get("disasm", ""))
            if m:
                calls.append(m.group(1))
        out[name] = {"insns": len(insns), "calls": calls}
    return out


STRETCH_ARP = 1.3
NOISE = 0.05  # "no slower": within 5% of the program before issue 15, paired run by run


def render(rows: list[dict], variants: list[dict], repeat: int, runs: int, vfill: int,
           nonarp: list[dict] | None = None, load: str = "") -> str:
    fills = sorted({r["fill"] for r in rows})
    lines = [
        "## Per-packet cost of the kernel program",
        "",
        f"`python -m bench.prog_cost` — BPF_PROG_TEST_RUN, {repeat:,} repetitions per run, {runs} runs, "
        "programs interleaved run by run, each run timed by this thread's CPU clock (sub-ns resolution; the "
        "kernel's own figure is whole ns). `ns/packet` is the median over runs; `vs empty` is 1 + the median "
        "of the run-by-run differences to an empty XDP program (`return XDP_PASS`) in the same run, divided by "
        f"the empty program's median: pairing runs takes out the drift between them. `{EMPTY2}` is the same "
        "empty program loaded twice: its ratio is the noise of the measurement itself. "
        "The LRU maps are pre-filled through each program itself (one test run per distinct target/sender "
        "pair); `fill` 1 means only the measured frames' own entries are in them. Four builds of the shipped "
        f"program: `{OURS}` as shipped (the measured frame's key sits in its fast-path slot, as a storm's "
        f"keys do: `path` fast hit); `{LRU_ONLY}` (`--fast-slots 0`); `{BEFORE}` (`--fast-slots 0` and "
        "`-DARP_SENSOR_PERCPU_LRU`: the per-CPU LRU maps every ARP frame went to before issue 15); and "
        f"`{COLLIDING}` (as shipped, with each measured frame's slot held by another key of its family, found "
        "by the kernel itself: every frame pays the slot check and then the LRU map — what each frame of a "
        "spoofed flood that has taken every slot pays). "
        f"Targets: ARP ≤ 1.5× empty (stretch {STRETCH_ARP}×) at every fill, non-ARP ≤ 1.05× (judged on "
        f"`{OURS}`; tc rows for reference); the collision path no slower than the program before issue 15 "
        f"(paired, within {NOISE:.0%}); and ≤ {LINE_RATE_10G_NS:.1f} ns/frame (14.88 Mpps, 10 GbE line rate "
        "with 64-byte frames) per core.",
        f"The last rows are the rate-limit path (docs/ratelimit.md): `{LIMIT_EMPTY}` is the default (no "
        f"limits: one array read per request), `{LIMIT_OTHER}` a host limiting dead peers while asking for a "
        f"live one (a hash miss), `{LIMIT_HIT}` a request for a limited target (hash hit, spin lock, bucket).",
        f"Machine: {machine()}." + (f" Load while measuring: {load}." if load else ""),
        "",
    ]
    body = []
    for r in rows:
        kind = "non-ARP" if "non-ARP" in r["frame"] else "ND" if "(ND)" in r["frame"] else "ARP"
        verdict = ""
        if r.get("limit"):
            verdict = "rate-limit path, not judged" if r["program"] == OURS else ""
        elif r["program"] == OURS:
            target = TARGETS[kind]
            rv = "met" if r["ratio"] <= target else "missed"
            if kind == "ARP":
                rv += f", stretch {STRETCH_ARP}×: {'met' if r['ratio'] <= STRETCH_ARP else 'missed'}"
            lv = "met" if r["ns"] <= LINE_RATE_10G_NS else "missed"
            verdict = f"ratio ≤ {target}×: **{rv}**; line rate: {lv}"
        elif r["program"] == COLLIDING and "vs_before" in r and kind != "non-ARP":
            ok = r["vs_before"] <= NOISE * r["before_ns"]
            verdict = (f"vs before issue 15: {r['vs_before']:+.1f} ns, **{'met' if ok else 'missed'}**; "
                       f"the slot check: {r['vs_lru']:+.1f} ns")
        mpps = 1e3 / r["ns"] if r["ns"] else float("inf")
        fill = f"{r['fill']:,} ({r['entries']:,} live)" if len(fills) > 1 else f"{r['fill']:,}"
        body.append([fill, r["frame"], r["program"], r.get("path", ""), f"{r['ns']:.1f}", f"{r['ratio']:.3f}×",
                     f"{mpps:.1f}", verdict])
    lines.append(table(["fill", "frame", "program", "path", "ns/packet", "vs empty", "Mpps/core", "target"], body))
    lines += ["", *summary(rows), ""]
    if variants:
        lines += where_the_time_goes(variants, vfill)
    if nonarp:
        lines += ["", *nonarp_section(nonarp)]
    return "\n".join(lines)


def summary(rows: list[dict]) -> list[str]:
    out = [f"**Verdicts** ({OURS}, worst case over the fills):", ""]
    for kind, target in TARGETS.items():
        mine = [r for r in rows if r["program"] == OURS and not r.get("limit")
                and ("non-ARP" in r["frame"]) == (kind == "non-ARP") and ("(ND)" in r["frame"]) == (kind == "ND")]
        if not mine:
            continue
        worst = max(mine, key=lambda r: r["ratio"])
        slowest = max(mine, key=lambda r: r["ns"])
        stretch = (f" (stretch {STRETCH_ARP}×: **{'met' if worst['ratio'] <= STRETCH_ARP else 'missed'}**)"
                   if kind == "ARP" else "")
        out.append(f"- {kind} ≤ {target}× empty: **{'met' if worst['ratio'] <= target else 'missed'}**{stretch} "
                   f"(worst {worst['ratio']:.3f}×, {worst['frame']}, fill {worst['fill']:,}); "
                   f"≥ 14.88 Mpps/core: **{'met' if slowest['ns'] <= LINE_RATE_10G_NS else 'missed'}** "
                   f"(slowest {slowest['ns']:.1f} ns = {1e3 / slowest['ns']:.1f} Mpps).")
    col = [r for r in rows if r["program"] == COLLIDING and "vs_before" in r and "non-ARP" not in r["frame"]]
    if col:
        worst = max(col, key=lambda r: r["vs_before"] / r["before_ns"])
        ok = all(r["vs_before"] <= NOISE * r["before_ns"] for r in col)
        check = [r["vs_lru"] for r in col]
        out.append(f"- Collision / fallback no slower than the program before issue 15 (within {NOISE:.0%}): "
                   f"**{'met' if ok else 'missed'}** (worst {worst['vs_before']:+.1f} ns against "
                   f"{worst['before_ns']:.1f} ns, {worst['frame']}, fill {worst['fill']:,}; the slot check "
                   f"itself costs {min(check):+.1f} to {max(check):+.1f} ns over the LRU maps alone).")
    noise = [abs(r["ratio"] - 1) for r in rows if r["program"] == EMPTY2]
    if noise:
        out.append(f"- Noise of the measurement (`{EMPTY2}`): at most {max(noise):.3f}× off 1.00×.")
    return out


def nonarp_section(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    body = [[r["frame"], r["label"], f"{r['ns']:.2f}", f"{r['kernel_ns']:.0f}", f"{r['added']:+.2f}",
             f"{r['ratio']:.3f}×", r.get("insns", "?")] for r in rows]
    lines = ["### Where the time goes (non-ARP)", "",
             "Each non-ARP frame against the empty program and against the least any program must do to "
             "know the frame is neither ARP nor ND; `added` is the paired difference to the empty program.",
             "", table(["frame", "program", "ns/packet (CPU clock)", "kernel ns", "added ns", "vs empty",
                        "insns"], body), ""]
    for fname in dict.fromkeys(r["frame"] for r in rows):
        by = {r["variant"]: r for r in rows if r["frame"] == fname}
        base = by[EMPTY]["ns"]
        minimal = next(r for v, r in by.items() if v not in (EMPTY, OURS))
        ours = by[OURS]
        lines.append(
            f"- {fname}: 1.05× of the floor is {0.05 * base:.2f} ns. The minimum ({minimal['label']}) adds "
            f"{minimal['added']:+.2f} ns ({minimal['ratio']:.3f}×); ours adds {ours['added']:+.2f} ns "
            f"({ours['ratio']:.3f}×), {ours['added'] - minimal['added']:+.2f} ns over that minimum." + (
                " The target is met." if ours["ratio"] <= 1.05 else
                " Even the minimum does not fit in 1.05× of this floor: missed by construction."
                if minimal["ratio"] > 1.05 else " Missed."))
    return lines


def where_the_time_goes(variants: list[dict], vfill: int) -> list[str]:
    by = {v["variant"]: v for v in variants}
    body = []
    for v in variants:
        calls = ", ".join(dict.fromkeys(v.get("calls", []))) or "none (inlined)"
        body.append([v["label"], f"{v['ns']:.1f}", f"{v['ratio']:.2f}×", f"{v['added']:+.1f}",
                     v.get("insns", "?"), calls])
    lines = [
        "### Where the time goes (ARP request)",
        "",
        f"The ARP path rebuilt one step at a time as separate XDP programs (same parser as ours), each with "
        f"{vfill:,} entries in its map, measured in one interleaved run against the same empty program. "
        "`insns` is the program after the verifier's rewrites and `calls` the kernel functions it still "
        "calls (`bpftool prog dump xlated`); a map lookup the verifier inlines shows no call. This VM "
        "exposes no hardware PMU (`perf stat -e cycles` is `<not supported>`), so `bpftool prog profile` "
        "cannot count cycles here; timing the variants is the measurement.",
        "",
        table(["variant", "ns/packet", "vs empty", "added ns", "insns", "calls"], body),
        "",
    ]
    need = {EMPTY, "v_parse", "v_parse_health", "v_call", "v_lru", "v_lru_shared", "v_lru4", "v_phash", "v_direct"}
    if need <= by.keys():
        ns = {k: v["ns"] for k, v in by.items()}
        add = {k: v["added"] for k, v in by.items()}
        base = ns[EMPTY]
        budget = 0.5 * base
        lru = add["v_lru"] - add["v_parse_health"]
        shared = add["v_lru_shared"] - add["v_parse_health"]
        call = add["v_call"] - add["v_parse_health"]
        lines += [
            f"Reading: the floor (empty program) is {base:.1f} ns, nearly all of it the test-run loop itself "
            f"(context setup, the indirect call into the program, timing), so the 1.5× target leaves "
            f"**{budget:.1f} ns** for everything the ARP path adds. Parsing adds {add['v_parse']:+.1f} ns "
            f"and the health array {add['v_parse_health'] - add['v_parse']:+.1f} ns (the verifier inlines "
            f"array lookups: no call). The LRU per-CPU hash lookup the program made for every frame before "
            f"issue 15 adds **{lru:+.1f} ns** on its own: it is a helper call "
            "(`htab_lru_percpu_map_lookup_elem`: jhash of the key, bucket walk, key compare, LRU reference bit, "
            "per-CPU pointer), and on this CPU every kernel call/return pays the speculative-execution "
            f"mitigation (`spec_rstack_overflow: {_vuln('spec_rstack_overflow')}`, "
            f"`spectre_v2: {_vuln('spectre_v2').split(';')[0]}`): a call into a trivial kernel function "
            f"costs {call:+.1f} ns here. With a 4-byte key instead of 16 the lookup adds "
            f"{add['v_lru4'] - add['v_parse_health']:+.1f} ns, with a plain per-CPU hash instead of LRU "
            f"{add['v_phash'] - add['v_parse_health']:+.1f} ns. An LRU hash with one value for all CPUs "
            f"(an atomic add) adds {shared:+.1f} ns: the verifier inlines its lookup into a direct call of the "
            "hash-table walk (`bpftool prog dump xlated` shows `__htab_map_lookup_elem`, not the helper), one "
            "call less than the per-CPU map, and the atomic add is uncontended. That is what the shipped program "
            "keeps behind its fast path (docs/architecture.md, \"Why the LRU maps are not per-CPU\"). Either "
            f"way the lookup alone is {min(lru, shared) / budget:.1f}× the 1.5× budget, so **no parser tweak "
            "can reach 1.5× while each ARP frame does a hash-map lookup**. A direct-mapped per-CPU array "
            f"indexed by a multiplicative hash costs {ns['v_direct']:.1f} ns ({by['v_direct']['ratio']:.2f}×; "
            "the lookup is inlined), and that is what the shipped program does first (its fast path): the key "
            "sits in the slot, a colliding key falls back to the LRU map, so the common storm case (few keys) "
            f"never calls into a hash table — the `{OURS}` rows above, fast hit.",
        ]
    return lines


def load_note() -> str:
    """How busy the machine was: load averages against the CPU count (the cores are shared)."""
    try:
        with open("/proc/loadavg") as f:
            one, five, _fifteen = f.read().split()[:3]
    except OSError:
        return ""
    return f"load average {one} (1 min), {five} (5 min) on {os.cpu_count()} CPUs"


def _vuln(name: str) -> str:
    try:
        with open(f"/sys/devices/system/cpu/vulnerabilities/{name}") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Many short runs rather than a few long ones: the median then shrugs off the runs that shared
    # the core (or its SMT sibling) with someone else's job.
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--fills", default=",".join(str(f) for f in FILLS),
                    help="comma-separated numbers of distinct entries in the map (default: %(default)s)")
    ap.add_argument("--no-variants", action="store_true", help="skip the where-the-time-goes variants")
    ap.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    a = ap.parse_args(argv)
    fills = tuple(int(x) for x in a.fills.split(","))
    rows = measure(a.repeat, a.runs, fills)
    vfill = max(fills)
    variants = [] if a.no_variants else measure_variants(a.repeat, a.runs, vfill)
    nonarp = [] if a.no_variants else measure_nonarp(a.repeat, a.runs)
    text = render(rows, variants, a.repeat, a.runs, vfill, nonarp, load=load_note())
    print(text)
    if not a.no_write:
        write_section("prog_cost", text)


if __name__ == "__main__":
    main()
