"""Compile one sub-topology into per-task batch functions.

Each graph node becomes a function taking a list of records and pushing the resulting list to
its children, so Python pays one call per operator per batch and a tight loop per record. A
record that fails in an operator is handed to ``ctx.on_error`` and the rest of the batch goes on.

The per-record loops look alike on purpose: a shared generic loop would cost one more Python
call per record per operator, which is the dominant cost of this engine (design.md).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from streamproc.codecs.base import fast_decoder, fast_encoder
from streamproc.errors import CodecError, NullKeyError, StreamprocError
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
    WindowNode,
)
from streamproc.kafka.acls import refusal
from streamproc.runtime.context import TaskContext
from streamproc.runtime.limits import (
    DEFAULT_MAX_RECORD_BYTES,
    INT64_MAX,
    RECORD_OVERHEAD,
    HeaderError,
    RecordTooLarge,
    TimestampOutOfRange,
    Unreadable,
    read_headers,
    record_size,
    state_size_check,
    strip_reserved,
    to_timestamp,
)
from streamproc.runtime.process import MUTABLE, build_process
from streamproc.runtime.windowing import WindowOperator
from streamproc.time.watermarks import CONTROL_HEADER
from streamproc.types import Origin, Record

Push = Callable[[list[Record]], None]
SourcePush = Callable[[Sequence[Origin]], None]

MAX_RECORD_BYTES = DEFAULT_MAX_RECORD_BYTES
# Produce errors that are the record's fault (raised by produce() itself, before anything is
# queued): too large for the client, or a timestamp/argument the client refuses. Any other
# KafkaException (fatal, fenced, not in a transaction) is the instance's problem and stops the
# checkpoint: dead-lettering the record would commit its offset without its output.
_RECORD_ERRORS = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError._INVALID_ARG,
                  KafkaError.INVALID_RECORD}


def build_pipeline(st: SubTopology, ctx: TaskContext,
                   max_record_bytes: int = MAX_RECORD_BYTES, *,
                   track_time: bool = False) -> dict[str, SourcePush]:
    """Return, per source topic, the function that takes that topic's consumed messages.

    Sources track event time when the sub-topology acts on it, or ``track_time`` says so (its
    watermark is propagated downstream); sources of repartition topics always do, because they
    must take the control records out of the stream.
    """
    per_record = st.time_aware
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
            for topic in node.topics:
                if per_record or track_time or node.internal:
                    entries[topic] = _timed_source(node, topic, down, ctx, per_record=per_record)
                else:
                    entries[topic] = _source(node, down, ctx)
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
        return build_process(node, down, ctx)
    if isinstance(node, WindowNode):
        return WindowOperator(node, down, ctx).push
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
    extract: Callable[[Any], Any] | None = ts if callable(ts) else None
    wall_clock = ts == "processing_time"
    bounds = ctx.time_bounds
    low = bounds.low

    def push(msgs: Sequence[Origin]) -> None:
        out: list[Record] = []
        append = out.append
        now = ctx.now_ms()
        high = bounds.at(now)
        for m in msgs:
            # Headers first (limits.read_headers): a record whose headers cannot be read is
            # dead-lettered before any operator changed state for it.
            try:
                read_headers(m)
            except Exception as exc:
                on_error(Unreadable(m), HeaderError(f"headers cannot be read: {exc}"), where)
                continue
            try:
                raw = m.value()
                value = vfast(raw) if vfast is not None and raw is not None else vdec(raw)
                raw = m.key()
                key = kfast(raw) if kfast is not None and raw is not None else kdec(raw)
                if extract is not None:
                    t = extract(value)
                    if type(t) is not int:
                        t = to_timestamp(t, bounds)
                elif wall_clock:
                    t = now
                else:
                    t = m.timestamp()[1]
                if not low <= t <= high:
                    raise bounds.problem(t)
            except Exception as exc:
                on_error(m, _decode_error(exc, m, kdec, vdec), where)
                continue
            append(Record(key, value, t, m))
        if out:
            down(out)

    return push


def _timed_source(node: SourceNode, topic: str, down: Push, ctx: TaskContext, *,
                  per_record: bool) -> SourcePush:
    """A source that also moves the task's event time: per record (so that windows and timers
    see the watermark as of each record), or once per batch (when the watermark is only passed
    on downstream). Watermark control records of a repartition topic update the upstream
    watermarks and never reach an operator."""
    assert node.key_codec is not None and node.value_codec is not None
    kcodec, vcodec = node.key_codec, node.value_codec
    kdec, vdec = kcodec.decode, vcodec.decode
    kfast, vfast = fast_decoder(kcodec), fast_decoder(vcodec)
    ts = node.timestamp
    where, on_error, time = node.name, ctx.on_error, ctx.time
    extract: Callable[[Any], Any] | None = ts if callable(ts) else None
    wall_clock = ts == "processing_time"
    internal = node.internal
    bounds = ctx.time_bounds
    low = bounds.low
    # Behind a repartition with propagation on, records do not move the watermark: the
    # upstream tasks' control records do.
    local = not (internal and time.expected)
    observe = time.observe

    def push(msgs: Sequence[Origin]) -> None:
        out: list[Record] = []
        append = out.append
        now = ctx.now_ms()
        time.begin_batch(now)
        top = bounds.at(now)
        high, high_off = time.stream_time, -1
        for m in msgs:
            try:
                headers = read_headers(m)  # limits.read_headers: before anything else
            except Exception as exc:
                on_error(Unreadable(m), HeaderError(f"headers cannot be read: {exc}"), where)
                continue
            if internal and headers and headers[0][0] == CONTROL_HEADER:
                try:
                    time.control(topic, m.value() or b"", m.offset() or 0, headers)
                except Exception as exc:  # not written by a streamproc task: bad input
                    on_error(m, exc, where)
                continue
            try:
                raw = m.value()
                value = vfast(raw) if vfast is not None and raw is not None else vdec(raw)
                raw = m.key()
                key = kfast(raw) if kfast is not None and raw is not None else kdec(raw)
                if extract is not None:
                    t = extract(value)
                    if type(t) is not int:
                        t = to_timestamp(t, bounds)
                elif wall_clock:
                    t = now
                else:
                    t = m.timestamp()[1]
                # Out of range, it would move stream time for good: bad input, before observe.
                if not low <= t <= top:
                    raise bounds.problem(t)
            except Exception as exc:
                on_error(m, _decode_error(exc, m, kdec, vdec), where)
                continue
            if local:
                if per_record:
                    observe(t, m.offset() or 0)
                else:
                    high_off = m.offset() or 0
                    high = max(high, t)
            append(Record(key, value, t, m))
        if high_off >= 0:
            observe(high, high_off)
        if out:
            down(out)

    return push


def _decode_error(exc: Exception, m: Origin, kdec: Callable[[Any], Any],
                  vdec: Callable[[Any], Any]) -> Exception:
    """The error to report for a record that failed in the source: a fast path's raw exception
    is replaced by the codec's own CodecError (same message as the slow path)."""
    if isinstance(exc, CodecError | TimestampOutOfRange):
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


