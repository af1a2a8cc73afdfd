"""``streamproc dlq inspect|replay``: read an application's dead-letter topic, and send its
records back to where they came from once the cause is fixed.

Replay is exactly-once per dead letter: it streams the topic in chunks of at most
``chunk_size`` dead letters, and each chunk's records are produced in one transaction together
with the offsets of the consumer group ``{app}-dlq-replay`` that move past the chunk. So memory
stays bounded by one chunk whatever the size of the topic, a crash (or a failure) loses at most
the open chunk, whose transaction is aborted, and running it again (or after a crash) never
sends a dead letter twice: it resumes after the last committed chunk, and a later run picks up
only what was dead-lettered since. A filtered replay (``--error-type``) also moves past the
records it leaves alone: they stay readable with ``inspect`` and can be replayed by position
with ``--from-beginning``.

Reading and replaying are long operations: they log progress every few seconds and fail only
when no progress was made for ``stall_s`` seconds (an open transaction keeps read_committed
readers before it; a broker that went away), never on a fixed deadline.
"""

from __future__ import annotations

import base64
import logging
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc.errors import ConfigError, StreamprocError
from streamproc.graph.naming import dead_letter_topic, instances_topic
from streamproc.kafka import io
from streamproc.kafka.clients import new_consumer, new_producer
from streamproc.kafka.io import Bootstrap, client_base, servers_of
from streamproc.names import describe_problem, name_problem, shown, topic_problem
from streamproc.progress import Progress, Stalled
from streamproc.runtime import faults
from streamproc.runtime.deadletter import DEAD_LETTER_HEADERS

log = structlog.get_logger(__name__)

DEFAULT_CHUNK_SIZE = 1000
MAX_CHUNK_SIZE = 100_000  # stays below the producer's default queue of 100,000 messages
DEFAULT_STALL_S = 60.0
PROGRESS_EVERY_S = 5.0
_CONSUME_BATCH = 1000
# The clients of the commands (dlq, reset) log librdkafka's own lines (connection retries and
# the like) here rather than as structured lines next to the command's one-line error: the CLI
# shows them only at debug level (cli._quiet_clients).
COMMAND_CLIENT_LOG = logging.getLogger("streamproc.command.kafka_client")
# What a dead letter whose headers cannot be read (a name that is not UTF-8) carries instead.
UNREADABLE_HEADERS = ("streamproc.headers", b"unreadable (a header name is not UTF-8)")


@dataclass(frozen=True)
class DeadLetterRecord:
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]  # the original record's, then the dead letter's

    def header(self, name: str) -> str | None:
        # The last one: the dead letter's own headers come after the original record's, so an
        # input record carrying a forged "streamproc.topic" cannot choose where it is replayed.
        for k, v in reversed(self.headers):
            if k == name:
                return None if v is None else v.decode(errors="replace")
        return None

    @property
    def error_type(self) -> str:
        return self.header("streamproc.error.type") or ""

    @property
    def source(self) -> tuple[str, int, int]:
        """(topic, partition, offset) of the record that failed (-1 where a header is not a
        number: the topic is anybody's to write)."""
        return (self.header("streamproc.topic") or "",
                _int(self.header("streamproc.partition")),
                _int(self.header("streamproc.offset")))

    def original_headers(self) -> list[tuple[str, bytes | None]]:
        return [(k, v) for k, v in self.headers if k not in DEAD_LETTER_HEADERS]

    def original_timestamp(self) -> int:
        ts = _int(self.header("streamproc.timestamp"))
        return ts if ts > 0 else self.timestamp

    @property
    def size(self) -> int:
        return len(self.key or b"") + len(self.value or b"")


def _int(text: str | None) -> int:
    try:
        return int(text) if text is not None else -1
    except ValueError:
        return -1


def check_app_id(app_id: str) -> None:
    problem = name_problem(app_id)
    if problem is not None:
        raise ConfigError("--app", describe_problem("application id", app_id, problem))


def _consumer(bootstrap: Bootstrap, group: str) -> Consumer:
    return new_consumer({**client_base(bootstrap), "group.id": group,
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "enable.partition.eof": True, "auto.offset.reset": "earliest",
                         "logger": COMMAND_CLIENT_LOG})


def _kafka(what: str, bootstrap: Bootstrap, exc: KafkaException) -> StreamprocError:
    return StreamprocError(f"{what}: {exc.args[0]} (is Kafka reachable at {servers_of(bootstrap)}? "
                           "check STREAMPROC_BROKERS)")


