"""Bad-input limits (runtime/limits.py), cut dead letters, control-record signatures and the
client log adapter: pure logic, exact results."""

from __future__ import annotations

import hashlib
import io
import json
import logging

import orjson
import pytest

from streamproc import Topology, codecs, logs, windows
from streamproc.errors import ConfigError
from streamproc.kafka.clients import with_logger
from streamproc.runtime.deadletter import fit
from streamproc.runtime.limits import (
    HEADER_OVERHEAD,
    RECORD_OVERHEAD,
    OutputTime,
    TimeBounds,
    TimestampOutOfRange,
    headers_bytes,
    record_size,
    strip_reserved,
    to_timestamp,
    write_limits,
)
from streamproc.testing import TopologyTestDriver
from streamproc.time.watermarks import (
    CONTROL_HEADER,
    CONTROL_MAC_HEADER,
    CONTROL_WATERMARK,
    ControlRecordRejected,
    control_key,
    control_mac,
    parse_control,
)
from streamproc.time.windows import END_OF_TIME


def test_record_size_counts_key_value_headers_and_framing() -> None:
    assert record_size(None, None) == RECORD_OVERHEAD
    assert record_size(b"kk", b"vvv", [("ab", b"xyz"), ("c", None)]) == (
        RECORD_OVERHEAD + 2 + 3 + (2 + 3 + HEADER_OVERHEAD) + (1 + HEADER_OVERHEAD))
    assert headers_bytes([("ab", b"xyz"), ("c", "é")]) == 2 + 3 + 1 + 2


def test_strip_reserved_keeps_the_list_when_there_is_nothing_to_strip() -> None:
    h = [("trace", b"1")]
    assert strip_reserved(h) is None
    assert strip_reserved([("streamproc.control", b"watermark"), ("trace", b"1"),
                           ("streamproc.offset", b"9")]) == [("trace", b"1")]
    assert strip_reserved([("streamproc.x", b"")]) == []


@pytest.mark.parametrize(("raw", "message"), [
    (1e30, "more than max_future_skew_ms=1000 ahead"),
    (-0.5, "before min_timestamp_ms=0"),
    (-5, "before min_timestamp_ms=0"),
    (float("nan"), "is not a finite number"),
    (float("inf"), "is not a finite number"),
    ("12", "is a str, not epoch milliseconds"),
    (True, "is a bool, not epoch milliseconds"),
    (None, "is a NoneType, not epoch milliseconds"),
    (10_001, "more than max_future_skew_ms=1000 ahead of the wall clock (accepted up to 10000)"),
])
def test_timestamps_outside_the_bounds_are_refused_with_a_reason(raw: object,
                                                                 message: str) -> None:
    bounds = TimeBounds(0, 1000)
    bounds.at(9000)
    with pytest.raises(TimestampOutOfRange, match=message.replace("(", r"\(").replace(")", r"\)")):
        to_timestamp(raw, bounds)


def test_timestamps_inside_the_bounds_are_epoch_milliseconds() -> None:
    bounds = TimeBounds(100, 1000)
    assert bounds.at(9000) == 10_000
    assert to_timestamp(100, bounds) == 100
    assert to_timestamp(9999.9, bounds) == 9999
    assert to_timestamp(10_000, bounds) == 10_000
    unbounded = TimeBounds(0, None)
    assert unbounded.at(0) == 2**63 - 1  # the test driver: its clock is simulated


def test_output_time_window_leaves_a_margin_for_the_brokers_clock() -> None:
    assert OutputTime().window(5_000_000) == (-(2**63 - 1), 2**63 - 1)
    assert OutputTime(before_ms=3_600_000, after_ms=3_600_000).window(10_000_000) == (
        10_000_000 + 60_000 - 3_600_000, 10_000_000 - 60_000 + 3_600_000)


def test_write_limits_take_the_smallest_topic_and_refuse_a_setting_above_it() -> None:
    configs = {"out": {"max.message.bytes": "50000", "message.timestamp.type": "CreateTime",
                       "message.timestamp.after.max.ms": "3600000",
                       "message.timestamp.before.max.ms": str(2**63 - 1)},
               "app-dlq": {"max.message.bytes": "1048588",
                           "message.timestamp.type": "LogAppendTime",
                           "message.timestamp.after.max.ms": "1"}}
    limit, times = write_limits(configs, None, 1_000_000)
    assert limit == 50_000
    assert times == {"out": OutputTime(None, 3_600_000)}  # LogAppendTime: no limit
    assert write_limits(configs, 40_000, 1_000_000)[0] == 40_000
    assert write_limits(configs, None, 30_000)[0] == 30_000  # the producer's own limit
    with pytest.raises(ConfigError) as err:
        write_limits(configs, 60_000, 1_000_000)
    assert str(err.value) == (
        "invalid setting 'max_record_bytes (env STREAMPROC_MAX_RECORD_BYTES, flag "
        "--max-record-bytes)': 60000 is larger than max.message.bytes of topic out (50000): "
        "records that size would fail at the broker; lower it or raise the topic's limit")


def test_a_dead_letter_that_fits_is_left_alone() -> None:
    ours = [("streamproc.topic", b"t")]
    assert fit(b"k", b"v", [("h", b"1")], ours, 10_000) == (b"k", b"v", [("h", b"1"), *ours])


