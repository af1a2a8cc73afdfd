"""``streamproc``: run a topology, manage the local development broker, run the demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import structlog

from streamproc import logs, workers
from streamproc.codecs.schemas import SCHEMA_DIR_ENV
from streamproc.config import Settings, flag_for, load_settings
from streamproc.connection import ConnectionSettings, kafka_connection
from streamproc.errors import ConfigError, StreamprocError, TopologyError
from streamproc.loader import load_topology as _load_topology

if TYPE_CHECKING:
    from streamproc.api.topology import Topology

log = structlog.get_logger("streamproc.cli")
_PACKAGE_DIR = str(Path(__file__).resolve().parent) + os.sep

_DICT_SETTINGS = {"consumer_config", "producer_config", "schema_registry_config", "kafka_config"}


def resolve_brokers(settings: Settings) -> str:
    if settings.brokers:
        return settings.brokers
    from streamproc.kafka import broker

    running = broker.status()
    if running is None:
        raise ConfigError(
            "brokers (env STREAMPROC_BROKERS, flag --brokers)",
            "no Kafka brokers configured and no local broker running: set it, or start one "
            "with `streamproc kafka start`")
    return running.bootstrap


def load_topology(spec: str, params: dict[str, str] | None = None) -> Topology:
    """The topology ``spec`` names. Whatever importing or building it raises is the user's code
    failing: one error naming the file and line of the user's code, never a traceback."""
    try:
        return _load_topology(spec, params)
    except SyntaxError as exc:
        raise TopologyError(f"cannot import topology {spec}: {exc.msg} "
                            f"(at {exc.filename}:{exc.lineno})") from None
    except ConfigError:
        raise
    except TopologyError as exc:
        raise TopologyError(f"{exc}{_user_line(exc)}") from None
    except Exception as exc:
        raise TopologyError(f"cannot load topology {spec}: {type(exc).__name__}: {exc}"
                            f"{_user_line(exc)}") from None


