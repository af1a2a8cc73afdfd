"""``streamproc reset``: make an application reprocess its input from a chosen point, like Kafka
Streams' application reset tool.

For the application's consumer group it

1. refuses while the group has members, or while a local instance holds the state dir lock:
   offsets can only be changed for a group nobody is in, and a running instance would write
   its state back. Static members (``static_membership``, the default) stay in the group for
   ``session.timeout.ms`` after their process stops;
2. deletes the group, so no committed offset of an internal topic survives, and commits the new
   offsets of every partition of every source topic: the earliest ones (default), those of the
   first records timestamped at or after ``--to-datetime`` (the end where there is none), or
   those given in ``--to-offsets FILE``;
3. deletes the application's internal topics (repartition, changelog and instance-registry
   topics; the instances recreate them at start) and waits until they are gone;
4. deletes the local state directory ``{state_dir}/{app}`` (RocksDB stores, instance id).

``--dry-run`` prints the same plan and changes nothing. Output topics, the dead-letter topic and
the late-records topics are left alone: a reprocessing run appends to its output topics (replay
into a new application id to write somewhere else). Local state on *other* machines is not
reachable from here: run the tool there with ``--state-dir`` too, or delete it.

The topology (``--topology``, with ``--param`` for a factory) names the source and internal
topics exactly. Finding them by name instead (``{app}-*-changelog``) would also match the topics
of any application whose id starts with the same prefix (``wordcount`` vs
``wordcount-replay``) and delete them. ``--app`` must equal the topology's application id: a
destructive command names its target twice.
"""

from __future__ import annotations

import fcntl
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import (
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
)
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from streamproc.errors import ConfigError, StreamprocError
from streamproc.graph.compile import CompiledTopology
from streamproc.graph.naming import instances_topic
from streamproc.kafka.clients import new_admin
from streamproc.kafka.io import Bootstrap, client_base
from streamproc.ops.dlq import COMMAND_CLIENT_LOG
from streamproc.runtime.statedir import StateDir
from streamproc.types import TopicPartition


class ResetRefused(StreamprocError):
    """The reset cannot run now (the group is active, or the file names the wrong partitions)."""


@dataclass
class ResetPlan:
    app_id: str
    group_state: str
    target: str  # what the new offsets are, for humans
    # source partition -> (committed offset or None, new offset)
    offsets: dict[TopicPartition, tuple[int | None, int]] = field(default_factory=dict)
    # committed offsets of the group on other topics (internal ones): dropped with the group
    other_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    internal_topics: list[str] = field(default_factory=list)  # those that exist
    state_dir: Path | None = None  # when it exists


def _ktp(tp: TopicPartition, offset: int | None = None) -> KafkaTopicPartition:
    return (KafkaTopicPartition(tp.topic, tp.partition) if offset is None
            else KafkaTopicPartition(tp.topic, tp.partition, offset))


def _result(fut: Any, timeout_s: float) -> Any:
    unanswered = StreamprocError(f"reset: Kafka did not answer within {timeout_s:g} s (is it "
                                 "reachable? check STREAMPROC_BROKERS, or give --timeout)")
    try:
        return fut.result(timeout=timeout_s)
    except KafkaException as exc:
        # The request's own timeout and the wait for its future end at the same moment:
        # whichever comes first, the same answer.
        if exc.args and getattr(exc.args[0], "code", lambda: None)() == KafkaError._TIMED_OUT:
            raise unanswered from None
        raise StreamprocError(f"reset: {exc.args[0]}") from exc
    except TimeoutError:  # concurrent.futures says nothing more
        raise unanswered from None


def read_offsets_file(path: Path) -> dict[TopicPartition, int]:
    """``{"topic": {"0": 12, "1": 7}}``: the new offset of each source partition."""
    try:
        raw = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError("--to-offsets", f"cannot read {path}: {exc}") from None
    out: dict[TopicPartition, int] = {}
    ok = isinstance(raw, dict)
    for topic, parts in raw.items() if ok else ():
        if not isinstance(parts, dict):
            ok = False
            break
        for part, offset in parts.items():
            if not (str(part).isdigit() and isinstance(offset, int) and offset >= 0):
                ok = False
                break
            out[TopicPartition(str(topic), int(part))] = offset
    if not ok:
        raise ConfigError("--to-offsets", f"{path} must be a JSON object "
                          '{"topic": {"partition": offset, ...}, ...} with offsets >= 0')
    return out


