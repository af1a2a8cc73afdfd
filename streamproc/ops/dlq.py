"""``streamproc dlq inspect|replay``: read an application's dead-letter topic, and send its
records back to where they came from once the cause is fixed.

Replay is exactly-once per dead letter: the records are produced in a transaction together with
the offsets of the consumer group ``{app}-dlq-replay``, so running it twice (or after a crash)
never sends a dead letter twice, and a later run picks up only what was dead-lettered since.
A filtered replay (``--error-type``) also moves past the records it leaves alone: they stay
readable with ``inspect`` and can be replayed by position with ``--from-beginning``.
"""

from __future__ import annotations

import base64
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc.errors import ConfigError
from streamproc.kafka import io
from streamproc.runtime.deadletter import DEAD_LETTER_HEADERS

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class DeadLetterRecord:
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]  # the original record's, then the dead letter's

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return None if v is None else v.decode(errors="replace")
        return None

    @property
    def error_type(self) -> str:
        return self.header("streamproc.error.type") or ""

    @property
    def source(self) -> tuple[str, int, int]:
        """(topic, partition, offset) of the record that failed."""
        return (self.header("streamproc.topic") or "",
                int(self.header("streamproc.partition") or -1),
                int(self.header("streamproc.offset") or -1))

    def original_headers(self) -> list[tuple[str, bytes | None]]:
        return [(k, v) for k, v in self.headers if k not in DEAD_LETTER_HEADERS]

    def original_timestamp(self) -> int:
        ts = self.header("streamproc.timestamp")
        return int(ts) if ts and int(ts) > 0 else self.timestamp


def dead_letter_topic(app_id: str) -> str:
    return f"{app_id}-dlq"


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                     "isolation.level": "read_committed", "enable.auto.commit": False,
                     "enable.partition.eof": True, "auto.offset.reset": "earliest"})


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    meta = consumer.list_topics(topic, timeout=30).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise ConfigError("--app", f"no dead-letter topic {topic!r} (nothing was dead-lettered "
                          "yet, or the application id is wrong)")
    return sorted(meta.partitions)


def read(consumer: Consumer, topic: str, starts: dict[int, int],
         timeout_s: float = 60.0) -> Iterator[DeadLetterRecord]:
    """The records from ``starts`` (partition -> offset) to each partition's end, as of now."""
    consumer.assign([KafkaTopicPartition(topic, p, o) for p, o in starts.items()])
    for m in io.drain(consumer, starts, topic, timeout_s=timeout_s, batch=1000):
        yield DeadLetterRecord(m.partition() or 0, m.offset() or 0, m.timestamp()[1],
                               m.key(), m.value(), io.header_list(m))


def _matches(r: DeadLetterRecord, error_types: list[str] | None, topic: str | None) -> bool:
    return ((not error_types or r.error_type in error_types)
            and (topic is None or r.source[0] == topic))


# -- inspect --------------------------------------------------------------------------------


def inspect(bootstrap: str, app_id: str, *, error_types: list[str] | None = None,
            topic: str | None = None, limit: int | None = None, as_json: bool = False,
            out: TextIO = sys.stdout) -> int:
    """Print the dead letters (oldest first per partition); returns how many were printed."""
    dlq = dead_letter_topic(app_id)
    c = _consumer(bootstrap, f"{app_id}-dlq-inspect-{uuid.uuid4().hex[:8]}")
    n = 0
    try:
        starts = dict.fromkeys(_partitions(c, dlq), OFFSET_BEGINNING)
        for r in read(c, dlq, starts):
            if not _matches(r, error_types, topic):
                continue
            out.write((_json_line(r) if as_json else _text(r)) + "\n")
            n += 1
            if limit is not None and n >= limit:
                break
    finally:
        c.close()
    if not as_json:
        out.write(f"{n} dead letter(s) in {dlq}\n")
    return n


def _bytes(b: bytes | None) -> Any:
    if b is None:
        return None
    try:
        return b.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(b).decode()}


def _preview(b: bytes | None) -> str:
    if b is None:
        return "null"
    shown = repr(b[:80]) + ("..." if len(b) > 80 else "")
    return f"{len(b)} bytes {shown}"


def _json_line(r: DeadLetterRecord) -> str:
    return orjson.dumps({
        "partition": r.partition, "offset": r.offset, "timestamp": r.timestamp,
        "key": _bytes(r.key), "value": _bytes(r.value),
        "headers": [[k, _bytes(v)] for k, v in r.headers]}).decode()