def _aggregate(node: AggregateNode, down: Push, ctx: TaskContext) -> Push:
    assert node.store is not None
    store = ctx.store(node.store.name)
    # The store's write-back cache is read and written directly (one dict operation instead of
    # a method call per record); only a cache miss goes through the store to RocksDB.
    cache, dirty, load = store.cache, store.dirty, store.get
    init, add, where, on_error = node.initializer, node.adder, node.name, ctx.on_error
    missing: Any = object()
    deleted = store.DELETED
    guarded = ctx.guarded(node.store.name)
    check = state_size_check(store, ctx.max_record_bytes) if guarded else None

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
                if check is not None and kb in guarded:
                    # This key's value outgrew the limit once: add to a copy and check the
                    # result, so the record that makes it too large leaves the state as it was.
                    acc = add(init() if acc is missing else copy.deepcopy(acc), r.value)
                    check(kb, acc)
                else:
                    acc = add(init() if acc is missing else acc, r.value)
            except Exception as exc:
                on_error(r.origin, exc, where)
                continue
            cache[kb] = acc
            mark(kb)
            # _snapshot(acc), inlined: one call less per record.
            append(Record(r.key, acc.copy() if type(acc) in MUTABLE else acc, r.timestamp,
                          r.origin))
        if out:
            down(out)

    return push


