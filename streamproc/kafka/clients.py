"""librdkafka configurations, built by pure functions from settings.

Engine-owned keys come last so that user overrides cannot silently break a guarantee; a user
override of one of them is a configuration error instead.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from streamproc.config import Settings
from streamproc.connection import CONNECTION_KEYS, kafka_connection
from streamproc.errors import ConfigError

# Keys the engine must own: overriding them would void exactly-once or the rebalance protocol.
_RESERVED_CONSUMER = {"group.id", "enable.auto.commit", "enable.auto.offset.store",
                      "isolation.level", "partition.assignment.strategy"}
_RESERVED_PRODUCER = {"transactional.id", "enable.idempotence"}


def _check_overrides(extra: dict[str, str], reserved: set[str], setting: str) -> None:
    bad = sorted(reserved & set(extra))
    if bad:
        raise ConfigError(setting, f"{', '.join(bad)} is managed by streamproc and cannot be set")
    owned = sorted(CONNECTION_KEYS & set(extra))
    if owned:
        raise ConfigError(setting, f"{', '.join(owned)}: set the connection settings "
                          "(security_protocol, sasl_*, ssl_*) instead, so that every client "
                          "connects the same way")


def consumer_config(settings: Settings, bootstrap: str, group_id: str,
                    instance_id: str) -> dict[str, Any]:
    _check_overrides(settings.consumer_config, _RESERVED_CONSUMER, "consumer_config")
    static = ({"group.instance.id": f"{group_id}-{instance_id}"}
              if settings.static_membership else {})
    return {
        **kafka_connection(settings, bootstrap),
        **static,
        "client.id": f"{group_id}-consumer",
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.session_timeout_ms,
        "max.poll.interval.ms": settings.max_poll_interval_ms,
        "fetch.min.bytes": 1,
        "queued.max.messages.kbytes": 65536,
        **settings.consumer_config,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # Incremental rebalances: unaffected partitions keep processing during a rebalance.
        "partition.assignment.strategy": "cooperative-sticky",
        # Our own changelog/repartition topics and upstream EOS apps: never read aborted data.
        "isolation.level": "read_committed",
    }


def restore_consumer_config(settings: Settings, bootstrap: str, group_id: str) -> dict[str, Any]:
    return {
        **kafka_connection(settings, bootstrap),
        "client.id": f"{group_id}-restore",
        # Never subscribed and never committed: the group id only satisfies librdkafka.
        "group.id": f"{group_id}-restore",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        # The end of a changelog may be a transaction marker, so "position == high watermark"
        # is not a reliable end; partition EOF at the high watermark is (kafka/io.at_log_end).
        "enable.partition.eof": True,
        # A stored offset outside the log means the changelog was recreated: report it so the
        # store is wiped and rebuilt, rather than silently resetting into stale local state.
        "auto.offset.reset": "error",
        "queued.max.messages.kbytes": 131072,
        # Restore is a bulk read: bigger fetches per partition mean fewer round trips.
        "max.partition.fetch.bytes": 8 * 1048576,
        # A restore ends on partition EOF, which comes with a fetch answer; a changelog with
        # nothing left (a warm standby, a task that did not move) would otherwise wait the
        # default 500 ms on the broker for data that is not coming: bench/standby.py measured
        # 0.5-1 s for a restore of 0 records. Not lower: a restore held by an open transaction
        # (runtime/restore.py) polls at this rate until the transaction ends.
        "fetch.wait.max.ms": 50,
    }


def producer_config(settings: Settings, bootstrap: str, transactional_id: str | None,
                    client_id: str) -> dict[str, Any]:
    _check_overrides(settings.producer_config, _RESERVED_PRODUCER, "producer_config")
    conf: dict[str, Any] = {
        **kafka_connection(settings, bootstrap),
        "client.id": client_id,
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "compression.type": "lz4",
        # Same partition for the same key bytes as the Java client (and Kafka Streams).
        "partitioner": "murmur2_random",
        **settings.producer_config,
        "enable.idempotence": True,
    }
    if transactional_id is not None:
        conf["transactional.id"] = transactional_id
        conf["transaction.timeout.ms"] = settings.transaction_timeout_ms
    return conf


# -- client construction ---------------------------------------------------------------------
# Every client the engine creates goes through these, so that librdkafka's own log lines
# (connection failures, broker errors: "%3|...|FAIL|rdkafka#producer-1|...") reach the
# structured log with the client's name and a level, instead of raw stderr where a log
# collector expecting JSON lines would choke on them. confluent-kafka calls ``logger.log``
# from the thread that polls the client, as log(level, "%s [%s] %s", facility, name, text).
class _ClientLog(logging.Logger):
    def __init__(self) -> None:
        super().__init__("streamproc.kafka.client")
        self._events = structlog.get_logger("streamproc.kafka.client")

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if len(args) == 3:
            facility, client, text = args
            if facility in _TXN_FACILITIES and "authorization failed" in str(text).lower():
                # A transaction refused by the authorizer: librdkafka reports every later
                # call as "_STATE" and fails the queued records as purged, so this line is
                # the only place the cause appears (runtime/collector.py reads it back).
                _REFUSALS[str(client).split("#", 1)[0]] = str(text)
            self._events.log(level, "kafka.client_log", client=str(client),
                          facility=str(facility), message=str(text))
        else:
            self._events.log(level, "kafka.client_log", message=str(msg) % args if args else msg)


_TXN_FACILITIES = {"TXNERR", "ADDPARTS", "ADDOFFSETS", "TXNCOMMIT"}
_REFUSALS: dict[str, str] = {}  # client.id -> librdkafka's text of an authorization refusal
_CLIENT_LOG = _ClientLog()


def transaction_refusal(client_id: str) -> str | None:
    """The last authorization refusal librdkafka logged for a transaction of the producer
    ``client_id`` (taken: a second call returns None until it happens again)."""
    return _REFUSALS.pop(client_id, None)


def with_logger(conf: dict[str, Any]) -> dict[str, Any]:
    """``conf`` with the structured client logger (kept when the caller brought its own)."""
    return conf if "logger" in conf else {**conf, "logger": _CLIENT_LOG}


def new_consumer(conf: dict[str, Any]) -> Consumer:
    return Consumer(with_logger(conf))


def new_producer(conf: dict[str, Any]) -> Producer:
    return Producer(with_logger(conf))


def new_admin(conf: dict[str, Any]) -> AdminClient:
    return AdminClient(with_logger(conf))
