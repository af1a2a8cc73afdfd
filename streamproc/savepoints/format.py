"""The on-disk form of a savepoint, and the Python API that reads (and rewrites) one.

A savepoint is a directory::

    manifest.json                        what it holds (see :class:`Manifest`)
    stores/{store}/{partition}.records   the store's committed content, sorted by key
    inflight/{topic}/{partition}.records repartition records written but not yet consumed

Both kinds of ``.records`` file are the same framing: a magic line, then per record a fixed
header (key length, value length, timestamp, header count; -1 for a null key or value) and the
bytes. Plain files rather than RocksDB directories: a savepoint is written once, copied around,
checked against the manifest's SHA-256 and read sequentially; it never needs point updates.
Keys and values are the bytes the stores and changelogs hold, so a savepoint does not depend on
the codecs it was written with; decoding is the reader's choice (:meth:`StoreReader.items`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streamproc.codecs.base import Codec
from streamproc.errors import StreamprocError

FORMAT = "streamproc-savepoint"
VERSION = 1
MANIFEST = "manifest.json"
_MAGIC = b"streamproc-records 1\n"
_HEAD = struct.Struct(">iiqH")  # key length, value length (-1: null), timestamp, header count
_HEADER = struct.Struct(">Hi")  # header name length, value length (-1: null)
_CHUNK = 1 << 20


class SavepointError(StreamprocError):
    """A savepoint cannot be read, or does not fit the application that would start from it."""


@dataclass(frozen=True)
class SavedRecord:
    key: bytes | None
    value: bytes | None
    timestamp: int = 0
    headers: tuple[tuple[str, bytes | None], ...] = ()


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
        try:
            d = orjson.loads(raw)
            if d.get("format") != FORMAT:
                raise SavepointError(f"{where} is not a streamproc savepoint manifest")
            if d.get("version") != VERSION:
                raise SavepointError(f"{where}: savepoint format version {d.get('version')} is "
                                     f"not supported (this streamproc reads version {VERSION})")

            def files(raw_files: dict[str, Any]) -> dict[int, FileInfo]:
                return {int(p): FileInfo(**f) for p, f in raw_files.items()}

            return cls(
                id=d["id"], application_id=d["application_id"], topology=d["topology"],
                fingerprint=d["fingerprint"], created_at_ms=int(d["created_at_ms"]),
                tasks={int(k): int(v) for k, v in d["tasks"].items()},
                source_offsets={t: {int(p): o for p, o in parts.items()}
                                for t, parts in d["source_offsets"].items()},
                stores={name: StoreInfo(**{**s, "files": files(s["files"])})
                        for name, s in d["stores"].items()},
                inflight={name: InflightInfo(
                    partitions=i["partitions"],
                    ranges={int(p): (int(r[0]), int(r[1])) for p, r in i["ranges"].items()},
                    files=files(i["files"])) for name, i in d["inflight"].items()},
                watermarks=d["watermarks"])
        except SavepointError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SavepointError(f"{where} is not a valid savepoint manifest: "
                                 f"{type(exc).__name__}: {exc}") from None


# -- record files ----------------------------------------------------------------------------
def write_records(path: Path, records: Iterable[SavedRecord]) -> FileInfo:
    """Write ``records`` to ``path``; returns their count, size and checksum."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    n = 0
    with open(path, "wb") as f:
        def out(data: bytes) -> None:
            digest.update(data)
            f.write(data)

        out(_MAGIC)
        for r in records:
            parts = [_HEAD.pack(-1 if r.key is None else len(r.key),
                                -1 if r.value is None else len(r.value), r.timestamp,
                                len(r.headers)), r.key or b"", r.value or b""]
            for name, value in r.headers:
                encoded = name.encode()
                parts += [_HEADER.pack(len(encoded), -1 if value is None else len(value)),
                          encoded, value or b""]
            out(b"".join(parts))
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return FileInfo(records=n, bytes=path.stat().st_size, sha256=digest.hexdigest())


