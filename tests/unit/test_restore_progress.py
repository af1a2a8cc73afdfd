"""Restore progress: records, bytes, rate, what remains and the ETA from the changelog's end
offset, a line every few seconds (by an injected clock), and a stall (no progress for the stall
timeout) reported naming the store instead of a silent wait. A real RocksDB store; the restore
consumer is a stand-in that serves scripted batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError
from structlog.testing import capture_logs

from streamproc import codecs
from streamproc.progress import Stalled
from streamproc.runtime.restore import Restorer
from streamproc.state.store import KeyValueStore
from streamproc.types import TaskId

TOPIC = "app-counts-changelog"


class Msg:
    def __init__(self, offset: int, key: bytes | None = None, value: bytes | None = None,
                 eof: bool = False) -> None:
        self._offset, self._key, self._value, self._eof = offset, key, value, eof

    def error(self) -> Any:
        return KafkaError(KafkaError._PARTITION_EOF) if self._eof else None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> None:
        return None


class Changelog:
    """The restore consumer: each consume() serves the next scripted batch."""

    def __init__(self, high: int) -> None:
        self.high = high
        self.batches: list[list[Msg]] = []
        self.assigned: list[tuple[str, int, int]] = []

    def consume(self, n: int, timeout: float) -> list[Msg]:
        return self.batches.pop(0) if self.batches else []

    def incremental_assign(self, tps: list[Any]) -> None:
        self.assigned += [(tp.topic, tp.partition, tp.offset) for tp in tps]

    def incremental_unassign(self, tps: list[Any]) -> None:
        pass

    def get_watermark_offsets(self, tp: Any, cached: bool = False) -> tuple[int, int]:
        assert cached, "progress must not ask the broker on every step"
        return 0, self.high

    def close(self) -> None:
        pass


class FakeTask:
    def __init__(self, store: KeyValueStore) -> None:
        self.id = TaskId(0, 0)
        self.partition = 0
        self.stores = {"counts": store}
        self.changelog_topics = {"counts": TOPIC}
        self.source_backed: dict[str, object] = {}


def records(start: int, stop: int) -> list[Msg]:
    return [Msg(o, b"%04d" % o, b"1") for o in range(start, stop)]  # 5 bytes each


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = KeyValueStore("counts", 0, tmp_path / "app" / "counts" / "0", codecs.json())
    s.open()
    yield s
    s.close()


def make(changelog: Changelog, clock: list[float]) -> Restorer:
    return Restorer({}, 1000, clock=lambda: clock[0], consumer=lambda conf: changelog,
                    every_s=5.0, stall_s=30.0)


FIELDS = {"task": "0_0", "store": "counts", "changelog": TOPIC, "partition": 0}


def test_progress_lines_carry_remaining_records_and_an_eta(store: KeyValueStore) -> None:
    changelog, clock = Changelog(high=400), [0.0]
    restorer = make(changelog, clock)
    task = FakeTask(store)
    restorer.add(task)  # type: ignore[arg-type]
    assert changelog.assigned == [(TOPIC, 0, 0)]
    with capture_logs() as logs:
        clock[0] = 2.0
        changelog.batches.append(records(0, 40))
        assert restorer.step(0.1) == []  # no line before 5 s
        clock[0] = 5.0
        changelog.batches.append(records(40, 100))
        assert restorer.step(0.1) == []
        clock[0] = 8.0
        assert restorer.step(0.1) == []  # waiting (nothing consumed), no line due
        clock[0] = 10.0
        changelog.high = 401  # the last transaction's commit marker: remaining is an upper bound
        changelog.batches.append(records(100, 250))
        assert restorer.step(0.1) == []
        clock[0] = 12.5
        changelog.batches.append([*records(250, 400), Msg(401, eof=True)])
        assert restorer.step(0.1) == [task]
    assert logs == [
        {**FIELDS, "event": "restore.progress", "log_level": "info", "records": 100,
         "bytes": 500, "seconds": 5.0, "records_per_s": 20.0, "total": 400, "remaining": 300,
         "eta_s": 15.0},
        {**FIELDS, "event": "restore.progress", "log_level": "info", "records": 250,
         "bytes": 1250, "seconds": 10.0, "records_per_s": 25.0, "total": 401, "remaining": 151,
         "eta_s": 6.0},
        {**FIELDS, "event": "restore.completed", "log_level": "info", "records": 400,
         "bytes": 2000, "seconds": 12.5, "records_per_s": 32.0, "total": 400, "from_offset": 0,
         "to_offset": 401},
    ]
    assert store.changelog_offset == 401
    assert dict(store.items()) == {b"%04d" % o: 1 for o in range(400)}
    assert (restorer.totals.records, restorer.totals.bytes, restorer.totals.seconds,
            restorer.totals.stores, restorer.totals.wall_seconds) == (400, 2000, 12.5, 1, 12.5)
    assert not restorer.active


def test_an_unknown_end_offset_gives_no_eta(store: KeyValueStore) -> None:
    changelog, clock = Changelog(high=-1001), [0.0]  # librdkafka's "not fetched yet"
    restorer = make(changelog, clock)
    restorer.add(FakeTask(store))  # type: ignore[arg-type]
    with capture_logs() as logs:
        clock[0] = 5.0
        changelog.batches.append(records(0, 10))
        restorer.step(0.1)
    assert logs == [{**FIELDS, "event": "restore.progress", "log_level": "info", "records": 10,
                     "bytes": 50, "seconds": 5.0, "records_per_s": 2.0}]


def test_a_restore_without_progress_for_the_stall_timeout_fails_naming_the_store(
        store: KeyValueStore) -> None:
    changelog, clock = Changelog(high=50), [0.0]
    restorer = make(changelog, clock)
    restorer.add(FakeTask(store))  # type: ignore[arg-type]
    clock[0] = 3.0
    changelog.batches.append(records(0, 20))
    restorer.step(0.1)
    clock[0] = 32.9  # 29.9 s without a record: still only waiting
    with capture_logs():
        restorer.step(0.1)
    clock[0] = 33.0
    with pytest.raises(Stalled) as stalled, capture_logs():
        restorer.step(0.1)
    assert str(stalled.value) == (
        f"restore of store 'counts' from {TOPIC}[0] (task 0_0) is stuck at offset 20: "
        "restore: no progress for 30 s (after 20 records, 100 bytes)")


def test_an_eof_before_an_open_transaction_is_not_the_end(store: KeyValueStore) -> None:
    """read_committed EOF at the stable offset 100 while the high watermark is 151: records
    100..149 belong to a transaction whose commit markers are still being written. The restore
    waits (one log line, not one per EOF), applies them when they become readable, and ends
    at the next EOF, at the high watermark, past the marker."""
    changelog, clock = Changelog(high=151), [0.0]
    restorer = make(changelog, clock)
    task = FakeTask(store)
    restorer.add(task)  # type: ignore[arg-type]
    with capture_logs() as logs:
        changelog.batches.append([*records(0, 100), Msg(100, eof=True)])
        assert restorer.step(0.1) == []
        changelog.batches.append([Msg(100, eof=True)])  # polled again, still open
        assert restorer.step(0.1) == []
        assert restorer.active and store.changelog_offset == 100
        changelog.batches.append([*records(100, 150), Msg(151, eof=True)])
        assert restorer.step(0.1) == [task]
    assert [e["event"] for e in logs] == ["restore.waiting_for_transaction", "restore.completed"]
    assert logs[0] == {**FIELDS, "event": "restore.waiting_for_transaction", "log_level": "info",
                       "stable_offset": 100, "high_watermark": 151}
    assert store.changelog_offset == 151
    assert dict(store.items()) == {b"%04d" % o: 1 for o in range(150)}
    assert not restorer.active


class TableTask(FakeTask):
    """A task whose store ``counts`` is a table read from the topic TOPIC (its changelog)."""

    def __init__(self, store: KeyValueStore) -> None:
        super().__init__(store)
        from streamproc.graph.nodes import SourceNode
        from streamproc.types import TopicPartition

        self.source_backed = {"counts": TopicPartition(TOPIC, 0)}
        self._source = SourceNode("counts.source", topics=(TOPIC,), key_codec=codecs.raw(),
                                  value_codec=codecs.json())

    def table_source(self, store: str) -> Any:
        return self._source


def test_a_table_restores_from_its_topic_up_to_the_committed_offset_only(
        store: KeyValueStore) -> None:
    changelog, clock = Changelog(high=10), [0.0]
    restorer = make(changelog, clock)
    task = TableTask(store)
    restorer.add(task, {"counts": 6})  # type: ignore[arg-type]
    assert changelog.assigned == [(TOPIC, 0, 0)]
    changelog.batches.append([
        Msg(0, b"a", b"1"), Msg(1, b"b", b"{bad json"),  # refused by the source: skipped
        Msg(2, None, b"3"),  # no key: not a row
        Msg(3, b"c", b" 4"),  # kept as written (not re-encoded)
        Msg(4, b"a", None),  # a tombstone
        Msg(5, b"d", b"6"), Msg(6, b"e", b"7"), Msg(7, b"f", b"8")])  # past the commit
    assert restorer.step(0.1) == [task]
    assert dict(store.db.items()) == {b"c": b" 4", b"d": b"6"}
    assert store.changelog_offset == 6
    assert not restorer.active


def test_a_table_at_its_committed_offset_restores_nothing(store: KeyValueStore) -> None:
    store.commit([(b"a", b"1")], 6)
    changelog = Changelog(high=10)
    restorer = make(changelog, [0.0])
    restorer.add(TableTask(store), {"counts": 6})  # type: ignore[arg-type]
    assert changelog.assigned == [] and not restorer.active


def test_a_table_ahead_of_the_committed_offset_is_rebuilt(store: KeyValueStore) -> None:
    # Rows past the group's offset (offsets reset): they must not meet the replayed stream.
    store.commit([(b"a", b"1"), (b"z", b"26")], 8)
    changelog = Changelog(high=10)
    restorer = make(changelog, [0.0])
    task = TableTask(store)
    with capture_logs() as logs:
        restorer.add(task, {"counts": 2})  # type: ignore[arg-type]
    assert [e["event"] for e in logs][:1] == ["restore.table_ahead_of_offsets_wiped"]
    assert changelog.assigned == [(TOPIC, 0, 0)]
    changelog.batches.append([Msg(0, b"a", b"1"), Msg(1, b"b", b"2"), Msg(2, b"c", b"3")])
    assert restorer.step(0.1) == [task]
    assert dict(store.db.items()) == {b"a": b"1", b"b": b"2"}
    assert store.changelog_offset == 2


def test_a_table_without_a_committed_offset_starts_empty(store: KeyValueStore) -> None:
    changelog = Changelog(high=10)
    restorer = make(changelog, [0.0])
    restorer.add(TableTask(store), {})  # type: ignore[arg-type]
    assert changelog.assigned == [] and not restorer.active
    assert dict(store.db.items()) == {}


def test_a_table_restore_ends_at_an_eof_at_its_committed_offset(store: KeyValueStore) -> None:
    # The committed offset sits past a transaction marker: the last record is at 3, the EOF
    # (the position after the marker) at 5 = the committed offset.
    changelog = Changelog(high=5)
    restorer = make(changelog, [0.0])
    task = TableTask(store)
    restorer.add(task, {"counts": 5})  # type: ignore[arg-type]
    changelog.batches.append([Msg(2, b"a", b"1"), Msg(3, b"b", b"2")])
    assert restorer.step(0.1) == []
    assert store.changelog_offset == 4
    changelog.batches.append([Msg(5, eof=True)])
    assert restorer.step(0.1) == [task]
    assert store.changelog_offset == 5
    assert dict(store.db.items()) == {b"a": b"1", b"b": b"2"}
