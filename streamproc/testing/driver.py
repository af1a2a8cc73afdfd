"""``TopologyTestDriver``: run a topology in a unit test, without Kafka, on simulated time.

The driver builds the real tasks (runtime/task.py) with the real operators, codecs and RocksDB
stores; only the Kafka clients and the clock are replaced, by an in-memory cluster
(testing/memory.py) and a number the test moves. Checkpoints follow the exactly-once protocol:
output, changelog and input offsets become visible together, and a crash drops everything since
the last checkpoint, restores the stores from their changelogs and replays the input from the
committed offsets.

What it does not test: the Kafka clients themselves, transactions on a real broker, rebalance
protocols, restore from a real changelog topic, timing. Those keep their integration tests.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamproc.api.topology import Topology
from streamproc.codecs.base import Codec
from streamproc.codecs.registry import RegistrySettings
from streamproc.graph.binding import bind_codecs
from streamproc.graph.compile import compile_topology
from streamproc.graph.nodes import (
    AggregateNode,
    ProcessNode,
    RepartitionNode,
    SinkNode,
    TableNode,
    WindowJoinNode,
    WindowNode,
)
from streamproc.metrics import Metrics
from streamproc.runtime.deadletter import dead_letter
from streamproc.runtime.globals import GlobalTables
from streamproc.runtime.limits import StateGuard, TimeBounds
from streamproc.runtime.operators import MAX_RECORD_BYTES
from streamproc.runtime.plan import control_partitions, resolve, upstream_tasks
from streamproc.runtime.streamjoin import split_entry_key
from streamproc.runtime.tables import restorable
from streamproc.runtime.task import Task
from streamproc.state.windowed import WindowStateCodec, split_window_key
from streamproc.testing.memory import Cluster, MemoryAdmin, Message
from streamproc.time.watermarks import CONTROL_HEADER, control_key
from streamproc.types import Headers, Origin, TaskId, TopicPartition

DRIVER_REGISTRY = "mock://streamproc-test-driver"


@dataclass(frozen=True)
class TestRecord:
    """A record read back from a topic (decoded with the topology's codecs for that topic)."""

    __test__ = False  # not a pytest test class

    topic: str
    partition: int
    offset: int
    key: Any
    value: Any
    timestamp: int
    headers: dict[str, bytes]


class TopologyTestDriver:
    """Pipe records in, move the clock, read records and state out; crash at will.

    ``partitions``: partitions of every user topic (an int), or per topic (a dict; others 1).
    ``auto_commit``: checkpoint after every ``pipe``/``advance_time`` (output visible at once);
    turn it off to choose commit points with :meth:`commit` and test crashes between them.
    ``batch_size``: how many records of a partition a task gets at once (all available when
    None); results must not depend on it. ``max_record_bytes``, ``min_timestamp_ms`` and
    ``max_future_skew_ms``: the bad-input limits of the same settings (the future skew is off
    by default: the driver's clock is simulated and usually far behind the records' times).
    """

    def __init__(self, topology: Topology, *, partitions: int | dict[str, int] = 1,
                 state_dir: Path | str | None = None, start_time_ms: int = 0,
                 auto_commit: bool = True, batch_size: int | None = None,
                 cache_max_keys: int = 200_000,
                 schema_registry: str = DRIVER_REGISTRY,
                 max_record_bytes: int = MAX_RECORD_BYTES, min_timestamp_ms: int = 0,
                 max_future_skew_ms: int | None = None) -> None:
        self.topology = topology
        self.compiled = compile_topology(topology)
        # Registry codecs bind to confluent-kafka's in-memory registry: tests that produce or
        # inspect framed records use the same URL (codecs.registry_client) and see the same ids.
        self.registry = RegistrySettings(schema_registry)
        bind_codecs(self.compiled, self.registry)
        per_topic = partitions if isinstance(partitions, dict) else {}
        self.cluster = Cluster(default_partitions=partitions if isinstance(partitions, int)
                               else 1, partitions=dict(per_topic))
        self._global_topics = {g.topic: g for g in self.compiled.global_tables.values()}
        self.plan = resolve(self.compiled, MemoryAdmin(
            self.cluster, [*self.compiled.user_source_topics, *self.compiled.sink_topics,
                           *self._global_topics]))
        self._own_dir = state_dir is None
        self.state_dir = Path(state_dir) if state_dir is not None else Path(
            tempfile.mkdtemp(prefix="streamproc-test-", dir=_scratch_dir()))
        self.clock = start_time_ms
        self.auto_commit = auto_commit
        self.batch_size = batch_size
        self.cache_max_keys = cache_max_keys
        self.metrics = Metrics()
        self.committed: dict[TopicPartition, int] = {}
        self.positions: dict[TopicPartition, int] = {}
        self.tasks: dict[TaskId, Task] = {}
        self.checkpoints = 0
        self._policies = {t: self.compiled.source_node(t).on_error
                          for t in self.compiled.topic_subtopology}
        self._policies.update({t: g.on_error for t, g in self._global_topics.items()})
        self.globals: GlobalTables | None = None
        self._read_seq: dict[str, int] = {}
        self.max_record_bytes = max_record_bytes
        self.time_bounds = TimeBounds(min_timestamp_ms, max_future_skew_ms)
        self.guard = StateGuard()
        self._control_key = control_key(self.compiled.application_id)
        self._open_tasks()

    # -- input and time ------------------------------------------------------------------------
    def pipe(self, topic: str, value: Any, key: Any = None, *, timestamp: int | None = None,
             headers: Headers | None = None, partition: int | None = None) -> None:
        """Append a record to a source topic and process it. ``bytes`` (and None) are taken as
        they are on the wire; anything else is encoded with the source's codec. The timestamp
        defaults to the driver's clock; the partition to the key's, as Kafka's producer picks."""
        if topic in self._global_topics:
            kcodec, vcodec = self._global_topics[topic].key_codec, \
                self._global_topics[topic].value_codec
        elif topic in self.compiled.user_source_topics:
            node = self.compiled.source_node(topic)
            assert node.key_codec is not None and node.value_codec is not None
            kcodec, vcodec = node.key_codec, node.value_codec
        else:
            raise ValueError(f"{topic!r} is not a source topic of {self.compiled.application_id}"
                             f" (sources: {self.compiled.user_source_topics})")
        kb = key if key is None or isinstance(key, bytes) else kcodec.encode(key)
        vb = value if value is None or isinstance(value, bytes) else vcodec.encode(value)
        p = self.cluster.partition_for(topic, kb) if partition is None else partition
        self.cluster.append(topic, p, kb, vb, self.clock if timestamp is None else timestamp,
                            headers)
        self._settle()

    def advance_time(self, ms: int) -> None:
        """Move the wall clock: idleness, processing-time timers and early firings act."""
        if ms < 0:
            raise ValueError("time only moves forward")
        self.clock += ms
        for tid in sorted(self.tasks):
            self.tasks[tid].tick(self.clock)
        self._settle()

    def now_ms(self) -> int:
        return self.clock

    def finish(self) -> None:
        """End of input (a bounded run): every window closes, every event-time timer fires, and
        the result is committed."""
        self._settle()
        for st in self.compiled.subtopologies:  # upstream first
            for tid in sorted(t for t in self.tasks if t.subtopology == st.id):
                self.tasks[tid].finish()
            self._settle(commit=True)

    # -- checkpoints and failures --------------------------------------------------------------
    def commit(self) -> None:
        """A checkpoint: output, changelog and offsets of everything processed become visible
        (and downstream tasks then process what it made visible)."""
        self._checkpoint()
        self._settle()

    def crash(self, *, lose_state: bool = False, mid_checkpoint: bool = False) -> None:
        """Kill the instance: everything since the last checkpoint is dropped, the stores are
        restored from their changelogs and the input is replayed from the committed offsets.

        ``lose_state``: the local RocksDB is gone too (a new machine): restore everything.
        ``mid_checkpoint``: die inside a checkpoint, after the Kafka commit and before the local
        stores were written (they are then behind their changelog)."""
        if mid_checkpoint:
            self._checkpoint(write_stores=False)
        self.cluster.abort()
        self._close_tasks()
        if lose_state:
            shutil.rmtree(self.state_dir / self.compiled.application_id, ignore_errors=True)
        self._open_tasks()
        self._settle()

    def rebalance(self) -> None:
        """Every task moves to another instance: a checkpoint on revoke, then the new owner
        (with no local state) restores from the changelogs and carries on."""
        self._checkpoint()
        self._close_tasks()
        shutil.rmtree(self.state_dir / self.compiled.application_id, ignore_errors=True)
        self._open_tasks()
        self._settle()

    # -- output --------------------------------------------------------------------------------
    def records(self, topic: str, *, raw: bool = False) -> list[TestRecord]:
        """Every committed record of ``topic`` in the order written (a repartition topic's
        control records, which no operator sees, are left out). Decoded with the topology's
        codecs unless ``raw``."""
        codecs = None if raw else self._codecs(topic)
        return [self._record(m, codecs) for m in self._messages(topic)]

    def read(self, topic: str, *, raw: bool = False) -> list[TestRecord]:
        """Like :meth:`records`, but only what earlier ``read`` calls have not returned."""
        after = self._read_seq.get(topic, 0)
        msgs = [m for m in self._messages(topic) if m.seq > after]
        if msgs:
            self._read_seq[topic] = msgs[-1].seq
        codecs = None if raw else self._codecs(topic)
        return [self._record(m, codecs) for m in msgs]

    def values(self, topic: str) -> list[Any]:
        return [r.value for r in self.records(topic)]

    def key_values(self, topic: str) -> list[tuple[Any, Any]]:
        return [(r.key, r.value) for r in self.records(topic)]

    def dead_letters(self) -> list[TestRecord]:
        return self.records(self.compiled.dead_letter_topic, raw=True)

    def late_records(self, topic: str | None = None) -> list[TestRecord]:
        return self.records(topic or f"{self.compiled.application_id}-late", raw=True)

    def state(self, store: str) -> dict[Any, Any]:
        """A store's current content over all partitions, including uncommitted changes. Keys
        are decoded; a window store is keyed by ``(key, start, end)`` with the window's result
        as the value."""
        if store in self.compiled.global_tables and self.globals is not None:
            decode = self.compiled.global_tables[store].key_codec.decode
            return {decode(k): v for k, v in self.globals.store(store).items()}
        join = next((n for n in self.topology.nodes if isinstance(n, WindowJoinNode)
                     and store in (f"{n.store}.left", f"{n.store}.right")), None)
        node: Any = join if join is not None else self._store_owner(store)
        out: dict[Any, Any] = {}
        for tid in sorted(self.tasks):
            s = self.tasks[tid].stores.get(store)
            if s is None:
                continue
            content = dict(s.items())
            for k in s.dirty:
                v = s.cache[k]
                if v is s.DELETED:
                    content.pop(k, None)
                else:
                    content[k] = v
            for k, v in content.items():
                key, value = self._state_entry(node, s.codec, k, v)
                out[key] = value
        return out

    def watermarks(self) -> dict[str, int]:
        """The watermark of every task (``"{subtopology}_{partition}"``)."""
        return {str(tid): t.time.watermark for tid, t in sorted(self.tasks.items())}

    def close(self) -> None:
        self._close_tasks()
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> TopologyTestDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tasks -----------------------------------------------------------------------------------
    def _open_tasks(self) -> None:
        changelogs = self.compiled.changelog_topics
        # Global tables: the same stores and record handling as the instance's, fed here.
        self.globals = GlobalTables(self.compiled.global_tables,
                                    self.state_dir / self.compiled.application_id,
                                    consumer=None, on_error=self._on_error)
        self.globals.open()
        for name, g in self.compiled.global_tables.items():
            stored = self.globals.store(name).offsets()
            for p in range(len(self.cluster.ensure(g.topic))):
                self.positions[TopicPartition(g.topic, p)] = stored.get(p, 0)
        for st in self.compiled.subtopologies:
            for p in range(self.plan.partitions[st.id]):
                tid = TaskId(st.id, p)
                task = Task(
                    tid, st, app_dir=self.state_dir / self.compiled.application_id,
                    changelog_topic=lambda store: changelogs[store][1],
                    producer=lambda: (self.cluster.produce, _no_room),
                    produced=_ignore, on_error=self._on_error,
                    cache_max_keys=self.cache_max_keys, max_record_bytes=self.max_record_bytes,
                    clock=self.now_ms, count=self.metrics.inc,
                    upstream_tasks=upstream_tasks(self.compiled, st, self.plan.partitions),
                    control_partitions=control_partitions(self.compiled, st,
                                                          self.plan.partitions),
                    time_bounds=self.time_bounds, guard=self.guard,
                    control_key=self._control_key, global_tables=self.globals.stores,
                )
                task.open()
                self._restore(task)
                positions = {TopicPartition(t, p): self.committed.get(TopicPartition(t, p), 0)
                             for t in st.source_topics}
                self.positions.update(positions)
                task.next_offsets.update(positions)
                task.mark_committed(positions)
                task.start()
                self.tasks[tid] = task

    def _restore(self, task: Task) -> None:
        for name, store in task.stores.items():
            log = self.cluster.ensure(task.changelog_topics[name])[task.partition]
            start = store.changelog_offset
            if name in task.source_backed:
                # A table's topic is its changelog, read up to the committed offset (as
                # runtime/restore.py does), skipping what its source did not accept.
                end = self.committed.get(task.source_backed[name], 0)
                if start > end:
                    store.wipe()
                    store.open()
                    start = 0
                accepts = restorable(task.table_source(name))
                if start < end:
                    store.apply_changelog([(m.key() or b"", m.value()) for m in log[start:end]
                                           if accepts(m)], end)
                continue
            if start < len(log):
                store.apply_changelog([(m.key() or b"", m.value()) for m in log[start:]],
                                      len(log))

    def _close_tasks(self) -> None:
        for task in self.tasks.values():
            task.close()
        self.tasks.clear()
        if self.globals is not None:
            self.globals.close()

    def _process_available(self) -> bool:
        processed = False
        assert self.globals is not None
        for topic in self._global_topics:  # read before any task, as the instance does
            for p, log in enumerate(self.cluster.ensure(topic)):
                tp = TopicPartition(topic, p)
                if self.positions[tp] < len(log):
                    self.globals.apply(log[self.positions[tp]:])
                    self.positions[tp] = len(log)
                    processed = True
        for tid in sorted(self.tasks):
            task = self.tasks[tid]
            # Tables first, as the instance holds a task's streams until its tables have read
            # their topics (runtime/bootstrap.py): a stream record sees the rows before it.
            tables = {tp.topic for tp in task.source_backed.values()}
            for topic in sorted(task.subtopology.source_topics, key=lambda t: t not in tables):
                tp = TopicPartition(topic, tid.partition)
                log = self.cluster.ensure(topic)[tid.partition]
                pos = self.positions[tp]
                while pos < len(log):
                    end = len(log) if self.batch_size is None else min(len(log),
                                                                       pos + self.batch_size)
                    task.process(tp, log[pos:end])
                    pos = self.positions[tp] = end
                    processed = True
        return processed

    def _settle(self, *, commit: bool | None = None) -> None:
        """Process until nothing is left that a task can see (with auto-commit, committing
        after each round, which makes repartitioned records visible downstream)."""
        commit = self.auto_commit if commit is None else commit
        while True:
            processed = self._process_available()
            committed = self._checkpoint() if commit else False
            if not processed and not committed:
                return

    def _checkpoint(self, *, write_stores: bool = True) -> bool:
        tasks = [self.tasks[t] for t in sorted(self.tasks)]
        offsets: dict[TopicPartition, int] = {}
        for t in tasks:
            offsets.update(t.uncommitted_offsets())
        changes = [(t, name, recs) for t in tasks for name, recs in t.prepare_changes().items()]
        oversized = [e for t in tasks for e in t.oversized]
        if oversized:
            # As the instance does: nothing commits, the keys are guarded, the input replays
            # from the committed offsets and the records that made them too large fail.
            for tid, store, key, _ in oversized:
                self.guard.add(tid, store, key)
            self.metrics.inc("state_values_too_large_total", len(oversized))
            self.cluster.abort()
            self._close_tasks()
            self._open_tasks()
            return True
        controls = [c for t in tasks for c in t.control_records()]
        if not offsets and not changes and not controls and not self.cluster.pending:
            return False
        for topic, partition, payload, headers in controls:
            self.cluster.produce(topic, payload, None, partition, timestamp=self.clock,
                                 headers=list(headers))
        for t, name, recs in changes:
            if name in t.source_backed:
                continue  # a table's topic is its changelog
            for key, value in recs:
                self.cluster.produce(t.changelog_topics[name], value, key, t.partition,
                                     timestamp=self.clock)
        ends = self.cluster.commit()  # output, changelog and offsets: one atomic step
        self.committed.update(offsets)
        self.checkpoints += 1
        if not write_stores:
            return True
        for t, name, recs in changes:
            t.stores[name].commit(recs, t.table_offset(name) if name in t.source_backed
                                  else ends.get((t.changelog_topics[name], t.partition)))
        for t in tasks:
            t.mark_committed({tp: o for tp, o in offsets.items() if tp in t.next_offsets})
        return True

    def _on_error(self, origin: Origin, exc: BaseException, where: str) -> None:
        letter = dead_letter(origin, exc, where, self._policies, self.topology.on_error,
                             self.metrics, self.now_ms, self.max_record_bytes)
        if letter is not None:
            key, value, ts, headers = letter
            self.cluster.produce(self.compiled.dead_letter_topic, value, key, timestamp=ts,
                                 headers=headers)

    # -- decoding --------------------------------------------------------------------------------
    def _messages(self, topic: str) -> list[Message]:
        # Control records exist only in repartition topics; elsewhere (a dead letter of a bad
        # one keeps its headers) a record with that header is data.
        internal = topic in self.compiled.repartition_topics
        return sorted((m for part in self.cluster.logs.get(topic, []) for m in part
                       if not (internal and _is_control(m))), key=lambda m: m.seq)

    def _codecs(self, topic: str) -> tuple[Codec, Codec] | None:
        for node in self.topology.nodes:
            if isinstance(node, SinkNode | RepartitionNode) and node.topic == topic:
                assert node.key_codec is not None and node.value_codec is not None
                return node.key_codec, node.value_codec
        if topic in self.compiled.user_source_topics:
            src = self.compiled.source_node(topic)
            assert src.key_codec is not None and src.value_codec is not None
            return src.key_codec, src.value_codec
        return None

    @staticmethod
    def _record(m: Message, codecs: tuple[Codec, Codec] | None) -> TestRecord:
        key, value = m.key(), m.value()
        if codecs is not None:
            key, value = codecs[0].decode(key), codecs[1].decode(value)
        headers = {k: v if isinstance(v, bytes) else (v or "").encode()
                   for k, v in (m.headers() or [])}
        return TestRecord(m.topic(), m.partition(), m.offset(), key, value, m.timestamp()[1],
                          headers)

    def _store_owner(self, store: str) -> AggregateNode | WindowNode | ProcessNode | TableNode:
        for node in self.topology.nodes:
            if isinstance(node, AggregateNode | WindowNode | ProcessNode | TableNode) and \
                    node.store is not None and node.store.name == store:
                return node
        names = sorted([*self.compiled.changelog_topics, *self.compiled.table_sources])
        raise KeyError(f"no store named {store!r} in {self.compiled.application_id} (stores: "
                       f"{names})")

    @staticmethod
    def _state_entry(node: AggregateNode | WindowNode | ProcessNode | TableNode | WindowJoinNode,
                     codec: Codec, k: bytes, v: Any) -> tuple[Any, Any]:
        key_codec = node.key_codec
        decode = key_codec.decode if key_codec is not None else (lambda b: b)
        if isinstance(node, WindowJoinNode):  # waiting records: (key, timestamp) -> value
            kb, ts, _ = split_entry_key(k)
            return (decode(kb), ts), v["v"]
        if isinstance(codec, WindowStateCodec) and isinstance(node, WindowNode):
            start, end, kb = split_window_key(k)
            if start == end:  # count/global windows (0, 0), sliding entries (t, t)
                start, end = v.first, v.last
            result = node.result(v.acc) if node.result is not None else v.acc
            return (decode(kb), start, end), result
        return decode(k), v


def _scratch_dir() -> str | None:
    """Memory-backed when the machine has one: RocksDB opens and deletes in tests are then
    several times faster than on disk."""
    shm = Path("/dev/shm")  # noqa: S108 - mkdtemp makes a private directory in it
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def _is_control(m: Message) -> bool:
    h = m.headers()
    return bool(h) and h is not None and h[0][0] == CONTROL_HEADER


def _no_room() -> None:
    return None


def _ignore(_n: int) -> None:
    return None
