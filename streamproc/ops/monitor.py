"""The instance's side of operations: samples the loop's state into snapshots, runs the HTTP
server, keeps checkpoint statistics and writes the periodic checkpoint summary.

The Application calls a handful of methods, all from its own thread: :meth:`start` (server
up), :meth:`tick` once per loop iteration (a heartbeat and, at most every
``PUBLISH_EVERY_S``, a new snapshot), :meth:`checkpointed` after each committed checkpoint,
:meth:`shutting_down` and :meth:`stop`. Sampling reads the loop's own objects in the loop's own
thread, through their read-only observation accessors, so nothing here needs a lock.
Nothing runs per record.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc.ops.status import (
    CheckpointStatus,
    PartitionStatus,
    ProducedCounts,
    Recent,
    RestoreStatus,
    Snapshot,
    StatusBoard,
    StoreStatus,
    TaskStatus,
    lag,
    starting_snapshot,
    stuck_after_s,
    sum_by,
    total,
    valid_offset,
)
from streamproc.time.watermarks import NO_WATERMARK
from streamproc.types import TaskId, TopicPartition

if TYPE_CHECKING:
    from streamproc.ops.http import HttpServer
    from streamproc.ops.prometheus import InstanceMetrics
    from streamproc.ops.query import QueryState
    from streamproc.runtime.app import Application

log = structlog.get_logger(__name__)

PUBLISH_EVERY_S = 0.5
STORE_SIZES_EVERY_S = 5.0  # RocksDB properties are cheap, but not free across many stores
SUMMARY_EVERY_S = 30.0
RECENT_S = 300.0  # "recent" dead letters: the last five minutes
RATE_WINDOW_S = 10.0
PRODUCER_STATS_INTERVAL_MS = 2000

# One checkpoint's changelog records: (task, store name, [(key, value or None)])
Changes = Sequence[tuple[Any, str, list[tuple[bytes, bytes | None]]]]


def _now_ms() -> int:
    return int(time.time() * 1000)


class InstanceMonitor:
    def __init__(self, app: Application) -> None:
        self._app = app
        s = app.settings
        self.enabled = s.http_port is not None
        self.board = StatusBoard(
            starting_snapshot(app.app_id, app.guarantee, _now_ms()),
            stuck_after_s=stuck_after_s(s.poll_timeout_ms, s.health_stuck_after_ms))
        self.port: int | None = None
        self._state = "starting"
        self._instance_id: str | None = None
        self._server: HttpServer | None = None
        self._metrics: InstanceMetrics | None = None
        self.query: QueryState | None = None  # queryable state (/state), with HTTP
        self._produced = ProducedCounts()
        self._checkpoint = CheckpointStatus()
        self._recent = Recent(RECENT_S)
        self._rate = Recent(RATE_WINDOW_S)
        self._stores: tuple[StoreStatus, ...] = ()
        self._next_publish = 0.0
        self._next_sizes = 0.0
        self._next_summary = time.monotonic() + SUMMARY_EVERY_S
        # since the last summary: checkpoints, seconds, max seconds, records, bytes
        self._window = [0, 0.0, 0.0, 0, 0]

    # -- lifecycle (the Application's thread) ----------------------------------------------------
    def producer_config(self, conf: dict[str, Any]) -> dict[str, Any]:
        """Add librdkafka statistics to a producer config: records out per topic-partition are
        counted in C and read from a report every few seconds."""
        if not self.enabled:
            return conf
        return {"statistics.interval.ms": PRODUCER_STATS_INTERVAL_MS, **conf,
                "stats_cb": self._on_producer_stats}

    def start(self, instance_id: str) -> None:
        """Serve HTTP (when ``http_port`` is set). Fails fast when the port cannot be bound."""
        self._instance_id = instance_id
        if not self.enabled:
            return
        from pydantic import SecretStr

        from streamproc.errors import ConfigError
        from streamproc.ops.auth import AuthPolicy
        from streamproc.ops.endpoint import BadEndpoint, parse_endpoint
        from streamproc.ops.http import HttpContext, HttpServer, TlsFiles, build_app
        from streamproc.ops.instances import advertised_url
        from streamproc.ops.prometheus import InstanceMetrics
        from streamproc.ops.query import QueryState  # also registers the /state routes

        s, app = self._app.settings, self._app
        self._metrics = InstanceMetrics(self.board)
        token = s.secret("http_auth_token")
        tls = None if s.http_tls_cert_file is None or s.http_tls_key_file is None else \
            TlsFiles(s.http_tls_cert_file, s.http_tls_key_file, s.http_tls_key_password)
        self.query = QueryState(app) if s.http_state_enabled else None
        ctx = HttpContext(board=self.board, metrics=self._metrics, app=app,
                          topology=topology_json(app),
                          auth=AuthPolicy(SecretStr(token) if token is not None else None,
                                          s.http_auth_probes, s.http_auth_metrics),
                          on_shutdown=(self.query.peers.aclose,) if self.query else ())
        assert s.http_port is not None
        self._server = HttpServer(build_app(ctx), s.http_host, s.http_port, tls)
        self.port = self._server.start()
        try:
            url = advertised_url(s.http_advertised_url, s.http_host, self.port, tls is not None)
            try:
                parse_endpoint(url)  # what every other instance will check it against
            except BadEndpoint as exc:
                raise ConfigError("http_advertised_url (env STREAMPROC_HTTP_ADVERTISED_URL, "
                                  "flag --http-advertised-url)", f"{url}: {exc}") from None
            if self.query is not None:
                self.query.start(instance_id, url)
        except Exception:
            self._server.stop()  # the instance does not start: neither does its endpoint
            self._server = None
            raise
        self._state = "running"
        self.publish(time.monotonic())
        log.info("http.listening", host=s.http_host, port=self.port, tls=tls is not None,
                 auth=token is not None)

    def tick(self, now: float) -> None:
        """Once per loop iteration (``now``: time.monotonic())."""
        self.board.beat(now)
        if now >= self._next_publish and self.enabled:
            self._next_publish = now + PUBLISH_EVERY_S
            self._publish_safely(now)
            self._tick_query(now)
        if now >= self._next_summary:
            self._next_summary = now + SUMMARY_EVERY_S
            self._log_summary()

    def checkpointed(self, seconds: float, changes: Changes) -> None:
        """A checkpoint committed in ``seconds`` with these changelog records."""
        records = sum(len(recs) for _, _, recs in changes)
        nbytes = sum(len(k) + (len(v) if v is not None else 0)
                     for _, _, recs in changes for k, v in recs)
        c = self._checkpoint
        self._checkpoint = CheckpointStatus(
            count=c.count + 1, failures=c.failures, last_seconds=seconds,
            last_changelog_records=records, last_bytes=nbytes, last_at_ms=_now_ms())
        w = self._window
        w[0] += 1
        w[1] += seconds
        w[2] = max(w[2], seconds)
        w[3] += records
        w[4] += nbytes
        if self._metrics is not None:
            self._metrics.observe_checkpoint(seconds, records, nbytes)

    def shutting_down(self, failed: BaseException | None) -> None:
        self._state = "failed" if failed is not None else "stopping"
        if self.enabled:
            self._publish_safely(time.monotonic(),
                                 error=str(failed) if failed is not None else None)

    def stop(self) -> None:
        self._log_summary()
        if self.query is not None:
            self.query.close()  # the registry's tombstone: this instance holds nothing now
        if self._server is not None:
            self._state = "stopped" if self._state != "failed" else "failed"
            self.publish(time.monotonic(), sample=False)
            self._server.stop()
            self._server = None

    def _tick_query(self, now: float) -> None:
        if self.query is None:
            return
        try:
            self.query.tick(now, self._app.tasks)
        except Exception as exc:  # queries must never stop processing
            log.warning("state.registry_failed", error=str(exc))

    # -- sampling ---------------------------------------------------------------------------------
    def _publish_safely(self, now: float, *, error: str | None = None) -> None:
        # Observing must never stop processing: a client call that fails (the consumer is
        # closing, a fatal error is pending) costs one snapshot, not the instance.
        try:
            self.publish(now, error=error)
        except Exception as exc:
            log.warning("ops.publish_failed", error=str(exc))
            self.publish(now, error=error, sample=False)

    def publish(self, now: float, *, error: str | None = None, sample: bool = True) -> None:
        """Swap a new snapshot into the board. ``sample=False`` (the loop has ended and its
        clients are gone) keeps the last partitions, tasks and stores."""
        app = self._app
        prev = self.board.snapshot
        counters = dict(app.metrics.counters)
        parts, tasks, restoring, joined = prev.partitions, prev.tasks, prev.restoring, prev.joined
        if sample:
            parts, tasks, restoring = self._partitions(), self._tasks(), self._restoring()
            consumer = app.consumer
            joined = joined or (consumer is not None and bool(consumer.memberid()))
            if now >= self._next_sizes:
                self._next_sizes = now + STORE_SIZES_EVERY_S
                self._stores = self._store_sizes()
        totals = app.restorer.totals if app.restorer is not None else None
        dlq = sum_by(counters, "records_failed_total", "error_type", {"policy": "dead_letter"})
        recent = self._recent.update(now, {k: float(v) for k, v in dlq.items()})
        self._rate.update(now, {"processed": float(app.processed)})
        c = self._checkpoint
        self.board.publish(Snapshot(
            app_id=app.app_id, instance_id=self._instance_id, guarantee=app.guarantee,
            state=self._state, joined=joined, published_at_ms=_now_ms(),
            started_at_ms=prev.started_at_ms, processed=app.processed,
            produced=app.collector.produced if app.collector is not None else prev.produced,
            rate=round(self._rate.rate(now, "processed"), 1),
            partitions=parts, tasks=tasks, restoring=restoring, stores=self._stores,
            restored_records=(totals.records if totals else 0)
            + sum(r.records for r in restoring),
            restored_bytes=(totals.bytes if totals else 0) + sum(r.bytes for r in restoring),
            checkpoint=CheckpointStatus(c.count, total(counters, "checkpoint_failures_total"),
                                        c.last_seconds, c.last_changelog_records,
                                        c.last_bytes, c.last_at_ms),
            dead_letters=dlq, dead_letters_recent={k: int(v) for k, v in recent.items()},
            late_records=sum_by(counters, "late_records_total", "policy"),
            rebalances=total(counters, "rebalances_total"),
            transaction_aborts=total(counters, "transaction_aborts_total"),
            error=error if error is not None else prev.error, counters=counters,
            produced_by_partition=self._produced.totals()))

    def _partitions(self) -> tuple[PartitionStatus, ...]:
        app, consumer = self._app, self._app.consumer
        assigned = sorted(app.assigned)
        if consumer is None or not assigned:
            return ()
        sub_of = app.compiled.topic_subtopology
        positions = {TopicPartition(p.topic, p.partition): valid_offset(p.offset)
                     for p in consumer.position([KafkaTopicPartition(t, p) for t, p in assigned])}
        out = []
        for tp in assigned:
            task = app.tasks.get(TaskId(sub_of[tp.topic], tp.partition))
            committed = task.committed_offset(tp) if task is not None else None
            # The consumer's position moves past transaction markers, the task's next offset
            # does not; a paused (restoring) partition has no position yet.
            position = positions.get(tp)
            if position is None and task is not None:
                position = task.next_offsets.get(tp, committed)
            _, high = consumer.get_watermark_offsets(
                KafkaTopicPartition(tp.topic, tp.partition), cached=True)
            hw = valid_offset(high)
            out.append(PartitionStatus(
                tp.topic, tp.partition, str(task.id) if task is not None else "",
                task.state.value if task is not None else "unassigned", committed, position, hw,
                lag(position, hw)))
        return tuple(out)

    def _tasks(self) -> tuple[TaskStatus, ...]:
        wall = _now_ms()
        out = []
        for tid in sorted(self._app.tasks):
            t = self._app.tasks[tid]
            wm = t.time.watermark
            has = wm != NO_WATERMARK
            out.append(TaskStatus(str(tid), tid.subtopology, tid.partition, t.state.value,
                                  wm if has else None, wall - wm if has else None,
                                  bool(t.time.idle)))
        return tuple(out)

    def _restoring(self) -> tuple[RestoreStatus, ...]:
        restorer = self._app.restorer
        if restorer is None or not restorer.active:
            return ()
        client = restorer.client
        out = []
        for tp, r in restorer.in_progress():
            remaining = None
            if client is not None:
                _, high = client.get_watermark_offsets(
                    KafkaTopicPartition(tp.topic, tp.partition), cached=True)
                if valid_offset(high) is not None:
                    remaining = max(0, high - r.store.changelog_offset)
            out.append(RestoreStatus(str(r.task.id), r.store.name, tp.topic, tp.partition,
                                     r.records, r.bytes, remaining))
        return tuple(out)

    def _store_sizes(self) -> tuple[StoreStatus, ...]:
        out = []
        for tid in sorted(self._app.tasks):
            for name, store in sorted(self._app.tasks[tid].stores.items()):
                try:
                    db = store.db
                    out.append(StoreStatus(
                        name, store.partition,
                        int(db.property_int_value("rocksdb.total-sst-files-size") or 0),
                        int(db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0),
                        int(db.property_int_value("rocksdb.estimate-num-keys") or 0)))
                except Exception as exc:  # closed between sampling and reading
                    log.debug("ops.store_size_unavailable", store=name,
                              partition=store.partition, error=str(exc))
        return tuple(out)

    def _on_producer_stats(self, raw: str) -> None:
        # Runs inside producer.poll()/flush() on the loop's thread; an exception here would
        # surface in the loop, so a report that cannot be read is skipped.
        try:
            self._produced.update(orjson.loads(raw))
        except Exception as exc:
            log.debug("ops.producer_stats_unreadable", error=str(exc))

    def _log_summary(self) -> None:
        n, secs, longest, records, nbytes = self._window
        if not n:
            return
        self._window = [0, 0.0, 0.0, 0, 0]
        log.info("checkpoint.summary", checkpoints=n, seconds_mean=round(secs / n, 4),
                 seconds_max=round(longest, 4), changelog_records=records,
                 changelog_bytes=nbytes, total=self._checkpoint.count,
                 processed=self._app.processed)


def topology_json(app: Application) -> dict[str, Any]:
    """``GET /topology``: the compiled graph's own description, plus the topic and store lists
    an operator looks for first."""
    c = app.compiled
    return {**c.describe(),
            "source_topics": c.user_source_topics,
            "sink_topics": c.sink_topics,
            "stores": sorted(c.changelog_topics),
            "internal_topics": sorted([*c.repartition_topics,
                                       *(t for _, t in c.changelog_topics.values()),
                                       *c.late_topics])}

