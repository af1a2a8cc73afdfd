"""A restarted static member rejoins the group once after its first assignment.

Why (streamproc/runtime/loop.py, ``rejoin_once``): a static member that restarts is handed,
without a rebalance, the assignment stored for its previous incarnation. Under the cooperative
protocol that assignment can lack partitions the leader withheld from the previous incarnation
until it revoked them, and only that (dead) incarnation would have asked for the follow-up
rebalance that hands them on. The fault suite (reliability/, scenario rotation) once ended
with two repartition partitions owned by no member for minutes, its input fully consumed and
two window tasks idle. The exact interleaving of kills that leads there is not reproduced
here; this test checks the remedy: the restarted member rejoins, the group ends with every
partition owned, and the counts stay exact.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streamproc.kafka import io
from tests.harness import AppProcess, create_topics, unique, wait_event

pytestmark = [pytest.mark.kafka, pytest.mark.crash]

PARTITIONS = 6


def _assigned(admin: AdminClient, group: str, topic: str) -> dict[str, list[int]]:
    """group.instance.id -> the partitions of ``topic`` the group assigns it now (nothing
    while the group is rebalancing or not there yet)."""
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
    except (KafkaException, TimeoutError):
        return {}
    return {m.group_instance_id: sorted(tp.partition for tp in m.assignment.topic_partitions
                                        if tp.topic == topic) for m in desc.members}


def _wait_owned(admin: AdminClient, group: str, topic: str, members: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        now = _assigned(admin, group, topic)
        held = sorted(p for parts in now.values() for p in parts)
        if held == list(range(PARTITIONS)) and len(now) == members:
            return
        assert time.monotonic() < deadline, f"not every partition owned within 60 s: {now}"
        time.sleep(0.3)


def test_a_restarted_static_member_rejoins_and_every_partition_is_owned(
        kafka: str, tmp_path: Path) -> None:
    app_id, src, out = unique("rejoin"), unique("rejoin-in"), unique("rejoin-out")
    create_topics(kafka, (src, PARTITIONS), (out, PARTITIONS))
    env = {"T_APP": app_id, "T_IN": src, "T_OUT": out}
    a, b = (AppProcess("tests.apps:keyed_counts", kafka, tmp_path / n, tmp_path / f"{n}.log",
                       env, instance_id=n) for n in ("a", "b"))
    admin = AdminClient({"bootstrap.servers": kafka})
    a.start()
    b.start()
    wait_event(a, "rebalance.rejoin", 60)
    io.produce(kafka, src, [(f"k{i}".encode(), b"x") for i in range(60)])
    _wait_owned(admin, app_id, src, 2)
    assert io.wait_processed(kafka, app_id, [src], timeout_s=60)
    b.kill9()
    before = len(b.log_text())
    b.start()  # within the session: it takes its previous incarnation's place
    rejoined = wait_event(b, "rebalance.rejoin", 60, after=before)
    assert rejoined[0]["reason"] == "first assignment of a static member"
    _wait_owned(admin, app_id, src, 2)
    io.produce(kafka, src, [(f"k{i}".encode(), b"x") for i in range(60)])
    assert io.wait_processed(kafka, app_id, [src], timeout_s=60)
    assert a.terminate() == 0 and b.terminate() == 0
    last = {}
    for r in io.read_all(kafka, out):
        last[(r.key or b"").decode()] = int(r.value or b"0")
    assert last == {f"k{i}": 2 for i in range(60)}
