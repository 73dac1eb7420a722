"""`--config FILE`: a TOML file that mirrors the command-line flags, fed to click as its `default_map`.

Generic on purpose: every option of every command is accepted by its long flag name (`bird-socket` or
`bird_socket`) or its parameter name, so flags added later are covered without touching this module.

    # /etc/arp-sensor/config.toml
    interface = ["eth0"]          # top level: every command that has --interface (run, top, detach)
    [run]                         # one table per command: only that command
    interval = 5
    bird-socket = ["/var/run/calico/bird.ctl"]

Precedence: flags on the command line > the command's table > top-level keys > built-in defaults.
A repeatable flag given on the command line replaces the file's list (it does not add to it).
Unknown keys, unknown tables and TOML syntax errors are usage errors (exit 2, one line).
"""

from __future__ import annotations

import tomllib
from typing import Any

import click

ENV_VAR = "ARP_SENSOR_CONFIG"


def _keys(param: click.Parameter) -> dict[str, bool]:
    """Every name a config key may use for one option -> whether it is the negative of a --x/--no-x pair
    (`no-wait = true` means `wait = false`)."""
    names = {param.name: False} if param.name else {}
    for opts, negated in ((getattr(param, "opts", []), False), (getattr(param, "secondary_opts", []), True)):
        for opt in opts:
            if opt.startswith("--"):
                names[opt[2:]] = negated
                names[opt[2:].replace("-", "_")] = negated
    return names


def _flag_name(param: click.Parameter) -> str:
    """The key to show for an option: its first long flag without dashes (`bird-socket`)."""
    longs = [o[2:] for o in getattr(param, "opts", []) if o.startswith("--")]
    return longs[0] if longs else str(param.name)


def _options(cmd: click.Command) -> dict[str, tuple[click.Option, bool]]:
    out = {}
    for p in cmd.params:
        if isinstance(p, click.Option) and p.name not in ("config", "help", "version"):
            for k, negated in _keys(p).items():
                out[k] = (p, negated)
    return out


def _value(key: str, opt: tuple[click.Option, bool], value: Any, where: str) -> Any:
    param, negated = opt
    if param.is_flag and param.is_bool_flag:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {key!r} must be true or false, not {value!r}")
        return not value if negated else value
    if param.multiple and not isinstance(value, list):
        return [value]
    return value


def build_default_map(group: click.Group, data: dict[str, Any], where: str) -> tuple[dict[str, Any], set[str]]:
    """(click default_map for `group`, the top-level keys some command used). Raises ValueError."""
    globals_ = {k: v for k, v in data.items() if not isinstance(v, dict)}
    used: set[str] = set()

    def walk(cmd: click.Command, table: dict[str, Any], path: str) -> dict[str, Any]:
        opts = _options(cmd)
        out: dict[str, Any] = {}
        for k, v in globals_.items():
            if k in opts:
                out[opts[k][0].name] = _value(k, opts[k], v, where)
                used.add(k)
        subs = cmd.commands if isinstance(cmd, click.Group) else {}
        for k, v in table.items():
            if path and k in opts:
                out[opts[k][0].name] = _value(k, opts[k], v, where)
            elif isinstance(v, dict) and k in subs:
                out[k] = walk(subs[k], v, f"{path}.{k}" if path else k)
            elif path or isinstance(v, dict):
                place = f"[{path}]" if path else "the top level"
                flags = {_flag_name(o) for o, _ in opts.values()}
                known = sorted(flags | {f"[{path}.{n}]" for n in subs}) if path else [f"[{n}]" for n in sorted(subs)]
                raise ValueError(f"{where}: unknown key {k!r} in {place} (known: {', '.join(known)})")
        for name, sub in subs.items():  # commands without a table still get the top-level keys
            if name not in out and globals_:
                out[name] = walk(sub, {}, f"{path}.{name}" if path else name)
        return out

    return walk(group, data, ""), used


def load(path: str, group: click.Group) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    dm, used = build_default_map(group, data, path)
    unused = sorted(k for k, v in data.items() if not isinstance(v, dict) and k not in used)
    if unused:
        raise ValueError(f"{path}: unknown key {unused[0]!r} (no command has --{unused[0].replace('_', '-')})")
    return dm


def _root_group(ctx: click.Context) -> click.Group:
    root = ctx.find_root().command
    assert isinstance(root, click.Group)
    return root


def _callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if not value or ctx.resilient_parsing:
        return value
    try:
        dm = load(value, _root_group(ctx))
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None
    # Find this context's part of the map: the group gets all of it, a command its own table.
    path = []
    c: click.Context | None = ctx
    while c is not None and c.parent is not None:
        path.append(c.info_name)
        c = c.parent
    for name in reversed(path):
        dm = dm.get(name, {})
    ctx.default_map = dm
    return value


def config_option(envvar: str | None = None):
    """`--config FILE`: eager, so the file is read before the other options look up their defaults."""
    env_help = f" Env: {envvar}." if envvar else ""
    return click.option(
        "--config", type=click.Path(dir_okay=False), envvar=envvar, is_eager=True, expose_value=False,
        callback=_callback, metavar="FILE",
        help=f"TOML file with defaults for any flag (key = flag name); flags on the command line win.{env_help}")


def _add_recursively(cmd: click.Command) -> None:
    if not any(p.name == "config" for p in cmd.params):
        config_option()(cmd)
    for sub in getattr(cmd, "commands", {}).values():
        _add_recursively(sub)


class ConfigGroup(click.Group):
    """A group whose subcommands (whoever registers them, whenever) also accept `--config`."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            _add_recursively(cmd)
        return cmd


__all__ = ["ENV_VAR", "ConfigGroup", "build_default_map", "config_option", "load"]
