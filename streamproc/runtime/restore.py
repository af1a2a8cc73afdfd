"""Changelog restore, interleaved with processing.

A dedicated assign-only consumer (read_committed, partition EOF on) replays each store's
changelog from the offset stored in RocksDB to the end of the log, one WriteBatch per consumed
batch per store. The main loop calls :meth:`Restorer.step` between processing batches, so
tasks that are already restored keep processing while others restore.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc.runtime import faults
from streamproc.runtime.task import Task
from streamproc.state.store import KeyValueStore
from streamproc.types import TopicPartition

log = structlog.get_logger(__name__)

_PROGRESS_EVERY_S = 5.0


@dataclass
class Restoring:
    task: Task
    store: KeyValueStore
    start_offset: int
    records: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    last_log: float = field(default_factory=time.monotonic)


@dataclass
class RestoreStats:
    records: int = 0
    bytes: int = 0
    seconds: float = 0.0  # summed per store (stores restore concurrently)
    stores: int = 0
    wall_seconds: float = 0.0  # first restore started -> last one completed


class Restorer:
    def __init__(self, config: dict[str, Any], batch_size: int) -> None:
        self._config = config
        self._batch_size = batch_size
        self._consumer: Consumer | None = None
        self._active: dict[TopicPartition, Restoring] = {}
        self.totals = RestoreStats()
        self._wall_start: float | None = None

    @property
    def active(self) -> bool:
        return bool(self._active)

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(self._config)
        return self._consumer

    @property
    def client(self) -> Consumer | None:
        """The restore consumer, once one was needed."""
        return self._consumer

    def in_progress(self) -> list[tuple[TopicPartition, Restoring]]:
        """The changelog partitions being restored, in order, with their progress."""
        return sorted(self._active.items())

    def add(self, task: Task) -> None:
        """Start restoring every store of ``task`` (a task without stores is ready at once)."""
        assigns = []
        for name, store in task.stores.items():
            tp = TopicPartition(task.changelog_topics[name], task.partition)
            start = store.changelog_offset
            self._active[tp] = Restoring(task, store, start)
            assigns.append(KafkaTopicPartition(tp.topic, tp.partition, start))
            log.info("restore.started", task=str(task.id), store=name, changelog=tp.topic,
                     partition=tp.partition, from_offset=start)
        if assigns:
            if self._wall_start is None:
                self._wall_start = time.monotonic()
            self._client().incremental_assign(assigns)

    def remove(self, task: Task) -> None:
        """Stop restoring ``task`` (revoked or closed before its restore finished)."""
        gone = [tp for tp, r in self._active.items() if r.task is task]
        for tp in gone:
            del self._active[tp]
        if gone:
            self._client().incremental_unassign(
                [KafkaTopicPartition(tp.topic, tp.partition) for tp in gone])

    def is_restoring(self, task: Task) -> bool:
        return any(r.task is task for r in self._active.values())

    def step(self, timeout_s: float) -> list[Task]:
        """Consume one batch of changelog records; return the tasks whose restore completed."""
        if not self._active:
            return []
        consumer = self._client()
        msgs = consumer.consume(self._batch_size, timeout_s)
        # Per changelog partition: the RocksDB batch being filled, its record count and bytes.
        pending: dict[TopicPartition, list[Any]] = {}
        last: dict[TopicPartition, int] = {}
        ended: dict[TopicPartition, int] = {}
        # Runs of one partition: the per-partition lookups happen once per run, not per record.
        cur_topic: str | None = None
        cur_part = -1
        tp = TopicPartition("", -1)
        acc: list[Any] | None = None  # [batch, records, bytes] of the current run's partition
        put: Any = None
        delete: Any = None
        last_m: Any = None
        count = size = 0
        for m in msgs:
            err = m.error()
            part, topic = m.partition(), m.topic()
            if part != cur_part or topic != cur_topic or err is not None:
                if acc is not None and count:  # close the previous run
                    acc[1] += count
                    acc[2] += size
                    last[tp] = last_m.offset()
                cur_topic, cur_part, count, size = topic, part or 0, 0, 0
                tp = TopicPartition(topic or "", part or 0)
                acc = None
                if tp not in self._active:
                    cur_part = -1
                    continue  # a late message for a store we stopped restoring
                if err is not None:
                    cur_part = -1
                    if err.code() == KafkaError._PARTITION_EOF:
                        ended[tp] = m.offset() or 0
                    elif err.code() in (KafkaError._AUTO_OFFSET_RESET,
                                        KafkaError.OFFSET_OUT_OF_RANGE):
                        self._rebuild(tp, str(err))
                        pending.pop(tp, None)
                        last.pop(tp, None)
                    else:
                        log.warning("restore.consume_error", changelog=tp.topic,
                                    partition=tp.partition, error=str(err))
                    continue
                acc = pending.get(tp)
                if acc is None:
                    acc = pending[tp] = [self._active[tp].store.restore_batch(), 0, 0]
                put, delete = acc[0].put, acc[0].delete
            elif acc is None:
                continue  # the rest of a run we skip (not restoring that partition)
            key = m.key()
            if key is None:
                continue  # not a changelog record of ours
            value = m.value()
            if value is None:
                delete(key)
            else:
                put(key, value)
                size += len(value)
            size += len(key)
            count += 1
            last_m = m
        if acc is not None and count:
            acc[1] += count
            acc[2] += size
            last[tp] = last_m.offset()
        now = time.monotonic()
        for tp, (batch, n, nbytes) in pending.items():
            if not n:
                continue
            r = self._active[tp]
            r.store.apply_restore_batch(batch, last[tp] + 1)
            r.records += n
            r.bytes += nbytes
            faults.hit("mid_restore")
            if now - r.last_log >= _PROGRESS_EVERY_S:
                r.last_log = now
                log.info("restore.progress", task=str(r.task.id), store=r.store.name,
                         records=r.records, bytes=r.bytes,
                         seconds=round(now - r.started, 3))
        done_tasks: list[Task] = []
        for tp, end in ended.items():
            r = self._active.pop(tp)
            # Remember the end (past any transaction marker) so the next restore starts there.
            if end > r.store.changelog_offset:
                r.store.apply_changelog([], end)
            consumer.incremental_unassign([KafkaTopicPartition(tp.topic, tp.partition)])
            secs = time.monotonic() - r.started
            self.totals.records += r.records
            self.totals.bytes += r.bytes
            self.totals.seconds += secs
            self.totals.stores += 1
            if self._wall_start is not None:
                self.totals.wall_seconds = time.monotonic() - self._wall_start
            log.info("restore.completed", task=str(r.task.id), store=r.store.name,
                     from_offset=r.start_offset, to_offset=end, records=r.records,
                     bytes=r.bytes, seconds=round(secs, 3),
                     records_per_s=round(r.records / secs) if secs > 0 else None)
            if not self.is_restoring(r.task):
                done_tasks.append(r.task)
        return done_tasks

    def _rebuild(self, tp: TopicPartition, reason: str) -> None:
        # The stored offset lies outside the changelog (it was deleted and recreated, or the
        # local state belongs to an older incarnation): local state cannot be trusted.
        r = self._active[tp]
        log.warning("restore.stale_local_state_wiped", store=r.store.name,
                    partition=tp.partition, stored_offset=r.store.changelog_offset,
                    reason=reason)
        r.store.wipe()
        r.store.open()
        r.records = r.bytes = 0
        r.start_offset = 0
        consumer = self._client()
        consumer.incremental_unassign([KafkaTopicPartition(tp.topic, tp.partition)])
        consumer.incremental_assign([KafkaTopicPartition(tp.topic, tp.partition,
                                                         OFFSET_BEGINNING)])

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self._active.clear()
