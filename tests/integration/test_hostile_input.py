"""Hostile input on a real broker (#15 items 1-4): every record is produced with a bare
confluent-kafka producer (or librdkafka itself, for header names that are not UTF-8), never
through the project's helpers. Each bad record is dead-lettered exactly once with its headers,
each good one has its exact effect, and the instance never stops."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from streamproc import Topology, codecs, windows
from streamproc.config import load_settings
from streamproc.errors import ConfigError
from streamproc.kafka import io
from streamproc.kafka.admin import TopicAdmin, TopicSpec
from streamproc.runtime.limits import RECORD_OVERHEAD, record_size
from streamproc.service import application
from tests import apps
from tests.harness import TEST_SETTINGS, running, unique
from tests.rawkafka import RawProducer

pytestmark = pytest.mark.kafka

LIMIT = 16_384  # max_record_bytes for these tests: small records make the point
BASE = 1_709_251_200_000  # 2024-03-01T00:00Z


def create(kafka: str, *topics: str) -> None:
    """One-partition topics that keep their records: the tests date them 2024 (and 1970), which
    time-based retention would delete under load before they are read back."""
    TopicAdmin(kafka).create([TopicSpec(t, 1, {"retention.ms": "-1"}) for t in topics])


def bare_producer(kafka: str) -> Producer:
    return Producer({"bootstrap.servers": kafka, "message.max.bytes": 2_000_000})


def send(kafka: str, topic: str, records: list[dict[str, Any]]) -> None:
    """Each dict: value, key, headers, timestamp, partition (all optional)."""
    p = bare_producer(kafka)
    errors: list[Any] = []
    for r in records:
        p.produce(topic, r.get("value"), r.get("key"), r.get("partition", 0),
                  headers=r.get("headers"), timestamp=r.get("timestamp", 0),
                  on_delivery=lambda err, _m: errors.append(err) if err else None)
        p.flush(30)  # one at a time: offsets follow the list
    assert p.flush(30) == 0 and errors == []


def letters(kafka: str, app_id: str) -> list[io.ReadRecord]:
    return sorted(io.read_all(kafka, f"{app_id}-dlq"),
                  key=lambda r: (int(r.headers["streamproc.partition"]),
                                 int(r.headers["streamproc.offset"])))


def wait_for(check: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


# -- 1. size ---------------------------------------------------------------------------------
def passthrough(app_id: str, src: str, sink: str) -> Topology:
    t = Topology(app_id)
    (t.source(src, key=codecs.string(), value=codecs.json())
     .map(lambda v: v, name="same")
     .to(sink, key=codecs.string(), value=codecs.json()))
    return t


def test_records_too_large_with_their_headers_are_dead_lettered_and_cut_to_fit(
        kafka: str, tmp_path: Path) -> None:
    app_id, src, sink = unique("size"), unique("size-in"), unique("size-out")
    create(kafka, src, sink)
    big_headers = [(f"h{i}", b"x" * 4000) for i in range(5)]  # 20 KB of headers
    long_text = "y" * 17_000  # a 17 KB JSON string
    records = [
        {"key": b"a", "value": b'"small"'},
        {"key": b"b", "value": b'"tiny"', "headers": big_headers},  # over only by headers
        {"key": b"c", "value": orjson.dumps(long_text), "headers": [("trace", b"t-2")]},
        {"key": b"d", "value": b'"last"', "headers": [("trace", b"t-3")]},
    ]
    send(kafka, src, records)
    with running(passthrough(app_id, src, sink), kafka, tmp_path,
                 max_record_bytes=LIMIT) as app:
        assert io.wait_processed(kafka, app_id, [src], 60)
        assert app.max_record_bytes == LIMIT  # set, and below every topic's limit
        truncated = app.metrics.total("dead_letters_truncated_total")
    out = io.read_all(kafka, sink)
    assert [(r.key, r.value, r.headers) for r in out] == [
        (b"a", b'"small"', {}), (b"d", b'"last"', {"trace": b"t-3"})]
    dlq = letters(kafka, app_id)
    assert [int(r.headers["streamproc.offset"]) for r in dlq] == [1, 2]
    assert truncated == 2
    b, c = dlq
    # b: its 20 KB of headers cannot travel with it; key and value do, intact.
    assert (b.key, b.value) == (b"b", b'"tiny"')
    assert b.headers["streamproc.error.type"] == b"RecordTooLarge"
    assert b.headers["streamproc.truncated"] == b"headers"
    assert not any(k.startswith("h") for k in b.headers)
    assert b.headers["streamproc.original.size"] == str(
        1 + 6 + sum(len(n) + len(v) for n, v in big_headers)).encode()
    assert b.headers["streamproc.original.sha256"] == hashlib.sha256(b'"tiny"').hexdigest(
        ).encode()
    # c: the value is cut to what fits; its checksum identifies the original.
    original = orjson.dumps(long_text)
    assert c.key == b"c" and c.headers["trace"] == b"t-2"
    assert c.headers["streamproc.error.type"] == b"RecordTooLarge"
    assert c.headers["streamproc.truncated"] == b"value"
    assert c.value is not None and original.startswith(c.value) and len(c.value) < LIMIT
    assert c.headers["streamproc.original.sha256"] == hashlib.sha256(original).hexdigest(
        ).encode()
    for r in dlq:
        assert record_size(r.key, r.value, list(r.headers.items())) <= LIMIT
    assert io.committed_offsets(kafka, app_id, src) == {0: 4}


def test_max_record_bytes_is_checked_against_the_topics_at_start(kafka: str,
                                                                  tmp_path: Path) -> None:
    app_id, src, sink = unique("lim"), unique("lim-in"), unique("lim-out")
    admin = AdminClient({"bootstrap.servers": kafka})
    futures = admin.create_topics([NewTopic(src, 1, 1), NewTopic(
        sink, 1, 1, config={"max.message.bytes": "20000"})])
    for f in futures.values():
        f.result()
    app = application(passthrough(app_id, src, sink), load_settings(
        **{**TEST_SETTINGS, "state_dir": tmp_path, "max_record_bytes": 30000}), bootstrap=kafka)
    with pytest.raises(ConfigError, match=r"max_record_bytes .*STREAMPROC_MAX_RECORD_BYTES.*"
                       r"30000 is larger than max.message.bytes of topic " + sink + r" \(20000\)"):
        app.run()
    send(kafka, src, [{"key": b"k", "value": orjson.dumps("z" * 19_950)},
                      {"key": b"k", "value": b'"ok"'}])
    with running(passthrough(app_id, src, sink), kafka, tmp_path / "2") as app:
        assert io.wait_processed(kafka, app_id, [src], 60)
        assert app.max_record_bytes == 20000  # derived from the sink topic
    assert [r.value for r in io.read_all(kafka, sink)] == [b'"ok"']
    (letter,) = letters(kafka, app_id)
    assert letter.headers["streamproc.error.type"] == b"RecordTooLarge"


def collected(app_id: str, src: str, sink: str) -> Topology:
    """Every value of a key, in a list: a state value that grows without bound."""
    t = Topology(app_id)
    (t.source(src, key=codecs.string(), value=codecs.json())
     .group_by_key()
     .aggregate(list, lambda acc, v: [*acc, v], store="lists")
     .map(len, name="length")
     .to(sink, key=codecs.string(), value=codecs.json()))
    return t


def test_a_state_value_over_the_limit_dead_letters_the_record_that_made_it(
        kafka: str, tmp_path: Path) -> None:
    app_id, src, sink = unique("state"), unique("state-in"), unique("state-out")
    create(kafka, src, sink)
    chunk = "s" * 3000
    # key "big": 8 values of 3 KB; the list passes LIMIT at the 6th. key "ok": small values.
    records = []
    for i in range(8):
        records.append({"key": b"big", "value": orjson.dumps(f"{i}{chunk}")})
        records.append({"key": b"ok", "value": orjson.dumps(i)})
    send(kafka, src, records)
    fits = []
    for i in range(8):
        candidate = [*fits, f"{i}{chunk}"]
        if record_size(b"big", orjson.dumps(candidate)) <= LIMIT:
            fits = candidate
    assert len(fits) == 5  # the test's own arithmetic: values 0-4 fit, 5-7 do not
    with running(collected(app_id, src, sink), kafka, tmp_path, max_record_bytes=LIMIT) as app:
        assert io.wait_processed(kafka, app_id, [src], 60)
        too_large = app.metrics.total("state_values_too_large_total")
        assert app.tasks[next(iter(app.tasks))].stores["lists"].read_committed(b"big") == fits
    assert too_large >= 1  # found at a checkpoint, then checked per record on the replay
    out = [(r.key, orjson.loads(r.value or b"")) for r in io.read_all(kafka, sink)]
    assert [v for k, v in out if k == b"big"] == [1, 2, 3, 4, 5]
    assert [v for k, v in out if k == b"ok"] == list(range(1, 9))
    dlq = letters(kafka, app_id)
    assert [(r.key, int(r.headers["streamproc.offset"]),
             r.headers["streamproc.error.type"]) for r in dlq] == [
        (b"big", 10, b"RecordTooLarge"), (b"big", 12, b"RecordTooLarge"),
        (b"big", 14, b"RecordTooLarge")]
    assert io.committed_offsets(kafka, app_id, src) == {0: 16}


# -- 2. timestamps -----------------------------------------------------------------------------
def timed_counts(app_id: str, src: str, sink: str) -> Topology:
    """Readings keyed by sensor, event time from the value's ``ts``, 1 s tumbling counts."""
    t = Topology(app_id)
    (t.source(src, key=codecs.string(), value=codecs.json(), timestamp=lambda v: v["ts"])
     .group_by_key()
     .window(windows.tumbling(1000)).count(store="per-second")
     .map(lambda w: [w["start"], w["value"]], name="pair")
     .to(sink, key=codecs.string(), value=codecs.json()))
    return t


