"""On-disk artefacts of the local Kafka broker run by :mod:`streamproc.kafka.broker`.

Everything the broker needs before a JVM can start: the Kafka jars (resolved
once with ``mvn`` from Maven Central into a cache under :func:`default_home`, or
taken from an unpacked distribution named by ``$KAFKA_HOME``), the generated
``server.properties`` and log4j2 config, the formatted KRaft storage and its
cluster id, and the ``java`` executable with its heap options. Process
lifecycle (launch, readiness, stop) lives in :mod:`streamproc.kafka.broker`;
this module must not import it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import structlog

__all__ = [
    "KAFKA_VERSION",
    "BrokerError",
    "default_home",
    "resolve_classpath",
]

# 4.4.0 is only partly published on Maven Central (kafka-tools-api is missing),
# so the newest release whose full dependency tree resolves is used.
KAFKA_VERSION = "4.3.1"

log = structlog.get_logger(__name__)

_CLUSTER_ID_FILE = "cluster.id"
_LOG_DIR = "kafka-data"
_LIBS_MARKER = ".libs-complete"
_DEFAULT_HEAP = ("-Xmx1g", "-Xms256m")
# The client JIT only: a local broker lives for a test or a dev session on a small machine,
# where C2's compiler threads cost more than they win. Measured on the 2-core CI machine:
# 2.7 s of CPU to ready instead of 4.5 s, and half the CPU under 200k produced records
# (the suite starts some 40 JVMs, most at once).
_JIT = ("-XX:TieredStopAtLevel=1",)
_MVN_TIMEOUT_S = 1800.0
_FORMAT_TIMEOUT_S = 120.0
_FORMAT_ARGFILE = ".format-args"
_TAIL_LINES = 40


class BrokerError(RuntimeError):
    """The local broker could not be provisioned, started or stopped.

    The message always names what to fix (install Java, free a port, ...) and,
    when the broker process itself failed, ends with the tail of its logs.
    """


def default_home() -> Path:
    """Root for streamproc's local caches: ``$STREAMPROC_HOME`` or ``~/.cache/streamproc``."""
    env = os.environ.get("STREAMPROC_HOME", "").strip()
    if env:
        return Path(env).expanduser().absolute()
    return Path.home() / ".cache" / "streamproc"


# --------------------------------------------------------------------------- classpath


def resolve_classpath(cache_dir: Path | None = None) -> str:
    """Return a java ``-cp`` value for running Kafka ``KAFKA_VERSION``.

    ``$KAFKA_HOME`` (an unpacked Kafka distribution) wins when set, so machines
    without access to Maven Central can still run the broker. Otherwise the jars
    are copied by Maven into ``{cache_dir}/kafka-{KAFKA_VERSION}/libs`` on first
    use; ``cache_dir`` defaults to :func:`default_home`. That first resolution
    can take minutes on a cold ``~/.m2``; later calls only check a marker file.
    """
    kafka_home = os.environ.get("KAFKA_HOME", "").strip()
    if kafka_home:
        libs = Path(kafka_home).expanduser() / "libs"
        if not libs.is_dir() or not any(libs.glob("kafka_*.jar")):
            raise BrokerError(
                f"KAFKA_HOME={kafka_home} does not contain libs/kafka_*.jar; point it at an "
                "unpacked Apache Kafka distribution, or unset it to download Kafka "
                f"{KAFKA_VERSION} with Maven"
            )
        return f"{libs.absolute()}/*"

    target = (cache_dir if cache_dir is not None else default_home()) / f"kafka-{KAFKA_VERSION}"
    libs = target / "libs"
    marker = target / _LIBS_MARKER
    if marker.is_file() and libs.is_dir():
        return f"{libs.absolute()}/*"

    target.mkdir(parents=True, exist_ok=True)
    # Several test workers may start at once; only one of them should download.
    with _file_lock(target / ".lock"):
        if marker.is_file() and libs.is_dir():
            return f"{libs.absolute()}/*"
        _download_jars(target, libs, marker)
    return f"{libs.absolute()}/*"


