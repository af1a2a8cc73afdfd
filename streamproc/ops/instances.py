"""Which instance of an application holds which task, and where its HTTP endpoint is.

Every instance serving HTTP publishes one record to the compacted topic ``{app}-instances``
(1 partition): key = its instance id, value = JSON ``{instance, url, tasks, restoring,
started_at, at}`` with the ``[sub-topology, partition]`` of every task it holds. It publishes
at start, whenever its set of tasks changes, every ``HEARTBEAT_S`` (so a live instance's entry
stays fresh) and, when it stops, a tombstone. It reads the topic from the beginning and follows
it, so each instance knows every other one: that is how a query for a key of a partition held
elsewhere finds the owner.

Ownership rules (pure functions below, unit-tested): an entry's time is the record's Kafka
timestamp (the topic is created with ``LogAppendTime``: the broker's clock, the same for every
instance, so clock skew between machines cannot decide who owns a partition). When two entries
claim a task, the newer one wins: a crashed instance never republishes, so the stale claim of
its last record loses to the new owner's. An entry more than ``STALE_AFTER_S`` older than the
newest record in the topic belongs to an instance that stopped heartbeating (killed, hung):
it owns nothing and is not asked anything.

Kafka I/O happens in :meth:`InstanceRegistry.tick`, on the loop's thread, without blocking
(``consume(n, 0)``, ``poll(0)``). The HTTP thread only reads :attr:`InstanceRegistry.view`, an
immutable object that ``tick`` swaps whole.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc.kafka.admin import TopicAdmin, TopicSpec
from streamproc.kafka.clients import new_consumer, new_producer
from streamproc.types import TaskId

log = structlog.get_logger(__name__)

HEARTBEAT_S = 30.0
STALE_AFTER_S = 3 * HEARTBEAT_S
# LogAppendTime: ownership is decided by the broker's clock, never by the instances' clocks.
INSTANCES_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0",
                    "message.timestamp.type": "LogAppendTime"}
_READ_BATCH = 500


def instances_topic(app_id: str) -> str:
    """The registry topic of an application (an internal topic: reset should delete it)."""
    return f"{app_id}-instances"


def advertised_url(configured: str | None, host: str, port: int) -> str:
    """Where other instances reach this one: ``http_advertised_url`` if set, else
    ``http://{host}:{port}`` with a wildcard bind address replaced by this machine's name."""
    if configured:
        return configured.rstrip("/")
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - recognising a wildcard, not binding one
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


@dataclass(frozen=True)
class Entry:
    """One instance's latest record. ``ts``: the record's Kafka timestamp (ms)."""

    instance: str
    url: str
    tasks: frozenset[TaskId]
    restoring: frozenset[TaskId]
    started_at: int
    at: int
    ts: int

    def to_json(self, live: bool) -> dict[str, Any]:
        return {"instance": self.instance, "url": self.url, "live": live,
                "tasks": sorted(str(t) for t in self.tasks),
                "restoring": sorted(str(t) for t in self.restoring),
                "started_at": self.started_at, "at": self.at, "seen_at": self.ts}


def encode_entry(instance: str, url: str, tasks: Iterable[TaskId],
                 restoring: Iterable[TaskId], started_at: int, at: int) -> bytes:
    return orjson.dumps({
        "instance": instance, "url": url,
        "tasks": [[t.subtopology, t.partition] for t in sorted(tasks)],
        "restoring": [[t.subtopology, t.partition] for t in sorted(restoring)],
        "started_at": started_at, "at": at})


def decode_entry(key: bytes | None, value: bytes | None, ts: int) -> tuple[str, Entry | None]:
    """``(instance id, entry)``; entry None for a tombstone. Raises ValueError when the record
    is not a registry record."""
    if not key:
        raise ValueError("registry record without a key")
    instance = key.decode()
    if value is None:
        return instance, None
    d = orjson.loads(value)
    tasks = frozenset(TaskId(int(s), int(p)) for s, p in d["tasks"])
    restoring = frozenset(TaskId(int(s), int(p)) for s, p in d.get("restoring", ()))
    return instance, Entry(instance, str(d["url"]), tasks, restoring,
                           int(d.get("started_at", 0)), int(d.get("at", 0)), ts)


def apply_record(entries: Mapping[str, Entry], instance: str,
                 entry: Entry | None) -> dict[str, Entry]:
    """The entries after one record: an entry replaces the instance's previous one, a
    tombstone removes it."""
    out = dict(entries)
    if entry is None:
        out.pop(instance, None)
    else:
        out[instance] = entry
    return out


def live_entries(entries: Mapping[str, Entry], stale_after_ms: int) -> dict[str, Entry]:
    """Entries at most ``stale_after_ms`` older than the newest one (all on the broker's
    clock): the instances that still heartbeat."""
    if not entries:
        return {}
    newest = max(e.ts for e in entries.values())
    return {k: e for k, e in entries.items() if newest - e.ts <= stale_after_ms}


def owners(entries: Mapping[str, Entry], stale_after_ms: int) -> dict[TaskId, Entry]:
    """The owner of every claimed task: among live entries claiming it, the newest record
    (ties, which need two records in one millisecond, go to the larger instance id so every
    instance decides alike)."""
    out: dict[TaskId, Entry] = {}
    for e in live_entries(entries, stale_after_ms).values():
        for t in e.tasks:
            cur = out.get(t)
            if cur is None or (e.ts, e.instance) > (cur.ts, cur.instance):
                out[t] = e
    return out


