"""Verdict engine: hysteresis, recovery, peers without ARP traffic, live peers never flagged."""

from __future__ import annotations

import itertools

import pytest

from sensor.model import TargetWindow, WindowKey
from sensor.peers import Peer
from sensor.pipeline.detect import DOWN_REACHABLE, HEALTHY, UNANSWERED, ZOMBIE, VerdictEngine
from tests.support.fixtures_schema import validate_event

W = 10.0  # verdict window, intervals of 1 s
DEAD = "198.18.0.7"


class Book:
    """The PeerBook lookup the engine uses (PeerBook itself is tested in test_peerbook.py)."""

    def __init__(self, *peers: Peer) -> None:
        self.by_ip = {p.ip: p for p in peers}

    def get(self, ip: str) -> Peer | None:
        return self.by_ip.get(ip)

    def peers(self) -> list[Peer]:
        return list(self.by_ip.values())


def win(ip: str, requests: int = 0, replies: int = 0, senders: list[tuple[str, int]] | None = None,
        direction: str = "ingress", ifindex: int = 2, gratuitous: int = 0) -> TargetWindow:
    top = senders if senders is not None else ([("198.18.0.1", requests)] if requests else [])
    return TargetWindow(WindowKey(ifindex, direction, 0, ip), "eth0", 1.0, requests=requests, replies=replies,
                        gratuitous=gratuitous, senders=len(top), top_senders=top)


def mesh_peer(state: str = "Active", ip: str = DEAD, node: str | None = "worker-7") -> Peer:
    return Peer(name=f"Mesh_{ip.replace('.', '_')}", ip=ip, bgp_state=state, proto_state="start",
                last_error="Socket: No route to host" if state != "Established" else None, node_name=node)


def run(engine: VerdictEngine, book: Book, t0: int, seconds: int, make) -> list[tuple[int, dict]]:
    """Feed `seconds` intervals; `make(t)` returns that interval's windows. Returns (t, event) pairs."""
    out = []
    for t in range(t0, t0 + seconds):
        for e in engine.update(make(t), book, float(t)):
            out.append((t, validate_event(e)))
    return out


def acts(evs):
    return [e["event"]["action"] for _, e in evs]


def storm(t: int) -> list[TargetWindow]:
    # three hosts ask, one of them on egress (ourselves), 3 requests per second in all
    return [win(DEAD, 2, senders=[("198.18.0.2", 1), ("198.18.0.3", 1)]),
            win(DEAD, 1, senders=[("198.18.0.1", 1)], direction="egress", ifindex=3)]


def test_zombie_enters_after_two_windows_of_evidence_with_full_event():
    eng, book = VerdictEngine(window_s=W, hostname="sensor-1"), Book(mesh_peer())
    evs = run(eng, book, 0, 30, storm)
    assert acts(evs) == ["zombie-peer-detected"]
    t, e = evs[0]
    # evidence first sufficient at t=0 (3 requests >= min_requests); held for a full window → t=10
    assert t == 10
    assert e["event"]["kind"] == "alert" and e["event"]["dataset"] == "arp_sensor.peer"
    assert e["destination"]["ip"] == DEAD and e["observer"]["hostname"] == "sensor-1"
    assert e["bgp"]["peer"] == {"name": "Mesh_198_18_0_7", "state": "Active",
                                "last_error": "Socket: No route to host"}
    assert e["kubernetes"]["node"]["name"] == "worker-7"
    # the window is (t-10, t]: ten intervals of 3 requests
    assert e["arp"]["requests"] == 30 and e["arp"]["replies"] == 0 and e["arp"]["senders"] == 3
    assert e["arp"]["window_s"] == W and e["arp"]["top_senders"][0] == {"ip": "198.18.0.1", "requests": 10}
    assert e["arp_sensor"]["verdict"] == ZOMBIE
    assert e["message"] == ("peer Mesh_198_18_0_7 (198.18.0.7) on node worker-7 is down (Active, Socket: "
                            "No route to host); 3 hosts asked for it 30 times in 10 s and nobody answered "
                            "— if node worker-7 is gone, `kubectl delete node worker-7`")
    assert eng.verdict(DEAD) == ZOMBIE


