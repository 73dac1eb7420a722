"""IPv6 neighbour discovery in the real kernel: BPF_PROG_TEST_RUN with crafted NS/NA frames through the XDP
and both tc entry points, asserting the exact health and nd_counts changes each frame causes (and nothing
else). The rules are sensor/refparse.py's steps 10-15."""

from __future__ import annotations

from collections import Counter

import pytest

from sensor.kernel import bpfsys
from sensor.kernel.layout import (
    KEY_F_MAC_MISMATCH,
    ND_KIND_NA_SOLICITED,
    ND_KIND_NA_UNSOLICITED,
    ND_KIND_NS,
    ND_KIND_NS_DAD,
)
from tests.support import frames as F

XDP_PASS = 2
TC_ACT_UNSPEC = 0xFFFFFFFF
VLAN, QINQ = F.ETH_P_8021Q, F.ETH_P_8021AD
ENTRY_POINTS = {"xdp": ("fn_xdp", XDP_PASS, 0), "tc_in": ("fn_tc_in", TC_ACT_UNSPEC, 0),
                "tc_eg": ("fn_tc_eg", TC_ACT_UNSPEC, 1)}
ASKER, TARGET = "2001:db8::1", "2001:db8::a:2"
SMAC = b"\x02\x00\x00\x00\x06\x01"


def mac(raw: bytes) -> str:
    return raw.hex(":")


class NdProbe:
    """Runs one frame; returns the health deltas and the map entries that moved (with their keys' fields,
    as the reader gives them: both maps in one table), and checks no IPv4 entry moved."""

    def __init__(self, dp, reader, entry: str) -> None:
        attr, self.retval, self.dir = ENTRY_POINTS[entry]
        self.fd = getattr(dp, attr).fd
        self.dp, self.reader = dp, reader

    def read(self):
        return self.reader.read_health(), self.reader.read_entries()

    def run(self, frame: bytes):
        h0, e0 = self.read()
        res = bpfsys.prog_test_run(self.fd, frame)
        assert res.retval == self.retval
        assert res.data_out == frame  # observe only
        h1, e1 = self.read()
        health = {k: h1[k] - h0[k] for k in h1 if h1[k] != h0[k]}
        health.pop("nd_inserts", None)  # depends on whether an earlier test created the entry
        # A counted frame lands in its fast-path slot or, on a collision, in the LRU map: exactly one place
        placed = sum(health.pop(k, 0) for k in ("fast_hits", "fast_claims", "fast_collisions"))
        assert placed == int(any(k in health for k in ("nd_solicit", "nd_dad", "nd_advert_solicited",
                                                       "nd_advert_unsolicited")))
        moved = {}
        for key, (n, _first) in e1.items():
            d = n - e0.get(key, (0, 0))[0]
            if d:
                _ifindex, ip, peer, vlan, direction, kind, mac, flags = key
                assert ":" in ip, "an IPv6 frame moved the ARP map"
                assert direction == self.dir
                moved[(ip, peer, vlan, kind, mac, flags)] = d
        return health, moved


@pytest.fixture(params=list(ENTRY_POINTS))
def probe(request, dp, reader) -> NdProbe:
    return NdProbe(dp, reader, request.param)


def test_ns_counts_the_target_from_the_body_and_its_asker(probe):
    # Sent to the solicited-node group: the IPv6 destination is ff02::1:ffa:2, the key is the target.
    health, moved = probe.run(F.neighbour_solicitation(ASKER, TARGET, SMAC))
    assert health == {"nd": 1, "nd_solicit": 1}
    assert moved == {(TARGET, ASKER, 0, ND_KIND_NS, mac(SMAC), 0): 1}


def test_ns_to_a_unicast_destination_still_keys_on_the_target(probe):
    # Reachability confirmation (unicast NS): destination and target agree here, but a crafted one
    # whose destination differs shows the key follows the body.
    health, moved = probe.run(F.neighbour_solicitation(ASKER, TARGET, SMAC, dst="2001:db8::ffff"))
    assert health == {"nd": 1, "nd_solicit": 1}
    assert list(moved) == [(TARGET, ASKER, 0, ND_KIND_NS, mac(SMAC), 0)]


