"""What a record may be: its size, its timestamp and its headers, checked where it is bad input.

Anything a producer wrote can reach an operator, so each limit the broker or the client would
enforce later (and fail the whole transaction for, which replays the same record forever) is
checked here first, per record, where the record can still be blamed and dead-lettered:

- **size**: key + value + headers + framing against ``max_record_bytes`` (which the instance
  sets at start to at most the smallest ``max.message.bytes`` of the topics it writes);
- **timestamps**: an event time outside ``[min_timestamp_ms, now + max_future_skew_ms]`` would
  move stream time for good (year 3000 closes every window) or not even fit in Kafka's int64;
- **reserved headers**: ``streamproc.*`` headers on a user record must never reach an internal
  topic, where ``streamproc.control`` would make a record a watermark.

A state value over the size limit is only found at the checkpoint, when the store encodes it
for the changelog. :class:`StateGuard` remembers its key; the checkpoint is abandoned, the
input replayed, and on the replay every update of a guarded key is encoded and checked as it
happens, so the one record that makes the value too large is dead-lettered and the state stays
as it was before that record.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import structlog

from streamproc.errors import StreamprocError
from streamproc.types import Headers, TaskId

# Framing of one record in its own batch (batch header 61 bytes, record varints) with room to
# spare, and the varints of one header: what the estimate adds to the payload bytes, so that a
# record under max_record_bytes is always under the broker's and the client's limits too.
RECORD_OVERHEAD = 128
HEADER_OVERHEAD = 10
# The broker's default message.max.bytes is 1048588; librdkafka's own default is 1000000.
DEFAULT_MAX_RECORD_BYTES = 1_000_000
RESERVED_PREFIX = "streamproc."
INT64_MAX = 2**63 - 1

log = structlog.get_logger(__name__)


class RecordTooLarge(StreamprocError):
    """An output record, dead letter or state value is larger than the instance may write; bad
    input for the record that caused it, not a crash."""


class TimestampOutOfRange(StreamprocError):
    """A record's event time is not an instant the engine accepts (before ``min_timestamp_ms``,
    too far ahead of the wall clock, not a finite integer)."""


class HeaderError(StreamprocError):
    """A record's headers cannot be read (e.g. a header name that is not UTF-8)."""


# Reads a consumed message's headers so that a failure is an exception here and nowhere else.
# confluent-kafka (2.16) builds the header list with a NULL name when a name is not UTF-8 and
# returns it *with the error set*: called as ``m.headers()`` from a specialized call site the
# error surfaces later in unrelated code, and the message keeps the broken list, so a second
# call crashes the process. Through methodcaller the result is checked and raises at once; a
# message whose headers failed is then only ever handled through :class:`Unreadable`.
read_headers = operator.methodcaller("headers")


class Unreadable:
    """A consumed message whose headers cannot be read: everything but the headers."""

    __slots__ = ("_m",)

    def __init__(self, m: Any) -> None:
        self._m = m

    def topic(self) -> str | None:
        t: str | None = self._m.topic()
        return t

    def partition(self) -> int | None:
        p: int | None = self._m.partition()
        return p

    def offset(self) -> int | None:
        o: int | None = self._m.offset()
        return o

    def key(self) -> bytes | None:
        k: bytes | None = self._m.key()
        return k

    def value(self) -> bytes | None:
        v: bytes | None = self._m.value()
        return v

    def timestamp(self) -> tuple[int, int]:
        t: tuple[int, int] = self._m.timestamp()
        return t

    def headers(self) -> Headers | None:
        raise HeaderError("the record's headers cannot be read")


class UnexpectedPartition(StreamprocError):
    """A record on a partition the application's plan has no task for (partitions were added to
    a source topic while the application ran): its stateful task has no changelog partition."""


class StateTooLarge(StreamprocError):
    """Raised by a checkpoint: encoded state values that cannot be written to the changelog."""

    def __init__(self, entries: list[tuple[TaskId, str, bytes, int]], limit: int) -> None:
        self.entries = entries  # (task, store, store key, size)
        first = entries[0]
        super().__init__(f"{len(entries)} state value(s) over max_record_bytes={limit}, first: "
                         f"store {first[1]!r} task {first[0]} key {first[2][:60]!r} "
                         f"({first[3]} bytes)")


def headers_bytes(headers: Headers | None) -> int:
    """The bytes of the header names and values alone (no framing)."""
    n = 0
    for name, value in headers or ():
        n += len(name.encode("utf-8", "surrogateescape"))
        if value is not None:
            n += len(value.encode() if isinstance(value, str) else value)
    return n


