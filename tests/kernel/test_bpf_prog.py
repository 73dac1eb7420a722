"""The kernel program in the real kernel: BPF_PROG_TEST_RUN with crafted frames through the XDP and both
tc entry points, asserting the exact counter changes each frame causes (and nothing else)."""

from __future__ import annotations

import ctypes
import errno
from collections import Counter

import pytest

from sensor.kernel import bpfsys
from sensor.kernel.layout import ARP_KEY, ARP_VAL, ND_KEY, health_names
from sensor.kernel.reader import pair_totals, target_totals
from tests.support import frames as F

XDP_PASS = 2
TC_ACT_UNSPEC = 0xFFFFFFFF  # -1: we never end the tc chain for other filters
VLAN = F.ETH_P_8021Q
QINQ = F.ETH_P_8021AD
FAST_COUNTERS = ("fast_hits", "fast_claims", "fast_collisions")


ENTRY_POINTS = {
    "xdp": ("fn_xdp", XDP_PASS, 0),
    "tc_in": ("fn_tc_in", TC_ACT_UNSPEC, 0),
    "tc_eg": ("fn_tc_eg", TC_ACT_UNSPEC, 1),
}


class Probe:
    """Runs one frame and returns what changed: health deltas, per-target and per-pair deltas."""

    def __init__(self, dp, reader, entry: str) -> None:
        attr, self.retval, self.dir = ENTRY_POINTS[entry]
        self.fd = getattr(dp, attr).fd
        self.reader = reader

    def read(self):
        entries = self.reader.read_entries()
        return self.reader.read_health(), target_totals(entries), pair_totals(entries)

    def run(self, frame: bytes):
        h0, t0, p0 = self.read()
        res = bpfsys.prog_test_run(self.fd, frame)
        assert res.retval == self.retval
        assert res.data_out == frame  # observe only: the frame is never modified
        h1, t1, p1 = self.read()
        health = {k: h1[k] - h0[k] for k in h1 if h1[k] != h0[k]}
        health.pop("inserts", None)  # depends on whether an earlier test created the entry
        # Where a counted frame went (a fast-path slot, or the LRU map after a collision) depends on what
        # earlier tests left in the slots; that it went to exactly one place does not.
        fast = sum(health.pop(k, 0) for k in FAST_COUNTERS)
        targets = {}
        for key, v in t1.items():
            d = tuple(a - b for a, b in zip(v, t0.get(key, (0, 0, 0, 0)), strict=True))
            if any(d):
                _ifindex, ip, vlan, direction = key
                assert direction == self.dir
                targets[(ip, vlan)] = dict(zip(("requests", "replies", "gratuitous", "probes"), d, strict=True))
        pairs = {}
        for key, n in p1.items():
            d = n - p0.get(key, 0)
            if d:
                pairs[(key[1], key[2], key[3])] = d
        assert fast == sum(sum(t.values()) for t in targets.values())
        return health, targets, pairs


@pytest.fixture(params=list(ENTRY_POINTS))
def probe(request, dp, reader) -> Probe:
    return Probe(dp, reader, request.param)


def req(ip: str, vlan: int = 0, n: int = 1):
    return {(ip, vlan): {"requests": n, "replies": 0, "gratuitous": 0, "probes": 0}}


def test_struct_layout_matches_bcc(dp):
    """The user-space struct formats mirror bpf/arp_sensor.h exactly (bcc computed these from the C)."""
    assert ctypes.sizeof(dp.bpf[b"arp_counts"].Key) == ARP_KEY.size == 24
    assert ND_KEY.size == 48  # no map holds one yet: the header's _Static_assert checks the C side
    assert ctypes.sizeof(dp.bpf[b"arp_counts"].Leaf) == ARP_VAL.size  # one value per entry, not per CPU
    assert ctypes.sizeof(dp.bpf[b"health"].Leaf) // bpfsys.possible_cpus() == 8 * len(health_names())


def test_request(probe):
    health, targets, pairs = probe.run(F.arp_request("198.18.1.1", "198.18.1.2"))
    assert health == {"arp": 1, "request": 1}
    assert targets == req("198.18.1.2")
    assert pairs == {("198.18.1.1", "198.18.1.2", 0): 1}


def test_reply_counts_for_its_sender(probe):
    health, targets, pairs = probe.run(F.arp_reply("198.18.1.2", "198.18.1.1"))
    assert health == {"arp": 1, "reply": 1}
    assert targets == {("198.18.1.2", 0): {"requests": 0, "replies": 1, "gratuitous": 0, "probes": 0}}
    assert pairs == {}


