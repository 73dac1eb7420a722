"""`arp-sensor top` under a real pseudo-terminal (tmux) and over a pipe, against ARP in namespaces."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time

import pytest

from tests.support import frames
from tests.support.fixtures_netns import REPO, attached_programs, sensor_cmd, sensor_env, unique
from tests.unit.test_top import BUSY, QUIET


class Traffic:
    """ARP requests from namespace a for BUSY (many, several senders) and QUIET (few), until stopped."""

    def __init__(self, pair, busy: str = BUSY) -> None:
        burst = [frames.arp_request(f"198.18.0.{10 + i % 5}", busy) for i in range(40)]
        burst += [frames.arp_request("198.18.0.1", QUIET)]
        self.pair, self.burst = pair, burst
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.pair.send_frames(self.burst)
            self.stop.wait(0.2)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)


@pytest.fixture
def tmux():
    if not shutil.which("tmux"):
        pytest.skip("tmux not installed")
    sock = unique("arpsensor-top-")
    cmd = ["tmux", "-L", sock]
    yield cmd
    subprocess.run([*cmd, "kill-server"], capture_output=True)  # only the server on our own socket


def named_cells(table: str, row: str) -> dict[str, str]:
    """A table row's cells by column header (columns come and go with the terminal's width)."""
    header = next(ln for ln in table.splitlines() if "TARGET IP" in ln)
    names = [c.strip() for c in re.split("[┃│]", header)]
    return dict(zip(names, [c.strip() for c in row.split("│")], strict=False))


def _pane(tmux: list[str]) -> str:
    r = subprocess.run([*tmux, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True)
    return r.stdout


@pytest.mark.parametrize("quit_key", ["q", "C-c"])
def test_top_in_a_terminal(veth_pair, tmux, tmp_path, quit_key):
    status = tmp_path / "status"
    env = sensor_env()
    argv = ["ip", "netns", "exec", veth_pair.b, *sensor_cmd("top", "-i", veth_pair.b_if, "--interval", "0.5")]
    # tmux hands its server's environment to the pane; COLUMNS/LINES from pytest would pin rich to 80x24.
    shell = (f"cd {shlex.quote(str(REPO))} && env -u COLUMNS -u LINES PYTHONPATH={shlex.quote(env['PYTHONPATH'])} "
             f"{shlex.join(argv)} 2>{tmp_path}/stderr; echo $? > {status}")
    subprocess.run([*tmux, "new-session", "-d", "-s", "top", "-x", "200", "-y", "40", shell], check=True)
    with Traffic(veth_pair):
        deadline = time.monotonic() + 90
        screen = ""
        while time.monotonic() < deadline:
            screen = _pane(tmux)
            busy = [ln for ln in screen.splitlines() if BUSY in ln]
            if busy and "198.18.0.1" in busy[0] and QUIET in screen:
                break
            assert not status.exists(), (tmp_path / "stderr").read_text()
            time.sleep(0.3)
        else:
            raise AssertionError(f"busy target not shown:\n{screen}")
    lines = screen.splitlines()
    rows = [ln for ln in lines if "198.18.0." in ln and "│" in ln]
    assert BUSY in rows[0], screen  # the busiest target is the first row
    busy, quiet = named_cells(screen, rows[0]), named_cells(screen, rows[1])
    assert float(busy["REQ/S"].replace(",", "")) > float(quiet["REQ/S"].replace(",", ""))
    assert "MAC" in busy  # a wide terminal shows the MAC beside each target (empty: nobody answered)
    assert attached_programs(veth_pair.b, veth_pair.b_if)["xdp"]  # it is attached while it runs
    subprocess.run([*tmux, "send-keys", "-t", "top", quit_key], check=True)
    deadline = time.monotonic() + 30
    while not status.exists():
        assert time.monotonic() < deadline, f"did not quit on {quit_key}:\n{_pane(tmux)}"
        time.sleep(0.1)
    time.sleep(0.1)
    assert status.read_text().strip() == "0", (tmp_path / "stderr").read_text()
    assert "Traceback" not in (tmp_path / "stderr").read_text()
    assert attached_programs(veth_pair.b, veth_pair.b_if) == {"xdp": [], "ingress": [], "egress": []}


def test_top_once_over_a_pipe(veth_pair):
    with Traffic(veth_pair):
        r = subprocess.run(["ip", "netns", "exec", veth_pair.b,
                            *sensor_cmd("top", "-i", veth_pair.b_if, "--once", "--interval", "2")],
                           capture_output=True, text=True, env=sensor_env(), cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "\x1b[" not in r.stdout  # no terminal: no escape sequences
    rows = [ln for ln in r.stdout.splitlines() if "198.18.0." in ln and "│" in ln]
    assert rows and BUSY in rows[0], r.stdout
    assert named_cells(r.stdout, rows[0])["SENDERS"] == "5"  # five distinct senders asked for the busy target
    assert "BGP columns empty" in r.stdout
    assert attached_programs(veth_pair.b, veth_pair.b_if) == {"xdp": [], "ingress": [], "egress": []}


def test_top_names_the_bgp_peer_and_its_verdict(veth_pair):
    """A real BIRD whose mesh peers are dead: ARP for one of them shows its protocol, state, zombie-peer.
    With --rate-limit dry-run --limit-ingress (the storm arrives on ingress here) the zombie gets a limit
    and LIMIT shows what it would drop.
    Also: without --once and without a terminal, one table per interval; SIGINT quits and detaches."""
    import signal

    from tests.support.birdproc import BirdNetns

    with BirdNetns(n_peers=2) as bird:
        peer = bird.peers[0]
        proc = subprocess.Popen(["ip", "netns", "exec", veth_pair.b, *sensor_cmd(
            "top", "-i", veth_pair.b_if, "--interval", "0.5", "--bird-socket", bird.socket,
            "--verdict-window", "1", "--rate-limit", "dry-run", "--limit-ingress")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=sensor_env(), cwd=REPO,
            start_new_session=True)
        try:
            with Traffic(veth_pair, busy=peer):
                time.sleep(8)  # compile + attach, then > two verdict windows of evidence
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    tables = out.split("arp-sensor top ·")
    assert len(tables) >= 4  # one per interval
    row = next(ln for ln in tables[-1].splitlines() if peer in ln)
    cells = named_cells(tables[-1], row)
    assert cells["BGP PEER"] == f"Mesh_{peer.replace('.', '_')}"
    assert cells["STATE"] not in ("", "Established", "unknown")
    assert cells["VERDICT"] == "zombie-peer"
    mode, would_drop = cells["LIMIT"].split()  # the zombie is limited (dry run): what the kernel would drop
    assert mode == "dry-run" and int(would_drop) > 0
    assert "rate limits: dry-run" in tables[-1]
    assert attached_programs(veth_pair.b, veth_pair.b_if) == {"xdp": [], "ingress": [], "egress": []}


def test_top_events_from_a_running_sensor(veth_pair, sensor, tmp_path):
    """The service's JSON (here: `run` writing to a file) shown by top without attaching anything."""
    p = sensor(veth_pair.b, ["-i", veth_pair.b_if, "--interval", "0.5", "--duration", "3"])
    with Traffic(veth_pair):
        assert p.finish() == 0, p.stderr
    log = tmp_path / "events.json"
    log.write_text(p.stdout)
    for args, stdin in (([str(log)], None), (["-"], p.stdout)):  # a file, and a pipe
        r = subprocess.run(sensor_cmd("top", "--events", *args, "--once"), input=stdin, capture_output=True,
                           text=True, env=sensor_env(), cwd=REPO, timeout=60)
        assert r.returncode == 0, r.stderr
        rows = [ln for ln in r.stdout.splitlines() if "198.18.0." in ln and "│" in ln]
        assert rows and BUSY in rows[0], r.stdout
        cells = named_cells(r.stdout, rows[0])
        assert cells["SENDERS"] == "5" and float(cells["REQ/S"]) > 0
        assert "events of" in r.stdout


