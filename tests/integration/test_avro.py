"""wordcount and sensor_averages on Avro with schema registry framing, on the real broker.

The instance runs in-process (``running``) so that it shares confluent-kafka's in-memory
``mock://`` registry with the producer of the input and the reader of the output: no registry
server can run on these machines (compose.yaml runs a real one). Everything else is real:
the broker, transactions, the repartition topic, the changelog, the dead-letter topic.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from streamproc import codecs
from streamproc.codecs.registry import CodecTarget, RegistrySettings
from streamproc.kafka import io
from tests.harness import create_topics, running, unique
from tests.topologies import expected
from topologies import sensor_averages, wordcount
from topologies._examples import SCHEMAS, partition_of, with_flush

pytestmark = pytest.mark.kafka


def codec(schema: str, topic: str, registry: str) -> Any:
    return codecs.registry_avro(SCHEMAS / schema).bind(
        CodecTarget(topic, "value", RegistrySettings(registry)))


def ms(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def test_sensor_averages_on_avro(kafka: str, tmp_path: Path) -> None:
    registry = f"mock://{unique('it')}"
    src, out = unique("readings-avro"), unique("averages-avro")
    app_id = unique("sensor-averages-avro")
    create_topics(kafka, (src, 2), (out, 2))
    readings = codec("sensor-reading.avsc", src, registry)
    events = with_flush(sensor_averages.sample(), sensor_averages.flush, 2)
    records: list[tuple[bytes | None, bytes | None, int | None, int | None]] = [
        (k.encode(), readings.encode(v), ts, partition_of(k, 2)) for k, v, ts in events]
    # Bad input on partition 0 between good records: dead-lettered, the rest unaffected.
    bad = [b"\x00\x00\x01\x86\xa0garbage", b"not avro at all"]
    records[10:10] = [(b"sensor-1", v, events[10][2], 0) for v in bad]
    io.produce_timed(kafka, src, records)

    topology = sensor_averages.build(app_id, src, out, avro=True)
    with running(topology, kafka, tmp_path / "state", schema_registry_url=registry):
        assert io.wait_processed(kafka, app_id, [src], timeout_s=90)

    averages = codec("sensor-average.avsc", out, registry)
    got: dict[str, list[tuple[Any, int]]] = {}
    for r in io.read_all(kafka, out):
        assert r.value is not None and r.value[:5] == b"\x00" + averages.schema_id.to_bytes(
            4, "big")
        v = averages.decode(r.value)
        got.setdefault((r.key or b"").decode(), []).append(
            ({"start": ms(v["start"]), "end": ms(v["end"]),
              "avg_temperature": v["avg_temperature"]}, r.timestamp))
    want, _late = expected.sensor_averages(events, lambda k: partition_of(k, 2), finish=False)
    assert got == want["sensor-averages"]

    dead = io.read_all(kafka, f"{app_id}-dlq")
    assert [r.value for r in dead] == bad
    name = readings.name.encode()
    assert [(r.headers["streamproc.topic"], r.headers["streamproc.partition"],
             r.headers["streamproc.codec"], r.headers.get("streamproc.schema.id"))
            for r in dead] == [(src.encode(), b"0", name, b"100000"),
                               (src.encode(), b"0", name, None)]


def test_wordcount_on_avro(kafka: str, tmp_path: Path) -> None:
    registry = f"mock://{unique('it')}"
    src, out = unique("lines-avro"), unique("counts-avro")
    app_id = unique("wordcount-avro")
    create_topics(kafka, (src, 3), (out, 3))
    lines_codec = codec("text-line.avsc", src, registry)
    lines = [f"w{i % 7} w{i % 3} shared" for i in range(300)]
    io.produce_timed(kafka, src, [(None, lines_codec.encode({"line": ln}), None, None)
                                  for ln in lines])

    topology = wordcount.build_avro(app_id, src, out)
    with running(topology, kafka, tmp_path / "state", schema_registry_url=registry):
        assert io.wait_processed(kafka, app_id, [src, f"{app_id}-words-repartition"],
                                 timeout_s=90)

    counts = codec("word-count.avsc", out, registry)
    per_word: dict[str, list[int]] = {}
    for r in io.read_all(kafka, out):
        v = counts.decode(r.value)
        assert v["word"] == (r.key or b"").decode()
        per_word.setdefault(v["word"], []).append(v["count"])
    totals = Counter(w for ln in lines for w in ln.split())
    assert per_word == {w: list(range(1, n + 1)) for w, n in totals.items()}
    assert io.read_all(kafka, f"{app_id}-dlq") == []
