"""The layout of window state in a store.

Key: ``start`` and ``end`` (big-endian signed 64-bit) followed by the group key's bytes, so one
key's windows are distinct entries that are written, closed and deleted independently.

Value: a fixed header (fired flag, record count, first and last record timestamps) followed by
the accumulator encoded with the operator's state codec (JSON unless declared). The header is
what count, session and global windows need to know their bounds, and what ``late="update"``
needs to know that a window's final result was already emitted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from streamproc.codecs.base import Codec
from streamproc.errors import CodecError

_KEY = struct.Struct(">qq")
_HEADER = struct.Struct(">Bqqq")
_NULL_ACC = 2


def window_key(start: int, end: int, key: bytes) -> bytes:
    return _KEY.pack(start, end) + key


def split_window_key(raw: bytes) -> tuple[int, int, bytes]:
    start, end = _KEY.unpack_from(raw)
    return start, end, raw[_KEY.size:]


@dataclass(slots=True)
class WindowState:
    acc: Any
    count: int = 0
    first: int = 0  # timestamp of the earliest record in the window
    last: int = 0  # of the latest
    fired: bool = False  # the final result was emitted (kept only for late corrections)


class WindowStateCodec:
    """Encodes :class:`WindowState` with the accumulator in the user's (or the default) codec."""

    def __init__(self, inner: Codec) -> None:
        self.inner = inner
        self.name = f"window({inner.name})"

    def encode(self, state: WindowState) -> bytes:
        acc = self.inner.encode(state.acc)
        # Codecs pass None through as None (no bytes): flag it rather than write b"".
        flags = state.fired | (_NULL_ACC if acc is None else 0)
        return _HEADER.pack(flags, state.count, state.first, state.last) + (acc or b"")

    def decode(self, data: bytes | None) -> WindowState:
        if data is None or len(data) < _HEADER.size:
            raise CodecError(self.name, "window state is truncated")
        flags, count, first, last = _HEADER.unpack_from(data)
        acc = None if flags & _NULL_ACC else self.inner.decode(data[_HEADER.size:])
        return WindowState(acc, count, first, last, bool(flags & 1))
