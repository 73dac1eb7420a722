"""Rate-limit policy (pure): which targets are limited, what is refused, and the events; option checks."""

from __future__ import annotations

import subprocess

import pytest

from sensor.errors import SensorError
from sensor.peers import Peer, peer_fields
from sensor.pipeline.ratelimit import (
    DEFAULT_BURST,
    DEFAULT_PPS,
    MANUAL,
    UNANSWERED,
    ZOMBIE,
    LimitConfig,
    RateLimitPolicy,
    config_from_options,
    expand_targets,
)
from tests.support.fixtures_netns import REPO, sensor_cmd, sensor_env

DEAD, DEAD2, LIVE, OTHER = "198.18.0.3", "198.18.0.6", "198.18.0.2", "198.18.0.40"
T0 = 1_800_000_000.0


class Book:
    def __init__(self, *peers: Peer) -> None:
        self.peers = {p.ip: p for p in peers}

    def get(self, ip: str) -> Peer | None:
        return self.peers.get(ip)


def bgp(ip: str, state: str | None) -> Peer:
    return Peer(name=f"Mesh_{ip.replace('.', '_')}", ip=ip, bgp_state=state)


def never_alive(_ip: str) -> bool:
    return False


def cfg(**kw) -> LimitConfig:
    return config_from_options(mode=kw.pop("mode", "enforce"), **kw)


class Step:
    """One interval as the stage runs it: update, then report with the kernel totals read after it."""

    def __init__(self, pol: RateLimitPolicy, verdicts, book, alive, now, totals=None) -> None:
        d = pol.update(verdicts, book, alive, now)
        self.limit = d.limit
        self.events = d.events + pol.report(d, totals or {}, now, 1.0, book)


def actions(events, dataset="arp_sensor.ratelimit"):
    return [(e["event"]["action"], e["destination"]["ip"]) for e in events if e["event"]["dataset"] == dataset]


def test_zombie_peers_are_limited_and_removed_when_the_verdict_clears():
    pol = RateLimitPolicy(cfg(), "node-a", peer_fields)
    book = Book(bgp(DEAD, "Active"), bgp(LIVE, "Established"))
    d = pol.update({DEAD: ZOMBIE}, book, never_alive, T0)
    assert d.limit == {DEAD: ZOMBIE}
    assert actions(d.events) == [("ratelimit-applied", DEAD)]
    ev = d.events[0]
    assert ev["event"]["kind"] == "event" and ev["arp"]["dropped"] == 0
    assert ev["arp"]["limit_pps"] == DEFAULT_PPS and ev["arp"]["limit_burst"] == DEFAULT_BURST
    assert ev["arp_sensor"]["ratelimit"] == {"mode": "enforce", "source": ZOMBIE}
    assert ev["bgp"]["peer"]["name"] == "Mesh_198_18_0_3"
    # steady: no new events
    assert pol.update({DEAD: ZOMBIE}, book, never_alive, T0 + 1).events == []
    d = Step(pol, {}, book, never_alive, T0 + 2)
    assert d.limit == {}
    assert actions(d.events) == [("ratelimit-removed", DEAD)]
    assert d.events[0]["event"]["reason"] == "verdict cleared"


def test_unanswered_targets_only_with_the_flag():
    book = Book()
    assert RateLimitPolicy(cfg()).update({OTHER: UNANSWERED}, book, never_alive, T0).limit == {}
    pol = RateLimitPolicy(cfg(unanswered=True))
    assert pol.update({OTHER: UNANSWERED}, book, never_alive, T0).limit == {OTHER: UNANSWERED}


def test_other_verdicts_are_never_limited():
    pol = RateLimitPolicy(cfg(unanswered=True))
    assert pol.update({DEAD: "bgp-down-reachable", LIVE: "healthy"}, Book(bgp(DEAD, "Active")), never_alive,
                      T0).limit == {}


def test_established_peer_is_never_limited_even_with_a_zombie_verdict():
    pol = RateLimitPolicy(cfg())
    assert pol.update({DEAD: ZOMBIE}, Book(bgp(DEAD, "Established")), never_alive, T0).limit == {}


