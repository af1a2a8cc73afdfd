"""The store of a table read from a topic: that topic is its changelog.

RocksDB holds each row as the bytes the topic holds (not re-encoded): a restore copies them
from the topic unchanged, and decoding either one gives the same value whatever the codec
(a registry codec's bytes included). The offset stored with the rows is the table topic's
input offset committed in the same checkpoint, so "RocksDB == changelog applied up to the
stored offset" holds with the topic as the changelog.
"""

from __future__ import annotations

from typing import Any

from streamproc.state.store import _OFFSET, KeyValueStore


class SourceTableStore(KeyValueStore):
    """``written`` holds, per key changed since the checkpoint, the consumed record's bytes
    (``None`` for a tombstone); the table operator fills it beside ``cache`` and ``dirty``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.written: dict[bytes, bytes | None] = {}

    def prepare(self) -> list[tuple[bytes, bytes | None]]:
        deleted, cache, written = self.DELETED, self.cache, self.written
        out: list[tuple[bytes, bytes | None]] = []
        for key in self.dirty:
            out.append((key, None if cache.get(key) is deleted else written[key]))
        return out

    def commit(self, changes: list[tuple[bytes, bytes | None]], changelog_next: int | None) -> None:
        super().commit(changes, changelog_next)
        self.written.clear()

    def discard(self) -> None:
        super().discard()
        self.written.clear()

    def close(self) -> None:
        super().close()
        self.written.clear()


_GLOBAL_OFFSET = b"global-next-offset:"


class GlobalTableStore(KeyValueStore):
    """A global table's rows (every partition of its topic) in one database, with the next
    offset to read per partition of the topic. Written straight from the topic in batches
    (no checkpoint: a global table is not part of any task's transaction); read by every task
    of the instance through ``get`` and its cache, which each applied batch keeps current."""

    def offsets(self) -> dict[int, int]:
        assert self._meta is not None
        out: dict[int, int] = {}
        for key, raw in self._meta.items(from_key=_GLOBAL_OFFSET):
            assert isinstance(key, bytes)
            if not key.startswith(_GLOBAL_OFFSET):
                break
            out[int(key[len(_GLOBAL_OFFSET):])] = int(_OFFSET.unpack(raw)[0])
        return out

    def apply(self, rows: list[tuple[bytes, bytes | None]], offsets: dict[int, int]) -> None:
        """Write rows (``None``: delete) and the partitions' next offsets in one batch; the
        cache forgets the keys written (it is read-through, never written ahead)."""
        batch = self.restore_batch()
        cache = self.cache
        for key, raw in rows:
            if raw is None:
                batch.delete(key)
            else:
                batch.put(key, raw)
            cache.pop(key, None)
        for partition, offset in offsets.items():
            batch.put(_GLOBAL_OFFSET + str(partition).encode(), _OFFSET.pack(offset),
                      self._meta_handle)
        self._write(batch)
        if len(cache) > self.cache_max_keys:
            cache.clear()
