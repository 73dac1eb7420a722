"""The kernel's token buckets in the real kernel (BPF_PROG_TEST_RUN). Test runs use the real clock, so
time is controlled by writing tokens_ns and last_refill_ns into the entry just before a run: the few
microseconds between the write and the run add a negligible fraction of a token."""

from __future__ import annotations

import threading
import time

import pytest

from sensor.kernel import bpfsys
from sensor.kernel.layout import DIR_EGRESS, DIR_INGRESS, LIMIT_F_DRY_RUN
from sensor.kernel.limitmap import NS, LimitKey, LimitMap, LimitVal, cost_ns
from tests.support import frames as F

XDP_DROP, XDP_PASS = 1, 2
TC_ACT_SHOT, TC_ACT_UNSPEC = 2, 0xFFFFFFFF
LO = 1  # BPF_PROG_TEST_RUN runs XDP and tc on the namespace's loopback device
ASKER = "198.18.4.1"
TARGET = "198.18.4.7"


@pytest.fixture
def lm(dp):
    m = LimitMap(*dp.limit_fds)
    m.clear()
    yield m
    m.clear()


def put(lm: LimitMap, ip: str = TARGET, d: int = DIR_EGRESS, *, pps: float = 1.0, burst: int = 3,
        tokens: float | None = None, ago_s: float = 0.0, ttl_s: float = 60.0, flags: int = 0) -> LimitKey:
    """An entry whose last refill was ago_s seconds ago, holding `tokens` (default: a full bucket)."""
    key = LimitKey(LO, ip, d)
    cost = cost_ns(pps)
    now = time.monotonic_ns()
    lm.put(key, LimitVal(flags=flags, rate_mpps=round(pps * 1000), cost_ns=cost, burst=burst,
                         tokens_ns=int((burst if tokens is None else tokens) * cost),
                         last_refill_ns=now - int(ago_s * NS), expires_ns=now + int(ttl_s * NS)))
    return key


def run(fd: int, frame: bytes, n: int = 1) -> list[int]:
    return [bpfsys.prog_test_run(fd, frame).retval for _ in range(n)]


def req(target: str = TARGET, asker: str = ASKER) -> bytes:
    return F.arp_request(asker, target)


def health_delta(reader, before: dict) -> dict:
    after = reader.read_health()
    return {k: after[k] - before[k] for k in after if after[k] != before[k] and k.startswith("ratelimit")}


def test_empty_limits_pass_everything(dp, lm, reader):
    h0 = reader.read_health()
    assert lm.active() == 0
    assert run(dp.fn_tc_eg.fd, req(), 5) == [TC_ACT_UNSPEC] * 5
    assert run(dp.fn_xdp.fd, req(), 5) == [XDP_PASS] * 5
    assert health_delta(reader, h0) == {}


def test_burst_then_drop(dp, lm, reader):
    key = put(lm, burst=3)
    assert lm.active() == 1
    h0 = reader.read_health()
    assert run(dp.fn_tc_eg.fd, req(), 5) == [TC_ACT_UNSPEC] * 3 + [TC_ACT_SHOT] * 2
    v = lm.get(key)
    assert (v.passed, v.dropped, v.would_drop) == (3, 2, 0)
    assert health_delta(reader, h0) == {"ratelimit_dropped": 2}
    assert v.tokens < 0.01  # three spent, a few microseconds of refill


def test_dropped_requests_are_still_counted(dp, lm, reader):
    """The sensor's own counts include what the limit dropped: a working limit must not clear the verdict."""
    put(lm, burst=1)
    before = reader.read_entries()
    run(dp.fn_tc_eg.fd, req(), 4)
    after = reader.read_entries()
    k = (LO, TARGET, ASKER, 0, DIR_EGRESS, 0, "02:00:00:00:00:01", 0)  # frames.arp_request's default MAC
    assert after[k][0] - before.get(k, (0, 0))[0] == 4


