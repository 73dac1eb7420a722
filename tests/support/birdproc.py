"""A throwaway BIRD in a network namespace of its own, for tests and bench/ (needs root).

Everything BIRD sends stays in the namespace: it gets one veth pair whose both ends live inside it
(`vc` with the router's address, `vd` up without an address), so connects to the configured peers
broadcast ARP requests that nobody answers, like a mesh of dead nodes.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from sensor.lab import birdconf

FAST_TIMERS = birdconf.Timers(connect_delay=1, connect_retry=3, error_wait=(1, 5))  # tests: reconnect soon


def peer_ips(n: int, router: str) -> list[str]:
    """n addresses of the router's network other than the router's own."""
    iface = ipaddress.ip_interface(router)
    hosts = (str(h) for h in iface.network.hosts() if h != iface.ip)
    return [next(hosts) for _ in range(n)]


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


class BirdNetns:
    """`with BirdNetns(n_peers=2) as b:` → a BIRD on `b.socket`; `b.stop()` / `b.start()` restart it."""

    def __init__(self, n_peers: int = 2, router: str = "198.18.4.3/22", n_peers6: int = 0,
                 router6: str = "2001:db8:4::3/64", socket_name: str = "bird.ctl") -> None:
        """The router sits among its peers' addresses, so it is passive towards some (Calico's rule) and
        connects to the others. n_peers6: IPv6 peers in the same BIRD (dual stack in one BIRD 2);
        socket_name: bird6.ctl for Calico's separate IPv6 BIRD (n_peers=0, n_peers6=N)."""
        self.ns = f"abird{secrets.token_hex(3)}"
        self.dir = Path(tempfile.mkdtemp(prefix="arp-sensor-bird-"))
        self.socket = str(self.dir / socket_name)
        self.router, self.router6 = router, router6 if n_peers6 else None
        self.router_ip = str(ipaddress.ip_interface(router).ip)
        peers4 = peer_ips(n_peers, router)
        peers6 = peer_ips(n_peers6, router6) if n_peers6 else []
        self.peers = peers4 + peers6
        self.conf = self.dir / "bird.conf"
        self.conf.write_text(birdconf.render(
            self.router_ip, peers4, hold_time=9, timers=FAST_TIMERS,
            local_ip6=str(ipaddress.ip_interface(router6).ip) if n_peers6 else None, peers6=peers6))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BirdNetns:
        try:
            _run("ip", "netns", "add", self.ns)
            ns = ("ip", "-n", self.ns)
            _run(*ns, "link", "set", "lo", "up")
            _run(*ns, "link", "add", "vc", "type", "veth", "peer", "name", "vd")
            _run(*ns, "addr", "add", self.router, "dev", "vc")
            if self.router6:
                _run(*ns, "addr", "add", self.router6, "dev", "vc", "nodad")
            _run(*ns, "link", "set", "vc", "up")
            _run(*ns, "link", "set", "vd", "up")
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, wait: float = 5.0) -> None:
        """Start BIRD in the foreground (-f) so we own the process, and wait for its socket."""
        if self.proc is not None:
            return
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "bird", "-f", "-c", str(self.conf), "-s", self.socket],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + wait
        while not self._answers():  # a stale socket file from a killed BIRD may exist: connect
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"bird did not start (exit {self.proc.poll()})")
            time.sleep(0.02)

    def _answers(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(0.5)
            s.connect(self.socket)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        # SIGKILL leaves the socket file behind, like a crashed BIRD: keep it so tests see that case
        if os.path.exists(self.socket) and sig != signal.SIGKILL:
            os.unlink(self.socket)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
            for p in self.dir.iterdir():
                p.unlink()
            self.dir.rmdir()
