"""Table operators: materialize a table, views over its changes, its change stream, and the
stream-table join that looks rows up (docs/joins.md says what each emits and when).

Changes travel as records whose value is a :class:`~streamproc.types.Change`. Keys are the
consumed key bytes (``origin.key()``), as for every keyed operator: a table's rows and a
stream's records meet by the bytes of their keys, which the builder made the same codec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamproc.codecs.base import Codec
from streamproc.errors import CodecError, InfrastructureError, NullKeyError
from streamproc.graph.nodes import (
    Node,
    SourceNode,
    StreamGlobalJoinNode,
    StreamTableJoinNode,
    TableFilterNode,
    TableMapValuesNode,
    TableNode,
    ToStreamNode,
    table_root,
)
from streamproc.runtime.context import Push, TaskContext
from streamproc.runtime.limits import HeaderError, read_headers
from streamproc.runtime.process import MUTABLE
from streamproc.state.table import SourceTableStore
from streamproc.types import Change, Origin, Record

_MISSING: Any = object()


def table(node: TableNode, down: Push, ctx: TaskContext) -> Push:
    """Upsert (or, for a ``None`` value, delete) each record's key; emit the change. A delete
    of a key the table does not hold changes nothing and emits nothing."""
    assert node.store is not None
    store = ctx.store(node.store.name)
    cache, dirty, load, deleted = store.cache, store.dirty, store.get, store.DELETED
    written = store.written if isinstance(store, SourceTableStore) else None
    where, on_error = node.name, ctx.on_error

    def push(batch: list[Record]) -> None:
        out: list[Record] = []
        append = out.append
        mark = dirty.add
        for r in batch:
            kb = r.origin.key()
            if kb is None:
                on_error(r.origin, NullKeyError("a table record needs a key"), where)
                continue
            old = cache.get(kb, _MISSING)
            if old is _MISSING:
                old = load(kb)
            elif old is deleted:
                old = None
            new = r.value
            if new is None:
                if old is None:
                    continue
                cache[kb] = deleted
            else:
                cache[kb] = new
            if written is not None:
                written[kb] = r.origin.value()
            mark(kb)
            # The cache keeps ``new``: what runs downstream gets its own copy to change.
            append(Record(r.key, Change(old, new.copy() if type(new) in MUTABLE else new),
                          r.timestamp, r.origin))
        if out:
            down(out)

    return push


def table_filter(node: TableFilterNode, down: Push, ctx: TaskContext) -> Push:
    fn, where, on_error = node.fn, node.name, ctx.on_error

    def push(batch: list[Record]) -> None:
        out: list[Record] = []
        for r in batch:
            ch: Change = r.value
            try:
                old = ch.old if ch.old is not None and fn(ch.old) else None
                new = ch.new if ch.new is not None and fn(ch.new) else None
            except Exception as exc:
                on_error(r.origin, exc, where)
                continue
            if old is None and new is None:
                continue  # absent before and after: not a change of this view
            out.append(Record(r.key, Change(old, new), r.timestamp, r.origin))
        if out:
            down(out)

    return push


def table_map_values(node: TableMapValuesNode, down: Push, ctx: TaskContext) -> Push:
    fn, where, on_error = node.fn, node.name, ctx.on_error

    def push(batch: list[Record]) -> None:
        out: list[Record] = []
        for r in batch:
            ch: Change = r.value
            try:
                old = fn(ch.old) if ch.old is not None else None
                new = fn(ch.new) if ch.new is not None else None
            except Exception as exc:
                on_error(r.origin, exc, where)
                continue
            out.append(Record(r.key, Change(old, new), r.timestamp, r.origin))
        if out:
            down(out)

    return push


def to_stream(node: ToStreamNode, down: Push, ctx: TaskContext) -> Push:
    def push(batch: list[Record]) -> None:
        down([Record(r.key, r.value.new, r.timestamp, r.origin) for r in batch])

    return push


def lookup(table_node: Node, ctx: TaskContext) -> Callable[[bytes], Any]:
    """``row(key_bytes)``: the row of a table view (``None`` when absent), read through the
    store's cache, the views applied. A mutable row is copied: a joiner that changes what it
    was given must not change the table."""
    root, views = table_root(table_node)
    assert root.store is not None
    store = ctx.store(root.store.name)
    cache, load, deleted = store.cache, store.get, store.DELETED
    steps = [(isinstance(v, TableFilterNode), v.fn) for v in views
             if isinstance(v, TableFilterNode | TableMapValuesNode)]

    def row(kb: bytes) -> Any:
        value = cache.get(kb, _MISSING)
        if value is _MISSING:
            value = load(kb)
        elif value is deleted:
            return None
        for is_filter, fn in steps:
            if value is None:
                return None
            if is_filter:
                if not fn(value):
                    return None
            else:
                value = fn(value)
        return value.copy() if type(value) in MUTABLE else value

    return row


def stream_table_join(node: StreamTableJoinNode, down: Push, ctx: TaskContext) -> Push:
    """Stream records only: each is joined with its key's row as the task holds it now."""
    row_of = lookup(node.parents[1], ctx)
    joiner, inner, where, on_error = node.joiner, node.how == "inner", node.name, ctx.on_error

    def push(batch: list[Record]) -> None:
        out: list[Record] = []
        append = out.append
        for r in batch:
            try:
                kb = r.origin.key()
                row = row_of(kb) if kb is not None else None
                if row is None and inner:
                    continue
                value = joiner(r.value, row)
            except Exception as exc:
                on_error(r.origin, exc, where)
                continue
            append(Record(r.key, value, r.timestamp, r.origin))
        if out:
            down(out)

    return push