def test_refill_is_elapsed_time_times_rate(dp, lm):
    key = put(lm, pps=1.0, burst=5, tokens=0, ago_s=2.5)  # 2.5 tokens accrued
    assert run(dp.fn_tc_eg.fd, req(), 3) == [TC_ACT_UNSPEC, TC_ACT_UNSPEC, TC_ACT_SHOT]
    v = lm.get(key)
    assert 0.49 < v.tokens < 0.52  # half a token left over: fixed point keeps fractions
    assert (v.passed, v.dropped) == (2, 1)


def test_fractional_rate(dp, lm):
    key = put(lm, pps=0.2, burst=4, tokens=0.5, ago_s=7.5)  # 0.5 + 7.5 s x 0.2/s = 2 tokens
    assert run(dp.fn_tc_eg.fd, req(), 3) == [TC_ACT_UNSPEC, TC_ACT_UNSPEC, TC_ACT_SHOT]
    assert lm.get(key).passed == 2


def test_refill_is_capped_at_burst(dp, lm):
    key = put(lm, pps=10.0, burst=2, tokens=0, ago_s=100)  # 1000 tokens of idle time: still only 2
    assert run(dp.fn_tc_eg.fd, req(), 4) == [TC_ACT_UNSPEC] * 2 + [TC_ACT_SHOT] * 2
    assert lm.get(key).dropped == 2


def test_last_refill_in_the_future_adds_nothing(dp, lm):
    """Another CPU may have refilled after this one read the clock: no credit, no underflow."""
    key = put(lm, burst=3, tokens=1, ago_s=-5.0)
    assert run(dp.fn_tc_eg.fd, req(), 2) == [TC_ACT_UNSPEC, TC_ACT_SHOT]
    assert lm.get(key).last_refill_ns > time.monotonic_ns()  # never moved backwards


def test_expired_entry_is_ignored(dp, lm, reader):
    """Fail-open: a sensor that stopped refreshing stops limiting, and the entry counts nothing."""
    key = put(lm, burst=1, tokens=0, ttl_s=-0.001)
    h0 = reader.read_health()
    assert run(dp.fn_tc_eg.fd, req(), 5) == [TC_ACT_UNSPEC] * 5
    v = lm.get(key)
    assert (v.passed, v.dropped, v.would_drop) == (0, 0, 0)
    assert health_delta(reader, h0) == {}


def test_entry_expires_while_in_use(dp, lm):
    key = put(lm, burst=1, tokens=0, ttl_s=0.3)
    assert run(dp.fn_tc_eg.fd, req(), 2) == [TC_ACT_SHOT] * 2
    time.sleep(0.35)
    assert run(dp.fn_tc_eg.fd, req(), 2) == [TC_ACT_UNSPEC] * 2
    assert lm.get(key).dropped == 2


def test_unlimited_targets_and_other_kinds_untouched(dp, lm, reader):
    key = put(lm, burst=1, tokens=0)
    h0 = reader.read_health()
    others = [req("198.18.4.8"), F.arp_reply(TARGET, ASKER), F.arp_probe(TARGET), F.arp_gratuitous(TARGET),
              F.arp_request(ASKER, TARGET, vlans=[(F.ETH_P_8021Q, 5)])[:30], F.ipv4_udp(dst=TARGET)]
    for frame in others:
        assert run(dp.fn_tc_eg.fd, frame) == [TC_ACT_UNSPEC]
    v = lm.get(key)
    assert (v.passed, v.dropped, v.would_drop) == (0, 0, 0)
    assert health_delta(reader, h0) == {}


def test_tagged_request_is_limited_too(dp, lm):
    """The VLAN is not part of the key: a tagged request for the target spends the same bucket."""
    key = put(lm, burst=1, tokens=1)
    tagged = F.arp_request(ASKER, TARGET, vlans=[(F.ETH_P_8021Q, 100)])
    assert run(dp.fn_tc_eg.fd, tagged, 2) == [TC_ACT_UNSPEC, TC_ACT_SHOT]
    assert lm.get(key).dropped == 1