def test_live_host_is_never_limited_and_a_limit_goes_the_interval_it_answers():
    pol = RateLimitPolicy(cfg())
    book = Book(bgp(DEAD, "Active"))
    assert pol.update({DEAD: ZOMBIE}, book, never_alive, T0).limit == {DEAD: ZOMBIE}
    d = Step(pol, {DEAD: ZOMBIE}, book, lambda ip: ip == DEAD, T0 + 1)
    assert d.limit == {}
    assert actions(d.events) == [("ratelimit-removed", DEAD)]
    assert "answered ARP" in d.events[0]["event"]["reason"]


def test_manual_target_naming_an_established_peer_warns_once_and_is_not_limited():
    pol = RateLimitPolicy(cfg(targets=[LIVE, DEAD]))
    book = Book(bgp(LIVE, "Established"), bgp(DEAD, "Active"))
    d = pol.update({}, book, never_alive, T0)
    assert d.limit == {DEAD: MANUAL}
    warnings = [e for e in d.events if e["event"]["dataset"] == "arp_sensor.health"]
    assert len(warnings) == 1
    w = warnings[0]
    assert w["event"]["action"] == "ratelimit-refused" and w["log"]["level"] == "warning"
    assert LIVE in w["message"] and "Established" in w["message"] and "not limited" in w["message"]
    for i in range(1, 4):  # once, not every interval
        assert pol.update({}, book, never_alive, T0 + i).events == []


def test_manual_target_with_unknown_bgp_state_is_refused():
    pol = RateLimitPolicy(cfg(targets=[DEAD]))
    d = pol.update({}, Book(bgp(DEAD, None)), never_alive, T0)
    assert d.limit == {} and "unknown" in d.events[0]["message"]


def test_zombie_verdict_held_while_bird_is_unreachable_keeps_its_limit():
    pol = RateLimitPolicy(cfg())
    pol.update({DEAD: ZOMBIE}, Book(bgp(DEAD, "Active")), never_alive, T0)
    assert pol.update({DEAD: ZOMBIE}, Book(bgp(DEAD, None)), never_alive, T0 + 1).limit == {DEAD: ZOMBIE}


def test_manual_peer_becoming_established_is_removed_with_a_reason():
    pol = RateLimitPolicy(cfg(targets=[DEAD]))
    pol.update({}, Book(bgp(DEAD, "Active")), never_alive, T0)
    d = Step(pol, {}, Book(bgp(DEAD, "Established")), never_alive, T0 + 1)
    assert d.limit == {}
    removed = [e for e in d.events if e["event"]["action"] == "ratelimit-removed"]
    assert "Established" in removed[0]["event"]["reason"]


def test_allow_list_wins_over_everything():
    pol = RateLimitPolicy(cfg(targets=["198.18.0.0/30"], allow=["198.18.0.0/31"]))
    d = pol.update({DEAD: ZOMBIE}, Book(bgp(DEAD, "Active")), never_alive, T0)
    assert d.limit == {"198.18.0.2": MANUAL, DEAD: ZOMBIE}
    pol = RateLimitPolicy(cfg(allow=["198.18.0.0/24"]))
    assert pol.update({DEAD: ZOMBIE}, Book(bgp(DEAD, "Active")), never_alive, T0).limit == {}


def test_manual_and_auto_share_one_limit():
    pol = RateLimitPolicy(cfg(targets=[DEAD]))
    d = pol.update({DEAD: ZOMBIE}, Book(bgp(DEAD, "Active")), never_alive, T0)
    assert d.limit == {DEAD: MANUAL} and len(actions(d.events)) == 1