def headers_size(headers: Headers | None) -> int:
    if not headers:
        return 0
    n = 0
    for name, value in headers:
        n += len(name.encode("utf-8", "surrogateescape")) + HEADER_OVERHEAD
        if value is not None:
            n += len(value.encode() if isinstance(value, str) else value)
    return n


def record_size(key: bytes | None, value: bytes | None, headers: Headers | None = None) -> int:
    """What a record occupies on the wire, estimated from above."""
    return (RECORD_OVERHEAD + (len(key) if key else 0) + (len(value) if value else 0)
            + headers_size(headers))


def strip_reserved(headers: Headers) -> Headers | None:
    """``headers`` without the reserved ``streamproc.*`` ones, or None when it has none (the
    caller keeps its list: no copy on the common path)."""
    for name, _ in headers:
        if name.startswith(RESERVED_PREFIX):
            return [(n, v) for n, v in headers if not n.startswith(RESERVED_PREFIX)]
    return None


class TimeBounds:
    """The accepted range of event timestamps: fixed lower bound, upper bound following the
    wall clock (set once per batch, so the per-record check is two comparisons)."""

    __slots__ = ("future_ms", "high", "low")

    def __init__(self, min_timestamp_ms: int = 0,
                 max_future_skew_ms: int | None = 86_400_000) -> None:
        self.low = min_timestamp_ms
        self.future_ms = max_future_skew_ms  # None: no upper bound (the test driver's default)
        self.high = INT64_MAX

    def at(self, now_ms: int) -> int:
        """Move the upper bound to ``now_ms`` + skew; returns it."""
        if self.future_ms is not None:
            self.high = min(now_ms + self.future_ms, INT64_MAX)
        return self.high

    def problem(self, t: Any) -> TimestampOutOfRange:
        """The error for a timestamp that failed the range check (or is not an integer)."""
        if isinstance(t, float) and not math.isfinite(t):
            return TimestampOutOfRange(f"event timestamp {t} is not a finite number")
        if isinstance(t, bool) or not isinstance(t, int | float):
            return TimestampOutOfRange(
                f"event timestamp {t!r} is a {type(t).__name__}, not epoch milliseconds")
        if t < self.low:
            return TimestampOutOfRange(f"event timestamp {t} is before min_timestamp_ms="
                                       f"{self.low}")
        return TimestampOutOfRange(
            f"event timestamp {t} is more than max_future_skew_ms={self.future_ms} ahead of "
            f"the wall clock (accepted up to {self.high})")