def test_dry_run_passes_and_counts(dp, lm, reader):
    key = put(lm, burst=1, flags=LIMIT_F_DRY_RUN)
    h0 = reader.read_health()
    assert run(dp.fn_tc_eg.fd, req(), 4) == [TC_ACT_UNSPEC] * 4
    v = lm.get(key)
    assert (v.passed, v.dropped, v.would_drop) == (1, 0, 3)
    assert health_delta(reader, h0) == {"ratelimit_would_drop": 3}
    assert v.tokens < 0.01  # would-drops spend nothing: dry-run counts what enforce would drop


def test_directions_have_their_own_entries(dp, lm):
    put(lm, d=DIR_EGRESS, burst=1, tokens=0)
    assert run(dp.fn_xdp.fd, req(), 2) == [XDP_PASS] * 2
    assert run(dp.fn_tc_in.fd, req(), 2) == [TC_ACT_UNSPEC] * 2
    put(lm, d=DIR_INGRESS, burst=1, tokens=0)
    assert run(dp.fn_xdp.fd, req()) == [XDP_DROP]
    assert run(dp.fn_tc_in.fd, req()) == [TC_ACT_SHOT]
    assert lm.get(LimitKey(LO, TARGET, DIR_INGRESS)).dropped == 2


def test_other_interface_untouched(dp, lm):
    lm.put(LimitKey(LO + 1000, TARGET, DIR_EGRESS), LimitVal(cost_ns=NS, burst=1, tokens_ns=0,
                                                               last_refill_ns=time.monotonic_ns(),
                                                               expires_ns=time.monotonic_ns() + 60 * NS))
    assert run(dp.fn_tc_eg.fd, req(), 3) == [TC_ACT_UNSPEC] * 3


def test_entries_ignored_while_active_count_is_zero(dp, lm):
    """The kernel checks limits_active before any hash lookup."""
    put(lm, burst=1, tokens=0)
    lm.set_active(0)
    assert run(dp.fn_tc_eg.fd, req(), 2) == [TC_ACT_UNSPEC] * 2
    lm.sync_active()
    assert run(dp.fn_tc_eg.fd, req()) == [TC_ACT_SHOT]


def test_repeat_counters_exact(dp, lm, reader):
    key = put(lm, pps=0.001, burst=10)
    h0 = reader.read_health()
    res = bpfsys.prog_test_run(dp.fn_tc_eg.fd, req(), repeat=1000)
    assert res.retval == TC_ACT_SHOT
    v = lm.get(key)
    assert (v.passed, v.dropped) == (10, 990)
    assert health_delta(reader, h0) == {"ratelimit_dropped": 990}


