"""Feeding example data to a test driver and reading its output per key."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from streamproc.testing import Pipe, TestRecord, TopologyTestDriver
from topologies._examples import Event, partition_of


def pipe_all(d: TopologyTestDriver, topic: str, events: Iterable[Event],
             partitions: int = 1) -> None:
    """Each event to the partition the ``--produce`` entry point would write it to."""
    for key, value, ts in events:
        d.pipe(topic, value, key, timestamp=ts, partition=partition_of(key, partitions))


def steps(topic: str, events: Iterable[Event]) -> list[Pipe]:
    return [Pipe(topic, value, key, timestamp=ts) for key, value, ts in events]


def per_key(records: Sequence[TestRecord]) -> dict[Any, list[tuple[Any, int]]]:
    """Each key's (value, timestamp) sequence, in the order written."""
    out: dict[Any, list[tuple[Any, int]]] = {}
    for r in records:
        out.setdefault(r.key, []).append((r.value, r.timestamp))
    return out


def out_of_order(events: Iterable[Event], partitions: int,
                 event_time: Any = lambda e: e[2]) -> int:
    """How many events have an earlier event time than one before them in their partition."""
    high: dict[int, int] = {}
    n = 0
    for e in events:
        p = partition_of(e[0], partitions)
        t = event_time(e)
        if t < high.get(p, t):
            n += 1
        high[p] = max(high.get(p, t), t)
    return n


def by_rule(records: dict[Any, list[tuple[Any, int]]]) -> dict[tuple[Any, str], list[Any]]:
    """Per key and rule: the two rules' alerts reach the topic through different operators, so
    only the order within one rule is defined."""
    out: dict[tuple[Any, str], list[Any]] = {}
    for key, seq in records.items():
        for value, ts in seq:
            out.setdefault((key, value["rule"]), []).append((value, ts))
    return out