def test_dad_is_counted_apart_without_an_asker(probe):
    health, moved = probe.run(F.dad_probe("2001:db8::d", smac=SMAC))
    assert health == {"nd": 1, "nd_dad": 1}
    assert moved == {("2001:db8::d", "::", 0, ND_KIND_NS_DAD, mac(SMAC), 0): 1}


@pytest.mark.parametrize("solicited,kind,counter", [(True, ND_KIND_NA_SOLICITED, "nd_advert_solicited"),
                                                     (False, ND_KIND_NA_UNSOLICITED, "nd_advert_unsolicited")])
def test_na_solicited_and_unsolicited_apart(probe, solicited, kind, counter):
    na_mac = b"\x02\x00\x00\x00\x06\x09"
    frame = F.neighbour_advertisement(TARGET, dst=ASKER if solicited else "ff02::1", smac=na_mac, solicited=solicited)
    health, moved = probe.run(frame)
    assert health == {"nd": 1, counter: 1}
    assert moved == {(TARGET, "::", 0, kind, mac(na_mac), 0): 1}


def test_link_layer_option_differing_from_the_ethernet_source_is_flagged(probe):
    other = b"\x02\x00\x00\x00\x06\x77"
    health, moved = probe.run(F.neighbour_solicitation(ASKER, TARGET, SMAC, lladdr=other))
    assert health == {"nd": 1, "nd_solicit": 1}
    assert moved == {(TARGET, ASKER, 0, ND_KIND_NS, mac(other), KEY_F_MAC_MISMATCH): 1}


@pytest.mark.parametrize("hop_limit", [254, 64, 1, 0])
def test_hop_limit_other_than_255_is_malformed(probe, hop_limit):
    health, moved = probe.run(F.neighbour_solicitation(ASKER, TARGET, SMAC, hop_limit=hop_limit))
    assert health == {"nd": 1, "nd_malformed": 1}
    assert moved == {}


def test_code_other_than_0_is_malformed(probe):
    health, moved = probe.run(F.neighbour_solicitation(ASKER, TARGET, SMAC, code=1))
    assert health == {"nd": 1, "nd_malformed": 1}
    assert moved == {}


@pytest.mark.parametrize("cut", [14 + 40 + 1, 14 + 40 + 8, 14 + 40 + 23])
def test_truncated_nd_is_malformed(probe, cut):
    frame = F.neighbour_solicitation(ASKER, TARGET, SMAC)[:cut]
    health, moved = probe.run(frame)
    assert health == {"nd": 1, "nd_malformed": 1}
    assert moved == {}


def test_cut_option_falls_back_to_the_ethernet_source(probe):
    frame = F.neighbour_solicitation(ASKER, TARGET, SMAC, lladdr=b"\x02\x00\x00\x00\x06\x77")[:14 + 40 + 24 + 7]
    health, moved = probe.run(frame)
    assert health == {"nd": 1, "nd_solicit": 1}
    assert moved == {(TARGET, ASKER, 0, ND_KIND_NS, mac(SMAC), 0): 1}


@pytest.mark.parametrize("vlans,vid", [([(VLAN, 100)], 100), ([(QINQ, 200), (VLAN, 300)], 200),
                                       ([(VLAN, 10), (VLAN, 20)], 10)], ids=["8021q", "qinq", "double-8021q"])
def test_ns_behind_one_and_two_tags(probe, vlans, vid):
    health, moved = probe.run(F.neighbour_solicitation(ASKER, TARGET, SMAC, vlans=vlans))
    assert health == {"nd": 1, "nd_solicit": 1}
    assert moved == {(TARGET, ASKER, vid, ND_KIND_NS, mac(SMAC), 0): 1}


def test_ns_behind_three_tags_is_not_parsed(probe):
    frame = F.neighbour_solicitation(ASKER, TARGET, SMAC, vlans=[(QINQ, 1), (VLAN, 2), (VLAN, 3)])
    health, moved = probe.run(frame)
    assert health == {"vlan_too_deep": 1}
    assert moved == {}


