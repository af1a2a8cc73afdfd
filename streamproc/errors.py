"""Errors, arranged by what the caller can do about them.

This module is a leaf: it imports nothing from the rest of the package.
"""

from __future__ import annotations


class StreamprocError(Exception):
    """Root of every error the engine raises on purpose."""


class ConfigError(StreamprocError):
    """Invalid configuration. The message names the setting to fix; the app stops at start."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"invalid setting {setting!r}: {problem}")
        self.setting = setting
        self.problem = problem


class TopologyError(StreamprocError):
    """The topology cannot run as declared (bad graph, missing topic, co-partitioning mismatch)."""


class CodecError(StreamprocError):
    """A key or value could not be encoded or decoded: bad input, handled by the source's policy."""

    def __init__(self, codec: str, message: str, *, schema_id: int | None = None) -> None:
        super().__init__(f"{codec}: {message}")
        self.codec = codec
        self.schema_id = schema_id  # the registry schema id the bytes named, when there was one


class InfrastructureError(StreamprocError):
    """Not the record's fault (e.g. the schema registry is unreachable): never dead-lettered or
    skipped. The instance stops; after a restart it replays from the last checkpoint."""


class ProcessingFailed(StreamprocError):
    """A record failed under the ``fail`` policy: the instance stops, nothing past it commits."""

    def __init__(self, where: str, topic: str, partition: int, offset: int, cause: BaseException):
        super().__init__(
            f"{where} failed on {topic}[{partition}]@{offset}: {type(cause).__name__}: {cause}"
        )
        self.where = where
        self.topic = topic
        self.partition = partition
        self.offset = offset


class TransactionAborted(StreamprocError):
    """A checkpoint could not be committed; uncommitted work was discarded and will be replayed."""


class NullKeyError(StreamprocError):
    """A keyed (stateful) operator received a record without a key."""
