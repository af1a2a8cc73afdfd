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
from confluent_kafka import OFFSET_BEGINNING, Consumer
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient

from streamproc.graph.compile import CompiledTopology
from streamproc.kafka.io import drain, header_list
from streamproc.ops.reset import active_members
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
from streamproc.types import TaskId

log = structlog.get_logger(__name__)

def create(bootstrap: str, compiled: CompiledTopology, to: Path, *, topology_name: str,
           wait_stopped_s: float = 30.0, timeout_s: float = 60.0) -> Savepoint:
    """Take a savepoint of the stopped application ``compiled`` describes into ``to``."""
    app = compiled.application_id
    admin = AdminClient({"bootstrap.servers": bootstrap})
    _wait_stopped(admin, app, wait_stopped_s)
    meta = admin.list_topics(timeout=timeout_s).topics
    tasks = _tasks(compiled, meta)
    tmp = fresh_dir(to)
    try:
        reader = Consumer({
            "bootstrap.servers": bootstrap, "group.id": app, "enable.auto.commit": False,
            "isolation.level": "read_committed", "enable.partition.eof": True,
            "auto.offset.reset": "earliest"})
        try:
            offsets = _committed(reader, compiled, meta, timeout_s)
            stores, watermarks = _stores(reader, compiled, meta, tmp, timeout_s)
            inflight = _inflight(reader, compiled, meta, offsets, tmp, timeout_s)
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


def _stores(reader: Consumer, compiled: CompiledTopology, meta: dict[str, Any], tmp: Path,
            timeout_s: float) -> tuple[dict[str, StoreInfo], dict[str, dict[str, Any]]]:
    stores: dict[str, StoreInfo] = {}
    watermarks: dict[str, dict[str, Any]] = {}
    for st in compiled.subtopologies:
        for spec in st.stores:
            changelog = compiled.changelog_topics[spec.name][1]
            parts = _partitions(meta, changelog)
            files: dict[int, FileInfo] = {}
            if parts:
                files = _read_changelog(reader, changelog, parts, tmp / ".work" / spec.name,
                                        tmp, spec.name, timeout_s)
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


def _read_changelog(reader: Consumer, topic: str, parts: list[int], work: Path, tmp: Path,
                    store: str, timeout_s: float) -> dict[int, FileInfo]:
    """Replay a compacted changelog into a scratch RocksDB per partition (so the last value of
    each key wins and tombstones delete, whatever the state's size), then write each sorted."""
    dbs: dict[int, rocksdict.Rdict] = {}
    for p in parts:
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        dbs[p] = rocksdict.Rdict(str(work / str(p)), options=opts)
    try:
        reader.assign([KafkaTopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        for m in drain(reader, parts, topic, timeout_s=timeout_s):
            key = m.key()
            if key is None:
                continue
            db = dbs[m.partition()]
            value = m.value()
            if value is None:
                db.delete(key)
            else:
                db[key] = value
        reader.unassign()
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
              offsets: dict[tuple[str, int], int | None], tmp: Path,
              timeout_s: float) -> dict[str, InflightInfo]:
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
        for m in drain(reader, parts, topic, timeout_s=timeout_s):
            p = m.partition()
            first.setdefault(p, m.offset())
            last[p] = m.offset()
            got[p].append(SavedRecord(m.key(), m.value(), m.timestamp()[1],
                                      tuple(header_list(m))))
        reader.unassign()
        for p in parts:
            start = first.get(p, starts[p] or 0)
            info.ranges[p] = (start, last[p] + 1 if p in last else start)
            info.files[p] = write_records(inflight_file(tmp, name, p), got[p])
    return out
