"""Network outputs against real receivers on 127.0.0.1: syslog-ng, UDP, a Fluent forward server; faults."""

from __future__ import annotations

import json
import shutil
import socket
import time
from datetime import datetime

import msgpack
import pytest

from sensor.outputs import build_outputs
from sensor.outputs.wire import encode_json, forward_message, pack_event_time
from tests.support.fixtures_schema import parse_events, validate_event
from tests.support.receivers import (
    ForwardReceiver,
    SilentReceiver,
    SyslogNg,
    TcpLineReceiver,
    UdpReceiver,
    free_port,
    identity,
    sample_events,
    wait_for,
)


def ids(events):
    return [identity(e) for e in events]


def _flatten(x, prefix=""):
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: x}


@pytest.fixture
def syslog_ng(tmp_path):
    if not shutil.which("syslog-ng"):
        pytest.fail("syslog-ng not installed: run `make install` (Debian package syslog-ng-core)")
    s = SyslogNg(tmp_path)
    yield s
    s.stop()


def test_syslog_ng_receives_every_event_parsed_and_intact(syslog_ng):
    events = sample_events(200)
    with build_outputs([f"tcp://127.0.0.1:{syslog_ng.port}"]) as d:
        for ev in events:
            d.emit(ev)
        wait_for(lambda: len(syslog_ng.received()) >= len(events), 15, "syslog-ng to write every event")
        st = d.stats()[f"tcp://127.0.0.1:{syslog_ng.port}"]
    rows = syslog_ng.received()
    assert len(rows) == len(events)
    # intact: the raw message syslog-ng got is byte-for-byte the line we sent, and validates
    assert [raw for _, raw in rows] == [encode_json(ev).decode() for ev in events]
    assert parse_events("\n".join(raw for _, raw in rows)) == events
    # parsed: syslog-ng's json-parser extracted every field (3.x turns scalars into strings)
    for (parsed, _), ev in zip(rows, events, strict=True):
        got, want = _flatten(parsed), _flatten(ev)
        assert got.keys() == want.keys()
        for k, v in want.items():
            if isinstance(v, list):
                assert json.loads(got[k]) == v, k
            elif isinstance(v, float | int):
                assert float(got[k]) == pytest.approx(v), k
            else:
                assert got[k] == v, k
    assert st["sent"] == len(events) and st["dropped"] == 0 and st["connected"]


def test_udp_one_event_per_datagram_oversized_dropped():
    r = UdpReceiver()
    try:
        events = sample_events(100)
        big = sample_events(1, start=1)[0]
        big["arp"]["top_senders"] = [{"ip": f"198.19.{i // 256}.{i % 256}", "requests": i} for i in range(60)]
        assert len(encode_json(big)) > 1400
        spec = f"udp://127.0.0.1:{r.port}?max_bytes=1400"
        with build_outputs([spec]) as d:
            for ev in events[:50]:
                d.emit(ev)
            d.emit(big)
            for ev in events[50:]:
                d.emit(ev)
            wait_for(lambda: len(r.datagrams) >= 100, 10, "100 datagrams")
            st = d.stats()[spec]
        assert all(dg.endswith(b"\n") and dg.count(b"\n") == 1 for dg in r.datagrams)
        assert parse_events(b"".join(r.datagrams)) == events  # the oversized one is not split or truncated
        assert st["sent"] == 100 and st["dropped"] == 1 and st["oversized"] == 1
    finally:
        r.stop()


def test_udp_receiver_down_is_counted_not_fatal():
    port = free_port(socket.SOCK_DGRAM)
    spec = f"udp://127.0.0.1:{port}"
    with build_outputs([spec]) as d:
        for ev in sample_events(20):
            d.emit(ev)
            time.sleep(0.002)
        wait_for(lambda: d.stats()[spec]["queued"] == 0, 5, "queue drained")
        st = d.stats()[spec]
    # ICMP port unreachable comes back as ECONNREFUSED on a later send: counted, the sender goes on
    assert st["errors"] >= 1 and st["sent"] + st["dropped"] == 20