def test_sparse_storm_still_detected_and_gaps_do_not_clear():
    # Linux: 3 broadcasts 1 s apart, then BIRD's connect retry: silence for 3 s
    eng, book = VerdictEngine(window_s=W), Book(mesh_peer())
    evs = run(eng, book, 0, 40, lambda t: [win(DEAD, 1)] if t % 6 < 3 else [])
    assert acts(evs) == ["zombie-peer-detected"]
    assert evs[0][0] <= 2 * W + 3


def test_established_peer_is_never_flagged_even_if_unanswered():
    eng, book = VerdictEngine(window_s=W), Book(mesh_peer("Established"))
    assert run(eng, book, 0, 60, storm) == []
    assert eng.verdicts() == {}


def test_down_peer_without_arp_traffic_gets_no_verdict():
    eng, book = VerdictEngine(window_s=W), Book(mesh_peer("Passive"))
    assert run(eng, book, 0, 40, lambda t: []) == []
    # traffic for other IPs does not change that
    assert run(eng, book, 40, 30, lambda t: [win("198.18.0.5", 1, 1)]) == []
    assert eng.verdict(DEAD) == HEALTHY


def test_few_requests_below_threshold_do_not_enter():
    eng, book = VerdictEngine(window_s=W, min_requests=3), Book(mesh_peer())
    assert run(eng, book, 0, 60, lambda t: [win(DEAD, 1)] if t % 5 == 0 else []) == []


def test_one_lost_reply_does_not_flap_a_reachable_down_peer():
    # BGP down (BIRD stopped on the peer), host answers ARP: one interval's reply is lost
    eng, book = VerdictEngine(window_s=W), Book(mesh_peer("Active"))
    evs = run(eng, book, 0, 60, lambda t: [win(DEAD, 3, 0 if t == 25 else 3)])
    assert acts(evs) == ["bgp-down-reachable-detected"]
    t, e = evs[0]
    assert t == 10 and e["arp"]["replies"] > 0 and "not a dead host" in e["message"]
    assert "worker-7" in e["message"]


def test_reachable_detected_from_sparse_unicast_probes():
    # a stopped BIRD behind a live host: one probe and its reply every ~30 s
    eng, book = VerdictEngine(window_s=W), Book(mesh_peer("Active"))
    evs = run(eng, book, 0, 100, lambda t: [win(DEAD, 1, 1)] if t % 30 == 5 else [])
    assert acts(evs) == ["bgp-down-reachable-detected"]
    assert "answered ARP 10 s ago" in evs[0][1]["message"]
    assert eng.verdict(DEAD) == DOWN_REACHABLE


def test_peer_that_asks_others_is_alive():
    eng, book = VerdictEngine(window_s=W), Book(mesh_peer("Active"))
    # requests for DEAD go unanswered, but DEAD itself is seen asking for 198.18.0.1
    evs = run(eng, book, 0, 30, lambda t: [win(DEAD, 3), win("198.18.0.1", 1, senders=[(DEAD, 1)])])
    assert ZOMBIE not in eng.verdicts().values()
    assert acts(evs) == ["bgp-down-reachable-detected"]


def test_zombie_recovery_paths():
    peer = mesh_peer()
    book = Book(peer)
    # 1. the host answers again (revived): cleared at once, then reachable-but-down until Established
    eng = VerdictEngine(window_s=W)
    run(eng, book, 0, 15, storm)
    assert eng.verdict(DEAD) == ZOMBIE
    evs = run(eng, book, 15, 15, lambda t: [win(DEAD, 3, 2)])
    assert acts(evs) == ["zombie-peer-cleared", "bgp-down-reachable-detected"]
    assert evs[0][0] == 15 and evs[0][1]["event"]["reason"] == "host answers ARP again"
    assert evs[0][1]["arp_sensor"]["verdict"] == HEALTHY
    peer.bgp_state = "Established"
    evs = run(eng, book, 30, 5, lambda t: [win(DEAD, 1, 1)])
    assert acts(evs) == ["bgp-down-reachable-cleared"] and evs[0][1]["event"]["reason"].startswith("BGP")
    assert eng.verdicts() == {}