def _text(r: DeadLetterRecord) -> str:
    topic, part, off = r.source
    lines = [f"[{r.partition}@{r.offset}] {r.error_type} in {r.header('streamproc.operator')} "
             f"on {topic}[{part}]@{off}"]
    lines.append(f"    error: {r.header('streamproc.error.message')}")
    codec, sid = r.header("streamproc.codec"), r.header("streamproc.schema.id")
    if codec:
        lines.append(f"    codec: {codec}" + (f", schema id {sid}" if sid else ""))
    lines.append(f"    timestamp: {r.original_timestamp()}")
    lines.append(f"    key: {_preview(r.key)}")
    lines.append(f"    value: {_preview(r.value)}")
    for k, v in r.original_headers():
        lines.append(f"    header {k}: {_preview(v)}")
    return "\n".join(lines)


# -- replay ---------------------------------------------------------------------------------


@dataclass
class ReplaySummary:
    replayed: int = 0
    skipped: int = 0  # dead letters passed over by the filters
    by_topic: dict[str, int] = field(default_factory=dict)


def replay(bootstrap: str, app_id: str, *, error_types: list[str] | None = None,
           topic: str | None = None, dry_run: bool = False, from_beginning: bool = False,
           out: TextIO = sys.stdout) -> ReplaySummary:
    """Send the dead letters that the group ``{app}-dlq-replay`` has not passed yet (all of them
    with ``from_beginning``) back to their source topic and partition, with their original key,
    value, timestamp and headers, in one transaction with the group's new offsets."""
    dlq = dead_letter_topic(app_id)
    group = f"{app_id}-dlq-replay"
    c = _consumer(bootstrap, group)
    summary = ReplaySummary()
    try:
        parts = _partitions(c, dlq)
        if from_beginning:
            starts = dict.fromkeys(parts, OFFSET_BEGINNING)
        else:
            committed = c.committed([KafkaTopicPartition(dlq, p) for p in parts], timeout=30)
            starts = {tp.partition: tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                      for tp in committed}
        records = list(read(c, dlq, starts))
        # Where the group stands after this run: past everything read, per partition.
        ends = {p: c.position([KafkaTopicPartition(dlq, p)])[0].offset for p in parts}
        chosen = [r for r in records if _matches(r, error_types, topic)]
        summary.skipped = len(records) - len(chosen)
        counts = summary.by_topic
        for r in chosen:
            counts[r.source[0]] = counts.get(r.source[0], 0) + 1
        if dry_run:
            for r in chosen:
                t, p, o = r.source
                out.write(f"would replay [{r.partition}@{r.offset}] {r.error_type} -> "
                          f"{t}[{p}] (was offset {o})\n")
            out.write(f"dry run: {len(chosen)} to replay, {summary.skipped} filtered out; "
                      "nothing written\n")
            return summary
        _send(bootstrap, app_id, c, dlq, chosen, ends)
        summary.replayed = len(chosen)
    finally:
        c.close()
    for t, n in sorted(counts.items()):
        out.write(f"replayed {n} record(s) to {t}\n")
    out.write(f"{summary.replayed} replayed, {summary.skipped} filtered out\n")
    log.info("dlq.replayed", app=app_id, replayed=summary.replayed, skipped=summary.skipped)
    return summary


def _send(bootstrap: str, app_id: str, consumer: Consumer, dlq: str,
          records: list[DeadLetterRecord], ends: dict[int, int]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap,
                         "transactional.id": f"{app_id}-dlq-replay",
                         "enable.idempotence": True, "linger.ms": 5})
    producer.init_transactions(30)
    producer.begin_transaction()
    try:
        partition_counts: dict[str, int] = {}
        for r in records:
            topic, part, _ = r.source
            if topic not in partition_counts:
                meta = producer.list_topics(topic, timeout=30).topics.get(topic)
                partition_counts[topic] = len(meta.partitions) if meta and meta.partitions else 0
                if partition_counts[topic] == 0:
                    raise ConfigError("dlq replay", f"source topic {topic!r} of dead letter "
                                      f"{r.partition}@{r.offset} does not exist")
            kwargs: dict[str, Any] = {"timestamp": r.original_timestamp(),
                                      "headers": r.original_headers()}
            if 0 <= part < partition_counts[topic]:
                kwargs["partition"] = part  # where it was: keeps it with its key's records
            while True:
                try:
                    producer.produce(topic, r.value, r.key, **kwargs)
                    break
                except BufferError:
                    producer.poll(0.1)
        producer.send_offsets_to_transaction(
            [KafkaTopicPartition(dlq, p, o) for p, o in ends.items() if o >= 0],
            consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(60)
    except BaseException:
        producer.abort_transaction(30)
        raise
