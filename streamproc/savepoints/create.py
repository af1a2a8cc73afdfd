"""``streamproc savepoint create``: snapshot a stopped application from Kafka alone.

Under exactly-once every checkpoint commits a task's changelog records and its input offsets
in one transaction, so what read_committed readers see of the changelogs *is* the state at the
group's committed offsets. With every instance stopped nothing moves, so reading

1. the group's committed offsets (sources and repartition topics),
2. every changelog partition from its beginning to its end (compacted: last value per key wins),
3. every repartition partition from the committed offset to its end (records an upstream task
   wrote that the downstream task had not consumed: the "channel state" between the two), and
4. the watermarks, which live in the time stores like any other state,

gives one consistent cut: the last checkpoint of every task. Stopping first is the price of
taking it from the outside: a cut of a *running* application would need every instance to
stop at one barrier (Flink's aligned checkpoint), and the upstream and downstream sides of a
repartition topic commit independently. It is also what an upgrade does anyway (stop, take
the savepoint, start the new version from it), like Flink's stop-with-savepoint.

Nothing local is read: the savepoint can be taken from any machine that reaches the brokers.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import rocksdict
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient

from streamproc.errors import InfrastructureError
from streamproc.graph.compile import CompiledTopology
from streamproc.kafka.clients import new_admin, new_consumer
from streamproc.kafka.io import at_log_end, header_list
from streamproc.names import name_problem, topic_problem
from streamproc.ops.reset import active_members
from streamproc.progress import Progress, Stalled
from streamproc.runtime.task import TIME_KEY
from streamproc.savepoints.format import (
    FileInfo,
    InflightInfo,
    Manifest,
    SavedRecord,
    Savepoint,
    SavepointError,
    StoreInfo,
    fresh_dir,
    inflight_file,
    publish,
    read_records,
    store_file,
    write_records,
)
from streamproc.savepoints.topology import fingerprint, strip_app
from streamproc.time.watermarks import CONTROL_HEADER
from streamproc.types import TaskId

log = structlog.get_logger(__name__)

_BATCH = 10_000
# Per partition of every topic read: how many offsets are left before its end.
Left = dict[tuple[str, int], int]


def create(bootstrap: str, compiled: CompiledTopology, to: Path, *, topology_name: str,
           wait_stopped_s: float = 30.0, timeout_s: float = 30.0, stall_s: float = 60.0,
           progress_every_s: float = 5.0,
           client_config: dict[str, Any] | None = None) -> Savepoint:
    """Take a savepoint of the stopped application ``compiled`` describes into ``to``.

    Reading the changelogs has no fixed deadline, since a large state takes as long as it
    takes: it fails (:class:`Stalled`) only when no record arrives for ``stall_s`` seconds,
    and logs ``savepoint.create.progress`` every ``progress_every_s``. ``timeout_s`` bounds
    each single request to the cluster. ``client_config``: how the clients connect
    (streamproc.connection.kafka_connection; default: plaintext to ``bootstrap``)."""
    _check_names(compiled)
    try:
        return _create(client_config or {"bootstrap.servers": bootstrap}, compiled, to,
                       topology_name=topology_name, wait_stopped_s=wait_stopped_s,
                       timeout_s=timeout_s, stall_s=stall_s, progress_every_s=progress_every_s)
    except (KafkaException, TimeoutError) as exc:  # a request the cluster did not answer
        reason = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
        raise InfrastructureError(f"savepoint create of {compiled.application_id!r}: the "
                                  f"cluster did not answer: {reason}") from None


def _check_names(compiled: CompiledTopology) -> None:
    """Store and repartition names become directories of the savepoint: the topology should
    have refused a bad one already, but a savepoint must never be written outside its root."""
    app = compiled.application_id
    for st in compiled.subtopologies:
        for spec in st.stores:
            problem = name_problem(spec.name)
            if problem is not None:
                raise SavepointError(f"cannot take a savepoint of {app!r}: store name {problem}")
    for topic in compiled.repartition_topics:
        problem = topic_problem(strip_app(app, topic))  # refuses "", "." and ".." too
        if problem is not None:
            raise SavepointError(f"cannot take a savepoint of {app!r}: repartition topic "
                                 f"{topic!r} cannot name a directory")


def _create(conn: dict[str, Any], compiled: CompiledTopology, to: Path, *, topology_name: str,
            wait_stopped_s: float, timeout_s: float, stall_s: float,
            progress_every_s: float) -> Savepoint:
    app = compiled.application_id
    admin = new_admin(conn)
    _wait_stopped(admin, app, wait_stopped_s)
    meta = admin.list_topics(timeout=timeout_s).topics
    tasks = _tasks(compiled, meta)
    tmp = fresh_dir(to)
    try:
        reader = new_consumer({
            **conn, "group.id": app, "enable.auto.commit": False,
            "isolation.level": "read_committed", "enable.partition.eof": True,
            "auto.offset.reset": "earliest"})
        try:
            offsets = _committed(reader, compiled, meta, timeout_s)
            ends, left = _ends(reader, compiled, meta, offsets, timeout_s)
            progress = Progress("savepoint.create", total=sum(left.values()),
                                every_s=progress_every_s, stall_s=stall_s, app=app)
            stores, watermarks = _stores(reader, compiled, meta, tmp, progress, ends, left)
            inflight = _inflight(reader, compiled, meta, offsets, tmp, progress, ends, left)
            if _committed(reader, compiled, meta, timeout_s) != offsets or \
                    active_members(admin, app, timeout_s):
                raise SavepointError(f"application {app!r} started while the savepoint was "
                                     "being taken; stop it and take the savepoint again")
        finally:
            reader.close()
        shutil.rmtree(tmp / ".work", ignore_errors=True)
        manifest = Manifest(
            id=uuid.uuid4().hex, application_id=app, topology=topology_name,
            fingerprint=fingerprint(compiled), created_at_ms=int(time.time() * 1000),
            tasks=tasks,
            source_offsets={t: {p: o for (tt, p), o in sorted(offsets.items()) if tt == t}
                            for t in compiled.user_source_topics},
            stores=stores, inflight=inflight, watermarks=watermarks)
        sp = publish(tmp, to, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress.done()
    log.info("savepoint.created", app=app, path=str(to), id=manifest.id,
             stores=len(stores), keys=sum(s.keys for s in stores.values()),
             inflight_records=sum(i.records for i in inflight.values()))
    return sp


def _wait_stopped(admin: AdminClient, app: str, wait_s: float) -> None:
    """Static members stay in the group for session.timeout.ms after they stop: wait that out
    (up to ``wait_s``) rather than make the operator retry."""
    deadline = time.monotonic() + wait_s
    while members := active_members(admin, app, 30.0):
        if time.monotonic() >= deadline:
            raise SavepointError(
                f"cannot take a savepoint of {app!r}: its consumer group has {len(members)} "
                f"active member(s) ({', '.join(members)}). Stop every instance first (SIGTERM "
                "commits a final checkpoint); a stopped static member leaves the group after "
                "its session.timeout.ms")
        time.sleep(0.5)


def _tasks(compiled: CompiledTopology, meta: dict[str, Any]) -> dict[int, int]:
    out: dict[int, int] = {}
    for st in compiled.subtopologies:
        counts = [len(meta[t].partitions) for t in st.source_topics if t in meta]
        if not counts:
            raise SavepointError(f"the source topics {st.source_topics} of "
                                 f"{compiled.application_id!r} do not exist: it never ran")
        out[st.id] = max(counts)
    return out


def _partitions(meta: dict[str, Any], topic: str) -> list[int]:
    return sorted(meta[topic].partitions) if topic in meta else []


def _committed(reader: Consumer, compiled: CompiledTopology, meta: dict[str, Any],
               timeout_s: float) -> dict[tuple[str, int], int | None]:
    tps = [KafkaTopicPartition(t, p) for t in compiled.topic_subtopology
           for p in _partitions(meta, t)]
    got = reader.committed(tps, timeout_s) if tps else []
    return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None for tp in got}


def _ends(reader: Consumer, compiled: CompiledTopology, meta: dict[str, Any],
          offsets: dict[tuple[str, int], int | None], timeout_s: float) -> tuple[Left, Left]:
    """The end offset of every partition to read, and how many offsets lie before it (the
    progress lines' total: an upper bound on the records, as compaction and transaction
    markers leave gaps)."""
    ends: Left = {}
    left: Left = {}
    changelogs = [t for _, t in compiled.changelog_topics.values()]
    for topic in [*changelogs, *compiled.repartition_topics]:
        for p in _partitions(meta, topic):
            low, high = reader.get_watermark_offsets(KafkaTopicPartition(topic, p), timeout_s)
            start = offsets.get((topic, p))
            ends[(topic, p)] = high
            left[(topic, p)] = max(high - (low if start is None else max(start, low)), 0)
    return ends, left


def _drain(reader: Any, topic: str, parts: list[int], progress: Progress, ends: Left,
           left: Left) -> Iterator[Any]:
    """The records of the assigned ``parts`` of ``topic`` up to each one's end (the consumer
    has ``enable.partition.eof``). No fixed deadline: a large topic takes as long as it takes,
    and only a read that gets nowhere for the stall timeout fails, with :class:`Stalled`."""
    pending = set(parts)
    problem: Any = None
    while pending:
        n = nbytes = 0
        last: dict[int, int] = {}
        reached: list[int] = []
        for m in reader.consume(_BATCH, 0.5):
            err = m.error()
            if err is None:
                n += 1
                nbytes += len(m.key() or b"") + len(m.value() or b"")
                last[m.partition()] = m.offset()
                yield m
            elif err.code() == KafkaError._PARTITION_EOF:
                if at_log_end(reader, topic, m.partition(), m.offset()):
                    pending.discard(m.partition())
                    reached.append(m.partition())
            else:
                problem = err  # librdkafka retries; named if the read then stalls
        for p, offset in last.items():
            left[(topic, p)] = max(ends.get((topic, p), 0) - offset - 1, 0)
        for p in reached:  # after the offsets: compaction gaps may lie before the end
            left[(topic, p)] = 0
        progress.set_total(progress.records + n + sum(left.values()))
        try:
            progress.advance(n, nbytes)
        except Stalled as exc:
            raise Stalled(
                f"{exc}: {topic} partitions {sorted(pending)} did not reach their end (an open "
                "transaction keeps read_committed readers from it: is an instance still "
                f"running?{f' Last error: {problem}.' if problem is not None else ''} "
                "--stall-timeout sets how long to wait)") from None


def _stores(reader: Consumer, compiled: CompiledTopology, meta: dict[str, Any], tmp: Path,
            progress: Progress, ends: Left,
            left: Left) -> tuple[dict[str, StoreInfo], dict[str, dict[str, Any]]]:
    stores: dict[str, StoreInfo] = {}
    watermarks: dict[str, dict[str, Any]] = {}
    for st in compiled.subtopologies:
        for spec in st.stores:
            if spec.source_topic is not None:
                continue  # a table read from its topic: restored from it, not saved
            changelog = compiled.changelog_topics[spec.name][1]
            parts = _partitions(meta, changelog)
            files: dict[int, FileInfo] = {}
            if parts:
                reader.assign([KafkaTopicPartition(changelog, p, OFFSET_BEGINNING)
                               for p in parts])
                files = _read_changelog(_drain(reader, changelog, parts, progress, ends, left),
                                        parts, tmp / ".work" / spec.name, tmp, spec.name)
                reader.unassign()
            info = stores[spec.name] = StoreInfo(
                subtopology=st.id, codec=spec.value_codec.name,
                changelog=strip_app(compiled.application_id, changelog),
                partitions=len(parts), time_store=spec.name == st.time_store, files=files)
            if info.time_store:
                for p in parts:
                    for r in _time_records(tmp, spec.name, p):
                        state = orjson.loads(r)
                        watermarks[str(TaskId(st.id, p))] = {
                            "watermark": state["watermark"], "stream_time": state["stream_time"],
                            "idle": state["idle"]}
    return stores, watermarks


def _time_records(tmp: Path, store: str, partition: int) -> Iterator[bytes]:
    for r in read_records(store_file(tmp, store, partition)):
        if r.key == TIME_KEY and r.value is not None:
            yield r.value


def _read_changelog(messages: Iterator[Any], parts: list[int], work: Path, tmp: Path,
                    store: str) -> dict[int, FileInfo]:
    """Replay a compacted changelog into a scratch RocksDB per partition (so the last value of
    each key wins and tombstones delete, whatever the state's size), then write each sorted."""
    dbs: dict[int, rocksdict.Rdict] = {}
    for p in parts:
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        dbs[p] = rocksdict.Rdict(str(work / str(p)), options=opts)
    try:
        for m in messages:
            key = m.key()
            if key is None:
                continue
            db = dbs[m.partition()]
            value = m.value()
            if value is None:
                db.delete(key)
            else:
                db[key] = value
        return {p: write_records(store_file(tmp, store, p),
                                 (SavedRecord(_raw(k), _raw(v)) for k, v in db.items()))
                for p, db in dbs.items()}
    finally:
        for db in dbs.values():
            db.close()


def _raw(x: object) -> bytes:
    assert isinstance(x, bytes)  # the scratch databases are opened in raw mode
    return x


def _inflight(reader: Consumer, compiled: CompiledTopology, meta: dict[str, Any],
              offsets: dict[tuple[str, int], int | None], tmp: Path, progress: Progress,
              ends: Left, left: Left) -> dict[str, InflightInfo]:
    out: dict[str, InflightInfo] = {}
    for topic in compiled.repartition_topics:
        parts = _partitions(meta, topic)
        name = strip_app(compiled.application_id, topic)
        info = out[name] = InflightInfo(partitions=len(parts))
        if not parts:
            continue
        starts = {p: offsets.get((topic, p)) for p in parts}
        reader.assign([KafkaTopicPartition(topic, p, OFFSET_BEGINNING if o is None else o)
                       for p, o in starts.items()])
        got: dict[int, list[SavedRecord]] = {p: [] for p in parts}
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for m in _drain(reader, topic, parts, progress, ends, left):
            p = m.partition()
            first.setdefault(p, m.offset())
            last[p] = m.offset()
            headers = tuple(header_list(m))
            if headers and headers[0][0] == CONTROL_HEADER:
                # A watermark control record is not data: the watermarks are saved from the
                # time stores, and its signature names this application's topic, so a copy
                # written into another application's topic would be refused as forged.
                continue
            got[p].append(SavedRecord(m.key(), m.value(), m.timestamp()[1], headers))
        reader.unassign()
        for p in parts:
            start = first.get(p, starts[p] or 0)
            info.ranges[p] = (start, last[p] + 1 if p in last else start)
            info.files[p] = write_records(inflight_file(tmp, name, p), got[p])
    return out