def _list_offsets(admin: AdminClient, tps: list[TopicPartition], spec: Any,
                  timeout_s: float) -> dict[TopicPartition, int]:
    futures = admin.list_offsets({_ktp(tp): spec for tp in tps},
                                 isolation_level=IsolationLevel.READ_COMMITTED,
                                 request_timeout=timeout_s)
    return {TopicPartition(k.topic, k.partition): int(_result(f, timeout_s).offset)
            for k, f in futures.items()}


def _group(admin: AdminClient, app: str, timeout_s: float) -> Any:
    return _result(admin.describe_consumer_groups([app], request_timeout=timeout_s)[app],
                   timeout_s)


def _member_names(desc: Any) -> list[str]:
    return sorted(f"{m.client_id}@{m.host}" for m in desc.members)


def active_members(admin: AdminClient, app: str, timeout_s: float = 30.0) -> list[str]:
    """The members of the application's consumer group (client.id@host), empty when no
    instance is in it (also while it rebalances towards empty)."""
    desc = _group(admin, app, timeout_s)
    if not desc.members and desc.state not in (ConsumerGroupState.EMPTY,
                                               ConsumerGroupState.DEAD):
        return [f"(group {desc.state.name.lower()})"]
    return _member_names(desc)


def _state_locked(path: Path) -> bool:
    """True when a local instance holds the state dir's lock (runtime/statedir.py)."""
    lock = path / ".lock"
    if not lock.exists():
        return False
    with open(lock) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def plan_reset(admin: AdminClient, compiled: CompiledTopology, state_root: Path, *,
               to_datetime: int | None = None, to_offsets: dict[TopicPartition, int] | None = None,
               offsets_file: Path | None = None, timeout_s: float = 30.0) -> ResetPlan:
    """What a reset would do; raises :class:`ResetRefused` when it must not run now."""
    app = compiled.application_id
    desc = _group(admin, app, timeout_s)
    if desc.members or desc.state not in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD):
        members = ", ".join(_member_names(desc)) or "none"
        raise ResetRefused(
            f"cannot reset {app!r}: its consumer group is {desc.state.name.lower()} with "
            f"{len(desc.members)} active member(s) ({members}). Stop every instance first; "
            "with static membership a stopped instance stays in the group for its "
            "session.timeout.ms (default 15 s)")
    state_dir = StateDir(state_root, app).path  # refused unless inside the state dir
    if _state_locked(state_dir):
        raise ResetRefused(f"cannot reset {app!r}: a local instance holds {state_dir} (stop it)")

    topics = admin.list_topics(timeout=timeout_s).topics
    missing = [t for t in compiled.user_source_topics if t not in topics]
    if missing:
        raise ResetRefused(f"cannot reset {app!r}: source topic(s) {', '.join(missing)} do not "
                           "exist")
    sources = [TopicPartition(t, p) for t in compiled.user_source_topics
               for p in sorted(topics[t].partitions)]
    listed = _result(admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(app)], request_timeout=timeout_s)[app], timeout_s)
    committed = {TopicPartition(tp.topic, tp.partition): tp.offset
                 for tp in listed.topic_partitions or [] if tp.offset >= 0}

    latest = _list_offsets(admin, sources, OffsetSpec.latest(),  # type: ignore[no-untyped-call]
                           timeout_s)
    if to_offsets is not None:
        unknown = sorted(set(to_offsets) - set(sources))
        absent = sorted(set(sources) - set(to_offsets))
        if unknown or absent:
            raise ResetRefused(
                f"{offsets_file} must give an offset for every source partition of {app!r} "
                f"and nothing else: missing {[f'{t}[{p}]' for t, p in absent]}, "
                f"not sources {[f'{t}[{p}]' for t, p in unknown]}")
        earliest = _list_offsets(admin, sources,
                                 OffsetSpec.earliest(),  # type: ignore[no-untyped-call]
                                 timeout_s)
        outside = [f"{tp.topic}[{tp.partition}]={o} (log {earliest[tp]}..{latest[tp]})"
                   for tp, o in sorted(to_offsets.items())
                   if not earliest[tp] <= o <= latest[tp]]
        if outside:
            raise ResetRefused(f"{offsets_file}: offsets outside the log: {', '.join(outside)}")
        new, target = dict(to_offsets), f"offsets from {offsets_file}"
    elif to_datetime is not None:
        found = _list_offsets(admin, sources, OffsetSpec.for_timestamp(to_datetime), timeout_s)
        # No record at or after the time: the end of the partition.
        new = {tp: o if o >= 0 else latest[tp] for tp, o in found.items()}
        target = f"first records at or after {to_datetime} ms ({_iso(to_datetime)})"
    else:
        new = _list_offsets(admin, sources, OffsetSpec.earliest(),  # type: ignore[no-untyped-call]
                            timeout_s)
        target = "earliest"
    # The instance registry too (queryable state): its entries describe instances that are gone.
    internal = [*compiled.repartition_topics, *(t for _, t in compiled.changelog_topics.values()),
                instances_topic(app)]
    return ResetPlan(
        app_id=app, group_state=desc.state.name.lower(), target=target,
        offsets={tp: (committed.get(tp), new[tp]) for tp in sources},
        other_offsets={tp: o for tp, o in committed.items() if tp not in new},
        internal_topics=sorted(t for t in internal if t in topics),
        state_dir=state_dir if state_dir.exists() else None)


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def describe(plan: ResetPlan) -> str:
    """The plan for humans, one action per line."""
    lines = [f"Reset of application {plan.app_id!r} (consumer group {plan.group_state})",
             f"Source offsets, to {plan.target}:"]
    for tp, (old, new) in sorted(plan.offsets.items()):
        lines.append(f"  {tp.topic}[{tp.partition}]: {'none' if old is None else old} -> {new}")
    if plan.other_offsets:
        lines.append("Committed offsets dropped (the group is deleted and recreated):")
        lines += [f"  {tp.topic}[{tp.partition}]: {o}"
                  for tp, o in sorted(plan.other_offsets.items())]
    lines.append("Internal topics to delete:" if plan.internal_topics
                 else "Internal topics to delete: none exist")
    lines += [f"  {t}" for t in plan.internal_topics]
    lines.append(f"Local state to delete: {plan.state_dir}" if plan.state_dir is not None
                 else "Local state to delete: none here")
    return "\n".join(lines) + "\n"


