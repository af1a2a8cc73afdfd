"""The checkpoint coordinator: the barrier, the transaction, RocksDB write-back, recovery.

Checkpoint protocols (design.md):
- exactly_once: changelog records join the open transaction; flush; the consumer positions are
  added with the group metadata (KIP-447 fencing); commit; only then RocksDB is written
  (atomically with its changelog offset); a new transaction begins.
- at_least_once: flush output + changelog, write RocksDB, then commit offsets.
- at_most_once: offsets were committed before their batch was processed (runtime/loop.py);
  a checkpoint flushes output and changelog and writes RocksDB.
Any failure discards all uncommitted work: a new producer fences the old one, every task is
reopened from its committed state and re-consumes from the committed offsets. So no input
offset is ever committed without the output and state it caused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import structlog
from confluent_kafka import Consumer, KafkaException

from streamproc.errors import TransactionAborted
from streamproc.metrics import Metrics
from streamproc.runtime.collector import Collector, offset_list
from streamproc.runtime.limits import StateGuard
from streamproc.runtime.observe import CheckpointDone, Listeners
from streamproc.runtime.strays import StrayPartitions
from streamproc.runtime.task import Task
from streamproc.types import TaskId, TopicPartition

log = structlog.get_logger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


class Checkpointer:
    def __init__(self, *, guarantee: str, collector: Collector, consumer: Consumer,
                 tasks: Mapping[TaskId, Task], strays: StrayPartitions, guard: StateGuard,
                 repartition_topics: Mapping[str, object], max_record_bytes: int,
                 metrics: Metrics, listeners: Listeners) -> None:
        self.guarantee = guarantee
        self._eos = guarantee == "exactly_once"
        self.collector = collector
        self.consumer = consumer
        self._tasks = tasks
        self._strays = strays
        self._guard = guard
        self._repartition_topics = repartition_topics
        self._max_record_bytes = max_record_bytes
        self._metrics = metrics
        self._listeners = listeners
        # Reopens every task from its committed state (the rebalance handler's), set by the
        # Application once both exist.
        self.reopen: Callable[[], None] = lambda: None
        self.count = 0
        # Committed offsets of repartition partitions: records before them may be purged.
        self.purgeable: dict[tuple[str, int], int] = {}

    def checkpoint(self, reason: str, *, recover: bool = True) -> bool:
        """Commit every running task's output, state changes and input offsets as one unit.
        False when nothing committed (then, with ``recover``, every task was reopened)."""
        collector, consumer = self.collector, self.consumer
        running = [t for t in self._tasks.values() if t.running]
        offsets: dict[TopicPartition, int] = {}
        for t in running:
            offsets.update(t.uncommitted_offsets())
        offsets.update(self._strays.uncommitted_offsets())
        changes = [(t, name, recs) for t in running
                   for name, recs in t.prepare_changes().items()]
        oversized = [e for t in running for e in t.oversized]
        if oversized:
            return self._state_too_large(oversized, reason, recover=recover)
        controls = [c for t in running for c in t.control_records()]
        if not offsets and not changes and not controls:
            return True
        started = time.monotonic()
        try:
            wall = now_ms()
            for topic, partition, payload, headers in controls:
                collector.send(topic, None, payload, wall, list(headers), partition)
            for t, name, recs in changes:
                if name in t.source_backed:
                    continue  # a table's topic is its changelog
                topic = t.changelog_topics[name]
                for key, value in recs:
                    collector.send_changelog(topic, t.partition, key, value)
            if self._eos:
                collector.commit_transaction(offsets, consumer.consumer_group_metadata())
            else:
                collector.flush()
            for t, name, recs in changes:
                at = t.table_offset(name) if name in t.source_backed else \
                    collector.changelog_next(t.changelog_topics[name], t.partition)
                t.stores[name].commit(recs, at)
            if self.guarantee == "at_least_once" and offsets:
                consumer.commit(offsets=offset_list(offsets, collector.offset_metadata),
                                asynchronous=False)
        except (TransactionAborted, KafkaException) as exc:
            refused = collector.refused()
            if refused is not None:
                raise refused from None  # a replay would be refused the same way
            self._metrics.inc("checkpoint_failures_total")
            log.warning("checkpoint.failed", reason=reason, error=str(exc))
            if recover:
                self.recover(f"checkpoint failed: {exc}")
            return False
        for t in running:
            t.mark_committed({tp: o for tp, o in offsets.items() if tp in t.next_offsets})
        self._strays.mark_committed(offsets)
        for tp, o in offsets.items():  # committed: records before o are no longer needed
            if tp.topic in self._repartition_topics:
                self.purgeable[(tp.topic, tp.partition)] = o
        if self._eos:
            collector.begin()
        secs = time.monotonic() - started
        self.count += 1
        self._metrics.inc("checkpoints_total")
        self._metrics.inc("checkpoint_duration_seconds_total", secs)
        sent = [recs for t, name, recs in changes if name not in t.source_backed]
        records = sum(len(r) for r in sent)
        self._listeners.checkpointed(CheckpointDone(
            reason, secs, len(offsets), records,
            sum(len(k) + (len(v) if v is not None else 0) for recs in sent for k, v in recs)))
        log.debug("checkpoint.committed", reason=reason, partitions=len(offsets),
                  changelog_records=records, seconds=round(secs, 4))
        return True

    def _state_too_large(self, oversized: list[tuple[TaskId, str, bytes, int]], reason: str,
                         *, recover: bool) -> bool:
        """State values the changelog cannot take: nothing of this interval commits; the keys
        are guarded and the input replayed, so that the records that made them too large are
        dead-lettered one by one (runtime/limits.py)."""
        for tid, store, key, size in oversized:
            self._guard.add(tid, store, key)
            log.warning("state.value_too_large", task=str(tid), store=store, key=key[:60],
                        size=size, max_record_bytes=self._max_record_bytes)
        self._metrics.inc("state_values_too_large_total", len(oversized))
        log.warning("checkpoint.failed", reason=reason, error="state values too large; "
                    "replaying with their keys checked per record")
        if recover:
            self.recover("state values too large")
        return False

    def recover(self, reason: str) -> None:
        """Drop every uncommitted effect and resume all owned tasks from committed state."""
        log.warning("instance.recovering", reason=reason, tasks=len(self._tasks))
        self._metrics.inc("transaction_aborts_total")
        self.collector.reset()
        self.reopen()
        self.collector.begin()

    def commit_before_processing(self, offsets: dict[TopicPartition, int]) -> None:
        """at_most_once: the batch's offsets commit before it is processed."""
        if offsets:
            self.consumer.commit(offsets=offset_list(offsets, self.collector.offset_metadata),
                                 asynchronous=False)
