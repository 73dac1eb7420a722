"""Deployment artefacts: the systemd unit, sd_notify readiness, the Kubernetes DaemonSet."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from sensor import config, sdnotify
from sensor.cli import cli
from tests.fixtures_netns import REPO, attached_programs, needs_root, sensor_cmd, sensor_env, unique

UNIT = REPO / "deploy/systemd/arp-sensor.service"
K8S = REPO / "deploy/kubernetes"


# -- systemd ---------------------------------------------------------------------------------------------
def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Strict parse: every line is a comment, a [Section] or Key=Value inside a section."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith(("#", ";")):
            continue
        if s.startswith("[") and s.endswith("]"):
            section = out.setdefault(s[1:-1], {})
            continue
        assert section is not None and "=" in s, f"line {n}: {line!r}"
        k, v = s.split("=", 1)
        section.setdefault(k.strip(), []).append(v.strip())
    return out


def test_unit_keys():
    u = parse_unit(UNIT.read_text())
    assert set(u) == {"Unit", "Service", "Install"}
    svc = u["Service"]
    assert svc["Type"] == ["notify"] and svc["NotifyAccess"] == ["main"]
    assert svc["ExecStart"][0].split()[1] == "run"
    assert svc["Restart"] == ["on-failure"]
    assert "2" in svc["RestartPreventExitStatus"][0].split()  # bad config does not heal by restarting
    caps = set(svc["CapabilityBoundingSet"][0].split())
    assert caps == {"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_RESOURCE"}
    assert "ProtectKernelModules" not in svc  # it would hide /lib/modules from bcc
    assert any(v.startswith("-/etc/default/arp-sensor") for v in svc["EnvironmentFile"])
    assert f"{config.ENV_VAR}=/etc/arp-sensor/config.toml" in svc["Environment"]
    assert u["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path):
    # verify checks that ExecStart exists: point it at this checkout's console script.
    exe = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin/arp-sensor"
    if not exe.exists():
        exe = Path(shutil.which("arp-sensor") or "/usr/bin/true")
    unit = tmp_path / "arp-sensor.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/arp-sensor", str(exe)))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def _setpriv_caps(names: list[str]) -> str:
    """CAP_NET_ADMIN / NET_ADMIN → setpriv's `-all,+net_admin,...`."""
    return ",".join(["-all"] + ["+" + n.lower().removeprefix("cap_") for n in names])


def _unit_caps() -> list[str]:
    return parse_unit(UNIT.read_text())["Service"]["CapabilityBoundingSet"][0].split()


def _daemonset_caps() -> list[str]:
    ds = next(d for d in _docs() if d["kind"] == "DaemonSet")
    return ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]


