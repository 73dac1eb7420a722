"""Throwaway network namespaces and a sensor process running inside one (pyroute2 fixture style).

Every namespace gets a unique name per run and is deleted by a finalizer, which also removes the veths
and any program attached to them, even when the test fails."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def ns_exec(ns: str, *cmd: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=check, timeout=timeout,
                          capture_output=True, text=True, **kw)


def sensor_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "sensor", *args]


def sensor_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["ARP_SENSOR_VALIDATE_SCHEMA"] = "1"  # the sensor validates every event it emits (tests only)
    return env


@dataclass
class VethPair:
    """Two namespaces joined by a veth: `a` (traffic source, veth `a_if`) and `b` (sensor, `b_if`)."""

    a: str
    b: str
    a_if: str = "veth-a"
    b_if: str = "veth-b"
    extra: list[str] = field(default_factory=list)

    def send_frames(self, frames: list[bytes], ns: str | None = None, ifname: str | None = None) -> None:
        """Sends raw frames from a namespace through an AF_PACKET socket (tags stay in-band)."""
        ns = ns or self.a
        ifname = ifname or (self.a_if if ns == self.a else self.b_if)
        code = ("import socket,sys\n"
                "s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW); s.bind((sys.argv[1],0))\n"
                "data=sys.stdin.buffer.read(); i=0\n"
                "while i<len(data):\n"
                "    n=int.from_bytes(data[i:i+2],'big'); s.send(data[i+2:i+2+n]); i+=2+n\n")
        blob = b"".join(len(f).to_bytes(2, "big") + f for f in frames)
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, ifname], input=blob,
                       check=True, timeout=60, capture_output=True)


def _del_ns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def veth_pair() -> Iterator[VethPair]:
    with veth_namespaces(VethPair(unique("asa"), unique("asb"))) as pair:
        yield pair


@contextlib.contextmanager
def veth_namespaces(pair: VethPair) -> Iterator[VethPair]:
    """The pair's two namespaces joined by its veth (a: 198.18.0.1/24, b: 198.18.0.2/24, everything up),
    deleted on the way out whatever happened, with any namespace a test added to pair.extra."""
    from pyroute2 import NetNS, netns

    try:
        netns.create(pair.a)
        netns.create(pair.b)
        with NetNS(pair.a) as na:
            na.link("add", ifname=pair.a_if, kind="veth", peer={"ifname": pair.b_if, "net_ns_fd": pair.b})
            na.link("set", index=na.link_lookup(ifname=pair.a_if)[0], state="up")
            na.link("set", index=na.link_lookup(ifname="lo")[0], state="up")
            na.addr("add", index=na.link_lookup(ifname=pair.a_if)[0], address="198.18.0.1", prefixlen=24)
        with NetNS(pair.b) as nb:
            nb.link("set", index=nb.link_lookup(ifname=pair.b_if)[0], state="up")
            nb.link("set", index=nb.link_lookup(ifname="lo")[0], state="up")
            nb.addr("add", index=nb.link_lookup(ifname=pair.b_if)[0], address="198.18.0.2", prefixlen=24)
        yield pair
    finally:
        for name in [pair.a, pair.b, *pair.extra]:
            _del_ns(name)


class SensorProcess:
    """`arp-sensor run` inside a namespace, started with a ready file; always stopped by the fixture."""

    def __init__(self, ns: str, args: list[str], tmp: Path, wrap: list[str] | None = None) -> None:
        self.ready = tmp / f"{unique('ready')}"
        self.ns = ns
        self.args = args
        # wrap: a command the sensor runs under, e.g. setpriv with a reduced capability set.
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *(wrap or []), *sensor_cmd("run", *args, "--ready-file", str(self.ready))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=sensor_env(), cwd=REPO,
            start_new_session=True)
        self.stdout = ""
        self.stderr = ""
        # Drain both pipes while the sensor runs: a full pipe would block its writes (and so its
        # shutdown) in a long test.
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [threading.Thread(target=self._drain, args=(pipe, buf), daemon=True)
                         for pipe, buf in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))]
        for t in self._readers:
            t.start()

    @staticmethod
    def _drain(pipe, buf: list[str]) -> None:
        for line in pipe:
            buf.append(line)

    def _collect(self) -> None:
        for t in self._readers:
            t.join(timeout=10)
        self.stdout, self.stderr = "".join(self._out), "".join(self._err)

    def events_so_far(self) -> list[dict]:
        """The events the sensor has written up to now, while it runs (schema-validated)."""
        from tests.support.fixtures_schema import parse_events

        return parse_events("".join(list(self._out)))

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            if self.proc.poll() is not None:
                self._collect()
                raise AssertionError(f"sensor exited {self.proc.returncode} before ready: {self.stderr.strip()}")
            if time.monotonic() > deadline:
                raise AssertionError("sensor not ready in time")
            time.sleep(0.05)

    def finish(self, timeout: float = 60) -> int:
        """Waits for --duration to end (or SIGTERM if there is none) and collects the output."""
        if "--duration" not in self.args and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._collect()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._collect()

    def events(self, dataset: str | None = None) -> list[dict]:
        from tests.support.fixtures_schema import parse_events  # each line validated against the event schema

        evs = parse_events(self.stdout)
        return [e for e in evs if dataset is None or e["event"]["dataset"] == dataset]


@pytest.fixture
def sensor(tmp_path: Path) -> Iterator:
    """Factory: sensor(ns, args, wrap=None) -> SensorProcess, ready; every process is killed at teardown."""
    procs: list[SensorProcess] = []

    def start(ns: str, args: list[str], wait: bool = True, wrap: list[str] | None = None) -> SensorProcess:
        p = SensorProcess(ns, args, tmp_path, wrap)
        procs.append(p)
        if wait:
            p.wait_ready()
        return p

    yield start
    for p in procs:
        p.kill()


def attached_programs(ns: str, ifname: str) -> dict[str, list]:
    """What is attached to an interface: XDP program id and tc filters on both hooks."""
    link = json.loads(ns_exec(ns, "ip", "-j", "-d", "link", "show", ifname).stdout)[0]
    xdp = link.get("xdp", {})
    tc = {}
    for hook in ("ingress", "egress"):
        r = ns_exec(ns, "tc", "-j", "filter", "show", "dev", ifname, hook, check=False)
        tc[hook] = [f for f in (json.loads(r.stdout) if r.stdout.strip() else []) if f.get("options")]
    return {"xdp": [xdp["prog"]["id"]] if xdp.get("prog") else [], **tc}
