"""Avro with a declared schema (fastavro): plain (schemaless) or Avro single-object encoding.

- ``framing="plain"``: the record body only; both sides must know the writer schema
  (``writer=`` names it when it differs from the reader schema).
- ``framing="single_object"``: Avro's own single-object encoding, ``C3 01`` + the 8-byte
  CRC-64-AVRO fingerprint of the writer schema + the body. The reader resolves each record
  against the writer schema with that fingerprint among the current and ``previous=`` schemas.
  This is the default for state stores: a stored value names the schema it was written with, so
  a store survives a compatible schema change, and an unknown writer is a clear error.

Values map to dicts, or to a pydantic model (``model=``; ``model=True`` generates it from the
schema). Every failure is a :class:`CodecError`: the source's error policy decides.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from io import BytesIO
from typing import Any, Literal

import pydantic
from fastavro import schemaless_reader, schemaless_writer
from fastavro.validation import validate

from streamproc.codecs.schemas import AvroSchema, check_model, load_schema, model_for
from streamproc.errors import CodecError

SchemaRef = str | os.PathLike[str] | dict[str, Any] | AvroSchema
Framing = Literal["plain", "single_object"]
SINGLE_OBJECT_MAGIC = b"\xc3\x01"


def resolve_model(model: type[pydantic.BaseModel] | bool | None,
                  schema: AvroSchema) -> type[pydantic.BaseModel] | None:
    if model is True:
        return model_for(schema)
    if model is None or model is False:
        return None
    check_model(model, schema)
    return model


def describe_error(exc: BaseException) -> str:
    """``Type: message`` without object addresses: dead-letter headers must be the same bytes
    when a record is reprocessed after a crash."""
    # One line: fastavro's validation errors are an indented JSON list.
    return " ".join(_ADDRESS.sub("", f"{type(exc).__name__}: {exc}").split())


_ADDRESS = re.compile(r" (?:from|at) <[^>]*>| at 0x[0-9a-fA-F]+")


class AvroRecords:
    """The part every Avro codec shares: body encoding/decoding, schema resolution and the
    mapping to models. ``read``/``write`` raise plain exceptions; codecs wrap them."""

    def __init__(self, schema: AvroSchema, model: type[pydantic.BaseModel] | None,
                 strict: bool) -> None:
        self.schema = schema
        self.model = model
        self.strict = strict

    def read(self, data: bytes | memoryview, writer: AvroSchema) -> Any:
        fo = BytesIO(data)
        reader = None if writer is self.schema else self.schema.parsed
        obj = schemaless_reader(fo, writer.parsed, reader)
        if fo.tell() != len(data):
            # A body that decodes but leaves bytes over was written with another schema.
            raise ValueError(f"{len(data) - fo.tell()} bytes left over after the record: "
                             "written with a different schema?")
        if self.model is not None:
            return self.model.model_validate(obj, strict=self.strict)
        return obj

    def write(self, obj: Any, fo: BytesIO) -> None:
        if isinstance(obj, pydantic.BaseModel):
            if self.model is not None and not isinstance(obj, self.model):
                raise TypeError(f"expected {self.model.__name__}, got {type(obj).__name__}")
            obj = obj.model_dump()
        # The writer coerces instead of checking (1.5 -> 1 for an int, "x" -> true for a
        # boolean, 2**40 into an int): validate first, so a wrong type is an error, not data.
        validate(obj, self.schema.parsed, raise_errors=True)
        # strict_allow_default: a misspelt or extra field is an error, not silently dropped;
        # a field left out is filled from its schema default.
        schemaless_writer(fo, self.schema.parsed, obj, strict_allow_default=True)


class AvroCodec:
    """Avro with a schema declared in the topology (no registry)."""

    def __init__(self, schema: SchemaRef, *, writer: SchemaRef | None = None,
                 previous: Sequence[SchemaRef] = (), framing: Framing = "plain",
                 model: type[pydantic.BaseModel] | bool | None = None,
                 strict: bool = False) -> None:
        if framing not in ("plain", "single_object"):
            raise ValueError(f"framing must be 'plain' or 'single_object', not {framing!r}")
        s = load_schema(schema)
        self.records = AvroRecords(s, resolve_model(model, s), strict)
        self.schema = s
        self.framing = framing
        self.writer = load_schema(writer) if writer is not None else s
        # Known writers by fingerprint: the current schema wins over a previous identical one.
        self.writers = {p.fingerprint: p for p in map(load_schema, previous)}
        self.writers[s.fingerprint] = s
        self.name = f"avro:{s.name}" if framing == "plain" else f"avro-single:{s.name}"

    @property
    def model(self) -> type[pydantic.BaseModel] | None:
        """The pydantic model values decode to (generated with ``model=True``)."""
        return self.records.model

    def decode(self, data: bytes | None) -> Any:
        if data is None:
            return None
        writer = self.writer
        body: bytes | memoryview = data
        if self.framing == "single_object":
            if len(data) < 10 or data[:2] != SINGLE_OBJECT_MAGIC:
                raise CodecError(self.name, "not Avro single-object encoded (no C3 01 header)")
            found = self.writers.get(data[2:10])
            if found is None:
                raise CodecError(self.name, f"written with an unknown schema (fingerprint "
                                 f"{data[2:10].hex()}); declare it in previous= if it is a "
                                 "compatible older version")
            writer = found
            body = memoryview(data)[10:]
        try:
            return self.records.read(body, writer)
        except pydantic.ValidationError as exc:
            raise CodecError(self.name, f"does not validate as {exc.title}: "
                             f"{exc.error_count()} errors, first: "
                             f"{exc.errors()[0]['msg']}") from exc
        except Exception as exc:
            raise CodecError(self.name, f"cannot decode with schema {self.schema.name}: "
                             f"{describe_error(exc)}") from exc

    def encode(self, obj: Any) -> bytes | None:
        if obj is None:
            return None
        fo = BytesIO()
        if self.framing == "single_object":
            fo.write(SINGLE_OBJECT_MAGIC + self.schema.fingerprint)
        try:
            self.records.write(obj, fo)
        except Exception as exc:
            raise CodecError(self.name, f"cannot encode as {self.schema.name}: "
                             f"{describe_error(exc)}") from exc
        return fo.getvalue()