@pytest.mark.parametrize("op", [F.ARP_REQUEST, F.ARP_REPLY])
def test_gratuitous(probe, op):
    health, targets, pairs = probe.run(F.arp_gratuitous("198.18.1.3", op=op))
    assert health == {"arp": 1, "gratuitous": 1}
    assert targets == {("198.18.1.3", 0): {"requests": 0, "replies": 0, "gratuitous": 1, "probes": 0}}
    assert pairs == {}


def test_probe_is_not_a_request(probe):
    health, targets, pairs = probe.run(F.arp_probe("198.18.1.4"))
    assert health == {"arp": 1, "probe": 1}
    assert targets == {("198.18.1.4", 0): {"requests": 0, "replies": 0, "gratuitous": 0, "probes": 1}}
    assert pairs == {}


def test_vlan_8021q(probe):
    health, targets, pairs = probe.run(F.arp_request("198.18.1.1", "198.18.1.5", vlans=[(VLAN, 100)]))
    assert health == {"arp": 1, "request": 1}
    assert targets == req("198.18.1.5", vlan=100)
    assert pairs == {("198.18.1.1", "198.18.1.5", 100): 1}


def test_qinq_keeps_the_outer_tag(probe):
    frame = F.arp_request("198.18.1.1", "198.18.1.6", vlans=[(QINQ, 200), (VLAN, 300)])
    health, targets, _ = probe.run(frame)
    assert health == {"arp": 1, "request": 1}
    assert targets == req("198.18.1.6", vlan=200)


def test_double_8021q(probe):
    frame = F.arp_request("198.18.1.1", "198.18.1.7", vlans=[(VLAN, 10), (VLAN, 20)])
    health, targets, _ = probe.run(frame)
    assert health == {"arp": 1, "request": 1}
    assert targets == req("198.18.1.7", vlan=10)


def test_three_tags_are_not_parsed(probe):
    frame = F.arp_request("198.18.1.1", "198.18.1.8", vlans=[(QINQ, 1), (VLAN, 2), (VLAN, 3)])
    health, targets, pairs = probe.run(frame)
    assert health == {"vlan_too_deep": 1}
    assert targets == {} and pairs == {}


def test_padded_and_unpadded_frames_count_the_same(probe):
    padded = F.arp_request("198.18.1.1", "198.18.1.9", pad_to=60)
    bare = F.arp_request("198.18.1.1", "198.18.1.9", pad_to=0)
    assert len(padded) == 60 and len(bare) == 42
    for frame in (padded, bare):
        health, targets, _ = probe.run(frame)
        assert health == {"arp": 1, "request": 1}
        assert targets == req("198.18.1.9")


@pytest.mark.parametrize("cut", [14, 15, 20, 21, 27, 41])
def test_truncated_arp_is_malformed(probe, cut):
    frame = F.arp_request("198.18.1.1", "198.18.1.10", pad_to=0)[:cut]
    health, targets, pairs = probe.run(frame)
    assert health == {"arp": 1, "malformed": 1}
    assert targets == {} and pairs == {}


@pytest.mark.parametrize("field", [{"hrd": 6}, {"pro": 0x86DD}, {"hln": 8}, {"pln": 16}, {"hln": 0}])
def test_wrong_header_fields_are_malformed(probe, field):
    payload = F.arp_payload(F.ARP_REQUEST, b"\x02" * 6, "198.18.1.1", b"\0" * 6, "198.18.1.11", **field)
    health, targets, pairs = probe.run(F.ethernet(F.BROADCAST, b"\x02" * 6, F.ETH_P_ARP, payload, pad_to=60))
    assert health == {"arp": 1, "malformed": 1}
    assert targets == {} and pairs == {}


def test_other_operation(probe):
    payload = F.arp_payload(3, b"\x02" * 6, "198.18.1.1", b"\0" * 6, "198.18.1.12")  # RARP request
    health, targets, _ = probe.run(F.ethernet(F.BROADCAST, b"\x02" * 6, F.ETH_P_ARP, payload, pad_to=60))
    assert health == {"arp": 1, "other_op": 1}
    assert targets == {}


def test_vlan_tag_cut_short_is_a_runt(probe):
    frame = F.BROADCAST + b"\x02" * 6 + VLAN.to_bytes(2, "big") + b"\x00"
    health, targets, _ = probe.run(frame)
    assert health == {"runt": 1}
    assert targets == {}


