"""`make image-test`: the container image, built without a registry, run the way the DaemonSet runs it.

The pod is read from deploy/kubernetes (command, args with $(VAR) expansion, env with its fieldRefs,
volume mounts, securityContext, resource limits, readiness probe, grace period) and translated to one
`podman run`, the way a kubelet with a CRI runtime would: nothing of it is copied here. The node is a network
namespace this test creates (hostNetwork: the pod shares it), its NIC a veth named like the ConfigMap's
interface; a peer namespace sends known ARP frames, and the JSON on the container's stdout must count them
exactly. Run only by name (tests/artifacts is not collected by `make test`)."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import time
import tomllib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import frames as F
from tests.support.deployed import manifests
from tests.support.fixtures_netns import REPO, VethPair, attached_programs, ns_exec, unique, veth_namespaces
from tests.support.fixtures_schema import parse_events

pytestmark = pytest.mark.slow

TAG = os.environ.get("ARP_SENSOR_TEST_IMAGE", "localhost/arp-sensor:image-test")
NODE_NAME, NODE_IP, PEER_IP = "node-image-test", "198.18.0.2", "198.18.0.1"


@pytest.fixture(scope="module")
def image() -> str:
    if not shutil.which("podman"):
        pytest.fail("podman missing: run scripts/install-vm.sh (make image-test does)", pytrace=False)
    r = subprocess.run([str(REPO / "scripts/build-image.sh"), TAG], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    print(r.stdout.strip())
    return TAG


@pytest.fixture
def node() -> Iterator[VethPair]:
    """Namespace `b` is the node (its NIC named after the ConfigMap's first interface, NODE_IP), `a` its
    peer (PEER_IP)."""
    cfg = tomllib.loads(kind("ConfigMap")["data"]["config.toml"])
    with veth_namespaces(VethPair(unique("asp"), unique("asn"), a_if="peer0", b_if=cfg["interface"][0])) as pair:
        yield pair


def kind(name: str) -> dict:
    return next(d for d in manifests() if d["kind"] == name)


# -- the pod spec → podman run ---------------------------------------------------------------------------
FIELD_REFS = {"spec.nodeName": NODE_NAME, "status.podIP": NODE_IP}  # hostNetwork: the pod IP is the node's


def expand(s: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command/args: known variables only, $$ escapes."""
    return re.sub(r"\$\$|\$\((\w+)\)", lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), s)


def pod_env(c: dict) -> dict[str, str]:
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
        else:
            ref = e["valueFrom"]["fieldRef"]["fieldPath"]
            assert ref in FIELD_REFS, f"the test does not know fieldRef {ref}"
            env[e["name"]] = FIELD_REFS[ref]
    return env


def volume_args(spec: dict, c: dict, tmp: Path) -> list[str]:
    """hostPath: the host's path when it exists (Directory must); a missing DirectoryOrCreate path becomes a
    fresh directory of this test's node instead of one created on the machine. configMap: its data as files."""
    vols = {v["name"]: v for v in spec["volumes"]}
    out = []
    for m in c["volumeMounts"]:
        v = vols[m["name"]]
        if "hostPath" in v:
            src = Path(v["hostPath"]["path"])
            if not src.exists():
                assert v["hostPath"].get("type") == "DirectoryOrCreate", f"hostPath {src} missing on this host"
                src = tmp / "node" / str(src).lstrip("/")
                src.mkdir(parents=True)
        elif "configMap" in v:
            cm = kind("ConfigMap")
            assert cm["metadata"]["name"] == v["configMap"]["name"]
            src = tmp / "configmap" / m["name"]
            src.mkdir(parents=True)
            for fname, text in cm["data"].items():
                (src / fname).write_text(text)
        else:
            raise AssertionError(f"volume type of {m['name']} not known to the test")
        out += ["--volume", f"{src}:{m['mountPath']}" + (":ro" if m.get("readOnly") else "")]
    return out


def security_args(spec: dict, c: dict) -> list[str]:
    sc = c.get("securityContext", {})
    args = []
    if sc.get("privileged"):
        args.append("--privileged")
    caps = sc.get("capabilities", {})
    args += [f"--cap-drop={x}" for x in caps.get("drop", [])] + [f"--cap-add={x}" for x in caps.get("add", [])]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if "runAsUser" in sc:
        args += ["--user", str(sc["runAsUser"])]
    if sc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    # Kubernetes runs containers seccomp-unconfined unless a seccompProfile asks for RuntimeDefault.
    profile = sc.get("seccompProfile") or spec.get("securityContext", {}).get("seccompProfile") or {}
    if profile.get("type") != "RuntimeDefault":
        args += ["--security-opt", "seccomp=unconfined"]
    return args


def limit_args(c: dict) -> list[str]:
    lim = c.get("resources", {}).get("limits", {})
    args = []
    if "memory" in lim:
        m = re.fullmatch(r"(\d+)(Mi|Gi)", lim["memory"])
        assert m, lim["memory"]
        args.append(f"--memory={int(m.group(1)) * (1024 if m.group(2) == 'Gi' else 1)}m")
    if "cpu" in lim:
        cpu = lim["cpu"]
        args.append(f"--cpus={int(cpu[:-1]) / 1000 if cpu.endswith('m') else float(cpu)}")
    return args


