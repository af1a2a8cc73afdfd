"""Errors, arranged by what the caller can do about them.

This module is a leaf: it imports nothing from the rest of the package.
"""

from __future__ import annotations

import errno
from pathlib import Path


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


class ConsumerFailed(InfrastructureError):
    """The consumer hit a fatal error it cannot leave (librdkafka's ``_FATAL``: e.g. a static
    member fenced by its own rejoin after a session timeout while the group coordinator
    moved). Nothing uncommitted survives it; a new consumer (a restart of the instance, which
    ``streamproc run`` does in place) resumes from the last checkpoint."""


# How a full disk (or an exhausted quota) reads in Python's OSError and in RocksDB's messages:
# rocksdict raises plain Exceptions carrying RocksDB's text ("IO error: No space left on device:
# While appending to file: ...") or Rust's ("No space left on device (os error 28)").
_NO_SPACE = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` says the file system ran out of space (ENOSPC) or quota (EDQUOT)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return any(t in text for t in _NO_SPACE)


class DiskFull(InfrastructureError):
    """The local state directory has no space left. Nothing can be retried in place (RocksDB
    refuses every write after its first failed one), so the instance stops; a restart once
    space is freed resumes from the last checkpoint: Kafka committed first, and a store whose
    last write-back failed replays the committed changes from its changelog."""

    def __init__(self, path: Path, cause: BaseException, *, store: str | None = None,
                 partition: int | None = None) -> None:
        where = f" (store {store!r}, partition {partition})" if store is not None else ""
        super().__init__(
            f"no space left for local state at {path}{where}: {cause}. Free space on that "
            "volume (or point STREAMPROC_STATE_DIR at a larger one) and restart: the instance "
            "resumes from its last checkpoint")
        self.path = path
        self.store = store
        self.partition = partition


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
