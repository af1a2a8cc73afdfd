"""Avro in the Confluent Schema Registry wire format: ``00`` + 4-byte big-endian schema id +
the Avro body. The format of Confluent Schema Registry, Karapace, Redpanda and Apicurio (in
its Confluent compatibility mode).

The registry is reached only through the client that ships with confluent-kafka
(``SchemaRegistryClient``, or its in-memory ``mock://`` twin in tests); the body is read and
written by fastavro with the same schema resolution as :mod:`streamproc.codecs.avro`.

- Decoding looks the writer schema up by the id in the record (cached, including ids the
  registry does not know, for a while, so a flood of garbage does not flood the registry) and
  resolves it against the topology's reader schema: older compatible writers decode.
- Encoding registers (or, with auto-register off, looks up) the topology's schema under the
  subject its naming strategy gives, once, when the topology is bound at start; a schema the
  registry refuses (incompatible) stops the app at start naming the subject.
- A registry that cannot be reached is not bad input: :class:`InfrastructureError` stops the
  instance (which then replays from its last checkpoint) instead of dead-lettering every record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from io import BytesIO
from typing import Any, Literal

import pydantic

from streamproc.codecs.avro import AvroRecords, SchemaRef, describe_error, resolve_model
from streamproc.codecs.schemas import AvroSchema, SchemaFileError, load_schema, schema_from_json
from streamproc.errors import CodecError, InfrastructureError, TopologyError

SubjectStrategy = Literal["topic", "record", "topic_record"]
MAGIC = 0
_UNKNOWN_ID_TTL_S = 30.0


@dataclass(frozen=True)
class RegistrySettings:
    """How to reach the registry (from the instance settings ``schema_registry_*``)."""

    url: str
    basic_auth: str | None = None          # "user:password"
    subject_strategy: SubjectStrategy = "topic"
    auto_register: bool = True
    config: dict[str, str] = field(default_factory=dict)  # extra client settings (TLS, ...)

    def client_config(self) -> dict[str, Any]:
        conf: dict[str, Any] = {"url": self.url, **self.config}
        if self.basic_auth:
            conf["basic.auth.user.info"] = self.basic_auth
        return conf


_clients: dict[tuple[Any, ...], Any] = {}


def registry_client(settings: RegistrySettings) -> Any:
    """One client per registry configuration and process. ``mock://name`` gives confluent-kafka's
    in-memory registry; every codec and helper in the process with that URL shares it."""
    conf = settings.client_config()
    key = tuple(sorted(conf.items()))
    client = _clients.get(key)
    if client is None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        client = _clients[key] = SchemaRegistryClient.new_client(conf)
    return client


def subject_name(strategy: SubjectStrategy, topic: str, field: str, record_name: str) -> str:
    """Confluent's TopicNameStrategy, RecordNameStrategy and TopicRecordNameStrategy."""
    if strategy == "topic":
        return f"{topic}-{field}"
    if strategy == "record":
        return record_name
    if strategy == "topic_record":
        return f"{topic}-{record_name}"
    raise ValueError(f"unknown subject naming strategy {strategy!r}")


@dataclass(frozen=True)
class CodecTarget:
    """Where a codec is used: the topic, key or value, and the instance's registry settings."""

    topic: str
    field: Literal["key", "value"]
    registry: RegistrySettings | None


