"""What operators may touch at run time: the task's stores, output and error handling.

Operators are built against this narrow interface, so the same operator code runs under the
Kafka runtime and (later) an in-memory test driver.
"""

from __future__ import annotations

from typing import Protocol

from streamproc.state.store import KeyValueStore
from streamproc.types import Headers, Origin


class TaskContext(Protocol):
    partition: int

    def store(self, name: str) -> KeyValueStore: ...

    def send(self, topic: str, key: bytes | None, value: bytes | None, timestamp: int,
             headers: Headers | None) -> None:
        """Produce one record (inside the current transaction under exactly-once)."""

    def on_error(self, origin: Origin, exc: BaseException, where: str) -> None:
        """Apply the source's error policy to a failed record (dead-letter, skip or raise)."""
