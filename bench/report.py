"""docs/benchmarks.md is assembled from sections, one per benchmark, so each benchmark can be run alone
and rewrites only its own section (between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import statistics
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Every figure is measured on the machine named in its section, as the median of several runs, and
compared with a baseline measured **in the same run** (ratios, not absolute times, are what carry over
to other machines). Regenerate everything with `make bench`, or one section with the command it names.
Benchmarks assert nothing; `make test` runs a smoke version of each (`tests/unit/test_bench_smoke.py`,
`tests/kernel/test_bench_kernel.py`) so they cannot rot.
"""


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{now}; kernel {platform.release()}; {os.cpu_count()} CPUs ({cpu}); Python {platform.python_version()}"


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def table(headers: list[str], rows: list[list[object]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def write_section(name: str, body: str, doc: Path = DOC) -> None:
    text = doc.read_text() if doc.exists() else HEADER
    block = f"<!-- bench:{name} -->\n{body.strip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


_BLOCK = re.compile(r"<!-- bench:(?P<name>[\w-]+) -->\n.*?<!-- /bench:(?P=name) -->\n?", re.S)


def sections(doc: Path = DOC) -> dict[str, str]:
    """name -> the section's text (without its markers), in document order."""
    text = doc.read_text() if doc.exists() else ""
    out = {}
    for m in _BLOCK.finditer(text):
        body = m.group(0).split("\n", 1)[1].rsplit(f"<!-- /bench:{m['name']} -->", 1)[0]
        out[m["name"]] = body.strip()
    return out


def verdict_lines(body: str) -> list[str]:
    """A section's target verdicts: its list items that say **met** or **missed**."""
    return [ln.strip() for ln in body.splitlines()
            if ln.lstrip().startswith("- ") and ("**met**" in ln or "**missed**" in ln)]


def rebuild(order: list[str], doc: Path = DOC) -> None:
    """Rewrites the document: the header, a summary of every target's verdict, then the sections in
    `order` (sections not named there keep their relative order after them)."""
    found = sections(doc)
    found.pop("summary", None)
    names = [n for n in order if n in found] + [n for n in found if n not in order]
    summary = ["## Targets at a glance", "",
               "Collected from the sections below (each says how it was measured and how to reproduce it).", ""]
    for n in names:
        lines = verdict_lines(found[n])
        if lines:
            title = next((ln[3:] for ln in found[n].splitlines() if ln.startswith("## ")), n)
            summary += [f"**{title}** (`python -m bench.{n}`)", "", *lines, ""]
    parts = [HEADER.rstrip(), f"<!-- bench:summary -->\n{chr(10).join(summary).strip()}\n<!-- /bench:summary -->"]
    parts += [f"<!-- bench:{n} -->\n{found[n]}\n<!-- /bench:{n} -->" for n in names]
    doc.write_text("\n\n".join(parts) + "\n")
