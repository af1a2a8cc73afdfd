"""The consumer loop: poll, route, process; and the cadence of everything else.

The loop knows nothing of what operators do: it consumes a batch, routes it by partition to
tasks, lets restoring tasks catch up, ticks time-aware tasks, and asks the checkpoint
coordinator for a checkpoint every ``commit_interval_ms``. A bounded run (runtime/bounded.py)
is a policy it consults once per batch; listeners (runtime/observe.py) get a tick per
iteration.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Set
from typing import Any, Protocol

import structlog
from confluent_kafka import Consumer, KafkaError

from streamproc.config import Settings
from streamproc.errors import ConsumerFailed
from streamproc.kafka.acls import refusal
from streamproc.kafka.admin import TopicAdmin
from streamproc.metrics import Metrics
from streamproc.runtime import faults
from streamproc.runtime.checkpoint import Checkpointer, now_ms
from streamproc.runtime.collector import Collector
from streamproc.runtime.globals import GlobalTables
from streamproc.runtime.observe import Listeners
from streamproc.runtime.rebalance import Rebalancer
from streamproc.runtime.restore import Restorer
from streamproc.runtime.task import Task
from streamproc.types import TaskId, TopicPartition

log = structlog.get_logger(__name__)

_STATS_EVERY_S = 10.0
# A subscription pattern no topic can match ('~' is not allowed in topic names): adding it
# changes the subscription, which makes the member rejoin (see ConsumerLoop.rejoin_once).
REJOIN_PATTERN = "^streamproc~rejoin$"


class RunControl(Protocol):
    """What a run policy may see and do of the instance."""

    @property
    def tasks(self) -> Mapping[TaskId, Task]: ...

    @property
    def assigned(self) -> Set[TopicPartition]: ...

    def checkpoint(self, reason: str) -> bool: ...

    def leave_group(self) -> None: ...


class RunPolicy(Protocol):
    """A run with an end (runtime/bounded.py): consulted once per consumed batch."""

    def admit(self, msgs: list[Any]) -> list[Any]:
        """The messages to process (those past a bound are dropped, their partitions paused)."""
        ...

    def step(self, control: RunControl) -> bool:
        """Finish what has ended; True when this instance is done (the loop ends)."""
        ...


class ConsumerLoop:
    def __init__(self, *, settings: Settings, consumer: Consumer, collector: Collector,
                 restorer: Restorer, rebalancer: Rebalancer, checkpointer: Checkpointer,
                 topic_subtopology: Mapping[str, int], timed: bool, admin: TopicAdmin | None,
                 policy: RunPolicy | None, metrics: Metrics, listeners: Listeners,
                 stop: threading.Event, global_tables: GlobalTables | None = None) -> None:
        self.settings = settings
        self.consumer = consumer
        self.collector = collector
        self.restorer = restorer
        self.rebalancer = rebalancer
        self.checkpointer = checkpointer
        self._sub_of = topic_subtopology
        self._timed = timed  # some task acts on time: tick it even without input
        self._admin = admin
        self._policy = policy
        self._metrics = metrics
        self._listeners = listeners
        self._stop = stop
        self._globals = global_tables if global_tables else None
        self._amo = settings.processing_guarantee == "at_most_once"
        self.processed = 0
        # A static member that restarts gets, without a rebalance, the assignment the group
        # last gave its previous incarnation. Under the cooperative protocol that can lack
        # partitions the leader withheld from it, to be revoked and handed to another member
        # in a follow-up rebalance that only the previous incarnation would have asked for:
        # if it died first, nobody asks, and those partitions stay unassigned until the next
        # rebalance, which may never come (the fault suite found this: reliability/). So once
        # this member has its first assignment it rejoins once: the group rebalances with
        # what every member really owns, and withheld partitions find an owner. Set by the
        # Application when it uses static membership with the cooperative protocol.
        self.rejoin_once: Callable[[], None] | None = None

    # -- RunControl (for the run policy) -------------------------------------------------------
    @property
    def tasks(self) -> Mapping[TaskId, Task]:
        return self.rebalancer.tasks

    @property
    def assigned(self) -> Set[TopicPartition]:
        return self.rebalancer.assigned

    def checkpoint(self, reason: str) -> bool:
        return self.checkpointer.checkpoint(reason)

    def leave_group(self) -> None:
        """Leave the consumer group now (even as a static member: nothing is going to restart
        this instance), waiting until the revoke has run and the member id is gone."""
        consumer = self.consumer
        consumer.unsubscribe()
        timeout_s = min(30.0, self.settings.max_poll_interval_ms / 4000)
        poll_s = self.settings.poll_timeout_ms / 1000
        deadline = time.monotonic() + timeout_s
        # The revoke callback runs inside poll; the member id is gone once the leave is sent.
        while (self.rebalancer.assigned or consumer.memberid()) and time.monotonic() < deadline:
            consumer.poll(poll_s)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        s = self.settings
        collector, restorer, policy = self.collector, self.restorer, self._policy
        rebalancer, checkpointer, listeners = self.rebalancer, self.checkpointer, self._listeners
        tasks = rebalancer.tasks
        interval = s.commit_interval_ms / 1000
        next_checkpoint = time.monotonic() + interval
        next_stats = time.monotonic() + _STATS_EVERY_S
        purge_s = s.repartition_purge_interval_ms / 1000
        next_purge = time.monotonic() + purge_s
        poll_s = s.poll_timeout_ms / 1000
        next_tick = time.monotonic()
        stopped = self._stop.is_set
        while not stopped():
            # Never block past the next checkpoint: under exactly-once the output becomes
            # visible only when it commits, so a late barrier is added latency.
            wait = 0.0 if restorer.active else min(poll_s, next_checkpoint - time.monotonic())
            msgs = self._consume(s.consume_batch_size, max(wait, 0.0))
            if self._globals is not None:
                self._globals.step()  # rows that arrived meanwhile, before the batch's lookups
            if msgs and policy is not None:
                msgs = policy.admit(msgs)  # nothing at or past a bound
            if msgs:
                self._route(msgs)
                faults.hit("after_process")
            if policy is not None and policy.step(self):
                break  # a bounded run: every task's input ended, the shutdown commits
            if restorer.active:
                for task in restorer.step(poll_s if not msgs else 0.0):
                    rebalancer.restored(task)
            if rebalancer.unstarted:
                rebalancer.start_deferred()
            if rebalancer.bootstrap.active:
                rebalancer.release_held()
            if self.rejoin_once is not None and rebalancer.assignments:
                rejoin, self.rejoin_once = self.rejoin_once, None
                log.info("rebalance.rejoin", reason="first assignment of a static member")
                rejoin()
            collector.poll()
            now = time.monotonic()
            listeners.tick(now)
            if self._timed and now >= next_tick:
                # Idleness, processing-time timers and early firings need the clock to move
                # the task even when no input arrives.
                next_tick = now + poll_s
                wall = now_ms()
                for task in tasks.values():
                    if task.running:
                        task.tick(wall)
            if now >= next_checkpoint:
                checkpointer.checkpoint("interval")
                # A fixed cadence (the interval is the period, not the gap after a checkpoint),
                # without bursts of catch-up checkpoints after a slow one.
                next_checkpoint = max(next_checkpoint + interval, time.monotonic())
            if now >= next_stats:
                next_stats = now + _STATS_EVERY_S
                self._log_stats()
            if now >= next_purge and checkpointer.purgeable and self._admin is not None:
                next_purge = now + purge_s
                self._admin.purge(checkpointer.purgeable)
                checkpointer.purgeable = {}

    def _consume(self, n: int, wait_s: float) -> list[Any]:
        """Up to ``n`` messages, waiting at most ``wait_s`` for the first one.

        librdkafka's batch consume waits out its whole timeout unless the batch fills up, which
        adds up to a poll timeout of latency at moderate rates. So: take what is queued, and if
        nothing is, wait for one message (poll returns as soon as there is one), then take what
        arrived with it.
        """
        consumer = self.consumer
        msgs: list[Any] = consumer.consume(n, 0)
        if msgs or wait_s <= 0:
            return msgs
        first = consumer.poll(wait_s)
        if first is None:
            return []
        return [first, *consumer.consume(n - 1, 0)] if n > 1 else [first]

    def _route(self, msgs: list[Any]) -> None:
        buckets: dict[TopicPartition, list[Any]] = {}
        # A consumed batch comes in runs of one partition: look the bucket up once per run, not
        # once per message (a TopicPartition per message was a measurable share of the loop).
        cur_topic: str | None = None
        cur_part = -1
        append: Any = None
        for m in msgs:
            if m.error() is not None:
                self._consume_error(m.error())
                continue
            part, topic = m.partition(), m.topic()
            if part != cur_part or topic != cur_topic:
                cur_topic, cur_part = topic, part
                tp = TopicPartition(topic, part)
                bucket = buckets.get(tp)
                if bucket is None:
                    bucket = buckets[tp] = []
                append = bucket.append
            append(m)
        if not buckets:
            return
        rebalancer = self.rebalancer
        assigned, strays, tasks = rebalancer.assigned, rebalancer.strays, rebalancer.tasks
        if self._amo:
            self.checkpointer.commit_before_processing(
                {tp: b[-1].offset() + 1 for tp, b in buckets.items() if tp in assigned})
        sub_of = self._sub_of
        for tp, batch in buckets.items():
            task = tasks.get(TaskId(sub_of[tp.topic], tp.partition))
            if task is None or not task.running or tp not in assigned:
                if tp in strays and tp in assigned:
                    self.processed += strays.process(tp, batch)
                continue  # revoked, or restoring: it will seek to the committed offset
            n = task.process(tp, batch)
            self.processed += n
            self._metrics.inc("records_consumed_total", n, topic=tp.topic, partition=tp.partition)

    def _consume_error(self, err: KafkaError) -> None:
        refused = refusal(err, "consuming")
        if refused is not None:
            raise refused  # retrying cannot help: stop, naming the permission
        if err.fatal() or err.code() == KafkaError._FATAL:
            # The consumer reports its fatal state as an error event whose own fatal() flag
            # is false: polling on would only return it again, forever.
            raise ConsumerFailed(f"the consumer failed: {err.str()}")
        if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART and REJOIN_PATTERN in err.str():
            return  # the pattern of rejoin_once matches nothing on purpose
        log.warning("consumer.error", error=str(err), code=err.code())

    def _log_stats(self) -> None:
        tasks = self.rebalancer.tasks
        restoring = sum(1 for t in tasks.values() if not t.running)
        log.info("instance.stats", processed=self.processed,
                 checkpoints=self.checkpointer.count, produced=self.collector.produced,
                 tasks_running=len(tasks) - restoring, tasks_restoring=restoring,
                 failed_records=self._metrics.total("records_failed_total"))
