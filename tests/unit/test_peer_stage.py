"""PeerStage: the glue between the Runner's hooks and PeerBook + VerdictEngine."""

from __future__ import annotations

from types import SimpleNamespace

from sensor.model import StageContext, TargetWindow, WindowKey
from sensor.peers import PeerBook
from sensor.peers.book import CALICO_BIRD_SOCKETS
from sensor.peers.stage import PeerStage
from sensor.pipeline.detect import VerdictEngine
from tests.support.fakebird import FakeBird
from tests.support.fixtures_schema import validate_event


def test_from_options_defaults_to_calico_sockets_only_when_none_given(tmp_path):
    ctx = StageContext(interval=1.0, attach="both", hostname="n1", log=print)
    st = PeerStage.from_options(ctx, bird_sockets=None, peers_file=None, k8s_nodes=None, verdict_window=10)
    assert ctx.verdicts is st.engine and ctx.peers is st.book  # published for the later stages
    assert [s["path"] for s in st.book.sources()] == list(CALICO_BIRD_SOCKETS)
    assert st.book.refresh(1.0) == []  # absent defaults are silent
    mine = str(tmp_path / "b.ctl")
    st = PeerStage.from_options(StageContext(interval=0.4, attach="both", hostname="n1", log=print),
                                bird_sockets=[mine], peers_file=None, k8s_nodes=None, verdict_window=5)
    assert [s["path"] for s in st.book.sources()] == [mine]
    assert st.book.timeout == 0.1 and st.book.budget == 0.2 and st.engine.window_s == 5


def test_first_hand_check_is_on_by_default_and_can_be_turned_off():
    """--no-first-hand-check: the engine gets no resolver, so nothing goes on the wire for a candidate."""
    from click.testing import CliRunner

    from sensor.cli import cli
    from sensor.peers.own import kernel_resolve

    ctx = StageContext(interval=1.0, attach="both", hostname="n1", log=print)
    on = PeerStage.from_options(ctx, bird_sockets=None, peers_file=None, k8s_nodes=None, verdict_window=10)
    off = PeerStage.from_options(ctx, bird_sockets=None, peers_file=None, k8s_nodes=None, verdict_window=10,
                                 first_hand_check=False)
    assert on.engine.confirm is kernel_resolve and off.engine.confirm is None
    out = CliRunner().invoke(cli, ["run", "--help"]).output
    assert "--first-hand-check / --no-first-hand-check" in out


def test_install_annotate_and_interval_hook(tmp_path):
    sock = str(tmp_path / "bird.ctl")
    srv = FakeBird(sock)
    try:
        st = PeerStage(PeerBook([sock]), VerdictEngine(window_s=2))
        runner = SimpleNamespace(interval_hooks=[], target_annotators=[], health_sources=[], emitted=[])
        runner.emit = runner.emitted.append
        st.install(runner)
        assert runner.emitted == [] and runner.target_annotators == [st.annotate]
        assert st.annotate("198.18.0.7") == {"name": "Mesh_198_18_0_7", "state": "Connect",
                                             "last_error": "Socket: No route to host", "active": False}
        assert st.annotate("198.18.0.99") is None
        w = TargetWindow(WindowKey(2, "ingress", 0, "198.18.0.7"), "eth0", 1.0, requests=3, senders=1,
                         top_senders=[("198.18.0.1", 3)])
        acts = []
        for t in range(6):
            for e in runner.interval_hooks[0](SimpleNamespace(windows=[w]), float(t)):
                acts.append(validate_event(e)["event"]["action"])
        assert acts == ["zombie-peer-detected"]
    finally:
        srv.close()


def test_a_failing_stage_never_raises_and_warns_once_per_error():
    st = PeerStage(PeerBook([]), VerdictEngine())
    bad = SimpleNamespace()  # no .windows: an AttributeError inside the stage
    (ev,) = st.on_interval(bad, 1.0)
    validate_event(ev)
    assert ev["event"]["action"] == "peer-stage-error" and "AttributeError" in ev["message"]
    assert st.on_interval(bad, 2.0) == []
    assert st.on_interval(SimpleNamespace(windows=[]), 3.0) == []
    assert len(st.on_interval(bad, 4.0)) == 1  # a new failure after recovery warns again
