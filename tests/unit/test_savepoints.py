"""Savepoint files, manifests, rewrites and the rules that map a savepoint onto a topology."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from confluent_kafka import KafkaError
from structlog.testing import capture_logs

from streamproc import cli
from streamproc.graph.compile import compile_topology
from streamproc.progress import Progress, Stalled
from streamproc.savepoints.apply import _seed
from streamproc.savepoints.create import _drain
from streamproc.savepoints.format import (
    InflightInfo,
    Manifest,
    SavedRecord,
    Savepoint,
    SavepointError,
    StoreInfo,
    fresh_dir,
    inflight_file,
    publish,
    read_records,
    store_file,
    write_records,
)
from streamproc.savepoints.inspect import describe
from streamproc.savepoints.topology import fingerprint, map_savepoint
from tests.apps import renamed_wordcount
from topologies import wordcount

RECORDS = [
    SavedRecord(b"k1", b"v1", 5, (("h", b"x"), ("n", None))),
    SavedRecord(None, b"no key", -1),
    SavedRecord(b"tomb", None),
    SavedRecord(b"", b""),
]


def _make(root: Path, *, app: str = "wc", counts: dict[int, dict[str, int]] | None = None,
          inflight: dict[int, list[str]] | None = None) -> Savepoint:
    """A savepoint of topologies.wordcount with these counts and in-flight words."""
    counts = counts if counts is not None else {0: {"a": 2, "b": 1}, 1: {"c": 7}}
    inflight = inflight if inflight is not None else {0: ["a"], 1: []}
    tmp = fresh_dir(root)
    store = StoreInfo(subtopology=1, codec="json", changelog="counts-changelog", partitions=2)
    for p, kv in counts.items():
        store.files[p] = write_records(store_file(tmp, "counts", p), [
            SavedRecord(k.encode(), orjson.dumps(v)) for k, v in sorted(kv.items())])
    flight = InflightInfo(partitions=2)
    for p, words in inflight.items():
        flight.ranges[p] = (10, 10 + len(words))
        flight.files[p] = write_records(inflight_file(tmp, "words-repartition", p), [
            SavedRecord(w.encode(), w.encode(), 1000 + i) for i, w in enumerate(words)])
    manifest = Manifest(
        id="sp1", application_id=app, topology="topologies.wordcount", fingerprint=fingerprint(
            compile_topology(wordcount.build(app))), created_at_ms=1_700_000_000_000,
        tasks={0: 2, 1: 2}, source_offsets={"text-lines": {0: 12, 1: None}},
        stores={"counts": store}, inflight={"words-repartition": flight}, watermarks={})
    return publish(tmp, root, manifest)


def test_records_round_trip_with_nulls_headers_and_empty_bytes(tmp_path: Path) -> None:
    info = write_records(tmp_path / "r.records", RECORDS)
    assert info.records == 4 and info.bytes == (tmp_path / "r.records").stat().st_size
    assert list(read_records(tmp_path / "r.records")) == RECORDS
    assert write_records(tmp_path / "empty.records", []).records == 0
    assert list(read_records(tmp_path / "empty.records")) == []


def test_truncated_or_foreign_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.records"
    write_records(path, RECORDS)
    whole = path.read_bytes()
    path.write_bytes(whole[:-3])  # the last record, (b"", b""), is its 18-byte header only
    with pytest.raises(SavepointError) as err:
        list(read_records(path))
    assert str(err.value) == (f"savepoint file {path} is truncated: record 3 (at byte "
                              f"{len(whole) - 18}) is cut off after 15 bytes")
    path.write_bytes(b"hello")
    with pytest.raises(SavepointError) as err:
        list(read_records(path))
    assert str(err.value) == f"{path} is not a savepoint records file"


def test_manifest_round_trips_and_verify_catches_a_changed_file(tmp_path: Path) -> None:
    sp = _make(tmp_path / "sp")
    again = Savepoint.open(tmp_path / "sp")
    assert again.manifest == sp.manifest
    again.verify()
    assert dict(again.store("counts").items(key=None, value=None)) == {
        b"a": b"2", b"b": b"1", b"c": b"7"}
    assert again.store("counts").get(b"c") == b"7" and again.store("counts").get(b"z") is None
    assert [r.key for r in again.inflight("words-repartition", 0)] == [b"a"]
    f = store_file(tmp_path / "sp", "counts", 1)
    f.write_bytes(f.read_bytes().replace(b"7", b"8"))
    with pytest.raises(SavepointError, match="does not match its checksum"):
        again.verify()


def test_manifest_problems_are_named(tmp_path: Path) -> None:
    with pytest.raises(SavepointError) as err:
        Savepoint.open(tmp_path / "nothing")
    assert str(err.value) == (f"cannot read the savepoint at {tmp_path / 'nothing'}: No such "
                              f"file or directory ({tmp_path / 'nothing' / 'manifest.json'})")
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(b'{"format": "streamproc-savepoint", "version": 9}')
    with pytest.raises(SavepointError) as err:
        Savepoint.open(tmp_path)
    assert str(err.value) == (f"{manifest}: savepoint format version 9 is not supported (this "
                              "streamproc reads version 1)")
    manifest.write_bytes(b'{"format": "streamproc-savepoint", "version": 1}')
    with pytest.raises(SavepointError) as err:
        Savepoint.open(tmp_path)
    assert str(err.value) == (f"{manifest} is not a valid savepoint manifest: field 'id' is "
                              "missing")


def test_savepoints_are_never_overwritten(tmp_path: Path) -> None:
    _make(tmp_path / "sp")
    with pytest.raises(SavepointError, match="already exists and is not empty"):
        _make(tmp_path / "sp")


def test_rewrite_drops_renames_and_transforms(tmp_path: Path) -> None:
    sp = _make(tmp_path / "sp")

    def double(_key: bytes, value: bytes) -> bytes | None:
        n = orjson.loads(value)
        return None if n == 1 else orjson.dumps(n * 2)  # and drop the keys counted once

    new = sp.rewrite(tmp_path / "sp2", rename={"counts": "word_counts"},
                     transform={"counts": double})
    assert new.manifest.id != sp.manifest.id
    assert new.stores == ["word_counts"]
    assert dict(new.store("word_counts").items()) == {b"a": b"4", b"c": b"14"}
    assert new.manifest.inflight == sp.manifest.inflight
    assert new.manifest.source_offsets == sp.manifest.source_offsets
    Savepoint.open(tmp_path / "sp2").verify()
    assert sp.rewrite(tmp_path / "sp3", drop=["counts"]).stores == []
    with pytest.raises(SavepointError) as err:
        sp.rewrite(tmp_path / "sp4", drop=["nope"])
    assert str(err.value) == ("rewrite names stores the savepoint does not have: ['nope'] (it "
                              "has ['counts'])")


def test_map_onto_the_same_graph_under_a_new_id(tmp_path: Path) -> None:
    sp = _make(tmp_path / "sp")
    m = map_savepoint(sp.manifest, compile_topology(wordcount.build("wc2")), {0: 2, 1: 2}, [])
    assert m.same_topology
    assert m.stores == {"counts": ("counts", "wc2-counts-changelog")}
    assert m.inflight == {"words-repartition": "wc2-words-repartition"}
    assert m.topic_renames == {"wc-words-repartition": "wc2-words-repartition"}
    assert m.offsets == {"text-lines": {0: 12}}  # no committed offset: none is set
    assert m.dropped == [] and m.new_stores == [] and m.ignored_sources == []


def test_a_renamed_store_is_refused_unless_dropped(tmp_path: Path) -> None:
    sp = _make(tmp_path / "sp")
    compiled = compile_topology(renamed_wordcount("wc2", "other-lines", "out"))
    with pytest.raises(SavepointError) as err:
        map_savepoint(sp.manifest, compiled, {0: 2, 1: 2}, [])
    assert str(err.value) == (
        "cannot start 'wc2' from savepoint sp1 (of 'wc'): store 'counts' (3 keys) has no store "
        "of that name in 'wc2' (its stores: ['word_counts']): it was removed or renamed. Keep "
        "the name, rename it in the savepoint (Savepoint.rewrite(rename=...)), or drop its "
        "state with savepoint_drop=counts")
    m = map_savepoint(sp.manifest, compiled, {0: 2, 1: 2}, ["counts"])
    assert m.dropped == ["counts"] and m.new_stores == ["word_counts"]
    assert not m.same_topology
    assert m.ignored_sources == ["text-lines"]  # it reads another topic now
    with pytest.raises(SavepointError, match=r"savepoint_drop names \['countz'\]"):
        map_savepoint(sp.manifest, compiled, {0: 2, 1: 2}, ["counts", "countz"])


def test_partition_counts_must_match(tmp_path: Path) -> None:
    sp = _make(tmp_path / "sp")
    with pytest.raises(SavepointError) as err:
        map_savepoint(sp.manifest, compile_topology(wordcount.build("wc2")), {0: 2, 1: 4}, [])
    assert "store 'counts' has 2 partitions in the savepoint but 4 in 'wc2'" in str(err.value)
    assert "repartition topic 'words-repartition' has 2 partitions" in str(err.value)


def test_in_flight_records_need_somewhere_to_go(tmp_path: Path) -> None:
    sp = _make(tmp_path / "sp")
    # A keyed count straight from the source: no repartition topic at all.
    from streamproc import Topology, codecs

    t = Topology("kc")
    t.source("text-lines", key=codecs.string()).group_by_key().count(store="counts").to("o")
    compiled = compile_topology(t)
    with pytest.raises(SavepointError, match="holds 1 records not yet processed"):
        map_savepoint(sp.manifest, compiled, {0: 2}, [])
    m = map_savepoint(sp.manifest, compiled, {0: 2}, ["words-repartition"])
    assert m.inflight == {} and m.dropped == ["words-repartition"]
    # Nothing in flight: nothing to refuse.
    empty = _make(tmp_path / "sp2", inflight={0: [], 1: []})
    assert map_savepoint(empty.manifest, compiled, {0: 2}, []).inflight == {}


def test_inspect_describes_everything(tmp_path: Path) -> None:
    sp = _make(tmp_path / "sp")
    text = describe(sp)
    assert text == (
        f"Savepoint sp1 (format 1) at {tmp_path / 'sp'}\n"
        "  application 'wc', topology topologies.wordcount\n"
        f"  created 2023-11-14T22:13:20.000Z, topology fingerprint "
        f"{sp.manifest.fingerprint[:16]}\n"
        "  tasks per sub-topology: 0: 2, 1: 2\n"
        "Source offsets (committed):\n"
        "  text-lines: [0] 12, [1] none\n"
        "Stores:\n"
        f"  counts: 3 keys, {sum(f.bytes for f in sp.manifest.stores['counts'].files.values())}"
        " bytes, 2 partitions, codec json, sub-topology 1\n"
        "In-flight repartition records:\n"
        "  words-repartition: 1 records\n")


# -- long operations: progress lines, and a deadline that follows progress -------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeError:
    def __init__(self, code: int, text: str) -> None:
        self._code, self.text = code, text

    def code(self) -> int:
        return self._code

    def __str__(self) -> str:
        return self.text


class FakeMessage:
    def __init__(self, partition: int, offset: int = 0, key: bytes | None = b"k",
                 value: bytes | None = b"v", error: FakeError | None = None) -> None:
        self._partition, self._offset, self._key, self._value = partition, offset, key, value
        self._error = error

    def error(self) -> FakeError | None:
        return self._error

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value


def _eof(partition: int, offset: int) -> FakeMessage:
    return FakeMessage(partition, offset, error=FakeError(KafkaError._PARTITION_EOF, "end"))


class FakeConsumer:
    """Returns the scripted batches in turn, then nothing; each consume() takes 10 s.
    ``high``: each partition's high watermark (unknown when absent)."""

    def __init__(self, clock: FakeClock, batches: list[list[FakeMessage]],
                 high: dict[int, int] | None = None) -> None:
        self.clock, self.batches, self.high = clock, batches, high or {}

    def consume(self, _n: int, _timeout: float) -> list[FakeMessage]:
        self.clock.now += 10
        return self.batches.pop(0) if self.batches else []

    def get_watermark_offsets(self, tp: Any, cached: bool = False) -> tuple[int, int]:
        assert cached, "no broker call per EOF"
        return 0, self.high.get(tp.partition, -1001)


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    config = structlog.get_config()
    # Whatever an earlier test configured: info lines must get through.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    with capture_logs() as captured:
        yield captured
    structlog.configure(**config)