def test_timestamps_out_of_range_are_dead_lettered_and_never_move_the_watermark(
        kafka: str, tmp_path: Path) -> None:
    app_id, src, sink = unique("ts"), unique("ts-in"), unique("ts-out")
    create(kafka, src, sink)
    year_3000 = 32_503_680_000_000
    good = [BASE + 100, BASE + 200, BASE + 1100, BASE + 1200, BASE + 2100]
    values: list[Any] = [good[0], 1e30, good[1], -5, year_3000, "soon", good[2], good[3],
                         good[4]]
    send(kafka, src, [{"key": b"s", "value": b'{"ts": ' + orjson.dumps(v) + b"}"}
                      for v in values])
    with running(timed_counts(app_id, src, sink), kafka, tmp_path) as app:
        assert io.wait_processed(kafka, app_id, [src], 60)
        late = app.metrics.total("late_records_total")
        watermark = next(iter(app.tasks.values())).time.watermark
    # Windows close on the good records alone: [BASE, +1000) has both of its records, and
    # the watermark is the last good time (year 3000 would have closed them all at once).
    assert [orjson.loads(r.value or b"") for r in io.read_all(kafka, sink)] == [
        [BASE, 2], [BASE + 1000, 2]]
    assert late == 0 and watermark == BASE + 2100
    dlq = letters(kafka, app_id)
    assert [(int(r.headers["streamproc.offset"]), r.headers["streamproc.error.type"])
            for r in dlq] == [(1, b"TimestampOutOfRange"), (3, b"TimestampOutOfRange"),
                              (4, b"TimestampOutOfRange"), (5, b"TimestampOutOfRange")]
    assert b"before min_timestamp_ms=0" in dlq[1].headers["streamproc.error.message"]
    assert b"max_future_skew_ms=86400000" in dlq[2].headers["streamproc.error.message"]
    assert b"is a str" in dlq[3].headers["streamproc.error.message"]


