"""A real single-node Apache Kafka broker (KRaft, combined mode) on 127.0.0.1.

Used for local development (``streamproc broker start``) and for the integration
tests: exactly-once processing can only be trusted when it is tested against the
real transaction coordinator, so no mock or embedded fake is used.

The broker's jars come from Maven Central (resolved once with ``mvn`` into a
cache under :func:`default_home`) or from an unpacked Kafka distribution named
by ``$KAFKA_HOME``. Everything the broker writes (config, data, logs, pid) lives
in one ``data_dir`` so several brokers can coexist and ``rm -rf`` cleans up.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

# Provisioning (jars, config files, storage, java) lives in broker_provision;
# KAFKA_VERSION, BrokerError, default_home and resolve_classpath are re-exported
# here because they are part of this module's public API.
from streamproc.kafka.broker_provision import (
    _TAIL_LINES,
    KAFKA_VERSION,
    BrokerError,
    _file_lock,
    _find_java,
    _format_storage_once,
    _java_hint,
    _log4j2_xml,
    _server_properties,
    _storage_formatted,
    _tail_text,
    default_home,
    jvm_command,
    resolve_classpath,
)
from streamproc.kafka.broker_security import (
    ClientMode,
    SecuredBroker,
    Security,
    prepare,
    recorded_security,
    scram_format_args,
    secured_broker,
    server_settings,
    state_fields,
    write_private,
)
from streamproc.kafka.ports import free_port, port_free

__all__ = [
    "KAFKA_VERSION",
    "BrokerError",
    "LocalBroker",
    "SecuredBroker",
    "default_home",
    "resolve_classpath",
    "start",
    "status",
    "stop",
]

log = structlog.get_logger(__name__)

_STATE_FILE = "broker.json"
_LOCK_FILE = ".broker.lock"
_SERVER_PROPERTIES = "server.properties"
_LOG4J_CONFIG = "log4j2.xml"
_BROKER_LOG = "broker.log"
# stdout/stderr of the JVM: log4j owns broker.log, but JVM-level failures
# (bad flags, UnsupportedClassVersionError, OOM) are only ever printed here.
_BROKER_OUT = "broker.out"
# A fixed id (rather than a random one per probe) keeps the transaction state
# log from accumulating one entry per broker start.
_PROBE_TRANSACTIONAL_ID = "streamproc-broker-readiness-probe"
_PROBE_GROUP_ID = "streamproc-broker-readiness-probe"
_LAUNCH_ATTEMPTS_AUTO_PORT = 3

# Children started by this process. Keeping the Popen objects lets us reap them
# (a zombie still answers os.kill(pid, 0), which would make stop() wait for the
# full timeout) and avoids Popen.__del__'s "subprocess still running" warning.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class LocalBroker:
    """A running local broker, as recorded in ``data_dir/broker.json``; ``security`` is set
    when started with ``security="sasl_ssl"`` (``bootstrap`` is then its SASL_SSL listener)."""

    bootstrap: str
    data_dir: Path
    pid: int
    security: SecuredBroker | None = None


# --------------------------------------------------------------------------- lifecycle


def start(
    data_dir: Path | None = None, port: int | None = None, timeout_s: float = 90.0,
    security: Security = "plaintext",
) -> LocalBroker:
    """Start (or find) the broker that owns ``data_dir`` and wait until it is usable.

    "Usable" means metadata requests succeed *and* a transactional producer can
    ``init_transactions()`` and the group coordinator answers: the coordinators
    load their internal topics after the broker starts serving metadata, and a
    test that races them fails with COORDINATOR_NOT_AVAILABLE timeouts.

    Idempotent: if the broker recorded in ``data_dir`` is alive it is returned
    (after waiting for it to become ready). ``port=None`` reuses the previous
    port when it is still free, else picks a free one. ``timeout_s`` bounds the
    launch and readiness wait, not the one-time jar download.

    ``security="sasl_ssl"``: the secured broker of :mod:`broker_security` (``port``
    is its SASL_SSL port); a data dir keeps its first mode (else BrokerError).
    """
    data_dir = _resolve_data_dir(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(data_dir / _LOCK_FILE):
        existing = _read_state(data_dir)
        if existing is not None and _is_running_broker(existing.pid, data_dir):
            if (existing.security is not None) != (security == "sasl_ssl"):
                mode = "plaintext" if existing.security is None else "sasl_ssl"
                raise BrokerError(
                    f"the broker for {data_dir} already running on {existing.bootstrap} has "
                    f"security {mode!r}, not {security!r}; stop it first, or use another "
                    "data dir")
            recorded_port = _port_of(existing.bootstrap)
            if port is not None and port != recorded_port:
                raise BrokerError(
                    f"a broker for {data_dir} is already running on {existing.bootstrap} "
                    f"(pid {existing.pid}); stop it first to move it to port {port}"
                )
            _wait_ready(existing, time.monotonic() + timeout_s)
            log.info("kafka.broker.already_running", bootstrap=existing.bootstrap,
                     pid=existing.pid)
            return existing
        if existing is not None:
            # Recorded broker is gone (crash, reboot, kill -9): forget its pid.
            _forget_pid(data_dir)

        prepare(data_dir, security, formatted=_storage_formatted(data_dir))
        java = _find_java()
        classpath = resolve_classpath()
        previous = _read_raw_state(data_dir)
        attempts = 1 if port is not None else _LAUNCH_ATTEMPTS_AUTO_PORT
        for attempt in range(1, attempts + 1):
            broker_port, controller_port = _choose_ports(port, previous)
            extra_ports = (_choose_secured_ports(previous, {broker_port, controller_port})
                           if security == "sasl_ssl" else None)
            try:
                return _launch(java, classpath, data_dir, broker_port, controller_port,
                               timeout_s=timeout_s, extra_ports=extra_ports)
            except _PortRaceError as exc:
                if attempt == attempts:
                    raise BrokerError(
                        f"the broker could not bind 127.0.0.1:{broker_port} or "
                        f"127.0.0.1:{controller_port} (address already in use); free the "
                        f"port or pass port=None. {exc}"
                    ) from exc
                # An auto-picked port was taken between our probe and the JVM's
                # bind (parallel test runs); pick fresh ports and try again.
                log.warning("kafka.broker.port_race", attempt=attempt,
                            port=broker_port, controller_port=controller_port)
                previous = {}
        raise AssertionError("unreachable: the loop returns or raises")


def stop(data_dir: Path | None = None, timeout_s: float = 30.0) -> bool:
    """Stop the broker of ``data_dir``: SIGTERM, wait, then SIGKILL.

    SIGTERM first so Kafka can close its logs cleanly (a clean shutdown avoids
    log recovery on the next start). Returns True if a process was stopped.
    """
    data_dir = _resolve_data_dir(data_dir)
    if not data_dir.is_dir():
        return False
    with _file_lock(data_dir / _LOCK_FILE):
        state = _read_state(data_dir)
        if state is None:
            return False
        if not _is_running_broker(state.pid, data_dir):
            _forget_pid(data_dir)
            return False
        log.info("kafka.broker.stopping", pid=state.pid, bootstrap=state.bootstrap)
        _terminate(state.pid, timeout_s)
        _forget_pid(data_dir)
        return True


def status(data_dir: Path | None = None) -> LocalBroker | None:
    """The broker of ``data_dir`` if its process is alive and answers metadata requests."""
    data_dir = _resolve_data_dir(data_dir)
    state = _read_state(data_dir)
    if state is None or not _is_running_broker(state.pid, data_dir):
        return None
    if not _metadata_answers(state, timeout_s=5.0):
        return None
    return state


# --------------------------------------------------------------------------- launch


class _PortRaceError(BrokerError):
    """The JVM could not bind a port that looked free when we picked it."""


def _launch(
    java: str, classpath: str, data_dir: Path, broker_port: int, controller_port: int,
    *, timeout_s: float, extra_ports: dict[str, int] | None = None,
) -> LocalBroker:
    deadline = time.monotonic() + timeout_s
    server_properties = data_dir / _SERVER_PROPERTIES
    secured = None if extra_ports is None else secured_broker(
        data_dir, {"sasl": broker_port, "controller": controller_port, **extra_ports})
    if secured is None:
        server_properties.write_text(_server_properties(data_dir, broker_port, controller_port))
    else:  # 0600: the secured broker's config holds its keystore password
        write_private(server_properties, _server_properties(
            data_dir, broker_port, controller_port, server_settings(secured)))
    log4j_config = data_dir / _LOG4J_CONFIG
    log4j_config.write_text(_log4j2_xml(data_dir / _BROKER_LOG))
    _format_storage_once(java, classpath, data_dir, server_properties,
                         scram_format_args(secured) if secured is not None else None)

    cmd = jvm_command(java, classpath, data_dir, server_properties, log4j_config)
    bootstrap = f"127.0.0.1:{broker_port}"
    log.info("kafka.broker.starting", bootstrap=bootstrap, data_dir=str(data_dir),
             kafka_version=KAFKA_VERSION, secured=secured is not None)
    started = time.monotonic()
    # Error reports quote only what this launch logged, not earlier runs (or
    # the format step) that share broker.log.
    log_offset = _file_size(data_dir / _BROKER_LOG)
    with (data_dir / _BROKER_OUT).open("wb") as out:
        # Own session: the broker must outlive the CLI invocation that started
        # it and must not receive the terminal's Ctrl-C meant for that CLI.
        proc = subprocess.Popen(
            cmd, cwd=data_dir, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    broker = LocalBroker(bootstrap=bootstrap, data_dir=data_dir, pid=proc.pid, security=secured)
    _write_state(data_dir, {
        "pid": proc.pid,
        "bootstrap": bootstrap,
        "port": broker_port,
        "controller_port": controller_port,
        "kafka_version": KAFKA_VERSION,
        "started_at": datetime.now(tz=UTC).isoformat(),
        **(state_fields(extra_ports) if extra_ports is not None else {}),
    })
    try:
        _wait_ready(broker, deadline, log_offset)
    except BrokerError as exc:
        _terminate(proc.pid, 10.0)
        _forget_pid(data_dir)
        if _log_shows_bind_failure(data_dir, log_offset):
            raise _PortRaceError(str(exc)) from exc
        raise
    log.info("kafka.broker.started", bootstrap=bootstrap, pid=proc.pid,
             seconds=round(time.monotonic() - started, 1))
    return broker


# --------------------------------------------------------------------------- readiness


def _probe_config(broker: LocalBroker, mode: ClientMode = "sasl") -> dict[str, Any]:
    # A secured broker is probed as its super user: the probes touch internal topics.
    secured = broker.security.client_config("admin", mode) if broker.security else {}
    return {
        "bootstrap.servers": broker.bootstrap,
        **secured,
        # librdkafka backs off reconnects exponentially up to 10 s by default,
        # which would add seconds to every start while the port is still closed.
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 250,
        # "Connection refused" is expected while the JVM boots; failures are
        # reported through timeouts and the broker log tail instead.
        "log_level": 0,
    }


def _wait_ready(broker: LocalBroker, deadline: float, log_offset: int = 0) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(_probe_config(broker))
    # The mTLS listener too: a broker whose certificate checks fail must not pass as ready.
    admins = [admin, AdminClient(_probe_config(broker, "mtls"))] if broker.security else [admin]
    for probe in admins:
        while True:
            _check_alive(broker, log_offset)
            try:
                probe.list_topics(timeout=_chunk(deadline, 2.0))
                break
            except KafkaException:
                _check_deadline(broker, deadline, "answer metadata requests", log_offset)
    _wait_transactions_ready(broker, deadline, log_offset)
    _wait_group_coordinator_ready(broker, deadline, log_offset)


def _wait_transactions_ready(broker: LocalBroker, deadline: float, log_offset: int) -> None:
    from confluent_kafka import KafkaException, Producer

    config = _probe_config(broker)
    config["transactional.id"] = _PROBE_TRANSACTIONAL_ID
    producer: Any = None
    while True:
        _check_alive(broker, log_offset)
        if producer is None:
            producer = Producer(config)
        try:
            # Creates __transaction_state on first use and waits for its load.
            producer.init_transactions(_chunk(deadline, 5.0))
            break
        except KafkaException as exc:
            # A timed-out init_transactions may be retried on the same producer;
            # anything fatal needs a fresh one.
            if exc.args and getattr(exc.args[0], "fatal", lambda: False)():
                producer = None
            _check_deadline(broker, deadline, "initialise transactions", log_offset)
    producer.flush(0)


def _wait_group_coordinator_ready(broker: LocalBroker, deadline: float, log_offset: int) -> None:
    def alive() -> None:
        _check_alive(broker, log_offset)

    def overdue() -> None:
        _check_deadline(broker, deadline, "serve consumer groups", log_offset)

    wait_group_coordinator(_probe_config(broker), _PROBE_GROUP_ID, deadline, alive, overdue)


def wait_group_coordinator(config: dict[str, Any], group: str, deadline: float,
                           alive: Callable[[], None], overdue: Callable[[], None]) -> None:
    """Wait until the group coordinator answers an offset fetch for ``group``: the first one
    makes the broker create __consumer_offsets and load it, so the first real consumer group
    and send_offsets_to_transaction() don't pay for that. ``alive`` raises when the broker
    died, ``overdue`` raises past the deadline (else it sleeps a little).

    Not AdminClient.describe_consumer_groups: librdkafka (2.16 included) frees a coordinator
    admin request twice when its connection drops, and the process aborts on the assertion
    ``rd_kafka_enq_once_del_source_return: eonce->refcnt > 0`` (confluentinc/librdkafka#4605,
    fix proposed in #5397). In a fault suite a connection drops on purpose; the consumer's
    own offset fetch goes through the group handler instead, which has no such path.
    """
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({**config, "group.id": group, "enable.auto.commit": False})
    try:
        while True:
            alive()
            try:
                done = consumer.committed([TopicPartition(_PROBE_GROUP_ID, 0)],
                                          timeout=_chunk(deadline, 5.0))
                if done and done[0].error is None:
                    return
            except KafkaException:
                pass
            overdue()
    finally:
        consumer.close()


def _metadata_answers(broker: LocalBroker, timeout_s: float) -> bool:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient(_probe_config(broker)).list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return True


def _chunk(deadline: float, step_s: float) -> float:
    return max(0.1, min(step_s, deadline - time.monotonic()))


def _check_alive(broker: LocalBroker, log_offset: int) -> None:
    if _pid_alive(broker.pid):
        return
    code = ""
    child = _CHILDREN.get(broker.pid)
    if child is not None and child.returncode is not None:
        code = f" with code {child.returncode}"
    raise BrokerError(
        f"Kafka broker (pid {broker.pid}) exited{code} during startup"
        f"{_java_hint(_read_tail(broker.data_dir / _BROKER_OUT, _TAIL_LINES))}."
        f"{_log_tails(broker.data_dir, log_offset)}"
    )


def _check_deadline(broker: LocalBroker, deadline: float, what: str, log_offset: int) -> None:
    if time.monotonic() < deadline:
        time.sleep(0.1)
        return
    raise BrokerError(
        f"Kafka broker {broker.bootstrap} (pid {broker.pid}) did not {what} before the "
        "timeout; a slow machine may need a larger timeout_s."
        f"{_log_tails(broker.data_dir, log_offset)}"
    )


def _log_tails(data_dir: Path, log_offset: int) -> str:
    # broker.out first: when the JVM itself fails, that is where the reason is.
    parts: list[str] = []
    for name, start in ((_BROKER_OUT, 0), (_BROKER_LOG, log_offset)):
        tail = _read_tail(data_dir / name, _TAIL_LINES, start)
        if tail.strip():
            parts.append(f"\n--- last lines of {data_dir / name} ---\n{tail}")
    return "".join(parts) if parts else f" ({data_dir / _BROKER_LOG} has no output from this run)"


def _log_shows_bind_failure(data_dir: Path, log_offset: int) -> bool:
    text = (_read_tail(data_dir / _BROKER_LOG, 200, log_offset)
            + _read_tail(data_dir / _BROKER_OUT, 200))
    return "Address already in use" in text or "BindException" in text


# --------------------------------------------------------------------------- processes


def _terminate(pid: int, timeout_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            _CHILDREN.pop(pid, None)
            return
        time.sleep(0.1)
    log.warning("kafka.broker.kill", pid=pid, reason="no exit after SIGTERM",
                waited_s=timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    kill_deadline = time.monotonic() + 10.0
    while _pid_alive(pid) and time.monotonic() < kill_deadline:
        time.sleep(0.05)
    _CHILDREN.pop(pid, None)


def _pid_alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None  # poll() also reaps the zombie
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    # An exited child of another process lingers as a zombie until reaped.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _is_running_broker(pid: int, data_dir: Path) -> bool:
    """Alive *and* still our broker: pids get reused after reboots or crashes."""
    if not _pid_alive(pid):
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no procfs (macOS): trust the pid
    return b"kafka.Kafka" in args and str(data_dir / _SERVER_PROPERTIES).encode() in args


# --------------------------------------------------------------------------- state & ports


def _resolve_data_dir(data_dir: Path | None) -> Path:
    chosen = data_dir if data_dir is not None else default_home() / "broker"
    # Absolute, because the path ends up in server.properties and in the
    # broker's command line (which _is_running_broker matches against).
    return chosen.expanduser().resolve()


def _read_raw_state(data_dir: Path) -> dict[str, Any]:
    try:
        raw = json.loads((data_dir / _STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _read_state(data_dir: Path) -> LocalBroker | None:
    raw = _read_raw_state(data_dir)
    pid, bootstrap = raw.get("pid"), raw.get("bootstrap")
    if not isinstance(pid, int) or not isinstance(bootstrap, str):
        return None
    try:
        secured = recorded_security(data_dir, raw)
    except ValueError:
        return None  # a secured record without its ports: nothing to talk to
    return LocalBroker(bootstrap=bootstrap, data_dir=data_dir, pid=pid, security=secured)


def _write_state(data_dir: Path, state: dict[str, Any]) -> None:
    tmp = data_dir / f".{_STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, data_dir / _STATE_FILE)  # atomic: readers never see half a file


def _forget_pid(data_dir: Path) -> None:
    # Keep the rest of the record: the next start() reuses its ports.
    state = _read_raw_state(data_dir)
    if not state:
        return
    state.pop("pid", None)
    state["stopped_at"] = datetime.now(tz=UTC).isoformat()
    _write_state(data_dir, state)


def _port_of(bootstrap: str) -> int:
    return int(bootstrap.rsplit(":", 1)[1])


def _choose_ports(port: int | None, previous: dict[str, Any]) -> tuple[int, int]:
    if port is not None:
        if not port_free(port):
            raise BrokerError(
                f"port {port} on 127.0.0.1 is already in use; stop whatever listens there "
                "(e.g. 'ss -ltnp') or pass port=None to pick a free one"
            )
        broker_port = port
    else:
        # Reusing the last port keeps bootstrap strings in users' configs valid
        # across restarts.
        last = previous.get("port")
        broker_port = last if isinstance(last, int) and port_free(last) else free_port()
    last_controller = previous.get("controller_port")
    if (isinstance(last_controller, int) and last_controller != broker_port
            and port_free(last_controller)):
        controller_port = last_controller
    else:
        controller_port = free_port(exclude=broker_port)
    return broker_port, controller_port


def _choose_secured_ports(previous: dict[str, Any], taken: set[int]) -> dict[str, int]:
    # The secured broker's other two listeners, reused across restarts like the others.
    chosen: dict[str, int] = {}
    for name in ("mtls", "internal"):
        port = previous.get(f"{name}_port")
        while not isinstance(port, int) or port in taken or not port_free(port):
            port = free_port()
        chosen[name] = port
        taken = taken | {port}
    return chosen


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_tail(path: Path, lines: int, start: int = 0) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            # A rollover since `start` makes the file shorter: read from 0 then.
            begin = start if start <= size else 0
            handle.seek(max(begin, size - 64 * 1024))
            data = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return _tail_text(data, lines)
