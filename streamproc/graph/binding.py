"""Binding codecs to where they are used, once, when a compiled topology starts.

Most codecs are context-free. A registry codec needs its topic and whether it encodes keys or
values (for the subject name) and a registry client; it gets them here, so that operators only
ever see ready codecs and an unreachable registry or a refused schema stops the app at start.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from streamproc.codecs.base import Codec
from streamproc.codecs.registry import CodecTarget, RegistrySettings
from streamproc.errors import TopologyError
from streamproc.graph.compile import CompiledTopology
from streamproc.graph.nodes import RepartitionNode, SinkNode, SourceNode, StreamGlobalJoinNode


def bind_codecs(compiled: CompiledTopology, registry: RegistrySettings | None) -> None:
    """Replace every bindable codec of sources, sinks and repartition topics by its bound copy
    (in place). State stores must use self-describing codecs: a registry codec there is refused,
    since a store's values outlive any topic and must decode without a registry. Tables read
    from a topic hold its bytes, so they decode with the topic's codecs, bound like a source's."""
    for name, g in list(compiled.global_tables.items()):
        key, value = (_bound(codec, g.topic, fld, registry)
                      for codec, fld in ((g.key_codec, "key"), (g.value_codec, "value")))
        compiled.global_tables[name] = replace(g, key_codec=key, value_codec=value)
    for st in compiled.subtopologies:
        for spec in st.stores:
            # A table's store holds its topic's bytes as written: it decodes them with the
            # source's (bound) codec, like the topic itself (runtime/task.py).
            if spec.source_topic is None and _needs_binding(spec.value_codec):
                raise TopologyError(
                    f"state store {spec.name!r}: codec {spec.value_codec.name} needs a schema "
                    "registry and a topic; state values need a self-describing codec, e.g. "
                    "codecs.avro(schema, framing='single_object') or codecs.json()")
        for node in st.nodes:
            if isinstance(node, StreamGlobalJoinNode) and node.table is not None:
                node.table = compiled.global_tables[node.table.store]
            if isinstance(node, SourceNode):
                # Decoding reads the writer schema id from each record; the subject (from the
                # first topic) only matters for encoding, which sources never do.
                _bind_node(node, node.topics[0], registry)
            elif isinstance(node, SinkNode | RepartitionNode):
                _bind_node(node, node.topic, registry)


def _bind_node(node: Any, topic: str, registry: RegistrySettings | None) -> None:
    for attr, fld in (("key_codec", "key"), ("value_codec", "value")):
        codec = getattr(node, attr)
        if _needs_binding(codec):
            setattr(node, attr, codec.bind(CodecTarget(topic, _field(fld), registry)))


def _bound(codec: Any, topic: str, fld: str, registry: RegistrySettings | None) -> Codec:
    if not _needs_binding(codec):
        return codec  # type: ignore[no-any-return]
    return codec.bind(CodecTarget(topic, _field(fld), registry))  # type: ignore[no-any-return]


def _field(name: str) -> Literal["key", "value"]:
    return "key" if name == "key" else "value"


def _needs_binding(codec: Codec | None) -> bool:
    return codec is not None and callable(getattr(codec, "bind", None))
