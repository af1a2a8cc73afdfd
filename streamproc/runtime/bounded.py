"""Bounded runs (``until``) and start positions by time (``from_datetime``).

A bounded run is a streaming run with an end: batch as a special case of streaming.

- **Bounds.** At start the instance captures, for every partition of every user source topic,
  where the input ends: ``until=end`` takes the last stable offset (the end a ``read_committed``
  reader sees: the high watermark, or the first offset of a transaction still open); ``until=T``
  takes the first offset whose record timestamp is at or after ``T`` (``offsets_for_times``),
  never past the last stable offset. Records at or past the bound are neither processed nor
  committed: they are dropped from the consumed batch and the partition is paused, and the
  committed offset is the bound itself, so a later run (bounded or streaming) starts exactly there.
- **Source tasks** are done when the consumer's position reached the bound on each of their
  partitions (the position, not the last record: under exactly-once a log ends in transaction
  markers, which the consumer skips).
- **Behind a repartition topic** a task is done when (1) it has read a watermark of
  ``END_OF_TIME`` from every upstream task (the watermark control records), (2) the input of
  every upstream sub-topology has flowed through: the group has committed every user source
  partition up to its bound and every repartition partition up to its last stable offset
  (recursively), and (3) its own position reached the last stable offset, read after (2). (1)
  alone cannot tell this run's end of input from an earlier run's: the watermark never goes
  back, so after a first bounded run every task restores ``END_OF_TIME`` and resends it at
  once; an instance that takes over a finished task would never see the markers again. (2)
  alone cannot tell whether an upstream task that had nothing left to read has already flushed
  its windows: (1) says it has, because a task's watermark control records are committed in
  the same transaction as its output. The group's committed offsets and the last stable
  offsets are asked for only once (1) holds, at most every ``poll_timeout_ms``. (1) is only
  required where the upstream sub-topology acts on event time: otherwise finishing it writes
  nothing, (2) suffices, and a downstream task that keeps no watermark state (no time store)
  and was taken over after the markers were sent does not wait for them forever. Left open:
  an event-time upstream feeding a downstream without a time store, taken over that way.
- **Finishing** a task moves its watermark to the end of time (every window closes, every
  event-time timer fires), sets its offsets to the bounds, and takes a checkpoint at once, so
  the results, the state and the offsets commit in one transaction and downstream tasks (on
  this or other instances) can finish. When every task this instance owns is finished, it
  commits, leaves the consumer group (even as a static member: nothing is going to restart
  it), and the loop ends; ``run()`` returns 0. Instances of one group each finish their own
  partitions; an instance without partitions waits until a rebalance gives it some (it then
  finds them finished and exits). A task's processing-time timers may still fire until its
  instance exits.
- **After a bounded run** the application's event time has ended: its checkpointed watermark is
  ``END_OF_TIME``. A later run of the same application id continues from the committed offsets:
  stateless steps and non-windowed aggregations (running counts) continue exactly, but records
  for windows and event-time timers are late (the window's late policy applies). To window new
  input again, reset the application (``streamproc reset``) or replay into a new application id.
- Under ``at_most_once`` offsets are committed before processing, so other instances may take
  an upstream task for finished before its last output is written; bounded runs through a
  repartition topic are only exact under the other two guarantees.

``from_datetime``: where the group has no committed offset for a user source partition, the
task starts at the first record timestamped at or after it (or at the end if there is none),
instead of ``auto.offset.reset``. Partitions with a committed offset are unaffected, so a replay
app restarted later continues where it was.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Set
from typing import TYPE_CHECKING, Any

import structlog
from confluent_kafka import Consumer, IsolationLevel, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from streamproc.config import parse_instant
from streamproc.errors import TopologyError
from streamproc.kafka.clients import new_admin
from streamproc.time.windows import END_OF_TIME
from streamproc.types import TaskId, TopicPartition

if TYPE_CHECKING:
    from streamproc.config import Settings
    from streamproc.graph.compile import CompiledTopology
    from streamproc.runtime.loop import RunControl
    from streamproc.runtime.task import Task

log = structlog.get_logger(__name__)


def _ktp(tp: tuple[str, int], offset: int | None = None) -> KafkaTopicPartition:
    if offset is None:
        return KafkaTopicPartition(tp[0], tp[1])
    return KafkaTopicPartition(tp[0], tp[1], offset)


def _name(tp: tuple[str, int]) -> str:
    return f"{tp[0]}[{tp[1]}]"


def end_offsets(consumer: Consumer, parts: Iterable[TopicPartition],
                timeout_s: float) -> dict[TopicPartition, tuple[int, int]]:
    """(log start, last stable offset) per partition. The consumer reads ``read_committed``, so
    librdkafka's high watermark query answers with the last stable offset."""
    out: dict[TopicPartition, tuple[int, int]] = {}
    for tp in parts:
        low, high = consumer.get_watermark_offsets(_ktp(tp), timeout_s, cached=False)
        out[tp] = (int(low), int(high))
    return out


