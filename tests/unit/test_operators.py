"""Runtime operators (build_pipeline) driven with a fake TaskContext and fake consumed messages.

Stateful operators use real KeyValueStores on tmp_path (RocksDB is local)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streamproc import Topology, codecs
from streamproc.errors import CodecError, NullKeyError
from streamproc.graph.compile import compile_topology
from streamproc.runtime import operators
from streamproc.runtime.limits import (
    RECORD_OVERHEAD,
    UNBOUNDED,
    OutputTime,
    RecordTooLarge,
    TimeBounds,
)
from streamproc.runtime.operators import build_pipeline
from streamproc.state.store import KeyValueStore
from streamproc.testing.memory import Message
from streamproc.time.watermarks import TaskTime
from topologies.wordcount import build

WORDS = "wordcount-words-repartition"


def Msg(value: bytes | None, key: bytes | None = None, *, topic: str = "in",
        partition: int = 0, offset: int = 0, ts: int = 1000,
        headers: list[tuple[str, bytes]] | None = None) -> Message:
    """A consumed Kafka message, as the test driver's in-memory cluster makes them."""
    return Message(topic, partition, offset, key, value, ts, headers, seq=0)


class FakeContext:
    def __init__(self, stores: dict[str, KeyValueStore], partition: int = 0) -> None:
        self.partition = partition
        self.stores = stores
        self.sent: list[tuple[str, bytes | None, bytes | None, int, Any]] = []
        self.errors: list[tuple[Any, BaseException, str]] = []
        self.clock = 1_000
        self.time = TaskTime(ooo_ms=0, idle_timeout_ms=None, has_local=True,
                             upstream_tasks={}, now_ms=self.clock)
        self.timed: list[Any] = []
        self.time_bounds = TimeBounds(0, None)
        self.max_record_bytes = operators.MAX_RECORD_BYTES
        self.guards: dict[str, frozenset[bytes]] = {}
        self.counted: list[tuple[str, int, dict[str, str]]] = []

    def output_time(self, topic: str) -> OutputTime:
        return UNBOUNDED

    def guarded(self, store: str) -> frozenset[bytes]:
        return self.guards.get(store, frozenset())

    def now_ms(self) -> int:
        return self.clock

    def register_timed(self, op: Any) -> None:
        self.timed.append(op)

    def count(self, metric: str, n: int = 1, **labels: str) -> None:
        self.counted.append((metric, n, labels))

    def store(self, name: str) -> KeyValueStore:
        return self.stores[name]

    def send(self, topic: str, key: bytes | None, value: bytes | None, timestamp: int,
             headers: Any) -> None:
        self.sent.append((topic, key, value, timestamp, headers))

    def producer(self) -> tuple[Callable[..., None], Callable[[], None]]:
        # The signature of confluent-kafka's Producer.produce as sinks call it.
        def produce(topic: str, value: bytes | None, key: bytes | None, *,
                    timestamp: int, headers: Any) -> None:
            self.send(topic, key, value, timestamp, headers)

        return produce, lambda: None

    def produced(self, n: int) -> None:
        self.produced_count = getattr(self, "produced_count", 0) + n

    def on_error(self, origin: Any, exc: BaseException, where: str) -> None:
        self.errors.append((origin, exc, where))

    def to(self, topic: str) -> list[tuple[bytes | None, bytes | None, int]]:
        return [(k, v, t) for tp, k, v, t, _ in self.sent if tp == topic]


Harness = Callable[..., tuple[dict[str, Callable[[list[Msg]], None]], FakeContext]]


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    opened: list[KeyValueStore] = []
    built = 0

    def make(topology: Topology, sub: int = 0, **kw: Any):
        nonlocal built
        built += 1  # each pipeline gets its own state dir
        st = compile_topology(topology).subtopologies[sub]
        stores = {}
        for spec in st.stores:
            path = tmp_path / str(built) / topology.application_id / spec.name / "0"
            s = KeyValueStore(spec.name, 0, path, spec.value_codec)
            s.open()
            opened.append(s)
            stores[spec.name] = s
        ctx = FakeContext(stores)
        return build_pipeline(st, ctx, **kw), ctx

    yield make
    for s in opened:
        s.close()


def _errors(ctx: FakeContext) -> list[tuple[Any, type, str, str]]:
    return [(o, type(e), str(e), w) for o, e, w in ctx.errors]