def test_concurrent_cpus_share_one_bucket(dp, lm, reader):
    """Two threads (the GIL is released in the syscall, so two CPUs) spend one bucket: with the spin lock
    exactly `burst` pass in total, and nothing is lost from the counters."""
    burst, per_thread, threads = 3000, 20000, 2
    key = put(lm, pps=0.001, burst=burst)
    h0 = reader.read_health()
    frame = req()

    def worker():
        for _ in range(per_thread // 1000):
            bpfsys.prog_test_run(dp.fn_tc_eg.fd, frame, repeat=1000)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    v = lm.get(key)
    assert v.passed == burst
    assert v.dropped == threads * per_thread - burst
    assert health_delta(reader, h0) == {"ratelimit_dropped": threads * per_thread - burst}


def test_apply_creates_full_bucket_and_refresh_keeps_state(dp, lm):
    key = LimitKey(LO, TARGET, DIR_EGRESS)
    assert lm.apply(key, pps=1.0, burst=2, ttl_s=30, dry_run=False) is True
    assert lm.get(key).tokens == 2 and lm.active() == 1
    run(dp.fn_tc_eg.fd, req(), 3)
    before = lm.get(key)
    assert lm.apply(key, pps=0.5, burst=1, ttl_s=30, dry_run=True) is False  # refresh: state stays
    got = lm.get(key)
    assert (got.passed, got.dropped) == (2, 1)
    assert got.cost_ns == 2 * NS and got.burst == 1 and got.dry_run and got.rate_mpps == 500
    assert got.expires_ns > before.expires_ns
    assert got.last_refill_ns == before.last_refill_ns and got.tokens_ns == before.tokens_ns
    taken = lm.take(key)
    assert (taken.passed, taken.dropped) == (2, 1) and lm.active() == 0
    assert lm.take(key) is None and not lm.delete(key)


def test_refresh_shrinks_the_bucket(dp, lm):
    key = put(lm, pps=1.0, burst=10)
    lm.apply(key, pps=1.0, burst=3, ttl_s=30, dry_run=False)
    assert lm.get(key).tokens == 3


def test_refresh_loses_no_kernel_counts_under_load(dp, lm, reader):
    """Refreshing while another CPU drops requests: every drop is in the entry (the refresh never writes
    counters), so the entry's counter equals the kernel's global drop counter."""
    key = put(lm, pps=0.001, burst=1, tokens=0)
    h0 = reader.read_health()
    stop = threading.Event()

    def refresher():
        while not stop.is_set():
            lm.apply(key, pps=0.001, burst=1, ttl_s=30, dry_run=False)

    t = threading.Thread(target=refresher)
    t.start()
    try:
        for _ in range(20):
            bpfsys.prog_test_run(dp.fn_tc_eg.fd, req(), repeat=500)
    finally:
        stop.set()
        t.join()
    assert lm.get(key).dropped == 10000 == health_delta(reader, h0)["ratelimit_dropped"]


# -- IPv6 neighbour solicitations: the same buckets, keyed with the IPv6 family -----------------------------
TARGET6, ASKER6 = "2001:db8::4:7", "2001:db8::4:1"


def test_ns_burst_then_drop_and_still_counted(dp, lm, reader):
    key = put(lm, ip=TARGET6, burst=2)
    assert LimitKey.unpack(key.pack()) == key
    h0 = reader.read_health()
    n0 = reader.read_entries()
    ns = F.neighbour_solicitation(ASKER6, TARGET6)
    assert run(dp.fn_tc_eg.fd, ns, 4) == [TC_ACT_UNSPEC] * 2 + [TC_ACT_SHOT] * 2
    v = lm.get(key)
    assert (v.passed, v.dropped) == (2, 2)
    assert health_delta(reader, h0) == {"ratelimit_dropped": 2}
    n1 = reader.read_entries()
    moved = {k: c - n0.get(k, (0, 0))[0] for k, (c, _f) in n1.items() if c != n0.get(k, (0, 0))[0]}
    assert [(k[1], k[2], n) for k, n in moved.items()] == [(TARGET6, ASKER6, 4)]  # dropped ones counted too


def test_dad_and_advertisements_are_never_limited(dp, lm, reader):
    """RFC 4862 duplicate address detection and every NA pass a limit on their address untouched."""
    key = put(lm, ip=TARGET6, burst=1, tokens=0)
    frames = [F.dad_probe(TARGET6), F.neighbour_advertisement(TARGET6, solicited=True, dst=ASKER6),
              F.neighbour_advertisement(TARGET6)]
    for frame in frames:
        assert run(dp.fn_tc_eg.fd, frame, 3) == [TC_ACT_UNSPEC] * 3
    v = lm.get(key)
    assert (v.passed, v.dropped, v.would_drop) == (0, 0, 0)


def test_families_do_not_share_buckets(dp, lm):
    """An IPv6 limit whose first four bytes equal an IPv4 target's is a different entry (family in the key)."""
    put(lm, ip="c612:407::", burst=1, tokens=0)  # c6.12.04.07 = 198.18.4.7 as the first four bytes
    assert run(dp.fn_tc_eg.fd, req(), 3) == [TC_ACT_UNSPEC] * 3
    assert run(dp.fn_tc_eg.fd, F.neighbour_solicitation(ASKER6, "c612:407::"), 1) == [TC_ACT_SHOT]


def test_apply_and_refresh_an_ipv6_limit_through_limctl(dp, lm):
    key = LimitKey(LO, TARGET6, DIR_EGRESS)
    assert lm.apply(key, pps=2.0, burst=4, ttl_s=30, dry_run=True) is True
    assert lm.apply(key, pps=5.0, burst=8, ttl_s=30, dry_run=False) is False  # refreshed under the lock
    v = lm.get(key)
    assert (v.rate_mpps, v.burst, v.dry_run) == (5000, 8, False)
    assert lm.list_keys() == [key]


def test_creating_or_removing_a_limit_costs_o1_syscalls(dp, lm, monkeypatch):
    """Issue 13 item 6: with 600 limits in the map, creating a 601st and removing it again each take a
    handful of bpf(2) calls; they used to walk the whole map (GET_NEXT_KEY per entry) to recount it."""
    for i in range(600):
        lm.apply(LimitKey(LO, f"198.19.{i // 250}.{i % 250 + 1}", DIR_EGRESS), 1.0, 1, 60.0, False)
    assert lm.active() == 600 == lm.sync_active()
    calls: list[int] = []
    real = bpfsys._bpf

    def counting(cmd, attr):
        calls.append(cmd)
        return real(cmd, attr)

    monkeypatch.setattr(bpfsys, "_bpf", counting)
    key = LimitKey(LO, TARGET, DIR_EGRESS)
    assert lm.apply(key, 1.0, 1, 60.0, False) is True
    created, calls[:] = len(calls), []
    assert lm.take(key) is not None
    removed = len(calls)
    monkeypatch.undo()
    assert created <= 3 and removed <= 2, (created, removed)  # test-run, insert, active / take, active
    assert lm.active() == 600 == lm.sync_active()


def test_applied_only_once_the_kernel_took_it_and_a_full_map_is_an_event_and_a_metric(dp, lm):
    """Issue 13 item 6: `ratelimit-applied` only for a target the kernel holds an entry for. With the
    limits map full, the stage says so once (`ratelimit-map-full`) and counts the refused entries in
    health, and announces nothing; once there is room, the limits are applied and announced."""
    from types import SimpleNamespace

    from sensor.pipeline.limit_stage import RateLimitStage
    from sensor.pipeline.ratelimit import config_from_options

    cfg = config_from_options(mode="enforce", targets=["198.18.6.1", "198.18.6.2"], interval=1.0, attach="both")
    nobody = SimpleNamespace(verdicts=dict, alive=lambda ip: False, verdict=lambda ip: "healthy")
    stage = RateLimitStage(cfg, nobody, SimpleNamespace(get=lambda ip: None))
    runner = SimpleNamespace(datapath=dp, ifnames={LO: "lo"}, interval_hooks=[], health_sources=[])
    stage.install(runner)
    m = stage._map()
    filler = [LimitKey(999, f"198.19.{i // 250}.{i % 250 + 1}", DIR_EGRESS) for i in range(4096)]
    val = LimitVal(cost_ns=NS, burst=1, expires_ns=time.monotonic_ns() + 60 * NS).pack()
    for k in filler:  # someone else's interface: fills the map without touching what the stage holds
        bpfsys.map_update(m.fd, k.pack(), val, bpfsys.BPF_NOEXIST)
    m.sync_active()
    iv = SimpleNamespace(interval_s=1.0)

    def step(now: float) -> tuple[list[str], dict]:
        evs = stage.on_interval(iv, now)
        health: dict = {}
        for source in runner.health_sources:
            health.update(source())
        return [e["event"].get("action") for e in evs], health

    actions, health = step(1.0)
    assert actions == ["ratelimit-map-full"] and health["ratelimit_entries_refused"] == 2
    assert health["ratelimit_targets"] == 0
    actions, health = step(2.0)
    assert actions == [] and health["ratelimit_entries_refused"] == 2  # one warning per transition
    for k in filler[:10]:
        bpfsys.map_delete(m.fd, k.pack())
    m.sync_active()
    actions, health = step(3.0)
    assert actions == ["ratelimit-applied", "ratelimit-applied"] and health["ratelimit_entries_refused"] == 0
    assert health["ratelimit_targets"] == 2
    assert {k.ip for k in m.list_keys() if k.ifindex == LO} == {"198.18.6.1", "198.18.6.2"}