def offsets_for_time(consumer: Consumer, parts: Iterable[TopicPartition], at_ms: int,
                     timeout_s: float) -> dict[TopicPartition, int | None]:
    """The first offset whose record timestamp is >= ``at_ms``; None where there is none."""
    wanted = list(parts)
    if not wanted:
        return {}
    found = consumer.offsets_for_times([_ktp(tp, at_ms) for tp in wanted], timeout_s)
    out: dict[TopicPartition, int | None] = {}
    for k in found:
        if k.error is not None:
            raise KafkaException(k.error)
        out[TopicPartition(k.topic, k.partition)] = k.offset if k.offset >= 0 else None
    return out


class Bounded:
    """Where each source partition starts (``from_datetime``) and ends (``until``) in one run,
    and the bookkeeping that finishes tasks at the end. Created by the application at start."""

    def __init__(self, settings: Settings, compiled: CompiledTopology, consumer: Consumer,
                 tasks_per_subtopology: Mapping[int, int], connection: dict[str, Any],
                 timeout_s: float, assigned: Set[TopicPartition]) -> None:
        s = settings
        self.compiled = compiled
        self.consumer = consumer
        self._tasks_of = tasks_per_subtopology
        self._connection = connection  # for the admin client that asks for stable offsets
        self._timeout_s = timeout_s
        self._assigned = assigned  # the instance's, kept up to date by its rebalance handler
        self._poll_s = s.poll_timeout_ms / 1000
        meta = consumer.list_topics(timeout=self._timeout_s).topics
        self.user_partitions = [TopicPartition(t, p) for t in compiled.user_source_topics
                                for p in sorted(meta[t].partitions)]
        self.start: dict[TopicPartition, int] = {}
        if s.from_datetime is not None:
            at = parse_instant(s.from_datetime)
            found = offsets_for_time(consumer, self.user_partitions, at, self._timeout_s)
            ends = end_offsets(consumer, [tp for tp, o in found.items() if o is None],
                               self._timeout_s)
            self.start = {tp: o if o is not None else ends[tp][1] for tp, o in found.items()}
            log.info("run.start_from", at_ms=at,
                     offsets={_name(tp): o for tp, o in sorted(self.start.items())})
        self.bounds: dict[TopicPartition, int] | None = None
        self.earliest: dict[TopicPartition, int] = {}
        self.finished: dict[TaskId, Task] = {}
        self._next_upstream_check = 0.0
        self._admin: AdminClient | None = None
        if s.until is None:
            return
        if compiled.repartition_topics and not compiled.watermark_propagation:
            raise TopologyError(
                f"until: {compiled.application_id!r} has repartition topics and "
                "watermark_propagation=False; the end of input crosses a repartition topic as "
                "a watermark control record, so bounded runs need watermark_propagation=True")
        ends = end_offsets(consumer, self.user_partitions, self._timeout_s)
        self.earliest = {tp: low for tp, (low, _) in ends.items()}
        if s.until == "end":
            self.bounds = {tp: high for tp, (_, high) in ends.items()}
        else:
            at = parse_instant(s.until)
            found = offsets_for_time(consumer, self.user_partitions, at, self._timeout_s)
            # Never past the last stable offset: a bounded run must not wait on a transaction
            # that another producer has left open.
            self.bounds = {tp: min(ends[tp][1], ends[tp][1] if o is None else o)
                           for tp, o in found.items()}
        log.info("run.bounded", until=s.until,
                 bounds={_name(tp): o for tp, o in sorted(self.bounds.items())})

    # -- the loop's hooks ------------------------------------------------------------------
    def admit(self, msgs: list[Any]) -> list[Any]:
        """The consumed messages before their partition's bound; the partitions of those past
        it are paused."""
        bounds = self.bounds
        if bounds is None:
            return msgs
        out: list[Any] = []
        past: set[TopicPartition] = set()
        for m in msgs:
            if m.error() is None:
                # A plain tuple finds the TopicPartition key (a NamedTuple) without building one.
                bound = bounds.get((m.topic(), m.partition()))  # type: ignore[call-overload]
                if bound is not None and m.offset() >= bound:
                    past.add(TopicPartition(m.topic(), m.partition()))
                    continue
            out.append(m)
        if past:
            self._pause(past)
        return out

    def step(self, control: RunControl) -> bool:
        """Finish the tasks whose input has ended; True when this instance is done."""
        if self.bounds is None:
            return False
        tasks = control.tasks
        # A task object that is no longer the instance's was closed (revoked, or reopened from
        # its committed state after a failed checkpoint): it must finish again.
        self.finished = {tid: t for tid, t in self.finished.items() if tasks.get(tid) is t}
        pending = [t for t in tasks.values() if t.running and t.id not in self.finished]
        if pending:
            done = self._ended(pending, control.assigned)
            if done:
                for task in done:
                    self._finish(task)
                control.checkpoint("end-of-input")
                self.finished = {tid: t for tid, t in self.finished.items()
                                 if tasks.get(tid) is t}
        assigned = control.assigned
        if not assigned:
            return False
        sub_of = self.compiled.topic_subtopology
        owned = {TaskId(sub_of[tp.topic], tp.partition) for tp in assigned}
        if not all(tid in self.finished for tid in owned):
            return False
        # Commit everything while still a member of the group (the offsets are committed with
        # its generation), then leave it: a static member would otherwise stay in the group
        # for session.timeout.ms, holding up a reset and the takeover of its partitions.
        if not control.checkpoint("end-of-input"):
            return False  # reopened from the committed state: the tasks finish again
        control.leave_group()
        log.info("run.input_ended", tasks=sorted(str(t) for t in owned))
        return True

    # -- deciding that a task's input has ended ----------------------------------------------
    def _ended(self, pending: list[Task], assigned: Set[TopicPartition]) -> list[Task]:
        internal_topics = self.compiled.repartition_topics
        candidates: list[tuple[Task, list[TopicPartition]]] = []
        for task in pending:
            tps = [TopicPartition(t, task.partition) for t in task.subtopology.source_topics]
            if all(tp in assigned for tp in tps):
                candidates.append((task, tps))
        if not candidates:
            return []
        positions = self._positions([tp for _, tps in candidates for tp in tps])
        done: list[Task] = []
        behind: list[tuple[Task, list[TopicPartition]]] = []
        for task, tps in candidates:
            own = [tp for tp in tps if tp.topic not in internal_topics]
            internal = [tp for tp in tps if tp.topic in internal_topics]
            if not all(self._reached_bound(task, tp, positions) for tp in own):
                continue
            if not internal:
                done.append(task)
            elif all(self._heard_end(task, tp.topic) or not self._upstream_flushes(tp.topic)
                     for tp in internal):
                behind.append((task, internal))
        now = time.monotonic()
        if behind and now >= self._next_upstream_check:
            self._next_upstream_check = now + self._poll_s
            flowed, stable = self._upstream()
            # Read after the last stable offsets: what they include has been consumed.
            positions = self._positions([tp for _, internal in behind for tp in internal])
            for task, internal in behind:
                # The committed offset counts too: a task taken over after it had read
                # everything may never be sent another record (its position stays unknown).
                reached = {tp: max(positions.get(tp, -1), task.next_offsets.get(tp, -1))
                           for tp in internal}
                if all(flowed[internal_topics[tp.topic][0]] and reached[tp] >= stable[tp]
                       for tp in internal):
                    for tp in internal:  # past the last record: transaction markers
                        task.next_offsets[tp] = reached[tp]
                    done.append(task)
        return done

    def _positions(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        return {TopicPartition(p.topic, p.partition): p.offset
                for p in self.consumer.position([_ktp(tp) for tp in tps])}

    def _reached_bound(self, task: Task, tp: TopicPartition,
                       positions: dict[TopicPartition, int]) -> bool:
        assert self.bounds is not None
        bound = self.bounds[tp]
        reached = max(task.next_offsets.get(tp, -1), positions.get(tp, -1))
        return reached >= bound or bound <= self.earliest[tp]

    def _upstream_flushes(self, topic: str) -> bool:
        """Whether finishing the sub-topology writing ``topic`` can still produce output (it
        acts on event time: windows, timers). If not, its committed offsets alone say that all
        of its output is in: the end-of-time watermarks are not needed, which matters because
        a task that is not time-aware keeps no record of them, so one taken over from another
        instance after they were sent would wait for them forever."""
        upstream = self.compiled.repartition_topics[topic][0]
        return self.compiled.subtopologies[upstream].time_aware

    @staticmethod
    def _heard_end(task: Task, topic: str) -> bool:
        """Every upstream task has sent this task the end-of-time watermark through ``topic``
        (this run's or an earlier one's: see the module docstring)."""
        ended = sum(1 for (t, _), (wm, _) in task.time.upstream.items()
                    if t == topic and wm == END_OF_TIME)
        return ended >= task.time.expected.get(topic, 0)

    def _upstream(self) -> tuple[dict[int, bool], dict[TopicPartition, int]]:
        """Per sub-topology: has all of its input flowed through (committed by the group)?
        Plus the last stable offset of every repartition partition, read after the committed
        offsets, so that an upstream commit seen in the first is included in the second."""
        assert self.bounds is not None
        compiled = self.compiled
        tasks_of = self._tasks_of
        internal = [TopicPartition(t, p) for t, (_, down, _) in compiled.repartition_topics.items()
                    for p in range(tasks_of[down])]
        committed = {TopicPartition(c.topic, c.partition): c.offset for c in
                     self.consumer.committed([_ktp(tp) for tp in [*self.bounds, *internal]],
                                             self._timeout_s)}
        stable = self._stable_offsets(internal)
        bounds, earliest = self.bounds, self.earliest
        flowed: dict[int, bool] = {}

        def sub_flowed(sid: int) -> bool:
            if sid not in flowed:
                ok = True
                for topic in compiled.subtopologies[sid].source_topics:
                    if topic in compiled.repartition_topics:
                        ok = ok and sub_flowed(compiled.repartition_topics[topic][0]) and all(
                            committed[tp] >= stable[tp] for tp in internal if tp.topic == topic)
                    else:
                        ok = ok and all(committed[tp] >= bounds[tp] or bounds[tp] <= earliest[tp]
                                        for tp in bounds if tp.topic == topic)
                flowed[sid] = ok
            return flowed[sid]

        for st in compiled.subtopologies:
            sub_flowed(st.id)
        return flowed, stable

    def _stable_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Last stable offsets, asked through an admin client: the consumer's own connection is
        busy with long-polling fetches (up to ``fetch.wait.max.ms`` per query)."""
        if self._admin is None:
            self._admin = new_admin(self._connection)
        futures = self._admin.list_offsets(
            {_ktp(tp): OffsetSpec.latest() for tp in tps},  # type: ignore[no-untyped-call]
            isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=self._timeout_s)
        return {TopicPartition(k.topic, k.partition): int(f.result().offset)
                for k, f in futures.items()}

    # -- finishing ---------------------------------------------------------------------------
    def _finish(self, task: Task) -> None:
        assert self.bounds is not None
        for tp in task.subtopology.source_topics:
            key = TopicPartition(tp, task.partition)
            bound = self.bounds.get(key)
            if bound is not None:
                # Past the last record there may be transaction markers or aborted records:
                # committing the bound itself makes the next run start exactly there.
                task.next_offsets[key] = max(task.next_offsets.get(key, bound), bound)
        task.finish()
        task.time.resend()  # its end-of-time watermark goes downstream in this checkpoint
        self.finished[task.id] = task
        self._pause([TopicPartition(t, task.partition) for t in task.subtopology.source_topics])
        log.info("run.task_finished", task=str(task.id),
                 offsets={_name(tp): o for tp, o in sorted(task.next_offsets.items())})

    def _pause(self, tps: Iterable[TopicPartition]) -> None:
        wanted = [_ktp(tp) for tp in tps if tp in self._assigned]
        if wanted:
            try:
                self.consumer.pause(wanted)
            except KafkaException as exc:  # revoked meanwhile: nothing to fetch anyway
                log.debug("run.pause_failed", error=str(exc))
