"""BIRD control-socket reply parser, on replies captured from a real BIRD 2.0.12 (tests/data/bird/)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.peers.bird import (
    BirdCommandError,
    BirdProtocolError,
    ReplyReader,
    parse_line,
    parse_protocols,
    parse_reply,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "bird"


def reply(name: str) -> bytes:
    return (DATA / name).read_bytes()


def protos(name: str):
    return {p.name: p for p in parse_protocols(parse_reply(reply(name)))}


def test_welcome_line():
    (line,) = parse_reply(reply("welcome.reply"))
    assert (line.code, line.final) == (1, True)
    assert line.text.startswith("BIRD 2.")


def test_show_protocols_all_rows_and_multiline_details():
    p = protos("show_protocols_all.reply")
    assert list(p) == ["device1", "Mesh_198_18_0_2", "Mesh_198_18_0_7", "Mesh_198_18_0_9"]
    assert not p["device1"].is_bgp and p["device1"].bgp_state is None and p["device1"].neighbor_ip is None
    up = p["Mesh_198_18_0_2"]
    assert (up.proto, up.table, up.state, up.since) == ("BGP", "---", "up", "22:59:37.616")
    assert up.bgp_state == "Established" and up.last_error is None
    assert up.neighbor_ip == "198.18.0.2"
    # details come from 1006 continuation lines (" " prefix); channel keys must not overwrite them
    assert up.details["Neighbor AS"] == "64512" and up.details["Neighbor ID"] == "198.18.0.2"
    assert up.details["Hold timer"].endswith("/9")
    assert "State" not in up.details and "Table" not in up.details
    dead = p["Mesh_198_18_0_7"]
    assert (dead.state, dead.bgp_state, dead.neighbor_ip) == ("start", "Connect", "198.18.0.7")
    assert dead.last_error == "Socket: No route to host"
    passive = p["Mesh_198_18_0_9"]
    assert (passive.bgp_state, passive.last_error) == ("Passive", None)


def test_peer_down_and_passive_side_after_hold_timer():
    p = protos("show_protocols_all_peer_down.reply")
    assert p["Mesh_198_18_0_2"].bgp_state == "Connect"
    assert p["Mesh_198_18_0_2"].last_error == "Socket: No route to host"
    q = protos("show_protocols_all_passive_down.reply")["Mesh_198_18_0_1"]
    assert (q.bgp_state, q.last_error, q.neighbor_ip) == ("Idle", "BGP Error: Hold timer expired",
                                                          "198.18.0.1")
    assert protos("show_protocols_all_passive_up.reply")["Mesh_198_18_0_1"].bgp_state == "Established"


def test_show_protocols_without_details_uses_info_and_calico_names():
    lines = parse_reply(reply("show_protocols.reply"))
    # rows after the first are " "-continuations of code 1002
    assert [ln.code for ln in lines] == [2002, 1002, 1002, 1002, 1002, 0]
    p = {x.name: x for x in parse_protocols(lines)}
    dead = p["Mesh_198_18_0_7"]
    assert (dead.bgp_state, dead.last_error, dead.neighbor_ip) == ("Connect", "Socket: No route to host",
                                                                   "198.18.0.7")
    assert p["Mesh_198_18_0_2"].bgp_state == "Established" and p["Mesh_198_18_0_2"].last_error is None


def test_8003_no_protocols_match_is_empty():
    lines = parse_reply(reply("no_protocols_match_8003.reply"))
    assert [(ln.code, ln.text) for ln in lines] == [(8003, "No protocols match")]
    assert parse_protocols(lines) == []


def test_9001_parse_error_raises_with_code():
    lines = parse_reply(reply("syntax_error_9001.reply"))
    with pytest.raises(BirdCommandError) as e:
        parse_protocols(lines)
    assert e.value.code == 9001 and "syntax error" in e.value.text


def test_reply_over_64k_in_any_chunking():
    data = reply("show_protocols_all_250_peers.reply")
    assert len(data) > 64 * 1024
    whole = parse_protocols(parse_reply(data))
    bgp = [p for p in whole if p.is_bgp]
    assert len(bgp) == 250
    assert {p.neighbor_ip for p in bgp} == {f"198.18.4.{i}" for i in range(2, 252)}
    assert {p.bgp_state for p in bgp} == {"Active", "Passive"}
    for size in (1, 7, 4093, 65536):
        r = ReplyReader()
        for i in range(0, len(data), size):
            assert not r.done
            r.feed(data[i:i + size])
        assert r.done
        assert [(p.name, p.bgp_state, p.details) for p in parse_protocols(r.lines)] == \
               [(p.name, p.bgp_state, p.details) for p in whole]


@pytest.mark.parametrize("cut", [1, 5, 100, 1000, 60000, -7, -1])
def test_truncated_reply_raises(cut):
    data = reply("show_protocols_all_250_peers.reply")[:cut]
    with pytest.raises(BirdProtocolError, match="truncated"):
        parse_reply(data)


def test_continuation_line_keeps_code_and_text():
    assert parse_line(b"  two spaces kept after the first", 1006).text == " two spaces kept after the first"
    with pytest.raises(BirdProtocolError):
        parse_line(b" orphan", None)


@pytest.mark.parametrize("data", [
    b"\x00\xff\xfe\n",
    b"HTTP/1.1 200 OK\r\n",
    b"100 short code\n",
    b"12345 five digits\n",
    b"1002x bad separator\n",
    b"0000 \ntrailing bytes after the final line\n",
])
def test_garbage_raises_protocol_error(data):
    with pytest.raises(BirdProtocolError):
        parse_reply(data)


def test_non_utf8_text_in_a_valid_line_is_replaced_not_fatal():
    raw = b"1002-Mesh_1_2_3_4 BGP --- start 10:00:00.000 Active Socket: \xff\n0000 \n"
    (p,) = parse_protocols(parse_reply(raw))
    assert p.neighbor_ip == "1.2.3.4" and "\ufffd" in p.last_error


def test_iso_long_since_and_long_names():
    text = (b"2002-Name       Proto      Table      State  Since         Info\n"
            b"1002-Node_198_18_0_77_port_1790 BGP --- start  2026-11-26 08:01:02  Active  "
            b"BGP Error: Hold timer expired\n0000 \n")
    (p,) = parse_protocols(parse_reply(text))
    assert (p.since, p.bgp_state, p.last_error, p.neighbor_ip) == (
        "2026-11-26 08:01:02", "Active", "BGP Error: Hold timer expired", "198.18.0.77")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data):
    with contextlib.suppress(BirdProtocolError, BirdCommandError):
        parse_protocols(parse_reply(data))


@pytest.mark.parametrize("name,ip", [
    ("Mesh_2001_db8__7", "2001:db8::7"),
    ("Node_fd00_10_244__1_port_1790", "fd00:10:244::1"),
    ("Global_2001_0db8_0000_0000_0000_0000_0000_0007", "2001:db8::7"),  # all eight groups, normalised
    ("Mesh_198_18_0_7", "198.18.0.7"),
    ("Mesh_2001_db8__7__1", None),  # two "::" is no address
    ("Mesh_abc", None),
])
def test_calico_ipv6_names_give_the_rfc5952_address(name, ip):
    """Without a `Neighbor address:` line (plain `show protocols`) the name is all there is."""
    from sensor.peers.bird import BirdProtocol

    assert BirdProtocol(name, "BGP", "---", "start", "00:00:01", "Active").neighbor_ip == ip


def test_ipv6_neighbor_address_is_normalised():
    from sensor.peers.bird import BirdProtocol

    p = BirdProtocol("x", "BGP", "---", "start", "00:00:01", "Active",
                     {"Neighbor address": "2001:DB8:0:0::7%eth0"})
    assert p.neighbor_ip == "2001:db8::7"
