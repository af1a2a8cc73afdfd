"""The instance: one consumer-group member running every task it is assigned.

The Application builds the clients and the runtime's parts and starts them; each part holds
one concept:

- the consumer loop (runtime/loop.py): poll, route, process, and the cadence of the rest;
- the checkpoint coordinator (runtime/checkpoint.py): barrier, transaction, RocksDB
  write-back, recovery after a failed or unknown commit;
- the rebalance handler (runtime/rebalance.py): assign, revoke, lost, restore scheduling;
- a run policy for bounded runs (runtime/bounded.py), which the loop consults.

What the instance shows of itself is the observation seam of runtime/observe.py: listeners
(``streamproc/ops`` implements them: status, /metrics, HTTP) are handed in at construction, and
read the loop through :meth:`Application.sample`. The runtime imports nothing from ops.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import structlog
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException

from streamproc.api.topology import Topology
from streamproc.config import Settings
from streamproc.connection import kafka_connection
from streamproc.errors import ConsumerFailed, DiskFull, ProcessingFailed, StreamprocError
from streamproc.graph.binding import bind_codecs
from streamproc.graph.compile import CompiledTopology, compile_topology
from streamproc.kafka.acls import NotAuthorized
from streamproc.kafka.admin import TopicAdmin, replicated
from streamproc.kafka.clients import (
    consumer_config,
    new_consumer,
    producer_config,
    restore_consumer_config,
)
from streamproc.kafka.probe import ClusterProbe
from streamproc.metrics import Metrics
from streamproc.runtime import observe
from streamproc.runtime.bounded import Bounded
from streamproc.runtime.checkpoint import Checkpointer, now_ms
from streamproc.runtime.collector import Collector
from streamproc.runtime.deadletter import dead_letter
from streamproc.runtime.globals import GlobalTables, for_instance
from streamproc.runtime.limits import (
    DEFAULT_MAX_RECORD_BYTES,
    OutputTime,
    StateGuard,
    TimeBounds,
    resolve_limits,
    sized,
)
from streamproc.runtime.loop import REJOIN_PATTERN, ConsumerLoop
from streamproc.runtime.observe import InstanceListener, Listeners, LoopSample
from streamproc.runtime.plan import (
    Plan,
    assignor,
    control_partitions,
    resolve,
    upstream_tasks,
)
from streamproc.runtime.rebalance import Rebalancer
from streamproc.runtime.restore import Restorer
from streamproc.runtime.startup import wait_for_cluster
from streamproc.runtime.statedir import StateDir
from streamproc.runtime.strays import StrayPartitions
from streamproc.runtime.task import Task
from streamproc.time.watermarks import control_key
from streamproc.types import Origin, TaskId, TopicPartition

log = structlog.get_logger(__name__)


class Application:
    def __init__(self, topology: Topology, settings: Settings, *, bootstrap: str,
                 listeners: Sequence[InstanceListener] = ()) -> None:
        self.topology = topology
        self.settings = settings
        self.bootstrap = bootstrap
        self.compiled: CompiledTopology = compile_topology(topology)
        bind_codecs(self.compiled, settings.registry())
        self.app_id = topology.application_id
        self.metrics = Metrics()
        self.guarantee = settings.processing_guarantee
        self._eos = self.guarantee == "exactly_once"
        self.listeners = Listeners(listeners)
        self._stop = threading.Event()
        self._failed: BaseException | None = None
        # Shared by reference with the loop and the checkpoint coordinator; only the rebalance
        # handler changes them.
        self._tasks: dict[TaskId, Task] = {}
        self._assigned: set[TopicPartition] = set()
        self._policies = {t: self.compiled.source_node(t).on_error
                          for t in self.compiled.topic_subtopology}
        self._cooperative = assignor(self.compiled, settings.partition_assignor) != "range"
        self._statedir = StateDir(settings.state_dir, self.app_id)
        self._op_timeout_s = min(30.0, settings.max_poll_interval_ms / 4000)
        self._collector: Collector | None = None
        self._restorer: Restorer | None = None
        self._reset_to = OFFSET_BEGINNING
        self._plan: Plan | None = None
        self._admin: TopicAdmin | None = None
        self._bounded: Bounded | None = None  # until / from_datetime (runtime/bounded.py)
        self._consumer: Consumer | None = None
        self._loop: ConsumerLoop | None = None
        self._checkpointer: Checkpointer | None = None
        self._rebalancer: Rebalancer | None = None
        self._final = (0, 0)  # processed, checkpoints: kept once the parts are dropped
        # Bad input limits (runtime/limits.py): resolved against the written topics at start.
        self.max_record_bytes = settings.max_record_bytes or DEFAULT_MAX_RECORD_BYTES
        self._output_time: dict[str, OutputTime] = {}
        self._time_bounds = TimeBounds(settings.min_timestamp_ms, settings.max_future_skew_ms)
        self._guard = StateGuard()  # state keys whose value outgrew max_record_bytes
        secret = settings.control_signing_key
        self._control_key = control_key(
            self.app_id, secret.get_secret_value().encode() if secret is not None else None)
        self._strays = StrayPartitions(self._on_error, self.metrics.inc)
        self._globals = GlobalTables({}, self._statedir.path, consumer=None,
                                     on_error=self._on_error)  # replaced at start
        self._started = True  # False once a start failed: nothing to fence or commit

    # -- public -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish: final checkpoint, stores closed. Safe from a signal handler."""
        self._stop.set()

    def run(self) -> int:
        """Run until :meth:`stop`; returns the process exit code (0 clean, 1 failed). A start
        that fails (bad configuration, a refused savepoint, no cluster) raises, after releasing
        what it had taken (the state dir lock, the clients). A full state disk, at start or
        later, is one ``state.disk_full`` error line and 1. A cluster that does not answer yet
        is waited for (runtime/startup.py); a stop meanwhile returns 0."""
        try:
            if not self._start():
                self._started = False  # stopped while waiting for the cluster: nothing began
                self._shutdown()
                return 0
        except BaseException as exc:
            self._failed = exc
            self._started = False
            if isinstance(exc, DiskFull):
                self._log_disk_full(exc)
            try:
                self._shutdown()
            except Exception as cleanup:  # the start's error is the one to report
                log.debug("instance.cleanup_failed", error=str(cleanup))
            if isinstance(exc, DiskFull):
                return 1
            raise
        assert self._loop is not None
        try:
            self._loop.run()
        except DiskFull as exc:
            # Not a crash: what was committed is safe (runtime/checkpoint.py), so one line that
            # names the path, no traceback, and no retry in place that could only fail again.
            self._failed = exc
            self._log_disk_full(exc)
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

    @staticmethod
    def _log_disk_full(exc: DiskFull) -> None:
        log.error("state.disk_full", path=str(exc.path), store=exc.store,
                  partition=exc.partition, error=str(exc))

    # -- observation (runtime/observe.py: InstanceView; read on the loop's thread) ------------
    @property
    def failure(self) -> BaseException | None:
        """Why the instance stopped, once it stopped on an error (None while it runs)."""
        return self._failed

    @property
    def restartable(self) -> bool:
        """It stopped on a failure a fresh instance in the same process gets past (its
        consumer's fatal state); ``streamproc run`` then starts one (cli.py)."""
        return isinstance(self._failed, ConsumerFailed)

    @property
    def tasks(self) -> Mapping[TaskId, Task]:
        return self._tasks

    @property
    def assigned(self) -> frozenset[TopicPartition]:
        return frozenset(self._assigned)

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
    def tasks_per_subtopology(self) -> Mapping[int, int]:
        return self._plan.partitions if self._plan is not None else {}

    @property
    def processed(self) -> int:
        return self._loop.processed if self._loop is not None else self._final[0]

    @property
    def checkpoints(self) -> int:
        return self._checkpointer.count if self._checkpointer is not None else self._final[1]

    def sample(self, *, live: bool = True, stores: bool = False) -> LoopSample:
        """The loop's state now, as plain data. ``live=False`` asks no client (after the loop
        ended, or when a client call failed); ``stores`` adds RocksDB's size estimates."""
        collector, restorer = self._collector, self._restorer
        consumer = self._consumer
        totals = restorer.totals if restorer is not None else None
        processed, checkpoints = self.processed, self.checkpoints
        produced = collector.produced if collector is not None else None
        counters = dict(self.metrics.counters)
        if not live or consumer is None:
            return LoopSample(live=False, joined=False, processed=processed, produced=produced,
                              checkpoints=checkpoints, counters=counters,
                              restored_records=totals.records if totals else 0,
                              restored_bytes=totals.bytes if totals else 0)
        restoring = observe.restores(restorer)
        return LoopSample(
            live=True, processed=processed, produced=produced,
            joined=bool(consumer.memberid()) and self._rebalancer is not None
            and self._rebalancer.assignments > 0,
            checkpoints=checkpoints, counters=counters,
            restored_records=(totals.records if totals else 0)
            + sum(r.records for r in restoring),
            restored_bytes=(totals.bytes if totals else 0) + sum(r.bytes for r in restoring),
            partitions=observe.partitions(consumer, sorted(self._assigned), self._tasks,
                                          self.compiled.topic_subtopology),
            tasks=observe.task_statuses(self._tasks, now_ms()), restoring=restoring,
            stores=observe.store_sizes(self._tasks) if stores else None)

    # -- start and stop ------------------------------------------------------------------------
    def _start(self) -> bool:
        """Build and start everything; False when stopped before the cluster answered."""
        s = self.settings
        probe = ClusterProbe(kafka_connection(s, self.bootstrap))
        try:
            if not wait_for_cluster(probe.answer, bootstrap=self.bootstrap,
                                    timeout_ms=s.startup_timeout_ms, stop=self._stop):
                return False
        finally:
            probe.close()
        self._admin = TopicAdmin(self.bootstrap,
                                 client_config=kafka_connection(s, self.bootstrap))
        admin, factor = self._admin, s.internal_replication_factor
        plan = self._plan = resolve(
            self.compiled, admin,
            replicate=lambda specs: replicated(specs, factor, admin.brokers_up(
                factor, stop=self._stop) if factor is not None and specs else 0))
        self._resolve_limits()
        self._statedir.lock()
        instance = self._statedir.instance_id(s.instance_id)
        self._globals = for_instance(self.compiled, s, self.bootstrap, self._statedir.path,
                                     f"{self.app_id}-{instance}", self.metrics,
                                     self.max_record_bytes)
        self._globals.start(admin.partitions, self.app_id, self._stop, self._op_timeout_s)
        marker = self._from_savepoint(plan) if s.from_savepoint is not None else None
        txid = f"{self.app_id}-{instance}" if self._eos else None
        collector = self._collector = Collector(
            lambda: self.listeners.producer_config(sized(
                producer_config(s, self.bootstrap, txid, f"{self.app_id}-{instance}"),
                self.max_record_bytes)),
            transactional=self._eos, op_timeout_s=self._op_timeout_s)
        collector.offset_metadata = marker
        collector.init()
        collector.begin()
        cconf = consumer_config(s, self.bootstrap, self.app_id, instance)
        if not self._cooperative:
            cconf["partition.assignment.strategy"] = "range"
        if str(cconf.get("auto.offset.reset")) in ("latest", "largest", "end"):
            self._reset_to = OFFSET_END
        consumer = self._consumer = new_consumer(cconf)
        if s.until is not None or s.from_datetime is not None:
            self._bounded = Bounded(s, self.compiled, consumer, plan.partitions,
                                    kafka_connection(s, self.bootstrap), self._op_timeout_s,
                                    self._assigned)
        restorer = self._restorer = Restorer(
            restore_consumer_config(s, self.bootstrap, self.app_id), s.restore_batch_size,
            consumer=new_consumer)
        rebalancer = self._rebalancer = Rebalancer(
            consumer=consumer, restorer=restorer, tasks=self._tasks, assigned=self._assigned,
            strays=self._strays, make_task=self._new_task,
            topic_subtopology=self.compiled.topic_subtopology,
            tasks_per_subtopology=plan.partitions, start_at=self._start_at,
            cooperative=self._cooperative, op_timeout_s=self._op_timeout_s,
            metrics=self.metrics, listeners=self.listeners)
        checkpointer = self._checkpointer = Checkpointer(
            guarantee=self.guarantee, collector=collector, consumer=consumer, tasks=self._tasks,
            strays=self._strays, guard=self._guard,
            repartition_topics=self.compiled.repartition_topics,
            max_record_bytes=self.max_record_bytes, metrics=self.metrics,
            listeners=self.listeners)
        rebalancer.barrier = checkpointer
        checkpointer.reopen = rebalancer.reopen_all
        self._loop = ConsumerLoop(
            settings=s, consumer=consumer, collector=collector, restorer=restorer,
            rebalancer=rebalancer, checkpointer=checkpointer,
            topic_subtopology=self.compiled.topic_subtopology,
            timed=any(st.time_aware or st.repartition_sinks
                      for st in self.compiled.subtopologies),
            admin=self._admin, policy=self._bounded, metrics=self.metrics,
            listeners=self.listeners, stop=self._stop, global_tables=self._globals)
        topics = list(self.compiled.topic_subtopology)
        consumer.subscribe(topics, on_assign=rebalancer.on_assign,
                           on_revoke=rebalancer.on_revoke, on_lost=rebalancer.on_lost)
        if self._cooperative and s.static_membership:
            self._loop.rejoin_once = lambda: consumer.subscribe(
                [*topics, REJOIN_PATTERN], on_assign=rebalancer.on_assign,
                on_revoke=rebalancer.on_revoke, on_lost=rebalancer.on_lost)
        self.listeners.started(self, instance)
        log.info("instance.started", app=self.app_id, instance=instance,
                 guarantee=self.guarantee, commit_interval_ms=s.commit_interval_ms,
                 assignor="cooperative-sticky" if self._cooperative else "range",
                 topics=topics, tasks_per_subtopology=plan.partitions,
                 state_dir=str(self._statedir.path), brokers=self.bootstrap)
        return True

    def _resolve_limits(self) -> None:
        assert self._admin is not None
        self.max_record_bytes, self._output_time = resolve_limits(self._admin, self.settings,
                                                                  self.compiled)

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
        self.listeners.stopping(self._failed)
        collector, rebalancer = self._collector, self._rebalancer
        if self._failed is None and self._checkpointer is not None:
            try:
                self._checkpointer.checkpoint("shutdown")
            except DiskFull as exc:  # Kafka committed; the stores replay it from the changelog
                self._failed = exc
                self._log_disk_full(exc)
        if rebalancer is not None:
            rebalancer.failed = self._failed is not None  # a failed loop's revoke commits nothing
        if self._failed is not None and collector is not None and self._eos and self._started:
            collector.reset()  # fences and aborts the open transaction: nothing past it commits
        if self._consumer is not None:
            loop = self._loop  # scaling in: the others take over now, not at the expiry
            if self.settings.leave_group_on_shutdown and self._failed is None and loop is not None:
                loop.leave_group()
            try:
                self._consumer.close()  # revokes: the callback closes the tasks
            except KafkaException as exc:  # a consumer in a fatal state: close_all below
                log.debug("consumer.close_failed", error=str(exc))
        if rebalancer is not None:
            rebalancer.close_all()
        else:
            for task in list(self._tasks.values()):
                task.close()
            self._tasks.clear()
        if self._restorer is not None:
            self._restorer.close()
        if collector is not None:
            collector.close(self._op_timeout_s)
        self._final = (self.processed, self.checkpoints)
        # Drop the clients now: the coordinator and the rebalance handler refer to each other,
        # so the pair (and its clients) would live on until a cyclic GC, threads reconnecting.
        if rebalancer is not None:
            rebalancer.barrier = None
        if self._checkpointer is not None:
            self._checkpointer.reopen = _nothing
        self._collector = self._restorer = self._admin = self._consumer = None
        self._bounded = self._loop = self._checkpointer = self._rebalancer = None
        self._globals.close()
        self._statedir.unlock()
        log.info("instance.stopped", app=self.app_id, processed=self.processed,
                 checkpoints=self.checkpoints, failed=self._failed is not None)
        self.listeners.stopped(self._failed)

    # -- tasks ---------------------------------------------------------------------------------
    def _new_task(self, tid: TaskId) -> Task:
        assert self._collector is not None and self._plan is not None
        st = self.compiled.subtopologies[tid.subtopology]
        changelogs = self.compiled.changelog_topics
        return Task(
            tid, st, app_dir=self._statedir.path,
            changelog_topic=lambda store: changelogs[store][1],
            producer=self._collector.producer,
            produced=self._collector.count_produced, on_error=self._on_error,
            cache_max_keys=self.settings.state_cache_max_keys,
            max_record_bytes=self.max_record_bytes,
            clock=now_ms, count=self.metrics.inc,
            upstream_tasks=upstream_tasks(self.compiled, st, self._plan.partitions),
            control_partitions=control_partitions(self.compiled, st, self._plan.partitions),
            time_bounds=self._time_bounds, output_time=self._output_time, guard=self._guard,
            control_key=self._control_key, global_tables=self._globals.stores)

    def _start_at(self, tp: TopicPartition) -> int:
        """Where a partition without a committed offset starts: ``from_datetime``'s offset for a
        user source partition, else ``auto.offset.reset``."""
        start = self._bounded.start.get(tp) if self._bounded is not None else None
        return self._reset_to if start is None else start

    # -- bad input -----------------------------------------------------------------------------
    def _on_error(self, origin: Origin, exc: BaseException, where: str) -> None:
        letter = dead_letter(origin, exc, where, self._policies, self.topology.on_error,
                             self.metrics, now_ms, self.max_record_bytes)
        if letter is not None:
            assert self._collector is not None
            key, value, ts, headers = letter
            self._collector.send(self.compiled.dead_letter_topic, key, value, ts, headers)


def _nothing() -> None:
    return None
