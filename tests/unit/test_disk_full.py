"""A full state disk: recognised in every form it takes, never mistaken for corruption (no wipe),
and reported as one DiskFull naming the store's path. The real kernel ENOSPC is exercised by
tests/integration/test_disk_full.py; here RocksDB's failures are the exact texts it raised
there, injected."""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Any

import pytest

from streamproc import codecs
from streamproc.errors import DiskFull, is_disk_full
from streamproc.runtime.statedir import StateDir
from streamproc.state.store import KeyValueStore

# What rocksdict raised on an 8 MiB tmpfs filled to the last byte.
ROCKSDB_WRITE = ("IO error: No space left on device: While appending to file: "
                 "/s/app/counts/0/000004.log: No space left on device")
ROCKSDB_OPEN = "No space left on device (os error 28)"
ROCKSDB_CLOSE = "IO error: Writer has previous error.; IO error: Writer has previous error."


@pytest.mark.parametrize("exc", [
    Exception(ROCKSDB_WRITE), Exception(ROCKSDB_OPEN),
    OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EDQUOT, "quota"),
    Exception("IO error: Disk quota exceeded (os error 122)"),
])
def test_full_disks_are_recognised(exc: BaseException) -> None:
    assert is_disk_full(exc)


@pytest.mark.parametrize("exc", [
    Exception("Corruption: bad block contents"), Exception("IO error: lock hold by current "
                                                           "process"),
    OSError(errno.EACCES, "Permission denied"), Exception(ROCKSDB_CLOSE),
])
def test_other_failures_are_not(exc: BaseException) -> None:
    assert not is_disk_full(exc)


def _store(tmp_path: Path) -> KeyValueStore:
    return KeyValueStore("counts", 0, tmp_path / "app" / "counts" / "0", codecs.json())


class _FullDb:
    """A database on a disk that just filled up: writes fail, and so does closing it."""

    def __init__(self, db: Any) -> None:
        self._db = db

    def write(self, batch: Any) -> None:
        raise Exception(ROCKSDB_WRITE)

    def close(self) -> None:
        self._db.close()
        raise Exception(ROCKSDB_CLOSE)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_a_failed_write_back_is_one_disk_full_naming_the_store(tmp_path: Path) -> None:
    s = _store(tmp_path)
    s.open()
    s.commit([(b"a", b"1")], 5)
    s.put(b"a", 2)
    s._db = _FullDb(s._db)  # type: ignore[assignment]
    with pytest.raises(DiskFull) as raised:
        s.commit(s.prepare(), 9)
    assert (raised.value.path, raised.value.store, raised.value.partition) == (s.path, "counts", 0)
    assert str(s.path) in str(raised.value) and "No space left on device" in str(raised.value)
    assert s.disk_full
    s.close()  # the close RocksDB refuses after that is not a second error
    # Nothing of the failed batch landed: the store is the committed prefix, its offset with it.
    s.open()
    assert dict(s.items()) == {b"a": 1} and s.changelog_offset == 5
    s.close()


def test_opening_on_a_full_disk_stops_without_wiping(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    s = _store(tmp_path)
    s.open()
    s.commit([(b"a", b"1")], 3)
    s.close()

    def full(self: KeyValueStore) -> None:
        raise Exception(ROCKSDB_OPEN)

    monkeypatch.setattr(KeyValueStore, "_open_db", full)
    with pytest.raises(DiskFull, match="store 'counts', partition 0"):
        s.open()
    monkeypatch.undo()
    s.open()  # the database is still there: a full disk is not corruption
    assert dict(s.items()) == {b"a": 1} and s.changelog_offset == 3
    s.close()


def test_the_state_dir_lock_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    d = StateDir(tmp_path, "app")
    real_open = open

    class _Full:
        def __init__(self, f: Any) -> None:
            self._f = f

        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self._f, name)

    monkeypatch.setattr("builtins.open", lambda *a, **k: _Full(real_open(*a, **k)))
    with pytest.raises(DiskFull) as raised:
        d.lock()
    monkeypatch.undo()
    assert raised.value.path == tmp_path / "app" / ".lock"
    d.unlock()  # released: another instance (the restart) can take it
    d.lock()
    d.unlock()


def _fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 16, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)


def test_rocksdb_on_a_really_full_disk(small_disk: Path) -> None:
    """Opening a new store, and reopening one whose WAL must be flushed to a table file, on a
    disk without a byte left: DiskFull naming the store, and nothing wiped."""
    old = KeyValueStore("counts", 0, small_disk / "app" / "counts" / "0", codecs.json())
    old.open()
    old.commit([(b"k%d" % i, b"%d" % i) for i in range(1000)], 1000)
    old.close()
    files = {p.name for p in old.path.iterdir()}
    _fill(small_disk / "filler")

    with pytest.raises(DiskFull) as raised:
        old.open()
    assert (raised.value.store, raised.value.partition, raised.value.path) == \
        ("counts", 0, old.path)
    assert {p.name for p in old.path.iterdir()} >= files  # not wiped
    new = KeyValueStore("counts", 1, small_disk / "app" / "counts" / "1", codecs.json())
    with pytest.raises(DiskFull, match=r"counts/1 \(store 'counts', partition 1\)"):
        new.open()

    (small_disk / "filler").unlink()
    old.open()
    assert len(dict(old.items())) == 1000 and old.changelog_offset == 1000
    old.close()
