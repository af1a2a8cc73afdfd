"""Fuzzing a running topology (test driver, no broker): a schema-registry Avro source fed a mix
of good records and bad ones. Nothing raises; every bad record is dead-lettered exactly once
with the headers that say where it came from and why; every good record is processed exactly
once (the outputs equal a computation over the good records alone) -- with and without a crash
in the middle.

The topology: ``fuzz-readings`` (key: sensor id as a string, value: ``sensor-reading.avsc`` in
the registry wire format) -> to Fahrenheit -> per-sensor count / max / last time (a state
store) -> ``fuzz-sensor-stats`` (registry Avro) and ``fuzz-sensor-counts`` (JSON counts).
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc import Topology, codecs
from streamproc.codecs.registry import CodecTarget, RegistryAvroCodec, RegistrySettings
from streamproc.runtime.limits import record_size
from streamproc.runtime.operators import MAX_RECORD_BYTES
from streamproc.testing import TopologyTestDriver
from streamproc.testing.driver import DRIVER_REGISTRY

IN, STATS, COUNTS = "fuzz-readings", "fuzz-sensor-stats", "fuzz-sensor-counts"
PARTITIONS = 2
SOURCE, MAP, AGG = "readings", "fahrenheit", "stats"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

STATS_SCHEMA: dict[str, Any] = {
    "type": "record", "name": "SensorStats", "namespace": "fuzz.topology",
    "fields": [{"name": "sensor_id", "type": "string"}, {"name": "count", "type": "long"},
               {"name": "max_fahrenheit", "type": "double"}, {"name": "last_ts", "type": "long"}],
}
# A newer version of SensorReading (same name, one more optional field): its records are good.
READING_V2: dict[str, Any] = {
    "type": "record", "name": "SensorReading", "namespace": "streamproc.examples.sensor_averages",
    "fields": [{"name": "sensor_id", "type": "string"},
               {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
               {"name": "temperature", "type": "double"},
               {"name": "humidity", "type": ["null", "double"], "default": None}],
}
OTHER: dict[str, Any] = {
    "type": "record", "name": "Unrelated", "namespace": "fuzz.topology",
    "fields": [{"name": "word", "type": "string"}, {"name": "count", "type": "long"}],
}


def to_fahrenheit(r: dict[str, Any]) -> dict[str, Any]:
    return {"sensor_id": r["sensor_id"], "ts": (r["ts"] - EPOCH) // timedelta(milliseconds=1),
            "fahrenheit": r["temperature"] * 9 / 5 + 32}


def add(acc: dict[str, Any], r: dict[str, Any]) -> dict[str, Any]:
    return {"sensor_id": r["sensor_id"], "count": acc["count"] + 1,
            "max_fahrenheit": max(acc["max_fahrenheit"], r["fahrenheit"]), "last_ts": r["ts"]}


def build() -> Topology:
    t = Topology("fuzz-sensors")
    stats = (
        t.source(IN, key=codecs.string(), value=codecs.registry_avro("sensor-reading.avsc"),
                 name=SOURCE)
        .map(to_fahrenheit, name=MAP)
        .group_by_key()
        .aggregate(lambda: {"count": 0, "max_fahrenheit": float("-inf")}, add, store="stats",
                   name=AGG)
    )
    stats.to(STATS, key=codecs.string(), value=codecs.registry_avro(STATS_SCHEMA))
    stats.map(lambda acc: acc["count"], name="count").to(COUNTS, key=codecs.string(),
                                                         value=codecs.json())
    return t


def writer(schema: Any, topic: str) -> RegistryAvroCodec:
    """A producer's codec on the driver's in-memory registry (the ids the topology will see)."""
    return codecs.registry_avro(schema).bind(
        CodecTarget(topic, "value", RegistrySettings(DRIVER_REGISTRY)))


@functools.cache
def writers() -> dict[str, RegistryAvroCodec]:
    return {"v1": writer("sensor-reading.avsc", IN), "v2": writer(READING_V2, IN),
            "other": writer(OTHER, "fuzz-unrelated")}


@dataclass(frozen=True)
class Letter:
    """What a bad record's dead letter must say."""

    error_type: str
    operator: str
    codec: str | None = None
    schema_id: int | None = None


@dataclass(frozen=True)
class Input:
    kind: str
    key: bytes | None
    value: bytes | None
    timestamp: int
    reading: dict[str, Any] | None = None  # a good record's content
    letter: Letter | None = None  # a bad record's expected dead letter


CODEC = "avro-registry:streamproc.examples.sensor_averages.SensorReading"
HUGE = 2 * 1024 * 1024
sensors = st.sampled_from(["s1", "s2", "s3", "s\u00e9", ""]) | st.text(min_size=1, max_size=8)
readings = st.fixed_dictionaries({
    "sensor_id": sensors,
    "ts": st.integers(min_value=0, max_value=4 * 10**12).map(
        lambda ms: EPOCH + timedelta(milliseconds=ms)),
    "temperature": st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
})


def codec_error(schema_id: int | None) -> Letter:
    return Letter("CodecError", SOURCE, CODEC, schema_id)


