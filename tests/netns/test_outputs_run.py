"""`arp-sensor run` with several --output at once, SIGHUP rotation and /metrics, on a real veth in netns."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families

from tests.support import fixtures_netns
from tests.support import frames as F
from tests.support.fixtures_netns import ns_exec, sensor_cmd, sensor_env
from tests.support.fixtures_schema import parse_events
from tests.support.receivers import SilentReceiver, TcpLineReceiver, wait_for

SCRAPE = ("import sys, urllib.request\n"
          "sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:' + sys.argv[1] + '/metrics', timeout=5)"
          ".read().decode())\n")


def scrape(ns: str, port: int) -> dict[tuple[str, tuple], float]:
    text = ns_exec(ns, sys.executable, "-c", SCRAPE, str(port)).stdout
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def requests_by_ip(events) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in events:
        if e["event"]["dataset"] == "arp_sensor.target" and e["network"]["direction"] == "ingress" and "arp" in e:
            out[e["destination"]["ip"]] = out.get(e["destination"]["ip"], 0) + e["arp"]["requests"]
    return out


def test_run_streams_to_every_output_reopens_on_sighup_and_serves_metrics(veth_pair, sensor, tmp_path):
    sock = tmp_path / "r.sock"  # unix socket: the filesystem crosses network namespaces, 127.0.0.1 does not
    recv = TcpLineReceiver(path=str(sock))
    log = tmp_path / "events.json"
    port = 9464  # the sensor's namespace is fresh: any port is free there
    try:
        s = sensor(veth_pair.b, ["-i", veth_pair.b_if, "--interval", "0.3", "--top", "0",
                                 "-o", "-", "-o", f"file:{log}", "-o", f"unix:{sock}",
                                 "--metrics-port", str(port), "--tag", "arp.test"])
        veth_pair.send_frames([F.arp_request("198.18.0.1", "198.18.0.7")] * 10)
        wait_for(lambda: log.exists() and b"198.18.0.7" in log.read_bytes(), 10, "first burst in the file")
        os.rename(log, tmp_path / "events.json.1")  # logrotate: move, then SIGHUP
        s.proc.send_signal(signal.SIGHUP)
        veth_pair.send_frames([F.arp_request("198.18.0.1", "198.18.0.8")] * 5)
        wait_for(lambda: log.exists() and b"198.18.0.8" in log.read_bytes(), 10, "second burst in the new file")
        metrics = scrape(veth_pair.b, port)
        assert s.finish() == 0, s.stderr  # SIGHUP reopened files; it did not kill the sensor
        wait_for(lambda: len(recv.lines) >= len(s.stdout.splitlines()), 5, "unix receiver caught up")
    finally:
        recv.stop()

    stdout_lines = s.stdout.splitlines()
    rotated = (tmp_path / "events.json.1").read_text().splitlines()
    current = log.read_text().splitlines()
    assert rotated and current
    assert rotated + current == stdout_lines  # every line in exactly one file, whole, in order
    assert [line.decode() for line in recv.lines] == stdout_lines and not recv.torn
    events = parse_events(s.stdout)
    assert requests_by_ip(events) == {"198.18.0.7": 10, "198.18.0.8": 5}

    health = [e["arp_sensor"]["health"] for e in events if e["event"]["dataset"] == "arp_sensor.health"]
    assert [o["name"] for o in health[-1]["outputs"]] == ["-", f"file:{log}", f"unix:{sock}"]
    assert all(o["dropped"] == 0 and o["connected"] for o in health[-1]["outputs"])
    assert health[-1]["output_sent"] >= 3 * (len(events) - 1)

    assert metrics[("arp_sensor_arp_operations_total", (("operation", "request"),))] >= 15
    assert metrics[("arp_sensor_output_sent_total", (("output", f"unix:{sock}"),))] > 0
    assert metrics[("arp_sensor_output_connected", (("output", f"file:{log}"),))] == 1
    assert metrics[("arp_sensor_interfaces", ())] == 1


def test_receiver_that_never_reads_does_not_delay_polling(veth_pair, sensor, tmp_path, monkeypatch):
    """Thousands of target events into a unix receiver that accepts and never reads: the sensor keeps
    its interval, drops (and counts) what does not fit, and exits within its shutdown bound."""
    # In-sensor validation costs ~1 ms per distinct event, which would itself delay the polls being
    # timed here; every line is validated by parse_events below instead.
    env = {k: v for k, v in fixtures_netns.sensor_env().items() if k != "ARP_SENSOR_VALIDATE_SCHEMA"}
    monkeypatch.setattr(fixtures_netns, "sensor_env", lambda: env)
    silent = SilentReceiver(path=str(tmp_path / "s.sock"))
    spec = f"unix://{tmp_path / 's.sock'}?queue=200"
    try:
        # Events go to a file: the test reads the sensor's stdout pipe only at the end, and stdout is
        # synchronous by design (a reader that stops reading stalls a `run | jq` pipeline).
        log = tmp_path / "events.json"
        s = sensor(veth_pair.b, ["-i", veth_pair.b_if, "--interval", "0.2", "--duration", "4", "--top", "0",
                                 "-o", f"file:{log}", "-o", spec])
        for burst in range(4):  # 4 x 1000 distinct targets, each one event: far more than fits
            veth_pair.send_frames([F.arp_request("198.18.0.1", f"198.18.{1 + burst * 4 + i // 250}.{i % 250 + 1}")
                                   for i in range(1000)])
        t0 = time.monotonic()
        assert s.finish() == 0, s.stderr
        assert time.monotonic() - t0 < 4 + 3 + 5  # --duration, the 3 s flush bound, process exit
    finally:
        silent.stop()
    events = parse_events(log.read_text())
    targets = [e for e in events if e["event"]["dataset"] == "arp_sensor.target"]
    assert len(targets) >= 4000
    health = [e for e in events if e["event"]["dataset"] == "arp_sensor.health"]
    stamps = [datetime.fromisoformat(e["@timestamp"]).timestamp() for e in health]
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(stamps)]
    # One per interval (20 in 4 s). Blocked on the receiver, there would be one or two; the slack is for
    # a loaded machine, where a poll emitting 1,000 events can take a few hundred ms.
    assert len(health) >= 10, gaps
    assert max(gaps) < 2.0, gaps
    out = {o["name"]: o for o in health[-1]["arp_sensor"]["health"]["outputs"]}
    assert out[spec]["dropped"] > 0 and out[spec]["queued"] <= 200 + 512, out
    assert out[f"file:{log}"]["dropped"] == 0


def test_bad_output_is_one_line_usage_error(veth_pair):
    p = subprocess.run(["ip", "netns", "exec", veth_pair.b,
                        *sensor_cmd("run", "-i", veth_pair.b_if, "-o", "kafka://broker:9092")],
                       capture_output=True, text=True, env=sensor_env(), timeout=60)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "bad --output 'kafka://broker:9092'" in p.stderr
    assert p.stdout == ""


def test_metrics_port_taken_is_one_line_error(veth_pair):
    blocker = subprocess.Popen(["ip", "netns", "exec", veth_pair.b, sys.executable, "-c",
                                "import socket,time; s=socket.socket(); s.bind(('127.0.0.1', 9464)); s.listen();"
                                "print('ok', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert blocker.stdout.readline().strip() == "ok"
        t0 = time.monotonic()
        p = subprocess.run(["ip", "netns", "exec", veth_pair.b,
                            *sensor_cmd("run", "-i", veth_pair.b_if, "--metrics-port", "9464")],
                           capture_output=True, text=True, env=sensor_env(), timeout=60)
        assert p.returncode == 2, p.stderr
        assert p.stderr.count("\n") == 1 and "cannot serve metrics on 127.0.0.1:9464" in p.stderr
        assert time.monotonic() - t0 < 30
    finally:
        blocker.kill()
        blocker.wait()


def test_stalled_stdout_never_stops_the_loop_nor_sigterm(veth_pair, tmp_path):
    """Issue 13 item 8: stdout is a pipe nobody reads (a stalled container log pipe, shrunk to one page so
    it fills at once). The loop goes on: a file output keeps getting every interval, ARP is counted
    exactly, the stall shows as `queued` on stdout's health entry, and SIGTERM still ends the sensor.
    Stdout used to be written synchronously: the loop blocked in write() and SIGTERM hung."""
    import fcntl

    log, ready, err = tmp_path / "events.json", tmp_path / "ready", tmp_path / "stderr"
    with open(err, "wb") as errf:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", veth_pair.b, *sensor_cmd("run", "-i", veth_pair.b_if, "--interval", "0.1",
                                                               "--top", "0", "-o", "-", "-o", f"file:{log}",
                                                               "--ready-file", str(ready))],
            stdout=subprocess.PIPE, stderr=errf, env=sensor_env(), start_new_session=True)
    try:
        fcntl.fcntl(proc.stdout.fileno(), 1031, 4096)  # F_SETPIPE_SZ: one page
        wait_for(ready.exists, 60, "sensor ready")

        def health() -> list[dict]:
            return [e for e in parse_events(log.read_bytes()) if e["event"]["dataset"] == "arp_sensor.health"
                    and e["event"]["kind"] == "metric"]

        def stdout_queued() -> int:
            h = health()
            return next(o["queued"] for o in h[-1]["arp_sensor"]["health"]["outputs"] if o["name"] == "-") if h else 0

        # Far more than a page of events: stdout is stalled, the file still gets every interval.
        wait_for(lambda: len(health()) >= 40 and stdout_queued() > 0, 60, "intervals while stdout is stalled")
        veth_pair.send_frames([F.arp_request("198.18.0.1", "198.18.0.66")] * 6)
        wait_for(lambda: requests_by_ip(parse_events(log.read_bytes())).get("198.18.0.66") == 6, 30,
                 "requests counted while stdout is stalled")
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError("SIGTERM hung behind the stalled stdout") from None
        assert rc == 0, err.read_text()
        assert "Traceback" not in err.read_text()
        assert requests_by_ip(parse_events(log.read_bytes())).get("198.18.0.66") == 6
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
