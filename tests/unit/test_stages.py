"""The stage wiring: one builder, one order, each stage's options taken by that stage only."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from sensor.bindings.stage import BindingStage
from sensor.cli import cli
from sensor.errors import SensorError
from sensor.model import StageContext
from sensor.neigh.stage import NeighStage
from sensor.outputs.stage import OutputStage
from sensor.peers.stage import PeerStage
from sensor.pipeline.limit_stage import RateLimitStage
from sensor.pipeline.stages import STAGES, build_stages, option_names, stage_options


def _opts(command: click.Command, *args: str) -> dict:
    """The keyword arguments click would pass to the command for `args`, without running it."""
    ctx = command.make_context(command.name, list(args))
    return dict(ctx.params)


def _ctx() -> StageContext:
    return StageContext(interval=1.0, attach="both", hostname="n1", log=lambda _m: None)


def test_peers_come_before_the_limits_that_read_their_verdicts() -> None:
    assert STAGES.index(NeighStage) < STAGES.index(PeerStage) < STAGES.index(RateLimitStage)


def test_each_option_belongs_to_exactly_one_stage() -> None:
    names = [n for cls in (OutputStage, *STAGES) for n in option_names(cls.options)]
    assert len(names) == len(set(names))
    assert {"rate_limit", "limit_pps", "bird_sockets", "verdict_window", "output", "metrics_port"} <= set(names)


@pytest.mark.parametrize(("command", "outputs"), [("run", True), ("top", False)])
def test_run_and_top_carry_every_stage_option(command: str, outputs: bool) -> None:
    params = {p.name for p in cli.commands[command].params}
    expected = {n for cls in ((OutputStage,) if outputs else ()) + STAGES for n in option_names(cls.options)}
    assert expected <= params
    assert ("output" in params) is outputs


def test_builder_takes_each_stage_its_own_options_in_order(tmp_path) -> None:
    params = _opts(cli.commands["run"], "-i", "lo", "--rate-limit", "dry-run", "-o", f"file:{tmp_path}/x.json")
    stage_opts = {k: params[k] for k in option_names(p for cls in (OutputStage, *STAGES) for p in cls.options)}
    ctx = _ctx()
    stages = build_stages(ctx, stage_opts, outputs=True)
    try:
        assert [type(s) for s in stages] == [OutputStage, NeighStage, PeerStage, BindingStage, RateLimitStage]
        assert stage_opts == {}  # every option consumed by its stage
        limiter = stages[4]
        assert limiter.verdicts is ctx.verdicts and limiter.peers is ctx.peers  # from the PeerStage
        # the neighbour stage's unresolved entries are the verdicts' zombie evidence, one shared dict
        assert stages[2].engine.neigh is ctx.unresolved is stages[1].unresolved
    finally:
        for s in reversed(stages):
            s.close()


def test_rate_limit_off_builds_no_limit_stage() -> None:
    params = _opts(cli.commands["top"], "-i", "lo", "--no-neigh", "--no-bindings")
    stages = build_stages(_ctx(), {k: params[k] for k in option_names(p for c in STAGES for p in c.options)},
                          outputs=False)
    assert [type(s) for s in stages] == [PeerStage]
    for s in stages:
        s.close()


def test_a_stage_that_fails_to_build_closes_the_ones_built_before(tmp_path, monkeypatch) -> None:
    params = _opts(cli.commands["run"], "-i", "lo", "--limit-pps", "5", "-o", f"file:{tmp_path}/x.json")
    stage_opts = {k: params[k] for k in option_names(p for cls in (OutputStage, *STAGES) for p in cls.options)}
    closed: list[str] = []
    orig = OutputStage.close
    monkeypatch.setattr(OutputStage, "close", lambda self, timeout=0: closed.append("outputs") or orig(self, 0))
    with pytest.raises(SensorError, match="--limit-pps needs --rate-limit"):
        build_stages(_ctx(), stage_opts, outputs=True)
    assert closed == ["outputs"]


def test_stage_options_decorate_a_new_command() -> None:
    @click.command()
    @stage_options(outputs=False)
    def probe(**kw) -> None:
        click.echo(",".join(sorted(kw)))

    r = CliRunner().invoke(probe, [])
    assert r.exit_code == 0, r.output
    assert "rate_limit" in r.output and "bird_sockets" in r.output and "output" not in r.output


def test_a_stage_error_is_one_warning_until_an_interval_succeeds() -> None:
    from sensor.events.encode import ErrorOnce

    errors = ErrorOnce("peer-stage-error", "peers/verdicts")
    first = errors.warn(KeyError("x"), 1.0, "h")
    assert [e["event"]["action"] for e in first] == ["peer-stage-error"]
    assert first[0]["message"] == "peers/verdicts skipped this interval: KeyError: 'x'"
    assert errors.warn(KeyError("x"), 2.0, "h") == []  # the same error again: silent
    assert len(errors.warn(ValueError("y"), 3.0, "h")) == 1  # a new one is said
    errors.ok()
    assert len(errors.warn(ValueError("y"), 4.0, "h")) == 1  # after a good interval, said again