def test_zombie_clears_when_established_or_requests_stop_or_peer_removed():
    eng, peer = VerdictEngine(window_s=W), mesh_peer()
    book = Book(peer)
    run(eng, book, 0, 15, storm)
    peer.bgp_state = "Established"
    evs = run(eng, book, 15, 1, storm)
    assert acts(evs) == ["zombie-peer-cleared"]
    assert evs[0][1]["event"]["reason"] == "BGP session Established again"

    eng, peer = VerdictEngine(window_s=W), mesh_peer()
    book = Book(peer)
    run(eng, book, 0, 15, storm)
    # a single request 5 s into the silence keeps it: the window still has requests
    evs = run(eng, book, 15, 30, lambda t: [win(DEAD, 1)] if t == 20 else [])
    assert acts(evs) == ["zombie-peer-cleared"]
    assert evs[0][0] == 30 and "no ARP requests" in evs[0][1]["event"]["reason"]

    eng, peer = VerdictEngine(window_s=W), mesh_peer()
    book = Book(peer)
    run(eng, book, 0, 15, storm)
    book.by_ip.clear()  # `kubectl delete node`: Calico removes the peer from BIRD
    evs = run(eng, book, 15, 1, storm)
    assert acts(evs) == ["zombie-peer-cleared"] and "no longer" in evs[0][1]["event"]["reason"]


def test_unknown_bgp_state_holds_the_verdict():
    eng, peer = VerdictEngine(window_s=W), mesh_peer()
    book = Book(peer)
    run(eng, book, 0, 15, storm)
    peer.bgp_state = None  # the BIRD socket went away
    assert run(eng, book, 15, 30, storm) == []
    assert eng.verdict(DEAD) == ZOMBIE
    # and no new verdict starts while the state is unknown
    other = mesh_peer(None, ip="198.18.0.8")
    book.by_ip[other.ip] = other
    assert run(eng, book, 45, 30, lambda t: [*storm(t), win("198.18.0.8", 3)]) == []
    assert eng.verdict(DEAD) == ZOMBIE


def test_down_reachable_turns_zombie_when_host_dies():
    eng, book = VerdictEngine(window_s=W), Book(mesh_peer())
    run(eng, book, 0, 15, lambda t: [win(DEAD, 3, 3)])
    assert eng.verdict(DEAD) == DOWN_REACHABLE
    evs = run(eng, book, 15, 40, storm)
    assert acts(evs) == ["bgp-down-reachable-cleared", "zombie-peer-detected"]
    # the old replies age out of the window (t=24), then a full window of zombie evidence
    assert evs[1][0] == 25 + 9


def test_killed_peer_with_stale_replies_in_window():
    # alive and Established until t=20 (replies), killed at t=20, BIRD notices at t=26 (hold timer)
    peer = mesh_peer("Established")
    eng, book = VerdictEngine(window_s=W), Book(peer)
    run(eng, book, 0, 20, lambda t: [win(DEAD, 1, 1)] if t % 4 == 0 else [])
    run(eng, book, 20, 6, storm)
    peer.bgp_state = "Connect"
    evs = run(eng, book, 26, 40, storm)
    assert acts(evs) == ["zombie-peer-detected"]
    assert evs[0][0] - 26 <= 3 * W


def test_unanswered_target_and_clear():
    eng, book = VerdictEngine(window_s=W), Book()
    ip = "198.18.0.99"
    evs = run(eng, book, 0, 20, lambda t: [win(ip, 2)])
    assert acts(evs) == ["unanswered-target-detected"]
    e = evs[0][1]
    assert "bgp" not in e and "not a BGP peer" in e["message"] and e["arp_sensor"]["verdict"] == UNANSWERED
    evs = run(eng, book, 20, 5, lambda t: [win(ip, 2, 1)])
    assert acts(evs) == ["unanswered-target-cleared"]


def test_named_non_bgp_target_carries_its_node():
    k8s_only = Peer(name=None, ip=DEAD, source="k8s", node_name="worker-7", node_ready=False)
    eng, book = VerdictEngine(window_s=W), Book(k8s_only)
    evs = run(eng, book, 0, 20, storm)
    assert acts(evs) == ["unanswered-target-detected"]
    e = evs[0][1]
    assert e["kubernetes"]["node"]["name"] == "worker-7" and "bgp" not in e
    assert "NotReady" in e["message"] and "kubectl delete node worker-7" in e["message"]


