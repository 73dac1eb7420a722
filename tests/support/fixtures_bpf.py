"""The compiled kernel program for BPF_PROG_TEST_RUN tests: one per test module (a compile takes
seconds; module scope keeps one module's map state from leaking into another's)."""

from __future__ import annotations

import pytest

from sensor.kernel.reader import MapReader

TEST_MAP_SIZE = 1024


@pytest.fixture(scope="module")
def dp():
    from sensor.kernel.datapath import Datapath

    return Datapath(max_entries=TEST_MAP_SIZE)


@pytest.fixture(scope="module")
def reader(dp):
    return MapReader(dp.maps, TEST_MAP_SIZE)
