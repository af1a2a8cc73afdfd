"""Compile one sub-topology into per-task batch functions.

Each graph node becomes a function taking a list of records and pushing the resulting list to
its children, so Python pays one call per operator per batch and a tight loop per record. A
record that fails in an operator is handed to ``ctx.on_error`` and the rest of the batch goes on.

The per-record loops look alike on purpose: a shared generic loop would cost one more Python
call per record per operator, which is the dominant cost of this engine (design.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from streamproc.codecs.base import fast_decoder, fast_encoder
from streamproc.errors import CodecError, StreamprocError
from streamproc.graph.compile import SubTopology
from streamproc.graph.nodes import (
    AggregateNode,
    ArmNode,
    BranchNode,
    FilterNode,
    FlatMapNode,
    KeyByNode,
    MapNode,
    MergeNode,
    Node,
    ProcessNode,
    RepartitionNode,
    SinkNode,
    SourceNode,
)
from streamproc.runtime.context import TaskContext
from streamproc.types import Origin, Record

Push = Callable[[list[Record]], None]
SourcePush = Callable[[Sequence[Origin]], None]

MAX_RECORD_BYTES = 1_000_000  # broker default message.max.bytes is ~1 MiB

# Aggregates and state are treated as values: an accumulator or state object a user function
# mutates in place must not change what was already emitted, or leak from a failed record.
# A shallow copy of the built-in containers covers the common cases at a small cost.
_MUTABLE = (list, dict, set, bytearray)


_ABSENT: Any = object()


def _snapshot(value: Any) -> Any:
    return value.copy() if type(value) in _MUTABLE else value


class NullKeyError(StreamprocError):
    """A keyed (stateful) operator received a record without a key."""


class RecordTooLarge(StreamprocError):
    """An output record is larger than the producer may send; it is bad input, not a crash."""


def build_pipeline(st: SubTopology, ctx: TaskContext,
                   max_record_bytes: int = MAX_RECORD_BYTES) -> dict[str, SourcePush]:
    """Return, per source topic, the function that takes that topic's consumed messages."""
    push_of: dict[str, Push] = {}
    entries: dict[str, SourcePush] = {}
    for node in reversed(st.nodes):
        children = st.children[node.name]
        if isinstance(node, BranchNode):
            arms = sorted((c for c in children if isinstance(c, ArmNode)), key=lambda a: a.index)
            push_of[node.name] = _branch(node, [push_of[a.name] for a in arms], ctx)
            continue
        down = _fanout([push_of[c.name] for c in children])
        if isinstance(node, SourceNode):
            entry = _source(node, down, ctx)
            for topic in node.topics:
                entries[topic] = entry
        else:
            push_of[node.name] = _build(node, down, ctx, max_record_bytes)
    return entries


def _fanout(downs: list[Push]) -> Push:
    if not downs:
        return _drop
    if len(downs) == 1:
        return downs[0]

    def fan(batch: list[Record]) -> None:
        for d in downs:
            d(batch)

    return fan


def _drop(batch: list[Record]) -> None:
    return None


def _build(node: Node, down: Push, ctx: TaskContext, max_bytes: int) -> Push:
    if isinstance(node, MapNode):
        return _map(node, down, ctx)
    if isinstance(node, FilterNode):
        return _filter(node, down, ctx)
    if isinstance(node, FlatMapNode):
        return _flat_map(node, down, ctx)
    if isinstance(node, KeyByNode):
        return _key_by(node, down, ctx)
    if isinstance(node, AggregateNode):
        return _aggregate(node, down, ctx)
    if isinstance(node, ProcessNode):
        return _process(node, down, ctx)
    if isinstance(node, ArmNode | MergeNode):
        return down
    if isinstance(node, SinkNode | RepartitionNode):
        return _sink(node, ctx, max_bytes)
    raise StreamprocError(f"no runtime operator for node kind {node.kind!r}")


