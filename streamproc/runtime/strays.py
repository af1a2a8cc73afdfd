"""Partitions the plan has no task for: records there are dead-lettered, never processed.

The plan (tasks per sub-topology) is resolved once at start. A source topic that gains
partitions while the application runs gets them assigned by the group, but a stateful task on a
new partition has no changelog partition to write to (every checkpoint would fail and replay
forever), and its keys hash differently from the old ones anyway. So the records of such a
partition are bad input: each is dead-lettered (``UnexpectedPartition``), in the same
transaction as the offset that passes it, and the instance says loudly what to do (restart:
stateless sub-topologies take the new count; stateful ones ask for a reset).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import structlog

from streamproc.runtime.limits import UnexpectedPartition
from streamproc.types import Origin, TopicPartition

log = structlog.get_logger(__name__)


class StrayPartitions:
    def __init__(self, on_error: Callable[[Origin, BaseException, str], None],
                 count: Callable[..., None]) -> None:
        self._on_error = on_error
        self._count = count
        self.next_offsets: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._planned: dict[TopicPartition, int] = {}

    def __contains__(self, tp: object) -> bool:
        return tp in self._planned

    def __bool__(self) -> bool:
        return bool(self._planned)

    def add(self, tp: TopicPartition, planned: int, committed: int | None) -> None:
        self._planned[tp] = planned
        if committed is not None:
            self.next_offsets[tp] = self._committed[tp] = committed
        log.error("partition.unexpected", topic=tp.topic, partition=tp.partition,
                  planned_partitions=planned,
                  action="its records are dead-lettered; restart the application to take the "
                  "new partition count (a stateful application must be reset: its changelogs "
                  "have one partition per task)")

    def start(self, consumer: Any, tp: TopicPartition, planned: int, start_at: int,
              timeout_s: float) -> None:
        """Take ``tp`` on from its committed offset (``start_at`` without one), resumed."""
        from confluent_kafka import TopicPartition as KafkaTopicPartition

        from streamproc.kafka import offsets

        [c] = offsets.committed(consumer, [KafkaTopicPartition(tp.topic, tp.partition)],
                                timeout_s)
        self.add(tp, planned, c.offset if c.offset >= 0 else None)
        consumer.seek(KafkaTopicPartition(tp.topic, tp.partition,
                                          c.offset if c.offset >= 0 else start_at))
        consumer.resume([KafkaTopicPartition(tp.topic, tp.partition)])

    def remove(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self._planned.pop(tp, None)
            self.next_offsets.pop(tp, None)
            self._committed.pop(tp, None)

    def process(self, tp: TopicPartition, msgs: Sequence[Any]) -> int:
        expected = self.next_offsets.get(tp)
        if expected is not None:
            msgs = [m for m in msgs if m.offset() >= expected]
        if not msgs:
            return 0
        planned = self._planned[tp]
        for m in msgs:
            self._on_error(m, UnexpectedPartition(
                f"{tp.topic}[{tp.partition}] is beyond the {planned} partitions this "
                "application was started with"), "source")
        self._count("unexpected_partition_records_total", len(msgs), topic=tp.topic,
                    partition=tp.partition)
        self.next_offsets[tp] = msgs[-1].offset() + 1
        return len(msgs)

    def uncommitted_offsets(self) -> dict[TopicPartition, int]:
        return {tp: o for tp, o in self.next_offsets.items() if self._committed.get(tp) != o}

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update({tp: o for tp, o in offsets.items() if tp in self._planned})