@pytest.mark.parametrize("ext", [0, 60, 43, 44], ids=["hop-by-hop", "dest-opts", "routing", "fragment"])
def test_extension_header_before_icmpv6_is_counted_not_walked(probe, ext):
    """Documented: the chain is not walked, so an NS behind an extension header is only made visible
    (nd_ext_hdr), never counted as a solicitation."""
    health, moved = probe.run(F.neighbour_solicitation(ASKER, TARGET, SMAC, ext=F.hop_by_hop(ext)))
    assert health == {"nd_ext_hdr": 1}
    assert moved == {}


@pytest.mark.parametrize("frame", [F.ipv6_udp(), F.icmpv6_echo(), F.icmpv6_echo(vlans=[(VLAN, 5)]),
                                   F.neighbour_solicitation(ASKER, TARGET)[:14 + 40],
                                   F.ipv6_udp()[:14 + 39]],
                         ids=["udp", "echo", "echo-vlan", "no-icmp-type", "short-ipv6-header"])
def test_ipv6_that_is_not_nd_counts_nothing(probe, dp, frame):
    if probe.fd != dp.fn_xdp.fd and len(frame) < 14 + 40:
        pytest.skip("BPF_PROG_TEST_RUN refuses tc runs of IPv6 frames shorter than the IPv6 header")
    health, moved = probe.run(frame)
    assert health == {}
    assert moved == {}


def test_router_solicitation_and_advertisement_are_not_nd_counts(probe):
    """Only 135/136 are neighbour discovery here; RS/RA/redirect (133/134/137) pass untouched."""
    for type_ in (133, 134, 137):
        frame = bytearray(F.neighbour_solicitation(ASKER, TARGET, SMAC))
        frame[14 + 40] = type_
        health, moved = probe.run(bytes(frame))
        assert health == {} and moved == {}


def test_repeat_counts_every_run(dp, reader):
    """1000 runs of one NS: exactly 1000 in one entry (per-CPU counters lose nothing)."""
    frame = F.neighbour_solicitation(ASKER, "2001:db8::77", SMAC)
    key = ("2001:db8::77", ASKER, 0, 0, ND_KIND_NS, mac(SMAC), 0)

    def count():
        return next((v[0] for k, v in reader.read_entries().items() if k[1:] == key), 0)

    before = count()
    bpfsys.prog_test_run(dp.fn_xdp.fd, frame, repeat=1000)
    assert count() - before == 1000


def test_mixed_arp_and_nd_burst_matches_a_tally(dp, reader):
    mix = ([F.neighbour_solicitation(ASKER, f"2001:db8::3:{i:x}") for i in range(1, 30)]
           + [F.dad_probe(f"2001:db8::4:{i:x}") for i in range(1, 5)]
           + [F.neighbour_advertisement(f"2001:db8::3:{i:x}", solicited=True, dst=ASKER) for i in range(1, 8)]
           + [F.arp_request("198.18.3.1", "198.18.3.2"), F.ipv6_udp(), F.icmpv6_echo()])
    expect = Counter(nd=29 + 4 + 7, nd_solicit=29, nd_dad=4, nd_advert_solicited=7, arp=1, request=1)
    h0 = reader.read_health()
    for frame in mix:
        bpfsys.prog_test_run(dp.fn_xdp.fd, frame)
    h1 = reader.read_health()
    got = Counter({k: h1[k] - h0[k] for k in h1 if h1[k] != h0[k] and k not in ("inserts", "nd_inserts")})
    # Every counted frame, ARP or ND, lands in exactly one place (its fast-path slot or its LRU map).
    assert sum(got.pop(k, 0) for k in ("fast_hits", "fast_claims", "fast_collisions")) == len(mix) - 2
    assert got == expect


def test_nd_key_layout_matches_bcc(dp):
    import ctypes

    from sensor.kernel.layout import ARP_VAL, ND_KEY

    assert ctypes.sizeof(dp.bpf[b"nd_counts"].Key) == ND_KEY.size == 48
    assert ctypes.sizeof(dp.bpf[b"nd_counts"].Leaf) == ARP_VAL.size  # one value per entry, not per CPU
