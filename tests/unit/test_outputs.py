"""Outputs without a network receiver: spec parsing, encoding, stdout, file + rotation, schema enforcement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sensor.errors import EXIT_USAGE, SensorError
from sensor.events.encode import base_event
from sensor.outputs import build_outputs, parse_spec
from sensor.outputs.validate import SchemaViolation
from sensor.outputs.wire import encode_json
from tests.support.fixtures_schema import parse_events
from tests.support.receivers import identity, sample_events

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("spec", "kind", "host", "port", "path", "options"), [
    ("-", "stdout", None, None, None, {}),
    ("file:/var/log/arp.json", "file", None, None, "/var/log/arp.json", {}),
    ("unix:/run/vector.sock", "unix", None, None, "/run/vector.sock", {}),
    ("unix:rel/x?y.sock", "unix", None, None, "rel/x?y.sock", {}),  # unix:PATH is literal
    ("unix:///run/vector.sock?queue=5", "unix", None, None, "/run/vector.sock", {"queue": 5}),
    ("tcp://127.0.0.1:5170", "tcp", "127.0.0.1", 5170, None, {}),
    ("tcp://[::1]:5170?queue=10", "tcp", "::1", 5170, None, {"queue": 10}),
    ("udp://logs.example:514?max_bytes=1400", "udp", "logs.example", 514, None, {"max_bytes": 1400}),
    ("forward://127.0.0.1:24224?tag=k8s.arp&chunk=1", "forward", "127.0.0.1", 24224, None,
     {"tag": "k8s.arp", "chunk": True}),
])
def test_parse_good_specs(spec, kind, host, port, path, options):
    o = parse_spec(spec)
    assert (o.kind, o.host, o.port, o.path, o.options) == (kind, host, port, path, options)


@pytest.mark.parametrize(("spec", "why"), [
    ("", "unknown output"),
    ("stdout", "unknown output"),
    ("file:", "needs a path"),
    ("http://127.0.0.1:80", "unknown scheme"),
    ("tcp://127.0.0.1", "needs a port"),
    ("tcp://127.0.0.1:0", "needs a port"),
    ("tcp://127.0.0.1:99999", "out of range"),
    ("tcp://127.0.0.1:http", "Port could not be cast"),
    ("tcp://:5170", "needs HOST:PORT"),
    ("udp://127.0.0.1:514?max_bytes=70000", "between 64 and 65507"),
    ("forward://127.0.0.1:24224?tag=has space", "tag='has space'"),
    ("forward://127.0.0.1:24224?chunk=maybe", "must be 1 or 0"),
    ("forward://127.0.0.1:24224?compress=gzip", "unknown option 'compress'"),
    ("tcp://127.0.0.1:5170/path", "only HOST:PORT"),
    ("unix://host/run/x.sock", "unix:///ABSOLUTE/PATH"),
    ("unix:///run/x.sock?tag=a", "unknown option 'tag' for unix"),
])
def test_bad_specs_are_one_line_usage_errors(spec, why):
    with pytest.raises(SensorError) as ei:
        build_outputs([spec])
    msg = str(ei.value)
    assert ei.value.exit_code == EXIT_USAGE
    assert why in msg and "\n" not in msg and "forms:" in msg


def test_bad_tag_rejected():
    with pytest.raises(SensorError, match="bad --tag") as ei:
        build_outputs(["-"], tag="no spaces please")
    assert ei.value.exit_code == EXIT_USAGE


def test_duplicate_output_rejected():
    with pytest.raises(SensorError, match="given twice"):
        build_outputs(["-", "-"])


def test_unwritable_file_is_usage_error(tmp_path):
    with pytest.raises(SensorError, match="cannot open --output") as ei:
        build_outputs([f"file:{tmp_path}/missing-dir/x.json"])
    assert ei.value.exit_code == EXIT_USAGE


def test_json_encoding_is_compact_utf8_one_line():
    ev = sample_events(1, start=5)[0]
    ev["message"] = "line1\nline2\u2028\t«x»"
    line = encode_json(ev)
    assert b"\n" not in line and b" " not in line  # compact: no whitespace at all outside strings
    assert "«x»".encode() in line  # UTF-8, not \u escapes
    assert json.loads(line) == ev
    assert list(json.loads(line)) == list(ev)  # key order as built (the contract's order)


def test_unencodable_event_is_counted_not_raised(capsys):
    d = build_outputs(["-"], validate_schema=False)
    ev = sample_events(1)[0]
    ev["arp"]["requests_per_sec"] = float("nan")
    from sensor.outputs import Dispatcher
    saved, Dispatcher.observers = Dispatcher.observers, []  # this one is invalid on purpose
    try:
        d.emit(ev)
    finally:
        Dispatcher.observers = saved
    d.close(1)
    assert d.encode_errors == 1 and capsys.readouterr().out == ""


def test_stdout_lines_validate(capsys):
    events = sample_events(60)
    with build_outputs(["-"]) as d:
        for ev in events:
            d.emit(ev)
    st = d.stats()["-"]  # after close: stdout is written by its own thread, close() drains it
    got = parse_events(capsys.readouterr().out)
    assert got == events
    assert st == {"type": "stdout", "queued": 0, "sent": 60, "dropped": 0, "errors": 0, "connected": True}


def test_in_process_violation_raises_one_line():
    d = build_outputs(["-"])
    bad = base_event("arp_sensor.target", "metric", 1.8e9, "h")  # no destination, network, arp
    from sensor.outputs import Dispatcher
    saved, Dispatcher.observers = Dispatcher.observers, []
    try:
        with pytest.raises(SchemaViolation) as ei:
            d.emit(bad)
    finally:
        Dispatcher.observers = saved
        d.close(1)
    assert ei.value.exit_code == 1 and "\n" not in str(ei.value)
    assert "arp_sensor.target" in str(ei.value)


EMITTER = """
import sys
from sensor.cli import main
from sensor.events.encode import base_event
from sensor.outputs import build_outputs
import click
from sensor.cli import cli

