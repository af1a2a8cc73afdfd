"""The rebalance handler: which tasks this instance holds, and how they come and go.

The consumer's rebalance callbacks run inside ``consume``/``poll`` on the loop's thread:

- **assign**: the new partitions are paused at once (nothing is fetched for a task until its
  stores are restored and it has sought to the committed offsets); a task is created for each
  new (sub-topology, partition) and handed to the restorer; a task without stores to restore
  starts at once. A partition beyond the planned partition count is a stray
  (runtime/strays.py): its records are dead-lettered, not processed.
- **revoke**: a checkpoint commits the work done so far (every task shares the one
  transaction); then tasks left without partitions are closed. A checkpoint that fails here
  reopens every task from its committed state.
- **lost**: another member may already own the partitions, so nothing uncommitted may commit:
  every task is reopened from its committed state.

Restore scheduling: the loop calls :meth:`Rebalancer.restored` for each task whose stores have
caught up; the task seeks its partitions to the committed offsets and resumes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc.kafka import offsets
from streamproc.metrics import Metrics
from streamproc.runtime.bootstrap import TableBootstrap
from streamproc.runtime.observe import Listeners
from streamproc.runtime.restore import Restorer
from streamproc.runtime.strays import StrayPartitions
from streamproc.runtime.task import Task
from streamproc.types import TaskId, TopicPartition

log = structlog.get_logger(__name__)


class Barrier(Protocol):
    """The checkpoint coordinator, as the rebalance handler uses it."""

    def checkpoint(self, reason: str, *, recover: bool = True) -> bool: ...

    def recover(self, reason: str) -> None: ...


class Rebalancer:
    """Owns ``tasks`` and ``assigned`` (shared by reference with the loop and the checkpoint
    coordinator, which read them; only this class changes them)."""

    def __init__(self, *, consumer: Consumer, restorer: Restorer,
                 tasks: dict[TaskId, Task], assigned: set[TopicPartition],
                 strays: StrayPartitions, make_task: Callable[[TaskId], Task],
                 topic_subtopology: Mapping[str, int], tasks_per_subtopology: Mapping[int, int],
                 start_at: Callable[[TopicPartition], int], cooperative: bool,
                 op_timeout_s: float, metrics: Metrics, listeners: Listeners) -> None:
        self.consumer = consumer
        self.restorer = restorer
        self.tasks = tasks
        self.assigned = assigned
        self.strays = strays
        self._make_task = make_task
        self._sub_of = topic_subtopology
        self._planned = tasks_per_subtopology
        self._start_at = start_at
        self._cooperative = cooperative
        self._timeout_s = op_timeout_s
        self._metrics = metrics
        self._listeners = listeners
        self.barrier: Barrier | None = None  # set by the Application once both exist
        self.failed = False  # set when the loop failed: a revoke then commits nothing
        # Assignments handled so far (empty ones too). A member id alone is set by librdkafka's
        # thread on JoinGroup, before the loop has seen (and paused) what it was given.
        self.assignments = 0
        # Tasks whose start found the consumer between two assignments (see start_task).
        self.unstarted: set[TaskId] = set()
        self.bootstrap = TableBootstrap(consumer, op_timeout_s)

    # -- tasks ---------------------------------------------------------------------------------
    def create_task(self, tid: TaskId) -> None:
        task = self._make_task(tid)
        wiped = task.open()
        if wiped:
            self._metrics.inc("state_rebuilds_total", len(wiped), task=str(tid))
        self.tasks[tid] = task
        self.restorer.add(task, self._table_ends(task))
        if not self.restorer.is_restoring(task):
            self.restored(task)  # nothing to restore

    def _table_ends(self, task: Task) -> dict[str, int]:
        """Per table of ``task`` read from its topic: the committed offset there, where its
        restore ends (none committed: the table starts empty)."""
        if not task.source_backed:
            return {}
        stores = {tp: name for name, tp in task.source_backed.items()}
        got = offsets.committed(
            self.consumer, [KafkaTopicPartition(t, p) for t, p in stores], self._timeout_s)
        return {stores[TopicPartition(c.topic, c.partition)]: c.offset for c in got
                if c.offset >= 0}

    def task_partitions(self, task: Task) -> list[TopicPartition]:
        return [TopicPartition(t, task.partition) for t in task.subtopology.source_topics
                if TopicPartition(t, task.partition) in self.assigned]

    def restored(self, task: Task) -> None:
        """``task``'s stores have caught up: it runs from its committed offsets."""
        self.start_task(task)
        self._listeners.restored(task.id)

    def start_task(self, task: Task, only: Iterable[TopicPartition] | None = None) -> None:
        """Seek the task's partitions to their committed offsets and resume them."""
        consumer = self.consumer
        tps = list(only) if only is not None else self.task_partitions(task)
        # A rebalance may have taken a partition away since the restore began (seeking it
        # would raise _STATE): only what the consumer holds now is sought and resumed.
        held = {(p.topic, p.partition) for p in consumer.assignment()}
        tps = [tp for tp in tps if (tp.topic, tp.partition) in held]
        if not tps:
            task.start()
            return
        committed = offsets.committed(
            consumer, [KafkaTopicPartition(tp.topic, tp.partition) for tp in tps],
            self._timeout_s)
        positions: dict[TopicPartition, int] = {}
        try:
            for c in committed:
                tp = TopicPartition(c.topic, c.partition)
                if c.offset >= 0:
                    positions[tp] = c.offset
                # A table without a committed offset reads its whole topic, whatever
                # auto_offset_reset says: its rows are all its topic holds.
                start = OFFSET_BEGINNING if tp in task.source_backed.values() else \
                    self._start_at(tp)
                consumer.seek(KafkaTopicPartition(
                    c.topic, c.partition, c.offset if c.offset >= 0 else start))
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._STATE:
                raise
            # The consumer still lists the partition, but its membership is being lost or
            # revoked (a session that timed out during the restore: network scenario); the
            # callback that says so comes with the next poll. Seeking again after it either
            # works (still ours) or is never needed (the task is closed).
            if task.id not in self.unstarted:
                self.unstarted.add(task.id)
                log.info("task.start_deferred", task=str(task.id), error=str(exc.args[0]))
            return
        self.unstarted.discard(task.id)
        task.next_offsets.update(positions)
        task.mark_committed(positions)
        task.start()
        resume = self.bootstrap.start(task, tps, positions)
        consumer.resume([KafkaTopicPartition(tp.topic, tp.partition) for tp in resume])
        log.info("task.running", task=str(task.id), partitions=[f"{t}[{p}]" for t, p in tps],
                 committed=[positions.get(tp) for tp in tps])

    def start_deferred(self) -> None:
        """Start again the tasks whose start was deferred, once a poll has served the
        rebalance callbacks that were pending."""
        for tid in list(self.unstarted):
            task = self.tasks.get(tid)
            if task is None or self.restorer.is_restoring(task):
                self.unstarted.discard(tid)  # closed, or restoring again: restored() starts it
                continue
            self.start_task(task)

    def release_held(self) -> None:
        """Resume the streams of tasks whose tables have caught up (runtime/bootstrap.py)."""
        held = {(p.topic, p.partition) for p in self.consumer.assignment()}
        for task, tps in self.bootstrap.release():
            if self.tasks.get(task.id) is task:
                self.consumer.resume([KafkaTopicPartition(t, p) for t, p in tps
                                      if (t, p) in held and TopicPartition(t, p) in self.assigned])

    def close_task(self, task: Task) -> None:
        self.bootstrap.forget(task)
        self.unstarted.discard(task.id)
        self.restorer.remove(task)
        task.close()
        self.tasks.pop(task.id, None)

    def close_all(self) -> None:
        self.unstarted.clear()
        for task in list(self.tasks.values()):
            self.bootstrap.forget(task)
            task.close()
        self.tasks.clear()

    def reopen_all(self) -> None:
        """Close every task and open it again from its committed state (stores restored from
        their checkpointed offsets, input re-read from the committed offsets)."""
        for task in list(self.tasks.values()):
            self.close_task(task)
        if self.assigned:
            self.consumer.pause([KafkaTopicPartition(t, p) for t, p in self.assigned])
        sub_of = self._sub_of
        strays = [tp for tp in self.assigned if tp in self.strays]
        for tid in sorted({TaskId(sub_of[tp.topic], tp.partition) for tp in self.assigned
                           if tp not in self.strays}):
            self.create_task(tid)
        for tp in strays:  # from their committed offsets again, like the tasks
            self.strays.remove({tp})
            self._start_stray(tp, self._planned[sub_of[tp.topic]])

    def _start_stray(self, tp: TopicPartition, planned: int) -> None:
        self.strays.start(self.consumer, tp, planned, self._start_at(tp), self._timeout_s)

    # -- the consumer's callbacks --------------------------------------------------------------
    def on_assign(self, consumer: Consumer, parts: list[KafkaTopicPartition]) -> None:
        if self._cooperative:
            consumer.incremental_assign(parts)
        else:
            consumer.assign(parts)
        self.assignments += 1
        if not parts:
            self._listeners.assigned([], [])
            return
        # Nothing is fetched for a task until its stores are restored and it has sought to
        # the committed offsets.
        consumer.pause(parts)
        self._metrics.inc("rebalances_total")
        sub_of = self._sub_of
        fresh: set[TaskId] = set()
        planned = self._planned
        added = []
        for p in parts:
            tp = TopicPartition(p.topic, p.partition)
            added.append(tp)
            self.assigned.add(tp)
            sub = sub_of[p.topic]
            if p.partition >= planned.get(sub, p.partition + 1):
                self._start_stray(tp, planned[sub])
                continue
            tid = TaskId(sub, p.partition)
            task = self.tasks.get(tid)
            if task is None:
                fresh.add(tid)
            elif task.running:
                self.start_task(task, only=[tp])  # one more topic of a running task
        new_tasks = sorted(fresh)
        log.info("rebalance.assigned", partitions=[f"{p.topic}[{p.partition}]" for p in parts],
                 new_tasks=[str(t) for t in new_tasks])
        self._listeners.assigned(added, new_tasks)
        for tid in new_tasks:
            self.create_task(tid)

    def on_revoke(self, consumer: Consumer, parts: list[KafkaTopicPartition]) -> None:
        revoked = {TopicPartition(p.topic, p.partition) for p in parts}
        log.info("rebalance.revoked", partitions=[f"{p.topic}[{p.partition}]" for p in parts])
        assert self.barrier is not None
        committed = True
        if not self.failed and revoked:
            committed = self.barrier.checkpoint("revoke", recover=False)
        self.assigned.difference_update(revoked)
        self.strays.remove(revoked)
        if not committed:
            self.barrier.recover("checkpoint failed during revoke")
        for task in list(self.tasks.values()):
            if not self.task_partitions(task):
                self.close_task(task)
        if self._cooperative:
            consumer.incremental_unassign(parts)
        else:
            consumer.unassign()
        if revoked:
            self._listeners.revoked(sorted(revoked))

    def on_lost(self, consumer: Consumer, parts: list[KafkaTopicPartition]) -> None:
        lost = {TopicPartition(p.topic, p.partition) for p in parts}
        log.warning("rebalance.lost", partitions=[f"{p.topic}[{p.partition}]" for p in parts])
        assert self.barrier is not None
        self.assigned.difference_update(lost)
        self.strays.remove(lost)
        # Another member may already own them: our uncommitted work must not be committed,
        # and it shares one transaction with every other task, so all of it goes.
        self.barrier.recover("partitions lost")
        if self._cooperative:
            consumer.incremental_unassign(parts)
        else:
            consumer.unassign()
        self._listeners.lost(sorted(lost))
