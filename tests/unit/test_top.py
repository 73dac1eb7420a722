"""`arp-sensor top` under a real pseudo-terminal (tmux) and over a pipe, against ARP in namespaces."""

from __future__ import annotations

import ipaddress
import subprocess
from collections import deque

import pytest

from sensor.model import TargetWindow, WindowKey
from sensor.pipeline.aggregate import Interval
from sensor.ui.top import TopState, sparkline
from tests.support.fixtures_netns import REPO, sensor_cmd, sensor_env

BUSY, QUIET = "198.18.0.77", "198.18.0.78"


def iv(*windows: TargetWindow, dt: float = 1.0) -> Interval:
    return Interval(interval_s=dt, windows=list(windows), health={}, health_total={})


def tw(ip: str, requests: int, senders: int = 1, replies: int = 0, top=(), iface: str = "eth0",
       direction: str = "ingress") -> TargetWindow:
    return TargetWindow(WindowKey(1, direction, 0, ip), iface, 1.0, requests=requests, replies=replies,
                        senders=senders, top_senders=list(top))


def test_sparkline():
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([1, 8]) == "▂█"
    assert sparkline([0, 4, 8])[0] == " " and sparkline([0, 4, 8])[2] == "█"


def test_state_sums_per_ip_sorts_and_forgets():
    s = TopState()
    s.update(iv(tw(BUSY, 50, 3, top=[("198.18.0.5", 30)]), tw(BUSY, 10, 1, direction="egress",
                                                               top=[("198.18.0.9", 10)]),
                tw(QUIET, 2, 5), tw("198.18.0.9", 0, 0, replies=4)))
    rows = {r.ip: r for r in s.sorted_rows("requests")}
    assert rows[BUSY].rate == 60 and rows[BUSY].senders == 3 and rows[BUSY].top_sender == "198.18.0.5"
    assert rows[BUSY].where == {"eth0 in", "eth0 out"}
    assert [r.ip for r in s.sorted_rows("requests")][:2] == [BUSY, QUIET]
    assert s.sorted_rows("senders")[0].ip == QUIET
    ips = [r.ip for r in s.sorted_rows("ip")]
    assert ips == sorted(ips, key=ipaddress.ip_address)
    for _ in range(16):  # quiet for a whole sparkline: the row goes
        s.update(iv())
    assert s.rows == {}


def test_history_is_kept_per_ip():
    s = TopState()
    for n in (10, 20, 0, 40):
        s.update(iv(tw(BUSY, n)) if n else iv())
    assert list(s.rows[BUSY].history) == [10, 20, 0, 40]
    assert isinstance(s.rows[BUSY].history, deque)


# -- top --events: a running sensor's JSON instead of attaching ---------------------------------------------
def _ev(ds: str, kind: str, extra: dict, ts: str = "2027-01-15T08:00:01.000Z") -> dict:
    return {"@timestamp": ts, "event": {"kind": kind, "dataset": ds, **extra.pop("event", {})},
            "observer": {"hostname": "node-a", **extra.pop("observer", {})},
            "arp_sensor": {"schema_version": "1", **extra.pop("arp_sensor", {})}, **extra}


def _contract_events() -> list[dict]:
    """Events as the contract (docs/events.md, the JSON Schema) defines them: one interval with two targets,
    a zombie alert and a dry-run limit that would have dropped 7."""
    peer = {"name": "Mesh_198_18_0_7", "state": "Active"}
    target = {"observer": {"ingress": {"interface": {"name": "eth0"}}}, "network": {"direction": "ingress"}}
    return [
        _ev("arp_sensor.target", "metric", {**target, "destination": {"ip": "198.18.0.7"}, "bgp": {"peer": peer},
            "arp": {"requests": 40, "requests_per_sec": 40.0, "replies": 0, "gratuitous": 0, "probes": 0,
                    "senders": 3, "top_senders": [{"ip": "198.18.0.1", "requests": 30}], "interval_s": 1.0}}),
        _ev("arp_sensor.target", "metric", {**target, "destination": {"ip": "198.18.0.9"},
            "arp": {"requests": 2, "requests_per_sec": 2.0, "replies": 1, "gratuitous": 0, "probes": 0,
                    "senders": 1, "top_senders": [{"ip": "198.18.0.1", "requests": 2}], "interval_s": 1.0}}),
        _ev("arp_sensor.peer", "alert", {"event": {"action": "zombie-peer-detected"},
                                         "arp_sensor": {"verdict": "zombie-peer"},
                                         "destination": {"ip": "198.18.0.7"}, "bgp": {"peer": peer},
                                         "arp": {"requests": 40, "window_s": 10.0}, "message": "zombie"}),
        _ev("arp_sensor.ratelimit", "event", {
            "event": {"action": "ratelimit-applied", "reason": "zombie-peer"},
            "arp_sensor": {"ratelimit": {"mode": "dry-run", "source": "zombie-peer"}},
            "destination": {"ip": "198.18.0.7"}, "arp": {"dropped": 0, "would_drop": 0, "limit_pps": 0.02,
                                                          "limit_burst": 1}, "message": "would limit"}),
        _ev("arp_sensor.ratelimit", "event", {
            "event": {"action": "ratelimit-dropping"},
            "arp_sensor": {"ratelimit": {"mode": "dry-run", "source": "zombie-peer"}},
            "destination": {"ip": "198.18.0.7"}, "arp": {"dropped": 0, "would_drop": 7, "limit_pps": 0.02,
                                                          "limit_burst": 1, "interval_s": 1.0},
            "message": "would have dropped 7"}),
    ]


