"""The instance's side of operations: a listener of the runtime (runtime/observe.py) that turns
the loop's samples into status snapshots, runs the HTTP server, keeps checkpoint statistics
and writes the periodic checkpoint summary.

The CLI hands an :class:`InstanceMonitor` to the Application (streamproc/service.py). Every
event arrives on the loop's thread: ``started`` (server up), ``tick`` once per loop iteration
(a heartbeat and, at most every ``PUBLISH_EVERY_S``, a new snapshot), ``checkpointed`` after
each committed checkpoint, ``stopping`` and ``stopped``. Sampling goes through
:meth:`InstanceView.sample`, on that same thread, so nothing here needs a lock. Nothing runs
per record.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from streamproc.config import Settings
from streamproc.ops.status import (
    CheckpointStatus,
    ProducedCounts,
    Recent,
    Snapshot,
    StatusBoard,
    StoreStatus,
    starting_snapshot,
    stuck_after_s,
    sum_by,
    total,
)
from streamproc.runtime.observe import CheckpointDone, InstanceView
from streamproc.types import TaskId, TopicPartition

if TYPE_CHECKING:
    from streamproc.ops.http import HttpServer
    from streamproc.ops.prometheus import InstanceMetrics
    from streamproc.ops.query import QueryState

log = structlog.get_logger(__name__)

PUBLISH_EVERY_S = 0.5
STORE_SIZES_EVERY_S = 5.0  # RocksDB properties are cheap, but not free across many stores
SUMMARY_EVERY_S = 30.0
RECENT_S = 300.0  # "recent" dead letters: the last five minutes
RATE_WINDOW_S = 10.0
PRODUCER_STATS_INTERVAL_MS = 2000


def _now_ms() -> int:
    return int(time.time() * 1000)


class InstanceMonitor:
    """Status, /metrics and the HTTP server of one instance (an InstanceListener)."""

    def __init__(self, settings: Settings, app_id: str) -> None:
        s = self._settings = settings
        self.enabled = s.http_port is not None
        self.board = StatusBoard(
            starting_snapshot(app_id, s.processing_guarantee, _now_ms()),
            stuck_after_s=stuck_after_s(s.poll_timeout_ms, s.health_stuck_after_ms))
        self.port: int | None = None
        self._view: InstanceView | None = None
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

    # -- InstanceListener (the loop's thread) -----------------------------------------------------
    def producer_config(self, conf: dict[str, Any]) -> dict[str, Any]:
        """Add librdkafka statistics to a producer config: records out per topic-partition are
        counted in C and read from a report every few seconds."""
        if not self.enabled:
            return conf
        return {"statistics.interval.ms": PRODUCER_STATS_INTERVAL_MS, **conf,
                "stats_cb": self._on_producer_stats}

    def started(self, view: InstanceView, instance_id: str) -> None:
        """Serve HTTP (when ``http_port`` is set). Fails fast when the port cannot be bound."""
        self._view = view
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

        s = self._settings
        self._metrics = InstanceMetrics(self.board)
        token = s.secret("http_auth_token")
        tls = None if s.http_tls_cert_file is None or s.http_tls_key_file is None else \
            TlsFiles(s.http_tls_cert_file, s.http_tls_key_file, s.http_tls_key_password)
        self.query = QueryState(view) if s.http_state_enabled else None
        ctx = HttpContext(board=self.board, metrics=self._metrics, settings=s,
                          query=self.query, topology=topology_json(view),
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

    # Store sizes are sampled every STORE_SIZES_EVERY_S, and at the next publish after the set
    # of tasks changed: a store that opened (or closed) shows at once, not up to 5 s later.
    def assigned(self, partitions: Sequence[TopicPartition], new_tasks: Sequence[TaskId]) -> None:
        pass  # the next snapshot shows the partitions; their stores once the tasks run

    def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        self._next_sizes = 0.0

    def lost(self, partitions: Sequence[TopicPartition]) -> None:
        self._next_sizes = 0.0

    def restored(self, task: TaskId) -> None:
        self._next_sizes = 0.0

    def checkpointed(self, done: CheckpointDone) -> None:
        c = self._checkpoint
        self._checkpoint = CheckpointStatus(
            count=c.count + 1, failures=c.failures, last_seconds=done.seconds,
            last_changelog_records=done.changelog_records, last_bytes=done.changelog_bytes,
            last_at_ms=_now_ms())
        w = self._window
        w[0] += 1
        w[1] += done.seconds
        w[2] = max(w[2], done.seconds)
        w[3] += done.changelog_records
        w[4] += done.changelog_bytes
        if self._metrics is not None:
            self._metrics.observe_checkpoint(done.seconds, done.changelog_records,
                                             done.changelog_bytes)

    def stopping(self, failure: BaseException | None) -> None:
        self._state = "failed" if failure is not None else "stopping"
        if self.enabled and self._view is not None:
            self._publish_safely(time.monotonic(),
                                 error=str(failure) if failure is not None else None)

    def stopped(self, failure: BaseException | None) -> None:
        self._log_summary()
        if self.query is not None:
            self.query.close()  # the registry's tombstone: this instance holds nothing now
        if self._server is not None:
            self._state = "stopped" if self._state != "failed" else "failed"
            self.publish(time.monotonic(), live=False)
            self._server.stop()
            self._server = None

    def _tick_query(self, now: float) -> None:
        if self.query is None or self._view is None:
            return
        try:
            self.query.tick(now, self._view.tasks)
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
            self.publish(now, error=error, live=False)

    def publish(self, now: float, *, error: str | None = None, live: bool = True) -> None:
        """Swap a new snapshot into the board. ``live=False`` (the loop has ended and its
        clients are gone) keeps the last partitions, tasks and stores."""
        view = self._view
        assert view is not None
        prev = self.board.snapshot
        sizes = live and now >= self._next_sizes
        if sizes:
            self._next_sizes = now + STORE_SIZES_EVERY_S
        loop = view.sample(live=live, stores=sizes)
        parts, tasks, restoring, joined = prev.partitions, prev.tasks, prev.restoring, prev.joined
        restored = (loop.restored_records + sum(r.records for r in restoring),
                    loop.restored_bytes + sum(r.bytes for r in restoring))
        if loop.live:  # its restored totals include the restores in progress
            parts, tasks, restoring = loop.partitions, loop.tasks, loop.restoring
            joined = joined or loop.joined
            restored = (loop.restored_records, loop.restored_bytes)
        if loop.stores is not None:
            self._stores = loop.stores
        counters = loop.counters
        dlq = sum_by(counters, "records_failed_total", "error_type", {"policy": "dead_letter"})
        recent = self._recent.update(now, {k: float(v) for k, v in dlq.items()})
        self._rate.update(now, {"processed": float(loop.processed)})
        c = self._checkpoint
        self.board.publish(Snapshot(
            app_id=view.app_id, instance_id=self._instance_id, guarantee=view.guarantee,
            state=self._state, joined=joined, published_at_ms=_now_ms(),
            started_at_ms=prev.started_at_ms, processed=loop.processed,
            produced=loop.produced if loop.produced is not None else prev.produced,
            rate=round(self._rate.rate(now, "processed"), 1),
            partitions=parts, tasks=tasks, restoring=restoring, stores=self._stores,
            restored_records=restored[0], restored_bytes=restored[1],
            checkpoint=CheckpointStatus(c.count, total(counters, "checkpoint_failures_total"),
                                        c.last_seconds, c.last_changelog_records,
                                        c.last_bytes, c.last_at_ms),
            dead_letters=dlq, dead_letters_recent={k: int(v) for k, v in recent.items()},
            late_records=sum_by(counters, "late_records_total", "policy"),
            rebalances=total(counters, "rebalances_total"),
            transaction_aborts=total(counters, "transaction_aborts_total"),
            error=error if error is not None else prev.error, counters=counters,
            gauges=dict(view.metrics.gauges),
            produced_by_partition=self._produced.totals()))

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
                 processed=self._view.sample(live=False).processed
                 if self._view is not None else 0)


def topology_json(view: InstanceView) -> dict[str, Any]:
    """``GET /topology``: the compiled graph's own description, plus the topic and store lists
    an operator looks for first."""
    c = view.compiled
    return {**c.describe(),
            "source_topics": c.user_source_topics,
            "sink_topics": c.sink_topics,
            "stores": sorted(c.changelog_topics),
            "internal_topics": sorted([*c.repartition_topics,
                                       *(t for _, t in c.changelog_topics.values()),
                                       *c.late_topics])}