def _source(node: SourceNode, down: Push, ctx: TaskContext) -> SourcePush:
    assert node.key_codec is not None and node.value_codec is not None
    kcodec, vcodec = node.key_codec, node.value_codec
    kdec, vdec = kcodec.decode, vcodec.decode
    kfast, vfast = fast_decoder(kcodec), fast_decoder(vcodec)
    ts = node.timestamp
    where = node.name
    on_error = ctx.on_error
    extract: Callable[[Any], int] | None = ts if callable(ts) else None
    wall_clock = ts == "processing_time"

    def push(msgs: Sequence[Origin]) -> None:
        out: list[Record] = []
        append = out.append
        now = int(time.time() * 1000) if wall_clock else 0
        for m in msgs:
            try:
                raw = m.value()
                value = vfast(raw) if vfast is not None and raw is not None else vdec(raw)
                raw = m.key()
                key = kfast(raw) if kfast is not None and raw is not None else kdec(raw)
                if extract is not None:
                    t = int(extract(value))
                elif wall_clock:
                    t = now
                else:
                    t = m.timestamp()[1]
            except Exception as exc:
                on_error(m, _decode_error(exc, m, kdec, vdec), where)
                continue
            append(Record(key, value, t, m))
        if out:
            down(out)

    return push


def _decode_error(exc: Exception, m: Origin, kdec: Callable[[Any], Any],
                  vdec: Callable[[Any], Any]) -> Exception:
    """The error to report for a record that failed in the source: a fast path's raw exception
    is replaced by the codec's own CodecError (same message as the slow path)."""
    if isinstance(exc, CodecError):
        return exc
    for dec, raw in ((vdec, m.value()), (kdec, m.key())):
        try:
            dec(raw)
        except CodecError as codec_exc:
            return codec_exc
        except Exception:
            return exc
    return exc


def _map(node: MapNode, down: Push, ctx: TaskContext) -> Push:
    fn, where, on_error = node.fn, node.name, ctx.on_error

    def push(batch: list[Record]) -> None:
        out: list[Record] = []
        append = out.append
        for r in batch:
            try:
                v = fn(r.value)
            except Exception as exc:
                on_error(r.origin, exc, where)
                continue
            append(Record(r.key, v, r.timestamp, r.origin))
        if out:
            down(out)

    return push


def _filter(node: FilterNode, down: Push, ctx: TaskContext) -> Push:
    fn, where, on_error = node.fn, node.name, ctx.on_error

    def push(batch: list[Record]) -> None:
        out: list[Record] = []
        append = out.append
        for r in batch:
            try:
                keep = fn(r.value)
            except Exception as exc:
                on_error(r.origin, exc, where)
                continue
            if keep:
                append(r)
        if out:
            down(out)

    return push


def _flat_map(node: FlatMapNode, down: Push, ctx: TaskContext) -> Push:
    fn, where, on_error = node.fn, node.name, ctx.on_error

    def push(batch: list[Record]) -> None:
        out: list[Record] = []
        append = out.append
        for r in batch:
            try:
                # Materialize first: a generator failing half-way must not emit half its output.
                values = list(fn(r.value))
            except Exception as exc:
                on_error(r.origin, exc, where)
                continue
            k, t, o = r.key, r.timestamp, r.origin
            for v in values:
                append(Record(k, v, t, o))
        if out:
            down(out)

    return push


def _key_by(node: KeyByNode, down: Push, ctx: TaskContext) -> Push:
    fn, where, on_error = node.fn, node.name, ctx.on_error

    def push(batch: list[Record]) -> None:
        out: list[Record] = []
        append = out.append
        for r in batch:
            try:
                k = fn(r.value)
            except Exception as exc:
                on_error(r.origin, exc, where)
                continue
            append(Record(k, r.value, r.timestamp, r.origin))
        if out:
            down(out)

    return push


