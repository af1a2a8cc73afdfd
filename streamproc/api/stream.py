"""``Stream`` and ``GroupedStream``: the friendly operators, each adding one graph node."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from streamproc.api.table import GlobalTable, Table
from streamproc.api.topology import Topology
from streamproc.api.windowed import WindowedStream
from streamproc.codecs.base import Codec
from streamproc.codecs.basic import JsonCodec
from streamproc.errors import TopologyError
from streamproc.graph.naming import check_store, repartition_topic, require_derived, require_topic
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
    StoreSpec,
    StreamGlobalJoinNode,
    StreamTableJoinNode,
    TableNode,
    WindowJoinNode,
)
from streamproc.time.windows import WindowSpec


class Stream:
    """An unbounded stream of keyed records.

    Value operators (``map``, ``filter``, ``flat_map``) keep the key. ``key_by`` changes it, after
    which any keyed operation first sends the records through a repartition topic.
    """

    def __init__(
        self, topology: Topology, node: Node, *, key_codec: Codec | None,
        repartition_required: bool,
    ) -> None:
        self._topology = topology
        self.node = node
        self._key_codec = key_codec
        self._repartition_required = repartition_required

    def _then(self, node: Node, *, key_changed: bool = False,
              key_codec: Codec | None = None) -> Stream:
        node.parents.append(self.node)
        self._topology._add(node)
        return Stream(
            self._topology, node,
            key_codec=key_codec if key_changed else self._key_codec,
            repartition_required=self._repartition_required or key_changed,
        )

    def _name(self, kind: str, given: str | None) -> str:
        return self._topology._name(kind, given)

    # -- stateless -----------------------------------------------------------------------
    def map(self, fn: Callable[[Any], Any], *, name: str | None = None) -> Stream:
        """Replace each value by ``fn(value)``."""
        return self._then(MapNode(self._name("map", name), fn=fn))

    def filter(self, fn: Callable[[Any], bool], *, name: str | None = None) -> Stream:
        """Keep the records whose ``fn(value)`` is true."""
        return self._then(FilterNode(self._name("filter", name), fn=fn))

    def flat_map(self, fn: Callable[[Any], Iterable[Any]], *, name: str | None = None) -> Stream:
        """Replace each value by zero or more values (same key and timestamp)."""
        return self._then(FlatMapNode(self._name("flat_map", name), fn=fn))

    def key_by(self, fn: Callable[[Any], Any], *, key: Codec | None = None,
               name: str | None = None) -> Stream:
        """Set each record's key to ``fn(value)``. ``key`` is the codec of the new key
        (default JSON), used if the stream is repartitioned or written out."""
        return self._then(KeyByNode(self._name("key_by", name), fn=fn), key_changed=True,
                          key_codec=key or JsonCodec())

    def process(
        self, fn: Callable[..., None], *, store: str | None = None,
        state: Codec | None = None, key: Codec | None = None, name: str | None = None,
        on_timer: Callable[..., None] | None = None,
    ) -> Stream:
        """Run ``fn(ctx, key, value)`` per record; it emits with ``ctx.emit(value, key=...)``.

        With ``store``, ``ctx.state`` reads and writes the state of the record's key (changes
        apply only if ``fn`` returns normally) and the stream is repartitioned first if its key
        changed. Emitting a new key marks the output as needing a repartition; ``key`` is the
        codec of emitted keys (default: the input's key codec).

        With ``on_timer`` (a keyed process function), ``ctx.timers`` registers and deletes
        per-key event-time timers (fire when the watermark reaches them) and processing-time
        timers (fire when the wall clock does); ``on_timer(ctx, key, timestamp)`` then runs with
        that key's ``ctx.state`` and may emit. Timers are checkpointed with the state.
        """
        if on_timer is not None and not store:
            raise TopologyError("process(on_timer=...) needs a store=: timers are kept per key")
        if store is not None:
            check_store(self._topology.application_id, store, timers=on_timer is not None)
        src = self._keyed(store) if store else self
        spec = StoreSpec(store, state or JsonCodec()) if store else None
        node = ProcessNode(src._name("process", name), fn=fn, store=spec, on_timer=on_timer,
                           key_codec=src._key_codec or JsonCodec())
        return src._then(node, key_changed=True, key_codec=key or src._key_codec or JsonCodec())

    def branch(
        self, predicates: Mapping[str, Callable[[Any], bool]], *,
        otherwise: str | None = None, name: str | None = None,
    ) -> dict[str, Stream]:
        """Split by predicates over the value; a record goes to the first branch that matches,
        else to ``otherwise`` if given, else it is dropped (counted as filtered)."""
        if not predicates:
            raise TopologyError("branch() needs at least one predicate")
        names = [*predicates, *([otherwise] if otherwise else [])]
        if len(set(names)) != len(names):
            raise TopologyError(f"branch names must be distinct: {names}")
        bnode = BranchNode(self._name("branch", name), predicates=list(predicates.items()),
                           otherwise=otherwise)
        base = self._then(bnode)
        return {
            arm: base._then(ArmNode(self._name("arm", f"{bnode.name}.{arm}"), index=i))
            for i, arm in enumerate(names)
        }

    def merge(self, *others: Stream, name: str | None = None) -> Stream:
        """One stream of the records of this and ``others`` (no ordering across them)."""
        node = MergeNode(self._name("merge", name))
        node.parents.extend(o.node for o in others)
        out = self._then(node)
        if any(o._repartition_required for o in others):
            out._repartition_required = True
        return out

    # -- keyed ---------------------------------------------------------------------------
    def group_by(
        self, fn: Callable[[Any], Any], *, key: Codec | None = None,
        value: Codec | None = None, name: str | None = None, partitions: int | None = None,
    ) -> GroupedStream:
        """Re-key by ``fn(value)`` and repartition so that each key's records meet in one task.

        The internal topic is ``{app}-{name}-repartition``; name it to keep it stable across
        code changes. ``key``/``value`` codecs (default JSON) encode records on that topic.
        """
        keyed = self.key_by(fn, key=key, name=f"{name}.key" if name else None)
        return keyed._repartition(name, value, partitions)

    def group_by_key(self, *, name: str | None = None, value: Codec | None = None) -> GroupedStream:
        """Group by the current key (repartitioning only if the key was changed upstream)."""
        return GroupedStream(self._keyed(name, value))

    def _keyed(self, name: str | None, value: Codec | None = None) -> Stream:
        if not self._repartition_required:
            return self
        return self._repartition(name, value, None).stream

    def _repartition(self, name: str | None, value: Codec | None,
                     partitions: int | None) -> GroupedStream:
        rname = self._name("group_by", name)
        topic = require_derived("operator", rname, "repartition topic",
                                repartition_topic(self._topology.application_id, rname))
        node = RepartitionNode(
            rname, topic=topic,
            key_codec=self._key_codec or JsonCodec(), value_codec=value or JsonCodec(),
            partitions=partitions,
        )
        node.parents.append(self.node)
        self._topology._add(node)
        return GroupedStream(Stream(self._topology, node, key_codec=node.key_codec,
                                    repartition_required=False))

    # -- tables and joins ----------------------------------------------------------------
    def to_table(self, *, store: str, state: Codec | None = None,
                 name: str | None = None) -> Table:
        """The latest value per key of this stream, in ``store`` (changelogged like any store;
        ``state`` is its value codec, default JSON). A ``None`` value deletes the key. The
        stream is repartitioned first if its key changed."""
        check_store(self._topology.application_id, store)
        src = self._keyed(name)
        node = TableNode(src._name("to_table", name), store=StoreSpec(store, state or JsonCodec()),
                         key_codec=src._key_codec)
        src._then(node)
        return Table(self._topology, node, key_codec=src._key_codec)

    def join(self, table: Table | GlobalTable | Stream,
             joiner: Callable[[Any, Any], Any] | None = None,
             *, how: str = "inner", key: Callable[[Any], Any] | None = None,
             within_ms: int | None = None, grace_ms: int = 0, store: str | None = None,
             state: Codec | None = None, name: str | None = None) -> Stream:
        """Each record joined with its key's row of ``table`` as of when it is processed:
        ``joiner(value, row)`` (default: the pair ``(value, row)``). ``how="inner"`` drops a
        record whose key has no row; ``"left"`` joins it with ``None``. Table updates emit
        nothing. If this stream's key changed, it is first repartitioned by the table's key
        codec (so a key's records and its row meet in one task). With a global table, ``key``
        computes the row's key from the value (default: the record's key) and nothing is
        repartitioned. With a stream, a windowed join: records of one key whose timestamps are
        at most ``within_ms`` apart (see :meth:`interval_join`). docs/joins.md."""
        if isinstance(table, Stream):
            if within_ms is None or not isinstance(within_ms, int) or within_ms < 0:
                raise TopologyError("a stream-stream join needs within_ms= (an int >= 0): how "
                                    "far apart in event time two records may be to join")
            return self.interval_join(table, joiner, lower_ms=-within_ms, upper_ms=within_ms,
                                      how=how, grace_ms=grace_ms, store=store, state=state,
                                      name=name)
        if how not in ("inner", "left"):
            raise TopologyError(f"a stream-table join is 'inner' or 'left', got {how!r}")
        if isinstance(table, GlobalTable):
            if table._topology is not self._topology:
                raise TopologyError("join(): the table belongs to another topology")
            gnode = StreamGlobalJoinNode(self._name("join", name), table=table.spec, key=key,
                                         joiner=joiner or _pair, how=how)
            return self._then(gnode)
        if not isinstance(table, Table):
            raise TopologyError(f"join() needs a Table (topology.table, to_table or "
                                f"global_table), got {type(table).__name__}")
        if table._topology is not self._topology:
            raise TopologyError("join(): the table belongs to another topology")
        if key is not None:
            raise TopologyError("join(key=...) is for global tables: a table's rows are found "
                                "by the record's key (key_by(...) first to change it)")
        kc = table.key_codec or JsonCodec()
        src = self
        if self._repartition_required:
            src = Stream(self._topology, self.node, key_codec=kc, repartition_required=True)
            src = src._repartition(f"{name}.repartition" if name else None, None, None).stream
        elif (self._key_codec or JsonCodec()).name != kc.name:
            raise TopologyError(
                f"join with table {table.store!r}: the stream's keys are encoded with "
                f"{(self._key_codec or JsonCodec()).name} but the table's with {kc.name}; the "
                "same key must have the same bytes on both sides (give the source key=... the "
                "table's codec, or key_by(...) to repartition)")
        node = StreamTableJoinNode(src._name("join", name), joiner=joiner or _pair, how=how)
        node.parents.append(table.node)
        out = src._then(node)
        # _then appended the stream last; the stream side comes first (nodes.py).
        node.parents.reverse()
        return out

    def interval_join(self, other: Stream, joiner: Callable[[Any, Any], Any] | None = None,
                      *, lower_ms: int, upper_ms: int, how: str = "inner", grace_ms: int = 0,
                      store: str | None = None, state: Codec | None = None,
                      name: str | None = None) -> Stream:
        """Records of this stream (left) and ``other`` (right) with the same key join when
        ``left.ts + lower_ms <= right.ts <= left.ts + upper_ms``: ``joiner(left, right)``, at
        the later of the two timestamps, as soon as the second one arrives. Both sides wait in
        ``store`` (``{store}.left``/``.right``, changelogged) until the watermark passes their
        last possible match plus ``grace_ms``; then ``how="left"`` emits an unmatched left
        record as ``joiner(left, None)``, ``"outer"`` also an unmatched right one as
        ``joiner(None, right)``, at the record's own timestamp. A record older than the
        watermark minus ``grace_ms`` is late: dropped and counted. Keys changed on either side
        are repartitioned first. docs/joins.md."""
        if not isinstance(other, Stream) or other._topology is not self._topology:
            raise TopologyError("interval_join() needs a stream of the same topology")
        if other is self or other.node is self.node:
            raise TopologyError("a stream cannot be joined with itself: branch it first")
        if how not in ("inner", "left", "outer"):
            raise TopologyError(f"a stream-stream join is 'inner', 'left' or 'outer', got "
                                f"{how!r}")
        for label, v in (("lower_ms", lower_ms), ("upper_ms", upper_ms)):
            if not isinstance(v, int):
                raise TopologyError(f"{label} must be an int (milliseconds), got {v!r}")
        if lower_ms > upper_ms:
            raise TopologyError(f"lower_ms ({lower_ms}) must not be above upper_ms ({upper_ms})")
        if not isinstance(grace_ms, int) or grace_ms < 0:
            raise TopologyError(f"grace_ms must be an int >= 0, got {grace_ms!r}")
        if store is None:
            raise TopologyError("a stream-stream join needs store=: both sides wait in it")
        check_store(self._topology.application_id, f"{store}.left")
        check_store(self._topology.application_id, f"{store}.right")
        left, right = self, other
        if left._repartition_required and not right._repartition_required:
            left = Stream(left._topology, left.node, key_codec=right._key_codec,
                          repartition_required=True)
        elif right._repartition_required:
            right = Stream(right._topology, right.node, key_codec=left._key_codec,
                           repartition_required=True)
        left = left._keyed(f"{name}.left" if name else None)
        right = right._keyed(f"{name}.right" if name else None)
        lk, rk = left._key_codec or JsonCodec(), right._key_codec or JsonCodec()
        if lk.name != rk.name:
            raise TopologyError(
                f"join: the left stream's keys are encoded with {lk.name} but the right one's "
                f"with {rk.name}; the same key must have the same bytes on both sides")
        node = WindowJoinNode(left._name("join", name), joiner=joiner or _pair, how=how,
                              lower_ms=lower_ms, upper_ms=upper_ms, grace_ms=grace_ms,
                              store=store, state_codec=state or JsonCodec(), key_codec=lk)
        node.parents.append(right.node)
        out = left._then(node)
        node.parents.reverse()  # left first
        return out

    # -- sinks ---------------------------------------------------------------------------
    def to(self, topic: str, *, key: Codec | None = None, value: Codec | None = None,
           name: str | None = None) -> None:
        """Write every record to ``topic`` (key codec defaults to the stream's, value to JSON)."""
        require_topic("sink topic", topic)
        node = SinkNode(self._name("to", name), topic=topic,
                        key_codec=key or self._key_codec or JsonCodec(),
                        value_codec=value or JsonCodec())
        self._then(node)


class GroupedStream:
    """A stream whose records are partitioned by key: aggregations emit one update per record."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def _aggregate(self, operator: str, store: str, state: Codec | None,
                   initializer: Callable[[], Any], adder: Callable[[Any, Any], Any],
                   name: str | None) -> Stream:
        s = self.stream
        check_store(s._topology.application_id, store)
        node = AggregateNode(s._name(operator, name), store=StoreSpec(store, state or JsonCodec()),
                             initializer=initializer, adder=adder, operator=operator,
                             key_codec=s._key_codec)
        return s._then(node)

    def count(self, *, store: str, name: str | None = None) -> Stream:
        """The running number of records per key."""
        return self._aggregate("count", store, None, _zero, _count, name)

    def sum(self, fn: Callable[[Any], Any] | None = None, *, store: str,
            name: str | None = None) -> Stream:
        """The running sum per key of the values (or of ``fn(value)``)."""
        if fn is None:
            return self._aggregate("sum", store, None, _zero, _add, name)
        f = fn
        return self._aggregate("sum", store, None, _zero, lambda acc, v: acc + f(v), name)

    def reduce(self, fn: Callable[[Any, Any], Any], *, store: str, state: Codec | None = None,
               name: str | None = None) -> Stream:
        """Combine values per key: the first value, then ``fn(acc, value)``."""
        return self._aggregate("reduce", store, state, _unset,
                               lambda acc, v: v if acc is _UNSET else fn(acc, v), name)

    def aggregate(self, initializer: Callable[[], Any], fn: Callable[[Any, Any], Any], *,
                  store: str, state: Codec | None = None, name: str | None = None) -> Stream:
        """Fold values per key into ``fn(acc, value)`` starting from ``initializer()``."""
        return self._aggregate("aggregate", store, state, initializer, fn, name)

    def process(self, fn: Callable[..., None], *, store: str, state: Codec | None = None,
                key: Codec | None = None, name: str | None = None,
                on_timer: Callable[..., None] | None = None) -> Stream:
        """Keyed processing with the key's state and timers: see :meth:`Stream.process`."""
        return self.stream.process(fn, store=store, state=state, key=key, name=name,
                                   on_timer=on_timer)

    def window(self, window: WindowSpec) -> WindowedStream:
        """Aggregate per key and window (``streamproc.windows``): see :class:`WindowedStream`."""
        return WindowedStream(self.stream, window)


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


def _pair(value: Any, row: Any) -> tuple[Any, Any]:
    return (value, row)


def _zero() -> int:
    return 0


def _unset() -> Any:
    return _UNSET


def _count(acc: int, _v: Any) -> int:
    return acc + 1


def _add(acc: Any, v: Any) -> Any:
    return acc + v
