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

Anyone who can write the topic can write a record into it, so every record is input
(:func:`decode_entry`): the key an instance id, the value a small JSON object whose URL is an
endpoint (streamproc/ops/endpoint.py) and whose claims are tasks of this plan; with
``http_registry_signing_key`` also an HMAC-SHA256 over topic, key and value in the header
``streamproc.registry.mac``, and an ``at`` within ``STALE_AFTER_S`` of the broker's timestamp
(an old signed record written again is not fresh). A record failing any rule is ignored,
logged and counted (``registry_records_rejected_total`` by reason); it never replaces or
removes the instance's previous entry.

Kafka I/O happens in :meth:`InstanceRegistry.tick`, on the loop's thread, without blocking
(``consume(n, 0)``, ``poll(0)``). The HTTP thread only reads :attr:`InstanceRegistry.view`, an
immutable object that ``tick`` swaps whole.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc.graph.naming import instances_topic
from streamproc.kafka.admin import TopicAdmin, TopicSpec, replicated
from streamproc.kafka.clients import new_consumer, new_producer
from streamproc.names import name_problem
from streamproc.ops.endpoint import BadEndpoint, Endpoint, parse_endpoint
from streamproc.runtime.limits import read_headers
from streamproc.types import TaskId

log = structlog.get_logger(__name__)

HEARTBEAT_S = 30.0
STALE_AFTER_S = 3 * HEARTBEAT_S
# LogAppendTime: ownership is decided by the broker's clock, never by the instances' clocks.
INSTANCES_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0",
                    "message.timestamp.type": "LogAppendTime"}
_READ_BATCH = 500
MAC_HEADER = "streamproc.registry.mac"
MAX_ENTRY_BYTES = 256 * 1024  # thousands of claims; a larger value is not an entry
_LEN = struct.Struct(">I")


def advertised_url(configured: str | None, host: str, port: int, tls: bool = False) -> str:
    """Where other instances reach this one: ``http_advertised_url`` if set (with the scheme's
    default port made explicit), else ``http(s)://{host}:{port}`` with a wildcard bind address
    replaced by this machine's name. Always in the form :func:`decode_entry` accepts."""
    if configured:
        url = configured.rstrip("/")
        netloc = url.split("://", 1)[-1]
        if ":" not in netloc or netloc.endswith("]"):
            url += ":443" if url.startswith("https://") else ":80"
        return url
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - recognising a wildcard, not binding one
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


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

    @property
    def endpoint(self) -> Endpoint:
        """Where to reach it (``url`` was checked when the record was read)."""
        return parse_endpoint(self.url)

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


