"""PeerBook against real unix sockets that misbehave (tests/support/fakebird.py), static and Kubernetes inputs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from sensor.errors import SensorError
from sensor.peers import PeerBook, peer_fields
from sensor.peers.k8s import K8sNodesError, parse_nodes
from sensor.peers.static import parse_peers
from tests.support.fakebird import DATA, FakeBird
from tests.support.fixtures_schema import validate_event


def actions(events):
    return [validate_event(e)["event"]["action"] for e in events]


@pytest.fixture
def sock(tmp_path: Path) -> str:
    return str(tmp_path / "bird.ctl")


@pytest.fixture
def servers():
    made: list[FakeBird] = []

    def start(path: str, **kw) -> FakeBird:
        s = FakeBird(path, **kw)
        made.append(s)
        return s

    yield start
    for s in made:
        s.close()


def test_missing_socket_warns_once_then_recovers(sock, servers):
    book = PeerBook([sock], timeout=0.2)
    ev = book.refresh(1.0)
    assert actions(ev) == ["peer-source-unavailable"]
    w = ev[0]
    assert w["event"]["dataset"] == "arp_sensor.health" and w["event"]["kind"] == "event"
    assert w["log"]["level"] == "warning" and w["file"]["path"] == sock and "no such socket" in w["message"]
    assert book.refresh(2.0) == [] and book.peers() == []
    servers(sock)
    ev = book.refresh(3.0)
    assert actions(ev) == ["peer-source-recovered"]
    p = book.get("198.18.0.7")
    assert (p.name, p.bgp_state, p.last_error, p.socket) == ("Mesh_198_18_0_7", "Connect",
                                                            "Socket: No route to host", sock)
    assert book.get("198.18.0.2").established
    assert book.refresh(4.0) == []


def test_optional_default_socket_is_silent_until_it_exists(sock, servers):
    book = PeerBook([], optional_sockets=[sock], timeout=0.2)
    assert book.refresh(1.0) == [] and book.peers() == []
    srv = servers(sock)
    assert book.refresh(2.0) == [] and len(book.peers()) == 3
    srv.close()
    ev = book.refresh(3.0)  # once seen, losing it is worth a warning
    assert actions(ev) == ["peer-source-unavailable"]


@pytest.mark.parametrize("mode", ["garbage", "close-mid", "hang-mid", "hang"])
def test_sick_socket_makes_peers_unknown_and_recovers(sock, servers, mode):
    srv = servers(sock)
    book = PeerBook([sock], timeout=0.2, retry_s=0.0)
    assert book.refresh(1.0) == []
    assert book.get("198.18.0.2").bgp_state == "Established"
    srv.close()
    srv = servers(sock, mode=mode)
    t = time.monotonic()
    ev = book.refresh(2.0)
    took = time.monotonic() - t
    assert actions(ev) == ["peer-source-unavailable"], ev
    assert took < 1.5  # bounded by the 0.2 s deadline (loose: CPU contention), never a hang
    # peers keep their names but their state is unknown
    p = book.get("198.18.0.2")
    assert (p.name, p.bgp_state, p.proto_state, p.last_error) == ("Mesh_198_18_0_2", None, None, None)
    # this node's address (198.18.0.1, BIRD's source address) is remembered: still the passive side
    assert peer_fields(p) == {"name": "Mesh_198_18_0_2", "state": "unknown", "active": False}
    assert book.refresh(3.0) == []  # no second warning while it stays sick
    srv.mode = "ok"
    srv.close()
    servers(sock)
    assert actions(book.refresh(4.0)) == ["peer-source-recovered"]
    assert book.get("198.18.0.2").bgp_state == "Established"


def test_hanging_socket_is_not_retried_every_interval(sock, servers):
    srv = servers(sock, mode="hang")
    book = PeerBook([sock], timeout=0.15, retry_s=0.6)
    assert actions(book.refresh(100.0)) == ["peer-source-unavailable"]
    assert srv.connections == 1
    assert book.refresh(101.0) == []
    assert srv.connections == 1  # backed off for retry_s: not even a connect
    time.sleep(0.65)
    book.refresh(102.0)
    assert srv.connections == 2


def test_refresh_budget_bounds_several_hanging_sockets(tmp_path, servers):
    paths = [str(tmp_path / f"b{i}.ctl") for i in range(4)]
    srvs = [servers(p, mode="hang") for p in paths]
    book = PeerBook(paths, timeout=0.2, budget=0.3)
    book.refresh(1.0)
    time.sleep(0.1)  # let the servers' accept threads count
    # 0.2 s for the first, the remaining 0.1 s (at most) for the second; the others wait for the next refresh
    assert srvs[0].connections == 1 and srvs[2].connections == srvs[3].connections == 0


def test_restart_between_polls_reconnects_without_warning(sock, servers):
    srv = servers(sock)
    book = PeerBook([sock], timeout=0.3)
    book.refresh(1.0)
    srv.close()
    srv2 = servers(sock)  # BIRD came back before the next poll: the dead kept connection is retried once
    assert book.refresh(2.0) == []
    assert srv2.connections == 1 and book.get("198.18.0.7").bgp_state == "Connect"


def test_connection_is_reused_across_polls(sock, servers):
    srv = servers(sock)
    book = PeerBook([sock])
    for t in range(5):
        book.refresh(float(t))
    assert srv.connections == 1


def test_big_reply_over_socket(sock, servers):
    servers(sock, reply=(DATA / "show_protocols_all_250_peers.reply").read_bytes())
    book = PeerBook([sock], timeout=0.5)
    assert book.refresh(1.0) == []
    assert len(book.peers()) == 250
    assert book.get("198.18.4.2").bgp_state == "Active"


def test_8003_and_9001_replies(sock, servers):
    srv = servers(sock, reply=(DATA / "no_protocols_match_8003.reply").read_bytes())
    book = PeerBook([sock], timeout=0.3)
    assert book.refresh(1.0) == [] and book.peers() == []
    srv.reply = (DATA / "syntax_error_9001.reply").read_bytes()
    ev = book.refresh(2.0)
    assert actions(ev) == ["peer-source-unavailable"] and "9001" in ev[0]["message"]


# -- static peers file ------------------------------------------------------------------------------------
def test_static_file_format_and_bad_lines():
    text = "# peers\n198.18.0.7 Mesh_198_18_0_7 worker-7\n\n198.18.0.8 rack-sw # trailing comment\n" \
           "not-an-ip x\n198.18.0.9\n1.2.3.4 a b c\n2001:db8::1 v6peer\n198.18.0.10 - worker-10\n"
    peers, problems = parse_peers(text, "p.txt")
    assert [(p.ip, p.name, p.node_name) for p in peers] == [
        ("198.18.0.7", "Mesh_198_18_0_7", "worker-7"), ("198.18.0.8", "rack-sw", None),
        ("198.18.0.9", None, None), ("2001:db8::1", "v6peer", None), ("198.18.0.10", None, "worker-10")]
    assert problems == ["p.txt:5: 'not-an-ip' is not an IP address",
                        "p.txt:7: expected 'IP [NAME] [NODE]', got 4 fields"]


def test_peerbook_static_file_warnings_and_reload(tmp_path):
    f = tmp_path / "peers.txt"
    f.write_text("198.18.0.7 Mesh_198_18_0_7 worker-7\nbogus\n")
    book = PeerBook(peers_file=str(f))
    ev = book.refresh(1.0)
    assert actions(ev) == ["peer-file-invalid-line"]
    assert ev[0]["message"].endswith(":2: 'bogus' is not an IP address")
    p = book.get("198.18.0.7")
    assert (p.name, p.node_name, p.source, p.bgp_state) == ("Mesh_198_18_0_7", "worker-7", "static", None)
    assert book.refresh(2.0) == []
    f.write_text("198.18.0.8 other\n")
    os.utime(f, (time.time() + 5, time.time() + 5))
    assert book.refresh(3.0) == []
    assert book.get("198.18.0.7") is None and book.get("198.18.0.8").name == "other"
    f.unlink()
    assert actions(book.refresh(4.0)) == ["peer-source-unavailable"]
    assert book.get("198.18.0.8") is not None  # last content kept


def test_missing_files_at_start_are_one_line_errors(tmp_path):
    with pytest.raises(SensorError, match="cannot read peers file"):
        PeerBook(peers_file=str(tmp_path / "nope"))
    bad = tmp_path / "nodes.json"
    bad.write_text("{not json")
    with pytest.raises(SensorError, match="not JSON") as e:
        PeerBook(k8s_nodes=str(bad))
    assert e.value.exit_code == 2


# -- Kubernetes nodes -------------------------------------------------------------------------------------
def node(name, internal=None, calico=None, ready="True"):
    n = {"metadata": {"name": name, "annotations": {}}, "status": {"addresses": [], "conditions": []}}
    if calico:
        n["metadata"]["annotations"]["projectcalico.org/IPv4Address"] = calico
    if internal:
        n["status"]["addresses"] += [{"type": "InternalIP", "address": internal},
                                     {"type": "Hostname", "address": name}]
    if ready is not None:
        n["status"]["conditions"].append({"type": "Ready", "status": ready})
    return n


def test_k8s_nodes_parsing_with_bad_entries():
    doc = {"apiVersion": "v1", "kind": "List", "items": [
        node("worker-7", "198.18.0.7", "198.18.0.7/24", "Unknown"),
        node("worker-8", "198.18.0.8", "198.18.1.8/24", "False"),
        node("no-ip"),
        node("bad-ann", "198.18.0.10", "garbage/99"),
        {"metadata": {}},
        "not an object",
        {"metadata": {"name": "bare"}},
    ]}
    nodes, problems = parse_nodes(json.dumps(doc), "nodes.json")
    got = {n.name: (n.ips, n.ready) for n in nodes}
    assert got == {"worker-7": (["198.18.0.7"], None), "worker-8": (["198.18.1.8", "198.18.0.8"], False),
                   "no-ip": ([], True), "bad-ann": (["198.18.0.10"], True), "bare": ([], None)}
    assert len(problems) == 5, problems
    assert any("items[4]" in p for p in problems) and any("garbage/99" in p for p in problems)


def test_k8s_single_node_and_not_nodes():
    nodes, _ = parse_nodes(json.dumps({"kind": "Node", **node("n1", "198.18.0.1")}))
    assert nodes[0].name == "n1"
    with pytest.raises(K8sNodesError):
        parse_nodes("[1, 2]")


def test_merge_bird_static_k8s(sock, servers, tmp_path, monkeypatch):
    servers(sock)
    pf = tmp_path / "peers.txt"
    pf.write_text("198.18.0.7 ignored-name static-node\n198.18.0.50 tor-switch\n")
    nodes = {"items": [node("worker-7", "198.18.0.7", ready="False"), node("worker-2", None, "198.18.0.2/24"),
                       node("worker-60", "198.18.0.60")]}
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(nodes)))
    book = PeerBook([sock], peers_file=str(pf), k8s_nodes="-")
    assert book.refresh(1.0) == []
    p7 = book.get("198.18.0.7")  # BIRD's name, static node name wins over Kubernetes, no Ready for it
    assert (p7.name, p7.source, p7.node_name, p7.node_ready) == ("Mesh_198_18_0_7", "bird", "static-node",
                                                                 None)
    p2 = book.get("198.18.0.2")
    assert (p2.name, p2.node_name, p2.node_ready, p2.bgp_state) == ("Mesh_198_18_0_2", "worker-2", True,
                                                                    "Established")
    assert (book.get("198.18.0.50").source, book.get("198.18.0.50").name) == ("static", "tor-switch")
    p60 = book.get("198.18.0.60")
    assert (p60.source, p60.name, p60.node_name, p60.is_bgp) == ("k8s", None, "worker-60", False)


def _mesh_reply(node_ip: str, peers: dict[str, str]) -> bytes:
    """`show protocols all` of node `node_ip`: peer IP -> "Established" or "Connect"."""
    lines = ["2002-Name       Proto      Table      State  Since         Info"]
    for ip, state in peers.items():
        name = "Mesh_" + ip.replace(".", "_")
        lines += [f"1002-{name} BGP        ---        {'up' if state == 'Established' else 'start'}  "
                  f"22:59:37.616  {state}",
                  f"1006-  BGP state:          {state}",
                  f"     Neighbor address: {ip}"]
        if state == "Established":
            lines.append(f"     Source address:   {node_ip}")
        lines.append(" ")
    return ("\n".join(lines) + "\n0000 \n").encode()


def test_active_side_follows_calicos_string_rule(tmp_path: Path) -> None:
    """Node 198.18.0.10 connects only to peers whose address string sorts before its own: .1, not .9
    ("198.18.0.9" > "198.18.0.10" as text), .11, nor .100 ("198.18.0.10" is a prefix of it)."""
    sock = str(tmp_path / "bird.ctl")
    srv = FakeBird(sock, reply=_mesh_reply("198.18.0.10", {"198.18.0.1": "Established", "198.18.0.9": "Connect",
                                                            "198.18.0.11": "Connect", "198.18.0.100": "Connect"}))
    try:
        book = PeerBook([sock])
        book.refresh(1.0)
        assert book.node_ip == "198.18.0.10"  # learnt from BIRD's source address
        got = {ip: book.get(ip).active for ip in ("198.18.0.1", "198.18.0.9", "198.18.0.11", "198.18.0.100")}
        assert got == {"198.18.0.1": True, "198.18.0.9": False, "198.18.0.11": False, "198.18.0.100": False}
        assert peer_fields(book.get("198.18.0.9"))["active"] is False
        # an explicit address wins over what BIRD says
        book2 = PeerBook([sock], local_ip="198.18.0.95")
        book2.refresh(1.0)
        assert book2.get("198.18.0.9").active is True and book2.get("198.18.0.100").active is True
        assert book2.get("198.18.0.1").active is True
    finally:
        srv.close()


def test_active_side_unknown_without_an_own_address(tmp_path: Path) -> None:
    sock = str(tmp_path / "bird.ctl")
    srv = FakeBird(sock, reply=_mesh_reply("198.18.0.10", {"198.18.0.9": "Connect"}))
    try:
        book = PeerBook([sock])
        book.refresh(1.0)
        assert book.node_ip is None and book.get("198.18.0.9").active is None
        assert "active" not in peer_fields(book.get("198.18.0.9"))
        # the Kubernetes node that carries this host's name gives the address
        nodes = tmp_path / "nodes.json"
        nodes.write_text(json.dumps({"items": [{"metadata": {"name": "n10"}, "status": {
            "addresses": [{"type": "InternalIP", "address": "198.18.0.10"}],
            "conditions": [{"type": "Ready", "status": "True"}]}}]}))
        book = PeerBook([sock], k8s_nodes=str(nodes), hostname="n10")
        book.refresh(1.0)
        assert book.node_ip == "198.18.0.10" and book.get("198.18.0.9").active is False
    finally:
        srv.close()