@needs_root
@pytest.mark.root
@pytest.mark.parametrize("source", ["unit", "daemonset", "too-few"])
def test_sensor_runs_with_the_shipped_capabilities(veth_pair, tmp_path, source):
    """uid 0 with only the capabilities the unit / DaemonSet grant: bcc compiles, loads and attaches.
    Without CAP_BPF it fails with one line and exit 3 (so the set is what makes it work)."""
    caps = {"unit": _unit_caps, "daemonset": _daemonset_caps, "too-few": lambda: ["CAP_NET_ADMIN"]}[source]()
    assert "SYS_ADMIN" not in " ".join(caps)
    ready = tmp_path / "ready"
    r = subprocess.run(["ip", "netns", "exec", veth_pair.b, "setpriv", "--bounding-set", _setpriv_caps(caps),
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


def test_example_config_is_accepted():
    """The shipped config file uses only flags the commands have (unknown keys would stop the unit)."""
    dm = config.load(str(REPO / "deploy/systemd/config.toml"), cli)
    assert dm["run"]["interfaces"] == ["eth0"] and dm["run"]["interval"] == 1.0
    assert dm["detach"]["interfaces"] == ["eth0"]  # ExecStopPost's `arp-sensor detach` finds them


# -- sd_notify -------------------------------------------------------------------------------------------
def _dgram_server(address: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    return s


def test_notify_abstract_and_path(tmp_path):
    name = unique("arp-sensor-test-")
    with _dgram_server("\0" + name) as srv:
        assert sdnotify.notify("READY=1\nSTATUS=x", {"NOTIFY_SOCKET": "@" + name})
        assert srv.recv(4096) == b"READY=1\nSTATUS=x"
    path = str(tmp_path / "notify.sock")
    with _dgram_server(path) as srv:
        assert sdnotify.notify("STOPPING=1", {"NOTIFY_SOCKET": path})
        assert srv.recv(4096) == b"STOPPING=1"


def test_notify_without_manager_is_a_no_op(tmp_path):
    assert sdnotify.notify("READY=1", {}) is False
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}) is False
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"}) is False


@needs_root
@pytest.mark.root
def test_ready_only_after_attach(veth_pair, tmp_path):
    """READY=1 arrives only when the programs are attached; STOPPING=1 on SIGTERM; nothing left after."""
    path = str(tmp_path / "notify.sock")
    srv = _dgram_server(path)
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


# -- Kubernetes ------------------------------------------------------------------------------------------
def _docs() -> list[dict]:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for res in kust["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / res).read_text()) if d]
    return docs


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization"
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == on_disk


def test_daemonset_has_what_the_sensor_needs():
    ds = next(d for d in _docs() if d["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {"operator": "Exists"} in spec["tolerations"]
    (c,) = spec["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    args = c["args"]
    assert args[0] == "run" and args[args.index("--hostname") + 1] == "$(NODE_NAME)"
    assert "--output" not in args or args[args.index("--output") + 1] == "-"  # JSON lines on stdout
    sc = c["securityContext"]
    assert sc.get("privileged") or {"BPF", "PERFMON", "NET_ADMIN"} <= set(sc["capabilities"]["add"])
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/lib/modules", "/usr/src", "/sys/fs/bpf", "/var/run/calico", "/run/arp-sensor"):
        assert vols[mounts[path]["name"]]["hostPath"]["path"] == path, path
    assert mounts["/lib/modules"].get("readOnly") and mounts["/usr/src"].get("readOnly")
    cfg_mount = mounts["/etc/arp-sensor"]
    assert env[config.ENV_VAR]["value"].startswith(cfg_mount["mountPath"] + "/")
    assert c["readinessProbe"]["exec"]["command"][-1] == args[args.index("--ready-file") + 1]


def test_daemonset_args_and_config_parse_with_the_real_cli(tmp_path):
    """The ConfigMap's TOML has only known keys, and the args are flags `run` has."""
    docs = _docs()
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    cfg = tmp_path / "config.toml"
    cfg.write_text(cm["data"]["config.toml"])
    dm = config.load(str(cfg), cli)
    args = [a.replace("$(NODE_NAME)", "node-1").replace("$(POD_IP)", "198.18.0.9")
            for a in ds["spec"]["template"]["spec"]["containers"][0]["args"]]
    ctx = cli.make_context("arp-sensor", ["--config", str(cfg), *args])
    sub = cli.get_command(ctx, args[0])
    with sub.make_context(args[0], args[1:], parent=ctx) as sctx:
        assert sctx.params["hostname"] == "node-1"
        assert sctx.params["metrics_addr"] == "198.18.0.9"
        port = sctx.params["metrics_port"]
        spec = ds["spec"]["template"]
        assert spec["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in spec["spec"]["containers"][0]["ports"]
        assert list(sctx.params["interfaces"]) == dm["run"]["interfaces"]


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl not installed")
def test_kubectl_kustomize_builds():
    r = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(r.stdout) if d]
    assert sorted(kinds) == ["ConfigMap", "DaemonSet", "Namespace"]


@needs_root
@pytest.mark.root
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
    assert attached_programs(veth_pair.b, veth_pair.b_if)["xdp"]  # a killed sensor leaves its programs
    env = sensor_env()
    env[config.ENV_VAR] = str(cfg)
    r = subprocess.run(["ip", "netns", "exec", veth_pair.b, *sensor_cmd(*stop_post[1:])], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "removed arp-sensor XDP program" in r.stdout
    assert attached_programs(veth_pair.b, veth_pair.b_if) == {"xdp": [], "ingress": [], "egress": []}
