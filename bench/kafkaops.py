"""What the harness asks of Kafka: topics, input, completion detection and output reading.

Completion is judged from outside the contender, the same way for all: the group has committed
every input record, and every repartition topic of the group has nothing readable
(read_committed) past the group's committed offsets.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamproc.kafka import io
from streamproc.kafka.io import pending_records


class Kafka:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self._progress: dict[str, Consumer] = {}
        self._parts: dict[str, list[int]] = {}

    # -- topics ------------------------------------------------------------------------------
    def create(self, topic: str, partitions: int = 4,
               config: dict[str, str] | None = None) -> None:
        fs = self.admin.create_topics([NewTopic(topic, partitions, 1, config=config or {})])
        for f in fs.values():
            f.result(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # metadata propagation
            md = self.admin.list_topics(topic, timeout=10).topics.get(topic)
            if md is not None and md.error is None and len(md.partitions) == partitions:
                return
            time.sleep(0.1)
        raise TimeoutError(f"topic {topic} not ready")

    def topics_containing(self, fragment: str) -> list[str]:
        return sorted(t for t in self.admin.list_topics(timeout=10).topics if fragment in t)

    def delete(self, topics: Iterable[str]) -> None:
        names = list(topics)
        if not names:
            return
        for f in self.admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # best effort clean-up between runs
                f.result(60)

    # -- input -------------------------------------------------------------------------------
    def produce(self, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> int:
        return io.produce(self.bootstrap, topic, records)

    def produce_timed(self, topic: str,
                      records: Iterable[tuple[bytes, bytes, int, int | None]]) -> int:
        """Produce (key, value, timestamp, partition or None) with each record's own CreateTime
        (W3's event time); returns the number of records delivered."""
        return io.produce_timed(self.bootstrap, topic, records)

    def produce_to_partitions(self, topic: str, partitions: int,
                              records: list[tuple[bytes, bytes]]) -> None:
        """The same records into every partition (explicitly, whatever their key hashes to)."""
        for part in range(partitions):
            io.produce(self.bootstrap, topic, records, partition=part)

    # -- progress ----------------------------------------------------------------------------
    def _offsets(self, group: str, topic: str) -> tuple[list[int], list[int]]:
        # One long-lived, never-subscribed consumer per group: creating one per poll would
        # cost the contender CPU on a 2-core machine.
        c = self._progress.get(group)
        if c is None:
            # read_uncommitted: librdkafka then does not ask for *stable* offsets. With the
            # default (read_committed) the broker holds the answer while a transaction with
            # offsets is open, which after a contender's kill -9 lasts until its transaction
            # times out: committed() timed out (W6, Quix's 60 s). The offsets returned are the
            # committed ones either way; a pending transaction's are not among them.
            c = self._progress[group] = Consumer({
                "bootstrap.servers": self.bootstrap, "group.id": group,
                "enable.auto.commit": False, "isolation.level": "read_uncommitted"})
        parts = self._parts.get(topic)
        if parts is None:
            parts = self._parts[topic] = sorted(
                c.list_topics(topic, timeout=10).topics[topic].partitions)
        committed = c.committed([TopicPartition(topic, p) for p in parts], 10)
        ends = [c.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in parts]
        return [max(tp.offset, 0) for tp in committed], ends

    def forget(self, group: str) -> None:
        c = self._progress.pop(group, None)
        if c is not None:
            c.close()

    def committed_total(self, group: str, topic: str) -> int:
        return sum(self._offsets(group, topic)[0])

    def done(self, group: str, input_topic: str, internal_fragment: str) -> bool:
        """All input committed and nothing pending in the group's repartition topics."""
        committed, ends = self._offsets(group, input_topic)
        if committed != ends:  # the input is not transactional: offsets are exact
            return False
        for topic in self.topics_containing(internal_fragment):
            # Repartition topics only: streamproc's {app}-{name}-repartition, Quix's
            # repartition__*. Changelogs (Quix's may contain "repartition" in its name) are
            # never committed by the group, only read on recovery.
            if "repartition" not in topic or "changelog" in topic:
                continue
            self._parts.pop(topic, None)  # created by the contender: partitions may be new
            committed, ends = self._offsets(group, topic)
            # Under exactly-once a partition ends in transaction markers, so a small gap is
            # normal; read what is past the committed offsets to be exact.
            if sum(ends) - sum(committed) > 1000 * len(ends):
                return False
            if pending_records(self.bootstrap, group, topic) > 0:
                return False
        return True

    # -- output ------------------------------------------------------------------------------
    def read(self, topic: str) -> list[tuple[bytes | None, bytes | None]]:
        """Every committed record of ``topic`` (per partition in offset order)."""
        return [(r.key, r.value) for r in io.read_all(self.bootstrap, topic, timeout_s=120)]

    def discard(self, group: str) -> None:
        """Forget a finished run's group and delete every topic named after it."""
        self.forget(group)
        self.delete(self.topics_containing(group))