@st.composite
def records(draw: st.DrawFn, timestamp: int) -> Input:
    w = writers()
    sid = w["v1"].schema_id
    assert sid is not None
    kind = draw(st.sampled_from(
        ["good", "good", "good", "good_v2", "good_big", "garbage", "truncated", "wrong_id",
         "other_schema", "trailing", "huge", "bad_key", "none_value", "none_key"]))
    reading = draw(readings)
    if kind == "good_big":  # large but within the 1 MB record limit, output included
        reading = {**reading, "sensor_id": "big-" + "x" * 200_000}
    key: bytes | None = reading["sensor_id"].encode()
    good = w["v1"].encode(reading)
    assert good is not None
    if kind in ("good", "good_big"):
        return Input(kind, key, good, timestamp, reading=reading)
    if kind == "good_v2":
        humidity = draw(st.none() | st.floats(0, 100))
        value = w["v2"].encode({**reading, "humidity": humidity})
        return Input(kind, key, value, timestamp, reading=reading)
    if kind == "garbage":  # anything not starting with the magic byte 0
        data = draw(st.binary(max_size=40).filter(lambda b: not b.startswith(b"\x00")))
        return Input(kind, key, data, timestamp, letter=codec_error(None))
    if kind == "truncated":
        cut = draw(st.integers(min_value=0, max_value=len(good) - 1))
        return Input(kind, key, good[:cut], timestamp,
                     letter=codec_error(sid if cut >= 5 else None))
    if kind == "wrong_id":
        unknown = draw(st.integers(min_value=100_000, max_value=2**32 - 1))
        return Input(kind, key, b"\x00" + unknown.to_bytes(4, "big") + good[5:], timestamp,
                     letter=codec_error(unknown))
    if kind == "other_schema":
        value = w["other"].encode({"word": reading["sensor_id"], "count": 1})
        return Input(kind, key, value, timestamp, letter=codec_error(w["other"].schema_id))
    if kind == "trailing":
        junk = draw(st.binary(min_size=1, max_size=5))
        return Input(kind, key, good + junk, timestamp, letter=codec_error(sid))
    if kind == "huge":  # 2 MB: a string claiming more than there is, or no framing at all
        if draw(st.booleans()):
            varint = bytes([0x80, 0x80, 0x80, 0x04])  # zigzag(4 MiB) as a varint
            value = good[:5] + varint + b"x" * HUGE
            return Input(kind, key, value, timestamp, letter=codec_error(sid))
        return Input(kind, key, b"\x01" * HUGE, timestamp, letter=codec_error(None))
    if kind == "bad_key":  # the value decodes, the key is not UTF-8
        return Input(kind, b"\xff" + (key or b""), good, timestamp,
                     letter=Letter("CodecError", SOURCE, "string"))
    if kind == "none_value":  # a tombstone: no codec error, the map cannot read it
        return Input(kind, key, None, timestamp, letter=Letter("TypeError", MAP))
    assert kind == "none_key"  # the aggregation needs a key
    return Input(kind, None, good, timestamp, letter=Letter("NullKeyError", AGG))


@st.composite
def inputs(draw: st.DrawFn) -> list[Input]:
    n = draw(st.integers(min_value=1, max_value=25))
    return [draw(records(timestamp=1_000 + 10 * i)) for i in range(n)]


def pipe(d: TopologyTestDriver, rec: Input) -> None:
    # Keyed by the key bytes like Kafka's producer (null keys alternate): the partition the
    # record lands in is read back from the topic, not assumed.
    partition = zlib.crc32(rec.key) % PARTITIONS if rec.key is not None else None
    d.pipe(IN, rec.value, rec.key, timestamp=rec.timestamp, partition=partition)


