"""wordcount and sensor_averages on Avro in the schema registry wire format (test driver, the
driver's mock:// registry): the same results as their JSON twins, bytes framed as a registry
client expects, bad records dead-lettered with codec and schema id."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from streamproc import codecs
from streamproc.codecs.registry import RegistrySettings
from streamproc.testing import check_crash_safety
from streamproc.testing.driver import DRIVER_REGISTRY
from tests.topologies import expected
from tests.topologies.helpers import per_key, pipe_all, steps
from topologies import sensor_averages, wordcount
from topologies._examples import BASE_MS, SCHEMAS, partition_of

SR_IN, SR_OUT = "sensor-readings-avro", "sensor-averages-avro"
WC_IN, WC_OUT = "text-lines-avro", "word-counts-avro"


def client() -> Any:
    return codecs.registry_client(RegistrySettings(DRIVER_REGISTRY))


def ms(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def as_json_shape(value: dict[str, Any]) -> dict[str, Any]:
    """An Avro SensorAverage (timestamp-millis as datetimes) in the JSON variant's shape."""
    return {"start": ms(value["start"]), "end": ms(value["end"]),
            "avg_temperature": value["avg_temperature"]}


def test_sensor_averages_on_avro_equals_the_batch_computation(topology_driver):
    events = sensor_averages.sample(seed=2)
    d = topology_driver(sensor_averages.avro, partitions=2)
    pipe_all(d, SR_IN, events, 2)
    d.finish()
    out, late = expected.sensor_averages(events, lambda k: partition_of(k, 2))
    got = {k: [(as_json_shape(v), ts) for v, ts in seq]
           for k, seq in per_key(d.records(SR_OUT)).items()}
    assert got == out["sensor-averages"]
    assert d.metrics.total("late_records_total") == late
    assert d.dead_letters() == []


def test_sensor_averages_output_is_framed_for_the_registry(topology_driver):
    d = topology_driver(sensor_averages.avro)
    pipe_all(d, SR_IN, [("s1", {"sensor_id": "s1", "ts": BASE_MS + 100, "temperature": 20.5},
                         BASE_MS)])
    d.finish()
    [rec] = d.records(SR_OUT, raw=True)
    raw = rec.value
    assert raw[0] == 0
    sid = int.from_bytes(raw[1:5], "big")
    registered = client().get_schema(sid)
    assert registered.schema_str == codecs.load_schema(SCHEMAS / "sensor-average.avsc").text
    latest = client().get_latest_version(f"{SR_OUT}-value")
    assert latest.schema_id == sid
    # Another registry client (confluent-kafka's own deserializer) reads it.
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    value = AvroDeserializer(client())(raw, SerializationContext(SR_OUT, MessageField.VALUE))
    assert as_json_shape(value) == {"start": BASE_MS, "end": BASE_MS + 5000,
                                    "avg_temperature": 20.5}


def test_sensor_averages_reads_records_of_an_older_writer_schema(topology_driver):
    """A producer still on v0 of the schema (no temperature unit field, an extra field the
    topology's schema dropped) keeps working once the reader schema evolves compatibly."""
    v0 = {"type": "record", "name": "SensorReading",
          "namespace": "streamproc.examples.sensor_averages",
          "fields": [{"name": "sensor_id", "type": "string"},
                     {"name": "ts", "type": "long"},
                     {"name": "temperature", "type": "float"},  # promoted to double
                     {"name": "firmware", "type": ["null", "string"], "default": None}]}
    from confluent_kafka.schema_registry import Schema

    sid = client().register_schema("legacy-sensors-value", Schema(
        json.dumps(v0), "AVRO"))
    old = codecs.AvroCodec(v0)
    body = old.encode({"sensor_id": "s9", "ts": BASE_MS + 10, "temperature": 19.5,
                       "firmware": "1.2"})
    assert body is not None
    d = topology_driver(sensor_averages.avro)
    d.pipe(SR_IN, b"\x00" + sid.to_bytes(4, "big") + body, key=b"s9", timestamp=BASE_MS)
    d.finish()
    assert [as_json_shape(v) for v in d.values(SR_OUT)] == [
        {"start": BASE_MS, "end": BASE_MS + 5000, "avg_temperature": 19.5}]


def test_incompatible_and_malformed_records_go_to_the_dead_letter_topic(topology_driver):
    wrong = {"type": "record", "name": "SensorReading",
             "namespace": "streamproc.examples.sensor_averages",
             "fields": [{"name": "sensor_id", "type": "string"},
                        {"name": "ts", "type": "string"}]}  # string ts: no promotion to long
    from confluent_kafka.schema_registry import Schema

    sid = client().register_schema("broken-sensors-value", Schema(
        json.dumps(wrong), "AVRO"))
    body = codecs.AvroCodec(wrong).encode({"sensor_id": "s1", "ts": "yesterday"})
    assert body is not None
    d = topology_driver(sensor_averages.avro)
    bad = [b"\x00" + sid.to_bytes(4, "big") + body,  # incompatible writer
           b"\x00\x00\x0f\x42\x40" + body,           # schema id 1000000: unknown
           b'{"sensor_id": "s1"}',                   # JSON, not framed
           None]                                     # a tombstone
    for i, value in enumerate(bad):
        d.pipe(SR_IN, value, key=b"s1", timestamp=BASE_MS + i)
    dead = d.dead_letters()
    assert [r.value for r in dead] == bad
    name = "avro-registry:streamproc.examples.sensor_averages.SensorReading"
    assert [(h["streamproc.offset"], h["streamproc.error.type"], h.get("streamproc.codec"),
             h.get("streamproc.schema.id")) for h in (r.headers for r in dead)] == [
        (b"0", b"CodecError", name.encode(), str(sid).encode()),
        (b"1", b"CodecError", name.encode(), b"1000000"),
        (b"2", b"CodecError", name.encode(), None),
        (b"3", b"TypeError", None, None)]  # the event-time extractor got no reading
    assert d.values(SR_OUT) == []


def test_wordcount_on_avro_counts_like_the_json_variant(topology_driver):
    lines = ["the quick brown fox", "jumps over the lazy dog", "The end", "dog eat dog"]
    d = topology_driver(wordcount.avro, partitions=3)
    for line in lines:
        d.pipe(WC_IN, {"line": line})
    words = [w for line in lines for w in line.lower().split()]
    seen: Counter[str] = Counter()
    expected_by_word: dict[str, list[dict[str, Any]]] = {}
    for w in words:
        seen[w] += 1
        expected_by_word.setdefault(w, []).append({"word": w, "count": seen[w]})
    got: dict[str, list[dict[str, Any]]] = {}
    for k, v in d.key_values(WC_OUT):
        got.setdefault(k, []).append(v)
    assert got == expected_by_word
    # State holds WordCount records in Avro single-object encoding.
    assert d.state("counts")["dog"] == {"word": "dog", "count": 3}


def test_wordcount_on_avro_is_crash_safe():
    script = steps(WC_IN, [(None, {"line": "a b a"}, 1), (None, {"line": "b c"}, 2),
                           (None, {"line": "a"}, 3)])
    assert check_crash_safety(wordcount.build_avro, script) == 4 * len(script)
