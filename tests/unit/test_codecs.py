"""streamproc.codecs: raw, string, int64/int32, json and pydantic models."""

from __future__ import annotations

import struct

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc import codecs
from streamproc.codecs.base import Codec
from streamproc.errors import CodecError, StreamprocError

FAST = settings(max_examples=100, deadline=None, database=None)


class Order(pydantic.BaseModel):
    id: int
    item: str
    qty: int = 1


class Other(pydantic.BaseModel):
    x: float


# -- the protocol and names ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("factory", "name"),
    [
        (codecs.raw, "raw"),
        (codecs.string, "string"),
        (codecs.int64, "int64"),
        (codecs.int32, "int32"),
        (codecs.json, "json"),
        (lambda: codecs.model(Order), "pydantic:Order"),
    ],
)
def test_every_codec_has_its_name_and_implements_the_protocol(factory, name):
    codec = factory()
    assert codec.name == name
    assert isinstance(codec, Codec)


def test_factories_return_fresh_objects():
    assert codecs.json() is not codecs.json()
    assert codecs.int64() is not codecs.int64()


@pytest.mark.parametrize(
    "codec", [codecs.raw(), codecs.string(), codecs.int64(), codecs.int32(), codecs.json()],
    ids=["raw", "string", "int64", "int32", "json"],
)
def test_none_passes_through_both_ways(codec):
    assert codec.decode(None) is None
    assert codec.encode(None) is None


def test_codec_error_is_a_streamproc_error_carrying_the_codec_name():
    err = CodecError("json", "boom")
    assert isinstance(err, StreamprocError)
    assert err.codec == "json"
    assert str(err) == "json: boom"


# -- raw -------------------------------------------------------------------------------------
def test_raw_round_trip_and_buffer_types():
    c = codecs.raw()
    assert c.decode(b"\x00\xffabc") == b"\x00\xffabc"
    assert c.encode(b"\x00\xffabc") == b"\x00\xffabc"
    assert c.encode(bytearray(b"ab")) == b"ab"
    assert type(c.encode(bytearray(b"ab"))) is bytes
    assert c.encode(memoryview(b"xyz")) == b"xyz"
    assert c.encode(b"") == b""


def test_raw_refuses_non_bytes():
    with pytest.raises(CodecError) as info:
        codecs.raw().encode("text")
    assert info.value.codec == "raw"
    assert str(info.value) == "raw: expected bytes, got str"


# -- string ----------------------------------------------------------------------------------
def test_string_round_trip_utf8():
    c = codecs.string()
    assert c.encode("h\u00e9llo \u2603") == b"h\xc3\xa9llo \xe2\x98\x83"
    assert c.decode(b"h\xc3\xa9llo \xe2\x98\x83") == "h\u00e9llo \u2603"
    assert c.encode("") == b""
    assert c.decode(b"") == ""


def test_string_invalid_utf8_is_a_codec_error():
    with pytest.raises(CodecError) as info:
        codecs.string().decode(b"ok\xff")
    assert info.value.codec == "string"
    assert str(info.value).startswith("string: not valid UTF-8: ")


def test_string_refuses_non_str_on_encode():
    with pytest.raises(CodecError) as info:
        codecs.string().encode(b"bytes")
    assert info.value.codec == "string"
    assert str(info.value) == "string: expected str, got bytes"


# -- integers --------------------------------------------------------------------------------
def test_int64_is_big_endian_like_kafka_long_serializer():
    c = codecs.int64()
    assert c.encode(1) == b"\x00" * 7 + b"\x01"
    assert c.encode(0) == b"\x00" * 8
    assert c.encode(256) == b"\x00" * 6 + b"\x01\x00"
    assert c.encode(-1) == b"\xff" * 8
    assert c.encode(-2) == b"\xff" * 7 + b"\xfe"
    assert c.encode(2**63 - 1) == b"\x7f" + b"\xff" * 7
    assert c.encode(-(2**63)) == b"\x80" + b"\x00" * 7
    assert c.decode(b"\x00" * 7 + b"\x01") == 1
    assert c.decode(b"\xff" * 7 + b"\xfe") == -2
    assert c.decode(b"\x80" + b"\x00" * 7) == -(2**63)


def test_int32_is_big_endian_like_kafka_integer_serializer():
    c = codecs.int32()
    assert c.encode(1) == b"\x00\x00\x00\x01"
    assert c.encode(-1) == b"\xff\xff\xff\xff"
    assert c.encode(2**31 - 1) == b"\x7f\xff\xff\xff"
    assert c.encode(-(2**31)) == b"\x80\x00\x00\x00"
    assert c.decode(b"\x00\x00\x01\x00") == 256
    assert c.decode(b"\xff\xff\xff\xfe") == -2


