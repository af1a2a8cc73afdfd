"""Schema files, models and registry settings fail fast, at start, with a message that names
what to fix."""

from __future__ import annotations

import re
from pathlib import Path

import pydantic
import pytest

from streamproc import Topology, codecs
from streamproc.codecs.registry import CodecTarget, RegistrySettings, subject_name
from streamproc.codecs.schemas import SchemaFileError
from streamproc.config import load_settings
from streamproc.errors import CodecError, ConfigError, TopologyError
from streamproc.graph.binding import bind_codecs
from streamproc.graph.compile import compile_topology
from streamproc.testing import TopologyTestDriver

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_schema_file_names_the_file_and_where_it_looked(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STREAMPROC_SCHEMA_DIR", str(tmp_path / "contracts"))
    with pytest.raises(SchemaFileError) as err:
        codecs.avro("sensor-readng.avsc")
    assert str(err.value) == (
        "schema file sensor-readng.avsc: not found (looked in: sensor-readng.avsc, "
        f"{tmp_path / 'contracts' / 'sensor-readng.avsc'}, schemas/sensor-readng.avsc; set "
        "STREAMPROC_SCHEMA_DIR to the directory holding the .avsc files)")


def test_schema_dir_and_parse_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMPROC_SCHEMA_DIR", str(tmp_path))
    (tmp_path / "ok.avsc").write_text('{"type": "record", "name": "Ok", "fields": '
                                      '[{"name": "a", "type": "int"}]}')
    assert codecs.avro("ok.avsc").decode(b"\x04") == {"a": 2}
    (tmp_path / "bad.avsc").write_text('{"type": "record", "name": "Bad", "fields": '
                                       '[{"name": "a", "type": "integer"}]}')
    with pytest.raises(SchemaFileError, match=r"^schema file .*bad.avsc: not a valid Avro "
                       r"schema: .*integer"):
        codecs.avro("bad.avsc")
    (tmp_path / "broken.avsc").write_text('{"type": "record",')
    with pytest.raises(SchemaFileError, match=r"broken.avsc: not valid JSON"):
        codecs.registry_avro("broken.avsc")


class Reading(pydantic.BaseModel):
    sensor_id: str
    ts: int
    temp: float  # the schema says "temperature"


def test_a_declared_model_must_match_the_schema_fields() -> None:
    with pytest.raises(SchemaFileError, match=re.escape(
            "model Reading does not match the schema streamproc.examples.sensor_averages."
            "SensorReading: missing from the model: temperature; not in the schema: temp")):
        codecs.avro(ROOT / "schemas" / "sensor-reading.avsc", model=Reading)


ORDER = codecs.load_schema({
    "type": "record", "name": "Order", "namespace": "shop", "fields": [
        {"name": "id", "type": "long"},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
        {"name": "lines", "type": {"type": "array", "items": {
            "type": "record", "name": "Line",
            "fields": [{"name": "sku", "type": "string"}, {"name": "qty", "type": "int"}]}}}]})


def test_a_generated_model_has_the_schema_fields_types_and_defaults() -> None:
    model = codecs.model_for(ORDER)
    order = model.model_validate({"id": 7, "status": "PAID", "lines": [{"sku": "a", "qty": 2}]})
    assert order.model_dump() == {"id": 7, "note": None, "status": "PAID",
                                  "lines": [{"sku": "a", "qty": 2}]}
    with pytest.raises(pydantic.ValidationError):
        model.model_validate({"id": 7, "status": "LOST", "lines": []})
    codec = codecs.avro(ORDER, model=True)
    assert codec.model is model  # one class per schema
    decoded = codec.decode(codec.encode(order))
    assert isinstance(decoded, model)
    assert decoded == order
    other = codecs.model_for(ROOT / "schemas" / "word-count.avsc")(word="a", count=1)
    with pytest.raises(CodecError, match="expected Order, got WordCount"):
        codec.encode(other)


@pytest.mark.parametrize(("setting", "value", "problem"), [
    ("schema_registry_url", "registry:8081", "must start with http://, https:// or mock://"),
    ("schema_registry_basic_auth", "token-without-colon", "must be user:password"),
    ("schema_registry_subject_strategy", "by_topic", "'topic', 'record' or 'topic_record'"),
])
def test_bad_registry_settings_name_the_setting(setting: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(**{setting: value})
    assert err.value.setting == (f"{setting} (env STREAMPROC_{setting.upper()}, "
                                 f"flag --{setting.replace('_', '-')})")
    assert problem in str(err.value)


def test_registry_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMPROC_SCHEMA_REGISTRY_URL", "https://sr.example:8081")
    monkeypatch.setenv("STREAMPROC_SCHEMA_REGISTRY_BASIC_AUTH", "app:s3cret")
    monkeypatch.setenv("STREAMPROC_SCHEMA_REGISTRY_SUBJECT_STRATEGY", "topic_record")
    monkeypatch.setenv("STREAMPROC_SCHEMA_REGISTRY_CONFIG", '{"ssl.ca.location": "/ca.pem"}')
    settings = load_settings()
    assert "s3cret" not in repr(settings)
    registry = settings.registry()
    assert registry == RegistrySettings("https://sr.example:8081", "app:s3cret", "topic_record",
                                        True, {"ssl.ca.location": "/ca.pem"})
    assert registry.client_config() == {"url": "https://sr.example:8081",
                                        "ssl.ca.location": "/ca.pem",
                                        "basic.auth.user.info": "app:s3cret"}


def test_subject_naming_strategies() -> None:
    assert subject_name("topic", "orders", "value", "shop.Order") == "orders-value"
    assert subject_name("topic", "orders", "key", "shop.Order") == "orders-key"
    assert subject_name("record", "orders", "value", "shop.Order") == "shop.Order"
    assert subject_name("topic_record", "orders", "value", "shop.Order") == "orders-shop.Order"


def reading_topology(value: codecs.Codec, state: codecs.Codec | None = None) -> Topology:
    t = Topology("readings")
    stream = t.source("in", key=codecs.string(), value=value)
    if state is not None:
        stream = stream.group_by_key().reduce(lambda a, b: b, store="last", state=state)
    stream.to("out", key=codecs.string(), value=value)
    return t


def test_a_registry_codec_without_a_registry_fails_at_start() -> None:
    compiled = compile_topology(reading_topology(
        codecs.registry_avro(ROOT / "schemas" / "sensor-reading.avsc")))
    with pytest.raises(TopologyError, match=r"on topic in needs a schema registry: set "
                       r"schema_registry_url \(env STREAMPROC_SCHEMA_REGISTRY_URL"):
        bind_codecs(compiled, None)


def test_a_registry_codec_cannot_hold_state() -> None:
    codec = codecs.registry_avro(ROOT / "schemas" / "sensor-reading.avsc")
    with pytest.raises(TopologyError, match="state store 'last': codec avro-registry:"):
        TopologyTestDriver(reading_topology(codecs.json(), state=codec))


def test_without_auto_register_an_unregistered_output_schema_fails_at_start() -> None:
    codec = codecs.registry_avro(ROOT / "schemas" / "sensor-reading.avsc", auto_register=False)
    with pytest.raises(TopologyError, match=r"cannot find streamproc\.examples\."
                       r"sensor_averages\.SensorReading .* under subject out-value"):
        codec.bind(CodecTarget("out", "value", RegistrySettings("mock://unregistered")))


def test_topic_record_strategy_registers_under_its_subject() -> None:
    url = "mock://strategy-test"
    codec = codecs.registry_avro(ROOT / "schemas" / "sensor-reading.avsc",
                                 subject_strategy="topic_record").bind(
        CodecTarget("readings", "value", RegistrySettings(url)))
    client = codecs.registry_client(RegistrySettings(url))
    assert client.get_subjects() == [
        "readings-streamproc.examples.sensor_averages.SensorReading"]
    assert codec.subject == "readings-streamproc.examples.sensor_averages.SensorReading"


@pytest.mark.parametrize("schema", [
    {"type": "array", "items": "null"},
    {"type": "record", "name": "Holder", "fields": [
        {"name": "xs", "type": {"type": "array", "items": {
            "type": "record", "name": "Empty", "fields": []}}}]},
    {"type": "record", "name": "Holder2", "fields": [
        {"name": "xs", "type": ["null", {"type": "array", "items": {
            "type": "fixed", "name": "Nothing", "size": 0}}]}]},
])
def test_arrays_of_zero_size_items_are_refused(schema: dict[str, object]) -> None:
    # A garbage block count of 2**62 such items would spin the decoder on a single record.
    with pytest.raises(SchemaFileError, match="holds items that take no bytes"):
        codecs.avro(schema)


def test_arrays_of_sized_items_are_fine() -> None:
    codec = codecs.avro({"type": "record", "name": "Ok2", "fields": [
        {"name": "xs", "type": {"type": "map", "values": {"type": "array", "items": "int"}}}]})
    assert codec.decode(codec.encode({"xs": {"a": [1, 2]}})) == {"xs": {"a": [1, 2]}}
