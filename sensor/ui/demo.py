"""`arp-sensor demo` (`make demo`): Calico's ARP storm, reproduced and caught, in about a minute.

1. an 8-node BIRD full mesh in network namespaces (sensor.lab), every session Established;
2. `arp-sensor run` inside node 1, exactly as on a host (`ip netns exec`), with node 1's BIRD socket
   when this arp-sensor supports `--bird-socket`;
3. two nodes powered off (link cut, then everything in them killed): the other nodes' BIRD keeps
   reconnecting and the kernel broadcasts ARP for the dead addresses;
4. the sensor's live JSON stream (condensed; `--raw` for every line as emitted), then a short summary.
Everything is removed on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import click

from sensor.errors import EXIT_ENV, SensorError
from sensor.events.decode import counts_of
from sensor.lab import birdconf
from sensor.lab.lab import Lab, require_tools


class Demo:
    def __init__(
        self,
        nodes: int,
        dead: list[str],
        hold_time: int,
        before: float,
        after: float,
        raw: bool,
        ready_timeout: float,
    ) -> None:
        self.name = "demo" + secrets.token_hex(2)  # unique: never clobbers another demo or lab
        self.lab = Lab(self.name, nodes, hold_time=hold_time)
        self.dead = [self.lab.node(n).name for n in dead]
        if "n1" in self.dead:
            raise SensorError("demo: the sensor runs in n1; power off other nodes")
        self.hold_time = hold_time
        self.before, self.after = before, after
        self.raw = raw
        self.ready_timeout = ready_timeout
        self.t0 = time.monotonic()
        self.t_kill: float | None = None  # epoch seconds
        self.proc: subprocess.Popen[str] | None = None
        self.events: list[dict] = []
        self.stderr: list[str] = []

    # ---- output -------------------------------------------------------------------------------------------
    def say(self, msg: str) -> None:
        click.echo(f"[{time.monotonic() - self.t0:5.1f}s] {msg}", err=True)

    def show(self, line: str, ev: dict) -> None:
        ds = ev.get("event", {}).get("dataset", "")
        if self.raw:
            click.echo(line)
            return
        if ds == "arp_sensor.health" and ev["event"].get("kind") == "metric":
            return  # one per interval: counted in the summary, not shown
        short: dict = {"@timestamp": ev.get("@timestamp"), "event.dataset": ds}
        if ev.get("event", {}).get("action"):
            short["event.action"] = ev["event"]["action"]
        if "destination" in ev:
            short["destination.ip"] = ev["destination"]["ip"]
        if "network" in ev:
            short["network.direction"] = ev["network"].get("direction")
        section = "nd" if "nd" in ev else "arp"
        for k, v in ev.get(section, {}).items():
            if k in ("requests", "requests_per_sec", "replies", "senders", "solicitations",
                     "solicitations_per_sec", "advertisements"):
                short[f"{section}.{k}"] = v
        peer = ev.get("bgp", {}).get("peer")
        if peer:
            short["bgp.peer"] = {k: peer[k] for k in ("name", "state", "last_error") if peer.get(k)}
        if ev.get("message"):
            short["message"] = ev["message"]
        click.echo(json.dumps(short, separators=(",", ":")))

    # ---- the sensor ---------------------------------------------------------------------------------------
    def sensor_argv(self, duration: float, ready: Path) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "sensor",
            "run",
            "-i",
            "eth0",
            "--interval",
            "1",
            "--min-requests",
            "1",
            "--ready-file",
            str(ready),
            "--duration",
            f"{duration:.0f}",
            "--hostname",
            "n1",
            "--bird-socket",
            self.lab.bird_socket("n1"),
        ]
        return self.lab.exec_argv("n1", argv)

    def _read_stdout(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            ev["_t"] = time.time()
            self.events.append(ev)
            self.show(line.rstrip("\n"), ev)

    def _read_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))
            if self.raw:
                click.echo(f"  sensor: {line.rstrip()}", err=True)

    def start_sensor(self, duration: float) -> None:
        ready = self.lab.dir / "sensor.ready"  # in the lab's state dir: `lab down` also stops the sensor
        argv = self.sensor_argv(duration, ready)
        self.say(f"starting the sensor in n1: {' '.join(argv[4:])}")
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )  # Ctrl-C reaches us, and we stop it ourselves
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        end = time.monotonic() + self.ready_timeout
        last = 0.0
        while not ready.exists():
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the stderr reader catch the last words
                why = next((ln for ln in reversed(self.stderr) if ln.strip()), f"exit {self.proc.returncode}")
                raise SensorError(f"demo: the sensor stopped before attaching: {why}", EXIT_ENV)
            if time.monotonic() > end:
                raise SensorError(f"demo: the sensor did not attach within {self.ready_timeout:.0f}s", EXIT_ENV)
            if time.monotonic() - last > 5:
                self.say("waiting for the sensor to compile and attach its BPF program ...")
                last = time.monotonic()
            time.sleep(0.1)
        self.say("sensor attached to n1:eth0 (XDP ingress + tc egress); JSON lines follow")

    # ---- the story ----------------------------------------------------------------------------------------
    def run(self) -> None:
        require_tools()
        n = len(self.lab.nodes)
        self.say(
            f"building lab {self.name}: {n} nodes, BIRD full mesh like Calico's "
            f"({n * (n - 1)} sessions), hold time {self.hold_time}s (Calico: BIRD's 240 s)"
        )
        self.lab.up()
        took = self.lab.wait_established(60, progress=self.say)
        self.say(f"mesh Established after {took:.1f}s; `ip netns exec {self.lab.netns('n1')} ...` is node 1")
        sensor_s = self.before + self.after + 5
        self.start_sensor(sensor_s)
        t_attached = time.time()
        self.say(f"quiet network for {self.before:.0f}s: a healthy mesh needs no ARP broadcasts")
        time.sleep(self.before)
        dead = ", ".join(f"{d} ({self.lab.ip(d)})" for d in self.dead)
        self.say(f"powering off {dead}: link cut first, then BIRD killed (no BGP goodbye)")
        self.t_kill = time.time()
        for d in self.dead:
            self.lab.kill(d)
        self.say(f"the peers notice when the hold timer ({self.hold_time}s) expires, then keep reconnecting")
        end = time.monotonic() + self.after
        while time.monotonic() < end:
            time.sleep(min(5, max(0.0, end - time.monotonic())))
            if time.monotonic() < end - 1:
                self.say(f"{self._rate(time.time() - 5, time.time()):.1f} ARP requests/s seen by the sensor (last 5 s)")
        assert self.proc is not None
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(5)
        time.sleep(0.3)
        self.summary(t_attached)

    def _rate(self, since: float, until: float) -> float:
        reqs = sum(
            counts_of(ev)["requests"]
            for ev in self.events
            if ev["event"]["dataset"] == "arp_sensor.target" and since <= ev["_t"] < until
        )
        return reqs / max(until - since, 1e-9)

    def summary(self, t_attached: float) -> None:
        assert self.t_kill is not None
        per_target: dict[str, dict] = defaultdict(lambda: {"requests": 0, "senders": set(), "peak": 0.0})
        per_sec: dict[tuple[str, str], int] = defaultdict(int)
        alerts = []
        for ev in self.events:
            ds = ev["event"]["dataset"]
            if ds == "arp_sensor.target":
                t = per_target[ev["destination"]["ip"]]
                counts = counts_of(ev)
                t["requests"] += counts["requests"]
                t["senders"] |= {s["ip"] for s in counts.get("top_senders", [])}
                per_sec[(ev["destination"]["ip"], ev["@timestamp"])] += counts["requests"]
            elif ds == "arp_sensor.peer":
                alerts.append(ev)
        for (ip, _ts), reqs in per_sec.items():
            per_target[ip]["peak"] = max(per_target[ip]["peak"], reqs / 1.0)
        last = max((ev["_t"] for ev in self.events), default=time.time())
        before = self._rate(t_attached, self.t_kill)
        after = self._rate(max(self.t_kill, last - 10), last)
        dead_ips = {self.lab.ip(d): d for d in self.dead}
        out = [
            "",
            "==== summary " + "=" * 60,
            f"ARP requests seen by the sensor in n1: {before:.1f}/s before the power-off, "
            f"{after:.1f}/s over the last 10 s",
        ]
        if per_target:
            out.append("targets asked for (busiest first):")
            for ip, t in sorted(per_target.items(), key=lambda kv: -kv[1]["requests"]):
                tag = f"  <- {dead_ips[ip]}, powered off" if ip in dead_ips else ""
                out.append(
                    f"  {ip:<15} {t['requests']:>5} requests  peak {t['peak']:.0f}/s  "
                    f"from {len(t['senders'])} hosts{tag}"
                )
        else:
            out.append("targets asked for: none (did the storm start? try a longer --after)")
        try:
            protos = self.lab.protocols("n1")
            down = [(name, p.info) for name, p in sorted(protos.items()) if not p.established]
            out.append(
                f"BGP on n1 (birdc -s {self.lab.bird_socket('n1')} show protocols): "
                f"{sum(p.established for p in protos.values())}/{len(protos)} Established; dead peers:"
            )
            for name, info in down:
                ip = name.removeprefix("Mesh_").replace("_", ".")
                who = f" ({dead_ips[ip]})" if ip in dead_ips else ""
                out.append(f"  {name}{who}: {info}")
        except SensorError as e:
            out.append(f"BGP on n1: {e}")
        if alerts:
            out.append("sensor alerts:")
            out += [f"  {a['event'].get('action')}: {a.get('message', '')}" for a in alerts]
        asked = {ip for ip in per_target if ip in dead_ips}
        names = ", ".join(dead_ips.values())
        verdict = (
            f"every powered-off peer ({names}) is being asked for"
            if asked == set(dead_ips)
            else f"powered-off peers asked for: {sorted(asked) or 'none'} of {sorted(dead_ips)}"
        )
        out.append(f"=> {verdict}; on a real cluster: `kubectl delete node` them, or bring them back.")
        click.echo("\n".join(out), err=True)

    def cleanup(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        Lab.destroy(self.name)  # also kills the sensor if it is still there: its argv names the state dir
        self.say(f"lab {self.name} removed")


@click.command()
@click.option("--nodes", type=click.IntRange(4, 50), default=8, show_default=True, help="Lab size.")
@click.option("--kill", "dead", default="n2,n3", show_default=True, help="Nodes to power off (comma-separated).")
@click.option(
    "--hold-time",
    type=click.IntRange(3, 240),
    default=birdconf.LAB_HOLD_TIME,
    show_default=True,
    help="BGP hold time: how long the peers take to notice a power-off (Calico: 240).",
)
@click.option("--before", type=float, default=5, show_default=True, help="Seconds of healthy mesh to watch.")
@click.option("--after", type=float, default=30, show_default=True, help="Seconds to watch after the power-off.")
@click.option("--raw", is_flag=True, help="Print every JSON line as the sensor emits it (health included).")
@click.option(
    "--ready-timeout",
    type=float,
    default=90,
    show_default=True,
    help="Seconds to wait for the sensor to compile and attach.",
)
def demo(nodes: int, dead: str, hold_time: int, before: float, after: float, raw: bool, ready_timeout: float) -> None:
    """Reproduce Calico's ARP storm in a netns lab and watch arp-sensor catch it (about a minute).

    Builds an 8-node BIRD full mesh, runs `arp-sensor run` in node 1, powers off two nodes, streams the
    sensor's events and ends with a summary. Needs root, bird2 and bcc (`make install`).
    """
    d = Demo(nodes, [x for x in dead.split(",") if x], hold_time, before, after, raw, ready_timeout)

    def on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell may start us with it ignored, and Ctrl-C must still clean up
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        d.run()
    except KeyboardInterrupt:
        d.say("interrupted")
        raise
    finally:
        d.cleanup()
