"""The runner stops watching an interface only when the kernel says it is gone, not on any error."""

from __future__ import annotations

import errno
import socket

import pytest

from sensor.pipeline.runner import Runner, RunOptions


class _Agg:
    def __init__(self) -> None:
        self.ifnames: dict[int, str] = {}


@pytest.mark.parametrize(("err", "gone"), [(errno.ENXIO, True), (errno.ENODEV, True), (errno.EMFILE, False),
                                           (errno.ENOMEM, False)])
def test_only_no_such_device_means_gone(monkeypatch: pytest.MonkeyPatch, err: int, gone: bool) -> None:
    events, logs = [], []
    r = Runner(RunOptions(interfaces=["eth9"], hostname="h"), events.append, logs.append)
    r.ifnames, r.aggregator = {7: "eth9"}, _Agg()

    def fail(_i: int) -> str:
        raise OSError(err, "boom")

    monkeypatch.setattr(socket, "if_indextoname", fail)
    r._check_interfaces(0.0)
    assert (r.ifnames == {}) is gone
    assert [e["event"]["action"] for e in events] == (["interface-gone"] if gone else [])
    assert bool(logs) is not gone  # a transient error is said once per check, the interface kept


def test_renamed_interface_is_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list = []
    r = Runner(RunOptions(interfaces=["eth9"], hostname="h"), events.append)
    r.ifnames, r.aggregator = {7: "eth9"}, _Agg()
    monkeypatch.setattr(socket, "if_indextoname", lambda _i: "uplink0")
    r._check_interfaces(0.0)
    assert r.ifnames == {7: "uplink0"} and r.aggregator.ifnames == {7: "uplink0"}
    assert [e["event"]["action"] for e in events] == ["interface-renamed"]