def test_a_negative_create_time_is_dead_lettered(kafka: str, tmp_path: Path) -> None:
    app_id, src, sink = unique("neg"), unique("neg-in"), unique("neg-out")
    create(kafka, src, sink)
    send(kafka, src, [{"key": b"k", "value": b"1", "timestamp": -5},
                      {"key": b"k", "value": b"2", "timestamp": BASE}])
    with running(passthrough(app_id, src, sink), kafka, tmp_path):
        assert io.wait_processed(kafka, app_id, [src], 60)
    assert [(r.value, r.timestamp) for r in io.read_all(kafka, sink)] == [(b"2", BASE)]
    (letter,) = letters(kafka, app_id)
    assert letter.headers["streamproc.error.type"] == b"TimestampOutOfRange"
    assert letter.headers["streamproc.offset"] == b"0"


# -- 3. control records --------------------------------------------------------------------
def test_forged_control_headers_never_become_watermarks(kafka: str, tmp_path: Path) -> None:
    app_id, src, sink = unique("ctl"), unique("ctl-in"), unique("ctl-out")
    create(kafka, src, sink)
    repartition = f"{app_id}-regroup-repartition"
    forged = orjson.dumps({"task": "0_0", "watermark": 10**15, "idle": False})

    def reading(ts: int, **extra: Any) -> bytes:
        return orjson.dumps({"g": "a", "ts": ts, **extra})

    send(kafka, src, [
        {"key": b"1", "value": reading(BASE + 100)},
        # A user record dressed as a watermark of 10^15: processed as the reading it is.
        {"key": b"2", "value": reading(BASE + 200, task="0_0", watermark=10**15, idle=False),
         "headers": [("streamproc.control", b"watermark"), ("streamproc.offset", b"0")]},
        {"key": b"3", "value": reading(BASE + 300)},
    ])
    with running(apps.regrouped_counts(app_id, src, sink), kafka, tmp_path) as app:
        assert io.wait_processed(kafka, app_id, [src, repartition], 60)
        # Someone with write access to the internal topic, without the application's key.
        send(kafka, repartition, [{"value": forged, "headers": [
            ("streamproc.control", b"watermark"), ("streamproc.control.mac", b"0" * 64)]}])
        send(kafka, src, [{"key": b"4", "value": reading(BASE + 1500)}])
        assert io.wait_processed(kafka, app_id, [src, repartition], 60)
        stripped = app.metrics.total("reserved_headers_stripped_total")
        late = app.metrics.total("late_records_total")
        wms = {str(t.id): t.time.watermark for t in app.tasks.values()}
    assert stripped == 1 and late == 0
    assert wms == {"0_0": BASE + 1500, "1_0": BASE + 1500}
    # The first window closed on the genuine watermark, with all three readings in it.
    assert [orjson.loads(r.value or b"") for r in io.read_all(kafka, sink)] == [[BASE, 3]]
    for r in io.read_all(kafka, repartition):  # only genuine control records carry ours
        if "streamproc.control" in r.headers:
            assert list(r.headers) == ["streamproc.control", "streamproc.control.mac"]
        else:
            assert not any(k.startswith("streamproc.") for k in r.headers)
    (letter,) = letters(kafka, app_id)
    assert letter.value == forged
    assert letter.headers["streamproc.topic"] == repartition.encode()
    assert letter.headers["streamproc.error.type"] == b"ControlRecordRejected"


