"""A task: one partition number of one sub-topology, with its stores and pipeline."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from streamproc.codecs.base import Codec
from streamproc.graph.compile import SubTopology
from streamproc.graph.nodes import SourceNode, StoreSpec
from streamproc.runtime.context import SourcePush, TimedOperator
from streamproc.runtime.limits import (
    UNBOUNDED,
    OutputTime,
    StateGuard,
    TimeBounds,
    record_size,
)
from streamproc.runtime.operators import build_pipeline
from streamproc.state.store import KeyValueStore
from streamproc.state.table import SourceTableStore
from streamproc.time.watermarks import (
    CONTROL_HEADER,
    CONTROL_MAC_HEADER,
    CONTROL_WATERMARK,
    TaskTime,
    control_mac,
)
from streamproc.types import Origin, TaskId, TopicPartition

# The key of a task's time state (watermarks) in its sub-topology's time store.
TIME_KEY = b"watermark"
# A watermark control record: (topic, partition, value, headers)
ControlRecord = tuple[str, int, bytes, list[tuple[str, bytes]]]


class TaskState(enum.Enum):
    RESTORING = "restoring"
    RUNNING = "running"
    CLOSED = "closed"


class Task:
    """Owns the stores of one (sub-topology, partition) and the offsets it has processed.

    ``next_offsets`` holds, per input partition, the offset after the last record processed
    since the task started; the checkpoint commits exactly these, never more.
    """

    def __init__(
        self,
        task_id: TaskId,
        subtopology: SubTopology,
        *,
        app_dir: Path,
        changelog_topic: Callable[[str], str],
        producer: Callable[[], tuple[Callable[..., None], Callable[[], None]]],
        produced: Callable[[int], None],
        on_error: Callable[[Origin, BaseException, str], None],
        cache_max_keys: int,
        max_record_bytes: int,
        clock: Callable[[], int],
        count: Callable[..., None],
        upstream_tasks: dict[str, int] | None = None,
        control_partitions: dict[str, int] | None = None,
        time_bounds: TimeBounds | None = None,
        output_time: dict[str, OutputTime] | None = None,
        guard: StateGuard | None = None,
        control_key: bytes = b"",
        global_tables: Mapping[str, KeyValueStore] | None = None,
    ) -> None:
        """``upstream_tasks``: per repartition topic this task reads, how many upstream tasks
        write watermarks into it (empty: watermark propagation is off). ``control_partitions``:
        per repartition topic this task writes, its partition count (each partition gets the
        task's watermark). ``time_bounds``: the event timestamps its sources accept;
        ``output_time``: per written topic, the timestamps it accepts; ``guard``: state keys
        found too large at a checkpoint (checked per record from now on); ``control_key``:
        signs and checks watermark control records."""
        self.id = task_id
        self.subtopology = subtopology
        self.partition = task_id.partition
        self.state = TaskState.RESTORING
        # Tables read from a topic: that topic partition is the store's changelog.
        self.source_backed: dict[str, TopicPartition] = {
            spec.name: TopicPartition(spec.source_topic, task_id.partition)
            for spec in subtopology.stores if spec.source_topic is not None}
        self.stores: dict[str, KeyValueStore] = {
            spec.name: (SourceTableStore if spec.source_topic else KeyValueStore)(
                spec.name, task_id.partition, app_dir / spec.name / str(task_id.partition),
                _store_codec(subtopology, spec), cache_max_keys=cache_max_keys)
            for spec in subtopology.stores
        }
        self.changelog_topics = {name: self.source_backed[name].topic
                                 if name in self.source_backed else changelog_topic(name)
                                 for name in self.stores}
        self.next_offsets: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self.producer = producer
        self.produced = produced
        self.on_error = on_error
        self._entries: dict[str, SourcePush] = {}
        self._globals = global_tables or {}
        self._max_record_bytes = max_record_bytes
        self.max_record_bytes = max_record_bytes
        self.time_bounds = time_bounds if time_bounds is not None else TimeBounds()
        self._output_time = output_time or {}
        self._guard = guard
        self._control_key = control_key
        self.now_ms = clock
        self.count = count
        self.control_partitions = control_partitions or {}
        # A table's topic does not move event time: its rows are looked up, not windowed.
        tables = {spec.source_topic for spec in subtopology.stores if spec.source_topic}
        self.time = TaskTime(
            ooo_ms=subtopology.max_out_of_orderness_ms,
            idle_timeout_ms=subtopology.idle_timeout_ms,
            has_local=any(not s.internal or s.topics[0] not in (upstream_tasks or {})
                          for s in subtopology.sources),
            upstream_tasks=upstream_tasks or {}, now_ms=clock(), control_key=control_key,
            local_topics=tuple(
                t for s in subtopology.sources
                if not s.internal or s.topics[0] not in (upstream_tasks or {})
                for t in s.topics if t not in tables))
        self._timed: list[TimedOperator] = []
        # State values prepare_changes found too large for the changelog (task, store, key,
        # size): the checkpoint must not commit; the caller guards the keys and replays.
        self.oversized: list[tuple[TaskId, str, bytes, int]] = []

    # TaskContext --------------------------------------------------------------------------
    def store(self, name: str) -> KeyValueStore:
        return self.stores[name]

    def global_store(self, name: str) -> KeyValueStore:
        return self._globals[name]

    def register_timed(self, op: TimedOperator) -> None:
        self._timed.append(op)

    def output_time(self, topic: str) -> OutputTime:
        return self._output_time.get(topic, UNBOUNDED)

    def guarded(self, store: str) -> frozenset[bytes]:
        return self._guard.keys(self.id, store) if self._guard is not None else frozenset()

    # lifecycle ----------------------------------------------------------------------------
    def open(self) -> list[str]:
        """Open the stores; returns the names of stores that had to be wiped (corrupt)."""
        wiped = [name for name, s in self.stores.items() if s.open()]
        self._timed = []
        self._entries = build_pipeline(self.subtopology, self, self._max_record_bytes,
                                       track_time=bool(self.control_partitions))
        return wiped

    def start(self) -> None:
        """The stores are restored: check that their values still decode, load the watermark
        state and rebuild timer indexes."""
        for store in self.stores.values():
            store.check_values()
        name = self.subtopology.time_store
        if name is not None:
            raw = self.stores[name].get(TIME_KEY)
            if raw is not None:
                self.time.restore(raw)
        for op in self._timed:
            op.start()
        self.state = TaskState.RUNNING

    def close(self) -> None:
        for s in self.stores.values():
            s.close()
        self.state = TaskState.CLOSED

    @property
    def running(self) -> bool:
        return self.state is TaskState.RUNNING

    # processing ---------------------------------------------------------------------------
    def process(self, tp: TopicPartition, msgs: Sequence[Any]) -> int:
        """Run one partition's consumed messages through the pipeline; returns how many."""
        expected = self.next_offsets.get(tp)
        if expected is not None and msgs[0].offset() < expected:
            # A batch fetched before a seek may still be delivered: never process twice.
            msgs = [m for m in msgs if m.offset() >= expected]
            if not msgs:
                return 0
        self._entries[tp.topic](msgs)
        self.next_offsets[tp] = msgs[-1].offset() + 1
        if self._timed:
            wm, now = self.time.watermark, self.now_ms()
            for op in self._timed:
                op.advance(wm, now)
        return len(msgs)

    def tick(self, now_ms: int) -> None:
        """Between batches: idleness, processing-time timers and early window firings."""
        self.time.tick(now_ms)
        wm = self.time.watermark
        for op in self._timed:
            op.advance(wm, now_ms)

    def finish(self) -> None:
        """The input ended (a bounded run): the watermark jumps to the end of time, so every
        window and event-time timer fires."""
        self.time.finish()
        self.tick(self.now_ms())

    # checkpoint ---------------------------------------------------------------------------
    def committed_offset(self, tp: TopicPartition) -> int | None:
        """The offset this task last committed for ``tp`` (None before its first commit)."""
        return self._committed.get(tp)

    def uncommitted_offsets(self) -> dict[TopicPartition, int]:
        return {tp: o for tp, o in self.next_offsets.items() if self._committed.get(tp) != o}

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def prepare_changes(self) -> dict[str, list[tuple[bytes, bytes | None]]]:
        name = self.subtopology.time_store
        if name is not None:
            snap = self.time.snapshot()
            if snap is not None:
                self.stores[name].put(TIME_KEY, snap)
        changes = {name: s.prepare() for name, s in self.stores.items() if s.dirty_count}
        for name, tp in self.source_backed.items():
            # The table's offset moves with its topic even when no row changed (records that
            # were dead-lettered, deletes of absent keys): a restore need not read them again.
            if name not in changes and self.next_offsets.get(tp, -1) > \
                    self.stores[name].changelog_offset:
                changes[name] = []
        limit = self.max_record_bytes
        for name, recs in changes.items():
            if name in self.source_backed:
                continue  # its records are already in their topic: nothing is written
            for key, value in recs:
                # Cheap first test: most values are far below the limit.
                if value is not None and len(value) + len(key) > limit - 1024 and \
                        (size := record_size(key, value)) > limit:
                    self.oversized.append((self.id, name, key, size))
        return changes

    def table_source(self, store: str) -> SourceNode:
        """The source node reading the topic of table ``store``."""
        topic = self.source_backed[store].topic
        return next(s for s in self.subtopology.sources if topic in s.topics)

    def table_offset(self, store: str) -> int | None:
        """The offset a table's rows reflect after this checkpoint: the next offset of its
        topic partition (None for a store with a changelog of its own)."""
        tp = self.source_backed.get(store)
        return None if tp is None else self.next_offsets.get(tp)

    def control_records(self) -> list[ControlRecord]:
        """This task's watermark for every partition of every repartition topic it writes (sent
        at each checkpoint, in its transaction), or nothing if downstream already has it."""
        if not self.control_partitions:
            return []
        payload = self.time.control_payload(str(self.id))
        if payload is None:
            return []
        out: list[ControlRecord] = []
        for topic, n in self.control_partitions.items():
            headers = [(CONTROL_HEADER, CONTROL_WATERMARK),
                       (CONTROL_MAC_HEADER, control_mac(self._control_key, topic, payload))]
            out.extend((topic, p, payload, headers) for p in range(n))
        return out


def _store_codec(st: SubTopology, spec: StoreSpec) -> Codec:
    """A table's rows decode with its source's codec as bound at start (a registry codec is
    bound in place, after the StoreSpec was made); any other store uses its own."""
    if spec.source_topic is None:
        return spec.value_codec
    node = next(s for s in st.sources if spec.source_topic in s.topics)
    return node.value_codec or spec.value_codec