# -- stateless -------------------------------------------------------------------------------
def test_map_filter_flat_map_chain(harness):
    t = Topology("ops")
    (t.source("in", key=codecs.string(), value=codecs.json())
     .map(lambda v: v * 10).filter(lambda v: v > 10).flat_map(lambda v: [v, v + 1])
     .to("out", key=codecs.string(), value=codecs.json()))
    entries, ctx = harness(t)
    assert list(entries) == ["in"]
    h = [("trace", b"t-3")]
    entries["in"]([Msg(b"1", b"a", ts=100), Msg(b"2", b"b", ts=200),
                   Msg(b"3", b"c", ts=300, headers=h)])
    assert ctx.sent == [
        ("out", b"b", b"20", 200, None),
        ("out", b"b", b"21", 200, None),
        ("out", b"c", b"30", 300, h),
        ("out", b"c", b"31", 300, h),
    ]
    assert ctx.errors == []


def test_flat_map_to_nothing_and_a_failing_generator_emits_nothing_for_that_record(harness):
    def explode(v):
        yield from range(v)
        if v == 2:
            raise ValueError("half-way")

    t = Topology("ops")
    t.source("in", value=codecs.json()).flat_map(explode, name="explode").to("out")
    entries, ctx = harness(t)
    msgs = [Msg(b"0", b"k0"), Msg(b"2", b"k2"), Msg(b"3", b"k3")]
    entries["in"](msgs)
    assert ctx.to("out") == [(b"k3", b"0", 1000), (b"k3", b"1", 1000), (b"k3", b"2", 1000)]
    assert _errors(ctx) == [(msgs[1], ValueError, "half-way", "explode")]


def test_key_by_sets_the_key_encoded_with_its_codec(harness):
    t = Topology("ops")
    t.source("in").key_by(lambda v: v["id"]).to("out")
    t.source("in2").key_by(lambda v: v["id"], key=codecs.int64()).to("out2")
    entries, ctx = harness(t)
    entries["in"]([Msg(b'{"id": 7}', b"old")])
    assert ctx.sent == [("out", b"7", b'{"id":7}', 1000, None)]
    entries2, ctx2 = harness(t, sub=1)
    entries2["in2"]([Msg(b'{"id": 7}', None)])
    assert ctx2.sent == [("out2", b"\x00" * 7 + b"\x07", b'{"id":7}', 1000, None)]


def test_raw_source_to_raw_sink_passes_bytes_unchanged(harness):
    t = Topology("ops")
    t.source("in", value=codecs.raw()).to("out", value=codecs.raw())
    entries, ctx = harness(t)
    entries["in"]([Msg(b"\x00\xff", b"\x01"), Msg(None, None, ts=5)])
    assert ctx.sent == [("out", b"\x01", b"\x00\xff", 1000, None), ("out", None, None, 5, None)]


def test_merge_feeds_both_sources_into_one_sink(harness):
    t = Topology("ops")
    a = t.source("a", key=codecs.string(), value=codecs.string())
    b = t.source("b", key=codecs.string(), value=codecs.string())
    a.merge(b.map(str.upper)).to("out", key=codecs.string(), value=codecs.string())
    entries, ctx = harness(t)
    assert sorted(entries) == ["a", "b"]
    entries["a"]([Msg(b"x", b"1", topic="a")])
    entries["b"]([Msg(b"y", b"2", topic="b")])
    assert ctx.sent == [("out", b"1", b"x", 1000, None), ("out", b"2", b"Y", 1000, None)]


def test_fan_out_sends_each_record_to_every_child(harness):
    t = Topology("ops")
    s = t.source("in", value=codecs.json())
    s.map(lambda v: v + 1).to("plus")
    s.map(lambda v: v * 2).to("times")
    entries, ctx = harness(t)
    entries["in"]([Msg(b"5", b"k")])
    assert sorted(ctx.sent) == [("plus", b"k", b"6", 1000, None),
                                ("times", b"k", b"10", 1000, None)]


# -- branch ----------------------------------------------------------------------------------
def _branch_topology(otherwise: str | None) -> Topology:
    t = Topology("ops")
    arms = t.source("in", value=codecs.json()).branch(
        {"small": lambda v: v < 10, "even": lambda v: v % 2 == 0},
        otherwise=otherwise, name="route")
    for name, s in arms.items():
        s.to(f"out-{name}")
    return t


