"""Built-in codecs: raw bytes, UTF-8 strings, big-endian integers, JSON."""

from __future__ import annotations

import struct
from typing import Any

import orjson

from streamproc.errors import CodecError


class RawCodec:
    """Bytes in, bytes out: for pass-through topics and user-side parsing."""

    name = "raw"

    def decode(self, data: bytes | None) -> bytes | None:
        return data

    def encode(self, obj: Any) -> bytes | None:
        if obj is None or isinstance(obj, bytes):
            return obj
        if isinstance(obj, bytearray | memoryview):
            return bytes(obj)
        raise CodecError(self.name, f"expected bytes, got {type(obj).__name__}")


class StringCodec:
    """UTF-8 text (Kafka's StringSerde)."""

    name = "string"
    fast_decode = staticmethod(bytes.decode)
    fast_encode = staticmethod(str.encode)

    def decode(self, data: bytes | None) -> str | None:
        if data is None:
            return None
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise CodecError(self.name, f"not valid UTF-8: {exc}") from exc

    def encode(self, obj: Any) -> bytes | None:
        if obj is None:
            return None
        if not isinstance(obj, str):
            raise CodecError(self.name, f"expected str, got {type(obj).__name__}")
        try:
            return obj.encode()
        except UnicodeEncodeError as exc:  # a str holding lone surrogates ("\ud800")
            raise CodecError(self.name, f"not encodable as UTF-8: {exc}") from exc


class IntegerCodec:
    """Fixed-width big-endian signed integers, byte-compatible with Kafka's Long/IntegerSerde."""

    def __init__(self, size: int = 8) -> None:
        if size not in (4, 8):
            raise ValueError("integer codec size must be 4 or 8 bytes")
        self._size = size
        self._struct = struct.Struct(">q" if size == 8 else ">i")
        self.name = f"int{size * 8}"

    def decode(self, data: bytes | None) -> int | None:
        if data is None:
            return None
        if len(data) != self._size:
            raise CodecError(self.name, f"expected {self._size} bytes, got {len(data)}")
        value: int = self._struct.unpack(data)[0]
        return value

    def encode(self, obj: Any) -> bytes | None:
        if obj is None:
            return None
        if not isinstance(obj, int) or isinstance(obj, bool):
            raise CodecError(self.name, f"expected int, got {type(obj).__name__}")
        try:
            return self._struct.pack(obj)
        except struct.error as exc:
            raise CodecError(self.name, f"{obj} does not fit in {self._size} bytes") from exc


class JsonCodec:
    """JSON via orjson. Non-JSON values are bad input on decode and a user error on encode."""

    name = "json"
    fast_decode = staticmethod(orjson.loads)
    fast_encode = staticmethod(orjson.dumps)

    def decode(self, data: bytes | None) -> Any:
        if data is None:
            return None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise CodecError(self.name, f"invalid JSON: {exc}") from exc

    def encode(self, obj: Any) -> bytes | None:
        if obj is None:
            return None
        try:
            return orjson.dumps(obj)
        except TypeError as exc:
            raise CodecError(self.name, f"not JSON-serializable: {exc}") from exc