@pytest.mark.parametrize(
    ("codec", "data", "message"),
    [
        (codecs.int64(), b"\x00\x00\x00\x01", "int64: expected 8 bytes, got 4"),
        (codecs.int64(), b"", "int64: expected 8 bytes, got 0"),
        (codecs.int64(), b"\x00" * 9, "int64: expected 8 bytes, got 9"),
        (codecs.int32(), b"\x00" * 8, "int32: expected 4 bytes, got 8"),
        (codecs.int32(), b"\x01", "int32: expected 4 bytes, got 1"),
    ],
)
def test_integer_decode_of_wrong_width_is_a_codec_error(codec, data, message):
    with pytest.raises(CodecError) as info:
        codec.decode(data)
    assert info.value.codec == codec.name
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("codec", "value", "message"),
    [
        (codecs.int64(), 2**63, f"int64: {2**63} does not fit in 8 bytes"),
        (codecs.int64(), -(2**63) - 1, f"int64: {-(2**63) - 1} does not fit in 8 bytes"),
        (codecs.int32(), 2**31, f"int32: {2**31} does not fit in 4 bytes"),
        (codecs.int64(), "1", "int64: expected int, got str"),
        (codecs.int64(), 1.0, "int64: expected int, got float"),
        (codecs.int32(), True, "int32: expected int, got bool"),
    ],
)
def test_integer_encode_of_bad_value_is_a_codec_error(codec, value, message):
    with pytest.raises(CodecError) as info:
        codec.encode(value)
    assert info.value.codec == codec.name
    assert str(info.value) == message


def test_integer_codec_only_has_widths_4_and_8():
    with pytest.raises(ValueError, match="integer codec size must be 4 or 8 bytes"):
        codecs.IntegerCodec(2)


@FAST
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_int64_round_trip_property(n):
    c = codecs.int64()
    data = c.encode(n)
    assert data == struct.pack(">q", n)
    assert len(data) == 8
    assert c.decode(data) == n


@FAST
@given(st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_int32_round_trip_property(n):
    c = codecs.int32()
    assert c.decode(c.encode(n)) == n


# -- json ------------------------------------------------------------------------------------
def test_json_round_trip_and_compact_encoding():
    c = codecs.json()
    value = {"word": "caf\u00e9", "n": 3, "xs": [1, 2.5, None, True], "nested": {"a": []}}
    data = c.encode(value)
    assert data == (b'{"word":"caf\xc3\xa9","n":3,"xs":[1,2.5,null,true],'
                    b'"nested":{"a":[]}}')
    assert c.decode(data) == value
    assert c.encode(7) == b"7"
    assert c.encode("s") == b'"s"'
    assert c.decode(b" 42 ") == 42
    # JSON null decodes to None, and None encodes to a tombstone (not b"null").
    assert c.decode(b"null") is None


@pytest.mark.parametrize(
    "data", [b"{bad", b"", b"[1,", b"nul", b"'single'", b'"\xff"', b"\xff"],
    ids=["brace", "empty", "unterminated", "nul", "single-quotes", "bad-utf8-str", "bad-utf8"],
)
def test_json_invalid_input_is_a_codec_error(data):
    with pytest.raises(CodecError) as info:
        codecs.json().decode(data)
    assert info.value.codec == "json"
    assert str(info.value).startswith("json: invalid JSON: ")


@pytest.mark.parametrize(
    "value", [{1, 2}, object(), {1: "int key"}, 2**70, b"bytes"],
    ids=["set", "object", "int-key", "too-big-int", "bytes"],
)
def test_json_non_serializable_is_a_codec_error(value):
    with pytest.raises(CodecError) as info:
        codecs.json().encode(value)
    assert info.value.codec == "json"
    assert str(info.value).startswith("json: not JSON-serializable: ")


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)


@FAST
@given(_json_values.filter(lambda v: v is not None))  # a top-level None is a tombstone
def test_json_round_trip_property(value):
    c = codecs.json()
    data = c.encode(value)
    assert isinstance(data, bytes)
    assert c.decode(data) == value


# -- pydantic models -------------------------------------------------------------------------
def test_model_decode_validates_json_into_the_model():
    c = codecs.model(Order)
    order = c.decode(b'{"id": 7, "item": "pen"}')
    assert order == Order(id=7, item="pen", qty=1)
    assert type(order) is Order


def test_model_encode_accepts_an_instance_or_a_dict():
    c = codecs.model(Order)
    assert c.encode(Order(id=1, item="pen", qty=2)) == b'{"id":1,"item":"pen","qty":2}'
    assert c.encode({"id": 1, "item": "pen"}) == b'{"id":1,"item":"pen","qty":1}'