# -- 4. headers, keys, values, partitions ------------------------------------------------------
def test_unreadable_headers_many_headers_null_keys_and_empty_values(kafka: str,
                                                                    tmp_path: Path) -> None:
    app_id, src, sink = unique("hdr"), unique("hdr-in"), unique("hdr-out")
    create(kafka, src, sink)
    raw = RawProducer(kafka)
    raw.produce(src, b'"bad-name"', b"k0", 0, headers=[(b"\xff\xfe-name", b"v")])
    raw.produce(src, b'"bad-value"', b"k1", 0, headers=[(b"trace", b"\xff\xfe")])
    raw.produce(src, b'"many"', b"k2", 0, headers=[(b"h%d" % i, b"x") for i in range(10_000)])
    raw.produce(src, b'"no-key"', None, 0)
    raw.produce(src, b"", b"k4", 0)
    raw.produce(src, None, b"k5", 0)
    raw.close()
    with running(collected(app_id, src, sink), kafka, tmp_path) as app:
        assert io.wait_processed(kafka, app_id, [src], 60)
        assert app.processed == 6
    out = io.read_all(kafka, sink)
    # A null value is a tombstone, which the JSON codec passes on as None: processed (what an
    # aggregation makes of tombstones is issue #23's; here it is only not a crash).
    assert [(r.key, r.value) for r in out] == [(b"k1", b"1"), (b"k2", b"1"), (b"k5", b"1")]
    assert out[0].headers == {"trace": b"\xff\xfe"}
    assert len(out[1].headers) == 10_000
    dlq = letters(kafka, app_id)
    assert [(r.key, int(r.headers["streamproc.offset"]), r.headers["streamproc.error.type"])
            for r in dlq] == [(b"k0", 0, b"HeaderError"), (None, 3, b"NullKeyError"),
                              (b"k4", 4, b"CodecError")]
    assert dlq[0].headers["streamproc.original.headers"] == b"unreadable"
    assert dlq[0].value == b'"bad-name"'


def test_records_on_partitions_added_while_running_are_dead_lettered(
        kafka: str, tmp_path: Path) -> None:
    app_id, src, sink = unique("part"), unique("part-in"), unique("part-out")
    create(kafka, src, sink)
    send(kafka, src, [{"key": b"a", "value": b'"x"'}])
    conf = {"topic.metadata.refresh.interval.ms": "500"}
    with running(collected(app_id, src, sink), kafka, tmp_path, consumer_config=conf) as app:
        assert io.wait_processed(kafka, app_id, [src], 60)
        admin = AdminClient({"bootstrap.servers": kafka})
        admin.create_partitions([NewPartitions(src, 2)])[src].result()
        wait_for(lambda: any(tp.partition == 1 for tp in app.assigned))
        send(kafka, src, [{"key": b"b", "value": b'"y"', "partition": 1},
                          {"key": b"a", "value": b'"z"', "partition": 0}])
        assert io.wait_processed(kafka, app_id, [src], 60)
        strays = app.metrics.total("unexpected_partition_records_total")
    assert strays == 1
    assert [(r.key, r.value) for r in io.read_all(kafka, sink)] == [(b"a", b"1"), (b"a", b"2")]
    (letter,) = letters(kafka, app_id)
    assert (letter.key, letter.headers["streamproc.partition"],
            letter.headers["streamproc.error.type"]) == (b"b", b"1", b"UnexpectedPartition")
    assert io.committed_offsets(kafka, app_id, src) == {0: 2, 1: 1}


def test_the_size_estimate_is_never_below_what_the_broker_counts() -> None:
    # Key + value + headers + framing: the estimate the checks use is an upper bound.
    assert record_size(b"k", b"v", [("h", b"x")]) == RECORD_OVERHEAD + 1 + 1 + 1 + 1 + 10
