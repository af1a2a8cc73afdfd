"""Fuzzing every codec: bad bytes and bad objects are a value or a CodecError, never another
exception or a hang; every valid encoding round-trips exactly; Avro reader/writer evolution.

Codecs: string, int64, json, a pydantic JSON model, Avro plain, Avro single-object and Avro in
the schema registry wire format (bound to its own in-memory ``mock://`` registry). The Avro
record used here covers every Avro type (and a timestamp-millis logical type); the evolution
cases use inline schemas, so the repository's ``schemas/*.avsc`` stay the examples' contracts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc import codecs
from streamproc.codecs.avro import SINGLE_OBJECT_MAGIC
from streamproc.codecs.base import Codec
from streamproc.codecs.registry import CodecTarget, RegistryAvroCodec, RegistrySettings
from streamproc.errors import CodecError

# A generous per-example deadline: an example takes milliseconds; a decoder that loops on a
# length prefix it read from garbage takes forever.
FUZZ = settings(max_examples=60, deadline=timedelta(seconds=2), database=None,
                suppress_health_check=[HealthCheck.too_slow])
REGISTRY = RegistrySettings("mock://streamproc-codec-fuzz")

WIDE: dict[str, Any] = {
    "type": "record", "name": "Wide", "namespace": "fuzz",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "n", "type": "int"},
        {"name": "big", "type": "long"},
        {"name": "ratio", "type": "float"},
        {"name": "value", "type": "double"},
        {"name": "flag", "type": "boolean"},
        {"name": "blob", "type": "bytes"},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "color", "type": {"type": "enum", "name": "Color",
                                   "symbols": ["RED", "GREEN", "BLUE"]}},
        {"name": "xs", "type": {"type": "array", "items": "long"}},
        {"name": "m", "type": {"type": "map", "values": "double"}},
        {"name": "tag", "type": {"type": "fixed", "name": "Tag", "size": 4}},
        {"name": "sub", "type": {"type": "record", "name": "Sub", "fields": [
            {"name": "either", "type": ["null", "long", "string"]}]}},
    ],
}
# A different record (another name and shape) whose encodings must not pass for Wide's.
OTHER: dict[str, Any] = {
    "type": "record", "name": "Other", "namespace": "fuzz",
    "fields": [{"name": "word", "type": "string"}, {"name": "count", "type": "long"}],
}


class Reading(pydantic.BaseModel):
    sensor_id: str
    ts: int
    temperature: float
    tags: list[str] = []
    note: str | None = None


def bound(schema: dict[str, Any], topic: str, **options: Any) -> RegistryAvroCodec:
    return codecs.registry_avro(schema, **options).bind(CodecTarget(topic, "value", REGISTRY))


FACTORIES: dict[str, Callable[[], Codec]] = {
    "string": codecs.string,
    "int64": codecs.int64,
    "json": codecs.json,
    "model": lambda: codecs.model(Reading),
    "avro": lambda: codecs.avro(WIDE),
    "avro-model": lambda: codecs.avro(WIDE, model=True),
    "avro-single": lambda: codecs.avro(WIDE, framing="single_object"),
    "avro-registry": lambda: bound(WIDE, "fuzz-wide"),
}
CODECS = {name: make() for name, make in FACTORIES.items()}
AVRO = ("avro", "avro-model", "avro-single", "avro-registry")


def outcome(fn: Callable[[Any], Any], arg: Any) -> tuple[bool, Any]:
    """(True, result) or (False, the CodecError): any other exception fails the test."""
    try:
        return True, fn(arg)
    except CodecError as exc:
        return False, exc


# -- valid values, per codec ---------------------------------------------------------------
texts = st.text(max_size=30)
longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
doubles = st.floats(allow_nan=False)  # NaN != NaN; infinities are valid Avro doubles
millis = st.integers(min_value=-(10**11), max_value=10**13).map(
    lambda ms: datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms))

wide_values = st.fixed_dictionaries({
    "id": texts,
    "n": st.integers(min_value=-(2**31), max_value=2**31 - 1),
    "big": longs,
    "ratio": st.floats(width=32, allow_nan=False),  # exactly representable as an Avro float
    "value": doubles,
    "flag": st.booleans(),
    "blob": st.binary(max_size=30),
    "at": millis,
    "note": st.none() | texts,
    "color": st.sampled_from(["RED", "GREEN", "BLUE"]),
    "xs": st.lists(longs, max_size=5),
    "m": st.dictionaries(texts, doubles, max_size=4),
    "tag": st.binary(min_size=4, max_size=4),
    "sub": st.fixed_dictionaries({"either": st.none() | longs | texts}),
})
json_values = st.recursive(
    st.none() | st.booleans() | longs | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=15,
).filter(lambda v: v is not None)  # a top-level None is a tombstone, not b"null"
readings = st.builds(Reading, sensor_id=texts, ts=st.integers(),
                     temperature=st.floats(allow_nan=False, allow_infinity=False),
                     tags=st.lists(texts, max_size=3), note=st.none() | texts)

VALID: dict[str, st.SearchStrategy[Any]] = {
    "string": st.text(),
    "int64": longs,
    "json": json_values,
    "model": readings,
    "avro": wide_values,
    "avro-model": wide_values.map(lambda v: CODECS["avro-model"].model(**v)),
    "avro-single": wide_values,
    "avro-registry": wide_values,
}


@pytest.mark.parametrize("name", list(CODECS))
@FUZZ
@given(data=st.data())
def test_every_valid_value_round_trips_exactly(name, data):
    codec = CODECS[name]
    value = data.draw(VALID[name])
    encoded = codec.encode(value)
    assert isinstance(encoded, bytes)
    assert codec.decode(encoded) == value
    # and a fresh codec of the same kind reads it too (nothing kept between the calls)
    fresh = bound(WIDE, "fuzz-wide") if name == "avro-registry" else FACTORIES[name]()
    if name == "avro-model":  # an inline dict schema gets its own generated class per codec
        assert fresh.decode(encoded).model_dump() == value.model_dump()
    else:
        assert fresh.decode(encoded) == value


def test_avro_encodings_are_the_avro_binary_format_with_each_framing():
    value = {"id": "a", "n": -1, "big": 2, "ratio": 0.5, "value": 1.0, "flag": True,
             "blob": b"\x00", "at": datetime(1970, 1, 1, 0, 0, 0, 3000, tzinfo=UTC), "note": None,
             "color": "BLUE", "xs": [1], "m": {}, "tag": b"abcd", "sub": {"either": "z"}}
    body = (b"\x02a" + b"\x01" + b"\x04" + bytes.fromhex("0000003f") + bytes.fromhex(
        "000000000000f03f") + b"\x01" + b"\x02\x00" + b"\x06" + b"\x00" + b"\x04" + b"\x02\x02\x00"
        + b"\x00" + b"abcd" + b"\x04\x02z")
    assert CODECS["avro"].encode(value) == body
    single = CODECS["avro-single"]
    assert single.encode(value) == SINGLE_OBJECT_MAGIC + single.schema.fingerprint + body
    registry = CODECS["avro-registry"]
    assert registry.encode(value) == b"\x00" + registry.schema_id.to_bytes(4, "big") + body


# -- bad bytes ------------------------------------------------------------------------------
def framed(name: str, body: bytes) -> bytes:
    """``body`` behind the header the codec expects, so that garbage reaches the body parser."""
    codec = CODECS[name]
    if name == "avro-single":
        return SINGLE_OBJECT_MAGIC + codec.schema.fingerprint + body
    if name == "avro-registry":
        return b"\x00" + codec.schema_id.to_bytes(4, "big") + body
    return body


@pytest.mark.parametrize("name", list(CODECS))
@settings(FUZZ, max_examples=150)
@given(data=st.binary(max_size=120), behind_header=st.booleans())
def test_random_bytes_decode_to_a_value_or_a_codec_error(name, data, behind_header):
    codec = CODECS[name]
    ok, result = outcome(codec.decode, framed(name, data) if behind_header else data)
    if not ok:
        assert result.codec == codec.name
    elif name in AVRO:
        # Garbage that happens to decode is a whole record that encodes again; the bytes may
        # differ (a non-minimal varint, a negative block count), the re-encoding is stable
        # (compared as bytes: a decoded NaN is not equal to itself).
        again = codec.encode(result)
        assert codec.encode(codec.decode(again)) == again


@pytest.mark.parametrize("name", list(CODECS))
@FUZZ
@given(data=st.data())
def test_every_truncation_of_a_valid_encoding_is_a_value_or_a_codec_error(name, data):
    codec = CODECS[name]
    encoded = codec.encode(data.draw(VALID[name]))
    if not encoded:  # the empty string: nothing to truncate
        return
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    ok, result = outcome(codec.decode, encoded[:cut])
    if name in AVRO or name in ("int64", "model"):
        # A prefix of an Avro record, of 8 big-endian bytes or of a JSON object is never whole.
        assert not ok
        assert result.codec == codec.name
        if name == "avro-registry":
            assert result.schema_id == (codec.schema_id if cut >= 5 else None)


@pytest.mark.parametrize("name", AVRO)
@FUZZ
@given(value=wide_values, junk=st.binary(min_size=1, max_size=8))
def test_bytes_left_over_after_an_avro_record_are_a_codec_error(name, value, junk):
    codec = CODECS[name]
    with pytest.raises(CodecError, match="bytes left over after the record") as info:
        codec.decode(codec.encode(value) + junk)
    assert info.value.codec == codec.name


@FUZZ
@given(value=wide_values, sid=st.integers(min_value=1000, max_value=2**32 - 1))
def test_a_schema_id_the_registry_does_not_know_is_a_codec_error_naming_it(value, sid):
    codec = CODECS["avro-registry"]
    body = codec.encode(value)[5:]
    with pytest.raises(CodecError) as info:
        codec.decode(b"\x00" + sid.to_bytes(4, "big") + body)
    assert str(info.value) == f"{codec.name}: unknown schema id {sid}"
    assert info.value.codec == codec.name
    assert info.value.schema_id == sid


@FUZZ
@given(word=texts, count=longs)
def test_another_schemas_registry_encoding_is_a_codec_error_with_its_schema_id(word, count):
    other = bound(OTHER, "fuzz-other")
    codec = CODECS["avro-registry"]
    assert other.schema_id != codec.schema_id
    with pytest.raises(CodecError) as info:
        codec.decode(other.encode({"word": word, "count": count}))
    assert info.value.codec == codec.name
    assert info.value.schema_id == other.schema_id
    assert f"writer schema id {other.schema_id}, fuzz.Other" in str(info.value)


@FUZZ
@given(word=texts, count=longs)
def test_another_schemas_single_object_encoding_is_a_codec_error_naming_its_fingerprint(
        word, count):
    other = codecs.avro(OTHER, framing="single_object")
    codec = CODECS["avro-single"]
    with pytest.raises(CodecError) as info:
        codec.decode(other.encode({"word": word, "count": count}))
    assert info.value.codec == codec.name
    assert f"fingerprint {other.schema.fingerprint.hex()}" in str(info.value)


@FUZZ
@given(word=texts, count=longs)
def test_another_schemas_plain_encoding_is_a_codec_error_when_it_does_not_parse(word, count):
    # Plain Avro carries no schema: bytes of another record are only caught when they do not
    # parse as this one (here always: Other's string + long is too short for Wide's fields).
    encoded = codecs.avro(OTHER).encode({"word": word, "count": count})
    for name in ("avro", "avro-model"):
        with pytest.raises(CodecError) as info:
            CODECS[name].decode(encoded)
        assert info.value.codec == CODECS[name].name


# -- bad objects on encode ------------------------------------------------------------------
surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | surrogates
    | st.binary(max_size=10) | st.datetimes() | st.just(object()) | st.sets(st.integers(),
                                                                            max_size=2),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5) | st.integers(),
                                                                inner, max_size=3),
    max_leaves=8,
)


@st.composite
def mutated_wide(draw: st.DrawFn) -> dict[str, Any]:
    value: dict[str, Any] = dict(draw(wide_values))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        field = draw(st.sampled_from(sorted(value)))
        if action == "replace":
            value[field] = draw(anything)
        elif action == "drop":
            value.pop(field, None)
        else:
            value[draw(st.text(min_size=1, max_size=5))] = draw(anything)
    return value


@pytest.mark.parametrize("name", list(CODECS))
@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_encoding_a_wrong_object_is_bytes_that_decode_or_a_codec_error(name, data):
    codec = CODECS[name]
    if name in AVRO:
        obj = data.draw(mutated_wide() | anything)
    elif name == "model":
        obj = data.draw(anything | st.fixed_dictionaries(
            {"sensor_id": anything, "ts": anything, "temperature": anything}))
    else:
        obj = data.draw(anything)
    ok, encoded = outcome(codec.encode, obj)
    if not ok:
        assert encoded.codec == codec.name
        return
    if obj is None:
        assert encoded is None
        return
    assert isinstance(encoded, bytes)
    # Whatever an encoder accepted (after coercion, e.g. an int for a double), its own decoder
    # reads back, and the decoded value encodes to the same bytes.
    decoded = codec.decode(encoded)
    if decoded is None:  # JSON null (from None inside nothing, or a NaN): a tombstone on encode
        assert encoded == b"null"
    else:
        assert codec.encode(decoded) == encoded


def test_lone_surrogates_are_a_codec_error_for_every_text_codec():
    # Found by the fuzzing above: str.encode and pydantic's JSON serializer raised raw errors.
    with pytest.raises(CodecError, match="not encodable as UTF-8"):
        codecs.string().encode("a\ud800")
    with pytest.raises(CodecError, match="not JSON-serializable"):
        codecs.json().encode({"k": "\udfff"})
    with pytest.raises(CodecError, match="not JSON-serializable"):
        codecs.model(Reading).encode(Reading(sensor_id="\ud800", ts=1, temperature=1.0))
    with pytest.raises(CodecError, match="UnicodeEncodeError"):
        CODECS["avro"].encode({**_wide_example(), "id": "\ud800"})


@pytest.mark.parametrize("name", AVRO)
@pytest.mark.parametrize(
    ("field", "wrong"),
    [("n", 1.5), ("n", 2**40), ("n", True), ("big", 1.9), ("big", 2**64), ("flag", "x"),
     ("flag", 5), ("value", "1.5"), ("sub", {"either": 1.5}), ("note", 3)],
)
def test_avro_refuses_a_wrong_type_instead_of_coercing_it(name, field, wrong):
    # Found by the fuzzing above: fastavro's writer wrote 1.5 as 1, "x" as true, "1.5" as 1.5
    # and 2**40 into a 32-bit int (bytes other Avro readers reject).
    codec = CODECS[name]
    value = {**_wide_example(), field: wrong}
    with pytest.raises(CodecError) as info:
        codec.encode(value)
    assert info.value.codec == codec.name
    where = "fuzz.Sub.either" if field == "sub" else f"fuzz.Wide.{field}"
    assert "ValidationError: " in str(info.value)
    assert f'"{where} is <{wrong["either"] if field == "sub" else wrong}> of type' \
        in str(info.value)


def test_a_model_field_that_is_not_json_is_a_codec_error():
    class Raw(pydantic.BaseModel):
        data: bytes
        extra: Any = None

    c = codecs.model(Raw)
    with pytest.raises(CodecError) as info:
        c.encode(Raw(data=b"\xff"))
    assert str(info.value).startswith("pydantic:Raw: not JSON-serializable: ")
    with pytest.raises(CodecError):
        c.encode(Raw(data=b"ok", extra=object()))
    with pytest.raises(CodecError):
        c.encode({"data": b"\xfe"})
    assert c.encode(Raw(data=b"ok")) == b'{"data":"ok","extra":null}'


# -- huge values ----------------------------------------------------------------------------
HUGE = 2 * 1024 * 1024


def _wide_example() -> dict[str, Any]:
    return {"id": "x", "n": 1, "big": 2, "ratio": 1.5, "value": 2.5, "flag": False,
            "blob": b"", "at": datetime(2024, 3, 1, tzinfo=UTC), "note": None, "color": "RED",
            "xs": [], "m": {}, "tag": b"\x00\x01\x02\x03", "sub": {"either": None}}


@pytest.mark.parametrize("name", list(CODECS))
def test_a_2mb_value_round_trips_and_2mb_of_garbage_is_a_codec_error(name):
    codec = CODECS[name]
    big = "\u00e9" * (HUGE // 2)
    value: Any = {
        "string": big, "int64": 2**62, "json": {"text": big, "xs": list(range(50_000))},
        "model": Reading(sensor_id=big, ts=1, temperature=0.5, tags=[big[:1000]] * 100),
        "avro": {**_wide_example(), "id": big, "blob": bytes(HUGE), "xs": list(range(50_000))},
    }.get(name, {**_wide_example(), "id": big, "blob": bytes(HUGE)})
    if name == "avro-model":
        value = codec.model(**value)
    encoded = codec.encode(value)
    assert codec.decode(encoded) == value
    garbage = random.Random(7).randbytes(HUGE)
    for data in (garbage, framed(name, garbage)):
        ok, result = outcome(codec.decode, data)
        if name != "string":  # random bytes are (almost surely) not UTF-8, but may be
            assert not ok
            assert result.codec == codec.name


@pytest.mark.parametrize("name", AVRO)
@FUZZ
@given(claimed=st.integers(min_value=HUGE, max_value=2**62),
       field=st.sampled_from(["id", "blob", "xs", "m"]))
def test_a_length_prefix_claiming_gigabytes_is_a_codec_error_at_once(name, claimed, field):
    """A string/bytes length or an array/map block count (zigzag varint) far beyond the
    record: an EOF, not an allocation of (or a loop over) the claimed size."""
    codec = CODECS[name]
    encoded = CODECS["avro"].encode(_wide_example())
    # the bytes before the field: id "x", n, big, ratio, value, flag, then blob ... sub
    prefix = {"id": b"", "blob": b"\x02x\x02\x04\x00\x00\xc0?\x00\x00\x00\x00\x00\x00\x04@\x00",
              "xs": encoded[:-7], "m": encoded[:-6]}[field]
    assert encoded.startswith(prefix)
    n, varint = claimed << 1, bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        varint.append(byte | (0x80 if n else 0))
        if not n:
            break
    with pytest.raises(CodecError):
        codec.decode(framed(name, prefix + bytes(varint) + b"abc"))


# -- None -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CODECS))
def test_none_is_a_tombstone_both_ways_except_for_models_of_json(name):
    codec = CODECS[name]
    assert codec.encode(None) is None
    if name == "model":  # a pydantic JSON model has no null: decoding one is bad input
        with pytest.raises(CodecError, match="null value cannot be validated"):
            codec.decode(None)
    else:
        assert codec.decode(None) is None


# -- reader/writer schema evolution ---------------------------------------------------------
V1: dict[str, Any] = {
    "type": "record", "name": "Account", "namespace": "fuzz.evolution",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "balance", "type": "long"},
        {"name": "note", "type": ["null", "string"], "default": None},  # removed in V2
    ],
}
V2: dict[str, Any] = {  # backward compatible with V1: drops an optional field, adds a default
    "type": "record", "name": "Account", "namespace": "fuzz.evolution",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "balance", "type": "long"},
        {"name": "currency", "type": "string", "default": "EUR"},
    ],
}
V3_INCOMPATIBLE: dict[str, Any] = {  # id: string -> int (no such promotion in Avro)
    "type": "record", "name": "Account", "namespace": "fuzz.evolution",
    "fields": [{"name": "id", "type": "int"}, {"name": "balance", "type": "long"}],
}
accounts = st.fixed_dictionaries({"id": texts, "balance": longs, "note": st.none() | texts})


def _evolved(v1: dict[str, Any]) -> dict[str, Any]:
    return {"id": v1["id"], "balance": v1["balance"], "currency": "EUR"}


@FUZZ
@given(account=accounts)
def test_plain_avro_written_with_an_older_schema_decodes_with_the_newer_reader(account):
    old = codecs.avro(V1).encode(account)
    assert codecs.avro(V2, writer=V1).decode(old) == _evolved(account)
    model = codecs.avro(V2, writer=V1, model=True).decode(old)
    assert model.model_dump() == _evolved(account)
    # without writer= the old bytes are read as V2's: wrong or an error, never an exception
    ok, result = outcome(codecs.avro(V2).decode, old)
    assert not ok or result != _evolved(account)


@FUZZ
@given(account=accounts)
def test_single_object_written_with_a_previous_schema_decodes_with_the_newer_reader(account):
    old = codecs.avro(V1, framing="single_object").encode(account)
    reader = codecs.avro(V2, framing="single_object", previous=[V1])
    assert reader.decode(old) == _evolved(account)
    new_value = {"id": account["id"], "balance": account["balance"], "currency": "USD"}
    assert reader.decode(reader.encode(new_value)) == new_value


@FUZZ
@given(account=accounts)
def test_registry_avro_written_with_an_older_schema_decodes_with_the_newer_reader(account):
    writer = bound(V1, "fuzz-accounts")
    reader = bound(V2, "fuzz-accounts")  # V2 registered under the same subject: a new version
    assert reader.schema_id != writer.schema_id
    assert reader.decode(writer.encode(account)) == _evolved(account)
    assert bound(V2, "fuzz-accounts", model=True).decode(
        writer.encode(account)).model_dump() == _evolved(account)


@FUZZ
@given(account=accounts)
def test_an_incompatible_writer_is_a_codec_error_with_every_framing(account):
    mismatch = "SchemaResolutionError: Schema mismatch: string is not int"
    plain = codecs.avro(V3_INCOMPATIBLE, writer=V1)
    with pytest.raises(CodecError) as info:
        plain.decode(codecs.avro(V1).encode(account))
    assert str(info.value) == (f"{plain.name}: cannot decode with schema "
                               f"fuzz.evolution.Account: {mismatch}")
    single = codecs.avro(V3_INCOMPATIBLE, framing="single_object", previous=[V1])
    with pytest.raises(CodecError) as info:
        single.decode(codecs.avro(V1, framing="single_object").encode(account))
    assert str(info.value) == (f"{single.name}: cannot decode with schema "
                               f"fuzz.evolution.Account: {mismatch}")
    writer = bound(V1, "fuzz-accounts")
    reader = bound(V3_INCOMPATIBLE, "fuzz-accounts-v3")
    with pytest.raises(CodecError) as info:
        reader.decode(writer.encode(account))
    assert info.value.schema_id == writer.schema_id
    assert str(info.value) == (f"{reader.name}: cannot decode (writer schema id "
                               f"{writer.schema_id}, fuzz.evolution.Account) with reader schema "
                               f"fuzz.evolution.Account: {mismatch}")


@FUZZ
@given(account=accounts, fingerprint=st.binary(min_size=8, max_size=8))
def test_single_object_with_an_unknown_fingerprint_is_a_codec_error_naming_it(account,
                                                                             fingerprint):
    reader = codecs.avro(V2, framing="single_object")  # V1 not declared in previous=
    v1_bytes = codecs.avro(V1, framing="single_object").encode(account)
    v1_fp = codecs.load_schema(V1).fingerprint
    with pytest.raises(CodecError) as info:
        reader.decode(v1_bytes)
    assert f"unknown schema (fingerprint {v1_fp.hex()})" in str(info.value)
    assert info.value.codec == reader.name
    if fingerprint != reader.schema.fingerprint:
        with pytest.raises(CodecError) as info:
            reader.decode(SINGLE_OBJECT_MAGIC + fingerprint + v1_bytes[10:])
        assert f"fingerprint {fingerprint.hex()}" in str(info.value)
