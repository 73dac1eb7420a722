"""The shipped artefacts as a test reads them: the systemd unit, the DaemonSet, their capability sets."""

from __future__ import annotations

import socket

import yaml

from tests.support.fixtures_netns import REPO

UNIT = REPO / "deploy/systemd/arp-sensor.service"
K8S = REPO / "deploy/kubernetes"


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


def setpriv_caps(names: list[str]) -> str:
    """CAP_NET_ADMIN / NET_ADMIN → setpriv's `-all,+net_admin,...`."""
    return ",".join(["-all"] + ["+" + n.lower().removeprefix("cap_") for n in names])


def unit_caps() -> list[str]:
    return parse_unit(UNIT.read_text())["Service"]["CapabilityBoundingSet"][0].split()


def daemonset_caps() -> list[str]:
    ds = next(d for d in manifests() if d["kind"] == "DaemonSet")
    return ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]


def dgram_server(address: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    return s


def manifests() -> list[dict]:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for res in kust["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / res).read_text()) if d]
    return docs