def _user_line(exc: BaseException) -> str:
    """`` (at file:line)`` of the innermost frame outside streamproc and the import machinery:
    the user's line that raised (or called the builder that did)."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        name = frame.filename
        if not name.startswith((_PACKAGE_DIR, "<frozen")):
            return f" (at {name}:{frame.lineno})"
    return ""


class _Parser(argparse.ArgumentParser):
    """A bad flag is one error line (argparse's usage text stays in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        log.error("cli.invalid_arguments", command=self.prog, error=message)
        sys.exit(2)


def _quiet_clients(settings: Settings) -> None:
    """librdkafka's own lines (connection retries, ...) of the clients the dlq and reset
    commands create: shown at debug level, else left out next to the one-line error that says
    what failed."""
    from streamproc.ops.dlq import COMMAND_CLIENT_LOG

    COMMAND_CLIENT_LOG.setLevel(logging.DEBUG if settings.log_level == "debug"
                                else logging.CRITICAL)


def _add_setting_flags(p: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        p.add_argument(flag_for(name), dest=name, default=None, metavar="VALUE",
                       help=field.description or f"(env STREAMPROC_{name.upper()})")


def _add_connection_flags(p: argparse.ArgumentParser) -> None:
    """The Kafka connection settings (streamproc/connection.py) for a tool command: it must
    reach a secured cluster exactly as the application does."""
    for name, field in ConnectionSettings.model_fields.items():
        p.add_argument(flag_for(name), dest=name, default=None, metavar="VALUE",
                       help=field.description or f"(env STREAMPROC_{name.upper()})")


def _connection_settings(args: argparse.Namespace, **given: Any) -> Settings:
    """Settings from the environment, the command's --brokers and its connection flags."""
    for name in ConnectionSettings.model_fields:
        given[name] = _flag_value(name, getattr(args, name, None))
    return load_settings(brokers=args.brokers, **given)


def _flag_value(name: str, value: Any) -> Any:
    """A setting's flag as given; the dict settings are JSON objects on the command line."""
    if value is not None and name in _DICT_SETTINGS:
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(name, f"expected a JSON object: {exc}") from exc
    return value


def _connection(settings: Settings) -> dict[str, Any]:
    return kafka_connection(settings, resolve_brokers(settings))


def _settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(**{name: _flag_value(name, getattr(args, name, None))
                            for name in Settings.model_fields})


def _configure_logs(args: argparse.Namespace) -> Settings | None:
    try:
        settings = _settings_from(args)
    except ConfigError:
        logs.configure()
        raise
    logs.configure(settings.log_level, settings.log_format)
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    from streamproc.service import application

    settings = _configure_logs(args)
    assert settings is not None
    if settings.schema_dir is not None:  # topologies find their .avsc files by name there
        os.environ[SCHEMA_DIR_ENV] = str(settings.schema_dir)
    topology = load_topology(args.topology, _params(args.param))
    bootstrap = resolve_brokers(settings)
    if settings.workers > 1:
        return workers.supervise(settings, args.argv)
    workers.adopt_supervisor()
    stopping = threading.Event()
    current: list[Any] = []

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("instance.stopping", signal=signal.Signals(signum).name)
        if not stopping.is_set():
            _exit_after(settings.shutdown_timeout_ms / 1000)
        stopping.set()
        if current:
            current[-1].stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # An instance whose consumer failed fatally (Application.restartable) is replaced by a
    # fresh one in this process, as a container's restart policy would, without the process
    # start: a few in a row, then the failure is the exit code.
    restarts: list[float] = []
    while True:
        app = application(topology, settings, bootstrap=bootstrap)
        current.append(app)
        if stopping.is_set():  # a signal while it was being built
            app.stop()
        code = app.run()
        current.clear()
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < _RESTART_WINDOW_S]
        if stopping.is_set() or not app.restartable or len(restarts) >= _MAX_RESTARTS:
            return code
        restarts.append(now)
        log.warning("instance.restarting", reason=str(app.failure), restarts=len(restarts))
        if stopping.wait(1.0):
            return code


def _exit_after(seconds: float) -> None:
    """Bound the shutdown (``shutdown_timeout_ms``): a final checkpoint stuck in user code or on
    an unreachable cluster must not keep a container from stopping, nor leave its orchestrator
    to SIGKILL it without a word. Exiting is as safe as a crash: what the checkpoint had not
    committed is replayed from the committed offsets at the next start."""
    def expire() -> None:
        log.error("instance.shutdown_timeout", timeout_ms=round(seconds * 1000),
                  reason="the final checkpoint did not finish in time; the next start "
                  "replays what it had not committed")
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


# In-place restarts after a fatal consumer error: at most this many within the window.
_MAX_RESTARTS = 5
_RESTART_WINDOW_S = 300.0


def _params(given: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in given:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise ConfigError("--param", f"expected NAME=VALUE, got {item!r}")
        params[name] = value
    return params


def _compiled_app(args: argparse.Namespace) -> Any:
    """The compiled ``--topology`` of a tool command, which must be the ``--app`` it names."""
    from streamproc.graph.compile import compile_topology

    compiled = compile_topology(load_topology(args.topology, _params(args.param)))
    if compiled.application_id != args.app:
        raise ConfigError("--app", f"{args.topology} has application id "
                          f"{compiled.application_id!r}, not {args.app!r}")
    return compiled


def cmd_reset(args: argparse.Namespace) -> int:
    from streamproc.config import parse_instant
    from streamproc.ops.reset import reset

    logs.configure("warning")
    settings = _connection_settings(args, state_dir=args.state_dir)
    _quiet_clients(settings)
    if not args.timeout > 0:  # also refuses nan
        raise ConfigError("--timeout", f"must be more than 0 seconds, not {args.timeout}")
    compiled = _compiled_app(args)
    try:
        to_datetime = None if args.to_datetime is None else parse_instant(args.to_datetime)
    except ValueError as exc:
        raise ConfigError("--to-datetime", str(exc)) from None
    sys.stdout.write(reset(_connection(settings), compiled, settings.state_dir,
                           dry_run=args.dry_run, to_datetime=to_datetime,
                           offsets_file=Path(args.to_offsets) if args.to_offsets else None,
                           timeout_s=args.timeout))
    return 0


def cmd_savepoint(args: argparse.Namespace) -> int:
    # Every expected failure (a bad savepoint, a stalled read, a running application) is one
    # line naming the problem and exit 2: never a traceback, nor main()'s start.failed line.
    try:
        return _savepoint(args)
    except StreamprocError as exc:
        sys.stderr.write(f"streamproc: savepoint {args.action}: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"streamproc: savepoint {args.action}: interrupted\n")
        return 130


def _savepoint(args: argparse.Namespace) -> int:
    from streamproc.savepoints.format import Savepoint
    from streamproc.savepoints.inspect import describe, summary

    if args.action == "inspect":
        logs.configure("warning")
        sp = Savepoint.open(args.path)
        sp.verify()
        sys.stdout.write(json.dumps(summary(sp), indent=2) + "\n" if args.json
                         else describe(sp))
        return 0
    from streamproc.savepoints.create import create

    logs.configure("info")
    if not args.stall_timeout > 0:  # also refuses nan, which would never stall
        raise ConfigError("--stall-timeout", f"must be more than 0 seconds, not "
                          f"{args.stall_timeout}")
    settings = _connection_settings(args)
    compiled = _compiled_app(args)
    conn = _connection(settings)
    sp = create(conn["bootstrap.servers"], compiled, Path(args.to),
                topology_name=args.topology, wait_stopped_s=args.wait_stopped,
                stall_s=args.stall_timeout, client_config=conn)
    sys.stdout.write(describe(sp))
    return 0


def cmd_kafka(args: argparse.Namespace) -> int:
    from streamproc.kafka import broker
    from streamproc.kafka.broker_security import describe as describe_secured

    logs.configure()
    data_dir = Path(args.data_dir) if args.data_dir else None
    if _is_cluster(args, data_dir):
        return _cmd_cluster(args, data_dir)
    if args.action in ("kill", "restart"):
        raise ConfigError("--brokers", f"kafka {args.action} stops or starts one node of a "
                          "cluster (kafka start --brokers 3); the single broker has none")
    if args.action == "start":
        b = broker.start(data_dir=data_dir, port=args.port, security=args.security)
        sys.stdout.write(b.bootstrap + "\n")
        if b.security is not None:
            sys.stdout.write(describe_secured(b.security))
        return 0
    if args.action == "stop":
        stopped = broker.stop(data_dir=data_dir)
        sys.stdout.write("stopped\n" if stopped else "not running\n")
        return 0
    running = broker.status(data_dir=data_dir)
    if running is None:
        sys.stdout.write("not running\n")
        return 1
    sys.stdout.write(running.bootstrap + "\n")
    if running.security is not None:  # where the client files are; never a secret itself
        sys.stdout.write(describe_secured(running.security))
    return 0


def _is_cluster(args: argparse.Namespace, data_dir: Path | None) -> bool:
    from streamproc.kafka import cluster

    if args.brokers is not None:
        if args.brokers < 1:
            raise ConfigError("--brokers", f"must be at least 1, not {args.brokers}")
        return bool(args.brokers > 1)
    if data_dir is not None:
        return cluster.is_cluster(data_dir.expanduser().resolve())
    return args.action in ("kill", "restart")


def _cmd_cluster(args: argparse.Namespace, data_dir: Path | None) -> int:
    from streamproc.kafka import cluster
    from streamproc.kafka.broker import default_home

    where = data_dir if data_dir is not None else default_home() / "cluster"
    if args.action == "start":
        if args.port is not None or args.security != "plaintext":
            raise ConfigError("--brokers", "a cluster picks its own ports and is plaintext "
                              "(--port and --security are for the single broker)")
        started = cluster.start(where, brokers=args.brokers or 3)
        sys.stdout.write(started.bootstrap + "\n")
        return 0
    if args.action == "stop":
        sys.stdout.write("stopped\n" if cluster.stop(where) else "not running\n")
        return 0
    if args.action in ("kill", "restart"):
        if args.node is None:
            raise ConfigError("--node", f"kafka {args.action} needs the node id (1, 2, 3...)")
        if args.action == "kill":
            cluster.kill(where, args.node)
            sys.stdout.write(f"node {args.node} killed\n")
        else:
            sys.stdout.write(cluster.restart(where, args.node).bootstrap + "\n")
        return 0
    c = cluster.status(where)
    if c is None or all(n.pid is None for n in c.nodes):
        sys.stdout.write("not running\n")
        return 1
    sys.stdout.write(c.bootstrap + "\n")
    for n in c.nodes:
        sys.stdout.write(f"node {n.id} {n.address} "
                         f"{'pid ' + str(n.pid) if n.pid is not None else 'down'}\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streamproc.demo import run_demo

    settings = _configure_logs(args)
    assert settings is not None
    return run_demo(settings, lines=args.lines)


def cmd_acls(args: argparse.Namespace) -> int:
    """Print the ACLs the application needs, as kafka-acls commands (streamproc/kafka/acls.py);
    touches no cluster."""
    from streamproc.kafka.acls import required_acls

    logs.configure("warning")
    compiled = _compiled_app(args)
    if not args.principal.startswith("User:") or len(args.principal) <= len("User:"):
        raise ConfigError("--principal", f"must be User:NAME, not {args.principal!r}")
    for acl in required_acls(compiled, tools=args.tools):
        sys.stdout.write(acl.command(args.principal, args.bootstrap_server) + "\n")
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from streamproc.ops import dlq

    # A replay's progress lines (every few seconds) and its committed chunks are info lines.
    logs.configure("info" if args.action == "replay" else "warning")
    settings = _connection_settings(args)
    _quiet_clients(settings)
    if not args.stall_timeout > 0:  # also refuses nan, which would never stall
        raise ConfigError("--stall-timeout", f"must be more than 0 seconds, not "
                          f"{args.stall_timeout}")
    dlq.check_app_id(args.app)
    bootstrap = _connection(settings)
    if args.action == "inspect":
        if args.limit is not None and args.limit < 1:
            raise ConfigError("--limit", f"must be at least 1, not {args.limit}")
        dlq.inspect(bootstrap, args.app, error_types=args.error_type, topic=args.topic,
                    limit=args.limit, as_json=args.json, stall_s=args.stall_timeout)
        return 0
    dlq.replay(bootstrap, args.app, error_types=args.error_type, topic=args.topic,
               dry_run=args.dry_run, from_beginning=args.from_beginning,
               chunk_size=args.chunk_size, stall_s=args.stall_timeout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="streamproc", description="Kafka-native stream processing")
    parser.add_argument("--version", action="version", version="streamproc 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a topology as a consumer-group application")
    run.add_argument("topology", help="module or module:attr, e.g. topologies.wordcount")
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="keyword argument of a topology factory (repeatable), e.g. "
                     "topologies.wordcount:build --param app_id=wordcount-replay")
    _add_setting_flags(run)
    run.set_defaults(func=cmd_run)

    rst = sub.add_parser("reset", help="reprocess from a chosen point: reset the group's "
                         "offsets, delete internal topics and local state (stop the app first)")
    rst.add_argument("--app", required=True, help="application id (must match the topology's)")
    rst.add_argument("--topology", required=True, help="module or module:attr naming its topics")
    rst.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="keyword argument of a topology factory (repeatable)")
    to = rst.add_mutually_exclusive_group()
    to.add_argument("--to-earliest", action="store_true", help="the default")
    to.add_argument("--to-datetime", metavar="T",
                    help="ISO-8601 datetime or epoch ms: each source partition's first record "
                    "at or after it")
    to.add_argument("--to-offsets", metavar="FILE",
                    help='JSON {"topic": {"partition": offset}} for every source partition')
    rst.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    rst.add_argument("--brokers", default=None, help="(env STREAMPROC_BROKERS)")
    _add_connection_flags(rst)
    rst.add_argument("--state-dir", dest="state_dir", default=None,
                     help="(env STREAMPROC_STATE_DIR) whose {app} directory is deleted")
    rst.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                     help="how long each request to Kafka may take (default 30)")
    rst.set_defaults(func=cmd_reset)

    sp = sub.add_parser("savepoint", help="snapshot a stopped application's state and offsets "
                        "(create), or summarise a savepoint (inspect)")
    sp_sub = sp.add_subparsers(dest="action", required=True)
    spc = sp_sub.add_parser("create", help="take a savepoint of a stopped application")
    spc.add_argument("--app", required=True, help="application id (must match the topology's)")
    spc.add_argument("--topology", required=True, help="module or module:attr of the app")
    spc.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="keyword argument of a topology factory (repeatable)")
    spc.add_argument("--to", required=True, metavar="DIR",
                     help="directory to create (must not exist or be empty)")
    spc.add_argument("--wait-stopped", type=float, default=30.0, metavar="SECONDS",
                     help="how long to wait for the group to become empty (default 30)")
    spc.add_argument("--stall-timeout", type=float, default=60.0, metavar="SECONDS",
                     help="fail when reading the changelogs makes no progress for this long "
                     "(default 60; a large state takes as long as it takes)")
    spc.add_argument("--brokers", default=None, help="(env STREAMPROC_BROKERS)")
    _add_connection_flags(spc)
    spc.set_defaults(func=cmd_savepoint)
    spi = sp_sub.add_parser("inspect", help="summarise a savepoint (and verify its checksums)")
    spi.add_argument("path", metavar="DIR")
    spi.add_argument("--json", action="store_true", help="the summary as JSON")
    spi.set_defaults(func=cmd_savepoint)

    kafka = sub.add_parser("kafka", help="the local Kafka for development and tests: one "
                           "broker, or a replicated cluster (--brokers 3)")
    kafka.add_argument("action", choices=["start", "stop", "status", "kill", "restart"])
    kafka.add_argument("--data-dir", default=None)
    kafka.add_argument("--brokers", type=int, default=None,
                       help="start: that many KRaft nodes (replication 3, min.insync.replicas "
                       "2); stop/status: the cluster in the default place")
    kafka.add_argument("--node", type=int, default=None,
                       help="kill (SIGKILL) / restart: one node of the cluster")
    kafka.add_argument("--port", type=int, default=None)
    kafka.add_argument("--security", choices=["plaintext", "sasl_ssl"], default="plaintext",
                       help="start: sasl_ssl for SCRAM-SHA-512 and mTLS listeners with ACLs "
                       "enforced (docs/security.md); a data dir keeps its first mode")
    kafka.set_defaults(func=cmd_kafka)

    demo = sub.add_parser("demo", help="wordcount on the local broker, fed by a generator")
    demo.add_argument("--lines", type=int, default=2000)
    _add_setting_flags(demo)
    demo.set_defaults(func=cmd_demo)

    from streamproc.ops import dlq as dlq_defaults

    acl = sub.add_parser("acls", help="print the ACLs an application's principal needs, as "
                         "kafka-acls commands (least privilege; docs/security.md)")
    acl.add_argument("--app", required=True, help="application id (must match the topology's)")
    acl.add_argument("--topology", required=True, help="module or module:attr of the app")
    acl.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="keyword argument of a topology factory (repeatable)")
    acl.add_argument("--principal", default="User:APP", help="the application's principal "
                     "(User:NAME; default a placeholder)")
    acl.add_argument("--bootstrap-server", default="BOOTSTRAP", help="written into each "
                     "command (default a placeholder)")
    acl.add_argument("--tools", action="store_true", help="also what streamproc reset "
                     "(Delete on the group) and dlq replay (Write on the sources) need")
    acl.set_defaults(func=cmd_acls)

    dlq = sub.add_parser("dlq", help="inspect or replay an application's dead-letter topic")
    dlq_sub = dlq.add_subparsers(dest="action", required=True)
    for action, text in (("inspect", "print the dead letters with their headers"),
                         ("replay", "send dead letters back to their source topic (each once)")):
        p = dlq_sub.add_parser(action, help=text)
        p.add_argument("--app", required=True, help="application id (the topic is {app}-dlq)")
        p.add_argument("--error-type", action="append", default=None, metavar="TYPE",
                       help="only dead letters with this streamproc.error.type (repeatable)")
        p.add_argument("--topic", default=None, help="only dead letters from this source topic")
        if action == "inspect":
            p.add_argument("--limit", type=int, default=None)
            p.add_argument("--json", action="store_true", help="one JSON object per line")
        else:
            p.add_argument("--dry-run", action="store_true", help="print, write nothing")
            p.add_argument("--from-beginning", action="store_true",
                           help="every dead letter, not only those not replayed yet")
            p.add_argument("--chunk-size", type=int, default=dlq_defaults.DEFAULT_CHUNK_SIZE,
                           metavar="N", help="dead letters per transaction (default "
                           f"{dlq_defaults.DEFAULT_CHUNK_SIZE}): what the replay holds in "
                           "memory, and what a failure leaves to the next run")
        p.add_argument("--stall-timeout", type=float, default=dlq_defaults.DEFAULT_STALL_S,
                       metavar="SECONDS", help="fail when reading or writing makes no progress "
                       f"for this long (default {dlq_defaults.DEFAULT_STALL_S:g}; a large "
                       "topic takes as long as it takes)")
        p.add_argument("--brokers", default=None, help="(env STREAMPROC_BROKERS)")
        _add_connection_flags(p)
        p.set_defaults(func=cmd_dlq)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command. An expected failure (bad flags or settings, a topology that does not
    import or build, an unreachable broker, a missing topic, a stalled operation, Ctrl-C) is
    one error line and a non-zero exit code, never a traceback; only a bug shows one."""
    logs.configure("warning")  # until the command configures its own: argparse errors too
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --workers repeats
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        log.error("config.invalid", setting=exc.setting, error=str(exc))
        return 2
    except (TopologyError, StreamprocError) as exc:
        log.error("start.failed", command=args.command, error=str(exc))
        return 2
    except KeyboardInterrupt:
        log.error("command.interrupted", command=args.command)
        return 130
    except Exception as exc:
        from confluent_kafka import KafkaException

        from streamproc.kafka.broker_provision import BrokerError

        if isinstance(exc, BrokerError):  # its message says what to install or free
            log.error("start.failed", command=args.command, error=str(exc))
            return 2
        # Failures of the environment rather than of streamproc: Kafka's client errors, a
        # timeout, a file that cannot be read or written. Anything else is a bug: traceback.
        if not isinstance(exc, KafkaException | TimeoutError | OSError):
            raise
        log.error("command.failed", command=args.command,
                  error=f"{type(exc).__name__}: {exc}")
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
