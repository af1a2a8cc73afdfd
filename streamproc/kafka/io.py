"""Small helpers to feed and read topics: used by the demo, the tests and the benchmarks."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc.kafka.clients import new_consumer, new_producer
from streamproc.runtime.limits import read_headers
from streamproc.types import Headers

# Where the helpers connect: a bootstrap address (plaintext), or a whole client config (a
# secured cluster: streamproc.connection.kafka_connection).
Bootstrap = str | Mapping[str, Any]


def client_base(bootstrap: Bootstrap) -> dict[str, Any]:
    """The client config a :data:`Bootstrap` stands for."""
    return {"bootstrap.servers": bootstrap} if isinstance(bootstrap, str) else dict(bootstrap)


def servers_of(bootstrap: Bootstrap) -> str:
    """The bootstrap servers alone: what a message may show (never the secrets beside them)."""
    return bootstrap if isinstance(bootstrap, str) else str(bootstrap.get("bootstrap.servers"))


_base = client_base


@dataclass(frozen=True)
class ReadRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: dict[str, bytes]


def produce(bootstrap: Bootstrap, topic: str,
            records: Iterable[tuple[bytes | None, bytes | None]],
            *, partition: int | None = None, headers: Headers | None = None) -> int:
    """Produce (key, value) pairs idempotently and wait for all acknowledgements."""
    return produce_timed(bootstrap, topic, ((k, v, None, partition) for k, v in records),
                         headers=headers)


def produce_timed(bootstrap: Bootstrap, topic: str,
                  records: Iterable[tuple[bytes | None, bytes | None, int | None, int | None]],
                  *, headers: Headers | None = None) -> int:
    """Produce (key, value, timestamp, partition) records idempotently and wait for all
    acknowledgements. A None timestamp is the send time (event-time data sets its own
    CreateTime); a None partition is the key's under murmur2, Kafka's Java default."""
    p = new_producer({**_base(bootstrap), "enable.idempotence": True, "linger.ms": 5,
                  "partitioner": "murmur2_random"})
    n = 0
    for key, value, ts, partition in records:
        part = -1 if partition is None else partition  # -1: let the partitioner choose
        while True:
            try:
                p.produce(topic, value, key, part, timestamp=ts or 0, headers=headers)
                break
            except BufferError:
                p.poll(0.1)
        n += 1
    if p.flush(60):
        raise RuntimeError(f"could not deliver all records to {topic}")
    return n


def committed_offsets(bootstrap: Bootstrap, group: str, topic: str,
                      timeout_s: float = 10.0) -> dict[int, int]:
    c = new_consumer({**_base(bootstrap), "group.id": group,
                  "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=timeout_s).topics[topic].partitions
        got = c.committed([KafkaTopicPartition(topic, p) for p in parts], timeout_s)
        return {tp.partition: tp.offset for tp in got}
    finally:
        c.close()


def at_log_end(consumer: Consumer, topic: str, partition: int, eof_offset: int) -> bool:
    """Whether a partition EOF of a read_committed consumer is the end of the log.

    Such an EOF is at the last stable offset. Below the high watermark it stands before a
    transaction still open there, which is not the end: a commit whose markers the coordinator
    is still writing (the committed input offsets may already read as stable), or a dead
    producer's transaction the broker will abort. A reader that stops there misses that
    commit; librdkafka reports EOF again once the stable offset moves. The high watermark is
    the one the fetch answers carry (librdkafka caches it): no broker call."""
    _, high = consumer.get_watermark_offsets(KafkaTopicPartition(topic, partition),
                                             cached=True)
    return high is None or high <= eof_offset


def drain(consumer: Consumer, partitions: Iterable[int], topic: str, *,
          timeout_s: float, batch: int = 10_000) -> Iterator[Any]:
    """The records of the assigned ``partitions`` of ``topic`` up to each one's current end
    (the consumer needs ``enable.partition.eof``); TimeoutError if an end is not reached in
    ``timeout_s`` (an open transaction keeps read_committed readers from it)."""
    pending = set(partitions)
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{topic}: partitions {sorted(pending)} did not reach their end "
                               f"within {timeout_s:.0f} s (an open transaction?)")
        for m in consumer.consume(batch, 0.5):
            err = m.error()
            if err is None:
                yield m
            elif err.code() == KafkaError._PARTITION_EOF and at_log_end(
                    consumer, topic, m.partition() or 0, m.offset() or 0):
                pending.discard(m.partition())


def header_list(m: Any) -> list[tuple[str, bytes | None]]:
    """A message's headers in order, values as bytes (the client may give str or a dict)."""
    got = read_headers(m) or []  # raises (never crashes) on a name that is not UTF-8
    raw = list(got.items()) if isinstance(got, dict) else got
    return [(k, v if isinstance(v, bytes | None) else str(v).encode()) for k, v in raw]


def read_all(bootstrap: Bootstrap, topic: str, *, timeout_s: float = 30.0,
             isolation: str = "read_committed") -> list[ReadRecord]:
    """Every record of ``topic`` from the beginning to its current end (per partition)."""
    c = new_consumer({**_base(bootstrap), "group.id": f"reader-{uuid.uuid4().hex}",
                  "isolation.level": isolation, "enable.auto.commit": False,
                  "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    try:
        parts = c.list_topics(topic, timeout=timeout_s).topics[topic].partitions
        c.assign([KafkaTopicPartition(topic, p, 0) for p in parts])
        return [ReadRecord(topic, m.partition() or 0, m.offset() or 0, m.key(), m.value(),
                           m.timestamp()[1], {k: v or b"" for k, v in header_list(m)})
                for m in drain(c, parts, topic, timeout_s=timeout_s)]
    finally:
        c.close()


def pending_records(bootstrap: Bootstrap, group: str, topic: str,
                    timeout_s: float = 30.0) -> int:
    """Records of ``topic`` visible to read_committed readers past ``group``'s committed offsets.

    Offsets alone cannot tell: under exactly-once the log ends in transaction markers, so a
    fully processed partition has committed offset < end offset.
    """
    c = new_consumer({**_base(bootstrap), "group.id": group,
                  "isolation.level": "read_committed", "enable.auto.commit": False,
                  "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    try:
        parts = c.list_topics(topic, timeout=timeout_s).topics[topic].partitions
        committed = c.committed([KafkaTopicPartition(topic, p) for p in parts], timeout_s)
        c.assign([KafkaTopicPartition(topic, tp.partition,
                                      tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                  for tp in committed])
        return sum(1 for _ in drain(c, parts, topic, timeout_s=timeout_s))
    finally:
        c.close()


def wait_processed(bootstrap: Bootstrap, group: str, topics: Iterable[str],
                   timeout_s: float = 60.0) -> bool:
    """Wait until ``group`` has committed everything in ``topics`` (list them upstream first:
    a repartition topic only stops growing once its upstream is done)."""
    deadline = time.monotonic() + timeout_s
    for topic in topics:
        while pending_records(bootstrap, group, topic) > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.3)
    return True
