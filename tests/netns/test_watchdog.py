"""The attach watchdog (issue 13 item 2): someone removes or replaces our program under a running sensor.

Within one interval the sensor emits `program-detached`, shows its hooks in the health event, re-attaches
when the hook is free and never replaces someone else's program. "Within one interval" is asserted without
durations: the sensor is frozen (SIGSTOP) while its hooks are changed, and the first poll that started
after that must carry the warning."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from datetime import UTC, datetime

from sensor.kernel.datapath import TC_PROTOS
from tests.netns.test_faults import _stopped
from tests.netns.test_netns import _attach_foreign_xdp
from tests.support import frames as F
from tests.support.fixtures_netns import attached_programs, ns_exec

TARGET = "198.18.0.90"


def _health_metrics(evs: list[dict]) -> list[dict]:
    return [e for e in evs if e["event"]["dataset"] == "arp_sensor.health" and e["event"]["kind"] == "metric"]


def _actions(evs: list[dict], action: str) -> list[dict]:
    return [e for e in evs if e["event"].get("action") == action]


def _until(s, cond, what: str, timeout: float = 30) -> list[dict]:
    """Waits (bounded) until cond(events so far) holds; the events then."""
    deadline = time.monotonic() + timeout
    while True:
        evs = s.events_so_far()
        if cond(evs):
            return evs
        if s.proc.poll() is not None or time.monotonic() > deadline:
            s.kill()
            raise AssertionError(f"{what}: not seen (sensor rc {s.proc.returncode}): {s.stderr[-2000:]}")
        time.sleep(0.05)


def _detach_xdp_link(ns: str, ifname: str) -> int:
    """What an operator does to remove a link-attached XDP program: `bpftool link detach`."""
    [prog_id] = attached_programs(ns, ifname)["xdp"]
    links = json.loads(ns_exec(ns, "bpftool", "-j", "link", "show").stdout)
    [link] = [lk for lk in links if lk.get("prog_id") == prog_id and lk.get("type") == "xdp"]
    ns_exec(ns, "bpftool", "link", "detach", "id", str(link["id"]))
    assert attached_programs(ns, ifname)["xdp"] == []
    return prog_id


@contextlib.contextmanager
def _frozen(s):
    """SIGSTOP the sensor while we change its hooks, so its watchdog cannot act in the middle of it.
    Yields a holder whose [0] is the wall-clock time once the process was really stopped."""
    os.kill(s.proc.pid, signal.SIGSTOP)
    _stopped(s.proc.pid)
    try:
        yield [time.time()]
    finally:
        os.kill(s.proc.pid, signal.SIGCONT)


def _ts(e: dict) -> float:
    return datetime.strptime(e["@timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def _within_one_interval(s, action: str, frozen_at: float, n: int = 1) -> list[dict]:
    """Every poll stamps its events with its start time. The first poll that started after the sensor was
    frozen (so after the change) must report it: n warnings before that poll's health event."""
    def first_poll_after(evs):
        return next((i for i, e in enumerate(evs) if e in _health_metrics(evs) and _ts(e) > frozen_at), None)

    evs = _until(s, lambda e: first_poll_after(e) is not None, "a poll after the change")
    found = _actions(evs[:first_poll_after(evs)], action)
    assert len(found) == n, [e.get("message") for e in _actions(evs, action)]
    return found


def _count_after(veth_pair, s, n: int) -> int:
    veth_pair.send_frames([F.arp_request("198.18.0.1", TARGET)] * n)
    assert s.finish() == 0, s.stderr
    return sum(e["arp"]["requests"] for e in s.events("arp_sensor.target")
               if e["destination"]["ip"] == TARGET and e["network"]["direction"] == "ingress")


def test_xdp_program_removed_under_a_running_sensor_is_reported_and_reattached(veth_pair, sensor):
    ns, dev = veth_pair.b, veth_pair.b_if
    s = sensor(ns, ["-i", dev, "--interval", "0.3", "--top", "0", "--min-requests", "1"])
    _until(s, lambda e: _health_metrics(e), "first health event")
    first = _health_metrics(s.events_so_far())[0]["arp_sensor"]["health"]
    assert {(h["interface"], h["hook"], h["attached"]) for h in first["hooks"]} == {
        (dev, "xdp", True), (dev, "tc-egress", True)}
    with _frozen(s) as t:
        prog_id = _detach_xdp_link(ns, dev)
    [w] = _within_one_interval(s, "program-detached", t[0])
    assert w["log"]["level"] == "warning" and "xdp on " + dev in w["message"] and "re-attached" in w["message"]
    assert attached_programs(ns, dev)["xdp"] == [prog_id]  # the same program, on a new link
    last = _health_metrics(s.events_so_far())[-1]["arp_sensor"]["health"]
    assert {"interface": dev, "hook": "xdp", "attached": True, "prog_id": prog_id} in last["hooks"]
    # Counting goes on exactly through the re-attached program.
    assert _count_after(veth_pair, s, 7) == 7
    assert len(_actions(s.events(), "program-detached")) == 1