def test_branch_first_match_wins_and_otherwise_gets_the_rest(harness):
    entries, ctx = harness(_branch_topology("rest"))
    entries["in"]([Msg(b"4", b"a"), Msg(b"12", b"b"), Msg(b"13", b"c"), Msg(b"3", b"d")])
    assert ctx.to("out-small") == [(b"a", b"4", 1000), (b"d", b"3", 1000)]  # 4 is even too
    assert ctx.to("out-even") == [(b"b", b"12", 1000)]
    assert ctx.to("out-rest") == [(b"c", b"13", 1000)]
    assert len(ctx.sent) == 4


def test_branch_without_otherwise_drops_unmatched(harness):
    entries, ctx = harness(_branch_topology(None))
    entries["in"]([Msg(b"4", b"a"), Msg(b"13", b"c")])
    assert ctx.sent == [("out-small", b"a", b"4", 1000, None)]
    assert ctx.errors == []


def test_branch_predicate_error_goes_to_on_error(harness):
    entries, ctx = harness(_branch_topology("rest"))
    msgs = [Msg(b'"text"', b"a"), Msg(b"12", b"b")]
    entries["in"](msgs)
    assert ctx.sent == [("out-even", b"b", b"12", 1000, None)]
    ((origin, exc, where),) = ctx.errors
    assert (origin, type(exc), where) == (msgs[0], TypeError, "route")


# -- stateful: aggregations ------------------------------------------------------------------
def test_wordcount_split_sends_words_to_the_repartition_topic(harness):
    entries, ctx = harness(build(), sub=0)
    assert list(entries) == ["text-lines"]
    entries["text-lines"]([Msg(b"Hello world hello", None, topic="text-lines", ts=7)])
    assert ctx.sent == [
        (WORDS, b"hello", b"hello", 7, None),
        (WORDS, b"world", b"world", 7, None),
        (WORDS, b"hello", b"hello", 7, None),
    ]


def test_wordcount_count_emits_one_running_count_per_record(harness):
    entries, ctx = harness(build(), sub=1)
    assert list(entries) == [WORDS]
    store = ctx.stores["counts"]
    words = [b"hello", b"world", b"hello", b"hello"]
    entries[WORDS]([Msg(w, w, topic=WORDS, offset=i, ts=10 + i) for i, w in enumerate(words)])
    assert ctx.sent == [
        ("word-counts", b"hello", b"1", 10, None),
        ("word-counts", b"world", b"1", 11, None),
        ("word-counts", b"hello", b"2", 12, None),
        ("word-counts", b"hello", b"3", 13, None),
    ]
    assert ctx.errors == []
    assert store.get(b"hello") == 3
    assert store.get(b"world") == 1
    assert sorted(store.prepare()) == [(b"hello", b"3"), (b"world", b"1")]

    # Across a checkpoint the count goes on from the committed value.
    store.commit(store.prepare(), 2)
    store.discard()  # drop the cache: the next read comes from RocksDB
    ctx.sent.clear()
    entries[WORDS]([Msg(b"world", b"world", topic=WORDS, ts=20)])
    assert ctx.sent == [("word-counts", b"world", b"2", 20, None)]
    assert dict(store.items()) == {b"hello": 3, b"world": 1}  # committed content only


def test_wordcount_end_to_end_through_both_subtopologies(harness):
    first, ctx0 = harness(build(), sub=0)
    second, ctx1 = harness(build(), sub=1)
    first["text-lines"]([Msg(b"a b a", None, topic="text-lines", ts=1),
                         Msg(b"B c", None, topic="text-lines", ts=2)])
    second[WORDS]([Msg(v, k, topic=WORDS, ts=ts) for _, k, v, ts, _ in ctx0.sent])
    assert ctx1.to("word-counts") == [
        (b"a", b"1", 1), (b"b", b"1", 1), (b"a", b"2", 1), (b"b", b"2", 2), (b"c", b"1", 2)]


def _aggregations() -> Topology:
    t = Topology("aggs")
    g = t.source("nums", key=codecs.string(), value=codecs.json()).group_by_key()
    g.count(store="c").to("c-out", key=codecs.string())
    g.sum(store="s").to("s-out", key=codecs.string())
    g.reduce(max, store="r").to("r-out", key=codecs.string())
    g.aggregate(list, lambda acc, v: [*acc, v], store="a").to("a-out", key=codecs.string())
    return t


