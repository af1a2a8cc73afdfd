"""A keyed state store of one task: RocksDB behind a per-checkpoint write-back cache.

Reads go through the cache to RocksDB; writes stay in the cache until the checkpoint. At the
barrier :meth:`prepare` encodes each dirty key once (for the changelog); only after the Kafka
commit succeeds does :meth:`commit` write them to RocksDB in one atomic WriteBatch together with
the changelog offset they reflect. So RocksDB always holds a committed prefix of the changelog,
and "RocksDB content == changelog applied up to the stored offset" holds at every instant.
"""

from __future__ import annotations

import shutil
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import rocksdict
import structlog

from streamproc.codecs.base import Codec
from streamproc.errors import DiskFull, InfrastructureError, StreamprocError, is_disk_full
from streamproc.runtime.statedir import store_dir_problem

log = structlog.get_logger(__name__)

_META_CF = "meta"
_CHANGELOG_OFFSET = b"changelog-next-offset"
_OFFSET = struct.Struct(">q")
_MISSING: Any = object()
_DELETED: Any = object()


class StoreCorrupted(StreamprocError):
    pass


class StoreNotOpen(StreamprocError):
    """A read from another thread found the store closed (revoked, recovering, shut down)."""


class StateSchemaError(InfrastructureError):
    """Stored values no longer decode with the store's codec: the deployment changed a state
    value's schema incompatibly (docs/schemas.md, "State"). Never a record's fault, so never
    dead-lettered: the instance stops naming the store."""


# How many stored values a task decodes when it starts (after restore): enough to catch a
# changed schema before the first record, without reading the whole store.
CHECK_SAMPLE = 256


