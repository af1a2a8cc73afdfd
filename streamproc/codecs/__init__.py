"""Codecs chosen per source and sink: ``codecs.string()``, ``codecs.json()``, ...

Each factory returns a fresh codec object implementing :class:`Codec`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import pydantic

from streamproc.codecs.avro import AvroCodec, Framing, SchemaRef
from streamproc.codecs.base import Codec
from streamproc.codecs.basic import IntegerCodec, JsonCodec, RawCodec, StringCodec
from streamproc.codecs.model import PydanticCodec
from streamproc.codecs.registry import RegistryAvroCodec, SubjectStrategy, registry_client
from streamproc.codecs.schemas import AvroSchema, load_schema, model_for

M = TypeVar("M", bound=pydantic.BaseModel)

__all__ = [
    "AvroCodec",
    "AvroSchema",
    "Codec",
    "IntegerCodec",
    "JsonCodec",
    "PydanticCodec",
    "RawCodec",
    "RegistryAvroCodec",
    "StringCodec",
    "avro",
    "int32",
    "int64",
    "json",
    "load_schema",
    "model",
    "model_for",
    "raw",
    "registry_avro",
    "registry_client",
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


def avro(schema: SchemaRef, *, model: type[pydantic.BaseModel] | bool | None = None,
         writer: SchemaRef | None = None, previous: Sequence[SchemaRef] = (),
         framing: Framing = "plain", strict: bool = False) -> AvroCodec:
    """Avro with a declared schema (a file name in ``schemas/``, a path, or a dict), no registry.

    ``framing="plain"``: the bare body (``writer=`` when the data was written with an older
    schema); ``"single_object"``: Avro's single-object encoding with the writer's fingerprint,
    resolved against ``schema`` or any of ``previous=``. ``model=``: a pydantic model (checked
    against the schema's fields) or ``True`` to generate it from the schema; default dicts.
    """
    return AvroCodec(schema, model=model, writer=writer, previous=previous, framing=framing,
                     strict=strict)


def registry_avro(schema: SchemaRef, *, model: type[pydantic.BaseModel] | bool | None = None,
                  subject_strategy: SubjectStrategy | None = None,
                  auto_register: bool | None = None, registry: str | None = None,
                  strict: bool = False) -> RegistryAvroCodec:
    """Avro in the schema registry wire format (magic byte + schema id). ``schema`` is the
    reader schema (and the schema written); records written with an older compatible schema
    decode. The registry comes from the instance settings (``schema_registry_url``) unless
    ``registry=`` pins one; subject naming and auto-registration likewise."""
    return RegistryAvroCodec(schema, model=model, strict=strict,
                             subject_strategy=subject_strategy, auto_register=auto_register,
                             registry=registry)
