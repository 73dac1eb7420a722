"""The incident at its scale: a Calico-style BGP full mesh of real BIRD routers in the netns lab, a share of
the nodes powered off at once (`lab kill`: link down, every process killed), arp-sensor with Prometheus
watching, then the same storm with the sensors in `--rate-limit enforce`.

    python -m bench.incident [--nodes 8,20,50] [--dead 0.2] [--sensors 8] [--hold-time S] [--no-write]

Per lab size, one lab:
1. the mesh comes up; sensors (`--metrics-port`) run on every node, or on `--sensors` nodes spread over the
   address-string order when the lab is larger (a bcc sensor per node does not fit 250 nodes on 2 CPUs);
   a real Prometheus (sensor.lab.prom) in one sensor node scrapes them every second with
   deploy/prometheus/arp-sensor.rules.yml;
2. baseline ARP/s on the bridge (tcpdump in the switch namespace sees every request once), then the
   power-off; every firing ArpSensorZombiePeer is recorded as it appears (time to first alert, to all,
   false alerts);
3. once the passive side's tail is over (hold time + `--tail` s), a steady window: broadcast ARP/s, the
   (asker, dead peer) pairs that ask against Calico's string rule (a live node asks for a dead one when its
   address string sorts after the dead one's), ARP/s per asking pair;
4. every sensor restarts with `--rate-limit enforce`; another steady window once the limits hold.

Everything lives in namespaces the lab creates (198.18.0.0/15). Meshes above ~30 nodes need more ARP entries
than the kernel's default neighbour table (shared by all namespaces) holds: like `lab up --raise-neigh-limits`
this raises net.ipv4.neigh.default.gc_thresh2/3 through the lab's own option, and puts the old values back.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.report import machine, median, table, write_section
from sensor.lab.live import LiveSensor

REPO = Path(__file__).resolve().parent.parent
NODES = (8, 20, 50)
METRICS_PORT = 9464
NEIGH = [f"/proc/sys/net/ipv4/neigh/default/{k}" for k in ("gc_thresh1", "gc_thresh2", "gc_thresh3")]


def spread(pool: list[int], k: int) -> list[int]:
    """k members of `pool`, evenly spread over it."""
    if k >= len(pool):
        return list(pool)
    step = len(pool) / k
    return [pool[int(j * step + step / 2)] for j in range(k)]


def sensor_nodes(ips: dict[int, str], k: int) -> list[int]:
    """Where sensors run: every node, or k nodes spread over the address-string order (so the sample holds
    nodes that ask for many dead peers and nodes that ask for few)."""
    by_string = sorted(ips, key=lambda i: ips[i])
    return sorted(spread(by_string, k))


def victims_for(nodes: int, dead_share: float, watched: list[int]) -> list[int]:
    """Node indexes to power off, evenly spread by index. Never Prometheus' node (the first sensor node); with
    sensors on a sample, never a sensor node; with a sensor on every node, some die with their node."""
    k = max(1, round(nodes * dead_share))
    spare = {watched[0]} if len(watched) == nodes else set(watched)
    pool = [i for i in range(1, nodes + 1) if i not in spare]
    return sorted(spread(pool, k))


def pair_stats(frames: list, live_ips: set[str], dead_ips: set[str], t0: float, t1: float) -> dict:
    """(asker, dead peer) pairs in [t0, t1) against Calico's string rule."""
    reqs = [f for f in frames if f.kind == "Request" and t0 <= f.ts < t1]
    dead_reqs = [f for f in reqs if f.target in dead_ips]
    observed = {(f.sender, f.target) for f in dead_reqs if f.sender in live_ips}
    predicted = {(a, d) for a in live_ips for d in dead_ips if a > d}  # str order, as Calico's Go templates
    secs = max(1e-3, t1 - t0)
    return {
        "arp_per_s": len(reqs) / secs, "dead_arp_per_s": len(dead_reqs) / secs,
        "pairs_total": len(live_ips) * len(dead_ips), "pairs_predicted": len(predicted),
        "pairs_observed": len(observed), "pairs_both": len(observed & predicted),
        "pairs_unexpected": len(observed - predicted), "pairs_missing": len(predicted - observed),
        "per_pair_arp_per_s": len(dead_reqs) / secs / max(1, len(observed)),
        "by_sender": {s: sum(1 for f in dead_reqs if f.sender == s) / secs for s in live_ips},
    }