def test_top_events_in_a_terminal_reads_keys_from_the_tty(veth_pair, tmux, tmp_path):
    """`run | top --events -` under a pseudo-terminal: the pipe carries events, q comes from /dev/tty."""
    status = tmp_path / "status"
    env = sensor_env()
    ready = tmp_path / "run.pid"  # run writes its pid there once attached
    run = ["ip", "netns", "exec", veth_pair.b, *sensor_cmd("run", "-i", veth_pair.b_if, "--interval", "0.5",
                                                          "--ready-file", str(ready))]
    top_cmd = sensor_cmd("top", "--events", "-")
    shell = (f"cd {shlex.quote(str(REPO))} && export PYTHONPATH={shlex.quote(env['PYTHONPATH'])} && "
             f"unset COLUMNS LINES; {shlex.join(run)} 2>{tmp_path}/run.err | "
             f"{{ {shlex.join(top_cmd)} 2>{tmp_path}/stderr; echo $? > {status}; }}")
    subprocess.run([*tmux, "new-session", "-d", "-s", "top", "-x", "200", "-y", "40", shell], check=True)
    with Traffic(veth_pair):
        deadline = time.monotonic() + 90
        screen = ""
        while time.monotonic() < deadline:
            screen = _pane(tmux)
            rows = [ln for ln in screen.splitlines() if "198.18.0." in ln and "│" in ln]
            if rows and BUSY in rows[0]:
                break
            assert not status.exists(), (tmp_path / "stderr").read_text() + (tmp_path / "run.err").read_text()
            time.sleep(0.3)
        else:
            raise AssertionError(f"busy target not shown:\n{screen}")
    subprocess.run([*tmux, "send-keys", "-t", "top", "q"], check=True)
    deadline = time.monotonic() + 30
    while not status.exists():
        assert time.monotonic() < deadline, f"did not quit:\n{_pane(tmux)}"
        time.sleep(0.1)
    assert status.read_text().strip() == "0", (tmp_path / "stderr").read_text()
    assert "Traceback" not in (tmp_path / "stderr").read_text()
    # top attached nothing: the programs there are run's, and go when run stops (a sink that went away
    # does not stop the sensor by design, so stop it like its service manager would).
    assert attached_programs(veth_pair.b, veth_pair.b_if)["xdp"]
    os.kill(int(ready.read_text()), signal.SIGTERM)
    deadline = time.monotonic() + 15
    while attached_programs(veth_pair.b, veth_pair.b_if) != {"xdp": [], "ingress": [], "egress": []}:
        assert time.monotonic() < deadline, "run did not detach"
        time.sleep(0.2)


def test_top_exits_when_its_interface_is_deleted(veth_pair):
    proc = subprocess.Popen(["ip", "netns", "exec", veth_pair.b, *sensor_cmd(
        "top", "-i", veth_pair.b_if, "--interval", "0.3")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=sensor_env(), cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not attached_programs(veth_pair.b, veth_pair.b_if)["xdp"]:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
        subprocess.run(["ip", "-n", veth_pair.a, "link", "del", veth_pair.a_if], check=True)  # takes veth-b too
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no interface left to watch" in lines[0] and "Traceback" not in err


