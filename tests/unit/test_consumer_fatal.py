"""A consumer in librdkafka's fatal state reports it as an error event whose own fatal() is
false; the loop must stop on it (ConsumerFailed: the CLI restarts the instance in place), not
poll it forever. The rejoin pattern's "unknown topic" is expected and not logged."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from streamproc.errors import ConsumerFailed
from streamproc.runtime.loop import REJOIN_PATTERN, ConsumerLoop


def _loop() -> ConsumerLoop:
    return ConsumerLoop.__new__(ConsumerLoop)  # _consume_error uses no state


def test_a_fatal_consumer_error_event_stops_the_loop() -> None:
    err = KafkaError(KafkaError._FATAL, "Fatal error: Broker: Static consumer fenced by other "
                     "consumer with same group.instance.id")
    assert not err.fatal()  # what librdkafka hands the consumer, as seen in the fault suite
    with pytest.raises(ConsumerFailed, match="Static consumer fenced"):
        _loop()._consume_error(err)


def test_the_rejoin_pattern_is_not_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    _loop()._consume_error(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART,
                                      f"Subscribed topic not available: {REJOIN_PATTERN}: "
                                      "Broker: Unknown topic or partition"))
    _loop()._consume_error(KafkaError(KafkaError._TRANSPORT, "broker down"))
    out = capsys.readouterr()
    assert "rejoin" not in out.out + out.err
    assert "broker down" in out.out + out.err