def expected_outputs(recs: list[Input]) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Per sensor, the stats and counts the good records alone give, in their order."""
    acc: dict[str, dict[str, Any]] = {}
    stats: dict[str, list[Any]] = {}
    counts: dict[str, list[Any]] = {}
    for r in recs:
        if r.reading is None:
            continue
        reading = to_fahrenheit(r.reading)
        k = reading["sensor_id"]
        cur = acc.get(k, {"count": 0, "max_fahrenheit": float("-inf")})
        cur = acc[k] = {"sensor_id": k, "count": cur["count"] + 1,
                        "max_fahrenheit": max(cur["max_fahrenheit"], reading["fahrenheit"]),
                        "last_ts": reading["ts"]}
        stats.setdefault(k, []).append((cur, r.timestamp))
        counts.setdefault(k, []).append((cur["count"], r.timestamp))
    return stats, counts


def per_key(d: TopologyTestDriver, topic: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in d.records(topic):
        out.setdefault(r.key, []).append((r.value, r.timestamp))
    return out


def check(d: TopologyTestDriver, recs: list[Input]) -> None:
    piped = d.records(IN, raw=True)
    assert [(r.key, r.value) for r in piped] == [(r.key, r.value) for r in recs]
    where = {(p.partition, p.offset): rec for p, rec in zip(piped, recs, strict=True)}
    bad = {pos: rec for pos, rec in where.items() if rec.letter is not None}

    letters = d.dead_letters()
    positions = [(int(m.headers["streamproc.partition"]), int(m.headers["streamproc.offset"]))
                 for m in letters]
    assert sorted(positions) == sorted(bad), "each bad record dead-lettered exactly once"
    for m, pos in zip(letters, positions, strict=True):
        rec = bad[pos]
        assert rec.letter is not None
        h = m.headers
        if rec.kind == "huge":
            # Over max_record_bytes (1 MB): the dead letter keeps the start of the value and
            # says what was cut, with the original size and checksum.
            assert record_size(m.key, m.value, list(h.items())) <= MAX_RECORD_BYTES
            assert m.key == rec.key and rec.value.startswith(m.value or b"")
            assert len(m.value or b"") < len(rec.value or b"")
            assert h["streamproc.truncated"] == b"value"
            assert h["streamproc.original.size"] == str(
                len(rec.key or b"") + len(rec.value or b"")).encode()
            assert h["streamproc.original.sha256"] == hashlib.sha256(
                rec.value or b"").hexdigest().encode()
        else:
            assert (m.key, m.value) == (rec.key, rec.value)  # the original bytes, untouched
            assert "streamproc.truncated" not in h
        assert m.timestamp == rec.timestamp
        assert h["streamproc.topic"] == IN.encode()
        assert h["streamproc.timestamp"] == str(rec.timestamp).encode()
        assert h["streamproc.operator"] == rec.letter.operator.encode()
        assert h["streamproc.error.type"] == rec.letter.error_type.encode(), (
            rec.kind, h["streamproc.error.message"])
        assert h["streamproc.error.message"]
        assert h.get("streamproc.codec") == (
            rec.letter.codec.encode() if rec.letter.codec else None)
        assert h.get("streamproc.schema.id") == (
            str(rec.letter.schema_id).encode() if rec.letter.schema_id is not None else None)

    stats, counts = expected_outputs(recs)
    assert per_key(d, STATS) == stats
    assert per_key(d, COUNTS) == counts


FUZZ = settings(max_examples=25, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(recs=inputs())
def test_bad_records_are_dead_lettered_once_and_good_ones_processed_once(recs):
    with TopologyTestDriver(build(), partitions=PARTITIONS) as d:
        for rec in recs:
            pipe(d, rec)
        check(d, recs)


@FUZZ
@given(recs=inputs(), data=st.data())
def test_the_same_holds_across_a_crash_in_the_middle(recs, data):
    n = len(recs)
    commits = set(data.draw(st.lists(st.integers(min_value=0, max_value=n - 1), max_size=3)))
    crash_after = data.draw(st.integers(min_value=0, max_value=n - 1))
    how = data.draw(st.sampled_from([{}, {"lose_state": True}, {"mid_checkpoint": True}]))
    with TopologyTestDriver(build(), partitions=PARTITIONS, auto_commit=False) as d:
        for i, rec in enumerate(recs):
            pipe(d, rec)
            if i in commits:
                d.commit()
            if i == crash_after:
                d.crash(**how)
        d.commit()
        check(d, recs)


def test_every_kind_of_bad_record_is_covered_by_one_example():
    """The strategies above, one of each kind, on one driver: a fixed regression case that
    does not depend on what Hypothesis happens to draw."""
    sid = writers()["v1"].schema_id
    reading = {"sensor_id": "s1", "ts": EPOCH + timedelta(seconds=1), "temperature": 20.0}
    good = writers()["v1"].encode(reading)
    assert good is not None and sid is not None
    recs = [
        Input("good", b"s1", good, 1_000, reading=reading),
        Input("garbage", b"s1", b"{json?}", 1_010, letter=codec_error(None)),
        Input("truncated", b"s1", good[:3], 1_020, letter=codec_error(None)),
        Input("truncated", b"s1", good[:-1], 1_030, letter=codec_error(sid)),
        Input("wrong_id", b"s1", b"\x00\x7f\xff\xff\xff" + good[5:], 1_040,
              letter=codec_error(2**31 - 1)),
        Input("other_schema", b"s1", writers()["other"].encode({"word": "w", "count": 2}),
              1_050, letter=codec_error(writers()["other"].schema_id)),
        Input("trailing", b"s1", good + b"\x00", 1_060, letter=codec_error(sid)),
        Input("huge", b"s1", b"\x01" * HUGE, 1_070, letter=codec_error(None)),
        Input("bad_key", b"\xff", good, 1_080, letter=Letter("CodecError", SOURCE, "string")),
        Input("none_value", b"s1", None, 1_090, letter=Letter("TypeError", MAP)),
        Input("none_key", None, good, 1_100, letter=Letter("NullKeyError", AGG)),
        Input("good", b"s1", good, 1_110, reading=reading),
    ]
    with TopologyTestDriver(build(), partitions=PARTITIONS) as d:
        for rec in recs:
            pipe(d, rec)
        check(d, recs)
        assert d.values(COUNTS) == [1, 2]
        assert len(d.dead_letters()) == 10
