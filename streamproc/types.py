"""Value types shared by every layer. A leaf module: stdlib only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

ProcessingGuarantee = Literal["exactly_once", "at_least_once", "at_most_once"]
ErrorPolicy = Literal["dead_letter", "skip", "fail"]
Headers = list[tuple[str, str | bytes | None]]


class TopicPartition(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True, order=True)
class TaskId:
    """One partition number of one sub-topology: the unit of state, ordering and assignment."""

    subtopology: int
    partition: int

    def __str__(self) -> str:
        return f"{self.subtopology}_{self.partition}"


class Origin(Protocol):
    """The consumed Kafka message a record came from (a ``confluent_kafka.Message`` in production).

    Records keep a reference to it, not a copy, so that dead-lettering can send the original bytes
    and coordinates without the hot path paying for them.
    """

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> Headers | None: ...
    def timestamp(self) -> tuple[int, int]: ...


class Record:
    """A decoded record flowing between operators.

    ``__slots__`` and positional construction keep the per-record cost low; records are never
    mutated after construction, so one record may fan out to several downstream operators.
    """

    __slots__ = ("key", "origin", "timestamp", "value")

    def __init__(self, key: Any, value: Any, timestamp: int, origin: Origin) -> None:
        self.key = key
        self.value = value
        self.timestamp = timestamp
        self.origin = origin

    def __repr__(self) -> str:
        return f"Record(key={self.key!r}, value={self.value!r}, timestamp={self.timestamp})"


class Change:
    """A table's update of one key, flowing between table operators as a record's value:
    ``old`` and ``new`` are the row before and after (``None``: absent)."""

    __slots__ = ("new", "old")

    def __init__(self, old: Any, new: Any) -> None:
        self.old = old
        self.new = new

    def __repr__(self) -> str:
        return f"Change(old={self.old!r}, new={self.new!r})"


class Emitted:
    """The origin of a record a window or timer emitted on its own (not in reply to a consumed
    message): it has no topic coordinates, ``key()`` is the key's bytes (what downstream keyed
    operators use) and ``watermark`` is the watermark it was emitted at."""

    __slots__ = ("_key", "_timestamp", "watermark")

    def __init__(self, key: bytes | None, timestamp: int, watermark: int) -> None:
        self._key = key
        self._timestamp = timestamp
        self.watermark = watermark

    def topic(self) -> str | None:
        return None

    def partition(self) -> int | None:
        return None

    def offset(self) -> int | None:
        return None

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return None

    def headers(self) -> Headers | None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp)  # TIMESTAMP_CREATE_TIME
