"""What the runtime shows of itself: samples of the loop's state, and lifecycle events.

The runtime knows nothing of HTTP, Prometheus or status pages (``streamproc/ops``). It offers
exactly two things, and the layers above build on nothing else:

- :class:`InstanceView`: what an instance is (application id, settings, compiled topology, the
  tasks it holds) and :meth:`InstanceView.sample`, which copies the loop's state into a
  :class:`LoopSample` of plain frozen data.
- :class:`InstanceListener`: the events of an instance's life (started, assigned, revoked,
  lost, restored, checkpointed, stopping, stopped) and a tick per loop iteration.

Listeners are handed to the Application at construction and called on the loop's thread, in
order, so a listener may call :meth:`InstanceView.sample` from any event without a lock: the
loop is not running while it does. An exception from :meth:`InstanceListener.started` fails
the start (a listener that cannot serve, e.g. a port that cannot be bound, stops the instance
from starting); from any other event it stops the loop like an engine error would, so
listeners catch what they can survive. Nothing here runs per record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc.time.watermarks import NO_WATERMARK
from streamproc.types import TaskId, TopicPartition

if TYPE_CHECKING:
    from confluent_kafka import Consumer

    from streamproc.config import Settings
    from streamproc.graph.compile import CompiledTopology
    from streamproc.kafka.admin import TopicAdmin
    from streamproc.metrics import Metrics
    from streamproc.runtime.restore import Restorer
    from streamproc.runtime.task import Task

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """One assigned input partition. ``position`` is the next offset the loop will process;
    ``lag`` = high watermark - position (it includes records of transactions still open on
    the input, e.g. our own repartition topics between two checkpoints)."""

    topic: str
    partition: int
    task: str
    state: str  # the task's: restoring | running
    committed: int | None
    position: int | None
    high_watermark: int | None
    lag: int | None


@dataclass(frozen=True, slots=True)
class TaskStatus:
    id: str
    subtopology: int
    partition: int
    state: str
    watermark_ms: int | None  # None: no event time yet (or the sub-topology has no clock)
    watermark_lag_ms: int | None  # wall clock - watermark at sampling time
    idle: bool


@dataclass(frozen=True, slots=True)
class RestoreStatus:
    """A store still restoring from its changelog."""

    task: str
    store: str
    changelog: str
    partition: int
    records: int
    bytes: int
    remaining: int | None  # changelog records left (None until the end offset is known)


@dataclass(frozen=True, slots=True)
class StoreStatus:
    store: str
    partition: int
    sst_bytes: int  # RocksDB's SST files (on disk)
    memtable_bytes: int  # RocksDB's memtables (memory, not yet flushed)
    keys: int  # RocksDB's estimate


# (metric name, sorted label pairs) -> value, as streamproc.metrics.Metrics keeps them
Counters = Mapping[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass(frozen=True, slots=True)
class LoopSample:
    """The loop's state at one moment. ``live`` is False once the loop has ended (or a client
    could not answer): the partitions, tasks, restores and stores are then unknown, not empty,
    and ``produced`` is None when the producer is gone."""

    live: bool
    joined: bool  # a member of the group whose first assignment has been handled
    processed: int
    produced: int | None
    checkpoints: int
    counters: Counters
    restored_records: int  # completed and in-progress restores since start
    restored_bytes: int
    partitions: tuple[PartitionStatus, ...] = ()
    tasks: tuple[TaskStatus, ...] = ()
    restoring: tuple[RestoreStatus, ...] = ()
    stores: tuple[StoreStatus, ...] | None = None  # None: not asked for


@dataclass(frozen=True, slots=True)
class CheckpointDone:
    """A committed checkpoint."""

    reason: str  # interval | revoke | end-of-input | shutdown
    seconds: float
    partitions: int  # input partitions whose offsets it committed
    changelog_records: int
    changelog_bytes: int  # keys + values


class InstanceView(Protocol):
    """What a listener may read of the instance (on the loop's thread)."""

    @property
    def app_id(self) -> str: ...

    @property
    def guarantee(self) -> str: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def bootstrap(self) -> str: ...

    @property
    def compiled(self) -> CompiledTopology: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def tasks_per_subtopology(self) -> Mapping[int, int]: ...

    @property
    def admin(self) -> TopicAdmin | None: ...

    @property
    def tasks(self) -> Mapping[TaskId, Task]: ...

    def sample(self, *, live: bool = True, stores: bool = False) -> LoopSample: ...


class InstanceListener(Protocol):
    """Lifecycle events of one instance, in the order they happen, on the loop's thread."""

    def producer_config(self, conf: dict[str, Any]) -> dict[str, Any]:
        """Before the producer is created: may add client statistics (``statistics.interval.ms``
        and ``stats_cb``); must not change how records are delivered."""
        ...

    def started(self, view: InstanceView, instance_id: str) -> None:
        """The clients are up and the consumer subscribed. Raising fails the start."""

    def tick(self, now: float) -> None:
        """Once per loop iteration (``now``: time.monotonic())."""

    def assigned(self, partitions: Sequence[TopicPartition], new_tasks: Sequence[TaskId]) -> None:
        """Partitions were assigned (and paused); ``new_tasks`` are created for them next, each
        reporting :meth:`restored` once it runs."""

    def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions were revoked, after the checkpoint that committed their work."""

    def lost(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions were lost (their uncommitted work was discarded)."""

    def restored(self, task: TaskId) -> None:
        """A task's stores caught up with their changelogs (at once if there was nothing to
        restore): it runs from its committed offsets. Once per task object: again after a
        reopen (recovery) or a new assignment."""

    def checkpointed(self, done: CheckpointDone) -> None:
        """A checkpoint committed."""

    def stopping(self, failure: BaseException | None) -> None:
        """The loop ended (``failure``: why, if it failed); the final checkpoint follows."""

    def stopped(self, failure: BaseException | None) -> None:
        """Every client is closed and the state directory released."""


class Listeners:
    """Fans each event out to every listener, in the order given."""

    def __init__(self, listeners: Sequence[InstanceListener]) -> None:
        self.all = tuple(listeners)

    def producer_config(self, conf: dict[str, Any]) -> dict[str, Any]:
        for x in self.all:
            conf = x.producer_config(conf)
        return conf

    def started(self, view: InstanceView, instance_id: str) -> None:
        for x in self.all:
            x.started(view, instance_id)

    def tick(self, now: float) -> None:
        for x in self.all:
            x.tick(now)

    def assigned(self, partitions: Sequence[TopicPartition], new_tasks: Sequence[TaskId]) -> None:
        for x in self.all:
            x.assigned(partitions, new_tasks)

    def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        for x in self.all:
            x.revoked(partitions)

    def lost(self, partitions: Sequence[TopicPartition]) -> None:
        for x in self.all:
            x.lost(partitions)

    def restored(self, task: TaskId) -> None:
        for x in self.all:
            x.restored(task)

    def checkpointed(self, done: CheckpointDone) -> None:
        for x in self.all:
            x.checkpointed(done)

    def stopping(self, failure: BaseException | None) -> None:
        for x in self.all:
            x.stopping(failure)

    def stopped(self, failure: BaseException | None) -> None:
        for x in self.all:
            x.stopped(failure)


# -- sampling (on the loop's thread) ------------------------------------------------------------
def lag(position: int | None, high_watermark: int | None) -> int | None:
    """Records behind; None when unknown (no position yet on a partition with records)."""
    if high_watermark == 0:
        return 0  # an empty partition: nothing to be behind on
    if position is None or high_watermark is None:
        return None
    return max(0, high_watermark - position)


def valid_offset(offset: int | None) -> int | None:
    """librdkafka's logical offsets (negative: invalid, beginning, end...) as None."""
    return offset if offset is not None and offset >= 0 else None


def partitions(consumer: Consumer, assigned: Sequence[TopicPartition],
               tasks: Mapping[TaskId, Task], sub_of: Mapping[str, int]
               ) -> tuple[PartitionStatus, ...]:
    if not assigned:
        return ()
    positions = {TopicPartition(p.topic, p.partition): valid_offset(p.offset)
                 for p in consumer.position([KafkaTopicPartition(t, p) for t, p in assigned])}
    out = []
    for tp in assigned:
        task = tasks.get(TaskId(sub_of[tp.topic], tp.partition))
        committed = task.committed_offset(tp) if task is not None else None
        # The consumer's position moves past transaction markers, the task's next offset
        # does not; a paused (restoring) partition has no position yet.
        position = positions.get(tp)
        if position is None and task is not None:
            position = task.next_offsets.get(tp, committed)
        _, high = consumer.get_watermark_offsets(
            KafkaTopicPartition(tp.topic, tp.partition), cached=True)
        hw = valid_offset(high)
        out.append(PartitionStatus(
            tp.topic, tp.partition, str(task.id) if task is not None else "",
            task.state.value if task is not None else "unassigned", committed, position, hw,
            lag(position, hw)))
    return tuple(out)


def task_statuses(tasks: Mapping[TaskId, Task], wall_ms: int) -> tuple[TaskStatus, ...]:
    out = []
    for tid in sorted(tasks):
        t = tasks[tid]
        wm = t.time.watermark
        has = wm != NO_WATERMARK
        out.append(TaskStatus(str(tid), tid.subtopology, tid.partition, t.state.value,
                              wm if has else None, wall_ms - wm if has else None,
                              bool(t.time.idle)))
    return tuple(out)


def restores(restorer: Restorer | None) -> tuple[RestoreStatus, ...]:
    if restorer is None or not restorer.active:
        return ()
    client = restorer.client
    out = []
    for tp, r in restorer.in_progress():
        remaining = None
        if client is not None:
            _, high = client.get_watermark_offsets(
                KafkaTopicPartition(tp.topic, tp.partition), cached=True)
            if valid_offset(high) is not None:
                remaining = max(0, high - r.store.changelog_offset)
        out.append(RestoreStatus(str(r.task.id), r.store.name, tp.topic, tp.partition,
                                 r.records, r.bytes, remaining))
    return tuple(out)


def store_sizes(tasks: Mapping[TaskId, Task]) -> tuple[StoreStatus, ...]:
    """RocksDB's own size properties: cheap, but not free across many stores."""
    out = []
    for tid in sorted(tasks):
        for name, store in sorted(tasks[tid].stores.items()):
            try:
                db = store.db
                out.append(StoreStatus(
                    name, store.partition,
                    int(db.property_int_value("rocksdb.total-sst-files-size") or 0),
                    int(db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0),
                    int(db.property_int_value("rocksdb.estimate-num-keys") or 0)))
            except Exception as exc:  # closed between sampling and reading
                log.debug("ops.store_size_unavailable", store=name, partition=store.partition,
                          error=str(exc))
    return tuple(out)
