"""Compile a :class:`Topology` into sub-topologies and internal topics.

A repartition node ends one sub-topology (as a sink into ``{app}-{name}-repartition``) and its
children start another (behind a synthetic internal source). Sub-topologies are listed upstream
first, so partition counts can be resolved in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamproc.codecs.basic import RawCodec
from streamproc.errors import TopologyError
from streamproc.graph.naming import changelog_topic, check_compiled
from streamproc.graph.nodes import (
    GlobalTableSpec,
    Node,
    RepartitionNode,
    SinkNode,
    SourceNode,
    StoreSpec,
    WindowNode,
)

if TYPE_CHECKING:
    from streamproc.api.topology import Topology


@dataclass
class SubTopology:
    id: int
    sources: list[SourceNode]
    nodes: list[Node]  # parents before children
    children: dict[str, list[Node]]
    stores: list[StoreSpec]
    repartition_sinks: list[RepartitionNode]
    sinks: list[SinkNode]
    parents: dict[str, list[str]] = field(default_factory=dict)
    # The store holding the tasks' watermark state, when an operator acts on event time.
    time_store: str | None = None

    @property
    def source_topics(self) -> list[str]:
        return [t for s in self.sources for t in s.topics]

    @property
    def time_aware(self) -> bool:
        return self.time_store is not None

    @property
    def max_out_of_orderness_ms(self) -> int:
        return max(s.max_out_of_orderness_ms for s in self.sources)

    @property
    def idle_timeout_ms(self) -> int | None:
        given = [s.idle_timeout_ms for s in self.sources if s.idle_timeout_ms is not None]
        return min(given) if given else None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source_topics": self.source_topics,
            "stores": [s.name for s in self.stores],
            "sink_topics": [s.topic for s in self.sinks],
            "repartition_topics": [r.topic for r in self.repartition_sinks],
            "time_store": self.time_store,
            "nodes": [
                {**n.describe(), "parents": self.parents.get(n.name, []),
                 "children": [c.name for c in self.children.get(n.name, [])]}
                for n in self.nodes
            ],
        }


@dataclass
class CompiledTopology:
    application_id: str
    subtopologies: list[SubTopology]
    dead_letter_topic: str
    # repartition topic -> (upstream sub-topology id, downstream sub-topology id, fixed count)
    repartition_topics: dict[str, tuple[int, int, int | None]] = field(default_factory=dict)
    # store name -> (sub-topology id, changelog topic)
    changelog_topics: dict[str, tuple[int, str]] = field(default_factory=dict)
    # store name -> (sub-topology id, source topic) of tables whose topic is their changelog:
    # never created, written, purged or deleted by streamproc (it is a user topic)
    table_sources: dict[str, tuple[int, str]] = field(default_factory=dict)
    # every source topic (user and internal) -> sub-topology id reading it
    topic_subtopology: dict[str, int] = field(default_factory=dict)
    # global tables by store name: read whole by every instance, outside the sub-topologies
    global_tables: dict[str, GlobalTableSpec] = field(default_factory=dict)
    # topics that window operators send late records to (internal, created at start)
    late_topics: list[str] = field(default_factory=list)
    # downstream watermark = min over upstream tasks' watermarks (control records)
    watermark_propagation: bool = True

    @property
    def user_source_topics(self) -> list[str]:
        return [t for t in self.topic_subtopology if t not in self.repartition_topics]

    @property
    def sink_topics(self) -> list[str]:
        return sorted({s.topic for st in self.subtopologies for s in st.sinks})

    def source_node(self, topic: str) -> SourceNode:
        st = self.subtopologies[self.topic_subtopology[topic]]
        return next(s for s in st.sources if topic in s.topics)

    def describe(self) -> dict[str, Any]:
        return {
            "application_id": self.application_id,
            "dead_letter_topic": self.dead_letter_topic,
            "subtopologies": [st.describe() for st in self.subtopologies],
            "repartition_topics": sorted(self.repartition_topics),
            "changelog_topics": sorted(t for _, t in self.changelog_topics.values()),
            "table_sources": {s: t for s, (_, t) in sorted(self.table_sources.items())},
            "late_topics": self.late_topics,
            "global_tables": [g.describe() for g in self.global_tables.values()],
            "watermark_propagation": self.watermark_propagation,
        }


def compile_topology(topology: Topology) -> CompiledTopology:
    nodes = list(topology.nodes)
    if not any(isinstance(n, SourceNode) for n in nodes):
        raise TopologyError(f"topology {topology.application_id!r} has no source")
    if not any(isinstance(n, SinkNode | RepartitionNode) for n in nodes):
        raise TopologyError(f"topology {topology.application_id!r} writes nowhere: add .to(topic)")

    # Effective parents: a repartition node's children hang off a synthetic internal source.
    internal: dict[str, SourceNode] = {}
    for n in nodes:
        if isinstance(n, RepartitionNode):
            internal[n.name] = SourceNode(
                name=f"{n.name}.source", topics=(n.topic,), key_codec=n.key_codec,
                value_codec=n.value_codec, on_error=topology.on_error, internal=True,
            )
    all_nodes: list[Node] = [*nodes, *internal.values()]
    parents: dict[str, list[Node]] = {n.name: [] for n in all_nodes}
    for n in nodes:
        for p in n.parents:
            parents[n.name].append(internal[p.name] if isinstance(p, RepartitionNode) else p)

    # Connected components over effective edges = sub-topologies.
    root = {n.name: n.name for n in all_nodes}

    def find(x: str) -> str:
        while root[x] != x:
            root[x] = root[root[x]]
            x = root[x]
        return x

    for name, ps in parents.items():
        for p in ps:
            root[find(name)] = find(p.name)

    groups: dict[str, list[Node]] = {}
    for n in all_nodes:
        groups.setdefault(find(n.name), []).append(n)

    # Order components upstream first: an edge goes from a repartition node's component to the
    # component of its internal source.
    comp_of = {n.name: find(n.name) for n in all_nodes}
    downstream: dict[str, set[str]] = {c: set() for c in groups}
    for rname, src in internal.items():
        downstream[comp_of[rname]].add(comp_of[src.name])
    order = _toposort(list(groups), downstream)

    compiled = CompiledTopology(topology.application_id, [], topology.dead_letter_topic,
                                watermark_propagation=topology.watermark_propagation)
    store_names: set[str] = set()
    for sid, comp in enumerate(order):
        members = groups[comp]
        member_names = {m.name for m in members}
        children: dict[str, list[Node]] = {m.name: [] for m in members}
        for m in members:
            for p in parents[m.name]:
                if p.name in member_names:
                    children[p.name].append(m)
        ordered = _toposort_nodes(members, parents)
        specs = [spec for m in ordered for spec in m.stores]
        time_store: str | None = None
        if any(m.time_aware for m in ordered):
            # Named after the sub-topology's first source, which stays put when operators are
            # added or renamed downstream.
            first = next(m for m in ordered if isinstance(m, SourceNode))
            time_store = f"{first.name}.time"
            specs.append(StoreSpec(time_store, RawCodec()))
        stores: list[StoreSpec] = []
        for spec in specs:
            if spec.name in store_names:
                raise TopologyError(f"store name {spec.name!r} is used twice")
            store_names.add(spec.name)
            stores.append(spec)
            if spec.source_topic is not None:
                compiled.table_sources[spec.name] = (sid, spec.source_topic)
            else:
                compiled.changelog_topics[spec.name] = (
                    sid, changelog_topic(topology.application_id, spec.name))
        for m in ordered:
            if isinstance(m, WindowNode) and m.late == "side_output":
                assert m.late_topic is not None
                if m.late_topic not in compiled.late_topics:
                    compiled.late_topics.append(m.late_topic)
        st = SubTopology(
            id=sid,
            sources=[m for m in ordered if isinstance(m, SourceNode)],
            nodes=ordered, children=children, stores=stores,
            repartition_sinks=[m for m in ordered if isinstance(m, RepartitionNode)],
            sinks=[m for m in ordered if isinstance(m, SinkNode)],
            parents={m.name: [p.name for p in parents[m.name]] for m in members},
            time_store=time_store,
        )
        for topic in st.source_topics:
            if topic in compiled.topic_subtopology:
                raise TopologyError(
                    f"topic {topic!r} is read by more than one source; read it once and "
                    "fan the stream out instead")
            compiled.topic_subtopology[topic] = sid
        compiled.subtopologies.append(st)

    # Upstream first, so that settings inherited over several repartitions arrive in order.
    for rname, src in sorted(internal.items(), key=lambda kv: order.index(comp_of[kv[0]])):
        rnode = next(n for n in nodes if n.name == rname)
        assert isinstance(rnode, RepartitionNode)
        up = order.index(comp_of[rname])
        down = order.index(comp_of[src.name])
        compiled.repartition_topics[rnode.topic] = (up, down, rnode.partitions)
        # Records keep their timestamps through the topic, so the downstream side allows the
        # same out-of-orderness and idleness as the sources that produced them.
        upstream = compiled.subtopologies[up]
        src.max_out_of_orderness_ms = upstream.max_out_of_orderness_ms
        src.idle_timeout_ms = upstream.idle_timeout_ms
    for g in topology.global_tables:
        if g.store in store_names:
            raise TopologyError(f"store name {g.store!r} is used twice")
        compiled.global_tables[g.store] = g
    check_compiled(topology.application_id, nodes, compiled)
    return compiled


def _toposort(items: list[str], edges: dict[str, set[str]]) -> list[str]:
    indeg = dict.fromkeys(items, 0)
    for targets in edges.values():
        for t in targets:
            indeg[t] += 1
    ready = [i for i in items if indeg[i] == 0]
    out: list[str] = []
    while ready:
        i = ready.pop(0)
        out.append(i)
        for t in sorted(edges[i], key=items.index):
            indeg[t] -= 1
            if indeg[t] == 0:
                ready.append(t)
    if len(out) != len(items):
        raise TopologyError("the topology has a cycle")
    return out


def _toposort_nodes(members: list[Node], parents: dict[str, list[Node]]) -> list[Node]:
    names = [m.name for m in members]
    member_set = set(names)
    edges: dict[str, set[str]] = {n: set() for n in names}
    for m in members:
        for p in parents[m.name]:
            if p.name in member_set:
                edges[p.name].add(m.name)
    by_name = {m.name: m for m in members}
    return [by_name[n] for n in _toposort(names, edges)]
