"""Hostile savepoints: a savepoint directory is input someone hands us.

Each case is built by hand in tmp_path, beside an ``outside`` directory holding a valid-looking
records file. Every entry point (Savepoint.open, verify, store().items(), inflight(), rewrite(),
apply.load and ``streamproc savepoint inspect``) must refuse it with the one exact message
naming the bad entry (or accept it, where the bad part is not what that entry point reads), and
nothing outside the savepoint may be read into a result or written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamproc import Topology, cli, codecs, windows
from streamproc.graph.compile import compile_topology
from streamproc.names import NAME_RULE, TOPIC_RULE
from streamproc.runtime.task import TIME_KEY
from streamproc.savepoints import apply
from streamproc.savepoints.format import (
    SavedRecord,
    Savepoint,
    SavepointError,
    inflight_file,
    store_file,
    write_records,
)
from streamproc.savepoints.manifest import HEAD, MAGIC
from topologies import wordcount

WC2 = compile_topology(wordcount.build("wc2"))
ENTRY_POINTS = ("open", "verify", "items", "inflight", "rewrite", "apply.load", "inspect")
COUNTS = {0: {"a": 2, "b": 1}, 1: {"c": 7}}


@pytest.fixture(autouse=True)
def _undo_logging(restore_logging: None) -> None:
    """``streamproc savepoint inspect`` configures logging for the process: undo it."""


def _files_info(path: Path, records: int) -> dict[str, Any]:
    data = path.read_bytes()
    return {"records": records, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _base(root: Path) -> dict[str, Any]:
    """A valid savepoint of topologies.wordcount (application 'wc') at ``root``: counts
    {0: a=2 b=1, 1: c=7} and the word 'a' in flight on partition 0. Returns its manifest as a
    plain dict, to break."""
    files = {str(p): asdict(write_records(store_file(root, "counts", p), [
        SavedRecord(k.encode(), orjson.dumps(v)) for k, v in kv.items()]))
        for p, kv in COUNTS.items()}
    flight = {str(p): asdict(write_records(inflight_file(root, "words-repartition", p), words))
              for p, words in {0: [SavedRecord(b"a", b"a", 1000)], 1: []}.items()}
    manifest = {
        "id": "sp1", "application_id": "wc", "topology": "topologies.wordcount",
        "fingerprint": "ab" * 32, "created_at_ms": 1_700_000_000_000, "tasks": {"0": 2, "1": 2},
        "source_offsets": {"text-lines": {"0": 12, "1": None}},
        "stores": {"counts": {"subtopology": 1, "codec": "json", "changelog": "counts-changelog",
                              "partitions": 2, "time_store": False, "files": files}},
        "inflight": {"words-repartition": {"partitions": 2, "ranges": {"0": [10, 11],
                                                                        "1": [10, 10]},
                                           "files": flight}},
        "watermarks": {}, "format": "streamproc-savepoint", "version": 1}
    _write(root, manifest)
    return manifest


def _write(root: Path, manifest: dict[str, Any]) -> None:
    (root / "manifest.json").write_bytes(json.dumps(manifest).encode())


def _tree(path: Path) -> dict[str, bytes | str]:
    """Every entry under ``path`` with its content (or what a symlink points to)."""
    out: dict[str, bytes | str] = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = (f"-> {os.readlink(p)}" if p.is_symlink() else
                    p.read_bytes() if p.is_file() else "dir")
    return out


@pytest.fixture
def sp(tmp_path: Path) -> Path:
    root = tmp_path / "sp"
    _base(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    # A copy of a real store file: reading it through the savepoint would "work".
    (outside / "secret.records").write_bytes(store_file(root, "counts", 0).read_bytes())
    (outside / "manifest.json").write_bytes((root / "manifest.json").read_bytes())
    return root


def _refusals(root: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """What each entry point answers: the SavepointError's message, or "accepted"."""
    out: dict[str, str] = {}
    attempts: dict[str, Callable[[], object]] = {
        "open": lambda: Savepoint.open(root),
        "verify": lambda: Savepoint.open(root).verify(),
        "items": lambda: list(Savepoint.open(root).store("counts").items()),
        "inflight": lambda: list(Savepoint.open(root).inflight("words-repartition", 0)),
        "rewrite": lambda: Savepoint.open(root).rewrite(root.parent / "copy"),
        "apply.load": lambda: apply.load(root, WC2, {0: 2, 1: 2}, []),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
        except SavepointError as exc:
            out[name] = str(exc)
        else:
            out[name] = "accepted"
    capsys.readouterr()
    code = cli.main(["savepoint", "inspect", str(root)])
    err = capsys.readouterr().err
    out["inspect"] = "accepted" if code == 0 and not err else f"exit {code}: {err}"
    return out


def _refused_by_all(message: str, *, but: tuple[str, ...] = ()) -> dict[str, str]:
    """Every entry point refuses with ``message``, except those in ``but`` (which accept)."""
    return {name: "accepted" if name in but else
            f"exit 2: streamproc: savepoint inspect: {message}\n" if name == "inspect" else
            message for name in ENTRY_POINTS}


def _assert_untouched(tmp_path: Path, outside_before: dict[str, bytes | str]) -> None:
    assert _tree(tmp_path / "outside") == outside_before
    assert sorted(os.listdir(tmp_path)) == ["outside", "sp"]  # no copy, no partial directory


# -- the manifest ----------------------------------------------------------------------------
def _rename_store(name: str) -> Callable[[dict[str, Any]], None]:
    def change(m: dict[str, Any]) -> None:
        m["stores"][name] = m["stores"].pop("counts")
    return change


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(m: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target = m
        for key in parents:
            target = target[key]
        target[last] = value
    return change


def _rename_partition(new: str) -> Callable[[dict[str, Any]], None]:
    def change(m: dict[str, Any]) -> None:
        files = m["stores"]["counts"]["files"]
        files[new] = files.pop("1")
    return change


INVALID = "<m> is not a valid savepoint manifest: "
PARTITION_RULE = "(0 to 2147483647, decimal digits without sign or leading zeros)"
MANIFEST_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("store-dotdot", _rename_store("../x"),
     f"{INVALID}stores: store name '../x' is not a valid name ({NAME_RULE})"),
    ("store-absolute", _rename_store("/abs"),
     f"{INVALID}stores: store name '/abs' is not a valid name ({NAME_RULE})"),
    ("store-separator", _rename_store("a/b"),
     f"{INVALID}stores: store name 'a/b' is not a valid name ({NAME_RULE})"),
    ("store-outside", _rename_store("../../outside"),
     f"{INVALID}stores: store name '../../outside' is not a valid name ({NAME_RULE})"),
    ("inflight-dotdot", _set("inflight/..", {"partitions": 0, "ranges": {}, "files": {}}),
     f"{INVALID}inflight: repartition topic '..' is not a topic name ({TOPIC_RULE})"),
    ("inflight-outside", lambda m: m["inflight"].update(
        {"../../outside": {"partitions": 0, "ranges": {}, "files": {}}}),
     f"{INVALID}inflight: repartition topic '../../outside' has characters Kafka does not "
     f"allow in a topic name ({TOPIC_RULE})"),
    ("partition-path", _rename_partition("../../secret"),
     f"{INVALID}stores['counts'].files: '../../secret' is not a partition number "
     f"{PARTITION_RULE}"),
    ("partition-negative", _rename_partition("-1"),
     f"{INVALID}stores['counts'].files: '-1' is not a partition number {PARTITION_RULE}"),
    ("partition-leading-zero", _rename_partition("00"),
     f"{INVALID}stores['counts'].files: '00' is not a partition number {PARTITION_RULE}"),
    ("partition-beyond-count", _rename_partition("5"),
     f"{INVALID}stores['counts'].files: partition 5 is not below the 2 partitions"),
    ("created-string", _set("created_at_ms", "yesterday"),
     f"{INVALID}created_at_ms: must be an integer, not a string"),
    ("created-too-late", _set("created_at_ms", 10**20),
     f"{INVALID}created_at_ms: 100000000000000000000 is out of range (0 to 253402300799999)"),
    ("partitions-bool", _set("stores/counts/partitions", True),
     f"{INVALID}stores['counts'].partitions: must be an integer, not a boolean"),
    ("records-negative", _set("stores/counts/files/0/records", -1),
     f"{INVALID}stores['counts'].files['0'].records: -1 is out of range "
     "(0 to 9223372036854775807)"),
    ("records-float", _set("stores/counts/files/0/records", 2.0),
     f"{INVALID}stores['counts'].files['0'].records: must be an integer, not a fractional "
     "number"),
    ("records-impossible", _set("stores/counts/files/0/records", 10**6),
     f"{INVALID}stores['counts'].files['0'].records: 1000000 records cannot fit in 61 bytes"),
    ("sha-not-hex", _set("stores/counts/files/0/sha256", "xyz"),
     f"{INVALID}stores['counts'].files['0'].sha256: 'xyz' is not a SHA-256 (64 lowercase hex "
     "digits)"),
    ("files-array", _set("stores/counts/files", []),
     f"{INVALID}stores['counts'].files: must be an object, not an array"),
    ("offset-negative", _set("source_offsets/text-lines/0", -5),
     f"{INVALID}source_offsets['text-lines']['0']: -5 is out of range "
     "(0 to 9223372036854775807)"),
    ("source-topic", lambda m: m["source_offsets"].update({"../x": {}}),
     f"{INVALID}source_offsets: topic '../x' has characters Kafka does not allow in a topic "
     f"name ({TOPIC_RULE})"),
    ("range-backwards", _set("inflight/words-repartition/ranges/0", [11, 10]),
     f"{INVALID}inflight['words-repartition'].ranges['0'][1]: 10 is out of range "
     "(11 to 9223372036854775807)"),
    ("range-too-small", _set("inflight/words-repartition/ranges/0", [10, 10]),
     f"{INVALID}inflight['words-repartition'].ranges['0']: 0 offsets cannot hold the file's "
     "1 records"),
    ("watermark-task", _set("watermarks/x", {"watermark": 0, "stream_time": 0, "idle": False}),
     f"{INVALID}watermarks: 'x' is not a task id ({{sub-topology}}_{{partition}})"),
    ("watermark-type", _set("watermarks/1_0", {"watermark": "0", "stream_time": 0,
                                               "idle": False}),
     f"{INVALID}watermarks['1_0'].watermark: must be an integer, not a string"),
    ("unknown-field", _set("stores/counts/extra", 1),
     f"{INVALID}stores['counts']: unknown field 'extra'"),
    ("missing-field", lambda m: m.pop("inflight"), f"{INVALID}field 'inflight' is missing"),
    ("app-id-path", _set("application_id", "../wc"),
     f"{INVALID}application_id: application id '../wc' is not a valid name ({NAME_RULE})"),
    ("topology-control-chars", _set("topology", "x\x1b[2J"),
     f"{INVALID}topology: 'x\\x1b[2J' is not 1 to 1000 printable characters"),
    ("version-string", _set("version", "1"), f"{INVALID}version: must be an integer, not a string"),
    ("version-unknown", _set("version", 2),
     "<m>: savepoint format version 2 is not supported (this streamproc reads version 1)"),
    ("format-foreign", _set("format", "other"),
     "<m> is not a streamproc savepoint manifest (its format is 'other', not "
     "'streamproc-savepoint')"),
]


@pytest.mark.parametrize(("change", "expected"), [(c, e) for _, c, e in MANIFEST_CASES],
                         ids=[i for i, _, _ in MANIFEST_CASES])
def test_a_bad_manifest_is_refused_by_every_entry_point(
        sp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        change: Callable[[dict[str, Any]], None], expected: str) -> None:
    manifest = json.loads((sp / "manifest.json").read_bytes())
    change(manifest)
    _write(sp, manifest)
    before = _tree(tmp_path / "outside")
    message = expected.replace("<m>", str(sp / "manifest.json"))
    assert _refusals(sp, capsys) == _refused_by_all(message)
    _assert_untouched(tmp_path, before)


RAW_CASES: list[tuple[str, bytes, str]] = [
    ("not-json", b"{nope", "<m> is not JSON: Expecting property name enclosed in double quotes: "
     "line 1 column 2 (char 1)"),
    ("not-utf8", b'{"id": "\xff"}', "<m> is not JSON: 'utf-8' codec can't decode byte 0xff in "
     "position 8: invalid start byte"),
    ("array", b"[1, 2]", "<m> is not a streamproc savepoint manifest (it holds an array, not an "
     "object)"),
    ("nan", b'{"format": "streamproc-savepoint", "version": NaN}',
     "<m> is not JSON: NaN is not a JSON number"),
    ("deep", b"[" * 100_000, "<m> is not a valid savepoint manifest: its JSON is nested too "
     "deeply"),
]


@pytest.mark.parametrize(("raw", "expected"), [(r, e) for _, r, e in RAW_CASES],
                         ids=[i for i, _, _ in RAW_CASES])
def test_a_manifest_that_is_not_a_json_object_is_refused(
        sp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: bytes,
        expected: str) -> None:
    (sp / "manifest.json").write_bytes(raw)
    before = _tree(tmp_path / "outside")
    assert _refusals(sp, capsys) == _refused_by_all(
        expected.replace("<m>", str(sp / "manifest.json")))
    _assert_untouched(tmp_path, before)


def test_duplicate_partitions_are_refused(sp: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    before = _tree(tmp_path / "outside")
    text = (sp / "manifest.json").read_text()
    files = json.loads(text)["stores"]["counts"]["files"]
    # json.dumps cannot write a key twice: splice partition 0's entry in again as "1".
    dup = text.replace(json.dumps(files), "{" + ", ".join(
        f'"{k}": {json.dumps(v)}' for k, v in [("0", files["0"]), ("1", files["1"]),
                                               ("1", files["0"])]) + "}")
    (sp / "manifest.json").write_text(dup)
    assert _refusals(sp, capsys) == _refused_by_all(
        f"{sp / 'manifest.json'} is not a valid savepoint manifest: stores['counts'].files: "
        "key '1' appears more than once")
    _assert_untouched(tmp_path, before)


def test_a_manifest_outside_or_not_a_file_is_refused(
        sp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _tree(tmp_path / "outside")
    manifest = sp / "manifest.json"
    manifest.unlink()
    manifest.symlink_to(tmp_path / "outside" / "manifest.json")
    assert _refusals(sp, capsys) == _refused_by_all(
        f"savepoint file {manifest} resolves to {(tmp_path / 'outside' / 'manifest.json')}, "
        f"outside the savepoint {sp}")
    manifest.unlink()
    os.mkfifo(manifest)  # opening it for reading would wait for a writer forever
    assert _refusals(sp, capsys) == _refused_by_all(
        f"savepoint file {manifest} is not a regular file")
    manifest.unlink()
    with open(manifest, "wb") as f:
        f.truncate(65 << 20)  # sparse: nothing is written to disk
    assert _refusals(sp, capsys) == _refused_by_all(
        f"{manifest} is 68157440 bytes, more than a savepoint manifest may have (67108864)")
    _assert_untouched(tmp_path, before)


# -- the record files ------------------------------------------------------------------------
def _replace_file(sp: Path, data: bytes, records: int, *, partition: int = 0) -> Path:
    """Store file ``partition`` of 'counts' becomes ``data``, and the manifest agrees with
    it (size, checksum, count): only the content itself is wrong."""
    path = store_file(sp, "counts", partition)
    path.write_bytes(data)
    manifest = json.loads((sp / "manifest.json").read_bytes())
    manifest["stores"]["counts"]["files"][str(partition)] = _files_info(path, records)
    _write(sp, manifest)
    return path


def test_a_length_field_beyond_the_file_is_refused_before_reading(
        sp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = MAGIC + HEAD.pack(2**31 - 1, 0, 0, 0)
    path = _replace_file(sp, data + b"\0" * (100 - len(data)), 1)
    before = _tree(tmp_path / "outside")
    assert _refusals(sp, capsys) == _refused_by_all(
        f"savepoint file {path}: record 0 (at byte 21): key length 2147483647 is more than the "
        "61 bytes left in the file", but=("open", "inflight"))
    _assert_untouched(tmp_path, before)


@pytest.mark.parametrize(("head", "problem"), [
    (HEAD.pack(-7, 1, 0, 0), "key length -7 is negative"),
    (HEAD.pack(1, 2**31 - 1, 0, 0), "value length 2147483647 is more than the 41 bytes left in "
     "the file"),
    (HEAD.pack(1, 1, 0, 60_000), "header name length 2570 is more than the 34 bytes left in "
     "the file"),
], ids=["negative", "value-too-long", "header-too-long"])
def test_bad_lengths_are_refused(sp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 head: bytes, problem: str) -> None:
    before = _tree(tmp_path / "outside")
    path = _replace_file(sp, MAGIC + head + b"k" + b"v" + b"\n" * 40, 1)
    assert _refusals(sp, capsys) == _refused_by_all(
        f"savepoint file {path}: record 0 (at byte 21): {problem}", but=("open", "inflight"))
    _assert_untouched(tmp_path, before)


def test_truncated_record_files_are_refused(
        sp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = store_file(sp, "counts", 0)
    whole = path.read_bytes()
    assert len(whole) == 61  # magic (21) + two records of 18 + 1 + 1 bytes
    before = _tree(tmp_path / "outside")
    # The manifest still lists the whole file: refused by its size, before any reading.
    path.write_bytes(whole[:51])
    assert _refusals(sp, capsys) == _refused_by_all(
        f"savepoint file {path} is 51 bytes, the manifest lists 61 (truncated or modified)")
    # The manifest was made to agree: the second record's header is cut off.
    _replace_file(sp, whole[:51], 1)
    assert _refusals(sp, capsys) == _refused_by_all(
        f"savepoint file {path} is truncated: record 1 (at byte 41) is cut off after 10 bytes",
        but=("open", "inflight"))
    _assert_untouched(tmp_path, before)


def test_more_or_fewer_records_than_listed_or_null_keys_are_refused(
        sp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _tree(tmp_path / "outside")
    path = store_file(sp, "counts", 0)
    whole = path.read_bytes()
    _replace_file(sp, whole, 1)
    assert _refusals(sp, capsys) == _refused_by_all(
        f"savepoint file {path} holds more than the 1 records the manifest lists",
        but=("open", "inflight"))
    _replace_file(sp, whole[:41], 0)
    assert _refusals(sp, capsys) == _refused_by_all(
        f"savepoint file {path} holds more than the 0 records the manifest lists",
        but=("open", "inflight"))
    write_records(path, [SavedRecord(b"a", b"x" * 40)])
    _replace_file(sp, path.read_bytes(), 2)
    assert _refusals(sp, capsys) == _refused_by_all(
        f"savepoint file {path} holds 1 records, the manifest lists 2", but=("open", "inflight"))
    write_records(path, [SavedRecord(None, b"1")])
    _replace_file(sp, path.read_bytes(), 1)
    assert _refusals(sp, capsys) == _refused_by_all(
        f"savepoint file {path}: record 0 (at byte 21) has a null key: a store file holds live "
        "keys only", but=("open", "inflight"))
    _assert_untouched(tmp_path, before)


def test_symlinks_pointing_outside_are_refused(
        sp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "outside"
    path = store_file(sp, "counts", 0)
    original = path.read_bytes()
    flight = sp / "inflight" / "words-repartition"
    (outside / "flight").mkdir()
    for p in (0, 1):
        (outside / "flight" / f"{p}.records").write_bytes((flight / f"{p}.records").read_bytes())
    before = _tree(outside)
    path.unlink()
    path.symlink_to(outside / "secret.records")  # the same bytes: only the place is wrong
    assert _refusals(sp, capsys) == _refused_by_all(
        f"savepoint file {path} resolves to {outside / 'secret.records'}, outside the "
        f"savepoint {sp}")
    path.unlink()
    path.symlink_to("../../../outside/secret.records")  # relative, through the parents
    assert _refusals(sp, capsys) == _refused_by_all(
        f"savepoint file {path} resolves to {outside / 'secret.records'}, outside the "
        f"savepoint {sp}")
    path.unlink()
    path.write_bytes(original)
    # A whole directory of the savepoint is a symlink to one outside it.
    for p in (0, 1):
        (flight / f"{p}.records").unlink()
    flight.rmdir()
    flight.symlink_to(outside / "flight")
    assert _refusals(sp, capsys) == _refused_by_all(
        f"savepoint file {flight / '0.records'} resolves to {outside / 'flight' / '0.records'}, "
        f"outside the savepoint {sp}")
    _assert_untouched(tmp_path, before)


def test_symlinks_inside_the_savepoint_are_followed(
        sp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = store_file(sp, "counts", 1)
    (sp / "blobs").mkdir()
    path.rename(sp / "blobs" / "c1")
    path.symlink_to("../../blobs/c1")
    assert _refusals(sp, capsys) == dict.fromkeys(ENTRY_POINTS, "accepted")
    copy = Savepoint.open(tmp_path / "copy")
    assert dict(copy.store("counts").items()) == {b"a": b"2", b"b": b"1", b"c": b"7"}
    assert not store_file(tmp_path / "copy", "counts", 1).is_symlink()


def test_missing_files_fifos_and_directories_are_refused(
        sp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _tree(tmp_path / "outside")
    path = store_file(sp, "counts", 0)
    path.unlink()
    assert _refusals(sp, capsys) == _refused_by_all(f"savepoint file {path} is missing")
    os.mkfifo(path)
    assert _refusals(sp, capsys) == _refused_by_all(
        f"savepoint file {path} is not a regular file")
    path.unlink()
    path.mkdir()
    assert _refusals(sp, capsys) == _refused_by_all(
        f"savepoint file {path} is not a regular file")
    _assert_untouched(tmp_path, before)


# -- names given to the API ------------------------------------------------------------------
def test_names_given_to_the_api_are_checked(sp: Path, tmp_path: Path) -> None:
    before = _tree(tmp_path / "outside")
    s = Savepoint.open(sp)
    with pytest.raises(SavepointError) as err:
        s.store("../outside")
    assert str(err.value) == "the savepoint has no store '../outside' (it has ['counts'])"
    with pytest.raises(SavepointError) as err:
        s.inflight("../../outside/secret", 0)
    assert str(err.value) == ("the savepoint has no in-flight records of "
                              "'../../outside/secret' (it has ['words-repartition'])")
    with pytest.raises(SavepointError) as err:
        s.inflight("words-repartition", 7)
    assert str(err.value) == ("in-flight records of 'words-repartition' have no partition 7 "
                              "(they have [0, 1])")
    with pytest.raises(SavepointError) as err:
        list(s.store("counts").items(5))
    assert str(err.value) == "store 'counts' has no partition 5 (it has [0, 1])"
    with pytest.raises(SavepointError) as err:
        s.rewrite(tmp_path / "copy", rename={"counts": "../outside/x"})
    assert str(err.value) == ("rewrite: cannot rename store 'counts': the new name "
                              f"'../outside/x' is not a valid name ({NAME_RULE})")
    with pytest.raises(SavepointError) as err:
        s.rewrite(tmp_path / "copy", rename={"counts": "/abs"})
    assert str(err.value) == ("rewrite: cannot rename store 'counts': the new name '/abs' is "
                              f"not a valid name ({NAME_RULE})")
    with pytest.raises(SavepointError) as err:
        s.rewrite(tmp_path / "copy", drop="counts")
    assert str(err.value) == ("rewrite: drop must be a list of store names, not the string "
                              "'counts'")
    with pytest.raises(SavepointError) as err:
        s.rewrite(tmp_path / "copy", drop=["../counts"])
    assert str(err.value) == ("rewrite names stores the savepoint does not have: "
                              "['../counts'] (it has ['counts'])")
    with pytest.raises(SavepointError) as err:
        s.rewrite(tmp_path / "copy",
                  transform={"counts": lambda _k, _v: "text"})  # type: ignore[arg-type,return-value]
    assert str(err.value) == ("rewrite: the transform of store 'counts' returned str for key "
                              "b'a'; it must return bytes, or None to delete the key")
    _assert_untouched(tmp_path, before)  # the failed transform left no partial copy


def test_a_bad_time_state_stops_the_start_before_anything_is_written(tmp_path: Path) -> None:
    t = Topology("timed")
    (t.source("in", key=codecs.string(), value=codecs.json(), timestamp=lambda v: v["ts"])
     .group_by_key().window(windows.tumbling(100)).count(store="w").to("out"))
    compiled = compile_topology(t)
    (st,) = compiled.subtopologies
    assert st.time_store is not None
    root = tmp_path / "sp"
    info = write_records(store_file(root, st.time_store, 0),
                         [SavedRecord(TIME_KEY, b'{"watermark": "soon"}')])
    _write(root, {
        "id": "sp1", "application_id": "timed", "topology": "t", "fingerprint": "ab" * 32,
        "created_at_ms": 0, "tasks": {"0": 1}, "source_offsets": {}, "inflight": {},
        "stores": {st.time_store: {"subtopology": 0, "codec": "raw", "changelog": "x",
                                   "partitions": 1, "time_store": True,
                                   "files": {"0": asdict(info)}}},
        "watermarks": {}, "format": "streamproc-savepoint", "version": 1})
    with pytest.raises(SavepointError) as err:
        apply.load(root, compiled, {0: 1}, [])
    assert str(err.value) == (
        f"store {st.time_store!r} (partition 0) of the savepoint: the time state "
        "b'{\"watermark\": \"soon\"}' has no integer 'stream_time'")