@cli.command("emit-test")
def emit_test():
    with build_outputs(["-"]) as d:  # closed (stdout's queue drained) on the error path too, as run does
        d.emit(base_event("arp_sensor.health", "metric", 1.8e9, "h") | {"arp_sensor": {"schema_version": "1",
               "health": {"frames": 1}}})
        d.emit(base_event("arp_sensor.peer", "alert", 1.8e9, "h"))  # invalid: no action, peer, message

sys.argv = ["arp-sensor", "emit-test"]
main()
"""


def test_subprocess_invalid_event_exits_nonzero_with_one_line():
    env = {**os.environ, "ARP_SENSOR_VALIDATE_SCHEMA": "1"}
    p = subprocess.run([sys.executable, "-c", EMITTER], capture_output=True, text=True, env=env, timeout=60,
                       cwd=REPO)
    assert p.returncode == 1, p.stderr
    assert len(parse_events(p.stdout)) == 1  # the valid event got out, the invalid one did not
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "violates events.schema.json" in lines[0] and "arp_sensor.peer" in lines[0]
    # without the variable the sensor does not validate (production: no jsonschema needed)
    env.pop("ARP_SENSOR_VALIDATE_SCHEMA")
    p = subprocess.run([sys.executable, "-c", EMITTER], capture_output=True, text=True, env=env, timeout=60,
                       cwd=REPO)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 2


def test_file_appends_whole_lines(tmp_path):
    f = tmp_path / "events.json"
    f.write_text('{"pre":"existing"}\n')
    events = sample_events(100)
    with build_outputs([f"file:{f}"]) as d:
        for ev in events:
            d.emit(ev)
    lines = f.read_text().splitlines()
    assert lines[0] == '{"pre":"existing"}'
    assert parse_events("\n".join(lines[1:])) == events


def test_file_rotation_with_reopen_loses_and_tears_nothing(tmp_path):
    """logrotate's move-then-SIGHUP while events keep flowing: every line lands whole in exactly one file."""
    f = tmp_path / "events.json"
    events = sample_events(1000)
    d = build_outputs([f"file:{f}"])
    done = threading.Event()
    turned = threading.Condition()
    rotated: list = []

    def writer():
        for i, ev in enumerate(events):
            d.emit(ev)
            if i % 100 == 99:
                # At least one rotation per 100 events however fast this thread is: it once emitted all
                # 1000 before the loop below had rotated twice. The rotation still races the sink's
                # writes of the queued events.
                with turned:
                    seen = len(rotated)
                    turned.wait_for(lambda seen=seen: len(rotated) > seen, timeout=10)
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    n = 0
    while not done.is_set() or n == 0:
        time.sleep(0.005)
        n += 1
        if not f.exists():  # reopened lazily: nothing written since the last rotation
            continue
        dst = tmp_path / f"events.json.{n}"
        os.rename(f, dst)  # logrotate: move, then signal
        with turned:
            rotated.append(dst)
            turned.notify_all()
        d.reopen()  # what the SIGHUP handler calls
        if n > 2000:  # 10 s: a writer stuck for good; the asserts below say what went wrong
            break
    t.join()
    d.close(1)
    texts = [p.read_text() for p in rotated] + [f.read_text() if f.exists() else ""]
    assert len(rotated) >= 10
    for text in texts:
        assert text == "" or text.endswith("\n")  # no torn last line in any file
    got = [e for text in texts for e in parse_events(text)]
    assert [identity(e) for e in got] == [identity(e) for e in events]  # none lost, none doubled, in order
    assert d.stats()[f"file:{f}"]["dropped"] == 0
