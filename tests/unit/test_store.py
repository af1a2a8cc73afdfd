"""KeyValueStore: RocksDB (real, local) behind a per-checkpoint write-back cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streamproc import codecs
from streamproc.errors import StreamprocError
from streamproc.state.store import KeyValueStore


def _store(path: Path, **kw) -> KeyValueStore:
    return KeyValueStore("counts", 3, path, codecs.json(), **kw)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "app" / "counts" / "3"


@pytest.fixture
def store(path: Path) -> Iterator[KeyValueStore]:
    s = _store(path)
    assert s.open() is False
    yield s
    s.close()


def _reopen(s: KeyValueStore) -> KeyValueStore:
    s.close()
    fresh = _store(s.path)
    assert fresh.open() is False
    return fresh


def _committed(s: KeyValueStore) -> dict[bytes, object]:
    return dict(s.items())


# -- lifecycle -------------------------------------------------------------------------------
def test_open_creates_an_empty_store(store, path):
    assert path.is_dir()
    assert (store.name, store.partition, store.path) == ("counts", 3, path)
    assert _committed(store) == {}
    assert store.changelog_offset == 0
    assert store.dirty_count == 0
    assert store.get(b"k") is None


def test_a_closed_store_refuses_access(path):
    s = _store(path)
    with pytest.raises(StreamprocError, match=r"store counts\[3\] is not open"):
        s.get(b"k")
    s.open()
    s.close()
    with pytest.raises(StreamprocError, match=r"store counts\[3\] is not open"):
        s.get(b"k")


# -- the write-back cache --------------------------------------------------------------------
def test_get_put_delete_through_the_cache(store):
    store.put(b"a", 1)
    store.put(b"b", {"x": [1, 2]})
    assert store.get(b"a") == 1
    assert store.get(b"b") == {"x": [1, 2]}
    store.put(b"a", 2)
    assert store.get(b"a") == 2
    store.delete(b"b")
    assert store.get(b"b") is None
    assert store.get(b"b", "dflt") == "dflt"
    assert store.get(b"missing", 0) == 0
    assert store.dirty_count == 2


def test_nothing_reaches_rocksdb_before_commit(store):
    store.put(b"a", 1)
    store.delete(b"b")
    assert store.db.get(b"a") is None
    assert _committed(store) == {}
    assert store.changelog_offset == 0


def test_prepare_returns_exactly_the_dirty_keys_encoded(store):
    store.put(b"a", 1)
    store.put(b"b", "two")
    store.put(b"c", [3])
    store.delete(b"c")
    store.delete(b"never-existed")
    store.put(b"a", 10)
    assert store.get(b"untouched") is None  # a read does not make a key dirty
    changes = store.prepare()
    assert sorted(changes, key=lambda kv: kv[0]) == [
        (b"a", b"10"), (b"b", b'"two"'), (b"c", None), (b"never-existed", None)]
    assert len(changes) == 4
    assert store.dirty_count == 4  # prepare does not clear; commit does


def test_prepare_with_nothing_dirty_is_empty(store):
    assert store.prepare() == []


def test_commit_writes_batch_and_changelog_offset(store):
    store.put(b"a", 1)
    store.put(b"b", 2)
    store.commit(store.prepare(), 17)
    assert store.dirty_count == 0
    assert store.prepare() == []
    assert store.db.get(b"a") == b"1"
    assert _committed(store) == {b"a": 1, b"b": 2}
    assert store.changelog_offset == 17


def test_commit_survives_reopen(store):
    store.put(b"a", 1)
    store.put(b"b", {"n": 2})
    store.commit(store.prepare(), 5)
    store.put(b"a", 3)
    store.delete(b"b")
    store.commit(store.prepare(), 9)
    store.put(b"c", "uncommitted")  # never committed: must not survive
    reopened = _reopen(store)
    try:
        assert _committed(reopened) == {b"a": 3}
        assert reopened.get(b"b") is None
        assert reopened.get(b"c") is None
        assert reopened.changelog_offset == 9
    finally:
        reopened.close()


def test_commit_without_offset_keeps_the_stored_offset(store):
    store.put(b"a", 1)
    store.commit(store.prepare(), 4)
    store.put(b"b", 2)
    store.commit(store.prepare(), None)
    assert store.changelog_offset == 4
    assert _committed(store) == {b"a": 1, b"b": 2}


def test_offset_is_stored_outside_the_data(store):
    store.commit([], 123)
    assert _committed(store) == {}
    assert store.changelog_offset == 123


def test_discard_drops_uncommitted_changes(store):
    store.put(b"a", 1)
    store.put(b"b", 2)
    store.commit(store.prepare(), 2)
    store.put(b"a", 100)
    store.delete(b"b")
    store.put(b"c", 3)
    store.discard()
    assert store.dirty_count == 0
    assert store.prepare() == []
    assert store.get(b"a") == 1
    assert store.get(b"b") == 2
    assert store.get(b"c") is None
    assert store.changelog_offset == 2


def test_reads_after_commit_with_a_tiny_cache_come_from_rocksdb(path):
    s = _store(path, cache_max_keys=1)
    s.open()
    try:
        s.put(b"a", 1)
        s.put(b"b", 2)
        s.commit(s.prepare(), 1)  # 2 cached keys > 1: the cache is dropped
        assert s.get(b"a") == 1
        assert s.get(b"b") == 2
    finally:
        s.close()


# -- restore ---------------------------------------------------------------------------------
def test_apply_changelog_applies_puts_and_tombstones(store):
    store.put(b"gone", 1)
    store.put(b"kept", 1)
    store.commit(store.prepare(), 2)
    store.apply_changelog([(b"x", b"10"), (b"gone", None), (b"y", b'"s"'), (b"x", b"11")], 7)
    assert _committed(store) == {b"kept": 1, b"x": 11, b"y": "s"}
    assert store.changelog_offset == 7
    store.apply_changelog([], 9)  # e.g. the end of the log after a transaction marker
    assert store.changelog_offset == 9
    reopened = _reopen(store)
    try:
        assert reopened.get(b"x") == 11
        assert reopened.get(b"gone") is None
        assert reopened.changelog_offset == 9
    finally:
        reopened.close()


def test_restore_into_a_fresh_store_equals_the_changelog(store, tmp_path):
    store.put(b"a", 1)
    store.put(b"b", 2)
    changelog = store.prepare()
    store.commit(changelog, len(changelog))
    store.delete(b"a")
    more = store.prepare()
    changelog += more
    store.commit(more, len(changelog))

    replica = KeyValueStore("counts", 3, tmp_path / "replica", codecs.json())
    replica.open()
    try:
        replica.apply_changelog(changelog, len(changelog))
        assert _committed(replica) == _committed(store) == {b"b": 2}
        assert replica.changelog_offset == store.changelog_offset == 3
    finally:
        replica.close()


# -- corruption and locking ------------------------------------------------------------------
def test_a_corrupt_store_is_wiped_and_reopened_empty(store, path):
    store.put(b"a", 1)
    store.commit(store.prepare(), 42)
    store.close()
    (path / "CURRENT").write_bytes(b"garbage\x00\xff")
    s = _store(path)
    try:
        assert s.open() is True
        assert _committed(s) == {}
        assert s.get(b"a") is None
        assert s.changelog_offset == 0
        s.put(b"b", 2)  # and it works normally afterwards
        s.commit(s.prepare(), 1)
        assert _committed(s) == {b"b": 2}
    finally:
        s.close()


def test_a_store_pointing_at_a_missing_manifest_is_wiped(store, path):
    store.put(b"a", 1)
    store.commit(store.prepare(), 42)
    store.close()
    (path / "CURRENT").write_bytes(b"MANIFEST-999999\n")
    s = _store(path)
    try:
        assert s.open() is True
        assert _committed(s) == {}
        assert s.changelog_offset == 0
    finally:
        s.close()


def test_wipe_deletes_the_database(store, path):
    store.put(b"a", 1)
    store.commit(store.prepare(), 3)
    store.wipe()
    assert not path.exists()
    assert store.open() is False
    assert _committed(store) == {}
    assert store.changelog_offset == 0


def test_opening_the_same_path_twice_is_a_lock_error(store, path):
    second = _store(path)
    with pytest.raises(StreamprocError) as info:
        second.open()
    assert str(info.value) == (
        f"state store {path} is locked by another process: two instances share one state "
        "dir; give each its own STREAMPROC_STATE_DIR")
    # The first store is untouched and still usable.
    store.put(b"a", 1)
    store.commit(store.prepare(), 1)
    assert store.get(b"a") == 1


def test_the_path_is_free_again_after_close(store, path):
    store.close()
    second = _store(path)
    try:
        assert second.open() is False
    finally:
        second.close()


def test_a_corrupt_store_under_a_path_containing_lock_is_wiped(tmp_path):
    path = tmp_path / "clock" / "blocks" / "0"
    s = KeyValueStore("blocks", 0, path, codecs.json())
    s.open()
    s.put(b"a", 1)
    s.commit(s.prepare(), 42)
    s.close()
    (path / "CURRENT").write_bytes(b"MANIFEST-999999\n")
    try:
        assert s.open() is True
        assert dict(s.items()) == {}
    finally:
        s.close()
