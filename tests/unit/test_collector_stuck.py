"""A transactional call that librdkafka never returns from (its timeout ignored: librdkafka
#5456, seen after a connection reset in reliability/scenarios/network.py) must fail the
checkpoint within the collector's own deadline, so the instance recovers with a new producer
instead of hanging forever."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamproc.errors import TransactionAborted
from streamproc.runtime import collector as collector_mod
from streamproc.runtime.collector import Collector
from streamproc.types import TopicPartition


class StuckProducer:
    """Returns from ``stuck_in`` only when the test ends."""

    instances: ClassVar[list[StuckProducer]] = []
    release = threading.Event()

    def __init__(self, conf: dict[str, Any], stuck_in: str) -> None:
        self.conf, self.stuck_in = conf, stuck_in
        self.calls: list[str] = []
        StuckProducer.instances.append(self)

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name == self.stuck_in:
            StuckProducer.release.wait(60)

    def init_transactions(self, _t: float) -> None:
        self._call("init_transactions")

    def begin_transaction(self) -> None:
        self._call("begin_transaction")

    def flush(self, _t: float) -> int:
        return 0

    def purge(self, **_kw: Any) -> None:
        self._call("purge")

    def send_offsets_to_transaction(self, _o: Any, _m: Any, _t: float) -> None:
        self._call("send_offsets_to_transaction")

    def commit_transaction(self, _t: float) -> None:
        self._call("commit_transaction")


@pytest.fixture
def stuck_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    which: list[str] = []
    StuckProducer.instances.clear()
    StuckProducer.release.clear()
    # Only the first producer gets stuck: the one that replaces it works.
    monkeypatch.setattr(collector_mod, "new_producer", lambda conf: StuckProducer(
        conf, which[0] if not StuckProducer.instances else ""))
    yield which
    StuckProducer.release.set()


@pytest.mark.parametrize("call", ["send_offsets_to_transaction", "commit_transaction"])
def test_a_stuck_commit_fails_within_the_deadline_and_reset_recovers(
        stuck_in: list[str], call: str) -> None:
    stuck_in.append(call)
    c = Collector(lambda: {"transactional.id": "t"}, transactional=True, op_timeout_s=0.2)
    c.init()
    c.begin()
    t0 = time.monotonic()
    with pytest.raises(TransactionAborted, match=f"{call} did not return"):
        c.commit_transaction({TopicPartition("in", 0): 5}, "group")
    assert time.monotonic() - t0 < 3  # our deadline (0.2 s + 1 s margin), not librdkafka's
    c.reset()  # the unknown-outcome path: a new producer, initialised, in a new transaction
    c.begin()
    c.commit_transaction({TopicPartition("in", 0): 5}, "group")
    old, new = StuckProducer.instances
    assert old.calls[-1] == "purge" and call in old.calls
    assert new.calls == ["init_transactions", "begin_transaction",
                         "send_offsets_to_transaction", "commit_transaction"]


def test_a_stuck_commit_is_abandoned_at_the_transaction_timeout(stuck_in: list[str]) -> None:
    # Past transaction.timeout.ms the broker aborts the transaction by itself: waiting the
    # whole operation timeout (30 s by default) for librdkafka only stalls the instance.
    stuck_in.append("send_offsets_to_transaction")
    c = Collector(lambda: {"transactional.id": "t", "transaction.timeout.ms": 1000},
                  transactional=True, op_timeout_s=20.0)
    c.init()
    c.begin()
    t0 = time.monotonic()
    with pytest.raises(TransactionAborted, match=r"did not return within 2\.0s"):
        c.commit_transaction({TopicPartition("in", 0): 5}, "group")
    assert time.monotonic() - t0 < 4


def test_a_stuck_init_is_retried_with_a_fresh_producer(stuck_in: list[str]) -> None:
    stuck_in.append("init_transactions")
    c = Collector(lambda: {"transactional.id": "t"}, transactional=True, op_timeout_s=0.2)
    t0 = time.monotonic()
    c.init()
    assert time.monotonic() - t0 < 3  # our deadline (1 s + margin), not librdkafka's
    old, new = StuckProducer.instances
    assert old.calls == new.calls == ["init_transactions"]


class FailingInit:
    """init_transactions fails with ``code`` for the first ``failures`` producers."""

    made: ClassVar[list[FailingInit]] = []

    def __init__(self, code: int, failures: int) -> None:
        self.code, self.failures = code, failures
        FailingInit.made.append(self)

    def init_transactions(self, _t: float) -> None:
        if len(FailingInit.made) <= self.failures:
            raise KafkaException(KafkaError(self.code, "Failed to initialize Producer ID"))


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    spec: list[tuple[int, int]] = []
    FailingInit.made.clear()
    monkeypatch.setattr(collector_mod, "new_producer", lambda conf: FailingInit(*spec[0]))
    yield spec


def test_a_moving_coordinator_is_waited_for(failing: list[tuple[int, int]]) -> None:
    # CI, broker failure scenario: COORDINATOR_NOT_AVAILABLE for longer than one call while
    # the killed broker's __transaction_state partitions found new leaders.
    failing.append((KafkaError.COORDINATOR_NOT_AVAILABLE, 3))
    c = Collector(lambda: {"transactional.id": "t"}, transactional=True, op_timeout_s=1.0)
    c.init()
    assert len(FailingInit.made) == 4


def test_a_coordinator_that_never_comes_back_fails_after_four_timeouts(
        failing: list[tuple[int, int]]) -> None:
    failing.append((KafkaError.COORDINATOR_NOT_AVAILABLE, 1000))
    c = Collector(lambda: {"transactional.id": "t"}, transactional=True, op_timeout_s=0.25)
    t0 = time.monotonic()
    with pytest.raises(KafkaException, match="Failed to initialize Producer ID"):
        c.init()
    assert 1.0 <= time.monotonic() - t0 < 3


def test_an_error_waiting_cannot_cure_is_raised_at_once(failing: list[tuple[int, int]]) -> None:
    failing.append((KafkaError.INVALID_TRANSACTION_TIMEOUT, 1000))
    c = Collector(lambda: {"transactional.id": "t"}, transactional=True, op_timeout_s=5.0)
    with pytest.raises(KafkaException):
        c.init()
    assert len(FailingInit.made) == 1


def test_an_error_of_the_call_is_raised_on_the_callers_thread() -> None:
    def fail() -> None:
        raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        collector_mod.bounded("x", fail, 1.0)


class FencedInCallback(StuckProducer):
    """A producer fenced while serving delivery reports: confluent-kafka raises the fatal
    error from inside the callback dispatch, which Python reports as a SystemError."""

    def flush(self, _t: float) -> int:
        try:
            raise KafkaException(KafkaError(KafkaError._FENCED, "fenced by newer producer",
                                            fatal=True))
        except KafkaException as exc:
            raise SystemError("<function Collector._on_delivery> returned a result with an "
                              "exception set") from exc


def test_a_producer_fenced_inside_a_delivery_callback_raises_the_kafka_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen in the broker failure scenario: the SystemError escaped the checkpoint, which
    # recovers from KafkaException only, and crashed the instance.
    monkeypatch.setattr(collector_mod, "new_producer", lambda conf: FencedInCallback(conf, ""))
    c = Collector(lambda: {"transactional.id": "t"}, transactional=True, op_timeout_s=0.2)
    c.init()
    c.begin()
    # What the checkpoint coordinator recovers from (a new producer), not a crash.
    with pytest.raises(TransactionAborted, match=r"commit failed \(fatal\): fenced by newer"):
        c.commit_transaction({TopicPartition("in", 0): 5}, "group")
    with pytest.raises(KafkaException):
        c.flush()
