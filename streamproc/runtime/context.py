"""What operators may touch at run time: the task's stores, output and error handling.

Operators are built against this narrow interface, so the same operator code runs under the
Kafka runtime and (later) an in-memory test driver.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from streamproc.runtime.limits import OutputTime, TimeBounds
from streamproc.state.store import KeyValueStore
from streamproc.time.watermarks import TaskTime
from streamproc.types import Origin, Record

# An operator: takes a batch of records, pushes its results to its children.
Push = Callable[[list[Record]], None]
# A source: takes one topic's consumed messages.
SourcePush = Callable[[Sequence[Origin]], None]


class TimedOperator(Protocol):
    """An operator that acts on time (windows, timers), registered with its task."""

    def start(self) -> None:
        """The task's stores are restored: rebuild in-memory indexes from them."""

    def advance(self, watermark: int, now_ms: int) -> None:
        """Fire what is due at this watermark and wall-clock time (and emit it downstream)."""


class TaskContext(Protocol):
    partition: int
    time: TaskTime
    time_bounds: TimeBounds  # the event timestamps sources accept
    max_record_bytes: int  # the largest record (output, dead letter, changelog) it may write

    def output_time(self, topic: str) -> OutputTime:
        """The timestamps ``topic`` accepts (sinks dead-letter a record outside them)."""

    def guarded(self, store: str) -> frozenset[bytes]:
        """Keys of ``store`` whose value was too large at a checkpoint: operators check the
        encoded size of their updates per record (runtime/limits.py)."""

    def now_ms(self) -> int:
        """The wall clock in milliseconds (simulated by the test driver)."""

    def register_timed(self, op: TimedOperator) -> None: ...

    def count(self, metric: str, n: int = 1, **labels: str) -> None:
        """Add to a counter of the instance's metrics."""

    def store(self, name: str) -> KeyValueStore: ...

    def global_store(self, name: str) -> KeyValueStore:
        """A global table's store (shared by every task of the instance; read only)."""

    def producer(self) -> tuple[Callable[..., None], Callable[[], None]]:
        """The hot path's ``(produce, wait_for_room)``: confluent-kafka's ``Producer.produce``
        (inside the current transaction under exactly-once) and what to call on BufferError.
        Fetch once per batch: the producer is replaced after an aborted transaction."""

    def produced(self, n: int) -> None:
        """Count records a sink produced."""

    def on_error(self, origin: Origin, exc: BaseException, where: str) -> None:
        """Apply the source's error policy to a failed record (dead-letter, skip or raise)."""