def _branch(node: BranchNode, arms: list[Push], ctx: TaskContext) -> Push:
    preds = [p for _, p in node.predicates]
    has_otherwise = node.otherwise is not None
    where, on_error = node.name, ctx.on_error

    def push(batch: list[Record]) -> None:
        outs: list[list[Record]] = [[] for _ in arms]
        for r in batch:
            try:
                idx = next((i for i, p in enumerate(preds) if p(r.value)), -1)
            except Exception as exc:
                on_error(r.origin, exc, where)
                continue
            if idx >= 0:
                outs[idx].append(r)
            elif has_otherwise:
                outs[-1].append(r)
        for arm, out in zip(arms, outs, strict=True):
            if out:
                arm(out)

    return push


def _store_key(r: Record) -> bytes:
    # Keyed operators only ever follow a source or a repartition with the key unchanged, so the
    # consumed key bytes *are* the key's encoding: no re-encoding per record.
    kb = r.origin.key()
    if kb is None:
        raise NullKeyError("record has a null key; keyed operations need a key")
    return kb


def _aggregate(node: AggregateNode, down: Push, ctx: TaskContext) -> Push:
    assert node.store is not None
    store = ctx.store(node.store.name)
    # The store's write-back cache is read and written directly (one dict operation instead of
    # a method call per record); only a cache miss goes through the store to RocksDB.
    cache, dirty, load = store.cache, store.dirty, store.get
    init, add, where, on_error = node.initializer, node.adder, node.name, ctx.on_error
    missing: Any = object()
    deleted = store.DELETED

    def push(batch: list[Record]) -> None:
        out: list[Record] = []
        append = out.append
        mark = dirty.add
        for r in batch:
            try:
                # Keyed operators only ever follow a source or a repartition with the key
                # unchanged, so the consumed key bytes *are* the key's encoding.
                kb = r.origin.key()
                if kb is None:
                    raise NullKeyError("record has a null key; keyed operations need a key")
                acc = cache.get(kb, missing)
                if acc is missing or acc is deleted:
                    acc = load(kb, missing)
                acc = add(init() if acc is missing else acc, r.value)
            except Exception as exc:
                on_error(r.origin, exc, where)
                continue
            cache[kb] = acc
            mark(kb)
            # _snapshot(acc), inlined: one call less per record.
            append(Record(r.key, acc.copy() if type(acc) in _MUTABLE else acc, r.timestamp,
                          r.origin))
        if out:
            down(out)

    return push


class KeyState:
    """The state of the current record's key inside ``process``; writes apply only if the user
    function returns normally (so a failed record leaves no partial state behind). Only
    ``set``/``delete`` write: mutating what ``get`` returned changes nothing by itself."""

    __slots__ = ("_key", "_pending", "_read", "_store")
    _UNCHANGED: Any = object()
    _DELETE: Any = object()

    def __init__(self, store: Any) -> None:
        self._store = store
        self._key = b""
        self._pending: Any = KeyState._UNCHANGED
        self._read: Any = KeyState._UNCHANGED  # this record's snapshot of the stored value

    def get(self, default: Any = None) -> Any:
        p = self._pending
        if p is KeyState._DELETE:
            return default
        if p is not KeyState._UNCHANGED:
            return p
        if self._read is KeyState._UNCHANGED:
            # A copy, so that mutating it and then raising leaves the stored state untouched;
            # reading alone never marks the key dirty (no changelog record for a read).
            self._read = _snapshot(self._store.get(self._key, _ABSENT))
        return default if self._read is _ABSENT else self._read

    def set(self, value: Any) -> None:
        self._pending = value

    def delete(self) -> None:
        self._pending = KeyState._DELETE