def test_count_sum_reduce_aggregate_emit_running_values(harness):
    entries, ctx = harness(_aggregations())
    data = [(b"a", b"3"), (b"b", b"5"), (b"a", b"4"), (b"a", b"1")]
    entries["nums"]([Msg(v, k, topic="nums", ts=i) for i, (k, v) in enumerate(data)])
    assert ctx.to("c-out") == [(b"a", b"1", 0), (b"b", b"1", 1), (b"a", b"2", 2), (b"a", b"3", 3)]
    assert ctx.to("s-out") == [(b"a", b"3", 0), (b"b", b"5", 1), (b"a", b"7", 2), (b"a", b"8", 3)]
    assert ctx.to("r-out") == [(b"a", b"3", 0), (b"b", b"5", 1), (b"a", b"4", 2), (b"a", b"4", 3)]
    assert ctx.to("a-out") == [(b"a", b"[3]", 0), (b"b", b"[5]", 1), (b"a", b"[3,4]", 2),
                               (b"a", b"[3,4,1]", 3)]
    assert ctx.errors == []
    stores = ctx.stores
    assert {n: (s.get(b"a"), s.get(b"b")) for n, s in stores.items()} == {
        "c": (3, 1), "s": (8, 5), "r": (4, 5), "a": ([3, 4, 1], [5])}
    assert sorted(stores["a"].prepare()) == [(b"a", b"[3,4,1]"), (b"b", b"[5]")]


def test_sum_of_a_projection(harness):
    t = Topology("aggs")
    (t.source("in", key=codecs.string()).group_by_key()
     .sum(lambda v: v["n"], store="s").to("out", key=codecs.string()))
    entries, ctx = harness(t)
    entries["in"]([Msg(b'{"n": 2}', b"k"), Msg(b'{"n": 0.5}', b"k")])
    assert ctx.to("out") == [(b"k", b"2", 1000), (b"k", b"2.5", 1000)]
    assert ctx.stores["s"].get(b"k") == 2.5


def test_null_key_reaching_count_goes_to_on_error(harness):
    entries, ctx = harness(build(), sub=1)
    msgs = [Msg(b"x", b"x", topic=WORDS), Msg(b"y", None, topic=WORDS),
            Msg(b"x", b"x", topic=WORDS)]
    entries[WORDS](msgs)
    assert ctx.to("word-counts") == [(b"x", b"1", 1000), (b"x", b"2", 1000)]
    assert _errors(ctx) == [
        (msgs[1], NullKeyError, "record has a null key; keyed operations need a key", "count-5")]
    assert ctx.stores["counts"].dirty_count == 1


def test_aggregate_with_in_place_accumulator_emits_each_running_value(harness):
    def add(acc, v):
        acc.append(v)
        return acc

    t = Topology("aggs")
    (t.source("in", key=codecs.string()).group_by_key()
     .aggregate(list, add, store="a").to("out", key=codecs.string()))
    entries, ctx = harness(t)
    entries["in"]([Msg(b"1", b"k"), Msg(b"2", b"k")])
    assert ctx.to("out") == [(b"k", b"[1]", 1000), (b"k", b"[1,2]", 1000)]


# -- stateful: process -----------------------------------------------------------------------
def _track(ctx, key, value):
    if value == "reset":
        ctx.state.delete()
        return
    n = ctx.state.get(0) + 1
    ctx.state.set(n)
    ctx.emit(n)
    if n == 2:
        ctx.emit(f"{key} twice", key=f"{key}!")


def _process_topology(fn, name="track") -> Topology:
    t = Topology("proc")
    (t.source("ev", key=codecs.string(), value=codecs.json())
     .process(fn, store="seen", name=name)
     .to("out", key=codecs.string(), value=codecs.json()))
    return t


