"""`python -m bench all` (what `make bench` runs) runs every benchmark and rewrites docs/benchmarks.md;
`python -m bench NAME [ARGS...]` runs one (same as `python -m bench.NAME`); `python -m bench list`.

Benchmarks are discovered, not listed: every module in bench/ with a `main(argv)` function is one, so a
benchmark someone adds shows up here without touching this file. ORDER only fixes where the known ones
go in the document; unknown ones follow in name order.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

NOT_BENCHMARKS = {"__main__", "__init__", "report"}
ORDER = ["prog_cost", "flood", "userspace", "incident", "ratelimit", "bird_poll", "outputs"]


def discover() -> dict[str, Callable]:
    """name -> main, in document order."""
    here = Path(__file__).resolve().parent
    found: dict[str, Callable] = {}
    for info in pkgutil.iter_modules([str(here)]):
        if info.name in NOT_BENCHMARKS or info.name.startswith("_") or info.ispkg:
            continue
        try:
            mod = importlib.import_module(f"bench.{info.name}")
        except Exception as e:  # a broken module is reported as a failed benchmark, not a crash of all
            found[info.name] = _broken(info.name, e)
            continue
        main = getattr(mod, "main", None)
        if callable(main):
            found[info.name] = main
    rank = {n: i for i, n in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))


def _broken(name: str, err: Exception) -> Callable:
    def main(argv: list[str]) -> None:
        raise SystemExit(f"bench: cannot import bench.{name}: {err}")

    return main


def call(main: Callable, argv: list[str]) -> int:
    """Runs one benchmark's main; argparse/click exits become return codes."""
    try:
        params = inspect.signature(main).parameters
        if params:
            main(argv)
        else:
            saved = sys.argv
            sys.argv = [main.__module__, *argv]
            try:
                main()
            finally:
                sys.argv = saved
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    benches = discover()
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(__doc__.strip())
        print("\nbenchmarks:", ", ".join(benches))
        return 0
    if argv[0] != "all":
        name = argv[0]
        if name not in benches:
            print(f"bench: no benchmark {name!r}; have: {', '.join(benches)}", file=sys.stderr)
            return 2
        return call(benches[name], argv[1:])
    failed = []
    for name, fn in benches.items():
        print(f"== bench {name}", flush=True)
        t0 = time.monotonic()
        try:
            rc = call(fn, argv[1:])
        except Exception:  # one broken benchmark must not cost the others their section
            traceback.print_exc()
            rc = 1
        print(f"== bench {name}: {'ok' if rc == 0 else f'FAILED ({rc})'} in {time.monotonic() - t0:.0f} s",
              flush=True)
        if rc:
            failed.append(name)
    if "--no-write" not in argv:
        from bench.report import rebuild

        rebuild(list(benches))  # sections in benchmark order, a summary of every target on top
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
