"""In-memory stand-ins for what the runtime gets from Kafka: topic logs, consumed messages, a
transaction that commits output, changelog and offsets together, and topic metadata.

Only what the driver needs: records are appended to a partition's log when the transaction that
wrote them commits (what a read_committed consumer sees), offsets are list positions.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from streamproc.kafka.admin import TopicSpec
from streamproc.types import Headers


class Message:
    """A record in a topic log, with the interface of a consumed ``confluent_kafka.Message``."""

    __slots__ = ("_headers", "_key", "_offset", "_partition", "_timestamp", "_topic", "_value",
                 "seq")

    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None,
                 value: bytes | None, timestamp: int, headers: Headers | None, seq: int) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value, self._timestamp, self._headers = key, value, timestamp, headers
        self.seq = seq  # global append order, so reads can return records as they were written

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> Headers | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp)  # TIMESTAMP_CREATE_TIME

    def error(self) -> None:
        return None

    def __repr__(self) -> str:
        return (f"Message({self._topic}[{self._partition}]@{self._offset}, key={self._key!r}, "
                f"value={self._value!r}, timestamp={self._timestamp})")


@dataclass
class Cluster:
    """Topic logs plus the transaction in progress (one producer, like one instance)."""

    default_partitions: int = 1
    partitions: dict[str, int] = field(default_factory=dict)
    logs: dict[str, list[list[Message]]] = field(default_factory=dict)
    # (topic, partition, key, value, timestamp, headers) produced since the last commit
    pending: list[tuple[str, int, bytes | None, bytes | None, int,
                        Headers | None]] = field(default_factory=list)
    _seq: int = 0
    _round_robin: int = 0

    def ensure(self, topic: str, partitions: int | None = None) -> list[list[Message]]:
        log = self.logs.get(topic)
        if log is None:
            n = partitions or self.partitions.get(topic, self.default_partitions)
            self.partitions[topic] = n
            log = self.logs[topic] = [[] for _ in range(n)]
        return log

    def partition_for(self, topic: str, key: bytes | None) -> int:
        """librdkafka's default partitioner: CRC32 of the key; null keys spread round-robin."""
        n = len(self.ensure(topic))
        if key is None:
            self._round_robin += 1
            return self._round_robin % n
        return zlib.crc32(key) % n

    def append(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
               timestamp: int, headers: Headers | None) -> Message:
        log = self.ensure(topic)
        if not 0 <= partition < len(log):
            raise ValueError(f"{topic} has {len(log)} partition(s), no partition {partition}")
        self._seq += 1
        msg = Message(topic, partition, len(log[partition]), key, value, timestamp,
                      list(headers) if headers else None, self._seq)
        log[partition].append(msg)
        return msg

    # -- the producer, inside a transaction -------------------------------------------------
    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                partition: int = -1, *, timestamp: int = 0, headers: Headers | None = None,
                on_delivery: Any = None) -> None:
        if partition < 0:
            partition = self.partition_for(topic, key)
        self.pending.append((topic, partition, key, value, timestamp, headers))

    def commit(self) -> dict[tuple[str, int], int]:
        """Make the transaction's records visible; returns, per partition written, the offset
        after its last record."""
        ends: dict[tuple[str, int], int] = {}
        for topic, partition, key, value, ts, headers in self.pending:
            msg = self.append(topic, partition, key, value, ts, headers)
            ends[(topic, partition)] = msg.offset() + 1
        self.pending.clear()
        return ends

    def abort(self) -> None:
        self.pending.clear()


class MemoryAdmin:
    """The slice of TopicAdmin that plan.resolve uses: every topic the test mentions exists."""

    def __init__(self, cluster: Cluster, user_topics: list[str]) -> None:
        self.cluster = cluster
        for t in user_topics:
            cluster.ensure(t)

    def partitions(self, topics: list[str]) -> dict[str, int | None]:
        return {t: len(self.cluster.logs[t]) if t in self.cluster.logs else None for t in topics}

    def create(self, specs: list[TopicSpec]) -> None:
        for s in specs:
            self.cluster.ensure(s.name, s.partitions)
