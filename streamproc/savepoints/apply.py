"""``streamproc run ... --from-savepoint DIR``: start an application from a savepoint.

The savepoint is not loaded into local RocksDB directly. It is written into Kafka, where the
application's own recovery already knows how to find it, in ONE transaction:

- every store's content into the new application's changelog topics,
- the in-flight repartition records into its repartition topics,
- the group's offsets: the savepoint's source offsets, and for each repartition partition the
  offset where the copied records start.

Then the instances start as after any restart: they restore their stores from the changelogs
and consume from the committed offsets. One code path for recovery, and a seed that either
happened completely or not at all.

Applying is idempotent, so every instance of a deployment can be started with the same flag
and restarted with it any number of times. The seed's offsets carry the savepoint id as offset
metadata, and the application keeps writing it on every commit while it runs with the flag. A
start that finds it in the group's committed offsets knows the savepoint was applied and just
runs. The seed runs under one transactional.id per application, taken with init_transactions
before looking at the group: of two instances starting at once, the later one fences the
earlier, then sees its committed seed (or seeds itself if the earlier one never committed).

A savepoint is only applied to an application without state: its changelog and repartition
topics must be empty (a new application id, or one cleared by ``streamproc reset``).
Overwriting the state of a running application is never done silently.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc.codecs.base import Codec
from streamproc.errors import InfrastructureError
from streamproc.graph.compile import CompiledTopology
from streamproc.kafka.clients import new_consumer, new_producer
from streamproc.progress import Progress, Stalled
from streamproc.runtime import faults
from streamproc.runtime.statedir import inside_problem
from streamproc.runtime.task import TIME_KEY
from streamproc.savepoints.format import Manifest, Savepoint, SavepointError
from streamproc.savepoints.manifest import show
from streamproc.savepoints.topology import Mapping, map_savepoint
from streamproc.state.store import CHECK_SAMPLE

log = structlog.get_logger(__name__)

METADATA_PREFIX = "streamproc-savepoint="
_SEED_TIMEOUT_S = 600.0  # the seed transaction's timeout: the brokers' limit, not ours
_REPORT_EVERY = 1000  # records sent between two looks at the deliveries


def offset_metadata(manifest: Manifest) -> str:
    """The offset-commit metadata that marks a group as started from ``manifest``."""
    return METADATA_PREFIX + manifest.id


def load(path: Path, compiled: CompiledTopology, tasks: dict[int, int],
         drop: list[str]) -> tuple[Savepoint, Mapping]:
    """Open and verify the savepoint and check that it fits the topology (before any I/O on
    the cluster, so a misfit fails fast)."""
    sp = Savepoint.open(path)
    sp.verify()
    mapping = map_savepoint(sp.manifest, compiled, tasks, drop)
    codecs = {spec.name: spec.value_codec for st in compiled.subtopologies for spec in st.stores}
    for name, (new, _) in mapping.stores.items():
        _check_values(sp, name, codecs[new])
        if sp.manifest.stores[name].time_store:
            _check_time_state(sp, name)
    return sp, mapping


def _check_values(sp: Savepoint, store: str, codec: Codec) -> None:
    """Decode the first values of every partition with the new topology's codec: a schema
    change the stored values cannot follow stops here, before anything is written."""
    reader = sp.store(store)
    for p in reader.partitions:
        for i, (key, raw) in enumerate(reader.items(p)):
            if i >= CHECK_SAMPLE:
                break
            try:
                codec.decode(raw)
            except Exception as exc:
                raise SavepointError(
                    f"store {store!r} (partition {p}) of the savepoint: the value for key "
                    f"{key[:60]!r} does not decode with {codec.name}: {exc}. Migrate the "
                    "values (Savepoint.rewrite(transform=...)) or keep the schema compatible "
                    "(docs/schemas.md, State)") from None


def _time_state_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not a task's time state (time/watermarks.py snapshot), or None. The
    seed rewrites it and the new tasks restore it: a bad one must stop the start here."""
    try:
        state = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"is not JSON ({exc})"
    if not isinstance(state, dict):
        return "is not a JSON object"
    for name in ("stream_time", "watermark"):
        if type(state.get(name)) is not int:
            return f"has no integer {name!r}"
    if not isinstance(state.get("idle"), bool):
        return "has no boolean 'idle'"
    upstream = state.get("upstream", [])
    if not isinstance(upstream, list) or not all(
            isinstance(u, list) and len(u) == 4 and isinstance(u[0], str)
            and isinstance(u[1], str) and type(u[2]) is int and isinstance(u[3], bool)
            for u in upstream):
        return "has an 'upstream' that is not a list of [topic, task, watermark, idle]"
    return None