class ProcessContext:
    """Passed to ``process`` functions: the current record's metadata, its key's state and
    ``emit``."""

    __slots__ = ("_out", "_record", "state")

    def __init__(self, state: KeyState | None) -> None:
        self.state = state
        self._out: list[Record] = []
        self._record: Record | None = None

    @property
    def timestamp(self) -> int:
        assert self._record is not None
        return self._record.timestamp

    @property
    def topic(self) -> str | None:
        assert self._record is not None
        return self._record.origin.topic()

    @property
    def partition(self) -> int | None:
        assert self._record is not None
        return self._record.origin.partition()

    @property
    def offset(self) -> int | None:
        assert self._record is not None
        return self._record.origin.offset()

    def emit(self, value: Any, *, key: Any = ..., timestamp: int | None = None) -> None:
        r = self._record
        assert r is not None
        self._out.append(Record(r.key if key is ... else key, value,
                                r.timestamp if timestamp is None else timestamp, r.origin))


def _process(node: ProcessNode, down: Push, ctx: TaskContext) -> Push:
    fn, where, on_error = node.fn, node.name, ctx.on_error
    store = ctx.store(node.store.name) if node.store is not None else None
    state = KeyState(store) if store is not None else None
    pctx = ProcessContext(state)
    unchanged, delete = KeyState._UNCHANGED, KeyState._DELETE

    def push(batch: list[Record]) -> None:
        out: list[Record] = []
        for r in batch:
            pctx._record = r
            pctx._out = []
            try:
                if state is not None:
                    state._key = _store_key(r)
                    state._pending = state._read = unchanged
                fn(pctx, r.key, r.value)
            except Exception as exc:
                on_error(r.origin, exc, where)
                continue
            if state is not None and store is not None and state._pending is not unchanged:
                if state._pending is delete:
                    store.delete(state._key)
                else:
                    store.put(state._key, state._pending)
            out.extend(pctx._out)
        pctx._record = None
        if out:
            down(out)

    return push


def _sink(node: SinkNode | RepartitionNode, ctx: TaskContext, max_bytes: int) -> Push:
    assert node.key_codec is not None and node.value_codec is not None
    kenc, venc = node.key_codec.encode, node.value_codec.encode
    kfast, vfast = fast_encoder(node.key_codec), fast_encoder(node.value_codec)
    topic, where, on_error = node.topic, node.name, ctx.on_error

    def push(batch: list[Record]) -> None:
        # The producer's own produce(), fetched once per batch (the collector may have replaced
        # the producer after an abort): no Python wrapper call per record.
        produce, full = ctx.producer()
        n = 0
        for r in batch:
            try:
                k = r.key
                k = kfast(k) if kfast is not None and k is not None else kenc(k)
                v = r.value
                v = vfast(v) if vfast is not None and v is not None else venc(v)
                if v is not None and (size := len(v) + (len(k) if k else 0)) > max_bytes:
                    raise RecordTooLarge(f"record for {topic} is {size} bytes (key + value), "
                                         f"over the limit of {max_bytes}")
            except Exception as exc:
                on_error(r.origin, _encode_error(exc, r, kenc, venc, where), where)
                continue
            try:
                produce(topic, v, k, timestamp=r.timestamp, headers=r.origin.headers())
            except BufferError:
                _produce_when_room(produce, full, topic, k, v, r)
            n += 1
        ctx.produced(n)

    return push


def _produce_when_room(produce: Callable[..., None], full: Callable[[], None], topic: str,
                       k: bytes | None, v: bytes | None, r: Record) -> None:
    while True:
        full()
        try:
            produce(topic, v, k, timestamp=r.timestamp, headers=r.origin.headers())
            return
        except BufferError:
            continue


def _encode_error(exc: Exception, r: Record, kenc: Callable[[Any], Any],
                  venc: Callable[[Any], Any], where: str) -> Exception:
    """What a failed output record is reported as: the codec's own error, never a raw
    TypeError from a fast path."""
    if isinstance(exc, CodecError | RecordTooLarge):
        return exc
    for enc, obj in ((kenc, r.key), (venc, r.value)):
        try:
            enc(obj)
        except CodecError as codec_exc:
            return codec_exc
        except Exception as other:
            exc = other
            break
    return CodecError(where, f"{type(exc).__name__}: {exc}")
