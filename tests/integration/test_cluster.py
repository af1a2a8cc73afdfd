"""The replicated local cluster (kafka/cluster.py): three KRaft nodes from the same jars, with
the replication users run, that keep working through the SIGKILL of any one node."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, ResourceType

from streamproc.config import load_settings
from streamproc.errors import ConfigError
from streamproc.kafka import cluster, io
from streamproc.service import application
from tests import apps
from tests.harness import cli, create_topics, running, unique
from tests.ops_client import wait_until

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.LocalCluster]:
    data_dir = tmp_path_factory.mktemp("cluster")
    c = cluster.start(data_dir, brokers=3)
    try:
        yield c
    finally:
        cluster.stop(data_dir)


def _leader(admin: AdminClient, topic: str, partition: int = 0) -> tuple[int, list[int]]:
    """(leader, in-sync replicas); (-1, []) while the answering node does not know it yet."""
    parts = admin.list_topics(topic, timeout=10).topics[topic].partitions
    if partition not in parts:
        return -1, []
    return parts[partition].leader, sorted(parts[partition].isrs)


def _commit_one(bootstrap: str, topic: str, txid: str, value: bytes) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": txid,
                  "enable.idempotence": True, "acks": "all", "log_level": 0})
    p.init_transactions(60)
    p.begin_transaction()
    p.produce(topic, value, partition=0)
    p.commit_transaction(60)


def _read_committed(bootstrap: str, topic: str, n: int) -> list[bytes]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("reader"),
                  "isolation.level": "read_committed", "enable.auto.commit": False,
                  "log_level": 0})
    c.assign([KafkaTopicPartition(topic, 0, 0)])
    out: list[bytes] = []
    try:
        wait_until(f"{n} committed records of {topic}",
                   lambda: out.extend(m.value() for m in c.consume(100, 0.5)
                                      if m.error() is None) or len(out),
                   lambda k: k >= n, 60)
    finally:
        c.close()
    return out


def test_three_nodes_with_the_replication_users_run(three: cluster.LocalCluster) -> None:
    admin = AdminClient({"bootstrap.servers": three.bootstrap})
    assert sorted(admin.list_topics(timeout=10).brokers) == [1, 2, 3]
    topic = unique("replicated")
    create_topics(three.bootstrap, (topic, 2))  # no replication factor given: the default
    # The node that answers may learn of a new topic a moment after its creation returned.
    parts = wait_until("the new topic in every node's metadata",
                       lambda: admin.list_topics(topic, timeout=10).topics[topic].partitions,
                       lambda p: len(p) == 2, 30)
    assert {p: len(m.replicas) for p, m in parts.items()} == {0: 3, 1: 3}
    # The internal topics a transaction and a group need, at replication 3.
    _commit_one(three.bootstrap, topic, unique("tx"), b"x")
    # Both exist by now: the cluster's readiness check initialised a transactional producer
    # and described a group.
    internal = admin.list_topics(timeout=10).topics
    assert {name: {len(m.replicas) for m in internal[name].partitions.values()}
            for name in ("__transaction_state", "__consumer_offsets")} == {
        "__transaction_state": {3}, "__consumer_offsets": {3}}
    [res] = admin.describe_configs([ConfigResource(ResourceType.BROKER, "1")]).values()
    configs = res.result()
    assert configs["min.insync.replicas"].value == "2"
    assert configs["default.replication.factor"].value == "3"
    assert configs["transaction.state.log.min.isr"].value == "2"
    state = json.loads((three.data_dir / "cluster.json").read_text())
    assert [n["id"] for n in state["nodes"]] == [1, 2, 3]
    live = cluster.status(three.data_dir)
    assert live is not None and all(n.pid is not None for n in live.nodes)


def test_transactions_commit_through_the_kill_of_a_leader(three: cluster.LocalCluster) -> None:
    admin = AdminClient({"bootstrap.servers": three.bootstrap})
    topic = unique("through-kill")
    create_topics(three.bootstrap, (topic, 1))
    _commit_one(three.bootstrap, topic, unique("tx"), b"before")
    leader, _ = wait_until("the partition in sync on every node",
                           lambda: _leader(admin, topic), lambda li: li[1] == [1, 2, 3], 30)
    cluster.kill(three.data_dir, leader)
    try:
        # A new leader from the in-sync replicas; min.insync.replicas=2 still holds with two.
        wait_until("a new leader", lambda: _leader(admin, topic),
                   lambda li: li[0] not in (leader, -1) and leader not in li[1], 60)
        _commit_one(three.bootstrap, topic, unique("tx"), b"during")
        down = cluster.status(three.data_dir)
        assert down is not None and down.node(leader).pid is None
    finally:
        cluster.restart(three.data_dir, leader)
    # Back as the same member, on its own ports: it catches up and rejoins the ISR.
    wait_until("the node back in sync", lambda: _leader(admin, topic),
               lambda li: li[1] == [1, 2, 3], 90)
    _commit_one(three.bootstrap, topic, unique("tx"), b"after")
    assert _read_committed(three.bootstrap, topic, 3) == [b"before", b"during", b"after"]


def test_refusals_name_the_problem(three: cluster.LocalCluster, tmp_path: Path) -> None:
    with pytest.raises(cluster.BrokerError, match="has 3 nodes, not 1"):
        cluster.start(three.data_dir, brokers=1)
    with pytest.raises(cluster.BrokerError, match="has no node 4"):
        cluster.kill(three.data_dir, 4)
    with pytest.raises(cluster.BrokerError, match="no cluster in"):
        cluster.kill(tmp_path, 1)
    with pytest.raises(cluster.BrokerError, match="already running"):
        cluster.restart(three.data_dir, 1)


def test_the_cli_shows_and_refuses(three: cluster.LocalCluster) -> None:
    shown = cli(three.bootstrap, "kafka", "status", "--data-dir", str(three.data_dir))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == three.bootstrap
    assert [line.split()[:3] for line in lines[1:]] == [
        ["node", str(n.id), n.address] for n in three.nodes]
    assert all(line.split()[3] == "pid" for line in lines[1:])
    refused = cli(three.bootstrap, "kafka", "kill", "--data-dir", str(three.data_dir))
    assert refused.returncode == 2 and "--node" in refused.stdout + refused.stderr
    single = cli(three.bootstrap, "kafka", "restart", "--brokers", "1", "--node", "1")
    assert single.returncode == 2 and "the single broker has none" in single.stdout + single.stderr


def _internal_replication(admin: AdminClient, topics: list[str]) -> dict[str, tuple[int, str]]:
    """Per topic: replicas of each partition (one number when they agree), and where its
    min.insync.replicas comes from (``topic=N`` when set on the topic, else ``broker``)."""
    meta = admin.list_topics(timeout=10).topics
    out = {}
    for t in topics:
        counts = {len(p.replicas) for p in meta[t].partitions.values()} if t in meta else set()
        replicas = counts.pop() if len(counts) == 1 else -1  # -1: unknown yet, or mixed
        [res] = admin.describe_configs([ConfigResource(ResourceType.TOPIC, t)]).values()
        entry = res.result()["min.insync.replicas"]
        topic_level = entry.source in (ConfigSource.DYNAMIC_TOPIC_CONFIG,
                                       ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
        out[t] = (replicas, f"topic={entry.value}" if topic_level else "broker")
    return out


def test_internal_topics_take_internal_replication_factor(three: cluster.LocalCluster,
                                                          tmp_path: Path) -> None:
    admin = AdminClient({"bootstrap.servers": three.bootstrap})
    src, sink = unique("lines"), unique("counts")
    create_topics(three.bootstrap, (src, 1), (sink, 1))
    io.produce(three.bootstrap, src, [(None, b"a b a")])
    for factor, expected in ((3, (3, "topic=2")), (None, (3, "broker")), (1, (1, "broker"))):
        app_id = unique("replicas")
        with running(apps.renamed_wordcount(app_id, src, sink), three.bootstrap,
                     tmp_path / str(factor), internal_replication_factor=factor, http_port=0,
                     static_membership=False):
            assert io.wait_processed(three.bootstrap, app_id,
                                     [src, f"{app_id}-words-repartition"], 60)
        internal = [f"{app_id}-{name}" for name in
                    ("words-repartition", "word_counts-changelog", "dlq", "instances")]
        want = {t: expected for t in internal}
        assert wait_until("the internal topics in metadata",
                          lambda topics=internal: _internal_replication(admin, topics),
                          lambda got, want=want: got == want, 30) == want
    # More replicas than brokers stops the start, naming the setting.
    refused = application(apps.renamed_wordcount(unique("replicas"), src, sink),
                          load_settings(state_dir=tmp_path / "4", internal_replication_factor=4),
                          bootstrap=three.bootstrap)
    with pytest.raises(ConfigError, match=r"internal_replication_factor.*4 replicas, but the "
                       r"cluster has 3 brokers"):
        refused.run()


def test_a_fresh_cluster_whose_port_was_taken_starts_over_on_new_ports(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The race CI hit: a port picked free, bound by someone else before the node's JVM bound it.
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    taken = held.getsockname()[1]
    real, plans = cluster._plan, []

    def plan(data_dir: Path, brokers: int) -> cluster.LocalCluster:
        c = real(data_dir, brokers)
        if not plans:
            c = cluster.LocalCluster(data_dir, (replace(c.nodes[0], port=taken),))
        plans.append(c)
        return c

    monkeypatch.setattr(cluster, "_plan", plan)
    data_dir = tmp_path / "one"
    try:
        started = cluster.start(data_dir, brokers=1)
        assert len(plans) == 2 and plans[0].nodes[0].port == taken
        assert started.nodes[0].port == plans[1].nodes[0].port != taken
        assert cluster.status(data_dir) is not None
    finally:
        cluster.stop(data_dir)
        held.close()
