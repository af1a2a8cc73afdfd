"""Savepoint files, manifests, rewrites and the rules that map a savepoint onto a topology."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streamproc.graph.compile import compile_topology
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
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(SavepointError, match="truncated"):
        list(read_records(path))
    path.write_bytes(b"hello")
    with pytest.raises(SavepointError, match="not a savepoint records file"):
        list(read_records(path))


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
    with pytest.raises(SavepointError, match="cannot read the savepoint"):
        Savepoint.open(tmp_path / "nothing")
    (tmp_path / "manifest.json").write_bytes(b'{"format": "streamproc-savepoint", "version": 9}')
    with pytest.raises(SavepointError, match="format version 9 is not supported"):
        Savepoint.open(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b'{"format": "streamproc-savepoint", "version": 1}')
    with pytest.raises(SavepointError, match="not a valid savepoint manifest: KeyError"):
        Savepoint.open(tmp_path)


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
    with pytest.raises(SavepointError, match=r"does not have: \['nope'\]"):
        sp.rewrite(tmp_path / "sp4", drop=["nope"])


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
