"""The dataflow graph: plain data that the builder API produces and the runtime executes.

A handful of node kinds are the runtime primitives (source, stateless transform, keyed stateful
processor, sink); everything in the friendly API compiles onto them. Nodes know their parents;
children are derived when the topology is compiled.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from streamproc.codecs.base import Codec
from streamproc.time.windows import WindowSpec
from streamproc.types import ErrorPolicy

# A timestamp choice: "create_time" / "log_append_time" take the Kafka record timestamp,
# "processing_time" the wall clock, a callable extracts event time (ms) from the decoded value.
TimestampChoice = str | Callable[[Any], int]


@dataclass(frozen=True)
class StoreSpec:
    """A named keyed state store of a sub-topology, one RocksDB per partition plus a changelog."""

    name: str
    value_codec: Codec
    # A table read from a topic: that topic is the store's changelog (no second copy). Restore
    # reads it up to the group's committed offset; RocksDB holds the records' bytes as written.
    source_topic: str | None = None


@dataclass(eq=False)
class Node:
    name: str
    parents: list[Node] = field(default_factory=list)

    @property
    def kind(self) -> str:
        # FlatMapNode -> "flat_map": the same operator names as the API, the graph JSON and logs.
        return re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__.removesuffix("Node")).lower()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "parents": [p.name for p in self.parents]}

    @property
    def stores(self) -> list[StoreSpec]:
        """The state stores this node owns (one RocksDB per partition, each with a changelog)."""
        return []

    @property
    def time_aware(self) -> bool:
        """True when the node acts on the watermark or the wall clock (windows, timers)."""
        return False


@dataclass(eq=False)
class SourceNode(Node):
    topics: tuple[str, ...] = ()
    key_codec: Codec | None = None
    value_codec: Codec | None = None
    timestamp: TimestampChoice = "create_time"
    on_error: ErrorPolicy = "dead_letter"
    internal: bool = False  # True for the downstream side of a repartition topic
    max_out_of_orderness_ms: int = 0
    idle_timeout_ms: int | None = None

    def describe(self) -> dict[str, Any]:
        ts = self.timestamp if isinstance(self.timestamp, str) else "extractor"
        return {**super().describe(), "topics": list(self.topics), "timestamp": ts,
                "max_out_of_orderness_ms": self.max_out_of_orderness_ms,
                "idle_timeout_ms": self.idle_timeout_ms,
                "on_error": self.on_error, "key_codec": _codec_name(self.key_codec),
                "value_codec": _codec_name(self.value_codec)}


@dataclass(eq=False)
class MapNode(Node):
    fn: Callable[[Any], Any] = lambda v: v


@dataclass(eq=False)
class FilterNode(Node):
    fn: Callable[[Any], bool] = lambda v: True


@dataclass(eq=False)
class FlatMapNode(Node):
    fn: Callable[[Any], Iterable[Any]] = lambda v: (v,)


@dataclass(eq=False)
class KeyByNode(Node):
    fn: Callable[[Any], Any] = lambda v: v


@dataclass(eq=False)
class ProcessNode(Node):
    """User code with the record context: may emit any number of records and, when ``store`` is
    set, read and write the state of the record's key. With ``on_timer`` it is a keyed process
    function: ``fn`` may register event-time and processing-time timers per key, and
    ``on_timer(ctx, key, timestamp)`` runs when one fires (timers live in ``{store}.timers``)."""

    fn: Callable[..., None] = lambda ctx, key, value: None
    store: StoreSpec | None = None
    on_timer: Callable[..., None] | None = None
    key_codec: Codec | None = None  # of the input key: timers are stored by key bytes

    @property
    def timer_store(self) -> StoreSpec | None:
        if self.on_timer is None or self.store is None:
            return None
        return StoreSpec(f"{self.store.name}.timers", self.store.value_codec)

    @property
    def stores(self) -> list[StoreSpec]:
        return [s for s in (self.store, self.timer_store) if s is not None]

    @property
    def time_aware(self) -> bool:
        return self.on_timer is not None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "store": self.store.name if self.store else None,
                "timers": self.on_timer is not None}


@dataclass(eq=False)
class AggregateNode(Node):
    """Keyed aggregation emitting the new aggregate for every input record."""

    store: StoreSpec | None = None
    initializer: Callable[[], Any] = lambda: None
    adder: Callable[[Any, Any], Any] = lambda acc, v: acc
    operator: str = "aggregate"  # count / sum / reduce / aggregate, for graph JSON and logs
    key_codec: Codec | None = None  # of the grouping key (to read the store's keys back)

    @property
    def kind(self) -> str:
        return self.operator

    @property
    def stores(self) -> list[StoreSpec]:
        return [self.store] if self.store is not None else []

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "store": self.store.name if self.store else None}


@dataclass(eq=False)
class WindowNode(Node):
    """A windowed keyed aggregation: ``initializer``/``adder`` fold a window's records,
    ``merger`` combines two accumulators (session merges), ``result`` maps the accumulator to
    the emitted value. Emits ``{"start", "end", "value"}`` per window (see time/windows.py)."""

    window: WindowSpec | None = None
    store: StoreSpec | None = None
    initializer: Callable[[], Any] = lambda: None
    adder: Callable[[Any, Any], Any] = lambda acc, v: acc
    merger: Callable[[Any, Any], Any] | None = None
    result: Callable[[Any], Any] | None = None
    operator: str = "aggregate"
    emit: str = "final"  # "final" | "update"
    late: str = "drop"  # "drop" | "side_output" | "update"
    allowed_lateness_ms: int = 0
    early_every_ms: int | None = None
    late_topic: str | None = None
    key_codec: Codec | None = None

    @property
    def kind(self) -> str:
        return f"window_{self.operator}"

    @property
    def stores(self) -> list[StoreSpec]:
        return [self.store] if self.store is not None else []

    @property
    def time_aware(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        assert self.window is not None
        return {**super().describe(), "store": self.store.name if self.store else None,
                "window": self.window.describe(), "emit": self.emit, "late": self.late,
                "allowed_lateness_ms": self.allowed_lateness_ms,
                "early_every_ms": self.early_every_ms, "late_topic": self.late_topic}


@dataclass(eq=False)
class BranchNode(Node):
    """Routes each record to the first arm whose predicate holds (or to ``otherwise``)."""

    predicates: list[tuple[str, Callable[[Any], bool]]] = field(default_factory=list)
    otherwise: str | None = None


@dataclass(eq=False)
class ArmNode(Node):
    """One output of a :class:`BranchNode`; ``index`` == len(predicates) is the otherwise arm."""

    index: int = 0


@dataclass(eq=False)
class MergeNode(Node):
    pass


@dataclass(eq=False)
class RepartitionNode(Node):
    """Writes records to an internal topic keyed by their (new) key so that a key's records meet
    in one partition; the compiler turns its children into a new sub-topology."""

    topic: str = ""
    key_codec: Codec | None = None
    value_codec: Codec | None = None
    partitions: int | None = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "topic": self.topic, "partitions": self.partitions}


@dataclass(eq=False)
class SinkNode(Node):
    """``Stream.to(topic)``."""

    topic: str = ""

    @property
    def kind(self) -> str:
        return "to"

    key_codec: Codec | None = None
    value_codec: Codec | None = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "topic": self.topic,
                "key_codec": _codec_name(self.key_codec),
                "value_codec": _codec_name(self.value_codec)}


@dataclass(eq=False)
class TableNode(Node):
    """Materializes the latest value per key into ``store`` and emits each change as a
    :class:`~streamproc.types.Change` (old and new value; ``None`` is absent). A null value is
    a tombstone: the key is deleted. ``source_topic`` is set for ``topology.table(topic)``,
    whose topic is the store's changelog."""

    store: StoreSpec | None = None
    key_codec: Codec | None = None

    @property
    def stores(self) -> list[StoreSpec]:
        return [self.store] if self.store is not None else []

    def describe(self) -> dict[str, Any]:
        assert self.store is not None
        return {**super().describe(), "store": self.store.name,
                "source_topic": self.store.source_topic}