def read_records(path: Path) -> Iterator[SavedRecord]:
    """The records of a ``.records`` file, in order (the checksum is :func:`verify`'s job)."""
    with open(path, "rb") as f:
        if f.read(len(_MAGIC)) != _MAGIC:
            raise SavepointError(f"{path} is not a savepoint records file")

        def take(n: int) -> bytes:
            data = f.read(n)
            if len(data) != n:
                raise SavepointError(f"{path} is truncated")
            return data

        while head := f.read(_HEAD.size):
            if len(head) != _HEAD.size:
                raise SavepointError(f"{path} is truncated")
            klen, vlen, ts, nheaders = _HEAD.unpack(head)
            key = None if klen < 0 else take(klen)
            value = None if vlen < 0 else take(vlen)
            headers = []
            for _ in range(nheaders):
                nlen, hlen = _HEADER.unpack(take(_HEADER.size))
                name = take(nlen).decode()
                headers.append((name, None if hlen < 0 else take(hlen)))
            yield SavedRecord(key, value, ts, tuple(headers))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def store_file(root: Path, store: str, partition: int) -> Path:
    return root / "stores" / store / f"{partition}.records"


def inflight_file(root: Path, topic: str, partition: int) -> Path:
    return root / "inflight" / topic / f"{partition}.records"


# -- reading ---------------------------------------------------------------------------------
class StoreReader:
    """One store of a savepoint. Keys and values are raw bytes unless codecs are given."""

    def __init__(self, root: Path, name: str, info: StoreInfo) -> None:
        self.name = name
        self.info = info
        self._root = root

    @property
    def partitions(self) -> list[int]:
        return sorted(self.info.files)

    def items(self, partition: int | None = None, *, key: Codec | None = None,
              value: Codec | None = None) -> Iterator[tuple[Any, Any]]:
        """(key, value) pairs of one partition or of all (partition by partition, each sorted
        by key bytes), decoded with ``key`` / ``value`` when given."""
        for p in self.partitions if partition is None else [partition]:
            if p not in self.info.files:
                raise SavepointError(f"store {self.name!r} has no partition {p} "
                                     f"(it has {self.partitions})")
            for r in read_records(store_file(self._root, self.name, p)):
                yield (r.key if key is None else key.decode(r.key),
                       r.value if value is None else value.decode(r.value))

    def get(self, raw_key: bytes, partition: int | None = None) -> bytes | None:
        """The stored bytes for ``raw_key`` (a scan: savepoints are read in bulk, not served)."""
        for k, v in self.items(partition):
            if k == raw_key:
                return v  # type: ignore[no-any-return]
        return None


