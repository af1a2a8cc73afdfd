"""The store of a table read from a topic: that topic is its changelog.

RocksDB holds each row as the bytes the topic holds (not re-encoded): a restore copies them
from the topic unchanged, and decoding either one gives the same value whatever the codec
(a registry codec's bytes included). The offset stored with the rows is the table topic's
input offset committed in the same checkpoint, so "RocksDB == changelog applied up to the
stored offset" holds with the topic as the changelog.
"""

from __future__ import annotations

from typing import Any

from streamproc.state.store import KeyValueStore


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