def _lines(logged: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k not in ("event", "log_level")}
            for e in logged if e["event"] == event]


def test_a_long_changelog_read_goes_on_while_records_come(
        logged: list[dict[str, Any]]) -> None:
    """110 s of reading with a stall timeout of 25 s: it never waits 25 s for a record, so it
    runs to the end, logging a line every 30 s with what is left (partition 1 is compacted:
    its 10 offsets hold 5 records, so the total shrinks when it ends)."""
    clock = FakeClock()
    batches = [[FakeMessage(0, i)] for i in range(10)]
    batches.append([FakeMessage(1, o) for o in (0, 2, 4, 6, 8)] + [_eof(0, 10), _eof(1, 10)])
    ends = {("t", 0): 10, ("t", 1): 10}
    progress = Progress("savepoint.create", total=20, every_s=30, stall_s=25, clock=clock,
                        app="wc")
    got = list(_drain(FakeConsumer(clock, batches, {0: 10, 1: 10}), "t", [0, 1], progress,
                      ends, dict(ends)))
    assert [(m.partition(), m.offset()) for m in got] == [
        *((0, i) for i in range(10)), *((1, o) for o in (0, 2, 4, 6, 8))]
    assert progress.done() == {"app": "wc", "records": 15, "bytes": 30, "seconds": 110.0,
                               "records_per_s": 0.1, "total": 15}
    line = {"app": "wc", "records_per_s": 0.1, "total": 20}
    assert _lines(logged, "savepoint.create.progress") == [
        {**line, "records": 3, "bytes": 6, "seconds": 30.0, "remaining": 17, "eta_s": 170.0},
        {**line, "records": 6, "bytes": 12, "seconds": 60.0, "remaining": 14, "eta_s": 140.0},
        {**line, "records": 9, "bytes": 18, "seconds": 90.0, "remaining": 11, "eta_s": 110.0}]
    assert _lines(logged, "savepoint.create.completed") == [
        {"app": "wc", "records": 15, "bytes": 30, "seconds": 110.0, "records_per_s": 0.1,
         "total": 15}]