class Savepoint:
    """A savepoint directory, read-only. ``Savepoint.open(path)`` checks the manifest."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = root
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path) -> Savepoint:
        root = Path(path)
        try:
            raw = (root / MANIFEST).read_bytes()
        except OSError as exc:
            raise SavepointError(f"cannot read the savepoint at {root}: {exc.strerror or exc} "
                                 f"({root / MANIFEST})") from None
        return cls(root, Manifest.from_json(raw, root / MANIFEST))

    @property
    def stores(self) -> list[str]:
        return sorted(self.manifest.stores)

    def store(self, name: str) -> StoreReader:
        info = self.manifest.stores.get(name)
        if info is None:
            raise SavepointError(f"the savepoint has no store {name!r} (it has {self.stores})")
        return StoreReader(self.root, name, info)

    def inflight(self, topic: str, partition: int) -> Iterator[SavedRecord]:
        """The in-flight records of a repartition topic (named without the app id prefix)."""
        return read_records(inflight_file(self.root, topic, partition))

    def verify(self) -> None:
        """Check every file against the manifest (count, size, SHA-256)."""
        m = self.manifest
        expected = [(store_file(self.root, n, p), f) for n, s in m.stores.items()
                    for p, f in s.files.items()]
        expected += [(inflight_file(self.root, t, p), f) for t, i in m.inflight.items()
                     for p, f in i.files.items()]
        for path, info in expected:
            if not path.exists():
                raise SavepointError(f"savepoint file {path} is missing")
            if path.stat().st_size != info.bytes or _sha256(path) != info.sha256:
                raise SavepointError(f"savepoint file {path} does not match its checksum in "
                                     "the manifest (corrupt or modified)")

    def rewrite(self, to: str | Path, *, drop: Iterable[str] = (),
                rename: dict[str, str] | None = None,
                transform: dict[str, Callable[[bytes, bytes], bytes | None]] | None = None,
                ) -> Savepoint:
        """A new savepoint at ``to``: stores in ``drop`` left out, stores renamed by ``rename``
        (old -> new name), and each value of a store in ``transform`` replaced by
        ``fn(key, value)`` (raw bytes; return None to delete the key). The offsets, in-flight
        records and watermarks are kept; the copy gets a new id. A migration between versions
        of a topology: decode with the old codec, change, encode with the new one."""
        dropped, renames, fns = set(drop), dict(rename or {}), dict(transform or {})
        unknown = sorted((dropped | set(renames) | set(fns)) - set(self.manifest.stores))
        if unknown:
            raise SavepointError(f"rewrite names stores the savepoint does not have: {unknown} "
                                 f"(it has {self.stores})")
        names = [renames.get(n, n) for n in self.manifest.stores if n not in dropped]
        if len(names) != len(set(names)):
            raise SavepointError(f"rewrite would give two stores one name: {sorted(names)}")
        target = Path(to)
        tmp = fresh_dir(target)
        stores: dict[str, StoreInfo] = {}
        for name, info in self.manifest.stores.items():
            if name in dropped:
                continue
            new = renames.get(name, name)
            fn = fns.get(name)
            files = {}
            for p in sorted(info.files):
                records = read_records(store_file(self.root, name, p))
                if fn is not None:
                    records = _transformed(records, fn)
                files[p] = write_records(store_file(tmp, new, p), records)
            stores[new] = StoreInfo(info.subtopology, info.codec, info.changelog,
                                    info.partitions, info.time_store, files)
        for topic, inflight in self.manifest.inflight.items():
            for p in inflight.files:
                dest = inflight_file(tmp, topic, p)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(inflight_file(self.root, topic, p), dest)
        m = self.manifest
        manifest = Manifest(
            id=uuid.uuid4().hex, application_id=m.application_id, topology=m.topology,
            fingerprint=m.fingerprint, created_at_ms=m.created_at_ms, tasks=dict(m.tasks),
            source_offsets=m.source_offsets, stores=stores, inflight=m.inflight,
            watermarks=m.watermarks)
        return publish(tmp, target, manifest)


def _transformed(records: Iterator[SavedRecord],
                 fn: Callable[[bytes, bytes], bytes | None]) -> Iterator[SavedRecord]:
    for r in records:
        assert r.key is not None and r.value is not None  # store files hold live keys only
        value = fn(r.key, r.value)
        if value is not None:
            yield SavedRecord(r.key, value)


def fresh_dir(target: Path) -> Path:
    """The temporary directory a savepoint is built in beside ``target``, which must not hold
    anything yet: an existing savepoint is never overwritten."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise SavepointError(f"{target} already exists and is not empty: savepoints are never "
                             "overwritten; choose a new directory")
    tmp = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, target: Path, manifest: Manifest) -> Savepoint:
    """Write the manifest last and move the finished directory into place, so that a savepoint
    that exists under its name is complete."""
    path = tmp / MANIFEST
    with open(path, "wb") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())
    if target.exists():
        target.rmdir()  # empty (checked by fresh_dir)
    tmp.rename(target)
    return Savepoint(target, manifest)