@pytest.mark.parametrize("frame", [F.ipv4_udp(), F.ipv6_udp(), F.ethernet(F.BROADCAST, b"\x02" * 6, 0x88B5, b"")],
                         ids=["ipv4", "ipv6", "eth-header-only"])
def test_non_arp_only_counts_the_frame(probe, frame):
    health, targets, pairs = probe.run(frame)
    assert health == {}  # the fast path touches no map at all
    assert targets == {} and pairs == {}


@pytest.mark.parametrize("size", [0, 1, 13])
def test_runt_below_ethernet_header_is_refused_by_the_kernel(dp, reader, size):
    """The kernel will not run XDP/tc on less than an Ethernet header (nor can a NIC deliver one):
    BPF_PROG_TEST_RUN says EINVAL and no counter moves."""
    before = reader.read_health()
    for fn in (dp.fn_xdp, dp.fn_tc_in, dp.fn_tc_eg):
        with pytest.raises(OSError) as exc:
            bpfsys.prog_test_run(fn.fd, b"\xff" * size)
        assert exc.value.errno == errno.EINVAL
    assert reader.read_health() == before


def test_repeat_counts_every_run(dp, reader):
    """A batch of 1000 runs counts exactly 1000 requests: per-CPU counters lose nothing."""
    before = target_totals(reader.read_entries())
    bpfsys.prog_test_run(dp.fn_xdp.fd, F.arp_request("198.18.2.1", "198.18.2.2"), repeat=1000)
    after = target_totals(reader.read_entries())
    key = next(k for k in after if k[1] == "198.18.2.2" and k[3] == 0)
    assert after[key][0] - before.get(key, (0,))[0] == 1000


def test_mixed_burst_matches_a_tally(dp, reader):
    """Many frame kinds interleaved: the health totals equal a tally of what was sent."""
    mix = ([F.arp_request("198.18.3.1", f"198.18.3.{i}") for i in range(2, 40)]
           + [F.arp_reply(f"198.18.3.{i}", "198.18.3.1") for i in range(2, 10)]
           + [F.arp_probe("198.18.3.99"), F.arp_gratuitous("198.18.3.98"), F.ipv4_udp(), F.ipv6_udp()])
    expect = Counter(arp=len(mix) - 2, request=38, reply=8, probe=1, gratuitous=1)
    h0 = reader.read_health()
    for frame in mix:
        bpfsys.prog_test_run(dp.fn_xdp.fd, frame)
    h1 = reader.read_health()
    got = Counter({k: h1[k] - h0[k] for k in h1 if h1[k] != h0[k] and k != "inserts"})
    assert sum(got.pop(k, 0) for k in FAST_COUNTERS) == 38 + 8 + 1 + 1  # each counted frame in one place
    assert got == expect


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_key_carries_the_speakers_mac_and_a_mismatch_flag(dp, reader, entry):
    """Each entry holds the ARP sender hardware address of its frames; a frame whose Ethernet source
    differs from it (a proxy, a bridge, a spoofer) is its own entry, flagged. Two MACs for one IP are two
    entries, each counted exactly (issue 16 reads bindings from these)."""
    from sensor.kernel.layout import KEY_F_MAC_MISMATCH, KIND_REPLY, KIND_REQUEST

    fd = getattr(dp, ENTRY_POINTS[entry][0]).fd
    d = ENTRY_POINTS[entry][2]
    a, b, c = F.mac("02:00:00:00:0a:01"), F.mac("02:00:00:00:0a:02"), F.mac("02:00:00:00:0a:03")
    before = reader.read_entries()
    own = F.arp_request("198.18.9.1", "198.18.9.2", sha=a)
    proxied = own[:6] + c + own[12:]  # Ethernet source c, ARP sha a
    for frame, times in ((own, 3), (proxied, 2), (F.arp_reply("198.18.9.2", "198.18.9.1", sha=b), 1),
                         (F.arp_reply("198.18.9.2", "198.18.9.1", sha=c), 4)):
        for _ in range(times):
            bpfsys.prog_test_run(fd, frame)
    after = reader.read_entries()
    got = {}
    for key, (n, _first) in after.items():
        _ifindex, ip, peer, _vlan, dd, kind, mac, flags = key
        if dd == d and n != before.get(key, (0, 0))[0]:
            got[(ip, peer, kind, mac, flags)] = n - before.get(key, (0, 0))[0]
    assert got == {
        ("198.18.9.2", "198.18.9.1", KIND_REQUEST, "02:00:00:00:0a:01", 0): 3,
        ("198.18.9.2", "198.18.9.1", KIND_REQUEST, "02:00:00:00:0a:01", KEY_F_MAC_MISMATCH): 2,
        ("198.18.9.2", "0.0.0.0", KIND_REPLY, "02:00:00:00:0a:02", 0): 1,
        ("198.18.9.2", "0.0.0.0", KIND_REPLY, "02:00:00:00:0a:03", 0): 4,
    }
    # The per-pair view still sums a sender over its MACs.
    assert pair_totals(after)[(1, "198.18.9.1", "198.18.9.2", 0, d)] - \
        pair_totals(before).get((1, "198.18.9.1", "198.18.9.2", 0, d), 0) == 5


