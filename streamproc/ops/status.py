"""Instance status: an immutable snapshot the consumer loop publishes, and the rules read off it.

The loop is single-threaded and owns every engine object (tasks, stores, Kafka clients). The
HTTP thread must never touch them, so the loop copies what operators want to see into a
:class:`Snapshot` at most every ~0.5 s and swaps it into the :class:`StatusBoard` (one
reference assignment, atomic under the GIL). Handlers only read the latest snapshot plus the
loop's heartbeat, a float the loop overwrites every iteration.

Everything here is pure logic over plain data (and an injectable clock), so health, readiness,
"recent" counts and librdkafka statistics parsing are unit-tested without a broker.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# The loop's own observations (runtime/observe.py), composed into the snapshot below; named
# here too (``__all__``), for the ops modules and their tests.
from streamproc.runtime.observe import (
    PartitionStatus,
    RestoreStatus,
    StoreStatus,
    TaskStatus,
    lag,
    valid_offset,
)

__all__ = [
    "CheckpointStatus",
    "Counters",
    "PartitionStatus",
    "ProducedCounts",
    "Recent",
    "RestoreStatus",
    "Snapshot",
    "StatusBoard",
    "StoreStatus",
    "TaskStatus",
    "health",
    "lag",
    "readiness",
    "starting_snapshot",
    "stuck_after_s",
    "sum_by",
    "total",
    "valid_offset",
]

# (metric name, sorted label pairs) -> value, as streamproc.metrics.Metrics keeps them
Counters = Mapping[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass(frozen=True, slots=True)
class CheckpointStatus:
    count: int = 0
    failures: int = 0
    last_seconds: float | None = None
    last_changelog_records: int = 0
    last_bytes: int = 0  # changelog keys + values of the last checkpoint
    last_at_ms: int | None = None


@dataclass(frozen=True)
class Snapshot:
    app_id: str
    instance_id: str | None
    guarantee: str
    state: str  # starting | running | stopping | stopped | failed
    joined: bool  # the consumer is a member of the group (has received its first assignment)
    published_at_ms: int
    started_at_ms: int
    processed: int = 0
    produced: int = 0
    rate: float = 0.0  # records processed per second over the last ~10 s
    partitions: tuple[PartitionStatus, ...] = ()
    tasks: tuple[TaskStatus, ...] = ()
    restoring: tuple[RestoreStatus, ...] = ()
    stores: tuple[StoreStatus, ...] = ()
    restored_records: int = 0  # completed and in-progress restores since start
    restored_bytes: int = 0
    checkpoint: CheckpointStatus = field(default_factory=CheckpointStatus)
    dead_letters: Mapping[str, int] = field(default_factory=dict)  # by error type, since start
    dead_letters_recent: Mapping[str, int] = field(default_factory=dict)  # last RECENT_S
    late_records: Mapping[str, int] = field(default_factory=dict)  # by policy
    rebalances: int = 0
    transaction_aborts: int = 0
    error: str | None = None
    counters: Counters = field(default_factory=dict)  # the engine's, copied
    gauges: Counters = field(default_factory=dict)  # the engine's (standby lag), copied
    # (topic, partition) -> (records, bytes) sent by this instance's producers
    produced_by_partition: Mapping[tuple[str, int], tuple[int, int]] = field(
        default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """What ``GET /status`` returns (the dashboard's data): everything but the raw
        counters (those are /metrics')."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("counters", "gauges", "produced_by_partition"):
                continue
            if isinstance(v, tuple):
                v = [asdict(x) for x in v]
            elif isinstance(v, CheckpointStatus):
                v = asdict(v)
            elif isinstance(v, Mapping):
                v = dict(v)
            out[f.name] = v
        out["produced_by_partition"] = [
            {"topic": t, "partition": p, "records": n, "bytes": b}
            for (t, p), (n, b) in sorted(self.produced_by_partition.items())]
        return out


def starting_snapshot(app_id: str, guarantee: str, now_ms: int) -> Snapshot:
    return Snapshot(app_id=app_id, instance_id=None, guarantee=guarantee, state="starting",
                    joined=False, published_at_ms=now_ms, started_at_ms=now_ms)


# -- health and readiness ------------------------------------------------------------------
def health(snap: Snapshot, poll_age_s: float, stuck_after_s: float) -> tuple[bool, dict[str, Any]]:
    """Liveness: the loop keeps coming back to poll Kafka. Restarting helps a stuck loop (user
    code in an endless loop, a deadlock), never a slow broker, so the limit is generous."""
    body: dict[str, Any] = {"state": snap.state, "last_poll_age_seconds": round(poll_age_s, 3),
                            "stuck_after_seconds": stuck_after_s}
    if snap.state == "failed":
        return False, {**body, "reason": f"the instance failed: {snap.error}"}
    if poll_age_s > stuck_after_s:
        return False, {**body, "reason": f"the loop has not polled Kafka for "
                                         f"{poll_age_s:.1f} s (limit {stuck_after_s:g} s)"}
    return True, body


def readiness(snap: Snapshot) -> tuple[bool, dict[str, Any]]:
    """Ready: running, in the group, and every assigned task restored and processing."""
    restoring = sorted({r.task for r in snap.restoring}
                       | {t.id for t in snap.tasks if t.state != "running"})
    body: dict[str, Any] = {"state": snap.state, "tasks": len(snap.tasks),
                            "restoring": restoring}
    if snap.state != "running":
        return False, {**body, "reason": f"the instance is {snap.state}"}
    if not snap.joined:
        return False, {**body, "reason": "not yet a member of the consumer group"}
    waiting = sorted(f"{p.topic}[{p.partition}]" for p in snap.partitions
                     if p.state != "running")
    if restoring or waiting:
        return False, {**body, "reason": "tasks are restoring", "partitions_waiting": waiting}
    return True, body


class StatusBoard:
    """The one object both threads share: the latest snapshot and the loop's heartbeat."""

    def __init__(self, snapshot: Snapshot, *, stuck_after_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stuck_after_s = stuck_after_s
        self._clock = clock
        self._snapshot = snapshot
        # Starting counts as a beat: connecting and initialising transactions is not stuck.
        self._last_beat = clock()

    def beat(self, now: float) -> None:
        """The loop is about to poll again (``now`` on the board's clock)."""
        self._last_beat = now

    def publish(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def poll_age(self) -> float:
        return max(0.0, self._clock() - self._last_beat)

    def health(self) -> tuple[bool, dict[str, Any]]:
        return health(self._snapshot, self.poll_age(), self.stuck_after_s)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return readiness(self._snapshot)


def stuck_after_s(poll_timeout_ms: int, configured_ms: int) -> float:
    """The configured limit, but never less than three poll timeouts (one slow poll and a
    checkpoint must not look stuck)."""
    return max(3 * poll_timeout_ms, configured_ms) / 1000


# -- counting over time ----------------------------------------------------------------------
class Recent:
    """How much each of some monotonic totals grew over the last ``window_s`` seconds."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, dict[str, float]]] = deque()

    def update(self, now: float, totals: Mapping[str, float]) -> dict[str, float]:
        self._samples.append((now, dict(totals)))
        # Keep one sample at or before the window start as the base.
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()
        base = self._samples[0][1]
        return {k: v - base.get(k, 0.0) for k, v in totals.items() if v - base.get(k, 0.0) > 0}

    def rate(self, now: float, key: str) -> float:
        """Growth of ``key`` per second between the oldest kept sample and the newest."""
        if len(self._samples) < 2:
            return 0.0
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        return (last.get(key, 0.0) - first.get(key, 0.0)) / (t1 - t0) if t1 > t0 else 0.0


def sum_by(counters: Counters, name: str, label: str,
           where: Mapping[str, str] | None = None) -> dict[str, int]:
    """Totals of counter ``name`` grouped by one label, over label sets matching ``where``."""
    want = set((where or {}).items())
    out: dict[str, int] = {}
    for (n, labels), v in counters.items():
        if n != name or not want <= set(labels):
            continue
        key = dict(labels).get(label, "")
        out[key] = out.get(key, 0) + int(v)
    return out


def total(counters: Counters, name: str) -> int:
    """Counter ``name`` summed over all its label sets."""
    return int(sum(v for (n, _), v in counters.items() if n == name))


class ProducedCounts:
    """Records and bytes sent per topic-partition, from librdkafka's producer statistics.

    Counting in librdkafka keeps the per-record path free of Python work. Each producer's
    numbers start at zero and an instance replaces its producer after an aborted transaction,
    so totals are kept per client (librdkafka's ``name``) and summed; a replaced producer's
    counts since its last statistics report are lost (at most one interval).
    """

    def __init__(self) -> None:
        self._by_client: dict[str, dict[tuple[str, int], tuple[int, int]]] = {}
        self._folded: dict[tuple[str, int], tuple[int, int]] = {}
        self._current: str | None = None

    def update(self, stats: Mapping[str, Any]) -> None:
        name = str(stats.get("name", ""))
        if self._current is not None and name != self._current:
            # A new producer: the previous one's last report is final.
            self._fold(self._by_client.pop(self._current, {}))
        self._current = name
        counts: dict[tuple[str, int], tuple[int, int]] = {}
        for topic, t in (stats.get("topics") or {}).items():
            for pid, p in (t.get("partitions") or {}).items():
                part = int(pid)
                if part < 0:
                    continue  # librdkafka's "unassigned" pseudo partition
                n, b = int(p.get("txmsgs", 0)), int(p.get("txbytes", 0))
                if n or b:
                    counts[(topic, part)] = (n, b)
        self._by_client[name] = counts

    def _fold(self, counts: Mapping[tuple[str, int], tuple[int, int]]) -> None:
        for tp, (n, b) in counts.items():
            n0, b0 = self._folded.get(tp, (0, 0))
            self._folded[tp] = (n0 + n, b0 + b)

    def totals(self) -> dict[tuple[str, int], tuple[int, int]]:
        out = dict(self._folded)
        for counts in self._by_client.values():
            for tp, (n, b) in counts.items():
                n0, b0 = out.get(tp, (0, 0))
                out[tp] = (n0 + n, b0 + b)
        return out
