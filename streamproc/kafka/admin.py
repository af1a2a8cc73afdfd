"""Topic administration: look up partition counts, create internal topics."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from streamproc.errors import ConfigError, StreamprocError
from streamproc.kafka.acls import refusal
from streamproc.kafka.clients import new_admin

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    replication: int | None = None  # None: the broker's default.replication.factor


def replicated(specs: list[TopicSpec], factor: int | None, brokers: int) -> list[TopicSpec]:
    """Internal topics at ``internal_replication_factor``: that many replicas, and from 3 on
    ``min.insync.replicas=2`` (an acks=all write survives the loss of any one replica, and a
    commit never rests on one copy). ``None`` leaves both to the broker's defaults."""
    if factor is None or not specs:
        # Nothing to create, nothing to check: a broker down for a rolling restart must not
        # stop an instance whose topics exist (metadata lists only the brokers that are up).
        return specs
    if factor > brokers:
        raise ConfigError("internal_replication_factor (env STREAMPROC_INTERNAL_REPLICATION_"
                          "FACTOR, flag --internal-replication-factor)",
                          f"{factor} replicas, but the cluster has {brokers} "
                          f"broker{'s' if brokers != 1 else ''}")
    extra = {"min.insync.replicas": "2"} if factor >= 3 else {}
    return [TopicSpec(s.name, s.partitions, {**s.config, **extra}, factor) for s in specs]


class TopicAdmin:
    def __init__(self, bootstrap: str, timeout_s: float = 30.0,
                 client_config: dict[str, Any] | None = None) -> None:
        """``client_config``: the connection (streamproc.connection.kafka_connection); without
        it, plaintext to ``bootstrap``."""
        self._admin = new_admin(client_config if client_config is not None
                                else {"bootstrap.servers": bootstrap})
        self._timeout_s = timeout_s
        self.bootstrap = bootstrap

    def partitions(self, topics: list[str]) -> dict[str, int | None]:
        """Partition count per topic, ``None`` for a topic that does not exist."""
        try:
            md = self._admin.list_topics(timeout=self._timeout_s)
        except KafkaException as exc:
            raise StreamprocError(
                f"cannot reach Kafka at {self.bootstrap}: {exc.args[0]} "
                "(check STREAMPROC_BROKERS)") from exc
        out: dict[str, int | None] = {}
        for t in topics:
            meta = md.topics.get(t)
            out[t] = None if meta is None or meta.error is not None else len(meta.partitions)
        return out

    def configs(self, topics: list[str]) -> dict[str, dict[str, str]]:
        """Each topic's effective configuration (topic overrides and broker defaults)."""
        from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]

        if not topics:
            return {}
        out: dict[str, dict[str, str]] = {}
        deadline = time.monotonic() + self._timeout_s
        pending = list(topics)
        while pending:
            resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in pending]
            futures = self._admin.describe_configs(resources, request_timeout=self._timeout_s)
            retry: list[str] = []
            for res, fut in futures.items():
                try:
                    entries = fut.result()
                except KafkaException as exc:
                    # A topic created a moment ago may not be known to every broker yet.
                    if exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART and \
                            time.monotonic() < deadline:
                        retry.append(res.name)
                        continue
                    refused = refusal(exc.args[0], f"describing topic {res.name!r}")
                    if refused is not None:
                        raise refused from None
                    raise StreamprocError(f"cannot describe the configuration of topic "
                                          f"{res.name}: {exc.args[0]}") from exc
                out[res.name] = {k: e.value for k, e in entries.items() if e.value is not None}
            if retry:
                time.sleep(0.2)
            pending = retry
        return out

    def brokers(self) -> int:
        """How many brokers the cluster has (its metadata's broker list)."""
        return len(self._admin.list_topics(timeout=self._timeout_s).brokers)

    def brokers_up(self, want: int, timeout_s: float = 60.0, stop: Any = None) -> int:
        """The brokers up, once there are ``want`` of them or ``timeout_s`` has passed: a
        cluster that is starting (or restarting a node) lists only the brokers already up, and
        an instance started with it must not take that for a misconfiguration (the fault
        suite's broker_down scenario saw 1 of 3). ``stop``: an Event that ends the wait."""
        deadline = time.monotonic() + timeout_s
        delay = 0.5
        while True:
            up = self.brokers()
            left = deadline - time.monotonic()
            if up >= want or left <= 0:
                return up
            log.warning("kafka.brokers_short", up=up, needed=want, retry_in_s=delay,
                        gives_up_in_s=round(left, 1),
                        setting="internal_replication_factor")
            if stop is not None and stop.wait(min(delay, left)):
                return up
            if stop is None:
                time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)

    def create(self, specs: list[TopicSpec]) -> None:
        """Create topics that do not exist yet (another instance may race us: that is fine)."""
        if not specs:
            return
        new = [NewTopic(s.name, num_partitions=s.partitions,
                        replication_factor=s.replication if s.replication is not None else -1,
                        config=s.config) for s in specs]
        futures = self._admin.create_topics(new, operation_timeout=self._timeout_s)
        for name, fut in futures.items():
            try:
                fut.result()
                log.info("admin.topic_created", topic=name,
                         partitions=next(s.partitions for s in specs if s.name == name))
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    refused = refusal(exc.args[0], f"creating topic {name!r}")
                    if refused is not None:
                        raise refused from None
                    raise StreamprocError(f"cannot create topic {name!r}: {exc.args[0]}") from exc
        self._wait_visible({s.name: s.partitions for s in specs})

    def _wait_visible(self, want: dict[str, int]) -> None:
        """Until metadata lists every created topic with all its partitions (bounded by the
        timeout). A consumer that subscribes before then is told the topic does not exist
        and, under librdkafka, looks again only at its next metadata refresh, minutes later:
        its partitions stay unassigned meanwhile (seen under load in the cluster tests)."""
        deadline = time.monotonic() + self._timeout_s
        while time.monotonic() < deadline:
            try:
                md = self._admin.list_topics(timeout=self._timeout_s)
            except KafkaException:
                md = None
            if md is not None and all(
                    (t := md.topics.get(name)) is not None and t.error is None
                    and len(t.partitions) >= n for name, n in want.items()):
                return
            time.sleep(0.1)
        log.warning("admin.topics_not_visible", topics=sorted(want), waited_s=self._timeout_s)

    def purge(self, before: dict[tuple[str, int], int]) -> None:
        """Delete records before the given offsets (repartition topics, once their consumer
        group has committed past them). Asynchronous: the loop does not wait; a failure is
        logged and the next purge covers it."""
        if not before:
            return
        futures = self._admin.delete_records(
            [KafkaTopicPartition(t, p, o) for (t, p), o in before.items()])
        for fut in futures.values():
            fut.add_done_callback(_log_purge_failure)

    def delete(self, topics: list[str]) -> None:
        if not topics:
            return
        for name, fut in self._admin.delete_topics(topics,
                                                   operation_timeout=self._timeout_s).items():
            try:
                fut.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise
                log.debug("admin.topic_absent", topic=name)


def _log_purge_failure(fut: Future[Any]) -> None:
    exc = fut.exception()
    if exc is not None:
        log.warning("admin.purge_failed", error=str(exc))
