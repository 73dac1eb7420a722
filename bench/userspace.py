"""Userspace scaling: time and CPU per interval to read the kernel map and aggregate it, with 1k, 10k
and 100k active entries, in two shapes (N targets asked by one sender each; N pairs = N/50 targets
asked by 50 senders each); peak RSS; and the kernel map memory at the default sizes for 2, 64 and 256
CPUs, computed from the loaded map definitions and checked against what this kernel reports.

    python -m bench.userspace [--sizes 1000,10000,100000] [--intervals N] [--no-write]

The map is filled through BPF_PROG_TEST_RUN (the real XDP program, one run per distinct frame) and
every entry is touched again before each measured interval, so every entry has a delta to aggregate.
Each size runs in a fresh process, so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.report import machine, median, table, write_section

REPO = Path(__file__).resolve().parent.parent
SIZES = (1_000, 10_000, 100_000)
SHAPES = {"targets": 1, "pairs": 50}  # senders per target
TIME_TARGET_MS = 100.0  # 100k targets: a full interval's CPU
PEERS = 250  # BGP peers in the verdict engine's book (a real BIRD when root and bird are there)
MEM_TARGET_MIB = 64.0  # kernel memory on a 64-CPU host, default sizes
CPU_COUNTS = (2, 64, 256)
BASE = int(ipaddress.IPv4Address("198.18.1.0"))  # targets from here up; senders in 198.18.0.0/24


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # kB
    return 0


def frames_for(n: int, senders: int) -> list[bytes]:
    from tests.support import frames as F

    out = []
    for i in range(n):
        tpa = str(ipaddress.IPv4Address(BASE + i // senders))
        spa = f"198.18.0.{10 + i % senders}"
        out.append(F.arp_request(spa, tpa))
    return out


def perf_profile(work: Callable[[], object], seconds: float = 3.0) -> list[tuple[float, str]]:
    """Where an interval's CPU time goes: `perf record -e cpu-clock` (a software clock: this VM has no
    hardware PMU) on this process while `work` runs in a loop; top symbols, kernel and user."""
    if shutil.which("perf") is None:
        return []
    with tempfile.TemporaryDirectory(prefix="arp-perf-") as tmp:
        data = os.path.join(tmp, "perf.data")
        rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-p", str(os.getpid()),
                                "-o", data, "--", "sleep", str(seconds)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # perf attaches
        end = time.monotonic() + seconds - 0.5
        while time.monotonic() < end:
            work()
        rec.wait(timeout=seconds + 30)
        rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,symbol", "--stdio"],
                             capture_output=True, text=True, timeout=60)
    out = []
    for line in rep.stdout.splitlines():
        m = re.match(r"^\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.+?)\s*$", line)
        if m:
            sym = re.split(r"\s{2,}", m.group(4))[0]
            sym = sym if not sym.startswith("0x") else f"({os.path.basename(m.group(2))})"
            out.append((float(m.group(1)), f"{sym} [{'kernel' if m.group(3) == 'k' else 'user'}]"))
    merged: dict[str, float] = {}
    for pct, sym in out:  # unresolved addresses of one library add up to one row
        merged[sym] = merged.get(sym, 0.0) + pct
    return sorted(((p, s) for s, p in merged.items()), reverse=True)[:8]


@contextlib.contextmanager
def bird_book(peers: int) -> Iterator[object]:
    """A PeerBook over a real BIRD with `peers` configured BGP peers that do not exist (a full mesh after
    its nodes died; tests/support/birdproc.py), refreshed once; an empty book without root or bird."""
    from sensor.peers import PeerBook

    if peers <= 0 or os.geteuid() != 0 or not shutil.which("bird"):
        yield PeerBook()
        return
    from tests.support.birdproc import BirdNetns

    with BirdNetns(n_peers=peers) as b:
        time.sleep(1.0)  # BIRD tries its peers once: states and errors filled in
        book = PeerBook(bird_sockets=[b.socket])
        book.refresh(time.time())
        try:
            yield book
        finally:
            book.close()


def child(n: int, shape: str, intervals: int, with_perf: bool = False, peers: int = PEERS) -> dict:
    """One size and shape, in this process: fill, then `intervals` measured full intervals of each kind."""
    from sensor.events import encode as events
    from sensor.kernel import bpfsys
    from sensor.kernel.datapath import Datapath
    from sensor.kernel.layout import DEFAULT_MAX_ENTRIES
    from sensor.kernel.reader import EntryTable, MapReader, Snapshot
    from sensor.outputs.wire import encode_json
    from sensor.peers import peer_fields
    from sensor.pipeline.aggregate import Aggregator, select
    from sensor.pipeline.detect import VerdictEngine

    senders = SHAPES[shape]
    # As a user would size it: the default map, or the next power of two with 25% headroom.
    max_entries = max(DEFAULT_MAX_ENTRIES, 1 << (n * 5 // 4 - 1).bit_length())
    dp = Datapath(max_entries=max_entries)
    reader = MapReader(dp.maps, max_entries)
    agg = Aggregator({1: "lo"})
    engine = VerdictEngine(window_s=10.0, min_requests=3, hostname="bench")
    frames = frames_for(n, senders)
    fd = dp.fn_xdp.fd

    def touch() -> None:
        for fr in frames:
            bpfsys.prog_test_run(fd, fr)

    with bird_book(peers) as book:
        n_peers = sum(1 for p in book.peers() if p.is_bgp)
        touch()
        first = reader.snapshot()
        agg.update(first)  # the baseline every later interval is a delta against
        hwm_before = _status("VmHWM")

        def read() -> tuple[Snapshot, float, float, float, float]:
            """What MapReader.snapshot() does, timed in its parts: the kernel's batch copy, then the numpy
            tables, the health read and the fast-path drain (flip, grace period, read and
            zero one half). Returns (snapshot, t0, t1, t2, cpu0)."""
            t0, c0 = time.perf_counter(), time.process_time()
            keys, vals, count = reader.read_raw()
            t1 = time.perf_counter()
            snap = Snapshot(time.monotonic(), None, reader.read_health(),
                            table=EntryTable.from_raw(keys, vals, count), fast=reader.read_fast())
            return snap, t0, t1, time.perf_counter(), c0

        def rest(snap: Snapshot, now: float) -> tuple[object, list, int, float, float]:
            """What the runner and its stages do with a snapshot: aggregate, verdicts, the --top 20 target
            events (annotated with their peer), the health event, each encoded to JSON as a sink does."""
            t2 = time.perf_counter()
            iv = agg.update(snap)
            t3 = time.perf_counter()
            evs = engine.update(iv.windows, book, now)
            t4 = time.perf_counter()
            chosen = select(iv.windows, 20, 1)
            out = [events.target_event(w, now, "bench", peer_fields(p) if (p := book.get(w.key.ip)) else None)
                   for w in chosen]
            out += evs
            out.append(events.health_event(dict(iv.health, entries_live=iv.entries_live), now, "bench"))
            size = sum(len(encode_json(e)) for e in out)
            return iv, chosen, size, t3 - t2, t4 - t3

        # Steady-state intervals alternate with intervals aggregated as if the set of entries had changed
        # (new targets, evictions): the aggregator forgets the previous read's key order, so every entry is
        # matched again by key. Interleaved, so drift and other jobs hit both alike. One interval per second
        # of the verdict engine's clock: after 10 its windows are full and its candidates mature.
        rows = []
        for k in range(2 * intervals):
            touch()
            snap, t0, t1, t2, c0 = read()
            changed = k % 2 == 1
            if changed:
                agg._prev_raw = None
            iv, chosen, size, agg_s, verdict_s = rest(snap, float(k + 1))
            t5, c5 = time.perf_counter(), time.process_time()
            rows.append({"changed": changed, "batch_ms": (t1 - t0) * 1e3, "table_ms": (t2 - t1) * 1e3,
                         "agg_ms": agg_s * 1e3, "verdict_ms": verdict_s * 1e3,
                         "emit_ms": (t5 - t2 - agg_s - verdict_s) * 1e3, "total_ms": (t5 - t0) * 1e3,
                         "cpu_ms": (c5 - c0) * 1e3, "entries": len(snap.table) + len(snap.fast or ()),
                         "windows": len(iv.windows), "chosen": len(chosen), "bytes": size,
                         "requests": int(iv.windows.cols["requests"].sum()), "verdicts": len(engine.verdicts())})
            del iv, chosen, snap
        hwm = _status("VmHWM")
        # Once more, walking every window (what the verdict engine did before it took arrays): its price.
        touch()
        iv = agg.update(reader.snapshot())
        t0 = time.perf_counter()
        every = list(iv.windows)
        all_ms = (time.perf_counter() - t0) * 1e3
        hwm_all = _status("VmHWM")
        n_all = len(every)
        del iv, every

        def interval_changed() -> None:
            agg._prev_raw = None  # every entry matched again: the worse of the two paths
            rest(reader.snapshot(), time.monotonic())

        profile = perf_profile(interval_changed) if with_perf else []
    return {"n": n, "shape": shape, "senders": senders, "max_entries": max_entries, "rounds": rows,
            "perf": profile, "hwm_before_kb": hwm_before, "hwm_kb": hwm, "all_windows_ms": all_ms,
            "all_windows": n_all, "hwm_all_kb": hwm_all, "peers": n_peers}


def run_child(n: int, shape: str, intervals: int, with_perf: bool = False) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "bench.userspace", "--child", str(n), "--shape", shape,
                        "--intervals", str(intervals), *(["--perf"] if with_perf else [])], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=900)
    if r.returncode:
        raise RuntimeError(f"userspace child {n}/{shape} exited {r.returncode}: {r.stderr.strip()[-400:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- kernel map memory ---------------------------------------------------------------------------
HTAB_ELEM = 48  # sizeof(struct htab_elem) on 64-bit kernels
BUCKET = 16  # sizeof(struct bucket)


def _r8(x: int) -> int:
    return (x + 7) // 8 * 8


def _pow2(x: int) -> int:
    return 1 << (x - 1).bit_length()


def map_bytes(m: dict, ncpu: int) -> int | None:
    """Kernel memory of one map (bytes, without its fixed header) for ncpu possible CPUs — the same
    arithmetic as the kernel's own accounting (htab_map_mem_usage / array_map_mem_usage). None for map
    types this does not model."""
    t, k, v, n = m["type"], m["bytes_key"], m["bytes_value"], m["max_entries"]
    if t in ("hash", "percpu_hash", "lru_hash", "lru_percpu_hash"):
        percpu = "percpu" in t
        lru = t.startswith("lru")
        elem = HTAB_ELEM + _r8(k) + (8 if percpu else _r8(v))
        entries = n + (ncpu if not percpu and not lru else 0)  # plain hash keeps a spare elem per CPU
        total = BUCKET * _pow2(n) + elem * entries
        if percpu:
            total += _r8(v) * ncpu * entries
        elif not lru:
            total += 8 * ncpu
        return total
    if t == "percpu_array":
        return n * 8 + _r8(v) * ncpu * n
    if t == "array":
        return n * _r8(v)
    return None


def kernel_memory() -> list[dict]:
    """Every map the default-sized program loads, from bpftool: reported bytes here, and computed for
    each CPU count (the fixed per-map header is taken from this kernel's report)."""
    from sensor.kernel import bpfsys
    from sensor.kernel.datapath import Datapath

    ncpu_here = bpfsys.possible_cpus()
    dp = Datapath()
    prog_id = bpfsys.prog_id_by_fd(dp.fn_xdp.fd)
    prog = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)], capture_output=True,
                                     text=True, check=True, timeout=20).stdout)
    out = []
    for mid in prog.get("map_ids", []):
        m = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "id", str(mid)], capture_output=True,
                                      text=True, check=True, timeout=20).stdout)
        here = map_bytes(m, ncpu_here)
        reported = int(m.get("bytes_memlock", 0))
        row = {"name": m.get("name", "?"), "type": m["type"], "key": m["bytes_key"], "value": m["bytes_value"],
               "max_entries": m["max_entries"], "reported_here": reported, "computed_here": here}
        fixed = reported - here if here is not None else 0
        for c in CPU_COUNTS:
            b = map_bytes(m, c)
            row[f"cpu{c}"] = b + fixed if b is not None else None
        out.append(row)
    return out