def test_forward_receiver_speaks_all_modes():
    """The test receiver itself: Message, Forward and PackedForward per spec, acks chunks."""
    r = ForwardReceiver()
    try:
        t = pack_event_time(1.8e9 + 0.5)
        rec = {"a": 1}
        entry = msgpack.packb([t, rec])
        with socket.create_connection(("127.0.0.1", r.port)) as s:
            s.sendall(msgpack.packb(["m", t, rec, {"chunk": "c1"}]))
            s.sendall(forward_message("f", [entry, entry], {"chunk": "c2", "size": 2}))
            s.sendall(msgpack.packb(["p", entry * 3, {"chunk": "c3", "size": 3}], use_bin_type=True))
            up = msgpack.Unpacker(raw=False)
            acks = []
            while len(acks) < 3:
                up.feed(s.recv(4096))
                acks.extend(up)
        assert acks == [{"ack": "c1"}, {"ack": "c2"}, {"ack": "c3"}]
        assert [(m, n) for m, n, _ in r.messages] == [("message", 1), ("forward", 2), ("packed", 3)]
        assert all(abs(e[1] - (1.8e9 + 0.5)) < 1e-6 for e in r.events)
    finally:
        r.stop()


@pytest.mark.parametrize("chunk", [True, False])
def test_forward_delivers_with_event_time_and_tag(chunk):
    r = ForwardReceiver()
    try:
        events = sample_events(300)
        spec = f"forward://127.0.0.1:{r.port}?tag=arp.sensor&chunk={int(chunk)}"
        with build_outputs([spec]) as d:
            for ev in events:
                d.emit(ev)
            wait_for(lambda: d.stats()[spec]["sent"] == 300, 10, "all events sent/acked")
            wait_for(lambda: len(r.records()) == 300, 10, "all events received")
            st = d.stats()[spec]
        assert [validate_event(rec) for rec in r.records()] == events
        assert {e[0] for e in r.events} == {"arp.sensor"}
        for (_, t, _, _), ev in zip(r.events, events, strict=True):  # EventTime == @timestamp
            assert t == pytest.approx(datetime.fromisoformat(ev["@timestamp"]).timestamp(), abs=1e-6)
        assert {m for m, _, _ in r.messages} == {"forward"}
        assert all(c for _, _, c in r.messages) == chunk
        assert st["dropped"] == 0 and st["errors"] == 0
        if chunk:
            assert st["acked_chunks"] == len(r.messages) and len(set(r.acked)) == len(r.acked)
    finally:
        r.stop()


@pytest.mark.parametrize("kind", ["tcp", "forward"])
def test_receiver_down_at_start_then_up(kind):
    port = free_port()
    spec = f"{kind}://127.0.0.1:{port}" + ("?chunk=1" if kind == "forward" else "")
    events = sample_events(50)
    d = build_outputs([spec])
    try:
        for ev in events:
            d.emit(ev)  # nobody listening: queued
        wait_for(lambda: d.stats()[spec]["errors"] >= 2, 5, "a few failed connects")
        assert d.stats()[spec]["queued"] == 50 and not d.stats()[spec]["connected"]
        r = TcpLineReceiver(port) if kind == "tcp" else ForwardReceiver(port)
        try:
            wait_for(lambda: d.stats()[spec]["sent"] == 50, 10, "backlog sent once the receiver is up")
            # tcp counts 'sent' when the kernel took the bytes: wait for the receiver to have read them
            wait_for(lambda: len(r.lines if kind == "tcp" else r.records()) == 50, 10, "backlog received")
            recs = r.lines if kind == "tcp" else [encode_json(x) for x in r.records()]
            got = parse_events(b"\n".join(recs))
            assert ids(got) == ids(events)
            assert d.stats()[spec]["connected"]
        finally:
            d.close(2)
            r.stop()
    finally:
        d.close(0)