class AlertWatch:
    """Polls Prometheus for firing ArpSensorZombiePeer alerts: first time each peer IP fired."""

    def __init__(self, prom) -> None:  # type: ignore[no-untyped-def]
        self.prom = prom
        self.first: dict[str, float] = {}
        self.max_firing = 0
        self.errors = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                firing = self.prom.alerts()
            except Exception:  # a busy Prometheus answers late: count it, keep polling
                self.errors += 1
                continue
            now = time.time()
            self.max_firing = max(self.max_firing, len(firing))
            for a in firing:
                self.first.setdefault(a["labels"]["peer_ip"], now)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)


def start_sensors(lab, nodes: list[int], work: Path, window: float, extra: list[str]) -> dict[int, LiveSensor]:  # type: ignore[no-untyped-def]
    sensors = {}
    for i in nodes:
        ready = work / f"n{i}.ready"
        ready.unlink(missing_ok=True)
        sensors[i] = LiveSensor(lab.exec_argv(i, [
            sys.executable, "-m", "sensor", "run", "-i", lab.iface, "--interval", "1", "--top", "0",
            "--verdict-window", str(window), "--bird-socket", lab.bird_socket(i), "--hostname", f"n{i}",
            "--metrics-port", str(METRICS_PORT), "--metrics-addr", lab.ip(i), "--ready-file", str(ready),
            "-o", f"file:{work}/n{i}.json", *extra]), cwd=REPO)
    end = time.monotonic() + 120 + 15 * len(nodes)
    while not all((work / f"n{i}.ready").exists() for i in nodes):
        dead = [i for i, s in sensors.items() if s.proc.poll() is not None]
        if dead or time.monotonic() > end:
            raise RuntimeError(f"sensors did not start (n{dead[0] if dead else '?'}): "
                               f"{sensors[dead[0]].stop()[-300:] if dead else 'timeout'}")
        time.sleep(0.5)
    return sensors


def stop_sensors(sensors: dict[int, LiveSensor]) -> None:
    for s in sensors.values():
        s.proc.terminate()
    for s in sensors.values():
        s.stop()


