"""Deployment artefacts: the systemd unit, sd_notify readiness, the Kubernetes DaemonSet."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from sensor import config
from sensor.kernel.datapath import TC_PROTOS
from tests.support import frames as F
from tests.support.deployed import UNIT, daemonset_caps, dgram_server, parse_unit, setpriv_caps, unit_caps
from tests.support.fixtures_netns import REPO, attached_programs, sensor_cmd, sensor_env


@pytest.mark.parametrize("source", ["unit", "daemonset", "too-few"])
def test_sensor_runs_with_the_shipped_capabilities(veth_pair, tmp_path, source):
    """uid 0 with only the capabilities the unit / DaemonSet grant: bcc compiles, loads and attaches.
    Without CAP_BPF it fails with one line and exit 3 (so the set is what makes it work)."""
    caps = {"unit": unit_caps, "daemonset": daemonset_caps, "too-few": lambda: ["CAP_NET_ADMIN"]}[source]()
    assert "SYS_ADMIN" not in " ".join(caps)
    ready = tmp_path / "ready"
    r = subprocess.run(["ip", "netns", "exec", veth_pair.b, "setpriv", "--bounding-set", setpriv_caps(caps),
                        "--inh-caps", "-all", *sensor_cmd("run", "-i", veth_pair.b_if, "--duration", "1.5",
                                                          "--ready-file", str(ready))],
                       capture_output=True, text=True, env=sensor_env(), cwd=REPO, timeout=120)
    if source == "too-few":
        assert r.returncode == 3 and "Operation not permitted" in r.stderr and len(r.stderr.splitlines()) == 1
        return
    assert r.returncode == 0, r.stderr
    assert ready.exists()  # attached
    assert '"arp_sensor.health"' in r.stdout
    assert attached_programs(veth_pair.b, veth_pair.b_if) == {"xdp": [], "ingress": [], "egress": []}


def _with_caps(caps: list[str]) -> list[str]:
    """uid 0 with exactly these capabilities: the bounding set is what systemd and the container runtime
    restrict; nothing inheritable or ambient survives the exec either."""
    return ["setpriv", "--bounding-set", setpriv_caps(caps), "--inh-caps", "-all", "--ambient-caps", "-all"]


@pytest.mark.parametrize("source", ["unit", "daemonset"])
def test_sigkill_recovery_with_the_shipped_capabilities(veth_pair, sensor, source):
    """Issue 13: a sensor SIGKILLed under the shipped capability set (no CAP_SYS_ADMIN, so the kernel
    will not hand out an fd for a program by id) must not block its successor: the successor with the
    same set attaches and counts exactly, and `detach` with the same set leaves nothing attached."""
    caps = {"unit": unit_caps, "daemonset": daemonset_caps}[source]()
    assert not any("SYS_ADMIN" in c for c in caps)
    ns, dev = veth_pair.b, veth_pair.b_if
    crashed = sensor(ns, ["-i", dev], wrap=_with_caps(caps))
    assert attached_programs(ns, dev)["xdp"]
    crashed.kill()
    nxt = sensor(ns, ["-i", dev, "--interval", "0.5", "--top", "0", "--duration", "2"], wrap=_with_caps(caps))
    progs = attached_programs(ns, dev)
    assert len(progs["xdp"]) == 1 and len(progs["egress"]) == len(TC_PROTOS)  # attached, nothing doubled
    veth_pair.send_frames([F.arp_request("198.18.0.1", "198.18.0.77")] * 9)
    assert nxt.finish() == 0, nxt.stderr
    got = sum(e["arp"]["requests"] for e in nxt.events("arp_sensor.target")
              if e["destination"]["ip"] == "198.18.0.77" and e["network"]["direction"] == "ingress")
    assert got == 9
    assert attached_programs(ns, dev) == {"xdp": [], "ingress": [], "egress": []}
    # Crash again; this time the unit's ExecStopPost (`detach`) cleans up, with the same capabilities.
    crashed = sensor(ns, ["-i", dev], wrap=_with_caps(caps))
    crashed.kill()
    r = subprocess.run(["ip", "netns", "exec", ns, *_with_caps(caps), *sensor_cmd("detach", "-i", dev)],
                       capture_output=True, text=True, env=sensor_env(), cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert attached_programs(ns, dev) == {"xdp": [], "ingress": [], "egress": []}


def test_ready_only_after_attach(veth_pair, tmp_path):
    """READY=1 arrives only when the programs are attached; STOPPING=1 on SIGTERM; nothing left after."""
    path = str(tmp_path / "notify.sock")
    srv = dgram_server(path)
    srv.settimeout(0.05)
    env = sensor_env()
    env["NOTIFY_SOCKET"] = path  # a path, not @abstract: abstract names are per network namespace
    proc = subprocess.Popen(["ip", "netns", "exec", veth_pair.b, *sensor_cmd("run", "-i", veth_pair.b_if)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=REPO,
                            start_new_session=True)
    try:
        seen_unattached = False
        deadline = time.monotonic() + 90
        msg = b""
        while not msg:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no READY=1"
            try:
                msg = srv.recv(4096)
            except TimeoutError:
                att = attached_programs(veth_pair.b, veth_pair.b_if)
                seen_unattached |= not (att["xdp"] or att["egress"])
        att = attached_programs(veth_pair.b, veth_pair.b_if)  # right when the datagram arrived
        assert msg.startswith(b"READY=1\n") and b"STATUS=watching veth-b" in msg
        assert att["xdp"] and att["egress"], att
        assert seen_unattached  # the test did look while compiling: READY=1 was not sent early
        proc.send_signal(signal.SIGTERM)
        srv.settimeout(30)
        assert srv.recv(4096) == b"STOPPING=1"
        assert proc.wait(timeout=30) == 0
        assert attached_programs(veth_pair.b, veth_pair.b_if) == {"xdp": [], "ingress": [], "egress": []}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        srv.close()


def test_exec_stop_post_detach_cleans_up_after_sigkill(veth_pair, sensor, tmp_path):
    """The unit's ExecStopPost (`arp-sensor detach`, interfaces from the config file's top level via
    $ARP_SENSOR_CONFIG) removes what a SIGKILLed sensor left attached."""
    svc = parse_unit(UNIT.read_text())["Service"]
    stop_post = svc["ExecStopPost"][0].lstrip("-").split()
    assert stop_post[1:] == ["detach"]
    cfg = tmp_path / "config.toml"
    cfg.write_text((REPO / "deploy/systemd/config.toml").read_text().replace('["eth0"]', f'["{veth_pair.b_if}"]'))
    p = sensor(veth_pair.b, ["-i", veth_pair.b_if])
    os.killpg(p.proc.pid, signal.SIGKILL)
    p.proc.wait()
    # A killed sensor leaves its tc filters (its XDP link went with it).
    assert len(attached_programs(veth_pair.b, veth_pair.b_if)["egress"]) == len(TC_PROTOS)
    env = sensor_env()
    env[config.ENV_VAR] = str(cfg)
    r = subprocess.run(["ip", "netns", "exec", veth_pair.b, *sensor_cmd(*stop_post[1:])], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "removed arp-sensor tc filter" in r.stdout
    assert attached_programs(veth_pair.b, veth_pair.b_if) == {"xdp": [], "ingress": [], "egress": []}