def to_timestamp(raw: Any, bounds: TimeBounds) -> int:
    """An extractor's result as epoch ms within ``bounds``, or TimestampOutOfRange. The slow
    path: the sources inline the common case (an int in range)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise bounds.problem(raw)
    # The range check comes first, on the value as given (-0.5 is before 1970, whatever
    # int() would make of it).
    if (isinstance(raw, float) and not math.isfinite(raw)) or \
            not bounds.low <= raw <= bounds.high:
        raise bounds.problem(raw)
    return int(raw)


# How much the broker's clock may be ahead of ours when it checks an output timestamp (the
# record is appended up to a linger and a commit later, and machines' clocks differ).
CLOCK_MARGIN_MS = 60_000


@dataclass(frozen=True)
class OutputTime:
    """The timestamps a CreateTime topic accepts, relative to the broker's clock: its
    ``message.timestamp.before.max.ms`` / ``after.max.ms`` (None: unbounded). A record outside
    them would fail its whole transaction at the broker, so sinks check it per record."""

    before_ms: int | None = None
    after_ms: int | None = None

    def window(self, now_ms: int) -> tuple[int, int]:
        """(lowest, highest) timestamp to send at wall-clock time ``now_ms``."""
        lo = -INT64_MAX if self.before_ms is None else now_ms + CLOCK_MARGIN_MS - self.before_ms
        hi = INT64_MAX if self.after_ms is None else now_ms - CLOCK_MARGIN_MS + self.after_ms
        return lo, hi


UNBOUNDED = OutputTime()


_NO_LIMIT_MS = 2**63 - 1
_BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


def write_limits(configs: dict[str, dict[str, str]], setting: int | None,
                 client_max: int) -> tuple[int, dict[str, OutputTime]]:
    """``max_record_bytes`` and the timestamps each written topic accepts, from the topics'
    effective configurations. ``setting``: the user's max_record_bytes (None: derived);
    ``client_max``: the producer's message.max.bytes. A setting above what a topic accepts
    is refused: every record it lets through would fail its transaction at the broker."""
    from streamproc.config import env_for, flag_for
    from streamproc.errors import ConfigError

    smallest, where = client_max, "the producer's message.max.bytes"
    times: dict[str, OutputTime] = {}
    for topic, conf in sorted(configs.items()):
        limit = int(conf.get("max.message.bytes", _BROKER_DEFAULT_MAX_MESSAGE_BYTES))
        if limit < smallest:
            smallest, where = limit, f"max.message.bytes of topic {topic}"
        if conf.get("message.timestamp.type", "CreateTime") == "CreateTime":
            before = int(conf.get("message.timestamp.before.max.ms", _NO_LIMIT_MS))
            after = int(conf.get("message.timestamp.after.max.ms", _NO_LIMIT_MS))
            bounds = OutputTime(None if before >= _NO_LIMIT_MS else before,
                                None if after >= _NO_LIMIT_MS else after)
            if bounds != UNBOUNDED:
                times[topic] = bounds
    if setting is not None and setting > smallest:
        raise ConfigError(f"max_record_bytes (env {env_for('max_record_bytes')}, flag "
                          f"{flag_for('max_record_bytes')})",
                          f"{setting} is larger than {where} ({smallest}): records that size "
                          "would fail at the broker; lower it or raise the topic's limit")
    return (setting if setting is not None else smallest), times


def written_topics(compiled: Any) -> list[str]:
    """Every topic an instance of ``compiled`` writes to."""
    c = compiled
    return sorted({*c.sink_topics, *c.repartition_topics,
                   *(t for _, t in c.changelog_topics.values()), c.dead_letter_topic,
                   *c.late_topics})


def sized(conf: dict[str, Any], max_record_bytes: int) -> dict[str, Any]:
    """A producer config that never builds a batch over the smallest topic limit (a batch of
    small records over it would be refused whole, failing its transaction)."""
    cap = max(max_record_bytes, 1000)
    return {**conf, "message.max.bytes": cap,
            "batch.size": min(int(conf.get("batch.size", 1_000_000)), cap)}


def state_size_check(store: Any, max_bytes: int) -> Any:
    """A function ``check(key, value)`` raising RecordTooLarge when ``store``'s changelog record
    for that value would be over ``max_bytes`` (for the guarded keys of an operator)."""
    encode = store.codec.encode

    def check(key: bytes, value: Any) -> None:
        size = record_size(key, encode(value))
        if size > max_bytes:
            raise RecordTooLarge(
                f"state store {store.name!r}: the new value for this record's key would be "
                f"{size} bytes in the changelog, over max_record_bytes={max_bytes}; the record "
                "is not applied")

    return check


class StateGuard:
    """Per (task, store), the store keys whose value was found too large at a checkpoint.

    Owned by the instance (or the test driver), so it outlives the tasks that are reopened to
    replay; operators built for a store with guarded keys check those keys per record."""

    def __init__(self) -> None:
        self._keys: dict[tuple[TaskId, str], set[bytes]] = {}

    def add(self, task: TaskId, store: str, key: bytes) -> None:
        self._keys.setdefault((task, store), set()).add(key)

    def keys(self, task: TaskId, store: str) -> frozenset[bytes]:
        return frozenset(self._keys.get((task, store), ()))

    def __len__(self) -> int:
        return sum(len(v) for v in self._keys.values())


def resolve_limits(admin: Any, settings: Any, compiled: Any) -> tuple[int, dict[str, OutputTime]]:
    """``max_record_bytes`` and the output timestamp ranges, from the configuration of every
    topic the instance writes (a record over either would fail its whole transaction at the
    broker, and the replay would fail the same way: a crash loop)."""
    max_bytes, output_time = write_limits(
        admin.configs(written_topics(compiled)), settings.max_record_bytes,
        int(settings.producer_config.get("message.max.bytes", DEFAULT_MAX_RECORD_BYTES)))
    log.info("instance.limits", max_record_bytes=max_bytes,
             min_timestamp_ms=settings.min_timestamp_ms,
             max_future_skew_ms=settings.max_future_skew_ms,
             output_timestamp_limits={t: [o.before_ms, o.after_ms]
                                      for t, o in output_time.items()})
    return max_bytes, output_time