def test_tcp_receiver_killed_and_restarted():
    r = TcpLineReceiver()
    port = r.port
    spec = f"tcp://127.0.0.1:{port}"
    d = build_outputs([spec])
    events = sample_events(300)
    try:
        for ev in events[:100]:
            d.emit(ev)
        wait_for(lambda: len(r.lines) == 100, 10, "first 100")
        r.stop()  # killed
        for ev in events[100:200]:
            d.emit(ev)  # some may go into a dead socket before the sensor notices
            time.sleep(0.002)
        wait_for(lambda: not d.stats()[spec]["connected"], 5, "sink noticed the receiver is gone")
        r2 = TcpLineReceiver(port)
        try:
            for ev in events[200:]:
                d.emit(ev)
            wait_for(lambda: d.stats()[spec]["queued"] == 0 and len(r2.lines) >= 100, 10, "after restart")
            got = ids(parse_events(b"\n".join(r.lines + r2.lines)))
            st = d.stats()[spec]
        finally:
            d.close(2)
            r2.stop()
    finally:
        d.close(0)
    # Every event after the restart arrives, in order; none is duplicated; what was lost while the
    # receiver was dead is bounded by what the kernel accepted before the reset.
    assert got[:100] == ids(events[:100])
    assert got[-100:] == ids(events[200:])
    assert len(set(got)) == len(got)
    assert len(got) >= 200 and r.torn == [] and r2.torn == []
    assert st["errors"] >= 1 and d.sinks[0].connects >= 2
    assert st["sent"] + st["dropped"] == 300


def test_forward_acked_chunks_kept_unacked_resent_after_crash():
    """The receiver acks two chunks, takes a third without acking, and dies: after its restart the
    third chunk arrives again (same id) and nothing acknowledged is sent twice."""
    r = ForwardReceiver(ack_limit=2)
    port = r.port
    spec = f"forward://127.0.0.1:{port}?chunk=1&batch=50&ack_timeout=30"
    events = sample_events(600)
    d = build_outputs([spec])
    try:
        for ev in events:
            d.emit(ev)
        wait_for(lambda: len(r.messages) >= 3, 10, "a third chunk at the receiver")
        r.stop()
        acked_ids = list(r.acked)
        doomed = r.messages[2][2]
        first = [rec for (_, _, rec, c) in r.events if c in acked_ids]
        assert d.stats()[spec]["sent"] == len(first)  # sent == acknowledged, exactly
        r2 = ForwardReceiver(port)
        try:
            wait_for(lambda: d.stats()[spec]["sent"] == 600, 15, "everything acked after the restart")
            second = [validate_event(x) for x in r2.records()]
            chunks = [c for _, _, c in r2.messages]
        finally:
            d.close(2)
            r2.stop()
    finally:
        d.close(0)
    assert chunks[0] == doomed and not set(chunks) & set(acked_ids)
    assert ids(first + second) == ids(events)  # no gap, no duplicate of an acknowledged event


def test_forward_receiver_killed_mid_stream_no_acked_event_lost():
    """At-least-once: a receiver that dies before acking gets the same chunk again after restart."""
    r = ForwardReceiver(ack=False)  # receives, then 'crashes' before acking
    port = r.port
    spec = f"forward://127.0.0.1:{port}?chunk=1&ack_timeout=5"
    d = build_outputs([spec])
    events = sample_events(400)
    try:
        for ev in events[:200]:
            d.emit(ev)
        wait_for(lambda: len(r.events) > 0, 10, "first chunk at the doomed receiver")
        unacked_chunk = r.messages[0][2]
        r.stop()
        assert d.stats()[spec]["sent"] == 0  # nothing acked, nothing counted as sent
        r2 = ForwardReceiver(port)
        try:
            for ev in events[200:]:
                d.emit(ev)
            wait_for(lambda: d.stats()[spec]["sent"] == 400, 15, "all 400 acked after restart")
            st = d.stats()[spec]
            got = [validate_event(x) for x in r2.records()]
            chunks = [c for _, _, c in r2.messages]
        finally:
            d.close(2)
            r2.stop()
    finally:
        d.close(0)
    assert ids(got) == ids(events)  # the unacked chunk was resent; everything arrived exactly once here
    assert chunks[0] == unacked_chunk  # resent with the same chunk id (lets receivers de-duplicate)
    assert st["resent_chunks"] >= 1 and st["errors"] >= 1 and st["dropped"] == 0


GARBAGE_ACKS = {
    "invalid-byte": b"\xc1",  # never valid in msgpack
    "truncated-then-invalid": b"\x82\xa3ack\xc1",
    "ack-not-a-string": msgpack.packb({"ack": 5}),
    "ack-null": msgpack.packb({"ack": None}),
    "not-a-map": msgpack.packb(["ack", "x"]),
    "integer-map-key": msgpack.packb({1: "x"}),  # msgpack refuses non-string map keys (strict_map_key)
    "nested-too-deep": b"\x91" * 2000,
}