def row_problem(key_codec: Codec, value_codec: Codec, m: Origin) -> Exception | None:
    """Why a consumed record of a table's topic is not a row (None: it is one): headers that
    cannot be read, no key, a key or value that does not decode. A registry that cannot be
    reached is not the record's fault: it is raised."""
    try:
        read_headers(m)
    except Exception as exc:
        return HeaderError(f"headers cannot be read: {exc}")
    key = m.key()
    if key is None:
        return NullKeyError("a table record needs a key")
    try:
        key_codec.decode(key)
        value = m.value()
        if value is not None:
            value_codec.decode(value)
    except InfrastructureError:
        raise
    except CodecError as exc:
        return exc
    except Exception as exc:
        return CodecError(value_codec.name, f"{type(exc).__name__}: {exc}")
    return None


def restorable(node: SourceNode) -> Callable[[Origin], bool]:
    """Whether a consumed record of a table's topic is one its table holds: what the source
    would have accepted (:func:`row_problem`). A restore from the topic skips the others, as
    processing dead-lettered or skipped them. Limits that depend on the wall clock (a
    timestamp too far in the future) are not applied again."""
    assert node.key_codec is not None and node.value_codec is not None
    kcodec, vcodec = node.key_codec, node.value_codec
    return lambda m: row_problem(kcodec, vcodec, m) is None


def stream_global_join(node: StreamGlobalJoinNode, down: Push, ctx: TaskContext) -> Push:
    """Each record joined with the global table's row of ``key(value)`` (or of its own key),
    as the instance holds the table now."""
    assert node.table is not None
    store = ctx.global_store(node.table.store)
    get, extract, encode = store.get, node.key, node.table.key_codec.encode
    joiner, inner, where, on_error = node.joiner, node.how == "inner", node.name, ctx.on_error

    def push(batch: list[Record]) -> None:
        out: list[Record] = []
        append = out.append
        for r in batch:
            try:
                if extract is None:
                    kb = r.origin.key()
                else:
                    k = extract(r.value)
                    kb = None if k is None else encode(k)
                row = get(kb) if kb is not None else None
                if row is None:
                    if inner:
                        continue
                elif type(row) in MUTABLE:
                    row = row.copy()
                value = joiner(r.value, row)
            except Exception as exc:
                on_error(r.origin, exc, where)
                continue
            append(Record(r.key, value, r.timestamp, r.origin))
        if out:
            down(out)

    return push
