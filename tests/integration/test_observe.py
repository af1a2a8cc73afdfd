"""The runtime's observation seam (runtime/observe.py) on a real broker: a listener handed to the
Application sees every lifecycle event, in order, on the loop's thread, and its samples agree
with what the broker holds."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from streamproc import Topology
from streamproc.config import load_settings
from streamproc.kafka import io
from streamproc.kafka.clients import new_admin
from streamproc.ops.reset import active_members
from streamproc.runtime.app import Application
from streamproc.runtime.observe import CheckpointDone, InstanceView, LoopSample
from streamproc.service import application
from streamproc.time.watermarks import CONTROL_HEADER
from streamproc.types import TaskId, TopicPartition
from tests import apps
from tests.harness import TEST_SETTINGS, create_topics, running, unique
from tests.ops_client import wait_until

pytestmark = pytest.mark.kafka

LINES = ["a b", "b c c", "a", "d d d d", "b"]


class Recorder:
    """An InstanceListener that writes everything down."""

    def __init__(self, fail_start: bool = False) -> None:
        self.fail_start = fail_start
        self.events: list[tuple[Any, ...]] = []
        self.threads: set[int] = set()
        self.view: InstanceView | None = None
        self.at_stopping: LoopSample | None = None
        self.at_stopped: LoopSample | None = None

    def _event(self, *what: Any) -> None:
        self.threads.add(threading.get_ident())
        self.events.append(what)

    def producer_config(self, conf: dict[str, Any]) -> dict[str, Any]:
        self._event("producer_config")
        return conf

    def started(self, view: InstanceView, instance_id: str) -> None:
        self.view = view
        self._event("started", instance_id)
        if self.fail_start:
            raise RuntimeError("this listener cannot serve")

    def tick(self, now: float) -> None:
        self.threads.add(threading.get_ident())

    def assigned(self, partitions: Sequence[TopicPartition], new_tasks: Sequence[TaskId]) -> None:
        self._event("assigned", list(partitions), list(new_tasks))

    def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        self._event("revoked", list(partitions))

    def lost(self, partitions: Sequence[TopicPartition]) -> None:
        self._event("lost", list(partitions))

    def restored(self, task: TaskId) -> None:
        self._event("restored", task)

    def checkpointed(self, done: CheckpointDone) -> None:
        self._event("checkpointed", done)

    def stopping(self, failure: BaseException | None) -> None:
        self._event("stopping", failure)
        if self.view is not None:
            self.at_stopping = self.view.sample(stores=True)

    def stopped(self, failure: BaseException | None) -> None:
        self._event("stopped", failure)
        if self.view is not None:
            self.at_stopped = self.view.sample()


def _kinds(rec: Recorder) -> list[str]:
    return [e[0] for e in rec.events]


def _start(topology: Topology, kafka: str, state_dir: Path,
           rec: Recorder) -> tuple[Application, threading.Thread, list[int]]:
    """Run an instance with ``rec`` listening, in a thread (its exit code goes in the list)."""
    app = application(topology, load_settings(**{**TEST_SETTINGS, "state_dir": state_dir,
                                                 "static_membership": False}),
                      bootstrap=kafka, listeners=[rec])
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(app.run()), daemon=True)
    thread.start()
    return app, thread, result


def test_a_listener_sees_the_whole_life_of_an_instance(kafka: str, tmp_path: Path) -> None:
    app_id, src, sink = unique("observe"), unique("lines"), unique("counts")
    create_topics(kafka, (src, 2), (sink, 2))
    io.produce(kafka, src, [(f"k{i}".encode(), line.encode()) for i, line in enumerate(LINES)])
    rec = Recorder()
    app, thread, result = _start(apps.renamed_wordcount(app_id, src, sink), kafka, tmp_path, rec)
    repartition = f"{app_id}-words-repartition"
    assert io.wait_processed(kafka, app_id, [src, repartition], 60)
    app.stop()
    thread.join(60)
    assert result == [0]

    kinds = _kinds(rec)
    assert kinds[:2] == ["producer_config", "started"]
    assert kinds[-1] == "stopped" and rec.events[-1][1] is None
    # Stopping: the final checkpoint (if anything was left to commit), then the revoke of
    # closing the consumer, then stopped.
    tail = kinds[kinds.index("stopping"):]
    assert tail in (["stopping", "revoked", "stopped"],
                    ["stopping", "checkpointed", "revoked", "stopped"])
    assert "lost" not in kinds
    # Every event came from the thread that ran the loop.
    assert rec.threads == {thread.ident}

    every_partition = {TopicPartition(t, p) for t in (src, repartition) for p in (0, 1)}
    every_task = {TaskId(s, p) for s in (0, 1) for p in (0, 1)}
    assigned = [e for e in rec.events if e[0] == "assigned"]
    assert {tp for e in assigned for tp in e[1]} == every_partition
    assert sorted(t for e in assigned for t in e[2]) == sorted(every_task)
    # Each task runs once (nothing failed): after the assignment that created it.
    restored = [(i, e[1]) for i, e in enumerate(rec.events) if e[0] == "restored"]
    assert sorted(t for _, t in restored) == sorted(every_task)
    for i, task in restored:
        created = next(j for j, e in enumerate(rec.events) if e[0] == "assigned" and task in e[2])
        assert created < i

    # Each committed changelog record was counted by exactly one checkpoint event.
    done = [e[1] for e in rec.events if e[0] == "checkpointed"]
    assert len(done) == app.checkpoints
    assert {d.reason for d in done} <= {"interval", "shutdown"}
    changelog = io.read_all(kafka, f"{app_id}-word_counts-changelog")
    assert sum(d.changelog_records for d in done) == len(changelog)
    assert sum(d.changelog_bytes for d in done) == sum(
        len(r.key or b"") + len(r.value or b"") for r in changelog)

    final = rec.at_stopping
    assert final is not None and final.live and final.joined
    # The lines, then every record of the repartition topic: a word each, and the watermark
    # control records the upstream tasks sent with their checkpoints.
    repartitioned = io.read_all(kafka, repartition)
    words = sum(len(line.split()) for line in LINES)
    assert len([r for r in repartitioned if CONTROL_HEADER not in r.headers]) == words
    assert final.processed == len(LINES) + len(repartitioned)
    assert {t.id for t in final.tasks} == {str(t) for t in every_task}
    assert {t.state for t in final.tasks} == {"running"}
    assert {(p.topic, p.partition) for p in final.partitions} == every_partition
    source_lag = {p.partition: p.lag for p in final.partitions if p.topic == src}
    assert source_lag == {0: 0, 1: 0}
    assert final.stores is not None
    assert sorted((s.store, s.partition) for s in final.stores) == [("word_counts", 0),
                                                                    ("word_counts", 1)]
    consumed = sum(v for (name, _), v in final.counters.items()
                   if name == "records_consumed_total")
    assert consumed == final.processed == app.processed
    # Once stopped, nothing is asked of the clients: the counts remain.
    after = rec.at_stopped
    assert after is not None and not after.live
    assert after.processed == final.processed and after.produced is None
    assert after.partitions == () and after.tasks == ()


def test_a_listener_that_cannot_start_fails_the_start(kafka: str, tmp_path: Path) -> None:
    app_id, src, sink = unique("observe-fail"), unique("lines"), unique("counts")
    create_topics(kafka, (src, 1), (sink, 1))
    rec = Recorder(fail_start=True)
    topology = apps.renamed_wordcount(app_id, src, sink)
    app = application(topology, load_settings(**{**TEST_SETTINGS, "state_dir": tmp_path}),
                      bootstrap=kafka, listeners=[rec])
    with pytest.raises(RuntimeError, match="this listener cannot serve"):
        app.run()
    assert _kinds(rec) == ["producer_config", "started", "stopping", "stopped"]
    failure = rec.events[2][1]
    assert isinstance(failure, RuntimeError) and rec.events[3][1] is failure
    # Everything it had taken was released: the same state dir starts again at once.
    with running(topology, kafka, tmp_path) as again:
        assert again.failure is None


class JoinRace(Recorder):
    """Holds the loop in ``started`` until the broker lists this instance as a member of its
    group: librdkafka's own thread joins while the loop has not yet handled (or paused) what
    it was given."""

    def __init__(self, kafka: str, app_id: str) -> None:
        super().__init__()
        self.kafka, self.app_id = kafka, app_id
        self.members: list[str] = []
        self.before_assignment: LoopSample | None = None

    def started(self, view: InstanceView, instance_id: str) -> None:
        super().started(view, instance_id)
        admin = new_admin(io.client_base(self.kafka))
        self.members = wait_until("the broker to list the member",
                                  lambda: active_members(admin, self.app_id, 10),
                                  lambda m: len(m) == 1 and not m[0].startswith("("), 30)
        self.before_assignment = view.sample()


def test_joined_means_the_first_assignment_was_handled(kafka: str, tmp_path: Path) -> None:
    # /readyz is "running, joined, every task restored": an instance that counted as joined
    # before its assignment was handled had no tasks yet, so it was ready with every store
    # still to restore (seen under load in test_http).
    app_id, src, sink = unique("observe-join"), unique("lines"), unique("counts")
    create_topics(kafka, (src, 1), (sink, 1))
    rec = JoinRace(kafka, app_id)
    app, thread, result = _start(apps.renamed_wordcount(app_id, src, sink), kafka, tmp_path, rec)
    wait_until("the tasks to run", lambda: [e for e in rec.events if e[0] == "restored"],
               lambda r: len(r) == 2, 60)
    app.stop()
    thread.join(60)
    assert result == [0]
    before = rec.before_assignment
    assert rec.members and before is not None
    assert before.live and not before.joined and before.tasks == ()
    assert rec.at_stopping is not None and rec.at_stopping.joined