def test_event_feed_builds_intervals_and_columns():
    import json

    from sensor.events.decode import EventFeed
    from sensor.ui.top import feed_info
    from tests.support.fixtures_schema import validate_event

    evs = _contract_events()
    for ev in evs:
        validate_event(ev)  # the test's events are the contract's, not made up
    feed, s = EventFeed(), TopState()
    lines = [json.dumps(e) for e in evs] + ["not json", '{"foo": 1}']
    assert all(feed.feed(line) is None for line in lines)  # no health event yet: the interval is open
    assert feed.skipped == 2
    iv_ = feed.feed(json.dumps(_ev("arp_sensor.health", "metric", {"arp_sensor": {"health": {"interval_s": 1.0}}})))
    s.update(iv_)
    rows = s.sorted_rows("requests")
    assert [r.ip for r in rows] == ["198.18.0.7", "198.18.0.9"]
    assert rows[0].rate == 40 and rows[0].senders == 3 and rows[0].top_sender == "198.18.0.1"
    assert feed.info("198.18.0.7") == ("Mesh_198_18_0_7", "Active", "zombie-peer", ("dry-run", 7))
    assert "dry-run 7" in feed_info(feed, "198.18.0.7")[3]
    assert feed.info("198.18.0.9") == ("", "", "", None)


@pytest.mark.parametrize(("args", "needle"), [
    (["top"], "Missing option '-i'"),
    (["top", "--events", "-", "-i", "eth0"], "not both"),
    (["top", "--events", "-", "--rate-limit", "enforce"], "--rate-limit only apply with -i"),
    (["top", "--events", "-", "--bird-socket", "/x.ctl"], "--bird-socket only apply with -i"),
])
def test_top_usage_errors(args, needle):
    from click.testing import CliRunner

    from sensor.cli import cli

    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and needle in r.output, r.output


