"""A replicated local Kafka cluster: N combined broker+controller KRaft nodes on 127.0.0.1.

``streamproc kafka start --brokers 3`` (and the fault tests) run the same jars as the single
broker (kafka/broker.py), N JVMs, each in ``data_dir/node-I``, sharing one cluster id and a
static controller quorum of all N nodes. Combined nodes rather than separate controllers: on a
2-core machine every JVM costs, and a quorum of 3 voters already survives the loss of any one
node, which is what the fault scenarios kill.

Replication is what users run: ``default.replication.factor`` = N (at most 3),
``min.insync.replicas`` = 2 for N >= 3, and the offsets and transaction-state topics at the
same replication. Every node keeps its ports for the life of the data dir (the static voter set
names the controller ports), so a node killed with SIGKILL comes back with :func:`restart` as
the same member.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

# The broker module's process table: it reaps (and _pid_alive sees through) our nodes too.
from streamproc.kafka.broker import (
    _CHILDREN,
    _chunk,
    _pid_alive,
    _read_tail,
    _terminate,
    wait_group_coordinator,
)
from streamproc.kafka.broker_provision import (
    _TAIL_LINES,
    KAFKA_VERSION,
    BrokerError,
    _file_lock,
    _find_java,
    _format_storage_once,
    _log4j2_xml,
    _random_cluster_id,
    _server_properties,
    jvm_command,
    resolve_classpath,
)
from streamproc.kafka.ports import claim, free_port

log = structlog.get_logger(__name__)

_STATE_FILE = "cluster.json"
_START_ATTEMPTS = 3  # a fresh cluster whose ports were taken before its JVMs bound them
_LOCK_FILE = ".cluster.lock"
_CLUSTER_ID_FILE = "cluster.id"  # as kafka/broker_provision.py reads it in each node's dir
# Three JVMs share the machine with the instances under test: smaller heaps than one broker's.
_NODE_HEAP = ["-Xmx512m", "-Xms128m"]
_PROBE_TRANSACTIONAL_ID = "streamproc-cluster-readiness-probe"


@dataclass(frozen=True)
class Node:
    id: int
    port: int
    controller_port: int
    data_dir: Path
    pid: int | None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True)
class LocalCluster:
    data_dir: Path
    nodes: tuple[Node, ...]

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes)

    def node(self, node_id: int) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise BrokerError(f"the cluster in {self.data_dir} has no node {node_id} "
                          f"(nodes: {[n.id for n in self.nodes]})")


def is_cluster(data_dir: Path) -> bool:
    return (data_dir / _STATE_FILE).is_file()


def node_properties(node: Node, nodes: tuple[Node, ...]) -> str:
    """server.properties of one node: the single broker's, with the quorum and replication of
    a cluster."""
    n = len(nodes)
    replicas = str(min(3, n))
    min_isr = "2" if n >= 3 else "1"
    voters = ",".join(f"{x.id}@127.0.0.1:{x.controller_port}" for x in nodes)
    return _server_properties(node.data_dir, node.port, node.controller_port, [
        ("node.id", str(node.id)),
        ("controller.quorum.voters", voters),
        ("offsets.topic.replication.factor", replicas),
        ("transaction.state.log.replication.factor", replicas),
        ("transaction.state.log.min.isr", min_isr),
        ("share.coordinator.state.topic.replication.factor", replicas),
        ("share.coordinator.state.topic.min.isr", min_isr),
        ("default.replication.factor", replicas),
        ("min.insync.replicas", min_isr),
        # A node that comes back must not take leadership before it has caught up.
        ("unclean.leader.election.enable", "false"),
    ])


# --------------------------------------------------------------------------- lifecycle
def start(data_dir: Path, brokers: int = 3, timeout_s: float = 180.0) -> LocalCluster:
    """Start (or find) the cluster of ``data_dir`` and wait until every node serves, the
    transaction coordinator initialises a producer and the group coordinator answers."""
    if brokers < 1:
        raise BrokerError(f"brokers must be at least 1, not {brokers}")
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, _START_ATTEMPTS + 1):
        cluster, fresh = _launch_all(data_dir, brokers)
        started = time.monotonic()
        try:
            wait_ready(cluster, time.monotonic() + timeout_s)
        except BrokerError:
            # A port picked free was bound by another process before the node's JVM bound
            # it (a parallel suite starting many JVMs at once): a fresh cluster starts over on
            # new ports. A cluster with data keeps its ports (its voters are in its metadata).
            if not fresh or attempt == _START_ATTEMPTS or not _bind_failed(cluster):
                raise
            log.warning("kafka.cluster.port_race", attempt=attempt)
            stop(data_dir)
            _forget(data_dir)
            continue
        log.info("kafka.cluster.started", bootstrap=cluster.bootstrap, nodes=len(cluster.nodes),
                 seconds=round(time.monotonic() - started, 1))
        return cluster
    raise AssertionError("unreachable: the loop returns or raises")


def _launch_all(data_dir: Path, brokers: int) -> tuple[LocalCluster, bool]:
    """Every node of the cluster of ``data_dir`` started (planned first if new); whether the
    cluster is new."""
    with _file_lock(data_dir / _LOCK_FILE):
        cluster = _read(data_dir)
        if cluster is not None and len(cluster.nodes) != brokers:
            raise BrokerError(f"the cluster in {data_dir} has {len(cluster.nodes)} nodes, not "
                              f"{brokers}; stop it and use another data dir")
        fresh = cluster is None
        if cluster is None:
            cluster = _plan(data_dir, brokers)
        java, classpath = _find_java(), resolve_classpath()
        cluster_id = _cluster_id(data_dir)
        nodes = []
        for node in cluster.nodes:
            if node.pid is not None and _is_node(node):
                nodes.append(node)
                continue
            nodes.append(_spawn(java, classpath, node, cluster.nodes, cluster_id))
        cluster = LocalCluster(data_dir, tuple(nodes))
        _write(cluster)
    return cluster, fresh


def _bind_failed(cluster: LocalCluster) -> bool:
    text = "".join(_read_tail(n.data_dir / name, 300) for n in cluster.nodes
                   for name in ("broker.log", "broker.out"))
    return ("Address already in use" in text or "BindException" in text
            or "Unable to start acceptor" in text)


def _forget(data_dir: Path) -> None:
    """A fresh cluster that failed to start: its plan and node dirs removed (nothing of a
    user's is in them yet), so the next attempt plans new ports."""
    with _file_lock(data_dir / _LOCK_FILE):
        cluster = _read(data_dir)
        for n in cluster.nodes if cluster else ():
            shutil.rmtree(n.data_dir, ignore_errors=True)
        (data_dir / _STATE_FILE).unlink(missing_ok=True)
        (data_dir / _CLUSTER_ID_FILE).unlink(missing_ok=True)


def stop(data_dir: Path, timeout_s: float = 60.0) -> bool:
    """SIGTERM every node at once (one by one, the last ones would wait on a quorum that is
    gone), then SIGKILL what is left after ``timeout_s``. True if a node was running."""
    data_dir = data_dir.expanduser().resolve()
    with _file_lock(data_dir / _LOCK_FILE):
        cluster = _read(data_dir)
        if cluster is None:
            return False
        running = [n for n in cluster.nodes if n.pid is not None and _is_node(n)]
        log.info("kafka.cluster.stopping", nodes=[n.id for n in running])
        threads = [threading.Thread(target=_terminate, args=(n.pid, timeout_s))
                   for n in running if n.pid is not None]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _write(LocalCluster(data_dir, tuple(_without_pid(n) for n in cluster.nodes)))
        return bool(running)


def status(data_dir: Path) -> LocalCluster | None:
    """The cluster of ``data_dir`` with the pids of its live nodes (None for the others)."""
    cluster = _read(data_dir.expanduser().resolve())
    if cluster is None:
        return None
    return LocalCluster(cluster.data_dir, tuple(
        n if n.pid is not None and _is_node(n) else _without_pid(n) for n in cluster.nodes))


def kill(data_dir: Path, node_id: int) -> Node:
    """SIGKILL one node (no clean shutdown: its leaderships move only when the controller
    notices)."""
    data_dir = data_dir.expanduser().resolve()
    with _file_lock(data_dir / _LOCK_FILE):
        cluster, node = _existing(data_dir, node_id, running=True)
        pid = node.pid
        assert pid is not None  # running
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        _CHILDREN.pop(pid, None)
        _write(LocalCluster(data_dir, tuple(_without_pid(n) if n.id == node_id else n
                                            for n in cluster.nodes)))
        log.info("kafka.cluster.node_killed", node=node_id, pid=node.pid)
        return node


def stop_node(data_dir: Path, node_id: int, timeout_s: float = 60.0) -> Node:
    """SIGTERM one node and wait for it to exit (a controlled shutdown: it hands its
    leaderships over first), SIGKILL after ``timeout_s``: one step of a rolling restart."""
    data_dir = data_dir.expanduser().resolve()
    with _file_lock(data_dir / _LOCK_FILE):
        cluster, node = _existing(data_dir, node_id, running=True)
        assert node.pid is not None  # running
        _terminate(node.pid, timeout_s)
        _write(LocalCluster(data_dir, tuple(_without_pid(n) if n.id == node_id else n
                                            for n in cluster.nodes)))
        log.info("kafka.cluster.node_stopped", node=node_id, pid=node.pid)
        return node


def restart(data_dir: Path, node_id: int, timeout_s: float = 120.0) -> LocalCluster:
    """Start one stopped node again, on its own ports, and wait until the cluster serves with
    every node."""
    data_dir = data_dir.expanduser().resolve()
    with _file_lock(data_dir / _LOCK_FILE):
        cluster, node = _existing(data_dir, node_id, running=False)
        claim(node.port)  # renewed: it stays ours while the node is down
        claim(node.controller_port)
        fresh = _spawn(_find_java(), resolve_classpath(), node, cluster.nodes,
                       _cluster_id(data_dir))
        cluster = LocalCluster(data_dir, tuple(fresh if n.id == node_id else n
                                               for n in cluster.nodes))
        _write(cluster)
    wait_ready(cluster, time.monotonic() + timeout_s)
    log.info("kafka.cluster.node_restarted", node=node_id, pid=fresh.pid)
    return cluster


def _existing(data_dir: Path, node_id: int, *, running: bool) -> tuple[LocalCluster, Node]:
    """The cluster of ``data_dir`` and its node ``node_id``, which must be running (or not)."""
    cluster = _read(data_dir)
    if cluster is None:
        raise BrokerError(f"no cluster in {data_dir}")
    node = cluster.node(node_id)
    alive = node.pid is not None and _is_node(node)
    if alive != running:
        raise BrokerError(f"node {node_id} of {data_dir} is "
                          f"{'not running' if running else 'already running'}")
    return cluster, node


# --------------------------------------------------------------------------- readiness
def _probe(cluster: LocalCluster) -> dict[str, Any]:
    return {"bootstrap.servers": cluster.bootstrap, "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 250, "log_level": 0}


def wait_ready(cluster: LocalCluster, deadline: float) -> None:
    """Every node registered, a transactional producer initialised, the group coordinator
    answering: the state a test (or an instance) needs before it starts."""
    from confluent_kafka import KafkaException, Producer
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(_probe(cluster))
    expected = {n.id for n in cluster.nodes}
    while True:
        _check_alive(cluster)
        try:
            brokers = set(admin.list_topics(timeout=_chunk(deadline, 2.0)).brokers)
            if brokers == expected:
                break
        except KafkaException:
            pass
        _check_deadline(cluster, deadline, f"register all of {sorted(expected)}")
    producer: Any = None
    while True:
        _check_alive(cluster)
        if producer is None:
            producer = Producer({**_probe(cluster),
                                 "transactional.id": _PROBE_TRANSACTIONAL_ID})
        try:
            producer.init_transactions(_chunk(deadline, 5.0))
            break
        except KafkaException as exc:
            if exc.args and getattr(exc.args[0], "fatal", lambda: False)():
                producer = None
            _check_deadline(cluster, deadline, "initialise transactions")
    producer.flush(0)
    wait_group_coordinator(_probe(cluster), _PROBE_TRANSACTIONAL_ID, deadline,
                           lambda: _check_alive(cluster),
                           lambda: _check_deadline(cluster, deadline, "serve consumer groups"))


def _check_alive(cluster: LocalCluster) -> None:
    for n in cluster.nodes:
        if n.pid is not None and not _pid_alive(n.pid):
            raise BrokerError(f"node {n.id} (pid {n.pid}) of {cluster.data_dir} exited"
                              f"{_tail(n)}")


def _check_deadline(cluster: LocalCluster, deadline: float, what: str) -> None:
    if time.monotonic() < deadline:
        time.sleep(0.2)
        return
    raise BrokerError(f"the cluster {cluster.bootstrap} did not {what} before the timeout"
                      + "".join(_tail(n) for n in cluster.nodes))


def _tail(node: Node) -> str:
    path = node.data_dir / "broker.log"
    text = _read_tail(path, _TAIL_LINES)
    return f"\n--- last lines of {path} ---\n{text}" if text else ""


# --------------------------------------------------------------------------- nodes
def _plan(data_dir: Path, brokers: int) -> LocalCluster:
    taken: set[int] = set()
    nodes = []
    for i in range(1, brokers + 1):
        ports = []
        for _ in range(2):
            port = free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            ports.append(port)
        nodes.append(Node(i, ports[0], ports[1], data_dir / f"node-{i}", None))
    return LocalCluster(data_dir, tuple(nodes))


def _cluster_id(data_dir: Path) -> str:
    path = data_dir / _CLUSTER_ID_FILE
    if not path.is_file():
        path.write_text(_random_cluster_id() + "\n")
    return path.read_text().strip()


def _spawn(java: str, classpath: str, node: Node, nodes: tuple[Node, ...],
           cluster_id: str) -> Node:
    node.data_dir.mkdir(parents=True, exist_ok=True)
    # Every node formats its storage with the cluster's id (broker_provision reads it here).
    (node.data_dir / _CLUSTER_ID_FILE).write_text(cluster_id + "\n")
    props = node.data_dir / "server.properties"
    props.write_text(node_properties(node, nodes))
    log4j = node.data_dir / "log4j2.xml"
    log4j.write_text(_log4j2_xml(node.data_dir / "broker.log"))
    _format_storage_once(java, classpath, node.data_dir, props)
    cmd = jvm_command(java, classpath, node.data_dir, props, log4j, heap=_NODE_HEAP)
    with (node.data_dir / "broker.out").open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=node.data_dir, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True)
    _CHILDREN[proc.pid] = proc
    log.info("kafka.cluster.node_starting", node=node.id, bootstrap=node.address,
             kafka_version=KAFKA_VERSION, pid=proc.pid)
    return Node(node.id, node.port, node.controller_port, node.data_dir, proc.pid)


def _is_node(node: Node) -> bool:
    """Alive and still this node's JVM (pids are reused)."""
    if node.pid is None or not _pid_alive(node.pid):
        return False
    try:
        args = Path(f"/proc/{node.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    return str(node.data_dir / "server.properties").encode() in args


def _without_pid(node: Node) -> Node:
    return Node(node.id, node.port, node.controller_port, node.data_dir, None)


def _read(data_dir: Path) -> LocalCluster | None:
    try:
        raw = json.loads((data_dir / _STATE_FILE).read_text())
        nodes = tuple(Node(int(n["id"]), int(n["port"]), int(n["controller_port"]),
                           data_dir / f"node-{int(n['id'])}",
                           n["pid"] if isinstance(n.get("pid"), int) else None)
                      for n in raw["nodes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return LocalCluster(data_dir, nodes) if nodes else None


def _write(cluster: LocalCluster) -> None:
    state = {"kafka_version": KAFKA_VERSION, "written_at": datetime.now(tz=UTC).isoformat(),
             "bootstrap": cluster.bootstrap,
             "nodes": [{"id": n.id, "port": n.port, "controller_port": n.controller_port,
                        "pid": n.pid} for n in cluster.nodes]}
    tmp = cluster.data_dir / f".{_STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, cluster.data_dir / _STATE_FILE)