def test_process_with_store_sets_gets_and_deletes_per_key(harness):
    entries, ctx = harness(_process_topology(_track))
    store = ctx.stores["seen"]
    data = [(b"a", b'"x"'), (b"a", b'"x"'), (b"b", b'"x"'), (b"a", b'"reset"'), (b"a", b'"x"'),
            (b"b", b'"reset"')]
    entries["ev"]([Msg(v, k, topic="ev", ts=i) for i, (k, v) in enumerate(data)])
    assert ctx.sent == [
        ("out", b"a", b"1", 0, None),
        ("out", b"a", b"2", 1, None),
        ("out", b"a!", b'"a twice"', 1, None),
        ("out", b"b", b"1", 2, None),
        ("out", b"a", b"1", 4, None),
    ]
    assert ctx.errors == []
    assert store.get(b"a") == 1
    assert store.get(b"b") is None
    assert sorted(store.prepare(), key=lambda kv: kv[0]) == [(b"a", b"1"), (b"b", None)]


def test_process_reads_committed_state(harness):
    entries, ctx = harness(_process_topology(_track))
    store = ctx.stores["seen"]
    store.put(b"a", 1)
    store.commit(store.prepare(), 1)
    store.discard()
    entries["ev"]([Msg(b'"x"', b"a", topic="ev")])
    assert ctx.sent == [("out", b"a", b"2", 1000, None),
                        ("out", b"a!", b'"a twice"', 1000, None)]


def test_process_that_sets_state_then_raises_leaves_no_state_change(harness):
    def fn(ctx, key, value):
        ctx.state.set(99)
        ctx.emit("side effect")
        if value == "boom":
            raise RuntimeError("after set")

    def fn_delete(ctx, key, value):
        ctx.state.delete()
        raise RuntimeError("after delete")

    entries, ctx = harness(_process_topology(fn, name="careful"))
    store = ctx.stores["seen"]
    store.put(b"a", 5)
    store.commit(store.prepare(), 1)
    msgs = [Msg(b'"boom"', b"a", topic="ev"), Msg(b'"ok"', b"b", topic="ev")]
    entries["ev"](msgs)
    assert _errors(ctx) == [(msgs[0], RuntimeError, "after set", "careful")]
    assert ctx.sent == [("out", b"b", b'"side effect"', 1000, None)]
    assert store.get(b"a") == 5
    assert store.get(b"b") == 99
    assert store.prepare() == [(b"b", b"99")]

    entries2, ctx2 = harness(_process_topology(fn_delete, name="del"))
    store2 = ctx2.stores["seen"]
    store2.put(b"a", 5)
    store2.commit(store2.prepare(), 1)
    entries2["ev"]([Msg(b'"x"', b"a", topic="ev")])
    assert store2.get(b"a") == 5
    assert store2.dirty_count == 0
    assert ctx2.sent == []


def test_process_with_store_and_null_key_goes_to_on_error(harness):
    entries, ctx = harness(_process_topology(_track))
    msg = Msg(b'"x"', None, topic="ev")
    entries["ev"]([msg])
    assert _errors(ctx) == [
        (msg, NullKeyError, "record has a null key; keyed operations need a key", "track")]
    assert ctx.sent == []


def test_stateless_process_sees_record_metadata_and_emits(harness):
    def fn(ctx, key, value):
        assert ctx.state is None
        ctx.emit([ctx.topic, ctx.partition, ctx.offset, ctx.timestamp, key, value])
        ctx.emit("later", timestamp=ctx.timestamp + 1)
        ctx.emit("rekeyed", key="new")

    t = Topology("proc")
    t.source("ev", key=codecs.string()).process(fn).to("out", key=codecs.string())
    entries, ctx = harness(t)
    entries["ev"]([Msg(b"1", b"k", topic="ev", partition=4, offset=77, ts=500)])
    assert ctx.sent == [
        ("out", b"k", b'["ev",4,77,500,"k",1]', 500, None),
        ("out", b"k", b'"later"', 501, None),
        ("out", b"new", b'"rekeyed"', 500, None),
    ]


# -- errors ----------------------------------------------------------------------------------
def _raise_on_13(v):
    if v == 13:
        raise ValueError("unlucky")
    return v


def _process_raise(ctx, key, value):
    ctx.emit(_raise_on_13(value))