def _check_time_state(sp: Savepoint, store: str) -> None:
    reader = sp.store(store)
    for p in reader.partitions:
        for key, raw in reader.items(p):
            problem = _time_state_problem(raw) if key == TIME_KEY else None
            if problem is not None:
                raise SavepointError(f"store {store!r} (partition {p}) of the savepoint: the "
                                     f"time state {show(raw)} {problem}")


def apply(sp: Savepoint, mapping: Mapping, compiled: CompiledTopology, *,
          producer_conf: dict[str, Any], consumer_conf: dict[str, Any],
          app_dir: Path, timeout_s: float = 30.0, stall_s: float = 60.0,
          progress_every_s: float = 5.0) -> bool:
    """Seed the application from the savepoint unless that already happened; returns True
    when this call seeded it. The seed has no fixed deadline: it fails (:class:`Stalled`)
    only when the brokers acknowledge nothing for ``stall_s`` seconds, and logs
    ``savepoint.seed.progress`` every ``progress_every_s``."""
    app = compiled.application_id
    marker = offset_metadata(sp.manifest)
    producer = new_producer({**producer_conf, "transactional.id": f"{app}-savepoint",
                         "transaction.timeout.ms": int(_SEED_TIMEOUT_S * 1000)})
    group = new_consumer({**consumer_conf, "group.id": app, "enable.auto.commit": False,
                      "isolation.level": "read_committed"})
    try:
        try:
            producer.init_transactions(timeout_s)  # fences a concurrent seeder (see above)
        except KafkaException as exc:
            raise InfrastructureError(f"savepoint: cannot initialise the seed transaction: "
                                      f"{exc.args[0]}") from exc
        committed = _committed(group, compiled, timeout_s)
        if any(meta == marker for _, meta in committed.values()):
            log.info("savepoint.already_applied", app=app, savepoint=sp.manifest.id)
            return False
        _require_empty(group, compiled, timeout_s)
        # Local state of an earlier incarnation of this id would restore on top of the seed.
        for name in compiled.changelog_topics:
            # Store names were validated at build time; still, never delete outside app_dir.
            if (app_dir / name).exists() and inside_problem(app_dir, app_dir / name) is None:
                shutil.rmtree(app_dir / name, ignore_errors=True)
        repartition_start = _ends(group, [(topic, p) for name, topic in mapping.inflight.items()
                                          for p in sp.manifest.inflight[name].files], timeout_s)
        m = sp.manifest
        total = sum(m.stores[n].keys for n in mapping.stores) + sum(
            m.inflight[n].records for n in mapping.inflight)
        progress = Progress("savepoint.seed", total=total, every_s=progress_every_s,
                            stall_s=stall_s, app=app, savepoint=m.id)
        records = _seed(producer, sp, mapping, group, repartition_start, committed, marker,
                        timeout_s, progress)
    except KafkaException as exc:  # a request outside the transaction the cluster refused
        raise InfrastructureError(f"savepoint: the cluster did not answer: "
                                  f"{exc.args[0] if exc.args else exc}") from None
    finally:
        group.close()
        producer.flush(timeout_s)
    progress.done()
    log.info("savepoint.applied", app=app, savepoint=m.id, from_app=m.application_id,
             records=records, stores=sorted(mapping.stores), dropped=mapping.dropped,
             new_stores=mapping.new_stores, same_topology=mapping.same_topology,
             ignored_sources=mapping.ignored_sources)
    return True


def _committed(group: Consumer, compiled: CompiledTopology,
               timeout_s: float) -> dict[tuple[str, int], tuple[int, str | None]]:
    md = group.list_topics(timeout=timeout_s).topics
    tps = [KafkaTopicPartition(t, p) for t in compiled.topic_subtopology if t in md
           for p in md[t].partitions]
    got = group.committed(tps, timeout_s) if tps else []
    return {(tp.topic, tp.partition): (tp.offset, tp.metadata) for tp in got if tp.offset >= 0}


def _require_empty(group: Consumer, compiled: CompiledTopology, timeout_s: float) -> None:
    md = group.list_topics(timeout=timeout_s).topics
    topics = [*compiled.repartition_topics, *(t for _, t in compiled.changelog_topics.values())]
    busy = []
    for t in topics:
        for p in sorted(md[t].partitions) if t in md else []:
            low, high = _watermarks(group, t, p, timeout_s)
            if high > low:
                busy.append(f"{t}[{p}] ({high - low} records)")
    if busy:
        raise SavepointError(
            f"cannot start {compiled.application_id!r} from a savepoint: it already has state "
            f"({', '.join(busy[:5])}{' ...' if len(busy) > 5 else ''}). A savepoint starts an "
            "application afresh: use a new application id, or clear this one first with "
            f"`streamproc reset --app {compiled.application_id}` (with every instance stopped)")


def _ends(group: Consumer, tps: list[tuple[str, int]], timeout_s: float) -> dict[
        tuple[str, int], int]:
    return {(t, p): _watermarks(group, t, p, timeout_s)[1] for t, p in tps}


