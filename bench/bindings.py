"""What the bindings stage and the neighbour-table read add to an interval, as ratios to the aggregation
of the same interval in the same run (user space only; the kernel side is bench/prog_cost.py).

    python -m bench.bindings [--askers 200] [--targets 50] [--intervals 10] [--no-write]

Storm shape: ASKERS hosts each asking for TARGETS IPs (one request entry per pair) plus one reply entry
per asker, every entry with new frames every interval (the worst case: every entry is active). The
bindings stage (BindingStage.on_interval, as `run` calls it) groups the interval's active entries with
numpy, then runs the engine on the groups; the median interval is a steady one (the first interval,
which learns every binding, is in the list too).
The neighbour-table read is the real netlink dump of this namespace's table (whatever it holds).
"""

from __future__ import annotations

import argparse
import time

from bench.report import machine, median, table, write_section

TARGET_RATIO = 1.0  # the bindings stage must cost no more than the aggregation it rides on


def storm(askers: int, targets: int, step: int) -> dict:
    from sensor.kernel.layout import KIND_REPLY, KIND_REQUEST

    out = {}
    for a in range(askers):
        mac = f"02:00:00:00:{a // 256:02x}:{a % 256:02x}"
        ip = f"198.18.{a // 250}.{a % 250 + 1}"
        for t in range(targets):
            out[(2, f"198.19.{t // 250}.{t % 250 + 1}", ip, 0, 0, KIND_REQUEST, mac, 0)] = (3 * step + 1, 1)
        out[(2, ip, "0.0.0.0", 0, 0, KIND_REPLY, mac, 0)] = (step + 1, 1)
    return out


def measure(askers: int, targets: int, intervals: int) -> dict:
    from sensor.bindings.engine import BindingEngine
    from sensor.bindings.stage import BindingStage
    from sensor.kernel.reader import Snapshot
    from sensor.neigh.stage import Pressure
    from sensor.neigh.table import NeighReader
    from sensor.pipeline.aggregate import Aggregator

    ifnames = {2: "eth0"}
    agg = Aggregator(ifnames)
    agg.update(Snapshot(0.0, entries=storm(askers, targets, 0), health={}))
    stage = BindingStage(BindingEngine(learn_s=0))
    stage.ifnames = ifnames
    reader, pressure = NeighReader(), Pressure()
    t_agg, t_bind, t_neigh = [], [], []
    active = 0
    try:
        for i in range(1, intervals + 1):
            snap = Snapshot(float(i), entries=storm(askers, targets, i), health={})
            _ = snap.table  # built outside the timing: the reader hands the aggregator a table
            t0 = time.perf_counter()
            iv = agg.update(snap)
            t1 = time.perf_counter()
            stage.on_interval(iv, float(i))
            t2 = time.perf_counter()
            pressure.update(reader.table(), reader.entries(list(ifnames)), ifnames, float(i))
            t3 = time.perf_counter()
            t_agg.append(t1 - t0)
            t_bind.append(t2 - t1)
            t_neigh.append(t3 - t2)
            active = len(iv.active.count)
    finally:
        reader.close()
    a, b, n = median(t_agg), median(t_bind), median(t_neigh)
    return {"askers": askers, "targets": targets, "active": active, "aggregate_ms": a * 1e3,
            "bindings_ms": b * 1e3, "neigh_ms": n * 1e3, "ratio": b / a if a else 0.0,
            "bindings": len(stage.engine.bindings)}


def render(results: list[dict], intervals: int) -> str:
    rows = [[f"{r['active']:,}", f"{r['askers']} x {r['targets']}", f"{r['aggregate_ms']:.2f}",
             f"{r['bindings_ms']:.2f}", f"{r['ratio']:.2f}", f"{r['neigh_ms']:.2f}"] for r in results]
    worst = max(r["ratio"] for r in results)
    verdict = "met" if worst <= TARGET_RATIO else "MISSED"
    return "\n".join([
        "## Bindings and neighbour table: user-space cost per interval",
        "",
        f"{machine()}; median of {intervals} intervals per row; `python -m bench.bindings`.",
        "Every entry active in every interval (the worst case). Ratio = bindings stage / aggregation of the "
        "same interval. The neighbour-table read is this namespace's real table over netlink.",
        "",
        table(["active entries", "askers x targets", "aggregate ms", "bindings ms", "ratio", "neigh read ms"],
              rows),
        "",
        f"- Target bindings stage <= {TARGET_RATIO:g} x aggregation: **{verdict}** (worst {worst:.2f}).",
    ])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench.bindings", description=__doc__.split("\n")[0])
    ap.add_argument("--askers", default="20,200,2000", help="comma-separated asker counts")
    ap.add_argument("--targets", type=int, default=50)
    ap.add_argument("--intervals", type=int, default=10)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args(argv)
    results = [measure(int(a), args.targets, args.intervals) for a in args.askers.split(",")]
    body = render(results, args.intervals)
    print(body)
    if not args.no_write:
        write_section("bindings", body)


if __name__ == "__main__":
    main()