def run_one(nodes: int, dead_share: float = 0.2, window: float = 6.0, steady_s: float = 20.0,
            hold_time: int | None = 6, max_sensors: int = 8, tail_s: float = 110.0, enforce: bool = True,
            log=print) -> dict:  # type: ignore[no-untyped-def]
    from sensor.lab.lab import Lab
    from sensor.lab.prom import LabPrometheus

    name = "b" + secrets.token_hex(3)[:5]
    lab = Lab(name, nodes, hold_time=hold_time)
    ips = {i: lab.ip(i) for i in range(1, nodes + 1)}
    watched = sensor_nodes(ips, max_sensors)
    victims = victims_for(nodes, dead_share, watched)
    hold = hold_time if hold_time is not None else 240
    res: dict = {"nodes": nodes, "dead": len(victims), "sensors": len(watched), "hold_time": hold,
                 "window": window, "victims": [f"n{i}" for i in victims],
                 "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    neigh_before = [Path(p).read_text().strip() for p in NEIGH]
    neigh_ours = neigh_before
    work = Path(tempfile.mkdtemp(prefix="arp-incident-"))
    sensors: dict[int, LiveSensor] = {}
    prom = cap = watch = None
    try:
        t0 = time.monotonic()
        lab.up(raise_neigh_limits=True, progress=log)
        neigh_ours = [Path(p).read_text().strip() for p in NEIGH]
        lab.wait_established(timeout=120 + 4 * nodes, progress=log)
        res["established_s"] = time.monotonic() - t0
        log(f"incident: {nodes} nodes Established in {res['established_s']:.0f} s; sensors on {len(watched)}")
        if True:  # the work directory is removed in `finally`, after everything in it stopped
            sensors = start_sensors(lab, watched, work, window, [])
            # Prometheus scrapes the sensors that survive: one that kept scraping a dead node would ARP for it
            # too (as a real one does), and that is not the mesh's storm
            targets = [f"{lab.ip(i)}:{METRICS_PORT}" for i in watched if i not in victims]
            prom = LabPrometheus(lab, f"n{watched[0]}", targets, work)
            end = time.monotonic() + 120
            while True:
                try:
                    if prom.value('sum(up{job="arp-sensor"})') == len(targets):
                        break
                except OSError:
                    pass  # not listening yet
                if time.monotonic() > end or prom.proc.poll() is not None:
                    raise RuntimeError(f"prometheus does not scrape every sensor: {prom.stop()[-300:]}")
                time.sleep(1)
            cap = lab.arp_capture().start(timeout=30)
            time.sleep(10)
            base = pair_stats(list(cap.frames), set(), set(), time.time() - 10, time.time())
            res["baseline_arp_per_s"] = base["arp_per_s"]
            watch = AlertWatch(prom)
            dead_ips = {ips[i] for i in victims}
            live_ips = {ip for i, ip in ips.items() if i not in victims}
            t_kill = time.time()
            for i in victims:
                lab.kill(i)
            log(f"incident: {len(victims)} nodes powered off in {time.time() - t_kill:.1f} s")
            # the steady window starts once the passive side's tail is over
            t_steady = t_kill + hold + tail_s
            while time.time() < t_steady:
                time.sleep(1)
            time.sleep(steady_s)
            storm = pair_stats(list(cap.frames), live_ips, dead_ips, t_steady, t_steady + steady_s)
            res["storm"] = {k: v for k, v in storm.items() if k != "by_sender"}
            firsts = [watch.first[ip] - t_kill for ip in dead_ips if ip in watch.first]
            res.update({
                "alerted": len(firsts), "first_alert_s": min(firsts) if firsts else None,
                "median_alert_s": median(firsts) if firsts else None, "last_alert_s": max(firsts) if firsts else None,
                "false_alerts": sorted(set(watch.first) - dead_ips), "max_firing": watch.max_firing,
            })
            log(f"incident: storm {storm['arp_per_s']:.0f} ARP/s, {storm['pairs_observed']} pairs ask "
                f"({storm['pairs_predicted']} predicted), {len(firsts)}/{len(victims)} alerts")
            if enforce:
                stop_sensors(sensors)
                t_restart = time.time()
                alive = [i for i in watched if i not in victims]
                sensors = start_sensors(lab, alive, work, window, ["--rate-limit", "enforce"])
                # the verdicts need two windows again, then the limits are in the kernel
                time.sleep(2 * window + 10)
                t_enf = time.time()
                time.sleep(steady_s)
                enf = pair_stats(list(cap.frames), live_ips, dead_ips, t_enf, t_enf + steady_s)
                mine = [lab.ip(i) for i in watched if lab.ip(i) in live_ips]
                res["enforce"] = {k: v for k, v in enf.items() if k != "by_sender"}
                res["enforce"]["restart_s"] = t_enf - t_restart
                res["enforcing_nodes_arp_per_s_before"] = sum(storm["by_sender"][ip] for ip in mine)
                res["enforcing_nodes_arp_per_s_after"] = sum(enf["by_sender"][ip] for ip in mine)
                res["enforcing_nodes"] = len(mine)
            res["false_alerts"] = sorted(set(watch.first) - dead_ips)
        return res
    finally:
        # each step on its own: a failing one must not leave the lab (or the host's limits) behind
        for step in (watch.stop if watch else None, cap.stop if cap else None, lambda: stop_sensors(sensors),
                     prom.stop if prom else None):
            if step is not None:
                with contextlib.suppress(Exception):
                    step()
        Lab.destroy(name)
        shutil.rmtree(work, ignore_errors=True)
        # put the host's limits back: only those we raised, and only if nobody changed them since
        for p, before, ours in zip(NEIGH, neigh_before, neigh_ours, strict=True):
            if ours != before and Path(p).read_text().strip() == ours:
                Path(p).write_text(before)


def predicted_pairs(nodes: int, dead_share: float = 0.2, max_sensors: int = 8) -> tuple[int, int, int]:
    """(live, dead, pairs Calico's rule makes ask) for a lab of `nodes` with this benchmark's victims."""
    ips = {i: f"198.18.0.{i}" if i < 255 else f"198.18.{i // 256}.{i % 256}" for i in range(1, nodes + 1)}
    victims = set(victims_for(nodes, dead_share, sensor_nodes(ips, max_sensors)))
    dead = {ips[i] for i in victims}
    live = [ip for i, ip in ips.items() if i not in victims]
    return len(live), len(dead), sum(1 for a in live for d in dead if a > d)


def _f(v: float | None, fmt: str = ".1f") -> str:
    return "—" if v is None else format(v, fmt)


def render(results: list[dict], dead_share: float, window: float, steady_s: float, tail_s: float) -> str:
    rows, pairs, enf = [], [], []
    for r in results:
        if "error" in r:
            rows.append([r["nodes"], "—", "—", "—", "—", "—", "—", "—", "—", "did not complete (below)", "—"])
            continue
        s = r["storm"]
        rows.append([r["nodes"], r["dead"], r["sensors"], f"{r['established_s']:.0f}", r["hold_time"],
                     _f(r["baseline_arp_per_s"]), _f(s["arp_per_s"]), _f(s["dead_arp_per_s"]),
                     f"{r['alerted']}/{r['dead']} (max {r['max_firing']} firing)",
                     f"{_f(r['first_alert_s'])} / {_f(r['median_alert_s'])} / {_f(r['last_alert_s'])}",
                     len(r["false_alerts"])])
        share = {k: s[k] / max(1, s["pairs_total"]) for k in ("pairs_predicted", "pairs_observed")}
        pairs.append([r["nodes"], s["pairs_total"], f"{s['pairs_predicted']} ({share['pairs_predicted']:.0%})",
                      f"{s['pairs_observed']} ({share['pairs_observed']:.0%})", s["pairs_both"],
                      s["pairs_unexpected"], s["pairs_missing"], _f(s["per_pair_arp_per_s"], ".2f")])
        if "enforce" in r:
            e = r["enforce"]
            enf.append([r["nodes"], f"{r['enforcing_nodes']} of {r['nodes'] - r['dead']}",
                        _f(r["enforcing_nodes_arp_per_s_before"]), _f(r["enforcing_nodes_arp_per_s_after"]),
                        _f(s["dead_arp_per_s"]), _f(e["dead_arp_per_s"])])
    ok = [r for r in results if "error" not in r]
    hold = ", ".join(sorted({str(r["hold_time"]) for r in ok})) or "?"
    lines = [
        "## The incident, scaled",
        "",
        "`python -m bench.incident` — the netns lab (`sensor/lab`): a Calico-style full mesh of real BIRD 2 "
        "routers on one bridge (Calico's timers and string-order passive rule), BGP hold time "
        f"{hold} s (lab only; Calico runs BIRD's 240 s: the storm starts that much later, nothing else changes). "
        f"{dead_share:.0%} of the nodes are powered off at once (`lab kill`). Sensors (`--verdict-window "
        f"{window:g} --metrics-port`) run on every node up to 8 nodes, else on 8 spread over the address-string "
        "order; a real Prometheus in the lab scrapes them every second with `deploy/prometheus/arp-sensor.rules.yml`. "
        "ARP/s: tcpdump on the bridge (every request once). The steady window "
        f"({steady_s:g} s) starts {tail_s:g} s after the hold timer, when the passive side's tail is over "
        "(docs/lab.md). Alert times: power-off → ArpSensorZombiePeer firing (first / median / last dead peer); "
        "they include the hold timer and two verdict windows.",
        f"Machine: {machine()}.",
        "",
        table(["nodes", "dead", "sensors", "mesh up s", "hold s", "ARP/s before", "ARP/s storm", "…for dead peers",
               "alerts", "power-off → alert s (first / med / last)", "false alerts"], rows),
        *[f"\n**{r['nodes']} nodes did not complete:** {r['error']}" for r in results if "error" in r],
        "",
        "Which (live asker, dead peer) pairs ask in the steady window, against Calico's string rule (a live "
        "node asks for a dead one when its address string sorts after the dead one's):",
        "",
        table(["nodes", "pairs", "predicted to ask", "observed asking", "both", "unexpected", "missing",
               "ARP/s per asking pair"], pairs),
    ]
    runs = [f"{r['nodes']} nodes at {r['measured_at']}" for r in ok if "measured_at" in r]
    if runs:
        lines.insert(lines.index(f"Machine: {machine()}.") + 1, "Runs: " + "; ".join(runs) + ".")
    if ok:
        big = max(ok, key=lambda r: r["nodes"])
        rate = big["storm"]["per_pair_arp_per_s"]
        live, dead, pred = predicted_pairs(250, dead_share)
        lines += ["", f"At the seed's scale ({live} live × {dead} dead): Calico's rule makes {pred} of the "
                  f"{live * dead} pairs ask ({pred / (live * dead):.0%}); at the {rate:.2f} ARP/s per asking pair "
                  f"measured with {big['nodes']} nodes that is **~{pred * rate:,.0f} broadcast ARP/s "
                  f"(~{round(pred * rate * 60, -3):,.0f} per minute)**, each flooded to every port of the L2 "
                  "domain: the seed's \"tens of thousands of ARP requests per minute\" is, if anything, low. "
                  f"{rate:.2f} ARP/s per pair is one connection attempt (3 broadcasts, 1 s apart) every ~5 s "
                  "(`connect retry time 5`). Whatever the address layout, exactly one side of every pair "
                  "connects, so about half the (live, dead) pairs ask when the dead nodes are a random share."]
    if enf:
        lines += ["", "The same storm with the sensors restarted in `--rate-limit enforce` (limits on the zombie "
                  "peers' ARP, per node): broadcast ARP/s for the dead peers sent by the enforcing nodes, and on "
                  "the whole bridge.", "",
                  table(["nodes", "enforcing nodes", "their ARP/s before", "their ARP/s after",
                         "bridge ARP/s for dead before", "after"], enf)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default=",".join(str(n) for n in NODES))
    ap.add_argument("--dead", type=float, default=0.2, help="share of nodes to power off (default: %(default)s)")
    ap.add_argument("--verdict-window", type=float, default=6.0)
    ap.add_argument("--sensors", type=int, default=8, help="sensors at most (spread over the string order)")
    ap.add_argument("--hold-time", default="6", help="BGP hold time in s, or 'default' (BIRD's 240 s)")
    ap.add_argument("--steady", type=float, default=20.0, help="seconds of storm measured")
    ap.add_argument("--tail", type=float, default=110.0, help="seconds after the hold timer before measuring")
    ap.add_argument("--no-enforce", action="store_true", help="skip the --rate-limit enforce phase")
    ap.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    ap.add_argument("--results", metavar="FILE", help="JSON file of results: sizes measured earlier are kept "
                    "(a 250-node run is done once, alone), this run's replace theirs; the table shows all")
    ap.add_argument("--report-only", action="store_true", help="run nothing: render the --results file")
    a = ap.parse_args(argv)
    hold = None if a.hold_time == "default" else int(a.hold_time)
    results = []
    for n in ([] if a.report_only else (int(x) for x in a.nodes.split(","))):
        try:
            results.append(run_one(n, a.dead, a.verdict_window, a.steady, hold, a.sensors, a.tail, not a.no_enforce))
        except Exception as e:  # a mesh too big for this machine must not cost the smaller ones
            print(f"incident: {n} nodes failed: {e}", file=sys.stderr)
            results.append({"nodes": n, "error": str(e).splitlines()[0][:200]})
    if a.results:
        path = Path(a.results)
        old = json.loads(path.read_text()) if path.exists() else []
        mine = {r["nodes"] for r in results}
        results = sorted([r for r in old if r["nodes"] not in mine] + results, key=lambda r: r["nodes"])
        path.write_text(json.dumps(results, indent=1))
    if all("error" in r for r in results):
        raise SystemExit("incident: no lab size completed")
    text = render(results, a.dead, a.verdict_window, a.steady, a.tail)
    print(text)
    if not a.no_write:
        write_section("incident", text)


if __name__ == "__main__":
    main()