def _download_jars(target: Path, libs: Path, marker: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven ('mvn') not found on PATH; it is needed once to download Kafka "
            f"{KAFKA_VERSION} jars from Maven Central. Install Maven (e.g. "
            "'apt-get install maven') or set KAFKA_HOME to an unpacked Kafka distribution"
        )
    log.info("kafka.classpath.resolving", kafka_version=KAFKA_VERSION, libs=str(libs))
    started = time.monotonic()
    # Leftovers of a download that was killed; safe to delete under the lock.
    for stale in target.glob("libs-*"):
        shutil.rmtree(stale, ignore_errors=True)
    # Copy into a scratch dir and rename at the end, so an interrupted download
    # never leaves a half-filled libs/ that looks usable.
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=target))
    try:
        pom = staging / "pom.xml"
        pom.write_bytes(resources.files("streamproc.kafka").joinpath("broker-pom.xml").read_bytes())
        jars = staging / "jars"
        cmd = [
            mvn, "-B", "-q", "-f", str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={jars}",
            "-DincludeScope=runtime",
            f"-Dkafka.version={KAFKA_VERSION}",
        ]
        try:
            proc = subprocess.run(
                cmd, cwd=staging, stdin=subprocess.DEVNULL, capture_output=True,
                timeout=_MVN_TIMEOUT_S, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(
                f"mvn did not finish resolving Kafka {KAFKA_VERSION} within "
                f"{_MVN_TIMEOUT_S:.0f}s; check network access to Maven Central "
                "(proxy settings in ~/.m2/settings.xml) or set KAFKA_HOME"
            ) from exc
        if proc.returncode != 0:
            output = (proc.stdout + proc.stderr).decode(errors="replace")
            raise BrokerError(
                f"mvn failed (exit {proc.returncode}) resolving Kafka {KAFKA_VERSION} from "
                "Maven Central; check network/proxy access (~/.m2/settings.xml) or set "
                f"KAFKA_HOME. mvn output:\n{_tail_text(output, _TAIL_LINES)}"
            )
        if not (jars / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
            raise BrokerError(
                f"mvn succeeded but {jars} has no kafka_2.13-{KAFKA_VERSION}.jar; "
                "the packaged broker-pom.xml is inconsistent with KAFKA_VERSION"
            )
        if libs.exists():
            shutil.rmtree(libs)
        jars.rename(libs)
        count = sum(1 for _ in libs.glob("*.jar"))
        marker.write_text(json.dumps({"kafka_version": KAFKA_VERSION, "jars": count}) + "\n")
        log.info(
            "kafka.classpath.resolved", jars=count, libs=str(libs),
            seconds=round(time.monotonic() - started, 1),
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- config & storage


def _server_properties(
    data_dir: Path, broker_port: int, controller_port: int,
    overrides: list[tuple[str, str]] | None = None,
) -> str:
    """server.properties text; ``overrides`` (the secured broker's listeners and security)
    replace entries of the same key in place and append the others."""
    settings: list[tuple[str, str]] = [
        ("process.roles", "broker,controller"),
        ("node.id", "1"),
        # Loopback only: this broker has no authentication.
        ("listeners",
         f"PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}"),
        ("advertised.listeners", f"PLAINTEXT://127.0.0.1:{broker_port}"),
        ("listener.security.protocol.map", "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"),
        ("inter.broker.listener.name", "PLAINTEXT"),
        ("controller.listener.names", "CONTROLLER"),
        # Static quorum: the voter set comes from config on every start, so the
        # controller port may change between restarts without reformatting.
        ("controller.quorum.voters", f"1@127.0.0.1:{controller_port}"),
        ("log.dirs", str(data_dir / _LOG_DIR)),
        # Internal topics must fit a single node.
        ("offsets.topic.replication.factor", "1"),
        # Default is 50; each partition is loaded by the group coordinator at
        # startup, and 4 keeps the first consumer group join fast.
        ("offsets.topic.num.partitions", "4"),
        ("transaction.state.log.replication.factor", "1"),
        ("transaction.state.log.min.isr", "1"),
        # Same reasoning as offsets.topic.num.partitions, for the txn coordinator.
        ("transaction.state.log.num.partitions", "4"),
        ("share.coordinator.state.topic.replication.factor", "1"),
        ("share.coordinator.state.topic.min.isr", "1"),
        # The 3 s default delays every first rebalance; pointless with one member.
        ("group.initial.rebalance.delay.ms", "0"),
        # A killed instance's open transaction holds read_committed readers (a restore, the
        # apps downstream) until the broker aborts it: at its timeout plus up to this check
        # interval (10 s by default). The broker is the one place that can bound it.
        ("transaction.abort.timed.out.transaction.cleanup.interval.ms", "1000"),
        # Topics are created explicitly (as in production); a typo must fail,
        # not silently create a 1-partition topic.
        ("auto.create.topics.enable", "false"),
        ("num.partitions", "1"),
        ("default.replication.factor", "1"),
        ("min.insync.replicas", "1"),
    ]
    if overrides:
        replaced = dict(overrides)
        settings = [(key, replaced.pop(key, value)) for key, value in settings]
        settings += list(replaced.items())
    header = (
        f"# Written by streamproc.kafka.broker for Kafka {KAFKA_VERSION}; "
        "regenerated on every start.\n"
    )
    return header + "".join(f"{key}={value}\n" for key, value in settings)


def _log4j2_xml(log_file: Path) -> str:
    # shutdownHook="disable": log4j's own hook would otherwise stop logging
    # before Kafka's shutdown hook runs, losing exactly the shutdown messages
    # one needs when a stop misbehaves. immediateFlush keeps the file complete.
    # kafka.request.logger logs every request at DEBUG/TRACE; keep it quiet.
    name = str(log_file).replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="warn" shutdownHook="disable">
  <Appenders>
    <RollingFile name="broker" fileName="{name}" filePattern="{name}.%i" immediateFlush="true">
      <PatternLayout pattern="[%d{{ISO8601}}] %p %m (%c)%n"/>
      <Policies>
        <SizeBasedTriggeringPolicy size="20 MB"/>
      </Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="warn"/>
    <Logger name="kafka.network.RequestChannel$" level="warn"/>
    <Root level="info">
      <AppenderRef ref="broker"/>
    </Root>
  </Loggers>
</Configuration>
"""


def _storage_formatted(data_dir: Path) -> bool:
    return (data_dir / _LOG_DIR / "meta.properties").is_file()


def _format_storage_once(
    java: str, classpath: str, data_dir: Path, server_properties: Path,
    secret_args: list[str] | None = None,
) -> None:
    """Format the KRaft storage unless it already is; ``secret_args`` (SCRAM users) reach
    the tool through a 0600 java argument file, deleted afterwards, so ``ps`` never shows
    them."""
    if _storage_formatted(data_dir):
        return  # already formatted: reformatting would wipe the cluster's metadata
    cluster_id_file = data_dir / _CLUSTER_ID_FILE
    if cluster_id_file.is_file():
        cluster_id = cluster_id_file.read_text().strip()
    else:
        cluster_id = _random_cluster_id()
        cluster_id_file.write_text(cluster_id + "\n")
    # No --standalone: with controller.quorum.voters set (static quorum) Kafka
    # refuses it, and the static voter set is what lets the port change.
    cmd = [
        # No log4j config: log4j's default (errors to the console) lands in the
        # captured output, keeping a 300-line config dump out of broker.log.
        java, "-Xmx256m", *_JIT, "-cp", classpath, "kafka.tools.StorageTool",
        "format", "-t", cluster_id, "-c", str(server_properties),
    ]
    argfile = data_dir / _FORMAT_ARGFILE
    if secret_args:
        # The launcher expands @files only before the main class, so the class and all its
        # arguments go into the file.
        _write_argfile(argfile, [*cmd[2:], *secret_args])
        cmd = [*cmd[:2], f"@{argfile}"]
    try:
        proc = subprocess.run(
            cmd, cwd=data_dir, stdin=subprocess.DEVNULL, capture_output=True,
            timeout=_FORMAT_TIMEOUT_S, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(
            f"kafka-storage format did not finish within {_FORMAT_TIMEOUT_S:.0f}s"
        ) from exc
    finally:
        argfile.unlink(missing_ok=True)
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    if secret_args:
        # A complaint about a SCRAM argument may quote it; error messages never hold secrets.
        output = re.sub(r"password=[^,\]\s]*", "password=****", output)
    if proc.returncode != 0:
        raise BrokerError(
            f"formatting Kafka storage in {data_dir / _LOG_DIR} failed (exit "
            f"{proc.returncode}){_java_hint(output)}; delete that directory if it is "
            f"corrupt. Output:\n{_tail_text(output, _TAIL_LINES)}"
        )
    log.info("kafka.storage.formatted", cluster_id=cluster_id, log_dir=str(data_dir / _LOG_DIR))


def _write_argfile(path: Path, args: list[str]) -> None:
    # The java launcher's @file syntax: one quoted argument per line, backslashes and quotes
    # escaped. O_EXCL with 0600: the file is never readable by others, not even briefly.
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        for arg in args:
            handle.write('"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"\n')


def _random_cluster_id() -> str:
    # Same encoding as Kafka's Uuid.randomUuid().toString() (URL-safe base64 of
    # 16 random bytes, unpadded), generated here to save a JVM start. Kafka
    # rejects ids starting with '-' because they look like CLI flags.
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


def _heap_options() -> list[str]:
    override = os.environ.get("STREAMPROC_BROKER_HEAP", "").strip()
    if not override:
        return list(_DEFAULT_HEAP)
    # Accept JVM flags ("-Xmx2g -Xms512m", like KAFKA_HEAP_OPTS) or a bare size ("2g").
    if override.startswith("-"):
        return shlex.split(override)
    return [f"-Xmx{override}"]


def jvm_command(java: str, classpath: str, data_dir: Path, server_properties: Path,
                log4j_config: Path, heap: list[str] | None = None) -> list[str]:
    """The broker's JVM command line (one node: kafka/cluster.py launches several)."""
    return [
        java, *(heap if heap is not None else _heap_options()), *_JIT,
        # GC flags as in Kafka's kafka-run-class.sh: short pauses keep request
        # latency (and thus test timing) predictable.
        "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        # A broker that ran out of memory must die visibly, not limp along.
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j_config}",
        f"-Dkafka.logs.dir={data_dir}",
        "-cp", classpath,
        "kafka.Kafka", str(server_properties),
    ]


def _find_java() -> str:
    java_home = os.environ.get("JAVA_HOME", "").strip()
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise BrokerError(
            f"Java not found (checked $JAVA_HOME/bin/java and PATH); Kafka {KAFKA_VERSION} "
            "needs Java 17+. Install one (e.g. 'apt-get install openjdk-17-jre-headless') "
            "or set JAVA_HOME"
        )
    return found


def _java_hint(output: str) -> str:
    if "UnsupportedClassVersionError" in output:
        return f" because Kafka {KAFKA_VERSION} needs Java 17+ (set JAVA_HOME to a newer JDK)"
    return ""


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # flock is released by the kernel if we crash, so a stale lock can't wedge
    # later runs. Popen(close_fds=True) keeps the broker from inheriting it.
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