def test_a_dead_letter_too_large_is_cut_and_says_what_was_cut() -> None:
    ours = [("streamproc.topic", b"t")]
    value = b"v" * 5000
    key, cut, headers = fit(b"k", value, [("trace", b"t1")], ours, 2000)
    got = dict(headers)
    assert key == b"k" and value.startswith(cut or b"") and len(cut or b"") < 2000
    assert got["trace"] == b"t1"  # small original headers survive
    assert got["streamproc.truncated"] == b"value"
    assert got["streamproc.original.size"] == str(1 + 5000 + 5 + 2).encode()
    assert got["streamproc.original.sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert record_size(key, cut, headers) <= 2000
    # Headers that leave no room at all go first; a huge key is cut last.
    key, cut, headers = fit(b"K" * 3000, b"v", [("h", b"x" * 3000)], ours, 2000)
    got = dict(headers)
    assert got["streamproc.truncated"] == b"headers,value,key"
    assert "h" not in got and cut == b"" and key is not None and key != b"K" * 3000
    assert record_size(key, cut, headers) <= 2000


def test_control_records_are_signed_per_application_and_parsed_strictly() -> None:
    key = control_key("app")
    payload = orjson.dumps({"task": "0_1", "watermark": 5000, "idle": False})
    good = [(CONTROL_HEADER, CONTROL_WATERMARK),
            (CONTROL_MAC_HEADER, control_mac(key, "app-x-repartition", payload))]
    assert parse_control(key, "app-x-repartition", payload, good, 2) == ("0_1", 5000, False)
    assert control_key("app") != control_key("other")
    assert control_key("app", b"secret") != control_key("app")

    def rejected(k: bytes, topic: str, body: bytes, headers: list, upstream: int = 2) -> str:
        with pytest.raises(ControlRecordRejected) as err:
            parse_control(k, topic, body, headers, upstream)
        return str(err.value)

    assert "not signed" in rejected(control_key("other"), "app-x-repartition", payload, good)
    assert "not signed" in rejected(key, "app-y-repartition", payload, good)  # another topic
    assert "not exactly the headers" in rejected(key, "t", payload, good[:1])
    assert "not exactly the headers" in rejected(key, "t", payload, [*good, ("x", b"")])

    def signed(body: dict[str, object]) -> tuple[bytes, list]:
        raw = orjson.dumps(body)
        return raw, [good[0], (CONTROL_MAC_HEADER, control_mac(key, "t", raw))]

    assert "names task '0_2', not one of the 2 tasks" in rejected(
        key, "t", *signed({"task": "0_2", "watermark": 1, "idle": False}))
    assert "names task '../x'" in rejected(
        key, "t", *signed({"task": "../x", "watermark": 1, "idle": False}))
    assert "invalid watermark 1.5" in rejected(
        key, "t", *signed({"task": "0_0", "watermark": 1.5, "idle": False}))
    assert "invalid watermark" in rejected(
        key, "t", *signed({"task": "0_0", "watermark": END_OF_TIME + 1, "idle": False}))
    assert "not a watermark object" in rejected(
        key, "t", *signed({"task": "0_0", "watermark": 1, "idle": False, "extra": 1}))
    assert "not JSON" in rejected(key, "t", b"{", [good[0], (CONTROL_MAC_HEADER,
                                                           control_mac(key, "t", b"{"))])


def test_the_driver_dead_letters_out_of_range_timestamps_and_keeps_the_watermark() -> None:
    t = Topology("lim")
    (t.source("in", key=codecs.string(), value=codecs.json(), timestamp=lambda v: v["ts"])
     .group_by_key().window(windows.tumbling(10)).count(store="n")
     .to("out", key=codecs.string(), value=codecs.json()))
    with TopologyTestDriver(t, max_future_skew_ms=1000, start_time_ms=50) as d:
        d.pipe("in", {"ts": 1}, "k")
        d.pipe("in", {"ts": 10**15}, "k")  # would close every window
        d.pipe("in", {"ts": 5}, "k")
        d.pipe("in", {"ts": 12}, "k")
        assert d.watermarks() == {"0_0": 12}
        assert [r.value["value"] for r in d.records("out")] == [2]
        (letter,) = d.dead_letters()
        assert letter.headers["streamproc.error.type"] == b"TimestampOutOfRange"


def test_a_state_value_over_the_limit_dead_letters_the_record_in_the_driver() -> None:
    t = Topology("big")
    (t.source("in", key=codecs.string(), value=codecs.string())
     .group_by_key().aggregate(str, lambda acc, v: acc + v, store="text")
     .to("out", key=codecs.string(), value=codecs.string()))
    limit = 2000
    with TopologyTestDriver(t, max_record_bytes=limit) as d:
        for i in range(6):
            d.pipe("in", str(i) * 400, "k")
        assert d.state("text") == {"k": "".join(str(i) * 400 for i in range(4))}
        assert [r.headers["streamproc.error.type"] for r in d.dead_letters()] == [
            b"RecordTooLarge", b"RecordTooLarge"]
        assert [len(v) for v in d.values("out")] == [400, 800, 1200, 1600]
        assert d.metrics.total("state_values_too_large_total") >= 1


def test_client_log_lines_are_structured_with_client_facility_and_level() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    try:
        conf = with_logger({"bootstrap.servers": "127.0.0.1:1"})
        assert with_logger(conf) is conf  # not wrapped twice
        # confluent-kafka maps librdkafka's syslog level (3) to logging.ERROR before the call
        conf["logger"].log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1",
                           "Connect failed")
    finally:
        logs.configure()
    line = json.loads(out.getvalue().splitlines()[-1])
    assert {k: line[k] for k in ("event", "client", "facility", "message", "level")} == {
        "event": "kafka.client_log", "client": "rdkafka#producer-1", "facility": "FAIL",
        "message": "Connect failed", "level": "error"}
