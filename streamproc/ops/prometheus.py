"""``GET /metrics``: the instance's numbers in Prometheus' text format (prometheus-client).

Each Application has its own :class:`~prometheus_client.CollectorRegistry`, so several
instances in one process (tests) never share or clash over metrics. A custom collector turns
the latest published snapshot into metric families at scrape time; only the checkpoint
histograms are observed directly (once per checkpoint). Names follow Prometheus conventions:
``streamproc_`` prefix, ``_total`` counters, base units (seconds, bytes), offsets and record
counts as plain numbers.

The engine's own counters (``streamproc.metrics.Metrics``) are exported one to one as
``streamproc_<name>``, so a counter the engine adds later shows up without a change here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamproc.ops.status import Snapshot, StatusBoard, readiness

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Help for the engine's counters (any other engine counter gets a generic one).
_ENGINE_HELP = {
    "records_consumed_total": "Input records processed, per topic-partition (rate() of this "
                              "is the processing rate).",
    "records_failed_total": "Records that failed, by error policy (dead_letter, skip), error "
                            "type and source topic; policy=dead_letter went to the DLQ.",
    "late_records_total": "Records behind the watermark for their window, by policy "
                          "(drop, side_output) and operator.",
    "rebalances_total": "Partition assignments this instance received.",
    "transaction_aborts_total": "Recoveries: uncommitted work dropped and every task resumed "
                                "from its committed state (exactly-once: an aborted transaction).",
    "checkpoints_total": "Checkpoints committed.",
    "checkpoint_failures_total": "Checkpoints that failed (followed by a recovery).",
    "state_rebuilds_total": "Local stores found corrupt and rebuilt from their changelog.",
}
# Help for the engine's gauges (any other engine gauge gets a generic one).
_GAUGE_HELP = {
    "standby_lag_records": "Changelog records a standby replica has yet to apply, per task "
                           "and store (an upper bound: transaction markers count).",
    "standby_tasks": "Standby replicas this instance keeps (num_standby_replicas).",
}
# Exported in a better form elsewhere (the duration histogram).
_ENGINE_SKIP = {"checkpoint_duration_seconds_total"}


class InstanceMetrics:
    def __init__(self, board: StatusBoard) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._duration = Histogram(
            "streamproc_checkpoint_duration_seconds",
            "Time from the checkpoint barrier to its commit (output, changelog and offsets).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry)
        self._size = Histogram(
            "streamproc_checkpoint_size_bytes",
            "Changelog bytes (keys and values) written by one checkpoint.",
            buckets=(0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9), registry=self.registry)
        self.registry.register(SnapshotCollector(board))

    def observe_checkpoint(self, seconds: float, records: int, nbytes: int) -> None:
        self._duration.observe(seconds)
        self._size.observe(nbytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class SnapshotCollector(Collector):
    def __init__(self, board: StatusBoard) -> None:
        self._board = board

    def collect(self) -> Iterator[Metric]:
        board = self._board
        snap = board.snapshot
        yield from _engine_counters(snap)
        yield from _engine_gauges(snap)
        yield from _instance(snap, board.poll_age())
        yield from _partitions(snap)
        yield from _produced(snap)
        yield from _tasks(snap)
        yield from _restore(snap)
        yield from _stores(snap)
        yield from _checkpoints(snap)


def _engine_gauges(snap: Snapshot) -> Iterator[Metric]:
    by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
    for (name, pairs), value in snap.gauges.items():
        by_name.setdefault(name, []).append((dict(pairs), value))
    for name in sorted(by_name):
        rows = by_name[name]
        keys = sorted({k for labels, _ in rows for k in labels})
        fam = GaugeMetricFamily(f"streamproc_{name}", _GAUGE_HELP.get(name, f"Engine gauge "
                                f"{name}."), labels=keys)
        for labels, value in sorted(rows, key=lambda r: sorted(r[0].items())):
            fam.add_metric([labels.get(k, "") for k in keys], value)
        yield fam


def _engine_counters(snap: Snapshot) -> Iterator[Metric]:
    by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
    for (name, pairs), value in snap.counters.items():
        if name not in _ENGINE_SKIP:
            by_name.setdefault(name, []).append((dict(pairs), value))
    for name in sorted(by_name):
        rows = by_name[name]
        # One family has one label set: the union, "" where a row lacks a label.
        keys = sorted({k for labels, _ in rows for k in labels})
        fam = CounterMetricFamily(f"streamproc_{name.removesuffix('_total')}",
                                  _ENGINE_HELP.get(name, f"Engine counter {name}."),
                                  labels=keys)
        for labels, value in sorted(rows, key=lambda r: sorted(r[0].items())):
            fam.add_metric([labels.get(k, "") for k in keys], value)
        yield fam


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _instance(snap: Snapshot, poll_age: float) -> Iterator[Metric]:
    info = _gauge("streamproc_instance_info", "The instance: application id, instance id, "
                  "processing guarantee (always 1).", ["app_id", "instance_id", "guarantee"])
    info.add_metric([snap.app_id, snap.instance_id or "", snap.guarantee], 1)
    yield info
    ready = _gauge("streamproc_ready", "1 when every assigned task is restored and processing "
                   "(what /readyz answers), else 0.")
    ready.add_metric([], 1 if readiness(snap)[0] else 0)
    yield ready
    age = _gauge("streamproc_last_poll_age_seconds",
                 "Seconds since the loop last came back to poll Kafka (/healthz's input).")
    age.add_metric([], poll_age)
    yield age
    tasks = _gauge("streamproc_tasks", "Assigned tasks by state.", ["state"])
    for state in ("restoring", "running"):
        tasks.add_metric([state], sum(1 for t in snap.tasks if t.state == state))
    yield tasks
    restoring = _gauge("streamproc_restoring_stores", "Stores still restoring.")
    restoring.add_metric([], len(snap.restoring))
    yield restoring


def _partitions(snap: Snapshot) -> Iterator[Metric]:
    labels = ["topic", "partition"]
    lag = _gauge("streamproc_consumer_lag_records", "High watermark minus the position, per "
                 "assigned input partition.", labels)
    committed = _gauge("streamproc_consumer_committed_offset",
                       "Offset committed by the last checkpoint.", labels)
    position = _gauge("streamproc_consumer_position_offset",
                      "Next offset to process.", labels)
    high = _gauge("streamproc_consumer_high_watermark_offset",
                  "The partition's high watermark as last fetched.", labels)
    for p in snap.partitions:
        key = [p.topic, str(p.partition)]
        for fam, value in ((lag, p.lag), (committed, p.committed), (position, p.position),
                           (high, p.high_watermark)):
            if value is not None:
                fam.add_metric(key, value)
    yield from (lag, committed, position, high)


def _produced(snap: Snapshot) -> Iterator[Metric]:
    labels = ["topic", "partition"]
    records = CounterMetricFamily(
        "streamproc_records_produced", "Records sent to the brokers per topic-partition "
        "(outputs, repartition, changelog, DLQ; from librdkafka's statistics, every 2 s; "
        "includes records of transactions later aborted).", labels=labels)
    nbytes = CounterMetricFamily("streamproc_produced_bytes",
                                 "Bytes sent to the brokers per topic-partition.",
                                 labels=labels)
    for (topic, part), (n, b) in sorted(snap.produced_by_partition.items()):
        records.add_metric([topic, str(part)], n)
        nbytes.add_metric([topic, str(part)], b)
    yield records
    yield nbytes


def _tasks(snap: Snapshot) -> Iterator[Metric]:
    wm = _gauge("streamproc_watermark_seconds", "The task's event-time watermark (Unix time).",
                ["task"])
    wm_lag = _gauge("streamproc_watermark_lag_seconds",
                    "Wall clock minus the task's watermark.", ["task"])
    for t in snap.tasks:
        if t.watermark_ms is not None and t.watermark_lag_ms is not None:
            wm.add_metric([t.id], t.watermark_ms / 1000)
            wm_lag.add_metric([t.id], t.watermark_lag_ms / 1000)
    yield wm
    yield wm_lag


def _restore(snap: Snapshot) -> Iterator[Metric]:
    records = CounterMetricFamily("streamproc_restore_records",
                                  "Changelog records restored into local stores.")
    records.add_metric([], snap.restored_records)
    yield records
    nbytes = CounterMetricFamily("streamproc_restore_bytes",
                                 "Changelog bytes restored into local stores.")
    nbytes.add_metric([], snap.restored_bytes)
    yield nbytes
    remaining = _gauge("streamproc_restore_remaining_records",
                       "Changelog records left to restore, per restoring store.",
                       ["task", "store"])
    for r in snap.restoring:
        if r.remaining is not None:
            remaining.add_metric([r.task, r.store], r.remaining)
    yield remaining


def _stores(snap: Snapshot) -> Iterator[Metric]:
    labels = ["store", "partition"]
    sst = _gauge("streamproc_state_sst_bytes", "RocksDB SST files of the store (on disk; "
                 "sampled every 5 s).", labels)
    mem = _gauge("streamproc_state_memtable_bytes", "RocksDB memtables of the store.", labels)
    keys = _gauge("streamproc_state_keys", "RocksDB's estimate of the store's keys.", labels)
    for s in snap.stores:
        key = [s.store, str(s.partition)]
        sst.add_metric(key, s.sst_bytes)
        mem.add_metric(key, s.memtable_bytes)
        keys.add_metric(key, s.keys)
    yield from (sst, mem, keys)


def _checkpoints(snap: Snapshot) -> Iterator[Metric]:
    c = snap.checkpoint
    last = _gauge("streamproc_checkpoint_last_changelog_records",
                  "Changelog records written by the last checkpoint.")
    last.add_metric([], c.last_changelog_records)
    yield last
    if c.last_at_ms is not None:
        when = _gauge("streamproc_checkpoint_last_timestamp_seconds",
                      "When the last checkpoint committed (Unix time).")
        when.add_metric([], c.last_at_ms / 1000)
        yield when
