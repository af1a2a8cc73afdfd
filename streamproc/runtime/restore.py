"""Changelog restore, interleaved with processing.

A dedicated assign-only consumer (read_committed, partition EOF on) replays each store's
changelog from the offset stored in RocksDB to the end of the log (partition EOF with no
transaction left open before the high watermark), one WriteBatch per consumed
batch per store. The main loop calls :meth:`Restorer.step` between processing batches, so
tasks that are already restored keep processing while others restore.

Each store's restore reports progress every few seconds (``restore.progress``: records, bytes,
rate, what remains and an estimate of when it ends, from the changelog's end offset) and fails
only when it made no progress at all for ``stall_s``: a large changelog takes as long as it
takes, a stuck one (a transaction that never ends keeps read_committed readers before it) is
reported instead of waiting silently forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc.kafka.io import at_log_end
from streamproc.progress import Progress, Stalled
from streamproc.runtime import faults
from streamproc.runtime.tables import restorable
from streamproc.runtime.task import Task
from streamproc.state.store import KeyValueStore
from streamproc.types import TopicPartition

log = structlog.get_logger(__name__)

PROGRESS_EVERY_S = 5.0
# Longer than the broker's largest transaction timeout (transaction.max.timeout.ms, 15 min by
# default): an instance that died inside a transaction keeps read_committed readers of that
# changelog waiting until the broker aborts it, and that is a wait, not a stall.
STALL_S = 960.0


@dataclass
class Restoring:
    task: Task
    store: KeyValueStore
    start_offset: int
    progress: Progress
    next_offset: int  # past the last changelog record applied (the stored offset)
    waiting_at: int = -1  # the stable offset an open transaction holds the restore at
    # A table read from its topic: the restore ends at the group's committed offset (what
    # the table held at the last checkpoint), skipping the records ``accepts`` refuses.
    end: int | None = None
    accepts: Callable[[Any], bool] | None = None

    @property
    def records(self) -> int:
        return self.progress.records

    @property
    def bytes(self) -> int:
        return self.progress.bytes

    @property
    def started(self) -> float:
        return self.progress.started


@dataclass
class RestoreStats:
    records: int = 0
    bytes: int = 0
    seconds: float = 0.0  # summed per store (stores restore concurrently)
    stores: int = 0
    wall_seconds: float = 0.0  # first restore started -> last one completed


class Restorer:
    """``clock``, ``consumer`` (a factory over the config), ``every_s`` and ``stall_s`` are
    seams for tests; the runtime uses the defaults."""

    def __init__(self, config: dict[str, Any], batch_size: int, *,
                 clock: Callable[[], float] = time.monotonic,
                 consumer: Callable[[dict[str, Any]], Consumer] = Consumer,
                 every_s: float = PROGRESS_EVERY_S, stall_s: float = STALL_S) -> None:
        self._config = config
        self._batch_size = batch_size
        self._clock = clock
        self._new_consumer = consumer
        self._every_s = every_s
        self._stall_s = stall_s
        self._consumer: Consumer | None = None
        self._active: dict[TopicPartition, Restoring] = {}
        self.totals = RestoreStats()
        self._wall_start: float | None = None

    @property
    def active(self) -> bool:
        return bool(self._active)

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = self._new_consumer(self._config)
        return self._consumer

    @property
    def client(self) -> Consumer | None:
        """The restore consumer, once one was needed."""
        return self._consumer

    def in_progress(self) -> list[tuple[TopicPartition, Restoring]]:
        """The changelog partitions being restored, in order, with their progress."""
        return sorted(self._active.items())

    def add(self, task: Task, table_ends: dict[str, int] | None = None) -> None:
        """Start restoring every store of ``task`` (a task without stores is ready at once).
        ``table_ends``: per table read from its topic, the group's committed offset there
        (absent: none yet, the table is empty)."""
        assigns = []
        for name, store in task.stores.items():
            tp = TopicPartition(task.changelog_topics[name], task.partition)
            start = store.changelog_offset
            end: int | None = None
            if name in task.source_backed:
                end = (table_ends or {}).get(name, 0)
                if start > end:
                    # Rows past the committed offset: the group's offsets were reset (or an
                    # at-least-once commit was cut short). They must not meet the replay.
                    log.warning("restore.table_ahead_of_offsets_wiped", task=str(task.id),
                                store=name, stored_offset=start, committed_offset=end)
                    store.wipe()
                    store.open()
                    start = 0
                if start >= end:
                    log.debug("restore.table_current", task=str(task.id), store=name,
                              offset=start)
                    continue
            self._active[tp] = Restoring(
                task, store, start, self._progress(task, name, tp), start, end=end,
                accepts=restorable(task.table_source(name)) if end is not None else None)
            assigns.append(KafkaTopicPartition(tp.topic, tp.partition, start))
            log.info("restore.started", task=str(task.id), store=name, changelog=tp.topic,
                     partition=tp.partition, from_offset=start,
                     **({"to_offset": end} if end is not None else {}))
        if assigns:
            if self._wall_start is None:
                self._wall_start = self._clock()
            self._client().incremental_assign(assigns)

    def _progress(self, task: Task, store: str, tp: TopicPartition) -> Progress:
        return Progress("restore", every_s=self._every_s, stall_s=self._stall_s,
                        clock=self._clock, logger=log, task=str(task.id), store=store,
                        changelog=tp.topic, partition=tp.partition)

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
        tables: dict[TopicPartition, list[Any]] = {}  # runs of tables read from their topic
        collect: Any = None
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
                acc = collect = None
                if tp not in self._active:
                    cur_part = -1
                    continue  # a late message for a store we stopped restoring
                if err is not None:
                    cur_part = -1
                    if err.code() == KafkaError._PARTITION_EOF:
                        self._eof(consumer, tp, m.offset() or 0, ended)
                    elif err.code() in (KafkaError._AUTO_OFFSET_RESET,
                                        KafkaError.OFFSET_OUT_OF_RANGE):
                        self._rebuild(tp, str(err))
                        pending.pop(tp, None)
                        last.pop(tp, None)
                        tables.pop(tp, None)
                    else:
                        log.warning("restore.consume_error", changelog=tp.topic,
                                    partition=tp.partition, error=str(err))
                    continue
                if self._active[tp].end is not None:
                    collect = tables.setdefault(tp, []).append
                    collect(m)
                    continue
                acc = pending.get(tp)
                if acc is None:
                    acc = pending[tp] = [self._active[tp].store.restore_batch(), 0, 0]
                put, delete = acc[0].put, acc[0].delete
            elif acc is None:
                if collect is not None:
                    collect(m)
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
        for tp, run in tables.items():
            self._table_run(tp, run, pending, last, ended)
        for tp, (batch, n, _) in pending.items():
            if n:
                r = self._active[tp]
                r.next_offset = last[tp] + 1
                r.store.apply_restore_batch(batch, r.next_offset)
                faults.hit("mid_restore")
        done_tasks: list[Task] = []
        for tp, end in ended.items():
            r = self._active.pop(tp)
            acc = pending.get(tp)
            if acc is not None and acc[1]:
                r.progress.set_total(r.records + acc[1])  # nothing remains
                r.progress.advance(acc[1], acc[2])
            # Remember the end (past any transaction marker) so the next restore starts there.
            if end > r.store.changelog_offset:
                r.store.apply_changelog([], end)
            consumer.incremental_unassign([KafkaTopicPartition(tp.topic, tp.partition)])
            figures = r.progress.done(from_offset=r.start_offset, to_offset=end)
            self.totals.records += r.records
            self.totals.bytes += r.bytes
            self.totals.seconds += figures["seconds"]
            self.totals.stores += 1
            if self._wall_start is not None:
                self.totals.wall_seconds = self._clock() - self._wall_start
            if not self.is_restoring(r.task):
                done_tasks.append(r.task)
        for tp, r in self._active.items():
            acc = pending.get(tp)
            self._advance(consumer, tp, r, acc[1] if acc else 0, acc[2] if acc else 0)
        return done_tasks

    def _table_run(self, tp: TopicPartition, msgs: list[Any],
                   pending: dict[TopicPartition, list[Any]], last: dict[TopicPartition, int],
                   ended: dict[TopicPartition, int]) -> None:
        """Records of a table's topic: those below the committed offset that its source
        accepted become rows (the bytes as they are); the restore ends at that offset."""
        r = self._active[tp]
        assert r.end is not None and r.accepts is not None
        accepts, end = r.accepts, r.end
        acc = pending.get(tp)
        if acc is None:
            acc = pending[tp] = [r.store.restore_batch(), 0, 0]
        batch = acc[0]
        for m in msgs:
            if m.error() is not None:
                continue
            offset = m.offset()
            if offset >= end:
                ended[tp] = end
                break
            last[tp] = offset
            key = m.key()
            if not accepts(m):
                continue
            value = m.value()
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
                acc[2] += len(value)
            acc[2] += len(key)
            acc[1] += 1
        if tp in last and last[tp] + 1 >= end:
            ended[tp] = end
        if tp in last and not acc[1]:
            # Only refused records: the offset still moves past them.
            r.next_offset = last[tp] + 1
            r.store.apply_restore_batch(batch, r.next_offset)

    def _eof(self, consumer: Consumer, tp: TopicPartition, end: int,
             ended: dict[TopicPartition, int]) -> None:
        """The restore ends at an EOF only at the end of the log (``at_log_end``): ending
        before an open transaction could run the task on state missing a commit. A table
        read from its topic ends at the committed offset, which lies before any open
        transaction, or at the log's end if the topic is shorter (recreated)."""
        table_end = self._active[tp].end
        if table_end is not None and end >= table_end:
            ended[tp] = table_end
            return
        if at_log_end(consumer, tp.topic, tp.partition, end):
            ended[tp] = end
            return
        r = self._active[tp]
        if r.waiting_at != end:
            r.waiting_at = end
            _, high = consumer.get_watermark_offsets(
                KafkaTopicPartition(tp.topic, tp.partition), cached=True)
            log.info("restore.waiting_for_transaction", task=str(r.task.id), store=r.store.name,
                     changelog=tp.topic, partition=tp.partition, stable_offset=end,
                     high_watermark=high)

    def _advance(self, consumer: Consumer, tp: TopicPartition, r: Restoring, records: int,
                 nbytes: int) -> None:
        """Count what ``tp`` restored in this step (0 while it waits), with what remains."""
        # The cached end offset is kept up to date by the fetches themselves: no broker call.
        _, high = consumer.get_watermark_offsets(KafkaTopicPartition(tp.topic, tp.partition),
                                                 cached=True)
        # The offsets left include transaction markers, so "remaining" is an upper bound.
        if r.end is not None:
            high = r.end
        r.progress.set_total(r.records + records + max(high - r.next_offset, 0)
                             if high is not None and high >= 0 else None)
        try:
            r.progress.advance(records, nbytes)
        except Stalled as exc:
            raise Stalled(f"restore of store {r.store.name!r} from {tp.topic}[{tp.partition}] "
                          f"(task {r.task.id}) is stuck at offset {r.next_offset}: {exc}"
                          ) from None

    def _rebuild(self, tp: TopicPartition, reason: str) -> None:
        # The stored offset lies outside the changelog (it was deleted and recreated, or the
        # local state belongs to an older incarnation): local state cannot be trusted.
        r = self._active[tp]
        log.warning("restore.stale_local_state_wiped", store=r.store.name,
                    partition=tp.partition, stored_offset=r.store.changelog_offset,
                    reason=reason)
        r.store.wipe()
        r.store.open()
        r.progress = self._progress(r.task, r.store.name, tp)
        r.start_offset = r.next_offset = 0
        consumer = self._client()
        consumer.incremental_unassign([KafkaTopicPartition(tp.topic, tp.partition)])
        consumer.incremental_assign([KafkaTopicPartition(tp.topic, tp.partition,
                                                         OFFSET_BEGINNING)])

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self._active.clear()
