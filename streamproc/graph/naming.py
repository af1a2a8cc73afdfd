"""The names of a topology, checked when it is built: every name it turns into a Kafka topic,
a consumer group or a state directory, and every internal topic derived from them.

The builder checks each name as it is given, so the error points at the user's line; the
compiler checks them all again, since a graph can also be assembled (or changed) by hand. The
rules are those of :mod:`streamproc.names`; this module only raises them as TopologyErrors that
name the element (the store, the operator, the source or sink topic, the application id).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamproc.errors import TopologyError
from streamproc.graph.nodes import RepartitionNode, SinkNode, SourceNode, StoreSpec, WindowNode
from streamproc.names import describe_problem, name_problem, shown, topic_problem

if TYPE_CHECKING:
    from streamproc.graph.compile import CompiledTopology
    from streamproc.graph.nodes import Node


def instances_topic(app_id: str) -> str:
    """The registry topic of an application (ops/instances.py; an internal topic: reset
    deletes it)."""
    return f"{app_id}-instances"


def changelog_topic(app_id: str, store: str) -> str:
    return f"{app_id}-{store}-changelog"


def repartition_topic(app_id: str, name: str) -> str:
    return f"{app_id}-{name}-repartition"


def dead_letter_topic(app_id: str) -> str:
    return f"{app_id}-dlq"


def default_late_topic(app_id: str) -> str:
    return f"{app_id}-late"


def require_name(what: str, name: object) -> str:
    """``name`` if it is a valid application id / store / operator name, else TopologyError."""
    problem = name_problem(name)
    if problem is not None:
        raise TopologyError(describe_problem(what, name, problem))
    assert isinstance(name, str)
    return name


def require_topic(what: str, topic: object) -> str:
    """``topic`` if Kafka accepts it as a topic name, else TopologyError naming ``what``."""
    problem = topic_problem(topic)
    if problem is not None:
        raise TopologyError(describe_problem(what, topic, problem))
    assert isinstance(topic, str)
    return topic


def require_derived(what: str, name: str, kind: str, topic: str) -> str:
    """``topic``, an internal topic derived from element ``what`` ``name``, if Kafka accepts
    it; else a TopologyError naming the element (whose name is what the user can change)."""
    problem = topic_problem(topic)
    if problem is not None:
        raise TopologyError(f"{what} {shown(name)}: its {describe_problem(kind, topic, problem)}")
    return topic


def check_application(app_id: object) -> str:
    """The application id, and the internal topics that derive from it alone."""
    app = require_name("application id", app_id)
    require_derived("application id", app, "dead-letter topic", dead_letter_topic(app))
    require_derived("application id", app, "instance registry topic", instances_topic(app))
    return app


def check_store(app_id: str, store: object, *, timers: bool = False) -> str:
    """A store name given to an operator, and its changelog topic(s)."""
    name = require_name("store", store)
    require_derived("store", name, "changelog topic", changelog_topic(app_id, name))
    if timers:
        require_derived("store", name, "timer changelog topic",
                        changelog_topic(app_id, f"{name}.timers"))
    return name


def check_compiled(app_id: str, nodes: list[Node], compiled: CompiledTopology) -> None:
    """Every name of a compiled topology, the builder's checks once more."""
    check_application(app_id)
    for node in nodes:
        require_name("operator name", node.name)
        if isinstance(node, SourceNode):
            for t in node.topics:
                require_topic("source topic", t)
        elif isinstance(node, SinkNode):
            require_topic("sink topic", node.topic)
        elif isinstance(node, RepartitionNode):
            require_derived("operator", node.name, "repartition topic", node.topic)
        elif isinstance(node, WindowNode) and node.late_topic is not None:
            require_derived("operator", node.name, "late-record topic", node.late_topic)
        own = getattr(node, "store", None)
        if isinstance(own, StoreSpec):
            check_store(app_id, own.name)
    for store, (sid, topic) in compiled.changelog_topics.items():
        st = compiled.subtopologies[sid]
        if store == st.time_store:
            # Named after the sub-topology's first source: that is the name to shorten.
            require_derived("source", st.sources[0].name, "event-time changelog topic", topic)
        else:
            require_derived("store", store, "changelog topic", topic)
