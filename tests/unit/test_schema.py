"""The published schema: every builder's output validates; what is ours is tight; docs cover every field."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest

from sensor.events.decode import counts_of
from sensor.events.encode import (
    base_event,
    health_event,
    peer_event,
    ratelimit_event,
    target_event,
    warning_event,
)
from sensor.model import TargetWindow, WindowKey
from sensor.outputs import validate
from sensor.pipeline.detect import VERDICTS, Evidence
from tests.support.fixtures_schema import parse_events, validate_event

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def _target(direction="ingress", vlan=0, peer=None):
    w = TargetWindow(WindowKey(3, direction, vlan, "198.18.0.7"), "eth1", 2.0, requests=40, replies=1,
                     gratuitous=0, probes=2, senders=3, top_senders=[("198.18.0.1", 30), ("198.18.0.2", 10)])
    return target_event(w, 1.8e9, "node-a", peer)


def _target6(direction="egress"):
    w = TargetWindow(WindowKey(3, direction, 0, "2001:db8::7"), "eth1", 2.0, requests=6, replies=1, gratuitous=2,
                     probes=1, senders=1, top_senders=[("2001:db8::1", 6)])
    return target_event(w, 1.8e9, "node-a", {"name": "Mesh_2001_db8__7", "state": "Active"})


def _health():
    # the shape sensor/pipeline/runner.py's health_fields() produces, plus the outputs block
    return health_event({"interval_s": 1.0, "poll_duration_ms": 0.42, "interfaces": 2, "frames": 1000, "arp": 40,
                         "request": 30, "reply": 5, "gratuitous": 3, "probe": 1, "other_op": 1, "malformed": 2,
                         "targets_live": 12, "targets_max": 8192, "targets_evicted": 0,
                         "output_queued": 0, "output_sent": 10, "output_dropped": 0, "output_errors": 0,
                         "outputs": [{"name": "-", "type": "stdout", "queued": 0, "sent": 10, "dropped": 0,
                                      "errors": 0, "connected": True}]}, 1.8e9, "node-a")


def _peer(action="zombie-peer-detected"):
    return peer_event(action, "198.18.0.7", "peer Mesh_198_18_0_7 (198.18.0.7): zombie", 1.8e9,
                      peer={"name": "Mesh_198_18_0_7", "state": "Active", "last_error": "Socket: Connection refused"},
                      evidence=Evidence(40, 0, 0, 3, {"198.18.0.1": 30}).fields(10.0), node_name="node-b",
                      verdict="zombie-peer", reason=None, hostname="node-a")


def _ratelimit(action="ratelimit-applied"):
    ev = base_event("arp_sensor.ratelimit", "event", 1.8e9, "node-a")
    ev["event"]["action"] = action
    ev["destination"] = {"ip": "198.18.0.7"}
    ev["arp"] = {"dropped": 12, "limit_pps": 5}
    return ev


GOOD = {
    "target ingress": lambda: _target(),
    "target egress vlan": lambda: _target("egress", 100),
    "target with peer": lambda: _target(peer={"name": "Mesh_198_18_0_7", "state": "Established"}),
    "health metric": _health,
    "health warning": lambda: warning_event("interface-gone", "interface eth1 is gone", 1.8e9, "node-a"),
    "health warning with path": lambda: warning_event("peer-source-unavailable", "BIRD socket gone", 1.8e9,
                                                      "node-a", path="/var/run/calico/bird.ctl"),
    "peer alert": _peer,
    "peer alert without bgp": lambda: peer_event("unanswered-target-detected", "198.18.0.9", "nobody answers",
                                                 1.8e9, evidence=Evidence().fields(10.0), hostname="h"),
    **{f"peer {v}-{c}": (lambda v=v, c=c: _peer(f"{v}-{c}")) for v in VERDICTS[1:] for c in ("detected", "cleared")},
    **{f"ratelimit {a}": (lambda a=a: _ratelimit(a)) for a in
       ("ratelimit-applied", "ratelimit-removed", "ratelimit-dropping")},
    "target ipv6": _target6,
    "peer alert ipv6": lambda: peer_event("zombie-peer-detected", "2001:db8::7", "zombie", 1.8e9,
                                          peer={"name": "Mesh_2001_db8__7", "state": "Active"},
                                          evidence=Evidence(40, 0, 0, 3, {"2001:db8::1": 30}).fields(10.0),
                                          verdict="zombie-peer", hostname="node-a"),
    "ratelimit ipv6": lambda: ratelimit_event("ratelimit-dropping", "2001:db8::7", 1.8e9, mode="enforce",
                                              source="zombie-peer", limit_pps=0.02, limit_burst=1, dropped=3,
                                              interval_s=1.0, hostname="node-a"),
}


def test_schema_is_valid_draft_2020_12():
    schema = validate.load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", list(GOOD))
def test_builders_validate(name):
    validate_event(GOOD[name]())


def _set(ev, path, value):
    *parents, last = path.split(".")
    node = ev
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DEL:
        del node[last]
    else:
        node[last] = value


_DEL = object()

BAD = [
    ("target ingress", "arp.extra", 1, "Additional properties"),
    ("target ingress", "arp.requests", -1, "minimum"),
    ("target ingress", "arp.requests", True, "integer"),
    ("target ingress", "arp.requests_per_sec", _DEL, "required"),
    ("target ingress", "destination.ip", "198.18.0.300", "ipv4"),
    ("target ingress", "observer.ingress", _DEL, "'ingress' is a required"),
    ("target ingress", "network.vlan", {"id": 100}, "string"),
    ("target ingress", "typo_top_level", {}, "Additional properties"),
    ("target ingress", "event.kind", "alert", "'metric' was expected"),
    ("target ingress", "@timestamp", "2027-01-15T08:00:00Z", "does not match"),
    ("target ingress", "arp_sensor.schema_version", "2", "'1' was expected"),
    ("target ingress", "arp_sensor.extra", 1, "Additional properties"),
    ("health metric", "arp_sensor.health.frames", "1000", "number"),
    ("health metric", "arp_sensor.health.CamelCase", 1, "does not match any of the regexes"),
    ("health metric", "arp_sensor.health.outputs", [{"name": "-"}], "required"),
    ("health warning", "log.level", "loud", "is not one of"),
    ("health warning", "message", _DEL, "'message' is a required"),
    ("health warning", "event.action", "Interface Gone", "does not match"),
    ("health warning", "event.kind", "alert", "False schema"),
    ("peer alert", "event.action", "zombie-peer-maybe", "is not one of"),
    ("peer alert", "arp_sensor.verdict", "zombie", "is not one of"),
    ("peer alert", "arp.window_s", 0, "less than or equal to the minimum"),
    ("peer alert", "bgp.peer", {}, "non-empty"),
    ("peer alert", "bgp.peer.state", {"nested": 1}, "string"),
    ("ratelimit ratelimit-applied", "arp.dropped", _DEL, "required"),
    ("ratelimit ratelimit-applied", "event.action", "ratelimit-maybe", "is not one of"),
    ("target ingress", "event.dataset", "arp_sensor.other", "is not one of"),
    ("target ipv6", "arp", {"requests": 1}, "'ipv4' was expected"),  # one family section, never both
    ("target ipv6", "network.type", "ipv4", "'ipv6' was expected"),
    ("target ipv6", "nd.top_senders", [{"ip": "2001:db8::1", "requests": 3}], "'solicitations' is a required"),
    ("target ingress", "network.type", "ipv6", "'ipv4' was expected"),
    ("peer alert ipv6", "nd.requests", 1, "'requests' was unexpected"),
    ("ratelimit ipv6", "nd", _DEL, "'ipv4' was expected"),
]


@pytest.mark.parametrize(("name", "path", "value", "why"), BAD, ids=[f"{b[0]}:{b[1]}" for b in BAD])
def test_schema_rejects(name, path, value, why):
    ev = copy.deepcopy(GOOD[name]())
    _set(ev, path, value)
    problem = validate.problem(ev)
    assert problem is not None, f"{path}={value!r} was accepted"
    assert why in problem, problem
    assert "\n" not in problem


def _leaf_paths(schema, node, prefix=""):
    """Every field path the schema names (through $ref/allOf/if-then), for the docs check."""
    out = set()
    if not isinstance(node, dict):
        return out
    if "$ref" in node:
        out |= _leaf_paths(schema, schema["$defs"][node["$ref"].split("/")[-1]], prefix)
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(key, []):
            out |= _leaf_paths(schema, sub, prefix)
    for key in ("then", "else"):
        if key in node:
            out |= _leaf_paths(schema, node[key], prefix)
    for k, v in node.get("properties", {}).items():
        path = f"{prefix}{k}"
        out.add(path)
        out |= _leaf_paths(schema, v, path + ".")
        if isinstance(v, dict) and v.get("type") == "array":
            out |= _leaf_paths(schema, v.get("items", {}), path + "[].")
    return out


def test_docs_name_every_field():
    schema = validate.load_schema()
    paths = _leaf_paths(schema, schema)
    assert {"destination.ip", "arp.top_senders[].ip", "arp_sensor.health.outputs[].dropped"} <= paths
    text = DOCS.read_text()
    documented = set(re.findall(r"`([@A-Za-z_][A-Za-z0-9_.\[\]@]*)`", text))
    missing = sorted(p for p in paths if p not in documented)
    assert not missing, f"docs/events.md does not name: {missing}"


def test_docs_examples_validate():
    blocks = re.findall(r"```json\n(.*?)\n```", DOCS.read_text(), re.S)
    events = parse_events("\n".join(blocks))
    assert {(e["event"]["dataset"], e["event"]["kind"]) for e in events} == {
        ("arp_sensor.target", "metric"), ("arp_sensor.peer", "alert"), ("arp_sensor.ratelimit", "event"),
        ("arp_sensor.health", "metric"), ("arp_sensor.health", "event"), ("arp_sensor.binding", "event"),
        ("arp_sensor.binding", "alert")}


def test_ipv6_events_carry_the_same_numbers_under_nd_names():
    """One mapping (sensor.events.encode.ND_NAMES) both ways: an IPv6 target's `nd` section holds the
    numbers an IPv4 target's `arp` section would, and counts_of() reads either back."""
    v6 = _target6()
    assert v6["network"]["type"] == "ipv6" and "arp" not in v6
    assert v6["nd"]["solicitations"] == 6 and v6["nd"]["advertisements"] == 1
    assert v6["nd"]["unsolicited_advertisements"] == 2 and v6["nd"]["dad"] == 1
    assert v6["nd"]["top_senders"] == [{"ip": "2001:db8::1", "solicitations": 6}]
    back = counts_of(v6)
    assert (back["requests"], back["replies"], back["gratuitous"], back["probes"]) == (6, 1, 2, 1)
    assert back["top_senders"] == [{"ip": "2001:db8::1", "requests": 6}]
    v4 = _target()
    assert v4["network"]["type"] == "ipv4" and counts_of(v4) == v4["arp"]
