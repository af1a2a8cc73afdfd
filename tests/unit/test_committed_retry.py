"""Committed offsets through a moving group coordinator (streamproc/kafka/offsets.py)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streamproc.kafka import offsets


class _Consumer:
    def __init__(self, *answers: Any) -> None:
        self.answers, self.calls = list(answers), 0

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.calls += 1
        a = self.answers.pop(0)
        if isinstance(a, KafkaError):
            raise KafkaException(a)
        return a  # type: ignore[no-any-return]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


TPS = [TopicPartition("in", 0)]
DONE = [TopicPartition("in", 0, 42)]


def test_not_coordinator_is_retried_until_it_answers() -> None:
    clock = _Clock()
    c = _Consumer(KafkaError(KafkaError.NOT_COORDINATOR), KafkaError(
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS), DONE)
    assert offsets.committed(c, TPS, 30, sleep=clock.sleep, clock=clock) == DONE
    assert c.calls == 3 and clock.now == pytest.approx(0.6)


def test_a_permanent_error_is_raised_at_once() -> None:
    clock = _Clock()
    c = _Consumer(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED), DONE)
    with pytest.raises(KafkaException):
        offsets.committed(c, TPS, 30, sleep=clock.sleep, clock=clock)
    assert c.calls == 1


def test_a_transient_error_past_the_deadline_is_raised() -> None:
    clock = _Clock()
    c = _Consumer(*[KafkaError(KafkaError.NOT_COORDINATOR)] * 100)
    with pytest.raises(KafkaException, match="NOT_COORDINATOR"):
        offsets.committed(c, TPS, 5, sleep=clock.sleep, clock=clock)
    assert 5 <= c.calls <= 10 and clock.now <= 5
