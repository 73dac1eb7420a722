"""Deployment artefacts: the systemd unit, sd_notify readiness, the Kubernetes DaemonSet."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sensor import config, sdnotify
from sensor.cli import cli
from tests.support.deployed import UNIT, dgram_server, manifests, parse_unit
from tests.support.fixtures_netns import REPO, unique

K8S = REPO / "deploy/kubernetes"


# -- systemd ---------------------------------------------------------------------------------------------


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
    assert "ProtectKernelModules" not in svc  # it would hide /lib/modules, which bcc compiles against
    assert any(v.startswith("-/etc/default/arp-sensor") for v in svc["EnvironmentFile"])
    assert f"{config.ENV_VAR}=/etc/arp-sensor/config.toml" in svc["Environment"]
    assert u["Install"]["WantedBy"] == ["multi-user.target"]
    # the shipped config keeps bindings in the unit's StateDirectory (writable under ProtectSystem=strict)
    assert svc["StateDirectory"] == ["arp-sensor"] and svc["ProtectSystem"] == ["strict"]
    assert 'binding-state = "/var/lib/arp-sensor/bindings.json"' in (UNIT.parent / "config.toml").read_text()


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


def test_example_config_is_accepted():
    """The shipped config file uses only flags the commands have (unknown keys would stop the unit)."""
    dm = config.load(str(REPO / "deploy/systemd/config.toml"), cli)
    assert dm["run"]["interfaces"] == ["eth0"] and dm["run"]["interval"] == 1.0
    assert dm["detach"]["interfaces"] == ["eth0"]  # ExecStopPost's `arp-sensor detach` finds them


# -- sd_notify -------------------------------------------------------------------------------------------


def test_notify_abstract_and_path(tmp_path):
    name = unique("arp-sensor-test-")
    with dgram_server("\0" + name) as srv:
        assert sdnotify.notify("READY=1\nSTATUS=x", {"NOTIFY_SOCKET": "@" + name})
        assert srv.recv(4096) == b"READY=1\nSTATUS=x"
    path = str(tmp_path / "notify.sock")
    with dgram_server(path) as srv:
        assert sdnotify.notify("STOPPING=1", {"NOTIFY_SOCKET": path})
        assert srv.recv(4096) == b"STOPPING=1"


def test_notify_without_manager_is_a_no_op(tmp_path):
    assert sdnotify.notify("READY=1", {}) is False
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}) is False
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"}) is False


# -- Kubernetes ------------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization"
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == on_disk


def test_daemonset_has_what_the_sensor_needs():
    ds = next(d for d in manifests() if d["kind"] == "DaemonSet")
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
    for path in ("/lib/modules", "/usr/src", "/var/run/calico", "/run/arp-sensor",
                 "/var/lib/arp-sensor"):  # the last one: the bindings state file (ConfigMap's binding-state)
        assert vols[mounts[path]["name"]]["hostPath"]["path"] == path, path
    assert "/sys/fs/bpf" not in mounts  # nothing is pinned (XDP links): no write access to bpffs
    assert mounts["/lib/modules"].get("readOnly") and mounts["/usr/src"].get("readOnly")
    cfg_mount = mounts["/etc/arp-sensor"]
    assert env[config.ENV_VAR]["value"].startswith(cfg_mount["mountPath"] + "/")
    assert c["readinessProbe"]["exec"]["command"][-1] == args[args.index("--ready-file") + 1]


def test_daemonset_args_and_config_parse_with_the_real_cli(tmp_path):
    """The ConfigMap's TOML has only known keys, and the args are flags `run` has."""
    docs = manifests()
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
        assert dm["run"]["binding_state"].startswith("/var/lib/arp-sensor/")  # on the hostPath mount


def test_manifests_validate_against_kubernetes_schemas():
    """Every manifest against the Kubernetes OpenAPI schemas kubernetes-validate bundles (offline, strict:
    an unknown or misspelt field fails, as `kubectl apply --validate=strict` would)."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for d in manifests():
        kubernetes_validate.validate(d, version, strict=True)  # raises ValidationError with the path


def test_schema_validation_catches_a_broken_manifest():
    import kubernetes_validate

    ds = next(d for d in manifests() if d["kind"] == "DaemonSet")
    broken = yaml.safe_load(yaml.safe_dump(ds))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilites"] = {}  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)
    broken = yaml.safe_load(yaml.safe_dump(ds))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9464"  # not an int
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl not installed")
def test_kubectl_kustomize_builds():
    r = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(r.stdout) if d]
    assert sorted(kinds) == ["ConfigMap", "DaemonSet", "Namespace"]




def test_unit_writable_paths_match_what_the_sensor_writes():
    """Issue 13 item 9, under ProtectSystem=strict: the documented file output is in LogsDirectory, the
    per-interface locks are in RuntimeDirectory, which survives stops (the DaemonSet shares it: unlinking
    a live pod's lock file would let a host sensor take the interface too), and bpffs is not writable
    (nothing is pinned). The unit itself runs under real systemd in the VM tests (issue 14)."""
    from pathlib import Path

    from sensor.kernel.datapath import LOCK_DIR

    svc = parse_unit(UNIT.read_text())["Service"]
    assert svc["ProtectSystem"] == ["strict"]
    assert svc["LogsDirectory"] == ["arp-sensor"]
    run_dir = Path(LOCK_DIR).parent
    assert run_dir.parent == Path("/run") and svc["RuntimeDirectory"] == [run_dir.name]
    assert svc["RuntimeDirectoryPreserve"] == ["yes"]
    assert not any("/sys/fs/bpf" in v for v in svc.get("ReadWritePaths", []))
    # Every `-o file:` the docs show for the unit is under its LogsDirectory.
    docs = (REPO / "docs/operations.md").read_text() + (REPO / "docs/outputs.md").read_text()
    files = set(re.findall(r"file:(/var/log/[^\s`\"]+)", docs))
    assert files and all(f.startswith("/var/log/arp-sensor/") for f in files), files
    ds = next(d for d in manifests() if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    host_run = [v["hostPath"]["path"] for v in ds["volumes"] if "hostPath" in v]
    mounted = [m["mountPath"] for m in ds["containers"][0]["volumeMounts"]]
    assert str(run_dir) in host_run and str(run_dir) in mounted  # the same directory, host and pod
