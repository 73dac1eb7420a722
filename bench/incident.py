"""The incident, scaled: a Calico-style BGP full mesh of real BIRD routers in the netns lab (8, 20 and
50 nodes), 20% of the nodes powered off at once (`lab kill`: the link drops, every process dies), the
sensor on one live node with `--bird-socket`. Measured: ARP requests per second on the lab's bridge
(tcpdump on the switch), what the sensor reports for the dead peers, and the time from `lab kill` to
each dead peer's first `zombie-peer-detected`.

    python -m bench.incident [--nodes 8,20,50] [--dead 0.2] [--verdict-window S] [--no-write]

Everything lives in namespaces the lab creates (198.18.0.0/15). The 50-node mesh needs 2,450 ARP
entries, more than the kernel's default neighbour table (shared by all namespaces) holds: like
`arp-sensor lab up --raise-neigh-limits`, this raises net.ipv4.neigh.default.gc_thresh2/3 (never lowers).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.report import machine, median, table, write_section
from sensor.lab.live import LiveSensor

REPO = Path(__file__).resolve().parent.parent
NODES = (8, 20, 50)


def _epoch(ev: dict) -> float:
    return datetime.strptime(ev["@timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def victims_for(nodes: int, dead_share: float, sensor: int) -> list[int]:
    """Node indexes to power off: evenly spread, never the sensor's node nor the highest one (nobody
    reconnects to the highest IP in Calico's mesh, so its death is silent on the wire)."""
    k = max(1, round(nodes * dead_share))
    pool = [i for i in range(1, nodes) if i != sensor]
    step = len(pool) / k
    return sorted({pool[int(j * step + step / 2)] for j in range(k)})


def run_one(nodes: int, dead_share: float, window: float, steady_s: float, log=print) -> dict:
    from sensor.lab.lab import Lab

    name = "b" + secrets.token_hex(3)[:5]
    lab = Lab(name, nodes)
    sensor_node = nodes // 2
    victims = victims_for(nodes, dead_share, sensor_node)
    res: dict = {"nodes": nodes, "dead": len(victims), "sensor": f"n{sensor_node}", "hold_time": lab.hold_time,
                 "window": window}
    sensor = None
    cap = None
    try:
        t0 = time.monotonic()
        lab.up(raise_neigh_limits=True)
        lab.wait_established(timeout=120 + 6 * nodes)
        res["established_s"] = time.monotonic() - t0
        log(f"incident: {nodes} nodes up and Established in {res['established_s']:.0f} s")
        with tempfile.TemporaryDirectory(prefix="arp-incident-") as tmp:
            peers = Path(tmp) / "peers.txt"
            peers.write_text("".join(f"{lab.ip(n)} - {n}\n" for n in lab.nodes))
            ready = Path(tmp) / "ready"
            sensor = LiveSensor(lab.exec_argv(sensor_node, [
                sys.executable, "-m", "sensor", "run", "-i", lab.iface, "--interval", "1", "--top", "0",
                "--verdict-window", str(window), "--bird-socket", lab.bird_socket(sensor_node),
                "--peers", str(peers), "--ready-file", str(ready), "--hostname", f"n{sensor_node}"]), cwd=REPO)
            end = time.monotonic() + 120
            while not ready.exists():
                if sensor.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"sensor did not start: {sensor.stop()[-300:]}")
                time.sleep(0.1)
            cap = lab.arp_capture().start()
            time.sleep(window)  # a healthy baseline
            t_base = time.time()
            base_arp = sum(cap.requests(since=t_base - window).values())
            dead_ips = {lab.ip(i): f"n{i}" for i in victims}
            kill_at: dict[str, float] = {}
            for i in victims:
                kill_at[lab.ip(i)] = time.time()
                lab.kill(i)
            t_kill = min(kill_at.values())
            # every dead peer's hold timer runs out, then the verdict needs its windows of evidence
            deadline = time.monotonic() + 2 * lab.hold_time + 4 * window + 30 + nodes
            while time.monotonic() < deadline:
                found = {e["destination"]["ip"] for e in sensor.of("arp_sensor.peer", "zombie-peer-detected")}
                if found >= dead_ips.keys():
                    break
                time.sleep(0.5)
            t_steady = time.time()
            time.sleep(steady_s)  # the storm at its steady rate
            t_end = time.time()
            frames = list(cap.frames)
        # -- evaluate
        alerts = sensor.of("arp_sensor.peer", "zombie-peer-detected")
        first: dict[str, float] = {}
        for e in alerts:
            ip = e["destination"]["ip"]
            first[ip] = min(first.get(ip, float("inf")), _epoch(e))
        delays = [first[ip] - kill_at[ip] for ip in dead_ips if ip in first]
        false_pos = sorted({e["destination"]["ip"] for e in alerts} - dead_ips.keys())
        # The sensor's intervals (from its health events) that lie wholly inside the steady window, and
        # the bridge over exactly those seconds: the two counts are of the same frames.
        polls = []
        for h in sensor.of("arp_sensor.health"):
            if h["event"]["kind"] != "metric":
                continue
            end_t = _epoch(h)
            start_t = end_t - h["arp_sensor"]["health"].get("interval_s", 0)
            if t_steady <= start_t and end_t <= t_end and end_t > start_t:
                polls.append((start_t, end_t, h["@timestamp"], h["arp_sensor"]["health"].get("request", 0)))
        if polls:
            span0, span1 = min(p[0] for p in polls), max(p[1] for p in polls)
        else:
            span0, span1 = t_steady, t_end
        secs = max(1e-3, span1 - span0)
        stamps = {p[2] for p in polls}
        steady = [f for f in frames if f.kind == "Request" and span0 <= f.ts < span1]
        bridge_all = len(steady) / secs
        bridge_dead = sum(1 for f in steady if f.target in dead_ips) / secs
        sensor_dead = sum(e["arp"]["requests"] for e in sensor.of("arp_sensor.target")
                          if e["destination"]["ip"] in dead_ips and e["@timestamp"] in stamps) / secs
        sensor_all = sum(p[3] for p in polls) / secs
        res.update({
            "killed_at": t_kill, "victims": [f"n{i}" for i in victims],
            "baseline_arp_per_s": base_arp / window,
            "bridge_arp_per_s": bridge_all, "bridge_dead_arp_per_s": bridge_dead,
            "sensor_dead_arp_per_s": sensor_dead, "sensor_arp_per_s": sensor_all, "measured_s": secs,
            "detected": len([ip for ip in dead_ips if ip in first]),
            "delay_median_s": median(delays) if delays else None, "delay_max_s": max(delays) if delays else None,
            "false_positives": false_pos,
            "example": next((e.get("message", "") for e in alerts), ""),
        })
        return res
    finally:
        if cap is not None:
            cap.stop()
        if sensor is not None:
            sensor.stop()
        Lab.destroy(name)


