"""PeerBook polling a real BIRD 2 (own netns) while it is stopped, killed, frozen and restarted."""

from __future__ import annotations

import signal
import time

import pytest

from sensor.lab import birdconf
from sensor.peers import PeerBook
from sensor.peers.bird import BirdClient


@pytest.fixture(scope="module")
def bird():
    from tests.support.birdproc import BirdNetns

    with BirdNetns(n_peers=4) as b:
        yield b


def actions(events):
    return [e["event"]["action"] for e in events]


def test_live_bird_reply_parses_like_the_fixtures(bird):
    protos = BirdClient(bird.socket).show_protocols()
    bgp = {p.neighbor_ip: p for p in protos if p.is_bgp}
    assert sorted(bgp) == sorted(bird.peers)
    assert {birdconf.is_passive(bird.router_ip, ip) for ip in bird.peers} == {True, False}  # both kinds
    for ip in bird.peers:
        p = bgp[ip]
        assert p.name == birdconf.protocol_name(ip) and p.state == "start"
        if birdconf.is_passive(bird.router_ip, ip):
            assert p.bgp_state == "Passive"
        assert p.bgp_state in ("Idle", "Connect", "Active", "Passive")
        assert p.details["Neighbor AS"] == "64512"


def test_peerbook_survives_bird_stop_kill_freeze_restart(bird):
    book = PeerBook([bird.socket], timeout=0.2, retry_s=0.0)
    t = 0.0

    def step():
        nonlocal t
        t += 1
        started = time.monotonic()
        ev = book.refresh(t)
        assert time.monotonic() - started < 1.5  # bounded by the 0.2 s timeout (loose: CPU contention)
        return ev

    assert step() == [] and len(book.peers()) == 4
    assert all(p.bgp_state is not None for p in book.peers())

    for how in ("stop", "kill", "freeze"):
        if how == "stop":
            bird.stop()
        elif how == "kill":
            bird.stop(signal.SIGKILL)  # stale socket file: connection refused
        else:
            bird.proc.send_signal(signal.SIGSTOP)  # accepts in the backlog, never answers
        ev = step()
        assert actions(ev) == ["peer-source-unavailable"], how
        assert step() == []  # one warning per transition
        assert len(book.peers()) == 4 and all(p.bgp_state is None for p in book.peers())
        if how == "freeze":
            bird.proc.send_signal(signal.SIGCONT)
        else:
            bird.start()
        ev = step()
        assert actions(ev) == ["peer-source-recovered"], how
        assert {p.ip for p in book.peers()} == set(bird.peers)
        assert all(p.bgp_state in ("Idle", "Connect", "Active", "Passive") for p in book.peers())
    book.close()


def test_ipv6_peers_from_one_dual_stack_bird_and_a_separate_bird6():
    """Calico's two layouts: IPv6 sessions beside IPv4 ones in one BIRD 2 (bird.ctl), and a separate IPv6
    BIRD (bird6.ctl). Every IPv6 peer is in the book under its RFC 5952 address, named as Calico names it,
    so IPv6 targets (destination.ip in the same form) find their peer."""
    from tests.support.birdproc import BirdNetns

    with BirdNetns(n_peers=2, n_peers6=2) as dual, \
            BirdNetns(n_peers=0, n_peers6=3, router6="2001:db8:6::1/64", socket_name="bird6.ctl") as bird6:
        v6 = [ip for ip in dual.peers if ":" in ip] + bird6.peers
        assert len(v6) == 5 and bird6.socket.endswith("/bird6.ctl")
        book = PeerBook([dual.socket, bird6.socket], timeout=0.5)
        assert book.refresh(1.0) == []
        assert sorted(p.ip for p in book.peers()) == sorted(dual.peers + bird6.peers)
        for ip in v6:
            peer = book.get(ip)
            assert peer is not None and peer.source == "bird", ip
            assert peer.name == "Mesh_" + ip.replace(":", "_")
            assert peer.bgp_state in ("Idle", "Connect", "Active", "Passive")
            assert peer.socket == (bird6.socket if ip in bird6.peers else dual.socket)
        assert book.get("2001:db8:6::2").ip == "2001:db8:6::2"  # the text targets carry
        assert book.get("2001:db8:6:0:0:0:0:2") is None  # lookups are by RFC 5952 text, as events write it
