"""The instance: one consumer-group member running every task it is assigned.

The loop knows nothing of what operators do: it consumes a batch, routes it by partition to
tasks, lets restoring tasks catch up, and takes a checkpoint every ``commit_interval_ms``.

Checkpoint protocols (design.md):
- exactly_once: changelog records join the open transaction; flush; the consumer positions are
  added with the group metadata (KIP-447 fencing); commit; only then RocksDB is written
  (atomically with its changelog offset); a new transaction begins.
- at_least_once: flush output + changelog, write RocksDB, then commit offsets.
- at_most_once: offsets are committed before a batch is processed.
Any failure discards all uncommitted work: a new producer fences the old one, every task is
reopened from its committed state and re-consumes from the committed offsets.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import structlog
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc.api.topology import Topology
from streamproc.config import Settings
from streamproc.connection import kafka_connection
from streamproc.errors import ProcessingFailed, StreamprocError, TransactionAborted
from streamproc.graph.binding import bind_codecs
from streamproc.graph.compile import CompiledTopology, compile_topology
from streamproc.kafka.acls import NotAuthorized, refusal
from streamproc.kafka.admin import TopicAdmin
from streamproc.kafka.clients import (
    consumer_config,
    new_consumer,
    producer_config,
    restore_consumer_config,
)
from streamproc.metrics import Metrics
from streamproc.ops.monitor import InstanceMonitor
from streamproc.runtime import faults
from streamproc.runtime.bounded import Bounded
from streamproc.runtime.collector import Collector, offset_list
from streamproc.runtime.deadletter import dead_letter
from streamproc.runtime.limits import (
    DEFAULT_MAX_RECORD_BYTES,
    OutputTime,
    StateGuard,
    TimeBounds,
    sized,
    write_limits,
    written_topics,
)
from streamproc.runtime.plan import (
    Plan,
    control_partitions,
    needs_colocation,
    resolve,
    upstream_tasks,
)
from streamproc.runtime.restore import Restorer
from streamproc.runtime.statedir import StateDir
from streamproc.runtime.strays import StrayPartitions
from streamproc.runtime.task import Task
from streamproc.time.watermarks import control_key
from streamproc.types import Origin, TaskId, TopicPartition

log = structlog.get_logger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)

_STATS_EVERY_S = 10.0


class Application:
    def __init__(self, topology: Topology, settings: Settings, *, bootstrap: str) -> None:
        self.topology = topology
        self.settings = settings
        self.bootstrap = bootstrap
        self.compiled: CompiledTopology = compile_topology(topology)
        bind_codecs(self.compiled, settings.registry())
        self.app_id = topology.application_id
        self.metrics = Metrics()
        self.guarantee = settings.processing_guarantee
        self._eos = self.guarantee == "exactly_once"
        self._stop = False
        self._failed: BaseException | None = None
        self.tasks: dict[TaskId, Task] = {}
        self._assigned: set[TopicPartition] = set()
        self._policies = {t: self.compiled.source_node(t).on_error
                          for t in self.compiled.topic_subtopology}
        self._cooperative = not needs_colocation(self.compiled)
        self._statedir = StateDir(settings.state_dir, self.app_id)
        self._op_timeout_s = min(30.0, settings.max_poll_interval_ms / 4000)
        self._consumer: Consumer | None = None
        self._collector: Collector | None = None
        self._restorer: Restorer | None = None
        self._reset_to = OFFSET_BEGINNING
        self._plan: Plan | None = None
        self._admin: TopicAdmin | None = None
        self._purgeable: dict[tuple[str, int], int] = {}  # committed repartition offsets
        self._bounded: Bounded | None = None  # until / from_datetime (runtime/bounded.py)
        # Bad input limits (runtime/limits.py): resolved against the written topics at start.
        self.max_record_bytes = settings.max_record_bytes or DEFAULT_MAX_RECORD_BYTES
        self._output_time: dict[str, OutputTime] = {}
        self._time_bounds = TimeBounds(settings.min_timestamp_ms, settings.max_future_skew_ms)
        self._guard = StateGuard()  # state keys whose value outgrew max_record_bytes
        secret = settings.control_signing_key
        self._control_key = control_key(
            self.app_id, secret.get_secret_value().encode() if secret is not None else None)
        self._strays = StrayPartitions(self._on_error, self.metrics.inc)
        self.processed = 0
        self.checkpoints = 0
        self._started = True  # False once a start failed: nothing to fence or commit
        self.ops = InstanceMonitor(self)  # status, /metrics, the HTTP server (streamproc/ops)

    # -- public -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish: final checkpoint, stores closed. Safe from a signal handler."""
        self._stop = True

    def run(self) -> int:
        """Run until :meth:`stop`; returns the process exit code (0 clean, 1 failed). A start
        that fails (bad configuration, a refused savepoint, no cluster) raises, after releasing
        what it had taken (the state dir lock, the clients)."""
        try:
            self._start()
        except BaseException as exc:
            self._failed = exc
            self._started = False
            try:
                self._shutdown()
            except Exception as cleanup:  # the start's error is the one to report
                log.debug("instance.cleanup_failed", error=str(cleanup))
            raise
        try:
            self._loop()
        except ProcessingFailed as exc:
            self._failed = exc
            log.error("instance.failed", error=str(exc), policy="fail", topic=exc.topic,
                      partition=exc.partition, offset=exc.offset)
        except NotAuthorized as exc:  # a configuration problem: one line, no traceback
            self._failed = exc
            log.error("instance.not_authorized", error=str(exc))
        except StreamprocError as exc:
            # An expected failure the engine raised on purpose (a stalled restore, a state
            # schema that no longer decodes, an unreachable registry): one line that says it.
            self._failed = exc
            log.error("instance.stopped_on_error", error=str(exc),
                      error_type=type(exc).__name__)
        except Exception as exc:
            self._failed = exc
            log.exception("instance.crashed", error=str(exc))
        finally:
            self._shutdown()
        return 1 if self._failed else 0

    # -- observation (streamproc/ops reads these on the loop's thread) ---------------------------
    @property
    def failure(self) -> BaseException | None:
        """Why the instance stopped, once it stopped on an error (None while it runs)."""
        return self._failed

    @property
    def consumer(self) -> Consumer | None:
        return self._consumer

    @property
    def collector(self) -> Collector | None:
        return self._collector

    @property
    def restorer(self) -> Restorer | None:
        return self._restorer

    @property
    def admin(self) -> TopicAdmin | None:
        return self._admin

    @property
    def plan(self) -> Plan | None:
        """Tasks per sub-topology, once resolved against the cluster at start."""
        return self._plan

    @property
    def assigned(self) -> frozenset[TopicPartition]:
        return frozenset(self._assigned)

    # -- start and stop ------------------------------------------------------------------------
    def _start(self) -> None:
        s = self.settings
        self._admin = TopicAdmin(self.bootstrap,
                                 client_config=kafka_connection(s, self.bootstrap))
        plan = self._plan = resolve(self.compiled, self._admin)
        self._resolve_limits()
        self._statedir.lock()
        marker = self._from_savepoint(plan) if s.from_savepoint is not None else None
        instance = self._statedir.instance_id(s.instance_id)
        txid = f"{self.app_id}-{instance}" if self._eos else None
        self._collector = Collector(
            lambda: self.ops.producer_config(sized(
                producer_config(s, self.bootstrap, txid, f"{self.app_id}-{instance}"),
                self.max_record_bytes)),
            transactional=self._eos, op_timeout_s=self._op_timeout_s)
        self._collector.offset_metadata = marker
        self._collector.init()
        self._collector.begin()
        cconf = consumer_config(s, self.bootstrap, self.app_id, instance)
        if not self._cooperative:
            cconf["partition.assignment.strategy"] = "range"
        if str(cconf.get("auto.offset.reset")) in ("latest", "largest", "end"):
            self._reset_to = OFFSET_END
        self._consumer = new_consumer(cconf)
        if s.until is not None or s.from_datetime is not None:
            self._bounded = Bounded(self, self._consumer)
        self._restorer = Restorer(restore_consumer_config(s, self.bootstrap, self.app_id),
                                  s.restore_batch_size, consumer=new_consumer)
        topics = list(self.compiled.topic_subtopology)
        self._consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)
        self.ops.start(instance)
        log.info("instance.started", app=self.app_id, instance=instance,
                 guarantee=self.guarantee, commit_interval_ms=s.commit_interval_ms,
                 assignor="cooperative-sticky" if self._cooperative else "range",
                 topics=topics, tasks_per_subtopology=plan.partitions,
                 state_dir=str(self._statedir.path), brokers=self.bootstrap)

    def _resolve_limits(self) -> None:
        """``max_record_bytes`` and the output timestamp ranges, from the configuration of every
        topic this instance writes (a record over either would fail its whole transaction at
        the broker, and the replay would fail the same way: a crash loop)."""
        assert self._admin is not None
        self.max_record_bytes, self._output_time = write_limits(
            self._admin.configs(written_topics(self.compiled)), self.settings.max_record_bytes,
            int(self.settings.producer_config.get("message.max.bytes",
                                                  DEFAULT_MAX_RECORD_BYTES)))
        log.info("instance.limits", max_record_bytes=self.max_record_bytes,
                 min_timestamp_ms=self.settings.min_timestamp_ms,
                 max_future_skew_ms=self.settings.max_future_skew_ms,
                 output_timestamp_limits={t: [o.before_ms, o.after_ms]
                                          for t, o in self._output_time.items()})

    def _from_savepoint(self, plan: Plan) -> str:
        """Seed this application from ``from_savepoint`` (once: savepoints/apply.py); returns
        the offset metadata every commit carries from now on."""
        from streamproc.savepoints import apply

        s = self.settings
        assert s.from_savepoint is not None
        sp, mapping = apply.load(s.from_savepoint, self.compiled, plan.partitions,
                                 s.savepoint_drops)
        apply.apply(sp, mapping, self.compiled,
                    producer_conf=producer_config(s, self.bootstrap, None,
                                                  f"{self.app_id}-savepoint"),
                    consumer_conf={**kafka_connection(s, self.bootstrap), **s.consumer_config},
                    app_dir=self._statedir.path)
        return apply.offset_metadata(sp.manifest)

    def _shutdown(self) -> None:
        self.ops.shutting_down(self._failed)
        consumer, collector = self._consumer, self._collector
        if self._failed is None and collector is not None and consumer is not None:
            self._checkpoint("shutdown")
        if self._failed is not None and collector is not None and self._eos and self._started:
            collector.reset()  # fences and aborts the open transaction: nothing past it commits
        if consumer is not None:
            consumer.close()  # revokes: the callback closes the tasks
        for task in list(self.tasks.values()):
            task.close()
        self.tasks.clear()
        if self._restorer is not None:
            self._restorer.close()
        if collector is not None:
            collector.close(self._op_timeout_s)
        # Drop the clients now, not when the Application object is collected: their threads
        # would otherwise keep reconnecting to the cluster.
        self._collector = self._consumer = self._restorer = self._admin = None
        self._bounded = None
        self._statedir.unlock()
        log.info("instance.stopped", app=self.app_id, processed=self.processed,
                 checkpoints=self.checkpoints, failed=self._failed is not None)
        self.ops.stop()

    # -- the loop ------------------------------------------------------------------------------
    def _loop(self) -> None:
        s = self.settings
        consumer, collector, restorer = self._consumer, self._collector, self._restorer
        assert consumer is not None and collector is not None and restorer is not None
        interval = s.commit_interval_ms / 1000
        next_checkpoint = time.monotonic() + interval
        next_stats = time.monotonic() + _STATS_EVERY_S
        purge_s = s.repartition_purge_interval_ms / 1000
        next_purge = time.monotonic() + purge_s
        poll_s = s.poll_timeout_ms / 1000
        timed = any(st.time_aware or st.repartition_sinks for st in self.compiled.subtopologies)
        next_tick = time.monotonic()
        while not self._stop:
            # Never block past the next checkpoint: under exactly-once the output becomes
            # visible only when it commits, so a late barrier is added latency.
            wait = 0.0 if restorer.active else min(poll_s, next_checkpoint - time.monotonic())
            msgs = self._consume(s.consume_batch_size, max(wait, 0.0))
            if msgs and self._bounded is not None:
                msgs = self._bounded.admit(msgs)  # nothing at or past a bound
            if msgs:
                self._route(msgs)
                faults.hit("after_process")
            if self._bounded is not None and self._bounded.step():
                break  # a bounded run: every task's input ended, the shutdown commits
            if restorer.active:
                for task in restorer.step(poll_s if not msgs else 0.0):
                    self._start_task(task)
            collector.poll()
            now = time.monotonic()
            self.ops.tick(now)
            if timed and now >= next_tick:
                # Idleness, processing-time timers and early firings need the clock to move
                # the task even when no input arrives.
                next_tick = now + poll_s
                wall = _now_ms()
                for task in self.tasks.values():
                    if task.running:
                        task.tick(wall)
            if now >= next_checkpoint:
                self._checkpoint("interval")
                # A fixed cadence (the interval is the period, not the gap after a checkpoint),
                # without bursts of catch-up checkpoints after a slow one.
                next_checkpoint = max(next_checkpoint + interval, time.monotonic())
            if now >= next_stats:
                next_stats = now + _STATS_EVERY_S
                self._log_stats()
            if now >= next_purge and self._purgeable and self._admin is not None:
                next_purge = now + purge_s
                self._admin.purge(self._purgeable)
                self._purgeable = {}

    def _consume(self, n: int, wait_s: float) -> list[Any]:
        """Up to ``n`` messages, waiting at most ``wait_s`` for the first one.

        librdkafka's batch consume waits out its whole timeout unless the batch fills up, which
        adds up to a poll timeout of latency at moderate rates. So: take what is queued, and if
        nothing is, wait for one message (poll returns as soon as there is one), then take what
        arrived with it.
        """
        consumer = self._consumer
        assert consumer is not None
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
        if self.guarantee == "at_most_once":
            self._commit_before_processing(buckets)
        sub_of = self.compiled.topic_subtopology
        for tp, batch in buckets.items():
            task = self.tasks.get(TaskId(sub_of[tp.topic], tp.partition))
            if task is None or not task.running or tp not in self._assigned:
                if tp in self._strays and tp in self._assigned:
                    self.processed += self._strays.process(tp, batch)
                continue  # revoked, or restoring: it will seek to the committed offset
            n = task.process(tp, batch)
            self.processed += n
            self.metrics.inc("records_consumed_total", n, topic=tp.topic, partition=tp.partition)

    def _consume_error(self, err: KafkaError) -> None:
        refused = refusal(err, "consuming")
        if refused is not None:
            raise refused  # retrying cannot help: stop, naming the permission
        if err.fatal():
            raise KafkaException(err)
        log.warning("consumer.error", error=str(err), code=err.code())

    def _commit_before_processing(self, buckets: dict[TopicPartition, list[Any]]) -> None:
        assert self._consumer is not None and self._collector is not None
        offsets = {tp: b[-1].offset() + 1 for tp, b in buckets.items() if tp in self._assigned}
        if offsets:
            self._consumer.commit(offsets=offset_list(offsets, self._collector.offset_metadata),
                                  asynchronous=False)

    # -- tasks ---------------------------------------------------------------------------------
    def _create_task(self, tid: TaskId) -> None:
        assert self._restorer is not None and self._collector is not None
        assert self._plan is not None
        st = self.compiled.subtopologies[tid.subtopology]
        changelogs = self.compiled.changelog_topics
        task = Task(
            tid, st, app_dir=self._statedir.path,
            changelog_topic=lambda store: changelogs[store][1],
            producer=self._collector.producer,
            produced=self._collector.count_produced, on_error=self._on_error,
            cache_max_keys=self.settings.state_cache_max_keys,
            max_record_bytes=self.max_record_bytes,
            clock=_now_ms, count=self.metrics.inc,
            upstream_tasks=upstream_tasks(self.compiled, st, self._plan.partitions),
            control_partitions=control_partitions(self.compiled, st, self._plan.partitions),
            time_bounds=self._time_bounds, output_time=self._output_time, guard=self._guard,
            control_key=self._control_key,
        )
        wiped = task.open()
        if wiped:
            self.metrics.inc("state_rebuilds_total", len(wiped), task=str(tid))
        self.tasks[tid] = task
        self._restorer.add(task)
        if not self._restorer.is_restoring(task):
            self._start_task(task)

    def _task_partitions(self, task: Task) -> list[TopicPartition]:
        return [TopicPartition(t, task.partition) for t in task.subtopology.source_topics
                if TopicPartition(t, task.partition) in self._assigned]

    def _start_task(self, task: Task, only: Iterable[TopicPartition] | None = None) -> None:
        """Seek the task's partitions to their committed offsets and resume them."""
        consumer = self._consumer
        assert consumer is not None
        tps = list(only) if only is not None else self._task_partitions(task)
        if not tps:
            task.start()
            return
        committed = consumer.committed(
            [KafkaTopicPartition(tp.topic, tp.partition) for tp in tps], self._op_timeout_s)
        positions: dict[TopicPartition, int] = {}
        for c in committed:
            tp = TopicPartition(c.topic, c.partition)
            if c.offset >= 0:
                positions[tp] = c.offset
            consumer.seek(KafkaTopicPartition(c.topic, c.partition,
                                              c.offset if c.offset >= 0 else self._start_at(tp)))
        task.next_offsets.update(positions)
        task.mark_committed(positions)
        task.start()
        consumer.resume([KafkaTopicPartition(tp.topic, tp.partition) for tp in tps])
        log.info("task.running", task=str(task.id), partitions=[f"{t}[{p}]" for t, p in tps],
                 committed=[positions.get(tp) for tp in tps])

    def _start_at(self, tp: TopicPartition) -> int:
        """Where a partition without a committed offset starts: ``from_datetime``'s offset for a
        user source partition, else ``auto.offset.reset``."""
        start = self._bounded.start.get(tp) if self._bounded is not None else None
        return self._reset_to if start is None else start

    def _close_task(self, task: Task) -> None:
        assert self._restorer is not None
        self._restorer.remove(task)
        task.close()
        self.tasks.pop(task.id, None)

    # -- rebalance callbacks (run inside consumer.consume) -------------------------------------
    def _on_assign(self, consumer: Consumer, parts: list[KafkaTopicPartition]) -> None:
        if self._cooperative:
            consumer.incremental_assign(parts)
        else:
            consumer.assign(parts)
        if not parts:
            return
        # Nothing is fetched for a task until its stores are restored and it has sought to
        # the committed offsets.
        consumer.pause(parts)
        self.metrics.inc("rebalances_total")
        sub_of = self.compiled.topic_subtopology
        fresh: set[TaskId] = set()
        planned = self._plan.partitions if self._plan is not None else {}
        for p in parts:
            tp = TopicPartition(p.topic, p.partition)
            self._assigned.add(tp)
            sub = sub_of[p.topic]
            if p.partition >= planned.get(sub, p.partition + 1):
                self._start_stray(tp, planned[sub])
                continue
            tid = TaskId(sub, p.partition)
            task = self.tasks.get(tid)
            if task is None:
                fresh.add(tid)
            elif task.running:
                self._start_task(task, only=[tp])  # one more topic of a running task
        log.info("rebalance.assigned", partitions=[f"{p.topic}[{p.partition}]" for p in parts],
                 new_tasks=sorted(str(t) for t in fresh))
        for tid in sorted(fresh):
            self._create_task(tid)

    def _start_stray(self, tp: TopicPartition, planned: int) -> None:
        assert self._consumer is not None
        self._strays.start(self._consumer, tp, planned, self._start_at(tp), self._op_timeout_s)

    def _on_revoke(self, consumer: Consumer, parts: list[KafkaTopicPartition]) -> None:
        revoked = {TopicPartition(p.topic, p.partition) for p in parts}
        log.info("rebalance.revoked", partitions=[f"{p.topic}[{p.partition}]" for p in parts])
        committed = True
        if self._failed is None and revoked and self._collector is not None:
            committed = self._checkpoint("revoke", recover=False)
        self._assigned -= revoked
        self._strays.remove(revoked)
        if not committed:
            self._recover("checkpoint failed during revoke")
        for task in list(self.tasks.values()):
            if not self._task_partitions(task):
                self._close_task(task)
        if self._cooperative:
            consumer.incremental_unassign(parts)
        else:
            consumer.unassign()

    def _on_lost(self, consumer: Consumer, parts: list[KafkaTopicPartition]) -> None:
        lost = {TopicPartition(p.topic, p.partition) for p in parts}
        log.warning("rebalance.lost", partitions=[f"{p.topic}[{p.partition}]" for p in parts])
        self._assigned -= lost
        self._strays.remove(lost)
        # Another member may already own them: our uncommitted work must not be committed,
        # and it shares one transaction with every other task, so all of it goes.
        self._recover("partitions lost")
        if self._cooperative:
            consumer.incremental_unassign(parts)
        else:
            consumer.unassign()

    # -- checkpoint and recovery ---------------------------------------------------------------
    def _checkpoint(self, reason: str, *, recover: bool = True) -> bool:
        collector, consumer = self._collector, self._consumer
        assert collector is not None and consumer is not None
        running = [t for t in self.tasks.values() if t.running]
        offsets: dict[TopicPartition, int] = {}
        for t in running:
            offsets.update(t.uncommitted_offsets())
        offsets.update(self._strays.uncommitted_offsets())
        changes = [(t, name, recs) for t in running
                   for name, recs in t.prepare_changes().items()]
        oversized = [e for t in running for e in t.oversized]
        if oversized:
            return self._state_too_large(oversized, reason, recover=recover)
        controls = [c for t in running for c in t.control_records()]
        if not offsets and not changes and not controls:
            return True
        started = time.monotonic()
        try:
            wall = _now_ms()
            for topic, partition, payload, headers in controls:
                collector.send(topic, None, payload, wall, list(headers), partition)
            for t, name, recs in changes:
                topic = t.changelog_topics[name]
                for key, value in recs:
                    collector.send_changelog(topic, t.partition, key, value)
            if self._eos:
                collector.commit_transaction(offsets, consumer.consumer_group_metadata())
            else:
                collector.flush()
            for t, name, recs in changes:
                t.stores[name].commit(recs, collector.changelog_next(t.changelog_topics[name],
                                                                     t.partition))
            if self.guarantee == "at_least_once" and offsets:
                consumer.commit(offsets=offset_list(offsets, collector.offset_metadata),
                                asynchronous=False)
        except (TransactionAborted, KafkaException) as exc:
            refused = collector.refused()
            if refused is not None:
                raise refused from None  # a replay would be refused the same way
            self.metrics.inc("checkpoint_failures_total")
            log.warning("checkpoint.failed", reason=reason, error=str(exc))
            if recover:
                self._recover(f"checkpoint failed: {exc}")
            return False
        for t in running:
            t.mark_committed({tp: o for tp, o in offsets.items() if tp in t.next_offsets})
        self._strays.mark_committed(offsets)
        for tp, o in offsets.items():  # committed: records before o are no longer needed
            if tp.topic in self.compiled.repartition_topics:
                self._purgeable[(tp.topic, tp.partition)] = o
        if self._eos:
            collector.begin()
        secs = time.monotonic() - started
        self.checkpoints += 1
        self.metrics.inc("checkpoints_total")
        self.metrics.inc("checkpoint_duration_seconds_total", secs)
        self.ops.checkpointed(secs, changes)
        log.debug("checkpoint.committed", reason=reason, partitions=len(offsets),
                  changelog_records=sum(len(r) for _, _, r in changes), seconds=round(secs, 4))
        return True

    def _state_too_large(self, oversized: list[tuple[TaskId, str, bytes, int]], reason: str,
                         *, recover: bool) -> bool:
        """State values the changelog cannot take: nothing of this interval commits; the keys
        are guarded and the input replayed, so that the records that made them too large are
        dead-lettered one by one (runtime/limits.py)."""
        for tid, store, key, size in oversized:
            self._guard.add(tid, store, key)
            log.warning("state.value_too_large", task=str(tid), store=store, key=key[:60],
                        size=size, max_record_bytes=self.max_record_bytes)
        self.metrics.inc("state_values_too_large_total", len(oversized))
        log.warning("checkpoint.failed", reason=reason, error="state values too large; "
                    "replaying with their keys checked per record")
        if recover:
            self._recover("state values too large")
        return False

    def _recover(self, reason: str) -> None:
        """Drop every uncommitted effect and resume all owned tasks from committed state."""
        collector, consumer = self._collector, self._consumer
        assert collector is not None and consumer is not None
        log.warning("instance.recovering", reason=reason, tasks=len(self.tasks))
        self.metrics.inc("transaction_aborts_total")
        collector.reset()
        for task in list(self.tasks.values()):
            self._close_task(task)
        if self._assigned:
            consumer.pause([KafkaTopicPartition(t, p) for t, p in self._assigned])
        sub_of = self.compiled.topic_subtopology
        strays = [tp for tp in self._assigned if tp in self._strays]
        for tid in sorted({TaskId(sub_of[tp.topic], tp.partition) for tp in self._assigned
                           if tp not in self._strays}):
            self._create_task(tid)
        planned = self._plan.partitions if self._plan is not None else {}
        for tp in strays:  # from their committed offsets again, like the tasks
            self._strays.remove({tp})
            self._start_stray(tp, planned[sub_of[tp.topic]])
        collector.begin()

    # -- bad input -----------------------------------------------------------------------------
    def _on_error(self, origin: Origin, exc: BaseException, where: str) -> None:
        letter = dead_letter(origin, exc, where, self._policies, self.topology.on_error,
                             self.metrics, _now_ms, self.max_record_bytes)
        if letter is not None:
            assert self._collector is not None
            key, value, ts, headers = letter
            self._collector.send(self.compiled.dead_letter_topic, key, value, ts, headers)

    def _log_stats(self) -> None:
        restoring = sum(1 for t in self.tasks.values() if not t.running)
        log.info("instance.stats", processed=self.processed, checkpoints=self.checkpoints,
                 produced=self._collector.produced if self._collector else 0,
                 tasks_running=len(self.tasks) - restoring, tasks_restoring=restoring,
                 failed_records=self.metrics.total("records_failed_total"))