def test_unanswered_becomes_zombie_when_bird_learns_the_peer():
    eng, book = VerdictEngine(window_s=W), Book()
    run(eng, book, 0, 15, storm)
    assert eng.verdict(DEAD) == UNANSWERED
    book.by_ip[DEAD] = mesh_peer()  # the BIRD socket answered for the first time
    evs = run(eng, book, 15, 1, storm)
    assert acts(evs) == ["unanswered-target-cleared", "zombie-peer-detected"]


def test_tracking_is_bounded():
    eng, book = VerdictEngine(window_s=W, max_tracked=100), Book(mesh_peer())
    eng.update([win(f"198.19.{i // 250}.{i % 250}", 1) for i in range(1000)] + [win(DEAD, 3)], book, 0.0)
    assert eng.untracked == 900
    assert eng.evidence(DEAD).requests == 3  # known peers are always tracked
    eng.update([], book, 20.0)
    assert eng.verdicts() == {} and eng.evidence("198.19.0.1").requests == 0


def test_unanswered_alerts_are_capped_with_one_warning():
    eng, book = VerdictEngine(window_s=W, max_unanswered=5), Book(mesh_peer())
    scan = [win(f"198.19.0.{i}", 3) for i in range(1, 50)]
    evs = run(eng, book, 0, 20, lambda t: [*scan, *storm(t)])
    assert acts(evs).count("unanswered-target-detected") == 5
    assert acts(evs).count("verdicts-capped") == 1 and acts(evs).count("zombie-peer-detected") == 1
    assert eng.suppressed > 0 and len(eng.verdicts()) == 6


def test_bad_window():
    with pytest.raises(ValueError):
        VerdictEngine(window_s=0)


DEAD6, ASKER6 = "2001:db8::7", "2001:db8::1"


def mesh_peer6(state: str = "Active", ip: str = DEAD6) -> Peer:
    return Peer(name="Mesh_" + ip.replace(":", "_"), ip=ip, bgp_state=state, proto_state="start",
                last_error="Socket: Connection refused" if state != "Established" else None, node_name="worker-7")


def storm6(t: int) -> list[TargetWindow]:
    # the aggregator's windows for an IPv6 target: solicitations in the requests slot
    return [win(DEAD6, 3, senders=[(ASKER6, 2), ("2001:db8::2", 1)])]


def test_ipv6_zombie_peer_with_nd_evidence_and_nd_words():
    eng, book = VerdictEngine(window_s=W, hostname="sensor-1"), Book(mesh_peer6())
    evs = run(eng, book, 0, 15, storm6)
    assert acts(evs) == ["zombie-peer-detected"]
    e = evs[0][1]
    assert e["destination"]["ip"] == DEAD6 and e["network"]["type"] == "ipv6" and "arp" not in e
    assert e["nd"]["solicitations"] == 30 and e["nd"]["top_senders"][0] == {"ip": ASKER6, "solicitations": 20}
    assert e["bgp"]["peer"]["name"] == "Mesh_2001_db8__7"


@pytest.mark.parametrize("proof", ["advertisement", "solicits-others"])
def test_ipv6_proof_of_life_clears_the_zombie(proof):
    """An advertisement for the IP, or the IP soliciting others (it shows as a sender), is proof of life."""
    eng, book = VerdictEngine(window_s=W), Book(mesh_peer6())
    run(eng, book, 0, 12, storm6)
    assert eng.verdict(DEAD6) == ZOMBIE

    def alive(t: int) -> list[TargetWindow]:
        if proof == "advertisement":
            return [*storm6(t), win(DEAD6, replies=1)]
        return [*storm6(t), win("2001:db8::99", 1, senders=[(DEAD6, 1)])]

    evs = run(eng, book, 12, 2, alive)
    assert acts(evs) == ["zombie-peer-cleared"]
    assert evs[0][1]["event"]["reason"] == "host answers neighbour discovery again"
    assert eng.verdict(DEAD6) == HEALTHY