class KeyValueStore:
    """State of one store for one partition: ``{state_dir}/{app}/{store}/{partition}``.

    ``cache`` (key bytes -> value, or ``DELETED``) and ``dirty`` (keys changed since the last
    checkpoint) are public for the operators' hot loops, which touch them directly instead of
    paying a method call per record; ``get`` is the miss path.

    Queryable state (streamproc/ops/query.py) reads from the HTTP thread through
    :meth:`read_committed` and :meth:`scan` only: they read RocksDB, never the cache, so they see
    committed state (as of the last checkpoint; never a value an abort could roll back). Those
    two and :meth:`close` take ``_read_lock``, so the loop never closes or wipes the database
    under a running read; the hot path (``get``/``put``/the cache) never takes it.
    """

    DELETED: Any = _DELETED

    def __init__(self, name: str, partition: int, path: Path, codec: Codec,
                 *, cache_max_keys: int = 200_000) -> None:
        self.name = name
        self.partition = partition
        self.path = path
        self.codec = codec
        self.cache_max_keys = cache_max_keys
        self.cache: dict[bytes, Any] = {}
        self.dirty: set[bytes] = set()
        self._db: rocksdict.Rdict | None = None
        self._meta_handle: Any = None
        self._meta: rocksdict.Rdict | None = None
        self._read_lock = threading.Lock()
        # Set once a write found the disk full: RocksDB then fails every later call on this
        # database (close included, "Writer has previous error"), which says nothing new.
        self.disk_full = False

    # -- lifecycle -----------------------------------------------------------------------
    def open(self) -> bool:
        """Open (or create) the database. A corrupt database is wiped, to be rebuilt from the
        changelog; returns True when that happened."""
        try:
            self._open_db()
            return False
        except Exception as exc:
            # RocksDB raises plain Exceptions; only corruption-like failures are recoverable by a
            # rebuild. A lock held by another process is a configuration error, not corruption;
            # a full disk is neither (wiping would only turn it into a full rebuild that fills
            # the disk again): the instance stops and the database stays as it is.
            if is_disk_full(exc):
                raise self._no_space(exc) from exc
            text = str(exc)
            # Match RocksDB's own lock failures, not any path that happens to contain "lock".
            if "/LOCK:" in text or "lock hold by" in text:
                raise StreamprocError(
                    f"state store {self.path} is locked by another process: two instances "
                    "share one state dir; give each its own STREAMPROC_STATE_DIR") from exc
            log.warning("state.store_corrupt_wiped", store=self.name, partition=self.partition,
                        path=str(self.path), error=str(exc))
            self.wipe()
            try:
                self._open_db()
            except Exception as again:
                if is_disk_full(again):
                    raise self._no_space(again) from again
                raise
            return True

    def _no_space(self, exc: BaseException) -> DiskFull:
        self.disk_full = True
        return DiskFull(self.path, exc, store=self.name, partition=self.partition)

    def _write(self, batch: rocksdict.WriteBatch) -> None:
        try:
            self.db.write(batch)
        except Exception as exc:
            if is_disk_full(exc):
                raise self._no_space(exc) from exc
            raise

    def _open_db(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.create_missing_column_families(True)
        self._db = rocksdict.Rdict(str(self.path), options=opts,
                                   column_families={_META_CF: rocksdict.Options(raw_mode=True)})
        self._meta_handle = self._db.get_column_family_handle(_META_CF)
        self._meta = self._db.get_column_family(_META_CF)

    def wipe(self) -> None:
        """Delete the local database entirely (it is rebuilt from the changelog)."""
        self.close()
        # Only ever a {store}/{partition} directory inside the application's state dir: a path
        # built from a bad name must not turn a rebuild into deleting someone else's files.
        problem = store_dir_problem(self.path, self.name, self.partition)
        if problem is not None:
            raise StreamprocError(f"refusing to delete the state of store {self.name!r} "
                                  f"partition {self.partition}: {problem}")
        shutil.rmtree(self.path, ignore_errors=True)

    def close(self) -> None:
        self.cache.clear()
        self.dirty.clear()
        with self._read_lock:  # waits for a query reading from another thread
            if self._db is not None:
                # Column-family handles keep the DB alive (and its LOCK held); drop them first.
                self._meta_handle = None
                self._meta = None
                db, self._db = self._db, None
                try:
                    db.close()
                except Exception as exc:
                    # What was written is in the WAL already; a close that fails loses nothing
                    # committed (the next open recovers the WAL), so it must not hide the error
                    # that made the instance stop.
                    (log.debug if self.disk_full or is_disk_full(exc) else log.warning)(
                        "state.close_failed", store=self.name, partition=self.partition,
                        path=str(self.path), error=str(exc))

    @property
    def is_open(self) -> bool:
        return self._db is not None

    @property
    def db(self) -> rocksdict.Rdict:
        if self._db is None:
            raise StreamprocError(f"store {self.name}[{self.partition}] is not open")
        return self._db

    # -- the changelog offset ------------------------------------------------------------
    @property
    def changelog_offset(self) -> int:
        """The next changelog offset to restore from (0 when nothing was ever restored)."""
        assert self._meta is not None
        raw = self._meta.get(_CHANGELOG_OFFSET)
        return 0 if raw is None else int(_OFFSET.unpack(raw)[0])

    # -- record access (the hot path) -----------------------------------------------------
    def get(self, key: bytes, default: Any = None) -> Any:
        value = self.cache.get(key, _MISSING)
        if value is _MISSING:
            raw = self.db.get(key)
            if raw is None:
                value = _DELETED
            else:
                try:
                    value = self.codec.decode(raw)
                except Exception as exc:
                    raise self._undecodable(key, exc) from exc
            self.cache[key] = value
        return default if value is _DELETED else value

    def put(self, key: bytes, value: Any) -> None:
        self.cache[key] = value
        self.dirty.add(key)

    def delete(self, key: bytes) -> None:
        self.cache[key] = _DELETED
        self.dirty.add(key)

    @property
    def dirty_count(self) -> int:
        return len(self.dirty)

    # -- checkpoint ------------------------------------------------------------------------
    def prepare(self) -> list[tuple[bytes, bytes | None]]:
        """Encode every key changed since the last checkpoint, once: the changelog records and,
        after the commit, the RocksDB batch. ``None`` is a deletion (a changelog tombstone)."""
        cache = self.cache
        encode = self.codec.encode
        out: list[tuple[bytes, bytes | None]] = []
        for key in self.dirty:
            value = cache[key]
            try:
                out.append((key, None if value is _DELETED else encode(value)))
            except Exception as exc:
                # A state value the store's codec cannot encode is a bug in the topology, not
                # bad input: stop with a message that names the store and the key.
                raise StreamprocError(
                    f"store {self.name!r}: the value for key {key!r} cannot be encoded with "
                    f"{self.codec.name}: {exc}; declare a codec for it with state=...") from exc
        return out

    def commit(self, changes: list[tuple[bytes, bytes | None]], changelog_next: int | None) -> None:
        """Write committed changes and the changelog offset they reflect in one atomic batch."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, raw in changes:
            if raw is None:
                batch.delete(key)
            else:
                batch.put(key, raw)
        if changelog_next is not None:
            batch.put(_CHANGELOG_OFFSET, _OFFSET.pack(changelog_next), self._meta_handle)
        self._write(batch)
        self.dirty.clear()
        if len(self.cache) > self.cache_max_keys:
            self.cache.clear()

    def discard(self) -> None:
        """Forget uncommitted changes (after an abort): RocksDB still holds the last commit."""
        self.cache.clear()
        self.dirty.clear()

    # -- restore ---------------------------------------------------------------------------
    def apply_changelog(self, records: list[tuple[bytes, bytes | None]], next_offset: int) -> None:
        """Apply a batch of changelog records (many per WriteBatch, never one each)."""
        self.commit(records, next_offset)

    @staticmethod
    def restore_batch() -> rocksdict.WriteBatch:
        """An empty batch the restorer fills straight from consumed changelog records (``put``,
        ``delete`` for a tombstone): no intermediate list on the restore hot path."""
        return rocksdict.WriteBatch(raw_mode=True)

    def apply_restore_batch(self, batch: rocksdict.WriteBatch, next_offset: int) -> None:
        """Write a filled restore batch together with the changelog offset it reaches."""
        batch.put(_CHANGELOG_OFFSET, _OFFSET.pack(next_offset), self._meta_handle)
        self._write(batch)

    def check_values(self, limit: int = CHECK_SAMPLE) -> int:
        """Decode up to ``limit`` stored values (in key order): a store written with a schema
        the codec can no longer read fails here, at start, naming the store, instead of deep in
        an operator on the first record that touches such a key. Returns how many were read."""
        n = 0
        for key, raw in self.db.items():
            if n >= limit:
                break
            assert isinstance(key, bytes)  # raw mode
            try:
                self.codec.decode(raw)
            except Exception as exc:
                raise self._undecodable(key, exc) from exc
            n += 1
        return n

    def _undecodable(self, key: bytes, exc: BaseException) -> StateSchemaError:
        return StateSchemaError(
            f"state store {self.name!r} (partition {self.partition}): a stored value for key "
            f"{key[:60]!r} does not decode with {self.codec.name}: {exc}. The topology changed "
            "the store's value schema incompatibly with what earlier deployments wrote; make "
            "the change compatible (docs/schemas.md, State), migrate the state through a "
            "savepoint, or reset the application")

    # -- reads from other threads (queryable state) ----------------------------------------
    def read_committed(self, key: bytes) -> Any:
        """The committed value of ``key`` (None when absent). Safe from any thread; raises
        :class:`StoreNotOpen` once the loop has closed the store."""
        with self._read_lock:
            db = self._db
            if db is None:
                raise StoreNotOpen(f"store {self.name}[{self.partition}] is not open")
            raw = db.get(key)
        return None if raw is None else self.codec.decode(raw)

    def scan(self, start: bytes | None = None, stop: bytes | None = None,
             prefix: bytes | None = None, limit: int = 100,
             keep: Callable[[bytes], bool] | None = None) -> list[tuple[bytes, Any]]:
        """Committed entries in key order: keys in ``[start, stop)`` beginning with ``prefix``
        and passing ``keep``, at most ``limit`` of them, decoded. Safe from any thread; raises
        :class:`StoreNotOpen` once the loop has closed the store.

        A list, not a generator: the lock must not stay held across yields that the caller
        controls. One RocksDB iterator reads one consistent version, so the entries come from
        one checkpoint (each checkpoint is one atomic WriteBatch)."""
        if prefix is not None and (start is None or start < prefix):
            start = prefix
        raws: list[tuple[bytes, bytes]] = []
        with self._read_lock:
            db = self._db
            if db is None:
                raise StoreNotOpen(f"store {self.name}[{self.partition}] is not open")
            it = db.iter()
            if start is None:
                it.seek_to_first()
            else:
                it.seek(start)
            while it.valid() and len(raws) < limit:
                key = it.key()
                if (stop is not None and key >= stop) or (
                        prefix is not None and not key.startswith(prefix)):
                    break
                if keep is None or keep(key):
                    raws.append((key, it.value()))
                it.next()
            del it  # before the lock is released: an iterator pins the database
        # Decoding needs no lock: the bytes are ours.
        return [(k, self.codec.decode(v)) for k, v in raws]

    def scan_ranges(self, ranges: list[tuple[bytes | None, bytes | None]], limit: int,
                    keep: Callable[[bytes], bool] | None = None, max_scan: int = 100_000
                    ) -> tuple[list[tuple[bytes, Any]], bytes | None]:
        """Like :meth:`scan` over the key ranges ``[start, stop)`` in the given order, reading
        at most ``max_scan`` entries however few pass ``keep``: the read lock (which a revoke
        waits for) is held for a bounded time whatever a request asks. Returns the entries and,
        when the budget ran out first, the key of the first entry not read (None otherwise).
        One iterator, one checkpoint, as for :meth:`scan`."""
        raws: list[tuple[bytes, bytes]] = []
        scanned = 0
        resume: bytes | None = None
        with self._read_lock:
            db = self._db
            if db is None:
                raise StoreNotOpen(f"store {self.name}[{self.partition}] is not open")
            it = db.iter()
            for start, stop in ranges:
                if start is None:
                    it.seek_to_first()
                else:
                    it.seek(start)
                while it.valid() and len(raws) < limit:
                    key = it.key()
                    if stop is not None and key >= stop:
                        break
                    if scanned >= max_scan:
                        resume = key
                        break
                    scanned += 1
                    if keep is None or keep(key):
                        raws.append((key, it.value()))
                    it.next()
                if resume is not None or len(raws) >= limit:
                    break
            del it  # before the lock is released: an iterator pins the database
        return [(k, self.codec.decode(v)) for k, v in raws], resume

    def items(self) -> Iterator[tuple[bytes, Any]]:
        """Committed content, decoded (for tests and state inspection)."""
        for key, raw in self.db.items():
            assert isinstance(key, bytes)  # raw mode
            yield key, self.codec.decode(raw)