def test_an_eof_before_an_open_transaction_does_not_end_the_read() -> None:
    """EOF at the stable offset 5 while the high watermark is 8: records 5 and 6 are a commit
    whose marker (7) is still being written. The read goes on and ends at the next EOF, with
    them: a savepoint taken right after a stop holds the last checkpoint's state."""
    clock = FakeClock()
    batches = [[*(FakeMessage(0, o) for o in range(5)), _eof(0, 5)], [_eof(0, 5)],
               [FakeMessage(0, 5), FakeMessage(0, 6), _eof(0, 8)]]
    progress = Progress("savepoint.create", total=8, stall_s=60, clock=clock)
    got = list(_drain(FakeConsumer(clock, batches, {0: 8}), "t", [0], progress, {("t", 0): 8},
                      {("t", 0): 8}))
    assert [m.offset() for m in got] == [0, 1, 2, 3, 4, 5, 6]


def test_a_changelog_read_that_gets_nowhere_fails_naming_the_partitions() -> None:
    clock = FakeClock()
    not_leader = FakeError(KafkaError.NOT_LEADER_FOR_PARTITION, "Broker: Not leader")
    batches = [[FakeMessage(0, i)] for i in range(3)] + [[FakeMessage(0, error=not_leader)]]
    progress = Progress("savepoint.create", total=100, stall_s=25, clock=clock)
    got: list[Any] = []
    with pytest.raises(Stalled) as err:
        got.extend(_drain(FakeConsumer(clock, batches), "t", [0], progress, {("t", 0): 100},
                          {("t", 0): 100}))
    assert str(err.value) == (
        "savepoint.create: no progress for 25 s (after 3 records, 6 bytes): t partitions [0] "
        "did not reach their end (an open transaction keeps read_committed readers from it: is "
        "an instance still running? Last error: Broker: Not leader. --stall-timeout sets how "
        "long to wait)")
    assert len(got) == 3 and clock.now == 60  # 30 s after the last record, not before