class Rejected(ValueError):
    """A registry record that is not taken. ``reason`` is a short label (a metric label)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _int(d: Mapping[str, Any], name: str, default: int | None = None) -> int:
    v = d.get(name, default)
    if type(v) is not int or not -(2**63) <= v < 2**63:  # bool is not a count
        raise Rejected("bad_value", f"{name} is not a 64-bit integer")
    return v


def _tasks(raw: Any, plan: Mapping[int, int] | None, name: str) -> frozenset[TaskId]:
    if not isinstance(raw, list):
        raise Rejected("bad_value", f"{name} is not a list")
    out = set()
    for t in raw:
        if not (isinstance(t, list) and len(t) == 2 and all(type(x) is int for x in t)):
            raise Rejected("bad_value", f"{name}: {str(t)[:40]} is not [sub-topology, "
                           "partition]")
        sub, partition = t
        if plan is not None and not 0 <= partition < plan.get(sub, 0):
            raise Rejected("unknown_task", f"{name}: task {sub}_{partition} is not in this "
                           "application's plan")
        if not 0 <= sub < 2**31 or not 0 <= partition < 2**31:
            raise Rejected("bad_value", f"{name}: {sub}_{partition} is out of range")
        out.add(TaskId(sub, partition))
    return frozenset(out)


def decode_entry(key: bytes | None, value: bytes | None, ts: int,
                 plan: Mapping[int, int] | None = None) -> tuple[str, Entry | None]:
    """``(instance id, entry)``; entry None for a tombstone. ``plan``: the number of tasks of
    every sub-topology (claims outside it are refused). Raises :class:`Rejected` (a
    ValueError) naming the first rule the record breaks."""
    if not key:
        raise Rejected("bad_key", "registry record without a key")
    try:
        instance = key.decode()
    except UnicodeDecodeError:
        raise Rejected("bad_key", "the key is not UTF-8") from None
    problem = name_problem(instance)
    if problem is not None:
        raise Rejected("bad_key", f"the key is not an instance id: it {problem}")
    if value is None:
        return instance, None
    if len(value) > MAX_ENTRY_BYTES:
        raise Rejected("bad_value", f"the value is {len(value)} bytes, over {MAX_ENTRY_BYTES}")
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise Rejected("bad_value", f"the value is not JSON: {exc}") from None
    if not isinstance(d, dict):
        raise Rejected("bad_value", "the value is not a JSON object")
    if d.get("instance") != instance:
        raise Rejected("bad_value", "the value's instance is not the record's key")
    try:
        url = parse_endpoint(d.get("url")).base
    except BadEndpoint as exc:
        raise Rejected("bad_url", str(exc)) from None
    tasks = _tasks(d.get("tasks"), plan, "tasks")
    restoring = _tasks(d.get("restoring", []), plan, "restoring")
    if not restoring <= tasks:
        raise Rejected("bad_value", "restoring names tasks the entry does not claim")
    return instance, Entry(instance, url, tasks, restoring, _int(d, "started_at", 0),
                           _int(d, "at", 0), ts)


def registry_key(secret: str) -> bytes:
    """The HMAC key of registry entries, from ``http_registry_signing_key``."""
    return hashlib.sha256(b"streamproc-registry\0" + secret.encode()).digest()


def entry_mac(key: bytes, topic: str, record_key: bytes, value: bytes | None) -> bytes:
    """HMAC-SHA256 (hex) over topic, key and value, each length-prefixed (a tombstone has
    no value, which is not the same as an empty one)."""
    parts = [topic.encode(), record_key, b"" if value is None else b"v" + value]
    msg = b"".join(_LEN.pack(len(p)) + p for p in parts)
    return hmac.new(key, msg, hashlib.sha256).hexdigest().encode()


def check_signature(key: bytes, topic: str, record_key: bytes | None, value: bytes | None,
                    headers: Any) -> None:
    """Raise :class:`Rejected` unless ``headers`` carry exactly one valid MAC header."""
    macs = [v for k, v in headers or () if k == MAC_HEADER]
    if not macs:
        raise Rejected("unsigned", f"no {MAC_HEADER} header (http_registry_signing_key is set)")
    expected = entry_mac(key, topic, record_key or b"", value)
    if len(macs) != 1 or not isinstance(macs[0], bytes) \
            or not hmac.compare_digest(macs[0], expected):
        raise Rejected("bad_signature", f"{MAC_HEADER} does not match: written without this "
                       "application's http_registry_signing_key")


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
                 consumer_extra: Mapping[str, str] | None = None, *,
                 plan: Mapping[int, int] | None = None, signing_key: bytes | None = None,
                 count: Callable[..., None] | None = None) -> None:
        """``plan``: tasks per sub-topology (claims outside it are refused); ``signing_key``:
        :func:`registry_key` of the shared secret (entries are signed, unsigned ones refused);
        ``count(name, n, **labels)``: the engine's counter, for refused records."""
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
        self._plan = dict(plan) if plan is not None else None
        self._signing_key = signing_key
        self._count = count

    def start(self, admin: TopicAdmin, replication: int | None = None) -> None:
        """``replication``: ``internal_replication_factor`` (None: the broker's default)."""
        if admin.partitions([self.topic]).get(self.topic) is None:
            up = admin.brokers_up(replication) if replication is not None else 0
            admin.create(replicated([TopicSpec(self.topic, 1, INSTANCES_CONFIG)], replication, up))
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
                                   headers=self._headers(value), on_delivery=_delivered)
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
                instance, entry = self._decode(m)
            except Rejected as exc:
                # Anyone who can write the topic can write this: logged and counted, never
                # taken, and the instance's previous entry stays.
                log.warning("registry.bad_record", topic=self.topic, partition=m.partition(),
                            offset=m.offset(), reason=exc.reason, error=str(exc))
                if self._count is not None:
                    self._count("registry_records_rejected_total", reason=exc.reason)
                continue
            self._entries = apply_record(self._entries, instance, entry)
            changed = True
        if changed:
            self.view = RegistryView.of(self._entries, self._caught_up)

    def _headers(self, value: bytes | None) -> list[tuple[str, str | bytes | None]] | None:
        if self._signing_key is None:
            return None
        mac = entry_mac(self._signing_key, self.topic, self.instance.encode(), value)
        return [(MAC_HEADER, mac)]

    def _decode(self, m: Any) -> tuple[str, Entry | None]:
        key, value, ts = m.key(), m.value(), m.timestamp()[1]
        if self._signing_key is not None:
            try:
                headers = read_headers(m)
            except Exception as exc:  # a header name that is not UTF-8: never read again
                raise Rejected("bad_headers", f"unreadable headers: {exc}") from None
            check_signature(self._signing_key, self.topic, key, value, headers)
        instance, entry = decode_entry(key, value, ts, self._plan)
        if self._signing_key is not None and entry is not None \
                and abs(ts - entry.at) > STALE_AFTER_S * 1000:
            # Signed, but written long after it was made: an old record copied again.
            raise Rejected("replayed", f"written {abs(ts - entry.at)} ms away from its 'at'")
        return instance, entry

    def close(self, timeout_s: float = 2.0) -> None:
        """Publish the tombstone (this instance holds nothing any more) and close."""
        if self._producer is not None:
            try:
                self._producer.produce(self.topic, None, self.instance.encode(),
                                       headers=self._headers(None), on_delivery=_delivered)
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