@dataclass(frozen=True)
class RegistryView:
    """What the HTTP thread reads: every instance's entry and the owner of every task."""

    entries: Mapping[str, Entry] = field(default_factory=lambda: MappingProxyType({}))
    owners: Mapping[TaskId, Entry] = field(default_factory=lambda: MappingProxyType({}))
    live: frozenset[str] = frozenset()
    caught_up: bool = False  # the topic was read to its end at least once

    @staticmethod
    def of(entries: Mapping[str, Entry], caught_up: bool,
           stale_after_ms: int = int(STALE_AFTER_S * 1000)) -> RegistryView:
        return RegistryView(MappingProxyType(dict(entries)),
                            MappingProxyType(owners(entries, stale_after_ms)),
                            frozenset(live_entries(entries, stale_after_ms)), caught_up)

    def to_json(self) -> list[dict[str, Any]]:
        return [self.entries[k].to_json(k in self.live) for k in sorted(self.entries)]


class InstanceRegistry:
    """This instance's side of the registry: its own producer and an assign-only consumer."""

    def __init__(self, app_id: str, instance: str, url: str, bootstrap: str,
                 producer_extra: Mapping[str, str] | None = None,
                 consumer_extra: Mapping[str, str] | None = None) -> None:
        self.app_id = app_id
        self.instance = instance
        self.url = url
        self.topic = instances_topic(app_id)
        self.view = RegistryView()
        self._bootstrap = bootstrap
        # The user's extra client settings carry security (TLS, SASL) for their cluster.
        self._producer_extra = dict(producer_extra or {})
        self._consumer_extra = dict(consumer_extra or {})
        self._entries: dict[str, Entry] = {}
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._published: tuple[frozenset[TaskId], frozenset[TaskId]] | None = None
        self._next_heartbeat = 0.0
        self._started_at = int(time.time() * 1000)
        self._caught_up = False

    def start(self, admin: TopicAdmin) -> None:
        admin.create([TopicSpec(self.topic, 1, INSTANCES_CONFIG)])
        self._producer = new_producer({
            **self._producer_extra, "bootstrap.servers": self._bootstrap,
            "client.id": f"{self.app_id}-{self.instance}-registry",
            # Idempotent, not transactional: entries are not part of any checkpoint.
            "enable.idempotence": True, "linger.ms": 0})
        self._consumer = new_consumer({
            **self._consumer_extra, "bootstrap.servers": self._bootstrap,
            "client.id": f"{self.app_id}-{self.instance}-registry",
            # Assigned, never subscribed and never committed: librdkafka wants a group id.
            "group.id": f"{self.app_id}-instances-reader", "enable.auto.commit": False,
            "enable.auto.offset.store": False, "enable.partition.eof": True,
            "isolation.level": "read_uncommitted"})
        self._consumer.assign([KafkaTopicPartition(self.topic, 0, OFFSET_BEGINNING)])

    def tick(self, now: float, tasks: Mapping[TaskId, bool]) -> None:
        """Read what arrived, publish this instance's entry when its tasks changed or the
        heartbeat is due. ``tasks``: every task held, True when running. Never blocks."""
        claim = (frozenset(tasks), frozenset(t for t, run in tasks.items() if not run))
        if self._producer is not None and (claim != self._published
                                           or now >= self._next_heartbeat):
            self._publish(claim)
            self._next_heartbeat = now + HEARTBEAT_S
        if self._producer is not None:
            self._producer.poll(0)
        self._read()

    def _publish(self, claim: tuple[frozenset[TaskId], frozenset[TaskId]]) -> None:
        assert self._producer is not None
        value = encode_entry(self.instance, self.url, claim[0], claim[1], self._started_at,
                             int(time.time() * 1000))
        try:
            self._producer.produce(self.topic, value, self.instance.encode(),
                                   on_delivery=_delivered)
            self._published = claim
        except Exception as exc:  # BufferError, KafkaException: never stop processing
            log.warning("registry.publish_failed", topic=self.topic, error=str(exc))

    def _read(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        changed = False
        try:
            msgs = consumer.consume(_READ_BATCH, 0)
        except Exception as exc:
            log.warning("registry.read_failed", topic=self.topic, error=str(exc))
            return
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    changed = changed or not self._caught_up
                    self._caught_up = True
                else:
                    log.warning("registry.read_failed", topic=self.topic, error=str(err))
                continue
            try:
                instance, entry = decode_entry(m.key(), m.value(), m.timestamp()[1])
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("registry.bad_record", topic=self.topic, partition=m.partition(),
                            offset=m.offset(), error=str(exc))
                continue
            self._entries = apply_record(self._entries, instance, entry)
            changed = True
        if changed:
            self.view = RegistryView.of(self._entries, self._caught_up)

    def close(self, timeout_s: float = 2.0) -> None:
        """Publish the tombstone (this instance holds nothing any more) and close."""
        if self._producer is not None:
            try:
                self._producer.produce(self.topic, None, self.instance.encode(),
                                       on_delivery=_delivered)
                left = self._producer.flush(timeout_s)
                if left:
                    log.warning("registry.tombstone_unsent", topic=self.topic)
            except Exception as exc:
                log.warning("registry.publish_failed", topic=self.topic, error=str(exc))
            self._producer = None
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self.view = RegistryView()


def _delivered(err: KafkaError | None, msg: Any) -> None:
    if err is not None:
        log.warning("registry.publish_failed", topic=msg.topic(), error=str(err))
