"""``Topology``: the entry point of the builder API. Importing a topology module does no I/O."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamproc.codecs.base import Codec
from streamproc.codecs.basic import JsonCodec, RawCodec
from streamproc.errors import TopologyError
from streamproc.graph.naming import (
    check_application,
    dead_letter_topic,
    require_name,
    require_topic,
)
from streamproc.graph.nodes import (
    GlobalTableSpec,
    Node,
    SourceNode,
    StoreSpec,
    TableNode,
    TimestampChoice,
)
from streamproc.types import ErrorPolicy

if TYPE_CHECKING:  # Stream imports Topology at runtime; this one-way hint avoids a cycle.
    from streamproc.api.stream import Stream
    from streamproc.api.table import GlobalTable, Table

_POLICIES = ("dead_letter", "skip", "fail")
_TIMESTAMPS = ("create_time", "log_append_time", "processing_time")


class Topology:
    """A dataflow of sources -> operators -> sinks under one application id.

    The application id is the Kafka consumer group, prefixes every internal topic
    (``{app}-{name}-repartition``, ``{app}-{store}-changelog``, ``{app}-dlq``) and names the
    local state directory.
    """

    def __init__(self, application_id: str, *, on_error: ErrorPolicy = "dead_letter",
                 watermark_propagation: bool = True) -> None:
        check_application(application_id)
        _check_policy(on_error)
        self.application_id = application_id
        self.on_error: ErrorPolicy = on_error
        # Behind a repartition, a task's watermark is the minimum over the upstream tasks'
        # watermarks (control records in the topic). Off: the largest timestamp it has seen,
        # like Kafka Streams' stream time (for comparison; skewed inputs then lose records).
        self.watermark_propagation = watermark_propagation
        self.nodes: list[Node] = []
        self.global_tables: list[GlobalTableSpec] = []
        self._counter = 0

    # -- naming --------------------------------------------------------------------------
    def _name(self, kind: str, given: str | None) -> str:
        self._counter += 1
        name = given if given is not None else f"{kind}-{self._counter}"
        if any(n.name == name for n in self.nodes):
            raise TopologyError(f"operator name {name!r} is used twice in {self.application_id}")
        return require_name("operator name", name)

    def _add(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    @property
    def dead_letter_topic(self) -> str:
        return dead_letter_topic(self.application_id)

    # -- sources -------------------------------------------------------------------------
    def source(
        self,
        *topics: str,
        key: Codec | None = None,
        value: Codec | None = None,
        timestamp: TimestampChoice = "create_time",
        on_error: ErrorPolicy | None = None,
        name: str | None = None,
        max_out_of_orderness_ms: int = 0,
        idle_timeout_ms: int | None = None,
    ) -> Stream:
        """A stream of the records of one or more topics (their partitions are co-processed by
        partition number). ``key``/``value`` default to raw bytes and JSON.

        Event time: ``timestamp`` is ``"create_time"`` (the producer's record timestamp),
        ``"log_append_time"`` (the broker's), ``"processing_time"`` (the wall clock) or a
        function extracting milliseconds from the decoded value. The watermark trails the
        largest timestamp seen by ``max_out_of_orderness_ms``; with ``idle_timeout_ms`` it
        follows the wall clock once a partition has been quiet that long (off by default: it
        makes results depend on timing)."""
        from streamproc.api.stream import Stream

        if not topics:
            raise TopologyError("source() needs at least one topic")
        for t in topics:
            require_topic("source topic", t)
        if isinstance(timestamp, str) and timestamp not in _TIMESTAMPS:
            raise TopologyError(f"timestamp must be one of {_TIMESTAMPS} or a callable")
        policy = on_error or self.on_error
        _check_policy(policy)
        if not isinstance(max_out_of_orderness_ms, int) or max_out_of_orderness_ms < 0:
            raise TopologyError(f"max_out_of_orderness_ms must be >= 0, got "
                                f"{max_out_of_orderness_ms!r}")
        if idle_timeout_ms is not None and (not isinstance(idle_timeout_ms, int)
                                            or idle_timeout_ms <= 0):
            raise TopologyError(f"idle_timeout_ms must be a positive integer or None, got "
                                f"{idle_timeout_ms!r}")
        key_codec = key or RawCodec()
        node = SourceNode(
            name=self._name("source", name), topics=tuple(topics), key_codec=key_codec,
            value_codec=value or JsonCodec(), timestamp=timestamp, on_error=policy,
            max_out_of_orderness_ms=max_out_of_orderness_ms, idle_timeout_ms=idle_timeout_ms,
        )
        self._add(node)
        return Stream(self, node, key_codec=key_codec, repartition_required=False)

    def table(
        self,
        topic: str,
        *,
        store: str,
        key: Codec | None = None,
        value: Codec | None = None,
        timestamp: TimestampChoice = "create_time",
        on_error: ErrorPolicy | None = None,
        name: str | None = None,
    ) -> Table:
        """The latest value per key of ``topic`` (usually compacted), materialized per
        partition in the RocksDB store ``store``. A record with a null value deletes its key.

        The topic is the store's changelog: nothing is copied to a changelog topic, a restore
        reads the topic up to the group's committed offset, and a partition without a
        committed offset is read from its beginning whatever ``auto_offset_reset`` says. A task
        that starts holds the streams it joins with the table until the table has read what its
        topic held at that moment (docs/joins.md). Records that fail to decode follow
        ``on_error`` and are skipped by a restore too."""
        from streamproc.api.table import Table

        require_name("store", store)
        src = self.source(topic, key=key, value=value, timestamp=timestamp, on_error=on_error,
                          name=name or f"{store}.source")
        assert isinstance(src.node, SourceNode)
        spec = StoreSpec(store, src.node.value_codec or JsonCodec(), source_topic=topic)
        node = TableNode(self._name("table", f"{store}.table"), store=spec,
                         key_codec=src.node.key_codec)
        node.parents.append(src.node)
        self._add(node)
        return Table(self, node, key_codec=src.node.key_codec)

    def global_table(self, topic: str, *, store: str, key: Codec | None = None,
                     value: Codec | None = None,
                     on_error: ErrorPolicy | None = None) -> GlobalTable:
        """Every partition of ``topic`` (usually compacted), the latest value per key, on every
        instance, in the RocksDB store ``store``. Read to its end before any task of the
        instance starts, then followed as the instance runs; the topic is its changelog.
        Joined by a key computed from the stream record, so the stream needs no
        co-partitioning (docs/joins.md). Not part of a checkpoint: a replay sees the table as
        it is then. Undecodable records follow ``on_error`` (dead letters at least once)."""
        from streamproc.api.table import GlobalTable

        require_topic("global table topic", topic)
        require_name("store", store)
        policy = on_error or self.on_error
        _check_policy(policy)
        if any(g.store == store for g in self.global_tables):
            raise TopologyError(f"store name {store!r} is used twice")
        spec = GlobalTableSpec(store, topic, key or RawCodec(), value or JsonCodec(), policy)
        self.global_tables.append(spec)
        return GlobalTable(self, spec)

    def describe(self) -> dict[str, Any]:
        return {"application_id": self.application_id,
                "nodes": [n.describe() for n in self.nodes],
                "global_tables": [g.describe() for g in self.global_tables]}

    def __repr__(self) -> str:
        return f"Topology({self.application_id!r}, {len(self.nodes)} nodes)"


def _check_policy(policy: str) -> None:
    if policy not in _POLICIES:
        raise TopologyError(f"on_error must be one of {_POLICIES}, got {policy!r}")
