"""Queryable state without a broker: Kafka's murmur2, keys given as text, window filtering,
committed reads from another thread, listings merged across instances, and the registry's
ownership rules."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import orjson
import pytest

from streamproc import Topology, codecs, windows
from streamproc.config import load_settings
from streamproc.errors import ConfigError
from streamproc.graph.compile import compile_topology
from streamproc.kafka.partitioner import murmur2, partition_for
from streamproc.ops.instances import (
    Entry,
    RegistryView,
    advertised_url,
    apply_record,
    decode_entry,
    encode_entry,
    live_entries,
    owners,
)
from streamproc.ops.query import _merge
from streamproc.ops.stores import (
    BadQuery,
    StoreInfo,
    TimeRange,
    catalog,
    encode_key,
    encode_prefix,
    list_partition,
    read_windows,
    to_json,
)
from streamproc.state.store import KeyValueStore, StoreNotOpen
from streamproc.state.windowed import WindowState, WindowStateCodec, window_key
from streamproc.types import TaskId


# -- Kafka's partitioner -------------------------------------------------------------------------
def test_murmur2_matches_the_java_clients_test_vectors() -> None:
    # org.apache.kafka.common.utils.UtilsTest.testMurmur2
    assert murmur2(b"21") == -973932308
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"a-little-bit-long-string") == -985981536
    assert murmur2(b"a-little-bit-longer-string") == -1486304829
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971
    assert murmur2(b"abc") == 479470107


def test_partition_is_the_positive_hash_modulo_the_partition_count() -> None:
    # toPositive(-973932308) = 1173551340
    assert [partition_for(b"21", n) for n in (1, 2, 3, 4, 7)] == [
        1173551340 % n for n in (1, 2, 3, 4, 7)]
    assert partition_for(b"", 4) == (murmur2(b"") & 0x7FFFFFFF) % 4
    with pytest.raises(ValueError, match="at least one partition"):
        partition_for(b"x", 0)


# -- the catalogue and keys ----------------------------------------------------------------------
def _topology() -> Topology:
    t = Topology("qs-unit")
    s = t.source("in", key=codecs.string(), value=codecs.json(), timestamp=lambda v: v["ts"],
                 name="in")
    s.group_by_key().count(store="counts").to("out")
    (s.group_by(lambda v: v["n"], key=codecs.int64(), name="by-n")
     .window(windows.tumbling(1000)).aggregate(lambda: [0, 0],
                                               lambda acc, v: [acc[0] + 1, acc[1] + v["n"]],
                                               result=lambda acc: acc[1] / acc[0],
                                               store="means")
     .to("means-out"))
    s.group_by(lambda v: v, name="by-json").count(store="by-value").to("json-out")
    s.process(lambda ctx, key, value: None, store="seen",
              on_timer=lambda ctx, key, ts: None).to("seen-out")
    return t


def test_catalog_names_every_store_with_its_kind_and_key_codec() -> None:
    cat = catalog(compile_topology(_topology()))
    assert {n: (i.kind, i.key_codec.name, i.queryable) for n, i in cat.items()} == {
        "counts": ("key-value", "string", True),
        "means": ("window", "int64", True),
        "by-n.source.time": ("time", "raw", False),
        "by-value": ("key-value", "json", True),
        "seen": ("key-value", "string", True),
        "seen.timers": ("timers", "raw", False),
        "in.time": ("time", "raw", False)}  # the process function's timers need time
    assert cat["means"].describe()["value_codec"] == "json"
    assert cat["means"].describe()["window"]["size_ms"] == 1000


def test_tables_are_key_value_stores_keyed_by_their_key_codec() -> None:
    t = Topology("tables")
    customers = t.table("customers", store="customers", key=codecs.string())
    limits = t.source("limits", key=codecs.int64()).to_table(store="limits")
    t.source("payments", key=codecs.string()).join(customers).to("out")
    t.source("orders", key=codecs.int64()).join(limits).to("out2")
    cat = catalog(compile_topology(t))
    assert {n: (i.kind, i.key_codec.name, i.queryable) for n, i in cat.items()} == {
        "customers": ("key-value", "string", True), "limits": ("key-value", "int64", True)}


def _info(codec: codecs.Codec) -> StoreInfo:
    return StoreInfo("s", "key-value", 0, "op", codec, codecs.json())


def test_a_key_given_as_text_is_encoded_with_the_key_codec() -> None:
    assert encode_key(_info(codecs.string()), "héllo") == "héllo".encode()
    assert encode_key(_info(codecs.raw()), "abc") == b"abc"  # raw keys: the text's bytes
    assert encode_key(_info(codecs.int64()), "42") == (42).to_bytes(8, "big")
    assert encode_key(_info(codecs.int32()), "-1") == b"\xff\xff\xff\xff"
    assert encode_key(_info(codecs.json()), "abc") == b'"abc"'  # a string key first
    assert encode_key(_info(codecs.json()), "x", "[1, 2]") == b"[1,2]"  # key_json wins
    assert encode_key(_info(codecs.json()), "x", '{"a": 1}') == b'{"a":1}'
    assert encode_key(_info(codecs.string()), "x", '"quoted"') == b"quoted"
    with pytest.raises(BadQuery, match=r"codec of store .s. \(int64\): int64: expected int"):
        encode_key(_info(codecs.int64()), "forty-two")
    with pytest.raises(BadQuery, match="does not fit"):
        encode_key(_info(codecs.int32()), str(2**40))
    with pytest.raises(BadQuery, match="not a JSON literal"):
        encode_key(_info(codecs.json()), "x", "[1,")
    with pytest.raises(BadQuery, match="null key"):
        encode_key(_info(codecs.json()), "x", "null")


def test_prefixes_exist_for_text_keys_only() -> None:
    assert encode_prefix(_info(codecs.string()), "ab") == b"ab"
    assert encode_prefix(_info(codecs.raw()), "ab") == b"ab"
    assert encode_prefix(_info(codecs.json()), "ab") == b'"ab'  # no closing quote
    with pytest.raises(BadQuery, match="prefix needs string keys"):
        encode_prefix(_info(codecs.int64()), "4")


def test_values_render_as_json_bytes_as_text_or_base64() -> None:
    assert orjson.loads(to_json({"a": b"text", "b": b"\xff\x00", 3: Path("/x")})) == {
        "a": "text", "b": {"base64": "/wA="}, "3": "/x"}


# -- stores: committed reads from another thread ---------------------------------------------
@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = KeyValueStore("counts", 0, tmp_path / "counts" / "0", codecs.json())
    s.open()
    yield s
    s.close()


def test_queries_read_committed_state_only(store: KeyValueStore) -> None:
    store.commit([(b"a", b"1"), (b"b", b"2")], 2)
    store.put(b"a", 100)  # uncommitted: an abort could still roll it back
    store.put(b"c", 3)
    got: list[object] = []
    t = threading.Thread(target=lambda: got.extend(
        [store.read_committed(b"a"), store.read_committed(b"c"), store.scan(limit=10)]))
    t.start()
    t.join()
    assert got == [1, None, [(b"a", 1), (b"b", 2)]]


def test_scan_ranges_prefixes_limits_and_a_closed_store(store: KeyValueStore) -> None:
    store.commit([(k.encode(), b"0") for k in ("a1", "a2", "a3", "b1", "b2")], 5)
    keys = [k for k, _ in store.scan(limit=100)]
    assert keys == [b"a1", b"a2", b"a3", b"b1", b"b2"]
    assert [k for k, _ in store.scan(b"a2", b"b2", limit=100)] == [b"a2", b"a3", b"b1"]
    assert [k for k, _ in store.scan(prefix=b"b", limit=100)] == [b"b1", b"b2"]
    assert [k for k, _ in store.scan(b"a3", prefix=b"a", limit=100)] == [b"a3"]
    assert [k for k, _ in store.scan(limit=2)] == [b"a1", b"a2"]
    assert [k for k, _ in store.scan(limit=100, keep=lambda k: k.endswith(b"2"))] == [
        b"a2", b"b2"]
    store.close()
    with pytest.raises(StoreNotOpen, match=r"counts\[0\] is not open"):
        store.read_committed(b"a1")
    with pytest.raises(StoreNotOpen):
        store.scan()


def _window_store(tmp_path: Path) -> tuple[StoreInfo, KeyValueStore]:
    info = StoreInfo("w", "window", 1, "op", codecs.string(),
                     WindowStateCodec(codecs.json()), result=lambda acc: acc * 10)
    s = KeyValueStore("w", 0, tmp_path / "w" / "0", info.value_codec)
    s.open()
    enc = info.value_codec.encode
    s.commit([(window_key(start, start + 1000, key.encode()),
               enc(WindowState(n, n, start, start, fired=start == 0)))
              for key, start, n in [("a", 0, 1), ("a", 1000, 2), ("ab", 1000, 5),
                                    ("a", 2000, 3), ("b", 2000, 4)]], 5)
    return info, s


def test_a_keys_windows_by_time_range(tmp_path: Path) -> None:
    info, s = _window_store(tmp_path)
    try:
        def starts(span: TimeRange, key: str = "a") -> list[tuple[int, int, int, bool]]:
            return [(w["start"], w["end"], w["value"], w["fired"])
                    for w in read_windows(info, s, key.encode(), span, 100).rows]

        assert starts(TimeRange()) == [(0, 1000, 10, True), (1000, 2000, 20, False),
                                       (2000, 3000, 30, False)]
        assert starts(TimeRange(1000, 2000)) == [(1000, 2000, 20, False),
                                                 (2000, 3000, 30, False)]
        assert starts(TimeRange(1, 1999)) == [(1000, 2000, 20, False)]
        assert starts(TimeRange(-5000, 999)) == [(0, 1000, 10, True)]
        assert starts(TimeRange(), "ab") == [(1000, 2000, 50, False)]  # not a's suffix match
        assert starts(TimeRange(3000, 9000)) == []
        assert read_windows(info, s, b"a", TimeRange(), 2).rows[-1]["start"] == 1000  # limit
        rows = list_partition(info, s, 0, 100, prefix=b"a", span=TimeRange(1000, 2000)).rows
        assert [(r["key"], r["start"], r["partition"]) for r in rows] == [
            ("a", 1000, 0), ("ab", 1000, 0), ("a", 2000, 0)]
    finally:
        s.close()


def test_listings_merge_in_key_order_each_partition_once() -> None:
    info = _info(codecs.int64())
    local = {"partitions": [0, 2], "restoring": [3],
             "items": [{"key": 5, "value": "x", "partition": 0},
                       {"key": -1, "value": "y", "partition": 2}]}
    # The other instance still serves partition 2 (a rebalance in flight): not twice.
    other = {"partitions": [1, 2], "restoring": [], "truncated": True, "next": 9,
             "items": [{"key": 7, "value": "z", "partition": 1},
                       {"key": -1, "value": "stale", "partition": 2}]}
    rows, served, restoring, truncated, nxt = _merge(info, [("a", local), ("b", other)], 2)
    # int64 keys sort by their big-endian bytes, as in the store: 5, 7, then -1.
    assert [r["key"] for r in rows] == [5, 7]
    assert (served, restoring, truncated, nxt) == ([0, 1, 2], [3], True, 9)
    rows, _, _, truncated, nxt = _merge(info, [("a", local)], 10)
    assert ([r["value"] for r in rows], truncated, nxt) == (["x", "y"], False, None)


# -- the registry's ownership rules -------------------------------------------------------------
def _entry(instance: str, ts: int, *tasks: tuple[int, int]) -> Entry:
    ids = frozenset(TaskId(s, p) for s, p in tasks)
    return Entry(instance, f"http://{instance}:1", ids, frozenset(), 0, ts, ts)


def test_registry_records_round_trip_and_tombstones_remove() -> None:
    raw = encode_entry("i1", "http://h:1", [TaskId(1, 2), TaskId(0, 3)], [TaskId(1, 2)],
                       10, 20)
    instance, entry = decode_entry(b"i1", raw, 25)
    assert entry == Entry("i1", "http://h:1", frozenset({TaskId(0, 3), TaskId(1, 2)}),
                          frozenset({TaskId(1, 2)}), 10, 20, 25)
    entries = apply_record({}, instance, entry)
    assert apply_record(entries, *decode_entry(b"i1", None, 30)) == {}
    assert apply_record(entries, "other", None) == entries
    with pytest.raises(ValueError, match="without a key"):
        decode_entry(None, raw, 1)


def test_the_newest_claim_owns_a_task_and_stale_entries_own_nothing() -> None:
    crashed = _entry("a", 1_000, (0, 0), (0, 1))
    newer = _entry("b", 5_000, (0, 1), (0, 2))
    view = {"a": crashed, "b": newer}
    assert owners(view, 60_000) == {TaskId(0, 0): crashed, TaskId(0, 1): newer,
                                    TaskId(0, 2): newer}
    # Once "a" is more than the staleness bound older than the newest record, it is gone.
    assert owners(view, 3_000) == {TaskId(0, 1): newer, TaskId(0, 2): newer}
    assert set(live_entries(view, 3_000)) == {"b"}
    # A tie (same millisecond) is decided the same way everywhere.
    tie = {"a": _entry("a", 7, (0, 0)), "b": _entry("b", 7, (0, 0))}
    assert owners(tie, 1)[TaskId(0, 0)].instance == "b"
    v = RegistryView.of(view, True, 3_000)
    assert [(e["instance"], e["live"]) for e in v.to_json()] == [("a", False), ("b", True)]
    assert owners({}, 1) == {}


def test_advertised_url() -> None:
    assert advertised_url(None, "127.0.0.1", 8080) == "http://127.0.0.1:8080"
    assert advertised_url("http://svc:80/", "0.0.0.0", 8080) == "http://svc:80"
    assert advertised_url(None, "::1", 9) == "http://[::1]:9"
    assert advertised_url(None, "0.0.0.0", 1) == f"http://{socket.gethostname()}:1"
    assert load_settings(http_advertised_url="https://a.example:8443").http_advertised_url \
        == "https://a.example:8443"
    with pytest.raises(ConfigError, match=r"http_advertised_url.*STREAMPROC_HTTP_ADVERTISED_URL"):
        load_settings(http_advertised_url="a.example:8443/path")


def test_window_reads_seek_in_the_numeric_order_of_the_start(tmp_path: Path) -> None:
    info = StoreInfo("w", "window", 1, "op", codecs.string(),
                     WindowStateCodec(codecs.json()))
    s = KeyValueStore("w", 0, tmp_path / "neg" / "0", info.value_codec)
    s.open()
    try:
        enc = info.value_codec.encode
        s.commit([(window_key(start, start + 10, b"k"), enc(WindowState(1, 1, start, start)))
                  for start in (-3000, -1, 0, 5, 2**62)], 1)

        def starts(span: TimeRange, limit: int = 100) -> list[int]:
            return [r["start"] for r in list_partition(info, s, 0, limit, span=span).rows]

        # Negative starts sort after every other one in byte order; the reads seek to
        # them first, so the order is numeric and a limit keeps the earliest.
        assert starts(TimeRange()) == [-3000, -1, 0, 5, 2**62]
        assert starts(TimeRange(), 2) == [-3000, -1]
        assert starts(TimeRange(-1, 5)) == [-1, 0, 5]
        assert starts(TimeRange(-5000, -2)) == [-3000]
        assert starts(TimeRange(1, 2**63 - 1)) == [5, 2**62]
        assert starts(TimeRange(6, 4)) == []
        # A budget of 2 entries: where it ran out is the next window's start.
        page = list_partition(info, s, 0, 100, span=TimeRange(), max_scan=2)
        assert ([r["start"] for r in page.rows], page.resume) == ([-3000, -1], 0)
    finally:
        s.close()


def test_a_prefix_bounds_the_scan_on_both_sides(store: KeyValueStore) -> None:
    from streamproc.ops.stores import prefix_range

    assert prefix_range(None, None, b"ab") == (b"ab", b"ac")
    assert prefix_range(b"abc", b"ab5", b"ab") == (b"abc", b"ab5")
    assert prefix_range(None, None, b"a\xff\xff") == (b"a\xff\xff", b"b")
    assert prefix_range(None, None, b"\xff") == (b"\xff", None)
    store.commit([(k, b"0") for k in (b"a", b"ab", b"ab\xff", b"ac", b"b")], 1)
    rows, resume = store.scan_ranges([prefix_range(None, None, b"ab")], 10)
    assert ([k for k, _ in rows], resume) == ([b"ab", b"ab\xff"], None)
    rows, resume = store.scan_ranges([(None, None)], 10, max_scan=3)
    assert ([k for k, _ in rows], resume) == ([b"a", b"ab", b"ab\xff"], b"ac")