class FakeProducer:
    """Queues what is produced; each flush() takes 10 s and acknowledges one record (none
    once ``acks`` records were acknowledged)."""

    def __init__(self, clock: FakeClock, acks: int | None = None) -> None:
        self.clock, self.acks = clock, acks
        self.queue: list[tuple[str, FakeMessage, Any]] = []
        self.acked: list[tuple[str, int, bytes | None, bytes | None]] = []
        self.offsets: list[tuple[str, int, int, str]] = []
        self.committed = False

    def begin_transaction(self) -> None:
        pass

    def produce(self, topic: str, value: bytes | None, key: bytes | None, partition: int, *,
                on_delivery: Any, timestamp: int = 0, headers: Any = None) -> None:
        self.queue.append((topic, FakeMessage(partition, key=key, value=value), on_delivery))

    def poll(self, timeout: float) -> int:
        self.clock.now += timeout
        return 0

    def flush(self, _timeout: float) -> int:
        self.clock.now += 10
        if self.queue and (self.acks is None or len(self.acked) < self.acks):
            topic, msg, delivered = self.queue.pop(0)
            self.acked.append((topic, msg.partition(), msg.key(), msg.value()))
            delivered(None, msg)
        return len(self.queue)

    def send_offsets_to_transaction(self, offsets: list[Any], _meta: Any, _t: float) -> None:
        self.offsets = [(tp.topic, tp.partition, tp.offset, tp.metadata) for tp in offsets]

    def commit_transaction(self, _timeout: float) -> None:
        self.committed = True