@pytest.mark.parametrize(
    ("attach", "expected"),
    [
        (lambda s: s.map(_raise_on_13, name="op"), [b"1", b"2"]),
        (lambda s: s.filter(_raise_on_13, name="op"), [b"1", b"2"]),
        (lambda s: s.flat_map(lambda v: [_raise_on_13(v)], name="op"), [b"1", b"2"]),
        (lambda s: s.key_by(_raise_on_13, name="op"), [b"1", b"2"]),
        (lambda s: s.process(_process_raise, name="op"), [b"1", b"2"]),
        (lambda s: s.group_by_key().aggregate(lambda: 0, lambda a, v: a + _raise_on_13(v),
                                              store="st", name="op"), [b"1", b"3"]),
    ],
    ids=["map", "filter", "flat_map", "key_by", "process", "aggregate"],
)
def test_user_error_sends_exactly_that_record_to_on_error(harness, attach, expected):
    t = Topology("errs")
    attach(t.source("in", key=codecs.string())).to("out", key=codecs.json())
    entries, ctx = harness(t)
    msgs = [Msg(b"1", b"k", offset=0), Msg(b"13", b"k", offset=1), Msg(b"2", b"k", offset=2)]
    entries["in"](msgs)
    assert _errors(ctx) == [(msgs[1], ValueError, "unlucky", "op")]
    assert [v for _, _, v, _, _ in ctx.sent] == expected


def test_invalid_json_value_goes_to_on_error_with_a_codec_error(harness):
    t = Topology("errs")
    t.source("in", value=codecs.json()).to("out")
    entries, ctx = harness(t)
    msgs = [Msg(b"{bad", b"k1"), Msg(b"[1]", b"k2")]
    entries["in"](msgs)
    ((origin, exc, where),) = ctx.errors
    assert origin is msgs[0]
    assert isinstance(exc, CodecError)
    assert exc.codec == "json"
    assert str(exc).startswith("json: invalid JSON: ")
    assert where == "source-1"
    assert ctx.sent == [("out", b"k2", b"[1]", 1000, None)]


def test_invalid_key_goes_to_on_error_with_a_codec_error(harness):
    t = Topology("errs")
    t.source("in", key=codecs.string(), name="src").to("out", key=codecs.string())
    entries, ctx = harness(t)
    msg = Msg(b"1", b"\xff")
    entries["in"]([msg])
    ((origin, exc, where),) = ctx.errors
    assert (origin, type(exc), exc.codec, where) == (msg, CodecError, "string", "src")
    assert ctx.sent == []


def test_invalid_model_value_goes_to_on_error(harness):
    import pydantic

    class Reading(pydantic.BaseModel):
        sensor: str
        value: float

    t = Topology("errs")
    (t.source("in", value=codecs.model(Reading, strict=True))
     .map(lambda r: r.value * 2).to("out"))
    entries, ctx = harness(t)
    bad = Msg(b'{"sensor": "s1", "value": "1.5"}', b"k")
    entries["in"]([bad, Msg(b'{"sensor": "s1", "value": 1.5}', b"k")])
    assert _errors(ctx) == [(bad, CodecError, "pydantic:Reading: value: Input should be a "
                             "valid number", "source-1")]
    assert ctx.sent == [("out", b"k", b"3.0", 1000, None)]


def test_sink_encoding_error_goes_to_on_error(harness):
    t = Topology("errs")
    t.source("in", key=codecs.string()).to("out", key=codecs.string(), value=codecs.string(),
                                          name="sink")
    entries, ctx = harness(t)
    msgs = [Msg(b"1", b"k"), Msg(b'"s"', b"k")]
    entries["in"](msgs)
    assert _errors(ctx) == [(msgs[0], CodecError, "string: expected str, got int", "sink")]
    assert ctx.sent == [("out", b"k", b"s", 1000, None)]


def test_unexpected_codec_exception_is_wrapped_as_a_codec_error(harness):
    class Picky:
        name = "picky"

        def decode(self, data):
            return data

        def encode(self, obj):
            raise ValueError("nope")

    t = Topology("errs")
    t.source("in").to("out", value=Picky(), name="sink")
    entries, ctx = harness(t)
    msg = Msg(b"1", b"k")
    entries["in"]([msg])
    ((origin, exc, where),) = ctx.errors
    assert (origin, type(exc), exc.codec, str(exc), where) == (
        msg, CodecError, "sink", "sink: ValueError: nope", "sink")