def test_model_round_trip():
    c = codecs.model(Order)
    order = Order(id=3, item="ink", qty=5)
    assert c.decode(c.encode(order)) == order


def test_model_lax_mode_coerces_numeric_strings():
    c = codecs.model(Order)
    assert c.decode(b'{"id": "1", "item": "pen"}') == Order(id=1, item="pen")
    assert c.encode({"id": "1", "item": "pen"}) == b'{"id":1,"item":"pen","qty":1}'


def test_model_strict_mode_refuses_a_string_for_an_int_on_decode():
    c = codecs.model(Order, strict=True)
    assert c.strict is True
    with pytest.raises(CodecError) as info:
        c.decode(b'{"id": "1", "item": "pen"}')
    assert info.value.codec == "pydantic:Order"
    assert str(info.value) == "pydantic:Order: id: Input should be a valid integer"


def test_model_strict_mode_refuses_a_string_for_an_int_on_encode():
    with pytest.raises(CodecError) as info:
        codecs.model(Order, strict=True).encode({"id": "1", "item": "pen"})
    assert str(info.value) == "pydantic:Order: id: Input should be a valid integer"


def test_model_validation_failure_lists_each_field():
    with pytest.raises(CodecError) as info:
        codecs.model(Order).decode(b"{}")
    assert info.value.codec == "pydantic:Order"
    assert str(info.value) == "pydantic:Order: id: Field required; item: Field required"


def test_model_validation_failure_summary_is_capped_at_five_fields():
    class Wide(pydantic.BaseModel):
        a: int
        b: int
        c: int
        d: int
        e: int
        f: int
        g: int

    with pytest.raises(CodecError) as info:
        codecs.model(Wide).decode(b"{}")
    assert str(info.value) == (
        "pydantic:Wide: a: Field required; b: Field required; c: Field required; "
        "d: Field required; e: Field required; (+2 more)"
    )


def test_model_invalid_json_is_a_codec_error():
    with pytest.raises(CodecError) as info:
        codecs.model(Order).decode(b"{bad")
    assert info.value.codec == "pydantic:Order"
    assert str(info.value).startswith("pydantic:Order: <root>: Invalid JSON")


def test_model_decode_of_none_is_a_codec_error():
    with pytest.raises(CodecError) as info:
        codecs.model(Order).decode(None)
    assert info.value.codec == "pydantic:Order"
    assert str(info.value) == "pydantic:Order: null value cannot be validated as a model"


def test_model_encode_of_none_is_a_tombstone():
    assert codecs.model(Order).encode(None) is None


def test_model_encode_of_an_invalid_dict_is_a_codec_error():
    with pytest.raises(CodecError) as info:
        codecs.model(Order).encode({"id": 1})
    assert str(info.value) == "pydantic:Order: item: Field required"


def test_model_encode_refuses_an_instance_of_another_model():
    with pytest.raises(CodecError):
        codecs.model(Order).encode(Other(x=1.5))


# -- fast paths ------------------------------------------------------------------------------
def test_fast_paths_exist_for_json_and_string_and_agree_with_the_methods():
    from streamproc.codecs.base import fast_decoder, fast_encoder

    for codec, obj in ((codecs.json(), {"a": [1, 2.5, "x"]}), (codecs.string(), "héllo")):
        dec, enc = fast_decoder(codec), fast_encoder(codec)
        assert dec is not None and enc is not None
        raw = codec.encode(obj)
        assert enc(obj) == raw and dec(raw) == codec.decode(raw) == obj
    assert fast_decoder(codecs.raw()) is None and fast_encoder(codecs.int64()) is None


def test_a_subclass_overriding_decode_is_not_bypassed_by_the_inherited_fast_path():
    from streamproc.codecs.base import fast_decoder, fast_encoder
    from streamproc.codecs.basic import JsonCodec

    class Upper(JsonCodec):
        def decode(self, data):
            return str(super().decode(data)).upper()

    assert fast_decoder(Upper()) is None
    assert fast_encoder(Upper()) is not None  # encode is not overridden


@given(st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_fast_json_and_string_decoders_fail_exactly_where_the_codecs_fail(data):
    from streamproc.codecs.base import fast_decoder

    for codec in (codecs.json(), codecs.string()):
        fast = fast_decoder(codec)
        assert fast is not None
        try:
            expected = codec.decode(data)
        except CodecError:
            with pytest.raises(Exception):  # noqa: B017 - any exception triggers the slow path
                fast(data)
        else:
            assert fast(data) == expected