class FakeGroup:
    def consumer_group_metadata(self) -> str:
        return "group"


def _seed_with(tmp_path: Path, producer: FakeProducer, clock: FakeClock) -> int:
    sp = _make(tmp_path / "sp")
    mapping = map_savepoint(sp.manifest, compile_topology(wordcount.build("wc2")), {0: 2, 1: 2},
                            [])
    progress = Progress("savepoint.seed", total=4, every_s=30, stall_s=25, clock=clock,
                        app="wc2", savepoint="sp1")
    return _seed(producer, sp, mapping, FakeGroup(),
                 {("wc2-words-repartition", 0): 0, ("wc2-words-repartition", 1): 0}, {},
                 "streamproc-savepoint=sp1", 5.0, progress)


def test_the_seed_goes_on_while_the_brokers_acknowledge(
        tmp_path: Path, logged: list[dict[str, Any]]) -> None:
    clock = FakeClock()
    producer = FakeProducer(clock)
    assert _seed_with(tmp_path, producer, clock) == 4
    assert producer.acked == [("wc2-counts-changelog", 0, b"a", b"2"),
                              ("wc2-counts-changelog", 0, b"b", b"1"),
                              ("wc2-counts-changelog", 1, b"c", b"7"),
                              ("wc2-words-repartition", 0, b"a", b"a")]
    marker = "streamproc-savepoint=sp1"
    assert producer.offsets == [("text-lines", 0, 12, marker),
                                ("wc2-words-repartition", 0, 0, marker),
                                ("wc2-words-repartition", 1, 0, marker)]
    assert producer.committed
    assert _lines(logged, "savepoint.seed.progress") == [
        {"app": "wc2", "savepoint": "sp1", "records": 3, "bytes": 6, "seconds": 30.0,
         "records_per_s": 0.1, "total": 4, "remaining": 1, "eta_s": 10.0}]


def test_a_seed_the_brokers_stop_acknowledging_fails_uncommitted(tmp_path: Path) -> None:
    clock = FakeClock()
    producer = FakeProducer(clock, acks=2)
    with pytest.raises(Stalled) as err:
        _seed_with(tmp_path, producer, clock)
    assert str(err.value) == (
        "savepoint.seed: no progress for 25 s (after 2 records, 4 bytes): the brokers stopped "
        "acknowledging the seed's records (nothing of it is visible; a restart tries again)")
    assert not producer.committed and clock.now == 50




CREATE = ["savepoint", "create", "--app", "wordcount", "--topology", "topologies.wordcount",
          "--brokers", "localhost:1"]


@pytest.mark.usefixtures("restore_logging")
def test_savepoint_create_reports_a_stall_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    given: dict[str, Any] = {}

    def stalled(*_args: Any, **kwargs: Any) -> None:
        given.update(kwargs)
        raise Stalled("savepoint.create: no progress for 7 s (after 5 records, 10 bytes)")

    monkeypatch.setattr("streamproc.savepoints.create.create", stalled)
    assert cli.main([*CREATE, "--to", str(tmp_path / "sp"), "--stall-timeout", "7"]) == 2
    assert capsys.readouterr() == ("", "streamproc: savepoint create: savepoint.create: no "
                                   "progress for 7 s (after 5 records, 10 bytes)\n")
    assert given["stall_s"] == 7.0
    assert cli.main([*CREATE, "--to", str(tmp_path / "sp"), "--stall-timeout", "0"]) == 2
    assert capsys.readouterr() == ("", "streamproc: savepoint create: invalid setting "
                                   "'--stall-timeout': must be more than 0 seconds, not 0.0\n")
