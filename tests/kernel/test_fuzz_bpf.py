"""Fuzzing the kernel program against the reference parser (tests/support/refparse.py).

Hypothesis generates batches of frames: random bytes, valid ARP with one field mutated, valid IPv6
neighbour solicitations/advertisements (and DAD) with one field mutated or an extension header, every
truncation of a frame, 0-3 VLAN tags, oversized and jumbo frames, 60-byte padded frames. Each frame goes through
BPF_PROG_TEST_RUN in the real kernel; after every frame the health counters must have moved exactly as
the reference parser says (one classification per frame, malformed counted exactly), and after every
batch the ARP map and the ND map must hold exactly the reference's tally (nothing counted twice,
nothing lost, every key created once). The maps are emptied before each batch so a shrunk failing
example replays identically."""

from __future__ import annotations

import errno
import random
import socket
import struct
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.kernel import bpfsys
from sensor.kernel.layout import (
    FAMILY_IPV4,
    KEY_F_MAC_MISMATCH,
    KIND_GRATUITOUS,
    KIND_PROBE,
    KIND_REPLY,
    KIND_REQUEST,
    header_define,
)
from sensor.kernel.reader import MapReader, pair_totals, target_totals
from tests.support import frames as F
from tests.support.fixtures_bpf import TEST_MAP_SIZE
from tests.support.refparse import ARP_LEN, ND_KINDS, TARGET_FIELD, classify
from tests.support.refparse import KEY_F_MAC_MISMATCH as REF_MAC_MISMATCH

XDP_PASS, TC_ACT_UNSPEC = 2, 0xFFFFFFFF
ENTRY_POINTS = {"xdp": ("fn_xdp", XDP_PASS, 0), "tc_in": ("fn_tc_in", TC_ACT_UNSPEC, 0),
                "tc_eg": ("fn_tc_eg", TC_ACT_UNSPEC, 1)}
MAP_SIZE = 16384  # far above the keys one batch creates: an eviction would be a bug, and is checked
READ_MAX = 4096
MIN_FRAMES = 100_000
KINDS = ("requests", "replies", "gratuitous", "probes")
KINDS6 = ("solicitations", "advertisements_solicited", "advertisements_unsolicited", "dad")  # same slots, for ND
FAST_COUNTERS = ("fast_hits", "fast_claims", "fast_collisions")
# Few fast-path slots, so keys collide often: both places (slot and LRU map) and slot reuse across the
# epoch flips of every batch read are exercised.
FAST_SLOTS = 2
KIND_NAMES = {KIND_REQUEST: "request", KIND_REPLY: "reply", KIND_GRATUITOUS: "gratuitous", KIND_PROBE: "probe"}


@pytest.fixture(scope="module")
def dp():
    from sensor.kernel.datapath import Datapath

    return Datapath(max_entries=MAP_SIZE, fast_slots=FAST_SLOTS)


@pytest.fixture(scope="module")
def reader(dp):
    return MapReader(dp.maps, READ_MAX)


# -- strategies ---------------------------------------------------------------------------------------
# A small pool of addresses so keys repeat within a batch (a double count shows as a wrong tally),
# plus 0.0.0.0 (probes) and arbitrary 32-bit values.
POOL = [f"198.18.{i}.{j}" for i in (0, 7) for j in (1, 2, 3, 255)] + ["198.19.255.254", "0.0.0.0"]
ips = st.one_of(st.sampled_from(POOL), st.integers(0, 2**32 - 1).map(lambda n: socket.inet_ntoa(n.to_bytes(4, "big"))))
tag = st.tuples(st.sampled_from([F.ETH_P_8021Q, F.ETH_P_8021AD, F.ETH_P_8021Q]), st.integers(0, 0xFFFF))
tags = st.one_of(st.just([]), st.lists(tag, max_size=3))
# ARP header fields (offset, width) that a mutation may overwrite with any value.
ARP_FIELDS = {"hrd": (0, 2), "pro": (2, 2), "hln": (4, 1), "pln": (5, 1), "op": (6, 2), "sha": (8, 6),
              "spa": (14, 4), "tha": (18, 6), "tpa": (24, 4)}