def test_oversize_output_goes_to_on_error_with_record_too_large(harness):
    t = Topology("errs")
    t.source("in", value=codecs.string()).to("out", value=codecs.string(), name="sink")
    limit = RECORD_OVERHEAD + 10  # the framing counts too
    entries, ctx = harness(t, max_record_bytes=limit)
    msgs = [Msg(b"x" * 11, b""), Msg(b"x" * 10, b""), Msg(b"x" * 9, b"kk"),
            Msg(b"x" * 8, b"kk")]
    entries["in"](msgs)
    assert ctx.sent == [("out", b"", b"x" * 10, 1000, None), ("out", b"kk", b"x" * 8, 1000, None)]
    assert [(o, type(e), w) for o, e, w in ctx.errors] == [
        (msgs[0], RecordTooLarge, "sink"), (msgs[2], RecordTooLarge, "sink")]
    assert str(ctx.errors[0][1]) == (
        f"record for out is {limit + 1} bytes (key + value + headers + framing), over "
        f"max_record_bytes={limit}")


def test_headers_count_towards_the_record_size(harness):
    t = Topology("errs")
    t.source("in", value=codecs.string()).to("out", value=codecs.string(), name="sink")
    limit = RECORD_OVERHEAD + 100
    entries, ctx = harness(t, max_record_bytes=limit)
    # 4 + 1 value, one header "h" (1 + 10 framing) with 84 bytes: 100 in all, just fits
    fits = Msg(b"v" * 5, b"", headers=[("h", b"x" * 84)])
    over = Msg(b"v" * 5, b"", headers=[("h", b"x" * 85)])
    entries["in"]([fits, over])
    assert ctx.sent == [("out", b"", b"v" * 5, 1000, [("h", b"x" * 84)])]
    assert [(o, type(e)) for o, e, _ in ctx.errors] == [(over, RecordTooLarge)]


def test_record_too_large_message_reports_the_size_that_was_checked(harness):
    t = Topology("errs")
    t.source("in", key=codecs.string(), value=codecs.string()).to(
        "out", key=codecs.string(), value=codecs.string())
    entries, ctx = harness(t, max_record_bytes=RECORD_OVERHEAD + 10)
    entries["in"]([Msg(b"x" * 8, b"kkkk")])
    ((_, exc, _),) = ctx.errors
    size = int(re.search(r"is (\d+) bytes", str(exc)).group(1))
    assert size == RECORD_OVERHEAD + 12


def test_default_record_limit_is_one_megabyte():
    assert operators.MAX_RECORD_BYTES == 1_000_000


# -- timestamps ------------------------------------------------------------------------------
@pytest.mark.parametrize("choice", ["create_time", "log_append_time"])
def test_kafka_timestamp_is_passed_through(harness, choice):
    t = Topology("ts")
    t.source("in", timestamp=choice).to("out")
    entries, ctx = harness(t)
    entries["in"]([Msg(b"1", b"k", ts=1_700_000_000_123)])
    assert ctx.sent == [("out", b"k", b"1", 1_700_000_000_123, None)]


def test_extractor_sets_the_timestamp_from_the_value(harness):
    t = Topology("ts")
    t.source("in", timestamp=lambda v: v["at"]).map(lambda v: v["n"]).to("out")
    entries, ctx = harness(t)
    msgs = [Msg(b'{"at": 42, "n": 1}', b"k", ts=9), Msg(b'{"at": 7.9, "n": 2}', b"k", ts=9),
            Msg(b'{"n": 3}', b"k", ts=9)]
    entries["in"](msgs)
    assert ctx.sent == [("out", b"k", b"1", 42, None), ("out", b"k", b"2", 7, None)]
    assert _errors(ctx) == [(msgs[2], KeyError, "'at'", "source-1")]


def test_processing_time_uses_the_task_clock(harness):
    t = Topology("ts")
    t.source("in", timestamp="processing_time").to("out")
    entries, ctx = harness(t)
    ctx.clock = 1234567
    entries["in"]([Msg(b"1", b"k", ts=9)])
    assert ctx.sent == [("out", b"k", b"1", 1234567, None)]


def test_timestamps_survive_aggregation(harness):
    entries, ctx = harness(build(), sub=1)
    entries[WORDS]([Msg(b"w", b"w", topic=WORDS, ts=111), Msg(b"w", b"w", topic=WORDS, ts=99)])
    assert ctx.to("word-counts") == [(b"w", b"1", 111), (b"w", b"2", 99)]


