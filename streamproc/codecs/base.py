"""The codec contract: bytes on the wire <-> Python objects in operators."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Codec(Protocol):
    """Turns Kafka key/value bytes into Python objects and back.

    ``decode`` and ``encode`` raise :class:`streamproc.errors.CodecError` (or any exception, which
    the runtime wraps) for bad input; the source's error policy then decides what happens to the
    record. ``None`` (a null key, a tombstone) passes through unchanged unless a codec says
    otherwise.
    """

    name: str

    def decode(self, data: bytes | None) -> Any: ...

    def encode(self, obj: Any) -> bytes | None: ...
