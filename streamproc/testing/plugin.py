"""pytest fixtures for topology tests (registered through the ``pytest11`` entry point, so they
are available wherever streamproc is installed)::

    def test_counts(topology_driver):
        d = topology_driver(build(), partitions=2)
        d.pipe("text-lines", "a b a")
        assert d.key_values("word-counts") == [("a", 1), ("b", 1), ("a", 2)]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from streamproc.api.topology import Topology
from streamproc.testing.driver import TopologyTestDriver


@pytest.fixture
def topology_driver() -> Iterator[Callable[..., TopologyTestDriver]]:
    """A factory of drivers (state in a scratch directory, memory-backed where available),
    all closed, and their state deleted, after the test."""
    drivers: list[TopologyTestDriver] = []

    def make(topology: Topology, **options: Any) -> TopologyTestDriver:
        d = TopologyTestDriver(topology, **options)
        drivers.append(d)
        return d

    yield make
    for d in drivers:
        d.close()