_TRANSIENT = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
              KafkaError.UNKNOWN_TOPIC_OR_PART}


def _watermarks(group: Consumer, topic: str, partition: int,
                timeout_s: float) -> tuple[int, int]:
    """A partition's (low, high) offsets. The runtime has just created the application's
    internal topics, and their leaders may still be moving: those errors are retried (for up
    to ``timeout_s``) rather than fail the start."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = group.get_watermark_offsets(KafkaTopicPartition(topic, partition),
                                                    timeout_s)
            return int(low), int(high)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not isinstance(err, KafkaError) or err.code() not in _TRANSIENT or \
                    time.monotonic() >= deadline:
                raise
        time.sleep(0.2)


def _seed(producer: Any, sp: Savepoint, mapping: Mapping, group: Any,
          repartition_start: dict[tuple[str, int], int],
          committed: dict[tuple[str, int], tuple[int, str | None]], marker: str,
          timeout_s: float, progress: Progress) -> int:
    errors: list[Any] = []
    # Records and bytes the brokers acknowledged since the last report: what counts as
    # progress, since records merely queued in the client can be stuck.
    acked = [0, 0]

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)
        else:
            acked[0] += 1
            acked[1] += len(msg.key() or b"") + len(msg.value() or b"")

    def report() -> None:
        n, nbytes = acked
        acked[0] = acked[1] = 0
        progress.advance(n, nbytes)

    sent = 0

    def send(topic: str, partition: int, key: bytes | None, value: bytes | None,
             timestamp: int = 0, headers: Any = None) -> None:
        nonlocal sent
        while True:
            try:
                producer.produce(topic, value, key, partition, on_delivery=delivered,
                                 timestamp=timestamp, headers=headers)
                break
            except BufferError:  # the client's queue is full: wait for acknowledgements
                producer.poll(0.1)
                report()
        sent += 1
        if sent % _REPORT_EVERY == 0:
            producer.poll(0)
            report()

    m = sp.manifest
    try:
        producer.begin_transaction()
        for name, (_new, changelog) in mapping.stores.items():
            time_store = m.stores[name].time_store
            reader = sp.store(name)
            for p in reader.partitions:
                for key, raw in reader.items(p):
                    send(changelog, p, key, _renamed_upstream(name, raw, mapping.topic_renames)
                         if time_store and key == TIME_KEY else raw)
        faults.hit("mid_seed")
        offsets = [KafkaTopicPartition(t, p, o, metadata=marker)
                   for t, parts in mapping.offsets.items() for p, o in parts.items()]
        for name, topic in mapping.inflight.items():
            for p in sorted(m.inflight[name].files):
                for r in sp.inflight(name, p):
                    send(topic, p, r.key, r.value, r.timestamp, list(r.headers) or None)
                offsets.append(KafkaTopicPartition(topic, p, repartition_start[(topic, p)],
                                                   metadata=marker))
        while producer.flush(1.0) and not errors:  # no fixed deadline: see report()
            report()
        report()
        if errors:
            raise InfrastructureError(f"savepoint: the seed could not be delivered (nothing of "
                                      f"it is visible; a restart tries again): {errors[0]}")
        if not offsets and not sent:
            producer.abort_transaction(timeout_s)
            return 0
        if offsets:
            producer.send_offsets_to_transaction(offsets, group.consumer_group_metadata(),
                                                 timeout_s)
        producer.commit_transaction(_SEED_TIMEOUT_S)
        faults.hit("after_seed")
    except Stalled as exc:
        # The transaction stays open: the next seeder's init_transactions fences and aborts
        # it (or the brokers time it out), so nothing of it is ever visible.
        raise Stalled(f"{exc}: the brokers stopped acknowledging the seed's records (nothing "
                      "of it is visible; a restart tries again)") from None
    except KafkaException as exc:
        raise InfrastructureError(f"savepoint: the seed transaction failed (nothing of it is "
                                  f"visible; a restart tries again): {exc.args[0]}") from exc
    overwritten = {f"{t}[{p}]": o for (t, p), (o, _) in committed.items()}
    if overwritten:
        log.warning("savepoint.offsets_replaced", previous=overwritten)
    return sent


def _renamed_upstream(store: str, raw: bytes, renames: dict[str, str]) -> bytes:
    """A time store's upstream watermarks are keyed by repartition topic, whose name contains
    the application id: carry them over to the new application's topics. (load() checked the
    state; a file changed since is refused rather than half-applied.)"""
    problem = _time_state_problem(raw)
    if problem is not None:
        raise SavepointError(f"store {store!r} of the savepoint: the time state {show(raw)} "
                             f"{problem}")
    state = orjson.loads(raw)
    state["upstream"] = [[renames.get(t, t), *rest] for t, *rest in state.get("upstream", [])]
    return orjson.dumps(state)