class RegistryAvroCodec:
    """Avro framed for a schema registry. Declared in the topology; bound to its topic (for the
    subject name) and to the registry when the topology starts."""

    def __init__(self, schema: SchemaRef, *, model: type[pydantic.BaseModel] | bool | None = None,
                 strict: bool = False, subject_strategy: SubjectStrategy | None = None,
                 auto_register: bool | None = None, registry: str | None = None) -> None:
        s = load_schema(schema)
        self.schema = s
        self.records = AvroRecords(s, resolve_model(model, s), strict)
        self.subject_strategy = subject_strategy
        self.auto_register = auto_register
        self.registry_url = registry
        self.name = f"avro-registry:{s.name}"
        self._client: Any = None
        self._subject: str | None = None
        self._schema_id: int | None = None
        self._writers: dict[int, AvroSchema] = {}
        self._unknown: dict[int, float] = {}

    # -- binding ---------------------------------------------------------------------------
    def bind(self, target: CodecTarget) -> RegistryAvroCodec:
        """A copy for one topic and field, connected to the registry; registers the schema for
        writing (so an incompatible schema fails at start)."""
        settings = target.registry
        if self.registry_url is not None:  # the topology pins its registry (e.g. mock://)
            settings = (replace(settings, url=self.registry_url) if settings is not None
                        else RegistrySettings(self.registry_url))
        if settings is None:
            raise TopologyError(
                f"{self.name} on topic {target.topic} needs a schema registry: set "
                "schema_registry_url (env STREAMPROC_SCHEMA_REGISTRY_URL, flag "
                "--schema-registry-url)")
        bound = RegistryAvroCodec(self.schema, strict=self.records.strict,
                                  subject_strategy=self.subject_strategy,
                                  auto_register=self.auto_register,
                                  registry=self.registry_url)
        bound.records = self.records
        bound._client = registry_client(settings)
        strategy = self.subject_strategy or settings.subject_strategy
        bound._subject = subject_name(strategy, target.topic, target.field, self.schema.name)
        auto = settings.auto_register if self.auto_register is None else self.auto_register
        bound._schema_id = bound._writer_id(auto)
        bound._writers[bound._schema_id] = self.schema
        return bound

    def _writer_id(self, auto_register: bool) -> int:
        from confluent_kafka.schema_registry import Schema
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        schema = Schema(self.schema.text, "AVRO")
        try:
            if auto_register:
                sid = self._client.register_schema(self._subject, schema)
            else:
                sid = self._client.lookup_schema(self._subject, schema).schema_id
        except SchemaRegistryError as exc:
            action = "register" if auto_register else "find"
            raise TopologyError(f"schema registry: cannot {action} {self.schema.name} "
                                f"({self.schema.source}) under subject {self._subject}: "
                                f"{exc}") from None
        except Exception as exc:
            raise InfrastructureError(f"schema registry unreachable at start: "
                                      f"{type(exc).__name__}: {exc}") from exc
        return int(sid)

    @property
    def subject(self) -> str | None:
        return self._subject

    @property
    def schema_id(self) -> int | None:
        """The id records written by this codec carry (known once bound)."""
        return self._schema_id

    # -- decode ----------------------------------------------------------------------------
    def decode(self, data: bytes | None) -> Any:
        if data is None:
            return None
        if len(data) < 5 or data[0] != MAGIC:
            raise CodecError(self.name, "not in the schema registry wire format (expected "
                             f"magic byte 0 and a 4-byte schema id, got {bytes(data[:5])!r})")
        sid = int.from_bytes(data[1:5], "big")
        writer = self._writers.get(sid)
        if writer is None:
            writer = self._fetch(sid)
        try:
            return self.records.read(memoryview(data)[5:], writer)
        except pydantic.ValidationError as exc:
            raise CodecError(self.name, f"schema id {sid}: does not validate: "
                             f"{exc.errors()[0]['msg']}", schema_id=sid) from exc
        except Exception as exc:
            raise CodecError(self.name, f"cannot decode (writer schema id {sid}, "
                             f"{writer.name}) with reader schema {self.schema.name}: "
                             f"{describe_error(exc)}", schema_id=sid) from exc

    def _fetch(self, sid: int) -> AvroSchema:
        if self._client is None:
            raise InfrastructureError(f"{self.name} is used without being bound to a topic "
                                      "and registry")
        seen = self._unknown.get(sid)
        if seen is not None and time.monotonic() - seen < _UNKNOWN_ID_TTL_S:
            raise CodecError(self.name, f"unknown schema id {sid}", schema_id=sid)
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            registered = self._client.get_schema(sid)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                if len(self._unknown) > 10_000:
                    self._unknown.clear()
                self._unknown[sid] = time.monotonic()
                raise CodecError(self.name, f"unknown schema id {sid}", schema_id=sid) from None
            raise InfrastructureError(f"schema registry error for id {sid}: {exc}") from exc
        except Exception as exc:
            raise InfrastructureError(f"schema registry unreachable fetching id {sid}: "
                                      f"{type(exc).__name__}: {exc}") from exc
        if (registered.schema_type or "AVRO") != "AVRO":
            raise CodecError(self.name, f"schema id {sid} is a {registered.schema_type} "
                             "schema, not Avro", schema_id=sid)
        if registered.references:
            raise CodecError(self.name, f"schema id {sid} uses schema references, which "
                             "this codec does not resolve", schema_id=sid)
        try:
            writer = schema_from_json(registered.schema_str, f"registry id {sid}")
        except SchemaFileError as exc:
            raise CodecError(self.name, f"schema id {sid}: {exc.problem}",
                             schema_id=sid) from None
        self._writers[sid] = writer
        return writer

    # -- encode ----------------------------------------------------------------------------
    def encode(self, obj: Any) -> bytes | None:
        if obj is None:
            return None
        if self._schema_id is None:
            raise InfrastructureError(f"{self.name} is used without being bound to a topic "
                                      "and registry")
        fo = BytesIO()
        fo.write(b"\x00" + self._schema_id.to_bytes(4, "big"))
        try:
            self.records.write(obj, fo)
        except Exception as exc:
            raise CodecError(self.name, f"cannot encode as {self.schema.name}: "
                             f"{describe_error(exc)}", schema_id=self._schema_id) from exc
        return fo.getvalue()
