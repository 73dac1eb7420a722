"""Output throughput: events/s and sensor-side CPU per 1,000 events for each sink, against encoding alone.

Each sink gets N realistic `arp_sensor.target` events (5 top senders, a BGP peer) through
`Dispatcher.emit`, timed until the sink reports all N sent (tcp/udp/unix: handed to the kernel;
forward chunk=1: acknowledged). Receivers run in a separate process (bench/_receiver.py) so their CPU
is not counted; CPU is this process's user+system time, i.e. emit plus the sink's sender thread.
Baseline, in the same run: JSON-encoding the same events without any I/O.

    python -m bench.outputs [--events 20000] [--runs 3] [--sinks stdout,file,...] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.report import machine, median, table, write_section
from sensor.events.encode import target_event
from sensor.model import TargetWindow, WindowKey
from sensor.outputs import build_outputs
from sensor.outputs.wire import encode_forward_entry, encode_json

SINKS = ["stdout", "file", "tcp", "unix", "udp", "forward", "forward-ack"]


def sample(n: int) -> list[dict]:
    out = []
    for i in range(n):
        key = WindowKey(2, "ingress", 0, f"198.18.{(i >> 8) & 0xff}.{i & 0xff}")
        w = TargetWindow(key, "eth0", 1.0, requests=100 + i % 50, replies=0, senders=5,
                         top_senders=[(f"198.19.0.{k}", 20 - k) for k in range(1, 6)])
        out.append(target_event(w, 1.8e9 + i / 1000, "node-a",
                                peer={"name": f"Mesh_198_18_0_{i & 0xff}", "state": "Active",
                                      "last_error": "Socket: Connection refused"}))
    return out


@contextlib.contextmanager
def receiver(kind: str, tmp: Path) -> Iterator[str]:
    """Starts the receiver process; yields the --output spec for it."""
    if kind in ("stdout", "file"):
        yield "-" if kind == "stdout" else f"file:{tmp / 'bench.json'}"
        return
    args = ["unix", str(tmp / "r.sock")] if kind == "unix" else ["forward" if kind.startswith("forward") else kind]
    p = subprocess.Popen([sys.executable, "-m", "bench._receiver", *args], stdout=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    try:
        line = p.stdout.readline().strip()
        if kind == "unix":
            yield f"unix:{tmp / 'r.sock'}"
        elif kind == "forward-ack":
            yield f"forward://127.0.0.1:{line}?chunk=1"
        else:
            yield f"{kind}://127.0.0.1:{line}"
    finally:
        p.kill()
        p.wait()


@contextlib.contextmanager
def stdout_to_devnull() -> Iterator[None]:
    saved = sys.stdout
    with open(os.devnull, "w") as null:
        sys.stdout = null
        try:
            yield
        finally:
            sys.stdout = saved


def _cpu() -> float:
    return time.process_time()  # all threads of this process, fine-grained


def run_sink(kind: str, events: list[dict]) -> dict:
    n = len(events)
    with tempfile.TemporaryDirectory() as d, receiver(kind, Path(d)) as spec:
        redirect = stdout_to_devnull() if kind == "stdout" else contextlib.nullcontext()
        with redirect:
            disp = build_outputs([spec], queue_size=n + 1, validate_schema=False)
            try:
                # connect first, so the timing is steady-state throughput, not the first connect
                deadline = time.monotonic() + 5
                while not disp.stats()[spec]["connected"] and time.monotonic() < deadline:
                    time.sleep(0.01)
                c0, t0 = _cpu(), time.perf_counter()
                for ev in events:
                    disp.emit(ev)
                t_emit = time.perf_counter() - t0
                deadline = time.monotonic() + 60
                while True:
                    st = disp.stats()[spec]
                    if st["sent"] + st["dropped"] >= n or time.monotonic() > deadline:
                        break
                    time.sleep(0.001)
                wall, cpu = time.perf_counter() - t0, _cpu() - c0
            finally:
                disp.close(2)
    return {"sink": kind, "events_s": n / wall, "cpu_ms_per_1k": cpu / n * 1e6, "emit_us": t_emit / n * 1e6,
            "sent": st["sent"], "dropped": st["dropped"]}


def baseline(events: list[dict], forward: bool = False) -> dict:
    enc: Callable = encode_forward_entry if forward else encode_json
    c0, t0 = _cpu(), time.perf_counter()
    for ev in events:
        enc(ev)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    n = len(events)
    return {"sink": "encode only (msgpack)" if forward else "encode only (JSON, baseline)", "events_s": n / wall,
            "cpu_ms_per_1k": cpu / n * 1e6, "emit_us": wall / n * 1e6, "sent": n, "dropped": 0}


def measure(n: int, runs: int, sinks: list[str]) -> list[dict]:
    events = sample(n)
    baseline(events)  # warm-up: first-touch costs would otherwise land on the baseline
    fns = [lambda: baseline(events), lambda: baseline(events, True),
           *[(lambda k=k: run_sink(k, events)) for k in sinks]]
    # Interleaved runs: load from other processes on the machine spreads over every row alike.
    per_fn: list[list[dict]] = [[] for _ in fns]
    for _ in range(runs):
        for i, fn in enumerate(fns):
            per_fn[i].append(fn())
    rows = []
    for results in per_fn:
        row = dict(results[0])
        for key in ("events_s", "cpu_ms_per_1k", "emit_us"):
            row[key] = median([r[key] for r in results])
        row["dropped"] = max(r["dropped"] for r in results)
        rows.append(row)
    return rows


def render(rows: list[dict], n: int, runs: int) -> str:
    base = rows[0]["cpu_ms_per_1k"] or 1e-9
    body = [[r["sink"], f"{r['events_s']:,.0f}", f"{r['cpu_ms_per_1k']:.1f}", f"{r['cpu_ms_per_1k'] / base:.2f}",
             f"{r['emit_us']:.1f}", r["dropped"]] for r in rows]
    load = os.getloadavg()[0]
    return "\n".join([
        "## Outputs",
        "",
        f"`python -m bench.outputs` — {n:,} `arp_sensor.target` events (~{len(encode_json(sample(1)[0]))} bytes "
        f"of JSON each) per sink, median of {runs} runs. events/s runs from the first emit until the sink "
        "reports every event sent (forward-ack: acknowledged by the receiver); CPU is the sensor process "
        "only (receivers run in another process). Baseline: JSON encoding alone, same run, interleaved with "
        "the sinks. CPU per event is the figure that carries over; events/s also reflects the machine's load "
        f"(1-min load average {load:.1f} at the end of this run).",
        f"Machine: {machine()}.",
        "",
        table(["sink", "events/s", "CPU ms / 1,000 events", "CPU vs encode", "emit() µs/event (wall)", "dropped"],
              body),
        "",
        "A sensor emits at most `--top` target events plus a few health/alert events per interval (20 + 1 per "
        "second by default), so every sink has several orders of magnitude of headroom.",
    ])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sinks", default=",".join(SINKS), help=f"comma-separated subset of {','.join(SINKS)}")
    ap.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    a = ap.parse_args(argv)
    sinks = [s for s in a.sinks.split(",") if s]
    bad = [s for s in sinks if s not in SINKS]
    if bad:
        ap.error(f"unknown sink(s): {', '.join(bad)}")
    text = render(measure(a.events, a.runs, sinks), a.events, a.runs)
    print(text)
    if not a.no_write:
        write_section("outputs", text)


if __name__ == "__main__":
    main()