def _partitions(consumer: Consumer, topic: str, bootstrap: Bootstrap,
                timeout_s: float) -> list[int]:
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    except KafkaException as exc:
        raise _kafka(f"cannot read the metadata of {topic!r}", bootstrap, exc) from None
    if meta is None or meta.error is not None or not meta.partitions:
        raise ConfigError("--app", f"no dead-letter topic {topic!r} (nothing was dead-lettered "
                          "yet, or the application id is wrong)")
    return sorted(meta.partitions)


class Reader:
    """The dead letters from ``starts`` (partition -> offset) to each partition's end, as of
    when it is reached, in batches of at most the size asked for.

    ``next_offsets`` is where each partition stands: past the last dead letter read, or at the
    end (past any transaction marker) once the end was reached. Progress (and the stall
    deadline) count the records read."""

    def __init__(self, consumer: Consumer, topic: str, starts: dict[int, int],
                 progress: Progress, timeout_s: float) -> None:
        self._consumer = consumer
        self.topic = topic
        self._progress = progress
        self.pending = set(starts)
        self.next_offsets: dict[int, int] = {p: o for p, o in starts.items() if o >= 0}
        self._last_error: str | None = None
        # Where each partition ends now: for "remaining" (an upper bound: markers count too).
        self._ends: dict[int, int] = {}
        for p in starts:
            try:
                low, high = consumer.get_watermark_offsets(KafkaTopicPartition(topic, p),
                                                           timeout=timeout_s)
            except KafkaException:
                continue  # only the estimate suffers
            self._ends[p] = high
            self.next_offsets.setdefault(p, low)
        consumer.assign([KafkaTopicPartition(topic, p, o) for p, o in starts.items()])

    @property
    def done(self) -> bool:
        return not self.pending

    def read(self, limit: int) -> list[DeadLetterRecord]:
        """Up to ``limit`` dead letters (none while waiting for more or at the end); raises
        :class:`Stalled` when nothing arrived for the stall timeout."""
        out: list[DeadLetterRecord] = []
        nbytes = 0
        for m in self._consumer.consume(max(1, min(limit, _CONSUME_BATCH)), 0.5):
            err = m.error()
            part = m.partition() or 0
            if err is None:
                try:
                    headers = io.header_list(m)
                except Exception:  # the topic is anybody's to write: never a crash
                    # Without its headers it names no source: inspect shows it, replay refuses
                    # it (a filter moves past it).
                    headers = [UNREADABLE_HEADERS]
                r = DeadLetterRecord(part, m.offset() or 0, m.timestamp()[1], m.key(),
                                     m.value(), headers)
                out.append(r)
                nbytes += r.size
                self.next_offsets[part] = r.offset + 1
            elif err.code() == KafkaError._PARTITION_EOF:
                self.pending.discard(part)
                self.next_offsets[part] = max(self.next_offsets.get(part, 0), m.offset() or 0)
            else:
                self._last_error = str(err)  # transient ones are retried by the client
        remaining = sum(max(end - self.next_offsets.get(p, end), 0)
                        for p, end in self._ends.items() if p in self.pending)
        self._progress.set_total(self._progress.records + len(out) + remaining
                                 if self._ends else None)
        try:
            self._progress.advance(len(out), nbytes)
        except Stalled as exc:
            waiting = sorted(self.pending)
            last = f"; last error from Kafka: {self._last_error}" if self._last_error else ""
            raise Stalled(f"{exc}: {self.topic} partitions {waiting} did not reach their end "
                          f"(an open transaction keeps read_committed readers before it?){last}"
                          ) from None
        return out


def _matches(r: DeadLetterRecord, error_types: list[str] | None, topic: str | None) -> bool:
    return ((not error_types or r.error_type in error_types)
            and (topic is None or r.source[0] == topic))


# -- inspect --------------------------------------------------------------------------------


def inspect(bootstrap: Bootstrap, app_id: str, *, error_types: list[str] | None = None,
            topic: str | None = None, limit: int | None = None, as_json: bool = False,
            out: TextIO = sys.stdout, stall_s: float = DEFAULT_STALL_S) -> int:
    """Print the dead letters (oldest first per partition); returns how many were printed."""
    check_app_id(app_id)
    dlq = dead_letter_topic(app_id)
    c = _consumer(bootstrap, f"{app_id}-dlq-inspect-{uuid.uuid4().hex[:8]}")
    n = 0
    try:
        starts = dict.fromkeys(_partitions(c, dlq, bootstrap, stall_s), OFFSET_BEGINNING)
        reader = Reader(c, dlq, starts, Progress("dlq.inspect", stall_s=stall_s, app=app_id),
                        stall_s)
        while not reader.done and (limit is None or n < limit):
            for r in reader.read(_CONSUME_BATCH):
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
    transactions: int = 0  # chunks committed


