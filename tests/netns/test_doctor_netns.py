"""`arp-sensor doctor` on this host, with the kernel headers hidden, as an unprivileged user, with BIRD."""

from __future__ import annotations

import json
import subprocess

from tests.support.fixtures_netns import REPO, sensor_cmd, sensor_env, unique


def test_doctor_passes_on_this_host():
    before = doctor_namespaces()
    r = doctor("--json")
    assert r.returncode == 0, r.stdout + r.stderr
    c = checks(r)
    for name in NEEDED:
        assert c[name]["status"] == "ok", c[name]
    assert "native" in c["bpf-xdp"]["detail"] or "generic" in c["bpf-xdp"]["detail"]
    assert c["bpf-batch"]["detail"].endswith("5 of 5 entries")
    assert "detached when its fd closed" in c["bpf-xdp-link"]["detail"]  # how crash recovery works here
    assert doctor_namespaces() == before  # the throwaway namespace is gone
    text = doctor()
    assert text.returncode == 0 and "all needed checks passed" in text.stdout
    assert "  ok    bpf-xdp" in text.stdout


def test_doctor_with_kernel_headers_hidden(tmp_path):
    """bcc and kernel_headers_problem both look at BCC_KERNEL_SOURCE first: an empty dir hides the headers."""
    empty = tmp_path / "no-headers"
    empty.mkdir()
    r = doctor(env={"BCC_KERNEL_SOURCE": str(empty)})
    assert r.returncode == 3, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    i = next(i for i, line in enumerate(lines) if "kernel-headers" in line)
    assert lines[i].split()[0] == "fail" and f"kernel headers not found at BCC_KERNEL_SOURCE={empty}" in lines[i]
    assert lines[i + 1].split() == ["fix:", "unset", "BCC_KERNEL_SOURCE,", "or", "point", "it", "at", "a",
                                    "directory", "with", "the", "kernel's", "include/"]
    assert "1 failed" in lines[-1] and "cannot run here" in lines[-1]
    c = checks(doctor("--json", env={"BCC_KERNEL_SOURCE": str(empty)}))
    assert all(c[p]["status"] == "skip" for p in PROBES)
    assert [n for n, v in c.items() if v["status"] == "fail"] == ["kernel-headers"]
    assert r.stderr == ""


def test_doctor_unprivileged_user():
    ns = unique("asdoc")  # its own namespace: nobody's doctor must not see or touch anything else
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        prefix = ("ip", "netns", "exec", ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
        r = doctor("--json", prefix=prefix)
        assert r.returncode == 3, r.stdout + r.stderr
        c = checks(r)
        assert c["privileges"]["status"] == "fail"
        assert "CAP_BPF" in c["privileges"]["detail"] and "root" in c["privileges"]["fix"]
        assert all(c[p]["status"] == "skip" for p in PROBES)
        assert "Traceback" not in r.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_doctor_bird_socket(tmp_path):
    from tests.support.birdproc import BirdNetns

    with BirdNetns(n_peers=2) as bird:
        c = checks(doctor("--json", "--bird-socket", bird.socket))
        assert c["bird:bird.ctl"]["status"] == "ok"
        assert "BIRD 2" in c["bird:bird.ctl"]["detail"] and "2 BGP peers" in c["bird:bird.ctl"]["detail"]
    r = doctor("--json", "--bird-socket", str(tmp_path / "gone.ctl"))
    assert r.returncode == 3
    c = checks(r)
    assert c["bird:gone.ctl"]["status"] == "fail" and "no such socket" in c["bird:gone.ctl"]["detail"]


NEEDED = ("kernel", "bpf-syscall", "privileges", "kernel-headers", "bcc", "bpf-load", "bpf-xdp", "bpf-xdp-link",
          "bpf-clsact", "bpf-batch")


PROBES = ("bpf-load", "bpf-xdp", "bpf-xdp-link", "bpf-clsact", "bpf-batch")


def doctor(*args: str, env: dict | None = None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    e = sensor_env()
    e.update(env or {})
    return subprocess.run([*prefix, *sensor_cmd("doctor", *args)], capture_output=True, text=True, env=e,
                          cwd=REPO, timeout=240)


def checks(r: subprocess.CompletedProcess) -> dict[str, dict]:
    return {c["name"]: c for c in map(json.loads, r.stdout.splitlines())}


def doctor_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("asdoc")}




def test_doctor_reports_what_is_attached_and_the_xdp_mode(veth_pair, sensor):
    """`doctor -i IFACE` names the XDP mode of what runs there (veth has a native XDP driver, like virtio-net:
    make vm-test checks the same on a VM's NIC) and says so when nothing is attached."""
    ns = ("ip", "netns", "exec", veth_pair.b)
    c = checks(doctor("--json", "-i", veth_pair.b_if, "-i", "nope0", prefix=ns))
    assert c[f"attached-{veth_pair.b_if}"] == {"name": f"attached-{veth_pair.b_if}", "status": "ok",
                                               "detail": f"{veth_pair.b_if}: nothing attached", "fix": ""}
    assert c["attached-nope0"]["status"] == "warn" and "no such interface" in c["attached-nope0"]["detail"]
    for mode, words in (("native", "driver (native) mode"), ("generic", "generic (skb) mode")):
        s = sensor(veth_pair.b, ["-i", veth_pair.b_if, "--xdp-mode", mode])
        detail = checks(doctor("--json", "-i", veth_pair.b_if, prefix=ns))[f"attached-{veth_pair.b_if}"]["detail"]
        assert f"arp-sensor XDP in {words}" in detail and "tc egress" in detail, detail
        assert s.finish() == 0
