"""Global tables: every partition of a topic, on every instance, read before any task starts.

One assign-only consumer (read_committed) reads all partitions of every global table's topic
from the offsets stored in each table's RocksDB (``{state_dir}/{app}/{store}/global``). At start
the instance reads them to the end of the log before it joins its group (so no task looks a row
up in a table still loading); afterwards the loop reads what arrived between batches
(:meth:`GlobalTables.step`), without waiting.

A global table is outside the checkpoints: its rows and offsets are written as they are read, so
a replay after a crash sees the table as it is at replay time (as Kafka Streams' global tables).
Records that do not decode follow the table's ``on_error``; their dead letters are sent and
flushed before the offset that passes them is stored (at least once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc.config import Settings
from streamproc.errors import InfrastructureError, StreamprocError
from streamproc.graph.compile import CompiledTopology
from streamproc.graph.nodes import GlobalTableSpec
from streamproc.kafka.clients import (
    new_consumer,
    new_producer,
    producer_config,
    restore_consumer_config,
)
from streamproc.kafka.io import at_log_end
from streamproc.metrics import Metrics
from streamproc.progress import Progress
from streamproc.runtime.checkpoint import now_ms
from streamproc.runtime.deadletter import dead_letter
from streamproc.runtime.tables import row_problem
from streamproc.state.table import GlobalTableStore
from streamproc.types import Origin

log = structlog.get_logger(__name__)

PROGRESS_EVERY_S = 5.0
STALL_S = 960.0  # as runtime/restore.py: past the broker's largest transaction timeout


class GlobalTables:
    """``consumer`` makes the reading consumer (None: the caller feeds :meth:`apply`, as the
    test driver does); ``on_error(origin, exc, where)`` applies a table's error policy to a
    bad record and ``flush()`` makes its dead letters durable."""

    def __init__(self, specs: Mapping[str, GlobalTableSpec], app_dir: Path, *,
                 consumer: Callable[[], Consumer] | None,
                 on_error: Callable[[Origin, BaseException, str], None],
                 flush: Callable[[], None] = lambda: None, batch_size: int = 10_000,
                 cache_max_keys: int = 200_000) -> None:
        self.specs = dict(specs)
        self._by_topic = {s.topic: s for s in self.specs.values()}
        self.stores = {
            name: GlobalTableStore(name, -1, app_dir / name / "global", spec.value_codec,
                                   cache_max_keys=cache_max_keys)
            for name, spec in self.specs.items()}
        self._new_consumer = consumer
        self._consumer: Consumer | None = None
        self._on_error = on_error
        self._flush = flush
        self._batch_size = batch_size
        self.records = 0  # rows applied since start (restore included)

    def __bool__(self) -> bool:
        return bool(self.specs)

    def store(self, name: str) -> GlobalTableStore:
        return self.stores[name]

    def open(self) -> None:
        for store in self.stores.values():
            store.open()  # a corrupt database is wiped: its offsets go with it, so it reloads
            store.check_values()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        for store in self.stores.values():
            store.close()

    # -- reading -------------------------------------------------------------------------------
    def start(self, partitions: Callable[[list[str]], Mapping[str, int | None]], app_id: str,
              stop: threading.Event, timeout_s: float) -> None:
        """Open the stores and read every table to the end of its topic (``partitions``: the
        admin's partition counts); a missing topic stops the start naming it."""
        if not self.specs:
            return
        counts = check_topics(self.specs, partitions(sorted(self._by_topic)), app_id)
        self.open()
        self.restore(counts, stop, timeout_s)

    def restore(self, partitions: Mapping[str, int], stop: threading.Event,
                timeout_s: float) -> None:
        """Read every partition to its end (``partitions``: per topic, its partition count)
        before the instance processes anything; returns early if ``stop`` is set."""
        if not self.specs:
            return
        assert self._new_consumer is not None
        consumer = self._consumer = self._new_consumer()
        assigns: list[KafkaTopicPartition] = []
        for spec in self.specs.values():
            stored = self.stores[spec.store].offsets()
            assigns += [KafkaTopicPartition(spec.topic, p, stored.get(p, OFFSET_BEGINNING))
                        for p in range(partitions[spec.topic])]
        consumer.assign(assigns)
        left = {(a.topic, a.partition) for a in assigns}
        progress = Progress("global_table.restore", every_s=PROGRESS_EVERY_S, stall_s=STALL_S,
                            clock=time.monotonic, logger=log,
                            tables=sorted(self.specs))
        log.info("global_table.restore_started", tables=sorted(self.specs),
                 partitions=len(assigns))
        while left and not stop.is_set():
            msgs = consumer.consume(self._batch_size, min(timeout_s, 0.5))
            for m in msgs:
                err = m.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF and \
                        at_log_end(consumer, m.topic() or "", m.partition() or 0,
                                   m.offset() or 0):
                    left.discard((m.topic(), m.partition()))
            n, size = self.apply(msgs)
            progress.advance(n, size)
        if not left:
            progress.done()

    def step(self) -> int:
        """Apply what the topics received since the last step, without waiting."""
        if self._consumer is None:
            return 0
        return self.apply(self._consumer.consume(self._batch_size, 0))[0]

    def apply(self, msgs: list[Any]) -> tuple[int, int]:
        """Rows from consumed records: upserts, deletes (null value), bad records to
        ``on_error``; the stores' offsets move past all of them. Returns (records, bytes)."""
        rows: dict[str, list[tuple[bytes, bytes | None]]] = {}
        offsets: dict[str, dict[int, int]] = {}
        failed = False
        n = size = 0
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("global_table.consume_error", error=str(err))
                continue
            spec = self._by_topic.get(m.topic())
            if spec is None:
                continue
            offsets.setdefault(spec.store, {})[m.partition()] = m.offset() + 1
            problem = row_problem(spec.key_codec, spec.value_codec, m)
            if problem is not None:
                self._on_error(m, problem, f"{spec.store}.global_table")
                failed = True
                continue
            value = m.value()
            rows.setdefault(spec.store, []).append((m.key(), value))
            n += 1
            size += len(m.key()) + (len(value) if value is not None else 0)
        if failed:
            self._flush()  # the letters are durable before the offsets pass their records
        for store, offs in offsets.items():
            self.stores[store].apply(rows.get(store, []), offs)
        self.records += n
        return n, size


def check_topics(specs: Mapping[str, GlobalTableSpec], partitions: Mapping[str, int | None],
                 app_id: str) -> dict[str, int]:
    """The partition count of every global table's topic; a missing one stops the start."""
    missing = sorted({s.topic for s in specs.values() if partitions.get(s.topic) is None})
    if missing:
        raise StreamprocError(
            f"global table topic(s) {', '.join(missing)} of {app_id!r} do not exist: create "
            "them first (streamproc never creates user topics)")
    return {s.topic: int(partitions[s.topic] or 0) for s in specs.values()}


def for_instance(compiled: CompiledTopology, settings: Settings, bootstrap: str, app_dir: Path,
                 client_id: str, metrics: Metrics, max_record_bytes: int) -> GlobalTables:
    """The instance's global tables, with their own consumer and, for dead letters, their own
    (idempotent, not transactional) producer: a global table is read outside the tasks'
    transactions, so its letters are flushed before the offsets that pass them are stored."""
    policies = {g.topic: g.on_error for g in compiled.global_tables.values()}
    producer: list[Producer] = []

    def on_error(origin: Origin, exc: BaseException, where: str) -> None:
        letter = dead_letter(origin, exc, where, policies, "dead_letter", metrics, now_ms,
                             max_record_bytes)
        if letter is None:
            return
        if not producer:
            producer.append(new_producer(producer_config(settings, bootstrap, None,
                                                         f"{client_id}-global-dlq")))
        key, value, ts, headers = letter
        producer[0].produce(compiled.dead_letter_topic, value, key, timestamp=ts,
                            headers=headers)

    def flush() -> None:
        if producer and producer[0].flush(30.0):
            raise InfrastructureError("dead letters of a global table could not be delivered "
                                      f"to {compiled.dead_letter_topic} within 30 s")

    conf = {**restore_consumer_config(settings, bootstrap, compiled.application_id),
            "client.id": f"{client_id}-global"}
    return GlobalTables(compiled.global_tables, app_dir, consumer=lambda: new_consumer(conf),
                        on_error=on_error, flush=flush, batch_size=settings.restore_batch_size,
                        cache_max_keys=settings.state_cache_max_keys)