def replay(bootstrap: Bootstrap, app_id: str, *, error_types: list[str] | None = None,
           topic: str | None = None, dry_run: bool = False, from_beginning: bool = False,
           out: TextIO = sys.stdout, chunk_size: int = DEFAULT_CHUNK_SIZE,
           stall_s: float = DEFAULT_STALL_S, every_s: float = PROGRESS_EVERY_S,
           clock: Callable[[], float] = time.monotonic) -> ReplaySummary:
    """Send the dead letters that the group ``{app}-dlq-replay`` has not passed yet (all of them
    with ``from_beginning``) back to their source topic and partition, with their original key,
    value, timestamp and headers: a transaction per chunk of at most ``chunk_size`` dead
    letters, with the group's offsets past the chunk."""
    check_app_id(app_id)
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ConfigError("--chunk-size", f"must be 1..{MAX_CHUNK_SIZE}, got {chunk_size}")
    if not stall_s > 0:  # also refuses nan, which would never stall
        raise ConfigError("--stall-timeout", f"must be more than 0 seconds, not {stall_s}")
    dlq = dead_letter_topic(app_id)
    group = f"{app_id}-dlq-replay"
    c = _consumer(bootstrap, group)
    summary = ReplaySummary()
    sender: _Sender | None = None
    progress = Progress("dlq.replay", every_s=every_s, stall_s=stall_s, clock=clock, logger=log,
                        app=app_id)
    try:
        parts = _partitions(c, dlq, bootstrap, stall_s)
        if not dry_run:
            # Fence an earlier replay (a crashed or still running one) before reading where the
            # group stands: a chunk it commits later would otherwise be replayed twice.
            sender = _Sender(bootstrap, app_id, c, dlq, stall_s)
        if from_beginning:
            starts = dict.fromkeys(parts, OFFSET_BEGINNING)
        else:
            try:
                committed = c.committed([KafkaTopicPartition(dlq, p) for p in parts],
                                        timeout=stall_s)
            except KafkaException as exc:
                raise _kafka(f"cannot read the offsets of group {group!r}", bootstrap,
                             exc) from None
            starts = {tp.partition: tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                      for tp in committed}
        reader = Reader(c, dlq, starts, progress, stall_s)
        stands = dict(reader.next_offsets)  # where the group's committed offsets are
        while True:
            chunk: list[DeadLetterRecord] = []
            read = 0
            while read < chunk_size and not reader.done:
                got = reader.read(chunk_size - read)
                read += len(got)
                chosen = [r for r in got if _matches(r, error_types, topic)]
                summary.skipped += len(got) - len(chosen)
                if dry_run:
                    _print_dry(out, chosen)
                    summary.replayed += len(chosen)
                    _count(summary, chosen)
                else:
                    chunk += chosen
            if not read:
                break  # the end: no chunk without a dead letter in it
            if sender is not None:
                moved = {p: o for p, o in reader.next_offsets.items() if stands.get(p) != o}
                sender.commit(chunk, moved)
                stands.update(moved)
                summary.replayed += len(chunk)
                summary.transactions += 1
                _count(summary, chunk)
                log.info("dlq.replay.committed", app=app_id, chunk=summary.transactions,
                         read=read, replayed=len(chunk),
                         offsets={str(p): o for p, o in sorted(moved.items())})
            if reader.done:
                break
    finally:
        if sender is not None:
            sender.close()
        c.close()
    progress.done(replayed=summary.replayed, skipped=summary.skipped,
                  transactions=summary.transactions, dry_run=dry_run)
    if dry_run:
        out.write(f"dry run: {summary.replayed} to replay, {summary.skipped} filtered out; "
                  "nothing written\n")
        summary.replayed = 0
        return summary
    for t, n in sorted(summary.by_topic.items()):
        out.write(f"replayed {n} record(s) to {t}\n")
    out.write(f"{summary.replayed} replayed, {summary.skipped} filtered out\n")
    return summary


def _count(summary: ReplaySummary, records: list[DeadLetterRecord]) -> None:
    for r in records:
        summary.by_topic[r.source[0]] = summary.by_topic.get(r.source[0], 0) + 1


def _print_dry(out: TextIO, chosen: list[DeadLetterRecord]) -> None:
    for r in chosen:
        t, p, o = r.source
        out.write(f"would replay [{r.partition}@{r.offset}] {r.error_type} -> "
                  f"{t}[{p}] (was offset {o})\n")