@pytest.mark.parametrize("garbage", list(GARBAGE_ACKS))
def test_forward_garbage_ack_counts_an_error_reconnects_and_resends(garbage):
    """Issue 13 item 4: an acknowledgement that does not decode, or decodes to the wrong types, counts an
    error, closes the connection, and the same chunk is resent on a new one (at-least-once holds). It
    used to kill the sender thread (stats still `connected: true, errors: 0`), or be ignored until the
    ack timeout."""
    r = ForwardReceiver(garbage=[GARBAGE_ACKS[garbage]])
    spec = f"forward://127.0.0.1:{r.port}?chunk=1&batch=50&ack_timeout=30"
    events = sample_events(120)
    d = build_outputs([spec])
    try:
        for ev in events:
            d.emit(ev)
        wait_for(lambda: d.stats()[spec]["sent"] == 120, 10, "every event acked after the garbage ack")
        st = d.stats()[spec]
    finally:
        d.close(2)
        r.stop()
    assert st["errors"] == 1 and st["resent_chunks"] == 1 and st["dropped"] == 0 and st["connected"]
    first_chunk = r.messages[0][2]
    assert [c for _, _, c in r.messages].count(first_chunk) == 2  # resent with the same id
    assert set(ids(r.records())) == set(ids(events))  # everything arrived; the resent chunk twice


@pytest.mark.parametrize("kind", ["tcp", "forward"])
def test_receiver_that_never_reads_does_not_block_emit(kind):
    r = SilentReceiver()
    spec = f"{kind}://127.0.0.1:{r.port}?queue=500" + ("&chunk=1&ack_timeout=30" if kind == "forward" else "")
    ev = sample_events(1, start=4)[0]
    n = 20_000
    d = build_outputs([spec])
    try:
        wait_for(lambda: d.stats()[spec]["connected"], 5, "connected")
        slowest = 0.0
        for _ in range(n):
            t0 = time.perf_counter()
            d.emit(ev)
            slowest = max(slowest, time.perf_counter() - t0)
        st = d.stats()[spec]
        sink = d.sinks[0]
        # bounded: never more than the queue bound (+ one in-flight batch) held in memory
        assert st["queued"] <= 500 + 512
        assert sink._qbytes <= sink.queue_bytes
        assert st["dropped"] > n // 2  # the kernel buffers absorb a little; the rest is counted
        assert st["sent"] + st["dropped"] + st["queued"] == n
        # emit did not wait on the socket (a blocked emit would hang until close); the bound only
        # leaves room for scheduling on a loaded machine
        assert slowest < 2.0, slowest
        t0 = time.monotonic()
        d.close(0.5)
        assert time.monotonic() - t0 < 3, "close() must honour its timeout against a stuck receiver"
        st = d.stats()[spec]
        assert st["sent"] + st["dropped"] == n and st["queued"] == 0
    finally:
        d.close(0)
        r.stop()


def test_several_outputs_at_once(tmp_path, syslog_ng):
    u = UdpReceiver()
    f = ForwardReceiver()
    try:
        specs = [f"file:{tmp_path / 'e.json'}", f"tcp://127.0.0.1:{syslog_ng.port}",
                 f"udp://127.0.0.1:{u.port}", f"forward://127.0.0.1:{f.port}?chunk=1"]
        events = sample_events(40)
        with build_outputs(specs) as d:
            for ev in events:
                d.emit(ev)
            wait_for(lambda: all(s["sent"] == 40 for s in d.stats().values()), 10, "all outputs sent")
            health = d.health_counters()
        wait_for(lambda: len(syslog_ng.received()) == 40, 10, "syslog-ng")
        wait_for(lambda: len(u.datagrams) == 40 and len(f.records()) == 40, 10, "udp and forward receivers")
        assert parse_events((tmp_path / "e.json").read_text()) == events
        assert parse_events(b"".join(u.datagrams)) == events
        assert f.records() == events
        assert health["output_sent"] == 160 and health["output_dropped"] == 0
        assert [o["name"] for o in health["outputs"]] == specs
    finally:
        u.stop()
        f.stop()
