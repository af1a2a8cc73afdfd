"""Avro schema files: found by name, parsed once, and the one source of truth for models.

A topology names its schemas by file (``"sensor-reading.avsc"``). The file is looked up as
given, then in ``$STREAMPROC_SCHEMA_DIR``, then in ``./schemas``; it is parsed with
``fastavro.parse_schema`` when the topology module is imported, i.e. at start, so a missing or
invalid schema stops the app before it joins the group, with the file name and the parse error.

:func:`model_for` generates a pydantic model from a record schema, so the field list lives in
the ``.avsc`` only; :func:`check_model` verifies a hand-written model against its schema.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Optional
from uuid import UUID

import fastavro
import orjson
import pydantic
from fastavro.schema import fingerprint, to_parsing_canonical_form

from streamproc.errors import TopologyError

SCHEMA_DIR_ENV = "STREAMPROC_SCHEMA_DIR"


class SchemaFileError(TopologyError):
    """A schema file is missing or not a valid Avro schema, or a model does not match it: the
    app stops at start."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"schema file {path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True, eq=False)
class AvroSchema:
    """A parsed Avro schema plus what codecs need from it, computed once."""

    source: str              # file path (or "<inline>") for messages
    raw: Any                 # the JSON document as written (registered with the registry)
    parsed: Any              # fastavro.parse_schema(raw)
    canonical: str = field(repr=False)  # Parsing Canonical Form
    fingerprint: bytes = field(repr=False)  # CRC-64-AVRO of the canonical form, 8 bytes LE

    @property
    def name(self) -> str:
        """The full name of a named schema (record/enum/fixed), else the type name."""
        if isinstance(self.parsed, dict):
            return str(self.parsed.get("name") or self.parsed.get("type"))
        return str(self.parsed)

    @property
    def text(self) -> str:
        return orjson.dumps(self.raw).decode()


_cache: dict[str, AvroSchema] = {}


def find_schema_file(name: str | os.PathLike[str]) -> Path:
    """Resolve a schema file name: as given, in ``$STREAMPROC_SCHEMA_DIR``, in ``./schemas``."""
    given = Path(name)
    tried = [given]
    if not given.is_absolute():
        env_dir = os.environ.get(SCHEMA_DIR_ENV)
        if env_dir:
            tried.append(Path(env_dir) / given)
        tried.append(Path("schemas") / given)
    for p in tried:
        if p.is_file():
            return p
    raise SchemaFileError(str(given), "not found (looked in: "
                          + ", ".join(str(p) for p in tried) + f"; set {SCHEMA_DIR_ENV} to "
                          "the directory holding the .avsc files)")


def load_schema(schema: str | os.PathLike[str] | dict[str, Any] | AvroSchema) -> AvroSchema:
    """A parsed schema from a file name/path (cached per resolved path), an inline dict, or an
    already loaded :class:`AvroSchema`."""
    if isinstance(schema, AvroSchema):
        return schema
    if isinstance(schema, dict):
        return _parse("<inline>", schema)
    path = find_schema_file(schema)
    key = str(path.resolve())
    cached = _cache.get(key)
    if cached is not None:
        return cached
    try:
        raw = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise SchemaFileError(str(path), f"not valid JSON: {exc}") from None
    parsed = _cache[key] = _parse(str(path), raw)
    return parsed


def schema_from_json(text: str | bytes, source: str) -> AvroSchema:
    """A schema from its JSON text (e.g. as the registry returns it)."""
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise SchemaFileError(source, f"not valid JSON: {exc}") from None
    return _parse(source, raw)


def _parse(source: str, raw: Any) -> AvroSchema:
    try:
        parsed = fastavro.parse_schema(raw)
    except Exception as exc:  # fastavro raises SchemaParseError, KeyError, TypeError, ...
        raise SchemaFileError(source, f"not a valid Avro schema: {type(exc).__name__}: "
                              f"{exc}") from None
    unsafe = _zero_size_collection(parsed, set())
    if unsafe is not None:
        raise SchemaFileError(source, f"{unsafe} holds items that take no bytes: decoding "
                              "untrusted bytes with it can loop (almost) forever on one "
                              "record, so it is refused")
    canonical = to_parsing_canonical_form(parsed)
    fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    return AvroSchema(source, raw, parsed, canonical, fp)


def _zero_size(t: Any, named: dict[str, Any], seen: set[str]) -> bool:
    """True when values of type ``t`` encode to zero bytes (null, a fixed of size 0, a record of
    such fields)."""
    if isinstance(t, str):
        if t == "null":
            return True
        if t in named and t not in seen:
            return _zero_size(named[t], named, seen | {t})
        return False
    if isinstance(t, list):
        return False  # a union writes its branch index
    kind = t.get("type")
    if kind == "fixed":
        return int(t.get("size", 1)) == 0
    if kind == "record":
        return all(_zero_size(f["type"], named, seen) for f in t.get("fields", []))
    if isinstance(kind, str | dict | list) and kind not in ("array", "map", "enum"):
        return _zero_size(kind, named, seen)
    return False


