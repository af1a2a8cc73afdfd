"""A task whose partitions cannot be sought because the consumer is between two assignments
(librdkafka's _STATE) starts after the next poll, instead of crashing the instance (network
scenario, full run of 2026-12-04: a session lost during a restore)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc.metrics import Metrics
from streamproc.runtime.observe import Listeners
from streamproc.runtime.rebalance import Rebalancer
from streamproc.types import TaskId, TopicPartition


class FakeConsumer:
    def __init__(self, seek_failures: int, code: int = KafkaError._STATE) -> None:
        self.held = [KafkaTopicPartition("in", 3)]
        self.seek_failures = seek_failures
        self.code = code
        self.sought: list[tuple[str, int, int]] = []
        self.resumed: list[tuple[str, int]] = []

    def assignment(self) -> list[KafkaTopicPartition]:
        return self.held

    def committed(self, tps: list[KafkaTopicPartition], _timeout: float
                  ) -> list[KafkaTopicPartition]:
        return [KafkaTopicPartition(tp.topic, tp.partition, 41) for tp in tps]

    def seek(self, tp: KafkaTopicPartition) -> None:
        if self.seek_failures:
            self.seek_failures -= 1
            raise KafkaException(KafkaError(self.code, "Failed to seek to offset 41"))
        self.sought.append((tp.topic, tp.partition, tp.offset))

    def resume(self, tps: list[KafkaTopicPartition]) -> None:
        self.resumed += [(tp.topic, tp.partition) for tp in tps]


class FakeTask:
    def __init__(self) -> None:
        self.id = TaskId(0, 3)
        self.partition = 3
        self.subtopology = SimpleNamespace(source_topics=["in"])
        self.next_offsets: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.source_backed: dict[str, TopicPartition] = {}
        self.started = 0

    def mark_committed(self, positions: dict[TopicPartition, int]) -> None:
        self.committed.update(positions)

    def start(self) -> None:
        self.started += 1

    def close(self) -> None:
        pass


class FakeRestorer:
    def is_restoring(self, _task: Any) -> bool:
        return False

    def remove(self, _task: Any) -> None:
        pass


def _rebalancer(consumer: FakeConsumer, task: FakeTask) -> Rebalancer:
    r = Rebalancer(consumer=consumer, restorer=FakeRestorer(),  # type: ignore[arg-type]
                   tasks={task.id: task}, assigned={TopicPartition("in", 3)},  # type: ignore[dict-item]
                   strays=None, make_task=lambda tid: task,  # type: ignore[arg-type,return-value]
                   topic_subtopology={"in": 0}, tasks_per_subtopology={0: 4},
                   start_at=lambda tp: 0, cooperative=True, op_timeout_s=5.0,
                   metrics=Metrics(), listeners=Listeners([]))
    return r


def test_a_seek_in_erroneous_state_defers_the_start_until_it_works() -> None:
    consumer, task = FakeConsumer(seek_failures=2), FakeTask()
    r = _rebalancer(consumer, task)
    r.start_task(task)  # type: ignore[arg-type]
    assert r.unstarted == {task.id}
    assert (task.started, consumer.sought, consumer.resumed) == (0, [], [])
    r.start_deferred()  # still between assignments
    assert r.unstarted == {task.id} and task.started == 0
    r.start_deferred()
    assert r.unstarted == set()
    assert task.started == 1
    assert consumer.sought == [("in", 3, 41)]
    assert consumer.resumed == [("in", 3)]
    assert task.next_offsets == {TopicPartition("in", 3): 41}


def test_a_deferred_task_that_is_closed_is_not_started() -> None:
    consumer, task = FakeConsumer(seek_failures=1), FakeTask()
    r = _rebalancer(consumer, task)
    r.start_task(task)  # type: ignore[arg-type]
    r.close_task(task)  # type: ignore[arg-type]
    assert r.unstarted == set() and r.tasks == {}
    r.start_deferred()
    assert (task.started, consumer.sought) == (0, [])


def test_any_other_seek_error_still_raises() -> None:
    consumer, task = FakeConsumer(seek_failures=1, code=KafkaError._UNKNOWN_PARTITION), \
        FakeTask()
    r = _rebalancer(consumer, task)
    with pytest.raises(KafkaException):
        r.start_task(task)  # type: ignore[arg-type]
    assert r.unstarted == set()
