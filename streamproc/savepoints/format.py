"""The on-disk form of a savepoint, and the Python API that reads (and rewrites) one.

A savepoint is a directory::

    manifest.json                        what it holds (see :class:`Manifest`)
    stores/{store}/{partition}.records   the store's committed content, sorted by key
    inflight/{topic}/{partition}.records repartition records written but not yet consumed

Both kinds of ``.records`` file are the same framing (records.py). Keys and values are the
bytes the stores and changelogs hold, so a savepoint does not depend on the codecs it was
written with; decoding is the reader's choice (:meth:`StoreReader.items`).

A savepoint directory is input someone hands us: :meth:`Savepoint.open` checks every field of
the manifest (manifest.py) and that every file it lists resolves to a regular file inside the
directory, of the listed size, so that no name, ``..`` or symlink makes a reader (or
:meth:`Savepoint.rewrite`) touch anything outside it. Each file is resolved and checked again
when it is read, and opened without following a symlink.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from streamproc.codecs.base import Codec
from streamproc.names import name_problem
from streamproc.savepoints.manifest import (
    FORMAT,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    VERSION,
    FileInfo,
    InflightInfo,
    Manifest,
    SavepointError,
    StoreInfo,
    parse_manifest,
    show,
)
from streamproc.savepoints.records import (
    SavedRecord,
    open_regular,
    read_records,
    scan,
    sha256_of,
    write_records,
)

__all__ = ["FORMAT", "MANIFEST", "VERSION", "FileInfo", "InflightInfo", "Manifest",
           "SavedRecord", "Savepoint", "SavepointError", "StoreInfo", "StoreReader",
           "fresh_dir", "inflight_file", "publish", "read_records", "store_file",
           "write_records"]

_STORES, _INFLIGHT = "stores", "inflight"


def store_file(root: Path, store: str, partition: int) -> Path:
    return root / _STORES / store / f"{partition}.records"


def inflight_file(root: Path, topic: str, partition: int) -> Path:
    return root / _INFLIGHT / topic / f"{partition}.records"


def _resolved(root: Path) -> Path:
    try:
        return root.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python 3.11)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SavepointError(f"cannot read the savepoint at {root}: {reason} "
                             f"({root / MANIFEST})") from None


def _inside(root: Path, real_root: Path, rel: Path) -> tuple[Path, Path]:
    """``root / rel`` as it is named in messages, and resolved: it must stay under the real
    ``root`` whatever symlinks lie on the way (inside the savepoint or pointing out of it)."""
    label = root / rel
    try:
        real = label.resolve()
    except (OSError, RuntimeError) as exc:
        raise SavepointError(f"savepoint file {label} cannot be resolved: {exc}") from None
    if not real.is_relative_to(real_root):
        raise SavepointError(f"savepoint file {label} resolves to {real}, outside the "
                             f"savepoint {root}")
    return label, real


# -- reading ---------------------------------------------------------------------------------
class StoreReader:
    """One store of a savepoint. Keys and values are raw bytes unless codecs are given."""

    def __init__(self, savepoint: Savepoint, name: str, info: StoreInfo) -> None:
        self.name = name
        self.info = info
        self._sp = savepoint

    @property
    def partitions(self) -> list[int]:
        return sorted(self.info.files)

    def items(self, partition: int | None = None, *, key: Codec | None = None,
              value: Codec | None = None) -> Iterator[tuple[Any, Any]]:
        """(key, value) pairs of one partition or of all (partition by partition, each sorted
        by key bytes), decoded with ``key`` / ``value`` when given."""
        for p in self.partitions if partition is None else [partition]:
            if p not in self.info.files:
                raise SavepointError(f"store {self.name!r} has no partition {show(p)} "
                                     f"(it has {self.partitions})")
            for r in self._sp._records(_STORES, self.name, p, self.info.files[p]):
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
        self._real_root = _resolved(root)

    @classmethod
    def open(cls, path: str | Path) -> Savepoint:
        """The savepoint at ``path``, its manifest and its files' places and sizes checked
        (:meth:`verify` checks their content)."""
        root = Path(path)
        real_root = _resolved(root)
        if not real_root.is_dir():
            raise SavepointError(f"cannot read the savepoint at {root}: not a directory")
        label, real = _inside(root, real_root, Path(MANIFEST))
        try:
            f, size = open_regular(real, label, nofollow=True)
        except OSError as exc:
            raise SavepointError(f"cannot read the savepoint at {root}: "
                                 f"{exc.strerror or exc} ({label})") from None
        with f:
            if size > MAX_MANIFEST_BYTES:
                raise SavepointError(f"{label} is {size} bytes, more than a savepoint manifest "
                                     f"may have ({MAX_MANIFEST_BYTES})")
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        sp = cls(root, parse_manifest(raw, label))
        for kind, name, p, info in sp._files():
            sp._check(kind, name, p, info)
        return sp

    @property
    def stores(self) -> list[str]:
        return sorted(self.manifest.stores)

    def store(self, name: str) -> StoreReader:
        info = self.manifest.stores.get(name)
        if info is None:
            raise SavepointError(f"the savepoint has no store {show(name)} (it has "
                                 f"{self.stores})")
        return StoreReader(self, name, info)

    def inflight(self, topic: str, partition: int) -> Iterator[SavedRecord]:
        """The in-flight records of a repartition topic (named without the app id prefix)."""
        info = self.manifest.inflight.get(topic)
        if info is None:
            raise SavepointError(f"the savepoint has no in-flight records of {show(topic)} (it "
                                 f"has {sorted(self.manifest.inflight)})")
        if partition not in info.files:
            raise SavepointError(f"in-flight records of {topic!r} have no partition "
                                 f"{show(partition)} (they have {sorted(info.files)})")
        return self._records(_INFLIGHT, topic, partition, info.files[partition])

    def verify(self) -> None:
        """Check every file against the manifest: size, SHA-256, and that it is a well-formed
        records file holding the listed number of records (a checksum proves only that the
        file is the one the manifest describes, not that the manifest describes a valid one)."""
        for kind, name, p, info in self._files():
            label, f = self._open(kind, name, p, info)
            with f:
                # The checksum first, in large chunks: a corrupt file is reported as corrupt
                # rather than by whichever length field the damage hit. Then the structure,
                # from the same open file (so it cannot be swapped in between).
                if sha256_of(f) != info.sha256:
                    raise SavepointError(f"savepoint file {label} does not match its checksum "
                                         "in the manifest (corrupt or modified)")
                f.seek(0)
                for _ in scan(f, label, info.bytes, store=kind == _STORES,
                              records=info.records):
                    pass

    # -- files ---------------------------------------------------------------------------------
    def _files(self) -> Iterator[tuple[str, str, int, FileInfo]]:
        m = self.manifest
        for name, s in sorted(m.stores.items()):
            for p, f in sorted(s.files.items()):
                yield _STORES, name, p, f
        for topic, i in sorted(m.inflight.items()):
            for p, f in sorted(i.files.items()):
                yield _INFLIGHT, topic, p, f

    def _locate(self, kind: str, name: str, partition: int) -> tuple[Path, Path]:
        return _inside(self.root, self._real_root, Path(kind, name, f"{partition}.records"))

    def _check(self, kind: str, name: str, partition: int, info: FileInfo) -> None:
        label, real = self._locate(kind, name, partition)
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise SavepointError(f"savepoint file {label} is missing") from None
        except OSError as exc:
            raise SavepointError(f"cannot read savepoint file {label}: "
                                 f"{exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise SavepointError(f"savepoint file {label} is not a regular file")
        if st.st_size != info.bytes:
            raise self._size(label, st.st_size, info)

    @staticmethod
    def _size(label: Path, size: int, info: FileInfo) -> SavepointError:
        return SavepointError(f"savepoint file {label} is {size} bytes, the manifest lists "
                              f"{info.bytes} (truncated or modified)")

    def _open(self, kind: str, name: str, partition: int,
              info: FileInfo) -> tuple[Path, BinaryIO]:
        label, real = self._locate(kind, name, partition)  # again: it may have changed
        try:
            f, size = open_regular(real, label, nofollow=True)
        except FileNotFoundError:
            raise SavepointError(f"savepoint file {label} is missing") from None
        except OSError as exc:
            raise SavepointError(f"cannot read savepoint file {label}: "
                                 f"{exc.strerror or exc}") from None
        if size != info.bytes:
            f.close()
            raise self._size(label, size, info)
        return label, f

    def _records(self, kind: str, name: str, partition: int,
                 info: FileInfo) -> Iterator[SavedRecord]:
        # Checked now, so that a bad file fails the call; opened only when iterated, so that
        # an iterator never started holds no file open.
        self._check(kind, name, partition, info)

        def records() -> Iterator[SavedRecord]:
            label, f = self._open(kind, name, partition, info)
            with f:
                yield from scan(f, label, info.bytes, store=kind == _STORES,
                                records=info.records)

        return records()

    def _copy(self, kind: str, name: str, partition: int, info: FileInfo, dest: Path) -> None:
        _label, f = self._open(kind, name, partition, info)
        with f, open(dest, "wb") as out:
            shutil.copyfileobj(f, out)

    # -- rewriting -------------------------------------------------------------------------------
    def rewrite(self, to: str | Path, *, drop: Iterable[str] = (),
                rename: dict[str, str] | None = None,
                transform: dict[str, Callable[[bytes, bytes], bytes | None]] | None = None,
                ) -> Savepoint:
        """A new savepoint at ``to``: stores in ``drop`` left out, stores renamed by ``rename``
        (old -> new name), and each value of a store in ``transform`` replaced by
        ``fn(key, value)`` (raw bytes; return None to delete the key). The offsets, in-flight
        records and watermarks are kept; the copy gets a new id. A migration between versions
        of a topology: decode with the old codec, change, encode with the new one.

        This savepoint is verified first: a copy must not turn a corrupt file into one with a
        valid checksum."""
        if isinstance(drop, str | bytes):
            raise SavepointError(f"rewrite: drop must be a list of store names, not the string "
                                 f"{show(drop)}")
        dropped, renames, fns = set(drop), dict(rename or {}), dict(transform or {})
        unknown = sorted((dropped | set(renames) | set(fns)) - set(self.manifest.stores),
                         key=repr)
        if unknown:
            raise SavepointError(f"rewrite names stores the savepoint does not have: "
                                 f"[{', '.join(map(show, unknown))}] (it has {self.stores})")
        for old, new in sorted(renames.items()):
            problem = name_problem(new)
            if problem is not None:
                raise SavepointError(f"rewrite: cannot rename store {old!r}: the new name "
                                     f"{problem}")
        names = [renames.get(n, n) for n in self.manifest.stores if n not in dropped]
        if len(names) != len(set(names)):
            raise SavepointError(f"rewrite would give two stores one name: {sorted(names)}")
        self.verify()
        target = Path(to)
        tmp = fresh_dir(target)
        real_tmp = tmp.resolve()
        try:
            stores: dict[str, StoreInfo] = {}
            for name, info in self.manifest.stores.items():
                if name in dropped:
                    continue
                new = renames.get(name, name)
                fn = fns.get(name)
                files = {}
                for p in sorted(info.files):
                    records = self._records(_STORES, name, p, info.files[p])
                    if fn is not None:
                        records = _transformed(records, fn, name)
                    _, dest = _inside(tmp, real_tmp, Path(_STORES, new, f"{p}.records"))
                    files[p] = write_records(dest, records)
                stores[new] = StoreInfo(info.subtopology, info.codec, info.changelog,
                                        info.partitions, info.time_store, files)
            for topic, inflight in self.manifest.inflight.items():
                for p, f in inflight.files.items():
                    _, dest = _inside(tmp, real_tmp, Path(_INFLIGHT, topic, f"{p}.records"))
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    self._copy(_INFLIGHT, topic, p, f, dest)
            m = self.manifest
            manifest = Manifest(
                id=uuid.uuid4().hex, application_id=m.application_id, topology=m.topology,
                fingerprint=m.fingerprint, created_at_ms=m.created_at_ms, tasks=dict(m.tasks),
                source_offsets=m.source_offsets, stores=stores, inflight=m.inflight,
                watermarks=m.watermarks)
            return publish(tmp, target, manifest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # no half-written copy beside the target
            raise


def _transformed(records: Iterator[SavedRecord], fn: Callable[[bytes, bytes], bytes | None],
                 store: str) -> Iterator[SavedRecord]:
    for r in records:
        assert r.key is not None and r.value is not None  # scan(store=True) refuses nulls
        value = fn(r.key, r.value)
        if value is not None and not isinstance(value, bytes):
            raise SavepointError(f"rewrite: the transform of store {store!r} returned "
                                 f"{type(value).__name__} for key {show(r.key)}; it must return "
                                 "bytes, or None to delete the key")
        if value is not None:
            yield SavedRecord(r.key, value)


def fresh_dir(target: Path) -> Path:
    """The temporary directory a savepoint is built in beside ``target``, which must not hold
    anything yet: an existing savepoint is never overwritten."""
    if target.name in ("", ".", ".."):
        raise SavepointError(f"{target} cannot be a savepoint directory: name a new directory")
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
