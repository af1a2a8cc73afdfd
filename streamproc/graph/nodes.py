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
from streamproc.types import ErrorPolicy

# A timestamp choice: "create_time" / "log_append_time" take the Kafka record timestamp,
# "processing_time" the wall clock, a callable extracts event time (ms) from the decoded value.
TimestampChoice = str | Callable[[Any], int]


@dataclass(frozen=True)
class StoreSpec:
    """A named keyed state store of a sub-topology, one RocksDB per partition plus a changelog."""

    name: str
    value_codec: Codec


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


@dataclass(eq=False)
class SourceNode(Node):
    topics: tuple[str, ...] = ()
    key_codec: Codec | None = None
    value_codec: Codec | None = None
    timestamp: TimestampChoice = "create_time"
    on_error: ErrorPolicy = "dead_letter"
    internal: bool = False  # True for the downstream side of a repartition topic

    def describe(self) -> dict[str, Any]:
        ts = self.timestamp if isinstance(self.timestamp, str) else "extractor"
        return {**super().describe(), "topics": list(self.topics), "timestamp": ts,
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
    set, read and write the state of the record's key."""

    fn: Callable[..., None] = lambda ctx, key, value: None
    store: StoreSpec | None = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "store": self.store.name if self.store else None}


@dataclass(eq=False)
class AggregateNode(Node):
    """Keyed aggregation emitting the new aggregate for every input record."""

    store: StoreSpec | None = None
    initializer: Callable[[], Any] = lambda: None
    adder: Callable[[Any, Any], Any] = lambda acc, v: acc
    operator: str = "aggregate"  # count / sum / reduce / aggregate, for graph JSON and logs

    @property
    def kind(self) -> str:
        return self.operator

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "store": self.store.name if self.store else None}


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


def _codec_name(codec: Codec | None) -> str | None:
    return codec.name if codec is not None else None
