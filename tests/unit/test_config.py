"""`--config FILE`: TOML defaults for every flag, CLI > [command] table > top level > built-in defaults."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from sensor import config
from sensor.cli import cli


def write(tmp_path, text: str) -> str:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return str(p)


def show_default(result, flag: str) -> str:
    """The `[default: ...]` click prints for a flag in --help: the value the config file set."""
    options = result.output[result.output.index("Options:"):]
    text = " ".join(options.split())
    after = text[text.index(flag + " "):]
    return after[after.index("[default: ") + 10:].split(";")[0].split("]")[0]


@pytest.mark.parametrize("where", ["group", "command", "env"])
def test_config_sets_defaults(tmp_path, where):
    path = write(tmp_path, 'interface = ["lo"]\n[run]\ninterval = 7\nmax-entries = 4096\n')
    args = {"group": ["--config", path, "run", "--help"], "command": ["run", "--config", path, "--help"],
            "env": ["run", "--help"]}[where]
    env = {config.ENV_VAR: path} if where == "env" else {}
    r = CliRunner().invoke(cli, args, env=env)
    assert r.exit_code == 0, r.output
    assert show_default(r, "--interval") == "7"
    assert show_default(r, "--max-entries") == "4096"


def _probe_group() -> click.Group:
    """A group shaped like ours, with commands registered after it: flags added later are covered."""
    @click.group(cls=config.ConfigGroup)
    @config.config_option(envvar=config.ENV_VAR)
    def g() -> None:
        pass

    @g.command()
    @click.option("-i", "--interface", "interfaces", multiple=True, required=True)
    @click.option("--interval", type=float, default=1.0)
    @click.option("--bird-socket", "bird_sockets", multiple=True)
    @click.option("--once", is_flag=True)
    def run(interfaces, interval, bird_sockets, once) -> None:
        click.echo(repr((list(interfaces), interval, list(bird_sockets), once)))

    @g.group()
    def lab() -> None:
        pass

    @lab.command()
    @click.option("--peers", type=int, default=3)
    def up(peers) -> None:
        click.echo(f"peers={peers}")

    return g


def test_precedence_cli_over_table_over_top_level_over_default(tmp_path):
    g = _probe_group()
    path = write(tmp_path, 'interface = ["eth0"]\ninterval = 2.0\n'
                           '[run]\ninterval = 3.0\nbird-socket = "/b.ctl"\nonce = true\n'
                           '[lab.up]\npeers = 5\n')
    r = CliRunner().invoke(g, ["--config", path, "run"])
    assert r.output.strip() == "(['eth0'], 3.0, ['/b.ctl'], True)", r.output  # table beats top level
    r = CliRunner().invoke(g, ["--config", path, "run", "-i", "lo", "--interval", "9"])
    assert r.output.strip() == "(['lo'], 9.0, ['/b.ctl'], True)"  # the command line replaces the list
    r = CliRunner().invoke(g, ["run", "--config", path, "--bird_socket", "/x"])
    assert r.exit_code == 2 and "No such option" in r.output  # keys accept _, flags do not
    r = CliRunner().invoke(g, ["--config", path, "lab", "up"])
    assert r.output.strip() == "peers=5"
    r = CliRunner().invoke(g, ["lab", "up"])
    assert r.output.strip() == "peers=3"  # no config: built-in default


def test_required_flag_from_config(tmp_path):
    g = _probe_group()
    assert CliRunner().invoke(g, ["run"]).exit_code == 2  # -i is required ...
    r = CliRunner().invoke(g, ["--config", write(tmp_path, 'interface = "lo"\n'), "run"])
    assert r.exit_code == 0 and r.output.startswith("(['lo']")  # ... and a config key satisfies it


@pytest.mark.parametrize(("text", "needle"), [
    ('bogus = 1\n', "unknown key 'bogus'"),
    ('[run]\nbogus = 1\n', "unknown key 'bogus' in [run]"),
    ('[frobnicate]\nx = 1\n', "unknown key 'frobnicate'"),
    ('[run\n', "not valid TOML"),
    ('[run]\nversion = true\n', "unknown key 'version'"),
])
def test_bad_config_is_a_one_line_usage_error(tmp_path, text, needle):
    r = CliRunner().invoke(cli, ["--config", write(tmp_path, text), "run", "-i", "lo"])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_missing_config_file(tmp_path):
    r = CliRunner().invoke(cli, ["--config", str(tmp_path / "nope.toml"), "run", "-i", "lo"])
    assert r.exit_code == 2 and "cannot read" in r.output


def test_every_flag_of_every_command_is_a_config_key():
    """Generic: whatever options the commands have (including other engineers' new ones) map by name."""
    def walk(cmd: click.Command, path: list[str]):
        for p in cmd.params:
            if isinstance(p, click.Option) and p.name not in ("config", "help", "version"):
                yield path, p
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])

    count = 0
    for path, opt in walk(cli, []):
        if not path:
            continue
        long = next(o for o in opt.opts + opt.secondary_opts if o.startswith("--"))[2:]
        table: dict = {long: True if opt.is_flag and opt.is_bool_flag else ["x"] if opt.multiple else "x"}
        for name in reversed(path):
            table = {name: table}
        dm, _ = config.build_default_map(cli, table, "t.toml")
        for name in path:
            dm = dm[name]
        assert opt.name in dm, (path, long)
        count += 1
    assert count >= 12


def test_documented_examples_are_valid(tmp_path):
    """The TOML examples in docs/operations.md and deploy/ are accepted by the real CLI."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    blocks = re.findall(r"```toml\n(.*?)```", (repo / "docs/operations.md").read_text(), re.S)
    assert blocks
    for text in blocks:
        dm = config.load(write(tmp_path, text), cli)
        assert dm["run"]["interfaces"] == ["eth0", "bond0"] and dm["top"]["interfaces"] == ["eth0", "bond0"]
        assert dm["run"]["rate_limit"] == "dry-run" and dm["top"]["sort"] == "senders"


def _bool_pairs(group, path=()):
    """(command path, option) for every --x/--no-x option of every command."""
    import click

    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _bool_pairs(cmd, (*path, name))
            continue
        for p in cmd.params:
            if isinstance(p, click.Option) and p.secondary_opts:
                yield (*path, name), p


def test_lab_up_no_wait_true_means_wait_false(tmp_path):
    """Issue 13 item 10: the negative key of a pair used to set the option itself (`no-wait = true` gave
    wait = True)."""
    f = tmp_path / "c.toml"
    f.write_text("[lab.up]\nno-wait = true\n")
    assert config.load(str(f), cli)["lab"]["up"]["wait"] is False


@pytest.mark.parametrize("value", [True, False])
def test_every_flag_pair_from_toml_both_ways(tmp_path, value):
    pairs = list(_bool_pairs(cli))
    assert any(path == ("lab", "up") and p.name == "wait" for path, p in pairs)  # the list is not empty
    for path, p in pairs:
        table = "[" + ".".join(path) + "]\n"
        for key, want in ((p.opts[-1][2:], value), (p.secondary_opts[-1][2:], not value)):
            f = tmp_path / "c.toml"
            f.write_text(f"{table}{key} = {'true' if value else 'false'}\n")
            dm = config.load(str(f), cli)
            for name in path:
                dm = dm[name]
            assert dm[p.name] is want, (path, key, value)


def test_a_flag_given_a_non_boolean_is_a_clear_error(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[lab.up]\nno-wait = "yes"\n')
    with pytest.raises(ValueError, match="'no-wait' must be true or false"):
        config.load(str(f), cli)
