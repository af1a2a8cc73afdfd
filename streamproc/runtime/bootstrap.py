"""Tables first: a task that starts holds its streams until its tables have caught up.

A task joining a stream with a table reads both topics from their committed offsets. Without a
rule, the consumer fetches whichever it likes first, and a stream's backlog joined before the
table has read its own backlog finds no rows (on a first start: none at all). So when a task
starts, each of its tables is read up to the end its topic had at that moment, and only then
are the task's other partitions resumed. After that, both are read as they come (docs/joins.md:
a lookup sees the table as of the record's processing).

The end is the topic's high watermark. Under read_committed an open transaction in the table's
topic keeps the position below it until the transaction ends; a hold whose position has not
moved for ``stall_s`` is released with a warning rather than stopping the task's streams for a
transaction timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc.runtime.task import Task
from streamproc.types import TaskId, TopicPartition

log = structlog.get_logger(__name__)

STALL_S = 30.0


@dataclass
class _Hold:
    task: Task
    targets: dict[TopicPartition, int]  # table partition -> end offset to reach
    held: list[TopicPartition]  # the task's other partitions, paused until then
    started: float
    moved: float  # when a table position last moved
    positions: dict[TopicPartition, int] = field(default_factory=dict)


class TableBootstrap:
    def __init__(self, consumer: Consumer, timeout_s: float, *, stall_s: float = STALL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._consumer = consumer
        self._timeout_s = timeout_s
        self._stall_s = stall_s
        self._clock = clock
        self._holds: dict[TaskId, _Hold] = {}

    @property
    def active(self) -> bool:
        return bool(self._holds)

    def held(self, task: Task) -> list[TopicPartition]:
        hold = self._holds.get(task.id)
        return list(hold.held) if hold is not None else []

    def start(self, task: Task, tps: list[TopicPartition],
              positions: dict[TopicPartition, int]) -> list[TopicPartition]:
        """Of ``tps`` (sought to ``positions``; absent: no committed offset, read from the
        beginning), the partitions to resume now: all of them, unless a table is behind."""
        tables = [tp for tp in task.source_backed.values() if tp in tps]
        others = [tp for tp in tps if tp not in tables]
        if not tables or not others:
            return tps
        targets: dict[TopicPartition, int] = {}
        for tp in tables:
            try:
                low, high = self._consumer.get_watermark_offsets(
                    KafkaTopicPartition(tp.topic, tp.partition), timeout=self._timeout_s)
            except KafkaException as exc:
                # No end offset (a broker that does not answer): hold on nothing rather than
                # fail the task's start; the streams then read beside the table.
                log.warning("table.bootstrap_skipped", task=str(task.id),
                            table=f"{tp.topic}[{tp.partition}]", error=str(exc.args[0]))
                continue
            if high > max(positions.get(tp, low), low):
                targets[tp] = high
        if not targets:
            return tps
        now = self._clock()
        self._holds[task.id] = _Hold(task, targets, others, now, now)
        log.info("table.bootstrap_started", task=str(task.id),
                 tables=[f"{t}[{p}]" for t, p in targets], to_offsets=list(targets.values()))
        return tables

    def forget(self, task: Task) -> None:
        self._holds.pop(task.id, None)

    def release(self) -> list[tuple[Task, list[TopicPartition]]]:
        """The holds that have ended (every table reached its end, or stalled): each task with
        the partitions to resume now."""
        done: list[tuple[Task, list[TopicPartition]]] = []
        now = self._clock()
        for tid, hold in list(self._holds.items()):
            got = self._consumer.position(
                [KafkaTopicPartition(t, p) for t, p in hold.targets])
            behind = False
            for kp in got:
                tp = TopicPartition(kp.topic, kp.partition)
                if kp.offset >= 0 and kp.offset != hold.positions.get(tp):
                    hold.positions[tp] = kp.offset
                    hold.moved = now
                if kp.offset < hold.targets[tp]:
                    behind = True
            if behind and now - hold.moved < self._stall_s:
                continue
            del self._holds[tid]
            figures = {"task": str(tid), "seconds": round(now - hold.started, 3)}
            if behind:
                log.warning("table.bootstrap_stalled", **figures,
                            positions={f"{t}[{p}]": o for (t, p), o in hold.positions.items()},
                            targets={f"{t}[{p}]": o for (t, p), o in hold.targets.items()},
                            reason="no progress: an open transaction in the table's topic?")
            else:
                log.info("table.bootstrap_completed", **figures)
            done.append((hold.task, hold.held))
        return done
