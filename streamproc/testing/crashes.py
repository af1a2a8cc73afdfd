"""Crash schedules: run the same input with failures injected at chosen points and check that
the committed output equals the failure-free run's, record for record.

A schedule is a list of :class:`Fault` s, each applied after a step of the input script:
``commit`` (a checkpoint), ``crash`` (everything since the last checkpoint is lost; state is
restored from the changelogs; input replays from the committed offsets), ``crash_lose_state``
(the local stores are gone too), ``crash_mid_checkpoint`` (the instance dies after the Kafka
commit, before its local stores were written) and ``rebalance`` (the tasks move to an instance
without local state). The failure-free run checkpoints after every step; a faulty run only at
its ``commit`` faults and at the end, so crashes throw away real uncommitted work.

Equality is per output topic and per key: the sequence of (value bytes, timestamp, headers) a
key received. Across keys, order is not defined even without failures. Neither is the order
between two branches of a fan-out that write to one topic, such as a ``merge`` of two
transformations of one stream. Each branch gets a whole batch in turn, so their records
interleave by batch, and a replay batches differently. For such topologies pass
``ordered=False``, which compares each key's records as a multiset.

Topologies whose results depend on the wall clock (processing-time timestamps, idleness,
processing-time timers) are not replayable by design and cannot pass this check. Behind a
repartition, a record that was later than its source's out-of-orderness bound may be judged
late or on time depending on when the upstream watermark was checkpointed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from streamproc.api.topology import Topology
from streamproc.testing.driver import TopologyTestDriver
from streamproc.types import Headers

FaultKind = Literal["commit", "crash", "crash_lose_state", "crash_mid_checkpoint", "rebalance"]
FAULT_KINDS: tuple[FaultKind, ...] = ("commit", "crash", "crash_lose_state",
                                      "crash_mid_checkpoint", "rebalance")

# topic -> key bytes -> [(value bytes, timestamp, headers)]
Output = dict[str, dict[bytes | None, list[tuple[bytes | None, int, tuple[tuple[str, bytes],
                                                                         ...]]]]]


@dataclass(frozen=True)
class Pipe:
    """Append one record to a source topic (see :meth:`TopologyTestDriver.pipe`)."""

    topic: str
    value: Any
    key: Any = None
    timestamp: int | None = None
    partition: int | None = None
    headers: Headers | None = None


@dataclass(frozen=True)
class Advance:
    """Move the wall clock."""

    ms: int


Step = Pipe | Advance


@dataclass(frozen=True)
class Fault:
    after_step: int  # index into the steps; -1 is before the first
    kind: FaultKind = "crash"


class CrashSafetyError(AssertionError):
    pass


def run_steps(topology: Callable[[], Topology], steps: Sequence[Step],
              faults: Sequence[Fault] | None = None, *, finish: bool = True,
              **driver_options: Any) -> Output:
    """Run ``steps`` on a fresh driver and return its committed output. ``faults=None`` is the
    failure-free run (a checkpoint after every step); ``finish`` ends the input at the end
    (every window closes)."""
    by_step: dict[int, list[Fault]] = {}
    for f in faults or ():
        if f.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {f.kind!r}; one of {FAULT_KINDS}")
        by_step.setdefault(f.after_step, []).append(f)
    with TopologyTestDriver(topology(), auto_commit=faults is None, **driver_options) as d:
        _apply_faults(d, by_step.get(-1, []))
        for i, step in enumerate(steps):
            if isinstance(step, Pipe):
                d.pipe(step.topic, step.value, step.key, timestamp=step.timestamp,
                       partition=step.partition, headers=step.headers)
            else:
                d.advance_time(step.ms)
            _apply_faults(d, by_step.get(i, []))
        if finish:
            d.finish()
        else:
            d.commit()
        return committed_output(d)


def _apply_faults(d: TopologyTestDriver, faults: list[Fault]) -> None:
    for f in faults:
        if f.kind == "commit":
            d.commit()
        elif f.kind == "crash":
            d.crash()
        elif f.kind == "crash_lose_state":
            d.crash(lose_state=True)
        elif f.kind == "crash_mid_checkpoint":
            d.crash(mid_checkpoint=True)
        else:
            d.rebalance()


def committed_output(d: TopologyTestDriver) -> Output:
    """What consumers of the topology's output topics (sinks, dead letters, late records) see."""
    c = d.compiled
    out: Output = {}
    for topic in [*c.sink_topics, c.dead_letter_topic, *c.late_topics]:
        per_key: dict[bytes | None, list[tuple[bytes | None, int, tuple[tuple[str, bytes],
                                                                        ...]]]] = {}
        for r in d.records(topic, raw=True):
            per_key.setdefault(r.key, []).append((r.value, r.timestamp,
                                                  tuple(sorted(r.headers.items()))))
        out[topic] = per_key
    return out


def default_schedules(n_steps: int) -> list[list[Fault]]:
    """Every failure kind after every step, with checkpoints after every other step before it
    (so that each crash loses some work and keeps some)."""
    schedules: list[list[Fault]] = []
    for i in range(n_steps):
        commits = [Fault(j, "commit") for j in range(0, i, 2)]
        for kind in FAULT_KINDS[1:]:
            schedules.append([*commits, Fault(i, kind)])
    return schedules


def check_crash_safety(topology: Callable[[], Topology], steps: Sequence[Step],
                       schedules: Iterable[Sequence[Fault]] | None = None, *,
                       ordered: bool = True, **driver_options: Any) -> int:
    """Raise :class:`CrashSafetyError` unless every schedule's committed output equals the
    failure-free run's; returns how many schedules were checked. ``topology`` builds a fresh
    topology (each run gets its own driver). ``ordered=False`` compares each key's records as
    a multiset (for fan-outs merged into one topic, see above)."""
    expected = run_steps(topology, steps, None, **driver_options)
    if not ordered:
        expected = _unordered(expected)
    checked = 0
    for schedule in (default_schedules(len(steps)) if schedules is None else schedules):
        got = run_steps(topology, steps, list(schedule), **driver_options)
        if not ordered:
            got = _unordered(got)
        checked += 1
        if got != expected:
            raise CrashSafetyError(_describe(list(schedule), expected, got))
    return checked


def _unordered(output: Output) -> Output:
    return {topic: {k: sorted(rs, key=repr) for k, rs in per_key.items()}
            for topic, per_key in output.items()}


def _describe(schedule: list[Fault], expected: Output, got: Output) -> str:
    lines = [f"output differs from the failure-free run under schedule {schedule}:"]
    for topic in sorted(set(expected) | set(got)):
        exp, actual = expected.get(topic, {}), got.get(topic, {})
        for key in sorted(set(exp) | set(actual), key=repr):
            if exp.get(key) != actual.get(key):
                lines.append(f"  {topic} key {key!r}:\n    expected {exp.get(key)}\n"
                             f"    got      {actual.get(key)}")
                if len(lines) > 6:
                    return "\n".join(lines)
    return "\n".join(lines)