def render(results: list[dict], dead_share: float, window: float, steady_s: float) -> str:
    body = []
    for r in results:
        if "error" in r:
            body.append([r["nodes"], "—", "—", "—", "—", "—", "—", "—", "—", "—", f"failed: {r['error']}", "—"])
            continue
        delay = (f"{r['delay_median_s']:.1f} / {r['delay_max_s']:.1f}" if r.get("delay_median_s") is not None
                 else "none detected")
        body.append([r["nodes"], f"{r['dead']} ({', '.join(r['victims'])})", r["sensor"],
                     f"{r['established_s']:.0f}", f"{r['baseline_arp_per_s']:.1f}", f"{r['bridge_arp_per_s']:.1f}",
                     f"{r['bridge_dead_arp_per_s']:.1f}", f"{r['sensor_arp_per_s']:.1f}",
                     f"{r['sensor_dead_arp_per_s']:.1f}",
                     f"{r['detected']}/{r['dead']}", delay, len(r["false_positives"])])
    hold = next((r["hold_time"] for r in results if "hold_time" in r), "?")
    lines = [
        "## The incident, scaled",
        "",
        "`python -m bench.incident` — the netns lab (`sensor/lab`): a Calico-style full mesh of real BIRD 2 "
        f"routers on one bridge, BGP hold time {hold} s (Calico's "
        f"default is 240 s: the storm starts that much later in production, nothing else changes). "
        f"{dead_share:.0%} of the nodes are powered off at once (`lab kill`: link down, every process "
        f"killed); `arp-sensor run --bird-socket --verdict-window {window:g}` runs on a live node. ARP/s on the "
        "bridge is counted by tcpdump in the switch namespace (every request once) over the sensor's "
        f"intervals that fall in the {steady_s:g} s after every dead peer was detected (or the wait ran "
        "out); the sensor's figures are its health `request` counter (all ARP requests its interface "
        "saw, in and out) and its `arp.requests` for the dead IPs, over exactly the same seconds. "
        "Delay: from `lab kill` to the first "
        "`zombie-peer-detected` for that IP (median / max over the dead peers), which includes the hold "
        "timer: BIRD only starts asking ARP for a peer once its session has timed out.",
        f"Machine: {machine()}.",
        "",
        table(["nodes", "dead", "sensor on", "mesh up s", "ARP/s before", "ARP/s on bridge",
               "…for dead peers", "sensor: ARP/s", "sensor: …for dead peers", "detected",
               "kill → zombie s (med / max)", "false alerts"], body),
    ]
    ex = next((r["example"] for r in results if r.get("example")), "")
    if ex:
        lines += ["", f"An alert's message: _{ex}_"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default=",".join(str(n) for n in NODES))
    ap.add_argument("--dead", type=float, default=0.2, help="share of nodes to power off (default: %(default)s)")
    ap.add_argument("--verdict-window", type=float, default=6.0)
    ap.add_argument("--steady", type=float, default=15.0, help="seconds of storm measured after detection")
    ap.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    a = ap.parse_args(argv)
    results = []
    for n in (int(x) for x in a.nodes.split(",")):
        try:
            results.append(run_one(n, a.dead, a.verdict_window, a.steady))
        except Exception as e:  # a mesh too big for this machine must not cost the smaller ones
            print(f"incident: {n} nodes failed: {e}", file=sys.stderr)
            results.append({"nodes": n, "error": str(e).splitlines()[0][:200]})
    if all("error" in r for r in results):
        raise SystemExit("incident: no lab size completed")
    text = render(results, a.dead, a.verdict_window, a.steady)
    print(text)
    if not a.no_write:
        write_section("incident", text)


if __name__ == "__main__":
    main()
