"""Codecs chosen per source and sink: ``codecs.string()``, ``codecs.json()``, ...

Each factory returns a fresh codec object implementing :class:`Codec`.
"""

from __future__ import annotations

from typing import TypeVar

import pydantic

from streamproc.codecs.base import Codec
from streamproc.codecs.basic import IntegerCodec, JsonCodec, RawCodec, StringCodec
from streamproc.codecs.model import PydanticCodec

M = TypeVar("M", bound=pydantic.BaseModel)

__all__ = [
    "Codec",
    "IntegerCodec",
    "JsonCodec",
    "PydanticCodec",
    "RawCodec",
    "StringCodec",
    "int32",
    "int64",
    "json",
    "model",
    "raw",
    "string",
]


def raw() -> RawCodec:
    return RawCodec()


def string() -> StringCodec:
    return StringCodec()


def int64() -> IntegerCodec:
    return IntegerCodec(8)


def int32() -> IntegerCodec:
    return IntegerCodec(4)


def json() -> JsonCodec:
    return JsonCodec()


def model(model_type: type[M], *, strict: bool = False) -> PydanticCodec[M]:
    """A pydantic model validated from (and serialized to) JSON."""
    return PydanticCodec(model_type, strict=strict)
