"""Does the cluster answer? A metadata request that says why not, without flooding the log.

While no broker answers, librdkafka reports every reconnect attempt (about twenty a second, at
error level, through the logger and the error callback). An instance waiting for its cluster at
start (runtime/startup.py) says so itself, once per retry, with the reason; so the probe keeps
librdkafka's lines at debug level and remembers the last error for that reason.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from streamproc.errors import StreamprocError
from streamproc.kafka.clients import new_admin

log = structlog.get_logger(__name__)


class CredentialsRefused(StreamprocError):
    """The cluster answered, and refused this instance's credentials: waiting cannot help."""


class _Quiet(logging.Logger):
    """librdkafka's lines at debug level (confluent-kafka calls ``log(level, fmt, facility,
    client, text)``), the last one kept as the probe's reason."""

    def __init__(self, probe: ClusterProbe) -> None:
        super().__init__("streamproc.kafka.probe")
        self._probe = probe

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        text = str(args[-1]) if args else str(msg)
        self._probe.last_error = text
        log.debug("kafka.client_log", client="probe", message=text)


class ClusterProbe:
    def __init__(self, conf: dict[str, Any]) -> None:
        """``conf``: the instance's connection (streamproc.connection.kafka_connection)."""
        self.last_error: str | None = None
        self._refused: str | None = None
        self._admin: AdminClient | None = new_admin({
            **conf, "logger": _Quiet(self), "error_cb": self._on_error,
            # Notice a broker that came back within a second, not after librdkafka's default
            # backoff of up to 10 s.
            "reconnect.backoff.max.ms": 1000})

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._AUTHENTICATION:
            self._refused = err.str()
        elif err.code() != KafkaError._ALL_BROKERS_DOWN:  # says less than the error before it
            self.last_error = err.str()

    def answer(self, timeout_s: float) -> str | None:
        """None when the cluster answered a metadata request within ``timeout_s``, else why
        not. Raises :class:`CredentialsRefused` when it refused the credentials."""
        admin = self._admin
        assert admin is not None, "the probe is closed"
        try:
            admin.list_topics(timeout=timeout_s)
            return None
        except KafkaException as exc:
            admin.poll(0)  # serve the callbacks queued meanwhile: they hold the reason
            if self._refused is not None:
                raise CredentialsRefused(
                    f"Kafka refused this instance's credentials: {self._refused} (check the "
                    "sasl_* / ssl_* settings)") from None
            return self.last_error or str(exc.args[0])

    def close(self) -> None:
        """Let the client go now: it refers to this probe through its callbacks, so without
        this it would live (and reconnect) until a cyclic garbage collection."""
        self._admin = None