def test_dropping_events_carry_interval_deltas():
    pol = RateLimitPolicy(cfg(), "node-a")
    book = Book(bgp(DEAD, "Active"), bgp(DEAD2, "Active"))
    both = {DEAD: ZOMBIE, DEAD2: ZOMBIE}
    Step(pol, both, book, never_alive, T0)
    evs = Step(pol, both, book, never_alive, T0 + 1, {DEAD: (5, 0), DEAD2: (0, 0)}).events
    assert actions(evs) == [("ratelimit-dropping", DEAD)]
    assert evs[0]["arp"]["dropped"] == 5 and evs[0]["arp"]["interval_s"] == 1.0
    assert "dropped 5 ARP requests for 198.18.0.3" in evs[0]["message"]
    evs = Step(pol, both, book, never_alive, T0 + 2, {DEAD: (12, 0), DEAD2: (1, 0)}).events
    assert [(e["destination"]["ip"], e["arp"]["dropped"]) for e in evs] == [(DEAD, 7), (DEAD2, 1)]
    assert Step(pol, both, book, never_alive, T0 + 3, {DEAD: (12, 0), DEAD2: (1, 0)}).events == []
    # DEAD's verdict clears: its entries are taken out with 2 more drops since the last read; those are
    # reported, then the removal with the lifetime total
    evs = Step(pol, {DEAD2: ZOMBIE}, book, never_alive, T0 + 4, {DEAD: (14, 0), DEAD2: (1, 0)}).events
    assert [(e["event"]["action"], e["arp"]["dropped"]) for e in evs] == [("ratelimit-dropping", 2),
                                                                          ("ratelimit-removed", 14)]
    assert Step(pol, {DEAD2: ZOMBIE}, book, never_alive, T0 + 5, {DEAD: (99, 0)}).events == []  # not ours now


def test_dry_run_reports_would_drop():
    pol = RateLimitPolicy(cfg(mode="dry-run"))
    book = Book(bgp(DEAD, "Active"))
    applied = Step(pol, {DEAD: ZOMBIE}, book, never_alive, T0).events[0]
    assert applied["arp_sensor"]["ratelimit"]["mode"] == "dry-run" and "dry run" in applied["message"]
    ev = Step(pol, {DEAD: ZOMBIE}, book, never_alive, T0 + 1, {DEAD: (0, 4)}).events[0]
    assert ev["arp"]["dropped"] == 0 and ev["arp"]["would_drop"] == 4
    assert "would have dropped 4" in ev["message"]


def test_expand_targets():
    assert expand_targets(["198.18.0.7"]) == ["198.18.0.7"]
    assert expand_targets(["198.18.0.0/30", "198.18.0.1"]) == ["198.18.0.1", "198.18.0.2"]
    assert expand_targets(["198.18.0.4/31"]) == ["198.18.0.4", "198.18.0.5"]
    assert len(expand_targets(["198.18.1.0/24"])) == 254


@pytest.mark.parametrize(("kw", "needle"), [
    ({"pps": -1.0}, "--limit-pps"),
    ({"pps": 0.0}, "--limit-pps"),
    ({"burst": 0}, "--limit-burst"),
    ({"ttl": 0.5}, "--limit-ttl"),
    ({"ttl": 1.0}, "longer than --interval"),
    ({"targets": ["198.18.0.0/23"]}, "wider than /24"),
    ({"targets": ["10.0.0.300"]}, "not an IP address"),
    ({"targets": ["2001:db8::/64"]}, "wider than /120"),  # IPv6 targets are limited too, 256 at most
    ({"allow": ["nope"]}, "--limit-allow"),
    ({"attach": "xdp"}, "--attach"),
])
def test_bad_values(kw, needle):
    with pytest.raises(SensorError) as exc:
        config_from_options(mode="enforce", interval=1.0, **kw)
    assert needle in str(exc.value) and exc.value.exit_code == 2


@pytest.mark.parametrize("kw", [{"pps": 1.0}, {"targets": ["198.18.0.1"]}, {"unanswered": True}, {"ttl": 9.0}])
def test_limit_options_without_rate_limit_are_an_error(kw):
    with pytest.raises(SensorError) as exc:
        config_from_options(mode="off", **kw)
    assert "needs --rate-limit" in str(exc.value)


def test_defaults():
    c = config_from_options(mode="enforce", interval=2.0)
    assert (c.pps, c.burst, c.ttl_s, c.dry_run) == (DEFAULT_PPS, DEFAULT_BURST, 6.0, False)
    assert not config_from_options().enabled


