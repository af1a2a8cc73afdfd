"""A starting task holds its streams until its tables have read their topics' backlog
(runtime/bootstrap.py), with a consumer stand-in that reports end offsets and positions."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition
from structlog.testing import capture_logs

from streamproc.runtime.bootstrap import TableBootstrap
from streamproc.types import TaskId, TopicPartition

TABLE = TopicPartition("customers", 1)
STREAM = TopicPartition("payments", 1)


class Consumer:
    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self.at: dict[tuple[str, int], int] = {}

    def get_watermark_offsets(self, tp: KafkaTopicPartition, timeout: float) -> tuple[int, int]:
        assert (tp.topic, tp.partition) == TABLE
        return self.low, self.high

    def position(self, tps: list[KafkaTopicPartition]) -> list[KafkaTopicPartition]:
        return [KafkaTopicPartition(tp.topic, tp.partition, self.at.get((tp.topic, tp.partition),
                                                                        -1001)) for tp in tps]


def _task() -> Any:
    return SimpleNamespace(id=TaskId(0, 1), source_backed={"customers": TABLE})


def test_a_table_behind_its_end_holds_the_stream_until_it_gets_there() -> None:
    consumer, clock = Consumer(0, 40), [0.0]
    boot = TableBootstrap(consumer, 5.0, clock=lambda: clock[0])  # type: ignore[arg-type]
    task = _task()
    assert boot.start(task, [TABLE, STREAM], {TABLE: 10}) == [TABLE]
    assert boot.active and boot.held(task) == [STREAM]
    consumer.at[TABLE] = 39
    clock[0] = 1.0
    assert boot.release() == []
    consumer.at[TABLE] = 41  # past the end it saw (a transaction marker)
    with capture_logs() as logs:
        assert boot.release() == [(task, [STREAM])]
    assert not boot.active
    assert [e["event"] for e in logs] == ["table.bootstrap_completed"]


def test_a_table_at_its_end_or_empty_holds_nothing() -> None:
    task = _task()
    assert TableBootstrap(Consumer(0, 40), 5.0).start(  # type: ignore[arg-type]
        task, [TABLE, STREAM], {TABLE: 40}) == [TABLE, STREAM]
    assert TableBootstrap(Consumer(7, 7), 5.0).start(  # type: ignore[arg-type]
        task, [TABLE, STREAM], {}) == [TABLE, STREAM]


def test_a_table_without_a_committed_offset_is_read_from_its_first_offset() -> None:
    boot = TableBootstrap(Consumer(30, 40), 5.0)  # type: ignore[arg-type]
    assert boot.start(_task(), [TABLE, STREAM], {}) == [TABLE]


def test_a_hold_that_makes_no_progress_is_released_with_a_warning() -> None:
    consumer, clock = Consumer(0, 40), [0.0]
    boot = TableBootstrap(consumer, 5.0, stall_s=30.0,  # type: ignore[arg-type]
                          clock=lambda: clock[0])
    task = _task()
    boot.start(task, [TABLE, STREAM], {TABLE: 0})
    consumer.at[TABLE] = 20
    clock[0] = 10.0
    assert boot.release() == []
    clock[0] = 39.0  # 29 s without a move
    assert boot.release() == []
    with capture_logs() as logs:
        clock[0] = 40.5
        assert boot.release() == [(task, [STREAM])]
    assert [(e["event"], e["log_level"]) for e in logs] == [("table.bootstrap_stalled",
                                                             "warning")]


def test_a_task_that_only_reads_its_table_holds_nothing() -> None:
    boot = TableBootstrap(Consumer(0, 40), 5.0)  # type: ignore[arg-type]
    assert boot.start(_task(), [TABLE], {}) == [TABLE]
    assert not boot.active


def test_a_forgotten_task_is_not_released() -> None:
    boot = TableBootstrap(Consumer(0, 40), 5.0)  # type: ignore[arg-type]
    task = _task()
    boot.start(task, [TABLE, STREAM], {})
    boot.forget(task)
    assert not boot.active and boot.release() == []


def test_an_end_offset_that_cannot_be_read_holds_nothing() -> None:
    class Unanswered(Consumer):
        def get_watermark_offsets(self, tp: KafkaTopicPartition,
                                  timeout: float) -> tuple[int, int]:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "no answer"))

    boot = TableBootstrap(Unanswered(0, 40), 5.0)  # type: ignore[arg-type]
    with capture_logs() as logs:
        assert boot.start(_task(), [TABLE, STREAM], {}) == [TABLE, STREAM]
    assert [(e["event"], e["log_level"]) for e in logs] == [("table.bootstrap_skipped",
                                                             "warning")]
    assert not boot.active