def _sink(node: SinkNode | RepartitionNode, ctx: TaskContext, max_bytes: int) -> Push:
    assert node.key_codec is not None and node.value_codec is not None
    kenc, venc = node.key_codec.encode, node.value_codec.encode
    kfast, vfast = fast_encoder(node.key_codec), fast_encoder(node.value_codec)
    topic, where, on_error = node.topic, node.name, ctx.on_error
    # A record re-keyed to None would reach the downstream keyed operator with the repartition
    # topic's coordinates: refuse it here, where it still names the record that was consumed.
    keyed = isinstance(node, RepartitionNode)
    # Room for the payload once the framing is counted (limits.record_size, inlined).
    budget = max_bytes - RECORD_OVERHEAD
    count = ctx.count
    out_time = ctx.output_time(topic)
    bounded = out_time.before_ms is not None or out_time.after_ms is not None

    def push(batch: list[Record]) -> None:
        # The producer's own produce(), fetched once per batch (the collector may have replaced
        # the producer after an abort): no Python wrapper call per record.
        produce, full = ctx.producer()
        n = stripped = 0
        lo, hi = out_time.window(ctx.now_ms()) if bounded else (-INT64_MAX, INT64_MAX)
        for r in batch:
            try:
                if not lo <= r.timestamp <= hi:
                    raise TimestampOutOfRange(
                        f"timestamp {r.timestamp} is outside what topic {topic} accepts "
                        f"({out_time}; now {ctx.now_ms()})")
                k = r.key
                k = kfast(k) if kfast is not None and k is not None else kenc(k)
                if k is None and keyed:
                    raise NullKeyError(f"the new key is null; {topic} needs a key")
                v = r.value
                v = vfast(v) if vfast is not None and v is not None else venc(v)
                # Headers travel with the record; reading them may fail (a name that is not
                # UTF-8), and they count towards its size.
                try:
                    h = r.origin.headers()
                except Exception as exc:
                    raise HeaderError(f"headers cannot be read: {exc}") from None
                size = (len(v) if v is not None else 0) + (len(k) if k else 0)
                if h:
                    # A user record never carries reserved headers into what we write: on a
                    # repartition topic streamproc.control would make it a watermark.
                    clean = strip_reserved(h)
                    if clean is not None:
                        h = clean
                        stripped += 1
                    size += record_size(None, None, h) - RECORD_OVERHEAD
                if size > budget:
                    raise RecordTooLarge(
                        f"record for {topic} is {size + RECORD_OVERHEAD} bytes (key + value + "
                        f"headers + framing), over max_record_bytes={max_bytes}")
            except Exception as exc:
                on_error(r.origin, _encode_error(exc, r, kenc, venc, where), where)
                continue
            try:
                produce(topic, v, k, timestamp=r.timestamp, headers=h)
            except BufferError:
                try:
                    _produce_when_room(produce, full, topic, k, v, r.timestamp, h)
                except Exception as exc:
                    on_error(r.origin, _produce_error(exc, topic), where)
                    continue
            except Exception as exc:
                # The client refused this record (a timestamp it cannot send, a size it
                # counts differently): the record's fault, so its source's error policy.
                on_error(r.origin, _produce_error(exc, topic), where)
                continue
            n += 1
        if stripped:
            count("reserved_headers_stripped_total", stripped, operator=where)
        ctx.produced(n)

    return push


def _produce_when_room(produce: Callable[..., None], full: Callable[[], None], topic: str,
                       k: bytes | None, v: bytes | None, ts: int, h: Any) -> None:
    while True:
        full()
        try:
            produce(topic, v, k, timestamp=ts, headers=h)
            return
        except BufferError:
            continue


def _produce_error(exc: Exception, topic: str) -> Exception:
    """What a record refused by ``produce`` is reported as; re-raises what is not the record's
    fault (the instance recovers from the last checkpoint instead)."""
    if isinstance(exc, KafkaException):
        err = exc.args[0] if exc.args else None
        code = err.code() if isinstance(err, KafkaError) else None
        refused = refusal(err, f"producing to {topic}") if isinstance(err, KafkaError) else None
        if refused is not None:
            raise refused from None  # not the record's fault, and retrying cannot help
        if code == KafkaError.MSG_SIZE_TOO_LARGE:
            return RecordTooLarge(f"the Kafka client refused the record for {topic} as too "
                                  f"large: {err}")
        if code not in _RECORD_ERRORS:
            raise exc
        return CodecError("produce", f"the Kafka client refused the record for {topic}: {err}")
    if isinstance(exc, OverflowError):
        # a timestamp a process function emitted that does not fit in int64
        return TimestampOutOfRange(f"record for {topic} cannot be produced: {exc}")
    if isinstance(exc, TypeError | ValueError):
        return CodecError("produce", f"record for {topic} cannot be produced: "
                          f"{type(exc).__name__}: {exc}")
    raise exc


def _encode_error(exc: Exception, r: Record, kenc: Callable[[Any], Any],
                  venc: Callable[[Any], Any], where: str) -> Exception:
    """What a failed output record is reported as: the codec's own error, never a raw
    TypeError from a fast path."""
    if isinstance(exc, CodecError | RecordTooLarge | HeaderError | TimestampOutOfRange |
                  NullKeyError):
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