def test_clsact_deleted_under_a_running_sensor_is_reported_and_reattached(veth_pair, sensor):
    ns, dev = veth_pair.b, veth_pair.b_if
    s = sensor(ns, ["-i", dev, "--attach", "tc", "--interval", "0.3", "--top", "0", "--min-requests", "1"])
    _until(s, lambda e: _health_metrics(e), "first health event")
    with _frozen(s) as t:
        ns_exec(ns, "tc", "qdisc", "del", "dev", dev, "clsact")
        assert attached_programs(ns, dev) == {"xdp": [], "ingress": [], "egress": []}
    ws = _within_one_interval(s, "program-detached", t[0], n=2)  # ingress and egress
    assert all("re-attached" in w["message"] for w in ws)
    progs = attached_programs(ns, dev)
    assert len(progs["ingress"]) == len(TC_PROTOS) and len(progs["egress"]) == len(TC_PROTOS)
    assert _count_after(veth_pair, s, 5) == 5
    # Both hooks were lost and came back: one warning each, nothing more.
    assert sorted(e["message"].split(" on ")[1] for e in _actions(s.events(), "program-detached")) == [
        "tc-egress", "tc-ingress"]
    assert attached_programs(ns, dev) == {"xdp": [], "ingress": [], "egress": []}


def test_a_hook_taken_by_someone_else_is_never_clobbered_and_reclaimed_when_free(veth_pair, sensor):
    ns, dev = veth_pair.b, veth_pair.b_if
    s = sensor(ns, ["-i", dev, "--interval", "0.3", "--top", "0", "--min-requests", "1"])
    _until(s, lambda e: _health_metrics(e), "first health event")
    with _frozen(s) as t:  # the foreign program gets the free hook first
        ours = _detach_xdp_link(ns, dev)
        foreign = _attach_foreign_xdp(ns, dev)
    [w] = _within_one_interval(s, "program-detached", t[0])
    assert "someone else's program" in w["message"] and f"id {foreign}" in w["message"]
    evs = _until(s, lambda e: len(_health_metrics(e)) >= 3, "health")
    last = _health_metrics(evs)[-1]["arp_sensor"]["health"]
    assert {"interface": dev, "hook": "xdp", "attached": False, "prog_id": foreign} in last["hooks"]
    assert attached_programs(ns, dev)["xdp"] == [foreign]  # never replaced
    # The operator removes the foreign program: the hook is free, the sensor takes it back.
    ns_exec(ns, "ip", "link", "set", "dev", dev, "xdpgeneric", "off")
    _until(s, lambda e: _actions(e, "program-reattached"), "program-reattached")
    assert attached_programs(ns, dev)["xdp"] == [ours]
    assert _count_after(veth_pair, s, 4) == 4
    evs = s.events()
    assert len(_actions(evs, "program-detached")) == 1 and len(_actions(evs, "program-reattached")) == 1
    assert _actions(evs, "program-reattached")[0]["log"]["level"] == "info"


def test_a_tc_priority_taken_by_someone_else_is_never_clobbered_and_reclaimed_when_free(veth_pair, sensor):
    """The tc side of the policy: our egress filters are removed and a foreign filter takes one of our
    priorities. The watchdog says so once and leaves it; the hook is listed as not attached; once the
    foreign filter is gone, our filters come back (`program-reattached`) and counting goes on."""
    from sensor.kernel.datapath import TC_PRIO_BASE

    ns, dev = veth_pair.b, veth_pair.b_if
    s = sensor(ns, ["-i", dev, "--attach", "tc", "--interval", "0.3", "--top", "0", "--min-requests", "1"])
    _until(s, lambda e: _health_metrics(e), "first health event")
    with _frozen(s) as t:
        for f in attached_programs(ns, dev)["egress"]:
            ns_exec(ns, "tc", "filter", "del", "dev", dev, "egress", "prio", str(f["pref"]))
        ns_exec(ns, "tc", "filter", "add", "dev", dev, "egress", "prio", str(TC_PRIO_BASE), "protocol", "arp",
                "u32", "match", "u32", "0", "0")
    [w] = _within_one_interval(s, "program-detached", t[0])
    assert "tc-egress" in w["message"] and f"priority {TC_PRIO_BASE}" in w["message"]
    evs = _until(s, lambda e: len(_health_metrics(e)) >= 3, "health")
    hooks = _health_metrics(evs)[-1]["arp_sensor"]["health"]["hooks"]
    assert {"interface": dev, "hook": "tc-egress", "attached": False, "prog_id": 0} in hooks
    assert any(h["hook"] == "tc-ingress" and h["attached"] for h in hooks)  # untouched, still ours
    assert {f["kind"] for f in attached_programs(ns, dev)["egress"]} == {"u32"}  # never clobbered
    ns_exec(ns, "tc", "filter", "del", "dev", dev, "egress", "prio", str(TC_PRIO_BASE))
    _until(s, lambda e: _actions(e, "program-reattached"), "program-reattached")
    assert len(attached_programs(ns, dev)["egress"]) == len(TC_PROTOS)
    assert _count_after(veth_pair, s, 3) == 3  # ingress, through the untouched tc-ingress filters
    assert len(_actions(s.events(), "program-detached")) == 1
