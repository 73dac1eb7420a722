"""Per-packet cost of the kernel program: BPF_PROG_TEST_RUN ns/packet of an empty XDP program (the
floor: what the kernel's test-run loop itself costs) against ours, on the frames that matter.

    python -m bench.prog_cost [--repeat N] [--runs N] [--no-write]
"""

from __future__ import annotations

import argparse

from bench.report import machine, median, table, write_section
from sensor import bpfsys
from sensor import frames as F

EMPTY_XDP = b"int empty_xdp(struct xdp_md *ctx) { return XDP_PASS; }"
LINE_RATE_10G_NS = 1e9 / 14.88e6  # 64-byte frames at 10 GbE: 67.2 ns per frame

FRAMES = {
    "IPv4 UDP (non-ARP)": F.ipv4_udp(),
    "IPv6 UDP (non-ARP)": F.ipv6_udp(),
    "ARP request": F.arp_request("198.18.0.1", "198.18.0.7"),
    "ARP reply": F.arp_reply("198.18.0.7", "198.18.0.1"),
    "ARP request, 802.1Q": F.arp_request("198.18.0.1", "198.18.0.7", vlans=[(F.ETH_P_8021Q, 100)]),
}
TARGETS = {"non-ARP": 1.05, "ARP": 1.5}


def measure(repeat: int, runs: int) -> list[dict]:
    from bcc import BPF

    from sensor.datapath import Datapath

    empty = BPF(text=EMPTY_XDP).load_func(b"empty_xdp", BPF.XDP)
    dp = Datapath()
    progs = {"empty XDP": empty.fd, "arp-sensor XDP": dp.fn_xdp.fd, "arp-sensor tc egress": dp.fn_tc_eg.fd}
    rows = []
    for fname, frame in FRAMES.items():
        # Interleave the programs run by run so drift (turbo, noisy neighbours) hits all alike.
        samples: dict[str, list[float]] = {p: [] for p in progs}
        for _ in range(runs):
            for pname, fd in progs.items():
                samples[pname].append(bpfsys.prog_test_run(fd, frame, repeat=repeat).duration_ns)
        base = median(samples["empty XDP"])
        for pname in progs:
            ns = median(samples[pname])
            rows.append({"frame": fname, "program": pname, "ns": ns, "ratio": ns / base if base else float("nan")})
    return rows


def render(rows: list[dict], repeat: int, runs: int) -> str:
    lines = [
        "## Per-packet cost of the kernel program",
        "",
        f"`python -m bench.prog_cost` — BPF_PROG_TEST_RUN, {repeat:,} repetitions per run, median of {runs} runs, "
        "programs interleaved run by run. Baseline: an empty XDP program (`return XDP_PASS`) in the same run.",
        f"Machine: {machine()}.",
        "",
    ]
    body = []
    for r in rows:
        kind = "non-ARP" if "non-ARP" in r["frame"] else "ARP"
        verdict = ""
        if r["program"] == "arp-sensor XDP":
            target = TARGETS[kind]
            verdict = f"≤ {target}×: {'met' if r['ratio'] <= target else 'missed'}"
        mpps = 1e3 / r["ns"] if r["ns"] else float("inf")
        body.append([r["frame"], r["program"], f"{r['ns']:.1f}", f"{r['ratio']:.3f}×", f"{mpps:.1f}", verdict])
    lines.append(table(["frame", "program", "ns/packet", "vs empty", "Mpps/core", "target"], body))
    lines += ["", f"10 GbE line rate with 64-byte frames is 14.88 Mpps, {LINE_RATE_10G_NS:.1f} ns per frame per core."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=2_000_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    a = ap.parse_args(argv)
    rows = measure(a.repeat, a.runs)
    text = render(rows, a.repeat, a.runs)
    print(text)
    if not a.no_write:
        write_section("prog_cost", text)


if __name__ == "__main__":
    main()