class _Sender:
    """The transactional producer of a replay: one transaction per chunk."""

    def __init__(self, bootstrap: Bootstrap, app_id: str, consumer: Consumer, dlq: str,
                 timeout_s: float) -> None:
        self._app_id = app_id
        self._bootstrap = bootstrap
        self._consumer = consumer
        self._dlq = dlq
        self._timeout_s = timeout_s
        self._partition_counts: dict[str, int] = {}
        self._producer = new_producer({**client_base(bootstrap),
                                       "transactional.id": f"{app_id}-dlq-replay",
                                       "enable.idempotence": True, "linger.ms": 5,
                                       "logger": COMMAND_CLIENT_LOG})
        try:
            self._producer.init_transactions(timeout_s)
        except KafkaException as exc:
            raise _kafka("cannot start the replay's transactions", bootstrap, exc) from None

    def _target(self, r: DeadLetterRecord) -> tuple[str, int | None]:
        """Where ``r`` goes back to (topic, partition or None for the key's), or ConfigError
        naming the dead letter when it must not be replayed."""
        topic, part, _ = r.source
        where = f"dead letter {r.partition}@{r.offset} of {self._dlq}"
        problem = topic_problem(topic)
        if problem is not None:
            raise ConfigError("dlq replay", f"{where} has no valid source topic (header "
                              f"streamproc.topic {shown(topic)}: {problem}); leave it out "
                              "with --topic or --error-type")
        if topic in (self._dlq, instances_topic(self._app_id)) or (
                topic.startswith(f"{self._app_id}-") and topic.endswith("-changelog")):
            # A forged header must not make a replay write into state or loop forever.
            raise ConfigError("dlq replay", f"{where} names {topic!r} as its source: an "
                              "internal topic of the application is never replayed into")
        truncated = r.header("streamproc.truncated")
        if truncated is not None:
            raise ConfigError("dlq replay", f"{where} was cut to fit the dead-letter topic "
                              f"({truncated} cut), so it is not the original record: recover "
                              f"it from {topic}[{part}]@{r.source[2]} while that still holds "
                              "it, and leave it out with --topic or --error-type")
        if topic not in self._partition_counts:
            try:
                meta = self._producer.list_topics(topic, timeout=self._timeout_s).topics.get(
                    topic)
            except KafkaException as exc:
                raise _kafka(f"cannot read the metadata of {topic!r}", self._bootstrap,
                             exc) from None
            count = len(meta.partitions) if meta and meta.error is None and meta.partitions \
                else 0
            if count == 0:
                raise ConfigError("dlq replay", f"source topic {topic!r} of {where} does not "
                                  "exist")
            self._partition_counts[topic] = count
        # Where it was: keeps it with its key's records.
        return topic, part if 0 <= part < self._partition_counts[topic] else None

    def commit(self, chunk: list[DeadLetterRecord], offsets: dict[int, int]) -> None:
        """``chunk`` to where each came from, and the group past it, in one transaction."""
        # Every target is checked before the transaction opens: a refused dead letter then
        # leaves nothing to abort.
        targets = [self._target(r) for r in chunk]
        p = self._producer
        p.begin_transaction()
        try:
            for r, (topic, part) in zip(chunk, targets, strict=True):
                kwargs: dict[str, Any] = {"timestamp": r.original_timestamp(),
                                          "headers": r.original_headers()}
                if part is not None:
                    kwargs["partition"] = part
                self._produce(topic, r, kwargs)
            p.send_offsets_to_transaction(
                [KafkaTopicPartition(self._dlq, part, o) for part, o in sorted(offsets.items())],
                self._consumer.consumer_group_metadata(), self._timeout_s)
            faults.hit("before_commit")
            p.commit_transaction(self._timeout_s)
            faults.hit("after_commit")
        except BaseException as exc:
            try:
                p.abort_transaction(self._timeout_s)
            except KafkaException as abort_exc:  # the next run's init_transactions aborts it
                log.warning("dlq.replay.abort_failed", error=str(abort_exc))
            if isinstance(exc, KafkaException):
                raise _kafka("the replay's transaction failed (nothing of this chunk was "
                             "written)", self._bootstrap, exc) from None
            raise

    def _produce(self, topic: str, r: DeadLetterRecord, kwargs: dict[str, Any]) -> None:
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                self._producer.produce(topic, r.value, r.key, **kwargs)
                return
            except BufferError:  # the local queue is full: wait for deliveries
                if time.monotonic() > deadline:
                    raise Stalled(f"dlq.replay: the producer's queue did not drain for "
                                  f"{self._timeout_s:g} s") from None
                self._producer.poll(0.1)

    def close(self) -> None:
        self._producer.flush(0)
