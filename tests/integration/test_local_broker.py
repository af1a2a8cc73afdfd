"""streamproc.kafka.broker against a real single-node Kafka in a temporary directory.

The tests share one broker (module fixture) and run in file order: the last test
stops and restarts it. Jars come from the shared cache (default_home()), so only
the very first run on a machine pays for the Maven download.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamproc.kafka.broker import LocalBroker, start, status, stop

pytestmark = pytest.mark.kafka

PARTITIONS = 3


@pytest.fixture(scope="module")
def broker_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data_dir = tmp_path_factory.mktemp("local-broker")
    yield data_dir
    stop(data_dir)  # also covers a failed test that left a restarted broker running


@pytest.fixture(scope="module")
def broker(broker_dir: Path) -> LocalBroker:
    # Generous: it starts while the parallel suite starts all its other JVMs (CI run 10: past
    # the default 90 s); what is under test here is the broker's behaviour, not its speed.
    return start(data_dir=broker_dir, timeout_s=300)


def _create_topic(bootstrap: str, name: str, partitions: int = PARTITIONS) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)], operation_timeout=15
    )
    futures[name].result(timeout=20)


def _partition_count(bootstrap: str, topic: str) -> int:
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return len(metadata.topics[topic].partitions)


def _transactional_producer(bootstrap: str) -> Producer:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"test-{uuid.uuid4()}"}
    )
    producer.init_transactions(20)
    return producer


def _produce(producer: Producer, topic: str, values: list[str]) -> None:
    for i, value in enumerate(values):
        # Explicit partitions so every partition holds part of the transaction.
        producer.produce(topic, value=value.encode(), partition=i % PARTITIONS)


def _read_to_end(bootstrap: str, topic: str, isolation: str) -> list[str]:
    """All values of all partitions, up to the end (the LSO for read_committed)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4()}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
            # EOF events give an exact "read everything" point instead of
            # waiting for an arbitrary quiet period.
            "enable.partition.eof": True,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        values: list[str] = []
        at_eof: set[int] = set()
        for _ in range(200):  # 200 x 0.2 s = 40 s ceiling; normally < 1 s
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                at_eof.add(msg.partition())
                if len(at_eof) == PARTITIONS:
                    return values
                continue
            at_eof.discard(msg.partition())
            values.append(msg.value().decode())
        pytest.fail(f"did not reach the end of {topic}; got {values}")
    finally:
        consumer.close()


def test_start_returns_broker_on_loopback(broker: LocalBroker, broker_dir: Path) -> None:
    host, port = broker.bootstrap.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert 0 < int(port) < 65536
    assert broker.data_dir == broker_dir.resolve()
    assert broker.pid > 0
    os.kill(broker.pid, 0)  # raises if the process does not exist
    assert (broker_dir / "broker.log").stat().st_size > 0  # a logging binding is present


def test_status_finds_running_broker(broker: LocalBroker, broker_dir: Path) -> None:
    assert status(broker_dir) == broker


def test_start_again_is_idempotent(broker: LocalBroker, broker_dir: Path) -> None:
    again = start(data_dir=broker_dir)
    assert again.pid == broker.pid
    assert again == broker


def test_committed_transaction_is_read_by_read_committed(broker: LocalBroker) -> None:
    topic = "tx-commit"
    _create_topic(broker.bootstrap, topic)
    assert _partition_count(broker.bootstrap, topic) == PARTITIONS
    expected = [f"value-{i}" for i in range(10)]

    producer = _transactional_producer(broker.bootstrap)
    producer.begin_transaction()
    _produce(producer, topic, expected)
    producer.commit_transaction(20)

    got = _read_to_end(broker.bootstrap, topic, "read_committed")
    assert sorted(got) == sorted(expected)
    assert len(got) == 10


def test_aborted_transaction_is_invisible_to_read_committed(broker: LocalBroker) -> None:
    topic = "tx-abort"
    _create_topic(broker.bootstrap, topic)
    aborted = [f"aborted-{i}" for i in range(6)]
    committed = [f"committed-{i}" for i in range(6)]

    producer = _transactional_producer(broker.bootstrap)
    producer.begin_transaction()
    _produce(producer, topic, aborted)
    producer.flush(20)  # make sure the aborted records really reach the log
    producer.abort_transaction(20)
    producer.begin_transaction()
    _produce(producer, topic, committed)
    producer.commit_transaction(20)

    assert sorted(_read_to_end(broker.bootstrap, topic, "read_committed")) == sorted(committed)
    # Control: the aborted records are in the log, so the assertion above is
    # about isolation and not about records that were never written.
    assert sorted(_read_to_end(broker.bootstrap, topic, "read_uncommitted")) == sorted(
        aborted + committed
    )


# Must stay last: it replaces the module's broker process.
def test_stop_then_restart_keeps_data(broker: LocalBroker, broker_dir: Path) -> None:
    topic = "durable"
    _create_topic(broker.bootstrap, topic)
    producer = _transactional_producer(broker.bootstrap)
    producer.begin_transaction()
    _produce(producer, topic, ["a", "b", "c"])
    producer.commit_transaction(20)

    assert stop(broker_dir) is True
    assert status(broker_dir) is None
    with pytest.raises(ProcessLookupError):
        os.kill(broker.pid, 0)
    assert stop(broker_dir) is False  # nothing left to stop

    restarted = start(data_dir=broker_dir)
    assert restarted.pid != broker.pid
    assert status(broker_dir) == restarted
    assert _partition_count(restarted.bootstrap, topic) == PARTITIONS
    assert _partition_count(restarted.bootstrap, "tx-commit") == PARTITIONS
    assert sorted(_read_to_end(restarted.bootstrap, topic, "read_committed")) == ["a", "b", "c"]