def rlimit_args() -> list[str]:
    """Kubernetes sets no rlimits (the container inherits the runtime's), but podman sets its own defaults
    (nofile 1048576), which a host without CAP_SYS_RESOURCE cannot grant, and `--ulimit host` asks for the
    same. So: this process's open-files limit, and processes capped at pid_max, as conmon holds them."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    nproc = [min(x, pid_max) if x != resource.RLIM_INFINITY else pid_max
             for x in resource.getrlimit(resource.RLIMIT_NPROC)]
    return ["--ulimit", f"nofile={nofile[0]}:{nofile[1]}", "--ulimit", f"nproc={nproc[0]}:{nproc[1]}"]


def runtime_args() -> list[str]:
    """crun refuses cgroup v1/hybrid hosts; runc runs there (the same choice as scripts/build-image.sh)."""
    v = subprocess.run(["podman", "info", "--format", "{{.Host.CgroupsVersion}}"], capture_output=True, text=True)
    return [] if v.stdout.strip() == "v2" else ["--runtime", "runc"]


def podman_run(image: str, ns: str, name: str, tmp: Path) -> tuple[list[str], dict]:
    ds = kind("DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["image"].split(":")[0] == image.split("/")[-1].split(":")[0]  # the image the manifest names
    assert spec["hostNetwork"] is True  # so the pod shares the node's namespace
    env = pod_env(c)
    cmd = ["podman", *runtime_args(), "run", "--rm", "--name", name, "--pull=never", "--network", f"ns:/run/netns/{ns}",
           *[f"--env={k}={v}" for k, v in env.items()], *volume_args(spec, c, tmp), *security_args(spec, c),
           *limit_args(c), *rlimit_args(), "--entrypoint", expand(c["command"][0], env), image,
           *[expand(a, env) for a in c["command"][1:] + c["args"]]]
    return cmd, {"container": c, "spec": spec, "env": env}


def probe_ready(name: str, c: dict, proc: subprocess.Popen, timeout: float = 180) -> None:
    """The manifest's readinessProbe, run in the container as the kubelet runs it, until it succeeds."""
    probe = c["readinessProbe"]["exec"]["command"]
    deadline = time.monotonic() + timeout
    while subprocess.run(["podman", "exec", name, *probe], capture_output=True).returncode != 0:
        assert proc.poll() is None, f"container exited {proc.returncode}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "readiness probe never passed"
        time.sleep(0.5)


def test_image_runs_as_the_daemonset_and_counts_exactly(image, node, tmp_path):
    name = unique("arp-sensor-image-test-")
    cmd, pod = podman_run(image, node.b, name, tmp_path)
    caps = pod["container"]["securityContext"]["capabilities"]
    assert "ALL" in caps["drop"] and "SYS_ADMIN" not in caps["add"]  # the DaemonSet's set, not privileged
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        probe_ready(name, pod["container"], proc)
        att = attached_programs(node.b, node.b_if)
        assert att["xdp"] and att["egress"], att  # attached to the node's NIC from inside the container
        sent = {"198.18.0.7": 9, "198.18.0.8": 4, "198.18.0.9": 1}
        node.send_frames([F.arp_request(PEER_IP, ip) for ip, n in sent.items() for _ in range(n)]
                         + [F.arp_reply("198.18.0.7", PEER_IP), F.arp_probe("198.18.0.11"), F.ipv4_udp()] * 2)
        # The metrics endpoint listens on $(POD_IP) inside the node's namespace.
        port = pod["container"]["ports"][0]["containerPort"]
        r = ns_exec(node.b, "python3", "-c", f"import urllib.request as u; print(u.urlopen('http://{NODE_IP}:{port}/metrics',"
                    " timeout=10).read().decode())")
        assert "arp_sensor" in r.stdout
        # kubelet's stop: SIGTERM, then the grace period.
        grace = pod["spec"]["terminationGracePeriodSeconds"]
        subprocess.run(["podman", "stop", "-t", str(grace), name], check=True, capture_output=True, timeout=grace + 30)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            subprocess.run(["podman", "rm", "-f", name], capture_output=True)
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    events = parse_events(out)  # every stdout line a JSON event valid against the schema
    got: dict[str, int] = defaultdict(int)
    for e in events:
        if e["event"]["dataset"] == "arp_sensor.target" and e["network"]["direction"] == "ingress":
            got[e["destination"]["ip"]] += e["arp"]["requests"]
            assert e["observer"]["hostname"] == NODE_NAME  # --hostname $(NODE_NAME), expanded
    assert {ip: n for ip, n in got.items() if n} == sent
    assert attached_programs(node.b, node.b_if) == {"xdp": [], "ingress": [], "egress": []}
    assert subprocess.run(["podman", "container", "exists", name]).returncode == 1  # --rm: gone
