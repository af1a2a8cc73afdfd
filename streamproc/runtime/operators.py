"""Compile one sub-topology into per-task batch functions.

Each graph node becomes a function taking a list of records and pushing the resulting list to
its children, so Python pays one call per operator per batch and a tight loop per record. A
record that fails in an operator is handed to ``ctx.on_error`` and the rest of the batch goes on.

The per-record loops look alike on purpose: a shared generic loop would cost one more Python
call per record per operator, which is the dominant cost of this engine (design.md).
"""

from __future__ import annotations

import copy
from typing import Any

from streamproc.errors import NullKeyError, StreamprocError
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
    StreamGlobalJoinNode,
    StreamTableJoinNode,
    TableFilterNode,
    TableMapValuesNode,
    TableNode,
    ToStreamNode,
    WindowJoinNode,
    WindowNode,
)
from streamproc.runtime.context import Push, SourcePush, TaskContext
from streamproc.runtime.limits import (
    DEFAULT_MAX_RECORD_BYTES,
    state_size_check,
)
from streamproc.runtime.process import MUTABLE, build_process
from streamproc.runtime.sinks import sink
from streamproc.runtime.sources import source, timed_source
from streamproc.runtime.streamjoin import WindowJoinOperator
from streamproc.runtime.tables import (
    stream_global_join,
    stream_table_join,
    table,
    table_filter,
    table_map_values,
    to_stream,
)
from streamproc.runtime.windowing import WindowOperator
from streamproc.types import Record

MAX_RECORD_BYTES = DEFAULT_MAX_RECORD_BYTES


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
        down = _fanout([_input(c, node, push_of) for c in children])
        if isinstance(node, SourceNode):
            for topic in node.topics:
                if per_record or track_time or node.internal:
                    entries[topic] = timed_source(node, topic, down, ctx, per_record=per_record)
                else:
                    entries[topic] = source(node, down, ctx)
        elif isinstance(node, WindowJoinNode):
            op = WindowJoinOperator(node, down, ctx)
            push_of[node.name], push_of[_RIGHT + node.name] = op.push_left, op.push_right
        else:
            push_of[node.name] = _build(node, down, ctx, max_record_bytes)
    return entries


_RIGHT = "\x00right:"  # the key of a two-input operator's second input in push_of


def _input(child: Node, parent: Node, push_of: dict[str, Push]) -> Push:
    """What ``parent`` pushes to ``child``: a stream-table join takes its stream side only
    (the table's changes emit nothing; it looks rows up in the table's store)."""
    if isinstance(child, StreamTableJoinNode) and child.parents[1] is parent:
        return _drop
    if isinstance(child, WindowJoinNode) and _is_parent(child.parents[1], parent):
        return push_of[_RIGHT + child.name]
    return push_of[child.name]


def _is_parent(given: Node, effective: Node) -> bool:
    """Whether ``effective`` (a node of the sub-topology) is the parent ``given`` to the
    builder: a repartition's children hang off its internal source (graph/compile.py)."""
    return given is effective or (isinstance(given, RepartitionNode)
                                  and effective.name == f"{given.name}.source")


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
    if isinstance(node, TableNode):
        return table(node, down, ctx)
    if isinstance(node, TableFilterNode):
        return table_filter(node, down, ctx)
    if isinstance(node, TableMapValuesNode):
        return table_map_values(node, down, ctx)
    if isinstance(node, ToStreamNode):
        return to_stream(node, down, ctx)
    if isinstance(node, StreamTableJoinNode):
        return stream_table_join(node, down, ctx)
    if isinstance(node, StreamGlobalJoinNode):
        return stream_global_join(node, down, ctx)
    if isinstance(node, ArmNode | MergeNode):
        return down
    if isinstance(node, SinkNode | RepartitionNode):
        return sink(node, ctx, max_bytes)
    raise StreamprocError(f"no runtime operator for node kind {node.kind!r}")


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