def test_process_that_mutates_state_in_place_then_raises_leaves_no_state_change(harness):
    def fn(ctx, key, value):
        doc = ctx.state.get()
        doc["n"] += 1
        ctx.state.set(doc)
        if value == "boom":
            raise RuntimeError("after mutation")
        ctx.emit(doc["n"])

    entries, ctx = harness(_process_topology(fn, name="mutate"))
    store = ctx.stores["seen"]
    store.put(b"a", {"n": 1})
    store.commit(store.prepare(), 1)
    entries["ev"]([Msg(b'"boom"', b"a", topic="ev"), Msg(b'"ok"', b"a", topic="ev")])
    assert ctx.sent == [("out", b"a", b"2", 1000, None)]


def test_process_that_only_reads_state_writes_nothing(harness):
    def fn(ctx, key, value):
        doc = ctx.state.get({"n": 0})
        doc["n"] += 100  # mutating a read without set() is not a write
        ctx.emit(ctx.state.get())

    entries, ctx = harness(_process_topology(fn, name="reader"))
    store = ctx.stores["seen"]
    store.put(b"a", {"n": 1})
    store.commit(store.prepare(), 1)
    entries["ev"]([Msg(b'"x"', b"a", topic="ev"), Msg(b'"y"', b"b", topic="ev")])
    # Reads never mark a key dirty: no changelog record, no RocksDB write at the checkpoint.
    assert store.dirty_count == 0
    assert store.prepare() == []
    # Within one record, get() returns the same snapshot; the store itself is untouched.
    assert ctx.errors == []
    assert [v for _, _, v, _, _ in ctx.sent] == [b'{"n":101}', None]  # None: a tombstone
    assert store.get(b"a") == {"n": 1}


def test_process_emitting_a_new_str_key_can_be_grouped(harness):
    t = Topology("proc")
    (t.source("in")
     .process(lambda ctx, key, value: ctx.emit(value, key=value["user"]), key=codecs.string())
     .group_by_key(name="by-user").count(store="c").to("out"))
    entries, ctx = harness(t)
    entries["in"]([Msg(b'{"user": "u1"}', b"raw-key")])
    assert ctx.errors == []
    assert [(tp, v) for tp, _, v, _, _ in ctx.sent] == [
        ("proc-by-user-repartition", b'{"user":"u1"}')]


# -- fast paths: same results and same errors as the codecs' own methods ---------------------
def test_unserializable_json_output_reports_the_json_codec_error(harness):
    t = Topology("errs")
    t.source("in").map(lambda v: {"when": object()}).to("out", value=codecs.json(), name="sink")
    entries, ctx = harness(t)
    msg = Msg(b"1", b"k")
    entries["in"]([msg])
    ((origin, exc, where),) = ctx.errors
    assert (origin, type(exc), exc.codec, where) == (msg, CodecError, "json", "sink")
    assert str(exc).startswith("json: not JSON-serializable: ")
    assert ctx.sent == []


def test_null_keys_and_tombstones_pass_through_fast_codecs(harness):
    t = Topology("nulls")
    t.source("in", key=codecs.string(), value=codecs.json()).to(
        "out", key=codecs.string(), value=codecs.json())
    entries, ctx = harness(t)
    entries["in"]([Msg(None, None), Msg(b'{"a":1}', None), Msg(None, b"k")])
    assert ctx.errors == []
    assert ctx.sent == [("out", None, None, 1000, None), ("out", None, b'{"a":1}', 1000, None),
                        ("out", b"k", None, 1000, None)]


def test_a_full_producer_queue_is_waited_out_and_each_record_sent_once(harness):
    t = Topology("full")
    t.source("in").to("out")
    entries, ctx = harness(t)
    refusals = [3]  # the local queue refuses the first record three times
    waits: list[int] = []

    def producer():
        def produce(topic, value, key, *, timestamp, headers):
            if refusals[0]:
                refusals[0] -= 1
                raise BufferError("Local: Queue full")
            ctx.sent.append((topic, key, value, timestamp, headers))
        return produce, lambda: waits.append(1)

    ctx.producer = producer
    entries["in"]([Msg(b"1", b"a"), Msg(b"2", b"b")])
    assert ctx.sent == [("out", b"a", b"1", 1000, None), ("out", b"b", b"2", 1000, None)]
    assert len(waits) == 3
    assert ctx.produced_count == 2
