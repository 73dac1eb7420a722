"""Cost of reading BGP peers from BIRD: `show protocols all` for 250 peers, read and parsed, against the
1 s interval the sensor polls at (and against `show status`, the cheapest round trip, in the same run).

A real BIRD 2 runs in a network namespace of its own with N configured peers that do not exist (Calico's
full mesh after 250 nodes died); without root, only the recorded 250-peer reply is parsed.

    python -m bench.bird_poll [--peers 250] [--runs 30] [--interval 1.0] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from bench.report import machine, median, table, write_section
from sensor.peers import PeerBook
from sensor.peers.bird import BirdClient, parse_protocols, parse_reply

RECORDED = Path(__file__).resolve().parent.parent / "tests" / "data" / "bird" / "show_protocols_all_250_peers.reply"


def _time(fn, runs: int) -> float:
    """Median seconds of `fn()` over `runs` runs (after one warm-up)."""
    fn()
    xs = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    return median(xs)


def measure(n_peers: int, runs: int) -> tuple[list[tuple[str, float]], dict]:
    rows: list[tuple[str, float]] = []
    info: dict = {}
    data = RECORDED.read_bytes()
    info["recorded_bytes"] = len(data)
    rows.append(("parse recorded 250-peer reply (no I/O)", _time(lambda: parse_protocols(parse_reply(data)), runs)))
    if os.geteuid() != 0 or not shutil.which("bird"):
        info["live"] = "skipped (needs root and bird)"
        return rows, info
    from tests.support.birdproc import BirdNetns

    with BirdNetns(n_peers=n_peers) as b:
        time.sleep(1.0)  # let BIRD try its peers once, so states and errors are filled in
        kept = BirdClient(b.socket, timeout=5.0)
        reply = kept.command("show protocols all")
        info["live_bytes"] = sum(len(ln.text) + 6 for ln in reply)
        info["live_peers"] = sum(1 for p in parse_protocols(reply) if p.is_bgp)
        rows.append(("`show status` round trip (baseline)", _time(lambda: kept.command("show status"), runs)))
        rows.append((f"`show protocols all`, {n_peers} peers: read + parse, kept connection",
                     _time(kept.show_protocols, runs)))

        def fresh() -> None:
            c = BirdClient(b.socket, timeout=5.0)
            c.show_protocols()
            c.close()

        rows.append(("same with a new connection each time (connect, welcome, restrict)", _time(fresh, runs)))
        book = PeerBook([b.socket], timeout=5.0, budget=5.0)
        clock = iter(range(10**9))
        rows.append(("PeerBook.refresh (poll + merge), kept connection",
                     _time(lambda: book.refresh(float(next(clock))), runs)))
        book.close()
        kept.close()
    return rows, info


def render(rows: list[tuple[str, float]], info: dict, n_peers: int, runs: int, interval: float) -> str:
    lines = [
        "## Reading BGP peers from BIRD",
        "",
        f"`python -m bench.bird_poll` — median of {runs} runs after a warm-up. A real BIRD "
        f"{'with ' + str(n_peers) + ' configured peers that do not exist' if 'live' not in info else '(skipped)'}"
        f" in its own netns; the reply is {info.get('live_bytes', info['recorded_bytes']):,} bytes. "
        f"Baseline: the {interval:g} s interval the sensor polls at (and `show status`, the cheapest round trip).",
        f"Machine: {machine()}.",
        "",
    ]
    body = [[what, f"{s * 1000:.2f}", f"{s / interval * 100:.2f} %"] for what, s in rows]
    lines.append(table(["what", "ms", f"of a {interval:g} s interval"], body))
    if "live" in info:
        lines += ["", f"Live BIRD: {info['live']}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=250)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    a = ap.parse_args(argv)
    rows, info = measure(a.peers, a.runs)
    text = render(rows, info, a.peers, a.runs, a.interval)
    print(text)
    if not a.no_write:
        write_section("bird_poll", text)


if __name__ == "__main__":
    main()