def test_fast_path_spreads_keys_over_the_slots(dp, reader):
    """Keys that differ only in the last octet of the target, or only in the direction, get their own
    fast-path slots (a multiplicative hash without folding would give them all one slot: every frame after
    the first would collide). 64 keys into 1024 empty slots: a handful of collisions by chance, not 63."""
    reader.read_fast()  # a fresh half
    h0 = reader.read_health()
    for i in range(64):
        bpfsys.prog_test_run(dp.fn_xdp.fd, F.arp_request("198.18.7.1", f"198.18.7.{100 + i}"))
    for i in range(16):
        frame = F.arp_request("198.18.7.2", f"198.18.7.{200 + i}")
        bpfsys.prog_test_run(dp.fn_xdp.fd, frame)  # ingress
        bpfsys.prog_test_run(dp.fn_tc_eg.fd, frame)  # the same key but for the direction
    h1 = reader.read_health()
    claims, collisions = h1["fast_claims"] - h0["fast_claims"], h1["fast_collisions"] - h0["fast_collisions"]
    assert claims + collisions == 96 and collisions <= 12, (claims, collisions)


def test_fast_path_without_membarrier_reads_each_half_one_interval_late():
    """Where the kernel refuses membarrier(MEMBARRIER_CMD_GLOBAL) (nohz_full), the reader flips and reads
    the retired half at the next drain instead: every count still arrives exactly once, one drain late."""
    from sensor.kernel.datapath import Datapath
    from sensor.kernel.reader import MapReader

    own = Datapath(max_entries=256)
    r = MapReader(own.maps, 256)
    r.fast.grace = "interval"
    frame = F.arp_request("198.18.8.1", "198.18.8.2")
    got = []
    for burst in (3, 0, 5, 0, 0):
        for _ in range(burst):
            bpfsys.prog_test_run(own.fn_xdp.fd, frame)
        got.append(int(r.read_fast().count.sum()))
    assert got == [0, 3, 0, 5, 0]
    assert r.read_health()["fast_claims"] + r.read_health()["fast_hits"] == 8


def test_two_cpus_adding_to_one_lru_entry_at_once_lose_no_count():
    """The LRU maps hold one value for all CPUs (docs/architecture.md, "Why the LRU maps are not per-CPU"),
    so two CPUs counting the same key at the same moment must add atomically. With the fast path off every
    frame goes to the LRU entry; one thread per CPU runs the same frame 300k times, concurrently. A plain
    `+=` loses thousands of counts this way; the atomic add loses none."""
    import os
    import threading

    from sensor.kernel.datapath import Datapath
    from sensor.kernel.reader import MapReader

    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    own = Datapath(max_entries=256, fast_slots=0)
    reader = MapReader(own.maps, 256)
    frame = F.arp_request("198.18.9.1", "198.18.9.2")
    bpfsys.prog_test_run(own.fn_xdp.fd, frame)  # create the entry first: both threads then only add to it
    n, go = 300_000, threading.Barrier(2)

    def hammer(cpu: int) -> None:
        os.sched_setaffinity(0, {cpu})  # this thread only: BPF_PROG_TEST_RUN runs on the calling CPU
        go.wait()
        bpfsys.prog_test_run(own.fn_xdp.fd, frame, repeat=n)

    threads = [threading.Thread(target=hammer, args=(c,)) for c in cpus]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = [c for k, (c, _f) in reader.read_entries().items() if k[1] == "198.18.9.2"]
    assert counts == [1 + 2 * n]
    assert reader.read_health()["request"] == 1 + 2 * n