def execute(admin: AdminClient, plan: ResetPlan, timeout_s: float = 30.0) -> None:
    app = plan.app_id
    if plan.group_state != "dead":
        # Fails with NON_EMPTY_GROUP if an instance joined since the plan was made.
        _result(admin.delete_consumer_groups([app], request_timeout=timeout_s)[app], timeout_s)
    group = ConsumerGroupTopicPartitions(
        app, [_ktp(tp, new) for tp, (_, new) in sorted(plan.offsets.items())])
    _result(admin.alter_consumer_group_offsets([group], request_timeout=timeout_s)[app],
            timeout_s)
    if plan.internal_topics:
        for name, fut in admin.delete_topics(plan.internal_topics,
                                             operation_timeout=timeout_s).items():
            try:
                fut.result(timeout=timeout_s)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise StreamprocError(f"reset: cannot delete {name}: {exc.args[0]}") from exc
        # An instance started right after must find them gone, not half-deleted.
        deadline = time.monotonic() + timeout_s
        while set(plan.internal_topics) & set(admin.list_topics(timeout=timeout_s).topics):
            if time.monotonic() > deadline:
                raise StreamprocError(f"reset: topics {plan.internal_topics} were not deleted "
                                      f"within {timeout_s:.0f} s")
            time.sleep(0.2)
    if plan.state_dir is not None:
        # The plan may have been built elsewhere: delete nothing but an application's
        # directory inside a state dir.
        if StateDir(plan.state_dir.parent, plan.app_id).path != plan.state_dir:
            raise StreamprocError(f"reset: {plan.state_dir} is not the state of {plan.app_id!r}")
        shutil.rmtree(plan.state_dir)


def reset(bootstrap: Bootstrap, compiled: CompiledTopology, state_root: Path, *, dry_run: bool,
          to_datetime: int | None = None, offsets_file: Path | None = None,
          timeout_s: float = 30.0) -> str:
    """Plan, and unless ``dry_run`` carry out, a reset; returns the report for stdout."""
    # librdkafka's own lines go to a logger the CLI keeps quiet (cli._quiet_clients).
    admin = new_admin({**client_base(bootstrap), "logger": COMMAND_CLIENT_LOG})
    to_offsets = read_offsets_file(offsets_file) if offsets_file is not None else None
    plan = plan_reset(admin, compiled, state_root, to_datetime=to_datetime,
                      to_offsets=to_offsets, offsets_file=offsets_file, timeout_s=timeout_s)
    report = describe(plan)
    if dry_run:
        return report + "Dry run: nothing was changed.\n"
    execute(admin, plan, timeout_s)
    return report + "Done: the next run starts from these offsets with empty state.\n"
