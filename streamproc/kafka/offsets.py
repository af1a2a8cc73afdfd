"""The group's committed offsets, read through a coordinator that may be moving.

During a broker's restart the group coordinator moves to another broker; for a few seconds a
``committed`` call answers NOT_COORDINATOR (or COORDINATOR_LOAD_IN_PROGRESS, a timeout).
Those are the cluster healing, not a reason to stop an instance (the fault suite's rolling
restart crashed one on exactly that): retry them until the caller's time is up.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition

log = structlog.get_logger(__name__)

_TRANSIENT = frozenset({
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.REQUEST_TIMED_OUT,
    KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._WAIT_COORD,
})


def transient(exc: KafkaException) -> bool:
    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    return err is not None and not err.fatal() and (err.retriable()
                                                    or err.code() in _TRANSIENT)


def committed(consumer: Any, tps: list[TopicPartition], timeout_s: float,
              sleep: Any = time.sleep, clock: Any = time.monotonic) -> list[TopicPartition]:
    """``consumer.committed(tps)``, retrying transient coordinator errors for up to
    ``timeout_s`` in all; the last error once the time is up."""
    deadline = clock() + timeout_s
    attempt = 0
    while True:
        attempt += 1
        try:
            got: list[TopicPartition] = consumer.committed(
                tps, max(0.5, min(5.0, deadline - clock())))
            return got
        except KafkaException as exc:
            if not transient(exc) or clock() + 0.2 >= deadline:
                raise
            log.info("offsets.committed_retry", attempt=attempt, error=str(exc.args[0]))
            sleep(min(0.2 * attempt, 1.0))