@pytest.mark.parametrize(("args", "needle"), [
    (["--rate-limit", "enforce", "--limit-pps", "-2"], "--limit-pps"),
    (["--rate-limit", "enforce", "--limit-target", "198.18.0.0/16"], "wider than /24"),
    (["--limit-pps", "3"], "needs --rate-limit"),
    (["--rate-limit", "sometimes"], "--rate-limit"),
])
def test_cli_bad_values_one_line_exit_2(args, needle):
    """Checked before anything is loaded: no root needed, one line, exit 2."""
    r = subprocess.run(sensor_cmd("run", "-i", "lo", *args), capture_output=True, text=True, env=sensor_env(),
                       cwd=REPO, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr


def test_every_event_matches_the_published_schema():
    from sensor.outputs.validate import check

    book = Book(bgp(DEAD, "Active"), bgp(LIVE, "Established"))
    evs = []
    for mode in ("enforce", "dry-run"):
        pol = RateLimitPolicy(cfg(mode=mode, targets=[LIVE, OTHER], unanswered=True), "node-a", peer_fields)
        vs = {DEAD: ZOMBIE, "198.18.0.50": UNANSWERED}
        evs += Step(pol, vs, book, never_alive, T0).events
        evs += Step(pol, vs, book, never_alive, T0 + 1, {DEAD: (3, 4), OTHER: (0, 2)}).events
        evs += Step(pol, {}, book, lambda ip: ip == OTHER, T0 + 2).events
    kinds = {(e["event"]["dataset"], e["event"]["action"]) for e in evs}
    assert kinds == {("arp_sensor.ratelimit", a) for a in ("ratelimit-applied", "ratelimit-dropping",
                                                          "ratelimit-removed")} | {
        ("arp_sensor.health", "ratelimit-refused")}
    for ev in evs:
        check(ev)


DEAD6, LIVE6 = "2001:db8::3", "2001:db8::2"


def test_ipv6_zombie_peers_are_limited_and_never_established_ones_or_allowed_ones():
    """IPv6 targets go through the same rules: an IPv6 zombie peer is limited (its events carry nd.*), an
    Established IPv6 peer or an allow-listed address never is, and an IPv4 allow list never matches IPv6."""
    pol = RateLimitPolicy(cfg(allow=["198.18.0.0/24", "2001:db8::40/126"]), "node-a", peer_fields)
    book = Book(bgp(DEAD6, "Active"), bgp(LIVE6, "Established"), bgp("2001:db8::41", "Active"))
    d = pol.update({DEAD6: ZOMBIE, LIVE6: ZOMBIE, "2001:db8::41": ZOMBIE}, book, never_alive, T0)
    assert d.limit == {DEAD6: ZOMBIE}
    ev = next(e for e in d.events if e["destination"]["ip"] == DEAD6)
    assert ev["network"]["type"] == "ipv6" and ev["nd"]["limit_pps"] == DEFAULT_PPS and "arp" not in ev
    assert cfg(allow=["198.18.0.0/24"]).allowed(DEAD6) is False


def test_ipv6_limit_targets_expand_like_ipv4_ones():
    assert expand_targets(["2001:db8::a"]) == ["2001:db8::a"]
    assert expand_targets(["2001:DB8:0::a/127"]) == ["2001:db8::a", "2001:db8::b"]
    assert len(expand_targets(["2001:db8::/120"])) == 255  # hosts(): the subnet-router anycast is left out
    with pytest.raises(SensorError, match="wider than /120"):
        expand_targets(["2001:db8::/119"])
    with pytest.raises(SensorError, match="not an IP address or CIDR"):
        expand_targets(["2001:db8::zz"])


def test_own_addresses_are_never_limited_and_a_failed_read_keeps_the_last_set():
    from sensor.peers.own import OwnAddresses

    reads = [frozenset({DEAD}), OSError("netlink")]

    def read() -> frozenset[str]:
        r = reads.pop(0)
        if isinstance(r, Exception):
            raise r
        return r

    own = OwnAddresses(ttl=0, read=read)
    pol = RateLimitPolicy(cfg(targets=(DEAD,)), own=own)
    d = pol.update({DEAD: ZOMBIE}, Book(bgp(DEAD, "Active")), never_alive, T0)
    assert d.limit == {} and "own addresses" in d.events[0]["message"]
    assert own(DEAD)  # the second read failed: the last good set holds
