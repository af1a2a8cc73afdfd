"""A savepoint's manifest: what it holds, and the parser that checks every field of it.

A savepoint is a directory someone hands us, so its manifest is input like any other. Its store
and topic names become paths (``stores/{store}/{partition}.records``), its partition numbers file
names, its sizes the limits the record reader trusts, and its offsets are committed to Kafka by
a seed. So nothing is taken as it comes: names follow the engine's one set of rules
(:mod:`streamproc.names`), numbers are integers of JSON (not strings, floats or booleans) in
range, keys appear once, and a problem is refused with one :class:`SavepointError` that names
the entry (``stores['counts'].files['0'].sha256: ...``).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import orjson

from streamproc.errors import StreamprocError
from streamproc.names import name_problem, topic_problem

FORMAT = "streamproc-savepoint"
VERSION = 1
MANIFEST = "manifest.json"
# Far above what any real manifest needs (about 150 bytes per partition file), and low enough
# that a hostile one cannot make us read gigabytes into memory.
MAX_MANIFEST_BYTES = 64 << 20

# The framing of ``.records`` files (records.py reads and writes it). Here because the
# manifest's sizes and counts are checked against it: a file is at least its magic line, and
# each record at least its fixed header.
MAGIC = b"streamproc-records 1\n"
HEAD = struct.Struct(">iiqH")  # key length, value length (-1: null), timestamp, header count
HEADER = struct.Struct(">Hi")  # header name length, value length (-1: null)

PARTITION_MAX = 2**31 - 1  # Kafka partition numbers are int32
OFFSET_MAX = 2**63 - 1
INT64_MIN = -(2**63)
CREATED_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant inspect shows
TEXT_MAX = 1000
_INDEX = re.compile(r"0|[1-9][0-9]{0,9}")  # a partition or sub-topology number: one spelling
_TASK = re.compile(r"(0|[1-9][0-9]{0,9})_(0|[1-9][0-9]{0,9})")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class SavepointError(StreamprocError):
    """A savepoint cannot be read, or does not fit the application that would start from it."""


@dataclass
class FileInfo:
    """One ``.records`` file as the manifest lists it."""

    records: int
    bytes: int
    sha256: str


@dataclass
class StoreInfo:
    subtopology: int
    codec: str  # the value codec's name when the savepoint was taken (informational)
    changelog: str
    partitions: int
    time_store: bool = False
    files: dict[int, FileInfo] = field(default_factory=dict)

    @property
    def keys(self) -> int:
        return sum(f.records for f in self.files.values())


@dataclass
class InflightInfo:
    """Records of a repartition topic past the group's committed offset, per partition."""

    partitions: int
    # partition -> [first offset copied, end offset] of the original topic
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)
    files: dict[int, FileInfo] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(f.records for f in self.files.values())


@dataclass
class Manifest:
    id: str
    application_id: str
    topology: str  # how it was named on the command line (module or module:attr)
    fingerprint: str  # SHA-256 of the compiled graph with the application id taken out
    created_at_ms: int
    # sub-topology id -> number of tasks
    tasks: dict[int, int]
    # source topic -> partition -> committed offset (None: the group had none)
    source_offsets: dict[str, dict[int, int | None]]
    stores: dict[str, StoreInfo]
    # repartition topic, named without the "{application_id}-" prefix -> its in-flight records
    inflight: dict[str, InflightInfo]
    # task id ("{subtopology}_{partition}") -> its time state (watermark, stream time, idle)
    watermarks: dict[str, dict[str, Any]]
    format: str = FORMAT
    version: int = VERSION

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
                            | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, raw: bytes, where: Path) -> Manifest:
        return parse_manifest(raw, where)


# -- parsing ---------------------------------------------------------------------------------
class _Object(dict[str, Any]):
    """A JSON object that remembers the keys it saw twice: the json module keeps the last
    value silently, and two entries for one partition must not become one."""

    duplicates: list[str]


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    out = _Object()
    out.duplicates = []
    for key, value in pairs:
        if key in out:
            out.duplicates.append(key)
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _kind(value: object) -> str:
    for t, name in ((bool, "a boolean"), (int, "an integer"), (float, "a fractional number"),
                    (str, "a string"), (list, "an array"), (dict, "an object")):
        if isinstance(value, t):
            return name
    return "null"


