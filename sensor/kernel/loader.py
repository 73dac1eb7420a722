"""bcc's BPF class, imported in one place with an error an operator can act on. Everything that compiles
BPF C (the datapath, doctor's feature probe, benchmarks, tests' foreign programs) gets bcc from here."""

from __future__ import annotations

from typing import Any

from sensor.errors import EXIT_ENV, SensorError


def bpf_class() -> Any:
    """bcc.BPF, or a SensorError (exit 3) that says how to install it."""
    try:
        from bcc import BPF
    except ImportError:
        raise SensorError("cannot import bcc: apt-get install python3-bpfcc, and run from a venv made "
                          "with --system-site-packages (make install does both)", EXIT_ENV) from None
    return BPF