def _filler(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


@st.composite
def tails(draw, frame: bytes) -> bytes:
    """None, padding to the 60-byte minimum, garbage after the header, oversized or jumbo."""
    how = draw(st.sampled_from(["bare", "pad60", "pad60", "junk", "oversized", "jumbo"]))
    if how == "bare":
        return frame
    if how == "pad60":
        return frame.ljust(60, b"\0")
    seed = draw(st.integers(0, 2**32))
    if how == "junk":
        return frame + _filler(seed, draw(st.integers(1, 64)))
    if how == "oversized":
        return frame + _filler(seed, draw(st.integers(1400, 1514)) - len(frame))
    return frame + _filler(seed, 9018 - len(frame))


@st.composite
def arp_frames(draw) -> bytes:
    """A valid Ethernet/IPv4 ARP frame (0-3 tags), then at most one field mutated to any value."""
    op = draw(st.sampled_from([1, 1, 2, 2, 3, 4, 8, 9]))
    spa = draw(st.one_of(ips, st.just("0.0.0.0")))  # 0.0.0.0 often enough: probes are a class of their own
    tpa = draw(st.one_of(ips, st.just(spa)))  # sender == target: gratuitous
    sha = draw(st.binary(min_size=6, max_size=6))
    payload = bytearray(F.arp_payload(op, sha, spa, b"\0" * 6, tpa))
    field = draw(st.sampled_from([None, None, *ARP_FIELDS]))
    if field is not None:
        off, width = ARP_FIELDS[field]
        value = draw(st.one_of(st.integers(0, 8), st.integers(0, 2 ** (8 * width) - 1)))
        payload[off:off + width] = value.to_bytes(width, "big")
    ethertype = F.ETH_P_ARP
    if draw(st.integers(0, 9)) == 0:  # mutate the ethertype too, now and then
        ethertype = draw(st.sampled_from([F.ETH_P_IP, F.ETH_P_8021Q, 0x8035, 0x0000, 0xFFFF]))
    # Usually the Ethernet source is the sha (a host speaking for itself); sometimes not (a proxy, a bridge,
    # a spoofer): the key's MAC-mismatch flag.
    src = sha if draw(st.integers(0, 3)) else draw(st.binary(min_size=6, max_size=6))
    frame = F.ethernet(F.BROADCAST, src, ethertype, bytes(payload), vlans=draw(tags))
    return draw(tails(frame))


# IPv6: a small pool again (repeats), "::" (DAD), and arbitrary 128-bit values.
POOL6 = [f"2001:db8::{i:x}:{j:x}" for i in (0, 7) for j in (1, 2, 3, 0xFFFF)] + ["2001:db8:ffff::fe", "::"]
ip6s = st.one_of(st.sampled_from(POOL6), st.integers(0, 2**128 - 1).map(
    lambda n: socket.inet_ntop(socket.AF_INET6, n.to_bytes(16, "big"))))
macs = st.sampled_from([b"\x02\x00\x00\x00\x06\x01", b"\x02\x00\x00\x00\x06\x02"])
# IPv6 + ND fields (offset from the IPv6 header, width) a mutation may overwrite: version/class, next
# header, hop limit, source, ICMPv6 type, code, NA flags, the target, the first option's type and length.
ND_FIELDS = {"version": (0, 1), "nexthdr": (6, 1), "hop_limit": (7, 1), "src": (8, 16), "type": (40, 1),
             "code": (41, 1), "flags": (44, 1), "target": (48, 16), "opt_type": (64, 1), "opt_len": (65, 1)}
EXT_TYPES = [0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254, 59, 6, 17]  # extension headers, then not


@st.composite
def nd_frames(draw) -> bytes:
    """A valid NS, DAD or NA (0-3 tags, option MAC equal to or unlike the Ethernet source), maybe behind
    an extension header, then at most one field mutated to any value."""
    what = draw(st.sampled_from(["ns", "ns", "dad", "na", "na"]))
    smac, lladdr = draw(macs), draw(macs)
    target, vlans = draw(ip6s), draw(tags)
    ext = F.hop_by_hop(draw(st.sampled_from(EXT_TYPES))) if draw(st.integers(0, 9)) == 0 else b""
    if what == "na":
        frame = F.neighbour_advertisement(target, smac=smac, solicited=draw(st.booleans()), vlans=vlans,
                                          lladdr=lladdr)
    else:
        frame = F.neighbour_solicitation("::" if what == "dad" else draw(ip6s), target, smac, vlans, lladdr=lladdr,
                                         ext=ext)
    frame = bytearray(frame)
    field = draw(st.sampled_from([None, None, *ND_FIELDS]))
    start = 14 + 4 * len(vlans)
    if field is not None and not ext:
        off, width = ND_FIELDS[field]
        value = draw(st.one_of(st.integers(0, 8), st.sampled_from([58, 135, 136, 255, 0x40, 0x60]),
                               st.integers(0, 2 ** (8 * width) - 1)))
        frame[start + off:start + off + width] = value.to_bytes(width, "big")
    return draw(tails(bytes(frame)))


@st.composite
def random_frames(draw) -> bytes:
    """Random bytes, often with an ARP, IPv6 or VLAN ethertype planted so the parser gets past byte 14
    (and for IPv6 now and then ICMPv6 and an ND type, so random bytes reach the ND checks)."""
    body = bytearray(draw(st.binary(min_size=0, max_size=96)))
    plant = draw(st.sampled_from([None, F.ETH_P_ARP, F.ETH_P_IPV6, F.ETH_P_8021Q, F.ETH_P_8021AD]))
    if plant is not None and len(body) >= 14:
        body[12:14] = plant.to_bytes(2, "big")
        if plant in (F.ETH_P_8021Q, F.ETH_P_8021AD) and len(body) >= 18 and draw(st.booleans()):
            body[16:18] = draw(st.sampled_from([F.ETH_P_ARP, F.ETH_P_IPV6])).to_bytes(2, "big")
        if plant == F.ETH_P_IPV6 and len(body) >= 14 + 41 and draw(st.booleans()):
            body[14 + 6] = 58
            body[14 + 40] = draw(st.sampled_from([135, 136]))
            if draw(st.booleans()):
                body[14 + 7], body[14 + 41] = 255, 0
    return bytes(body)


@st.composite
def batches(draw) -> tuple[str, list[bytes]]:
    entry = draw(st.sampled_from(list(ENTRY_POINTS)))
    out: list[bytes] = []
    for frame in draw(st.lists(st.one_of(arp_frames(), nd_frames(), random_frames()), min_size=4, max_size=16)):
        out.append(frame)
        # Truncated at every offset through the headers (Ethernet, 3 tags, ARP or IPv6 + ND + option) and
        # a bit beyond; below the Ethernet header only a few cuts (all refused the same way,
        # test_every_truncation... has all).
        cuts = [0, 1, 13, *range(14, min(len(frame), 14 + 12 + max(ARP_LEN, 40 + 24 + 8) + 8))]
        out.extend(frame[:cut] for cut in cuts if cut < len(frame))
    return entry, out


def tc_test_run_refuses(frame: bytes) -> bool:
    """Frames BPF_PROG_TEST_RUN itself refuses for tc programs (before our program runs): larger than a
    page, or an IPv4/IPv6 ethertype without room for the IP header (the harness reads it to fill in a
    socket). All are frames our program ignores anyway; XDP takes them all (jumbo as fragments)."""
    ethertype = int.from_bytes(frame[12:14], "big")
    return (len(frame) > 3000 or (ethertype == F.ETH_P_IP and len(frame) < 14 + 20)
            or (ethertype == F.ETH_P_IPV6 and len(frame) < 14 + 40))


# -- the oracle check ---------------------------------------------------------------------------------
class Harness:
    def __init__(self, dp, reader) -> None:
        self.dp, self.reader = dp, reader
        self.frames = 0
        self.refused = 0
        self.kinds: Counter = Counter()
        self.placed: Counter = Counter()  # fast_hits / fast_claims / fast_collisions over all frames

    def reset_maps(self) -> None:
        for name in (b"arp_counts", b"nd_counts"):
            for _ in self.dp.bpf[name].items_lookup_and_delete_batch():
                pass
        self.reader.forget_fast_totals()
        assert not self.reader.read_entries()

    def run_batch(self, entry: str, frames: list[bytes]) -> None:
        attr, retval, direction = ENTRY_POINTS[entry]
        fd = getattr(self.dp, attr).fd
        self.reset_maps()
        h_start = prev = self.reader.read_health()
        want_targets: dict[tuple[str, int], Counter] = {}
        want_pairs: Counter = Counter()
        want_entries: Counter = Counter()  # count per map entry (ip, peer, vlan, kind, mac, flags)
        for frame in frames:
            v = classify(frame)
            self.frames += 1
            try:
                res = bpfsys.prog_test_run(fd, frame)
            except OSError as e:
                assert e.errno == errno.EINVAL, (entry, frame.hex())
                assert v.refused or (entry != "xdp" and tc_test_run_refuses(frame)), (entry, frame[:64].hex())
                assert self.reader.read_health() == prev, "a refused frame moved a counter"
                self.refused += 1
                continue
            assert not v.refused, f"kernel ran a {len(frame)}-byte frame"
            assert res.retval == retval
            assert res.data_out[:len(frame)] == frame[:len(res.data_out)], "the program modified a frame"
            cur = self.reader.read_health()
            moved = {k: cur[k] - prev[k] for k in cur if cur[k] != prev[k] and k not in ("inserts", "nd_inserts")}
            # A counted frame (ARP or ND) goes to exactly one place: its family's fast-path slot (claim or
            # hit) or, on a collision, its family's LRU map.
            placed = {k: moved.pop(k) for k in FAST_COUNTERS if k in moved}
            assert sum(placed.values()) == int(bool(v.kind)), (entry, frame[:64].hex(), placed)
            self.placed.update(placed)
            assert moved == dict(Counter(v.health)), f"{entry} frame {frame[:64].hex()}: kernel {moved}, reference {v}"
            prev = cur
            self.kinds[v.health[-1] if v.health else "ignored"] += 1
            if v.kind:
                want_targets.setdefault((v.ip, v.vlan), Counter())[TARGET_FIELD[v.kind]] += 1
                want_entries[v.entry] += 1
            if v.pair:
                want_pairs[(*v.pair, v.vlan)] += 1

        # Both maps, as the reader gives them to the aggregator: IPv6 rows carry ND kinds in the ARP slots.
        entries = self.reader.read_entries()
        got_targets: dict[tuple[str, int], Counter] = {}
        for (_ifindex, ip, vlan, d), val in target_totals(entries).items():
            assert d == direction
            kinds = KINDS6 if ":" in ip else KINDS
            got_targets[(ip, vlan)] = Counter({k: n for k, n in zip(kinds, val[:4], strict=True) if n})
        assert got_targets == want_targets
        got_pairs = Counter()
        for (_ifindex, s, t, vlan, d), n in pair_totals(entries).items():
            assert d == direction
            got_pairs[(s, t, vlan)] = n
        assert got_pairs == want_pairs
        # Every LRU key was created exactly once, nothing was evicted or refused by either map, and the LRU
        # maps hold exactly the frames that found their fast-path slot taken by another key.
        h_end = self.reader.read_health()
        assert len(entries) == len(want_entries)
        got_entries = Counter()
        for (_ifindex, ip, peer, vlan, _d, kind, mac, flags), (n, _first) in entries.items():
            got_entries[(ip, peer, vlan, ND_KINDS[kind] if ":" in ip else KIND_NAMES[kind], mac, flags)] += n
        assert got_entries == want_entries
        lru = self.reader.read_table()
        arp_lru = lru.family == FAMILY_IPV4
        assert h_end["inserts"] - h_start["inserts"] == int(arp_lru.sum())
        assert h_end["nd_inserts"] - h_start["nd_inserts"] == int((~arp_lru).sum())
        assert int(lru.count.sum()) == h_end["fast_collisions"] - h_start["fast_collisions"]
        assert h_end["insert_fail"] == h_start["insert_fail"]
        assert h_end["nd_insert_fail"] == h_start["nd_insert_fail"]


def test_kernel_matches_the_reference_parser(dp, reader):
    harness = Harness(dp, reader)

    @settings(max_examples=100, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(batch=batches())
    def check(batch):
        harness.run_batch(*batch)

    kinds = ("ignored", "runt", "vlan_too_deep", "malformed", "other_op", "probe", "gratuitous", "request", "reply",
             "nd_ext_hdr", "nd_malformed", "nd_dad", "nd_solicit", "nd_advert_solicited", "nd_advert_unsolicited")

    def enough() -> bool:
        return harness.frames >= MIN_FRAMES and all(harness.kinds[k] >= 50 for k in kinds)

    # Each round is a hypothesis run; rounds until the frame budget and every kind's floor are met. Under
    # CI=true hypothesis derandomizes (the same examples every run), so a floor one round misses must be
    # reached by more rounds, not by luck: 42 gratuitous frames in the first 100k failed every CI run.
    for _ in range(40):
        check()
        if enough():
            break
    # Enough frames went through, and of every kind: the generators reach all branches of the parser.
    print(f"fuzz: {harness.frames} frames, {harness.refused} refused, {dict(harness.kinds)}, "
          f"placed {dict(harness.placed)}")
    assert harness.frames >= MIN_FRAMES, harness.frames
    for kind in kinds:
        assert harness.kinds[kind] >= 50, harness.kinds
    assert harness.refused >= 100
    # All three places were used: hits and collisions by the hundreds; claims are rarer (a batch frees every
    # slot, then only its first keys per CPU find one free: ~100-140 over a run), so a floor well below that.
    assert harness.placed["fast_hits"] >= 100 and harness.placed["fast_collisions"] >= 100, harness.placed
    assert harness.placed["fast_claims"] >= 20, harness.placed


def test_every_truncation_of_every_frame_kind(dp, reader):
    """Deterministic companion to the fuzzer: each documented frame kind cut at every length, on every
    entry point. Below 14 bytes the kernel refuses the run (EINVAL) and nothing moves."""
    harness = Harness(dp, reader)
    kinds = [F.arp_request("198.18.1.1", "198.18.1.2", vlans=[(F.ETH_P_8021AD, 5), (F.ETH_P_8021Q, 6)]),
             F.arp_reply("198.18.1.2", "198.18.1.1", vlans=[(F.ETH_P_8021Q, 7)]),
             F.arp_probe("198.18.1.3"), F.arp_gratuitous("198.18.1.4"),
             F.arp_request("198.18.1.1", "198.18.1.2", vlans=[(F.ETH_P_8021Q, 1)] * 3)]
    for entry in ENTRY_POINTS:
        for frame in kinds:
            harness.run_batch(entry, [frame[:cut] for cut in range(len(frame) + 1)])
    assert harness.refused == len(ENTRY_POINTS) * len(kinds) * 14
    assert {"runt", "vlan_too_deep", "malformed", "request", "reply", "probe", "gratuitous"} <= set(harness.kinds)


def test_every_truncation_of_every_nd_frame_kind(dp, reader):
    """The same for neighbour discovery: NS (untagged, one and two tags), DAD, both NAs, an NS behind a
    hop-by-hop header, cut at every length. Below 14 bytes every run is refused; tc also refuses an
    untagged IPv6 frame shorter than its IPv6 header (54 bytes)."""
    harness = Harness(dp, reader)
    kinds = [F.neighbour_solicitation("2001:db8::1", "2001:db8::2"),
             F.neighbour_solicitation("2001:db8::1", "2001:db8::2", vlans=[(F.ETH_P_8021Q, 7)]),
             F.neighbour_solicitation("2001:db8::1", "2001:db8::2", vlans=[(F.ETH_P_8021AD, 5), (F.ETH_P_8021Q, 6)]),
             F.dad_probe("2001:db8::3"), F.neighbour_advertisement("2001:db8::2", solicited=True, dst="2001:db8::1"),
             F.neighbour_advertisement("2001:db8::4"),
             F.neighbour_solicitation("2001:db8::1", "2001:db8::2", ext=F.hop_by_hop())]
    want_refused = 0
    for entry in ENTRY_POINTS:
        for frame in kinds:
            harness.run_batch(entry, [frame[:cut] for cut in range(len(frame) + 1)])
            untagged = frame[12:14] == F.ETH_P_IPV6.to_bytes(2, "big")
            want_refused += 14 + (54 - 14 if entry != "xdp" and untagged else 0)
    assert harness.refused == want_refused
    assert {"nd_malformed", "nd_solicit", "nd_dad", "nd_advert_solicited", "nd_advert_unsolicited",
            "nd_ext_hdr", "ignored"} <= set(harness.kinds)


def test_reference_parser_on_known_frames():
    """The reference itself, on frames whose meaning the docs state (so the oracle is not circular)."""
    assert classify(F.arp_request("198.18.0.1", "198.18.0.2")).kind == "request"
    assert classify(F.arp_request("198.18.0.1", "198.18.0.2")).pair == ("198.18.0.1", "198.18.0.2")
    assert classify(F.arp_reply("198.18.0.2", "198.18.0.1")).ip == "198.18.0.2"
    assert classify(F.arp_probe("198.18.0.3")).health == ("arp", "probe")
    assert classify(F.arp_gratuitous("198.18.0.4", op=F.ARP_REPLY)).kind == "gratuitous"
    # A probe for 0.0.0.0 has sender == target but is a probe: the order is probe before gratuitous.
    assert classify(F.arp_probe("0.0.0.0")).kind == "probe"
    qinq = [(F.ETH_P_8021AD, 9), (F.ETH_P_8021Q, 8)]
    assert classify(F.arp_request("198.18.0.1", "198.18.0.2", vlans=qinq)).vlan == 9
    assert classify(F.arp_request("198.18.0.1", "198.18.0.2")[:41]).health == ("arp", "malformed")
    assert classify(F.arp_request("198.18.0.1", "198.18.0.2")[:13]).refused
    assert classify(F.ipv4_udp()).health == ()
    assert classify(F.ethernet(F.BROADCAST, b"\2" * 6, F.ETH_P_8021Q, b"\0")).health == ("runt",)
    assert classify(F.arp_request("198.18.0.1", "198.18.0.2", vlans=[(F.ETH_P_8021Q, 1)] * 3)).health == (
        "vlan_too_deep",)
    rarp = F.ethernet(F.BROADCAST, b"\2" * 6, F.ETH_P_ARP, F.arp_payload(3, b"\2" * 6, "0.0.0.0", b"\0" * 6, "0.0.0.0"))
    assert classify(rarp).health == ("arp", "other_op")
    bad_hln = F.ethernet(F.BROADCAST, b"\2" * 6, F.ETH_P_ARP,
                         F.arp_payload(1, b"\2" * 6, "198.18.0.1", b"\0" * 6, "198.18.0.2", hln=7))
    assert classify(bad_hln).health == ("arp", "malformed")
    # tc with the outer tag in skb metadata: that VID wins, the in-band tag is still walked.
    inner = F.arp_request("198.18.0.1", "198.18.0.2", vlans=[(F.ETH_P_8021Q, 20)])
    assert classify(inner, skb_vlan=10).vlan == 10
    assert struct.calcsize("!HHBBH6s4s6s4s") == ARP_LEN
    # ND: the key is the target from the body, not the IPv6 destination (the solicited-node group), in
    # RFC 5952 text (of two equal zero runs the first is compressed).
    ns = classify(F.neighbour_solicitation("2001:db8::1", "2001:db8:0:0:1::a"))
    assert (ns.kind, ns.ip, ns.pair) == ("ns", "2001:db8::1:0:0:a", ("2001:db8::1", "2001:db8::1:0:0:a"))
    assert classify(F.neighbour_solicitation("2001:db8::1", "2001:db8::2", dst="2001:db8::9")).ip == "2001:db8::2"
    assert classify(F.dad_probe("2001:db8::5")).health == ("nd", "nd_dad")
    assert classify(F.dad_probe("2001:db8::5")).pair is None
    assert classify(F.neighbour_advertisement("2001:db8::2", solicited=True)).kind == "na_solicited"
    assert classify(F.neighbour_advertisement("2001:db8::2")).kind == "na_unsolicited"
    assert classify(F.neighbour_solicitation("2001:db8::1", "2001:db8::2", hop_limit=64)).health == (
        "nd", "nd_malformed")
    assert classify(F.neighbour_solicitation("2001:db8::1", "2001:db8::2", code=3)).health == ("nd", "nd_malformed")
    assert classify(F.neighbour_solicitation("2001:db8::1", "2001:db8::2")[:14 + 40 + 23]).health == (
        "nd", "nd_malformed")
    assert classify(F.neighbour_solicitation("2001:db8::1", "2001:db8::2", ext=F.hop_by_hop())).health == (
        "nd_ext_hdr",)
    assert classify(F.neighbour_solicitation("2001:db8::1", "2001:db8::2", vlans=qinq)).vlan == 9
    assert classify(F.icmpv6_echo()).health == () and classify(F.ipv6_udp()).health == ()
    spoofed = classify(F.neighbour_solicitation("2001:db8::1", "2001:db8::2", lladdr=b"\x02" * 6))
    assert (spoofed.mac, spoofed.flags) == ("02:02:02:02:02:02", REF_MAC_MISMATCH)
    # The key's MAC is the ARP sha; the flag says the Ethernet source differs from it.
    req = F.arp_request("198.18.0.1", "198.18.0.2", sha=F.mac("02:00:00:00:00:aa"))
    assert (classify(req).mac, classify(req).flags) == ("02:00:00:00:00:aa", 0)
    proxied = req[:6] + F.mac("02:00:00:00:00:bb") + req[12:]
    assert (classify(proxied).mac, classify(proxied).flags) == ("02:00:00:00:00:aa", REF_MAC_MISMATCH)
    assert REF_MAC_MISMATCH == KEY_F_MAC_MISMATCH == header_define("KEY_F_MAC_MISMATCH")


def test_batch_read_always_reaches_the_end_of_the_map(dp, reader):
    """The map reader never cuts a snapshot short. Under a flood of new keys a batch read sees more
    entries than the map holds (evicted behind the cursor, inserted ahead of it); here the same situation
    is forced by buffers sized for 100 entries over a map holding 1000: the read grows and gets them all
    (it used to stop at 100, or fail with ENOSPC when the next bucket did not fit)."""
    from sensor.kernel.layout import ARP_KEY, ARP_VAL

    harness = Harness(dp, reader)
    harness.reset_maps()
    h0 = reader.read_health()
    for i in range(1000):
        bpfsys.prog_test_run(dp.fn_xdp.fd, F.arp_request("198.18.0.1", f"198.19.{i // 250}.{i % 250 + 1}"))
    # The first keys claim the (few) fast-path slots; the rest are LRU entries.
    in_lru = reader.read_health()["inserts"] - h0["inserts"]
    assert in_lru >= 1000 - FAST_SLOTS * bpfsys.possible_cpus()
    keys, _values, n = bpfsys.map_lookup_batch(dp.maps.counts, ARP_KEY.size, ARP_VAL.size, 100)
    assert n == in_lru and len(set(ARP_KEY.iter_unpack(keys))) == in_lru
    harness.reset_maps()


def test_batch_read_into_a_full_buffer_returns_what_fits_and_says_so(dp, reader):
    """Without a way to grow, the zero-copy read into caller-owned buffers returns what fits instead of
    raising ENOSPC into the poll loop (which would have ended the sensor), and says it is incomplete.
    Forced here with buffers of 50-449 entries over a map of 1000: the old loop raised ENOSPC for every
    size where a bucket of two or more straddled the end."""
    import numpy as np

    from sensor.kernel.layout import ARP_KEY, ARP_VAL

    harness = Harness(dp, reader)
    harness.reset_maps()
    for i in range(1000):
        bpfsys.prog_test_run(dp.fn_xdp.fd, F.arp_request("198.18.0.1", f"198.19.{i // 250}.{i % 250 + 1}"))
    slot = ARP_VAL.size
    for room in range(50, 450):
        kbuf = np.empty(ARP_KEY.size * room, dtype=np.uint8)
        vbuf = np.empty(slot * room, dtype=np.uint8)
        n, complete = bpfsys.map_lookup_batch_into(dp.maps.counts, kbuf.ctypes.data, ARP_KEY.size,
                                                   vbuf.ctypes.data, slot, room)
        assert room - 8 <= n <= room and not complete
    harness.reset_maps()


def test_reader_with_small_buffers_under_churn_counts_exactly(dp, reader):
    """Issue 13 item 3: the sensor's reader, forced to start with buffers for 16 entries over a map of
    several hundred while another thread keeps inserting new keys, reaches the end of the map on every
    read: the hot targets' counts are exact in every interval (a cut-short read used to drop entries from
    one snapshot and count their whole cumulative count again in the next: a false storm)."""
    import threading

    from sensor.kernel.reader import MapReader
    from sensor.pipeline.aggregate import Aggregator

    harness = Harness(dp, reader)
    harness.reset_maps()
    for i in range(300):  # cold entries spread over the map's buckets
        bpfsys.prog_test_run(dp.fn_xdp.fd, F.arp_request("198.18.0.1", f"198.19.{i // 250}.{i % 250 + 1}"))
    small = MapReader(dp.maps, TEST_MAP_SIZE, room=16)
    agg = Aggregator({1: "lo"})
    agg.update(small.snapshot())
    hot = {f"198.18.9.{i}": 3 + i for i in range(1, 6)}
    stop = threading.Event()

    def churn() -> None:  # new keys while the reader reads; at most 400, so nothing is evicted
        for i in range(400):
            if stop.is_set():
                return
            bpfsys.prog_test_run(dp.fn_xdp.fd, F.arp_request("198.18.0.1", f"198.20.{i // 250}.{i % 250 + 1}"))

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(6):
            for ip, n in hot.items():
                bpfsys.prog_test_run(dp.fn_xdp.fd, F.arp_request("198.18.0.1", ip), repeat=n)
            snap = small.snapshot()
            iv = agg.update(snap)
            got = {w.key.ip: w.requests for w in iv.windows if w.key.ip in hot}
            assert got == hot
            assert snap.health["map_read_cut_short"] == 0
    finally:
        stop.set()
        t.join()
    assert small.read_grown >= 1  # it did have to grow
    assert small.snapshot().health["map_read_cut_short"] == 0
    harness.reset_maps()