@dataclass(eq=False)
class TableFilterNode(Node):
    """A table view keeping the rows whose ``fn(value)`` is true; a row that stops passing is
    a deletion downstream."""

    fn: Callable[[Any], bool] = lambda v: True


@dataclass(eq=False)
class TableMapValuesNode(Node):
    """A table view whose values are ``fn(value)``."""

    fn: Callable[[Any], Any] = lambda v: v


@dataclass(eq=False)
class ToStreamNode(Node):
    """A table's changes as a stream: the new value per update, ``None`` (a tombstone) per
    deletion."""


@dataclass(eq=False)
class StreamTableJoinNode(Node):
    """``parents[0]`` is the stream, ``parents[1]`` the table (a view chain ending at a
    :class:`TableNode`). Each stream record looks its key up in the table as of its
    processing; only the stream side emits. ``how``: ``inner`` drops records without a row,
    ``left`` joins them with ``None``."""

    joiner: Callable[[Any, Any], Any] = lambda v, row: (v, row)
    how: str = "inner"

    @property
    def kind(self) -> str:
        return f"join_{self.how}"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "how": self.how, "table": self.parents[1].name}


@dataclass(frozen=True, eq=False)
class GlobalTableSpec:
    """``topology.global_table(topic)``: every partition of ``topic``, on every instance, in
    the RocksDB store ``store`` (``{state_dir}/{app}/{store}/global``); the topic is its
    changelog. Not part of any sub-topology: it has no tasks, only lookups."""

    store: str
    topic: str
    key_codec: Codec
    value_codec: Codec
    on_error: ErrorPolicy = "dead_letter"

    def describe(self) -> dict[str, Any]:
        return {"store": self.store, "topic": self.topic, "key_codec": self.key_codec.name,
                "value_codec": self.value_codec.name, "on_error": self.on_error}


