"""Which partition assignor a topology's group uses (runtime/plan.py ``assignor``)."""

from __future__ import annotations

import pytest

from streamproc import Topology, codecs
from streamproc.errors import ConfigError
from streamproc.graph.compile import compile_topology
from streamproc.runtime.plan import assignor
from topologies.wordcount import build as wordcount


def _stateless() -> Topology:
    t = Topology("stateless")
    t.source("in", value=codecs.string()).map(str.upper).to("out", value=codecs.string())
    return t


def _stateful_one_subtopology() -> Topology:
    t = Topology("keyed")
    t.source("in", key=codecs.string(), value=codecs.string()).group_by_key(name="g") \
        .count(store="c").to("out", key=codecs.string(), value=codecs.json())
    return t


def _colocated() -> Topology:
    t = Topology("colocated")
    a = t.source("a", key=codecs.string(), value=codecs.string())
    b = t.source("b", key=codecs.string(), value=codecs.string())
    a.merge(b).group_by_key(name="m").count(store="c").to("out", value=codecs.json())
    return t


@pytest.mark.parametrize(("topology", "auto"), [
    # A stateless sub-topology on the input, a stateful one on the repartition topic: the
    # cooperative assignor could put every stateful task on one instance.
    (wordcount, "range"),
    (_stateless, "cooperative-sticky"),
    (_stateful_one_subtopology, "cooperative-sticky"),
    (_colocated, "range"),
])
def test_auto_balances_stateful_tasks_and_keeps_cooperative_otherwise(topology, auto) -> None:
    assert assignor(compile_topology(topology()), "auto") == auto
    assert assignor(compile_topology(topology()), "range") == "range"


def test_cooperative_can_be_chosen_unless_partitions_must_meet() -> None:
    assert assignor(compile_topology(wordcount()), "cooperative-sticky") == "cooperative-sticky"
    with pytest.raises(ConfigError, match=r"partition_assignor.*only range guarantees"):
        assignor(compile_topology(_colocated()), "cooperative-sticky")