def _zero_size_collection(parsed: Any, seen: set[int]) -> str | None:
    """The first array whose items take no bytes: an attacker-sized block count then spins
    fastavro's reader without consuming input (maps always read a key, so they are safe)."""
    named = parsed.get("__named_schemas", {}) if isinstance(parsed, dict) else {}

    def walk(t: Any) -> str | None:
        if isinstance(t, list):
            for m in t:
                found = walk(m)
                if found:
                    return found
            return None
        if not isinstance(t, dict) or id(t) in seen:
            return None
        seen.add(id(t))
        kind = t.get("type")
        if kind == "array":
            if _zero_size(t["items"], named, set()):
                return "an array"
            return walk(t["items"])
        if kind == "map":
            return walk(t["values"])
        if kind == "record":
            for f in t.get("fields", []):
                found = walk(f["type"])
                if found:
                    return f"field {f['name']!r}: {found}" if found == "an array" else found
            return None
        return walk(kind) if isinstance(kind, dict | list) else None

    return walk(parsed)


# -- pydantic models --------------------------------------------------------------------------

_PRIMITIVES: dict[str, Any] = {
    "null": type(None), "boolean": bool, "int": int, "long": int, "float": float,
    "double": float, "bytes": bytes, "string": str,
}
_LOGICAL: dict[str, Any] = {
    "timestamp-millis": dt.datetime, "timestamp-micros": dt.datetime,
    "local-timestamp-millis": dt.datetime, "local-timestamp-micros": dt.datetime,
    "date": dt.date, "time-millis": dt.time, "time-micros": dt.time, "uuid": UUID,
    "decimal": Decimal,
}


def model_for(schema: str | os.PathLike[str] | dict[str, Any] | AvroSchema,
              *, base: type[pydantic.BaseModel] = pydantic.BaseModel) -> type[pydantic.BaseModel]:
    """A pydantic model with exactly the record schema's fields (nested records become nested
    models, unions with null optional fields, defaults carried over), so that the ``.avsc`` is
    the only place the field list is written down."""
    s = load_schema(schema)
    if not isinstance(s.parsed, dict) or s.parsed.get("type") != "record":
        raise SchemaFileError(s.source, "a model can only be generated from a record schema")
    # One class per schema (and base): codecs.avro(f, model=True) and model_for(f) agree, so
    # instances built by the user encode with the codec.
    cached = _models.get((s, base))
    if cached is None:
        cached = _models[(s, base)] = _record_model(s.parsed, {}, base)
    return cached


_models: dict[tuple[AvroSchema, type[pydantic.BaseModel]], type[pydantic.BaseModel]] = {}


def _record_model(rec: dict[str, Any], models: dict[str, type[pydantic.BaseModel]],
                  base: type[pydantic.BaseModel]) -> type[pydantic.BaseModel]:
    full = rec["name"]
    if full in models:
        return models[full]
    fields: dict[str, Any] = {}
    for f in rec["fields"]:
        tp = _python_type(f["type"], models, base)
        if "default" in f:
            default = f["default"]
            fields[f["name"]] = (tp, pydantic.Field(default=default, description=f.get("doc")))
        else:
            fields[f["name"]] = (tp, pydantic.Field(description=f.get("doc")))
    model: type[pydantic.BaseModel] = pydantic.create_model(
        full.rsplit(".", 1)[-1], __base__=base, __doc__=rec.get("doc"), **fields)
    models[full] = model
    return model


def _python_type(t: Any, models: dict[str, type[pydantic.BaseModel]],
                 base: type[pydantic.BaseModel]) -> Any:
    if isinstance(t, str):
        if t in _PRIMITIVES:
            return _PRIMITIVES[t]
        if t in models:  # a reference to a named type defined earlier
            return models[t]
        return Any
    if isinstance(t, list):
        members = [_python_type(m, models, base) for m in t if m != "null"]
        inner: Any = members[0] if len(members) == 1 else _union(members)
        return Optional[inner] if "null" in t else inner  # noqa: UP045 (runtime-built type)
    logical = t.get("logicalType")
    if logical in _LOGICAL:
        return _LOGICAL[logical]
    kind = t["type"]
    if kind == "record":
        return _record_model(t, models, base)
    if kind == "enum":
        return Literal[tuple(t["symbols"])]
    if kind == "array":
        return list[_python_type(t["items"], models, base)]  # type: ignore[misc]
    if kind == "map":
        return dict[str, _python_type(t["values"], models, base)]  # type: ignore[misc]
    if kind == "fixed":
        return bytes
    return _python_type(kind, models, base)


def _union(members: list[Any]) -> Any:
    out = members[0]
    for m in members[1:]:
        out = out | m
    return out


def check_model(model: type[pydantic.BaseModel], schema: AvroSchema) -> None:
    """A declared model must have exactly the record schema's fields: one field list, checked
    at start rather than discovered as a decode error on the first record."""
    if not isinstance(schema.parsed, dict) or schema.parsed.get("type") != "record":
        raise SchemaFileError(schema.source, f"model {model.__name__} needs a record schema")
    in_schema = {f["name"] for f in schema.parsed["fields"]}
    in_model = set(model.model_fields)
    if in_schema != in_model:
        diff = []
        if in_schema - in_model:
            diff.append("missing from the model: " + ", ".join(sorted(in_schema - in_model)))
        if in_model - in_schema:
            diff.append("not in the schema: " + ", ".join(sorted(in_model - in_schema)))
        raise SchemaFileError(schema.source, f"model {model.__name__} does not match the "
                              f"schema {schema.name}: " + "; ".join(diff))