@dataclass(eq=False)
class StreamGlobalJoinNode(Node):
    """Each stream record looks ``key(value)`` (default: its own key) up in a global table
    and is joined with that row as the instance holds it now (``inner`` / ``left``)."""

    table: GlobalTableSpec | None = None
    key: Callable[[Any], Any] | None = None
    joiner: Callable[[Any, Any], Any] = lambda v, row: (v, row)
    how: str = "inner"

    @property
    def kind(self) -> str:
        return f"join_global_{self.how}"

    def describe(self) -> dict[str, Any]:
        assert self.table is not None
        return {**super().describe(), "how": self.how, "global_table": self.table.store,
                "key": "extractor" if self.key is not None else "record key"}


@dataclass(eq=False)
class WindowJoinNode(Node):
    """A windowed stream-stream join: ``parents[0]`` (left) and ``parents[1]`` (right) records of
    one key join when ``left.ts + lower_ms <= right.ts <= left.ts + upper_ms``. Both sides wait
    in ``{store}.left`` / ``{store}.right`` until no record of the other side can still match
    (the watermark passed that bound plus ``grace_ms``); ``left`` / ``outer`` then emit their
    unmatched records with ``None`` for the other side. docs/joins.md."""

    joiner: Callable[[Any, Any], Any] = lambda a, b: (a, b)
    how: str = "inner"
    lower_ms: int = 0
    upper_ms: int = 0
    grace_ms: int = 0
    store: str = ""
    state_codec: Codec | None = None
    key_codec: Codec | None = None

    @property
    def kind(self) -> str:
        return f"window_join_{self.how}"

    @property
    def stores(self) -> list[StoreSpec]:
        assert self.state_codec is not None
        return [StoreSpec(f"{self.store}.left", self.state_codec),
                StoreSpec(f"{self.store}.right", self.state_codec)]

    @property
    def time_aware(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "how": self.how, "lower_ms": self.lower_ms,
                "upper_ms": self.upper_ms, "grace_ms": self.grace_ms, "store": self.store}


def table_root(node: Node) -> tuple[TableNode, list[Node]]:
    """The materialized table behind a table view and the views from it to ``node``, in the
    order they apply."""
    views: list[Node] = []
    while not isinstance(node, TableNode):
        if not isinstance(node, TableFilterNode | TableMapValuesNode):
            raise TypeError(f"{node.name!r} ({node.kind}) is not a table")
        views.append(node)
        node = node.parents[0]
    return node, views[::-1]


def _codec_name(codec: Codec | None) -> str | None:
    return codec.name if codec is not None else None