def show(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut short: hostile input can be megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class _Check:
    def __init__(self, where: Path) -> None:
        self.where = where

    def fail(self, entry: str, problem: str) -> NoReturn:
        raise SavepointError(f"{self.where} is not a valid savepoint manifest: "
                             f"{entry + ': ' if entry else ''}{problem}")

    def obj(self, value: Any, entry: str, fields: tuple[str, ...] | None = None,
            optional: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(entry, f"must be an object, not {_kind(value)}")
        duplicates = getattr(value, "duplicates", [])
        if duplicates:
            self.fail(entry, f"key {show(duplicates[0])} appears more than once")
        if fields is not None:
            for name in fields:
                if name not in value:
                    self.fail(entry, f"field {name!r} is missing")
            extra = sorted(set(value) - set(fields) - set(optional))
            if extra:
                self.fail(entry, f"unknown field {show(extra[0])}")
        return value

    def integer(self, value: Any, entry: str, lo: int, hi: int) -> int:
        if type(value) is not int:  # bool is an int in Python, not in a manifest
            self.fail(entry, f"must be an integer, not {_kind(value)}")
        if not lo <= value <= hi:
            self.fail(entry, f"{show(value)} is out of range ({lo} to {hi})")
        return value

    def boolean(self, value: Any, entry: str) -> bool:
        if not isinstance(value, bool):
            self.fail(entry, f"must be true or false, not {_kind(value)}")
        return value

    def text(self, value: Any, entry: str) -> str:
        if not isinstance(value, str):
            self.fail(entry, f"must be a string, not {_kind(value)}")
        # Printed by inspect: no control characters that would rewrite the operator's terminal.
        if not value or len(value) > TEXT_MAX or not value.isprintable():
            self.fail(entry, f"{show(value)} is not 1 to {TEXT_MAX} printable characters")
        return value

    def sha256(self, value: Any, entry: str) -> str:
        if not isinstance(value, str) or not _SHA256.fullmatch(value):
            self.fail(entry, f"{show(value)} is not a SHA-256 (64 lowercase hex digits)")
        return value

    def index(self, key: str, entry: str, what: str = "partition") -> int:
        """A partition (or sub-topology) number used as an object key: decimal, no sign or
        leading zeros, so that "0", "00" and "+0" cannot name one partition three times."""
        if not _INDEX.fullmatch(key) or int(key) > PARTITION_MAX:
            self.fail(entry, f"{show(key)} is not a {what} number (0 to {PARTITION_MAX}, "
                      "decimal digits without sign or leading zeros)")
        return int(key)

    def name(self, value: Any, entry: str, what: str) -> str:
        problem = name_problem(value)
        if problem is not None:
            self.fail(entry, f"{what} {problem}")
        assert isinstance(value, str)
        return value

    def topic(self, value: Any, entry: str, what: str) -> str:
        problem = topic_problem(value)
        if problem is not None:
            self.fail(entry, f"{what} {problem}")
        assert isinstance(value, str)
        return value

    def file(self, value: Any, entry: str) -> FileInfo:
        f = self.obj(value, entry, ("records", "bytes", "sha256"))
        size = self.integer(f["bytes"], f"{entry}.bytes", len(MAGIC), OFFSET_MAX)
        records = self.integer(f["records"], f"{entry}.records", 0, OFFSET_MAX)
        if records > (size - len(MAGIC)) // HEAD.size:
            self.fail(f"{entry}.records", f"{records} records cannot fit in {size} bytes")
        return FileInfo(records=records, bytes=size,
                        sha256=self.sha256(f["sha256"], f"{entry}.sha256"))

    def files(self, value: Any, entry: str, partitions: int) -> dict[int, FileInfo]:
        out = {}
        for key, f in self.obj(value, entry).items():
            p = self.index(key, entry)
            if p >= partitions:
                self.fail(entry, f"partition {p} is not below the {partitions} partitions")
            out[p] = self.file(f, f"{entry}[{key!r}]")
        return out


_TOP = ("id", "application_id", "topology", "fingerprint", "created_at_ms", "tasks",
        "source_offsets", "stores", "inflight", "watermarks", "format", "version")
_STORE = ("subtopology", "codec", "changelog", "partitions", "time_store", "files")
_INFLIGHT = ("partitions", "ranges", "files")
_WATERMARK = ("watermark", "stream_time", "idle")


def parse_manifest(raw: bytes, where: Path) -> Manifest:
    """The manifest in ``raw`` (read from ``where``, named in every error), every field
    checked."""
    try:
        # The json module, not orjson: it reports duplicate keys (object_pairs_hook) and
        # refuses NaN and Infinity (parse_constant).
        d = json.loads(raw, object_pairs_hook=_object, parse_constant=_no_constant)
    except RecursionError:
        raise SavepointError(f"{where} is not a valid savepoint manifest: its JSON is nested "
                             "too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise SavepointError(f"{where} is not JSON: {exc}") from None
    if not isinstance(d, dict):
        raise SavepointError(f"{where} is not a streamproc savepoint manifest (it holds "
                             f"{_kind(d)}, not an object)")
    if d.get("format") != FORMAT:
        raise SavepointError(f"{where} is not a streamproc savepoint manifest (its format is "
                             f"{show(d.get('format'))}, not {FORMAT!r})")
    c = _Check(where)
    version = d.get("version")
    if type(version) is not int:
        c.fail("version", f"must be an integer, not {_kind(version)}")
    if version != VERSION:
        raise SavepointError(f"{where}: savepoint format version {show(version)} is not "
                             f"supported (this streamproc reads version {VERSION})")
    c.obj(d, "", _TOP)
    return Manifest(
        id=c.name(d["id"], "id", "savepoint id"),
        application_id=c.name(d["application_id"], "application_id", "application id"),
        topology=c.text(d["topology"], "topology"),
        fingerprint=c.sha256(d["fingerprint"], "fingerprint"),
        created_at_ms=c.integer(d["created_at_ms"], "created_at_ms", 0, CREATED_MAX_MS),
        tasks={c.index(k, "tasks", "sub-topology"):
               c.integer(v, f"tasks[{k!r}]", 1, PARTITION_MAX + 1)
               for k, v in c.obj(d["tasks"], "tasks").items()},
        source_offsets=_source_offsets(c, d["source_offsets"]),
        stores={name: _store(c, name, s) for name, s in c.obj(d["stores"], "stores").items()},
        inflight={name: _inflight(c, name, i)
                  for name, i in c.obj(d["inflight"], "inflight").items()},
        watermarks={task: _watermark(c, task, w)
                    for task, w in c.obj(d["watermarks"], "watermarks").items()})


def _source_offsets(c: _Check, raw: Any) -> dict[str, dict[int, int | None]]:
    out: dict[str, dict[int, int | None]] = {}
    for topic, parts in c.obj(raw, "source_offsets").items():
        entry = f"source_offsets[{topic!r}]"
        c.topic(topic, "source_offsets", "topic")
        out[topic] = {
            c.index(p, entry): None if o is None else c.integer(o, f"{entry}[{p!r}]", 0,
                                                                  OFFSET_MAX)
            for p, o in c.obj(parts, entry).items()}
    return out


def _store(c: _Check, name: str, raw: Any) -> StoreInfo:
    entry = f"stores[{name!r}]"
    c.name(name, "stores", "store name")
    s = c.obj(raw, entry, _STORE)
    partitions = c.integer(s["partitions"], f"{entry}.partitions", 0, PARTITION_MAX + 1)
    return StoreInfo(
        subtopology=c.integer(s["subtopology"], f"{entry}.subtopology", 0, PARTITION_MAX),
        codec=c.text(s["codec"], f"{entry}.codec"),
        changelog=c.topic(s["changelog"], f"{entry}.changelog", "topic"),
        partitions=partitions, time_store=c.boolean(s["time_store"], f"{entry}.time_store"),
        files=c.files(s["files"], f"{entry}.files", partitions))


def _inflight(c: _Check, name: str, raw: Any) -> InflightInfo:
    entry = f"inflight[{name!r}]"
    c.topic(name, "inflight", "repartition topic")
    i = c.obj(raw, entry, _INFLIGHT)
    partitions = c.integer(i["partitions"], f"{entry}.partitions", 0, PARTITION_MAX + 1)
    info = InflightInfo(partitions=partitions,
                        files=c.files(i["files"], f"{entry}.files", partitions))
    for p, r in c.obj(i["ranges"], f"{entry}.ranges").items():
        at = f"{entry}.ranges[{p!r}]"
        part = c.index(p, f"{entry}.ranges")
        if part >= partitions:
            c.fail(f"{entry}.ranges", f"partition {part} is not below the {partitions} "
                   "partitions")
        if not isinstance(r, list) or len(r) != 2:
            c.fail(at, f"must be [first offset, end offset], not {show(r)}")
        first = c.integer(r[0], f"{at}[0]", 0, OFFSET_MAX)
        end = c.integer(r[1], f"{at}[1]", first, OFFSET_MAX)
        held = info.files[part].records if part in info.files else 0
        if held > end - first:
            c.fail(at, f"{end - first} offsets cannot hold the file's {held} records")
        info.ranges[part] = (first, end)
    return info


def _watermark(c: _Check, task: str, raw: Any) -> dict[str, Any]:
    entry = f"watermarks[{task!r}]"
    if not _TASK.fullmatch(task):
        c.fail("watermarks", f"{show(task)} is not a task id ({{sub-topology}}_{{partition}})")
    w = c.obj(raw, entry, _WATERMARK)
    return {"watermark": c.integer(w["watermark"], f"{entry}.watermark", INT64_MIN, OFFSET_MAX),
            "stream_time": c.integer(w["stream_time"], f"{entry}.stream_time", INT64_MIN,
                                     OFFSET_MAX),
            "idle": c.boolean(w["idle"], f"{entry}.idle")}
