"""Rate limiting: the ARP storm it takes off the switch, and what the limit path costs per packet.

Storm: an 8-node Calico-style BIRD full mesh (sensor.lab), two nodes powered off, so every live node keeps
broadcasting ARP for them. ARP requests for the dead IPs are counted on the bridge by tcpdump in the
switch namespace (not by the sensor) in three phases of equal length: no sensor, arp-sensor with
`--rate-limit dry-run` on every live node, then `--rate-limit enforce` on every live node. Every session
between live nodes must stay Established.

Cost: BPF_PROG_TEST_RUN ns/packet of an ARP request through the program built without the limit code
(-DARP_SENSOR_NO_LIMITS) and as shipped, in the same interleaved runs, for each state of the limits map.

    python -m bench.ratelimit [--phase S] [--repeat N] [--runs N] [--no-storm] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.prog_cost import EMPTY_XDP
from bench.report import machine, median, table, write_section
from sensor.kernel import bpfsys
from tests.support import frames as F

REPO = Path(__file__).resolve().parent.parent
TARGET = "198.18.0.7"
LO = 1  # test runs happen on the namespace's loopback device

SCENARIOS = [
    ("no limits (default)", "limits_active = 0: one array read per request"),
    ("64 limits, other targets", "a host limiting dead peers asks for a live one: one hash miss"),
    ("limit hit, within the bucket", "hash hit, clock, spin lock, refill, spend a token: the request passes"),
    ("limit hit, bucket empty", "the same, the request is dropped (XDP_DROP / TC_ACT_SHOT)"),
    ("limit hit, dry-run", "the same, passed and counted as would-drop"),
]


# -- per-packet cost -----------------------------------------------------------------------------------
def measure_cost(repeat: int, runs: int) -> list[dict]:
    from sensor.kernel.loader import bpf_class

    BPF = bpf_class()

    from sensor.kernel.datapath import Datapath
    from sensor.kernel.layout import BPF_DIR, DIR_EGRESS, DIR_INGRESS, LIMIT_F_DRY_RUN, PROG_TC_EG, PROG_XDP, PROGRAM
    from sensor.kernel.limitmap import NS, LimitKey, LimitMap, LimitVal

    empty = BPF(src_file=str(EMPTY_XDP).encode()).load_func(b"empty_xdp", BPF.XDP)
    bare = BPF(src_file=str(PROGRAM).encode(), cflags=[f"-I{BPF_DIR}", "-DARP_SENSOR_NO_LIMITS"])
    dp = Datapath(max_entries=1024)
    progs = {
        "empty XDP": empty.fd,
        "XDP, no limit code": bare.load_func(PROG_XDP.encode(), BPF.XDP).fd,
        "XDP": dp.fn_xdp.fd,
        "tc egress, no limit code": bare.load_func(PROG_TC_EG.encode(), BPF.SCHED_CLS).fd,
        "tc egress": dp.fn_tc_eg.fd,
    }
    lm = LimitMap(*dp.limit_fds)
    frame = F.arp_request("198.18.0.1", TARGET)
    for fd in progs.values():  # the count entries exist before timing
        bpfsys.prog_test_run(fd, frame)

    def hold(tokens: float, flags: int) -> None:
        """Limits for TARGET whose bucket stays where it is for the whole run (rate 0.001/s)."""
        now = time.monotonic_ns()
        for d in (DIR_INGRESS, DIR_EGRESS):
            lm.put(LimitKey(LO, TARGET, d), LimitVal(flags=flags, rate_mpps=1, cost_ns=1000 * NS, burst=10**6,
                                                     tokens_ns=int(tokens * 1000 * NS), last_refill_ns=now,
                                                     expires_ns=now + 3600 * NS))

    rows = []
    try:
        for name, _why in SCENARIOS:
            lm.clear()
            if name.startswith("64 limits"):
                for i in range(64):
                    for d in (DIR_INGRESS, DIR_EGRESS):
                        lm.apply(LimitKey(LO, f"198.18.200.{i}", d), 1.0, 1, 3600, False)
            elif name == "limit hit, within the bucket":
                hold(10**6, 0)  # a million tokens: every run passes
            elif name == "limit hit, bucket empty":
                hold(0, 0)
            elif name == "limit hit, dry-run":
                hold(0, LIMIT_F_DRY_RUN)
            samples: dict[str, list[float]] = {p: [] for p in progs}
            for _ in range(runs):
                for p, fd in progs.items():
                    samples[p].append(bpfsys.prog_test_run(fd, frame, repeat=repeat).duration_ns)
            ns = {p: median(s) for p, s in samples.items()}
            rows.append({"scenario": name, **ns})
    finally:
        lm.clear()
    return rows


# -- storm on the bridge -------------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    requests: int = 0  # ARP requests for the dead IPs on the bridge
    dropped: int = 0  # as the sensors reported (ratelimit-dropping events in the window)
    would_drop: int = 0
    sessions_ok: bool = True
    per_node: dict[str, int] = field(default_factory=dict)


class _Sensor:
    def __init__(self, lab, node: str, mode: str, tmp: Path) -> None:
        self.out = tmp / f"{node}-{mode}.jsonl"
        ready = tmp / f"{node}-{mode}.ready"
        argv = lab.exec_argv(node, [sys.executable, "-m", "sensor", "run", "-i", "eth0", "--interval", "1",
                                    "--verdict-window", "4", "--bird-socket", lab.bird_socket(node),
                                    "--rate-limit", mode, "--ready-file", str(ready)])
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(self.out, "w") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL, env=env, cwd=REPO,
                                         start_new_session=True)
        end = time.monotonic() + 60
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"{node}: sensor did not start")
            time.sleep(0.1)

    def events(self) -> list[dict]:
        return [json.loads(x) for x in self.out.read_text().split("\n")[:-1] if x]

    def limited(self) -> set[str]:
        now: set[str] = set()
        for e in self.events():
            action = e["event"].get("action")
            if action == "ratelimit-applied":
                now.add(e["destination"]["ip"])
            elif action == "ratelimit-removed":
                now.discard(e["destination"]["ip"])
        return now

    def counts(self, t0: float, t1: float) -> tuple[int, int]:
        from datetime import datetime

        d = w = 0
        for e in self.events():
            if e["event"].get("action") == "ratelimit-dropping":
                ts = datetime.fromisoformat(e["@timestamp"].replace("Z", "+00:00")).timestamp()
                if t0 <= ts < t1:
                    d += e["arp"]["dropped"]
                    w += e["arp"].get("would_drop", 0)
        return d, w

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def measure_storm(phase_s: float, log=lambda m: print(m, file=sys.stderr)) -> list[Phase]:
    from sensor.lab.lab import Lab

    name = "rb" + secrets.token_hex(2)
    lab = Lab(name, 8)
    dead = ["n3", "n6"]
    phases: list[Phase] = []
    sensors: list[_Sensor] = []
    try:
        lab.up()
        lab.wait_established(90)
        live = [n for n in lab.nodes if n not in dead]
        dead_ips = {lab.ip(n) for n in dead}
        ip_of = {lab.ip(n): n for n in lab.nodes}
        for n in dead:
            lab.kill(n)
        with tempfile.TemporaryDirectory() as tmpd, lab.arp_capture() as cap:
            tmp = Path(tmpd)
            end = time.monotonic() + 60
            while sum(1 for f in cap.frames if f.kind == "Request" and f.target in dead_ips) < 10:
                if time.monotonic() > end:
                    raise RuntimeError("no ARP storm after the kill")
                time.sleep(0.5)
            for mode in ("off", "dry-run", "enforce"):
                if mode != "off":
                    sensors = [_Sensor(lab, n, mode, tmp) for n in live]
                    end = time.monotonic() + 60
                    while not all(s.limited() >= dead_ips for s in sensors):
                        if time.monotonic() > end:
                            raise RuntimeError(f"{mode}: limits not applied in 60 s")
                        time.sleep(0.5)
                    time.sleep(2)
                log(f"ratelimit: phase {mode} ({phase_s:g} s)")
                t0 = time.time()
                time.sleep(phase_s)
                t1 = time.time()
                ph = Phase("no limits" if mode == "off" else f"--rate-limit {mode}", t1 - t0)
                ph.sessions_ok = not lab.not_established()
                for f in cap.frames:
                    if f.kind == "Request" and f.target in dead_ips and t0 <= f.ts < t1:
                        ph.requests += 1
                        node = ip_of.get(f.sender or "", "?")
                        ph.per_node[node] = ph.per_node.get(node, 0) + 1
                for s in sensors:
                    d, w = s.counts(t0, t1)
                    ph.dropped += d
                    ph.would_drop += w
                    s.stop()
                sensors = []
                phases.append(ph)
    finally:
        for s in sensors:
            s.stop()
        Lab.destroy(name)
    return phases


# -- report --------------------------------------------------------------------------------------------
def render(cost: list[dict], storm: list[Phase] | None, repeat: int, runs: int) -> str:
    lines = ["## Rate limiting: storm reduction and the cost of the limit path", "",
             f"`python -m bench.ratelimit` — Machine: {machine()}.", ""]
    if storm:
        base = storm[0]
        lines += [
            "### ARP storm on the bridge",
            "",
            "8-node Calico-style BIRD full mesh (`sensor.lab`), n3 and n6 powered off, arp-sensor with default "
            "limits (`--limit-pps` 0.02, `--limit-burst` 1) on all six live nodes, verdicts from their own "
            "BIRD (`--bird-socket`). ARP requests for the two dead IPs counted on the bridge by tcpdump in the "
            "switch namespace; each phase equally long, measured once the limits were in place. *Asked* is "
            "what the hosts' kernels sent towards the wire (bridge + dropped on egress). The storm's own rate "
            "varies from phase to phase, so *cut*, the share of the hosts' "
            "requests dropped within the same phase, is the reduction that does not depend on it; *vs no "
            "limits* compares the bridge with the first phase.",
            "",
        ]
        body = []
        for ph in storm:
            asked = ph.requests + ph.dropped
            rate = ph.requests / ph.seconds if ph.seconds else 0
            vs = "baseline"
            if ph is not base and base.requests:
                change = ph.requests / base.requests - 1
                vs = f"{-change:.1%} fewer" if change <= 0 else f"{change:.1%} more"
            cut = f"{ph.dropped / asked:.1%}" if asked and ph.dropped else "0%"
            body.append([ph.name, f"{ph.seconds:.0f}", asked, ph.requests, f"{rate:.2f}", cut, vs,
                         ph.would_drop if "dry-run" in ph.name else "", "yes" if ph.sessions_ok else "**no**"])
        lines.append(table(["phase", "s", "asked", "on the bridge", "bridge per s", "cut", "vs no limits",
                            "would drop (dry-run)", "live sessions Established"], body))
        lines.append("")
    cols = ["XDP, no limit code", "XDP", "tc egress, no limit code", "tc egress"]
    body = []
    for r in cost:
        why = dict(SCENARIOS)[r["scenario"]]
        body.append([r["scenario"], f"{r['empty XDP']:.1f}",
                     *(f"{r[c]:.1f}" for c in cols),
                     f"{r['XDP'] - r['XDP, no limit code']:+.1f}",
                     f"{r['tc egress'] - r['tc egress, no limit code']:+.1f}", why])
    lines += [
        "### Per-packet cost of the limit path (ARP request)",
        "",
        f"BPF_PROG_TEST_RUN, {repeat:,} repetitions per run, median of {runs} runs, programs interleaved run by "
        "run; `no limit code` is the same program built with `-DARP_SENSOR_NO_LIMITS`, the baseline for "
        "`added`. Non-ARP frames and ARP other than requests never reach the limit code.",
        "",
        table(["limits map", "empty XDP", *cols, "added, XDP", "added, tc egress", "what runs"], body),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", type=float, default=30.0, help="seconds per storm phase")
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-storm", action="store_true", help="skip the lab (cost only)")
    ap.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    a = ap.parse_args(argv)
    storm = None if a.no_storm else measure_storm(a.phase)
    cost = measure_cost(a.repeat, a.runs)
    text = render(cost, storm, a.repeat, a.runs)
    print(text)
    if not a.no_write:
        write_section("ratelimit", text)


if __name__ == "__main__":
    main()
