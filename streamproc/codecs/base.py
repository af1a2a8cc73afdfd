"""The codec contract: bytes on the wire <-> Python objects in operators."""

from __future__ import annotations

from collections.abc import Callable
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


# The hot loops call a codec once per record per direction. A codec may expose C-level
# callables equivalent to decode/encode for non-None input (``fast_decode``/``fast_encode``);
# operators then skip the Python-level method call. On any exception from a fast path the
# operator calls the real method again, which raises the codec's own CodecError (or returns the
# value), so error messages and policies are identical on both paths.
Converter = Callable[[Any], Any]


def _fast(codec: Codec, fast_name: str, method: str) -> Converter | None:
    # Only where the class that declares the fast path also declares the method: a subclass
    # overriding decode/encode must not be bypassed by an inherited fast path.
    for cls in type(codec).__mro__:
        if fast_name in cls.__dict__:
            same = getattr(type(codec), method) is cls.__dict__.get(method)
            fast: Converter | None = getattr(codec, fast_name) if same else None
            return fast
    return None


def fast_decoder(codec: Codec) -> Converter | None:
    return _fast(codec, "fast_decode", "decode")


def fast_encoder(codec: Codec) -> Converter | None:
    return _fast(codec, "fast_encode", "encode")
