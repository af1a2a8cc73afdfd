"""Standby replicas: warm copies of stateful tasks that other instances own.

With ``num_standby_replicas`` = k, every stateful task has up to k standbys on instances other
than its owner. A standby is the task's stores opened where the active task would open them
(``{state_dir}/{app}/{store}/{partition}``), kept up to date by tailing each store's changelog
with a ``read_committed`` consumer: only what committed checkpoints wrote, applied one RocksDB
WriteBatch per store per consumed batch together with the changelog offset it reached, as a
restore does. So a store always holds a committed prefix of its changelog and the offset of
that prefix, whether a standby or an active task wrote it last. When the task moves here, the
restorer starts from that offset and replays only the delta; an instance that restarts picks
its standbys up where they were.

**Placement** (:func:`standby_hosts`, a pure function) is decided over the live instances of
the ``{app}-instances`` registry and the owners it names, so every instance computes the same
answer without asking the others. For a task owned by O, the first standby goes where the
range assignor would hand the task if O left the group, the next where it would go if that
instance left as well, and so on. Why that rule: with static membership the group's member ids
begin with the ``group.instance.id`` (``{app}-{instance id}``), so the range assignor orders
members as the instance ids sort, and a single failure then moves every task to the instance
holding its first standby (a task keeps its block index or moves one block down when a member
leaves; tests/unit/test_standby.py checks it exhaustively for small groups). Under
cooperative-sticky the rule stays deterministic but the assignor does not follow it, except
with two instances, where the survivor holds every standby.

Runs as an :class:`~streamproc.runtime.observe.InstanceListener`, on the loop's thread: the
standby consumer is read without blocking once per loop iteration; a task assigned here has
its standby closed before the task opens the same stores (``assigned`` comes first).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc.kafka.clients import restore_consumer_config
from streamproc.state.store import KeyValueStore
from streamproc.types import TaskId, TopicPartition

if TYPE_CHECKING:
    from streamproc.runtime.observe import CheckpointDone, InstanceView

log = structlog.get_logger(__name__)

PLACE_EVERY_S = 1.0
LAG_EVERY_S = 2.0
RETRY_AFTER_S = 30.0  # a standby that failed (its disk, its database) is not retried before
LAG_METRIC = "standby_lag_records"
COUNT_METRIC = "standby_tasks"

# The registry as placement needs it: the live instance ids and the owner of every task, or
# None while it has not been read to its end (nothing is placed on a partial view).
Membership = tuple[frozenset[str], Mapping[TaskId, str]]


# -- placement (pure) ---------------------------------------------------------------------------
def range_owner(partition: int, members: Sequence[str], partitions: int) -> str:
    """The member the range assignor gives ``partition`` of a topic with ``partitions``
    partitions, ``members`` in the assignor's order: the first ``partitions % n`` members get
    one partition more than the others, in contiguous blocks."""
    per, extra = divmod(partitions, len(members))
    head = extra * (per + 1)  # partitions of the members with one more
    if partition < head:
        return members[partition // (per + 1)]
    return members[extra + (partition - head) // per]


def standby_hosts(partition: int, partitions: int, owner: str | None, live: Sequence[str],
                  replicas: int) -> list[str]:
    """Where the standbys of the task on ``partition`` go, first one first: where the range
    assignor would move the task if its owner left, then if that one left too, and so on.
    ``owner`` None (nobody claims it): the owner range would pick now."""
    members = sorted(set(live))
    if not members:
        return []
    if owner not in members:
        owner = range_owner(partition, members, partitions)
    rest = [m for m in members if m != owner]
    hosts: list[str] = []
    while rest and len(hosts) < replicas:
        host = range_owner(partition, rest, partitions)
        hosts.append(host)
        rest.remove(host)
    return hosts


def placement(stateful: Mapping[int, int], membership: Membership, me: str, replicas: int,
              local: frozenset[TaskId]) -> set[TaskId]:
    """The tasks this instance (``me``) keeps standbys of: those whose hosts include it, less
    the tasks it runs itself. ``stateful``: partitions per stateful sub-topology."""
    live, owners = membership
    if me not in live:
        return set()  # not published yet: nobody else counts on this instance either
    out = set()
    for sub, partitions in stateful.items():
        for p in range(partitions):
            tid = TaskId(sub, p)
            if tid in local:
                continue
            if me in standby_hosts(p, partitions, owners.get(tid), sorted(live), replicas):
                out.add(tid)
    return out


# -- the standbys of this instance --------------------------------------------------------------
@dataclass
class _Tail:
    """One changelog partition a standby follows."""

    task: TaskId
    store: KeyValueStore
    caught_up: bool = False


@dataclass
class Standby:
    task: TaskId
    stores: dict[str, KeyValueStore]
    changelogs: dict[TopicPartition, _Tail] = field(default_factory=dict)


class StandbyReplicas:
    """An InstanceListener keeping this instance's standbys. ``membership`` reads the registry
    (streamproc/service.py wires it to the HTTP listener's); ``consumer`` is a seam for tests."""

    def __init__(self, replicas: int, membership: Callable[[], Membership | None], *,
                 consumer: Callable[[dict[str, Any]], Consumer] = Consumer,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.replicas = replicas
        self._membership = membership
        self._new_consumer = consumer
        self._clock = clock
        self._view: InstanceView | None = None
        self._me = ""
        self._stateful: dict[int, int] = {}
        self._store_specs: dict[int, list[Any]] = {}
        self._changelog: dict[str, str] = {}
        self._config: dict[str, Any] = {}
        self._batch = 1000
        self._cache_keys = 0
        self._consumer: Consumer | None = None
        self.standbys: dict[TaskId, Standby] = {}
        self._tails: dict[TopicPartition, _Tail] = {}
        self._failed: dict[TaskId, float] = {}  # task -> when it may be tried again
        self._next_place = 0.0
        self._next_lag = 0.0

    # -- InstanceListener ----------------------------------------------------------------------
    def producer_config(self, conf: dict[str, Any]) -> dict[str, Any]:
        return conf

    def started(self, view: InstanceView, instance_id: str) -> None:
        self._view, self._me = view, instance_id
        s = view.settings
        plan = view.tasks_per_subtopology
        for st in view.compiled.subtopologies:
            # A table read from its topic has no changelog to tail: a failover restores it
            # from the topic up to the committed offset (docs/joins.md).
            specs = [spec for spec in st.stores if spec.source_topic is None]
            if specs and st.id in plan:
                self._stateful[st.id] = plan[st.id]
                self._store_specs[st.id] = specs
        self._changelog = {name: topic for name, (_, topic)
                           in view.compiled.changelog_topics.items()}
        self._config = {**restore_consumer_config(s, view.bootstrap, view.app_id),
                        "client.id": f"{view.app_id}-{instance_id}-standby",
                        "group.id": f"{view.app_id}-standby",
                        # Tailing waits on the broker between records, not a bulk read:
                        # 250 ms keeps a standby that fresh at four idle fetches a second.
                        "fetch.wait.max.ms": 250}
        self._batch = s.restore_batch_size
        self._cache_keys = s.state_cache_max_keys
        log.info("standby.enabled", replicas=self.replicas,
                 stateful_tasks=sum(self._stateful.values()))

    def tick(self, now: float) -> None:
        if self._view is None:
            return
        if now >= self._next_place:
            self._next_place = now + PLACE_EVERY_S
            self._place(now)
        if self._tails:
            self._tail()
        if now >= self._next_lag:
            self._next_lag = now + LAG_EVERY_S
            self._report_lag()

    def assigned(self, partitions: Sequence[TopicPartition], new_tasks: Sequence[TaskId]) -> None:
        for tid in new_tasks:  # before the task opens the same stores
            if tid in self.standbys:
                self._release(tid, "assigned here")

    def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        self._next_place = 0.0  # a task that left may become a standby here

    def lost(self, partitions: Sequence[TopicPartition]) -> None:
        self._next_place = 0.0

    def restored(self, task: TaskId) -> None:
        return None

    def checkpointed(self, done: CheckpointDone) -> None:
        return None

    def stopping(self, failure: BaseException | None) -> None:
        for tid in list(self.standbys):
            self._release(tid, "stopping")
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def stopped(self, failure: BaseException | None) -> None:
        return None

    # -- placement -----------------------------------------------------------------------------
    def _place(self, now: float) -> None:
        assert self._view is not None
        membership = self._membership()
        if membership is None:
            return
        local = frozenset(self._view.tasks)
        want = placement(self._stateful, membership, self._me, self.replicas, local)
        for tid in sorted(set(self.standbys) - want):
            self._release(tid, "placed elsewhere")
        for tid in sorted(want - set(self.standbys)):
            if self._failed.get(tid, 0.0) > now:
                continue
            self._open(tid)
        self._view.metrics.set(COUNT_METRIC, len(self.standbys))

    def _open(self, tid: TaskId) -> None:
        assert self._view is not None
        app_dir = self._view.settings.state_dir / self._view.app_id
        stores: dict[str, KeyValueStore] = {}
        try:
            for spec in self._store_specs[tid.subtopology]:
                store = KeyValueStore(spec.name, tid.partition,
                                      app_dir / spec.name / str(tid.partition),
                                      spec.value_codec, cache_max_keys=self._cache_keys)
                store.open()
                stores[spec.name] = store
        except Exception as exc:  # its disk or database: this standby only, not the instance
            for store in stores.values():
                store.close()
            self._failed[tid] = self._clock() + RETRY_AFTER_S
            log.warning("standby.open_failed", task=str(tid), error=str(exc),
                        retry_in_s=RETRY_AFTER_S)
            return
        standby = self.standbys[tid] = Standby(tid, stores)
        assigns = []
        for name, store in stores.items():
            tp = TopicPartition(self._changelog[name], tid.partition)
            tail = standby.changelogs[tp] = self._tails[tp] = _Tail(tid, store)
            assigns.append(KafkaTopicPartition(tp.topic, tp.partition, tail.store.changelog_offset))
        self._client().incremental_assign(assigns)
        log.info("standby.started", task=str(tid),
                 changelogs={f"{tp.topic}[{tp.partition}]": t.store.changelog_offset
                             for tp, t in standby.changelogs.items()})

    def _release(self, tid: TaskId, reason: str) -> None:
        standby = self.standbys.pop(tid)
        if self._consumer is not None and standby.changelogs:
            self._consumer.incremental_unassign(
                [KafkaTopicPartition(tp.topic, tp.partition) for tp in standby.changelogs])
        gauges = self._view.metrics.gauges if self._view is not None else {}
        for tp, tail in standby.changelogs.items():
            self._tails.pop(tp, None)
            gauges.pop((LAG_METRIC, (("store", tail.store.name), ("task", str(tid)))), None)
        offsets = {name: s.changelog_offset for name, s in standby.stores.items()
                   if s.is_open and not s.disk_full}
        for store in standby.stores.values():
            store.close()
        if self._view is not None:
            self._view.metrics.set(COUNT_METRIC, len(self.standbys))
        log.info("standby.released", task=str(tid), reason=reason, offsets=offsets)

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = self._new_consumer(self._config)
        return self._consumer

    # -- tailing -------------------------------------------------------------------------------
    def _tail(self) -> None:
        consumer = self._client()
        msgs = consumer.consume(self._batch, 0)
        if not msgs:
            return
        pending: dict[TopicPartition, list[Any]] = {}  # [batch, last offset]
        failed: set[TaskId] = set()
        cur: tuple[str | None, int | None] = (None, None)
        acc: list[Any] | None = None
        for m in msgs:
            topic, part = m.topic(), m.partition()
            err = m.error()
            if (topic, part) != cur or err is not None:
                cur = (topic, part)
                tp = TopicPartition(topic or "", part or 0)
                tail = self._tails.get(tp)
                acc = None
                if tail is None:
                    cur = (None, None)
                    continue  # a late message for a standby released meanwhile
                if err is not None:
                    cur = (None, None)
                    self._tail_error(tp, tail, err, m.offset(), pending)
                    continue
                acc = pending.get(tp)
                if acc is None:
                    acc = pending[tp] = [tail.store.restore_batch(), -1]
            if acc is None:
                continue
            key = m.key()
            if key is None:
                continue  # not a changelog record of ours
            value = m.value()
            if value is None:
                acc[0].delete(key)
            else:
                acc[0].put(key, value)
            acc[1] = m.offset()
        for tp, (batch, last) in pending.items():
            tail = self._tails.get(tp)
            if tail is None or last < 0:
                continue
            try:
                tail.store.apply_restore_batch(batch, last + 1)
            except Exception as exc:
                log.warning("standby.apply_failed", task=str(tail.task), store=tail.store.name,
                            error=str(exc), retry_in_s=RETRY_AFTER_S)
                failed.add(tail.task)
        for tid in failed:
            if tid in self.standbys:
                self._failed[tid] = self._clock() + RETRY_AFTER_S
                self._release(tid, "failed")

    def _tail_error(self, tp: TopicPartition, tail: _Tail, err: KafkaError, offset: int | None,
                    pending: dict[TopicPartition, list[Any]]) -> None:
        code = err.code()
        if code == KafkaError._PARTITION_EOF:
            # Past any transaction marker at the end: the offset the next restore starts at.
            batch = pending.pop(tp, None)
            if batch is not None and batch[1] >= 0:
                tail.store.apply_restore_batch(batch[0], batch[1] + 1)
            end = offset or 0
            if end > tail.store.changelog_offset:
                tail.store.apply_changelog([], end)
            if not tail.caught_up:
                tail.caught_up = True
                log.info("standby.caught_up", task=str(tail.task), store=tail.store.name,
                         changelog=tp.topic, partition=tp.partition, offset=end)
        elif code in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
            # The stored offset lies outside the changelog (recreated, or an older
            # incarnation's state): nothing local can be trusted; follow it from its start.
            pending.pop(tp, None)
            log.warning("standby.stale_local_state_wiped", task=str(tail.task),
                        store=tail.store.name, stored_offset=tail.store.changelog_offset,
                        reason=str(err))
            tail.store.wipe()
            tail.store.open()
            tail.caught_up = False
            consumer = self._client()
            consumer.incremental_unassign([KafkaTopicPartition(tp.topic, tp.partition)])
            consumer.incremental_assign([KafkaTopicPartition(tp.topic, tp.partition,
                                                             OFFSET_BEGINNING)])
        else:
            log.warning("standby.consume_error", changelog=tp.topic, partition=tp.partition,
                        error=str(err))

    def _report_lag(self) -> None:
        """``standby_lag_records``: the changelog's end minus what the standby applied (an upper
        bound: the end counts transaction markers)."""
        if self._view is None or self._consumer is None:
            return
        metrics = self._view.metrics
        for tp, tail in self._tails.items():
            _, high = self._consumer.get_watermark_offsets(
                KafkaTopicPartition(tp.topic, tp.partition), cached=True)
            if high is None or high < 0:
                continue
            metrics.set(LAG_METRIC, max(0, high - tail.store.changelog_offset),
                        task=str(tail.task), store=tail.store.name)