def test_top_events_missing_file(tmp_path):
    r = subprocess.run(sensor_cmd("top", "--events", str(tmp_path / "nope.json"), "--once"), capture_output=True,
                       text=True, env=sensor_env(), cwd=REPO, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().endswith("No such file or directory"), r.stderr


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_narrow_terminals_drop_columns_instead_of_truncating(width):
    from rich.console import Console

    from sensor.ui.top import columns_for, render

    s = TopState()
    s.update(iv(tw(BUSY, 80, 5, top=[("198.18.0.10", 40)])))
    info = lambda ip: ("Mesh_198_18_0_77", "Established", "bgp-down-reachable", "enforce 12")  # noqa: E731
    names = [c[0] for c in columns_for(width)]
    assert names[0] == "TARGET IP" and [n for n in names if n != "MAC"][1] == "REQ/S"
    if width >= 80:
        assert {"VERDICT", "BGP PEER"} <= set(names)
    if width >= 120:
        assert names[:3] == ["TARGET IP", "MAC", "REQ/S"]  # the MAC beside the target
    if width >= 200:
        assert len(names) == 12
    console = Console(width=width, force_terminal=False, record=True)
    console.print(render(s, "requests", 5, "t", [], width, info, lambda ip: "02-00-00-00-00-4D"))
    text = console.export_text()
    assert "…" not in text and BUSY in text
    assert ("02-00-00-00-00-4D" in text) == ("MAC" in names)
    assert all(len(line) <= width for line in text.splitlines())


@pytest.mark.parametrize("width", [60, 80, 120, 200, 260])
def test_ipv6_addresses_are_never_cut(width):
    """A 39-character IPv6 target and asker: the columns are budgeted at the addresses' real width, so a
    narrow terminal drops a column rather than cutting an address to an ellipsis."""
    from rich.console import Console

    from sensor.ui.top import render

    target, asker = "2001:db8:ffff:ffff:ffff:ffff:ffff:fff7", "2001:db8:ffff:ffff:ffff:ffff:ffff:fff1"
    s = TopState()
    s.update(iv(tw(target, 80, 5, top=[(asker, 40)])))
    console = Console(width=width, force_terminal=False, record=True)
    console.print(render(s, "requests", 5, "t", [], width))
    text = console.export_text()
    assert "…" not in text and target in text
    assert all(len(line) <= width for line in text.splitlines())
    # TOP SENDER comes last in PRIORITY: at 200 columns the two long addresses leave no room for it, so it
    # is dropped whole; with room for every column it is shown whole.
    assert (asker in text) == (width >= 260)


def test_ipv6_targets_sit_beside_ipv4_ones():
    """Dual stack: IPv6 rows sort with IPv4 rows (IPv4 first by address; the two types do not compare), and
    an IPv6 target event from `run` (nd.*) becomes a row with its solicitations as its rate."""
    import json

    from sensor.events.decode import EventFeed
    from sensor.events.encode import target_event

    s = TopState()
    s.update(iv(tw("2001:db8::7", 30, top=[("2001:db8::1", 30)]), tw(BUSY, 30), tw("2001:db8::1:0", 5),
                tw(QUIET, 5)))
    assert [r.ip for r in s.sorted_rows("ip")] == [BUSY, QUIET, "2001:db8::7", "2001:db8::1:0"]
    assert [r.ip for r in s.sorted_rows("requests")][:2] == [BUSY, "2001:db8::7"]
    assert s.sorted_rows("senders")[0].ip == BUSY

    feed, s6 = EventFeed(), TopState()
    ev = target_event(TargetWindow(WindowKey(1, "egress", 0, "2001:db8::7"), "eth0", 1.0, requests=12,
                                   replies=1, senders=2, top_senders=[("2001:db8::1", 8)]), 1.8e9, "h")
    assert feed.feed(json.dumps(ev)) is None
    health = _ev("arp_sensor.health", "metric", {"arp_sensor": {"health": {"interval_s": 1.0}}})
    s6.update(feed.feed(json.dumps(health)))
    [row] = s6.sorted_rows("requests")
    assert (row.ip, row.rate, row.replies, row.top_sender) == ("2001:db8::7", 12, 1, "2001:db8::1")


def test_event_feed_mac_column_from_binding_events():
    import json

    from sensor.bindings.engine import BindingEngine, Sighting
    from sensor.events.decode import EventFeed
    from sensor.ui.top import mac_cell

    a, b = "02-00-00-00-00-0A", "02-00-00-00-00-0B"
    eng = BindingEngine(learn_s=0)
    evs = eng.update([Sighting("eth0", 0, "198.18.0.7", a, "reply")], 0.0)  # new-station
    evs += eng.update([Sighting("eth0", 0, "198.18.0.7", b, "reply")], 30.0)  # mac-changed
    evs += eng.update([Sighting("eth0", 0, "198.18.0.7", a, "reply")], 31.0)  # ip-conflict (b holds)
    assert [e["event"]["action"] for e in evs] == ["new-station", "mac-changed", "ip-conflict"]
    feed = EventFeed()
    for e in evs[:2]:
        feed.feed(json.dumps(e))
    assert feed.mac("198.18.0.7") == ([b], None) and feed.mac("198.18.0.9") == ([], None)
    feed.feed(json.dumps(evs[2]))
    assert mac_cell(*feed.mac("198.18.0.7")) == f"[bold red]{b} ≠ {a}[/]"


def test_live_mac_cell_from_the_bindings_stage():
    from sensor.bindings.engine import BindingEngine, Sighting
    from sensor.bindings.stage import BindingStage
    from sensor.ui.top import live_mac

    a, b = "02-00-00-00-00-0A", "02-00-00-00-00-0B"
    stage = BindingStage(BindingEngine(learn_s=0))
    stage.engine.update([Sighting("eth0", 0, "198.18.0.7", a, "reply"),
                         Sighting("eth1", 0, "198.18.0.7", a, "reply")], 0.0)
    mac = live_mac(stage)
    assert mac("198.18.0.7") == a and mac("198.18.0.8") == "" and live_mac(None)("198.18.0.7") == ""
    stage.engine.update([Sighting("eth0", 0, "198.18.0.7", b, "gratuitous")], 1.0)
    assert mac("198.18.0.7") == f"[bold red]{a} ≠ {b}[/]"