# -- report --------------------------------------------------------------------------------------
def render(results: list[dict], mem: list[dict], intervals: int, load: str = "") -> str:
    body = []
    verdict = None
    keys = ("batch_ms", "table_ms", "agg_ms", "verdict_ms", "emit_ms", "total_ms", "cpu_ms")
    for r in results:
        steady = [x for x in r["rounds"] if not x.get("changed")]
        changed = [x for x in r["rounds"] if x.get("changed")] or steady
        med = {k: median([x[k] for x in steady]) for k in keys}
        new = {k: median([x[k] for x in changed]) for k in keys}
        targets = r["n"] // r["senders"]
        body.append([f"{r['n']:,}", r["shape"], f"{targets:,} × {r['senders']}", f"{r['max_entries']:,}",
                     f"{med['batch_ms']:.1f}", f"{med['table_ms']:.1f}", f"{med['agg_ms']:.1f}",
                     f"{med['verdict_ms']:.1f}", f"{med['emit_ms']:.1f}", f"{med['total_ms']:.1f}",
                     f"**{med['cpu_ms']:.1f}**", f"{new['agg_ms']:.1f}", f"**{new['cpu_ms']:.1f}**",
                     f"{r['hwm_kb'] / 1024:.0f} MiB",
                     f"{(r['hwm_kb'] - r['hwm_before_kb']) / 1024:+.1f} MiB", f"{r['all_windows_ms']:.0f}"])
        if r["n"] == 100_000 and r["shape"] == "targets":
            verdict = (med, new, r.get("peers", 0))
    lines = [
        "## Userspace scaling",
        "",
        f"`python -m bench.userspace` — the map filled through BPF_PROG_TEST_RUN with distinct (target, "
        "sender) pairs, every entry touched again before each interval so all of them are active. A full "
        "interval, as the runner does it: `MapReader.snapshot()` — the kernel's `BPF_MAP_LOOKUP_BATCH` copy of "
        "the LRU map (system time, in the kernel), the numpy tables, and the fast-path "
        "drain (epoch flip, `membarrier` grace period — a wait, not CPU — one batch read and zeroing of the "
        f"retired half); `Aggregator.update()`; the verdict engine with a {PEERS}-peer book read from a real "
        "BIRD (`VerdictEngine.update`); then `select(top=20)`, the target events with their peer "
        "annotation, the verdict events and the health event, each encoded to JSON as a sink does "
        "(`emit`). When a read returns exactly the entries of the previous one in the same order (a "
        "storm's steady state) the aggregator reuses its per-key work; `entries changed` is the same "
        "interval aggregated as if the entries had changed (every entry matched again by key hash): the "
        "price under churn such as a spoofed-target flood; the two kinds alternate. Median of "
        f"{intervals} intervals of each kind, wall ms per phase; CPU is the process's user + system time for "
        "the whole interval. Peak RSS is the process's VmHWM (it includes compiling the program with "
        "bcc/LLVM, as the sensor does at start); `growth` is the peak's rise over the intervals. `every "
        "window` is one more interval that builds a TargetWindow for every target (what the verdict engine "
        "did before it worked on arrays). Each size runs in a fresh process.",
        f"Machine: {machine()}." + (f" Load while measuring: {load}." if load else ""),
        "",
        table(["entries", "shape", "targets × senders", "--max-entries", "kernel batch read ms", "tables + drain ms",
               "aggregate ms", "verdicts ms", "emit ms", "total ms", "CPU ms", "aggregate, entries changed ms",
               "CPU, entries changed ms", "peak RSS", "growth", "every window ms"],
              body),
        "",
    ]
    if verdict is not None:
        med, new, n_peers = verdict
        lines.append(f"- Target: a full interval at 100k targets (read, aggregate, verdicts with a {n_peers}-peer "
                     f"BIRD book, select, encode) in ≤ {TIME_TARGET_MS:g} ms of CPU: "
                     f"**{'met' if med['cpu_ms'] <= TIME_TARGET_MS else 'missed'}** in the steady state "
                     f"(CPU {med['cpu_ms']:.1f} ms, of which the kernel's batch read {med['batch_ms']:.1f} ms wall); "
                     f"**{'met' if new['cpu_ms'] <= TIME_TARGET_MS else 'missed'}** when every entry must be "
                     f"matched again (CPU {new['cpu_ms']:.1f} ms). Verdicts {med['verdict_ms']:.1f} ms "
                     f"(they were ~500 ms when the engine walked every window). Judged on CPU time, which "
                     "other jobs on a shared machine cannot stretch the way they stretch wall time.")
    prof = next((r for r in results if r.get("perf")), None)
    if prof:
        lines += ["", f"Where an interval's CPU time goes at {prof['n']:,} {prof['shape']} with every entry "
                  "matched again (`perf record -e cpu-clock` on the process while it reads and aggregates in "
                  "a loop; share of samples):", "",
                  table(["share", "symbol"], [[f"{p:.1f}%", f"`{sym}`"] for p, sym in prof["perf"]]), "",
                  "`__htab_map_lookup_and_delete_batch` is the kernel walking every bucket of the hash map and "
                  "copying each entry's value (one per entry: the LRU maps are not per-CPU): memory-latency "
                  "bound, proportional to entries, and untouched by anything user space does. The fast path's "
                  "arrays are read in bulk "
                  "(one batch read of a half, sequential), but it holds a storm's few keys; a scan of 100k "
                  "distinct targets lives in the LRU map, whose walk is this cost."]
    lines += ["", "### Kernel map memory", ""]
    mbody = []
    totals = {c: 0 for c in CPU_COUNTS}
    for m in mem:
        cells = []
        for c in CPU_COUNTS:
            b = m[f"cpu{c}"]
            if b is not None:
                totals[c] += b
            cells.append(f"{b / 2**20:.2f} MiB" if b is not None else "n/a")
        here = (f"{m['computed_here']:,} computed, {m['reported_here']:,} reported "
                f"(header {m['reported_here'] - m['computed_here']:,})"
                if m["computed_here"] is not None else f"{m['reported_here']:,} reported (not modelled)")
        mbody.append([m["name"], m["type"], f"{m['key']} / {m['value']}", f"{m['max_entries']:,}", here, *cells])
    mbody.append(["**all maps**", "", "", "", "", *(f"**{totals[c] / 2**20:.2f} MiB**" for c in CPU_COUNTS)])
    lines += [
        "Default sizes (`arp-sensor run` without `--max-entries`), every map the program loads (from "
        "`bpftool prog show` → `map_ids`). Formula, as the kernel accounts it (`htab_map_mem_usage`): a "
        "preallocated hash map costs `16 × roundup_pow2(max_entries)` for the buckets plus, per entry, "
        "`sizeof(htab_elem) 48 + round8(key)` and then either `round8(value)` (plain) or an 8-byte pointer "
        "plus `round8(value) × possible CPUs` (per-CPU); a per-CPU array costs `max_entries × (8 + "
        "round8(value) × possible CPUs)`. For `arp_counts` (an LRU hash with one value per entry, 24-byte key) "
        "that is `max_entries × 104` whatever the CPU count; only the per-CPU fast-path arrays grow with "
        "it. *Possible* CPUs count, not online ones "
        "(`/sys/devices/system/cpu/possible`). The fixed per-map header (a few hundred bytes) is taken from "
        "this kernel's report: the `here` column sets the computed variable part against what this "
        "kernel reports (bpftool `bytes_memlock`) — if the formula were wrong the difference would be "
        "megabytes, not a constant header.",
        "",
        table(["map", "type", "key / value B", "max_entries", "here (bytes)",
               *(f"{c} CPUs" for c in CPU_COUNTS)], mbody),
        "",
        f"- Target ≤ {MEM_TARGET_MIB:g} MiB on a 64-CPU host by default: "
        f"**{'met' if totals[64] / 2**20 <= MEM_TARGET_MIB else 'missed'}** ({totals[64] / 2**20:.1f} MiB; "
        f"{totals[256] / 2**20:.0f} MiB at 256 CPUs, most of it the fast-path arrays: `--fast-slots` sizes them).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--intervals", type=int, default=9, help="measured intervals of each kind")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--perf", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--shape", default="targets", choices=list(SHAPES), help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    a = ap.parse_args(argv)
    if a.child is not None:
        print(json.dumps(child(a.child, a.shape, a.intervals, a.perf)))
        return
    sizes = [int(n) for n in a.sizes.split(",")]
    # perf on the biggest "targets" run only: that is the one the target is about
    results = [run_child(n, shape, a.intervals, with_perf=(n == max(sizes) and shape == "targets"))
               for n in sizes for shape in a.shapes.split(",")]
    mem = kernel_memory()
    from bench.prog_cost import load_note

    text = render(results, mem, a.intervals, load=load_note())
    print(text)
    if not a.no_write:
        write_section("userspace", text)


if __name__ == "__main__":
    main()
