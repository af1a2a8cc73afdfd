"""``Table``: the latest value per key, materialized per partition; views over it; its changes.

A table is built by ``topology.table(topic)`` (the topic is the store's changelog) or
``stream.to_table(store=)`` (a store with a changelog of its own). ``filter`` and
``map_values`` are views: nothing more is stored, a lookup applies them to the stored row.
Semantics of every join: docs/joins.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streamproc.codecs.base import Codec
from streamproc.graph.nodes import (
    GlobalTableSpec,
    Node,
    TableFilterNode,
    TableMapValuesNode,
    TableNode,
    ToStreamNode,
    table_root,
)

if TYPE_CHECKING:  # Stream imports Table at runtime; this one-way hint avoids a cycle.
    from streamproc.api.stream import Stream
    from streamproc.api.topology import Topology


class Table:
    """A changelog-backed table: one row per key, deleted by a tombstone (a null value).

    Its partitions follow its topic's (or its stream's): a stream joins it only when
    co-partitioned, which :meth:`Stream.join` arranges (a repartition after a key change)
    and the start checks (partition counts)."""

    def __init__(self, topology: Topology, node: Node, *, key_codec: Codec | None) -> None:
        self._topology = topology
        self.node = node
        self._key_codec = key_codec

    @property
    def store(self) -> str:
        """The name of the store that holds the rows (a view's is its table's)."""
        root = self.root
        assert root.store is not None
        return root.store.name

    @property
    def root(self) -> TableNode:
        return table_root(self.node)[0]

    @property
    def key_codec(self) -> Codec | None:
        return self._key_codec

    def _then(self, node: Node) -> Table:
        node.parents.append(self.node)
        self._topology._add(node)
        return Table(self._topology, node, key_codec=self._key_codec)

    def filter(self, fn: Callable[[Any], bool], *, name: str | None = None) -> Table:
        """The rows whose ``fn(value)`` is true. A row that stops passing is a deletion for
        what reads this view (``to_stream`` emits a tombstone, a join finds no row)."""
        return self._then(TableFilterNode(self._topology._name("table_filter", name), fn=fn))

    def map_values(self, fn: Callable[[Any], Any], *, name: str | None = None) -> Table:
        """The rows with ``fn(value)`` as their value (computed at each lookup and change)."""
        return self._then(TableMapValuesNode(self._topology._name("table_map_values", name),
                                             fn=fn))

    def to_stream(self, *, name: str | None = None) -> Stream:
        """The table's changes: per update the new value, per deletion a tombstone (``None``),
        with the key and timestamp of the record that changed it."""
        from streamproc.api.stream import Stream

        node = ToStreamNode(self._topology._name("to_stream", name))
        node.parents.append(self.node)
        self._topology._add(node)
        return Stream(self._topology, node, key_codec=self._key_codec,
                      repartition_required=False)

    def __repr__(self) -> str:
        return f"Table({self.node.name!r}, store={self.store!r})"


class GlobalTable:
    """``topology.global_table(topic)``: the whole topic on every instance, read before any
    task starts and followed while the instance runs. Joined by a key computed from each
    stream record (``stream.join(table, key=...)``): no co-partitioning, no repartition."""

    def __init__(self, topology: Topology, spec: GlobalTableSpec) -> None:
        self._topology = topology
        self.spec = spec

    @property
    def store(self) -> str:
        return self.spec.store

    def __repr__(self) -> str:
        return f"GlobalTable({self.spec.topic!r}, store={self.store!r})"
