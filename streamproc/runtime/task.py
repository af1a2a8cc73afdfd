"""A task: one partition number of one sub-topology, with its stores and pipeline."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from streamproc.graph.compile import SubTopology
from streamproc.runtime.operators import SourcePush, build_pipeline
from streamproc.state.store import KeyValueStore
from streamproc.types import Origin, TaskId, TopicPartition


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
    ) -> None:
        self.id = task_id
        self.subtopology = subtopology
        self.partition = task_id.partition
        self.state = TaskState.RESTORING
        self.stores: dict[str, KeyValueStore] = {
            spec.name: KeyValueStore(
                spec.name, task_id.partition, app_dir / spec.name / str(task_id.partition),
                spec.value_codec, cache_max_keys=cache_max_keys)
            for spec in subtopology.stores
        }
        self.changelog_topics = {name: changelog_topic(name) for name in self.stores}
        self.next_offsets: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self.producer = producer
        self.produced = produced
        self.on_error = on_error
        self._entries: dict[str, SourcePush] = {}
        self._max_record_bytes = max_record_bytes

    # TaskContext --------------------------------------------------------------------------
    def store(self, name: str) -> KeyValueStore:
        return self.stores[name]

    # lifecycle ----------------------------------------------------------------------------
    def open(self) -> list[str]:
        """Open the stores; returns the names of stores that had to be wiped (corrupt)."""
        wiped = [name for name, s in self.stores.items() if s.open()]
        self._entries = build_pipeline(self.subtopology, self, self._max_record_bytes)
        return wiped

    def start(self) -> None:
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
        return len(msgs)

    # checkpoint ---------------------------------------------------------------------------
    def uncommitted_offsets(self) -> dict[TopicPartition, int]:
        return {tp: o for tp, o in self.next_offsets.items() if self._committed.get(tp) != o}

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def prepare_changes(self) -> dict[str, list[tuple[bytes, bytes | None]]]:
        return {name: s.prepare() for name, s in self.stores.items() if s.dirty_count}