def test_first_hand_check_before_a_zombie_not_backed_by_our_own_requests():
    """Issue 13 item 11: on the passive side of a pair this host never asks for the peer, so the others'
    requests are all it sees (their answers are unicast to them). Before such a zombie verdict the engine
    has the host's kernel ask (confirm), once per window per IP; never when our own requests are in the
    evidence. A live host's answer then reaches us and the zombie is not entered; a check that goes
    unanswered lets it through."""
    live, dead, me = "198.18.0.6", "198.18.0.3", "198.18.0.4"
    asked: list[tuple[float, str]] = []
    eng = VerdictEngine(window_s=3, min_requests=3, own={me}.__contains__,
                        confirm=lambda ip: asked.append((now, ip)))
    book = Book(mesh_peer("Passive", live), mesh_peer("Active", dead))
    events = []
    for i in range(12):
        now = 100.0 + i
        wins = [win(live, requests=4, senders=[("198.18.0.17", 2), ("198.18.0.18", 2)]),
                win(dead, requests=4, senders=[(me, 4)])]  # we ask for the dead one ourselves
        if i in (1, 6):  # the live host answers each check an interval later
            wins.append(win(live, replies=1))
        events += [validate_event(e) for e in eng.update(wins, book, now)]
    assert {ip for _, ip in asked} == {live} and len(asked) >= 2  # never `dead`: our own requests back it
    assert all(b[0] - a[0] >= 3 for a, b in itertools.pairwise(asked))  # at most once per window
    detected = {(e["destination"]["ip"], e["event"]["action"]) for e in events}
    assert (dead, "zombie-peer-detected") in detected
    assert (live, "zombie-peer-detected") not in detected


def test_window_list_and_plain_windows_give_the_same_verdicts():
    """The runner hands the engine the aggregator's WindowList (summed per IP with numpy, no TargetWindow
    built); tests and tools hand it TargetWindows. Same storm, same events, interval by interval: a scan of
    unanswered targets over the cap, a zombie peer, a target that starts answering, one asked only by a
    host that itself asks (alive), across two interfaces and both directions."""
    from sensor.kernel.layout import KIND_REPLY, KIND_REQUEST
    from sensor.kernel.reader import Snapshot
    from sensor.pipeline.aggregate import Aggregator

    mac = "02:00:00:00:00:01"
    book = Book(mesh_peer())
    agg = Aggregator({2: "eth0", 3: "eth1"})
    fast, plain = VerdictEngine(window_s=W, max_unanswered=4), VerdictEngine(window_s=W, max_unanswered=4)
    counts: dict = {}
    for t in range(40):
        def bump(key, n):
            counts[key] = counts.get(key, 0) + n

        for i in range(12):  # the scan
            bump((2, f"198.19.0.{i}", "198.18.0.1", 0, 0, KIND_REQUEST, mac, 0), 1 + i % 3)
        bump((2, DEAD, "198.18.0.2", 0, 0, KIND_REQUEST, mac, 0), 2)
        bump((3, DEAD, "198.18.0.3", 0, 1, KIND_REQUEST, mac, 0), 1)
        bump((2, "198.19.1.1", "198.19.0.5", 0, 0, KIND_REQUEST, mac, 0), 2)  # 198.19.0.5 asks: alive
        if t >= 25:  # one scanned target starts answering
            bump((2, "198.19.0.2", "0.0.0.0", 0, 0, KIND_REPLY, mac, 0), 1)
        iv = agg.update(Snapshot(float(t), {k: (v, 1) for k, v in counts.items()}, {}))
        a = fast.update(iv.windows, book, float(t))
        b = plain.update(list(iv.windows), book, float(t))
        assert a == b, t
        assert fast.verdicts() == plain.verdicts()
    assert fast.verdicts()[DEAD] == ZOMBIE and list(fast.verdicts().values()).count(UNANSWERED) == 4
    assert fast.verdict("198.19.0.5") == HEALTHY and fast.suppressed == plain.suppressed > 0


def test_own_address_is_never_unanswered():
    """With --attach xdp our own replies are never seen: an address of this host, asked for and never
    answered on the wire, stays healthy; any other address in the same storm becomes unanswered-target."""
    me, ghost = "198.18.0.4", "198.18.0.5"
    eng, book = VerdictEngine(window_s=W, own={me}.__contains__), Book()
    evs = run(eng, book, 0, 25, lambda t: [win(me, 3), win(ghost, 3)])
    assert [(e["arp_sensor"]["verdict"], e["destination"]["ip"]) for _, e in evs] == [(UNANSWERED, ghost)]
    assert eng.verdict(me) == HEALTHY
