"""The secured local broker (``start(security="sasl_ssl")``) against plain confluent-kafka
clients: SCRAM-SHA-512 and mTLS authentication, the StandardAuthorizer denying what no ACL
allows, and plaintext refused on every port.

One broker for the module (its own tmp dir, so the session's plaintext broker is untouched);
tests run in file order and the last one restarts it. Every wait is bounded by a deadline.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from streamproc.connection import ConnectionSettings, kafka_connection
from streamproc.kafka.broker import BrokerError, LocalBroker, start, status, stop
from streamproc.kafka.broker_security import SecuredBroker, grant

pytestmark = pytest.mark.kafka

TIMEOUT_S = 20.0
# Consumers' group ids start with this; app is granted READ on it as a PREFIXED ACL (librdkafka
# looks the group coordinator up even for assign()ed partitions).
GROUP_PREFIX = "test-reader-"


@pytest.fixture(scope="module")
def broker_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data_dir = tmp_path_factory.mktemp("secured-broker")
    yield data_dir
    stop(data_dir)  # also covers a failed restart test


@pytest.fixture(scope="module")
def broker(broker_dir: Path) -> LocalBroker:
    return start(data_dir=broker_dir, security="sasl_ssl")


@pytest.fixture(scope="module")
def secured(broker: LocalBroker) -> SecuredBroker:
    assert broker.security is not None
    return broker.security


def _topic(admin_conf: dict[str, str], prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(admin_conf)
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)],
                        operation_timeout=15)[name].result(timeout=TIMEOUT_S)
    return name


def _produce(conf: dict[str, str], topic: str, values: list[str]) -> list[KafkaError | None]:
    """Delivery result of each value: None when written, else the error."""
    results: list[KafkaError | None] = []
    producer = Producer({**conf, "message.timeout.ms": 15_000})
    for value in values:
        producer.produce(topic, value.encode(),
                         on_delivery=lambda err, _msg: results.append(err))
    assert producer.flush(TIMEOUT_S) == 0
    return results


def _read(conf: dict[str, str], topic: str, isolation: str = "read_uncommitted") -> list[str]:
    """Every value of partition 0, up to its end (assigned, no group join, no commits)."""
    consumer = Consumer({**conf, "group.id": f"{GROUP_PREFIX}{uuid.uuid4()}",
                         "isolation.level": isolation, "enable.auto.commit": False,
                         "enable.partition.eof": True})
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        values: list[str] = []
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                return values
            values.append(msg.value().decode())
        pytest.fail(f"did not reach the end of {topic}; got {values}")
    finally:
        consumer.close()


def _client_errors(conf: dict[str, Any], until: int) -> tuple[list[KafkaError], list[str]]:
    """The errors (error_cb) and librdkafka log lines of a client that tries to connect,
    collected until an error with code ``until`` arrives (or the deadline fails the test)."""
    errors: list[KafkaError] = []
    lines: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger(f"test.secured.{uuid.uuid4().hex}")
    logger.addHandler(_Collect())
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    producer = Producer({**conf, "error_cb": errors.append, "logger": logger,
                         "reconnect.backoff.ms": 100})
    deadline = time.monotonic() + TIMEOUT_S
    while not any(e.code() == until for e in errors):
        assert time.monotonic() < deadline, f"no {until} error; got {errors}"
        producer.poll(0.1)
    return errors, lines


# --------------------------------------------------------------------------- the record


def test_start_records_secured_listeners_and_private_files(
        broker: LocalBroker, secured: SecuredBroker, broker_dir: Path) -> None:
    assert broker.bootstrap == secured.sasl_bootstrap
    addresses = [secured.sasl_bootstrap, secured.mtls_bootstrap, secured.internal_bootstrap,
                 secured.controller_bootstrap]
    assert [a.rsplit(":", 1)[0] for a in addresses] == ["127.0.0.1"] * 4
    assert len({a.rsplit(":", 1)[1] for a in addresses}) == 4
    assert secured.users == ("admin", "app")
    assert status(broker_dir) == broker
    private = [broker_dir / "server.properties", *(secured.password_file(u) for u in
               secured.users), *(secured.key_file(u) for u in secured.users)]
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in private} == {
        p.name: 0o600 for p in private}
    assert stat.S_IMODE(secured.security_dir.stat().st_mode) == 0o700
    # The SCRAM passwords went to kafka-storage through a deleted argument file: no file the
    # broker wrote (config, logs, record) holds them.
    assert not (broker_dir / ".format-args").exists()
    passwords = [secured.password_file(u).read_text().strip() for u in secured.users]
    for path in broker_dir.iterdir():
        if path.is_file():
            text = path.read_text(errors="replace")
            assert [p for p in passwords if p in text] == [], path


def test_running_secured_broker_is_not_restarted_in_plaintext(
        broker: LocalBroker, broker_dir: Path) -> None:
    with pytest.raises(BrokerError, match="has security 'sasl_ssl', not 'plaintext'"):
        start(data_dir=broker_dir)
    assert start(data_dir=broker_dir, security="sasl_ssl") == broker  # idempotent


def test_cli_status_prints_secured_addresses_and_files(
        secured: SecuredBroker, broker_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamproc.cli", "kafka", "status", "--data-dir",
         str(broker_dir)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == secured.sasl_bootstrap
    assert lines[1] == (f"sasl_ssl  {secured.sasl_bootstrap}  (SCRAM-SHA-512; users admin, "
                        "app; admin is super user)")
    assert lines[2] == (f"mtls      {secured.mtls_bootstrap}  (client certificate required; "
                        "principal = CN)")
    assert lines[3] == f"ca        {secured.ca_pem}"
    assert lines[4:] == [
        f"{user:<9} password {secured.password_file(user)}  certificate "
        f"{secured.certificate_file(user)}  key {secured.key_file(user)}"
        for user in ("admin", "app")]
    passwords = [secured.password_file(u).read_text().strip() for u in secured.users]
    assert [p for p in passwords if p in proc.stdout + proc.stderr] == []


# --------------------------------------------------------------------------- SASL


def test_scram_admin_creates_topic_and_commits_a_transaction(secured: SecuredBroker) -> None:
    admin = secured.client_config("admin", "sasl")
    topic = _topic(admin, "admin-tx")
    producer = Producer({**admin, "transactional.id": f"test-{uuid.uuid4()}"})
    producer.init_transactions(TIMEOUT_S)
    producer.begin_transaction()
    for value in ("a", "b", "c"):
        producer.produce(topic, value.encode())
    # Commit markers travel over the INTERNAL listener (the broker's own mTLS identity).
    producer.commit_transaction(TIMEOUT_S)
    assert _read(admin, topic, "read_committed") == ["a", "b", "c"]


def test_wrong_password_is_an_authentication_error(secured: SecuredBroker) -> None:
    conf = {**secured.client_config("app", "sasl"), "sasl.password": "not-the-password"}
    errors, _ = _client_errors(conf, KafkaError._AUTHENTICATION)
    failure = next(e for e in errors if e.code() == KafkaError._AUTHENTICATION)
    assert "Authentication failed during authentication due to invalid credentials with " \
           "SASL mechanism SCRAM-SHA-512" in failure.str()


def test_app_is_refused_without_acls_and_works_once_granted(secured: SecuredBroker) -> None:
    topic = _topic(secured.client_config("admin", "sasl"), "app-sasl")
    app = secured.client_config("app", "sasl")
    [refused] = _produce(app, topic, ["refused"])
    assert refused is not None
    assert refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    for operation in ("WRITE", "DESCRIBE", "READ"):
        grant(secured, "User:app", "TOPIC", topic, "LITERAL", operation)
    grant(secured, "User:app", "GROUP", GROUP_PREFIX, "PREFIXED", "READ")
    assert _produce(app, topic, ["x", "y"]) == [None, None]
    assert _read(app, topic) == ["x", "y"]


def test_client_settings_connect_through_the_engines_connection_settings(
        secured: SecuredBroker) -> None:
    topic = _topic(secured.client_config("admin", "sasl"), "settings")
    grant(secured, "User:app", "TOPIC", topic, "LITERAL", "WRITE")
    for mode in ("sasl", "mtls"):
        settings = secured.client_settings("app", mode)
        bootstrap = settings.pop("brokers")
        conf = kafka_connection(ConnectionSettings(**settings), bootstrap)
        assert _produce(conf, topic, [mode]) == [None]
    assert _read(secured.client_config("admin", "sasl"), topic) == ["sasl", "mtls"]


# --------------------------------------------------------------------------- mTLS


def test_mtls_certificate_authenticates_as_its_cn(secured: SecuredBroker) -> None:
    # CN=admin is the super user: it may create topics over mTLS.
    topic = _topic(secured.client_config("admin", "mtls"), "app-mtls")
    app = secured.client_config("app", "mtls")
    [refused] = _produce(app, topic, ["refused"])
    assert refused is not None
    assert refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # Granted to User:app only: success proves the certificate's principal is exactly that.
    for operation in ("WRITE", "DESCRIBE", "READ"):
        grant(secured, "User:app", "TOPIC", topic, "LITERAL", operation)
    grant(secured, "User:app", "GROUP", GROUP_PREFIX, "PREFIXED", "READ")
    assert _produce(app, topic, ["m"]) == [None]
    assert _read(app, topic) == ["m"]


def test_mtls_listener_refuses_a_client_without_certificate(secured: SecuredBroker) -> None:
    conf = {k: v for k, v in secured.client_config("app", "mtls").items()
            if k not in ("ssl.certificate.location", "ssl.key.location")}
    errors, _ = _client_errors(conf, KafkaError._TRANSPORT)
    failure = next(e for e in errors if e.code() == KafkaError._TRANSPORT)
    # TLS 1.3: the client's handshake completes, then the broker's alert arrives.
    assert "alert bad certificate" in failure.str()


@pytest.mark.parametrize("listener", ["sasl", "mtls", "internal", "controller"])
def test_plaintext_to_a_secured_port_fails(secured: SecuredBroker, listener: str) -> None:
    address = getattr(secured, f"{listener}_bootstrap")
    conf = {"bootstrap.servers": address, "security.protocol": "plaintext"}
    _, lines = _client_errors(conf, KafkaError._ALL_BROKERS_DOWN)
    # The TLS listener reads the plaintext ApiVersions request as a bad handshake and hangs
    # up: the client never gets past its first request.
    assert any(f"{address}/bootstrap: Disconnected" in line
               and "in state APIVERSION_QUERY" in line for line in lines), lines


# --------------------------------------------------------------------------- restart


# Must stay last: it replaces the module's broker process.
def test_restart_keeps_users_certificates_and_acls(
        broker: LocalBroker, secured: SecuredBroker, broker_dir: Path) -> None:
    topic = _topic(secured.client_config("admin", "sasl"), "durable")
    grant(secured, "User:app", "TOPIC", topic, "LITERAL", "WRITE")
    grant(secured, "User:app", "TOPIC", topic, "LITERAL", "READ")
    grant(secured, "User:app", "GROUP", GROUP_PREFIX, "PREFIXED", "READ")
    assert _produce(secured.client_config("app", "sasl"), topic, ["before"]) == [None]
    files = sorted(p for p in secured.security_dir.iterdir())
    contents = {p.name: p.read_bytes() for p in files}

    assert stop(broker_dir) is True
    restarted = start(data_dir=broker_dir, security="sasl_ssl")
    assert restarted.pid != broker.pid
    assert restarted.security == secured  # same ports, same files
    assert {p.name: p.read_bytes() for p in sorted(secured.security_dir.iterdir())} == contents
    # The SCRAM users and the ACLs live in the metadata log: both survive.
    app = secured.client_config("app", "sasl")
    assert _produce(app, topic, ["after"]) == [None]
    assert _read(app, topic) == ["before", "after"]
    assert os.path.exists(broker_dir / "kafka-data" / "meta.properties")
